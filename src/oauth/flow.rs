//! The sign-in in flight (SPEC §4): `/authorize` → consent → IdP (or the local login) → `/callback` → code.
//!
//! The server keeps nothing for a sign-in before the user approves it, and afterwards only a single-use record,
//! so that no unauthenticated client can fill a shared table and lock everyone else out (issue 10, item 4).
//! The validated authorization request (RFC 6749 §4.1.1) travels with the browser instead, sealed:
//!
//! - The consent form carries a [`ConsentTicket`]: the request, its expiry, the hash of the browser-binding
//!   cookie and the hash of the form's CSRF token. After approval the IdP `state` (or the local login's `state`)
//!   is an [`IdpTicket`]: the same request plus the proxy's PKCE verifier (RFC 7636) and OIDC nonce toward the IdP.
//!
//! Invariants:
//! - Tickets are sealed with ChaCha20-Poly1305 under a per-process random key, with the ticket's kind as AAD: the
//!   browser carries them but can neither read nor change them, and a consent ticket is never accepted as an IdP
//!   state or the reverse. A restart ends the sign-ins in flight, as the in-memory table did before. With
//!   `store.backend = "redis"` the sealing and cookie keys are derived from the configured key instead
//!   ([`SignIns::from_key`]), so that every replica opens what another sealed; the single-use record is in Redis.
//! - [`SignIns::open_live`] is the one check that a sign-in is live (unexpired) and belongs to this browser (the
//!   request carries the binding cookie whose hash is sealed in the ticket) — the rule of CVE-2026-27124.
//! - The binding cookie is minted by the proxy only: `<256-bit random>.<HMAC-SHA256 tag>` under a per-process
//!   key. A value without a valid tag is ignored, never adopted, so a browser (or whoever planted a cookie in it)
//!   cannot choose the value a sign-in is bound to.
//! - Each consent form and each IdP state is used once: [`crate::store::SingleUse`] records the tickets spent,
//!   until they expire (the oldest are forgotten first when `limits.max_pending` is reached: a forgotten ticket
//!   can then be replayed only by the same browser, within its ten minutes, and an IdP code is single use anyway).

use http::HeaderMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::clock::UnixTime;
use crate::crypto::{self, Mac, Sealer, TokenHash};
use crate::oauth::cookies;
use crate::store::AuthorizationRequest;

/// Longest sealed ticket accepted, in characters: a state of `limits.max_state_bytes` (at most 4 KiB) plus the
/// request's other fields fit with room to spare; anything longer is refused before it is decoded.
pub const MAX_TICKET_CHARS: usize = 16 * 1024;

/// A validated authorization request on its way through consent and the IdP.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingAuthorization {
    pub request: AuthorizationRequest,
    /// Hash of the browser-binding cookie the sign-in belongs to.
    pub browser: TokenHash,
    pub expires_at: UnixTime,
}

/// What the consent form carries.
#[derive(Serialize, Deserialize)]
pub struct ConsentTicket {
    id: [u8; 16],
    /// Hash of the CSRF token embedded beside the ticket in the form.
    pub csrf: TokenHash,
    pub pending: PendingAuthorization,
}

/// What the IdP `state` carries once the user approved. No `Debug`: it holds the PKCE verifier.
#[derive(Serialize, Deserialize)]
pub struct IdpTicket {
    id: [u8; 16],
    /// The proxy's own PKCE verifier toward the IdP.
    pub pkce_verifier: String,
    pub nonce: String,
    pub pending: PendingAuthorization,
}

fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    crypto::fill_random(&mut id);
    id
}

impl ConsentTicket {
    pub fn new(pending: PendingAuthorization, csrf: &str) -> Self {
        Self { id: random_id(), csrf: TokenHash::of(csrf), pending }
    }
}

impl IdpTicket {
    pub fn new(pending: PendingAuthorization, pkce_verifier: String, nonce: String) -> Self {
        Self { id: random_id(), pkce_verifier, nonce, pending }
    }
}

/// A sealed step of a sign-in.
pub trait Ticket: Serialize + DeserializeOwned {
    /// The AEAD's associated data: a ticket opens only as its own kind.
    const KIND: &'static [u8];
    fn pending(&self) -> &PendingAuthorization;
    fn id(&self) -> [u8; 16];

    /// The key under which [`crate::store::SingleUse`] remembers that this ticket was used.
    fn use_key(&self) -> TokenHash {
        let mut data = Self::KIND.to_vec();
        data.extend_from_slice(&self.id());
        TokenHash(crypto::sha256(&data))
    }
}

impl Ticket for ConsentTicket {
    const KIND: &'static [u8] = b"dcr-proxy consent v1";
    fn pending(&self) -> &PendingAuthorization {
        &self.pending
    }
    fn id(&self) -> [u8; 16] {
        self.id
    }
}

impl Ticket for IdpTicket {
    const KIND: &'static [u8] = b"dcr-proxy idp state v1";
    fn pending(&self) -> &PendingAuthorization {
        &self.pending
    }
    fn id(&self) -> [u8; 16] {
        self.id
    }
}

/// The per-process keys of sign-ins in flight.
pub struct SignIns {
    sealer: Sealer,
    cookie_mac: Mac,
    https: bool,
}

impl SignIns {
    /// Fresh random keys; `https` chooses the cookie's name (`__Host-dcrp` or `dcrp`).
    pub fn new(https: bool) -> Self {
        let mut key = [0u8; 32];
        crypto::fill_random(&mut key);
        Self { sealer: Sealer::new(&key), cookie_mac: Mac::random(), https }
    }

    /// Keys derived from the configured key (`backend = "redis"`): every replica opens what another sealed, so a
    /// sign-in may start on one replica and finish on another.
    pub fn from_key(key: &[u8; 32], https: bool) -> Self {
        Self {
            sealer: Sealer::new(&crypto::derive_key(key, "dcr-proxy sign-in seal v1")),
            cookie_mac: Mac::derived(key, "dcr-proxy browser binding v1"),
            https,
        }
    }

    /// Seals a ticket for the browser to carry (base64url).
    pub fn seal<T: Ticket>(&self, ticket: &T) -> String {
        // Serialising plain strings, booleans and integers cannot fail; an empty ticket would not open.
        let plain = postcard::to_stdvec(ticket).unwrap_or_default();
        crypto::b64url(&self.sealer.seal(T::KIND, &plain))
    }

    /// Opens a ticket and checks that its sign-in is live and belongs to the browser that sent `headers`.
    /// `None` for anything else: forged, altered, of another kind, expired, or from another browser.
    pub fn open_live<T: Ticket>(&self, sealed: &str, headers: &HeaderMap, now: UnixTime) -> Option<T> {
        use base64::Engine as _;
        if sealed.len() > MAX_TICKET_CHARS {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sealed).ok()?;
        let plain = self.sealer.open(T::KIND, &bytes).ok()?;
        let ticket: T = postcard::from_bytes(&plain).ok()?;
        let pending = ticket.pending();
        let same_browser = self.browser_cookie(headers).is_some_and(|c| TokenHash::of(&c) == pending.browser);
        (pending.expires_at > now && same_browser).then_some(ticket)
    }

    /// The request's binding cookie, only if this process minted it.
    pub fn browser_cookie(&self, headers: &HeaderMap) -> Option<String> {
        cookies::cookie_values(headers, self.https)
            .into_iter()
            .find(|v| v.split_once('.').is_some_and(|(value, tag)| self.cookie_mac.verify(value.as_bytes(), tag)))
            .map(str::to_owned)
    }

    /// The key under which what Entra requires of a person's next sign-in is kept (issue 23 item 11): a tag of
    /// their subject, so that the cookie holding it ([`cookies::person_cookie_name`]) names nobody and cannot be
    /// computed for someone else. Stable across replicas with `backend = "redis"` (derived key), per process else.
    pub fn person_key(&self, sub: &str) -> String {
        format!("p.{}", self.cookie_mac.tag(format!("dcr-proxy person\0{sub}").as_bytes()))
    }

    /// The person key of the browser that sent `headers` ([`SignIns::person_key`] of who last signed in there),
    /// if it has one of that shape.
    pub fn person_cookie(&self, headers: &HeaderMap) -> Option<String> {
        cookies::named_cookie_values(headers, cookies::person_cookie_name(self.https))
            .into_iter()
            .find(|v| {
                v.strip_prefix("p.").is_some_and(|t| {
                    t.len() == 22 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
            })
            .map(str::to_owned)
    }

    /// The key of the browser binding `browser` (a sign-in that failed at the callback names no person yet).
    pub fn browser_key(browser: &TokenHash) -> String {
        use base64::Engine as _;
        format!("b.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(browser.0))
    }

    /// Whether cookies are `__Host-` and `Secure`.
    pub fn https(&self) -> bool {
        self.https
    }

    /// A new binding cookie value: 256 random bits and their tag.
    pub fn mint_cookie(&self) -> String {
        let value = crypto::random_token();
        let tag = self.cookie_mac.tag(value.as_bytes());
        format!("{value}.{tag}")
    }
}

#[cfg(test)]
mod tests {
    use http::{header, HeaderValue};

    use super::*;

    fn pending(browser: &str, expires_at: UnixTime) -> PendingAuthorization {
        PendingAuthorization {
            request: AuthorizationRequest {
                client_id: "c1".into(),
                redirect_uri: "https://app.example/cb".into(),
                redirect_uri_explicit: true,
                state: Some("xyz".into()),
                code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
                scope: vec!["openid".into()],
                resource: None,
            },
            browser: TokenHash::of(browser),
            expires_at,
        }
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("other=1; dcrp={value}")) {
            h.insert(header::COOKIE, v);
        }
        h
    }

    #[test]
    fn a_ticket_opens_only_live_in_its_browser_and_as_its_kind() {
        let s = SignIns::new(false);
        let cookie = s.mint_cookie();
        let sealed = s.seal(&ConsentTicket::new(pending(&cookie, 100), "csrf"));
        let ok = s.open_live::<ConsentTicket>(&sealed, &with_cookie(&cookie), 99);
        assert_eq!(ok.map(|t| t.pending.request.state), Some(Some("xyz".to_owned())));
        assert!(s.open_live::<ConsentTicket>(&sealed, &with_cookie(&cookie), 100).is_none(), "expired");
        assert!(s.open_live::<ConsentTicket>(&sealed, &with_cookie(&s.mint_cookie()), 99).is_none(), "browser");
        assert!(s.open_live::<ConsentTicket>(&sealed, &HeaderMap::new(), 99).is_none(), "no cookie");
        assert!(s.open_live::<IdpTicket>(&sealed, &with_cookie(&cookie), 99).is_none(), "kind");
        assert!(SignIns::new(false).open_live::<ConsentTicket>(&sealed, &with_cookie(&cookie), 99).is_none());
        let mut altered = sealed.into_bytes();
        altered[30] = if altered[30] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap_or_default();
        assert!(s.open_live::<ConsentTicket>(&altered, &with_cookie(&cookie), 99).is_none(), "altered");
    }

    #[test]
    fn only_cookies_this_process_minted_are_recognised() {
        let s = SignIns::new(false);
        let minted = s.mint_cookie();
        assert_eq!(s.browser_cookie(&with_cookie(&minted)), Some(minted.clone()));
        assert_eq!(s.browser_cookie(&with_cookie(&"A".repeat(43))), None);
        let (value, _) = minted.split_once('.').unwrap_or_default();
        assert_eq!(s.browser_cookie(&with_cookie(&format!("{value}.{}", "A".repeat(22)))), None);
        assert_eq!(SignIns::new(false).browser_cookie(&with_cookie(&minted)), None);
    }

    #[test]
    fn use_keys_differ_by_kind_and_ticket() {
        let a = ConsentTicket::new(pending("b", 1), "c");
        let b = ConsentTicket::new(pending("b", 1), "c");
        assert_ne!(a.use_key(), b.use_key());
        let idp = IdpTicket { id: a.id, pkce_verifier: String::new(), nonce: String::new(), pending: pending("b", 1) };
        assert_ne!(a.use_key(), idp.use_key());
    }

    #[test]
    fn idp_states_stay_short_enough_for_an_idp_url() {
        let s = SignIns::new(true);
        let mut p = pending(&s.mint_cookie(), 100);
        p.request.client_id = crypto::random_token();
        p.request.redirect_uri = "https://claude.ai/api/mcp/auth_callback".into();
        p.request.state = Some(crypto::random_token());
        p.request.scope = ["openid", "profile", "email", "offline_access", "User.Read"].map(String::from).to_vec();
        p.request.resource = Some("https://mcp.example.com/mcp".into());
        let typical = s.seal(&IdpTicket::new(p.clone(), crate::oauth::pkce::new_verifier(), crypto::random_token()));
        assert!(typical.len() < 700, "{}", typical.len());
        p.request.state = Some("s".repeat(1024));
        let largest = s.seal(&IdpTicket::new(p, crate::oauth::pkce::new_verifier(), crypto::random_token()));
        assert!(largest.len() < 2100, "{}", largest.len());
    }
}
