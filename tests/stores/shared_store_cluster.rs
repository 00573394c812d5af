//! Issue 12 on a Redis Cluster (`store.redis_cluster = true`, `store.redis_url` listing the seed nodes): three
//! masters of `redis-server` on loopback ports, made a cluster with `redis-cli --cluster create`, and three real
//! replicas on 127.0.0.1:0. Every multi-key script names keys of one hash slot, listings visit every master, and
//! revocations published on one node reach subscribers on the others.
//!
//! On a build without cluster support each of these fails at the first step: `store.redis_cluster` is an unknown
//! key there, and a plain connection to one node answers `MOVED` for most keys.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::Duration;

use crate::common::fake_azure::FakeAzure;
use crate::common::upstream::Upstream;
use crate::common::*;
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-token-for-the-cluster-tests-0123456789";

/// `n` replicas on the cluster; with the fake Azure AD as IdP, or the local login (whose password hashing is slow
/// in a debug build: used only where a test posts each step of the sign-in to another replica).
async fn replicas(
    n: usize,
    cluster: &TestRedisCluster,
    upstream: &Upstream,
    azure: Option<&FakeAzure>,
    extra: &str,
) -> Vec<TestProxy> {
    let mut all = Vec::new();
    for _ in 0..n {
        let builder = TestProxy::builder().upstream(upstream.url()).extra(extra);
        let builder = match azure {
            Some(azure) => builder.azure(azure),
            None => builder.local(),
        };
        let builder = builder.env("DCR_PROXY_ADMIN_TOKEN", ADMIN_TOKEN);
        let store = "redis_cluster = true\nredis_stats_interval = \"1s\"";
        all.push(builder.redis_at(&cluster.url(), store).start().await);
    }
    all
}

#[tokio::test]
async fn on_a_cluster_a_sign_in_spread_over_three_replicas_works_revocation_reaches_all_and_admin_lists_grants() {
    let cluster = TestRedisCluster::start().await;
    let upstream = Upstream::start().await;
    let r = replicas(3, &cluster, &upstream, None, "[admin]\nlisten = \"127.0.0.1:9\"\n").await;

    // Every request of the sign-in on another replica.
    let client_id = register_public_client(&r[0]).await;
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&r[1], &client_id, "")).await else {
        panic!("the consent page, from the second replica, for a client registered on the first");
    };
    let (request, csrf) = (hidden_field(&consent, "request"), hidden_field(&consent, "csrf"));
    let Landing::Page(200, login_page) = browser
        .post_form(&r[2].url("/consent"), &[("request", &request), ("csrf", &csrf), ("action", "approve")])
        .await
    else {
        panic!("the third replica accepts the consent form");
    };
    let state = hidden_field(&login_page, "state");
    let Landing::Client(params) = browser
        .post_form(&r[0].url("/login"), &[("state", &state), ("username", "alice"), ("password", ALICE_PASSWORD)])
        .await
    else {
        panic!("the first replica accepts the login state");
    };
    let resp = redeem(&r[1], &client_id, &params["code"]).await;
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.unwrap();
    let resp = refresh(&r[2], &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 200, "the refresh token works on another replica");
    let tokens: Value = resp.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    for proxy in &r {
        assert_eq!(get_mcp(proxy, &access).await, 200, "every replica knows the access token");
    }
    let ready = http().get(r[0].url("/readyz")).send().await.unwrap().status();
    assert_eq!(ready, 200, "PING answered by every master");
    // One more sign-in; the records of both spread over the masters.
    let others = [login(&r[1]).await];
    let spread = cluster.keys_per_node().await;
    assert!(spread.iter().filter(|n| **n > 0).count() >= 2, "the keys are spread over the masters: {spread:?}");

    // Admin: the grant listing visits every master.
    let admin = serve_admin(&r[2]).await;
    let grants: Value = http()
        .get(format!("{admin}/admin/grants"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = grants["grants"].as_array().expect("grants");
    assert_eq!(rows.len(), 2, "every grant, from whichever master holds it: {grants}");

    // Revocation on one replica reaches the others (they have the bearer cached).
    let resp = http()
        .post(r[0].url("/revoke"))
        .form(&[("token", tokens["refresh_token"].as_str().unwrap()), ("client_id", &client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for proxy in &r[1..] {
        let took = within(Duration::from_secs(1), || async { get_mcp(proxy, &access).await == 401 }).await;
        let took = took.unwrap_or_else(|| panic!("{} still accepts the revoked bearer after 1 s", proxy.base));
        eprintln!("revocation reached {} in {took:?}", proxy.base);
    }
    let (_, other) = &others[0];
    assert_eq!(get_mcp(&r[1], other["access_token"].as_str().unwrap()).await, 200, "only that grant was revoked");

    // The metrics count the keys of every master: two clients, one live grant.
    let metrics = serve_metrics(&r[0]).await;
    let counted = within(Duration::from_secs(5), || async {
        let text = http().get(&metrics).send().await.unwrap().text().await.unwrap();
        metric(&text, "dcr_proxy_clients") == Some(2.0) && metric(&text, "dcr_proxy_grants") == Some(1.0)
    })
    .await;
    assert!(counted.is_some(), "dcr_proxy_clients and dcr_proxy_grants count the whole cluster");
}

#[tokio::test]
async fn on_a_cluster_a_full_client_table_evicts_the_oldest_unused_client_but_not_one_signing_in() {
    let cluster = TestRedisCluster::start().await;
    let upstream = Upstream::start().await;
    let azure = FakeAzure::start().await;
    let r = replicas(2, &cluster, &upstream, Some(&azure), "[registration]\nmax_clients = 3\n").await;
    // One registration a second (the age order is by the proxy's clock, in seconds).
    let tick = || r.iter().for_each(|p| p.clock.advance(1));
    let signing = register_public_client(&r[0]).await;
    tick();
    let oldest_unused = register_public_client(&r[1]).await;
    tick();
    let newest = register_public_client(&r[0]).await;
    tick();
    let mut browser = Browser::new();
    assert!(matches!(browser.get(&authorize_url(&r[1], &signing, "")).await, Landing::Page(200, _)));

    let metadata = serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"});
    let resp = http().post(r[1].url("/register")).json(&metadata).send().await.unwrap();
    assert_eq!(resp.status(), 201, "a full table makes room, counting the registrations of both replicas");
    let page = |id: String| {
        let proxy = &r[0];
        async move {
            match Browser::new().get(&authorize_url(proxy, &id, "")).await {
                Landing::Page(status, _) => status,
                Landing::Client(_) => 302,
            }
        }
    };
    assert_eq!(page(oldest_unused).await, 400, "the oldest unused client was evicted");
    assert_eq!(page(signing.clone()).await, 200, "the older client whose sign-in started stays");
    assert_eq!(page(newest).await, 200);
    // The sign-in in progress finishes.
    let params = authorize(&r[0], &mut browser, &signing).await;
    assert_eq!(redeem(&r[1], &signing, &params["code"]).await.status(), 200);
}

#[tokio::test]
async fn on_a_cluster_a_code_redeemed_on_two_replicas_at_once_is_issued_once_and_one_refresh_token_rotates_once() {
    let cluster = TestRedisCluster::start().await;
    let upstream = Upstream::start().await;
    let azure = FakeAzure::start().await;
    let r = replicas(3, &cluster, &upstream, Some(&azure), "").await;
    for round in 0..4 {
        let client_id = register_public_client(&r[round % 3]).await;
        let mut browser = Browser::new();
        let params = authorize(&r[(round + 1) % 3], &mut browser, &client_id).await;
        let code = &params["code"];
        let (a, b) = tokio::join!(redeem(&r[0], &client_id, code), redeem(&r[1], &client_id, code));
        let (a, b) = (a.status().as_u16(), b.status().as_u16());
        assert!(matches!((a, b), (200, 400) | (400, 200)), "round {round}: one wins, got {a} and {b}");
    }

    let (client_id, tokens) = login(&r[0]).await;
    let presented = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (a, b, c) = tokio::join!(
        refresh(&r[0], &client_id, &presented),
        refresh(&r[1], &client_id, &presented),
        refresh(&r[2], &client_id, &presented)
    );
    let mut pairs = Vec::new();
    for resp in [a, b, c] {
        assert_eq!(resp.status(), 200, "within the grace window every use is answered");
        let pair: Value = resp.json().await.unwrap();
        pairs.push((pair["access_token"].clone(), pair["refresh_token"].clone()));
    }
    assert!(pairs.iter().all(|p| *p == pairs[0]), "one rotation: the same pair for all three: {pairs:?}");
    let newest = pairs[0].0.as_str().unwrap().to_owned();
    assert_eq!(get_mcp(&r[2], &newest).await, 200);
    // Past the grace window, the first token is a reuse and revokes the grant on every replica.
    for proxy in &r {
        proxy.clock.advance(60);
    }
    assert_eq!(error_of(refresh(&r[1], &client_id, &presented).await).await, (400, "invalid_grant".to_owned()));
    let revoked = within(Duration::from_secs(1), || async { get_mcp(&r[0], &newest).await == 401 }).await;
    assert!(revoked.is_some(), "reuse detection holds across replicas on a cluster");
}
