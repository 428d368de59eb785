//! Serde structs that mirror `routes.toml` one to one.
//!
//! Nothing here is validated beyond what serde does: every value that a later check has
//! to point at is wrapped in [`Spanned`] so that `switchyard check` can report the line
//! and column of the offending value. `deny_unknown_fields` everywhere: a misspelt key is
//! an error, never silently ignored.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A spanned string, the most common value in the file.
pub type SStr = Spanned<String>;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[listen]`: addresses to bind.
    #[serde(default)]
    pub listen: Option<Spanned<ListenFile>>,
    /// `[server]`: downstream limits, drain, forwarding trust, access log.
    #[serde(default)]
    pub server: Option<ServerFile>,
    /// `[defaults]`: upstream timeouts and pool settings inherited by every service.
    #[serde(default)]
    pub defaults: Option<DefaultsFile>,
    /// `[services.NAME]`.
    #[serde(default)]
    pub services: BTreeMap<SStr, Spanned<ServiceFile>>,
    /// `[[routes]]`, in file order. Boxed: a `RouteFile` is 1.7 KiB, and one vector of
    /// 10,000 of them (17 MiB, grown by doubling) cost the thread that parses a reload
    /// milliseconds of copying and page faults in single calls it cannot pause in
    /// (see `background`).
    #[serde(default)]
    pub routes: Vec<Spanned<Box<RouteFile>>>,
    /// `[tracing]`: sampling and OTLP span export.
    #[serde(default)]
    pub tracing: Option<TracingFile>,
    /// `[dns]`: the name servers for upstream names.
    #[serde(default)]
    pub dns: Option<DnsFile>,
    /// `[canary]`: gateway-wide canary settings (cohort key, force header, response header).
    #[serde(default)]
    pub canary: Option<Spanned<CanaryGlobalFile>>,
    /// `[branches]`: topic-branch routing by header or cookie.
    #[serde(default)]
    pub branches: Option<Spanned<BranchesFile>>,
    /// `[tls]`: certificates of the HTTPS listener.
    #[serde(default)]
    pub tls: Option<Spanned<TlsFile>>,
    /// `[auth.NAME]`: JWT policies that routes name with `auth = "NAME"`.
    #[serde(default)]
    pub auth: BTreeMap<SStr, Spanned<AuthPolicyFile>>,
    /// `[identity]`: the gateway-minted identity token sent to upstreams.
    #[serde(default)]
    pub identity: Option<Spanned<IdentityFile>>,
}

/// `[canary]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CanaryGlobalFile {
    /// `"header:x-user-id"` or `"cookie:uid"`: the user key of `sticky = "cohort"`.
    pub cohort_key: Option<SStr>,
    /// Header that forces a side (`always` / `never`); off when unset.
    pub force_header: Option<SStr>,
    /// Response header naming the service that answered; off when unset.
    pub service_header: Option<SStr>,
}

/// `[branches]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BranchesFile {
    pub header: Option<SStr>,
    pub cookie: Option<SStr>,
    /// Also read `baggage: branch=NAME` (W3C baggage); default true.
    pub baggage: Option<Spanned<bool>>,
    /// `"cidr:10.0.0.0/8,…"`, `"hmac"` or `"jwt-claim:NAME"`.
    pub gate: Option<SStr>,
    /// Key file for `gate = "hmac"`.
    pub hmac_key_file: Option<SStr>,
    /// Response header saying which deployment answered; default `x-switchyard-served-by`,
    /// `"off"` disables it.
    pub served_by_header: Option<SStr>,
    /// How long a template lookup (found or not) is cached; default `"10s"`.
    pub cache_ttl: Option<SStr>,
}

/// `canary = { service, weight, sticky, guard }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryFile {
    pub service: SStr,
    /// Percent of traffic, 0 to 100, up to two decimals.
    pub weight: Spanned<f64>,
    pub sticky: Option<SStr>,
    pub guard: Option<Spanned<GuardFile>>,
}

/// `guard = { max_error_ratio = 2.0, min_requests = 100, window = "60s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardFile {
    pub max_error_ratio: Spanned<f64>,
    pub min_requests: Option<Spanned<i64>>,
    pub window: Option<SStr>,
}

/// `mirror = { service, percent, compare, ignore, methods, max_in_flight, max_compare_body }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorFile {
    pub service: SStr,
    pub percent: Option<Spanned<f64>>,
    pub compare: Option<Spanned<bool>>,
    pub ignore: Option<Vec<SStr>>,
    pub methods: Option<Vec<SStr>>,
    pub max_in_flight: Option<Spanned<i64>>,
    /// Bodies larger than this are compared by hash; default `"1MiB"`.
    pub max_compare_body: Option<SStr>,
    /// Headers whose values are compared (besides status and body).
    pub headers: Option<Vec<SStr>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    /// `"IP:PORT"` or `"IP"` (port 53); default: `/etc/resolv.conf`.
    pub servers: Option<Vec<SStr>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    /// OTLP/HTTP traces endpoint, e.g. `"http://otel-collector:4318/v1/traces"`.
    pub otlp: Option<SStr>,
    /// Share of new traces that are sampled (0.0 ..= 1.0).
    pub sample_ratio: Option<Spanned<f64>>,
    /// `service.name` of the exported spans.
    pub service_name: Option<SStr>,
    /// `"http/protobuf"` (default) or `"grpc"`.
    pub otlp_protocol: Option<SStr>,
}

/// `[tls]` with `[[tls.certificates]]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    #[serde(default)]
    pub certificates: Vec<Spanned<CertificateFile>>,
    /// Name whose certificate answers clients without SNI or with an unknown name.
    pub default: Option<SStr>,
    /// `Strict-Transport-Security` value added to HTTPS answers, e.g. `"max-age=31536000"`.
    pub hsts: Option<SStr>,
    /// Hosts whose plain-HTTP requests are redirected to HTTPS (`"*"`: every host).
    pub redirect_http: Option<Vec<SStr>>,
    /// Port in the redirect's `Location`; default 443 (left out).
    pub redirect_port: Option<Spanned<i64>>,
}

/// `[[tls.certificates]] cert = "…", key = "…"` (PEM files).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    pub cert: SStr,
    pub key: SStr,
}

/// `[auth.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicyFile {
    /// Accepted `iss` values (one string or a list).
    pub issuer: Option<Spanned<OneOrMany>>,
    /// Accepted `aud` values; the token's `aud` must contain one.
    pub audiences: Option<Vec<SStr>>,
    pub algorithms: Spanned<Vec<SStr>>,
    /// `"file:jwks.json"`, `"http://…/jwks.json"` or `"https://…/jwks.json"`.
    pub jwks: Option<SStr>,
    /// PEM CA bundle an https `jwks` server is verified against (default: the
    /// system's root certificates).
    pub jwks_ca: Option<SStr>,
    /// HS256/384/512 shared secret, read from this file.
    pub secret_file: Option<SStr>,
    pub leeway: Option<SStr>,
    pub required: Option<Spanned<bool>>,
    pub cookie: Option<SStr>,
    pub forward_claims: Option<BTreeMap<SStr, SStr>>,
    pub require: Option<BTreeMap<SStr, SStr>>,
    /// Service names allowed to call (matched on `sub` or the `service` claim).
    pub allow: Option<Vec<SStr>>,
    pub max_token_bytes: Option<SStr>,
    /// How often a JWKS URL is fetched again in the background.
    pub refresh_interval: Option<SStr>,
    /// Least time between two fetches caused by unknown `kid`s.
    pub refetch_interval: Option<SStr>,
}

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `[identity]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// PEM file with the private signing key (PKCS#8).
    pub key: SStr,
    pub algorithm: SStr,
    pub kid: SStr,
    pub ttl: Option<SStr>,
    pub header: Option<SStr>,
    /// Claims of the verified user token copied into the minted one.
    pub claims: Option<Vec<SStr>>,
    /// Keys still published at `/.well-known/jwks.json` after a rotation.
    pub previous_keys: Option<Vec<Spanned<PreviousKeyFile>>>,
}

/// `previous_keys = [{ key = "old.pem", kid = "2025-01" }]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousKeyFile {
    pub key: SStr,
    pub kid: SStr,
    pub algorithm: Option<SStr>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    pub http: Option<SStr>,
    pub https: Option<SStr>,
    pub admin: Option<SStr>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub drain_timeout: Option<SStr>,
    pub header_read_timeout: Option<SStr>,
    pub body_read_timeout: Option<SStr>,
    /// `"32MiB"`, `"512KiB"` or a number of bytes.
    pub max_body: Option<SStr>,
    pub max_uri_bytes: Option<Spanned<i64>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub trusted_proxies: Option<Vec<SStr>>,
    pub access_log: Option<SStr>,
    pub access_log_fields: Option<Vec<SStr>>,
    /// A WebSocket (or other upgraded) connection with no byte either way for this
    /// long is closed.
    pub upgrade_idle_timeout: Option<SStr>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DefaultsFile {
    pub connect_timeout: Option<SStr>,
    pub request_timeout: Option<SStr>,
    pub pool_idle_timeout: Option<SStr>,
    pub pool_max_idle: Option<Spanned<i64>>,
    pub retry: Option<Spanned<RetryFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    pub attempts: Option<Spanned<i64>>,
    pub on: Option<Vec<SStr>>,
    pub budget_percent: Option<Spanned<i64>>,
    pub per_try_timeout: Option<SStr>,
    pub backoff: Option<SStr>,
    /// Bodies up to this size are buffered so that they can be retried.
    pub buffer_body: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub endpoints: Spanned<Vec<SStr>>,
    pub protocol: Option<SStr>,
    /// PEM file of the CA(s) that sign the upstream's certificate (`h2`/`https`);
    /// default: the system's roots.
    pub ca: Option<SStr>,
    /// Client certificate and key (PEM) for mTLS to the upstream.
    pub client_cert: Option<SStr>,
    pub client_key: Option<SStr>,
    /// Name sent as SNI and checked against the upstream's certificate; default: the
    /// first endpoint's host.
    pub server_name: Option<SStr>,
    pub load_balancing: Option<SStr>,
    pub connect_timeout: Option<SStr>,
    pub dns_refresh: Option<SStr>,
    /// Most requests in flight to this service at once.
    pub max_in_flight: Option<Spanned<i64>>,
    /// Requests that may wait for a slot when `max_in_flight` is reached.
    pub max_pending: Option<Spanned<i64>>,
    pub outlier: Option<Spanned<OutlierFile>>,
    pub health_check: Option<Spanned<HealthCheckFile>>,
    /// `"users-{branch}.preview.svc:80"`: where a branch deployment lives (DNS).
    pub branch_endpoint: Option<SStr>,
    /// `[services.X.branches] NAME = ["host:port"]`: explicit branch deployments.
    pub branches: Option<BTreeMap<SStr, Spanned<Vec<SStr>>>>,
}

/// `outlier = { consecutive_failures = 5, base_ejection = "10s", max_ejection_percent = 50 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    pub enabled: Option<Spanned<bool>>,
    pub consecutive_failures: Option<Spanned<i64>>,
    pub base_ejection: Option<SStr>,
    pub max_ejection_percent: Option<Spanned<i64>>,
}

/// `health_check = { path = "/healthz", interval = "5s", timeout = "1s", healthy = 2, unhealthy = 3 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    pub path: SStr,
    pub interval: Option<SStr>,
    pub timeout: Option<SStr>,
    pub healthy: Option<Spanned<i64>>,
    pub unhealthy: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: SStr,
    pub path: Option<SStr>,
    pub exact: Option<SStr>,
    pub host: Option<SStr>,
    pub methods: Option<Spanned<Vec<SStr>>>,
    pub headers: Option<BTreeMap<SStr, SStr>>,
    pub query: Option<BTreeMap<SStr, SStr>>,
    pub service: Option<SStr>,
    /// Weighted backends instead of one `service`.
    pub split: Option<Spanned<Vec<Spanned<SplitFile>>>>,
    pub strip_prefix: Option<SStr>,
    pub rewrite: Option<Spanned<RewriteFile>>,
    pub redirect: Option<Spanned<RedirectFile>>,
    pub request_headers: Option<Spanned<HeaderFilterFile>>,
    pub response_headers: Option<Spanned<HeaderFilterFile>>,
    pub timeout: Option<SStr>,
    /// Overrides `[server] max_body` for this route.
    pub max_body: Option<SStr>,
    pub rate_limit: Option<Spanned<RateLimitFile>>,
    /// `canary = { service, weight, sticky, guard }`.
    pub canary: Option<Spanned<CanaryFile>>,
    /// Stickiness of a `split`: `"header:NAME"`, `"cookie:NAME"` or `"cohort"`.
    pub sticky: Option<SStr>,
    /// `mirror = { service, percent, compare, … }`.
    pub mirror: Option<Spanned<MirrorFile>>,
    /// Name of an `[auth.NAME]` policy.
    pub auth: Option<SStr>,
}

/// `rate_limit = { per_second = 100, burst = 200, key = "client_ip" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub per_second: Spanned<i64>,
    pub burst: Option<Spanned<i64>>,
    pub key: Option<SStr>,
}

/// `split = [{ service = "a", weight = 90 }, …]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFile {
    pub service: SStr,
    pub weight: Spanned<i64>,
}

/// `rewrite = { prefix = "/v2" }` or `{ path = "/x" }`, optionally with `host`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteFile {
    pub prefix: Option<SStr>,
    pub path: Option<SStr>,
    pub host: Option<SStr>,
}

/// `redirect = { scheme, host, port, path | prefix, status }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectFile {
    pub scheme: Option<SStr>,
    pub host: Option<SStr>,
    pub port: Option<Spanned<i64>>,
    pub path: Option<SStr>,
    pub prefix: Option<SStr>,
    pub status: Option<Spanned<i64>>,
}

/// `request_headers = { set = {…}, add = {…}, remove = […] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderFilterFile {
    pub set: Option<BTreeMap<SStr, SStr>>,
    pub add: Option<BTreeMap<SStr, SStr>>,
    pub remove: Option<Vec<SStr>>,
}
