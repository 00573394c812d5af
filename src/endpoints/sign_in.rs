//! The sign-in endpoints (SPEC §4): `/authorize` → consent → IdP (or the local login) → `/callback` → code
//! (RFC 6749 §4.1.1–§4.1.2, RFC 7636, RFC 9207). The sealed tickets they pass along are [`crate::oauth::flow`]'s.
//!
//! Invariants:
//! - Nothing is stored before consent: the validated request travels sealed in the consent form and IdP state.
//! - `live` is the one check that a ticket is live, belongs to this browser and was not used; `spend` is the
//!   one atomic use of it. A consent form is spent when submitted (approved or denied); an IdP state when the
//!   callback arrives or the local login succeeds (a wrong password leaves it usable).
//! - The authorization response carries `iss` (RFC 9207) and the client's `state` unchanged.

use http::{header, HeaderMap, Request, Response, StatusCode};

use super::{consent, requests};
use crate::app::App;
use crate::audit::{Entry, Event};
use crate::crypto::{self, TokenHash};
use crate::error::{Error, ErrorCode, OAuthError};
use crate::http::params::Params;
use crate::http::{self as h, Body, RequestBody};
use crate::idp::oidc::SignInHints;
use crate::idp::{entra_error, local, Idp, IdpError};
use crate::oauth::authorize::{self, AuthorizeContext};
use crate::oauth::flow::{ConsentTicket, IdpTicket, PendingAuthorization, SignIns, Ticket};
use crate::oauth::{cookies, pkce};
use crate::store::{
    AuthorizationCode, AuthorizationRequest, InteractionRequirement, UpstreamCredential, UpstreamLogin,
};

/// `GET /authorize`: validates the request and shows the consent page.
pub async fn authorize(app: &App, req: &Request<RequestBody>) -> Result<Response<Body>, Error> {
    let ctx = AuthorizeContext {
        issuer: &app.config.server.public_url,
        resources: &app.resources,
        offered_scopes: &app.config.idp.scopes,
        max_state_bytes: app.config.limits.max_state_bytes,
    };
    let query = req.uri().query().unwrap_or("").as_bytes();
    // Refused before a metadata document is fetched for it.
    authorize::check_query_length(query)?;
    let named = Params::parse(query).ok().and_then(|p| p.get("client_id").map(str::to_owned));
    let document = requests::document_client(app, named.as_deref())
        .await
        .map_err(|e| e.into_page(named.as_deref().unwrap_or("")))?;
    let registered = match named.as_deref() {
        Some(id) if !crate::client_documents::is_document_id(id) => app.store.client(id).await?,
        _ => None,
    };
    let request = authorize::validate(query, |id| requests::find_client(&document, &registered, id), &ctx)?;
    let client = requests::find_client(&document, &registered, &request.client_id)
        .ok_or_else(|| Error::page(StatusCode::BAD_REQUEST, "Unknown client", "The application is not registered."))?;
    // While its user signs in, the client is not evicted to make room for new registrations.
    client.mark_sign_in(app.clock.now());
    if registered.is_some() {
        app.store.sign_in_started(&client.client_id, app.config.tokens.pending_ttl.as_secs()).await?;
    }

    // Nothing is stored: the request travels sealed in the consent form, bound to a cookie the proxy minted.
    let browser = app.sign_ins.browser_cookie(req.headers()).unwrap_or_else(|| app.sign_ins.mint_cookie());
    let csrf = crypto::random_token();
    let ttl = app.config.tokens.pending_ttl.as_secs();
    let pending = PendingAuthorization { request, browser: TokenHash::of(&browser), expires_at: app.clock.now() + ttl };
    let ticket = ConsentTicket::new(pending, &csrf);
    // Entra refused this person's last grant through this client until they interact: say what their
    // organisation requires.
    let mut notice = None;
    for who in people(app, req.headers(), &ticket.pending.browser) {
        if let Some(i) = app.store.interaction_required(&client.client_id, &who, app.clock.now()).await? {
            notice = Some(entra_error::requirement_text(i.aadsts));
            break;
        }
    }
    let mut resp = consent::render(
        &client,
        &ticket.pending.request,
        &app.sign_ins.seal(&ticket),
        &csrf,
        &app.config.pages,
        notice,
    );
    if let Some(cookie) = cookies::set_cookie(app.config.is_https(), &browser, ttl) {
        resp.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(resp)
}

/// `POST /consent`: the user approved (on to the IdP) or denied (back to the client with `access_denied`).
pub async fn consent(app: &App, req: Request<RequestBody>) -> Result<Response<Body>, Error> {
    let (headers, params) = requests::read_form(req).await?;
    let refused = || {
        Error::page(
            StatusCode::FORBIDDEN,
            "Approval not accepted",
            "This approval form has expired, was already used, or was not submitted from the browser that opened \
             it. Start the connection again from the application.",
        )
    };
    let csrf = params.get("csrf").ok_or_else(refused)?;
    let ticket = live::<ConsentTicket>(app, params.get("request"), &headers)
        .await?
        .filter(|t| t.csrf.matches(csrf))
        .ok_or_else(refused)?;
    if !spend(app, &ticket).await? {
        return Err(refused());
    }
    let pending = ticket.pending;

    if params.get("action") != Some("approve") {
        tracing::info!(client_id = %pending.request.client_id, "user denied consent");
        app.audit(Entry::new(Event::ConsentDenied).client(&pending.request.client_id)).await;
        return Err(Error::Redirect {
            redirect_uri: pending.request.redirect_uri,
            error: OAuthError::new(ErrorCode::AccessDenied, "the user denied the request"),
            state: pending.request.state,
            issuer: app.config.server.public_url.to_string(),
        });
    }
    app.audit(
        Entry::new(Event::ConsentApproved)
            .client(&pending.request.client_id)
            .detail(format!("scope: {}", pending.request.scope.join(" "))),
    )
    .await;
    // The IdP state, nonce and PKCE verifier exist only from here on; the state carries them, sealed.
    let verifier = pkce::new_verifier();
    let nonce = crypto::random_token();
    let challenge = crypto::pkce_s256(&verifier);
    let client_id = pending.request.client_id.clone();
    let people = people(app, &headers, &pending.browser);
    let state = app.sign_ins.seal(&IdpTicket::new(pending, verifier, nonce.clone()));
    let location = match &*app.idp {
        Idp::Oidc(p) => p.authorize_url(&state, &challenge, &nonce, &sign_in_hints(app, &client_id, &people).await?),
        Idp::Local(_) => h::append_query("/login", &[("state", &state)]),
    };
    Ok(h::redirect(&location))
}

/// `GET /callback`: the IdP's authorization response; exchanges its code and issues the proxy's.
pub async fn callback(app: &App, req: &Request<RequestBody>) -> Result<Response<Body>, Error> {
    let params = Params::parse(req.uri().query().unwrap_or("").as_bytes())
        .map_err(|e| Error::page(StatusCode::BAD_REQUEST, "Invalid sign-in response", e.to_string()))?;
    let request = live::<IdpTicket>(app, params.get("state"), req.headers()).await?.ok_or_else(login_state_error)?;
    if !spend(app, &request).await? {
        return Err(login_state_error());
    }
    let now = app.clock.now();
    let to_client = |code: ErrorCode, description: &str| Error::Redirect {
        redirect_uri: request.pending.request.redirect_uri.clone(),
        error: OAuthError::new(code, description),
        state: request.pending.request.state.clone(),
        issuer: app.config.server.public_url.to_string(),
    };
    if let Some(error) = params.get("error") {
        let aadsts = entra_error::aadsts_from_description(params.get("error_description"));
        let family = entra_error::classify(400, error, aadsts, params.get("suberror"));
        if let Some(page) = person_must_act(app, family, aadsts, &request.pending.request.client_id, || {
            IdpError::Refused { status: 400, error: error.to_owned(), aadsts, suberror: None, claims: None }
        }) {
            return Err(page);
        }
        let code = ErrorCode::from_idp(error);
        tracing::info!(client_id = %request.pending.request.client_id, idp_error = error, "identity provider returned an error");
        return Err(to_client(code, &format!("the identity provider answered {}", code.as_str())));
    }
    let Some(code) = params.get("code") else {
        return Err(to_client(ErrorCode::ServerError, "the identity provider returned no code"));
    };
    let Idp::Oidc(provider) = &*app.idp else {
        return Err(Error::NotFound);
    };
    match provider.exchange_code(code, &request.pkce_verifier, &request.nonce, now).await {
        Ok(login) => finish(app, request.pending, login).await,
        // Issue 25 §2: a person of a tenant that may not sign in is told so; no grant exists, the client gets no
        // code (it learns nothing it could act on).
        Err(IdpError::TenantNotAllowed { tid }) => {
            let client_id = &request.pending.request.client_id;
            tracing::warn!(%client_id, tenant = %tid, "sign-in refused: tenant not in idp.allowed_tenants");
            app.audit(Entry::new(Event::LoginFailed).client(client_id).detail(format!("tenant not allowed: {tid}")))
                .await;
            Err(Error::page(
                StatusCode::FORBIDDEN,
                "Your organisation is not allowed",
                format!(
                    "You signed in with an account of the Microsoft Entra tenant {tid}, which is not allowed to use \
                     this service. Sign in with an account of an allowed organisation, or ask the operator of this \
                     service to allow your organisation (tenant {tid})."
                ),
            ))
        }
        Err(e) => {
            let client_id = &request.pending.request.client_id;
            tracing::warn!(%client_id, error = %e, kind = e.family().label(), "IdP code exchange failed");
            app.metrics.idp_error(&e);
            if let IdpError::Refused { aadsts, claims, .. } = &e {
                if e.family() == entra_error::ErrorFamily::InteractionRequired {
                    let requirement = InteractionRequirement {
                        aadsts: *aadsts,
                        claims: claims.clone(),
                        login_hint: None,
                        expires_at: now + app.config.tokens.pending_ttl.as_secs(),
                    };
                    // Nobody is known yet: kept for this browser's next attempt.
                    let who = SignIns::browser_key(&request.pending.browser);
                    app.store.require_interaction(client_id, &who, requirement).await?;
                }
                if let Some(page) = person_must_act(app, e.family(), *aadsts, client_id, || e) {
                    return Err(page);
                }
                return Err(to_client(
                    ErrorCode::ServerError,
                    "the sign-in with the identity provider could not be completed",
                ));
            }
            let code = match e {
                IdpError::Unavailable(_) | IdpError::Busy { .. } => ErrorCode::TemporarilyUnavailable,
                IdpError::Refused { .. }
                | IdpError::Protocol(_)
                | IdpError::Discovery(_)
                | IdpError::TenantNotAllowed { .. } => ErrorCode::ServerError,
            };
            Err(to_client(code, "the sign-in with the identity provider could not be completed"))
        }
    }
}

/// The page that tells the person what to do when Entra refused their sign-in for a reason only they or their
/// organisation can fix (issue 16 §1): missing admin consent (and the operator's log line), or an interaction
/// their organisation requires. `None` for the other families, which go back to the client.
fn person_must_act(
    app: &App,
    family: entra_error::ErrorFamily,
    aadsts: Option<u64>,
    client_id: &str,
    error: impl FnOnce() -> IdpError,
) -> Option<Error> {
    use entra_error::ErrorFamily as F;
    match family {
        // The code Entra gave expired, or the session behind it ended, before the exchange (70008 …): the person
        // starts again; the client learns nothing it could act on.
        F::GrantEnded => Some(Error::page(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "Your sign-in with your organisation expired before it could be completed (it took too long, or your \
             session ended). Go back to the application and connect again.",
        )),
        F::AdminConsent => {
            app.idp.warn_admin_consent(&error(), client_id);
            Some(Error::page(
                StatusCode::FORBIDDEN,
                "Administrator approval required",
                "Your organisation has not approved this application's access to your account yet. An \
                 administrator of your Microsoft Entra tenant must grant consent for it; the operator of this \
                 service has been told which app registration and permissions. Try again once it is approved.",
            ))
        }
        F::InteractionRequired => Some(Error::page(
            StatusCode::FORBIDDEN,
            "Your organisation requires more",
            format!("{} Then start the connection again from the application.", entra_error::requirement_text(aadsts)),
        )),
        F::Unavailable | F::Other => None,
    }
}

/// Who may be signing in with the browser that sent `headers` (issue 23 item 11): the person who last signed in
/// there ([`SignIns::person_key`], from their cookie), then the browser binding itself (a refusal at the callback,
/// before anyone was known). An interaction requirement is found by these, never by the client alone: a client
/// registration (a metadata document above all) is shared by many people.
fn people(app: &App, headers: &HeaderMap, browser: &TokenHash) -> Vec<String> {
    app.sign_ins.person_cookie(headers).into_iter().chain([SignIns::browser_key(browser)]).collect()
}

/// What the next authorization request to Entra carries for this person and `client_id` because Entra refused
/// their last grant until they interact: `prompt=login` (never `prompt=consent`), the `claims` Entra asked for,
/// and who signed in. Taken once.
async fn sign_in_hints(app: &App, client_id: &str, people: &[String]) -> Result<SignInHints, Error> {
    for who in people {
        if let Some(i) = app.store.take_interaction(client_id, who, app.clock.now()).await? {
            return Ok(SignInHints { prompt_login: true, claims: i.claims, login_hint: i.login_hint });
        }
    }
    Ok(SignInHints::default())
}

/// `GET /login`: the local login page of a live sign-in.
pub async fn show_login(app: &App, req: &Request<RequestBody>) -> Result<Response<Body>, Error> {
    local_users(app)?;
    let params = Params::parse(req.uri().query().unwrap_or("").as_bytes()).map_err(|_| login_state_error())?;
    let state = params.get("state");
    live::<IdpTicket>(app, state, req.headers()).await?.ok_or_else(login_state_error)?;
    Ok(local::login_page(&app.config.pages, state.unwrap_or(""), None))
}

/// `POST /login`: checks the local user's password; a right one finishes the sign-in.
pub async fn submit_login(app: &App, req: Request<RequestBody>) -> Result<Response<Body>, Error> {
    let users = local_users(app)?;
    let (headers, params) = requests::read_form(req).await?;
    let state = params.get("state").unwrap_or("");
    let request = live::<IdpTicket>(app, Some(state), &headers).await?.ok_or_else(login_state_error)?;
    let username = params.get("username").unwrap_or("");
    let password = params.get("password").unwrap_or("").to_owned();
    let identity = match users.login(username, password, app.clock.now()).await {
        Ok(identity) => identity,
        Err(local::LoginRefusal::Busy) => {
            tracing::info!("local login not checked: every password check is busy");
            let wait = app.config.limits.password_check_wait;
            return Ok(local::busy_page(&app.config.pages, state, wait.as_secs() + u64::from(wait.subsec_nanos() > 0)));
        }
        Err(refusal) => {
            tracing::info!(reason = %refusal, "local login not checked");
            if let local::LoginRefusal::LockedOut { retry_after_secs } = &refusal {
                app.audit(
                    Entry::new(Event::LoginLockedOut)
                        .client(&request.pending.request.client_id)
                        .subject(username)
                        .detail(format!("locked out for {retry_after_secs} s")),
                )
                .await;
            }
            return Err(refusal.into());
        }
    };
    let Some(identity) = identity else {
        tracing::info!("local login failed");
        app.audit(
            Entry::new(Event::LoginFailed)
                .client(&request.pending.request.client_id)
                .subject(username)
                .detail("wrong username or password"),
        )
        .await;
        return Ok(local::login_page(&app.config.pages, state, Some("Wrong username or password.")));
    };
    // A wrong password leaves the state usable; a right one spends it.
    if !spend(app, &request).await? {
        return Err(login_state_error());
    }
    tracing::info!(user = %identity.sub, "local login succeeded");
    let login = UpstreamLogin { credential: UpstreamCredential::Local, identity };
    finish(app, request.pending, login).await
}

/// The ticket `sealed` names, if it is live, belongs to the browser that sent `headers` and was not used yet —
/// the one check of every step (`spend` is the atomic use).
async fn live<T: Ticket>(app: &App, sealed: Option<&str>, headers: &HeaderMap) -> Result<Option<T>, Error> {
    let Some(ticket) = sealed.and_then(|s| app.sign_ins.open_live::<T>(s, headers, app.clock.now())) else {
        return Ok(None);
    };
    Ok((!app.store.sign_in_used(&ticket.use_key()).await?).then_some(ticket))
}

/// Uses a ticket once; `false` when it was already used.
async fn spend<T: Ticket>(app: &App, ticket: &T) -> Result<bool, Error> {
    Ok(app.store.claim_sign_in(ticket.use_key(), ticket.pending().expires_at, app.clock.now()).await?)
}

fn login_state_error() -> Error {
    Error::page(
        StatusCode::BAD_REQUEST,
        "Sign-in expired",
        "This sign-in has expired, was already completed, or was started in another browser. Start the \
         connection again from the application.",
    )
}

fn local_users(app: &App) -> Result<&local::LocalUsers, Error> {
    match &*app.idp {
        Idp::Local(users) => Ok(users),
        Idp::Oidc(_) => Err(Error::NotFound),
    }
}

/// Mints the proxy's authorization code and sends the browser back to the client (RFC 6749 §4.1.2, RFC 9207).
async fn finish(app: &App, pending: PendingAuthorization, login: UpstreamLogin) -> Result<Response<Body>, Error> {
    let code = crypto::random_token();
    let location = code_redirect(&pending.request, &code, &app.config.server.public_url);
    tracing::info!(client_id = %pending.request.client_id, "authorization code issued");
    app.audit(Entry::new(Event::SignInCompleted).client(&pending.request.client_id).subject(&login.identity.sub)).await;
    // The browser remembers who signed in, for as long as a refresh token may live: what Entra later requires of
    // this person is then asked on their next sign-in, not on someone else's through the same client.
    let person = cookies::set_person_cookie(
        app.sign_ins.https(),
        &app.sign_ins.person_key(&login.identity.sub),
        app.config.tokens.refresh_ttl.as_secs(),
    );
    app.store
        .issue_code(
            &code,
            AuthorizationCode {
                request: AuthorizationRequest { state: None, ..pending.request },
                expires_at: app.clock.now() + app.config.tokens.code_ttl.as_secs(),
                login,
            },
        )
        .await?;
    let mut resp = h::redirect(&location);
    if let Some(cookie) = person {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(resp)
}

/// The authorization response's location (RFC 6749 §4.1.2): `code`, the client's `state` if it sent one, and
/// `iss` (RFC 9207), appended to its redirect URI.
pub fn code_redirect(request: &AuthorizationRequest, code: &str, issuer: &str) -> String {
    let mut params: Vec<(&str, &str)> = vec![("code", code)];
    if let Some(state) = &request.state {
        params.push(("state", state));
    }
    params.push(("iss", issuer));
    h::append_query(&request.redirect_uri, &params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(redirect_uri: &str, state: Option<&str>) -> AuthorizationRequest {
        AuthorizationRequest {
            client_id: "c1".into(),
            redirect_uri: redirect_uri.into(),
            redirect_uri_explicit: true,
            state: state.map(str::to_owned),
            code_challenge: String::new(),
            scope: vec![],
            resource: None,
        }
    }

    #[test]
    fn the_code_goes_back_with_the_clients_state_and_the_issuer() {
        let with_state = code_redirect(&pending("https://a.example/cb?x=1", Some("s t")), "c0de", "https://p.example");
        assert_eq!(with_state, "https://a.example/cb?x=1&code=c0de&state=s+t&iss=https%3A%2F%2Fp.example");
        let without = code_redirect(&pending("http://127.0.0.1:9/cb", None), "c0de", "https://p.example");
        assert_eq!(without, "http://127.0.0.1:9/cb?code=c0de&iss=https%3A%2F%2Fp.example");
    }
}
