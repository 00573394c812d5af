//! The in-memory backend ([`MemoryStore`]): clients, codes, grants and token hashes, in `DashMap`s, and the record of sign-in tickets
//! already used. A sign-in in flight is carried by the browser, sealed ([`crate::oauth::flow`]); nothing is
//! stored for it but that single-use record.
//!
//! Invariants:
//! - No token, code, state or secret is kept in clear: keys are [`TokenHash`]es (SHA-256). The upstream (IdP)
//!   tokens are the exception by necessity; they live only inside [`Grant`] and are never logged.
//! - Codes are single use: they are taken out of their map with `remove`, which is atomic, so two concurrent
//!   redemptions cannot both succeed. Consent forms and IdP states are single use through [`SingleUse::claim`],
//!   atomic under its lock.
//! - Nothing an unauthenticated client can create grows without bound or locks others out: the client table evicts
//!   never-used clients when full, those of the sources holding the most first, oldest first
//!   ([`MemoryStore::make_room_for_client`]; a client that redeemed a code is never evicted), and [`SingleUse`] forgets
//!   its oldest entries when full.
//! - No `.await` happens while a `DashMap` guard or a grant's `RwLock` is held: every guard is dropped before any
//!   I/O. A grant's upstream refresh is serialised by its own async `refresh_lock`, not by a map lock.
//! - A grant is revoked by a flag; every lookup checks it, and the sweeper removes what belongs to revoked grants.
//! - Memory per grant does not grow with use: a grant has one [`RefreshFamily`] (its current refresh token and the
//!   one just rotated) whatever the number of refreshes, and its access tokens expire after `tokens.access_ttl`.
//!
//! [`MemoryStore::sweep`] removes expired entries so that memory stays bounded; [`upkeep`] runs it, and the snapshot
//! writer, for as long as its guard lives.
//!
//! The maps are private. The rules use operations named for what they do ([`MemoryStore::redeem_code`],
//! [`MemoryStore::start_grant`], [`MemoryStore::rotate_refresh`], [`MemoryStore::revoke_grant`], [`MemoryStore::revoke_client`],
//! [`MemoryStore::claim_sign_in`], …), each one round trip to a networked key-value store, so that a second
//! implementation can sit behind the same operations. Atomic ones say so; the others say which order they write
//! in and why that is safe. Must be atomic: [`MemoryStore::redeem_code`] (take), [`MemoryStore::rotate_refresh`]
//! (compare-and-rotate), [`MemoryStore::claim_sign_in`] (set-if-absent), [`MemoryStore::revoke_access_token`]
//! (remove-if-owner), [`MemoryStore::revoke_grant`] (one flag).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{ready, Future};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use super::*;
use crate::clock::UnixTime;
use crate::crypto::TokenHash;
use crate::rate_limit::Source;

/// The proxy's state. Cheap to share behind an `Arc`.
///
/// The maps are private: the rules change the store only through the operations below, each named for what it
/// does. Each operation is one round trip to a networked key-value store; those documented as atomic must stay so
/// in any implementation (a `DashMap` entry lock here, a `MULTI`/script there). Operations that touch several keys
/// without being atomic say which order they write in and why that order is safe.
#[derive(Default)]
pub struct MemoryStore {
    pub(super) clients: DashMap<String, Arc<Client>>,
    /// Consent forms and IdP states already used.
    pub(super) used_sign_ins: SingleUse,
    /// Client assertions (RFC 7523 `jti`, per client) already used, until they expire.
    pub(super) used_assertions: SingleUse,
    /// The source (address, IPv6 by /64) each client registered from, for fair eviction; not snapshotted.
    pub(super) client_sources: DashMap<String, Source>,
    pub(super) codes: DashMap<TokenHash, AuthorizationCode>,
    /// Redeemed codes, kept until they would have expired, so that a replay revokes what they issued.
    pub(super) spent_codes: DashMap<TokenHash, SpentCode>,
    pub(super) grants: DashMap<GrantId, Arc<Grant>>,
    pub(super) access_tokens: DashMap<TokenHash, AccessToken>,
    /// Refresh-token families (one per grant that has refresh tokens), by [`FamilyId::hash`].
    pub(super) refresh_families: DashMap<TokenHash, RefreshFamily>,
    /// What the next sign-in of a client must ask of Entra (issue 16), by client id; one entry per client at most.
    /// Keyed by client and person ([`crate::oauth::flow::SignIns::person_key`] or a browser binding's key).
    pub(super) interactions: DashMap<(String, String), InteractionRequirement>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks up a live access token: unexpired and of a grant that is not revoked.
    pub fn access_token(&self, hash: &TokenHash, now: UnixTime) -> Option<Arc<Grant>> {
        let entry = self.access_tokens.get(hash)?;
        if entry.expires_at <= now || entry.grant.is_revoked() {
            return None;
        }
        Some(entry.grant.clone())
    }

    /// Looks up a live access token: its grant and the scope the token carries.
    pub fn access(&self, hash: &TokenHash, now: UnixTime) -> Option<BearerGrant> {
        let entry = self.access_tokens.get(hash)?;
        if entry.expires_at <= now || entry.grant.is_revoked() {
            return None;
        }
        Some((entry.grant.clone(), entry.scope.clone()))
    }

    /// The grant of a refresh token this store issued — the current one or the one just rotated — and the token's
    /// expiry, and whether it is the current one. Revocation (RFC 7009) and introspection (RFC 7662) use it.
    pub fn refresh_token(&self, token: &str) -> Option<RefreshLookup> {
        let name = RefreshTokenName::parse(token)?;
        let family = self.refresh_families.get(&name.family.hash())?;
        match family.classify(name.generation, &TokenHash::of(token)) {
            Presented::Current => Some((family.grant.clone(), family.expires_at, true)),
            Presented::Rotated(_) => Some((family.grant.clone(), family.expires_at, false)),
            Presented::Reused | Presented::Unknown => None,
        }
    }

    /// Revokes a grant: every token issued under it stops working at once. Atomic: the grant's flag is one write
    /// that every lookup reads; its tokens are removed later by [`MemoryStore::sweep`].
    pub fn revoke_grant(&self, id: GrantId) {
        if let Some((_, grant)) = self.grants.remove(&id) {
            grant.revoke();
        }
    }

    /// A registered client (not a metadata-document client, which lives in its cache).
    pub fn client(&self, client_id: &str) -> Option<Arc<Client>> {
        self.clients.get(client_id).map(|c| c.clone())
    }

    /// Whether a client is registered. Read-only.
    pub fn has_client(&self, client_id: &str) -> bool {
        self.clients.contains_key(client_id)
    }

    /// Replaces a client's metadata (RFC 7592 update), or adds the client — one write of one key. A client
    /// restored from a snapshot has no known source.
    pub fn put_client(&self, client: Client) {
        self.clients.insert(client.client_id.clone(), Arc::new(client));
    }

    /// Deletes a client and revokes every grant it holds (RFC 7592 §2.3). Not atomic across keys: the client is
    /// removed first, so no new code can be redeemed by it (authentication finds no client), then its grants are
    /// revoked one by one.
    pub fn revoke_client(&self, client_id: &str) {
        self.clients.remove(client_id);
        self.client_sources.remove(client_id);
        let grants: Vec<GrantId> = self.grants.iter().filter(|g| g.client_id == client_id).map(|g| g.id).collect();
        for id in grants {
            self.revoke_grant(id);
        }
    }

    /// Marks a consent form or IdP state as used; `false` when it already was. Atomic: of two concurrent claims
    /// of one ticket, one wins.
    pub fn claim_sign_in(&self, key: TokenHash, expires_at: UnixTime, now: UnixTime) -> bool {
        self.used_sign_ins.claim(key, expires_at, now)
    }

    /// Marks a client assertion (its key: [`crate::crypto::TokenHash`] of client and `jti`) as used until
    /// `expires_at`; `false` when it already was. Atomic. At most 100,000 are remembered (the oldest, closest to
    /// expiry, are forgotten first), which bounds memory whatever the rate of valid assertions.
    pub fn claim_assertion(&self, key: TokenHash, expires_at: UnixTime, now: UnixTime) -> bool {
        self.used_assertions.claim(key, expires_at, now)
    }

    /// Whether a consent form or IdP state was already used. Read-only: [`MemoryStore::claim_sign_in`] is the check
    /// that counts.
    pub fn sign_in_used(&self, key: &TokenHash) -> bool {
        self.used_sign_ins.was_used(key)
    }

    /// Sets how many used sign-in tickets are remembered at most (`limits.max_pending`).
    pub fn set_sign_in_capacity(&self, capacity: usize) {
        self.used_sign_ins.set_capacity(capacity);
    }

    /// Stores a freshly minted authorization code under its hash. One write.
    pub fn issue_code(&self, hash: TokenHash, code: AuthorizationCode) {
        self.codes.insert(hash, code);
    }

    /// Takes a code out of the store. Atomic: of two concurrent redemptions of one code, one gets
    /// [`CodeRedemption::Taken`]; the other sees the code as [`CodeRedemption::Spent`] once
    /// [`MemoryStore::start_grant`] has run, or as unknown before.
    pub fn redeem_code(&self, hash: &TokenHash) -> CodeRedemption {
        if let Some((_, code)) = self.codes.remove(hash) {
            return CodeRedemption::Taken(Box::new(code));
        }
        match self.spent_codes.get(hash) {
            Some(spent) => CodeRedemption::Spent(spent.grant),
            None => CodeRedemption::Unknown,
        }
    }

    /// Stores the grant a redeemed code started, and remembers the code as spent until `code_expires_at`, so that
    /// its replay revokes the grant. Not atomic across the two keys: the grant is written first, so a replay that
    /// finds the spent code always finds its grant.
    pub fn start_grant(&self, grant: Arc<Grant>, code: TokenHash, code_expires_at: UnixTime) {
        let id = grant.id;
        self.grants.insert(id, grant);
        self.spent_codes.insert(code, SpentCode { grant: id, expires_at: code_expires_at });
    }

    /// Stores a grant made outside a code redemption (benchmarks, tools). One write.
    pub fn add_grant(&self, grant: Arc<Grant>) {
        self.grants.insert(grant.id, grant);
    }

    /// Stores an access token under its hash. One write.
    pub fn add_access_token(&self, hash: TokenHash, token: AccessToken) {
        self.access_tokens.insert(hash, token);
    }

    /// An access token's grant, expiry and scope, live or not (introspection reports the expiry itself).
    pub fn access_token_record(&self, hash: &TokenHash) -> Option<AccessLookup> {
        self.access_tokens.get(hash).map(|t| (t.grant.clone(), t.expires_at, t.scope.clone()))
    }

    /// Removes an access token if it belongs to `client_id` (RFC 7009); whether one was removed. Atomic: the check
    /// and the removal happen under the entry's lock.
    pub fn revoke_access_token(&self, hash: &TokenHash, client_id: &str) -> bool {
        self.access_tokens.remove_if(hash, |_, t| t.grant.client_id == client_id).is_some()
    }

    /// Starts a refresh-token family (generation 0) under [`FamilyId::hash`]. One write.
    pub fn add_refresh_family(&self, family: TokenHash, record: RefreshFamily) {
        self.refresh_families.insert(family, record);
    }

    /// Reads and changes one refresh-token family in one atomic step: `step` sees the family and may rotate it;
    /// no other rotation of the family can interleave (here the entry's lock; over the network a compare-and-set
    /// on the family's generation). `None` when the family is unknown. `step` must not wait on anything and must
    /// not touch the family map; it may write other keys.
    pub fn rotate_refresh<R>(&self, family: &TokenHash, step: impl FnOnce(&mut RefreshFamily) -> R) -> Option<R> {
        let mut entry = self.refresh_families.get_mut(family)?;
        Some(step(&mut entry))
    }

    /// Removes clients that never completed an authorization within `ttl` of registering.
    pub fn sweep_unused_clients(&self, now: UnixTime, ttl_secs: u64) -> usize {
        let before = self.clients.len();
        self.clients.retain(|_, c| c.was_authorized() || c.issued_at + ttl_secs > now);
        before - self.clients.len()
    }

    /// Adds a registered client and the source it came from. Not atomic across the two keys: the source is written
    /// first, so eviction never sees a client without its source.
    pub fn add_client(&self, client: Client, source: Source) {
        self.client_sources.insert(client.client_id.clone(), source);
        self.clients.insert(client.client_id.clone(), Arc::new(client));
    }

    /// Makes room for one more client under `max_clients`: first removes clients unused for `ttl_secs`, then, if
    /// the table is still full, evicts clients that never redeemed a code — those of the sources holding the most
    /// such clients first, oldest first within a source — a batch of 1% of the cap, so that a flood does not
    /// rescan the table for every registration. A flood from many sources thus pushes out its own clients before
    /// a user's, and a client that redeemed a code, or whose sign-in started within `sign_in_ttl_secs` (a user may
    /// be between consent and `/token`), is never evicted. Returns how many were removed, or `None` when every
    /// client in the full table is in use.
    pub fn make_room_for_client(
        &self,
        now: UnixTime,
        ttl_secs: u64,
        max_clients: usize,
        sign_in_ttl_secs: u64,
    ) -> Option<usize> {
        let in_use = |c: &Client| c.was_authorized() || c.signing_in(now, sign_in_ttl_secs);
        if self.clients.len() < max_clients {
            return Some(0);
        }
        let mut removed = self.sweep_unused_clients(now, ttl_secs);
        if self.clients.len() >= max_clients {
            // Collected before the sources are looked up: no guard of one map is held while the other is read.
            let unused: Vec<(UnixTime, String)> =
                self.clients.iter().filter(|c| !in_use(c)).map(|c| (c.issued_at, c.client_id.clone())).collect();
            let batch = (self.clients.len() + 1 - max_clients).max(max_clients / 100).min(unused.len());
            if batch == 0 {
                return None;
            }
            let mut ranked: Vec<(Option<Source>, UnixTime, String)> =
                unused.into_iter().map(|(at, id)| (self.client_sources.get(&id).map(|s| *s), at, id)).collect();
            let mut per_source: HashMap<Source, usize> = HashMap::new();
            for (source, _, _) in &ranked {
                if let Some(source) = source {
                    *per_source.entry(*source).or_default() += 1;
                }
            }
            let held = |source: &Option<Source>| source.and_then(|s| per_source.get(&s).copied()).unwrap_or(1);
            ranked.sort_by(|a, b| held(&b.0).cmp(&held(&a.0)).then(a.1.cmp(&b.1)));
            for (_, _, id) in ranked.into_iter().take(batch) {
                // Checked again under the entry's lock: a client that just redeemed a code stays.
                if self.clients.remove_if(&id, |_, c| !in_use(c)).is_some() {
                    self.client_sources.remove(&id);
                    removed += 1;
                }
            }
        }
        (self.clients.len() < max_clients).then_some(removed)
    }

    /// Removes expired and revoked entries. Not atomic: each map is swept on its own, which is safe because every
    /// lookup checks expiry and revocation itself.
    pub fn sweep(&self, now: UnixTime) {
        self.used_sign_ins.sweep(now);
        self.used_assertions.sweep(now);
        let gone: Vec<String> =
            self.client_sources.iter().map(|e| e.key().clone()).filter(|id| !self.clients.contains_key(id)).collect();
        for id in gone {
            self.client_sources.remove(&id);
        }
        self.codes.retain(|_, c| c.expires_at > now);
        self.spent_codes.retain(|_, c| c.expires_at > now);
        self.access_tokens.retain(|_, t| t.expires_at > now && !t.grant.is_revoked());
        self.refresh_families.retain(|_, f| f.expires_at > now && !f.grant.is_revoked());
        self.grants.retain(|_, g| !g.is_revoked() && g.expires_at() > now);
        self.interactions.retain(|(id, _), i| i.expires_at > now && self.clients.contains_key(id));
    }

    pub fn stats(&self) -> StoreStats {
        let rotated = self.refresh_families.iter().filter(|f| f.rotated.is_some()).count();
        StoreStats {
            clients: self.clients.len(),
            used_sign_ins: self.used_sign_ins.len(),
            codes: self.codes.len(),
            grants: self.grants.len(),
            access_tokens: self.access_tokens.len(),
            refresh_tokens: self.refresh_families.len() + rotated,
            refresh_families: self.refresh_families.len(),
        }
    }

    /// The client a code was issued to (live or already redeemed), without taking it. Read-only: lets the token
    /// endpoint refuse a made-up code before it resolves a URL client_id's document.
    pub fn code_client(&self, hash: &TokenHash) -> Option<String> {
        if let Some(code) = self.codes.get(hash) {
            return Some(code.request.client_id.clone());
        }
        let spent = self.spent_codes.get(hash).map(|s| s.grant)?;
        self.grants.get(&spent).map(|g| g.client_id.clone())
    }

    /// The client a refresh token's family belongs to, without using it: any generation counts, so that a spent
    /// token is still recognised (its reuse must revoke the grant). Read-only, like [`MemoryStore::code_client`].
    pub fn refresh_client(&self, token: &str) -> Option<String> {
        let name = RefreshTokenName::parse(token)?;
        self.refresh_families.get(&name.family.hash()).map(|f| f.grant.client_id.clone())
    }

    /// The client an access or refresh token was issued to. Read-only, like [`MemoryStore::code_client`].
    pub fn token_client(&self, token: &str) -> Option<String> {
        self.refresh_client(token)
            .or_else(|| self.access_tokens.get(&TokenHash::of(token)).map(|t| t.grant.client_id.clone()))
    }

    /// Every registered client, for the admin API. Read-only; a snapshot of the table, not a consistent cut.
    pub fn list_clients(&self) -> Vec<Arc<Client>> {
        self.clients.iter().map(|c| c.value().clone()).collect()
    }

    /// Every grant not revoked, for the admin API. Read-only, like [`MemoryStore::list_clients`].
    pub fn list_grants(&self) -> Vec<Arc<Grant>> {
        self.grants.iter().filter(|g| !g.is_revoked()).map(|g| g.value().clone()).collect()
    }

    /// A grant not revoked, by id. Read-only.
    pub fn grant(&self, id: GrantId) -> Option<Arc<Grant>> {
        self.grants.get(&id).filter(|g| !g.is_revoked()).map(|g| g.value().clone())
    }

    /// Revokes every grant of one user (IdP subject), whatever the client; returns the grants revoked. Not atomic
    /// across grants: each is revoked by its own flag ([`MemoryStore::revoke_grant`]); a grant started while this runs
    /// may survive it, as a sign-in after the call would.
    pub fn revoke_user(&self, subject: &str) -> Vec<GrantId> {
        let ids: Vec<GrantId> = self.grants.iter().filter(|g| g.identity.sub == subject).map(|g| g.id).collect();
        for id in &ids {
            self.revoke_grant(*id);
        }
        ids
    }

    /// Records what the next sign-in of person `who` through `client_id` must ask of Entra, replacing an older
    /// record; nothing for an unknown client (so the map never outlives the clients). One atomic write.
    pub fn require_interaction(&self, client_id: &str, who: &str, requirement: InteractionRequirement) {
        if self.clients.contains_key(client_id) {
            self.interactions.insert((client_id.to_owned(), who.to_owned()), requirement);
        }
    }

    /// The live requirement of `who`'s next sign-in through `client_id`, without using it (for the consent page).
    pub fn interaction_required(&self, client_id: &str, who: &str, now: UnixTime) -> Option<InteractionRequirement> {
        let key = (client_id.to_owned(), who.to_owned());
        self.interactions.get(&key).filter(|i| i.expires_at > now).map(|i| i.clone())
    }

    /// Takes the live requirement of `who`'s next sign-in through `client_id` (when it goes to Entra). Atomic:
    /// one taker.
    pub fn take_interaction(&self, client_id: &str, who: &str, now: UnixTime) -> Option<InteractionRequirement> {
        let key = (client_id.to_owned(), who.to_owned());
        self.interactions.remove(&key).map(|(_, i)| i).filter(|i| i.expires_at > now)
    }
}

/// Sign-in tickets already used, remembered until they expire, so that a consent form or an IdP state works once.
///
/// Bounded: at most `capacity` entries (`limits.max_pending`); beyond it the oldest are forgotten, never is a new
/// sign-in refused. Entries are kept in the order they were used; every ticket lives `tokens.pending_ttl` from its
/// `/authorize`, so that order is close to expiry order and expired entries are dropped from the front.
#[derive(Debug)]
pub struct SingleUse {
    log: Mutex<UsedLog>,
    capacity: AtomicUsize,
}

#[derive(Debug, Default)]
struct UsedLog {
    keys: HashSet<TokenHash>,
    order: VecDeque<(TokenHash, UnixTime)>,
}

impl Default for SingleUse {
    fn default() -> Self {
        Self { log: Mutex::default(), capacity: AtomicUsize::new(100_000) }
    }
}

impl SingleUse {
    /// Sets how many used tickets are remembered at most.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), Ordering::Relaxed);
    }

    fn log(&self) -> std::sync::MutexGuard<'_, UsedLog> {
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `key` as used until `expires_at`; `false` when it was already used. Atomic: of two concurrent
    /// claims of one key, one wins.
    pub fn claim(&self, key: TokenHash, expires_at: UnixTime, now: UnixTime) -> bool {
        let capacity = self.capacity.load(Ordering::Relaxed);
        let mut log = self.log();
        if log.keys.contains(&key) {
            return false;
        }
        while let Some(&(oldest, expiry)) = log.order.front() {
            if expiry > now && log.order.len() < capacity {
                break;
            }
            log.order.pop_front();
            log.keys.remove(&oldest);
        }
        log.keys.insert(key);
        log.order.push_back((key, expires_at));
        true
    }

    /// Whether `key` was already claimed (and is still remembered).
    pub fn was_used(&self, key: &TokenHash) -> bool {
        self.log().keys.contains(key)
    }

    /// Drops every expired entry.
    pub fn sweep(&self, now: UnixTime) {
        let mut log = self.log();
        let UsedLog { keys, order } = &mut *log;
        order.retain(|(key, expiry)| {
            let live = *expiry > now;
            if !live {
                keys.remove(key);
            }
            live
        });
    }

    pub fn len(&self) -> usize {
        self.log().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The memory backend answers every operation at once, from its maps; none fails.
impl Backend for MemoryStore {
    fn client_authorized(&self, _: &Client, _: bool) -> impl Future<Output = Result<(), StoreError>> + Send {
        // The client record is the marked one itself.
        ready(Ok(()))
    }

    fn stats(&self) -> StoreStats {
        self.stats()
    }

    fn readiness(&self) -> impl Future<Output = (bool, &'static str)> + Send {
        ready((true, "in memory"))
    }

    fn access(
        &self,
        token: &str,
        now: UnixTime,
    ) -> impl Future<Output = Result<Option<BearerGrant>, StoreError>> + Send {
        ready(Ok(self.access(&TokenHash::of(token), now)))
    }

    fn access_token_record(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<AccessLookup>, StoreError>> + Send {
        ready(Ok(self.access_token_record(hash)))
    }

    fn refresh_token(&self, token: &str) -> impl Future<Output = Result<Option<RefreshLookup>, StoreError>> + Send {
        ready(Ok(self.refresh_token(token)))
    }

    fn revoke_grant(&self, id: GrantId) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready({
            self.revoke_grant(id);
            Ok(())
        })
    }

    fn client(&self, client_id: &str) -> impl Future<Output = Result<Option<Arc<Client>>, StoreError>> + Send {
        ready(Ok(self.client(client_id)))
    }

    fn put_client(&self, client: Client) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready({
            self.put_client(client);
            Ok(())
        })
    }

    fn add_client(&self, client: Client, source: Source) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready({
            self.add_client(client, source);
            Ok(())
        })
    }

    fn revoke_client(&self, client_id: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready({
            self.revoke_client(client_id);
            Ok(())
        })
    }

    fn make_room_for_client(
        &self,
        now: UnixTime,
        ttl_secs: u64,
        max_clients: usize,
        sign_in_ttl_secs: u64,
    ) -> impl Future<Output = Result<Option<usize>, StoreError>> + Send {
        ready(Ok(self.make_room_for_client(now, ttl_secs, max_clients, sign_in_ttl_secs)))
    }

    fn claim_sign_in(
        &self,
        key: TokenHash,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.claim_sign_in(key, expires_at, now)))
    }

    fn claim_assertion(
        &self,
        key: TokenHash,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.claim_assertion(key, expires_at, now)))
    }

    fn sign_in_used(&self, key: &TokenHash) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.sign_in_used(key)))
    }

    fn issue_code(&self, secret: &str, code: AuthorizationCode) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready({
            self.issue_code(TokenHash::of(secret), code);
            Ok(())
        })
    }

    fn redeem_code(&self, secret: &str) -> impl Future<Output = Result<CodeRedemption, StoreError>> + Send {
        ready(Ok(self.redeem_code(&TokenHash::of(secret))))
    }

    fn start_grant(
        &self,
        grant: Arc<Grant>,
        code: TokenHash,
        code_expires_at: UnixTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready({
            self.start_grant(grant, code, code_expires_at);
            Ok(())
        })
    }

    fn add_access_token(
        &self,
        secret: &str,
        token: AccessToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready({
            self.add_access_token(TokenHash::of(secret), token);
            Ok(())
        })
    }

    fn revoke_access_token(
        &self,
        hash: &TokenHash,
        client_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.revoke_access_token(hash, client_id)))
    }

    fn add_refresh_family(
        &self,
        family: TokenHash,
        record: RefreshFamily,
        _secret: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready({
            self.add_refresh_family(family, record);
            Ok(())
        })
    }

    fn refresh_family(
        &self,
        family: &TokenHash,
        _presented: &str,
    ) -> impl Future<Output = Result<Option<RefreshFamily>, StoreError>> + Send {
        ready(Ok(self.rotate_refresh(family, |f| f.clone())))
    }

    fn replace_refresh_family(
        &self,
        family: &TokenHash,
        expected: u32,
        next: RefreshFamily,
        _secret: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self
            .rotate_refresh(family, |f| {
                let swap = f.generation == expected;
                if swap {
                    *f = next;
                }
                swap
            })
            .unwrap_or(false)))
    }

    fn code_client(&self, hash: &TokenHash) -> impl Future<Output = Result<Option<String>, StoreError>> + Send {
        ready(Ok(self.code_client(hash)))
    }

    fn refresh_client(&self, token: &str) -> impl Future<Output = Result<Option<String>, StoreError>> + Send {
        ready(Ok(self.refresh_client(token)))
    }

    fn count_request(
        &self,
        _class: crate::endpoint::LimitClass,
        _source: Source,
        _per_minute: u32,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        ready(Ok(None))
    }

    fn begin_upstream_refresh(&self, _grant: &Grant) -> impl Future<Output = Result<UpstreamTurn, StoreError>> + Send {
        ready(Ok(UpstreamTurn::Refresh { fence: 0 }))
    }

    fn end_upstream_refresh(
        &self,
        _grant: &Grant,
        _fence: u64,
        _refreshed: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(Ok(()))
    }

    fn grant(&self, id: GrantId) -> impl Future<Output = Result<Option<Arc<Grant>>, StoreError>> + Send {
        ready(Ok(self.grant(id)))
    }

    fn has_client(&self, client_id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.has_client(client_id)))
    }

    fn list_clients(&self) -> impl Future<Output = Result<Vec<Arc<Client>>, StoreError>> + Send {
        ready(Ok(self.list_clients()))
    }

    fn list_grants(&self) -> impl Future<Output = Result<Vec<Arc<Grant>>, StoreError>> + Send {
        ready(Ok(self.list_grants()))
    }

    fn revoke_user(&self, subject: &str) -> impl Future<Output = Result<Vec<GrantId>, StoreError>> + Send {
        ready(Ok(self.revoke_user(subject)))
    }

    fn require_interaction(
        &self,
        client_id: &str,
        who: &str,
        requirement: InteractionRequirement,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready({
            self.require_interaction(client_id, who, requirement);
            Ok(())
        })
    }

    fn interaction_required(
        &self,
        client_id: &str,
        who: &str,
        now: UnixTime,
    ) -> impl Future<Output = Result<Option<InteractionRequirement>, StoreError>> + Send {
        ready(Ok(self.interaction_required(client_id, who, now)))
    }

    fn take_interaction(
        &self,
        client_id: &str,
        who: &str,
        now: UnixTime,
    ) -> impl Future<Output = Result<Option<InteractionRequirement>, StoreError>> + Send {
        ready(Ok(self.take_interaction(client_id, who, now)))
    }

    fn sign_in_started(&self, _client_id: &str, _ttl_secs: u64) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(Ok(()))
    }

    fn shared_route_token(
        &self,
        _grant: &Grant,
        _prefix: &str,
    ) -> impl Future<Output = Result<Option<RouteToken>, StoreError>> + Send {
        ready(Ok(None))
    }

    fn share_route_token(&self, _grant: &Grant, _prefix: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_claimed_once_and_the_log_stays_bounded() {
        let used = SingleUse::default();
        used.set_capacity(3);
        let key = |i: u8| TokenHash([i; 32]);
        assert!(used.claim(key(1), 100, 10));
        assert!(!used.claim(key(1), 100, 10), "second use refused");
        assert!(used.was_used(&key(1)) && !used.was_used(&key(2)));
        for i in 2..=5 {
            assert!(used.claim(key(i), 100, 10));
        }
        assert_eq!(used.len(), 3, "the oldest are forgotten beyond the capacity");
        assert!(!used.claim(key(5), 100, 10));
        used.sweep(100);
        assert!(used.is_empty());
    }

    #[test]
    fn a_full_client_table_evicts_from_the_busiest_source_first() {
        let store = MemoryStore::new();
        let (flood, user) = (Source::of_ip([203, 0, 113, 9].into()), Source::of_ip([10, 0, 0, 1].into()));
        store.add_client(Client::public("mine", vec![], 1), user);
        for i in 0..3 {
            store.add_client(Client::public(format!("flood{i}"), vec![], 2 + i), flood);
        }
        assert_eq!(store.make_room_for_client(10, 3600, 4, 600), Some(1));
        assert!(store.clients.contains_key("mine"), "the oldest client, but its source holds one");
        assert!(!store.clients.contains_key("flood0"));
        assert!(!store.client_sources.contains_key("flood0"));
    }

    #[test]
    fn a_full_client_table_evicts_the_oldest_unused_clients_only() {
        let store = MemoryStore::new();
        let used = Client::public("used", vec![], 1);
        used.mark_authorized(5);
        store.put_client(used);
        for (id, at) in [("old", 2), ("mid", 3), ("new", 4)] {
            store.put_client(Client::public(id, vec![], at));
        }
        assert_eq!(store.make_room_for_client(10, 3600, 4, 600), Some(1));
        assert!(!store.clients.contains_key("old"));
        assert!(store.clients.contains_key("used") && store.clients.contains_key("mid"));
        store.clients.retain(|id, _| id == "used");
        assert_eq!(store.make_room_for_client(10, 3600, 1, 600), None, "a used client is never evicted");
        assert!(store.clients.contains_key("used"));
    }

    fn login() -> UpstreamLogin {
        UpstreamLogin { credential: UpstreamCredential::Local, identity: Identity::default() }
    }

    fn code(client_id: &str) -> AuthorizationCode {
        let request = AuthorizationRequest {
            client_id: client_id.into(),
            redirect_uri: "https://a.example/cb".into(),
            redirect_uri_explicit: false,
            state: None,
            code_challenge: String::new(),
            scope: vec![],
            resource: None,
        };
        AuthorizationCode { request, expires_at: 100, login: login() }
    }

    #[test]
    fn a_code_is_taken_once_and_then_names_the_grant_it_started() {
        let store = MemoryStore::new();
        let hash = TokenHash::of("code");
        store.issue_code(hash, code("c1"));
        assert_eq!(store.code_client(&hash).as_deref(), Some("c1"));
        assert!(matches!(store.redeem_code(&hash), CodeRedemption::Taken(c) if c.request.client_id == "c1"));
        assert!(matches!(store.redeem_code(&hash), CodeRedemption::Unknown), "taken out: nobody else gets it");
        let grant = Grant::new("c1".into(), vec![], None, login(), 1);
        store.start_grant(grant.clone(), hash, 100);
        assert!(matches!(store.redeem_code(&hash), CodeRedemption::Spent(id) if id == grant.id));
        assert_eq!(store.code_client(&hash).as_deref(), Some("c1"));
    }

    #[test]
    fn deleting_a_client_revokes_its_grants_and_no_others() {
        let store = MemoryStore::new();
        store.add_client(Client::public("c1", vec![], 1), Source::of_ip([10, 0, 0, 1].into()));
        let (mine, theirs) =
            (Grant::new("c1".into(), vec![], None, login(), 1), Grant::new("c2".into(), vec![], None, login(), 1));
        store.start_grant(mine.clone(), TokenHash::of("a"), 100);
        store.start_grant(theirs.clone(), TokenHash::of("b"), 100);
        store.revoke_client("c1");
        assert!(!store.has_client("c1"));
        assert!(mine.is_revoked() && !theirs.is_revoked());
        assert_eq!(store.stats().grants, 1);
    }

    #[test]
    fn only_one_of_two_concurrent_redemptions_takes_a_code() {
        let store = Arc::new(MemoryStore::new());
        for round in 0..50u8 {
            let hash = TokenHash([round; 32]);
            store.issue_code(hash, code("c1"));
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let store = store.clone();
                    std::thread::spawn(move || matches!(store.redeem_code(&hash), CodeRedemption::Taken(_)))
                })
                .collect();
            let taken = racers.into_iter().map(|r| r.join()).filter(|r| matches!(r, Ok(true))).count();
            assert_eq!(taken, 1, "round {round}");
        }
    }
}
