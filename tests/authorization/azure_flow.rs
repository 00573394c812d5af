//! The whole flow through the running proxy with a fake Entra ID and a recording upstream:
//! discovery → register → authorize → consent → IdP → callback → token → proxied call → refresh →
//! upstream-token refresh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use crate::common::fake_azure::FakeAzure;
use crate::common::upstream::Upstream;
use crate::common::*;
use serde_json::Value;

#[tokio::test]
async fn mcp_client_flow_reaches_upstream_with_the_azure_token() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let client = http();

    // 1. An unauthenticated call is challenged with the RFC 9728 metadata URL.
    let resp = client.post(proxy.url("/mcp")).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let prm_url = format!("{}/.well-known/oauth-protected-resource/mcp", proxy.base);
    assert_eq!(
        challenge,
        // MCP 2026-07-28 (SEP-2207): no `offline_access` in the challenge, though it is asked of the IdP.
        format!("Bearer resource_metadata=\"{prm_url}\", scope=\"openid profile email User.Read\"")
    );
    // Browser clients can read the challenge.
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(resp.headers()["access-control-expose-headers"].to_str().unwrap().contains("WWW-Authenticate"));
    assert!(upstream.recorded().is_empty(), "nothing reaches the upstream without a token");

    // 2. Discovery documents.
    let prm: Value = client.get(&prm_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(prm["resource"], format!("{}/mcp", proxy.base));
    assert_eq!(prm["authorization_servers"][0], proxy.base);
    let as_meta: Value =
        client.get(proxy.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(as_meta["issuer"], proxy.base);
    assert_eq!(as_meta["code_challenge_methods_supported"], serde_json::json!(["S256"]));
    let oidc_meta: Value =
        client.get(proxy.url("/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(oidc_meta, as_meta);
    assert_eq!(client.get(proxy.url("/.well-known/unknown")).send().await.unwrap().status(), 404);

    // 3-5. Register, authorize with consent through the fake Entra ID, redeem the code.
    let client_id = register_public_client(&proxy).await;
    let mut browser = Browser::new();
    let params = authorize(&proxy, &mut browser, &client_id).await;
    assert_eq!(params.get("state").map(String::as_str), Some("client-state-1"));
    assert_eq!(params.get("iss"), Some(&proxy.base));
    let code = params.get("code").expect("code").clone();
    let resp = redeem(&proxy, &client_id, &code).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let tokens: Value = resp.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(access.len(), 43);
    assert!(tokens["refresh_token"].is_string());

    // The proxy asked Entra for the configured scopes with its own client id, state and PKCE, and no resource.
    {
        let st = azure.state();
        let q = st.authorize_queries.last().expect("authorize reached the fake");
        assert_eq!(q["client_id"], common::fake_azure::APP_ID);
        assert_eq!(q["scope"], "openid profile email offline_access User.Read");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["redirect_uri"], format!("{}/callback", proxy.base));
        assert!(!q.contains_key("resource"));
        assert_ne!(q["state"], "client-state-1");
    }

    // 6. The proxied call reaches the upstream with the Azure token, never the client's.
    let resp = client
        .post(proxy.url("/mcp?x=1"))
        .bearer_auth(&access)
        .header("mcp-session-id", "session-42")
        .header("x-forwarded-user", "mallory")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["mcp-session-id"], "session-42");
    let seen = upstream.last();
    let azure_token = azure.state().last_access_token.clone().unwrap();
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {azure_token}").as_str()));
    assert!(azure_token.len() > 2048);
    assert_eq!(seen.path, "/mcp");
    assert_eq!(seen.header("mcp-session-id"), Some("session-42"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(seen.header("x-forwarded-host").is_some());
    assert!(seen.header("x-forwarded-user").is_none(), "client-sent identity headers are dropped");
    assert!(seen.header("x-hop").is_none(), "hop-by-hop headers are dropped");
    for values in seen.headers.values() {
        assert!(values.iter().all(|v| !v.contains(&access)), "the client's token never reaches the upstream");
    }

    // userinfo returns the id_token's claims.
    let me: Value = client.get(proxy.url("/userinfo")).bearer_auth(&access).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["name"], "Adele Vance");
    assert_eq!(me["tid"], common::fake_azure::TENANT_ID);

    // 7. Refresh rotates the pair; the new access token works, the old refresh token is spent.
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    let resp = refresh(&proxy, &client_id, refresh_token).await;
    assert_eq!(resp.status(), 200);
    let rotated: Value = resp.json().await.unwrap();
    assert_ne!(rotated["refresh_token"], tokens["refresh_token"]);
    let resp =
        client.get(proxy.url("/mcp")).bearer_auth(rotated["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    proxy.clock.advance(60);
    let resp = refresh(&proxy, &client_id, refresh_token).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "invalid_grant");
    // Reuse after the grace window revoked the whole grant.
    let resp =
        client.get(proxy.url("/mcp")).bearer_auth(rotated["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
}

#[tokio::test]
async fn upstream_token_is_refreshed_once_under_concurrency_and_the_newest_refresh_token_is_kept() {
    let azure = FakeAzure::start().await;
    {
        let mut st = azure.state();
        st.expires_in = 300;
        st.strict_rotation = true;
    }
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let first_azure_token = azure.state().last_access_token.clone().unwrap();

    // Within the 2-minute margin of the 5-minute upstream token: 16 concurrent calls trigger one refresh.
    proxy.clock.advance(200);
    let client = http();
    let calls = (0..16).map(|_| client.get(proxy.url("/mcp")).bearer_auth(&access).send());
    for resp in futures_join_all(calls).await {
        assert_eq!(resp.unwrap().status(), 200);
    }
    let second_azure_token = azure.state().last_access_token.clone().unwrap();
    assert_ne!(first_azure_token, second_azure_token);
    assert_eq!(azure.state().refresh_calls, 1, "single flight: one upstream refresh for 16 requests");
    let recorded = upstream.recorded();
    let last16 = &recorded[recorded.len() - 16..];
    assert!(last16.iter().all(|r| r.header("authorization") == Some(format!("Bearer {second_azure_token}").as_str())));

    // Strict rotation at the fake: the second refresh only works with the newest upstream refresh token.
    proxy.clock.advance(200);
    let resp = client.get(proxy.url("/mcp")).bearer_auth(&access).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(azure.state().refresh_calls, 2);
    let third = azure.state().last_access_token.clone().unwrap();
    assert_eq!(upstream.last().header("authorization"), Some(format!("Bearer {third}").as_str()));
}

/// Joins futures without an extra crate.
async fn futures_join_all<F: std::future::Future + Send + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn upstream_refresh_refused_by_azure_ends_the_grant_with_invalid_token() {
    let azure = FakeAzure::start().await;
    azure.state().expires_in = 300;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let (client_id, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    azure.revoke_all_refresh_tokens();
    proxy.clock.advance(250);
    let before = upstream.recorded().len();
    let resp = http().get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert_eq!(upstream.recorded().len(), before, "nothing forwarded");
    // The grant is gone: the client's refresh token is dead too, so it logs in again.
    let resp = refresh(&proxy, &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn transient_idp_failure_keeps_the_grant_and_uses_the_still_valid_token() {
    let azure = FakeAzure::start().await;
    azure.state().expires_in = 300;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    let token_before = azure.state().last_access_token.clone().unwrap();
    azure.state().token_fault = Some(429);
    proxy.clock.advance(250);
    let resp = http().get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().header("authorization"), Some(format!("Bearer {token_before}").as_str()));
    // Once the IdP recovers, the next call refreshes.
    azure.state().token_fault = None;
    let resp = http().get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_ne!(azure.state().last_access_token.clone().unwrap(), token_before);
}

#[tokio::test]
async fn idp_error_at_authorize_is_passed_to_the_client_with_state_and_iss() {
    let azure = FakeAzure::start().await;
    azure.state().authorize_error = Some(("access_denied".into(), 65004));
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let client_id = register_public_client(&proxy).await;
    let params = authorize(&proxy, &mut Browser::new(), &client_id).await;
    assert_eq!(params.get("error").map(String::as_str), Some("access_denied"));
    assert_eq!(params.get("state").map(String::as_str), Some("client-state-1"));
    assert_eq!(params.get("iss"), Some(&proxy.base));
    assert!(!params.contains_key("code"));
    let desc = params.get("error_description").cloned().unwrap_or_default();
    assert!(!desc.contains("Trace ID"), "the IdP's trace text is not shown to clients");
}

#[tokio::test]
async fn callback_from_another_browser_is_refused() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let client_id = register_public_client(&proxy).await;
    let mut victim = Browser::new();
    let Landing::Page(200, consent) = victim.get(&authorize_url(&proxy, &client_id, "")).await else {
        panic!("consent")
    };
    let request = hidden_field(&consent, "request");
    let csrf = hidden_field(&consent, "csrf");
    // The consent post, without following redirects, yields the IdP URL; another browser follows it.
    let resp = http()
        .post(proxy.url("/consent"))
        .header("cookie", victim.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "))
        .form(&[("request", request.as_str()), ("csrf", csrf.as_str()), ("action", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let idp_url = resp.headers()["location"].to_str().unwrap().to_owned();
    let mut attacker = Browser::new();
    match attacker.get(&idp_url).await {
        Landing::Page(status, body) => {
            assert_eq!(status, 400);
            assert!(body.contains("another browser"));
        }
        Landing::Client(p) => panic!("a code was issued to another browser: {p:?}"),
    }
    assert!(proxy.app.store.stats().codes == 0);
}

#[tokio::test]
async fn denied_consent_redirects_access_denied_and_never_reaches_the_idp() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let client_id = register_public_client(&proxy).await;
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    assert!(consent.contains("Test Client") && consent.contains("127.0.0.1:33418"));
    let form = [
        ("request", hidden_field(&consent, "request")),
        ("csrf", hidden_field(&consent, "csrf")),
        ("action", "deny".into()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let Landing::Client(params) = browser.post_form(&proxy.url("/consent"), &form).await else { panic!() };
    assert_eq!(params["error"], "access_denied");
    assert_eq!(params["state"], "client-state-1");
    assert!(azure.state().authorize_queries.is_empty());
}

#[tokio::test]
async fn sse_events_are_forwarded_as_they_arrive() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let (_, tokens) = login(&proxy).await;
    let mut resp = http()
        .get(proxy.url("/sse"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The upstream holds its second event until released: the first must arrive on its own.
    let first = resp.chunk().await.unwrap().expect("first event");
    assert_eq!(&first[..], b"event: message\ndata: {\"n\":1}\n\n");
    upstream.release();
    let second = resp.chunk().await.unwrap().expect("second event");
    assert_eq!(&second[..], b"event: message\ndata: {\"n\":2}\n\n");
}

#[tokio::test]
async fn large_bodies_stream_both_ways_intact() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let expected = dcr_proxy::crypto::b64url(&dcr_proxy::crypto::sha256(&data));
    let resp = http().post(proxy.url("/upload")).bearer_auth(access).body(data).send().await.unwrap();
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["bytes"], 3 * 1024 * 1024);
    assert_eq!(doc["sha256"], expected);
    let resp = http().get(proxy.url("/download?bytes=5000000")).bearer_auth(access).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap().len(), 5_000_000);
}

#[tokio::test]
async fn upstream_down_is_502_and_upstream_silence_is_504_with_json() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    // A port nothing listens on: bind, read the port, drop the listener.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = TestProxy::builder().upstream(format!("http://{dead}")).azure(&azure).start().await;
    let (_, tokens) = login(&proxy).await;
    let resp =
        http().get(proxy.url("/mcp")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["error"], "bad_gateway");

    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let (_, tokens) = login(&proxy).await;
    let resp =
        http().get(proxy.url("/slow")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["error"], "gateway_timeout");
}

#[tokio::test]
async fn upstream_challenge_is_replaced_by_the_proxy_challenge() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let (_, tokens) = login(&proxy).await;
    let resp =
        http().get(proxy.url("/challenge")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(&format!("resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"", proxy.base))
    );
    assert!(!challenge.contains("login.microsoftonline.com"));
}

#[tokio::test]
async fn http2_clients_are_served() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let (_, tokens) = login(&proxy).await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = h2
        .post(proxy.url("/mcp"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let azure_token = azure.state().last_access_token.clone().unwrap();
    assert_eq!(upstream.last().header("authorization"), Some(format!("Bearer {azure_token}").as_str()));
}

#[tokio::test]
async fn confidential_client_authenticates_with_basic_and_post() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    for method in ["client_secret_basic", "client_secret_post"] {
        let doc: Value = register_json(
            &proxy,
            serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": method}),
        )
        .await;
        let id = doc["client_id"].as_str().unwrap();
        let secret = doc["client_secret"].as_str().unwrap();
        assert_eq!(doc["client_secret_expires_at"], 0);
        let params = authorize(&proxy, &mut Browser::new(), id).await;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", params["code"].as_str()),
            ("redirect_uri", CLIENT_REDIRECT),
            ("code_verifier", VERIFIER),
        ];
        let req = http().post(proxy.url("/token"));
        let req = if method == "client_secret_basic" {
            req.basic_auth(id, Some(secret)).form(&form)
        } else {
            let mut f = form.to_vec();
            f.push(("client_id", id));
            f.push(("client_secret", secret));
            req.form(&f)
        };
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{method}");
    }
}

/// `POST /v1.0/me` at the fake Graph, which refuses access tokens the fake Entra ID no longer honours.
async fn post_me(proxy: &TestProxy, access: &str) -> reqwest::Response {
    http()
        .post(proxy.url("/v1.0/me"))
        .bearer_auth(access)
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_upstream_401_to_a_post_makes_the_next_request_carry_a_refreshed_idp_token() {
    let azure = FakeAzure::start().await;
    // The upstream is the fake Graph: it accepts only access tokens the fake Entra ID still honours.
    let proxy = TestProxy::builder().upstream(azure.authority()).azure(&azure).start().await;
    let (client_id, tokens) = login(&proxy).await;
    assert_eq!(post_me(&proxy, tokens["access_token"].as_str().unwrap()).await.status(), 200);

    // The IdP token is revoked (CAE): the POST cannot be replayed, the client sees the proxy's challenge...
    azure.revoke_access_tokens();
    let resp = post_me(&proxy, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert_eq!(azure.state().refresh_calls, 0);
    // ...refreshes at the proxy as clients do, and its retry carries a refreshed IdP token.
    let rotated: Value =
        refresh(&proxy, &client_id, tokens["refresh_token"].as_str().unwrap()).await.json().await.unwrap();
    let access = rotated["access_token"].as_str().unwrap().to_owned();
    assert_eq!(post_me(&proxy, &access).await.status(), 200);
    assert_eq!(azure.state().refresh_calls, 1);
    for _ in 0..3 {
        assert_eq!(post_me(&proxy, &access).await.status(), 200);
    }
    assert_eq!(azure.state().refresh_calls, 1, "one refresh, then the new token is used");

    // A client that just retries without refreshing at the proxy gets through too (after the refresh floor).
    proxy.clock.advance(31);
    azure.revoke_access_tokens();
    assert_eq!(post_me(&proxy, &access).await.status(), 401);
    assert_eq!(post_me(&proxy, &access).await.status(), 200);
    assert_eq!(azure.state().refresh_calls, 2);
}

#[tokio::test]
async fn a_rejected_idp_token_whose_refresh_is_refused_ends_in_a_clean_sign_in_again() {
    let azure = FakeAzure::start().await;
    let proxy = TestProxy::builder().upstream(azure.authority()).azure(&azure).start().await;
    let (client_id, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    azure.revoke_access_tokens();
    azure.revoke_all_refresh_tokens();
    assert_eq!(post_me(&proxy, access).await.status(), 401);
    // The next request tries to refresh, Entra refuses (invalid_grant): the grant ends.
    let resp = post_me(&proxy, access).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
    assert_eq!(azure.state().refresh_calls, 1);
    assert!(proxy.app.store.stats().grants == 0, "the grant is revoked");
    // The client's refresh fails, so it signs in again instead of looping; nothing more reaches the IdP.
    let resp = refresh(&proxy, &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(post_me(&proxy, access).await.status(), 401);
    assert_eq!(azure.state().refresh_calls, 1);
    let (_, again) = login(&proxy).await;
    assert_eq!(post_me(&proxy, again["access_token"].as_str().unwrap()).await.status(), 200);
}

#[tokio::test]
async fn short_lived_idp_tokens_are_refreshed_once_per_half_lifetime_not_on_every_request() {
    let azure = FakeAzure::start().await;
    azure.state().expires_in = 30;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .azure(&azure)
        .extra("[tokens]\nupstream_refresh_margin = \"5m\"\n")
        .start()
        .await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    let calls = |n: usize| {
        let access = access.to_owned();
        let url = proxy.url("/mcp");
        async move {
            for _ in 0..n {
                let resp = http().post(&url).bearer_auth(&access).body("{}").send().await.unwrap();
                assert_eq!(resp.status(), 200);
            }
        }
    };
    // A 30 s IdP token with a 5-minute margin: the margin is capped at 15 s.
    calls(10).await;
    assert_eq!(azure.state().refresh_calls, 0, "a fresh 30 s token is used as it is");
    proxy.clock.advance(16);
    calls(10).await;
    assert_eq!(azure.state().refresh_calls, 1, "10 requests, one refresh");
    let refreshed = azure.state().last_access_token.clone().unwrap();
    assert_eq!(upstream.last().header("authorization"), Some(format!("Bearer {refreshed}").as_str()));
    // 16 s later the new token is within 15 s of expiry again, but the grant refreshed less than 30 s ago.
    proxy.clock.advance(16);
    calls(10).await;
    assert_eq!(azure.state().refresh_calls, 1, "the floor holds a still-valid token");
    // Once it has expired, it is refreshed.
    proxy.clock.advance(16);
    calls(10).await;
    assert_eq!(azure.state().refresh_calls, 2);
}
