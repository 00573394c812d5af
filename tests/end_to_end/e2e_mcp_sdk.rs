//! Runs `e2e/sdk_flow.mjs`: official MCP SDK clients through the dcr-proxy binary to an SDK MCP server, with
//! oauth2-mock-server as the OIDC IdP, in four modes: the TypeScript SDK client with Dynamic Client
//! Registration, with a Client ID Metadata Document, as a legacy 2025-03-26 client without discovery, and the
//! Python SDK client with DCR.
//!
//! Needs Node 20+ and Python 3.10+. The pinned packages are installed when missing: `npm ci` in `e2e/`
//! (package-lock.json) and a virtualenv `e2e/.venv` from `e2e/requirements.txt` (hashes required).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn ensure_node_packages(e2e: &Path) {
    if e2e.join("node_modules").join("@modelcontextprotocol").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(e2e)
        .status()
        .expect("npm must be installed to run the end-to-end test");
    assert!(status.success(), "npm ci failed in e2e/");
}

/// The virtualenv's Python, created from the hashed lockfile when missing.
fn ensure_python_packages(e2e: &Path) -> std::path::PathBuf {
    let python = e2e.join(".venv").join("bin").join("python");
    let ready = Command::new(&python).args(["-c", "import mcp"]).status().is_ok_and(|s| s.success());
    if !ready {
        let status = Command::new("python3")
            .args(["-m", "venv", ".venv"])
            .current_dir(e2e)
            .status()
            .expect("python3 must be installed to run the end-to-end test");
        assert!(status.success(), "python3 -m venv failed in e2e/");
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--require-hashes", "-r", "requirements.txt"])
            .current_dir(e2e)
            .status()
            .expect("pip in e2e/.venv");
        assert!(status.success(), "pip install -r e2e/requirements.txt failed");
    }
    python
}

#[test]
fn official_mcp_sdk_clients_connect_through_the_proxy_with_an_oidc_idp() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    ensure_node_packages(&e2e);
    let python = ensure_python_packages(&e2e);

    // The metadata document is served over TLS on 127.0.0.1 with a throwaway certificate the proxy is told to
    // trust (client_metadata_documents.extra_ca_file).
    let dir = std::env::temp_dir().join(format!("dcrp-e2e-{}", dcr_proxy::crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cimd-cert.pem"), dir.join("cimd-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();

    let output = Command::new("node")
        .arg(e2e.join("sdk_flow.mjs"))
        .arg(env!("CARGO_BIN_EXE_dcr-proxy"))
        .current_dir(&e2e)
        .env("NO_COLOR", "1")
        .env("E2E_CIMD_CERT", &cert)
        .env("E2E_CIMD_KEY", &key)
        .env("E2E_PYTHON", &python)
        .output()
        .expect("node must be installed to run the end-to-end test");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "end-to-end flow failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    for mode in ["dcr", "cimd", "cimd-jwt", "legacy", "python"] {
        assert!(stdout.contains(&format!("[e2e] mode {mode}: ok")), "mode {mode} did not pass:\n{stdout}");
    }
    assert!(stdout.contains("5 passed, 0 failed"), "{stdout}");
}
