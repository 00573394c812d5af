//! The real binary with `server.runtime = "per-core"` (issue 13, runtime shape): two threads, each a
//! current-thread runtime with its own `SO_REUSEPORT` listener on the same port. It signs a user in and forwards;
//! connections are served by both threads (the log names the thread of every line); the connection cap counts
//! the whole process, not each thread; SIGTERM drains the streams in flight on every thread, exits 0 and writes
//! one final snapshot, which loads; the Redis backend works from every thread.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::upstream::Upstream;
use crate::common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const THREADS: &str = "runtime = \"per-core\"\nworker_threads = 2\n";

struct BinaryProxy {
    base: String,
    port: u16,
    child: Child,
}

impl ProxyBase for BinaryProxy {
    fn base_url(&self) -> &str {
        &self.base
    }
}

impl Drop for BinaryProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BinaryProxy {
    /// SIGTERM, then the exit status and everything the proxy wrote to stderr (its log).
    fn terminate(&mut self) -> (bool, String) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        self.wait()
    }

    fn wait(&mut self) -> (bool, String) {
        let ok = self.child.wait().unwrap().success();
        let mut log = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
        (ok, log)
    }
}

/// Starts the binary with `[server]` keys `server_keys` and more sections `extra`; `Err(stderr)` when it exits.
async fn try_start(
    dir: &std::path::Path,
    upstream: &Upstream,
    server_keys: &str,
    extra: &str,
) -> Result<BinaryProxy, String> {
    let port = unused_port();
    let scheme = if server_keys.contains("[server.tls]") { "https" } else { "http" };
    let hash = dcr_proxy::idp::local::hash_password(ALICE_PASSWORD).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{scheme}://127.0.0.1:{port}\"\n{server_keys}\n\
         [upstream]\nurl = \"{}\"\n\
         [idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n{extra}\n",
        upstream.url()
    );
    let config = dir.join("proxy.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
        .args(["--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env("DCR_PROXY_SNAPSHOT_KEY", TEST_STORE_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("{scheme}://127.0.0.1:{port}");
    // The probe only asks whether the server answers; the certificate is checked by the TLS test itself.
    let probe_client = reqwest::Client::builder().no_proxy().danger_accept_invalid_certs(true).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("({status}) {err}"));
        }
        let probe =
            tokio::time::timeout(Duration::from_millis(500), probe_client.get(format!("{base}/healthz")).send());
        if let Ok(Ok(r)) = probe.await {
            if r.status() == 200 {
                return Ok(BinaryProxy { base, port, child });
            }
        }
        assert!(Instant::now() < deadline, "dcr-proxy did not become healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The worker threads named by the log lines that contain every one of `needles`.
fn threads_in(log: &str, needles: &[&str]) -> BTreeSet<String> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("dcr-proxy-worker-")).map(str::to_owned))
        .collect()
}

/// A client of its own: a connection of its own, hashed by the kernel to either listener.
fn own_connection() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap()
}

/// `n` proxied calls at once, each on a connection of its own; their statuses.
async fn forward_at_once(proxy: &BinaryProxy, token: &str, n: usize) -> Vec<reqwest::StatusCode> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (url, token) = (proxy.url("/mcp"), token.to_owned());
            tokio::spawn(async move { own_connection().post(url).bearer_auth(token).body("{}").send().await })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap().unwrap().status());
    }
    statuses
}

#[tokio::test]
async fn two_threads_sign_in_forward_and_both_serve_connections() {
    let upstream = Upstream::start().await;
    let dir = ScratchDir::new("per-core-forward");
    let mut proxy = retry_on_taken_port(|| try_start(&dir.0, &upstream, THREADS, "[log]\nfilter = \"info\"\n")).await;
    let (_, tokens) = login(&proxy).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    // 32 connections at once: the kernel hashes each to one of the two listeners (all on one: 2^-31).
    const CONNECTIONS: usize = 32;
    let statuses = forward_at_once(&proxy, &token, CONNECTIONS).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let seen = upstream.last();
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert!(seen.header("authorization").is_none(), "the client's token reached the upstream");

    let (ok, log) = proxy.terminate();
    assert!(ok, "SIGTERM ends with exit 0:\n{log}");
    let forwarded = log.lines().filter(|l| l.contains("request") && l.contains("route=\"proxy\"")).count();
    assert!(forwarded >= CONNECTIONS, "{forwarded} access log lines for {CONNECTIONS} requests:\n{log}");
    let threads = threads_in(&log, &["request", "route=\"proxy\""]);
    assert_eq!(threads.len(), 2, "the forwarded requests were served by {threads:?}:\n{log}");
    assert!(!log.contains(&token), "the access token is in the log");
}

/// Opens `n` connections at once, from 127.0.0.1 and 127.0.0.2 in turn (two sources, so that the per-source cap,
/// which follows the global one, is not what refuses), and counts those the server closes without a byte
/// (refused by the cap); the others stay open, waiting for a request head.
async fn refused_of(port: u16, n: usize) -> (usize, Vec<tokio::net::TcpStream>) {
    let mut streams = Vec::new();
    for i in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        let source = if i % 2 == 0 { "127.0.0.1:0" } else { "127.0.0.2:0" };
        socket.bind(source.parse().unwrap()).unwrap();
        streams.push(socket.connect(([127, 0, 0, 1], port).into()).await.unwrap());
    }
    let mut refused = 0;
    let mut open = Vec::new();
    for mut s in streams {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut byte)).await {
            Ok(Ok(0) | Err(_)) => refused += 1,
            Ok(Ok(_)) => panic!("the server sent a byte before any request"),
            Err(_) => open.push(s),
        }
    }
    (refused, open)
}

#[tokio::test]
async fn the_connection_cap_counts_connections_of_every_thread() {
    let upstream = Upstream::start().await;
    let dir = ScratchDir::new("per-core-cap");
    let limits = "[limits]\nmax_connections = 4\nmax_connections_per_source = 3\nheader_timeout = \"30s\"\n\
                  [log]\nfilter = \"info\"\n";
    let mut proxy = retry_on_taken_port(|| try_start(&dir.0, &upstream, THREADS, limits)).await;
    // 16 connections: with a cap per thread (4 each) at most 8 would be refused, unless all 16 landed on one
    // thread (2^-15). The start-up probes may still hold a slot for a moment: retry (bounded) while more than 12
    // are refused.
    let mut outcome = None;
    for _ in 0..50 {
        let (refused, open) = refused_of(proxy.port, 16).await;
        assert!(refused >= 12, "only {refused} of 16 connections refused with max_connections = 4");
        if refused == 12 {
            // The 4 admitted ones still serve.
            for mut s in open {
                s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
                let mut answer = String::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await;
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            }
            outcome = Some(refused);
            break;
        }
        drop(open);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(outcome, Some(12), "16 connections never met exactly 12 refusals");
    let (ok, log) = proxy.terminate();
    assert!(ok, "{log}");
    assert!(log.contains("connection limit reached"), "{log}");
}

#[tokio::test]
async fn sigterm_drains_the_streams_of_every_thread_and_writes_one_snapshot_that_loads() {
    let upstream = Upstream::start().await;
    let dir = ScratchDir::new("per-core-drain");
    let snapshot = dir.0.join("state.snapshot");
    let extra = format!(
        "[store]\nsnapshot_path = \"{}\"\nsnapshot_interval = \"1h\"\n\
         [log]\nfilter = \"info,dcr_proxy::store::upkeep=debug\"\n",
        snapshot.display()
    );
    let server = format!("{THREADS}shutdown_grace = \"20s\"\n");
    let mut proxy = retry_on_taken_port(|| try_start(&dir.0, &upstream, &server, &extra)).await;
    let (_, tokens) = login(&proxy).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    // 16 event streams on 16 connections, each holding its first event: in flight on both threads (2^-15).
    const STREAMS: usize = 16;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let resp = own_connection().get(proxy.url("/sse")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut resp = resp;
        let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await.unwrap().unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).contains("\"n\":1"));
        streams.push(resp);
    }
    assert!(!snapshot.exists(), "a snapshot before shutdown (interval 1h)");
    let status = Command::new("kill").args(["-TERM", &proxy.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    // Shutdown has begun when new connections are no longer accepted (both listeners closed).
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", proxy.port)).await.is_ok() {
        assert!(Instant::now() < deadline, "the listeners stayed open after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each stream's second event, then its end: every one finishes although the server is shutting down.
    let rest: Vec<_> = streams
        .into_iter()
        .map(|mut resp| {
            tokio::spawn(async move {
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await.unwrap() {
                    body.extend_from_slice(&chunk);
                }
                String::from_utf8(body).unwrap()
            })
        })
        .collect();
    let rest = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for r in rest {
            bodies.push(r.await.unwrap());
        }
        bodies
    });
    for _ in 0..1000 {
        if rest.is_finished() {
            break;
        }
        upstream.release();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rest = tokio::time::timeout(Duration::from_secs(10), rest).await.unwrap().unwrap();
    assert!(rest.iter().all(|r| r.contains("\"n\":2")), "{rest:?}");
    let (ok, log) = proxy.wait();
    assert!(ok, "SIGTERM ends with exit 0:\n{log}");
    let threads = threads_in(&log, &["request", "route=\"proxy\""]);
    assert_eq!(threads.len(), 2, "the streams were served by {threads:?}:\n{log}");
    let written = log.lines().filter(|l| l.contains("snapshot written")).count();
    assert_eq!(written, 1, "{written} snapshots written at shutdown:\n{log}");
    let drained = log.find("every worker thread has drained").expect("the drain is logged");
    assert!(log.find("snapshot written").is_some_and(|at| at > drained), "the snapshot was written before the drain");
    let key: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&TEST_STORE_KEY[2 * i..2 * i + 2], 16).unwrap()).collect();
    let key = dcr_proxy::config::SnapshotKey(key.try_into().unwrap());
    let now = dcr_proxy::clock::Clock::system().now();
    let store = dcr_proxy::store::snapshot::load(&snapshot, &key, now).unwrap();
    assert_eq!(store.stats().grants, 1, "the signed-in user's grant is in the final snapshot");
}

#[tokio::test]
async fn the_redis_backend_serves_every_thread() {
    let upstream = Upstream::start().await;
    let redis = TestRedis::start().await;
    let dir = ScratchDir::new("per-core-redis");
    let extra = format!("[store]\nbackend = \"redis\"\nredis_url = \"{}\"\n[log]\nfilter = \"info\"\n", redis.url());
    let mut proxy = retry_on_taken_port(|| try_start(&dir.0, &upstream, THREADS, &extra)).await;
    let (_, tokens) = login(&proxy).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    const CONNECTIONS: usize = 32;
    let statuses = forward_at_once(&proxy, &token, CONNECTIONS).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(upstream.last().header("x-forwarded-user"), Some("alice"));
    // A token Redis does not know is refused on every thread.
    for _ in 0..8 {
        let resp = own_connection().post(proxy.url("/mcp")).bearer_auth("forged").body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 401);
    }
    let (ok, log) = proxy.terminate();
    assert!(ok, "SIGTERM ends with exit 0:\n{log}");
    let threads = threads_in(&log, &["request", "route=\"proxy\"", "status=200"]);
    assert_eq!(threads.len(), 2, "the Redis-backed requests were served by {threads:?}:\n{log}");
}

#[test]
fn worker_threads_and_per_core_are_validated_by_name() {
    let config = |server: &str| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:8080\"\n{server}\n\
             [upstream]\nurl = \"http://127.0.0.1:9\"\n[idp]\nkind = \"azure\"\nauthority = \"http://127.0.0.1:9\"\n\
             tenant = \"common\"\nclient_id = \"x\"\nclient_secret = \"y\"\n"
        );
        dcr_proxy::config::Config::from_toml(&text, |_| None).err().map(|e| e.to_string())
    };
    assert_eq!(config("runtime = \"per-core\"\nworker_threads = 2"), None);
    assert_eq!(config("runtime = \"multi-thread\"\nworker_threads = 3"), None);
    for bad in ["runtime = \"per-core\"\nworker_threads = 0", "runtime = \"current-thread\"\nworker_threads = 2"] {
        let err = config(bad);
        assert!(err.as_deref().is_some_and(|e| e.contains("server.worker_threads")), "{bad}: {err:?}");
    }
}

#[tokio::test]
async fn tls_is_served_by_every_thread() {
    let upstream = Upstream::start().await;
    let dir = ScratchDir::new("per-core-tls");
    let pki = TestPki::new(&dir, "percore");
    let server = format!("{THREADS}[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n", pki.server_cert, pki.server_key);
    let mut proxy = retry_on_taken_port(|| try_start(&dir.0, &upstream, &server, "[log]\nfilter = \"info\"\n")).await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    // 32 TLS connections of their own, the certificate checked against the test CA.
    let mut calls = Vec::new();
    for _ in 0..32 {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let url = proxy.url("/.well-known/oauth-authorization-server");
        calls.push(tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 200);
    }
    let (ok, log) = proxy.terminate();
    assert!(ok, "SIGTERM ends with exit 0:\n{log}");
    let threads = threads_in(&log, &["request", "status=200"]);
    assert_eq!(threads.len(), 2, "the TLS connections were served by {threads:?}:\n{log}");
}
