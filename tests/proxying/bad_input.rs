//! Malformed, repeated, oversized and hostile input at every endpoint: each gets its documented status and OAuth
//! error code, never a 5xx.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn registration_refuses_bad_bodies_with_rfc7591_errors() {
    let (_a, _u, proxy) = setup().await;
    let c = http();
    let url = proxy.url("/register");
    let resp = c.post(&url).header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_eq!(error_of(resp).await, (415, "invalid_request".into()));
    let resp = c.post(&url).header("content-type", "application/json").body("{not json").send().await.unwrap();
    assert_eq!(error_of(resp).await, (400, "invalid_client_metadata".into()));
    let resp = c.post(&url).json(&json!({"client_name": "x"})).send().await.unwrap();
    assert_eq!(error_of(resp).await, (400, "invalid_redirect_uri".into()));
    let resp = c.post(&url).json(&json!({"redirect_uris": ["http://evil.example/cb"]})).send().await.unwrap();
    let (status, code) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (400, "invalid_redirect_uri"));
    let resp = c.post(&url).json(&json!({"redirect_uris": ["https://a.example/cb#x"]})).send().await.unwrap();
    assert_eq!(error_of(resp).await, (400, "invalid_redirect_uri".into()));
    let resp = c
        .post(&url)
        .json(&json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "private_key_jwt"}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client_metadata");
    assert!(body["error_description"].as_str().unwrap().contains("token_endpoint_auth_method"));
    let huge = json!({"redirect_uris": [CLIENT_REDIRECT], "client_name": "x".repeat(64 * 1024)});
    let resp = c.post(&url).json(&huge).send().await.unwrap();
    assert_eq!(error_of(resp).await, (413, "invalid_request".into()));
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert!(proxy.app.store.stats().clients == 0, "nothing was registered");
}

#[tokio::test]
async fn authorize_never_redirects_to_an_unregistered_uri() {
    let (_a, _u, proxy) = setup().await;
    let client_id = register_public_client(&proxy).await;
    let c = http();
    for url in [
        authorize_url(&proxy, "unknown-client", ""),
        authorize_url(&proxy, &client_id, "")
            .replace(&urlencode(CLIENT_REDIRECT), &urlencode("https://evil.example/cb")),
        format!("{}&client_id={client_id}", authorize_url(&proxy, &client_id, "")),
        format!("{}/authorize?response_type=code", proxy.base),
        // URL client_ids that are malformed, or that cannot be fetched (this proxy's fetcher is offline).
        authorize_url(&proxy, &urlencode("https://"), ""),
        authorize_url(&proxy, &urlencode("https://docs.example/"), ""),
        authorize_url(&proxy, &urlencode("https://docs.example/a/../c.json"), ""),
        authorize_url(&proxy, &urlencode(&format!("https://docs.example/{}", "x".repeat(3000))), ""),
        authorize_url(&proxy, &urlencode("https://docs.example/client.json"), ""),
        authorize_url(&proxy, &urlencode("https://[::1]:1/client.json"), ""),
    ] {
        let resp = c.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{url}");
        assert!(resp.headers().get("location").is_none(), "no redirect for {url}");
        assert_eq!(resp.headers()["x-frame-options"], "DENY");
        assert!(resp.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    }
    // Errors after the redirect URI is trusted go back to it with state and iss.
    for (extra_from, extra_to, expected) in [
        ("code_challenge_method=S256", "code_challenge_method=plain", "invalid_request"),
        ("&code_challenge_method=S256", "", "invalid_request"),
        ("response_type=code", "response_type=token", "unsupported_response_type"),
    ] {
        let url = authorize_url(&proxy, &client_id, "").replace(extra_from, extra_to);
        let resp = c.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 302);
        let location = resp.headers()["location"].to_str().unwrap();
        assert!(location.starts_with(CLIENT_REDIRECT), "{location}");
        let params: std::collections::HashMap<_, _> =
            url::Url::parse(location).unwrap().query_pairs().into_owned().collect();
        assert_eq!(params["error"], expected);
        assert_eq!(params["state"], "client-state-1");
        assert_eq!(params["iss"], proxy.base);
    }
    let resp =
        c.get(authorize_url(&proxy, &client_id, "&resource=https%3A%2F%2Fother.example%2Fmcp")).send().await.unwrap();
    assert!(resp.headers()["location"].to_str().unwrap().contains("error=invalid_target"));
    // The right resource is accepted.
    let resp = c
        .get(authorize_url(&proxy, &client_id, &format!("&resource={}", urlencode(&proxy.url("/mcp")))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn callback_with_unknown_state_or_garbage_is_a_page() {
    let (_a, _u, proxy) = setup().await;
    let c = http();
    for q in ["", "?state=nope&code=x", "?state=a&state=b", "?error=access_denied", "?%zz=%%"] {
        let resp = c.get(proxy.url(&format!("/callback{q}"))).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{q}");
        assert!(resp.headers().get("location").is_none());
    }
}

#[tokio::test]
async fn token_endpoint_errors_follow_rfc6749_5_2() {
    let (_a, upstream, proxy) = setup().await;
    let c = http();
    let url = proxy.url("/token");
    let client_id = register_public_client(&proxy).await;

    let resp = c.post(&url).json(&json!({"grant_type": "authorization_code"})).send().await.unwrap();
    assert_eq!(error_of(resp).await, (400, "invalid_request".into()));
    let resp = c.post(&url).form(&[("client_id", client_id.as_str())]).send().await.unwrap();
    assert_eq!(error_of(resp).await, (400, "invalid_request".into()));
    let resp = c.post(&url).form(&[("grant_type", "password"), ("client_id", &client_id)]).send().await.unwrap();
    assert_eq!(error_of(resp).await, (400, "unsupported_grant_type".into()));
    let resp = c
        .post(&url)
        .body("grant_type=a&grant_type=b")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (400, "invalid_request".into()));
    let resp = c
        .post(&url)
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "nobody"),
            ("code", "x"),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Basic realm=\"dcr-proxy\"");
    assert_eq!(error_of(resp).await, (401, "invalid_client".into()));
    let resp = c
        .post(&url)
        .basic_auth(&client_id, Some("guess"))
        .form(&[("grant_type", "authorization_code")])
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (401, "invalid_client".into()));
    let resp = c
        .post(&url)
        .header("authorization", "Basic !!!")
        .form(&[("grant_type", "authorization_code")])
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (401, "invalid_client".into()));
    let big = "x".repeat(64 * 1024);
    let resp = c.post(&url).form(&[("grant_type", big.as_str())]).send().await.unwrap();
    assert_eq!(error_of(resp).await, (413, "invalid_request".into()));

    // A real code: wrong verifier fails (and spends the code); a replay revokes what the code issued.
    let params = authorize(&proxy, &mut Browser::new(), &client_id).await;
    let code = params["code"].clone();
    let resp = redeem_with(&proxy, &client_id, &code, &[("code_verifier", &"Z".repeat(43))]).await;
    assert_eq!(error_of(resp).await, (400, "invalid_grant".into()));
    let resp = redeem(&proxy, &client_id, &code).await;
    assert_eq!(error_of(resp).await, (400, "invalid_grant".into()));

    let params = authorize(&proxy, &mut Browser::new(), &client_id).await;
    let code = params["code"].clone();
    let resp = redeem_with(&proxy, &client_id, &code, &[("redirect_uri", "http://127.0.0.1:1/other")]).await;
    assert_eq!(error_of(resp).await, (400, "invalid_grant".into()));

    let (_, tokens) = {
        let params = authorize(&proxy, &mut Browser::new(), &client_id).await;
        let code = params["code"].clone();
        let resp = redeem(&proxy, &client_id, &code).await;
        assert_eq!(resp.status(), 200);
        let tokens: Value = resp.json().await.unwrap();
        let replay = redeem(&proxy, &client_id, &code).await;
        assert_eq!(error_of(replay).await, (400, "invalid_grant".into()));
        (code, tokens)
    };
    let before = upstream.recorded().len();
    let resp = c.get(proxy.url("/mcp")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 401, "tokens of a replayed code are revoked");
    assert_eq!(upstream.recorded().len(), before);
    let resp = refresh(&proxy, &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(error_of(resp).await, (400, "invalid_grant".into()));
}

#[tokio::test]
async fn proxied_routes_refuse_missing_bad_and_query_tokens() {
    let (_a, upstream, proxy) = setup().await;
    let c = http();
    let resp = c.get(proxy.url("/mcp")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(!resp.headers()["www-authenticate"].to_str().unwrap().contains("error="));
    for auth in ["Bearer nope", "Basic dXNlcjpwdw==", "Bearer", &format!("Bearer {}", "x".repeat(5000))] {
        let resp = c.get(proxy.url("/anything")).header("authorization", auth).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth}");
        assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
    }
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    let resp = c.get(proxy.url(&format!("/mcp?access_token={access}"))).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let resp = c.get(proxy.url(&format!("/mcp?access_token={access}"))).bearer_auth(access).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(upstream.recorded().is_empty(), "nothing reached the upstream");
    // Expired access tokens are refused.
    proxy.clock.advance(3601);
    let resp = c.get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn garbage_at_every_endpoint_never_yields_a_server_error() {
    let (_a, _u, proxy) = setup().await;
    let c = http();
    let bodies: [&[u8]; 6] = [
        b"",
        b"\xff\xfe\x00garbage",
        b"a=%ZZ&&&=",
        b"{\"redirect_uris\":[null,1,{}]}",
        b"[[[[[[[[[[",
        b"grant_type=refresh_token&refresh_token=%00",
    ];
    let types = ["application/json", "application/x-www-form-urlencoded", "text/plain", "multipart/form-data"];
    for path in [
        "/register",
        "/token",
        "/revoke",
        "/consent",
        "/login",
        "/authorize",
        "/callback",
        "/userinfo",
        "/.well-known/oauth-authorization-server",
    ] {
        for body in bodies {
            for ct in types {
                for method in [reqwest::Method::POST, reqwest::Method::GET, reqwest::Method::PUT] {
                    let resp = c
                        .request(method.clone(), proxy.url(path))
                        .header("content-type", ct)
                        .body(body.to_vec())
                        .send()
                        .await
                        .unwrap();
                    assert!(resp.status().as_u16() < 500, "{method} {path} {ct} {body:?} → {}", resp.status());
                }
            }
        }
        let resp = c.get(proxy.url(&format!("{path}?%ff%fe=\u{1}&a=b&a=c"))).send().await.unwrap();
        assert!(resp.status().as_u16() < 500, "{path} query");
    }
}

#[tokio::test]
async fn revocation_always_answers_200_and_revokes_only_own_tokens() {
    let (_a, _u, proxy) = setup().await;
    let c = http();
    let (client_id, tokens) = login(&proxy).await;
    let other = register_public_client(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    let resp =
        c.post(proxy.url("/revoke")).form(&[("token", access), ("client_id", other.as_str())]).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(c.get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap().status(), 200);
    let resp = c
        .post(proxy.url("/revoke"))
        .form(&[("token", "unknown"), ("client_id", client_id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .post(proxy.url("/revoke"))
        .form(&[("token", tokens["refresh_token"].as_str().unwrap()), ("client_id", client_id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(c.get(proxy.url("/mcp")).bearer_auth(access).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn cors_preflight_is_answered_on_oauth_endpoints() {
    let (_a, _u, proxy) = setup().await;
    let resp = http()
        .request(reqwest::Method::OPTIONS, proxy.url("/token"))
        .header("origin", "http://localhost:6274")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    // The MCP endpoint's own preflight is answered too: it carries no token.
    let resp = http()
        .request(reqwest::Method::OPTIONS, proxy.url("/mcp"))
        .header("origin", "http://localhost:6274")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, mcp-session-id")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let allowed = resp.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("mcp-session-id"));
    let resp = http().get(proxy.url("/.well-known/oauth-protected-resource/mcp")).send().await.unwrap();
    assert!(resp.headers()["access-control-expose-headers"].to_str().unwrap().contains("WWW-Authenticate"));
}
