//! The accept loop: plain TCP or TLS (rustls, ALPN `h2` and `http/1.1`), HTTP/1.1 and HTTP/2 on the same port
//! (hyper-util's auto builder), connection deadlines and caps ([`connection`]), accept-error backoff
//! ([`backoff`]), graceful shutdown.
//!
//! [`serve`] takes an already bound listener and a shutdown future, so that tests bind `127.0.0.1:0` and drive
//! the real server. On shutdown it stops accepting, lets in-flight requests finish until `server.shutdown_grace`,
//! then drops what is left (SSE streams included).
//!
//! HTTP/2 bounds (RFC 9113; rapid reset, CVE-2023-44487): at most [`H2_MAX_STREAMS`] concurrent streams per
//! connection, [`H2_MAX_PENDING_RESETS`] streams reset before they were served, [`H2_MAX_LOCAL_RESETS`] streams
//! the server had to reset for protocol errors, [`H2_MAX_HEADER_LIST`] bytes of header list; a PING every
//! [`H2_PING_INTERVAL`] that must be answered within [`H2_PING_TIMEOUT`] (a dead peer is dropped; a peer that
//! only answers PINGs is closed by `limits.idle_timeout`). HTTP/1.1: at most [`H1_MAX_HEADERS`] header fields.

pub mod backoff;
pub mod connection;
pub mod fast_path;
pub mod framing_guard;
pub mod per_core;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::app::App;
use crate::http::timed_body::TimedBody;
use crate::store::upkeep::{Upkeep, UpkeepGuard};
use connection::{Activity, ConnectionLimiter, ConnectionPermit, Deadlines, Ended, Phase, TrackedBody};

/// Concurrent HTTP/2 streams per connection.
pub const H2_MAX_STREAMS: u32 = 100;
/// HTTP/2 streams the client may reset before the server has served them (rapid reset).
pub const H2_MAX_PENDING_RESETS: usize = 20;
/// HTTP/2 streams the server may reset for a client's protocol errors before it closes the connection.
pub const H2_MAX_LOCAL_RESETS: usize = 256;
/// Largest HTTP/2 header list, in bytes (the decoded size, RFC 9113 §6.5.2).
pub const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
/// How often an HTTP/2 connection is PINGed.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may stay unanswered.
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Header fields in an HTTP/1.1 request head.
pub const H1_MAX_HEADERS: usize = 100;

type Builder = auto::Builder<TokioExecutor>;

fn http_builder(header_timeout: Duration) -> Builder {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .max_headers(H1_MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .max_header_list_size(H2_MAX_HEADER_LIST);
    builder
}

/// What every connection task shares.
struct Shared {
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    builder: Builder,
    deadlines: Deadlines,
    body_timeout: Duration,
    phase: watch::Receiver<Phase>,
    /// For a connection handed over by the fast path after it served a request: HTTP/1.1 only.
    builder_h1: Builder,
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains. `tls` is owned here: its certificate
/// reload task ends when this function returns.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<tls::ServerTls>,
    shutdown: impl Future<Output = ()>,
) {
    let limiter = connection_limiter(&app);
    let mut upkeep = start_upkeep(&app);
    let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
    let stop = async {
        shutdown.await;
        upkeep.stop();
    };
    serve_listener(listener, app, acceptor, limiter, stop).await;
    // The final snapshot, after in-flight requests are done.
    upkeep.close().await;
    drop(tls);
}

/// The connection cap (`limits.max_connections`, `limits.max_connections_per_source`): one per process, shared
/// by every accept loop (one per thread with `server.runtime = "per-core"`).
pub fn connection_limiter(app: &App) -> Arc<ConnectionLimiter> {
    let limits = &app.config.limits;
    let max_connections = connection::effective_max_connections(limits.max_connections, connection::open_file_limit());
    if let (Some(n), Some(files)) = (limits.max_connections, connection::open_file_limit()) {
        if n as u64 >= files {
            tracing::warn!(
                max_connections = n,
                open_file_limit = files,
                "limits.max_connections is not below the open-file limit; accept may fail for lack of descriptors"
            );
        }
    }
    let per_source_cap = connection::effective_per_source(limits.max_connections_per_source, max_connections);
    let per_source = (!app.config.server.behind_tls_terminator).then_some(per_source_cap);
    tracing::debug!(max_connections, ?per_source, "connection limits");
    ConnectionLimiter::new(max_connections, per_source)
}

/// Starts the store's sweeper and snapshot writer (once per process, on the calling runtime).
pub fn start_upkeep(app: &Arc<App>) -> UpkeepGuard {
    let upkeep = Upkeep {
        // Redis keeps its own expiries: the sweeper then has an empty store to sweep.
        store: app.store.memory().cloned().unwrap_or_default(),
        clock: app.clock.clone(),
        unused_client_ttl: app.config.registration.unused_client_ttl,
        snapshot: app.config.store.snapshot.clone(),
    };
    let limits_app = app.clone();
    UpkeepGuard::start(upkeep, move || limits_app.rate_limiter.sweep(std::time::Instant::now()))
}

/// One accept loop: serves `listener` under the shared `limiter` until `shutdown` resolves, then drains its
/// own connections (until `server.shutdown_grace`) and returns. Runs on the runtime it is awaited on.
pub async fn serve_listener(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    limiter: Arc<ConnectionLimiter>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = &app.config.limits;
    let (phase_tx, phase) = watch::channel(Phase::Running);
    let shared = Arc::new(Shared {
        tls,
        builder: http_builder(limits.header_timeout),
        builder_h1: http_builder(limits.header_timeout).http1_only(),
        deadlines: Deadlines { first_request: limits.header_timeout, idle: limits.idle_timeout },
        body_timeout: limits.body_timeout,
        phase,
        app: app.clone(),
    });
    let mut backoff = backoff::AcceptBackoff::default();
    // Connections refused since the last log line, and when that line was written (one per `LOG_EVERY`).
    let mut refusals: (u64, Option<std::time::Instant>) = (0, None);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    if let Some(failures) = backoff.succeeded() {
                        tracing::debug!(failures, "accepting connections again");
                    }
                    conn
                }
                Err(e) if backoff::is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: pause, longer each time, and retry as soon as one
                    // of our connections closes.
                    let after = backoff.failed(std::time::Instant::now());
                    if let Some(failures) = after.log {
                        tracing::warn!(error = %e, failures, pause = ?after.pause, "accept failed; pausing");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(after.pause) => {}
                        () = limiter.released() => {}
                        () = &mut shutdown => break,
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        match limiter.try_admit(peer.ip()) {
            Ok(permit) => {
                tokio::spawn(serve_connection(shared.clone(), stream, peer, permit));
            }
            Err(refused) => {
                drop(stream);
                refusals.0 += 1;
                let now = std::time::Instant::now();
                if refusals.1.is_none_or(|t| now.duration_since(t) >= backoff::LOG_EVERY) {
                    let open = limiter.open();
                    tracing::warn!(%peer, ?refused, open, refused_since_last = refusals.0, "connection limit reached; closing new connections");
                    refusals = (0, Some(now));
                }
            }
        }
    }
    drop(listener);
    let _ = phase_tx.send(Phase::Draining);
    drop(shared);
    let grace = app.config.server.shutdown_grace;
    tokio::select! {
        () = phase_tx.closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "shutdown deadline reached; closing remaining connections");
            let _ = phase_tx.send(Phase::Abort);
            let _ = tokio::time::timeout(Duration::from_secs(1), phase_tx.closed()).await;
        }
    }
}

/// One connection: the TLS handshake and the HTTP connection, under the connection deadlines.
async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, permit: ConnectionPermit) {
    let accepted = Instant::now();
    let _ = stream.set_nodelay(true);
    let ended = match shared.tls.clone() {
        None => serve_http(&shared, stream, peer, accepted, shared.app.config.server.fast_path).await,
        // Boxed (issue 23 item 15): a TLS connection's state (rustls' buffers, the handshake) is not part of every
        // plain connection's task, which an idle keep-alive connection holds for as long as it stays.
        Some(acceptor) => {
            Box::pin(async {
                let deadline = accepted + shared.deadlines.first_request;
                let mut phase = shared.phase.clone();
                let handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream));
                let done = tokio::select! {
                    done = handshake => Some(done),
                    _ = phase.wait_for(|p| *p != Phase::Running) => None,
                };
                match done {
                    Some(Ok(Ok(tls))) => {
                        // A client that chose HTTP/2 is hyper's.
                        let fast = shared.app.config.server.fast_path && tls.get_ref().1.alpn_protocol() != Some(b"h2");
                        serve_http(&shared, tls, peer, accepted, fast).await
                    }
                    Some(Ok(Err(e))) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        Ended::Closed
                    }
                    Some(Err(_)) => Ended::FirstRequestTimeout,
                    None => Ended::Aborted,
                }
            })
            .await
        }
    };
    if ended != Ended::Closed {
        tracing::debug!(%peer, ?ended, "connection closed by the server");
    }
    drop(permit);
}

/// One HTTP connection: the fast path first when `fast` ([`fast_path`]; it hands the rest of the connection to
/// hyper at the first request it does not serve), else hyper.
async fn serve_http<I>(shared: &Shared, io: I, peer: SocketAddr, accepted: Instant, fast: bool) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // hyper's connection state is boxed: a connection the fast path serves never carries it.
    if !fast {
        return Box::pin(serve_hyper(shared, io, peer, accepted)).await;
    }
    let activity = Arc::new(Activity::default());
    let closing = Arc::new(fast_path::Closing::default());
    let env = fast_path::Env {
        app: shared.app.clone(),
        peer,
        activity: activity.clone(),
        closing: closing.clone(),
        header_timeout: shared.deadlines.first_request,
        body_timeout: shared.body_timeout,
    };
    let run = fast_path::run(env, io);
    let (ended, output) =
        connection::supervise_any(run, |_| closing.close(), activity, accepted, shared.deadlines, shared.phase.clone())
            .await;
    match output {
        Some(Ok(Some(hand_over))) => {
            // hyper's clocks go on from where they were: the accept for the first request, else the pending
            // head's first byte; after a request served fast, HTTP/1.1 only.
            let (since, served) = (hand_over.head_since, hand_over.served);
            let io = fast_path::Prefixed::new(hand_over.io, hand_over.read.freeze());
            match served {
                true => Box::pin(serve_hyper_with(shared, true, io, peer, since)).await,
                false => Box::pin(serve_hyper(shared, io, peer, accepted)).await,
            }
        }
        Some(Ok(None)) => ended,
        Some(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            ended
        }
        None => ended,
    }
}

async fn serve_hyper<I>(shared: &Shared, io: I, peer: SocketAddr, accepted: Instant) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_hyper_with(shared, false, io, peer, accepted).await
}

async fn serve_hyper_with<I>(shared: &Shared, h1_only: bool, io: I, peer: SocketAddr, accepted: Instant) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let app = shared.app.clone();
    let body_timeout = shared.body_timeout;
    let tracker = activity.clone();
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let in_flight = tracker.begin();
        let app = app.clone();
        async move {
            let own = crate::endpoint::Endpoint::parse(req.uri().path(), &app.metadata.protected_resource_path)
                != crate::endpoint::Endpoint::Proxy;
            let limits = app.metrics.body_limits();
            let req = req.map(|body| {
                let timed = TimedBody::new(body, body_timeout).counted(limits);
                if own {
                    timed.with_deadline(crate::http::timed_body::OWN_BODY_DEADLINE)
                } else {
                    timed
                }
            });
            let resp = crate::router::handle(app, req, peer).await;
            Ok::<_, Infallible>(resp.map(|body| TrackedBody::new(body, in_flight)))
        }
    });
    // hyper reads what the framing guard passed (issue 23 item 14).
    let io = TokioIo::new(framing_guard::Guarded::new(io));
    let (ended, error) = match h1_only {
        // The auto builder ignores `http1_only` with upgrades: no upgrades on a connection the fast path began.
        true => {
            let conn = shared.builder_h1.serve_connection(io, service);
            let phase = shared.phase.clone();
            connection::supervise(conn, |c| c.graceful_shutdown(), activity, accepted, shared.deadlines, phase).await
        }
        false => {
            let conn = shared.builder.serve_connection_with_upgrades(io, service);
            let phase = shared.phase.clone();
            connection::supervise(conn, |c| c.graceful_shutdown(), activity, accepted, shared.deadlines, phase).await
        }
    };
    if let Some(e) = error {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    ended
}

/// Serves `GET /metrics` (Prometheus text format) on its own listener until `shutdown` resolves; then it stops
/// accepting and ends the connections it serves. Accept errors that are not the connection's own (no
/// descriptors left) pause as in [`serve`] ([`backoff`]) instead of spinning.
pub async fn serve_metrics(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    serve_side("metrics", listener, shutdown, move |stream, _peer| {
        let app = app.clone();
        async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        let mut r = http::Response::new(crate::http::full(app.metrics.render(&app.store)));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                        );
                        r
                    } else {
                        crate::error::Error::NotFound.into_response()
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            side_connection(TokioIo::new(stream), service).await;
        }
    })
    .await;
}

/// The admin and metrics listeners' supervision (issue 23): their own small cap on connections (one beyond it is
/// closed at once, so idle sockets cannot hold descriptors the public listener needs), a deadline for each request
/// head, and a whole-connection deadline (these answers are small and quick).
const SIDE_MAX_CONNECTIONS: usize = 32;
/// How long a side listener's client has to send a request head (also while idle between requests).
const SIDE_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest a side listener's connection lives.
const SIDE_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// The connection slots of one side listener.
#[derive(Clone)]
struct SideSlots(Arc<tokio::sync::Semaphore>);

impl SideSlots {
    fn new() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(SIDE_MAX_CONNECTIONS)))
    }

    fn try_acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slot = self.0.clone().try_acquire_owned().ok();
        if slot.is_none() {
            tracing::debug!("side listener full; connection closed");
        }
        slot
    }
}

/// Serves one HTTP/1.1 connection of a side listener under its deadlines.
async fn side_connection<I, S>(io: TokioIo<I>, service: S)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::http::Body> + Send,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(SIDE_HEADER_TIMEOUT);
    let _ = tokio::time::timeout(SIDE_CONNECTION_LIFETIME, http.serve_connection(io, service)).await;
}

/// Serves the admin API ([`crate::admin`]) on its own listener (HTTP/1.1, loopback or a private address) until
/// `shutdown` resolves. Only `/admin/…` exists here; the public listener never routes to it.
pub async fn serve_admin(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    serve_admin_on(AdminListener::Tcp(listener), app, shutdown).await;
}

/// [`serve_admin`] on a Unix socket ([`bind_admin_socket`]). Its clients show as `127.0.0.1` in the audit trail.
#[cfg(unix)]
pub async fn serve_admin_unix(listener: tokio::net::UnixListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    serve_admin_on(AdminListener::Unix(listener), app, shutdown).await;
}

/// Binds the admin API's Unix socket, replacing a stale socket file (never another kind of file), mode 0600.
///
/// The socket never exists at `path` with wider permissions, not even for an instant: it is bound inside a new
/// directory of mode 0700 beside `path` (nobody else can reach it there), set to 0600, then linked into place
/// (the same effect as binding under a 077 umask, without changing the process's umask).
#[cfg(unix)]
pub fn bind_admin_socket(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path)?;
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    // Short names: a socket path is limited to about 100 bytes (SUN_LEN).
    let private = parent.join(format!(".dcrp{}", &crate::crypto::random_token()[..8]));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = tokio::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        // A link, not a rename: it fails where anything (a regular file …) is already at `path`.
        std::fs::hard_link(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

enum AdminListener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

/// An accepted admin connection, TCP or Unix.
enum AdminStream {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl AdminListener {
    async fn accept(&self) -> std::io::Result<(AdminStream, std::net::SocketAddr)> {
        match self {
            Self::Tcp(l) => l.accept().await.map(|(s, a)| (AdminStream::Tcp(s), a)),
            #[cfg(unix)]
            Self::Unix(l) => l.accept().await.map(|(s, _)| (AdminStream::Unix(s), ([127, 0, 0, 1], 0).into())),
        }
    }
}

async fn serve_admin_on(listener: AdminListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    serve_side("admin", listener, shutdown, move |stream, peer| {
        let app = app.clone();
        async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move {
                    Ok::<_, Infallible>(crate::admin::handle(&app, req.method(), req.uri(), req.headers(), peer).await)
                }
            });
            match stream {
                AdminStream::Tcp(s) => side_connection(TokioIo::new(s), service).await,
                #[cfg(unix)]
                AdminStream::Unix(s) => side_connection(TokioIo::new(s), service).await,
            }
        }
    })
    .await;
}

/// A listener of the admin API or the metrics page.
trait SideListener {
    type Stream: Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, std::net::SocketAddr)>> + Send;
}

impl SideListener for TcpListener {
    type Stream = tokio::net::TcpStream;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, std::net::SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

impl SideListener for AdminListener {
    type Stream = AdminStream;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, std::net::SocketAddr)>> + Send {
        AdminListener::accept(self)
    }
}

/// The one accept loop of the side listeners (`what`: `admin`, `metrics`), under their supervision
/// ([`SIDE_MAX_CONNECTIONS`] slots, accept backoff, [`side_connection`]'s deadlines): each connection is served by
/// `serve` in its own task, aborted when the loop ends at `shutdown`.
async fn serve_side<L, F, Fut>(what: &'static str, listener: L, shutdown: impl Future<Output = ()>, serve: F)
where
    L: SideListener,
    F: Fn(L::Stream, std::net::SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = backoff::AcceptBackoff::default();
    let side_slots = SideSlots::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff.succeeded();
                    accepted
                }
                Err(e) if backoff::is_connection_error(&e) => continue,
                Err(e) => {
                    let after = backoff.failed(std::time::Instant::now());
                    if let Some(failures) = after.log {
                        tracing::warn!(error = %e, failures, pause = ?after.pause, "{what} accept failed; pausing");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(after.pause) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let Some(slot) = side_slots.try_acquire() else {
            drop(stream);
            continue;
        };
        let connection = serve(stream, peer);
        connections.spawn(async move {
            let _slot = slot;
            connection.await;
        });
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
