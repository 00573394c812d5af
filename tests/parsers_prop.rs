//! Property tests of the request parsers: they never panic on any input, and what they accept obeys the rules.
//! Bounded to 512 cases per property so that CI stays fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dcr_proxy::http::params::Params;
use dcr_proxy::oauth::{redirect_uri, register, token};
use dcr_proxy::proxy::bearer;
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
    fn registration_accepts_only_valid_metadata(body in json_value()) {
        if let Ok(reg) = register::register(&body, 0, &Default::default()) {
            prop_assert!(!reg.client.redirect_uris.is_empty());
            for uri in &reg.client.redirect_uris {
                prop_assert!(redirect_uri::validate_for_registration(uri, &[]).is_ok());
            }
            prop_assert_eq!(reg.secret.is_some(), reg.client.secret_hash.is_some());
        }
    }

    #[test]
    fn redirect_uri_validation_never_panics_and_accepts_only_safe_uris(uri in ".{0,200}") {
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
        prop_assert_eq!(token::parse_basic(&header).ok(), Some((id, secret)));
    }

    #[test]
    fn authorization_header_parsers_never_panic(value in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            let _ = token::parse_basic(v.to_str().unwrap_or(""));
            let mut h = HeaderMap::new();
            h.insert("authorization", v);
            let _ = bearer::token_from_headers(&h);
        }
    }
}
