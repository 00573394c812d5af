//! Test harness: the real server on 127.0.0.1:0 ([`TestProxy`]), a fake Azure AD ([`fake_azure`]), a recording
//! upstream ([`upstream`]) and a browser-like client that keeps the proxy's cookie and follows redirects by hand
//! ([`Browser`]).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
// `pub` here is for the test files that include this module, not an interface: `unreachable_pub` does not apply.
#![allow(unreachable_pub)]

pub mod fake_azure;
pub mod http_server;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use dcr_proxy::app::App;
use dcr_proxy::clock::Clock;
use dcr_proxy::config::Config;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
pub const CLIENT_REDIRECT: &str = "http://127.0.0.1:33418/callback";

/// The password of the local test user `alice`.
pub const ALICE_PASSWORD: &str = "correct horse battery staple";

/// Anything that serves the proxy at a base URL (in-process or the binary).
pub trait ProxyBase {
    fn base_url(&self) -> &str;
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }
}

impl ProxyBase for TestProxy {
    fn base_url(&self) -> &str {
        &self.base
    }
}

/// A running dcr-proxy.
pub struct TestProxy {
    pub base: String,
    pub app: Arc<App>,
    pub clock: Clock,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestProxy {
    /// The one way to start a test proxy: `TestProxy::builder().upstream(url)`, an IdP (`.azure(&fake)`,
    /// `.local()`, or an `[idp]` table in `.extra(..)`), then `.start().await`.
    pub fn builder() -> TestProxyBuilder {
        TestProxyBuilder::default()
    }

    pub fn url(&self, path: &str) -> String {
        ProxyBase::url(self, path)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A metadata-document network that refuses every name and every connection.
pub fn offline_network() -> dcr_proxy::client_documents::Network {
    use dcr_proxy::client_documents::fetch::{BoxFuture, FetchRequest, Fetched, Resolver, Transport};
    use dcr_proxy::client_documents::DocumentError;
    struct Offline;
    impl Resolver for Offline {
        fn resolve<'a>(
            &'a self,
            _host: &'a str,
            _port: u16,
        ) -> BoxFuture<'a, std::io::Result<Vec<std::net::SocketAddr>>> {
            Box::pin(async { Err(std::io::Error::other("tests resolve no names")) })
        }
    }
    impl Transport for Offline {
        fn get<'a>(&'a self, _request: FetchRequest<'a>) -> BoxFuture<'a, Result<Fetched, DocumentError>> {
            Box::pin(async { Err(DocumentError::Fetch("tests connect nowhere".into())) })
        }
    }
    dcr_proxy::client_documents::Network { resolver: Arc::new(Offline), transport: Arc::new(Offline) }
}

/// An HTTP client that never follows redirects.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

/// A browser: keeps the cookies it is given, follows redirects by hand until it leaves for the client's
/// redirect URI.
pub struct Browser {
    pub client: reqwest::Client,
    pub cookies: HashMap<String, String>,
}

/// What the browser ended on.
pub enum Landing {
    /// A page on a loopback server (status, body).
    Page(u16, String),
    /// A redirect to the client's redirect URI, with its query parameters.
    Client(HashMap<String, String>),
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        Self { client: http(), cookies: HashMap::new() }
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    fn keep_cookies(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all("set-cookie") {
            let text = v.to_str().unwrap_or("");
            if let Some((k, rest)) = text.split_once('=') {
                let value = rest.split(';').next().unwrap_or("");
                self.cookies.insert(k.to_owned(), value.to_owned());
            }
        }
    }

    async fn land(&mut self, mut resp: reqwest::Response) -> Landing {
        for _ in 0..10 {
            self.keep_cookies(&resp);
            if resp.status().is_redirection() {
                let location = resp.headers().get("location").expect("location").to_str().expect("ascii").to_owned();
                let location = if location.starts_with('/') {
                    let u = resp.url();
                    format!("{}://{}{location}", u.scheme(), u.authority())
                } else {
                    location
                };
                // The client's redirect URI: the test one, an https app, or an app's private-use scheme.
                if location.starts_with(CLIENT_REDIRECT)
                    || location.starts_with("https://app.example/")
                    || location.starts_with("https://chatgpt.com/")
                    || !location.starts_with("http")
                {
                    let url = url::Url::parse(&location).expect("client redirect");
                    return Landing::Client(url.query_pairs().into_owned().collect());
                }
                assert!(location.starts_with("http://127.0.0.1:"), "browser would leave loopback: {location}");
                resp = self.client.get(&location).header("cookie", self.cookie_header()).send().await.expect("follow");
                continue;
            }
            let status = resp.status().as_u16();
            return Landing::Page(status, resp.text().await.unwrap_or_default());
        }
        panic!("redirect loop");
    }

    pub async fn get(&mut self, url: &str) -> Landing {
        let resp = self.client.get(url).header("cookie", self.cookie_header()).send().await.expect("get");
        self.land(resp).await
    }

    pub async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> Landing {
        let resp = self.client.post(url).header("cookie", self.cookie_header()).form(form).send().await.expect("post");
        self.land(resp).await
    }
}

/// Reads `<input type="hidden" name="NAME" value="…">` from a page.
pub fn hidden_field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no hidden field {name} in page:\n{html}")) + marker.len();
    let end = html[start..].find('"').expect("value end") + start;
    html[start..end].to_owned()
}

/// GETs a JSON document (200 asserted).
pub async fn get_json(url: &str) -> Value {
    let resp = http().get(url).send().await.expect("get");
    assert_eq!(resp.status(), 200, "{url}");
    resp.json().await.expect("json")
}

/// Registers a client with the given RFC 7591 metadata and returns the response document (201 asserted).
pub async fn register_json(proxy: &impl ProxyBase, metadata: Value) -> Value {
    register_json_with(proxy, &http(), metadata).await
}

/// Registers a public client with the test redirect URI.
pub async fn register_public_client(proxy: &impl ProxyBase) -> String {
    let doc = register_json(
        proxy,
        json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none", "client_name": "Test Client"}),
    )
    .await;
    doc["client_id"].as_str().expect("client_id").to_owned()
}

pub fn authorize_url(proxy: &impl ProxyBase, client_id: &str, extra: &str) -> String {
    format!(
        "{}/authorize?response_type=code&client_id={client_id}&redirect_uri={}&state=client-state-1\
         &code_challenge={CHALLENGE}&code_challenge_method=S256{extra}",
        proxy.base_url(),
        urlencode(CLIENT_REDIRECT)
    )
}

pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Runs /authorize → consent (approve) → IdP (fake Azure logs in automatically, or the local login with
/// `alice`) → callback, and returns the client's redirect parameters.
pub async fn authorize(proxy: &impl ProxyBase, browser: &mut Browser, client_id: &str) -> HashMap<String, String> {
    authorize_with(proxy, browser, client_id, "").await
}

/// [`authorize`] with extra query parameters (`&scope=…`).
pub async fn authorize_with(
    proxy: &impl ProxyBase,
    browser: &mut Browser,
    client_id: &str,
    extra: &str,
) -> HashMap<String, String> {
    let Landing::Page(200, consent) = browser.get(&authorize_url(proxy, client_id, extra)).await else {
        panic!("expected the consent page");
    };
    approve_and_sign_in(proxy, browser, &consent).await
}

/// Approves a consent page the browser holds and, with the local login, signs in as alice: the client's redirect
/// parameters.
pub async fn approve_and_sign_in(
    proxy: &impl ProxyBase,
    browser: &mut Browser,
    consent: &str,
) -> HashMap<String, String> {
    let request = hidden_field(consent, "request");
    let csrf = hidden_field(consent, "csrf");
    match browser
        .post_form(&proxy.url("/consent"), &[("request", &request), ("csrf", &csrf), ("action", "approve")])
        .await
    {
        Landing::Client(params) => params,
        Landing::Page(200, login) => {
            let state = hidden_field(&login, "state");
            match browser
                .post_form(
                    &proxy.url("/login"),
                    &[("state", &state), ("username", "alice"), ("password", ALICE_PASSWORD)],
                )
                .await
            {
                Landing::Client(params) => params,
                Landing::Page(s, body) => panic!("login failed: {s} {body}"),
            }
        }
        Landing::Page(s, body) => panic!("consent failed: {s} {body}"),
    }
}

/// Redeems a code with the test verifier.
pub async fn redeem(proxy: &impl ProxyBase, client_id: &str, code: &str) -> reqwest::Response {
    redeem_with(proxy, client_id, code, &[]).await
}

/// [`redeem`] with fields replaced or added (`("code_verifier", "…")`, `("resource", "…")`).
pub async fn redeem_with(
    proxy: &impl ProxyBase,
    client_id: &str,
    code: &str,
    changes: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", CLIENT_REDIRECT),
        ("code_verifier", VERIFIER),
        ("client_id", client_id),
    ];
    for (key, value) in changes {
        match form.iter_mut().find(|(k, _)| k == key) {
            Some(field) => field.1 = value,
            None => form.push((key, value)),
        }
    }
    http().post(proxy.url("/token")).form(&form).send().await.expect("token request")
}

/// Registers, authorizes and redeems: returns (client_id, token response).
pub async fn login(proxy: &impl ProxyBase) -> (String, Value) {
    login_in(proxy, &mut Browser::new()).await
}

/// [`login`] in `browser`, which keeps the cookies the proxy set (the person cookie among them).
pub async fn login_in(proxy: &impl ProxyBase, browser: &mut Browser) -> (String, Value) {
    let client_id = register_public_client(proxy).await;
    let params = authorize(proxy, browser, &client_id).await;
    let code = params.get("code").unwrap_or_else(|| panic!("no code in {params:?}"));
    let resp = redeem(proxy, &client_id, code).await;
    assert_eq!(resp.status(), 200);
    (client_id, resp.json().await.expect("token json"))
}

pub async fn refresh(proxy: &impl ProxyBase, client_id: &str, refresh_token: &str) -> reqwest::Response {
    http()
        .post(proxy.url("/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token), ("client_id", client_id)])
        .send()
        .await
        .expect("refresh request")
}

/// Serves the proxy's Prometheus metrics on 127.0.0.1:0 and returns the `/metrics` URL.
pub async fn serve_metrics(proxy: &TestProxy) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind metrics");
    let addr = listener.local_addr().expect("metrics addr");
    tokio::spawn(dcr_proxy::server::serve_metrics(listener, proxy.app.clone(), std::future::pending()));
    format!("http://{addr}/metrics")
}

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The IdP a [`TestProxyBuilder`] configures.
#[derive(Default)]
enum TestIdp {
    /// `[idp]` comes with [`TestProxyBuilder::extra`].
    #[default]
    Given,
    /// The fake Azure AD at this authority.
    Azure(String),
    /// The local login with the user `alice`.
    Local,
}

/// Builds a [`TestProxy`]: the real server on a listener bound to 127.0.0.1:0 and handed to it (never rebound).
#[derive(Default)]
pub struct TestProxyBuilder {
    upstream: Option<String>,
    idp: TestIdp,
    server_extra: String,
    extra: String,
    network: Option<dcr_proxy::client_documents::Network>,
    env: Vec<(String, String)>,
    redis: Option<String>,
    /// More `[store]` lines with [`TestProxyBuilder::redis_at`] (TLS files, `redis_cluster`).
    redis_store_extra: String,
    /// `server.public_url` when not this proxy's own address (replicas behind one public name).
    public_url: Option<String>,
    /// `idp.tenant` of the Azure preset (default `contoso.example`) and more `[idp]` lines.
    azure_tenant: Option<String>,
    idp_extra: String,
    /// `upstream.response_timeout` (default 2 s).
    response_timeout: Option<String>,
}

impl TestProxyBuilder {
    /// `upstream.response_timeout` instead of the tests' 2 s.
    pub fn response_timeout(mut self, timeout: &str) -> Self {
        self.response_timeout = Some(timeout.to_owned());
        self
    }

    /// The Azure preset's `idp.tenant` (default `contoso.example`) and more `[idp]` lines (`allowed_tenants = …`).
    pub fn azure_tenant(mut self, tenant: &str, idp_extra: &str) -> Self {
        self.azure_tenant = Some(tenant.to_owned());
        self.idp_extra = idp_extra.to_owned();
        self
    }

    /// Serves under another proxy's public URL, as replicas behind one load balancer do.
    pub fn public_url(mut self, url: impl AsRef<str>) -> Self {
        self.public_url = Some(url.as_ref().to_owned());
        self
    }

    /// The upstream MCP server's base URL (required).
    pub fn upstream(mut self, url: impl AsRef<str>) -> Self {
        self.upstream = Some(url.as_ref().to_owned());
        self
    }

    /// The fake Azure AD as the IdP.
    pub fn azure(mut self, azure: &fake_azure::FakeAzure) -> Self {
        self.idp = TestIdp::Azure(azure.authority());
        self
    }

    /// The local login with the user `alice` ([`ALICE_PASSWORD`]) as the IdP.
    pub fn local(mut self) -> Self {
        self.idp = TestIdp::Local;
        self
    }

    /// More `[server]` lines; a `[server.tls]` table here makes the proxy https.
    pub fn server_extra(mut self, toml: impl AsRef<str>) -> Self {
        self.server_extra = toml.as_ref().to_owned();
        self
    }

    /// More config after `[idp]` (`[limits]`, `[registration]`, … or `[idp]` itself when no IdP is chosen).
    pub fn extra(mut self, toml: impl AsRef<str>) -> Self {
        self.extra = toml.as_ref().to_owned();
        self
    }

    /// The network the metadata-document fetcher uses (default: [`offline_network`]).
    pub fn network(mut self, network: dcr_proxy::client_documents::Network) -> Self {
        self.network = Some(network);
        self
    }

    /// An environment variable as the config sees it (the process environment is never read).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub async fn start(self) -> TestProxy {
        let upstream_url = self.upstream.expect("TestProxy::builder() needs .upstream(..)");
        let idp = match &self.idp {
            TestIdp::Given => String::new(),
            TestIdp::Azure(authority) => format!(
                "[idp]\nkind = \"azure\"\nauthority = \"{authority}\"\ntenant = \"{}\"\nclient_id = \"{}\"\n\
                 client_secret = \"{}\"\nscopes = [\"openid\", \"profile\", \"email\", \"offline_access\", \"User.Read\"]\n{}",
                self.azure_tenant.as_deref().unwrap_or("contoso.example"),
                fake_azure::APP_ID,
                fake_azure::APP_SECRET,
                self.idp_extra,
            ),
            TestIdp::Local => {
                let hash = dcr_proxy::idp::local::hash_password(ALICE_PASSWORD).expect("hash");
                format!(
                    "[idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\nemail = \"alice@example.com\"\n"
                )
            }
        };
        let (server_extra, extra) = (self.server_extra, self.extra);
        // `DCR_TEST_FAST_PATH=0`: the same tests with the fast path off (hyper serves every request; issue 13),
        // `=1` on (the default), unless a test sets it itself.
        let server_extra = match std::env::var("DCR_TEST_FAST_PATH").as_deref() {
            Ok(v @ ("0" | "1")) if !server_extra.contains("fast_path") => {
                format!("fast_path = {}\n{server_extra}", v == "1")
            }
            _ => server_extra,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let scheme = if server_extra.contains("[server.tls]") { "https" } else { "http" };
        let base = format!("{scheme}://{addr}");
        let public_url = self.public_url.clone().unwrap_or_else(|| base.clone());
        let text = format!(
            "[server]\nlisten = \"{addr}\"\npublic_url = \"{public_url}\"\nshutdown_grace = \"1s\"\n{server_extra}\n\
             [upstream]\nurl = \"{upstream_url}\"\nresource_path = \"/mcp\"\nconnect_timeout = \"2s\"\nresponse_timeout = \"{response_timeout}\"\n\
             {idp}{extra}",
            response_timeout = self.response_timeout.as_deref().unwrap_or("2s")
        );
        let text = match &self.redis {
            Some(url) => {
                format!("{text}\n[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\n{}\n", self.redis_store_extra)
            }
            None => text,
        };
        let env = self.env;
        let with_redis = self.redis.is_some();
        let lookup = |k: &str| {
            if k == "DCR_PROXY_SNAPSHOT_KEY" && with_redis {
                return Some(TEST_STORE_KEY.to_owned());
            }
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        };
        let config = Config::from_toml(&text, lookup).unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
        let clock =
            Clock::manual(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs());
        // Unless a test brings its own, the metadata-document fetcher resolves nothing and connects nowhere, so
        // that no test can send traffic beyond loopback by naming a URL client_id.
        let network = self.network.unwrap_or_else(offline_network);
        let app = App::new_on(config, clock.clone(), Some(network)).await.expect("app starts");
        let (tx, rx) = oneshot::channel::<()>();
        let tls = app.config.server.tls.as_ref().map(|t| dcr_proxy::server::tls::acceptor(t).expect("TLS config"));
        let task = tokio::spawn(dcr_proxy::server::serve(listener, app.clone(), tls, async {
            let _ = rx.await;
        }));
        TestProxy { base, app, clock, shutdown: Some(tx), task: Some(task) }
    }
}

/// The fake Azure AD, the recording upstream and the proxy in front of them, with more config (`extra`).
pub async fn setup_with(extra: &str) -> (fake_azure::FakeAzure, upstream::Upstream, TestProxy) {
    let azure = fake_azure::FakeAzure::start().await;
    let upstream = upstream::Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).azure(&azure).extra(extra).start().await;
    (azure, upstream, proxy)
}

/// [`setup_with`] and the default config.
pub async fn setup() -> (fake_azure::FakeAzure, upstream::Upstream, TestProxy) {
    setup_with("").await
}

/// The status and the OAuth `error` code of a response (`<none>` when the body has none).
pub async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["error"].as_str().unwrap_or("<none>").to_owned())
}

/// Registers a client with the given RFC 7591 metadata through `client` (one that trusts a test certificate,
/// say) and returns the response document (201 asserted).
pub async fn register_json_with(proxy: &impl ProxyBase, client: &reqwest::Client, metadata: Value) -> Value {
    let resp = client.post(proxy.url("/register")).json(&metadata).send().await.expect("register");
    assert_eq!(resp.status(), 201);
    resp.json().await.expect("json")
}

// ---- ports for the real binary ------------------------------------------------------------------------------

/// A port for the real binary to listen on: the kernel picks it (bound on 127.0.0.1:0) and it is released at once.
///
/// In-process proxies never need this: [`TestProxyBuilder::start`] binds once and hands the listener to the server.
/// A child process cannot be handed a listener here (the binary binds the address in its config, which is also its
/// issuer URL, so it cannot bind :0 and report the port without changing the binary), so between this release and
/// the child's bind another process may take the port. [`retry_on_taken_port`] closes that race from the other
/// side: the child's own bind failure is detected and the start retried on a new port.
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// Whether a child's stderr says its listen address was taken (`cannot listen on …`, exit 2 from `main`).
pub fn listen_address_taken(stderr: &str) -> bool {
    stderr.contains("cannot listen on")
}

/// Starts the binary with `start`, which picks its ports with [`unused_port`] and returns `Err(stderr)` when the
/// child exited before it was ready. When the listen address was taken, `start` runs again on new ports (at most
/// five times); any other early exit panics with the child's stderr.
pub async fn retry_on_taken_port<T, F>(mut start: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, String>>,
{
    for _ in 0..5 {
        match start().await {
            Ok(started) => return started,
            Err(stderr) if listen_address_taken(&stderr) => continue,
            Err(stderr) => panic!("dcr-proxy exited at start: {stderr}"),
        }
    }
    panic!("five fresh ports were all taken before dcr-proxy could bind them");
}

/// Serves the proxy's admin API on 127.0.0.1:0 (the proxy's config must have `[admin]`) and returns its base URL.
pub async fn serve_admin(proxy: &TestProxy) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let addr = listener.local_addr().expect("admin addr");
    tokio::spawn(dcr_proxy::server::serve_admin(listener, proxy.app.clone(), std::future::pending()));
    format!("http://{addr}")
}

// ---- the shared store on Redis ------------------------------------------------------------------------------

/// The key replicas sharing a [`TestRedis`] are configured with (`DCR_PROXY_SNAPSHOT_KEY`), 32 bytes as hex.
pub const TEST_STORE_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

impl TestProxyBuilder {
    /// `[store] backend = "redis"` on `redis`, with [`TEST_STORE_KEY`].
    pub fn redis(mut self, redis: &TestRedis) -> Self {
        self.redis = Some(redis.url());
        self
    }
}

/// A `redis-server` of its own on an ephemeral loopback port (no persistence), killed on drop.
pub struct TestRedis {
    pub port: u16,
    child: Option<std::process::Child>,
    /// The directory of the append-only file, when the server persists.
    aof_dir: Option<std::path::PathBuf>,
}

impl TestRedis {
    /// Starts `redis-server` on a port the kernel picked (retried on a new port if it was taken meanwhile).
    pub async fn start() -> Self {
        for _ in 0..5 {
            let mut redis = Self { port: unused_port(), child: None, aof_dir: None };
            if redis.run().await {
                return redis;
            }
        }
        panic!("redis-server did not start on five fresh ports");
    }

    /// [`TestRedis::start`] with an append-only file fsynced on every write, so that a restart keeps everything
    /// acknowledged.
    pub async fn start_persistent() -> Self {
        for _ in 0..5 {
            let dir = std::env::temp_dir().join(format!("dcrp-redis-{}-{}", std::process::id(), unused_port()));
            std::fs::create_dir_all(&dir).expect("redis dir");
            let mut redis = Self { port: unused_port(), child: None, aof_dir: Some(dir) };
            if redis.run().await {
                return redis;
            }
        }
        panic!("redis-server did not start on five fresh ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on its port; whether it answers PING within 5 s.
    pub async fn run(&mut self) -> bool {
        let mut command = std::process::Command::new("redis-server");
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
        match &self.aof_dir {
            Some(dir) => command.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"]).arg(dir),
            None => command.args(["--appendonly", "no"]),
        };
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if self.ping().await {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else { return false };
        let Ok(Ok(mut conn)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), client.get_multiplexed_async_connection()).await
        else {
            return false;
        };
        redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
    }

    /// Every key and every value (strings, hashes, sets) as raw bytes, for a scan at rest.
    pub async fn dump_all(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let client = redis::Client::open(self.url()).expect("url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.expect("KEYS");
        let mut out = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await.expect("TYPE");
            let value: Vec<u8> = match kind.as_str() {
                "string" => redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("GET"),
                "hash" => {
                    let all: Vec<Vec<u8>> =
                        redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await.expect("HGETALL");
                    all.concat()
                }
                "set" => {
                    let all: Vec<Vec<u8>> =
                        redis::cmd("SMEMBERS").arg(&key).query_async(&mut conn).await.expect("SMEMBERS");
                    all.concat()
                }
                other => panic!("unexpected type {other}"),
            };
            let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query_async(&mut conn).await.expect("DUMP");
            out.push((key, [value, dump].concat()));
        }
        out
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.aof_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl TestRedis {
    /// Stops the server as an orchestrator does (SIGTERM: Redis flushes its append-only file and exits) and waits
    /// for it; [`TestRedis::run`] starts it again on the same port and directory.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            assert!(status.is_ok_and(|s| s.success()), "kill -TERM redis-server");
            let exit = child.wait().expect("redis-server exits");
            assert!(exit.success(), "redis-server shuts down cleanly on SIGTERM: {exit}");
        }
    }
}
// ---- Redis over TLS, with credentials, and as a cluster (issue 12: the connection layer) ----------------------

impl TestProxyBuilder {
    /// `[store] backend = "redis"` at `url` (a `rediss://` URL, a comma-separated cluster list, …) with more
    /// `[store]` lines (`redis_ca_file`, `redis_cluster`, …), and [`TEST_STORE_KEY`].
    pub fn redis_at(mut self, url: &str, store_extra: &str) -> Self {
        self.redis = Some(url.to_owned());
        self.redis_store_extra = store_extra.to_owned();
        self
    }
}

/// The config of a proxy on the shared store at `url` with more `[store]` lines, as [`App::new`] is given it (for
/// tests of a start that must fail).
pub fn redis_config(url: &str, store_extra: &str) -> Config {
    let text = dcr_proxy::config::DEFAULT_CONFIG
        .replace("[store]", &format!("[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\n{store_extra}\n"));
    let lookup = |k: &str| (k == "DCR_PROXY_SNAPSHOT_KEY").then(|| TEST_STORE_KEY.to_owned());
    Config::from_toml(&text, lookup).unwrap_or_else(|e| panic!("test config: {e}"))
}

/// A scratch directory under the target directory (`target/tmp`), removed on drop.
pub struct ScratchDir(pub std::path::PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> Self {
        let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = base.join(format!("{name}-{}-{}", std::process::id(), dcr_proxy::crypto::random_token()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    /// Writes `text` to `name` in the directory; its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write scratch file");
        path.display().to_string()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA (rcgen) and what it signed: a server certificate for `127.0.0.1`/`localhost` and a client
/// certificate, all as PEM files in `dir`.
pub struct TestPki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl TestPki {
    pub fn new(dir: &ScratchDir, name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, format!("dcr-proxy test CA {name}"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]);
        let (client_cert, client_key) = leaf(vec!["dcr-proxy".to_owned()]);
        Self {
            ca: dir.write(&format!("{name}-ca.pem"), &ca.pem()),
            server_cert: dir.write(&format!("{name}-server.pem"), &server_cert),
            server_key: dir.write(&format!("{name}-server.key"), &server_key),
            client_cert: dir.write(&format!("{name}-client.pem"), &client_cert),
            client_key: dir.write(&format!("{name}-client.key"), &client_key),
        }
    }
}

/// A `redis-server` started with the given arguments on a port the kernel picked, killed (and waited for) on drop.
pub struct RedisProcess {
    pub port: u16,
    child: std::process::Child,
}

impl RedisProcess {
    /// Starts `redis-server` with `args(port)` (loopback only, no persistence); ready when its port accepts a
    /// connection (within 5 s). Retried on a new port if the first was taken meanwhile.
    pub async fn start(args: impl Fn(u16) -> Vec<String>) -> Self {
        for _ in 0..5 {
            let port = unused_port();
            let child = std::process::Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(args(port))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is installed (.ci/run installs it)");
            let mut process = Self { port, child };
            for _ in 0..100 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return process;
                }
                if let Ok(Some(_)) = process.child.try_wait() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        panic!("redis-server did not start on five fresh ports");
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of three masters (no replicas) on loopback ports, each with an explicit cluster-bus port (its
/// port + 10000 may be taken or out of range), created with `redis-cli --cluster create`; killed on drop.
pub struct TestRedisCluster {
    pub nodes: Vec<RedisProcess>,
    _dir: ScratchDir,
}

impl TestRedisCluster {
    pub async fn start() -> Self {
        let dir = ScratchDir::new("redis-cluster");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let path = dir.0.clone();
            nodes.push(
                RedisProcess::start(move |port| {
                    let bus = unused_port();
                    vec![
                        "--port".into(),
                        port.to_string(),
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        path.join(format!("nodes-{port}.conf")).display().to_string(),
                        "--cluster-port".into(),
                        bus.to_string(),
                        "--dir".into(),
                        path.display().to_string(),
                    ]
                })
                .await,
            );
        }
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed with redis-server");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = Self { nodes, _dir: dir };
        for _ in 0..200 {
            if cluster.all_ok().await {
                return cluster;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the cluster did not reach cluster_state:ok within 10 s");
    }

    /// Every node says `cluster_state:ok`.
    async fn all_ok(&self) -> bool {
        for node in &self.nodes {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}", node.port)) else { return false };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return false };
            let info: String = match redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await {
                Ok(info) => info,
                Err(_) => return false,
            };
            if !info.contains("cluster_state:ok") {
                return false;
            }
        }
        true
    }

    /// The seed list for `store.redis_url` (every node, comma-separated).
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// The keys each node holds (`DBSIZE`), in node order.
    pub async fn keys_per_node(&self) -> Vec<i64> {
        let mut out = Vec::new();
        for node in &self.nodes {
            let client = redis::Client::open(format!("redis://127.0.0.1:{}", node.port)).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            out.push(redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap());
        }
        out
    }
}

impl TestProxy {
    /// Another replica of this one: the same configuration (so the same `public_url` and RFC 8707 resources, as
    /// replicas behind one load balancer have), with its own port, app, caches and clock (set to this one's).
    pub async fn replica(&self) -> TestProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind replica");
        let base = format!("http://{}", listener.local_addr().expect("replica addr"));
        let clock = Clock::manual(self.clock.now());
        let app = App::new_on(self.app.config.clone(), clock.clone(), Some(offline_network())).await.expect("replica");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(dcr_proxy::server::serve(listener, app.clone(), None, async {
            let _ = rx.await;
        }));
        TestProxy { base, app, clock, shutdown: Some(tx), task: Some(task) }
    }
}
impl TestProxyBuilder {
    /// More `[upstream]` keys (`"pool_max_idle = 1\n"`): written on the lines after `url`, so the string goes
    /// after the URL's closing quote and ends in a comment that takes the builder's own closing quote.
    pub fn upstream_keys(mut self, toml: &str) -> Self {
        let url = self.upstream.take().expect("TestProxy::builder().upstream(..) before .upstream_keys(..)");
        self.upstream = Some(format!("{url}\"\n{toml}\n# \""));
        self
    }
}

/// `GET /mcp` through the proxy with `access` as the bearer; the status.
pub async fn get_mcp(proxy: &impl ProxyBase, access: &str) -> u16 {
    http().get(proxy.url("/mcp")).bearer_auth(access).send().await.expect("proxied request").status().as_u16()
}

/// Polls `check` every 20 ms until it holds or `limit` has passed; how long it took (`None`: it never held).
pub async fn within<F: std::future::Future<Output = bool>>(
    limit: std::time::Duration,
    mut check: impl FnMut() -> F,
) -> Option<std::time::Duration> {
    let start = std::time::Instant::now();
    for _ in 0..1000 {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    None
}
