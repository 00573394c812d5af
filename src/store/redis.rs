//! The shared store on Redis (`store.backend = "redis"`): N replicas behave as one (issue 12).
//!
//! Keys (prefix `dcrp:`; every multi-key operation stays within one `{…}` hash tag, so it works on a Cluster):
//! - `client:{c:<client_id>}` client metadata (sealed postcard; the secret and registration token only as hashes);
//!   `cgrants:{c:<client_id>}` the set of its grant ids, for RFC 7592 delete.
//! - `used:<hash>` a consent form or IdP state already used: `SET NX` with the ticket's expiry (atomic claim).
//! - `code:{k:<hash>}` a live code (sealed: it holds the IdP tokens), `spent:{k:<hash>}` the grant a redeemed code
//!   started. Redemption is one Lua script: `GETDEL` the code, or read the spent record (RFC 6749 §4.1.2: a code is
//!   used once; its replay revokes what it issued).
//! - `grant:{g:<id>}` a grant (sealed: identity and IdP tokens); its absence means revoked.
//!   `lock:{g:<id>}` / `fence:{g:<id>}` the IdP-refresh lock and its fencing counter.
//! - `at:<hash>` an access token (sealed): grant id, expiry, scope (RFC 6750 bearer; only the SHA-256 is a key)
//!   and the grant's data key wrapped under the token (`store::wrap`). A presented token must open its own wrap
//!   (never the replica's key), and a record whose scope exceeds its grant's is refused.
//! - `rf:<family hash>` a refresh-token family, a hash of `gen` and `rec`: rotation is a compare-and-set on `gen`
//!   in one Lua script (RFC 9700 §4.14: two uses of one token cannot both rotate, from any replicas); `rec`
//!   (sealed) holds the grant's data key wrapped under the current refresh token.
//! - `rt:{g:<id>}` the grant's `[[routes]]` IdP tokens, a hash by route prefix, each sealed with the data key.
//!
//! Invariants:
//! - Nothing readable at rest: proxy tokens, codes, secrets and sign-in tickets appear only as SHA-256 hashes;
//!   records are sealed (ChaCha20-Poly1305, key derived from the snapshot key, the Redis key name as associated
//!   data, so a record cannot be moved under another key), and the IdP tokens inside them are sealed again with
//!   the grant's data key, which only a live proxy token of the grant unwraps (`store::wrap`: the threat model).
//!   Grants imported from a snapshot are the exception: their IdP tokens are under the configured key only.
//! - The hot path is local: a bearer lookup is served from this replica's bounded cache for at most
//!   `store.redis_cache_ttl` (≤ 1 s), then checked again in Redis. Revocations are published on `dcrp:events`;
//!   every replica drops what they name at once, and clears its cache when its subscription (re)connects, since
//!   a message may have been missed. When Redis does not answer, a cached bearer keeps working for
//!   [`STALE_IF_ERROR_SECS`] after Redis last confirmed it (stale-if-error: no revocation can be recorded meanwhile
//!   either), then gets 503; everything else fails with [`StoreError::Unavailable`].
//! - One IdP refresh per grant across replicas: a lock with expiry and a fencing token; the new IdP token is
//!   written only while the fence still holds the lock, and the others adopt it from the grant record.
//! - Expiries are relative (`EX` seconds from the proxy's clock), so that a test clock and Redis's agree.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::StreamExt as _;
use serde::{de::DeserializeOwned, Serialize};

use super::outcome::{StoreError, UpstreamTurn};
use super::records::*;
use super::redis_conn::{RedisConn, Subscriber};
use super::wrap::{DataKey, WrapKind};
use super::*;
use crate::clock::{Clock, UnixTime};
use crate::config::RedisConfig;
use crate::crypto::{self, Sealer, TokenHash};

mod backend;
mod counts;

const EVENTS: &str = "dcrp:events";
/// Registrations not yet used, scored by their time (`registration.max_clients` across replicas).
const REGISTRATIONS: &str = "dcrp:registrations";
/// How much longer than the IdP-refresh lock's lifetime (`RedisConfig::refresh_lock`) a replica waits for another
/// one's refresh before giving up (503): a holder that died (SIGKILL, node lost) loses the lock by expiry first, and
/// the waiter takes it and refreshes, so a dead replica costs its users a delay, not an error.
const LOCK_WAIT_MARGIN: Duration = Duration::from_secs(1);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn client_key(id: &str) -> String {
    format!("dcrp:client:{{c:{id}}}")
}
fn client_grants_key(id: &str) -> String {
    format!("dcrp:cgrants:{{c:{id}}}")
}
fn used_key(h: &TokenHash) -> String {
    format!("dcrp:used:{}", hex(&h.0))
}
fn assertion_key(h: &TokenHash) -> String {
    format!("dcrp:jti:{}", hex(&h.0))
}
fn code_key(h: &TokenHash) -> String {
    format!("dcrp:code:{{k:{}}}", hex(&h.0))
}
fn spent_key(h: &TokenHash) -> String {
    format!("dcrp:spent:{{k:{}}}", hex(&h.0))
}
fn grant_key(id: GrantId) -> String {
    format!("dcrp:grant:{{g:{:032x}}}", id.0)
}
/// `who` (a person's key, which their browser holds as a cookie) only as a hash: Redis read access reveals no
/// cookie.
fn interaction_key(client_id: &str, who: &str) -> String {
    format!("dcrp:ia:{{c:{client_id}}}:{}", hex(&TokenHash::of(who).0))
}
fn lock_key(id: GrantId) -> String {
    format!("dcrp:lock:{{g:{:032x}}}", id.0)
}
fn fence_key(id: GrantId) -> String {
    format!("dcrp:fence:{{g:{:032x}}}", id.0)
}
fn access_key(h: &TokenHash) -> String {
    format!("dcrp:at:{}", hex(&h.0))
}
fn family_key(h: &TokenHash) -> String {
    format!("dcrp:rf:{}", hex(&h.0))
}
fn route_key(id: GrantId) -> String {
    format!("dcrp:rt:{{g:{:032x}}}", id.0)
}

/// What the IdP-token blob of a record is bound to (the record's key and its role).
fn idp_aad(record_key: &str) -> Vec<u8> {
    format!("{record_key}\0idp").into_bytes()
}

/// The purpose the record key is derived from the configured key with (tests/stores/shared_store_wrap.rs opens records
/// with it, as an attacker holding the configuration would).
const RECORDS_LABEL: &str = "dcr-proxy redis records v1";

/// A bearer lookup cached by this replica.
struct Cached {
    grant: Arc<Grant>,
    scope: Arc<str>,
    expires_at: UnixTime,
    checked: Instant,
    /// When Redis last confirmed the entry, by the store's clock: how long it may serve while Redis is down.
    confirmed_at: UnixTime,
}

/// How long (seconds) a cached bearer is still served while Redis does not answer (stale-if-error). After it the
/// bearer is answered 503: a token revoked during the cut stops working within this bound.
pub const STALE_IF_ERROR_SECS: u64 = 10;

struct Inner {
    conn: RedisConn,
    sealer: Sealer,
    clock: Clock,
    cache: DashMap<TokenHash, Cached>,
    /// The grants this replica works with, so that requests of one grant share its IdP token and refresh lock.
    grants: DashMap<GrantId, Arc<Grant>>,
    cache_ttl: Duration,
    cache_entries: usize,
    /// `registration.unused_client_ttl`: how long a registered client lives unless it completes an authorization.
    unused_client_ttl: u64,
    /// The counts for metrics ([`RedisStore::stats`]) and `store.redis_stats_interval`.
    counts: counts::Counts,
    stats_interval: Duration,
    /// `RedisConfig::refresh_lock`: how long a grant's IdP-refresh lock is held at most.
    refresh_lock: Duration,
}

/// The shared store. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

fn unavailable(e: ::redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Set once the records of an older version were sealed ([`RedisStore::seal_plain_records`]).
const SEALED_MARKER: &str = "dcrp:meta:records-sealed";

/// Whether every scope of `narrow` is one of `wide`'s (space-separated).
fn scope_within(narrow: &str, wide: &str) -> bool {
    narrow.split(' ').filter(|s| !s.is_empty()).all(|s| wide.split(' ').any(|w| w == s))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| StoreError::Unavailable(format!("encoding a record: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    postcard::from_bytes(bytes).ok()
}

const REDEEM: &str = r"
local v = redis.call('GETDEL', KEYS[1])
if v then return {1, v} end
local s = redis.call('GET', KEYS[2])
if s then return {2, s} end
return {0, ''}
";

/// One request in the current minute's window (ARGV[1]: its expiry in seconds); the count so far.
const COUNT_REQUEST: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
";

const COUNT_REGISTRATIONS: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
return redis.call('ZCARD', KEYS[1])
";

const SWAP_FAMILY: &str = r"
if ARGV[1] ~= '' then
  local cur = redis.call('HGET', KEYS[1], 'gen')
  if cur ~= ARGV[1] then return 0 end
end
redis.call('HSET', KEYS[1], 'gen', ARGV[2], 'rec', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
";

/// Extends a key's life to at least ARGV[1] seconds (never shortens it; a key without expiry gets one).
const EXTEND: &str = r"
local t = redis.call('TTL', KEYS[1])
if t == -1 or (t >= 0 and t < tonumber(ARGV[1])) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return t
";

const LOCK: &str = r"
if redis.call('SET', KEYS[1], '0', 'NX', 'PX', ARGV[1]) then
  local f = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], 86400)
  redis.call('SET', KEYS[1], f, 'PX', ARGV[1])
  return f
end
return 0
";

/// Writes the grant's refreshed record only while the fence holds the lock and the grant exists; releases it.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[2], ARGV[2], 'KEEPTTL')
end
return 1
";

impl RedisStore {
    /// Connects (failing when Redis does not answer: the orchestrator restarts the proxy) and starts listening
    /// for revocations.
    pub async fn connect(config: &RedisConfig, clock: Clock, unused_client_ttl: Duration) -> Result<Self, StoreError> {
        let (conn, subscriber) =
            RedisConn::connect(config).await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let inner = Arc::new(Inner {
            conn,
            sealer: Sealer::new(&crypto::derive_key(&config.key.0, RECORDS_LABEL)),
            clock,
            cache: DashMap::new(),
            grants: DashMap::new(),
            cache_ttl: config.cache_ttl,
            cache_entries: config.cache_entries,
            unused_client_ttl: unused_client_ttl.as_secs(),
            counts: counts::Counts::default(),
            stats_interval: config.stats_interval,
            refresh_lock: config.refresh_lock,
        });
        tokio::spawn(listen(Arc::downgrade(&inner), subscriber));
        let store = Self { inner };
        let sealed = store.seal_plain_records().await?;
        if sealed > 0 {
            tracing::info!(records = sealed, "sealed the records an older version wrote in the clear");
        }
        Ok(store)
    }

    /// `registration.unused_client_ttl` in seconds.
    pub fn unused_client_ttl(&self) -> u64 {
        self.inner.unused_client_ttl
    }

    fn conn(&self) -> RedisConn {
        self.inner.conn.clone()
    }

    fn ttl(&self, expires_at: UnixTime) -> u64 {
        expires_at.saturating_sub(self.inner.clock.now()).max(1)
    }

    fn seal(&self, key: &str, plain: &[u8]) -> Vec<u8> {
        self.inner.sealer.seal(key.as_bytes(), plain)
    }

    fn open<T: DeserializeOwned>(&self, key: &str, sealed: &[u8]) -> Option<T> {
        decode(&self.inner.sealer.open(key.as_bytes(), sealed).ok()?)
    }

    /// A client record, sealed like every record (its key name as associated data).
    fn sealed_client(&self, client: &Client) -> Result<Vec<u8>, StoreError> {
        let plain = encode_client(client).map_err(|e| StoreError::Unavailable(format!("encoding a record: {e}")))?;
        Ok(self.seal(&client_key(&client.client_id), &plain))
    }

    fn open_client(&self, key: &str, sealed: &[u8]) -> Option<Client> {
        decode_client(&self.inner.sealer.open(key.as_bytes(), sealed).ok()?)
    }

    /// Seals the access-token, refresh-family and client records that versions before issue 23 wrote in the
    /// clear (postcard), once per Redis: the first replica of this version that starts claims the marker
    /// `dcrp:meta:records-sealed` (`SET NX`, never expiring) and seals them, so that the sign-ins of the upgrade
    /// survive it; every later start finds the marker and seals nothing, so that a record planted in the clear
    /// afterwards is never laundered into a sealed one — a record that does not open is refused. Returns how many
    /// were sealed. Records written in the clear by an older replica while this one runs are refused (upgrade
    /// every replica).
    async fn seal_plain_records(&self) -> Result<usize, StoreError> {
        let first: Option<String> = ::redis::cmd("SET")
            .arg(SEALED_MARKER)
            .arg(self.inner.clock.now())
            .arg("NX")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if first.is_none() {
            return Ok(0);
        }
        let mut sealed = 0;
        // String values: access tokens and clients, each recognised by its own decoder.
        fn plain_access(b: &[u8]) -> bool {
            decode::<AccessRecord>(b).is_some()
        }
        fn plain_client(b: &[u8]) -> bool {
            decode_client(b).is_some()
        }
        type IsPlain = fn(&[u8]) -> bool;
        let kinds: [(&str, IsPlain); 2] = [("dcrp:at:*", plain_access), ("dcrp:client:*", plain_client)];
        for (pattern, is_plain) in kinds {
            for key in self.scan(pattern).await? {
                let Some(bytes) = self.get(&key).await? else { continue };
                if self.inner.sealer.open(key.as_bytes(), &bytes).is_err() && is_plain(&bytes) {
                    ::redis::cmd("SET")
                        .arg(&key)
                        .arg(self.seal(&key, &bytes))
                        .arg("XX")
                        .arg("KEEPTTL")
                        .query_async::<Option<String>>(&mut self.conn())
                        .await
                        .map_err(unavailable)?;
                    sealed += 1;
                }
            }
        }
        for key in self.scan("dcrp:rf:*").await? {
            let rec: Option<Vec<u8>> =
                ::redis::cmd("HGET").arg(&key).arg("rec").query_async(&mut self.conn()).await.map_err(unavailable)?;
            let Some(bytes) = rec else { continue };
            if self.inner.sealer.open(key.as_bytes(), &bytes).is_err() && decode::<FamilyRecord>(&bytes).is_some() {
                ::redis::cmd("HSET")
                    .arg(&key)
                    .arg("rec")
                    .arg(self.seal(&key, &bytes))
                    .query_async::<i64>(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                sealed += 1;
            }
        }
        Ok(sealed)
    }

    /// The keys matching `pattern`, by `SCAN` on every master (never `KEYS`: it would block Redis on a large
    /// store).
    async fn scan(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        self.inner.conn.scan(pattern).await.map_err(unavailable)
    }

    /// Every registered client (admin API).
    pub async fn list_clients(&self) -> Result<Vec<Arc<Client>>, StoreError> {
        let mut clients = Vec::new();
        for key in self.scan("dcrp:client:*").await? {
            if let Some(client) = self.get(&key).await?.and_then(|b| self.open_client(&key, &b)) {
                clients.push(Arc::new(client));
            }
        }
        Ok(clients)
    }

    /// Every live grant (admin API): the ids read from the grant keys, each grant opened as a lookup would.
    pub async fn list_grants(&self) -> Result<Vec<Arc<Grant>>, StoreError> {
        let mut grants = Vec::new();
        for key in self.scan("dcrp:grant:*").await? {
            let hex = key.trim_start_matches("dcrp:grant:{g:").trim_end_matches('}');
            let Ok(id) = u128::from_str_radix(hex, 16) else { continue };
            if let Some(grant) = self.grant(GrantId(id)).await? {
                grants.push(grant);
            }
        }
        Ok(grants)
    }

    /// A grant by id (admin API, audit).
    pub async fn grant_by_id(&self, id: GrantId) -> Result<Option<Arc<Grant>>, StoreError> {
        self.grant(id).await
    }

    /// Records what a person's next sign-in through a client must ask of Entra, sealed (Entra's claims request), expiring with it;
    /// nothing for an unknown client.
    pub async fn require_interaction(
        &self,
        client_id: &str,
        who: &str,
        requirement: &InteractionRequirement,
    ) -> Result<(), StoreError> {
        if self.client(client_id).await?.is_none() {
            return Ok(());
        }
        let key = interaction_key(client_id, who);
        let sealed = self.seal(&key, &encode(requirement)?);
        self.set_ex(&key, &sealed, requirement.expires_at).await
    }

    /// The live requirement of a person's next sign-in through a client; `take`: removed as read (`GETDEL`, one taker).
    pub async fn interaction(
        &self,
        client_id: &str,
        who: &str,
        now: UnixTime,
        take: bool,
    ) -> Result<Option<InteractionRequirement>, StoreError> {
        let key = interaction_key(client_id, who);
        let bytes: Option<Vec<u8>> = ::redis::cmd(if take { "GETDEL" } else { "GET" })
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(bytes
            .and_then(|b| self.open::<InteractionRequirement>(&key, &b))
            .filter(|i: &InteractionRequirement| i.expires_at > now))
    }

    /// `PING`, for `/readyz`.
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn();
        matches!(::redis::cmd("PING").query_async::<String>(&mut conn).await, Ok(pong) if pong == "PONG")
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        ::redis::cmd("GET").arg(key).query_async(&mut self.conn()).await.map_err(unavailable)
    }

    async fn set_ex(&self, key: &str, value: &[u8], expires_at: UnixTime) -> Result<(), StoreError> {
        ::redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(self.ttl(expires_at))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn extend(&self, key: &str, expires_at: UnixTime) -> Result<(), StoreError> {
        ::redis::Script::new(EXTEND)
            .key(key)
            .arg(self.ttl(expires_at))
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn publish(&self, event: String) -> Result<(), StoreError> {
        ::redis::cmd("PUBLISH")
            .arg(EVENTS)
            .arg(event)
            .query_async::<i64>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// A grant's record: with a data key, the IdP tokens sealed with it apart from the identity; without one
    /// (imported), as before.
    fn grant_record(&self, grant: &Grant) -> Result<GrantRecord, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let (login, idp) = match grant.data_key.get() {
            Some(k) => {
                let tokens = encode(&login_rec(&grant.upstream(), &Identity::default()))?;
                let idp = k.seal(&idp_aad(&grant_key(grant.id)), &tokens);
                (login_rec(&UpstreamCredential::Local, &grant.identity), Some(idp))
            }
            None => (login_rec(&grant.upstream(), &grant.identity), None),
        };
        Ok(GrantRecord {
            client_id: grant.client_id.clone(),
            scope: grant.scope.to_string(),
            resource: grant.resource.clone(),
            login,
            created_at: grant.created_at,
            expires_at: grant.expires_at(),
            upstream_obtained_at: grant.upstream_obtained_at.load(Relaxed),
            upstream_refreshed_at: grant.upstream_refreshed_at.load(Relaxed),
            membership: MembershipRec::of(&grant.identity),
            idp,
        })
    }

    fn sealed_grant(&self, grant: &Grant) -> Result<Vec<u8>, StoreError> {
        Ok(self.seal(&grant_key(grant.id), &encode(&self.grant_record(grant)?)?))
    }

    /// A grant by id, metadata only unless this replica holds it: see [`RedisStore::unlock_grant`].
    async fn grant(&self, id: GrantId) -> Result<Option<Arc<Grant>>, StoreError> {
        Ok(self.unlock_grant(id, None, true).await?.map(|(grant, _)| grant))
    }

    /// A grant by id and whether its IdP tokens are open. `unlock`: the data key a proxy token just unwrapped;
    /// else the one this replica holds for the grant, if any.
    ///
    /// With its data key (or for an imported grant, which has none): this replica's object, brought up to date
    /// with the record (a newer IdP token another replica obtained is adopted), or a new one it keeps. Without:
    /// a grant of metadata only (identity, client, scope; credential `Local`), which is never kept nor cached, and
    /// must never be used to reach an upstream (`false`). `None` when the grant is gone (revoked or expired) —
    /// then this replica's object is revoked too.
    ///
    /// `held`: whether the data key this replica holds may open the grant when `unlock` is `None` (never for a
    /// lookup by a presented token, which must open the grant itself: issue 23, a forged record naming a
    /// grant must not borrow the replica's key).
    async fn unlock_grant(
        &self,
        id: GrantId,
        unlock: Option<&DataKey>,
        held: bool,
    ) -> Result<Option<(Arc<Grant>, bool)>, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let key = grant_key(id);
        let Some(rec) = self.get(&key).await?.and_then(|b| self.open::<GrantRecord>(&key, &b)) else {
            if let Some((_, gone)) = self.inner.grants.remove(&id) {
                gone.revoke();
            }
            return Ok(None);
        };
        // This replica's object, unless a token unwrapped another key than the one it holds.
        let local = self.inner.grants.get(&id).map(|g| g.clone()).filter(|l| match unlock {
            Some(k) => l.data_key.get() == Some(k),
            None => true,
        });
        let data_key =
            unlock.cloned().or_else(|| local.as_ref().filter(|_| held).and_then(|l| l.data_key.get().cloned()));
        let (metadata, credential) = match (&rec.idp, &data_key) {
            (None, _) => match login_from(rec.login) {
                Some(login) => (login.identity, Some(login.credential)),
                None => return Ok(None),
            },
            (Some(sealed), k) => {
                let Some(identity) = login_from(rec.login).map(|l| l.identity) else {
                    return Ok(None);
                };
                let opened = k
                    .as_ref()
                    .and_then(|k| k.open(&idp_aad(&key), sealed).ok())
                    .and_then(|plain| decode::<LoginRec>(&plain))
                    .and_then(login_from)
                    .map(|l| l.credential);
                (identity, opened)
            }
        };
        if let Some(local) = local.filter(|_| held || unlock.is_some() || rec.idp.is_none()) {
            if credential.is_some() || rec.idp.is_none() {
                local.extend_to(rec.expires_at);
                if rec.upstream_obtained_at > local.upstream_obtained_at.load(Relaxed) {
                    if let Some(UpstreamCredential::Tokens(tokens)) = credential {
                        *local.upstream_mut() = UpstreamCredential::Tokens(tokens);
                        local.upstream_obtained_at.store(rec.upstream_obtained_at, Relaxed);
                        local.upstream_refreshed_at.store(rec.upstream_refreshed_at, Relaxed);
                    }
                }
                return Ok(Some((local, true)));
            }
        }
        let open = credential.is_some();
        let mut login =
            UpstreamLogin { credential: credential.unwrap_or(UpstreamCredential::Local), identity: metadata };
        if let Some(membership) = rec.membership {
            membership.apply(&mut login.identity);
        }
        let grant = Grant::restore(id, rec.client_id, rec.scope, rec.resource, login, rec.created_at, rec.expires_at);
        grant.upstream_obtained_at.store(rec.upstream_obtained_at, Relaxed);
        grant.upstream_refreshed_at.store(rec.upstream_refreshed_at, Relaxed);
        if !open {
            return Ok(Some((grant, false)));
        }
        if let (Some(k), Some(_)) = (data_key, &rec.idp) {
            let _ = grant.data_key.set(k);
        }
        if self.inner.grants.len() >= self.inner.cache_entries {
            self.inner.grants.clear();
        }
        let mut entry = self.inner.grants.entry(id).or_insert_with(|| grant.clone());
        if entry.data_key.get() != grant.data_key.get() {
            *entry = grant;
        }
        Ok(Some((entry.clone(), true)))
    }

    /// An access token's record and grant. With the token as presented (`secret`), its wrap unlocks the grant's
    /// IdP tokens and a grant that stays shut is `None`; without, metadata is enough (introspection, revocation).
    async fn lookup_access(
        &self,
        hash: &TokenHash,
        secret: Option<&str>,
    ) -> Result<Option<(Arc<Grant>, UnixTime, Arc<str>)>, StoreError> {
        let key = access_key(hash);
        let Some(rec) = self.get(&key).await?.and_then(|b| self.open::<AccessRecord>(&key, &b)) else {
            return Ok(None);
        };
        let unlock = secret.and_then(|t| DataKey::unwrap(&rec.wrapped, t, WrapKind::AccessToken, &key));
        // A presented token whose wrap does not open is refused: it never borrows the replica's key.
        if secret.is_some() && !rec.wrapped.is_empty() && unlock.is_none() {
            return Ok(None);
        }
        let Some((grant, open)) = self.unlock_grant(GrantId(rec.grant), unlock.as_ref(), secret.is_none()).await?
        else {
            return Ok(None);
        };
        if secret.is_some() && !open {
            return Ok(None);
        }
        if !scope_within(&rec.scope, &grant.scope) {
            tracing::warn!(grant = %format!("{:032x}", rec.grant), "an access-token record's scope exceeds its grant's; refused");
            return Ok(None);
        }
        let scope = if *rec.scope == *grant.scope { grant.scope.clone() } else { Arc::from(rec.scope) };
        Ok(Some((grant, rec.expires_at, scope)))
    }

    /// The hot path: from the cache while fresh, else from Redis (and cached); a cached entry is served when
    /// Redis does not answer.
    pub async fn access(&self, token: &str, now: UnixTime) -> Result<Option<(Arc<Grant>, Arc<str>)>, StoreError> {
        let hash = &TokenHash::of(token);
        let live =
            |c: &Cached| (c.expires_at > now && !c.grant.is_revoked()).then(|| (c.grant.clone(), c.scope.clone()));
        if let Some(c) = self.inner.cache.get(hash) {
            // Fresh by both clocks: the monotonic one (sub-second `redis_cache_ttl`) and the store's (seconds),
            // which agree in production and let a test clock move past it.
            if c.checked.elapsed() < self.inner.cache_ttl && now <= c.confirmed_at.saturating_add(1) {
                return Ok(live(&c));
            }
        }
        match self.lookup_access(hash, Some(token)).await {
            Ok(Some((grant, expires_at, scope))) => {
                let cached = Cached { grant, scope, expires_at, checked: Instant::now(), confirmed_at: now };
                let found = live(&cached);
                let cache = &self.inner.cache;
                if cache.len() >= self.inner.cache_entries {
                    let ttl = self.inner.cache_ttl;
                    cache.retain(|_, c| c.checked.elapsed() < ttl);
                    if cache.len() >= self.inner.cache_entries {
                        cache.clear();
                    }
                }
                cache.insert(*hash, cached);
                Ok(found)
            }
            Ok(None) => {
                self.inner.cache.remove(hash);
                Ok(None)
            }
            Err(e) => match self.inner.cache.get(hash) {
                Some(c) if now.saturating_sub(c.confirmed_at) <= STALE_IF_ERROR_SECS => Ok(live(&c)),
                _ => Err(e),
            },
        }
    }

    pub async fn access_token_record(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<(Arc<Grant>, UnixTime, Arc<str>)>, StoreError> {
        self.lookup_access(hash, None).await
    }

    async fn family_record(&self, family: &TokenHash) -> Result<Option<FamilyRecord>, StoreError> {
        let rec: Option<Vec<u8>> = ::redis::cmd("HGET")
            .arg(family_key(family))
            .arg("rec")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(rec.and_then(|b| self.open(&family_key(family), &b)))
    }

    /// A family, to decide on `presented`: when it is the current token, its wrap must unlock the grant (else
    /// `None`: the rotation would have no data key to wrap again); any other token decides on metadata.
    pub async fn refresh_family(
        &self,
        family: &TokenHash,
        presented: Option<&str>,
    ) -> Result<Option<RefreshFamily>, StoreError> {
        let Some(rec) = self.family_record(family).await? else {
            return Ok(None);
        };
        let current = presented.filter(|t| TokenHash::of(t).0 == rec.current);
        let unlock =
            current.and_then(|t| DataKey::unwrap(&rec.wrapped, t, WrapKind::RefreshToken, &family_key(family)));
        if current.is_some() && !rec.wrapped.is_empty() && unlock.is_none() {
            return Ok(None);
        }
        let Some((grant, open)) = self.unlock_grant(GrantId(rec.grant), unlock.as_ref(), current.is_none()).await?
        else {
            return Ok(None);
        };
        if current.is_some() && !open {
            return Ok(None);
        }
        Ok(Some(RefreshFamily {
            grant,
            generation: rec.generation,
            current: TokenHash(rec.current),
            expires_at: rec.expires_at,
            rotated: rec
                .rotated
                .map(|(hash, at, sealed_successor)| Box::new(Rotation { hash: TokenHash(hash), at, sealed_successor })),
        }))
    }

    /// Writes a family: unconditionally (`expected = None`, a new family) or if its generation is still
    /// `expected` (one Lua script), with the grant's data key wrapped under `secret`, its current token. Extends
    /// the grant's life to the family's.
    pub async fn put_refresh_family(
        &self,
        family: &TokenHash,
        f: &RefreshFamily,
        expected: Option<u32>,
        secret: Option<&str>,
    ) -> Result<bool, StoreError> {
        let wrapped = match (f.grant.data_key.get(), secret) {
            (Some(k), Some(t)) => k.wrap(t, WrapKind::RefreshToken, &family_key(family)),
            _ => Vec::new(),
        };
        let rec = FamilyRecord {
            grant: f.grant.id.0,
            generation: f.generation,
            current: f.current.0,
            expires_at: f.expires_at,
            rotated: f.rotated.as_ref().map(|r| (r.hash.0, r.at, r.sealed_successor.clone())),
            wrapped,
        };
        let swapped: i64 = ::redis::Script::new(SWAP_FAMILY)
            .key(family_key(family))
            .arg(expected.map(|g| g.to_string()).unwrap_or_default())
            .arg(f.generation.to_string())
            .arg(self.seal(&family_key(family), &encode(&rec)?))
            .arg(self.ttl(f.expires_at))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if swapped == 1 {
            self.extend(&grant_key(f.grant.id), f.expires_at).await?;
            self.extend(&client_grants_key(&f.grant.client_id), f.expires_at).await?;
        }
        Ok(swapped == 1)
    }

    pub async fn refresh_token(&self, token: &str) -> Result<Option<(Arc<Grant>, UnixTime, bool)>, StoreError> {
        let Some(name) = RefreshTokenName::parse(token) else {
            return Ok(None);
        };
        let Some(family) = self.refresh_family(&name.family.hash(), None).await? else {
            return Ok(None);
        };
        Ok(match family.classify(name.generation, &TokenHash::of(token)) {
            Presented::Current => Some((family.grant.clone(), family.expires_at, true)),
            Presented::Rotated(_) => Some((family.grant.clone(), family.expires_at, false)),
            Presented::Reused | Presented::Unknown => None,
        })
    }

    pub async fn refresh_client(&self, token: &str) -> Result<Option<String>, StoreError> {
        let Some(name) = RefreshTokenName::parse(token) else {
            return Ok(None);
        };
        let Some(rec) = self.family_record(&name.family.hash()).await? else {
            return Ok(None);
        };
        Ok(self.grant(GrantId(rec.grant)).await?.map(|g| g.client_id.clone()))
    }

    /// Deletes the grant record (every lookup then fails) and tells the other replicas.
    pub async fn revoke_grant(&self, id: GrantId) -> Result<(), StoreError> {
        if let Some((_, local)) = self.inner.grants.remove(&id) {
            local.revoke();
        }
        ::redis::cmd("DEL")
            .arg(grant_key(id))
            .arg(route_key(id))
            .query_async::<i64>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        self.publish(format!("g:{:032x}", id.0)).await
    }

    pub async fn client(&self, client_id: &str) -> Result<Option<Arc<Client>>, StoreError> {
        let key = client_key(client_id);
        let rec = self.get(&key).await?;
        Ok(rec.and_then(|b| self.open_client(&key, &b)).map(Arc::new))
    }

    /// Writes a client's metadata, keeping the expiry it has (an RFC 7592 update of a never-used client does not
    /// make it permanent).
    pub async fn put_client(&self, client: &Client) -> Result<(), StoreError> {
        ::redis::cmd("SET")
            .arg(client_key(&client.client_id))
            .arg(self.sealed_client(client)?)
            .arg("KEEPTTL")
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    /// Rewrites a client that is in the store (`SET XX`, which also drops its expiry: a client that completed an
    /// authorization stays) and takes it out of the count of unused registrations; nothing for one that is not.
    pub async fn update_client(&self, client: &Client) -> Result<(), StoreError> {
        ::redis::cmd("SET")
            .arg(client_key(&client.client_id))
            .arg(self.sealed_client(client)?)
            .arg("XX")
            .query_async::<Option<String>>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        ::redis::cmd("ZREM")
            .arg(REGISTRATIONS)
            .arg(&client.client_id)
            .query_async::<i64>(&mut self.conn())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Whether one more registration fits under `max_clients` across all replicas: registrations not yet used
    /// and younger than `ttl_secs` are counted in one sorted set (older ones have expired with their key).
    /// Concurrent registrations on several replicas may overshoot the cap by their number, never more.
    pub async fn room_for_client(&self, ttl_secs: u64, max_clients: usize) -> Result<bool, StoreError> {
        let now = self.inner.clock.now();
        let count: i64 = ::redis::Script::new(COUNT_REGISTRATIONS)
            .key(REGISTRATIONS)
            .arg(now.saturating_sub(ttl_secs))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(usize::try_from(count).unwrap_or(usize::MAX) < max_clients)
    }

    /// Counts one request of `who` (route class and source) in the current minute across replicas: a fixed
    /// window, so a source gets at most `per_minute` per calendar minute whichever replicas it reaches. The seconds
    /// to the next window when over.
    pub async fn count_request(&self, who: &str, per_minute: u32) -> Result<Option<u64>, StoreError> {
        let now = self.inner.clock.now();
        let count: u64 = ::redis::Script::new(COUNT_REQUEST)
            .key(format!("dcrp:rl:{who}:{}", now / 60))
            .arg(61)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok((count > u64::from(per_minute)).then(|| 60 - now % 60))
    }

    /// Adds a registered client, which expires after `ttl_secs` unless it completes an authorization.
    pub async fn add_client(&self, client: &Client, ttl_secs: u64) -> Result<(), StoreError> {
        ::redis::cmd("ZADD")
            .arg(REGISTRATIONS)
            .arg(self.inner.clock.now())
            .arg(&client.client_id)
            .query_async::<i64>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        ::redis::cmd("SET")
            .arg(client_key(&client.client_id))
            .arg(self.sealed_client(client)?)
            .arg("EX")
            .arg(ttl_secs.max(1))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    /// Deletes the client first (no code can be redeemed by it any more), then revokes its grants.
    pub async fn revoke_client(&self, client_id: &str) -> Result<(), StoreError> {
        ::redis::cmd("DEL")
            .arg(client_key(client_id))
            .query_async::<i64>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        ::redis::cmd("ZREM")
            .arg(REGISTRATIONS)
            .arg(client_id)
            .query_async::<i64>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let ids: Vec<String> = ::redis::cmd("SMEMBERS")
            .arg(client_grants_key(client_id))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        for id in ids.iter().filter_map(|id| u128::from_str_radix(id, 16).ok()) {
            self.revoke_grant(GrantId(id)).await?;
        }
        Ok(())
    }

    pub async fn claim_sign_in(&self, key: &TokenHash, expires_at: UnixTime) -> Result<bool, StoreError> {
        self.claim_once(used_key(key), expires_at).await
    }

    /// `SET NX` with the assertion's remaining life as TTL: of two replicas that see one `jti`, one wins.
    pub async fn claim_assertion(&self, key: &TokenHash, expires_at: UnixTime) -> Result<bool, StoreError> {
        self.claim_once(assertion_key(key), expires_at).await
    }

    /// Marks `key` as used until `expires_at` (`SET NX EX`); `false` when it already was. Atomic across replicas.
    async fn claim_once(&self, key: String, expires_at: UnixTime) -> Result<bool, StoreError> {
        let set: Option<String> = ::redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(self.ttl(expires_at))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }

    pub async fn sign_in_used(&self, key: &TokenHash) -> Result<bool, StoreError> {
        ::redis::cmd("EXISTS")
            .arg(used_key(key))
            .query_async::<i64>(&mut self.conn())
            .await
            .map(|n| n > 0)
            .map_err(unavailable)
    }

    /// Stores a code (`secret`: the code itself): the IdP tokens sealed with a fresh data key, which is kept
    /// only wrapped under the code.
    pub async fn issue_code(&self, secret: &str, code: &AuthorizationCode) -> Result<(), StoreError> {
        let key = code_key(&TokenHash::of(secret));
        let k = DataKey::random();
        let rec = CodeRecord {
            request: code.request.clone(),
            expires_at: code.expires_at,
            login: login_rec(&UpstreamCredential::Local, &code.login.identity),
            membership: MembershipRec::of(&code.login.identity),
            idp: k.seal(&idp_aad(&key), &encode(&login_rec(&code.login.credential, &Identity::default()))?),
            wrapped: k.wrap(secret, WrapKind::AuthorizationCode, &key),
        };
        let sealed = self.seal(&key, &encode(&rec)?);
        self.set_ex(&key, &sealed, code.expires_at).await
    }

    pub async fn redeem_code(&self, secret: &str) -> Result<CodeRedemption, StoreError> {
        let hash = &TokenHash::of(secret);
        let key = code_key(hash);
        let (kind, value): (i64, Option<Vec<u8>>) = ::redis::Script::new(REDEEM)
            .key(&key)
            .key(spent_key(hash))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(match (kind, value) {
            (1, Some(sealed)) => {
                let Some(rec) = self.open::<CodeRecord>(&key, &sealed) else {
                    return Ok(CodeRedemption::Unknown);
                };
                match code_login(&key, rec.login, &rec.idp, &rec.wrapped, secret) {
                    Some(mut login) => {
                        if let Some(membership) = rec.membership {
                            membership.apply(&mut login.identity);
                        }
                        CodeRedemption::Taken(Box::new(AuthorizationCode {
                            request: rec.request,
                            expires_at: rec.expires_at,
                            login,
                        }))
                    }
                    None => CodeRedemption::Unknown,
                }
            }
            (2, Some(id)) => match std::str::from_utf8(&id).ok().and_then(|s| u128::from_str_radix(s, 16).ok()) {
                Some(id) => CodeRedemption::Spent(GrantId(id)),
                None => CodeRedemption::Unknown,
            },
            _ => CodeRedemption::Unknown,
        })
    }

    /// Writes the grant (no expiry yet: its tokens extend it), indexes it under its client, then marks the code
    /// spent, in that order: a replay that finds the spent code finds the grant.
    pub async fn start_grant(
        &self,
        grant: Arc<Grant>,
        code: &TokenHash,
        code_expires_at: UnixTime,
    ) -> Result<(), StoreError> {
        grant.data_key.get_or_init(DataKey::random);
        let sealed = self.sealed_grant(&grant)?;
        let mut conn = self.conn();
        ::redis::cmd("SET")
            .arg(grant_key(grant.id))
            .arg(sealed)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        ::redis::cmd("SADD")
            .arg(client_grants_key(&grant.client_id))
            .arg(format!("{:032x}", grant.id.0))
            .query_async::<i64>(&mut conn)
            .await
            .map_err(unavailable)?;
        self.inner.grants.insert(grant.id, grant.clone());
        self.set_ex(&spent_key(code), format!("{:032x}", grant.id.0).as_bytes(), code_expires_at).await
    }

    /// Stores an access token's record, with the grant's data key wrapped under `secret` (the token itself;
    /// `None` on import, which has only the hash).
    pub async fn add_access_token(
        &self,
        hash: &TokenHash,
        token: &AccessToken,
        secret: Option<&str>,
    ) -> Result<(), StoreError> {
        let key = access_key(hash);
        let wrapped = match (token.grant.data_key.get(), secret) {
            (Some(k), Some(t)) => k.wrap(t, WrapKind::AccessToken, &key),
            _ => Vec::new(),
        };
        let rec = AccessRecord {
            grant: token.grant.id.0,
            expires_at: token.expires_at,
            scope: token.scope.to_string(),
            wrapped,
        };
        let sealed = self.seal(&key, &encode(&rec)?);
        self.set_ex(&key, &sealed, token.expires_at).await?;
        self.extend(&grant_key(token.grant.id), token.expires_at).await?;
        self.extend(&client_grants_key(&token.grant.client_id), token.expires_at).await
    }

    pub async fn revoke_access_token(&self, hash: &TokenHash, client_id: &str) -> Result<bool, StoreError> {
        match self.lookup_access(hash, None).await? {
            Some((grant, _, _)) if grant.client_id == client_id => {
                // The owner never changes: the `DEL` decides which of concurrent revocations removed the token.
                let removed = ::redis::cmd("DEL")
                    .arg(access_key(hash))
                    .query_async::<i64>(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                self.inner.cache.remove(hash);
                if removed == 0 {
                    return Ok(false);
                }
                self.publish(format!("a:{}", hex(&hash.0))).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub async fn code_client(&self, hash: &TokenHash) -> Result<Option<String>, StoreError> {
        let key = code_key(hash);
        if let Some(rec) = self.get(&key).await?.and_then(|b| self.open::<CodeRecord>(&key, &b)) {
            return Ok(Some(rec.request.client_id));
        }
        let spent = self.get(&spent_key(hash)).await?;
        let Some(id) = spent.and_then(|b| String::from_utf8(b).ok()).and_then(|s| u128::from_str_radix(&s, 16).ok())
        else {
            return Ok(None);
        };
        Ok(self.grant(GrantId(id)).await?.map(|g| g.client_id.clone()))
    }

    /// Takes the grant's IdP-refresh lock, or waits (bounded) for the replica holding it; either way, when the
    /// record shows a newer IdP token than this replica's, adopts it and leaves the refresh to nobody.
    pub async fn begin_upstream_refresh(&self, grant: &Grant) -> Result<UpstreamTurn, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let before = grant.upstream_obtained_at.load(Relaxed);
        let lock_ms = u64::try_from(self.inner.refresh_lock.as_millis()).unwrap_or(u64::MAX);
        let deadline = Instant::now() + self.inner.refresh_lock + LOCK_WAIT_MARGIN;
        loop {
            let fence: u64 = ::redis::Script::new(LOCK)
                .key(lock_key(grant.id))
                .key(fence_key(grant.id))
                .arg(lock_ms)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            // Whether or not this replica got the lock, another one may have refreshed already.
            let fresh = self.unlock_grant(grant.id, grant.data_key.get(), true).await?.map(|(g, _)| g);
            if fresh.is_none() {
                if fence != 0 {
                    self.end_upstream_refresh(grant, fence, false).await?;
                }
                return Ok(UpstreamTurn::Revoked);
            }
            let adopted = fresh.as_ref().filter(|g| g.upstream_obtained_at.load(Relaxed) > before);
            if let Some(newer) = adopted {
                // `fresh` is a new object when this replica's cache no longer held `grant`: the caller uses `grant`.
                if !std::ptr::eq(Arc::as_ptr(newer), grant) {
                    let copy = match &*newer.upstream() {
                        UpstreamCredential::Tokens(t) => UpstreamTokens::new(
                            t.access_token(),
                            t.refresh_token().map(str::to_owned),
                            t.expires_at,
                            t.scope.clone(),
                        )
                        .ok(),
                        UpstreamCredential::Local => None,
                    };
                    if let Some(tokens) = copy {
                        *grant.upstream_mut() = UpstreamCredential::Tokens(tokens);
                        grant.upstream_obtained_at.store(newer.upstream_obtained_at.load(Relaxed), Relaxed);
                        grant.upstream_refreshed_at.store(newer.upstream_refreshed_at.load(Relaxed), Relaxed);
                    }
                }
                if fence != 0 {
                    self.end_upstream_refresh(grant, fence, false).await?;
                }
                return Ok(UpstreamTurn::Refreshed);
            }
            if fence != 0 {
                return Ok(UpstreamTurn::Refresh { fence });
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Unavailable("another replica holds the IdP refresh lock".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes the refreshed grant record if `fence` still holds the lock (fencing: a replica whose lock expired
    /// writes nothing), and releases the lock.
    pub async fn end_upstream_refresh(&self, grant: &Grant, fence: u64, refreshed: bool) -> Result<(), StoreError> {
        let record = if refreshed { self.sealed_grant(grant)? } else { Vec::new() };
        ::redis::Script::new(UNLOCK)
            .key(lock_key(grant.id))
            .key(grant_key(grant.id))
            .arg(fence.to_string())
            .arg(record)
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

/// The login a redeemed code carries: its IdP tokens opened with the code's data key, unwrapped with the code
/// (`secret`); an imported code (no `idp`) holds them in `login`. `None` when they cannot be opened.
fn code_login(key: &str, login: LoginRec, idp: &[u8], wrapped: &[u8], secret: &str) -> Option<UpstreamLogin> {
    let mut login = login_from(login)?;
    if !idp.is_empty() {
        let k = DataKey::unwrap(wrapped, secret, WrapKind::AuthorizationCode, key)?;
        let plain = k.open(&idp_aad(key), idp).ok()?;
        login.credential = login_from(decode::<LoginRec>(&plain)?)?.credential;
    }
    Some(login)
}

/// `[[routes]]` tokens shared across replicas (issue 16 §3), sealed with the grant's data key: a grant without
/// one in this replica (imported) does not share them.
impl RedisStore {
    /// The route's token in Redis, if it opens with the grant's data key: adopted onto `grant.route_tokens` when
    /// newer than this replica's. The token to use (this replica's when not older).
    pub async fn route_token(
        &self,
        grant: &Grant,
        prefix: &str,
    ) -> Result<Option<(UnixTime, Arc<UpstreamTokens>)>, StoreError> {
        let Some(k) = grant.data_key.get() else {
            return Ok(None);
        };
        let key = route_key(grant.id);
        let sealed: Option<Vec<u8>> =
            ::redis::cmd("HGET").arg(&key).arg(prefix).query_async(&mut self.conn()).await.map_err(unavailable)?;
        let Some(rec) = sealed
            .and_then(|b| k.open(&route_aad(&key, prefix), &b).ok())
            .and_then(|plain| decode::<RouteRecord>(&plain))
        else {
            return Ok(None);
        };
        let Some(UpstreamLogin { credential: UpstreamCredential::Tokens(tokens), .. }) = login_from(rec.tokens) else {
            return Ok(None);
        };
        let mut routes = grant.route_tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, mine)) = routes.get(prefix).filter(|(at, _)| *at >= rec.obtained_at) {
            return Ok(Some((*at, mine.clone())));
        }
        let tokens = Arc::new(tokens);
        routes.insert(prefix.to_owned(), (rec.obtained_at, tokens.clone()));
        Ok(Some((rec.obtained_at, tokens)))
    }

    /// Writes this replica's token of a route for the other replicas, sealed with the grant's data key; it
    /// expires with the grant.
    pub async fn put_route_token(&self, grant: &Grant, prefix: &str) -> Result<(), StoreError> {
        let Some(k) = grant.data_key.get() else {
            return Ok(());
        };
        let entry = grant.route_tokens.lock().unwrap_or_else(|p| p.into_inner()).get(prefix).cloned();
        let Some((obtained_at, t)) = entry else {
            return Ok(());
        };
        let Ok(copy) =
            UpstreamTokens::new(t.access_token(), t.refresh_token().map(str::to_owned), t.expires_at, t.scope.clone())
        else {
            return Ok(());
        };
        let rec =
            RouteRecord { obtained_at, tokens: login_rec(&UpstreamCredential::Tokens(copy), &Identity::default()) };
        let key = route_key(grant.id);
        let sealed = k.seal(&route_aad(&key, prefix), &encode(&rec)?);
        ::redis::cmd("HSET")
            .arg(&key)
            .arg(prefix)
            .arg(sealed)
            .query_async::<i64>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        self.extend(&key, grant.expires_at()).await
    }
}

/// What a route token's blob is bound to: the grant's route key and the route's prefix.
fn route_aad(key: &str, prefix: &str) -> Vec<u8> {
    format!("{key}\0route\0{prefix}").into_bytes()
}

/// What [`RedisStore::import`] copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub clients: usize,
    pub grants: usize,
    pub access_tokens: usize,
    pub refresh_families: usize,
    pub codes: usize,
}

impl RedisStore {
    /// Copies an in-memory store (a snapshot just loaded) into Redis, so that a single-replica deployment moves
    /// without its users signing in again (`dcr-proxy store import --snapshot FILE`). What is expired at `now` is
    /// left out; running it twice writes the same records again. The maps are copied first (no guard is held
    /// across a write). The snapshot has the hashes of the proxy tokens, not the tokens: no data key can be
    /// wrapped for them, so the imported grants and codes keep their IdP tokens under the configured key only
    /// (`store::wrap`), for as long as they live.
    pub async fn import(&self, store: &MemoryStore, now: UnixTime) -> Result<Imported, StoreError> {
        let clients: Vec<Arc<Client>> = store.clients.iter().map(|c| c.clone()).collect();
        let grants: Vec<Arc<Grant>> =
            store.grants.iter().filter(|g| !g.is_revoked() && g.expires_at() > now).map(|g| g.clone()).collect();
        let access: Vec<(TokenHash, AccessToken)> =
            store.access_tokens.iter().filter(|t| t.expires_at > now).map(|t| (*t.key(), t.clone())).collect();
        let families: Vec<(TokenHash, RefreshFamily)> =
            store.refresh_families.iter().filter(|f| f.expires_at > now).map(|f| (*f.key(), f.clone())).collect();
        let mut codes = Vec::new();
        for c in store.codes.iter().filter(|c| c.expires_at > now) {
            let key = code_key(c.key());
            // The import has the code's hash only: its IdP tokens stay under the configured key (`store::wrap`).
            let rec = CodeRecord {
                request: c.request.clone(),
                expires_at: c.expires_at,
                login: login_rec(&c.login.credential, &c.login.identity),
                membership: MembershipRec::of(&c.login.identity),
                idp: Vec::new(),
                wrapped: Vec::new(),
            };
            codes.push((key.clone(), self.seal(&key, &encode(&rec)?), c.expires_at));
        }
        let spent: Vec<(TokenHash, SpentCode)> =
            store.spent_codes.iter().filter(|c| c.expires_at > now).map(|c| (*c.key(), *c)).collect();
        let mut done = Imported { clients: clients.len(), codes: codes.len(), ..Imported::default() };
        for client in clients {
            self.put_client(&client).await?;
        }
        for grant in grants {
            let sealed = self.sealed_grant(&grant)?;
            self.set_ex(&grant_key(grant.id), &sealed, grant.expires_at()).await?;
            ::redis::cmd("SADD")
                .arg(client_grants_key(&grant.client_id))
                .arg(format!("{:032x}", grant.id.0))
                .query_async::<i64>(&mut self.conn())
                .await
                .map_err(unavailable)?;
            self.extend(&client_grants_key(&grant.client_id), grant.expires_at()).await?;
            done.grants += 1;
        }
        for (hash, token) in access {
            self.add_access_token(&hash, &token, None).await?;
            done.access_tokens += 1;
        }
        for (hash, family) in families {
            self.put_refresh_family(&hash, &family, None, None).await?;
            done.refresh_families += 1;
        }
        for (key, sealed, expires_at) in codes {
            self.set_ex(&key, &sealed, expires_at).await?;
        }
        for (hash, code) in spent {
            self.set_ex(&spent_key(&hash), format!("{:032x}", code.grant.0).as_bytes(), code.expires_at).await?;
        }
        Ok(done)
    }
}

/// Follows `dcrp:events` for as long as the store lives, reconnecting with backoff; drops what a revocation
/// names, and the whole cache whenever the subscription (re)starts (a message may have been missed).
async fn listen(store: Weak<Inner>, mut subscriber: Subscriber) {
    let mut pause = Duration::from_millis(100);
    loop {
        if store.strong_count() == 0 {
            return;
        }
        if let Ok(mut pubsub) = subscriber.pubsub().await {
            if pubsub.subscribe(EVENTS).await.is_ok() {
                pause = Duration::from_millis(100);
                match store.upgrade() {
                    Some(inner) => inner.cache.clear(),
                    None => return,
                }
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            let Some(inner) = store.upgrade() else { return };
                            if let Ok(event) = message.get_payload::<String>() {
                                apply(&inner.cache, &inner.grants, &event);
                            }
                        }
                        () = tokio::time::sleep(Duration::from_secs(5)) => {
                            if store.strong_count() == 0 {
                                return;
                            }
                        }
                    }
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// One event: `g:<grant id>` (revoked) or `a:<token hash>` (access token revoked).
fn apply(cache: &DashMap<TokenHash, Cached>, grants: &DashMap<GrantId, Arc<Grant>>, event: &str) {
    match event.split_once(':') {
        Some(("g", id)) => {
            if let Ok(id) = u128::from_str_radix(id, 16) {
                if let Some((_, grant)) = grants.remove(&GrantId(id)) {
                    grant.revoke();
                }
                cache.retain(|_, c| c.grant.id.0 != id);
            }
        }
        Some(("a", hash)) => {
            cache.retain(|h, _| hex(&h.0) != hash);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_key_operations_share_one_hash_tag() {
        let tag = |k: &str| k[k.find('{').unwrap_or(0)..=k.find('}').unwrap_or(0)].to_owned();
        let h = TokenHash([7; 32]);
        assert_eq!(tag(&code_key(&h)), tag(&spent_key(&h)));
        let g = GrantId(42);
        assert_eq!(tag(&grant_key(g)), tag(&lock_key(g)));
        assert_eq!(tag(&lock_key(g)), tag(&fence_key(g)));
        assert!(!access_key(&h).contains(&format!("{:?}", h.0)), "keys hold hashes in hex only");
    }

    #[test]
    fn an_event_drops_the_grant_and_its_cached_bearers_only() {
        let login = || UpstreamLogin { credential: UpstreamCredential::Local, identity: Identity::default() };
        let (revoked, other) =
            (Grant::new("c".into(), vec![], None, login(), 1), Grant::new("c".into(), vec![], None, login(), 1));
        let cache: DashMap<TokenHash, Cached> = DashMap::new();
        let cached = |g: &Arc<Grant>| Cached {
            grant: g.clone(),
            scope: Arc::from(""),
            expires_at: 10,
            checked: Instant::now(),
            confirmed_at: 0,
        };
        cache.insert(TokenHash([1; 32]), cached(&revoked));
        cache.insert(TokenHash([2; 32]), cached(&other));
        cache.insert(TokenHash([3; 32]), cached(&other));
        let grants = DashMap::new();
        grants.insert(revoked.id, revoked.clone());
        apply(&cache, &grants, &format!("g:{:032x}", revoked.id.0));
        assert!(revoked.is_revoked() && !other.is_revoked());
        assert!(grants.is_empty() && cache.len() == 2);
        apply(&cache, &grants, &format!("a:{}", hex(&[2; 32])));
        assert!(cache.contains_key(&TokenHash([3; 32])) && cache.len() == 1);
        apply(&cache, &grants, "g:not-hex");
        assert_eq!(cache.len(), 1);
    }
}
