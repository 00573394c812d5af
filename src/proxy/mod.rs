//! Forwarding to the protected upstream (SPEC §6).
//!
//! - The client's bearer is looked up ([`bearer`]) and replaced by the grant's upstream credential: the IdP access
//!   token (refreshed first when close to expiry, once per grant under concurrency), or for the local login the
//!   user's identity in `X-Forwarded-User` / `X-Forwarded-Email`. The client's token never reaches the upstream
//!   (MCP forbids token passthrough), and identity headers sent by the client are always removed.
//! - Hop-by-hop headers (RFC 9110 §7.6.1) are dropped both ways; `X-Forwarded-For/-Proto/-Host` are set.
//! - Bodies stream both ways without buffering (SSE events pass as they come); upstream connections are pooled.
//! - A refused connection is 502, no response headers within `upstream.response_timeout` is 504, both with JSON.
//! - An upstream claims challenge (`insufficient_claims`, Continuous Access Evaluation) is answered by one refresh
//!   with its claims and one retry of a request without a body (issue 16 §2).
//! - An upstream 401/403 challenge is replaced by the proxy's own, so that the client is never sent to the IdP
//!   directly; an upstream `insufficient_scope` becomes the proxy's step-up (RFC 6750 §3.1) for scopes it offers.
//! - One canonical path ([`target::canonical_path`]) decides both the `upstream.required_scopes` policy and what
//!   the upstream gets.
//! - With `[[policy.tools]]` rules, an MCP POST is read and judged by the tool policy ([`tool_gate`]) before
//!   the credential is swapped; a refused call never reaches the upstream, and listings are narrowed.
//!
//! [`handle`] is the policy, in that order; it needs only a [`Context`], never the whole application.
//! [`userinfo`] answers from the same bearer lookup.

pub mod bearer;
pub mod forward;
pub mod headers;
pub mod pool;
pub mod raw_pool;
pub mod tool_gate;
pub mod upstream_body;
pub mod upstream_routes;
pub mod userinfo;

use std::net::SocketAddr;

use http::{header, HeaderValue, Request, Response, StatusCode};

pub use forward::Forwarder;

use crate::clock::Clock;
use crate::config::PathScopes;
use crate::error::{BearerProblem, Error};
use crate::http::target;
use crate::http::{self as h, Body, RequestBody};
use crate::idp::Idp;
use crate::metrics::Metrics;
use crate::oauth::scope;
use crate::store::Store;
use bearer::RefreshMargin;
use forward::UpstreamBody;

/// What the proxy policy needs of the application.
pub struct Context<'a> {
    pub store: &'a Store,
    pub clock: &'a Clock,
    pub idp: &'a Idp,
    pub metrics: &'a Metrics,
    pub forwarder: &'a Forwarder,
    /// The parameters of every `WWW-Authenticate: Bearer` challenge.
    pub challenge: &'a str,
    /// The RFC 9728 metadata URL of step-up challenges.
    pub resource_metadata: &'a str,
    /// `upstream.required_scopes`.
    pub required_scopes: &'a [PathScopes],
    /// `idp.scopes`: the scopes a client can step up to.
    pub offered_scopes: &'a [String],
    /// The path-inserted RFC 9728 document's path (one of the proxy's own endpoints).
    pub protected_resource_path: &'a str,
    pub refresh: RefreshMargin,
    /// `[[policy.tools]]` (empty: MCP bodies are streamed without being read).
    pub tool_rules: &'a [crate::tool_policy::ToolRule],
    /// `policy.max_body_bytes`: the largest MCP body the tool policy reads, and the largest listing it narrows.
    pub policy_max_body: usize,
    /// `upstream.resource_path`: the MCP endpoint the tool policy judges.
    pub resource_path: &'a str,
    /// `[[routes]]` (issue 16 §3); empty: every path goes to `[upstream]`.
    pub upstream_routes: &'a [upstream_routes::UpstreamRoute],
    /// The sign-in keys: a refused grant's interaction requirement is kept under its person's key.
    pub sign_ins: &'a crate::oauth::flow::SignIns,
}

/// Forwards a request behind its bearer token: authenticate, canonicalise the path, check the path's required
/// scopes, swap the credential, forward, and handle an upstream 401/403.
pub async fn handle(
    cx: &Context<'_>,
    mut req: Request<RequestBody>,
    peer: SocketAddr,
) -> Result<Response<Body>, Error> {
    // A `[[routes]]` entry's requests get its challenges, its upstream and its credential (issue 16 §3). The
    // canonical path chooses the entry, as it chooses the credential in `admit`: `//graph/x` and `/%67raph/x` are
    // the route's (or, when the path is refused, no route is chosen and `admit` refuses it).
    let routed;
    let canonical_route = target::canonical_path(req.uri().path())
        .ok()
        .and_then(|p| upstream_routes::route_for(cx.upstream_routes, p.as_str()));
    let cx = match canonical_route {
        Some(r) => {
            routed = Context {
                challenge: &r.challenge,
                resource_metadata: &r.resource_metadata,
                forwarder: &r.forwarder,
                required_scopes: &[],
                ..*cx
            };
            &routed
        }
        None => cx,
    };
    let Admitted { grant, path, route, target } = admit(cx, req.headers(), req.uri().path(), req.uri().query()).await?;
    // HTTP/2 carries the host in `:authority`, which the origin-form target below drops.
    if !req.headers().contains_key(header::HOST) {
        if let Some(host) = req.uri().authority().and_then(|a| HeaderValue::try_from(a.as_str()).ok()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    *req.uri_mut() = target;
    // A request without a body can be sent again after an upstream refresh; keep what that needs.
    let replay = replayable(&req).then(|| {
        let mut copy = Request::new(UpstreamBody::Empty);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        copy
    });
    let (req, listing) = if tool_gate::applies(cx, path.as_str()) {
        tool_gate::judge(cx, &grant, req).await?
    } else {
        (req.map(UpstreamBody::Streamed), None)
    };
    let auth = credential(cx, &grant, route).await?;
    let sent = auth.clone();
    let mut resp = cx.forwarder.forward(req, auth, peer).await?;
    let www_authenticate = resp.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
    if let Some(fresh) =
        after_refusal(cx, &grant, route, &sent, resp.status(), www_authenticate, replay.is_some()).await?
    {
        if let Some(again) = replay {
            resp = cx.forwarder.forward(again, fresh, peer).await?;
        }
    }
    if upstream_challenge(cx, &grant, resp.status(), resp.headers().get(header::WWW_AUTHENTICATE))? {
        resp.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    match listing {
        Some(caller) => tool_gate::narrow_listing(resp, caller, cx.policy_max_body).await,
        None => Ok(resp),
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

/// The policy up to the credential, for both the hyper path and the fast path ([`crate::server::fast_path`]):
/// the bearer (never in the query), the canonical path, the resource binding (RFC 8707), another spelling of an
/// own endpoint refused, and the path's required scopes (step-up).
pub async fn admit<'r>(
    cx: &Context<'r>,
    headers: &http::HeaderMap,
    raw_path: &str,
    query: Option<&str>,
) -> Result<Admitted<'r>, Error> {
    let grant = bearer::authenticate(cx, headers, query).await?;
    // One path decides both the policy and what the upstream gets.
    let path = target::canonical_path(raw_path)?;
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
pub async fn credential(
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
pub async fn after_refusal(
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
pub fn upstream_challenge(
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

/// Whether a request has no body, so that it can be sent again (RFC 9110 §9.2.2 methods or an empty body).
fn replayable(req: &Request<RequestBody>) -> bool {
    use hyper::body::Body as _;
    req.body().is_end_stream() || req.body().size_hint().exact() == Some(0)
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
