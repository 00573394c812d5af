//! The admin API: a small JSON API on its own listener (`[admin] listen`, never the public port), for
//! `dcr-proxy admin …` and scripts. It lists clients and grants, revokes a grant, every grant of a user or a client
//! with its grants, and switches registration off and on.
//!
//! | Method | Path                                  | Does                                                   |
//! |--------|---------------------------------------|--------------------------------------------------------|
//! | GET    | `/admin/clients`                      | every client: name, redirect hosts, created, grants    |
//! | GET    | `/admin/grants?subject=…&client_id=…` | live grants, optionally filtered by user and client    |
//! | POST   | `/admin/revoke-grant?id=…`            | revokes one grant (its tokens stop working at once)    |
//! | POST   | `/admin/revoke-user?subject=…`        | revokes every grant of a user                          |
//! | POST   | `/admin/revoke-client?id=…`           | deletes a client and revokes its grants (RFC 7592 §2.3) |
//! | GET    | `/admin/registration`                 | whether `/register` is open                            |
//! | POST   | `/admin/registration?enabled=…`       | switches `/register` on (`true`) or off (`false`)      |
//!
//! Invariants:
//! - Every request carries `Authorization: Bearer <DCR_PROXY_ADMIN_TOKEN>`, compared as a SHA-256 hash in
//!   constant time ([`crate::crypto::TokenHash::matches`]); anything else is 401 before the path is looked at.
//! - No answer holds a token, code, secret or hash: grants are shown by id (random, not a credential), user
//!   subject and name, client, scopes and times; the IdP token only by its expiry.
//! - Identifiers travel in the query string (a URL client_id holds slashes), read with `form_urlencoded`.
//! - The public router ([`crate::router`]) has no admin route: `/admin/…` on the public port is forwarded behind a
//!   bearer like any other path.

pub mod cli;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use http::{HeaderMap, Method, StatusCode};
use serde::Serialize;

use crate::app::App;
use crate::audit::{Entry, Event};
use crate::clock::UnixTime;
use crate::crypto::TokenHash;
use crate::error::Error;
use crate::http::{json_response, no_store, Body};
use std::sync::Arc;

use crate::store::{Client, Grant, GrantId, UpstreamCredential};

/// One client as the admin API shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ClientRow {
    pub client_id: String,
    pub name: Option<String>,
    /// The hosts of the registered redirect URIs, each once.
    pub redirect_hosts: Vec<String>,
    /// The Client ID Metadata Document URL, for a URL client_id; `None` for a registered client.
    pub metadata_document_url: Option<String>,
    /// Registration time (unix seconds); `None` for a metadata-document client, which is not registered.
    pub created: Option<UnixTime>,
    /// The latest of its first code redemption, its grants' starts and their IdP refreshes; `None`: never used.
    pub last_used: Option<UnixTime>,
    /// Live grants.
    pub grants: usize,
}

/// One grant as the admin API shows it: never a token.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct GrantRow {
    /// 32 hex digits: the id `revoke-grant` takes.
    pub id: String,
    pub subject: String,
    /// The user's name, else preferred username, else e-mail, as the IdP gave them.
    pub user_name: Option<String>,
    pub client_id: String,
    pub client_name: Option<String>,
    pub scopes: String,
    pub created: UnixTime,
    /// When the proxy last refreshed the IdP token; `None`: not since the sign-in.
    pub last_refresh: Option<UnixTime>,
    /// When the IdP access token expires; `None` for the local login, which has none.
    pub idp_token_expires: Option<UnixTime>,
}

/// Which grants to list.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GrantFilter {
    pub subject: Option<String>,
    pub client_id: Option<String>,
}

/// Whether the headers carry the admin token as a bearer. Constant time in the token's content.
pub fn authorized(headers: &HeaderMap, expected: &TokenHash) -> bool {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    !presented.is_empty() && expected.matches(presented)
}

/// A grant id as shown by [`GrantRow::id`].
pub fn format_grant_id(id: GrantId) -> String {
    format!("{:032x}", id.0)
}

/// Reads a grant id written by [`format_grant_id`].
pub fn parse_grant_id(text: &str) -> Option<GrantId> {
    if text.len() != 32 {
        return None;
    }
    u128::from_str_radix(text, 16).ok().map(GrantId)
}

fn nonzero(t: UnixTime) -> Option<UnixTime> {
    (t != 0).then_some(t)
}

fn host_of(uri: &str) -> Option<String> {
    url::Url::parse(uri).ok().and_then(|u| u.host_str().map(str::to_owned))
}

/// The client rows: registered clients, and metadata-document clients that hold grants. Sorted by creation.
pub fn client_rows(clients: &[Arc<Client>], grants: &[Arc<Grant>]) -> Vec<ClientRow> {
    let mut by_client: HashMap<&str, Vec<&Grant>> = HashMap::new();
    for g in grants {
        by_client.entry(g.client_id.as_str()).or_default().push(g);
    }
    let used = |client_id: &str, first: UnixTime| {
        let latest = by_client.get(client_id).into_iter().flatten().fold(first, |t, g| {
            t.max(g.created_at).max(g.upstream_refreshed_at.load(std::sync::atomic::Ordering::Relaxed))
        });
        nonzero(latest)
    };
    let document_url = |client_id: &str| client_id.starts_with("https://").then(|| client_id.to_owned());
    let mut rows: Vec<ClientRow> = clients
        .iter()
        .map(|c: &std::sync::Arc<Client>| ClientRow {
            client_id: c.client_id.clone(),
            name: c.client_name.clone(),
            redirect_hosts: c
                .redirect_uris
                .iter()
                .filter_map(|u| host_of(u))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            metadata_document_url: document_url(&c.client_id),
            created: Some(c.issued_at),
            last_used: used(&c.client_id, c.first_authorized_at.load(std::sync::atomic::Ordering::Relaxed)),
            grants: by_client.get(c.client_id.as_str()).map_or(0, Vec::len),
        })
        .collect();
    let registered: BTreeSet<&str> = clients.iter().map(|c| c.client_id.as_str()).collect();
    let unregistered: BTreeSet<&str> = by_client.keys().copied().filter(|id| !registered.contains(id)).collect();
    for id in unregistered {
        rows.push(ClientRow {
            client_id: id.to_owned(),
            name: None,
            redirect_hosts: Vec::new(),
            metadata_document_url: document_url(id),
            created: None,
            last_used: used(id, 0),
            grants: by_client.get(id).map_or(0, Vec::len),
        });
    }
    rows.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.client_id.cmp(&b.client_id)));
    rows
}

/// The grant rows that pass the filter, oldest first.
pub fn grant_rows(clients: &[Arc<Client>], grants: &[Arc<Grant>], filter: &GrantFilter) -> Vec<GrantRow> {
    let name_of = |id: &str| clients.iter().find(|c| c.client_id == id).and_then(|c| c.client_name.clone());
    let mut rows: Vec<GrantRow> = grants
        .iter()
        .filter(|g| filter.subject.as_deref().is_none_or(|s| g.identity.sub == s))
        .filter(|g| filter.client_id.as_deref().is_none_or(|c| g.client_id == c))
        .map(|g| {
            let identity = &g.identity;
            GrantRow {
                id: format_grant_id(g.id),
                subject: identity.sub.clone(),
                user_name: identity
                    .name
                    .clone()
                    .or_else(|| identity.preferred_username.clone())
                    .or_else(|| identity.email.clone()),
                client_id: g.client_id.clone(),
                client_name: name_of(&g.client_id),
                scopes: g.scope.to_string(),
                created: g.created_at,
                last_refresh: nonzero(g.upstream_refreshed_at.load(std::sync::atomic::Ordering::Relaxed)),
                idp_token_expires: match &*g.upstream() {
                    UpstreamCredential::Tokens(t) => Some(t.expires_at),
                    UpstreamCredential::Local => None,
                },
            }
        })
        .collect();
    rows.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
    rows
}

/// The query parameters of an admin request; a repeated one is refused.
fn query(uri: &http::Uri) -> Result<HashMap<String, String>, Error> {
    let mut params = HashMap::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if params.insert(k.to_string(), v.to_string()).is_some() {
            return Err(Error::AdminBadRequest(format!("`{k}` is repeated")));
        }
    }
    Ok(params)
}

fn required(params: &HashMap<String, String>, name: &str) -> Result<String, Error> {
    params
        .get(name)
        .filter(|v| !v.is_empty())
        .cloned()
        .ok_or_else(|| Error::AdminBadRequest(format!("the query parameter `{name}` is required")))
}

/// Handles one admin request (the admin listener only; see [`crate::server::serve_admin`]).
pub async fn handle(
    app: &App,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> http::Response<Body> {
    let context = crate::audit::RequestContext { audit: app.audit.clone(), request_id: 0, peer, forwarded_for: None };
    let mut resp = match crate::audit::REQUEST.scope(context, dispatch(app, method, uri, headers, peer)).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    no_store(&mut resp);
    resp
}

async fn dispatch(
    app: &App,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<http::Response<Body>, Error> {
    let Some(admin) = &app.config.admin else { return Err(Error::NotFound) };
    {
        use secrecy::ExposeSecret as _;
        if !authorized(headers, &TokenHash::of(admin.token.expose_secret())) {
            tracing::warn!(%peer, path = uri.path(), "admin request refused: token missing or wrong");
            return Err(Error::AdminUnauthorized);
        }
    }
    let params = query(uri)?;
    let ok = |value: serde_json::Value| Ok(json_response(StatusCode::OK, &value));
    match (method, uri.path()) {
        (&Method::GET, "/admin/clients") => {
            let (clients, grants) = (app.store.list_clients().await?, app.store.list_grants().await?);
            ok(serde_json::json!({ "clients": client_rows(&clients, &grants) }))
        }
        (&Method::GET, "/admin/grants") => {
            let filter =
                GrantFilter { subject: params.get("subject").cloned(), client_id: params.get("client_id").cloned() };
            let (clients, grants) = (app.store.list_clients().await?, app.store.list_grants().await?);
            ok(serde_json::json!({ "grants": grant_rows(&clients, &grants, &filter) }))
        }
        (&Method::POST, "/admin/revoke-grant") => {
            let text = required(&params, "id")?;
            let id = parse_grant_id(&text)
                .ok_or_else(|| Error::AdminBadRequest("`id` must be a grant id of 32 hex digits".to_owned()))?;
            let grant = app.store.grant(id).await?.ok_or(Error::NotFound)?;
            app.store.revoke_grant(id).await?;
            tracing::info!(%peer, action = "revoke-grant", client_id = %grant.client_id, subject = %grant.identity.sub, "admin action");
            app.audit(
                Entry::new(Event::AdminAction)
                    .client(&grant.client_id)
                    .subject(&grant.identity.sub)
                    .detail(format!("revoke-grant {text}")),
            )
            .await;
            ok(serde_json::json!({ "revoked_grants": 1 }))
        }
        (&Method::POST, "/admin/revoke-user") => {
            let subject = required(&params, "subject")?;
            let revoked = app.store.revoke_user(&subject).await?.len();
            tracing::info!(%peer, action = "revoke-user", %subject, revoked, "admin action");
            app.audit(
                Entry::new(Event::AdminAction).subject(&subject).detail(format!("revoke-user: {revoked} grant(s)")),
            )
            .await;
            ok(serde_json::json!({ "revoked_grants": revoked }))
        }
        (&Method::POST, "/admin/revoke-client") => {
            let client_id = required(&params, "id")?;
            let grants = app.store.list_grants().await?.iter().filter(|g| g.client_id == client_id).count();
            let known = app.store.has_client(&client_id).await? || grants > 0;
            if !known {
                return Err(Error::NotFound);
            }
            let name = app.store.client(&client_id).await?.and_then(|c| c.client_name.clone());
            app.store.revoke_client(&client_id).await?;
            tracing::info!(%peer, action = "revoke-client", %client_id, revoked = grants, "admin action");
            app.audit(Entry {
                client_name: name,
                ..Entry::new(Event::AdminAction).client(&client_id).detail(format!("revoke-client: {grants} grant(s)"))
            })
            .await;
            ok(serde_json::json!({ "revoked_grants": grants }))
        }
        (&Method::GET, "/admin/registration") => ok(serde_json::json!({ "enabled": app.registration_is_open() })),
        (&Method::POST, "/admin/registration") => {
            let enabled = match required(&params, "enabled")?.as_str() {
                "true" | "on" => true,
                "false" | "off" => false,
                other => return Err(Error::AdminBadRequest(format!("`enabled` must be true or false, not `{other}`"))),
            };
            app.registration_open.store(enabled, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(%peer, action = "registration", enabled, "admin action");
            app.audit(
                Entry::new(Event::AdminAction).detail(format!("registration {}", if enabled { "on" } else { "off" })),
            )
            .await;
            ok(serde_json::json!({ "enabled": enabled }))
        }
        (_, "/admin/clients" | "/admin/grants") => Err(Error::MethodNotAllowed { allow: "GET" }),
        (_, "/admin/revoke-grant" | "/admin/revoke-user" | "/admin/revoke-client") => {
            Err(Error::MethodNotAllowed { allow: "POST" })
        }
        (_, "/admin/registration") => Err(Error::MethodNotAllowed { allow: "GET, POST" }),
        _ => Err(Error::NotFound),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::store::{Identity, UpstreamLogin};

    fn grant(client: &str, sub: &str, at: UnixTime) -> std::sync::Arc<Grant> {
        let identity = Identity { sub: sub.into(), name: Some(format!("{sub} name")), ..Default::default() };
        Grant::new(
            client.into(),
            vec!["openid".into()],
            None,
            UpstreamLogin { credential: UpstreamCredential::Local, identity },
            at,
        )
    }

    #[test]
    fn only_the_exact_bearer_is_authorized() {
        let expected = TokenHash::of("a-long-admin-token-of-more-than-32-chars");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, http::HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(authorized(&with("Bearer a-long-admin-token-of-more-than-32-chars"), &expected));
        assert!(!authorized(&with("Bearer a-long-admin-token-of-more-than-32-char"), &expected));
        assert!(!authorized(&with("a-long-admin-token-of-more-than-32-chars"), &expected));
        assert!(!authorized(&with("Bearer "), &TokenHash::of("")));
        assert!(!authorized(&HeaderMap::new(), &expected));
    }

    #[test]
    fn grant_ids_round_trip_and_refuse_other_text() {
        let id = GrantId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(parse_grant_id(&format_grant_id(id)), Some(id));
        assert_eq!(parse_grant_id("123"), None);
        assert_eq!(parse_grant_id("zz234567890123456789012345678901"), None);
    }

    #[test]
    fn grants_are_filtered_by_user_and_client_and_counted_per_client() {
        let store = MemoryStore::new();
        store.put_client(Client::public(
            "c1",
            vec!["http://127.0.0.1:1/cb".into(), "http://127.0.0.1:2/cb".into()],
            10,
        ));
        store.add_grant(grant("c1", "alice", 20));
        store.add_grant(grant("c1", "bob", 30));
        store.add_grant(grant("https://app.example/client.json", "alice", 40));
        let alice = grant_rows(
            &store.list_clients(),
            &store.list_grants(),
            &GrantFilter { subject: Some("alice".into()), client_id: None },
        );
        assert_eq!(alice.len(), 2);
        assert_eq!(alice[0].user_name.as_deref(), Some("alice name"));
        let c1 = grant_rows(
            &store.list_clients(),
            &store.list_grants(),
            &GrantFilter { subject: None, client_id: Some("c1".into()) },
        );
        assert_eq!(c1.len(), 2);
        let clients = client_rows(&store.list_clients(), &store.list_grants());
        assert_eq!(clients.len(), 2, "{clients:?}");
        let doc = clients.iter().find(|c| c.client_id.starts_with("https://")).unwrap();
        assert_eq!(doc.metadata_document_url.as_deref(), Some("https://app.example/client.json"));
        let c1 = clients.iter().find(|c| c.client_id == "c1").unwrap();
        assert_eq!((c1.grants, c1.redirect_hosts.clone(), c1.last_used), (2, vec!["127.0.0.1".to_owned()], Some(30)));
        assert_eq!(store.revoke_user("alice").len(), 2);
        assert_eq!(grant_rows(&store.list_clients(), &store.list_grants(), &GrantFilter::default()).len(), 1);
    }
}
