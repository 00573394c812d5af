//! The records kept by the store. Names follow the OAuth roles they play.
//!
//! Refresh tokens (RFC 6749 §6, RFC 9700 §4.14) are kept per *family* — one per grant — in constant memory
//! whatever the number of refreshes: a token reads `<base64url(family id ‖ generation)>.<base64url(random)>`
//! (opaque to the client); the store keeps, under the SHA-256 of the 128-bit secret family id, the generation and
//! hash of the current token and the hash of the one just rotated (with its sealed successor, for the grace
//! window). Every older generation is spent, so presenting one is a reuse ([`RefreshFamily::classify`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use http::HeaderValue;
use secrecy::{ExposeSecret as _, SecretString};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::clock::UnixTime;
use crate::crypto::{self, TokenHash};

/// How a client authenticates at the token endpoint (RFC 7591 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    None,
    ClientSecretBasic,
    ClientSecretPost,
    /// A JWT signed with the client's private key (RFC 7523 §2.2); the keys are [`Client::keys`].
    PrivateKeyJwt,
}

impl ClientAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::PrivateKeyJwt => "private_key_jwt",
        }
    }

    /// Every method, in the order they are advertised.
    pub const ALL: [Self; 4] = [Self::None, Self::ClientSecretBasic, Self::ClientSecretPost, Self::PrivateKeyJwt];

    /// Whether the client proves who it is with a shared secret.
    pub fn uses_secret(self) -> bool {
        matches!(self, Self::ClientSecretBasic | Self::ClientSecretPost)
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "client_secret_basic" => Some(Self::ClientSecretBasic),
            "client_secret_post" => Some(Self::ClientSecretPost),
            "private_key_jwt" => Some(Self::PrivateKeyJwt),
            _ => None,
        }
    }
}

/// A grant type of the token endpoint (RFC 6749 §4, RFC 7591 §2 `grant_types`): declared once here, so that
/// `/token`, registration, metadata documents and the AS metadata list and accept the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
}

impl GrantType {
    /// Every grant type, in the order they are advertised (`grant_types_supported`) and registered by default.
    pub const ALL: [Self; 2] = [Self::AuthorizationCode, Self::RefreshToken];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }

    /// The names of [`GrantType::ALL`].
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|g| g.as_str()).collect()
    }

    /// The request parameter that carries what this grant presents (a code, a refresh token).
    pub fn presented_param(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "code",
            Self::RefreshToken => "refresh_token",
        }
    }
}

/// Where a `private_key_jwt` client's public keys are (RFC 7591 §2 `jwks` / `jwks_uri`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKeys {
    /// The key set itself, registered or in the metadata document.
    Inline(Arc<crate::jwk::KeySet>),
    /// An https URL the set is fetched from (with the metadata-document fetcher's guard), cached.
    Uri(String),
}

/// A dynamically registered client (RFC 7591).
#[derive(Debug)]
pub struct Client {
    pub client_id: String,
    /// SHA-256 of the client secret, for confidential clients.
    pub secret_hash: Option<TokenHash>,
    pub auth_method: ClientAuthMethod,
    /// The public keys of a `private_key_jwt` client (`None` for every other method).
    pub keys: Option<ClientKeys>,
    /// RFC 7591 `token_endpoint_auth_signing_alg`: the only algorithm its assertions may use, when set.
    pub signing_alg: Option<jsonwebtoken::Algorithm>,
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
    /// When a sign-in last started for the client (its consent page was shown; 0: never). A client whose sign-in
    /// is in progress is not evicted to make room for a new registration. Not snapshotted.
    pub sign_in_started_at: AtomicU64,
}

impl Client {
    /// Whether the client registered `grant` (`grant_types`).
    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.iter().any(|g| g == grant.as_str())
    }

    /// A public client (`none`) with the authorization-code and refresh grants, as most MCP clients register.
    pub fn public(client_id: impl Into<String>, redirect_uris: Vec<String>, now: UnixTime) -> Self {
        Self {
            client_id: client_id.into(),
            secret_hash: None,
            auth_method: ClientAuthMethod::None,
            keys: None,
            signing_alg: None,
            redirect_uris,
            client_name: None,
            scope: None,
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            response_types: vec!["code".into()],
            issued_at: now,
            first_authorized_at: Default::default(),
            registration_token: None,
            sign_in_started_at: Default::default(),
        }
    }

    /// Records that a sign-in started for the client.
    pub fn mark_sign_in(&self, now: UnixTime) {
        self.sign_in_started_at.fetch_max(now, Ordering::Relaxed);
    }

    /// Whether a sign-in started for the client within `ttl_secs` before `now` (it may still be in progress).
    pub fn signing_in(&self, now: UnixTime, ttl_secs: u64) -> bool {
        let at = self.sign_in_started_at.load(Ordering::Relaxed);
        at != 0 && at + ttl_secs > now
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
    /// The id_token's `groups` claim (Entra: group object ids), for `[[policy.tools]] groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The id_token's `roles` claim (Entra app roles), for `[[policy.tools]] groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The id_token named a `groups` overage source (`_claim_names.groups`) instead of the list: too many groups
    /// for a token. Group rules then refuse, naming the fix (app roles).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub groups_overage: bool,
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
    /// Set when the upstream answered 401 to this token: it is refreshed before it is sent again.
    rejected: AtomicBool,
}

impl std::fmt::Debug for UpstreamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTokens")
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("rejected", &self.is_rejected())
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
        access_token: impl AsRef<str>,
        refresh_token: Option<String>,
        expires_at: UnixTime,
        scope: Option<String>,
    ) -> Result<Self, InvalidUpstreamToken> {
        // One allocation and one copy of the token (a snapshot load makes a million of these).
        let access_token = access_token.as_ref().as_bytes();
        let mut value = Vec::with_capacity(BEARER_PREFIX.len() + access_token.len());
        value.extend_from_slice(BEARER_PREFIX.as_bytes());
        value.extend_from_slice(access_token);
        let mut bearer = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).map_err(|_| InvalidUpstreamToken)?;
        bearer.set_sensitive(true);
        // A header value may hold obs-text bytes that are not UTF-8; `access_token()` needs a str.
        if bearer.to_str().is_err() {
            return Err(InvalidUpstreamToken);
        }
        Ok(Self {
            refresh_token: refresh_token.map(SecretString::from),
            bearer,
            expires_at,
            scope,
            rejected: AtomicBool::new(false),
        })
    }

    /// Whether the upstream refused this token (401); a new token starts unrejected.
    pub fn is_rejected(&self) -> bool {
        self.rejected.load(Ordering::Relaxed)
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

/// A validated authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3, RFC 8707 §2): what the client asked for.
/// It travels unchanged through consent and the IdP (`oauth::flow::PendingAuthorization`) into the code
/// ([`AuthorizationCode`]), which `/token` checks against it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthorizationRequest {
    pub client_id: String,
    pub redirect_uri: String,
    /// Whether the client sent `redirect_uri` (then `/token` must repeat it, RFC 6749 §4.1.3).
    pub redirect_uri_explicit: bool,
    /// The client's `state`, returned in the redirect; not kept with the code.
    pub state: Option<String>,
    pub code_challenge: String,
    pub scope: Vec<String>,
    pub resource: Option<String>,
}

/// The proxy's authorization code (RFC 6749 §4.1.2), keyed by its hash.
#[derive(Debug)]
pub struct AuthorizationCode {
    /// The request the code answers (its `state` is `None`: it went back in the redirect).
    pub request: AuthorizationRequest,
    pub expires_at: UnixTime,
    pub login: UpstreamLogin,
}

/// A code already redeemed, and the grant it created.
#[derive(Debug, Clone, Copy)]
pub struct SpentCode {
    pub grant: GrantId,
    pub expires_at: UnixTime,
}

/// Identifies a grant; random, shown only to the operator (admin API, as 32 hex digits), never a credential.
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
    /// Granted scopes, space-separated (one allocation, shared with the access tokens that carry all of them).
    pub scope: Arc<str>,
    pub resource: Option<String>,
    pub identity: Identity,
    pub created_at: UnixTime,
    upstream: RwLock<UpstreamCredential>,
    /// Serialises upstream refreshes of this grant (single flight).
    pub refresh_lock: tokio::sync::Mutex<()>,
    revoked: AtomicBool,
    /// When the proxy last refreshed the IdP token (0: never since the login); see `tokens.upstream_refresh_floor`.
    pub upstream_refreshed_at: AtomicU64,
    /// When the current IdP token was obtained (login or refresh), for its lifetime.
    pub upstream_obtained_at: AtomicU64,
    /// Expiry of the newest refresh token; the grant is swept after it.
    expires_at: AtomicU64,
    /// When the grant last refreshed to answer an upstream claims challenge (0: never); at most one such refresh per
    /// `tokens.upstream_refresh_floor` (issue 16 §2). Not persisted: a restart allows one more.
    pub claims_refreshed_at: AtomicU64,
    /// The IdP access tokens of `[[routes]]`, by route prefix (issue 16 §3), each obtained with the grant's refresh
    /// token, with when it was obtained. Not persisted: a restart obtains them again. Never hold the lock across
    /// an `.await`.
    pub route_tokens: std::sync::Mutex<std::collections::HashMap<String, (UnixTime, Arc<UpstreamTokens>)>>,
    /// The grant's data key in the shared store (`store::wrap`): set when the grant starts or is read through one
    /// of its proxy tokens; unset with the memory backend and for grants imported into Redis from a snapshot.
    pub data_key: std::sync::OnceLock<super::wrap::DataKey>,
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
            scope: Arc::from(scope),
            resource,
            identity: login.identity,
            created_at,
            upstream: RwLock::new(login.credential),
            refresh_lock: tokio::sync::Mutex::new(()),
            revoked: AtomicBool::new(false),
            upstream_refreshed_at: AtomicU64::new(0),
            upstream_obtained_at: AtomicU64::new(created_at),
            expires_at: AtomicU64::new(expires_at),
            claims_refreshed_at: AtomicU64::new(0),
            route_tokens: std::sync::Mutex::new(std::collections::HashMap::new()),
            data_key: std::sync::OnceLock::new(),
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

    /// Marks the grant's IdP token as refused by the upstream, if `sent` is still the current one: the next request
    /// refreshes it first, whatever its expiry.
    pub fn mark_upstream_rejected(&self, sent: &HeaderValue) {
        if let UpstreamCredential::Tokens(t) = &*self.upstream() {
            if t.bearer() == sent {
                t.rejected.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Marks a `[[routes]]` token the route's upstream answered 401 to, so that it is obtained again before it is
    /// sent again (issue 16 §3).
    pub fn mark_route_rejected(&self, prefix: &str, sent: &HeaderValue) {
        let tokens = self.route_tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, t)) = tokens.get(prefix).filter(|(_, t)| t.bearer() == sent) {
            t.rejected.store(true, Ordering::Relaxed);
        }
    }

    /// Replaces the IdP tokens after a refresh at `now`.
    pub fn set_refreshed_upstream(&self, tokens: UpstreamTokens, now: UnixTime) {
        *self.upstream_mut() = UpstreamCredential::Tokens(tokens);
        self.upstream_obtained_at.store(now, Ordering::Relaxed);
        self.upstream_refreshed_at.store(now.max(1), Ordering::Relaxed);
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
    /// The scope this token carries: the grant's, or fewer when a refresh asked for less (RFC 6749 §6).
    pub scope: Arc<str>,
}

impl AccessToken {
    /// A token carrying all of its grant's scope.
    pub fn new(grant: Arc<Grant>, expires_at: UnixTime) -> Self {
        let scope = grant.scope.clone();
        Self { grant, expires_at, scope }
    }
}

/// The secret that ties the refresh tokens of one grant together (128-bit random, never stored in clear).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FamilyId([u8; 16]);

impl std::fmt::Debug for FamilyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FamilyId(<secret>)")
    }
}

impl FamilyId {
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        crypto::fill_random(&mut b);
        Self(b)
    }

    /// The key of the family in the store.
    pub fn hash(&self) -> TokenHash {
        TokenHash(crypto::sha256(&self.0))
    }
}

/// What the store can read in a refresh token: its family and generation. The random part is only hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshTokenName {
    pub family: FamilyId,
    pub generation: u32,
}

impl RefreshTokenName {
    /// Mints a token of this family and generation: `<base64url(family ‖ generation BE)>.<256-bit random>`.
    pub fn mint(&self) -> String {
        let mut name = [0u8; 20];
        name[..16].copy_from_slice(&self.family.0);
        name[16..].copy_from_slice(&self.generation.to_be_bytes());
        format!("{}.{}", URL_SAFE_NO_PAD.encode(name), crypto::random_token())
    }

    /// Reads the family and generation of a presented token; `None` for anything this proxy did not mint.
    pub fn parse(token: &str) -> Option<Self> {
        let (name, random) = token.split_once('.')?;
        if name.len() != 27 || random.len() != 43 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(name).ok()?;
        let family: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
        let generation: [u8; 4] = bytes.get(16..20)?.try_into().ok()?;
        Some(Self { family: FamilyId(family), generation: u32::from_be_bytes(generation) })
    }
}

/// The refresh-token state of one grant, keyed by [`FamilyId::hash`]: constant size whatever the number of
/// refreshes.
#[derive(Debug, Clone)]
pub struct RefreshFamily {
    pub grant: Arc<Grant>,
    /// Generation of the current token; every older generation is spent.
    pub generation: u32,
    /// Hash of the current token.
    pub current: TokenHash,
    /// Expiry of the current token (`tokens.refresh_ttl` after it was issued).
    pub expires_at: UnixTime,
    /// The token of `generation - 1`, for the grace window.
    pub rotated: Option<Box<Rotation>>,
}

/// The token just rotated: its hash and its successor, sealed under a key derived from the rotated token itself,
/// so that a replay within the grace window can be answered with the same pair and nobody else can read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub hash: TokenHash,
    pub at: UnixTime,
    pub sealed_successor: Vec<u8>,
}

/// What a presented token of a known family is.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// The current token: it may be rotated.
    Current,
    /// The token rotated last (generation − 1, hash verified): a replay within the grace window, or a reuse.
    Rotated(&'a Rotation),
    /// A spent generation: the family leaked, the grant must be revoked.
    Reused,
    /// Not a token this family issued (a future generation, or a wrong random part where the store can check
    /// it): refused, and nothing is revoked.
    Unknown,
}

impl RefreshFamily {
    /// Classifies a presented token of this family (`hash`: SHA-256 of the whole token).
    ///
    /// Generations older than the one rotated last cannot be checked beyond their family id — the store keeps no
    /// hash of them, which is what keeps it constant in size — and count as a reuse. The family id is 128-bit
    /// random and appears only inside this family's tokens, so only a holder of one of them (the client, or a
    /// thief of a token) can present it; either way revoking is what RFC 9700 §4.14 asks.
    pub fn classify(&self, generation: u32, hash: &TokenHash) -> Presented<'_> {
        if generation >= self.generation {
            return if generation == self.generation && *hash == self.current {
                Presented::Current
            } else {
                Presented::Unknown
            };
        }
        match &self.rotated {
            Some(r) if generation + 1 == self.generation && r.hash == *hash => Presented::Rotated(r),
            Some(_) if generation + 1 == self.generation => Presented::Unknown,
            _ => Presented::Reused,
        }
    }

    /// Makes `next` (of generation + 1) current and keeps the token it replaces for the grace window.
    pub fn rotate(&mut self, next: TokenHash, expires_at: UnixTime, rotation: Rotation) {
        self.generation += 1;
        self.current = next;
        self.expires_at = expires_at;
        self.rotated = Some(Box::new(rotation));
    }
}

/// What a redemption ([`super::Backend::redeem_code`]) found under a code's hash.
#[derive(Debug)]
pub enum CodeRedemption {
    /// A live code, now taken out of the store: nobody else can redeem it.
    Taken(Box<AuthorizationCode>),
    /// A code already redeemed: the grant it started.
    Spent(GrantId),
    /// Nothing: never issued, or expired and swept.
    Unknown,
}

/// Counts of live entries, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    pub clients: usize,
    /// Sign-in tickets remembered as used.
    pub used_sign_ins: usize,
    pub codes: usize,
    pub grants: usize,
    pub access_tokens: usize,
    /// Refresh tokens the store recognises by hash: each family's current token and the one it just rotated.
    pub refresh_tokens: usize,
    pub refresh_families: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(generation: u32) -> RefreshFamily {
        let login = UpstreamLogin { credential: UpstreamCredential::Local, identity: Identity::default() };
        RefreshFamily {
            grant: Grant::new("c".into(), vec![], None, login, 0),
            generation,
            current: TokenHash::of("current"),
            expires_at: 100,
            rotated: Some(Box::new(Rotation { hash: TokenHash::of("rotated"), at: 0, sealed_successor: vec![] })),
        }
    }

    #[test]
    fn refresh_token_names_round_trip_and_foreign_tokens_do_not_parse() {
        let name = RefreshTokenName { family: FamilyId::random(), generation: 7 };
        let token = name.mint();
        assert_eq!(RefreshTokenName::parse(&token), Some(name));
        assert_ne!(name.mint(), token, "the random part differs each time");
        assert_eq!(RefreshTokenName::parse(&crypto::random_token()), None);
        assert_eq!(RefreshTokenName::parse(&format!("{token}x")), None);
        assert_eq!(RefreshTokenName::parse("a.b"), None);
        let (head, _) = token.split_once('.').unwrap_or_default();
        assert_eq!(RefreshTokenName::parse(&format!("{head}.{}", "!".repeat(43))).map(|n| n.generation), Some(7));
    }

    #[test]
    fn classify_current_rotated_reused_and_unknown() {
        let f = family(5);
        assert_eq!(f.classify(5, &TokenHash::of("current")), Presented::Current);
        assert_eq!(f.classify(5, &TokenHash::of("forged")), Presented::Unknown, "bad random part");
        assert_eq!(f.classify(6, &TokenHash::of("current")), Presented::Unknown, "future generation");
        assert_eq!(f.classify(u32::MAX, &TokenHash::of("x")), Presented::Unknown);
        assert!(matches!(f.classify(4, &TokenHash::of("rotated")), Presented::Rotated(_)));
        assert_eq!(f.classify(4, &TokenHash::of("forged")), Presented::Unknown, "checked: bad random part");
        assert_eq!(f.classify(3, &TokenHash::of("anything")), Presented::Reused);
        assert_eq!(f.classify(0, &TokenHash::of("anything")), Presented::Reused);
        let fresh = RefreshFamily { rotated: None, ..family(0) };
        assert_eq!(fresh.classify(0, &TokenHash::of("current")), Presented::Current);
    }
}

/// What a client's next sign-in must ask of Entra, because Entra refused the client's grant until the person
/// interacts (MFA, Conditional Access, a claims challenge; issue 16). Kept per client until used or expired.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InteractionRequirement {
    /// The AADSTS code Entra gave, for the words shown to the person.
    #[serde(default)]
    pub aadsts: Option<u64>,
    /// The OIDC `claims` request (JSON) Entra asked for, if any; size-capped when read.
    #[serde(default)]
    pub claims: Option<String>,
    /// Entra's `login_hint`, when known to belong to whoever signs in next (the refresh path leaves it unset: a
    /// client registration may be shared by several people).
    #[serde(default)]
    pub login_hint: Option<String>,
    #[serde(default)]
    pub expires_at: UnixTime,
}
