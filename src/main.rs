//! The `dcr-proxy` binary: CLI → logging → config → state → bind → serve.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dcr_proxy::app::App;
use dcr_proxy::clock::Clock;
use dcr_proxy::config::{AdminListen, Config, LogFormat, RuntimeKind, DEFAULT_CONFIG};
use dcr_proxy::server;

/// OAuth 2.1 sidecar: Dynamic Client Registration for MCP clients in front of Entra ID and other OIDC providers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Path of proxy.toml; without it the embedded default (local login on 127.0.0.1:8080) is used.
    #[arg(long, short, global = true, env = "DCR_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format, overriding `log.format`: text or json.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Validate the config and exit; a bad key is named and the exit code is 2.
    CheckConfig,
    /// Read a password (prompted without echo on a terminal, else one line of standard input) and print its
    /// argon2id hash for `[[idp.users]] password_hash`. Passwords under 12 characters are refused.
    HashPassword,
    /// Ask the running proxy's `/readyz` (on `server.listen`, loopback when it listens on every address); exit 0
    /// when it is ready, 1 otherwise. For container health checks: the runtime image has no curl.
    Healthcheck {
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Ask the running proxy's admin API (`[admin] listen`) with the token in DCR_PROXY_ADMIN_TOKEN: list clients
    /// and grants, revoke, switch registration. A table for people; `--json` for scripts.
    Admin {
        /// The admin API's base URL (`http://host:port`, or `unix:/path/to/socket`); default: `admin.listen` of the
        /// config, else http://127.0.0.1:9091.
        #[arg(long, global = true)]
        url: Option<String>,
        /// Print the API's JSON answer instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: AdminAction,
    },
    /// The shared store: `store import --snapshot FILE` copies a memory-backend snapshot into Redis.
    Store {
        #[command(subcommand)]
        action: StoreCommand,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Every client: name, redirect hosts, metadata-document URL, created, last used, grants.
    Clients,
    /// Live grants: id, user, client, scopes, created, last refresh, IdP token expiry (never a token).
    Grants {
        /// Only this user's (IdP subject).
        #[arg(long, allow_hyphen_values = true)]
        subject: Option<String>,
        /// Only this client's.
        #[arg(long, allow_hyphen_values = true)]
        client: Option<String>,
    },
    /// Revoke one grant by id (from `admin grants`): its tokens stop working at once.
    RevokeGrant {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Revoke every grant of a user (IdP subject).
    RevokeUser {
        #[arg(allow_hyphen_values = true)]
        subject: String,
    },
    /// Delete a client and revoke every grant it holds. (Ids may start with `-`: a client id is base64url.)
    RevokeClient {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Switch dynamic client registration on or off (until the next restart).
    Registration {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy a snapshot (read with the configured key) into the Redis of `[store] backend = "redis"`.
    Import {
        #[arg(long)]
        snapshot: PathBuf,
    },
}

fn load(cli: &Cli) -> Result<Config, String> {
    match &cli.config {
        Some(path) => Config::load(path).map_err(|e| format!("{}: {e}", path.display())),
        None => Config::from_toml(DEFAULT_CONFIG, |k| std::env::var(k).ok())
            .map_err(|e| format!("embedded default config: {e}")),
    }
}

/// Installs the log; the guard writes out the queued lines when `main` returns ([`dcr_proxy::log_writer`]).
fn init_logging(config: &Config) -> Option<dcr_proxy::log_writer::LogGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    use std::io::IsTerminal as _;
    // Colour codes only where a person reads them: not in files, pipes or container logs.
    // per-core: each line names the worker thread that wrote it (`dcr-proxy-worker-N`), so an operator sees how
    // the kernel spreads connections.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_thread_names(config.server.runtime == RuntimeKind::PerCore);
    let Some((writer, guard)) = dcr_proxy::log_writer::LogWriter::start(config.log.queue) else {
        let builder = builder.with_writer(std::io::stderr);
        match config.log.format {
            LogFormat::Json => builder.json().init(),
            LogFormat::Text => builder.init(),
        }
        return None;
    };
    let builder = builder.with_writer(writer);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Some(guard)
}

/// Passwords shorter than this are refused by `hash-password`.
const MIN_PASSWORD_CHARS: usize = 12;

fn hash_password() -> ExitCode {
    use std::io::IsTerminal as _;
    let password = if std::io::stdin().is_terminal() {
        match rpassword::prompt_password("Password (not shown): ") {
            Ok(p) => p,
            Err(e) => return fail(&format!("cannot read the password: {e}")),
        }
    } else {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_err() {
            return fail("cannot read the password from standard input");
        }
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return fail(&format!("the password must have at least {MIN_PASSWORD_CHARS} characters"));
    }
    match dcr_proxy::idp::local::hash_password(&password) {
        Ok(hash) => {
            let _ = writeln!(std::io::stdout(), "{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("hashing failed: {e}")),
    }
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "dcr-proxy: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::HashPassword) => return hash_password(),
        Some(Command::CheckConfig) => {
            return match load(&cli) {
                Ok(config) => {
                    for warning in config.warnings() {
                        let _ = writeln!(std::io::stderr(), "warning: {warning}");
                    }
                    let _ = writeln!(std::io::stdout(), "config OK");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            };
        }
        Some(Command::Healthcheck { timeout }) => {
            return match load(&cli) {
                Ok(config) => healthcheck(&config, timeout),
                Err(e) => fail(&e),
            };
        }
        Some(Command::Admin { ref url, json, ref action }) => {
            let base = url.clone().unwrap_or_else(|| admin_url(&cli));
            return admin(&base, json, action);
        }
        Some(Command::Store { action: StoreCommand::Import { ref snapshot } }) => {
            return match load(&cli) {
                Ok(config) => import_snapshot(&config, snapshot),
                Err(e) => fail(&e),
            };
        }
        Some(Command::Serve) | None => {}
    }
    let mut config = match load(&cli) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match cli.log_format.as_deref() {
        Some("json") => config.log.format = LogFormat::Json,
        Some("text") => config.log.format = LogFormat::Text,
        _ => {}
    }
    let _log = init_logging(&config);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = match config.server.runtime {
        RuntimeKind::MultiThread => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(threads) = config.server.worker_threads {
                builder.worker_threads(threads);
            }
            builder
        }
        // per-core: this thread's runtime is the control runtime (upkeep, metrics, admin, Redis); the accept
        // loops get runtimes of their own ([`server::per_core`]).
        RuntimeKind::CurrentThread | RuntimeKind::PerCore => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        // Logged once, through the configured log (JSON stays one object per line), not printed again.
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(2)
        }
    }
}

/// The admin API's URL when `--url` is not given: the config's `admin.listen`, else the documented default.
fn admin_url(cli: &Cli) -> String {
    match load(cli).ok().and_then(|c| c.admin).map(|a| a.listen) {
        Some(AdminListen::Tcp(addr)) => format!("http://{addr}"),
        Some(AdminListen::Unix(path)) => format!("unix:{}", path.display()),
        None => "http://127.0.0.1:9091".to_owned(),
    }
}

/// `dcr-proxy admin …`: one request to the admin API; exit 0 on success, 1 when the API refused, 2 when it
/// could not be asked.
fn admin(base: &str, json: bool, action: &AdminAction) -> ExitCode {
    use dcr_proxy::admin::cli;
    let Ok(token) = std::env::var(dcr_proxy::config::env::ADMIN_TOKEN.name) else {
        return fail(&format!("set {} to the admin token", dcr_proxy::config::env::ADMIN_TOKEN.name));
    };
    let request = match action {
        AdminAction::Clients => cli::Request::Clients,
        AdminAction::Grants { subject, client } => {
            cli::Request::Grants { subject: subject.clone(), client_id: client.clone() }
        }
        AdminAction::RevokeGrant { id } => cli::Request::RevokeGrant(id.clone()),
        AdminAction::RevokeUser { subject } => cli::Request::RevokeUser(subject.clone()),
        AdminAction::RevokeClient { id } => cli::Request::RevokeClient(id.clone()),
        AdminAction::Registration { state } => cli::Request::Registration(state == "on"),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| cli::CliError::Unreachable(e.to_string()))
        .and_then(|rt| rt.block_on(cli::send(base, &token, &request)));
    match result {
        Ok(answer) => {
            let text = if json { format!("{answer:#}") } else { cli::render(&request, &answer) };
            let _ = writeln!(std::io::stdout(), "{text}");
            ExitCode::SUCCESS
        }
        Err(e @ cli::CliError::Refused { .. }) => {
            let _ = writeln!(std::io::stderr(), "dcr-proxy: {e}");
            ExitCode::from(1)
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// `store import --snapshot FILE`: loads the snapshot with the configured key and copies it into Redis.
fn import_snapshot(config: &Config, path: &std::path::Path) -> ExitCode {
    let Some(redis) = &config.store.redis else {
        return fail("store import needs [store] backend = \"redis\" and its redis_url");
    };
    if !path.is_file() {
        return fail(&format!("{}: no such snapshot", path.display()));
    }
    let clock = dcr_proxy::clock::Clock::system();
    let store = match dcr_proxy::store::snapshot::load(path, &redis.key, clock.now()) {
        Ok(store) => store,
        Err(e) => return fail(&e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let imported = runtime.block_on(async {
        let now = clock.now();
        let target =
            dcr_proxy::store::redis::RedisStore::connect(redis, clock, config.registration.unused_client_ttl).await?;
        target.import(&store, now).await
    });
    match imported {
        Ok(done) => {
            let _ = writeln!(std::io::stdout(), "imported into {}: {done:?}", redis.url.redacted());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// `GET /readyz` on the configured listener.
fn healthcheck(config: &Config, timeout: std::time::Duration) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut addr = config.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let tls = config.server.tls.is_some();
    let url = format!("{}://{addr}/readyz", if tls { "https" } else { "http" });
    let check = async {
        // The certificate names the public host, not the loopback address asked here: only the status matters.
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .danger_accept_invalid_certs(tls)
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
        match resp.status() {
            reqwest::StatusCode::OK => Ok(()),
            s => Err(format!("{url} answered {s}")),
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(check));
    match result {
        Ok(()) => {
            let _ = writeln!(std::io::stdout(), "ready");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "dcr-proxy: not ready: {e}");
            ExitCode::from(1)
        }
    }
}

/// The public listener(s): one, or one per worker thread with `server.runtime = "per-core"`.
enum Listeners {
    One(tokio::net::TcpListener),
    PerCore(Vec<std::net::TcpListener>),
}

async fn run(config: Config) -> Result<(), String> {
    let tls = match &config.server.tls {
        Some(t) => Some(server::tls::acceptor(t).map_err(|e| format!("server.tls: {e}"))?),
        None => None,
    };
    let listen = config.server.listen;
    let public_url = config.server.public_url.clone();
    let app = App::new(config, Clock::system()).await.map_err(|e| e.to_string())?;
    let listeners = match app.config.server.runtime {
        RuntimeKind::PerCore => {
            let threads = server::per_core::thread_count(app.config.server.worker_threads);
            Listeners::PerCore(server::per_core::bind(listen, threads).map_err(|e| e.to_string())?)
        }
        RuntimeKind::MultiThread | RuntimeKind::CurrentThread => Listeners::One(
            tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen} (server.listen): {e}"))?,
        ),
    };
    // The metrics listener stops when the main server has drained (`stop` is dropped below).
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = match app.config.metrics_listen {
        Some(addr) => {
            let metrics = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (metrics.listen): {e}"))?;
            tracing::info!(%addr, "metrics at /metrics");
            Some(tokio::spawn(server::serve_metrics(metrics, app.clone(), async {
                let _ = stopped.await;
            })))
        }
        None => None,
    };
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = match &app.config.admin {
        Some(admin) => {
            let at = admin.listen.clone();
            let stopped = async {
                let _ = admin_stopped.await;
            };
            let cannot = |e: std::io::Error| format!("cannot listen on {at} (admin.listen): {e}");
            tracing::info!(%at, "admin API at /admin/");
            Some(match &admin.listen {
                AdminListen::Tcp(addr) => {
                    let listener = tokio::net::TcpListener::bind(addr).await.map_err(cannot)?;
                    tokio::spawn(server::serve_admin(listener, app.clone(), stopped))
                }
                AdminListen::Unix(path) => {
                    let listener = server::bind_admin_socket(path).map_err(cannot)?;
                    tokio::spawn(server::serve_admin_unix(listener, app.clone(), stopped))
                }
            })
        }
        None => None,
    };
    tracing::info!(%listen, %public_url, tls = tls.is_some(), "dcr-proxy ready");
    match listeners {
        Listeners::One(listener) => server::serve(listener, app, tls, server::shutdown_signal()).await,
        Listeners::PerCore(listeners) => {
            server::per_core::serve(listeners, app, tls, server::shutdown_signal()).await.map_err(|e| e.to_string())?
        }
    }
    drop(stop);
    drop(stop_admin);
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client id, grant id or subject may start with `-` (base64url): it is a value, never taken for a flag
    /// (the admin test's random ids hit it one run in sixty-four).
    #[test]
    fn ids_starting_with_a_dash_are_values() {
        let revoke = Cli::try_parse_from(["dcr-proxy", "admin", "revoke-client", "-Xy_z"]);
        assert!(
            matches!(revoke.map(|c| c.command), Ok(Some(Command::Admin { action: AdminAction::RevokeClient { ref id }, .. })) if id == "-Xy_z")
        );
        let grants = Cli::try_parse_from(["dcr-proxy", "admin", "grants", "--client", "-abc", "--json"]);
        assert!(matches!(
            grants.map(|c| c.command),
            Ok(Some(Command::Admin { action: AdminAction::Grants { client: Some(ref c), .. }, json: true, .. })) if c == "-abc"
        ));
    }
}
