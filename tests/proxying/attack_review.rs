//! A second attack on the hardening round (issue 10), through the running server on 127.0.0.1: a client that
//! never takes a response (HTTP/2 zero window, HTTP/1.1 not reading), forwarding headers written by the client,
//! concurrent password guesses against the lockout, cookie spellings, and odd requests that must never get a 5xx.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use crate::common::upstream::Upstream;
use crate::common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Short deadlines: 1 s for the first request head, the idle limit and a stalled body.
const SHORT: &str = "[limits]\nheader_timeout = \"1s\"\nidle_timeout = \"1s\"\nbody_timeout = \"1s\"\n";

fn addr(proxy: &TestProxy) -> String {
    proxy.base.trim_start_matches("http://").trim_start_matches("https://").to_owned()
}

/// Sends one raw HTTP/1.1 request as written and returns the status and the text.
async fn raw(proxy: &TestProxy, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr(proxy)).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// An h2c connection whose client never opens its stream window (SETTINGS_INITIAL_WINDOW_SIZE = 0): the server
/// can send response headers but no DATA. hyper's client answers the server's PINGs for as long as it runs.
async fn zero_window_h2(proxy: &TestProxy) -> (tokio::task::JoinHandle<()>, http::Response<hyper::body::Incoming>) {
    let tcp = TcpStream::connect(addr(proxy)).await.unwrap();
    let mut builder = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.initial_stream_window_size(0);
    let (mut sender, conn) = builder.handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(proxy.url("/healthz")).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(3), sender.send_request(req)).await.unwrap().unwrap();
    // Keep the sender: dropping it would let the client end the connection itself.
    std::mem::forget(sender);
    (conn, resp)
}

/// Finding 1: an unauthenticated HTTP/2 client that never opens its receive window holds a connection forever:
/// the response body of `/healthz` is never written, so it is "in flight" for ever, and neither the idle limit, the
/// header deadline nor a shutdown's drain closes it. A few of them per source fill
/// `limits.max_connections_per_source` (and 16 sources × 256 fill `max_connections`).
#[tokio::test]
async fn an_h2_client_that_never_opens_its_window_loses_its_connection() {
    let upstream = Upstream::start().await;
    let limits = format!("{SHORT}max_connections_per_source = 3\n");
    let proxy = TestProxy::builder().upstream(upstream.url()).local().extra(&limits).start().await;

    let mut held = Vec::new();
    for _ in 0..3 {
        let (conn, resp) = zero_window_h2(&proxy).await;
        assert_eq!(resp.status(), 200);
        held.push((conn, resp));
    }
    // Well past header_timeout + idle_timeout + the drain's grace (1 s each).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still_open = held.iter().filter(|(conn, _)| !conn.is_finished()).count();

    // What a legitimate client from the same source gets meanwhile.
    let (status, _) = raw(&proxy, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(
        still_open, 0,
        "{still_open} of 3 zero-window h2c connections are still open after 5 s (1 s deadlines); a fresh \
         /healthz from the same source got status {status} (0 = connection refused/closed)"
    );
    assert_eq!(status, 200);
}

/// Finding 1b: the same over plain HTTP/1.1 needs only that the response is large; for `/healthz` it is not held.
/// (Control: shows HTTP/1.1 is bounded, so the h2 case above is the hole.)
#[tokio::test]
async fn control_http1_client_that_never_reads_is_closed() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().extra(SHORT).start().await;
    let mut s = TcpStream::connect(addr(&proxy)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut buf = vec![0u8; 65536];
    let mut closed = false;
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {}
            Err(_) => break,
        }
    }
    assert!(closed, "an HTTP/1.1 connection that never reads is closed");
}

/// Finding 2: forwarding headers a client sends are passed to the upstream beside (or instead of) the proxy's own:
/// `Forwarded` (RFC 7239, preferred over `X-Forwarded-*` by Spring's ForwardedHeaderFilter, Tomcat, Quarkus...),
/// `X-Real-IP`, and `X-Forwarded-Host` whenever the request has no `Host` (HTTP/1.1 without Host, HTTP/1.0).
#[tokio::test]
async fn client_forwarding_headers_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let (_, tokens) = login(&proxy).await;
    let token = tokens["access_token"].as_str().unwrap();
    let (status, text) = raw(
        &proxy,
        &format!(
            "GET /mcp HTTP/1.1\r\nAuthorization: Bearer {token}\r\nX-Forwarded-Host: evil.example\r\n\
             Forwarded: for=10.0.0.1;host=evil.example;proto=https\r\nX-Real-IP: 10.0.0.1\r\n\
             X-Forwarded-Port: 8443\r\nX-Forwarded-Prefix: /evil\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = upstream.last();
    let mut leaked = Vec::new();
    for (name, forged) in [
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "host=evil.example"),
        ("x-real-ip", "10.0.0.1"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/evil"),
    ] {
        if seen.headers.get(name).is_some_and(|vs| vs.iter().any(|v| v.contains(forged))) {
            leaked.push(format!("{name}: {:?}", seen.headers[name]));
        }
    }
    assert!(leaked.is_empty(), "client-forged forwarding headers reached the upstream: {leaked:?}");
}

/// Finding 3: the lockout is checked before a password check is queued, and failures are recorded only after it
/// ran: concurrent guesses all pass the check, so one burst tries many more passwords than `login_failures`.
#[tokio::test]
async fn concurrent_guesses_stop_at_the_lockout_threshold() {
    let upstream = Upstream::start().await;
    let limits = "[limits]\nauthorize_per_minute = 1000\npassword_checks = 2\npassword_check_wait = \"60s\"\n\
                  login_failures = 2\nlogin_lockout = \"5m\"\n";
    let proxy = TestProxy::builder().upstream(upstream.url()).local().extra(limits).start().await;
    let client_id = register_public_client(&proxy).await;
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    let (request, csrf) = (hidden_field(&consent, "request"), hidden_field(&consent, "csrf"));
    let Landing::Page(200, login_page) = browser
        .post_form(&proxy.url("/consent"), &[("request", &request), ("csrf", &csrf), ("action", "approve")])
        .await
    else {
        panic!("login page expected")
    };
    let state = hidden_field(&login_page, "state");
    let cookie = format!("dcrp={}", browser.cookies["dcrp"]);
    let url = proxy.url("/login");
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (url, cookie, state) = (url.clone(), cookie.clone(), state.clone());
        burst.spawn(async move {
            http()
                .post(&url)
                .header("cookie", cookie)
                .form(&[("state", state.as_str()), ("username", "alice"), ("password", &format!("guess-{i}"))])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    let mut statuses = Vec::new();
    while let Some(s) = burst.join_next().await {
        statuses.push(s.unwrap());
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        checked <= 2,
        "login_failures = 2, yet {checked} of 8 concurrent wrong passwords were checked (statuses {statuses:?})"
    );
}

/// Finding 5: an upstream `Set-Cookie` with an empty name whose value reads `dcrp=…` passes the filter (the name
/// before the first `=` is empty); browsers store it as a nameless cookie and send it back as `dcrp=…`.
#[tokio::test]
async fn an_upstream_nameless_cookie_spelling_the_proxy_cookie_never_reaches_the_browser() {
    let upstream = common::http_server::serve(|_req| async {
        http::Response::builder()
            .header("set-cookie", "=dcrp=upstream-chosen; Path=/")
            .header("set-cookie", "=__Host-dcrp=upstream-chosen; Path=/; Secure")
            .body(common::http_server::body("{}"))
            .unwrap()
    })
    .await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let (_, tokens) = login(&proxy).await;
    let resp =
        http().get(proxy.url("/mcp")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let set: Vec<String> =
        resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap_or("").to_owned()).collect();
    assert!(
        !set.iter().any(|v| v.contains("dcrp=")),
        "an upstream Set-Cookie that a browser sends back as the proxy's cookie reached the client: {set:?}"
    );
}

/// Probe (held if it passes): an HTTP/1.1 client that pipelines many requests and never reads the answers, so that
/// the proxy's writes block, is still closed by the deadlines (one connection per source: a fresh one is served).
#[tokio::test]
async fn http1_pipelined_requests_never_read_do_not_hold_the_connection() {
    let upstream = Upstream::start().await;
    let limits = format!("{SHORT}max_connections_per_source = 1\n");
    let proxy = TestProxy::builder().upstream(upstream.url()).local().extra(&limits).start().await;
    let s = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (_reader, mut writer) = s.into_split();
    let one = b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\n\r\n";
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 20_000).collect();
    let pusher = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(8), writer.write_all(&batch)).await;
        writer
    });
    let _writer = pusher.await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, _) = raw(&proxy, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200, "a connection whose answers are never read still holds the source's only slot");
}

/// Probe (held if it passes): an HTTP/2 stream whose request body never comes, on a route that does not read it
/// and on one that does, ends, and the connection is then closed by the idle limit.
#[tokio::test]
async fn h2_stream_whose_body_never_comes_does_not_hold_the_connection() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().extra(SHORT).start().await;
    let tcp = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut statuses = Vec::new();
    for path in ["/healthz", "/token"] {
        let body = NeverBody;
        let req = http::Request::post(proxy.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-length", "100")
            .body(body)
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await;
        statuses.push(resp.ok().and_then(Result::ok).map(|r| r.status().as_u16()));
    }
    let ended = tokio::time::timeout(Duration::from_secs(6), conn).await;
    assert!(ended.is_ok(), "the h2c connection stays open; answers {statuses:?}");
}

/// A request body that never yields a frame.
struct NeverBody;

impl hyper::body::Body for NeverBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>>> {
        std::task::Poll::Pending
    }
}

/// Probe (held if it passes): odd targets and parameters at every endpoint answer below 500 and leave the server up.
#[tokio::test]
async fn odd_requests_never_get_a_5xx() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let (_, tokens) = login(&proxy).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let big = "A".repeat(20_000);
    let heads = vec![
        "GET http://x HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        "GET http://x/mcp/admin HTTP/1.1\r\nHost: y\r\n\r\n".to_owned(),
        "OPTIONS http://x/* HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        "GET * HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        format!("GET * HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"),
        format!("GET http://x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"),
        format!("GET /mcp/%FF%FE/%C0%AE%C0%AE/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"),
        format!("GET /mcp?%FF=%FE&access%5Ftoken=x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"),
        "GET /register/%FF HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\n\r\n".to_owned(),
        "DELETE /register/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\n\r\n".to_owned(),
        "GET /authorize?client_id=%FF&%FF HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        "GET /authorize?client_id=https%3A%2F%2F%5B%3A%3A1%5D%2Fx HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        format!("GET /callback?state={big} HTTP/1.1\r\nHost: x\r\nCookie: dcrp=a.b\r\n\r\n"),
        format!("GET /login?state={big} HTTP/1.1\r\nHost: x\r\nCookie: dcrp=a.b; dcrp=.; dcrp==\r\n\r\n"),
        "POST /consent HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 26\r\nCookie: dcrp=.\r\n\r\nrequest=%FF%FF&csrf=&csrf=".to_owned(),
        "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 60\r\n\r\ngrant_type=refresh_token&refresh_token=AAAA.BBBB&client_id=x".to_owned(),
        "POST /revoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 42\r\n\r\ntoken=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        "GET /userinfo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \r\n\r\n".to_owned(),
    ];
    let mut bad = Vec::new();
    for head in heads {
        let mut h = head.clone();
        if !h.contains("Connection:") {
            h = h.replacen("\r\n", "\r\nConnection: close\r\n", 1);
        }
        let (status, text) = raw(&proxy, &h).await;
        if status >= 500 || status == 0 {
            bad.push(format!("{} -> {status}: {}", &head[..head.len().min(80)], text.lines().last().unwrap_or("")));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
    assert_eq!(raw(&proxy, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.0, 200);
}

/// Spellings of the proxy's own endpoints (`/%74oken`, `//.well-known/…`) are refused, never forwarded with the IdP
/// token; other methods on the proxy's own endpoints get 405, never the upstream.
#[tokio::test]
async fn spellings_and_other_methods_of_the_proxys_own_endpoints_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let (_, tokens) = login(&proxy).await;
    let token = tokens["access_token"].as_str().unwrap();
    for path in
        ["/%2Ewell-known/oauth-protected-resource", "//.well-known/openid-configuration", "/%74oken", "//register"]
    {
        let (status, text) = raw(
            &proxy,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("own endpoints"), "{text}");
    }
    for (method, path) in [("POST", "/register/some-client"), ("PATCH", "/userinfo"), ("POST", "/readyz")] {
        let (status, text) = raw(
            &proxy,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(status, 405, "{method} {path}: {text}");
    }
    assert!(upstream.recorded().is_empty(), "{:?}", upstream.recorded());
}

async fn register_as(proxy: &TestProxy, forwarded_for: &str) -> (u16, Value) {
    let resp = http()
        .post(proxy.url("/register"))
        .header("x-forwarded-for", forwarded_for)
        .json(&serde_json::json!({"redirect_uris": [CLIENT_REDIRECT], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Finding 7: the client cap evicts "the busiest sources first, oldest first", so a flood spread over many sources
/// (one registration each, as many as the cap) ties with the user's source and evicts the user's client — the oldest —
/// while the user is signing in: the code then cannot be redeemed. README: "a `/register` flood evicts its own
/// clients first"; issue 10 item 4: "a legitimate user can always sign in while such a flood runs".
#[tokio::test]
async fn a_register_flood_from_many_sources_never_evicts_a_client_whose_user_is_signing_in() {
    let upstream = Upstream::start().await;
    let hash = dcr_proxy::idp::local::hash_password(ALICE_PASSWORD).unwrap();
    let idp = format!(
        "[idp]\nkind = \"local\"\n[[idp.users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n\
         [registration]\nmax_clients = 50\n"
    );
    let proxy = TestProxy::builder()
        .upstream(upstream.url())
        .server_extra("behind_tls_terminator = true")
        .extra(idp)
        .start()
        .await;
    let (status, doc) = register_as(&proxy, "198.51.100.1:5000").await;
    assert_eq!(status, 201);
    let client_id = doc["client_id"].as_str().unwrap().to_owned();
    let mut browser = Browser::new();
    let Landing::Page(200, consent) = browser.get(&authorize_url(&proxy, &client_id, "")).await else { panic!() };
    // The test clock stands still; in real time the flood's clients are younger than the user's.
    proxy.clock.advance(1);

    // While the user reads the consent page and signs in: one registration from each of 60 sources.
    for i in 0..60 {
        let (status, _) = register_as(&proxy, &format!("203.0.113.{}:{}", i + 1, 1000 + i)).await;
        assert!(status == 201 || status == 503, "{status}");
    }

    let params = approve_and_sign_in(&proxy, &mut browser, &consent).await;
    let resp = redeem(&proxy, &client_id, &params["code"]).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "the user's client was evicted by a flood of 60 one-client sources: {text}");
}

/// Issue 23 item 10: with a low connection cap (as a low `ulimit -n` makes it) and no per-source cap configured,
/// one source cannot take every slot: the per-source cap follows the global one, and another source still gets in.
#[tokio::test]
async fn one_source_cannot_fill_a_low_connection_cap() {
    let upstream = Upstream::start().await;
    let limits = "[limits]\nmax_connections = 8\nheader_timeout = \"30s\"\nidle_timeout = \"30s\"\n";
    let proxy = TestProxy::builder().upstream(upstream.url()).local().extra(limits).start().await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(addr(&proxy)).await.unwrap());
    }
    // Another loopback source (127.0.0.2) asks for /healthz.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(addr(&proxy).parse().unwrap()).await.unwrap();
    other.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), other.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "another source is served while one holds 8 idle connections: {text:?}");
    drop(held);
}

/// Sends one byte a second on `s` until the proxy answers or closes (bounded: 30 s): what it answered (up to the
/// end of the head), and when the trickle began.
async fn trickle(s: &mut TcpStream) -> (String, std::time::Instant) {
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(30) {
        if s.write_all(b"a").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), started)
}

/// Issue 23 item 6: a body that trickles (one byte a second, well within the idle limit) is cut by the minimum
/// data rate once its grace has passed: 408, and the metric names the limit that fired.
#[tokio::test]
async fn a_trickling_token_body_is_cut_by_the_rate_limit_with_408() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().start().await;
    let mut s = TcpStream::connect(addr(&proxy)).await.unwrap();
    s.write_all(
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n",
    )
    .await
    .unwrap();
    let (text, started) = trickle(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?} after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(15), "cut after the grace, not the whole-body deadline");
    let metrics = proxy.app.metrics.render(&proxy.app.store);
    assert!(metrics.contains("dcr_proxy_request_body_limits_total{limit=\"rate\"} 1"), "{metrics}");
}

/// Issue 23 item 6, proxied bodies: a body to the upstream that trickles one byte a second is cut with 408 once
/// the rate grace has passed (5 s at 240 B/s), on the fast path (the default) as on the hyper path (`.ci/test`'s
/// second pass), and the rate limit is counted. (`upstream.response_timeout` as shipped, 60 s: the hyper path's
/// response clock runs during the upload, and the tests' 2 s would answer 504 first.)
#[tokio::test]
async fn a_trickling_proxied_body_is_cut_by_the_rate_limit_with_408() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::builder().upstream(upstream.url()).local().response_timeout("60s").start().await;
    let (_, tokens) = login(&proxy).await;
    let token = tokens["access_token"].as_str().unwrap();
    let mut s = TcpStream::connect(addr(&proxy)).await.unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (text, started) = trickle(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?} after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(15), "cut after the rate grace: {:?}", started.elapsed());
    let metrics = proxy.app.metrics.render(&proxy.app.store);
    assert!(metrics.contains("dcr_proxy_request_body_limits_total{limit=\"rate\"} 1"), "{metrics}");
}
