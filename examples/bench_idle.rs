//! Memory of idle keep-alive connections (issue 23 item 15): N client connections each send one 70 KB POST
//! through the real server and then stay open and quiet; the heap still allocated per connection once they have
//! been idle for 2 s (counting global allocator: live bytes, not RSS, which keeps what the allocator was given
//! back), and the process's RSS growth per connection beside it.
//!
//! `cargo run --release --example bench_idle -- [CONNECTIONS] [BODY_BYTES]` (defaults 500, 70000; the shipped
//! defaults unless `BENCH_FAST_PATH=0`: the fast path off, hyper serves every request). Prints one JSON line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::alloc::System;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dcr_proxy::app::App;
use dcr_proxy::clock::Clock;
use dcr_proxy::config::Config;
use dcr_proxy::crypto::{self, TokenHash};
use dcr_proxy::idp::Idp;
use dcr_proxy::store::{AccessToken, Grant, Identity, UpstreamCredential, UpstreamLogin, UpstreamTokens};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// An upstream that reads the whole body and answers a small JSON document.
async fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async {
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    port
}

/// Bytes the allocator has handed out and not had back (a realloc's growth counts as allocated, its shrinking
/// as deallocated).
fn live() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
}

/// A connection that sent one POST of `body` bytes and read its whole answer.
async fn posted(port: u16, token: &str, body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if data.len() >= end + 4 + len {
                return stream;
            }
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|p| p.parse().ok()).unwrap_or(500);
    let size: usize = args.next().and_then(|p| p.parse().ok()).unwrap_or(70_000);
    let fast_path = std::env::var("BENCH_FAST_PATH").map_or(true, |v| v != "0");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async move {
        let up = upstream().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nfast_path = {fast_path}\n\
             [upstream]\nurl = \"http://127.0.0.1:{up}\"\n\
             [idp]\nkind = \"azure\"\nauthority = \"http://127.0.0.1:9\"\ntenant = \"common\"\nclient_id = \"bench\"\nclient_secret = \"bench\"\n\
             [limits]\nmax_connections = {}\nmax_connections_per_source = {cap}\n[log]\nfilter = \"warn\"\n",
            4 * n,
            cap = n + 64
        );
        let config = Config::from_toml(&text, |_| None).unwrap();
        let clock = Clock::system();
        let idp = Idp::from_config(&config).await.unwrap();
        let app = App::with_idp(config, clock.clone(), idp).unwrap();
        let now = clock.now();
        let upstream_token = format!("EwB4A8l6BAAU{}", crypto::random_token().repeat(48));
        let tokens =
            UpstreamTokens::new(upstream_token, Some(crypto::random_token().repeat(36)), now + 86400, None).unwrap();
        let login = UpstreamLogin {
            credential: UpstreamCredential::Tokens(tokens),
            identity: Identity { sub: "bench-user".into(), ..Identity::default() },
        };
        let grant = Grant::new("bench-client".into(), vec!["openid".into()], None, login, now);
        app.store.start_grant(grant.clone(), TokenHash::of("bench-code"), now + 1).await.unwrap();
        let access = crypto::random_token();
        app.store.add_access_token(&access, AccessToken::new(Arc::clone(&grant), now + 86400)).await.unwrap();
        tokio::spawn(dcr_proxy::server::serve(listener, app, None, std::future::pending()));
        let body = vec![b'x'; size];
        // Warm-up: the upstream connection, the pools, the allocator's first pages.
        for _ in 0..3 {
            drop(posted(port, &access, &body).await);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (heap0, rss0) = (live(), rss_kib());
        let mut open = Vec::with_capacity(n);
        for _ in 0..n {
            open.push(posted(port, &access, &body).await);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (heap1, rss1) = (live(), rss_kib());
        let per_heap = (heap1 - heap0) as f64 / n as f64 / 1024.0;
        let per_rss = (rss1 - rss0) as f64 / n as f64;
        println!(
            "{{\"fast_path\":{fast_path},\"connections\":{n},\"body_bytes\":{size},\
             \"heap_kib_per_idle_connection\":{per_heap:.2},\"rss_kib_per_idle_connection\":{per_rss:.2}}}"
        );
        if std::env::var("BENCH_EXIT_HOLDING").is_ok_and(|v| v == "1") {
            // For heaptrack: what is still allocated at exit is what the idle connections hold.
            std::process::exit(0);
        }
        drop(open);
    });
}
