//! Fills the store with N grants carrying Entra-sized upstream tokens (2 KiB access, 1.5 KiB refresh) and
//! reports resident memory per grant, and what it costs beyond the token bytes themselves.
//!
//! `cargo run --release --example bench_memory -- N` prints one JSON line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use dcr_proxy::config::SnapshotKey;
use dcr_proxy::crypto::{self, TokenHash};
use dcr_proxy::store::snapshot;
use dcr_proxy::store::{
    AccessToken, Grant, Identity, RefreshToken, Store, UpstreamCredential, UpstreamLogin, UpstreamTokens,
};

const ACCESS_BYTES: usize = 2048;
const REFRESH_BYTES: usize = 1536;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// An exact-size string, as a token parsed from the IdP's JSON would be.
fn filler(len: usize, seed: &str) -> String {
    let mut s = String::with_capacity(len);
    for c in seed.chars().cycle().take(len) {
        s.push(c);
    }
    s
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let store = Store::new();
    let before = rss_bytes();
    let started = Instant::now();
    let now = 1_800_000_000;
    for _ in 0..n {
        let seed = crypto::random_token();
        let tokens = UpstreamTokens::new(
            filler(ACCESS_BYTES, &seed),
            Some(filler(REFRESH_BYTES, &seed)),
            now + 3600,
            Some("User.Read profile email".into()),
        )
        .unwrap();
        let login = UpstreamLogin {
            credential: UpstreamCredential::Tokens(tokens),
            identity: Identity {
                sub: "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ".into(),
                name: Some("Adele Vance".into()),
                email: Some("AdeleV@contoso.example".into()),
                preferred_username: Some("AdeleV@contoso.example".into()),
                tid: Some("9188040d-6c67-4c5b-b112-36a304b66dad".into()),
            },
        };
        let grant = Grant::new(
            "qlEKu_cJ_OPRZ8fwN_ohc-ySTMhvU4CqIPQctvF1y-k".into(),
            vec!["openid".into(), "profile".into(), "email".into()],
            None,
            login,
            now,
        );
        store.access_tokens.insert(
            TokenHash::of(&crypto::random_token()),
            AccessToken { grant: grant.clone(), expires_at: now + 3600 },
        );
        store.refresh_tokens.insert(
            TokenHash::of(&crypto::random_token()),
            RefreshToken { grant: grant.clone(), expires_at: now + 86400, rotated: None },
        );
        grant.extend_to(now + 86400);
        store.grants.insert(grant.id, grant);
    }
    let fill_secs = started.elapsed().as_secs_f64();
    let after = rss_bytes();
    let per_grant = (after.saturating_sub(before)) as f64 / n as f64;
    let token_bytes = (ACCESS_BYTES + REFRESH_BYTES) as f64;
    // The encrypted snapshot of the whole store, written and read back.
    let dir = std::env::var_os("BENCH_SNAPSHOT_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("dcrp-bench-{}.snapshot", std::process::id()));
    let key = SnapshotKey([9u8; 32]);
    let t = Instant::now();
    let bytes = snapshot::write(&store, now, &path, &key).unwrap();
    let write_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let loaded = snapshot::load(&path, &key, now).unwrap();
    let load_secs = t.elapsed().as_secs_f64();
    assert_eq!(loaded.stats().grants, n);
    let _ = std::fs::remove_file(&path);
    println!(
        "{{\"grants\":{n},\"rss_bytes\":{after},\"rss_per_grant\":{per_grant:.0},\"token_bytes_per_grant\":{token_bytes},\"overhead_per_grant\":{:.0},\"fill_seconds\":{fill_secs:.3},\"snapshot_bytes\":{bytes},\"snapshot_write_seconds\":{write_secs:.3},\"snapshot_load_seconds\":{load_secs:.3}}}",
        per_grant - token_bytes
    );
    assert_eq!(store.stats().grants, n);
}
