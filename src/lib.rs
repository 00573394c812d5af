//! dcr-proxy: an OAuth 2.1 sidecar that lets MCP clients register themselves (RFC 7591) and log in through an
//! identity provider that has no Dynamic Client Registration, such as Microsoft Entra ID.
//!
//! # Flow
//! ```text
//! MCP client                 dcr-proxy                               IdP (Entra ID / OIDC / local)   upstream
//!  POST /mcp (no token) ───▶ 401 WWW-Authenticate: Bearer resource_metadata=…
//!  GET metadata ───────────▶ RFC 9728 + RFC 8414 documents
//!  POST /register ─────────▶ client_id (+secret)
//!  GET /authorize ─────────▶ consent page ─approve─▶ 302 IdP /authorize (proxy's client_id, state, PKCE)
//!                            GET /callback?code ◀──────────── user logs in
//!                            POST IdP token endpoint ───────▶ access + refresh + id token
//!                            302 client redirect_uri?code&state&iss
//!  POST /token ────────────▶ opaque access + refresh token (hashes → grant → IdP tokens)
//!  POST /mcp Bearer <ours> ▶ swap: Authorization: Bearer <IdP access token> ───────────────────────▶ streamed
//! ```
//!
//! # Layout
//! - [`config`]: `proxy.toml` → validated [`config::Config`].
//! - [`server`]: accept loop, TLS (rustls), HTTP/1.1 + HTTP/2, connection deadlines and caps, graceful shutdown.
//! - [`endpoint`]: the request path parsed once into an [`endpoint::Endpoint`]. [`router`]: the
//!   `match (method, endpoint)`.
//! - [`endpoints`]: the authorization server's endpoints, one module each; [`oauth`]: their rules as plain
//!   functions; [`redirect_uri`]: the redirect URI rules (the configuration holds an allowlist).
//! - [`idp`]: upstream identity providers (OIDC discovery, the Azure preset, local login).
//! - [`tool_policy`]: per-tool authorization (`[[policy.tools]]`) judged from the JSON-RPC body; listings narrowed.
//! - [`proxy`]: bearer lookup, upstream credential (refresh, single flight), streaming forwarder.
//! - [`client_documents`]: Client ID Metadata Documents (URL client_ids), fetched without SSRF.
//! - [`store`]: clients, codes, grants and token hashes behind named operations; the sweeper and snapshot writer.
//! - [`admin`]: the admin API (own listener, token from the environment): list and revoke, registration switch.
//! - [`audit`]: the audit trail, one JSON line per security event, written off the request path.
//! - [`crypto`]: random tokens, SHA-256, PKCE, AEAD. [`error`]: every error and its one response mapping.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod client_documents;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod endpoints;
pub mod error;
pub mod http;
pub mod idp;
pub mod jwk;
pub mod log_writer;
pub mod metrics;
pub mod oauth;
pub mod proxy;
pub mod rate_limit;
pub mod readiness;
pub mod redirect_uri;
pub mod router;
pub mod server;
pub mod store;
pub mod tool_policy;
