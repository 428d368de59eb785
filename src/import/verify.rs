//! `switchyard import --verify`: sample requests go through the importer's model of
//! nginx (server selection, [`nginx_location`], the location's `proxy_pass`, `return`
//! or `rewrite`) and through the real router on the imported table; the answers must
//! agree.
//!
//! The model is the one the translation itself relies on, recorded while translating
//! ([`Model`]); the gateway side is `config::parse` + `Router::find` +
//! `Route::upstream_path`, exactly what the gateway runs. Requests that nginx hands to
//! something the import reported as not translated are counted as skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use http::{HeaderMap, Method};

use super::parse::Directive;
use super::{
    Choice, Loc, Redirect, RewriteFlag, SimpleRewrite, nginx_location, regex_as_path,
    regex_may_match, wildcard_matches,
};
use crate::config::model::{Action as GwAction, Config, Route};
use crate::http::normalize::normalize_path;
use crate::router::{RequestInfo, Router};

/// At most this many sample requests (hosts × paths).
pub const MAX_REQUESTS: usize = 4000;

/// The host used for requests that name no server (the default server answers).
pub const UNKNOWN_HOST: &str = "unknown-host.invalid";

/// nginx's request handling as the importer understands it.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub servers: Vec<ServerModel>,
}

/// One `server` block.
#[derive(Debug, Clone, Default)]
pub struct ServerModel {
    /// `file:line` of the block.
    pub at: String,
    /// Translated names: `example.com`, `*.example.com`.
    pub names: Vec<String>,
    pub is_default: bool,
    /// Not a candidate for any request (it yields to a TLS server, or nginx can only
    /// reach it without a matching Host).
    pub excluded: bool,
    /// Some `server_name` could not be translated (a regex may capture any host).
    pub bad_names: bool,
    /// A server-level `return` and its redirect, if translated.
    pub ret: Option<(Directive, Option<Redirect>)>,
    /// Server-level rewrites in order, with the redirect if translated.
    pub rewrites: Vec<(Directive, Option<SimpleRewrite>)>,
    pub locations: Vec<LocModel>,
    /// The import noted that this named server has no `location /`.
    pub no_root_note: bool,
    /// Bare paths (`/api`) the import noted as answered differently, with the
    /// `file:line` of the note.
    pub noted_paths: Vec<(String, String)>,
}

impl ServerModel {
    /// A server that no request reaches in the importer's model.
    pub fn excluded(server: &Directive) -> ServerModel {
        ServerModel {
            at: server.at(),
            excluded: true,
            ..ServerModel::default()
        }
    }
}

/// One `location` block.
#[derive(Debug, Clone)]
pub struct LocModel {
    pub d: Directive,
    pub modifier: String,
    pub path: String,
    /// It has a `proxy_pass` (nginx's automatic 301 from `/p` to `/p/`).
    pub proxied: bool,
    /// What nginx does there; `None` when the location is not translated.
    pub action: Option<NginxAction>,
    /// `file:line` of the note that nginx's prefix is not segment-bounded here.
    pub unbounded_note: Option<String>,
    /// `file:line` of the note on a slash mismatch in this location's `proxy_pass`.
    pub slash_note: Option<String>,
}

/// A location's handling in nginx: `return` first, else a matching `rewrite`, else
/// `proxy_pass`.
#[derive(Debug, Clone, Default)]
pub struct NginxAction {
    pub ret: Option<Redirect>,
    pub rewrite: Option<SimpleRewrite>,
    pub proxy: Option<NginxProxy>,
}

/// `proxy_pass http://upstream[/uri]`.
#[derive(Debug, Clone)]
pub struct NginxProxy {
    /// `host:port` endpoints with their weights.
    pub servers: Vec<(String, u32)>,
    pub uri: Option<String>,
}

/// A comparable answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Proxied: each endpoint's share of the requests (in millionths) and the
    /// forwarded path.
    Proxy {
        endpoints: BTreeMap<String, u64>,
        path: String,
    },
    /// A redirect; `None` parts are the request's own.
    Redirect {
        status: u16,
        scheme: Option<String>,
        host: Option<String>,
        port: Option<u16>,
        path: String,
    },
    /// Neither proxied nor redirected (404).
    NotFound,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Proxy { endpoints, path } => {
                let eps: Vec<String> = endpoints
                    .iter()
                    .map(|(e, share)| match endpoints.len() {
                        1 => e.clone(),
                        _ => format!("{e} ({:.1}%)", *share as f64 / 10_000.0),
                    })
                    .collect();
                write!(f, "proxy to [{}] path `{path}`", eps.join(", "))
            }
            Outcome::Redirect {
                status,
                scheme,
                host,
                port,
                path,
            } => {
                if scheme.is_none() && host.is_none() && port.is_none() {
                    return write!(f, "redirect {status} to {path}");
                }
                let scheme = scheme.as_deref().unwrap_or("(request's scheme)");
                let host = host.as_deref().unwrap_or("(request's host)");
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                write!(f, "redirect {status} to {scheme}://{host}{port}{path}")
            }
            Outcome::NotFound => f.write_str("404 (nothing answers)"),
        }
    }
}

/// One sample request where nginx and the gateway disagree.
#[derive(Debug, Clone)]
pub struct Difference {
    pub host: String,
    pub path: String,
    pub nginx: Outcome,
    /// What in nginx answers: a location's or server's `file:line`.
    pub nginx_at: String,
    pub gateway: Outcome,
    /// The route that answers in the gateway.
    pub route: Option<String>,
    /// `file:line` of the import's note that states this difference.
    pub noted: Option<String>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = match &self.route {
            Some(r) => format!("route `{r}`"),
            None => "no route".to_string(),
        };
        let kind = if self.noted.is_some() {
            "noted"
        } else {
            "differ"
        };
        write!(
            f,
            "verify: {kind}: GET http://{}{}: nginx: {} (from {}); gateway: {} ({route})",
            self.host, self.path, self.nginx, self.nginx_at, self.gateway
        )?;
        match &self.noted {
            Some(at) => write!(f, "; stated by the note at {at}"),
            None => Ok(()),
        }
    }
}

/// The result of a verification.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub requests: usize,
    pub agree: usize,
    /// Requests nginx answers from something not translated.
    pub skipped: usize,
    /// Unexpected differences: the import claims these requests behave as in nginx.
    pub differences: Vec<Difference>,
    /// Differences that a note of the import states (translated with a difference).
    pub noted: Vec<Difference>,
}

impl Report {
    /// `verify: N requests, M agree, K differ, S skipped (not translated), D noted`.
    pub fn summary(&self) -> String {
        format!(
            "verify: {} requests, {} agree, {} differ, {} skipped (not translated), {} noted (differences stated by a note)",
            self.requests,
            self.agree,
            self.differences.len(),
            self.skipped,
            self.noted.len()
        )
    }
}

/// Run the sample requests of `model` through nginx's model and through the router
/// on `toml` (the imported table). `Err` when the table does not validate.
pub fn verify(model: &Model, toml: &str) -> Result<Report, String> {
    let loaded = crate::config::parse(toml).map_err(|e| e.render("(imported table)", toml))?;
    let router = Router::new(&loaded.config);
    let mut report = Report::default();
    for (host, path) in samples(model) {
        report.requests += 1;
        let Some(nginx) = nginx_outcome(model, &host, &path) else {
            report.skipped += 1;
            continue;
        };
        let (gateway, route) = gateway_outcome(&loaded.config, &router, &host, &path);
        if nginx.outcome == gateway {
            report.agree += 1;
            continue;
        }
        let noted = nginx.stated(&path, &gateway);
        let d = Difference {
            host,
            path,
            nginx: nginx.outcome,
            nginx_at: nginx.at,
            gateway,
            route,
            noted,
        };
        if d.noted.is_some() {
            report.noted.push(d);
        } else {
            report.differences.push(d);
        }
    }
    Ok(report)
}

// === sample requests ===

/// (host, path) pairs: every translated server name (a wildcard as `sample.SUFFIX`)
/// and an unknown host, times the paths of [`sample_paths`]; at most
/// [`MAX_REQUESTS`].
pub fn samples(model: &Model) -> Vec<(String, String)> {
    let mut hosts: Vec<String> = Vec::new();
    for s in model.servers.iter().filter(|s| !s.excluded) {
        for n in &s.names {
            let h = match n.strip_prefix("*.") {
                Some(suffix) => format!("sample.{suffix}"),
                None => n.clone(),
            };
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
    }
    hosts.push(UNKNOWN_HOST.to_string());
    let paths = sample_paths(model);
    hosts
        .iter()
        .flat_map(|h| paths.iter().map(move |p| (h.clone(), p.clone())))
        .take(MAX_REQUESTS)
        .collect()
}

/// For every location (and server-level rewrite) path `P` (without its trailing
/// `/`): `P`, `P/`, `P/deeper/x`, the sibling `Px`; plus `/` and an unmatched path.
/// Only normalised paths (what the router sees).
fn sample_paths(model: &Model) -> BTreeSet<String> {
    let mut bases: Vec<String> = Vec::new();
    for s in &model.servers {
        for l in &s.locations {
            if let Some(p) = location_literal(&l.modifier, &l.path) {
                bases.push(p);
            }
        }
        for (d, rw) in &s.rewrites {
            let re = d.args.first().map(String::as_str).unwrap_or_default();
            match rw {
                Some(rw) => bases.push(rw.from.clone()),
                None => bases.extend(location_literal("~", re)),
            }
        }
    }
    let mut out = BTreeSet::from(["/".to_string(), "/verify-unmatched/x".to_string()]);
    for p in bases {
        let b = p.trim_end_matches('/');
        out.insert(p.clone());
        for v in [
            b.to_string(),
            format!("{b}/"),
            format!("{b}/deeper/x"),
            format!("{b}x"),
        ] {
            if !v.is_empty() {
                out.insert(v);
            }
        }
    }
    out.retain(|p| normalize_path(p).is_ok_and(|n| n == *p));
    out
}

/// The literal path a location is about: its path, or a regex's anchored literal
/// start (`~ ^/api/v[0-9]` -> `/api/v`). `None` for named locations.
fn location_literal(modifier: &str, path: &str) -> Option<String> {
    match modifier {
        "" | "^~" | "=" => Some(path.to_string()),
        "~" | "~*" => {
            if let Some(p) = regex_as_path(path, modifier == "~*") {
                return Some(p.text().to_string());
            }
            let body = path.strip_prefix('^')?;
            let lit: String = body
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_'))
                .collect();
            lit.starts_with('/').then_some(lit)
        }
        _ => None,
    }
}

// === nginx's side ===

/// nginx's answer to one request per the importer's model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxAnswer {
    pub outcome: Outcome,
    /// The `file:line` that decides it (a location, a server, a `return`).
    pub at: String,
    /// Import notes that state a difference for this request.
    pub notes: Vec<Stated>,
}

/// A note of the import that states a routing difference, and which differences it
/// explains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stated {
    /// Any difference for this request (a bare path, a server without `location /`
    /// whose request nginx answers with 404).
    Request(String),
    /// nginx's prefix `location` (of this length) is not segment-bounded: explains a
    /// path that continues it without a `/`.
    Unbounded(String, usize),
    /// A slash mismatch in `proxy_pass`: explains a forwarded path that differs only
    /// in its slashes.
    Slashes(String),
}

impl NginxAnswer {
    fn new(outcome: Outcome, at: String) -> NginxAnswer {
        NginxAnswer {
            outcome,
            at,
            notes: Vec::new(),
        }
    }

    /// The `file:line` of a note that explains why the gateway answers `path` with
    /// `gateway` instead.
    pub fn stated(&self, path: &str, gateway: &Outcome) -> Option<String> {
        self.notes.iter().find_map(|n| {
            let explains = match n {
                Stated::Request(_) => true,
                Stated::Unbounded(_, len) => path
                    .get(*len..)
                    .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/')),
                Stated::Slashes(_) => match (&self.outcome, gateway) {
                    (
                        Outcome::Proxy { endpoints, path: a },
                        Outcome::Proxy {
                            endpoints: e2,
                            path: b,
                        },
                    ) => endpoints == e2 && a.replace('/', "") == b.replace('/', ""),
                    _ => false,
                },
            };
            let (Stated::Request(at) | Stated::Unbounded(at, _) | Stated::Slashes(at)) = n;
            explains.then(|| at.clone())
        })
    }
}

/// What nginx does with `GET http://host/path` per the importer's model; `None`
/// when what answers is not translated.
pub fn nginx_outcome(model: &Model, host: &str, path: &str) -> Option<NginxAnswer> {
    let Some(server) = select_server(model, host)? else {
        return Some(NginxAnswer::new(Outcome::NotFound, "(no server)".into()));
    };
    let mut answer = server_outcome(server, path)?;
    for (p, at) in &server.noted_paths {
        if p == path {
            answer.notes.push(Stated::Request(at.clone()));
        }
    }
    Some(answer)
}

/// nginx inside one server: `return`, rewrites, the automatic 301, the location.
fn server_outcome(server: &ServerModel, path: &str) -> Option<NginxAnswer> {
    // With a `return`, every rewrite is untranslated; one that may match runs first
    // in nginx if it comes first in the file, so such requests are skipped.
    for (d, rw) in &server.rewrites {
        match rw {
            Some(rw) => {
                if let Some(o) = rewrite_outcome(rw, path) {
                    return Some(NginxAnswer::new(o, d.at()));
                }
            }
            None => {
                let re = d.args.first().map(String::as_str).unwrap_or_default();
                if regex_may_match(re, path, false) {
                    return None;
                }
            }
        }
    }
    if let Some((d, ret)) = &server.ret {
        let o = redirect_outcome(ret.as_ref()?, path);
        return Some(NginxAnswer::new(o, d.at()));
    }
    if let Some(l) = auto_redirect(&server.locations, path) {
        l.action.as_ref()?;
        let o = Outcome::Redirect {
            status: 301,
            scheme: None,
            host: None,
            port: None,
            path: format!("{path}/"),
        };
        return Some(NginxAnswer::new(o, l.d.at()));
    }
    let locs: Vec<Loc<'_>> = server
        .locations
        .iter()
        .map(|l| Loc {
            d: &l.d,
            modifier: &l.modifier,
            path: l.path.clone(),
        })
        .collect();
    match nginx_location(path, &locs) {
        Choice::Loc(i) => {
            let l = server.locations.get(i)?;
            let o = location_outcome(l, l.action.as_ref()?, path)?;
            let unbounded = l
                .unbounded_note
                .clone()
                .map(|at| Stated::Unbounded(at, l.path.len()));
            let slashes = l.slash_note.clone().map(Stated::Slashes);
            Some(NginxAnswer {
                outcome: o,
                at: l.d.at(),
                notes: unbounded.into_iter().chain(slashes).collect(),
            })
        }
        Choice::Regex(_) => None,
        Choice::None => Some(NginxAnswer {
            outcome: Outcome::NotFound,
            at: server.at.clone(),
            notes: server
                .no_root_note
                .then(|| Stated::Request(server.at.clone()))
                .into_iter()
                .collect(),
        }),
    }
}

/// nginx's server for a Host: an exact name, else the longest leading wildcard, else
/// the default server. `None` when an untranslated (regex) name might capture it.
fn select_server<'m>(model: &'m Model, host: &str) -> Option<Option<&'m ServerModel>> {
    let candidates = || model.servers.iter().filter(|s| !s.excluded);
    if let Some(s) = candidates().find(|s| s.names.iter().any(|n| n == host)) {
        return Some(Some(s));
    }
    let mut best: Option<(usize, &ServerModel)> = None;
    for s in candidates() {
        for n in &s.names {
            if wildcard_matches(n, host) && best.is_none_or(|(len, _)| n.len() > len) {
                best = Some((n.len(), s));
            }
        }
    }
    if let Some((_, s)) = best {
        return Some(Some(s));
    }
    if model.servers.iter().any(|s| s.bad_names) {
        return None;
    }
    Some(candidates().find(|s| s.is_default))
}

/// nginx answers `/api` with a 301 to `/api/` when a proxied (non-regex) location is
/// `/api/` and no location is `/api` itself.
fn auto_redirect<'m>(locs: &'m [LocModel], path: &str) -> Option<&'m LocModel> {
    let static_loc = |l: &&LocModel| matches!(l.modifier.as_str(), "" | "^~" | "=");
    if path == "/" || locs.iter().filter(static_loc).any(|l| l.path == path) {
        return None;
    }
    let slash = format!("{path}/");
    locs.iter()
        .filter(static_loc)
        .find(|l| l.proxied && l.path == slash)
}

/// A translated location's answer to `path`.
fn location_outcome(l: &LocModel, a: &NginxAction, path: &str) -> Option<Outcome> {
    if let Some(r) = &a.ret {
        return Some(redirect_outcome(r, path));
    }
    let rewritten = match &a.rewrite {
        Some(rw) => match rw.flag {
            RewriteFlag::Redirect(_) => {
                if let Some(o) = rewrite_outcome(rw, path) {
                    return Some(o);
                }
                None
            }
            RewriteFlag::Break => rewritten_path(rw, path),
        },
        None => None,
    };
    let p = a.proxy.as_ref()?;
    let forwarded = match (rewritten, &p.uri) {
        // A rewritten path goes upstream whole; proxy_pass's URI is ignored.
        (Some(r), _) => r,
        (None, None) => path.to_string(),
        // `=`: the URI replaces the path; a prefix: the URI replaces the matched
        // prefix, by string (nginx does not care about segments).
        (None, Some(uri)) if l.modifier == "=" => uri.clone(),
        (None, Some(uri)) => format!("{uri}{}", path.get(l.path.len()..).unwrap_or("")),
    };
    Some(Outcome::Proxy {
        endpoints: shares(p.servers.iter().map(|(e, w)| (vec![e.clone()], *w))),
        path: forwarded,
    })
}

/// `rewrite ^FROM(.*)$ TO$1` applied to `path`, if it matches.
fn rewritten_path(rw: &SimpleRewrite, path: &str) -> Option<String> {
    path.strip_prefix(rw.from.as_str())
        .map(|rest| format!("{}{rest}", rw.to))
}

/// A redirecting rewrite's answer to `path`, if it matches.
fn rewrite_outcome(rw: &SimpleRewrite, path: &str) -> Option<Outcome> {
    let RewriteFlag::Redirect(status) = rw.flag else {
        return None;
    };
    Some(Outcome::Redirect {
        status,
        scheme: None,
        host: None,
        port: None,
        path: rewritten_path(rw, path)?,
    })
}

/// `return CODE URL`: a fixed path, or the request's (`$request_uri`).
fn redirect_outcome(r: &Redirect, path: &str) -> Outcome {
    let path = match (&r.path, &r.prefix) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) => path.to_string(),
    };
    Outcome::Redirect {
        status: r.status,
        scheme: r.scheme.clone(),
        host: r.host.clone(),
        port: r.port,
        path,
    }
}

/// Each endpoint's share (in millionths) of groups `(endpoints, weight)`, where a
/// group's endpoints take turns. Endpoints are compared as the gateway prints them.
fn shares(groups: impl Iterator<Item = (Vec<String>, u32)>) -> BTreeMap<String, u64> {
    let groups: Vec<(Vec<String>, u32)> = groups.collect();
    let total: u64 = groups.iter().map(|(_, w)| u64::from(*w)).sum();
    let mut out = BTreeMap::new();
    for (eps, w) in &groups {
        let n = eps.len() as u64;
        for e in eps {
            let key = crate::config::validate::parse_endpoint(e)
                .map(|ep| ep.to_string())
                .unwrap_or_else(|_| e.clone());
            let share = (u64::from(*w) * 1_000_000)
                .checked_div(total * n)
                .unwrap_or(0);
            *out.entry(key).or_insert(0) += share;
        }
    }
    out
}

// === the gateway's side ===

/// What the router does with `GET http://host/path` on the imported table, and the
/// route's name.
pub fn gateway_outcome(
    config: &Config,
    router: &Router,
    host: &str,
    path: &str,
) -> (Outcome, Option<String>) {
    let headers = HeaderMap::new();
    let req = RequestInfo {
        method: &Method::GET,
        host: Some(host),
        path,
        query: None,
        headers: &headers,
    };
    match router.find(&req) {
        Some((_, route)) => (route_outcome(config, route, path), Some(route.name.clone())),
        None => (Outcome::NotFound, None),
    }
}

fn route_outcome(config: &Config, route: &Route, path: &str) -> Outcome {
    let to = route.upstream_path(path).into_owned();
    match &route.action {
        GwAction::Forward(f) => {
            let groups = f.backends.iter().map(|b| {
                let eps = config
                    .services
                    .get(b.service)
                    .map(|s| s.endpoints.iter().map(|e| e.to_string()).collect())
                    .unwrap_or_default();
                (eps, b.weight)
            });
            Outcome::Proxy {
                endpoints: shares(groups),
                path: to,
            }
        }
        GwAction::Redirect(r) => Outcome::Redirect {
            status: r.status,
            scheme: r.scheme.clone(),
            host: r.host.clone(),
            port: r.port,
            path: to,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::import::{parse, translate_with_model};

    const CONF: &str = "
upstream api { server 10.0.0.1:8080; }
upstream web { server 10.0.0.2:8080; }
server {
    listen 80;
    location /api/ { proxy_pass http://api; }
    location / { proxy_pass http://web; }
}
server {
    listen 80;
    server_name example.com;
    location /api/ { proxy_pass http://api/v2/; }
    location / { proxy_pass http://web; }
}
";

    fn import(src: &str) -> (String, Model) {
        let tree = parse::parse_str(src, Path::new("n.conf")).expect("parses");
        let (import, model) = translate_with_model(&tree, "n.conf");
        (import.toml, model)
    }

    /// `toml` with `from` replaced by `to` inside the route named `route` only.
    fn patch_route(toml: &str, route: &str, from: &str, to: &str) -> String {
        let name = format!("name = \"{route}\"\n");
        toml.split_inclusive("[[routes]]")
            .map(|chunk| {
                if chunk.starts_with(&format!("\n{name}")) {
                    assert!(chunk.contains(from), "`{from}` not in route {route}");
                    chunk.replacen(from, to, 1)
                } else {
                    chunk.to_string()
                }
            })
            .collect()
    }

    #[test]
    fn the_import_agrees_with_its_nginx_model() {
        let (toml, model) = import(CONF);
        let report = verify(&model, &toml).expect("valid table");
        assert!(report.requests >= 10, "{report:?}");
        assert_eq!(report.agree, report.requests, "{report:?}");
        assert!(report.differences.is_empty() && report.noted.is_empty());
    }

    #[test]
    fn a_route_pointing_elsewhere_is_exactly_the_difference() {
        let (toml, model) = import(CONF);
        let wrong = patch_route(
            &toml,
            "example-com-api",
            "service = \"api\"",
            "service = \"web\"",
        );
        assert_ne!(wrong, toml);
        let report = verify(&model, &wrong).expect("valid table");
        let got: Vec<(&str, &str, &str, Option<&str>)> = report
            .differences
            .iter()
            .map(|d| {
                (
                    d.host.as_str(),
                    d.path.as_str(),
                    d.nginx_at.as_str(),
                    d.route.as_deref(),
                )
            })
            .collect();
        let route = Some("example-com-api");
        assert_eq!(
            got,
            [
                ("example.com", "/api/", "n.conf:12", route),
                ("example.com", "/api/deeper/x", "n.conf:12", route),
            ],
            "{report:?}"
        );
        let d = &report.differences[0];
        let proxy = |ep: &str, path: &str| Outcome::Proxy {
            endpoints: BTreeMap::from([(ep.to_string(), 1_000_000)]),
            path: path.to_string(),
        };
        assert_eq!(d.nginx, proxy("10.0.0.1:8080", "/v2/"));
        assert_eq!(d.gateway, proxy("10.0.0.2:8080", "/v2/"));
        assert!(report.noted.is_empty());
        assert_eq!(report.agree + 2, report.requests);
        assert!(
            d.to_string().starts_with(
                "verify: differ: GET http://example.com/api/: nginx: proxy to [10.0.0.1:8080] path `/v2/` (from n.conf:12); gateway: proxy to [10.0.0.2:8080] path `/v2/` (route `example-com-api`)"
            ),
            "{d}"
        );
    }

    #[test]
    fn a_wrong_forwarded_path_is_a_difference() {
        let (toml, model) = import(CONF);
        let wrong = patch_route(&toml, "example-com-api", "prefix = \"/v2/\", ", "");
        let report = verify(&model, &wrong).expect("valid table");
        let paths: Vec<&str> = report.differences.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["/api/", "/api/deeper/x"], "{report:?}");
    }

    #[test]
    fn not_translated_locations_are_skipped_and_noted_differences_kept_apart() {
        let conf = "
server {
    listen 80;
    location /old { proxy_pass http://10.0.0.3:80; }
    location ~ \\.php$ { proxy_pass http://10.0.0.4:80; }
    location /static/ { root /var/www; }
    location / { proxy_pass http://10.0.0.5:80; }
}
";
        let (toml, model) = import(conf);
        let report = verify(&model, &toml).expect("valid table");
        assert!(report.differences.is_empty(), "{report:?}");
        // `/oldx`: nginx's prefix is not segment-bounded, as the import notes.
        let noted: Vec<&str> = report.noted.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(noted, ["/oldx"], "{report:?}");
        assert_eq!(report.noted[0].noted.as_deref(), Some("n.conf:4"));
        // `/static/`, `/static/deeper/x`: nginx serves files there, not translated.
        assert_eq!(report.skipped, 2, "{report:?}");
        assert_eq!(
            report.agree + report.skipped + report.noted.len(),
            report.requests
        );
    }

    #[test]
    fn a_note_explains_only_the_difference_it_states() {
        let conf = "
server {
    listen 80;
    location /old { proxy_pass http://10.0.0.3:80; }
    location / { proxy_pass http://10.0.0.5:80; }
}
";
        let (toml, model) = import(conf);
        // The note on `location /old` explains `/oldx`, not a wrong service.
        let wrong = patch_route(
            &toml,
            "default-old",
            "service = \"10-0-0-3-80\"",
            "service = \"10-0-0-5-80\"",
        );
        let report = verify(&model, &wrong).expect("valid table");
        let differ: Vec<&str> = report.differences.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(differ, ["/old", "/old/", "/old/deeper/x"], "{report:?}");
        let noted: Vec<&str> = report.noted.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(noted, ["/oldx"], "{report:?}");
    }

    #[test]
    fn requests_a_rewrite_before_a_server_return_may_match_are_skipped() {
        // nginx runs the rewrite first (301 to /b/x); the import translates only the
        // `return` and reports the rewrite as not translated.
        let conf = "
server {
    listen 80;
    rewrite ^/a/(.*)$ /b/$1 permanent;
    return 302 http://other.example/;
}
";
        let (toml, model) = import(conf);
        let report = verify(&model, &toml).expect("valid table");
        assert_eq!(report.skipped, 2, "{report:?}");
        assert_eq!(report.agree + 2, report.requests, "{report:?}");
        assert!(nginx_outcome(&model, UNKNOWN_HOST, "/a/x").is_none());
    }
}
