//! Dynamic client registration (RFC 7591 §3) and the client configuration endpoint (RFC 7592): the handlers
//! around the metadata rules of [`crate::oauth::register`].
//!
//! Invariants:
//! - With `registration.initial_access_token` set, registration requires it as bearer (RFC 7591 §3).
//! - A full client table makes room by evicting never-used clients ([`crate::store::MemoryStore::make_room_for_client`]);
//!   only a table whose clients all redeemed a code refuses a registration.
//! - `/register/{client_id}` needs the registration access token of that client; an unknown client and a wrong
//!   token are the same 401 (RFC 7592 §2), so that nothing is learned about which clients exist.
//! - While the operator has switched registration off ([`crate::admin`]), `/register` answers 403 before reading
//!   anything.
//! - Deleting a client revokes every grant it holds ([`crate::store::MemoryStore::revoke_client`]).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};

use crate::app::App;
use crate::audit::{Entry, Event};
use crate::crypto::TokenHash;
use crate::endpoint::CLIENT_CONFIGURATION_PREFIX;
use crate::error::{Error, ErrorCode, OAuthError};
use crate::http::{self as h, json_response, no_store, read_body, Body, RequestBody};
use crate::oauth::{bearer_token as bearer, register};
use crate::rate_limit;
use crate::store::{Client, Store, StoreError};

/// RFC 7591 §3: registers a client from a JSON metadata body.
pub async fn register(
    app: &App,
    req: Request<RequestBody>,
    source: rate_limit::Source,
) -> Result<Response<Body>, Error> {
    if !app.registration_is_open() {
        return Err(Error::RegistrationClosed);
    }
    let policy = &app.config.registration;
    if let Some(expected) = &policy.initial_access_token {
        use secrecy::ExposeSecret as _;
        let presented = bearer::token_from_headers(req.headers()).unwrap_or("");
        if !TokenHash::of(expected.expose_secret()).matches(presented) {
            return Err(Error::RegistrationTokenRequired);
        }
    }
    let json = read_metadata(app, req).await?;
    let now = app.clock.now();
    let registration = register::register(&json, now, &policy.redirect_allowlist)?;
    match app
        .store
        .make_room_for_client(
            now,
            policy.unused_client_ttl.as_secs(),
            policy.max_clients,
            app.config.tokens.pending_ttl.as_secs(),
        )
        .await?
    {
        Some(0) => {}
        Some(removed) => tracing::info!(removed, "unused clients removed to make room"),
        None => return Err(Error::Capacity { what: "the client registration limit is reached", html: false }),
    }
    let config_uri = configuration_uri(&app.config.server.public_url, &registration.client.client_id);
    let mut doc = register::response_body(
        &registration.client,
        registration.secret.as_deref(),
        (Some(&registration.registration_token), &config_uri),
    );
    if let (Some(kind), Some(obj)) = (registration.application_type, doc.as_object_mut()) {
        obj.insert("application_type".into(), kind.as_str().into());
    }
    tracing::info!(
        client_id = %registration.client.client_id,
        client_name = registration.client.client_name.as_deref().unwrap_or(""),
        auth_method = registration.client.auth_method.as_str(),
        "client registered"
    );
    app.audit(
        Entry::new(Event::ClientRegistered)
            .client(&registration.client.client_id)
            .name(registration.client.client_name.as_deref()),
    )
    .await;
    app.store.add_client(registration.client, source).await?;
    let mut resp = json_response(StatusCode::CREATED, &doc);
    no_store(&mut resp);
    Ok(resp)
}

/// RFC 7592 client configuration endpoint `/register/{client_id}`: read (GET), update (PUT), delete (DELETE),
/// each with the registration access token as bearer.
pub async fn manage(app: &App, req: Request<RequestBody>) -> Result<Response<Body>, Error> {
    let client_id = req.uri().path().trim_start_matches(CLIENT_CONFIGURATION_PREFIX).to_owned();
    let presented = bearer::token_from_headers(req.headers()).unwrap_or("");
    let client = managed_client(&app.store, &client_id, presented).await?.ok_or(Error::RegistrationTokenRequired)?;
    let config_uri = configuration_uri(&app.config.server.public_url, &client.client_id);
    let respond = |c: &Client| {
        let mut resp = json_response(StatusCode::OK, &register::response_body(c, None, (None, &config_uri)));
        no_store(&mut resp);
        resp
    };
    match *req.method() {
        Method::GET => Ok(respond(&client)),
        Method::DELETE => {
            app.store.revoke_client(&client.client_id).await?;
            tracing::info!(client_id = %client.client_id, "client deleted by its owner");
            app.audit(Entry::new(Event::ClientDeleted).client(&client.client_id).name(client.client_name.as_deref()))
                .await;
            let mut resp = Response::new(h::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            Ok(resp)
        }
        _ => {
            let json = read_metadata(app, req).await?;
            let updated =
                register::update(&client, &json, app.clock.now(), &app.config.registration.redirect_allowlist)?;
            let resp = respond(&updated);
            tracing::info!(client_id = %client.client_id, "client metadata updated");
            app.audit(Entry::new(Event::ClientUpdated).client(&client.client_id).name(updated.client_name.as_deref()))
                .await;
            app.store.put_client(updated).await?;
            Ok(resp)
        }
    }
}

/// The registered client `client_id` if `presented` is its registration access token (RFC 7592 §2.1).
pub async fn managed_client(
    store: &Store,
    client_id: &str,
    presented: &str,
) -> Result<Option<Arc<Client>>, StoreError> {
    Ok(store.client(client_id).await?.filter(|c| c.registration_token.is_some_and(|h| h.matches(presented))))
}

/// The `registration_client_uri` of a client (RFC 7592 §3).
pub fn configuration_uri(public_url: &str, client_id: &str) -> String {
    format!("{public_url}{CLIENT_CONFIGURATION_PREFIX}{client_id}")
}

async fn read_metadata(app: &App, req: Request<RequestBody>) -> Result<serde_json::Value, Error> {
    if !h::has_content_type(req.headers(), "application/json") {
        return Err(Error::UnsupportedMediaType { expected: "application/json" });
    }
    let body = read_body(req.into_body(), app.config.registration.max_body_bytes).await?;
    Ok(parse_metadata(&body)?)
}

/// A client metadata body (RFC 7591 §2): JSON, or `invalid_client_metadata`.
pub fn parse_metadata(body: &[u8]) -> Result<serde_json::Value, OAuthError> {
    serde_json::from_slice(body)
        .map_err(|e| OAuthError::new(ErrorCode::InvalidClientMetadata, format!("the body is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_clients_own_registration_token_manages_it() {
        let store = Arc::new(crate::store::MemoryStore::new());
        let state = Store::Memory(store.clone());
        let mut client = Client::public("c1", vec![], 1);
        client.registration_token = Some(TokenHash::of("rat-1"));
        store.put_client(client);
        store.put_client(Client::public("no-token", vec![], 1));
        let managed = |id: &'static str, token: &'static str| {
            let state = &state;
            async move { managed_client(state, id, token).await.ok().flatten().is_some() }
        };
        assert!(managed("c1", "rat-1").await);
        assert!(!managed("c1", "rat-2").await);
        assert!(!managed("c1", "").await);
        assert!(!managed("no-token", "").await, "a client without a token is never managed");
        assert!(!managed("unknown", "rat-1").await);
    }

    #[test]
    fn metadata_must_be_json_and_the_configuration_uri_names_the_client() {
        assert_eq!(parse_metadata(b"{not json").err().map(|e| e.code), Some(ErrorCode::InvalidClientMetadata));
        assert!(parse_metadata(br#"{"redirect_uris": []}"#).is_ok());
        assert_eq!(configuration_uri("https://p.example", "abc"), "https://p.example/register/abc");
    }
}
