//! Issue 16 §1: Entra's refusals, one family at a time, through the running proxy with the fake Entra ID —
//! what the MCP client gets, what the person sees, what the next sign-in asks of Entra, and the metric label.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fake_azure::{FakeAzure, ScriptedRefusal};
use common::upstream::Upstream;
use common::*;
use serde_json::{json, Value};

/// The logs of this test binary, captured in memory (a global subscriber: every test here writes into it).
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
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

fn capture_logs() -> Capture {
    static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Capture::default();
            let _ = tracing_subscriber::fmt().with_writer(capture.clone()).with_ansi(false).try_init();
            capture
        })
        .clone()
}

async fn start(azure: &FakeAzure) -> (Upstream, TestProxy) {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(azure).start().await;
    (upstream, proxy)
}

/// Approves the consent page in `browser`: where the browser lands.
async fn approve(proxy: &TestProxy, browser: &mut Browser, consent: &str) -> Landing {
    let (request, csrf) = (hidden_field(consent, "request"), hidden_field(consent, "csrf"));
    browser.post_form(&proxy.url("/consent"), &[("request", &request), ("csrf", &csrf), ("action", "approve")]).await
}

async fn idp_errors(proxy: &TestProxy, kind: &str) -> f64 {
    let url = serve_metrics(proxy).await;
    let text = http().get(url).send().await.unwrap().text().await.unwrap();
    metric(&text, &format!("dcr_proxy_idp_errors_total{{kind=\"{kind}\"}}")).unwrap_or(0.0)
}

#[tokio::test]
async fn a_sign_in_frequency_expiry_ends_the_grant_with_invalid_token_and_counts_as_grant_ended() {
    let azure = FakeAzure::start().await;
    azure.state().expires_in = 300;
    let (upstream, proxy) = start(&azure).await;
    let mut browser = Browser::new();
    let (client_id, tokens) = login_in(&proxy, &mut browser).await;
    let access = tokens["access_token"].as_str().unwrap();
    azure.state().refresh_error = Some(ScriptedRefusal::new("invalid_grant", 70043));
    proxy.clock.advance(400);
    let before = upstream.recorded().len();
    let resp = http().get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap();
    assert_eq!(resp.status(), 401, "never a 500");
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
    assert_eq!(upstream.recorded().len(), before);
    assert_eq!(refresh(&proxy, &client_id, tokens["refresh_token"].as_str().unwrap()).await.status(), 400);
    assert_eq!(idp_errors(&proxy, "grant_ended").await, 1.0);
    // Issue 23 item 11: sign-in frequency means a fresh sign-in, so the next one sends prompt=login (without it
    // Entra's single sign-on would reuse the very session it refused), and the consent page says why.
    azure.state().refresh_error = None;
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    assert!(consent.contains("sign in again regularly"), "{consent}");
    let _ = approve_and_sign_in(&proxy, &mut browser, &consent).await;
    let last = azure.state().authorize_queries.last().cloned().unwrap();
    assert_eq!(last.get("prompt").map(String::as_str), Some("login"), "{last:?}");
}

#[tokio::test]
async fn a_grant_that_simply_expired_forces_nothing_and_an_expired_code_at_the_callback_is_a_page() {
    let azure = FakeAzure::start().await;
    azure.state().expires_in = 300;
    let (_upstream, proxy) = start(&azure).await;
    let (client_id, tokens) = login(&proxy).await;
    azure.state().refresh_error = Some(ScriptedRefusal::new("invalid_grant", 70008));
    proxy.clock.advance(400);
    let resp =
        http().get(proxy.url("/mcp")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    azure.state().refresh_error = None;
    let _ = authorize(&proxy, &mut Browser::new(), &client_id).await;
    let last = azure.state().authorize_queries.last().cloned().unwrap();
    assert!(!last.contains_key("prompt"), "an inactivity expiry needs no fresh login: {last:?}");

    // Entra's code expired before the proxy redeemed it (70008): the person is told to start again, the client
    // is not sent a server_error.
    azure.state().code_error = Some(ScriptedRefusal::new("invalid_grant", 70008));
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    let landing = approve(&proxy, &mut browser, &consent).await;
    let Landing::Page(400, page) = landing else { panic!("expected a page for the person, not a redirect") };
    assert!(page.contains("Sign-in expired") && page.contains("connect again"), "{page}");
}

#[tokio::test]
async fn mfa_required_at_refresh_makes_the_next_sign_in_ask_for_a_fresh_login_with_entras_claims() {
    let azure = FakeAzure::start().await;
    azure.state().expires_in = 300;
    let (_upstream, proxy) = start(&azure).await;
    let mut browser = Browser::new();
    let (client_id, tokens) = login_in(&proxy, &mut browser).await;
    let claims = r#"{"access_token":{"capolids":{"essential":true,"values":["c1"]}}}"#;
    azure.state().refresh_error = Some(ScriptedRefusal {
        suberror: Some("basic_action".into()),
        claims: Some(claims.into()),
        ..ScriptedRefusal::new("invalid_grant", 50076)
    });
    proxy.clock.advance(400);
    let resp =
        http().get(proxy.url("/mcp")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
    assert_eq!(idp_errors(&proxy, "interaction_required").await, 1.0);

    // The client signs in again: the consent page says what the organisation requires, and Entra is asked for a
    // fresh login with its claims — never prompt=consent.
    azure.state().refresh_error = None;
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else {
        panic!("consent page");
    };
    assert!(consent.contains("multi-factor authentication"), "{consent}");
    let params = approve_and_sign_in(&proxy, &mut browser, &consent).await;
    assert!(params.contains_key("code"), "{params:?}");
    let asked = azure.state().authorize_queries.last().cloned().unwrap();
    assert_eq!(asked.get("prompt").map(String::as_str), Some("login"));
    assert_eq!(asked.get("claims").map(String::as_str), Some(claims));
    assert!(!asked.contains_key("login_hint"), "a shared client registration must not reveal who signed in last");

    // Used once: the sign-in after that is an ordinary one, in this browser too.
    let _ = authorize(&proxy, &mut browser, &client_id).await;
    let asked = azure.state().authorize_queries.last().cloned().unwrap();
    assert!(!asked.contains_key("prompt") && !asked.contains_key("claims"), "{asked:?}");
    assert!(azure.state().authorize_queries.iter().all(|q| q.get("prompt").map(String::as_str) != Some("consent")));
}

#[tokio::test]
async fn a_device_compliance_refusal_at_code_exchange_tells_the_person_and_marks_the_next_sign_in() {
    let azure = FakeAzure::start().await;
    let (_upstream, proxy) = start(&azure).await;
    let client_id = register_public_client(&proxy).await;
    azure.state().code_error = Some(ScriptedRefusal::new("invalid_grant", 530003));
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    let landing = approve(&proxy, &mut browser, &consent).await;
    let Landing::Page(403, page) = landing else { panic!("expected a page for the person") };
    assert!(page.contains("managed or compliant device"), "{page}");
    // The next attempt asks Entra for a fresh login.
    azure.state().code_error = None;
    let params = authorize(&proxy, &mut browser, &client_id).await;
    assert!(params.contains_key("code"));
    let asked = azure.state().authorize_queries.last().cloned().unwrap();
    assert_eq!(asked.get("prompt").map(String::as_str), Some("login"));
}

#[tokio::test]
async fn missing_admin_consent_is_a_page_for_the_person_not_a_redirect() {
    let logs = capture_logs();
    let azure = FakeAzure::start().await;
    let (_upstream, proxy) = start(&azure).await;
    let client_id = register_public_client(&proxy).await;
    // At Entra's authorize (consent_required, AADSTS65001) and at the code exchange (AADSTS90094).
    for script in [0, 1] {
        if script == 0 {
            azure.state().authorize_error = Some(("consent_required".into(), 65001));
        } else {
            azure.state().authorize_error = None;
            azure.state().code_error = Some(ScriptedRefusal::new("invalid_grant", 90094));
        }
        let mut browser = Browser::new();
        let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
        let landing = approve(&proxy, &mut browser, &consent).await;
        let Landing::Page(403, page) = landing else { panic!("expected a page for the person ({script})") };
        assert!(page.contains("administrator"), "{page}");
    }
    assert!(idp_errors(&proxy, "admin_consent").await >= 1.0);
    // One line for the operator: the app registration and the scopes an administrator must consent to.
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text.lines().find(|l| l.contains("admin consent is missing")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(common::fake_azure::APP_ID) && line.contains("User.Read"), "{line}");
    assert!(!line.contains(common::fake_azure::APP_SECRET));
    assert!(azure.state().authorize_queries.iter().all(|q| !q.contains_key("prompt")), "never prompt=consent");
}

#[tokio::test]
async fn throttling_keeps_the_grant_and_answers_503_with_retry_after() {
    let azure = FakeAzure::start().await;
    azure.state().expires_in = 300;
    let (upstream, proxy) = start(&azure).await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    azure.state().token_fault = Some(429);
    proxy.clock.advance(400);
    let before = upstream.recorded().len();
    let resp = http().get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "60", "Entra's Retry-After is passed on");
    assert_eq!(upstream.recorded().len(), before);
    assert_eq!(azure.state().refresh_calls, 0, "the 429 reached the fake's fault gate, not the grant");
    assert_eq!(azure.state().token_requests, 2, "a 429 is not hammered: login + one refresh attempt");
    assert_eq!(idp_errors(&proxy, "unavailable").await, 1.0);
    // Entra 5xx without Retry-After: tried again, then 503 with the proxy's own Retry-After.
    azure.state().token_fault = Some(503);
    let resp = http().get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 0);
    // The grant was kept: once Entra recovers, the same access token works.
    azure.state().token_fault = None;
    let resp = http().get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// Issue 23 item 11: what Entra requires of one person is kept for that person, not for the client: with a client
/// registration shared by two people (as a metadata-document client is), Bob's sign-in does not spend what Entra
/// asked of Alice, and Alice's next sign-in still carries it (found by the cookie her browser got when she signed
/// in). The cookie never reaches the upstream.
#[tokio::test]
async fn an_interaction_requirement_waits_for_its_person_not_for_the_next_sign_in_through_the_client() {
    let azure = FakeAzure::start().await;
    azure.state().expires_in = 300;
    let (upstream, proxy) = start(&azure).await;
    let client_id = register_public_client(&proxy).await;
    let (mut alice, mut bob) = (Browser::new(), Browser::new());
    let code = authorize(&proxy, &mut alice, &client_id).await["code"].clone();
    let alice_tokens: Value = redeem(&proxy, &client_id, &code).await.json().await.unwrap();
    assert!(alice.cookies.contains_key("dcrp-who"), "{:?}", alice.cookies.keys());
    azure.state().id_token_claims.insert("sub".into(), json!("bob-subject"));
    azure.state().id_token_claims.insert("oid".into(), json!("00000000-0000-0000-0000-0000000000b0"));
    let code = authorize(&proxy, &mut bob, &client_id).await["code"].clone();
    assert_eq!(redeem(&proxy, &client_id, &code).await.status(), 200);
    assert_ne!(alice.cookies["dcrp-who"], bob.cookies["dcrp-who"]);

    // Entra refuses Alice's refresh until she does MFA.
    let claims = r#"{"access_token":{"capolids":{"essential":true,"values":["c1"]}}}"#;
    azure.state().refresh_error =
        Some(ScriptedRefusal { claims: Some(claims.into()), ..ScriptedRefusal::new("invalid_grant", 50076) });
    proxy.clock.advance(400);
    let access = alice_tokens["access_token"].as_str().unwrap();
    let resp = http()
        .get(proxy.url("/mcp"))
        .bearer_auth(access)
        .header("cookie", format!("dcrp-who={}; keep=1", alice.cookies["dcrp-who"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    azure.state().refresh_error = None;

    // Bob signs in next through the same client: an ordinary sign-in, no words about MFA.
    let Landing::Page(200, consent) = bob.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    assert!(!consent.contains("multi-factor"), "{consent}");
    let _ = approve_and_sign_in(&proxy, &mut bob, &consent).await;
    let asked = azure.state().authorize_queries.last().cloned().unwrap();
    assert!(!asked.contains_key("prompt") && !asked.contains_key("claims"), "Bob was asked Alice's: {asked:?}");

    // Alice's next sign-in asks Entra for a fresh login with its claims; once.
    azure.state().id_token_claims.clear();
    let Landing::Page(200, consent) = alice.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    assert!(consent.contains("multi-factor"), "{consent}");
    let _ = approve_and_sign_in(&proxy, &mut alice, &consent).await;
    let asked = azure.state().authorize_queries.last().cloned().unwrap();
    assert_eq!(asked.get("prompt").map(String::as_str), Some("login"), "{asked:?}");
    assert_eq!(asked.get("claims").map(String::as_str), Some(claims));
    let _ = authorize(&proxy, &mut alice, &client_id).await;
    assert!(!azure.state().authorize_queries.last().unwrap().contains_key("prompt"), "used once");

    // A forged person cookie (another shape, or someone's key guessed wrong) finds nothing and breaks nothing.
    let mut mallory = Browser::new();
    mallory.cookies.insert("dcrp-who".into(), "p.AAAAAAAAAAAAAAAAAAAAAA".into());
    let params = authorize(&proxy, &mut mallory, &client_id).await;
    let tokens: Value = redeem(&proxy, &client_id, &params["code"]).await.json().await.unwrap();
    let resp = http()
        .get(proxy.url("/mcp"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .header("cookie", format!("dcrp-who={}; keep=1", mallory.cookies["dcrp-who"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = upstream.recorded().last().unwrap().headers.get("cookie").cloned().unwrap_or_default();
    assert_eq!(seen, vec!["keep=1".to_owned()], "the person cookie is the proxy's own");
}

/// Issue 25 §2: with a multi-tenant registration (`organizations`) and `idp.allowed_tenants`, a person of another
/// tenant is refused at the callback with a page that names their tenant, before any grant exists; the client gets
/// no code; a person of an allowed tenant signs in. The issuer must still be the one of the token's own tenant.
#[tokio::test]
async fn only_the_allowed_tenants_sign_in_with_a_multi_tenant_registration() {
    use common::fake_azure::TENANT_ID;
    const OTHER: &str = "0f0f0f0f-1111-2222-3333-444444444444";
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let extra = format!("allowed_tenants = [\"{}\"]\n", TENANT_ID.to_ascii_uppercase());
    let proxy =
        TestProxy::builder().upstream(upstream.url()).azure(&azure).azure_tenant("organizations", &extra).start().await;
    let client_id = register_public_client(&proxy).await;

    // A person of the allowed tenant: signed in.
    let params = authorize(&proxy, &mut Browser::new(), &client_id).await;
    assert!(params.contains_key("code"), "{params:?}");
    assert_eq!(proxy.app.store.stats().grants, 0, "no grant before the code is redeemed");

    // A person of another tenant (a token Entra issued for their tenant): a page, no code, no grant.
    let authority = azure.authority();
    azure.state().id_token_claims.insert("tid".into(), json!(OTHER));
    azure.state().id_token_claims.insert("iss".into(), json!(format!("{authority}/{OTHER}/v2.0")));
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    let landing = approve(&proxy, &mut browser, &consent).await;
    let Landing::Page(403, page) = landing else { panic!("expected a page for the person, not a redirect") };
    assert!(page.contains("not allowed") && page.contains(OTHER), "{page}");
    assert_eq!(proxy.app.store.stats().grants, 0);

    // A token whose issuer is not its own tenant's stays a protocol error (never admitted by the list).
    azure.state().id_token_claims.insert("tid".into(), json!(TENANT_ID));
    let params = authorize(&proxy, &mut Browser::new(), &client_id).await;
    assert_eq!(params.get("error").map(String::as_str), Some("server_error"), "{params:?}");
}

/// `idp.allowed_tenants` is checked at start: ids only, and a single-tenant registration cannot be widened.
#[test]
fn allowed_tenants_are_tenant_ids_and_cannot_widen_a_single_tenant_app() {
    let base = "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:8080\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\
                [idp]\nkind = \"azure\"\nclient_id = \"c\"\nclient_secret = \"s\"\n";
    let err = |extra: &str| {
        dcr_proxy::config::Config::from_toml(&format!("{base}{extra}"), |_| None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err("tenant = \"organizations\"\nallowed_tenants = [\"contoso.com\"]\n").contains("idp.allowed_tenants"));
    let single = "tenant = \"9188040d-6c67-4c5b-b112-36a304b66dad\"\nallowed_tenants = [\"0f0f0f0f-1111-2222-3333-444444444444\"]\n";
    assert!(err(single).contains("idp.allowed_tenants"), "{}", err(single));
    assert_eq!(err("tenant = \"organizations\"\nallowed_tenants = [\"0f0f0f0f-1111-2222-3333-444444444444\"]\n"), "");
}
