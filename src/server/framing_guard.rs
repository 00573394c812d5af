//! The read side of every HTTP/1 connection hyper serves, checked before hyper sees it (issue 23 item 14): request
//! framing is followed the way hyper follows it, and a chunked body whose framing hyper would read loosely is
//! refused. hyper 1.x reads a bare LF after the last chunk (`0\r\n\n`) as the start of a trailer section and so
//! swallows the next pipelined request's head as trailers, and it takes any byte but CR inside a trailer line (a
//! bare LF included): a front proxy that ends the message at the bare LF sees one more request than hyper does
//! (response-queue desync). The fast path's own decoder ([`Chunked`]) refuses both; here it checks the same bytes.
//!
//! Invariants:
//! - Heads are parsed with `httparse` and hyper's settings ([`crate::server::H1_MAX_HEADERS`] fields), and the body
//!   framing is hyper's own rule (its `role.rs`): `Transfer-Encoding` wins over `Content-Length` and is chunked when
//!   its last line ends in `chunked`; otherwise equal `Content-Length` values; otherwise no body. So both agree on
//!   where each message ends.
//! - A read that holds a framing error is never given to hyper: the read fails instead (hyper ends the request in
//!   progress and closes). Bytes of earlier reads were checked already.
//! - A head hyper will refuse is passed on (hyper answers it with 400 and closes); from then on no byte reaches
//!   hyper (its reads stay pending: an error would end the connection before the 400 is written), so that a head
//!   the two parsers might judge differently can never lead to unchecked bytes.
//! - The HTTP/2 preface at the start turns the guard off for the connection (hyper's auto builder serves it as
//!   HTTP/2, which has no such framing). The proxy never answers 101 or a 2xx to CONNECT, so a connection never
//!   leaves HTTP/1 otherwise.
//! - Memory: the guard keeps only an incomplete head or chunk line; its buffer is released once empty.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::fast_path::chunked::Chunked;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest head the guard holds while it is incomplete: above hyper's own read-buffer limit (~408 KiB), so
/// hyper has refused the head before the guard gives up on it.
const MAX_PENDING_HEAD: usize = 512 * 1024;

/// What the guard expects next on the connection.
#[derive(Debug)]
enum Expect {
    /// A request head (the connection's first when `first`).
    Head { first: bool },
    /// This many bytes of a `Content-Length` body.
    Length(u64),
    /// A chunked body.
    Chunked(Chunked),
    /// HTTP/2: nothing to check.
    Off,
    /// A head hyper refuses, or a framing error: every further read fails.
    Refused,
}

/// Why a read was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("request framing refused: {0}")]
    Chunked(#[from] super::fast_path::chunked::ChunkError),
    #[error("request framing refused after a head hyper refuses")]
    Refused,
}

/// A read that broke the framing: its first `valid` bytes came before the offending line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub valid: usize,
    pub error: FramingError,
}

/// Follows the request framing of one connection's bytes.
#[derive(Debug)]
pub struct Framing {
    expect: Expect,
    /// Bytes not judged yet: an incomplete head, chunk-size or trailer line.
    pending: BytesMut,
}

impl Default for Framing {
    fn default() -> Self {
        Self { expect: Expect::Head { first: true }, pending: BytesMut::new() }
    }
}

impl Framing {
    /// Judges the next bytes read from the client. On a framing error: how many of `new`'s bytes come before
    /// the line that broke the framing (hyper may have those), and the error.
    pub fn inspect(&mut self, new: &[u8]) -> Result<(), Refused> {
        let mut rest = new;
        // Body bytes that need no look pass without a copy.
        while self.pending.is_empty() && !rest.is_empty() {
            let took = match &mut self.expect {
                Expect::Off => return Ok(()),
                Expect::Refused => return Err(Refused { valid: 0, error: FramingError::Refused }),
                Expect::Length(left) => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(rest.len());
                    *left -= take as u64;
                    if *left == 0 {
                        self.expect = Expect::Head { first: false };
                    }
                    take
                }
                Expect::Chunked(body) => body.skip_data(rest.len()),
                Expect::Head { .. } => 0,
            };
            if took == 0 {
                break;
            }
            rest = &rest[took..];
        }
        if rest.is_empty() {
            return Ok(());
        }
        // Bytes of earlier reads still pending were passed on already.
        let (earlier, skipped) = (self.pending.len(), new.len() - rest.len());
        self.pending.extend_from_slice(rest);
        let total = self.pending.len();
        let judged = self.judge_pending();
        let judged_len = total - self.pending.len();
        if self.pending.is_empty() {
            // Released, not kept: an empty `BytesMut` that was advanced still holds its whole allocation.
            self.pending = BytesMut::new();
        } else if judged_len > 0 {
            // The few bytes of an unfinished line or head, without the large read they came in.
            self.pending = BytesMut::from(&self.pending[..]);
        }
        judged.map_err(|error| {
            self.expect = Expect::Refused;
            self.pending = BytesMut::new();
            Refused { valid: skipped + judged_len.saturating_sub(earlier), error }
        })
    }

    /// Whether a head hyper refuses was passed on: nothing more is read for hyper.
    pub fn refused_head(&self) -> bool {
        matches!(self.expect, Expect::Refused)
    }

    fn judge_pending(&mut self) -> Result<(), FramingError> {
        while !self.pending.is_empty() {
            match &mut self.expect {
                Expect::Off => {
                    self.pending.clear();
                }
                Expect::Refused => return Err(FramingError::Refused),
                Expect::Length(left) => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(self.pending.len());
                    self.pending.advance(take);
                    *left -= take as u64;
                    if *left == 0 {
                        self.expect = Expect::Head { first: false };
                    }
                }
                Expect::Chunked(body) => {
                    if !body.check(&mut self.pending)? {
                        return Ok(());
                    }
                    self.expect = Expect::Head { first: false };
                }
                Expect::Head { first } => {
                    if *first && H2_PREFACE.starts_with(&self.pending[..self.pending.len().min(H2_PREFACE.len())]) {
                        if self.pending.len() < H2_PREFACE.len() {
                            return Ok(());
                        }
                        self.expect = Expect::Off;
                        self.pending.clear();
                        return Ok(());
                    }
                    match next_head(&self.pending) {
                        Head::Partial if self.pending.len() <= MAX_PENDING_HEAD => return Ok(()),
                        Head::Partial | Head::Refused => {
                            // hyper answers this head itself (400, 431 …) and closes: pass it on, check no more.
                            self.expect = Expect::Refused;
                            self.pending = BytesMut::new();
                            return Ok(());
                        }
                        Head::Complete { len, body } => {
                            self.pending.advance(len);
                            self.expect = body;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A request head as hyper will read it.
enum Head {
    Partial,
    Refused,
    Complete { len: usize, body: Expect },
}

/// Parses the head at the start of `buf` and finds its body's framing by hyper's rule.
fn next_head(buf: &[u8]) -> Head {
    let mut fields = [httparse::EMPTY_HEADER; super::H1_MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Refused,
    };
    let http11 = req.version == Some(1);
    let (mut chunked, mut encoded, mut length) = (false, false, None::<u64>);
    for field in req.headers.iter() {
        if field.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Head::Refused;
            }
            encoded = true;
            // The last coding of the last line decides (hyper's `is_chunked_`).
            chunked = std::str::from_utf8(field.value)
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        } else if field.name.eq_ignore_ascii_case("content-length") && !encoded {
            let Some(n) = digits(field.value) else { return Head::Refused };
            if length.is_some_and(|l| l != n) {
                return Head::Refused;
            }
            length = Some(n);
        }
    }
    let body = match (encoded, chunked, length) {
        (true, false, _) => return Head::Refused,
        (true, true, _) => Expect::Chunked(Chunked::default()),
        (false, _, Some(n)) if n > 0 => Expect::Length(n),
        _ => Expect::Head { first: false },
    };
    Head::Complete { len, body }
}

/// A `Content-Length` value as hyper reads one: ASCII digits only, no overflow.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// A connection's stream with its reads judged by [`Framing`] before hyper gets them.
pub struct Guarded<I> {
    inner: I,
    framing: Framing,
    /// The error of a read whose valid part was passed on: the next read returns it.
    failed: Option<FramingError>,
}

impl<I> Guarded<I> {
    pub fn new(inner: I) -> Self {
        Self { inner, framing: Framing::default(), failed: None }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.failed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        if this.framing.refused_head() {
            // hyper has a head it refuses: it answers (400, 431 …) and closes without reading on. No more bytes
            // reach it, and no error either: an error would end the connection before its answer is written.
            return Poll::Pending;
        }
        let before = out.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
        match this.framing.inspect(&out.filled()[before..]) {
            Ok(()) => Poll::Ready(Ok(())),
            // hyper gets what came before the offending line (so that it answers the request it belongs to), and
            // the error at its next read; never the line itself.
            Err(Refused { valid, error }) if valid > 0 => {
                out.set_filled(before + valid);
                this.failed = Some(error);
                Poll::Ready(Ok(()))
            }
            Err(Refused { error, .. }) => {
                out.set_filled(before);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)))
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in every two-piece split; the outcome of each.
    fn outcomes(bytes: &[u8]) -> Vec<Result<(), Refused>> {
        (0..=bytes.len())
            .map(|split| {
                let mut f = Framing::default();
                f.inspect(&bytes[..split]).and_then(|()| f.inspect(&bytes[split..]))
            })
            .collect()
    }

    fn all_ok(bytes: &[u8]) -> bool {
        outcomes(bytes).iter().all(Result::is_ok)
    }

    fn all_refused(bytes: &[u8]) -> bool {
        outcomes(bytes).iter().all(Result::is_err)
    }

    const POST: &str = "POST /token HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n";
    const NEXT: &str = "GET /healthz HTTP/1.1\r\nHost: p\r\n\r\n";

    #[test]
    fn well_framed_requests_pass_in_any_split() {
        assert!(all_ok(format!("{POST}5;x=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n{NEXT}").as_bytes()));
        assert!(all_ok(format!("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n0\r\n\n\n{NEXT}").as_bytes()));
        assert!(all_ok(format!("{NEXT}{NEXT}GET / HTTP/1.0\r\n\r\n").as_bytes()));
        // A Content-Length beside chunked is hyper's to drop: the body is chunked.
        assert!(all_ok(format!("POST / HTTP/1.1\r\nContent-Length: 50\r\n{}0\r\n\r\n{NEXT}", &POST[22..]).as_bytes()));
    }

    #[test]
    fn bare_lf_in_chunked_framing_is_refused_in_any_split() {
        assert!(all_refused(format!("{POST}5\r\nhello\r\n0\r\n\n{NEXT}").as_bytes()));
        assert!(all_refused(format!("{POST}0\r\nX: 1\n{NEXT}\r\n").as_bytes()));
        assert!(all_refused(format!("{POST}5\nhello\r\n0\r\n\r\n").as_bytes()));
        // After a well-framed request too.
        assert!(all_refused(format!("{NEXT}{POST}0\r\n\n{NEXT}").as_bytes()));
    }

    #[test]
    fn a_head_hyper_refuses_passes_once_then_every_read_fails() {
        let mut f = Framing::default();
        assert_eq!(f.inspect(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), Ok(()));
        let refused = Err(Refused { valid: 0, error: FramingError::Refused });
        assert_eq!(f.inspect(NEXT.as_bytes()), refused);
        let mut f = Framing::default();
        assert_eq!(f.inspect(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), Ok(()));
        assert_eq!(f.inspect(b"0\r\n\r\n"), refused);
        let mut f = Framing::default();
        assert_eq!(f.inspect(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"), Ok(()));
        assert_eq!(f.inspect(b"hello"), refused);
    }

    #[test]
    fn what_comes_before_the_offending_line_is_valid() {
        let text = format!("{NEXT}{POST}5\r\nhello\r\n0\r\n\n{NEXT}");
        let bad = text.find("0\r\n\n").map(|at| at + 3).unwrap_or_default();
        assert!(bad > 0);
        for split in 0..=bad {
            let mut f = Framing::default();
            let (first, second) = text.as_bytes().split_at(split);
            assert_eq!(f.inspect(first), Ok(()), "split {split}");
            let Err(refused) = f.inspect(second) else { panic!("split {split}: not refused") };
            assert_eq!(split + refused.valid, bad, "split {split}");
        }
    }

    #[test]
    fn the_http2_preface_turns_the_guard_off_only_at_the_start() {
        assert!(all_ok(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00 0\r\n\n"));
        let mut f = Framing::default();
        assert_eq!(f.inspect(NEXT.as_bytes()), Ok(()));
        assert_eq!(f.inspect(H2_PREFACE), Ok(()));
        assert_eq!(f.inspect(b"x"), Err(Refused { valid: 0, error: FramingError::Refused }));
    }

    #[test]
    fn lengths_are_read_as_hyper_reads_them() {
        assert_eq!(digits(b"0012"), Some(12));
        assert_eq!(digits(b""), None);
        assert_eq!(digits(b"+5"), None);
        assert_eq!(digits(b"5 "), None);
        assert_eq!(digits(b"99999999999999999999"), None);
    }

    #[test]
    fn an_idle_guard_holds_no_buffer() {
        let mut f = Framing::default();
        let big = format!("GET /{} HTTP/1.1\r\nHost: p\r\n\r\n", "a".repeat(20_000));
        assert_eq!(f.inspect(&big.as_bytes()[..10_000]), Ok(()));
        assert!(f.pending.capacity() >= 10_000);
        assert_eq!(f.inspect(&big.as_bytes()[10_000..]), Ok(()));
        assert_eq!(f.pending.capacity(), 0);
        // A head and part of a body in one read: nothing is held once the head is judged.
        assert_eq!(
            f.inspect(format!("POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n{}", "x".repeat(9000)).as_bytes()),
            Ok(())
        );
        assert_eq!(f.pending.capacity(), 0);
    }
}
