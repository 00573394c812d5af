//! The admin API and `dcr-proxy admin …`, through the running server: the admin listener refuses a missing or
//! wrong token and does not exist on the public port; the CLI lists clients and grants and revokes a grant, a user
//! and a client, after which the revoked bearers get 401 on the proxy; registration switched off refuses
//! `/register` and drops `registration_endpoint` from the metadata, switched on again works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use crate::common::upstream::Upstream;
use crate::common::*;
use serde_json::{json, Value};

const TOKEN: &str = "admin-token-for-the-tests-0123456789abcdef";

async fn start() -> (fake_azure::FakeAzure, Upstream, TestProxy, String) {
    let azure = fake_azure::FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .azure(&azure)
        .env("DCR_PROXY_ADMIN_TOKEN", TOKEN)
        .extra("[admin]\nlisten = \"127.0.0.1:9\"\n")
        .start()
        .await;
    let admin = serve_admin(&proxy).await;
    (azure, upstream, proxy, admin)
}

/// Runs `dcr-proxy admin ARGS --url ADMIN` with the admin token; (exit code, stdout, stderr).
async fn cli(admin: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dcr-proxy"));
    cmd.arg("admin").args(args).args(["--url", admin]).env_remove("DCR_PROXY_CONFIG");
    match token {
        Some(t) => cmd.env("DCR_PROXY_ADMIN_TOKEN", t),
        None => cmd.env_remove("DCR_PROXY_ADMIN_TOKEN"),
    };
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run dcr-proxy admin")).await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn cli_json(admin: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = cli(admin, Some(TOKEN), &all).await;
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

async fn mcp_status(proxy: &TestProxy, bearer: &str) -> u16 {
    http()
        .post(proxy.url("/mcp"))
        .bearer_auth(bearer)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_admin_api_refuses_a_missing_or_wrong_token_and_is_absent_on_the_public_port() {
    let (_azure, upstream, proxy, admin) = start().await;
    let (_client, tokens) = login(&proxy).await;
    let bearer = tokens["access_token"].as_str().unwrap();
    let client = http();
    for auth in [None, Some("Bearer wrong-token"), Some(&*format!("Bearer {TOKEN}x")), Some(TOKEN)] {
        let mut req = client.get(format!("{admin}/admin/clients"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        let body: Value = resp.json().await.unwrap();
        assert!(body.get("clients").is_none(), "{body}");
    }
    // The same paths on the public port: the admin token is no bearer there, and a user's bearer is forwarded
    // upstream like any other path, never answered by the admin API.
    for (method, path) in
        [("GET", "/admin/clients"), ("GET", "/admin/grants"), ("POST", "/admin/revoke-user?subject=x")]
    {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = client.request(m.clone(), proxy.url(path)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path} with the admin token on the public port");
        assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("resource_metadata"));
        let before = upstream.recorded().len();
        let resp = client.request(m, proxy.url(path)).bearer_auth(bearer).send().await.unwrap();
        let body = resp.text().await.unwrap();
        assert!(!body.contains("\"clients\"") && !body.contains("revoked_grants"), "{path}: {body}");
        assert_eq!(upstream.recorded().len(), before + 1, "{path} forwarded");
        assert!(upstream.last().path.starts_with("/admin/"));
    }
    assert_eq!(mcp_status(&proxy, bearer).await, 200, "nothing was revoked");
    // The CLI says which variable is missing.
    let (code, _, err) = cli(&admin, None, &["clients"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("DCR_PROXY_ADMIN_TOKEN"), "{err}");
    let (code, _, err) = cli(&admin, Some("not-the-admin-token-but-long-enough-000"), &["clients"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
}

#[tokio::test]
async fn the_cli_lists_and_revokes_and_revoked_bearers_get_401() {
    let (_azure, _upstream, proxy, admin) = start().await;
    let (client_a, tokens_a) = login(&proxy).await;
    let (client_b, tokens_b) = login(&proxy).await;
    let (client_c, tokens_c) = login(&proxy).await;
    let bearer = |t: &Value| t["access_token"].as_str().unwrap().to_owned();
    for t in [&tokens_a, &tokens_b, &tokens_c] {
        assert_eq!(mcp_status(&proxy, &bearer(t)).await, 200);
    }

    let clients = cli_json(&admin, &["clients"]).await;
    let rows = clients["clients"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{clients}");
    for row in rows {
        assert_eq!(row["name"], "Test Client");
        assert_eq!(row["redirect_hosts"], json!(["127.0.0.1"]));
        assert_eq!(row["grants"], 1);
        assert!(row["created"].as_u64().unwrap() > 0 && row["last_used"].as_u64().unwrap() > 0, "{row}");
        assert!(row["metadata_document_url"].is_null());
    }
    let (code, table, _) = cli(&admin, Some(TOKEN), &["clients"]).await;
    assert_eq!(code, 0);
    assert!(table.starts_with("CLIENT") && table.contains(&client_a) && table.contains("Test Client"), "{table}");

    let grants = cli_json(&admin, &["grants"]).await;
    let rows = grants["grants"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 3, "{grants}");
    let subject = rows[0]["subject"].as_str().unwrap().to_owned();
    assert!(!subject.is_empty());
    assert!(rows[0]["idp_token_expires"].as_u64().is_some(), "{grants}");
    assert!(rows[0]["scopes"].as_str().unwrap().contains("openid"));
    let (code, grant_table, _) = cli(&admin, Some(TOKEN), &["grants"]).await;
    assert_eq!(code, 0);
    // Never a token: neither ours nor a refresh token appears in any listing.
    for t in [&tokens_a, &tokens_b, &tokens_c] {
        for key in ["access_token", "refresh_token"] {
            let secret = t[key].as_str().unwrap();
            for out in [&grants.to_string(), &clients.to_string(), &grant_table, &table] {
                assert!(!out.contains(secret), "{key} listed");
            }
        }
    }
    let only_b = cli_json(&admin, &["grants", "--client", &client_b]).await;
    assert_eq!(only_b["grants"].as_array().unwrap().len(), 1);
    let grant_a = rows.iter().find(|g| g["client_id"] == client_a.as_str()).unwrap()["id"].as_str().unwrap().to_owned();

    // One grant.
    let (code, out, err) = cli(&admin, Some(TOKEN), &["revoke-grant", &grant_a]).await;
    assert_eq!((code, out.trim()), (0, "revoked 1 grant(s)"), "{err}");
    assert_eq!(mcp_status(&proxy, &bearer(&tokens_a)).await, 401);
    assert_eq!(mcp_status(&proxy, &bearer(&tokens_b)).await, 200);
    let refreshed = refresh(&proxy, &client_a, tokens_a["refresh_token"].as_str().unwrap()).await;
    assert_eq!(error_of(refreshed).await, (400, "invalid_grant".to_owned()));
    let (code, _, err) = cli(&admin, Some(TOKEN), &["revoke-grant", &grant_a]).await;
    assert_eq!(code, 1, "a revoked grant is gone: {err}");

    // A client with its grants.
    let (code, out, err) = cli(&admin, Some(TOKEN), &["revoke-client", &client_c]).await;
    assert_eq!((code, out.trim()), (0, "revoked 1 grant(s)"), "{err}");
    assert_eq!(mcp_status(&proxy, &bearer(&tokens_c)).await, 401);
    assert_eq!(cli_json(&admin, &["clients"]).await["clients"].as_array().unwrap().len(), 2);

    // Every grant of the user (the fake IdP signs everyone in as one user): b's too.
    let answer = cli_json(&admin, &["revoke-user", &subject]).await;
    assert_eq!(answer["revoked_grants"], 1);
    assert_eq!(mcp_status(&proxy, &bearer(&tokens_b)).await, 401);
    assert_eq!(cli_json(&admin, &["grants"]).await["grants"], json!([]));
}

#[tokio::test]
async fn registration_switched_off_refuses_register_and_leaves_the_metadata_then_on_again_works() {
    let (_azure, _upstream, proxy, admin) = start().await;
    let metadata_url = proxy.url("/.well-known/oauth-authorization-server");
    assert!(get_json(&metadata_url).await.get("registration_endpoint").is_some());

    let (code, out, err) = cli(&admin, Some(TOKEN), &["registration", "off"]).await;
    assert_eq!((code, out.trim()), (0, "registration is off"), "{err}");
    let resp = http()
        .post(proxy.url("/register"))
        .json(&json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(error_of(resp).await, (403, "access_denied".to_owned()));
    let doc = get_json(&metadata_url).await;
    assert!(doc.get("registration_endpoint").is_none(), "{doc}");
    assert!(doc.get("token_endpoint").is_some());
    assert!(get_json(&proxy.url("/.well-known/openid-configuration")).await.get("registration_endpoint").is_none());
    assert_eq!(cli_json(&admin, &["clients"]).await["clients"], json!([]), "nothing registered");

    let answer = cli_json(&admin, &["registration", "on"]).await;
    assert_eq!(answer["enabled"], true);
    assert!(get_json(&metadata_url).await.get("registration_endpoint").is_some());
    let (_client, tokens) = login(&proxy).await;
    assert_eq!(mcp_status(&proxy, tokens["access_token"].as_str().unwrap()).await, 200);
}

#[test]
fn the_admin_listener_refuses_to_start_without_a_long_enough_token_and_names_the_variable() {
    let dir = std::env::temp_dir().join(format!("dcr-admin-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    let hash = dcr_proxy::idp::local::hash_password(ALICE_PASSWORD).unwrap();
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:8080\"\n\
             [upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    for token in [None, Some("too-short-token")] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dcr-proxy"));
        cmd.args(["--config", path.to_str().unwrap(), "check-config"]);
        match token {
            Some(t) => cmd.env("DCR_PROXY_ADMIN_TOKEN", t),
            None => cmd.env_remove("DCR_PROXY_ADMIN_TOKEN"),
        };
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("DCR_PROXY_ADMIN_TOKEN") && err.contains("32"), "{err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env("DCR_PROXY_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The binary opens the admin listener of its config, and `dcr-proxy --config … admin` finds it there without
/// `--url`.
#[tokio::test]
async fn the_binary_serves_the_admin_api_on_its_configured_listener_and_the_cli_finds_it_from_the_config() {
    let upstream = Upstream::start().await;
    let hash = dcr_proxy::idp::local::hash_password(ALICE_PASSWORD).unwrap();
    let (port, config, dir, mut child) = retry_on_taken_port(|| {
        let (upstream_url, hash) = (upstream.url(), hash.clone());
        async move {
            let (port, admin_port) = (unused_port(), unused_port());
            let dir = std::env::temp_dir().join(format!("dcrp-admin-bin-{}", dcr_proxy::crypto::random_token()));
            std::fs::create_dir_all(&dir).unwrap();
            let config = dir.join("proxy.toml");
            std::fs::write(
                &config,
                format!(
                    "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
                     [upstream]\nurl = \"{upstream_url}\"\n\
                     [idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n\
                     [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"
                ),
            )
            .unwrap();
            let mut child = Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
                .args(["--config", config.to_str().unwrap()])
                .env("DCR_PROXY_ADMIN_TOKEN", TOKEN)
                .env_remove("RUST_LOG")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                if child.try_wait().unwrap().is_some() {
                    let mut stderr = String::new();
                    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(stderr);
                }
                let admin = format!("http://127.0.0.1:{admin_port}/admin/registration");
                let probe = tokio::time::timeout(
                    std::time::Duration::from_millis(500),
                    http().get(&admin).bearer_auth(TOKEN).send(),
                );
                if let Ok(Ok(r)) = probe.await {
                    if r.status() == 200 {
                        return Ok((port, config, dir, child));
                    }
                }
                assert!(std::time::Instant::now() < deadline, "admin API never answered");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    })
    .await;
    let config_arg = config.to_str().unwrap().to_owned();
    let run = move |args: &'static [&'static str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dcr-proxy"));
        cmd.args(["--config", &config_arg, "admin"]).args(args).env("DCR_PROXY_ADMIN_TOKEN", TOKEN);
        cmd
    };
    let mut off = run(&["registration", "off"]);
    let out = tokio::task::spawn_blocking(move || off.output().unwrap()).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "registration is off", "{out:?}");
    let resp = http()
        .post(format!("http://127.0.0.1:{port}/register"))
        .json(&json!({"redirect_uris": [CLIENT_REDIRECT]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // The public port has no admin API.
    let resp =
        http().get(format!("http://127.0.0.1:{port}/admin/registration")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `admin.listen` may be a Unix socket: created 0600 (a stale socket replaced, never another file), and the CLI
/// reaches it with `--url unix:/path`.
#[tokio::test]
async fn the_admin_api_on_a_unix_socket_is_0600_and_the_cli_reaches_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("dcrp-admin-sock-{}", dcr_proxy::crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("admin.sock");
    let azure = fake_azure::FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .azure(&azure)
        .env("DCR_PROXY_ADMIN_TOKEN", TOKEN)
        .extra(format!("[admin]\nlisten = \"unix:{}\"\n", socket.display()))
        .start()
        .await;
    assert_eq!(proxy.app.config.admin.as_ref().unwrap().listen, dcr_proxy::config::AdminListen::Unix(socket.clone()));
    // A stale socket from an earlier run is replaced; a regular file is never removed.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let listener = dcr_proxy::server::bind_admin_socket(&socket).unwrap();
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    tokio::spawn(dcr_proxy::server::serve_admin_unix(listener, proxy.app.clone(), std::future::pending()));
    let regular = dir.join("not-a-socket");
    std::fs::write(&regular, "keep me").unwrap();
    assert!(dcr_proxy::server::bind_admin_socket(&regular).is_err());
    assert_eq!(std::fs::read_to_string(&regular).unwrap(), "keep me");

    let (_client, tokens) = login(&proxy).await;
    let url = format!("unix:{}", socket.display());
    let grants = cli_json(&url, &["grants"]).await;
    let subject = grants["grants"][0]["subject"].as_str().unwrap().to_owned();
    let (code, out, err) = cli(&url, Some(TOKEN), &["revoke-user", &subject]).await;
    assert_eq!((code, out.trim()), (0, "revoked 1 grant(s)"), "{err}");
    assert_eq!(mcp_status(&proxy, tokens["access_token"].as_str().unwrap()).await, 401);
    let (code, _, err) = cli(&url, Some("a-wrong-token-that-is-long-enough-00000000"), &["clients"]).await;
    assert_eq!(code, 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 23 item 5: idle connections to the admin listener, without the token, cannot hold descriptors the public
/// listener needs: beyond a small cap they are closed at once, the ones within it are closed when they send no
/// request head in time, and the public listener and the admin API keep answering.
#[tokio::test]
async fn idle_connections_to_the_admin_listener_are_capped_and_the_proxy_keeps_answering() {
    use tokio::io::AsyncReadExt as _;
    let (_azure, _upstream, proxy, admin) = start().await;
    let addr = admin.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Those beyond the cap are closed by the proxy: a read sees the end of the stream (or a reset).
    let mut closed = 0;
    for stream in &mut idle {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(std::time::Duration::from_millis(200), stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            _ => {}
        }
    }
    assert!(closed >= 100 - 32, "only {closed} of 100 idle admin connections were closed");
    assert_eq!(http().get(proxy.url("/healthz")).send().await.unwrap().status(), 200);
    // The admin API still answers once the idle ones go (here: the test closes them).
    drop(idle);
    let ok = within(std::time::Duration::from_secs(5), || async {
        http().get(format!("{admin}/admin/clients")).bearer_auth(TOKEN).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ok.is_some(), "the admin API answers again");
}
