//! The plain-HTTP/1.1 upstream connections (RFC 9112 §9.3 persistence), driven in the request's own task
//! (issue 13).
//!
//! hyper-util's pooled client runs every upstream connection in a task of its own: each request is handed to that
//! task, and its response and every body chunk are handed back. Here nothing is spawned per request or per
//! connection: the connection future is polled by whoever waits on it — [`Pool::send`] until the response head,
//! then the response body ([`PooledBody`]) while the server writes it to the client. Ready body chunks are joined
//! into one frame (up to [`COALESCE_MAX`] bytes) so that a burst of small SSE events costs one write, not one per
//! event; a chunk alone is passed on at once, so no event waits for the next.
//!
//! Invariants:
//! - A connection goes back to the pool only when its response body was read to the end its framing gives
//!   (RFC 9112 §6.3) and hyper says it can take another request. Never when the client went away mid-body (the
//!   rest of that body would be read as the next response), never after an error, never after
//!   `Connection: close` (hyper closes the connection itself), never while the request body is still being sent.
//! - At most `upstream.pool_max_idle` idle connections, the most recently used taken first; an idle connection is
//!   closed after `upstream.pool_idle_timeout`, or as soon as the upstream closes it or sends anything unasked
//!   (a sweeper task per pool, which ends with the pool).
//! - A request is sent again, once, on a new connection only when hyper hands it back unsent (the pooled
//!   connection was found closed before the request was written). A request that was written is never replayed
//!   here, whatever its method: its body cannot be read twice, and the upstream may have acted on it.
//! - The request body is sent by the same polls: while the response streams, it advances as the client reads.

use std::collections::VecDeque;
use std::future::{poll_fn, Future as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::upstream_body::UpstreamBody;

/// Ready body chunks smaller than this are joined into one frame, up to this many bytes.
pub const COALESCE_MAX: usize = 16 * 1024;

type Connection = http1::Connection<TokioIo<TcpStream>, UpstreamBody>;
type Sender = http1::SendRequest<UpstreamBody>;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The log names the upstream (issue 26 item 5: "the unreachable-upstream warning names no URL"); the
    /// client's answer never does (`Error::UpstreamUnavailable` keeps its reason for the log).
    #[error("connecting to the upstream {0} failed: {1}")]
    Connect(Address, #[source] std::io::Error),
    #[error("connecting to the upstream {0} took longer than {1:?}")]
    ConnectTimeout(Address, Duration),
    #[error("the upstream exchange failed: {0}")]
    Http(#[source] hyper::Error),
}

/// Where the upstream listens.
#[derive(Debug, Clone)]
pub enum Address {
    /// An IP address in the URL: no name lookup.
    Ip(SocketAddr),
    /// A host name, looked up on every new connection.
    Name(String, u16),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(addr) => write!(f, "{addr}"),
            Self::Name(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

impl Address {
    /// A new TCP stream to the upstream (`TCP_NODELAY`), within `timeout` (`upstream.connect_timeout`).
    pub async fn connect(&self, timeout: Duration) -> Result<TcpStream, PoolError> {
        let connecting = async {
            match self {
                Self::Ip(addr) => TcpStream::connect(addr).await,
                Self::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await,
            }
        };
        let stream = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| PoolError::ConnectTimeout(self.clone(), timeout))?
            .map_err(|e| PoolError::Connect(self.clone(), e))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// One open upstream connection: the handle requests are sent with, and the connection future that does the IO.
struct Open {
    sender: Sender,
    conn: Connection,
}

struct Idle {
    open: Open,
    since: Instant,
    /// The thread whose current-thread runtime the connection is registered with ([`runtime_thread`]).
    thread: Option<std::thread::ThreadId>,
}

/// The calling thread when it runs a current-thread runtime, else `None`. With `server.runtime = "per-core"`
/// every worker thread has its own IO driver: a connection opened on one thread is taken only by that thread,
/// so its wake-ups never wait for another thread's driver (nor die with it at shutdown).
fn runtime_thread() -> Option<std::thread::ThreadId> {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => Some(std::thread::current().id()),
        _ => None,
    }
}

/// The idle connections to one upstream.
pub struct Pool {
    address: Address,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Most recently returned at the back.
    idle: Mutex<VecDeque<Idle>>,
    sweeping: AtomicBool,
}

impl Pool {
    pub fn new(address: Address, connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Arc<Self> {
        Arc::new(Self {
            address,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(VecDeque::new()),
            sweeping: AtomicBool::new(false),
        })
    }

    /// Idle connections now (for tests and metrics).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    /// Sends `req` (origin-form target, `Host` set) and waits for the response head, driving the connection.
    pub async fn send(self: &Arc<Self>, req: Request<UpstreamBody>) -> Result<Response<PooledBody>, PoolError> {
        let mut req = req;
        let mut fresh_only = false;
        loop {
            let pooled = match fresh_only {
                false => poll_fn(|cx| Poll::Ready(self.take_idle(cx))).await,
                true => None,
            };
            let reused = pooled.is_some();
            let Open { mut sender, conn } = match pooled {
                Some(open) => open,
                None => self.connect().await?,
            };
            let mut conn = Some(conn);
            let response = sender.try_send_request(req);
            tokio::pin!(response);
            let result = poll_fn(|cx| {
                if let Some(c) = conn.as_mut() {
                    if Pin::new(c).poll(cx).is_ready() {
                        // Ended: dropping it fails the request, and hands it back if it was never written.
                        conn = None;
                    }
                }
                response.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(resp) => {
                    let pool = self.clone();
                    return Ok(resp.map(|body| PooledBody::new(body, conn.map(|conn| Open { sender, conn }), pool)));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        tracing::debug!(error = %e.error(), "pooled upstream connection was closed; new connection");
                        req = unsent;
                        fresh_only = true;
                    }
                    _ => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection that is still open and ready, dropping the others on the way.
    fn take_idle(&self, cx: &mut Context<'_>) -> Option<Open> {
        let here = runtime_thread();
        let mut idle = self.idle.lock().ok()?;
        let mut at = idle.len();
        while at > 0 {
            at -= 1;
            if idle[at].since.elapsed() >= self.idle_timeout {
                // Older ones are older still.
                idle.drain(..=at);
                return None;
            }
            if idle[at].thread != here {
                continue;
            }
            let mut entry = idle.remove(at)?;
            // A poll notices an upstream that closed or sent something unasked (the connection then ends).
            if Pin::new(&mut entry.open.conn).poll(cx).is_pending() && entry.open.sender.is_ready() {
                return Some(entry.open);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Open, PoolError> {
        let stream = self.address.connect(self.connect_timeout).await?;
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(PoolError::Http)?;
        Ok(Open { sender, conn })
    }

    /// Takes back a connection whose exchange is complete; `cx` drives it to its idle state first.
    fn put(self: &Arc<Self>, mut open: Open, cx: &mut Context<'_>) {
        if Pin::new(&mut open.conn).poll(cx).is_ready() || !open.sender.is_ready() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else { return };
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        if self.max_idle > 0 {
            idle.push_back(Idle { open, since: Instant::now(), thread: runtime_thread() });
        }
        drop(idle);
        super::idle_sweep::start(self, &self.sweeping, self.idle_timeout);
    }
}

/// A response body from a pooled connection: reading it drives the connection, and its end returns the
/// connection to the pool.
pub struct PooledBody {
    body: Incoming,
    /// `None` once the connection ended or went back to the pool.
    open: Option<Open>,
    pool: Arc<Pool>,
    /// What the body yielded after the frame being built: trailers, an error, or its end (`None`).
    next: Option<Option<Result<Frame<Bytes>, hyper::Error>>>,
}

impl PooledBody {
    fn new(body: Incoming, open: Option<Open>, pool: Arc<Pool>) -> Self {
        let mut this = Self { body, open, pool, next: None };
        if this.body.is_end_stream() {
            // No body (HEAD, 204, 304, `Content-Length: 0`): the exchange is over now.
            this.next = Some(None);
            this.check_in(&mut Context::from_waker(Waker::noop()));
        }
        this
    }

    /// Polls the connection, so that it reads what the body waits for and writes what the request body has.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(open) = self.open.as_mut() {
            if Pin::new(&mut open.conn).poll(cx).is_ready() {
                self.open = None;
            }
        }
    }

    /// The next frame of the body as hyper gives it, the connection driven first.
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.drive(cx);
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if polled.is_pending() && self.open.is_some() {
            // The connection may have queued a chunk (or seen the end) on that poll.
            self.drive(cx);
            return Pin::new(&mut self.body).poll_frame(cx);
        }
        polled
    }

    fn check_in(&mut self, cx: &mut Context<'_>) {
        if let Some(open) = self.open.take() {
            self.pool.put(open, cx);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(next) = this.next.take() {
            if next.is_none() {
                this.next = Some(None);
                this.check_in(cx);
            }
            return Poll::Ready(next);
        }
        let first = match this.poll_inner(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                this.next = Some(None);
                this.check_in(cx);
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
        };
        let data = match first.into_data() {
            Ok(data) if data.len() < COALESCE_MAX => data,
            Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        // Join the chunks that are ready now; the first one is never held back for more.
        let mut joined: Option<BytesMut> = None;
        loop {
            let len = joined.as_ref().map_or(data.len(), BytesMut::len);
            if len >= COALESCE_MAX {
                break;
            }
            match this.poll_inner(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(more) => {
                        let buf = joined.get_or_insert_with(|| {
                            let mut b = BytesMut::with_capacity(COALESCE_MAX.max(data.len() + more.len()));
                            b.extend_from_slice(&data);
                            b
                        });
                        buf.extend_from_slice(&more);
                    }
                    Err(trailers) => {
                        this.next = Some(Some(Ok(trailers)));
                        break;
                    }
                },
                Poll::Ready(other) => {
                    if other.is_none() {
                        this.check_in(cx);
                    }
                    this.next = Some(other);
                    break;
                }
            }
        }
        Poll::Ready(Some(Ok(Frame::data(joined.map_or(data, BytesMut::freeze)))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.next {
            Some(None) => true,
            Some(Some(_)) => false,
            None => self.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.next {
            None => self.body.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // hyper stops polling a body once it has written the length it announced; that is a complete exchange.
        // Anything else (a client gone mid-body) closes the connection with the drop.
        if self.open.is_some() && self.next.is_none() && self.body.is_end_stream() {
            self.check_in(&mut Context::from_waker(Waker::noop()));
        }
    }
}

impl super::idle_sweep::Sweep for Pool {
    /// Drops the idle connections that timed out, were closed by the upstream, or received anything.
    fn sweep(&self) {
        let mut cx = Context::from_waker(Waker::noop());
        let Ok(mut idle) = self.idle.lock() else { return };
        idle.retain_mut(|e| {
            e.since.elapsed() < self.idle_timeout && Pin::new(&mut e.open.conn).poll(&mut cx).is_pending()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 26 item 5: the warning of an unreachable upstream names it (a closed loopback port).
    #[tokio::test]
    async fn a_refused_connection_names_the_upstream() {
        // A port bound and released at once: nothing listens there.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
        let addr = closed.unwrap_or_else(|e| panic!("a loopback port: {e}"));
        let e = Address::Ip(addr).connect(Duration::from_secs(2)).await.err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains(&addr.to_string())), "{e:?}");
        let named = Address::Name("localhost".into(), addr.port()).to_string();
        assert_eq!(named, format!("localhost:{}", addr.port()));
    }
}
