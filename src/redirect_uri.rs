//! Redirect URI rules.
//!
//! Registration (RFC 7591 §2, RFC 6749 §3.1.2, RFC 8252 §7.3/§8.3): absolute URI, no fragment, `https`, or `http`
//! only for a loopback host (`127.0.0.1`, `[::1]`, `localhost`). A private-use-scheme URI (RFC 8252 §7.1, e.g.
//! Cursor's `cursor://anysphere.cursor-mcp/oauth/callback`) passes only when the operator lists it exactly
//! (`registration.private_use_redirect_uris`): MCP allows only https and loopback, so each one is a deliberate,
//! narrow exception (the code is still PKCE-bound, the same local-machine trust as a loopback callback).
//! `application_type` (OpenID Connect Dynamic Client Registration 1.0 §2; MCP 2026-07-28 asks clients to send it,
//! SEP-837), when the client sends it: `web` allows only `https` URIs on a host that is not loopback; `native`
//! allows the three redirects of RFC 8252 §7: private-use schemes (§7.1: a reverse-domain scheme such as
//! `com.example.app:/cb`, or one the operator lists), claimed `https` URIs (§7.2) and `http` on a loopback host
//! (§7.3), never plain `http` elsewhere. (OIDC Registration names only the first and the last for native clients;
//! the MCP 2.x SDK sends `native` for any registration that lists a loopback or app-scheme URI beside its https
//! ones, as VS Code's and Cursor's do.) RFC 7591 defines no `application_type`; OIDC's
//! default `web` constrains only implicit-grant clients, which this server does not serve, so a registration
//! without it keeps the rules above.
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

/// Schemes never accepted as a redirect, even when listed: they run code, read files or are handled by the
/// browser itself.
pub const FORBIDDEN_SCHEMES: [&str; 12] = [
    "javascript",
    "data",
    "vbscript",
    "file",
    "about",
    "blob",
    "filesystem",
    "ftp",
    "ws",
    "wss",
    "mailto",
    "view-source",
];

/// Checks a private-use-scheme URI for `registration.private_use_redirect_uris`.
pub fn validate_private_use(uri: &str) -> Result<(), String> {
    let url = Url::parse(uri).map_err(|e| format!("`{uri}` is not an absolute URI: {e}"))?;
    if matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{uri}` is http(s); list private-use schemes only (such as cursor://…)"));
    }
    if FORBIDDEN_SCHEMES.contains(&url.scheme()) {
        return Err(format!("`{uri}`: the scheme `{}` is never a safe redirect", url.scheme()));
    }
    if url.host().is_none() || url.fragment().is_some() || url.as_str() != uri {
        return Err(format!("`{uri}` must be a canonical scheme://host/path URI without a fragment"));
    }
    Ok(())
}

/// Checks a redirect URI offered at registration; the error says what is wrong with it. `private_use`: the
/// private-use-scheme URIs the operator accepts, matched exactly.
pub fn validate_for_registration(uri: &str, private_use: &[String]) -> Result<(), String> {
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
        _ if private_use.iter().any(|p| p == uri) => Ok(()),
        other => Err(format!("`{uri}`: scheme `{other}` is not allowed; use https or http on loopback")),
    }
}

/// OIDC Registration §2 `application_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplicationType {
    Web,
    Native,
}

impl ApplicationType {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "web" => Some(Self::Web),
            "native" => Some(Self::Native),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Web => "web",
            Self::Native => "native",
        }
    }
}

/// Checks a redirect URI offered with an `application_type`; the error names the field.
pub fn validate_for_application_type(uri: &str, kind: ApplicationType, private_use: &[String]) -> Result<(), String> {
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
    let scheme = url.scheme();
    let allowed = match kind {
        ApplicationType::Web => scheme == "https" && url.host().is_some() && !is_loopback(&url),
        ApplicationType::Native => {
            (scheme == "http" && is_loopback(&url))
                || (scheme == "https" && url.host().is_some())
                || private_use.iter().any(|p| p == uri)
                || (scheme.contains('.') && !FORBIDDEN_SCHEMES.contains(&scheme))
        }
    };
    if allowed {
        return Ok(());
    }
    Err(match kind {
        ApplicationType::Web => {
            format!("`{uri}`: `application_type` \"web\" allows only https redirect URIs on a non-loopback host")
        }
        ApplicationType::Native => format!(
            "`{uri}`: `application_type` \"native\" allows https, http on a loopback host (127.0.0.1, [::1], \
             localhost) or a private-use scheme such as com.example.app:/callback"
        ),
    })
}

/// The operator's redirect-URI allowlist: hosts (`loopback` stands for every loopback host) and URL prefixes
/// (from connector presets). Both empty: any redirect URI that passes the registration rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    pub hosts: Vec<String>,
    pub prefixes: Vec<String>,
    /// Private-use-scheme URIs that pass the scheme rule (exact); `hosts`/`prefixes` still apply to them.
    pub private_use: Vec<String>,
}

/// Connector presets for `registration.allow`, from the clients' documented callbacks (SPEC §3):
/// Claude `https://claude.ai/api/mcp/auth_callback` and `https://claude.com/api/mcp/auth_callback`, ChatGPT
/// `https://chatgpt.com/connector/oauth/{id}` (SPEC §3) and `https://chatgpt.com/connector_platform_oauth_redirect`
/// (the callback ChatGPT connectors send in practice, e.g. the authorize requests quoted in
/// <https://community.openai.com/t/oauth-missing-scopes-after-reconnect/1366784>), CLI clients on loopback; Cursor
/// `https://www.cursor.com/agents/mcp/oauth/callback` and `cursor://anysphere.cursor-mcp/oauth/callback` (what
/// Cursor registers, with a loopback URI, e.g. erp-mafia/accounted#2225, bytebase/bytebase#20510); VS Code
/// `https://vscode.dev/redirect` and `https://insiders.vscode.dev/redirect` (with loopback ones,
/// microsoft/vscode#278512).
pub fn preset(name: &str) -> Option<Allowlist> {
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    match name {
        "claude" => Some(Allowlist {
            prefixes: owned(&["https://claude.ai/api/mcp/auth_callback", "https://claude.com/api/mcp/auth_callback"]),
            ..Allowlist::default()
        }),
        "chatgpt" => Some(Allowlist {
            prefixes: owned(&[
                "https://chatgpt.com/connector/oauth/",
                "https://chatgpt.com/connector_platform_oauth_redirect",
            ]),
            ..Allowlist::default()
        }),
        "loopback" => Some(Allowlist { hosts: owned(&["loopback"]), ..Allowlist::default() }),
        "cursor" => Some(Allowlist {
            prefixes: owned(&[
                "https://www.cursor.com/agents/mcp/oauth/callback",
                "cursor://anysphere.cursor-mcp/oauth/callback",
            ]),
            ..Allowlist::default()
        }),
        "vscode" => Some(Allowlist {
            prefixes: owned(&["https://vscode.dev/redirect", "https://insiders.vscode.dev/redirect"]),
            ..Allowlist::default()
        }),
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
        let v = |uri: &str| validate_for_registration(uri, &[]);
        assert!(v("https://claude.ai/api/mcp/auth_callback").is_ok());
        assert!(v("http://127.0.0.1:33418/callback").is_ok());
        assert!(v("http://localhost/cb").is_ok());
        assert!(v("http://[::1]:9/cb").is_ok());
        assert!(v("http://evil.example/cb").is_err());
        assert!(v("https://a.example/cb#frag").is_err());
        assert!(v("javascript:alert(1)").is_err());
        assert!(v("/relative").is_err());
        assert!(v("https://user:pw@a.example/cb").is_err());
        assert!(v("cursor://anysphere.cursor-mcp/oauth/callback").is_err());
    }

    #[test]
    fn application_type_decides_which_redirects_pass() {
        let listed = vec!["cursor://anysphere.cursor-mcp/oauth/callback".to_owned()];
        let web = |u: &str| validate_for_application_type(u, ApplicationType::Web, &listed);
        let native = |u: &str| validate_for_application_type(u, ApplicationType::Native, &listed);
        assert!(web("https://app.example/cb").is_ok());
        for bad in ["http://127.0.0.1:9/cb", "https://localhost/cb", "https://127.0.0.1/cb", "com.example.app:/cb"] {
            assert!(web(bad).is_err_and(|e| e.contains("application_type")), "{bad}");
        }
        for ok in ["http://127.0.0.1:9/cb", "http://[::1]/cb", "http://localhost:3/cb", "com.example.app:/cb"] {
            assert!(native(ok).is_ok(), "{ok}");
        }
        assert!(native("cursor://anysphere.cursor-mcp/oauth/callback").is_ok());
        assert!(native("https://vscode.dev/redirect").is_ok());
        for bad in ["http://app.example/cb", "javascript:alert(1)", "myapp:/cb", "x.y:/cb#f"] {
            assert!(native(bad).is_err(), "{bad}");
        }
        assert_eq!(ApplicationType::parse("desktop"), None);
    }

    #[test]
    fn private_use_schemes_pass_only_when_listed_exactly() {
        let listed = vec!["cursor://anysphere.cursor-mcp/oauth/callback".to_owned()];
        assert!(validate_for_registration("cursor://anysphere.cursor-mcp/oauth/callback", &listed).is_ok());
        assert!(validate_for_registration("cursor://anysphere.cursor-mcp/oauth/callback/x", &listed).is_err());
        assert!(validate_for_registration("cursor://anysphere.cursor-mcp/oauth/callback#f", &listed).is_err());
        assert!(validate_for_registration("vscode://vscode.mcp/cb", &listed).is_err());
        assert!(validate_private_use("cursor://anysphere.cursor-mcp/oauth/callback").is_ok());
        for bad in [
            "javascript://x/alert(1)",
            "data://x/y",
            "file://host/etc/passwd",
            "https://a.example/cb",
            "cursor:no-host",
            "x",
        ] {
            assert!(validate_private_use(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowlist_matches_hosts_exactly_and_loopback_by_keyword() {
        let allowed = Allowlist { hosts: vec!["claude.ai".to_owned(), "loopback".to_owned()], ..Allowlist::default() };
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
        let cursor = preset("cursor").unwrap_or_default();
        assert!(cursor.allows("cursor://anysphere.cursor-mcp/oauth/callback"));
        assert!(cursor.allows("https://www.cursor.com/agents/mcp/oauth/callback"));
        assert!(!cursor.allows("cursor://evil/oauth/callback"));
        assert!(preset("vscode").unwrap_or_default().allows("https://vscode.dev/redirect"));
        assert!(preset("windsurf").is_none());
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
