//! Connections that never speak (issue 10, item 1), driven with raw sockets against the real server: a silent
//! TCP connection, a partial HTTP/2 preface, a TLS connection idle after its handshake, an idle HTTP/1.1
//! keep-alive connection and an idle h2c connection are closed; a body that drips is cut while a slow, steady one
//! passes; the connection caps close connections beyond them and serve again once they are free; an SSE stream
//! to a silent client is never cut; and the real binary under a low descriptor limit backs off instead of
//! spinning on `accept` and serves again as soon as descriptors free up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::upstream::Upstream;
use crate::common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short deadlines for the tests: 1 s for everything the item adds.
const SHORT: &str = "[limits]\nheader_timeout = \"1s\"\nidle_timeout = \"1s\"\nbody_timeout = \"1s\"\n";

async fn proxy_with(upstream: &Upstream, limits: &str) -> TestProxy {
    TestProxy::builder().upstream(upstream.url()).local().extra(limits).start().await
}

fn addr(proxy: &TestProxy) -> String {
    proxy.base.trim_start_matches("http://").trim_start_matches("https://").to_owned()
}

/// Reads (and discards) until the server closes the connection; whether it did within `limit`.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads until `needle` has been received (or the connection ends); the text read.
async fn read_until(stream: &mut TcpStream, needle: &str, limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&text).contains(needle) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => text.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test]
async fn a_connection_that_sends_nothing_or_half_an_http2_preface_is_closed() {
    let upstream = Upstream::start().await;
    let proxy = proxy_with(&upstream, SHORT).await;
    let mut silent = TcpStream::connect(addr(&proxy)).await.unwrap();
    let mut partial = TcpStream::connect(addr(&proxy)).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut half_head = TcpStream::connect(addr(&proxy)).await.unwrap();
    half_head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(4)).await, "a silent TCP connection stays open");
    assert!(closed_within(&mut partial, Duration::from_secs(4)).await, "a partial HTTP/2 preface stays open");
    assert!(closed_within(&mut half_head, Duration::from_secs(4)).await, "a partial request head stays open");
    assert!(started.elapsed() >= Duration::from_millis(800), "closed before the deadline: {:?}", started.elapsed());
    // The server still serves.
    assert_eq!(http().get(proxy.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_tls_connection_idle_after_its_handshake_is_closed() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("dcrp-conn-tls-{}", dcr_proxy::crypto::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    let upstream = Upstream::start().await;
    let server_extra = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let hash = dcr_proxy::idp::local::hash_password(ALICE_PASSWORD).unwrap();
    let idp =
        format!("[idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n{SHORT}");
    let proxy = TestProxy::builder().upstream(upstream.url()).server_extra(&server_extra).extra(&idp).start().await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let mut config = rustls::ClientConfig::builder().with_root_certificates(roots.clone()).with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr(&proxy)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.expect("the handshake completes");
        assert!(
            closed_within(&mut tls, Duration::from_secs(4)).await,
            "a TLS connection ({}) idle after its handshake stays open",
            String::from_utf8_lossy(alpn)
        );
    }
    // A TCP connection that never starts the handshake is closed too.
    let mut raw = TcpStream::connect(addr(&proxy)).await.unwrap();
    assert!(closed_within(&mut raw, Duration::from_secs(4)).await, "a connection before its handshake stays open");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn idle_http1_keep_alive_and_idle_h2c_connections_are_closed() {
    let upstream = Upstream::start().await;
    // A long header timeout: only the idle limit can close these.
    let proxy = proxy_with(&upstream, "[limits]\nheader_timeout = \"30s\"\nidle_timeout = \"1s\"\n").await;

    let mut h1 = TcpStream::connect(addr(&proxy)).await.unwrap();
    h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_until(&mut h1, "\"ok\"", Duration::from_secs(3)).await.starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut h1, Duration::from_secs(4)).await, "an idle keep-alive connection stays open");

    // h2c with prior knowledge; hyper's client answers the server's PINGs for as long as it runs.
    let tcp = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(proxy.url("/healthz")).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    let ended = tokio::time::timeout(Duration::from_secs(4), conn).await;
    assert!(ended.is_ok(), "an idle h2c connection stays open");
    assert!(sender.ready().await.is_err(), "the server closed the h2c connection");
}

#[tokio::test]
async fn a_dripping_body_is_cut_with_408_and_a_slow_steady_one_passes() {
    let upstream = Upstream::start().await;
    let proxy = proxy_with(&upstream, "[limits]\nheader_timeout = \"5s\"\nbody_timeout = \"1s\"\n").await;

    // Steady: 2 KB in 100-byte pieces every 300 ms (6 s in all, far beyond the 1 s idle limit).
    let doc = serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"}).to_string()
        + &" ".repeat(2000);
    let mut steady = TcpStream::connect(addr(&proxy)).await.unwrap();
    let head = format!(
        "POST /register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        doc.len()
    );
    steady.write_all(head.as_bytes()).await.unwrap();
    for piece in doc.as_bytes().chunks(100) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        steady.write_all(piece).await.unwrap();
    }
    let answer = read_until(&mut steady, "client_id", Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "a slow, steady upload was refused: {answer}");

    // Dripping: one byte every 2 s.
    let drip = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (mut reader, mut writer) = drip.into_split();
    writer
        .write_all(
            b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let dripping = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if writer.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let answer = read_all(&mut reader, Duration::from_secs(6)).await;
    dripping.abort();
    assert!(answer.starts_with("HTTP/1.1 408"), "a dripping body was not cut: {answer:?}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4), "cut only after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_dripping_body_forwarded_upstream_is_cut() {
    let upstream = Upstream::start().await;
    let proxy = proxy_with(&upstream, "[limits]\nheader_timeout = \"5s\"\nbody_timeout = \"1s\"\n").await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap();
    let mut drip = TcpStream::connect(addr(&proxy)).await.unwrap();
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {access}\r\nContent-Length: 100\r\n\r\nx");
    drip.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = drip.into_split();
    let dripping = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if writer.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    // Cut after 1 s of silence with 408, before the 2 s upstream response timeout could answer 504.
    let answer = read_all(&mut reader, Duration::from_secs(5)).await;
    dripping.abort();
    assert!(answer.starts_with("HTTP/1.1 408"), "a dripping upload was not cut: {answer:?}");
    assert!(upstream.recorded().iter().any(|r| r.path == "/upload"), "the upload had started upstream");
}

#[tokio::test]
async fn connections_beyond_the_caps_are_closed_and_served_again_once_free() {
    let upstream = Upstream::start().await;
    let proxy = proxy_with(
        &upstream,
        "[limits]\nheader_timeout = \"30s\"\nmax_connections = 3\nmax_connections_per_source = 2\n",
    )
    .await;
    let connect_from = |ip: &'static str| {
        let target = addr(&proxy);
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            socket.connect(target.parse().unwrap()).await.unwrap()
        }
    };
    // Two silent connections from 127.0.0.1 fill its share.
    let mut held = vec![connect_from("127.0.0.1").await, connect_from("127.0.0.1").await];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = connect_from("127.0.0.1").await;
    assert!(closed_within(&mut third, Duration::from_secs(2)).await, "a third connection from one source is kept");
    // Another source still gets in, up to the total.
    held.push(connect_from("127.0.0.2").await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = connect_from("127.0.0.3").await;
    assert!(closed_within(&mut fourth, Duration::from_secs(2)).await, "a connection beyond the total is kept");
    // The held ones are still open.
    for s in &mut held {
        assert!(!closed_within(s, Duration::from_millis(100)).await, "a held connection was closed");
    }
    drop(held);
    // Served again once the slots are free.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let ok = http().get(proxy.url("/healthz")).send().await.is_ok_and(|r| r.status() == 200);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "not served again after the held connections closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_sse_stream_to_a_silent_client_is_never_cut() {
    let upstream = Upstream::start().await;
    let proxy = proxy_with(&upstream, SHORT).await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    for h2 in [false, true] {
        let client = if h2 {
            reqwest::Client::builder().http2_prior_knowledge().build().unwrap()
        } else {
            reqwest::Client::builder().http1_only().build().unwrap()
        };
        let mut resp = client.get(proxy.url("/sse")).bearer_auth(&access).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let first = resp.chunk().await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).contains("\"n\":1"));
        // Silent for four times every deadline the item adds.
        tokio::time::sleep(Duration::from_secs(4)).await;
        upstream.release();
        let second = tokio::time::timeout(Duration::from_secs(3), resp.chunk()).await;
        let second = second.expect("the second event arrives").expect("the stream is intact").expect("a chunk");
        assert!(String::from_utf8_lossy(&second).contains("\"n\":2"), "h2 = {h2}");
    }
}

/// Everything the server sends until it closes the connection (or `limit`).
async fn read_all(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => text.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

// ---- the real binary under a low descriptor limit ---------------------------------------------------------

/// The binary, started by `sh` with `ulimit -n 64`, its log (warn level) written to a file.
struct LimitedBinary {
    child: std::process::Child,
    base: String,
    log: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Drop for LimitedBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl LimitedBinary {
    /// Starts the binary (on new ports when another process took its port first, see `unused_port`).
    async fn start(upstream: &Upstream, limits: &str) -> Self {
        retry_on_taken_port(|| Self::try_start(upstream, limits)).await
    }

    /// Starts the binary and waits until it is healthy; `Err(its log)` when it exits first.
    async fn try_start(upstream: &Upstream, limits: &str) -> Result<Self, String> {
        let port = unused_port();
        let dir = std::env::temp_dir().join(format!("dcrp-conn-{}", dcr_proxy::crypto::random_token()));
        std::fs::create_dir_all(&dir).unwrap();
        let hash = dcr_proxy::idp::local::hash_password(ALICE_PASSWORD).unwrap();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
             [upstream]\nurl = \"{}\"\n[idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\n\
             password_hash = \"{hash}\"\n{limits}",
            upstream.url()
        );
        std::fs::write(dir.join("proxy.toml"), config).unwrap();
        let log = dir.join("stderr.log");
        let child = std::process::Command::new("sh")
            .args(["-c", "ulimit -n 64 && exec \"$0\" --config \"$1\""])
            .arg(env!("CARGO_BIN_EXE_dcr-proxy"))
            .arg(dir.join("proxy.toml"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut proxy = Self { child, base: format!("http://127.0.0.1:{port}"), log, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !proxy.healthy_within(Duration::from_millis(500)).await {
            if proxy.child.try_wait().unwrap().is_some() {
                return Err(std::fs::read_to_string(&proxy.log).unwrap_or_default());
            }
            assert!(std::time::Instant::now() < deadline, "the binary did not start");
        }
        Ok(proxy)
    }

    /// Whether `/healthz` answers 200 within `limit` (each try with a short timeout of its own).
    async fn healthy_within(&self, limit: Duration) -> bool {
        let client = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if client.get(format!("{}/healthz", self.base)).send().await.is_ok_and(|r| r.status() == 200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    fn log_lines(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
    }

    async fn open_silent(&self, n: usize) -> Vec<TcpStream> {
        let addr = self.base.trim_start_matches("http://").to_owned();
        let mut held = Vec::new();
        for _ in 0..n {
            // Connections beyond the backlog may be refused; the test only needs many held.
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(&addr)).await {
                held.push(s);
            }
        }
        held
    }
}

#[tokio::test]
async fn out_of_descriptors_the_accept_loop_backs_off_and_serves_again_once_they_are_free() {
    let upstream = Upstream::start().await;
    // A cap above the descriptor limit and a long header timeout: accept itself runs out of descriptors.
    let proxy = LimitedBinary::start(&upstream, "[limits]\nheader_timeout = \"60s\"\nmax_connections = 1000\n").await;
    let held = proxy.open_silent(150).await;
    assert!(held.len() > 64, "only {} sockets opened", held.len());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failures = proxy.log_lines("accept failed");
    assert!(failures >= 1, "accept never failed: the test does not exercise the backoff");
    assert!(failures <= 5, "{failures} `accept failed` lines in 3 s: the accept loop spins");
    drop(held);
    let started = Instant::now();
    assert!(proxy.healthy_within(Duration::from_secs(5)).await, "not served again after the sockets closed");
    assert!(started.elapsed() < Duration::from_secs(2), "served again only after {:?}", started.elapsed());
}

/// CPU time (user + system, in clock ticks) a process has used, from `/proc/<pid>/stat`.
#[cfg(target_os = "linux")]
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the `(comm)`: state is 3rd, utime the 14th and stime the 15th of the whole line.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn out_of_descriptors_the_metrics_listener_backs_off_and_serves_again_once_they_are_free() {
    let upstream = Upstream::start().await;
    let metrics_port = unused_port();
    let limits = format!(
        "[limits]\nheader_timeout = \"60s\"\nmax_connections = 1000\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    );
    let proxy = LimitedBinary::start(&upstream, &limits).await;
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut held = proxy.open_silent(150).await;
    assert!(held.len() > 64, "only {} sockets opened", held.len());
    // Connections waiting in the metrics listener's backlog that it cannot accept: without a backoff, its accept
    // loop retries at once, forever.
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(&metrics_addr)).await {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = proxy.child.id();
    let (ticks, wall) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - ticks;
    // Clock ticks are 1/100 s on Linux: spinning costs about 100 per second of wall time, a backoff next to none.
    let per_second = used as f64 / wall.elapsed().as_secs_f64();
    assert!(per_second < 20.0, "{per_second:.0} CPU ticks/s while descriptors are exhausted: an accept loop spins");
    assert!(proxy.log_lines("metrics accept failed") >= 1, "the metrics accept never failed: the test proves nothing");
    drop(held);
    let served = async {
        loop {
            let probe = http().get(format!("http://{metrics_addr}/metrics")).send();
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
                return r.status();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(5), served).await.expect("metrics served again");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn silent_sockets_beyond_the_descriptor_limit_are_shed_and_the_proxy_answers() {
    let upstream = Upstream::start().await;
    // The default cap (half the descriptor limit) and a short header timeout.
    let proxy = LimitedBinary::start(&upstream, "[limits]\nheader_timeout = \"1s\"\n").await;
    let held = proxy.open_silent(150).await;
    assert!(held.len() > 64, "only {} sockets opened", held.len());
    // The sockets stay open on this side; the proxy must shed them and answer again.
    assert!(
        proxy.healthy_within(Duration::from_secs(4)).await,
        "/healthz does not answer while silent sockets are held"
    );
    assert_eq!(proxy.log_lines("accept failed"), 0, "the default cap leaves descriptors for accept");
    drop(held);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once_lets_streams_run_for_the_grace_then_cuts_them() {
    let upstream = Upstream::start().await;
    // Long deadlines: only the shutdown closes anything here (shutdown_grace is 1 s in TestProxy).
    let proxy = proxy_with(&upstream, "[limits]\nheader_timeout = \"30s\"\nidle_timeout = \"30s\"\n").await;
    let (_, tokens) = login(&proxy).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let sse = reqwest::Client::builder().http1_only().build().unwrap();
    let mut stream = sse.get(proxy.url("/sse")).bearer_auth(&access).send().await.unwrap();
    assert!(String::from_utf8_lossy(&stream.chunk().await.unwrap().unwrap()).contains("\"n\":1"));
    let mut idle = TcpStream::connect(addr(&proxy)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_until(&mut idle, "\"ok\"", Duration::from_secs(3)).await.starts_with("HTTP/1.1 200"));

    // A request the upstream never answers (the proxy's upstream response timeout is 2 s, beyond the grace).
    let slow = tokio::spawn(sse.get(proxy.url("/slow")).bearer_auth(&access).send());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let stopping = tokio::spawn(proxy.stop());
    assert!(closed_within(&mut idle, Duration::from_millis(500)).await, "an idle connection outlives the shutdown");
    // In flight: the stream goes on during the grace…
    upstream.release();
    let second = tokio::time::timeout(Duration::from_millis(800), stream.chunk()).await;
    assert!(second.is_ok_and(|c| c.is_ok_and(|c| c.is_some())), "the stream was cut before the grace ended");
    // …and what is still in flight when it ends is cut, not answered.
    let cut = tokio::time::timeout(Duration::from_secs(3), slow).await.expect("the slow request ends").unwrap();
    assert!(cut.is_err(), "a request outlived the shutdown grace: {:?}", cut.map(|r| r.status()));
    assert!(started.elapsed() < Duration::from_millis(1800), "cut after {:?}", started.elapsed());
    tokio::time::timeout(Duration::from_secs(3), stopping).await.expect("serve returns").unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
}
