//! Heap allocations per proxied request (issue 13): a counting global allocator around the real server and hot
//! path, in one process with a small upstream and a raw keep-alive client.
//!
//! `cargo run --release --example bench_alloc -- [REQUESTS] [WORKER_THREADS]` (0: current-thread runtime;
//! the shipped defaults unless `BENCH_FAST_PATH=0`: the fast path off, `BENCH_REQUEST_TASK=0`: hyper-util's client)
//! Prints one JSON line: allocations and bytes per request straight to the upstream (`direct`), through the proxy
//! (`proxied`), and their difference (`proxy`: what the proxy adds per request, bearer lookup and swap included).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::alloc::System;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use dcr_proxy::app::App;
use dcr_proxy::clock::Clock;
use dcr_proxy::config::Config;
use dcr_proxy::crypto::{self, TokenHash};
use dcr_proxy::idp::Idp;
use dcr_proxy::store::{AccessToken, Grant, Identity, UpstreamCredential, UpstreamLogin, UpstreamTokens};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SMALL: &[u8] =
    br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello from the upstream fixture"}]}}"#;

async fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(SMALL)));
                    resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    port
}

/// One request on `stream` and its whole response.
async fn one(stream: &mut TcpStream, request: &[u8], buf: &mut [u8]) {
    stream.write_all(request).await.unwrap();
    let mut have = 0;
    loop {
        let read = stream.read(&mut buf[have..]).await.unwrap();
        assert!(read > 0, "connection closed");
        have += read;
        let text = &buf[..have];
        if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&text[..end]).unwrap().to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if have >= end + 4 + len {
                return;
            }
        }
    }
}

/// `n` MCP POSTs on one keep-alive connection; (allocations, bytes) during them.
async fn count(port: u16, token: &str, n: u64) -> (u64, u64) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\nmcp-protocol-version: 2025-06-18\r\ncontent-length: 58\r\n\r\n\
         {{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{}}}}"
    );
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..100 {
        one(&mut stream, request.as_bytes(), &mut buf).await;
    }
    let before = GLOBAL.stats();
    for _ in 0..n {
        one(&mut stream, request.as_bytes(), &mut buf).await;
    }
    let during = GLOBAL.stats() - before;
    (
        (during.allocations + during.reallocations) as u64,
        (during.bytes_allocated + during.bytes_reallocated.max(0) as usize) as u64,
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|p| p.parse().ok()).unwrap_or(10_000);
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(1);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = if workers == 0 {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap()
    };
    // `BENCH_REQUEST_TASK=0`: `upstream.drive_in_request_task = false`.
    let request_task = std::env::var("BENCH_REQUEST_TASK").map_or(true, |v| v != "0");
    // `BENCH_FAST_PATH=0`: `server.fast_path = false` (hyper serves every request).
    let fast_path = std::env::var("BENCH_FAST_PATH").map_or(true, |v| v != "0");
    rt.block_on(async move {
        let up = upstream().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nfast_path = {fast_path}\n\
             [upstream]\nurl = \"http://127.0.0.1:{up}\"\ndrive_in_request_task = {request_task}\n\
             [idp]\nkind = \"azure\"\nauthority = \"http://127.0.0.1:9\"\ntenant = \"common\"\nclient_id = \"bench\"\nclient_secret = \"bench\"\n\
             [log]\nfilter = \"warn\"\n"
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
        app.store
            .add_access_token(&access, AccessToken::new(Arc::clone(&grant), now + 86400))
            .await
            .unwrap();
        tokio::spawn(dcr_proxy::server::serve(listener, app, None, std::future::pending()));
        let direct = count(up, &access, n).await;
        let proxied = count(port, &access, n).await;
        let per = |(a, b): (u64, u64)| (a as f64 / n as f64, b as f64 / n as f64);
        let (d, p) = (per(direct), per(proxied));
        println!(
            "{{\"requests\":{n},\"direct\":{{\"allocs\":{:.1},\"bytes\":{:.0}}},\"proxied\":{{\"allocs\":{:.1},\"bytes\":{:.0}}},\
             \"proxy\":{{\"allocs\":{:.1},\"bytes\":{:.0}}}}}",
            d.0,
            d.1,
            p.0,
            p.1,
            p.0 - d.0,
            p.1 - d.1
        );
    });
}
