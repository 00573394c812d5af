//! Bearer tokens as clients present them (RFC 6750 §2): the `Authorization: Bearer` header, and the refused
//! query form (§2.3).
//!
//! Invariants:
//! - Exactly one `Authorization` header; the scheme is case-insensitive (RFC 9110 §11.1); a token is 1–512
//!   characters. Anything else is a [`BearerProblem`], never a panic.
//! - Used by the proxy's bearer lookup and by the endpoints that take a registration token (RFC 7591 §3,
//!   RFC 7592 §2).

use http::{header, HeaderMap};

/// Why a bearer token was refused (RFC 6750 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerProblem {
    /// No credentials: the challenge carries no `error` (RFC 6750 §3.1).
    Missing,
    /// Unknown, expired, revoked or malformed.
    InvalidToken,
    /// Sent somewhere other than the Authorization header (query string); RFC 6750 §3.1 `invalid_request`.
    InvalidRequest,
}

/// Extracts the token of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110 §11.1).
pub fn token_from_headers(headers: &HeaderMap) -> Result<&str, BearerProblem> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(BearerProblem::Missing)?;
    if values.next().is_some() {
        return Err(BearerProblem::InvalidRequest);
    }
    let value = value.to_str().map_err(|_| BearerProblem::InvalidToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(BearerProblem::InvalidToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerProblem::InvalidToken);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > 512 {
        return Err(BearerProblem::InvalidToken);
    }
    Ok(token)
}

/// Whether the query string carries `access_token` (RFC 6750 §2.3), which the proxy refuses.
pub fn token_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "access_token"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(v: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for value in v {
            h.append(header::AUTHORIZATION, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_refused() {
        assert_eq!(token_from_headers(&headers(&["bearer abc"])), Ok("abc"));
        assert_eq!(token_from_headers(&headers(&["Bearer abc"])), Ok("abc"));
        assert_eq!(token_from_headers(&headers(&["Basic abc"])), Err(BearerProblem::InvalidToken));
        assert_eq!(token_from_headers(&headers(&[])), Err(BearerProblem::Missing));
        assert_eq!(token_from_headers(&headers(&["Bearer a", "Bearer b"])), Err(BearerProblem::InvalidRequest));
        assert_eq!(token_from_headers(&headers(&["Bearer"])), Err(BearerProblem::InvalidToken));
    }

    #[test]
    fn access_token_in_query_is_detected() {
        assert!(token_in_query(Some("a=1&access_token=x")));
        assert!(!token_in_query(Some("a=1")));
        assert!(!token_in_query(None));
    }
}
