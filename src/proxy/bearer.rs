//! Bearer tokens on proxied requests (RFC 6750 §2.1) and the upstream credential they map to.
//!
//! - A bearer yields its grant *and the scope of that access token*, which a refresh may have narrowed
//!   (RFC 6749 §6); the proxy's `required_scopes` check uses the token's scope.
//! - The IdP token is refreshed before it expires, `tokens.upstream_refresh_margin` ahead but never more than half
//!   of its lifetime ahead ([`refresh_due`]), so that a short-lived IdP token does not make every request refresh.
//!   One grant refreshes at the IdP at most once per `tokens.upstream_refresh_floor` while its token is still
//!   valid, whatever the margin or the upstream says.
//! - An upstream 401 marks the IdP token rejected ([`Grant::mark_upstream_rejected`]), whatever the request's
//!   method: the next request of the grant refreshes first. A refusal of that refresh ends the grant with 401
//!   `invalid_token` when its [`ErrorFamily`] needs a new sign-in (issue 16 §1), so that the client signs in again
//!   instead of looping; throttling or an outage keeps the grant (503 with `Retry-After` once the token expired).
//! - An upstream claims challenge (401 `error="insufficient_claims"`, CAE) is answered by one refresh asking Entra
//!   for the decoded claims, at most `idp.max_claims_bytes` ([`claims_challenge`], [`refresh_for_claims`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use super::Context;
use crate::audit::{self, Entry, Event};
use crate::error::{BearerProblem, Error};
use crate::idp::entra_error::ErrorFamily;
use crate::idp::IdpError;
use crate::store::{Grant, InteractionRequirement, UpstreamCredential, UpstreamTurn};

/// What replaces the client's Authorization header.
#[derive(Clone)]
pub enum UpstreamAuth {
    /// `Authorization: Bearer <IdP access token>`.
    Bearer(HeaderValue),
    /// Local login: identity headers, no Authorization.
    Identity { user: HeaderValue, email: Option<HeaderValue> },
}

pub use crate::oauth::bearer_token::{token_from_headers, token_in_query};

/// A live access token: its grant, and the scope the token carries.
///
/// It dereferences to the [`Grant`] for everything else, so `authenticated.scope` is the *token's* scope (the
/// grant's or narrower), the one every authorization decision must use.
pub struct Authenticated {
    pub grant: Arc<Grant>,
    pub scope: Arc<str>,
}

impl std::ops::Deref for Authenticated {
    type Target = Grant;
    fn deref(&self) -> &Grant {
        &self.grant
    }
}

/// Finds the live grant of a request's bearer token, with the token's scope.
pub async fn authenticate(cx: &Context<'_>, headers: &HeaderMap, query: Option<&str>) -> Result<Authenticated, Error> {
    let unauthorized = |problem| Error::Unauthorized { problem, challenge: cx.challenge.to_owned() };
    if token_in_query(query) {
        return Err(unauthorized(BearerProblem::InvalidRequest));
    }
    let token = token_from_headers(headers).map_err(unauthorized)?;
    let (grant, scope) =
        cx.store.access(token, cx.clock.now()).await?.ok_or_else(|| unauthorized(BearerProblem::InvalidToken))?;
    Ok(Authenticated { grant, scope })
}

fn header_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::try_from(s).ok()
}

/// When the proxy refreshes a grant's IdP token.
#[derive(Debug, Clone, Copy)]
pub struct RefreshMargin {
    /// `tokens.upstream_refresh_margin`: how long before expiry to refresh (capped at half the token's lifetime).
    pub margin: u64,
    /// `tokens.upstream_refresh_floor`: least time between two refreshes of one grant while its token is valid.
    pub floor: u64,
}

/// The state of a grant's IdP token that the refresh decision reads.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTokenState {
    pub obtained_at: u64,
    pub expires_at: u64,
    /// The upstream answered 401 to it.
    pub rejected: bool,
    /// When the grant last refreshed at the IdP (0: never).
    pub refreshed_at: u64,
}

/// Whether the IdP token must be refreshed before it is sent at `now`.
///
/// Due when rejected by the upstream, or within the margin of its expiry, the margin being at most half of the
/// token's lifetime. A due refresh waits while the grant refreshed less than `floor` ago and the token is still
/// valid; an expired token is always refreshed (there is nothing else to send).
pub fn refresh_due(t: UpstreamTokenState, now: u64, policy: RefreshMargin) -> bool {
    let lifetime = t.expires_at.saturating_sub(t.obtained_at);
    let margin = policy.margin.min(lifetime / 2);
    let due = t.rejected || t.expires_at <= now.saturating_add(margin);
    if !due {
        return false;
    }
    let expired = t.expires_at <= now;
    let too_soon = t.refreshed_at != 0 && now < t.refreshed_at.saturating_add(policy.floor);
    expired || !too_soon
}

/// The upstream credential of a grant, refreshed first when [`refresh_due`] says so.
///
/// Single flight: concurrent requests of one grant wait on the grant's `refresh_lock`, and only the first one
/// calls the IdP; the others find the fresh token when they get the lock. When the IdP refuses the refresh for
/// good (`invalid_grant`), the grant is revoked and the client gets 401 `invalid_token`, so that it logs in again.
/// A transient IdP failure keeps the current token while it is still valid.
pub async fn upstream_auth(cx: &Context<'_>, grant: &Grant) -> Result<UpstreamAuth, Error> {
    let policy = cx.refresh;
    if let Some(auth) = current_auth(grant, cx.clock.now(), policy) {
        return Ok(auth);
    }
    let _flight = grant.refresh_lock.lock().await;
    // Another request may have refreshed while this one waited.
    if let Some(auth) = current_auth(grant, cx.clock.now(), policy) {
        return Ok(auth);
    }
    // Across replicas (Redis): one of them refreshes; the others adopt its token.
    let fence = match cx.store.begin_upstream_refresh(grant).await? {
        UpstreamTurn::Refresh { fence } => fence,
        UpstreamTurn::Revoked => {
            return Err(Error::Unauthorized {
                problem: BearerProblem::InvalidToken,
                challenge: cx.challenge.to_owned(),
            })
        }
        UpstreamTurn::Refreshed => {
            return still_valid_auth(grant, cx.clock.now())
                .ok_or_else(|| Error::UpstreamUnavailable("identity provider: refreshed token expired".into()))
        }
    };
    let outcome = refresh_upstream(cx, grant).await;
    cx.store.end_upstream_refresh(grant, fence, outcome.is_ok()).await?;
    outcome
}

/// Refreshes the grant's IdP token (this replica's turn).
async fn refresh_upstream(cx: &Context<'_>, grant: &Grant) -> Result<UpstreamAuth, Error> {
    // Copy what the IdP call needs so that no lock is held across the await.
    let refresh_token = match &*grant.upstream() {
        UpstreamCredential::Tokens(t) => t.refresh_token().map(str::to_owned),
        UpstreamCredential::Local => None,
    };
    match refresh_with_retries(cx, refresh_token).await {
        Ok(tokens) => {
            tracing::info!(client_id = %grant.client_id, "upstream access token refreshed");
            cx.metrics.upstream_refresh("ok");
            let bearer = tokens.bearer().clone();
            grant.set_refreshed_upstream(tokens, cx.clock.now());
            Ok(UpstreamAuth::Bearer(bearer))
        }
        Err(e) => refresh_refused(cx, grant, &e).await,
    }
}

/// The credential of a `[[routes]]` entry for a grant (issue 16 §3): the IdP access token for the route's scopes,
/// obtained by a refresh_token grant with the grant's refresh token and cached on the grant by route; refreshed
/// when [`refresh_due`] says so (or when the upstream rejected it), single flight under the grant's
/// `refresh_lock` as [`upstream_auth`]. A refusal ends the grant as there. The local login sends its identity.
pub async fn route_auth(
    cx: &Context<'_>,
    grant: &Grant,
    route: &crate::config::UpstreamRouteConfig,
) -> Result<UpstreamAuth, Error> {
    if matches!(&*grant.upstream(), UpstreamCredential::Local) {
        return local_auth(grant)
            .ok_or(Error::Unauthorized { problem: BearerProblem::InvalidToken, challenge: cx.challenge.to_owned() });
    }
    let policy = cx.refresh;
    let cached = |now| {
        route_token(grant, &route.path_prefix).filter(|(obtained_at, t)| {
            let state = UpstreamTokenState {
                obtained_at: *obtained_at,
                expires_at: t.expires_at,
                rejected: t.is_rejected(),
                refreshed_at: 0,
            };
            !refresh_due(state, now, policy)
        })
    };
    if let Some((_, t)) = cached(cx.clock.now()) {
        return Ok(UpstreamAuth::Bearer(t.bearer().clone()));
    }
    let _flight = grant.refresh_lock.lock().await;
    if let Some((_, t)) = cached(cx.clock.now()) {
        return Ok(UpstreamAuth::Bearer(t.bearer().clone()));
    }
    // With Redis, another replica may have obtained it (best effort: without Redis, ask the IdP).
    match cx.store.shared_route_token(grant, &route.path_prefix).await {
        Ok(_) => {
            if let Some((_, t)) = cached(cx.clock.now()) {
                return Ok(UpstreamAuth::Bearer(t.bearer().clone()));
            }
        }
        Err(e) => tracing::warn!(client_id = %grant.client_id, error = %e, "shared route token not read"),
    }
    let refresh_token = match &*grant.upstream() {
        UpstreamCredential::Tokens(t) => t.refresh_token().map(str::to_owned),
        UpstreamCredential::Local => None,
    };
    match cx.idp.refresh_for_scopes(refresh_token, cx.clock.now(), &route.scopes.join(" ")).await {
        Ok(tokens) => {
            tracing::info!(client_id = %grant.client_id, route = %route.path_prefix, "route access token obtained");
            cx.metrics.upstream_refresh("ok");
            let bearer = tokens.bearer().clone();
            grant
                .route_tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(route.path_prefix.clone(), (cx.clock.now(), Arc::new(tokens)));
            if let Err(e) = cx.store.share_route_token(grant, &route.path_prefix).await {
                tracing::warn!(client_id = %grant.client_id, error = %e, "route token not shared");
            }
            Ok(UpstreamAuth::Bearer(bearer))
        }
        Err(e) => {
            let now = cx.clock.now();
            if let Some(ended) = end_refused_grant(cx, grant, &e, None).await? {
                return Err(ended);
            }
            match route_token(grant, &route.path_prefix).filter(|(_, t)| t.expires_at > now) {
                Some((_, t)) => Ok(UpstreamAuth::Bearer(t.bearer().clone())),
                None => Err(unavailable(&e)),
            }
        }
    }
}

/// The cached token of a route, if any.
fn route_token(grant: &Grant, prefix: &str) -> Option<(u64, Arc<crate::store::UpstreamTokens>)> {
    grant.route_tokens.lock().unwrap_or_else(|p| p.into_inner()).get(prefix).cloned()
}

/// What a refused or failed refresh becomes, by [`ErrorFamily`] (issue 16 §1): a family that needs a new sign-in
/// ends the grant (401 `invalid_token`), an interaction requirement is kept for the client's next sign-in, missing
/// admin consent is logged for the operator; throttling or an outage keeps the grant and answers 503 with
/// `Retry-After` once the current token has expired.
async fn refresh_refused(cx: &Context<'_>, grant: &Grant, e: &IdpError) -> Result<UpstreamAuth, Error> {
    if let Some(ended) = end_refused_grant(cx, grant, e, None).await? {
        return Err(ended);
    }
    still_valid_auth(grant, cx.clock.now()).ok_or_else(|| unavailable(e))
}

/// For a refusal that needs a new sign-in: ends the grant, keeps what the next sign-in must ask (Entra's claims,
/// else `challenge_claims`), logs missing admin consent; the 401 `invalid_token` to answer. `None` (after the
/// log and metric) for a transient failure, which keeps the grant.
async fn end_refused_grant(
    cx: &Context<'_>,
    grant: &Grant,
    e: &IdpError,
    challenge_claims: Option<&str>,
) -> Result<Option<Error>, Error> {
    cx.metrics.idp_error(e);
    let family = e.family();
    let kind = family.label();
    if !family.ends_grant() {
        tracing::warn!(client_id = %grant.client_id, error = %e, kind, "upstream refresh failed");
        cx.metrics.upstream_refresh("failed");
        return Ok(None);
    }
    tracing::warn!(client_id = %grant.client_id, error = %e, kind, "upstream refresh refused; grant ended");
    cx.metrics.upstream_refresh("refused");
    // Kept for this person's next sign-in through the client, found by the cookie their browser got when they
    // signed in (issue 23 item 11): never spent on someone else's sign-in through a shared client.
    let who = cx.sign_ins.person_key(&grant.identity.sub);
    match (family, e) {
        (ErrorFamily::InteractionRequired, IdpError::Refused { aadsts, claims, .. }) => {
            let requirement = InteractionRequirement {
                aadsts: *aadsts,
                claims: claims.clone().or_else(|| challenge_claims.map(str::to_owned)),
                // Not the user's name: a client registration may be shared by several people, and the next
                // sign-in through it may be someone else's (their browser would see this user's name).
                login_hint: None,
                expires_at: grant.expires_at(),
            };
            cx.store.require_interaction(&grant.client_id, &who, requirement).await?;
        }
        // Sign-in frequency and ended sessions (issue 23): the next sign-in must be a fresh one (`prompt=login`).
        (ErrorFamily::GrantEnded, IdpError::Refused { aadsts, .. })
            if crate::idp::entra_error::needs_fresh_sign_in(*aadsts) =>
        {
            let requirement = InteractionRequirement {
                aadsts: *aadsts,
                claims: None,
                login_hint: None,
                expires_at: grant.expires_at(),
            };
            cx.store.require_interaction(&grant.client_id, &who, requirement).await?;
        }
        (ErrorFamily::AdminConsent, _) => cx.idp.warn_admin_consent(e, &grant.client_id),
        _ => {}
    }
    cx.store.revoke_grant(grant.id).await?;
    audit::emit(
        Entry::new(Event::UpstreamGrantEnded).client(&grant.client_id).subject(&grant.identity.sub).detail(kind),
    );
    Ok(Some(Error::Unauthorized { problem: BearerProblem::InvalidToken, challenge: cx.challenge.to_owned() }))
}

/// The answer when the IdP could not refresh and no valid token is left: 503 with `Retry-After` when it is busy or
/// unreachable, 502 for anything else.
fn unavailable(e: &IdpError) -> Error {
    match e {
        IdpError::Busy { retry_after, .. } => {
            Error::IdpUnavailable { retry_after: retry_after.unwrap_or(DEFAULT_RETRY_AFTER).clamp(1, 3600) }
        }
        IdpError::Unavailable(_) => Error::IdpUnavailable { retry_after: DEFAULT_RETRY_AFTER },
        _ => Error::UpstreamUnavailable(format!("identity provider: {e}")),
    }
}

/// Answers an upstream's claims challenge (issue 16 §2, Continuous Access Evaluation): one refresh asking Entra
/// for `claims`, single flight with the grant's other refreshes. When another request already replaced the
/// `rejected` token while this one waited, that fresh token is used without a second refresh. A refusal ends the
/// grant as [`upstream_auth`]'s does, an interaction requirement carrying the challenge's claims to the next
/// sign-in; a transient failure is 503, since the upstream refuses the current token. At most one such refresh
/// per grant per `tokens.upstream_refresh_floor`: a challenge again within it is 401 `invalid_token`.
pub async fn refresh_for_claims(
    cx: &Context<'_>,
    grant: &Grant,
    rejected: &HeaderValue,
    claims: &str,
) -> Result<UpstreamAuth, Error> {
    let _flight = grant.refresh_lock.lock().await;
    let refresh_token = match &*grant.upstream() {
        UpstreamCredential::Tokens(t) if t.bearer() != rejected => return Ok(UpstreamAuth::Bearer(t.bearer().clone())),
        UpstreamCredential::Tokens(t) => t.refresh_token().map(str::to_owned),
        UpstreamCredential::Local => None,
    };
    // An upstream that keeps challenging (claims Entra cannot put in a token) must not turn every request into a
    // refresh at Entra, which would answer with its loop detection (AADSTS50196).
    let now = cx.clock.now();
    let last = grant.claims_refreshed_at.load(Ordering::Relaxed);
    if last != 0 && now < last.saturating_add(cx.refresh.floor) {
        tracing::info!(client_id = %grant.client_id, "upstream claims challenge again within the refresh floor");
        return Err(Error::Unauthorized { problem: BearerProblem::InvalidToken, challenge: cx.challenge.to_owned() });
    }
    grant.claims_refreshed_at.store(now.max(1), Ordering::Relaxed);
    match cx.idp.refresh_with_claims(refresh_token, cx.clock.now(), Some(claims)).await {
        Ok(tokens) => {
            tracing::info!(client_id = %grant.client_id, "upstream claims challenge answered by a refresh");
            cx.metrics.upstream_refresh("ok");
            let bearer = tokens.bearer().clone();
            grant.set_refreshed_upstream(tokens, cx.clock.now());
            Ok(UpstreamAuth::Bearer(bearer))
        }
        Err(e) => Err(end_refused_grant(cx, grant, &e, Some(claims)).await?.unwrap_or_else(|| unavailable(&e))),
    }
}

/// The claims request (JSON object) of an upstream's `WWW-Authenticate: Bearer error="insufficient_claims",
/// claims="<base64>"` (Microsoft, "Claims challenges"); `None` for any other challenge, or for claims that are
/// not base64 of a JSON object of at most `max_bytes`.
pub fn claims_challenge(challenge: Option<&str>, max_bytes: usize) -> Option<String> {
    use base64::Engine as _;
    let challenge = challenge?;
    if crate::http::auth_param(challenge, "error").as_deref() != Some("insufficient_claims") {
        return None;
    }
    let encoded = crate::http::auth_param(challenge, "claims")?;
    if encoded.len() > max_bytes.saturating_mul(4) / 3 + 4 {
        return None;
    }
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
    let lenient = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let engines = [
        GeneralPurpose::new(&base64::alphabet::STANDARD, lenient),
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient),
    ];
    let bytes = engines.iter().find_map(|e| e.decode(&encoded).ok())?;
    let text = String::from_utf8(bytes).ok().filter(|t| t.len() <= max_bytes)?;
    matches!(serde_json::from_str::<serde_json::Value>(&text), Ok(serde_json::Value::Object(_))).then_some(text)
}

/// `Retry-After` when the IdP is down without saying for how long.
const DEFAULT_RETRY_AFTER: u64 = 30;

/// Calls the IdP, retrying transient failures (network, 5xx, 429) twice with a growing pause; a refusal is final.
async fn refresh_with_retries(
    cx: &Context<'_>,
    refresh_token: Option<String>,
) -> Result<crate::store::UpstreamTokens, crate::idp::IdpError> {
    let mut pause = std::time::Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match cx.idp.refresh(refresh_token.clone(), cx.clock.now()).await {
            Err(e) if e.retry_now() && attempt < 3 => {
                tracing::info!(error = %e, attempt, "upstream refresh failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 4;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The grant's credential, unless a refresh is due.
fn current_auth(grant: &Grant, now: u64, policy: RefreshMargin) -> Option<UpstreamAuth> {
    match &*grant.upstream() {
        UpstreamCredential::Tokens(t) => {
            let state = UpstreamTokenState {
                obtained_at: grant.upstream_obtained_at.load(Ordering::Relaxed),
                expires_at: t.expires_at,
                rejected: t.is_rejected(),
                refreshed_at: grant.upstream_refreshed_at.load(Ordering::Relaxed),
            };
            (!refresh_due(state, now, policy)).then(|| UpstreamAuth::Bearer(t.bearer().clone()))
        }
        UpstreamCredential::Local => local_auth(grant),
    }
}

/// The grant's credential if it has not expired at `now`, rejected or not (when the IdP cannot refresh it).
fn still_valid_auth(grant: &Grant, now: u64) -> Option<UpstreamAuth> {
    match &*grant.upstream() {
        UpstreamCredential::Tokens(t) if t.expires_at > now => Some(UpstreamAuth::Bearer(t.bearer().clone())),
        UpstreamCredential::Tokens(_) => None,
        UpstreamCredential::Local => local_auth(grant),
    }
}

fn local_auth(grant: &Grant) -> Option<UpstreamAuth> {
    Some(UpstreamAuth::Identity {
        user: header_value(&grant.identity.sub)?,
        email: grant.identity.email.as_deref().and_then(header_value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RefreshMargin = RefreshMargin { margin: 300, floor: 30 };

    fn token(obtained_at: u64, lifetime: u64) -> UpstreamTokenState {
        UpstreamTokenState { obtained_at, expires_at: obtained_at + lifetime, rejected: false, refreshed_at: 0 }
    }

    #[test]
    fn a_claims_challenge_is_read_only_when_it_is_one_and_fits() {
        // Microsoft's example challenge: {"access_token":{"acrs":{"essential":true,"value":"cp1"}}}.
        let example = r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiY3AxIn19fQ==""#;
        assert_eq!(
            claims_challenge(Some(example), 4096).as_deref(),
            Some(r#"{"access_token":{"acrs":{"essential":true,"value":"cp1"}}}"#)
        );
        assert_eq!(claims_challenge(Some(example), 32), None, "over the cap");
        let unpadded = example.replace("fQ==", "fQ");
        assert!(claims_challenge(Some(&unpadded), 4096).is_some(), "padding is optional");
        assert_eq!(claims_challenge(Some(r#"Bearer error="invalid_token", claims="e30=""#), 4096), None);
        assert_eq!(claims_challenge(Some(r#"Bearer error="insufficient_claims", claims="!!""#), 4096), None);
        assert_eq!(claims_challenge(Some(r#"Bearer error="insufficient_claims", claims="WzFd""#), 4096), None);
        assert_eq!(claims_challenge(None, 4096), None);
    }

    #[test]
    fn margin_is_capped_at_half_the_token_lifetime() {
        // A 30 s token with a 5-minute margin: not due until 15 s before expiry.
        let t = token(1000, 30);
        assert!(!refresh_due(t, 1000, POLICY));
        assert!(!refresh_due(t, 1014, POLICY));
        assert!(refresh_due(t, 1015, POLICY));
        // A 1-hour token keeps the configured margin.
        let t = token(1000, 3600);
        assert!(!refresh_due(t, 1000 + 3600 - 301, POLICY));
        assert!(refresh_due(t, 1000 + 3600 - 300, POLICY));
    }

    #[test]
    fn floor_holds_back_early_refreshes_but_not_an_expired_token() {
        let t = UpstreamTokenState { refreshed_at: 1000, ..token(1000, 20) };
        assert!(!refresh_due(t, 1015, POLICY), "due by the margin, but refreshed 15 s ago");
        assert!(refresh_due(t, 1020, POLICY), "expired: refreshed whatever the floor");
        let rejected = UpstreamTokenState { rejected: true, ..token(1000, 3600) };
        assert!(refresh_due(rejected, 1001, POLICY), "rejected and never refreshed");
        let rejected_again = UpstreamTokenState { refreshed_at: 1000, ..rejected };
        assert!(!refresh_due(rejected_again, 1010, POLICY), "at most one refresh per floor");
        assert!(refresh_due(rejected_again, 1030, POLICY));
    }

    #[test]
    fn a_token_without_lifetime_or_from_the_future_is_handled() {
        assert!(refresh_due(token(1000, 0), 1000, POLICY));
        assert!(!refresh_due(token(2000, 100), 1000, POLICY), "clock skew: not due");
    }
}
