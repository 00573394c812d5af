//! Reading the requests of the authorization server's endpoints: form bodies (RFC 6749 §3.2, HTML forms) and the
//! client a request names, registered (RFC 7591) or a Client ID Metadata Document.
//!
//! Invariants:
//! - A form body is read only with `Content-Type: application/x-www-form-urlencoded` and at most [`FORM_LIMIT`]
//!   bytes; errors of an OAuth endpoint are OAuth errors, errors of an HTML page's post are pages.
//! - A metadata document is fetched only for a client_id that is a document URL.

use std::sync::Arc;

use http::{HeaderMap, Request, StatusCode};

use crate::app::App;
use crate::client_documents::{self, DocumentError};
use crate::endpoint::Endpoint;
use crate::endpoints::client_auth::{self, Credential};
use crate::error::{Error, OAuthError};
use crate::http::params::Params;
use crate::http::{self as h, read_body, RequestBody};
use crate::store::Client;

const FORM: &str = "application/x-www-form-urlencoded";
/// Largest form body of the token, consent, login and revocation endpoints.
pub const FORM_LIMIT: usize = 16 * 1024;

/// Parses the form body of an OAuth endpoint (token, revocation, introspection); errors are OAuth errors.
pub async fn read_oauth_form(req: Request<RequestBody>) -> Result<(HeaderMap, Params), Error> {
    if !h::has_content_type(req.headers(), FORM) {
        return Err(OAuthError::invalid_request(format!("Content-Type must be {FORM}")).into());
    }
    let (parts, body) = req.into_parts();
    let body = read_body(body, FORM_LIMIT).await?;
    let params = Params::parse(&body)?;
    Ok((parts.headers, params))
}

/// Parses a form body of an HTML page's post; errors are shown as a page.
pub async fn read_form(req: Request<RequestBody>) -> Result<(HeaderMap, Params), Error> {
    let bad = |m: String| Error::page(StatusCode::BAD_REQUEST, "Invalid form", m);
    if !h::has_content_type(req.headers(), FORM) {
        return Err(bad(format!("The form must be sent as {FORM}.")));
    }
    let (parts, body) = req.into_parts();
    let body = read_body(body, FORM_LIMIT).await?;
    let params = Params::parse(&body).map_err(|e| bad(e.to_string()))?;
    Ok((parts.headers, params))
}

/// A client named by the URL of its metadata document, fetched (or from the cache) and checked.
pub async fn document_client(app: &App, client_id: Option<&str>) -> Result<Option<Arc<Client>>, DocumentError> {
    match client_id {
        Some(id) if client_documents::is_document_id(id) => app
            .client_documents
            .client(id, app.clock.now(), &app.config.registration.redirect_allowlist, &app.metrics)
            .await
            .map(Some)
            .inspect_err(|e| tracing::info!(client_id = id, error = %e, "client metadata document refused")),
        _ => Ok(None),
    }
}

/// Looks a client up: the document client already resolved for this request, or the registered one already
/// read from the store, each only for its own id.
pub fn find_client(document: &Option<Arc<Client>>, registered: &Option<Arc<Client>>, id: &str) -> Option<Arc<Client>> {
    [document, registered].into_iter().flatten().find(|c| c.client_id == id).cloned()
}

/// The client a token, revocation or introspection request names (registered, or a metadata document fetched
/// or cached), authenticated with the request's credential ([`client_auth`]).
pub async fn token_client(app: &App, credential: &Credential, endpoint: Endpoint) -> Result<Arc<Client>, Error> {
    let id = credential.client_id();
    let client = if client_documents::is_document_id(id) {
        document_client(app, Some(id)).await.map_err(DocumentError::into_token_error)?
    } else {
        app.store.client(id).await?
    };
    let client = client.ok_or_else(|| OAuthError::invalid_client("unknown client; register again"))?;
    client_auth::authenticate(app, client, credential, endpoint).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolved_document_client_is_used_only_for_its_own_id() {
        let registered = Some(Arc::new(Client::public("registered", vec![], 1)));
        let doc = Some(Arc::new(Client::public("https://app.example/client.json", vec![], 1)));
        let found = |id: &str| find_client(&doc, &registered, id).map(|c| c.client_id.clone());
        assert_eq!(found("https://app.example/client.json").as_deref(), Some("https://app.example/client.json"));
        assert_eq!(found("registered").as_deref(), Some("registered"));
        assert_eq!(found("https://other.example/client.json"), None);
        assert_eq!(find_client(&None, &registered, "unknown").map(|c| c.client_id.clone()), None);
    }
}
