//! Runs `e2e/sdk_flow.mjs`: the official MCP TypeScript SDK client through the dcr-proxy binary to an SDK MCP
//! server, with oauth2-mock-server as the OIDC IdP. Needs Node 20+ and the packages pinned in
//! `e2e/package-lock.json`; they are installed with `npm ci` when missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn official_mcp_sdk_client_connects_through_the_proxy_with_an_oidc_idp() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    if !e2e.join("node_modules").join("@modelcontextprotocol").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&e2e)
            .status()
            .expect("npm must be installed to run the end-to-end test");
        assert!(status.success(), "npm ci failed in e2e/");
    }
    let output = Command::new("node")
        .arg(e2e.join("sdk_flow.mjs"))
        .arg(env!("CARGO_BIN_EXE_dcr-proxy"))
        .current_dir(&e2e)
        .env("NO_COLOR", "1")
        .output()
        .expect("node must be installed to run the end-to-end test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "end-to-end flow failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(stdout.contains("tool call reached the MCP server with the IdP token"), "{stdout}");
}
