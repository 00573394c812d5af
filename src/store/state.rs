//! The store the handlers use: the in-memory [`MemoryStore`] or the shared [`RedisStore`], behind one set of async
//! operations (static dispatch, an enum: no boxed futures on the hot path).
//!
//! Invariants (what every backend must keep; `store::redis` says how it does):
//! - Every operation is named for what it does, and those the rules rely on being atomic are atomic in every
//!   backend: [`Store::redeem_code`] (take: get-and-delete), [`Store::replace_refresh_family`]
//!   (compare-and-set on the family's generation), [`Store::claim_sign_in`] (set-if-absent),
//!   [`Store::revoke_grant`] (one delete or flag). No operation takes a closure over a stored record.
//! - The memory arm is today's store, unchanged in behaviour and speed: each call is a `DashMap` operation and
//!   never fails.
//! - A backend that cannot answer returns [`StoreError::Unavailable`], which `crate::error` turns into 503 with
//!   `Retry-After` (never a 500); a bearer lookup served from a replica's cache does not need the backend.

use std::sync::Arc;

use crate::crypto::TokenHash;
use crate::rate_limit::Source;

use super::outcome::{StoreError, UpstreamTurn};
use super::redis::RedisStore;
use super::{
    AccessToken, AuthorizationCode, Client, CodeRedemption, Grant, GrantId, InteractionRequirement, MemoryStore,
    RefreshFamily,
};
use crate::clock::UnixTime;

/// The proxy's state: in this process, or shared by every replica through Redis.
pub enum Store {
    Memory(Arc<MemoryStore>),
    Redis(RedisStore),
}

impl Store {
    /// The in-memory store (snapshots, the sweeper and metrics read it directly); `None` with Redis.
    pub fn memory(&self) -> Option<&Arc<MemoryStore>> {
        match self {
            Self::Memory(s) => Some(s),
            Self::Redis(_) => None,
        }
    }

    /// Counts of live entries (metrics, tests). Redis: the counts last taken by any replica, at most
    /// `store.redis_stats_interval` old ([`RedisStore::stats`]; zeros until the first count is in).
    pub fn stats(&self) -> super::StoreStats {
        match self {
            Self::Memory(s) => s.stats(),
            Self::Redis(r) => r.stats(),
        }
    }

    /// Whether the store can serve requests (`/readyz`).
    pub async fn ready(&self) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::Redis(r) => r.ping().await,
        }
    }

    /// A live access token, as presented: its grant and the scope the token carries (the proxy's hot path).
    /// Redis: the token also unwraps the grant's data key (`store::wrap`), without which its IdP tokens stay shut.
    pub async fn access(&self, token: &str, now: UnixTime) -> Result<Option<(Arc<Grant>, Arc<str>)>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.access(&TokenHash::of(token), now)),
            Self::Redis(r) => r.access(token, now).await,
        }
    }

    /// An access token's grant, expiry and scope, live or not (introspection).
    pub async fn access_token_record(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<(Arc<Grant>, UnixTime, Arc<str>)>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.access_token_record(hash)),
            Self::Redis(r) => r.access_token_record(hash).await,
        }
    }

    /// The grant of a refresh token (current or just rotated), its expiry, and whether it is the current one.
    pub async fn refresh_token(&self, token: &str) -> Result<Option<(Arc<Grant>, UnixTime, bool)>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.refresh_token(token)),
            Self::Redis(r) => r.refresh_token(token).await,
        }
    }

    /// Revokes a grant: every token issued under it stops working (on other replicas within `redis_cache_ttl`,
    /// at once when the pub/sub message arrives).
    pub async fn revoke_grant(&self, id: GrantId) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => {
                s.revoke_grant(id);
                Ok(())
            }
            Self::Redis(r) => r.revoke_grant(id).await,
        }
    }

    /// A registered client.
    pub async fn client(&self, client_id: &str) -> Result<Option<Arc<Client>>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.client(client_id)),
            Self::Redis(r) => r.client(client_id).await,
        }
    }

    /// Replaces (or adds) a client's metadata.
    pub async fn put_client(&self, client: Client) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => {
                s.put_client(client);
                Ok(())
            }
            Self::Redis(r) => r.put_client(&client).await,
        }
    }

    /// Adds a registered client and the source it came from.
    pub async fn add_client(&self, client: Client, source: Source) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => {
                s.add_client(client, source);
                Ok(())
            }
            Self::Redis(r) => r.add_client(&client, r.unused_client_ttl()).await,
        }
    }

    /// Deletes a client and revokes every grant it holds.
    pub async fn revoke_client(&self, client_id: &str) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => {
                s.revoke_client(client_id);
                Ok(())
            }
            Self::Redis(r) => r.revoke_client(client_id).await,
        }
    }

    /// Makes room for one more client under `max_clients` ([`MemoryStore::make_room_for_client`]). Redis: counts the
    /// unused registrations of every replica (they expire after `ttl_secs`) and evicts the oldest unused ones not
    /// signing in ([`RedisStore::make_room`]).
    pub async fn make_room_for_client(
        &self,
        now: UnixTime,
        ttl_secs: u64,
        max_clients: usize,
        sign_in_ttl_secs: u64,
    ) -> Result<Option<usize>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.make_room_for_client(now, ttl_secs, max_clients, sign_in_ttl_secs)),
            Self::Redis(r) => r.make_room(ttl_secs, max_clients).await,
        }
    }

    /// Records that `client` completed an authorization (it is then never evicted).
    pub async fn client_authorized(&self, client: &Client, now: UnixTime) -> Result<(), StoreError> {
        let first = !client.was_authorized();
        client.mark_authorized(now);
        match self {
            // A metadata-document client is not in the store: only a stored one is rewritten.
            Self::Redis(r) if first => r.update_client(client).await,
            _ => Ok(()),
        }
    }

    /// Marks a consent form or IdP state as used; `false` when it already was. Atomic.
    pub async fn claim_sign_in(&self, key: TokenHash, expires_at: UnixTime, now: UnixTime) -> Result<bool, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.claim_sign_in(key, expires_at, now)),
            Self::Redis(r) => r.claim_sign_in(&key, expires_at).await,
        }
    }

    /// Marks a client assertion (RFC 7523 `jti`; `key` names client and `jti`) as used until `expires_at`;
    /// `false` when it already was, on this replica or (Redis) on any other. Atomic.
    pub async fn claim_assertion(
        &self,
        key: TokenHash,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.claim_assertion(key, expires_at, now)),
            Self::Redis(r) => r.claim_assertion(&key, expires_at).await,
        }
    }

    /// Whether a consent form or IdP state was already used. Read-only.
    pub async fn sign_in_used(&self, key: &TokenHash) -> Result<bool, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.sign_in_used(key)),
            Self::Redis(r) => r.sign_in_used(key).await,
        }
    }

    /// Stores a freshly minted authorization code under its hash (`secret`: the code itself, which Redis also
    /// wraps the code's key under).
    pub async fn issue_code(&self, secret: &str, code: AuthorizationCode) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => {
                s.issue_code(TokenHash::of(secret), code);
                Ok(())
            }
            Self::Redis(r) => r.issue_code(secret, &code).await,
        }
    }

    /// Takes a code (as presented) out of the store. Atomic: of two concurrent redemptions (on any replicas), one
    /// takes it.
    pub async fn redeem_code(&self, secret: &str) -> Result<CodeRedemption, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.redeem_code(&TokenHash::of(secret))),
            Self::Redis(r) => r.redeem_code(secret).await,
        }
    }

    /// Stores the grant a redeemed code started and remembers the code as spent (grant first).
    pub async fn start_grant(
        &self,
        grant: Arc<Grant>,
        code: TokenHash,
        code_expires_at: UnixTime,
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => {
                s.start_grant(grant, code, code_expires_at);
                Ok(())
            }
            Self::Redis(r) => r.start_grant(grant, &code, code_expires_at).await,
        }
    }

    /// Stores an access token (`secret`, as issued) under its hash; Redis wraps the grant's data key under it.
    pub async fn add_access_token(&self, secret: &str, token: AccessToken) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => {
                s.add_access_token(TokenHash::of(secret), token);
                Ok(())
            }
            Self::Redis(r) => r.add_access_token(&TokenHash::of(secret), &token, Some(secret)).await,
        }
    }

    /// Removes an access token if it belongs to `client_id`; whether one was removed.
    pub async fn revoke_access_token(&self, hash: &TokenHash, client_id: &str) -> Result<bool, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.revoke_access_token(hash, client_id)),
            Self::Redis(r) => r.revoke_access_token(hash, client_id).await,
        }
    }

    /// Starts a refresh-token family (generation 0) whose current token is `secret` (Redis wraps the grant's data
    /// key under it).
    pub async fn add_refresh_family(
        &self,
        family: TokenHash,
        record: RefreshFamily,
        secret: &str,
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => {
                s.add_refresh_family(family, record);
                Ok(())
            }
            Self::Redis(r) => r.put_refresh_family(&family, &record, None, Some(secret)).await.map(|_| ()),
        }
    }

    /// A copy of a refresh-token family, to decide on `presented`; `None` when unknown (or its grant is gone).
    /// Redis: when `presented` is the current token, it unwraps the grant's data key (else `None`).
    pub async fn refresh_family(
        &self,
        family: &TokenHash,
        presented: &str,
    ) -> Result<Option<RefreshFamily>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.rotate_refresh(family, |f| f.clone())),
            Self::Redis(r) => r.refresh_family(family, Some(presented)).await,
        }
    }

    /// Replaces a family with `next` if its generation is still `expected`; `false` when another rotation came
    /// first (then nothing is written). Atomic: compare-and-set, so two uses of one token cannot both rotate.
    pub async fn replace_refresh_family(
        &self,
        family: &TokenHash,
        expected: u32,
        next: RefreshFamily,
        secret: &str,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Memory(s) => Ok(s
                .rotate_refresh(family, |f| {
                    let swap = f.generation == expected;
                    if swap {
                        *f = next;
                    }
                    swap
                })
                .unwrap_or(false)),
            Self::Redis(r) => r.put_refresh_family(family, &next, Some(expected), Some(secret)).await,
        }
    }

    /// The client a code was issued to (live or redeemed), without taking it.
    pub async fn code_client(&self, hash: &TokenHash) -> Result<Option<String>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.code_client(hash)),
            Self::Redis(r) => r.code_client(hash).await,
        }
    }

    /// The client a refresh token's family belongs to, any generation.
    pub async fn refresh_client(&self, token: &str) -> Result<Option<String>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.refresh_client(token)),
            Self::Redis(r) => r.refresh_client(token).await,
        }
    }

    /// The client an access or refresh token was issued to.
    pub async fn token_client(&self, token: &str) -> Result<Option<String>, StoreError> {
        if let Some(id) = self.refresh_client(token).await? {
            return Ok(Some(id));
        }
        Ok(self.access_token_record(&TokenHash::of(token)).await?.map(|(g, _, _)| g.client_id.clone()))
    }

    /// Counts one request of `source` on routes of `class` against `per_minute` across every replica; the seconds
    /// to wait when over. Memory: nothing beyond the replica's own buckets ([`crate::rate_limit::RateLimiter`]).
    pub async fn count_request(
        &self,
        class: crate::endpoint::LimitClass,
        source: Source,
        per_minute: u32,
    ) -> Result<Option<u64>, StoreError> {
        match self {
            Self::Memory(_) => Ok(None),
            Self::Redis(r) => r.count_request(&format!("{class:?}:{source}"), per_minute).await,
        }
    }

    /// Before refreshing a grant's IdP token: with Redis, takes the grant's refresh lock (with expiry and a
    /// fencing token) or waits for the replica holding it and adopts its token. Memory: always this process's
    /// turn (the grant's own `refresh_lock` already serialises it).
    pub async fn begin_upstream_refresh(&self, grant: &Grant) -> Result<UpstreamTurn, StoreError> {
        match self {
            Self::Memory(_) => Ok(UpstreamTurn::Refresh { fence: 0 }),
            Self::Redis(r) => r.begin_upstream_refresh(grant).await,
        }
    }

    /// After a refresh (or a failure, `refreshed = false`): writes the grant's new IdP token if `fence` still
    /// holds the lock, and releases it.
    pub async fn end_upstream_refresh(&self, grant: &Grant, fence: u64, refreshed: bool) -> Result<(), StoreError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => r.end_upstream_refresh(grant, fence, refreshed).await,
        }
    }
}

/// Operations of the admin API and of Entra's interaction requirements (issues 14 and 16).
impl Store {
    /// A live grant by id.
    pub async fn grant(&self, id: GrantId) -> Result<Option<Arc<Grant>>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.grant(id)),
            Self::Redis(r) => Ok(r.grant_by_id(id).await?.filter(|g| !g.is_revoked())),
        }
    }

    /// Whether a client is registered.
    pub async fn has_client(&self, client_id: &str) -> Result<bool, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.has_client(client_id)),
            Self::Redis(r) => Ok(r.client(client_id).await?.is_some()),
        }
    }

    /// Every registered client (admin API). Redis: a `SCAN` of the client keys, not a consistent cut.
    pub async fn list_clients(&self) -> Result<Vec<Arc<Client>>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.list_clients()),
            Self::Redis(r) => r.list_clients().await,
        }
    }

    /// Every live grant (admin API). Redis: a `SCAN` of the grant keys, not a consistent cut.
    pub async fn list_grants(&self) -> Result<Vec<Arc<Grant>>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.list_grants()),
            Self::Redis(r) => r.list_grants().await,
        }
    }

    /// Revokes every grant of one user (IdP subject); the grants revoked.
    pub async fn revoke_user(&self, subject: &str) -> Result<Vec<GrantId>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.revoke_user(subject)),
            Self::Redis(r) => {
                let ids: Vec<GrantId> =
                    r.list_grants().await?.iter().filter(|g| g.identity.sub == subject).map(|g| g.id).collect();
                for id in &ids {
                    r.revoke_grant(*id).await?;
                }
                Ok(ids)
            }
        }
    }

    /// Records what the next sign-in of person `who` through `client_id` must ask of Entra
    /// ([`MemoryStore::require_interaction`]).
    pub async fn require_interaction(
        &self,
        client_id: &str,
        who: &str,
        requirement: InteractionRequirement,
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => {
                s.require_interaction(client_id, who, requirement);
                Ok(())
            }
            Self::Redis(r) => r.require_interaction(client_id, who, &requirement).await,
        }
    }

    /// The live requirement of `who`'s next sign-in through `client_id`, without using it.
    pub async fn interaction_required(
        &self,
        client_id: &str,
        who: &str,
        now: UnixTime,
    ) -> Result<Option<InteractionRequirement>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.interaction_required(client_id, who, now)),
            Self::Redis(r) => r.interaction(client_id, who, now, false).await,
        }
    }

    /// Takes the live requirement of `who`'s next sign-in through `client_id` (one taker across replicas).
    pub async fn take_interaction(
        &self,
        client_id: &str,
        who: &str,
        now: UnixTime,
    ) -> Result<Option<InteractionRequirement>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.take_interaction(client_id, who, now)),
            Self::Redis(r) => r.interaction(client_id, who, now, true).await,
        }
    }

    /// Records that a sign-in of the registered client `client_id` started, so that it is not evicted for
    /// `ttl_secs` to make room for new registrations. Memory: the client's own mark does it
    /// ([`Client::mark_sign_in`]).
    pub async fn sign_in_started(&self, client_id: &str, ttl_secs: u64) -> Result<(), StoreError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => r.sign_in_started(client_id, ttl_secs).await,
        }
    }
}

/// The IdP tokens of `[[routes]]` (issue 16 §3), shared across replicas with Redis (sealed with the grant's data
/// key, `store::wrap`); the memory backend keeps them on the grant only.
impl Store {
    /// A route's token another replica obtained for `grant` (newer than this replica's, if any): adopted onto the
    /// grant's `route_tokens`. Memory: nothing (`None`).
    pub async fn shared_route_token(
        &self,
        grant: &Grant,
        prefix: &str,
    ) -> Result<Option<(UnixTime, Arc<super::UpstreamTokens>)>, StoreError> {
        match self {
            Self::Memory(_) => Ok(None),
            Self::Redis(r) => r.route_token(grant, prefix).await,
        }
    }

    /// Shares a route's token just obtained for `grant`. Memory: nothing.
    pub async fn share_route_token(&self, grant: &Grant, prefix: &str) -> Result<(), StoreError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => r.put_route_token(grant, prefix).await,
        }
    }
}
