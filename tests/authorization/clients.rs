//! What each kind of MCP client relies on, through the running proxy: scope challenges and step-up, the
//! default scope, CORS for browser clients, legacy (2025-03-26) clients that skip discovery, and the upstream's
//! own authorization kept out of sight.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::fake_azure::FakeAzure;
use crate::common::upstream::Upstream;
use crate::common::*;
use serde_json::{json, Value};

const ADMIN_RULE: &str = "[[upstream.required_scopes]]\npath_prefix = \"/mcp/admin\"\nscopes = [\"User.Read\"]\n";

async fn token_with(proxy: &TestProxy, client_id: &str, extra: &str) -> Value {
    let mut browser = Browser::new();
    let params = authorize_with(proxy, &mut browser, client_id, extra).await;
    let resp = redeem(proxy, client_id, &params["code"]).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_path_that_needs_more_scope_answers_403_and_the_client_steps_up() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).extra(ADMIN_RULE).start().await;
    let client_id = register_public_client(&proxy).await;
    let narrow = token_with(&proxy, &client_id, "&scope=openid%20offline_access").await;
    assert_eq!(narrow["scope"], "openid offline_access");
    let access = narrow["access_token"].as_str().unwrap();

    // Paths outside the rule work with the narrow token.
    let resp = http().post(proxy.url("/mcp")).bearer_auth(access).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // The rule's path, and disguises of it, are refused before reaching the upstream.
    let before = upstream.recorded().len();
    for path in ["/mcp/admin", "/mcp/admin/tools", "/mcp/%61dmin", "/mcp//admin", "/MCP/Admin", "/mcp/x/../admin"] {
        let resp = http().post(proxy.url(path)).bearer_auth(access).body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Bearer error=\"insufficient_scope\""), "{challenge}");
        // Granted and missing scopes, without `offline_access` (MCP 2026-07-28, SEP-2207).
        assert!(challenge.contains("scope=\"openid User.Read\""), "{challenge}");
        assert!(challenge
            .contains(&format!("resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"", proxy.base)));
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "insufficient_scope");
        assert!(body["error_description"].as_str().unwrap().contains("User.Read"));
    }
    assert_eq!(upstream.recorded().len(), before, "refused requests never reach the upstream");

    // The client asks again with the challenge's scope and gets through.
    let wide = token_with(&proxy, &client_id, "&scope=openid%20offline_access%20User.Read").await;
    assert_eq!(wide["scope"], "openid offline_access User.Read");
    let resp = http()
        .post(proxy.url("/mcp/admin/tools"))
        .bearer_auth(wide["access_token"].as_str().unwrap())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().path, "/mcp/admin/tools");
}

#[tokio::test]
async fn an_upstream_insufficient_scope_challenge_becomes_the_proxys_own() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let client_id = register_public_client(&proxy).await;
    let narrow = token_with(&proxy, &client_id, "&scope=openid").await;
    let resp = http()
        .get(proxy.url("/need-scope"))
        .bearer_auth(narrow["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    // Only what the proxy can grant is asked for; the upstream's realm and unknown scope stay hidden.
    assert!(challenge.contains("scope=\"openid User.Read\""), "{challenge}");
    assert!(
        challenge.contains(&format!("resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"", proxy.base))
    );
    assert!(!challenge.contains("upstream") && !challenge.contains("Sites.FullControl.All"), "{challenge}");

    // A token that already has the offered scope gets the upstream's 403 without any challenge.
    let (_, full) = login(&proxy).await;
    let resp =
        http().get(proxy.url("/need-scope")).bearer_auth(full["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("www-authenticate").is_none());
}

#[tokio::test]
async fn a_client_that_asks_no_scope_gets_the_default() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let (client_id, tokens) = login(&proxy).await;
    assert_eq!(tokens["scope"], "openid profile email offline_access User.Read");
    // ChatGPT reconnects without a scope, and with scope names of its own: both get the default.
    let other = token_with(&proxy, &client_id, "&scope=chatgpt.tools").await;
    assert_eq!(other["scope"], "openid profile email offline_access User.Read");
}

#[tokio::test]
async fn browser_clients_get_cors_on_every_oauth_endpoint() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let paths = [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/register",
        "/token",
        "/revoke",
        "/mcp",
    ];
    for path in paths {
        let resp = http()
            .request(reqwest::Method::OPTIONS, proxy.url(path))
            .header("origin", "http://localhost:6274")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type, mcp-protocol-version")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "{path}");
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "*", "{path}");
        assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"), "{path}");
        let allowed = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
        for needed in ["authorization", "content-type", "mcp-protocol-version"] {
            assert!(allowed.contains(needed), "{path}: {allowed}");
        }
    }
    assert!(upstream.recorded().is_empty(), "preflights are answered by the proxy");

    // The actual requests carry CORS headers too, errors included, and expose the challenge.
    let origin = ("origin", "http://localhost:6274");
    let reg = http()
        .post(proxy.url("/register"))
        .header(origin.0, origin.1)
        .json(&json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reg.status(), 201);
    assert_eq!(reg.headers()["access-control-allow-origin"], "*");
    for path in ["/token", "/revoke"] {
        let resp = http().post(proxy.url(path)).header(origin.0, origin.1).form(&[("x", "y")]).send().await.unwrap();
        assert!(resp.status().is_client_error(), "{path}");
        assert_eq!(resp.headers()["access-control-allow-origin"], "*", "{path}");
    }
    let resp = http().post(proxy.url("/mcp")).header(origin.0, origin.1).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["access-control-expose-headers"].to_str().unwrap().contains("WWW-Authenticate"));
}

/// A 2025-03-26 client skips RFC 9728: it takes the MCP server's origin as the authorization server, reads RFC
/// 8414 metadata at the root (or falls back to `/authorize`, `/token`, `/register`) and never sends `resource`.
#[tokio::test]
async fn a_legacy_client_without_discovery_uses_the_root_endpoints() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let meta: Value = get_json(&proxy.url("/.well-known/oauth-authorization-server")).await;
    for (key, path) in
        [("authorization_endpoint", "/authorize"), ("token_endpoint", "/token"), ("registration_endpoint", "/register")]
    {
        assert_eq!(meta[key], proxy.url(path), "the default path of the 2025-03-26 fallback");
    }
    let (_, tokens) = login(&proxy).await;
    let resp = http()
        .post(proxy.url("/mcp"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .header("mcp-protocol-version", "2025-03-26")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().header("mcp-protocol-version"), Some("2025-03-26"));
}

#[tokio::test]
async fn the_upstreams_own_well_known_documents_never_reach_the_client() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    for path in [
        "/.well-known/oauth-protected-resource/other",
        "/.well-known/openid-configuration/extra",
        "/.well-known/jwks.json",
        "/.well-known/mcp.json",
    ] {
        let resp = http().get(proxy.url(path)).bearer_auth(access).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    assert!(upstream.recorded().is_empty(), "no /.well-known request was forwarded");
}

/// What Cursor registers: its app scheme, its https callback and a loopback one, in one request (a refusal of
/// any one of them fails the whole registration, and Cursor never reaches the consent page).
fn cursor_registration() -> Value {
    json!({
        "client_name": "Cursor",
        "redirect_uris": [
            "cursor://anysphere.cursor-mcp/oauth/callback",
            "https://www.cursor.com/agents/mcp/oauth/callback",
            "http://localhost:8787/callback"
        ],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none"
    })
}

#[tokio::test]
async fn cursor_registers_its_app_scheme_and_gets_a_code_there() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).start().await;
    let doc = register_json(&proxy, cursor_registration()).await;
    let client_id = doc["client_id"].as_str().unwrap();
    let cursor_cb = "cursor://anysphere.cursor-mcp/oauth/callback";
    let url = authorize_url(&proxy, client_id, "").replace(&urlencode(CLIENT_REDIRECT), &urlencode(cursor_cb));
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&url).await else { panic!("consent page expected") };
    assert!(consent.contains("cursor://anysphere.cursor-mcp"), "the app scheme is shown: {consent}");
    let (request, csrf) = (hidden_field(&consent, "request"), hidden_field(&consent, "csrf"));
    let Landing::Client(params) = browser
        .post_form(&proxy.url("/consent"), &[("request", &request), ("csrf", &csrf), ("action", "approve")])
        .await
    else {
        panic!("the browser should land on Cursor's callback")
    };
    let resp = redeem_with(&proxy, client_id, &params["code"], &[("redirect_uri", cursor_cb)]).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn private_use_schemes_are_accepted_only_as_configured() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    // Strict MCP rule: no private-use schemes at all.
    let strict = TestProxy::builder()
        .upstream(upstream.url())
        .azure(&azure)
        .extra("[registration]\nprivate_use_redirect_uris = []\n")
        .start()
        .await;
    // Closed registration with the Cursor and loopback presets.
    let presets = TestProxy::builder()
        .upstream(upstream.url())
        .azure(&azure)
        .extra("[registration]\nallow = [\"cursor\", \"loopback\"]\n")
        .start()
        .await;
    // Closed registration without Cursor.
    let claude_only = TestProxy::builder()
        .upstream(upstream.url())
        .azure(&azure)
        .extra("[registration]\nallow = [\"claude\"]\n")
        .start()
        .await;
    let register = |p: &TestProxy, body: Value| {
        let url = p.url("/register");
        async move { http().post(url).json(&body).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(register(&strict, cursor_registration()).await, 400);
    assert_eq!(register(&presets, cursor_registration()).await, 201);
    assert_eq!(register(&claude_only, cursor_registration()).await, 400);
    for uri in [
        "vscode://vscode.mcp/callback",
        "javascript://x/%0aalert(1)",
        "cursor://anysphere.cursor-mcp/oauth/callback/../x",
        "cursor://evil.example/oauth/callback",
    ] {
        let body = json!({"redirect_uris": [uri], "token_endpoint_auth_method": "none"});
        let resp = http().post(presets.url("/register")).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{uri}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"], "invalid_redirect_uri", "{uri}");
    }
}

#[tokio::test]
async fn vs_code_registers_and_authorizes_on_any_loopback_port() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .azure(&azure)
        .extra("[registration]\nallow = [\"vscode\", \"loopback\"]\n")
        .start()
        .await;
    // VS Code's registration (microsoft/vscode#278512); it then authorizes on whatever port was free.
    let doc = register_json(
        &proxy,
        json!({
            "client_name": "Visual Studio Code",
            "redirect_uris": [
                "https://insiders.vscode.dev/redirect",
                "https://vscode.dev/redirect",
                "http://127.0.0.1/",
                "http://127.0.0.1:33418/"
            ],
            "token_endpoint_auth_method": "none"
        }),
    )
    .await;
    let url = authorize_url(&proxy, doc["client_id"].as_str().unwrap(), "")
        .replace(&urlencode(CLIENT_REDIRECT), &urlencode("http://127.0.0.1:59656/"));
    let resp = http().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "consent page for a free loopback port");
}

#[tokio::test]
async fn the_chatgpt_preset_takes_both_chatgpt_callbacks_and_nothing_else_on_its_host() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .azure(&azure)
        .extra("[registration]\nallow = [\"chatgpt\"]\n")
        .start()
        .await;
    for (uri, expected) in [
        ("https://chatgpt.com/connector_platform_oauth_redirect", 201),
        ("https://chatgpt.com/connector/oauth/abc123", 201),
        ("https://chatgpt.com/other", 400),
        ("https://claude.ai/api/mcp/auth_callback", 400),
        (CLIENT_REDIRECT, 400),
    ] {
        let body = json!({"redirect_uris": [uri], "token_endpoint_auth_method": "none"});
        let resp = http().post(proxy.url("/register")).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), expected, "{uri}");
    }
}
