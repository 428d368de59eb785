//! Weighted splits: sticky buckets, cohorts, the force header and the canary guard.
//!
//! A sticky key is hashed with a fixed, version-independent function (FNV-1a folded
//! through a 64-bit finaliser) into a bucket `0..10000`. The canary holds the buckets
//! below `weight * 100`, so raising the weight only moves keys *into* the canary and
//! lowering it only moves keys out: no reshuffle. A route-local key is salted with the
//! route name (independent routes); a cohort key is not (one user, one bucket,
//! everywhere).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderMap;

use super::{Claims, GlobalPolicy, RoutePolicy, Sticky};
use crate::config::model::Forward;

/// Buckets of the consistent split: a weight of 1 % is 100 buckets.
pub const BUCKETS: u32 = 10_000;

/// `canary = {…}` of a route: indexes into `Forward::backends`.
#[derive(Debug, Clone)]
pub struct Canary {
    pub canary: usize,
    pub main: usize,
    pub guard: Option<Guard>,
}

/// `guard = { max_error_ratio, min_requests, window }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    /// Trip when the canary's 5xx rate exceeds main's by this factor.
    pub max_error_ratio: f64,
    /// Canary requests in the window before the guard judges.
    pub min_requests: u32,
    pub window: Duration,
}

/// The stable hash of a sticky key. `salt` is the route name, or empty for cohorts.
pub fn hash(salt: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes().chain(std::iter::once(0xff)).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // murmur3's fmix64: spreads FNV's weak low bits over the whole word.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The bucket `0..BUCKETS` of a key.
pub fn bucket(salt: &str, key: &str) -> u32 {
    (hash(salt, key) % u64::from(BUCKETS)) as u32
}

/// Why a backend was chosen, for the access log and `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Weighted random (no sticky key configured, or the request has none).
    Random,
    /// Sticky key hashed into a bucket.
    Sticky,
    /// Cohort key hashed into a bucket.
    Cohort,
    /// The force header said `always` or `never`.
    Forced,
    /// The guard cut the canary to 0.
    Guarded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Random => "random",
            Reason::Sticky => "sticky",
            Reason::Cohort => "cohort",
            Reason::Forced => "forced",
            Reason::Guarded => "guard-tripped",
        }
    }
}

/// The outcome of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Index into `Forward::backends`.
    pub backend: usize,
    /// The key's bucket, when there was a key.
    pub bucket: Option<u32>,
    pub reason: Reason,
}

/// The user key of a cohort: the verified `sub`, else the configured header/cookie.
fn cohort_key<'a>(
    global: &GlobalPolicy,
    headers: &'a HeaderMap,
    claims: Option<&'a Claims>,
) -> Option<&'a str> {
    if let Some(sub) = claims.and_then(|c| c.get("sub")).and_then(|v| v.as_str()) {
        return Some(sub);
    }
    global.cohort_key.as_ref()?.get(headers)
}

/// Pick the backend of a route with a policy. `tripped`: the route's guard has cut the
/// canary. `None` when every weight is 0.
pub fn choose(
    fwd: &Forward,
    policy: &RoutePolicy,
    global: &GlobalPolicy,
    headers: &HeaderMap,
    claims: Option<&Claims>,
    tripped: bool,
) -> Option<Choice> {
    if let Some(c) = &policy.canary {
        if tripped {
            return Some(Choice {
                backend: c.main,
                bucket: None,
                reason: Reason::Guarded,
            });
        }
        if let Some(force) = global
            .force_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
        {
            let side = match force.trim() {
                f if f.eq_ignore_ascii_case("always") => Some(c.canary),
                f if f.eq_ignore_ascii_case("never") => Some(c.main),
                _ => None,
            };
            if let Some(backend) = side {
                return Some(Choice {
                    backend,
                    bucket: None,
                    reason: Reason::Forced,
                });
            }
        }
    }
    if fwd.total_weight == 0 {
        return None;
    }
    let keyed = match &policy.sticky {
        Some(Sticky::Key(src)) => src
            .get(headers)
            .map(|k| (bucket(&policy.salt, k), Reason::Sticky)),
        Some(Sticky::Cohort) => {
            cohort_key(global, headers, claims).map(|k| (bucket("", k), Reason::Cohort))
        }
        None => None,
    };
    let (pos, bucket, reason) = match keyed {
        Some((b, reason)) => (
            u64::from(b) * fwd.total_weight / u64::from(BUCKETS),
            Some(b),
            reason,
        ),
        None => (fastrand::u64(..fwd.total_weight), None, Reason::Random),
    };
    let main = policy.canary.as_ref().map_or(0, |c| c.main);
    let backend = position(fwd, main, pos)?;
    Some(Choice {
        backend,
        bucket,
        reason,
    })
}

/// The index in `Forward::backends` of the route's main backend: the canary's main,
/// else the first one listed (`service = …`, or the head of a `split`).
pub fn main_backend(fwd: &Forward) -> usize {
    fwd.policy
        .as_ref()
        .and_then(|p| p.canary.as_ref())
        .map_or(0, |c| c.main)
}

/// The backend whose cumulative weight range holds `pos`. The ranges are laid out
/// with every other backend first, in the listed order, and main last: a canary and
/// the non-main backends of a split both hold the *low* buckets, so one cohort bucket
/// means the same side on every route, and raising a backend's weight only moves keys
/// into it from the backends after it (main last).
fn position(fwd: &Forward, main: usize, mut pos: u64) -> Option<usize> {
    let order = (0..fwd.backends.len())
        .filter(|i| *i != main)
        .chain(std::iter::once(main));
    for i in order {
        let w = u64::from(fwd.backends.get(i)?.weight);
        if pos < w {
            return Some(i);
        }
        pos -= w;
    }
    None
}

// === impl GuardState ===

const SLOTS: u64 = 10;

/// One tenth of the window: counts stamped with the slot's epoch number.
#[derive(Debug, Default)]
struct Slot {
    epoch: AtomicU64,
    canary: AtomicU32,
    canary_5xx: AtomicU32,
    main: AtomicU32,
    main_5xx: AtomicU32,
}

/// The sliding window of one guarded route; lives in the snapshot, so a reload resets
/// it (and un-trips the canary).
#[derive(Debug)]
pub struct GuardState {
    pub spec: Guard,
    slots: [Slot; SLOTS as usize],
    start: Instant,
    tripped: AtomicBool,
}

/// Totals over the window: (canary, canary 5xx, main, main 5xx).
pub type Totals = (u32, u32, u32, u32);

impl GuardState {
    pub fn new(spec: Guard) -> Self {
        Self {
            spec,
            slots: Default::default(),
            start: Instant::now(),
            tripped: AtomicBool::new(false),
        }
    }

    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    fn slot_len(&self) -> Duration {
        (self.spec.window / SLOTS as u32).max(Duration::from_millis(1))
    }

    /// Epoch numbers start at 1 so that a fresh slot (epoch 0) is never current.
    fn epoch(&self) -> u64 {
        (self.start.elapsed().as_nanos() / self.slot_len().as_nanos()) as u64 + 1
    }

    /// Count one answer. Returns true when this answer tripped the guard.
    pub fn record(&self, canary: bool, server_error: bool) -> bool {
        if self.tripped() {
            return false;
        }
        let now = self.epoch();
        let slot = &self.slots[(now % SLOTS) as usize];
        let seen = slot.epoch.load(Ordering::Acquire);
        if seen != now
            && slot
                .epoch
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // A racing request may land a count in the old slot's numbers: noise of one.
            for c in [&slot.canary, &slot.canary_5xx, &slot.main, &slot.main_5xx] {
                c.store(0, Ordering::Relaxed);
            }
        }
        let (total, errors) = if canary {
            (&slot.canary, &slot.canary_5xx)
        } else {
            (&slot.main, &slot.main_5xx)
        };
        total.fetch_add(1, Ordering::Relaxed);
        if server_error {
            errors.fetch_add(1, Ordering::Relaxed);
        }
        if !canary || !server_error {
            return false;
        }
        let t = self.totals_at(now);
        if should_trip(&self.spec, t) {
            return !self.tripped.swap(true, Ordering::AcqRel);
        }
        false
    }

    /// The counts of the current window.
    pub fn totals(&self) -> Totals {
        self.totals_at(self.epoch())
    }

    fn totals_at(&self, now: u64) -> Totals {
        let mut t = (0, 0, 0, 0);
        for s in &self.slots {
            let e = s.epoch.load(Ordering::Acquire);
            if e + SLOTS > now && e <= now {
                t.0 += s.canary.load(Ordering::Relaxed);
                t.1 += s.canary_5xx.load(Ordering::Relaxed);
                t.2 += s.main.load(Ordering::Relaxed);
                t.3 += s.main_5xx.load(Ordering::Relaxed);
            }
        }
        t
    }
}

/// Main's error rate is taken as at least 1 %: one stray 5xx of a canary next to a
/// spotless main must not cut it.
pub const MAIN_RATE_FLOOR: f64 = 0.01;

fn should_trip(g: &Guard, (canary, canary_5xx, main, main_5xx): Totals) -> bool {
    if canary < g.min_requests || canary == 0 {
        return false;
    }
    let canary_rate = f64::from(canary_5xx) / f64::from(canary);
    let main_rate = if main == 0 {
        0.0
    } else {
        f64::from(main_5xx) / f64::from(main)
    };
    canary_rate > g.max_error_ratio * main_rate.max(MAIN_RATE_FLOOR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{Backend, PathRewrite};
    use crate::policy::KeySource;

    fn canary_route(weight_pct: f64, sticky: Sticky) -> (Forward, RoutePolicy) {
        let w = (weight_pct * 100.0).round() as u32;
        let fwd = Forward {
            backends: vec![
                Backend {
                    service: 1,
                    weight: w,
                },
                Backend {
                    service: 0,
                    weight: BUCKETS - w,
                },
            ],
            total_weight: u64::from(BUCKETS),
            path: PathRewrite::Keep,
            host: None,
            timeout: None,
            max_body: None,
            rate_limit: None,
            policy: None,
        };
        let policy = RoutePolicy {
            sticky: Some(sticky),
            canary: Some(Canary {
                canary: 0,
                main: 1,
                guard: None,
            }),
            mirror: None,
            salt: "users".into(),
        };
        (fwd, policy)
    }

    fn user(id: u32) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", id.to_string().parse().unwrap());
        h
    }

    fn pick(f: &Forward, p: &RoutePolicy, g: &GlobalPolicy, id: u32) -> usize {
        choose(f, p, g, &user(id), None, false).unwrap().backend
    }

    /// 20,000 random ids at weight 5: share within 5 % ± 0.6 %; the same id always lands
    /// on the same side; 5 -> 10 moves ids only into the canary.
    #[test]
    fn sticky_canary_share_stability_and_monotonic_growth() {
        let sticky = Sticky::Key(KeySource::Header("x-user-id".parse().unwrap()));
        let (f5, p5) = canary_route(5.0, sticky.clone());
        let (f10, p10) = canary_route(10.0, sticky);
        let g = GlobalPolicy::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let ids: Vec<u32> = (0..20_000).map(|_| rng.u32(..)).collect();
        let mut in5 = 0;
        let mut in10 = 0;
        for &id in &ids {
            let a = pick(&f5, &p5, &g, id);
            for _ in 0..3 {
                assert_eq!(pick(&f5, &p5, &g, id), a, "id {id} moved");
            }
            let b = pick(&f10, &p10, &g, id);
            if a == 0 {
                in5 += 1;
                assert_eq!(b, 0, "id {id} left the canary when the weight grew");
            }
            if b == 0 {
                in10 += 1;
            }
        }
        let share5 = f64::from(in5) / ids.len() as f64 * 100.0;
        let share10 = f64::from(in10) / ids.len() as f64 * 100.0;
        eprintln!("20,000 ids: {share5:.2}% at weight 5, {share10:.2}% at weight 10");
        assert!(
            (share5 - 5.0).abs() <= 0.6,
            "share at weight 5: {share5:.2}%"
        );
        assert!(
            (share10 - 10.0).abs() <= 0.8,
            "share at weight 10: {share10:.2}%"
        );
    }

    #[test]
    fn cohort_is_the_same_bucket_on_every_route() {
        let (f5, mut p5) = canary_route(5.0, Sticky::Cohort);
        let (f10, mut p10) = canary_route(10.0, Sticky::Cohort);
        p5.salt = "users".into();
        p10.salt = "orders".into();
        let g = GlobalPolicy {
            cohort_key: Some(KeySource::Header("x-user-id".parse().unwrap())),
            ..Default::default()
        };
        for id in 0..5_000 {
            if pick(&f5, &p5, &g, id) == 0 {
                assert_eq!(pick(&f10, &p10, &g, id), 0, "id {id}");
            }
        }
        // The verified subject wins over the header.
        let mut claims = Claims::new();
        claims.insert("sub".into(), "alice".into());
        let c = choose(&f5, &p5, &g, &user(1), Some(&claims), false).unwrap();
        assert_eq!(c.bucket, Some(bucket("", "alice")));
    }

    /// A sticky `split` of three: the same key always gets the same backend, and
    /// every backend gets about its share.
    #[test]
    fn sticky_split_follows_the_weights() {
        let (mut f, mut p) = canary_route(5.0, Sticky::Key(KeySource::Cookie("uid".into())));
        f.backends = [(0, 50), (1, 30), (2, 20)]
            .into_iter()
            .map(|(service, weight)| Backend { service, weight })
            .collect();
        f.total_weight = 100;
        p.canary = None;
        let g = GlobalPolicy::default();
        let mut counts = [0u32; 3];
        for id in 0..10_000 {
            let mut h = HeaderMap::new();
            h.insert("cookie", format!("a=b; uid={id}").parse().unwrap());
            let first = choose(&f, &p, &g, &h, None, false).unwrap();
            assert_eq!(choose(&f, &p, &g, &h, None, false).unwrap(), first);
            counts[first.backend] += 1;
        }
        for (got, want) in counts.iter().zip([5000, 3000, 2000]) {
            assert!((*got as i32 - want).abs() < 250, "{counts:?}");
        }
    }

    /// A sticky split's non-main backends hold the low buckets, like a canary: the
    /// same cohort bucket picks `b` of `[a 90, b 10]` exactly when it picks the canary
    /// of a 10 % canary route, and raising `b` to 20 only moves keys into `b`.
    #[test]
    fn split_canaries_hold_the_low_buckets_like_a_canary() {
        let (canary, p_canary) = canary_route(10.0, Sticky::Cohort);
        let split = |b: u32| {
            let (mut f, mut p) = canary_route(0.0, Sticky::Cohort);
            f.backends = vec![
                Backend {
                    service: 0,
                    weight: 100 - b,
                },
                Backend {
                    service: 1,
                    weight: b,
                },
            ];
            f.total_weight = 100;
            p.canary = None;
            (f, p)
        };
        let (s10, p10) = split(10);
        let (s20, p20) = split(20);
        let g = GlobalPolicy {
            cohort_key: Some(KeySource::Header("x-user-id".parse().unwrap())),
            ..Default::default()
        };
        for id in 0..5_000 {
            let in_canary = pick(&canary, &p_canary, &g, id) == 0;
            let in_b10 = pick(&s10, &p10, &g, id) == 1;
            assert_eq!(in_canary, in_b10, "id {id}");
            if in_b10 {
                assert_eq!(pick(&s20, &p20, &g, id), 1, "id {id} left b");
            }
        }
    }

    #[test]
    fn force_header_and_tripped_guard_override_the_bucket() {
        let sticky = Sticky::Key(KeySource::Header("x-user-id".parse().unwrap()));
        let (f, p) = canary_route(0.0, sticky);
        let g = GlobalPolicy {
            force_header: Some("x-canary".parse().unwrap()),
            ..Default::default()
        };
        let mut h = user(1);
        h.insert("x-canary", "always".parse().unwrap());
        let c = choose(&f, &p, &g, &h, None, false).unwrap();
        assert_eq!((c.backend, c.reason), (0, Reason::Forced));
        let c = choose(&f, &p, &g, &h, None, true).unwrap();
        assert_eq!((c.backend, c.reason), (1, Reason::Guarded));
    }

    #[test]
    fn guard_trips_on_a_bad_canary_only_after_min_requests() {
        let g = GuardState::new(Guard {
            max_error_ratio: 2.0,
            min_requests: 20,
            window: Duration::from_secs(60),
        });
        for _ in 0..100 {
            assert!(!g.record(false, false));
        }
        let mut tripped_at = None;
        for i in 0..40 {
            if g.record(true, i % 2 == 0) {
                tripped_at = Some(i);
            }
        }
        assert!(g.tripped());
        assert!(tripped_at.is_some_and(|i| i >= 19), "{tripped_at:?}");
    }

    #[test]
    fn guard_holds_while_the_canary_is_as_good_as_main() {
        let g = GuardState::new(Guard {
            max_error_ratio: 2.0,
            min_requests: 10,
            window: Duration::from_secs(60),
        });
        for i in 0..200 {
            g.record(false, i % 10 == 0);
            g.record(true, i % 10 == 0);
        }
        assert!(!g.tripped());
    }
}
