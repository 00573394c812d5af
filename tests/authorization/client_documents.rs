//! Client ID Metadata Documents through the running proxy: a URL client_id signs in end to end, and every way a
//! document can be abused is refused with a clear page.
//!
//! No connection ever leaves 127.0.0.1. The proxy gets a test resolver (names → chosen addresses) and a
//! recording transport that logs every attempt it is handed and refuses (without connecting) any address that is
//! not loopback; documents are served over TLS by a loopback server whose certificate the proxy trusts through
//! `extra_ca_file`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::http_server::{body, serve_tls, FakeServer};
use crate::common::upstream::Upstream;
use crate::common::*;
use dcr_proxy::client_documents::fetch::{BoxFuture, FetchRequest, Fetched, ReqwestTransport, Resolver, Transport};
use dcr_proxy::client_documents::{DocumentError, Network};
use serde_json::{json, Value};

/// Names the test chose, resolved without DNS.
struct MapResolver(HashMap<String, Vec<IpAddr>>);

impl Resolver for MapResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            self.0
                .get(host)
                .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "unknown test name"))
        })
    }
}

/// Records every attempt; connects (through the real reqwest transport) only to loopback.
struct RecordingTransport {
    inner: ReqwestTransport,
    attempts: Attempts,
}

impl Transport for RecordingTransport {
    fn get<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Fetched, DocumentError>> {
        self.attempts.lock().unwrap().push((request.url.to_string(), request.addrs.to_vec()));
        if request.addrs.iter().any(|a| !a.ip().is_loopback()) {
            return Box::pin(async { Err(DocumentError::Fetch("test transport: not leaving loopback".into())) });
        }
        self.inner.get(request)
    }
}

/// The document server: TLS on 127.0.0.1 for the names `docs.test` and `127.0.0.1`.
struct Docs {
    server: FakeServer,
    ca_file: PathBuf,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

const REDIRECT: &str = CLIENT_REDIRECT;

impl Docs {
    async fn start() -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["docs.test".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let dir = std::env::temp_dir().join(format!("dcrp-docs-{}", dcr_proxy::crypto::random_token()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ck.cert.pem()).unwrap();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let port = Arc::new(AtomicUsize::new(0));
        let (h, p) = (hits.clone(), port.clone());
        let server = serve_tls(
            move |req| {
                let (h, p) = (h.clone(), p.clone());
                async move {
                    let path = req.uri().path().to_owned();
                    *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let host = req.headers().get("host").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    let host = if host.is_empty() { format!("docs.test:{}", p.load(Ordering::Relaxed)) } else { host };
                    let own = format!("https://{host}{path}");
                    let doc = |id: &str| {
                        json!({
                            "client_id": id,
                            "client_name": "Doc Client",
                            "redirect_uris": [REDIRECT],
                            "grant_types": ["authorization_code", "refresh_token"],
                            "token_endpoint_auth_method": "none",
                        })
                        .to_string()
                    };
                    let resp = hyper::Response::builder().header("content-type", "application/json");
                    match path.as_str() {
                        "/good.json" | "/other.json" | "/third.json" => resp.body(body(doc(&own))),
                        "/nocache.json" => resp.header("cache-control", "no-store").body(body(doc(&own))),
                        "/redirect.json" => resp.status(302).header("location", "/good.json").body(body("")),
                        "/big.json" => {
                            let mut d: Value = serde_json::from_str(&doc(&own)).unwrap();
                            d["padding"] = json!("x".repeat(6000));
                            resp.body(body(d.to_string()))
                        }
                        "/delayed.json" => {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            resp.body(body(doc(&own)))
                        }
                        "/slow.json" => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            resp.body(body(doc(&own)))
                        }
                        // Slow the first time only: a second fetch (after the first was abandoned) is answered.
                        "/slow-once.json" => {
                            if h.lock().unwrap().get(&path).copied() == Some(1) {
                                tokio::time::sleep(Duration::from_secs(30)).await;
                            }
                            resp.body(body(doc(&own)))
                        }
                        "/bidi.json" => {
                            let mut d: Value = serde_json::from_str(&doc(&own)).unwrap();
                            d["client_name"] = json!("Doc Client \u{202E}evil");
                            resp.body(body(d.to_string()))
                        }
                        "/mismatch.json" => resp.body(body(doc(&own.replace("mismatch", "good")))),
                        "/missing.json" => resp.status(404).body(body("")),
                        _ => resp.status(404).body(body("")),
                    }
                    .unwrap()
                }
            },
            &ck.cert.pem(),
            &ck.signing_key.serialize_pem(),
        )
        .await;
        port.store(server.addr.port() as usize, Ordering::Relaxed);
        Self { server, ca_file, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("https://docs.test:{}{path}", self.server.addr.port())
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

type Attempts = Arc<Mutex<Vec<(String, Vec<SocketAddr>)>>>;

struct Setup {
    upstream: Upstream,
    docs: Docs,
    proxy: TestProxy,
    attempts: Attempts,
}

/// Names used by the SSRF tests and where the test resolver sends them.
fn names() -> HashMap<String, Vec<IpAddr>> {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    HashMap::from([
        ("docs.test".to_owned(), vec![ip("127.0.0.1")]),
        ("private10.test".to_owned(), vec![ip("10.0.0.1")]),
        ("metadata.test".to_owned(), vec![ip("169.254.169.254")]),
        ("home.test".to_owned(), vec![ip("192.168.1.1")]),
        ("ula.test".to_owned(), vec![ip("fc00::1")]),
        ("mapped.test".to_owned(), vec![ip("::ffff:10.0.0.1")]),
        ("mixed.test".to_owned(), vec![ip("93.184.216.34"), ip("10.0.0.1")]),
        ("public.test".to_owned(), vec![ip("93.184.216.34")]),
    ])
}

async fn setup(extra: &str) -> Setup {
    setup_with_deadline(extra, 1).await
}

/// [`setup`] with the fetch deadline in seconds.
async fn setup_with_deadline(extra: &str, deadline_secs: u64) -> Setup {
    let upstream = Upstream::start().await;
    let docs = Docs::start().await;
    let attempts: Attempts = Arc::default();
    let pem = std::fs::read(&docs.ca_file).unwrap();
    let network = Network {
        resolver: Arc::new(MapResolver(names())),
        transport: Arc::new(RecordingTransport {
            inner: ReqwestTransport::new(Some(&pem), Duration::from_secs(deadline_secs)).unwrap(),
            attempts: attempts.clone(),
        }),
    };
    let config = format!(
        "[client_metadata_documents]\ntimeout = \"{deadline_secs}s\"\nextra_ca_file = \"{}\"\n{extra}\n",
        docs.ca_file.display()
    );
    let proxy = TestProxy::builder().upstream(upstream.url()).local().extra(&config).network(network).start().await;
    Setup { upstream, docs, proxy, attempts }
}

const LOOPBACK_OK: &str = "allow_loopback_for_testing = true";

fn attempted_hosts(attempts: &Attempts) -> Vec<String> {
    attempts.lock().unwrap().iter().map(|(u, _)| url::Url::parse(u).unwrap().host_str().unwrap().to_owned()).collect()
}

/// `/authorize` for a URL client_id; returns the status and page.
async fn authorize_page(proxy: &TestProxy, client_id: &str) -> (u16, String) {
    let resp = http().get(authorize_url(proxy, &urlencode(client_id), "")).send().await.unwrap();
    assert!(resp.headers().get("location").is_none(), "errors about the client are never redirected");
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn a_metadata_document_client_signs_in_refreshes_and_reaches_the_upstream() {
    let s = setup(LOOPBACK_OK).await;
    let meta: Value = get_json(&s.proxy.url("/.well-known/oauth-authorization-server")).await;
    assert_eq!(meta["client_id_metadata_document_supported"], true);

    let client_id = s.docs.url("/good.json");
    // The consent page names the document's client, its publisher and the redirect host.
    let (status, consent) = authorize_page(&s.proxy, &client_id).await;
    assert_eq!(status, 200, "{consent}");
    assert!(consent.contains("Doc Client"));
    assert!(consent.contains(&format!("docs.test:{}", s.docs.server.addr.port())), "publisher shown");
    assert!(consent.contains("127.0.0.1:33418"), "redirect host shown");
    assert!(consent.contains("Any program on this computer can claim this identity"), "loopback warning");

    let mut browser = Browser::new();
    let params = authorize(&s.proxy, &mut browser, &urlencode(&client_id)).await;
    let resp = redeem(&s.proxy, &client_id, &params["code"]).await;
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.unwrap();
    let resp = http()
        .post(s.proxy.url("/mcp"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(s.upstream.last().header("x-forwarded-user"), Some("alice"));
    let resp = refresh(&s.proxy, &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 200);

    // One fetch served the page, the sign-in, the code and the refresh; it went to the pinned loopback address.
    assert_eq!(s.docs.hits("/good.json"), 1, "the document is cached");
    let metrics = s.proxy.app.metrics.render(&s.proxy.app.store);
    assert!(metrics.contains("dcr_proxy_client_document_fetches_total{result=\"ok\"} 1"), "{metrics}");
    let attempts = s.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].1, vec![SocketAddr::from(([127, 0, 0, 1], s.docs.server.addr.port()))]);

    // The client is not a registration: nothing was added to the store.
    assert!(s.proxy.app.store.stats().clients == 0);
}

#[tokio::test]
async fn a_redirect_uri_the_document_does_not_list_is_an_error_page() {
    let s = setup(LOOPBACK_OK).await;
    let client_id = s.docs.url("/good.json");
    let url = authorize_url(&s.proxy, &urlencode(&client_id), "")
        .replace(&urlencode(CLIENT_REDIRECT), &urlencode("https://evil.example/cb"));
    let resp = http().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().get("location").is_none());
    let page = resp.text().await.unwrap();
    assert!(page.contains("an address it did not register"), "{page}");
    assert!(page.contains("<code class=\"detail\">https://evil.example/cb</code>"), "{page}");
}

#[tokio::test]
async fn names_that_resolve_to_private_addresses_are_refused_before_any_connection() {
    let s = setup(LOOPBACK_OK).await;
    for (name, addr) in [
        ("private10.test", "10.0.0.1"),
        ("metadata.test", "169.254.169.254"),
        ("home.test", "192.168.1.1"),
        ("ula.test", "fc00::1"),
        ("mapped.test", "::ffff:10.0.0.1"),
        ("mixed.test", "10.0.0.1"),
    ] {
        let (status, page) = authorize_page(&s.proxy, &format!("https://{name}/client.json")).await;
        assert_eq!(status, 400, "{name}");
        // The page says the host is not allowed; the address it resolves to goes to the log only, so that the
        // proxy cannot be used to read internal DNS.
        assert!(page.contains(&format!("the host {name} is not allowed")), "{name}: {page}");
        assert!(!page.contains(addr), "{name}: the page names the address: {page}");
    }
    // Address literals are checked the same way.
    for literal in ["https://10.0.0.1/client.json", "https://[fc00::1]/client.json", "https://169.254.169.254/latest"] {
        let (status, page) = authorize_page(&s.proxy, literal).await;
        assert_eq!(status, 400, "{literal}");
        assert!(
            page.contains("is not allowed: it does not resolve, or not to public addresses only"),
            "{literal}: {page}"
        );
    }
    assert!(s.attempts.lock().unwrap().is_empty(), "the transport was never asked to connect");
    let metrics = s.proxy.app.metrics.render(&s.proxy.app.store);
    assert!(metrics.contains("dcr_proxy_client_document_fetches_total{result=\"refused\"} 9"), "{metrics}");

    // The recorder does see what passes the check: a public name reaches the transport (which, in this test,
    // refuses to leave loopback), so the empty record above is meaningful.
    let (status, page) = authorize_page(&s.proxy, "https://public.test/client.json").await;
    assert_eq!(status, 400);
    assert!(page.contains("could not be fetched"), "{page}");
    assert_eq!(attempted_hosts(&s.attempts), vec!["public.test"]);

    // A name that does not resolve reads like a private one: the page does not tell which internal names exist.
    let (status, page) = authorize_page(&s.proxy, "https://unknown.test/client.json").await;
    assert_eq!(status, 400);
    assert!(
        page.contains("the host unknown.test is not allowed: it does not resolve, or not to public addresses only"),
        "{page}"
    );
}

#[tokio::test]
async fn loopback_documents_need_the_test_only_switch() {
    let s = setup("").await;
    let (status, page) = authorize_page(&s.proxy, &s.docs.url("/good.json")).await;
    assert_eq!(status, 400);
    assert!(page.contains("the host docs.test is not allowed"), "{page}");
    assert!(!page.contains("127.0.0.1"), "the resolved address stays in the log: {page}");
    assert!(s.attempts.lock().unwrap().is_empty());
    assert_eq!(s.docs.hits("/good.json"), 0);
}

#[tokio::test]
async fn redirects_oversized_slow_and_mismatched_documents_are_refused_with_a_clear_page() {
    let s = setup(LOOPBACK_OK).await;
    for (path, expected) in [
        ("/redirect.json", "redirects are not followed"),
        ("/big.json", "larger than 5120 bytes"),
        ("/slow.json", "not served within 1s"),
        ("/mismatch.json", "is not the URL it was fetched from"),
        ("/missing.json", "HTTP 404"),
    ] {
        let (status, page) = authorize_page(&s.proxy, &s.docs.url(path)).await;
        assert_eq!(status, 400, "{path}");
        assert!(page.contains("Application identity refused"), "{path}: {page}");
        assert!(page.contains(expected), "{path}: {page}");
    }
    assert_eq!(s.docs.hits("/good.json"), 0, "the redirect was not followed");
    let metrics = s.proxy.app.metrics.render(&s.proxy.app.store);
    assert!(metrics.contains("dcr_proxy_client_document_fetches_total{result=\"failed\"} 4"), "{metrics}");
    assert!(metrics.contains("dcr_proxy_client_document_fetches_total{result=\"invalid\"} 1"), "{metrics}");
    assert_eq!(s.proxy.app.client_documents.cached(), 0);

    // The token endpoint refuses such a client_id as an unauthenticated client (for a code issued to it: a made-up
    // code is refused before any document is looked at).
    let mismatch = s.docs.url("/mismatch.json");
    insert_code(&s.proxy, "issued-code", &mismatch);
    let resp = http()
        .post(s.proxy.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", "issued-code"),
            ("code_verifier", VERIFIER),
            ("client_id", &mismatch),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "invalid_client");
    assert!(err["error_description"].as_str().unwrap().contains("is not the URL it was fetched from"));
}

#[tokio::test]
async fn documents_can_be_turned_off_or_limited_to_hosts() {
    let off = setup("enabled = false").await;
    let meta: Value = get_json(&off.proxy.url("/.well-known/oauth-authorization-server")).await;
    assert_eq!(meta["client_id_metadata_document_supported"], false);
    let (status, page) = authorize_page(&off.proxy, &off.docs.url("/good.json")).await;
    assert_eq!(status, 400);
    assert!(page.contains("does not accept client metadata documents"), "{page}");

    let limited = setup(&format!("{LOOPBACK_OK}\nallowed_hosts = [\"claude.ai\", \"*.openai.com\"]")).await;
    let (status, page) = authorize_page(&limited.proxy, &limited.docs.url("/good.json")).await;
    assert_eq!(status, 400);
    assert!(page.contains("documents from docs.test are not accepted"), "{page}");
    for s in [&off, &limited] {
        assert!(s.attempts.lock().unwrap().is_empty());
    }
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let s = setup(&format!("{LOOPBACK_OK}\ncache_entries = 2")).await;
    for path in ["/good.json", "/other.json", "/third.json"] {
        let (status, _) = authorize_page(&s.proxy, &s.docs.url(path)).await;
        assert_eq!(status, 200, "{path}");
    }
    assert_eq!(s.proxy.app.client_documents.cached(), 2);
    // Once expired, a document is fetched again.
    let before = s.docs.hits("/third.json");
    s.proxy.clock.advance(601);
    let (status, _) = authorize_page(&s.proxy, &s.docs.url("/third.json")).await;
    assert_eq!(status, 200);
    assert_eq!(s.docs.hits("/third.json"), before + 1);
    // A document served with `Cache-Control: no-store` is fetched every time.
    for expected in [1, 2] {
        let (status, _) = authorize_page(&s.proxy, &s.docs.url("/nocache.json")).await;
        assert_eq!(status, 200);
        assert_eq!(s.docs.hits("/nocache.json"), expected);
    }
}

#[tokio::test]
async fn fetches_in_flight_are_capped_and_the_excess_is_told_to_retry() {
    // A deadline long enough that the slow fetch surely still holds the only slot on a loaded machine.
    let s = setup_with_deadline(&format!("{LOOPBACK_OK}\nmax_concurrent_fetches = 1"), 4).await;
    let slow = authorize_url(&s.proxy, &urlencode(&s.docs.url("/slow.json")), "");
    let first = tokio::spawn(async move { http().get(slow).send().await.unwrap().status().as_u16() });
    // Wait until the slow fetch holds the only slot.
    for _ in 0..300 {
        if s.docs.hits("/slow.json") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.docs.hits("/slow.json"), 1);
    let resp = http().get(authorize_url(&s.proxy, &urlencode(&s.docs.url("/good.json")), "")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(s.docs.hits("/good.json"), 0);
    assert_eq!(first.await.unwrap(), 400, "the slow document times out");
    // The slot is free again.
    let (status, _) = authorize_page(&s.proxy, &s.docs.url("/good.json")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn concurrent_requests_for_one_document_share_one_fetch() {
    let s = setup_with_deadline(LOOPBACK_OK, 4).await;
    let url = authorize_url(&s.proxy, &urlencode(&s.docs.url("/delayed.json")), "");
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { http().get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    assert_eq!(s.docs.hits("/delayed.json"), 1, "one fetch served all eight");
    assert_eq!(s.attempts.lock().unwrap().len(), 1);
}

/// Puts an authorization code for `client_id` in the proxy's store, as if a sign-in had just finished.
fn insert_code(proxy: &TestProxy, code: &str, client_id: &str) {
    use dcr_proxy::store::{AuthorizationCode, Identity, UpstreamCredential, UpstreamLogin};
    proxy.app.store.memory().expect("memory store").issue_code(
        dcr_proxy::crypto::TokenHash::of(code),
        AuthorizationCode {
            request: dcr_proxy::store::AuthorizationRequest {
                client_id: client_id.to_owned(),
                redirect_uri: CLIENT_REDIRECT.to_owned(),
                redirect_uri_explicit: true,
                code_challenge: CHALLENGE.to_owned(),
                scope: vec!["openid".to_owned()],
                resource: None,
                state: None,
            },
            expires_at: proxy.clock.now() + 600,
            login: UpstreamLogin { credential: UpstreamCredential::Local, identity: Identity::default() },
        },
    );
}

/// Waits (bounded) until `done` holds; returns whether it did.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

#[tokio::test]
async fn a_flood_naming_a_failing_document_causes_one_fetch_per_url_per_failure_ttl() {
    let s = setup(&format!("{LOOPBACK_OK}\nfailure_ttl = \"30s\"\ncache_entries = 4")).await;
    let missing = s.docs.url("/missing.json");
    // Anonymous requests, half of them at once.
    let url = authorize_url(&s.proxy, &urlencode(&missing), "");
    let burst: Vec<_> = (0..15)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { http().get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.unwrap(), 400);
    }
    for _ in 0..15 {
        let (status, page) = authorize_page(&s.proxy, &missing).await;
        assert_eq!(status, 400);
        assert!(page.contains("HTTP 404"), "the remembered failure is the real one: {page}");
    }
    // A host that the transport cannot reach, through the token endpoint too (with a code issued to it).
    let unreachable = "https://public.test/client.json";
    insert_code(&s.proxy, "code-of-unreachable", unreachable);
    for _ in 0..10 {
        let (status, _) = authorize_page(&s.proxy, unreachable).await;
        assert_eq!(status, 400);
        let resp = redeem(&s.proxy, unreachable, "code-of-unreachable").await;
        assert_eq!(resp.status(), 401);
    }
    assert_eq!(s.docs.hits("/missing.json"), 1, "one fetch for 30 requests");
    assert_eq!(attempted_hosts(&s.attempts), vec!["docs.test", "public.test"], "one attempt per URL");

    // After failure_ttl the URL is tried again, once.
    s.proxy.clock.advance(31);
    for _ in 0..3 {
        authorize_page(&s.proxy, &missing).await;
    }
    assert_eq!(s.docs.hits("/missing.json"), 2);

    // Distinct failing URLs are remembered up to cache_entries, whatever their number.
    for i in 0..8 {
        let (status, _) = authorize_page(&s.proxy, &s.docs.url(&format!("/missing.json?n={i}"))).await;
        assert_eq!(status, 400);
    }
    assert_eq!(s.proxy.app.client_documents.failures(), 4);
    assert_eq!(s.proxy.app.client_documents.in_flight(), (0, 0));
}

#[tokio::test]
async fn the_token_endpoint_fetches_nothing_for_a_code_or_token_that_was_not_issued_to_the_client() {
    let s = setup(LOOPBACK_OK).await;
    let client_id = s.docs.url("/good.json");
    for i in 0..10 {
        let resp = redeem(&s.proxy, &client_id, &format!("made-up-{i}")).await;
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.json::<Value>().await.unwrap()["error"], "invalid_grant");
        let resp = refresh(&s.proxy, &client_id, &format!("made-up-{i}")).await;
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.json::<Value>().await.unwrap()["error"], "invalid_grant");
        let resp = http()
            .post(s.proxy.url("/revoke"))
            .form(&[("token", format!("made-up-{i}").as_str()), ("client_id", &client_id)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "RFC 7009 §2.2: an unknown token is answered 200");
    }
    // A code issued to another client does not open the door either.
    insert_code(&s.proxy, "code-of-another-client", "https://other.example/client.json");
    let resp = redeem(&s.proxy, &client_id, "code-of-another-client").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(s.docs.hits("/good.json"), 0, "nothing was fetched");
    assert!(s.attempts.lock().unwrap().is_empty());

    // The real flow still works, and a replayed code still revokes what it issued.
    let mut browser = Browser::new();
    let params = authorize(&s.proxy, &mut browser, &urlencode(&client_id)).await;
    let resp = redeem(&s.proxy, &client_id, &params["code"]).await;
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.unwrap();
    let resp = redeem(&s.proxy, &client_id, &params["code"]).await;
    assert_eq!(resp.status(), 400);
    let resp = refresh(&s.proxy, &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 400, "the replay revoked the grant");
    assert_eq!(s.docs.hits("/good.json"), 1);
}

#[tokio::test]
async fn requests_cancelled_mid_fetch_leave_nothing_in_flight_and_their_waiters_carry_on() {
    let s = setup_with_deadline(LOOPBACK_OK, 8).await;
    let docs = &s.docs;
    // Clients that go away while their document is being fetched.
    for i in 0..8 {
        let url = authorize_url(&s.proxy, &urlencode(&docs.url(&format!("/slow.json?n={i}"))), "");
        let request = tokio::spawn(async move { http().get(url).send().await });
        assert!(eventually(|| docs.hits("/slow.json") == i + 1).await, "fetch {i} started");
        request.abort();
    }
    let documents = &s.proxy.app.client_documents;
    assert!(eventually(|| documents.in_flight() == (0, 0)).await, "left in flight: {:?}", documents.in_flight());
    assert_eq!(documents.failures(), 0, "a cancelled fetch is not a failure to remember");

    // A request waiting for a fetch whose request is cancelled fetches the document itself.
    let url = authorize_url(&s.proxy, &urlencode(&docs.url("/slow-once.json")), "");
    let (first, second) = (url.clone(), url);
    let leader = tokio::spawn(async move { http().get(first).send().await });
    assert!(eventually(|| docs.hits("/slow-once.json") == 1).await);
    let waiter = tokio::spawn(async move { http().get(second).send().await.unwrap().status().as_u16() });
    assert!(eventually(|| documents.in_flight() == (1, 1)).await, "{:?}", documents.in_flight());
    leader.abort();
    let status = tokio::time::timeout(Duration::from_secs(6), waiter).await.expect("the waiter does not hang");
    assert_eq!(status.unwrap(), 200);
    assert_eq!(docs.hits("/slow-once.json"), 2);
    assert_eq!(documents.in_flight(), (0, 0));
}

#[tokio::test]
async fn a_metadata_document_with_a_direction_control_in_its_name_is_refused() {
    let s = setup(LOOPBACK_OK).await;
    let (status, page) = authorize_page(&s.proxy, &s.docs.url("/bidi.json")).await;
    assert_eq!(status, 400);
    assert!(page.contains("Application identity refused"), "{page}");
    assert!(page.contains("`client_name` contains a control or invisible formatting character (U+202E)"), "{page}");
    assert!(!page.contains('\u{202E}'));
    let metrics = s.proxy.app.metrics.render(&s.proxy.app.store);
    assert!(metrics.contains("dcr_proxy_client_document_fetches_total{result=\"invalid\"} 1"), "{metrics}");
}

#[test]
fn failure_ttl_is_validated_and_a_bad_value_names_the_key() {
    let hash = dcr_proxy::idp::local::hash_password(ALICE_PASSWORD).unwrap();
    let config = |ttl: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\npublic_url = \"http://127.0.0.1:1\"\n[upstream]\n\
             url = \"http://127.0.0.1:2\"\n[idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\n\
             password_hash = \"{hash}\"\n[client_metadata_documents]\nfailure_ttl = \"{ttl}\"\n"
        )
    };
    let parsed = dcr_proxy::config::Config::from_toml(&config("45s"), |_| None).unwrap();
    assert_eq!(parsed.client_documents.failure_ttl, Duration::from_secs(45));
    for bad in ["0s", "11m", "soon"] {
        let Err(err) = dcr_proxy::config::Config::from_toml(&config(bad), |_| None) else {
            panic!("failure_ttl = {bad} was accepted")
        };
        assert!(err.to_string().contains("client_metadata_documents.failure_ttl"), "{bad}: {err}");
    }
}

/// Issue 12: a metadata-document client signs in with every request on another of three replicas sharing Redis.
/// Fails on a build without the Redis backend (`[store] backend` is unknown there: no replica starts).
#[tokio::test]
async fn a_metadata_document_client_signs_in_across_replicas_sharing_redis() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start().await;
    let docs = Docs::start().await;
    let pem = std::fs::read(&docs.ca_file).unwrap();
    let config = format!(
        "[client_metadata_documents]\ntimeout = \"1s\"\nextra_ca_file = \"{}\"\n{LOOPBACK_OK}\n",
        docs.ca_file.display()
    );
    let mut r = Vec::new();
    for _ in 0..3 {
        let network = Network {
            resolver: Arc::new(MapResolver(names())),
            transport: Arc::new(RecordingTransport {
                inner: ReqwestTransport::new(Some(&pem), Duration::from_secs(1)).unwrap(),
                attempts: Attempts::default(),
            }),
        };
        let builder = TestProxy::builder().upstream(upstream.url()).local().extra(&config).network(network);
        r.push(builder.redis(&redis).start().await);
    }
    let client_id = docs.url("/good.json");
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&r[0], &urlencode(&client_id), "")).await else {
        panic!("consent page");
    };
    let (request, csrf) = (hidden_field(&consent, "request"), hidden_field(&consent, "csrf"));
    let Landing::Page(200, login) = browser
        .post_form(&r[1].url("/consent"), &[("request", &request), ("csrf", &csrf), ("action", "approve")])
        .await
    else {
        panic!("the second replica accepts the consent the first one sealed");
    };
    let state = hidden_field(&login, "state");
    let Landing::Client(params) = browser
        .post_form(&r[2].url("/login"), &[("state", &state), ("username", "alice"), ("password", ALICE_PASSWORD)])
        .await
    else {
        panic!("the third replica finishes the sign-in");
    };
    let resp = redeem(&r[0], &client_id, &params["code"]).await;
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.unwrap();
    let resp = http().post(r[1].url("/mcp")).bearer_auth(tokens["access_token"].as_str().unwrap()).body("{}").send();
    assert_eq!(resp.await.unwrap().status(), 200);
    let resp = refresh(&r[2], &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 200, "the document client refreshes on a third replica");
}
