//! A bounded map from document URL to a value with an expiry: the accepted documents, and (separately) the recent
//! failures, so that neither a flood of distinct URLs nor one repeated URL can grow memory or the number of
//! outbound fetches.
//!
//! Invariant: at most `capacity` entries (plus the inserts racing with a full cache, at most one per running
//! fetch). When full, expired entries go first, then the ones closest to expiry.

use dashmap::DashMap;

use crate::clock::UnixTime;

pub struct BoundedCache<T> {
    entries: DashMap<String, (T, UnixTime)>,
    capacity: usize,
}

impl<T: Clone> BoundedCache<T> {
    pub fn new(capacity: usize) -> Self {
        Self { entries: DashMap::new(), capacity }
    }

    /// The value under `key`, unless it expired.
    pub fn get(&self, key: &str, now: UnixTime) -> Option<T> {
        self.entries.get(key).filter(|e| e.1 > now).map(|e| e.0.clone())
    }

    /// The value under `key`, expired or not, unless it expired more than `grace` seconds ago.
    pub fn get_stale(&self, key: &str, now: UnixTime, grace: u64) -> Option<T> {
        self.entries.get(key).filter(|e| e.1.saturating_add(grace) > now).map(|e| e.0.clone())
    }

    pub fn insert(&self, key: &str, value: T, now: UnixTime, expires_at: UnixTime) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(key) {
            self.entries.retain(|_, e| e.1 > now);
            while self.entries.len() >= self.capacity {
                let oldest = self.entries.iter().min_by_key(|e| e.1).map(|e| e.key().clone());
                match oldest {
                    Some(k) => {
                        self.entries.remove(&k);
                    }
                    None => break,
                }
            }
        }
        self.entries.insert(key.to_owned(), (value, expires_at));
    }

    pub fn remove(&self, key: &str) {
        self.entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_size_is_bounded() {
        let c = BoundedCache::new(2);
        c.insert("a", 1, 0, 10);
        assert_eq!(c.get("a", 9), Some(1));
        assert_eq!(c.get("a", 10), None);
        c.insert("b", 2, 0, 20);
        c.insert("c", 3, 0, 30);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("a", 0), None, "the entry closest to expiry went");
        for i in 0..100 {
            c.insert(&format!("k{i}"), i, 0, 40 + i);
        }
        assert_eq!(c.len(), 2);
    }
}
