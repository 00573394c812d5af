//! Operating the binary: readiness, Prometheus metrics on their own listener, JSON logs, SIGTERM drains and
//! exits 0; and the shipped docker-compose.yml is a valid deployment of the proxy in front of an MCP server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::upstream::Upstream;
use crate::common::*;

struct Bin {
    base: String,
}

impl ProxyBase for Bin {
    fn base_url(&self) -> &str {
        &self.base
    }
}

#[tokio::test]
async fn binary_serves_readiness_metrics_and_json_logs_and_drains_on_sigterm() {
    let upstream = Upstream::start().await;
    // The binary binds the ports in its config; when another process took one first, new ports are tried.
    let (port, metrics_port, dir, mut child) = retry_on_taken_port(|| {
        let upstream_url = upstream.url();
        async move {
            let (port, metrics_port) = (unused_port(), unused_port());
            let dir = std::env::temp_dir().join(format!("dcrp-ops-{}", dcr_proxy::crypto::random_token()));
            std::fs::create_dir_all(&dir).unwrap();
            let hash = dcr_proxy::idp::local::hash_password(ALICE_PASSWORD).unwrap();
            let config = format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nshutdown_grace = \"2s\"\n\
                 [upstream]\nurl = \"{upstream_url}\"\n[idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n\
                 [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[log]\nformat = \"json\"\nfilter = \"info\"\n"
            );
            std::fs::write(dir.join("proxy.toml"), config).unwrap();
            let check = Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
                .args(["check-config", "--config", dir.join("proxy.toml").to_str().unwrap()])
                .output()
                .unwrap();
            assert!(check.status.success());
            let mut child = Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
                .args(["--config", dir.join("proxy.toml").to_str().unwrap()])
                .env_remove("RUST_LOG")
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let base = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if child.try_wait().unwrap().is_some() {
                    let mut stderr = String::new();
                    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(stderr);
                }
                // A short timeout: a port taken by another process may accept and never answer.
                let probe = tokio::time::timeout(Duration::from_millis(500), http().get(format!("{base}/readyz")).send());
                if let Ok(Ok(r)) = probe.await {
                    assert_eq!(r.status(), 200);
                    let doc: serde_json::Value = r.json().await.unwrap();
                    assert_eq!(doc["idp"], "local");
                    return Ok((port, metrics_port, dir, child));
                }
                assert!(Instant::now() < deadline, "not ready");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let bin = Bin { base: base.clone() };
    let (_, tokens) = login(&bin).await;
    let resp = http().get(bin.url("/mcp")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(http().get(bin.url("/metrics")).send().await.unwrap().status(), 401, "metrics are not public");

    let metrics =
        http().get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("dcr_proxy_requests_total{route=\"register\",status=\"201\"} 1"), "{metrics}");
    assert!(metrics.contains("dcr_proxy_requests_total{route=\"proxy\",status=\"200\"} 1"), "{metrics}");
    assert!(metrics.contains("dcr_proxy_request_duration_seconds_bucket"), "{metrics}");
    assert!(metrics.contains("dcr_proxy_grants 1"), "{metrics}");
    assert!(metrics.contains("dcr_proxy_clients 1"), "{metrics}");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit}");
    let mut logs = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    let lines: Vec<serde_json::Value> =
        logs.lines().map(|l| serde_json::from_str(l).expect("a JSON log line")).collect();
    assert!(lines.iter().any(|l| l["fields"]["route"] == "proxy" && l["fields"]["status"] == 200));
    assert!(lines.iter().any(|l| l["fields"]["message"].as_str().unwrap_or("").contains("SIGTERM")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn docker_compose_runs_the_proxy_in_front_of_an_mcp_server_with_a_snapshot_volume() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    if Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success()) {
        let out = Command::new("docker").args(["compose", "config", "--quiet"]).current_dir(root).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let doc = &yaml_rust2::YamlLoader::load_from_str(&text).unwrap()[0];
    let proxy = &doc["services"]["dcr-proxy"];
    assert_eq!(proxy["build"].as_str(), Some("."));
    assert_eq!(proxy["env_file"].as_str(), Some(".env"));
    let volumes: Vec<&str> = proxy["volumes"].as_vec().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(volumes.iter().any(|v| v.starts_with("dcr-proxy-state:")), "snapshot on a named volume");
    assert!(volumes.iter().any(|v| v.starts_with("./deploy/proxy.toml:")));
    assert!(!doc["volumes"]["dcr-proxy-state"].is_badvalue());
    assert_eq!(doc["services"]["mcp-server"]["build"].as_str(), Some("./deploy/example-mcp-server"));
    // Published on a configurable address, loopback by default; healthy only when /readyz answers; started once
    // the MCP server is healthy; the MCP server stops on SIGTERM.
    let ports: Vec<&str> = proxy["ports"].as_vec().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(ports, vec!["${DCR_PROXY_BIND:-127.0.0.1}:${DCR_PROXY_PORT:-8080}:8080"]);
    let check: Vec<&str> = proxy["healthcheck"]["test"].as_vec().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(check, vec!["CMD", "/usr/local/bin/dcr-proxy", "healthcheck"]);
    assert_eq!(proxy["depends_on"]["mcp-server"]["condition"].as_str(), Some("service_healthy"));
    assert!(!doc["services"]["mcp-server"]["healthcheck"]["test"].is_badvalue());
    assert_eq!(doc["services"]["mcp-server"]["init"].as_bool(), Some(true));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY benches ./benches"), "Cargo.toml declares a bench target");
    assert!(dockerfile.contains("HEALTHCHECK"));
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for line in ["target/", "e2e/.venv/", ".env", "**/node_modules/"] {
        assert!(ignore.lines().any(|l| l == line), ".dockerignore keeps {line} out of the build context");
    }
    assert!(root.join("deploy/example-mcp-server/Dockerfile").exists());
    // The compose file's proxy config is valid with the secrets .env provides, and keeps the snapshot on the volume.
    let deploy = std::fs::read_to_string(root.join("deploy/proxy.toml")).unwrap();
    let example_env = std::fs::read_to_string(root.join(".env.example")).unwrap();
    let mut env: std::collections::HashMap<String, String> = example_env
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for key in ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "DCR_PROXY_SNAPSHOT_KEY"] {
        assert!(env.contains_key(key), ".env.example names {key}");
    }
    // The example leaves the snapshot key empty on purpose: the proxy must refuse to start with it.
    assert!(dcr_proxy::config::Config::from_toml(&deploy, |k| env.get(k).cloned()).is_err());
    env.insert("DCR_PROXY_SNAPSHOT_KEY".into(), dcr_proxy::crypto::b64url(&[7u8; 32]));
    let config = dcr_proxy::config::Config::from_toml(&deploy, |k| env.get(k).cloned()).unwrap();
    let snapshot = config.store.snapshot.expect("snapshots on");
    assert!(snapshot.path.starts_with("/var/lib/dcr-proxy"));
    assert!(config.server.behind_tls_terminator);
}

/// `hash-password` from a pipe: a short password is refused by name, a long one hashes to a PHC string the local
/// login accepts; nothing on stdout but the hash.
#[test]
fn hash_password_refuses_short_passwords_and_prints_only_the_hash() {
    use std::io::Write as _;
    let run = |input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
            .arg("hash-password")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let short = run("elevenchars\n");
    assert_eq!(short.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 12 characters"));
    assert!(short.stdout.is_empty());
    let ok = run("twelve chars!\n");
    assert!(ok.status.success(), "{ok:?}");
    let hash = String::from_utf8(ok.stdout).unwrap();
    assert!(hash.trim().starts_with("$argon2id$"), "{hash}");
    assert_eq!(hash.lines().count(), 1);
}

#[tokio::test]
async fn the_metrics_listener_stops_with_the_server_and_closes_its_connections() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(dcr_proxy::server::serve_metrics(listener, proxy.app.clone(), async {
        let _ = stopped.await;
    }));
    // A keep-alive connection that has been served once and stays open.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: metrics\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));

    drop(stop);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("serve_metrics returns on shutdown").unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the open metrics connection is closed");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the metrics port no longer accepts");
}

/// Issue 26 item 5: `check-config` accepts a valid config but warns, naming both keys, when `upstream.url` already
/// ends in the resource path (requests for `/mcp` would go to `…/mcp/mcp`); a base URL gets no warning.
#[test]
fn check_config_warns_when_the_upstream_url_already_ends_in_the_resource_path() {
    let dir = std::env::temp_dir().join(format!("dcrp-warn-{}", dcr_proxy::crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let hash = dcr_proxy::idp::local::hash_password(ALICE_PASSWORD).unwrap();
    let check = |url: &str| {
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:8080\"\n[upstream]\nurl = \"{url}\"\n\
             [idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n"
        );
        std::fs::write(dir.join("proxy.toml"), config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
            .args(["check-config", "--config", dir.join("proxy.toml").to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "a warning is no error: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let warned = check("http://127.0.0.1:3000/mcp");
    assert!(
        warned.contains("warning: upstream.url")
            && warned.contains("upstream.resource_path")
            && warned.contains("/mcp/mcp"),
        "{warned}"
    );
    assert!(!check("http://127.0.0.1:3000").contains("warning"), "a base URL is fine");
    assert!(!check("http://127.0.0.1:3000/api/").contains("warning"), "another base path is fine");
    let _ = std::fs::remove_dir_all(&dir);
}
