//! Issue 12 §5, "go further than any peer": with `store.backend = "redis"` each grant's IdP tokens (its own and
//! its `[[routes]]` tokens) are sealed with a per-grant data key that only a live proxy token of the grant unwraps
//! (`store::wrap`). An attacker with every key and value of Redis *and* the configured key gets no IdP token; a
//! replica that is handed a live proxy token does. Real `redis-server`, real replicas on 127.0.0.1:0, the fake
//! Entra ID.
//!
//! On a build before the data keys, the dump opened with the configured key holds the IdP tokens, and a route's
//! token obtained on one replica is obtained again on the next: these tests fail there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::common::fake_azure::FakeAzure;
use crate::common::upstream::Upstream;
use crate::common::*;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use dcr_proxy::crypto::{self, Sealer};
use serde_json::Value;

const GRAPH_SCOPE: &str = "https://graph.microsoft.com/Mail.Read";

struct Setup {
    redis: TestRedis,
    azure: FakeAzure,
    default: Upstream,
    graph: Upstream,
    a: TestProxy,
    b: TestProxy,
}

/// Two replicas (one configuration, one `public_url`) on one Redis, the fake Entra ID with 300 s tokens, the
/// default upstream and a `/graph` route.
async fn start() -> Setup {
    let redis = TestRedis::start().await;
    let azure = FakeAzure::start().await;
    azure.state().expires_in = 300;
    let (default, graph) = (Upstream::start().await, Upstream::start().await);
    let routes =
        format!("[[routes]]\npath_prefix = \"/graph\"\nurl = \"{}\"\nscopes = [\"{GRAPH_SCOPE}\"]\n", graph.url());
    let a = TestProxy::builder().upstream(default.url()).azure(&azure).extra(routes).redis(&redis).start().await;
    let b = a.replica().await;
    Setup { redis, azure, default, graph, a, b }
}

async fn get(proxy: &TestProxy, path: &str, token: &str) -> u16 {
    http().get(proxy.url(path)).bearer_auth(token).send().await.expect("proxied request").status().as_u16()
}

fn bearer_seen(upstream: &Upstream) -> String {
    upstream.last().header("authorization").expect("authorization").trim_start_matches("Bearer ").to_owned()
}

fn str_of<'a>(doc: &'a Value, name: &str) -> &'a str {
    doc[name].as_str().unwrap_or_else(|| panic!("no {name} in {doc}"))
}

/// Signs in (confidential client, `client_secret_post`) on `on`, redeems on `redeem_on`, for `resource` if any.
async fn sign_in(
    on: &TestProxy,
    redeem_on: &TestProxy,
    client_id: &str,
    secret: &str,
    resource: Option<&str>,
) -> (String, Value) {
    let mut browser = Browser::new();
    let extra = resource.map(|r| format!("&resource={}", urlencode(r))).unwrap_or_default();
    let params = authorize_with(on, &mut browser, client_id, &extra).await;
    let code = params.get("code").unwrap_or_else(|| panic!("no code in {params:?}")).clone();
    let mut form = vec![("client_secret", secret)];
    if let Some(r) = resource {
        form.push(("resource", r));
    }
    let resp = redeem_with(redeem_on, client_id, &code, &form).await;
    assert_eq!(resp.status(), 200);
    (code, resp.json().await.expect("token json"))
}

async fn refresh_with_secret(proxy: &TestProxy, client_id: &str, secret: &str, token: &str) -> reqwest::Response {
    http()
        .post(proxy.url("/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", client_id),
            ("client_secret", secret),
        ])
        .send()
        .await
        .expect("refresh")
}

/// Every key of Redis and every value under it (SCAN, then by TYPE: GET, HGETALL fields and values, SMEMBERS,
/// ZRANGE members, LRANGE items), each value on its own.
async fn dump(redis: &TestRedis) -> Vec<(String, Vec<Vec<u8>>)> {
    let client = redis::Client::open(redis.url()).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    for _ in 0..10_000 {
        let (next, batch): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(100).query_async(&mut conn).await.expect("SCAN");
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await.expect("TYPE");
        let (cmd, args): (&str, &[&str]) = match kind.as_str() {
            "string" => ("GET", &[]),
            "hash" => ("HGETALL", &[]),
            "set" => ("SMEMBERS", &[]),
            "zset" => ("ZRANGE", &["0", "-1", "WITHSCORES"]),
            "list" => ("LRANGE", &["0", "-1"]),
            "none" => continue, // expired between SCAN and TYPE
            other => panic!("unexpected type {other} under {key}"),
        };
        let values: Vec<Vec<u8>> = if cmd == "GET" {
            vec![redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("GET")]
        } else {
            redis::cmd(cmd).arg(&key).arg(args).query_async(&mut conn).await.expect(cmd)
        };
        out.push((key, values));
    }
    out
}

/// A secret in every encoding it could be stored in: as is, base64 / base64url (padded or not), hex; and for a
/// token of ours (base64url parts), the raw bytes of each part of 16 bytes or more.
fn encodings(secret: &[u8], decode_parts: bool) -> Vec<Vec<u8>> {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut all = vec![
        secret.to_vec(),
        STANDARD.encode(secret).into_bytes(),
        STANDARD_NO_PAD.encode(secret).into_bytes(),
        URL_SAFE.encode(secret).into_bytes(),
        URL_SAFE_NO_PAD.encode(secret).into_bytes(),
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
    ];
    if decode_parts {
        for part in secret.split(|b| *b == b'.') {
            if let Ok(raw) = URL_SAFE_NO_PAD.decode(part) {
                if raw.len() >= 16 {
                    all.push(raw);
                }
            }
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The test key as the 32 bytes the replicas use.
fn configured_key() -> [u8; 32] {
    let hex = TEST_STORE_KEY.as_bytes();
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(std::str::from_utf8(&hex[2 * i..2 * i + 2]).unwrap(), 16).unwrap();
    }
    key
}

/// What an attacker holding the dump and the configured key can open: every value that the crate's own sealer,
/// keyed with the configured key (as is, or derived as the Redis backend derives it), authenticates for its
/// Redis key name. The plaintexts.
fn open_with_configured_key(dump: &[(String, Vec<Vec<u8>>)]) -> Vec<(String, Vec<u8>)> {
    let key = configured_key();
    let sealers = [Sealer::new(&key), Sealer::new(&crypto::derive_key(&key, "dcr-proxy redis records v1"))];
    let mut opened = Vec::new();
    for (name, values) in dump {
        for value in values {
            for sealer in &sealers {
                for aad in [name.as_bytes(), b""] {
                    if let Ok(plain) = sealer.open(aad, value) {
                        opened.push((name.clone(), plain));
                    }
                }
            }
        }
    }
    opened
}

#[tokio::test]
async fn a_dump_of_redis_with_the_configured_key_yields_no_idp_token_but_a_live_proxy_token_does() {
    let s = start().await;
    let registered = register_json(
        &s.a,
        serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "client_secret_post"}),
    )
    .await;
    let client_id = str_of(&registered, "client_id").to_owned();
    let secret = str_of(&registered, "client_secret").to_owned();
    let registration_token = str_of(&registered, "registration_access_token").to_owned();

    // A live code in Redis: its record is in the dump too.
    let mut browser = Browser::new();
    let params = authorize(&s.a, &mut browser, &client_id).await;
    let live_code = params["code"].clone();
    let dump_with_code = dump(&s.redis).await;
    assert!(dump_with_code.iter().any(|(k, _)| k.starts_with("dcrp:code:")), "the live code is in Redis");
    let resp = redeem_with(&s.b, &client_id, &live_code, &[("client_secret", &secret)]).await;
    assert_eq!(resp.status(), 200);
    let first: Value = resp.json().await.expect("json");
    let access = str_of(&first, "access_token").to_owned();
    assert_eq!(get(&s.a, "/mcp", &access).await, 200);
    assert_eq!(get(&s.b, "/mcp", &access).await, 200);

    // The IdP token expires: replica A refreshes it at the IdP, B then sends the new one without a refresh.
    for p in [&s.a, &s.b] {
        p.clock.advance(301);
    }
    assert_eq!(get(&s.a, "/mcp", &access).await, 200);
    assert_eq!(s.azure.state().refresh_calls, 1);
    let refreshed_idp = s.azure.state().last_access_token.clone().expect("refreshed");
    assert_eq!(bearer_seen(&s.default), refreshed_idp);
    assert_eq!(get(&s.b, "/mcp", &access).await, 200);
    assert_eq!(bearer_seen(&s.default), refreshed_idp, "B uses the IdP token A obtained");
    assert_eq!(s.azure.state().refresh_calls, 1, "without a second IdP refresh");

    // The proxy's refresh token rotates on B.
    let resp = refresh_with_secret(&s.b, &client_id, &secret, str_of(&first, "refresh_token")).await;
    assert_eq!(resp.status(), 200);
    let rotated: Value = resp.json().await.expect("json");

    // A second grant, for the /graph route: its route token is obtained on A and reused on B.
    let graph_resource = s.a.url("/graph");
    let (graph_code, graph) = sign_in(&s.b, &s.a, &client_id, &secret, Some(&graph_resource)).await;
    let graph_access = str_of(&graph, "access_token").to_owned();
    let calls = s.azure.state().refresh_calls;
    assert_eq!(get(&s.a, "/graph/v1.0/me", &graph_access).await, 200);
    assert_eq!(s.azure.state().refresh_calls, calls + 1, "the route's token is obtained");
    let route_token = bearer_seen(&s.graph);

    // (a) No token, code, secret, IdP token or the configured key, in any encoding, in any key or value.
    let mut ours = vec![secret.clone(), registration_token, live_code, graph_code, access.clone()];
    for doc in [&first, &rotated, &graph] {
        ours.push(str_of(doc, "access_token").to_owned());
        if let Some(r) = doc["refresh_token"].as_str() {
            ours.push(r.to_owned());
        }
    }
    // The binding cookie's random part and the person cookie's tag (`value.tag`, `p.tag`): the longest piece.
    ours.extend(browser.cookies.values().map(|v| v.split('.').max_by_key(|p| p.len()).unwrap_or(v).to_owned()));
    let idp = s.azure.issued_secrets();
    assert!(idp.len() >= 4, "the IdP issued a code, tokens, a refreshed token and a route token: {}", idp.len());
    assert!(idp.contains(&refreshed_idp) && idp.contains(&route_token));
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for t in &ours {
        needles.extend(encodings(t.as_bytes(), true).into_iter().map(|e| (format!("proxy secret {}…", &t[..6]), e)));
    }
    for t in &idp {
        needles.extend(encodings(t.as_bytes(), false).into_iter().map(|e| (format!("IdP secret {}…", &t[..6]), e)));
    }
    let key = configured_key();
    needles.extend(encodings(&key, false).into_iter().map(|e| ("the configured key".to_owned(), e)));
    needles.push(("the configured key".to_owned(), TEST_STORE_KEY.as_bytes().to_vec()));
    let final_dump = dump(&s.redis).await;
    let mut values = 0;
    for (name, vals) in dump_with_code.iter().chain(&final_dump) {
        for (what, needle) in &needles {
            assert!(!contains(name.as_bytes(), needle), "{what} readable in the key name {name}");
            for v in vals {
                values += 1;
                assert!(!contains(v, needle), "{what} readable at rest under {name}");
            }
        }
    }
    eprintln!("{} keys, {values} value checks", final_dump.len());

    // (b) With the dump and the configured key, what opens holds no IdP token (nor any token of ours).
    let opened: Vec<_> =
        open_with_configured_key(&dump_with_code).into_iter().chain(open_with_configured_key(&final_dump)).collect();
    assert!(opened.iter().any(|(k, _)| k.starts_with("dcrp:grant:")), "the attacker opens the grant records");
    assert!(opened.iter().any(|(k, _)| k.starts_with("dcrp:code:")), "and the code's record");
    for (name, plain) in &opened {
        for (what, needle) in needles.iter().filter(|(w, _)| !w.starts_with("the configured")) {
            assert!(!contains(plain, needle), "{what} opened with the configured key under {name}");
        }
    }
    eprintln!("{} blobs open with the configured key, none with an IdP token", opened.len());
    assert!(final_dump.iter().any(|(k, _)| k.starts_with("dcrp:rt:")), "the route token is shared");
    assert_eq!(get(&s.b, "/graph/v1.0/me", &graph_access).await, 200);
    assert_eq!(bearer_seen(&s.graph), route_token, "B sends the route token A obtained");
    assert_eq!(s.azure.state().refresh_calls, calls + 1, "without asking the IdP again");

    // (c) The flow goes on on a third replica that never saw it: the proxy tokens unwrap the data keys there.
    let c = s.a.replica().await;
    let rotated_access = str_of(&rotated, "access_token").to_owned();
    assert_eq!(get(&c, "/mcp", &rotated_access).await, 200);
    assert_eq!(bearer_seen(&s.default), refreshed_idp, "C opens the refreshed IdP token with the access token");
    assert_eq!(get(&c, "/graph/v1.0/me", &graph_access).await, 200);
    assert_eq!(bearer_seen(&s.graph), route_token, "C opens the shared route token");
    assert_eq!(s.azure.state().refresh_calls, calls + 1, "no IdP call on C");
    let resp = refresh_with_secret(&c, &client_id, &secret, str_of(&rotated, "refresh_token")).await;
    assert_eq!(resp.status(), 200, "the refresh token unwraps the data key on C and wraps it for the new pair");
    let again: Value = resp.json().await.expect("json");
    assert_eq!(get(&s.b, "/mcp", str_of(&again, "access_token")).await, 200);

    // Negative: a revoked access token's record is gone with its wrap; a fresh replica refuses the token.
    let resp = http()
        .post(s.a.url("/revoke"))
        .form(&[("token", rotated_access.as_str()), ("client_id", &client_id), ("client_secret", &secret)])
        .send()
        .await
        .expect("revoke");
    assert_eq!(resp.status(), 200);
    let at_key = format!(
        "dcrp:at:{}",
        crypto::sha256(rotated_access.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    assert!(dump(&s.redis).await.iter().all(|(k, _)| *k != at_key), "the record and its wrapped key are gone");
    let d = s.a.replica().await;
    assert_eq!(get(&d, "/mcp", &rotated_access).await, 401);
    assert_eq!(get(&d, "/mcp", str_of(&again, "access_token")).await, 200, "the grant's other tokens still work");
}

#[tokio::test]
async fn an_idp_refresh_and_a_route_token_obtained_on_one_replica_serve_the_other() {
    let s = start().await;
    let (client_id, secret) = {
        let r = register_json(
            &s.a,
            serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "client_secret_post"}),
        )
        .await;
        (str_of(&r, "client_id").to_owned(), str_of(&r, "client_secret").to_owned())
    };
    let (_, tokens) = sign_in(&s.a, &s.a, &client_id, &secret, None).await;
    let access = str_of(&tokens, "access_token").to_owned();
    assert_eq!(get(&s.b, "/mcp", &access).await, 200);
    let first_idp = bearer_seen(&s.default);
    for p in [&s.a, &s.b] {
        p.clock.advance(301);
    }
    assert_eq!(get(&s.a, "/mcp", &access).await, 200);
    let refreshed = s.azure.state().last_access_token.clone().expect("refreshed");
    assert_ne!(refreshed, first_idp);
    assert_eq!(get(&s.b, "/mcp", &access).await, 200);
    assert_eq!(bearer_seen(&s.default), refreshed, "the next request on B carries A's new IdP token");
    assert_eq!(s.azure.state().refresh_calls, 1);

    let resource = s.a.url("/graph");
    let (_, graph) = sign_in(&s.a, &s.b, &client_id, &secret, Some(&resource)).await;
    let graph_access = str_of(&graph, "access_token").to_owned();
    assert_eq!(get(&s.a, "/graph/me", &graph_access).await, 200);
    let (route_token, calls) = (bearer_seen(&s.graph), s.azure.state().refresh_calls);
    for _ in 0..3 {
        assert_eq!(get(&s.b, "/graph/me", &graph_access).await, 200);
        assert_eq!(bearer_seen(&s.graph), route_token);
    }
    assert_eq!(s.azure.state().refresh_calls, calls, "B reuses A's route token: no second IdP call");
}

/// `App::audit` names the client from the shared store: a sign-in completed on a replica that did not register
/// the client is logged with the client's name (before, only the memory store was asked).
#[tokio::test]
async fn an_audit_line_on_another_replica_names_the_client_from_redis() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start().await;
    let dir = std::env::temp_dir().join(format!("dcrp-wrap-audit-{}", crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let a = TestProxy::builder().upstream(upstream.url()).local().redis(&redis).start().await;
    let b = TestProxy::builder()
        .upstream(upstream.url())
        .local()
        .redis(&redis)
        .extra(format!("[audit]\npath = \"{}\"\n", path.display()))
        .start()
        .await;
    let registered = register_json(
        &a,
        serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "client_name": "Named In Redis",
                           "token_endpoint_auth_method": "none"}),
    )
    .await;
    let client_id = str_of(&registered, "client_id").to_owned();
    let mut browser = Browser::new();
    let params = authorize(&b, &mut browser, &client_id).await;
    assert!(params.contains_key("code"));
    let mut line = None;
    for _ in 0..500 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        line = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("one JSON object per line"))
            .find(|l| l["event"] == "sign_in_completed");
        if line.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let line = line.expect("the sign-in is audited on B");
    assert_eq!(line["client_id"], client_id.as_str());
    assert_eq!(line["client_name"], "Named In Redis", "the name comes from Redis: {line}");
}

/// Issue 23 item 3: write access to Redis is not user impersonation. A forged access-token record (a token of
/// the attacker's choosing, the victim's grant id, no wrap, a wider scope), written in the clear as versions before
/// issue 23 wrote them, or a sealed record moved under another key, is refused on the replica that holds the grant
/// and on every other; and client records no longer show their metadata in the clear.
#[tokio::test]
async fn a_forged_access_token_record_serves_nobody() {
    let s = start().await;
    let r = register_json(
        &s.a,
        serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "client_secret_post",
            "client_name": "Victim Client"}),
    )
    .await;
    let (client_id, secret) = (str_of(&r, "client_id").to_owned(), str_of(&r, "client_secret").to_owned());
    let (_, tokens) = sign_in(&s.a, &s.a, &client_id, &secret, None).await;
    let victim = str_of(&tokens, "access_token").to_owned();
    assert_eq!(get(&s.a, "/mcp", &victim).await, 200, "A holds the grant");
    assert_eq!(get(&s.b, "/mcp", &victim).await, 200);

    let keys = dump(&s.redis).await;
    let grant_hex = keys
        .iter()
        .find_map(|(k, _)| k.strip_prefix("dcrp:grant:{g:").and_then(|r| r.strip_suffix('}')))
        .expect("the victim's grant")
        .to_owned();
    let grant = u128::from_str_radix(&grant_hex, 16).unwrap();
    let hex = |token: &str| crypto::sha256(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let client = redis::Client::open(s.redis.url()).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let expires = s.a.clock.now() + 3600;
    // The record as the pre-issue-23 format wrote it: postcard (grant, expires_at, scope, wrapped).
    let forged = postcard::to_allocvec(&(
        grant,
        expires,
        "openid profile email offline_access User.Read Mail.ReadWrite",
        Vec::<u8>::new(),
    ))
    .unwrap();
    let attacker = "attacker-chosen-token-0123456789abcdef";
    redis::cmd("SET")
        .arg(format!("dcrp:at:{}", hex(attacker)))
        .arg(&forged)
        .arg("EX")
        .arg(3600)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    // And the victim's own sealed record, copied under the attacker's token hash.
    let victim_record: Vec<u8> =
        redis::cmd("GET").arg(format!("dcrp:at:{}", hex(&victim))).query_async(&mut conn).await.unwrap();
    let moved = "attacker-chosen-token-moved-record-0000";
    redis::cmd("SET")
        .arg(format!("dcrp:at:{}", hex(moved)))
        .arg(&victim_record)
        .arg("EX")
        .arg(3600)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let before = s.default.recorded().len();
    for token in [attacker, moved] {
        assert_eq!(get(&s.a, "/mcp", token).await, 401, "on the replica that holds the grant");
        assert_eq!(get(&s.b, "/mcp", token).await, 401, "on another replica");
        let fresh = s.a.replica().await;
        assert_eq!(get(&fresh, "/mcp", token).await, 401, "on a fresh replica");
    }
    assert_eq!(s.default.recorded().len(), before, "the upstream never got the victim's IdP token");
    assert_eq!(get(&s.a, "/mcp", &victim).await, 200, "the victim's own token still works");

    // Read access shows no client metadata: the client record is sealed.
    let client_record: Vec<u8> =
        redis::cmd("GET").arg(format!("dcrp:client:{{c:{client_id}}}")).query_async(&mut conn).await.unwrap();
    assert!(!contains(&client_record, b"Victim Client") && !contains(&client_record, b"127.0.0.1:33418"));
}

/// Issue 23 item 3, the upgrade: records an older version wrote in the clear are sealed by the first replica of
/// this version that starts on that Redis (sign-ins survive the upgrade), and never again (a record planted in
/// the clear later is refused, not laundered).
#[tokio::test]
async fn records_written_in_the_clear_before_the_upgrade_are_sealed_once() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start().await;
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let hex = |token: &str| crypto::sha256(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let a = TestProxy::builder().upstream(upstream.url()).local().redis(&redis).start().await;
    let (client_id, tokens) = login(&a).await;
    let access = str_of(&tokens, "access_token").to_owned();
    let key = format!("dcrp:at:{}", hex(&access));
    // Make the record look as the older version left it: the same record, in the clear.
    let sealer = Sealer::new(&crypto::derive_key(&configured_key(), "dcr-proxy redis records v1"));
    let sealed: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
    let plain = sealer.open(key.as_bytes(), &sealed).expect("the record is sealed with the derived key");
    redis::cmd("SET").arg(&key).arg(&plain).arg("KEEPTTL").query_async::<()>(&mut conn).await.unwrap();
    redis::cmd("DEL").arg("dcrp:meta:records-sealed").query_async::<()>(&mut conn).await.unwrap();
    let fresh = a.replica().await;
    assert_eq!(get(&fresh, "/mcp", &access).await, 200, "the upgrade sealed it");
    let now: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(sealer.open(key.as_bytes(), &now).is_ok());
    // Later, a record put back in the clear is refused, and a restart does not seal it.
    redis::cmd("SET").arg(&key).arg(&plain).arg("KEEPTTL").query_async::<()>(&mut conn).await.unwrap();
    let later = a.replica().await;
    assert_eq!(get(&later, "/mcp", &access).await, 401);
    let _ = client_id;
}
