//! Runs `e2e/sdk2_flow.mjs`: the MCP 2026-07-28 SDK generation (`@modelcontextprotocol/client` and
//! `@modelcontextprotocol/server` 2.x, pinned in e2e/package.json) through the dcr-proxy binary, with
//! oauth2-mock-server as the OIDC IdP: sign-in with DCR and `application_type`, tool calls through the tool policy
//! (`Mcp-Method`/`Mcp-Name` checked against the body, `tools/list` narrowed, a refused call kept from the server),
//! a `subscriptions/listen` stream silent for longer than `upstream.response_timeout` that still delivers, and a
//! refresh. The same proxy then serves the 1.32 generation (client and sessionful server, routed by
//! `MCP-Protocol-Version`): sign-in, narrowed `tools/list`, a tool call, and the GET notification stream silent for
//! longer than `response_timeout` that still delivers. `e2e_mcp_sdk.rs` runs the 1.32 and Python clients in more
//! modes (CIMD, legacy discovery).
//!
//! Needs Node 20+; the pinned packages are installed with `npm ci` in `e2e/` when missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn both_sdk_generations_sign_in_call_tools_and_keep_notification_streams_through_the_proxy() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    if !e2e.join("node_modules").join("@modelcontextprotocol").join("client").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&e2e)
            .status()
            .expect("npm must be installed to run the end-to-end test");
        assert!(status.success(), "npm ci failed in e2e/");
    }
    let output = Command::new("node")
        .arg(e2e.join("sdk2_flow.mjs"))
        .arg(env!("CARGO_BIN_EXE_dcr-proxy"))
        .current_dir(&e2e)
        .env("NO_COLOR", "1")
        .output()
        .expect("node must be installed to run the end-to-end test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "2.x end-to-end flow failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    for step in [
        "sign-in: ok",
        "tool calls: ok",
        "listen: a notification arrived",
        "refresh: ok",
        "sdk 2.x: ok",
        "sdk 1.x: GET stream delivered",
        "sdk 1.x: ok",
    ] {
        assert!(stdout.contains(step), "step `{step}` did not pass:\n{stdout}");
    }
}
