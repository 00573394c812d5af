//! The request body with a read deadline: [`TimedBody`] cuts a body whose next frame does not arrive within the
//! idle limit (`limits.body_timeout`), so that a client dripping one byte now and then cannot hold a connection
//! and a handler forever (slowloris on the body, RFC 9110 §15.5.9 `408 Request Timeout`).
//!
//! Three limits (issue 23: a body trickling one byte every 2 s reset the idle limit for half an hour):
//! - idle: no frame for `limits.body_timeout`;
//! - rate: after a grace of [`RATE_GRACE`] spent waiting for the client, fewer than [`MIN_RATE`] bytes per second
//!   of that waiting (Kestrel's `MinRequestBodyDataRate`: 240 B/s after 5 s);
//! - whole body: the proxy's own endpoints (small forms and JSON) get [`OWN_BODY_DEADLINE`] for their whole body.
//!
//! Invariants: the idle and rate clocks run only while the consumer is waiting for the client (armed when the
//! inner body is pending, disarmed by every frame), so an upstream that reads slowly never makes a steady client
//! look idle or slow; after a limit fires the body ends with [`BodyError::TimedOut`] naming it, the limit is
//! counted (`dcr_proxy_request_body_limits_total{limit}`), and the body yields nothing more.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// The slowest request body accepted once [`RATE_GRACE`] of waiting for the client has passed, in bytes per
/// second of that waiting.
pub const MIN_RATE: u64 = 240;
/// Waiting for the client that the rate limit forgives.
pub const RATE_GRACE: Duration = Duration::from_secs(5);
/// The whole body of a request to one of the proxy's own endpoints (forms, registration JSON).
pub const OWN_BODY_DEADLINE: Duration = Duration::from_secs(15);

/// Which limit ended a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimit {
    /// No frame for the idle limit.
    Idle,
    /// Slower than [`MIN_RATE`] after [`RATE_GRACE`].
    Rate,
    /// The whole body of an own endpoint took longer than [`OWN_BODY_DEADLINE`].
    Deadline,
}

impl BodyLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Rate => "rate",
            Self::Deadline => "deadline",
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the request body failed: {0}")]
    Read(#[source] hyper::Error),
    #[error("the request body was too slow ({} limit)", .0.as_str())]
    TimedOut(BodyLimit),
}

/// Counts the limits that fired.
pub type LimitCounter = std::sync::Arc<dyn Fn(BodyLimit) + Send + Sync>;

/// The idle and rate limits of one request body: time spent waiting for the client and bytes received, and when
/// the next wait must end. [`TimedBody`] (hyper) and the fast path ([`crate::server::fast_path`]) both keep one,
/// so that a trickling body is cut the same way on both paths.
#[derive(Debug, Clone)]
pub struct BodyClock {
    idle: Duration,
    waited: Duration,
    bytes: u64,
}

impl BodyClock {
    pub fn new(idle: Duration) -> Self {
        Self { idle, waited: Duration::ZERO, bytes: 0 }
    }

    /// The deadline of a wait for the client beginning at `now`, and the limit it is: the idle limit, or the rate
    /// limit once [`RATE_GRACE`] of waiting (more for a body that was fast so far) has passed.
    pub fn deadline(&self, now: Instant) -> (Instant, BodyLimit) {
        let allowed = RATE_GRACE.max(Duration::from_secs_f64(self.bytes as f64 / MIN_RATE as f64));
        let rate_left = allowed.saturating_sub(self.waited);
        if rate_left < self.idle {
            (now + rate_left, BodyLimit::Rate)
        } else {
            (now + self.idle, BodyLimit::Idle)
        }
    }

    /// A wait for the client that ended with `bytes` received.
    pub fn waited(&mut self, waited: Duration, bytes: u64) {
        self.waited += waited;
        self.bytes += bytes;
    }
}

/// A request body under the idle, rate and (optionally) whole-body limits.
pub struct TimedBody<B = Incoming> {
    inner: B,
    /// Created on the first wait, reset on every later one.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    done: bool,
    /// When the current wait began, and which limit its deadline is.
    armed_at: Option<(Instant, BodyLimit)>,
    /// Time spent waiting for the client so far, and bytes received.
    clock: BodyClock,
    /// The whole-body deadline, from the first poll (own endpoints only).
    whole: Option<Duration>,
    started: Option<Instant>,
    counter: Option<LimitCounter>,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            sleep: None,
            armed: false,
            done: false,
            armed_at: None,
            clock: BodyClock::new(idle),
            whole: None,
            started: None,
            counter: None,
        }
    }

    /// Ends the body when it is not whole within `deadline` of its first poll.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.whole = Some(deadline);
        self
    }

    /// Calls `counter` with the limit that ends the body, if one does.
    pub fn counted(mut self, counter: LimitCounter) -> Self {
        self.counter = Some(counter);
        self
    }

    /// The deadline of a wait beginning at `now`, and the limit it is.
    fn wait_deadline(&mut self, now: Instant) -> (Instant, BodyLimit) {
        let mut best = self.clock.deadline(now);
        if let (Some(whole), Some(started)) = (self.whole, self.started) {
            if started + whole < best.0 {
                best = (started + whole, BodyLimit::Deadline);
            }
        }
        best
    }

    fn fire(&mut self, limit: BodyLimit) -> BodyError {
        self.done = true;
        if let Some(counter) = &self.counter {
            counter(limit);
        }
        BodyError::TimedOut(limit)
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let now = Instant::now();
        this.started.get_or_insert(now);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
                let waited = this.armed_at.take().map_or(Duration::ZERO, |(at, _)| now.saturating_duration_since(at));
                this.clock.waited(waited, frame.data_ref().map_or(0, |d| d.len() as u64));
                if let (Some(whole), Some(started)) = (this.whole, this.started) {
                    if now > started + whole && !this.inner.is_end_stream() {
                        return Poll::Ready(Some(Err(this.fire(BodyLimit::Deadline))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(BodyError::Read(e))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !this.armed {
                    let (deadline, limit) = this.wait_deadline(now);
                    this.armed_at = Some((now, limit));
                    match this.sleep.as_mut() {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    this.armed = true;
                }
                let fired = this.sleep.as_mut().is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                match (fired, this.armed_at) {
                    (true, Some((_, limit))) => Poll::Ready(Some(Err(this.fire(limit)))),
                    _ => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    /// A body fed by the test, frame by frame.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = hyper::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn frames_within_the_idle_limit_pass_however_long_the_body_takes() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let feeder = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                tx.send(Bytes::from(vec![b'x'; 4096])).await.ok();
            }
        });
        let body = TimedBody::new(Fed(rx), Duration::from_secs(1)).collect().await;
        assert_eq!(body.map(|b| b.to_bytes().len()).ok(), Some(40960));
        feeder.await.ok();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_longer_than_the_idle_limit_ends_the_body_with_a_timeout() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let feeder = tokio::spawn(async move {
            tx.send(Bytes::from_static(b"x")).await.ok();
            tokio::time::sleep(Duration::from_secs(2)).await;
            tx.send(Bytes::from_static(b"y")).await.ok();
        });
        let mut body = TimedBody::new(Fed(rx), Duration::from_secs(1));
        assert!(body.frame().await.is_some_and(|f| f.is_ok()));
        assert!(matches!(body.frame().await, Some(Err(BodyError::TimedOut(BodyLimit::Idle)))));
        assert!(body.frame().await.is_none());
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_that_keeps_the_idle_limit_is_cut_by_the_rate_limit() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let feeder = tokio::spawn(async move {
            for _ in 0..1000 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
        });
        let fired = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = fired.clone();
        let counter: LimitCounter = std::sync::Arc::new(move |l| seen.lock().map(|mut v| v.push(l)).unwrap_or(()));
        let started = Instant::now();
        let body = TimedBody::new(Fed(rx), Duration::from_secs(1)).counted(counter).collect().await;
        assert!(matches!(body, Err(BodyError::TimedOut(BodyLimit::Rate))));
        assert!(started.elapsed() <= RATE_GRACE + Duration::from_secs(1), "cut soon after the grace");
        assert_eq!(fired.lock().map(|v| v.clone()).unwrap_or_default(), vec![BodyLimit::Rate]);
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_own_endpoint_body_has_a_whole_body_deadline() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let feeder = tokio::spawn(async move {
            for _ in 0..1000 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if tx.send(Bytes::from(vec![b'x'; 1024])).await.is_err() {
                    return;
                }
            }
        });
        let body =
            TimedBody::new(Fed(rx), Duration::from_secs(1)).with_deadline(Duration::from_secs(3)).collect().await;
        assert!(matches!(body, Err(BodyError::TimedOut(BodyLimit::Deadline))));
        feeder.abort();
    }
}
