//! Time as whole Unix seconds, from a clock that tests can move.
//!
//! Every expiry in the store is a Unix timestamp compared with [`Clock::now`]; tests build the server with
//! [`Clock::manual`] and call [`Clock::advance`] instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub type UnixTime = u64;

/// A cheap-to-clone handle to the system clock or to a manual one.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that stands still at `start` until [`Clock::advance`] moves it.
    pub fn manual(start: UnixTime) -> Self {
        Self { manual: Some(Arc::new(AtomicU64::new(start))) }
    }

    /// Now, in Unix seconds.
    pub fn now(&self) -> UnixTime {
        match &self.manual {
            Some(t) => t.load(Ordering::Relaxed),
            None => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        }
    }

    /// Moves a manual clock forward; the system clock ignores it.
    pub fn advance(&self, secs: u64) {
        if let Some(t) = &self.manual {
            t.fetch_add(secs, Ordering::Relaxed);
        }
    }
}
