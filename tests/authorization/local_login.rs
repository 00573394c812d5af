//! The built-in local login: the upstream receives the user's identity headers and no Authorization header.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::upstream::Upstream;
use crate::common::*;

#[tokio::test]
async fn local_login_forwards_identity_headers_and_no_token() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().start().await;
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
    let proxy = TestProxy::builder().upstream(upstream.url()).local().start().await;
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
    assert!(proxy.app.store.stats().codes == 0);
    // The right password still works with the same state.
    let Landing::Client(params) = browser
        .post_form(&proxy.url("/login"), &[("state", &state), ("username", "alice"), ("password", ALICE_PASSWORD)])
        .await
    else {
        panic!("login should succeed")
    };
    assert!(params.contains_key("code"));
}

// ---- issue 10, item 5: password hashing without a bound ------------------------------------------------------

/// Registers a client and approves its consent in `browser`; returns the login form's state.
async fn login_form_state(proxy: &TestProxy, browser: &mut Browser) -> String {
    let client_id = register_public_client(proxy).await;
    let Landing::Page(200, consent) = browser.get(&authorize_url(proxy, &client_id, "")).await else { panic!() };
    let (request, csrf) = (hidden_field(&consent, "request"), hidden_field(&consent, "csrf"));
    let Landing::Page(200, login) = browser
        .post_form(&proxy.url("/consent"), &[("request", &request), ("csrf", &csrf), ("action", "approve")])
        .await
    else {
        panic!("login page expected")
    };
    hidden_field(&login, "state")
}

async fn post_login(
    proxy: &TestProxy,
    browser: &Browser,
    state: &str,
    user: &str,
    password: &str,
) -> reqwest::Response {
    http()
        .post(proxy.url("/login"))
        .header("cookie", format!("dcrp={}", browser.cookies["dcrp"]))
        .form(&[("state", state), ("username", user), ("password", password)])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_logins_hash_on_a_bounded_pool_and_the_excess_gets_503_quickly() {
    let upstream = Upstream::start().await;
    let limits = "[limits]\nauthorize_per_minute = 1000\npassword_checks = 2\npassword_check_wait = \"200ms\"\n\
                  login_failures = 1000\n";
    let proxy = TestProxy::builder().upstream(upstream.url()).local().extra(limits).start().await;
    let metrics_url = serve_metrics(&proxy).await;
    let mut browser = Browser::new();
    let state = login_form_state(&proxy, &mut browser).await;
    let browser = std::sync::Arc::new(browser);
    let proxy = std::sync::Arc::new(proxy);

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (done, url) = (done.clone(), metrics_url.clone());
        tokio::spawn(async move {
            let mut most = 0.0f64;
            for _ in 0..2000 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let text = http().get(&url).send().await.unwrap().text().await.unwrap();
                most = most.max(metric(&text, "dcr_proxy_password_checks_running").expect("running gauge"));
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            most
        })
    };
    let mut logins = tokio::task::JoinSet::new();
    for i in 0..60 {
        let (proxy, browser, state) = (proxy.clone(), browser.clone(), state.clone());
        logins.spawn(async move {
            let started = std::time::Instant::now();
            let resp = post_login(&proxy, &browser, &state, "alice", &format!("wrong-{i}")).await;
            let (status, retry_after) = (resp.status().as_u16(), resp.headers().contains_key("retry-after"));
            (status, retry_after, started.elapsed(), resp.text().await.unwrap())
        });
    }
    let mut results = Vec::new();
    while let Some(r) = logins.join_next().await {
        results.push(r.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let sampled = sampler.await.unwrap();

    let checked = results.iter().filter(|r| r.0 == 401).count();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(checked + busy.len(), 60, "every answer is 401 or 503: {results:?}");
    assert!(checked >= 2, "the pool works: {checked} checked");
    assert!(!busy.is_empty(), "the excess is refused, not queued without bound");
    for (_, retry_after, took, page) in &busy {
        assert!(page.contains("busy") && page.contains("name=\"state\""), "the login form again: {page}");
        assert!(retry_after, "503 carries Retry-After");
        assert!(*took < std::time::Duration::from_secs(5), "refused quickly, took {took:?}");
    }
    let text = http().get(&metrics_url).send().await.unwrap().text().await.unwrap();
    let peak = metric(&text, "dcr_proxy_password_checks_peak").expect("peak gauge");
    assert!((1.0..=2.0).contains(&peak), "at most 2 hashes at once, peak {peak}");
    assert!(sampled <= 2.0, "sampled {sampled} running at once");
    assert_eq!(metric(&text, "dcr_proxy_password_checks_running"), Some(0.0));
    // Issue 23 item 9: the checks ran on this proxy's pool of exactly `password_checks` threads (not on tokio's
    // blocking pool, whose every idle thread kept its own 19 MiB of argon2 memory).
    let dcr_proxy::idp::Idp::Local(users) = &*proxy.app.idp else { panic!("the local login") };
    let prefix = users.check_thread_prefix();
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert_eq!(names.len(), 2, "password-check threads of this proxy: {names:?}");
}

#[tokio::test]
async fn repeated_failures_lock_the_username_out_until_the_window_passes() {
    let upstream = Upstream::start().await;
    let dir = ScratchDir::new("login-audit");
    let audit = dir.0.join("audit.jsonl");
    let limits =
        format!("[limits]\nlogin_failures = 3\nlogin_lockout = \"1m\"\n[audit]\npath = \"{}\"\n", audit.display());
    let proxy = TestProxy::builder().upstream(upstream.url()).local().extra(limits).start().await;
    let mut browser = Browser::new();
    let state = login_form_state(&proxy, &mut browser).await;
    for _ in 0..3 {
        assert_eq!(post_login(&proxy, &browser, &state, "alice", "guess").await.status(), 401);
    }
    // Locked: even the right password is refused, without a password check.
    let resp = post_login(&proxy, &browser, &state, "alice", ALICE_PASSWORD).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "60");
    assert!(proxy.app.store.stats().codes == 0);
    // Another username is not affected.
    assert_eq!(post_login(&proxy, &browser, &state, "bob", "guess").await.status(), 401);
    // Issue 23 item 11: failed logins and the lockout are in the audit trail, never a password.
    let audited = |text: &str| text.matches("\"login_failed\"").count() >= 4 && text.contains("\"login_locked_out\"");
    let found = within(std::time::Duration::from_secs(10), || {
        let ok = audited(&std::fs::read_to_string(&audit).unwrap_or_default());
        async move { ok }
    })
    .await;
    let trail = std::fs::read_to_string(&audit).unwrap_or_default();
    assert!(found.is_some(), "login failures and the lockout are audited: {trail}");
    assert!(trail.contains("\"subject\":\"alice\"") && trail.contains("\"subject\":\"bob\""), "{trail}");
    assert!(!trail.contains("guess") && !trail.contains(ALICE_PASSWORD), "no password in the audit trail");
    proxy.clock.advance(30);
    assert_eq!(post_login(&proxy, &browser, &state, "alice", ALICE_PASSWORD).await.status(), 429);
    proxy.clock.advance(31);
    let Landing::Client(params) = browser
        .post_form(&proxy.url("/login"), &[("state", &state), ("username", "alice"), ("password", ALICE_PASSWORD)])
        .await
    else {
        panic!("the window passed: login should succeed")
    };
    assert!(params.contains_key("code"));
    // The state is spent: neither the form nor a login with it works again, and no password is checked for it.
    assert_eq!(
        http()
            .get(proxy.url(&format!("/login?state={}", urlencode(&state))))
            .header("cookie", format!("dcrp={}", browser.cookies["dcrp"]))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(post_login(&proxy, &browser, &state, "alice", ALICE_PASSWORD).await.status(), 400);
}
