//! Fetching a client metadata document without becoming an SSRF gadget.
//!
//! 1. The host is resolved by a [`Resolver`] (the system's, or one a test injects).
//! 2. Every address is checked ([`super::address`]); one non-public address refuses the name, before any
//!    connection (loopback passes only with the test-only `allow_loopback_for_testing`). The address is logged;
//!    the error the client sees names only the host.
//! 3. The [`Transport`] is handed the checked addresses and must connect to nothing else: the reqwest transport
//!    pins the host to them (`resolve_to_addrs`, no proxy), so a second, different DNS answer cannot be used.
//! 4. No redirect is followed, the body is read up to the size cap, and the whole fetch has one deadline.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use url::Url;

use super::{address, DocumentError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Name resolution, injectable so that tests never need a real DNS answer.
pub trait Resolver: Send + Sync {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>>;
}

/// The operating system's resolver (`getaddrinfo` on a blocking thread).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// One GET of a document, to be sent only to `addrs`.
#[derive(Debug)]
pub struct FetchRequest<'a> {
    pub url: &'a Url,
    /// The checked addresses of the URL's host; the transport connects to these and nothing else.
    pub addrs: &'a [SocketAddr],
    pub max_bytes: usize,
}

/// A fetched document.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub body: Bytes,
    /// From `Cache-Control`: `max-age`, or zero for `no-store` / `no-cache`.
    pub max_age: Option<Duration>,
}

/// The HTTP leg, injectable so that tests can record every connection attempt.
pub trait Transport: Send + Sync {
    fn get<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Fetched, DocumentError>>;
}

/// reqwest (rustls, web PKI roots plus optional extra anchors), one short-lived client per fetch so that the
/// host is pinned to the checked addresses.
pub struct ReqwestTransport {
    extra_roots: Vec<reqwest::Certificate>,
    timeout: Duration,
}

impl ReqwestTransport {
    /// `extra_ca_pem`: more trust anchors (PEM bundle) beside the web PKI.
    pub fn new(extra_ca_pem: Option<&[u8]>, timeout: Duration) -> Result<Self, String> {
        let extra_roots = match extra_ca_pem {
            Some(pem) => {
                let roots = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?;
                if roots.is_empty() {
                    return Err("no PEM certificate in the file".to_owned());
                }
                roots
            }
            None => Vec::new(),
        };
        Ok(Self { extra_roots, timeout })
    }
}

impl Transport for ReqwestTransport {
    fn get<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Fetched, DocumentError>> {
        Box::pin(async move {
            let url = request.url;
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .https_only(true)
                .timeout(self.timeout)
                .connect_timeout(self.timeout)
                .pool_max_idle_per_host(0)
                .user_agent(concat!("dcr-proxy/", env!("CARGO_PKG_VERSION"), " (client metadata document fetch)"));
            if let Some(url::Host::Domain(host)) = url.host() {
                builder = builder.resolve_to_addrs(host, request.addrs);
            }
            for root in &self.extra_roots {
                builder = builder.add_root_certificate(root.clone());
            }
            let client = builder.build().map_err(|e| DocumentError::Fetch(e.to_string()))?;
            let mut resp = client
                .get(url.clone())
                .header(http::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| transport_error(e, self.timeout))?;
            let status = resp.status();
            if status.is_redirection() {
                return Err(DocumentError::Redirect(status.as_u16()));
            }
            if status != http::StatusCode::OK {
                return Err(DocumentError::Status(status.as_u16()));
            }
            if resp.content_length().is_some_and(|len| len > request.max_bytes as u64) {
                return Err(DocumentError::TooLarge(request.max_bytes));
            }
            let max_age = cache_max_age(resp.headers());
            let mut body = BytesMut::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(e, self.timeout))? {
                if body.len() + chunk.len() > request.max_bytes {
                    return Err(DocumentError::TooLarge(request.max_bytes));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Fetched { body: body.freeze(), max_age })
        })
    }
}

fn transport_error(e: reqwest::Error, timeout: Duration) -> DocumentError {
    if e.is_timeout() {
        return DocumentError::Timeout(timeout);
    }
    // The source chain names the real cause (refused, certificate, …) without the URL, which the page shows.
    let mut cause = String::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    DocumentError::Fetch(if cause.is_empty() { e.without_url().to_string() } else { cause })
}

/// `Cache-Control: max-age=N` → N seconds; `no-store` / `no-cache` → zero.
pub fn cache_max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let mut max_age = None;
    for value in headers.get_all(http::header::CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()) {
        for directive in value.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-store" || lower == "no-cache" {
                return Some(Duration::ZERO);
            }
            if let Some(secs) = lower.strip_prefix("max-age=").and_then(|v| v.trim_matches('"').parse::<u64>().ok()) {
                max_age = Some(Duration::from_secs(secs));
            }
        }
    }
    max_age
}

/// What the fetcher is allowed to do.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    pub max_bytes: usize,
    pub timeout: Duration,
    pub allow_loopback: bool,
}

/// Resolution, address checks and the transport, under one deadline.
#[derive(Clone)]
pub struct Fetcher {
    pub resolver: Arc<dyn Resolver>,
    pub transport: Arc<dyn Transport>,
    pub policy: FetchPolicy,
}

impl Fetcher {
    pub async fn fetch(&self, url: &Url) -> Result<Fetched, DocumentError> {
        let timeout = self.policy.timeout;
        tokio::time::timeout(timeout, self.fetch_inner(url)).await.map_err(|_| DocumentError::Timeout(timeout))?
    }

    async fn fetch_inner(&self, url: &Url) -> Result<Fetched, DocumentError> {
        let port = url.port_or_known_default().unwrap_or(443);
        let host = url.host_str().unwrap_or_default();
        let addrs: Vec<SocketAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Some(url::Host::Domain(name)) => self.resolver.resolve(name, port).await.map_err(|e| {
                tracing::info!(host, reason = %e, "client metadata document host did not resolve");
                DocumentError::Resolve { host: host.to_owned(), reason: e.to_string() }
            })?,
            None => return Err(DocumentError::InvalidUrl("it has no host".into())),
        };
        if addrs.is_empty() {
            tracing::info!(host, "client metadata document host resolved to no address");
            return Err(DocumentError::Resolve { host: host.to_owned(), reason: "no address".into() });
        }
        if let Some(bad) = addrs.iter().find(|a| !self.address_allowed(a.ip())) {
            // The address is for the operator only; the client is told that the host is not allowed.
            tracing::warn!(host, addr = %bad.ip(), "client metadata document host resolves to a non-public address");
            return Err(DocumentError::NonPublicAddress { host: host.to_owned(), addr: bad.ip() });
        }
        self.transport.get(FetchRequest { url, addrs: &addrs, max_bytes: self.policy.max_bytes }).await
    }

    fn address_allowed(&self, ip: IpAddr) -> bool {
        address::is_public(ip) || (self.policy.allow_loopback && address::is_loopback(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extra_ca_file_without_certificates_is_an_error() {
        assert!(ReqwestTransport::new(Some(b"not a certificate"), Duration::from_secs(1)).is_err());
        assert!(ReqwestTransport::new(None, Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn cache_control_is_read() {
        let mut h = http::HeaderMap::new();
        assert_eq!(cache_max_age(&h), None);
        h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("public, max-age=300"));
        assert_eq!(cache_max_age(&h), Some(Duration::from_secs(300)));
        h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        assert_eq!(cache_max_age(&h), Some(Duration::ZERO));
    }
}
