//! Accept-error backoff: when `accept(2)` fails for a reason that is not the single connection's fault (no file
//! descriptors left, `EMFILE`/`ENFILE`, no buffer space), the accept loop pauses instead of spinning, each pause
//! twice the last up to [`MAX_PAUSE`], and logs at most one line per [`LOG_EVERY`].
//!
//! Invariants: a successful accept resets the pause; the loop also retries as soon as a connection of ours
//! closes (a descriptor is free again), so the pause bounds the wait only when descriptors are held elsewhere.

use std::time::{Duration, Instant};

/// The first pause after a failed accept.
pub const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between two accept attempts.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Accept failures are logged at most once in this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether an accept error concerns only the connection being accepted (retry at once, nothing to log).
pub fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::Interrupted
    )
}

/// The state of the backoff between accept attempts.
#[derive(Debug)]
pub struct AcceptBackoff {
    next_pause: Duration,
    /// Failures since the last log line.
    unlogged: u64,
    /// Consecutive failures of the current episode.
    failing: u64,
    last_log: Option<Instant>,
}

/// What to do after a failed accept.
#[derive(Debug, PartialEq, Eq)]
pub struct AfterFailure {
    pub pause: Duration,
    /// `Some(failures since the last line)` when this failure is to be logged.
    pub log: Option<u64>,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self { next_pause: FIRST_PAUSE, unlogged: 0, failing: 0, last_log: None }
    }
}

impl AcceptBackoff {
    /// Records a failed accept at `now`.
    pub fn failed(&mut self, now: Instant) -> AfterFailure {
        let pause = self.next_pause;
        self.next_pause = (self.next_pause * 2).min(MAX_PAUSE);
        self.unlogged += 1;
        self.failing += 1;
        let due = self.last_log.is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
        let log = due.then(|| {
            self.last_log = Some(now);
            std::mem::take(&mut self.unlogged)
        });
        AfterFailure { pause, log }
    }

    /// Records a successful accept; returns the length of the failure episode it ends, if any.
    pub fn succeeded(&mut self) -> Option<u64> {
        self.next_pause = FIRST_PAUSE;
        (self.failing > 0).then(|| std::mem::take(&mut self.failing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_reset_after_a_success() {
        let mut b = AcceptBackoff::default();
        let now = Instant::now();
        let pauses: Vec<Duration> = (0..10).map(|_| b.failed(now).pause).collect();
        assert_eq!(pauses[0], FIRST_PAUSE);
        assert_eq!(pauses[1], FIRST_PAUSE * 2);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().unwrap_or(&Duration::ZERO), MAX_PAUSE);
        assert_eq!(b.succeeded(), Some(10));
        assert_eq!(b.succeeded(), None);
        assert_eq!(b.failed(now).pause, FIRST_PAUSE);
    }

    #[test]
    fn failures_are_logged_once_per_interval_with_the_count_in_between() {
        let mut b = AcceptBackoff::default();
        let start = Instant::now();
        assert_eq!(b.failed(start).log, Some(1));
        for i in 1..100 {
            assert_eq!(b.failed(start + Duration::from_millis(i)).log, None);
        }
        assert_eq!(b.failed(start + LOG_EVERY).log, Some(100));
    }

    #[test]
    fn per_connection_errors_are_told_apart() {
        assert!(is_connection_error(&std::io::Error::from(std::io::ErrorKind::ConnectionAborted)));
        assert!(!is_connection_error(&std::io::Error::from_raw_os_error(24)));
    }
}
