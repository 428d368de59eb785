//! The immutable state one request reads: routes, upstreams and settings of one config.
//!
//! Built on the side from a validated config, then swapped in atomically (`ArcSwap`).
//! A request loads the snapshot once at its start and keeps that `Arc` to its end, so it
//! sees one consistent table even while a reload swaps in the next one.

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{Config, Loaded};
use crate::router::Router;
use crate::upstream::{Registry, Upstream};

/// One loaded configuration, ready to serve.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    /// Per service, same index as `config.services`.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Route names as shared strings, for the access log (no copy per request).
    pub route_names: Vec<Arc<str>>,
    /// Hash of the source text.
    pub hash: String,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    /// Build a snapshot, reusing the registry's upstreams for unchanged services.
    pub async fn build(loaded: Loaded, registry: &Registry) -> Snapshot {
        let config = loaded.config;
        let mut upstreams = Vec::with_capacity(config.services.len());
        for s in &config.services {
            upstreams.push(registry.get(s, &config.defaults).await);
        }
        let router = Router::new(&config);
        let route_names = config
            .routes
            .iter()
            .map(|r| Arc::from(r.name.as_str()))
            .collect();
        Snapshot {
            router,
            upstreams,
            route_names,
            hash: loaded.hash,
            loaded_at: SystemTime::now(),
            config,
        }
    }
}
