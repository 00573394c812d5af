//! `/readyz`: what the proxy waits for, each as a named check with its state, so that an operator sees why it is
//! not ready.
//!
//! Checks:
//! - `store`: the store is loaded — from the snapshot, empty because none is configured, or empty because an
//!   unreadable snapshot was skipped as configured (`store.start_empty_on_bad_snapshot`). The listener is bound
//!   only after this, so it is always ok once anything answers; it says which of the three happened.
//! - `idp`: the IdP is usable — OIDC discovery done (also before the bind), or the local login.
//! - `upstream`: the upstream MCP server accepts a TCP connection (within `upstream.connect_timeout`). This is the
//!   one check that fails at run time: every proxied request would fail with 502 while it does.
//!
//! Invariants: 200 when every check is ok, 503 otherwise. The upstream probe is single-flight and its result
//! reused for [`PROBE_REUSE`], so that `/readyz` (public, unauthenticated) cannot make the proxy open connections to
//! the upstream at the rate it is asked. No detail holds a secret: an address and an I/O error at most.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde::Serialize;

/// How long an upstream probe's result is reused.
pub const PROBE_REUSE: Duration = Duration::from_secs(2);

/// One check and its state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// The status and the JSON body of `/readyz` for these checks.
pub fn report(checks: &[Check], extra: serde_json::Map<String, serde_json::Value>) -> (StatusCode, serde_json::Value) {
    let ready = checks.iter().all(|c| c.ok);
    let mut body = extra;
    body.insert("status".into(), (if ready { "ready" } else { "not ready" }).into());
    body.insert("checks".into(), serde_json::json!(checks));
    let failing: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    body.insert("failing".into(), serde_json::json!(failing));
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, serde_json::Value::Object(body))
}

/// Whether the upstream accepts connections, probed at most once per [`PROBE_REUSE`].
#[derive(Debug, Default)]
pub struct UpstreamProbe {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl UpstreamProbe {
    /// The upstream check: a TCP connect to the upstream URL's host and port, or the recent result.
    pub async fn check(&self, url: &url::Url, timeout: Duration) -> Check {
        // The lock is held across the connect on purpose: concurrent probes wait for one result (single flight).
        let mut last = self.last.lock().await;
        let result = match &*last {
            Some((at, result)) if at.elapsed() < PROBE_REUSE => result.clone(),
            _ => {
                let result = connect(url, timeout).await;
                *last = Some((Instant::now(), result.clone()));
                result
            }
        };
        let target = format!("{}:{}", url.host_str().unwrap_or(""), url.port_or_known_default().unwrap_or(0));
        match result {
            Ok(()) => Check { name: "upstream", ok: true, detail: format!("{target} accepts connections") },
            Err(e) => Check { name: "upstream", ok: false, detail: format!("{target}: {e}") },
        }
    }
}

async fn connect(url: &url::Url, timeout: Duration) -> Result<(), String> {
    let host = url.host_str().ok_or("the upstream URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().ok_or("the upstream URL has no port")?;
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot connect: {e}")),
        Err(_) => Err(format!("no connection within {}", humantime::format_duration(timeout))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_failing_check_makes_503_and_is_named() {
        let checks = [
            Check { name: "store", ok: true, detail: "x".into() },
            Check { name: "upstream", ok: false, detail: "y".into() },
        ];
        let (status, body) = report(&checks, serde_json::Map::new());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["failing"], serde_json::json!(["upstream"]));
        assert_eq!(body["status"], "not ready");
        let (status, _) = report(&checks[..1], serde_json::Map::new());
        assert_eq!(status, StatusCode::OK);
    }
}
