//! Micro-benchmarks of the per-request work: `cargo bench --bench hot_path`.
//!
//! - `bearer_lookup_and_swap`: hash the presented token, find its grant, take the upstream `Authorization`
//!   value, rewrite a typical MCP request's headers;
//! - `token_issuance`: redeem an authorization code (PKCE check, grant, access + refresh token);
//! - `refresh_rotation`: rotate a refresh token (seal the successor pair);
//! - `registration`: validate RFC 7591 metadata and build the client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dcr_proxy::config::TokenConfig;
use dcr_proxy::crypto::{self, TokenHash};
use dcr_proxy::endpoints::token;
use dcr_proxy::http::params::Params;
use dcr_proxy::oauth::register;
use dcr_proxy::proxy::headers::sanitize_request;
use dcr_proxy::store::*;
use http::{HeaderMap, HeaderValue};

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn tokens_config() -> TokenConfig {
    TokenConfig {
        access_ttl: Duration::from_secs(3600),
        refresh_ttl: Duration::from_secs(86400),
        code_ttl: Duration::from_secs(600),
        pending_ttl: Duration::from_secs(600),
        refresh_grace: Duration::from_secs(10),
        upstream_refresh_margin: Duration::from_secs(120),
        upstream_refresh_floor: Duration::from_secs(30),
    }
}

fn login() -> UpstreamLogin {
    let access = crypto::random_token().repeat(48);
    let tokens = UpstreamTokens::new(access, Some(crypto::random_token().repeat(36)), u64::MAX / 2, None).unwrap();
    UpstreamLogin { credential: UpstreamCredential::Tokens(tokens), identity: Identity::default() }
}

/// An authorization code for the bench client, as `/callback` stores it.
fn insert_code(store: &MemoryStore, code: &str) {
    store.issue_code(
        TokenHash::of(code),
        AuthorizationCode {
            request: dcr_proxy::store::AuthorizationRequest {
                client_id: "bench-client".into(),
                redirect_uri: "http://127.0.0.1:33418/callback".into(),
                redirect_uri_explicit: true,
                code_challenge: CHALLENGE.into(),
                scope: vec!["openid".into()],
                resource: None,
                state: None,
            },
            expires_at: 1000,
            login: login(),
        },
    );
}

fn client() -> Client {
    Client::public("bench-client", vec!["http://127.0.0.1:33418/callback".into()], 0)
}

fn bench(c: &mut Criterion) {
    let store = std::sync::Arc::new(MemoryStore::new());
    let state = dcr_proxy::store::Store::Memory(store.clone());
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let grant = Grant::new("bench-client".into(), vec!["openid".into()], None, login(), 0);
    let access = crypto::random_token();
    store.add_access_token(TokenHash::of(&access), AccessToken::new(grant.clone(), u64::MAX));
    for _ in 0..10_000 {
        let g = Grant::new("other".into(), vec![], None, login(), 0);
        store.add_access_token(TokenHash::of(&crypto::random_token()), AccessToken::new(g, u64::MAX));
    }
    let mut template = HeaderMap::new();
    template.insert("authorization", HeaderValue::from_str(&format!("Bearer {access}")).unwrap());
    template.insert("content-type", HeaderValue::from_static("application/json"));
    template.insert("accept", HeaderValue::from_static("application/json, text/event-stream"));
    template.insert("mcp-session-id", HeaderValue::from_static("4f1c2b1e-aa40-4a1e-8e58-0f9b1c1d2e3f"));
    template.insert("mcp-protocol-version", HeaderValue::from_static("2025-06-18"));
    template.insert("connection", HeaderValue::from_static("keep-alive"));

    c.bench_function("bearer_lookup_and_swap", |b| {
        b.iter(|| {
            let mut headers = template.clone();
            let presented = headers["authorization"].to_str().unwrap().strip_prefix("Bearer ").unwrap().to_owned();
            let grant = store.access_token(&TokenHash::of(&presented), 1).unwrap();
            let value = match &*grant.upstream() {
                UpstreamCredential::Tokens(t) => t.bearer().clone(),
                UpstreamCredential::Local => unreachable!(),
            };
            sanitize_request(&mut headers);
            headers.insert("authorization", value);
            headers
        })
    });

    let cfg = tokens_config();
    let client = client();
    c.bench_function("token_issuance", |b| {
        b.iter(|| {
            let code = crypto::random_token();
            insert_code(&store, &code);
            let params = Params::parse(
                format!(
                    "grant_type=authorization_code&code={code}&redirect_uri=http%3A%2F%2F127.0.0.1%3A33418%2Fcallback&code_verifier={VERIFIER}"
                )
                .as_bytes(),
            )
            .unwrap();
            let ctx = token::TokenContext { store: &state, config: &cfg, now: 1, resources: &[] };
            runtime.block_on(token::exchange(&ctx, &client, &params)).unwrap()
        })
    });

    let ctx = token::TokenContext { store: &state, config: &cfg, now: 1, resources: &[] };
    let mut refresh = String::new();
    // A fresh grant whose refresh token is rotated on every iteration.
    let code = crypto::random_token();
    insert_code(&store, &code);
    let first = runtime
        .block_on(token::exchange(
            &ctx,
            &client,
            &Params::parse(
                format!("grant_type=authorization_code&code={code}&redirect_uri=http%3A%2F%2F127.0.0.1%3A33418%2Fcallback&code_verifier={VERIFIER}")
                    .as_bytes(),
            )
            .unwrap(),
        ))
        .unwrap();
    refresh.push_str(first.refresh_token.as_deref().unwrap());
    c.bench_function("refresh_rotation", |b| {
        b.iter(|| {
            let params = Params::parse(format!("grant_type=refresh_token&refresh_token={refresh}").as_bytes()).unwrap();
            let next = runtime.block_on(token::exchange(&ctx, &client, &params)).unwrap();
            refresh = next.refresh_token.unwrap();
        })
    });

    let metadata = serde_json::json!({
        "client_name": "Claude",
        "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    });
    c.bench_function("registration", |b| b.iter(|| register::register(&metadata, 1, &Default::default()).unwrap()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
