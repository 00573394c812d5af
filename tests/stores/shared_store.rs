//! Issue 12: N replicas sharing one Redis behave as one proxy. Every test starts its own `redis-server` on an
//! ephemeral loopback port and several real servers on 127.0.0.1:0 sharing it, and drives them over HTTP.
//!
//! On a build without the Redis backend each of these fails at the first step: `[store] backend = "redis"` is an
//! unknown key there, so no replica starts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::common;

use std::time::Duration;

use crate::common::fake_azure::FakeAzure;
use crate::common::upstream::Upstream;
use crate::common::*;
use serde_json::Value;

async fn replicas(n: usize, redis: &TestRedis, upstream: &Upstream, azure: Option<&FakeAzure>) -> Vec<TestProxy> {
    let mut all = Vec::new();
    for _ in 0..n {
        let builder = TestProxy::builder().upstream(upstream.url()).redis(redis);
        let builder = match azure {
            Some(azure) => builder.azure(azure),
            None => builder.local(),
        };
        all.push(builder.start().await);
    }
    all
}

#[tokio::test]
async fn a_sign_in_whose_every_request_lands_on_another_replica_works() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start().await;
    let r = replicas(3, &redis, &upstream, None).await;

    let client_id = register_public_client(&r[0]).await;
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&r[1], &client_id, "")).await else {
        panic!("the consent page, from the second replica, for a client registered on the first");
    };
    let (request, csrf) = (hidden_field(&consent, "request"), hidden_field(&consent, "csrf"));
    let Landing::Page(200, login) = browser
        .post_form(&r[2].url("/consent"), &[("request", &request), ("csrf", &csrf), ("action", "approve")])
        .await
    else {
        panic!("the third replica accepts the consent form the second one sealed");
    };
    let state = hidden_field(&login, "state");
    let Landing::Client(params) = browser
        .post_form(&r[0].url("/login"), &[("state", &state), ("username", "alice"), ("password", ALICE_PASSWORD)])
        .await
    else {
        panic!("the first replica accepts the login state the third one sealed");
    };
    // The consent form was spent on the third replica: the second one refuses it too.
    let replay = browser
        .post_form(&r[1].url("/consent"), &[("request", &request), ("csrf", &csrf), ("action", "approve")])
        .await;
    assert!(matches!(replay, Landing::Page(403, _)), "a consent form is used once across replicas");

    let resp = redeem(&r[1], &client_id, &params["code"]).await;
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.expect("json");
    let access = tokens["access_token"].as_str().expect("access").to_owned();
    for proxy in &r {
        assert_eq!(get_mcp(proxy, &access).await, 200, "every replica knows the access token");
    }
    let resp = refresh(&r[2], &client_id, tokens["refresh_token"].as_str().expect("refresh")).await;
    assert_eq!(resp.status(), 200, "the refresh token works on another replica");
    let rotated: Value = resp.json().await.expect("json");
    assert_eq!(get_mcp(&r[0], rotated["access_token"].as_str().expect("access")).await, 200);
}

#[tokio::test]
async fn a_code_redeemed_on_two_replicas_at_once_is_issued_once_and_its_replay_revokes() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start().await;
    let r = replicas(3, &redis, &upstream, None).await;
    for round in 0..5 {
        let client_id = register_public_client(&r[0]).await;
        let mut browser = Browser::new();
        let params = authorize(&r[round % 3], &mut browser, &client_id).await;
        let code = &params["code"];
        let (a, b) = tokio::join!(redeem(&r[0], &client_id, code), redeem(&r[1], &client_id, code));
        let (a, b) = (a.status().as_u16(), b.status().as_u16());
        assert!(matches!((a, b), (200, 400) | (400, 200)), "round {round}: one wins, got {a} and {b}");
    }
    // A replay after the redemption, on a third replica, revokes what the code issued.
    let client_id = register_public_client(&r[0]).await;
    let mut browser = Browser::new();
    let params = authorize(&r[0], &mut browser, &client_id).await;
    let resp = redeem(&r[0], &client_id, &params["code"]).await;
    let tokens: Value = resp.json().await.expect("json");
    let access = tokens["access_token"].as_str().expect("access").to_owned();
    assert_eq!(get_mcp(&r[1], &access).await, 200);
    assert_eq!(error_of(redeem(&r[2], &client_id, &params["code"]).await).await, (400, "invalid_grant".to_owned()));
    let gone = within(Duration::from_secs(1), || async { get_mcp(&r[1], &access).await == 401 }).await;
    assert!(gone.is_some(), "the replay on one replica revoked the grant on the others");
}

#[tokio::test]
async fn one_refresh_token_used_on_three_replicas_at_once_rotates_once() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start().await;
    let r = replicas(3, &redis, &upstream, None).await;
    let (client_id, tokens) = login(&r[0]).await;
    let presented = tokens["refresh_token"].as_str().expect("refresh").to_owned();
    let (a, b, c) = tokio::join!(
        refresh(&r[0], &client_id, &presented),
        refresh(&r[1], &client_id, &presented),
        refresh(&r[2], &client_id, &presented)
    );
    let mut pairs = Vec::new();
    for resp in [a, b, c] {
        assert_eq!(resp.status(), 200, "within the grace window every use is answered");
        let pair: Value = resp.json().await.expect("json");
        pairs.push((pair["access_token"].clone(), pair["refresh_token"].clone()));
    }
    assert!(pairs.iter().all(|p| *p == pairs[0]), "one rotation: the same pair for all three: {pairs:?}");
    let next = pairs[0].1.as_str().expect("refresh").to_owned();
    assert_eq!(get_mcp(&r[2], pairs[0].0.as_str().expect("access")).await, 200);
    // The rotated family goes on; past the grace window, the first token is a reuse and revokes the grant.
    let resp = refresh(&r[1], &client_id, &next).await;
    assert_eq!(resp.status(), 200);
    let newest: Value = resp.json().await.expect("json");
    for proxy in &r {
        proxy.clock.advance(60);
    }
    assert_eq!(error_of(refresh(&r[2], &client_id, &presented).await).await, (400, "invalid_grant".to_owned()));
    let newest_access = newest["access_token"].as_str().expect("access").to_owned();
    let revoked = within(Duration::from_secs(1), || async { get_mcp(&r[0], &newest_access).await == 401 }).await;
    assert!(revoked.is_some(), "reuse detection holds across replicas");
}

#[tokio::test]
async fn a_revocation_on_one_replica_reaches_the_others_within_a_second() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start().await;
    let r = replicas(3, &redis, &upstream, None).await;
    let (client_id, tokens) = login(&r[0]).await;
    let access = tokens["access_token"].as_str().expect("access").to_owned();
    // The other replicas have the bearer in their caches.
    assert_eq!(get_mcp(&r[1], &access).await, 200);
    assert_eq!(get_mcp(&r[2], &access).await, 200);
    let resp = http()
        .post(r[0].url("/revoke"))
        .form(&[("token", tokens["refresh_token"].as_str().expect("refresh")), ("client_id", &client_id)])
        .send()
        .await
        .expect("revoke");
    assert_eq!(resp.status(), 200);
    for proxy in &r[1..] {
        let took = within(Duration::from_secs(1), || async { get_mcp(proxy, &access).await == 401 }).await;
        let took = took.unwrap_or_else(|| panic!("{} still accepts the revoked bearer after 1 s", proxy.base));
        eprintln!("revocation reached {} in {took:?}", proxy.base);
    }
}

#[tokio::test]
async fn with_redis_down_token_and_readyz_answer_503_cached_bearers_work_and_redis_back_works() {
    let mut redis = TestRedis::start_persistent().await;
    let upstream = Upstream::start().await;
    let r = replicas(2, &redis, &upstream, None).await;
    let (client_id, tokens) = login(&r[0]).await;
    let access = tokens["access_token"].as_str().expect("access").to_owned();
    let refresh_token = tokens["refresh_token"].as_str().expect("refresh").to_owned();
    assert_eq!(get_mcp(&r[1], &access).await, 200);
    assert_eq!(http().get(r[1].url("/readyz")).send().await.expect("readyz").status(), 200);

    redis.stop();
    let resp = refresh(&r[1], &client_id, &refresh_token).await;
    assert_eq!(resp.status(), 503, "never a 500");
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(error_of(resp).await.1, "temporarily_unavailable");
    assert_eq!(http().get(r[1].url("/readyz")).send().await.expect("readyz").status(), 503);
    let mut browser = Browser::new();
    assert!(matches!(browser.get(&authorize_url(&r[0], &client_id, "")).await, Landing::Page(503, _)));
    assert_eq!(get_mcp(&r[1], &access).await, 200, "a cached bearer keeps working while Redis is down");
    // Issue 23 item 7: not for longer than the stale-if-error bound (a revocation during the cut is not seen).
    r[1].clock.advance(dcr_proxy::store::redis::STALE_IF_ERROR_SECS + 1);
    assert_eq!(get_mcp(&r[1], &access).await, 503, "a cut replica stops serving a bearer it cannot check");
    assert_eq!(get_mcp(&r[0], "never-issued").await, 503, "an unknown bearer cannot be checked: 503, not 401");

    assert!(redis.run().await, "redis-server restarts on its port with its append-only file");
    let back = within(Duration::from_secs(10), || async {
        http().get(r[1].url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(back.is_some(), "the replica reconnects");
    let resp = refresh(&r[1], &client_id, &refresh_token).await;
    assert_eq!(resp.status(), 200, "nothing acknowledged was lost");
}

#[tokio::test]
async fn one_idp_refresh_for_a_grant_used_on_three_replicas_at_once() {
    let redis = TestRedis::start().await;
    let azure = FakeAzure::start().await;
    {
        let mut st = azure.state();
        st.expires_in = 300;
        st.strict_rotation = true;
    }
    let upstream = Upstream::start().await;
    let r = replicas(3, &redis, &upstream, Some(&azure)).await;
    let (_, tokens) = login(&r[0]).await;
    let access = tokens["access_token"].as_str().expect("access").to_owned();
    for proxy in &r {
        assert_eq!(get_mcp(proxy, &access).await, 200);
        proxy.clock.advance(301);
    }
    let access = access.as_str();
    let calls = r.iter().flat_map(|p| (0..3).map(move |_| get_mcp(p, access)));
    let statuses = futures_util::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(azure.state().refresh_calls, 1, "one IdP refresh for nine requests on three replicas");
    let newest = azure.state().last_access_token.clone().expect("refreshed");
    let recorded = upstream.recorded();
    assert!(recorded[recorded.len() - 9..]
        .iter()
        .all(|req| req.header("authorization") == Some(format!("Bearer {newest}").as_str())));
}

#[tokio::test]
async fn nothing_in_redis_reads_as_a_token_or_secret_of_a_full_flow() {
    let redis = TestRedis::start().await;
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let r = replicas(2, &redis, &upstream, Some(&azure)).await;
    let registered = register_json(
        &r[0],
        serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "client_secret_post"}),
    )
    .await;
    let client_id = registered["client_id"].as_str().expect("id").to_owned();
    let secret = registered["client_secret"].as_str().expect("secret").to_owned();
    let registration_token = registered["registration_access_token"].as_str().expect("rat").to_owned();
    let mut browser = Browser::new();
    let params = authorize(&r[0], &mut browser, &client_id).await;
    let code = params["code"].clone();
    let resp = redeem_with(&r[1], &client_id, &code, &[("client_secret", &secret)]).await;
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.expect("json");
    let access = tokens["access_token"].as_str().expect("access").to_owned();
    let refresh_token = tokens["refresh_token"].as_str().expect("refresh").to_owned();
    let resp = http()
        .post(r[0].url("/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
            ("client_id", &client_id),
            ("client_secret", &secret),
        ])
        .send()
        .await
        .expect("refresh");
    assert_eq!(resp.status(), 200);
    let rotated: Value = resp.json().await.expect("json");
    assert_eq!(get_mcp(&r[1], rotated["access_token"].as_str().expect("access")).await, 200);

    let mut secrets = vec![secret, registration_token, code, access, refresh_token];
    secrets.push(rotated["access_token"].as_str().expect("access").to_owned());
    secrets.push(rotated["refresh_token"].as_str().expect("refresh").to_owned());
    // The binding cookie's random part and the person cookie's tag (`value.tag`, `p.tag`): the longest piece.
    secrets.extend(browser.cookies.values().map(|v| v.split('.').max_by_key(|p| p.len()).unwrap_or(v).to_owned()));
    let idp = azure.issued_secrets();
    assert!(idp.len() >= 2, "the IdP issued tokens");
    secrets.extend(idp);
    let dump = redis.dump_all().await;
    assert!(dump.len() >= 5, "the flow is in Redis: {} keys", dump.len());
    for secret in &secrets {
        assert!(secret.len() >= 16);
        for (key, value) in &dump {
            let text = String::from_utf8_lossy(key);
            let found = |hay: &[u8]| hay.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found(key) && !found(value), "a secret is readable at rest under {text}");
        }
    }
}

#[tokio::test]
async fn a_memory_snapshot_imported_into_redis_keeps_every_user_signed_in() {
    let upstream = Upstream::start().await;
    let single = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let (client_id, tokens) = login(&single).await;
    let dir = std::env::temp_dir().join(format!("dcrp-import-{}", dcr_proxy::crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let (snapshot, config) = (dir.join("state.snapshot"), dir.join("proxy.toml"));
    let key = dcr_proxy::config::parse_snapshot_key(TEST_STORE_KEY).unwrap();
    let memory = single.app.store.memory().expect("the single replica is in memory");
    dcr_proxy::store::snapshot::write(memory, single.clock.now(), &snapshot, &key).unwrap();
    single.stop().await;

    let redis = TestRedis::start().await;
    let text = dcr_proxy::config::DEFAULT_CONFIG.replace("[store]", "[store]\nbackend = \"redis\"");
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
        .args(["--config", config.to_str().unwrap(), "store", "import", "--snapshot", snapshot.to_str().unwrap()])
        .env("DCR_PROXY_SNAPSHOT_KEY", TEST_STORE_KEY)
        .env("DCR_PROXY_REDIS_URL", redis.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "store import: {}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);

    let r = replicas(2, &redis, &upstream, None).await;
    assert_eq!(get_mcp(&r[0], tokens["access_token"].as_str().unwrap()).await, 200, "the access token moved");
    let resp = refresh(&r[1], &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 200, "the refresh token moved, with its client");
}

#[tokio::test]
async fn the_client_cap_counts_registrations_on_every_replica_and_unused_clients_expire() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start().await;
    let mut r = Vec::new();
    for _ in 0..2 {
        let builder = TestProxy::builder().upstream(upstream.url()).local().redis(&redis);
        r.push(builder.extra("[registration]\nmax_clients = 3\n").start().await);
    }
    let first = register_public_client(&r[0]).await;
    let second = register_public_client(&r[1]).await;
    let third = register_public_client(&r[0]).await;
    // Each one's sign-in started (on the other replica): none may be evicted to make room.
    for (proxy, id) in [(&r[1], &first), (&r[0], &second), (&r[1], &third)] {
        assert!(matches!(Browser::new().get(&authorize_url(proxy, id, "")).await, Landing::Page(200, _)));
    }
    let metadata = serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"});
    for proxy in &r {
        let resp = http().post(proxy.url("/register")).json(&metadata).send().await.unwrap();
        assert_eq!(resp.status(), 503, "three registrations across two replicas fill a cap of three");
    }
    let ttl = |id: String| {
        let url = redis.url();
        async move {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("TTL").arg(format!("dcrp:client:{{c:{id}}}")).query_async::<i64>(&mut conn).await.unwrap()
        }
    };
    assert!(ttl(first.clone()).await > 0, "a client that never signed in expires");
    let mut browser = Browser::new();
    let params = authorize(&r[1], &mut browser, &first).await;
    assert_eq!(redeem(&r[0], &first, &params["code"]).await.status(), 200);
    assert_eq!(ttl(first).await, -1, "a client that completed an authorization stays");
    let resp = http().post(r[1].url("/register")).json(&metadata).send().await.unwrap();
    assert_eq!(resp.status(), 201, "a used client no longer counts against the cap of unused ones");
}

#[tokio::test]
async fn a_rate_limit_counts_the_requests_of_a_source_on_every_replica() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start().await;
    let mut r = Vec::new();
    for _ in 0..2 {
        let builder = TestProxy::builder().upstream(upstream.url()).local().redis(&redis);
        r.push(builder.extra("[limits]\nregister_per_minute = 3\n").start().await);
    }
    // Both replicas in the same minute (their clocks are set at start).
    r[0].clock.advance(r[1].clock.now() - r[0].clock.now());
    let metadata = serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"});
    let mut statuses = Vec::new();
    let mut last = None;
    for proxy in [&r[0], &r[1], &r[0], &r[1]] {
        let resp = http().post(proxy.url("/register")).json(&metadata).send().await.unwrap();
        statuses.push(resp.status().as_u16());
        last = Some(resp);
    }
    // Each replica alone saw two requests, under its own limit of three; together they saw four.
    assert_eq!(statuses[..3], [201, 201, 201]);
    assert_eq!(statuses[3], 429, "{statuses:?}");
    // The refusal across replicas says so in its RateLimit fields, with the wait of its Retry-After.
    let refused = last.unwrap();
    let retry_after = refused.headers()["retry-after"].to_str().unwrap().to_owned();
    assert_eq!(refused.headers()["ratelimit-policy"], "\"register\";q=3;w=60");
    assert_eq!(refused.headers()["ratelimit"].to_str().unwrap(), format!("\"register\";r=0;t={retry_after}"));
}

/// Issue 23 item 11 on Redis: what Entra requires of one person (MFA at refresh, refused on one replica) is kept
/// for that person across replicas — Bob's sign-in through the same client on another replica does not spend it,
/// Alice's next sign-in there carries it — and Redis holds no person cookie.
#[tokio::test]
async fn an_interaction_requirement_waits_for_its_person_on_every_replica() {
    let redis = TestRedis::start().await;
    let azure = FakeAzure::start().await;
    azure.state().expires_in = 300;
    let upstream = Upstream::start().await;
    let r = replicas(2, &redis, &upstream, Some(&azure)).await;
    let client_id = register_public_client(&r[0]).await;
    let (mut alice, mut bob) = (Browser::new(), Browser::new());
    let code = authorize(&r[0], &mut alice, &client_id).await["code"].clone();
    let alice_tokens: Value = redeem(&r[0], &client_id, &code).await.json().await.expect("json");
    azure.state().id_token_claims.insert("sub".into(), serde_json::json!("bob-subject"));
    let code = authorize(&r[1], &mut bob, &client_id).await["code"].clone();
    assert_eq!(redeem(&r[1], &client_id, &code).await.status(), 200);
    azure.state().id_token_claims.clear();

    let claims = r#"{"access_token":{"capolids":{"essential":true,"values":["c1"]}}}"#;
    azure.state().refresh_error = Some(common::fake_azure::ScriptedRefusal {
        claims: Some(claims.into()),
        ..common::fake_azure::ScriptedRefusal::new("invalid_grant", 50076)
    });
    r[0].clock.advance(400);
    assert_eq!(get_mcp(&r[0], alice_tokens["access_token"].as_str().expect("access")).await, 401);
    azure.state().refresh_error = None;

    let _ = authorize(&r[1], &mut bob, &client_id).await;
    let asked = azure.state().authorize_queries.last().cloned().expect("asked");
    assert!(!asked.contains_key("prompt") && !asked.contains_key("claims"), "Bob was asked Alice's: {asked:?}");
    let _ = authorize(&r[1], &mut alice, &client_id).await;
    let asked = azure.state().authorize_queries.last().cloned().expect("asked");
    assert_eq!(asked.get("prompt").map(String::as_str), Some("login"), "{asked:?}");
    assert_eq!(asked.get("claims").map(String::as_str), Some(claims));

    let tag = alice.cookies["dcrp-who"].trim_start_matches("p.").to_owned();
    for (key, value) in redis.dump_all().await {
        let found = |hay: &[u8]| hay.windows(tag.len()).any(|w| w == tag.as_bytes());
        assert!(!found(&key) && !found(&value), "the person cookie is readable in Redis");
    }
}
