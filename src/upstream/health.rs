//! Endpoint health: passive outlier ejection from real traffic, and active health
//! checks. Both only set flags that the picker reads with one atomic load; nothing on
//! the request path waits for them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::config::model::{HealthCheck, Outlier};

/// Shared state of one endpoint address; kept across DNS refreshes while the address
/// stays.
#[derive(Debug)]
pub struct EndpointState {
    /// Failures in a row (passive).
    consecutive: AtomicU32,
    /// Ejected until this many ms after `epoch`; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// How often this endpoint was ejected (the ejection time doubles each time).
    ejections: AtomicU32,
    /// Active health-check verdict (true until a check says otherwise).
    healthy: AtomicBool,
    /// When a failure to connect here was last logged at warn level (ms after
    /// `epoch`, plus one so that 0 means never).
    warned_ms: AtomicU64,
    epoch: Instant,
}

/// A failed connection to one endpoint is logged at warn level at most this often; the
/// rest go to debug (a restarting backend would otherwise flood the log).
pub const CONNECT_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl EndpointState {
    pub fn new(epoch: Instant) -> Self {
        Self {
            consecutive: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            warned_ms: AtomicU64::new(0),
            epoch,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// May requests go here now?
    pub fn available(&self) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether a failed connection here gets a warn line now: true for the first, then
    /// at most once per [`CONNECT_WARN_EVERY`].
    pub fn connect_warn_due(&self) -> bool {
        let now = self.now_ms() + 1;
        let last = self.warned_ms.load(Ordering::Relaxed);
        let every = CONNECT_WARN_EVERY.as_millis() as u64;
        (last == 0 || now >= last + every)
            && self
                .warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Passive outlier detection over one service's endpoints.
#[derive(Debug)]
pub struct OutlierDetector {
    pub policy: Outlier,
}

impl OutlierDetector {
    /// Record one outcome at `state`; `all` are the service's endpoints (to respect
    /// `max_ejection_percent`). Returns true when this call ejected the endpoint.
    pub fn record(&self, state: &EndpointState, success: bool, all: &[Arc<EndpointState>]) -> bool {
        if success {
            state.consecutive.store(0, Ordering::Relaxed);
            return false;
        }
        let n = state.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if n < self.policy.consecutive_failures || state.is_ejected() {
            return false;
        }
        let ejected_now = all.iter().filter(|s| s.is_ejected()).count();
        let max = (all.len() * self.policy.max_ejection_percent as usize / 100)
            .max(usize::from(all.len() > 1));
        if ejected_now >= max {
            return false;
        }
        let times = state.ejections.fetch_add(1, Ordering::AcqRel).min(5);
        let duration = self
            .policy
            .base_ejection
            .saturating_mul(1 << times)
            .min(Duration::from_secs(300));
        state.ejected_until_ms.store(
            state.now_ms() + duration.as_millis() as u64,
            Ordering::Relaxed,
        );
        state.consecutive.store(0, Ordering::Relaxed);
        true
    }
}

/// Run active health checks against the endpoints `targets()` returns, for as long as
/// `owner` lives.
pub fn spawn_health_checks<T: Send + Sync + 'static>(
    owner: Weak<T>,
    check: HealthCheck,
    service: Arc<str>,
    targets: impl Fn(&T) -> Vec<(SocketAddr, Arc<EndpointState>)> + Send + 'static,
) {
    tokio::spawn(async move {
        let mut counts: std::collections::HashMap<SocketAddr, (u32, u32)> = Default::default();
        let mut tick = tokio::time::interval(check.interval);
        loop {
            tick.tick().await;
            let list = match owner.upgrade() {
                Some(o) => targets(&o),
                None => return,
            };
            for (addr, state) in list {
                let ok = probe(addr, &check).await;
                let (good, bad) = counts.entry(addr).or_default();
                if ok {
                    *good += 1;
                    *bad = 0;
                } else {
                    *bad += 1;
                    *good = 0;
                }
                if state.is_healthy() && *bad >= check.unhealthy {
                    state.set_healthy(false);
                    tracing::warn!(service = %service, endpoint = %addr, "health check failing: endpoint out");
                } else if !state.is_healthy() && *good >= check.healthy {
                    state.set_healthy(true);
                    tracing::info!(service = %service, endpoint = %addr, "health check passing: endpoint back");
                }
            }
        }
    });
}

/// One `GET path` with its own short connection; 2xx/3xx within the timeout is healthy.
async fn probe(addr: SocketAddr, check: &HealthCheck) -> bool {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let req = http::Request::get(check.path.as_str())
            .header(http::header::HOST, addr.to_string())
            .header(http::header::USER_AGENT, "switchyard-health-check")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        let resp = send.send_request(req).await.ok()?;
        Some(resp.status().is_success() || resp.status().is_redirection())
    };
    tokio::time::timeout(check.timeout, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_warnings_are_spaced() {
        let s = EndpointState::new(Instant::now());
        assert!(s.connect_warn_due(), "the first failure is logged");
        assert!(!s.connect_warn_due(), "the next, right after, is not");
        assert!(!s.connect_warn_due());
    }

    fn states(n: usize) -> Vec<Arc<EndpointState>> {
        let epoch = Instant::now();
        (0..n)
            .map(|_| Arc::new(EndpointState::new(epoch)))
            .collect()
    }

    fn detector() -> OutlierDetector {
        OutlierDetector {
            policy: Outlier {
                consecutive_failures: 3,
                base_ejection: Duration::from_secs(10),
                max_ejection_percent: 50,
            },
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets() {
        let all = states(4);
        let d = detector();
        assert!(!d.record(&all[0], false, &all));
        assert!(!d.record(&all[0], false, &all));
        assert!(!d.record(&all[0], true, &all));
        assert!(!d.record(&all[0], false, &all));
        assert!(!d.record(&all[0], false, &all));
        assert!(d.record(&all[0], false, &all));
        assert!(!all[0].available());
        assert!(all[1].available());
    }

    #[test]
    fn never_more_than_the_max_percent_but_one_of_two() {
        let all = states(4);
        let d = detector();
        let mut ejected = 0;
        for s in &all {
            for _ in 0..3 {
                if d.record(s, false, &all) {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2, "50% of 4");
        let two = states(2);
        for s in &two {
            for _ in 0..3 {
                d.record(s, false, &two);
            }
        }
        assert_eq!(two.iter().filter(|s| s.is_ejected()).count(), 1);
    }
}
