//! The request body with a read deadline: [`TimedBody`] cuts a body whose next frame does not arrive within the
//! idle limit (`limits.body_timeout`), so that a client dripping one byte now and then cannot hold a connection
//! and a handler forever (slowloris on the body, RFC 9110 §15.5.9 `408 Request Timeout`).
//!
//! Invariants: the clock runs only while the consumer is waiting for the client (it is armed when the inner
//! body is pending and disarmed by every frame), so an upstream that reads slowly never makes a steady client
//! look idle; after a timeout the body ends with [`BodyError::TimedOut`] and yields nothing more.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the request body failed: {0}")]
    Read(#[source] hyper::Error),
    #[error("the request body stalled for more than {0:?}")]
    TimedOut(Duration),
}

/// A request body whose frames must follow each other within `idle`.
pub struct TimedBody<B = Incoming> {
    inner: B,
    idle: Duration,
    /// Created on the first wait, reset on every later one.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    done: bool,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self { inner, idle, sleep: None, armed: false, done: false }
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
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
                let deadline = Instant::now() + this.idle;
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.armed {
                    sleep.as_mut().reset(deadline);
                    this.armed = true;
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.done = true;
                        Poll::Ready(Some(Err(BodyError::TimedOut(this.idle))))
                    }
                    Poll::Pending => Poll::Pending,
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
                tx.send(Bytes::from_static(b"x")).await.ok();
            }
        });
        let body = TimedBody::new(Fed(rx), Duration::from_secs(1)).collect().await;
        assert_eq!(body.map(|b| b.to_bytes().len()).ok(), Some(10));
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
        assert!(matches!(body.frame().await, Some(Err(BodyError::TimedOut(_)))));
        assert!(body.frame().await.is_none());
        feeder.abort();
    }
}
