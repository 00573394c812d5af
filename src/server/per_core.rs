//! `server.runtime = "per-core"` (issue 13, runtime shape): `server.worker_threads` OS threads, each running a
//! tokio current-thread runtime with its own listener on `server.listen`. The listeners are bound with
//! `SO_REUSEPORT` (Linux `socket(7)`): the kernel hashes every new connection to one of them, and the connection
//! is then served by that thread alone — no work stealing, no cross-thread wake-ups on the hot path.
//!
//! Invariants:
//! - Everything but the accept loops exists once per process, on the control runtime (the thread that runs
//!   `main`): the store's upkeep (sweeper, periodic snapshots), the metrics and admin listeners, the certificate
//!   reload, the Redis connection tasks. [`App`] and the connection cap ([`super::connection::ConnectionLimiter`]) are shared by
//!   every thread, so `limits.max_connections` and `limits.max_connections_per_source` count the whole process.
//! - Start-up is all or nothing: every listener is bound and every runtime built before the first connection is
//!   accepted; a failure is a start-up error naming `server.listen` / `server.worker_threads`.
//! - Shutdown: on the signal every thread stops accepting and drains its own connections (until
//!   `server.shutdown_grace`); the final snapshot is written once, after every thread has finished. The control
//!   runtime keeps running meanwhile (it owns the Redis connections the draining requests may still use), and
//!   so does every worker runtime until the last thread has drained: a thread that finished early may own a
//!   connection (hyper-util's pooled client) that a request on another thread is still using.
//! - The own upstream pool ([`crate::proxy::pool`]) hands a thread only the connections opened on that thread.
//! - With `SO_REUSEPORT`, another process of the same user that binds the same address with `SO_REUSEPORT` joins
//!   the group and receives a share of the connections (as with nginx's `reuseport`): run the proxy under a user
//!   of its own.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};

use crate::app::App;

/// Pending connections per listener (tokio's `TcpListener::bind` uses the same).
const BACKLOG: u32 = 1024;

/// Why the per-core shape could not start.
#[derive(Debug, thiserror::Error)]
pub enum PerCoreError {
    #[error("cannot listen on {addr} with SO_REUSEPORT (server.listen): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the runtime of worker thread {index} (server.worker_threads): {source}")]
    Runtime {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// The number of threads: the configured one, else one per available core.
pub fn thread_count(configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)).max(1)
}

/// Binds `count` listeners on `addr`, all with `SO_REUSEPORT`. They are returned unregistered (std), so that
/// each can be registered with the runtime of the thread that will serve it. Must be called inside a runtime.
pub fn bind(addr: SocketAddr, count: usize) -> Result<Vec<std::net::TcpListener>, PerCoreError> {
    let bind_one = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)?.into_std()
    };
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let listener = bind_one(addr).map_err(|source| PerCoreError::Bind { addr, source })?;
        // Port 0 binds the first listener to a free port; the others join that one.
        if addr.port() == 0 {
            addr = listener.local_addr().map_err(|source| PerCoreError::Bind { addr, source })?;
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// One worker: its runtime and its listener, registered with that runtime.
struct Worker {
    runtime: tokio::runtime::Runtime,
    listener: TcpListener,
}

/// Builds a current-thread runtime per listener and registers each listener with its runtime.
fn workers(listeners: Vec<std::net::TcpListener>) -> Result<Vec<Worker>, PerCoreError> {
    listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| PerCoreError::Runtime { index, source })?;
            let addr = listener.local_addr().ok();
            let listener = {
                let _entered = runtime.enter();
                TcpListener::from_std(listener)
            }
            .map_err(|source| PerCoreError::Bind { addr: addr.unwrap_or(([0, 0, 0, 0], 0).into()), source })?;
            Ok(Worker { runtime, listener })
        })
        .collect()
}

/// The name of worker thread `index`, as the log shows it.
pub fn thread_name(index: usize) -> String {
    format!("dcr-proxy-worker-{index}")
}

/// Serves `app` on `listeners` (from [`bind`]), one thread each, until `shutdown` resolves; then every thread
/// drains, and the final snapshot is written once. Awaited on the control runtime, which keeps the upkeep.
pub async fn serve(
    listeners: Vec<std::net::TcpListener>,
    app: Arc<App>,
    tls: Option<super::tls::ServerTls>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PerCoreError> {
    let workers = workers(listeners)?;
    let limiter = super::connection_limiter(&app);
    let mut upkeep = super::start_upkeep(&app);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (release_tx, release_rx) = watch::channel(false);
    let mut drained = Vec::with_capacity(workers.len());
    let mut exited = Vec::with_capacity(workers.len());
    for (index, Worker { runtime, listener }) in workers.into_iter().enumerate() {
        let (drained_tx, drained_rx) = oneshot::channel::<()>();
        let (exited_tx, exited_rx) = oneshot::channel::<()>();
        let app = app.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
        let limiter = limiter.clone();
        let (mut stop, mut release) = (stop_rx.clone(), release_rx.clone());
        let spawned = std::thread::Builder::new().name(thread_name(index)).spawn(move || {
            runtime.block_on(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                super::serve_listener(listener, app, acceptor, limiter, stopped).await;
                let _ = drained_tx.send(());
                // Until every thread has drained, this runtime keeps driving what it owns that another thread's
                // request may still use (a connection of hyper-util's pooled client, a Redis reconnection).
                let _ = release.wait_for(|r| *r).await;
            });
            drop(runtime);
            let _ = exited_tx.send(());
        });
        match spawned {
            Ok(_) => {
                drained.push(drained_rx);
                exited.push(exited_rx);
            }
            Err(source) => {
                // Those already started stop: the process does not serve with fewer threads than configured.
                let _ = stop_tx.send(true);
                let _ = release_tx.send(true);
                for finished in exited {
                    let _ = finished.await;
                }
                return Err(PerCoreError::Runtime { index, source });
            }
        }
    }
    tracing::info!(threads = drained.len(), "per-core runtimes serving");
    shutdown.await;
    upkeep.stop();
    let _ = stop_tx.send(true);
    // Awaited, not joined: the control runtime keeps driving what the draining requests use (Redis).
    for finished in drained {
        let _ = finished.await;
    }
    let _ = release_tx.send(true);
    for finished in exited {
        let _ = finished.await;
    }
    tracing::info!("every worker thread has drained");
    // The final snapshot, once, after every thread's in-flight requests are done.
    upkeep.close().await;
    drop(tls);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_defaults_to_the_available_cores_and_is_never_zero() {
        assert_eq!(thread_count(Some(3)), 3);
        assert_eq!(thread_count(Some(0)), 1);
        assert!(thread_count(None) >= 1);
    }

    #[tokio::test]
    async fn listeners_share_one_port_and_a_taken_port_is_named() {
        #![allow(clippy::unwrap_used)]
        let listeners = bind(([127, 0, 0, 1], 0).into(), 3).unwrap();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert!(ports.iter().all(|p| *p == ports[0] && *p != 0), "{ports:?}");
        // A plain listener (no SO_REUSEPORT) holds the port: binding fails, naming the key.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind(plain.local_addr().unwrap(), 2).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("server.listen"), "{err}");
    }
}
