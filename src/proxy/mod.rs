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
pub mod exchange;
pub mod forward;
pub mod headers;
pub mod idle_sweep;
pub mod pool;
pub mod raw_pool;
pub mod tool_gate;
pub mod upstream_body;
pub mod upstream_routes;
pub mod userinfo;

use std::net::SocketAddr;

use http::{header, HeaderValue, Request, Response};

pub use exchange::{Exchange, Next};
pub use forward::Forwarder;

use crate::clock::Clock;
use crate::config::PathScopes;
use crate::error::Error;
use crate::http::target;
use crate::http::{Body, RequestBody};
use crate::idp::Idp;
use crate::metrics::Metrics;
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

/// Forwards a request behind its bearer token, driving an [`Exchange`] over hyper: admit, swap the credential,
/// forward, and answer an upstream refusal (a replay or the proxy's challenge). With `[[policy.tools]]` rules an
/// MCP POST is judged by the tool gate between the admission and the credential.
pub async fn handle(
    cx: &Context<'_>,
    mut req: Request<RequestBody>,
    peer: SocketAddr,
) -> Result<Response<Body>, Error> {
    let replayable = replayable(&req);
    let mut exchange = Exchange::begin(cx, req.headers(), req.uri().path(), req.uri().query(), replayable).await?;
    // HTTP/2 carries the host in `:authority`, which the origin-form target below drops.
    if !req.headers().contains_key(header::HOST) {
        if let Some(host) = req.uri().authority().and_then(|a| HeaderValue::try_from(a.as_str()).ok()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    *req.uri_mut() = exchange.target().clone();
    // A request without a body can be sent again after an upstream refusal; keep what that needs.
    let replay = replayable.then(|| {
        let mut copy = Request::new(UpstreamBody::Empty);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        copy
    });
    let cx = exchange.context();
    let (req, listing) = if tool_gate::applies(cx, exchange.path().as_str()) {
        tool_gate::judge(cx, exchange.grant(), req).await?
    } else {
        (req.map(UpstreamBody::Streamed), None)
    };
    let forwarder = cx.forwarder;
    let (max_listing, auth) = (cx.policy_max_body, exchange.credential().await?);
    let mut resp = forwarder.forward(req, auth, peer).await?;
    let mut replay = replay;
    loop {
        match exchange.on_response(resp.status(), resp.headers().get(header::WWW_AUTHENTICATE)).await? {
            Next::Replay(fresh) => match replay.take() {
                Some(again) => resp = forwarder.forward(again, fresh, peer).await?,
                // (A replay is kept exactly when the exchange was told the request is replayable; were it not, the
                // exchange, asked again, delivers the answer with its challenge handled.)
                None => continue,
            },
            Next::Deliver { strip_challenge } => {
                if strip_challenge {
                    resp.headers_mut().remove(header::WWW_AUTHENTICATE);
                }
                break;
            }
        }
    }
    match listing {
        Some(caller) => tool_gate::narrow_listing(resp, caller, max_listing).await,
        None => Ok(resp),
    }
}

/// Whether a request to `raw_path` needs hyper: the one place that says what the fast path
/// ([`crate::server::fast_path`]) does not serve. The tool gate reads and judges a whole MCP body and narrows
/// listings as hyper bodies, so a path under it is hyper's; so is an upstream the fast path has no raw connection
/// pool for (`https://`), a `[[routes]]` API's included. Everything else (`[[routes]]` entries, refusals of the
/// path) the fast path serves through the same [`Exchange`].
pub fn needs_hyper(cx: &Context<'_>, raw_path: &str) -> bool {
    match target::canonical_path(raw_path) {
        Ok(path) => {
            let forwarder =
                upstream_routes::route_for(cx.upstream_routes, path.as_str()).map_or(cx.forwarder, |r| &r.forwarder);
            forwarder.raw_pool().is_none() || tool_gate::applies(cx, path.as_str())
        }
        // Refused by the exchange as on the hyper path, unless the tool gate could have read it first.
        Err(_) => cx.forwarder.raw_pool().is_none() || !cx.tool_rules.is_empty(),
    }
}

/// Whether a request has no body, so that it can be sent again (RFC 9110 §9.2.2 methods or an empty body).
fn replayable(req: &Request<RequestBody>) -> bool {
    use hyper::body::Body as _;
    req.body().is_end_stream() || req.body().size_hint().exact() == Some(0)
}
