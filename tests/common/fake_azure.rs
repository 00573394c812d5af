//! A fake Microsoft Entra ID v2.0 endpoint, faithful to shared/AZURE.md where the proxy can observe it:
//! tenant paths, discovery with the `{tenantid}` issuer and no `code_challenge_methods_supported`, an authorize
//! endpoint that shows an HTML page (no redirect) for an unknown app or redirect URI, single-use codes (54005)
//! with a 10-minute TTL (70008), PKCE (501481), client authentication by post or Basic (401 invalid_client
//! 7000215), RS256 id_tokens with a JWKS `kid`, opaque access tokens over 2 KB, refresh tokens that rotate while
//! the old one stays valid (a strict option revokes it), revocation (50173), AADSTS error bodies, 429 with a
//! plain-text body, Graph `/v1.0/me`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::http_server::{body, serve, FakeBody, FakeServer};

pub const TENANT_ID: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";
pub const APP_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const APP_SECRET: &str = "fake-azure-app-secret-value";
pub const KID: &str = "fake-kid-1";
pub const USER_OID: &str = "00000000-0000-0000-66f3-3332eca7ea81";

struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    tenant: String,
    scope: String,
    challenge: Option<(String, String)>,
    nonce: Option<String>,
    expires_at: u64,
    /// The `claims` of the authorization request, which the code's tokens satisfy (issue 16 §2).
    claims: Option<String>,
}

struct RefreshGrant {
    scope: String,
    valid: bool,
}

/// What the test can script and observe.
#[derive(Default)]
pub struct AzureState {
    codes: HashMap<String, CodeGrant>,
    used_codes: HashSet<String>,
    refresh_tokens: HashMap<String, RefreshGrant>,
    access_tokens: HashSet<String>,
    /// `expires_in` of issued access tokens.
    pub expires_in: u64,
    /// Revoke the old refresh token on use (Entra does not; this is for tests).
    pub strict_rotation: bool,
    /// An error `/authorize` redirects with instead of logging the user in.
    pub authorize_error: Option<(String, u64)>,
    /// A status the token endpoint answers with instead of working (e.g. 429, 503).
    pub token_fault: Option<u16>,
    /// With `token_fault`: how many requests fail before the endpoint works again (None: all).
    pub token_fault_count: Option<usize>,
    /// Every token request, failed ones included.
    pub token_requests: usize,
    /// Every `/authorize` query the fake saw.
    pub authorize_queries: Vec<HashMap<String, String>>,
    /// Count of refresh_token grants served.
    pub refresh_calls: usize,
    pub code_calls: usize,
    /// The newest access token issued.
    pub last_access_token: Option<String>,
    /// Claims added to every id_token issued (`groups`, `roles`, `_claim_names`, …).
    pub id_token_claims: serde_json::Map<String, Value>,
    /// Issue 16: an Entra refusal the token endpoint answers every refresh_token grant with.
    pub refresh_error: Option<ScriptedRefusal>,
    /// Issue 16: an Entra refusal the token endpoint answers every authorization_code grant with.
    pub code_error: Option<ScriptedRefusal>,
    /// Issue 16: every token request's form fields, secrets included (tests only look at `claims`, `grant_type`).
    pub token_forms: Vec<HashMap<String, String>>,
    /// Issue 16 §2: a claims request (JSON) Graph's `/v1.0/me` demands, as a CAE claims challenge (401
    /// `insufficient_claims`, the claims base64-encoded), of every access token not issued for a token request
    /// whose `claims` asked for each of its `access_token` claims.
    pub cae_claims: Option<String>,
    /// Access tokens issued for a token request that satisfied `cae_claims`.
    pub cae_satisfied: HashSet<String>,
    /// Graph challenges every token while `cae_claims` is set, satisfied or not.
    pub cae_unsatisfiable: bool,
    /// Issue 16 §3: the scope every access token was issued for (a refresh_token grant's `scope` when it sends
    /// one, as Entra issues a token for another API with the same refresh token).
    pub token_scopes: HashMap<String, String>,
    /// The next refresh_token request is held this long before it is answered (once): a replica can die while
    /// it holds the grant's IdP-refresh lock. `held_refreshes` counts the requests held.
    pub refresh_delay_once: Option<std::time::Duration>,
    pub held_refreshes: usize,
}

/// Whether a token request's `claims` (JSON) asks for every `access_token` claim of `demanded`.
fn satisfies(asked: Option<&String>, demanded: &str) -> bool {
    let asked: Value = asked.and_then(|a| serde_json::from_str(a).ok()).unwrap_or(Value::Null);
    let demanded: Value = serde_json::from_str(demanded).unwrap_or(Value::Null);
    demanded["access_token"]
        .as_object()
        .is_some_and(|d| d.keys().all(|k| asked["access_token"].get(k).is_some_and(|v| *v == d[k])))
}

/// An Entra error answer (AZURE.md §2): `error`, the AADSTS code, and optionally `suberror` and `claims`.
#[derive(Clone, Debug, Default)]
pub struct ScriptedRefusal {
    pub error: String,
    pub code: u64,
    pub suberror: Option<String>,
    pub claims: Option<String>,
}

impl ScriptedRefusal {
    pub fn new(error: &str, code: u64) -> Self {
        Self { error: error.into(), code, ..Self::default() }
    }

    fn response(&self) -> Response<FakeBody> {
        let resp = aad_error(StatusCode::BAD_REQUEST, &self.error, self.code, "scripted refusal.");
        let (parts, _) = resp.into_parts();
        let mut doc = json!({
            "error": self.error,
            "error_description": format!("AADSTS{}: scripted refusal.\r\nTrace ID: {}", self.code, guid()),
            "error_codes": [self.code],
            "timestamp": "2026-11-23 10:00:00Z",
            "trace_id": guid(),
            "correlation_id": guid(),
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        if let Some(sub) = &self.suberror {
            doc["suberror"] = json!(sub);
        }
        if let Some(claims) = &self.claims {
            doc["claims"] = json!(claims);
        }
        Response::from_parts(parts, body(doc.to_string()))
    }
}

pub struct FakeAzure {
    pub server: FakeServer,
    pub state: Arc<Mutex<AzureState>>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn random(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    dcr_proxy::crypto::fill_random(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn guid() -> String {
    let h = hex(&random(16));
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The Entra error body (AZURE.md §2).
fn aad_error(status: StatusCode, error: &str, code: u64, text: &str) -> Response<FakeBody> {
    let ts = "2026-11-23 10:00:00Z";
    let trace = guid();
    let corr = guid();
    let doc = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}"),
        "error_codes": [code],
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header("cache-control", "no-store, no-cache")
        .body(body(doc.to_string()))
        .expect("response")
}

fn json_ok(v: Value) -> Response<FakeBody> {
    Response::builder()
        .header("content-type", "application/json; charset=utf-8")
        .header("cache-control", "no-store, no-cache")
        .header("pragma", "no-cache")
        .body(body(v.to_string()))
        .expect("response")
}

fn html(status: StatusCode, text: &str) -> Response<FakeBody> {
    Response::builder()
        .status(status)
        .header("content-type", "text/html")
        .body(body(format!("<html><body>{text}</body></html>")))
        .expect("response")
}

fn parse(q: &[u8]) -> (HashMap<String, String>, bool) {
    let mut map = HashMap::new();
    let mut dup = false;
    for (k, v) in form_urlencoded::parse(q) {
        dup |= map.insert(k.into_owned(), v.into_owned()).is_some();
    }
    (map, dup)
}

fn sign_id_token(authority: &str, aud: &str, nonce: Option<&str>, extra: &serde_json::Map<String, Value>) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_der(include_bytes!("../fixtures/fake_azure_rsa_pkcs1.der"));
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(KID.to_owned());
    let t = now();
    let mut claims = json!({
        "aud": aud,
        "iss": format!("{authority}/{TENANT_ID}/v2.0"),
        "iat": t, "nbf": t, "exp": t + 3600,
        "name": "Adele Vance",
        "oid": USER_OID,
        "preferred_username": "AdeleV@contoso.example",
        "email": "AdeleV@contoso.example",
        "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
        "tid": TENANT_ID,
        "ver": "2.0",
    });
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    for (k, v) in extra {
        claims[k] = v.clone();
    }
    jsonwebtoken::encode(&header, &claims, &key).expect("sign id_token")
}

/// An opaque Graph-like access token: over 2 KB and not a JWT.
fn opaque_access_token() -> String {
    format!("EwB4A8l6BAAU{}", random(1600))
}

impl FakeAzure {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(AzureState { expires_in: 3599, ..AzureState::default() }));
        let shared = state.clone();
        let authority = Arc::new(Mutex::new(String::new()));
        let authority_for_handler = authority.clone();
        let server = serve(move |req| {
            let state = shared.clone();
            let authority = authority_for_handler.lock().expect("authority").clone();
            async move { handle(req, state, authority).await }
        })
        .await;
        *authority.lock().expect("authority") = server.url();
        Self { server, state }
    }

    pub fn authority(&self) -> String {
        self.server.url()
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, AzureState> {
        self.state.lock().expect("fake azure state")
    }

    /// Every token and code this fake has issued (for the no-secret-in-logs check).
    pub fn issued_secrets(&self) -> Vec<String> {
        let st = self.state();
        st.access_tokens
            .iter()
            .chain(st.refresh_tokens.keys())
            .chain(st.used_codes.iter())
            .chain(st.codes.keys())
            .cloned()
            .collect()
    }

    /// Makes Graph refuse every access token issued so far (as a CAE revocation does).
    pub fn revoke_access_tokens(&self) {
        self.state().access_tokens.clear();
    }

    /// Revokes every refresh token (as "revoke sessions" does).
    pub fn revoke_all_refresh_tokens(&self) {
        for rt in self.state().refresh_tokens.values_mut() {
            rt.valid = false;
        }
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<AzureState>>,
    authority: String,
) -> Response<FakeBody> {
    use http_body_util::BodyExt;
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let method = req.method().clone();
    let body_bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if method == "POST"
        && path.ends_with("/oauth2/v2.0/token")
        && body_bytes.windows(24).any(|w| w == b"grant_type=refresh_token")
    {
        let hold = {
            let mut st = state.lock().expect("state");
            let hold = st.refresh_delay_once.take();
            st.held_refreshes += usize::from(hold.is_some());
            hold
        };
        if let Some(hold) = hold {
            tokio::time::sleep(hold).await;
        }
    }

    if path == "/v1.0/me" {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !state.lock().expect("state").access_tokens.contains(token) {
            return Response::builder()
                .status(401)
                .header("www-authenticate", "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\"")
                .header("content-type", "application/json")
                .body(body(json!({"error": {"code": "InvalidAuthenticationToken", "message": "Access token validation failure. Invalid audience.", "innerError": {"date": "2026-11-23T10:00:00", "request-id": guid(), "client-request-id": guid()}}}).to_string()))
                .expect("response");
        }
        let cae = {
            let st = state.lock().expect("state");
            st.cae_claims.clone().filter(|_| st.cae_unsatisfiable || !st.cae_satisfied.contains(token))
        };
        if let Some(claims) = cae {
            return Response::builder()
                .status(401)
                .header(
                    "www-authenticate",
                    format!(
                        "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", \
                         error=\"insufficient_claims\", claims=\"{}\"",
                        STANDARD.encode(claims)
                    ),
                )
                .header("content-type", "application/json")
                .body(body(json!({"error": {"code": "InvalidAuthenticationToken", "message": "Continuous access evaluation resulted in claims challenge"}}).to_string()))
                .expect("response");
        }
        return json_ok(json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
            "businessPhones": [], "displayName": "Adele Vance", "givenName": "Adele", "jobTitle": null,
            "mail": "AdeleV@contoso.example", "mobilePhone": null, "officeLocation": null, "preferredLanguage": null,
            "surname": "Vance", "userPrincipalName": "AdeleV@contoso.example", "id": USER_OID
        }));
    }
    let tenant = segments.first().copied().unwrap_or("").to_owned();
    let rest = segments.get(1..).map(|s| s.join("/")).unwrap_or_default();
    match (method.as_str(), rest.as_str()) {
        ("GET", "v2.0/.well-known/openid-configuration") => {
            let issuer_tenant =
                if matches!(tenant.as_str(), "common" | "organizations") { "{tenantid}" } else { TENANT_ID };
            let mut resp = json_ok(json!({
                "token_endpoint": format!("{authority}/{tenant}/oauth2/v2.0/token"),
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                "jwks_uri": format!("{authority}/{tenant}/discovery/v2.0/keys"),
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": format!("{authority}/{issuer_tenant}/v2.0"),
                "authorization_endpoint": format!("{authority}/{tenant}/oauth2/v2.0/authorize"),
                "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
                "msgraph_host": "graph.microsoft.com",
                "tenant_region_scope": "EU",
            }));
            resp.headers_mut().insert("cache-control", "max-age=86400, private".parse().expect("hv"));
            resp
        }
        ("GET", "discovery/v2.0/keys") => json_ok(json!({"keys": [{
            "kty": "RSA", "use": "sig", "kid": KID, "x5t": KID, "alg": "RS256",
            "n": include_str!("../fixtures/fake_azure_rsa_n.txt").trim(), "e": "AQAB",
            "issuer": format!("{authority}/{TENANT_ID}/v2.0"),
        }]})),
        ("GET", "oauth2/v2.0/authorize") => {
            let (q, _) = parse(query.as_bytes());
            state.lock().expect("state").authorize_queries.push(q.clone());
            if q.get("client_id").map(String::as_str) != Some(APP_ID) {
                return html(StatusCode::BAD_REQUEST, "AADSTS700016: Application not found in the directory.");
            }
            let redirect_uri = q.get("redirect_uri").cloned().unwrap_or_default();
            if !redirect_uri.ends_with("/callback") || !redirect_uri.starts_with("http://127.0.0.1:") {
                return html(
                    StatusCode::BAD_REQUEST,
                    "AADSTS50011: The redirect URI specified in the request does not match.",
                );
            }
            let scope = q.get("scope").cloned().unwrap_or_default();
            if scope.split(' ').any(|s| s.ends_with("/.default"))
                && scope.split(' ').filter(|s| !matches!(*s, "openid" | "profile" | "email" | "offline_access")).count()
                    > 1
            {
                return html(
                    StatusCode::BAD_REQUEST,
                    "AADSTS70011: .default scope can't be combined with resource-specific scopes.",
                );
            }
            let mut target = url::Url::parse(&redirect_uri).expect("redirect uri");
            if q.get("response_type").map(String::as_str) != Some("code") {
                target.query_pairs_mut().append_pair("error", "unsupported_response_type");
                return Response::builder()
                    .status(302)
                    .header("location", target.as_str())
                    .body(body(""))
                    .expect("resp");
            }
            let scripted = state.lock().expect("state").authorize_error.clone();
            if let Some((error, code)) = scripted {
                target
                    .query_pairs_mut()
                    .append_pair("error", &error)
                    .append_pair("error_description", &format!("AADSTS{code}: scripted.\r\nTrace ID: {}", guid()))
                    .append_pair("error_uri", &format!("https://login.microsoftonline.com/error?code={code}"));
                if let Some(s) = q.get("state") {
                    target.query_pairs_mut().append_pair("state", s);
                }
                return Response::builder()
                    .status(302)
                    .header("location", target.as_str())
                    .body(body(""))
                    .expect("resp");
            }
            let code = format!("1.AXo{}", random(300));
            let challenge = q
                .get("code_challenge")
                .map(|c| (c.clone(), q.get("code_challenge_method").cloned().unwrap_or_else(|| "plain".into())));
            state.lock().expect("state").codes.insert(
                code.clone(),
                CodeGrant {
                    client_id: APP_ID.into(),
                    redirect_uri,
                    tenant: tenant.clone(),
                    scope,
                    challenge,
                    nonce: q.get("nonce").cloned(),
                    expires_at: now() + 600,
                    claims: q.get("claims").cloned(),
                },
            );
            target.query_pairs_mut().append_pair("code", &code);
            if let Some(s) = q.get("state") {
                target.query_pairs_mut().append_pair("state", s);
            }
            target.query_pairs_mut().append_pair("session_state", &guid());
            Response::builder().status(302).header("location", target.as_str()).body(body("")).expect("resp")
        }
        ("POST", "oauth2/v2.0/token") => token(&state, &authority, &tenant, &headers, &body_bytes),
        _ => html(StatusCode::NOT_FOUND, "not found"),
    }
}

fn token(
    state: &Arc<Mutex<AzureState>>,
    authority: &str,
    tenant: &str,
    headers: &http::HeaderMap,
    body_bytes: &[u8],
) -> Response<FakeBody> {
    let mut st = state.lock().expect("state");
    st.token_requests += 1;
    if st.token_fault_count == Some(0) {
        st.token_fault = None;
        st.token_fault_count = None;
    }
    if let Some(n) = st.token_fault_count.as_mut() {
        *n -= 1;
    }
    if let Some(status) = st.token_fault {
        if status == 429 {
            return Response::builder()
                .status(429)
                .header("retry-after", "60")
                .body(body("Too Many Requests"))
                .expect("resp");
        }
        return Response::builder().status(status).body(body("upstream failure")).expect("resp");
    }
    let (form, dup) = parse(body_bytes);
    if dup {
        return aad_error(StatusCode::BAD_REQUEST, "invalid_request", 900144, "Duplicate parameter.");
    }
    // Client authentication: post or Basic.
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let (client_id, secret) = match basic {
        Some(pair) => {
            let (id, s) = pair.split_once(':').unwrap_or((&pair, ""));
            (id.to_owned(), Some(s.to_owned()))
        }
        None => (form.get("client_id").cloned().unwrap_or_default(), form.get("client_secret").cloned()),
    };
    if client_id != APP_ID {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "Application not found in the directory.",
        );
    }
    if secret.as_deref() != Some(APP_SECRET) {
        return aad_error(StatusCode::UNAUTHORIZED, "invalid_client", 7000215, "Invalid client secret provided.");
    }
    let grant_type = form.get("grant_type").map(String::as_str).unwrap_or("");
    st.token_forms.push(form.clone());
    let scripted = match grant_type {
        "refresh_token" => st.refresh_error.clone(),
        "authorization_code" => st.code_error.clone(),
        _ => None,
    };
    if let Some(refusal) = scripted {
        if grant_type == "refresh_token" {
            st.refresh_calls += 1;
        } else {
            st.code_calls += 1;
        }
        return refusal.response();
    }
    let mut code_claims = None;
    let (scope, nonce) = match grant_type {
        "authorization_code" => {
            st.code_calls += 1;
            let code = form.get("code").cloned().unwrap_or_default();
            if st.used_codes.contains(&code) {
                return aad_error(StatusCode::BAD_REQUEST, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.");
            }
            let Some(grant) = st.codes.remove(&code) else {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                );
            };
            st.used_codes.insert(code);
            if grant.expires_at <= now() {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity.",
                );
            }
            if grant.tenant != tenant {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    700005,
                    "Provided Authorization Code is intended to use against other tenant, thus rejected.",
                );
            }
            if form.get("redirect_uri") != Some(&grant.redirect_uri) || grant.client_id != client_id {
                return aad_error(StatusCode::BAD_REQUEST, "invalid_grant", 50148, "The redirect URI does not match.");
            }
            if let Some((challenge, method)) = &grant.challenge {
                let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                let computed = if method == "S256" { dcr_proxy::crypto::pkce_s256(&verifier) } else { verifier };
                if &computed != challenge {
                    return aad_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        501481,
                        "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                    );
                }
            }
            if form.get("scope").is_some_and(|s| s.is_empty()) {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    28003,
                    "Provided value for the input parameter scope cannot be empty.",
                );
            }
            code_claims = grant.claims;
            (grant.scope, grant.nonce)
        }
        "refresh_token" => {
            st.refresh_calls += 1;
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let strict = st.strict_rotation;
            let Some(grant) = st.refresh_tokens.get_mut(&rt) else {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                );
            };
            if !grant.valid {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    50173,
                    "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
                );
            }
            if strict {
                grant.valid = false;
            }
            (form.get("scope").filter(|s| !s.is_empty()).cloned().unwrap_or_else(|| grant.scope.clone()), None)
        }
        _ => {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            )
        }
    };
    let access = opaque_access_token();
    st.access_tokens.insert(access.clone());
    if st.cae_claims.as_deref().is_some_and(|d| satisfies(code_claims.as_ref().or(form.get("claims")), d)) {
        st.cae_satisfied.insert(access.clone());
    }
    st.last_access_token = Some(access.clone());
    st.token_scopes.insert(access.clone(), scope.clone());
    let mut doc = json!({
        "token_type": "Bearer",
        "scope": scope.split(' ').filter(|s| !matches!(*s, "openid" | "offline_access")).collect::<Vec<_>>().join(" "),
        "expires_in": st.expires_in,
        "ext_expires_in": st.expires_in,
        "access_token": access,
    });
    if scope.split(' ').any(|s| s == "offline_access") {
        let rt = format!("1.AXoA{}", random(1100));
        st.refresh_tokens.insert(rt.clone(), RefreshGrant { scope: scope.clone(), valid: true });
        doc["refresh_token"] = json!(rt);
    }
    if scope.split(' ').any(|s| s == "openid") {
        doc["id_token"] = json!(sign_id_token(authority, &client_id, nonce.as_deref(), &st.id_token_claims));
    }
    json_ok(doc)
}
