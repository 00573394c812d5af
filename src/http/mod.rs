//! HTTP plumbing shared by the handlers: the response body type, size-limited body reading, parameter parsing
//! (form and query, with repeated parameters refused), HTML pages and small response builders.
//!
//! This layer sits below `crate::error`: it has its own small error types ([`ReadBodyError`],
//! [`params::ParamError`]) which `crate::error` converts into responses; nothing here imports the error layer.

pub mod html;
pub mod params;
pub mod target;
pub mod timed_body;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt as _, Empty, Full, Limited};

/// The body of every response the server sends: fixed bytes, or a streamed upstream body.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// The body of every request the router sees: the client's, cut when it stalls (`limits.body_timeout`).
pub type RequestBody = timed_body::TimedBody<hyper::body::Incoming>;

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1).
pub fn no_store(resp: &mut Response<Body>) {
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A 302 to `location`. A location that is not a valid header value becomes a 500.
pub fn redirect(location: &str) -> Response<Body> {
    match HeaderValue::try_from(location) {
        Ok(v) => {
            let mut resp = Response::new(empty());
            *resp.status_mut() = StatusCode::FOUND;
            resp.headers_mut().insert(header::LOCATION, v);
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(_) => {
            // The same answer as `Error::Internal`: one warning, a bare 500.
            tracing::warn!(reason = "redirect location is not a valid header value", "internal error");
            json_response(StatusCode::INTERNAL_SERVER_ERROR, &serde_json::json!({"error": "server_error"}))
        }
    }
}

/// Appends query parameters to a URI that may already have a query (RFC 6749 §3.1.2 keeps existing ones).
pub fn append_query(uri: &str, params: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    let query = ser.finish();
    let (base, fragment) = match uri.split_once('#') {
        Some((b, _)) => (b, ""),
        None => (uri, ""),
    };
    let sep = if base.contains('?') {
        if base.ends_with('?') || base.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    format!("{base}{sep}{query}{fragment}")
}

/// Whether the request's Content-Type is `expected` (parameters such as `charset` ignored).
pub fn has_content_type(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case(expected))
}

/// Why a request body could not be read (`crate::error` maps: 413, 408, 400 `invalid_request`).
#[derive(Debug, thiserror::Error)]
pub enum ReadBodyError {
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The client stopped sending (`limits.body_timeout`).
    #[error("the request body stalled")]
    TimedOut,
    #[error("could not read the request body: {0}")]
    Broken(String),
}

/// Reads a whole request body, refusing more than `limit` bytes.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, ReadBodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ReadBodyError::TooLarge { limit }),
        Err(e) if matches!(e.downcast_ref(), Some(timed_body::BodyError::TimedOut(_))) => Err(ReadBodyError::TimedOut),
        Err(e) => Err(ReadBodyError::Broken(e.to_string())),
    }
}

/// The value of an auth-param (RFC 9110 §11.2) in a `WWW-Authenticate` challenge such as
/// `Bearer error="insufficient_scope", scope="a b"`: quoted (with `\\` escapes) or a token; the name is matched
/// without case.
pub fn auth_param(challenge: &str, name: &str) -> Option<String> {
    let mut rest = challenge.trim_start();
    // Skip the scheme.
    if let Some((first, after)) = rest.split_once(' ') {
        if !first.contains('=') {
            rest = after;
        }
    }
    loop {
        rest = rest.trim_start_matches([' ', ',', '\t']);
        if rest.is_empty() {
            return None;
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        rest = rest[eq + 1..].trim_start();
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            rest = &quoted[end.min(quoted.len())..];
            value
        } else {
            let end = rest.find([',', ' ']).unwrap_or(rest.len());
            let value = rest[..end].to_owned();
            rest = &rest[end..];
            value
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_query_keeps_existing_query_and_drops_fragment() {
        assert_eq!(append_query("https://a/cb", &[("code", "x y")]), "https://a/cb?code=x+y");
        assert_eq!(append_query("https://a/cb?k=1", &[("code", "c")]), "https://a/cb?k=1&code=c");
        assert_eq!(append_query("https://a/cb#f", &[("e", "1")]), "https://a/cb?e=1");
    }

    #[test]
    fn auth_params_are_read_quoted_or_bare() {
        let c = r#"Bearer realm="up, stream", error=insufficient_scope, Scope="Mail.Send \"x\"""#;
        assert_eq!(auth_param(c, "error").as_deref(), Some("insufficient_scope"));
        assert_eq!(auth_param(c, "scope").as_deref(), Some("Mail.Send \"x\""));
        assert_eq!(auth_param(c, "realm").as_deref(), Some("up, stream"));
        assert_eq!(auth_param(c, "missing"), None);
        assert_eq!(auth_param("Bearer", "error"), None);
        assert_eq!(auth_param("Bearer error=\"unterminated", "error").as_deref(), Some("unterminated"));
    }
}
