//! One exchange, end to end. Each phase is a named function, called in this order:
//!
//! ```text
//! serve                     load the snapshot once; request id; access-log record
//!  └ pipeline
//!     ├ upgrade::requested  an HTTP/1.1 Upgrade (WebSocket) request? (not h2c)
//!     ├ TraceContext        continue or start the W3C trace (traceparent)
//!     ├ check_framing       refuse ambiguous Content-Length/Transfer-Encoding
//!     ├ Auth::strip         remove client-sent identity headers (every route)
//!     ├ (limits)            request target length (414)
//!     ├ normalize_*         canonical path and host (http::normalize)
//!     ├ https_redirect      plain listener, host in [tls] redirect_http: 301/308
//!     ├ Router::find        host -> path -> predicates, or 404; redirect routes answer here
//!     ├ authenticate        the route's JWT policy: 401 / 403, or the verified claims
//!     ├ rate_limit          the route's token bucket for this key, or 429
//!     ├ split               weighted backend (500 when every weight is 0); routes with
//!     │                     a policy: sticky/cohort bucket, force header, canary guard
//!     ├ branch              topic-branch override behind the gate (400 on a bad name),
//!     │                     explicit or DNS-template deployment, else main
//!     ├ concurrency_slot    a slot of the service (bounded wait), or 503 shed
//!     ├ upstream_request_headers  filters, hop-by-hop cleanup, forwarding headers
//!     ├ identity_headers    verified claims as headers; the minted identity token
//!     ├ upstream_body       size limit (413), idle timeout (408), buffering for retries
//!     ├ mirror::start       detached shadow copy (bounded); the primary body is teed
//!     ├ forward             endpoint pick, pooled connection, per-try and route
//!     │                     timeouts, retries within the budget, outlier feedback
//!     │                     (a branch that refuses the connection: main answers)
//!     ├ guard_feedback      the canary guard counts this answer
//!     ├ downstream_response hop-by-hop cleanup, response filter, RateLimit-* headers
//!     ├ upgrade::accept     on 101 to an upgrade request: tunnel both connections
//!     └ policy_response_headers  x-switchyard-service / x-switchyard-served-by
//! (errors)                  ProxyError -> JSON, or gRPC status for gRPC requests
//! (https)                   Strict-Transport-Security when [tls] hsts is set
//! finish                    metrics; x-request-id; the log record rides on the body
//! ```
//!
//! Every failure is a [`ProxyError`], turned into the JSON (or gRPC) answer in one
//! place ([`ProxyError::into_response`]). Bodies stream both ways frame by frame, so
//! HTTP/2 trailers (gRPC's `grpc-status`) pass through untouched.

pub mod body;
pub mod error;
mod mirror;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Body as _;
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::{Claims, Failure};
use crate::config::model::{Action, Forward, LogFormat, Redirect, Route};
use crate::gateway::Gateway;
use crate::http::headers::{
    self as fields, BadFraming, GatewayFields, X_REQUEST_ID, bad_framing, new_request_id,
    remove_hop_by_hop, valid_request_id,
};
use crate::http::normalize::{normalize_host, normalize_path};
use crate::observe::access_log::AccessRecord;
use crate::observe::otlp::{RequestSpan, TrySpan};
use crate::observe::trace::{TraceContext, new_span_id};
use crate::policy::{self, branch::Ask};
use crate::resilience::deadline::Timer;
use crate::resilience::rate_limit::Decision;
use crate::resilience::retry;
use crate::router::RequestInfo;
use crate::snapshot::Snapshot;
use crate::upstream::Upstream;
use crate::upstream::pool::PooledBody;
pub use body::ClientBody;
use body::{BodyError, BodyLimits, ResponseBody, UpstreamBody};
pub use error::ProxyError;

/// Per-connection facts the phases need, computed once per connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP as a header value, for `x-forwarded-for`.
    pub peer_ip: HeaderValue,
    /// `http` or `https`, for `x-forwarded-proto`.
    pub proto: &'static str,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, proto: &'static str) -> Self {
        Self {
            peer,
            peer_ip: crate::http::headers::ip_value(peer.ip()),
            proto,
        }
    }
}

/// Per-request state carried through the phases and read by metrics and the log at
/// the end.
struct RequestCtx {
    request_id: HeaderValue,
    record: Option<Box<AccessRecord>>,
    /// Index of the matched route (`config.routes`).
    route_id: Option<usize>,
    service: Option<ServiceName>,
    /// The verified claims of the request's token (routes with `auth`); `None` for
    /// anonymous requests. Later phases (traffic policy, rate-limit keys) read them.
    claims: Option<Claims>,
    /// Time until the upstream's response head (or the failure), retries included.
    upstream_time: Option<std::time::Duration>,
    connect_failures: u32,
    retries: u32,
    budget_exhausted: bool,
    /// The OTLP server span, when this request is sampled and spans are exported.
    span: Option<Box<RequestSpan>>,
    /// The split's outcome, for routes with a policy.
    choice: Option<crate::policy::canary::Choice>,
    /// The branch the request asked for (admitted by the gate).
    branch: Option<Box<str>>,
    /// True when a branch deployment answered (no fallback).
    branch_hit: bool,
    /// The branch had no reachable deployment; main answered.
    branch_fallback: bool,
    /// Index of the service the split chose (`config.services`), before any branch.
    backend_service: Option<usize>,
    /// The `service` label of metrics when it is not `service`: a branch deployment
    /// (`users@feat`) is counted as its main service (`users`); the full name is only
    /// in the access log, the span and the served-by header.
    metric_service: Option<Arc<str>>,
    /// Set by `forward`: some try got past connecting (the request may have reached
    /// the upstream), so sending it elsewhere could run it twice.
    reached_upstream: bool,
}

/// Serve one request. Never fails: errors become the gateway's JSON answers. `timer`
/// is the connection's own for the route timeout when it serves one request at a time
/// (HTTP/1, `resilience::deadline`); without one, the request makes its own. The
/// request's id is set into `id_out` with the answer: the answer's `x-request-id` is
/// the caller's to add ([`request_id`]).
pub async fn serve(
    gw: &Gateway,
    snapshot: Arc<Snapshot>,
    conn: &ConnInfo,
    req: Request<ClientBody>,
    id_out: &mut HeaderValue,
    timer: Option<&mut Timer<'_>>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let _in_flight = gw.metrics.start();
    let method = req.method().clone();
    let request_id = request_id(req.headers());
    let log = &snapshot.config.server.access_log;
    let record = match (log.format, &gw.access_log) {
        (LogFormat::Json | LogFormat::Ltsv, Some(sink)) => Some(Box::new(AccessRecord {
            sink: sink.clone(),
            format: log.format,
            fields: log.fields.clone(),
            trace_id: [b'0'; 32],
            start: started,
            time: SystemTime::now(),
            request_id: request_id.to_str().unwrap_or("").to_string(),
            client: conn.peer,
            method: req.method().as_str().to_string(),
            host: host_of(&req).map(str::to_string),
            path: req.uri().path().to_string(),
            route: None,
            service: None,
            endpoint: None,
            status: 0,
            error: None,
            upstream: None,
            attempts: 0,
            bytes_in: None,
            bytes_out: 0,
            branch: None,
            branch_fallback: false,
            bucket: None,
        })),
        _ => None,
    };
    let mut ctx = RequestCtx {
        request_id,
        record,
        route_id: None,
        service: None,
        claims: None,
        upstream_time: None,
        connect_failures: 0,
        retries: 0,
        budget_exhausted: false,
        span: None,
        choice: None,
        branch: None,
        branch_hit: false,
        branch_fallback: false,
        reached_upstream: false,
        backend_service: None,
        metric_service: None,
    };
    let grpc = is_grpc(req.headers());
    let (mut resp, error) = match pipeline(gw, &snapshot, conn, &mut ctx, req, timer).await {
        Ok(resp) => (resp, None),
        Err(e) => (e.into_response(&ctx.request_id, grpc), Some(e.code())),
    };
    if conn.proto == "https"
        && let Some(hsts) = &snapshot.config.tls.hsts
    {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    // Moved, not cloned: a clone and its drop are two atomic read-modify-writes.
    *id_out = std::mem::replace(&mut ctx.request_id, HeaderValue::from_static(""));
    finish(gw, &snapshot, &mut resp, ctx, &method, error, started);
    resp
}

async fn pipeline(
    gw: &Gateway,
    snap: &Snapshot,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
    req: Request<ClientBody>,
    mut timer: Option<&mut Timer<'_>>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let upgrade = upgrade::requested(&parts);
    let trace = TraceContext::from_headers(&mut parts.headers, snap.config.tracing.sample_ratio);
    if let Some(r) = &mut ctx.record {
        r.trace_id = trace.trace_id;
    }
    if let Some(sink) = snap.spans.as_ref().filter(|_| trace.sampled()) {
        ctx.span = Some(Box::new(RequestSpan {
            sink: sink.clone(),
            trace,
            start: SystemTime::now(),
            method: crate::observe::metrics::method_label(&parts.method),
            path: parts.uri.path().to_string(),
            route: None,
            service: None,
            status: 0,
            error: None,
            tries: Vec::new(),
        }));
    }
    check_framing(&parts.headers)?;
    // Before routing, so that no predicate ever sees a spoofed identity either.
    snap.auth.strip(&mut parts.headers);
    let server = &snap.config.server;
    if parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > server.max_uri_bytes {
        return Err(ProxyError::UriTooLong);
    }
    let path = normalize_path(parts.uri.path()).map_err(|_| ProxyError::BadPath)?;
    // The Host value is cloned (a reference-count bump), not copied into a String: it
    // must outlive the header edits below.
    let raw_host_value = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => fields::get(&parts.headers, &header::HOST).cloned(),
    };
    let raw_host = raw_host_value.as_ref().and_then(|v| v.to_str().ok());
    let host = raw_host.and_then(normalize_host);
    let info = RequestInfo {
        method: &parts.method,
        host: host.as_deref(),
        path: &path,
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    if conn.proto == "http" && snap.config.tls.redirect_http.covers(host.as_deref()) {
        return https_redirect(snap, &parts.method, &parts.uri, raw_host);
    }
    let (route_id, route) = snap.router.find(&info).ok_or(ProxyError::NoRoute)?;
    ctx.route_id = Some(route_id);
    let fwd = match &route.action {
        Action::Forward(f) => f,
        Action::Redirect(rd) => {
            return redirect(route, rd, &path, parts.uri.query(), raw_host, conn);
        }
    };
    ctx.claims = authenticate(snap, route, &parts.headers).await?;
    let rate = rate_limit(snap, route_id, conn, &parts.headers, ctx.claims.as_deref())?;
    // The verified claims of the route's auth policy: cohorts and the `jwt-claim:`
    // branch gate read them.
    let claims_owned = ctx.claims.clone();
    let claims: Option<&policy::Claims> = claims_owned.as_deref();
    let backend = split(snap, route_id, fwd, &parts.headers, claims, ctx)?;
    strip_force_header(snap, &mut parts.headers);
    ctx.backend_service = Some(backend.service);
    let main_upstream = &snap.upstreams[backend.service];
    let branch_upstream = branch(
        gw,
        snap,
        conn,
        fwd,
        backend,
        &mut parts.headers,
        claims,
        ctx,
    )
    .await?;
    let upstream: &Upstream = branch_upstream.as_deref().unwrap_or(main_upstream);
    ctx.service = Some(match &branch_upstream {
        Some(b) => ServiceName::Branch(b.name.clone()),
        None => ServiceName::Main(backend.service),
    });
    let wait = fwd.timeout.unwrap_or(snap.config.defaults.request_timeout);
    let mut permit = concurrency_slot(upstream, wait).await?;
    let path_and_query = upstream_path_and_query(route, &path, &parts.uri)?;
    route.request_headers.apply(&mut parts.headers);
    let te_trailers = upstream.protocol.is_h2() && wants_trailers(&parts.headers);
    // The Host value as it came (a text one only), for `x-forwarded-host` and a
    // missing `Host`: shared, not copied.
    let raw_host_header = raw_host_value.as_ref().filter(|_| raw_host.is_some());
    let mut gateway_fields = upstream_request_headers(
        snap,
        conn,
        &mut parts.headers,
        raw_host_header,
        &ctx.request_id,
    );
    if te_trailers {
        // The one TE value HTTP/2 allows; gRPC servers may insist on it.
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let upgrade = match upgrade {
        Some(u) if upstream.protocol.is_h2() => {
            // No HTTP/1.1 Upgrade towards an HTTP/2 upstream: the request goes as a
            // plain request, and no tunnel is made whatever the answer.
            drop(u);
            None
        }
        Some(u) => {
            u.restore_headers(&mut parts.headers);
            Some(u.take_pending(&mut parts.extensions))
        }
        None => None,
    };
    gateway_fields.set_traceparent(trace.header_value());
    if let Some(h) = &fwd.host {
        parts.headers.insert(header::HOST, h.clone());
    }
    identity_headers(
        snap,
        route,
        upstream,
        ctx.claims.as_ref(),
        &mut parts.headers,
    );
    let body = upstream_body(snap, fwd, ctx, &parts.headers, body).await?;
    let head = UpstreamHead {
        method: parts.method,
        path_and_query,
        headers: parts.headers,
        gateway_fields,
    };
    let primary_copy = fwd
        .policy
        .as_ref()
        .and_then(|p| p.mirror.as_ref())
        // A WebSocket (or other upgrade) request is never copied: the shadow cannot
        // take part in the tunnel.
        .filter(|_| upgrade.is_none())
        .and_then(|m| {
            let timeout = fwd.timeout.unwrap_or(snap.config.defaults.request_timeout);
            mirror::start(gw, snap, route_id, m, timeout, &head, &body)
        });
    let route_timeout = fwd.timeout.unwrap_or(snap.config.defaults.request_timeout);
    let resp = match branch_upstream.as_deref() {
        Some(branch_up) if body.resendable() => {
            // Read here only: a clock reading per request is not free (README,
            // Performance).
            let forward_started = Instant::now();
            let again = (head.clone(), body.try_clone());
            match forward(
                snap,
                branch_up,
                ctx,
                head,
                body,
                route_timeout,
                timer.as_deref_mut(),
            )
            .await
            {
                // No try got past connecting to the branch deployment: main answers
                // instead, in main's concurrency slot and the rest of the route's time.
                Err(ProxyError::ConnectFailed | ProxyError::NoHealthyUpstream)
                    if !ctx.reached_upstream =>
                {
                    ctx.branch_hit = false;
                    ctx.branch_fallback = true;
                    ctx.service = Some(ServiceName::Main(backend.service));
                    ctx.metric_service = None;
                    permit = None;
                    let remaining = route_timeout.saturating_sub(forward_started.elapsed());
                    match concurrency_slot(main_upstream, remaining).await {
                        Ok(p) => {
                            permit = p;
                            let (head, body) = again;
                            let body = body.unwrap_or(UpstreamBody::Empty);
                            forward(snap, main_upstream, ctx, head, body, remaining, timer).await
                        }
                        Err(e) => Err(e),
                    }
                }
                r => r,
            }
        }
        _ => forward(snap, upstream, ctx, head, body, route_timeout, timer).await,
    };
    guard_feedback(gw, snap, route_id, fwd, ctx, &resp);
    let mut resp = resp?;
    let tunnel = match upgrade {
        Some(pending) => upgrade::accept(pending, &mut resp, server.upgrade_idle_timeout),
        None => None,
    };
    // An encoded answer is not compared (the shadow task counts it `skipped`): it is
    // not copied either.
    let tee = match primary_copy {
        Some(c) if policy::mirror::is_encoded(resp.headers()) => {
            let _ =
                c.tx.send(policy::mirror::Captured::encoded(resp.status().as_u16()));
            None
        }
        Some(c) => Some(body::Tee {
            collector: policy::mirror::Collector::new(c.mirror.max_compare_body),
            status: resp.status().as_u16(),
            headers: policy::mirror::pick_headers(&c.mirror, resp.headers()),
            tx: c.tx,
            slot: c.slot,
        }),
        None => None,
    };
    let mut resp = downstream_response(resp, route, rate, permit);
    if let Some(value) = tunnel {
        upgrade::response_headers(resp.headers_mut(), value);
    }
    if let Some(t) = tee {
        resp.body_mut().set_tee(t);
    }
    policy_response_headers(snap, ctx, resp.headers_mut());
    Ok(resp)
}

/// Phase: the backend of the route. Plain routes take the weighted pick; routes with a
/// policy go through the sticky/cohort buckets, the force header and the guard.
fn split<'f>(
    snap: &Snapshot,
    route_id: usize,
    fwd: &'f Forward,
    headers: &HeaderMap,
    claims: Option<&policy::Claims>,
    ctx: &mut RequestCtx,
) -> Result<&'f crate::config::model::Backend, ProxyError> {
    let Some(p) = &fwd.policy else {
        return fwd.pick().ok_or(ProxyError::NoBackend);
    };
    let tripped = snap.guards[route_id].as_ref().is_some_and(|g| g.tripped());
    let choice = policy::canary::choose(fwd, p, &snap.config.policy, headers, claims, tripped)
        .ok_or(ProxyError::NoBackend)?;
    ctx.choice = Some(choice);
    fwd.backends
        .get(choice.backend)
        .ok_or(ProxyError::NoBackend)
}

/// The force header is the gateway's: never passed on, whether the feature is on
/// (`[canary] force_header`) or off (the default name is stripped).
fn strip_force_header(snap: &Snapshot, headers: &mut HeaderMap) {
    match &snap.config.policy.force_header {
        Some(h) => fields::remove(headers, h),
        None => fields::remove(headers, &policy::FORCE_HEADER_NAME),
    }
}

/// Phase: topic-branch override. `Some` when the route's service has a deployment of
/// the admitted branch; a refused value is stripped; an invalid name is a 400.
#[allow(clippy::too_many_arguments)]
async fn branch(
    gw: &Gateway,
    snap: &Snapshot,
    conn: &ConnInfo,
    fwd: &Forward,
    chosen: &crate::config::model::Backend,
    headers: &mut HeaderMap,
    claims: Option<&policy::Claims>,
    ctx: &mut RequestCtx,
) -> Result<Option<Arc<Upstream>>, ProxyError> {
    let Some(b) = &snap.config.policy.branches else {
        return Ok(None);
    };
    // The CIDR gate judges the client, not a load balancer in front of the gateway.
    let client = || {
        crate::http::headers::client_ip(
            headers,
            conn.peer.ip(),
            &snap.config.server.trusted_proxies,
        )
    };
    let (name, keep): (Box<str>, Option<Vec<u8>>) = match b.ask(headers, client, claims) {
        Ask::None => return Ok(None),
        Ask::Refused => {
            b.strip(headers);
            return Ok(None);
        }
        Ask::Invalid => return Err(ProxyError::BadBranch),
        Ask::Branch { name, raw, mixed } => (name.into(), mixed.then(|| raw.to_vec())),
    };
    // Admitted, with other values beside the one that counts: the upstream (and every
    // hop after it) sees only the admitted one.
    if let Some(keep) = keep {
        b.strip_except(headers, Some(&keep));
    }
    // The branch deployment is of the route's main service, whichever side of a
    // canary or split the request drew: branch selection wins over the split.
    let service = fwd
        .backends
        .get(policy::canary::main_backend(fwd))
        .map_or(chosen.service, |b| b.service);
    let found = branch_upstream(gw, snap, service, &name).await;
    ctx.branch_hit = found.is_some();
    ctx.branch_fallback = found.is_none();
    ctx.branch = Some(name);
    if found.is_some() {
        ctx.choice = None;
        // Metrics count a branch under its main service: branch names are the
        // tester's to choose, series must stay bounded.
        ctx.metric_service = snap.upstreams.get(service).map(|u| u.name.clone());
    }
    Ok(found)
}

/// The deployment of `branch` for a service: explicit endpoints, else the template
/// through the cache (negative answers cached too).
async fn branch_upstream(
    gw: &Gateway,
    snap: &Snapshot,
    service: usize,
    branch: &str,
) -> Option<Arc<Upstream>> {
    if let Some(up) = snap.branch_upstreams[service].get(branch) {
        return Some(up.clone());
    }
    let svc = &snap.config.services[service];
    let (template, port) = svc.branch_endpoint.as_ref()?;
    let host = template.replace("{branch}", branch);
    let key = format!("{host}:{port}");
    let ttl = snap
        .config
        .policy
        .branches
        .as_ref()
        .map_or(std::time::Duration::from_secs(10), |b| b.cache_ttl);
    // A hit returns the upstream built on the first lookup: no DNS, no registry work.
    let resolve = || async {
        let addrs = policy::branch::resolve(&host, *port, svc.connect_timeout).await;
        if addrs.is_empty() {
            return None;
        }
        let endpoints = addrs
            .into_iter()
            .map(|a| crate::config::model::Endpoint {
                host: a.ip().to_string(),
                port: a.port(),
                addr: Some(a),
            })
            .collect();
        let bs = crate::snapshot::branch_service(svc, branch, endpoints);
        Some(gw.registry.upstreams.get(&bs, &snap.config.defaults).await)
    };
    snap.branch_cache.get_or_resolve(&key, ttl, resolve).await
}

/// Feed the canary guard with this answer; trip it when the canary fails too often.
fn guard_feedback(
    gw: &Gateway,
    snap: &Snapshot,
    route_id: usize,
    fwd: &Forward,
    ctx: &RequestCtx,
    resp: &Result<Response<PooledBody>, ProxyError>,
) {
    let (Some(guard), Some(choice)) = (&snap.guards[route_id], ctx.choice) else {
        return;
    };
    let Some(c) = fwd.policy.as_ref().and_then(|p| p.canary.as_ref()) else {
        return;
    };
    let server_error = match resp {
        Ok(r) => r.status().is_server_error(),
        Err(e) => e.status().is_server_error(),
    };
    if guard.record(choice.backend == c.canary, server_error) {
        let (canary, canary_5xx, main, main_5xx) = guard.totals();
        let route = &snap.route_names[route_id];
        tracing::warn!(
            route = %route,
            canary_requests = canary,
            canary_5xx,
            main_requests = main,
            main_5xx,
            "canary guard tripped: canary weight is 0 until the next reload"
        );
        gw.metrics.canary_guard_tripped(route);
    }
}

/// `x-switchyard-service` and `x-switchyard-served-by`, when configured. Served-by
/// only answers a request that asked for a branch the gate admitted (hit or
/// fallback): other responses carry nothing extra. Header values of configured
/// services are built with the snapshot; only a branch hit makes one.
fn policy_response_headers(snap: &Snapshot, ctx: &RequestCtx, headers: &mut HeaderMap) {
    let p = &snap.config.policy;
    let served_by = p
        .branches
        .as_ref()
        .and_then(|b| b.served_by.as_ref())
        .filter(|_| ctx.branch.is_some());
    if p.service_header.is_none() && served_by.is_none() {
        return;
    }
    let Some(service) = ctx.service.as_ref().and_then(|s| s.name(snap)) else {
        return;
    };
    let branch_value = || HeaderValue::from_str(service).ok();
    let configured = ctx
        .backend_service
        .and_then(|i| snap.service_values.get(i))
        .and_then(Option::as_ref);
    if let Some(h) = &p.service_header {
        let v = match ctx.branch_hit {
            true => branch_value(),
            false => configured.map(|(name, _)| name.clone()),
        };
        if let Some(v) = v {
            headers.insert(h.clone(), v);
        }
    }
    if let Some(h) = served_by {
        let v = match ctx.branch_hit {
            true => branch_value(),
            false => configured.map(|(_, main)| main.clone()),
        };
        if let Some(v) = v {
            headers.insert(h.clone(), v);
        }
    }
}

/// Phase: the route's auth policy. `Ok(None)` for routes without one and for
/// anonymous requests that the policy lets pass.
async fn authenticate(
    snap: &Snapshot,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Option<Claims>, ProxyError> {
    let Some(policy) = route.auth.and_then(|i| snap.auth.policies.get(i)) else {
        return Ok(None);
    };
    policy.authenticate(headers).await.map_err(|f| {
        tracing::debug!(policy = %policy.spec.name, failure = ?f, "auth refused");
        match f {
            Failure::Missing => ProxyError::MissingToken,
            Failure::Invalid(_) => ProxyError::InvalidToken,
            Failure::Forbidden(_) => ProxyError::Forbidden,
        }
    })
}

/// Phase: identity towards the upstream, set last so that no filter overrides it:
/// the policy's `forward_claims`, and the token minted for this service.
fn identity_headers(
    snap: &Snapshot,
    route: &Route,
    upstream: &Upstream,
    claims: Option<&Claims>,
    headers: &mut HeaderMap,
) {
    let (Some(claims), Some(policy)) = (claims, route.auth.and_then(|i| snap.auth.policies.get(i)))
    else {
        return;
    };
    policy.forward(claims, headers);
    if let Some(minter) = &snap.auth.minter
        && let Some(token) = minter.token_for(claims, &upstream.name)
    {
        headers.insert(minter.header_name().clone(), token);
    }
}

/// Phase: a slot of the service's concurrency limit, waiting at most `wait` (the
/// route's timeout, or what is left of it) in the bounded queue; `Overloaded` when
/// there is none.
async fn concurrency_slot(
    upstream: &Upstream,
    wait: std::time::Duration,
) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
    let Some(c) = &upstream.concurrency else {
        return Ok(None);
    };
    let slot = tokio::time::timeout(wait, c.acquire()).await.ok().flatten();
    slot.map(Some).ok_or(ProxyError::Overloaded)
}

/// Phase: the body towards the upstream. Refused up front when the declared length is
/// over the route's limit; otherwise streamed under the limit and the idle timeout, or
/// read whole first when it is small enough to be retried.
async fn upstream_body(
    snap: &Snapshot,
    fwd: &Forward,
    ctx: &mut RequestCtx,
    headers: &HeaderMap,
    body: ClientBody,
) -> Result<UpstreamBody, ProxyError> {
    let server = &snap.config.server;
    let max_body = fwd.max_body.unwrap_or(server.max_body);
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > max_body) {
        return Err(ProxyError::PayloadTooLarge);
    }
    let retry = &snap.config.defaults.retry;
    let buffered = retry.attempts > 1 && declared.is_some_and(|n| n <= retry.buffer_body);
    let body = match body {
        ClientBody::Hyper(b) if !b.is_end_stream() => b,
        ClientBody::Stalled => return Err(ProxyError::BodyTimeout),
        // Read whole with its head, its length the declared one (checked above).
        ClientBody::Full(b) if !b.is_empty() => {
            if let Some(r) = ctx.record.as_mut() {
                r.bytes_in = Some(Arc::new(AtomicU64::new(b.len() as u64)));
            }
            return Ok(if buffered {
                UpstreamBody::Full(Some(b))
            } else {
                UpstreamBody::Once(Some(b))
            });
        }
        _ => return Ok(UpstreamBody::Empty),
    };
    let counter = ctx.record.as_mut().map(|r| {
        let c = Arc::new(AtomicU64::new(0));
        r.bytes_in = Some(c.clone());
        c
    });
    let limits = BodyLimits::new(max_body, server.body_read_timeout);
    let stream = UpstreamBody::Stream(body, Box::new(limits), counter);
    if buffered {
        buffer(stream).await
    } else {
        Ok(stream)
    }
}

/// Phase: the route's rate limit for this request's key. `Some((limit, remaining))`
/// for the `RateLimit-*` headers when the route has a limit.
fn rate_limit(
    snap: &Snapshot,
    route_id: usize,
    conn: &ConnInfo,
    headers: &HeaderMap,
    claims: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Option<(u32, u32)>, ProxyError> {
    let Some(limiter) = &snap.limiters[route_id] else {
        return Ok(None);
    };
    let key = limiter.key(conn.peer.ip(), headers, claims);
    match limiter.check(key) {
        Decision::Allowed { remaining } => Ok(Some((limiter.spec.burst, remaining))),
        Decision::Limited { retry_after } => Err(ProxyError::RateLimited {
            retry_after: (retry_after.as_secs_f64().ceil() as u32).max(1),
            limit: limiter.spec.burst,
        }),
    }
}

/// Read a small body whole, so that a retry can send it again. The body's limits and
/// idle timeout apply while reading.
async fn buffer(body: UpstreamBody) -> Result<UpstreamBody, ProxyError> {
    use http_body_util::BodyExt as _;
    match body.collect().await {
        Ok(collected) => Ok(UpstreamBody::Full(Some(collected.to_bytes()))),
        Err(e) => Err(match BodyError::find(e.as_ref()) {
            Some(BodyError::TooLarge) => ProxyError::PayloadTooLarge,
            Some(BodyError::Timeout) => ProxyError::BodyTimeout,
            // The client went away or broke its own framing mid-body.
            None => ProxyError::BadRequestBody,
        }),
    }
}

/// A gRPC request (`content-type: application/grpc` or `application/grpc+proto`, …):
/// the gateway's own errors are answered as gRPC status.
fn is_grpc(headers: &HeaderMap) -> bool {
    fields::get(headers, &header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Did the client say it accepts trailers (`TE: trailers`)?
fn wants_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    })
}

/// `Content-Length`, when the client declared one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    fields::get(headers, &header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Phase: refuse framing that two HTTP parsers could read differently.
fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    match bad_framing(headers) {
        None => Ok(()),
        Some(BadFraming::Ambiguous) => Err(ProxyError::AmbiguousFraming),
        Some(BadFraming::OtherCoding) => Err(ProxyError::UnsupportedTransferCoding),
    }
}

/// The host the client asked for: `Host` (HTTP/1.1) or the URI authority (HTTP/2,
/// absolute-form).
fn host_of<B>(req: &Request<B>) -> Option<&str> {
    host_of_parts(req.headers(), req.uri())
}

fn host_of_parts<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// Phase: the path the upstream sees: normalised, `strip_prefix` applied, query kept.
fn upstream_path_and_query(
    route: &Route,
    path: &str,
    uri: &Uri,
) -> Result<PathAndQuery, ProxyError> {
    let up = route.upstream_path(path);
    if up.as_ref() == uri.path()
        && let Some(pq) = uri.path_and_query()
    {
        // Already canonical and unchanged: reuse without copying.
        return Ok(pq.clone());
    }
    let s = match uri.query() {
        Some(q) => format!("{up}?{q}"),
        None => up.into_owned(),
    };
    PathAndQuery::try_from(s).map_err(|_| ProxyError::BadPath)
}

/// Phase (redirect routes): the gateway answers itself (Gateway API RequestRedirect).
/// Unset parts come from the request: its scheme, host and path; the port is the
/// request's unless a scheme was configured, and a scheme's well-known port is left out.
fn redirect(
    route: &Route,
    rd: &Redirect,
    path: &str,
    query: Option<&str>,
    raw_host: Option<&str>,
    conn: &ConnInfo,
) -> Result<Response<ResponseBody>, ProxyError> {
    let scheme = rd.scheme.as_deref().unwrap_or(conn.proto);
    let (req_host, req_port) = match raw_host {
        Some(h) => split_host_port(h),
        None => ("", None),
    };
    let host = rd.host.as_deref().unwrap_or(req_host);
    let port = match (rd.port, &rd.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => req_port,
    };
    let well_known = matches!((scheme, port), ("http", Some(80)) | ("https", Some(443)));
    let mut location = if host.is_empty() {
        String::new()
    } else {
        format!("{scheme}://{host}")
    };
    if let (Some(p), false, false) = (port, well_known, host.is_empty()) {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(&rd.path.apply(&route.path, path));
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let value = HeaderValue::from_str(&location).map_err(|_| ProxyError::BadPath)?;
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = http::StatusCode::from_u16(rd.status).map_err(|_| ProxyError::BadPath)?;
    resp.headers_mut().insert(header::LOCATION, value);
    Ok(resp)
}

/// Phase (plain listener, `[tls] redirect_http`): send the client to the same URL on
/// the HTTPS listener. 301 for GET and HEAD, 308 (method and body kept) otherwise.
fn https_redirect(
    snap: &Snapshot,
    method: &http::Method,
    uri: &Uri,
    raw_host: Option<&str>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (host, _) = split_host_port(raw_host.ok_or(ProxyError::BadPath)?);
    let port = snap.config.tls.redirect_port;
    let mut location = format!("https://{host}");
    if port != 443 {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(uri.path_and_query().map_or("/", |pq| pq.as_str()));
    let value = HeaderValue::from_str(&location).map_err(|_| ProxyError::BadPath)?;
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = if matches!(*method, http::Method::GET | http::Method::HEAD) {
        http::StatusCode::MOVED_PERMANENTLY
    } else {
        http::StatusCode::PERMANENT_REDIRECT
    };
    resp.headers_mut().insert(header::LOCATION, value);
    Ok(resp)
}

/// `host:port` -> (host, port); IPv6 literals keep their brackets.
fn split_host_port(h: &str) -> (&str, Option<u16>) {
    let colon = if h.starts_with('[') {
        h.find(']')
            .and_then(|end| h[end..].find(':').map(|c| end + c))
    } else {
        h.rfind(':')
    };
    match colon {
        Some(c) => (&h[..c], h[c + 1..].parse().ok()),
        None => (h, None),
    }
}

/// Phase: headers towards the upstream. Hop-by-hop first, then the gateway's own, which
/// are kept beside the map (`GatewayFields`).
fn upstream_request_headers(
    snap: &Snapshot,
    conn: &ConnInfo,
    headers: &mut HeaderMap,
    raw_host: Option<&HeaderValue>,
    request_id: &HeaderValue,
) -> GatewayFields {
    remove_hop_by_hop(headers);
    // The gateway reads the client's body itself; the upstream must not wait for a
    // `100 Continue` that only the gateway would see.
    fields::remove(headers, &header::EXPECT);
    let trusted = snap
        .config
        .server
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&conn.peer.ip()));
    let mut added =
        GatewayFields::forwarding(headers, &conn.peer_ip, trusted, conn.proto, raw_host);
    if !fields::has(headers, &header::HOST)
        && let Some(v) = raw_host
    {
        headers.insert(header::HOST, v.clone());
    }
    added.set_request_id(request_id.clone());
    added
}

/// The parts of the upstream request that are the same for every try.
#[derive(Clone)]
struct UpstreamHead {
    method: http::Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    gateway_fields: GatewayFields,
}

/// Phase: send to an endpoint of the service, within the route's timeout, retrying
/// as the policy allows. A retry needs: a request without a body (a streamed body
/// cannot be sent twice), a condition the policy names (connect failures for every
/// method; resets, per-try timeouts and 502/503/504 only for idempotent methods), and
/// a token from the service's retry budget. It goes to another endpoint when there is
/// one, after a jittered exponential backoff. When the tries run out on a retryable
/// status, the last upstream answer is passed on as it is. `timeout` bounds all tries
/// together. Sets `ctx.reached_upstream` when a try got past connecting (an answer, a
/// reset, or a timeout that may have come after the request was sent).
async fn forward(
    snap: &Snapshot,
    upstream: &Upstream,
    ctx: &mut RequestCtx,
    head: UpstreamHead,
    body: UpstreamBody,
    timeout: std::time::Duration,
    timer: Option<&mut Timer<'_>>,
) -> Result<Response<PooledBody>, ProxyError> {
    let defaults = &snap.config.defaults;
    let policy = &defaults.retry;
    // Only a body that can be sent again may be retried.
    let attempts = match body {
        UpstreamBody::Empty | UpstreamBody::Full(_) => policy.attempts,
        UpstreamBody::Stream(..) | UpstreamBody::Once(_) => 1,
    };
    let resend = match &body {
        UpstreamBody::Full(Some(b)) => Some(b.clone()),
        _ => None,
    };
    let idempotent = matches!(
        head.method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    );
    upstream.budget.deposit();
    // tokio's clock: the deadline below is taken from this one reading.
    let started = tokio::time::Instant::now();
    let record = &mut ctx.record;
    let connect_failures = &mut ctx.connect_failures;
    let span = &mut ctx.span;
    let retries = &mut ctx.retries;
    let budget_exhausted = &mut ctx.budget_exhausted;
    let reached = &mut ctx.reached_upstream;
    *reached = false;
    // Pinned where it is made, and awaited through the pin: handed to `timeout` by
    // value, this future (3.5 KB) was moved into the `Timeout`, and a profile-guided
    // build copied it twice per request (README, Performance).
    let tries = std::pin::pin!(async {
        // One request for every try: the clients borrow it and copy only what they must
        // (hyper's client, when another try may follow, needs its own copy).
        let mut req = Request::new(body);
        *req.method_mut() = head.method;
        *req.uri_mut() = Uri::from(head.path_and_query);
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = head.headers;
        let mut gateway_fields = head.gateway_fields;
        let mut last: Result<Response<PooledBody>, ProxyError> = Err(ProxyError::NoHealthyUpstream);
        let mut last_addr = None;
        for attempt in 1..=attempts {
            if attempt > 1 {
                if !upstream.budget.try_withdraw() {
                    *budget_exhausted = true;
                    break;
                }
                *retries += 1;
                tokio::time::sleep(retry::backoff(policy.backoff, attempt)).await;
                if let Some(b) = &resend {
                    *req.body_mut() = UpstreamBody::Full(Some(b.clone()));
                }
            }
            let target = upstream
                .pick_other(last_addr)
                .ok_or(ProxyError::NoHealthyUpstream)?;
            last_addr = Some(target.addr);
            if let Some(r) = record.as_mut() {
                r.endpoint = Some(target.addr);
                r.attempts = attempt;
            }
            // A sampled request gets a client span per try; the upstream's spans hang
            // under it.
            let try_span = span.as_ref().map(|s| {
                let id = new_span_id();
                gateway_fields.set_traceparent(s.trace.header_value_for(id));
                (id, SystemTime::now())
            });
            // Origin form; the client adds what its protocol needs. Pinned where it is
            // made, like `tries` above: a per-try timeout then holds only the pin, not
            // a moved copy of the exchange's future (2.5 KB).
            let sent = std::pin::pin!(upstream.client.request(
                &target,
                &upstream.scheme,
                &mut req,
                &gateway_fields,
                attempt == attempts
            ));
            let outcome = match policy.per_try_timeout {
                Some(t) => tokio::time::timeout(t, sent).await.ok(),
                None => Some(sent.await),
            };
            if let (Some(s), Some((span_id, start))) = (span.as_mut(), try_span) {
                s.tries.push(TrySpan {
                    span_id,
                    start,
                    end: SystemTime::now(),
                    endpoint: target.addr,
                    attempt,
                    outcome: match &outcome {
                        Some(Ok(resp)) => Ok(resp.status().as_u16()),
                        Some(Err(e)) if e.is_connect() => Err("connect_failed"),
                        Some(Err(_)) => Err("upstream_reset"),
                        None => Err("try_timeout"),
                    },
                });
            }
            *reached |= !matches!(&outcome, Some(Err(e)) if e.is_connect());
            let retry_this = match outcome {
                Some(Ok(resp)) => {
                    upstream.record(&target, !resp.status().is_server_error());
                    let again = idempotent && policy.on_status.contains(&resp.status().as_u16());
                    last = Ok(resp);
                    again
                }
                Some(Err(e)) if e.is_connect() => {
                    *connect_failures += 1;
                    upstream.record(&target, false);
                    // At warn level now and then: a wrong CA or server name, a refused
                    // port, a firewall are configuration problems someone must see.
                    if target.state.connect_warn_due() {
                        tracing::warn!(service = %upstream.name, endpoint = %target.addr, error = %e, "upstream connect failed (next warning for this endpoint in 10 s at the earliest)");
                    } else {
                        tracing::debug!(service = %upstream.name, endpoint = %target.addr, error = %e, "connect failed");
                    }
                    last = Err(ProxyError::ConnectFailed);
                    policy.on_connect_failure
                }
                Some(Err(e)) => {
                    // The client's own body may be why the exchange failed.
                    match BodyError::find(&e) {
                        Some(BodyError::TooLarge) => return Err(ProxyError::PayloadTooLarge),
                        Some(BodyError::Timeout) => return Err(ProxyError::BodyTimeout),
                        None => {}
                    }
                    tracing::debug!(service = %upstream.name, endpoint = %target.addr, error = %e, "upstream exchange failed");
                    upstream.record(&target, false);
                    last = Err(ProxyError::BadUpstreamResponse);
                    idempotent && policy.on_reset
                }
                None => {
                    upstream.record(&target, false);
                    last = Err(ProxyError::UpstreamTimeout);
                    idempotent && policy.on_status.contains(&504)
                }
            };
            if !retry_this {
                break;
            }
        }
        last
    });
    // The deadline from `started`: `timeout()` would read the clock again for it.
    let result = match (started.checked_add(timeout), timer) {
        // An HTTP/1 connection's own timer (resilience::deadline).
        (Some(due), Some(timer)) => timer
            .within(due, tries)
            .await
            .unwrap_or(Err(ProxyError::UpstreamTimeout)),
        (Some(due), None) => match tokio::time::timeout_at(due, tries).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::UpstreamTimeout),
        },
        // Too far ahead to be a deadline (tokio's `timeout` waits without one then).
        (None, _) => tries.await,
    };
    ctx.upstream_time = Some(started.elapsed());
    result
}

/// Phase: the upstream's answer, cleaned of hop-by-hop headers, with the route's
/// response filter and `RateLimit-*` headers; the body streams back and holds the
/// service's concurrency slot until it is done.
fn downstream_response(
    resp: Response<PooledBody>,
    route: &Route,
    rate: Option<(u32, u32)>,
    permit: Option<OwnedSemaphorePermit>,
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    route.response_headers.apply(&mut parts.headers);
    if let Some((limit, remaining)) = rate {
        parts
            .headers
            .insert(fields::RATELIMIT_LIMIT.clone(), fields::number_value(limit));
        parts.headers.insert(
            fields::RATELIMIT_REMAINING.clone(),
            fields::number_value(remaining),
        );
    }
    let mut body = ResponseBody::stream(body);
    if let Some(p) = permit {
        body.set_permit(p);
    }
    Response::from_parts(parts, body)
}

/// The service that answers a request: one of the snapshot's, by index (no reference
/// count taken and dropped per request), or a branch deployment, by its own name.
enum ServiceName {
    Main(usize),
    Branch(Arc<str>),
}

impl ServiceName {
    fn name<'a>(&'a self, snap: &'a Snapshot) -> Option<&'a Arc<str>> {
        match self {
            ServiceName::Main(i) => snap.upstreams.get(*i).map(|u| &u.name),
            ServiceName::Branch(name) => Some(name),
        }
    }
}

/// The matched route's name, for a log record or a span (only they need it owned).
fn route_name(snap: &Snapshot, route_id: Option<usize>) -> Option<Arc<str>> {
    route_id.and_then(|i| snap.route_names.get(i)).cloned()
}

/// Last phase: metrics; the log record rides on the body. (The request id goes back
/// to the client from the server: [`request_id`].)
fn finish(
    gw: &Gateway,
    snap: &Snapshot,
    resp: &mut Response<ResponseBody>,
    ctx: RequestCtx,
    method: &http::Method,
    error: Option<&'static str>,
    started: Instant,
) {
    let status = resp.status().as_u16();
    let m = &gw.metrics;
    let service = ctx.service.as_ref().and_then(|s| s.name(snap));
    let metric_service = ctx.metric_service.as_ref().or(service);
    let series = ctx
        .route_id
        .and_then(|i| snap.route_series.get(i))
        .unwrap_or(m.unrouted());
    m.request_on(
        series,
        metric_service,
        method,
        status,
        started.elapsed().as_secs_f64(),
    );
    if let Some(code) = error {
        m.error(code);
    }
    if let Some(service) = metric_service {
        if let Some(t) = ctx.upstream_time {
            m.upstream_on(series, service, t.as_secs_f64());
        }
        for _ in 0..ctx.connect_failures {
            m.connect_failure(service);
        }
        for _ in 0..ctx.retries {
            m.retry(service);
        }
        if ctx.budget_exhausted {
            m.budget_exhausted(service);
        }
    }
    if let Some(mut span) = ctx.span {
        span.status = status;
        span.error = error;
        span.route = route_name(snap, ctx.route_id);
        span.service = service.cloned();
        resp.body_mut().set_span(span);
    }
    if let Some(mut record) = ctx.record {
        record.status = status;
        record.error = error;
        record.route = route_name(snap, ctx.route_id);
        record.service = service.cloned();
        record.upstream = ctx.upstream_time;
        record.branch = ctx.branch;
        record.branch_fallback = ctx.branch_fallback;
        record.bucket = ctx.choice.and_then(|c| c.bucket);
        resp.body_mut().set_record(record);
    }
}

/// The request's id: the client's `x-request-id` when it is short and plain, else a
/// new one. [`serve`] hands it to the server that took the request, which puts it on
/// the answer: `server::h1` writes it after the answer's fields (and leaves out any the
/// upstream sent), hyper's servers get it inserted into the answer's map. Inserting it
/// in `finish`, a hashed insert of a custom name, cost about 340 instructions per
/// request (callgrind); carried on the body instead, the larger answer cost more in
/// copies than that.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    match fields::get(headers, &X_REQUEST_ID) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => new_request_id(),
    }
}
