//! The TOML as written: serde types with `deny_unknown_fields`, so a misspelt key is refused by name.
//!
//! Nothing here judges a value beyond its TOML type; the rules live in [`super::validate`]. Two adapters:
//! - [`DurationText`]: every duration (`"10m"`, `"30d"`) is read through humantime when the TOML is parsed; text that
//!   is not a duration is kept with its message, so that validation refuses it naming the key.
//! - [`RawIdp`]: `[idp]` is an enum tagged by `kind`, each kind with only its own keys. An unknown kind is kept as
//!   [`RawIdp::Unknown`] so that the error names `idp.kind` (serde would only say "unknown variant").

use std::path::PathBuf;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::{ConfigError, LogFormat};

/// Parses config text into the raw types; a TOML or schema error (unknown key, wrong type) is [`ConfigError::Parse`].
pub(crate) fn parse(text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
}

/// A duration as written in the config, read with humantime; `Err` holds why the text is not one.
#[derive(Debug, Clone)]
pub(crate) struct DurationText(Result<Duration, String>);

impl DurationText {
    /// The duration, or the message that says why the text is not one.
    pub(crate) fn get(self) -> Result<Duration, String> {
        self.0
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(Self(
            humantime::parse_duration(&text)
                .map_err(|e| format!("`{text}` is not a duration like \"10m\" or \"30d\": {e}")),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) server: RawServer,
    pub(crate) upstream: RawUpstream,
    pub(crate) idp: RawIdp,
    #[serde(default)]
    pub(crate) tokens: RawTokens,
    #[serde(default)]
    pub(crate) registration: RawRegistration,
    #[serde(default)]
    pub(crate) client_metadata_documents: RawClientDocuments,
    #[serde(default)]
    pub(crate) limits: RawLimits,
    pub(crate) introspection: Option<RawIntrospection>,
    #[serde(default)]
    pub(crate) store: RawStore,
    #[serde(default)]
    pub(crate) metrics: RawMetrics,
    #[serde(default)]
    pub(crate) log: RawLog,
    #[serde(default)]
    pub(crate) policy: RawPolicy,
    #[serde(default)]
    pub(crate) pages: super::pages::RawPages,
    #[serde(default)]
    pub(crate) admin: RawAdmin,
    #[serde(default)]
    pub(crate) audit: RawAudit,
    #[serde(default)]
    pub(crate) routes: Vec<RawRoute>,
}

/// `[[routes]]`: one more protected resource (issue 16 §3).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) path_prefix: String,
    pub(crate) url: String,
    pub(crate) scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) listen: String,
    pub(crate) public_url: String,
    pub(crate) tls: Option<RawTls>,
    #[serde(default)]
    pub(crate) behind_tls_terminator: bool,
    pub(crate) shutdown_grace: Option<DurationText>,
    pub(crate) runtime: Option<String>,
    pub(crate) worker_threads: Option<usize>,
    #[serde(default = "default_fast_path")]
    pub(crate) fast_path: bool,
}

fn default_fast_path() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) reload_interval: Option<DurationText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) url: String,
    #[serde(default = "default_resource_path")]
    pub(crate) resource_path: String,
    pub(crate) connect_timeout: Option<DurationText>,
    pub(crate) response_timeout: Option<DurationText>,
    #[serde(default)]
    pub(crate) required_scopes: Vec<RawPathScopes>,
    pub(crate) pool_idle_timeout: Option<DurationText>,
    pub(crate) pool_max_idle: Option<usize>,
    pub(crate) drive_in_request_task: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPathScopes {
    pub(crate) path_prefix: String,
    pub(crate) scopes: Vec<String>,
}

fn default_resource_path() -> String {
    "/mcp".to_owned()
}

/// `[idp]`, by `kind`.
pub(crate) enum RawIdp {
    Azure(RawAzure),
    Oidc(RawOidc),
    Local(RawLocal),
    /// A `kind` that is none of the above, kept for an error that names `idp.kind`.
    Unknown(String),
}

/// The known kinds, as serde reads them.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum KnownIdp {
    Azure(RawAzure),
    Oidc(RawOidc),
    Local(RawLocal),
}

impl<'de> Deserialize<'de> for RawIdp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(deserializer)?;
        if let Some(kind) = table.get("kind").and_then(toml::Value::as_str) {
            if !matches!(kind, "azure" | "oidc" | "local") {
                return Ok(Self::Unknown(kind.to_owned()));
            }
        }
        let kind = table.get("kind").and_then(toml::Value::as_str).map(str::to_owned);
        let known = KnownIdp::deserialize(toml::Value::Table(table)).map_err(|e| match kind {
            // The table's own span is all that survives the detour: name the kind whose keys were meant.
            Some(kind) => D::Error::custom(format!("kind = \"{kind}\": {}", e.message())),
            None => D::Error::custom(e.message()),
        })?;
        Ok(match known {
            KnownIdp::Azure(a) => Self::Azure(a),
            KnownIdp::Oidc(o) => Self::Oidc(o),
            KnownIdp::Local(l) => Self::Local(l),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAzure {
    pub(crate) scopes: Option<Vec<String>>,
    pub(crate) timeout: Option<DurationText>,
    pub(crate) authority: Option<String>,
    pub(crate) tenant: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<String>,
    /// Issue 16 §2: client capabilities (`cp1`: CAE), sent as the `xms_cc` claims request.
    #[serde(default)]
    pub(crate) client_capabilities: Vec<String>,
    /// Issue 16 §2: longest claims challenge or claims request accepted, in bytes.
    pub(crate) max_claims_bytes: Option<usize>,
    /// Issue 25 §2: the tenants (ids) whose users may sign in.
    #[serde(default)]
    pub(crate) allowed_tenants: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOidc {
    pub(crate) scopes: Option<Vec<String>>,
    pub(crate) timeout: Option<DurationText>,
    pub(crate) issuer: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLocal {
    pub(crate) scopes: Option<Vec<String>>,
    pub(crate) timeout: Option<DurationText>,
    #[serde(default)]
    pub(crate) users: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUser {
    pub(crate) username: String,
    pub(crate) password_hash: String,
    pub(crate) email: Option<String>,
    pub(crate) name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTokens {
    pub(crate) access_ttl: Option<DurationText>,
    pub(crate) refresh_ttl: Option<DurationText>,
    pub(crate) code_ttl: Option<DurationText>,
    pub(crate) pending_ttl: Option<DurationText>,
    pub(crate) refresh_grace: Option<DurationText>,
    pub(crate) upstream_refresh_margin: Option<DurationText>,
    pub(crate) upstream_refresh_floor: Option<DurationText>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegistration {
    pub(crate) max_body_bytes: Option<usize>,
    pub(crate) max_clients: Option<usize>,
    pub(crate) unused_client_ttl: Option<DurationText>,
    pub(crate) initial_access_token: Option<String>,
    #[serde(default)]
    pub(crate) allowed_redirect_hosts: Vec<String>,
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    pub(crate) private_use_redirect_uris: Option<Vec<String>>,
    pub(crate) enabled: Option<bool>,
}

/// `[policy]`: per-tool authorization of MCP calls.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub(crate) max_body_bytes: Option<usize>,
    #[serde(default)]
    pub(crate) tools: Vec<RawToolRule>,
}

/// One `[[policy.tools]]` rule.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawToolRule {
    #[serde(rename = "match")]
    pub(crate) pattern: String,
    #[serde(default)]
    pub(crate) scopes: Vec<String>,
    #[serde(default)]
    pub(crate) groups: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClientDocuments {
    pub(crate) enabled: Option<bool>,
    #[serde(default)]
    pub(crate) allowed_hosts: Vec<String>,
    pub(crate) max_bytes: Option<usize>,
    pub(crate) timeout: Option<DurationText>,
    pub(crate) cache_ttl: Option<DurationText>,
    pub(crate) cache_entries: Option<usize>,
    pub(crate) max_concurrent_fetches: Option<usize>,
    pub(crate) extra_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) allow_loopback_for_testing: bool,
    pub(crate) failure_ttl: Option<DurationText>,
    pub(crate) jwks_refetch_interval: Option<DurationText>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) register_per_minute: Option<u32>,
    pub(crate) token_per_minute: Option<u32>,
    pub(crate) authorize_per_minute: Option<u32>,
    pub(crate) max_pending: Option<usize>,
    pub(crate) header_timeout: Option<DurationText>,
    pub(crate) max_state_bytes: Option<usize>,
    pub(crate) password_checks: Option<usize>,
    pub(crate) password_check_wait: Option<DurationText>,
    pub(crate) login_failures: Option<u32>,
    pub(crate) login_lockout: Option<DurationText>,
    pub(crate) idle_timeout: Option<DurationText>,
    pub(crate) body_timeout: Option<DurationText>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_source: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub(crate) listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub(crate) snapshot_path: Option<PathBuf>,
    pub(crate) snapshot_interval: Option<DurationText>,
    pub(crate) snapshot_key_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) start_empty_on_bad_snapshot: bool,
    pub(crate) backend: Option<String>,
    pub(crate) redis_url: Option<String>,
    pub(crate) redis_cache_ttl: Option<DurationText>,
    pub(crate) redis_cache_entries: Option<usize>,
    #[serde(default)]
    pub(crate) redis_cluster: bool,
    pub(crate) redis_ca_file: Option<PathBuf>,
    pub(crate) redis_client_cert_file: Option<PathBuf>,
    pub(crate) redis_client_key_file: Option<PathBuf>,
    pub(crate) redis_stats_interval: Option<DurationText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIntrospection {
    pub(crate) client_id: String,
    pub(crate) client_secret: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub(crate) format: Option<LogFormat>,
    pub(crate) filter: Option<String>,
    pub(crate) queue: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idp(body: &str) -> Result<RawIdp, String> {
        #[derive(Deserialize)]
        struct Doc {
            idp: RawIdp,
        }
        toml::from_str::<Doc>(&format!("[idp]\n{body}")).map(|d| d.idp).map_err(|e| e.to_string())
    }

    #[test]
    fn idp_kind_selects_the_variant_and_only_its_keys() {
        assert!(
            matches!(idp("kind = \"azure\"\ntenant = \"t\""), Ok(RawIdp::Azure(a)) if a.tenant.as_deref() == Some("t"))
        );
        assert!(matches!(idp("kind = \"oidc\"\nissuer = \"https://i\""), Ok(RawIdp::Oidc(_))));
        assert!(matches!(idp("kind = \"local\""), Ok(RawIdp::Local(l)) if l.users.is_empty()));
        assert!(matches!(idp("kind = \"saml\"\nanything = 1"), Ok(RawIdp::Unknown(k)) if k == "saml"));
        // A key of another kind is refused by name, as a misspelt one is.
        let err = idp("kind = \"local\"\ntenant = \"t\"").err().unwrap_or_default();
        assert!(err.contains("unknown field `tenant`"), "{err}");
        let err = idp("tenant = \"t\"").err().unwrap_or_default();
        assert!(err.contains("kind"), "{err}");
    }

    #[test]
    fn durations_are_read_when_parsed_and_bad_text_is_kept_for_validation() {
        #[derive(Deserialize)]
        struct Doc {
            d: DurationText,
        }
        let read = |text: &str| toml::from_str::<Doc>(&format!("d = \"{text}\"")).map(|d| d.d.get());
        assert_eq!(read("90s").ok(), Some(Ok(Duration::from_secs(90))));
        assert_eq!(read("1h 30m").ok(), Some(Ok(Duration::from_secs(5400))));
        let bad = read("soon").ok().and_then(Result::err).unwrap_or_default();
        assert!(bad.starts_with("`soon` is not a duration like \"10m\""), "{bad}");
        assert!(toml::from_str::<Doc>("d = 10").is_err(), "a number is not a duration");
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub(crate) path: Option<String>,
    pub(crate) queue: Option<usize>,
}
