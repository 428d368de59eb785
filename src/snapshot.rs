//! The immutable state one request reads: routes, upstreams and settings of one config.
//!
//! Built on the side from a validated config, then swapped in atomically (`ArcSwap`).
//! A request loads the snapshot once at its start and keeps that `Arc` to its end, so it
//! sees one consistent table even while a reload swaps in the next one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;
use tokio::sync::Semaphore;

use crate::auth::{self, Auth};
use crate::config::model::{Endpoint, Service};
use crate::config::{Config, Loaded};
use crate::observe::metrics::RouteSeries;
use crate::observe::otlp::{self, SpanSink};
use crate::policy::branch::BranchCache;
use crate::policy::canary::GuardState;
use crate::policy::mirror::MismatchLog;
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
    /// The last mirror mismatches, kept across reloads for the admin API.
    pub mismatches: Arc<MismatchLog>,
    /// JWKS caches of URL key sources.
    pub auth: auth::Registry,
    /// Mirror slots by route: shadow requests still in flight from before a reload keep
    /// counting against the route's `max_in_flight`.
    pub mirror_slots: MirrorSlots,
}

/// Hands out each route's mirror semaphore, reusing the live one for an unchanged
/// (route, `max_in_flight`): frequent reloads do not raise the real limit.
#[derive(Debug, Default)]
pub struct MirrorSlots {
    live: std::sync::Mutex<HashMap<(String, usize), std::sync::Weak<Semaphore>>>,
}

impl MirrorSlots {
    /// Called while building a snapshot, never per request.
    pub fn get(&self, route: &str, max_in_flight: usize) -> Arc<Semaphore> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let key = (route.to_string(), max_in_flight);
        if let Some(s) = live.get(&key).and_then(std::sync::Weak::upgrade) {
            return s;
        }
        let s = Arc::new(Semaphore::new(max_in_flight));
        live.retain(|_, w| w.strong_count() > 0);
        live.insert(key, Arc::downgrade(&s));
        s
    }
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
    /// Per route, its request metrics' handles (resolved on first use).
    pub route_series: Vec<RouteSeries>,
    /// Per route (same index as `config.routes`), its rate limiter.
    pub limiters: Vec<Option<Arc<RouteLimiter>>>,
    /// Where sampled requests' spans go; `None` when OTLP export is off.
    pub spans: Option<Arc<SpanSink>>,
    /// Per route, the canary guard's window (fresh on every load: a reload un-trips it).
    pub guards: Vec<Option<Box<GuardState>>>,
    /// Per route, the slots for detached mirror requests (from the registry: they
    /// outlive reloads).
    pub mirror_slots: Vec<Option<Arc<Semaphore>>>,
    /// Per service (same index as `config.services`), its explicit branch deployments.
    pub branch_upstreams: Vec<HashMap<String, Arc<Upstream>>>,
    /// Template branch lookups (short TTL, negative answers too).
    pub branch_cache: BranchCache,
    /// Per service, its name and `NAME@main` as response-header values (built once,
    /// not per response); `None` for a name that is not a valid header value.
    pub service_values: Vec<Option<(HeaderValue, HeaderValue)>>,
    pub mismatches: Arc<MismatchLog>,
    /// Auth policies with their keys, the identity headers to strip, the minter.
    pub auth: Auth,
    /// Hash of the source text (and of the key files it names; [`Loaded::hash`]).
    pub hash: String,
    /// Whether the table depends on files besides the text ([`Loaded::names_files`]).
    pub names_files: bool,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    /// Build a snapshot, reusing the registry's upstreams for unchanged services.
    pub async fn build(loaded: Loaded, registry: &Registry) -> Snapshot {
        let config = loaded.config;
        registry.upstreams.set_dns(&config.dns_servers);
        let mut upstreams = Vec::with_capacity(config.services.len());
        for s in &config.services {
            upstreams.push(registry.upstreams.get(s, &config.defaults).await);
        }
        let mut branch_upstreams = Vec::with_capacity(config.services.len());
        for s in &config.services {
            let mut m = HashMap::new();
            for (name, endpoints) in &s.branches {
                let svc = branch_service(s, name, endpoints.clone());
                m.insert(
                    name.clone(),
                    registry.upstreams.get(&svc, &config.defaults).await,
                );
            }
            branch_upstreams.push(m);
        }
        let auth = Auth::build(&config, &registry.auth).await;
        // Everything done per route (the matcher, names and metric handles, guard
        // windows, ~1,300 instructions and several allocations per route) runs off the
        // runtime's worker threads, so a reload does not stall the requests being served:
        // with one worker, every request in flight waited for it (`perf` under the
        // reload10k benchmark: about 1.8 ms in one stretch per reload of 10,000 routes,
        // when the per-route vectors were built here). The worker only fills in the few
        // routes that take shared state from the registry (rate limiters, mirror slots).
        let service_names: Vec<Arc<str>> = upstreams.iter().map(|u| u.name.clone()).collect();
        let built =
            match crate::background::low_priority(move || PerRoute::new(config, &service_names))
                .await
            {
                Ok(built) => built,
                // Only a panic in PerRoute::new (a bug) ends up here: it goes on up.
                Err(e) => panic!("building the per-route state: {e}"),
            };
        let PerRoute {
            config,
            router,
            route_names,
            route_series,
            guards,
            mut limiters,
            mut mirror_slots,
            shared,
        } = built;
        for i in shared {
            let (Some(route), Some(limiter), Some(slot)) = (
                config.routes.get(i),
                limiters.get_mut(i),
                mirror_slots.get_mut(i),
            ) else {
                continue;
            };
            let Some(fwd) = route.forward() else { continue };
            if let Some(spec) = &fwd.rate_limit {
                *limiter = Some(registry.limiters.get(&route.name, spec));
            }
            if let Some(m) = fwd.policy.as_deref().and_then(|p| p.mirror.as_ref()) {
                *slot = Some(registry.mirror_slots.get(&route.name, m.max_in_flight));
            }
        }
        let spans = registry.spans.get(&config.tracing);
        let service_values = config
            .services
            .iter()
            .map(|s| {
                let name = HeaderValue::from_str(&s.name).ok()?;
                let main = HeaderValue::from_str(&format!("{}@main", s.name)).ok()?;
                Some((name, main))
            })
            .collect();
        Snapshot {
            router,
            spans,
            upstreams,
            route_names,
            route_series,
            limiters,
            guards,
            mirror_slots,
            branch_upstreams,
            branch_cache: BranchCache::default(),
            service_values,
            mismatches: registry.mismatches.clone(),
            auth,
            hash: loaded.hash,
            names_files: loaded.names_files,
            loaded_at: SystemTime::now(),
            config,
        }
    }
}

/// What a snapshot holds per route, built on a background thread.
struct PerRoute {
    config: Config,
    router: Router,
    route_names: Vec<Arc<str>>,
    route_series: Vec<RouteSeries>,
    guards: Vec<Option<Box<GuardState>>>,
    /// All `None` here: the worker fills in the routes listed in `shared`.
    limiters: Vec<Option<Arc<RouteLimiter>>>,
    mirror_slots: Vec<Option<Arc<Semaphore>>>,
    /// The routes with a rate limit or a mirror (state shared across snapshots).
    shared: Vec<usize>,
}

impl PerRoute {
    fn new(config: Config, service_names: &[Arc<str>]) -> Self {
        let router = Router::new(&config);
        let (route_names, route_series) = route_handles(&config, service_names);
        let policies = config.routes.iter().map(|r| r.forward()?.policy.as_deref());
        let guards = policies
            .clone()
            .map(|p| {
                let g = p?.canary.as_ref()?.guard.clone()?;
                Some(Box::new(GuardState::new(g)))
            })
            .collect();
        let shared = config
            .routes
            .iter()
            .zip(policies)
            .enumerate()
            .filter(|(_, (r, p))| {
                let limited = r.forward().is_some_and(|f| f.rate_limit.is_some());
                limited || p.is_some_and(|p| p.mirror.is_some())
            })
            .map(|(i, _)| i)
            .collect();
        let n = config.routes.len();
        Self {
            router,
            route_names,
            route_series,
            guards,
            limiters: std::iter::repeat_with(|| None).take(n).collect(),
            mirror_slots: std::iter::repeat_with(|| None).take(n).collect(),
            shared,
            config,
        }
    }
}

/// Per route, its name as a shared string and its request metrics' handles
/// (`service_names`: per service, its upstream's name).
fn route_handles(config: &Config, service_names: &[Arc<str>]) -> (Vec<Arc<str>>, Vec<RouteSeries>) {
    let route_names: Vec<Arc<str>> = config
        .routes
        .iter()
        .map(|r| Arc::from(r.name.as_str()))
        .collect();
    let route_series = config
        .routes
        .iter()
        .zip(&route_names)
        .map(|(r, name)| {
            let services = r
                .forward()
                .into_iter()
                .flat_map(|f| &f.backends)
                .filter_map(|b| service_names.get(b.service))
                .cloned();
            RouteSeries::new(Some(name.clone()), services)
        })
        .collect();
    (route_names, route_series)
}

/// The service of one branch deployment: the main service's settings with the branch's
/// endpoints, named `service@branch` (logs, metrics, `served-by`).
pub fn branch_service(main: &Service, branch: &str, endpoints: Vec<Endpoint>) -> Service {
    Service {
        name: format!("{}@{branch}", main.name),
        endpoints,
        branches: Vec::new(),
        branch_endpoint: None,
        health_check: None,
        ..main.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_slots_outlive_a_reload_of_the_same_route() {
        let r = MirrorSlots::default();
        let a = r.get("users", 2);
        let _held = a.clone().try_acquire_owned().unwrap();
        let b = r.get("users", 2);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(b.available_permits(), 1);
        assert!(!Arc::ptr_eq(&a, &r.get("users", 3)));
        assert!(!Arc::ptr_eq(&a, &r.get("orders", 2)));
    }
}
