//! Validation: raw TOML types → the validated types of [`super`], each rule with the key it names.
//!
//! Defaults live here, beside the rule that bounds them (and in `proxy.toml`, which documents every key). No I/O:
//! environment overrides come through [`Env`] (the table in [`super::env`]) and file contents through [`Files`].
//! Invariants: `public_url` is an origin and the issuer verbatim ([`PublicUrl`]); plain HTTP is served on a
//! non-loopback address only behind a TLS terminator; IdP issuers are https except on loopback; every
//! `upstream.required_scopes` scope is one the proxy offers.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::env::{self, Env};
use super::files::Files;
use super::raw::*;
use super::*;

/// The whole config, section by section.
pub(crate) fn config(raw: RawConfig, env: &Env<'_>, files: &Files) -> Result<Config, ConfigError> {
    let server = validate_server(raw.server)?;
    let public_host = Url::parse(server.public_url.as_str()).ok().and_then(|u| u.host_str().map(str::to_owned));
    let pages =
        super::pages::validate(raw.pages, public_host.as_deref().unwrap_or("this server"), files.logo.as_ref())?;
    let upstream = validate_upstream(raw.upstream)?;
    let idp = validate_idp(raw.idp, env)?;
    let upstream = validate_required_scopes(upstream, &idp.scopes)?;
    let tokens = validate_tokens(raw.tokens)?;
    let registration = validate_registration(raw.registration, env)?;
    let client_documents = validate_client_documents(raw.client_metadata_documents, files)?;
    let limits = validate_limits(raw.limits)?;
    let introspection = match raw.introspection {
        None => None,
        Some(i) => {
            if i.client_id.is_empty() {
                return Err(invalid("introspection.client_id", "must not be empty"));
            }
            let secret = env.get(env::INTROSPECTION_SECRET).or(i.client_secret).filter(|s| s.len() >= 16);
            let secret = secret.ok_or_else(|| {
                invalid(
                    "introspection.client_secret",
                    "is required (16 characters or more): set DCR_PROXY_INTROSPECTION_SECRET",
                )
            })?;
            Some(IntrospectionConfig { client_id: i.client_id, client_secret: SecretString::from(secret) })
        }
    };
    let mut store = validate_store(raw.store, env, files)?;
    if let Some(redis) = store.redis.as_mut() {
        redis.refresh_lock = refresh_lock(idp.timeout);
    }
    let policy = validate_policy(raw.policy, &idp.scopes)?;
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
        queue: match raw.log.queue {
            Some(n) if !(1..=1_000_000).contains(&n) => return Err(invalid("log.queue", "must be 1 to 1000000")),
            n => n.unwrap_or(65_536),
        },
    };
    let admin = validate_admin(raw.admin, env)?;
    let audit = validate_audit(raw.audit)?;
    let routes = validate_routes(raw.routes, &upstream.resource_path)?;
    Ok(Config {
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
        policy,
        pages,
        admin,
        audit,
        routes,
    })
}

/// `[[routes]]` (issue 16 §3): each `path_prefix` a plain path as the canonical forwarded path holds it, not `/`,
/// without a trailing `/`, neither the prefix of another route's nor below it, and not covering one of the proxy's
/// own endpoints or `upstream.resource_path`; `url` as `upstream.url`; `scopes` at least one, without spaces.
/// `[upstream]` stays required: it serves every path under no route.
fn validate_routes(raw: Vec<RawRoute>, resource_path: &str) -> Result<Vec<UpstreamRouteConfig>, ConfigError> {
    let mut routes: Vec<UpstreamRouteConfig> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("routes[{i}].{field}");
        let prefix = r.path_prefix;
        if let Some(why) = route_prefix_problem(&prefix) {
            return Err(invalid_entry(key("path_prefix"), format!("`{prefix}` {why}")));
        }
        let own =
            OWN_PATHS.iter().chain([&resource_path]).find(|own| path_under(&prefix, own) || path_under(own, &prefix));
        if let Some(own) = own {
            return Err(invalid_entry(key("path_prefix"), format!("`{prefix}` overlaps the proxy's own path `{own}`")));
        }
        if let Some((j, other)) =
            routes.iter().enumerate().find(|(_, o)| o.serves(&prefix) || path_under(&prefix, &o.path_prefix))
        {
            return Err(invalid_entry(
                key("path_prefix"),
                format!("`{prefix}` overlaps routes[{j}].path_prefix `{}`", other.path_prefix),
            ));
        }
        let url =
            Url::parse(&r.url).map_err(|e| invalid_entry(key("url"), format!("`{}` is not a URL: {e}", r.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid_entry(key("url"), "must be an http:// or https:// URL with a host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid_entry(key("url"), "must not have a query or fragment"));
        }
        if r.scopes.is_empty() || r.scopes.iter().any(|s| s.is_empty() || s.contains(char::is_whitespace)) {
            return Err(invalid_entry(key("scopes"), "must name at least one scope, each without spaces"));
        }
        routes.push(UpstreamRouteConfig { path_prefix: prefix, url, scopes: r.scopes });
    }
    Ok(routes)
}

/// The proxy's own fixed paths, which no route may cover.
const OWN_PATHS: [&str; 13] = [
    "/.well-known",
    "/register",
    "/authorize",
    "/consent",
    "/callback",
    "/login",
    "/token",
    "/revoke",
    "/introspect",
    "/userinfo",
    "/healthz",
    "/readyz",
    crate::http::html::LOGO_PATH,
];

/// Why a route's `path_prefix` is not a plain path the forwarded path can start with; `None` when it is.
fn route_prefix_problem(prefix: &str) -> Option<&'static str> {
    let literal = |c: char| c.is_ascii_alphanumeric() || "/-._~!$&'()*+,=:@".contains(c);
    let bad_segment = prefix.split('/').skip(1).any(|s| s.is_empty() || s == "." || s == ".." || s.ends_with('.'));
    if !prefix.starts_with('/') || prefix == "/" || prefix.ends_with('/') {
        Some("must be a path starting with / such as \"/graph\", not / and without a trailing /")
    } else if !prefix.chars().all(literal) || bad_segment {
        Some(
            "must be a plain path of letters, digits and -._~!$&'()*+,=:@ (no %-escapes, spaces, non-ASCII, `;`, \
             `\\`, `//` or dot segments)",
        )
    } else {
        None
    }
}

fn invalid_entry(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::InvalidEntry { key, message: message.into() }
}

/// `[audit]`: off without `path`; `"stdout"`, `"stderr"` or a file path; `queue` 1 to 1 000 000 (default 10 000).
fn validate_audit(raw: RawAudit) -> Result<Option<AuditConfig>, ConfigError> {
    let queue = raw.queue.unwrap_or(10_000);
    if !(1..=1_000_000).contains(&queue) {
        return Err(invalid("audit.queue", "must be between 1 and 1000000"));
    }
    let sink = match raw.path.as_deref() {
        None => return Ok(None),
        Some("") => return Err(invalid("audit.path", "must not be empty: a file, \"stdout\" or \"stderr\"")),
        Some("stdout") => crate::audit::AuditSink::Stdout,
        Some("stderr") => crate::audit::AuditSink::Stderr,
        Some(path) => crate::audit::AuditSink::File(path.into()),
    };
    Ok(Some(AuditConfig { sink, queue }))
}

/// `[admin]`: off without `listen` (an address, or an absolute Unix socket path); with it, `DCR_PROXY_ADMIN_TOKEN` must hold at least 32 characters.
fn validate_admin(raw: RawAdmin, env: &Env<'_>) -> Result<Option<AdminConfig>, ConfigError> {
    let Some(a) = raw.listen else { return Ok(None) };
    let listen = match a.strip_prefix("unix:").unwrap_or(&a) {
        path if path.starts_with('/') => AdminListen::Unix(path.into()),
        _ => AdminListen::Tcp(a.parse::<SocketAddr>().map_err(|_| {
            invalid("admin.listen", format!("`{a}` is not an address like 127.0.0.1:9091 or an absolute socket path"))
        })?),
    };
    let token = env.get(env::ADMIN_TOKEN).unwrap_or_default();
    if token.trim().chars().count() < MIN_ADMIN_TOKEN_CHARS {
        return Err(invalid(
            env::ADMIN_TOKEN.name,
            format!(
                "admin.listen is set: the environment variable must hold the admin token, \
                 {MIN_ADMIN_TOKEN_CHARS} characters or more (`openssl rand -base64 32`)"
            ),
        ));
    }
    Ok(Some(AdminConfig { listen, token: SecretString::from(token.trim().to_owned()) }))
}

/// A duration key: its default when absent, refused naming the key when the text is not a duration.
fn duration(key: &'static str, value: Option<DurationText>, default: Duration) -> Result<Duration, ConfigError> {
    value.map_or(Ok(default), |d| d.get().map_err(|message| invalid(key, message)))
}

fn validate_server(raw: RawServer) -> Result<ServerConfig, ConfigError> {
    let listen: SocketAddr = raw
        .listen
        .parse()
        .map_err(|_| invalid("server.listen", format!("`{}` is not an address like 127.0.0.1:8080", raw.listen)))?;
    let public_url = PublicUrl::parse(&raw.public_url, raw.behind_tls_terminator)?;
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
    let runtime =
        match raw.runtime.as_deref() {
            None | Some("multi-thread") => RuntimeKind::MultiThread,
            Some("current-thread") => RuntimeKind::CurrentThread,
            Some("per-core") if cfg!(target_os = "linux") => RuntimeKind::PerCore,
            Some("per-core") => return Err(invalid(
                "server.runtime",
                "\"per-core\" needs Linux (SO_REUSEPORT spreading connections over listeners); use \"multi-thread\"",
            )),
            Some(_) => {
                return Err(invalid("server.runtime", "must be \"multi-thread\", \"current-thread\" or \"per-core\""))
            }
        };
    Ok(ServerConfig {
        listen,
        public_url,
        tls,
        behind_tls_terminator: raw.behind_tls_terminator,
        shutdown_grace: duration("server.shutdown_grace", raw.shutdown_grace, Duration::from_secs(10))?,
        runtime,
        worker_threads: validate_worker_threads(runtime, raw.worker_threads)?,
        fast_path: raw.fast_path,
    })
}

/// Most threads `server.worker_threads` may ask for.
pub(crate) const MAX_WORKER_THREADS: usize = 1024;

/// `server.worker_threads`: 1 to [`MAX_WORKER_THREADS`]; with `current-thread` only 1 (or unset).
fn validate_worker_threads(runtime: RuntimeKind, threads: Option<usize>) -> Result<Option<usize>, ConfigError> {
    match (runtime, threads) {
        (_, None) | (RuntimeKind::CurrentThread, Some(1)) => Ok(None),
        (RuntimeKind::CurrentThread, Some(_)) => Err(invalid(
            "server.worker_threads",
            "current-thread runs on one thread: remove the key or use \"per-core\"",
        )),
        (_, Some(n)) if (1..=MAX_WORKER_THREADS).contains(&n) => Ok(Some(n)),
        (_, Some(_)) => Err(invalid("server.worker_threads", format!("must be 1 to {MAX_WORKER_THREADS}"))),
    }
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
            .map(|r| PathScopes { path_prefix: r.path_prefix, scopes: r.scopes })
            .collect(),
        pool_idle_timeout: positive("upstream.pool_idle_timeout", raw.pool_idle_timeout, Duration::from_secs(90))?,
        pool_max_idle: match raw.pool_max_idle {
            Some(n) if n > 65_536 => return Err(invalid("upstream.pool_max_idle", "must be at most 65536")),
            n => n.unwrap_or(256),
        },
        drive_in_request_task: raw.drive_in_request_task.unwrap_or(true),
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
        // Rules are compared with the canonical forwarded path (`http::target`): a prefix must be written as that
        // path holds it, or it would never match — no escapes, no character the canonical form encodes (a space,
        // non-ASCII), no `;`, `\\`, `//`, dot segment or segment ending in a dot.
        let literal = |c: char| c.is_ascii_alphanumeric() || "/-._~!$&'()*+,=:@".contains(c);
        let bad_segment = rule.path_prefix.split('/').skip(1).any(|s| s == "." || s == ".." || s.ends_with('.'));
        if !rule.path_prefix.chars().all(literal) || bad_segment || rule.path_prefix.contains("//") {
            return Err(invalid(
                KEY,
                format!(
                    "entry {i}: path_prefix `{}` must be a plain path of letters, digits and -._~!$&'()*+,=:@ \
                     (no %-escapes, spaces, non-ASCII, `;`, `\\`, `//` or dot segments), as the forwarded path holds it",
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

fn validate_idp(raw: RawIdp, env: &Env<'_>) -> Result<IdpConfig, ConfigError> {
    let mut client_capabilities = Vec::new();
    let mut allowed_tenants = Vec::new();
    let mut max_claims_bytes = DEFAULT_MAX_CLAIMS_BYTES;
    let (provider, scopes, timeout) = match raw {
        RawIdp::Azure(raw) => {
            let timeout = idp_timeout(raw.timeout)?;
            if let Some(bad) = raw
                .client_capabilities
                .iter()
                .find(|c| c.is_empty() || c.len() > 32 || !c.chars().all(|ch| ch.is_ascii_alphanumeric()))
            {
                return Err(invalid("idp.client_capabilities", format!("`{bad}` is not a capability such as \"cp1\"")));
            }
            client_capabilities = raw.client_capabilities;
            max_claims_bytes = raw.max_claims_bytes.unwrap_or(DEFAULT_MAX_CLAIMS_BYTES);
            if !(256..=65536).contains(&max_claims_bytes) {
                return Err(invalid("idp.max_claims_bytes", "must be between 256 and 65536"));
            }
            let authority_text = raw.authority.unwrap_or_else(|| "https://login.microsoftonline.com".to_owned());
            let authority = Url::parse(&authority_text)
                .map_err(|e| invalid("idp.authority", format!("`{authority_text}` is not a URL: {e}")))?;
            if authority.scheme() != "https" && !(authority.scheme() == "http" && is_loopback_host(&authority)) {
                return Err(invalid("idp.authority", "must be https (http only on loopback, for tests)"));
            }
            let tenant = required("idp.tenant", env.get(env::AZURE_TENANT_ID).or(raw.tenant)).map_err(|_| {
                invalid("idp.tenant", "is required: set AZURE_TENANT_ID in the environment or idp.tenant")
            })?;
            if !tenant.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
                return Err(invalid("idp.tenant", "must be a tenant id, domain, `common` or `organizations`"));
            }
            let client_id =
                required("idp.client_id", env.get(env::AZURE_CLIENT_ID).or(raw.client_id)).map_err(|_| {
                    invalid("idp.client_id", "is required: set AZURE_CLIENT_ID in the environment or idp.client_id")
                })?;
            let client_secret = required("idp.client_secret", env.get(env::AZURE_CLIENT_SECRET).or(raw.client_secret))
                .map_err(|_| invalid("idp.client_secret", "is required: set AZURE_CLIENT_SECRET in the environment"))?;
            allowed_tenants = azure_allowed_tenants(raw.allowed_tenants, &tenant)?;
            let provider =
                IdpProvider::Azure { authority, tenant, client_id, client_secret: SecretString::from(client_secret) };
            let default = ["openid", "profile", "email", "offline_access", "User.Read"];
            (provider, raw.scopes.unwrap_or_else(|| default.map(str::to_owned).to_vec()), timeout)
        }
        RawIdp::Oidc(raw) => {
            let timeout = idp_timeout(raw.timeout)?;
            let issuer_text = required("idp.issuer", raw.issuer)?;
            let issuer = Url::parse(&issuer_text)
                .map_err(|e| invalid("idp.issuer", format!("`{issuer_text}` is not a URL: {e}")))?;
            if issuer.scheme() != "https" && !(issuer.scheme() == "http" && is_loopback_host(&issuer)) {
                return Err(invalid("idp.issuer", "must be https (http only on loopback)"));
            }
            let client_id = required("idp.client_id", raw.client_id)?;
            let client_secret = env.get(env::OIDC_CLIENT_SECRET).or(raw.client_secret).map(SecretString::from);
            let provider = IdpProvider::Oidc { issuer, client_id, client_secret };
            let default = ["openid", "profile", "email", "offline_access"];
            (provider, raw.scopes.unwrap_or_else(|| default.map(str::to_owned).to_vec()), timeout)
        }
        RawIdp::Local(raw) => {
            let timeout = idp_timeout(raw.timeout)?;
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
            let default = ["openid", "profile", "email"];
            (IdpProvider::Local { users }, raw.scopes.unwrap_or_else(|| default.map(str::to_owned).to_vec()), timeout)
        }
        RawIdp::Unknown(kind) => {
            return Err(invalid("idp.kind", format!("`{kind}` is not one of \"azure\", \"oidc\", \"local\"")));
        }
    };
    if scopes.is_empty() {
        return Err(invalid("idp.scopes", "must name at least one scope"));
    }
    if let Some(bad) = scopes.iter().find(|s| s.is_empty() || !s.chars().all(is_scope_char)) {
        return Err(invalid("idp.scopes", format!("`{bad}` is not a valid scope token (RFC 6749 §3.3)")));
    }
    Ok(IdpConfig { provider, scopes, timeout, client_capabilities, max_claims_bytes, allowed_tenants })
}

/// `idp.allowed_tenants`: tenant ids (GUIDs), lower-cased; with a tenant id as `idp.tenant`, only that one (the
/// list cannot widen a single-tenant app, and a list without it would let nobody in).
fn azure_allowed_tenants(raw: Vec<String>, tenant: &str) -> Result<Vec<String>, ConfigError> {
    const KEY: &str = "idp.allowed_tenants";
    let mut allowed = Vec::with_capacity(raw.len());
    for t in raw {
        if !super::is_guid(&t) {
            return Err(invalid(
                KEY,
                format!("`{t}` is not a tenant id (a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47)"),
            ));
        }
        allowed.push(t.to_ascii_lowercase());
    }
    if super::is_guid(tenant) && allowed.iter().any(|t| !t.eq_ignore_ascii_case(tenant)) {
        return Err(invalid(KEY, format!("idp.tenant `{tenant}` is one tenant: list only it, or use `organizations`")));
    }
    Ok(allowed)
}

/// `idp.max_claims_bytes` by default.
const DEFAULT_MAX_CLAIMS_BYTES: usize = 4096;

fn idp_timeout(value: Option<DurationText>) -> Result<Duration, ConfigError> {
    duration("idp.timeout", value, Duration::from_secs(10))
}

fn validate_registration(raw: RawRegistration, env: &Env<'_>) -> Result<RegistrationConfig, ConfigError> {
    let initial_access_token = env.get(env::INITIAL_ACCESS_TOKEN).or(raw.initial_access_token);
    if initial_access_token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(invalid("registration.initial_access_token", "must be at least 16 characters"));
    }
    if let Some(bad) = raw.allowed_redirect_hosts.iter().find(|h| h.is_empty() || h.contains(['/', ':', ' '])) {
        return Err(invalid(
            "registration.allowed_redirect_hosts",
            format!("`{bad}` is not a host name such as \"claude.ai\" (or \"loopback\")"),
        ));
    }
    let hosts: Vec<String> = raw.allowed_redirect_hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect();
    let private_use = raw
        .private_use_redirect_uris
        .unwrap_or_else(|| DEFAULT_PRIVATE_USE_REDIRECTS.iter().map(|s| (*s).to_owned()).collect());
    for uri in &private_use {
        crate::redirect_uri::validate_private_use(uri)
            .map_err(|e| invalid("registration.private_use_redirect_uris", e))?;
    }
    let mut redirect_allowlist = crate::redirect_uri::Allowlist { hosts, prefixes: vec![], private_use };
    for name in &raw.allow {
        let preset = crate::redirect_uri::preset(name).ok_or_else(|| {
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
        enabled: raw.enabled.unwrap_or(true),
    })
}

/// `[policy]`: each rule has a valid glob, at least one scope or group, and only scopes the IdP is asked for (a
/// step-up to a scope the proxy never grants would loop).
fn validate_policy(raw: RawPolicy, offered: &[String]) -> Result<PolicyConfig, ConfigError> {
    const KEY: &str = "policy.tools";
    let max_body_bytes = raw.max_body_bytes.unwrap_or(1024 * 1024);
    if !(1024..=64 * 1024 * 1024).contains(&max_body_bytes) {
        return Err(invalid("policy.max_body_bytes", "must be between 1024 and 67108864 bytes"));
    }
    let mut rules = Vec::with_capacity(raw.tools.len());
    for rule in raw.tools {
        let pattern = crate::tool_policy::Pattern::parse(&rule.pattern).map_err(|e| invalid(KEY, e))?;
        if rule.scopes.is_empty() && rule.groups.is_empty() {
            return Err(invalid(KEY, format!("the rule for `{}` needs `scopes` or `groups`", rule.pattern)));
        }
        if let Some(s) = rule.scopes.iter().find(|s| !offered.contains(s)) {
            return Err(invalid(KEY, format!("scope `{s}` (rule `{}`) is not one of idp.scopes", rule.pattern)));
        }
        if rule.groups.iter().any(|g| g.trim().is_empty()) {
            return Err(invalid(KEY, format!("the rule for `{}` has an empty group", rule.pattern)));
        }
        rules.push(crate::tool_policy::ToolRule { pattern, scopes: rule.scopes, groups: rule.groups });
    }
    Ok(PolicyConfig { max_body_bytes, rules })
}

fn validate_client_documents(raw: RawClientDocuments, files: &Files) -> Result<ClientDocumentsConfig, ConfigError> {
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
    const REFETCH: &str = "client_metadata_documents.jwks_refetch_interval";
    let jwks_refetch_interval = duration(REFETCH, raw.jwks_refetch_interval, Duration::from_secs(10))?;
    if jwks_refetch_interval < Duration::from_secs(1) || jwks_refetch_interval > Duration::from_secs(600) {
        return Err(invalid(REFETCH, "must be between 1s and 10m"));
    }
    if let Some(path) = &raw.extra_ca_file {
        if !files.extra_ca_file_is_file {
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
        jwks_refetch_interval,
    })
}

fn validate_store(raw: RawStore, env: &Env<'_>, files: &Files) -> Result<StoreConfig, ConfigError> {
    let redis = validate_redis(&raw, env, files)?;
    let Some(path) = raw.snapshot_path.clone() else {
        return Ok(StoreConfig { snapshot: None, redis });
    };
    if redis.is_some() {
        return Err(invalid(
            "store.snapshot_path",
            "with store.backend = \"redis\" the state lives in Redis: remove snapshot_path (move an existing \
             snapshot in with `dcr-proxy store import`)",
        ));
    }
    let key = snapshot_key(&raw, env, files, "a snapshot")?;
    let interval = duration("store.snapshot_interval", raw.snapshot_interval, Duration::from_secs(30))?;
    if interval < Duration::from_millis(100) {
        return Err(invalid("store.snapshot_interval", "must be at least 100ms"));
    }
    let previous_key = match env.get(env::SNAPSHOT_KEY_PREVIOUS) {
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
        redis,
    })
}

/// The snapshot key (`DCR_PROXY_SNAPSHOT_KEY` or `store.snapshot_key_file`), required by `what`.
fn snapshot_key(raw: &RawStore, env: &Env<'_>, files: &Files, what: &str) -> Result<SnapshotKey, ConfigError> {
    let key_text = match (env.get(env::SNAPSHOT_KEY), &raw.snapshot_key_file) {
        (Some(k), _) if k.trim().is_empty() => {
            return Err(invalid(
                env::SNAPSHOT_KEY.name,
                "the environment variable is set but empty: put 32 random bytes there as base64 or 64 hex digits \
                 (e.g. `openssl rand -base64 32`), or unset it and use store.snapshot_key_file",
            ))
        }
        (Some(k), _) => parse_snapshot_key(&k).map(|_| k).ok_or_else(|| {
            invalid(env::SNAPSHOT_KEY.name, "the environment variable must hold 32 bytes as base64 or 64 hex digits")
        })?,
        (None, Some(file)) => match &files.snapshot_key {
            Some(Ok(text)) => text.clone(),
            Some(Err(e)) => {
                return Err(invalid("store.snapshot_key_file", format!("cannot read {}: {e}", file.display())))
            }
            None => return Err(invalid("store.snapshot_key_file", format!("{} was not read", file.display()))),
        },
        (None, None) => {
            return Err(invalid(
                "store.snapshot_key_file",
                format!(
                    "{what} needs a key: set DCR_PROXY_SNAPSHOT_KEY or store.snapshot_key_file \
                     (32 random bytes as base64 or 64 hex digits, e.g. `openssl rand -base64 32`)"
                ),
            ))
        }
    };
    parse_snapshot_key(&key_text).ok_or_else(|| {
        invalid("store.snapshot_key_file", "the snapshot key must be 32 bytes as base64 or 64 hex digits")
    })
}

/// `store.backend`, `store.redis_url` (`DCR_PROXY_REDIS_URL` overrides it; `redis://` or `rediss://`, several
/// nodes separated by commas only with `store.redis_cluster = true`), `store.redis_cache_ttl` (default 1 s, at most
/// 1 s), `store.redis_cache_entries` (default 100000), the TLS files (`store.redis_ca_file`, the client
/// certificate and key together, only with `rediss://`) and `store.redis_stats_interval` (default 30 s, at least
/// 1 s).
fn validate_redis(raw: &RawStore, env: &Env<'_>, files: &Files) -> Result<Option<RedisConfig>, ConfigError> {
    match raw.backend.as_deref() {
        None | Some("memory") => return Ok(None),
        Some("redis") => {}
        Some(_) => return Err(invalid("store.backend", "must be \"memory\" or \"redis\"")),
    }
    let url = env.get(env::REDIS_URL).or_else(|| raw.redis_url.clone()).ok_or_else(|| {
        invalid("store.redis_url", "store.backend = \"redis\" needs store.redis_url or DCR_PROXY_REDIS_URL")
    })?;
    let url = RedisUrl(url);
    let nodes = url.nodes();
    if nodes.is_empty() {
        return Err(invalid("store.redis_url", "names no node"));
    }
    if nodes.iter().any(|n| !n.starts_with("redis://") && !n.starts_with("rediss://")) {
        return Err(invalid("store.redis_url", "every node must start with redis:// or rediss:// (TLS)"));
    }
    let tls = nodes[0].starts_with("rediss://");
    if nodes.iter().any(|n| n.starts_with("rediss://") != tls) {
        return Err(invalid("store.redis_url", "the nodes must all be redis:// or all rediss://"));
    }
    if nodes.len() > 1 && !raw.redis_cluster {
        return Err(invalid(
            "store.redis_url",
            "lists several nodes: that is a Redis Cluster, say so with store.redis_cluster = true",
        ));
    }
    for (key, file) in [
        ("store.redis_ca_file", &raw.redis_ca_file),
        ("store.redis_client_cert_file", &raw.redis_client_cert_file),
        ("store.redis_client_key_file", &raw.redis_client_key_file),
    ] {
        if file.is_some() && !tls {
            return Err(invalid(key, "is for TLS: store.redis_url must then start with rediss://"));
        }
    }
    if raw.redis_client_cert_file.is_some() != raw.redis_client_key_file.is_some() {
        let key = if raw.redis_client_cert_file.is_some() {
            "store.redis_client_key_file"
        } else {
            "store.redis_client_cert_file"
        };
        return Err(invalid(key, "a client certificate needs both store.redis_client_cert_file and its key file"));
    }
    let key = snapshot_key(raw, env, files, "store.backend = \"redis\"")?;
    let cache_ttl = duration("store.redis_cache_ttl", raw.redis_cache_ttl.clone(), Duration::from_secs(1))?;
    if cache_ttl > Duration::from_secs(1) {
        return Err(invalid("store.redis_cache_ttl", "must be at most 1s (revocations must reach every replica)"));
    }
    let cache_entries = match raw.redis_cache_entries {
        Some(0) => return Err(invalid("store.redis_cache_entries", "must be at least 1")),
        n => n.unwrap_or(100_000),
    };
    let stats_interval =
        duration("store.redis_stats_interval", raw.redis_stats_interval.clone(), Duration::from_secs(30))?;
    if stats_interval < Duration::from_secs(1) {
        return Err(invalid("store.redis_stats_interval", "must be at least 1s"));
    }
    Ok(Some(RedisConfig {
        url,
        key,
        cache_ttl,
        cache_entries,
        cluster: raw.redis_cluster,
        ca_file: raw.redis_ca_file.clone(),
        client_cert_file: raw.redis_client_cert_file.clone(),
        client_key_file: raw.redis_client_key_file.clone(),
        stats_interval,
        refresh_lock: refresh_lock(Duration::from_secs(10)),
    }))
}

/// The IdP-refresh lock's lifetime across replicas: the bearer path's refresh makes at most three IdP calls of
/// `idp_timeout` each with 0.1 s and 0.4 s pauses between them; one more second of margin.
fn refresh_lock(idp_timeout: Duration) -> Duration {
    idp_timeout.saturating_mul(3) + Duration::from_millis(1_500)
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
            other => other,
        },
    })
}

/// A duration of at least one millisecond (a zero deadline would close every connection at once).
fn positive(key: &'static str, value: Option<DurationText>, default: Duration) -> Result<Duration, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const HEX_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn with_snapshot() -> String {
        DEFAULT_CONFIG.replace(
            "[store]",
            "[store]\nsnapshot_path = \"/nonexistent-dcrp/x.snapshot\"\nsnapshot_key_file = \"/nonexistent-dcrp/key\"",
        )
    }

    fn message(result: Result<Config, ConfigError>) -> String {
        match result {
            Err(ConfigError::Invalid { key, message }) => format!("{key}: {message}"),
            Err(other) => format!("other: {other}"),
            Ok(_) => "ok".to_owned(),
        }
    }

    #[test]
    fn the_snapshot_key_file_is_read_in_the_files_step_only() {
        let text = with_snapshot();
        let files = Files { snapshot_key: Some(Ok(format!("{HEX_KEY}\n"))), ..Files::default() };
        let config = Config::from_toml_with_files(&text, no_env, &files).map_err(|e| e.to_string());
        let key = config.map(|c| c.store.snapshot.map(|s| s.key.0[..2].to_vec()));
        assert_eq!(key, Ok(Some(vec![0x00, 0x11])));
        let files = Files { snapshot_key: Some(Err("permission denied".to_owned())), ..Files::default() };
        assert_eq!(
            message(Config::from_toml_with_files(&text, no_env, &files)),
            "store.snapshot_key_file: cannot read /nonexistent-dcrp/key: permission denied"
        );
        // From disk: the file is missing, and named.
        let err = message(Config::from_toml(&text, no_env));
        assert!(err.starts_with("store.snapshot_key_file: cannot read /nonexistent-dcrp/key: "), "{err}");
        // The variable wins, and the file is then not read at all.
        let env = |k: &str| (k == "DCR_PROXY_SNAPSHOT_KEY").then(|| HEX_KEY.to_owned());
        assert_eq!(message(Config::from_toml(&text, env)), "ok");
    }

    #[test]
    fn the_extra_ca_file_must_exist_as_the_files_step_says() {
        let text = DEFAULT_CONFIG.replace(
            "[client_metadata_documents]",
            "[client_metadata_documents]\nextra_ca_file = \"/nonexistent-dcrp/ca.pem\"",
        );
        let err = message(Config::from_toml(&text, no_env));
        assert_eq!(err, "client_metadata_documents.extra_ca_file: /nonexistent-dcrp/ca.pem is not a readable file");
        let files = Files { extra_ca_file_is_file: true, ..Files::default() };
        assert_eq!(message(Config::from_toml_with_files(&text, no_env, &files)), "ok");
    }

    #[test]
    fn each_idp_kind_gets_its_default_scopes_and_its_own_errors() {
        let local = Config::from_toml(DEFAULT_CONFIG, no_env).map(|c| c.idp.scopes).map_err(|e| e.to_string());
        assert_eq!(local, Ok(vec!["openid".to_owned(), "profile".to_owned(), "email".to_owned()]));
        let (idp, _) = DEFAULT_CONFIG.split_once("\n[[idp.users]]").unwrap_or_default();
        let (_, rest) = DEFAULT_CONFIG.split_once("\n[tokens]").unwrap_or_default();
        let idp = idp.replacen("kind = \"local\"", "kind = \"oidc\"\nissuer = \"https://id.example\"", 1);
        let oidc = format!("{idp}\nclient_id = \"proxy\"\n[tokens]{rest}");
        let c = Config::from_toml(&oidc, |k| (k == "OIDC_CLIENT_SECRET").then(|| "s".to_owned()));
        match c.map(|c| (c.idp.provider, c.idp.scopes.len())) {
            Ok((IdpProvider::Oidc { client_secret: Some(_), client_id, .. }, 4)) => assert_eq!(client_id, "proxy"),
            other => panic!("unexpected {:?}", other.map(|(_, n)| n)),
        }
        let http = oidc.replace("https://id.example", "http://id.example");
        assert_eq!(message(Config::from_toml(&http, no_env)), "idp.issuer: must be https (http only on loopback)");
        let saml = DEFAULT_CONFIG.replacen("kind = \"local\"", "kind = \"saml\"", 1);
        assert_eq!(
            message(Config::from_toml(&saml, no_env)),
            "idp.kind: `saml` is not one of \"azure\", \"oidc\", \"local\""
        );
        // Azure without its secrets: each message names the environment variable that provides it.
        let azure = format!("{idp}\n[tokens]{rest}").replacen(
            "kind = \"oidc\"\nissuer = \"https://id.example\"",
            "kind = \"azure\"",
            1,
        );
        for (missing, variable) in [
            ("AZURE_TENANT_ID", "AZURE_TENANT_ID"),
            ("AZURE_CLIENT_ID", "AZURE_CLIENT_ID"),
            ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_SECRET"),
        ] {
            let env = |k: &str| (k.starts_with("AZURE_") && k != missing).then(|| "x".to_owned());
            let err = message(Config::from_toml(&azure, env));
            assert!(err.contains(variable), "{missing}: {err}");
        }
        let foreign = DEFAULT_CONFIG.replacen("kind = \"local\"", "kind = \"local\"\ntenant = \"common\"", 1);
        let err = message(Config::from_toml(&foreign, no_env));
        assert!(err.contains("kind = \"local\": unknown field `tenant`, expected one of"), "{err}");
    }
}
