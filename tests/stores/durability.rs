//! The store survives restarts and crashes: the real binary with an encrypted snapshot, a fake Entra ID and a
//! recording upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::fake_azure::{FakeAzure, APP_ID, APP_SECRET};
use crate::common::upstream::Upstream;
use crate::common::*;

const KEY: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
const OTHER_KEY: &str = "AAAAEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";

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

fn write_config(dir: &Path, port: u16, azure: &FakeAzure, upstream: &Upstream) -> PathBuf {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nshutdown_grace = \"2s\"\n\
         [upstream]\nurl = \"{}\"\n\
         [idp]\nkind = \"azure\"\nauthority = \"{}\"\ntenant = \"contoso.example\"\nclient_id = \"{APP_ID}\"\nclient_secret = \"{APP_SECRET}\"\n\
         [limits]\nregister_per_minute = 1000000\n\
         [store]\nsnapshot_path = \"{}\"\nsnapshot_interval = \"200ms\"\n",
        upstream.url(),
        azure.authority(),
        dir.join("state.snapshot").display()
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(config: &Path, key: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
        .args(["--config", config.to_str().unwrap()])
        .env("DCR_PROXY_SNAPSHOT_KEY", key)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts the binary on a port of its own (a new one when another process took it first): the port, the
/// config written for it, and the running proxy.
async fn first_start(dir: &Path, azure: &FakeAzure, upstream: &Upstream) -> (u16, PathBuf, BinaryProxy) {
    retry_on_taken_port(move || async move {
        let port = unused_port();
        let config = write_config(dir, port, azure, upstream);
        try_start(&config, port, KEY).await.map(|proxy| (port, config, proxy))
    })
    .await
}

/// Restarts the binary on the port it had (the issuer URL must not change).
async fn start(config: &Path, port: u16, key: &str) -> BinaryProxy {
    try_start(config, port, key).await.unwrap_or_else(|e| panic!("dcr-proxy exited at start: {e}"))
}

/// Starts the binary and waits until it is healthy; `Err(stderr)` when it exits first.
async fn try_start(config: &Path, port: u16, key: &str) -> Result<BinaryProxy, String> {
    let mut child = spawn(config, key);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("({status}) {err}"));
        }
        // A short timeout: a port taken by another process may accept and never answer.
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

fn terminate(proxy: &mut BinaryProxy) {
    let status = Command::new("kill").args(["-TERM", &proxy.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = proxy.child.wait().unwrap();
    assert!(exit.success(), "SIGTERM ends with exit 0, got {exit}");
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dcrp-durability-{}", dcr_proxy::crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn failed_start(config: &Path, key: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
        .args(["--config", config.to_str().unwrap()])
        .env("DCR_PROXY_SNAPSHOT_KEY", key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "start must fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn grants_survive_a_restart_and_the_snapshot_holds_no_token_in_clear() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let dir = tempdir();
    let (port, config, mut proxy) = first_start(&dir, &azure, &upstream).await;
    let (client_id, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(http().get(proxy.url("/mcp")).bearer_auth(&access).send().await.unwrap().status(), 200);
    terminate(&mut proxy);
    drop(proxy);

    let snapshot = std::fs::read(dir.join("state.snapshot")).unwrap();
    let mut secrets = azure.issued_secrets();
    secrets.extend([access.clone(), refresh_token.clone(), APP_SECRET.to_owned()]);
    for s in &secrets {
        assert!(!snapshot.windows(s.len()).any(|w| w == s.as_bytes()), "a token is in the snapshot in clear");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(dir.join("state.snapshot")).unwrap().permissions().mode() & 0o777, 0o600);
    }

    let proxy = start(&config, port, KEY).await;
    let resp = http().get(proxy.url("/mcp")).bearer_auth(&access).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the access token works after the restart");
    let azure_token = azure.state().last_access_token.clone().unwrap();
    assert_eq!(upstream.last().header("authorization"), Some(format!("Bearer {azure_token}").as_str()));
    let resp = refresh(&proxy, &client_id, &refresh_token).await;
    assert_eq!(resp.status(), 200, "the refresh token works after the restart");
    drop(proxy);

    // A wrong key, a flipped byte, a truncated file: the start stops with a clear message.
    assert!(failed_start(&config, OTHER_KEY).contains("cannot be decrypted: wrong key"));
    let good = std::fs::read(dir.join("state.snapshot")).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    std::fs::write(dir.join("state.snapshot"), &flipped).unwrap();
    assert!(failed_start(&config, KEY).contains("cannot be decrypted"));
    std::fs::write(dir.join("state.snapshot"), &good[..5]).unwrap();
    assert!(failed_start(&config, KEY).contains("not a dcr-proxy snapshot"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn repeated_sigkill_under_load_never_leaves_a_torn_snapshot() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let dir = tempdir();
    let (port, config, mut proxy) = first_start(&dir, &azure, &upstream).await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    // Wait for a snapshot completed after the login.
    let logged_in_at = std::time::SystemTime::now();
    let snapshot = dir.join("state.snapshot");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&snapshot).and_then(|m| m.modified()).map_or(true, |t| t <= logged_in_at) {
        assert!(Instant::now() < deadline, "no snapshot was written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    for round in 0..5u64 {
        // Load: registrations while snapshots are being written.
        let base = proxy.base.clone();
        let load = tokio::spawn(async move {
            loop {
                let _ = http()
                    .post(format!("{base}/register"))
                    .json(
                        &serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"}),
                    )
                    .send()
                    .await;
            }
        });
        tokio::time::sleep(Duration::from_millis(150 + 97 * round)).await;
        proxy.child.kill().unwrap();
        proxy.child.wait().unwrap();
        load.abort();
        proxy = start(&config, port, KEY).await;
        let resp = http().get(proxy.url("/mcp")).bearer_auth(&access).send().await.unwrap();
        assert_eq!(resp.status(), 200, "round {round}: the grant from before the last snapshot survives");
    }
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The container health check: `dcr-proxy healthcheck` asks the running proxy's `/readyz` with the same config.
#[tokio::test]
async fn the_healthcheck_subcommand_reports_a_running_proxy_and_fails_without_one() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let dir = tempdir();
    // The proxy first: its port is only known once it has bound it (see `unused_port`). "Without one" is checked
    // after it has stopped.
    let (_, config, mut proxy) = first_start(&dir, &azure, &upstream).await;
    let config_for_check = config.clone();
    let check = move || {
        Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
            .args(["--config", config_for_check.to_str().unwrap(), "healthcheck", "--timeout", "2s"])
            .env("DCR_PROXY_SNAPSHOT_KEY", KEY)
            .output()
            .unwrap()
    };
    let ready = tokio::task::spawn_blocking(check.clone()).await.unwrap();
    assert!(ready.status.success(), "{ready:?}");
    assert_eq!(String::from_utf8_lossy(&ready.stdout).trim(), "ready");
    terminate(&mut proxy);
    let after = tokio::task::spawn_blocking(check).await.unwrap();
    assert_eq!(after.status.code(), Some(1), "{after:?}");
    assert!(String::from_utf8_lossy(&after.stderr).contains("not ready"));
}

#[tokio::test]
async fn refresh_families_survive_a_restart_and_a_version_1_snapshot_is_refused_by_name() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let dir = tempdir();
    let (port, config, mut proxy) = first_start(&dir, &azure, &upstream).await;
    let (client_id, tokens) = login(&proxy).await;
    let first = tokens["refresh_token"].as_str().unwrap().to_owned();
    let second: serde_json::Value = refresh(&proxy, &client_id, &first).await.json().await.unwrap();
    let second = second["refresh_token"].as_str().unwrap().to_owned();
    terminate(&mut proxy);
    drop(proxy);

    let proxy = start(&config, port, KEY).await;
    let resp = refresh(&proxy, &client_id, &second).await;
    assert_eq!(resp.status(), 200, "the current refresh token works after the restart");
    let third: serde_json::Value = resp.json().await.unwrap();
    // The token spent before the restart is still recognised as a reuse: the grant ends.
    assert_eq!(refresh(&proxy, &client_id, &first).await.status(), 400);
    let resp = refresh(&proxy, &client_id, third["refresh_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 400, "the reuse revoked the grant");
    drop(proxy);

    // A snapshot of the previous format stops the start with a message that says what to do.
    let mut v1 = b"DCRPSNAP\x01".to_vec();
    v1.extend_from_slice(&[0u8; 64]);
    std::fs::write(dir.join("state.snapshot"), &v1).unwrap();
    let message = failed_start(&config, KEY);
    assert!(message.contains("format version 1"), "{message}");
    assert!(message.contains("start_empty_on_bad_snapshot"), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The harness side of `unused_port`: a port another process holds when the binary starts is detected from the
/// binary's own bind failure, and the start is retried on a new port.
#[tokio::test]
async fn a_port_taken_before_the_binary_binds_it_is_retried_on_a_new_one() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let dir = tempdir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let mut ports = vec![taken_port, unused_port()].into_iter();
    let mut tried = Vec::new();
    let (port, proxy) = retry_on_taken_port(|| {
        let port = ports.next().expect("two tries at most");
        tried.push(port);
        let config = write_config(&dir, port, &azure, &upstream);
        async move { try_start(&config, port, KEY).await.map(|proxy| (port, proxy)) }
    })
    .await;
    assert_eq!(tried.len(), 2, "the taken port was given up for a new one");
    assert_ne!(port, taken_port);
    assert_eq!(http().get(proxy.url("/healthz")).send().await.unwrap().status(), 200);
    drop((proxy, taken));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 13: a snapshot written by the version-2 writer (dcr-proxy before chunked snapshots; the fixture was made
/// by that code, `snapshot::tests::write_the_version_2_fixture`, with `KEY`) is read at start, its user is still
/// signed in, and the next snapshot the proxy writes is version 3, which a restart reads again.
#[tokio::test]
async fn a_version_2_snapshot_is_read_and_the_next_one_written_is_version_3() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let access = "v2-fixture-proxy-access-token";
    let refresh_token = std::fs::read_to_string(fixtures.join("snapshot-v2.refresh-token")).unwrap();
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let dir = tempdir();
    let snapshot = dir.join("state.snapshot");
    std::fs::copy(fixtures.join("snapshot-v2.bin"), &snapshot).unwrap();
    assert_eq!(std::fs::read(&snapshot).unwrap()[..9], *b"DCRPSNAP\x02");
    let (port, config, mut proxy) = first_start(&dir, &azure, &upstream).await;
    let resp = http().get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the user of the v2 snapshot is still signed in");
    assert_eq!(upstream.last().header("authorization"), Some("Bearer v2-fixture-upstream-access-token"));

    // The periodic write (every 200 ms) replaces it with a version-3 file.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(&snapshot).map_or(true, |f| f.get(8) != Some(&3)) {
        assert!(Instant::now() < deadline, "no version-3 snapshot was written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    terminate(&mut proxy);
    drop(proxy);
    let file = std::fs::read(&snapshot).unwrap();
    assert_eq!(file[..9], *b"DCRPSNAP\x03");
    for secret in
        [access, refresh_token.trim(), "v2-fixture-upstream-access-token", "v2-fixture-upstream-refresh-token"]
    {
        assert!(!file.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} in clear");
    }

    let proxy = start(&config, port, KEY).await;
    let resp = http().get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap();
    assert_eq!(resp.status(), 200, "still signed in after a restart on the version-3 file");
    assert_eq!(upstream.last().header("authorization"), Some("Bearer v2-fixture-upstream-access-token"));
    let resp = refresh(&proxy, "v2-fixture-client", refresh_token.trim()).await;
    assert_eq!(resp.status(), 200, "the refresh token of the v2 snapshot works");
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
