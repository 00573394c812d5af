//! `/readyz` names what it waits for: each check with its state, 503 naming the failing one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::upstream::Upstream;
use crate::common::*;
use serde_json::Value;

async fn readyz(proxy: &TestProxy) -> (u16, Value) {
    let resp = http().get(proxy.url("/readyz")).send().await.unwrap();
    // Every 503 says when to ask again (issue 26 item 4); a 200 does not.
    assert_eq!(resp.status() == 503, resp.headers().contains_key("retry-after"), "{:?}", resp.headers());
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn check<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name}: {body}"))
}

#[tokio::test]
async fn readyz_is_503_naming_the_upstream_when_it_refuses_connections_and_200_with_every_check_when_it_accepts() {
    let port = unused_port();
    let down = TestProxy::builder().upstream(format!("http://127.0.0.1:{port}")).local().start().await;
    let (status, body) = readyz(&down).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not ready");
    assert_eq!(body["failing"], serde_json::json!(["upstream"]));
    assert_eq!(check(&body, "upstream")["ok"], false);
    assert!(check(&body, "upstream")["detail"].as_str().unwrap().contains(&format!("127.0.0.1:{port}")), "{body}");
    assert_eq!(check(&body, "store")["ok"], true);
    assert_eq!(check(&body, "store")["detail"], "empty: no snapshot configured");
    assert_eq!(check(&body, "idp")["detail"], "local login");

    let upstream = Upstream::start().await;
    let up = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let (status, body) = readyz(&up).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["failing"], serde_json::json!([]));
    for name in ["store", "idp", "upstream"] {
        assert_eq!(check(&body, name)["ok"], true, "{name}: {body}");
    }
    assert_eq!(body["idp"], "local");
}
