//! Every error a request can end in, and the one place that turns it into an HTTP response.
//!
//! - OAuth errors are RFC 6749 §5.2 JSON (`error`, `error_description`) with `Cache-Control: no-store`;
//!   `invalid_client` is 401 with `WWW-Authenticate: Basic` (§5.2), the others 400. RFC 7591 §3.2.2 registration
//!   errors use the same shape.
//! - A missing or bad bearer token is 401 with `WWW-Authenticate: Bearer resource_metadata="…"` and, for a bad
//!   token, `error="invalid_token"` (RFC 6750 §3, RFC 9728 §5.1).
//! - An `/authorize` request whose client or redirect URI cannot be trusted is shown as an HTML page, never
//!   redirected (RFC 6749 §4.1.2.1); other authorization errors go back to the client's redirect URI.
//! - Anything unexpected is one 500 and one warning in the log, with no detail in the body.
//!
//! Layering: this module sits above the rules. The OAuth codes are a leaf ([`crate::oauth::error`], re-exported
//! here); `crate::http` and the rule modules return their own errors ([`ReadBodyError`], [`ParamError`],
//! [`AuthorizeError`], [`DocumentError`]) and this module converts them, so none of them imports it back and the
//! HTML pages and OAuth JSON are rendered here only.
//!
//! Descriptions never contain a token, code or secret: they are built from constant text and from names of
//! fields, never from the values of secret fields.

use http::{header, HeaderValue, Response, StatusCode};

use crate::client_documents::DocumentError;
use crate::http::params::ParamError;
use crate::http::{html, json_response, Body, ReadBodyError};
use crate::oauth::authorize::AuthorizeError;

pub use crate::oauth::bearer_token::BearerProblem;
pub use crate::oauth::error::{ErrorCode, OAuthError};

/// A request's error. `into_response` is the only place an error becomes a response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error("unsupported media type, expected {expected}")]
    UnsupportedMediaType { expected: &'static str },
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("bearer token refused: {problem:?}")]
    /// `challenge`: the parameters every challenge carries, `resource_metadata="…", scope="…"` (RFC 9728 §5.1,
    /// MCP authorization: the scope a client should ask for).
    Unauthorized { problem: BearerProblem, challenge: String },
    /// The token is valid but lacks scopes the route needs (RFC 6750 §3.1 `insufficient_scope`, 403). `scope`:
    /// what the client should ask for (the granted scopes and the missing ones); `resource_metadata`: RFC 9728 URL.
    #[error("insufficient scope")]
    InsufficientScope { scope: String, missing: String, resource_metadata: String },
    /// An error shown to the user in the browser, never redirected: what went wrong and what to do.
    #[error("{title}: {message}")]
    Page { status: StatusCode, title: &'static str, message: String, detail: Option<String>, advice: &'static str },
    /// An authorization error sent back to the client's (already validated) redirect URI.
    #[error("authorization error redirected to the client: {}", error.code.as_str())]
    Redirect { redirect_uri: String, error: OAuthError, state: Option<String>, issuer: String },
    /// Too many requests from one source (429 with `Retry-After`); `html` for browser routes.
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64, html: bool },
    /// A capacity limit is reached (503 with `Retry-After`).
    #[error("capacity reached: {what}")]
    Capacity { what: &'static str, html: bool },
    /// `/register` without the configured initial access token (RFC 7591 §3), or `/register/{id}` without the
    /// client's registration access token (RFC 7592 §2).
    #[error("registration token missing or wrong")]
    RegistrationTokenRequired,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    /// A proxied request whose path upstream routers could read in more than one way.
    #[error("request path refused: {0}")]
    BadPath(#[from] crate::http::target::PathRejection),
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("internal error: {0}")]
    Internal(String),
    /// The client stopped sending its request body (`limits.body_timeout`): 408, and the connection is closed.
    #[error("the request body stalled")]
    RequestTimeout,
    /// The shared store (Redis) does not answer: 503 with `Retry-After`, OAuth `temporarily_unavailable`.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// An MCP POST the tool policy cannot judge (not JSON, a repeated key, a call without a name, a compressed
    /// body): 400 with a JSON-RPC error (`code`: -32700 parse error, -32600 invalid request) and no id.
    #[error("MCP message refused: {message}")]
    McpBadMessage { code: i64, message: String },
    /// `Mcp-Method` / `Mcp-Name` disagree with the body (MCP 2026-07-28 Streamable HTTP "Server Validation"): 400
    /// with JSON-RPC `-32020` HeaderMismatch for the request's id.
    #[error("MCP request headers do not match the body: {message}")]
    McpHeaderMismatch { id: serde_json::Value, message: String },
    /// A call the tool policy refuses and no scope would allow (a group or role is missing): 403 ("insufficient
    /// permissions", MCP authorization "Error Handling") with a JSON-RPC error for the call's id.
    #[error("MCP call refused by the tool policy")]
    ToolForbidden { id: serde_json::Value, message: String },
    /// `/register` while the operator has switched registration off (admin API): 403 `access_denied`. RFC 7591
    /// §3.2.2 names no code for a closed endpoint and its registry is open; `access_denied` (RFC 6749 §4.1.2.1) is
    /// what an OAuth client already understands as "the server said no".
    #[error("registration is switched off")]
    RegistrationClosed,
    /// The admin API without the admin token, or with a wrong one.
    #[error("admin token missing or wrong")]
    AdminUnauthorized,
    /// An admin API request the API cannot read (bad JSON, unknown value).
    #[error("bad admin request: {0}")]
    AdminBadRequest(String),
    /// The identity provider is throttling or down and the grant's IdP token has expired (issue 16 §1): 503 with
    /// `Retry-After`; the grant is kept.
    #[error("identity provider unavailable, retry after {retry_after}s")]
    IdpUnavailable { retry_after: u64 },
    /// [`Error::Store`] on a page a browser shows (`/authorize`, consent, login, callback): an HTML page, 503 with
    /// `Retry-After`, instead of OAuth JSON a user cannot read.
    #[error("{0} (browser route)")]
    StorePage(crate::store::StoreError),
}

/// The JSON-RPC error code of a call the tool policy refuses: application-defined, outside the range JSON-RPC and
/// MCP reserve (-32768..=-32000, MCP 2026-07-28 "Error Codes").
pub const JSONRPC_FORBIDDEN: i64 = -31403;
/// MCP 2026-07-28 `HeaderMismatch`.
pub const JSONRPC_HEADER_MISMATCH: i64 = -32020;
/// What a user can do after most sign-in errors.
const START_OVER: &str = "Close this page, go back to the application you were connecting and connect again. \
     If it happens again, tell the application's developer or the administrator of this service.";

impl Error {
    /// An error page whose advice is to start over from the application.
    pub fn page(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        Self::page_with_advice(status, title, message, START_OVER)
    }

    /// An error page with its own advice.
    pub fn page_with_advice(
        status: StatusCode,
        title: &'static str,
        message: impl Into<String>,
        advice: &'static str,
    ) -> Self {
        Self::Page { status, title, message: message.into(), detail: None, advice }
    }

    /// The same error for a route a browser shows: a store that does not answer becomes [`Error::StorePage`].
    #[must_use]
    pub fn for_browser(self) -> Self {
        match self {
            Self::Store(e) => Self::StorePage(e),
            other => other,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::OAuth(e) => oauth_status(e.code),
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized { problem, .. } => match problem {
                BearerProblem::InvalidRequest => StatusCode::BAD_REQUEST,
                BearerProblem::Missing | BearerProblem::InvalidToken => StatusCode::UNAUTHORIZED,
            },
            Self::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            Self::Page { status, .. } => *status,
            Self::Redirect { .. } => StatusCode::FOUND,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Capacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::RegistrationTokenRequired => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadPath(_) => StatusCode::BAD_REQUEST,
            Self::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::McpBadMessage { .. } | Self::McpHeaderMismatch { .. } => StatusCode::BAD_REQUEST,
            Self::ToolForbidden { .. } => StatusCode::FORBIDDEN,
            Self::RegistrationClosed => StatusCode::FORBIDDEN,
            Self::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            Self::AdminBadRequest(_) => StatusCode::BAD_REQUEST,
            Self::IdpUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::StorePage(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Builds the response; logs once for the errors an operator must see.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        match self {
            Self::OAuth(e) => {
                // The operator sees which rule refused (issue 26 item 5): the code and the description, which never
                // hold a token, code or secret (module docs).
                tracing::info!(error = e.code.as_str(), description = %e.description, "oauth request refused");
                let mut resp = oauth_json(status, e.code.as_str(), &e.description);
                if e.code == ErrorCode::InvalidClient {
                    resp.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"dcr-proxy\""));
                }
                // Every 503 the proxy makes says when to try again (issue 26 item 4).
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                resp
            }
            Self::UnsupportedMediaType { expected } => {
                oauth_json(status, "invalid_request", &format!("Content-Type must be {expected}"))
            }
            Self::PayloadTooLarge { limit } => {
                oauth_json(status, "invalid_request", &format!("request body exceeds {limit} bytes"))
            }
            Self::Unauthorized { problem, challenge } => {
                let challenge = match problem {
                    BearerProblem::Missing => format!("Bearer {challenge}"),
                    BearerProblem::InvalidToken => format!(
                        "Bearer {challenge}, error=\"invalid_token\", \
                         error_description=\"The access token is invalid or expired\""
                    ),
                    BearerProblem::InvalidRequest => format!(
                        "Bearer {challenge}, error=\"invalid_request\", \
                         error_description=\"Send the access token in the Authorization header\""
                    ),
                };
                let (code, desc) = match problem {
                    BearerProblem::Missing => ("invalid_token", "authorization required"),
                    BearerProblem::InvalidToken => ("invalid_token", "the access token is invalid or expired"),
                    BearerProblem::InvalidRequest => {
                        ("invalid_request", "send the access token in the Authorization header")
                    }
                };
                let mut resp = oauth_json(status, code, desc);
                if let Ok(v) = HeaderValue::try_from(challenge) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                resp
            }
            Self::InsufficientScope { scope, missing, resource_metadata } => {
                let description = format!("this request needs the scope {missing}");
                let mut resp = oauth_json(status, "insufficient_scope", &description);
                let challenge = format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{scope}\", resource_metadata=\"{resource_metadata}\", \
                     error_description=\"{description}\""
                );
                if let Ok(v) = HeaderValue::try_from(challenge) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                resp
            }
            Self::Page { status, title, message, detail, advice } => {
                html::error_page(status, title, &message, detail.as_deref(), advice)
            }
            Self::Redirect { redirect_uri, error, state, issuer } => {
                let mut params = vec![("error", error.code.as_str()), ("error_description", &error.description)];
                if let Some(s) = &state {
                    params.push(("state", s));
                }
                params.push(("iss", &issuer));
                crate::http::redirect(&crate::http::append_query(&redirect_uri, &params))
            }
            Self::RateLimited { retry_after_secs, html } => {
                let mut resp = if html {
                    html::error_page(
                        status,
                        "Too many requests",
                        "Too many sign-in attempts came from this address.",
                        None,
                        "Wait a minute, then go back to the application and connect again.",
                    )
                } else {
                    oauth_json(status, "temporarily_unavailable", "too many requests from this address; retry later")
                };
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                resp
            }
            Self::Capacity { what, html } => {
                tracing::warn!(what, "capacity limit reached");
                let mut resp = if html {
                    html::error_page(
                        status,
                        "Service busy",
                        "The sign-in service is busy.",
                        None,
                        "Wait a minute, then go back to the application and connect again.",
                    )
                } else {
                    oauth_json(status, "temporarily_unavailable", &format!("{what}; retry later"))
                };
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
                resp
            }
            Self::RegistrationTokenRequired => {
                let mut resp = oauth_json(
                    status,
                    "invalid_token",
                    "a valid registration token is required (initial access token, or the RFC 7592 registration access token)",
                );
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
                resp
            }
            Self::NotFound => json_response(status, &serde_json::json!({"error": "not_found"})),
            Self::MethodNotAllowed { allow } => {
                let mut resp = json_response(status, &serde_json::json!({"error": "method_not_allowed"}));
                resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
                resp
            }
            Self::BadPath(reason) => json_response(
                status,
                &serde_json::json!({"error": "invalid_request", "error_description": reason.to_string()}),
            ),
            Self::UpstreamUnavailable(reason) => {
                tracing::warn!(%reason, "upstream unavailable");
                json_response(
                    status,
                    &serde_json::json!({"error": "bad_gateway", "error_description": "the upstream service is unavailable"}),
                )
            }
            Self::UpstreamTimeout => {
                tracing::warn!("upstream timed out");
                json_response(
                    status,
                    &serde_json::json!({"error": "gateway_timeout", "error_description": "the upstream service did not answer in time"}),
                )
            }
            Self::Internal(reason) => {
                tracing::warn!(%reason, "internal error");
                json_response(status, &serde_json::json!({"error": "server_error"}))
            }
            Self::RequestTimeout => {
                let mut resp = oauth_json(status, "invalid_request", "the request body was not sent in time");
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                resp
            }
            Self::Store(e) => {
                tracing::warn!(error = %e, "store unavailable");
                let mut resp = oauth_json(status, "temporarily_unavailable", "the service is unavailable; retry later");
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                resp
            }
            Self::McpBadMessage { code, message } => jsonrpc_error(status, serde_json::Value::Null, code, &message),
            Self::McpHeaderMismatch { id, message } => {
                jsonrpc_error(status, id, JSONRPC_HEADER_MISMATCH, &format!("Header mismatch: {message}"))
            }
            Self::ToolForbidden { id, message } => jsonrpc_error(status, id, JSONRPC_FORBIDDEN, &message),
            Self::RegistrationClosed => oauth_json(
                status,
                "access_denied",
                "dynamic client registration is turned off on this server; use a Client ID Metadata \
                     Document (an https URL as client_id)",
            ),
            Self::AdminUnauthorized => {
                let mut resp =
                    oauth_json(status, "invalid_token", "the admin token (DCR_PROXY_ADMIN_TOKEN) is required");
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"dcr-proxy-admin\""));
                resp
            }
            Self::AdminBadRequest(reason) => oauth_json(status, "invalid_request", &reason),
            Self::IdpUnavailable { retry_after } => {
                let mut resp = oauth_json(
                    status,
                    "temporarily_unavailable",
                    "the identity provider is busy or unavailable; the sign-in is kept, retry later",
                );
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                resp
            }
            Self::StorePage(e) => {
                tracing::warn!(error = %e, "store unavailable");
                let mut resp = html::error_page(
                    status,
                    "Service unavailable",
                    "The sign-in service cannot reach its storage right now.",
                    None,
                    "Wait a few seconds, then reload this page or go back to the application and connect again.",
                );
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                resp
            }
        }
    }
}

/// A JSON-RPC 2.0 error response (§5.1) as the body of an HTTP error.
fn jsonrpc_error(status: StatusCode, id: serde_json::Value, code: i64, message: &str) -> Response<Body> {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    let mut resp = json_response(status, &body);
    crate::http::no_store(&mut resp);
    resp
}

impl From<ParamError> for OAuthError {
    /// RFC 6749 §3.1: a repeated or missing parameter is `invalid_request`.
    fn from(e: ParamError) -> Self {
        Self::invalid_request(e.to_string())
    }
}

impl From<ParamError> for Error {
    fn from(e: ParamError) -> Self {
        Self::OAuth(e.into())
    }
}

impl From<ReadBodyError> for Error {
    fn from(e: ReadBodyError) -> Self {
        match e {
            ReadBodyError::TooLarge { limit } => Self::PayloadTooLarge { limit },
            ReadBodyError::TimedOut => Self::RequestTimeout,
            ReadBodyError::Broken(_) => Self::OAuth(OAuthError::invalid_request(e.to_string())),
        }
    }
}

impl From<AuthorizeError> for Error {
    /// RFC 6749 §4.1.2.1: before the redirect URI is trusted, a page; after, a redirect.
    fn from(e: AuthorizeError) -> Self {
        const INVALID: &str = "Invalid authorization request";
        match e {
            AuthorizeError::Invalid(message) => Self::page(StatusCode::BAD_REQUEST, INVALID, message),
            AuthorizeError::UnknownClient => Self::page(
                StatusCode::BAD_REQUEST,
                "Unknown client",
                "This application is not registered with the sign-in service (or its registration expired). \
                 Reconnect it from the application so that it registers again.",
            ),
            AuthorizeError::UnregisteredRedirectUri(uri) => Self::Page {
                status: StatusCode::BAD_REQUEST,
                title: "Invalid redirect URI",
                message: "The application asked to send your answer to an address it did not register, so the \
                          sign-in stops here and nothing is sent there. The address it asked for:"
                    .to_owned(),
                detail: Some(shown_uri(&uri)),
                advice: "If you did not start this connection yourself, close this page: someone may be trying to \
                         get access in your name. Otherwise tell the application's developer that its redirect URI \
                         does not match its registration, then connect again.",
            },
            AuthorizeError::Redirect { redirect_uri, error, state, issuer } => {
                Self::Redirect { redirect_uri, error, state, issuer }
            }
        }
    }
}

/// A URI as an error page shows it: at most [`SHOWN_URI_CHARS`] characters (the page escapes it).
fn shown_uri(uri: &str) -> String {
    if uri.chars().count() <= SHOWN_URI_CHARS {
        return uri.to_owned();
    }
    let mut shown: String = uri.chars().take(SHOWN_URI_CHARS).collect();
    shown.push('…');
    shown
}

/// Longest redirect URI an error page shows in full.
const SHOWN_URI_CHARS: usize = 300;

/// A refused login check: locked out (429), every check busy (503) or a broken pool (500).
impl From<crate::idp::local::LoginRefusal> for Error {
    fn from(refusal: crate::idp::local::LoginRefusal) -> Self {
        use crate::idp::local::LoginRefusal as R;
        match refusal {
            R::LockedOut { retry_after_secs } => Self::RateLimited { retry_after_secs, html: true },
            R::Busy => Self::Capacity { what: "every password check is busy", html: true },
            R::Task(reason) => Self::Internal(format!("password check task: {reason}")),
        }
    }
}

/// How a refused client metadata document is answered where it was named.
impl DocumentError {
    /// At `/authorize`: an error page (never a redirect: the redirect URI is not trusted yet).
    pub fn into_page(self, client_id: &str) -> Error {
        if self.is_busy() {
            return Error::Capacity { what: "too many client metadata documents in flight", html: true };
        }
        Error::page(
            StatusCode::BAD_REQUEST,
            "Application identity refused",
            format!(
                "The application identifies itself with the document at {client_id}, which cannot be used: {self}. \
                 Contact the application's developer."
            ),
        )
    }

    /// At the token endpoint: the client cannot be authenticated.
    pub fn into_token_error(self) -> Error {
        if self.is_busy() {
            return Error::Capacity { what: "too many client metadata documents in flight", html: false };
        }
        OAuthError::invalid_client(format!("client metadata document refused: {self}")).into()
    }
}

/// The status of an OAuth error at the token or registration endpoint (RFC 6749 §5.2, RFC 7591 §3.2.2).
fn oauth_status(code: ErrorCode) -> StatusCode {
    use ErrorCode as C;
    match code {
        C::InvalidClient => StatusCode::UNAUTHORIZED,
        C::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        C::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::InvalidRequest
        | C::InvalidGrant
        | C::UnauthorizedClient
        | C::UnsupportedGrantType
        | C::InvalidScope
        | C::InvalidTarget
        | C::UnsupportedResponseType
        | C::AccessDenied
        | C::InvalidRedirectUri
        | C::InvalidClientMetadata
        | C::LoginRequired
        | C::InteractionRequired
        | C::ConsentRequired => StatusCode::BAD_REQUEST,
    }
}

/// RFC 6749 §5.2 JSON with the no-store headers of §5.1.
fn oauth_json(status: StatusCode, code: &str, description: &str) -> Response<Body> {
    let mut resp = json_response(status, &serde_json::json!({"error": code, "error_description": description}));
    crate::http::no_store(&mut resp);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content_type(resp: &Response<Body>) -> &str {
        resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[test]
    fn a_store_that_does_not_answer_is_json_for_clients_and_a_page_for_browsers() {
        let down = || crate::store::StoreError::Unavailable("connection refused".into());
        let json = Error::Store(down()).into_response();
        assert_eq!(json.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(content_type(&json).starts_with("application/json"));
        assert_eq!(json.headers()[header::RETRY_AFTER], "1");
        let page = Error::Store(down()).for_browser().into_response();
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(content_type(&page).starts_with("text/html"), "{}", content_type(&page));
        assert_eq!(page.headers()[header::RETRY_AFTER], "1");
        let other = Error::NotFound.for_browser();
        assert!(matches!(other, Error::NotFound), "only store errors change");
    }

    #[test]
    fn every_503_says_when_to_try_again() {
        let oauth = Error::from(OAuthError::new(ErrorCode::TemporarilyUnavailable, "the IdP is busy")).into_response();
        assert_eq!(oauth.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(oauth.headers()[header::RETRY_AFTER], "1");
        let capacity = Error::Capacity { what: "too many sign-ins", html: false }.into_response();
        assert_eq!(capacity.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(capacity.headers().contains_key(header::RETRY_AFTER));
        let idp = Error::IdpUnavailable { retry_after: 7 }.into_response();
        assert_eq!(
            (idp.status(), idp.headers()[header::RETRY_AFTER].to_str().ok()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("7"))
        );
        let bad = Error::from(OAuthError::invalid_request("x")).into_response();
        assert!(!bad.headers().contains_key(header::RETRY_AFTER), "a 400 has none");
    }

    #[test]
    fn http_layer_errors_become_their_statuses() {
        let repeated = Error::from(ParamError::Repeated("code".into()));
        assert!(matches!(&repeated, Error::OAuth(e) if e.code == ErrorCode::InvalidRequest
            && e.description == "parameter `code` is repeated"));
        assert_eq!(repeated.status(), StatusCode::BAD_REQUEST);
        assert_eq!(Error::from(ReadBodyError::TooLarge { limit: 9 }).status(), StatusCode::PAYLOAD_TOO_LARGE);
        let stalled = Error::from(ReadBodyError::TimedOut).into_response();
        assert_eq!(stalled.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(stalled.headers().get(header::CONNECTION).and_then(|v| v.to_str().ok()), Some("close"));
    }

    #[test]
    fn an_unregistered_redirect_uri_is_shown_escaped_and_bounded() {
        assert_eq!(shown_uri("https://a.example/cb"), "https://a.example/cb");
        let long = format!("https://a.example/{}", "x".repeat(400));
        assert_eq!(shown_uri(&long).chars().count(), SHOWN_URI_CHARS + 1);
        let e = Error::from(AuthorizeError::UnregisteredRedirectUri("https://evil.example/<b>x</b>".into()));
        let Error::Page { detail, advice, .. } = e else { panic!("not a page") };
        assert_eq!(detail.as_deref(), Some("https://evil.example/<b>x</b>"));
        assert!(!advice.is_empty());
    }

    #[test]
    fn authorize_refusals_before_the_redirect_uri_is_trusted_are_pages_after_it_redirects() {
        for refusal in [
            AuthorizeError::Invalid("The request has no client_id.".into()),
            AuthorizeError::UnknownClient,
            AuthorizeError::UnregisteredRedirectUri("https://evil.example/<cb>".into()),
        ] {
            let resp = Error::from(refusal).into_response();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
            assert!(content_type(&resp).starts_with("text/html"), "{}", content_type(&resp));
            assert!(resp.headers().get(header::LOCATION).is_none());
        }
        let redirect = AuthorizeError::Redirect {
            redirect_uri: "https://app.example/cb".into(),
            error: OAuthError::new(ErrorCode::InvalidRequest, "no"),
            state: Some("s".into()),
            issuer: "https://p.example".into(),
        };
        let resp = Error::from(redirect).into_response();
        assert_eq!(resp.status(), StatusCode::FOUND);
        let location = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(location.starts_with("https://app.example/cb?error=invalid_request"), "{location}");
    }
}
