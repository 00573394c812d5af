//! Token revocation (RFC 7009).
//!
//! Invariants:
//! - A refresh token revokes its whole grant (§2.1: "SHOULD also invalidate the access tokens"); an access token
//!   is removed alone.
//! - Only the client a token was issued to can revoke it; a token that is unknown or another client's is answered
//!   with the same empty 200 (§2.2), so that nothing is learned.
//! - A URL client_id's metadata document is fetched only to revoke a token of that client.

use http::{Request, Response};

use crate::app::App;
use crate::audit::{Entry, Event};
use crate::client_documents;
use crate::crypto::TokenHash;
use crate::endpoint::Endpoint;
use crate::endpoints::client_auth::Credential;
use crate::endpoints::requests;
use crate::error::Error;
use crate::http::{self as h, no_store, Body, RequestBody};
use crate::store::{Store, StoreError};

/// What a revocation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// A refresh token: its grant and every token of it.
    Grant,
    /// An access token.
    AccessToken,
    /// Nothing: unknown, or another client's.
    Nothing,
}

/// RFC 7009 §2: the revocation endpoint.
pub async fn handle(app: &App, req: Request<RequestBody>) -> Result<Response<Body>, Error> {
    let (headers, params) = requests::read_oauth_form(req).await?;
    let token = params.require("token")?;
    let answer = || {
        let mut resp = Response::new(h::empty());
        no_store(&mut resp);
        resp
    };
    let credential = Credential::read(&headers, &params)?;
    let id = credential.client_id();
    let may_fetch = client_documents::is_document_id(id) || matches!(credential, Credential::Assertion { .. });
    if may_fetch && app.store.token_client(token).await?.as_deref() != Some(id) {
        return Ok(answer());
    }
    let client = requests::token_client(app, &credential, Endpoint::Revoke).await?;
    match revoke(&app.store, &client.client_id, token).await? {
        Revoked::Grant => {
            tracing::info!(client_id = %client.client_id, "grant revoked by its client");
            app.audit(Entry::new(Event::TokenRevoked).client(&client.client_id).detail("refresh token: grant revoked"))
                .await;
        }
        Revoked::AccessToken => {
            tracing::info!(client_id = %client.client_id, "access token revoked by its client");
            app.audit(Entry::new(Event::TokenRevoked).client(&client.client_id).detail("access token")).await;
        }
        Revoked::Nothing => {}
    }
    Ok(answer())
}

/// Revokes `token` if it was issued to `client_id`: a refresh token (current or just rotated) with its grant, or
/// an access token.
pub async fn revoke(store: &Store, client_id: &str, token: &str) -> Result<Revoked, StoreError> {
    let refresh_grant = store.refresh_token(token).await?.map(|(grant, _, _)| grant);
    Ok(if let Some(grant) = refresh_grant.filter(|g| g.client_id == client_id) {
        store.revoke_grant(grant.id).await?;
        Revoked::Grant
    } else if store.revoke_access_token(&TokenHash::of(token), client_id).await? {
        Revoked::AccessToken
    } else {
        Revoked::Nothing
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::store::UpstreamLogin;
    use crate::store::{AccessToken, FamilyId, Grant, Identity, RefreshFamily, RefreshTokenName, UpstreamCredential};
    use std::sync::Arc;

    fn grant(client_id: &str) -> std::sync::Arc<Grant> {
        let login = UpstreamLogin { credential: UpstreamCredential::Local, identity: Identity::default() };
        Grant::new(client_id.into(), vec!["openid".into()], None, login, 1)
    }

    #[tokio::test]
    async fn a_refresh_token_revokes_its_grant_for_its_own_client_only() {
        let store = Arc::new(MemoryStore::new());
        let state = Store::Memory(store.clone());
        let g = grant("c1");
        store.start_grant(g.clone(), TokenHash::of("code"), 100);
        let name = RefreshTokenName { family: FamilyId::random(), generation: 0 };
        let refresh = name.mint();
        let family = RefreshFamily {
            grant: g.clone(),
            generation: 0,
            current: TokenHash::of(&refresh),
            expires_at: 100,
            rotated: None,
        };
        store.add_refresh_family(name.family.hash(), family);
        assert_eq!(revoke(&state, "c2", &refresh).await.ok(), Some(Revoked::Nothing));
        assert!(!g.is_revoked());
        assert_eq!(revoke(&state, "c1", &refresh).await.ok(), Some(Revoked::Grant));
        assert!(g.is_revoked());
    }

    #[tokio::test]
    async fn an_access_token_is_removed_for_its_own_client_only() {
        let store = Arc::new(MemoryStore::new());
        let state = Store::Memory(store.clone());
        let g = grant("c1");
        store.add_access_token(TokenHash::of("at"), AccessToken::new(g.clone(), 100));
        assert_eq!(revoke(&state, "c2", "at").await.ok(), Some(Revoked::Nothing));
        assert!(store.access_token(&TokenHash::of("at"), 10).is_some());
        assert_eq!(revoke(&state, "c1", "at").await.ok(), Some(Revoked::AccessToken));
        assert!(store.access_token(&TokenHash::of("at"), 10).is_none());
        assert!(!g.is_revoked(), "an access token does not revoke its grant");
        assert_eq!(revoke(&state, "c1", "unknown").await.ok(), Some(Revoked::Nothing));
    }
}
