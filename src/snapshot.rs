//! The immutable state one request reads: routes, upstreams and settings of one config.
//!
//! Built on the side from a validated config, then swapped in atomically (`ArcSwap`).
//! A request loads the snapshot once at its start and keeps that `Arc` to its end, so it
//! sees one consistent table even while a reload swaps in the next one.

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{Config, Loaded};
use crate::observe::otlp::{self, SpanSink};
use crate::resilience::rate_limit::{self, RouteLimiter};
use crate::router::Router;
use crate::upstream::{self, Upstream};

/// State that outlives snapshots: pools and DNS (upstreams), token buckets (limiters).
/// A reload reuses whatever did not change.
#[derive(Debug, Default)]
pub struct Registry {
    pub upstreams: upstream::Registry,
    pub limiters: rate_limit::Registry,
    pub spans: otlp::Registry,
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
    /// Where sampled requests' spans go; `None` when OTLP export is off.
    pub spans: Option<Arc<SpanSink>>,
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
        // Building the matcher for a large table is CPU work: off the runtime's worker
        // threads (a reload must not stall the requests being served).
        let (config, router) = match tokio::task::spawn_blocking(move || {
            let router = Router::new(&config);
            (config, router)
        })
        .await
        {
            Ok(built) => built,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let route_names = config
            .routes
            .iter()
            .map(|r| Arc::from(r.name.as_str()))
            .collect();
        let spans = registry.spans.get(&config.tracing);
        Snapshot {
            router,
            spans,
            upstreams,
            route_names,
            limiters,
            hash: loaded.hash,
            loaded_at: SystemTime::now(),
            config,
        }
    }
}
