//! The OAuth 2.1 authorization server the proxy presents to MCP clients.
//!
//! Each module holds one endpoint: a thin handler (parse → rule → response) and the rules as plain functions,
//! unit-tested without a server. [`crate::router`] only routes to the handlers.
//!
//! - [`client_config`]: RFC 7591 registration and RFC 7592 client management; rules in [`register`],
//!   [`redirect_uri`].
//! - [`sign_in`]: `/authorize` → consent → IdP → `/callback` (RFC 6749 §4.1, RFC 7636, RFC 9207); rules in
//!   [`authorize`], [`consent`], [`flow`] (the sealed tickets), [`pkce`], [`scope`].
//! - [`token`] (RFC 6749 §4.1.3, §6, RFC 9700), [`revoke`] (RFC 7009), [`introspect`] (RFC 7662);
//!   [`bearer_token`]: RFC 6750 §2 bearer parsing (the proxy's lookup uses it too).
//! - [`metadata`] (RFC 8414, RFC 9728); [`requests`]: form bodies and client lookup shared by the handlers.

pub mod authorize;
pub mod bearer_token;
pub mod client_auth;
pub mod client_config;
pub mod consent;
pub mod error;
pub mod flow;
pub mod grant_type;
pub mod introspect;
pub mod metadata;
pub mod pkce;
pub mod redirect_uri;
pub mod register;
pub mod requests;
pub mod revoke;
pub mod scope;
pub mod sign_in;
pub mod token;
