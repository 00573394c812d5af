//! The benchmark's upstream fixture: as fast as hyper allows, on one worker thread.
//!
//! `cargo run --release --example bench_upstream -- PORT`
//! - `GET /small`: a 120-byte JSON body;
//! - `GET /big`: 1 MiB;
//! - `POST /upload`: reads the body, answers its length;
//! - `GET /sse?n=N&interval_ms=M`: N small SSE events, M ms apart (0: back to back); each event's data is the
//!   send time in microseconds since the Unix epoch, for `bench_sse_latency`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type B = BoxBody<Bytes, Infallible>;

const SMALL: &[u8] =
    br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello from the upstream fixture"}]}}"#;

struct Events {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn micros() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros()
}

async fn handle(req: Request<Incoming>, big: Bytes) -> Response<B> {
    let query = req.uri().query().unwrap_or("").to_owned();
    match req.uri().path() {
        "/big" => Response::new(Full::new(big).boxed()),
        "/upload" => {
            let n = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
            Response::new(Full::new(Bytes::from(format!("{{\"bytes\":{n}}}"))).boxed())
        }
        "/sse" => {
            let param = |name: &str, default: u64| -> u64 {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == name)
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(default)
            };
            let (n, interval) = (param("n", 100), param("interval_ms", 0));
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            tokio::spawn(async move {
                for _ in 0..n {
                    if interval > 0 {
                        tokio::time::sleep(Duration::from_millis(interval)).await;
                    }
                    let event = format!("event: message\ndata: {}\n\n", micros());
                    if tx.send(Bytes::from(event)).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder().header("content-type", "text/event-stream").body(Events { rx }.boxed()).unwrap()
        }
        _ => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(SMALL)).boxed())
            .unwrap(),
    }
}

fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(3900);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async move {
        let big = Bytes::from(vec![b'x'; 1024 * 1024]);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        println!("bench_upstream listening on 127.0.0.1:{port}");
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let big = big.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let big = big.clone();
                    async move { Ok::<_, Infallible>(handle(req, big).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
}
