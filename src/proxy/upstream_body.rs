//! The body of a forwarded request (RFC 9110 §6.4): what both forwarders ([`super::forward`]'s hyper-util client
//! and [`super::pool`]) send upstream. No module of the proxy below this one.

use crate::http::RequestBody;

/// A forwarded request's body: the client's, streamed, or none for a replayed bodiless request, or the bytes the
/// tool policy read and judged.
pub enum UpstreamBody {
    Streamed(RequestBody),
    Empty,
    Buffered(Option<bytes::Bytes>),
}

impl hyper::body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = crate::http::timed_body::BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            Self::Streamed(b) => std::pin::Pin::new(b).poll_frame(cx),
            Self::Empty => std::task::Poll::Ready(None),
            Self::Buffered(b) => std::task::Poll::Ready(b.take().map(|d| Ok(hyper::body::Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streamed(b) => b.is_end_stream(),
            Self::Empty => true,
            Self::Buffered(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Streamed(b) => b.size_hint(),
            Self::Empty => hyper::body::SizeHint::with_exact(0),
            Self::Buffered(b) => hyper::body::SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
