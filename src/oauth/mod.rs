//! The OAuth 2.1 authorization server the proxy presents to MCP clients.
//!
//! Each module holds the rules of one endpoint as plain functions, unit-tested without a server; the HTTP glue is
//! in [`crate::router`].

pub mod authorize;
pub mod consent;
pub mod error;
pub mod flow;
pub mod metadata;
pub mod pkce;
pub mod redirect_uri;
pub mod register;
pub mod scope;
pub mod token;
