//! Fills the store with N grants carrying Entra-sized upstream tokens (2 KiB access, 1.5 KiB refresh), each
//! issued by redeeming a code at the token rules and then refreshed R times, and reports resident memory per
//! grant, and what it costs beyond the token bytes themselves (access tokens are swept as if they had expired,
//! so that only what a refresh leaves behind remains).
//!
//! `cargo run --release --example bench_memory -- N [R]` prints one JSON line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use dcr_proxy::config::{Config, SnapshotKey};
use dcr_proxy::crypto::{self, TokenHash};
use dcr_proxy::endpoints::token::{self, TokenContext};
use dcr_proxy::http::params::Params;
use dcr_proxy::store::snapshot;
use dcr_proxy::store::{
    AuthorizationCode, Client, Identity, MemoryStore, UpstreamCredential, UpstreamLogin, UpstreamTokens,
};

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const REDIRECT: &str = "http://127.0.0.1:33418/callback";
const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
[upstream]
url = "http://127.0.0.1:9000"
[idp]
kind = "local"
[[idp.users]]
username = "bench"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$9gpPZNPbendRUmJ+B80f6w$M1D3xry7fPJePZbhGcGFwNCnHq8QBELZ35VHuxvcOOQ"
"#;

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
    let refreshes: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(0);
    let config = Config::from_toml(CONFIG, |_| None).unwrap();
    let store = std::sync::Arc::new(MemoryStore::new());
    let state = dcr_proxy::store::Store::Memory(store.clone());
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let client = Client::public("qlEKu_cJ_OPRZ8fwN_ohc-ySTMhvU4CqIPQctvF1y-k", vec![REDIRECT.into()], 0);
    let before = rss_bytes();
    let started = Instant::now();
    let now = 1_800_000_000;
    let ctx = TokenContext { store: &state, config: &config.tokens, now, resources: &[] };
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
                ..Identity::default()
            },
        };
        let code = crypto::random_token();
        store.issue_code(
            TokenHash::of(&code),
            AuthorizationCode {
                request: dcr_proxy::store::AuthorizationRequest {
                    client_id: client.client_id.clone(),
                    redirect_uri: REDIRECT.into(),
                    redirect_uri_explicit: true,
                    code_challenge: CHALLENGE.into(),
                    scope: vec!["openid".into(), "profile".into(), "email".into()],
                    resource: None,
                    state: None,
                },
                expires_at: now + 600,
                login,
            },
        );
        let form = format!(
            "grant_type=authorization_code&code={code}&redirect_uri=http%3A%2F%2F127.0.0.1%3A33418%2Fcallback&code_verifier={VERIFIER}"
        );
        let mut pair =
            runtime.block_on(token::exchange(&ctx, &client, &Params::parse(form.as_bytes()).unwrap())).unwrap();
        for _ in 0..refreshes {
            // Access tokens live one hour; what stays for 30 days is what a refresh leaves behind.
            store.revoke_access_token(&TokenHash::of(&pair.access_token), &client.client_id);
            let rt = pair.refresh_token.clone().unwrap();
            let form = format!("grant_type=refresh_token&refresh_token={rt}");
            pair = runtime.block_on(token::exchange(&ctx, &client, &Params::parse(form.as_bytes()).unwrap())).unwrap();
        }
    }
    let fill_secs = started.elapsed().as_secs_f64();
    let after = rss_bytes();
    let per_grant = (after.saturating_sub(before)) as f64 / n as f64;
    let token_bytes = (ACCESS_BYTES + REFRESH_BYTES) as f64;
    // The encrypted snapshot of the whole store, written and read back, BENCH_SNAPSHOT_ROUNDS times (default 1) in
    // each directory of BENCH_SNAPSHOT_DIRS (comma-separated; default BENCH_SNAPSHOT_DIR or the temp dir), with the
    // peak resident memory while writing (sampled every 5 ms) beyond that of the filled store.
    let dirs: Vec<std::path::PathBuf> = std::env::var("BENCH_SNAPSHOT_DIRS")
        .or_else(|_| std::env::var("BENCH_SNAPSHOT_DIR"))
        .map(|d| d.split(',').map(std::path::PathBuf::from).collect())
        .unwrap_or_else(|_| vec![std::env::temp_dir()]);
    let rounds: usize = std::env::var("BENCH_SNAPSHOT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
    let key = SnapshotKey([9u8; 32]);
    let mut per_dir = Vec::new();
    let (mut bytes, mut write_secs, mut load_secs, mut peak_extra) = (0, 0.0, 0.0, 0u64);
    for dir in &dirs {
        let path = dir.join(format!("dcrp-bench-{}.snapshot", std::process::id()));
        let (mut writes, mut loads, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let base = rss_bytes();
            let done = std::sync::atomic::AtomicBool::new(false);
            let (written, secs, peak) = std::thread::scope(|s| {
                let sampler = s.spawn(|| {
                    let mut peak = 0;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        peak = peak.max(rss_bytes());
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    peak
                });
                let t = Instant::now();
                let written = snapshot::write(&store, now, &path, &key).unwrap();
                let secs = t.elapsed().as_secs_f64();
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                (written, secs, sampler.join().unwrap().max(rss_bytes()))
            });
            bytes = written;
            writes.push(secs);
            peaks.push(peak.saturating_sub(base));
            let t = Instant::now();
            let loaded = snapshot::load(&path, &key, now).unwrap();
            loads.push(t.elapsed().as_secs_f64());
            assert_eq!(loaded.stats().grants, n);
            drop(loaded);
            let _ = std::fs::remove_file(&path);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        peaks.sort_unstable();
        let (w, l, p) = (median(&mut writes), median(&mut loads), peaks[peaks.len() / 2]);
        if per_dir.is_empty() {
            (write_secs, load_secs, peak_extra) = (w, l, p);
        }
        per_dir.push(format!(
            "{{\"dir\":{:?},\"write_seconds\":{writes:?},\"load_seconds\":{loads:?},\"write_peak_extra_rss_bytes\":{peaks:?}}}",
            dir.display().to_string()
        ));
    }
    let store_bytes = after.saturating_sub(before);
    println!(
        "{{\"grants\":{n},\"refreshes_per_grant\":{refreshes},\"rss_bytes\":{after},\"rss_per_grant\":{per_grant:.0},\"token_bytes_per_grant\":{token_bytes},\"overhead_per_grant\":{:.0},\"fill_seconds\":{fill_secs:.3},\"snapshot_bytes\":{bytes},\"snapshot_write_seconds\":{write_secs:.3},\"snapshot_load_seconds\":{load_secs:.3},\"snapshot_write_peak_extra_rss_bytes\":{peak_extra},\"store_rss_bytes\":{store_bytes},\"snapshot_dirs\":[{}]}}",
        per_grant - token_bytes,
        per_dir.join(",")
    );
    assert_eq!(store.stats().grants, n);
}
