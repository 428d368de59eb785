//! `routes.toml` text -> [`Config`], collecting every problem on the way.
//!
//! One pass per section; each check pushes a [`ConfigError`] with the span of the value it
//! is about and keeps going, so a file with ten mistakes gets ten messages. Only when no
//! error was found is a [`Config`] returned.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use toml::Spanned;

use super::error::{ConfigError, ConfigErrors, did_you_mean};
use super::file::{self, FileConfig, SStr};
use super::model::*;
use crate::http::normalize::normalize_path;

mod policy;

/// Parse and validate. `Ok` carries the config and any warnings.
mod auth;

/// Parse and validate. `Ok` carries the config and any warnings. Files the config
/// names (keys) are read relative to the working directory.
pub fn parse(src: &str) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
    parse_in(src, None).map(|(c, w, _)| (c, w))
}

/// A validated config, its warnings, and the contents of every file it names.
pub type Parsed = (Config, Vec<ConfigError>, Vec<Vec<u8>>);

/// Parse and validate, reading the files the config names (JWKS, secrets, signing
/// keys) relative to `base`. `Ok` also carries the contents of those files, so that a
/// change in a key file counts as a change of the configuration.
pub fn parse_in(src: &str, base: Option<&std::path::Path>) -> Result<Parsed, ConfigErrors> {
    let file: FileConfig = match super::pieces::from_str(src) {
        Ok(f) => f,
        Err(e) => {
            return Err(ConfigErrors {
                items: vec![toml_error(&e)],
            });
        }
    };
    let mut v = Validator {
        src,
        line_starts: std::cell::OnceCell::new(),
        errors: Vec::new(),
        base,
        files: Vec::new(),
    };
    let config = v.config(file);
    v.errors
        .sort_by_key(|e| e.span.as_ref().map_or(0, |s| s.start));
    if v.errors
        .iter()
        .any(|e| e.severity == super::error::Severity::Error)
    {
        Err(ConfigErrors { items: v.errors })
    } else {
        Ok((config, v.errors, v.files))
    }
}

/// Turn a TOML/serde error into a [`ConfigError`], with a suggestion for unknown keys.
fn toml_error(e: &toml::de::Error) -> ConfigError {
    let mut message = e.message().trim().to_string();
    let mut help = None;
    // serde: "unknown field `foo`, expected one of `a`, `b`" / "expected `a` or `b`"
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        help = did_you_mean(field, candidates.iter().copied()).or_else(|| {
            (!candidates.is_empty()).then(|| format!("known keys here: {}", candidates.join(", ")))
        });
        message = format!("unknown key `{field}`");
    }
    let code = if message.starts_with("unknown key") {
        "SY002"
    } else {
        "SY001"
    };
    ConfigError::new(code, e.span(), message).maybe_help(help)
}

/// Parse `"250ms"`, `"5s"`, `"2m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!(
            "`{s}` is not a duration: write a whole number and a unit, like \"250ms\" or \"5s\""
        )
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "" => return Err(format!("`{s}` has no unit: write \"{n}s\" or \"{n}ms\"")),
        u if u.starts_with(char::is_whitespace) || u.len() > 2 => {
            return Err(format!(
                "`{s}` is not a duration: write \"{n}ms\", \"{n}s\", \"{n}m\" or \"{n}h\""
            ));
        }
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}`: use ms, s, m or h"
            ));
        }
    };
    Ok(d)
}

/// Parse `"512KiB"`, `"32MiB"`, `"1GiB"`, `"10MB"`, `"1000"` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size"))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown size unit `{other}` in `{s}`")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A map of keys from the config (route names, paths, hosts): looked up once per route
/// or per path segment while validating, so SipHash was a fifth of a large table's
/// validation. foldhash: the file's author could only slow down their own check.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

fn span<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    Some(s.span())
}

struct Validator<'s> {
    src: &'s str,
    /// Byte offsets where lines start, for `line()` (a table of 10,000 routes may
    /// produce thousands of messages). Made on the first message that needs one: a
    /// valid table usually needs none.
    line_starts: std::cell::OnceCell<Vec<usize>>,
    errors: Vec<ConfigError>,
    /// Directory that relative file names are read from; `None`: the working directory.
    base: Option<&'s std::path::Path>,
    /// Contents of every file read, for the config hash.
    files: Vec<Vec<u8>>,
}

impl Validator<'_> {
    /// 1-based line of a byte offset, for messages that point at a second place.
    fn line(&self, offset: usize) -> usize {
        let offset = offset.min(self.src.len());
        let src = self.src;
        self.line_starts
            .get_or_init(|| {
                std::iter::once(0)
                    .chain(src.match_indices('\n').map(|(i, _)| i + 1))
                    .collect()
            })
            .partition_point(|&start| start <= offset)
    }

    fn err(
        &mut self,
        code: &'static str,
        span: Option<Range<usize>>,
        msg: impl Into<String>,
    ) -> &mut ConfigError {
        self.errors.push(ConfigError::new(code, span, msg));
        self.errors.last_mut().expect("just pushed")
    }

    fn duration(&mut self, v: &Option<SStr>, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.err("SY006", span(v), "duration must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(msg) => {
                self.err("SY006", span(v), msg);
                default
            }
        }
    }

    fn outlier(&mut self, o: Option<&Spanned<file::OutlierFile>>) -> Option<Outlier> {
        let default = Outlier {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection_percent: 50,
        };
        let Some(o) = o else { return Some(default) };
        let o = o.get_ref();
        if o.enabled.as_ref().is_some_and(|e| !*e.get_ref()) {
            return None;
        }
        Some(Outlier {
            consecutive_failures: self.count(&o.consecutive_failures, 5, 1, 1000) as u32,
            base_ejection: self.duration(&o.base_ejection, default.base_ejection),
            max_ejection_percent: self.count(&o.max_ejection_percent, 50, 0, 100) as u32,
        })
    }

    fn health_check(&mut self, h: &Spanned<file::HealthCheckFile>) -> Option<HealthCheck> {
        let h = h.get_ref();
        let path = h.path.get_ref();
        if !path.starts_with('/') || path.contains(['#', ' ']) {
            self.err(
                "SY009",
                span(&h.path),
                format!("health check path `{path}` is not an absolute path"),
            );
            return None;
        }
        Some(HealthCheck {
            path: path.clone(),
            interval: self.duration(&h.interval, Duration::from_secs(5)),
            timeout: self.duration(&h.timeout, Duration::from_secs(1)),
            healthy: self.count(&h.healthy, 2, 1, 100) as u32,
            unhealthy: self.count(&h.unhealthy, 3, 1, 100) as u32,
        })
    }

    fn rate_limit(&mut self, rl: &Spanned<file::RateLimitFile>) -> Option<RateLimit> {
        let r = rl.get_ref();
        let per_second = self.count(&Some(r.per_second.clone()), 0, 1, 1_000_000) as u32;
        let burst = self.count(&r.burst, per_second as usize, 1, 10_000_000) as u32;
        let key = match r.key.as_ref().map(|k| (k, k.get_ref().as_str())) {
            None | Some((_, "client_ip")) => RateLimitKey::ClientIp,
            Some((_, "jwt:sub")) => RateLimitKey::JwtSub,
            Some((k, text)) => match text
                .strip_prefix("header:")
                .map(|h| HeaderName::from_bytes(h.as_bytes()))
            {
                Some(Ok(h)) => RateLimitKey::Header(h),
                _ => {
                    self.err("SY019", span(k), format!("unknown rate-limit key `{text}`"))
                        .help = Some("use \"client_ip\", \"jwt:sub\" or \"header:NAME\"".into());
                    return None;
                }
            },
        };
        (per_second > 0).then_some(RateLimit {
            per_second,
            burst,
            key,
        })
    }

    fn size(&mut self, v: &SStr) -> Option<u64> {
        match parse_size(v.get_ref()) {
            Ok(n) => Some(n),
            Err(msg) => {
                self.err("SY007", span(v), msg).help = Some(
                    "write a size like \"512KiB\", \"32MiB\", \"1GiB\" or a number of bytes".into(),
                );
                None
            }
        }
    }

    fn count(&mut self, v: &Option<Spanned<i64>>, default: usize, min: i64, max: i64) -> usize {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if n < min || n > max {
            self.err(
                "SY007",
                span(v),
                format!("{n} is out of range: must be between {min} and {max}"),
            );
            return default;
        }
        n as usize
    }

    fn listen_addr(&mut self, v: &Option<SStr>, what: &str) -> Option<SocketAddr> {
        let v = v.as_ref()?;
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    "SY008",
                    span(v),
                    format!("`{}` is not a valid {what} address", v.get_ref()),
                )
                .help = Some("write IP:PORT, like \"0.0.0.0:8080\" or \"[::]:8080\"".into());
                None
            }
        }
    }

    fn config(&mut self, f: FileConfig) -> Config {
        let listen = self.listen(f.listen.as_ref());
        let tls = self.tls(f.tls.as_ref(), f.listen.as_ref());
        let server = self.server(f.server.unwrap_or_default());
        let defaults = self.defaults(f.defaults.unwrap_or_default());
        let services = self.services(&f.services, &defaults);
        let names: HashMap<&str, usize> = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let policy = self.global_policy(f.canary.as_ref(), f.branches.as_ref());
        let auth = self.auth_policies(&f.auth);
        let mut auth_names: HashMap<&str, Option<usize>> = f
            .auth
            .keys()
            .map(|k| (k.get_ref().as_str(), None))
            .collect();
        for (i, p) in auth.iter().enumerate() {
            auth_names.insert(p.name.as_str(), Some(i));
        }
        let identity = f.identity.as_ref().and_then(|i| self.identity(i));
        let routes = self.routes(&f.routes, &names, &auth_names);
        self.policy_lints(f.branches.as_ref(), &routes, &policy);
        self.unreachable_routes(&routes);
        self.lint(&routes, &defaults);
        for s in &services {
            let used = f.routes.iter().any(|r| {
                // Services times routes, no allocation: paced (see `lint`).
                crate::background::pace();
                let r = r.get_ref();
                r.service.as_ref().is_some_and(|n| n.get_ref() == &s.name)
                    || r.canary
                        .as_ref()
                        .is_some_and(|c| c.get_ref().service.get_ref() == &s.name)
                    || r.mirror
                        .as_ref()
                        .is_some_and(|m| m.get_ref().service.get_ref() == &s.name)
                    || r.split.as_ref().is_some_and(|split| {
                        split
                            .get_ref()
                            .iter()
                            .any(|b| b.get_ref().service.get_ref() == &s.name)
                    })
            });
            if !used {
                let key = f.services.keys().find(|k| k.get_ref() == &s.name);
                self.errors.push(ConfigError::warning(
                    "SY015",
                    key.and_then(span),
                    format!("service `{}` is not used by any route", s.name),
                ));
            }
        }
        let tracing = self.tracing(f.tracing.unwrap_or_default());
        let dns_servers = self.dns_servers(f.dns.unwrap_or_default());
        Config {
            listen,
            server,
            defaults,
            services,
            // Moved one route at a time, with a pause point between them: `into()` copied
            // the whole vector into a fresh allocation in one `memcpy`, page faults and
            // all, the longest stretch of a reload without a pause (4-7 ms for 10,000
            // routes in `perf` of a paced reload). `vec::IntoIter` with `inspect` has an
            // exact length (`TrustedLen`), so the `Arc` is allocated once and filled in
            // place: a counting allocator saw one allocation, as for `into()`.
            routes: routes
                .into_iter()
                .inspect(|_| crate::background::pace())
                .collect(),
            tracing,
            dns_servers,
            policy,
            tls,
            auth,
            identity,
        }
    }

    fn dns_servers(&mut self, d: file::DnsFile) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for v in d.servers.iter().flatten() {
            let text = v.get_ref();
            let parsed = text
                .parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match parsed {
                Ok(a) => out.push(a),
                Err(_) => {
                    self.err(
                        "SY008",
                        span(v),
                        format!("`{text}` is not a name server address"),
                    )
                    .help = Some(
                        "write IP or IP:PORT, like \"10.96.0.10\" or \"127.0.0.1:5353\"".into(),
                    );
                }
            }
        }
        out
    }

    fn tracing(&mut self, t: file::TracingFile) -> Tracing {
        let mut out = Tracing::default();
        if let Some(v) = &t.otlp {
            match v.get_ref().parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {
                    out.otlp = Some(uri);
                }
                Ok(uri) if uri.scheme_str() == Some("https") => {
                    self.err(
                        "SY019",
                        span(v),
                        "OTLP export over https is not supported yet",
                    )
                    .help = Some(
                        "send spans to a collector (or sidecar) over http, like \"http://127.0.0.1:4318/v1/traces\""
                            .into(),
                    );
                }
                _ => {
                    self.err(
                        "SY008",
                        span(v),
                        format!("`{}` is not an http URL", v.get_ref()),
                    )
                    .help = Some("write the collector's OTLP/HTTP traces URL, like \"http://otel-collector:4318/v1/traces\"".into());
                }
            }
        }
        if let Some(r) = &t.sample_ratio {
            let r_val = *r.get_ref();
            if (0.0..=1.0).contains(&r_val) {
                out.sample_ratio = r_val;
            } else {
                self.err(
                    "SY007",
                    span(r),
                    format!("{r_val} is out of range: must be between 0.0 and 1.0"),
                )
                .help = Some("0.1 samples one new trace in ten".into());
            }
        }
        match t.otlp_protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "http/protobuf" | "http")) => {}
            Some((_, "grpc")) => out.protocol = OtlpProtocol::Grpc,
            Some((p, other)) => {
                self.err("SY019", span(p), format!("unknown otlp_protocol `{other}`"))
                    .help =
                    Some("use \"http/protobuf\" (port 4318) or \"grpc\" (port 4317)".into());
            }
        }
        if let Some(n) = &t.service_name {
            if n.get_ref().is_empty() {
                self.err("SY011", span(n), "`service_name` is empty");
            } else {
                out.service_name = n.get_ref().clone();
            }
        }
        out
    }

    fn listen(&mut self, l: Option<&Spanned<file::ListenFile>>) -> Listen {
        let Some(l) = l else {
            return Listen {
                http: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
                https: None,
                admin: Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
            };
        };
        let http = self.listen_addr(&l.get_ref().http, "listen");
        let https = self.listen_addr(&l.get_ref().https, "listen");
        // The admin API is on by default, on loopback; "off" turns it off.
        let admin = match &l.get_ref().admin {
            Some(a) if a.get_ref() == "off" => None,
            Some(_) => self.listen_addr(&l.get_ref().admin, "admin"),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
        };
        if l.get_ref().http.is_none() && l.get_ref().https.is_none() {
            self.err(
                "SY011",
                span(l),
                "[listen] has no `http` or `https` address: the gateway would serve nothing",
            )
            .help = Some("add http = \"0.0.0.0:8080\"".into());
        }
        Listen { http, https, admin }
    }

    /// `[tls]`. The files themselves are read by `tls::check_files` (the text alone
    /// cannot say whether a path exists).
    fn tls(
        &mut self,
        t: Option<&Spanned<file::TlsFile>>,
        listen: Option<&Spanned<file::ListenFile>>,
    ) -> Tls {
        let https = listen.and_then(|l| l.get_ref().https.as_ref());
        let Some(t) = t else {
            if let Some(h) = https {
                self.err("SY011", span(h), "the https listener has no certificate")
                    .help = Some(
                    "add [[tls.certificates]] with cert = \"tls.crt\" and key = \"tls.key\"".into(),
                );
            }
            return Tls::default();
        };
        let tf = t.get_ref();
        if tf.certificates.is_empty()
            && let Some(h) = https
        {
            self.err("SY011", span(h), "the https listener has no certificate")
                .help = Some(
                "add [[tls.certificates]] with cert = \"tls.crt\" and key = \"tls.key\"".into(),
            );
        }
        let certificates = tf
            .certificates
            .iter()
            .map(|c| {
                let c = c.get_ref();
                CertPair {
                    cert: c.cert.get_ref().into(),
                    key: c.key.get_ref().into(),
                    cert_span: c.cert.span(),
                    key_span: c.key.span(),
                }
            })
            .collect();
        let hsts = tf
            .hsts
            .as_ref()
            .and_then(|h| match HeaderValue::from_str(h.get_ref()) {
                Ok(v) if h.get_ref().starts_with("max-age=") => Some(v),
                _ => {
                    self.err(
                        "SY018",
                        span(h),
                        format!("`{}` is not a Strict-Transport-Security value", h.get_ref()),
                    )
                    .help = Some(
                        "write hsts = \"max-age=31536000\" (optionally \"; includeSubDomains\")"
                            .into(),
                    );
                    None
                }
            });
        let redirect_http = match &tf.redirect_http {
            None => RedirectHttp::Off,
            Some(list) if list.iter().any(|h| h.get_ref() == "*") => RedirectHttp::All,
            Some(list) => RedirectHttp::Hosts(list.iter().filter_map(|h| self.host(h)).collect()),
        };
        if redirect_http != RedirectHttp::Off
            && https.is_none()
            && let Some(list) = &tf.redirect_http
        {
            self.err(
                "SY011",
                list.first().and_then(span),
                "`redirect_http` needs an https listener",
            );
        }
        Tls {
            certificates,
            default: tf
                .default
                .as_ref()
                .map(|d| d.get_ref().to_ascii_lowercase()),
            hsts,
            redirect_http,
            redirect_port: self.count(&tf.redirect_port, 443, 1, 65535) as u16,
        }
    }

    fn server(&mut self, s: file::ServerFile) -> Server {
        let mut trusted = Vec::new();
        for p in s.trusted_proxies.iter().flatten() {
            let text = p.get_ref();
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(n) => trusted.push(n),
                Err(_) => {
                    self.err(
                        "SY008",
                        span(p),
                        format!("`{text}` is not an IP address or CIDR range"),
                    )
                    .help = Some("write \"10.0.0.0/8\" or \"192.0.2.7\"".into());
                }
            }
        }
        let format = match s.access_log.as_ref().map(|v| (v, v.get_ref().as_str())) {
            None | Some((_, "json")) => LogFormat::Json,
            Some((_, "ltsv")) => LogFormat::Ltsv,
            Some((_, "off")) => LogFormat::Off,
            Some((v, other)) => {
                self.err(
                    "SY019",
                    span(v),
                    format!("unknown access_log format `{other}`"),
                )
                .help = Some("use \"json\", \"ltsv\" or \"off\"".into());
                LogFormat::Json
            }
        };
        let fields: std::sync::Arc<[LogField]> = match &s.access_log_fields {
            None => LogField::ALL.into(),
            Some(list) => {
                let mut out = Vec::new();
                for f in list {
                    match LogField::from_name(f.get_ref()) {
                        Some(field) => out.push(field),
                        None => {
                            let help =
                                did_you_mean(f.get_ref(), LogField::ALL.iter().map(|f| f.name()));
                            self.err(
                                "SY019",
                                span(f),
                                format!("unknown access-log field `{}`", f.get_ref()),
                            )
                            .help = help.or_else(|| {
                                Some(format!(
                                    "fields: {}",
                                    LogField::ALL
                                        .iter()
                                        .map(|f| f.name())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ))
                            });
                        }
                    }
                }
                out.into()
            }
        };
        let access_log = AccessLog { format, fields };
        Server {
            drain_timeout: self.duration(&s.drain_timeout, Duration::from_secs(30)),
            header_read_timeout: self.duration(&s.header_read_timeout, Duration::from_secs(10)),
            body_read_timeout: self.duration(&s.body_read_timeout, Duration::from_secs(30)),
            max_body: s
                .max_body
                .as_ref()
                .and_then(|v| self.size(v))
                .unwrap_or(32 << 20),
            max_uri_bytes: self.count(&s.max_uri_bytes, 8192, 256, 1 << 20),
            max_header_bytes: self.count(&s.max_header_bytes, 64 * 1024, 8192, 1 << 20),
            max_headers: self.count(&s.max_headers, 100, 1, 1000),
            max_connections: self.count(&s.max_connections, 10_000, 1, 1_000_000),
            trusted_proxies: trusted,
            access_log,
            upgrade_idle_timeout: self.duration(&s.upgrade_idle_timeout, Duration::from_secs(300)),
        }
    }

    fn defaults(&mut self, d: file::DefaultsFile) -> Defaults {
        let retry = match &d.retry {
            None => Retry {
                attempts: 2,
                on_connect_failure: true,
                on_reset: false,
                on_status: Vec::new(),
                budget_percent: 20,
                per_try_timeout: None,
                backoff: Duration::from_millis(25),
                buffer_body: 64 << 10,
            },
            Some(r) => {
                let r = r.get_ref();
                let mut on_connect_failure = r.on.is_none();
                let mut on_reset = false;
                let mut on_status = Vec::new();
                for cond in r.on.iter().flatten() {
                    match cond.get_ref().as_str() {
                        "connect-failure" => on_connect_failure = true,
                        "reset" => on_reset = true,
                        "502" => on_status.push(502),
                        "503" => on_status.push(503),
                        "504" => on_status.push(504),
                        other => {
                            let known = ["connect-failure", "reset", "502", "503", "504"];
                            let help = did_you_mean(other, known)
                                .unwrap_or_else(|| format!("use {}", known.join(", ")));
                            self.err(
                                "SY019",
                                span(cond),
                                format!("unsupported retry condition `{other}`"),
                            )
                            .help = Some(help);
                        }
                    }
                }
                Retry {
                    attempts: self.count(&r.attempts, 2, 1, 10) as u32,
                    on_connect_failure,
                    on_reset,
                    on_status,
                    budget_percent: self.count(&r.budget_percent, 20, 0, 100) as u32,
                    per_try_timeout: r
                        .per_try_timeout
                        .as_ref()
                        .map(|t| self.duration(&Some(t.clone()), Duration::from_secs(1))),
                    backoff: self.duration(&r.backoff, Duration::from_millis(25)),
                    buffer_body: r
                        .buffer_body
                        .as_ref()
                        .and_then(|v| self.size(v))
                        .unwrap_or(64 << 10),
                }
            }
        };
        Defaults {
            connect_timeout: self.duration(&d.connect_timeout, Duration::from_secs(1)),
            request_timeout: self.duration(&d.request_timeout, Duration::from_secs(30)),
            pool_idle_timeout: self.duration(&d.pool_idle_timeout, Duration::from_secs(90)),
            pool_max_idle: self.count(&d.pool_max_idle, 256, 0, 100_000),
            retry,
        }
    }

    fn services(
        &mut self,
        services: &BTreeMap<SStr, Spanned<file::ServiceFile>>,
        d: &Defaults,
    ) -> Vec<Service> {
        let mut out = Vec::with_capacity(services.len());
        for (name, svc) in services {
            if !is_name(name.get_ref()) {
                self.err(
                    "SY003",
                    span(name),
                    format!("service name `{}` is not valid", name.get_ref()),
                )
                .help = Some("names use lower-case letters, digits and `-`".into());
            }
            let s = svc.get_ref();
            if s.endpoints.get_ref().is_empty() {
                self.err(
                    "SY011",
                    span(&s.endpoints),
                    format!("service `{}` has no endpoints", name.get_ref()),
                )
                .help = Some("add endpoints = [\"127.0.0.1:9001\"]".into());
            }
            let mut endpoints = Vec::new();
            for ep in s.endpoints.get_ref() {
                match parse_endpoint(ep.get_ref()) {
                    Ok(e) => {
                        if endpoints.contains(&e) {
                            self.errors.push(ConfigError::warning(
                                "SY020",
                                span(ep),
                                format!("endpoint `{}` is listed twice", ep.get_ref()),
                            ));
                        }
                        endpoints.push(e);
                    }
                    Err(msg) => {
                        self.err("SY008", span(ep), msg).help = Some(
                            "write HOST:PORT, like \"10.0.0.7:8080\" or \"users.default.svc:80\""
                                .into(),
                        );
                    }
                }
            }
            let protocol = match s.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
                None | Some((_, "http1")) => Protocol::Http1,
                Some((_, "h2c")) => Protocol::H2c,
                Some((_, "h2")) => Protocol::H2,
                Some((_, "https")) => Protocol::Https,
                Some((p, other)) => {
                    let known = ["http1", "h2c", "h2", "https"];
                    let help = did_you_mean(other, known)
                        .unwrap_or_else(|| "use \"http1\", \"h2c\", \"h2\" or \"https\"".into());
                    self.err("SY019", span(p), format!("unknown protocol `{other}`"))
                        .help = Some(help);
                    Protocol::Http1
                }
            };
            let tls = UpstreamTls {
                ca: s.ca.as_ref().map(|c| c.get_ref().into()),
                client_cert: match (&s.client_cert, &s.client_key) {
                    (Some(c), Some(k)) => Some((c.get_ref().into(), k.get_ref().into())),
                    (Some(c), None) => {
                        self.err("SY011", span(c), "`client_cert` needs `client_key`");
                        None
                    }
                    (None, Some(k)) => {
                        self.err("SY011", span(k), "`client_key` needs `client_cert`");
                        None
                    }
                    (None, None) => None,
                },
                server_name: s.server_name.as_ref().map(|n| n.get_ref().clone()),
                spans: [&s.ca, &s.client_cert, &s.client_key]
                    .map(|v| SourceSpan(v.as_ref().and_then(span))),
            };
            if !protocol.is_tls() {
                for v in [&s.ca, &s.client_cert, &s.client_key, &s.server_name]
                    .into_iter()
                    .flatten()
                {
                    self.err(
                        "SY010",
                        span(v),
                        "TLS settings need protocol = \"h2\" or \"https\"",
                    );
                }
            }
            if let Some(lb) = &s.load_balancing
                && lb.get_ref() != "round-robin"
            {
                let help = did_you_mean(lb.get_ref(), ["round-robin"])
                    .unwrap_or_else(|| "only \"round-robin\" is supported so far".into());
                self.err(
                    "SY019",
                    span(lb),
                    format!("load_balancing `{}` is not supported", lb.get_ref()),
                )
                .help = Some(help);
            }
            let (branches, branch_endpoint) = self.service_branches(s);
            out.push(Service {
                branches,
                branch_endpoint,
                name: name.get_ref().clone(),
                endpoints,
                protocol,
                tls,
                connect_timeout: self.duration(&s.connect_timeout, d.connect_timeout),
                dns_refresh: self.duration(&s.dns_refresh, Duration::from_secs(5)),
                outlier: self.outlier(s.outlier.as_ref()),
                health_check: s.health_check.as_ref().and_then(|h| self.health_check(h)),
                concurrency: match (&s.max_in_flight, &s.max_pending) {
                    (None, None) => None,
                    (mif, mp) => Some((
                        self.count(mif, 1000, 1, 1_000_000) as u32,
                        self.count(mp, 0, 0, 1_000_000) as u32,
                    )),
                },
            });
        }
        out
    }

    fn routes(
        &mut self,
        routes: &[Spanned<Box<file::RouteFile>>],
        services: &HashMap<&str, usize>,
        auth_names: &HashMap<&str, Option<usize>>,
    ) -> Vec<Route> {
        let mut out = Vec::with_capacity(routes.len());
        let mut seen: FastMap<&str, &SStr> = FastMap::default();
        seen.reserve(routes.len());
        for (order, r) in routes.iter().enumerate() {
            let rs = r.span();
            let r = r.get_ref();
            let name = r.name.get_ref();
            if !is_name(name) {
                self.err(
                    "SY003",
                    span(&r.name),
                    format!("route name `{name}` is not valid"),
                )
                .help = Some("names use lower-case letters, digits and `-`".into());
            }
            if let Some(first) = seen.get(name.as_str()) {
                let line = self.line(first.span().start);
                self.err(
                    "SY004",
                    span(&r.name),
                    format!("duplicate route name `{name}`"),
                )
                .help = Some(format!(
                    "route names must be unique; the first `{name}` is on line {line}"
                ));
            } else {
                seen.insert(name, &r.name);
            }
            let path = self.route_path(r, rs.clone());
            let host = r.host.as_ref().and_then(|h| self.host(h));
            let methods = self.methods(r);
            let headers = self.header_predicates(r);
            let query = r
                .query
                .iter()
                .flatten()
                .map(|(k, v)| (k.get_ref().clone(), v.get_ref().clone()))
                .collect();
            let action = self.action(r, rs.clone(), path.as_ref(), services);
            let request_headers = r
                .request_headers
                .as_ref()
                .map(|f| self.header_filter(f, Direction::Request))
                .unwrap_or_default();
            let response_headers = r
                .response_headers
                .as_ref()
                .map(|f| self.header_filter(f, Direction::Response))
                .unwrap_or_default();
            let auth = r.auth.as_ref().and_then(|a| self.auth_ref(a, auth_names));
            if let (Some(path), Some(action)) = (path, action) {
                out.push(Route {
                    auth,
                    name: name.clone(),
                    host,
                    path,
                    methods,
                    headers,
                    query,
                    action,
                    request_headers,
                    response_headers,
                    order,
                    span: rs,
                });
            }
        }
        out
    }

    fn service_ref(&mut self, s: &SStr, services: &HashMap<&str, usize>) -> Option<usize> {
        match services.get(s.get_ref().as_str()) {
            Some(&i) => Some(i),
            None => {
                let help = did_you_mean(s.get_ref(), services.keys().copied());
                self.err(
                    "SY005",
                    span(s),
                    format!("unknown service `{}`", s.get_ref()),
                )
                .help = help.or_else(|| Some("define it under [services.NAME]".into()));
                None
            }
        }
    }

    /// `service` / `split` / `redirect`, `strip_prefix` / `rewrite`, `timeout`, and the
    /// combinations that cannot go together.
    fn action(
        &mut self,
        r: &file::RouteFile,
        rs: Range<usize>,
        path: Option<&PathMatch>,
        services: &HashMap<&str, usize>,
    ) -> Option<Action> {
        let name = r.name.get_ref();
        if let Some(redirect) = &r.redirect {
            for (what, present) in [
                ("service", r.service.as_ref().map(|s| s.span())),
                ("split", r.split.as_ref().map(|s| s.span())),
                ("rewrite", r.rewrite.as_ref().map(|s| s.span())),
                ("strip_prefix", r.strip_prefix.as_ref().map(|s| s.span())),
                ("timeout", r.timeout.as_ref().map(|s| s.span())),
                ("canary", r.canary.as_ref().map(|s| s.span())),
                ("mirror", r.mirror.as_ref().map(|s| s.span())),
                ("sticky", r.sticky.as_ref().map(|s| s.span())),
                ("auth", r.auth.as_ref().map(|s| s.span())),
                (
                    "request_headers",
                    r.request_headers.as_ref().map(|s| s.span()),
                ),
                (
                    "response_headers",
                    r.response_headers.as_ref().map(|s| s.span()),
                ),
            ] {
                if let Some(sp) = present {
                    self.err(
                        "SY010",
                        Some(sp),
                        format!("`{what}` cannot be combined with `redirect`"),
                    )
                    .help = Some(
                        "a redirect is answered by the gateway itself; remove one of the two"
                            .into(),
                    );
                }
            }
            return self.redirect(redirect, path).map(Action::Redirect);
        }
        let mut backends = match (&r.service, &r.split) {
            (Some(_), Some(split)) => {
                self.err(
                    "SY010",
                    Some(split.span()),
                    "a route has either `service` or `split`, not both",
                );
                return None;
            }
            (Some(s), None) => vec![Backend {
                service: self.service_ref(s, services)?,
                weight: 1,
            }],
            (None, Some(split)) => {
                if split.get_ref().is_empty() {
                    self.err("SY011", Some(split.span()), "`split` is empty");
                    return None;
                }
                let mut out = Vec::new();
                let mut ok = true;
                for b in split.get_ref() {
                    let b = b.get_ref();
                    let service = self.service_ref(&b.service, services);
                    let weight = *b.weight.get_ref();
                    if !(0..=1_000_000).contains(&weight) {
                        self.err(
                            "SY007",
                            span(&b.weight),
                            format!("weight {weight} is out of range: must be 0 to 1000000"),
                        );
                        ok = false;
                    }
                    match service {
                        Some(service) if ok => out.push(Backend {
                            service,
                            weight: weight as u32,
                        }),
                        _ => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                out
            }
            (None, None) => {
                self.err(
                    "SY011",
                    Some(rs),
                    format!("route `{name}` has no `service`, `split` or `redirect`"),
                )
                .help = Some("add service = \"NAME\"".into());
                return None;
            }
        };
        let policy = self.route_policy(r, &mut backends, services);
        let total_weight = backends.iter().map(|b| u64::from(b.weight)).sum();
        let (path_rewrite, host) = match (&r.strip_prefix, &r.rewrite) {
            (Some(_), Some(rw)) => {
                self.err(
                    "SY010",
                    Some(rw.span()),
                    "`strip_prefix` and `rewrite` cannot be combined",
                )
                .help = Some(
                    "strip_prefix is a shorthand for rewrite = { prefix = … }; keep one".into(),
                );
                return None;
            }
            (Some(sp), None) => (PathRewrite::Strip(self.strip_prefix(sp, path)?), None),
            (None, Some(rw)) => self.rewrite(rw, path)?,
            (None, None) => (PathRewrite::Keep, None),
        };
        let timeout = r
            .timeout
            .as_ref()
            .map(|t| self.duration(&Some(t.clone()), Duration::from_secs(30)));
        let max_body = r.max_body.as_ref().and_then(|v| self.size(v));
        let rate_limit = r.rate_limit.as_ref().and_then(|rl| self.rate_limit(rl));
        Some(Action::Forward(Forward {
            backends,
            total_weight,
            path: path_rewrite,
            host,
            timeout,
            max_body,
            rate_limit,
            policy,
        }))
    }

    /// A replacement path: `""` allowed for prefixes (Gateway API), otherwise a
    /// normalised absolute path.
    fn replacement_path(&mut self, v: &SStr, allow_empty: bool) -> Option<String> {
        let text = v.get_ref();
        if allow_empty && (text.is_empty() || text == "/") {
            return Some(String::new());
        }
        let ok = text.starts_with('/')
            && !text.contains(['?', '#', '{', '}'])
            && normalize_path(text).is_ok_and(|n| n == text.as_str());
        if !ok {
            self.err(
                "SY009",
                span(v),
                format!("`{text}` is not a normalised absolute path"),
            )
            .help = Some("write a path like \"/v2/users\"".into());
            return None;
        }
        Some(if allow_empty {
            text.trim_end_matches('/').to_string()
        } else {
            text.clone()
        })
    }

    fn path_modifier(
        &mut self,
        prefix: Option<&SStr>,
        full: Option<&SStr>,
        path: Option<&PathMatch>,
    ) -> Option<PathRewrite> {
        match (prefix, full) {
            (Some(p), Some(_)) => {
                self.err("SY010", span(p), "`prefix` and `path` cannot both be set")
                    .help =
                    Some("`prefix` replaces the matched prefix, `path` the whole path".into());
                None
            }
            (Some(p), None) => {
                if matches!(path, Some(PathMatch::Exact(_))) {
                    self.err(
                        "SY010",
                        span(p),
                        "`prefix` needs a prefix route (`path = …`), not `exact`",
                    )
                    .help = Some("use `path = …` to replace the whole path".into());
                    return None;
                }
                self.replacement_path(p, true)
                    .map(PathRewrite::ReplacePrefix)
            }
            (None, Some(f)) => self
                .replacement_path(f, false)
                .map(PathRewrite::ReplaceFull),
            (None, None) => Some(PathRewrite::Keep),
        }
    }

    fn rewrite(
        &mut self,
        rw: &Spanned<file::RewriteFile>,
        path: Option<&PathMatch>,
    ) -> Option<(PathRewrite, Option<HeaderValue>)> {
        let r = rw.get_ref();
        if r.prefix.is_none() && r.path.is_none() && r.host.is_none() {
            self.err("SY021", Some(rw.span()), "`rewrite` changes nothing")
                .help = Some("set `prefix`, `path` or `host`".into());
            return None;
        }
        let p = self.path_modifier(r.prefix.as_ref(), r.path.as_ref(), path)?;
        let host = match &r.host {
            Some(h) => Some(self.host_value(h)?),
            None => None,
        };
        Some((p, host))
    }

    /// `rewrite.host`: a DNS name, optionally with `:PORT`.
    fn host_value(&mut self, h: &SStr) -> Option<HeaderValue> {
        let text = h.get_ref();
        let name = match text.rsplit_once(':') {
            Some((n, p)) if p.parse::<u16>().is_ok() => n,
            _ => text.as_str(),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        match HeaderValue::from_str(text) {
            Ok(v) if valid => Some(v),
            _ => {
                self.err("SY008", span(h), format!("`{text}` is not a valid host"))
                    .help = Some("write a DNS name, optionally with :PORT".into());
                None
            }
        }
    }

    fn redirect(
        &mut self,
        rd: &Spanned<file::RedirectFile>,
        path: Option<&PathMatch>,
    ) -> Option<Redirect> {
        let r = rd.get_ref();
        let scheme = match &r.scheme {
            Some(s) if s.get_ref() == "http" || s.get_ref() == "https" => Some(s.get_ref().clone()),
            Some(s) => {
                self.err(
                    "SY019",
                    span(s),
                    format!("redirect scheme `{}` is not supported", s.get_ref()),
                )
                .help = Some("use \"http\" or \"https\"".into());
                return None;
            }
            None => None,
        };
        let host = match &r.host {
            Some(h) => {
                let hm = self.host(h)?;
                match hm {
                    HostMatch::Exact(name) => Some(name),
                    HostMatch::Wildcard(_) => {
                        self.err("SY019", span(h), "a redirect host cannot be a wildcard");
                        return None;
                    }
                }
            }
            None => None,
        };
        let port = match &r.port {
            Some(p) if (1..=65535).contains(p.get_ref()) => Some(*p.get_ref() as u16),
            Some(p) => {
                self.err(
                    "SY007",
                    span(p),
                    format!("port {} is out of range: must be 1 to 65535", p.get_ref()),
                );
                return None;
            }
            None => None,
        };
        let status = match &r.status {
            None => 302,
            Some(s) if [301, 302, 303, 307, 308].contains(s.get_ref()) => *s.get_ref() as u16,
            Some(s) => {
                self.err(
                    "SY019",
                    span(s),
                    format!("redirect status {} is not allowed", s.get_ref()),
                )
                .help = Some("use 301, 302, 303, 307 or 308".into());
                return None;
            }
        };
        let path = self.path_modifier(r.prefix.as_ref(), r.path.as_ref(), path)?;
        if scheme.is_none() && host.is_none() && port.is_none() && path == PathRewrite::Keep {
            self.err(
                "SY021",
                Some(rd.span()),
                "this redirect points at the request itself (a loop)",
            )
            .help = Some("set `scheme`, `host`, `port`, `path` or `prefix`".into());
            return None;
        }
        Some(Redirect {
            scheme,
            host,
            port,
            path,
            status,
        })
    }

    fn header_filter(
        &mut self,
        f: &Spanned<file::HeaderFilterFile>,
        dir: Direction,
    ) -> HeaderFilter {
        let mut out = HeaderFilter::default();
        let f = f.get_ref();
        let name = |v: &mut Self, k: &SStr| -> Option<HeaderName> {
            let Ok(n) = HeaderName::from_bytes(k.get_ref().as_bytes()) else {
                v.err(
                    "SY018",
                    span(k),
                    format!("`{}` is not a valid header name", k.get_ref()),
                );
                return None;
            };
            if let Some(why) = owned_by_gateway(&n, dir) {
                v.err(
                    "SY018",
                    span(k),
                    format!("header `{n}` cannot be changed by a route: {why}"),
                );
                return None;
            }
            Some(n)
        };
        for (list, target) in [(&f.set, 0), (&f.add, 1)] {
            for (k, val) in list.iter().flatten() {
                let Some(n) = name(self, k) else { continue };
                let Ok(hv) = HeaderValue::from_str(val.get_ref()) else {
                    self.err(
                        "SY018",
                        span(val),
                        format!("`{}` is not a valid header value", val.get_ref()),
                    );
                    continue;
                };
                if target == 0 {
                    out.set.push((n, hv))
                } else {
                    out.add.push((n, hv))
                }
            }
        }
        for k in f.remove.iter().flatten() {
            if let Some(n) = name(self, k) {
                out.remove.push(n);
            }
        }
        out
    }

    fn route_path(&mut self, r: &file::RouteFile, rs: Range<usize>) -> Option<PathMatch> {
        let (value, exact) = match (&r.path, &r.exact) {
            (Some(_), Some(e)) => {
                self.err(
                    "SY010",
                    span(e),
                    "a route has either `path` (prefix) or `exact`, not both",
                );
                return None;
            }
            (Some(p), None) => (p, false),
            (None, Some(e)) => (e, true),
            (None, None) => {
                self.err(
                    "SY011",
                    Some(rs),
                    format!(
                        "route `{}` has neither `path` nor `exact`",
                        r.name.get_ref()
                    ),
                )
                .help = Some("add path = \"/api/...\" (prefix) or exact = \"/healthz\"".into());
                return None;
            }
        };
        let text = value.get_ref();
        if text.contains(['?', '#']) {
            self.err(
                "SY009",
                span(value),
                format!("path `{text}` contains `?` or `#`"),
            )
            .help = Some("match query parameters with `query = { name = \"value\" }`".into());
            return None;
        }
        if text.contains(['{', '}']) {
            self.err(
                "SY009",
                span(value),
                format!("path `{text}` contains `{{` or `}}`, which a URL path cannot"),
            );
            return None;
        }
        let normalized = match normalize_path(text) {
            Ok(n) => n,
            Err(_) => {
                self.err(
                    "SY009",
                    span(value),
                    format!("`{text}` is not a valid path"),
                )
                .help = Some("paths start with `/` and use %XX escapes".into());
                return None;
            }
        };
        if normalized != text.as_str() {
            self.err(
                "SY009",
                span(value),
                format!("path `{text}` is not in normal form, so no request could match it"),
            )
            .help = Some(format!("write `{normalized}`"));
            return None;
        }
        Some(if exact {
            PathMatch::Exact(text.clone())
        } else if text.len() > 1 {
            PathMatch::Prefix(text.trim_end_matches('/').to_string())
        } else {
            PathMatch::Prefix("/".into())
        })
    }

    fn host(&mut self, h: &SStr) -> Option<HostMatch> {
        let text = h.get_ref().to_ascii_lowercase();
        let (wild, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || !name.split('.').all(valid_label) {
            let help = if text.contains(':') {
                "the port is not part of a host match; write the name alone"
            } else {
                "write a DNS name like \"api.example.com\" or \"*.example.com\""
            };
            self.err(
                "SY008",
                span(h),
                format!("`{}` is not a valid host", h.get_ref()),
            )
            .help = Some(help.into());
            return None;
        }
        Some(if wild {
            HostMatch::Wildcard(format!(".{name}"))
        } else {
            HostMatch::Exact(name.to_string())
        })
    }

    fn methods(&mut self, r: &file::RouteFile) -> Vec<Method> {
        let mut out = Vec::new();
        let Some(ms) = &r.methods else { return out };
        if ms.get_ref().is_empty() {
            self.err(
                "SY021",
                span(ms),
                "`methods` is empty, so the route can never match",
            )
            .help = Some("remove `methods` to match every method".into());
        }
        const KNOWN: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
        ];
        for m in ms.get_ref() {
            let t = m.get_ref();
            if !KNOWN.contains(&t.as_str()) {
                let upper = t.to_ascii_uppercase();
                let help = if KNOWN.contains(&upper.as_str()) {
                    Some(format!("methods are case-sensitive: write `{upper}`"))
                } else {
                    did_you_mean(&upper, KNOWN)
                };
                self.err("SY019", span(m), format!("unknown method `{t}`"))
                    .help = help;
                continue;
            }
            if let Ok(method) = Method::from_bytes(t.as_bytes()) {
                if out.contains(&method) {
                    self.errors.push(ConfigError::warning(
                        "SY020",
                        span(m),
                        format!("method `{t}` is listed twice"),
                    ));
                } else {
                    out.push(method);
                }
            }
        }
        out
    }

    fn header_predicates(&mut self, r: &file::RouteFile) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        for (k, v) in r.headers.iter().flatten() {
            let name = HeaderName::from_bytes(k.get_ref().as_bytes());
            let value = HeaderValue::from_str(v.get_ref());
            match (name, value) {
                (Ok(n), Ok(v)) => out.push((n, v)),
                (Err(_), _) => {
                    self.err(
                        "SY018",
                        span(k),
                        format!("`{}` is not a valid header name", k.get_ref()),
                    );
                }
                (_, Err(_)) => {
                    self.err(
                        "SY018",
                        span(v),
                        format!("`{}` is not a valid header value", v.get_ref()),
                    );
                }
            }
        }
        out
    }

    fn strip_prefix(&mut self, sp: &SStr, path: Option<&PathMatch>) -> Option<String> {
        let text = sp.get_ref();
        let trimmed = if text.len() > 1 {
            text.trim_end_matches('/')
        } else {
            text.as_str()
        };
        if !text.starts_with('/')
            || normalize_path(text)
                .map(|n| n != text.as_str())
                .unwrap_or(true)
        {
            self.err(
                "SY009",
                span(sp),
                format!("strip_prefix `{text}` is not a normalised path"),
            );
            return None;
        }
        if let Some(path) = path
            && !prefix_matches(trimmed, path.as_str())
        {
            self.err(
                "SY009",
                span(sp),
                format!(
                    "strip_prefix `{text}` is not a prefix of the route's path `{}`",
                    path.as_str()
                ),
            )
            .help = Some(
                "strip_prefix removes the start of the matched path; it must begin that path"
                    .into(),
            );
            return None;
        }
        Some(trimmed.to_string())
    }

    /// A route is unreachable when another route with the same host and path is tried
    /// before it and matches every request it could match (SY012), most plainly when
    /// both have identical match conditions (SY013).
    fn unreachable_routes(&mut self, routes: &[Route]) {
        // Only routes with the same host and path can shadow each other: compare within
        // those groups, not every pair of the table.
        let mut groups: FastMap<(&Option<HostMatch>, &PathMatch), Vec<&Route>> = FastMap::default();
        groups.reserve(routes.len());
        for r in routes {
            groups.entry((&r.host, &r.path)).or_default().push(r);
        }
        let mut shadowed: Vec<(&Route, &Route)> = Vec::new();
        for group in groups.values().filter(|g| g.len() > 1) {
            crate::background::pace();
            for l in group {
                if let Some(e) = group
                    .iter()
                    .find(|e| e.order != l.order && tried_before(e, l) && covers(e, l))
                {
                    shadowed.push((e, l));
                }
            }
        }
        shadowed.sort_by_key(|(_, l)| l.order);
        for (e, l) in shadowed {
            let line = self.line(e.span.start);
            if covers(l, e) {
                self.err(
                    "SY013",
                    Some(l.span.clone()),
                    format!(
                        "routes `{}` (line {line}) and `{}` have identical match conditions, so `{}` never matches",
                        e.name, l.name, l.name
                    ),
                )
                .help = Some(format!("remove `{}` or give it a distinguishing predicate", l.name));
            } else {
                self.err(
                    "SY012",
                    Some(l.span.clone()),
                    format!(
                        "route `{}` can never match: route `{}` (line {line}) matches every request it would",
                        l.name, e.name
                    ),
                )
                .help = Some(format!("give `{}` a distinguishing predicate, or remove it", l.name));
            }
        }
    }

    /// Warnings about tables that are valid but probably not what was meant.
    fn lint(&mut self, routes: &[Route], defaults: &Defaults) {
        // Prefix traps: `/api/user` next to `/api/users`. For each prefix, look up every
        // shorter string prefix of it that does not end on a segment boundary, so the
        // cost follows the length of the paths, not the square of the table.
        let mut prefixes: FastMap<(&Option<HostMatch>, &str), Vec<&Route>> = FastMap::default();
        prefixes.reserve(routes.len());
        for r in routes {
            if let PathMatch::Prefix(p) = &r.path {
                prefixes.entry((&r.host, p.as_str())).or_default().push(r);
            }
        }
        let mut traps: Vec<(&Route, &Route)> = Vec::new();
        for b in routes {
            // A hashed lookup per character and no allocation: on a reload's paced
            // background thread, pause here (10,000 routes were milliseconds without
            // a pause).
            crate::background::pace();
            let PathMatch::Prefix(pb) = &b.path else {
                continue;
            };
            for (i, c) in pb.char_indices().skip(2) {
                if c == '/' || pb.as_bytes()[i - 1] == b'/' {
                    continue;
                }
                if let Some(shorter) = prefixes.get(&(&b.host, &pb[..i])) {
                    traps.extend(shorter.iter().map(|a| (*a, b)));
                }
            }
        }
        traps.sort_by_key(|(a, b)| (a.order, b.order));
        for (a, b) in traps {
            let (pa, pb) = (a.path.as_str(), b.path.as_str());
            let line = self.line(b.span.start);
            self.errors.push(
                ConfigError::warning(
                    "SY014",
                    Some(a.span.clone()),
                    format!(
                        "prefix `{pa}` of route `{}` does not cover `{pb}` of route `{}` (line {line}): prefixes match whole segments",
                        a.name, b.name
                    ),
                )
                .help(format!(
                    "`{pa}` matches `{pa}` and `{pa}/…`, never `{pb}`; if one of the two is a typo, fix it"
                )),
            );
        }
        for r in routes {
            crate::background::pace();
            let Some(f) = r.forward() else { continue };
            if let Some(t) = f.timeout
                && t > defaults.request_timeout
            {
                self.errors.push(
                    ConfigError::warning(
                        "SY016",
                        Some(r.span.clone()),
                        format!(
                            "route `{}` has timeout {t:?}, longer than defaults.request_timeout ({:?})",
                            r.name, defaults.request_timeout
                        ),
                    )
                    .help("a long route timeout holds connections and memory; check that it is meant"),
                );
            }
            if f.total_weight == 0 {
                self.errors.push(
                    ConfigError::warning(
                        "SY017",
                        Some(r.span.clone()),
                        format!(
                            "every backend of route `{}` has weight 0: it answers 500",
                            r.name
                        ),
                    )
                    .help("give one backend a weight above 0, or remove the route"),
                );
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

/// Headers a route filter must not touch, and why.
fn owned_by_gateway(n: &HeaderName, dir: Direction) -> Option<&'static str> {
    if dir == Direction::Request && n == http::header::HOST {
        return Some("use `rewrite = { host = \"…\" }`");
    }
    gateway_owned_header(n.as_str(), dir == Direction::Request)
}

/// Headers no route filter (and no imported nginx directive) may set or remove, with
/// the reason; `lname` is lower-case. `host` is not among them: routes change it with
/// `rewrite.host`. The one list both `check` and `import` use.
pub fn gateway_owned_header(lname: &str, request: bool) -> Option<&'static str> {
    const HOP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ];
    if HOP.contains(&lname) {
        return Some("it describes the connection or the framing, which the gateway owns");
    }
    if lname == "x-request-id" {
        return Some("the gateway sets the request id");
    }
    if request {
        if matches!(
            lname,
            "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "forwarded"
        ) {
            return Some("the gateway sets the forwarding headers");
        }
        if lname == "traceparent" {
            return Some("the gateway continues the W3C trace context");
        }
    }
    None
}

/// The within-path precedence: method predicate first, then more headers, then more
/// query parameters, then file order. The router sorts by the same key.
pub fn rank_key(
    r: &Route,
) -> (
    bool,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
    usize,
) {
    (
        r.methods.is_empty(),
        std::cmp::Reverse(r.headers.len()),
        std::cmp::Reverse(r.query.len()),
        r.order,
    )
}

fn tried_before(e: &Route, l: &Route) -> bool {
    rank_key(e) < rank_key(l)
}

/// Does every request that matches `l`'s predicates also match `e`'s?
fn covers(e: &Route, l: &Route) -> bool {
    let methods = e.methods.is_empty()
        || (!l.methods.is_empty() && l.methods.iter().all(|m| e.methods.contains(m)));
    let headers = e.headers.iter().all(|h| l.headers.contains(h));
    let query = e.query.iter().all(|q| l.query.contains(q));
    methods && headers && query
}

/// `host:port` with an IP literal or a DNS name.
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("endpoint `{s}` has port 0"));
        }
        return Ok(Endpoint {
            host: addr.ip().to_string(),
            port: addr.port(),
            addr: Some(addr),
        });
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("endpoint `{s}` has no port"));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("endpoint `{s}` has an invalid port `{port}`")),
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(format!("endpoint `{s}` has an invalid host `{host}`"));
    }
    Ok(Endpoint {
        host: host.to_ascii_lowercase(),
        port,
        addr: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> Vec<String> {
        match parse(src) {
            Ok(_) => vec![],
            Err(e) => e
                .items
                .iter()
                .filter(|e| e.severity == super::super::error::Severity::Error)
                .map(|e| e.to_string())
                .collect(),
        }
    }

    const BASE: &str = "[services.users]\nendpoints = [\"127.0.0.1:9001\"]\n";

    #[test]
    fn sizes_have_binary_and_decimal_units() {
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("1 MiB").is_err());
        assert!(parse_size("1Mb").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn a_service_used_only_in_a_split_is_used() {
        let src = "[services.a]\nendpoints = [\"127.0.0.1:1\"]\n[services.b]\nendpoints = [\"127.0.0.1:2\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nsplit = [{ service = \"a\", weight = 1 }, { service = \"b\", weight = 1 }]\n";
        let (_, warnings) = parse(src).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 sec").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn unknown_service_suggests_the_closest_name() {
        let src = format!("{BASE}[[routes]]\nname = \"u\"\npath = \"/u\"\nservice = \"usres\"\n");
        let e = errors(&src);
        assert_eq!(e, ["unknown service `usres` (did you mean `users`?)"]);
    }

    #[test]
    fn unknown_key_suggests_the_closest_key() {
        let src = format!("{BASE}[[routes]]\nname = \"u\"\npath = \"/u\"\nservise = \"users\"\n");
        let e = errors(&src);
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("unknown key `servise`"), "{e:?}");
        assert!(e[0].contains("did you mean `service`?"), "{e:?}");
    }

    #[test]
    fn identical_routes_are_unreachable() {
        let src = format!(
            "{BASE}[[routes]]\nname = \"a\"\npath = \"/u\"\nservice = \"users\"\n\
             [[routes]]\nname = \"b\"\npath = \"/u/\"\nservice = \"users\"\n"
        );
        let e = errors(&src);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("identical match conditions, so `b` never matches"),
            "{e:?}"
        );
    }

    #[test]
    fn a_more_specific_later_route_is_reachable() {
        let src = format!(
            "{BASE}[[routes]]\nname = \"a\"\npath = \"/u\"\nservice = \"users\"\n\
             [[routes]]\nname = \"b\"\npath = \"/u\"\nmethods = [\"GET\"]\nservice = \"users\"\n"
        );
        assert!(errors(&src).is_empty());
    }

    #[test]
    fn endpoints_need_a_port_and_a_valid_host() {
        assert!(parse_endpoint("10.0.0.1:80").is_ok());
        assert!(parse_endpoint("[::1]:80").is_ok());
        assert!(parse_endpoint("users.svc:80").is_ok());
        assert!(parse_endpoint("users.svc").is_err());
        assert!(parse_endpoint("users.svc:0").is_err());
        assert!(parse_endpoint("us_ers:80").is_err());
        assert!(parse_endpoint("http://users:80").is_err());
    }

    #[test]
    fn paths_must_be_normalised() {
        let src =
            format!("{BASE}[[routes]]\nname = \"a\"\npath = \"/a//b\"\nservice = \"users\"\n");
        assert_eq!(
            errors(&src),
            ["path `/a//b` is not in normal form, so no request could match it (write `/a/b`)"]
        );
    }

    fn with_policy(algorithms: &str, route_auth: &str) -> String {
        format!(
            "{BASE}[auth.user-jwt]\nalgorithms = {algorithms}\njwks = \"http://idp/jwks.json\"\n\
             [[routes]]\nname = \"u\"\npath = \"/u\"\nservice = \"users\"\nauth = \"{route_auth}\"\n"
        )
    }

    #[test]
    fn auth_algorithm_none_is_rejected() {
        let e = errors(&with_policy("[\"none\"]", "user-jwt"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("algorithm `none` is never accepted"),
            "{e:?}"
        );
    }

    #[test]
    fn auth_hmac_cannot_be_mixed_with_public_key_algorithms() {
        let e = errors(&with_policy("[\"RS256\", \"HS256\"]", "user-jwt"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("cannot be mixed"), "{e:?}");
    }

    #[test]
    fn auth_unknown_policy_suggests_the_closest_name() {
        let e = errors(&with_policy("[\"RS256\"]", "user-jtw"));
        assert_eq!(
            e,
            ["unknown auth policy `user-jtw` (did you mean `user-jwt`?)"]
        );
    }

    #[test]
    fn auth_policy_is_built_with_every_check_set() {
        let (c, _) = parse(&with_policy("[\"RS256\", \"ES256\"]", "user-jwt")).unwrap();
        assert_eq!(c.routes[0].auth, Some(0));
        let p = &c.auth[0];
        assert!(p.required);
        assert_eq!(p.leeway, Duration::from_secs(30));
        assert_eq!(p.max_token_bytes, 8192);
        assert!(matches!(
            &p.keys,
            KeySource::Url { refetch, .. } if *refetch == Duration::from_secs(30)
        ));
    }

    fn with_https_jwks(ca: &std::path::Path) -> String {
        format!(
            "{BASE}[auth.user-jwt]\nalgorithms = [\"RS256\"]\n\
             jwks = \"https://idp.example.com/jwks.json\"\njwks_ca = {:?}\n",
            ca.display().to_string()
        )
    }

    #[test]
    fn https_jwks_reads_its_ca_bundle() {
        let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/check/tls/a.crt");
        let (c, _) = parse(&with_https_jwks(&ca)).unwrap();
        match &c.auth[0].keys {
            KeySource::Url { url, ca, .. } => {
                assert_eq!(url.scheme_str(), Some("https"));
                assert_eq!(ca.as_ref().map(|c| c.0.len()), Some(1));
            }
            other => panic!("{other:?}"),
        }
        // Without `jwks_ca`: the system's roots.
        let src = format!(
            "{BASE}[auth.p]\nalgorithms = [\"ES256\"]\njwks = \"https://idp:8443/jwks.json\"\n"
        );
        let (c, _) = parse(&src).unwrap();
        assert!(matches!(&c.auth[0].keys, KeySource::Url { ca: None, .. }));
    }

    #[test]
    fn a_jwks_ca_that_is_not_a_usable_certificate_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = errors(&with_https_jwks(&garbage));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("bad CA certificate"), "{e:?}");

        let e = errors(&with_https_jwks(&dir.path().join("missing.pem")));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("cannot read"), "{e:?}");
    }

    #[test]
    fn strip_prefix_must_begin_the_path() {
        let src = format!(
            "{BASE}[[routes]]\nname = \"a\"\npath = \"/api/users\"\nstrip_prefix = \"/v1\"\nservice = \"users\"\n"
        );
        let e = errors(&src);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("strip_prefix `/v1` is not a prefix"),
            "{e:?}"
        );
    }
}
