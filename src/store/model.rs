//! The records kept by the store. Names follow the OAuth roles they play.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use http::HeaderValue;
use secrecy::{ExposeSecret as _, SecretString};

use crate::clock::UnixTime;
use crate::crypto::TokenHash;

/// How a client authenticates at the token endpoint (RFC 7591 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    None,
    ClientSecretBasic,
    ClientSecretPost,
}

impl ClientAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "client_secret_basic" => Some(Self::ClientSecretBasic),
            "client_secret_post" => Some(Self::ClientSecretPost),
            _ => None,
        }
    }
}

/// A dynamically registered client (RFC 7591).
#[derive(Debug)]
pub struct Client {
    pub client_id: String,
    /// SHA-256 of the client secret, for confidential clients.
    pub secret_hash: Option<TokenHash>,
    pub auth_method: ClientAuthMethod,
    pub redirect_uris: Vec<String>,
    pub client_name: Option<String>,
    pub scope: Option<String>,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    pub issued_at: UnixTime,
    /// When the client first redeemed an authorization code (0: never); unused clients expire.
    pub first_authorized_at: AtomicU64,
    /// SHA-256 of the RFC 7592 registration access token.
    pub registration_token: Option<TokenHash>,
}

impl Client {
    /// A public client (`none`) with the authorization-code and refresh grants, as most MCP clients register.
    pub fn public(client_id: impl Into<String>, redirect_uris: Vec<String>, now: UnixTime) -> Self {
        Self {
            client_id: client_id.into(),
            secret_hash: None,
            auth_method: ClientAuthMethod::None,
            redirect_uris,
            client_name: None,
            scope: None,
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            response_types: vec!["code".into()],
            issued_at: now,
            first_authorized_at: Default::default(),
            registration_token: None,
        }
    }

    /// Records that the client completed an authorization.
    pub fn mark_authorized(&self, now: UnixTime) {
        let _ = self.first_authorized_at.compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn was_authorized(&self) -> bool {
        self.first_authorized_at.load(Ordering::Relaxed) != 0
    }
}

/// Who the user is, from the IdP's id_token or the local login.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// Entra tenant id (`tid`), when the IdP is Azure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
}

/// Tokens the IdP issued to the proxy for one user.
///
/// The access token is kept once, inside the ready-made `Authorization` value (`Bearer <token>`, marked
/// sensitive), which the hot path clones (a reference count) into every forwarded request.
pub struct UpstreamTokens {
    refresh_token: Option<SecretString>,
    bearer: HeaderValue,
    pub expires_at: UnixTime,
    pub scope: Option<String>,
}

impl std::fmt::Debug for UpstreamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTokens")
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

const BEARER_PREFIX: &str = "Bearer ";

/// An upstream access token that cannot be sent as an HTTP header value.
#[derive(Debug, thiserror::Error)]
#[error("the IdP's access token contains characters not allowed in an HTTP header")]
pub struct InvalidUpstreamToken;

impl UpstreamTokens {
    pub fn new(
        access_token: String,
        refresh_token: Option<String>,
        expires_at: UnixTime,
        scope: Option<String>,
    ) -> Result<Self, InvalidUpstreamToken> {
        let mut bearer =
            HeaderValue::try_from(format!("{BEARER_PREFIX}{access_token}")).map_err(|_| InvalidUpstreamToken)?;
        bearer.set_sensitive(true);
        // A header value may hold obs-text bytes that are not UTF-8; `access_token()` needs a str.
        if bearer.to_str().is_err() {
            return Err(InvalidUpstreamToken);
        }
        Ok(Self { refresh_token: refresh_token.map(SecretString::from), bearer, expires_at, scope })
    }

    pub fn access_token(&self) -> &str {
        self.bearer.to_str().map(|v| v.strip_prefix(BEARER_PREFIX).unwrap_or(v)).unwrap_or("")
    }

    pub fn refresh_token(&self) -> Option<&str> {
        self.refresh_token.as_ref().map(|s| s.expose_secret())
    }

    pub fn bearer(&self) -> &HeaderValue {
        &self.bearer
    }
}

/// What the user's login produced: IdP tokens, or nothing for the local login.
#[derive(Debug)]
pub enum UpstreamCredential {
    Tokens(UpstreamTokens),
    Local,
}

/// The result of a login, carried by the authorization code until it is redeemed.
#[derive(Debug)]
pub struct UpstreamLogin {
    pub credential: UpstreamCredential,
    pub identity: Identity,
}

/// The proxy's authorization code (RFC 6749 §4.1.2), keyed by its hash.
#[derive(Debug)]
pub struct AuthorizationCode {
    pub client_id: String,
    pub redirect_uri: String,
    pub redirect_uri_explicit: bool,
    pub code_challenge: String,
    pub scope: Vec<String>,
    pub resource: Option<String>,
    pub expires_at: UnixTime,
    pub login: UpstreamLogin,
}

/// A code already redeemed, and the grant it created.
#[derive(Debug, Clone, Copy)]
pub struct SpentCode {
    pub grant: GrantId,
    pub expires_at: UnixTime,
}

/// Identifies a grant; random, never shown to anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrantId(pub u128);

impl GrantId {
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        crate::crypto::fill_random(&mut b);
        Self(u128::from_le_bytes(b))
    }
}

/// One user's authorization of one client: the upstream credential and every token issued under it.
#[derive(Debug)]
pub struct Grant {
    pub id: GrantId,
    pub client_id: String,
    /// Granted scopes, space-separated (one allocation instead of one per scope).
    pub scope: Box<str>,
    pub resource: Option<String>,
    pub identity: Identity,
    pub created_at: UnixTime,
    upstream: RwLock<UpstreamCredential>,
    /// Serialises upstream refreshes of this grant (single flight).
    pub refresh_lock: tokio::sync::Mutex<()>,
    revoked: AtomicBool,
    /// When an upstream 401 last forced a refresh (0: never); at most one such refresh per 30 seconds.
    pub forced_refresh_at: AtomicU64,
    /// Expiry of the newest refresh token; the grant is swept after it.
    expires_at: AtomicU64,
}

impl Grant {
    pub fn new(
        client_id: String,
        scope: Vec<String>,
        resource: Option<String>,
        login: UpstreamLogin,
        created_at: UnixTime,
    ) -> Arc<Self> {
        Self::restore(GrantId::random(), client_id, scope.join(" "), resource, login, created_at, created_at)
    }

    /// Rebuilds a grant read from a snapshot.
    pub fn restore(
        id: GrantId,
        client_id: String,
        scope: String,
        resource: Option<String>,
        login: UpstreamLogin,
        created_at: UnixTime,
        expires_at: UnixTime,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            client_id,
            scope: scope.into_boxed_str(),
            resource,
            identity: login.identity,
            created_at,
            upstream: RwLock::new(login.credential),
            refresh_lock: tokio::sync::Mutex::new(()),
            revoked: AtomicBool::new(false),
            forced_refresh_at: AtomicU64::new(0),
            expires_at: AtomicU64::new(expires_at),
        })
    }

    /// Read access to the upstream credential. Never hold it across an `.await`.
    pub fn upstream(&self) -> RwLockReadGuard<'_, UpstreamCredential> {
        self.upstream.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn upstream_mut(&self) -> RwLockWriteGuard<'_, UpstreamCredential> {
        self.upstream.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    pub fn expires_at(&self) -> UnixTime {
        self.expires_at.load(Ordering::Relaxed)
    }

    /// Extends the grant's life to cover a newly issued refresh token.
    pub fn extend_to(&self, t: UnixTime) {
        self.expires_at.fetch_max(t, Ordering::Relaxed);
    }
}

/// An access token record, keyed by the token's hash.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub grant: Arc<Grant>,
    pub expires_at: UnixTime,
}

/// A refresh token record, keyed by the token's hash.
#[derive(Debug, Clone)]
pub struct RefreshToken {
    pub grant: Arc<Grant>,
    pub expires_at: UnixTime,
    /// Set when the token was used; a later use is a replay.
    pub rotated: Option<Box<Rotation>>,
}

/// The successor of a rotated refresh token, sealed under a key derived from the rotated token itself, so that a
/// replay within the grace window can be answered with the same pair and nobody else can read it.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub at: UnixTime,
    pub sealed_successor: Vec<u8>,
}
