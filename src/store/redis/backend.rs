//! The Redis backend's side of the contract ([`crate::store::Backend`]): each operation on the backend's own
//! methods (`super`), which say how they keep it (scripts, `SET NX`, `GETDEL`, sealed records).

use std::sync::Arc;

use super::RedisStore;
use crate::clock::UnixTime;
use crate::crypto::TokenHash;
use crate::rate_limit::Source;
use crate::store::*;

impl Backend for RedisStore {
    fn stats(&self) -> StoreStats {
        self.stats()
    }

    async fn readiness(&self) -> (bool, &'static str) {
        match self.ping().await {
            true => (true, "Redis answers"),
            false => (false, "Redis does not answer PING"),
        }
    }

    async fn access(&self, token: &str, now: UnixTime) -> Result<Option<BearerGrant>, StoreError> {
        self.access(token, now).await
    }

    async fn access_token_record(&self, hash: &TokenHash) -> Result<Option<AccessLookup>, StoreError> {
        self.access_token_record(hash).await
    }

    async fn refresh_token(&self, token: &str) -> Result<Option<RefreshLookup>, StoreError> {
        self.refresh_token(token).await
    }

    async fn revoke_grant(&self, id: GrantId) -> Result<(), StoreError> {
        self.revoke_grant(id).await
    }

    async fn client(&self, client_id: &str) -> Result<Option<Arc<Client>>, StoreError> {
        self.client(client_id).await
    }

    async fn put_client(&self, client: Client) -> Result<(), StoreError> {
        self.put_client(&client).await
    }

    async fn add_client(&self, client: Client, _source: Source) -> Result<(), StoreError> {
        self.add_client(&client, self.unused_client_ttl()).await
    }

    async fn revoke_client(&self, client_id: &str) -> Result<(), StoreError> {
        self.revoke_client(client_id).await
    }

    async fn make_room_for_client(
        &self,
        _now: UnixTime,
        ttl_secs: u64,
        max_clients: usize,
        _sign_in_ttl_secs: u64,
    ) -> Result<Option<usize>, StoreError> {
        self.make_room(ttl_secs, max_clients).await
    }

    async fn claim_sign_in(&self, key: TokenHash, expires_at: UnixTime, _now: UnixTime) -> Result<bool, StoreError> {
        self.claim_sign_in(&key, expires_at).await
    }

    async fn claim_assertion(&self, key: TokenHash, expires_at: UnixTime, _now: UnixTime) -> Result<bool, StoreError> {
        self.claim_assertion(&key, expires_at).await
    }

    async fn sign_in_used(&self, key: &TokenHash) -> Result<bool, StoreError> {
        self.sign_in_used(key).await
    }

    async fn issue_code(&self, secret: &str, code: AuthorizationCode) -> Result<(), StoreError> {
        self.issue_code(secret, &code).await
    }

    async fn redeem_code(&self, secret: &str) -> Result<CodeRedemption, StoreError> {
        self.redeem_code(secret).await
    }

    async fn start_grant(
        &self,
        grant: Arc<Grant>,
        code: TokenHash,
        code_expires_at: UnixTime,
    ) -> Result<(), StoreError> {
        self.start_grant(grant, &code, code_expires_at).await
    }

    async fn add_access_token(&self, secret: &str, token: AccessToken) -> Result<(), StoreError> {
        self.add_access_token(&TokenHash::of(secret), &token, Some(secret)).await
    }

    async fn revoke_access_token(&self, hash: &TokenHash, client_id: &str) -> Result<bool, StoreError> {
        self.revoke_access_token(hash, client_id).await
    }

    async fn add_refresh_family(
        &self,
        family: TokenHash,
        record: RefreshFamily,
        secret: &str,
    ) -> Result<(), StoreError> {
        self.put_refresh_family(&family, &record, None, Some(secret)).await.map(|_| ())
    }

    async fn refresh_family(&self, family: &TokenHash, presented: &str) -> Result<Option<RefreshFamily>, StoreError> {
        self.refresh_family(family, Some(presented)).await
    }

    async fn replace_refresh_family(
        &self,
        family: &TokenHash,
        expected: u32,
        next: RefreshFamily,
        secret: &str,
    ) -> Result<bool, StoreError> {
        self.put_refresh_family(family, &next, Some(expected), Some(secret)).await
    }

    async fn code_client(&self, hash: &TokenHash) -> Result<Option<String>, StoreError> {
        self.code_client(hash).await
    }

    async fn refresh_client(&self, token: &str) -> Result<Option<String>, StoreError> {
        self.refresh_client(token).await
    }

    async fn count_request(
        &self,
        class: crate::endpoint::LimitClass,
        source: Source,
        per_minute: u32,
    ) -> Result<Option<u64>, StoreError> {
        self.count_request(&format!("{class:?}:{source}"), per_minute).await
    }

    async fn begin_upstream_refresh(&self, grant: &Grant) -> Result<UpstreamTurn, StoreError> {
        self.begin_upstream_refresh(grant).await
    }

    async fn end_upstream_refresh(&self, grant: &Grant, fence: u64, refreshed: bool) -> Result<(), StoreError> {
        self.end_upstream_refresh(grant, fence, refreshed).await
    }

    async fn grant(&self, id: GrantId) -> Result<Option<Arc<Grant>>, StoreError> {
        Ok(self.grant_by_id(id).await?.filter(|g| !g.is_revoked()))
    }

    async fn has_client(&self, client_id: &str) -> Result<bool, StoreError> {
        Ok(self.client(client_id).await?.is_some())
    }

    async fn list_clients(&self) -> Result<Vec<Arc<Client>>, StoreError> {
        self.list_clients().await
    }

    async fn list_grants(&self) -> Result<Vec<Arc<Grant>>, StoreError> {
        self.list_grants().await
    }

    async fn revoke_user(&self, subject: &str) -> Result<Vec<GrantId>, StoreError> {
        {
            let ids: Vec<GrantId> =
                self.list_grants().await?.iter().filter(|g| g.identity.sub == subject).map(|g| g.id).collect();
            for id in &ids {
                self.revoke_grant(*id).await?;
            }
            Ok(ids)
        }
    }

    async fn require_interaction(
        &self,
        client_id: &str,
        who: &str,
        requirement: InteractionRequirement,
    ) -> Result<(), StoreError> {
        self.require_interaction(client_id, who, &requirement).await
    }

    async fn interaction_required(
        &self,
        client_id: &str,
        who: &str,
        now: UnixTime,
    ) -> Result<Option<InteractionRequirement>, StoreError> {
        self.interaction(client_id, who, now, false).await
    }

    async fn take_interaction(
        &self,
        client_id: &str,
        who: &str,
        now: UnixTime,
    ) -> Result<Option<InteractionRequirement>, StoreError> {
        self.interaction(client_id, who, now, true).await
    }

    async fn sign_in_started(&self, client_id: &str, ttl_secs: u64) -> Result<(), StoreError> {
        self.sign_in_started(client_id, ttl_secs).await
    }

    async fn shared_route_token(&self, grant: &Grant, prefix: &str) -> Result<Option<RouteToken>, StoreError> {
        self.route_token(grant, prefix).await
    }

    async fn share_route_token(&self, grant: &Grant, prefix: &str) -> Result<(), StoreError> {
        self.put_route_token(grant, prefix).await
    }

    async fn client_authorized(&self, client: &Client, first: bool) -> Result<(), StoreError> {
        // A metadata-document client is not in the store: only a stored one is rewritten, once.
        match first {
            true => self.update_client(client).await,
            false => Ok(()),
        }
    }
}
