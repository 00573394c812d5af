//! The `grant_type` of a token request (RFC 6749 §4): read once, against [`GrantType::ALL`], by `/token`
//! ([`crate::endpoints::token::exchange`]) and by the checks before it ([`crate::client_documents::check_token_request`]).
//! A leaf: it knows the parameters, the grant types and the OAuth error, nothing that serves requests.

use crate::http::params::Params;
use crate::oauth::error::{ErrorCode, OAuthError};
use crate::store::GrantType;

/// The request's `grant_type`, one of [`GrantType::ALL`]: `unsupported_grant_type` (naming the ones there are)
/// otherwise; `invalid_request` when it is missing or repeated.
pub fn requested(params: &Params) -> Result<GrantType, OAuthError> {
    let name = params.require("grant_type")?;
    GrantType::parse(name).ok_or_else(|| {
        OAuthError::new(
            ErrorCode::UnsupportedGrantType,
            format!("grant_type `{name}` is not supported; use {}", GrantType::names().join(" or ")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_grant_type_is_read_and_others_are_refused_by_name() {
        let read = |q: &str| requested(&Params::parse(q.as_bytes()).map_err(|_| ()).unwrap_or_default());
        assert_eq!(read("grant_type=authorization_code"), Ok(GrantType::AuthorizationCode));
        assert_eq!(read("grant_type=refresh_token"), Ok(GrantType::RefreshToken));
        let refused = read("grant_type=password").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("`password`") && refused.contains("authorization_code or refresh_token"), "{refused}");
        assert!(read("").is_err());
    }
}
