//! Property tests of the request parsers: they never panic on any input, and what they accept obeys the rules.
//! Bounded to 512 cases per property so that CI stays fast.
//!
//! The generators of registration bodies and redirect URIs mostly produce *valid* inputs (with noise mixed in),
//! and `*_generator_produces_mostly_valid_*` asserts that share: a property whose `if accepted { assert }` body
//! never runs proves nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dcr_proxy::endpoints::client_auth;
use dcr_proxy::http::params::Params;
use dcr_proxy::oauth::register;
use dcr_proxy::proxy::bearer;
use dcr_proxy::redirect_uri;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde_json::Value;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, ..ProptestConfig::default() }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("https://a.example/cb"),
            Just("http://127.0.0.1:9/cb"),
            Just("http://evil.example/cb"),
            Just("none"),
            Just("client_secret_post"),
            Just("authorization_code"),
            Just("refresh_token"),
            Just("code"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::hash_map(
                prop_oneof![
                    Just("redirect_uris".to_owned()),
                    Just("token_endpoint_auth_method".to_owned()),
                    Just("grant_types".to_owned()),
                    Just("response_types".to_owned()),
                    Just("client_name".to_owned()),
                    Just("scope".to_owned()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A redirect URI that the registration rules accept: https on any host, or http on a loopback host.
fn valid_redirect_uri() -> impl Strategy<Value = String> {
    let path = "(/[a-zA-Z0-9._~-]{0,12}){0,3}";
    let query = prop::option::of("[a-z]{1,6}=[a-zA-Z0-9]{0,8}");
    (
        prop_oneof![
            "https://[a-z][a-z0-9-]{0,15}(\\.[a-z]{2,8}){1,2}(:[1-9][0-9]{0,3})?",
            "http://(127\\.0\\.0\\.1|localhost|\\[::1\\])(:[1-9][0-9]{0,3})?",
        ],
        path,
        query,
    )
        .prop_map(|(base, path, query)| match query {
            Some(q) => format!("{base}{path}?{q}"),
            None => format!("{base}{path}"),
        })
}

/// Mostly valid redirect URIs, and some that break one rule (scheme, host, fragment, user info) or are noise.
fn redirect_uri_input() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => valid_redirect_uri(),
        1 => valid_redirect_uri().prop_map(|u| format!("{u}#frag")),
        1 => valid_redirect_uri().prop_map(|u| u.replacen("https://", "http://", 1).replacen("http://127.0.0.1", "http://10.0.0.1", 1)),
        1 => valid_redirect_uri().prop_map(|u| u.replacen("://", "://user:pw@", 1)),
        1 => ".{0,200}",
    ]
}

/// A registration body RFC 7591 §2 accepts: redirect URIs, optional auth method, grant and response types, name.
fn valid_registration() -> impl Strategy<Value = Value> {
    let auth = prop::option::of(prop_oneof![Just("none"), Just("client_secret_basic"), Just("client_secret_post")]);
    let grants = prop::option::of(prop_oneof![
        Just(vec!["authorization_code"]),
        Just(vec!["authorization_code", "refresh_token"]),
    ]);
    let responses = prop::option::of(Just(vec!["code"]));
    let name = prop::option::of("[a-zA-Z0-9 .-]{1,40}");
    (prop::collection::vec(valid_redirect_uri(), 1..4), auth, grants, responses, name).prop_map(
        |(uris, auth, grants, responses, name)| {
            let mut body = serde_json::json!({ "redirect_uris": uris });
            if let Some(a) = auth {
                body["token_endpoint_auth_method"] = a.into();
            }
            if let Some(g) = grants {
                body["grant_types"] = g.into();
            }
            if let Some(r) = responses {
                body["response_types"] = r.into();
            }
            if let Some(n) = name {
                body["client_name"] = n.into();
            }
            body
        },
    )
}

/// Mostly valid registration bodies, some with one field broken, and arbitrary JSON.
fn registration_body() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => valid_registration(),
        1 => valid_registration().prop_map(|mut b| { b["redirect_uris"] = serde_json::json!(["http://evil.example/cb"]); b }),
        1 => valid_registration().prop_map(|mut b| { b["grant_types"] = serde_json::json!(["client_credentials"]); b }),
        1 => valid_registration().prop_map(|mut b| { b["token_endpoint_auth_method"] = "private_key_jwt".into(); b }),
        1 => json_value(),
    ]
}

/// The share of 512 generated inputs that `accepted` holds for (a fixed seed, so the number is stable).
fn share_accepted<S: Strategy>(strategy: S, accepted: impl Fn(&S::Value) -> bool) -> f64 {
    use proptest::strategy::ValueTree as _;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let n = 512;
    let hits = (0..n).filter(|_| accepted(&strategy.new_tree(&mut runner).unwrap().current())).count();
    hits as f64 / n as f64
}

#[test]
fn registration_generator_produces_mostly_valid_bodies() {
    let share = share_accepted(registration_body(), |b| register::register(b, 0, &Default::default()).is_ok());
    assert!((0.5..0.95).contains(&share), "valid share {share}: the property must see both valid and invalid bodies");
}

#[test]
fn redirect_uri_generator_produces_mostly_valid_uris() {
    let share = share_accepted(redirect_uri_input(), |u| redirect_uri::validate_for_registration(u, &[]).is_ok());
    assert!((0.5..0.95).contains(&share), "valid share {share}: the property must see both valid and invalid URIs");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn form_parser_never_panics(input in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Params::parse(&input);
    }

    #[test]
    fn form_parser_round_trips_unique_parameters(map in prop::collection::hash_map("[a-z_]{1,10}", ".{1,30}", 0..8)) {
        let encoded: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(map.iter()).finish();
        let parsed = Params::parse(encoded.as_bytes()).unwrap();
        for (k, v) in &map {
            prop_assert_eq!(parsed.get(k), Some(v.as_str()));
        }
    }

    #[test]
    fn form_parser_refuses_every_repeated_parameter(key in "[a-z_]{1,10}", a in ".{1,10}", b in ".{1,10}") {
        let encoded: String = form_urlencoded::Serializer::new(String::new())
            .append_pair(&key, &a)
            .append_pair(&key, &b)
            .finish();
        prop_assert!(Params::parse(encoded.as_bytes()).is_err());
    }

    #[test]
    fn registration_accepts_only_valid_metadata(body in registration_body()) {
        if let Ok(reg) = register::register(&body, 0, &Default::default()) {
            prop_assert!(!reg.client.redirect_uris.is_empty());
            for uri in &reg.client.redirect_uris {
                prop_assert!(redirect_uri::validate_for_registration(uri, &[]).is_ok());
            }
            prop_assert_eq!(reg.secret.is_some(), reg.client.secret_hash.is_some());
        }
    }

    #[test]
    fn redirect_uri_validation_never_panics_and_accepts_only_safe_uris(uri in redirect_uri_input()) {
        if redirect_uri::validate_for_registration(&uri, &[]).is_ok() {
            let url = url::Url::parse(&uri).unwrap();
            prop_assert!(url.scheme() == "https" || url.scheme() == "http");
            prop_assert!(url.fragment().is_none());
            // A registered URI always matches itself at /authorize.
            prop_assert!(redirect_uri::find_match(std::slice::from_ref(&uri), &uri).is_some());
        }
    }

    #[test]
    fn redirect_uris_on_loopback_match_on_any_port(port in 1u16.., other in 1u16.., path in "/[a-z]{0,10}") {
        let registered = vec![format!("http://127.0.0.1:{port}{path}")];
        let asked = format!("http://127.0.0.1:{other}{path}");
        prop_assert!(redirect_uri::find_match(&registered, &asked).is_some());
        let https = vec![format!("https://a.example:{port}{path}")];
        let asked = format!("https://a.example:{other}{path}");
        prop_assert_eq!(redirect_uri::find_match(&https, &asked).is_some(), port == other);
    }

    #[test]
    fn basic_credentials_round_trip(id in "[^:]{1,20}", secret in ".{0,40}") {
        use base64::Engine as _;
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let header = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(&id), enc(&secret))));
        prop_assert_eq!(client_auth::parse_basic(&header).ok(), Some((id, secret)));
    }

    #[test]
    fn authorization_header_parsers_never_panic(value in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            let _ = client_auth::parse_basic(v.to_str().unwrap_or(""));
            let mut h = HeaderMap::new();
            h.insert("authorization", v);
            let _ = bearer::token_from_headers(&h);
        }
    }
}
