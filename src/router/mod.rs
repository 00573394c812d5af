//! Routing and nothing else: the path is parsed once into an [`Endpoint`], then one `match (method, endpoint)` calls the
//! endpoint's handler in [`crate::oauth`] or the proxy policy [`crate::proxy::handle`].
//!
//! Invariants (the same on every request, so kept here): CORS preflights are answered without forwarding (never
//! with credentials), TRACE and CONNECT are never forwarded (RFC 9110 §9.3.8: TRACE would echo the upstream
//! credential), `OPTIONS *` is answered here (RFC 9110 §9.3.7), and the rate-limit class of the endpoint is checked
//! before any handler runs. Every answer gets `Access-Control-Allow-Origin: *` unless the upstream set its own.

pub mod envelope;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::app::App;
use crate::endpoint::Endpoint;
use crate::endpoints::{client_config, introspect, revoke, sign_in, token};
use crate::error::Error;
use crate::http::{self as h, full, json_response, Body, RequestBody};
use crate::idp::Idp;
use crate::proxy::userinfo;
use crate::rate_limit;

pub use envelope::{add_cors, Envelope};

/// Handles one request.
pub async fn handle(app: Arc<App>, req: Request<RequestBody>, peer: SocketAddr) -> Response<Body> {
    let endpoint = Endpoint::parse(req.uri().path(), &app.metadata.protected_resource_path);
    let (envelope, context) = Envelope::open(&app, req.method(), endpoint, req.headers(), peer);
    // The standing under the endpoint's rate limit, advertised on the answer whatever it is (the 429 included).
    let mut standing = None;
    let dispatched = dispatch(&app, endpoint, req, peer, &mut standing);
    let mut resp = match crate::audit::REQUEST.scope(context, dispatched).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    if let Some(standing) = standing {
        standing.write(resp.headers_mut());
    }
    Envelope::answer_headers(resp.headers_mut());
    envelope.close(&app, resp.status());
    resp
}

async fn dispatch(
    app: &Arc<App>,
    endpoint: Endpoint,
    req: Request<RequestBody>,
    peer: SocketAddr,
    standing: &mut Option<rate_limit::Standing>,
) -> Result<Response<Body>, Error> {
    // CORS preflights carry no credentials, so the proxy answers them itself on every path (browser clients
    // such as MCP Inspector preflight the MCP endpoint too).
    if req.method() == Method::OPTIONS
        && (endpoint.answers_every_options() || req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD))
    {
        return Ok(preflight());
    }
    // TRACE would echo the upstream credential back to the client; CONNECT would open a tunnel with it.
    if matches!(*req.method(), Method::TRACE | Method::CONNECT) {
        return Err(Error::MethodNotAllowed { allow: ALLOWED_METHODS });
    }
    if req.method() == Method::OPTIONS && req.uri() == "*" {
        return Ok(options_asterisk());
    }
    if let Some((class, html)) = endpoint.rate_class() {
        let source = rate_limit::source_of(req.headers(), peer, app.config.server.behind_tls_terminator);
        let checked = app.rate_limiter.check(class, source, Instant::now());
        *standing = Some(match checked {
            Ok(s) | Err(s) => s,
        });
        if let Err(refused) = checked {
            tracing::info!(%source, ?class, "rate limited");
            return Err(Error::RateLimited { retry_after_secs: refused.reset_secs, html });
        }
        // Across replicas (Redis): the same limit counted by every replica together.
        let quota = app.rate_limiter.per_minute(class);
        let counted = app.store.count_request(class, source, quota).await;
        let counted = counted.map_err(|e| if html { Error::StorePage(e) } else { Error::Store(e) })?;
        if let Some(wait) = counted {
            tracing::info!(%source, ?class, "rate limited across replicas");
            *standing = Some(rate_limit::Standing::exhausted(class, quota, wait));
            return Err(Error::RateLimited { retry_after_secs: wait, html });
        }
    }
    match (req.method(), endpoint) {
        (&Method::GET, Endpoint::AuthorizationServerMetadata) => Ok(json_bytes(app.authorization_server_metadata())),
        (&Method::GET, Endpoint::ProtectedResourceMetadata) => Ok(json_bytes(app.metadata.protected_resource.clone())),
        // A `[[routes]]` entry's own RFC 9728 document (issue 16 §3).
        (&Method::GET, Endpoint::OtherWellKnown) => app
            .upstream_routes
            .iter()
            .find(|r| r.metadata_path == req.uri().path())
            .map(|r| json_bytes(r.metadata.clone()))
            .ok_or(Error::NotFound),
        (_, Endpoint::AuthorizationServerMetadata | Endpoint::ProtectedResourceMetadata | Endpoint::OtherWellKnown) => {
            Err(Error::NotFound)
        }
        (&Method::POST, Endpoint::Register) => {
            let source = rate_limit::source_of(req.headers(), peer, app.config.server.behind_tls_terminator);
            client_config::register(app, req, source).await
        }
        (&Method::GET | &Method::PUT | &Method::DELETE, Endpoint::ClientConfiguration) => {
            client_config::manage(app, req).await
        }
        // Pages a browser shows: a store that does not answer is an HTML page too.
        (&Method::GET, Endpoint::Authorize) => sign_in::authorize(app, &req).await.map_err(Error::for_browser),
        (&Method::POST, Endpoint::Consent) => sign_in::consent(app, req).await.map_err(Error::for_browser),
        (&Method::GET, Endpoint::Callback) => sign_in::callback(app, &req).await.map_err(Error::for_browser),
        (&Method::GET, Endpoint::Login) => sign_in::show_login(app, &req).await.map_err(Error::for_browser),
        (&Method::POST, Endpoint::Login) => sign_in::submit_login(app, req).await.map_err(Error::for_browser),
        (&Method::POST, Endpoint::Token) => token::handle(app, req).await,
        (&Method::POST, Endpoint::Revoke) => revoke::handle(app, req).await,
        (&Method::POST, Endpoint::Introspect) => introspect::handle(app, req).await,
        (&Method::GET | &Method::POST, Endpoint::Userinfo) => userinfo::handle(&app.proxy_context(), &req).await,
        (&Method::GET, Endpoint::Healthz) => Ok(json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        (&Method::GET, Endpoint::Readyz) => Ok(readyz(app).await),
        (_, Endpoint::Register | Endpoint::Consent | Endpoint::Token | Endpoint::Revoke | Endpoint::Introspect) => {
            Err(Error::MethodNotAllowed { allow: "POST, OPTIONS" })
        }
        (_, Endpoint::Authorize | Endpoint::Callback | Endpoint::Healthz) => {
            Err(Error::MethodNotAllowed { allow: "GET" })
        }
        (_, Endpoint::Login) => Err(Error::MethodNotAllowed { allow: "GET, POST" }),
        // The proxy's own endpoints are never forwarded, whatever the method.
        (_, Endpoint::ClientConfiguration) => Err(Error::MethodNotAllowed { allow: "GET, PUT, DELETE, OPTIONS" }),
        (_, Endpoint::Userinfo) => Err(Error::MethodNotAllowed { allow: "GET, POST" }),
        (_, Endpoint::Readyz) => Err(Error::MethodNotAllowed { allow: "GET" }),
        (&Method::GET, Endpoint::Logo) => app
            .config
            .pages
            .logo
            .as_ref()
            .map(|l| h::html::logo_response(l.bytes.clone(), l.content_type))
            .ok_or(Error::NotFound),
        (_, Endpoint::Logo) => Err(Error::MethodNotAllowed { allow: "GET" }),
        (_, Endpoint::Proxy) => crate::proxy::handle(&app.proxy_context(), req, peer).await,
    }
}

/// `/readyz` ([`crate::readiness`]): the store and the IdP are ready before the listener is bound; the upstream is
/// probed.
async fn readyz(app: &App) -> Response<Body> {
    use crate::readiness::Check;
    let idp = match &*app.idp {
        Idp::Oidc(_) => "oidc",
        Idp::Local(_) => "local",
    };
    let checks = [
        {
            let (ok, detail) = app.store.readiness().await;
            // Where a store in this process came from (a snapshot, or empty), once known.
            let detail = app.store_origin.get().copied().unwrap_or(detail).to_owned();
            Check { name: "store", ok, detail }
        },
        Check {
            name: "idp",
            ok: true,
            detail: (if idp == "oidc" { "OIDC discovery done" } else { "local login" }).to_owned(),
        },
        app.upstream_probe.check(&app.config.upstream.url, app.config.upstream.connect_timeout).await,
    ];
    let mut extra = serde_json::Map::new();
    extra.insert("idp".into(), idp.into());
    extra.insert("snapshot".into(), app.config.store.snapshot.is_some().into());
    let (status, body) = crate::readiness::report(&checks, extra);
    let mut resp = json_response(status, &body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // A probe asks again on its own schedule; a person or a client reading it gets when (issue 26 item 4).
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    h::no_store(&mut resp);
    resp
}

fn json_bytes(body: bytes::Bytes) -> Response<Body> {
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
    resp
}

/// The methods the proxy serves or forwards; TRACE and CONNECT are never forwarded.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// `OPTIONS *` (RFC 9110 §9.3.7) asks about the server, not a resource: answered here, never forwarded.
fn options_asterisk() -> Response<Body> {
    let mut resp = Response::new(h::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    resp
}

fn preflight() -> Response<Body> {
    let mut resp = Response::new(h::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let hd = resp.headers_mut();
    // PUT and DELETE: RFC 7592 client management and MCP's session end (`DELETE /mcp`) from a browser.
    hd.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"));
    hd.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "Authorization, Content-Type, Accept, Mcp-Protocol-Version, Mcp-Session-Id, Last-Event-ID",
        ),
    );
    hd.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    resp
}
