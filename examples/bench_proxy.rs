//! dcr-proxy for the benchmark: the real server and hot path, with one grant issued before it starts, so that
//! the load generator sends a valid bearer that is swapped for an Entra-sized upstream token.
//!
//! `cargo run --release --example bench_proxy -- PORT UPSTREAM_URL [WORKER_THREADS] [REDIS_URL]` (0 workers: the
//! current-thread runtime; a Redis URL: `[store] backend = "redis"` there, bearer lookups then served from the
//! replica's cache as in production; the shipped defaults unless `BENCH_REQUEST_TASK=0`:
//! `upstream.drive_in_request_task = false`, `BENCH_FAST_PATH=0`: `server.fast_path = false`). Prints `token=<access token>` once ready. The Azure IdP it is configured with points at a closed loopback
//! port and is never called: the upstream token is valid for a day.
//!
//! `BENCH_PER_CORE=1`: `server.runtime = "per-core"` with WORKER_THREADS threads, each a current-thread runtime
//! with its own `SO_REUSEPORT` listener (the `per-core` target of bench/run.py).
//!
//! Snapshots under load (issue 13): with `BENCH_SNAPSHOT_GRANTS=N` and `BENCH_SNAPSHOT_PATH=<file>` the store is
//! first filled with N more grants with Entra-sized tokens (2 KiB access, 1.5 KiB refresh), and each SIGUSR1
//! turns on or off a loop writing snapshots back to back on the blocking pool, as the server's snapshot task
//! does; each write prints `snapshot_seconds=<s>` on stderr.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;

use dcr_proxy::app::App;
use dcr_proxy::clock::Clock;
use dcr_proxy::config::Config;
use dcr_proxy::crypto::{self, TokenHash};
use dcr_proxy::store::{AccessToken, Grant, Identity, UpstreamCredential, UpstreamLogin, UpstreamTokens};

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(3902);
    let upstream = args.next().unwrap_or_else(|| "http://127.0.0.1:3900".to_owned());
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(1);
    let redis = args.next().filter(|u| !u.is_empty());
    // `upstream.drive_in_request_task` (off for the `hyper-util` target of bench/run.py).
    let request_task = std::env::var("BENCH_REQUEST_TASK").map_or(true, |v| v != "0");
    // `server.fast_path` (off for the `hyper-path` and `hyper-util` targets of bench/run.py).
    let fast_path = std::env::var("BENCH_FAST_PATH").map_or(true, |v| v != "0");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nfast_path = {fast_path}\n\
         [upstream]\nurl = \"{upstream}\"\ndrive_in_request_task = {request_task}\n\
         [idp]\nkind = \"azure\"\nauthority = \"http://127.0.0.1:9\"\ntenant = \"common\"\nclient_id = \"bench\"\nclient_secret = \"bench\"\n\
         [log]\nfilter = \"warn\"\n"
    );
    if let Some(url) = &redis {
        text.push_str(&format!("[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\n"));
    }
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".to_owned();
    let config = Config::from_toml(&text, |k| (k == "DCR_PROXY_SNAPSHOT_KEY").then(|| key.clone())).unwrap();
    let per_core = std::env::var("BENCH_PER_CORE").is_ok_and(|v| v == "1");
    // 0 workers: tokio's current-thread scheduler; per-core: this is the control runtime.
    let rt = if workers == 0 || per_core {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap()
    };
    rt.block_on(async move {
        let clock = Clock::system();
        let app = App::new_on(config, clock.clone(), None).await.unwrap();
        let now = clock.now();
        let upstream_token = format!("EwB4A8l6BAAU{}", crypto::random_token().repeat(48));
        let tokens =
            UpstreamTokens::new(upstream_token, Some(crypto::random_token().repeat(36)), now + 86400, None).unwrap();
        let login = UpstreamLogin {
            credential: UpstreamCredential::Tokens(tokens),
            identity: Identity { sub: "bench-user".into(), ..Identity::default() },
        };
        let grant = Grant::new("bench-client".into(), vec!["openid".into()], None, login, now);
        app.store.start_grant(grant.clone(), TokenHash::of("bench-code"), now + 1).await.unwrap();
        let access = crypto::random_token();
        app.store.add_access_token(&access, AccessToken::new(Arc::clone(&grant), now + 86400)).await.unwrap();
        if let (Ok(n), Ok(path)) = (std::env::var("BENCH_SNAPSHOT_GRANTS"), std::env::var("BENCH_SNAPSHOT_PATH")) {
            let dcr_proxy::store::Store::Memory(store) = &app.store else { unreachable!() };
            let store = store.clone();
            fill(&app.store, n.parse().unwrap(), now).await;
            tokio::spawn(snapshot_on_signal(store, path.into(), now));
        }
        if per_core {
            let listeners = dcr_proxy::server::per_core::bind(([127, 0, 0, 1], port).into(), workers.max(1)).unwrap();
            println!("token={access}");
            dcr_proxy::server::per_core::serve(listeners, app, None, std::future::pending()).await.unwrap();
            return;
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        println!("token={access}");
        dcr_proxy::server::serve(listener, app, None, std::future::pending()).await;
    });
}

async fn fill(store: &dcr_proxy::store::Store, n: usize, now: u64) {
    for _ in 0..n {
        let seed = crypto::random_token();
        let tokens = UpstreamTokens::new(
            &seed.repeat(48)[..2048],
            Some(seed.repeat(36)[..1536].to_owned()),
            now + 86400,
            Some("User.Read".into()),
        )
        .unwrap();
        let login = UpstreamLogin {
            credential: UpstreamCredential::Tokens(tokens),
            identity: Identity { sub: seed[..20].to_owned(), ..Identity::default() },
        };
        let grant = Grant::new("bench-client".into(), vec!["openid".into()], None, login, now);
        // A new grant expires at its creation until a token extends it: without this the sweeper removes it and
        // the snapshots hold only the access-token records.
        grant.extend_to(now + 86400);
        store.start_grant(grant.clone(), TokenHash::of(&seed), now + 1).await.unwrap();
        let access = crypto::random_token();
        store.add_access_token(&access, AccessToken::new(grant, now + 86400)).await.unwrap();
    }
}

async fn snapshot_on_signal(store: Arc<dcr_proxy::store::MemoryStore>, path: std::path::PathBuf, now: u64) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1()).unwrap();
    let key = dcr_proxy::config::SnapshotKey([9u8; 32]);
    loop {
        usr1.recv().await;
        loop {
            let (store, path, key) = (store.clone(), path.clone(), key.clone());
            let t = std::time::Instant::now();
            tokio::task::spawn_blocking(move || dcr_proxy::store::snapshot::write(&store, now, &path, &key))
                .await
                .unwrap()
                .unwrap();
            eprintln!("snapshot_seconds={:.3}", t.elapsed().as_secs_f64());
            // A second SIGUSR1 stops the loop after the write in progress.
            if tokio::time::timeout(std::time::Duration::ZERO, usr1.recv()).await.is_ok() {
                break;
            }
        }
    }
}
