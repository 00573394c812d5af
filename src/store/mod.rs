//! The proxy's state: clients, codes, grants and token hashes, and the single-use records of sign-in tickets and
//! client assertions. A sign-in in flight is carried by the browser, sealed ([`crate::oauth::flow`]); nothing is
//! stored for it but that single-use record.
//!
//! - [`contract`]: the operations and what every backend guarantees ([`Backend`]: atomicity, secrets at rest,
//!   failure, bounds). `tests/stores/contract.rs` runs one suite against every backend.
//! - [`Store`]: the face the proxy calls, one line per operation, over the backends: [`MemoryStore`] (this
//!   process, `DashMap`s; snapshotted by [`snapshot`], swept by [`upkeep`]) and [`redis::RedisStore`] (shared by
//!   replicas; records sealed by [`wrap`]).
//! - `model`: the records as the proxy sees them; `records`: as they are written to a snapshot or to Redis.

pub mod contract;
pub mod memory;
mod model;
pub mod outcome;
mod records;
pub mod redis;
pub mod redis_conn;
mod sealed_stream;
pub mod snapshot;
pub mod upkeep;
pub mod wrap;

pub use contract::{AccessLookup, Backend, BearerGrant, RefreshLookup, RouteToken};
pub use memory::{MemoryStore, SingleUse};
pub use model::*;
pub use outcome::{StoreError, UpstreamTurn};

use std::sync::Arc;

use crate::clock::UnixTime;
use crate::crypto::TokenHash;
use crate::rate_limit::Source;
use redis::RedisStore;

/// The proxy's state: in this process, or shared by every replica through Redis (static dispatch: no boxed future
/// on the hot path).
pub enum Store {
    Memory(Arc<MemoryStore>),
    Redis(RedisStore),
}

/// One operation on whichever backend the face holds; `await` for the async ones.
macro_rules! dispatch {
    (await $self:ident . $op:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Memory(m) => Backend::$op(&**m, $($arg),*).await,
            Store::Redis(r) => Backend::$op(r, $($arg),*).await,
        }
    };
    ($self:ident . $op:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Memory(m) => Backend::$op(&**m, $($arg),*),
            Store::Redis(r) => Backend::$op(r, $($arg),*),
        }
    };
}

impl Store {
    /// The in-memory store (snapshots, the sweeper and metrics read it directly); `None` with Redis.
    pub fn memory(&self) -> Option<&Arc<MemoryStore>> {
        match self {
            Self::Memory(s) => Some(s),
            Self::Redis(_) => None,
        }
    }

    /// The backend's name, for `/readyz` and logs.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }

    /// Records that `client` completed an authorization (it is then never evicted).
    pub async fn client_authorized(&self, client: &Client, now: UnixTime) -> Result<(), StoreError> {
        let first = !client.was_authorized();
        client.mark_authorized(now);
        dispatch!(await self.client_authorized(client, first))
    }

    /// The client an access or refresh token was issued to.
    pub async fn token_client(&self, token: &str) -> Result<Option<String>, StoreError> {
        if let Some(id) = self.refresh_client(token).await? {
            return Ok(Some(id));
        }
        Ok(self.access_token_record(&TokenHash::of(token)).await?.map(|(g, _, _)| g.client_id.clone()))
    }

    /// [`Backend::stats`].
    pub fn stats(&self) -> StoreStats {
        dispatch!(self.stats())
    }

    /// [`Backend::readiness`].
    pub async fn readiness(&self) -> (bool, &'static str) {
        dispatch!(await self.readiness())
    }

    /// [`Backend::access`].
    pub async fn access(&self, token: &str, now: UnixTime) -> Result<Option<BearerGrant>, StoreError> {
        dispatch!(await self.access(token, now))
    }

    /// [`Backend::access_token_record`].
    pub async fn access_token_record(&self, hash: &TokenHash) -> Result<Option<AccessLookup>, StoreError> {
        dispatch!(await self.access_token_record(hash))
    }

    /// [`Backend::refresh_token`].
    pub async fn refresh_token(&self, token: &str) -> Result<Option<RefreshLookup>, StoreError> {
        dispatch!(await self.refresh_token(token))
    }

    /// [`Backend::revoke_grant`].
    pub async fn revoke_grant(&self, id: GrantId) -> Result<(), StoreError> {
        dispatch!(await self.revoke_grant(id))
    }

    /// [`Backend::client`].
    pub async fn client(&self, client_id: &str) -> Result<Option<Arc<Client>>, StoreError> {
        dispatch!(await self.client(client_id))
    }

    /// [`Backend::put_client`].
    pub async fn put_client(&self, client: Client) -> Result<(), StoreError> {
        dispatch!(await self.put_client(client))
    }

    /// [`Backend::add_client`].
    pub async fn add_client(&self, client: Client, source: Source) -> Result<(), StoreError> {
        dispatch!(await self.add_client(client, source))
    }

    /// [`Backend::revoke_client`].
    pub async fn revoke_client(&self, client_id: &str) -> Result<(), StoreError> {
        dispatch!(await self.revoke_client(client_id))
    }

    /// [`Backend::make_room_for_client`].
    pub async fn make_room_for_client(
        &self,
        now: UnixTime,
        ttl_secs: u64,
        max_clients: usize,
        sign_in_ttl_secs: u64,
    ) -> Result<Option<usize>, StoreError> {
        dispatch!(await self.make_room_for_client(now, ttl_secs, max_clients, sign_in_ttl_secs))
    }

    /// [`Backend::claim_sign_in`].
    pub async fn claim_sign_in(&self, key: TokenHash, expires_at: UnixTime, now: UnixTime) -> Result<bool, StoreError> {
        dispatch!(await self.claim_sign_in(key, expires_at, now))
    }

    /// [`Backend::claim_assertion`].
    pub async fn claim_assertion(
        &self,
        key: TokenHash,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        dispatch!(await self.claim_assertion(key, expires_at, now))
    }

    /// [`Backend::sign_in_used`].
    pub async fn sign_in_used(&self, key: &TokenHash) -> Result<bool, StoreError> {
        dispatch!(await self.sign_in_used(key))
    }

    /// [`Backend::issue_code`].
    pub async fn issue_code(&self, secret: &str, code: AuthorizationCode) -> Result<(), StoreError> {
        dispatch!(await self.issue_code(secret, code))
    }

    /// [`Backend::redeem_code`].
    pub async fn redeem_code(&self, secret: &str) -> Result<CodeRedemption, StoreError> {
        dispatch!(await self.redeem_code(secret))
    }

    /// [`Backend::start_grant`].
    pub async fn start_grant(
        &self,
        grant: Arc<Grant>,
        code: TokenHash,
        code_expires_at: UnixTime,
    ) -> Result<(), StoreError> {
        dispatch!(await self.start_grant(grant, code, code_expires_at))
    }

    /// [`Backend::add_access_token`].
    pub async fn add_access_token(&self, secret: &str, token: AccessToken) -> Result<(), StoreError> {
        dispatch!(await self.add_access_token(secret, token))
    }

    /// [`Backend::revoke_access_token`].
    pub async fn revoke_access_token(&self, hash: &TokenHash, client_id: &str) -> Result<bool, StoreError> {
        dispatch!(await self.revoke_access_token(hash, client_id))
    }

    /// [`Backend::add_refresh_family`].
    pub async fn add_refresh_family(
        &self,
        family: TokenHash,
        record: RefreshFamily,
        secret: &str,
    ) -> Result<(), StoreError> {
        dispatch!(await self.add_refresh_family(family, record, secret))
    }

    /// [`Backend::refresh_family`].
    pub async fn refresh_family(
        &self,
        family: &TokenHash,
        presented: &str,
    ) -> Result<Option<RefreshFamily>, StoreError> {
        dispatch!(await self.refresh_family(family, presented))
    }

    /// [`Backend::replace_refresh_family`].
    pub async fn replace_refresh_family(
        &self,
        family: &TokenHash,
        expected: u32,
        next: RefreshFamily,
        secret: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(await self.replace_refresh_family(family, expected, next, secret))
    }

    /// [`Backend::code_client`].
    pub async fn code_client(&self, hash: &TokenHash) -> Result<Option<String>, StoreError> {
        dispatch!(await self.code_client(hash))
    }

    /// [`Backend::refresh_client`].
    pub async fn refresh_client(&self, token: &str) -> Result<Option<String>, StoreError> {
        dispatch!(await self.refresh_client(token))
    }

    /// [`Backend::count_request`].
    pub async fn count_request(
        &self,
        class: crate::endpoint::LimitClass,
        source: Source,
        per_minute: u32,
    ) -> Result<Option<u64>, StoreError> {
        dispatch!(await self.count_request(class, source, per_minute))
    }

    /// [`Backend::begin_upstream_refresh`].
    pub async fn begin_upstream_refresh(&self, grant: &Grant) -> Result<UpstreamTurn, StoreError> {
        dispatch!(await self.begin_upstream_refresh(grant))
    }

    /// [`Backend::end_upstream_refresh`].
    pub async fn end_upstream_refresh(&self, grant: &Grant, fence: u64, refreshed: bool) -> Result<(), StoreError> {
        dispatch!(await self.end_upstream_refresh(grant, fence, refreshed))
    }

    /// [`Backend::grant`].
    pub async fn grant(&self, id: GrantId) -> Result<Option<Arc<Grant>>, StoreError> {
        dispatch!(await self.grant(id))
    }

    /// [`Backend::has_client`].
    pub async fn has_client(&self, client_id: &str) -> Result<bool, StoreError> {
        dispatch!(await self.has_client(client_id))
    }

    /// [`Backend::list_clients`].
    pub async fn list_clients(&self) -> Result<Vec<Arc<Client>>, StoreError> {
        dispatch!(await self.list_clients())
    }

    /// [`Backend::list_grants`].
    pub async fn list_grants(&self) -> Result<Vec<Arc<Grant>>, StoreError> {
        dispatch!(await self.list_grants())
    }

    /// [`Backend::revoke_user`].
    pub async fn revoke_user(&self, subject: &str) -> Result<Vec<GrantId>, StoreError> {
        dispatch!(await self.revoke_user(subject))
    }

    /// [`Backend::require_interaction`].
    pub async fn require_interaction(
        &self,
        client_id: &str,
        who: &str,
        requirement: InteractionRequirement,
    ) -> Result<(), StoreError> {
        dispatch!(await self.require_interaction(client_id, who, requirement))
    }

    /// [`Backend::interaction_required`].
    pub async fn interaction_required(
        &self,
        client_id: &str,
        who: &str,
        now: UnixTime,
    ) -> Result<Option<InteractionRequirement>, StoreError> {
        dispatch!(await self.interaction_required(client_id, who, now))
    }

    /// [`Backend::take_interaction`].
    pub async fn take_interaction(
        &self,
        client_id: &str,
        who: &str,
        now: UnixTime,
    ) -> Result<Option<InteractionRequirement>, StoreError> {
        dispatch!(await self.take_interaction(client_id, who, now))
    }

    /// [`Backend::sign_in_started`].
    pub async fn sign_in_started(&self, client_id: &str, ttl_secs: u64) -> Result<(), StoreError> {
        dispatch!(await self.sign_in_started(client_id, ttl_secs))
    }

    /// [`Backend::shared_route_token`].
    pub async fn shared_route_token(&self, grant: &Grant, prefix: &str) -> Result<Option<RouteToken>, StoreError> {
        dispatch!(await self.shared_route_token(grant, prefix))
    }

    /// [`Backend::share_route_token`].
    pub async fn share_route_token(&self, grant: &Grant, prefix: &str) -> Result<(), StoreError> {
        dispatch!(await self.share_route_token(grant, prefix))
    }
}
