//! The running gateway's shared state: the current snapshot and the long-lived pieces
//! that outlive reloads. Passed as `Arc<Gateway>` to listeners and the reloader.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::observe::access_log::Sink;
use crate::observe::metrics::Metrics;
use crate::snapshot::{Registry, Snapshot};
use crate::tls::CertStore;

/// Shared state of one gateway process.
#[derive(Debug)]
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    /// Upstreams and rate limiters shared across snapshots (they survive reloads).
    pub registry: Registry,
    /// Access-log destination; `None` when logging to stdout is not wanted (tests of
    /// the library, benchmarks).
    pub access_log: Option<Sink>,
    /// Process-wide metrics, served at the admin API's `/metrics`.
    pub metrics: Metrics,
    /// Certificates of the HTTPS listener (reloaded on their own, see [`crate::tls`]).
    pub certs: Arc<CertStore>,
    /// Set when shutdown starts: `/readyz` answers 503 so load balancers stop sending.
    draining: AtomicBool,
}

impl Gateway {
    pub fn new(snapshot: Snapshot, registry: Registry, access_log: Option<Sink>) -> Self {
        let mut metrics = Metrics::new();
        metrics.register_spans(&registry.spans.counters);
        record_snapshot(&metrics, &snapshot);
        let certs = Arc::new(CertStore::default());
        certs.reload(&snapshot.config.tls);
        metrics.certificates(&certs.table().certs);
        Self {
            certs,
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            access_log,
            metrics,
            draining: AtomicBool::new(false),
        }
    }

    /// Shutdown has started.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The current snapshot; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swap in a new snapshot. Requests that already hold the old one finish on it; it
    /// is freed off the request path ([`crate::background::release`]).
    pub fn store(&self, snapshot: Snapshot) {
        record_snapshot(&self.metrics, &snapshot);
        let old = self.snapshot.swap(Arc::new(snapshot));
        crate::background::release(old);
    }

    /// Read the certificate files again (SIGHUP, a file change, a config reload).
    pub fn reload_certificates(&self) {
        let spec = self.snapshot.load().config.tls.clone();
        self.certs.reload(&spec);
        self.metrics.certificates(&self.certs.table().certs);
    }
}

fn record_snapshot(metrics: &Metrics, snapshot: &Snapshot) {
    let loaded = snapshot
        .loaded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics.config(&snapshot.hash, loaded);
    for up in &snapshot.upstreams {
        metrics.endpoints(&up.name, up.len());
    }
}
