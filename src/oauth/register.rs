//! Dynamic Client Registration (RFC 7591).
//!
//! - §2: metadata the server does not understand is ignored; `token_endpoint_auth_method` is `none`,
//!   `client_secret_basic` (the RFC's default), `client_secret_post` or `private_key_jwt` (RFC 7523 §2.2, which
//!   needs the client's public keys: `jwks` or `jwks_uri`, never both, §2; `token_endpoint_auth_signing_alg`, when
//!   sent, one of [`jwk::ALGORITHMS`]); `grant_types` ⊆ {authorization_code,
//!   refresh_token} (both when omitted, so that refresh works for clients that leave it out); `response_types` =
//!   ["code"].
//! - §3.2.1: the response echoes the registered metadata with 201; a secret (256-bit) is issued only to
//!   confidential clients, with `client_secret_expires_at: 0`. Absent optional fields are omitted, never `null`.
//! - §3.2.2: errors are 400 `invalid_redirect_uri` or `invalid_client_metadata`, naming the field.
//! - Text the proxy stores, echoes or shows (§2 human-readable and URI fields, with their §2.2 `#language`
//!   variants; `contacts`, `software_id`/`version`, `scope`, …) must not contain a control or format character
//!   (bidi overrides such as U+202E would make the consent page read "evil" as "live"): `invalid_client_metadata`
//!   naming the field, or `invalid_redirect_uri` for `redirect_uris`. The same check applies to RFC 7592 updates
//!   and to Client ID Metadata Documents, which go through [`validate_metadata`].
//!
//! - `application_type` (OIDC Registration §2, MCP 2026-07-28 SEP-837): `web` or `native` decides which redirect
//!   URIs pass ([`redirect_uri::validate_for_application_type`]); absent, the RFC 7591 / RFC 8252 rules apply
//!   (RFC 7591 has no such field). Any other value is `invalid_client_metadata` naming the field. The value is
//!   echoed in the registration response.
//!
//! The client secret is returned once and kept only as its SHA-256 hash.

use serde_json::{json, Map, Value};

use super::scope;
use crate::clock::UnixTime;
use crate::crypto::{self, TokenHash};
use crate::http::html;
use crate::jwk::{self, KeySet};
use crate::oauth::error::{ErrorCode, OAuthError};
use crate::redirect_uri;
use crate::store::{Client, ClientAuthMethod, ClientKeys, GrantType};

/// The most redirect URIs a client may register.
pub const MAX_REDIRECT_URIS: usize = 20;
/// The longest `client_name` kept.
pub const MAX_CLIENT_NAME: usize = 200;

fn metadata_error(d: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidClientMetadata, d)
}

fn redirect_error(d: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidRedirectUri, d)
}

fn string_field(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, OAuthError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(metadata_error(format!("`{name}` must be a string"))),
    }
}

fn string_array(obj: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, OAuthError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(metadata_error(format!("`{name}` must be an array of strings"))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(metadata_error(format!("`{name}` must be an array of strings"))),
    }
}

/// A registered client and its plaintext secret (returned once).
pub struct Registration {
    pub client: Client,
    pub secret: Option<String>,
    /// RFC 7592 registration access token, returned once.
    pub registration_token: String,
    /// The `application_type` the client sent, echoed in the response.
    pub application_type: Option<redirect_uri::ApplicationType>,
}

/// Client metadata that passed the RFC 7591 §2 rules; shared by registration and Client ID Metadata Documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMetadata {
    pub redirect_uris: Vec<String>,
    /// `None` when the document does not say (the default differs: RFC 7591 `client_secret_basic`, a metadata
    /// document `none`).
    pub auth_method: Option<ClientAuthMethod>,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    pub client_name: Option<String>,
    pub scope: Option<String>,
    /// OIDC Registration §2 `application_type`, when sent.
    pub application_type: Option<redirect_uri::ApplicationType>,
    /// `jwks` or `jwks_uri` (never both), checked; kept only for a `private_key_jwt` client.
    pub keys: Option<ClientKeys>,
    /// `token_endpoint_auth_signing_alg`, when sent (one of [`jwk::ALGORITHMS`]).
    pub signing_alg: Option<jsonwebtoken::Algorithm>,
}

impl ClientMetadata {
    /// The client these metadata describe, under the given identity and credentials.
    pub fn into_client(
        self,
        client_id: String,
        auth_method: ClientAuthMethod,
        secret_hash: Option<TokenHash>,
        registration_token: Option<TokenHash>,
        now: UnixTime,
    ) -> Client {
        let private_key = auth_method == ClientAuthMethod::PrivateKeyJwt;
        Client {
            client_id,
            secret_hash,
            auth_method,
            keys: self.keys.filter(|_| private_key),
            signing_alg: self.signing_alg.filter(|_| private_key),
            redirect_uris: self.redirect_uris,
            client_name: self.client_name,
            scope: self.scope,
            grant_types: self.grant_types,
            response_types: self.response_types,
            issued_at: now,
            first_authorized_at: Default::default(),
            sign_in_started_at: Default::default(),
            registration_token,
        }
    }
}

/// The metadata fields whose text is (or may become) stored, echoed or shown: RFC 7591 §2 and RFC 7592.
const TEXT_FIELDS: [&str; 18] = [
    "redirect_uris",
    "client_name",
    "client_uri",
    "logo_uri",
    "tos_uri",
    "policy_uri",
    "jwks_uri",
    "contacts",
    "software_id",
    "software_version",
    "scope",
    "grant_types",
    "response_types",
    "token_endpoint_auth_method",
    "client_id",
    "client_secret",
    "application_type",
    "token_endpoint_auth_signing_alg",
];

/// Refuses a control or format character ([`html::is_control_or_format`]) in any string of a text field, or of
/// its `field#language` variant (§2.2).
fn check_text_fields(obj: &Map<String, Value>) -> Result<(), OAuthError> {
    for (key, value) in obj {
        let field = key.split_once('#').map_or(key.as_str(), |(f, _)| f);
        if !TEXT_FIELDS.contains(&field) {
            continue;
        }
        let strings: Vec<&str> = match value {
            Value::String(s) => vec![s],
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        if let Some(c) = strings.iter().find_map(|s| s.chars().find(|c| html::is_control_or_format(*c))) {
            let description = format!(
                "`{}` contains a control or invisible formatting character (U+{:04X}), which is not allowed",
                key.chars().map(|c| if html::is_control_or_format(c) { '?' } else { c }).collect::<String>(),
                u32::from(c)
            );
            return Err(if field == "redirect_uris" {
                redirect_error(description)
            } else {
                metadata_error(description)
            });
        }
    }
    Ok(())
}

/// Checks client metadata (a parsed JSON object) against RFC 7591 §2 and the operator's redirect-URI allowlist
/// (`allowed`; empty: any URI the rules accept).
pub fn validate_metadata(body: &Value, allowed: &redirect_uri::Allowlist) -> Result<ClientMetadata, OAuthError> {
    let obj = body.as_object().ok_or_else(|| metadata_error("the body must be a JSON object"))?;
    check_text_fields(obj)?;

    let redirect_uris = string_array(obj, "redirect_uris")
        .map_err(|_| redirect_error("`redirect_uris` must be an array of strings"))?
        .ok_or_else(|| redirect_error("`redirect_uris` is required"))?;
    if redirect_uris.is_empty() {
        return Err(redirect_error("`redirect_uris` must not be empty"));
    }
    if redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(redirect_error(format!("at most {MAX_REDIRECT_URIS} `redirect_uris` are accepted")));
    }
    let application_type = match string_field(obj, "application_type")? {
        None => None,
        Some(t) => Some(redirect_uri::ApplicationType::parse(&t).ok_or_else(|| {
            metadata_error(format!("`application_type` `{t}` is not supported; use \"web\" or \"native\""))
        })?),
    };
    for uri in &redirect_uris {
        match application_type {
            None => redirect_uri::validate_for_registration(uri, &allowed.private_use),
            Some(kind) => redirect_uri::validate_for_application_type(uri, kind, &allowed.private_use),
        }
        .map_err(redirect_error)?;
        if !allowed.allows(uri) {
            return Err(redirect_error(format!("`{uri}`: this server does not accept redirect URIs on that host")));
        }
    }

    let auth_method = match string_field(obj, "token_endpoint_auth_method")? {
        None => None,
        Some(m) => Some(ClientAuthMethod::parse(&m).ok_or_else(|| {
            metadata_error(format!(
                "`token_endpoint_auth_method` `{m}` is not supported; use none, client_secret_basic, \
                 client_secret_post or private_key_jwt"
            ))
        })?),
    };
    // Keys matter only to a private_key_jwt client: for any other method they are read if they are usable and
    // otherwise ignored, as RFC 7591 §2 has a server do with metadata it does not use (a public client's
    // document may publish encryption keys).
    let strict = auth_method == Some(ClientAuthMethod::PrivateKeyJwt);
    let keys = match client_keys(obj) {
        Ok(keys) => keys,
        Err(e) if strict => return Err(e),
        Err(_) => None,
    };
    let signing_alg = match string_field(obj, "token_endpoint_auth_signing_alg") {
        Ok(Some(name)) => match jwk::parse_algorithm(&name) {
            Some(alg) => Some(alg),
            None if strict => {
                return Err(metadata_error(format!(
                    "`token_endpoint_auth_signing_alg` `{name}` is not supported; use one of {}",
                    jwk::algorithm_names().join(", ")
                )))
            }
            None => None,
        },
        Ok(None) => None,
        Err(e) if strict => return Err(e),
        Err(_) => None,
    };
    if auth_method == Some(ClientAuthMethod::PrivateKeyJwt) && keys.is_none() {
        return Err(metadata_error(
            "`token_endpoint_auth_method` private_key_jwt needs the client's public keys: `jwks` or `jwks_uri`",
        ));
    }

    let grant_types = string_array(obj, "grant_types")?
        .unwrap_or_else(|| GrantType::names().into_iter().map(str::to_owned).collect());
    if let Some(g) = grant_types.iter().find(|g| GrantType::parse(g).is_none()) {
        return Err(metadata_error(format!(
            "grant type `{g}` in `grant_types` is not supported (supported: {})",
            GrantType::names().join(", ")
        )));
    }
    if !grant_types.iter().any(|g| g == GrantType::AuthorizationCode.as_str()) {
        return Err(metadata_error("`grant_types` must include authorization_code"));
    }
    let response_types = string_array(obj, "response_types")?.unwrap_or_else(|| vec!["code".to_owned()]);
    if response_types.iter().any(|r| r != "code") || response_types.is_empty() {
        return Err(metadata_error("`response_types` must be [\"code\"]"));
    }

    let client_name = string_field(obj, "client_name")?;
    if client_name.as_ref().is_some_and(|n| n.chars().count() > MAX_CLIENT_NAME) {
        return Err(metadata_error(format!("`client_name` is longer than {MAX_CLIENT_NAME} characters")));
    }
    let scope = string_field(obj, "scope")?;
    if let Some(s) = &scope {
        scope::parse(s).map_err(|_| metadata_error("`scope` is not a space-separated list of scope tokens"))?;
    }
    Ok(ClientMetadata {
        redirect_uris,
        auth_method,
        grant_types: dedup(grant_types),
        response_types: dedup(response_types),
        client_name,
        scope,
        application_type,
        keys,
        signing_alg,
    })
}

/// The longest `jwks_uri` accepted.
const MAX_JWKS_URI: usize = 2048;

/// RFC 7591 §2 `jwks` / `jwks_uri`: at most one of them; an inline set must hold usable public keys only, a URL
/// must be https without credentials or fragment (what it serves is checked when it is fetched).
pub fn client_keys(obj: &Map<String, Value>) -> Result<Option<ClientKeys>, OAuthError> {
    match (obj.get("jwks").filter(|v| !v.is_null()), string_field(obj, "jwks_uri")?) {
        (Some(_), Some(_)) => Err(metadata_error("`jwks` and `jwks_uri` must not both be present; send one")),
        (Some(set), None) => KeySet::parse_registered(set)
            .map(|set| Some(ClientKeys::Inline(std::sync::Arc::new(set))))
            .map_err(|e| metadata_error(format!("`jwks`: {e}"))),
        (None, Some(uri)) => check_jwks_uri(&uri).map(|()| Some(ClientKeys::Uri(uri))),
        (None, None) => Ok(None),
    }
}

fn check_jwks_uri(uri: &str) -> Result<(), OAuthError> {
    let bad = |why: &str| Err(metadata_error(format!("`jwks_uri` {why}")));
    if uri.len() > MAX_JWKS_URI {
        return bad("is longer than 2048 characters");
    }
    let Ok(url) = url::Url::parse(uri) else {
        return bad("is not an absolute URL");
    };
    if url.scheme() != "https" {
        return bad("must be an https URL");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("must not contain a user name or password");
    }
    if url.fragment().is_some() {
        return bad("must not contain a fragment");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return bad("has no host");
    }
    Ok(())
}

/// Validates RFC 7591 client metadata (a parsed JSON body) and builds the client.
/// `allowed` is the operator's redirect-URI allowlist (empty: any URI the rules accept).
pub fn register(body: &Value, now: UnixTime, allowed: &redirect_uri::Allowlist) -> Result<Registration, OAuthError> {
    let metadata = validate_metadata(body, allowed)?;
    let application_type = metadata.application_type;
    let auth_method = metadata.auth_method.unwrap_or(ClientAuthMethod::ClientSecretBasic);
    let secret = auth_method.uses_secret().then(crypto::random_token);
    let registration_token = crypto::random_token();
    let client = metadata.into_client(
        crypto::random_token(),
        auth_method,
        secret.as_deref().map(TokenHash::of),
        Some(TokenHash::of(&registration_token)),
        now,
    );
    Ok(Registration { client, secret, registration_token, application_type })
}

/// RFC 7592 §2.2: replaces a client's metadata. The body must name the client's `client_id`; a `client_secret`,
/// if sent, must be the client's; the authentication method cannot change. Identity, secret and registration
/// token stay.
pub fn update(
    existing: &Client,
    body: &Value,
    now: UnixTime,
    allowed: &redirect_uri::Allowlist,
) -> Result<Client, OAuthError> {
    let obj = body.as_object().ok_or_else(|| metadata_error("the body must be a JSON object"))?;
    if string_field(obj, "client_id")?.as_deref() != Some(existing.client_id.as_str()) {
        return Err(metadata_error("`client_id` must be present and equal to this client's"));
    }
    if let Some(secret) = string_field(obj, "client_secret")? {
        if !existing.secret_hash.is_some_and(|h| h.matches(&secret)) {
            return Err(metadata_error("`client_secret` is not this client's"));
        }
    }
    let metadata = validate_metadata(body, allowed)?;
    let auth_method = metadata.auth_method.unwrap_or(existing.auth_method);
    if auth_method != existing.auth_method {
        return Err(metadata_error("`token_endpoint_auth_method` cannot be changed; register a new client"));
    }
    if auth_method == ClientAuthMethod::PrivateKeyJwt && metadata.keys.is_none() {
        return Err(metadata_error("a private_key_jwt client's update must carry its keys: `jwks` or `jwks_uri`"));
    }
    let mut fresh = metadata.into_client(String::new(), auth_method, None, None, now);
    fresh.client_id = existing.client_id.clone();
    fresh.secret_hash = existing.secret_hash;
    fresh.issued_at = existing.issued_at;
    fresh.registration_token = existing.registration_token;
    fresh.first_authorized_at =
        std::sync::atomic::AtomicU64::new(existing.first_authorized_at.load(std::sync::atomic::Ordering::Relaxed));
    Ok(fresh)
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = Vec::with_capacity(v.len());
    v.retain(|x| {
        let fresh = !seen.contains(x);
        if fresh {
            seen.push(x.clone());
        }
        fresh
    });
    v
}

/// The RFC 7591 §3.2.1 response body.
/// `management`: the RFC 7592 registration access token (only in the registration response) and the client's
/// configuration URL.
pub fn response_body(client: &Client, secret: Option<&str>, management: (Option<&str>, &str)) -> Value {
    let mut doc = json!({
        "client_id": client.client_id,
        "client_id_issued_at": client.issued_at,
        "redirect_uris": client.redirect_uris,
        "grant_types": client.grant_types,
        "response_types": client.response_types,
        "token_endpoint_auth_method": client.auth_method.as_str(),
    });
    if let Some(obj) = doc.as_object_mut() {
        if let Some(secret) = secret {
            obj.insert("client_secret".into(), json!(secret));
            obj.insert("client_secret_expires_at".into(), json!(0));
        }
        if let Some(name) = &client.client_name {
            obj.insert("client_name".into(), json!(name));
        }
        if let Some(scope) = &client.scope {
            obj.insert("scope".into(), json!(scope));
        }
        match &client.keys {
            Some(ClientKeys::Inline(set)) => {
                obj.insert("jwks".into(), serde_json::from_str(set.json()).unwrap_or(Value::Null));
            }
            Some(ClientKeys::Uri(uri)) => {
                obj.insert("jwks_uri".into(), json!(uri));
            }
            None => {}
        }
        if let Some(alg) = client.signing_alg {
            obj.insert("token_endpoint_auth_signing_alg".into(), json!(jwk::algorithm_name(alg)));
        }
        if let Some(token) = management.0 {
            obj.insert("registration_access_token".into(), json!(token));
        }
        obj.insert("registration_client_uri".into(), json!(management.1));
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: Value) -> Option<ErrorCode> {
        register(&body, 1, &Default::default()).err().map(|e| e.code)
    }

    #[test]
    fn public_client_gets_no_secret_and_optional_fields_are_omitted() {
        let r = register(
            &json!({"redirect_uris": ["http://127.0.0.1:9/cb"], "token_endpoint_auth_method": "none"}),
            5,
            &Default::default(),
        );
        let r = r.ok();
        assert!(r.as_ref().is_some_and(|r| r.secret.is_none()));
        if let Some(r) = r {
            let body = response_body(&r.client, None, (None, "https://p/register/x"));
            assert!(body.get("client_secret").is_none());
            assert!(body.get("client_name").is_none());
            assert_eq!(body["grant_types"], json!(["authorization_code", "refresh_token"]));
        }
    }

    #[test]
    fn confidential_client_secret_is_stored_hashed() {
        let r = register(&json!({"redirect_uris": ["https://a.example/cb"]}), 5, &Default::default()).ok();
        let r = r.as_ref();
        let secret = r.and_then(|r| r.secret.clone()).unwrap_or_default();
        assert_eq!(secret.len(), 43);
        assert!(r.is_some_and(|r| r.client.secret_hash.is_some_and(|h| h.matches(&secret))));
        assert_eq!(r.map(|r| r.client.auth_method), Some(ClientAuthMethod::ClientSecretBasic));
    }

    #[test]
    fn bad_metadata_names_the_field() {
        assert_eq!(code(json!({})), Some(ErrorCode::InvalidRedirectUri));
        assert_eq!(code(json!({"redirect_uris": []})), Some(ErrorCode::InvalidRedirectUri));
        assert_eq!(code(json!({"redirect_uris": "https://a/cb"})), Some(ErrorCode::InvalidRedirectUri));
        assert_eq!(code(json!({"redirect_uris": ["http://evil.example/cb"]})), Some(ErrorCode::InvalidRedirectUri));
        assert_eq!(
            code(json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"})),
            Some(ErrorCode::InvalidClientMetadata)
        );
        assert_eq!(
            code(json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]})),
            Some(ErrorCode::InvalidClientMetadata)
        );
        assert_eq!(
            code(json!({"redirect_uris": ["https://a.example/cb"], "client_name": 5})),
            Some(ErrorCode::InvalidClientMetadata)
        );
        assert_eq!(code(json!([1, 2])), Some(ErrorCode::InvalidClientMetadata));
    }

    #[test]
    fn application_type_is_checked_against_the_redirect_uris_and_named() {
        let reg = |t: Value, uri: &str| {
            register(&json!({"redirect_uris": [uri], "application_type": t}), 1, &Default::default())
        };
        assert!(reg(json!("native"), "http://127.0.0.1:5/cb").is_ok_and(|r| r.application_type.is_some()));
        assert!(reg(json!("web"), "https://a.example/cb").is_ok());
        assert!(reg(Value::Null, "http://127.0.0.1:5/cb").is_ok_and(|r| r.application_type.is_none()));
        for (t, uri, code) in [
            (json!("web"), "http://127.0.0.1:5/cb", ErrorCode::InvalidRedirectUri),
            (json!("native"), "http://a.example/cb", ErrorCode::InvalidRedirectUri),
            (json!("desktop"), "https://a.example/cb", ErrorCode::InvalidClientMetadata),
            (json!(1), "https://a.example/cb", ErrorCode::InvalidClientMetadata),
        ] {
            let err = reg(t.clone(), uri).err();
            assert_eq!(err.as_ref().map(|e| e.code), Some(code), "{t} {uri}");
            assert!(err.is_some_and(|e| e.description.contains("application_type")), "{t} {uri}");
        }
    }

    #[test]
    fn control_and_bidi_characters_are_refused_in_every_shown_field() {
        let ok = || json!({"redirect_uris": ["https://a.example/cb"], "client_name": "Example"});
        assert_eq!(code(ok()), None);
        for (field, value) in [
            ("client_name", json!("evil\u{202E}gnp")),
            ("client_name", json!("a\u{2066}b")),
            ("client_name", json!("zero\u{200B}width")),
            ("client_name", json!("line\nbreak")),
            ("client_name#he", json!("\u{200F}name")),
            ("client_uri", json!("https://a.example/\u{061C}")),
            ("logo_uri", json!("https://a.example/\u{200E}.png")),
            ("tos_uri", json!("https://a.example/\u{0000}")),
            ("policy_uri", json!("https://a.example/\u{FEFF}")),
            ("contacts", json!(["ok@a.example", "x\u{202D}@a.example"])),
            ("software_id", json!("id\u{202B}")),
            ("software_version", json!("1.0\u{202C}")),
            ("scope", json!("openid\u{202A}")),
        ] {
            let mut body = ok();
            body[field] = value;
            let err = register(&body, 1, &Default::default()).err();
            assert_eq!(err.as_ref().map(|e| e.code), Some(ErrorCode::InvalidClientMetadata), "{field}");
            assert!(err.is_some_and(|e| e.description.contains(&format!("`{field}`"))), "{field} is named");
        }
        let mut body = ok();
        body["redirect_uris"] = json!(["https://a.example/\u{202E}cb"]);
        assert_eq!(code(body), Some(ErrorCode::InvalidRedirectUri));
        // Right-to-left names are fine; unknown extension fields are ignored as RFC 7591 §2 says.
        let mut body = ok();
        body["client_name"] = json!("לקוח MCP");
        body["x_note"] = json!("free\ntext");
        assert_eq!(code(body), None);
    }

    #[test]
    fn an_update_goes_through_the_same_check() {
        let r = register(
            &json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "none"}),
            1,
            &Default::default(),
        );
        let Some(r) = r.ok() else { panic!("registration") };
        let body = json!({"client_id": r.client.client_id, "redirect_uris": ["https://a.example/cb"],
            "token_endpoint_auth_method": "none", "client_name": "x\u{202E}y"});
        let err = update(&r.client, &body, 2, &Default::default()).err();
        assert_eq!(err.map(|e| e.code), Some(ErrorCode::InvalidClientMetadata));
    }
}
