//! The immutable state one request reads: routes, upstreams and settings of one config.
//!
//! Built on the side from a validated config, then swapped in atomically (`ArcSwap`).
//! A request loads the snapshot once at its start and keeps that `Arc` to its end, so it
//! sees one consistent table even while a reload swaps in the next one.

use std::sync::Arc;
use std::time::SystemTime;

use crate::auth::{self, Auth};
use crate::config::{Config, Loaded};
use crate::resilience::rate_limit::{self, RouteLimiter};
use crate::router::Router;
use crate::upstream::{self, Upstream};

/// State that outlives snapshots: pools and DNS (upstreams), token buckets (limiters).
/// A reload reuses whatever did not change.
#[derive(Debug, Default)]
pub struct Registry {
    pub upstreams: upstream::Registry,
    pub limiters: rate_limit::Registry,
    /// JWKS caches of URL key sources.
    pub auth: auth::Registry,
}

/// One loaded configuration, ready to serve.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    /// Per service, same index as `config.services`.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Route names as shared strings, for the access log (no copy per request).
    pub route_names: Vec<Arc<str>>,
    /// Per route (same index as `config.routes`), its rate limiter.
    pub limiters: Vec<Option<Arc<RouteLimiter>>>,
    /// Auth policies with their keys, the identity headers to strip, the minter.
    pub auth: Auth,
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
            upstreams.push(registry.upstreams.get(s, &config.defaults).await);
        }
        let limiters = config
            .routes
            .iter()
            .map(|r| {
                let spec = r.forward()?.rate_limit.as_ref()?;
                Some(registry.limiters.get(&r.name, spec))
            })
            .collect();
        let auth = Auth::build(&config, &registry.auth).await;
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
            limiters,
            auth,
            hash: loaded.hash,
            loaded_at: SystemTime::now(),
            config,
        }
    }
}
