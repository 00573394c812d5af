//! Prometheus metrics, served on their own listen address (`[metrics] listen`), never on the public port.
//!
//! - `dcr_proxy_requests_total{route,status}` and `dcr_proxy_request_duration_seconds{route}` (time to the
//!   response head; streamed bodies continue after it);
//! - `dcr_proxy_clients`, `dcr_proxy_grants` (gauges, read at scrape time);
//! - `dcr_proxy_upstream_refreshes_total{result}` (`ok`, `refused` — the grant ended —, `failed` — transient);
//! - `dcr_proxy_idp_errors_total{kind}` by [`crate::idp::entra_error::ErrorFamily::label`]: `grant_ended`,
//!   `interaction_required`, `admin_consent`, `unavailable` (throttled, 5xx, network), `other` (incl. protocol);
//! - `dcr_proxy_client_document_fetches_total{result}`: client metadata document fetches (cache hits are not
//!   fetches) by [`crate::client_documents::DocumentError::kind`], or `ok`.
//!
//! - `dcr_proxy_password_checks_running`, `dcr_proxy_password_checks_peak` (local login only): argon2
//!   computations running now, and the most ever at once — never above `limits.password_checks`.
//!
//! Endpoint labels are a fixed set of names, so cardinality stays bounded whatever paths clients send.
//! The hot path's label set (`route="proxy"`, `status="200"`) is resolved once at start: a proxied request
//! updates its counter and histogram without a label lookup (issue 13).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::idp::IdpError;
use crate::store::Store;

/// The route label of forwarded requests ([`crate::endpoint::Endpoint::name`]).
const PROXY_ROUTE: &str = "proxy";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The proxy's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabel, Histogram>,
    clients: Gauge,
    grants: Gauge,
    refreshes: Family<ResultLabel, Counter>,
    idp_errors: Family<KindLabel, Counter>,
    document_fetches: Family<ResultLabel, Counter>,
    /// `request_body_limits_total{limit}`, behind the callback every request body carries (built once).
    body_limits: crate::http::timed_body::LimitCounter,
    /// `requests{route="proxy",status="200"}` and `request_duration_seconds{route="proxy"}`, resolved once.
    proxied_ok: Counter,
    proxied_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dcr_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0001, 2.0, 18))) as fn() -> Histogram,
        );
        let clients = Gauge::default();
        let grants = Gauge::default();
        let refreshes = Family::<ResultLabel, Counter>::default();
        let idp_errors = Family::<KindLabel, Counter>::default();
        let document_fetches = Family::<ResultLabel, Counter>::default();
        let body_limit_family = Family::<LimitLabel, Counter>::default();
        registry.register(
            "request_body_limits",
            "Request bodies cut, by the limit that fired (idle, rate, deadline)",
            body_limit_family.clone(),
        );
        let body_limits: crate::http::timed_body::LimitCounter = std::sync::Arc::new(move |limit| {
            body_limit_family.get_or_create(&LimitLabel { limit: limit.as_str() }).inc();
        });
        registry.register("requests", "Requests by route and status", requests.clone());
        registry.register("request_duration_seconds", "Time to the response head, by route", latency.clone());
        registry.register("clients", "Registered clients", clients.clone());
        registry.register("grants", "Active grants", grants.clone());
        registry.register("upstream_refreshes", "Upstream token refreshes by result", refreshes.clone());
        registry.register("idp_errors", "Errors from the identity provider by kind", idp_errors.clone());
        registry.register(
            "client_document_fetches",
            "Client metadata document fetches by result",
            document_fetches.clone(),
        );
        let proxied_ok = requests.get_or_create(&RequestLabels { route: PROXY_ROUTE, status: 200 }).clone();
        let proxied_latency = latency.get_or_create(&RouteLabel { route: PROXY_ROUTE }).clone();
        Self {
            registry,
            requests,
            latency,
            clients,
            grants,
            refreshes,
            idp_errors,
            document_fetches,
            body_limits,
            proxied_ok,
            proxied_latency,
        }
    }

    pub fn request(&self, route: &'static str, status: u16, seconds: f64) {
        if route == PROXY_ROUTE {
            self.proxied_latency.observe(seconds);
            if status == 200 {
                self.proxied_ok.inc();
            } else {
                self.requests.get_or_create(&RequestLabels { route, status }).inc();
            }
            return;
        }
        self.requests.get_or_create(&RequestLabels { route, status }).inc();
        self.latency.get_or_create(&RouteLabel { route }).observe(seconds);
    }

    pub fn upstream_refresh(&self, result: &'static str) {
        self.refreshes.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn idp_error(&self, e: &IdpError) {
        let kind = e.family().label();
        self.idp_errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// The callback that counts request-body limits ([`crate::http::timed_body`]).
    pub fn body_limits(&self) -> crate::http::timed_body::LimitCounter {
        self.body_limits.clone()
    }

    pub fn document_fetch(&self, result: &'static str) {
        self.document_fetches.get_or_create(&ResultLabel { result }).inc();
    }

    /// Registers the local login's password-check gauges ([`crate::idp::local::LocalUsers::gauges`]).
    pub fn add_password_checks(&mut self, running: Gauge, peak: Gauge) {
        self.registry.register("password_checks_running", "Password hashes being computed now", running);
        self.registry.register("password_checks_peak", "Most password hashes ever computed at once", peak);
    }

    /// The text exposition, with the gauges read from the store now.
    pub fn render(&self, store: &Store) -> String {
        let stats = store.stats();
        self.clients.set(i64::try_from(stats.clients).unwrap_or(i64::MAX));
        self.grants.set(i64::try_from(stats.grants).unwrap_or(i64::MAX));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxied_requests_count_under_the_same_labels_as_every_other_route() {
        let m = Metrics::new();
        m.request("proxy", 200, 0.001);
        m.request("proxy", 200, 0.001);
        m.request("proxy", 502, 0.001);
        m.request("token", 200, 0.001);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap_or_default();
        assert!(text.contains("dcr_proxy_requests_total{route=\"proxy\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("dcr_proxy_requests_total{route=\"proxy\",status=\"502\"} 1"), "{text}");
        assert!(text.contains("dcr_proxy_requests_total{route=\"token\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("dcr_proxy_request_duration_seconds_count{route=\"proxy\"} 3"), "{text}");
    }
}
