//! `[server]`, `[limits]`, `[admin]` and `[audit]`: the listeners, their caps and deadlines, and what is recorded.

use super::*;

/// `[audit]`: off without `path`; `"stdout"`, `"stderr"` or a file path; `queue` 1 to 1 000 000 (default 10 000).
pub(super) fn validate_audit(raw: RawAudit) -> Result<Option<AuditConfig>, ConfigError> {
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
pub(super) fn validate_admin(raw: RawAdmin, env: &Env<'_>) -> Result<Option<AdminConfig>, ConfigError> {
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

pub(super) fn validate_server(raw: RawServer) -> Result<ServerConfig, ConfigError> {
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

/// `server.worker_threads`: 1 to [`MAX_WORKER_THREADS`]; with `current-thread` only 1 (or unset).
pub(super) fn validate_worker_threads(
    runtime: RuntimeKind,
    threads: Option<usize>,
) -> Result<Option<usize>, ConfigError> {
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

pub(super) fn validate_limits(raw: RawLimits) -> Result<LimitsConfig, ConfigError> {
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
