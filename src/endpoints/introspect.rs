//! Token introspection (RFC 7662) for the one configured resource server.
//!
//! Invariants:
//! - Only the resource server's credentials (`[introspection]`, HTTP Basic or form, §2.1) are accepted, compared
//!   in constant time; without that section the endpoint does not exist (404).
//! - A token that is unknown, expired, of a revoked grant, or a refresh token already rotated is only
//!   `{"active": false}` (§2.2): nothing else is said about it.

use http::{Request, Response, StatusCode};
use serde_json::Value;

use crate::app::App;
use crate::clock::UnixTime;
use crate::crypto::{self, TokenHash};
use crate::endpoints::client_auth::Credential;
use crate::endpoints::requests;
use crate::error::{Error, OAuthError};
use crate::http::{json_response, no_store, Body, RequestBody};
use crate::store::{Store, StoreError};

/// RFC 7662 §2: the introspection endpoint.
pub async fn handle(app: &App, req: Request<RequestBody>) -> Result<Response<Body>, Error> {
    use secrecy::ExposeSecret as _;
    let Some(rs) = &app.config.introspection else {
        return Err(Error::NotFound);
    };
    let (headers, params) = requests::read_oauth_form(req).await?;
    // The resource server authenticates with its secret (Basic or form), read by the one client-authentication
    // module; any other credential is refused like a wrong secret.
    let (id, secret) = match Credential::read(&headers, &params)? {
        Credential::Secret { client_id, secret } => (client_id, secret),
        Credential::Id(client_id) | Credential::Assertion { client_id, .. } => (client_id, String::new()),
    };
    let id_ok = crypto::constant_time_eq(id.as_bytes(), rs.client_id.as_bytes());
    if !(id_ok && !secret.is_empty() && TokenHash::of(rs.client_secret.expose_secret()).matches(&secret)) {
        return Err(OAuthError::invalid_client("introspection requires the resource server's credentials").into());
    }
    let token = params.require("token")?;
    let issuer = Issuer { url: &app.config.server.public_url, resource: app.config.resource_url() };
    let body = introspect(&app.store, token, params.get("token_type_hint"), app.clock.now(), &issuer).await?;
    let mut resp = json_response(StatusCode::OK, &body);
    no_store(&mut resp);
    Ok(resp)
}

/// Who answers: the proxy's issuer URL and the default audience of its tokens.
pub struct Issuer<'a> {
    pub url: &'a str,
    /// The `aud` of a grant bound to no RFC 8707 resource.
    pub resource: String,
}

/// The introspection response for `token` (§2.2).
pub async fn introspect(
    store: &Store,
    token: &str,
    hint: Option<&str>,
    now: UnixTime,
    issuer: &Issuer<'_>,
) -> Result<Value, StoreError> {
    let access = store
        .access_token_record(&TokenHash::of(token))
        .await?
        .map(|(grant, exp, scope)| (grant, exp, scope, "access_token"));
    let found = match access {
        Some(found) => Some(found),
        None => store
            .refresh_token(token)
            .await?
            .filter(|(_, _, current)| *current)
            .map(|(grant, exp, _)| (grant.clone(), exp, grant.scope.clone(), "refresh_token")),
    };
    Ok(match found {
        Some((grant, exp, scope, kind)) if exp > now && !grant.is_revoked() => serde_json::json!({
            "active": true,
            "scope": &*scope,
            "client_id": grant.client_id,
            "sub": grant.identity.sub,
            "exp": exp,
            "iat": grant.created_at,
            "iss": issuer.url,
            "aud": grant.resource.clone().unwrap_or_else(|| issuer.resource.clone()),
            "token_type": if kind == "access_token" { "Bearer" } else { "refresh_token" },
            "token_type_hint_used": hint.is_some(),
        }),
        _ => serde_json::json!({"active": false}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::store::{AccessToken, Grant, Identity, UpstreamCredential, UpstreamLogin};
    use std::sync::Arc;

    #[tokio::test]
    async fn live_tokens_are_described_and_anything_else_is_only_inactive() {
        let store = Arc::new(MemoryStore::new());
        let state = Store::Memory(store.clone());
        let login = UpstreamLogin {
            credential: UpstreamCredential::Local,
            identity: Identity { sub: "user-1".into(), ..Identity::default() },
        };
        let grant = Grant::new("c1".into(), vec!["openid".into()], None, login, 5);
        store.add_access_token(TokenHash::of("at"), AccessToken::new(grant.clone(), 100));
        let issuer = Issuer { url: "https://p.example", resource: "https://p.example/mcp".into() };
        let live = introspect(&state, "at", None, 50, &issuer).await.unwrap_or_default();
        assert_eq!(live["active"], true);
        assert_eq!(live["sub"], "user-1");
        assert_eq!(live["aud"], "https://p.example/mcp");
        assert_eq!(live["token_type"], "Bearer");
        let inactive = serde_json::json!({"active": false});
        assert_eq!(introspect(&state, "at", None, 100, &issuer).await.ok(), Some(inactive.clone()), "expired");
        assert_eq!(introspect(&state, "unknown", Some("access_token"), 50, &issuer).await.ok(), Some(inactive.clone()));
        grant.revoke();
        assert_eq!(introspect(&state, "at", None, 50, &issuer).await.ok(), Some(inactive), "revoked");
    }
}
