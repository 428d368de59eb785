//! Upstream services: resolved endpoints, round-robin choice, pooled HTTP client.
//!
//! An [`Upstream`] outlives config reloads when its service did not change: the
//! [`Registry`] hands the same `Arc` to the next snapshot, so keep-alive pools and DNS
//! state survive a reload. A service that changed gets a fresh `Upstream`; the old one is
//! dropped once the last in-flight request that holds the old snapshot finishes, and its
//! DNS task notices (it holds only a `Weak`) and ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::Authority;
use http::uri::Scheme;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::model::{Defaults, Endpoint, Protocol, Service};
use crate::http::headers::GatewayFields;
use crate::proxy::body::UpstreamBody;
use crate::resilience::concurrency::Concurrency;
use crate::resilience::retry::RetryBudget;
use health::{EndpointState, OutlierDetector};

/// The pooled client of an `https` service (HTTP/1.1 over TLS).
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// A service's pooled client. An enum rather than a boxed service, so the common case
/// (`http1`) pays for no indirection. `http1` uses the gateway's own pool
/// ([`pool::H1Pool`]); `h2c` and `h2` use [`h2::H2Pool`], one shared HTTP/2 connection
/// per endpoint that carries every request; `https` is HTTP/1.1 over TLS through
/// hyper-util's pool.
#[derive(Debug, Clone)]
pub enum UpstreamClient {
    H1(H1Pool),
    H2c(H2Pool<HttpConnector>),
    H2(H2Pool<HttpsConnector<HttpConnector>>),
    /// Boxed: hyper-util's client is large, and `https` services are the rare case.
    Tls(Box<HttpsClient>),
}

impl UpstreamClient {
    /// Send one request to `target`. The request's URI is in origin form (path and
    /// query); the legacy clients get the absolute form they route by. `req` is
    /// borrowed: when `last` is false another try may send it again, so a client that
    /// needs its own copy makes one; on the last try it is taken.
    pub async fn request(
        &self,
        target: &Target,
        scheme: &Scheme,
        req: &mut http::Request<UpstreamBody>,
        added: &GatewayFields,
        last: bool,
    ) -> Result<http::Response<PooledBody>, UpstreamError> {
        let legacy = |req: &mut http::Request<UpstreamBody>| {
            let mut req = take_or_copy(req, added, last);
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(scheme.clone());
            parts.authority = Some(target.authority.clone());
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            req
        };
        let sent: ResponseFuture = match self {
            UpstreamClient::H1(pool) => return pool.send(target, req, added, last).await,
            UpstreamClient::H2c(pool) => {
                return pool.send(target, scheme, req, added, last).await;
            }
            // Boxed: with TLS its future is 6.8 KB (rustls' handshake), and unboxed it
            // would size every request's future for all protocols (proxy::serve's was
            // 11.3 KB), which is moved or copied as a whole (hyper's HTTP/2 server
            // boxes one per stream). One allocation per request to TLS HTTP/2 upstreams.
            UpstreamClient::H2(pool) => {
                return Box::pin(pool.send(target, scheme, req, added, last)).await;
            }
            UpstreamClient::Tls(c) => c.request(legacy(req)),
        };
        match sent.await {
            Ok(resp) => Ok(resp.map(PooledBody::from)),
            Err(e) => Err(UpstreamError::Legacy(e)),
        }
    }

    /// The idle timeout of the gateway's own pools (`http1`, `h2c`, `h2`), which the
    /// sweeper enforces; `None` for hyper-util's client, which sweeps its own.
    fn own_pool_idle_timeout(&self) -> Option<Duration> {
        match self {
            UpstreamClient::H1(pool) => Some(pool.idle_timeout),
            UpstreamClient::H2c(pool) => Some(pool.idle_timeout),
            UpstreamClient::H2(pool) => Some(pool.idle_timeout),
            UpstreamClient::Tls(_) => None,
        }
    }
}

/// A request of its own for a client that consumes it, with the gateway's fields in its
/// map: `req` itself on the last try, else a copy (a streamed body cannot be copied and
/// is moved; it is never retried).
pub fn take_or_copy(
    req: &mut http::Request<UpstreamBody>,
    added: &GatewayFields,
    last: bool,
) -> http::Request<UpstreamBody> {
    let mut own = if last {
        std::mem::replace(req, http::Request::new(UpstreamBody::Empty))
    } else {
        let body = match req.body().try_clone() {
            Some(b) => b,
            None => std::mem::replace(req.body_mut(), UpstreamBody::Empty),
        };
        let mut copy = http::Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        copy
    };
    added.insert_into(own.headers_mut());
    own
}

pub mod dns;
pub mod h1;
pub mod h2;
pub mod health;
pub mod pool;
pub mod tls;

use dns::Dns;
use h2::H2Pool;
use pool::{H1Pool, IdleList, PooledBody, UpstreamError};

/// One address to send requests to: shared, so that taking one for a request is one
/// reference-count bump, not one per field (each an atomic read-modify-write: with the
/// fields cloned one by one, a pick and its drop cost six).
#[derive(Debug, Clone)]
pub struct Target(Arc<TargetInner>);

impl std::ops::Deref for Target {
    type Target = TargetInner;
    fn deref(&self) -> &TargetInner {
        &self.0
    }
}

#[derive(Debug)]
pub struct TargetInner {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, parsed once.
    pub authority: Authority,
    /// Health and ejection state, shared across DNS refreshes while the address stays.
    pub state: Arc<EndpointState>,
    /// Idle keep-alive connections (`http1` services), kept like `state`.
    pub idle: Arc<IdleList>,
}

/// A service's endpoints and client.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    targets: ArcSwap<Vec<Target>>,
    next: AtomicUsize,
    pub client: UpstreamClient,
    /// `http` or `https`, for the request URI.
    pub scheme: Scheme,
    /// The wire protocol (an upgrade needs HTTP/1.1).
    pub protocol: Protocol,
    /// `max_in_flight` / `max_pending`, when the service has them.
    pub concurrency: Option<Concurrency>,
    /// How many retries this service may still get.
    pub budget: RetryBudget,
    /// Passive outlier ejection, when on.
    pub outlier: Option<OutlierDetector>,
    epoch: Instant,
}

impl Upstream {
    /// For a retry: an available target other than `avoid` when one exists, chosen at
    /// random without moving the round-robin position (so a failing endpoint does not
    /// end up with every first try).
    pub fn pick_other(&self, avoid: Option<SocketAddr>) -> Option<Target> {
        let Some(avoid) = avoid else {
            return self.pick();
        };
        let targets = self.targets.load();
        let others: Vec<&Target> = targets
            .iter()
            .filter(|t| t.addr != avoid && t.state.available())
            .collect();
        if others.is_empty() {
            return targets
                .iter()
                .find(|t| t.addr == avoid && t.state.available())
                .cloned();
        }
        Some(others[fastrand::usize(..others.len())].clone())
    }

    /// The next available target in round-robin order (ejected and unhealthy endpoints
    /// are skipped); `None` when no address is known or none is available.
    pub fn pick(&self) -> Option<Target> {
        let targets = self.targets.load();
        let n = targets.len();
        if n == 0 {
            return None;
        }
        // A load and a store, not `fetch_add` (an atomic read-modify-write): two
        // threads picking at once may start at the same place, which round-robin
        // spreading does not need to rule out.
        let start = self.next.load(Ordering::Relaxed);
        self.next.store(start.wrapping_add(1), Ordering::Relaxed);
        (0..n)
            .map(|k| &targets[(start + k) % n])
            .find(|t| t.state.available())
            .cloned()
    }

    /// Tell outlier detection how a try at `target` went.
    pub fn record(&self, target: &Target, success: bool) {
        if let Some(o) = &self.outlier {
            let all: Vec<Arc<EndpointState>> = if success {
                Vec::new()
            } else {
                self.targets
                    .load()
                    .iter()
                    .map(|t| t.state.clone())
                    .collect()
            };
            if o.record(&target.state, success, &all) {
                tracing::warn!(service = %self.name, endpoint = %target.addr, "outlier: endpoint ejected");
            }
        }
    }

    /// Number of known addresses.
    pub fn len(&self) -> usize {
        self.targets.load().len()
    }

    /// True when no address is known (DNS has not answered yet).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Current addresses, for `explain` and the admin API.
    pub fn targets(&self) -> Arc<Vec<Target>> {
        self.targets.load_full()
    }
}

fn target(addr: SocketAddr, epoch: Instant) -> Option<Target> {
    let authority = Authority::try_from(addr.to_string().as_str()).ok()?;
    Some(Target(Arc::new(TargetInner {
        addr,
        authority,
        state: Arc::new(EndpointState::new(epoch)),
        idle: Arc::default(),
    })))
}

/// New targets keep the state of the addresses that were already known (an address
/// that stays is the same target).
fn carry_state(new: &mut [Target], old: &[Target]) {
    for t in new {
        if let Some(o) = old.iter().find(|o| o.addr == t.addr) {
            *t = o.clone();
        }
    }
}

/// The endpoints of a service, resolved.
struct Resolved {
    targets: Vec<Target>,
    /// Names that did not resolve, with the reason.
    failed: Vec<String>,
    /// When the first of the answers expires (`None`: no TTL known).
    valid_until: Option<Instant>,
}

/// Resolve every endpoint; literal addresses need no lookup. Names that fail to resolve
/// are reported in the error list and left out.
async fn resolve(dns: &Dns, endpoints: &[Endpoint], epoch: Instant) -> Resolved {
    let mut r = Resolved {
        targets: Vec::new(),
        failed: Vec::new(),
        valid_until: None,
    };
    for ep in endpoints {
        match ep.addr {
            Some(a) => r.targets.extend(target(a, epoch)),
            None => match dns.lookup(&ep.host, ep.port).await {
                Ok(answer) => {
                    r.targets
                        .extend(answer.addrs.into_iter().filter_map(|a| target(a, epoch)));
                    r.valid_until = match (r.valid_until, answer.valid_until) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                Err(e) => r.failed.push(format!("{ep}: {e}")),
            },
        }
    }
    r
}

/// Key under which an `Upstream` is shared between snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    service: Service,
    pool_idle_timeout: Duration,
    pool_max_idle: usize,
    budget_percent: u32,
    /// `[dns] servers` (empty: the system's).
    dns_servers: Vec<SocketAddr>,
}

/// Hands out `Upstream`s, reusing one when a reload did not change its service.
#[derive(Debug, Default)]
pub struct Registry {
    live: Mutex<HashMap<Key, Weak<Upstream>>>,
    /// The resolver for new upstreams and the `[dns] servers` it asks.
    dns: Mutex<Option<(Vec<SocketAddr>, Arc<Dns>)>>,
}

impl Registry {
    /// The upstream for `service`: the live one if the same service exists, else new.
    /// Called only while building a snapshot, never on the request path.
    pub async fn get(&self, service: &Service, defaults: &Defaults) -> Arc<Upstream> {
        let (dns_servers, dns) = self.dns();
        let key = Key {
            service: service.clone(),
            pool_idle_timeout: defaults.pool_idle_timeout,
            pool_max_idle: defaults.pool_max_idle,
            budget_percent: defaults.retry.budget_percent,
            dns_servers,
        };
        if let Some(up) = self.lock().get(&key).and_then(Weak::upgrade) {
            return up;
        }
        let (up, valid_until) = Self::build(service, defaults, &dns).await;
        let up = Arc::new(up);
        spawn_dns_refresh(&up, service, dns, valid_until);
        if let Some(idle_timeout) = up.client.own_pool_idle_timeout() {
            pool::spawn_sweeper(Arc::downgrade(&up), idle_timeout);
        }
        if let Some(check) = &service.health_check {
            health::spawn_health_checks(
                Arc::downgrade(&up),
                check.clone(),
                up.name.clone(),
                |u: &Upstream| {
                    u.targets
                        .load()
                        .iter()
                        .map(|t| (t.addr, t.state.clone()))
                        .collect()
                },
            );
        }
        let mut live = self.lock();
        live.retain(|_, w| w.strong_count() > 0);
        live.insert(key, Arc::downgrade(&up));
        up
    }

    /// Use the servers of `[dns] servers` (empty: the system's configuration) for
    /// the upstreams built from now on; a change rebuilds the upstreams with names.
    pub fn set_dns(&self, servers: &[SocketAddr]) {
        let mut dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
        if dns.as_ref().is_some_and(|(s, _)| s.as_slice() == servers) {
            return;
        }
        let resolver = if servers.is_empty() {
            Dns::system()
        } else {
            match Dns::with_servers(servers) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up the [dns] servers; using the system's");
                    Dns::system()
                }
            }
        };
        *dns = Some((servers.to_vec(), resolver));
    }

    fn dns(&self) -> (Vec<SocketAddr>, Arc<Dns>) {
        let dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
        match dns.as_ref() {
            Some((servers, r)) => (servers.clone(), r.clone()),
            None => (Vec::new(), Dns::system()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Weak<Upstream>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn build(
        service: &Service,
        defaults: &Defaults,
        dns: &Dns,
    ) -> (Upstream, Option<Instant>) {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(service.connect_timeout));
        connector.set_nodelay(true);
        let client = match service.protocol {
            Protocol::Http1 => UpstreamClient::H1(H1Pool {
                connect_timeout: service.connect_timeout,
                idle_timeout: defaults.pool_idle_timeout,
                max_idle: defaults.pool_max_idle,
            }),
            Protocol::H2c => UpstreamClient::H2c(H2Pool {
                connector,
                idle_timeout: defaults.pool_idle_timeout,
            }),
            Protocol::H2 => {
                connector.enforce_http(false);
                UpstreamClient::H2(H2Pool {
                    connector: tls::connector(service, connector),
                    idle_timeout: defaults.pool_idle_timeout,
                })
            }
            Protocol::Https => {
                connector.enforce_http(false);
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .pool_idle_timeout(defaults.pool_idle_timeout)
                    .pool_max_idle_per_host(defaults.pool_max_idle)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new());
                UpstreamClient::Tls(Box::new(builder.build(tls::connector(service, connector))))
            }
        };
        let epoch = Instant::now();
        let resolved = resolve(dns, &service.endpoints, epoch).await;
        if !resolved.failed.is_empty() {
            tracing::warn!(service = %service.name, failed = ?resolved.failed, "endpoints did not resolve; retrying in the background");
        }
        let targets = resolved.targets;
        let up = Upstream {
            name: service.name.as_str().into(),
            targets: ArcSwap::from_pointee(targets),
            next: AtomicUsize::new(0),
            client,
            scheme: if service.protocol.is_tls() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            protocol: service.protocol,
            concurrency: service
                .concurrency
                .map(|(max, pending)| Concurrency::new(max, pending)),
            budget: RetryBudget::new(defaults.retry.budget_percent),
            outlier: service
                .outlier
                .clone()
                .map(|policy| OutlierDetector { policy }),
            epoch,
        };
        (up, resolved.valid_until)
    }
}

/// Re-resolve the DNS names of `up`'s service when their answers expire (at most every
/// `dns_refresh`, see [`dns::next_refresh`]), for as long as `up` is alive.
/// Literal-only services need no task.
fn spawn_dns_refresh(
    up: &Arc<Upstream>,
    service: &Service,
    dns: Arc<Dns>,
    mut valid_until: Option<Instant>,
) {
    if service.endpoints.iter().all(|e| e.addr.is_some()) {
        return;
    }
    let weak = Arc::downgrade(up);
    let endpoints = service.endpoints.clone();
    let every = service.dns_refresh;
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(dns::next_refresh(valid_until, every, Instant::now())).await;
            let Some(up) = weak.upgrade() else { return };
            let resolved = resolve(&dns, &endpoints, up.epoch).await;
            valid_until = resolved.valid_until;
            let (mut targets, failed) = (resolved.targets, resolved.failed);
            let old = up.targets.load_full();
            carry_state(&mut targets, &old);
            if failed.is_empty() {
                if failing {
                    tracing::info!(service = %up.name, "endpoints resolve again");
                }
                failing = false;
                if !targets
                    .iter()
                    .map(|t| t.addr)
                    .eq(old.iter().map(|t| t.addr))
                {
                    let addrs: Vec<String> = targets.iter().map(|t| t.addr.to_string()).collect();
                    tracing::info!(service = %up.name, endpoints = ?addrs, "DNS answer changed");
                }
                up.targets.store(Arc::new(targets));
            } else {
                // Keep the last good answer rather than dropping live endpoints, and say
                // so once, not every round.
                if !failing {
                    tracing::warn!(service = %up.name, failed = ?failed, "DNS lookup failed; keeping the last known endpoints");
                }
                failing = true;
                if up.is_empty() && !targets.is_empty() {
                    up.targets.store(Arc::new(targets));
                }
            }
        }
    });
}
