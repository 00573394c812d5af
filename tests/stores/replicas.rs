//! Issue 12 §6 and §9 through the running binaries: several `dcr-proxy` processes sharing one `redis-server` (each
//! test starts its own on an ephemeral loopback port), all configured with one public origin as they would be
//! behind a load balancer; the test sends each request to the replica it chooses.
//!
//! - A replica killed with SIGKILL in the middle of a sign-in: the callback, `/token` and the MCP request finish
//!   on the others, and a refresh whose replica dies while it is in flight can be retried on another one.
//! - Redis stopped (SIGTERM) and started again with its append-only file: every client, grant, refresh family and
//!   revocation is still there, for a replica that starts afterwards with an empty cache.
//! - The official TypeScript SDK client through a round-robin balancer in front of three replicas, one request per
//!   connection (`e2e/sdk_flow.mjs` with `E2E_REPLICAS=3`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::fake_azure::{FakeAzure, APP_ID, APP_SECRET};
use crate::common::upstream::Upstream;
use crate::common::*;
use serde_json::Value;

/// One `dcr-proxy` process.
struct Replica {
    base: String,
    child: Child,
}

impl ProxyBase for Replica {
    fn base_url(&self) -> &str {
        &self.base
    }
}

impl Replica {
    /// SIGKILL (`Child::kill`), and the exit reaped.
    fn sigkill(&mut self) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "killed, not exited: {status}");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replicas of one deployment: one public origin (a balancer's port nothing listens on in these tests), one
/// Redis, one IdP, one upstream.
struct Deployment {
    dir: PathBuf,
    public: String,
    /// The config after `[server]`.
    rest: String,
}

impl Deployment {
    fn new(redis: &TestRedis, azure: &FakeAzure, upstream: &Upstream, extra: &str) -> Self {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("replicas-{}", dcr_proxy::crypto::random_token()));
        std::fs::create_dir_all(&dir).unwrap();
        let rest = format!(
            "[upstream]\nurl = \"{}\"\nresource_path = \"/mcp\"\n\
             [idp]\nkind = \"azure\"\nauthority = \"{}\"\ntenant = \"contoso.example\"\nclient_id = \"{APP_ID}\"\n\
             client_secret = \"{APP_SECRET}\"\nscopes = [\"openid\", \"profile\", \"email\", \"offline_access\", \"User.Read\"]\n\
             [limits]\nregister_per_minute = 100000\ntoken_per_minute = 100000\nauthorize_per_minute = 100000\n\
             [log]\nfilter = \"warn\"\n\
             [store]\nbackend = \"redis\"\nredis_url = \"{}\"\n{extra}",
            upstream.url(),
            azure.authority(),
            redis.url()
        );
        Self { dir, public: format!("http://127.0.0.1:{}", unused_port()), rest }
    }

    /// Starts one more replica and waits until it is ready (`/readyz`: Redis answers).
    async fn start(&self) -> Replica {
        retry_on_taken_port(|| async {
            let port = unused_port();
            let config = self.dir.join(format!("replica-{port}.toml"));
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{}\"\nshutdown_grace = \"1s\"\n{}",
                self.public, self.rest
            );
            std::fs::write(&config, text).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_dcr-proxy"))
                .args(["--config", config.to_str().unwrap()])
                .env("DCR_PROXY_SNAPSHOT_KEY", TEST_STORE_KEY)
                .env_remove("DCR_PROXY_REDIS_URL")
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            wait_ready(Replica { base: format!("http://127.0.0.1:{port}"), child }).await
        })
        .await
    }

    /// A URL on the public origin, sent to `replica` instead (what the balancer would do).
    fn on(&self, replica: &Replica, url: &str) -> String {
        assert!(url.starts_with(&self.public), "{url} is on the public origin {}", self.public);
        url.replacen(&self.public, &replica.base, 1)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until the replica answers `/readyz` with 200; `Err(stderr)` when it exits first.
async fn wait_ready(mut replica: Replica) -> Result<Replica, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = replica.child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = replica.child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("({status}) {err}"));
        }
        if ready(&replica).await {
            return Ok(replica);
        }
        assert!(Instant::now() < deadline, "dcr-proxy did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready(replica: &Replica) -> bool {
    // A short timeout: a port taken by another process may accept and never answer.
    let probe = tokio::time::timeout(Duration::from_millis(500), http().get(replica.url("/readyz")).send());
    matches!(probe.await, Ok(Ok(r)) if r.status() == 200)
}

/// The cookies a response sets, as a `Cookie` header.
fn cookies_of(resp: &reqwest::Response) -> String {
    let pairs = resp.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()?.split(';').next());
    pairs.collect::<Vec<_>>().join("; ")
}

fn location(resp: &reqwest::Response) -> String {
    assert!(resp.status().is_redirection(), "expected a redirect, got {}", resp.status());
    resp.headers()["location"].to_str().unwrap().to_owned()
}

/// A sign-in begun on `a`: the client registered, its /authorize, the consent approved, the IdP login done. The
/// browser now holds the IdP's redirect to the callback (on the public origin) and the proxy's binding cookie.
struct SignInInProgress {
    client_id: String,
    callback: String,
    cookie: String,
}

async fn begin_sign_in(a: &impl ProxyBase) -> SignInInProgress {
    let client_id = register_public_client(a).await;
    let resp = http().get(authorize_url(a, &client_id, "")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the consent page");
    let cookie = cookies_of(&resp);
    let consent = resp.text().await.unwrap();
    let form = [("request", hidden_field(&consent, "request")), ("csrf", hidden_field(&consent, "csrf"))];
    let resp = http()
        .post(a.url("/consent"))
        .header("cookie", &cookie)
        .form(&[("request", form[0].1.as_str()), ("csrf", form[1].1.as_str()), ("action", "approve")])
        .send()
        .await
        .unwrap();
    let to_idp = location(&resp);
    // The fake Entra ID signs the user in at once and sends the browser to the proxy's callback.
    let resp = http().get(&to_idp).send().await.unwrap();
    SignInInProgress { client_id, callback: location(&resp), cookie }
}

/// The callback on `b`: the client's redirect parameters.
async fn callback_on(deployment: &Deployment, b: &Replica, sign_in: &SignInInProgress) -> HashMap<String, String> {
    let resp = http().get(deployment.on(b, &sign_in.callback)).header("cookie", &sign_in.cookie).send().await.unwrap();
    let to_client = location(&resp);
    assert!(to_client.starts_with(CLIENT_REDIRECT), "back to the client: {to_client}");
    url::Url::parse(&to_client).unwrap().query_pairs().into_owned().collect()
}

fn str_of<'a>(doc: &'a Value, name: &str) -> &'a str {
    doc[name].as_str().unwrap_or_else(|| panic!("no {name} in {doc}"))
}

async fn redis_conn(redis: &TestRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test]
async fn a_sign_in_whose_replica_is_killed_after_the_idp_login_finishes_on_the_others() {
    let redis = TestRedis::start().await;
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let deployment = Deployment::new(&redis, &azure, &upstream, "");
    let mut a = deployment.start().await;
    let (b, c) = (deployment.start().await, deployment.start().await);

    let sign_in = begin_sign_in(&a).await;
    assert!(sign_in.callback.starts_with(&format!("{}/callback?", deployment.public)), "{}", sign_in.callback);
    a.sigkill();

    let params = callback_on(&deployment, &b, &sign_in).await;
    assert_eq!(params["state"], "client-state-1");
    assert_eq!(params["iss"], deployment.public, "RFC 9207 iss: the deployment's one issuer");
    let resp = redeem(&b, &sign_in.client_id, &params["code"]).await;
    assert_eq!(resp.status(), 200, "the code issued on B for a sign-in A began");
    let tokens: Value = resp.json().await.unwrap();
    assert_eq!(get_mcp(&c, str_of(&tokens, "access_token")).await, 200);
    let idp_token = azure.state().last_access_token.clone().expect("the IdP issued a token");
    assert_eq!(upstream.last().header("authorization"), Some(format!("Bearer {idp_token}").as_str()));

    // The callback is spent: replaying it on the third replica does not sign in again.
    let resp = http().get(deployment.on(&c, &sign_in.callback)).header("cookie", &sign_in.cookie).send().await.unwrap();
    assert!(!resp.status().is_redirection() || !location(&resp).contains("code="), "a callback is used once");

    // A replica started in A's place knows everything A did (its cache is empty: this is Redis).
    let a2 = deployment.start().await;
    assert_eq!(get_mcp(&a2, str_of(&tokens, "access_token")).await, 200);
    let resp = refresh(&a2, &sign_in.client_id, str_of(&tokens, "refresh_token")).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_sign_in_whose_replica_is_killed_before_the_consent_is_approved_finishes_on_another() {
    let redis = TestRedis::start().await;
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let deployment = Deployment::new(&redis, &azure, &upstream, "");
    let mut a = deployment.start().await;
    let b = deployment.start().await;

    let client_id = register_public_client(&a).await;
    let resp = http().get(authorize_url(&a, &client_id, "")).send().await.unwrap();
    let cookie = cookies_of(&resp);
    let consent = resp.text().await.unwrap();
    a.sigkill();
    let (request, csrf) = (hidden_field(&consent, "request"), hidden_field(&consent, "csrf"));
    let resp = http()
        .post(b.url("/consent"))
        .header("cookie", &cookie)
        .form(&[("request", request.as_str()), ("csrf", csrf.as_str()), ("action", "approve")])
        .send()
        .await
        .unwrap();
    let resp = http().get(location(&resp)).send().await.unwrap();
    let sign_in = SignInInProgress { client_id, callback: location(&resp), cookie };
    let params = callback_on(&deployment, &b, &sign_in).await;
    assert_eq!(redeem(&b, &sign_in.client_id, &params["code"]).await.status(), 200);
}

/// Sends the refresh to `a` and SIGKILLs `a` while it is in flight: `pause` holds the request inside Redis
/// (`CLIENT PAUSE WRITE`: the replica has sent its first write and waits for the answer) before the kill;
/// otherwise the kill races the request after `delay`. Then the client retries on `b`, as a client whose
/// connection broke does. Whatever A had done, the retry succeeds, and a pair A answered is the pair B answers.
async fn refresh_while_the_replica_dies(
    redis: &TestRedis,
    mut a: Replica,
    b: &Replica,
    client_id: &str,
    presented: &str,
    pause: bool,
    delay: Duration,
) -> Value {
    let mut conn = redis_conn(redis).await;
    if pause {
        redis::cmd("CLIENT").arg(&["PAUSE", "10000", "WRITE"]).query_async::<()>(&mut conn).await.unwrap();
    }
    let in_flight = tokio::spawn({
        let (url, client_id, presented) = (a.url("/token"), client_id.to_owned(), presented.to_owned());
        async move {
            http()
                .post(url)
                .form(&[("grant_type", "refresh_token"), ("refresh_token", &presented), ("client_id", &client_id)])
                .send()
                .await
        }
    });
    if pause {
        let blocked = within(Duration::from_secs(5), || {
            let mut conn = conn.clone();
            async move {
                let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.unwrap();
                list.lines().any(|l| l.contains(" flags=b "))
            }
        })
        .await
        .is_some();
        assert!(blocked, "the refresh waits on its Redis write");
    } else {
        // A blocking wait on this thread while a worker thread sends the request: the kill lands before, during
        // or after A's answer depending on `delay`.
        std::thread::sleep(delay);
    }
    a.sigkill();
    // A connection broken before the whole answer arrived is no answer: the client never saw the pair.
    let answered_pair = match in_flight.await.unwrap() {
        Ok(resp) if resp.status() == 200 => resp.json::<Value>().await.ok(),
        Ok(resp) => panic!("the refresh on the dying replica answered {}", resp.status()),
        Err(_) => None,
    };
    let answered = answered_pair.is_some();
    if pause {
        assert!(answered_pair.is_none(), "killed while its write was held in Redis: no answer");
        redis::cmd("CLIENT").arg("UNPAUSE").query_async::<()>(&mut conn).await.unwrap();
    }
    let resp = refresh(b, client_id, presented).await;
    assert_eq!(resp.status(), 200, "the retry on another replica (pause {pause}, delay {delay:?})");
    let pair: Value = resp.json().await.unwrap();
    if let Some(answered) = answered_pair {
        assert_eq!(answered["access_token"], pair["access_token"], "inside the grace window: the same pair");
        assert_eq!(answered["refresh_token"], pair["refresh_token"]);
    }
    eprintln!("refresh with pause {pause}, kill after {delay:?}: the dying replica answered: {answered}");
    pair
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_replica_dies_in_flight_is_retried_on_another_and_nothing_is_lost() {
    let redis = TestRedis::start().await;
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let deployment = Deployment::new(&redis, &azure, &upstream, "");
    let (b, c) = (deployment.start().await, deployment.start().await);
    let sign_in = begin_sign_in(&b).await;
    let params = callback_on(&deployment, &c, &sign_in).await;
    let resp = redeem(&c, &sign_in.client_id, &params["code"]).await;
    let mut tokens: Value = resp.json().await.unwrap();
    let first_refresh = str_of(&tokens, "refresh_token").to_owned();

    let raced = [0, 500, 1000, 2000, 4000, 8000].map(|us| (false, Duration::from_micros(us)));
    let rounds = [(true, Duration::ZERO)].into_iter().chain(raced);
    for (pause, delay) in rounds {
        let a = deployment.start().await;
        let presented = str_of(&tokens, "refresh_token").to_owned();
        let pair = refresh_while_the_replica_dies(&redis, a, &b, &sign_in.client_id, &presented, pause, delay).await;
        assert_eq!(get_mcp(&c, str_of(&pair, "access_token")).await, 200, "the new access token works");
        tokens = pair;
    }
    // The family went on through every round: its newest token refreshes; the first one is long rotated.
    let resp = refresh(&c, &sign_in.client_id, str_of(&tokens, "refresh_token")).await;
    assert_eq!(resp.status(), 200, "the family survived every kill");
    assert_ne!(first_refresh, str_of(&tokens, "refresh_token"));
}

/// With `--appendonly yes --appendfsync always`, everything a replica acknowledged is on disk: Redis stopped with
/// SIGTERM and started again on its port and directory has every client, grant, refresh family and revocation.
#[tokio::test]
async fn redis_restarted_with_its_append_only_file_keeps_clients_grants_families_and_revocations() {
    let mut redis = TestRedis::start_persistent().await;
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    // No grace window: a replay of a rotated refresh token is reuse at once.
    let deployment = Deployment::new(&redis, &azure, &upstream, "[tokens]\nrefresh_grace = \"0s\"\n");
    let (a, b) = (deployment.start().await, deployment.start().await);

    // A client that never signs in; a grant refreshed once; a grant revoked; a code redeemed.
    let idle_client = register_public_client(&a).await;
    let sign_in = begin_sign_in(&a).await;
    let params = callback_on(&deployment, &b, &sign_in).await;
    let tokens: Value = redeem(&b, &sign_in.client_id, &params["code"]).await.json().await.unwrap();
    let rotated_out = str_of(&tokens, "refresh_token").to_owned();
    let resp = refresh(&a, &sign_in.client_id, &rotated_out).await;
    assert_eq!(resp.status(), 200);
    let kept: Value = resp.json().await.unwrap();

    let revoked_sign_in = begin_sign_in(&b).await;
    let params = callback_on(&deployment, &a, &revoked_sign_in).await;
    let revoked: Value = redeem(&a, &revoked_sign_in.client_id, &params["code"]).await.json().await.unwrap();
    let resp = http()
        .post(b.url("/revoke"))
        .form(&[("token", str_of(&revoked, "refresh_token")), ("client_id", &revoked_sign_in.client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A grant whose code will be replayed after the restart.
    let replayed_sign_in = begin_sign_in(&a).await;
    let params = callback_on(&deployment, &a, &replayed_sign_in).await;
    let replayed_code = params["code"].clone();
    let replayed: Value = redeem(&b, &replayed_sign_in.client_id, &replayed_code).await.json().await.unwrap();

    redis.terminate();
    assert!(!ready(&a).await, "/readyz fails while Redis is down");
    assert!(redis.run().await, "redis-server starts again on its port with its append-only file");
    assert!(within(Duration::from_secs(10), || ready(&a)).await.is_some(), "the replica reconnects");
    // A replica that starts now has nothing cached: all it knows comes from Redis.
    let fresh = deployment.start().await;

    let resp = http().get(authorize_url(&fresh, &idle_client, "")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the client registered before the restart is known");
    assert_eq!(get_mcp(&fresh, str_of(&kept, "access_token")).await, 200, "the grant is there");
    assert_eq!(get_mcp(&fresh, str_of(&revoked, "access_token")).await, 401, "the revocation is there");
    let resp = refresh(&fresh, &revoked_sign_in.client_id, str_of(&revoked, "refresh_token")).await;
    assert_eq!(error_of(resp).await, (400, "invalid_grant".to_owned()), "a revoked family stays revoked");
    // The code is still known as redeemed, with the grant it issued: its replay revokes that grant.
    assert_eq!(get_mcp(&fresh, str_of(&replayed, "access_token")).await, 200);
    let resp = redeem(&fresh, &replayed_sign_in.client_id, &replayed_code).await;
    assert_eq!(error_of(resp).await, (400, "invalid_grant".to_owned()), "a redeemed code stays redeemed");
    let replayed_access = str_of(&replayed, "access_token").to_owned();
    let code_replay_revoked = within(Duration::from_secs(2), || async {
        get_mcp(&fresh, &replayed_access).await == 401 && get_mcp(&b, &replayed_access).await == 401
    })
    .await
    .is_some();
    assert!(code_replay_revoked, "the replay of a code redeemed before the restart revokes its grant");

    let resp = refresh(&fresh, &sign_in.client_id, str_of(&kept, "refresh_token")).await;
    assert_eq!(resp.status(), 200, "the refresh family is there");
    let newest: Value = resp.json().await.unwrap();
    // The token rotated out before the restart is still known as rotated: its replay is reuse and ends the grant.
    let resp = refresh(&b, &sign_in.client_id, &rotated_out).await;
    assert_eq!(error_of(resp).await, (400, "invalid_grant".to_owned()));
    let newest_access = str_of(&newest, "access_token").to_owned();
    let revoked_everywhere = within(Duration::from_secs(2), || async {
        get_mcp(&fresh, &newest_access).await == 401 && get_mcp(&a, &newest_access).await == 401
    })
    .await
    .is_some();
    assert!(revoked_everywhere, "reuse detected after the restart revokes the grant on every replica");
}

/// The official TypeScript SDK client (`e2e/sdk_flow.mjs`, modes dcr and cimd: Dynamic Client Registration and a
/// Client ID Metadata Document, sign-in, tool call, the SDK's own refresh) through a round-robin TCP balancer in
/// front of three replicas, each request on a connection of its own.
#[test]
fn the_typescript_sdk_client_signs_in_and_calls_tools_through_a_round_robin_balancer_of_three_replicas() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    if !e2e.join("node_modules").join("@modelcontextprotocol").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&e2e)
            .status()
            .expect("npm must be installed to run the end-to-end test");
        assert!(status.success(), "npm ci failed in e2e/");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let redis = runtime.block_on(TestRedis::start());
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("replicas-sdk-{}", dcr_proxy::crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cimd-cert.pem"), dir.join("cimd-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();

    let output = Command::new("node")
        .arg(e2e.join("sdk_flow.mjs"))
        .arg(env!("CARGO_BIN_EXE_dcr-proxy"))
        .current_dir(&e2e)
        .env("NO_COLOR", "1")
        .env("E2E_CIMD_CERT", &cert)
        .env("E2E_CIMD_KEY", &key)
        .env("E2E_MODES", "dcr,cimd")
        .env("E2E_REPLICAS", "3")
        .env("E2E_REDIS_URL", redis.url())
        .env("E2E_STORE_KEY", TEST_STORE_KEY)
        .env_remove("E2E_PYTHON")
        .output()
        .expect("node must be installed to run the end-to-end test");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "end-to-end flow failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    for mode in ["dcr", "cimd"] {
        assert!(stdout.contains(&format!("[e2e] mode {mode}: ok")), "mode {mode} did not pass:\n{stdout}");
    }
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");
    let counts = stdout
        .lines()
        .find_map(|l| l.strip_prefix("[e2e] balancer connections per replica: "))
        .unwrap_or_else(|| panic!("no balancer count:\n{stdout}"));
    let counts: Vec<u32> = counts.split(',').map(|n| n.trim().parse().unwrap()).collect();
    eprintln!("connections per replica: {counts:?}");
    assert_eq!(counts.len(), 3);
    // dcr alone: discovery, registration, authorize, consent, callback, token, MCP requests and a refresh.
    assert!(counts.iter().all(|n| *n >= 3), "every replica served several connections: {counts:?}");
}

/// Issue 12 §6 on the pages a browser shows: with Redis down, `/authorize`, the consent form and the IdP's callback
/// answer an HTML error page (503, `Retry-After`), not the OAuth JSON `/token` answers.
#[tokio::test]
async fn with_redis_down_the_sign_in_pages_are_html_503_pages_with_retry_after() {
    let mut redis = TestRedis::start().await;
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).redis(&redis).start().await;
    // One sign-in back from the IdP (at its callback), another at its consent page.
    let at_callback = begin_sign_in(&proxy).await;
    let resp = http().get(authorize_url(&proxy, &at_callback.client_id, "")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = cookies_of(&resp);
    let consent = resp.text().await.unwrap();
    let (request, csrf) = (hidden_field(&consent, "request"), hidden_field(&consent, "csrf"));

    redis.stop();
    let authorize = http().get(authorize_url(&proxy, &at_callback.client_id, "")).send().await.unwrap();
    let consent = http()
        .post(proxy.url("/consent"))
        .header("cookie", &cookie)
        .form(&[("request", request.as_str()), ("csrf", csrf.as_str()), ("action", "approve")])
        .send()
        .await
        .unwrap();
    let callback = http().get(&at_callback.callback).header("cookie", &at_callback.cookie).send().await.unwrap();
    for (what, resp) in [("authorize", authorize), ("consent", consent), ("callback", callback)] {
        assert_eq!(resp.status(), 503, "{what}");
        assert_eq!(resp.headers()["retry-after"], "1", "{what}");
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/html"), "{what}: {content_type}");
        let body = resp.text().await.unwrap();
        assert!(body.contains("<h1>Service unavailable</h1>"), "{what}: {body}");
        assert!(!body.contains("temporarily_unavailable"), "{what}: no OAuth JSON for a person");
    }
    let resp = redeem(&proxy, &at_callback.client_id, "a-code").await;
    assert_eq!(error_of(resp).await, (503, "temporarily_unavailable".to_owned()), "/token stays OAuth JSON");
}

/// A replica that dies while it holds a grant's IdP-refresh lock (its IdP call in flight): the grant's next request
/// on another replica waits for the lock to expire (three `idp.timeout`s and a margin, not a fixed 30 s) and then
/// refreshes itself, instead of answering 503 for as long as the dead replica's lock lives.
#[tokio::test]
async fn a_replica_killed_while_it_holds_the_idp_refresh_lock_delays_the_grant_and_does_not_fail_it() {
    let redis = TestRedis::start().await;
    let azure = FakeAzure::start().await;
    let upstream = Upstream::start().await;
    let mut deployment = Deployment::new(&redis, &azure, &upstream, "");
    deployment.rest = deployment.rest.replacen("[idp]\n", "[idp]\ntimeout = \"1s\"\n", 1);
    let (mut a, b) = (deployment.start().await, deployment.start().await);

    azure.state().expires_in = 1;
    let sign_in = begin_sign_in(&b).await;
    let params = callback_on(&deployment, &b, &sign_in).await;
    let tokens: Value = redeem(&b, &sign_in.client_id, &params["code"]).await.json().await.unwrap();
    let access = str_of(&tokens, "access_token").to_owned();
    let first_idp_token = azure.state().last_access_token.clone().unwrap();
    // The IdP token (1 s) is due; A's refresh is held at the IdP while A holds the lock, and A dies.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    azure.state().expires_in = 3599;
    azure.state().refresh_delay_once = Some(Duration::from_secs(30));
    let on_a = tokio::spawn({
        let url = a.url("/mcp");
        let access = access.clone();
        async move { http().get(url).bearer_auth(access).send().await }
    });
    let held = within(Duration::from_secs(10), || async { azure.state().held_refreshes == 1 }).await.is_some();
    if !held {
        let answer = on_a.await.unwrap().unwrap();
        let st = azure.state();
        panic!(
            "A's IdP refresh did not reach the IdP: A answered {}, {} refresh calls, same IdP token: {}",
            answer.status(),
            st.refresh_calls,
            upstream.last().header("authorization") == Some(format!("Bearer {first_idp_token}").as_str())
        );
    }
    a.sigkill();
    assert!(on_a.await.unwrap().is_err(), "A died before answering");

    assert_eq!(get_mcp(&b, &access).await, 200, "B takes the dead replica's lock over once it expires");
    let new_idp_token = azure.state().last_access_token.clone().unwrap();
    assert_ne!(new_idp_token, first_idp_token, "B refreshed the IdP token itself");
    assert_eq!(upstream.last().header("authorization"), Some(format!("Bearer {new_idp_token}").as_str()));
}
