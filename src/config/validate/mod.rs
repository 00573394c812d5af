//! Validation: raw TOML types → the validated types of [`super`], each rule with the key it names.
//!
//! Defaults live here, beside the rule that bounds them (and in `proxy.toml`, which documents every key). No I/O:
//! environment overrides come through [`Env`] (the table in [`super::env`]) and file contents through [`Files`].
//! Invariants: `public_url` is an origin and the issuer verbatim ([`PublicUrl`]); plain HTTP is served on a
//! non-loopback address only behind a TLS terminator; IdP issuers are https except on loopback; every
//! `upstream.required_scopes` scope is one the proxy offers.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::env::{self, Env};
use super::files::Files;
use super::raw::*;
use super::*;

/// The whole config, section by section.
mod clients;
mod idp;
mod server;
mod store;
mod upstream;

use clients::*;
use idp::*;
use server::*;
use store::*;
use upstream::*;

pub(crate) fn config(raw: RawConfig, env: &Env<'_>, files: &Files) -> Result<Config, ConfigError> {
    let server = validate_server(raw.server)?;
    let public_host = Url::parse(server.public_url.as_str()).ok().and_then(|u| u.host_str().map(str::to_owned));
    let pages =
        super::pages::validate(raw.pages, public_host.as_deref().unwrap_or("this server"), files.logo.as_ref())?;
    let upstream = validate_upstream(raw.upstream)?;
    let idp = validate_idp(raw.idp, env)?;
    let upstream = validate_required_scopes(upstream, &idp.scopes)?;
    let tokens = validate_tokens(raw.tokens)?;
    let registration = validate_registration(raw.registration, env)?;
    let client_documents = validate_client_documents(raw.client_metadata_documents, files)?;
    let limits = validate_limits(raw.limits)?;
    let introspection = match raw.introspection {
        None => None,
        Some(i) => {
            if i.client_id.is_empty() {
                return Err(invalid("introspection.client_id", "must not be empty"));
            }
            let secret = env.get(env::INTROSPECTION_SECRET).or(i.client_secret).filter(|s| s.len() >= 16);
            let secret = secret.ok_or_else(|| {
                invalid(
                    "introspection.client_secret",
                    "is required (16 characters or more): set DCR_PROXY_INTROSPECTION_SECRET",
                )
            })?;
            Some(IntrospectionConfig { client_id: i.client_id, client_secret: SecretString::from(secret) })
        }
    };
    let mut store = validate_store(raw.store, env, files)?;
    if let Some(redis) = store.redis.as_mut() {
        redis.refresh_lock = refresh_lock(idp.timeout);
    }
    let policy = validate_policy(raw.policy, &idp.scopes)?;
    let metrics_listen = match raw.metrics.listen {
        None => None,
        Some(a) => Some(
            a.parse::<SocketAddr>()
                .map_err(|_| invalid("metrics.listen", format!("`{a}` is not an address like 127.0.0.1:9090")))?,
        ),
    };
    let log = LogConfig {
        format: raw.log.format.unwrap_or(LogFormat::Text),
        filter: raw.log.filter.unwrap_or_else(|| "info".to_owned()),
        queue: match raw.log.queue {
            Some(n) if !(1..=1_000_000).contains(&n) => return Err(invalid("log.queue", "must be 1 to 1000000")),
            n => n.unwrap_or(65_536),
        },
    };
    let admin = validate_admin(raw.admin, env)?;
    let audit = validate_audit(raw.audit)?;
    let routes = validate_routes(raw.routes, &upstream.resource_path)?;
    Ok(Config {
        server,
        upstream,
        idp,
        tokens,
        registration,
        client_documents,
        limits,
        introspection,
        store,
        metrics_listen,
        log,
        policy,
        pages,
        admin,
        audit,
        routes,
    })
}

pub(super) fn invalid_entry(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::InvalidEntry { key, message: message.into() }
}

/// A duration key: its default when absent, refused naming the key when the text is not a duration.
pub(super) fn duration(
    key: &'static str,
    value: Option<DurationText>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    value.map_or(Ok(default), |d| d.get().map_err(|message| invalid(key, message)))
}

/// Most threads `server.worker_threads` may ask for.
pub(crate) const MAX_WORKER_THREADS: usize = 1024;

pub(super) fn required(key: &'static str, value: Option<String>) -> Result<String, ConfigError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(invalid(key, "is required for this idp.kind")),
    }
}

/// A duration of at least one millisecond (a zero deadline would close every connection at once).
pub(super) fn positive(
    key: &'static str,
    value: Option<DurationText>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(key, value, default)?;
    if d < Duration::from_millis(1) {
        return Err(invalid(key, "must be at least 1ms"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn with_snapshot() -> String {
        DEFAULT_CONFIG.replace(
            "[store]",
            "[store]\nsnapshot_path = \"/nonexistent-dcrp/x.snapshot\"\nsnapshot_key_file = \"/nonexistent-dcrp/key\"",
        )
    }

    fn message(result: Result<Config, ConfigError>) -> String {
        match result {
            Err(ConfigError::Invalid { key, message }) => format!("{key}: {message}"),
            Err(other) => format!("other: {other}"),
            Ok(_) => "ok".to_owned(),
        }
    }

    #[test]
    fn the_snapshot_key_file_is_read_in_the_files_step_only() {
        let text = with_snapshot();
        let files = Files { snapshot_key: Some(Ok(format!("{HEX_KEY}\n"))), ..Files::default() };
        let config = Config::from_toml_with_files(&text, no_env, &files).map_err(|e| e.to_string());
        let key = config.map(|c| c.store.snapshot.map(|s| s.key.0[..2].to_vec()));
        assert_eq!(key, Ok(Some(vec![0x00, 0x11])));
        let files = Files { snapshot_key: Some(Err("permission denied".to_owned())), ..Files::default() };
        assert_eq!(
            message(Config::from_toml_with_files(&text, no_env, &files)),
            "store.snapshot_key_file: cannot read /nonexistent-dcrp/key: permission denied"
        );
        // From disk: the file is missing, and named.
        let err = message(Config::from_toml(&text, no_env));
        assert!(err.starts_with("store.snapshot_key_file: cannot read /nonexistent-dcrp/key: "), "{err}");
        // The variable wins, and the file is then not read at all.
        let env = |k: &str| (k == "DCR_PROXY_SNAPSHOT_KEY").then(|| HEX_KEY.to_owned());
        assert_eq!(message(Config::from_toml(&text, env)), "ok");
    }

    #[test]
    fn the_extra_ca_file_must_exist_as_the_files_step_says() {
        let text = DEFAULT_CONFIG.replace(
            "[client_metadata_documents]",
            "[client_metadata_documents]\nextra_ca_file = \"/nonexistent-dcrp/ca.pem\"",
        );
        let err = message(Config::from_toml(&text, no_env));
        assert_eq!(err, "client_metadata_documents.extra_ca_file: /nonexistent-dcrp/ca.pem is not a readable file");
        let files = Files { extra_ca_file_is_file: true, ..Files::default() };
        assert_eq!(message(Config::from_toml_with_files(&text, no_env, &files)), "ok");
    }

    #[test]
    fn each_idp_kind_gets_its_default_scopes_and_its_own_errors() {
        let local = Config::from_toml(DEFAULT_CONFIG, no_env).map(|c| c.idp.scopes).map_err(|e| e.to_string());
        assert_eq!(local, Ok(vec!["openid".to_owned(), "profile".to_owned(), "email".to_owned()]));
        let (idp, _) = DEFAULT_CONFIG.split_once("\n[[idp.users]]").unwrap_or_default();
        let (_, rest) = DEFAULT_CONFIG.split_once("\n[tokens]").unwrap_or_default();
        let idp = idp.replacen("kind = \"local\"", "kind = \"oidc\"\nissuer = \"https://id.example\"", 1);
        let oidc = format!("{idp}\nclient_id = \"proxy\"\n[tokens]{rest}");
        let c = Config::from_toml(&oidc, |k| (k == "OIDC_CLIENT_SECRET").then(|| "s".to_owned()));
        match c.map(|c| (c.idp.provider, c.idp.scopes.len())) {
            Ok((IdpProvider::Oidc { client_secret: Some(_), client_id, .. }, 4)) => assert_eq!(client_id, "proxy"),
            other => panic!("unexpected {:?}", other.map(|(_, n)| n)),
        }
        let http = oidc.replace("https://id.example", "http://id.example");
        assert_eq!(message(Config::from_toml(&http, no_env)), "idp.issuer: must be https (http only on loopback)");
        let saml = DEFAULT_CONFIG.replacen("kind = \"local\"", "kind = \"saml\"", 1);
        assert_eq!(
            message(Config::from_toml(&saml, no_env)),
            "idp.kind: `saml` is not one of \"azure\", \"oidc\", \"local\""
        );
        // Azure without its secrets: each message names the environment variable that provides it.
        let azure = format!("{idp}\n[tokens]{rest}").replacen(
            "kind = \"oidc\"\nissuer = \"https://id.example\"",
            "kind = \"azure\"",
            1,
        );
        for (missing, variable) in [
            ("AZURE_TENANT_ID", "AZURE_TENANT_ID"),
            ("AZURE_CLIENT_ID", "AZURE_CLIENT_ID"),
            ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_SECRET"),
        ] {
            let env = |k: &str| (k.starts_with("AZURE_") && k != missing).then(|| "x".to_owned());
            let err = message(Config::from_toml(&azure, env));
            assert!(err.contains(variable), "{missing}: {err}");
        }
        let foreign = DEFAULT_CONFIG.replacen("kind = \"local\"", "kind = \"local\"\ntenant = \"common\"", 1);
        let err = message(Config::from_toml(&foreign, no_env));
        assert!(err.contains("kind = \"local\": unknown field `tenant`, expected one of"), "{err}");
    }
}
