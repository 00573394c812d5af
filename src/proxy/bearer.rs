//! Bearer tokens on proxied requests (RFC 6750 §2.1) and the upstream credential they map to.

use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue};

use crate::app::App;
use crate::crypto::TokenHash;
use crate::error::{BearerProblem, Error};
use crate::store::{Grant, UpstreamCredential};

/// What replaces the client's Authorization header.
#[derive(Clone)]
pub enum UpstreamAuth {
    /// `Authorization: Bearer <IdP access token>`.
    Bearer(HeaderValue),
    /// Local login: identity headers, no Authorization.
    Identity { user: HeaderValue, email: Option<HeaderValue> },
}

/// Extracts the token of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110 §11.1).
pub fn token_from_headers(headers: &HeaderMap) -> Result<&str, BearerProblem> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(BearerProblem::Missing)?;
    if values.next().is_some() {
        return Err(BearerProblem::InvalidRequest);
    }
    let value = value.to_str().map_err(|_| BearerProblem::InvalidToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(BearerProblem::InvalidToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerProblem::InvalidToken);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > 512 {
        return Err(BearerProblem::InvalidToken);
    }
    Ok(token)
}

/// Whether the query string carries `access_token` (RFC 6750 §2.3), which the proxy refuses.
pub fn token_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "access_token"))
}

/// Finds the live grant of a request's bearer token.
pub fn authenticate(app: &App, headers: &HeaderMap, query: Option<&str>) -> Result<Arc<Grant>, Error> {
    let unauthorized = |problem| Error::Unauthorized { problem, challenge: app.challenge.clone() };
    if token_in_query(query) {
        return Err(unauthorized(BearerProblem::InvalidRequest));
    }
    let token = token_from_headers(headers).map_err(unauthorized)?;
    app.store
        .access_token(&TokenHash::of(token), app.clock.now())
        .ok_or_else(|| unauthorized(BearerProblem::InvalidToken))
}

fn header_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::try_from(s).ok()
}

/// The upstream credential of a grant, refreshed first when it expires within the configured margin.
///
/// Single flight: concurrent requests of one grant wait on the grant's `refresh_lock`, and only the first one
/// calls the IdP; the others find the fresh token when they get the lock. When the IdP refuses the refresh for
/// good (`invalid_grant`), the grant is revoked and the client gets 401 `invalid_token`, so that it logs in again.
/// A transient IdP failure keeps the current token while it is still valid.
///
/// `rejected`: the bearer the upstream just refused with 401. The token is then refreshed whatever its expiry,
/// unless another request already replaced it.
pub async fn upstream_auth(app: &App, grant: &Grant, rejected: Option<&HeaderValue>) -> Result<UpstreamAuth, Error> {
    let margin = app.config.tokens.upstream_refresh_margin.as_secs();
    let usable = |auth: UpstreamAuth| match (&auth, rejected) {
        (UpstreamAuth::Bearer(current), Some(bad)) if current == bad => None,
        _ => Some(auth),
    };
    if let Some(auth) = current_auth(grant, app.clock.now() + margin).and_then(usable) {
        return Ok(auth);
    }
    let _flight = grant.refresh_lock.lock().await;
    // Another request may have refreshed while this one waited.
    if let Some(auth) = current_auth(grant, app.clock.now() + margin).and_then(usable) {
        return Ok(auth);
    }
    if rejected.is_some() {
        // An upstream that refuses every token must not make the proxy hammer the IdP.
        let now = app.clock.now();
        let last = grant.forced_refresh_at.swap(now, std::sync::atomic::Ordering::Relaxed);
        if now < last + 30 {
            if let Some(auth) = current_auth(grant, now) {
                return Ok(auth);
            }
        }
    }
    // Copy what the IdP call needs so that no lock is held across the await.
    let refresh_token = match &*grant.upstream() {
        UpstreamCredential::Tokens(t) => t.refresh_token().map(str::to_owned),
        UpstreamCredential::Local => None,
    };
    let unauthorized =
        || Error::Unauthorized { problem: BearerProblem::InvalidToken, challenge: app.challenge.clone() };
    match refresh_with_retries(app, refresh_token).await {
        Ok(tokens) => {
            tracing::info!(client_id = %grant.client_id, "upstream access token refreshed");
            app.metrics.upstream_refresh("ok");
            let bearer = tokens.bearer().clone();
            *grant.upstream_mut() = UpstreamCredential::Tokens(tokens);
            Ok(UpstreamAuth::Bearer(bearer))
        }
        Err(e) if e.ends_grant() => {
            tracing::warn!(client_id = %grant.client_id, error = %e, "upstream refresh refused; grant ended");
            app.metrics.upstream_refresh("refused");
            app.metrics.idp_error(&e);
            app.store.revoke_grant(grant.id);
            Err(unauthorized())
        }
        Err(e) => {
            tracing::warn!(client_id = %grant.client_id, error = %e, "upstream refresh failed");
            app.metrics.upstream_refresh("failed");
            app.metrics.idp_error(&e);
            current_auth(grant, app.clock.now())
                .ok_or_else(|| Error::UpstreamUnavailable(format!("identity provider: {e}")))
        }
    }
}

/// Calls the IdP, retrying transient failures (network, 5xx, 429) twice with a growing pause; a refusal is final.
async fn refresh_with_retries(
    app: &App,
    refresh_token: Option<String>,
) -> Result<crate::store::UpstreamTokens, crate::idp::IdpError> {
    let mut pause = std::time::Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match app.idp.refresh(refresh_token.clone(), app.clock.now()).await {
            Err(e @ crate::idp::IdpError::Unavailable(_)) if attempt < 3 => {
                tracing::info!(error = %e, attempt, "upstream refresh failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 4;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The grant's credential if it is valid beyond `valid_until`.
fn current_auth(grant: &Grant, valid_until: u64) -> Option<UpstreamAuth> {
    match &*grant.upstream() {
        UpstreamCredential::Tokens(t) if t.expires_at > valid_until => Some(UpstreamAuth::Bearer(t.bearer().clone())),
        UpstreamCredential::Tokens(_) => None,
        UpstreamCredential::Local => Some(UpstreamAuth::Identity {
            user: header_value(&grant.identity.sub)?,
            email: grant.identity.email.as_deref().and_then(header_value),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for value in v {
            h.append(header::AUTHORIZATION, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_refused() {
        assert_eq!(token_from_headers(&headers(&["bearer abc"])), Ok("abc"));
        assert_eq!(token_from_headers(&headers(&["Bearer abc"])), Ok("abc"));
        assert_eq!(token_from_headers(&headers(&["Basic abc"])), Err(BearerProblem::InvalidToken));
        assert_eq!(token_from_headers(&headers(&[])), Err(BearerProblem::Missing));
        assert_eq!(token_from_headers(&headers(&["Bearer a", "Bearer b"])), Err(BearerProblem::InvalidRequest));
        assert_eq!(token_from_headers(&headers(&["Bearer"])), Err(BearerProblem::InvalidToken));
    }

    #[test]
    fn access_token_in_query_is_detected() {
        assert!(token_in_query(Some("a=1&access_token=x")));
        assert!(!token_in_query(Some("a=1")));
        assert!(!token_in_query(None));
    }
}
