//! The running gateway's shared state: the current snapshot and the long-lived pieces
//! that outlive reloads. Passed as `Arc<Gateway>` to listeners and the reloader.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::observe::access_log::Sink;
use crate::snapshot::Snapshot;
use crate::upstream::Registry;

/// Shared state of one gateway process.
#[derive(Debug)]
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    /// Upstreams shared across snapshots (pools survive reloads).
    pub registry: Registry,
    /// Access-log destination; `None` when logging to stdout is not wanted (tests of
    /// the library, benchmarks).
    pub access_log: Option<Sink>,
}

impl Gateway {
    pub fn new(snapshot: Snapshot, registry: Registry, access_log: Option<Sink>) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            access_log,
        }
    }

    /// The current snapshot; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swap in a new snapshot. Requests that already hold the old one finish on it.
    pub fn store(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }
}
