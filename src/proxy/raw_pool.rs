//! The fast path's own plain-HTTP/1.1 upstream connections (RFC 9112 §9.3 persistence; issue 13): bare TCP
//! streams, no HTTP machinery. [`crate::server::fast_path`] writes request heads and copies bodies on them.
//!
//! Invariants:
//! - A stream comes back ([`RawPool::put`]) only after a complete exchange: both bodies ended at the end their
//!   framing gives, no byte left over, neither side said `Connection: close`. The caller never puts back a stream
//!   after an error, a timeout or a client that went away mid-body (the rest of that body would be read as the
//!   next response).
//! - At most `upstream.pool_max_idle` idle streams, the most recently used taken first; one idle longer than
//!   `upstream.pool_idle_timeout`, closed by the upstream, or holding bytes nobody asked for is closed at
//!   checkout instead of being used, and a sweeper task (one per pool, started with the first idle stream, ended
//!   with the pool) closes expired, closed or noisy idle streams every half `pool_idle_timeout`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::pool::{Address, PoolError};

/// Idle raw upstream streams of one upstream.
pub struct RawPool {
    address: Address,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Most recently returned at the back.
    idle: Mutex<Vec<(TcpStream, Instant)>>,
    /// Exchanges the fast path has started on this pool (tests and benchmarks: proof that it ran).
    exchanges: AtomicU64,
    sweeping: AtomicBool,
}

impl RawPool {
    pub fn new(address: Address, connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            address,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
            exchanges: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
        }
    }

    /// An open stream: an idle one that is still usable (`true`: reused), else a new one.
    pub async fn checkout(&self) -> Result<(TcpStream, bool), PoolError> {
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        while let Some((stream, since)) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            if since.elapsed() < self.idle_timeout && is_quiet(&stream) {
                return Ok((stream, true));
            }
        }
        Ok((self.connect().await?, false))
    }

    /// A new stream, within `upstream.connect_timeout`.
    pub async fn connect(&self) -> Result<TcpStream, PoolError> {
        self.address.connect(self.connect_timeout).await
    }

    /// Takes back a stream whose exchange completed cleanly (see the module's invariants).
    pub fn put(self: &Arc<Self>, stream: TcpStream) {
        if self.max_idle == 0 {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else { return };
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push((stream, Instant::now()));
        drop(idle);
        super::idle_sweep::start(self, &self.sweeping, self.idle_timeout);
    }

    /// Idle streams now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    /// Exchanges started so far.
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }
}

/// Whether an idle stream has neither been closed by the upstream nor received bytes nobody asked for: a real
/// `recv(MSG_PEEK)` on the non-blocking socket. (`TcpStream::try_read` would not do: it answers `WouldBlock`
/// without a syscall until the reactor has seen the socket readable, so bytes or a FIN that arrived since the last
/// turn of the reactor would pass as quiet.)
fn is_quiet(stream: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(socket2::SockRef::from(stream).peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

impl super::idle_sweep::Sweep for RawPool {
    /// Closes the idle streams that expired, were closed by the upstream or hold unasked bytes.
    fn sweep(&self) {
        let Ok(mut idle) = self.idle.lock() else { return };
        idle.retain(|(stream, since)| since.elapsed() < self.idle_timeout && is_quiet(stream));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write as _;

    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// Bytes written by the peer right before the check are seen at once, with no turn of the reactor between.
    #[tokio::test]
    async fn bytes_or_a_close_that_just_arrived_make_an_idle_stream_noisy() {
        for close in [false, true] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (mut peer, _) = listener.accept().unwrap();
            // A complete response, read short: tokio clears the stream's readiness.
            peer.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0 && is_quiet(&stream));
            // No await from here on: the reactor cannot have seen what follows.
            match close {
                false => peer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale").unwrap(),
                true => drop(peer),
            }
            assert!(
                !is_quiet(&stream),
                "an idle stream with {} passed as quiet",
                ["unasked bytes", "a FIN"][usize::from(close)]
            );
        }
    }
}
