//! End to end: the official MCP SDK clients (1.x and 2.x, Node) and headless Chromium against the running proxy.
//!
//! One test crate of modules (issue 24): the integration tests link once per crate, not once per file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod e2e_mcp_sdk;
mod e2e_mcp_sdk2;
mod pages_browser;
