//! Forwarding to the protected upstream (SPEC §6).
//!
//! - The client's bearer is looked up ([`bearer`]) and replaced by the grant's upstream credential: the IdP access
//!   token (refreshed first when close to expiry, once per grant under concurrency), or for the local login the
//!   user's identity in `X-Forwarded-User` / `X-Forwarded-Email`. The client's token never reaches the upstream
//!   (MCP forbids token passthrough), and identity headers sent by the client are always removed.
//! - Hop-by-hop headers (RFC 9110 §7.6.1) are dropped both ways; `X-Forwarded-For/-Proto/-Host` are set.
//! - Bodies stream both ways without buffering (SSE events pass as they come); upstream connections are pooled.
//! - A refused connection is 502, no response headers within `upstream.response_timeout` is 504, both with JSON.
//! - An upstream 401/403 challenge is replaced by the proxy's own, so that the client is never sent to the IdP
//!   directly.

pub mod bearer;
pub mod forward;
pub mod headers;
pub mod target;

pub use forward::Forwarder;
