//! Prometheus metrics (`prometheus-client`), served by the admin API at `/metrics`.
//!
//! Labels are bounded by the config, never by traffic: route and service names, the
//! method folded to a fixed set, the status class. A request for an unknown path is
//! counted under `route="", service=""`, not under its path.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, OnceLock};

use http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A config-defined name (route, service) as a label value without copying it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, Default)]
pub struct Name(pub Option<Arc<str>>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0.as_deref().unwrap_or(""), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Name,
    service: Name,
    method: &'static str,
    code_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    route: Name,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    /// The certificate file, as configured.
    certificate: String,
    /// The certificate's first DNS name.
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HashLabels {
    hash: String,
}

/// The mirror counters, shared with detached shadow tasks.
#[derive(Clone)]
pub struct MirrorCounter(Family<MirrorLabels, Counter>);

impl MirrorCounter {
    /// Count one outcome (see [`Metrics::mirror`]).
    pub fn inc(&self, route: &Arc<str>, result: &'static str) {
        self.0
            .get_or_create(&MirrorLabels {
                route: Name(Some(route.clone())),
                result,
            })
            .inc();
    }
}

/// The `method` label values, in [`method_index`] order.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
];
/// The `code_class` label values, in [`class_index`] order.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The per-request series of one route, resolved on first use and then kept: answering
/// a request increments atomics instead of hashing label sets into the families.
/// Built with each snapshot, so a route removed by a reload takes its handles with it
/// (the series it already exported stay, as they always did). A series is created in
/// its family exactly when the family lookup would have created it: on the first
/// answer that counts in it.
///
/// The handles belong to the [`Metrics`] that first resolves them; a snapshot serves
/// one gateway.
#[derive(Debug)]
pub struct RouteSeries {
    route: Name,
    duration: OnceLock<Histogram>,
    /// Answers given before a service was chosen (no route, refused, redirected).
    unserved: ServiceSeries,
    /// One per distinct service the route sends to.
    services: Box<[ServiceSeries]>,
}

#[derive(Debug)]
struct ServiceSeries {
    service: Name,
    upstream: OnceLock<Histogram>,
    /// `[method][code class]`, allocated on the pair's first answer.
    requests: OnceLock<Box<RequestCells>>,
}

type RequestCells = [OnceLock<Counter>; METHODS.len() * CLASSES.len()];

impl ServiceSeries {
    fn new(service: Name) -> Self {
        Self {
            service,
            upstream: OnceLock::new(),
            requests: OnceLock::new(),
        }
    }
}

impl RouteSeries {
    /// The series of `route` (`None`: requests that matched no route), answered by
    /// `services` (repeats are ignored).
    pub fn new(route: Option<Arc<str>>, services: impl IntoIterator<Item = Arc<str>>) -> Self {
        let mut list: Vec<ServiceSeries> = Vec::new();
        for s in services {
            if !list.iter().any(|l| l.service.0.as_deref() == Some(&*s)) {
                list.push(ServiceSeries::new(Name(Some(s))));
            }
        }
        Self {
            route: Name(route),
            duration: OnceLock::new(),
            unserved: ServiceSeries::new(Name(None)),
            services: list.into_boxed_slice(),
        }
    }

    fn service(&self, service: Option<&Arc<str>>) -> Option<&ServiceSeries> {
        match service {
            None => Some(&self.unserved),
            Some(name) => self
                .services
                .iter()
                .find(|s| s.service.0.as_deref() == Some(&**name)),
        }
    }
}

/// Every metric of the gateway; lives as long as the process (survives reloads).
pub struct Metrics {
    registry: Registry,
    /// The series of requests that matched no route.
    unrouted: RouteSeries,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    upstream_duration: Family<ServiceLabels, Histogram>,
    in_flight: Gauge,
    connect_failures: Family<ServiceLabels, Counter>,
    retries: Family<ServiceLabels, Counter>,
    budget_exhausted: Family<ServiceLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    config_info: Family<HashLabels, Gauge>,
    config_loaded: Gauge<f64, AtomicU64>,
    endpoints: Family<ServiceLabels, Gauge<i64, AtomicI64>>,
    guard_tripped: Family<RouteLabels, Counter>,
    mirror: Family<MirrorLabels, Counter>,
    cert_not_after: Family<CertLabels, Gauge<i64, AtomicI64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s, doubling.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, service, method and status class",
            requests.clone(),
        );
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from the request head to the response head, by route",
            duration.clone(),
        );
        let upstream_duration = Family::<ServiceLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "upstream_duration_seconds",
            "Time the upstream took to answer with a response head, retries included, by service",
            upstream_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests being proxied now",
            in_flight.clone(),
        );
        let connect_failures = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "upstream_connect_failures",
            "Failed connection attempts to upstream endpoints, by service",
            connect_failures.clone(),
        );
        let retries = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Retries sent, by service",
            retries.clone(),
        );
        let budget_exhausted = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "retry_budget_exhausted",
            "Retries not sent because the service's retry budget was used up",
            budget_exhausted.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "errors",
            "Answers generated by the gateway itself, by error code",
            errors.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reload attempts by result (success, rejected)",
            reloads.clone(),
        );
        let config_info = Family::<HashLabels, Gauge>::default();
        registry.register(
            "config_info",
            "1 for the hash of the active config",
            config_info.clone(),
        );
        let config_loaded = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "config_loaded_timestamp_seconds",
            "Unix time the active config was loaded",
            config_loaded.clone(),
        );
        let endpoints = Family::<ServiceLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "upstream_endpoints",
            "Known endpoint addresses per service",
            endpoints.clone(),
        );
        let guard_tripped = Family::<RouteLabels, Counter>::default();
        registry.register(
            "canary_guard_tripped",
            "Times a route's canary guard cut the canary to weight 0",
            guard_tripped.clone(),
        );
        let mirror = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "mirror_requests",
            "Mirrored requests by route and result: match, mismatch, sent (not compared), dropped (no free slot), skipped (streamed body), failed (no shadow answer), incomplete (no complete primary answer)",
            mirror.clone(),
        );
        let cert_not_after = Family::<CertLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "tls_certificate_not_after_seconds",
            "Unix time at which a certificate in service expires, by certificate file",
            cert_not_after.clone(),
        );
        Metrics {
            unrouted: RouteSeries::new(None, []),
            guard_tripped,
            mirror,
            registry,
            cert_not_after,
            requests,
            duration,
            upstream_duration,
            in_flight,
            connect_failures,
            retries,
            budget_exhausted,
            errors,
            reloads,
            config_info,
            config_loaded,
            endpoints,
        }
    }

    /// Count what happens to OTLP spans (their counters outlive reloads).
    pub fn register_spans(&mut self, c: &crate::observe::otlp::SpanCounters) {
        self.registry.register(
            "trace_spans_exported",
            "Spans accepted by the OTLP collector",
            c.exported.clone(),
        );
        self.registry.register(
            "trace_spans_dropped",
            "Spans dropped because the export queue was full",
            c.dropped.clone(),
        );
        self.registry.register(
            "trace_spans_failed",
            "Spans in export requests that failed",
            c.failed.clone(),
        );
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A request entered the proxy; the guard counts it out again.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// One answered request.
    pub fn request(
        &self,
        route: &Option<Arc<str>>,
        service: &Option<Arc<str>>,
        method: &Method,
        status: u16,
        seconds: f64,
    ) {
        let route = Name(route.clone());
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                service: Name(service.clone()),
                method: method_label(method),
                code_class: class(status),
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
    }

    /// The series of requests that matched no route.
    pub fn unrouted(&self) -> &RouteSeries {
        &self.unrouted
    }

    /// One answered request, counted through the route's resolved handles: the same
    /// series as [`Metrics::request`] with `series`' route.
    pub fn request_on(
        &self,
        series: &RouteSeries,
        service: Option<&Arc<str>>,
        method: &Method,
        status: u16,
        seconds: f64,
    ) {
        let Some(s) = series.service(service) else {
            // Not a service of the route (not expected): the family lookup.
            let service = service.cloned();
            return self.request(&series.route.0, &service, method, status, seconds);
        };
        let (m, c) = (method_index(method), class_index(status));
        let cells = s
            .requests
            .get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
        cells[m * CLASSES.len() + c]
            .get_or_init(|| {
                self.requests.get_or_create_owned(&RequestLabels {
                    route: series.route.clone(),
                    service: s.service.clone(),
                    method: METHODS[m],
                    code_class: CLASSES[c],
                })
            })
            .inc();
        series
            .duration
            .get_or_init(|| {
                self.duration.get_or_create_owned(&RouteLabels {
                    route: series.route.clone(),
                })
            })
            .observe(seconds);
    }

    /// The upstream's time for a request of the route (see [`Metrics::upstream`]).
    pub fn upstream_on(&self, series: &RouteSeries, service: &Arc<str>, seconds: f64) {
        let Some(s) = series
            .services
            .iter()
            .find(|s| s.service.0.as_deref() == Some(&**service))
        else {
            return self.upstream(service, seconds);
        };
        s.upstream
            .get_or_init(|| {
                self.upstream_duration.get_or_create_owned(&ServiceLabels {
                    service: s.service.clone(),
                })
            })
            .observe(seconds);
    }

    /// A route's canary guard tripped.
    pub fn canary_guard_tripped(&self, route: &Arc<str>) {
        self.guard_tripped
            .get_or_create(&RouteLabels {
                route: Name(Some(route.clone())),
            })
            .inc();
    }

    /// A handle on the mirror counters for detached shadow tasks.
    pub fn mirror_counter(&self) -> MirrorCounter {
        MirrorCounter(self.mirror.clone())
    }

    /// One mirrored request's outcome: `match`, `mismatch`, `sent` (not compared),
    /// `dropped` (no free slot) or `failed` (the shadow did not answer).
    pub fn mirror(&self, route: &Arc<str>, result: &'static str) {
        self.mirror
            .get_or_create(&MirrorLabels {
                route: Name(Some(route.clone())),
                result,
            })
            .inc();
    }

    pub fn upstream(&self, service: &Arc<str>, seconds: f64) {
        self.upstream_duration
            .get_or_create(&ServiceLabels {
                service: Name(Some(service.clone())),
            })
            .observe(seconds);
    }

    pub fn connect_failure(&self, service: &Arc<str>) {
        self.connect_failures
            .get_or_create(&ServiceLabels {
                service: Name(Some(service.clone())),
            })
            .inc();
    }

    pub fn retry(&self, service: &Arc<str>) {
        self.retries
            .get_or_create(&ServiceLabels {
                service: Name(Some(service.clone())),
            })
            .inc();
    }

    pub fn budget_exhausted(&self, service: &Arc<str>) {
        self.budget_exhausted
            .get_or_create(&ServiceLabels {
                service: Name(Some(service.clone())),
            })
            .inc();
    }

    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&ErrorLabels { code }).inc();
    }

    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// The active config changed: its hash becomes the only `config_info` series.
    pub fn config(&self, hash: &str, loaded_unix: f64) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&HashLabels {
                hash: hash.to_string(),
            })
            .set(1);
        self.config_loaded.set(loaded_unix);
    }

    /// The certificates in service now: one series per certificate (old ones removed).
    pub fn certificates(&self, certs: &[Arc<crate::tls::LoadedCert>]) {
        self.cert_not_after.clear();
        for c in certs {
            self.cert_not_after
                .get_or_create(&CertLabels {
                    certificate: c.cert_path.display().to_string(),
                    name: c.names.first().cloned().unwrap_or_default(),
                })
                .set(c.not_after);
        }
    }

    pub fn endpoints(&self, service: &Arc<str>, n: usize) {
        self.endpoints
            .get_or_create(&ServiceLabels {
                service: Name(Some(service.clone())),
            })
            .set(n as i64);
    }
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The method as a bounded label: the standard ones, everything else `other`.
pub fn method_label(m: &Method) -> &'static str {
    METHODS[method_index(m)]
}

/// Index of the method's label in [`METHODS`].
fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

fn class(status: u16) -> &'static str {
    CLASSES[class_index(status)]
}

/// Index of the status class's label in [`CLASSES`].
fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_bounded_labels() {
        let m = Metrics::new();
        let route = Some(Arc::from("users"));
        let svc = Some(Arc::from("users-svc"));
        for _ in 0..3 {
            m.request(&route, &svc, &Method::GET, 200, 0.002);
        }
        m.request(
            &None,
            &None,
            &Method::from_bytes(b"PURGE").unwrap(),
            404,
            0.0001,
        );
        let text = m.encode();
        assert!(
            text.contains(
                r#"switchyard_requests_total{route="users",service="users-svc",method="GET",code_class="2xx"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"switchyard_requests_total{route="",service="",method="other",code_class="4xx"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn route_series_count_what_the_family_lookup_counts() {
        let by_family = Metrics::new();
        let by_series = Metrics::new();
        let route = Some(Arc::from("users"));
        let svc: Option<Arc<str>> = Some(Arc::from("users-svc"));
        let other: Option<Arc<str>> = Some(Arc::from("elsewhere"));
        let series = RouteSeries::new(
            route.clone(),
            [
                Arc::from("users-svc"),
                Arc::from("users-svc"),
                Arc::from("b"),
            ],
        );
        let purge = Method::from_bytes(b"PURGE").unwrap();
        // The families are hash maps: the same lines, not in the same order.
        let lines = |m: &Metrics| {
            let mut l: Vec<String> = m.encode().lines().map(str::to_string).collect();
            l.sort();
            l
        };
        // Nothing is exported before the first answer.
        assert_eq!(lines(&by_series), lines(&by_family));
        let answers = [
            (&svc, &Method::GET, 200),
            (&svc, &Method::GET, 204),
            (&svc, &Method::POST, 503),
            (&None, &purge, 429),
            (&other, &Method::HEAD, 101),
            (&svc, &Method::GET, 200),
        ];
        for (service, method, status) in answers {
            by_family.request(&route, service, method, status, 0.002);
            by_series.request_on(&series, service.as_ref(), method, status, 0.002);
            if let Some(s) = service {
                by_family.upstream(s, 0.001);
                by_series.upstream_on(&series, s, 0.001);
            }
        }
        by_family.request(&None, &None, &Method::GET, 404, 0.001);
        by_series.request_on(by_series.unrouted(), None, &Method::GET, 404, 0.001);
        assert_eq!(lines(&by_series), lines(&by_family));
        let text = by_series.encode();
        assert!(
            text.contains(
                r#"switchyard_requests_total{route="users",service="users-svc",method="GET",code_class="2xx"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"switchyard_requests_total{route="",service="",method="GET",code_class="4xx"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn only_the_active_config_hash_is_reported() {
        let m = Metrics::new();
        m.config("aaaa", 1.0);
        m.config("bbbb", 2.0);
        let text = m.encode();
        assert!(
            text.contains(r#"switchyard_config_info{hash="bbbb"} 1"#),
            "{text}"
        );
        assert!(!text.contains("aaaa"), "{text}");
    }

    #[test]
    fn in_flight_goes_back_down() {
        let m = Metrics::new();
        {
            let _a = m.start();
            let _b = m.start();
            assert!(m.encode().contains("switchyard_requests_in_flight 2"));
        }
        assert!(m.encode().contains("switchyard_requests_in_flight 0"));
    }
}
