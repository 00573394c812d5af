//! Measures the delay of each SSE event from the fixture's send time to its arrival here.
//!
//! `cargo run --release --example bench_sse_latency -- URL [BEARER] [STREAMS]`
//! Reads STREAMS (default 20) streams of `/sse?n=50&interval_ms=5` one after the other and prints JSON with the
//! median and p99 delay in microseconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{SystemTime, UNIX_EPOCH};

fn micros() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i128
}

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("URL");
    let bearer = args.next().unwrap_or_default();
    let streams: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut delays: Vec<i128> = rt.block_on(async move {
        let client = reqwest::Client::new();
        let mut delays = Vec::new();
        for _ in 0..streams {
            let mut req = client.get(format!("{url}/sse?n=50&interval_ms=5"));
            if !bearer.is_empty() {
                req = req.bearer_auth(&bearer);
            }
            let mut resp = req.send().await.unwrap();
            assert!(resp.status().is_success(), "status {}", resp.status());
            let mut buf = String::new();
            while let Some(chunk) = resp.chunk().await.unwrap() {
                let now = micros();
                buf.push_str(std::str::from_utf8(&chunk).unwrap());
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    if let Some(sent) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                        delays.push(now - sent.trim().parse::<i128>().unwrap());
                    }
                }
            }
        }
        delays
    });
    delays.sort_unstable();
    let pick = |q: f64| delays[((delays.len() as f64 - 1.0) * q).round() as usize];
    println!("{{\"events\":{},\"p50_us\":{},\"p99_us\":{}}}", delays.len(), pick(0.5), pick(0.99));
}
