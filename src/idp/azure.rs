//! The Microsoft Entra ID (Azure AD) v2.0 preset.
//!
//! Endpoints under `<authority>/<tenant>/`: `oauth2/v2.0/authorize`, `oauth2/v2.0/token`,
//! `discovery/v2.0/keys`. The authority defaults to `https://login.microsoftonline.com` and is configurable so that
//! tests point it at a fake on 127.0.0.1.
//!
//! id_token issuer rule (AZURE.md §4): `<authority>/{tid}/v2.0` with the token's `tid` (a GUID) substituted; for a
//! GUID tenant, `tid` must equal it. Entra does not advertise PKCE methods in discovery but supports S256.

use secrecy::SecretString;
use url::Url;

use super::oidc::{is_guid, ClientAuth, Flavor, IssuerRule, OidcEndpoints, OidcProvider};
use super::IdpError;
use crate::config::IdpConfig;

/// Builds the Azure provider from its tenant; no network call is needed.
pub fn provider(
    authority: &Url,
    tenant: &str,
    client_id: &str,
    client_secret: SecretString,
    idp: &IdpConfig,
    callback: String,
) -> Result<OidcProvider, IdpError> {
    let base = authority.as_str().trim_end_matches('/');
    let url = |path: &str| {
        Url::parse(&format!("{base}/{tenant}/{path}"))
            .map_err(|e| IdpError::Discovery(format!("Azure endpoint for tenant `{tenant}`: {e}")))
    };
    let endpoints = OidcEndpoints {
        authorization_endpoint: url("oauth2/v2.0/authorize")?,
        token_endpoint: url("oauth2/v2.0/token")?,
        jwks_uri: Some(url("discovery/v2.0/keys")?),
    };
    let issuer = IssuerRule::AzureTemplate {
        prefix: format!("{base}/"),
        suffix: "/v2.0".to_owned(),
        tenant: is_guid(tenant).then(|| tenant.to_ascii_lowercase()),
        allowed: idp.allowed_tenants.clone(),
    };
    OidcProvider::new(
        Flavor::Azure,
        endpoints,
        issuer,
        client_id.to_owned(),
        Some(client_secret),
        ClientAuth::Post,
        idp,
        callback,
    )
}
