//! Issue 12, the connection layer: the shared store over TLS (`rediss://`, rustls) with a private CA, a client
//! certificate (mutual TLS) and an ACL user's password in the URL; a wrong CA or a wrong password stops the start
//! with an error that names the key to fix and never shows the password. Each test starts its own `redis-server`
//! on a loopback port (TLS only: `--port 0`) and real replicas on 127.0.0.1:0.
//!
//! On a build without TLS support each of these fails: `rediss://` was refused by the config check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::upstream::Upstream;
use crate::common::*;
use dcr_proxy::app::App;
use dcr_proxy::clock::Clock;
use serde_json::Value;

const PASSWORD: &str = "redis-acl-password-0f3c9a71";

/// A TLS-only `redis-server` requiring client certificates of `pki`'s CA and the ACL user `dcrp` (`PASSWORD`); the
/// default user is off.
async fn tls_redis(pki: &TestPki) -> RedisProcess {
    let (cert, key, ca) = (pki.server_cert.clone(), pki.server_key.clone(), pki.ca.clone());
    RedisProcess::start(move |port| {
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "yes",
            "--user",
            "default",
            "off",
            "--user",
            "dcrp",
            "on",
            &format!(">{PASSWORD}"),
            "~*",
            "&*",
            "+@all",
        ];
        args.iter().map(|a| (*a).to_owned()).collect()
    })
    .await
}

fn tls_files(pki: &TestPki, ca: &str) -> String {
    format!(
        "redis_ca_file = \"{ca}\"\nredis_client_cert_file = \"{}\"\nredis_client_key_file = \"{}\"\n",
        pki.client_cert, pki.client_key
    )
}

/// Why [`App::new`] refused to start on `url` with `store_extra`.
async fn start_error(url: &str, store_extra: &str) -> String {
    let clock = Clock::manual(1_700_000_000);
    match App::new(redis_config(url, store_extra), clock).await {
        Ok(_) => panic!("the proxy started on {url} with {store_extra}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_sign_in_across_three_replicas_works_over_tls_with_a_private_ca_a_client_certificate_and_an_acl_user() {
    let dir = ScratchDir::new("redis-tls");
    let pki = TestPki::new(&dir, "good");
    let redis = tls_redis(&pki).await;
    let url = format!("rediss://dcrp:{PASSWORD}@127.0.0.1:{}", redis.port);
    let upstream = Upstream::start().await;
    let mut r = Vec::new();
    for _ in 0..3 {
        let builder = TestProxy::builder().upstream(upstream.url()).local();
        r.push(builder.redis_at(&url, &tls_files(&pki, &pki.ca)).start().await);
    }
    let client_id = register_public_client(&r[0]).await;
    let mut browser = Browser::new();
    let params = authorize(&r[1], &mut browser, &client_id).await;
    let resp = redeem(&r[2], &client_id, &params["code"]).await;
    assert_eq!(resp.status(), 200, "a code issued through one replica is redeemed on another, over TLS");
    let tokens: Value = resp.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    for proxy in &r {
        let status = http().get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap().status();
        assert_eq!(status, 200, "every replica finds the grant in Redis");
    }
    let resp = refresh(&r[0], &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(http().get(r[1].url("/readyz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_server_certificate_of_another_ca_stops_the_start_naming_the_ca_file_and_hiding_the_password() {
    let dir = ScratchDir::new("redis-tls-ca");
    let (pki, other) = (TestPki::new(&dir, "good"), TestPki::new(&dir, "other"));
    let redis = tls_redis(&pki).await;
    let url = format!("rediss://dcrp:{PASSWORD}@127.0.0.1:{}", redis.port);
    let error = start_error(&url, &tls_files(&pki, &other.ca)).await;
    assert!(error.contains("store.redis_ca_file") && error.contains("store.redis_url"), "{error}");
    assert!(!error.contains(PASSWORD), "the password leaked: {error}");
    // Without a CA file, the public roots are used: the test CA is not one of them.
    let no_ca =
        format!("redis_client_cert_file = \"{}\"\nredis_client_key_file = \"{}\"\n", pki.client_cert, pki.client_key);
    let error = start_error(&url, &no_ca).await;
    assert!(error.contains("store.redis_ca_file") && !error.contains(PASSWORD), "{error}");
}

#[tokio::test]
async fn a_wrong_password_stops_the_start_with_a_clear_error_without_the_password() {
    let dir = ScratchDir::new("redis-tls-auth");
    let pki = TestPki::new(&dir, "good");
    let redis = tls_redis(&pki).await;
    let wrong = "not-the-password-5e1d";
    let url = format!("rediss://dcrp:{wrong}@127.0.0.1:{}", redis.port);
    let error = start_error(&url, &tls_files(&pki, &pki.ca)).await;
    assert!(error.contains("store.redis_url") && error.contains("user:password"), "{error}");
    assert!(!error.contains(wrong) && !error.contains(PASSWORD), "a password leaked: {error}");
    // The same on plain TCP with `requirepass` (the default user's password).
    let plain = RedisProcess::start(|port| {
        ["--port", &port.to_string(), "--requirepass", PASSWORD].iter().map(|a| (*a).to_owned()).collect()
    })
    .await;
    let error = start_error(&format!("redis://:{wrong}@127.0.0.1:{}", plain.port), "").await;
    assert!(error.contains("store.redis_url") && !error.contains(wrong), "{error}");
    let upstream = Upstream::start().await;
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", plain.port);
    let proxy = TestProxy::builder().upstream(upstream.url()).local().redis_at(&url, "").start().await;
    let (_, tokens) = login(&proxy).await;
    assert!(tokens["access_token"].is_string(), "the right password works");
}
