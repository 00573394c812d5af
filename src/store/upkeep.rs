//! The store's upkeep: the sweeper and the snapshot writer, background tasks owned by an [`UpkeepGuard`] (as
//! mini-redis's `DbDropGuard` owns its purge task).
//!
//! Invariants:
//! - The tasks live exactly as long as the guard: dropping it (or [`UpkeepGuard::stop`]) aborts them, so that
//!   nothing keeps the store alive or writes it after the server is gone.
//! - Every [`SWEEP_EVERY`] the store drops expired and revoked entries ([`MemoryStore::sweep`]) and clients unused for
//!   `registration.unused_client_ttl` ([`MemoryStore::sweep_unused_clients`]): memory stays bounded.
//! - With `[store.snapshot]`, a snapshot is written every `store.snapshot.interval` (the first one interval after
//!   start) and once more by [`UpkeepGuard::close`], after in-flight requests are done. Writes run on the blocking
//!   pool; a failed write is logged, never fatal.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{snapshot, MemoryStore};
use crate::clock::Clock;
use crate::config::SnapshotConfig;

/// How often expired entries are removed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// What the upkeep tasks work on.
#[derive(Clone)]
pub struct Upkeep {
    pub store: Arc<MemoryStore>,
    pub clock: Clock,
    /// `registration.unused_client_ttl`.
    pub unused_client_ttl: Duration,
    pub snapshot: Option<SnapshotConfig>,
}

/// Owns the sweeper and the snapshot writer; dropping it stops them.
pub struct UpkeepGuard {
    upkeep: Upkeep,
    tasks: Vec<JoinHandle<()>>,
}

impl UpkeepGuard {
    /// Starts the sweeper, which also runs `also_sweep` (state outside the store, such as rate-limit buckets),
    /// and, when snapshots are configured, the snapshot writer. Must be called inside a Tokio runtime.
    pub fn start(upkeep: Upkeep, also_sweep: impl Fn() + Send + 'static) -> Self {
        let mut tasks = vec![tokio::spawn(sweep_every(upkeep.clone(), SWEEP_EVERY, also_sweep))];
        if let Some(config) = &upkeep.snapshot {
            tasks.push(tokio::spawn(write_every(upkeep.clone(), config.interval)));
        }
        Self { upkeep, tasks }
    }

    /// Stops the background tasks (a write in progress is abandoned; the file is replaced atomically, so the last
    /// complete snapshot stays).
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }

    /// Stops the tasks and writes the final snapshot (when configured).
    pub async fn close(mut self) {
        self.stop();
        write_snapshot(&self.upkeep).await;
    }
}

impl Drop for UpkeepGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn sweep_every(upkeep: Upkeep, every: Duration, also_sweep: impl Fn()) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = upkeep.clock.now();
        upkeep.store.sweep(now);
        upkeep.store.sweep_unused_clients(now, upkeep.unused_client_ttl.as_secs());
        also_sweep();
    }
}

async fn write_every(upkeep: Upkeep, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        write_snapshot(&upkeep).await;
    }
}

/// Writes the snapshot off the runtime's worker threads; failures are logged, never fatal.
pub async fn write_snapshot(upkeep: &Upkeep) {
    let Some(config) = upkeep.snapshot.clone() else {
        return;
    };
    let (store, now) = (upkeep.store.clone(), upkeep.clock.now());
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || snapshot::write(&store, now, &config.path, &config.key)).await;
    match result {
        Ok(Ok(bytes)) => tracing::debug!(bytes, millis = started.elapsed().as_millis() as u64, "snapshot written"),
        Ok(Err(e)) => tracing::warn!(error = %e, "snapshot not written"),
        Err(e) => tracing::warn!(error = %e, "snapshot task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::TokenHash;
    use crate::store::{AccessToken, Grant, Identity, UpstreamCredential, UpstreamLogin};

    fn upkeep(store: Arc<MemoryStore>) -> Upkeep {
        Upkeep { store, clock: Clock::default(), unused_client_ttl: Duration::from_secs(3600), snapshot: None }
    }

    #[tokio::test]
    async fn the_sweeper_runs_while_the_guard_lives_and_stops_with_it() {
        let store = Arc::new(MemoryStore::new());
        let login = UpstreamLogin { credential: UpstreamCredential::Local, identity: Identity::default() };
        let grant = Grant::new("c1".into(), vec![], None, login, 1);
        store.add_access_token(TokenHash::of("expired"), AccessToken::new(grant, 2));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let guard = UpkeepGuard::start(upkeep(store.clone()), move || {
            let _ = tx.send(());
        });
        // The first tick is immediate.
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.ok().flatten(), Some(()));
        assert_eq!(store.stats().access_tokens, 0, "the expired token was swept");
        drop(guard);
        // The task is gone: its sender is dropped with it.
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.ok(), Some(None));
    }
}
