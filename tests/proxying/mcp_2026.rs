//! MCP 2026-07-28 at the proxy (issue 15), through the running server: `offline_access` out of challenges and
//! protected-resource metadata, `application_type` at registration, `registration.enabled = false`, and the
//! per-tool policy (`[[policy.tools]]`) judged from the JSON-RPC body: step-up, groups and roles from the id_token,
//! the Entra groups overage, `Mcp-Method`/`Mcp-Name` against the body, batches, listings narrowed (JSON and SSE),
//! the body limit, and a property test that no header/body combination gets a denied call to the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use crate::common::fake_azure::FakeAzure;
use crate::common::http_server::{body, serve, FakeServer};
use crate::common::*;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};

/// Two rules: `delete_*` needs `User.Read`; `*_secret` needs the group (or role) `g-admins`.
const POLICY: &str = "[[policy.tools]]\nmatch = \"delete_*\"\nscopes = [\"User.Read\"]\n\
                      [[policy.tools]]\nmatch = \"*_secret\"\ngroups = [\"g-admins\"]\n\
                      [[policy.tools]]\nmatch = \"wipe\"\nscopes = [\"User.Read\", \"profile\"]\n";

/// A small MCP server that records every body it receives; `tools/list` answers JSON, or SSE when the request
/// carries `x-test-sse`; any other call answers a result naming what was called.
struct McpUpstream {
    server: FakeServer,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl McpUpstream {
    async fn start() -> Self {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        let server = serve(move |req| {
            let seen = seen.clone();
            async move {
                let sse = req.headers().contains_key("x-test-sse") || req.method() == hyper::Method::GET;
                let get = req.method() == hyper::Method::GET;
                let bytes = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes).into_owned();
                seen.lock().unwrap().push(if get { "GET".to_owned() } else { text.clone() });
                let msg: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let id = msg.get("id").cloned().unwrap_or(Value::Null);
                // A GET stream resumed with Last-Event-ID replays an earlier listing answer.
                let answer = if msg["method"] == "tools/list" || get {
                    json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
                        {"name": "search", "inputSchema": {"type": "object"}},
                        {"name": "delete_user", "inputSchema": {"type": "object"}},
                        {"name": "db_secret", "inputSchema": {"type": "object"}}
                    ]}})
                } else {
                    json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "ok"}]}})
                };
                let mut resp = if sse {
                    let events = format!(
                        ": ping\n\nevent: message\ndata: {}\n\ndata: {answer}\n\n",
                        json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}})
                    );
                    let mut r = hyper::Response::new(body(events));
                    r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                    r
                } else {
                    let mut r = hyper::Response::new(body(answer.to_string()));
                    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
                    r
                };
                *resp.status_mut() = hyper::StatusCode::OK;
                resp
            }
        })
        .await;
        Self { server, bodies }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

async fn start(extra: &str) -> (FakeAzure, McpUpstream, TestProxy) {
    let azure = FakeAzure::start().await;
    let upstream = McpUpstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.server.url()).azure(&azure).extra(extra).start().await;
    (azure, upstream, proxy)
}

/// A token whose scope is `scope` (space-separated, URL-encoded by the caller).
async fn token_with_scope(proxy: &TestProxy, scope: &str) -> String {
    let client_id = register_public_client(proxy).await;
    let mut browser = Browser::new();
    let params = authorize_with(proxy, &mut browser, &client_id, &format!("&scope={scope}")).await;
    let resp = redeem(proxy, &client_id, &params["code"]).await;
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.unwrap();
    tokens["access_token"].as_str().unwrap().to_owned()
}

fn call(id: u64, name: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": {}}})
}

async fn post_mcp(proxy: &TestProxy, token: &str, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = http()
        .post(proxy.url("/mcp"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn offline_access_is_left_out_of_challenges_and_resource_metadata() {
    let (_azure, _upstream, proxy) = setup().await;
    let prm = get_json(&proxy.url("/.well-known/oauth-protected-resource/mcp")).await;
    let scopes: Vec<&str> = prm["scopes_supported"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(scopes.contains(&"openid") && !scopes.contains(&"offline_access"), "{scopes:?}");
    // Still offered by the authorization server and accepted from clients.
    let asm = get_json(&proxy.url("/.well-known/oauth-authorization-server")).await;
    assert!(asm["scopes_supported"].as_array().unwrap().contains(&json!("offline_access")));
    let resp = http().post(proxy.url("/mcp")).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains("scope=\"openid") && !challenge.contains("offline_access"), "{challenge}");
    let token = token_with_scope(&proxy, "openid%20offline_access").await;
    assert!(!token.is_empty());
}

#[tokio::test]
async fn application_type_decides_the_redirect_uris_a_client_may_register() {
    let (_azure, _upstream, proxy) = setup().await;
    let register = |body: Value| {
        let url = proxy.url("/register");
        async move {
            let resp = http().post(url).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, doc) =
        register(json!({"redirect_uris": ["http://127.0.0.1:9/cb"], "application_type": "native"})).await;
    assert_eq!((status, doc["application_type"].as_str()), (201, Some("native")));
    let (status, _) =
        register(json!({"redirect_uris": ["com.example.app:/oauth/cb"], "application_type": "native"})).await;
    assert_eq!(status, 201);
    let (status, _) = register(json!({"redirect_uris": ["https://app.example/cb"], "application_type": "web"})).await;
    assert_eq!(status, 201);
    // What the 2.x SDK sends for VS Code's registration: `native` (a loopback URI is listed) beside an https one.
    let vscode = json!({"redirect_uris": ["https://vscode.dev/redirect", "http://127.0.0.1:33418/"],
        "application_type": "native"});
    assert_eq!(register(vscode).await.0, 201);
    // Absent: RFC 7591 has no application_type; the loopback callback of CLI clients still registers.
    let (status, doc) = register(json!({"redirect_uris": ["http://127.0.0.1:9/cb"]})).await;
    assert_eq!((status, doc.get("application_type")), (201, None));
    for (body, code) in [
        (json!({"redirect_uris": ["http://127.0.0.1:9/cb"], "application_type": "web"}), "invalid_redirect_uri"),
        (json!({"redirect_uris": ["http://localhost:9/cb"], "application_type": "web"}), "invalid_redirect_uri"),
        (json!({"redirect_uris": ["http://app.example/cb"], "application_type": "native"}), "invalid_redirect_uri"),
        (json!({"redirect_uris": ["myapp:/cb"], "application_type": "native"}), "invalid_redirect_uri"),
        (
            json!({"redirect_uris": ["https://app.example/cb"], "application_type": "desktop"}),
            "invalid_client_metadata",
        ),
        (json!({"redirect_uris": ["https://app.example/cb"], "application_type": ["web"]}), "invalid_client_metadata"),
    ] {
        let (status, doc) = register(body.clone()).await;
        assert_eq!((status, doc["error"].as_str()), (400, Some(code)), "{body}");
        assert!(doc["error_description"].as_str().unwrap_or("").contains("application_type"), "{body}: {doc}");
    }
}

#[tokio::test]
async fn registration_turned_off_refuses_clients_and_leaves_the_endpoint_out_of_metadata() {
    let (_azure, _upstream, proxy) = setup_with("[registration]\nenabled = false\n").await;
    let resp = http()
        .post(proxy.url("/register"))
        .json(&json!({"redirect_uris": ["http://127.0.0.1:9/cb"], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["error_description"].as_str().unwrap().contains("Client ID Metadata Document"), "{doc}");
    let asm = get_json(&proxy.url("/.well-known/oauth-authorization-server")).await;
    assert!(asm.get("registration_endpoint").is_none(), "{asm}");
    assert_eq!(asm["client_id_metadata_document_supported"], true);
    assert_eq!(proxy.app.store.stats().clients, 0);
}

#[tokio::test]
async fn a_tool_needing_a_scope_gets_one_step_up_naming_every_missing_scope_and_never_reaches_the_upstream() {
    let (_azure, upstream, proxy) = start(POLICY).await;
    let token = token_with_scope(&proxy, "openid%20offline_access").await;
    let resp = post_mcp(&proxy, &token, &call(1, "search").to_string(), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.bodies().len(), 1);

    let resp = post_mcp(&proxy, &token, &call(2, "wipe").to_string(), &[]).await;
    assert_eq!(resp.status(), 403);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let scope = challenge.split("scope=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("");
    let scope: Vec<&str> = scope.split(' ').collect();
    assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    assert!(scope.contains(&"User.Read") && scope.contains(&"profile") && scope.contains(&"openid"), "{challenge}");
    assert!(!scope.contains(&"offline_access"), "{challenge}");
    // A batch: every element judged, one challenge for all of them.
    let batch = json!([call(3, "search"), call(4, "delete_user"), call(5, "wipe")]).to_string();
    let resp = post_mcp(&proxy, &token, &batch, &[]).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(upstream.bodies().len(), 1, "refused calls never reach the upstream");

    let full = token_with_scope(&proxy, "openid%20profile%20User.Read").await;
    let resp = post_mcp(&proxy, &full, &call(6, "delete_user").to_string(), &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(upstream.bodies().last().unwrap().contains("delete_user"));
}

#[tokio::test]
async fn groups_and_roles_come_from_the_id_token_and_an_overage_names_app_roles() {
    let (azure, upstream, proxy) = start(POLICY).await;
    let no_group = token_with_scope(&proxy, "openid").await;
    let resp = post_mcp(&proxy, &no_group, &call(7, "db_secret").to_string(), &[]).await;
    assert_eq!(resp.status(), 403);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!((doc["id"].clone(), doc["error"]["code"].clone()), (json!(7), json!(-31403)), "{doc}");
    assert!(upstream.bodies().is_empty());

    azure.state().id_token_claims.insert("groups".into(), json!(["g-other", "g-admins"]));
    let member = token_with_scope(&proxy, "openid").await;
    assert_eq!(post_mcp(&proxy, &member, &call(8, "db_secret").to_string(), &[]).await.status(), 200);

    azure.state().id_token_claims.clear();
    azure.state().id_token_claims.insert("roles".into(), json!(["g-admins"]));
    let by_role = token_with_scope(&proxy, "openid").await;
    assert_eq!(post_mcp(&proxy, &by_role, &call(9, "db_secret").to_string(), &[]).await.status(), 200);

    azure.state().id_token_claims.clear();
    azure.state().id_token_claims.insert("_claim_names".into(), json!({"groups": "src1"}));
    azure.state().id_token_claims.insert(
        "_claim_sources".into(),
        json!({"src1": {"endpoint": "https://graph.windows.net/t/users/u/getMemberObjects"}}),
    );
    let overage = token_with_scope(&proxy, "openid").await;
    let resp = post_mcp(&proxy, &overage, &call(10, "db_secret").to_string(), &[]).await;
    assert_eq!(resp.status(), 403);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["error"]["message"].as_str().unwrap().contains("app roles"), "{doc}");
    assert_eq!(upstream.bodies().len(), 2);
}

#[tokio::test]
async fn mcp_headers_must_match_the_body() {
    let (_azure, upstream, proxy) = start(POLICY).await;
    let token = token_with_scope(&proxy, "openid").await;
    let b64 = |s: &str| format!("=?base64?{}?=", base64::engine::general_purpose::STANDARD.encode(s));
    let body = call(11, "delete_user").to_string();
    // Headers saying "search" while the body calls delete_user: 400 HeaderMismatch, never the upstream.
    for headers in [
        vec![("mcp-method", "tools/call"), ("mcp-name", "search")],
        vec![("mcp-method", "tools/list")],
        vec![("mcp-name", b64("search").leak() as &str)],
    ] {
        let resp = post_mcp(&proxy, &token, &body, &headers).await;
        assert_eq!(resp.status(), 400, "{headers:?}");
        let doc: Value = resp.json().await.unwrap();
        assert_eq!((doc["id"].clone(), doc["error"]["code"].clone()), (json!(11), json!(-32020)), "{doc}");
    }
    let search = call(12, "search").to_string();
    let encoded = b64("search");
    for headers in [vec![("mcp-method", "tools/call"), ("mcp-name", "search")], vec![("mcp-name", encoded.as_str())]] {
        assert_eq!(post_mcp(&proxy, &token, &search, &headers).await.status(), 200, "{headers:?}");
    }
    assert!(upstream.bodies().iter().all(|b| !b.contains("delete_user")));
    assert_eq!(upstream.bodies().len(), 2);
}

#[tokio::test]
async fn listings_are_narrowed_to_the_tools_the_user_may_call_json_and_sse() {
    let (_azure, _upstream, proxy) = start(POLICY).await;
    let token = token_with_scope(&proxy, "openid").await;
    let list = json!({"jsonrpc": "2.0", "id": 20, "method": "tools/list", "params": {}}).to_string();
    let resp = post_mcp(&proxy, &token, &list, &[("mcp-method", "tools/list")]).await;
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    let names: Vec<&str> =
        doc["result"]["tools"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["search"]);

    let resp = post_mcp(&proxy, &token, &list, &[("x-test-sse", "1")]).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.starts_with(": ping\n\nevent: message\ndata: "), "{text}");
    assert!(text.contains("\"search\"") && !text.contains("delete_user") && !text.contains("db_secret"), "{text}");

    let admin = token_with_scope(&proxy, "openid%20User.Read").await;
    let doc: Value = post_mcp(&proxy, &admin, &list, &[]).await.json().await.unwrap();
    assert_eq!(doc["result"]["tools"].as_array().map(Vec::len), Some(2), "{doc}");
}

#[tokio::test]
async fn a_policy_body_is_bounded_and_must_be_plain_json() {
    let (_azure, upstream, proxy) = start(&format!("[policy]\nmax_body_bytes = 1024\n{POLICY}")).await;
    let token = token_with_scope(&proxy, "openid").await;
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "search", "arguments": {"q": "x".repeat(2000)}}});
    assert_eq!(post_mcp(&proxy, &token, &big.to_string(), &[]).await.status(), 413);
    let dup = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name":"delete_user"}}"#;
    assert_eq!(post_mcp(&proxy, &token, dup, &[]).await.status(), 400);
    assert_eq!(post_mcp(&proxy, &token, "not json", &[]).await.status(), 400);
    let gz = post_mcp(&proxy, &token, &call(1, "search").to_string(), &[("content-encoding", "gzip")]).await;
    assert_eq!(gz.status(), 400);
    assert!(upstream.bodies().is_empty());
}

/// Issue 23 item 1: a body that a case-insensitive, Go-folding or NUL-cutting parser reads differently from the
/// policy is refused, at every level the policy judges and in batches.
#[tokio::test]
async fn members_spelled_for_lenient_parsers_never_reach_the_upstream() {
    let (_azure, upstream, proxy) = start(POLICY).await;
    let token = token_with_scope(&proxy, "openid").await;
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","Name":"db_secret"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","NAME":"db_secret"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","Method":"tools/call","params":{"name":"db_secret"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"},"Params":{"name":"db_secret"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"},"param\u017f":{"name":"db_secret"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name\u0000":"db_secret"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method\u0000":"tools/call","params":{"name":"db_secret"}}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"search","nAmE":"db_secret"}}]"#,
    ] {
        let resp = post_mcp(&proxy, &token, body, &[]).await;
        assert_eq!(resp.status(), 400, "{body}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("case-insensitive"), "{body}: {text}");
    }
    assert!(upstream.bodies().is_empty(), "{:?}", upstream.bodies());
    // Tool arguments are the tool's: keys spelled any way pass there.
    let ok = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"search","arguments":{"Name":"x"}}}"#;
    assert_eq!(post_mcp(&proxy, &token, ok, &[]).await.status(), 200);
}

/// Issue 23 items 2 and 8: resource URIs are judged as URL parsers serialise them; completions, subscriptions and
/// replayed GET streams are judged or narrowed; methods Streamable HTTP does not use are refused on the MCP path.
#[tokio::test]
async fn every_way_to_name_or_reach_a_governed_target_is_judged() {
    let (_azure, upstream, proxy) = start(POLICY).await;
    let token = token_with_scope(&proxy, "openid").await;
    let read = |method: &str, uri: &str| {
        json!({"jsonrpc": "2.0", "id": 5, "method": method, "params": {"uri": uri}}).to_string()
    };
    // The plain spelling is judged (the group is missing: 403) ...
    for method in ["resources/read", "resources/subscribe"] {
        assert_eq!(post_mcp(&proxy, &token, &read(method, "file:///db_secret"), &[]).await.status(), 403, "{method}");
    }
    // ... and every other spelling of it is refused as ambiguous.
    for uri in [
        "file:///./db_secret",
        "file:///x/../db_secret",
        "file://localhost/db_secret",
        " file:///db_secret",
        "file:///%64b_secret",
    ] {
        let resp = post_mcp(&proxy, &token, &read("resources/read", uri), &[]).await;
        assert_eq!(resp.status(), 400, "{uri}");
    }
    let complete = json!({"jsonrpc": "2.0", "id": 6, "method": "completion/complete",
        "params": {"ref": {"type": "ref/prompt", "name": "db_secret"}, "argument": {"name": "a", "value": ""}}});
    assert_eq!(post_mcp(&proxy, &token, &complete.to_string(), &[]).await.status(), 403);
    for method in ["PUT", "PATCH", "post", "PROPFIND"] {
        let resp = http()
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), proxy.url("/mcp"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(call(7, "db_secret").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method}");
        assert_eq!(resp.headers().get("allow").and_then(|v| v.to_str().ok()), Some("GET, POST, DELETE, OPTIONS"));
    }
    assert!(upstream.bodies().is_empty(), "nothing above reached the upstream: {:?}", upstream.bodies());
    // A resumed GET stream replays a listing: it is narrowed like a POST's.
    let resp = http()
        .get(proxy.url("/mcp"))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .header("last-event-id", "41")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("\"search\"") && !text.contains("delete_user") && !text.contains("db_secret"), "{text}");
    assert_eq!(upstream.bodies(), vec!["GET".to_owned()]);
}

/// The property: whatever the headers, the spelling and the shape of the message, a call the user may not make
/// never reaches the upstream; and allowed calls do (the test is not vacuous).
#[test]
fn no_header_or_body_combination_gets_a_denied_call_to_the_upstream() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (_azure, upstream, proxy, token) = rt.block_on(async {
        let (azure, upstream, proxy) = start(POLICY).await;
        let token = token_with_scope(&proxy, "openid").await;
        (azure, upstream, proxy, token)
    });
    let names = ["search", "delete_user", "DELETE_User", "db_secret", "Db_SECRET", "delete_", "wipe", "Wipe"];
    let denied = |n: &str| {
        let n = n.to_ascii_lowercase();
        n.starts_with("delete_") || n.ends_with("_secret") || n == "wipe"
    };
    let config = ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(name in 0..names.len(), shape in 0..6usize, method_h in 0..4usize, name_h in 0..5usize,
                        path in 0..4usize)| {
        let name = names[name];
        let b64 = format!("=?base64?{}?=", base64::engine::general_purpose::STANDARD.encode(name));
        let body = match shape {
            0 => call(1, name).to_string(),
            1 => json!([call(1, "search"), call(2, name)]).to_string(),
            2 => format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"search","name":"{name}"}}}}"#),
            3 => json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": name}}).to_string(),
            4 => json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": name}}).to_string(),
            _ => format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{{"name":"{name}"}}}}"#),
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        match method_h {
            1 => headers.push(("Mcp-Method".into(), "tools/call".into())),
            2 => headers.push(("mcp-method".into(), "tools/list".into())),
            3 => headers.push(("MCP-METHOD".into(), "resources/read".into())),
            _ => {}
        }
        match name_h {
            1 => headers.push(("Mcp-Name".into(), "search".into())),
            2 => headers.push(("mcp-name".into(), name.into())),
            3 => headers.push(("mcp-name".into(), b64.clone())),
            4 => headers.push(("Mcp-Name".into(), "=?base64?c2VhcmNo?=".into())),
            _ => {}
        }
        let path = ["/mcp", "/MCP", "/mcp/", "//mcp"][path];
        let before = upstream.bodies().len();
        let status = rt.block_on(async {
            let mut req = http().post(proxy.url(path)).bearer_auth(&token)
                .header("content-type", "application/json").body(body.clone());
            for (k, v) in &headers {
                req = req.header(k.as_str(), v.as_str());
            }
            req.send().await.unwrap().status().as_u16()
        });
        let bodies = upstream.bodies();
        for b in &bodies {
            let lower = b.to_ascii_lowercase();
            prop_assert!(!lower.contains("delete_") && !lower.contains("_secret") && !lower.contains("\"wipe\""),
                "a denied call reached the upstream: {b} (status {status})");
        }
        if bodies.len() > before {
            prop_assert!(!denied(name), "{name} shape {shape} reached the upstream");
        } else {
            prop_assert!(matches!(status, 400 | 403), "refused with {status}");
        }
    });
    // Not vacuous: the random cases above rarely draw an allowed call (about one in thirty: a run of 96 drew none
    // about one time in twenty), so the allowed shapes are also sent every time, each of which must reach.
    let allowed: [(String, &[(&str, &str)]); 4] = [
        (call(1, "search").to_string(), &[]),
        (call(2, "search").to_string(), &[("Mcp-Method", "tools/call"), ("Mcp-Name", "search")]),
        (call(3, "search").to_string(), &[("Mcp-Method", "tools/call"), ("Mcp-Name", "=?base64?c2VhcmNo?=")]),
        (json!([call(4, "search"), call(5, "search")]).to_string(), &[]),
    ];
    for (body, headers) in allowed {
        let before = upstream.bodies().len();
        let status = rt.block_on(async {
            let mut req = http()
                .post(proxy.url("/mcp"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body.clone());
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.send().await.unwrap().status().as_u16()
        });
        assert_eq!(status, 200, "allowed call {body} {headers:?}");
        assert_eq!(upstream.bodies().len(), before + 1, "allowed call {body} {headers:?} did not reach the upstream");
    }
    rt.block_on(async move { proxy.stop().await });
}

/// The policy's cost on allowed calls: the same `tools/call` through a proxy without rules and one with three
/// rules, alternating request by request (so that load from elsewhere hits both alike), each on its own
/// keep-alive connection; prints the medians. Timing, not a check: run with
/// `cargo test --test proxying -- mcp_2026:: --ignored --nocapture`.
#[tokio::test]
#[ignore]
#[allow(clippy::print_stderr)]
async fn policy_cost_on_allowed_calls() {
    const N: usize = 1000;
    let mut setups = Vec::new();
    for extra in ["", POLICY] {
        let (azure, upstream, proxy) = start(extra).await;
        let token = token_with_scope(&proxy, "openid").await;
        setups.push((azure, upstream, proxy, token, http(), Vec::with_capacity(N)));
    }
    let body = call(1, "search").to_string();
    for i in 0..N + 100 {
        for (_, _, proxy, token, client, times) in setups.iter_mut() {
            let started = std::time::Instant::now();
            let resp = client
                .post(proxy.url("/mcp"))
                .bearer_auth(&*token)
                .header("content-type", "application/json")
                .header("mcp-method", "tools/call")
                .header("mcp-name", "search")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap();
            if i >= 100 {
                times.push(started.elapsed());
            }
        }
    }
    let median = |t: &mut Vec<std::time::Duration>| {
        t.sort();
        t[t.len() / 2]
    };
    let (a, b) = setups.split_at_mut(1);
    eprintln!(
        "median tools/call through the proxy: no rules {:?}, three rules {:?}",
        median(&mut a[0].5),
        median(&mut b[0].5)
    );
}

/// A chunked body, split inside the tool name and with a trailer, is judged whole: the denied call is refused and
/// the allowed one arrives intact.
#[tokio::test]
async fn a_chunked_body_is_judged_whole() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (_azure, upstream, proxy) = start(POLICY).await;
    let token = token_with_scope(&proxy, "openid").await;
    let addr = proxy.base.trim_start_matches("http://").to_owned();
    let send = |name: &'static str| {
        let (addr, token) = (addr.clone(), token.clone());
        async move {
            let body = call(30, name).to_string();
            let (a, b) = body.split_at(body.find(name).unwrap() + 3);
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\nTrailer: mcp-name\r\nConnection: close\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            for part in [a, b] {
                s.write_all(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes()).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            s.write_all(b"0\r\nmcp-name: search\r\n\r\n").await.unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
            String::from_utf8_lossy(&out).split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0)
        }
    };
    assert_eq!(send("delete_user").await, 403);
    assert!(upstream.bodies().is_empty());
    assert_eq!(send("search").await, 200);
    assert_eq!(upstream.bodies(), vec![call(30, "search").to_string()]);
}
