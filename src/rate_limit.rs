//! Per-source rate limits of the public OAuth endpoints: a token bucket per (route class, source address).
//!
//! Invariants: memory is bounded — at most [`MAX_SOURCES`] addresses are tracked; sources beyond that share one
//! overflow bucket per route class, so a flood from many addresses is still limited as a whole. Full (idle)
//! buckets are dropped by [`RateLimiter::sweep`]. No lock is held across an `.await`.
//!
//! The source is the TCP peer, or, behind a TLS terminator, the right-most `X-Forwarded-For` entry (the address
//! the terminator itself saw), in any of the forms terminators send: `ip`, `ip:port` (Azure Application
//! Gateway), `[v6]` or `[v6]:port`. An IPv6 source counts by its /64, since one host usually owns a whole /64.
//! An entry that is no address is logged and counted by its own value, never merged with every other client
//! into the terminator's bucket.

use std::hash::BuildHasher as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;
use std::time::Instant;

use dashmap::DashMap;
use http::HeaderMap;

use crate::config::LimitsConfig;
use crate::endpoint::LimitClass;

/// Addresses tracked at most.
pub const MAX_SOURCES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Who a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address, or an IPv6 address with its last 64 bits zeroed (IPv4-mapped addresses count as IPv4).
    Ip(IpAddr),
    /// A forwarded value that is no address, by a keyed hash of its text.
    Unparsed(u64),
    /// Every source beyond [`MAX_SOURCES`].
    Overflow,
}

impl Source {
    pub fn of_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::Ip(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::Ip(IpAddr::V4(v4)),
                None => Self::Ip(IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX)))),
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(ip)) => write!(f, "{ip}/64"),
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Unparsed(h) => write!(f, "unparsed:{h:016x}"),
            Self::Overflow => f.write_str("overflow"),
        }
    }
}

/// Reads one `X-Forwarded-For` entry: `ip`, `ip:port`, `[v6]` or `[v6]:port`.
pub fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    entry.strip_prefix('[')?.strip_suffix(']')?.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The source a request counts against: the TCP peer, or behind a TLS terminator the right-most
/// `X-Forwarded-For` entry (entries left of it are client-controlled).
pub fn source_of(headers: &HeaderMap, peer: SocketAddr, behind_tls_terminator: bool) -> Source {
    static KEYS: LazyLock<std::collections::hash_map::RandomState> = LazyLock::new(Default::default);
    if behind_tls_terminator {
        let last =
            headers.get_all("x-forwarded-for").iter().next_back().map(|v| {
                String::from_utf8_lossy(v.as_bytes()).rsplit(',').next().unwrap_or_default().trim().to_owned()
            });
        match last.as_deref() {
            None | Some("") => {}
            Some(entry) => match parse_forwarded_address(entry) {
                Some(ip) => return Source::of_ip(ip),
                None => {
                    let shown: String = entry.chars().take(64).collect();
                    tracing::warn!(entry = ?shown, "X-Forwarded-For entry is not an address; counted on its own");
                    return Source::Unparsed(KEYS.hash_one(entry));
                }
            },
        }
    }
    Source::of_ip(peer.ip())
}

/// A request's standing under its endpoint's limit, advertised with the RateLimit header fields
/// (draft-ietf-httpapi-ratelimit-headers-10 §2, §3): the policy `"token";q=60;w=60` (requests per 60 s window for
/// the class of endpoints) and the service limit `"token";r=59;t=1` (whole requests left to this source, seconds
/// until the next one comes back). The partition (the source address) is not named: `pk` would echo the client's
/// address, and each client knows its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub class: LimitClass,
    /// Requests per minute for the class (`limits.*_per_minute`).
    pub quota: u32,
    /// Whole requests left now.
    pub remaining: u32,
    /// Seconds until one more request is available (0: the bucket is full); on a refusal, the `Retry-After`.
    pub reset_secs: u64,
}

impl Standing {
    /// A refusal by the count across replicas (the shared store): nothing left for `wait_secs`.
    pub fn exhausted(class: LimitClass, quota: u32, wait_secs: u64) -> Self {
        Self { class, quota, remaining: 0, reset_secs: wait_secs }
    }

    /// Sets `RateLimit-Policy` and `RateLimit` on an answer.
    pub fn write(&self, headers: &mut http::HeaderMap) {
        let name = self.class.name();
        let policy = format!("\"{name}\";q={};w=60", self.quota);
        let limit = format!("\"{name}\";r={};t={}", self.remaining, self.reset_secs);
        for (field, value) in [("ratelimit-policy", policy), ("ratelimit", limit)] {
            if let Ok(value) = http::HeaderValue::try_from(value) {
                headers.insert(http::HeaderName::from_static(field), value);
            }
        }
    }
}

/// The limiter; cheap to share.
pub struct RateLimiter {
    buckets: DashMap<(LimitClass, Source), Bucket>,
    per_minute: [u32; 3],
}

impl RateLimiter {
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            buckets: DashMap::new(),
            per_minute: [limits.register_per_minute, limits.token_per_minute, limits.authorize_per_minute],
        }
    }

    fn capacity(&self, class: LimitClass) -> f64 {
        f64::from(match class {
            LimitClass::Register => self.per_minute[0],
            LimitClass::Token => self.per_minute[1],
            LimitClass::Authorize => self.per_minute[2],
        })
    }

    /// The configured requests per minute of `class` (the shared store counts them across replicas too).
    pub fn per_minute(&self, class: LimitClass) -> u32 {
        match class {
            LimitClass::Register => self.per_minute[0],
            LimitClass::Token => self.per_minute[1],
            LimitClass::Authorize => self.per_minute[2],
        }
    }

    /// Takes one request from the source's bucket: what is left of it, or `Err` when it is empty (with the
    /// seconds until the next request, the `Retry-After`).
    pub fn check(&self, class: LimitClass, source: Source, now: Instant) -> Result<Standing, Standing> {
        let capacity = self.capacity(class);
        let per_second = capacity / 60.0;
        let key = if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&(class, source)) {
            (class, Source::Overflow)
        } else {
            (class, source)
        };
        let mut bucket = self.buckets.entry(key).or_insert(Bucket { tokens: capacity, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        let quota = self.per_minute(class);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            let remaining = bucket.tokens.floor();
            // Seconds until the next whole request is back (none while the bucket is full).
            let reset = match bucket.tokens < capacity {
                true => ((remaining + 1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64,
                false => 0,
            };
            Ok(Standing { class, quota, remaining: remaining as u32, reset_secs: reset })
        } else {
            let wait = ((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64;
            Err(Standing { class, quota, remaining: 0, reset_secs: wait })
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
    use std::time::Duration;

    fn limits(n: u32) -> LimitsConfig {
        LimitsConfig {
            register_per_minute: n,
            token_per_minute: n,
            authorize_per_minute: n,
            max_pending: 10,
            header_timeout: Duration::from_secs(1),
            max_state_bytes: 1024,
            password_checks: 1,
            password_check_wait: Duration::from_secs(1),
            login_failures: 5,
            login_lockout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            max_connections: None,
            max_connections_per_source: Some(1),
        }
    }

    #[test]
    fn bucket_empties_then_refills_with_time() {
        let rl = RateLimiter::new(&limits(3));
        let ip = Source::Ip([10, 1, 2, 3].into());
        let t0 = Instant::now();
        // 3 a minute: one back every 20 s; what is left counts down, the next one is 20 s away.
        for left in [2, 1, 0] {
            let standing = rl.check(LimitClass::Register, ip, t0);
            assert_eq!(standing.map(|s| (s.quota, s.remaining, s.reset_secs)), Ok((3, left, 20)));
        }
        let retry = rl.check(LimitClass::Register, ip, t0).err().map(|s| (s.remaining, s.reset_secs));
        assert_eq!(retry, Some((0, 20)));
        // 30 s later one and a half came back: one is taken, half of the next is there, 10 s to go.
        let later = rl.check(LimitClass::Register, ip, t0 + Duration::from_secs(30));
        assert_eq!(later.map(|s| (s.remaining, s.reset_secs)), Ok((0, 10)));
        // Other classes and other sources are independent.
        assert!(rl.check(LimitClass::Token, ip, t0).is_ok());
        assert!(rl.check(LimitClass::Register, Source::Ip([10, 9, 9, 9].into()), t0).is_ok());
        assert!(rl.check(LimitClass::Register, ip, t0 + Duration::from_secs(50)).is_ok());
    }

    #[test]
    fn the_standing_is_written_as_the_draft_spells_it() {
        let mut headers = HeaderMap::new();
        Standing { class: LimitClass::Token, quota: 60, remaining: 59, reset_secs: 1 }.write(&mut headers);
        assert_eq!(headers["ratelimit-policy"], "\"token\";q=60;w=60");
        assert_eq!(headers["ratelimit"], "\"token\";r=59;t=1");
        // A full bucket: nothing to wait for.
        let rl = RateLimiter::new(&limits(60));
        let fresh = rl.check(LimitClass::Authorize, Source::Overflow, Instant::now());
        assert_eq!(fresh.map(|s| (s.remaining, s.reset_secs)), Ok((59, 1)));
    }

    #[test]
    fn refilled_buckets_are_swept() {
        let rl = RateLimiter::new(&limits(60));
        let t0 = Instant::now();
        let _ = rl.check(LimitClass::Token, Source::Overflow, t0);
        rl.sweep(t0);
        assert_eq!(rl.tracked_sources(), 1);
        rl.sweep(t0 + Duration::from_secs(2));
        assert_eq!(rl.tracked_sources(), 0);
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", http::HeaderValue::from_str(value).unwrap_or(http::HeaderValue::from_static("")));
        h
    }

    #[test]
    fn forwarded_entries_in_every_form_are_read() {
        let peer: SocketAddr = ([10, 0, 0, 1], 443).into();
        let ip = |s: &str| Source::of_ip(s.parse().unwrap_or(IpAddr::V4([0, 0, 0, 0].into())));
        assert_eq!(source_of(&xff("203.0.113.7"), peer, true), ip("203.0.113.7"));
        assert_eq!(source_of(&xff("1.1.1.1, 203.0.113.7:54321"), peer, true), ip("203.0.113.7"));
        assert_eq!(source_of(&xff("[2001:db8::1]:443"), peer, true), ip("2001:db8::"));
        assert_eq!(source_of(&xff("[2001:db8::1]"), peer, true), ip("2001:db8::"));
        assert_eq!(source_of(&xff("2001:db8::1"), peer, true), ip("2001:db8::"));
        assert_eq!(source_of(&xff("::ffff:203.0.113.7"), peer, true), ip("203.0.113.7"));
        // Not behind a terminator: the header is the client's own words.
        assert_eq!(source_of(&xff("203.0.113.7"), peer, false), ip("10.0.0.1"));
    }

    #[test]
    fn ipv6_sources_count_by_their_64() {
        let a = Source::of_ip("2001:db8:1:2:aaaa::1".parse().unwrap_or(IpAddr::V4([0, 0, 0, 0].into())));
        let b = Source::of_ip("2001:db8:1:2:bbbb::9".parse().unwrap_or(IpAddr::V4([0, 0, 0, 0].into())));
        let c = Source::of_ip("2001:db8:1:3::1".parse().unwrap_or(IpAddr::V4([0, 0, 0, 0].into())));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn unparsable_entries_never_share_the_terminators_bucket() {
        let peer: SocketAddr = ([10, 0, 0, 1], 443).into();
        let odd = source_of(&xff("unknown"), peer, true);
        let other = source_of(&xff("_hidden"), peer, true);
        assert!(matches!(odd, Source::Unparsed(_)));
        assert_ne!(odd, other);
        assert_ne!(odd, Source::of_ip(peer.ip()));
        assert_eq!(odd, source_of(&xff("unknown"), peer, true));
    }
}
