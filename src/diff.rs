//! `switchyard diff OLD NEW`: what a route-table change does, for the pull request.
//!
//! Two parts. The structural diff compares routes and services by name and lists what
//! was added, removed or changed, field by field. The replay takes real requests (the
//! gateway's own JSON access log, or a plain list), matches each one against both
//! tables with the real router, and groups the requests whose outcome (route, backends,
//! upstream path, redirect) would change. Outcomes are cached per distinct request, so
//! a log of a million lines with the usual repetition replays in a few seconds.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::BufRead;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::config::Config;
use crate::config::model::{Action, PathMatch, PathRewrite, Route, prefix_matches};
use crate::http::normalize::{normalize_host, normalize_path};
use crate::router::{RequestInfo, Router};

/// One side of the comparison.
pub struct Table {
    pub config: Config,
    pub router: Router,
}

impl Table {
    pub fn new(config: Config) -> Self {
        let router = Router::new(&config);
        Table { config, router }
    }
}

/// One changed item of the structural diff.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// `route` or `service`.
    pub kind: &'static str,
    pub name: String,
    /// `added`, `removed` or `changed`.
    pub what: &'static str,
    /// For `changed`: (field, before, after). For added/removed: the description.
    pub fields: Vec<(String, String, String)>,
    /// The route's path (for protected-path checks); `None` for services.
    pub path: Option<String>,
}

/// Route fields as text, the unit the diff compares.
fn describe_route(r: &Route, c: &Config) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let mut matcher = String::new();
    if let Some(h) = &r.host {
        let _ = write!(matcher, "host {h} ");
    }
    let _ = match &r.path {
        PathMatch::Exact(p) => write!(matcher, "exact {p}"),
        PathMatch::Prefix(p) => write!(matcher, "prefix {p}"),
    };
    if !r.methods.is_empty() {
        let ms: Vec<&str> = r.methods.iter().map(|m| m.as_str()).collect();
        let _ = write!(matcher, " methods {}", ms.join(","));
    }
    for (k, v) in &r.headers {
        let _ = write!(matcher, " header {k}={}", v.to_str().unwrap_or("?"));
    }
    for (k, v) in &r.query {
        let _ = write!(matcher, " query {k}={v}");
    }
    m.insert("match", matcher);
    match &r.action {
        Action::Forward(f) => {
            m.insert("backends", backends(r, c));
            match &f.path {
                PathRewrite::Keep => {}
                other => {
                    m.insert("path rewrite", rewrite_text(other));
                }
            }
            if let Some(h) = &f.host {
                m.insert("host rewrite", h.to_str().unwrap_or("?").to_string());
            }
            if let Some(t) = f.timeout {
                m.insert("timeout", format!("{t:?}"));
            }
        }
        Action::Redirect(rd) => {
            m.insert(
                "redirect",
                format!(
                    "{} scheme={} host={} port={} path={}",
                    rd.status,
                    rd.scheme.as_deref().unwrap_or("(same)"),
                    rd.host.as_deref().unwrap_or("(same)"),
                    rd.port.map_or("(same)".to_string(), |p| p.to_string()),
                    rewrite_text(&rd.path)
                ),
            );
        }
    }
    if !r.request_headers.is_empty() {
        m.insert("request_headers", format!("{:?}", r.request_headers));
    }
    if !r.response_headers.is_empty() {
        m.insert("response_headers", format!("{:?}", r.response_headers));
    }
    m
}

fn rewrite_text(p: &PathRewrite) -> String {
    match p {
        PathRewrite::Keep => "(same)".into(),
        PathRewrite::Strip(s) => format!("strip {s}"),
        PathRewrite::ReplacePrefix(s) => {
            format!("prefix -> {}", if s.is_empty() { "/" } else { s })
        }
        PathRewrite::ReplaceFull(s) => format!("path -> {s}"),
    }
}

/// `users` or `users 90, users-v2 10`.
fn backends(r: &Route, c: &Config) -> String {
    match &r.action {
        Action::Forward(f) if f.backends.len() == 1 => {
            c.services[f.backends[0].service].name.clone()
        }
        Action::Forward(f) => f
            .backends
            .iter()
            .map(|b| format!("{} {}", c.services[b.service].name, b.weight))
            .collect::<Vec<_>>()
            .join(", "),
        Action::Redirect(rd) => format!("redirect {}", rd.status),
    }
}

/// Routes and services added, removed or changed, in a stable order.
pub fn structural(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    let old_routes: BTreeMap<&str, &Route> =
        old.routes.iter().map(|r| (r.name.as_str(), r)).collect();
    let new_routes: BTreeMap<&str, &Route> =
        new.routes.iter().map(|r| (r.name.as_str(), r)).collect();
    let summary = |r: &Route, c: &Config| {
        let d = describe_route(r, c);
        vec![(
            "route".to_string(),
            String::new(),
            d.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("; "),
        )]
    };
    for (name, r) in &old_routes {
        if !new_routes.contains_key(name) {
            out.push(Change {
                kind: "route",
                name: name.to_string(),
                what: "removed",
                fields: summary(r, old),
                path: Some(r.path.as_str().to_string()),
            });
        }
    }
    for (name, r) in &new_routes {
        match old_routes.get(name) {
            None => out.push(Change {
                kind: "route",
                name: name.to_string(),
                what: "added",
                fields: summary(r, new),
                path: Some(r.path.as_str().to_string()),
            }),
            Some(o) => {
                let (a, b) = (describe_route(o, old), describe_route(r, new));
                let keys: std::collections::BTreeSet<&&str> = a.keys().chain(b.keys()).collect();
                let fields: Vec<_> = keys
                    .into_iter()
                    .filter(|k| a.get(**k) != b.get(**k))
                    .map(|k| {
                        let none = || "(none)".to_string();
                        (
                            k.to_string(),
                            a.get(*k).cloned().unwrap_or_else(none),
                            b.get(*k).cloned().unwrap_or_else(none),
                        )
                    })
                    .collect();
                if !fields.is_empty() {
                    out.push(Change {
                        kind: "route",
                        name: name.to_string(),
                        what: "changed",
                        fields,
                        path: Some(o.path.as_str().to_string()),
                    });
                }
            }
        }
    }
    let svc = |s: &crate::config::model::Service| {
        let eps: Vec<String> = s.endpoints.iter().map(|e| e.to_string()).collect();
        format!(
            "endpoints {}; connect_timeout {:?}",
            eps.join(", "),
            s.connect_timeout
        )
    };
    let old_svcs: BTreeMap<&str, String> = old
        .services
        .iter()
        .map(|s| (s.name.as_str(), svc(s)))
        .collect();
    let new_svcs: BTreeMap<&str, String> = new
        .services
        .iter()
        .map(|s| (s.name.as_str(), svc(s)))
        .collect();
    for (name, d) in &old_svcs {
        if !new_svcs.contains_key(name) {
            out.push(Change {
                kind: "service",
                name: name.to_string(),
                what: "removed",
                fields: vec![("service".into(), String::new(), d.clone())],
                path: None,
            });
        }
    }
    for (name, d) in &new_svcs {
        match old_svcs.get(name) {
            None => out.push(Change {
                kind: "service",
                name: name.to_string(),
                what: "added",
                fields: vec![("service".into(), String::new(), d.clone())],
                path: None,
            }),
            Some(o) if o != d => out.push(Change {
                kind: "service",
                name: name.to_string(),
                what: "changed",
                fields: vec![("service".into(), o.clone(), d.clone())],
                path: None,
            }),
            Some(_) => {}
        }
    }
    out
}

/// A request read from a log or list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sample {
    pub method: String,
    pub host: Option<String>,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct LogLine<'a> {
    #[serde(borrow)]
    method: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    host: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    path: std::borrow::Cow<'a, str>,
}

/// Parse one input line: a JSON access-log line (`{"method":…,"host":…,"path":…}`) or
/// a plain `METHOD URL [name:value]…` line. Blank lines and `#` comments give `None`.
pub fn parse_sample(line: &str) -> Result<Option<Sample>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if line.starts_with('{') {
        let l: LogLine =
            serde_json::from_str(line).map_err(|e| format!("not an access-log line: {e}"))?;
        let (path, query) = match l.path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (l.path.into_owned(), None),
        };
        return Ok(Some(Sample {
            method: l.method.into_owned(),
            host: l.host.map(|h| h.into_owned()),
            path,
            query,
            headers: Vec::new(),
        }));
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(url)) = (parts.next(), parts.next()) else {
        return Err("expected `METHOD URL [name:value]...`".into());
    };
    let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    let mut headers = Vec::new();
    for h in parts {
        let Some((k, v)) = h.split_once(':') else {
            return Err(format!("`{h}` is not a header: write name:value"));
        };
        headers.push((k.to_ascii_lowercase(), v.to_string()));
    }
    let host = uri.authority().map(|a| a.as_str().to_string()).or_else(|| {
        headers
            .iter()
            .find(|(k, _)| k == "host")
            .map(|(_, v)| v.clone())
    });
    Ok(Some(Sample {
        method: method.to_string(),
        host,
        path: if uri.path().is_empty() {
            "/".into()
        } else {
            uri.path().to_string()
        },
        query: uri.query().map(str::to_string),
        headers,
    }))
}

/// What a table does with one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Outcome {
    /// Route name, or `(no route)`.
    pub route: String,
    /// Backends (`users`, `users 90, users-v2 10`), `redirect 301`, `404` or `400`.
    pub target: String,
    /// Upstream path (or redirect path) after rewrites.
    pub path: String,
    /// The matched route's path, for grouping (`/api/users/*`).
    pattern: Option<String>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (route {})", self.target, self.route)
    }
}

fn outcome(t: &Table, s: &Sample) -> Outcome {
    let Ok(method) = Method::from_bytes(s.method.as_bytes()) else {
        return bad("400 bad method");
    };
    let Ok(path) = normalize_path(&s.path) else {
        return bad("400 bad_path");
    };
    let mut headers = HeaderMap::new();
    for (k, v) in &s.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    let host = s.host.as_deref().and_then(normalize_host);
    let info = RequestInfo {
        method: &method,
        host: host.as_deref(),
        path: &path,
        query: s.query.as_deref(),
        headers: &headers,
    };
    match t.router.find(&info) {
        None => Outcome {
            route: "(no route)".into(),
            target: "404".into(),
            path: path.into_owned(),
            pattern: None,
        },
        Some((_, r)) => {
            let pattern = match &r.path {
                PathMatch::Exact(p) => p.clone(),
                PathMatch::Prefix(p) if p == "/" => "/*".into(),
                PathMatch::Prefix(p) => format!("{p}/*"),
            };
            Outcome {
                route: r.name.clone(),
                target: backends(r, &t.config),
                path: r.upstream_path(&path).into_owned(),
                pattern: Some(pattern),
            }
        }
    }
}

fn bad(what: &str) -> Outcome {
    Outcome {
        route: "(refused)".into(),
        target: what.into(),
        path: String::new(),
        pattern: None,
    }
}

/// One group of requests that move the same way.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Moved {
    pub count: u64,
    /// `GET /api/users/*`.
    pub requests: String,
    pub before: String,
    pub after: String,
    /// True when the upstream path changes while route and backends stay.
    pub path_changed: bool,
    /// A concrete example request path.
    pub example: String,
}

/// The replay's result.
#[derive(Debug, Default, serde::Serialize)]
pub struct Replay {
    pub total: u64,
    pub changed: u64,
    /// Lines that could not be read, with their line numbers (first 10).
    pub bad_lines: Vec<(u64, String)>,
    pub bad_line_count: u64,
    pub moved: Vec<Moved>,
    /// Changed requests under a protected path.
    pub protected_changed: u64,
}

/// Replay every line of `input` against both tables.
pub fn replay(
    old: &Table,
    new: &Table,
    input: impl BufRead,
    protected: &[String],
) -> std::io::Result<Replay> {
    let mut out = Replay::default();
    let mut cache: HashMap<Sample, (Outcome, Outcome)> = HashMap::new();
    let mut groups: HashMap<(String, String, String, bool), (u64, String)> = HashMap::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let sample = match parse_sample(&line) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                out.bad_line_count += 1;
                if out.bad_lines.len() < 10 {
                    out.bad_lines.push((i as u64 + 1, e));
                }
                continue;
            }
        };
        out.total += 1;
        let (a, b) = match cache.get(&sample) {
            Some(v) => v.clone(),
            None => {
                let v = (outcome(old, &sample), outcome(new, &sample));
                if cache.len() < 1_000_000 {
                    cache.insert(sample.clone(), v.clone());
                }
                v
            }
        };
        if a == b || (a.route == b.route && a.target == b.target && a.path == b.path) {
            continue;
        }
        out.changed += 1;
        if protected
            .iter()
            .any(|p| prefix_matches(p.trim_end_matches('/'), &sample.path))
        {
            out.protected_changed += 1;
        }
        let pattern = a
            .pattern
            .iter()
            .chain(b.pattern.iter())
            .max_by_key(|p| p.len())
            .cloned()
            .unwrap_or_else(|| sample.path.clone());
        let path_changed = a.route == b.route && a.target == b.target;
        let (before, after) = if path_changed {
            (
                format!("{} (path {})", a, a.path),
                format!("{} (path {})", b, b.path),
            )
        } else {
            (a.to_string(), b.to_string())
        };
        let key = (
            format!("{} {pattern}", sample.method),
            before,
            after,
            path_changed,
        );
        let entry = groups.entry(key).or_insert((0, sample.path.clone()));
        entry.0 += 1;
    }
    let mut moved: Vec<Moved> = groups
        .into_iter()
        .map(
            |((requests, before, after, path_changed), (count, example))| Moved {
                count,
                requests,
                before,
                after,
                path_changed,
                example,
            },
        )
        .collect();
    moved.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.requests.cmp(&b.requests))
    });
    out.moved = moved;
    Ok(out)
}

/// Does a structural change touch a protected path?
pub fn touches_protected(changes: &[Change], protected: &[String]) -> bool {
    changes.iter().any(|c| {
        c.path.as_deref().is_some_and(|p| {
            protected.iter().any(|pp| {
                let pp = pp.trim_end_matches('/');
                let pp = if pp.is_empty() { "/" } else { pp };
                prefix_matches(pp, p) || prefix_matches(p, pp)
            })
        })
    })
}

/// Text for a terminal, or Markdown for a PR comment.
pub fn render(changes: &[Change], replay: Option<&Replay>, markdown: bool) -> String {
    let mut s = String::new();
    if markdown {
        s.push_str("### Route table changes\n\n");
        if changes.is_empty() {
            s.push_str("No route or service changed.\n");
        } else {
            s.push_str("| | kind | name | field | before | after |\n|---|---|---|---|---|---|\n");
            for c in changes {
                let sign = match c.what {
                    "added" => "+",
                    "removed" => "-",
                    _ => "~",
                };
                for (field, before, after) in &c.fields {
                    let _ = writeln!(
                        s,
                        "| {sign} | {} | `{}` | {field} | {} | {} |",
                        c.kind,
                        c.name,
                        md(before),
                        md(after)
                    );
                }
            }
        }
    } else if changes.is_empty() {
        s.push_str("route table: no route or service changed\n");
    } else {
        for c in changes {
            let _ = writeln!(s, "{} {} `{}`", c.what, c.kind, c.name);
            for (field, before, after) in &c.fields {
                if c.what == "changed" {
                    let _ = writeln!(s, "    {field}: {before}  =>  {after}");
                } else {
                    let _ = writeln!(s, "    {after}");
                }
            }
        }
    }
    if let Some(r) = replay {
        if markdown {
            let _ = writeln!(
                s,
                "\n### Replayed traffic\n\n{} of {} requests would be answered differently.\n",
                r.changed, r.total
            );
            if !r.moved.is_empty() {
                s.push_str(
                    "| requests | match | before | after | example |\n|---:|---|---|---|---|\n",
                );
                for m in &r.moved {
                    let _ = writeln!(
                        s,
                        "| {} | `{}` | {} | {} | `{}` |",
                        m.count,
                        m.requests,
                        md(&m.before),
                        md(&m.after),
                        m.example
                    );
                }
            }
        } else {
            let _ = writeln!(
                s,
                "\nreplay: {} of {} requests would be answered differently",
                r.changed, r.total
            );
            for m in &r.moved {
                let _ = writeln!(
                    s,
                    "  {} requests of `{}` move from {} to {} (e.g. {})",
                    m.count, m.requests, m.before, m.after, m.example
                );
            }
        }
        if r.bad_line_count > 0 {
            let _ = writeln!(
                s,
                "\n{} input lines could not be read, e.g.:",
                r.bad_line_count
            );
            for (n, e) in &r.bad_lines {
                let _ = writeln!(s, "  line {n}: {e}");
            }
        }
    }
    s
}

fn md(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("`{}`", s.replace('|', "\\|").replace('`', "'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn table(routes: &str) -> Table {
        let src = format!(
            "[services.users]\nendpoints = [\"127.0.0.1:1\"]\n[services.users-v2]\nendpoints = [\"127.0.0.1:2\"]\n{routes}"
        );
        Table::new(config::parse(&src).expect("valid").config)
    }

    #[test]
    fn a_changed_prefix_moves_exactly_the_requests_under_it() {
        let old = table(
            "[[routes]]\nname = \"users\"\npath = \"/api/users\"\nservice = \"users\"\n\
             [[routes]]\nname = \"v2\"\npath = \"/api/users/v2\"\nservice = \"users-v2\"\n",
        );
        let new = table(
            "[[routes]]\nname = \"users\"\npath = \"/api/users\"\nservice = \"users\"\n\
             [[routes]]\nname = \"v2\"\npath = \"/api/users/beta\"\nservice = \"users-v2\"\n",
        );
        let log = "GET /api/users/1\nGET /api/users/v2/1\nGET /api/users/v2/2\nGET /api/users/beta/9\n\
                   {\"method\":\"GET\",\"host\":\"x\",\"path\":\"/api/users/v2/3\",\"status\":200}\nnot a line\n";
        let r = replay(&old, &new, log.as_bytes(), &[]).unwrap();
        assert_eq!(r.total, 5);
        assert_eq!(r.changed, 4);
        assert_eq!(r.bad_line_count, 1);
        let v2 = r
            .moved
            .iter()
            .find(|m| m.requests == "GET /api/users/v2/*")
            .unwrap();
        assert_eq!(v2.count, 3);
        assert_eq!(v2.before, "users-v2 (route v2)");
        assert_eq!(v2.after, "users (route users)");
        let beta = r
            .moved
            .iter()
            .find(|m| m.requests == "GET /api/users/beta/*")
            .unwrap();
        assert_eq!(beta.count, 1);
    }

    #[test]
    fn structural_diff_lists_field_changes() {
        let old =
            table("[[routes]]\nname = \"users\"\npath = \"/api/users\"\nservice = \"users\"\n");
        let new = table(
            "[[routes]]\nname = \"users\"\npath = \"/api/users\"\nsplit = [{ service = \"users\", weight = 90 }, { service = \"users-v2\", weight = 10 }]\ntimeout = \"5s\"\n",
        );
        let c = structural(&old.config, &new.config);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].what, "changed");
        let fields: Vec<&str> = c[0].fields.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(fields, ["backends", "timeout"]);
        assert_eq!(c[0].fields[0].2, "users 90, users-v2 10");
    }

    #[test]
    fn protected_paths_are_detected() {
        let changes = vec![Change {
            kind: "route",
            name: "pay".into(),
            what: "changed",
            fields: vec![],
            path: Some("/api/payments".into()),
        }];
        assert!(touches_protected(&changes, &["/api/payments/".into()]));
        assert!(touches_protected(&changes, &["/api".into()]));
        assert!(!touches_protected(&changes, &["/api/users".into()]));
    }
}
