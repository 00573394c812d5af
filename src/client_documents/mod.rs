//! Client ID Metadata Documents (MCP 2025-11-25; the 2026-07-28 revision prefers them to DCR): a client whose
//! `client_id` is an https URL is described by the JSON document at that URL.
//!
//! - [`document`]: the URL and document rules (plain functions).
//! - [`address`]: which resolved addresses may be contacted (globally reachable unicast only).
//! - [`fetch`]: resolution → address check → pinned fetch (no redirects, size cap, deadline), with injectable
//!   resolver and transport.
//! - [`flight`]: one fetch per URL at a time (single flight), its entry gone when the fetch ends or its request
//!   is cancelled. [`cache`]: the bounded maps of accepted documents and of recent failures.
//!
//! Documents are cached (bounded, for `cache_ttl` or less when the document's `Cache-Control` says so). These
//! clients are not kept in the store or in snapshots: a later `/token` call fetches the document again once the
//! cached copy expires, so taking a document down stops its client.
//!
//! Invariants (what an anonymous flood can cost):
//! - A failed fetch is remembered for `failure_ttl`: a URL that fails causes one outbound fetch per `failure_ttl`,
//!   however many `/authorize` or `/token` requests name it.
//! - `/token` and `/revoke` fetch nothing unless the request presents a code or token issued to that client_id
//!   ([`check_token_request`]).
//! - Memory is bounded whatever the flood: at most `cache_entries` accepted documents, `cache_entries` remembered
//!   failures, and `max_concurrent_fetches` fetches in flight (503 beyond).
//! - The error shown to the client never names an address a host resolved to (that goes to the log only), so the
//!   proxy cannot be used to read an internal DNS zone.

pub mod address;
pub mod cache;
pub mod document;
pub mod fetch;
pub mod flight;
pub mod keys;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cache::BoundedCache;
pub use document::is_document_id;
use fetch::{FetchPolicy, Fetcher, ReqwestTransport, Resolver, SystemResolver, Transport};
use flight::{Flights, Joined, Waited};

use crate::clock::UnixTime;
use crate::config::ClientDocumentsConfig;
use crate::crypto::TokenHash;
use crate::http::params::Params;
use crate::oauth::error::OAuthError;
use crate::redirect_uri::Allowlist;
use crate::store::{Client, GrantType, Store, StoreError};

/// Why a metadata document cannot be used. Messages are shown to users on an error page and to clients in
/// `error_description`; they never contain the document's body nor an address a name resolved to.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DocumentError {
    #[error("this server does not accept client metadata documents (URL client_ids); register the client instead")]
    Disabled,
    #[error("the client_id URL is not valid: {0}")]
    InvalidUrl(String),
    #[error("documents from {0} are not accepted by this server")]
    HostNotAllowed(String),
    /// The name did not resolve; `reason` is for the log only. The message is the one of [`Self::NonPublicAddress`],
    /// so that a page does not tell which internal names exist.
    #[error("the host {host} is not allowed: it does not resolve, or not to public addresses only")]
    Resolve { host: String, reason: String },
    /// `addr` is for the log only.
    #[error("the host {host} is not allowed: it does not resolve, or not to public addresses only")]
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
    /// A `jwks_uri` answered with something that is not a usable key set.
    #[error("what it serves is not a usable key set: {0}")]
    KeySet(String),
    #[error("too many client metadata documents are being fetched right now; try again in a moment")]
    Busy,
    /// The fetch this request waited for was abandoned (its request was cancelled), more than once in a row.
    #[error("the fetch of the client metadata document was interrupted; try again in a moment")]
    Interrupted,
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
            Self::NotJson(_) | Self::ClientIdMismatch { .. } | Self::Invalid(_) | Self::KeySet(_) => "invalid",
            Self::Busy | Self::Interrupted => "busy",
        }
    }

    /// Whether the refusal is about capacity (too many documents in flight), not about the document.
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Busy | Self::Interrupted)
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

/// Resolves URL client_ids to clients, with bounded caches of documents and of failures.
pub struct ClientDocuments {
    config: ClientDocumentsConfig,
    fetcher: Fetcher,
    cache: BoundedCache<Arc<Client>>,
    /// Recent failures, answered again without a fetch until `failure_ttl` passes.
    failures: BoundedCache<DocumentError>,
    /// Fetches in flight, one per URL and at most `max_concurrent_fetches` (beyond: 503 instead of queueing).
    flights: Flights,
    /// Key sets of `private_key_jwt` clients published at a `jwks_uri`, fetched with the same guard.
    pub keys: keys::KeyCache,
}

/// How many times a request joins a fetch whose leader is cancelled before it gives up (and is told to retry).
const MAX_JOINS: usize = 3;

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
        let keys = keys::KeyCache::new(
            fetcher.clone(),
            keys::KeyCachePolicy {
                cache_ttl: config.cache_ttl,
                failure_ttl: config.failure_ttl,
                refetch_interval: config.jwks_refetch_interval,
                entries: config.cache_entries,
                max_concurrent: config.max_concurrent_fetches,
                allowed_hosts: config.allowed_hosts.clone(),
            },
        );
        Self {
            keys,
            cache: BoundedCache::new(config.cache_entries),
            failures: BoundedCache::new(config.cache_entries),
            flights: Flights::new(config.max_concurrent_fetches),
            config,
            fetcher,
        }
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
        for _ in 0..MAX_JOINS {
            if let Some(hit) = self.cache.get(client_id, now) {
                return Ok(hit);
            }
            if let Some(failure) = self.failures.get(client_id, now) {
                return Err(failure);
            }
            let url = document::check_url(client_id, &self.config.allowed_hosts)?;
            match self.flights.join(client_id)? {
                Joined::Lead(lead) => {
                    // If this request is cancelled during the fetch, `lead` is dropped: its entry and slot are
                    // freed and the waiters woken.
                    let result = self.fetch(&url, now, redirects).await;
                    metrics.document_fetch(result.as_ref().map_or_else(DocumentError::kind, |_| "ok"));
                    if let Err(e) = &result {
                        let ttl = self.config.failure_ttl.as_secs();
                        self.failures.insert(client_id, e.clone(), now, now + ttl);
                    }
                    lead.finish(&result);
                    return result;
                }
                Joined::Wait(waiter) => match waiter.outcome().await {
                    Waited::Done(outcome) => return outcome,
                    // The leader went away: look again (another request may have finished it), or lead.
                    Waited::Abandoned => continue,
                },
            }
        }
        Err(DocumentError::Interrupted)
    }

    async fn fetch(&self, url: &url::Url, now: UnixTime, redirects: &Allowlist) -> Result<Arc<Client>, DocumentError> {
        let fetched = self.fetcher.fetch(url).await?;
        let client = Arc::new(document::parse(&fetched.body, url, now, redirects)?);
        let ttl = fetched.max_age.map_or(self.config.cache_ttl, |age| age.min(self.config.cache_ttl));
        tracing::info!(
            client_id = url.as_str(),
            client_name = client.client_name.as_deref().unwrap_or(""),
            cache_secs = ttl.as_secs(),
            "client metadata document accepted"
        );
        if !ttl.is_zero() {
            self.cache.insert(url.as_str(), client.clone(), now, now + ttl.as_secs());
        }
        Ok(client)
    }

    /// Cached documents.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Remembered failures.
    pub fn failures(&self) -> usize {
        self.failures.len()
    }

    /// Fetches running now, and requests waiting for one of them.
    pub fn in_flight(&self) -> (usize, usize) {
        (self.flights.running(), self.flights.waiting())
    }
}

/// The token endpoint's rule for a URL client_id (RFC 6749 §4.1.3, §6): its document is fetched only for a
/// request that presents a code or a refresh token issued to that client_id, so that an anonymous request with a
/// made-up code makes the proxy fetch nothing. A code already redeemed counts (its replay must still revoke its
/// grant, which needs the client authenticated). The errors are the ones the exchange itself would give.
///
/// The outer error: the store did not answer.
pub async fn check_token_request(
    store: &Store,
    params: &Params,
    client_id: &str,
) -> Result<Result<(), OAuthError>, StoreError> {
    let grant = match crate::oauth::grant_type::requested(params) {
        Ok(g) => g,
        Err(e) => return Ok(Err(e)),
    };
    let presented = match params.require(grant.presented_param()) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e.into())),
    };
    let owner = match grant {
        GrantType::AuthorizationCode => store.code_client(&TokenHash::of(presented)).await?,
        GrantType::RefreshToken => store.refresh_client(presented).await?,
    };
    Ok(match (owner.as_deref() == Some(client_id), grant) {
        (true, _) => Ok(()),
        (false, GrantType::AuthorizationCode) => {
            Err(OAuthError::invalid_grant("authorization code is invalid or expired"))
        }
        (false, GrantType::RefreshToken) => {
            Err(OAuthError::invalid_grant("refresh token is invalid, expired or revoked"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::error::ErrorCode;
    use crate::store::{
        AuthorizationCode, FamilyId, Grant, Identity, RefreshFamily, RefreshTokenName, UpstreamCredential,
        UpstreamLogin,
    };

    const DOC: &str = "https://app.example/client.json";

    fn params(s: &str) -> Params {
        Params::parse(s.as_bytes()).unwrap_or_default()
    }

    fn login() -> UpstreamLogin {
        UpstreamLogin { credential: UpstreamCredential::Local, identity: Identity::default() }
    }

    #[tokio::test]
    async fn a_token_request_must_present_a_code_or_refresh_token_of_that_client() {
        let store = Arc::new(crate::store::MemoryStore::new());
        let state = Store::Memory(store.clone());
        let code = |c: &str| params(&format!("grant_type=authorization_code&code={c}"));
        let refresh = |t: &str| params(&format!("grant_type=refresh_token&refresh_token={t}"));
        let refused = |p: Params| {
            let state = &state;
            async move { check_token_request(state, &p, DOC).await.ok().and_then(|r| r.err()).map(|e| e.code) }
        };
        assert_eq!(refused(code("made-up")).await, Some(ErrorCode::InvalidGrant));
        assert_eq!(refused(refresh("made-up")).await, Some(ErrorCode::InvalidGrant));
        assert_eq!(refused(params("grant_type=client_credentials")).await, Some(ErrorCode::UnsupportedGrantType));
        assert_eq!(refused(params("code=x")).await, Some(ErrorCode::InvalidRequest));

        let put_code = |c: &str, client_id: &str| {
            store.issue_code(
                TokenHash::of(c),
                AuthorizationCode {
                    request: crate::store::AuthorizationRequest {
                        client_id: client_id.into(),
                        redirect_uri: "https://app.example/cb".into(),
                        redirect_uri_explicit: true,
                        code_challenge: String::new(),
                        scope: vec![],
                        resource: None,
                        state: None,
                    },
                    expires_at: 100,
                    login: login(),
                },
            );
        };
        put_code("ours", DOC);
        put_code("theirs", "https://other.example/client.json");
        assert_eq!(refused(code("ours")).await, None);
        assert_eq!(refused(code("theirs")).await, Some(ErrorCode::InvalidGrant));

        // A redeemed code still counts, so that its replay reaches the exchange and revokes the grant.
        let grant = Grant::new(DOC.into(), vec!["openid".into()], None, login(), 1);
        store.start_grant(grant.clone(), TokenHash::of("spent"), 100);
        assert_eq!(refused(code("spent")).await, None);

        let name = RefreshTokenName { family: FamilyId::random(), generation: 3 };
        let (current, spent) = (name.mint(), RefreshTokenName { generation: 1, ..name }.mint());
        store.add_refresh_family(
            name.family.hash(),
            RefreshFamily {
                grant: grant.clone(),
                generation: 3,
                current: TokenHash::of(&current),
                expires_at: 100,
                rotated: None,
            },
        );
        assert_eq!(refused(refresh(&current)).await, None);
        // A spent generation counts too: its reuse must reach the exchange and revoke the grant.
        assert_eq!(refused(refresh(&spent)).await, None);
        let other = check_token_request(&state, &refresh(&current), "https://other.example/c.json").await;
        assert!(matches!(other, Ok(Err(_))));
    }
}
