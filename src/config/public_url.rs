//! `server.public_url`: the proxy's public origin, the issuer of RFC 8414 §2 verbatim and the base of every URL it
//! advertises (RFC 9728 `resource`, the IdP callback).
//!
//! Invariants of a [`PublicUrl`]: an http or https origin (scheme, host, optional port; no path, query, fragment
//! or user) written without a trailing slash; http only on a loopback host or behind a TLS terminator. Whether it
//! is https (cookies get `Secure` and the `__Host-` prefix) is asked of the type, not of the text.

use std::fmt;

use url::Url;

use super::{invalid, is_loopback_host, ConfigError};

const KEY: &str = "server.public_url";

/// The proxy's public origin, e.g. `https://mcp.example.com`; derefs to that text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    origin: String,
    https: bool,
}

impl PublicUrl {
    /// Checks `text` as an origin; plain http on a non-loopback host only when `behind_tls_terminator`.
    pub(crate) fn parse(text: &str, behind_tls_terminator: bool) -> Result<Self, ConfigError> {
        let url = Url::parse(text).map_err(|e| invalid(KEY, format!("`{text}` is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid(KEY, "must be an http:// or https:// URL with a host"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(invalid(
                KEY,
                "must be an origin such as https://mcp.example.com (no path, query, fragment or user)",
            ));
        }
        let https = url.scheme() == "https";
        if !https && !is_loopback_host(&url) && !behind_tls_terminator {
            return Err(invalid(
                KEY,
                "http:// is allowed only on loopback; use https:// or set server.behind_tls_terminator = true",
            ));
        }
        Ok(Self { origin: url.as_str().trim_end_matches('/').to_owned(), https })
    }

    /// The origin without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.origin
    }

    /// Whether the scheme is https.
    pub fn is_https(&self) -> bool {
        self.https
    }
}

impl std::ops::Deref for PublicUrl {
    type Target = str;

    fn deref(&self) -> &str {
        &self.origin
    }
}

impl AsRef<str> for PublicUrl {
    fn as_ref(&self) -> &str {
        &self.origin
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)
    }
}

impl PartialEq<&str> for PublicUrl {
    fn eq(&self, other: &&str) -> bool {
        self.origin == *other
    }
}

impl serde::Serialize for PublicUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, behind: bool) -> Result<(String, bool), String> {
        PublicUrl::parse(text, behind).map(|u| (u.to_string(), u.is_https())).map_err(|e| e.to_string())
    }

    #[test]
    fn an_origin_loses_its_trailing_slash_and_knows_its_scheme() {
        assert_eq!(parse("https://MCP.example.com/", false), Ok(("https://mcp.example.com".to_owned(), true)));
        assert_eq!(parse("http://127.0.0.1:8080", false), Ok(("http://127.0.0.1:8080".to_owned(), false)));
        assert_eq!(parse("http://localhost:8080/", false), Ok(("http://localhost:8080".to_owned(), false)));
        assert_eq!(parse("https://[::1]:8443", false), Ok(("https://[::1]:8443".to_owned(), true)));
        // An https-looking host on plain http is still plain http.
        assert_eq!(parse("http://https.example/", true), Ok(("http://https.example".to_owned(), false)));
    }

    #[test]
    fn anything_but_an_origin_is_refused_by_key() {
        for bad in [
            "https://x.example/base",
            "https://x.example/?q",
            "https://x.example/#f",
            "https://u@x.example",
            "ftp://x.example",
            "mcp.example.com",
            "data:text/plain,x",
        ] {
            let err = parse(bad, true).err().unwrap_or_default();
            assert!(err.starts_with("config key `server.public_url`"), "{bad}: {err}");
        }
    }

    #[test]
    fn plain_http_beyond_loopback_needs_a_tls_terminator() {
        let err = parse("http://mcp.example.com", false).err().unwrap_or_default();
        assert!(err.contains("behind_tls_terminator"), "{err}");
        assert_eq!(parse("http://mcp.example.com", true), Ok(("http://mcp.example.com".to_owned(), false)));
    }
}
