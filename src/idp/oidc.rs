//! OpenID Connect client toward the upstream IdP (OIDC Core §3.1, OIDC Discovery §4, RFC 6749 §4.1, §6).
//!
//! - Discovery: `<issuer>/.well-known/openid-configuration`, whose `issuer` must equal the configured one.
//! - Authorization: the proxy's own `state`, `nonce` and PKCE S256; the client's `resource` is never forwarded.
//! - Code exchange and refresh: form POST to the token endpoint, client secret by post (or Basic when that is all
//!   the provider supports). The newest refresh token replaces the old; a response without one keeps the old.
//! - id_token validation: signature by `kid` from the JWKS (refetched when an unknown `kid` appears, at most once
//!   a minute), `aud` = client id, `iss` by [`IssuerRule`], `exp`, and `nonce`. Access tokens are opaque.
//! - No redirect is followed and every call has a timeout; the IdP's error descriptions are never shown to users.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::RwLock;
use url::Url;

use super::entra_error::aadsts_from_description;
use super::IdpError;
use crate::clock::UnixTime;
use crate::config::IdpConfig;
use crate::store::{Identity, UpstreamCredential, UpstreamLogin, UpstreamTokens};

/// Which provider quirks apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Generic,
    /// Entra ID: `response_mode=query`, `scope` sent on code redemption and refresh.
    Azure,
}

/// How the proxy authenticates at the IdP's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Post,
    Basic,
}

/// How an id_token's `iss` is checked.
#[derive(Debug, Clone)]
pub enum IssuerRule {
    Exact(String),
    /// `prefix + tid + suffix`, `tid` a GUID (and equal to `tenant` when the tenant is a GUID, and one of
    /// `allowed` when that is not empty: `idp.allowed_tenants`, issue 25 §2).
    AzureTemplate {
        prefix: String,
        suffix: String,
        tenant: Option<String>,
        allowed: Vec<String>,
    },
}

pub use crate::config::is_guid;

impl IssuerRule {
    fn check(&self, iss: &str, tid: Option<&str>) -> Result<(), IdpError> {
        let protocol = |text: String| Err(IdpError::Protocol(text));
        match self {
            Self::Exact(expected) if expected.trim_end_matches('/') == iss.trim_end_matches('/') => Ok(()),
            Self::Exact(expected) => protocol(format!("id_token issuer `{iss}` is not `{expected}`")),
            Self::AzureTemplate { prefix, suffix, tenant, allowed } => {
                let Some(tid) = tid.filter(|t| is_guid(t)) else {
                    return protocol("id_token has no GUID `tid` claim".into());
                };
                if iss != format!("{prefix}{tid}{suffix}") {
                    return protocol(format!("id_token issuer `{iss}` does not match tenant `{tid}`"));
                }
                let admitted = match tenant {
                    Some(t) => t.eq_ignore_ascii_case(tid),
                    None => allowed.is_empty() || allowed.iter().any(|a| a.eq_ignore_ascii_case(tid)),
                };
                if admitted {
                    Ok(())
                } else {
                    Err(IdpError::TenantNotAllowed { tid: tid.to_ascii_lowercase() })
                }
            }
        }
    }
}

/// What an authorization request carries beyond the usual because Entra asked for it (issue 16 §1–2).
#[derive(Debug, Clone, Default)]
pub struct SignInHints {
    /// `prompt=login`: the person must sign in afresh (MFA, Conditional Access).
    pub prompt_login: bool,
    /// The OIDC `claims` request (OIDC Core §5.5), JSON.
    pub claims: Option<String>,
    /// `login_hint`: who signed in last time.
    pub login_hint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OidcEndpoints {
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub jwks_uri: Option<Url>,
}

struct JwksCache {
    keys: Option<JwkSet>,
    fetched: Option<Instant>,
}

/// A configured OIDC provider.
pub struct OidcProvider {
    flavor: Flavor,
    endpoints: OidcEndpoints,
    issuer: IssuerRule,
    client_id: String,
    client_secret: Option<SecretString>,
    client_auth: ClientAuth,
    scopes: String,
    callback: String,
    http: reqwest::Client,
    jwks: RwLock<JwksCache>,
    /// `idp.client_capabilities` (issue 16 §2).
    client_capabilities: Vec<String>,
    /// `idp.max_claims_bytes`.
    max_claims_bytes: usize,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

/// The reqwest client for IdP calls: rustls, no redirects, a timeout.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, IdpError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("dcr-proxy/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| IdpError::Discovery(format!("HTTP client: {e}")))
}

fn parse_url(field: &str, s: &str) -> Result<Url, IdpError> {
    Url::parse(s).map_err(|e| IdpError::Discovery(format!("discovery field `{field}` is not a URL: {e}")))
}

impl OidcProvider {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        flavor: Flavor,
        endpoints: OidcEndpoints,
        issuer: IssuerRule,
        client_id: String,
        client_secret: Option<SecretString>,
        client_auth: ClientAuth,
        idp: &IdpConfig,
        callback: String,
    ) -> Result<Self, IdpError> {
        Ok(Self {
            flavor,
            endpoints,
            issuer,
            client_id,
            client_secret,
            client_auth,
            scopes: idp.scopes.join(" "),
            callback,
            http: http_client(idp.timeout)?,
            jwks: RwLock::new(JwksCache { keys: None, fetched: None }),
            client_capabilities: idp.client_capabilities.clone(),
            max_claims_bytes: idp.max_claims_bytes,
        })
    }

    /// Runs OIDC discovery for `issuer`.
    pub async fn discover(
        issuer: &Url,
        client_id: &str,
        client_secret: Option<SecretString>,
        idp: &IdpConfig,
        callback: String,
    ) -> Result<Self, IdpError> {
        let http = http_client(idp.timeout)?;
        let issuer_text = issuer.as_str().trim_end_matches('/');
        let url = format!("{issuer_text}/.well-known/openid-configuration");
        let resp = http.get(&url).send().await.map_err(|e| IdpError::Discovery(format!("GET {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(IdpError::Discovery(format!("GET {url}: HTTP {}", resp.status())));
        }
        let doc: Discovery =
            resp.json().await.map_err(|e| IdpError::Discovery(format!("GET {url}: not a discovery document: {e}")))?;
        if doc.issuer.trim_end_matches('/') != issuer_text {
            return Err(IdpError::Discovery(format!(
                "discovery document names issuer `{}`, expected `{issuer_text}` (idp.issuer)",
                doc.issuer
            )));
        }
        let methods = &doc.token_endpoint_auth_methods_supported;
        let client_auth = if methods.iter().any(|m| m == "client_secret_basic")
            && !methods.iter().any(|m| m == "client_secret_post")
        {
            ClientAuth::Basic
        } else {
            ClientAuth::Post
        };
        let endpoints = OidcEndpoints {
            authorization_endpoint: parse_url("authorization_endpoint", &doc.authorization_endpoint)?,
            token_endpoint: parse_url("token_endpoint", &doc.token_endpoint)?,
            jwks_uri: doc.jwks_uri.as_deref().map(|u| parse_url("jwks_uri", u)).transpose()?,
        };
        let mut p = Self::new(
            Flavor::Generic,
            endpoints,
            IssuerRule::Exact(doc.issuer),
            client_id.to_owned(),
            client_secret,
            client_auth,
            idp,
            callback,
        )?;
        p.http = http;
        Ok(p)
    }

    /// The app registration the proxy signs in as and the scopes it asks for (for the operator's log).
    pub fn app_registration(&self) -> (&str, &str) {
        (&self.client_id, &self.scopes)
    }

    /// The URL the user's browser is sent to; `hints` carry what an earlier Entra refusal asked of this sign-in
    /// (`prompt=login`, `claims`, `login_hint`). `prompt=consent` is never sent.
    pub fn authorize_url(&self, state: &str, code_challenge: &str, nonce: &str, hints: &SignInHints) -> String {
        let mut url = self.endpoints.authorization_endpoint.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("client_id", &self.client_id)
                .append_pair("response_type", "code")
                .append_pair("redirect_uri", &self.callback)
                .append_pair("scope", &self.scopes)
                .append_pair("state", state)
                .append_pair("nonce", nonce)
                .append_pair("code_challenge", code_challenge)
                .append_pair("code_challenge_method", "S256");
            if self.flavor == Flavor::Azure {
                q.append_pair("response_mode", "query");
            }
            if hints.prompt_login {
                q.append_pair("prompt", "login");
            }
            if let Some(hint) = &hints.login_hint {
                q.append_pair("login_hint", hint);
            }
            if let Some(claims) = self.claims_request(hints.claims.as_deref()) {
                q.append_pair("claims", &claims);
            }
        }
        url.into()
    }

    fn with_client_auth(
        &self,
        req: reqwest::RequestBuilder,
        form: &mut Vec<(&str, String)>,
    ) -> reqwest::RequestBuilder {
        match (&self.client_secret, self.client_auth) {
            (Some(secret), ClientAuth::Basic) => req.basic_auth(
                form_urlencoded::byte_serialize(self.client_id.as_bytes()).collect::<String>(),
                Some(form_urlencoded::byte_serialize(secret.expose_secret().as_bytes()).collect::<String>()),
            ),
            (Some(secret), ClientAuth::Post) => {
                form.push(("client_id", self.client_id.clone()));
                form.push(("client_secret", secret.expose_secret().to_owned()));
                req
            }
            (None, _) => {
                form.push(("client_id", self.client_id.clone()));
                req
            }
        }
    }

    async fn token_request(&self, mut form: Vec<(&str, String)>) -> Result<TokenAnswer, IdpError> {
        let req = self.http.post(self.endpoints.token_endpoint.clone()).header("accept", "application/json");
        let req = self.with_client_auth(req, &mut form);
        let resp = req.form(&form).send().await.map_err(|e| {
            IdpError::Unavailable(if e.is_timeout() {
                "token endpoint timed out".into()
            } else {
                format!("token endpoint: {e}")
            })
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = resp.bytes().await.map_err(|e| IdpError::Unavailable(format!("token endpoint body: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice::<TokenAnswer>(&body)
                .map_err(|e| IdpError::Protocol(format!("token response is not valid JSON: {e}")));
        }
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(IdpError::Busy { status: status.as_u16(), retry_after });
        }
        Err(refusal(status.as_u16(), &body, self.max_claims_bytes))
    }

    /// Redeems the IdP's code (RFC 6749 §4.1.3) and validates the id_token.
    pub async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
        now: UnixTime,
    ) -> Result<UpstreamLogin, IdpError> {
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", self.callback.clone()),
            ("code_verifier", pkce_verifier.to_owned()),
        ];
        if self.flavor == Flavor::Azure {
            form.push(("scope", self.scopes.clone()));
        }
        if let Some(claims) = self.claims_request(None) {
            form.push(("claims", claims));
        }
        let answer = self.token_request(form).await?;
        let identity = match &answer.id_token {
            Some(id_token) => self.validate_id_token(id_token, Some(nonce)).await?,
            None if self.scopes.split(' ').any(|s| s == "openid") => {
                return Err(IdpError::Protocol("token response has no id_token although `openid` was asked".into()))
            }
            None => Identity::default(),
        };
        let tokens = answer.into_tokens(None, now)?;
        Ok(UpstreamLogin { credential: UpstreamCredential::Tokens(tokens), identity })
    }

    /// Refreshes the upstream tokens (RFC 6749 §6). Entra rotates refresh tokens without revoking the old one; the
    /// newest is kept.
    /// `claims`: a claims request (JSON) to satisfy, from an upstream's claims challenge (issue 16 §2); the
    /// client capabilities are added to it.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        now: UnixTime,
        claims: Option<&str>,
    ) -> Result<UpstreamTokens, IdpError> {
        let mut form = vec![("grant_type", "refresh_token".to_owned()), ("refresh_token", refresh_token.to_owned())];
        if self.flavor == Flavor::Azure {
            form.push(("scope", self.scopes.clone()));
        }
        if let Some(claims) = self.claims_request(claims) {
            form.push(("claims", claims));
        }
        let answer = self.token_request(form).await?;
        answer.into_tokens(Some(refresh_token), now)
    }

    /// A refresh_token grant for another API's `scopes` (issue 16 §3, `[[routes]]`): the access token of one
    /// route. The grant's own token is not replaced.
    pub async fn refresh_for_scopes(
        &self,
        refresh_token: &str,
        now: UnixTime,
        scopes: &str,
    ) -> Result<UpstreamTokens, IdpError> {
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token.to_owned()),
            ("scope", scopes.to_owned()),
        ];
        if let Some(claims) = self.claims_request(None) {
            form.push(("claims", claims));
        }
        let answer = self.token_request(form).await?;
        answer.into_tokens(Some(refresh_token), now)
    }

    /// The `claims` parameter (OIDC Core §5.5) for an authorize or token request: `extra` (a claims request from a
    /// challenge or from Entra, JSON) with the client capabilities added as `access_token.xms_cc` (Microsoft,
    /// "Claims challenges, claims requests and client capabilities"). `None` when there is nothing to ask, or when
    /// `extra` is not a JSON object or is longer than `idp.max_claims_bytes`.
    pub fn claims_request(&self, extra: Option<&str>) -> Option<String> {
        merge_claims(extra, &self.client_capabilities, self.max_claims_bytes)
    }

    /// The longest claims JSON carried (`idp.max_claims_bytes`).
    pub fn max_claims_bytes(&self) -> usize {
        self.max_claims_bytes
    }

    async fn jwks(&self, kid: Option<&str>) -> Result<JwkSet, IdpError> {
        let uri = self
            .endpoints
            .jwks_uri
            .clone()
            .ok_or_else(|| IdpError::Protocol("the IdP publishes no jwks_uri".into()))?;
        {
            let cache = self.jwks.read().await;
            if let (Some(keys), Some(fetched)) = (&cache.keys, cache.fetched) {
                let known = kid.is_none_or(|k| keys.find(k).is_some());
                if known && fetched.elapsed() < Duration::from_secs(86400) {
                    return Ok(keys.clone());
                }
                if !known && fetched.elapsed() < Duration::from_secs(60) {
                    return Ok(keys.clone());
                }
            }
        }
        let mut cache = self.jwks.write().await;
        let resp = self.http.get(uri).send().await.map_err(|e| IdpError::Unavailable(format!("JWKS: {e}")))?;
        if !resp.status().is_success() {
            return Err(IdpError::Unavailable(format!("JWKS answered HTTP {}", resp.status())));
        }
        let keys: JwkSet = resp.json().await.map_err(|e| IdpError::Protocol(format!("JWKS is not a key set: {e}")))?;
        cache.keys = Some(keys.clone());
        cache.fetched = Some(Instant::now());
        Ok(keys)
    }

    /// Validates an id_token and returns who it names.
    pub async fn validate_id_token(&self, id_token: &str, nonce: Option<&str>) -> Result<Identity, IdpError> {
        let header =
            jsonwebtoken::decode_header(id_token).map_err(|e| IdpError::Protocol(format!("id_token header: {e}")))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::ES256
        ) {
            return Err(IdpError::Protocol(format!("id_token algorithm {:?} is not accepted", header.alg)));
        }
        let keys = self.jwks(header.kid.as_deref()).await?;
        let jwk = match &header.kid {
            Some(kid) => keys.find(kid),
            None => keys.keys.first(),
        }
        .ok_or_else(|| IdpError::Protocol("id_token is signed by a key the IdP does not publish".into()))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| IdpError::Protocol(format!("JWKS key: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 120;
        let data = jsonwebtoken::decode::<IdClaims>(id_token, &key, &validation)
            .map_err(|e| IdpError::Protocol(format!("id_token: {e}")))?;
        let claims = data.claims;
        self.issuer.check(&claims.iss, claims.tid.as_deref())?;
        if let Some(expected) = nonce {
            if claims.nonce.as_deref() != Some(expected) {
                return Err(IdpError::Protocol("id_token nonce does not match the authorization request".into()));
            }
        }
        Ok(Identity {
            sub: claims.sub,
            name: claims.name,
            email: claims.email,
            preferred_username: claims.preferred_username,
            tid: claims.tid,
            groups: string_list(claims.groups.as_ref()),
            roles: string_list(claims.roles.as_ref()),
            groups_overage: claims.claim_names.as_ref().and_then(|n| n.get("groups")).is_some(),
        })
    }
}

/// An OAuth error answer (RFC 6749 §5.2) with Entra's additions: the AADSTS code from `error_codes` or the
/// description, `suberror`, and `claims` (issue 16 §1). `temporarily_unavailable` and `server_error` are
/// [`IdpError::Busy`].
/// A `claims` longer than `max_claims_bytes` (`idp.max_claims_bytes`) or not JSON is dropped.
fn refusal(status: u16, body: &[u8], max_claims_bytes: usize) -> IdpError {
    let err: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_owned);
    let error = text("error").unwrap_or_else(|| "unknown_error".to_owned());
    if error == "temporarily_unavailable" || error == "server_error" {
        return IdpError::Busy { status: 503, retry_after: None };
    }
    let aadsts = err
        .get("error_codes")
        .and_then(|c| c.get(0))
        .and_then(Value::as_u64)
        .or_else(|| aadsts_from_description(err.get("error_description").and_then(Value::as_str)));
    let claims = text("claims").filter(|c| c.len() <= max_claims_bytes && serde_json::from_str::<Value>(c).is_ok());
    IdpError::Refused { status, error, aadsts, suberror: text("suberror"), claims }
}

/// [`OidcProvider::claims_request`]'s rule, apart for its unit test.
fn merge_claims(extra: Option<&str>, capabilities: &[String], max_bytes: usize) -> Option<String> {
    let mut doc = match extra {
        Some(text) if text.len() <= max_bytes => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            _ => return None,
        },
        Some(_) => return None,
        None => serde_json::Map::new(),
    };
    if !capabilities.is_empty() {
        let access = doc.entry("access_token").or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Value::Object(access) = access {
            access.insert("xms_cc".to_owned(), serde_json::json!({ "values": capabilities }));
        }
    }
    (!doc.is_empty()).then(|| Value::Object(doc).to_string())
}

#[derive(Deserialize)]
struct IdClaims {
    iss: String,
    sub: String,
    nonce: Option<String>,
    tid: Option<String>,
    name: Option<String>,
    email: Option<String>,
    preferred_username: Option<String>,
    /// Entra group object ids (or names), when the app registration emits them.
    #[serde(default)]
    groups: Option<Value>,
    /// Entra app roles assigned to the user.
    #[serde(default)]
    roles: Option<Value>,
    /// OIDC Core §5.6.2 distributed claims: Entra's groups overage names `groups` here instead of listing them.
    #[serde(default, rename = "_claim_names")]
    claim_names: Option<Value>,
}

/// The strings of a claim that should be a string array (other entries are ignored).
fn string_list(claim: Option<&Value>) -> Vec<String> {
    match claim {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

/// The token endpoint's JSON (RFC 6749 §5.1); `expires_in` may come as a number or a string.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    expires_in: Option<Value>,
    #[serde(default)]
    scope: Option<String>,
}

impl TokenAnswer {
    fn into_tokens(self, previous_refresh: Option<&str>, now: UnixTime) -> Result<UpstreamTokens, IdpError> {
        let expires_in = match &self.expires_in {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(3600);
        let refresh = self.refresh_token.or_else(|| previous_refresh.map(str::to_owned));
        UpstreamTokens::new(self.access_token, refresh, now + expires_in, self.scope)
            .map_err(|e| IdpError::Protocol(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_capabilities_are_merged_into_the_claims_request() {
        let cp1 = ["cp1".to_owned()];
        assert_eq!(
            merge_claims(None, &cp1, 4096).as_deref(),
            Some(r#"{"access_token":{"xms_cc":{"values":["cp1"]}}}"#)
        );
        assert_eq!(merge_claims(None, &[], 4096), None);
        let challenge = r#"{"access_token":{"nbf":{"essential":true,"value":"1604106651"}}}"#;
        let merged: Value =
            serde_json::from_str(&merge_claims(Some(challenge), &cp1, 4096).unwrap_or_default()).unwrap_or_default();
        assert_eq!(merged["access_token"]["nbf"]["value"], "1604106651");
        assert_eq!(merged["access_token"]["xms_cc"]["values"][0], "cp1");
        assert_eq!(merge_claims(Some(challenge), &cp1, 16), None, "over the cap");
        assert_eq!(merge_claims(Some("[1]"), &cp1, 4096), None, "not an object");
    }

    #[test]
    fn guid_shape_is_checked() {
        assert!(is_guid("72f988bf-86f1-41af-91ab-2d7cd011db47"));
        assert!(!is_guid("common"));
        assert!(!is_guid("72f988bf-86f1-41af-91ab-2d7cd011db4"));
    }

    #[test]
    fn azure_issuer_template_substitutes_tid() {
        let tid = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let template = |tenant: Option<&str>, allowed: &[&str]| IssuerRule::AzureTemplate {
            prefix: "https://login/".into(),
            suffix: "/v2.0".into(),
            tenant: tenant.map(str::to_owned),
            allowed: allowed.iter().map(|a| (*a).to_owned()).collect(),
        };
        let rule = template(None, &[]);
        assert!(rule.check(&format!("https://login/{tid}/v2.0"), Some(tid)).is_ok());
        assert!(rule.check("https://login/{tenantid}/v2.0", Some(tid)).is_err());
        assert!(rule.check(&format!("https://login/{tid}/v2.0"), None).is_err());
        let pinned = template(Some("00000000-0000-0000-0000-000000000001"), &[]);
        let issued = format!("https://login/{tid}/v2.0");
        assert!(matches!(pinned.check(&issued, Some(tid)), Err(IdpError::TenantNotAllowed { .. })));
        // `idp.allowed_tenants` with a multi-tenant registration.
        let listed = template(None, &["00000000-0000-0000-0000-000000000001", tid]);
        assert!(listed.check(&issued, Some(tid)).is_ok());
        let other = template(None, &["00000000-0000-0000-0000-000000000001"]);
        assert!(matches!(other.check(&issued, Some(tid)), Err(IdpError::TenantNotAllowed { tid: t }) if t == tid));
        // The issuer of another tenant is a protocol error, whatever the list says.
        assert!(matches!(
            listed.check("https://login/00000000-0000-0000-0000-000000000001/v2.0", Some(tid)),
            Err(IdpError::Protocol(_))
        ));
    }
}
