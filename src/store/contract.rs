//! The store's contract: every operation the proxy performs on its state, named for what it does, with what each
//! backend must guarantee. [`super::MemoryStore`] and [`super::redis::RedisStore`] implement it;
//! [`super::Store`] is the face the rest of the proxy calls, one line per operation. A third backend is a file
//! implementing [`Backend`], one variant of the face, and a run of `tests/stores/contract.rs`, the suite every
//! backend passes.
//!
//! What every backend keeps:
//! - **Atomic**, of concurrent callers on any replica exactly one wins: [`Backend::redeem_code`] (take:
//!   get-and-delete), [`Backend::replace_refresh_family`] (compare-and-set on the family's generation),
//!   [`Backend::claim_sign_in`] and [`Backend::claim_assertion`] (set-if-absent), [`Backend::revoke_access_token`]
//!   (remove-if-owner), [`Backend::take_interaction`] (take), [`Backend::revoke_grant`] (one delete or flag).
//!   No operation takes a closure over a stored record.
//! - **Secrets at rest**: a token, code or ticket is stored under its hash ([`TokenHash`]), never in clear; the
//!   IdP tokens inside a grant are the one exception by necessity, and a shared backend seals them.
//! - **Failure**: a backend that cannot answer returns [`StoreError::Unavailable`], which `crate::error` turns into
//!   503 with `Retry-After` (never a 500). The memory backend never fails.
//! - **Bounded**: nothing an unauthenticated client creates grows without bound (client eviction under
//!   `max_clients`, single-use records forget their oldest).
//!
//! Operations a backend has no use for answer the documented no-op (the memory backend's `count_request`,
//! `begin_upstream_refresh`, `shared_route_token`): the contract suite asserts those answers too.

use std::future::Future;
use std::sync::Arc;

use super::{
    AccessToken, AuthorizationCode, Client, CodeRedemption, Grant, GrantId, InteractionRequirement, RefreshFamily,
    StoreError, StoreStats, UpstreamTokens, UpstreamTurn,
};
use crate::clock::UnixTime;
use crate::crypto::TokenHash;
use crate::rate_limit::Source;

/// A bearer's grant and the scope its token carries.
pub type BearerGrant = (Arc<Grant>, Arc<str>);
/// An access token's grant, expiry and scope, live or not.
pub type AccessLookup = (Arc<Grant>, UnixTime, Arc<str>);
/// A refresh token's grant, its expiry, and whether it is the family's current token.
pub type RefreshLookup = (Arc<Grant>, UnixTime, bool);
/// A `[[routes]]` token shared by another replica: when it was obtained, and the tokens.
pub type RouteToken = (UnixTime, Arc<UpstreamTokens>);

/// A state store backend: the operations of the contract ([module docs](self)).
pub trait Backend: Send + Sync {
    /// Counts of live entries (metrics, tests). Redis: the counts last taken by any replica, at most
    /// `store.redis_stats_interval` old ([`super::redis::RedisStore::stats`]; zeros until the first count is in).
    fn stats(&self) -> StoreStats;

    /// Whether the store can serve requests, and in words (`/readyz`).
    fn readiness(&self) -> impl Future<Output = (bool, &'static str)> + Send;

    /// A live access token, as presented: its grant and the scope the token carries (the proxy's hot path).
    /// Redis: the token also unwraps the grant's data key (`store::wrap`), without which its IdP tokens stay shut.
    fn access(
        &self,
        token: &str,
        now: UnixTime,
    ) -> impl Future<Output = Result<Option<BearerGrant>, StoreError>> + Send;

    /// An access token's grant, expiry and scope, live or not (introspection).
    fn access_token_record(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<AccessLookup>, StoreError>> + Send;

    /// The grant of a refresh token (current or just rotated), its expiry, and whether it is the current one.
    fn refresh_token(&self, token: &str) -> impl Future<Output = Result<Option<RefreshLookup>, StoreError>> + Send;

    /// Revokes a grant: every token issued under it stops working (on other replicas within `redis_cache_ttl`,
    /// at once when the pub/sub message arrives).
    fn revoke_grant(&self, id: GrantId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A registered client.
    fn client(&self, client_id: &str) -> impl Future<Output = Result<Option<Arc<Client>>, StoreError>> + Send;

    /// Replaces (or adds) a client's metadata.
    fn put_client(&self, client: Client) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Adds a registered client and the source it came from.
    fn add_client(&self, client: Client, source: Source) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes a client and revokes every grant it holds.
    fn revoke_client(&self, client_id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes room for one more client under `max_clients` ([`super::MemoryStore::make_room_for_client`]). Redis: counts the
    /// unused registrations of every replica (they expire after `ttl_secs`) and evicts the oldest unused ones not
    /// signing in ([`super::redis::RedisStore::make_room`]).
    fn make_room_for_client(
        &self,
        now: UnixTime,
        ttl_secs: u64,
        max_clients: usize,
        sign_in_ttl_secs: u64,
    ) -> impl Future<Output = Result<Option<usize>, StoreError>> + Send;

    /// Marks a consent form or IdP state as used; `false` when it already was. Atomic.
    fn claim_sign_in(
        &self,
        key: TokenHash,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Marks a client assertion (RFC 7523 `jti`; `key` names client and `jti`) as used until `expires_at`;
    /// `false` when it already was, on this replica or (Redis) on any other. Atomic.
    fn claim_assertion(
        &self,
        key: TokenHash,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether a consent form or IdP state was already used. Read-only.
    fn sign_in_used(&self, key: &TokenHash) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores a freshly minted authorization code under its hash (`secret`: the code itself, which Redis also
    /// wraps the code's key under).
    fn issue_code(&self, secret: &str, code: AuthorizationCode) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes a code (as presented) out of the store. Atomic: of two concurrent redemptions (on any replicas), one
    /// takes it.
    fn redeem_code(&self, secret: &str) -> impl Future<Output = Result<CodeRedemption, StoreError>> + Send;

    /// Stores the grant a redeemed code started and remembers the code as spent (grant first).
    fn start_grant(
        &self,
        grant: Arc<Grant>,
        code: TokenHash,
        code_expires_at: UnixTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores an access token (`secret`, as issued) under its hash; Redis wraps the grant's data key under it.
    fn add_access_token(&self, secret: &str, token: AccessToken)
        -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes an access token if it belongs to `client_id`; whether one was removed.
    fn revoke_access_token(
        &self,
        hash: &TokenHash,
        client_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Starts a refresh-token family (generation 0) whose current token is `secret` (Redis wraps the grant's data
    /// key under it).
    fn add_refresh_family(
        &self,
        family: TokenHash,
        record: RefreshFamily,
        secret: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A copy of a refresh-token family, to decide on `presented`; `None` when unknown (or its grant is gone).
    /// Redis: when `presented` is the current token, it unwraps the grant's data key (else `None`).
    fn refresh_family(
        &self,
        family: &TokenHash,
        presented: &str,
    ) -> impl Future<Output = Result<Option<RefreshFamily>, StoreError>> + Send;

    /// Replaces a family with `next` if its generation is still `expected`; `false` when another rotation came
    /// first (then nothing is written). Atomic: compare-and-set, so two uses of one token cannot both rotate.
    fn replace_refresh_family(
        &self,
        family: &TokenHash,
        expected: u32,
        next: RefreshFamily,
        secret: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The client a code was issued to (live or redeemed), without taking it.
    fn code_client(&self, hash: &TokenHash) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// The client a refresh token's family belongs to, any generation.
    fn refresh_client(&self, token: &str) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Counts one request of `source` on routes of `class` against `per_minute` across every replica; the seconds
    /// to wait when over. Memory: nothing beyond the replica's own buckets ([`crate::rate_limit::RateLimiter`]).
    fn count_request(
        &self,
        class: crate::endpoint::LimitClass,
        source: Source,
        per_minute: u32,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Before refreshing a grant's IdP token: with Redis, takes the grant's refresh lock (with expiry and a
    /// fencing token) or waits for the replica holding it and adopts its token. Memory: always this process's
    /// turn (the grant's own `refresh_lock` already serialises it).
    fn begin_upstream_refresh(&self, grant: &Grant) -> impl Future<Output = Result<UpstreamTurn, StoreError>> + Send;

    /// After a refresh (or a failure, `refreshed = false`): writes the grant's new IdP token if `fence` still
    /// holds the lock, and releases it.
    fn end_upstream_refresh(
        &self,
        grant: &Grant,
        fence: u64,
        refreshed: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A live grant by id.
    fn grant(&self, id: GrantId) -> impl Future<Output = Result<Option<Arc<Grant>>, StoreError>> + Send;

    /// Whether a client is registered.
    fn has_client(&self, client_id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every registered client (admin API). Redis: a `SCAN` of the client keys, not a consistent cut.
    fn list_clients(&self) -> impl Future<Output = Result<Vec<Arc<Client>>, StoreError>> + Send;

    /// Every live grant (admin API). Redis: a `SCAN` of the grant keys, not a consistent cut.
    fn list_grants(&self) -> impl Future<Output = Result<Vec<Arc<Grant>>, StoreError>> + Send;

    /// Revokes every grant of one user (IdP subject); the grants revoked.
    fn revoke_user(&self, subject: &str) -> impl Future<Output = Result<Vec<GrantId>, StoreError>> + Send;

    /// Records what the next sign-in of person `who` through `client_id` must ask of Entra
    /// ([`super::MemoryStore::require_interaction`]).
    fn require_interaction(
        &self,
        client_id: &str,
        who: &str,
        requirement: InteractionRequirement,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The live requirement of `who`'s next sign-in through `client_id`, without using it.
    fn interaction_required(
        &self,
        client_id: &str,
        who: &str,
        now: UnixTime,
    ) -> impl Future<Output = Result<Option<InteractionRequirement>, StoreError>> + Send;

    /// Takes the live requirement of `who`'s next sign-in through `client_id` (one taker across replicas).
    fn take_interaction(
        &self,
        client_id: &str,
        who: &str,
        now: UnixTime,
    ) -> impl Future<Output = Result<Option<InteractionRequirement>, StoreError>> + Send;

    /// Records that a sign-in of the registered client `client_id` started, so that it is not evicted for
    /// `ttl_secs` to make room for new registrations. Memory: the client's own mark does it
    /// ([`Client::mark_sign_in`]).
    fn sign_in_started(&self, client_id: &str, ttl_secs: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A route's token another replica obtained for `grant` (newer than this replica's, if any): adopted onto the
    /// grant's `route_tokens`. Memory: nothing (`None`).
    fn shared_route_token(
        &self,
        grant: &Grant,
        prefix: &str,
    ) -> impl Future<Output = Result<Option<RouteToken>, StoreError>> + Send;

    /// Shares a route's token just obtained for `grant`. Memory: nothing.
    fn share_route_token(&self, grant: &Grant, prefix: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records that `client` completed its first authorization (`first`: it was not marked before), so that it is
    /// never evicted. The memory backend's client is the marked one itself: nothing more to write.
    fn client_authorized(&self, client: &Client, first: bool) -> impl Future<Output = Result<(), StoreError>> + Send;
}
