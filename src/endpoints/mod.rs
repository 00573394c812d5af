//! The authorization server's endpoints, one module each: a thin handler (parse → rule → response) over the
//! rules of [`crate::oauth`]. [`crate::router`] only routes to the handlers.
//!
//! - [`client_config`]: RFC 7591 registration and RFC 7592 client management.
//! - [`sign_in`]: `/authorize` → [`consent`] → IdP → `/callback` (RFC 6749 §4.1, RFC 7636, RFC 9207).
//! - [`token`] (RFC 6749 §4.1.3, §6, RFC 9700), [`revoke`] (RFC 7009), [`introspect`] (RFC 7662).
//! - [`client_auth`]: client authentication, one module for every endpoint that authenticates a client;
//!   [`requests`]: form bodies and client lookup shared by the handlers.

pub mod client_auth;
pub mod client_config;
pub mod consent;
pub mod introspect;
pub mod requests;
pub mod revoke;
pub mod sign_in;
pub mod token;
