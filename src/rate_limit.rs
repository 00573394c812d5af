//! Per-source rate limits of the public OAuth endpoints: a token bucket per (route class, source address).
//!
//! Invariants: memory is bounded — at most [`MAX_SOURCES`] addresses are tracked; sources beyond that share one
//! overflow bucket per route class, so a flood from many addresses is still limited as a whole. Full (idle)
//! buckets are dropped by [`RateLimiter::sweep`]. No lock is held across an `.await`.
//!
//! The source is the TCP peer, or, behind a TLS terminator, the right-most `X-Forwarded-For` entry (the address
//! the terminator itself saw).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::LimitsConfig;

/// Addresses tracked at most.
pub const MAX_SOURCES: usize = 100_000;

/// The endpoints that share a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// `/register`.
    Register,
    /// `/token`, `/revoke`, `/introspect`.
    Token,
    /// `/authorize`, `/consent`, `/login`.
    Authorize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The limiter; cheap to share.
pub struct RateLimiter {
    buckets: DashMap<(RouteClass, IpAddr), Bucket>,
    per_minute: [u32; 3],
}

/// The unspecified address stands for "every source beyond MAX_SOURCES".
const OVERFLOW: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

impl RateLimiter {
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            buckets: DashMap::new(),
            per_minute: [limits.register_per_minute, limits.token_per_minute, limits.authorize_per_minute],
        }
    }

    fn capacity(&self, class: RouteClass) -> f64 {
        f64::from(match class {
            RouteClass::Register => self.per_minute[0],
            RouteClass::Token => self.per_minute[1],
            RouteClass::Authorize => self.per_minute[2],
        })
    }

    /// Takes one request from the source's bucket; `Err(retry_after)` when it is empty.
    pub fn check(&self, class: RouteClass, source: IpAddr, now: Instant) -> Result<(), Duration> {
        let capacity = self.capacity(class);
        let per_second = capacity / 60.0;
        let key = if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&(class, source)) {
            (class, OVERFLOW)
        } else {
            (class, source)
        };
        let mut bucket = self.buckets.entry(key).or_insert(Bucket { tokens: capacity, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / per_second;
            Err(Duration::from_secs_f64(wait.ceil().max(1.0)))
        }
    }

    /// Drops buckets that have refilled completely.
    pub fn sweep(&self, now: Instant) {
        self.buckets.retain(|(class, _), b| {
            let capacity = self.capacity(*class);
            b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * capacity / 60.0 < capacity
        });
    }

    pub fn tracked_sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(n: u32) -> LimitsConfig {
        LimitsConfig {
            register_per_minute: n,
            token_per_minute: n,
            authorize_per_minute: n,
            max_pending: 10,
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            max_connections: None,
            max_connections_per_source: 1,
        }
    }

    #[test]
    fn bucket_empties_then_refills_with_time() {
        let rl = RateLimiter::new(&limits(3));
        let ip: IpAddr = "10.1.2.3".parse().unwrap_or(OVERFLOW);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check(RouteClass::Register, ip, t0).is_ok());
        }
        let retry = rl.check(RouteClass::Register, ip, t0).err();
        assert_eq!(retry, Some(Duration::from_secs(20)));
        // Other classes and other sources are independent.
        assert!(rl.check(RouteClass::Token, ip, t0).is_ok());
        assert!(rl.check(RouteClass::Register, "10.9.9.9".parse().unwrap_or(OVERFLOW), t0).is_ok());
        assert!(rl.check(RouteClass::Register, ip, t0 + Duration::from_secs(20)).is_ok());
    }

    #[test]
    fn refilled_buckets_are_swept() {
        let rl = RateLimiter::new(&limits(60));
        let t0 = Instant::now();
        let _ = rl.check(RouteClass::Token, OVERFLOW, t0);
        rl.sweep(t0);
        assert_eq!(rl.tracked_sources(), 1);
        rl.sweep(t0 + Duration::from_secs(2));
        assert_eq!(rl.tracked_sources(), 0);
    }
}
