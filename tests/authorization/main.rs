//! The authorization server: sign-in through the fake Entra ID and the local login, clients of every kind
//! (registered, metadata documents, `private_key_jwt`), pages, the admin API, operations and the audit trail.
//!
//! One test crate of modules (issue 24): the integration tests link once per crate, not once per file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod audit;
mod azure_flow;
mod cae;
mod client_documents;
mod clients;
mod local_login;
mod operations;
mod pages;
mod private_key_jwt;
mod readiness;
