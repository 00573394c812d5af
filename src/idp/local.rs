//! The built-in login (`idp.kind = "local"`), for development and the embedded default.
//!
//! Users come from `[[idp.users]]` with argon2 PHC password hashes. After consent the browser is sent to
//! `/login?state=…` (the proxy's own IdP state); a correct password completes the authorization like an IdP
//! callback would. The upstream then receives the user's identity in `X-Forwarded-User` / `X-Forwarded-Email`
//! instead of an IdP token. An unknown user costs the same argon2 work as a wrong password.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::Argon2;
use http::{Response, StatusCode};

use crate::config::LocalUser;
use crate::http::html::{escape, page};
use crate::http::Body;
use crate::store::Identity;

/// The configured users.
pub struct LocalUsers {
    users: Vec<LocalUser>,
    /// A hash verified against when the user is unknown, so that timing does not reveal usernames.
    decoy_hash: String,
}

impl LocalUsers {
    pub fn new(users: &[LocalUser]) -> Self {
        Self { users: users.to_vec(), decoy_hash: hash_password("decoy password").unwrap_or_default() }
    }

    /// Checks a username and password; blocking (argon2), so call it from `spawn_blocking`.
    pub fn verify(&self, username: &str, password: &str) -> Option<Identity> {
        let user = self.users.iter().find(|u| u.username == username);
        let hash = user.map_or(self.decoy_hash.as_str(), |u| u.password_hash.as_str());
        let ok = PasswordHash::new(hash)
            .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok());
        let user = user.filter(|_| ok)?;
        Some(Identity {
            sub: user.username.clone(),
            name: user.name.clone(),
            email: user.email.clone(),
            preferred_username: Some(user.username.clone()),
            tid: None,
        })
    }
}

/// An argon2id PHC hash of `password` with a random salt.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    crate::crypto::fill_random(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// The login form; `error` is shown above it after a failed attempt.
pub fn login_page(state: &str, error: Option<&str>) -> Response<Body> {
    let error_html = error.map(|e| format!("<p class=\"error\">{}</p>", escape(e))).unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1>{error_html}<form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"state\" value=\"{state}\">\
         <p><label>Username<br><input name=\"username\" autocomplete=\"username\" required></label></p>\
         <p><label>Password<br><input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
         <button type=\"submit\">Sign in</button></form>",
        state = escape(state)
    );
    let status = if error.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    page(status, "Sign in", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_verifies_only_for_its_user() {
        let hash = hash_password("s3cret").unwrap_or_default();
        let users = LocalUsers::new(&[LocalUser {
            username: "alice".into(),
            password_hash: hash,
            email: Some("alice@example.com".into()),
            name: None,
        }]);
        assert_eq!(users.verify("alice", "s3cret").map(|i| i.sub), Some("alice".to_owned()));
        assert!(users.verify("alice", "wrong").is_none());
        assert!(users.verify("bob", "s3cret").is_none());
    }
}
