//! `[idp]`: the identity provider (Azure preset, OIDC discovery, local login) and its timeouts.

use super::*;

pub(super) fn validate_idp(raw: RawIdp, env: &Env<'_>) -> Result<IdpConfig, ConfigError> {
    let mut client_capabilities = Vec::new();
    let mut allowed_tenants = Vec::new();
    let mut max_claims_bytes = DEFAULT_MAX_CLAIMS_BYTES;
    let (provider, scopes, timeout) = match raw {
        RawIdp::Azure(raw) => {
            let timeout = idp_timeout(raw.timeout)?;
            if let Some(bad) = raw
                .client_capabilities
                .iter()
                .find(|c| c.is_empty() || c.len() > 32 || !c.chars().all(|ch| ch.is_ascii_alphanumeric()))
            {
                return Err(invalid("idp.client_capabilities", format!("`{bad}` is not a capability such as \"cp1\"")));
            }
            client_capabilities = raw.client_capabilities;
            max_claims_bytes = raw.max_claims_bytes.unwrap_or(DEFAULT_MAX_CLAIMS_BYTES);
            if !(256..=65536).contains(&max_claims_bytes) {
                return Err(invalid("idp.max_claims_bytes", "must be between 256 and 65536"));
            }
            let authority_text = raw.authority.unwrap_or_else(|| "https://login.microsoftonline.com".to_owned());
            let authority = Url::parse(&authority_text)
                .map_err(|e| invalid("idp.authority", format!("`{authority_text}` is not a URL: {e}")))?;
            if authority.scheme() != "https" && !(authority.scheme() == "http" && is_loopback_host(&authority)) {
                return Err(invalid("idp.authority", "must be https (http only on loopback, for tests)"));
            }
            // Every missing id is named in one run, not one per run (issue 26 item 5).
            let present = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
            let tenant = present(env.get(env::AZURE_TENANT_ID).or(raw.tenant));
            let client_id = present(env.get(env::AZURE_CLIENT_ID).or(raw.client_id));
            let client_secret = present(env.get(env::AZURE_CLIENT_SECRET).or(raw.client_secret));
            let (Some(tenant), Some(client_id), Some(client_secret)) = (&tenant, &client_id, &client_secret) else {
                return Err(azure_missing(tenant.is_none(), client_id.is_none(), client_secret.is_none()));
            };
            let (tenant, client_id, client_secret) = (tenant.clone(), client_id.clone(), client_secret.clone());
            if !tenant.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
                return Err(invalid("idp.tenant", "must be a tenant id, domain, `common` or `organizations`"));
            }
            allowed_tenants = azure_allowed_tenants(raw.allowed_tenants, &tenant)?;
            let provider =
                IdpProvider::Azure { authority, tenant, client_id, client_secret: SecretString::from(client_secret) };
            let default = ["openid", "profile", "email", "offline_access", "User.Read"];
            (provider, raw.scopes.unwrap_or_else(|| default.map(str::to_owned).to_vec()), timeout)
        }
        RawIdp::Oidc(raw) => {
            let timeout = idp_timeout(raw.timeout)?;
            let issuer_text = required("idp.issuer", raw.issuer)?;
            let issuer = Url::parse(&issuer_text)
                .map_err(|e| invalid("idp.issuer", format!("`{issuer_text}` is not a URL: {e}")))?;
            if issuer.scheme() != "https" && !(issuer.scheme() == "http" && is_loopback_host(&issuer)) {
                return Err(invalid("idp.issuer", "must be https (http only on loopback)"));
            }
            let client_id = required("idp.client_id", raw.client_id)?;
            let client_secret = env.get(env::OIDC_CLIENT_SECRET).or(raw.client_secret).map(SecretString::from);
            let provider = IdpProvider::Oidc { issuer, client_id, client_secret };
            let default = ["openid", "profile", "email", "offline_access"];
            (provider, raw.scopes.unwrap_or_else(|| default.map(str::to_owned).to_vec()), timeout)
        }
        RawIdp::Local(raw) => {
            let timeout = idp_timeout(raw.timeout)?;
            if raw.users.is_empty() {
                return Err(invalid("idp.users", "local login needs at least one [[idp.users]] entry"));
            }
            let mut users = Vec::with_capacity(raw.users.len());
            for u in raw.users {
                if u.username.is_empty() {
                    return Err(invalid("idp.users.username", "must not be empty"));
                }
                if argon2::PasswordHash::new(&u.password_hash).is_err() {
                    return Err(invalid(
                        "idp.users.password_hash",
                        format!("user `{}`: not a PHC hash; create one with `dcr-proxy hash-password`", u.username),
                    ));
                }
                users.push(LocalUser {
                    username: u.username,
                    password_hash: u.password_hash,
                    email: u.email,
                    name: u.name,
                });
            }
            let default = ["openid", "profile", "email"];
            (IdpProvider::Local { users }, raw.scopes.unwrap_or_else(|| default.map(str::to_owned).to_vec()), timeout)
        }
        RawIdp::Unknown(kind) => {
            return Err(invalid("idp.kind", format!("`{kind}` is not one of \"azure\", \"oidc\", \"local\"")));
        }
    };
    if scopes.is_empty() {
        return Err(invalid("idp.scopes", "must name at least one scope"));
    }
    if let Some(bad) = scopes.iter().find(|s| s.is_empty() || !s.chars().all(is_scope_char)) {
        return Err(invalid("idp.scopes", format!("`{bad}` is not a valid scope token (RFC 6749 §3.3)")));
    }
    Ok(IdpConfig { provider, scopes, timeout, client_capabilities, max_claims_bytes, allowed_tenants })
}

/// `idp.allowed_tenants`: tenant ids (GUIDs), lower-cased; with a tenant id as `idp.tenant`, only that one (the
/// list cannot widen a single-tenant app, and a list without it would let nobody in).
pub(super) fn azure_allowed_tenants(raw: Vec<String>, tenant: &str) -> Result<Vec<String>, ConfigError> {
    const KEY: &str = "idp.allowed_tenants";
    let mut allowed = Vec::with_capacity(raw.len());
    for t in raw {
        if !super::is_guid(&t) {
            return Err(invalid(
                KEY,
                format!("`{t}` is not a tenant id (a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47)"),
            ));
        }
        allowed.push(t.to_ascii_lowercase());
    }
    if super::is_guid(tenant) && allowed.iter().any(|t| !t.eq_ignore_ascii_case(tenant)) {
        return Err(invalid(KEY, format!("idp.tenant `{tenant}` is one tenant: list only it, or use `organizations`")));
    }
    Ok(allowed)
}

/// `idp.max_claims_bytes` by default.
pub(super) const DEFAULT_MAX_CLAIMS_BYTES: usize = 4096;

pub(super) fn idp_timeout(value: Option<DurationText>) -> Result<Duration, ConfigError> {
    duration("idp.timeout", value, Duration::from_secs(10))
}

/// The IdP-refresh lock's lifetime across replicas: the bearer path's refresh makes at most three IdP calls of
/// `idp_timeout` each with 0.1 s and 0.4 s pauses between them; one more second of margin.
pub(super) fn refresh_lock(idp_timeout: Duration) -> Duration {
    idp_timeout.saturating_mul(3) + Duration::from_millis(1_500)
}

/// The Azure preset's missing ids, all of them in one error: the first missing key, and every variable to set.
fn azure_missing(tenant: bool, client_id: bool, client_secret: bool) -> ConfigError {
    let all = [
        (tenant, "idp.tenant", "AZURE_TENANT_ID"),
        (client_id, "idp.client_id", "AZURE_CLIENT_ID"),
        (client_secret, "idp.client_secret", "AZURE_CLIENT_SECRET"),
    ];
    let missing: Vec<_> = all.iter().filter(|(m, _, _)| *m).collect();
    let keys: Vec<&str> = missing.iter().map(|(_, k, _)| *k).collect();
    let vars: Vec<&str> = missing.iter().map(|(_, _, v)| *v).collect();
    let first = keys.first().copied().unwrap_or("idp.tenant");
    let also = match keys.len() {
        0 | 1 => String::new(),
        _ => format!(" (and {})", keys[1..].join(", ")),
    };
    invalid(first, format!("is required{also}: set {} in the environment, or the key in proxy.toml", vars.join(", ")))
}
