//! Per-grant data keys for the shared store (issue 12 §5): a grant's IdP tokens in Redis can be opened only
//! through a live proxy token of that grant, as Cloudflare's workers-oauth-provider does with its KV
//! (`wrappedEncryptionKey` on each token record).
//!
//! Design (`store.backend = "redis"`; the memory backend does not use this module):
//! - Each grant has a random 256-bit data key K ([`DataKey::random`], OS RNG), drawn when the grant starts. K seals
//!   (ChaCha20-Poly1305, [`crate::crypto::Sealer`]) the grant's IdP tokens and its `[[routes]]` tokens. The grant
//!   record around that blob is sealed with the configured key as before (metadata: client, scope, identity,
//!   times), so both layers must be opened: K *and* the configured key.
//! - K is stored only wrapped (sealed) under a key derived from a live proxy secret: the access token (on its
//!   `at:` record), the refresh token (on its family record, re-wrapped at every rotation) — HKDF-SHA256
//!   (RFC 5869, `ring::hkdf`) with the salt [`SALT`] and a per-kind label as info ([`WrapKind`]). The
//!   authorization code's record holds the IdP tokens under its own random key, wrapped the same way under a key
//!   derived from the code; the grant's K is drawn when the code is redeemed.
//! - A record's Redis key is the SHA-256 of the secret (`crypto::TokenHash`); the wrapping key is HKDF of the same
//!   secret under another salt and label. The Redis key therefore says nothing about the wrapping key, and each
//!   wrap binds the Redis key name as associated data, so a wrap cannot be moved to another record.
//!
//! Threat model:
//! - A dump of Redis (RDB, AOF, a replica, `MONITOR`) *plus* the configured key yields grant metadata (who signed
//!   in, to which client, scopes, times) but no IdP token: every IdP token is under some K, and every K is under a
//!   proxy secret the store never holds (only its SHA-256). Proxy tokens are 256-bit random, so guessing one is
//!   out of reach; an offline attack on a wrap is an attack on HKDF of a 256-bit secret.
//! - The holder of a live proxy token of a grant (the client, or a thief of its token) can unwrap K and so,
//!   with the dump and the configured key, read that grant's IdP tokens — no more than the proxy would let it use
//!   on its behalf anyway, and only for that grant. A revoked or expired token's record is gone (its wrap with it).
//! - What is lost: a replica can use a grant's IdP tokens only while serving a request that carries one of the
//!   grant's proxy tokens (or holding the grant in memory from such a request), so there is no background IdP
//!   refresh and no operator action that needs IdP tokens (none does today: admin listings, revoke-user,
//!   `/readyz` and import read metadata only).
//! - Grants imported from a memory snapshot (`dcr-proxy store import`): the import has the plaintext IdP tokens
//!   but only the hashes of the proxy tokens, so it cannot wrap a K for them. Those grants keep the previous
//!   protection (IdP tokens sealed with the configured key only) for their whole life, and the import says how
//!   many it wrote that way; a new sign-in replaces them with wrapped grants (README, "Security model").

use ring::hkdf;

use crate::crypto::{self, OpenError, Sealer};

/// HKDF salt of every wrapping key (a domain label of its own: the Redis keys are plain SHA-256 of the secret).
pub const SALT: &[u8] = b"dcr-proxy redis data-key wrap v1";

/// Which proxy secret a wrapping key comes from (the HKDF info), so that one secret's key never opens another
/// kind's wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapKind {
    AuthorizationCode,
    AccessToken,
    RefreshToken,
}

impl WrapKind {
    fn label(self) -> &'static [u8] {
        match self {
            Self::AuthorizationCode => b"authorization code",
            Self::AccessToken => b"access token",
            Self::RefreshToken => b"refresh token",
        }
    }
}

/// A grant's data key. Never logged, never stored unwrapped.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<secret>)")
    }
}

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// The key that wraps a data key under `secret` (a proxy token or code as presented): HKDF-SHA256.
fn wrapping_key(secret: &str, kind: WrapKind) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret.as_bytes());
    let mut out = [0u8; 32];
    let info = [kind.label()];
    // `expand` fails only for an output longer than 255 hash lengths, and `fill` only for a wrong length.
    match prk.expand(&info, Len32).and_then(|okm| okm.fill(&mut out)) {
        Ok(()) => out,
        Err(_) => unreachable!("HKDF-SHA256 yields 32 bytes"),
    }
}

impl DataKey {
    /// A fresh random key (OS RNG).
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        crypto::fill_random(&mut key);
        Self(key)
    }

    /// Seals `plain` under this key, bound to `aad` (the Redis key name and what the blob is).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        Sealer::new(&self.0).seal(aad, plain)
    }

    /// Opens what [`DataKey::seal`] sealed with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        Sealer::new(&self.0).open(aad, sealed)
    }

    /// This key wrapped under `secret` for the record named `record_key`.
    pub fn wrap(&self, secret: &str, kind: WrapKind, record_key: &str) -> Vec<u8> {
        Sealer::new(&wrapping_key(secret, kind)).seal(record_key.as_bytes(), &self.0)
    }

    /// The key a [`DataKey::wrap`] holds, given the same secret, kind and record; `None` for anything else.
    pub fn unwrap(wrapped: &[u8], secret: &str, kind: WrapKind, record_key: &str) -> Option<Self> {
        let plain = Sealer::new(&wrapping_key(secret, kind)).open(record_key.as_bytes(), wrapped).ok()?;
        Some(Self(plain.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::TokenHash;

    #[test]
    fn a_wrap_opens_only_with_its_secret_kind_and_record() {
        let k = DataKey::random();
        let wrapped = k.wrap("secret", WrapKind::AccessToken, "dcrp:at:1");
        assert_eq!(DataKey::unwrap(&wrapped, "secret", WrapKind::AccessToken, "dcrp:at:1"), Some(k.clone()));
        assert_eq!(DataKey::unwrap(&wrapped, "secreT", WrapKind::AccessToken, "dcrp:at:1"), None);
        assert_eq!(DataKey::unwrap(&wrapped, "secret", WrapKind::RefreshToken, "dcrp:at:1"), None);
        assert_eq!(DataKey::unwrap(&wrapped, "secret", WrapKind::AccessToken, "dcrp:at:2"), None);
        assert_eq!(DataKey::unwrap(&[], "secret", WrapKind::AccessToken, "dcrp:at:1"), None);
        assert_ne!(DataKey::random(), k);
        assert_eq!(format!("{k:?}"), "DataKey(<secret>)");
    }

    #[test]
    fn the_wrapping_key_is_not_the_records_hash_and_differs_by_kind() {
        let hash = TokenHash::of("secret").0;
        let keys = [WrapKind::AuthorizationCode, WrapKind::AccessToken, WrapKind::RefreshToken]
            .map(|kind| wrapping_key("secret", kind));
        assert!(keys.iter().all(|k| *k != hash));
        assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2]);
    }

    #[test]
    fn sealed_data_opens_with_the_key_and_aad_only() {
        let k = DataKey::random();
        let sealed = k.seal(b"grant idp", b"tokens");
        assert_eq!(k.open(b"grant idp", &sealed).as_deref(), Ok(&b"tokens"[..]));
        assert!(k.open(b"grant route", &sealed).is_err());
        assert!(DataKey::random().open(b"grant idp", &sealed).is_err());
    }
}
