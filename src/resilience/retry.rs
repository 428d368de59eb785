//! Retry budget: retries may add at most `budget_percent` on top of the live requests
//! of a service, plus a small floor (10 per second) so a quiet service can still retry.
//! A dead service therefore sees about 1.2x its traffic, never `attempts` x.
//!
//! Token accounting in milli-tokens on atomics (no lock on the request path): every
//! request deposits `budget_percent` x 10 milli-tokens, a retry withdraws 1,000, and
//! the floor refills 10 milli-tokens per millisecond. The balance is capped, so a long
//! quiet spell does not save up a retry storm.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TOKEN: i64 = 1000;
const FLOOR_PER_MS: i64 = 10; // 10 retries per second
const CAP: i64 = 100 * TOKEN;

#[derive(Debug)]
pub struct RetryBudget {
    per_request: i64,
    balance: AtomicI64,
    last_refill_ms: AtomicU64,
    epoch: Instant,
}

impl RetryBudget {
    pub fn new(budget_percent: u32) -> Self {
        Self {
            per_request: i64::from(budget_percent) * 10,
            // Start with one second of the floor, so a service that fails right after
            // start can still be retried.
            balance: AtomicI64::new(FLOOR_PER_MS * 1000),
            last_refill_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A request went out (first tries only).
    pub fn deposit(&self) {
        self.add(self.per_request);
    }

    /// May one more retry go out? Takes a token when it may.
    pub fn try_withdraw(&self) -> bool {
        self.refill();
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= TOKEN).then_some(b - TOKEN)
            })
            .is_ok()
    }

    fn refill(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_refill_ms.swap(now, Ordering::AcqRel);
        let elapsed = now.saturating_sub(last) as i64;
        if elapsed > 0 {
            self.add(elapsed.saturating_mul(FLOOR_PER_MS));
        }
    }

    fn add(&self, n: i64) {
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some((b + n).min(CAP))
            });
    }
}

/// Jittered exponential backoff before try number `attempt` (2 = first retry):
/// base x 2^(attempt-2) x [0.5, 1.5), at most 1 s.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1 << (attempt.saturating_sub(2)).min(10));
    let jitter = 0.5 + fastrand::f64();
    exp.mul_f64(jitter).min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_the_share_of_requests() {
        let b = RetryBudget::new(20);
        // Drain the floor's refill first so only deposits count.
        while b.try_withdraw() {}
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.try_withdraw() {
                retries += 1;
            }
        }
        // 20% of 1000, plus whatever the floor refilled during the loop (microseconds).
        assert!((195..=215).contains(&retries), "{retries}");
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let base = Duration::from_millis(20);
        for _ in 0..100 {
            let d2 = backoff(base, 2);
            assert!(
                d2 >= Duration::from_millis(10) && d2 < Duration::from_millis(30),
                "{d2:?}"
            );
            let d4 = backoff(base, 4);
            assert!(
                d4 >= Duration::from_millis(40) && d4 < Duration::from_millis(120),
                "{d4:?}"
            );
            assert!(backoff(base, 10) <= Duration::from_secs(1));
        }
    }
}
