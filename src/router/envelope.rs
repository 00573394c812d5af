//! The envelope of every request, opened and closed by both paths that serve requests: [`super::handle`] (hyper)
//! and the fast path ([`crate::server::fast_path`]). A rule for every request (a header on every answer, a field
//! of the access log, a metric) is written here once.
//!
//! - Opening numbers the request (one counter for both paths) and sets its audit context: the peer, and the last
//!   `X-Forwarded-For` only when `server.behind_tls_terminator` says a proxy in front appended it.
//! - Every answer is readable by browser clients (`Access-Control-Allow-Origin: *`, tokens travel in headers, never
//!   cookies, so `*` is safe); an upstream that sets its own CORS headers keeps them.
//! - Closing counts the request by endpoint and status and writes one access-log line (no path, no query, no
//!   header: nothing a client sent beyond its method).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::app::App;
use crate::audit::RequestContext;
use crate::endpoint::Endpoint;

/// A per-process request number for the access log and the audit trail.
static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// One request between its head and its answer.
pub struct Envelope {
    started: Instant,
    request_id: u64,
    method: Method,
    endpoint: Endpoint,
}

impl Envelope {
    /// Opens the envelope of a request: its number and the audit context its handling runs in
    /// (`crate::audit::REQUEST.scope`).
    pub fn open(
        app: &App,
        method: &Method,
        endpoint: Endpoint,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> (Self, RequestContext) {
        let request_id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
        let forwarded_for = match app.config.server.behind_tls_terminator {
            true => headers.get_all("x-forwarded-for").iter().next_back().cloned(),
            false => None,
        };
        let context = RequestContext { audit: app.audit.clone(), request_id, peer, forwarded_for };
        (Self { started: Instant::now(), request_id, method: method.clone(), endpoint }, context)
    }

    /// The headers every answer gets: CORS, unless the answer set its own.
    pub fn answer_headers(headers: &mut HeaderMap) {
        if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            add_cors(headers);
        }
    }

    /// Closes the envelope on the answer's status: the request metric and the access-log line.
    pub fn close(&self, app: &App, status: StatusCode) {
        let elapsed = self.started.elapsed();
        let (request_id, method, route, status) =
            (self.request_id, &self.method, self.endpoint.name(), status.as_u16());
        app.metrics.request(route, status, elapsed.as_secs_f64());
        tracing::info!(request_id, %method, route, status, micros = elapsed.as_micros() as u64, "request");
    }
}

/// `Access-Control-Allow-Origin: *` and the headers a browser client may read.
pub fn add_cors(headers: &mut HeaderMap) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    // A browser client may read the challenge, the MCP session, and when and how much it may ask again.
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("WWW-Authenticate, Mcp-Session-Id, Retry-After, RateLimit, RateLimit-Policy"),
    );
}
