//! Validated configuration: what the rest of the gateway reads.
//!
//! Every value here has been checked; types make the remaining invalid states hard to
//! express (a route points at a service by index, hosts are lower-case, paths are
//! normalised). Built only by [`super::validate`].

use std::net::SocketAddr;
use std::ops::Range;
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
    /// Routes in file order.
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Plain HTTP listener (HTTP/1.1 and h2c).
    pub http: Option<SocketAddr>,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    /// One JSON object per line on stdout.
    Json,
    /// No access log.
    Off,
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

/// Retry policy. Only connection failures are retried so far: they are safe for every
/// method because no byte reached the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Total tries, the first included (1 = no retry).
    pub attempts: u32,
    /// Retry when the TCP connect fails.
    pub on_connect_failure: bool,
    /// Retries may add at most this share on top of live requests.
    pub budget_percent: u32,
}

/// One upstream service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub connect_timeout: Duration,
    /// How often DNS names among the endpoints are resolved again.
    pub dns_refresh: Duration,
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
    /// Index into [`Config::services`].
    pub service: usize,
    /// Removed from the front of the path before forwarding.
    pub strip_prefix: Option<String>,
    /// Overrides `defaults.request_timeout`.
    pub timeout: Option<Duration>,
    /// Position in the file (0-based), the last tie-breaker.
    pub order: usize,
    /// Byte span of the route's table in the source, for messages.
    pub span: Range<usize>,
}

impl Route {
    /// The upstream path for a matched normalised `path`: `strip_prefix` applied.
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.strip_prefix {
            Some(p) if p != "/" => match path.strip_prefix(p.as_str()) {
                Some("") => "/".into(),
                Some(rest) if rest.starts_with('/') => rest.into(),
                _ => path.into(),
            },
            _ => path.into(),
        }
    }
}
