//! Validated configuration: what the rest of the gateway reads.
//!
//! Every value here has been checked; types make the remaining invalid states hard to
//! express (a route points at a service by index, hosts are lower-case, paths are
//! normalised). Built only by [`super::validate`].

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;

/// The whole validated file.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub server: Server,
    pub defaults: Defaults,
    /// Services in name order; routes refer to them by index.
    pub services: Vec<Service>,
    /// Routes in file order; shared with the snapshot's router (one copy per table:
    /// cloning and freeing 10,000 routes a second time was ~8% of a reload).
    pub routes: std::sync::Arc<[Route]>,
    pub tracing: Tracing,
    /// `[dns] servers`: who resolves upstream names; empty: the system's resolv.conf.
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// `[canary]` and `[branches]`: gateway-wide traffic-policy settings.
    pub policy: crate::policy::GlobalPolicy,
    /// Certificates of the HTTPS listener.
    pub tls: Tls,
    /// `[auth.NAME]` policies in name order; routes refer to them by index.
    pub auth: Vec<AuthPolicy>,
    /// `[identity]`: the token the gateway mints for upstreams, when configured.
    pub identity: Option<Identity>,
}

/// `[tls]`: what the HTTPS listener serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// Certificate/key pairs; the one for a handshake is chosen by SNI among their SANs.
    pub certificates: Vec<CertPair>,
    /// The name whose certificate answers handshakes without SNI or with an unknown
    /// name; `None`: the first certificate.
    pub default: Option<String>,
    /// `Strict-Transport-Security` value for answers on the HTTPS listener.
    pub hsts: Option<HeaderValue>,
    /// Plain-HTTP requests for these hosts are redirected to the HTTPS listener.
    pub redirect_http: RedirectHttp,
    /// The public HTTPS port for those redirects (the listener's port is often not the
    /// one clients reach through a load balancer); 443 is left out of the URL.
    pub redirect_port: u16,
}

/// Which hosts the plain listener sends to HTTPS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RedirectHttp {
    /// None (the default).
    #[default]
    Off,
    /// Every host (`redirect_http = ["*"]`).
    All,
    /// These hosts.
    Hosts(Vec<HostMatch>),
}

impl RedirectHttp {
    /// Is a plain-HTTP request for `host` (normalised) redirected?
    pub fn covers(&self, host: Option<&str>) -> bool {
        match self {
            RedirectHttp::Off => false,
            RedirectHttp::All => true,
            RedirectHttp::Hosts(hosts) => host.is_some_and(|h| hosts.iter().any(|m| m.matches(h))),
        }
    }
}

/// One `[[tls.certificates]]` entry. Relative paths are relative to the config file's
/// directory ([`Config::resolve_paths`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where `cert` and `key` are written in the file, for `check` findings.
    pub cert_span: Range<usize>,
    pub key_span: Range<usize>,
}

/// Wire protocol towards a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// HTTP/1.1 over TCP (pooled keep-alive connections).
    #[default]
    Http1,
    /// HTTP/2 over TCP with prior knowledge; one shared connection per endpoint.
    H2c,
    /// HTTP/2 over TLS (ALPN h2); one shared connection per endpoint.
    H2,
    /// HTTP/1.1 over TLS.
    Https,
}

impl Protocol {
    /// HTTP/2 towards the upstream (`h2c`, `h2`)?
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::H2c | Protocol::H2)
    }

    /// Does this protocol need TLS towards the upstream?
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::H2 | Protocol::Https)
    }
}

/// TLS towards an upstream (`h2` and `https` services).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UpstreamTls {
    /// CA bundle to verify the upstream's certificate with; `None`: system roots.
    pub ca: Option<PathBuf>,
    /// Client certificate and key for mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// SNI and verified name; `None`: the first endpoint's host.
    pub server_name: Option<String>,
    /// Where `ca`, `client_cert` and `client_key` are written, for `check` findings.
    pub spans: [SourceSpan; 3],
}

/// Where a value was written in the file. Ignored by equality and hashing: moving a
/// service to other lines must not make it a changed service (with a new pool).
#[derive(Debug, Clone, Default)]
pub struct SourceSpan(pub Option<Range<usize>>);

impl PartialEq for SourceSpan {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for SourceSpan {}

impl std::hash::Hash for SourceSpan {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl Config {
    /// Whether the config names certificate or CA files, which every parse reads and
    /// checks ([`crate::tls::check_files`]).
    pub fn names_tls_files(&self) -> bool {
        !self.tls.certificates.is_empty()
            || self
                .services
                .iter()
                .any(|s| s.tls.ca.is_some() || s.tls.client_cert.is_some())
    }

    /// Make relative file paths (certificates, CA bundles) relative to `dir`, the
    /// directory of the config file, so that they do not depend on the working
    /// directory of the process.
    pub fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for c in &mut self.tls.certificates {
            fix(&mut c.cert);
            fix(&mut c.key);
        }
        for s in &mut self.services {
            if let Some(ca) = &mut s.tls.ca {
                fix(ca);
            }
            if let Some((c, k)) = &mut s.tls.client_cert {
                fix(c);
                fix(k);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Plain HTTP listener (HTTP/1.1 and h2c).
    pub http: Option<SocketAddr>,
    /// TLS listener (HTTP/1.1 and HTTP/2 by ALPN); needs `[[tls.certificates]]`.
    pub https: Option<SocketAddr>,
    /// Admin listener; loopback unless configured otherwise.
    pub admin: Option<SocketAddr>,
}

/// Downstream (client side) behaviour.
#[derive(Debug, Clone)]
pub struct Server {
    /// How long in-flight requests may run after SIGTERM before the process exits anyway.
    pub drain_timeout: Duration,
    /// A client must send its complete request head within this time (slowloris guard).
    pub header_read_timeout: Duration,
    /// Longest pause between two pieces of a request body (slow-POST guard); 408.
    pub body_read_timeout: Duration,
    /// Largest request body in bytes, unless a route says otherwise; 413.
    pub max_body: u64,
    /// Longest request target (path and query) in bytes; 414.
    pub max_uri_bytes: usize,
    /// Largest request head in bytes; larger ones get 431.
    pub max_header_bytes: usize,
    /// Most header fields in a request.
    pub max_headers: usize,
    /// Most concurrently open client connections; more wait in the accept queue.
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-*` headers are kept and appended to; everyone else's are
    /// replaced. Empty: trust nobody (the edge default).
    pub trusted_proxies: Vec<IpNet>,
    /// Access log format.
    pub access_log: AccessLog,
    /// An upgraded connection (WebSocket) idle this long in both directions is closed.
    pub upgrade_idle_timeout: Duration,
}

/// Access-log settings: format and the fields to write, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub format: LogFormat,
    pub fields: std::sync::Arc<[LogField]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line on stdout.
    Json,
    /// Labeled tab-separated values (fluentd's `ltsv` parser), one line per request.
    Ltsv,
    /// No access log.
    Off,
}

macro_rules! log_fields {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// A selectable access-log field.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum LogField { $($variant),* }

        impl LogField {
            /// Every field, in the default order.
            pub const ALL: &'static [LogField] = &[$(LogField::$variant),*];

            /// The key in JSON / the label in LTSV.
            pub fn name(self) -> &'static str {
                match self { $(LogField::$variant => $name),* }
            }

            pub fn from_name(s: &str) -> Option<LogField> {
                match s { $($name => Some(LogField::$variant),)* _ => None }
            }
        }
    };
}

log_fields! {
    Time => "time",
    RequestId => "request_id",
    TraceId => "trace_id",
    Client => "client",
    Method => "method",
    Host => "host",
    Path => "path",
    Route => "route",
    Service => "service",
    Endpoint => "endpoint",
    Status => "status",
    Error => "error",
    DurationMs => "duration_ms",
    UpstreamMs => "upstream_ms",
    Attempts => "attempts",
    Retries => "retries",
    BytesIn => "bytes_in",
    BytesOut => "bytes_out",
    Branch => "branch",
    BranchFallback => "branch_fallback",
    Bucket => "canary_bucket",
}

/// `[tracing]`: which requests are sampled and where their spans go.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// OTLP/HTTP endpoint for spans; no export when `None`.
    pub otlp: Option<http::Uri>,
    /// Share of new traces (no valid `traceparent` from the client) that are sampled;
    /// a continued trace keeps the caller's sampled flag.
    pub sample_ratio: f64,
    pub service_name: String,
    pub protocol: OtlpProtocol,
}

/// OTLP transport: protobuf over HTTP POST (`/v1/traces`) or gRPC (`TraceService/Export`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    #[default]
    HttpProtobuf,
    Grpc,
}

impl Default for Tracing {
    fn default() -> Self {
        Self {
            otlp: None,
            sample_ratio: 1.0,
            service_name: "switchyard".into(),
            protocol: OtlpProtocol::HttpProtobuf,
        }
    }
}

/// Upstream defaults that every service and route inherits.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub connect_timeout: Duration,
    /// Time until the upstream's response head arrives, retries included.
    pub request_timeout: Duration,
    /// Idle pooled upstream connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per endpoint.
    pub pool_max_idle: usize,
    pub retry: Retry,
}

/// Retry policy. Connection failures are retried for every method (no byte reached the
/// upstream); resets, 502/503/504 and per-try timeouts only for idempotent methods.
/// A request body can be sent again only if it was buffered: bodies with a declared
/// length up to `buffer_body` are read whole first; larger or chunked ones stream and
/// are not retried.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Retry {
    /// Total tries, the first included (1 = no retry).
    pub attempts: u32,
    /// Retry when the TCP connect fails.
    pub on_connect_failure: bool,
    /// Retry when the connection breaks before a response head arrives.
    pub on_reset: bool,
    /// Retry on these upstream statuses (502, 503, 504); 504 also covers per-try timeouts.
    pub on_status: Vec<u16>,
    /// Retries may add at most this share on top of live requests (per service).
    pub budget_percent: u32,
    /// Time limit of one try; `None`: only the route timeout applies.
    pub per_try_timeout: Option<Duration>,
    /// Base of the jittered exponential backoff between tries.
    pub backoff: Duration,
    /// Largest declared body that is buffered for retries (0: never buffer).
    pub buffer_body: u64,
}

/// One upstream service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    /// Wire protocol to the endpoints.
    pub protocol: Protocol,
    /// TLS settings for `h2` and `https`.
    pub tls: UpstreamTls,
    pub connect_timeout: Duration,
    /// How often DNS names among the endpoints are resolved again.
    pub dns_refresh: Duration,
    /// Concurrency limit: (max in flight, max waiting). `None`: unlimited.
    pub concurrency: Option<(u32, u32)>,
    /// Passive outlier ejection; `None`: off.
    pub outlier: Option<Outlier>,
    /// Active health checks; `None`: off.
    pub health_check: Option<HealthCheck>,
    /// Explicit branch deployments, by branch name (sorted).
    pub branches: Vec<(String, Vec<Endpoint>)>,
    /// `branch_endpoint` template: (host with `{branch}`, port).
    pub branch_endpoint: Option<(String, u16)>,
}

/// Eject an endpoint after `consecutive_failures` failures in a row (5xx answers,
/// connect failures, resets, timeouts) for `base_ejection` x 2^(times ejected before),
/// at most 5 minutes; never more than `max_ejection_percent` of the endpoints (but one
/// of two may go).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Outlier {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// `GET path` on every endpoint every `interval`; `unhealthy` failures in a row take an
/// endpoint out, `healthy` successes in a row bring it back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
}

/// `host:port` of an upstream; the host is an IP literal or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Set when `host` is an IP literal: no DNS needed.
    pub addr: Option<SocketAddr>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(a) => write!(f, "{a}"),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostMatch {
    /// Lower-case host name.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`: one or more labels before it.
    Wildcard(String),
}

impl HostMatch {
    /// Does this pattern match the already normalised request host?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h == host,
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// The whole normalised path equals this.
    Exact(String),
    /// The path starts with this on a segment boundary; stored without trailing `/`
    /// (except the root prefix `/`).
    Prefix(String),
}

impl PathMatch {
    /// The path text, for display and rank.
    pub fn as_str(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
        }
    }

    /// Does this match the normalised path?
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => prefix_matches(p, path),
        }
    }
}

/// Prefix match on segment boundaries: `/a` matches `/a`, `/a/`, `/a/b`, not `/ab`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// One route, in the order of the file.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub host: Option<HostMatch>,
    pub path: PathMatch,
    /// Empty: any method.
    pub methods: Vec<Method>,
    /// Exact value per (lower-case) header name.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Exact (decoded) value per query parameter; the first occurrence counts.
    pub query: Vec<(String, String)>,
    /// What the route does with a request it matched.
    pub action: Action,
    /// Applied to the request before the gateway sets its own headers.
    pub request_headers: HeaderFilter,
    /// Applied to the upstream's response.
    pub response_headers: HeaderFilter,
    /// Index into `Config::auth`: the JWT policy requests must pass.
    pub auth: Option<usize>,
    /// Position in the file (0-based), the last tie-breaker.
    pub order: usize,
    /// Byte span of the route's table in the source, for messages.
    pub span: Range<usize>,
}

/// A route either forwards to a backend or answers with a redirect itself.
#[derive(Debug, Clone)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
}

/// Forwarding to one of the route's backends.
#[derive(Debug, Clone)]
pub struct Forward {
    /// One backend (`service = …`) or several by weight (`split = […]`).
    pub backends: Vec<Backend>,
    /// Sum of the weights; 0 means the route answers 500 (Gateway API).
    pub total_weight: u64,
    pub path: PathRewrite,
    /// Replaces `Host` towards the upstream.
    pub host: Option<HeaderValue>,
    /// Overrides `defaults.request_timeout`.
    pub timeout: Option<Duration>,
    /// Overrides `[server] max_body`.
    pub max_body: Option<u64>,
    pub rate_limit: Option<RateLimit>,
    /// Canary, sticky split and mirror; `None` for a plain route (the hot path then
    /// pays nothing for policies).
    pub policy: Option<Box<crate::policy::RoutePolicy>>,
}

/// A token bucket per key: `per_second` refill, `burst` capacity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
    pub key: RateLimitKey,
}

/// What identifies one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateLimitKey {
    /// The client's IP address (after `trusted_proxies`: the connection's peer).
    ClientIp,
    /// The verified token's `sub` (`jwt:sub`); anonymous requests share their client
    /// IP's bucket.
    JwtSub,
    /// A request header's value; requests without it share their client IP's bucket.
    Header(HeaderName),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Index into [`Config::services`].
    pub service: usize,
    pub weight: u32,
}

impl Forward {
    /// The backend for one request: weighted random among those with weight > 0.
    /// `None` when every weight is 0.
    pub fn pick(&self) -> Option<&Backend> {
        if let [only] = self.backends.as_slice() {
            return (only.weight > 0).then_some(only);
        }
        if self.total_weight == 0 {
            return None;
        }
        let mut n = fastrand::u64(..self.total_weight);
        for b in &self.backends {
            if n < u64::from(b.weight) {
                return Some(b);
            }
            n -= u64::from(b.weight);
        }
        None
    }
}

/// How the path changes on the way to the upstream (or into a redirect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// Unchanged.
    Keep,
    /// `strip_prefix`: remove this leading path (segment-aligned).
    Strip(String),
    /// `prefix`: replace the route's matched prefix (Gateway API ReplacePrefixMatch);
    /// stored without trailing `/`, so `"/"` and `""` are both `""`.
    ReplacePrefix(String),
    /// `path`: replace the whole path (ReplaceFullPath).
    ReplaceFull(String),
}

impl PathRewrite {
    /// Apply to a normalised `path` matched by `matched`.
    pub fn apply<'a>(&self, matched: &PathMatch, path: &'a str) -> std::borrow::Cow<'a, str> {
        match self {
            PathRewrite::Keep => path.into(),
            PathRewrite::Strip(p) => match path.strip_prefix(p.as_str()) {
                Some("") => "/".into(),
                Some(rest) if rest.starts_with('/') => rest.into(),
                _ => path.into(),
            },
            PathRewrite::ReplacePrefix(replacement) => {
                let prefix = match matched {
                    PathMatch::Prefix(p) if p != "/" => p.as_str(),
                    _ => "",
                };
                let rest = path.strip_prefix(prefix).unwrap_or(path);
                let out = format!("{replacement}{rest}");
                if out.is_empty() {
                    "/".into()
                } else {
                    out.into()
                }
            }
            PathRewrite::ReplaceFull(p) => p.clone().into(),
        }
    }
}

/// The route answers with a redirect (Gateway API RequestRedirect).
#[derive(Debug, Clone)]
pub struct Redirect {
    /// `http` or `https`; default: the request's.
    pub scheme: Option<String>,
    /// Default: the request's host.
    pub host: Option<String>,
    /// Default: the well-known port of a configured scheme, else the request's port.
    pub port: Option<u16>,
    /// `Keep`, `ReplaceFull` or `ReplacePrefix`.
    pub path: PathRewrite,
    /// 301, 302 (default), 303, 307 or 308.
    pub status: u16,
}

/// Header changes of one direction: remove, then set (overwrite), then add (append).
#[derive(Debug, Clone, Default)]
pub struct HeaderFilter {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderFilter {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A validated `[auth.NAME]` policy; its key material is already read and parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuthPolicy {
    pub name: String,
    /// Accepted `iss` values; empty: `iss` is not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// The allow-list; never empty, never mixes HMAC with public-key algorithms.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub keys: KeySource,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// `false`: a request without a token passes anonymously (a bad token never does).
    pub required: bool,
    /// Also take the token from this cookie when there is no `Authorization: Bearer`.
    pub cookie: Option<String>,
    /// Claim -> header towards the upstream.
    pub forward_claims: Vec<(String, HeaderName)>,
    /// Claim -> value the token must carry (`scope` is a space-separated list; array
    /// claims must contain the value); 403 otherwise.
    pub require: Vec<(String, String)>,
    /// Callers allowed (by `sub` or the `service` claim); empty: any verified caller.
    pub allow: Vec<String>,
    /// Longer tokens are refused before any parsing.
    pub max_token_bytes: usize,
}

/// Where a policy's verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// A JWKS file, read when the config is (re)loaded.
    File(Vec<jsonwebtoken::jwk::Jwk>),
    /// A JWKS URL (`http` or `https`), fetched at start, refreshed every `refresh`,
    /// and refetched on an unknown `kid` at most once per `refetch`.
    Url {
        url: http::Uri,
        refresh: Duration,
        refetch: Duration,
        /// `jwks_ca`: the https server is verified against these instead of the
        /// system's root certificates.
        ca: Option<CaBundle>,
    },
    /// An HMAC secret read from `secret_file`.
    Secret(Secret),
}

/// The certificates of a PEM CA bundle, read when the config is (re)loaded.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CaBundle(pub Vec<rustls_pki_types::CertificateDer<'static>>);

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaBundle({} certificates)", self.0.len())
    }
}

/// Secret bytes that never show in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// `[identity]`: how the gateway signs the identity token it sends upstream.
#[derive(Clone)]
pub struct Identity {
    pub algorithm: jsonwebtoken::Algorithm,
    pub kid: String,
    pub key: std::sync::Arc<jsonwebtoken::EncodingKey>,
    pub ttl: Duration,
    /// `x-switchyard-identity` (the default) or `authorization` (then `Bearer …`).
    pub header: HeaderName,
    /// Claims of the user's token copied into the minted one.
    pub claims: Vec<String>,
    /// Public keys (current first, then `previous_keys`), served as the JWKS.
    pub public: Vec<jsonwebtoken::jwk::Jwk>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("ttl", &self.ttl)
            .field("header", &self.header)
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// The forwarding action, if the route forwards.
    pub fn forward(&self) -> Option<&Forward> {
        match &self.action {
            Action::Forward(f) => Some(f),
            Action::Redirect(_) => None,
        }
    }

    /// The upstream path for a matched normalised `path`.
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.action {
            Action::Forward(f) => f.path.apply(&self.path, path),
            Action::Redirect(r) => r.path.apply(&self.path, path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Gateway API's ReplacePrefixMatch table (HTTPPathModifier docs), row by row.
    #[test]
    fn rewrite_prefix_slash_rules() {
        let rows = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
        ];
        for (path, prefix, replacement, expected) in rows {
            let matched = PathMatch::Prefix(prefix.trim_end_matches('/').to_string());
            let rw = PathRewrite::ReplacePrefix(replacement.trim_end_matches('/').to_string());
            assert_eq!(
                rw.apply(&matched, path),
                expected,
                "{path} {prefix} {replacement}"
            );
        }
    }

    #[test]
    fn rewrite_prefix_of_the_root_prefix() {
        let matched = PathMatch::Prefix("/".into());
        let rw = PathRewrite::ReplacePrefix("/v2".into());
        assert_eq!(rw.apply(&matched, "/a/b"), "/v2/a/b");
        assert_eq!(rw.apply(&matched, "/"), "/v2/");
    }

    #[test]
    fn replace_full_path_ignores_the_request_path() {
        let rw = PathRewrite::ReplaceFull("/index".into());
        assert_eq!(
            rw.apply(&PathMatch::Prefix("/a".into()), "/a/b/c"),
            "/index"
        );
    }

    #[test]
    fn weight_zero_backends_get_nothing() {
        let f = Forward {
            backends: vec![
                Backend {
                    service: 0,
                    weight: 0,
                },
                Backend {
                    service: 1,
                    weight: 3,
                },
            ],
            total_weight: 3,
            path: PathRewrite::Keep,
            host: None,
            timeout: None,
            max_body: None,
            rate_limit: None,
            policy: None,
        };
        for _ in 0..1000 {
            assert_eq!(f.pick().map(|b| b.service), Some(1));
        }
        let none = Forward {
            backends: vec![Backend {
                service: 0,
                weight: 0,
            }],
            total_weight: 0,
            ..f
        };
        assert!(none.pick().is_none());
    }
}
