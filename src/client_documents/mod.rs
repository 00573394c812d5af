//! Client ID Metadata Documents (MCP 2025-11-25; the 2026-07-28 revision prefers them to DCR): a client whose
//! `client_id` is an https URL is described by the JSON document at that URL.
//!
//! - [`document`]: the URL and document rules (plain functions).
//! - [`address`]: which resolved addresses may be contacted (globally reachable unicast only).
//! - [`fetch`]: resolution → address check → pinned fetch (no redirects, size cap, deadline), with injectable
//!   resolver and transport.
//!
//! Documents are cached (bounded, for `cache_ttl` or less when the document's `Cache-Control` says so). These
//! clients are not kept in the store or in snapshots: a later `/token` call fetches the document again once the
//! cached copy expires, so taking a document down stops its client.

pub mod address;
pub mod document;
pub mod fetch;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

pub use document::is_document_id;
use fetch::{FetchPolicy, Fetcher, ReqwestTransport, Resolver, SystemResolver, Transport};

use crate::clock::UnixTime;
use crate::config::ClientDocumentsConfig;
use crate::oauth::redirect_uri::Allowlist;
use crate::store::Client;

/// Why a metadata document cannot be used. Messages are shown to users on an error page and to clients in
/// `error_description`; they never contain the document's body.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("this server does not accept client metadata documents (URL client_ids); register the client instead")]
    Disabled,
    #[error("the client_id URL is not valid: {0}")]
    InvalidUrl(String),
    #[error("documents from {0} are not accepted by this server")]
    HostNotAllowed(String),
    #[error("the host {host} could not be resolved ({reason})")]
    Resolve { host: String, reason: String },
    #[error("the host {host} resolves to {addr}, a private, loopback or otherwise non-public address, which is never contacted")]
    NonPublicAddress { host: String, addr: IpAddr },
    #[error("the document could not be fetched ({0})")]
    Fetch(String),
    #[error("the document was not served within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the document URL answered with a redirect (HTTP {0}); redirects are not followed")]
    Redirect(u16),
    #[error("the document URL answered HTTP {0} instead of 200")]
    Status(u16),
    #[error("the document is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the document is not a JSON object ({0})")]
    NotJson(String),
    #[error("the document's client_id `{found}` is not the URL it was fetched from")]
    ClientIdMismatch { found: String },
    #[error("the document is not valid client metadata: {0}")]
    Invalid(String),
    #[error("too many client metadata documents are being fetched right now; try again in a moment")]
    Busy,
}

impl DocumentError {
    /// A low-cardinality name for metrics: `refused` (the URL, its host or its address is not allowed), `failed`
    /// (the fetch did not produce a 200 body in time and size), `invalid` (the document breaks the rules), `busy`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Disabled | Self::InvalidUrl(_) | Self::HostNotAllowed(_) | Self::NonPublicAddress { .. } => "refused",
            Self::Resolve { .. }
            | Self::Fetch(_)
            | Self::Timeout(_)
            | Self::Redirect(_)
            | Self::Status(_)
            | Self::TooLarge(_) => "failed",
            Self::NotJson(_) | Self::ClientIdMismatch { .. } | Self::Invalid(_) => "invalid",
            Self::Busy => "busy",
        }
    }

    /// The error page shown when `/authorize` names a document that cannot be used (never a redirect: the
    /// redirect URI is not trusted yet).
    pub fn into_page(self, client_id: &str) -> crate::error::Error {
        if matches!(self, Self::Busy) {
            return crate::error::Error::Capacity { what: "too many client metadata documents in flight", html: true };
        }
        crate::error::Error::page(
            http::StatusCode::BAD_REQUEST,
            "Application identity refused",
            format!(
                "The application identifies itself with the document at {client_id}, which cannot be used: {self}. \
                 Contact the application's developer."
            ),
        )
    }

    /// The token endpoint's answer: the client cannot be authenticated.
    pub fn into_token_error(self) -> crate::error::Error {
        if matches!(self, Self::Busy) {
            return crate::error::Error::Capacity { what: "too many client metadata documents in flight", html: false };
        }
        crate::error::OAuthError::invalid_client(format!("client metadata document refused: {self}")).into()
    }
}

/// The network side of the fetcher: resolver and transport (tests inject recording ones).
#[derive(Clone)]
pub struct Network {
    pub resolver: Arc<dyn Resolver>,
    pub transport: Arc<dyn Transport>,
}

impl Network {
    /// The system resolver and the reqwest transport, with `extra_ca_file` loaded.
    pub fn system(config: &ClientDocumentsConfig) -> Result<Self, String> {
        let pem = match &config.extra_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("client_metadata_documents.extra_ca_file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let transport = ReqwestTransport::new(pem.as_deref(), config.timeout)
            .map_err(|e| format!("client_metadata_documents.extra_ca_file: {e}"))?;
        Ok(Self { resolver: Arc::new(SystemResolver), transport: Arc::new(transport) })
    }
}

struct Cached {
    client: Arc<Client>,
    expires_at: UnixTime,
}

/// Resolves URL client_ids to clients, with a bounded cache.
pub struct ClientDocuments {
    config: ClientDocumentsConfig,
    fetcher: Fetcher,
    cache: DashMap<String, Cached>,
    /// Fetches in flight, at most `max_concurrent_fetches`; beyond it requests get 503 instead of queueing.
    in_flight: tokio::sync::Semaphore,
    /// One gate per document being fetched (single flight).
    fetching: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

impl ClientDocuments {
    pub fn new(config: ClientDocumentsConfig, network: Network) -> Self {
        let fetcher = Fetcher {
            resolver: network.resolver,
            transport: network.transport,
            policy: FetchPolicy {
                max_bytes: config.max_bytes,
                timeout: config.timeout,
                allow_loopback: config.allow_loopback_for_testing,
            },
        };
        let in_flight = tokio::sync::Semaphore::new(config.max_concurrent_fetches);
        Self { config, fetcher, cache: DashMap::new(), in_flight, fetching: DashMap::new() }
    }

    /// The client described by the document at `client_id`: cached, or fetched and checked now.
    /// `metrics` counts the fetches (not the cache hits) by result.
    pub async fn client(
        &self,
        client_id: &str,
        now: UnixTime,
        redirects: &Allowlist,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Arc<Client>, DocumentError> {
        if !self.config.enabled {
            return Err(DocumentError::Disabled);
        }
        let cached = || self.cache.get(client_id).filter(|c| c.expires_at > now).map(|c| c.client.clone());
        if let Some(hit) = cached() {
            return Ok(hit);
        }
        // Single flight: concurrent requests for one document wait for the first fetch and read its result from
        // the cache (a failure is not cached, so each waiter then tries once itself).
        let gate = self.fetching.entry(client_id.to_owned()).or_default().clone();
        let turn = gate.lock().await;
        let result = match cached() {
            Some(hit) => Ok(hit),
            None => {
                let result = self.fetch(client_id, now, redirects).await;
                metrics.document_fetch(result.as_ref().map_or_else(DocumentError::kind, |_| "ok"));
                result
            }
        };
        drop(turn);
        // The map's reference and ours: nobody else is waiting on this gate.
        self.fetching.remove_if(client_id, |_, g| Arc::strong_count(g) <= 2);
        result
    }

    async fn fetch(&self, client_id: &str, now: UnixTime, redirects: &Allowlist) -> Result<Arc<Client>, DocumentError> {
        let url = document::check_url(client_id, &self.config.allowed_hosts)?;
        let _permit = self.in_flight.try_acquire().map_err(|_| DocumentError::Busy)?;
        let fetched = self.fetcher.fetch(&url).await?;
        let client = Arc::new(document::parse(&fetched.body, &url, now, redirects)?);
        let ttl = fetched.max_age.map_or(self.config.cache_ttl, |age| age.min(self.config.cache_ttl));
        tracing::info!(
            client_id,
            client_name = client.client_name.as_deref().unwrap_or(""),
            cache_secs = ttl.as_secs(),
            "client metadata document accepted"
        );
        if !ttl.is_zero() {
            self.remember(client_id, client.clone(), now, now + ttl.as_secs());
        }
        Ok(client)
    }

    /// Cached documents.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Caches a client; when the cache is full, expired entries go first, then the ones closest to expiry.
    fn remember(&self, client_id: &str, client: Arc<Client>, now: UnixTime, expires_at: UnixTime) {
        if self.cache.len() >= self.config.cache_entries && !self.cache.contains_key(client_id) {
            self.cache.retain(|_, c| c.expires_at > now);
            while self.cache.len() >= self.config.cache_entries {
                let oldest = self.cache.iter().min_by_key(|e| e.expires_at).map(|e| e.key().clone());
                match oldest {
                    Some(key) => {
                        self.cache.remove(&key);
                    }
                    None => break,
                }
            }
        }
        self.cache.insert(client_id.to_owned(), Cached { client, expires_at });
    }
}
