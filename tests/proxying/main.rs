//! Forwarding and serving: the proxy in front of a fake upstream, as an attacker drives it (framing, floods, paths,
//! policy, TLS, the fast path against hyper, the per-core and current-thread runtimes).
//!
//! One test crate of modules (issue 24): the integration tests link once per crate, not once per file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod attack_review;
mod bad_input;
mod connections;
mod differential;
mod fast_path;
mod mcp_2026;
mod per_core;
mod proxy_hardening;
mod routes;
mod runtime_shape;
mod security;
mod tls;
mod upstream_pool;
