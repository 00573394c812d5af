//! Issue 16 §3, one sign-in for several APIs: `[[routes]]` through the running proxy with the fake Entra ID and
//! two upstreams. Each route is its own protected resource (RFC 8707, RFC 9728), a token is bound to the resource
//! it was issued for, and the proxy obtains the route's IdP token by a refresh_token grant for the route's scopes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::fake_azure::FakeAzure;
use crate::common::upstream::Upstream;
use crate::common::*;
use serde_json::Value;

const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const TICKETS_SCOPE: &str = "api://tickets/.default";

struct Setup {
    azure: FakeAzure,
    default: Upstream,
    graph: Upstream,
    tickets: Upstream,
    proxy: TestProxy,
}

async fn start() -> Setup {
    let azure = FakeAzure::start().await;
    let (default, graph, tickets) = (Upstream::start().await, Upstream::start().await, Upstream::start().await);
    let routes = format!(
        "[[routes]]\npath_prefix = \"/graph\"\nurl = \"{}\"\nscopes = [\"{GRAPH_SCOPE}\"]\n\
         [[routes]]\npath_prefix = \"/tickets\"\nurl = \"{}\"\nscopes = [\"{TICKETS_SCOPE}\", \"offline_access\"]\n",
        graph.url(),
        tickets.url()
    );
    let proxy = TestProxy::builder().upstream(default.url()).azure(&azure).extra(routes).start().await;
    Setup { azure, default, graph, tickets, proxy }
}

/// Signs in for `resource` (RFC 8707 at /authorize and /token): the proxy's access token.
async fn sign_in_for(proxy: &TestProxy, resource: &str) -> String {
    let client_id = register_public_client(proxy).await;
    let mut browser = Browser::new();
    let params = authorize_with(proxy, &mut browser, &client_id, &format!("&resource={}", urlencode(resource))).await;
    let code = params.get("code").unwrap_or_else(|| panic!("no code in {params:?}"));
    let resp = redeem_with(proxy, &client_id, code, &[("resource", resource)]).await;
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    doc["access_token"].as_str().unwrap().to_owned()
}

async fn get(proxy: &TestProxy, path: &str, token: &str) -> reqwest::Response {
    http().get(proxy.url(path)).bearer_auth(token).send().await.unwrap()
}

/// The scope the fake Entra issued the token an upstream last received for.
fn scope_seen_by(azure: &FakeAzure, upstream: &Upstream) -> String {
    let auth = upstream.last().header("authorization").unwrap().to_owned();
    let token = auth.strip_prefix("Bearer ").unwrap();
    azure.state().token_scopes.get(token).cloned().unwrap_or_default()
}

fn challenge(resp: &reqwest::Response) -> String {
    resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_token_for_graph_reaches_graph_with_a_graph_token_and_is_refused_on_tickets() {
    let s = start().await;
    let graph_resource = s.proxy.url("/graph");
    let token = sign_in_for(&s.proxy, &graph_resource).await;

    let resp = get(&s.proxy, "/graph/v1.0/me", &token).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(s.graph.last().path, "/v1.0/me", "the route's API gets the path below the prefix");
    assert_eq!(scope_seen_by(&s.azure, &s.graph), GRAPH_SCOPE, "the Graph API gets a Graph-scoped token");
    let refreshes = s.azure.state().refresh_calls;
    assert_eq!(get(&s.proxy, "/graph/v1.0/me", &token).await.status(), 200);
    assert_eq!(s.azure.state().refresh_calls, refreshes, "the route's token is cached on the grant");

    // The same proxy token on another route, spelled plainly or not, and on the default upstream: refused.
    for path in ["/tickets/1", "/tickets", "/%74ickets/1", "/graph/../tickets/1", "/mcp"] {
        let resp = get(&s.proxy, path, &token).await;
        assert_eq!(resp.status(), 401, "{path}");
        assert!(challenge(&resp).contains("invalid_token"), "{path}: {}", challenge(&resp));
    }
    let resp = get(&s.proxy, "/tickets/1", &token).await;
    assert!(
        challenge(&resp).contains(&s.proxy.url("/.well-known/oauth-protected-resource/tickets")),
        "the challenge names the tickets resource: {}",
        challenge(&resp)
    );
    assert!(s.tickets.recorded().is_empty(), "tickets never saw a request");
    assert!(s.default.recorded().is_empty(), "the default upstream never saw a request");
    // Issue 24: the fast path serves a route through the same exchange (its own raw pool), hyper when it is off.
    let served_fast = s.proxy.app.upstream_routes[0].forwarder.raw_pool().map_or(0, |p| p.exchanges());
    match std::env::var("DCR_TEST_FAST_PATH").as_deref() {
        Ok("0") => assert_eq!(served_fast, 0, "the fast path is off"),
        _ => assert_eq!(served_fast, 2, "both Graph requests went through the fast path"),
    }
}

/// Issue 23 item 4: one canonical path chooses both the upstream and the credential. A route's token on
/// `//graph/…` or `/%67raph/…` goes to the route (with the route's token), never to `[upstream]`; and a code
/// issued without `resource` is not redeemed for a route.
#[tokio::test]
async fn another_spelling_of_a_route_goes_to_the_route_never_to_the_main_upstream_with_its_token() {
    let s = start().await;
    let graph_resource = s.proxy.url("/graph");
    let token = sign_in_for(&s.proxy, &graph_resource).await;
    let before = s.default.recorded().len();
    for path in ["//graph/v1.0/me", "/%67raph/v1.0/me", "/GRAPH/v1.0/me", "/graph//v1.0/me"] {
        let resp = get(&s.proxy, path, &token).await;
        let status = resp.status().as_u16();
        assert!(status == 200 || status == 400 || status == 401, "{path}: {status}");
        if path == "//graph/v1.0/me" {
            assert_eq!(status, 200, "repeated slashes collapse: the route serves it");
        }
        if status == 200 {
            assert_eq!(s.graph.last().path, "/v1.0/me", "{path} reached the route's API");
            assert_eq!(scope_seen_by(&s.azure, &s.graph), GRAPH_SCOPE, "{path}");
        }
    }
    assert_eq!(s.default.recorded().len(), before, "the main upstream never got the route's token");

    // RFC 8707: a code issued for no resource is not redeemed for a route's.
    let client_id = register_public_client(&s.proxy).await;
    let mut browser = Browser::new();
    let params = authorize(&s.proxy, &mut browser, &client_id).await;
    let resp = redeem_with(&s.proxy, &client_id, &params["code"], &[("resource", &graph_resource)]).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "invalid_target");
}

#[tokio::test]
async fn signing_in_for_tickets_works_and_a_default_token_stays_on_the_default_upstream() {
    let s = start().await;
    let token = sign_in_for(&s.proxy, &s.proxy.url("/tickets")).await;
    assert_eq!(get(&s.proxy, "/tickets/42", &token).await.status(), 200);
    assert_eq!(scope_seen_by(&s.azure, &s.tickets), format!("{TICKETS_SCOPE} offline_access"));
    assert_eq!(get(&s.proxy, "/graph/v1.0/me", &token).await.status(), 401);

    // A token without `resource` (or for `[upstream]`'s) keeps today's behaviour and is refused on every route.
    let (_, doc) = login(&s.proxy).await;
    let plain = doc["access_token"].as_str().unwrap();
    assert_eq!(get(&s.proxy, "/mcp", plain).await.status(), 200);
    assert!(s.default.last().header("authorization").is_some());
    assert_eq!(get(&s.proxy, "/graph/v1.0/me", plain).await.status(), 401);
    assert_eq!(get(&s.proxy, "/tickets/1", plain).await.status(), 401);
    assert!(s.graph.recorded().is_empty());
}

#[tokio::test]
async fn each_route_has_its_own_metadata_and_challenge() {
    let s = start().await;
    for prefix in ["/graph", "/tickets"] {
        let doc = get_json(&s.proxy.url(&format!("/.well-known/oauth-protected-resource{prefix}"))).await;
        assert_eq!(doc["resource"], s.proxy.url(prefix));
        assert_eq!(doc["authorization_servers"][0], s.proxy.base_url());
        let resp = http().get(s.proxy.url(&format!("{prefix}/x"))).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let expected =
            format!("resource_metadata=\"{}\"", s.proxy.url(&format!("/.well-known/oauth-protected-resource{prefix}")));
        assert!(challenge(&resp).contains(&expected), "{prefix}: {}", challenge(&resp));
    }
    let doc = get_json(&s.proxy.url("/.well-known/oauth-protected-resource/mcp")).await;
    assert_eq!(doc["resource"], s.proxy.url("/mcp"), "[upstream]'s document is unchanged");
    let resp = http().get(s.proxy.url("/.well-known/oauth-protected-resource/other")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // A resource the proxy does not serve is refused at /authorize (RFC 8707 invalid_target).
    let client_id = register_public_client(&s.proxy).await;
    let url = authorize_url(&s.proxy, &client_id, &format!("&resource={}", urlencode(&s.proxy.url("/graphx"))));
    let resp = http().get(url).send().await.unwrap();
    let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(location.contains("error=invalid_target"), "{} {location}", resp.status());
}

#[test]
fn route_prefixes_are_validated_with_the_key_named() {
    let base = format!("{}\n", dcr_proxy::config::DEFAULT_CONFIG);
    let route = |prefix: &str| {
        format!("[[routes]]\npath_prefix = \"{prefix}\"\nurl = \"http://127.0.0.1:9001\"\nscopes = [\"a\"]\n")
    };
    let error = |routes: String| {
        dcr_proxy::config::Config::from_toml(&format!("{base}{routes}"), |_| None).err().map(|e| e.to_string())
    };
    assert_eq!(error(route("/graph") + &route("/tickets")), None);
    for (routes, key) in [
        (route("/graph") + &route("/graph/beta"), "routes[1].path_prefix"),
        (route("/graph/beta") + &route("/graph"), "routes[1].path_prefix"),
        (route("/token"), "routes[0].path_prefix"),
        (route("/.well-known/x"), "routes[0].path_prefix"),
        (route("/mcp"), "routes[0].path_prefix"),
        (route("/"), "routes[0].path_prefix"),
        (route("/graph/"), "routes[0].path_prefix"),
        (route("/gr%61ph"), "routes[0].path_prefix"),
        (route("/a/../b"), "routes[0].path_prefix"),
        (route("graph"), "routes[0].path_prefix"),
        ("[[routes]]\npath_prefix = \"/g\"\nurl = \"ftp://x\"\nscopes = [\"a\"]\n".to_owned(), "routes[0].url"),
        ("[[routes]]\npath_prefix = \"/g\"\nurl = \"http://x\"\nscopes = []\n".to_owned(), "routes[0].scopes"),
    ] {
        let message = error(routes.clone()).unwrap_or_else(|| panic!("accepted: {routes}"));
        assert!(message.contains(key), "{routes}: {message}");
    }
}
