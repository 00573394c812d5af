//! A fake upstream MCP/API server that records what it receives.
//!
//! - any path: answers JSON `{method, path, query, headers, body_len}` and echoes `Mcp-Session-Id`;
//! - `/sse`: an event stream whose second event is sent only when the test calls [`Upstream::release`], which
//!   proves that the proxy forwards the first event without waiting for the rest;
//! - `/upload`: answers the byte count and SHA-256 of the request body;
//! - `/download?bytes=N`: streams N bytes in 64 KiB chunks;
//! - `/challenge`: 401 with the upstream's own `WWW-Authenticate`;
//! - `/need-scope`: 403 `insufficient_scope` asking for `User.Read` and a scope the proxy does not offer;
//! - `/slow`: never answers;
//! - `/set-cookie`: sets the proxy's own cookie names beside one of its own (`session`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::{Request, Response};
use serde_json::json;
use tokio::sync::{mpsc, Notify};

use super::http_server::{body, serve, FakeBody, FakeServer};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, Vec<String>>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str)
    }
}

pub struct Upstream {
    pub server: FakeServer,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    release: Arc<Notify>,
}

impl Upstream {
    pub async fn start() -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let (r, n) = (requests.clone(), release.clone());
        let server = serve(move |req| {
            let (r, n) = (r.clone(), n.clone());
            async move { handle(req, r, n).await }
        })
        .await;
        Self { server, requests, release }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests").clone()
    }

    pub fn last(&self) -> Recorded {
        self.recorded().pop().expect("the upstream received a request")
    }

    /// Lets `/sse` send its second event.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

fn stream_body(rx: mpsc::Receiver<Bytes>) -> FakeBody {
    ChannelBody { rx }.boxed()
}

struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    release: Arc<Notify>,
) -> Response<FakeBody> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers.entry(k.as_str().to_owned()).or_default().push(v.to_str().unwrap_or("<binary>").to_owned());
    }
    let rec = Recorded { method: req.method().to_string(), path: req.uri().path().to_owned(), headers };
    requests.lock().expect("requests").push(rec.clone());
    let session = req.headers().get("mcp-session-id").cloned();
    let query = req.uri().query().unwrap_or("").to_owned();
    match req.uri().path() {
        "/sse" => {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"event: message\ndata: {\"n\":1}\n\n")).await;
                release.notified().await;
                let _ = tx.send(Bytes::from_static(b"event: message\ndata: {\"n\":2}\n\n")).await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(stream_body(rx))
                .expect("resp")
        }
        "/upload" => {
            let data = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let digest = dcr_proxy::crypto::sha256(&data);
            Response::builder()
                .header("content-type", "application/json")
                .body(body(json!({"bytes": data.len(), "sha256": dcr_proxy::crypto::b64url(&digest)}).to_string()))
                .expect("resp")
        }
        "/download" => {
            let n: usize = query.strip_prefix("bytes=").and_then(|v| v.parse().ok()).unwrap_or(0);
            let (tx, rx) = mpsc::channel(2);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let mut left = n;
                while left > 0 {
                    let take = left.min(chunk.len());
                    if tx.send(chunk.slice(..take)).await.is_err() {
                        return;
                    }
                    left -= take;
                }
            });
            Response::builder().header("content-type", "application/octet-stream").body(stream_body(rx)).expect("resp")
        }
        "/set-cookie" => Response::builder()
            .header("set-cookie", "dcrp=upstream-chosen; Path=/")
            .header("set-cookie", "__Host-dcrp=upstream-chosen; Path=/; Secure")
            .header("set-cookie", "session=upstream; Path=/")
            .body(body("{}"))
            .expect("resp"),
        "/challenge" => Response::builder()
            .status(401)
            .header("www-authenticate", "Bearer realm=\"upstream\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\"")
            .body(body("{}"))
            .expect("resp"),
        "/need-scope" => Response::builder()
            .status(403)
            .header(
                "www-authenticate",
                "Bearer error=\"insufficient_scope\", scope=\"User.Read Sites.FullControl.All\", realm=\"upstream\"",
            )
            .body(body("{}"))
            .expect("resp"),
        "/slow" => {
            std::future::pending::<()>().await;
            Response::new(body(""))
        }
        _ => {
            let len = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
            let doc = json!({"method": rec.method, "path": rec.path, "query": query, "headers": rec.headers, "body_len": len});
            let mut resp = Response::builder().header("content-type", "application/json");
            if let Some(s) = session {
                resp = resp.header("mcp-session-id", s);
            }
            resp.body(body(doc.to_string())).expect("resp")
        }
    }
}
