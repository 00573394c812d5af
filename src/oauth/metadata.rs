//! Discovery documents, built once at start.
//!
//! - RFC 8414 §2 authorization server metadata at `/.well-known/oauth-authorization-server`, also served at
//!   `/.well-known/openid-configuration` (clients fall back to it). The issuer is `server.public_url` verbatim.
//! - RFC 9728 §2 protected resource metadata at `/.well-known/oauth-protected-resource` and with the resource path
//!   inserted (§3.1), e.g. `/.well-known/oauth-protected-resource/mcp`.
//! - RFC 9207: `authorization_response_iss_parameter_supported`, the proxy sends `iss` with every authorization
//!   response.
//! - MCP 2026-07-28 (SEP-2207): `offline_access` is left out of the protected-resource `scopes_supported` (and of
//!   every `WWW-Authenticate` scope, [`challenge_scopes`]); the authorization server metadata still lists it, it
//!   is still asked of the IdP and still accepted from clients.
//! - `registration.enabled = false` (Dynamic Client Registration off, deprecated by MCP 2026-07-28): no
//!   `registration_endpoint`.
//! - Client authentication (RFC 8414 §2): `none`, the two secret methods and `private_key_jwt` (RFC 7523) with the
//!   signing algorithms of [`crate::jwk::ALGORITHMS`], at the token and revocation endpoints.
//! - `client_id_metadata_document_supported` (draft-ietf-oauth-client-id-metadata-document §5): URL client_ids
//!   are accepted unless `client_metadata_documents.enabled = false`.

use bytes::Bytes;
use serde_json::json;

use crate::config::Config;
use crate::endpoint::Endpoint;
use crate::store::ClientAuthMethod;

/// The serialized documents.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub authorization_server: Bytes,
    /// The same document without `registration_endpoint`, served while registration is switched off.
    pub authorization_server_closed: Bytes,
    pub protected_resource: Bytes,
    /// Path of the path-inserted RFC 9728 document.
    pub protected_resource_path: String,
}

impl Metadata {
    pub fn build(config: &Config) -> Self {
        let base = &config.server.public_url;
        let scopes = &config.idp.scopes;
        let auth_methods: Vec<&str> = ClientAuthMethod::ALL.iter().map(|m| m.as_str()).collect();
        let signing_algs = crate::jwk::algorithm_names();
        let as_doc = json!({
            "issuer": base,
            "authorization_endpoint": endpoint(base, Endpoint::Authorize),
            "token_endpoint": endpoint(base, Endpoint::Token),
            "registration_endpoint": endpoint(base, Endpoint::Register),
            "revocation_endpoint": endpoint(base, Endpoint::Revoke),
            "userinfo_endpoint": endpoint(base, Endpoint::Userinfo),
            "scopes_supported": scopes,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": crate::store::GrantType::names(),
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": auth_methods,
            "token_endpoint_auth_signing_alg_values_supported": signing_algs,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_signing_alg_values_supported": signing_algs,
            "authorization_response_iss_parameter_supported": true,
            "client_id_metadata_document_supported": config.client_documents.enabled,
        });
        let mut closed_doc = as_doc.clone();
        if let Some(fields) = closed_doc.as_object_mut() {
            fields.remove("registration_endpoint");
        }
        let prm_doc = json!({
            "resource": config.resource_url(),
            "authorization_servers": [base],
            "scopes_supported": challenge_scopes(scopes),
            "bearer_methods_supported": ["header"],
            "resource_name": "dcr-proxy protected MCP server",
        });
        Self {
            authorization_server: Bytes::from(as_doc.to_string()),
            authorization_server_closed: Bytes::from(closed_doc.to_string()),
            protected_resource: Bytes::from(prm_doc.to_string()),
            protected_resource_path: format!(
                "{}{}",
                Endpoint::ProtectedResourceMetadata.path().unwrap_or_default(),
                config.upstream.resource_path
            ),
        }
    }
}

/// The scopes a protected resource names (RFC 9728 `scopes_supported`, `WWW-Authenticate` scope): all but
/// `offline_access`, which is about the client's refresh tokens, not the resource (MCP 2026-07-28, SEP-2207).
pub fn challenge_scopes<'a>(scopes: impl IntoIterator<Item = &'a String>) -> Vec<&'a str> {
    scopes.into_iter().map(String::as_str).filter(|s| *s != OFFLINE_ACCESS).collect()
}

/// The OIDC scope that asks for a refresh token.
pub const OFFLINE_ACCESS: &str = "offline_access";

/// The URL of one of the proxy's endpoints.
fn endpoint(base: &str, endpoint: Endpoint) -> String {
    format!("{base}{}", endpoint.path().unwrap_or_default())
}

/// The RFC 9728 metadata URL put in `WWW-Authenticate` challenges.
pub fn resource_metadata_url(config: &Config) -> String {
    format!("{}/.well-known/oauth-protected-resource{}", config.server.public_url, config.upstream.resource_path)
}
