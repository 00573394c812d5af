//! The rules of a Client ID Metadata Document (draft-ietf-oauth-client-id-metadata-document, MCP 2025-11-25
//! "Client ID Metadata Documents"), as plain functions.
//!
//! - The client_id URL (§3): `https`, a path other than `/`, no fragment, no user or password, no `.`/`..`
//!   segments, and already in canonical form (the document's `client_id` is compared byte for byte).
//! - The document (§4): a JSON object whose `client_id` equals the URL; no client secret (there is nobody to
//!   share it with); `token_endpoint_auth_method` `none` (the default here) or `private_key_jwt` with `jwks` or
//!   `jwks_uri` (RFC 7523 §2.2; ChatGPT's documents), never a shared-secret method; every other field follows the RFC
//!   7591 rules the proxy applies to registrations, the operator's redirect allowlist included, and the same
//!   refusal of control and bidi characters in the text it shows (`client_name` …).

use url::Url;

use super::DocumentError;
use crate::clock::UnixTime;
use crate::oauth::register;
use crate::redirect_uri::Allowlist;
use crate::store::{Client, ClientAuthMethod};

/// The longest client_id URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Whether a `client_id` names a metadata document (rather than a registered client).
pub fn is_document_id(client_id: &str) -> bool {
    client_id.starts_with("https://")
}

/// Checks a client_id URL and, when an allowlist is set, its host. Returns the parsed URL.
pub fn check_url(client_id: &str, allowed_hosts: &[String]) -> Result<Url, DocumentError> {
    let bad = |why: &str| DocumentError::InvalidUrl(why.to_owned());
    if client_id.len() > MAX_URL_LEN {
        return Err(bad("it is longer than 2048 characters"));
    }
    let url = Url::parse(client_id).map_err(|e| DocumentError::InvalidUrl(e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad("it must be an https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it must not contain a user name or password"));
    }
    if url.fragment().is_some() {
        return Err(bad("it must not contain a fragment"));
    }
    if url.path() == "/" {
        return Err(bad("it must have a path (such as /client.json)"));
    }
    // `Url` resolves dot segments, lower-cases the host and drops a default port: any difference means the
    // string was not canonical, and a document could never name it exactly.
    if url.as_str() != client_id {
        return Err(bad("it is not in canonical form (dot segments, upper-case host, default port or escapes)"));
    }
    let host = url.host_str().ok_or_else(|| bad("it has no host"))?;
    if !host_allowed(host, allowed_hosts) {
        return Err(DocumentError::HostNotAllowed(host.to_owned()));
    }
    Ok(url)
}

/// `allowed` entries are exact hosts or `*.suffix` (any subdomain of suffix, not suffix itself).
pub(crate) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    allowed.is_empty()
        || allowed.iter().any(|a| match a.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1 && host.ends_with(suffix) && {
                    let dot = host.len() - suffix.len() - 1;
                    host.as_bytes()[dot] == b'.'
                }
            }
            None => a == host,
        })
}

/// Turns a fetched document into the client it describes.
pub fn parse(body: &[u8], url: &Url, now: UnixTime, redirects: &Allowlist) -> Result<Client, DocumentError> {
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| DocumentError::NotJson(e.to_string()))?;
    let obj = doc.as_object().ok_or_else(|| DocumentError::NotJson("the top level is not an object".into()))?;
    match obj.get("client_id") {
        Some(serde_json::Value::String(id)) if id == url.as_str() => {}
        Some(serde_json::Value::String(id)) => return Err(DocumentError::ClientIdMismatch { found: shorten(id, 120) }),
        _ => return Err(DocumentError::Invalid("`client_id` is missing or not a string".into())),
    }
    if obj.contains_key("client_secret") || obj.contains_key("client_secret_expires_at") {
        return Err(DocumentError::Invalid("a metadata document must not contain a client secret".into()));
    }
    let metadata = register::validate_metadata(&doc, redirects)
        .map_err(|e| DocumentError::Invalid(shorten(&e.description, 300)))?;
    let method = document_auth_method(obj, &metadata)?;
    Ok(metadata.into_client(url.as_str().to_owned(), method, None, None, now))
}

/// How a document's client authenticates: `none` (the default), or `private_key_jwt` when the document says so in
/// `token_endpoint_auth_method`, or lists it in `token_endpoint_auth_methods_supported` (as ChatGPT's documents
/// do) and publishes keys. Shared-secret methods are refused: there is nobody to share a secret with.
fn document_auth_method(
    obj: &serde_json::Map<String, serde_json::Value>,
    metadata: &register::ClientMetadata,
) -> Result<ClientAuthMethod, DocumentError> {
    let listed = obj
        .get("token_endpoint_auth_methods_supported")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|methods| methods.iter().any(|m| m.as_str() == Some("private_key_jwt")));
    match metadata.auth_method {
        Some(ClientAuthMethod::PrivateKeyJwt) => Ok(ClientAuthMethod::PrivateKeyJwt),
        None if listed && metadata.keys.is_some() => Ok(ClientAuthMethod::PrivateKeyJwt),
        None | Some(ClientAuthMethod::None) => Ok(ClientAuthMethod::None),
        Some(other) => Err(DocumentError::Invalid(format!(
            "`token_endpoint_auth_method` {} is not usable with a metadata document (a shared secret has nobody \
             to be shared with); use none or private_key_jwt",
            other.as_str()
        ))),
    }
}

/// A value from a document, cut for messages (which are shown, logged and remembered with failures).
fn shorten(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max_chars).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ID: &str = "https://app.example.com/oauth/client.json";

    fn url() -> Url {
        check_url(ID, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_json(v: serde_json::Value) -> Result<Client, DocumentError> {
        parse(v.to_string().as_bytes(), &url(), 1, &Allowlist::default())
    }

    #[test]
    fn urls_must_be_canonical_https_with_a_path() {
        assert!(check_url(ID, &[]).is_ok());
        assert!(check_url("https://app.example.com/c.json?v=1", &[]).is_ok());
        for bad in [
            "http://app.example.com/client.json",
            "https://app.example.com/",
            "https://app.example.com",
            "https://user:pw@app.example.com/c.json",
            "https://app.example.com/c.json#frag",
            "https://app.example.com/a/../c.json",
            "https://app.example.com/./c.json",
            "https://APP.example.com/c.json",
            "https://app.example.com:443/c.json",
            "not a url",
        ] {
            assert!(matches!(check_url(bad, &[]), Err(DocumentError::InvalidUrl(_))), "{bad}");
        }
        assert!(check_url(&format!("https://a.example/{}", "x".repeat(2100)), &[]).is_err());
    }

    #[test]
    fn host_allowlist_takes_exact_hosts_and_subdomain_wildcards() {
        let allowed = vec!["claude.ai".to_owned(), "*.openai.com".to_owned()];
        assert!(check_url("https://claude.ai/oauth/mcp.json", &allowed).is_ok());
        assert!(check_url("https://cdn.openai.com/c.json", &allowed).is_ok());
        for refused in ["https://openai.com/c.json", "https://evilopenai.com/c.json", "https://claude.ai.evil.com/c"] {
            assert!(matches!(check_url(refused, &allowed), Err(DocumentError::HostNotAllowed(_))), "{refused}");
        }
    }

    #[test]
    fn a_valid_document_becomes_a_public_client() {
        let c = parse_json(json!({
            "client_id": ID,
            "client_name": "Example MCP client",
            "redirect_uris": ["https://app.example.com/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
            "logo_uri": "https://app.example.com/logo.png"
        }));
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.client_id, ID);
        assert_eq!(c.auth_method, ClientAuthMethod::None);
        assert!(c.secret_hash.is_none() && c.registration_token.is_none());
        assert_eq!(c.client_name.as_deref(), Some("Example MCP client"));
    }

    /// ChatGPT's two document shapes (issue "ChatGPT signs in").
    fn chatgpt(extra: serde_json::Value) -> serde_json::Value {
        let mut d = json!({
            "client_id": ID, "client_uri": "https://chatgpt.com/",
            "redirect_uris": ["https://chatgpt.com/connector/oauth/abc"],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "client_name": "ChatGPT", "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "RS256", "jwks_uri": "https://chatgpt.com/oauth/jwks.json"
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            d[k] = v.clone();
        }
        d
    }

    #[test]
    fn chatgpts_documents_become_private_key_jwt_clients() {
        for doc in [
            chatgpt(json!({})),
            chatgpt(json!({"token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
                "redirect_uris": ["https://chatgpt.com/connector_platform_oauth_redirect"]})),
        ] {
            let c = parse_json(doc).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.auth_method, ClientAuthMethod::PrivateKeyJwt);
            assert_eq!(c.keys, Some(crate::store::ClientKeys::Uri("https://chatgpt.com/oauth/jwks.json".into())));
            assert_eq!(c.signing_alg, Some(jsonwebtoken::Algorithm::RS256));
        }
        // Listed as supported (without `token_endpoint_auth_method`) and with keys: private_key_jwt as well.
        let mut listed = chatgpt(json!({"token_endpoint_auth_methods_supported": ["none", "private_key_jwt"]}));
        listed.as_object_mut().map(|o| o.remove("token_endpoint_auth_method"));
        assert_eq!(parse_json(listed).map(|c| c.auth_method).ok(), Some(ClientAuthMethod::PrivateKeyJwt));
        // private_key_jwt without keys, or with both kinds, is refused naming the fields.
        let mut keyless = chatgpt(json!({}));
        keyless.as_object_mut().map(|o| o.remove("jwks_uri"));
        assert!(matches!(parse_json(keyless), Err(DocumentError::Invalid(m)) if m.contains("jwks_uri")));
        let both = chatgpt(json!({"jwks": {"keys": []}}));
        assert!(matches!(parse_json(both), Err(DocumentError::Invalid(m)) if m.contains("both")));
        for secret in ["client_secret_post", "client_secret_basic"] {
            let doc = chatgpt(json!({"token_endpoint_auth_method": secret}));
            assert!(matches!(parse_json(doc), Err(DocumentError::Invalid(m)) if m.contains(secret)), "{secret}");
        }
    }

    #[test]
    fn documents_that_break_the_rules_are_refused() {
        let base = || json!({"client_id": ID, "redirect_uris": ["https://app.example.com/cb"]});
        let with = |k: &str, v: serde_json::Value| {
            let mut d = base();
            d[k] = v;
            d
        };
        assert!(matches!(
            parse_json(with("client_id", json!("https://other.example/c.json"))),
            Err(DocumentError::ClientIdMismatch { .. })
        ));
        assert!(matches!(parse_json(with("client_id", json!(7))), Err(DocumentError::Invalid(_))));
        assert!(matches!(parse_json(with("client_secret", json!("s"))), Err(DocumentError::Invalid(_))));
        assert!(matches!(
            parse_json(with("token_endpoint_auth_method", json!("client_secret_basic"))),
            Err(DocumentError::Invalid(_))
        ));
        assert!(matches!(parse_json(with("redirect_uris", json!([]))), Err(DocumentError::Invalid(_))));
        assert!(matches!(
            parse_json(with("redirect_uris", json!(["http://evil.example/cb"]))),
            Err(DocumentError::Invalid(_))
        ));
        assert!(matches!(parse(b"[1]", &url(), 1, &Allowlist::default()), Err(DocumentError::NotJson(_))));
        assert!(matches!(parse(b"{", &url(), 1, &Allowlist::default()), Err(DocumentError::NotJson(_))));
    }

    #[test]
    fn the_operators_redirect_allowlist_applies() {
        let only_claude = crate::redirect_uri::preset("claude").unwrap_or_default();
        let doc = json!({"client_id": ID, "redirect_uris": ["https://app.example.com/cb"]});
        assert!(parse(doc.to_string().as_bytes(), &url(), 1, &only_claude).is_err());
    }
}
