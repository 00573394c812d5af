//! The byte-level HTTP/1.1 fast path (`server.fast_path`, issue 13): a proxied request in the common shape is
//! served without hyper — head parsed with `httparse`, the policy of [`crate::proxy`] applied, the rewritten head
//! and the body written to a raw upstream stream ([`crate::proxy::raw_pool`]), the response copied back with its
//! framing parsed (RFC 9112 §6) and its bytes untouched.
//!
//! Invariants:
//! - The fast path never answers what it does not fully understand: a head that [`head::classify`] does not pass,
//!   or a path [`crate::proxy::needs_hyper`] gives hyper (under the tool gate, or an upstream without a raw pool) —
//!   the connection, from that request on, goes to hyper with the bytes already read ([`Prefixed`]), and hyper
//!   answers exactly as without the fast path. TLS connections that chose `h2` and HTTP/2 prior knowledge never
//!   come here.
//! - The policy is the proxy's [`Exchange`], the very state machine `proxy::handle` drives (`[[routes]]` entries
//!   included: the canonical path chooses the route on both paths); the upstream's headers are
//!   [`crate::proxy::Forwarder::prepare_headers`]'s and the head is written anew from them with CRLF line ends
//!   (a client's bare LF or odd spacing never reaches the upstream). Errors are `Error::into_response`'s bytes.
//! - Deadlines are [`super::connection::supervise`]'s: the first request, idle keep-alive, send stall (every
//!   client write counts as a frame in flight), draining and abort; a head must complete within
//!   `limits.header_timeout` of its first byte, a request body must not pause longer than `limits.body_timeout`.
//! - The request body is sent whole before the response is read, under `upstream.response_timeout` from then
//!   (the hyper path's clock starts before the body; a slow upload here does not count against it). Every
//!   response chunk is written to the client as soon as it arrives (SSE).
//! - An upstream stream is reused only after a clean exchange ([`crate::proxy::raw_pool`]); a request that was
//!   written is never sent again, except the bodiless replay after an upstream 401 that `proxy::handle` makes too.
//!   A pooled stream found closed or noisy at checkout is not used (a new one is opened); one whose first write
//!   fails is replaced once by a new stream (nothing of the request was taken).
//! - A response delimited by the upstream's close is passed on with `Connection: close`, and the client
//!   connection closes after it; 1xx responses other than 101 are skipped (none is forwarded), 101 is a 502.
//!
//! Visible differences from the hyper path (review of issue 13): a response without framing is passed on
//! close-delimited with `Connection: close` (hyper re-frames it as chunked and keeps the connection alive); the
//! reason phrase is the canonical one for the status (as hyper writes it), never the upstream's; a response head is
//! refused (502) past the same ~408 KiB hyper's client allows. After a request served here, hyper gets the rest of
//! the connection as HTTP/1.1 only and without upgrades, its first-request clock starting at the accept (first
//! request) or at the pending head's first byte.

pub mod chunked;
pub mod head;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::connection::Activity;
use crate::app::App;
use crate::endpoint::Endpoint;
use crate::error::{Error, OAuthError};
use crate::http::timed_body::BodyClock;
use crate::proxy::raw_pool::RawPool;
use crate::proxy::{self, exchange, Context, Exchange};
use crate::router::Envelope;
use chunked::Chunked;
use head::{Framing, Head, Parsed};

/// Bytes asked for per read of a head.
const READ_SIZE: usize = 16 * 1024;
/// Room asked for per read of a body: a large body moves in few reads and, when it is length- or close-delimited,
/// each read is written on as it is, without a copy ([`RequestBody::piece`]).
const BODY_READ_SIZE: usize = 64 * 1024;
/// How long a connection waiting for its next request keeps its read buffer ([`READ_SIZE`]) before releasing it.
const IDLE_RELEASE: Duration = Duration::from_secs(1);
/// The buffer a connection idle past [`IDLE_RELEASE`] reads its next bytes into (then [`READ_SIZE`] again).
const IDLE_READ_SIZE: usize = 256;
/// The largest upstream response head: hyper's client buffer limit (8 KiB + 100 × 4 KiB), so that a head one path
/// takes the other takes too.
const MAX_RESPONSE_HEAD: usize = 8192 + 4096 * 100;

/// What a connection's fast path needs.
pub struct Env {
    pub app: Arc<App>,
    pub peer: SocketAddr,
    pub activity: Arc<Activity>,
    pub closing: Arc<Closing>,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

/// The supervisor's graceful shutdown (idle, draining): close once no request is in flight.
#[derive(Debug, Default)]
pub struct Closing {
    flag: AtomicBool,
    wake: Notify,
}

impl Closing {
    pub fn close(&self) {
        self.flag.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn is_closing(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

/// The rest of a connection for hyper: the stream and the bytes already read from it.
pub struct HandOver<I> {
    pub io: I,
    pub read: BytesMut,
    /// When the first byte of the pending head arrived: hyper's clock for it starts there, not at the hand-over.
    pub head_since: Instant,
    /// A request was served here first: the connection is HTTP/1.1 for good (no HTTP/2 preface mid-connection).
    pub served: bool,
}

/// How the fast path failed one request.
enum Failed {
    /// Answered with the proxy's error response.
    Http(Error),
    /// The client connection broke or went away: closed without an answer.
    Client(std::io::Error),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Self::Http(e)
    }
}

/// Serves requests until the connection closes (`None`) or a request is hyper's (`Some`).
pub async fn run<I>(env: Env, mut io: I) -> std::io::Result<Option<HandOver<I>>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let app = env.app.clone();
    let cx = app.proxy_context();
    let mut served = false;
    loop {
        let mut since = None;
        let head = match read_head(&env, &mut io, &mut buf, &mut since).await? {
            Next::Close => return Ok(None),
            Next::Hyper => {
                let head_since = since.unwrap_or_else(Instant::now);
                return Ok(Some(HandOver { io, read: buf, head_since, served }));
            }
            Next::Head(head) => head,
        };
        if proxy::needs_hyper(&cx, head.target.path()) {
            let head_since = since.unwrap_or_else(Instant::now);
            return Ok(Some(HandOver { io, read: buf, head_since, served }));
        }
        served = true;
        let in_flight = env.activity.begin();
        buf.advance(head.len);
        // Boxed (issue 23 item 15): an exchange's state lives while it runs, not in the idle connection's task.
        let keep = Box::pin(exchange(&env, &cx, &mut io, &mut buf, head)).await?;
        drop(in_flight);
        if !keep || env.closing.is_closing() {
            let _ = io.shutdown().await;
            return Ok(None);
        }
    }
}

enum Next {
    Head(Head),
    Hyper,
    Close,
}

/// Reads until a complete head, under `limits.header_timeout` from its first byte (`since`).
async fn read_head<I: AsyncRead + Unpin>(
    env: &Env,
    io: &mut I,
    buf: &mut BytesMut,
    since: &mut Option<Instant>,
) -> std::io::Result<Next> {
    let mut deadline: Option<Instant> = None;
    // The buffer was released while idle: the next head's first bytes come in a small one.
    let mut released = false;
    loop {
        if buf.is_empty() {
            if env.closing.is_closing() {
                return Ok(Next::Close);
            }
            shrink_idle(buf);
            if released && buf.capacity() == 0 {
                buf.reserve(IDLE_READ_SIZE);
            }
        } else {
            match head::classify(buf, &env.app.metadata.protected_resource_path) {
                Parsed::Partial => {}
                Parsed::Hyper => return Ok(Next::Hyper),
                Parsed::Head(head) => return Ok(Next::Head(head)),
            }
            deadline = Some(*since.get_or_insert_with(Instant::now) + env.header_timeout);
        }
        let waiting = buf.is_empty();
        // (An empty buffer's `capacity()` is only the room past its read position: a remnant of a large buffer
        // may show little room while it holds the whole allocation, so `released` decides, not the capacity.)
        if !(waiting && released) {
            buf.reserve(READ_SIZE);
        }
        // Waiting with a buffer: it is released once the connection has been idle for IDLE_RELEASE.
        let release = (waiting && !released).then(|| Instant::now() + IDLE_RELEASE);
        tokio::select! {
            read = io.read_buf(buf) => if read? == 0 {
                return Ok(Next::Close);
            },
            () = env.closing.wake.notified(), if waiting => {}
            () = sleep_until_some(deadline) => return Ok(Next::Close),
            () = sleep_until_some(release) => {
                *buf = BytesMut::new();
                released = true;
            }
        }
    }
}

/// An empty buffer that grew for a body ([`BODY_READ_SIZE`]) goes back to [`READ_SIZE`] before the connection
/// waits for its next request; after [`IDLE_RELEASE`] without one it is released entirely (issue 23 item 15): an
/// idle keep-alive connection holds no read buffer, whatever it carried before.
fn shrink_idle(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 2 * READ_SIZE {
        *buf = BytesMut::with_capacity(READ_SIZE);
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One request: forwarded and answered; `Ok(false)` when the client connection must close after it.
async fn exchange<I>(
    env: &Env,
    cx: &Context<'_>,
    io: &mut I,
    buf: &mut BytesMut,
    mut head: Head,
) -> std::io::Result<bool>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let app = &env.app;
    let (envelope, context) = Envelope::open(app, &head.method, Endpoint::Proxy, &head.headers, env.peer);
    let mut body_sent = head.framing == Framing::Empty;
    let forwarded = crate::audit::REQUEST.scope(context, forward(env, cx, io, buf, &mut head, &mut body_sent)).await;
    let log = |status: StatusCode| envelope.close(app, status);
    let ready = match forwarded {
        Ok(ready) => ready,
        Err(Failed::Client(e)) => {
            // Logged and counted as the hyper path does a broken request body (`ReadBodyError::Broken`).
            log(StatusCode::BAD_REQUEST);
            return Err(e);
        }
        Err(Failed::Http(e)) => {
            // A body not read to its end cannot be told from the next request: close after the answer.
            let close = head.close || !body_sent;
            let (status, out) = error_response(e, close).await;
            log(status);
            write_client(env, io, &out).await?;
            return Ok(!close);
        }
    };
    let Ready { status, mut headers, framing, mut upstream, mut ubuf, reusable, pool } = ready;
    crate::proxy::headers::sanitize_response(&mut headers);
    Envelope::answer_headers(&mut headers);
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, date());
    }
    let mut close = head.close;
    match framing {
        Framing::Chunked => {
            headers.remove(header::CONTENT_LENGTH);
            headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        Framing::UntilClose => {
            headers.remove(header::CONTENT_LENGTH);
            close = true;
        }
        Framing::Empty | Framing::Length(_) => {}
    }
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let mut out = BytesMut::with_capacity(head_size(&headers) + 64 + ubuf.len());
    write_status_and_headers(&mut out, status, &headers);
    // The head and the body bytes already read, in one write.
    let mut body = ResponseBody::new(framing);
    let first = body.take(&mut ubuf, &mut out);
    log(status);
    write_client(env, io, &out).await?;
    let Ok(mut ended) = first else {
        // The upstream's framing broke in its first bytes: what was decoded went out, the client cannot be told
        // but by closing (no terminating chunk), and the upstream stream is dropped.
        return Ok(false);
    };
    // While the response streams, the client is watched too (issue 23): a client that leaves during a quiet SSE
    // stream frees its socket, the upstream connection and its connection slot at once, not when the upstream
    // next writes. Bytes it sends meanwhile (a pipelined request) stay in `buf`, and watching stops there.
    let mut watch_client = true;
    while !ended {
        ubuf.reserve(BODY_READ_SIZE);
        let read = if watch_client {
            tokio::select! {
                read = upstream.read_buf(&mut ubuf) => read,
                from_client = io.read_buf(buf) => {
                    match from_client {
                        Ok(0) | Err(_) => return Ok(false),
                        Ok(_) => watch_client = false,
                    }
                    continue;
                }
            }
        } else {
            upstream.read_buf(&mut ubuf).await
        };
        match read {
            Ok(0) if framing == Framing::UntilClose => ended = true,
            Ok(0) | Err(_) => {
                // The upstream broke off a framed body: the client cannot be told but by closing.
                return Ok(false);
            }
            Ok(_) => {
                out.clear();
                let piece;
                (piece, ended) = match body.piece(&mut ubuf, &mut out) {
                    Ok(taken) => taken,
                    Err(()) => return Ok(false),
                };
                let bytes = piece.as_deref().unwrap_or(&out);
                if !bytes.is_empty() {
                    write_client(env, io, bytes).await?;
                }
            }
        }
    }
    if reusable && ubuf.is_empty() && framing != Framing::UntilClose {
        pool.put(upstream);
    }
    Ok(!close)
}

/// A response ready to be passed on.
struct Ready {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    upstream: TcpStream,
    /// Bytes read after the response head.
    ubuf: BytesMut,
    /// The upstream did not say it closes.
    reusable: bool,
    /// Where the stream goes back after a clean exchange.
    pool: Arc<RawPool>,
}

/// Drives the proxy's [`Exchange`] over raw streams, as `proxy::handle` drives it over hyper: admit, swap the
/// credential, send, and answer an upstream refusal (a replay or the proxy's challenge).
async fn forward<I>(
    env: &Env,
    cx: &Context<'_>,
    io: &mut I,
    buf: &mut BytesMut,
    head: &mut Head,
    body_sent: &mut bool,
) -> Result<Ready, Failed>
where
    I: AsyncRead + Unpin,
{
    let replayable = head.framing == Framing::Empty;
    let mut exchange = Exchange::begin(cx, &head.headers, head.target.path(), head.target.query(), replayable).await?;
    let forwarder = exchange.context().forwarder;
    // `proxy::needs_hyper` sent every request without a raw pool to hyper.
    let pool = forwarder.raw_pool().ok_or_else(|| Error::Internal("no raw upstream pool".into()))?.clone();
    let target = exchange.target().path_and_query().map_or("/", |pq| pq.as_str());
    let target = format!("{}{target}", forwarder.prefix());
    let auth = exchange.credential().await?;
    // The client's header map becomes the upstream's (no copy); a replay only swaps the credential in it.
    let mut headers = std::mem::take(&mut head.headers);
    let host = headers.get(header::HOST).cloned();
    forwarder.prepare_headers(&mut headers, host, auth, env.peer, true);
    if head.framing == Framing::Chunked {
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    let timeout = forwarder.response_timeout();
    let mut ready = send(env, timeout, &pool, io, buf, head, &target, &headers, body_sent).await?;
    loop {
        match exchange.on_response(ready.status, ready.headers.get(header::WWW_AUTHENTICATE)).await? {
            exchange::Next::Replay(fresh) => {
                // The refused response's body is not read: its stream is dropped, never reused.
                forwarder.set_auth(&mut headers, fresh);
                ready = send(env, timeout, &pool, io, buf, head, &target, &headers, body_sent).await?;
            }
            exchange::Next::Deliver { strip_challenge } => {
                if strip_challenge {
                    ready.headers.remove(header::WWW_AUTHENTICATE);
                }
                return Ok(Ready { pool, ..ready });
            }
        }
    }
}

/// Writes the request (`headers`: the upstream's, prepared) to an upstream stream and reads the response head.
#[allow(clippy::too_many_arguments)]
async fn send<I>(
    env: &Env,
    response_timeout: Duration,
    pool: &Arc<RawPool>,
    io: &mut I,
    buf: &mut BytesMut,
    head: &Head,
    target: &str,
    headers: &HeaderMap,
    body_sent: &mut bool,
) -> Result<Ready, Failed>
where
    I: AsyncRead + Unpin,
{
    let mut out = BytesMut::with_capacity(head_size(headers) + target.len() + 32 + buf.len().min(READ_SIZE));
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_headers(&mut out, headers);
    let mut body = RequestBody::new(head.framing);
    let mut done = body.take(buf, &mut out)?;
    let (mut upstream, reused) = pool.checkout().await.map_err(unavailable)?;
    // Every upstream write, the first included, under `upstream.response_timeout` (504), as on the hyper path.
    match tokio::time::timeout(response_timeout, upstream.write_all(&out)).await {
        Err(_) => return Err(Error::UpstreamTimeout.into()),
        Ok(Ok(())) => {}
        Ok(Err(e)) if !reused => return Err(unavailable(e).into()),
        Ok(Err(_)) => {
            upstream = pool.connect().await.map_err(unavailable)?;
            tokio::time::timeout(response_timeout, upstream.write_all(&out))
                .await
                .map_err(|_| Error::UpstreamTimeout)?
                .map_err(unavailable)?;
        }
    }
    // The idle and rate limits of the hyper path's bodies (issue 23 item 6): a body trickling a byte now and then
    // is cut with 408 after the grace, whatever the idle limit.
    let mut clock = BodyClock::new(env.body_timeout);
    while !done {
        buf.reserve(BODY_READ_SIZE);
        let waiting = Instant::now();
        let (deadline, limit) = clock.deadline(waiting);
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Err(_) => {
                (env.app.metrics.body_limits())(limit);
                return Err(Error::RequestTimeout.into());
            }
            Ok(Ok(0)) => return Err(Failed::Client(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(Err(e)) => return Err(Failed::Client(e)),
            Ok(Ok(n)) => clock.waited(waiting.elapsed(), n as u64),
        }
        out.clear();
        let piece;
        (piece, done) = body.piece(buf, &mut out)?;
        let bytes = piece.as_deref().unwrap_or(&out);
        match tokio::time::timeout(response_timeout, upstream.write_all(bytes)).await {
            Err(_) => return Err(Error::UpstreamTimeout.into()),
            Ok(Err(e)) => return Err(unavailable(e).into()),
            Ok(Ok(())) => {}
        }
    }
    *body_sent = true;
    let deadline = Instant::now() + response_timeout;
    let mut ubuf = BytesMut::with_capacity(READ_SIZE);
    loop {
        if let Some((len, response)) = parse_response(&ubuf)? {
            ubuf.advance(len);
            match response {
                Response::Informational => continue,
                Response::Final { status, headers, framing, reusable } => {
                    return Ok(Ready { status, headers, framing, upstream, ubuf, reusable, pool: pool.clone() });
                }
            }
        }
        if ubuf.len() > MAX_RESPONSE_HEAD {
            return Err(Error::UpstreamUnavailable("response head too large".into()).into());
        }
        ubuf.reserve(READ_SIZE);
        match tokio::time::timeout_at(deadline, upstream.read_buf(&mut ubuf)).await {
            Err(_) => return Err(Error::UpstreamTimeout.into()),
            Ok(Ok(0)) => {
                return Err(Error::UpstreamUnavailable("connection closed before the response head".into()).into())
            }
            Ok(Err(e)) => return Err(unavailable(e).into()),
            Ok(Ok(_)) => {}
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::UpstreamUnavailable(e.to_string())
}

/// An upstream response head.
#[derive(Debug)]
enum Response {
    /// 1xx (not 101): skipped.
    Informational,
    Final {
        status: StatusCode,
        headers: HeaderMap,
        framing: Framing,
        reusable: bool,
    },
}

/// The response head at the start of `buf`, if complete (RFC 9112 §4, §6.3).
fn parse_response(buf: &[u8]) -> Result<Option<(usize, Response)>, Error> {
    let bad = |what: &str| Error::UpstreamUnavailable(format!("invalid response head: {what}"));
    let mut fields = [httparse::EMPTY_HEADER; crate::server::H1_MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        // A head that arrived whole in one read is held to the same limit as one that came in pieces.
        Ok(httparse::Status::Complete(len)) if len > MAX_RESPONSE_HEAD => return Err(bad("too large")),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(&e.to_string())),
    };
    let code = resp.code.ok_or_else(|| bad("no status"))?;
    let status = StatusCode::from_u16(code).map_err(|_| bad("status"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(bad("101 to a request without Upgrade"));
    }
    if status.is_informational() {
        return Ok(Some((len, Response::Informational)));
    }
    let mut reusable = resp.version == Some(1);
    // Room for what the answer gains (CORS, Date, Connection) without growing the map.
    let mut headers = HeaderMap::with_capacity(resp.headers.len() + 4);
    let (mut length, mut chunked, mut encoded) = (None::<u64>, false, false);
    for field in resp.headers.iter() {
        let name = header::HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| bad("header name"))?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| bad("header value"))?;
        match name {
            header::CONTENT_LENGTH => {
                let n = head::content_length(value.as_bytes()).ok_or_else(|| bad("Content-Length"))?;
                match length {
                    Some(m) if m != n => return Err(bad("conflicting Content-Length")),
                    // The same length twice is one length: sent once, as hyper does.
                    Some(_) => continue,
                    None => length = Some(n),
                }
            }
            header::TRANSFER_ENCODING if resp.version == Some(0) => {
                // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty (a 1.0 peer cannot have
                // framed it so); hyper refuses it too.
                return Err(bad("Transfer-Encoding in an HTTP/1.0 response"));
            }
            header::TRANSFER_ENCODING => {
                encoded = true;
                let last = value.as_bytes().rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii();
                chunked = last.eq_ignore_ascii_case(b"chunked");
            }
            header::CONNECTION
                if value.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")) =>
            {
                reusable = false;
            }
            _ => {}
        }
        headers.append(name, value);
    }
    if status == StatusCode::NO_CONTENT {
        // RFC 9110 §8.6, §6.4.1: a 204 has no content and carries no length (a parser honouring one would eat
        // the next response's bytes); hyper drops it too.
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
    }
    let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Empty
    } else if encoded && chunked {
        Framing::Chunked
    } else if encoded {
        Framing::UntilClose
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    if framing == Framing::UntilClose || (encoded && length.is_some()) {
        reusable = false;
    }
    Ok(Some((len, Response::Final { status, headers, framing, reusable })))
}

/// A request body on its way: framing parsed, bytes copied.
struct RequestBody {
    framing: Framing,
    left: u64,
    chunked: Chunked,
}

impl RequestBody {
    fn new(framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Self { framing, left, chunked: Chunked::default() }
    }

    /// Moves what `input` holds of the body to `out`; `Ok(true)` once it ended (the rest of `input` is the next
    /// request).
    fn take(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<bool, Error> {
        match self.framing {
            Framing::Empty | Framing::UntilClose => Ok(true),
            Framing::Length(_) => {
                let n = usize::try_from(self.left).unwrap_or(usize::MAX).min(input.len());
                out.extend_from_slice(&input.split_to(n));
                self.left -= n as u64;
                Ok(self.left == 0)
            }
            Framing::Chunked => self
                .chunked
                .feed(input, out)
                .map_err(|e| Error::OAuth(OAuthError::invalid_request(format!("request body: {e}")))),
        }
    }
}

impl RequestBody {
    /// As [`take`](Self::take), for the reads after the head: a length-delimited piece is split off `input` and
    /// returned (written on as read, no copy); a chunked one is re-framed into `out` and `None` returned.
    fn piece(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<(Option<BytesMut>, bool), Error> {
        match self.framing {
            Framing::Length(_) => {
                let n = usize::try_from(self.left).unwrap_or(usize::MAX).min(input.len());
                self.left -= n as u64;
                Ok((Some(input.split_to(n)), self.left == 0))
            }
            _ => self.take(input, out).map(|done| (None, done)),
        }
    }
}

/// A response body on its way to the client.
struct ResponseBody(RequestBody);

impl ResponseBody {
    fn new(framing: Framing) -> Self {
        Self(RequestBody::new(framing))
    }

    /// As [`RequestBody::take`]; a close-delimited body takes everything and never ends here. `Err`: the
    /// upstream's chunked framing is broken.
    fn take(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<bool, ()> {
        match self.0.framing {
            Framing::UntilClose => {
                out.extend_from_slice(&input.split());
                Ok(false)
            }
            _ => self.0.take(input, out).map_err(|_| ()),
        }
    }

    /// As [`RequestBody::piece`]; a close-delimited body is passed on as read and never ends here.
    fn piece(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<(Option<BytesMut>, bool), ()> {
        match self.0.framing {
            Framing::UntilClose => Ok((Some(input.split()), false)),
            _ => self.0.piece(input, out).map_err(|_| ()),
        }
    }
}

/// Writes to the client; a write the client does not take counts towards the send-stall check.
async fn write_client<I: AsyncWrite + Unpin>(env: &Env, io: &mut I, bytes: &[u8]) -> std::io::Result<()> {
    let _sending = env.activity.sending();
    io.write_all(bytes).await
}

/// The proxy's error response, as the hyper path sends it (CORS added as `router::handle` adds it): its status
/// and its bytes.
async fn error_response(e: Error, close: bool) -> (StatusCode, BytesMut) {
    let (parts, body) = e.into_response().into_parts();
    let body: Bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut headers = parts.headers;
    Envelope::answer_headers(&mut headers);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, date());
    }
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let mut out = BytesMut::with_capacity(512 + body.len());
    write_status_and_headers(&mut out, parts.status, &headers);
    out.extend_from_slice(&body);
    (parts.status, out)
}

fn write_status_and_headers(out: &mut BytesMut, status: StatusCode, headers: &HeaderMap) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("<unknown status code>").as_bytes());
    out.extend_from_slice(b"\r\n");
    write_headers(out, headers);
}

/// The bytes [`write_headers`] writes.
fn head_size(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>() + 2
}

fn write_headers(out: &mut BytesMut, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The `Date` header (RFC 9110 §6.6.1), formatted once a second per thread.
fn date() -> HeaderValue {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, Option<HeaderValue>)> = const { std::cell::RefCell::new((0, None)) };
    }
    let now = std::time::SystemTime::now();
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        match &cached.1 {
            Some(v) if cached.0 == secs => v.clone(),
            _ => {
                let v = HeaderValue::try_from(httpdate::fmt_http_date(now))
                    .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
                *cached = (secs, Some(v.clone()));
                v
            }
        }
    })
}

/// A stream that first yields bytes already read from it (the hand-over to hyper).
pub struct Prefixed<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Prefixed<I> {
    pub fn new(inner: I, prefix: Bytes) -> Self {
        Self { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn final_of(text: &str) -> (StatusCode, Framing, bool) {
        match parse_response(text.as_bytes()) {
            Ok(Some((_, Response::Final { status, framing, reusable, .. }))) => (status, framing, reusable),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112_section_6_3() {
        let ok = StatusCode::OK;
        assert_eq!(final_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), (ok, Framing::Length(5), true));
        assert_eq!(final_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), (ok, Framing::Chunked, true));
        assert_eq!(final_of("HTTP/1.1 200 OK\r\n\r\n"), (ok, Framing::UntilClose, false));
        assert_eq!(final_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), (ok, Framing::UntilClose, false));
        assert_eq!(
            final_of("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (ok, Framing::Chunked, false)
        );
        assert_eq!(final_of("HTTP/1.1 204 No Content\r\n\r\n"), (StatusCode::NO_CONTENT, Framing::Empty, true));
        assert!(!final_of("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").2);
        assert!(!final_of("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").2);
        assert!(matches!(parse_response(b"HTTP/1.1 103 Early Hints\r\n\r\n"), Ok(Some((_, Response::Informational)))));
        assert!(parse_response(b"HTTP/1.1 101 Switching\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(matches!(parse_response(b"HTTP/1.1 200 OK\r\n"), Ok(None)));
    }

    fn headers_of(text: &str) -> HeaderMap {
        match parse_response(text.as_bytes()) {
            Ok(Some((_, Response::Final { headers, .. }))) => headers,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_framing_that_hyper_fixes_is_fixed_here_too() {
        // A 204 carries no length; an identical length sent twice is sent once; HTTP/1.0 with chunked is faulty.
        let no_content = headers_of("HTTP/1.1 204 No Content\r\nContent-Length: 12\r\nX: y\r\n\r\n");
        assert!(no_content.get(header::CONTENT_LENGTH).is_none() && no_content.get("x").is_some());
        let twice = headers_of("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(twice.get_all(header::CONTENT_LENGTH).iter().count(), 1);
        assert!(parse_response(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let mut body = RequestBody::new(Framing::Length(3));
        let (mut input, mut out) = (BytesMut::from(&b"abcGET"[..]), BytesMut::new());
        assert!(matches!(body.take(&mut input, &mut out), Ok(true)));
        assert_eq!((&out[..], &input[..]), (&b"abc"[..], &b"GET"[..]));
    }

    #[test]
    fn an_idle_buffer_grown_for_a_body_goes_back_to_the_head_size() {
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        buf.reserve(BODY_READ_SIZE);
        buf.extend_from_slice(&[b'x'; 1000]);
        let piece = buf.split_to(1000);
        drop(piece);
        buf.reserve(BODY_READ_SIZE);
        assert!(buf.capacity() >= BODY_READ_SIZE);
        shrink_idle(&mut buf);
        assert!(buf.capacity() <= 2 * READ_SIZE, "{}", buf.capacity());
        // Kept as it is while it holds bytes (a pipelined request) or is not larger than a head read needs.
        let mut holding = BytesMut::with_capacity(BODY_READ_SIZE);
        holding.extend_from_slice(b"GET");
        shrink_idle(&mut holding);
        assert!(holding.capacity() >= BODY_READ_SIZE);
        let mut small = BytesMut::with_capacity(READ_SIZE);
        let before = small.as_ptr();
        shrink_idle(&mut small);
        assert_eq!(small.as_ptr(), before);
    }

    #[test]
    fn pieces_of_a_length_body_are_split_off_and_stop_at_its_length() {
        let mut body = RequestBody::new(Framing::Length(5));
        let (mut input, mut out) = (BytesMut::from(&b"abc"[..]), BytesMut::new());
        let (piece, done) = body.piece(&mut input, &mut out).unwrap();
        assert_eq!((piece.as_deref(), done, input.len(), out.len()), (Some(&b"abc"[..]), false, 0, 0));
        input.extend_from_slice(b"deGET /");
        let (piece, done) = body.piece(&mut input, &mut out).unwrap();
        assert_eq!((piece.as_deref(), done, &input[..]), (Some(&b"de"[..]), true, &b"GET /"[..]));
    }

    #[test]
    fn pieces_of_a_chunked_body_are_reframed_and_a_close_delimited_one_passes_whole() {
        let mut body = ResponseBody::new(Framing::Chunked);
        let (mut input, mut out) = (BytesMut::from(&b"3;x=y\r\nabc\r\n0\r\n\r\n"[..]), BytesMut::new());
        let (piece, done) = body.piece(&mut input, &mut out).unwrap();
        assert_eq!((piece, done, &out[..]), (None, true, &b"3\r\nabc\r\n0\r\n\r\n"[..]));
        let mut body = ResponseBody::new(Framing::UntilClose);
        let mut input = BytesMut::from(&b"anything\r\n0\r\n\r\n"[..]);
        let (piece, done) = body.piece(&mut input, &mut out).unwrap();
        assert_eq!((piece.as_deref(), done, input.len()), (Some(&b"anything\r\n0\r\n\r\n"[..]), false, 0));
    }
}
