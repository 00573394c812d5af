//! No token, code, secret or password appears in the logs of a full flow, at every log level.
//!
//! This test binary installs a global TRACE subscriber that writes into memory, runs the whole flow (confidential
//! client, consent, fake Entra ID, token, proxied call, refresh, upstream refresh, revocation, introspection, a
//! failed and a successful local login), then searches the captured logs for every secret it saw.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::fake_azure::{FakeAzure, APP_SECRET};
use common::upstream::Upstream;
use common::*;
use serde_json::Value;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs_of_a_full_flow() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .init();

    let mut secrets: Vec<String> = vec![APP_SECRET.to_owned(), ALICE_PASSWORD.to_owned(), VERIFIER.to_owned()];
    let azure = FakeAzure::start().await;
    azure.state().expires_in = 300;
    let upstream = Upstream::start().await;
    let introspection = "[introspection]\nclient_id = \"rs\"\nclient_secret = \"introspection-secret-5678\"\n";
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).extra(introspection).start().await;
    secrets.push("introspection-secret-5678".into());

    // A confidential client through the whole flow.
    let reg: Value = register_json(
        &proxy,
        serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "client_secret_post"}),
    )
    .await;
    let client_id = reg["client_id"].as_str().unwrap().to_owned();
    let client_secret = reg["client_secret"].as_str().unwrap().to_owned();
    secrets.push(client_secret.clone());
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    secrets.push(hidden_field(&consent, "request"));
    secrets.push(hidden_field(&consent, "csrf"));
    let params = authorize_after_consent(&proxy, &mut browser, &consent).await;
    secrets.extend(browser.cookies.values().cloned());
    let code = params["code"].clone();
    secrets.push(code.clone());
    let token_form = |extra: &[(&'static str, String)]| {
        let mut f = vec![("client_id", client_id.clone()), ("client_secret", client_secret.clone())];
        f.extend_from_slice(extra);
        f
    };
    let tokens: Value = http()
        .post(proxy.url("/token"))
        .form(&token_form(&[
            ("grant_type", "authorization_code".into()),
            ("code", code.clone()),
            ("redirect_uri", CLIENT_REDIRECT.into()),
            ("code_verifier", VERIFIER.into()),
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    secrets.extend([access.clone(), refresh_token.clone()]);

    // Failures that log: a bad bearer, a replayed code, a wrong client secret.
    http().get(proxy.url("/mcp")).bearer_auth("not-a-token-but-still-secret").send().await.unwrap();
    secrets.push("not-a-token-but-still-secret".into());
    http()
        .post(proxy.url("/token"))
        .form(&token_form(&[
            ("grant_type", "authorization_code".into()),
            ("code", code.clone()),
            ("code_verifier", VERIFIER.into()),
        ]))
        .send()
        .await
        .unwrap();
    http()
        .post(proxy.url("/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", &client_id),
            ("client_secret", "guessed-secret-value"),
        ])
        .send()
        .await
        .unwrap();
    secrets.push("guessed-secret-value".into());

    // The replayed code revoked the grant: log in again, then use, refresh, refresh upstream, introspect, revoke.
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    let params = authorize_after_consent(&proxy, &mut browser, &consent).await;
    secrets.push(params["code"].clone());
    let tokens: Value = http()
        .post(proxy.url("/token"))
        .form(&token_form(&[
            ("grant_type", "authorization_code".into()),
            ("code", params["code"].clone()),
            ("redirect_uri", CLIENT_REDIRECT.into()),
            ("code_verifier", VERIFIER.into()),
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    secrets.extend([access.clone(), tokens["refresh_token"].as_str().unwrap().to_owned()]);
    assert_eq!(http().post(proxy.url("/mcp")).bearer_auth(&access).body("{}").send().await.unwrap().status(), 200);
    let rotated: Value = http()
        .post(proxy.url("/token"))
        .form(&token_form(&[
            ("grant_type", "refresh_token".into()),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap().into()),
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    secrets.extend([
        rotated["access_token"].as_str().unwrap().to_owned(),
        rotated["refresh_token"].as_str().unwrap().to_owned(),
    ]);
    proxy.clock.advance(250);
    assert_eq!(
        http()
            .get(proxy.url("/mcp"))
            .bearer_auth(rotated["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    http()
        .post(proxy.url("/introspect"))
        .basic_auth("rs", Some("introspection-secret-5678"))
        .form(&[("token", rotated["access_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    http()
        .post(proxy.url("/revoke"))
        .form(&token_form(&[("token", rotated["refresh_token"].as_str().unwrap().into())]))
        .send()
        .await
        .unwrap();
    secrets.extend(azure.issued_secrets());

    // The local login: a wrong password, then the right one.
    let local = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let local_client = register_public_client(&local).await;
    let mut b = Browser::new();
    let Landing::Page(200, consent) = b.get(&authorize_url(&local, &local_client, "")).await else { panic!() };
    let form = [
        ("request", hidden_field(&consent, "request")),
        ("csrf", hidden_field(&consent, "csrf")),
        ("action", "approve".into()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let Landing::Page(200, login_page) = b.post_form(&local.url("/consent"), &form).await else { panic!() };
    let state = hidden_field(&login_page, "state");
    secrets.push(state.clone());
    b.post_form(&local.url("/login"), &[("state", &state), ("username", "alice"), ("password", "wrong-password-123")])
        .await;
    secrets.push("wrong-password-123".into());
    let Landing::Client(p) = b
        .post_form(&local.url("/login"), &[("state", &state), ("username", "alice"), ("password", ALICE_PASSWORD)])
        .await
    else {
        panic!("local login failed")
    };
    secrets.push(p["code"].clone());

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(logs.contains("client registered"), "the capture works");
    // Issue 26 item 5: a refused token request says which rule refused it, without the secret it carried.
    let refusals: Vec<&str> = logs.lines().filter(|l| l.contains("oauth request refused")).collect();
    assert!(refusals.iter().any(|l| l.contains("invalid_grant")), "the replayed code: {refusals:?}");
    assert!(refusals.iter().any(|l| l.contains("invalid_client")), "the guessed secret: {refusals:?}");
    assert!(logs.lines().count() > 50, "trace-level logs were captured");
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(!logs.contains(secret.as_str()), "a secret appears in the logs: {}…", &secret[..6]);
    }
}

/// Approves a consent page already shown and follows the fake IdP back to the client.
async fn authorize_after_consent(
    proxy: &TestProxy,
    browser: &mut Browser,
    consent: &str,
) -> std::collections::HashMap<String, String> {
    let form = [
        ("request", hidden_field(consent, "request")),
        ("csrf", hidden_field(consent, "csrf")),
        ("action", "approve".to_owned()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match browser.post_form(&proxy.url("/consent"), &form).await {
        Landing::Client(params) => params,
        Landing::Page(s, body) => panic!("consent failed: {s} {body}"),
    }
}
