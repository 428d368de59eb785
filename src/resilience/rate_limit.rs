//! Per-route rate limits: a GCRA token bucket per key (`governor`), keyed by client IP
//! or a header. Buckets live in a registry that outlives reloads, so a reload that does
//! not change a route's limit does not hand every client a fresh burst. Idle keys are
//! evicted every few seconds: memory follows the number of *recently active* keys.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::HeaderMap;

use crate::config::model::{RateLimit, RateLimitKey};

type Keyed =
    RateLimiter<String, DashMapStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// The limiter of one route.
pub struct RouteLimiter {
    pub spec: RateLimit,
    limiter: Keyed,
    clock: DefaultClock,
}

impl std::fmt::Debug for RouteLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimiter")
            .field("spec", &self.spec)
            .finish()
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted, with this many requests left in the burst.
    Allowed { remaining: u32 },
    /// Refused; the next request from this key is admitted after this long.
    Limited { retry_after: Duration },
}

impl RouteLimiter {
    fn new(spec: RateLimit) -> Self {
        let per_second = NonZeroU32::new(spec.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(spec.burst).unwrap_or(per_second);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        RouteLimiter {
            limiter: RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>(),
            clock: DefaultClock::default(),
            spec,
        }
    }

    /// The bucket key of a request; `claims` are the verified token's, if any. Built
    /// with pushes, not `format!` (its machinery was about 300 instructions per request
    /// in `POLICIES=1 benches/e2e/instructions.sh`).
    pub fn key(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        claims: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> String {
        let (prefix, text) = match &self.spec.key {
            RateLimitKey::ClientIp => ("ip:", None),
            RateLimitKey::JwtSub => match claims.and_then(|c| c.get("sub")?.as_str()) {
                Some(sub) => ("sub:", Some(sub)),
                None => ("ip:", None),
            },
            RateLimitKey::Header(h) => match headers.get(h).and_then(|v| v.to_str().ok()) {
                Some(v) => ("h:", Some(v)),
                None => ("ip:", None),
            },
        };
        // 39 bytes: the longest IPv6 text.
        let mut key = String::with_capacity(prefix.len() + text.map_or(39, str::len));
        key.push_str(prefix);
        match text {
            Some(t) => key.push_str(t),
            None => crate::http::headers::push_ip(&mut key, peer),
        }
        key
    }

    /// Take one token from `key`'s bucket. The key is taken by value: the bucket map
    /// looks up by `&String`, and a `&str` would cost a copy per request.
    pub fn check(&self, key: String) -> Decision {
        match self.limiter.check_key(&key) {
            Ok(state) => Decision::Allowed {
                remaining: state.remaining_burst_capacity(),
            },
            Err(not_until) => Decision::Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// Number of keys currently tracked.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }

    fn evict_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// Hands out limiters, reusing the live one for an unchanged (route, spec).
#[derive(Debug, Default)]
pub struct Registry {
    live: Mutex<HashMap<(String, RateLimit), Weak<RouteLimiter>>>,
}

impl Registry {
    /// Called while building a snapshot, never per request.
    pub fn get(&self, route: &str, spec: &RateLimit) -> Arc<RouteLimiter> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let key = (route.to_string(), spec.clone());
        if let Some(l) = live.get(&key).and_then(Weak::upgrade) {
            return l;
        }
        let l = Arc::new(RouteLimiter::new(spec.clone()));
        live.retain(|_, w| w.strong_count() > 0);
        live.insert(key, Arc::downgrade(&l));
        spawn_eviction(&l);
        l
    }
}

/// Every few seconds, forget keys whose buckets are full again; stops with the limiter.
fn spawn_eviction(l: &Arc<RouteLimiter>) {
    let weak = Arc::downgrade(l);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(l) = weak.upgrade() else { return };
            l.evict_idle();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> RouteLimiter {
        RouteLimiter::new(RateLimit {
            per_second,
            burst,
            key: RateLimitKey::ClientIp,
        })
    }

    #[test]
    fn the_burst_is_admitted_then_refused_with_a_retry_time() {
        let l = limiter(1, 3);
        for left in [2, 1, 0] {
            assert_eq!(l.check("a".into()), Decision::Allowed { remaining: left });
        }
        let Decision::Limited { retry_after } = l.check("a".into()) else {
            panic!("admitted past the burst")
        };
        assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
        // Another key has its own bucket.
        assert_eq!(l.check("b".into()), Decision::Allowed { remaining: 2 });
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    #[test]
    fn idle_keys_are_forgotten_so_memory_follows_active_keys() {
        // 1,000,000 distinct keys, one request each; once their buckets have refilled
        // (1 ms at 1,000/s), eviction leaves nothing behind.
        let l = limiter(1000, 1);
        let before = rss_kib();
        for i in 0..1_000_000u32 {
            l.check(format!("ip:{i}"));
        }
        assert_eq!(l.keys(), 1_000_000);
        // The stated bound: a million live keys cost under 256 MiB (measured: about
        // 100 MiB, ~100 bytes per key). Other tests share the process, so the bound is
        // generous.
        let grown_mib = rss_kib().saturating_sub(before) / 1024;
        eprintln!("1,000,000 keys: RSS grew by {grown_mib} MiB");
        assert!(grown_mib < 256, "RSS grew by {grown_mib} MiB");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while l.keys() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} keys never evicted",
                l.keys()
            );
            std::thread::yield_now();
            l.evict_idle();
        }
    }

    #[test]
    fn header_keys_fall_back_to_the_client_ip() {
        let l = RouteLimiter::new(RateLimit {
            per_second: 1,
            burst: 1,
            key: RateLimitKey::Header(http::HeaderName::from_static("x-api-key")),
        });
        let mut h = HeaderMap::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(l.key(ip, &h, None), "ip:192.0.2.1");
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(l.key(v6, &h, None), "ip:2001:db8::7");
        h.insert("x-api-key", http::HeaderValue::from_static("k1"));
        assert_eq!(l.key(ip, &h, None), "h:k1");
    }

    #[test]
    fn jwt_sub_keys_fall_back_to_the_client_ip() {
        let l = RouteLimiter::new(RateLimit {
            per_second: 1,
            burst: 1,
            key: RateLimitKey::JwtSub,
        });
        let h = HeaderMap::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(l.key(ip, &h, None), "ip:192.0.2.1");
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "alice".into());
        assert_eq!(l.key(ip, &h, Some(&claims)), "sub:alice");
    }
}
