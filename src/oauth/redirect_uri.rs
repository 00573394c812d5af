//! Redirect URI rules.
//!
//! Registration (RFC 7591 §2, RFC 6749 §3.1.2, RFC 8252 §7.3/§8.3): absolute URI, no fragment, `https`, or `http`
//! only for a loopback host (`127.0.0.1`, `[::1]`, `localhost`).
//! Authorization (RFC 6749 §3.1.2.3, OAuth 2.1 §4.1.1): the requested URI must equal a registered one exactly,
//! except that for a loopback `http` URI the port may differ (RFC 8252 §7.3).

use url::{Host, Url};

/// The longest redirect URI accepted.
pub const MAX_LEN: usize = 2048;

/// Whether a URI's host is loopback (127.0.0.0/8, ::1, localhost).
pub fn is_loopback_uri(uri: &str) -> bool {
    Url::parse(uri).is_ok_and(|u| is_loopback(&u))
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Checks a redirect URI offered at registration; the error says what is wrong with it.
pub fn validate_for_registration(uri: &str) -> Result<(), String> {
    if uri.len() > MAX_LEN {
        return Err(format!("redirect URI longer than {MAX_LEN} characters"));
    }
    let url = Url::parse(uri).map_err(|e| format!("`{uri}` is not an absolute URI: {e}"))?;
    if url.fragment().is_some() || uri.contains('#') {
        return Err(format!("`{uri}` must not contain a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{uri}` must not contain user information"));
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err(format!("`{uri}`: http is allowed only for loopback hosts (127.0.0.1, [::1], localhost)")),
        other => Err(format!("`{uri}`: scheme `{other}` is not allowed; use https or http on loopback")),
    }
}

/// The operator's redirect-URI allowlist: hosts (`loopback` stands for every loopback host) and URL prefixes
/// (from connector presets). Both empty: any redirect URI that passes the registration rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    pub hosts: Vec<String>,
    pub prefixes: Vec<String>,
}

/// Connector presets for `registration.allow`, from the clients' documented callbacks (SPEC §3):
/// Claude `https://claude.ai/api/mcp/auth_callback` and `https://claude.com/api/mcp/auth_callback`, ChatGPT
/// `https://chatgpt.com/connector/oauth/{id}` (SPEC §3) and `https://chatgpt.com/connector_platform_oauth_redirect`
/// (the callback ChatGPT connectors send in practice, e.g. the authorize requests quoted in
/// <https://community.openai.com/t/oauth-missing-scopes-after-reconnect/1366784>), CLI clients on loopback.
pub fn preset(name: &str) -> Option<Allowlist> {
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    match name {
        "claude" => Some(Allowlist {
            hosts: vec![],
            prefixes: owned(&["https://claude.ai/api/mcp/auth_callback", "https://claude.com/api/mcp/auth_callback"]),
        }),
        "chatgpt" => Some(Allowlist {
            hosts: vec![],
            prefixes: owned(&[
                "https://chatgpt.com/connector/oauth/",
                "https://chatgpt.com/connector_platform_oauth_redirect",
            ]),
        }),
        "loopback" => Some(Allowlist { hosts: owned(&["loopback"]), prefixes: vec![] }),
        _ => None,
    }
}

impl Allowlist {
    /// Whether `uri` may be registered.
    pub fn allows(&self, uri: &str) -> bool {
        if self.hosts.is_empty() && self.prefixes.is_empty() {
            return true;
        }
        let Ok(url) = Url::parse(uri) else {
            return false;
        };
        let host = url.host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let prefix_ok = self.prefixes.iter().any(|p| {
            if p.ends_with('/') {
                url.as_str().starts_with(p.as_str()) && url.as_str().len() > p.len()
            } else {
                url.as_str() == p
            }
        });
        prefix_ok || self.hosts.iter().any(|a| a == &host || (a == "loopback" && is_loopback(&url)))
    }
}

/// Returns the registered URI that `requested` matches, if any.
pub fn find_match<'a>(registered: &'a [String], requested: &str) -> Option<&'a String> {
    if let Some(exact) = registered.iter().find(|r| r.as_str() == requested) {
        return Some(exact);
    }
    let req = Url::parse(requested).ok()?;
    if req.scheme() != "http" || !is_loopback(&req) {
        return None;
    }
    registered.iter().find(|r| {
        Url::parse(r).is_ok_and(|reg| {
            reg.scheme() == "http" && reg.host() == req.host() && reg.path() == req.path() && reg.query() == req.query()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_accepts_https_and_loopback_http_only() {
        assert!(validate_for_registration("https://claude.ai/api/mcp/auth_callback").is_ok());
        assert!(validate_for_registration("http://127.0.0.1:33418/callback").is_ok());
        assert!(validate_for_registration("http://localhost/cb").is_ok());
        assert!(validate_for_registration("http://[::1]:9/cb").is_ok());
        assert!(validate_for_registration("http://evil.example/cb").is_err());
        assert!(validate_for_registration("https://a.example/cb#frag").is_err());
        assert!(validate_for_registration("javascript:alert(1)").is_err());
        assert!(validate_for_registration("/relative").is_err());
        assert!(validate_for_registration("https://user:pw@a.example/cb").is_err());
    }

    #[test]
    fn allowlist_matches_hosts_exactly_and_loopback_by_keyword() {
        let allowed = Allowlist { hosts: vec!["claude.ai".to_owned(), "loopback".to_owned()], prefixes: vec![] };
        assert!(allowed.allows("https://claude.ai/api/mcp/auth_callback"));
        assert!(allowed.allows("http://127.0.0.1:5000/cb"));
        assert!(allowed.allows("http://[::1]:5000/cb"));
        assert!(!allowed.allows("https://evil.claude.ai.example/cb"));
        assert!(!allowed.allows("https://chatgpt.com/connector/oauth/x"));
        assert!(Allowlist::default().allows("https://anything.example/cb"));
    }

    #[test]
    fn presets_allow_exactly_the_known_callbacks() {
        let claude = preset("claude").unwrap_or_default();
        assert!(claude.allows("https://claude.ai/api/mcp/auth_callback"));
        assert!(claude.allows("https://claude.com/api/mcp/auth_callback"));
        assert!(!claude.allows("https://claude.ai/api/mcp/auth_callback/../x"));
        assert!(!claude.allows("https://claude.ai/other"));
        let chatgpt = preset("chatgpt").unwrap_or_default();
        assert!(chatgpt.allows("https://chatgpt.com/connector/oauth/abc123"));
        assert!(chatgpt.allows("https://chatgpt.com/connector_platform_oauth_redirect"));
        assert!(!chatgpt.allows("https://chatgpt.com/connector_platform_oauth_redirect/x"));
        assert!(!chatgpt.allows("https://chatgpt.com/connector/oauth/"));
        assert!(!chatgpt.allows("https://chatgpt.com.evil.example/connector/oauth/abc"));
        assert!(preset("loopback").unwrap_or_default().allows("http://127.0.0.1:1/cb"));
        assert!(preset("cursor").is_none());
    }

    #[test]
    fn matching_is_exact_except_the_loopback_port() {
        let reg = vec!["https://a.example/cb".to_owned(), "http://127.0.0.1:1234/callback".to_owned()];
        assert!(find_match(&reg, "https://a.example/cb").is_some());
        assert!(find_match(&reg, "https://a.example/cb/").is_none());
        assert!(find_match(&reg, "https://a.example/cb?x=1").is_none());
        assert!(find_match(&reg, "https://a.example:444/cb").is_none());
        assert!(find_match(&reg, "http://127.0.0.1:5555/callback").is_some());
        assert!(find_match(&reg, "http://127.0.0.1:5555/other").is_none());
        assert!(find_match(&reg, "http://localhost:1234/callback").is_none());
    }
}
