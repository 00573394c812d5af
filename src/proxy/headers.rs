//! Header rules of the forwarder, both ways (RFC 9110 §7.6.1, RFC 9113 §8.2.3, RFC 6265 §4.2, §5.4).
//!
//! Invariants:
//! - Hop-by-hop headers, and those the `Connection` header names, never cross the proxy.
//! - A header name with `_` never reaches the upstream: CGI/WSGI servers read `X_Forwarded_User` and
//!   `x-forwarded-user` as the same variable, so a client could otherwise forge what the proxy asserts (nginx drops
//!   such names by default for the same reason). The identity headers themselves are removed in every spelling.
//!   One exception: `Mcp-Param-*` (MCP 2026-07-28, SEP-2243) names a tool parameter's `x-mcp-header`, any HTTP
//!   token, so `Mcp-Param-user_id` is forwarded; its CGI spelling `HTTP_MCP_PARAM_…` cannot collide with a header
//!   the proxy asserts.
//! - Forwarding and routing headers are the proxy's to write: a client's `Forwarded`, `X-Real-IP`,
//!   `X-Forwarded-Host/-Proto/-Port/-Prefix/-Server/-Ssl/-Scheme` are removed (frameworks such as Spring and
//!   Quarkus trust them for redirects and links), and so are `X-Original-URL`, `X-Rewrite-URL`, `X-Original-URI`
//!   (IIS and Symfony route by them, past the canonical path the policy judged) and the method overrides
//!   (`X-HTTP-Method-Override` and kin, past the TRACE/CONNECT refusal). `X-Forwarded-For` is kept and appended to.
//! - The proxy's own cookies (the browser binding of the consent step) never cross: they are removed from the
//!   `Cookie` header sent upstream, and an upstream `Set-Cookie` of that name never reaches the browser.
//! - Cookies arrive as one `Cookie` header: HTTP/2 splits them into crumbs, which are joined with `"; "` for an
//!   HTTP/1.1 upstream (RFC 9113 §8.2.3).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The names of the proxy's own cookies (`oauth::cookies::cookie_name` and `person_cookie_name`, for http and https).
pub const PROXY_COOKIES: [&str; 4] = ["dcrp", "__Host-dcrp", "dcrp-who", "__Host-dcrp-who"];

/// The local login's identity headers; always removed from client requests.
pub static X_FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");
pub static X_FORWARDED_EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");

/// Headers that tell an upstream where a request came from, how it was addressed or which path or method it
/// "really" has: only the proxy may write them.
fn is_client_forbidden(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-real-ip"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "x-forwarded-server"
            | "x-forwarded-ssl"
            | "x-forwarded-scheme"
            | "x-original-url"
            | "x-original-uri"
            | "x-rewrite-url"
            | "x-original-host"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "front-end-https"
            | "x-forwarded-user"
            | "x-forwarded-email"
    )
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus the proxy-auth pair that is never forwarded.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes, in one pass over the names, the hop-by-hop headers, those the `Connection` header names, and those
/// `also` picks. Allocates only when something is removed (the common request has nothing to remove but
/// `Connection`).
fn remove_where(headers: &mut HeaderMap, also: impl Fn(&str) -> bool) {
    let mut doomed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    doomed.extend(headers.keys().filter(|n| is_hop_by_hop(n.as_str()) || also(n.as_str())).cloned());
    for name in &doomed {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, |_| false);
}

/// Prepares a client's headers for the upstream: hop-by-hop, `_` names, identity, forwarding and routing headers
/// and the proxy's cookies removed, cookie crumbs joined. The caller then sets the credential and the
/// `X-Forwarded-*` headers.
pub fn sanitize_request(headers: &mut HeaderMap) {
    remove_where(headers, |name| underscore_refused(name) || is_client_forbidden(name));
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let needs_work = match (cookies.next(), cookies.next()) {
        (None, _) => false,
        (Some(one), None) => mentions_proxy_cookie(one.as_bytes()),
        (Some(_), Some(_)) => true,
    };
    if needs_work {
        join_cookies(headers);
    }
}

/// Whether a (lower-case) request header name is dropped for its `_` (see the module doc; `Mcp-Param-*` is kept).
pub fn underscore_refused(name: &str) -> bool {
    name.contains('_') && !name.starts_with("mcp-param-")
}

/// Whether a cookie header value may hold one of the proxy's cookies (a cheap test before parsing it).
fn mentions_proxy_cookie(value: &[u8]) -> bool {
    value.windows(4).any(|w| w.eq_ignore_ascii_case(b"dcrp"))
}

/// Removes the proxy's own cookies and joins what is left into one `Cookie` header.
fn join_cookies(headers: &mut HeaderMap) {
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    if values.is_empty() {
        return;
    }
    headers.remove(header::COOKIE);
    let mut joined: Vec<u8> = Vec::new();
    for value in &values {
        for pair in value.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() || is_proxy_cookie(pair) {
                continue;
            }
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(pair);
        }
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        if !joined.is_empty() {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// Whether a `name=value` pair (or a `Set-Cookie` value) is one of the proxy's cookies. Names are compared
/// without ASCII case: a browser would not confuse them, but a lenient upstream framework might.
fn is_proxy_cookie(pair: &[u8]) -> bool {
    let mut parts = pair.splitn(3, |b| *b == b'=');
    let name = parts.next().unwrap_or_default().trim_ascii();
    let is_ours = |n: &[u8]| PROXY_COOKIES.iter().any(|c| n.trim_ascii().eq_ignore_ascii_case(c.as_bytes()));
    // `=dcrp=x`: a cookie with an empty name, which browsers send back as `dcrp=x`.
    is_ours(name) || (name.is_empty() && parts.next().is_some_and(is_ours))
}

/// Prepares an upstream's response headers for the client: hop-by-hop headers and any `Set-Cookie` of the
/// proxy's own cookie names removed.
pub fn sanitize_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    if headers.get_all(header::SET_COOKIE).iter().any(|v| is_proxy_cookie(v.as_bytes())) {
        let kept: Vec<HeaderValue> =
            headers.get_all(header::SET_COOKIE).iter().filter(|v| !is_proxy_cookie(v.as_bytes())).cloned().collect();
        headers.remove(header::SET_COOKIE);
        for v in kept {
            headers.append(header::SET_COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscore_names_are_refused_except_mcp_parameters() {
        assert!(underscore_refused("x_forwarded_user"));
        assert!(underscore_refused("mcp_param-x"), "only the exact Mcp-Param- prefix is kept");
        assert!(underscore_refused("x-mcp-param-user_id"));
        assert!(!underscore_refused("mcp-param-user_id"));
        assert!(!underscore_refused("x-forwarded-user"));
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("mcp-session-id", HeaderValue::from_static("abc"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get("mcp-session-id").map(|v| v.as_bytes()), Some(&b"abc"[..]));
    }

    #[test]
    fn identity_headers_go_in_every_spelling() {
        let mut h = HeaderMap::new();
        for name in ["x_forwarded_user", "x-forwarded_email", "x-forwarded-user", "x_real_ip"] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("admin"));
        }
        h.insert("mcp-protocol-version", HeaderValue::from_static("2025-06-18"));
        sanitize_request(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn cookie_crumbs_are_joined_and_the_proxy_cookie_removed() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("dcrp=secret; b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("__HOST-dcrp=x;c=3"));
        sanitize_request(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, vec![HeaderValue::from_static("a=1; b=2; c=3")]);

        let mut only = HeaderMap::new();
        only.insert(header::COOKIE, HeaderValue::from_static("dcrp=secret"));
        sanitize_request(&mut only);
        assert!(only.get(header::COOKIE).is_none());
    }

    #[test]
    fn the_cookie_names_are_those_the_consent_step_sets() {
        for https in [false, true] {
            assert!(PROXY_COOKIES.contains(&crate::oauth::cookies::cookie_name(https)));
            assert!(PROXY_COOKIES.contains(&crate::oauth::cookies::person_cookie_name(https)));
        }
    }

    #[test]
    fn upstream_cannot_set_the_proxy_cookie() {
        let mut h = HeaderMap::new();
        h.append(header::SET_COOKIE, HeaderValue::from_static("dcrp=evil; Path=/"));
        h.append(header::SET_COOKIE, HeaderValue::from_static("session=ok; Path=/"));
        h.append(header::SET_COOKIE, HeaderValue::from_static("__Host-dcrp=evil; Secure; Path=/"));
        h.append(header::SET_COOKIE, HeaderValue::from_static("=dcrp=evil; Path=/"));
        h.append(header::SET_COOKIE, HeaderValue::from_static(" = __Host-dcrp=evil"));
        sanitize_response(&mut h);
        let all: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(all, vec![HeaderValue::from_static("session=ok; Path=/")]);
    }
}
