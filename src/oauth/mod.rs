//! The OAuth 2.1 authorization server's rules and vocabulary, as plain types and functions: no [`crate::app::App`],
//! no I/O, unit-tested without a server. The endpoints that apply them are in [`crate::endpoints`]; the redirect
//! URI rules, which the configuration holds too, in [`crate::redirect_uri`].
//!
//! - [`error`]: the RFC 6749 §5.2 error codes; [`grant_type`]: which grant a token request asks for.
//! - [`register`]: RFC 7591 client metadata (registration and metadata documents alike).
//! - [`authorize`]: an `/authorize` request (RFC 6749 §4.1.1, RFC 7636, RFC 8707); [`pkce`], [`scope`].
//! - [`flow`]: the sealed tickets of a sign-in; [`cookies`]: the browser binding and person cookies.
//! - [`bearer_token`]: RFC 6750 §2 bearer parsing (the proxy's lookup uses it too).
//! - [`metadata`]: the RFC 8414 and RFC 9728 documents.

pub mod authorize;
pub mod bearer_token;
pub mod cookies;
pub mod error;
pub mod flow;
pub mod grant_type;
pub mod metadata;
pub mod pkce;
pub mod register;
pub mod scope;
