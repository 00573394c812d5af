//! The tool policy at the proxy: the glue between an MCP POST and the rules of [`crate::tool_policy`].
//!
//! Invariants:
//! - Runs only when `[[policy.tools]]` has rules, only for POSTs whose canonical path is the MCP endpoint
//!   (`upstream.resource_path`, and below it, compared without ASCII case like `required_scopes`): the hot path
//!   without rules is untouched.
//! - The body is read whole, at most `policy.max_body_bytes` (413 beyond), judged, and the *same bytes* are
//!   forwarded with an exact `Content-Length`: the upstream acts on exactly what was judged. A compressed body
//!   (`Content-Encoding` other than identity) cannot be judged and is refused (400).
//! - `Mcp-Method` / `Mcp-Name` that disagree with the body are refused (400, `-32020`) before any decision.
//! - A refused call never reaches the upstream: 403 `insufficient_scope` naming every scope the message needs, or
//!   403 with a JSON-RPC error for the call's id when a group or role is missing.
//! - A listing request (`tools/list`, …) has its answer narrowed, JSON or SSE; the upstream is asked not to
//!   compress it, and a compressed answer is refused (502) rather than passed unfiltered.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Frame;

use super::bearer::Authenticated;
use super::forward::UpstreamBody;
use super::Context;
use crate::error::Error;
use crate::http::{full, read_body, Body, RequestBody};
use crate::oauth::scope;
use crate::tool_policy::{self, listing, Principal, ToolRule, Verdict};

static MCP_METHOD: header::HeaderName = header::HeaderName::from_static("mcp-method");
static MCP_NAME: header::HeaderName = header::HeaderName::from_static("mcp-name");

/// Whether the policy handles this request: rules exist and its canonical path is the MCP endpoint. It then
/// reads a POST, narrows what a GET stream carries (a resumed stream, `Last-Event-ID`, replays listings), and
/// refuses every method that Streamable HTTP does not use (PUT, PATCH, a lowercase `post` …), which would
/// otherwise reach the upstream unjudged.
pub fn applies(cx: &Context<'_>, path: &str) -> bool {
    !cx.tool_rules.is_empty() && scope::prefix_matches(cx.resource_path, path)
}

/// The methods of Streamable HTTP on the MCP endpoint.
const MCP_METHODS: &str = "GET, POST, DELETE, OPTIONS";

/// Who the call is from, owned, for a listing answer that streams after the request is gone.
#[derive(Clone)]
pub struct Caller {
    rules: Arc<[ToolRule]>,
    scope: Arc<str>,
    groups: Vec<String>,
    roles: Vec<String>,
    overage: bool,
    /// A GET stream's answer: only an event stream is narrowed; any other answer passes as it is.
    streams_only: bool,
}

impl Caller {
    fn principal(&self) -> Principal<'_> {
        Principal { scope: &self.scope, groups: &self.groups, roles: &self.roles, groups_overage: self.overage }
    }

    fn may_call(&self, name: &str) -> bool {
        tool_policy::may_call(&self.rules, name, &self.principal())
    }
}

/// Who the grant's user is, for narrowing answers.
fn caller(cx: &Context<'_>, grant: &Authenticated) -> Caller {
    Caller {
        rules: cx.tool_rules.into(),
        scope: grant.scope.clone(),
        groups: grant.identity.groups.clone(),
        roles: grant.identity.roles.clone(),
        overage: grant.identity.groups_overage,
        streams_only: false,
    }
}

/// Reads and judges an MCP POST. Allowed: the request to forward (the same bytes) and, for a listing, who to
/// narrow the answer for.
pub async fn judge(
    cx: &Context<'_>,
    grant: &Authenticated,
    req: Request<RequestBody>,
) -> Result<(Request<UpstreamBody>, Option<Caller>), Error> {
    let bad = |code: i64, message: String| Error::McpBadMessage { code, message };
    match *req.method() {
        http::Method::POST => {}
        // No body to judge; what the stream carries (a resumed stream replays listings) is narrowed.
        http::Method::GET => {
            let mut req = req.map(UpstreamBody::Streamed);
            req.headers_mut().insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
            return Ok((req, Some(Caller { streams_only: true, ..caller(cx, grant) })));
        }
        http::Method::DELETE | http::Method::OPTIONS | http::Method::HEAD => {
            return Ok((req.map(UpstreamBody::Streamed), None))
        }
        _ => return Err(Error::MethodNotAllowed { allow: MCP_METHODS }),
    }
    if let Some(encoding) = req.headers().get(header::CONTENT_ENCODING) {
        if !encoding.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Err(bad(-32600, "a compressed MCP message cannot be checked by the tool policy".into()));
        }
    }
    let (mut parts, body) = req.into_parts();
    let bytes = read_body(body, cx.policy_max_body).await?;
    let message = tool_policy::parse_message(&bytes).map_err(|e| match e {
        tool_policy::BodyProblem::NotJson(_) => bad(-32700, e.to_string()),
        _ => bad(-32600, e.to_string()),
    })?;
    let methods: Vec<&[u8]> = parts.headers.get_all(&MCP_METHOD).iter().map(HeaderValue::as_bytes).collect();
    let names: Vec<&[u8]> = parts.headers.get_all(&MCP_NAME).iter().map(HeaderValue::as_bytes).collect();
    tool_policy::check_headers(&methods, &names, &message)
        .map_err(|e| Error::McpHeaderMismatch { id: message.reply_id(), message: e.0 })?;
    let who = Principal {
        scope: &grant.scope,
        groups: &grant.identity.groups,
        roles: &grant.identity.roles,
        groups_overage: grant.identity.groups_overage,
    };
    match tool_policy::decide_message(cx.tool_rules, &message, &who) {
        Verdict::Allow => {}
        Verdict::StepUp { missing } => {
            let (scope, missing) = scope::step_up(&grant.scope, missing.iter().map(String::as_str))
                .unwrap_or_else(|| (grant.scope.to_string(), missing.join(" ")));
            tracing::info!(client_id = %grant.client_id, %missing, "tool policy: token lacks a required scope");
            return Err(Error::InsufficientScope {
                scope,
                missing,
                resource_metadata: cx.resource_metadata.to_owned(),
            });
        }
        Verdict::Forbidden { name, overage } => {
            tracing::info!(client_id = %grant.client_id, tool = %name, overage, "tool policy: call refused");
            let text = if overage {
                format!(
                    "`{name}` is limited to some groups, and this sign-in carries too many groups to list them \
                     (Entra groups overage): the administrator should use app roles (the `roles` claim) in \
                     [[policy.tools]] groups instead of group ids"
                )
            } else {
                format!("`{name}` is not allowed for this user: a required group or role is missing")
            };
            return Err(Error::ToolForbidden { id: message.reply_id(), message: text });
        }
    }
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    // Only a listing's answer is read back, so only then is the caller copied out of the request.
    let caller = message.lists().then(|| {
        parts.headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        caller(cx, grant)
    });
    Ok((Request::from_parts(parts, UpstreamBody::Buffered(Some(bytes))), caller))
}

/// Narrows a listing answer to what `caller` may call: JSON read whole (at most `limit`), SSE event by event.
pub async fn narrow_listing(resp: Response<Body>, caller: Caller, limit: usize) -> Result<Response<Body>, Error> {
    if !resp.status().is_success() {
        return Ok(resp);
    }
    if resp.headers().get(header::CONTENT_ENCODING).is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity")) {
        return Err(Error::UpstreamUnavailable("a compressed listing cannot be narrowed by the tool policy".into()));
    }
    let content_type = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let (mut parts, body) = resp.into_parts();
    match media.as_str() {
        "text/event-stream" => {
            parts.headers.remove(header::CONTENT_LENGTH);
            let filtered = SseListingBody { inner: body, filter: listing::SseFilter::new(limit), caller, done: false };
            Ok(Response::from_parts(parts, filtered.boxed()))
        }
        _ if caller.streams_only => Ok(Response::from_parts(parts, body)),
        _ => {
            let bytes = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| Error::UpstreamUnavailable(format!("listing answer: {e}")))?
                .to_bytes();
            let keep = |name: &str| caller.may_call(name);
            let bytes = listing::filter_json_body(&bytes, &keep).map(Bytes::from).unwrap_or(bytes);
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Ok(Response::from_parts(parts, full(bytes)))
        }
    }
}

/// An SSE listing answer, rewritten event by event ([`listing::SseFilter`]). An event over the limit ends the
/// stream (logged).
struct SseListingBody {
    inner: Body,
    filter: listing::SseFilter,
    caller: Caller,
    done: bool,
}

impl hyper::body::Body for SseListingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.done = true;
                    let rest = this.filter.finish();
                    return Poll::Ready((!rest.is_empty()).then(|| Ok(Frame::data(Bytes::from(rest)))));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    Ok(data) => {
                        let caller = &this.caller;
                        match this.filter.push(&data, &|name: &str| caller.may_call(name)) {
                            Ok(out) if out.is_empty() => continue,
                            Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                            Err(e) => {
                                tracing::warn!(error = %e, "tool policy: listing stream cut");
                                this.done = true;
                                return Poll::Ready(None);
                            }
                        }
                    }
                },
            }
        }
    }
}
