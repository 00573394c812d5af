//! What the shared store counts for itself: the gauges of `/metrics` ([`RedisStore::stats`]) and room for one more
//! registration under `registration.max_clients` ([`RedisStore::make_room`]), the way the memory store does
//! (`MemoryStore::make_room_for_client`).
//!
//! Invariants:
//! - Counting is cheap: at most one replica per `store.redis_stats_interval` walks the keys (`SCAN` on every master,
//!   claimed with `SET NX EX` on `dcrp:stats:lock`) and leaves the counts in `dcrp:stats`; the others read them.
//!   A replica counts only when its stats are read (a metrics scrape), and never on a request's path: the gauges
//!   lag by at most one interval, and read zero until the first count is in.
//! - Eviction keeps the memory store's rules: only registrations never used are evicted (a client that completed
//!   an authorization left the `dcrp:registrations` set and has no expiry), oldest first, never one whose sign-in
//!   started within the sign-in lifetime (`dcrp:signing:{c:<id>}`), in batches of 1% of the cap. Each eviction is
//!   one script on the client's own hash slot, so two replicas evicting at once cannot remove a client that just
//!   became used. Unlike the memory store it does not rank by source (registrations carry none in Redis).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::*;

/// The counts all replicas share, and the claim of the replica taking them.
const STATS: &str = "dcrp:stats";
const STATS_LOCK: &str = "dcrp:stats:lock";

/// Removes a registered client if it is still unused (it has an expiry) and no sign-in of it is in progress.
/// 1: removed, 2: already gone, 3: used (no expiry), 0: signing in.
const EVICT_UNUSED: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local t = redis.call('TTL', KEYS[1])
if t == -2 then return 2 end
if t == -1 then return 3 end
redis.call('DEL', KEYS[1])
return 1
";

pub(super) fn signing_key(client_id: &str) -> String {
    format!("dcrp:signing:{{c:{client_id}}}")
}

/// This replica's last counts and when they were taken.
#[derive(Default)]
pub(super) struct Counts {
    last: Mutex<(StoreStats, Option<Instant>)>,
    running: AtomicBool,
}

/// Adds one key to the counts it belongs to (by its prefix; see the key list in `store::redis`).
fn classify(stats: &mut StoreStats, key: &str) {
    let Some(rest) = key.strip_prefix("dcrp:") else { return };
    let kind = rest.split(':').next().unwrap_or("");
    match kind {
        "client" => stats.clients += 1,
        "used" => stats.used_sign_ins += 1,
        "code" => stats.codes += 1,
        "grant" => stats.grants += 1,
        "at" => stats.access_tokens += 1,
        "rf" => {
            // The current token of each family (a rotated one is inside the family's record, not counted).
            stats.refresh_families += 1;
            stats.refresh_tokens += 1;
        }
        _ => {}
    }
}

fn stats_text(s: &StoreStats) -> String {
    [s.clients, s.used_sign_ins, s.codes, s.grants, s.access_tokens, s.refresh_tokens, s.refresh_families]
        .map(|n| n.to_string())
        .join(",")
}

fn stats_from(text: &str) -> Option<StoreStats> {
    let n: Vec<usize> = text.split(',').map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let [clients, used_sign_ins, codes, grants, access_tokens, refresh_tokens, refresh_families] = n[..] else {
        return None;
    };
    Some(StoreStats { clients, used_sign_ins, codes, grants, access_tokens, refresh_tokens, refresh_families })
}

impl RedisStore {
    /// The store's counts as last taken (metrics); starts a new count in the background when they are older than
    /// `store.redis_stats_interval`. Never waits for Redis.
    pub fn stats(&self) -> StoreStats {
        let counts = &self.inner.counts;
        let (stats, stale) = match counts.last.lock() {
            Ok(last) => (last.0, last.1.is_none_or(|at| at.elapsed() >= self.inner.stats_interval)),
            Err(_) => (StoreStats::default(), false),
        };
        if stale && !counts.running.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let store = self.clone();
                    runtime.spawn(async move {
                        let counted = store.count().await;
                        let counts = &store.inner.counts;
                        match counted {
                            Ok(stats) => {
                                if let Ok(mut last) = counts.last.lock() {
                                    *last = (stats, Some(Instant::now()));
                                }
                            }
                            Err(e) => tracing::debug!(error = %e, "counting the shared store failed"),
                        }
                        counts.running.store(false, Ordering::Release);
                    });
                }
                Err(_) => counts.running.store(false, Ordering::Release),
            }
        }
        stats
    }

    /// Takes the counts (when no other replica did within the interval) or reads the last ones taken.
    async fn count(&self) -> Result<StoreStats, StoreError> {
        let mut conn = self.conn();
        let interval = self.inner.stats_interval.as_secs().max(1);
        let claimed: Option<String> = ::redis::cmd("SET")
            .arg(STATS_LOCK)
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(interval)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if claimed.is_none() {
            let shared: Option<String> =
                ::redis::cmd("GET").arg(STATS).query_async(&mut conn).await.map_err(unavailable)?;
            if let Some(stats) = shared.as_deref().and_then(stats_from) {
                return Ok(stats);
            }
        }
        let mut stats = StoreStats::default();
        self.inner
            .conn
            .scan_each("dcrp:*", |batch| batch.iter().for_each(|k| classify(&mut stats, k)))
            .await
            .map_err(unavailable)?;
        ::redis::cmd("SET")
            .arg(STATS)
            .arg(stats_text(&stats))
            .arg("EX")
            .arg(interval.saturating_mul(3))
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(stats)
    }

    /// Makes room for one more registration under `max_clients` (unused registrations of every replica counted,
    /// those older than `ttl_secs` expired): evicts unused clients oldest first, skipping those signing in. The
    /// number evicted, or `None` when the cap is still reached.
    pub async fn make_room(&self, ttl_secs: u64, max_clients: usize) -> Result<Option<usize>, StoreError> {
        let now = self.inner.clock.now();
        let mut conn = self.conn();
        let count: i64 = ::redis::Script::new(COUNT_REGISTRATIONS)
            .key(REGISTRATIONS)
            .arg(now.saturating_sub(ttl_secs))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count < max_clients {
            return Ok(Some(0));
        }
        let batch = (count + 1 - max_clients).max(max_clients / 100);
        let candidates: Vec<String> = ::redis::cmd("ZRANGE")
            .arg(REGISTRATIONS)
            .arg(0)
            .arg(batch.saturating_mul(2).saturating_add(16))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let (mut evicted, mut left) = (0, 0);
        for id in candidates {
            if evicted >= batch {
                break;
            }
            let outcome: i64 = ::redis::Script::new(EVICT_UNUSED)
                .key(client_key(&id))
                .key(signing_key(&id))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if outcome == 0 {
                continue;
            }
            ::redis::cmd("ZREM")
                .arg(REGISTRATIONS)
                .arg(&id)
                .query_async::<i64>(&mut conn)
                .await
                .map_err(unavailable)?;
            match outcome {
                1 => evicted += 1,
                _ => left += 1,
            }
        }
        Ok((count - evicted - left < max_clients).then_some(evicted))
    }

    /// Records that a sign-in of a registered client started: it is not evicted for `ttl_secs`.
    pub async fn sign_in_started(&self, client_id: &str, ttl_secs: u64) -> Result<(), StoreError> {
        ::redis::cmd("SET")
            .arg(signing_key(client_id))
            .arg(1)
            .arg("EX")
            .arg(ttl_secs.max(1))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_counted_by_their_kind_and_the_counts_travel_as_text() {
        let mut stats = StoreStats::default();
        for key in [
            "dcrp:client:{c:a}",
            "dcrp:cgrants:{c:a}",
            "dcrp:grant:{g:01}",
            "dcrp:grant:{g:02}",
            "dcrp:at:ab",
            "dcrp:rf:cd",
            "dcrp:code:{k:ef}",
            "dcrp:spent:{k:ef}",
            "dcrp:used:12",
            "dcrp:signing:{c:a}",
            "dcrp:stats",
            "other:grant:x",
        ] {
            classify(&mut stats, key);
        }
        let expected = StoreStats {
            clients: 1,
            used_sign_ins: 1,
            codes: 1,
            grants: 2,
            access_tokens: 1,
            refresh_tokens: 1,
            refresh_families: 1,
        };
        assert_eq!(stats_from(&stats_text(&stats)), Some(expected));
        assert_eq!(stats_from("1,2"), None);
        assert_eq!(stats_from("1,2,3,4,5,6,x"), None);
    }

    #[test]
    fn the_signing_mark_shares_the_clients_hash_slot() {
        let tag = |k: &str| k[k.find('{').unwrap_or(0)..=k.find('}').unwrap_or(0)].to_owned();
        assert_eq!(tag(&signing_key("abc")), tag(&client_key("abc")));
    }
}
