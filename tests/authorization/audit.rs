//! The audit trail through the running server: a full flow (registration, RFC 7592 update and delete, consent
//! approved and denied, sign-in, grant, refresh, refresh-token reuse, revocation, admin actions) leaves one JSON
//! line per event with who, which client, from where and which request — and none of the flow's tokens, codes or
//! secrets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common::upstream::Upstream;
use crate::common::*;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "admin-token-for-the-audit-test-0123456789";

/// The audit lines once `done` holds for them; bounded: 10 s.
async fn lines_when(path: &std::path::Path, done: impl Fn(&[Value]) -> bool) -> (String, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
        if done(&lines) {
            return (text, lines);
        }
        assert!(Instant::now() < deadline, "audit lines never came: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn events(lines: &[Value]) -> Vec<&str> {
    lines.iter().map(|l| l["event"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_full_flow_and_a_reuse_leave_their_events_and_no_secret_in_the_audit_file() {
    let dir = std::env::temp_dir().join(format!("dcrp-audit-{}", dcr_proxy::crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let azure = fake_azure::FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .azure(&azure)
        .env("DCR_PROXY_ADMIN_TOKEN", ADMIN_TOKEN)
        .extra(format!("[admin]\nlisten = \"127.0.0.1:9\"\n[audit]\npath = \"{}\"\n", path.display()))
        .start()
        .await;
    let admin = serve_admin(&proxy).await;
    let mut secrets: Vec<String> = vec![ADMIN_TOKEN.into(), fake_azure::APP_SECRET.into()];

    // A confidential client registers, updates itself (RFC 7592), signs a user in, refreshes, reuses.
    let reg = register_json(
        &proxy,
        json!({"redirect_uris": [CLIENT_REDIRECT], "client_name": "Audit Client",
               "token_endpoint_auth_method": "client_secret_post"}),
    )
    .await;
    let client_id = reg["client_id"].as_str().unwrap().to_owned();
    let client_secret = reg["client_secret"].as_str().unwrap().to_owned();
    let registration_token = reg["registration_access_token"].as_str().unwrap().to_owned();
    secrets.extend([client_secret.clone(), registration_token.clone()]);
    let mut browser = Browser::new();
    let params = authorize(&proxy, &mut browser, &client_id).await;
    let code = params["code"].clone();
    secrets.push(code.clone());
    let resp = redeem_with(&proxy, &client_id, &code, &[("client_secret", &client_secret)]).await;
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.unwrap();
    let first_refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    secrets.extend([tokens["access_token"].as_str().unwrap().to_owned(), first_refresh.clone()]);
    let form = |refresh: &str| {
        [
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh.to_owned()),
            ("client_id", client_id.clone()),
            ("client_secret", client_secret.clone()),
        ]
    };
    let second: Value =
        http().post(proxy.url("/token")).form(&form(&first_refresh)).send().await.unwrap().json().await.unwrap();
    secrets.extend([
        second["access_token"].as_str().unwrap().to_owned(),
        second["refresh_token"].as_str().unwrap().to_owned(),
    ]);
    proxy.clock.advance(30); // past tokens.refresh_grace (10 s), within which a retry is not a reuse
    let reused = http().post(proxy.url("/token")).form(&form(&first_refresh)).send().await.unwrap();
    assert_eq!(error_of(reused).await, (400, "invalid_grant".to_owned()));

    // A public client: consent denied once, then a grant whose access token its client revokes.
    let (public_id, public_tokens) = login(&proxy).await;
    for key in ["access_token", "refresh_token"] {
        secrets.push(public_tokens[key].as_str().unwrap().to_owned());
    }
    let revoke = http()
        .post(proxy.url("/revoke"))
        .form(&[("token", public_tokens["access_token"].as_str().unwrap()), ("client_id", &public_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200);
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &public_id, "")).await else { panic!() };
    let denied = browser
        .post_form(
            &proxy.url("/consent"),
            &[
                ("request", &hidden_field(&consent, "request")),
                ("csrf", &hidden_field(&consent, "csrf")),
                ("action", "deny"),
            ],
        )
        .await;
    assert!(matches!(denied, Landing::Client(ref p) if p["error"] == "access_denied"));

    // The confidential client updates and deletes itself; the operator switches registration off.
    let update = http()
        .put(proxy.url(&format!("/register/{client_id}")))
        .bearer_auth(&registration_token)
        .json(&json!({"client_id": client_id, "redirect_uris": [CLIENT_REDIRECT], "client_name": "Audit Client 2",
                      "token_endpoint_auth_method": "client_secret_post"}))
        .send()
        .await
        .unwrap();
    assert_eq!(update.status(), 200, "{}", update.text().await.unwrap());
    let delete = http()
        .delete(proxy.url(&format!("/register/{client_id}")))
        .bearer_auth(&registration_token)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 204);
    let off =
        http().post(format!("{admin}/admin/registration?enabled=false")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(off.status(), 200);

    let (text, lines) = lines_when(&path, |l| events(l).contains(&"admin_action")).await;
    let seen = events(&lines);
    for expected in [
        "client_registered",
        "consent_approved",
        "sign_in_completed",
        "grant_issued",
        "refresh_reuse_detected",
        "token_revoked",
        "consent_denied",
        "client_updated",
        "client_deleted",
        "admin_action",
    ] {
        assert!(seen.contains(&expected), "{expected} missing from {seen:?}");
    }
    let one = |event: &str, client: &str| {
        lines
            .iter()
            .find(|l| l["event"] == event && l["client_id"] == client)
            .unwrap_or_else(|| panic!("{event} of {client}: {text}"))
    };
    let grant = one("grant_issued", &client_id);
    assert_eq!(grant["client_name"], "Audit Client");
    assert_eq!(grant["source"], "127.0.0.1");
    assert!(grant["request_id"].as_u64().is_some() && grant["time"].as_str().unwrap().ends_with('Z'), "{grant}");
    let subject = grant["subject"].as_str().unwrap();
    assert!(!subject.is_empty());
    assert_eq!(one("sign_in_completed", &client_id)["subject"], subject);
    let reuse = one("refresh_reuse_detected", &client_id);
    assert_eq!((reuse["subject"].as_str(), reuse["client_name"].as_str()), (Some(subject), Some("Audit Client")));
    assert_eq!(one("consent_denied", &public_id)["source"], "127.0.0.1");
    let admin_line = lines.iter().find(|l| l["event"] == "admin_action").unwrap();
    assert_eq!(admin_line["detail"], "registration off");
    // Request ids tie lines to the access log: distinct requests, distinct ids.
    let ids: std::collections::BTreeSet<u64> = lines.iter().filter_map(|l| l["request_id"].as_u64()).collect();
    assert!(ids.len() >= 8, "{text}");

    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a token, code or secret is in the audit trail: {text}");
    }
    assert_eq!(proxy.app.audit.dropped(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_audit_path_that_cannot_be_opened_stops_the_start_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("dcrp-audit-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("proxy.toml");
    let hash = dcr_proxy::idp::local::hash_password(ALICE_PASSWORD).unwrap();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:8080\"\n\
             [upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n\
             [audit]\npath = \"{}/no-such-dir/audit.jsonl\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("audit.path"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_upstream_grant_ended_by_the_idp_is_audited_without_any_idp_token() {
    let dir = std::env::temp_dir().join(format!("dcrp-audit-idp-{}", dcr_proxy::crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let azure = fake_azure::FakeAzure::start().await;
    azure.state().expires_in = 300;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .azure(&azure)
        .extra(format!("[audit]\npath = \"{}\"\n", path.display()))
        .start()
        .await;
    let (client_id, tokens) = login(&proxy).await;
    azure.revoke_all_refresh_tokens();
    proxy.clock.advance(250);
    let resp =
        http().get(proxy.url("/mcp")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let (text, lines) = lines_when(&path, |l| events(l).contains(&"upstream_grant_ended")).await;
    let ended = lines.iter().find(|l| l["event"] == "upstream_grant_ended").unwrap();
    assert_eq!(ended["client_id"], client_id.as_str());
    let grant = lines.iter().find(|l| l["event"] == "grant_issued").unwrap();
    assert_eq!(ended["subject"], grant["subject"]);
    assert!(ended["request_id"].as_u64().is_some());
    let issued = azure.issued_secrets();
    assert!(!issued.is_empty());
    for secret in issued.iter().chain([tokens["access_token"].as_str().unwrap().to_owned()].iter()) {
        assert!(!text.contains(secret.as_str()), "an IdP or proxy token is in the audit trail");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
