//! The consent, login and error pages over HTTP, as an attacker and an operator would meet them: operator text
//! and request values escaped, the protected resource and the scopes named in words, the refused redirect URI
//! shown and never followed, the logo served from its fixed path only when configured and refused at start when
//! too large or of an unknown type. (The same pages in a real browser: tests/end_to_end/pages_browser.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::upstream::Upstream;
use crate::common::*;
use serde_json::json;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n0000IHDR-not-a-real-image";

fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dcrp-pages-{}", dcr_proxy::crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

async fn public_client(proxy: &TestProxy, name: &str) -> String {
    let reg = register_json(
        proxy,
        json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none", "client_name": name}),
    )
    .await;
    reg["client_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn consent_names_the_resource_the_publisher_and_the_scopes_in_words_with_operator_text_escaped() {
    let (_azure, _upstream, proxy) = setup_with(
        "[pages]\nproduct_name = \"Acme & Co\"\nresource_name = \"Acme <Files>\"\n\
         [pages.scopes]\nemail = \"Read <b>your</b> address\"\n",
    )
    .await;
    let client_id = public_client(&proxy, "Notes <i>app</i>").await;
    let scope = urlencode("openid email offline_access User.Read");
    let resp = http().get(authorize_url(&proxy, &client_id, &format!("&scope={scope}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let page = resp.text().await.unwrap();
    assert!(
        page.contains("<h1>Allow <bdi>Notes &lt;i&gt;app&lt;/i&gt;</bdi> to access Acme &lt;Files&gt;?</h1>"),
        "{page}"
    );
    assert!(page.contains("<header class=\"brand\"><span>Acme &amp; Co</span></header>"), "{page}");
    assert!(page.contains("registered itself with this service"), "who publishes it: {page}");
    assert!(page.contains("<dt>Your answer goes to</dt><dd><code><bdi>127.0.0.1:33418</bdi></code></dd>"), "{page}");
    // Scopes in words: the operator's (escaped), then the built-in ones, each with its name.
    assert!(page.contains("<li>Read &lt;b&gt;your&lt;/b&gt; address <code>email</code></li>"), "{page}");
    assert!(page.contains("<li>Sign you in and read your profile <code>User.Read</code></li>"), "{page}");
    assert!(page.contains("Keep access while you are not using it"), "{page}");
    assert!(!page.contains("<b>") && !page.contains("<i>"), "no operator or client markup renders");
    // One primary Approve, one secondary Deny, in that order; the anti-CSRF fields are still there.
    let approve = page.find("<button class=\"primary\" type=\"submit\" name=\"action\" value=\"approve\">").unwrap();
    let deny = page.find("<button class=\"secondary\" type=\"submit\" name=\"action\" value=\"deny\">").unwrap();
    assert!(approve < deny);
    assert_eq!(hidden_field(&page, "csrf").len(), 43);
    assert!(page.contains("<html lang=\"en\">") && page.contains("<main>"), "language and landmark");
    assert!(page.contains("prefers-color-scheme:dark") && page.contains(":focus-visible"), "dark mode and focus");
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "nothing is fetched from elsewhere");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert_eq!(
        csp,
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
}

#[tokio::test]
async fn the_login_page_names_the_service_and_says_it_is_for_development() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .local()
        .extra("[pages]\nproduct_name = \"Acme MCP\"\nresource_name = \"Acme Files\"\n")
        .start()
        .await;
    let client_id = public_client(&proxy, "Notes").await;
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else {
        panic!("expected the consent page");
    };
    let form = [
        ("request", hidden_field(&consent, "request")),
        ("csrf", hidden_field(&consent, "csrf")),
        ("action", "approve".to_owned()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let Landing::Page(200, login) = browser.post_form(&proxy.url("/consent"), &form).await else {
        panic!("expected the login page");
    };
    assert!(login.contains("<h1>Sign in to Acme Files</h1>"), "{login}");
    assert!(login.contains("<header class=\"brand\"><span>Acme MCP</span></header>"), "{login}");
    assert!(login.contains("local development login of Acme MCP"), "{login}");
    assert!(login.contains("<label for=\"username\">") && login.contains("<label for=\"password\">"), "{login}");
    // A wrong password: the error is announced and tied to the inputs.
    let state = hidden_field(&login, "state");
    let Landing::Page(401, again) = browser
        .post_form(&proxy.url("/login"), &[("state", &state), ("username", "alice"), ("password", "wrong-password")])
        .await
    else {
        panic!("expected the login page again");
    };
    assert!(again.contains("role=\"alert\" id=\"login-error\">Wrong username or password.</p>"), "{again}");
    assert!(again.contains("aria-describedby=\"login-error\""), "{again}");
}

#[tokio::test]
async fn an_unregistered_redirect_uri_is_shown_escaped_with_what_to_do_and_never_followed() {
    let (_azure, _upstream, proxy) = setup().await;
    let client_id = public_client(&proxy, "Notes").await;
    let evil = "https://evil.example/cb?<script>alert(1)</script>";
    let url = format!(
        "{}/authorize?response_type=code&client_id={client_id}&redirect_uri={}&state=s&code_challenge={CHALLENGE}\
         &code_challenge_method=S256",
        proxy.base,
        urlencode(evil)
    );
    let resp = http().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().get("location").is_none(), "never redirected");
    let page = resp.text().await.unwrap();
    assert!(page.contains("<h1>Invalid redirect URI</h1>"), "{page}");
    assert!(
        page.contains("<code class=\"detail\">https://evil.example/cb?&lt;script&gt;alert(1)&lt;/script&gt;</code>"),
        "the refused URI is shown, escaped: {page}"
    );
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("<h2>What you can do</h2>"), "{page}");
}

#[tokio::test]
async fn the_logo_is_served_at_its_fixed_path_with_its_type_and_caching_and_is_never_forwarded() {
    let logo = temp_file("Logo.PNG", PNG);
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .local()
        .extra(format!("[pages]\nlogo_file = \"{}\"\n", logo.display()))
        .start()
        .await;
    let resp = http().get(proxy.url("/dcr-proxy/logo")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(resp.headers()["cache-control"], "public, max-age=86400");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert!(resp.headers()["content-security-policy"].to_str().unwrap().contains("sandbox"));
    assert_eq!(&resp.bytes().await.unwrap()[..], PNG);
    let post = http().post(proxy.url("/dcr-proxy/logo")).body("x").send().await.unwrap();
    assert_eq!(post.status(), 405);
    // The consent page shows it, decorative, from the proxy itself.
    let client_id = public_client(&proxy, "Notes").await;
    let page = http().get(authorize_url(&proxy, &client_id, "")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("<img src=\"/dcr-proxy/logo\" alt=\"\""), "{page}");

    // Without a logo the path is the proxy's own all the same: 404, and the upstream never sees it.
    let bare = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let resp = http().get(bare.url("/dcr-proxy/logo")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // Issue 26: a browser's `/favicon.ico` is the logo, answered here: no 401 per page view, nothing forwarded.
    let icon = http().get(proxy.url("/favicon.ico")).send().await.unwrap();
    assert_eq!((icon.status().as_u16(), icon.headers()["content-type"].to_str().unwrap()), (200, "image/png"));
    assert_eq!(&icon.bytes().await.unwrap()[..], PNG);
    let icon = http().get(bare.url("/favicon.ico")).send().await.unwrap();
    assert_eq!(icon.status(), 404, "no logo: not found, not a challenge");
    assert!(!icon.headers().contains_key("www-authenticate"));
    assert!(upstream.recorded().is_empty(), "nothing was forwarded");
    std::fs::remove_dir_all(logo.parent().unwrap()).ok();
}

#[test]
fn a_logo_too_large_or_of_an_unknown_type_stops_the_start_naming_the_key() {
    let hash = dcr_proxy::idp::local::hash_password(ALICE_PASSWORD).unwrap();
    let config = |pages: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:8080\"\n\
             [upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n{pages}"
        )
    };
    let big = temp_file("logo.png", &[0u8; 11]);
    let err = dcr_proxy::config::Config::from_toml(
        &config(&format!("[pages]\nlogo_file = \"{}\"\nlogo_max_bytes = 10\n", big.display())),
        |_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`pages.logo_file`") && err.contains("pages.logo_max_bytes (10 bytes)"), "{err}");
    let html = temp_file("logo.html", b"<script>alert(1)</script>");
    let err = dcr_proxy::config::Config::from_toml(
        &config(&format!("[pages]\nlogo_file = \"{}\"\n", html.display())),
        |_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`pages.logo_file`") && err.contains(".png"), "{err}");
    let ok = dcr_proxy::config::Config::from_toml(&config(""), |_| None).unwrap();
    assert_eq!(ok.pages.resource_name, "127.0.0.1", "the resource defaults to the public host");
    for file in [big, html] {
        std::fs::remove_dir_all(file.parent().unwrap()).ok();
    }
}
