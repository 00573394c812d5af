//! `[registration]`, `[client_documents]` and `[tokens]`: which clients may come, and what they are issued.

use super::*;

pub(super) fn validate_registration(raw: RawRegistration, env: &Env<'_>) -> Result<RegistrationConfig, ConfigError> {
    let initial_access_token = env.get(env::INITIAL_ACCESS_TOKEN).or(raw.initial_access_token);
    if initial_access_token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(invalid("registration.initial_access_token", "must be at least 16 characters"));
    }
    if let Some(bad) = raw.allowed_redirect_hosts.iter().find(|h| h.is_empty() || h.contains(['/', ':', ' '])) {
        return Err(invalid(
            "registration.allowed_redirect_hosts",
            format!("`{bad}` is not a host name such as \"claude.ai\" (or \"loopback\")"),
        ));
    }
    let hosts: Vec<String> = raw.allowed_redirect_hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect();
    let private_use = raw
        .private_use_redirect_uris
        .unwrap_or_else(|| DEFAULT_PRIVATE_USE_REDIRECTS.iter().map(|s| (*s).to_owned()).collect());
    for uri in &private_use {
        crate::redirect_uri::validate_private_use(uri)
            .map_err(|e| invalid("registration.private_use_redirect_uris", e))?;
    }
    let mut redirect_allowlist = crate::redirect_uri::Allowlist { hosts, prefixes: vec![], private_use };
    for name in &raw.allow {
        let preset = crate::redirect_uri::preset(name).ok_or_else(|| {
            invalid(
                "registration.allow",
                format!(
                    "`{name}` is not a preset; use \"claude\", \"chatgpt\", \"cursor\", \"vscode\" or \"loopback\""
                ),
            )
        })?;
        redirect_allowlist.hosts.extend(preset.hosts);
        redirect_allowlist.prefixes.extend(preset.prefixes);
    }
    let max_clients = raw.max_clients.unwrap_or(10_000);
    if max_clients == 0 {
        return Err(invalid("registration.max_clients", "must be at least 1"));
    }
    Ok(RegistrationConfig {
        max_body_bytes: raw.max_body_bytes.unwrap_or(16 * 1024),
        max_clients,
        unused_client_ttl: duration(
            "registration.unused_client_ttl",
            raw.unused_client_ttl,
            Duration::from_secs(24 * 3600),
        )?,
        initial_access_token: initial_access_token.map(SecretString::from),
        redirect_allowlist,
        enabled: raw.enabled.unwrap_or(true),
    })
}

pub(super) fn validate_client_documents(
    raw: RawClientDocuments,
    files: &Files,
) -> Result<ClientDocumentsConfig, ConfigError> {
    const HOSTS: &str = "client_metadata_documents.allowed_hosts";
    let mut allowed_hosts = Vec::with_capacity(raw.allowed_hosts.len());
    for host in raw.allowed_hosts {
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        if bare.is_empty() || bare.contains(['/', ':', ' ', '*', '@']) {
            return Err(invalid(
                HOSTS,
                format!("`{host}` is not a host name such as \"claude.ai\" or \"*.example.com\""),
            ));
        }
        allowed_hosts.push(host.to_ascii_lowercase());
    }
    let max_bytes = raw.max_bytes.unwrap_or(5 * 1024);
    if !(256..=64 * 1024).contains(&max_bytes) {
        return Err(invalid("client_metadata_documents.max_bytes", "must be between 256 and 65536"));
    }
    let timeout = duration("client_metadata_documents.timeout", raw.timeout, Duration::from_secs(5))?;
    if timeout.is_zero() || timeout > Duration::from_secs(30) {
        return Err(invalid("client_metadata_documents.timeout", "must be more than 0 and at most 30s"));
    }
    let cache_entries = raw.cache_entries.unwrap_or(1024);
    if cache_entries == 0 {
        return Err(invalid("client_metadata_documents.cache_entries", "must be at least 1"));
    }
    let max_concurrent_fetches = raw.max_concurrent_fetches.unwrap_or(16);
    if max_concurrent_fetches == 0 {
        return Err(invalid("client_metadata_documents.max_concurrent_fetches", "must be at least 1"));
    }
    const FAILURE_TTL: &str = "client_metadata_documents.failure_ttl";
    let failure_ttl = duration(FAILURE_TTL, raw.failure_ttl, Duration::from_secs(30))?;
    if failure_ttl < Duration::from_secs(1) || failure_ttl > Duration::from_secs(600) {
        return Err(invalid(FAILURE_TTL, "must be between 1s and 10m"));
    }
    const REFETCH: &str = "client_metadata_documents.jwks_refetch_interval";
    let jwks_refetch_interval = duration(REFETCH, raw.jwks_refetch_interval, Duration::from_secs(10))?;
    if jwks_refetch_interval < Duration::from_secs(1) || jwks_refetch_interval > Duration::from_secs(600) {
        return Err(invalid(REFETCH, "must be between 1s and 10m"));
    }
    if let Some(path) = &raw.extra_ca_file {
        if !files.extra_ca_file_is_file {
            return Err(invalid(
                "client_metadata_documents.extra_ca_file",
                format!("{} is not a readable file", path.display()),
            ));
        }
    }
    Ok(ClientDocumentsConfig {
        enabled: raw.enabled.unwrap_or(true),
        allowed_hosts,
        max_bytes,
        timeout,
        cache_ttl: duration("client_metadata_documents.cache_ttl", raw.cache_ttl, Duration::from_secs(600))?,
        cache_entries,
        max_concurrent_fetches,
        extra_ca_file: raw.extra_ca_file,
        allow_loopback_for_testing: raw.allow_loopback_for_testing,
        failure_ttl,
        jwks_refetch_interval,
    })
}

pub(super) fn validate_tokens(raw: RawTokens) -> Result<TokenConfig, ConfigError> {
    let t = TokenConfig {
        access_ttl: duration("tokens.access_ttl", raw.access_ttl, Duration::from_secs(3600))?,
        refresh_ttl: duration("tokens.refresh_ttl", raw.refresh_ttl, Duration::from_secs(30 * 86400))?,
        code_ttl: duration("tokens.code_ttl", raw.code_ttl, Duration::from_secs(600))?,
        pending_ttl: duration("tokens.pending_ttl", raw.pending_ttl, Duration::from_secs(600))?,
        refresh_grace: duration("tokens.refresh_grace", raw.refresh_grace, Duration::from_secs(10))?,
        upstream_refresh_margin: duration(
            "tokens.upstream_refresh_margin",
            raw.upstream_refresh_margin,
            Duration::from_secs(120),
        )?,
        upstream_refresh_floor: duration(
            "tokens.upstream_refresh_floor",
            raw.upstream_refresh_floor,
            Duration::from_secs(30),
        )?,
    };
    if t.access_ttl.as_secs() == 0 {
        return Err(invalid("tokens.access_ttl", "must be at least one second"));
    }
    if t.code_ttl.as_secs() == 0 || t.code_ttl > Duration::from_secs(600) {
        return Err(invalid("tokens.code_ttl", "must be between 1s and 10m (RFC 6749 §4.1.2)"));
    }
    if t.upstream_refresh_floor.as_secs() == 0 || t.upstream_refresh_floor > Duration::from_secs(3600) {
        return Err(invalid("tokens.upstream_refresh_floor", "must be between 1s and 1h"));
    }
    Ok(t)
}
