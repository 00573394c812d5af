//! One client connection from accept to close: the connection cap, and the deadlines that keep a connection
//! from being held by a client that does not speak (RFC 9110 §9.3 slowloris, RFC 9113 §6.7 PING, §6.8 GOAWAY).
//!
//! - **Cap** ([`ConnectionLimiter`]): at most `limits.max_connections` connections, and
//!   `limits.max_connections_per_source` from one source address (an IPv6 source counts per /64); a connection
//!   beyond either is closed right after accept, before a byte is read.
//! - **First request** (`limits.header_timeout`): from accept until the first request head has reached the
//!   service — TCP silence, the TLS handshake, a partial HTTP/2 preface, SETTINGS and HEADERS all count. Missed:
//!   the connection is dropped.
//! - **Idle** (`limits.idle_timeout`): a connection with no request in flight for this long is shut down
//!   gracefully (HTTP/1.1: closed; HTTP/2: GOAWAY), and dropped when it has not closed `header_timeout` later. A
//!   request is in flight from the moment its head reaches the service until its response body has been sent or
//!   dropped, so a response that streams for hours (SSE) keeps its connection however silent the client is.
//! - **Body** (`limits.body_timeout`): see [`crate::http::timed_body`].
//! - **Sending** (`limits.idle_timeout` again): a response frame that the client does not take — an HTTP/2
//!   client that never opens its flow-control window, an HTTP/1.1 client that stops reading — would keep its
//!   request in flight for ever. While a response body has handed over a frame and is not asked for the next one,
//!   the connection is checked every half `idle_timeout`; two checks in a row without any progress close it. A
//!   silent SSE stream is not affected: its body is waiting on the upstream, not on the client.
//!
//! Invariants: a connection holds one [`ConnectionPermit`] for its whole life (TLS handshake included) and gives
//! it back when its task ends; every connection task ends at the latest when the server aborts after
//! `server.shutdown_grace`.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// The server's phase, as every connection task sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Shutting down: finish what is in flight, accept no new request.
    Draining,
    /// The shutdown grace is over: close now.
    Abort,
}

/// The deadlines of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Until the first request head reaches the service (TLS handshake included).
    pub first_request: Duration,
    /// With no request in flight.
    pub idle: Duration,
}

// ---- the cap --------------------------------------------------------------------------------------------------

/// Counts open connections, in total and per source.
#[derive(Debug)]
pub struct ConnectionLimiter {
    max: usize,
    /// `None` when connections all come from a TLS terminator.
    max_per_source: Option<usize>,
    open: AtomicUsize,
    per_source: DashMap<IpAddr, usize>,
    released: Notify,
}

/// A connection slot; given back on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    source: IpAddr,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    Source,
}

/// The key a source is counted under: the address, or its /64 for IPv6 (one host usually holds a whole /64).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

impl ConnectionLimiter {
    pub fn new(max: usize, max_per_source: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            max,
            max_per_source,
            open: AtomicUsize::new(0),
            per_source: DashMap::new(),
            released: Notify::new(),
        })
    }

    /// Takes a slot for a connection from `peer`, or says which cap is reached.
    pub fn try_admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionPermit, Refused> {
        let taken = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1));
        if taken.is_err() {
            return Err(Refused::Total);
        }
        let source = source_key(peer);
        if let Some(max) = self.max_per_source {
            let mut count = self.per_source.entry(source).or_insert(0);
            if *count >= max {
                drop(count);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::Source);
            }
            *count += 1;
        }
        Ok(ConnectionPermit { limiter: self.clone(), source })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves when a connection has closed since the last call (a descriptor is free again).
    pub async fn released(&self) {
        self.released.notified().await;
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let limiter = &self.limiter;
        if limiter.max_per_source.is_some() {
            // Remove the entry with the source's last connection, so the map holds only sources with connections.
            limiter.per_source.remove_if_mut(&self.source, |_, count| {
                *count = count.saturating_sub(1);
                *count == 0
            });
        }
        limiter.open.fetch_sub(1, Ordering::AcqRel);
        limiter.released.notify_one();
    }
}

/// The connection cap to use: the configured one, or 4096 lowered to half the open-file limit, so that
/// descriptors remain for the upstream, the IdP and snapshots (each client connection may hold an upstream one).
pub fn effective_max_connections(configured: Option<usize>, open_file_limit: Option<u64>) -> usize {
    const DEFAULT: usize = 4096;
    match (configured, open_file_limit) {
        (Some(n), _) => n,
        (None, Some(limit)) => DEFAULT.min(usize::try_from(limit / 2).unwrap_or(usize::MAX)).max(1),
        (None, None) => DEFAULT,
    }
}

/// The per-source cap to use with the effective global cap `max_connections`: the configured one, or a quarter of
/// the global cap (at most 256, at least 1). A configured cap that is not below the global one is lowered to half
/// of it (with a warning): one source must never be able to take every slot.
pub fn effective_per_source(configured: Option<usize>, max_connections: usize) -> usize {
    match configured {
        Some(n) if n >= max_connections => {
            let lowered = (max_connections / 2).max(1);
            tracing::warn!(
                max_connections_per_source = n,
                max_connections,
                used = lowered,
                "limits.max_connections_per_source is not below the connection cap; one source could take every \
                 slot, so half the cap is used"
            );
            lowered
        }
        Some(n) => n,
        None => (max_connections / 4).clamp(1, 256),
    }
}

/// The soft open-file limit of this process (`RLIMIT_NOFILE`), read from `/proc/self/limits` (Linux).
pub fn open_file_limit() -> Option<u64> {
    parse_open_file_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

// ---- requests in flight -----------------------------------------------------------------------------------------

/// What the connection's service tells its supervisor: requests started and requests in flight.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU64,
    in_flight: AtomicUsize,
    changed: Notify,
    /// Response bodies holding a frame the client has not taken yet.
    sending: AtomicUsize,
    /// Frames produced or taken by the client, over all response bodies: moves while the client reads.
    progress: AtomicU64,
}

/// One request in flight; dropped with its response body.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Activity {
    /// A request head has reached the service.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        InFlight(self.clone())
    }
}

/// A write to the client in progress (the fast path, [`crate::server::fast_path`]): counted like a response frame
/// the client has not taken yet, so that a client that stops reading is closed by the same send-stall check.
#[derive(Debug)]
pub struct Sending<'a>(&'a Activity);

impl Activity {
    /// A write to the client starts; it ends when the guard is dropped.
    pub fn sending(&self) -> Sending<'_> {
        self.sending.fetch_add(1, Ordering::AcqRel);
        self.progress.fetch_add(1, Ordering::Relaxed);
        Sending(self)
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::AcqRel);
        self.0.progress.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_one();
        }
    }
}

/// A response body that keeps its request in flight until it is sent or dropped, and tells the supervisor while
/// one of its frames waits for the client.
pub struct TrackedBody<B> {
    inner: B,
    in_flight: InFlight,
    /// A frame was handed over and the body was not polled since: the client has not taken it yet.
    holding: bool,
}

impl<B> TrackedBody<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Self { inner, in_flight, holding: false }
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        if self.holding {
            self.in_flight.0.sending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let activity = &this.in_flight.0;
        if this.holding {
            // Asked for the next frame: the previous one was taken.
            this.holding = false;
            activity.sending.fetch_sub(1, Ordering::AcqRel);
            activity.progress.fetch_add(1, Ordering::Relaxed);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.holding = true;
            activity.sending.fetch_add(1, Ordering::AcqRel);
            activity.progress.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---- the supervisor -----------------------------------------------------------------------------------------

/// How a supervised connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// hyper finished it (the client closed, or a graceful shutdown completed).
    Closed,
    /// No complete request head in time.
    FirstRequestTimeout,
    /// Idle and still open after the graceful shutdown had time to complete.
    Dropped,
    /// The server's shutdown grace ran out.
    Aborted,
    /// A response frame waited for the client for a whole `idle_timeout` without any progress.
    SendStalled,
}

/// What the supervisor waits for next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Drop(Instant, Ended),
    Shutdown(Instant),
    /// Busy: look at the sending progress at this time.
    Check(Instant),
}

/// The supervisor's view of one connection.
#[derive(Debug)]
struct Watch {
    accepted: Instant,
    deadlines: Deadlines,
    last_started: u64,
    was_busy: bool,
    idle_since: Instant,
    draining_since: Option<Instant>,
    /// While busy, when the sending progress is looked at next (every half `idle`, never moved by new requests).
    next_check: Option<Instant>,
    /// The progress seen at the last check, when a frame was waiting for the client then.
    stalled_at: Option<u64>,
}

impl Watch {
    /// A check of the sending progress: `true` when a frame has waited for the client since the previous check
    /// without any progress (two checks in a row, so between half and one whole `idle`).
    fn check_sending(&mut self, sending: usize, progress: u64, now: Instant) -> bool {
        if sending > 0 && self.stalled_at == Some(progress) {
            return true;
        }
        self.stalled_at = (sending > 0).then_some(progress);
        self.next_check = Some(now + self.deadlines.idle / 2);
        false
    }

    /// Updates from the activity counters at `now` and says what comes next.
    fn next(&mut self, started: u64, in_flight: usize, now: Instant) -> Next {
        let busy = in_flight > 0;
        if busy || self.was_busy || started != self.last_started {
            self.idle_since = now;
        }
        self.was_busy = busy;
        self.last_started = started;
        if started == 0 {
            return Next::Drop(self.accepted + self.deadlines.first_request, Ended::FirstRequestTimeout);
        }
        if busy {
            let at = *self.next_check.get_or_insert(now + self.deadlines.idle / 2);
            return Next::Check(at);
        }
        self.next_check = None;
        self.stalled_at = None;
        match self.draining_since {
            Some(since) => Next::Drop(since.max(self.idle_since) + self.deadlines.first_request, Ended::Dropped),
            None => Next::Shutdown(self.idle_since + self.deadlines.idle),
        }
    }
}

/// Drives `conn` under the connection deadlines until it ends; `shutdown` starts its graceful shutdown.
pub async fn supervise<C, E>(
    conn: C,
    shutdown: impl FnMut(Pin<&mut C>),
    activity: Arc<Activity>,
    accepted: Instant,
    deadlines: Deadlines,
    phase: watch::Receiver<Phase>,
) -> (Ended, Option<E>)
where
    C: Future<Output = Result<(), E>>,
{
    let (ended, output) = supervise_any(conn, shutdown, activity, accepted, deadlines, phase).await;
    (ended, output.and_then(Result::err))
}

/// [`supervise`] for any connection future: its output when it ended by itself (`Ended::Closed`).
pub async fn supervise_any<C: Future>(
    conn: C,
    mut shutdown: impl FnMut(Pin<&mut C>),
    activity: Arc<Activity>,
    accepted: Instant,
    deadlines: Deadlines,
    mut phase: watch::Receiver<Phase>,
) -> (Ended, Option<C::Output>) {
    tokio::pin!(conn);
    let mut watch = Watch {
        accepted,
        deadlines,
        last_started: 0,
        was_busy: false,
        idle_since: accepted,
        draining_since: None,
        next_check: None,
        stalled_at: None,
    };
    if *phase.borrow_and_update() != Phase::Running {
        return (Ended::Aborted, None);
    }
    loop {
        let now = Instant::now();
        let next =
            watch.next(activity.started.load(Ordering::Acquire), activity.in_flight.load(Ordering::Acquire), now);
        let deadline = match &next {
            Next::Drop(at, _) | Next::Shutdown(at) | Next::Check(at) => Some(*at),
        };
        tokio::select! {
            output = conn.as_mut() => return (Ended::Closed, Some(output)),
            () = activity.changed.notified() => {}
            () = sleep_until_some(deadline) => match next {
                Next::Drop(_, why) => return (why, None),
                Next::Shutdown(_) => {
                    shutdown(conn.as_mut());
                    watch.draining_since = Some(Instant::now());
                }
                Next::Check(_) => {
                    let sending = activity.sending.load(Ordering::Acquire);
                    if watch.check_sending(sending, activity.progress.load(Ordering::Relaxed), Instant::now()) {
                        return (Ended::SendStalled, None);
                    }
                }
            },
            changed = phase.changed() => {
                let current = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Abort };
                match current {
                    Phase::Abort => return (Ended::Aborted, None),
                    Phase::Draining if watch.draining_since.is_none() => {
                        shutdown(conn.as_mut());
                        watch.draining_since = Some(Instant::now());
                    }
                    Phase::Draining | Phase::Running => {}
                }
            }
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_source_cap_follows_the_global_one() {
        assert_eq!(effective_per_source(None, 4096), 256);
        assert_eq!(effective_per_source(None, 256), 64);
        assert_eq!(effective_per_source(None, 2), 1);
        assert_eq!(effective_per_source(Some(10), 256), 10);
        assert_eq!(effective_per_source(Some(256), 256), 128);
        assert_eq!(effective_per_source(Some(1000), 1), 1);
    }

    fn watch(at: Instant) -> Watch {
        Watch {
            accepted: at,
            deadlines: Deadlines { first_request: Duration::from_secs(15), idle: Duration::from_secs(60) },
            last_started: 0,
            was_busy: false,
            idle_since: at,
            draining_since: None,
            next_check: None,
            stalled_at: None,
        }
    }

    #[test]
    fn a_connection_without_a_request_is_dropped_at_the_first_request_deadline() {
        let t0 = Instant::now();
        let mut w = watch(t0);
        assert_eq!(w.next(0, 0, t0), Next::Drop(t0 + Duration::from_secs(15), Ended::FirstRequestTimeout));
        // Still nothing later: the deadline does not move.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(w.next(0, 0, later), Next::Drop(t0 + Duration::from_secs(15), Ended::FirstRequestTimeout));
    }

    #[test]
    fn the_idle_clock_starts_when_the_last_response_ends_and_never_runs_while_one_is_in_flight() {
        let t0 = Instant::now();
        let mut w = watch(t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(w.next(1, 1, t1), Next::Check(t1 + Duration::from_secs(30)));
        let t2 = t0 + Duration::from_secs(3600);
        assert!(matches!(w.next(1, 1, t2), Next::Check(_)), "a long response (SSE) is never idle");
        let t3 = t2 + Duration::from_secs(1);
        assert_eq!(w.next(1, 0, t3), Next::Shutdown(t3 + Duration::from_secs(60)));
        let t4 = t3 + Duration::from_secs(5);
        assert_eq!(w.next(1, 0, t4), Next::Shutdown(t3 + Duration::from_secs(60)), "unchanged while idle");
        // A whole request between two wake-ups still restarts the clock.
        let t5 = t4 + Duration::from_secs(5);
        assert_eq!(w.next(2, 0, t5), Next::Shutdown(t5 + Duration::from_secs(60)));
        w.draining_since = Some(t5 + Duration::from_secs(60));
        assert_eq!(w.next(2, 0, t5), Next::Drop(t5 + Duration::from_secs(75), Ended::Dropped));
    }

    #[test]
    fn a_frame_the_client_does_not_take_for_two_checks_closes_the_connection() {
        let t0 = Instant::now();
        let mut w = watch(t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(w.next(1, 1, t1), Next::Check(t1 + Duration::from_secs(30)));
        // New requests do not move the check.
        assert_eq!(w.next(2, 2, t1 + Duration::from_secs(10)), Next::Check(t1 + Duration::from_secs(30)));
        let t2 = t1 + Duration::from_secs(30);
        assert!(!w.check_sending(1, 7, t2), "first sight of a waiting frame");
        assert_eq!(w.next(2, 2, t2), Next::Check(t2 + Duration::from_secs(30)));
        assert!(!w.check_sending(1, 9, t2 + Duration::from_secs(30)), "the client took frames meanwhile");
        assert!(w.check_sending(1, 9, t2 + Duration::from_secs(60)), "no progress for a whole check");
        // A body waiting on the upstream (nothing held for the client) is never stalled.
        let mut quiet = watch(t0);
        assert!(!quiet.check_sending(0, 5, t1));
        assert!(!quiet.check_sending(0, 5, t2));
    }

    #[test]
    fn the_cap_counts_total_and_per_source_and_frees_on_drop() {
        let limiter = ConnectionLimiter::new(3, Some(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "192.0.2.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let p1 = limiter.try_admit(a);
        let p2 = limiter.try_admit(a);
        assert!(p1.is_ok() && p2.is_ok());
        assert_eq!(limiter.try_admit(a).err(), Some(Refused::Source));
        let p3 = limiter.try_admit(b);
        assert!(p3.is_ok());
        assert_eq!(limiter.try_admit(b).err(), Some(Refused::Total));
        drop(p1);
        assert_eq!(limiter.open(), 2);
        assert!(limiter.try_admit(a).is_ok());
        drop((p2, p3));
        assert_eq!(limiter.per_source.len(), 0, "no entry is kept for a source without connections");
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(source_key(ip("2001:db8:1:2:aaaa::1")), source_key(ip("2001:db8:1:2:bbbb::2")));
        assert_ne!(source_key(ip("2001:db8:1:2::1")), source_key(ip("2001:db8:1:3::1")));
        assert_eq!(source_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn the_default_cap_leaves_half_the_descriptors() {
        assert_eq!(effective_max_connections(None, None), 4096);
        assert_eq!(effective_max_connections(None, Some(1024)), 512);
        assert_eq!(effective_max_connections(None, Some(1_048_576)), 4096);
        assert_eq!(effective_max_connections(Some(10_000), Some(1024)), 10_000);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            256                  1048576              files     \n";
        assert_eq!(parse_open_file_limit(limits), Some(256));
        assert_eq!(parse_open_file_limit("Max open files   unlimited  unlimited files"), None);
    }
}
