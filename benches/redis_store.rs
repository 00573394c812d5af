//! What the shared store on Redis costs (issue 12, "Measured"): Redis memory per grant with Azure-sized tokens,
//! and the sign-in and refresh latency Redis adds over the memory backend, through the running proxy.
//!
//! `bash bench/redis.sh` (release build; `BENCH_PROFILE=dev` for a debug build, `BENCH_SIGNINS=N`, default 300).
//! Starts its own `redis-server` on a loopback port, the fake Entra ID of the tests (access tokens ~1.6 KB,
//! refresh tokens ~1.1 KB, an id_token) and a recording upstream; then, for the memory backend and for Redis, N
//! sign-ins one after the other (register, authorize, consent, the IdP round trip, callback, code redemption) and
//! N refreshes. Prints p50/p99 of each and Redis's `used_memory` growth per signed-in grant (everything one
//! sign-in and one refresh leave there: client, grant, access tokens, refresh family, spent code, used tickets).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr, dead_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::fake_azure::FakeAzure;
use common::upstream::Upstream;
use common::*;

const LIMITS: &str =
    "[limits]\nregister_per_minute = 1000000\ntoken_per_minute = 1000000\nauthorize_per_minute = 1000000\n";

fn main() {
    let n: usize = std::env::var("BENCH_SIGNINS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run(n));
}

/// The p50 and p99 of `samples`, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    (at(0.50), at(0.99))
}

/// N sign-ins then N refreshes on `proxy`, one at a time: their latencies.
async fn sign_ins_and_refreshes(proxy: &TestProxy, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let (mut sign_ins, mut refreshes, mut issued) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let start = Instant::now();
        let (client_id, tokens) = login(proxy).await;
        sign_ins.push(start.elapsed());
        issued.push((client_id, tokens["refresh_token"].as_str().unwrap().to_owned()));
    }
    for (client_id, refresh_token) in &issued {
        let start = Instant::now();
        let resp = refresh(proxy, client_id, refresh_token).await;
        assert_eq!(resp.status(), 200);
        refreshes.push(start.elapsed());
    }
    (sign_ins, refreshes)
}

async fn used_memory(redis: &TestRedis) -> i64 {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap()
}

async fn run(n: usize) {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let memory = TestProxy::builder().upstream(upstream.url()).azure(&azure).extra(LIMITS).start().await;
    // A warm-up sign-in on each backend, not counted.
    login(&memory).await;
    let (mut m_sign, mut m_refresh) = sign_ins_and_refreshes(&memory, n).await;
    memory.stop().await;

    let redis = TestRedis::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).extra(LIMITS).redis(&redis).start().await;
    login(&proxy).await;
    let before = used_memory(&redis).await;
    let (mut r_sign, mut r_refresh) = sign_ins_and_refreshes(&proxy, n).await;
    let after = used_memory(&redis).await;

    let (ms50, ms99) = percentiles(&mut m_sign);
    let (rs50, rs99) = percentiles(&mut r_sign);
    let (mr50, mr99) = percentiles(&mut m_refresh);
    let (rr50, rr99) = percentiles(&mut r_refresh);
    println!("dcr-proxy shared store bench: {n} sign-ins and {n} refreshes per backend, one at a time");
    println!("                     memory p50/p99 ms   redis p50/p99 ms   added by Redis p50/p99 ms");
    println!(
        "sign-in              {ms50:7.2} / {ms99:7.2}   {rs50:7.2} / {rs99:7.2}   {:7.2} / {:7.2}",
        rs50 - ms50,
        rs99 - ms99
    );
    println!(
        "refresh              {mr50:7.2} / {mr99:7.2}   {rr50:7.2} / {rr99:7.2}   {:7.2} / {:7.2}",
        rr50 - mr50,
        rr99 - mr99
    );
    let per_grant = (after - before) as f64 / n as f64;
    println!(
        "redis used_memory: {before} -> {after} bytes: {per_grant:.0} bytes ({:.2} KiB) per signed-in grant \
         (IdP access token ~1.6 KB, refresh token ~1.1 KB)",
        per_grant / 1024.0
    );
    println!("bytes per key kind (MEMORY USAGE, averaged over the keys of the kind):");
    for (kind, count, bytes) in usage_by_kind(&redis).await {
        println!("  {kind:<10} {count:>6} keys  {:>7.0} bytes each", bytes as f64 / count.max(1) as f64);
    }
}

/// Each key kind (`dcrp:<kind>:…`): how many keys and their `MEMORY USAGE` in total.
async fn usage_by_kind(redis: &TestRedis) -> Vec<(String, u64, u64)> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("dcrp:*").query_async(&mut conn).await.unwrap();
    let mut kinds: std::collections::BTreeMap<String, (u64, u64)> = std::collections::BTreeMap::new();
    for key in keys {
        let bytes: u64 = redis::cmd("MEMORY").arg("USAGE").arg(&key).query_async(&mut conn).await.unwrap_or(0);
        let kind = key.split(':').nth(1).unwrap_or("").to_owned();
        let entry = kinds.entry(kind).or_default();
        entry.0 += 1;
        entry.1 += bytes;
    }
    kinds.into_iter().map(|(k, (n, b))| (k, n, b)).collect()
}
