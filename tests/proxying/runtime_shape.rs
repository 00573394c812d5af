//! The real binary on tokio's current-thread scheduler (`server.runtime = "current-thread"`, issue 13) signs a
//! user in and forwards with the swapped credential; its access log, written by the log thread through the queue
//! (`log.queue`), has every request's line on stderr by the time SIGTERM's graceful exit is done, and no token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::upstream::Upstream;
use crate::common::*;

struct BinaryProxy {
    base: String,
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

/// Starts the binary with `server_keys` on a port of its own; `Err(stderr)` when it exits first.
async fn try_start(dir: &std::path::Path, upstream: &Upstream, server_keys: &str) -> Result<BinaryProxy, String> {
    let port = unused_port();
    let hash = dcr_proxy::idp::local::hash_password(ALICE_PASSWORD).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nshutdown_grace = \"2s\"\n\
         {server_keys}\n[upstream]\nurl = \"{}\"\n\
         [idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n\
         [log]\nfilter = \"info\"\nqueue = 1000\n",
        upstream.url()
    );
    let config = dir.join("proxy.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
        .args(["--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("({status}) {err}"));
        }
        let probe = tokio::time::timeout(Duration::from_millis(500), http().get(format!("{base}/healthz")).send());
        if let Ok(Ok(r)) = probe.await {
            if r.status() == 200 {
                return Ok(BinaryProxy { base, child });
            }
        }
        assert!(Instant::now() < deadline, "dcr-proxy did not become healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_current_thread_runtime_serves_sign_in_and_forwarding_and_the_log_is_complete_at_exit() {
    let upstream = Upstream::start().await;
    let dir = std::env::temp_dir().join(format!("dcrp-runtime-{}", dcr_proxy::crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut proxy = retry_on_taken_port(|| try_start(&dir, &upstream, "runtime = \"current-thread\"")).await;
    let (_, tokens) = login(&proxy).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    const CALLS: usize = 20;
    for _ in 0..CALLS {
        let resp = http().post(proxy.url("/mcp")).bearer_auth(&token).body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let seen = upstream.last();
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert!(seen.header("authorization").is_none(), "the client's token reached the upstream");

    let status = Command::new("kill").args(["-TERM", &proxy.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(proxy.child.wait().unwrap().success(), "SIGTERM ends with exit 0");
    let mut log = String::new();
    proxy.child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let forwarded = log.lines().filter(|l| l.contains("request") && l.contains("route=\"proxy\"")).count();
    assert!(forwarded >= CALLS, "{forwarded} access log lines for {CALLS} forwarded requests:\n{log}");
    assert!(!log.contains(&token), "the access token is in the log");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unknown_runtime_is_refused_by_name() {
    let text = "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:8080\"\nruntime = \"fibers\"\n\
                [upstream]\nurl = \"http://127.0.0.1:9\"\n[idp]\nkind = \"local\"\n";
    let err = dcr_proxy::config::Config::from_toml(text, |_| None).err().map(|e| e.to_string());
    assert!(err.as_deref().is_some_and(|e| e.contains("server.runtime")), "{err:?}");
    let queue = "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:8080\"\n\
                 [upstream]\nurl = \"http://127.0.0.1:9\"\n[idp]\nkind = \"azure\"\nauthority = \"http://127.0.0.1:9\"\n\
                 tenant = \"common\"\nclient_id = \"x\"\nclient_secret = \"y\"\n[log]\nqueue = 0\n";
    let err = dcr_proxy::config::Config::from_toml(queue, |_| None).err().map(|e| e.to_string());
    assert!(err.as_deref().is_some_and(|e| e.contains("log.queue")), "{err:?}");
}
