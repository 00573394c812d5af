//! Client authentication at the token, revocation and introspection endpoints: one module, so that each client
//! authenticates the way it registered and only that way.
//!
//! - RFC 6749 §2.3.1: HTTP Basic (`client_secret_basic`) or `client_secret` in the body (`client_secret_post`);
//!   a confidential client may use either (many libraries mix them up), compared as SHA-256 hashes in constant time.
//! - RFC 7521 §4.2, RFC 7523 §2.2 and §3 (`private_key_jwt`): `client_assertion_type` =
//!   [`JWT_BEARER`] and `client_assertion`, a JWT signed with one of the client's keys ([`crate::jwk`]:
//!   RS256, PS256, ES256 or EdDSA, the key chosen by `kid`, the algorithm fitting the key), whose `iss` and `sub`
//!   are the client_id, `aud` this server's issuer or token endpoint (or the endpoint called), `exp` required,
//!   `iat`/`nbf` honoured with [`SKEW`], a life of at most [`MAX_LIFETIME`], and a `jti` used once until it expires
//!   (on every replica sharing the store).
//! - Public clients (`none`) send `client_id` alone.
//! - Exactly one credential: an assertion beside a secret or a Basic header, an assertion of another type, an
//!   assertion without its type (or the reverse), or a `client_id` field that differs from the client the other
//!   credential names, is `invalid_client` (401). A credential of another method than the client registered is
//!   `invalid_client` naming the method it registered.
//! - Nothing is spent before the client is authenticated: the handlers authenticate first, then redeem the code or
//!   rotate the refresh token. The `jti` is claimed only once the assertion has passed every other check.
//! - No assertion, secret or key material is logged or put in an error message; messages name the claim or
//!   parameter at fault.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::{header, HeaderMap};
use serde_json::{Map, Value};

use crate::app::App;
use crate::client_documents::DocumentError;
use crate::clock::UnixTime;
use crate::crypto::{self, TokenHash};
use crate::endpoint::Endpoint;
use crate::error::{Error, OAuthError};
use crate::http::params::Params;
use crate::jwk::{self, SignatureError};
use crate::store::{Client, ClientAuthMethod, ClientKeys};

/// RFC 7523 §2.2: the `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const SKEW: u64 = 60;

/// The longest life of an assertion (from `iat`, or from now without it), in seconds.
pub const MAX_LIFETIME: u64 = 600;

/// The longest `jti` accepted.
const MAX_JTI: usize = 256;

/// What a request presents to prove which client sends it. Its `Debug` shows the client, never the secret or
/// the assertion.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// `client_id` alone: a public client.
    Id(String),
    /// A shared secret, by HTTP Basic or in the body.
    Secret { client_id: String, secret: String },
    /// A signed JWT (RFC 7523 §2.2). `client_id`: the form's, or the assertion's `sub` when the form has none.
    Assertion { client_id: String, jwt: String },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}, {})", self.method_name(), self.client_id())
    }
}

impl Credential {
    /// The client the credential names.
    pub fn client_id(&self) -> &str {
        match self {
            Self::Id(id) | Self::Secret { client_id: id, .. } | Self::Assertion { client_id: id, .. } => id,
        }
    }

    /// The method this credential is an instance of (a secret: either secret method).
    fn method_name(&self) -> &'static str {
        match self {
            Self::Id(_) => "none",
            Self::Secret { .. } => "a client secret",
            Self::Assertion { .. } => "private_key_jwt",
        }
    }

    /// Reads the one credential of a request (see the module doc for what is refused).
    pub fn read(headers: &HeaderMap, params: &Params) -> Result<Self, OAuthError> {
        let basic = match headers.get(header::AUTHORIZATION) {
            Some(value) => Some(parse_basic(value.to_str().unwrap_or(""))?),
            None => None,
        };
        let form_id = params.get("client_id");
        let two = || OAuthError::invalid_client("use one client authentication method, not two");
        match (params.get("client_assertion_type"), params.get("client_assertion")) {
            (Some(kind), _) if kind != JWT_BEARER => Err(OAuthError::invalid_client(format!(
                "client_assertion_type must be {JWT_BEARER}; no other assertion type is accepted"
            ))),
            (Some(_), None) => {
                Err(OAuthError::invalid_client("client_assertion_type was sent without client_assertion"))
            }
            (None, Some(_)) => {
                Err(OAuthError::invalid_client("client_assertion was sent without client_assertion_type"))
            }
            (Some(_), Some(jwt)) => {
                if basic.is_some() || params.get("client_secret").is_some() {
                    return Err(two());
                }
                let sub = jwk::peek_claims(jwt)
                    .and_then(|c| c.get("sub").and_then(Value::as_str).map(str::to_owned))
                    .ok_or_else(|| {
                    OAuthError::invalid_client("client_assertion is not a JWT with a `sub` claim")
                })?;
                if form_id.is_some_and(|id| id != sub) {
                    return Err(OAuthError::invalid_client("client_id differs from the client_assertion's `sub`"));
                }
                Ok(Self::Assertion { client_id: sub, jwt: jwt.to_owned() })
            }
            (None, None) => match basic {
                Some((id, secret)) => {
                    if params.get("client_secret").is_some() {
                        return Err(two());
                    }
                    if form_id.is_some_and(|body_id| body_id != id) {
                        return Err(OAuthError::invalid_client("client_id differs from the Authorization header"));
                    }
                    Ok(Self::Secret { client_id: id, secret })
                }
                None => {
                    let id = form_id
                        .ok_or_else(|| OAuthError::invalid_client("client authentication is required"))?
                        .to_owned();
                    Ok(match params.get("client_secret") {
                        Some(secret) => Self::Secret { client_id: id, secret: secret.to_owned() },
                        None => Self::Id(id),
                    })
                }
            },
        }
    }
}

/// RFC 6749 §2.3.1: `Basic base64(urlencode(id) ":" urlencode(secret))`.
pub fn parse_basic(value: &str) -> Result<(String, String), OAuthError> {
    let bad = || OAuthError::invalid_client("malformed Basic authorization header");
    let (scheme, rest) = value.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client("the token endpoint accepts only Basic client authentication"));
    }
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let decode = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
    };
    let (id, secret) = (decode(id), decode(secret));
    if id.is_empty() {
        return Err(bad());
    }
    Ok((id, secret))
}

/// The checks that need no key: the credential is of the method the client registered, and a secret matches.
/// `Ok(true)`: authenticated; `Ok(false)`: an assertion, to be verified against the client's keys.
pub fn check_without_keys(client: &Client, credential: &Credential) -> Result<bool, OAuthError> {
    let registered = client.auth_method;
    let wrong = || {
        OAuthError::invalid_client(format!(
            "this client registered token_endpoint_auth_method {} and must authenticate that way, not with {}",
            registered.as_str(),
            credential.method_name()
        ))
    };
    match (registered, credential) {
        (ClientAuthMethod::None, Credential::Id(_)) => Ok(true),
        (
            ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost,
            Credential::Secret { secret, .. },
        ) => match client.secret_hash {
            Some(hash) if hash.matches(secret) => Ok(true),
            _ => Err(OAuthError::invalid_client("client authentication failed")),
        },
        (ClientAuthMethod::PrivateKeyJwt, Credential::Assertion { .. }) => Ok(false),
        (ClientAuthMethod::None, Credential::Secret { .. }) => Err(OAuthError::invalid_client(
            "this client was registered as a public client (token_endpoint_auth_method none) and has no secret",
        )),
        (_, Credential::Id(_)) => {
            Err(OAuthError::invalid_client(format!("client authentication is required ({})", registered.as_str())))
        }
        _ => Err(wrong()),
    }
}

/// What an assertion must say, besides being signed by the client.
#[derive(Debug, Clone)]
pub struct AssertionRules<'a> {
    pub client_id: &'a str,
    /// Accepted `aud` values: the issuer, the token endpoint, the endpoint called.
    pub audiences: &'a [String],
    pub now: UnixTime,
}

/// An assertion whose claims passed: its `jti` and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedAssertion {
    pub jti: String,
    pub expires_at: UnixTime,
}

impl AcceptedAssertion {
    /// The key under which the store remembers this `jti` as used (per client, so that two clients' `jti`s
    /// never collide).
    pub fn use_key(&self, client_id: &str) -> TokenHash {
        let mut input = b"dcr-proxy client assertion v1\0".to_vec();
        input.extend_from_slice(client_id.as_bytes());
        input.push(0);
        input.extend_from_slice(self.jti.as_bytes());
        TokenHash(crypto::sha256(&input))
    }
}

/// RFC 7523 §3: the claims of a verified assertion. Writes nothing.
pub fn check_claims(claims: &Map<String, Value>, rules: &AssertionRules<'_>) -> Result<AcceptedAssertion, OAuthError> {
    let bad = |m: String| Err(OAuthError::invalid_client(m));
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let time = |name: &str| -> Result<Option<UnixTime>, OAuthError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or_else(|| OAuthError::invalid_client(format!("client_assertion `{name}` is not a NumericDate"))),
        }
    };
    if text("iss") != Some(rules.client_id) {
        return bad("client_assertion `iss` must be the client_id".into());
    }
    if text("sub") != Some(rules.client_id) {
        return bad("client_assertion `sub` must be the client_id".into());
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => rules.audiences.iter().any(|ok| ok == a),
        Some(Value::Array(items)) if items.len() == 1 => {
            items[0].as_str().is_some_and(|a| rules.audiences.iter().any(|ok| ok == a))
        }
        _ => false,
    };
    if !aud_ok {
        return bad(format!(
            "client_assertion `aud` must be this server's issuer ({}) or its token endpoint",
            rules.audiences.first().map(String::as_str).unwrap_or("")
        ));
    }
    let Some(exp) = time("exp")? else {
        return bad("client_assertion has no `exp`".into());
    };
    if exp.saturating_add(SKEW) <= rules.now {
        return bad("client_assertion expired (`exp`)".into());
    }
    let iat = time("iat")?;
    if iat.is_some_and(|iat| iat > rules.now + SKEW) {
        return bad("client_assertion `iat` is in the future".into());
    }
    if time("nbf")?.is_some_and(|nbf| nbf > rules.now + SKEW) {
        return bad("client_assertion is not valid yet (`nbf`)".into());
    }
    let born = iat.unwrap_or(rules.now).min(rules.now);
    if exp.saturating_sub(born) > MAX_LIFETIME {
        return bad(format!("client_assertion lives longer than {MAX_LIFETIME} seconds (`exp` - `iat`)"));
    }
    let jti = match text("jti") {
        Some(j) if !j.is_empty() && j.len() <= MAX_JTI => j.to_owned(),
        Some(_) => return bad(format!("client_assertion `jti` must be 1 to {MAX_JTI} characters")),
        None => return bad("client_assertion has no `jti`".into()),
    };
    Ok(AcceptedAssertion { jti, expires_at: exp.saturating_add(SKEW) })
}

/// Why the client's keys could not be had.
fn key_error(e: &DocumentError) -> Error {
    if e.is_busy() {
        return Error::Capacity { what: "too many client key sets being fetched", html: false };
    }
    OAuthError::invalid_client(format!("the client's jwks_uri could not be used: {e}")).into()
}

fn signature_error(e: SignatureError) -> Error {
    OAuthError::invalid_client(format!("client_assertion refused: {e}")).into()
}

/// The audiences an assertion sent to `endpoint` may name.
pub fn audiences(public_url: &str, endpoint: Endpoint) -> Vec<String> {
    let mut out = vec![public_url.to_owned(), format!("{public_url}{}", Endpoint::Token.path().unwrap_or_default())];
    if endpoint != Endpoint::Token {
        out.push(format!("{public_url}{}", endpoint.path().unwrap_or_default()));
    }
    out
}

/// Authenticates `client` with the request's `credential` at `endpoint` (see the module doc).
pub async fn authenticate(
    app: &App,
    client: Arc<Client>,
    credential: &Credential,
    endpoint: Endpoint,
) -> Result<Arc<Client>, Error> {
    if check_without_keys(&client, credential)? {
        return Ok(client);
    }
    let Credential::Assertion { jwt, .. } = credential else {
        return Err(OAuthError::invalid_client("client authentication failed").into());
    };
    let now = app.clock.now();
    let verified = match &client.keys {
        Some(ClientKeys::Inline(set)) => jwk::verify(jwt, set, client.signing_alg).map_err(signature_error)?,
        Some(ClientKeys::Uri(uri)) => {
            let cache = &app.client_documents.keys;
            let (set, fetched) = cache.keys(uri, now, false, &app.metrics).await.map_err(|e| key_error(&e))?;
            match jwk::verify(jwt, &set, client.signing_alg) {
                // The client may have rotated its keys (a new kid, or a new key under an old or no kid): fetch
                // the set again (at most once per interval), unless it was fetched for this very request.
                Err(
                    SignatureError::UnknownKey(_) | SignatureError::NoKeyForAlgorithm(_) | SignatureError::BadSignature,
                ) if !fetched => {
                    let (again, _) = cache.keys(uri, now, true, &app.metrics).await.map_err(|e| key_error(&e))?;
                    jwk::verify(jwt, &again, client.signing_alg).map_err(signature_error)?
                }
                other => other.map_err(signature_error)?,
            }
        }
        None => return Err(OAuthError::invalid_client("this client has no keys to verify an assertion with").into()),
    };
    let audiences = audiences(&app.config.server.public_url, endpoint);
    let rules = AssertionRules { client_id: &client.client_id, audiences: &audiences, now };
    let accepted = check_claims(&verified.claims, &rules)?;
    if !app.store.claim_assertion(accepted.use_key(&client.client_id), accepted.expires_at, now).await? {
        tracing::warn!(client_id = %client.client_id, "client assertion replayed (its jti was already used)");
        return Err(OAuthError::invalid_client("client_assertion was already used (`jti`)").into());
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::ErrorCode;

    fn params(s: &str) -> Params {
        Params::parse(s.as_bytes()).unwrap_or_default()
    }

    fn jwt(claims: Value) -> String {
        let part = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", part(json!({"alg": "ES256"})), part(claims))
    }

    fn read(headers: &HeaderMap, body: &str) -> Result<Credential, ErrorCode> {
        Credential::read(headers, &params(body)).map_err(|e| e.code)
    }

    #[test]
    fn one_credential_is_read_and_two_are_refused() {
        let none = HeaderMap::new();
        let a = jwt(json!({"sub": "c1", "iss": "c1"}));
        let assertion = format!("client_assertion_type={}&client_assertion={a}", urlencode(JWT_BEARER));
        assert_eq!(read(&none, &assertion), Ok(Credential::Assertion { client_id: "c1".into(), jwt: a.clone() }));
        assert!(read(&none, &format!("{assertion}&client_id=c1")).is_ok());
        assert_eq!(read(&none, &format!("{assertion}&client_id=c2")), Err(ErrorCode::InvalidClient));
        assert_eq!(read(&none, &format!("{assertion}&client_secret=s")), Err(ErrorCode::InvalidClient));
        let mut basic = HeaderMap::new();
        basic.insert(header::AUTHORIZATION, http::HeaderValue::from_static("Basic YzE6cw=="));
        assert_eq!(read(&basic, &assertion), Err(ErrorCode::InvalidClient));
        assert_eq!(read(&basic, "client_secret=s"), Err(ErrorCode::InvalidClient));
        assert_eq!(read(&basic, "client_id=c2"), Err(ErrorCode::InvalidClient));
        assert_eq!(read(&basic, ""), Ok(Credential::Secret { client_id: "c1".into(), secret: "s".into() }));
        let saml = format!(
            "client_assertion_type={}&client_assertion={a}",
            urlencode("urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
        );
        assert_eq!(read(&none, &saml), Err(ErrorCode::InvalidClient));
        assert_eq!(read(&none, &format!("client_assertion={a}&client_id=c1")), Err(ErrorCode::InvalidClient));
        assert_eq!(
            read(&none, &format!("client_assertion_type={}&client_id=c1", urlencode(JWT_BEARER))),
            Err(ErrorCode::InvalidClient)
        );
        assert_eq!(read(&none, "client_id=c1"), Ok(Credential::Id("c1".into())));
        assert_eq!(read(&none, ""), Err(ErrorCode::InvalidClient));
    }

    #[test]
    fn basic_header_is_decoded_per_rfc6749_2_3_1() {
        let header = format!("Basic {}", STANDARD.encode("my%20id:p%3As"));
        assert_eq!(parse_basic(&header).ok(), Some(("my id".to_owned(), "p:s".to_owned())));
        assert!(parse_basic("Bearer abc").is_err());
        assert!(parse_basic("Basic !!!").is_err());
    }

    fn urlencode(s: &str) -> String {
        form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    #[test]
    fn each_client_authenticates_the_way_it_registered() {
        let mut public = Client::public("p", vec![], 1);
        let id = Credential::Id("p".into());
        let secret = Credential::Secret { client_id: "p".into(), secret: "s".into() };
        let assertion = Credential::Assertion { client_id: "p".into(), jwt: "x.y.z".into() };
        assert_eq!(check_without_keys(&public, &id), Ok(true));
        assert!(check_without_keys(&public, &secret).is_err());
        assert!(check_without_keys(&public, &assertion).is_err());
        public.auth_method = ClientAuthMethod::ClientSecretBasic;
        public.secret_hash = Some(TokenHash::of("s"));
        assert_eq!(check_without_keys(&public, &secret), Ok(true));
        let wrong = Credential::Secret { client_id: "p".into(), secret: "t".into() };
        assert!(check_without_keys(&public, &wrong).is_err());
        assert!(check_without_keys(&public, &id).is_err());
        let refused = check_without_keys(&public, &assertion).err().map(|e| e.description);
        assert!(refused.is_some_and(|d| d.contains("client_secret_basic") && d.contains("private_key_jwt")));
        public.auth_method = ClientAuthMethod::PrivateKeyJwt;
        public.secret_hash = None;
        assert_eq!(check_without_keys(&public, &assertion), Ok(false));
        assert!(check_without_keys(&public, &id).is_err());
        assert!(check_without_keys(&public, &secret).is_err());
    }

    #[test]
    fn claims_must_name_the_client_this_server_and_a_short_single_use_life() {
        let audiences = audiences("https://p.example", Endpoint::Token);
        let rules = AssertionRules { client_id: "c1", audiences: &audiences, now: 1000 };
        let good = json!({"iss": "c1", "sub": "c1", "aud": "https://p.example", "exp": 1100, "iat": 1000, "jti": "j1"});
        let check = |v: &Value| check_claims(v.as_object().unwrap_or(&Map::new()), &rules);
        assert_eq!(check(&good), Ok(AcceptedAssertion { jti: "j1".into(), expires_at: 1100 + SKEW }));
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            c[k] = v;
            c
        };
        let without = |k: &str| {
            let mut c = good.clone();
            c.as_object_mut().map(|o| o.remove(k));
            c
        };
        assert!(check(&with("aud", json!("https://p.example/token"))).is_ok());
        assert!(check(&with("aud", json!(["https://p.example"]))).is_ok());
        for bad in [
            with("iss", json!("c2")),
            with("sub", json!("c2")),
            with("aud", json!("https://other.example")),
            with("aud", json!(["https://p.example", "https://other.example"])),
            with("aud", json!("https://p.example/revoke")),
            without("aud"),
            without("exp"),
            with("exp", json!(900)),
            with("exp", json!("1100")),
            with("iat", json!(1100)),
            with("nbf", json!(1100)),
            with("exp", json!(1000 + MAX_LIFETIME + 1)),
            without("jti"),
            with("jti", json!("")),
            with("jti", json!("x".repeat(300))),
        ] {
            assert!(check(&bad).is_err(), "{bad}");
        }
        // Within the skew.
        assert!(check(&with("exp", json!(990))).is_ok());
        assert!(check(&with("nbf", json!(1030))).is_ok());
        // The revocation endpoint's URL is accepted there.
        let at_revoke = audiences_at(Endpoint::Revoke);
        let rules = AssertionRules { client_id: "c1", audiences: &at_revoke, now: 1000 };
        let revoke = with("aud", json!("https://p.example/revoke"));
        assert!(check_claims(revoke.as_object().unwrap_or(&Map::new()), &rules).is_ok());
    }

    fn audiences_at(route: Endpoint) -> Vec<String> {
        audiences("https://p.example", route)
    }

    #[test]
    fn a_jti_is_remembered_per_client() {
        let a = AcceptedAssertion { jti: "j".into(), expires_at: 1 };
        assert_ne!(a.use_key("c1"), a.use_key("c2"));
        assert_eq!(a.use_key("c1"), a.use_key("c1"));
    }
}
