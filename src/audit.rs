//! The audit trail: one JSON line per security event, answering "who approved what, when".
//!
//! Events ([`Event`]): client registered / updated / deleted, consent approved / denied, sign-in completed, grant
//! issued, refresh-token reuse detected (the family and its grant revoked), authorization-code replay, token revoked,
//! upstream grant ended by the IdP, admin action. Each line holds the time (RFC 3339, UTC), the event, the user
//! subject, the client id and name, the source address and the request id (the same number as the access log's
//! `request_id`), and a short detail where one helps.
//!
//! Invariants:
//! - Never a token, code, state, secret or hash: an [`Entry`] has no field that could carry one, and call sites
//!   pass identifiers only (client id, IdP subject, grant id).
//! - Writing never blocks a request: entries go through a bounded channel (`audit.queue`) to one writer task; when
//!   it is full the entry is dropped, counted ([`Audit::dropped`]) and a warning logged — never waited for.
//! - The source address and request id come from the request being served ([`RequestContext`], a task-local set by
//!   the router), so call sites are one line and need no request at hand.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    Stderr,
    /// A file, appended to (created 0600 when missing).
    File(std::path::PathBuf),
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    ClientRegistered,
    ClientUpdated,
    ClientDeleted,
    ConsentApproved,
    ConsentDenied,
    SignInCompleted,
    GrantIssued,
    /// A rotated refresh token was presented again: the family and its grant are revoked (OAuth 2.1 §4.3.1).
    RefreshReuseDetected,
    /// A redeemed authorization code was presented again: its grant is revoked (RFC 6749 §4.1.2).
    CodeReplayDetected,
    TokenRevoked,
    /// The IdP refused to refresh the upstream token: the grant is ended.
    UpstreamGrantEnded,
    AdminAction,
    /// A local login with a wrong username or password (the username as typed is the subject).
    LoginFailed,
    /// A local login refused because the username is locked out after repeated failures.
    LoginLockedOut,
}

/// One audit entry, built at the call site: `Entry::new(Event::GrantIssued).client(id).subject(sub)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub event: Option<Event>,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub client_name: Option<String>,
    pub detail: Option<String>,
}

impl Entry {
    pub fn new(event: Event) -> Self {
        Self { event: Some(event), ..Self::default() }
    }
    pub fn client(mut self, client_id: &str) -> Self {
        self.client_id = Some(client_id.to_owned());
        self
    }
    pub fn subject(mut self, subject: &str) -> Self {
        self.subject = Some(subject.to_owned());
        self
    }
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn name(mut self, client_name: Option<&str>) -> Self {
        self.client_name = client_name.map(str::to_owned);
        self
    }
}

/// Writes an entry to the trail of the request being served (a no-op outside one, as in unit tests): for rules
/// that have no application state at hand.
pub fn emit(entry: Entry) {
    let _ = REQUEST.try_with(|c| c.audit.emit(&entry));
}

/// The request being served: set by the router around each request (and by the admin listener).
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The trail [`emit`] writes to.
    pub audit: std::sync::Arc<Audit>,
    pub request_id: u64,
    pub peer: std::net::SocketAddr,
    /// The last `X-Forwarded-For` value, kept only behind a TLS terminator (read only when a line is written).
    pub forwarded_for: Option<http::HeaderValue>,
}

impl RequestContext {
    /// The source address: the right-most `X-Forwarded-For` entry behind a TLS terminator (the one the terminator
    /// added; at most 64 characters, control characters replaced), else the TCP peer's address.
    pub fn source(&self) -> String {
        let forwarded = self.forwarded_for.as_ref().map(|v| {
            let text = String::from_utf8_lossy(v.as_bytes());
            let last = text.rsplit(',').next().unwrap_or_default().trim();
            last.chars().take(64).map(|c| if c.is_control() { '?' } else { c }).collect::<String>()
        });
        forwarded.filter(|f| !f.is_empty()).unwrap_or_else(|| self.peer.ip().to_string())
    }
}

tokio::task_local! {
    /// The request the current task serves.
    pub static REQUEST: RequestContext;
}

/// The line as written.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    event: Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// The JSON line of an entry at `time`, with the current request's context when there is one.
pub fn line(entry: &Entry, time: std::time::SystemTime) -> Option<String> {
    let event = entry.event?;
    let context = REQUEST.try_with(Clone::clone).ok();
    let line = Line {
        time: humantime::format_rfc3339_seconds(time).to_string(),
        event,
        subject: entry.subject.as_deref(),
        client_id: entry.client_id.as_deref(),
        client_name: entry.client_name.as_deref(),
        source: context.as_ref().map(RequestContext::source),
        request_id: context.as_ref().map(|c| c.request_id).filter(|id| *id != 0),
        detail: entry.detail.as_deref(),
    };
    serde_json::to_string(&line).ok()
}

/// Why the audit trail could not start.
#[derive(Debug, thiserror::Error)]
#[error("audit.path {path}: {error}")]
pub struct AuditOpenError {
    pub path: String,
    pub error: std::io::Error,
}

/// The audit trail's sending side: cheap, never blocks.
#[derive(Debug, Default)]
pub struct Audit {
    tx: Option<mpsc::Sender<String>>,
    dropped: AtomicU64,
}

impl Audit {
    /// No audit trail (`[audit]` without `path`).
    pub fn off() -> Self {
        Self::default()
    }

    /// Opens the sink and starts the writer task on the current tokio runtime; `queue` lines may wait for it.
    /// Outside a runtime the trail is off (with a warning): nothing could write it.
    pub fn start(sink: &AuditSink, queue: usize) -> Result<Self, AuditOpenError> {
        let mut out: Box<dyn std::io::Write + Send> = match sink {
            AuditSink::Stdout => Box::new(std::io::stdout()),
            AuditSink::Stderr => Box::new(std::io::stderr()),
            AuditSink::File(path) => {
                let mut options = std::fs::OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let file =
                    options.open(path).map_err(|error| AuditOpenError { path: path.display().to_string(), error })?;
                Box::new(file)
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("audit trail off: no runtime to write it");
            return Ok(Self::off());
        };
        let (tx, mut rx) = mpsc::channel::<String>(queue.max(1));
        // The writes are blocking (a file or a standard stream): they run on the blocking pool, one batch at a
        // time, never on a request task.
        runtime.spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 256).await > 0 {
                let lines = std::mem::take(&mut batch);
                let result = tokio::task::spawn_blocking(move || {
                    for l in &lines {
                        writeln!(out, "{l}")?;
                    }
                    out.flush().map(|()| out)
                })
                .await;
                match result {
                    Ok(Ok(o)) => out = o,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "audit trail write failed; audit stopped");
                        return;
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Self { tx: Some(tx), dropped: AtomicU64::new(0) })
    }

    /// Queues an entry; when the queue is full the entry is dropped and counted, never waited for.
    pub fn emit(&self, entry: &Entry) {
        let Some(tx) = &self.tx else { return };
        let Some(line) = line(entry, std::time::SystemTime::now()) else { return };
        if tx.try_send(line).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Logged at 1, 2, 4, 8, … drops, so that a flood does not flood the log too.
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, event = ?entry.event, "audit queue full; audit entries dropped");
            }
        }
    }

    /// Entries dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_the_event_the_ids_and_the_request_context_and_no_empty_fields() {
        let entry = Entry::new(Event::GrantIssued).client("c1").subject("alice");
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
        let without = line(&entry, at).unwrap();
        assert_eq!(
            without,
            r#"{"time":"1970-01-02T00:00:00Z","event":"grant_issued","subject":"alice","client_id":"c1"}"#
        );
        let forwarded_for = Some(http::HeaderValue::from_static("203.0.113.9, 192.0.2.1"));
        let context = RequestContext {
            audit: Default::default(),
            request_id: 7,
            peer: "127.0.0.1:9".parse().unwrap(),
            forwarded_for,
        };
        let with = REQUEST.sync_scope(context, || line(&entry, at)).unwrap();
        assert!(with.ends_with(r#""source":"192.0.2.1","request_id":7}"#), "{with}");
        assert_eq!(line(&Entry::default(), at), None);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tx, _rx) = mpsc::channel(1);
        let audit = Audit { tx: Some(tx), dropped: AtomicU64::new(0) };
        for _ in 0..3 {
            audit.emit(&Entry::new(Event::AdminAction));
        }
        assert_eq!(audit.dropped(), 2);
    }
}
