//! The token endpoint (RFC 6749 §3.2, §4.1.3, §5, §6; RFC 7636 §4.6; RFC 9700 §4.14).
//!
//! - Client authentication ([`super::client_auth`]): the method the client registered — a secret (§2.3.1), a
//!   signed assertion (RFC 7523, `private_key_jwt`) or `client_id` alone for public clients — before anything is
//!   spent. An unknown client or a failed authentication is 401 `invalid_client`, so that clients register again.
//! - `authorization_code`: the code is taken out of the store atomically (single use); it must belong to the
//!   client, be unexpired, come with the same `redirect_uri` and a matching PKCE verifier. A replayed code revokes
//!   the grant it created (§4.1.2).
//! - `refresh_token`: rotated on every use. A replay of a rotated token within `tokens.refresh_grace` returns the
//!   same new pair (clients such as Claude refresh from two places at once); a later replay, or the use of any
//!   older token of the grant's family, revokes the grant (RFC 9700 §4.14). The store keeps constant state per
//!   grant whatever the number of refreshes ([`crate::store::RefreshFamily`]); a token of a known family with a
//!   future generation or a wrong random part is refused without revoking anything (a snapshot restored from
//!   before the client's last refresh yields such tokens).
//! - A `scope` on refresh (§6) may only narrow: the new access token carries the requested scopes, the new refresh
//!   token keeps the grant's.
//! - Access tokens are 256-bit random strings, refresh tokens a family id and generation plus 256 random bits;
//!   both stored only as SHA-256 hashes; responses carry `Cache-Control: no-store`.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::client_auth::Credential;
use super::requests;
use crate::app::App;
use crate::audit::{self, Entry, Event};
use crate::client_documents;
use crate::clock::UnixTime;
use crate::config::TokenConfig;
use crate::crypto::{self, Sealer, TokenHash};
use crate::error::{Error, ErrorCode, OAuthError};
use crate::http::params::Params;
use crate::http::{json_response, no_store, Body, RequestBody};
use crate::oauth::{pkce, scope};
use crate::store::{
    AccessToken, AuthorizationCode, Client, CodeRedemption, FamilyId, Grant, GrantId, GrantType, Presented,
    RefreshFamily, RefreshTokenName, Rotation, Store,
};

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub scope: String,
}

/// What the token rules need to know about the proxy.
pub struct TokenContext<'a> {
    pub store: &'a Store,
    pub config: &'a TokenConfig,
    pub now: UnixTime,
    /// Values accepted for RFC 8707 `resource` at redemption of a code (or refresh of a grant) bound to no
    /// resource: the main upstream's, never a `[[routes]]` entry's (its token would be for the main upstream).
    pub resources: &'a [String],
}

/// Dispatches on `grant_type`.
pub async fn exchange(ctx: &TokenContext<'_>, client: &Client, params: &Params) -> Result<TokenResponse, Error> {
    let grant = crate::oauth::grant_type::requested(params)?;
    if grant != GrantType::AuthorizationCode && !client.allows(grant) {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            format!("this client did not register the {} grant", grant.as_str()),
        )
        .into());
    }
    match grant {
        GrantType::AuthorizationCode => redeem_code(ctx, client, params).await,
        GrantType::RefreshToken => refresh(ctx, client, params).await,
    }
}

fn check_resource(ctx: &TokenContext<'_>, params: &Params, bound: Option<&str>) -> Result<(), OAuthError> {
    match params.get("resource") {
        None => Ok(()),
        Some(r) if bound.map_or_else(|| ctx.resources.iter().any(|ok| ok == r), |b| b == r) => Ok(()),
        Some(_) => Err(OAuthError::new(ErrorCode::InvalidTarget, "resource does not match the authorization")),
    }
}

async fn redeem_code(ctx: &TokenContext<'_>, client: &Client, params: &Params) -> Result<TokenResponse, Error> {
    let code = params.require("code").map_err(OAuthError::from)?;
    let verifier = params.require("code_verifier").map_err(OAuthError::from)?;
    if !pkce::is_valid_verifier(verifier) {
        return Err(OAuthError::invalid_request("code_verifier must be 43-128 unreserved characters (RFC 7636)").into());
    }
    let hash = TokenHash::of(code);
    let code = match ctx.store.redeem_code(code).await? {
        CodeRedemption::Taken(code) => *code,
        CodeRedemption::Spent(grant) => {
            let subject = ctx.store.grant(grant).await?.map(|g| g.identity.sub.clone()).unwrap_or_default();
            ctx.store.revoke_grant(grant).await?;
            tracing::warn!(client_id = %client.client_id, "authorization code replayed; its grant is revoked");
            audit::emit(
                Entry::new(Event::CodeReplayDetected)
                    .client(&client.client_id)
                    .name(client.client_name.as_deref())
                    .subject(&subject)
                    .detail("grant revoked"),
            );
            return Err(OAuthError::invalid_grant("authorization code was already used").into());
        }
        CodeRedemption::Unknown => {
            return Err(OAuthError::invalid_grant("authorization code is invalid or expired").into())
        }
    };
    check_code(ctx, client, params, &code, verifier)?;
    ctx.store.client_authorized(client, ctx.now).await?;
    let grant = Grant::new(client.client_id.clone(), code.request.scope, code.request.resource, code.login, ctx.now);
    ctx.store.start_grant(grant.clone(), hash, code.expires_at).await?;
    audit::emit(
        Entry::new(Event::GrantIssued)
            .client(&client.client_id)
            .name(client.client_name.as_deref())
            .subject(&grant.identity.sub)
            .detail(format!("scope: {}", grant.scope)),
    );
    let with_refresh = client.allows(GrantType::RefreshToken);
    issue(ctx, &grant, with_refresh).await
}

/// The checks of a taken code (RFC 6749 §4.1.3, RFC 7636 §4.6, RFC 8707).
fn check_code(
    ctx: &TokenContext<'_>,
    client: &Client,
    params: &Params,
    code: &AuthorizationCode,
    verifier: &str,
) -> Result<(), OAuthError> {
    if code.request.client_id != client.client_id {
        return Err(OAuthError::invalid_grant("authorization code was issued to another client"));
    }
    if code.expires_at <= ctx.now {
        return Err(OAuthError::invalid_grant("authorization code expired"));
    }
    match params.get("redirect_uri") {
        Some(r) if r == code.request.redirect_uri => {}
        Some(_) => return Err(OAuthError::invalid_grant("redirect_uri differs from the authorization request")),
        None if code.request.redirect_uri_explicit => {
            return Err(OAuthError::invalid_grant(
                "redirect_uri is required: it was sent with the authorization request",
            ))
        }
        None => {}
    }
    if !pkce::verify_s256(verifier, &code.request.code_challenge) {
        return Err(OAuthError::invalid_grant("code_verifier does not match the code_challenge"));
    }
    check_resource(ctx, params, code.request.resource.as_deref())
}

/// Mints an access token (and a refresh token of a new family) for a grant and records their hashes.
async fn issue(ctx: &TokenContext<'_>, grant: &Arc<Grant>, with_refresh: bool) -> Result<TokenResponse, Error> {
    let (mut pair, _, access) = mint_access(ctx, grant, grant.scope.clone());
    ctx.store.add_access_token(&pair.access_token, access).await?;
    if with_refresh {
        let name = RefreshTokenName { family: FamilyId::random(), generation: 0 };
        let refresh = name.mint();
        let expires_at = ctx.now + ctx.config.refresh_ttl.as_secs();
        grant.extend_to(expires_at);
        ctx.store
            .add_refresh_family(
                name.family.hash(),
                RefreshFamily {
                    grant: grant.clone(),
                    generation: 0,
                    current: TokenHash::of(&refresh),
                    expires_at,
                    rotated: None,
                },
                &refresh,
            )
            .await?;
        pair.refresh_token = Some(refresh);
    }
    Ok(pair)
}

/// Mints an access token carrying `scope`: the response (no refresh token yet) and the record to store under
/// the token's hash. Writes nothing.
fn mint_access(ctx: &TokenContext<'_>, grant: &Arc<Grant>, scope: Arc<str>) -> (TokenResponse, TokenHash, AccessToken) {
    let access = crypto::random_token();
    let ttl = ctx.config.access_ttl.as_secs();
    // The grant lives at least as long as its newest token, so that sweeping, revocation and snapshots see it.
    grant.extend_to(ctx.now + ttl);
    let response_scope = scope.to_string();
    let record = AccessToken { grant: grant.clone(), expires_at: ctx.now + ttl, scope };
    let hash = TokenHash::of(&access);
    let pair = TokenResponse {
        access_token: access,
        token_type: "Bearer".to_owned(),
        expires_in: ttl,
        refresh_token: None,
        scope: response_scope,
    };
    (pair, hash, record)
}

/// The key that seals a rotated token's successor: derived from the rotated token, which the store does not keep.
fn successor_sealer(refresh_token: &str) -> Sealer {
    let mut input = b"dcr-proxy refresh successor v1\0".to_vec();
    input.extend_from_slice(refresh_token.as_bytes());
    Sealer::new(&crypto::sha256(&input))
}

#[derive(Serialize, Deserialize)]
struct SealedPair {
    access_token: String,
    refresh_token: Option<String>,
    access_expires_at: UnixTime,
    scope: String,
}

/// The scope of a refreshed access token (RFC 6749 §6): the requested scopes, which must all be granted, or the
/// grant's when none is asked.
fn refreshed_scope(requested: Option<&str>, grant: &Grant) -> Result<Arc<str>, OAuthError> {
    let Some(requested) = requested else {
        return Ok(grant.scope.clone());
    };
    scope::check_subset(requested, &grant.scope)?;
    let asked = scope::parse(requested)?.join(" ");
    Ok(if asked.is_empty() || *asked == *grant.scope { grant.scope.clone() } else { Arc::from(asked) })
}

/// RFC 6749 §3.2: the token endpoint. A URL client_id's document is fetched only for a request that presents a
/// code or refresh token of that client ([`client_documents::check_token_request`]).
pub async fn handle(app: &App, req: Request<RequestBody>) -> Result<Response<Body>, Error> {
    let (headers, params) = requests::read_oauth_form(req).await?;
    let credential = Credential::read(&headers, &params)?;
    let id = credential.client_id();
    // Authenticating a document client, or any client by assertion, may fetch (its document, its `jwks_uri`):
    // only for a request that presents a code or refresh token of that client.
    if client_documents::is_document_id(id) || matches!(credential, Credential::Assertion { .. }) {
        client_documents::check_token_request(&app.store, &params, id).await??;
    }
    let client = requests::token_client(app, &credential, crate::endpoint::Endpoint::Token).await?;
    let ctx = TokenContext {
        store: &app.store,
        config: &app.config.tokens,
        now: app.clock.now(),
        resources: &app.default_resources,
    };
    let issued = exchange(&ctx, &client, &params).await?;
    let body = serde_json::to_value(&issued).map_err(|e| Error::Internal(e.to_string()))?;
    let mut resp = json_response(StatusCode::OK, &body);
    no_store(&mut resp);
    Ok(resp)
}

/// What a refresh request leads to, once the presented token is classified.
enum Step {
    Rotate,
    /// The sealed pair that rotated the presented token, within the grace window.
    Replay(Vec<u8>),
    Revoke,
}

/// What one atomic step on a refresh-token family decided.
enum Refreshed {
    /// The family may rotate to `next`: the new pair, and its access token to store first.
    Issued { pair: TokenResponse, access: (TokenHash, AccessToken), next: Box<RefreshFamily> },
    /// A replay within the grace window: the sealed pair it was answered with.
    Replayed(Vec<u8>),
    /// A spent token reused: its grant must be revoked.
    Reused(GrantId),
}

/// How many times a refresh decides again after losing the compare-and-set to a concurrent use of its family.
const ROTATION_ATTEMPTS: usize = 3;

async fn refresh(ctx: &TokenContext<'_>, client: &Client, params: &Params) -> Result<TokenResponse, Error> {
    let presented = params.require("refresh_token").map_err(OAuthError::from)?;
    let dead = || OAuthError::invalid_grant("refresh token is invalid, expired or revoked");
    let name = RefreshTokenName::parse(presented).ok_or_else(dead)?;
    let key = name.family.hash();
    // Read, decide, then compare-and-set on the generation: two uses of one token cannot both rotate. The loser
    // decides again on the family the winner wrote (its token is now the one just rotated: the grace window).
    for _ in 0..ROTATION_ATTEMPTS {
        let family = ctx.store.refresh_family(&key, presented).await?.ok_or_else(dead)?;
        let expected = family.generation;
        match refresh_family(ctx, client, params, presented, name, family)? {
            Refreshed::Issued { pair, access: (hash, access), next } => {
                let grant = access.grant.clone();
                // The access token is stored first, so that a replay answered from the family finds it.
                ctx.store.add_access_token(&pair.access_token, access).await?;
                let rotated_to = pair.refresh_token.as_deref().unwrap_or_default();
                if ctx.store.replace_refresh_family(&key, expected, *next, rotated_to).await? {
                    return Ok(pair);
                }
                ctx.store.revoke_access_token(&hash, &grant.client_id).await?;
            }
            other => return answer_refresh(ctx, client, other).await,
        }
    }
    Err(OAuthError::invalid_grant("refresh token is being used concurrently; retry").into())
}

/// The answer to a replay or a reuse.
async fn answer_refresh(ctx: &TokenContext<'_>, client: &Client, outcome: Refreshed) -> Result<TokenResponse, Error> {
    let dead = || OAuthError::invalid_grant("refresh token is invalid, expired or revoked");
    match outcome {
        Refreshed::Issued { pair, .. } => Ok(pair),
        Refreshed::Replayed(plain) => {
            let pair: SealedPair = serde_json::from_slice(&plain).map_err(|_| dead())?;
            Ok(TokenResponse {
                access_token: pair.access_token,
                token_type: "Bearer".to_owned(),
                expires_in: pair.access_expires_at.saturating_sub(ctx.now),
                refresh_token: pair.refresh_token,
                scope: pair.scope,
            })
        }
        Refreshed::Reused(grant) => {
            let subject = ctx.store.grant(grant).await?.map(|g| g.identity.sub.clone()).unwrap_or_default();
            ctx.store.revoke_grant(grant).await?;
            audit::emit(
                Entry::new(Event::RefreshReuseDetected)
                    .client(&client.client_id)
                    .name(client.client_name.as_deref())
                    .subject(&subject)
                    .detail("refresh family and grant revoked"),
            );
            tracing::warn!(client_id = %client.client_id, "spent refresh token reused; the grant is revoked");
            Err(OAuthError::invalid_grant("refresh token was already used; the authorization is revoked").into())
        }
    }
}

/// The rule of RFC 9700 §4.14 on a copy of one family: the current token rotates (into the returned next
/// family, which [`Store::replace_refresh_family`] writes only if nobody rotated meanwhile), the one just
/// rotated is answered again within `tokens.refresh_grace`, any other spent one revokes. Writes nothing.
fn refresh_family(
    ctx: &TokenContext<'_>,
    client: &Client,
    params: &Params,
    presented: &str,
    name: RefreshTokenName,
    mut family: RefreshFamily,
) -> Result<Refreshed, OAuthError> {
    let dead = || OAuthError::invalid_grant("refresh token is invalid, expired or revoked");
    let hash = TokenHash::of(presented);
    let grant = family.grant.clone();
    if grant.client_id != client.client_id {
        return Err(OAuthError::invalid_grant("refresh token was issued to another client"));
    }
    if family.expires_at <= ctx.now || grant.is_revoked() {
        return Err(dead());
    }
    let step = match family.classify(name.generation, &hash) {
        Presented::Current => Step::Rotate,
        Presented::Rotated(rotation) if ctx.now <= rotation.at + ctx.config.refresh_grace.as_secs() => {
            Step::Replay(successor_sealer(presented).open(&hash.0, &rotation.sealed_successor).map_err(|_| dead())?)
        }
        Presented::Rotated(_) | Presented::Reused => Step::Revoke,
        Presented::Unknown => return Err(dead()),
    };
    match step {
        Step::Rotate => {}
        Step::Replay(plain) => return Ok(Refreshed::Replayed(plain)),
        Step::Revoke => return Ok(Refreshed::Reused(grant.id)),
    }
    let scope = refreshed_scope(params.get("scope"), &grant)?;
    check_resource(ctx, params, grant.resource.as_deref())?;
    let next_generation = name.generation.checked_add(1).ok_or_else(dead)?;
    let next = RefreshTokenName { family: name.family, generation: next_generation }.mint();
    let (mut pair, hash_of_access, access) = mint_access(ctx, &grant, scope);
    pair.refresh_token = Some(next.clone());
    let sealed = SealedPair {
        access_token: pair.access_token.clone(),
        refresh_token: pair.refresh_token.clone(),
        access_expires_at: ctx.now + pair.expires_in,
        scope: pair.scope.clone(),
    };
    let plaintext = serde_json::to_vec(&sealed).map_err(|_| dead())?;
    let expires_at = ctx.now + ctx.config.refresh_ttl.as_secs();
    family.rotate(
        TokenHash::of(&next),
        expires_at,
        Rotation { hash, at: ctx.now, sealed_successor: successor_sealer(presented).seal(&hash.0, &plaintext) },
    );
    grant.extend_to(expires_at);
    Ok(Refreshed::Issued { pair, access: (hash_of_access, access), next: Box::new(family) })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::MemoryStore;

    fn oauth_code(e: Error) -> Option<ErrorCode> {
        match e {
            Error::OAuth(o) => Some(o.code),
            _ => None,
        }
    }
    use crate::store::{AuthorizationCode, Identity, UpstreamCredential, UpstreamLogin};

    fn config() -> TokenConfig {
        TokenConfig {
            access_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(86400),
            code_ttl: Duration::from_secs(600),
            pending_ttl: Duration::from_secs(600),
            refresh_grace: Duration::from_secs(10),
            upstream_refresh_margin: Duration::from_secs(60),
            upstream_refresh_floor: Duration::from_secs(30),
        }
    }

    fn client(id: &str) -> Client {
        Client::public(id, vec!["https://a.example/cb".into()], 0)
    }

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn put_code(store: &MemoryStore, code: &str, client_id: &str) {
        store.issue_code(TokenHash::of(code), code_for(client_id));
    }

    fn code_for(client_id: &str) -> AuthorizationCode {
        AuthorizationCode {
            request: crate::store::AuthorizationRequest {
                client_id: client_id.into(),
                redirect_uri: "https://a.example/cb".into(),
                redirect_uri_explicit: true,
                code_challenge: CHALLENGE.into(),
                scope: vec!["openid".into()],
                resource: None,
                state: None,
            },
            expires_at: 1600,
            login: UpstreamLogin { credential: UpstreamCredential::Local, identity: Identity::default() },
        }
    }

    fn params(s: &str) -> Params {
        Params::parse(s.as_bytes()).unwrap_or_default()
    }

    fn code_params(code: &str) -> Params {
        params(&format!(
            "grant_type=authorization_code&code={code}&redirect_uri=https%3A%2F%2Fa.example%2Fcb&code_verifier={VERIFIER}"
        ))
    }

    #[tokio::test]
    async fn replayed_code_fails_and_revokes_issued_tokens() {
        let store = Arc::new(MemoryStore::new());
        let state = Store::Memory(store.clone());
        let cfg = config();
        let ctx = TokenContext { store: &state, config: &cfg, now: 1000, resources: &[] };
        put_code(&store, "code1", "c1");
        let first = exchange(&ctx, &client("c1"), &code_params("code1")).await;
        let Ok(first) = first else { panic!("first redemption failed: {first:?}") };
        assert!(store.access_token(&TokenHash::of(&first.access_token), 1000).is_some());
        let again = exchange(&ctx, &client("c1"), &code_params("code1")).await;
        assert_eq!(again.err().and_then(oauth_code), Some(ErrorCode::InvalidGrant));
        assert!(store.access_token(&TokenHash::of(&first.access_token), 1000).is_none());
    }

    #[tokio::test]
    async fn code_of_another_client_wrong_verifier_and_expiry_are_invalid_grant() {
        let store = Arc::new(MemoryStore::new());
        let state = Store::Memory(store.clone());
        let cfg = config();
        let ctx = TokenContext { store: &state, config: &cfg, now: 1000, resources: &[] };
        put_code(&store, "a", "c1");
        assert_eq!(
            exchange(&ctx, &client("c2"), &code_params("a")).await.err().and_then(oauth_code),
            Some(ErrorCode::InvalidGrant)
        );
        put_code(&store, "b", "c1");
        let bad = params(&format!(
            "grant_type=authorization_code&code=b&redirect_uri=https%3A%2F%2Fa.example%2Fcb&code_verifier={}",
            "x".repeat(43)
        ));
        assert_eq!(exchange(&ctx, &client("c1"), &bad).await.err().and_then(oauth_code), Some(ErrorCode::InvalidGrant));
        put_code(&store, "c", "c1");
        let late = TokenContext { store: &state, config: &cfg, now: 1600, resources: &[] };
        assert_eq!(
            exchange(&late, &client("c1"), &code_params("c")).await.err().and_then(oauth_code),
            Some(ErrorCode::InvalidGrant)
        );
    }

    #[tokio::test]
    async fn refresh_rotates_allows_grace_replay_then_revokes_on_reuse() {
        let store = Arc::new(MemoryStore::new());
        let state = Store::Memory(store.clone());
        let cfg = config();
        let c = client("c1");
        put_code(&store, "code", "c1");
        let ctx = TokenContext { store: &state, config: &cfg, now: 1000, resources: &[] };
        let Ok(first) = exchange(&ctx, &c, &code_params("code")).await else { panic!("code redemption failed") };
        let r1 = first.refresh_token.clone().unwrap_or_default();
        let refresh_params = params(&format!("grant_type=refresh_token&refresh_token={r1}"));
        let Ok(second) = exchange(&ctx, &c, &refresh_params).await else { panic!("refresh failed") };
        assert_ne!(second.refresh_token, first.refresh_token);
        // Within the grace window the same pair comes back.
        let ctx_grace = TokenContext { now: 1005, ..ctx };
        let replay = exchange(&ctx_grace, &c, &refresh_params).await.ok();
        assert_eq!(replay.as_ref().map(|r| &r.access_token), Some(&second.access_token));
        assert_eq!(replay.map(|r| r.refresh_token), Some(second.refresh_token.clone()));
        // After it, reuse revokes the grant, including the newest tokens.
        let ctx_late = TokenContext { now: 1100, ..ctx_grace };
        assert_eq!(
            exchange(&ctx_late, &c, &refresh_params).await.err().and_then(oauth_code),
            Some(ErrorCode::InvalidGrant)
        );
        assert!(store.access_token(&TokenHash::of(&second.access_token), 1100).is_none());
        let r2 = second.refresh_token.unwrap_or_default();
        let next = params(&format!("grant_type=refresh_token&refresh_token={r2}"));
        assert_eq!(exchange(&ctx_late, &c, &next).await.err().and_then(oauth_code), Some(ErrorCode::InvalidGrant));
    }

    async fn refresh_with(
        ctx: &TokenContext<'_>,
        c: &Client,
        token: &str,
        extra: &str,
    ) -> Result<TokenResponse, Error> {
        exchange(ctx, c, &params(&format!("grant_type=refresh_token&refresh_token={token}{extra}"))).await
    }

    #[tokio::test]
    async fn many_refreshes_keep_one_family_and_any_spent_generation_revokes() {
        let store = Arc::new(MemoryStore::new());
        let state = Store::Memory(store.clone());
        let cfg = config();
        let c = client("c1");
        put_code(&store, "code", "c1");
        let ctx = TokenContext { store: &state, config: &cfg, now: 1000, resources: &[] };
        let Ok(first) = exchange(&ctx, &c, &code_params("code")).await else { panic!("code redemption failed") };
        let mut issued = vec![first.refresh_token.unwrap_or_default()];
        for i in 0..30u64 {
            let now = 1000 + 20 * (i + 1);
            let ctx = TokenContext { now, ..ctx };
            let last = issued.last().cloned().unwrap_or_default();
            let Ok(next) = refresh_with(&ctx, &c, &last, "").await else { panic!("refresh {i} failed") };
            issued.push(next.refresh_token.unwrap_or_default());
            assert_eq!(store.stats().refresh_families, 1);
            assert_eq!(store.stats().refresh_tokens, 2, "the current token and the one just rotated");
        }
        let late = TokenContext { now: 2000, ..ctx };
        // A future generation, or the current generation with another random part, revokes nothing.
        let current = issued.last().cloned().unwrap_or_default();
        let name = RefreshTokenName::parse(&current).unwrap_or_else(|| unreachable!());
        let future = RefreshTokenName { generation: name.generation + 1, ..name }.mint();
        let forged = RefreshTokenName { generation: name.generation, ..name }.mint();
        for bad in [future, forged] {
            assert_eq!(
                refresh_with(&late, &c, &bad, "").await.err().and_then(oauth_code),
                Some(ErrorCode::InvalidGrant)
            );
        }
        assert_eq!(store.stats().grants, 1, "still authorized");
        // A token of 10 generations ago revokes the grant, and the current token with it.
        let old = issued[issued.len() - 11].clone();
        assert_eq!(refresh_with(&late, &c, &old, "").await.err().and_then(oauth_code), Some(ErrorCode::InvalidGrant));
        assert_eq!(store.stats().grants, 0);
        assert_eq!(
            refresh_with(&late, &c, &current, "").await.err().and_then(oauth_code),
            Some(ErrorCode::InvalidGrant)
        );
    }

    #[tokio::test]
    async fn narrower_scope_on_refresh_is_given_to_the_access_token_only() {
        let store = Arc::new(MemoryStore::new());
        let state = Store::Memory(store.clone());
        let cfg = config();
        let c = client("c1");
        let code = {
            let mut code = code_for("c1");
            code.request.scope = vec!["openid".into(), "profile".into(), "User.Read".into()];
            code
        };
        store.issue_code(TokenHash::of("code"), code);
        let ctx = TokenContext { store: &state, config: &cfg, now: 1000, resources: &[] };
        let Ok(first) = exchange(&ctx, &c, &code_params("code")).await else { panic!("code redemption failed") };
        assert_eq!(first.scope, "openid profile User.Read");
        let rt = first.refresh_token.unwrap_or_default();
        let Ok(narrow) = refresh_with(&ctx, &c, &rt, "&scope=User.Read%20openid").await else {
            panic!("narrow refresh")
        };
        assert_eq!(narrow.scope, "User.Read openid");
        let scope = store.access(&TokenHash::of(&narrow.access_token), 1000).map(|(_, s)| s.to_string());
        assert_eq!(scope.as_deref(), Some("User.Read openid"));
        // The refresh token keeps the grant's scope; a wider scope is refused.
        let rt = narrow.refresh_token.unwrap_or_default();
        let wider = refresh_with(&ctx, &c, &rt, "&scope=openid%20Mail.Read").await;
        assert_eq!(wider.err().and_then(oauth_code), Some(ErrorCode::InvalidScope));
        let Ok(full) = refresh_with(&ctx, &c, &rt, "").await else { panic!("full refresh") };
        assert_eq!(full.scope, "openid profile User.Read");
    }

    #[tokio::test]
    async fn grant_without_refresh_token_survives_the_sweep_while_its_access_token_lives() {
        let store = Arc::new(MemoryStore::new());
        let state = Store::Memory(store.clone());
        let cfg = config();
        let mut c = client("c1");
        c.grant_types = vec!["authorization_code".into()];
        put_code(&store, "code", "c1");
        let ctx = TokenContext { store: &state, config: &cfg, now: 1000, resources: &[] };
        let Ok(issued) = exchange(&ctx, &c, &code_params("code")).await else { panic!("redemption failed") };
        assert!(issued.refresh_token.is_none());
        store.sweep(2000);
        assert_eq!(store.stats().grants, 1);
        assert!(store.access_token(&TokenHash::of(&issued.access_token), 2000).is_some());
        store.sweep(1000 + 3600);
        assert_eq!(store.stats().grants, 0);
    }
}
