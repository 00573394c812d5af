//! The accept loop: plain TCP or TLS (rustls, ALPN `h2` and `http/1.1`), HTTP/1.1 and HTTP/2 on the same port
//! (hyper-util's auto builder), graceful shutdown after the reference `server_graceful.rs` of hyper-util.
//!
//! [`serve`] takes an already bound listener and a shutdown future, so that tests bind `127.0.0.1:0` and drive
//! the real server. On shutdown it stops accepting, lets in-flight requests finish until `server.shutdown_grace`,
//! then drops what is left (SSE streams included).

pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::app::App;

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(listener: TcpListener, app: Arc<App>, tls: Option<TlsAcceptor>, shutdown: impl Future<Output = ()>) {
    // `limits.header_timeout`: time allowed for the request headers (slowloris), for an idle keep-alive
    // connection's next request, and for a TLS handshake.
    let header_timeout = app.config.limits.header_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = GracefulShutdown::new();
    let sweeper = spawn_sweeper(app.clone());
    let snapshots = app.config.store.snapshot.as_ref().map(|s| spawn_snapshot_writer(app.clone(), s.interval));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app_for_conn = app.clone();
        let service = service_fn(move |req| {
            let app = app_for_conn.clone();
            async move { Ok::<_, Infallible>(crate::router::handle(app, req, peer).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match tls.clone() {
            None => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let conn = watcher.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!("TLS handshake timed out"),
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    sweeper.abort();
    if let Some(w) = snapshots {
        w.abort();
    }
    let grace = app.config.server.shutdown_grace;
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown deadline reached; closing remaining connections"),
    }
    // The final snapshot, after in-flight requests are done.
    write_snapshot(&app).await;
}

/// Writes the snapshot off the runtime's worker threads; failures are logged, never fatal.
pub async fn write_snapshot(app: &Arc<App>) {
    let Some(config) = app.config.store.snapshot.clone() else {
        return;
    };
    let app = app.clone();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        crate::store::snapshot::write(&app.store, app.clock.now(), &config.path, &config.key)
    })
    .await;
    match result {
        Ok(Ok(bytes)) => tracing::debug!(bytes, millis = started.elapsed().as_millis() as u64, "snapshot written"),
        Ok(Err(e)) => tracing::warn!(error = %e, "snapshot not written"),
        Err(e) => tracing::warn!(error = %e, "snapshot task failed"),
    }
}

/// Writes a snapshot every `interval`.
fn spawn_snapshot_writer(app: Arc<App>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            write_snapshot(&app).await;
        }
    })
}

/// Serves `GET /metrics` (Prometheus text format) on its own listener until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, app: Arc<App>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let app = app.clone();
        tokio::spawn(async move {
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
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Removes expired store entries every 30 seconds.
fn spawn_sweeper(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = app.clock.now();
            app.store.sweep(now);
            app.store.sweep_unused_clients(now, app.config.registration.unused_client_ttl.as_secs());
            app.rate_limiter.sweep(std::time::Instant::now());
        }
    })
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
