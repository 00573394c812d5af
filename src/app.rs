//! The application state shared by every request: a cheap handle (`Arc<App>`) to the config, the store, the
//! clock, the IdP and the forwarder. Built once, before the listener accepts anything.

use std::sync::Arc;

use crate::client_documents::{ClientDocuments, Network};
use crate::clock::Clock;
use crate::config::Config;
use crate::idp::{Idp, IdpError};
use crate::oauth::metadata::{self, Metadata};
use crate::proxy::Forwarder;
use crate::rate_limit::RateLimiter;
use crate::store::{MemoryStore, Store, StoreError};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Idp(#[from] IdpError),
    #[error("upstream client: {0}")]
    Upstream(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    ClientDocuments(String),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditOpenError),
    #[error("{0} (set store.start_empty_on_bad_snapshot = true to start with an empty store instead)")]
    Snapshot(#[from] crate::store::snapshot::SnapshotError),
    #[error("store.redis_url: {0}")]
    Redis(#[from] StoreError),
}

/// Everything a request handler needs.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub clock: Clock,
    pub idp: Arc<Idp>,
    pub forwarder: Forwarder,
    pub metadata: Metadata,
    /// The RFC 9728 metadata URL used in `WWW-Authenticate`.
    pub resource_metadata: String,
    /// `resource_metadata="…", scope="…"`, the parameters of every `WWW-Authenticate: Bearer` challenge.
    pub challenge: String,
    /// Values accepted for RFC 8707 `resource`: the resource URL (with and without a trailing slash) and the
    /// public origin.
    pub resources: Vec<String>,
    /// The values of [`App::resources`] that name the main upstream (not a `[[routes]]` entry): what a code or
    /// refresh token bound to no resource may be redeemed for.
    pub default_resources: Vec<String>,
    pub rate_limiter: RateLimiter,
    pub metrics: crate::metrics::Metrics,
    /// Client ID Metadata Documents (URL client_ids).
    pub client_documents: ClientDocuments,
    /// The per-process keys that seal sign-ins in flight and sign the browser-binding cookie.
    pub sign_ins: crate::oauth::flow::SignIns,
    /// Whether `/register` accepts registrations; the admin API switches it at run time (not persisted: a
    /// restart opens registration again).
    pub registration_open: std::sync::atomic::AtomicBool,
    /// How the store was loaded, for `/readyz` (set by [`App::new_on`]; unset: built empty by a caller).
    pub store_origin: std::sync::OnceLock<&'static str>,
    /// The `/readyz` upstream probe.
    pub upstream_probe: crate::readiness::UpstreamProbe,
    /// The audit trail (off unless `[audit] path` is set).
    pub audit: Arc<crate::audit::Audit>,
    /// `[[routes]]`: their resources, metadata, challenges and upstream pools (issue 16 §3).
    pub upstream_routes: Vec<crate::proxy::upstream_routes::UpstreamRoute>,
}

impl App {
    /// Writes an audit entry ([`crate::audit`]), with the client's name from the store (memory or Redis) when the
    /// entry has none. A store that cannot answer leaves the name out: the entry is written all the same.
    pub async fn audit(&self, mut entry: crate::audit::Entry) {
        if entry.client_name.is_none() {
            if let Some(id) = entry.client_id.as_deref() {
                let client = self.store.client(id).await.ok().flatten();
                entry.client_name = client.and_then(|c| c.client_name.clone());
            }
        }
        self.audit.emit(&entry);
    }

    /// Whether `/register` accepts registrations now.
    pub fn registration_is_open(&self) -> bool {
        self.registration_open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The RFC 8414 document as served now: without `registration_endpoint` while registration is off.
    pub fn authorization_server_metadata(&self) -> bytes::Bytes {
        if self.registration_is_open() {
            self.metadata.authorization_server.clone()
        } else {
            self.metadata.authorization_server_closed.clone()
        }
    }

    /// What the proxy policy ([`crate::proxy::handle`]) and bearer lookups need of the application.
    pub fn proxy_context(&self) -> crate::proxy::Context<'_> {
        crate::proxy::Context {
            store: &self.store,
            clock: &self.clock,
            idp: &self.idp,
            metrics: &self.metrics,
            forwarder: &self.forwarder,
            challenge: &self.challenge,
            resource_metadata: &self.resource_metadata,
            required_scopes: &self.config.upstream.required_scopes,
            offered_scopes: &self.config.idp.scopes,
            protected_resource_path: &self.metadata.protected_resource_path,
            refresh: crate::proxy::bearer::RefreshMargin {
                margin: self.config.tokens.upstream_refresh_margin.as_secs(),
                floor: self.config.tokens.upstream_refresh_floor.as_secs(),
            },
            tool_rules: &self.config.policy.rules,
            policy_max_body: self.config.policy.max_body_bytes,
            resource_path: &self.config.upstream.resource_path,
            upstream_routes: &self.upstream_routes,
            sign_ins: &self.sign_ins,
        }
    }

    /// Builds the state: loads the snapshot (when configured) and discovers an `oidc` IdP.
    pub async fn new(config: Config, clock: Clock) -> Result<Arc<Self>, StartError> {
        Self::new_on(config, clock, None).await
    }

    /// [`App::new`] with the network the metadata-document fetcher uses (tests inject a resolver and a
    /// recording transport); `None`: the system resolver and reqwest.
    pub async fn new_on(config: Config, clock: Clock, network: Option<Network>) -> Result<Arc<Self>, StartError> {
        if let Some(redis) = &config.store.redis {
            let store =
                crate::store::redis::RedisStore::connect(redis, clock.clone(), config.registration.unused_client_ttl)
                    .await?;
            tracing::info!(url = %redis.url.redacted(), "shared store on Redis");
            let idp = Idp::from_config(&config).await?;
            return Self::with_state(config, clock, idp, Store::Redis(store), network);
        }
        let mut origin = "empty: no snapshot configured";
        let store = match &config.store.snapshot {
            None => MemoryStore::new(),
            Some(s) => {
                match crate::store::snapshot::load_rotating(&s.path, &s.key, s.previous_key.as_ref(), clock.now()) {
                    Ok(store) => {
                        let stats = store.stats();
                        tracing::info!(path = %s.path.display(), clients = stats.clients, grants = stats.grants, "snapshot loaded");
                        origin = "loaded from the snapshot";
                        store
                    }
                    Err(e) if s.start_empty_on_error => {
                        tracing::warn!(error = %e, "snapshot unreadable; starting with an empty store as configured");
                        origin = "empty: the snapshot was unreadable (store.start_empty_on_bad_snapshot)";
                        MemoryStore::new()
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let idp = Idp::from_config(&config).await?;
        let app = Self::with_parts(config, clock, idp, store, network)?;
        let _ = app.store_origin.set(origin);
        Ok(app)
    }

    /// Builds the state around an existing IdP, with an empty store.
    pub fn with_idp(config: Config, clock: Clock, idp: Arc<Idp>) -> Result<Arc<Self>, StartError> {
        Self::with_parts(config, clock, idp, MemoryStore::new(), None)
    }

    /// Builds the state around an existing IdP and store.
    pub fn with_parts(
        config: Config,
        clock: Clock,
        idp: Arc<Idp>,
        store: MemoryStore,
        network: Option<Network>,
    ) -> Result<Arc<Self>, StartError> {
        store.set_sign_in_capacity(config.limits.max_pending);
        Self::with_state(config, clock, idp, Store::Memory(Arc::new(store)), network)
    }

    /// Builds the state around an existing IdP and store of either backend.
    pub fn with_state(
        config: Config,
        clock: Clock,
        idp: Arc<Idp>,
        store: Store,
        network: Option<Network>,
    ) -> Result<Arc<Self>, StartError> {
        let forwarder = Forwarder::new(&config.upstream, config.is_https())?;
        let network = match network {
            Some(n) => n,
            None => Network::system(&config.client_documents).map_err(StartError::ClientDocuments)?,
        };
        if config.client_documents.enabled && config.client_documents.allow_loopback_for_testing {
            tracing::warn!(
                "client_metadata_documents.allow_loopback_for_testing is set: documents may be fetched from \
                 loopback addresses; never use this in production"
            );
        }
        let resource = config.resource_url();
        let resources = vec![
            resource.clone(),
            format!("{resource}/"),
            config.server.public_url.to_string(),
            format!("{}/", config.server.public_url),
        ];
        let routes = crate::proxy::upstream_routes::UpstreamRoute::build_all(&config)?;
        let default_resources = resources.clone();
        let resources =
            resources.into_iter().chain(crate::proxy::upstream_routes::accepted_resources(&routes)).collect();
        let mut metrics = crate::metrics::Metrics::new();
        if let Idp::Local(users) = &*idp {
            let (running, peak) = users.gauges();
            metrics.add_password_checks(running, peak);
        }
        let audit = match &config.audit {
            Some(a) => Arc::new(crate::audit::Audit::start(&a.sink, a.queue)?),
            None => Arc::new(crate::audit::Audit::off()),
        };
        let sign_ins = match &config.store.redis {
            Some(redis) => crate::oauth::flow::SignIns::from_key(&redis.key.0, config.is_https()),
            None => crate::oauth::flow::SignIns::new(config.is_https()),
        };
        Ok(Arc::new(Self {
            sign_ins,
            registration_open: std::sync::atomic::AtomicBool::new(config.registration.enabled),
            store_origin: std::sync::OnceLock::new(),
            upstream_probe: crate::readiness::UpstreamProbe::default(),
            audit,
            metadata: Metadata::build(&config),
            resource_metadata: metadata::resource_metadata_url(&config),
            challenge: format!(
                "resource_metadata=\"{}\", scope=\"{}\"",
                metadata::resource_metadata_url(&config),
                metadata::challenge_scopes(&config.idp.scopes).join(" ")
            ),
            resources,
            default_resources,
            upstream_routes: routes,
            rate_limiter: RateLimiter::new(&config.limits),
            metrics,
            client_documents: ClientDocuments::new(config.client_documents.clone(), network),
            store,
            clock,
            idp,
            forwarder,
            config,
        }))
    }
}
