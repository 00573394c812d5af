//! Request heads for the fast path (RFC 9112 §2–§7): parsed with `httparse`, then judged by [`classify`]: a head
//! the fast path fully understands, or the rest of the connection goes to hyper.
//!
//! Invariants: eligible is only an HTTP/1.1 request with an origin-form target for the proxied space
//! ([`Endpoint::Proxy`]), a method among GET, POST, PUT, PATCH, DELETE, exactly one `Host`, exactly one
//! `Authorization: Bearer`, no `access_token` in the query, no `Upgrade`, no `Expect`, `Connection` naming only
//! `keep-alive` / `close`, and a body framing that cannot be read two ways: none, one valid `Content-Length`, or
//! one `Transfer-Encoding: chunked` alone (RFC 9112 §6.3: a request with both is a smuggling attempt). Every name
//! and value must be one `http` accepts. Anything else — and any head `httparse` rejects or that does not fit
//! [`MAX_HEAD`] bytes / [`crate::server::H1_MAX_HEADERS`] fields — is hyper's to answer.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::Method;

use crate::endpoint::Endpoint;

/// The largest head the fast path reads before handing the connection to hyper (whose own limit is larger).
pub const MAX_HEAD: usize = 16 * 1024;

/// How a request or response body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length: n` (n > 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// A response delimited by the upstream closing the connection.
    UntilClose,
}

/// A head the fast path serves.
#[derive(Debug)]
pub struct Head {
    /// Bytes of the head, the empty line included.
    pub len: usize,
    pub method: Method,
    pub target: PathAndQuery,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The client said `Connection: close`.
    pub close: bool,
}

/// What the bytes read so far are.
#[derive(Debug)]
pub enum Parsed {
    /// Not a complete head yet.
    Partial,
    /// A head the fast path serves.
    Head(Head),
    /// Anything else: hyper serves the connection from here.
    Hyper,
}

/// Parses and judges the head at the start of `buf`.
pub fn classify(buf: &[u8], protected_resource_path: &str) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; crate::server::H1_MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        Ok(httparse::Status::Partial) | Err(_) => return Parsed::Hyper,
    };
    match judge(&req, protected_resource_path) {
        Some((method, target, headers, framing, close)) => {
            Parsed::Head(Head { len, method, target, headers, framing, close })
        }
        None => Parsed::Hyper,
    }
}

type Judged = (Method, PathAndQuery, HeaderMap, Framing, bool);

fn judge(req: &httparse::Request<'_, '_>, protected_resource_path: &str) -> Option<Judged> {
    if req.version != Some(1) {
        return None;
    }
    let method = match req.method? {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "PATCH" => Method::PATCH,
        "DELETE" => Method::DELETE,
        _ => return None,
    };
    let raw_target = req.path?;
    if !raw_target.starts_with('/') {
        return None;
    }
    let target = PathAndQuery::try_from(raw_target).ok()?;
    if Endpoint::parse(target.path(), protected_resource_path) != Endpoint::Proxy
        || crate::proxy::bearer::token_in_query(target.query())
    {
        return None;
    }
    // Room for what the upstream's copy gains (forwarding headers, credential) without growing the map.
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 6);
    let (mut hosts, mut authorizations, mut lengths, mut encodings) = (0, 0, 0, 0);
    let mut framing = Framing::Empty;
    let mut close = false;
    for field in req.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(field.value).ok()?;
        match name {
            header::HOST => hosts += 1,
            header::AUTHORIZATION => {
                authorizations += 1;
                let scheme = value.as_bytes().split(|b| *b == b' ').next().unwrap_or_default();
                if !scheme.eq_ignore_ascii_case(b"bearer") {
                    return None;
                }
            }
            header::CONTENT_LENGTH => {
                lengths += 1;
                framing = match content_length(value.as_bytes())? {
                    0 => Framing::Empty,
                    n => Framing::Length(n),
                };
            }
            header::TRANSFER_ENCODING => {
                encodings += 1;
                if !value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return None;
                }
                framing = Framing::Chunked;
            }
            header::CONNECTION => {
                for token in value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        return None;
                    }
                }
            }
            header::UPGRADE | header::EXPECT => return None,
            _ => {}
        }
        headers.append(name, value);
    }
    if hosts != 1 || authorizations != 1 || lengths + encodings > 1 {
        return None;
    }
    Some((method, target, headers, framing, close))
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6), no list, no overflow.
pub fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Parsed {
        classify(text.as_bytes(), "/.well-known/oauth-protected-resource/mcp")
    }

    fn fast(text: &str) -> Head {
        match head(text) {
            Parsed::Head(h) => h,
            other => panic!("not fast: {other:?}\n{text}"),
        }
    }

    fn is_hyper(text: &str) -> bool {
        matches!(head(text), Parsed::Hyper)
    }

    const BASE: &str = "Host: p\r\nAuthorization: Bearer t\r\n";

    #[test]
    fn the_common_requests_are_fast() {
        let h = fast(&format!("POST /mcp?x=1 HTTP/1.1\r\n{BASE}Content-Length: 5\r\n\r\nhello"));
        assert_eq!((h.method, h.framing, h.close), (Method::POST, Framing::Length(5), false));
        assert_eq!(h.target.as_str(), "/mcp?x=1");
        assert_eq!(h.len, h.len.min(200));
        let h = fast(&format!("GET /mcp HTTP/1.1\r\n{BASE}Connection: close\r\n\r\n"));
        assert_eq!((h.framing, h.close), (Framing::Empty, true));
        let h = fast(&format!("PUT /x HTTP/1.1\r\n{BASE}Transfer-Encoding: chunked\r\n\r\n"));
        assert_eq!(h.framing, Framing::Chunked);
        assert!(matches!(head(&format!("GET /mcp HTTP/1.1\r\n{BASE}")), Parsed::Partial));
    }

    #[test]
    fn smuggling_shapes_and_unusual_requests_go_to_hyper() {
        for bad in [
            format!("POST /mcp HTTP/1.1\r\n{BASE}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            format!("POST /mcp HTTP/1.1\r\n{BASE}Content-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            format!("POST /mcp HTTP/1.1\r\n{BASE}Content-Length: 5, 5\r\n\r\n"),
            format!("POST /mcp HTTP/1.1\r\n{BASE}Content-Length: +5\r\n\r\n"),
            format!("POST /mcp HTTP/1.1\r\n{BASE}Content-Length: 99999999999999999999\r\n\r\n"),
            format!("POST /mcp HTTP/1.1\r\n{BASE}Transfer-Encoding: chunked, identity\r\n\r\n"),
            format!("POST /mcp HTTP/1.1\r\n{BASE}Transfer-Encoding: gzip\r\n\r\n"),
            format!("POST /mcp HTTP/1.1\r\n{BASE}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            format!("POST /mcp HTTP/1.1\r\n{BASE}X-A: 1\r\n folded\r\n\r\n"),
            format!("GET /mcp HTTP/1.0\r\n{BASE}\r\n"),
            format!("HEAD /mcp HTTP/1.1\r\n{BASE}\r\n"),
            format!("OPTIONS /mcp HTTP/1.1\r\n{BASE}\r\n"),
            format!("TRACE /mcp HTTP/1.1\r\n{BASE}\r\n"),
            format!("get /mcp HTTP/1.1\r\n{BASE}\r\n"),
            format!("GET http://p/mcp HTTP/1.1\r\n{BASE}\r\n"),
            format!("GET * HTTP/1.1\r\n{BASE}\r\n"),
            format!("GET /token HTTP/1.1\r\n{BASE}\r\n"),
            format!("GET /.well-known/oauth-authorization-server HTTP/1.1\r\n{BASE}\r\n"),
            format!("GET /mcp?access_token=x HTTP/1.1\r\n{BASE}\r\n"),
            format!("GET /mcp HTTP/1.1\r\n{BASE}Upgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
            format!("POST /mcp HTTP/1.1\r\n{BASE}Expect: 100-continue\r\nContent-Length: 1\r\n\r\n"),
            format!("GET /mcp HTTP/1.1\r\n{BASE}Connection: keep-alive, x-secret\r\n\r\n"),
            format!("GET /mcp HTTP/1.1\r\n{BASE}Authorization: Bearer u\r\n\r\n"),
            format!("GET /mcp HTTP/1.1\r\n{BASE}Host: q\r\n\r\n"),
            "GET /mcp HTTP/1.1\r\nHost: p\r\n\r\n".to_owned(),
            "GET /mcp HTTP/1.1\r\nHost: p\r\nAuthorization: Basic dTpw\r\n\r\n".to_owned(),
            "GET /mcp HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n".to_owned(),
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned(),
            format!("GET /mcp HTTP/1.1\r\n{BASE}Bad Name: 1\r\n\r\n"),
            format!("GET /mcp HTTP/1.1\r\n{BASE}{}\r\n", "X-Big: 1\r\n".repeat(101)),
            format!("GET /mcp HTTP/1.1\r\n{BASE}X-Long: {}", "a".repeat(MAX_HEAD)),
        ] {
            assert!(is_hyper(&bad), "{bad}");
        }
    }

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"1048576"), Some(1_048_576));
        for bad in [&b""[..], b"-1", b" 1", b"1 ", b"0x10", b"1,1", b"99999999999999999999"] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }
}
