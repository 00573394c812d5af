//! What the store's operations answer besides their records: [`StoreError`] (the backend did not answer) and
//! [`UpstreamTurn`] (who refreshes a grant's IdP token). A leaf: the memory and Redis arms both name these, and
//! neither imports the other.

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The shared store did not answer (down, unreachable, timed out); the request may be retried.
    #[error("the shared store is unavailable: {0}")]
    Unavailable(String),
}

/// What `Store::begin_upstream_refresh` decided for a grant whose IdP token is due.
pub enum UpstreamTurn {
    /// This replica refreshes; `fence` is the fencing token its write must carry.
    Refresh { fence: u64 },
    /// Another replica refreshed meanwhile; the grant now holds its token.
    Refreshed,
    /// The grant was revoked meanwhile (on any replica).
    Revoked,
}
