//! The state stores across restarts and replicas: snapshots, a real `redis-server` (single, cluster, TLS with ACL),
//! sealed records, and replicas killed mid-flow.
//!
//! One test crate of modules (issue 24): the integration tests link once per crate, not once per file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod contract;
mod durability;
mod replicas;
mod shared_store;
mod shared_store_cluster;
mod shared_store_connection;
mod shared_store_wrap;
