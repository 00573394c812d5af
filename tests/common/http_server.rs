//! A tiny hyper server for fakes: binds 127.0.0.1:0 and calls an async handler per request, over plain HTTP
//! ([`serve`]) or TLS ([`serve_tls`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

pub type FakeBody = BoxBody<Bytes, Infallible>;

pub fn body(data: impl Into<Bytes>) -> FakeBody {
    Full::new(data.into()).boxed()
}

/// A running fake; the accept loop ends when it is dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve<H, F>(handler: H) -> FakeServer
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<FakeBody>> + Send + 'static,
{
    serve_on(handler, None).await
}

/// Like [`serve`], over TLS with the given PEM certificate chain and key.
pub async fn serve_tls<H, F>(handler: H, cert_pem: &str, key_pem: &str) -> FakeServer
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<FakeBody>> + Send + 'static,
{
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().expect("cert pem");
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes()).expect("key pem").expect("a key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    serve_on(handler, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
}

async fn serve_on<H, F>(handler: H, tls: Option<tokio_rustls::TlsAcceptor>) -> FakeServer
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<FakeBody>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
    let addr = listener.local_addr().expect("fake addr");
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                }
            });
        }
    });
    FakeServer { addr, task }
}
