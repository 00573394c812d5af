//! Upstream identity providers: where the user really logs in.
//!
//! - [`oidc`]: any OpenID Connect provider, endpoints by discovery; also the engine behind the Azure preset.
//! - [`azure`]: Microsoft Entra ID v2.0 endpoints computed from the tenant (see `shared/AZURE.md`): the client's
//!   `resource` is never forwarded (AADSTS9010010), scopes come from config, the newest refresh token is kept,
//!   Graph access tokens are treated as opaque (only the id_token is validated), `error` is branched on, never the
//!   AADSTS text, which is kept for the operator's log.
//! - [`entra_error`]: Entra's refusals sorted into families (grant ended, interaction required, admin consent,
//!   unavailable, other), each with its effect (issue 16 §1).
//! - [`local`]: a built-in login page with argon2-hashed users from the config, for development.
//!
//! Toward the IdP the proxy is one confidential client with its own `state` and its own PKCE (S256).

pub mod azure;
pub mod entra_error;
pub mod local;
pub mod oidc;

use std::sync::Arc;

use crate::clock::UnixTime;
use crate::config::{Config, IdpProvider};
use crate::store::{UpstreamLogin, UpstreamTokens};

/// An IdP call that failed.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// The IdP answered with an OAuth error.
    #[error("identity provider refused the request: {error} (HTTP {status}{})", aadsts.map(|c| format!(", AADSTS{c}")).unwrap_or_default())]
    /// `suberror` and `claims` as Entra sends them (the claims JSON is size-capped when read).
    Refused { status: u16, error: String, aadsts: Option<u64>, suberror: Option<String>, claims: Option<String> },
    /// Network failure, timeout or an unusable answer worth trying again.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
    /// The IdP answered 429 or 5xx; `retry_after`: its `Retry-After` in seconds, if it sent one.
    #[error("identity provider busy: HTTP {status}")]
    Busy { status: u16, retry_after: Option<u64> },
    /// The IdP's answer broke the protocol (bad JSON, an id_token that does not validate).
    #[error("identity provider answer rejected: {0}")]
    Protocol(String),
    /// The IdP could not be set up at start (discovery failed).
    #[error("identity provider discovery failed: {0}")]
    Discovery(String),
    /// The person's organisation is not one whose users may sign in (`idp.tenant`, `idp.allowed_tenants`).
    #[error("tenant `{tid}` is not allowed to sign in")]
    TenantNotAllowed { tid: String },
}

impl IdpError {
    /// What the refusal means ([`entra_error::classify`]).
    pub fn family(&self) -> entra_error::ErrorFamily {
        match self {
            Self::Refused { status, error, aadsts, suberror, .. } => {
                entra_error::classify(*status, error, *aadsts, suberror.as_deref())
            }
            Self::Unavailable(_) | Self::Busy { .. } => entra_error::ErrorFamily::Unavailable,
            Self::Protocol(_) | Self::Discovery(_) | Self::TenantNotAllowed { .. } => entra_error::ErrorFamily::Other,
        }
    }

    /// Whether the upstream grant is dead for good (expired, revoked, or usable only after the person signs in
    /// again), so that the proxy's grant must end too.
    pub fn ends_grant(&self) -> bool {
        self.family().ends_grant()
    }

    /// Whether trying again at once may help (network, 5xx without `Retry-After`); a 429 or `Retry-After` is
    /// honoured instead of retried.
    pub fn retry_now(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Busy { retry_after: None, status: 500..=599 })
    }
}

/// The configured identity provider.
pub enum Idp {
    Oidc(Box<oidc::OidcProvider>),
    Local(local::LocalUsers),
}

impl Idp {
    /// Builds the provider; an `oidc` provider runs discovery now, so a wrong issuer stops the start.
    pub async fn from_config(config: &Config) -> Result<Arc<Self>, IdpError> {
        let callback = config.callback_url();
        let idp = match &config.idp.provider {
            IdpProvider::Azure { authority, tenant, client_id, client_secret } => Self::Oidc(Box::new(
                azure::provider(authority, tenant, client_id, client_secret.clone(), &config.idp, callback)?,
            )),
            IdpProvider::Oidc { issuer, client_id, client_secret } => Self::Oidc(Box::new(
                oidc::OidcProvider::discover(issuer, client_id, client_secret.clone(), &config.idp, callback).await?,
            )),
            IdpProvider::Local { users } => Self::Local(local::LocalUsers::with_limits(users, &config.limits)),
        };
        Ok(Arc::new(idp))
    }

    /// The app registration (client id) the proxy signs in as and the scopes it asks for; none for the local login.
    pub fn app_registration(&self) -> Option<(&str, &str)> {
        match self {
            Self::Oidc(p) => Some(p.app_registration()),
            Self::Local(_) => None,
        }
    }

    /// `idp.max_claims_bytes` for a provider that takes claims requests; 0 (no claims challenge is answered) for
    /// the local login.
    pub fn max_claims_bytes(&self) -> usize {
        match self {
            Self::Oidc(p) => p.max_claims_bytes(),
            Self::Local(_) => 0,
        }
    }

    /// The one log line an operator needs when Entra says consent is missing (AADSTS65001, 90094): which app
    /// registration and which scopes an administrator must grant consent for. No token is logged.
    pub fn warn_admin_consent(&self, e: &IdpError, client_id: &str) {
        let (app, scopes) = self.app_registration().unwrap_or(("", ""));
        let aadsts = match e {
            IdpError::Refused { aadsts, .. } => *aadsts,
            _ => None,
        };
        tracing::warn!(
            client_id,
            app_registration = app,
            scopes,
            aadsts,
            "Entra ID: admin consent is missing; an administrator must grant consent to the app registration for \
             these scopes (Entra admin center > App registrations > API permissions > Grant admin consent)"
        );
    }

    /// Refreshes upstream tokens with the current upstream refresh token. The local login has none, and a grant
    /// without a refresh token cannot be refreshed: both are `invalid_grant`, which ends the grant.
    pub async fn refresh(&self, refresh_token: Option<String>, now: UnixTime) -> Result<UpstreamTokens, IdpError> {
        self.refresh_with_claims(refresh_token, now, None).await
    }

    /// A refresh_token grant for a `[[routes]]` entry's `scopes` (issue 16 §3); refused like [`Idp::refresh`]
    /// without a refresh token or for the local login.
    pub async fn refresh_for_scopes(
        &self,
        refresh_token: Option<String>,
        now: UnixTime,
        scopes: &str,
    ) -> Result<UpstreamTokens, IdpError> {
        match (self, refresh_token) {
            (Self::Oidc(p), Some(rt)) => p.refresh_for_scopes(&rt, now, scopes).await,
            (_, rt) => self.refresh_with_claims(rt, now, None).await,
        }
    }

    /// [`Idp::refresh`] asking for `claims` (JSON) too: an upstream's claims challenge (issue 16 §2).
    pub async fn refresh_with_claims(
        &self,
        refresh_token: Option<String>,
        now: UnixTime,
        claims: Option<&str>,
    ) -> Result<UpstreamTokens, IdpError> {
        match (self, refresh_token) {
            (Self::Oidc(p), Some(rt)) => p.refresh(&rt, now, claims).await,
            (Self::Oidc(_), None) | (Self::Local(_), _) => Err(IdpError::Refused {
                status: 400,
                error: "invalid_grant".into(),
                aadsts: None,
                suberror: None,
                claims: None,
            }),
        }
    }
}

/// The result of a completed upstream login, before the proxy's code is minted.
pub type LoginResult = Result<UpstreamLogin, IdpError>;
