//! The built-in login (`idp.kind = "local"`), for development and the embedded default.
//!
//! Users come from `[[idp.users]]` with argon2 PHC password hashes. After consent the browser is sent to
//! `/login?state=…` (the proxy's own IdP state); a correct password completes the authorization like an IdP
//! callback would. The upstream then receives the user's identity in `X-Forwarded-User` / `X-Forwarded-Email`
//! instead of an IdP token. An unknown user costs the same argon2 work as a wrong password.
//!
//! Bounds (issue 10, item 5), so that no number of logins can exhaust memory or the blocking pool:
//! - At most `limits.password_checks` argon2 computations (~19 MiB each) run at once, on a semaphore in front of
//!   a dedicated pool of that many threads (`dcrpw<pool>-<n>`, started on first use; issue 23): the memory each
//!   check allocates is reused by the same few threads, so the process's memory stays near
//!   `password_checks × 19 MiB` whatever the number of logins (on tokio's blocking pool every idle blocking thread
//!   kept its own 19 MiB arena). The permit moves into the job, so a login whose client hangs up still holds it
//!   until its hash is done. A login waits at most `limits.password_check_wait` for a permit, then gets 503.
//! - After `limits.login_failures` failures in a row, a username is locked out for `limits.login_lockout`,
//!   doubling with each further failure (up to 16×); a success clears it. Unknown usernames are counted like known
//!   ones, so lockouts do not reveal which users exist. The failure table holds at most [`MAX_TRACKED_NAMES`]
//!   usernames; beyond it the entry failed least recently is dropped, never a locked-out one while others remain.
//! - Time comes from the proxy's clock (Unix seconds), so lockouts are tested without sleeping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::Argon2;
use http::{Response, StatusCode};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;

use crate::clock::UnixTime;
use crate::config::pages::PagesConfig;
use crate::config::{LimitsConfig, LocalUser};
use crate::crypto::TokenHash;
use crate::http::html::{branded_page, escape};
use crate::http::Body;
use crate::store::Identity;

/// Usernames whose failures are tracked at most.
pub const MAX_TRACKED_NAMES: usize = 10_000;

/// Why a login was not checked.
#[derive(Debug, thiserror::Error)]
pub enum LoginRefusal {
    /// Too many failures in a row for this username (429 with `Retry-After`).
    #[error("username locked out after repeated failures")]
    LockedOut { retry_after_secs: u64 },
    /// Every password check is busy and none freed up in time (503 with `Retry-After`).
    #[error("every password check is busy")]
    Busy,
    #[error("password check task: {0}")]
    Task(String),
}

/// A password check waiting for a thread of the pool.
type CheckJob = Box<dyn FnOnce() + Send>;

/// Numbers the pools of a process, so that their threads' names tell them apart.
static POOLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The threads that run password checks: as many as there are permits, started on first use, named
/// `dcrpw<pool>-<n>` (a Linux thread name has at most 15 bytes).
struct CheckPool {
    id: usize,
    size: usize,
    jobs: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<CheckJob>>>,
}

impl CheckPool {
    fn sender(&self) -> Result<std::sync::mpsc::Sender<CheckJob>, String> {
        if let Some(tx) = self.jobs.get() {
            return tx.lock().map(|tx| tx.clone()).map_err(|e| e.to_string());
        }
        let (tx, rx) = std::sync::mpsc::channel::<CheckJob>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..self.size {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("dcrpw{}-{n}", self.id))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })
                .map_err(|e| e.to_string())?;
        }
        let tx = self.jobs.get_or_init(|| Mutex::new(tx));
        tx.lock().map(|tx| tx.clone()).map_err(|e| e.to_string())
    }
}

/// The configured users and the bounds of their password checks.
pub struct LocalUsers {
    table: Arc<UserTable>,
    pool: Arc<CheckPool>,
    permits: Arc<Semaphore>,
    wait: Duration,
    failures: Arc<FailureLog>,
    running: Arc<CheckGauges>,
}

/// `running`: argon2 computations now; `peak`: the most ever at once (for the metrics endpoint).
#[derive(Default)]
struct CheckGauges {
    running: Gauge,
    peak: Gauge,
}

struct UserTable {
    users: Vec<LocalUser>,
    /// A hash verified against when the user is unknown, so that timing does not reveal usernames.
    decoy_hash: String,
}

impl LocalUsers {
    /// Users with the default bounds (two password checks at once, five failures, five minutes).
    pub fn new(users: &[LocalUser]) -> Self {
        Self::with_bounds(users, 2, Duration::from_secs(2), 5, Duration::from_secs(300))
    }

    /// Users with the bounds of `[limits]`.
    pub fn with_limits(users: &[LocalUser], limits: &LimitsConfig) -> Self {
        Self::with_bounds(
            users,
            limits.password_checks,
            limits.password_check_wait,
            limits.login_failures,
            limits.login_lockout,
        )
    }

    fn with_bounds(users: &[LocalUser], checks: usize, wait: Duration, failures: u32, lockout: Duration) -> Self {
        Self {
            table: Arc::new(UserTable {
                users: users.to_vec(),
                decoy_hash: hash_password("decoy password").unwrap_or_default(),
            }),
            pool: Arc::new(CheckPool {
                id: POOLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                size: checks.max(1),
                jobs: std::sync::OnceLock::new(),
            }),
            permits: Arc::new(Semaphore::new(checks.max(1))),
            wait,
            failures: Arc::new(FailureLog::new(failures, lockout.as_secs().max(1))),
            running: Arc::default(),
        }
    }

    /// The prefix of the names of this pool's threads (`dcrpw<pool>-`).
    pub fn check_thread_prefix(&self) -> String {
        format!("dcrpw{}-", self.pool.id)
    }

    /// The gauges of running password checks and of their peak, for [`crate::metrics::Metrics`].
    pub fn gauges(&self) -> (Gauge, Gauge) {
        (self.running.running.clone(), self.running.peak.clone())
    }

    /// Checks a login on the bounded pool: refused at once for a locked-out username, after
    /// `limits.password_check_wait` when every check stays busy; otherwise the identity, or `None` for a wrong
    /// username or password (which counts toward the lockout).
    pub async fn login(
        &self,
        username: &str,
        password: String,
        now: UnixTime,
    ) -> Result<Option<Identity>, LoginRefusal> {
        let name = TokenHash::of(username);
        // Reserved before the wait for a permit: concurrent guesses count against the lockout as they start.
        let attempt = Attempt::begin(&self.failures, name, now)?;
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| LoginRefusal::Busy)?
            .map_err(|_| LoginRefusal::Busy)?;
        let (table, gauges) = (self.table.clone(), self.running.clone());
        let username = username.to_owned();
        let (done, result) = tokio::sync::oneshot::channel();
        let job: CheckJob = Box::new(move || {
            let _permit = permit;
            let running = gauges.running.inc() + 1;
            gauges.peak.inner().fetch_max(running, std::sync::atomic::Ordering::Relaxed);
            let identity = table.verify(&username, &password);
            gauges.running.dec();
            // Recorded here, not by the request: a client that hangs up after sending still counts.
            attempt.finish(identity.is_some(), now);
            let _ = done.send(identity);
        });
        self.pool.sender().map_err(LoginRefusal::Task)?.send(job).map_err(|e| LoginRefusal::Task(e.to_string()))?;
        result.await.map_err(|e| LoginRefusal::Task(e.to_string()))
    }

    /// Checks a username and password; blocking (argon2) and unbounded: [`LocalUsers::login`] is the bounded way.
    pub fn verify(&self, username: &str, password: &str) -> Option<Identity> {
        self.table.verify(username, password)
    }
}

impl UserTable {
    fn verify(&self, username: &str, password: &str) -> Option<Identity> {
        let user = self.users.iter().find(|u| u.username == username);
        let hash = user.map_or(self.decoy_hash.as_str(), |u| u.password_hash.as_str());
        let ok = PasswordHash::new(hash)
            .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok());
        let user = user.filter(|_| ok)?;
        Some(Identity {
            sub: user.username.clone(),
            name: user.name.clone(),
            email: user.email.clone(),
            preferred_username: Some(user.username.clone()),
            tid: None,
            ..Identity::default()
        })
    }
}

/// Failures in a row per username (by hash), with the lockout they earned.
struct FailureLog {
    entries: Mutex<HashMap<TokenHash, Failures>>,
    threshold: u32,
    lockout_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: UnixTime,
    locked_until: UnixTime,
    /// Attempts started and not finished yet: they count toward the threshold, so that concurrent guesses cannot
    /// all be checked before the first failure is recorded.
    pending: u32,
}

/// One login attempt's place in the [`FailureLog`]; given back when dropped unfinished (the wait for a password
/// check timed out, or the task died).
struct Attempt {
    log: Arc<FailureLog>,
    name: TokenHash,
    finished: bool,
}

impl Attempt {
    fn begin(log: &Arc<FailureLog>, name: TokenHash, now: UnixTime) -> Result<Self, LoginRefusal> {
        log.begin(&name, now)?;
        Ok(Self { log: log.clone(), name, finished: false })
    }

    fn finish(mut self, succeeded: bool, now: UnixTime) {
        self.finished = true;
        self.log.finish(self.name, succeeded, now);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.finished {
            self.log.release(&self.name);
        }
    }
}

impl FailureLog {
    fn new(threshold: u32, lockout_secs: u64) -> Self {
        Self { entries: Mutex::default(), threshold: threshold.max(1), lockout_secs }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<TokenHash, Failures>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts an attempt: `Err` while the username is locked out, or while the attempts already running would
    /// reach the threshold if they fail (retry in a moment).
    fn begin(&self, name: &TokenHash, now: UnixTime) -> Result<(), LoginRefusal> {
        let mut entries = self.entries();
        if let Some(f) = entries.get(name) {
            if f.locked_until > now {
                return Err(LoginRefusal::LockedOut { retry_after_secs: f.locked_until - now });
            }
        }
        if entries.len() >= MAX_TRACKED_NAMES && !entries.contains_key(name) {
            self.make_room(&mut entries, now);
        }
        let f = entries.entry(*name).or_insert(Failures { count: 0, last: now, locked_until: 0, pending: 0 });
        // Below the threshold, running attempts count as if they failed; past a lockout, one attempt at a time.
        let allowed =
            if f.count >= self.threshold { f.pending == 0 } else { f.count.saturating_add(f.pending) < self.threshold };
        if !allowed {
            return Err(LoginRefusal::LockedOut { retry_after_secs: 2 });
        }
        f.pending += 1;
        Ok(())
    }

    /// Ends an attempt: a success clears the username's failures, a failure counts (and may lock it out).
    fn finish(&self, name: TokenHash, succeeded: bool, now: UnixTime) {
        let mut entries = self.entries();
        let f = entries.entry(name).or_insert(Failures { count: 0, last: now, locked_until: 0, pending: 1 });
        f.pending = f.pending.saturating_sub(1);
        if succeeded {
            f.count = 0;
            f.locked_until = 0;
            if f.pending == 0 {
                entries.remove(&name);
            }
            return;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count >= self.threshold {
            let doublings = (f.count - self.threshold).min(4);
            f.locked_until = now + (self.lockout_secs << doublings);
        }
    }

    /// Gives back an attempt that never checked a password.
    fn release(&self, name: &TokenHash) {
        let mut entries = self.entries();
        if let Some(f) = entries.get_mut(name) {
            f.pending = f.pending.saturating_sub(1);
            if f.pending == 0 && f.count == 0 {
                entries.remove(name);
            }
        }
    }

    /// Expired lockouts go first; then the entry that failed least recently (a locked one only if all are).
    fn make_room(&self, entries: &mut HashMap<TokenHash, Failures>, now: UnixTime) {
        let reset_after = self.lockout_secs * 16;
        entries.retain(|_, f| f.pending > 0 || f.locked_until > now || f.last + reset_after > now);
        if entries.len() >= MAX_TRACKED_NAMES {
            let victim = entries.iter().min_by_key(|(_, f)| (f.locked_until > now, f.last)).map(|(k, _)| *k);
            if let Some(victim) = victim {
                entries.remove(&victim);
            }
        }
    }
}

/// An argon2id PHC hash of `password` with a random salt.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    crate::crypto::fill_random(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// The login form again, 503 with `Retry-After`, when every password check stayed busy: the user tries again.
pub fn busy_page(pages: &PagesConfig, state: &str, retry_after_secs: u64) -> Response<Body> {
    let mut resp = login_page(pages, state, Some("The sign-in service is busy. Wait a moment and sign in again."));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(retry_after_secs.max(1)));
    resp
}

/// The login form; `error` is shown above it after a failed attempt. It names the resource and the service
/// (`[pages]`) and says that this login (users from the config file) is for development.
pub fn login_page(pages: &PagesConfig, state: &str, error: Option<&str>) -> Response<Body> {
    let error_html = error
        .map(|e| format!("<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>", escape(e)))
        .unwrap_or_default();
    let described = if error.is_some() { " aria-describedby=\"login-error\"" } else { "" };
    let body = format!(
        "<h1>Sign in to {resource}</h1>\
         <p><strong>{product}</strong> checks who you are before an application may act for you.</p>\
         <p class=\"notice\" role=\"note\">This is the local development login of {product}: its users are listed \
         in the proxy's configuration file. Production deployments sign in with the organisation's identity \
         provider.</p>\
         {error_html}<form method=\"post\" action=\"/login\" aria-label=\"Sign in\">\
         <input type=\"hidden\" name=\"state\" value=\"{state}\">\
         <label for=\"username\">Username</label>\
         <input id=\"username\" name=\"username\" autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\" required autofocus{described}>\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required{described}>\
         <div class=\"actions\"><button class=\"primary\" type=\"submit\">Sign in</button></div></form>",
        product = escape(&pages.product_name),
        resource = escape(&pages.resource_name),
        state = escape(state)
    );
    let status = if error.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    branded_page(status, "Sign in", pages.brand(), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_verifies_only_for_its_user() {
        let hash = hash_password("s3cret").unwrap_or_default();
        let users = LocalUsers::new(&[LocalUser {
            username: "alice".into(),
            password_hash: hash,
            email: Some("alice@example.com".into()),
            name: None,
        }]);
        assert_eq!(users.verify("alice", "s3cret").map(|i| i.sub), Some("alice".to_owned()));
        assert!(users.verify("alice", "wrong").is_none());
        assert!(users.verify("bob", "s3cret").is_none());
    }

    fn fail(log: &FailureLog, name: TokenHash, now: UnixTime) {
        assert!(log.begin(&name, now).is_ok());
        log.finish(name, false, now);
    }

    /// Whether an attempt may start now (given back at once).
    fn may_try(log: &FailureLog, name: TokenHash, now: UnixTime) -> Result<(), LoginRefusal> {
        log.begin(&name, now)?;
        log.release(&name);
        Ok(())
    }

    #[test]
    fn failures_in_a_row_lock_a_username_out_with_a_growing_window() {
        let log = FailureLog::new(3, 60);
        let name = TokenHash::of("alice");
        for _ in 0..2 {
            fail(&log, name, 1000);
        }
        assert!(may_try(&log, name, 1000).is_ok());
        fail(&log, name, 1000);
        assert!(matches!(may_try(&log, name, 1000), Err(LoginRefusal::LockedOut { retry_after_secs: 60 })));
        assert!(may_try(&log, TokenHash::of("bob"), 1000).is_ok(), "other names are not affected");
        assert!(may_try(&log, name, 1060).is_ok(), "the window passes");
        fail(&log, name, 1060);
        assert!(matches!(may_try(&log, name, 1060), Err(LoginRefusal::LockedOut { retry_after_secs: 120 })));
        assert!(log.begin(&name, 1200).is_ok());
        log.finish(name, true, 1200);
        assert!(may_try(&log, name, 1200).is_ok());
        assert!(log.entries().is_empty(), "a success forgets the name");
    }

    #[test]
    fn concurrent_attempts_count_toward_the_threshold_as_they_start() {
        let log = FailureLog::new(3, 60);
        let name = TokenHash::of("alice");
        fail(&log, name, 1000);
        assert!(log.begin(&name, 1000).is_ok());
        assert!(log.begin(&name, 1000).is_ok());
        assert!(log.begin(&name, 1000).is_err(), "1 failure + 2 running reach the threshold");
        log.release(&name);
        assert!(log.begin(&name, 1000).is_ok(), "an attempt given back frees its place");
    }

    #[test]
    fn the_failure_table_stays_bounded_and_keeps_lockouts() {
        let log = FailureLog::new(2, 60);
        let locked = TokenHash::of("alice");
        fail(&log, locked, 1000);
        fail(&log, locked, 1000);
        for i in 0..MAX_TRACKED_NAMES + 10 {
            fail(&log, TokenHash::of(&format!("user{i}")), 1001);
        }
        assert!(log.entries().len() <= MAX_TRACKED_NAMES);
        assert!(may_try(&log, locked, 1001).is_err(), "a locked-out name is not pushed out by a flood of names");
    }
}
