//! Issue 16 §2: Continuous Access Evaluation through the running proxy, with the fake Entra ID as the IdP and its
//! fake Graph as the upstream: client capabilities sent as the `xms_cc` claims request, an upstream claims
//! challenge answered by one refresh with those claims and one retry, and a challenge Entra cannot satisfy without
//! the person sending them to sign in again with the claims.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::fake_azure::{FakeAzure, ScriptedRefusal};
use crate::common::*;
use serde_json::Value;

const CP1: &str = "client_capabilities = [\"cp1\"]\n";
/// Microsoft's example claims challenge (learn.microsoft.com, "Claims challenges, claims requests and client
/// capabilities").
const CHALLENGE: &str = r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#;

/// The proxy in front of the fake Graph, with `extra` in its `[idp]` table.
async fn start(azure: &FakeAzure, extra: &str) -> TestProxy {
    TestProxy::builder().upstream(azure.authority()).azure(azure).extra(extra).start().await
}

async fn get_me(proxy: &TestProxy, access: &str) -> reqwest::Response {
    http().get(proxy.url("/v1.0/me")).bearer_auth(access).send().await.unwrap()
}

fn json(text: Option<&String>) -> Value {
    text.and_then(|t| serde_json::from_str(t).ok()).unwrap_or(Value::Null)
}

#[tokio::test]
async fn client_capabilities_are_asked_as_the_xms_cc_claims_request_at_authorize_and_token() {
    let azure = FakeAzure::start().await;
    let proxy = start(&azure, CP1).await;
    let (_, tokens) = login(&proxy).await;
    let expected = serde_json::json!({"access_token": {"xms_cc": {"values": ["cp1"]}}});
    let authorize = azure.state().authorize_queries.last().cloned().unwrap();
    assert_eq!(json(authorize.get("claims")), expected);
    let code_form = azure.state().token_forms.last().cloned().unwrap();
    assert_eq!(code_form.get("grant_type").map(String::as_str), Some("authorization_code"));
    assert_eq!(json(code_form.get("claims")), expected);
    assert!(!authorize.contains_key("prompt"), "no prompt on an ordinary sign-in");
    assert_eq!(get_me(&proxy, tokens["access_token"].as_str().unwrap()).await.status(), 200);
}

#[tokio::test]
async fn a_claims_challenge_is_answered_by_one_refresh_with_the_claims_and_one_retry() {
    let azure = FakeAzure::start().await;
    let proxy = start(&azure, CP1).await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    azure.state().cae_claims = Some(CHALLENGE.into());

    let resp = get_me(&proxy, access).await;
    assert_eq!(resp.status(), 200, "refreshed with the claims and retried");
    assert_eq!(azure.state().refresh_calls, 1);
    let refresh_form = azure.state().token_forms.last().cloned().unwrap();
    let asked = json(refresh_form.get("claims"));
    assert_eq!(asked["access_token"]["acrs"]["value"], "c1", "{asked}");
    assert_eq!(asked["access_token"]["xms_cc"]["values"][0], "cp1", "{asked}");
    // The fresh token is kept: no more refreshes.
    for _ in 0..3 {
        assert_eq!(get_me(&proxy, access).await.status(), 200);
    }
    assert_eq!(azure.state().refresh_calls, 1);
}

#[tokio::test]
async fn concurrent_claims_challenges_of_one_grant_refresh_once() {
    let azure = FakeAzure::start().await;
    let proxy = std::sync::Arc::new(start(&azure, CP1).await);
    let (_, tokens) = login(&*proxy).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    azure.state().cae_claims = Some(CHALLENGE.into());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (proxy, access) = (proxy.clone(), access.clone());
        tasks.push(tokio::spawn(async move { get_me(&proxy, &access).await.status().as_u16() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(azure.state().refresh_calls, 1, "single flight");
}

#[tokio::test]
async fn a_challenge_that_a_refresh_cannot_satisfy_costs_one_refresh_per_floor_and_ends_in_401() {
    let azure = FakeAzure::start().await;
    let proxy = start(&azure, CP1).await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    azure.state().cae_claims = Some(CHALLENGE.into());
    azure.state().cae_unsatisfiable = true;
    let resp = get_me(&proxy, access).await;
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains("error=\"invalid_token\"") && !challenge.contains("insufficient_claims"), "{challenge}");
    assert_eq!(azure.state().refresh_calls, 1, "one refresh, one retry, no loop");
    // Within the refresh floor the next request does not go to Entra again; after it, one refresh again.
    for _ in 0..3 {
        assert_eq!(get_me(&proxy, access).await.status(), 401);
    }
    assert_eq!(azure.state().refresh_calls, 1, "no refresh loop at Entra");
    proxy.clock.advance(31);
    assert_eq!(get_me(&proxy, access).await.status(), 401);
    assert_eq!(azure.state().refresh_calls, 2);
}

#[tokio::test]
async fn an_oversized_or_malformed_challenge_is_not_sent_to_entra() {
    let azure = FakeAzure::start().await;
    let proxy = start(&azure, &format!("{CP1}max_claims_bytes = 256\n")).await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    let big = format!(r#"{{"access_token":{{"acrs":{{"essential":true,"value":"{}"}}}}}}"#, "x".repeat(400));
    azure.state().cae_claims = Some(big);
    let resp = get_me(&proxy, access).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert!(
        azure.state().token_forms.iter().all(|f| !f.get("claims").is_some_and(|c| c.contains("xxxx"))),
        "the oversized claims never reach Entra"
    );
}

#[tokio::test]
async fn a_challenge_entra_answers_with_interaction_required_sends_the_person_to_sign_in_with_the_claims() {
    let azure = FakeAzure::start().await;
    let proxy = start(&azure, CP1).await;
    let mut browser = Browser::new();
    let (client_id, tokens) = login_in(&proxy, &mut browser).await;
    let access = tokens["access_token"].as_str().unwrap();
    azure.state().cae_claims = Some(CHALLENGE.into());
    azure.state().refresh_error = Some(ScriptedRefusal {
        suberror: Some("basic_action".into()),
        ..ScriptedRefusal::new("interaction_required", 50079)
    });
    let resp = get_me(&proxy, access).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
    assert_eq!(azure.state().refresh_calls, 1);
    assert_eq!(proxy.app.store.stats().grants, 0, "the grant ended");
    assert_eq!(get_me(&proxy, access).await.status(), 401);
    assert_eq!(azure.state().refresh_calls, 1, "no loop at Entra");

    // The next sign-in carries the challenge's claims (with cp1) and prompt=login; its token satisfies Graph.
    azure.state().refresh_error = None;
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    assert!(consent.contains("multi-factor"), "{consent}");
    let params = approve_and_sign_in(&proxy, &mut browser, &consent).await;
    let asked = azure.state().authorize_queries.last().cloned().unwrap();
    assert_eq!(asked.get("prompt").map(String::as_str), Some("login"));
    let claims = json(asked.get("claims"));
    assert_eq!(claims["access_token"]["acrs"]["value"], "c1", "{claims}");
    assert_eq!(claims["access_token"]["xms_cc"]["values"][0], "cp1", "{claims}");
    let resp = redeem(&proxy, &client_id, params.get("code").unwrap()).await;
    let again: Value = resp.json().await.unwrap();
    assert_eq!(get_me(&proxy, again["access_token"].as_str().unwrap()).await.status(), 200);
}

#[tokio::test]
async fn a_claims_challenge_is_answered_without_configured_capabilities_too() {
    let azure = FakeAzure::start().await;
    let proxy = start(&azure, "").await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    azure.state().cae_claims = Some(CHALLENGE.into());
    assert_eq!(get_me(&proxy, access).await.status(), 200);
    assert_eq!(azure.state().refresh_calls, 1);
    let asked = json(azure.state().token_forms.last().cloned().unwrap().get("claims"));
    assert_eq!(asked, serde_json::from_str::<Value>(CHALLENGE).unwrap(), "exactly the challenge's claims");
}
