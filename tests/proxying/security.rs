//! The security suite: one test per attack, each asserting the refusal and that nothing was issued.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::fake_azure::FakeAzure;
use crate::common::upstream::Upstream;
use crate::common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn nothing_issued(proxy: &TestProxy) {
    assert!(proxy.app.store.stats().access_tokens == 0, "no access token was issued");
    assert_eq!(proxy.app.store.stats().refresh_tokens, 0, "no refresh token was issued");
}

#[tokio::test]
async fn open_redirect_via_unregistered_redirect_uri_is_refused() {
    let (azure, _u, proxy) = setup().await;
    let client_id = register_public_client(&proxy).await;
    let url = authorize_url(&proxy, &client_id, "")
        .replace(&urlencode(CLIENT_REDIRECT), &urlencode("https://evil.example/steal"));
    let resp = http().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().get("location").is_none());
    assert!(azure.state().authorize_queries.is_empty());
}

#[tokio::test]
async fn authorization_without_pkce_or_with_plain_is_refused() {
    let (azure, _u, proxy) = setup().await;
    let client_id = register_public_client(&proxy).await;
    let base = authorize_url(&proxy, &client_id, "");
    for url in [
        base.replace("&code_challenge_method=S256", "").replace(&format!("&code_challenge={CHALLENGE}"), ""),
        base.replace("code_challenge_method=S256", "code_challenge_method=plain"),
        base.replace(CHALLENGE, "short"),
    ] {
        let resp = http().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 302);
        assert!(resp.headers()["location"].to_str().unwrap().contains("error=invalid_request"), "{url}");
    }
    assert!(azure.state().authorize_queries.is_empty());
}

#[tokio::test]
async fn wrong_pkce_verifier_is_refused_and_spends_the_code() {
    let (_a, _u, proxy) = setup().await;
    let client_id = register_public_client(&proxy).await;
    let params = authorize(&proxy, &mut Browser::new(), &client_id).await;
    let resp = redeem_with(&proxy, &client_id, &params["code"], &[("code_verifier", &"W".repeat(64))]).await;
    assert_eq!(error_of(resp).await, (400, "invalid_grant".into()));
    let retry = redeem(&proxy, &client_id, &params["code"]).await;
    assert_eq!(error_of(retry).await, (400, "invalid_grant".into()));
    nothing_issued(&proxy);
}

#[tokio::test]
async fn replayed_code_is_refused_and_revokes_what_it_issued() {
    let (_a, upstream, proxy) = setup().await;
    let client_id = register_public_client(&proxy).await;
    let params = authorize(&proxy, &mut Browser::new(), &client_id).await;
    let tokens: Value = redeem(&proxy, &client_id, &params["code"]).await.json().await.unwrap();
    let replay = redeem(&proxy, &client_id, &params["code"]).await;
    assert_eq!(error_of(replay).await, (400, "invalid_grant".into()));
    let resp =
        http().get(proxy.url("/mcp")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(upstream.recorded().is_empty());
}

#[tokio::test]
async fn refresh_token_reuse_revokes_the_grant() {
    let (_a, _u, proxy) = setup().await;
    let (client_id, tokens) = login(&proxy).await;
    let old = tokens["refresh_token"].as_str().unwrap();
    let new: Value = refresh(&proxy, &client_id, old).await.json().await.unwrap();
    proxy.clock.advance(11);
    assert_eq!(error_of(refresh(&proxy, &client_id, old).await).await, (400, "invalid_grant".into()));
    let next = refresh(&proxy, &client_id, new["refresh_token"].as_str().unwrap()).await;
    assert_eq!(error_of(next).await, (400, "invalid_grant".into()), "the thief's and the owner's tokens both die");
    assert!(proxy.app.store.stats().grants == 0);
}

#[tokio::test]
async fn token_for_another_resource_is_refused() {
    let (_a, _u, proxy) = setup().await;
    let client_id = register_public_client(&proxy).await;
    let params = authorize(&proxy, &mut Browser::new(), &client_id).await;
    let resp = redeem_with(&proxy, &client_id, &params["code"], &[("resource", "https://other.example/mcp")]).await;
    assert_eq!(error_of(resp).await, (400, "invalid_target".into()));
    nothing_issued(&proxy);
}

#[tokio::test]
async fn registration_is_refused_at_the_client_cap_only_when_every_client_was_used() {
    let (_a, _u, proxy) = setup_with("[registration]\nmax_clients = 2\nunused_client_ttl = \"1h\"\n").await;
    let (first, _) = login(&proxy).await;
    let (second, _) = login(&proxy).await;
    let resp = http()
        .post(proxy.url("/register"))
        .json(&json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "60");
    assert_eq!(error_of(resp).await, (503, "temporarily_unavailable".into()));
    assert_eq!(proxy.app.store.stats().clients, 2);
    assert!(
        proxy.app.store.memory().expect("memory store").has_client(&first)
            && proxy.app.store.memory().expect("memory store").has_client(&second)
    );
}

#[tokio::test]
async fn registration_rate_limit_answers_429_with_retry_after() {
    let (_a, _u, proxy) = setup_with("[limits]\nregister_per_minute = 2\ntoken_per_minute = 3\n").await;
    let register = || http().post(proxy.url("/register")).json(&json!({"redirect_uris": [CLIENT_REDIRECT]})).send();
    // Issue 26 item 4: every answer of a limited endpoint advertises the policy and what is left of it
    // (draft-ietf-httpapi-ratelimit-headers), the refusal included, whose wait is its Retry-After.
    let first = register().await.unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(first.headers()["ratelimit-policy"], "\"register\";q=2;w=60");
    assert_eq!(first.headers()["ratelimit"], "\"register\";r=1;t=30");
    let exposed = first.headers()["access-control-expose-headers"].to_str().unwrap().to_owned();
    assert!(exposed.contains("RateLimit-Policy") && exposed.contains("Retry-After"), "a browser reads them: {exposed}");
    let second = register().await.unwrap();
    assert_eq!(second.headers()["ratelimit"], "\"register\";r=0;t=30");
    let resp = register().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "30");
    assert_eq!(resp.headers()["ratelimit"], "\"register\";r=0;t=30");
    assert_eq!(proxy.app.store.stats().clients, 2);
    for attempt in 1..=4 {
        let resp = http().post(proxy.url("/token")).form(&[("grant_type", "x")]).send().await.unwrap();
        assert_eq!(resp.status() == 429, attempt == 4, "attempt {attempt}: {}", resp.status());
        assert_eq!(resp.headers()["ratelimit-policy"], "\"token\";q=3;w=60", "attempt {attempt}");
    }
    // Endpoints under no limit, forwarded requests and preflights carry none.
    let metadata = http().get(proxy.url("/.well-known/oauth-authorization-server")).send().await.unwrap();
    let forwarded = http().get(proxy.url("/mcp")).send().await.unwrap();
    let preflight = http()
        .request(reqwest::Method::OPTIONS, proxy.url("/token"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    for resp in [metadata, forwarded, preflight] {
        assert!(!resp.headers().contains_key("ratelimit"), "{}: {:?}", resp.url(), resp.headers());
    }
}

#[tokio::test]
async fn initial_access_token_closes_registration() {
    let (_a, _u, proxy) = setup_with("[registration]\ninitial_access_token = \"operator-issued-token-123\"\n").await;
    let body = json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"});
    let resp = http().post(proxy.url("/register")).json(&body).send().await.unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert_eq!(error_of(resp).await, (401, "invalid_token".into()));
    let resp =
        http().post(proxy.url("/register")).bearer_auth("wrong-token-wrong-token").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(proxy.app.store.stats().clients == 0);
    let resp =
        http().post(proxy.url("/register")).bearer_auth("operator-issued-token-123").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn redirect_host_allowlist_refuses_other_hosts() {
    let (_a, _u, proxy) = setup_with("[registration]\nallowed_redirect_hosts = [\"claude.ai\", \"loopback\"]\n").await;
    let resp = http()
        .post(proxy.url("/register"))
        .json(&json!({"redirect_uris": ["https://evil.example/cb"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (400, "invalid_redirect_uri".into()));
    for ok in ["https://claude.ai/api/mcp/auth_callback", CLIENT_REDIRECT] {
        let resp = http().post(proxy.url("/register")).json(&json!({"redirect_uris": [ok]})).send().await.unwrap();
        assert_eq!(resp.status(), 201, "{ok}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_they_are_read() {
    let (_a, _u, proxy) = setup().await;
    let big = vec![b'a'; 1024 * 1024];
    for path in ["/register", "/token", "/revoke", "/consent"] {
        let ct = if path == "/register" { "application/json" } else { "application/x-www-form-urlencoded" };
        let resp = http().post(proxy.url(path)).header("content-type", ct).body(big.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 413, "{path}");
    }
    assert!(proxy.app.store.stats().clients == 0);
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let (_a, _u, proxy) = setup_with("[limits]\nheader_timeout = \"1s\"\n").await;
    let addr = proxy.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream.write_all(b"GET /mcp HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // The headers never finish: the proxy must close the connection on its own.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after the header timeout");
}

#[tokio::test]
async fn bearer_token_in_query_string_is_refused() {
    let (_a, upstream, proxy) = setup().await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    let resp = http().get(proxy.url(&format!("/mcp?access_token={access}"))).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("invalid_request"));
    assert!(upstream.recorded().is_empty());
}

#[tokio::test]
async fn client_token_never_reaches_the_upstream() {
    let (azure, upstream, proxy) = setup().await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    for path in ["/mcp", "/other/path?x=1"] {
        http().post(proxy.url(path)).bearer_auth(access).header("x-copy", access).body("{}").send().await.unwrap();
    }
    let azure_token = azure.state().last_access_token.clone().unwrap();
    for rec in upstream.recorded() {
        assert_eq!(rec.header("authorization"), Some(format!("Bearer {azure_token}").as_str()));
        for (name, values) in &rec.headers {
            if name == "x-copy" {
                continue; // a header the client chose to send is the client's business
            }
            assert!(values.iter().all(|v| !v.contains(access) && !v.contains(refresh_token)), "{name}");
        }
    }
}

#[tokio::test]
async fn upstream_401_refreshes_the_idp_token_once_and_retries() {
    let azure = FakeAzure::start().await;
    // The upstream is the fake Graph: it accepts only access tokens the fake Entra ID still honours.
    let proxy = TestProxy::builder().upstream(azure.authority()).azure(&azure).start().await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    let me = http().get(proxy.url("/v1.0/me")).bearer_auth(access).send().await.unwrap();
    assert_eq!(me.status(), 200);
    azure.revoke_access_tokens();
    let me = http().get(proxy.url("/v1.0/me")).bearer_auth(access).send().await.unwrap();
    assert_eq!(me.status(), 200, "refreshed and retried");
    assert_eq!(azure.state().refresh_calls, 1);
    // A request with a body is not replayed: the client sees the proxy's own challenge.
    azure.revoke_access_tokens();
    let resp = http().post(proxy.url("/v1.0/me")).bearer_auth(access).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("resource_metadata"));
}

#[tokio::test]
async fn transient_idp_errors_are_retried_and_never_end_a_grant() {
    let (azure, upstream, proxy) = setup().await;
    azure.state().expires_in = 300;
    let (_, tokens) = login(&proxy).await;
    {
        let mut st = azure.state();
        st.token_fault = Some(503);
        st.token_fault_count = Some(2);
    }
    let before = azure.state().token_requests;
    proxy.clock.advance(250);
    let resp =
        http().get(proxy.url("/mcp")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(azure.state().token_requests - before, 3, "two failures, then success");
    let fresh = azure.state().last_access_token.clone().unwrap();
    assert_eq!(upstream.last().header("authorization"), Some(format!("Bearer {fresh}").as_str()));
}

#[tokio::test]
async fn introspection_needs_the_resource_server_credential() {
    let (_a, _u, proxy) =
        setup_with("[introspection]\nclient_id = \"mcp-server\"\nclient_secret = \"introspection-secret-1234\"\n")
            .await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    let resp = http().post(proxy.url("/introspect")).form(&[("token", access)]).send().await.unwrap();
    assert_eq!(error_of(resp).await, (401, "invalid_client".into()));
    let resp = http()
        .post(proxy.url("/introspect"))
        .basic_auth("mcp-server", Some("wrong"))
        .form(&[("token", access)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let doc: Value = http()
        .post(proxy.url("/introspect"))
        .basic_auth("mcp-server", Some("introspection-secret-1234"))
        .form(&[("token", access)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["active"], true);
    assert_eq!(doc["aud"], proxy.url("/mcp"));
    assert_eq!(doc["token_type"], "Bearer");
    let doc: Value = http()
        .post(proxy.url("/introspect"))
        .basic_auth("mcp-server", Some("introspection-secret-1234"))
        .form(&[("token", "not-a-token")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc, json!({"active": false}));
}

#[tokio::test]
async fn consent_cannot_be_forged_or_replayed() {
    let (azure, _u, proxy) = setup().await;
    let client_id = register_public_client(&proxy).await;
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    let request = hidden_field(&consent, "request");
    let csrf = hidden_field(&consent, "csrf");
    let forged = "A".repeat(43);
    // Wrong CSRF token, then a right token from a browser without the cookie.
    match browser
        .post_form(&proxy.url("/consent"), &[("request", &request), ("csrf", &forged), ("action", "approve")])
        .await
    {
        Landing::Page(403, _) => {}
        _ => panic!("forged CSRF accepted"),
    }
    match Browser::new()
        .post_form(&proxy.url("/consent"), &[("request", &request), ("csrf", &csrf), ("action", "approve")])
        .await
    {
        Landing::Page(403, _) => {}
        _ => panic!("consent accepted from another browser"),
    }
    let resp =
        http().post(proxy.url("/consent")).header("content-type", "application/json").body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(azure.state().authorize_queries.is_empty(), "no IdP state was created");
    // The genuine approval still works once, then is spent.
    let Landing::Client(p) = browser
        .post_form(&proxy.url("/consent"), &[("request", &request), ("csrf", &csrf), ("action", "approve")])
        .await
    else {
        panic!("genuine consent refused")
    };
    assert!(p.contains_key("code"));
    match browser
        .post_form(&proxy.url("/consent"), &[("request", &request), ("csrf", &csrf), ("action", "approve")])
        .await
    {
        Landing::Page(403, _) => {}
        _ => panic!("consent replayed"),
    }
}

#[tokio::test]
async fn code_issued_to_one_client_is_refused_to_another() {
    let (_a, _u, proxy) = setup().await;
    let victim = register_public_client(&proxy).await;
    let attacker = register_public_client(&proxy).await;
    let params = authorize(&proxy, &mut Browser::new(), &victim).await;
    let resp = redeem(&proxy, &attacker, &params["code"]).await;
    assert_eq!(error_of(resp).await, (400, "invalid_grant".into()));
    assert!(proxy.app.store.stats().access_tokens == 0);
}

#[tokio::test]
async fn client_configuration_endpoint_needs_the_registration_access_token() {
    let (_a, _u, proxy) = setup().await;
    let reg: Value = register_json(
        &proxy,
        json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none", "client_name": "Mine"}),
    )
    .await;
    let id = reg["client_id"].as_str().unwrap();
    let rat = reg["registration_access_token"].as_str().unwrap();
    let uri = reg["registration_client_uri"].as_str().unwrap();
    assert_eq!(uri, proxy.url(&format!("/register/{id}")));
    // Without the token, with a wrong one, or for another client: 401 and nothing changes.
    assert_eq!(http().get(uri).send().await.unwrap().status(), 401);
    assert_eq!(http().delete(uri).bearer_auth("wrong").send().await.unwrap().status(), 401);
    let other = register_public_client(&proxy).await;
    assert_eq!(
        http().delete(proxy.url(&format!("/register/{other}"))).bearer_auth(rat).send().await.unwrap().status(),
        401
    );
    assert!(proxy.app.store.memory().expect("memory store").has_client(&other));
    // Read, update, delete with the token.
    let read: Value = http().get(uri).bearer_auth(rat).send().await.unwrap().json().await.unwrap();
    assert_eq!(read["client_name"], "Mine");
    assert!(read.get("registration_access_token").is_none());
    let bad = http()
        .put(uri)
        .bearer_auth(rat)
        .json(&json!({"client_id": "someone-else", "redirect_uris": [CLIENT_REDIRECT]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(bad).await, (400, "invalid_client_metadata".into()));
    let updated: Value = http()
        .put(uri)
        .bearer_auth(rat)
        .json(&json!({"client_id": id, "redirect_uris": ["http://127.0.0.1:4444/cb"], "client_name": "Renamed"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(updated["client_name"], "Renamed");
    assert_eq!(updated["redirect_uris"], json!(["http://127.0.0.1:4444/cb"]));
    assert_eq!(updated["token_endpoint_auth_method"], "none");
    assert_eq!(http().delete(uri).bearer_auth(rat).send().await.unwrap().status(), 204);
    assert!(!proxy.app.store.memory().expect("memory store").has_client(id));
    assert_eq!(http().get(uri).bearer_auth(rat).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn deleting_a_client_revokes_its_grants() {
    let (_a, _u, proxy) = setup().await;
    let reg: Value =
        register_json(&proxy, json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"})).await;
    let id = reg["client_id"].as_str().unwrap();
    let params = authorize(&proxy, &mut Browser::new(), id).await;
    let tokens: Value = redeem(&proxy, id, &params["code"]).await.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(http().get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap().status(), 200);
    let uri = reg["registration_client_uri"].as_str().unwrap();
    let rat = reg["registration_access_token"].as_str().unwrap();
    assert_eq!(http().delete(uri).bearer_auth(rat).send().await.unwrap().status(), 204);
    assert_eq!(http().get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let (_a, _u, proxy) = setup_with("[limits]\nheader_timeout = \"1s\"\n").await;
    let addr = proxy.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then silence: the server closes the kept-alive connection by itself.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection left open");
}

#[tokio::test]
async fn markup_in_client_metadata_is_escaped_on_the_consent_page() {
    let (_a, _u, proxy) = setup().await;
    let reg: Value = register_json(
        &proxy,
        json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none",
                      "client_name": "<script>alert(1)</script>\"><img src=x>"}),
    )
    .await;
    let resp = http().get(authorize_url(&proxy, reg["client_id"].as_str().unwrap(), "")).send().await.unwrap();
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    assert!(resp.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let page = resp.text().await.unwrap();
    assert!(!page.contains("<script>alert(1)"));
    assert!(!page.contains("<img src=x>"));
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img src=x&gt;"));
}

#[tokio::test]
async fn authorization_rate_limit_is_a_page_with_retry_after() {
    let (_a, _u, proxy) = setup_with("[limits]\nauthorize_per_minute = 2\n").await;
    let client_id = register_public_client(&proxy).await;
    for _ in 0..2 {
        assert_eq!(http().get(authorize_url(&proxy, &client_id, "")).send().await.unwrap().status(), 200);
    }
    let resp = http().get(authorize_url(&proxy, &client_id, "")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
}

#[tokio::test]
async fn connector_presets_allow_only_their_callbacks() {
    let (_a, _u, proxy) = setup_with("[registration]\nallow = [\"claude\", \"loopback\"]\n").await;
    for (uri, expected) in [
        ("https://claude.ai/api/mcp/auth_callback", 201),
        ("https://claude.com/api/mcp/auth_callback", 201),
        (CLIENT_REDIRECT, 201),
        ("https://chatgpt.com/connector/oauth/abc", 400),
        ("https://claude.ai/somewhere/else", 400),
    ] {
        let resp = http().post(proxy.url("/register")).json(&json!({"redirect_uris": [uri]})).send().await.unwrap();
        assert_eq!(resp.status(), expected, "{uri}");
    }
}

/// Rewrites the generation inside a refresh token (`<base64url(family ‖ generation)>.<random>`), keeping the
/// family: what an attacker who saw one token of the family could forge.
fn with_generation(token: &str, generation: u32) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let (name, random) = token.split_once('.').expect("a refresh token names its family");
    let mut bytes = URL_SAFE_NO_PAD.decode(name).unwrap();
    bytes[16..20].copy_from_slice(&generation.to_be_bytes());
    format!("{}.{random}", URL_SAFE_NO_PAD.encode(bytes))
}

#[tokio::test]
async fn fifty_refreshes_keep_the_refresh_state_constant_and_any_spent_token_still_revokes() {
    let (_a, upstream, proxy) = setup_with("[limits]\ntoken_per_minute = 100000\n").await;
    let (client_id, tokens) = login(&proxy).await;
    let mut issued = vec![tokens["refresh_token"].as_str().unwrap().to_owned()];
    let mut latest = tokens;
    for i in 0..50 {
        proxy.clock.advance(60);
        let resp = refresh(&proxy, &client_id, issued.last().unwrap()).await;
        assert_eq!(resp.status(), 200, "refresh {i}");
        latest = resp.json().await.unwrap();
        issued.push(latest["refresh_token"].as_str().unwrap().to_owned());
        let stats = proxy.app.store.stats();
        assert_eq!(stats.grants, 1);
        assert!(stats.refresh_tokens <= 2, "refresh {i}: {} refresh records for one grant", stats.refresh_tokens);
    }
    // Two places refresh at once (Claude): the replay within the grace window gets the same pair.
    let current = issued.last().unwrap().clone();
    let resp = refresh(&proxy, &client_id, &current).await;
    let pair: Value = resp.json().await.unwrap();
    let replay: Value = refresh(&proxy, &client_id, &current).await.json().await.unwrap();
    assert_eq!(replay["access_token"], pair["access_token"]);
    assert_eq!(replay["refresh_token"], pair["refresh_token"]);
    assert!(proxy.app.store.stats().refresh_tokens <= 2);
    let current = pair["refresh_token"].as_str().unwrap().to_owned();
    let access = pair["access_token"].as_str().unwrap().to_owned();

    // An attacker holding a token of the family forges a future generation, or the current one with another
    // random part: refused, and the owner keeps the grant.
    let generation = issued.len() as u32;
    for forged in [with_generation(&current, generation + 1), with_generation(&issued[0], generation)] {
        assert_eq!(error_of(refresh(&proxy, &client_id, &forged).await).await, (400, "invalid_grant".into()));
    }
    assert_eq!(http().get(proxy.url("/mcp")).bearer_auth(&access).send().await.unwrap().status(), 200);
    assert_eq!(proxy.app.store.stats().grants, 1, "forgeries revoke nothing");

    // A stolen token from 10 generations ago is a reuse: the whole grant ends, the owner's tokens with it.
    let before = upstream.recorded().len();
    let stolen = &issued[issued.len() - 10];
    assert_eq!(error_of(refresh(&proxy, &client_id, stolen).await).await, (400, "invalid_grant".into()));
    assert!(proxy.app.store.stats().grants == 0);
    assert_eq!(http().get(proxy.url("/mcp")).bearer_auth(&access).send().await.unwrap().status(), 401);
    assert_eq!(error_of(refresh(&proxy, &client_id, &current).await).await, (400, "invalid_grant".into()));
    assert_eq!(upstream.recorded().len(), before);
    let _ = latest;
}

#[tokio::test]
async fn a_narrower_scope_on_refresh_binds_the_new_access_token_only() {
    let (_a, upstream, proxy) = setup_with(
        "[[upstream.required_scopes]]\npath_prefix = \"/mcp/admin\"\nscopes = [\"User.Read\"]\n\
         [introspection]\nclient_id = \"mcp-server\"\nclient_secret = \"introspection-secret-1234\"\n",
    )
    .await;
    let (client_id, tokens) = login(&proxy).await;
    assert_eq!(tokens["scope"], "openid profile email offline_access User.Read");
    let resp = http()
        .post(proxy.url("/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &client_id),
            ("scope", "openid offline_access"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let narrow: Value = resp.json().await.unwrap();
    assert_eq!(narrow["scope"], "openid offline_access");
    let access = narrow["access_token"].as_str().unwrap();

    // The proxy's policy sees the token's scope: the admin path needs User.Read, which this token lacks.
    let before = upstream.recorded().len();
    let resp = http().post(proxy.url("/mcp/admin")).bearer_auth(access).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("insufficient_scope"));
    assert_eq!(upstream.recorded().len(), before, "refused before the upstream");
    let introspected: Value = http()
        .post(proxy.url("/introspect"))
        .basic_auth("mcp-server", Some("introspection-secret-1234"))
        .form(&[("token", access)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(introspected["active"], true);
    assert_eq!(introspected["scope"], "openid offline_access");

    // The refresh token kept the whole grant: refreshing without `scope` gives it back.
    proxy.clock.advance(11);
    let full: Value =
        refresh(&proxy, &client_id, narrow["refresh_token"].as_str().unwrap()).await.json().await.unwrap();
    assert_eq!(full["scope"], "openid profile email offline_access User.Read");
    let resp = http()
        .post(proxy.url("/mcp/admin"))
        .bearer_auth(full["access_token"].as_str().unwrap())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// The consent page's heading with the client's name, as the page has it.
async fn consent_heading(proxy: &TestProxy, client_id: &str) -> String {
    let resp = http().get(authorize_url(proxy, &urlencode(client_id), "")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let page = resp.text().await.unwrap();
    let start = page.find("<h1>").unwrap();
    let end = page[start..].find("</h1>").unwrap() + start;
    page[start..end + 5].to_owned()
}

#[tokio::test]
async fn direction_controls_in_client_metadata_are_refused_at_registration_naming_the_field() {
    let (_a, _u, proxy) = setup().await;
    let base = || json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"});
    // "evil" written backwards behind a right-to-left override reads "evil" on a page; so would "live".
    for (field, value) in [
        ("client_name", json!("Claude \u{202E}evil")),
        ("client_name", json!("Claude\u{2067}x\u{2069}")),
        ("client_name", json!("Cla\u{200B}ude")),
        ("client_name", json!("Claude\u{200F}")),
        ("client_name", json!("Claude\u{061C}")),
        ("client_name", json!("Claude\u{0007}")),
        ("client_name#ar", json!("\u{202B}name")),
        ("client_uri", json!("https://app.example/\u{202E}")),
        ("logo_uri", json!("https://app.example/logo\u{FEFF}.png")),
        ("contacts", json!(["admin@app.example\u{202D}"])),
        ("software_id", json!("sw\u{2066}")),
    ] {
        let mut metadata = base();
        metadata[field] = value;
        let resp = http().post(proxy.url("/register")).json(&metadata).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{field}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"], "invalid_client_metadata", "{field}");
        assert!(err["error_description"].as_str().unwrap().contains(&format!("`{field}`")), "{field}: {err}");
    }
    let mut metadata = base();
    metadata["redirect_uris"] = json!(["http://127.0.0.1:33418/\u{202E}callback"]);
    let resp = http().post(proxy.url("/register")).json(&metadata).send().await.unwrap();
    let (status, error) = error_of(resp).await;
    assert_eq!((status, error.as_str()), (400, "invalid_redirect_uri"));
    assert!(proxy.app.store.stats().clients == 0, "nothing was registered");

    // RFC 7592: an update goes through the same check and leaves the client as it was.
    let reg = register_json(&proxy, json!({"redirect_uris": [CLIENT_REDIRECT], "client_name": "Good"})).await;
    let config_uri = reg["registration_client_uri"].as_str().unwrap();
    let token = reg["registration_access_token"].as_str().unwrap();
    let mut update = reg.clone();
    for key in ["registration_access_token", "registration_client_uri", "client_id_issued_at"] {
        update.as_object_mut().unwrap().remove(key);
    }
    update["client_name"] = json!("Good \u{202E}live");
    let resp = http().put(config_uri).bearer_auth(token).json(&update).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "invalid_client_metadata");
    assert!(err["error_description"].as_str().unwrap().contains("`client_name`"), "{err}");
    let now: Value = http().get(config_uri).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    assert_eq!(now["client_name"], "Good");
}

#[tokio::test]
async fn the_consent_page_isolates_the_client_name_and_never_renders_a_direction_control() {
    let (_a, _u, proxy) = setup().await;
    // A right-to-left name is a fine name; it is isolated so that it cannot reorder the sentence around it.
    let reg = register_json(
        &proxy,
        json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none", "client_name": "לקוח 1"}),
    )
    .await;
    let heading = consent_heading(&proxy, reg["client_id"].as_str().unwrap()).await;
    assert_eq!(heading, "<h1>Allow <bdi>לקוח 1</bdi> to access 127.0.0.1?</h1>");

    // A client kept from before the check (an older snapshot) with an override in its name: the page shows the
    // control as U+FFFD, inside the isolate, and nowhere else.
    let mut old = dcr_proxy::store::Client::public("legacy-client", vec![CLIENT_REDIRECT.to_owned()], 1);
    old.client_name = Some("Claude \u{202E}evil".to_owned());
    proxy.app.store.memory().expect("memory store").put_client(old);
    let resp = http().get(authorize_url(&proxy, "legacy-client", "")).send().await.unwrap();
    let page = resp.text().await.unwrap();
    assert!(!page.contains('\u{202E}'), "no direction control reaches the page");
    assert!(page.contains("<h1>Allow <bdi>Claude \u{FFFD}evil</bdi> to access"), "{page}");
    assert!(page.contains("<dd><bdi>Claude \u{FFFD}evil</bdi></dd>"), "{page}");
    assert!(page.contains("<code><bdi>127.0.0.1:33418</bdi></code>"), "the redirect host is isolated too");
}

// ---- issue 10: floods without credentials, browser-chosen cookies ----------------------------------------------

/// One flooding sign-in from `source` (behind the TLS terminator): `GET /authorize`, then the consent approved
/// with the cookie the proxy set, stopping before the IdP. Returns the last status.
async fn flood_sign_in(proxy: &TestProxy, client_id: &str, source: &str) -> u16 {
    let resp = http().get(authorize_url(proxy, client_id, "")).header("x-forwarded-for", source).send().await.unwrap();
    if resp.status() != 200 {
        return resp.status().as_u16();
    }
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let page = resp.text().await.unwrap();
    let (request, csrf) = (hidden_field(&page, "request"), hidden_field(&page, "csrf"));
    let resp = http()
        .post(proxy.url("/consent"))
        .header("x-forwarded-for", source)
        .header("cookie", cookie)
        .form(&[("request", request.as_str()), ("csrf", &csrf), ("action", "approve")])
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

#[tokio::test]
async fn a_sign_in_flood_from_many_sources_stores_nothing_and_a_user_still_signs_in() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .azure(&azure)
        .server_extra("behind_tls_terminator = true")
        .extra("[limits]\nmax_pending = 50\n")
        .start()
        .await;
    let client_id = register_public_client(&proxy).await;
    // 100 sources, each well within its rate limit, start and approve 200 sign-ins they never finish.
    for source in 0..100 {
        for _ in 0..2 {
            let status = flood_sign_in(&proxy, &client_id, &format!("198.51.100.{source}")).await;
            assert_eq!(status, 302, "source {source}: approved and sent to the IdP");
        }
    }
    assert!(azure.state().authorize_queries.is_empty(), "the flood never reached the IdP");
    assert!(proxy.app.store.stats().used_sign_ins <= 50, "only the bounded single-use record grows");
    // A real user still signs in, and the code works.
    let params = authorize(&proxy, &mut Browser::new(), &client_id).await;
    assert_eq!(params.get("state").map(String::as_str), Some("client-state-1"));
    assert_eq!(redeem(&proxy, &client_id, &params["code"]).await.status(), 200);
}

#[tokio::test]
async fn a_registration_flood_at_the_cap_evicts_unused_clients_and_a_new_client_still_signs_in() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .azure(&azure)
        .server_extra("behind_tls_terminator = true")
        .extra("[registration]\nmax_clients = 20\n")
        .start()
        .await;
    let (used, tokens) = login(&proxy).await;
    let register_from = |source: String| {
        proxy.clock.advance(1);
        http()
            .post(proxy.url("/register"))
            .header("x-forwarded-for", source)
            .json(&json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"}))
            .send()
    };
    // 10 sources × 4 registrations, each source within its rate limit: twice the cap.
    for source in 0..10 {
        for _ in 0..4 {
            let resp = register_from(format!("203.0.113.{source}")).await.unwrap();
            assert_eq!(resp.status(), 201, "source {source}");
        }
    }
    assert!(proxy.app.store.stats().clients <= 20);
    // A user's client registers while the table is full, and its sign-in is slow: another wave comes first, in
    // which the user's client is older than every flood client.
    let fresh = register_public_client(&proxy).await;
    for source in 10..20 {
        for _ in 0..4 {
            assert_eq!(register_from(format!("203.0.113.{source}")).await.unwrap().status(), 201);
        }
    }
    let params = authorize(&proxy, &mut Browser::new(), &fresh).await;
    assert_eq!(redeem(&proxy, &fresh, &params["code"]).await.status(), 200, "the user's client was kept");
    // The clients that redeemed a code survive; the first one's token still works.
    assert!(proxy.app.store.memory().expect("memory store").has_client(&used), "a used client is never evicted");
    assert!(proxy.app.store.stats().clients <= 20);
    let resp =
        http().get(proxy.url("/mcp")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn an_overlong_state_is_refused_with_400_and_never_echoed() {
    let (azure, _u, proxy) = setup().await;
    let client_id = register_public_client(&proxy).await;
    // 64,000 bytes: about the most a URI can carry (hyper answers 414 beyond 65,534).
    for (len, expected) in [(64_000, 400), (1025, 400), (1024, 200)] {
        let state = "s".repeat(len);
        let url = authorize_url(&proxy, &client_id, "").replace("state=client-state-1", &format!("state={state}"));
        let resp = http().get(url).send().await.unwrap();
        assert_eq!(resp.status(), expected, "state of {len} bytes");
        assert!(resp.headers().get("location").is_none());
        if expected == 400 {
            assert!(!resp.text().await.unwrap().contains(&"s".repeat(1025)), "the state is not echoed");
        }
    }
    assert!(azure.state().authorize_queries.is_empty());
}

#[tokio::test]
async fn a_binding_cookie_chosen_by_the_browser_is_never_adopted() {
    let (azure, _u, proxy) = setup().await;
    let client_id = register_public_client(&proxy).await;
    // Values an attacker could plant: the shape the proxy's cookies used to have, and the signed shape.
    for chosen in ["A".repeat(43), format!("{}.{}", "A".repeat(43), "A".repeat(22))] {
        let mut victim = Browser::new();
        victim.cookies.insert("dcrp".into(), chosen.clone());
        let Landing::Page(200, consent) = victim.get(&authorize_url(&proxy, &client_id, "")).await else {
            panic!("consent page expected")
        };
        assert_ne!(victim.cookies["dcrp"], chosen, "the proxy minted its own cookie");
        let form = [("request", hidden_field(&consent, "request")), ("csrf", hidden_field(&consent, "csrf"))];
        let form = [("request", form[0].1.as_str()), ("csrf", form[1].1.as_str()), ("action", "approve")];
        // The attacker holds only the value it chose: the victim's sign-in is not bound to it.
        let mut attacker = Browser::new();
        attacker.cookies.insert("dcrp".into(), chosen.clone());
        match attacker.post_form(&proxy.url("/consent"), &form).await {
            Landing::Page(403, _) => {}
            _ => panic!("the sign-in was bound to the cookie the attacker chose"),
        }
        assert!(azure.state().authorize_queries.is_empty());
        // The victim's own browser goes on.
        let Landing::Client(params) = victim.post_form(&proxy.url("/consent"), &form).await else {
            panic!("the victim's consent was refused")
        };
        assert!(params.contains_key("code"));
        azure.state().authorize_queries.clear();
    }
}
