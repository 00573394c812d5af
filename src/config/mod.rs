//! Configuration: `proxy.toml` → raw serde types → a validated [`Config`].
//!
//! Layout, in the order a config is read:
//! - `raw`: the TOML as written (`deny_unknown_fields`, durations through one humantime adapter, `[idp]` an enum
//!   tagged by `kind`);
//! - [`env`](mod@env): the one table of environment variables and what each overrides (secrets, the snapshot key);
//! - [`files`]: the one step that touches the file system (the snapshot key file, `extra_ca_file`), fed by tests;
//! - `validate`: the rules, each error naming its key (`idp.tenant`, `tokens.access_ttl`, …);
//! - this module: the validated types, [`PublicUrl`], [`PathScopes`] and the RFC 6749 §3.3 scope grammar.
//!
//! Config is a leaf: it imports nothing of the request path except the redirect-URI allowlist it builds.
//!
//! Invariants of a validated config: `public_url` is an origin (scheme, host, port; no path, query or fragment)
//! and is the issuer verbatim; plain HTTP is served on a non-loopback address only with
//! `server.behind_tls_terminator = true`; IdP issuers are https except on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

pub mod env;
pub mod files;
pub mod pages;
mod public_url;
mod raw;
mod validate;

pub use files::Files;
pub use public_url::PublicUrl;

/// The shipped `proxy.toml`: local login on loopback, the embedded default.
pub const DEFAULT_CONFIG: &str = include_str!("../../proxy.toml");

/// The hash of the shipped development user's password (`demo-password`, in `proxy.toml`): its presence is warned
/// about at start ([`Config::warnings`]).
const DEVELOPMENT_PASSWORD_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$9gpPZNPbendRUmJ+B80f6w$M1D3xry7fPJePZbhGcGFwNCnHq8QBELZ35VHuxvcOOQ";

/// A config error that names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config is not valid TOML for dcr-proxy: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    /// A key inside an array of tables, such as `routes[1].path_prefix`.
    #[error("config key `{key}`: {message}")]
    InvalidEntry { key: String, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

impl Config {
    /// Reads and validates a config file, with secrets from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text, |name| std::env::var(name).ok())
    }

    /// Parses and validates config text; `env` looks up environment overrides, the files the config names are
    /// read from disk.
    pub fn from_toml(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let raw = raw::parse(text)?;
        let env = env::Env::new(&env);
        let files = Files::read(&raw, &env);
        validate::config(raw, &env, &files)
    }

    /// [`Config::from_toml`] with the files' contents given instead of read: no I/O at all.
    pub fn from_toml_with_files(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
        files: &Files,
    ) -> Result<Self, ConfigError> {
        validate::config(raw::parse(text)?, &env::Env::new(&env), files)
    }

    /// The redirect URI registered at the IdP: `<public_url>/callback`.
    pub fn callback_url(&self) -> String {
        format!("{}/callback", self.server.public_url)
    }

    /// The protected resource's public URL (RFC 9728 `resource`).
    pub fn resource_url(&self) -> String {
        format!("{}{}", self.server.public_url, self.upstream.resource_path)
    }

    /// The RFC 8707 resource of a `[[routes]]` entry: `<public_url><path_prefix>`.
    pub fn route_resource_url(&self, route: &UpstreamRouteConfig) -> String {
        format!("{}{}", self.server.public_url, route.path_prefix)
    }

    /// What is valid but most likely a mistake, one sentence each naming the keys (`check-config` prints them,
    /// `serve` logs them at start): an `upstream.url` that already ends in `upstream.resource_path` (a request for
    /// `/mcp` would go to `…/mcp/mcp`), and the shipped development user's well-known password.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let base = self.upstream.url.path().trim_end_matches('/');
        let resource = self.upstream.resource_path.trim_end_matches('/');
        if !resource.is_empty() && base.ends_with(resource) {
            out.push(format!(
                "upstream.url ({}) already ends in upstream.resource_path ({}): a request for {resource} is sent to \
                 {base}{resource}; set upstream.url to the server's base URL (without {resource})",
                self.upstream.url, self.upstream.resource_path
            ));
        }
        if let IdpProvider::Local { users } = &self.idp.provider {
            if users.iter().any(|u| u.password_hash == DEVELOPMENT_PASSWORD_HASH) {
                out.push(
                    "the local login's development user (password \"demo-password\", from the shipped proxy.toml) is \
                     active: replace [[idp.users]] before anyone else can reach this proxy"
                        .to_owned(),
                );
            }
        }
        out
    }

    /// The `[[routes]]` entry serving a (canonical) request path; `None`: the default `[upstream]`.
    pub fn route_for(&self, path: &str) -> Option<&UpstreamRouteConfig> {
        self.routes.iter().find(|r| r.serves(path))
    }

    /// Whether cookies must carry `Secure` (and may use the `__Host-` prefix).
    pub fn is_https(&self) -> bool {
        self.server.public_url.is_https()
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub idp: IdpConfig,
    pub tokens: TokenConfig,
    pub registration: RegistrationConfig,
    pub client_documents: ClientDocumentsConfig,
    pub limits: LimitsConfig,
    pub introspection: Option<IntrospectionConfig>,
    pub store: StoreConfig,
    /// Where Prometheus metrics are served (a separate listener); off when absent.
    pub metrics_listen: Option<SocketAddr>,
    pub log: LogConfig,
    /// `[policy]`: per-tool authorization of MCP calls (none: requests are forwarded without reading them).
    pub policy: PolicyConfig,
    /// `[pages]`: names, scope descriptions and the logo of the HTML pages.
    pub pages: pages::PagesConfig,
    /// The admin API (a separate listener, [`crate::admin`]); off when absent.
    pub admin: Option<AdminConfig>,
    /// The audit trail ([`crate::audit`]); off when absent.
    pub audit: Option<AuditConfig>,
    /// `[[routes]]` (issue 16 §3): further protected resources beside `[upstream]`, each its own API.
    pub routes: Vec<UpstreamRouteConfig>,
}

/// One `[[routes]]` entry: the protected resource `<public_url><path_prefix>`, forwarded to `url` with an IdP
/// access token for `scopes`. Paths under no route go to `[upstream]`, which stays the default.
#[derive(Debug, Clone)]
pub struct UpstreamRouteConfig {
    /// A plain path (`/graph`): the route serves it and every path below it (`/graph/...`).
    pub path_prefix: String,
    /// Base URL; a request for `/graph/p?q` goes to `<url>/graph/p?q`, as for `[upstream]`.
    pub url: Url,
    /// The IdP scopes of the route's access token (asked by a refresh_token grant).
    pub scopes: Vec<String>,
}

/// Whether `path` is `prefix` or below it, segment-wise (`/graphx` is not under `/graph`; everything is under `/`).
pub fn path_under(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl UpstreamRouteConfig {
    /// Whether `path` is this route's prefix or below it (segment-wise: `/graphx` is not under `/graph`).
    pub fn serves(&self, path: &str) -> bool {
        path_under(&self.path_prefix, path)
    }
}

/// The audit trail: where its lines go and how many may wait for the writer.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub sink: crate::audit::AuditSink,
    pub queue: usize,
}

/// The admin API: where it listens and the token it requires (from `DCR_PROXY_ADMIN_TOKEN`).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: AdminListen,
    pub token: SecretString,
}

/// Where the admin API listens: a TCP address, or a Unix socket (created 0600, so that only the proxy's user can
/// connect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for AdminListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// A 256-bit snapshot key; `Debug` never shows it.
#[derive(Clone)]
pub struct SnapshotKey(pub [u8; 32]);

impl std::fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotKey(<redacted>)")
    }
}

/// Encrypted snapshots of the store (off unless `store.snapshot_path` is set).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub snapshot: Option<SnapshotConfig>,
    /// `store.backend = "redis"`: the shared store; `None` is the in-memory store.
    pub redis: Option<RedisConfig>,
}

/// The shared store on Redis (`store.backend = "redis"`).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `store.redis_url` or `DCR_PROXY_REDIS_URL`; may carry `user:password`, never logged whole.
    pub url: RedisUrl,
    /// The snapshot key: seals IdP tokens in Redis and derives the sign-in keys every replica shares.
    pub key: SnapshotKey,
    /// `store.redis_cache_ttl`: how long a bearer lookup is served from the replica's own cache (≤ 1 s).
    pub cache_ttl: Duration,
    /// `store.redis_cache_entries`: bearer lookups kept per replica at most.
    pub cache_entries: usize,
    /// `store.redis_cluster`: `url` names one or more nodes of a Redis Cluster (comma-separated seeds).
    pub cluster: bool,
    /// `store.redis_ca_file`: the CA (PEM) a `rediss://` server's certificate must chain to; unset: public roots.
    pub ca_file: Option<PathBuf>,
    /// `store.redis_client_cert_file` / `store.redis_client_key_file`: a client certificate (mutual TLS).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// `store.redis_stats_interval`: how often the store's counts (metrics) are taken from Redis at most.
    pub stats_interval: Duration,
    /// How long a replica holds a grant's IdP-refresh lock: the IdP refresh with its retries (three calls of
    /// `idp.timeout` and their pauses) fits within it. Derived, not configured.
    pub refresh_lock: Duration,
}

/// A Redis URL, whose password must never be logged: `Debug` and [`RedisUrl::redacted`] hide it.
#[derive(Clone)]
pub struct RedisUrl(pub String);

impl RedisUrl {
    /// The nodes the URL names: one, or several separated by commas (the seeds of a Redis Cluster).
    pub fn nodes(&self) -> Vec<&str> {
        self.0.split(',').map(str::trim).filter(|n| !n.is_empty()).collect()
    }

    /// The URL with any password replaced by `***`, for logs (each node of a comma-separated cluster list).
    pub fn redacted(&self) -> String {
        self.0.split(',').map(|node| redact_node(node.trim())).collect::<Vec<_>>().join(",")
    }
}

/// One `redis://` URL with its user info replaced by `***`.
fn redact_node(node: &str) -> String {
    match (node.split_once("://"), node.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => node.to_owned(),
        },
        _ => node.to_owned(),
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    pub path: PathBuf,
    pub interval: Duration,
    pub key: SnapshotKey,
    /// The key before a rotation (`DCR_PROXY_SNAPSHOT_KEY_PREVIOUS`): read with it, written with `key`.
    pub previous_key: Option<SnapshotKey>,
    /// Start with an empty store when the snapshot cannot be read, instead of refusing to start.
    pub start_empty_on_error: bool,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The issuer and base of every advertised URL: an origin without a trailing slash.
    pub public_url: PublicUrl,
    pub tls: Option<TlsConfig>,
    pub behind_tls_terminator: bool,
    /// Deadline for in-flight requests (SSE streams included) after a shutdown signal.
    pub shutdown_grace: Duration,
    /// `server.runtime`: the tokio scheduler `main` starts (issue 13); default multi-thread.
    pub runtime: RuntimeKind,
    /// `server.worker_threads`: threads of the multi-thread runtime, or runtimes of `per-core`; `None`: one per
    /// available core (tokio's default). Always `None` with `current-thread`.
    pub worker_threads: Option<usize>,
    /// `server.fast_path`: plain HTTP/1.1 proxied requests served byte-level ([`crate::server::fast_path`],
    /// issue 13); default true (`false`: hyper serves every request).
    pub fast_path: bool,
}

/// `server.runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// `"multi-thread"`: tokio's work-stealing scheduler, one worker per core.
    MultiThread,
    /// `"current-thread"`: every connection on the thread that runs `main` (one core; no cross-thread wake-ups).
    CurrentThread,
    /// `"per-core"`: `server.worker_threads` OS threads, each a current-thread runtime with its own listener on
    /// `server.listen` (`SO_REUSEPORT`, the kernel spreads the connections); Linux only ([`crate::server::per_core`]).
    PerCore,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often the PEM files are checked for a change (certificate renewal without restart).
    pub reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URL; a request for `/p?q` goes to `<url>/p?q`.
    pub url: Url,
    /// The protected resource's path, advertised in RFC 9728 metadata.
    pub resource_path: String,
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers; the body then streams for as long as it needs.
    pub response_timeout: Duration,
    /// Scopes a token needs for a path prefix; a token without them gets 403 `insufficient_scope`.
    pub required_scopes: Vec<PathScopes>,
    /// `upstream.pool_idle_timeout`: an idle upstream connection is closed after this; default 90 s.
    pub pool_idle_timeout: Duration,
    /// `upstream.pool_max_idle`: idle upstream connections kept (0: none, a connection per request); default 256.
    pub pool_max_idle: usize,
    /// `upstream.drive_in_request_task`: an `http://` upstream's connections are driven by the request's own task
    /// ([`crate::proxy::pool`]) instead of a task per connection (hyper-util's client); default true.
    pub drive_in_request_task: bool,
}

#[derive(Debug, Clone)]
pub struct IdpConfig {
    pub provider: IdpProvider,
    /// Scopes asked of the IdP; also the scopes offered to MCP clients.
    pub scopes: Vec<String>,
    /// Timeout of every call to the IdP.
    pub timeout: Duration,
    /// `idp.client_capabilities` (Azure): sent as `{"access_token":{"xms_cc":{"values":[…]}}}` (issue 16 §2).
    pub client_capabilities: Vec<String>,
    /// `idp.max_claims_bytes`: longest claims JSON (decoded challenge, or Entra's) the proxy carries; default 4096.
    pub max_claims_bytes: usize,
    /// `idp.allowed_tenants` (Azure; tenant ids, lower case): the only tenants whose users may sign in. Empty: the
    /// configured tenant decides (a tenant id admits only itself; `common` / `organizations` any tenant).
    pub allowed_tenants: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum IdpProvider {
    /// Microsoft Entra ID v2.0 endpoints under `<authority>/<tenant>/`.
    Azure { authority: Url, tenant: String, client_id: String, client_secret: SecretString },
    /// Any OpenID Connect provider, by discovery at `<issuer>/.well-known/openid-configuration`.
    Oidc { issuer: Url, client_id: String, client_secret: Option<SecretString> },
    /// The built-in login page with users from the config.
    Local { users: Vec<LocalUser> },
}

#[derive(Debug, Clone)]
pub struct LocalUser {
    pub username: String,
    /// PHC string (`$argon2id$…`).
    pub password_hash: String,
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub code_ttl: Duration,
    /// Lifetime of a pending authorization (consent, IdP round trip).
    pub pending_ttl: Duration,
    /// Window in which a replay of a just-rotated refresh token returns the same new pair.
    pub refresh_grace: Duration,
    /// The upstream access token is refreshed this long before it expires (at most half its lifetime ahead).
    pub upstream_refresh_margin: Duration,
    /// Least time between two IdP refreshes of one grant while its token is still valid.
    pub upstream_refresh_floor: Duration,
}

#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// Largest accepted registration body.
    pub max_body_bytes: usize,
    /// Registered clients kept at most; a registration beyond it is refused with 503.
    pub max_clients: usize,
    /// A client that never completed an authorization is removed this long after registering.
    pub unused_client_ttl: Duration,
    /// RFC 7591 §3 initial access token: when set, `/register` requires it as a bearer token.
    pub initial_access_token: Option<SecretString>,
    /// `registration.allowed_redirect_hosts` (hosts redirect URIs may point at; `loopback` stands for 127.0.0.1,
    /// `[::1]` and localhost; empty: any) and the presets of `registration.allow`, combined.
    pub redirect_allowlist: crate::redirect_uri::Allowlist,
    /// `registration.enabled`: whether `/register` (RFC 7591) is open at start; `false` leaves only Client ID
    /// Metadata Documents (and the metadata omits `registration_endpoint`).
    pub enabled: bool,
}

/// Client ID Metadata Documents: a `client_id` that is an https URL names a JSON document the proxy fetches.
#[derive(Debug, Clone)]
pub struct ClientDocumentsConfig {
    /// Whether URL client_ids are accepted (and `client_id_metadata_document_supported` advertised).
    pub enabled: bool,
    /// Hosts documents may be fetched from (`*.example.com` for subdomains); empty: any public host.
    pub allowed_hosts: Vec<String>,
    /// Largest document accepted.
    pub max_bytes: usize,
    /// Deadline of one fetch: resolution, connection, TLS, headers and body.
    pub timeout: Duration,
    /// How long a fetched document is used (less when its `Cache-Control: max-age` says so).
    pub cache_ttl: Duration,
    /// Documents kept in the cache at most.
    pub cache_entries: usize,
    /// Fetches running at once, at most (more get 503 with `Retry-After`).
    pub max_concurrent_fetches: usize,
    /// Extra trust anchors (PEM) for fetching documents, beside the public web PKI.
    pub extra_ca_file: Option<PathBuf>,
    /// Test-only: lets documents be served from loopback addresses. Never set in production.
    pub allow_loopback_for_testing: bool,
    /// How long a failed fetch is remembered (and answered again without fetching), per URL.
    pub failure_ttl: Duration,
    /// A `jwks_uri` is fetched again for an assertion naming an unknown `kid` at most once per this interval.
    pub jwks_refetch_interval: Duration,
}

/// Abuse limits of the public endpoints.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Requests per minute and source address at `/register`, `/token` (and `/revoke`, `/introspect`),
    /// `/authorize` (and `/consent`, `/login`).
    pub register_per_minute: u32,
    pub token_per_minute: u32,
    pub authorize_per_minute: u32,
    /// Authorizations waiting for consent or the IdP, at most.
    pub max_pending: usize,
    /// Time a connection has for its first complete request head (TLS handshake and HTTP/2 preface included),
    /// and an HTTP/1.1 connection for each later request head.
    pub header_timeout: Duration,
    /// Longest `state` accepted at `/authorize` (400 beyond).
    pub max_state_bytes: usize,
    /// Password hashes (argon2, ~19 MiB each) computed at once, at most.
    pub password_checks: usize,
    /// How long a login waits for a free password check before it gets 503 with `Retry-After`.
    pub password_check_wait: Duration,
    /// Failed logins in a row after which a username is locked out.
    pub login_failures: u32,
    /// The first lockout; each further failure after one doubles it, up to 16 times this.
    pub login_lockout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1.1 keep-alive and HTTP/2 alike).
    pub idle_timeout: Duration,
    /// Longest wait for the next piece of a request body; a body that stalls longer is cut (408).
    pub body_timeout: Duration,
    /// Client connections served at once; `None`: 4096, or half the process's open-file limit when lower.
    pub max_connections: Option<usize>,
    /// Client connections per source address (IPv6: per /64); not applied behind a TLS terminator. `None`: a
    /// quarter of the effective `max_connections`, at most 256 (so that a low open-file limit, which lowers the
    /// global cap, lowers this one too).
    pub max_connections_per_source: Option<usize>,
}

/// RFC 7662 introspection for a resource server.
#[derive(Debug, Clone)]
pub struct IntrospectionConfig {
    pub client_id: String,
    pub client_secret: SecretString,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
    /// `log.queue`: log lines waiting for the writer thread; beyond it lines are dropped and counted. Default 65536.
    pub queue: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[policy]`: who may call which MCP tool, resource or prompt (`crate::tool_policy`).
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    /// Largest JSON-RPC body read to decide a call (413 beyond); only read when `rules` is not empty.
    pub max_body_bytes: usize,
    /// `[[policy.tools]]`, in configuration order.
    pub rules: Vec<crate::tool_policy::ToolRule>,
}

/// Scopes a path prefix of the upstream needs (`[[upstream.required_scopes]]`); applied by
/// `oauth::scope::missing_for_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathScopes {
    /// A path such as `/mcp/admin`; matches itself and everything below it, without regard to ASCII case.
    pub path_prefix: String,
    pub scopes: Vec<String>,
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn is_scope_char(c: char) -> bool {
    matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E')
}

/// Private-use-scheme redirect URIs accepted unless `registration.private_use_redirect_uris` says otherwise:
/// Cursor's callback (Cursor registers it beside an https and a loopback URI, and refuses the whole registration
/// when one is refused).
pub const DEFAULT_PRIVATE_USE_REDIRECTS: [&str; 1] = ["cursor://anysphere.cursor-mcp/oauth/callback"];

/// Reads a 256-bit key: 64 hex digits or base64 (standard or URL-safe, padded or not) of 32 bytes.
pub fn parse_snapshot_key(text: &str) -> Option<SnapshotKey> {
    use base64::Engine as _;
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect::<Option<Vec<u8>>>()?
    } else {
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        engines.iter().find_map(|e| e.decode(text).ok())?
    };
    <[u8; 32]>::try_from(bytes.as_slice()).ok().map(SnapshotKey)
}

/// Whether a URL's host is loopback (`localhost`, 127.0.0.0/8, `::1`): where plain http is allowed.
fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether `s` is a GUID in its canonical 8-4-4-4-12 hex form (Entra's `tid` claim and tenant ids).
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const AZURE: &str = r#"
        [server]
        listen = "127.0.0.1:8080"
        public_url = "http://127.0.0.1:8080/"
        [upstream]
        url = "http://127.0.0.1:3000"
        [idp]
        kind = "azure"
        tenant = "common"
        client_id = "app"
    "#;

    fn err_key(text: &str, env: impl Fn(&str) -> Option<String>) -> String {
        match Config::from_toml(text, env) {
            Err(ConfigError::Invalid { key, .. }) => key.to_owned(),
            Err(other) => format!("other: {other}"),
            Ok(_) => "ok".to_owned(),
        }
    }

    #[test]
    fn connection_limits_have_defaults_and_zero_is_refused_by_key() {
        let secret = |k: &str| (k == "AZURE_CLIENT_SECRET").then(|| "s".to_owned());
        let limits = Config::from_toml(AZURE, secret).map(|c| c.limits).map_err(|e| e.to_string());
        let limits = limits.as_ref().map(|l| {
            (l.header_timeout, l.idle_timeout, l.body_timeout, l.max_connections, l.max_connections_per_source)
        });
        let secs = Duration::from_secs;
        assert_eq!(limits, Ok((secs(15), secs(60), secs(10), None, None)));
        for (line, key) in [
            ("idle_timeout = \"0s\"", "limits.idle_timeout"),
            ("body_timeout = \"0s\"", "limits.body_timeout"),
            ("header_timeout = \"0s\"", "limits.header_timeout"),
            ("max_connections = 0", "limits.max_connections"),
            ("max_connections_per_source = 0", "limits.max_connections_per_source"),
        ] {
            assert_eq!(err_key(&format!("{AZURE}[limits]\n{line}\n"), secret), key);
        }
    }

    #[test]
    fn private_use_redirects_default_to_cursor_and_refuse_dangerous_schemes() {
        let secret = |k: &str| (k == "AZURE_CLIENT_SECRET").then(|| "s".to_owned());
        let c = Config::from_toml(AZURE, secret).map_err(|e| e.to_string());
        assert_eq!(
            c.map(|c| c.registration.redirect_allowlist.private_use),
            Ok(vec!["cursor://anysphere.cursor-mcp/oauth/callback".to_owned()])
        );
        for bad in ["javascript://x/y", "https://a.example/cb", "file://h/etc/passwd", "cursor:no-host"] {
            let text = format!("{AZURE}[registration]\nprivate_use_redirect_uris = [\"{bad}\"]\n");
            assert_eq!(err_key(&text, secret), "registration.private_use_redirect_uris", "{bad}");
        }
    }

    #[test]
    fn required_scopes_must_be_offered_paths() {
        let secret = |k: &str| (k == "AZURE_CLIENT_SECRET").then(|| "s".to_owned());
        let rule = |prefix: &str, scopes: &str| {
            format!("{AZURE}scopes = [\"openid\", \"User.Read\"]\n[[upstream.required_scopes]]\npath_prefix = \"{prefix}\"\nscopes = {scopes}\n")
        };
        let ok = Config::from_toml(&rule("/mcp/admin", "[\"User.Read\"]"), secret).map_err(|e| e.to_string());
        assert_eq!(ok.map(|c| c.upstream.required_scopes.len()), Ok(1));
        for (prefix, scopes, needle) in [
            ("/mcp/admin", "[\"Mail.Send\"]", "Mail.Send"),
            ("mcp", "[\"User.Read\"]", "path_prefix"),
            ("/mcp", "[]", "at least one"),
            ("/mcp/café", "[\"User.Read\"]", "plain path"),
            ("/mcp/my files", "[\"User.Read\"]", "plain path"),
            ("/mcp/%61dmin", "[\"User.Read\"]", "plain path"),
            ("/mcp/admin.", "[\"User.Read\"]", "plain path"),
            ("/mcp/../admin", "[\"User.Read\"]", "plain path"),
        ] {
            let err = Config::from_toml(&rule(prefix, scopes), secret).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("upstream.required_scopes") && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn tool_policy_rules_are_checked_by_key_and_registration_is_on_by_default() {
        let secret = |k: &str| (k == "AZURE_CLIENT_SECRET").then(|| "s".to_owned());
        let with = |policy: &str| format!("{AZURE}scopes = [\"openid\", \"User.Read\"]\n{policy}");
        let ok = Config::from_toml(&with("[[policy.tools]]\nmatch = \"delete_*\"\nscopes = [\"User.Read\"]\n"), secret)
            .map_err(|e| e.to_string());
        assert_eq!(ok.as_ref().map(|c| (c.policy.rules.len(), c.policy.max_body_bytes)), Ok((1, 1024 * 1024)));
        assert_eq!(ok.map(|c| c.registration.enabled), Ok(true));
        for (policy, key) in [
            ("[[policy.tools]]\nmatch = \"x\"\n", "policy.tools"),
            ("[[policy.tools]]\nmatch = \"\"\ngroups = [\"g\"]\n", "policy.tools"),
            ("[[policy.tools]]\nmatch = \"x\"\nscopes = [\"Mail.Send\"]\n", "policy.tools"),
            ("[[policy.tools]]\nmatch = \"x\"\ngroups = [\" \"]\n", "policy.tools"),
            ("[policy]\nmax_body_bytes = 10\n", "policy.max_body_bytes"),
        ] {
            assert_eq!(err_key(&with(policy), secret), key, "{policy}");
        }
        let off = Config::from_toml(&format!("{AZURE}[registration]\nenabled = false\n"), secret);
        assert_eq!(off.map(|c| c.registration.enabled).map_err(|e| e.to_string()), Ok(false));
    }

    #[test]
    fn an_empty_snapshot_key_variable_is_named() {
        let text = DEFAULT_CONFIG.replace("[store]", "[store]\nsnapshot_path = \"/tmp/x.snapshot\"");
        for value in ["", "  ", "not-a-key"] {
            let env = |k: &str| (k == "DCR_PROXY_SNAPSHOT_KEY").then(|| value.to_owned());
            let err = Config::from_toml(&text, env).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.contains("`DCR_PROXY_SNAPSHOT_KEY`") && !err.contains("snapshot_key_file`"),
                "{value:?}: {err}"
            );
        }
    }

    #[test]
    fn embedded_default_config_is_valid() {
        let c = Config::from_toml(DEFAULT_CONFIG, no_env).map_err(|e| e.to_string());
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn shipped_docker_config_is_valid_with_secrets_from_env() {
        let env = |k: &str| match k {
            "AZURE_TENANT_ID" => Some("9188040d-6c67-4c5b-b112-36a304b66dad".to_owned()),
            "AZURE_CLIENT_ID" => Some("app".to_owned()),
            "AZURE_CLIENT_SECRET" => Some("secret".to_owned()),
            "DCR_PROXY_SNAPSHOT_KEY" => Some("q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=".to_owned()),
            _ => None,
        };
        let c = Config::from_toml(include_str!("../../deploy/proxy.toml"), env).map_err(|e| e.to_string());
        assert!(c.is_ok(), "{c:?}");
        assert_eq!(err_key(include_str!("../../deploy/proxy.toml"), no_env), "idp.tenant");
        // Issue 26 item 5: every missing id in one run, each variable named.
        let all_missing =
            Config::from_toml(include_str!("../../deploy/proxy.toml"), no_env).err().map(|e| e.to_string());
        let message = all_missing.unwrap_or_default();
        for name in ["idp.client_id", "idp.client_secret", "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"]
        {
            assert!(message.contains(name), "{name} in: {message}");
        }
    }

    #[test]
    fn the_shipped_development_password_is_warned_about_and_its_hash_is_the_shipped_one() {
        let shipped = Config::from_toml(DEFAULT_CONFIG, no_env).unwrap_or_else(|e| panic!("{e}"));
        assert!(DEFAULT_CONFIG.contains(DEVELOPMENT_PASSWORD_HASH), "the constant follows proxy.toml");
        assert!(shipped.warnings().iter().any(|w| w.contains("demo-password")), "{:?}", shipped.warnings());
        let own = DEFAULT_CONFIG.replace(
            DEVELOPMENT_PASSWORD_HASH,
            "$argon2id$v=19$m=19456,t=2,p=1$b3RoZXJzYWx0$b3RoZXJoYXNob3RoZXJoYXNob3RoZXJoYXNob3RoZXI",
        );
        let own = Config::from_toml(&own, no_env).unwrap_or_else(|e| panic!("{e}"));
        assert!(own.warnings().is_empty(), "{:?}", own.warnings());
    }

    #[test]
    fn azure_secret_comes_from_env_and_missing_secret_names_the_key() {
        assert_eq!(err_key(AZURE, no_env), "idp.client_secret");
        let c = Config::from_toml(AZURE, |k| (k == "AZURE_CLIENT_SECRET").then(|| "s".to_owned()));
        let c = c.map_err(|e| e.to_string());
        assert!(c.is_ok(), "{c:?}");
        if let Ok(c) = c {
            assert_eq!(c.server.public_url, "http://127.0.0.1:8080");
        }
    }

    #[test]
    fn env_overrides_tenant() {
        let c = Config::from_toml(AZURE, |k| match k {
            "AZURE_CLIENT_SECRET" => Some("s".into()),
            "AZURE_TENANT_ID" => Some("contoso.onmicrosoft.com".into()),
            _ => None,
        });
        match c.map(|c| c.idp.provider) {
            Ok(IdpProvider::Azure { tenant, .. }) => assert_eq!(tenant, "contoso.onmicrosoft.com"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let secret = |k: &str| (k == "AZURE_CLIENT_SECRET").then(|| "s".to_owned());
        assert_eq!(err_key(&AZURE.replace("127.0.0.1:8080\"\n", "nope\"\n"), secret), "server.listen");
        assert_eq!(
            err_key(&AZURE.replace("http://127.0.0.1:8080/", "http://example.com"), secret),
            "server.public_url"
        );
        assert_eq!(
            err_key(&AZURE.replace("http://127.0.0.1:8080/", "https://x.example/base"), secret),
            "server.public_url"
        );
        assert_eq!(err_key(&AZURE.replace("\"azure\"", "\"saml\""), secret), "idp.kind");
        assert_eq!(err_key(&format!("{AZURE}\n[tokens]\naccess_ttl = \"soon\""), secret), "tokens.access_ttl");
        assert_eq!(err_key(&AZURE.replace("tenant = \"common\"", ""), secret), "idp.tenant");
        assert_eq!(
            err_key(&AZURE.replace("listen = \"127.0.0.1:8080\"", "listen = \"0.0.0.0:8080\""), secret),
            "server.listen"
        );
    }

    #[test]
    fn sign_in_and_login_limits_name_their_key() {
        let secret = |k: &str| (k == "AZURE_CLIENT_SECRET").then(|| "s".to_owned());
        for (line, key) in [
            ("max_state_bytes = 10", "limits.max_state_bytes"),
            ("password_checks = 0", "limits.password_checks"),
            ("password_check_wait = \"2m\"", "limits.password_check_wait"),
            ("login_failures = 0", "limits.login_failures"),
            ("login_lockout = \"0s\"", "limits.login_lockout"),
        ] {
            assert_eq!(err_key(&format!("{AZURE}[limits]\n{line}\n"), secret), key, "{line}");
        }
        let c = Config::from_toml(AZURE, secret).map_err(|e| e.to_string());
        let limits = c.map(|c| (c.limits.max_state_bytes, c.limits.login_failures, c.limits.password_checks >= 1));
        assert_eq!(limits, Ok((1024, 5, true)));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let text = AZURE.replace("[idp]", "[idp]\ntennant = \"x\"");
        match Config::from_toml(&text, no_env) {
            Err(ConfigError::Parse(msg)) => assert!(msg.contains("tennant"), "{msg}"),
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn upstream_refresh_floor_defaults_to_30s_and_is_bounded() {
        let secret = |k: &str| (k == "AZURE_CLIENT_SECRET").then(|| "s".to_owned());
        let c = Config::from_toml(AZURE, secret).map_err(|e| e.to_string());
        assert_eq!(c.map(|c| c.tokens.upstream_refresh_floor), Ok(Duration::from_secs(30)));
        for bad in ["0s", "2h", "soon"] {
            let text = format!("{AZURE}\n[tokens]\nupstream_refresh_floor = \"{bad}\"");
            assert_eq!(err_key(&text, secret), "tokens.upstream_refresh_floor", "{bad}");
        }
    }

    #[test]
    fn client_capabilities_and_the_claims_cap_are_validated_by_key() {
        let secret = |k: &str| (k == "AZURE_CLIENT_SECRET").then(|| "s".to_owned());
        let with = |extra: &str| AZURE.replacen("kind = \"azure\"", &format!("kind = \"azure\"\n{extra}"), 1);
        let c = Config::from_toml(&with("client_capabilities = [\"cp1\"]"), secret).map_err(|e| e.to_string());
        assert_eq!(c.map(|c| (c.idp.client_capabilities, c.idp.max_claims_bytes)), Ok((vec!["cp1".to_owned()], 4096)));
        assert_eq!(err_key(&with("client_capabilities = [\"cp 1\"]"), secret), "idp.client_capabilities");
        assert_eq!(err_key(&with("client_capabilities = [\"\"]"), secret), "idp.client_capabilities");
        assert_eq!(err_key(&with("max_claims_bytes = 10"), secret), "idp.max_claims_bytes");
        assert_eq!(err_key(&with("max_claims_bytes = 100000"), secret), "idp.max_claims_bytes");
    }

    #[test]
    fn the_redis_backend_needs_a_url_and_the_key_and_names_them() {
        let redis = |store: &str| DEFAULT_CONFIG.replace("[store]", &format!("[store]\n{store}"));
        let key = |name: &str| (name == "DCR_PROXY_SNAPSHOT_KEY").then(|| "ab".repeat(32));
        let url_env = |name: &str| match name {
            "DCR_PROXY_REDIS_URL" => Some("redis://env:6379/1".to_owned()),
            other => key(other),
        };
        assert_eq!(err_key(&redis("backend = \"redis\""), key), "store.redis_url");
        let with_url = redis("backend = \"redis\"\nredis_url = \"redis://u:pw@r:6379/0\"");
        assert_eq!(err_key(&with_url, no_env), "store.snapshot_key_file");
        let config = Config::from_toml(&with_url, key).map_err(|e| e.to_string());
        let redis_config = config.map(|c| c.store.redis.map(|r| (r.url.redacted(), r.cache_ttl, r.cache_entries)));
        assert_eq!(redis_config, Ok(Some(("redis://***@r:6379/0".to_owned(), Duration::from_secs(1), 100_000))));
        let config = Config::from_toml(&with_url, url_env).map_err(|e| e.to_string());
        assert_eq!(config.map(|c| c.store.redis.map(|r| r.url.0)), Ok(Some("redis://env:6379/1".to_owned())));
        assert_eq!(err_key(&redis("backend = \"etcd\""), key), "store.backend");
        let ca_on_plain = redis("backend = \"redis\"\nredis_url = \"redis://r\"\nredis_ca_file = \"/ca.pem\"");
        assert_eq!(err_key(&ca_on_plain, key), "store.redis_ca_file");
        let cert_alone = redis("backend = \"redis\"\nredis_url = \"rediss://r\"\nredis_client_cert_file = \"/c.pem\"");
        assert_eq!(err_key(&cert_alone, key), "store.redis_client_key_file");
        let list = "backend = \"redis\"\nredis_url = \"redis://u:pw@a:1, redis://u:pw@b:2\"";
        assert_eq!(err_key(&redis(list), key), "store.redis_url", "several nodes need redis_cluster = true");
        let cluster =
            Config::from_toml(&redis(&format!("{list}\nredis_cluster = true")), key).map_err(|e| e.to_string());
        let shown = cluster.map(|c| c.store.redis.map(|r| (r.cluster, r.url.redacted(), r.stats_interval)));
        assert_eq!(shown, Ok(Some((true, "redis://***@a:1,redis://***@b:2".to_owned(), Duration::from_secs(30)))));
        let mixed = "backend = \"redis\"\nredis_url = \"redis://a:1,rediss://b:2\"\nredis_cluster = true";
        assert_eq!(err_key(&redis(mixed), key), "store.redis_url");
        let tls = Config::from_toml(&redis("backend = \"redis\"\nredis_url = \"rediss://r\""), key);
        assert!(
            tls.is_ok_and(|c| c.store.redis.is_some_and(|r| r.ca_file.is_none())),
            "rediss:// with the public roots"
        );
        assert_eq!(err_key(&redis("backend = \"redis\"\nredis_url = \"http://r\""), key), "store.redis_url");
        let long_ttl = redis("backend = \"redis\"\nredis_url = \"redis://r\"\nredis_cache_ttl = \"2s\"");
        assert_eq!(err_key(&long_ttl, key), "store.redis_cache_ttl");
        let no_entries = redis("backend = \"redis\"\nredis_url = \"redis://r\"\nredis_cache_entries = 0");
        assert_eq!(err_key(&no_entries, key), "store.redis_cache_entries");
        let with_snapshot = redis("backend = \"redis\"\nredis_url = \"redis://r\"\nsnapshot_path = \"/tmp/s\"");
        assert_eq!(err_key(&with_snapshot, key), "store.snapshot_path");
        assert!(!format!("{:?}", RedisUrl("redis://u:secret@h/0".into())).contains("secret"));
    }
}
