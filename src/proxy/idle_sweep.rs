//! The one idle sweeper of the upstream pools ([`super::pool`], [`super::raw_pool`]): a task per pool, started with
//! its first idle connection, that asks the pool every half idle timeout to drop what expired, closed or spoke out
//! of turn, and ends with the pool (it holds only a weak reference).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// A pool the sweeper can ask to drop its stale idle connections.
pub trait Sweep: Send + Sync + 'static {
    fn sweep(&self);
}

/// Starts `pool`'s sweeper unless `started` says it runs already (outside a runtime: not at all).
pub fn start<P: Sweep>(pool: &Arc<P>, started: &AtomicBool, idle_timeout: Duration) {
    if !started.swap(true, Ordering::AcqRel) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(run(Arc::downgrade(pool), idle_timeout));
        }
    }
}

/// Every half idle timeout until the pool is gone.
async fn run<P: Sweep>(pool: Weak<P>, idle_timeout: Duration) {
    let mut tick = tokio::time::interval((idle_timeout / 2).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}
