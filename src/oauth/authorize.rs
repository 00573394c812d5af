//! The authorization request (RFC 6749 §4.1.1, OAuth 2.1 §4.1.1, RFC 7636, RFC 8707, RFC 9207).
//!
//! Order matters (RFC 6749 §4.1.2.1): the client and its redirect URI are checked first, and a failure there is
//! shown to the user as a page, never redirected (no open redirect). Only then do other errors go back to the
//! validated redirect URI with `error`, `state` and `iss`.
//!
//! Rules: `response_type=code`; `code_challenge` with `code_challenge_method=S256` required (`plain` and a missing
//! method refused); `state` returned verbatim; `resource`, when sent, must name this proxy's protected resource.
//!
//! Bounds: every parameter is echoed (on the consent page, in the sealed sign-in, in the final redirect), so each
//! is bounded before anything else happens, with a 400 page beyond (never a redirect that would echo it):
//! the whole query at [`MAX_QUERY_BYTES`], `state` at `limits.max_state_bytes`. The other echoed values must
//! equal something registered or configured (client, redirect URI, resource, offered scopes) or have a fixed
//! length (the S256 challenge), so they are bounded by what they are checked against.
//!
//! Refusals are [`AuthorizeError`]s; `crate::error` renders them (a page, or the redirect).

use super::{pkce, scope};
use crate::http::params::Params;
use crate::oauth::error::{ErrorCode, OAuthError};
use crate::redirect_uri;
use crate::store::Client;

/// Longest `/authorize` query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;

/// What the proxy knows about itself when it checks an authorization request.
pub struct AuthorizeContext<'a> {
    pub issuer: &'a str,
    /// Values accepted for RFC 8707 `resource`.
    pub resources: &'a [String],
    pub offered_scopes: &'a [String],
    /// Longest `state` accepted (`limits.max_state_bytes`).
    pub max_state_bytes: usize,
}

/// Why an authorization request is refused (RFC 6749 §4.1.2.1). Every variant but `Redirect` is found before
/// the redirect URI is trusted, so it is shown to the user (400 page) and never redirected.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    /// Malformed, overlong or incomplete; the message is shown to the user.
    #[error("invalid authorization request: {0}")]
    Invalid(String),
    /// No registered client has this `client_id` (or its registration expired).
    #[error("unknown client")]
    UnknownClient,
    /// The `redirect_uri` is not one the client registered.
    #[error("redirect_uri not registered by the client")]
    UnregisteredRedirectUri(String),
    /// Found after the redirect URI is validated: sent back to it with `error`, `state` and `iss` (RFC 9207).
    #[error("authorization error redirected to the client: {}", error.code.as_str())]
    Redirect { redirect_uri: String, error: OAuthError, state: Option<String>, issuer: String },
}

/// Refuses a query longer than [`MAX_QUERY_BYTES`].
pub fn check_query_length(query: &[u8]) -> Result<(), AuthorizeError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(AuthorizeError::Invalid(format!("The request is longer than {MAX_QUERY_BYTES} bytes.")));
    }
    Ok(())
}

pub use crate::store::AuthorizationRequest;

/// Validates `/authorize` parameters against a client looked up by `client_id`.
pub fn validate(
    query: &[u8],
    lookup: impl FnOnce(&str) -> Option<std::sync::Arc<Client>>,
    ctx: &AuthorizeContext<'_>,
) -> Result<AuthorizationRequest, AuthorizeError> {
    check_query_length(query)?;
    let params = Params::parse(query).map_err(|e| AuthorizeError::Invalid(e.to_string()))?;
    if params.get("state").is_some_and(|s| s.len() > ctx.max_state_bytes) {
        return Err(AuthorizeError::Invalid(format!(
            "The state parameter is longer than {} bytes.",
            ctx.max_state_bytes
        )));
    }
    let client_id =
        params.get("client_id").ok_or_else(|| AuthorizeError::Invalid("The request has no client_id.".into()))?;
    let client = lookup(client_id).ok_or(AuthorizeError::UnknownClient)?;
    let (redirect_uri, explicit) = match params.get("redirect_uri") {
        Some(requested) => match redirect_uri::find_match(&client.redirect_uris, requested) {
            Some(_) => (requested.to_owned(), true),
            None => return Err(AuthorizeError::UnregisteredRedirectUri(requested.to_owned())),
        },
        None => match client.redirect_uris.as_slice() {
            [only] => (only.clone(), false),
            _ => {
                return Err(AuthorizeError::Invalid(
                    "The request has no redirect_uri and the application registered several.".into(),
                ))
            }
        },
    };

    let state = params.get("state").map(str::to_owned);
    let redirect = |code: ErrorCode, description: &str| AuthorizeError::Redirect {
        redirect_uri: redirect_uri.clone(),
        error: OAuthError::new(code, description),
        state: state.clone(),
        issuer: ctx.issuer.to_owned(),
    };

    match params.get("response_type") {
        Some("code") => {}
        Some(_) => return Err(redirect(ErrorCode::UnsupportedResponseType, "response_type must be code")),
        None => return Err(redirect(ErrorCode::InvalidRequest, "missing parameter `response_type`")),
    }
    let challenge = params
        .get("code_challenge")
        .ok_or_else(|| redirect(ErrorCode::InvalidRequest, "code_challenge is required (PKCE with S256)"))?;
    match params.get("code_challenge_method") {
        Some("S256") => {}
        Some(_) | None => {
            return Err(redirect(ErrorCode::InvalidRequest, "code_challenge_method must be S256; plain is not allowed"))
        }
    }
    if !pkce::is_valid_s256_challenge(challenge) {
        return Err(redirect(ErrorCode::InvalidRequest, "code_challenge is not a base64url SHA-256 digest"));
    }
    let scope =
        scope::resolve(params.get("scope"), ctx.offered_scopes).map_err(|e| redirect(e.code, &e.description))?;
    let resource = match params.get("resource") {
        Some(r) if ctx.resources.iter().any(|ok| ok == r) => Some(r.to_owned()),
        Some(_) => {
            return Err(redirect(ErrorCode::InvalidTarget, "resource is not served by this authorization server"))
        }
        None => None,
    };
    Ok(AuthorizationRequest {
        client_id: client.client_id.clone(),
        redirect_uri,
        redirect_uri_explicit: explicit,
        state,
        code_challenge: challenge.to_owned(),
        scope,
        resource,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn client() -> Arc<Client> {
        Arc::new(Client::public("c1", vec!["https://app.example/cb".into()], 0))
    }

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn run(query: &str) -> Result<AuthorizationRequest, AuthorizeError> {
        let resources = vec!["https://p.example/mcp".to_owned()];
        let scopes = vec!["openid".to_owned()];
        let ctx = AuthorizeContext {
            issuer: "https://p.example",
            resources: &resources,
            offered_scopes: &scopes,
            max_state_bytes: 16,
        };
        validate(query.as_bytes(), |id| (id == "c1").then(client), &ctx)
    }

    fn ok_query() -> String {
        format!(
            "response_type=code&client_id=c1&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&state=xyz\
             &code_challenge={CHALLENGE}&code_challenge_method=S256"
        )
    }

    #[test]
    fn valid_request_passes() {
        let r = run(&ok_query()).ok();
        assert_eq!(r.as_ref().map(|r| r.state.as_deref()), Some(Some("xyz")));
        assert_eq!(r.map(|r| r.scope), Some(vec!["openid".to_owned()]));
    }

    #[test]
    fn unknown_client_and_foreign_redirect_are_pages_not_redirects() {
        assert!(matches!(run(&ok_query().replace("client_id=c1", "client_id=zz")), Err(AuthorizeError::UnknownClient)));
        assert!(matches!(
            run(&ok_query().replace("app.example", "evil.example")),
            Err(AuthorizeError::UnregisteredRedirectUri(uri)) if uri == "https://evil.example/cb"
        ));
        assert!(matches!(run(&format!("{}&client_id=c1", ok_query())), Err(AuthorizeError::Invalid(_))));
    }

    fn redirected_code(q: &str) -> Option<ErrorCode> {
        match run(q) {
            Err(AuthorizeError::Redirect { error, state, .. }) => {
                assert_eq!(state.as_deref(), Some("xyz"));
                Some(error.code)
            }
            _ => None,
        }
    }

    #[test]
    fn pkce_is_required_with_s256() {
        assert_eq!(
            redirected_code(&ok_query().replace("code_challenge_method=S256", "code_challenge_method=plain")),
            Some(ErrorCode::InvalidRequest)
        );
        assert_eq!(
            redirected_code(&ok_query().replace("&code_challenge_method=S256", "")),
            Some(ErrorCode::InvalidRequest)
        );
        assert_eq!(
            redirected_code(&ok_query().replace(&format!("&code_challenge={CHALLENGE}"), "")),
            Some(ErrorCode::InvalidRequest)
        );
    }

    #[test]
    fn other_errors_redirect_with_state() {
        assert_eq!(
            redirected_code(&ok_query().replace("response_type=code", "response_type=token")),
            Some(ErrorCode::UnsupportedResponseType)
        );
        assert_eq!(
            redirected_code(&format!("{}&resource=https%3A%2F%2Fother.example%2F", ok_query())),
            Some(ErrorCode::InvalidTarget)
        );
    }

    #[test]
    fn overlong_state_or_query_is_a_page_not_a_redirect() {
        assert!(run(&ok_query().replace("state=xyz", &format!("state={}", "s".repeat(16)))).is_ok());
        let long_state = ok_query().replace("state=xyz", &format!("state={}", "s".repeat(17)));
        assert!(matches!(run(&long_state), Err(AuthorizeError::Invalid(_))));
        let long_query = format!("{}&x={}", ok_query(), "x".repeat(MAX_QUERY_BYTES));
        assert!(matches!(run(&long_query), Err(AuthorizeError::Invalid(_))));
    }
}
