//! The in-memory store: clients, pending authorizations, codes, grants and token hashes, in `DashMap`s.
//!
//! Invariants:
//! - No token, code, state or secret is kept in clear: keys are [`TokenHash`]es (SHA-256). The upstream (IdP)
//!   tokens are the exception by necessity; they live only inside [`Grant`] and are never logged.
//! - Codes and IdP states are single use: they are taken out of their map with `remove`, which is atomic, so two
//!   concurrent redemptions cannot both succeed.
//! - No `.await` happens while a `DashMap` guard or a grant's `RwLock` is held: every guard is dropped before any
//!   I/O. A grant's upstream refresh is serialised by its own async `refresh_lock`, not by a map lock.
//! - A grant is revoked by a flag; every lookup checks it, and the sweeper removes what belongs to revoked grants.
//! - Memory per grant does not grow with use: a grant has one [`RefreshFamily`] (its current refresh token and the
//!   one just rotated) whatever the number of refreshes, and its access tokens expire after `tokens.access_ttl`.
//!
//! [`Store::sweep`] removes expired entries so that memory stays bounded.

mod model;
pub mod snapshot;

pub use model::*;

use std::sync::Arc;

use dashmap::DashMap;

use crate::clock::UnixTime;
use crate::crypto::TokenHash;

/// The proxy's state. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct Store {
    pub clients: DashMap<String, Arc<Client>>,
    /// Authorizations waiting for consent, by the hash of their request id.
    pub pending: DashMap<TokenHash, PendingAuthorization>,
    /// Authorizations sent to the IdP, by the hash of the proxy's own `state`.
    pub idp_requests: DashMap<TokenHash, IdpRequest>,
    pub codes: DashMap<TokenHash, AuthorizationCode>,
    /// Redeemed codes, kept until they would have expired, so that a replay revokes what they issued.
    pub spent_codes: DashMap<TokenHash, SpentCode>,
    pub grants: DashMap<GrantId, Arc<Grant>>,
    pub access_tokens: DashMap<TokenHash, AccessToken>,
    /// Refresh-token families (one per grant that has refresh tokens), by [`FamilyId::hash`].
    pub refresh_families: DashMap<TokenHash, RefreshFamily>,
}

/// Counts of live entries, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    pub clients: usize,
    pub pending: usize,
    pub codes: usize,
    pub grants: usize,
    pub access_tokens: usize,
    /// Refresh tokens the store recognises by hash: each family's current token and the one it just rotated.
    pub refresh_tokens: usize,
    pub refresh_families: usize,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks up a live access token: unexpired and of a grant that is not revoked.
    pub fn access_token(&self, hash: &TokenHash, now: UnixTime) -> Option<Arc<Grant>> {
        let entry = self.access_tokens.get(hash)?;
        if entry.expires_at <= now || entry.grant.is_revoked() {
            return None;
        }
        Some(entry.grant.clone())
    }

    /// Looks up a live access token: its grant and the scope the token carries.
    pub fn access(&self, hash: &TokenHash, now: UnixTime) -> Option<(Arc<Grant>, Arc<str>)> {
        let entry = self.access_tokens.get(hash)?;
        if entry.expires_at <= now || entry.grant.is_revoked() {
            return None;
        }
        Some((entry.grant.clone(), entry.scope.clone()))
    }

    /// The grant of a refresh token this store issued — the current one or the one just rotated — and the token's
    /// expiry, and whether it is the current one. Revocation (RFC 7009) and introspection (RFC 7662) use it.
    pub fn refresh_token(&self, token: &str) -> Option<(Arc<Grant>, UnixTime, bool)> {
        let name = RefreshTokenName::parse(token)?;
        let family = self.refresh_families.get(&name.family.hash())?;
        match family.classify(name.generation, &TokenHash::of(token)) {
            Presented::Current => Some((family.grant.clone(), family.expires_at, true)),
            Presented::Rotated(_) => Some((family.grant.clone(), family.expires_at, false)),
            Presented::Reused | Presented::Unknown => None,
        }
    }

    /// Revokes a grant: every token issued under it stops working at once.
    pub fn revoke_grant(&self, id: GrantId) {
        if let Some((_, grant)) = self.grants.remove(&id) {
            grant.revoke();
        }
    }

    /// Removes clients that never completed an authorization within `ttl` of registering.
    pub fn sweep_unused_clients(&self, now: UnixTime, ttl_secs: u64) -> usize {
        let before = self.clients.len();
        self.clients.retain(|_, c| c.was_authorized() || c.issued_at + ttl_secs > now);
        before - self.clients.len()
    }

    /// Removes expired and revoked entries.
    pub fn sweep(&self, now: UnixTime) {
        self.pending.retain(|_, p| p.expires_at > now);
        self.idp_requests.retain(|_, r| r.pending.expires_at > now);
        self.codes.retain(|_, c| c.expires_at > now);
        self.spent_codes.retain(|_, c| c.expires_at > now);
        self.access_tokens.retain(|_, t| t.expires_at > now && !t.grant.is_revoked());
        self.refresh_families.retain(|_, f| f.expires_at > now && !f.grant.is_revoked());
        self.grants.retain(|_, g| !g.is_revoked() && g.expires_at() > now);
    }

    pub fn stats(&self) -> StoreStats {
        let rotated = self.refresh_families.iter().filter(|f| f.rotated.is_some()).count();
        StoreStats {
            clients: self.clients.len(),
            pending: self.pending.len() + self.idp_requests.len(),
            codes: self.codes.len(),
            grants: self.grants.len(),
            access_tokens: self.access_tokens.len(),
            refresh_tokens: self.refresh_families.len() + rotated,
            refresh_families: self.refresh_families.len(),
        }
    }

    /// The client a code was issued to (live or already redeemed), without taking it. Read-only: lets the token
    /// endpoint refuse a made-up code before it resolves a URL client_id's document.
    pub fn code_client(&self, hash: &TokenHash) -> Option<String> {
        if let Some(code) = self.codes.get(hash) {
            return Some(code.client_id.clone());
        }
        let spent = self.spent_codes.get(hash).map(|s| s.grant)?;
        self.grants.get(&spent).map(|g| g.client_id.clone())
    }

    /// The client a refresh token's family belongs to, without using it: any generation counts, so that a spent
    /// token is still recognised (its reuse must revoke the grant). Read-only, like [`Store::code_client`].
    pub fn refresh_client(&self, token: &str) -> Option<String> {
        let name = RefreshTokenName::parse(token)?;
        self.refresh_families.get(&name.family.hash()).map(|f| f.grant.client_id.clone())
    }

    /// The client an access or refresh token was issued to. Read-only, like [`Store::code_client`].
    pub fn token_client(&self, token: &str) -> Option<String> {
        self.refresh_client(token)
            .or_else(|| self.access_tokens.get(&TokenHash::of(token)).map(|t| t.grant.client_id.clone()))
    }
}
