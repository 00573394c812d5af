//! Scope rules (RFC 6749 §3.3).
//!
//! The proxy offers the scopes it asks of the IdP. A requested scope is syntax-checked; values the proxy does not
//! offer are ignored (§3.3 lets the server "fully or partially ignore" the request; clients such as Claude send
//! their own scope names), and the token response then states the granted scope. A request naming no known
//! scope, or none at all, gets every offered scope (ChatGPT reconnects without a scope).

use crate::config::{is_scope_char, PathScopes};
use crate::oauth::error::{ErrorCode, OAuthError};

/// Splits a scope parameter, checking the `scope-token` grammar.
pub fn parse(scope: &str) -> Result<Vec<String>, OAuthError> {
    let mut out: Vec<String> = Vec::new();
    for token in scope.split(' ').filter(|t| !t.is_empty()) {
        if !token.chars().all(is_scope_char) {
            return Err(OAuthError::new(ErrorCode::InvalidScope, "scope contains characters RFC 6749 §3.3 forbids"));
        }
        if !out.iter().any(|t| t == token) {
            out.push(token.to_owned());
        }
    }
    Ok(out)
}

/// The scopes granted for a request: the offered ones it names, or all offered ones.
pub fn resolve(requested: Option<&str>, offered: &[String]) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = requested else {
        return Ok(offered.to_vec());
    };
    let granted: Vec<String> = parse(requested)?.into_iter().filter(|s| offered.contains(s)).collect();
    Ok(if granted.is_empty() { offered.to_vec() } else { granted })
}

/// A refresh may ask for the same or fewer scopes (RFC 6749 §6).
pub fn check_subset(requested: &str, granted: &str) -> Result<(), OAuthError> {
    let asked = parse(requested)?;
    match asked.iter().find(|s| !granted.split(' ').any(|g| g == s.as_str())) {
        Some(extra) => Err(OAuthError::new(
            ErrorCode::InvalidScope,
            format!("scope `{extra}` was not granted to this refresh token"),
        )),
        None => Ok(()),
    }
}

/// The scopes a request for `path` needs that `granted` (space-separated) lacks, over every matching rule, in
/// configuration order; empty when the token is enough.
///
/// `path` must be the canonical path that is forwarded (`http::target::canonical_path`: no dot segment, no
/// encoded separator, no parameter), so that the rule judges exactly what the upstream will route. Prefixes are
/// compared without ASCII case, since some upstreams route `/MCP/Admin` to `/mcp/admin`.
pub fn missing_for_path<'a>(rules: &'a [PathScopes], path: &str, granted: &str) -> Vec<&'a str> {
    let mut missing: Vec<&str> = Vec::new();
    for rule in rules.iter().filter(|r| prefix_matches(&r.path_prefix, path)) {
        for scope in &rule.scopes {
            if !granted.split(' ').any(|g| g == scope) && !missing.contains(&scope.as_str()) {
                missing.push(scope);
            }
        }
    }
    missing
}

/// The scope to put in a 403 `insufficient_scope` challenge: the granted scopes and then the missing ones (the
/// client asks for all of them again and keeps what it had). `None` when nothing is missing.
///
/// `offline_access` is never put in the challenge (MCP 2026-07-28, SEP-2207): it is about refresh tokens, which the
/// proxy issues whatever the scope.
pub fn step_up<'a>(granted: &'a str, missing: impl IntoIterator<Item = &'a str>) -> Option<(String, String)> {
    let mut wanted: Vec<&str> = granted.split(' ').filter(|s| !s.is_empty() && *s != "offline_access").collect();
    let mut added: Vec<&str> = Vec::new();
    for scope in missing {
        if !wanted.contains(&scope) {
            wanted.push(scope);
            added.push(scope);
        }
    }
    (!added.is_empty()).then(|| (wanted.join(" "), added.join(" ")))
}

/// Whether `path` is `prefix` or below it, without regard to ASCII case (an empty prefix matches every path).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.len() >= prefix.len()
        && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/' || prefix.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered() -> Vec<String> {
        vec!["openid".into(), "profile".into(), "User.Read".into()]
    }

    #[test]
    fn unknown_scopes_are_ignored_and_empty_means_all() {
        assert_eq!(resolve(Some("openid claudeai"), &offered()).ok(), Some(vec!["openid".to_owned()]));
        assert_eq!(resolve(Some("claudeai"), &offered()).ok(), Some(offered()));
        assert_eq!(resolve(None, &offered()).ok(), Some(offered()));
    }

    #[test]
    fn bad_syntax_is_invalid_scope() {
        assert_eq!(resolve(Some("open\"id"), &offered()).err().map(|e| e.code), Some(ErrorCode::InvalidScope));
    }

    fn admin_rule() -> Vec<PathScopes> {
        vec![
            PathScopes { path_prefix: "/mcp/admin".into(), scopes: vec!["Mail.Send".into()] },
            PathScopes { path_prefix: "/mcp/admin/users".into(), scopes: vec!["User.Read".into(), "Mail.Send".into()] },
        ]
    }

    #[test]
    fn path_rules_name_what_the_token_lacks() {
        let rules = admin_rule();
        assert!(missing_for_path(&rules, "/mcp", "openid").is_empty());
        assert!(missing_for_path(&rules, "/mcp/administrator", "openid").is_empty());
        assert_eq!(missing_for_path(&rules, "/mcp/admin", "openid"), vec!["Mail.Send"]);
        assert_eq!(missing_for_path(&rules, "/mcp/admin/x?y", "openid"), vec!["Mail.Send"]);
        assert!(missing_for_path(&rules, "/mcp/admin", "openid Mail.Send").is_empty());
        assert_eq!(missing_for_path(&rules, "/mcp/admin/users/1", "openid"), vec!["Mail.Send", "User.Read"]);
        assert_eq!(missing_for_path(&rules, "/mcp/admin/users", "Mail.Send"), vec!["User.Read"]);
    }

    #[test]
    fn step_up_keeps_granted_scopes_first() {
        assert_eq!(
            step_up("openid profile", ["Mail.Send", "openid"]),
            Some(("openid profile Mail.Send".to_owned(), "Mail.Send".to_owned()))
        );
        assert_eq!(step_up("openid", ["openid"]), None);
        assert_eq!(
            step_up("openid offline_access", ["Mail.Send"]),
            Some(("openid Mail.Send".to_owned(), "Mail.Send".to_owned()))
        );
    }

    #[test]
    fn path_rules_ignore_case() {
        let rules = admin_rule();
        for path in ["/MCP/Admin", "/mcp/ADMIN/x"] {
            assert_eq!(missing_for_path(&rules, path, "openid"), vec!["Mail.Send"], "{path}");
        }
    }

    #[test]
    fn refresh_cannot_widen_scope() {
        assert!(check_subset("openid", "openid profile").is_ok());
        assert!(check_subset("openid Mail.Send", "openid profile").is_err());
    }
}
