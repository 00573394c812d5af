//! One proxied exchange, as a state machine without client or upstream I/O: the proxy's decisions in their order,
//! driven by [`super::handle`] (hyper) and by the fast path ([`crate::server::fast_path`]) alike, so that a rule
//! added here is added to both.
//!
//! ```text
//! begin ── the upstream route of the canonical path (its challenge, upstream, credential), then admit:
//!   │      bearer (never in the query), canonical path, resource binding (RFC 8707), no own endpoint,
//!   │      the path's required scopes (step-up)
//! credential ── a route's own token, or the grant's IdP token / identity (refreshed first when due)
//!   │   ⇣ the driver sends the request
//! on_response ── an upstream 401 to that credential: the token marked rejected or, for a claims challenge
//!   │            (CAE), refreshed with its claims ──▶ Next::Replay(fresh) once, for a request without a body
//!   │            ⇣ the driver sends it again and calls on_response with the new answer
//!   └──────────▶ the upstream's own 401/403 challenge replaced by the proxy's (401, step-up), or
//!                Next::Deliver { strip_challenge }
//! ```
//!
//! Errors are the proxy's answers ([`Error`]): the driver writes `Error::into_response` and sends nothing more.

use http::{HeaderValue, StatusCode};

use super::{bearer, upstream_routes, Context};
use crate::error::{BearerProblem, Error};
use crate::http::{self as h, target};
use crate::oauth::scope;

/// What the driver does with an upstream answer (no `Debug`: it carries a credential).
pub enum Next {
    /// Send the request once more with this credential (a request without a body, after an upstream refusal).
    Replay(bearer::UpstreamAuth),
    /// Pass the answer on; `strip_challenge`: without its `WWW-Authenticate` (an upstream 401/403 that would send
    /// the client to the IdP directly).
    Deliver { strip_challenge: bool },
}

/// One request through the proxy, from its admission to the answer it is given.
pub struct Exchange<'a> {
    cx: Context<'a>,
    admitted: Admitted<'a>,
    /// The credential the upstream got last.
    sent: Option<bearer::UpstreamAuth>,
    /// The request has no body: it can be sent again.
    replayable: bool,
    replayed: bool,
}

impl<'a> Exchange<'a> {
    /// Admits a request: the `[[routes]]` entry of its canonical path chooses the context (challenges, upstream,
    /// credential; issue 16 §3), then the policy up to the credential. `//graph/x` and `/%67raph/x` are the route's;
    /// a path that cannot be made canonical chooses no route and is refused.
    pub async fn begin(
        cx: &Context<'a>,
        headers: &http::HeaderMap,
        raw_path: &str,
        query: Option<&str>,
        replayable: bool,
    ) -> Result<Self, Error> {
        // The path is made canonical once: it picks the route here and is judged by `admit`.
        let path = target::canonical_path(raw_path);
        let cx = route_context(cx, path.as_ref().ok());
        let admitted = admit(&cx, headers, path, query).await?;
        Ok(Self { cx, admitted, sent: None, replayable, replayed: false })
    }

    /// The context the exchange runs in: the route's, or `[upstream]`'s.
    pub fn context(&self) -> &Context<'a> {
        &self.cx
    }

    /// The bearer's grant.
    pub fn grant(&self) -> &bearer::Authenticated {
        &self.admitted.grant
    }

    /// The canonical path: what the policy judged.
    pub fn path(&self) -> &target::CanonicalPath {
        &self.admitted.path
    }

    /// The origin-form target the upstream gets (a route's prefix stripped, the query kept).
    pub fn target(&self) -> &http::Uri {
        &self.admitted.target
    }

    /// The credential the upstream gets: a route's own token, or the grant's IdP token / identity.
    pub async fn credential(&mut self) -> Result<bearer::UpstreamAuth, Error> {
        let auth = credential(&self.cx, &self.admitted.grant, self.admitted.route).await?;
        self.sent = Some(auth.clone());
        Ok(auth)
    }

    /// The upstream answered `status` (with its `WWW-Authenticate`): send again, or pass the answer on.
    pub async fn on_response(
        &mut self,
        status: StatusCode,
        www_authenticate: Option<&HeaderValue>,
    ) -> Result<Next, Error> {
        if !self.replayed {
            if let Some(sent) = &self.sent {
                let challenge = www_authenticate.and_then(|v| v.to_str().ok());
                let (cx, admitted) = (&self.cx, &self.admitted);
                let again =
                    after_refusal(cx, &admitted.grant, admitted.route, sent, status, challenge, self.replayable)
                        .await?;
                if let Some(fresh) = again {
                    self.replayed = true;
                    self.sent = Some(fresh.clone());
                    return Ok(Next::Replay(fresh));
                }
            }
        }
        let strip_challenge = upstream_challenge(&self.cx, &self.admitted.grant, status, www_authenticate)?;
        Ok(Next::Deliver { strip_challenge })
    }
}

/// The context of a request path: a `[[routes]]` entry's (chosen by the canonical path) or `cx` itself.
fn route_context<'a>(cx: &Context<'a>, path: Option<&target::CanonicalPath>) -> Context<'a> {
    match path.and_then(|p| upstream_routes::route_for(cx.upstream_routes, p.as_str())) {
        Some(r) => Context {
            challenge: &r.challenge,
            resource_metadata: &r.resource_metadata,
            forwarder: &r.forwarder,
            required_scopes: &[],
            ..*cx
        },
        None => Context { ..*cx },
    }
}

/// What the policy admitted, before the credential is swapped.
pub struct Admitted<'r> {
    pub grant: bearer::Authenticated,
    /// The canonical path: what the policy judged.
    pub path: target::CanonicalPath,
    /// The `[[routes]]` entry of the canonical path.
    pub route: Option<&'r upstream_routes::UpstreamRoute>,
    /// The origin-form target the upstream gets (a route's prefix stripped, the query kept).
    pub target: http::Uri,
}

/// The policy up to the credential: the bearer (never in the query), the canonical path, the resource binding (RFC 8707), another spelling of an
/// own endpoint refused, and the path's required scopes (step-up).
async fn admit<'r>(
    cx: &Context<'r>,
    headers: &http::HeaderMap,
    path: Result<target::CanonicalPath, target::PathRejection>,
    query: Option<&str>,
) -> Result<Admitted<'r>, Error> {
    let grant = bearer::authenticate(cx, headers, query).await?;
    // One path decides both the policy and what the upstream gets (refused only once the bearer is known).
    let path = path?;
    // RFC 8707: a token serves the resource its grant asked for, and no other (the canonical path decides).
    let route = upstream_routes::route_for(cx.upstream_routes, path.as_str());
    if !upstream_routes::bound_to(grant.resource.as_deref(), route.map(|r| r.resource.as_str()), cx.upstream_routes) {
        tracing::info!(client_id = %grant.client_id, "token used for another resource than it was issued for");
        let challenge = route.map_or(cx.challenge, |r| r.challenge.as_str()).to_owned();
        return Err(Error::Unauthorized { problem: BearerProblem::InvalidToken, challenge });
    }
    // Another spelling of one of the proxy's own endpoints (`/%74oken`, `//.well-known/x`) is never forwarded.
    if crate::endpoint::Endpoint::parse(path.as_str(), cx.protected_resource_path) != crate::endpoint::Endpoint::Proxy {
        return Err(target::PathRejection::OwnEndpoint.into());
    }
    // A route's API gets the path below its prefix (`/graph/v1.0/me` → `<url>/v1.0/me`).
    let stripped = route.map(|r| target::strip_route_prefix(&path, &r.config.path_prefix));
    let target = target::with_query(stripped.as_ref().unwrap_or(&path), query)?;
    let missing = scope::missing_for_path(cx.required_scopes, path.as_str(), &grant.scope);
    if let Some((scope, missing)) = scope::step_up(&grant.scope, missing) {
        tracing::info!(client_id = %grant.client_id, %missing, "token lacks a required scope");
        return Err(Error::InsufficientScope { scope, missing, resource_metadata: cx.resource_metadata.to_owned() });
    }
    Ok(Admitted { grant, path, route, target })
}

/// The credential the upstream gets for `grant`: a route's own token, or the grant's IdP token / identity.
async fn credential(
    cx: &Context<'_>,
    grant: &bearer::Authenticated,
    route: Option<&upstream_routes::UpstreamRoute>,
) -> Result<bearer::UpstreamAuth, Error> {
    match route {
        Some(r) => bearer::route_auth(cx, grant, &r.config).await,
        None => bearer::upstream_auth(cx, grant).await,
    }
}

/// An upstream 401 to the credential `sent`: the token is marked rejected (a route's, or the grant's) or
/// refreshed for a claims challenge (CAE). `Some(fresh)`: a `replayable` request (no body) is sent once more with
/// `fresh`.
async fn after_refusal(
    cx: &Context<'_>,
    grant: &bearer::Authenticated,
    route: Option<&upstream_routes::UpstreamRoute>,
    sent: &bearer::UpstreamAuth,
    status: StatusCode,
    www_authenticate: Option<&str>,
    replayable: bool,
) -> Result<Option<bearer::UpstreamAuth>, Error> {
    let bearer::UpstreamAuth::Bearer(rejected) = sent else { return Ok(None) };
    if status != StatusCode::UNAUTHORIZED {
        return Ok(None);
    }
    if let Some(r) = route {
        // A route's token refused: obtained again for the grant's next request (never the grant's own token, which
        // is for another API). Claims challenges of routes are not answered yet.
        grant.mark_route_rejected(&r.config.path_prefix, rejected);
        return Ok(None);
    }
    if let Some(claims) = bearer::claims_challenge(www_authenticate, cx.idp.max_claims_bytes()) {
        // A claims challenge (CAE): one refresh asking for the claims, and one retry of a request without a body.
        // A request with a body gets the proxy's 401; its retry carries the fresh token.
        let fresh = bearer::refresh_for_claims(cx, grant, rejected, &claims).await?;
        if replayable {
            tracing::info!(client_id = %grant.client_id, "upstream claims challenge; refreshed, retrying once");
            return Ok(Some(fresh));
        }
        return Ok(None);
    }
    // Whatever the method: the grant's next request refreshes the IdP token first. A request without a body is
    // retried once now with a fresh token.
    grant.mark_upstream_rejected(rejected);
    if replayable {
        let fresh = bearer::upstream_auth(cx, grant).await?;
        if !matches!(&fresh, bearer::UpstreamAuth::Bearer(b) if b == rejected) {
            tracing::info!(client_id = %grant.client_id, "upstream refused the token; refreshed, retrying once");
            return Ok(Some(fresh));
        }
    }
    Ok(None)
}

/// The upstream's own 401/403 challenge would send the client to the IdP directly: a 401 becomes the proxy's,
/// an `insufficient_scope` the proxy's step-up; `Ok(true)`: any other 401/403 goes on without its
/// `WWW-Authenticate`.
fn upstream_challenge(
    cx: &Context<'_>,
    grant: &bearer::Authenticated,
    status: StatusCode,
    www_authenticate: Option<&HeaderValue>,
) -> Result<bool, Error> {
    let Some(challenge) = www_authenticate else { return Ok(false) };
    if !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Ok(false);
    }
    tracing::info!(client_id = %grant.client_id, status = status.as_u16(), "upstream refused the request");
    if status == StatusCode::UNAUTHORIZED {
        return Err(Error::Unauthorized { problem: BearerProblem::InvalidToken, challenge: cx.challenge.to_owned() });
    }
    if let Some((scope, missing)) = upstream_step_up(challenge.to_str().ok(), &grant.scope, cx.offered_scopes) {
        return Err(Error::InsufficientScope { scope, missing, resource_metadata: cx.resource_metadata.to_owned() });
    }
    Ok(true)
}

/// An upstream asking for more scope (`error="insufficient_scope"`): the step-up the client makes at the proxy,
/// for the asked scopes the proxy offers; `None` when there is nothing to step up to.
pub fn upstream_step_up(challenge: Option<&str>, granted: &str, offered: &[String]) -> Option<(String, String)> {
    if challenge.and_then(|c| h::auth_param(c, "error")).as_deref() != Some("insufficient_scope") {
        return None;
    }
    let asked = challenge.and_then(|c| h::auth_param(c, "scope")).unwrap_or_default();
    let step = scope::step_up(granted, asked.split(' ').filter(|s| offered.iter().any(|o| o == s)));
    step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_insufficient_scope_steps_up_to_offered_scopes_only() {
        let offered = ["openid".to_owned(), "mcp.write".to_owned()];
        let challenge = Some(r#"Bearer error="insufficient_scope", scope="mcp.write admin""#);
        let (scope, missing) = upstream_step_up(challenge, "openid", &offered).unwrap_or_default();
        assert_eq!(missing, "mcp.write");
        assert!(scope.split(' ').any(|s| s == "openid") && scope.split(' ').any(|s| s == "mcp.write"), "{scope}");
        assert_eq!(
            upstream_step_up(Some(r#"Bearer scope="admin", error="insufficient_scope""#), "openid", &offered),
            None
        );
        assert_eq!(upstream_step_up(Some(r#"Bearer error="invalid_token""#), "openid", &offered), None);
        assert_eq!(upstream_step_up(None, "openid", &offered), None);
    }
}
