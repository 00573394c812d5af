//! The consent, login and error pages in a real browser: headless Chromium, driven by `e2e/pages.mjs`
//! (puppeteer-core, axe-core), against the real proxy with the local login and the recording upstream.
//!
//! What a person sees is checked (headings, buttons, resource, application and redirect host, scope words, the
//! refused redirect URI as text), the keyboard reaches Approve then Deny with a visible focus, axe-core finds no
//! serious or critical violation, no request leaves 127.0.0.1, and screenshots are saved: in the target
//! directory, or README's `docs/screenshots/` with `PAGES_UPDATE_SCREENSHOTS=1`.
//!
//! Needs Chromium (`/usr/bin/chromium`, Debian's `chromium`, or `PAGES_CHROMIUM`) and Node 20+. Without Chromium
//! the test skips with a message, unless `CI` is set: there a missing browser fails it.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// The skip without Chromium says so on stderr (cargo test shows it with --nocapture).
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::upstream::Upstream;
use crate::common::*;

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PAGES_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    path.is_file().then_some(path)
}

fn ensure_node_packages(e2e: &Path) {
    if e2e.join("node_modules").join("puppeteer-core").exists() && e2e.join("node_modules").join("axe-core").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(e2e)
        .status()
        .expect("npm must be installed to run the browser test");
    assert!(status.success(), "npm ci failed in e2e/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_login_deny_and_error_pages_work_and_are_accessible_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but Chromium is missing: install Debian's `chromium` (or set PAGES_CHROMIUM)"
        );
        eprintln!("SKIPPED: Chromium not found at /usr/bin/chromium (set PAGES_CHROMIUM, or apt-get install chromium)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let e2e = root.join("e2e");
    ensure_node_packages(&e2e);

    let dir = std::env::temp_dir().join(format!("dcrp-pages-{}", dcr_proxy::crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let logo = dir.join("logo.svg");
    std::fs::write(
        &logo,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 32 32\"><rect width=\"32\" height=\"32\" rx=\"7\" \
         fill=\"#0b57d0\"/><path d=\"M9 17l5 5 9-11\" stroke=\"#fff\" stroke-width=\"3\" fill=\"none\"/></svg>",
    )
    .unwrap();
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .local()
        .extra(format!(
            "[pages]\nproduct_name = \"Acme MCP\"\nresource_name = \"Acme Files\"\nlogo_file = \"{}\"\n\
             [pages.scopes]\nprofile = \"See your name and job title\"\n",
            logo.display()
        ))
        .start()
        .await;

    // README's screenshots are rewritten only when asked, so that `cargo test` leaves the checkout clean.
    let shots = if std::env::var_os("PAGES_UPDATE_SCREENSHOTS").is_some() {
        root.join("docs").join("screenshots")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
    };
    std::fs::create_dir_all(&shots).unwrap();
    let expect = serde_json::json!({
        "product": "Acme MCP",
        "resource": "Acme Files",
        "application": "Acme Notes",
        "scope_description": "See your name and job title",
        "password": ALICE_PASSWORD,
    });
    let base = proxy.base.clone();
    let shots_for_node = shots.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("pages.mjs")
            .current_dir(&e2e)
            .env("NO_COLOR", "1")
            .env("PAGES_PROXY", &base)
            .env("PAGES_CHROMIUM", &chromium)
            .env("PAGES_SCREENSHOTS", &shots_for_node)
            .env("PAGES_EXPECT", expect.to_string())
            .output()
            .expect("node must be installed to run the browser test")
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser run failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    let results: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("no result line ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(results["ok"], true, "{results}");
    assert_eq!(results["whoami"], "alice", "{results}");
    assert_eq!(results["denied"], "access_denied", "{results}");
    assert_eq!(results["offsite"], serde_json::json!([]), "{results}");
    for page in ["consent", "login", "login-error", "error"] {
        assert!(results["axe"][page]["passes"].as_u64().unwrap_or(0) > 0, "axe did not run on {page}: {results}");
    }
    for shot in ["consent", "consent-dark", "login", "error"] {
        let path = shots.join(format!("{shot}.png"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(bytes.starts_with(b"\x89PNG"), "{} is not a PNG", path.display());
    }
    // The upstream saw the whoami as alice, with the proxy's token swapped out.
    let seen = upstream.last();
    assert_eq!(seen.path, "/mcp/whoami");
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("authorization"), None);
    proxy.stop().await;
}
