//! The built-in local login: the upstream receives the user's identity headers and no Authorization header.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::upstream::Upstream;
use common::*;

#[tokio::test]
async fn local_login_forwards_identity_headers_and_no_token() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::with_local(&upstream.url()).await;
    let (_, tokens) = login(&proxy).await;
    let resp = http()
        .post(proxy.url("/mcp"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .header("x-forwarded-user", "mallory")
        .header("x-forwarded-email", "mallory@evil.example")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("x-forwarded-email"), Some("alice@example.com"));
    assert_eq!(seen.headers.get("x-forwarded-user").map(Vec::len), Some(1));
    assert!(seen.header("authorization").is_none());
}

#[tokio::test]
async fn wrong_password_shows_the_form_again_and_issues_nothing() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::with_local(&upstream.url()).await;
    let client_id = register_public_client(&proxy).await;
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    let (request, csrf) = (hidden_field(&consent, "request"), hidden_field(&consent, "csrf"));
    let Landing::Page(200, login) = browser
        .post_form(&proxy.url("/consent"), &[("request", &request), ("csrf", &csrf), ("action", "approve")])
        .await
    else {
        panic!("login page expected")
    };
    let state = hidden_field(&login, "state");
    let Landing::Page(401, again) = browser
        .post_form(&proxy.url("/login"), &[("state", &state), ("username", "alice"), ("password", "nope")])
        .await
    else {
        panic!("login should be refused")
    };
    assert!(again.contains("Wrong username or password"));
    assert!(proxy.app.store.codes.is_empty());
    // The right password still works with the same state.
    let Landing::Client(params) = browser
        .post_form(&proxy.url("/login"), &[("state", &state), ("username", "alice"), ("password", ALICE_PASSWORD)])
        .await
    else {
        panic!("login should succeed")
    };
    assert!(params.contains_key("code"));
}
