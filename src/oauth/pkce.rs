//! PKCE (RFC 7636) as the proxy's authorization server requires it: `S256` only (OAuth 2.1 §4.1.1, MCP
//! authorization spec); `plain` and a missing method are refused.

use crate::crypto;

/// RFC 7636 §4.1: 43–128 characters of `[A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~"`. The same grammar holds
/// for an S256 challenge, which is exactly 43 characters of base64url.
pub fn is_valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An S256 challenge is the base64url (no padding) of a SHA-256 digest: 43 characters.
pub fn is_valid_s256_challenge(c: &str) -> bool {
    c.len() == 43 && c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// RFC 7636 §4.6: `BASE64URL(SHA256(verifier)) == challenge`, compared in constant time.
pub fn verify_s256(verifier: &str, challenge: &str) -> bool {
    is_valid_verifier(verifier)
        && crypto::constant_time_eq(crypto::pkce_s256(verifier).as_bytes(), challenge.as_bytes())
}

/// A fresh verifier for the proxy's own flow toward the IdP (256 bits, 43 characters).
pub fn new_verifier() -> String {
    crypto::random_token()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_example_verifies_and_a_wrong_verifier_does_not() {
        let v = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let c = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(is_valid_s256_challenge(c));
        assert!(verify_s256(v, c));
        assert!(!verify_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK", c));
    }

    #[test]
    fn short_or_illegal_verifiers_are_invalid() {
        assert!(!is_valid_verifier("short"));
        assert!(!is_valid_verifier(&"a".repeat(129)));
        assert!(!is_valid_verifier(&format!("{}+", "a".repeat(43))));
        assert!(is_valid_verifier(&new_verifier()));
    }
}
