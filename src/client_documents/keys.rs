//! The public keys of `private_key_jwt` clients published at a `jwks_uri` (RFC 7591 §2, RFC 7523 §2.2), for
//! metadata-document and registered clients alike.
//!
//! A key set is fetched by the documents' [`Fetcher`]: the same guard (https, no redirects, globally reachable
//! addresses pinned for the connection, size cap, deadline, `extra_ca_file`, the loopback test switch) and the
//! same host allowlist (`client_metadata_documents.allowed_hosts`).
//!
//! Invariants (what a flood of assertions can cost):
//! - One fetch per URL at a time (single flight), within the documents' `max_concurrent_fetches`.
//! - A fetched set is used for its `Cache-Control: max-age` bounded to [`MIN_TTL`, `cache_ttl`]: a set marked
//!   `no-store` is still used for a minute, so that a client cannot make the proxy fetch at request rate.
//! - An assertion naming a `kid` the cached set lacks (the client rotated its key) fetches the set again at once,
//!   but such a forced fetch happens at most once per `jwks_refetch_interval` per URL: a stream of made-up `kid`s
//!   costs one fetch per interval, not one per request.
//! - A failed fetch is remembered for `failure_ttl` and answered again without fetching; other URLs (other
//!   clients) are not slowed by it. While a URL fails, or every fetch slot is taken, the last set fetched from it
//!   is used for up to `cache_ttl` past its expiry (stale-if-error).
//! - At most `cache_entries` sets and `cache_entries` failures are kept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::cache::BoundedCache;
use super::fetch::Fetcher;
use super::flight::{Flights, Joined, Waited};
use super::{document, DocumentError};
use crate::clock::UnixTime;
use crate::jwk::KeySet;

/// The shortest time a fetched key set is used (whatever its `Cache-Control` says).
pub const MIN_TTL: Duration = Duration::from_secs(60);

/// A fetched set and when it may be forced to be fetched again.
struct Entry {
    set: Arc<KeySet>,
    /// When the set was last fetched because an assertion named an unknown `kid` (0: never).
    forced_at: AtomicU64,
}

/// The bounds of the key cache.
#[derive(Debug, Clone)]
pub struct KeyCachePolicy {
    pub cache_ttl: Duration,
    pub failure_ttl: Duration,
    pub refetch_interval: Duration,
    pub entries: usize,
    pub max_concurrent: usize,
    pub allowed_hosts: Vec<String>,
}

/// Key sets by `jwks_uri`.
pub struct KeyCache {
    fetcher: Fetcher,
    policy: KeyCachePolicy,
    sets: BoundedCache<Arc<Entry>>,
    failures: BoundedCache<DocumentError>,
    flights: Flights<Arc<KeySet>>,
}

/// How many times a request joins a fetch whose leader is cancelled before it gives up.
const MAX_JOINS: usize = 3;

impl KeyCache {
    pub fn new(fetcher: Fetcher, policy: KeyCachePolicy) -> Self {
        Self {
            fetcher,
            sets: BoundedCache::new(policy.entries),
            failures: BoundedCache::new(policy.entries),
            flights: Flights::new(policy.max_concurrent),
            policy,
        }
    }

    /// The key set at `url`: cached, or fetched now. `unknown_kid`: the cached set did not have the key an
    /// assertion names, so fetch it again if no such forced fetch happened within `jwks_refetch_interval`
    /// (otherwise the cached set is returned as it is). `metrics` counts the fetches by result. The flag: whether
    /// the set was fetched (or waited for) by this call rather than taken from the cache.
    pub async fn keys(
        &self,
        url: &str,
        now: UnixTime,
        unknown_kid: bool,
        metrics: &crate::metrics::Metrics,
    ) -> Result<(Arc<KeySet>, bool), DocumentError> {
        for _ in 0..MAX_JOINS {
            let cached = self.sets.get(url, now);
            if let Some(entry) = &cached {
                if !unknown_kid || !self.may_force(entry, now) {
                    return Ok((entry.set.clone(), false));
                }
            } else if let Some(failure) = self.failures.get(url, now) {
                return self.stale(url, now).map(|set| (set, false)).ok_or(failure);
            }
            let parsed = self.check_url(url)?;
            let lead = match self.flights.join(url) {
                Ok(Joined::Lead(lead)) => lead,
                Ok(Joined::Wait(waiter)) => match waiter.outcome().await {
                    Waited::Done(outcome) => return outcome.map(|set| (set, true)),
                    Waited::Abandoned => continue,
                },
                Err(busy) => return self.stale(url, now).map(|set| (set, false)).ok_or(busy),
            };
            let forced_at = match &cached {
                Some(entry) => {
                    entry.forced_at.store(now, Ordering::Relaxed);
                    now
                }
                None => 0,
            };
            let mut result = self.fetch(&parsed, now, forced_at).await;
            metrics.document_fetch(result.as_ref().map_or_else(DocumentError::kind, |_| "ok"));
            if let Err(e) = &result {
                self.failures.insert(url, e.clone(), now, now + self.policy.failure_ttl.as_secs().max(1));
                if let Some(stale) = self.stale(url, now) {
                    tracing::warn!(jwks_uri = url, error = %e, "client key set could not be fetched; the last one is used");
                    result = Ok(stale);
                } else {
                    tracing::info!(jwks_uri = url, error = %e, "client key set refused");
                }
            }
            lead.finish(&result);
            return result.map(|set| (set, true));
        }
        Err(DocumentError::Interrupted)
    }

    /// The last set fetched from `url`, if it expired less than `cache_ttl` ago: used while the URL fails or the
    /// fetch slots are taken (stale-if-error), so that a client's outage or a flood of other clients' fetches
    /// does not stop a client whose keys were known.
    fn stale(&self, url: &str, now: UnixTime) -> Option<Arc<KeySet>> {
        self.sets.get_stale(url, now, self.policy.cache_ttl.as_secs()).map(|entry| entry.set.clone())
    }

    fn may_force(&self, entry: &Entry, now: UnixTime) -> bool {
        let at = entry.forced_at.load(Ordering::Relaxed);
        at == 0 || now >= at + self.policy.refetch_interval.as_secs()
    }

    fn check_url(&self, url: &str) -> Result<Url, DocumentError> {
        let bad = |why: &str| DocumentError::InvalidUrl(why.to_owned());
        let parsed = Url::parse(url).map_err(|e| DocumentError::InvalidUrl(e.to_string()))?;
        if parsed.scheme() != "https" {
            return Err(bad("the jwks_uri must be an https URL"));
        }
        let host = parsed.host_str().ok_or_else(|| bad("the jwks_uri has no host"))?;
        if !document::host_allowed(host, &self.policy.allowed_hosts) {
            return Err(DocumentError::HostNotAllowed(host.to_owned()));
        }
        Ok(parsed)
    }

    async fn fetch(&self, url: &Url, now: UnixTime, forced_at: UnixTime) -> Result<Arc<KeySet>, DocumentError> {
        let fetched = self.fetcher.fetch(url).await?;
        let set = Arc::new(KeySet::parse_published(&fetched.body).map_err(|e| DocumentError::KeySet(e.to_string()))?);
        let ceiling = self.policy.cache_ttl;
        let ttl = fetched.max_age.map_or(ceiling, |age| age.min(ceiling)).max(MIN_TTL);
        tracing::info!(jwks_uri = url.as_str(), keys = set.len(), cache_secs = ttl.as_secs(), "client key set fetched");
        let entry = Arc::new(Entry { set: set.clone(), forced_at: AtomicU64::new(forced_at) });
        self.sets.insert(url.as_str(), entry, now, now + ttl.as_secs().max(1));
        self.failures.remove(url.as_str());
        Ok(set)
    }

    /// Key sets cached now.
    pub fn cached(&self) -> usize {
        self.sets.len()
    }
}
