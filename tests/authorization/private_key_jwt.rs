//! Issue "ChatGPT signs in": `private_key_jwt` client authentication (RFC 7523) through the running proxy.
//!
//! A fake ChatGPT serves both of ChatGPT's metadata-document shapes and their JWKS over TLS on 127.0.0.1 (trusted
//! through `extra_ca_file`, names resolved by a test resolver: nothing leaves loopback). Its sign-in runs end to
//! end with RS256 assertions at `/token` (code and refresh) and `/revoke`; every forgery is refused with 401
//! `invalid_client` and spends nothing; key rotation at the client works without a restart and made-up key ids do
//! not make the proxy fetch at request rate; registered clients (RFC 7591) authenticate with ES256, EdDSA and PS256
//! from `jwks` or `jwks_uri`; a `jti` is used once across two replicas sharing Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::http_server::{body, serve_tls, FakeServer};
use crate::common::upstream::Upstream;
use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use dcr_proxy::client_documents::fetch::{BoxFuture, ReqwestTransport, Resolver};
use dcr_proxy::client_documents::Network;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const SHAPE_1_REDIRECT: &str = "https://chatgpt.com/connector/oauth/app-1";
const SHAPE_2_REDIRECT: &str = "https://chatgpt.com/connector_platform_oauth_redirect";

/// Names resolved without DNS: every test name is 127.0.0.1.
struct LoopbackResolver;

impl Resolver for LoopbackResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            match host {
                "chatgpt.test" | "keys.test" => Ok(vec![SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)]),
                _ => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "unknown test name")),
            }
        })
    }
}

/// A signing key of a client: its private half and its public JWK.
#[derive(Clone)]
struct Key {
    alg: Algorithm,
    kid: String,
    private: Arc<EncodingKey>,
    jwk: Value,
}

impl Key {
    /// The fake Entra's RSA key (tests/fixtures), under `kid`.
    fn rsa1(kid: &str, alg: Algorithm) -> Self {
        Self::rsa(
            kid,
            alg,
            include_bytes!("../fixtures/fake_azure_rsa_pkcs1.der"),
            include_str!("../fixtures/fake_azure_rsa_n.txt"),
        )
    }

    /// A second RSA key (tests/fixtures/client_rsa2_*), under `kid`.
    fn rsa2(kid: &str, alg: Algorithm) -> Self {
        Self::rsa(
            kid,
            alg,
            include_bytes!("../fixtures/client_rsa2_pkcs1.der"),
            include_str!("../fixtures/client_rsa2_n.txt"),
        )
    }

    fn rsa(kid: &str, alg: Algorithm, der: &[u8], n: &str) -> Self {
        Self {
            alg,
            kid: kid.to_owned(),
            private: Arc::new(EncodingKey::from_rsa_der(der)),
            jwk: json!({"kty": "RSA", "use": "sig", "kid": kid, "n": n.trim(), "e": "AQAB"}),
        }
    }

    fn es256(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        Self {
            alg: Algorithm::ES256,
            kid: kid.to_owned(),
            private: Arc::new(EncodingKey::from_ec_der(pkcs8.as_ref())),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}),
        }
    }

    fn ed25519(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Self {
            alg: Algorithm::EdDSA,
            kid: kid.to_owned(),
            private: Arc::new(EncodingKey::from_ed_der(pkcs8.as_ref())),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(pair.public_key())}),
        }
    }

    /// This key's private half under another `kid` (a stranger signing as a known key).
    fn under_kid(&self, kid: &str) -> Self {
        Self { kid: kid.to_owned(), ..self.clone() }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.private).unwrap()
    }
}

/// The claims of a good assertion of `client_id` for `aud`, at the proxy's time, with a fresh `jti`.
fn claims(proxy: &TestProxy, client_id: &str, aud: &str) -> Value {
    let now = proxy.clock.now();
    json!({"iss": client_id, "sub": client_id, "aud": aud, "iat": now, "exp": now + 120,
        "jti": dcr_proxy::crypto::random_token()})
}

/// A JWS in compact form with the given header and claims and a made-up signature.
fn unsigned(header: Value, claims: &Value) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(b"not a signature")
    )
}

/// The fake ChatGPT: metadata documents of both shapes and a JWKS that the test can change.
struct FakeChatGpt {
    server: FakeServer,
    ca_file: PathBuf,
    jwks: Arc<Mutex<Value>>,
    /// While set, the JWKS answers 503.
    down: Arc<std::sync::atomic::AtomicBool>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl FakeChatGpt {
    async fn start(keys: &[&Key]) -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["chatgpt.test".to_owned(), "keys.test".to_owned()]).unwrap();
        let dir = std::env::temp_dir().join(format!("dcrp-chatgpt-{}", dcr_proxy::crypto::random_token()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ck.cert.pem()).unwrap();
        let jwks = Arc::new(Mutex::new(json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})));
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (j, h, d) = (jwks.clone(), hits.clone(), down.clone());
        let server = serve_tls(
            move |req| {
                let (j, h, d) = (j.clone(), h.clone(), d.clone());
                async move {
                    let path = req.uri().path().to_owned();
                    *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let host = req.headers().get("host").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    let own = format!("https://{host}{path}");
                    let keys_at = |p: &str| format!("https://{host}{p}");
                    let chatgpt = |redirect: &str, jwks_uri: String| {
                        json!({
                            "client_id": own, "client_uri": "https://chatgpt.com/", "redirect_uris": [redirect],
                            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
                            "client_name": "ChatGPT", "token_endpoint_auth_method": "private_key_jwt",
                            "token_endpoint_auth_signing_alg": "RS256", "jwks_uri": jwks_uri,
                        })
                    };
                    let resp = hyper::Response::builder().header("content-type", "application/json");
                    let json = |v: Value| body(v.to_string());
                    match path.as_str() {
                        "/oauth/app-1/client.json" => {
                            resp.body(json(chatgpt(SHAPE_1_REDIRECT, keys_at("/oauth/jwks.json"))))
                        }
                        "/oauth/client.json" => {
                            let mut doc = chatgpt(SHAPE_2_REDIRECT, keys_at("/oauth/jwks.json"));
                            doc["token_endpoint_auth_methods_supported"] = json!(["none", "private_key_jwt"]);
                            resp.body(json(doc))
                        }
                        "/oauth/jwks.json" if d.load(std::sync::atomic::Ordering::Relaxed) => {
                            resp.status(503).body(body(""))
                        }
                        "/oauth/jwks.json" => {
                            let set = j.lock().unwrap().clone();
                            resp.header("cache-control", "public, max-age=300").body(json(set))
                        }
                        "/broken/client.json" => {
                            resp.body(json(chatgpt(SHAPE_1_REDIRECT, keys_at("/broken/jwks.json"))))
                        }
                        "/broken/jwks.json" => resp.status(500).body(body("")),
                        "/garbage/client.json" => {
                            resp.body(json(chatgpt(SHAPE_1_REDIRECT, keys_at("/garbage/jwks.json"))))
                        }
                        "/garbage/jwks.json" => resp.body(body("<html>not a key set</html>")),
                        "/slow/client.json" => resp.body(json(chatgpt(SHAPE_1_REDIRECT, keys_at("/slow/jwks.json")))),
                        "/slow/jwks.json" => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            resp.body(json(j.lock().unwrap().clone()))
                        }
                        "/registered/jwks.json" => resp.body(json(j.lock().unwrap().clone())),
                        _ => resp.status(404).body(body("")),
                    }
                    .unwrap()
                }
            },
            &ck.cert.pem(),
            &ck.signing_key.serialize_pem(),
        )
        .await;
        Self { server, ca_file, jwks, down, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("https://chatgpt.test:{}{path}", self.server.addr.port())
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn publish(&self, keys: &[&Key]) {
        *self.jwks.lock().unwrap() = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    }

    fn network(&self, deadline_secs: u64) -> Network {
        let pem = std::fs::read(&self.ca_file).unwrap();
        Network {
            resolver: Arc::new(LoopbackResolver),
            transport: Arc::new(ReqwestTransport::new(Some(&pem), Duration::from_secs(deadline_secs)).unwrap()),
        }
    }

    /// `[client_metadata_documents]` for this fake (fetch deadline in seconds), with `extra` lines after it.
    fn config(&self, deadline_secs: u64, extra: &str) -> String {
        format!(
            "[client_metadata_documents]\ntimeout = \"{deadline_secs}s\"\nextra_ca_file = \"{}\"\n\
             allow_loopback_for_testing = true\n{extra}\n",
            self.ca_file.display()
        )
    }
}

async fn proxy_for(chatgpt: &FakeChatGpt, upstream: &Upstream, extra: &str) -> TestProxy {
    proxy_with_deadline(chatgpt, upstream, 1, extra).await
}

async fn proxy_with_deadline(chatgpt: &FakeChatGpt, upstream: &Upstream, deadline_secs: u64, extra: &str) -> TestProxy {
    TestProxy::builder()
        .upstream(upstream.url())
        .local()
        .extra(chatgpt.config(deadline_secs, extra))
        .network(chatgpt.network(deadline_secs))
        .start()
        .await
}

/// The sign-in of a document client up to its code: consent page (returned), approval, local login.
async fn sign_in(proxy: &TestProxy, client_id: &str, redirect: &str) -> (String, String) {
    let url = format!(
        "{}/authorize?response_type=code&client_id={}&redirect_uri={}&state=s1&code_challenge={CHALLENGE}\
         &code_challenge_method=S256",
        proxy.base_url(),
        urlencode(client_id),
        urlencode(redirect)
    );
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&url).await else { panic!("the consent page for {client_id}") };
    let params = approve_and_sign_in(proxy, &mut browser, &consent).await;
    assert_eq!(params.get("state").map(String::as_str), Some("s1"));
    (consent, params["code"].clone())
}

/// POSTs a form to `path`.
async fn post(proxy: &TestProxy, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    http().post(proxy.url(path)).form(form).send().await.unwrap()
}

async fn redeem_signed(proxy: &TestProxy, client_id: &str, redirect: &str, code: &str, jwt: &str) -> reqwest::Response {
    post(
        proxy,
        "/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect),
            ("code_verifier", VERIFIER),
            ("client_id", client_id),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", jwt),
        ],
    )
    .await
}

async fn refresh_signed(proxy: &TestProxy, client_id: &str, refresh_token: &str, jwt: &str) -> reqwest::Response {
    post(
        proxy,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", jwt),
        ],
    )
    .await
}

/// Asserts a 401 `invalid_client` whose description contains `needle`.
async fn assert_invalid_client(resp: reqwest::Response, needle: &str, case: &str) {
    let (status, text) = (resp.status().as_u16(), resp.text().await.unwrap());
    assert_eq!(status, 401, "{case}: {text}");
    let err: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["error"], "invalid_client", "{case}: {text}");
    let description = err["error_description"].as_str().unwrap_or("");
    assert!(description.contains(needle), "{case}: `{description}` does not say `{needle}`");
}

#[tokio::test]
async fn chatgpt_signs_in_with_either_document_shape_and_refreshes_and_revokes_with_assertions() {
    let k1 = Key::rsa1("k1", Algorithm::RS256);
    let chatgpt = FakeChatGpt::start(&[&k1]).await;
    let upstream = Upstream::start().await;
    let proxy = proxy_for(&chatgpt, &upstream, "").await;

    let meta = get_json(&proxy.url("/.well-known/oauth-authorization-server")).await;
    let issuer = meta["issuer"].as_str().unwrap().to_owned();
    let token_endpoint = meta["token_endpoint"].as_str().unwrap().to_owned();
    for field in ["token_endpoint_auth_methods_supported", "revocation_endpoint_auth_methods_supported"] {
        assert!(meta[field].as_array().unwrap().contains(&json!("private_key_jwt")), "{field}: {meta}");
    }
    assert_eq!(meta["token_endpoint_auth_signing_alg_values_supported"], json!(["RS256", "PS256", "ES256", "EdDSA"]));

    for (path, redirect) in [("/oauth/app-1/client.json", SHAPE_1_REDIRECT), ("/oauth/client.json", SHAPE_2_REDIRECT)] {
        let client_id = chatgpt.url(path);
        let (consent, code) = sign_in(&proxy, &client_id, redirect).await;
        assert!(consent.contains("ChatGPT"), "{consent}");
        assert!(consent.contains("proves who it is with a key this site publishes"), "{consent}");

        // Without an assertion the client is not authenticated, and the code stays good.
        let bare = redeem_with(&proxy, &client_id, &code, &[("redirect_uri", redirect)]).await;
        assert_invalid_client(bare, "private_key_jwt", path).await;

        // aud = the issuer (RFC 7523bis) for the code, the token endpoint for the refresh.
        let resp =
            redeem_signed(&proxy, &client_id, redirect, &code, &k1.sign(&claims(&proxy, &client_id, &issuer))).await;
        assert_eq!(resp.status(), 200, "{path}");
        let tokens: Value = resp.json().await.unwrap();
        let access = tokens["access_token"].as_str().unwrap();
        assert_eq!(get_mcp(&proxy, access).await, 200, "{path}: the bearer reaches the upstream");
        assert_eq!(upstream.last().header("x-forwarded-user"), Some("alice"));

        let jwt = k1.sign(&claims(&proxy, &client_id, &token_endpoint));
        let resp = refresh_signed(&proxy, &client_id, tokens["refresh_token"].as_str().unwrap(), &jwt).await;
        assert_eq!(resp.status(), 200, "{path}");
        let refreshed: Value = resp.json().await.unwrap();

        // Revocation authenticates the same way (aud may name the revocation endpoint there).
        let jwt = k1.sign(&claims(&proxy, &client_id, &proxy.url("/revoke")));
        let resp = post(
            &proxy,
            "/revoke",
            &[
                ("token", refreshed["refresh_token"].as_str().unwrap()),
                ("client_id", &client_id),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &jwt),
            ],
        )
        .await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(get_mcp(&proxy, refreshed["access_token"].as_str().unwrap()).await, 401, "{path}: revoked");
    }
    // One JWKS fetch served every assertion: the set is cached by its Cache-Control.
    assert_eq!(chatgpt.hits("/oauth/jwks.json"), 1);
}

#[tokio::test]
async fn forged_assertions_are_refused_and_spend_neither_the_code_nor_the_refresh_token() {
    let k1 = Key::rsa1("k1", Algorithm::RS256);
    let chatgpt = FakeChatGpt::start(&[&k1]).await;
    let upstream = Upstream::start().await;
    // No grace window: a refresh token rotated by a forged request would revoke the grant on its next use.
    let proxy = proxy_for(&chatgpt, &upstream, "[tokens]\nrefresh_grace = \"0s\"").await;
    let issuer = proxy.base_url().to_owned();
    let client_id = chatgpt.url("/oauth/app-1/client.json");
    let other_client = chatgpt.url("/oauth/client.json");
    let (_, code) = sign_in(&proxy, &client_id, SHAPE_1_REDIRECT).await;

    let good = claims(&proxy, &client_id, &issuer);
    let with = |k: &str, v: Value| {
        let mut c = claims(&proxy, &client_id, &issuer);
        c[k] = v;
        c
    };
    let now = proxy.clock.now();
    let stranger = Key::rsa2("k1", Algorithm::RS256);
    let public_jwk = k1.jwk.to_string();
    let forgeries: Vec<(&str, String, &str)> = vec![
        ("wrong aud", k1.sign(&with("aud", json!("https://elsewhere.example/token"))), "`aud`"),
        ("expired", k1.sign(&with("exp", json!(now - 3600))), "expired"),
        ("lives an hour", k1.sign(&with("exp", json!(now + 3600))), "lives longer"),
        (
            "no jti",
            k1.sign(&{
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("jti");
                c
            }),
            "`jti`",
        ),
        ("iss of another client", k1.sign(&with("iss", json!(other_client))), "`iss`"),
        ("alg none", unsigned(json!({"alg": "none", "kid": "k1"}), &good), "`alg` `none`"),
        (
            "HS256 keyed with the public key",
            jsonwebtoken::encode(
                &Header { kid: Some("k1".into()), ..Header::new(Algorithm::HS256) },
                &good,
                &EncodingKey::from_secret(public_jwk.as_bytes()),
            )
            .unwrap(),
            "`alg` `HS256`",
        ),
        ("a stranger's key under a known kid", stranger.sign(&good), "does not verify"),
        ("an unknown kid", stranger.under_kid("k9").sign(&good), "`kid` `k9`"),
        ("PS256 where the client registered RS256", Key::rsa1("k1", Algorithm::PS256).sign(&good), "RS256"),
        ("not a JWT", "not.a.jwt".to_owned(), "client_assertion"),
    ];
    for (case, jwt, needle) in &forgeries {
        assert_invalid_client(redeem_signed(&proxy, &client_id, SHAPE_1_REDIRECT, &code, jwt).await, needle, case)
            .await;
    }
    // iss/sub both of another client, sent as ours: the sub names the client, and differs from client_id.
    let theirs = k1.sign(&claims(&proxy, &other_client, &issuer));
    assert_invalid_client(
        redeem_signed(&proxy, &client_id, SHAPE_1_REDIRECT, &code, &theirs).await,
        "differs",
        "sub of another client",
    )
    .await;
    // Another assertion type, an assertion beside a secret: invalid_client.
    let jwt = k1.sign(&claims(&proxy, &client_id, &issuer));
    for (case, form) in [
        ("saml type", vec![("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer")]),
        ("assertion and secret", vec![("client_assertion_type", JWT_BEARER), ("client_secret", "s")]),
    ] {
        let mut fields = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", SHAPE_1_REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", client_id.as_str()),
            ("client_assertion", jwt.as_str()),
        ];
        fields.extend(form);
        let resp = post(&proxy, "/token", &fields).await;
        assert_eq!(resp.status(), 401, "{case}");
        assert_eq!(resp.json::<Value>().await.unwrap()["error"], "invalid_client", "{case}");
    }

    // None of it spent the code: the real client redeems it now.
    let resp = redeem_signed(&proxy, &client_id, SHAPE_1_REDIRECT, &code, &jwt).await;
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.unwrap();
    // Its assertion is used once: replayed (for a refresh) it is refused.
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    assert_invalid_client(refresh_signed(&proxy, &client_id, refresh_token, &jwt).await, "already used", "replay")
        .await;

    // Forged refreshes neither rotate the token nor count as its reuse.
    for (case, forged, needle) in &forgeries[..3] {
        assert_invalid_client(refresh_signed(&proxy, &client_id, refresh_token, forged).await, needle, case).await;
    }
    let resp = refresh_signed(&proxy, &client_id, refresh_token, &k1.sign(&claims(&proxy, &client_id, &issuer))).await;
    assert_eq!(resp.status(), 200, "the refresh token was not spent");
    let next: Value = resp.json().await.unwrap();
    let resp = refresh_signed(
        &proxy,
        &client_id,
        next["refresh_token"].as_str().unwrap(),
        &k1.sign(&claims(&proxy, &client_id, &issuer)),
    )
    .await;
    assert_eq!(resp.status(), 200, "the grant was not revoked as a reuse");
}

#[tokio::test]
async fn a_rotated_client_key_is_fetched_again_and_made_up_kids_do_not_make_the_proxy_fetch() {
    let (k1, k2) = (Key::rsa1("k1", Algorithm::RS256), Key::rsa2("k2", Algorithm::RS256));
    let chatgpt = FakeChatGpt::start(&[&k1]).await;
    let upstream = Upstream::start().await;
    let proxy = proxy_for(&chatgpt, &upstream, "jwks_refetch_interval = \"10m\"").await;
    let issuer = proxy.base_url().to_owned();
    let client_id = chatgpt.url("/oauth/app-1/client.json");
    let (_, code) = sign_in(&proxy, &client_id, SHAPE_1_REDIRECT).await;
    let resp =
        redeem_signed(&proxy, &client_id, SHAPE_1_REDIRECT, &code, &k1.sign(&claims(&proxy, &client_id, &issuer)))
            .await;
    assert_eq!(resp.status(), 200);
    let mut tokens: Value = resp.json().await.unwrap();
    assert_eq!(chatgpt.hits("/oauth/jwks.json"), 1);

    // ChatGPT rotates to k2: the unknown kid fetches the set again, at once, and the refresh works.
    chatgpt.publish(&[&k2]);
    let resp = refresh_signed(
        &proxy,
        &client_id,
        tokens["refresh_token"].as_str().unwrap(),
        &k2.sign(&claims(&proxy, &client_id, &issuer)),
    )
    .await;
    assert_eq!(resp.status(), 200);
    tokens = resp.json().await.unwrap();
    assert_eq!(chatgpt.hits("/oauth/jwks.json"), 2);

    // A stream of made-up kids is refused without a fetch per request (one per jwks_refetch_interval).
    for i in 0..20 {
        let forged = k2.under_kid(&format!("made-up-{i}")).sign(&claims(&proxy, &client_id, &issuer));
        let resp = refresh_signed(&proxy, &client_id, tokens["refresh_token"].as_str().unwrap(), &forged).await;
        assert_invalid_client(resp, "`kid`", "made-up kid").await;
    }
    // The retired k1 is unknown now, too.
    let old = k1.sign(&claims(&proxy, &client_id, &issuer));
    let resp = refresh_signed(&proxy, &client_id, tokens["refresh_token"].as_str().unwrap(), &old).await;
    assert_invalid_client(resp, "`kid` `k1`", "retired key").await;
    assert_eq!(chatgpt.hits("/oauth/jwks.json"), 2, "no fetch for made-up or retired kids within the interval");

    // Once the interval has passed (and the cached set with it), the set is fetched again, once: a set fetched
    // for this very request is not fetched a second time for its unknown kid.
    proxy.clock.advance(601);
    let forged = k2.under_kid("made-up-late").sign(&claims(&proxy, &client_id, &issuer));
    let resp = refresh_signed(&proxy, &client_id, tokens["refresh_token"].as_str().unwrap(), &forged).await;
    assert_invalid_client(resp, "`kid`", "late made-up kid").await;
    assert_eq!(chatgpt.hits("/oauth/jwks.json"), 3);
}

#[tokio::test]
async fn a_known_key_set_outlives_an_outage_of_its_jwks_uri_and_a_key_replaced_under_its_kid_is_fetched() {
    let (k1, k2) = (Key::rsa1("k1", Algorithm::RS256), Key::rsa2("k1", Algorithm::RS256));
    let chatgpt = FakeChatGpt::start(&[&k1]).await;
    let upstream = Upstream::start().await;
    let proxy = proxy_for(&chatgpt, &upstream, "").await;
    let issuer = proxy.base_url().to_owned();
    let client_id = chatgpt.url("/oauth/app-1/client.json");
    let (_, code) = sign_in(&proxy, &client_id, SHAPE_1_REDIRECT).await;
    let resp =
        redeem_signed(&proxy, &client_id, SHAPE_1_REDIRECT, &code, &k1.sign(&claims(&proxy, &client_id, &issuer)))
            .await;
    assert_eq!(resp.status(), 200);
    let mut refresh_token = resp.json::<Value>().await.unwrap()["refresh_token"].as_str().unwrap().to_owned();
    async fn refresh_with(proxy: &TestProxy, client_id: &str, token: &str, key: &Key) -> (u16, Value) {
        let jwt = key.sign(&claims(proxy, client_id, proxy.base_url()));
        let resp = refresh_signed(proxy, client_id, token, &jwt).await;
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    // The key set expired (max-age 300) while ChatGPT's jwks_uri is down: the last set is still used.
    chatgpt.down.store(true, std::sync::atomic::Ordering::Relaxed);
    proxy.clock.advance(301);
    let (status, body) = refresh_with(&proxy, &client_id, &refresh_token, &k1).await;
    assert_eq!(status, 200, "stale-if-error: {body}");
    refresh_token = body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(chatgpt.hits("/oauth/jwks.json"), 2, "it was tried");
    // Long after (more than cache_ttl past expiry), an unreachable key set is an error naming the cause.
    proxy.clock.advance(900);
    let (status, body) = refresh_with(&proxy, &client_id, &refresh_token, &k1).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("HTTP 503"), "{body}");

    // ChatGPT is back and replaced its key under the same kid: the bad signature fetches the set again.
    chatgpt.down.store(false, std::sync::atomic::Ordering::Relaxed);
    proxy.clock.advance(60);
    let (status, body) = refresh_with(&proxy, &client_id, &refresh_token, &k1).await;
    assert_eq!(status, 200, "{body}");
    refresh_token = body["refresh_token"].as_str().unwrap().to_owned();
    chatgpt.publish(&[&k2]);
    let (status, body) = refresh_with(&proxy, &client_id, &refresh_token, &k2).await;
    assert_eq!(status, 200, "a new key under the old kid: {body}");
}

#[tokio::test]
async fn a_jwks_uri_that_fails_is_invalid_client_naming_the_cause_without_slowing_other_clients() {
    let k1 = Key::rsa1("k1", Algorithm::RS256);
    let chatgpt = FakeChatGpt::start(&[&k1]).await;
    let upstream = Upstream::start().await;
    // A fetch deadline of 5 s: room for the other client's whole request while the slow fetch waits.
    let proxy = Arc::new(proxy_with_deadline(&chatgpt, &upstream, 5, "").await);
    let issuer = proxy.base_url().to_owned();

    for (path, needle) in [("/broken/client.json", "HTTP 500"), ("/garbage/client.json", "not a JSON object")] {
        let client_id = chatgpt.url(path);
        let (_, code) = sign_in(&proxy, &client_id, SHAPE_1_REDIRECT).await;
        let jwt = k1.sign(&claims(&proxy, &client_id, &issuer));
        let resp = redeem_signed(&proxy, &client_id, SHAPE_1_REDIRECT, &code, &jwt).await;
        assert_invalid_client(resp, "jwks_uri", path).await;
        let jwt = k1.sign(&claims(&proxy, &client_id, &issuer));
        let resp = redeem_signed(&proxy, &client_id, SHAPE_1_REDIRECT, &code, &jwt).await;
        assert_invalid_client(resp, needle, path).await;
    }
    assert_eq!(chatgpt.hits("/broken/jwks.json"), 1, "a failure is remembered, not fetched again per request");

    // A key set that never arrives: that client waits for the deadline, another is served meanwhile.
    let slow_id = chatgpt.url("/slow/client.json");
    let (_, slow_code) = sign_in(&proxy, &slow_id, SHAPE_1_REDIRECT).await;
    let slow_jwt = k1.sign(&claims(&proxy, &slow_id, &issuer));
    let fast_id = chatgpt.url("/oauth/app-1/client.json");
    let (_, fast_code) = sign_in(&proxy, &fast_id, SHAPE_1_REDIRECT).await;
    let fast_jwt = k1.sign(&claims(&proxy, &fast_id, &issuer));
    let finished = Arc::new(Mutex::new(Vec::new()));
    let slow = {
        let (proxy, finished) = (proxy.clone(), finished.clone());
        tokio::spawn(async move {
            let resp = redeem_signed(&proxy, &slow_id, SHAPE_1_REDIRECT, &slow_code, &slow_jwt).await;
            finished.lock().unwrap().push("slow");
            resp
        })
    };
    while chatgpt.hits("/slow/jwks.json") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = redeem_signed(&proxy, &fast_id, SHAPE_1_REDIRECT, &fast_code, &fast_jwt).await;
    finished.lock().unwrap().push("fast");
    assert_eq!(resp.status(), 200);
    assert_invalid_client(slow.await.unwrap(), "was not served within", "slow jwks_uri").await;
    assert_eq!(*finished.lock().unwrap(), vec!["fast", "slow"], "the other client did not wait for the slow one");
}

#[tokio::test]
async fn registered_clients_use_private_key_jwt_with_jwks_or_jwks_uri_and_bad_metadata_names_the_field() {
    let rsa = Key::rsa2("rsa-1", Algorithm::PS256);
    let chatgpt = FakeChatGpt::start(&[&rsa]).await;
    let upstream = Upstream::start().await;
    let proxy = proxy_for(&chatgpt, &upstream, "").await;
    let (es, ed) = (Key::es256("ec-1"), Key::ed25519("ed-1"));

    let refused = |body: Value, needle: &'static str| {
        let proxy = &proxy;
        async move {
            let resp = http().post(proxy.url("/register")).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 400, "{body}");
            let err: Value = resp.json().await.unwrap();
            assert_eq!(err["error"], "invalid_client_metadata", "{err}");
            assert!(err["error_description"].as_str().unwrap().contains(needle), "{needle}: {err}");
        }
    };
    let base = |extra: Value| {
        let mut b = json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "private_key_jwt"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    refused(base(json!({})), "`jwks` or `jwks_uri`").await;
    refused(base(json!({"jwks": {"keys": [es.jwk]}, "jwks_uri": chatgpt.url("/registered/jwks.json")})), "both").await;
    let mut private = es.jwk.clone();
    private["d"] = json!("c2VjcmV0");
    refused(base(json!({"jwks": {"keys": [private]}})), "private").await;
    refused(base(json!({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}})), "symmetric").await;
    refused(base(json!({"jwks": {"keys": [es.jwk]}, "token_endpoint_auth_signing_alg": "HS256"})), "HS256").await;
    refused(base(json!({"jwks_uri": "http://keys.test/jwks.json"})), "https").await;

    let cases = [
        ("ES256, inline", base(json!({"jwks": {"keys": [es.jwk]}})), es.clone()),
        (
            "EdDSA, inline",
            base(json!({"jwks": {"keys": [ed.jwk]}, "token_endpoint_auth_signing_alg": "EdDSA"})),
            ed.clone(),
        ),
        ("PS256, jwks_uri", base(json!({"jwks_uri": chatgpt.url("/registered/jwks.json")})), rsa.clone()),
    ];
    for (case, metadata, key) in cases {
        let doc = register_json(&proxy, metadata.clone()).await;
        assert!(doc.get("client_secret").is_none(), "{case}: no secret for a private_key_jwt client");
        assert_eq!(doc["token_endpoint_auth_method"], "private_key_jwt", "{case}");
        assert_eq!(doc.get("jwks"), metadata.get("jwks"), "{case}: echoed");
        assert_eq!(doc.get("jwks_uri"), metadata.get("jwks_uri"), "{case}: echoed");
        let client_id = doc["client_id"].as_str().unwrap();
        let mut browser = Browser::new();
        let params = authorize(&proxy, &mut browser, client_id).await;
        // aud = the token endpoint, as most clients send it.
        let jwt = key.sign(&claims(&proxy, client_id, &proxy.url("/token")));
        let resp = redeem_signed(&proxy, client_id, CLIENT_REDIRECT, &params["code"], &jwt).await;
        assert_eq!(resp.status(), 200, "{case}");
        // The client may not fall back to client_id alone, nor sign with another client's key.
        let tokens: Value = resp.json().await.unwrap();
        let bare = refresh(&proxy, client_id, tokens["refresh_token"].as_str().unwrap()).await;
        assert_invalid_client(bare, "private_key_jwt", case).await;
        let other = Key::es256(&key.kid).sign(&claims(&proxy, client_id, &proxy.url("/token")));
        let resp = refresh_signed(&proxy, client_id, tokens["refresh_token"].as_str().unwrap(), &other).await;
        assert_eq!(resp.status(), 401, "{case}");
    }
    // A secret client cannot present an assertion instead of its secret; and an assertion with a made-up code
    // is refused before anything is fetched or verified.
    let secret_client = register_json(&proxy, json!({"redirect_uris": [CLIENT_REDIRECT]})).await;
    let id = secret_client["client_id"].as_str().unwrap();
    let mut browser = Browser::new();
    let params = authorize(&proxy, &mut browser, id).await;
    let jwt = es.sign(&claims(&proxy, id, &proxy.url("/token")));
    let resp = redeem_signed(&proxy, id, CLIENT_REDIRECT, &params["code"], &jwt).await;
    assert_invalid_client(resp, "client_secret_basic", "an assertion for a secret client").await;
    let resp = redeem_signed(&proxy, id, CLIENT_REDIRECT, "no-such-code", &jwt).await;
    assert_eq!(resp.status(), 400, "invalid_grant, nothing fetched for a made-up code");
}

#[tokio::test]
async fn an_assertions_jti_is_used_once_across_replicas_sharing_redis() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start().await;
    let r0 = TestProxy::builder().upstream(upstream.url()).local().redis(&redis).start().await;
    // Replicas behind one public name: r1 answers for r0's URL (its issuer, the audience of assertions).
    let r1 =
        TestProxy::builder().upstream(upstream.url()).local().redis(&redis).public_url(r0.base_url()).start().await;
    let key = Key::es256("ec-1");
    let doc = register_json(
        &r0,
        json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": [key.jwk]}, "token_endpoint_auth_signing_alg": "ES256"}),
    )
    .await;
    let client_id = doc["client_id"].as_str().unwrap();
    let mut browser = Browser::new();
    let params = authorize(&r1, &mut browser, client_id).await;
    let jwt = key.sign(&claims(&r0, client_id, r0.base_url()));
    let resp = redeem_signed(&r0, client_id, CLIENT_REDIRECT, &params["code"], &jwt).await;
    assert_eq!(resp.status(), 200, "the client registered on r0 and stored in Redis keeps its keys");
    let tokens: Value = resp.json().await.unwrap();
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    // The same assertion on the other replica: already used.
    assert_invalid_client(refresh_signed(&r1, client_id, refresh_token, &jwt).await, "already used", "r1 replay").await;
    assert_invalid_client(refresh_signed(&r0, client_id, refresh_token, &jwt).await, "already used", "r0 replay").await;
    let fresh = key.sign(&claims(&r1, client_id, r0.base_url()));
    assert_eq!(refresh_signed(&r1, client_id, refresh_token, &fresh).await.status(), 200);
}

/// Counts requests served by the fake (used to prove the JWKS counter is meaningful).
#[tokio::test]
async fn the_fake_counts_what_it_serves() {
    let chatgpt = FakeChatGpt::start(&[&Key::es256("x")]).await;
    let resp = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&chatgpt.ca_file).unwrap()).unwrap())
        .resolve("chatgpt.test", chatgpt.server.addr)
        .build()
        .unwrap()
        .get(chatgpt.url("/oauth/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(chatgpt.hits("/oauth/jwks.json"), 1);
}
