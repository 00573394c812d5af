//! Hardening of the forwarding path, through the running proxy (issue "Hardening", items 2, 3 and 8): the path the
//! policy judges is the path the upstream gets, forwarded sources are read in every form terminators send, and
//! headers that could forge identity, leak the proxy's cookies or echo the upstream credential never cross.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::fake_azure::FakeAzure;
use crate::common::upstream::Upstream;
use crate::common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ADMIN_RULE: &str = "[[upstream.required_scopes]]\npath_prefix = \"/mcp/admin\"\nscopes = [\"User.Read\"]\n";

/// Sends one raw HTTP/1.1 request (as written, no client-side normalisation) and returns the status and the text.
async fn raw(proxy: &TestProxy, head: &str) -> (u16, String) {
    let addr = proxy.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

async fn narrow_token(proxy: &TestProxy) -> String {
    let client_id = register_public_client(proxy).await;
    let mut browser = Browser::new();
    let params = authorize_with(proxy, &mut browser, &client_id, "&scope=openid%20offline_access").await;
    let resp = redeem(proxy, &client_id, &params["code"]).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["scope"], "openid offline_access");
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn no_spelling_of_a_protected_path_reaches_the_upstream_without_the_scope() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).extra(ADMIN_RULE).start().await;
    let token = narrow_token(&proxy).await;
    for path in [
        "/mcp/admin/..",
        "/mcp/admin%2f..",
        "/mcp/admin%2F..",
        "/mcp/admin;x=1",
        "/mcp/admin%3bx=1",
        "/mcp/admin%00",
        "/mcp/admin.",
        "/mcp/admin%20",
        "/mcp/admin/%2e%2e",
        "/mcp/admin/.%2E",
        "/mcp/x/../admin",
        "/mcp/x/%2e%2e/admin",
        "/mcp/x/%252e%252e/admin",
        "/mcp%5cadmin",
        "/mcp/admin%09",
        "/mcp//admin",
        "/MCP/%61dmin",
        "/mcp/./admin",
    ] {
        let (status, text) = raw(
            &proxy,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            ),
        )
        .await;
        assert!(status == 400 || status == 403, "{path}: {text}");
        if status == 400 {
            assert!(text.contains("\"invalid_request\""), "{path}: {text}");
        }
    }
    assert!(upstream.recorded().is_empty(), "nothing reached the upstream: {:?}", upstream.recorded());

    // What is forwarded is the canonical form the policy judged.
    let (status, _) = raw(
        &proxy,
        &format!("GET //mcp/%74ools//list?x=%2F HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(upstream.last().path, "/mcp/tools/list");
}

#[tokio::test]
async fn the_upstream_url_prefix_is_a_boundary() {
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(format!("{}/api", upstream.url())).azure(&azure).start().await;
    let (_, body) = login(&proxy).await;
    let token = body["access_token"].as_str().unwrap();
    for path in ["/../admin", "/%2e%2e/admin", "/x/../../admin", "/..%2fadmin"] {
        let (status, text) = raw(
            &proxy,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 400, "{path}: {text}");
    }
    assert!(upstream.recorded().is_empty(), "{:?}", upstream.recorded());
    let resp = http().get(proxy.url("/mcp")).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().path, "/api/mcp");
}

async fn register_from(proxy: &TestProxy, forwarded_for: &str) -> u16 {
    http()
        .post(proxy.url("/register"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn forwarded_sources_in_port_and_bracket_forms_are_limited_each_on_their_own() {
    let upstream = Upstream::start().await;
    let hash = dcr_proxy::idp::local::hash_password("unused password").unwrap();
    let idp = format!(
        "[idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n\
         [limits]\nregister_per_minute = 3\n"
    );
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .server_extra("behind_tls_terminator = true")
        .extra(&idp)
        .start()
        .await;
    // One attacker (Azure Application Gateway writes `ip:port`) empties its own bucket...
    for port in 1000..1003 {
        assert_eq!(register_from(&proxy, &format!("203.0.113.7:{port}")).await, 201);
    }
    assert_eq!(register_from(&proxy, "203.0.113.7:2000").await, 429);
    assert_eq!(register_from(&proxy, "203.0.113.7").await, 429, "the port does not make a new source");
    // ... and everybody else still registers.
    assert_eq!(register_from(&proxy, "198.51.100.9:4444").await, 201);
    assert_eq!(register_from(&proxy, "1.2.3.4, 198.51.100.10").await, 201);

    // IPv6: one /64 is one source, in every form.
    for addr in ["[2001:db8:1:2::1]:443", "2001:db8:1:2::2", "[2001:db8:1:2:ffff::3]"] {
        assert_eq!(register_from(&proxy, addr).await, 201, "{addr}");
    }
    assert_eq!(register_from(&proxy, "[2001:db8:1:2::99]:1").await, 429);
    assert_eq!(register_from(&proxy, "[2001:db8:1:3::1]:1").await, 201, "another /64");

    // A value that is no address is counted on its own, never in the terminator's shared bucket.
    for _ in 0..3 {
        assert_eq!(register_from(&proxy, "garbage-value").await, 201);
    }
    assert_eq!(register_from(&proxy, "garbage-value").await, 429);
    assert_eq!(register_from(&proxy, "unknown").await, 201);
    assert_eq!(register_from(&proxy, "198.51.100.11").await, 201);
}

#[tokio::test]
async fn identity_headers_in_any_spelling_and_the_proxy_cookie_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let (_, body) = login(&proxy).await;
    let token = body["access_token"].as_str().unwrap();
    let (status, text) = raw(
        &proxy,
        &format!(
            "GET /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX_Forwarded_User: admin\r\n\
             x-forwarded_email: admin@evil.example\r\nX-FORWARDED-USER: admin\r\nCookie: dcrp=bindingvalue; theme=dark\r\n\
             Cookie: __Host-dcrp=other; lang=en\r\nMcp-Param-user_id: 42\r\nX-Mcp-Param-a_b: 1\r\n\
             Connection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = upstream.last();
    assert_eq!(seen.headers.get("x-forwarded-user"), Some(&vec!["alice".to_owned()]), "{:?}", seen.headers);
    // MCP 2026-07-28 (SEP-2243): a tool parameter's header name is any token; it is the one `_` name forwarded.
    assert_eq!(seen.headers.get("mcp-param-user_id"), Some(&vec!["42".to_owned()]), "{:?}", seen.headers);
    for name in seen.headers.keys().filter(|n| !n.starts_with("mcp-param-")) {
        assert!(!name.contains('_'), "{name} was forwarded");
    }
    assert_eq!(seen.headers.get("cookie"), Some(&vec!["theme=dark; lang=en".to_owned()]));
}

#[tokio::test]
async fn http2_cookie_crumbs_reach_an_http1_upstream_as_one_line() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let (_, body) = login(&proxy).await;
    let token = body["access_token"].as_str().unwrap();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = h2
        .get(proxy.url("/mcp"))
        .bearer_auth(token)
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "dcrp=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().headers.get("cookie"), Some(&vec!["a=1; b=2".to_owned()]));
    // The host of `:authority` still reaches the upstream as X-Forwarded-Host.
    assert!(upstream.last().header("x-forwarded-host").is_some());
}

#[tokio::test]
async fn an_upstream_cannot_set_the_proxys_cookie() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let (_, body) = login(&proxy).await;
    let resp =
        http().get(proxy.url("/set-cookie")).bearer_auth(body["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert_eq!(cookies, vec!["session=upstream; Path=/".to_owned()]);
}

#[tokio::test]
async fn trace_and_connect_are_refused_and_options_asterisk_is_answered_here() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let (_, body) = login(&proxy).await;
    let token = body["access_token"].as_str().unwrap();
    let (status, text) = raw(
        &proxy,
        &format!("TRACE /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 405, "{text}");
    assert!(text.to_ascii_lowercase().contains("allow: get, head, post, put, patch, delete, options"), "{text}");
    let (status, text) = raw(
        &proxy,
        &format!("CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 405, "{text}");
    let (status, text) = raw(
        &proxy,
        &format!("OPTIONS * HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 204, "{text}");
    assert!(upstream.recorded().is_empty(), "{:?}", upstream.recorded());
}

#[tokio::test]
async fn preflights_allow_the_methods_of_client_management_and_session_end() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().start().await;
    for path in ["/register/some-client", "/mcp"] {
        let resp = http()
            .request(reqwest::Method::OPTIONS, proxy.url(path))
            .header("origin", "https://inspector.example")
            .header("access-control-request-method", "DELETE")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        let allowed = resp.headers()["access-control-allow-methods"].to_str().unwrap().to_owned();
        for m in ["GET", "POST", "PUT", "DELETE"] {
            assert!(allowed.split(", ").any(|a| a == m), "{path}: {allowed}");
        }
    }
}
