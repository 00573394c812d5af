//! Scope rules (RFC 6749 §3.3).
//!
//! The proxy offers the scopes it asks of the IdP. A requested scope is syntax-checked; values the proxy does not
//! offer are ignored (§3.3 lets the server "fully or partially ignore" the request; clients such as Claude send
//! their own scope names), and the token response then states the granted scope. A request naming no known
//! scope, or none at all, gets every offered scope (ChatGPT reconnects without a scope).

use crate::config::is_scope_char;
use crate::error::{ErrorCode, OAuthError};

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

    #[test]
    fn refresh_cannot_widen_scope() {
        assert!(check_subset("openid", "openid profile").is_ok());
        assert!(check_subset("openid Mail.Send", "openid profile").is_err());
    }
}
