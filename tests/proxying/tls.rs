//! TLS termination: HTTP/1.1 and HTTP/2 by ALPN, and a certificate replaced on disk is served to new
//! connections without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::upstream::Upstream;
use crate::common::*;

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn self_signed() -> Pair {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    Pair { cert_pem: ck.cert.pem(), key_pem: ck.signing_key.serialize_pem(), der: ck.cert.der().to_vec() }
}

fn install(dir: &Path, pair: &Pair) {
    // Write the key first and the certificate last; the reloader waits until the pair matches.
    std::fs::write(dir.join("key.pem"), &pair.key_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), &pair.cert_pem).unwrap();
}

fn client(trusted: &[&Pair], h2: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder().tls_info(true).redirect(reqwest::redirect::Policy::none());
    for p in trusted {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(p.cert_pem.as_bytes()).unwrap());
    }
    if !h2 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn served_cert(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions().get::<reqwest::tls::TlsInfo>().and_then(|i| i.peer_certificate()).unwrap().to_vec()
}

#[tokio::test]
async fn https_with_http1_and_http2_and_certificate_reload() {
    let dir = std::env::temp_dir().join(format!("dcrp-tls-{}", dcr_proxy::crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = self_signed();
    install(&dir, &first);
    let upstream = Upstream::start().await;
    let server_extra = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nreload_interval = \"100ms\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let proxy = TestProxy::builder().upstream(upstream.url()).server_extra(&server_extra).local().start().await;
    assert!(proxy.base.starts_with("https://127.0.0.1:"));

    let resp = client(&[&first], false).get(proxy.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(served_cert(&resp), first.der);
    let resp = client(&[&first], true).get(proxy.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    // The consent cookie is `__Host-` and `Secure` under https.
    let doc = register_json_with(
        &proxy,
        &client(&[&first], true),
        serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"}),
    )
    .await;
    let client_id = doc["client_id"].as_str().unwrap();
    let resp = client(&[&first], true).get(authorize_url(&proxy, client_id, "")).send().await.unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-dcrp=") && cookie.contains("; Secure"), "{cookie}");

    // Renewal: a new pair on disk is served to new connections.
    let second = self_signed();
    install(&dir, &second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = client(&[&first, &second], false);
        let resp = fresh.get(proxy.url("/healthz")).send().await.unwrap();
        if served_cert(&resp) == second.der {
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client that trusts only the old certificate now fails: the old one is gone.
    assert!(client(&[&first], false).get(proxy.url("/healthz")).send().await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
