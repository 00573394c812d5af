//! The upstream connection pool (issue 13, `src/proxy/pool.rs`), driven through the real server against a raw
//! HTTP/1.1 upstream that the test scripts byte by byte, connection by connection: a connection is reused only
//! after its response body ended; a slow body does not get a second request interleaved on its connection; an
//! upstream that closes an idle connection, answers `Connection: close`, or sends a response nobody asked for
//! never gets (or answers) the next request on that connection; a client that goes away mid-body does not leave
//! a dirty connection behind; `upstream.pool_max_idle` and `upstream.pool_idle_timeout` bound what stays open.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(5);

/// An upstream whose accepted connections are handed to the test.
struct RawUpstream {
    url: String,
    accepted: mpsc::UnboundedReceiver<TcpStream>,
}

impl RawUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, accepted) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if tx.send(stream).is_err() {
                    return;
                }
            }
        });
        Self { url, accepted }
    }

    /// The next new connection from the proxy.
    async fn accept(&mut self) -> TcpStream {
        tokio::time::timeout(PATIENCE, self.accepted.recv()).await.expect("a new upstream connection").unwrap()
    }

    /// Whether the proxy opened a new connection within `wait`.
    async fn opened_within(&mut self, wait: Duration) -> bool {
        matches!(tokio::time::timeout(wait, self.accepted.recv()).await, Ok(Some(_)))
    }
}

/// Reads one request (head and `Content-Length` body) from `stream`; its request line.
async fn read_request(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return head.lines().next().unwrap_or_default().to_owned();
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => data.extend_from_slice(&buf[..n]),
            other => panic!("no whole request on the upstream connection: {other:?}, read {data:?}"),
        }
    }
}

/// A complete keep-alive response with `body`.
fn response(body: &str) -> String {
    format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}", body.len())
}

/// Whether the proxy closed `stream` within `wait` (bytes read meanwhile are discarded).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The proxy in front of `upstream` with more `[upstream]` keys, and an access token of the local login.
async fn proxy(upstream: &RawUpstream, keys: &str) -> (TestProxy, String) {
    let keys = format!("drive_in_request_task = true\n{keys}");
    let proxy = TestProxy::builder().upstream(&upstream.url).upstream_keys(&keys).local().start().await;
    let (_, tokens) = login(&proxy).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    (proxy, token)
}

/// A GET through the proxy, on a client connection of its own; (status, body).
fn get(proxy: &TestProxy, token: &str, path: &str) -> tokio::task::JoinHandle<(u16, String)> {
    let (url, token) = (proxy.url(path), token.to_owned());
    tokio::spawn(async move {
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let resp = client.get(url).bearer_auth(token).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_else(|e| format!("<body failed: {e}>")))
    })
}

async fn done(task: tokio::task::JoinHandle<(u16, String)>) -> (u16, String) {
    tokio::time::timeout(PATIENCE, task).await.expect("the request completes").unwrap()
}

#[tokio::test]
async fn a_connection_is_reused_only_after_its_body_ended_and_never_interleaved() {
    let mut upstream = RawUpstream::start().await;
    let (proxy, token) = proxy(&upstream, "").await;

    let slow = get(&proxy, &token, "/slow");
    let mut first = upstream.accept().await;
    assert!(read_request(&mut first).await.starts_with("GET /slow "));
    // Head and half the body; the rest comes later.
    first.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello").await.unwrap();

    // A second request while the first body streams gets a connection of its own.
    let quick = get(&proxy, &token, "/quick");
    let mut second = upstream.accept().await;
    assert!(read_request(&mut second).await.starts_with("GET /quick "));
    second.write_all(response("quick").as_bytes()).await.unwrap();
    assert_eq!(done(quick).await, (200, "quick".to_owned()));

    first.write_all(b"world").await.unwrap();
    assert_eq!(done(slow).await, (200, "helloworld".to_owned()));

    // Both connections are clean now: the next requests reuse them, no third is opened.
    for n in 0..4 {
        let path = format!("/again{n}");
        let again = get(&proxy, &token, &path);
        let served_by_first = tokio::select! {
            line = read_request(&mut first) => { assert!(line.contains(&path), "{line}"); true }
            line = read_request(&mut second) => { assert!(line.contains(&path), "{line}"); false }
            _ = upstream.accepted.recv() => panic!("a new connection while two idle ones were open"),
        };
        let conn = if served_by_first { &mut first } else { &mut second };
        conn.write_all(response(&path).as_bytes()).await.unwrap();
        assert_eq!(done(again).await, (200, path));
    }
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_never_used_and_a_post_still_reaches_the_upstream() {
    let mut upstream = RawUpstream::start().await;
    let (proxy, token) = proxy(&upstream, "").await;
    let first = get(&proxy, &token, "/one");
    let mut conn = upstream.accept().await;
    read_request(&mut conn).await;
    conn.write_all(response("one").as_bytes()).await.unwrap();
    assert_eq!(done(first).await, (200, "one".to_owned()));
    // The upstream closes the pooled connection (no `Connection: close` was announced).
    drop(conn);

    // A POST is not idempotent: it must not be written to the closed connection and lost.
    let client = http();
    let url = proxy.url("/two");
    let post = tokio::spawn(async move {
        let resp = client.post(url).bearer_auth(token).body("payload").send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    let mut fresh = upstream.accept().await;
    assert!(read_request(&mut fresh).await.starts_with("POST /two "));
    fresh.write_all(response("two").as_bytes()).await.unwrap();
    assert_eq!(done(post).await, (200, "two".to_owned()));
}

#[tokio::test]
async fn a_response_with_connection_close_is_not_pooled() {
    let mut upstream = RawUpstream::start().await;
    let (proxy, token) = proxy(&upstream, "").await;
    let first = get(&proxy, &token, "/one");
    let mut conn = upstream.accept().await;
    read_request(&mut conn).await;
    // Announces the close but keeps the socket open.
    conn.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\none").await.unwrap();
    assert_eq!(done(first).await, (200, "one".to_owned()));
    assert!(closed_within(&mut conn, PATIENCE).await, "the proxy keeps a connection that was announced closed");

    let second = get(&proxy, &token, "/two");
    let mut fresh = upstream.accept().await;
    assert!(read_request(&mut fresh).await.starts_with("GET /two "));
    fresh.write_all(response("two").as_bytes()).await.unwrap();
    assert_eq!(done(second).await, (200, "two".to_owned()));
}

#[tokio::test]
async fn a_response_nobody_asked_for_never_answers_the_next_request() {
    let mut upstream = RawUpstream::start().await;
    let (proxy, token) = proxy(&upstream, "").await;
    let first = get(&proxy, &token, "/one");
    let mut conn = upstream.accept().await;
    read_request(&mut conn).await;
    // The answer, then a second one queued up for whoever asks next on this connection.
    conn.write_all(format!("{}{}", response("one"), response("smuggled")).as_bytes()).await.unwrap();
    assert_eq!(done(first).await, (200, "one".to_owned()));

    let second = get(&proxy, &token, "/two");
    let mut fresh = upstream.accept().await;
    assert!(read_request(&mut fresh).await.starts_with("GET /two "));
    fresh.write_all(response("two").as_bytes()).await.unwrap();
    assert_eq!(done(second).await, (200, "two".to_owned()));
    assert!(closed_within(&mut conn, PATIENCE).await, "the connection with unasked bytes stays open");
}

#[tokio::test]
async fn a_client_gone_mid_body_leaves_no_dirty_connection_in_the_pool() {
    let mut upstream = RawUpstream::start().await;
    let (proxy, token) = proxy(&upstream, "").await;
    let mut client = TcpStream::connect(proxy.base.trim_start_matches("http://")).await.unwrap();
    client
        .write_all(format!("GET /big HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut conn = upstream.accept().await;
    read_request(&mut conn).await;
    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nfirst bytes").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("first bytes") {
        let n = tokio::time::timeout(PATIENCE, client.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the proxy closed the client: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(client);
    // The rest of the body, then what would be read as the next response on a dirty connection. The proxy
    // finds the client gone when it writes, and must close this connection.
    let rest = vec![b'x'; 100_000 - "first bytes".len()];
    let _ = conn.write_all(&rest).await;
    let _ = conn.write_all(response("stale").as_bytes()).await;
    assert!(closed_within(&mut conn, PATIENCE).await, "the proxy kept the connection of a client that left");

    let next = get(&proxy, &token, "/next");
    let mut fresh = upstream.accept().await;
    assert!(read_request(&mut fresh).await.starts_with("GET /next "));
    fresh.write_all(response("fresh").as_bytes()).await.unwrap();
    assert_eq!(done(next).await, (200, "fresh".to_owned()));
}

#[tokio::test]
async fn idle_connections_beyond_pool_max_idle_are_closed() {
    let mut upstream = RawUpstream::start().await;
    let (proxy, token) = proxy(&upstream, "pool_max_idle = 1").await;
    let (a, b) = (get(&proxy, &token, "/a"), get(&proxy, &token, "/b"));
    let mut one = upstream.accept().await;
    let mut two = upstream.accept().await;
    read_request(&mut one).await;
    read_request(&mut two).await;
    one.write_all(response("1").as_bytes()).await.unwrap();
    done(a).await;
    two.write_all(response("2").as_bytes()).await.unwrap();
    done(b).await;
    // The older idle connection makes room for the newer one.
    assert!(closed_within(&mut one, PATIENCE).await, "two idle connections kept with pool_max_idle = 1");
    assert!(!closed_within(&mut two, Duration::from_millis(300)).await, "the one idle connection allowed was closed");
    let c = get(&proxy, &token, "/c");
    assert!(read_request(&mut two).await.starts_with("GET /c "));
    two.write_all(response("3").as_bytes()).await.unwrap();
    assert_eq!(done(c).await, (200, "3".to_owned()));
    assert!(!upstream.opened_within(Duration::from_millis(100)).await);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_pool_idle_timeout() {
    let mut upstream = RawUpstream::start().await;
    let (proxy, token) = proxy(&upstream, "pool_idle_timeout = \"300ms\"").await;
    let a = get(&proxy, &token, "/a");
    let mut conn = upstream.accept().await;
    read_request(&mut conn).await;
    conn.write_all(response("1").as_bytes()).await.unwrap();
    done(a).await;
    let idle_from = Instant::now();
    assert!(closed_within(&mut conn, PATIENCE).await, "an idle connection outlived pool_idle_timeout");
    assert!(idle_from.elapsed() >= Duration::from_millis(250), "closed before the timeout: {:?}", idle_from.elapsed());
}

#[tokio::test]
async fn pool_keys_are_validated_by_name() {
    for (keys, named) in [
        ("pool_idle_timeout = \"0s\"", "upstream.pool_idle_timeout"),
        ("pool_max_idle = 100000", "upstream.pool_max_idle"),
    ] {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:8080\"\n\
             [upstream]\nurl = \"http://127.0.0.1:9\"\n{keys}\n[idp]\nkind = \"local\"\n"
        );
        let err = dcr_proxy::config::Config::from_toml(&text, |_| None).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains(named)), "{keys}: {err:?}");
    }
}
