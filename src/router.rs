//! Routing, one `match (method, path)`, and the thin handlers: parse → call the rule in [`crate::oauth`] →
//! build the response. Every path the proxy does not answer itself is forwarded, behind a bearer token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use crate::app::App;
use crate::client_documents::{self, DocumentError};
use crate::crypto::{self, TokenHash};
use crate::error::{BearerProblem, Error, ErrorCode, OAuthError};
use crate::http::params::Params;
use crate::http::{self as h, full, json_response, no_store, read_body, Body, RequestBody};
use crate::idp::{local, Idp, IdpError};
use crate::oauth::authorize::{self, AuthorizeContext};
use crate::oauth::flow::{ConsentTicket, IdpTicket, PendingAuthorization, Ticket as _};
use crate::oauth::{consent, pkce, register, scope, token};
use crate::proxy::forward::UpstreamBody;
use crate::proxy::{bearer, target};
use crate::rate_limit::{self, RouteClass};
use crate::store::{AuthorizationCode, Client, UpstreamLogin};

const FORM: &str = "application/x-www-form-urlencoded";
/// Largest form body of the token, consent, login and revocation endpoints.
const FORM_LIMIT: usize = 16 * 1024;

/// Handles one request.
pub async fn handle(app: Arc<App>, req: Request<RequestBody>, peer: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let route = route_name(&app, req.uri().path());
    let mut resp = match dispatch(&app, req, peer).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    // Every answer is readable by browser clients (tokens travel in headers, never cookies, so `*` is safe);
    // an upstream that sets its own CORS headers keeps them.
    if !resp.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        add_cors(resp.headers_mut());
    }
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    app.metrics.request(route, status, elapsed.as_secs_f64());
    let request_id = REQUEST_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(request_id, %method, route, status, micros = elapsed.as_micros() as u64, "request");
    resp
}

/// A per-process request number for the access log.
static REQUEST_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A low-cardinality name of the route, for logs.
fn route_name(app: &App, path: &str) -> &'static str {
    match path {
        "/register" => "register",
        "/authorize" => "authorize",
        "/consent" => "consent",
        "/callback" => "callback",
        "/login" => "login",
        "/token" => "token",
        "/revoke" => "revoke",
        "/introspect" => "introspect",
        "/userinfo" => "userinfo",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        p if p.starts_with("/.well-known/") => "metadata",
        p if p == app.metadata.protected_resource_path => "metadata",
        _ => "proxy",
    }
}

/// The rate-limit class of a path, and whether its errors are shown as pages.
fn rate_class(path: &str) -> Option<(RouteClass, bool)> {
    match path {
        p if p == "/register" || p.starts_with("/register/") => Some((RouteClass::Register, false)),
        "/token" | "/revoke" | "/introspect" => Some((RouteClass::Token, false)),
        "/authorize" | "/consent" | "/login" => Some((RouteClass::Authorize, true)),
        _ => None,
    }
}

async fn dispatch(app: &Arc<App>, req: Request<RequestBody>, peer: SocketAddr) -> Result<Response<Body>, Error> {
    let path = req.uri().path();
    // CORS preflights carry no credentials, so the proxy answers them itself on every path (browser clients
    // such as MCP Inspector preflight the MCP endpoint too).
    if req.method() == Method::OPTIONS
        && (route_name(app, path) != "proxy" || req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD))
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
    if let Some((class, html)) = rate_class(path) {
        let source = rate_limit::source_of(req.headers(), peer, app.config.server.behind_tls_terminator);
        if let Err(wait) = app.rate_limiter.check(class, source, Instant::now()) {
            tracing::info!(%source, ?class, "rate limited");
            return Err(Error::RateLimited { retry_after_secs: wait.as_secs(), html });
        }
    }
    match (req.method(), path) {
        (&Method::GET, "/.well-known/oauth-authorization-server" | "/.well-known/openid-configuration") => {
            Ok(json_bytes(app.metadata.authorization_server.clone()))
        }
        (&Method::GET, "/.well-known/oauth-protected-resource") => {
            Ok(json_bytes(app.metadata.protected_resource.clone()))
        }
        (&Method::GET, p) if p == app.metadata.protected_resource_path => {
            Ok(json_bytes(app.metadata.protected_resource.clone()))
        }
        (_, p) if p.starts_with("/.well-known/") => Err(Error::NotFound),
        (&Method::POST, "/register") => {
            let source = rate_limit::source_of(req.headers(), peer, app.config.server.behind_tls_terminator);
            register_client(app, req, source).await
        }
        (&Method::GET | &Method::PUT | &Method::DELETE, p) if p.starts_with("/register/") => {
            manage_client(app, req).await
        }
        (&Method::GET, "/authorize") => start_authorization(app, &req).await,
        (&Method::POST, "/consent") => submit_consent(app, req).await,
        (&Method::GET, "/callback") => idp_callback(app, &req).await,
        (&Method::GET, "/login") => show_login(app, &req),
        (&Method::POST, "/login") => submit_login(app, req).await,
        (&Method::POST, "/token") => token_endpoint(app, req).await,
        (&Method::POST, "/revoke") => revoke(app, req).await,
        (&Method::POST, "/introspect") => introspect(app, req).await,
        (&Method::GET | &Method::POST, "/userinfo") => userinfo(app, &req),
        (&Method::GET, "/healthz") => Ok(json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        // The listener is bound only after the snapshot is loaded and the IdP discovered: serving means ready.
        (&Method::GET, "/readyz") => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({
                "status": "ready",
                "idp": match &*app.idp { Idp::Oidc(_) => "oidc", Idp::Local(_) => "local" },
                "snapshot": app.config.store.snapshot.is_some(),
            }),
        )),
        (_, "/register" | "/consent" | "/token" | "/revoke" | "/introspect") => {
            Err(Error::MethodNotAllowed { allow: "POST, OPTIONS" })
        }
        (_, "/authorize" | "/callback" | "/healthz") => Err(Error::MethodNotAllowed { allow: "GET" }),
        (_, "/login") => Err(Error::MethodNotAllowed { allow: "GET, POST" }),
        _ => proxy(app, req, peer).await,
    }
}

fn json_bytes(body: bytes::Bytes) -> Response<Body> {
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
    resp
}

/// CORS for browser-based clients (MCP Inspector): the OAuth endpoints answer any origin and expose
/// `WWW-Authenticate`. No credentials (cookies) are allowed cross-origin.
fn add_cors(headers: &mut HeaderMap) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("WWW-Authenticate, Mcp-Session-Id"));
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

// ---- registration -------------------------------------------------------------------------------------------

async fn register_client(
    app: &App,
    req: Request<RequestBody>,
    source: rate_limit::Source,
) -> Result<Response<Body>, Error> {
    let policy = &app.config.registration;
    if let Some(expected) = &policy.initial_access_token {
        use secrecy::ExposeSecret as _;
        let presented = bearer::token_from_headers(req.headers()).unwrap_or("");
        if !TokenHash::of(expected.expose_secret()).matches(presented) {
            return Err(Error::RegistrationTokenRequired);
        }
    }
    if !h::has_content_type(req.headers(), "application/json") {
        return Err(Error::UnsupportedMediaType { expected: "application/json" });
    }
    let body = read_body(req.into_body(), app.config.registration.max_body_bytes).await?;
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| OAuthError::new(ErrorCode::InvalidClientMetadata, format!("the body is not valid JSON: {e}")))?;
    let now = app.clock.now();
    let registration = register::register(&json, now, &policy.redirect_allowlist)?;
    // A full table makes room by evicting never-used clients, the busiest sources' first; only a table of clients
    // that all redeemed a code refuses a registration.
    match app.store.make_room_for_client(now, policy.unused_client_ttl.as_secs(), policy.max_clients) {
        Some(0) => {}
        Some(removed) => tracing::info!(removed, "unused clients removed to make room"),
        None => return Err(Error::Capacity { what: "the client registration limit is reached", html: false }),
    }
    let config_uri = format!("{}/register/{}", app.config.server.public_url, registration.client.client_id);
    let doc = register::response_body(
        &registration.client,
        registration.secret.as_deref(),
        (Some(&registration.registration_token), &config_uri),
    );
    tracing::info!(
        client_id = %registration.client.client_id,
        client_name = registration.client.client_name.as_deref().unwrap_or(""),
        auth_method = registration.client.auth_method.as_str(),
        "client registered"
    );
    app.store.add_client(registration.client, source);
    let mut resp = json_response(StatusCode::CREATED, &doc);
    no_store(&mut resp);
    Ok(resp)
}

/// RFC 7592 client configuration endpoint `/register/{client_id}`: read (GET), update (PUT), delete (DELETE),
/// each with the registration access token as bearer. An unknown client or a wrong token is 401 (§2), so that
/// nothing is learned about which clients exist. Deleting a client revokes its grants.
async fn manage_client(app: &App, req: Request<RequestBody>) -> Result<Response<Body>, Error> {
    let client_id = req.uri().path().trim_start_matches("/register/").to_owned();
    let presented = bearer::token_from_headers(req.headers()).unwrap_or("");
    let client = app
        .store
        .clients
        .get(&client_id)
        .map(|c| c.clone())
        .filter(|c| c.registration_token.is_some_and(|h| h.matches(presented)))
        .ok_or(Error::RegistrationTokenRequired)?;
    let config_uri = format!("{}/register/{}", app.config.server.public_url, client.client_id);
    let respond = |c: &crate::store::Client| {
        let mut resp = json_response(StatusCode::OK, &register::response_body(c, None, (None, &config_uri)));
        no_store(&mut resp);
        resp
    };
    match *req.method() {
        Method::GET => Ok(respond(&client)),
        Method::DELETE => {
            app.store.clients.remove(&client.client_id);
            let grants: Vec<_> =
                app.store.grants.iter().filter(|g| g.client_id == client.client_id).map(|g| g.id).collect();
            for id in grants {
                app.store.revoke_grant(id);
            }
            tracing::info!(client_id = %client.client_id, "client deleted by its owner");
            let mut resp = Response::new(h::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            Ok(resp)
        }
        _ => {
            if !h::has_content_type(req.headers(), "application/json") {
                return Err(Error::UnsupportedMediaType { expected: "application/json" });
            }
            let body = read_body(req.into_body(), app.config.registration.max_body_bytes).await?;
            let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                OAuthError::new(ErrorCode::InvalidClientMetadata, format!("the body is not valid JSON: {e}"))
            })?;
            let updated =
                register::update(&client, &json, app.clock.now(), &app.config.registration.redirect_allowlist)?;
            let resp = respond(&updated);
            tracing::info!(client_id = %client.client_id, "client metadata updated");
            app.store.clients.insert(updated.client_id.clone(), Arc::new(updated));
            Ok(resp)
        }
    }
}

// ---- authorization ------------------------------------------------------------------------------------------

/// A client named by the URL of its metadata document, fetched (or from the cache) and checked.
async fn document_client(app: &App, client_id: Option<&str>) -> Result<Option<Arc<Client>>, DocumentError> {
    match client_id {
        Some(id) if client_documents::is_document_id(id) => app
            .client_documents
            .client(id, app.clock.now(), &app.config.registration.redirect_allowlist, &app.metrics)
            .await
            .map(Some)
            .inspect_err(|e| tracing::info!(client_id = id, error = %e, "client metadata document refused")),
        _ => Ok(None),
    }
}

/// Looks a client up: the document client already resolved for this request, or a registered one.
fn find_client(document: &Option<Arc<Client>>, store: &crate::store::Store, id: &str) -> Option<Arc<Client>> {
    match document {
        Some(c) if c.client_id == id => Some(c.clone()),
        _ => store.clients.get(id).map(|c| c.clone()),
    }
}

async fn start_authorization(app: &App, req: &Request<RequestBody>) -> Result<Response<Body>, Error> {
    let ctx = AuthorizeContext {
        issuer: &app.config.server.public_url,
        resources: &app.resources,
        offered_scopes: &app.config.idp.scopes,
        max_state_bytes: app.config.limits.max_state_bytes,
    };
    let query = req.uri().query().unwrap_or("").as_bytes();
    // Refused before a metadata document is fetched for it.
    authorize::check_query_length(query)?;
    let named = Params::parse(query).ok().and_then(|p| p.get("client_id").map(str::to_owned));
    let document =
        document_client(app, named.as_deref()).await.map_err(|e| e.into_page(named.as_deref().unwrap_or("")))?;
    let request = authorize::validate(query, |id| find_client(&document, &app.store, id), &ctx)?;
    let client = find_client(&document, &app.store, &request.client_id)
        .ok_or_else(|| Error::page(StatusCode::BAD_REQUEST, "Unknown client", "The application is not registered."))?;

    // Nothing is stored: the request travels sealed in the consent form, bound to a cookie the proxy minted.
    let browser = app.sign_ins.browser_cookie(req.headers()).unwrap_or_else(|| app.sign_ins.mint_cookie());
    let csrf = crypto::random_token();
    let ttl = app.config.tokens.pending_ttl.as_secs();
    let pending = PendingAuthorization {
        client_id: request.client_id,
        redirect_uri: request.redirect_uri,
        redirect_uri_explicit: request.redirect_uri_explicit,
        state: request.state,
        code_challenge: request.code_challenge,
        scope: request.scope,
        resource: request.resource,
        browser: TokenHash::of(&browser),
        expires_at: app.clock.now() + ttl,
    };
    let ticket = ConsentTicket::new(pending, &csrf);
    let mut resp = consent::render(&client, &ticket.pending, &app.sign_ins.seal(&ticket), &csrf);
    if let Some(cookie) = consent::set_cookie(app.config.is_https(), &browser, ttl) {
        resp.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(resp)
}

/// Parses a form body of an HTML page's post; errors are shown as a page.
async fn read_form(req: Request<RequestBody>) -> Result<(HeaderMap, Params), Error> {
    let bad = |m: String| Error::page(StatusCode::BAD_REQUEST, "Invalid form", m);
    if !h::has_content_type(req.headers(), FORM) {
        return Err(bad(format!("The form must be sent as {FORM}.")));
    }
    let (parts, body) = req.into_parts();
    let body = read_body(body, FORM_LIMIT).await?;
    let params = Params::parse(&body).map_err(|e| bad(e.to_string()))?;
    Ok((parts.headers, params))
}

async fn submit_consent(app: &App, req: Request<RequestBody>) -> Result<Response<Body>, Error> {
    let (headers, params) = read_form(req).await?;
    let refused = || {
        Error::page(
            StatusCode::FORBIDDEN,
            "Approval not accepted",
            "This approval form has expired, was already used, or was not submitted from the browser that opened \
             it. Start the connection again from the application.",
        )
    };
    let sealed = params.get("request").ok_or_else(refused)?;
    let csrf = params.get("csrf").ok_or_else(refused)?;
    let now = app.clock.now();
    let ticket = app
        .sign_ins
        .open_live::<ConsentTicket>(sealed, &headers, now)
        .filter(|t| t.csrf.matches(csrf))
        .ok_or_else(refused)?;
    if !app.store.used_sign_ins.claim(ticket.use_key(), ticket.pending.expires_at, now) {
        return Err(refused());
    }
    let pending = ticket.pending;

    if params.get("action") != Some("approve") {
        tracing::info!(client_id = %pending.client_id, "user denied consent");
        return Err(Error::Redirect {
            redirect_uri: pending.redirect_uri,
            error: OAuthError::new(ErrorCode::AccessDenied, "the user denied the request"),
            state: pending.state,
            issuer: app.config.server.public_url.to_string(),
        });
    }
    // The IdP state, nonce and PKCE verifier exist only from here on; the state carries them, sealed.
    let verifier = pkce::new_verifier();
    let nonce = crypto::random_token();
    let challenge = crypto::pkce_s256(&verifier);
    let state = app.sign_ins.seal(&IdpTicket::new(pending, verifier, nonce.clone()));
    let location = match &*app.idp {
        Idp::Oidc(p) => p.authorize_url(&state, &challenge, &nonce),
        Idp::Local(_) => h::append_query("/login", &[("state", &state)]),
    };
    Ok(h::redirect(&location))
}

fn login_state_error() -> Error {
    Error::page(
        StatusCode::BAD_REQUEST,
        "Sign-in expired",
        "This sign-in has expired, was already completed, or was started in another browser. Start the \
         connection again from the application.",
    )
}

/// The sign-in an IdP `state` names, if it is live, belongs to the browser that sent `headers` and was not
/// completed yet ([`spend`] is the atomic check).
fn live_idp_ticket(app: &App, state: Option<&str>, headers: &HeaderMap) -> Result<IdpTicket, Error> {
    let state = state.ok_or_else(login_state_error)?;
    app.sign_ins
        .open_live::<IdpTicket>(state, headers, app.clock.now())
        .filter(|t| !app.store.used_sign_ins.was_used(&t.use_key()))
        .ok_or_else(login_state_error)
}

/// Spends an IdP state; `Err` when it was already used.
fn spend(app: &App, ticket: &IdpTicket) -> Result<(), Error> {
    let used = app.store.used_sign_ins.claim(ticket.use_key(), ticket.pending.expires_at, app.clock.now());
    if used {
        Ok(())
    } else {
        Err(login_state_error())
    }
}

async fn idp_callback(app: &App, req: &Request<RequestBody>) -> Result<Response<Body>, Error> {
    let params = Params::parse(req.uri().query().unwrap_or("").as_bytes())
        .map_err(|e| Error::page(StatusCode::BAD_REQUEST, "Invalid sign-in response", e.to_string()))?;
    let request = live_idp_ticket(app, params.get("state"), req.headers())?;
    spend(app, &request)?;
    let now = app.clock.now();
    let to_client = |code: ErrorCode, description: &str| Error::Redirect {
        redirect_uri: request.pending.redirect_uri.clone(),
        error: OAuthError::new(code, description),
        state: request.pending.state.clone(),
        issuer: app.config.server.public_url.to_string(),
    };
    if let Some(error) = params.get("error") {
        let code = ErrorCode::from_idp(error);
        tracing::info!(client_id = %request.pending.client_id, idp_error = error, "identity provider returned an error");
        return Err(to_client(code, &format!("the identity provider answered {}", code.as_str())));
    }
    let Some(code) = params.get("code") else {
        return Err(to_client(ErrorCode::ServerError, "the identity provider returned no code"));
    };
    let Idp::Oidc(provider) = &*app.idp else {
        return Err(Error::NotFound);
    };
    match provider.exchange_code(code, &request.pkce_verifier, &request.nonce, now).await {
        Ok(login) => Ok(finish_authorization(app, request.pending, login)),
        Err(e) => {
            tracing::warn!(client_id = %request.pending.client_id, error = %e, "IdP code exchange failed");
            app.metrics.idp_error(&e);
            let code = match e {
                IdpError::Unavailable(_) => ErrorCode::TemporarilyUnavailable,
                IdpError::Refused { .. } | IdpError::Protocol(_) | IdpError::Discovery(_) => ErrorCode::ServerError,
            };
            Err(to_client(code, "the sign-in with the identity provider could not be completed"))
        }
    }
}

/// Mints the proxy's authorization code and sends the browser back to the client (RFC 6749 §4.1.2, RFC 9207).
fn finish_authorization(app: &App, pending: PendingAuthorization, login: UpstreamLogin) -> Response<Body> {
    let code = crypto::random_token();
    let mut params: Vec<(&str, &str)> = vec![("code", &code)];
    if let Some(state) = &pending.state {
        params.push(("state", state));
    }
    params.push(("iss", &app.config.server.public_url));
    let location = h::append_query(&pending.redirect_uri, &params);
    tracing::info!(client_id = %pending.client_id, "authorization code issued");
    app.store.codes.insert(
        TokenHash::of(&code),
        AuthorizationCode {
            client_id: pending.client_id,
            redirect_uri: pending.redirect_uri,
            redirect_uri_explicit: pending.redirect_uri_explicit,
            code_challenge: pending.code_challenge,
            scope: pending.scope,
            resource: pending.resource,
            expires_at: app.clock.now() + app.config.tokens.code_ttl.as_secs(),
            login,
        },
    );
    h::redirect(&location)
}

fn local_users(app: &App) -> Result<&local::LocalUsers, Error> {
    match &*app.idp {
        Idp::Local(users) => Ok(users),
        Idp::Oidc(_) => Err(Error::NotFound),
    }
}

fn show_login(app: &App, req: &Request<RequestBody>) -> Result<Response<Body>, Error> {
    local_users(app)?;
    let params = Params::parse(req.uri().query().unwrap_or("").as_bytes()).map_err(|_| login_state_error())?;
    let state = params.get("state");
    live_idp_ticket(app, state, req.headers())?;
    Ok(local::login_page(state.unwrap_or(""), None))
}

async fn submit_login(app: &App, req: Request<RequestBody>) -> Result<Response<Body>, Error> {
    let users = local_users(app)?;
    let (headers, params) = read_form(req).await?;
    let state = params.get("state").unwrap_or("");
    let request = live_idp_ticket(app, Some(state), &headers)?;
    let username = params.get("username").unwrap_or("");
    let password = params.get("password").unwrap_or("").to_owned();
    let identity = match users.login(username, password, app.clock.now()).await {
        Ok(identity) => identity,
        Err(local::LoginRefusal::Busy) => {
            tracing::info!("local login not checked: every password check is busy");
            let wait = app.config.limits.password_check_wait;
            return Ok(local::busy_page(state, wait.as_secs() + u64::from(wait.subsec_nanos() > 0)));
        }
        Err(refusal) => {
            tracing::info!(reason = %refusal, "local login not checked");
            return Err(refusal.into());
        }
    };
    let Some(identity) = identity else {
        tracing::info!("local login failed");
        return Ok(local::login_page(state, Some("Wrong username or password.")));
    };
    // A wrong password leaves the state usable; a right one spends it.
    spend(app, &request)?;
    tracing::info!(user = %identity.sub, "local login succeeded");
    let login = UpstreamLogin { credential: crate::store::UpstreamCredential::Local, identity };
    Ok(finish_authorization(app, request.pending, login))
}

// ---- token endpoint -----------------------------------------------------------------------------------------

async fn read_oauth_form(req: Request<RequestBody>) -> Result<(HeaderMap, Params), Error> {
    if !h::has_content_type(req.headers(), FORM) {
        return Err(OAuthError::invalid_request(format!("Content-Type must be {FORM}")).into());
    }
    let (parts, body) = req.into_parts();
    let body = read_body(body, FORM_LIMIT).await?;
    let params = Params::parse(&body)?;
    Ok((parts.headers, params))
}

/// Authenticates the client of a token or revocation request; a metadata-document client is resolved first.
async fn token_client(app: &App, headers: &HeaderMap, params: &Params) -> Result<Arc<Client>, Error> {
    let document = document_client(app, params.get("client_id")).await.map_err(DocumentError::into_token_error)?;
    Ok(token::authenticate_client(|id| find_client(&document, &app.store, id), headers, params)?)
}

async fn token_endpoint(app: &App, req: Request<RequestBody>) -> Result<Response<Body>, Error> {
    let (headers, params) = read_oauth_form(req).await?;
    if let Some(id) = params.get("client_id").filter(|id| client_documents::is_document_id(id)) {
        client_documents::check_token_request(&app.store, &params, id)?;
    }
    let client = token_client(app, &headers, &params).await?;
    let ctx = token::TokenContext {
        store: &app.store,
        config: &app.config.tokens,
        now: app.clock.now(),
        resources: &app.resources,
    };
    let issued = token::exchange(&ctx, &client, &params)?;
    let body = serde_json::to_value(&issued).map_err(|e| Error::Internal(e.to_string()))?;
    let mut resp = json_response(StatusCode::OK, &body);
    no_store(&mut resp);
    Ok(resp)
}

/// RFC 7009: revokes an access token, or a refresh token and its whole grant. Always 200 for a token that is
/// unknown or belongs to another client (§2.2), so that nothing is learned.
async fn revoke(app: &App, req: Request<RequestBody>) -> Result<Response<Body>, Error> {
    let (headers, params) = read_oauth_form(req).await?;
    let token = params.require("token")?;
    let hash = TokenHash::of(token);
    // A URL client_id's document is fetched only to revoke a token of that client; anything else is answered
    // like an unknown token, without a fetch.
    let unknown = || {
        let mut resp = Response::new(h::empty());
        no_store(&mut resp);
        resp
    };
    if let Some(id) = params.get("client_id").filter(|id| client_documents::is_document_id(id)) {
        if app.store.token_client(token).as_deref() != Some(id) {
            return Ok(unknown());
        }
    }
    let client = token_client(app, &headers, &params).await?;
    let refresh_grant = app.store.refresh_token(token).map(|(grant, _, _)| grant);
    if let Some(grant) = refresh_grant.filter(|g| g.client_id == client.client_id) {
        app.store.revoke_grant(grant.id);
        tracing::info!(client_id = %client.client_id, "grant revoked by its client");
    } else if app.store.access_tokens.remove_if(&hash, |_, t| t.grant.client_id == client.client_id).is_some() {
        tracing::info!(client_id = %client.client_id, "access token revoked by its client");
    }
    Ok(unknown())
}

/// RFC 7662 introspection for the configured resource server: `active` with the token's claims, or only
/// `{"active": false}` for a token that is unknown, expired, revoked or already rotated.
async fn introspect(app: &App, req: Request<RequestBody>) -> Result<Response<Body>, Error> {
    use secrecy::ExposeSecret as _;
    let Some(rs) = &app.config.introspection else {
        return Err(Error::NotFound);
    };
    let (headers, params) = read_oauth_form(req).await?;
    let (id, secret) = match headers.get(header::AUTHORIZATION) {
        Some(v) => token::parse_basic(v.to_str().unwrap_or(""))?,
        None => {
            (params.get("client_id").unwrap_or("").to_owned(), params.get("client_secret").unwrap_or("").to_owned())
        }
    };
    let id_ok = crypto::constant_time_eq(id.as_bytes(), rs.client_id.as_bytes());
    if !(id_ok && TokenHash::of(rs.client_secret.expose_secret()).matches(&secret)) {
        return Err(OAuthError::invalid_client("introspection requires the resource server's credentials").into());
    }
    let token = params.require("token")?;
    let hash = TokenHash::of(token);
    let now = app.clock.now();
    let hint = params.get("token_type_hint");
    let access =
        app.store.access_tokens.get(&hash).map(|t| (t.grant.clone(), t.expires_at, t.scope.clone(), "access_token"));
    let found = access.or_else(|| {
        app.store
            .refresh_token(token)
            .filter(|(_, _, current)| *current)
            .map(|(grant, exp, _)| (grant.clone(), exp, grant.scope.clone(), "refresh_token"))
    });
    let body = match found {
        Some((grant, exp, scope, kind)) if exp > now && !grant.is_revoked() => serde_json::json!({
            "active": true,
            "scope": &*scope,
            "client_id": grant.client_id,
            "sub": grant.identity.sub,
            "exp": exp,
            "iat": grant.created_at,
            "iss": app.config.server.public_url,
            "aud": grant.resource.clone().unwrap_or_else(|| app.config.resource_url()),
            "token_type": if kind == "access_token" { "Bearer" } else { "refresh_token" },
            "token_type_hint_used": hint.is_some(),
        }),
        _ => serde_json::json!({"active": false}),
    };
    let mut resp = json_response(StatusCode::OK, &body);
    no_store(&mut resp);
    Ok(resp)
}

/// OIDC Core §5.3-style claims of the user behind a bearer token.
fn userinfo(app: &App, req: &Request<RequestBody>) -> Result<Response<Body>, Error> {
    let grant = bearer::authenticate(app, req.headers(), req.uri().query())?;
    let body = serde_json::to_value(&grant.identity).map_err(|e| Error::Internal(e.to_string()))?;
    let mut resp = json_response(StatusCode::OK, &body);
    no_store(&mut resp);
    Ok(resp)
}

// ---- proxy --------------------------------------------------------------------------------------------------

async fn proxy(app: &App, mut req: Request<RequestBody>, peer: SocketAddr) -> Result<Response<Body>, Error> {
    let grant = bearer::authenticate(app, req.headers(), req.uri().query())?;
    // One path decides both the policy and what the upstream gets.
    let path = target::canonical_path(req.uri().path())?;
    // HTTP/2 carries the host in `:authority`, which the origin-form target below drops.
    if !req.headers().contains_key(header::HOST) {
        if let Some(host) = req.uri().authority().and_then(|a| HeaderValue::try_from(a.as_str()).ok()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    *req.uri_mut() = target::with_query(&path, req.uri().query())?;
    let missing = scope::missing_for_path(&app.config.upstream.required_scopes, path.as_str(), &grant.scope);
    if let Some((scope, missing)) = scope::step_up(&grant.scope, missing) {
        tracing::info!(client_id = %grant.client_id, %missing, "token lacks a required scope");
        return Err(Error::InsufficientScope { scope, missing, resource_metadata: app.resource_metadata.clone() });
    }
    let auth = bearer::upstream_auth(app, &grant).await?;
    // A request without a body can be sent again after an upstream refresh; keep what that needs.
    let replay = replayable(&req).then(|| {
        let mut copy = Request::new(UpstreamBody::Empty);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        copy
    });
    let sent = auth.clone();
    let mut resp = app.forwarder.forward(req.map(UpstreamBody::Streamed), auth, peer).await?;
    if let (StatusCode::UNAUTHORIZED, bearer::UpstreamAuth::Bearer(rejected)) = (resp.status(), &sent) {
        // Whatever the method: the grant's next request refreshes the IdP token first. A request without a body is
        // retried once now with a fresh token.
        grant.mark_upstream_rejected(rejected);
        if let Some(again) = replay {
            let fresh = bearer::upstream_auth(app, &grant).await?;
            if !matches!(&fresh, bearer::UpstreamAuth::Bearer(b) if b == rejected) {
                tracing::info!(client_id = %grant.client_id, "upstream refused the token; refreshed, retrying once");
                resp = app.forwarder.forward(again, fresh, peer).await?;
            }
        }
    }
    // The upstream's own challenge would send the client to the IdP directly: replace it with the proxy's.
    if matches!(resp.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        && resp.headers().contains_key(header::WWW_AUTHENTICATE)
    {
        tracing::info!(client_id = %grant.client_id, status = resp.status().as_u16(), "upstream refused the request");
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(Error::Unauthorized { problem: BearerProblem::InvalidToken, challenge: app.challenge.clone() });
        }
        // An upstream asking for more scope: the client steps up at the proxy, for scopes the proxy offers.
        let upstream_challenge = resp.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
        if upstream_challenge.and_then(|c| h::auth_param(c, "error")).as_deref() == Some("insufficient_scope") {
            let asked = upstream_challenge.and_then(|c| h::auth_param(c, "scope")).unwrap_or_default();
            let offered = asked.split(' ').filter(|s| app.config.idp.scopes.iter().any(|o| o == s));
            if let Some((scope, missing)) = scope::step_up(&grant.scope, offered) {
                return Err(Error::InsufficientScope {
                    scope,
                    missing,
                    resource_metadata: app.resource_metadata.clone(),
                });
            }
        }
        resp.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    Ok(resp)
}

/// Whether a request has no body, so that it can be sent again (RFC 9110 §9.2.2 methods or an empty body).
fn replayable(req: &Request<RequestBody>) -> bool {
    use hyper::body::Body as _;
    req.body().is_end_stream() || req.body().size_hint().exact() == Some(0)
}
