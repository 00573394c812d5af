//! Configuration: `proxy.toml` → raw serde structs (`deny_unknown_fields`) → a validated [`Config`].
//!
//! Every error names the config key it is about (`idp.tenant`, `tokens.access_ttl`, …). Secrets may come from the
//! environment, read through a function that tests can feed without touching the process environment:
//! `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET` override the `azure` keys, `OIDC_CLIENT_SECRET`
//! the `oidc` client secret.
//!
//! Invariants of a validated config: `public_url` is an origin (scheme, host, port; no path, query or fragment)
//! and is the issuer verbatim; plain HTTP is served on a non-loopback address only with
//! `server.behind_tls_terminator = true`; IdP issuers are https except on loopback.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

/// The shipped `proxy.toml`: local login on loopback, the embedded default.
pub const DEFAULT_CONFIG: &str = include_str!("../proxy.toml");

/// A config error that names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config is not valid TOML for dcr-proxy: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
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
}

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
    pub public_url: String,
    pub tls: Option<TlsConfig>,
    pub behind_tls_terminator: bool,
    /// Deadline for in-flight requests (SSE streams included) after a shutdown signal.
    pub shutdown_grace: Duration,
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
    pub required_scopes: Vec<crate::oauth::scope::PathScopes>,
}

#[derive(Debug, Clone)]
pub struct IdpConfig {
    pub provider: IdpProvider,
    /// Scopes asked of the IdP; also the scopes offered to MCP clients.
    pub scopes: Vec<String>,
    /// Timeout of every call to the IdP.
    pub timeout: Duration,
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
    /// Hosts redirect URIs may point at (`loopback` stands for 127.0.0.1, `[::1]` and localhost); empty: any.
    pub allowed_redirect_hosts: Vec<String>,
    /// `allowed_redirect_hosts` and the presets of `registration.allow`, combined.
    pub redirect_allowlist: crate::oauth::redirect_uri::Allowlist,
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
    /// Client connections per source address (IPv6: per /64); not applied behind a TLS terminator.
    pub max_connections_per_source: usize,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

// ---- raw TOML ------------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    upstream: RawUpstream,
    idp: RawIdp,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    registration: RawRegistration,
    #[serde(default)]
    client_metadata_documents: RawClientDocuments,
    #[serde(default)]
    limits: RawLimits,
    introspection: Option<RawIntrospection>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    public_url: String,
    tls: Option<RawTls>,
    #[serde(default)]
    behind_tls_terminator: bool,
    shutdown_grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    reload_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    #[serde(default = "default_resource_path")]
    resource_path: String,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    #[serde(default)]
    required_scopes: Vec<RawPathScopes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPathScopes {
    path_prefix: String,
    scopes: Vec<String>,
}

fn default_resource_path() -> String {
    "/mcp".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdp {
    kind: String,
    scopes: Option<Vec<String>>,
    timeout: Option<String>,
    // azure
    authority: Option<String>,
    tenant: Option<String>,
    // azure + oidc
    client_id: Option<String>,
    client_secret: Option<String>,
    // oidc
    issuer: Option<String>,
    // local
    #[serde(default)]
    users: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: String,
    password_hash: String,
    email: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    access_ttl: Option<String>,
    refresh_ttl: Option<String>,
    code_ttl: Option<String>,
    pending_ttl: Option<String>,
    refresh_grace: Option<String>,
    upstream_refresh_margin: Option<String>,
    upstream_refresh_floor: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRegistration {
    max_body_bytes: Option<usize>,
    max_clients: Option<usize>,
    unused_client_ttl: Option<String>,
    initial_access_token: Option<String>,
    #[serde(default)]
    allowed_redirect_hosts: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    private_use_redirect_uris: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClientDocuments {
    enabled: Option<bool>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    max_bytes: Option<usize>,
    timeout: Option<String>,
    cache_ttl: Option<String>,
    cache_entries: Option<usize>,
    max_concurrent_fetches: Option<usize>,
    extra_ca_file: Option<PathBuf>,
    #[serde(default)]
    allow_loopback_for_testing: bool,
    failure_ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    register_per_minute: Option<u32>,
    token_per_minute: Option<u32>,
    authorize_per_minute: Option<u32>,
    max_pending: Option<usize>,
    header_timeout: Option<String>,
    max_state_bytes: Option<usize>,
    password_checks: Option<usize>,
    password_check_wait: Option<String>,
    login_failures: Option<u32>,
    login_lockout: Option<String>,
    idle_timeout: Option<String>,
    body_timeout: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    snapshot_path: Option<PathBuf>,
    snapshot_interval: Option<String>,
    snapshot_key_file: Option<PathBuf>,
    #[serde(default)]
    start_empty_on_bad_snapshot: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    client_id: String,
    client_secret: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    filter: Option<String>,
}

// ---- validation ----------------------------------------------------------------------------------------------

impl Config {
    /// Reads and validates a config file, with secrets from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text, |name| std::env::var(name).ok())
    }

    /// Parses and validates config text; `env` looks up environment overrides.
    pub fn from_toml(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let server = validate_server(raw.server)?;
        let upstream = validate_upstream(raw.upstream)?;
        let idp = validate_idp(raw.idp, &env)?;
        let upstream = validate_required_scopes(upstream, &idp.scopes)?;
        let tokens = validate_tokens(raw.tokens)?;
        let registration = validate_registration(raw.registration, &env)?;
        let client_documents = validate_client_documents(raw.client_metadata_documents)?;
        let limits = validate_limits(raw.limits)?;
        let introspection = match raw.introspection {
            None => None,
            Some(i) => {
                if i.client_id.is_empty() {
                    return Err(invalid("introspection.client_id", "must not be empty"));
                }
                let secret = env("DCR_PROXY_INTROSPECTION_SECRET").or(i.client_secret).filter(|s| s.len() >= 16);
                let secret = secret.ok_or_else(|| {
                    invalid(
                        "introspection.client_secret",
                        "is required (16 characters or more): set DCR_PROXY_INTROSPECTION_SECRET",
                    )
                })?;
                Some(IntrospectionConfig { client_id: i.client_id, client_secret: SecretString::from(secret) })
            }
        };
        let store = validate_store(raw.store, &env)?;
        let metrics_listen = match raw.metrics.listen {
            None => None,
            Some(a) => Some(
                a.parse::<SocketAddr>()
                    .map_err(|_| invalid("metrics.listen", format!("`{a}` is not an address like 127.0.0.1:9090")))?,
            ),
        };
        let log = LogConfig {
            format: raw.log.format.unwrap_or(LogFormat::Text),
            filter: raw.log.filter.unwrap_or_else(|| "info".to_owned()),
        };
        Ok(Self {
            server,
            upstream,
            idp,
            tokens,
            registration,
            client_documents,
            limits,
            introspection,
            store,
            metrics_listen,
            log,
        })
    }

    /// The redirect URI registered at the IdP: `<public_url>/callback`.
    pub fn callback_url(&self) -> String {
        format!("{}/callback", self.server.public_url)
    }

    /// The protected resource's public URL (RFC 9728 `resource`).
    pub fn resource_url(&self) -> String {
        format!("{}{}", self.server.public_url, self.upstream.resource_path)
    }

    /// Whether cookies must carry `Secure` (and may use the `__Host-` prefix).
    pub fn is_https(&self) -> bool {
        self.server.public_url.starts_with("https://")
    }
}

fn duration(key: &'static str, value: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => humantime::parse_duration(&text)
            .map_err(|e| invalid(key, format!("`{text}` is not a duration like \"10m\" or \"30d\": {e}"))),
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn validate_server(raw: RawServer) -> Result<ServerConfig, ConfigError> {
    let listen: SocketAddr = raw
        .listen
        .parse()
        .map_err(|_| invalid("server.listen", format!("`{}` is not an address like 127.0.0.1:8080", raw.listen)))?;
    let url = Url::parse(&raw.public_url)
        .map_err(|e| invalid("server.public_url", format!("`{}` is not a URL: {e}", raw.public_url)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid("server.public_url", "must be an http:// or https:// URL with a host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid(
            "server.public_url",
            "must be an origin such as https://mcp.example.com (no path, query, fragment or user)",
        ));
    }
    if url.scheme() == "http" && !is_loopback_host(&url) && !raw.behind_tls_terminator {
        return Err(invalid(
            "server.public_url",
            "http:// is allowed only on loopback; use https:// or set server.behind_tls_terminator = true",
        ));
    }
    let public_url = url.as_str().trim_end_matches('/').to_owned();
    let tls = match raw.tls {
        None => None,
        Some(t) => Some(TlsConfig {
            cert: t.cert,
            key: t.key,
            reload_interval: duration("server.tls.reload_interval", t.reload_interval, Duration::from_secs(30))?,
        }),
    };
    if tls.is_none() && !listen.ip().is_loopback() && !raw.behind_tls_terminator {
        return Err(invalid(
            "server.listen",
            format!(
                "plain HTTP on the non-loopback address {listen}: configure [server.tls] or set \
                 server.behind_tls_terminator = true"
            ),
        ));
    }
    Ok(ServerConfig {
        listen,
        public_url,
        tls,
        behind_tls_terminator: raw.behind_tls_terminator,
        shutdown_grace: duration("server.shutdown_grace", raw.shutdown_grace, Duration::from_secs(10))?,
    })
}

fn validate_upstream(raw: RawUpstream) -> Result<UpstreamConfig, ConfigError> {
    let url = Url::parse(&raw.url).map_err(|e| invalid("upstream.url", format!("`{}` is not a URL: {e}", raw.url)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid("upstream.url", "must be an http:// or https:// URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("upstream.url", "must not have a query or fragment"));
    }
    if !raw.resource_path.starts_with('/') || raw.resource_path.contains(['?', '#']) {
        return Err(invalid("upstream.resource_path", "must be a path starting with / such as \"/mcp\""));
    }
    Ok(UpstreamConfig {
        url,
        resource_path: raw.resource_path,
        connect_timeout: duration("upstream.connect_timeout", raw.connect_timeout, Duration::from_secs(5))?,
        response_timeout: duration("upstream.response_timeout", raw.response_timeout, Duration::from_secs(60))?,
        required_scopes: raw
            .required_scopes
            .into_iter()
            .map(|r| crate::oauth::scope::PathScopes { path_prefix: r.path_prefix, scopes: r.scopes })
            .collect(),
    })
}

/// `upstream.required_scopes`: each prefix is a path, each scope one the proxy offers (`idp.scopes`), or no token
/// could ever satisfy the rule.
fn validate_required_scopes(upstream: UpstreamConfig, offered: &[String]) -> Result<UpstreamConfig, ConfigError> {
    const KEY: &str = "upstream.required_scopes";
    for (i, rule) in upstream.required_scopes.iter().enumerate() {
        if !rule.path_prefix.starts_with('/') || rule.path_prefix.contains(['?', '#']) {
            return Err(invalid(
                KEY,
                format!("entry {i}: path_prefix `{}` must be a path starting with /", rule.path_prefix),
            ));
        }
        // Rules are compared with the canonical forwarded path, which never holds these.
        let dot_segment = rule.path_prefix.split('/').any(|s| s == "." || s == "..");
        if dot_segment || rule.path_prefix.contains(['%', ';', '\\']) || rule.path_prefix.contains("//") {
            return Err(invalid(
                KEY,
                format!(
                    "entry {i}: path_prefix `{}` must be a plain path (no %-escapes, `;`, `\\`, `//` or dot segments)",
                    rule.path_prefix
                ),
            ));
        }
        if rule.scopes.is_empty() {
            return Err(invalid(KEY, format!("entry {i} ({}): scopes must name at least one scope", rule.path_prefix)));
        }
        if let Some(unknown) = rule.scopes.iter().find(|s| !offered.contains(s)) {
            return Err(invalid(
                KEY,
                format!(
                    "entry {i} ({}): scope `{unknown}` is not in idp.scopes, so no token could carry it",
                    rule.path_prefix
                ),
            ));
        }
    }
    Ok(upstream)
}

fn required(key: &'static str, value: Option<String>) -> Result<String, ConfigError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(invalid(key, "is required for this idp.kind")),
    }
}

fn validate_idp(raw: RawIdp, env: &impl Fn(&str) -> Option<String>) -> Result<IdpConfig, ConfigError> {
    let timeout = duration("idp.timeout", raw.timeout, Duration::from_secs(10))?;
    let provider = match raw.kind.as_str() {
        "azure" => {
            let authority_text = raw.authority.unwrap_or_else(|| "https://login.microsoftonline.com".to_owned());
            let authority = Url::parse(&authority_text)
                .map_err(|e| invalid("idp.authority", format!("`{authority_text}` is not a URL: {e}")))?;
            if authority.scheme() != "https" && !(authority.scheme() == "http" && is_loopback_host(&authority)) {
                return Err(invalid("idp.authority", "must be https (http only on loopback, for tests)"));
            }
            let tenant = required("idp.tenant", env("AZURE_TENANT_ID").or(raw.tenant))?;
            if !tenant.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
                return Err(invalid("idp.tenant", "must be a tenant id, domain, `common` or `organizations`"));
            }
            let client_id = required("idp.client_id", env("AZURE_CLIENT_ID").or(raw.client_id))?;
            let client_secret = required("idp.client_secret", env("AZURE_CLIENT_SECRET").or(raw.client_secret))
                .map_err(|_| invalid("idp.client_secret", "is required: set AZURE_CLIENT_SECRET in the environment"))?;
            IdpProvider::Azure { authority, tenant, client_id, client_secret: SecretString::from(client_secret) }
        }
        "oidc" => {
            let issuer_text = required("idp.issuer", raw.issuer)?;
            let issuer = Url::parse(&issuer_text)
                .map_err(|e| invalid("idp.issuer", format!("`{issuer_text}` is not a URL: {e}")))?;
            if issuer.scheme() != "https" && !(issuer.scheme() == "http" && is_loopback_host(&issuer)) {
                return Err(invalid("idp.issuer", "must be https (http only on loopback)"));
            }
            let client_id = required("idp.client_id", raw.client_id)?;
            let client_secret = env("OIDC_CLIENT_SECRET").or(raw.client_secret).map(SecretString::from);
            IdpProvider::Oidc { issuer, client_id, client_secret }
        }
        "local" => {
            if raw.users.is_empty() {
                return Err(invalid("idp.users", "local login needs at least one [[idp.users]] entry"));
            }
            let mut users = Vec::with_capacity(raw.users.len());
            for u in raw.users {
                if u.username.is_empty() {
                    return Err(invalid("idp.users.username", "must not be empty"));
                }
                if argon2::PasswordHash::new(&u.password_hash).is_err() {
                    return Err(invalid(
                        "idp.users.password_hash",
                        format!("user `{}`: not a PHC hash; create one with `dcr-proxy hash-password`", u.username),
                    ));
                }
                users.push(LocalUser {
                    username: u.username,
                    password_hash: u.password_hash,
                    email: u.email,
                    name: u.name,
                });
            }
            IdpProvider::Local { users }
        }
        other => {
            return Err(invalid("idp.kind", format!("`{other}` is not one of \"azure\", \"oidc\", \"local\"")));
        }
    };
    let scopes = match raw.scopes {
        Some(s) => s,
        None => match provider {
            IdpProvider::Azure { .. } => {
                vec!["openid", "profile", "email", "offline_access", "User.Read"]
            }
            IdpProvider::Oidc { .. } => vec!["openid", "profile", "email", "offline_access"],
            IdpProvider::Local { .. } => vec!["openid", "profile", "email"],
        }
        .into_iter()
        .map(str::to_owned)
        .collect(),
    };
    if scopes.is_empty() {
        return Err(invalid("idp.scopes", "must name at least one scope"));
    }
    if let Some(bad) = scopes.iter().find(|s| s.is_empty() || !s.chars().all(is_scope_char)) {
        return Err(invalid("idp.scopes", format!("`{bad}` is not a valid scope token (RFC 6749 §3.3)")));
    }
    Ok(IdpConfig { provider, scopes, timeout })
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn is_scope_char(c: char) -> bool {
    matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E')
}

/// Private-use-scheme redirect URIs accepted unless `registration.private_use_redirect_uris` says otherwise:
/// Cursor's callback (Cursor registers it beside an https and a loopback URI, and refuses the whole registration
/// when one is refused).
pub const DEFAULT_PRIVATE_USE_REDIRECTS: [&str; 1] = ["cursor://anysphere.cursor-mcp/oauth/callback"];

fn validate_registration(
    raw: RawRegistration,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<RegistrationConfig, ConfigError> {
    let initial_access_token = env("DCR_PROXY_INITIAL_ACCESS_TOKEN").or(raw.initial_access_token);
    if initial_access_token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(invalid("registration.initial_access_token", "must be at least 16 characters"));
    }
    if let Some(bad) = raw.allowed_redirect_hosts.iter().find(|h| h.is_empty() || h.contains(['/', ':', ' '])) {
        return Err(invalid(
            "registration.allowed_redirect_hosts",
            format!("`{bad}` is not a host name such as \"claude.ai\" (or \"loopback\")"),
        ));
    }
    let allowed_redirect_hosts: Vec<String> =
        raw.allowed_redirect_hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect();
    let private_use = raw
        .private_use_redirect_uris
        .unwrap_or_else(|| DEFAULT_PRIVATE_USE_REDIRECTS.iter().map(|s| (*s).to_owned()).collect());
    for uri in &private_use {
        crate::oauth::redirect_uri::validate_private_use(uri)
            .map_err(|e| invalid("registration.private_use_redirect_uris", e))?;
    }
    let mut redirect_allowlist =
        crate::oauth::redirect_uri::Allowlist { hosts: allowed_redirect_hosts.clone(), prefixes: vec![], private_use };
    for name in &raw.allow {
        let preset = crate::oauth::redirect_uri::preset(name).ok_or_else(|| {
            invalid(
                "registration.allow",
                format!(
                    "`{name}` is not a preset; use \"claude\", \"chatgpt\", \"cursor\", \"vscode\" or \"loopback\""
                ),
            )
        })?;
        redirect_allowlist.hosts.extend(preset.hosts);
        redirect_allowlist.prefixes.extend(preset.prefixes);
    }
    let max_clients = raw.max_clients.unwrap_or(10_000);
    if max_clients == 0 {
        return Err(invalid("registration.max_clients", "must be at least 1"));
    }
    Ok(RegistrationConfig {
        max_body_bytes: raw.max_body_bytes.unwrap_or(16 * 1024),
        max_clients,
        unused_client_ttl: duration(
            "registration.unused_client_ttl",
            raw.unused_client_ttl,
            Duration::from_secs(24 * 3600),
        )?,
        initial_access_token: initial_access_token.map(SecretString::from),
        redirect_allowlist,
        allowed_redirect_hosts,
    })
}

fn validate_client_documents(raw: RawClientDocuments) -> Result<ClientDocumentsConfig, ConfigError> {
    const HOSTS: &str = "client_metadata_documents.allowed_hosts";
    let mut allowed_hosts = Vec::with_capacity(raw.allowed_hosts.len());
    for host in raw.allowed_hosts {
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        if bare.is_empty() || bare.contains(['/', ':', ' ', '*', '@']) {
            return Err(invalid(
                HOSTS,
                format!("`{host}` is not a host name such as \"claude.ai\" or \"*.example.com\""),
            ));
        }
        allowed_hosts.push(host.to_ascii_lowercase());
    }
    let max_bytes = raw.max_bytes.unwrap_or(5 * 1024);
    if !(256..=64 * 1024).contains(&max_bytes) {
        return Err(invalid("client_metadata_documents.max_bytes", "must be between 256 and 65536"));
    }
    let timeout = duration("client_metadata_documents.timeout", raw.timeout, Duration::from_secs(5))?;
    if timeout.is_zero() || timeout > Duration::from_secs(30) {
        return Err(invalid("client_metadata_documents.timeout", "must be more than 0 and at most 30s"));
    }
    let cache_entries = raw.cache_entries.unwrap_or(1024);
    if cache_entries == 0 {
        return Err(invalid("client_metadata_documents.cache_entries", "must be at least 1"));
    }
    let max_concurrent_fetches = raw.max_concurrent_fetches.unwrap_or(16);
    if max_concurrent_fetches == 0 {
        return Err(invalid("client_metadata_documents.max_concurrent_fetches", "must be at least 1"));
    }
    const FAILURE_TTL: &str = "client_metadata_documents.failure_ttl";
    let failure_ttl = duration(FAILURE_TTL, raw.failure_ttl, Duration::from_secs(30))?;
    if failure_ttl < Duration::from_secs(1) || failure_ttl > Duration::from_secs(600) {
        return Err(invalid(FAILURE_TTL, "must be between 1s and 10m"));
    }
    if let Some(path) = &raw.extra_ca_file {
        if !path.is_file() {
            return Err(invalid(
                "client_metadata_documents.extra_ca_file",
                format!("{} is not a readable file", path.display()),
            ));
        }
    }
    Ok(ClientDocumentsConfig {
        enabled: raw.enabled.unwrap_or(true),
        allowed_hosts,
        max_bytes,
        timeout,
        cache_ttl: duration("client_metadata_documents.cache_ttl", raw.cache_ttl, Duration::from_secs(600))?,
        cache_entries,
        max_concurrent_fetches,
        extra_ca_file: raw.extra_ca_file,
        allow_loopback_for_testing: raw.allow_loopback_for_testing,
        failure_ttl,
    })
}

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

fn validate_store(raw: RawStore, env: &impl Fn(&str) -> Option<String>) -> Result<StoreConfig, ConfigError> {
    let Some(path) = raw.snapshot_path else {
        return Ok(StoreConfig { snapshot: None });
    };
    let key_text = match (env("DCR_PROXY_SNAPSHOT_KEY"), &raw.snapshot_key_file) {
        (Some(k), _) if k.trim().is_empty() => {
            return Err(invalid(
                "DCR_PROXY_SNAPSHOT_KEY",
                "the environment variable is set but empty: put 32 random bytes there as base64 or 64 hex digits \
                 (e.g. `openssl rand -base64 32`), or unset it and use store.snapshot_key_file",
            ))
        }
        (Some(k), _) => parse_snapshot_key(&k).map(|_| k).ok_or_else(|| {
            invalid("DCR_PROXY_SNAPSHOT_KEY", "the environment variable must hold 32 bytes as base64 or 64 hex digits")
        })?,
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| invalid("store.snapshot_key_file", format!("cannot read {}: {e}", file.display())))?,
        (None, None) => {
            return Err(invalid(
                "store.snapshot_key_file",
                "a snapshot needs a key: set DCR_PROXY_SNAPSHOT_KEY or store.snapshot_key_file \
                 (32 random bytes as base64 or 64 hex digits, e.g. `openssl rand -base64 32`)",
            ))
        }
    };
    let key = parse_snapshot_key(&key_text).ok_or_else(|| {
        invalid("store.snapshot_key_file", "the snapshot key must be 32 bytes as base64 or 64 hex digits")
    })?;
    let interval = duration("store.snapshot_interval", raw.snapshot_interval, Duration::from_secs(30))?;
    if interval < Duration::from_millis(100) {
        return Err(invalid("store.snapshot_interval", "must be at least 100ms"));
    }
    let previous_key = match env("DCR_PROXY_SNAPSHOT_KEY_PREVIOUS") {
        None => None,
        Some(text) => Some(parse_snapshot_key(&text).ok_or_else(|| {
            invalid(
                "store.snapshot_key_file",
                "DCR_PROXY_SNAPSHOT_KEY_PREVIOUS must be 32 bytes as base64 or 64 hex digits",
            )
        })?),
    };
    Ok(StoreConfig {
        snapshot: Some(SnapshotConfig {
            path,
            interval,
            key,
            previous_key,
            start_empty_on_error: raw.start_empty_on_bad_snapshot,
        }),
    })
}

fn validate_limits(raw: RawLimits) -> Result<LimitsConfig, ConfigError> {
    let per_minute = |key: &'static str, v: Option<u32>, default: u32| match v {
        Some(0) => Err(invalid(key, "must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    Ok(LimitsConfig {
        register_per_minute: per_minute("limits.register_per_minute", raw.register_per_minute, 20)?,
        token_per_minute: per_minute("limits.token_per_minute", raw.token_per_minute, 120)?,
        authorize_per_minute: per_minute("limits.authorize_per_minute", raw.authorize_per_minute, 60)?,
        max_pending: raw.max_pending.unwrap_or(100_000).max(1),
        header_timeout: positive("limits.header_timeout", raw.header_timeout, Duration::from_secs(15))?,
        max_state_bytes: match raw.max_state_bytes.unwrap_or(1024) {
            n @ 64..=4096 => n,
            _ => return Err(invalid("limits.max_state_bytes", "must be between 64 and 4096")),
        },
        password_checks: match raw.password_checks {
            None => std::thread::available_parallelism().map_or(2, usize::from).min(8),
            Some(n @ 1..=256) => n,
            Some(_) => return Err(invalid("limits.password_checks", "must be between 1 and 256")),
        },
        password_check_wait: match duration(
            "limits.password_check_wait",
            raw.password_check_wait,
            Duration::from_secs(2),
        )? {
            d if d <= Duration::from_secs(60) => d,
            _ => return Err(invalid("limits.password_check_wait", "must be at most 60s")),
        },
        login_failures: match raw.login_failures.unwrap_or(5) {
            0 => return Err(invalid("limits.login_failures", "must be at least 1")),
            n => n,
        },
        login_lockout: match duration("limits.login_lockout", raw.login_lockout, Duration::from_secs(300))? {
            d if d.as_secs() >= 1 && d <= Duration::from_secs(24 * 3600) => d,
            _ => return Err(invalid("limits.login_lockout", "must be between 1s and 24h")),
        },
        idle_timeout: positive("limits.idle_timeout", raw.idle_timeout, Duration::from_secs(60))?,
        body_timeout: positive("limits.body_timeout", raw.body_timeout, Duration::from_secs(10))?,
        max_connections: match raw.max_connections {
            Some(0) => return Err(invalid("limits.max_connections", "must be at least 1")),
            other => other,
        },
        max_connections_per_source: match raw.max_connections_per_source {
            Some(0) => return Err(invalid("limits.max_connections_per_source", "must be at least 1")),
            other => other.unwrap_or(256),
        },
    })
}

/// A duration of at least one millisecond (a zero deadline would close every connection at once).
fn positive(key: &'static str, value: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let d = duration(key, value, default)?;
    if d < Duration::from_millis(1) {
        return Err(invalid(key, "must be at least 1ms"));
    }
    Ok(d)
}

fn validate_tokens(raw: RawTokens) -> Result<TokenConfig, ConfigError> {
    let t = TokenConfig {
        access_ttl: duration("tokens.access_ttl", raw.access_ttl, Duration::from_secs(3600))?,
        refresh_ttl: duration("tokens.refresh_ttl", raw.refresh_ttl, Duration::from_secs(30 * 86400))?,
        code_ttl: duration("tokens.code_ttl", raw.code_ttl, Duration::from_secs(600))?,
        pending_ttl: duration("tokens.pending_ttl", raw.pending_ttl, Duration::from_secs(600))?,
        refresh_grace: duration("tokens.refresh_grace", raw.refresh_grace, Duration::from_secs(10))?,
        upstream_refresh_margin: duration(
            "tokens.upstream_refresh_margin",
            raw.upstream_refresh_margin,
            Duration::from_secs(120),
        )?,
        upstream_refresh_floor: duration(
            "tokens.upstream_refresh_floor",
            raw.upstream_refresh_floor,
            Duration::from_secs(30),
        )?,
    };
    if t.access_ttl.as_secs() == 0 {
        return Err(invalid("tokens.access_ttl", "must be at least one second"));
    }
    if t.code_ttl.as_secs() == 0 || t.code_ttl > Duration::from_secs(600) {
        return Err(invalid("tokens.code_ttl", "must be between 1s and 10m (RFC 6749 §4.1.2)"));
    }
    if t.upstream_refresh_floor.as_secs() == 0 || t.upstream_refresh_floor > Duration::from_secs(3600) {
        return Err(invalid("tokens.upstream_refresh_floor", "must be between 1s and 1h"));
    }
    Ok(t)
}

/// Whether an IP is loopback, for the plain-HTTP rule.
pub fn is_loopback_ip(ip: IpAddr) -> bool {
    ip.is_loopback()
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
        assert_eq!(limits, Ok((secs(15), secs(60), secs(10), None, 256)));
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
        ] {
            let err = Config::from_toml(&rule(prefix, scopes), secret).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("upstream.required_scopes") && err.contains(needle), "{err}");
        }
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
        let c = Config::from_toml(include_str!("../deploy/proxy.toml"), env).map_err(|e| e.to_string());
        assert!(c.is_ok(), "{c:?}");
        assert_eq!(err_key(include_str!("../deploy/proxy.toml"), no_env), "idp.tenant");
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
}
