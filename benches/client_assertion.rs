//! The cost of one `private_key_jwt` client assertion check (RFC 7523), which runs on every token request of
//! such a client (ChatGPT): `cargo bench --bench client_assertion`.
//!
//! Each iteration does what `/token` does once the client's key set is at hand (inline, or cached from its
//! `jwks_uri`): read the credential from the form, check the signature against the set (`jwk::verify`: header,
//! algorithm allow-list, key by `kid`, signature) and judge the claims (`client_auth::check_claims`). The `jti`
//! claim in the store (one `DashMap`/`SET NX`) and the HTTP round trip are not included. The set holds three
//! keys, as a provider mid-rotation publishes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use dcr_proxy::endpoint::Endpoint;
use dcr_proxy::endpoints::client_auth::{self, AssertionRules, Credential};
use dcr_proxy::http::params::Params;
use dcr_proxy::jwk::{self, KeySet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

const CLIENT: &str = "https://chatgpt.example/oauth/client.json";
const NOW: u64 = 1_800_000_000;

fn bench(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec.as_ref(), &rng).unwrap();
    let point = ec_pair.public_key().as_ref().to_vec();
    let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed_public = Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap().public_key().as_ref().to_vec();
    let set = KeySet::parse_registered(&json!({"keys": [
        {"kty": "RSA", "kid": "rsa", "n": include_str!("../tests/fixtures/fake_azure_rsa_n.txt").trim(), "e": "AQAB"},
        {"kty": "EC", "crv": "P-256", "kid": "ec", "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65])},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": URL_SAFE_NO_PAD.encode(&ed_public)},
    ]}))
    .unwrap();
    let audiences = client_auth::audiences("https://proxy.example", Endpoint::Token);
    let claims = json!({"iss": CLIENT, "sub": CLIENT, "aud": "https://proxy.example", "iat": NOW, "exp": NOW + 300,
        "jti": "0123456789abcdef0123456789abcdef"});
    let cases = [
        (
            "RS256",
            Algorithm::RS256,
            "rsa",
            EncodingKey::from_rsa_der(include_bytes!("../tests/fixtures/fake_azure_rsa_pkcs1.der")),
        ),
        (
            "PS256",
            Algorithm::PS256,
            "rsa",
            EncodingKey::from_rsa_der(include_bytes!("../tests/fixtures/fake_azure_rsa_pkcs1.der")),
        ),
        ("ES256", Algorithm::ES256, "ec", EncodingKey::from_ec_der(ec.as_ref())),
        ("EdDSA", Algorithm::EdDSA, "ed", EncodingKey::from_ed_der(ed.as_ref())),
    ];
    for (name, alg, kid, key) in cases {
        let header = Header { kid: Some(kid.to_owned()), ..Header::new(alg) };
        let assertion = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let form = format!(
            "grant_type=refresh_token&refresh_token=x&client_assertion_type={}&client_assertion={assertion}",
            form_urlencoded::byte_serialize(client_auth::JWT_BEARER.as_bytes()).collect::<String>()
        );
        let params = Params::parse(form.as_bytes()).unwrap();
        let headers = http::HeaderMap::new();
        c.bench_function(&format!("client_assertion_check_{name}"), |b| {
            b.iter(|| {
                let Credential::Assertion { client_id, jwt } = Credential::read(&headers, &params).unwrap() else {
                    panic!("an assertion")
                };
                let verified = jwk::verify(&jwt, &set, None).unwrap();
                let rules = AssertionRules { client_id: &client_id, audiences: &audiences, now: NOW };
                client_auth::check_claims(&verified.claims, &rules).unwrap()
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
