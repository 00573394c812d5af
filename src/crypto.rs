//! Every cryptographic operation of the proxy goes through this module.
//!
//! - Random values come from the operating system's RNG (`getrandom` through `rand::rngs::OsRng`), 256 bits for
//!   every token, secret, state and code.
//! - Tokens, codes and secrets are stored only as SHA-256 hashes ([`TokenHash`]); a presented value is hashed and
//!   looked up, so the lookup itself compares digests, never the secret.
//! - Secrets that are compared rather than looked up go through [`constant_time_eq`].
//! - PKCE (RFC 7636 §4.2) `S256` is `BASE64URL(SHA256(verifier))`.
//! - [`Sealer`] is ChaCha20-Poly1305 (the AEAD of the rustls `ring` provider) with a random 96-bit nonce per message.
//! - [`Mac`] is HMAC-SHA256, for values the proxy hands out and must recognise as its own (the browser-binding
//!   cookie); tags are compared in constant time by `ring`.
//!
//! SHA-256 and the AEAD come from `ring`, the crypto provider rustls is built with here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::{RngCore as _, TryRngCore as _};
use ring::aead;
use ring::digest;
use subtle::ConstantTimeEq as _;

/// Length in bytes of every random token the proxy issues (256 bits).
pub const TOKEN_BYTES: usize = 32;

/// The SHA-256 digest of a token, the only form in which a token is kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Eight hex digits identify an entry in a log without helping anyone guess the token.
        write!(f, "TokenHash({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

impl TokenHash {
    /// Hashes a presented token.
    pub fn of(token: &str) -> Self {
        Self(sha256(token.as_bytes()))
    }

    /// Compares with a presented secret in constant time.
    pub fn matches(&self, secret: &str) -> bool {
        constant_time_eq(&self.0, &sha256(secret.as_bytes()))
    }
}

/// Fills `buf` from the OS RNG. A failing OS RNG is not recoverable; like `rand::rng()` this panics, which ends
/// only the task that asked.
pub fn fill_random(buf: &mut [u8]) {
    OsRng.unwrap_err().fill_bytes(buf);
}

/// A fresh 256-bit random token, base64url without padding (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    fill_random(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// RFC 7636 §4.2 `S256`: `BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))`.
pub fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()))
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Base64url without padding, the encoding of every token and of PKCE values.
pub fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Errors of [`Sealer::open`]; deliberately without detail.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("ciphertext could not be authenticated")]
pub struct OpenError;

/// ChaCha20-Poly1305 with a 256-bit key. Output: `nonce (12) || ciphertext || tag (16)`.
pub struct Sealer {
    key: aead::LessSafeKey,
}

impl Sealer {
    /// A sealer for a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        // A 32-byte key is always valid for CHACHA20_POLY1305; `UnboundKey::new` fails only on a wrong length.
        let unbound = match aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key) {
            Ok(k) => k,
            Err(_) => unreachable!("CHACHA20_POLY1305 takes a 32-byte key"),
        };
        Self { key: aead::LessSafeKey::new(unbound) }
    }

    /// Encrypts and authenticates `plaintext`, binding `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        fill_random(&mut nonce);
        let mut out = Vec::with_capacity(aead::NONCE_LEN + plaintext.len() + aead::MAX_TAG_LEN);
        out.extend_from_slice(&nonce);
        let mut buf = plaintext.to_vec();
        // Sealing fails only when the message exceeds ChaCha20's 256 GiB limit.
        match self.key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut buf,
        ) {
            Ok(()) => {}
            Err(_) => unreachable!("message within the AEAD size limit"),
        }
        out.extend_from_slice(&buf);
        out
    }

    /// Encrypts `data` in place (the tag is appended) and returns the random nonce, for large payloads that must
    /// not be copied.
    pub fn seal_in_place(&self, aad: &[u8], data: &mut Vec<u8>) -> [u8; aead::NONCE_LEN] {
        let mut nonce = [0u8; aead::NONCE_LEN];
        fill_random(&mut nonce);
        match self.key.seal_in_place_append_tag(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::from(aad), data) {
            Ok(()) => {}
            Err(_) => unreachable!("message within the AEAD size limit"),
        }
        nonce
    }

    /// Authenticates and decrypts `nonce ‖ ciphertext ‖ tag` in place; returns the plaintext's length.
    pub fn open_in_place(&self, aad: &[u8], sealed: &mut [u8]) -> Result<std::ops::Range<usize>, OpenError> {
        if sealed.len() < aead::NONCE_LEN + aead::MAX_TAG_LEN {
            return Err(OpenError);
        }
        let (nonce, rest) = sealed.split_at_mut(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError)?;
        let plain = self.key.open_in_place(nonce, aead::Aad::from(aad), rest).map_err(|_| OpenError)?;
        let len = plain.len();
        Ok(aead::NONCE_LEN..aead::NONCE_LEN + len)
    }

    /// Authenticates and decrypts what [`Sealer::seal`] produced with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < aead::NONCE_LEN + aead::MAX_TAG_LEN {
            return Err(OpenError);
        }
        let (nonce, rest) = sealed.split_at(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError)?;
        let mut buf = rest.to_vec();
        let plain = self.key.open_in_place(nonce, aead::Aad::from(aad), &mut buf).map_err(|_| OpenError)?;
        Ok(plain.to_vec())
    }
}

/// A 256-bit key for `purpose` derived from `secret` (HMAC-SHA256 with the purpose as message): keys for different
/// purposes are independent, and none reveals `secret`.
pub fn derive_key(secret: &[u8; 32], purpose: &str) -> [u8; 32] {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret), purpose.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(&tag.as_ref()[..32]);
    key
}

/// HMAC-SHA256 under a key that never leaves the process.
pub struct Mac {
    key: ring::hmac::Key,
}

impl Mac {
    /// A MAC under a fresh random key: what it signs is recognised only by this process, until it restarts.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        fill_random(&mut key);
        Self { key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key) }
    }

    /// A MAC under a key derived from `secret` for `purpose`: every process with the same secret recognises it.
    pub fn derived(secret: &[u8; 32], purpose: &str) -> Self {
        Self { key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &derive_key(secret, purpose)) }
    }

    /// The first 128 bits of the tag of `data`, base64url (22 characters).
    pub fn tag(&self, data: &[u8]) -> String {
        let tag = ring::hmac::sign(&self.key, data);
        URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16])
    }

    /// Whether `tag` is [`Mac::tag`] of `data`, compared in constant time.
    pub fn verify(&self, data: &[u8], tag: &str) -> bool {
        constant_time_eq(self.tag(data).as_bytes(), tag.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_256_bit_and_distinct() {
        let a = random_token();
        let b = random_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn token_hash_matches_only_its_token() {
        let h = TokenHash::of("secret-one");
        assert!(h.matches("secret-one"));
        assert!(!h.matches("secret-two"));
        assert!(!format!("{h:?}").contains("secret"));
    }

    #[test]
    fn sealed_data_opens_only_with_same_key_and_aad() {
        let s = Sealer::new(&[7u8; 32]);
        let sealed = s.seal(b"aad", b"hello");
        assert_eq!(s.open(b"aad", &sealed).as_deref(), Ok(&b"hello"[..]));
        assert_eq!(s.open(b"other", &sealed), Err(OpenError));
        assert_eq!(Sealer::new(&[8u8; 32]).open(b"aad", &sealed), Err(OpenError));
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert_eq!(s.open(b"aad", &flipped), Err(OpenError));
    }

    #[test]
    fn mac_tags_verify_only_under_their_key() {
        let mac = Mac::random();
        let tag = mac.tag(b"value");
        assert_eq!(tag.len(), 22);
        assert!(mac.verify(b"value", &tag));
        assert!(!mac.verify(b"other", &tag));
        assert!(!Mac::random().verify(b"value", &tag));
    }
}
