//! Clients' public keys (RFC 7517 JSON Web Key Sets) and the signature check of what they sign (RFC 7515 JWS,
//! RFC 7518 §3), for `private_key_jwt` client authentication (RFC 7523 §2.2).
//!
//! Invariants:
//! - Only asymmetric algorithms from [`ALGORITHMS`] are accepted: RS256, PS256, ES256 and EdDSA. `none` and every
//!   HMAC algorithm are refused before any key is looked at, so that a public key can never be used as an HMAC
//!   secret (the key-confusion forgery).
//! - The algorithm must fit the key: RS256/PS256 an RSA key of at least 2048 bits, ES256 an EC key on P-256,
//!   EdDSA an OKP key on Ed25519. A key whose `alg` names another algorithm, or whose `use` is not `sig`, is not
//!   used for that algorithm.
//! - The key is chosen by the header's `kid` when there is one (an unknown `kid` is [`SignatureError::UnknownKey`],
//!   which lets the caller fetch the set again); without `kid`, every key of the algorithm's type is tried.
//! - A header with `crit` is refused (RFC 7515 §4.1.11: no extension is understood here).
//! - A key set that a client registers inline ([`KeySet::parse_registered`]) must hold at least one usable key and
//!   no private or symmetric key material; a set fetched from a `jwks_uri` ([`KeySet::parse_published`]) keeps the
//!   usable keys and skips the others (a provider may publish keys of types this server does not use).
//!
//! The signature itself is checked by `jsonwebtoken` (ring). Claims are not judged here: that is the rule of the
//! caller (`endpoints::client_auth`), which reads them from the verified payload this module returns.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// The signing algorithms accepted in client assertions, in the order they are advertised.
pub const ALGORITHMS: [Algorithm; 4] = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA];

/// The most keys kept from one set.
pub const MAX_KEYS: usize = 32;

/// The JWA name of an accepted algorithm.
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::PS256 => "PS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES384 => "ES384",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
    }
}

/// An accepted algorithm by its JWA name; `None` for anything else (`none`, HMAC, unknown).
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    ALGORITHMS.into_iter().find(|a| algorithm_name(*a) == name)
}

/// The names of [`ALGORITHMS`], for metadata and messages.
pub fn algorithm_names() -> Vec<&'static str> {
    ALGORITHMS.into_iter().map(algorithm_name).collect()
}

/// What kind of key a JWK is, as far as the accepted algorithms care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    Ed25519,
}

impl KeyKind {
    /// Whether `alg` is used with keys of this kind.
    pub fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (Self::Rsa, Algorithm::RS256 | Algorithm::PS256)
                | (Self::EcP256, Algorithm::ES256)
                | (Self::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// One usable public key.
#[derive(Clone)]
struct PublicKey {
    kid: Option<String>,
    kind: KeyKind,
    /// The key's own `alg`, when it names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// A client's usable public keys, with the JSON they were read from (kept, echoed and stored as sent).
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<PublicKey>,
    json: String,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_deref().unwrap_or("-")).collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl PartialEq for KeySet {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl Eq for KeySet {}

/// Why a key set cannot be used. Messages name the key (by index and `kid`) and the member at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("the key set is not a JSON object with a `keys` array")]
    NotASet,
    #[error("the key set holds more than {MAX_KEYS} keys")]
    TooManyKeys,
    #[error("{0}")]
    BadKey(String),
    #[error("the key set holds no key usable with {}", algorithm_names().join(", "))]
    NoUsableKey,
}

/// Members that only a private or symmetric key has: a registered set must not contain them.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

impl KeySet {
    /// A set registered inline (RFC 7591 `jwks`): every key must be a usable public key.
    pub fn parse_registered(value: &Value) -> Result<Self, KeySetError> {
        Self::parse(value, true)
    }

    /// A set published at a `jwks_uri`: the usable public keys; keys of other types are skipped, but a set
    /// with no usable key is refused.
    pub fn parse_published(body: &[u8]) -> Result<Self, KeySetError> {
        let value: Value = serde_json::from_slice(body).map_err(|_| KeySetError::NotASet)?;
        Self::parse(&value, false)
    }

    /// A set stored by this server (snapshot, Redis), which was checked when it was registered.
    pub fn from_stored(json: &str) -> Result<Self, KeySetError> {
        let value: Value = serde_json::from_str(json).map_err(|_| KeySetError::NotASet)?;
        Self::parse(&value, true)
    }

    fn parse(value: &Value, strict: bool) -> Result<Self, KeySetError> {
        let items = value.get("keys").and_then(Value::as_array).ok_or(KeySetError::NotASet)?;
        if items.len() > MAX_KEYS {
            return Err(KeySetError::TooManyKeys);
        }
        let mut keys = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match public_key(item) {
                Ok(key) => keys.push(key),
                Err(why) if strict => {
                    let kid =
                        item.get("kid").and_then(Value::as_str).map(|k| format!(" (kid `{k}`)")).unwrap_or_default();
                    return Err(KeySetError::BadKey(format!("key {i}{kid}: {why}")));
                }
                Err(_) => {}
            }
        }
        if keys.is_empty() {
            return Err(KeySetError::NoUsableKey);
        }
        Ok(Self { keys, json: value.to_string() })
    }

    /// The set as JSON (what was registered or fetched).
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key (never true for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// One JWK → a usable public key, or why not.
fn public_key(jwk: &Value) -> Result<PublicKey, String> {
    let obj = jwk.as_object().ok_or("not a JSON object")?;
    let text = |name: &str| -> Result<Option<&str>, String> {
        match obj.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("`{name}` is not a string")),
        }
    };
    if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| obj.contains_key(**m)) {
        return Err(format!("it holds private or symmetric key material (`{member}`); publish public keys only"));
    }
    if let Some(usage) = text("use")? {
        if usage != "sig" {
            return Err(format!("`use` is `{usage}`, not `sig`"));
        }
    }
    let alg =
        match text("alg")? {
            None => None,
            Some(name) => Some(parse_algorithm(name).ok_or_else(|| {
                format!("`alg` `{name}` is not accepted; use one of {}", algorithm_names().join(", "))
            })?),
        };
    let kid = text("kid")?.map(str::to_owned);
    let need = |name: &str| -> Result<&str, String> { text(name)?.ok_or_else(|| format!("`{name}` is missing")) };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        URL_SAFE_NO_PAD.decode(need(name)?).map_err(|_| format!("`{name}` is not base64url without padding"))
    };
    let (kind, key) = match need("kty")? {
        "RSA" => {
            let n = bytes("n")?;
            bytes("e")?;
            let bits = n.iter().position(|b| *b != 0).map_or(0, |first| (n.len() - first) * 8);
            if bits < 2048 {
                return Err("the RSA modulus is shorter than 2048 bits".to_owned());
            }
            let key = DecodingKey::from_rsa_components(need("n")?, need("e")?).map_err(|e| e.to_string())?;
            (KeyKind::Rsa, key)
        }
        "EC" => {
            let crv = need("crv")?;
            if crv != "P-256" {
                return Err(format!("curve `{crv}` is not accepted (ES256 needs P-256)"));
            }
            if bytes("x")?.len() != 32 || bytes("y")?.len() != 32 {
                return Err("`x` and `y` of a P-256 key are 32 bytes each".to_owned());
            }
            let key = DecodingKey::from_ec_components(need("x")?, need("y")?).map_err(|e| e.to_string())?;
            (KeyKind::EcP256, key)
        }
        "OKP" => {
            let crv = need("crv")?;
            if crv != "Ed25519" {
                return Err(format!("curve `{crv}` is not accepted (EdDSA needs Ed25519)"));
            }
            if bytes("x")?.len() != 32 {
                return Err("`x` of an Ed25519 key is 32 bytes".to_owned());
            }
            let key = DecodingKey::from_ed_components(need("x")?).map_err(|e| e.to_string())?;
            (KeyKind::Ed25519, key)
        }
        "oct" => return Err("symmetric keys (`kty` oct) are not accepted".to_owned()),
        other => return Err(format!("`kty` `{other}` is not accepted (RSA, EC or OKP)")),
    };
    if let Some(alg) = alg {
        if !kind.fits(alg) {
            return Err(format!("`alg` {} does not fit a key of type {kind:?}", algorithm_name(alg)));
        }
    }
    Ok(PublicKey { kid, kind, alg, key })
}

/// Why a signature was not accepted. Messages are safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the assertion is not a compact JWS ({0})")]
    Malformed(String),
    #[error("the assertion's `alg` `{0}` is not accepted; use one of RS256, PS256, ES256, EdDSA")]
    AlgorithmNotAllowed(String),
    #[error("the assertion's `alg` {found} is not the client's token_endpoint_auth_signing_alg {registered}")]
    AlgorithmNotRegistered { found: &'static str, registered: &'static str },
    #[error("the assertion's header has `crit` members, which this server does not understand")]
    Critical,
    #[error("no key of the client has the `kid` `{0}`")]
    UnknownKey(String),
    #[error("the client has no key for `alg` {0}")]
    NoKeyForAlgorithm(&'static str),
    #[error("the assertion's signature does not verify with the client's key")]
    BadSignature,
}

/// A JWS whose signature verified: its header's algorithm and its claims.
#[derive(Debug, Clone)]
pub struct Verified {
    pub alg: Algorithm,
    pub claims: Map<String, Value>,
}

/// The claims of a compact JWS, read without checking anything (to learn who it claims to be from).
pub fn peek_claims(jws: &str) -> Option<Map<String, Value>> {
    let payload = jws.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?.as_object().cloned()
}

/// Checks the signature of the compact JWS `jws` against `keys`. `registered_alg`: the client's
/// `token_endpoint_auth_signing_alg`, when it named one (then no other algorithm is accepted).
pub fn verify(jws: &str, keys: &KeySet, registered_alg: Option<Algorithm>) -> Result<Verified, SignatureError> {
    let mut parts = jws.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(SignatureError::Malformed("it must have three dot-separated parts".into()));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.as_object().cloned())
        .ok_or_else(|| SignatureError::Malformed("the header is not base64url-encoded JSON".into()))?;
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let alg = parse_algorithm(alg_name).ok_or_else(|| SignatureError::AlgorithmNotAllowed(shorten(alg_name)))?;
    if let Some(registered) = registered_alg.filter(|r| *r != alg) {
        return Err(SignatureError::AlgorithmNotRegistered {
            found: algorithm_name(alg),
            registered: algorithm_name(registered),
        });
    }
    if header.contains_key("crit") {
        return Err(SignatureError::Critical);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(SignatureError::Malformed("`kid` is not a string".into())),
    };
    let candidates: Vec<&PublicKey> = match kid {
        Some(kid) => {
            let named: Vec<&PublicKey> = keys.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect();
            if named.is_empty() {
                return Err(SignatureError::UnknownKey(shorten(kid)));
            }
            named
        }
        None => keys.keys.iter().collect(),
    };
    let usable: Vec<&PublicKey> =
        candidates.into_iter().filter(|k| k.kind.fits(alg) && k.alg.is_none_or(|a| a == alg)).collect();
    if usable.is_empty() {
        return Err(SignatureError::NoKeyForAlgorithm(algorithm_name(alg)));
    }
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    for key in usable {
        if let Ok(data) = jsonwebtoken::decode::<Map<String, Value>>(jws, &key.key, &validation) {
            return Ok(Verified { alg, claims: data.claims });
        }
    }
    Err(SignatureError::BadSignature)
}

/// A value from an assertion, cut for messages.
fn shorten(s: &str) -> String {
    let cut: String = s.chars().filter(|c| !c.is_control()).take(64).collect();
    if cut.len() < s.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::json;

    use super::*;

    struct Ec {
        pkcs8: Vec<u8>,
        jwk: Value,
    }

    fn ec(kid: &str) -> Ec {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap_or_else(|_| panic!());
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap_or_else(|_| panic!());
        let point = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
        Ec { pkcs8: pkcs8.as_ref().to_vec(), jwk }
    }

    fn ed(kid: &str) -> Ec {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap_or_else(|_| panic!());
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap_or_else(|_| panic!());
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())});
        Ec { pkcs8: pkcs8.as_ref().to_vec(), jwk }
    }

    fn set(keys: &[&Value]) -> KeySet {
        KeySet::parse_registered(&json!({ "keys": keys })).unwrap_or_else(|e| panic!("{e}"))
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &json!({"iss": "c", "sub": "c"}), key).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn es256_and_eddsa_verify_by_kid_and_without_kid() {
        let (a, b) = (ec("a"), ed("b"));
        let keys = set(&[&a.jwk, &b.jwk]);
        let es = EncodingKey::from_ec_der(&a.pkcs8);
        let edk = EncodingKey::from_ed_der(&b.pkcs8);
        assert!(verify(&sign(Algorithm::ES256, Some("a"), &es), &keys, None).is_ok());
        assert!(verify(&sign(Algorithm::ES256, None, &es), &keys, None).is_ok());
        assert!(verify(&sign(Algorithm::EdDSA, Some("b"), &edk), &keys, None).is_ok());
        let claims = verify(&sign(Algorithm::EdDSA, None, &edk), &keys, None).map(|v| v.claims);
        assert_eq!(claims.ok().and_then(|c| c.get("sub").cloned()), Some(json!("c")));
        // The registered algorithm is the only one accepted.
        assert!(matches!(
            verify(&sign(Algorithm::EdDSA, Some("b"), &edk), &keys, Some(Algorithm::ES256)),
            Err(SignatureError::AlgorithmNotRegistered { .. })
        ));
    }

    #[test]
    fn a_strangers_key_an_unknown_kid_and_a_mismatched_kid_fail() {
        let (mine, stranger) = (ec("mine"), ec("stranger"));
        let keys = set(&[&mine.jwk]);
        let theirs = EncodingKey::from_ec_der(&stranger.pkcs8);
        assert_eq!(
            verify(&sign(Algorithm::ES256, Some("mine"), &theirs), &keys, None).err(),
            Some(SignatureError::BadSignature)
        );
        assert_eq!(
            verify(&sign(Algorithm::ES256, None, &theirs), &keys, None).err(),
            Some(SignatureError::BadSignature)
        );
        assert!(matches!(
            verify(&sign(Algorithm::ES256, Some("nope"), &theirs), &keys, None),
            Err(SignatureError::UnknownKey(k)) if k == "nope"
        ));
        // An EdDSA header naming the EC key's kid: the algorithm does not fit the key.
        let e = ed("x");
        assert_eq!(
            verify(&sign(Algorithm::EdDSA, Some("mine"), &EncodingKey::from_ed_der(&e.pkcs8)), &keys, None).err(),
            Some(SignatureError::NoKeyForAlgorithm("EdDSA"))
        );
    }

    #[test]
    fn none_and_hmac_are_refused_whatever_the_key() {
        let a = ec("a");
        let keys = set(&[&a.jwk]);
        let body = URL_SAFE_NO_PAD.encode(br#"{"iss":"c","sub":"c"}"#);
        let none = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"a"}"#));
        assert!(matches!(verify(&none, &keys, None), Err(SignatureError::AlgorithmNotAllowed(a)) if a == "none"));
        // HS256 keyed with the public key's JSON (the classic confusion forgery).
        let hs = EncodingKey::from_secret(a.jwk.to_string().as_bytes());
        assert!(matches!(
            verify(&sign(Algorithm::HS256, Some("a"), &hs), &keys, None),
            Err(SignatureError::AlgorithmNotAllowed(a)) if a == "HS256"
        ));
        let crit =
            format!("{}.{body}.sig", URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"a","crit":["exp"],"exp":1}"#));
        assert_eq!(verify(&crit, &keys, None).err(), Some(SignatureError::Critical));
        assert!(matches!(verify("a.b", &keys, None), Err(SignatureError::Malformed(_))));
        assert!(matches!(verify("a.b.c.d", &keys, None), Err(SignatureError::Malformed(_))));
    }

    #[test]
    fn registered_sets_refuse_private_symmetric_weak_and_mismatched_keys() {
        let ok = ec("ok").jwk;
        let with = |k: &str, v: Value| {
            let mut j = ok.clone();
            j[k] = v;
            j
        };
        let refused = |key: Value| KeySet::parse_registered(&json!({"keys": [key]})).err();
        assert!(matches!(refused(with("d", json!("AAAA"))), Some(KeySetError::BadKey(m)) if m.contains("`d`")));
        assert!(matches!(refused(json!({"kty": "oct", "k": "c2VjcmV0"})), Some(KeySetError::BadKey(_))));
        assert!(matches!(refused(with("crv", json!("P-384"))), Some(KeySetError::BadKey(m)) if m.contains("P-384")));
        assert!(matches!(refused(with("use", json!("enc"))), Some(KeySetError::BadKey(_))));
        assert!(matches!(refused(with("alg", json!("RS256"))), Some(KeySetError::BadKey(_))));
        assert!(matches!(refused(with("alg", json!("HS256"))), Some(KeySetError::BadKey(_))));
        let short_rsa = json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 128]), "e": "AQAB"});
        assert!(matches!(refused(short_rsa), Some(KeySetError::BadKey(m)) if m.contains("2048")));
        assert_eq!(KeySet::parse_registered(&json!({"keys": []})).err(), Some(KeySetError::NoUsableKey));
        assert_eq!(KeySet::parse_registered(&json!([ok])).err(), Some(KeySetError::NotASet));
        // A published set skips what it cannot use, but needs one usable key.
        let published = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}, ok]}).to_string();
        assert_eq!(KeySet::parse_published(published.as_bytes()).map(|s| s.len()).ok(), Some(1));
        assert!(KeySet::parse_published(br#"{"keys":[{"kty":"oct","k":"eA"}]}"#).is_err());
        let stored = set(&[&ok]);
        assert_eq!(KeySet::from_stored(stored.json()).ok(), Some(stored));
    }
}
