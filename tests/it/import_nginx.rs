//! Differential test of `switchyard import`: real nginx and the gateway running the
//! imported table must answer the same requests the same way.
//!
//! For each importable fixture: every upstream endpoint becomes an in-process echo
//! server (it answers with its name and the path, query and headers it received); the
//! fixture tree is copied with the endpoints and `listen`s rewritten to loopback and
//! served by real nginx; the imported table, rewritten the same way, is served by the
//! gateway. At least 500 requests per fixture, built from the locations and routes plus
//! variations (bare prefixes, extra segments, suffixes, queries) and every host the
//! servers answer (plus an unknown one), go to both. The outcomes must agree: the
//! upstream group and the forwarded path, query, `Host` and route-set headers; or the
//! redirect status and target; or "not proxied" on both sides.
//!
//! Requests that nginx would hand to a location the import reported as not translated
//! (or translated with a stated difference) are skipped, as are all requests of a
//! server with such a server-level report: the test checks that everything the import
//! does *not* report is exact. Skipped when no `nginx` binary is found (set `NGINX` to
//! point at one).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use switchyard::http::normalize::normalize_path;
use switchyard::import::parse::{self, Directive};

use crate::import::{fixtures, fixtures_dir, import, import_in};
use crate::support::*;

pub(crate) fn find_nginx() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NGINX") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"])
        .map(|d| Path::new(d).join("nginx"))
        .find(|p| p.is_file())
}

/// A real nginx on loopback, killed through its handle (single process: with
/// `master_process off` there are no orphaned workers).
pub(crate) struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    pub(crate) fn start(bin: &Path, dir: &Path, conf: &Path, addr: SocketAddr) -> Nginx {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let globals = format!(
            "daemon off; master_process off; pid {}; error_log stderr;",
            dir.join("nginx.pid").display()
        );
        let mut child = Command::new(bin)
            .arg("-p")
            .arg(format!("{}/", dir.display()))
            .arg("-c")
            .arg(conf)
            .args(["-e", "stderr", "-g", &globals])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nginx");
        let deadline = Instant::now() + SOON;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                panic!("nginx exited ({status}) on {}:\n{err}", conf.display());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                // Drain stderr so that nginx never blocks on a full pipe.
                if let Some(e) = child.stderr.take() {
                    std::thread::spawn(move || {
                        use std::io::Read;
                        let mut e = e;
                        let mut sink = Vec::new();
                        let _ = e.read_to_end(&mut sink);
                    });
                }
                return Nginx { child, addr };
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().filter_map(|e| e.ok()) {
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

fn conf_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            conf_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "conf") {
            out.push(p);
        }
    }
}

/// Loopback listen, loopback upstreams; drop what needs root, certificates or log
/// directories.
fn rewrite_nginx(text: &str, endpoints: &[(String, String)], port: u16) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        let word = t.split_whitespace().next().unwrap_or("");
        if matches!(word, "user" | "pid" | "access_log" | "error_log") || word.starts_with("ssl_") {
            continue;
        }
        if word == "listen" {
            let default = if t.contains("default_server") {
                " default_server"
            } else {
                ""
            };
            out.push_str(&format!("listen 127.0.0.1:{port}{default};\n"));
            continue;
        }
        let mut l = line.to_string();
        for (from, to) in endpoints {
            l = l.replace(from.as_str(), to);
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn with_port(a: &str) -> String {
    match a.rsplit_once(':') {
        Some((_, p)) if p.parse::<u16>().is_ok() => a.to_string(),
        _ => format!("{a}:80"),
    }
}

// === what nginx would do, as far as the skip rules need it ===

#[derive(Debug)]
struct Loc {
    modifier: String,
    path: String,
    /// Lines (file, line) of the location and everything in it.
    lines: BTreeSet<(String, usize)>,
    skip: bool,
    skip_query: bool,
    /// Reported: nginx also matches `{path}x`; skip those continuations only.
    skip_nonboundary: bool,
    /// Has `proxy_pass` (so nginx redirects the path without its trailing `/`).
    proxied: bool,
}

#[derive(Debug)]
struct Server {
    names: Vec<String>,
    default: bool,
    lines: BTreeSet<(String, usize)>,
    locs: Vec<Loc>,
    skip: bool,
    /// Reported: paths no location matches fall through to other routes.
    skip_unmatched: bool,
}

/// File names as the import prints them (set by [`strip_files`]).
fn rel(d: &Directive) -> String {
    d.file.to_string()
}

/// Name files relative to the directory the import ran in, as its notes do.
fn strip_files(list: &mut [Directive], dir: &str) {
    for d in list {
        if let Some(rest) = d.file.strip_prefix(dir) {
            d.file = Arc::from(rest);
        }
        if let Some(children) = d.block.as_mut() {
            strip_files(children, dir);
        }
    }
}

fn lines_of(d: &Directive, out: &mut BTreeSet<(String, usize)>) {
    out.insert((rel(d), d.line));
    for c in d.children() {
        lines_of(c, out);
    }
}

fn servers_of(tree: &[Directive], out: &mut Vec<Server>) {
    for d in tree {
        match d.name.as_str() {
            "http" => servers_of(d.children(), out),
            "server" if d.block.is_some() => {
                let names = d
                    .children()
                    .iter()
                    .filter(|c| c.name == "server_name")
                    .flat_map(|c| c.args.iter().map(|a| a.to_ascii_lowercase()))
                    .collect();
                let default = d
                    .children()
                    .iter()
                    .any(|c| c.name == "listen" && c.args.iter().any(|a| a == "default_server"));
                let mut lines = BTreeSet::new();
                lines.insert((rel(d), d.line));
                let mut locs = Vec::new();
                for c in d.children() {
                    if c.name == "location" {
                        let (modifier, path) = match c.args.as_slice() {
                            [m, p] => (m.clone(), p.clone()),
                            [p] => (String::new(), p.clone()),
                            _ => continue,
                        };
                        let mut ll = BTreeSet::new();
                        lines_of(c, &mut ll);
                        locs.push(Loc {
                            modifier,
                            path,
                            lines: ll,
                            skip: false,
                            skip_query: false,
                            skip_nonboundary: false,
                            proxied: c.children().iter().any(|x| x.name == "proxy_pass"),
                        });
                    } else {
                        lines.insert((rel(c), c.line));
                    }
                }
                out.push(Server {
                    names,
                    default,
                    lines,
                    locs,
                    skip: false,
                    skip_unmatched: false,
                });
            }
            _ => {}
        }
    }
    if !out.iter().any(|s| s.default)
        && let Some(first) = out.first_mut()
    {
        first.default = true;
    }
}

/// Directives whose reports do not change which upstream, path, Host or compared
/// header a request gets.
const HARMLESS: [&str; 14] = [
    "proxy_set_header",
    "add_header",
    "proxy_http_version",
    "proxy_read_timeout",
    "proxy_connect_timeout",
    "client_max_body_size",
    "access_log",
    "error_log",
    "expires",
    "keepalive",
    "least_conn",
    "sendfile",
    "keepalive_timeout",
    "listen",
];

/// Mark the locations and servers that the import's notes concern.
fn apply_notes(servers: &mut [Server], notes: &str) {
    for n in notes.lines() {
        let mut parts = n.splitn(3, ':');
        let (Some(file), Some(line), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(line) = line.parse::<usize>() else {
            continue;
        };
        let key = (file.to_string(), line);
        let directive = rest
            .split('`')
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("");
        let harmless = HARMLESS.contains(&directive)
            || directive.starts_with("ssl_")
            || rest.contains("passes the client's Host unchanged");
        if harmless {
            continue;
        }
        for s in servers.iter_mut() {
            if let Some(l) = s.locs.iter_mut().find(|l| l.lines.contains(&key)) {
                if rest.contains("appends the request's query string") {
                    l.skip_query = true;
                } else if rest.contains("on segment boundaries only") {
                    l.skip_nonboundary = true;
                } else {
                    l.skip = true;
                }
            } else if s.lines.contains(&key) {
                if rest.contains("has no `location /`") {
                    s.skip_unmatched = true;
                } else {
                    s.skip = true;
                }
            }
        }
    }
}

fn server_for<'a>(servers: &'a [Server], host: &str) -> Option<&'a Server> {
    let exact = servers.iter().find(|s| {
        s.names
            .iter()
            .any(|n| n == host || n.strip_prefix('.') == Some(host))
    });
    let wildcard = || {
        servers
            .iter()
            .filter_map(|s| {
                s.names
                    .iter()
                    .filter_map(|n| {
                        if let Some(rest) = n.strip_prefix('*') {
                            Some(rest)
                        } else if n.starts_with('.') {
                            Some(n.as_str())
                        } else {
                            None
                        }
                    })
                    .filter(|suffix| suffix.starts_with('.') && host.ends_with(*suffix))
                    .map(|suffix| suffix.len())
                    .max()
                    .map(|len| (len, s))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, s)| s)
    };
    exact
        .or_else(wildcard)
        .or_else(|| servers.iter().find(|s| s.default))
}

/// The literal start of an anchored regex (`^/user/[0-9]+` -> `/user/`).
fn regex_literal_prefix(re: &str) -> Option<String> {
    let body = re.strip_prefix('^')?;
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) if !n.is_ascii_alphanumeric() => out.push(n),
                _ => break,
            },
            c if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '~') => out.push(c),
            _ => break,
        }
    }
    Some(out)
}

/// nginx's location choice, approximated conservatively (a non-literal anchored regex
/// is assumed to match every path that starts with its literal part).
fn location_for<'a>(s: &'a Server, path: &str) -> Option<&'a Loc> {
    if let Some(l) = s.locs.iter().find(|l| l.modifier == "=" && l.path == path) {
        return Some(l);
    }
    let prefix = s
        .locs
        .iter()
        .filter(|l| (l.modifier.is_empty() || l.modifier == "^~") && path.starts_with(&l.path))
        .max_by_key(|l| l.path.len());
    // The 301 from `/api` to `/api/` (proxied static locations, when no location is
    // `/api` itself).
    let slash = format!("{path}/");
    if let Some(l) = s.locs.iter().find(|l| {
        (l.modifier.is_empty() || l.modifier == "^~" || l.modifier == "=")
            && l.path == slash
            && l.proxied
    }) && !s
        .locs
        .iter()
        .any(|o| !o.modifier.starts_with('~') && o.path == path)
    {
        return Some(l);
    }
    if prefix.is_some_and(|p| p.modifier == "^~") {
        return prefix;
    }
    for l in s.locs.iter().filter(|l| l.modifier.starts_with('~')) {
        let matches = match regex_literal_prefix(&l.path) {
            Some(lit) if l.path.ends_with('$') && lit.len() + 2 == l.path.len() => path == lit,
            Some(lit) => path.starts_with(&lit),
            // Unanchored regexes (file extensions): the generated paths have none.
            None => false,
        };
        if matches {
            return Some(l);
        }
    }
    prefix
}

/// Does a report cover this request? Its location was reported; or it continues a
/// reported non-slash prefix off a segment boundary; or it is the bare path of a
/// reported `/x/` location (the gateway's prefix also matches `/x`).
fn skipped_request(s: &Server, path: &str, has_query: bool) -> bool {
    let found = location_for(s, path);
    if found.is_none() && s.skip_unmatched {
        return true;
    }
    if let Some(l) = found {
        let continuation = path != l.path && !path.starts_with(&format!("{}/", l.path));
        if l.skip || (l.skip_query && has_query) || (l.skip_nonboundary && continuation) {
            return true;
        }
    }
    let slash = format!("{path}/");
    s.locs.iter().any(|l| {
        let lit = if l.modifier.starts_with('~') {
            regex_literal_prefix(&l.path).unwrap_or_default()
        } else {
            l.path.clone()
        };
        lit == slash && (l.skip || l.skip_query)
    })
}

// === outcomes ===

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Proxied {
        group: String,
        path: String,
        query: Option<String>,
        host: Option<String>,
        headers: BTreeMap<String, String>,
        response: BTreeMap<String, String>,
    },
    Redirect {
        status: u16,
        scheme: Option<String>,
        host: Option<String>,
        target: String,
    },
    NotProxied,
}

const RESPONSE_HEADERS: [&str; 3] = [
    "x-frame-options",
    "cache-control",
    "strict-transport-security",
];

fn outcome(a: &Answer, groups: &HashMap<String, String>) -> Outcome {
    if a.status.is_redirection() {
        let loc = a
            .headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let (scheme, host, target) = match loc.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, target) = match rest.find('/') {
                    Some(i) => rest.split_at(i),
                    None => (rest, "/"),
                };
                let host = authority
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .to_ascii_lowercase();
                (Some(scheme.to_string()), Some(host), target.to_string())
            }
            None => (None, None, loc),
        };
        return Outcome::Redirect {
            status: a.status.as_u16(),
            scheme,
            host,
            target,
        };
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&a.body) else {
        return Outcome::NotProxied;
    };
    let Some(service) = v["service"].as_str() else {
        return Outcome::NotProxied;
    };
    let mut headers = BTreeMap::new();
    let mut host = None;
    if let Some(map) = v["headers"].as_object() {
        for (k, val) in map {
            let val = val.as_str().unwrap_or("").to_string();
            if k == "host" {
                host = Some(val);
            } else if k == "accept-encoding"
                || (k.starts_with("x-")
                    && !k.starts_with("x-forwarded-")
                    && k != "x-real-ip"
                    && k != "x-request-id")
            {
                headers.insert(k.clone(), val);
            }
        }
    }
    let response = RESPONSE_HEADERS
        .iter()
        .filter_map(|h| {
            a.headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (h.to_string(), v.to_string()))
        })
        .collect();
    Outcome::Proxied {
        group: groups.get(service).cloned().unwrap_or(service.to_string()),
        path: v["path"].as_str().unwrap_or("").to_string(),
        query: v["query"].as_str().map(str::to_string),
        host,
        headers,
        response,
    }
}

/// Redirect targets agree when status and path agree, and scheme and host agree where
/// both name one (nginx makes relative targets absolute, the gateway may not).
fn same(a: &Outcome, b: &Outcome) -> bool {
    match (a, b) {
        (
            Outcome::Redirect {
                status: s1,
                scheme: sc1,
                host: h1,
                target: t1,
            },
            Outcome::Redirect {
                status: s2,
                scheme: sc2,
                host: h2,
                target: t2,
            },
        ) => {
            s1 == s2
                && t1 == t2
                && (sc1.is_none() || sc2.is_none() || sc1 == sc2)
                && (h1.is_none() || h2.is_none() || h1 == h2)
        }
        _ => a == b,
    }
}

// === requests ===

fn hosts(servers: &[Server], table: &toml::Value) -> Vec<String> {
    let mut out = BTreeSet::new();
    let mut add_name = |n: &str| {
        if let Some(rest) = n.strip_prefix("*.") {
            out.insert(format!("a.{rest}"));
            out.insert(format!("b.c.{rest}"));
        } else if let Some(rest) = n.strip_prefix('.') {
            out.insert(rest.to_string());
            out.insert(format!("www.{rest}"));
        } else if !n.is_empty() && n != "_" && !n.starts_with('~') {
            out.insert(n.to_string());
        }
    };
    for s in servers {
        for n in &s.names {
            add_name(n);
        }
    }
    for r in table
        .get("routes")
        .unwrap_or(&toml::Value::Boolean(false))
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(h) = r.get("host").and_then(|h| h.as_str()) {
            add_name(h);
        }
    }
    out.insert("unknown.invalid".to_string());
    out.into_iter().collect()
}

fn paths(servers: &[Server], table: &toml::Value, want: usize, hosts: usize) -> Vec<String> {
    let mut bases = BTreeSet::new();
    bases.insert("/".to_string());
    for s in servers {
        for l in &s.locs {
            if l.modifier.starts_with('~') {
                if let Some(lit) = regex_literal_prefix(&l.path) {
                    bases.insert(lit);
                }
            } else if l.modifier != "@" {
                bases.insert(l.path.clone());
            }
        }
    }
    for r in table
        .get("routes")
        .unwrap_or(&toml::Value::Boolean(false))
        .as_array()
        .into_iter()
        .flatten()
    {
        for k in ["path", "exact"] {
            if let Some(p) = r.get(k).and_then(|p| p.as_str()) {
                bases.insert(p.to_string());
            }
        }
    }
    let normal = |p: &String| {
        let path = p.split('?').next().unwrap_or("");
        !path.is_empty() && normalize_path(path).is_ok_and(|n| n == path)
    };
    let mut out = BTreeSet::new();
    for b in &bases {
        let t = b.trim_end_matches('/');
        for v in [
            b.clone(),
            t.to_string(),
            format!("{t}/"),
            format!("{t}x"),
            format!("{t}-more/y"),
            format!("{t}/x"),
            format!("{t}/x/"),
            format!("{t}/a/b/c"),
            format!("{t}/users/7?page=2&sort=asc"),
            format!("{t}?q=1"),
            format!("{t}/?q=2"),
        ] {
            if normal(&v) {
                out.insert(v);
            }
        }
    }
    let mut i = 0;
    while out.len() * hosts < want {
        for b in &bases {
            let v = format!("{}/item-{i}", b.trim_end_matches('/'));
            if normal(&v) {
                out.insert(v);
            }
        }
        i += 1;
    }
    out.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_tables_route_like_real_nginx() {
    let Some(nginx) = find_nginx() else {
        eprintln!("import_nginx: skipped: no nginx binary found (PATH, /usr/sbin; or set NGINX)");
        return;
    };
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for f in fixtures().iter().filter(|f| !f.contains("-error-")) {
        let (code, toml_text, notes) = import(f);
        assert_eq!(code, Some(0), "{f}: {notes}");
        if notes.contains("the gateway has one listen address") {
            report.push(format!("{f}: skipped (servers on several ports)"));
            continue;
        }
        match diff_fixture(&nginx, &fixtures_dir(), f, &toml_text, &notes).await {
            Ok(line) => report.push(line),
            Err(e) => failures.push(e),
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

async fn diff_fixture(
    nginx_bin: &Path,
    src_dir: &Path,
    f: &str,
    toml_text: &str,
    notes: &str,
) -> Result<String, String> {
    let mut tree = parse::parse_file(&src_dir.join(f)).map_err(|e| e.to_string())?;
    strip_files(&mut tree, &format!("{}/", src_dir.display()));
    let table: toml::Value = toml::from_str(toml_text).map_err(|e| e.to_string())?;

    // Endpoints: the table's and nginx's (upstream servers, inline proxy_pass hosts).
    let mut endpoints = BTreeSet::new();
    let mut groups = HashMap::new();
    for s in table
        .get("services")
        .unwrap_or(&toml::Value::Boolean(false))
        .as_table()
        .into_iter()
        .flat_map(|t| t.values())
    {
        for e in s
            .get("endpoints")
            .unwrap_or(&toml::Value::Boolean(false))
            .as_array()
            .into_iter()
            .flatten()
        {
            endpoints.insert(e.as_str().unwrap_or("").to_string());
        }
    }
    fn walk(list: &[Directive], eps: &mut BTreeSet<String>, groups: &mut HashMap<String, String>) {
        for d in list {
            if d.name == "upstream" {
                for s in d.children().iter().filter(|s| s.name == "server") {
                    if let Some(a) = s.args.first() {
                        let e = with_port(a);
                        eps.insert(e.clone());
                        groups.insert(e, d.args.first().cloned().unwrap_or_default());
                    }
                }
            } else if d.name == "proxy_pass"
                && let Some(rest) = d.args.first().and_then(|u| u.strip_prefix("http://"))
            {
                let authority = rest.split('/').next().unwrap_or("");
                if authority.contains(':') && !authority.contains('$') {
                    eps.insert(authority.to_string());
                }
            }
            walk(d.children(), eps, groups);
        }
    }
    walk(&tree, &mut endpoints, &mut groups);
    let mut upstreams = Vec::new();
    let mut replace = Vec::new();
    for e in &endpoints {
        let name: Arc<str> = Arc::from(e.as_str());
        let up = Upstream::start(move |req| {
            let name = name.clone();
            async move { json(&echo_value(&name, &req)) }
        })
        .await;
        replace.push((e.clone(), up.addr.to_string()));
        upstreams.push(up);
    }
    // Longest first, so that no endpoint is replaced inside a longer one.
    replace.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    // The echo names itself by its original endpoint; group by nginx upstream name.
    let groups: HashMap<String, String> = endpoints
        .iter()
        .map(|e| {
            (
                e.clone(),
                groups.get(e).cloned().unwrap_or_else(|| e.clone()),
            )
        })
        .collect();

    // nginx on a copy of the fixture tree.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    copy_dir(src_dir, dir.path());
    let port = free_port();
    let mut files = Vec::new();
    conf_files(dir.path(), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        std::fs::write(&file, rewrite_nginx(&text, &replace, port)).map_err(|e| e.to_string())?;
    }
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let nginx = tokio::task::block_in_place(|| {
        Nginx::start(nginx_bin, dir.path(), &dir.path().join(f), addr)
    });

    // The gateway on the imported table.
    let mut gw_toml = String::new();
    for line in toml_text.lines() {
        if line.starts_with("http = ") {
            gw_toml.push_str("http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n");
            continue;
        }
        let mut l = line.to_string();
        for (from, to) in &replace {
            l = l.replace(&format!("\"{from}\""), &format!("\"{to}\""));
        }
        gw_toml.push_str(&l);
        gw_toml.push('\n');
    }
    let gw = Gateway::start(&gw_toml);

    let mut servers = Vec::new();
    servers_of(&tree, &mut servers);
    apply_notes(&mut servers, notes);
    let hosts = hosts(&servers, &table);
    let paths = paths(&servers, &table, 500, hosts.len());
    let client = client();
    let (mut sent, mut compared, mut skipped) = (0, 0, 0);
    let (mut proxied, mut redirected) = (0, 0);
    let mut mismatches = Vec::new();
    for host in &hosts {
        let server = server_for(&servers, host);
        for p in &paths {
            sent += 1;
            let path_only = p.split('?').next().unwrap_or("");
            let skip = match server {
                Some(s) if s.skip => true,
                Some(s) => skipped_request(s, path_only, p.contains('?')),
                None => false,
            };
            if skip {
                skipped += 1;
                continue;
            }
            let mut answers = Vec::new();
            for target in [nginx.addr, gw.addr] {
                let req = Request::get(format!("http://{target}{p}"))
                    .header(http::header::HOST, host.as_str())
                    .header(http::header::ACCEPT_ENCODING, "gzip")
                    .body(empty())
                    .unwrap();
                answers.push(outcome(&send(&client, req).await, &groups));
            }
            compared += 1;
            match answers[0] {
                Outcome::Proxied { .. } => proxied += 1,
                Outcome::Redirect { .. } => redirected += 1,
                Outcome::NotProxied => {}
            }
            if !same(&answers[0], &answers[1]) && mismatches.len() < 15 {
                mismatches.push(format!(
                    "  Host: {host} GET {p}\n    nginx:   {:?}\n    gateway: {:?}",
                    answers[0], answers[1]
                ));
            }
        }
    }
    drop(nginx);
    assert!(sent >= 500, "{f}: only {sent} requests generated");
    // The fixtures are meant to proxy; a random configuration may only redirect.
    assert!(
        proxied > 0 || !src_dir.ends_with("fixtures/nginx"),
        "{f}: nginx proxied none of the compared requests"
    );
    if !mismatches.is_empty() {
        return Err(format!(
            "{f}: nginx and the gateway disagree ({} shown):\n{}",
            mismatches.len(),
            mismatches.join("\n")
        ));
    }
    Ok(format!(
        "{f}: {sent} requests, {compared} compared and equal ({proxied} proxied, {redirected} redirects), {skipped} skipped (reported as not exact)"
    ))
}

/// A random nginx configuration that nginx accepts: one port, upstreams with and
/// without weights, up to three servers, locations of every kind with proxy_pass
/// (with and without URI), returns, rewrites and headers.
fn random_nginx(rng: &mut fastrand::Rng) -> String {
    const NAMES: [&str; 5] = [
        "a.example.com",
        "*.example.com",
        ".example.org",
        "b.example.com",
        "c.example.net",
    ];
    const PATHS: [&str; 13] = [
        "/",
        "/api",
        "/api/",
        "/api/v1/",
        "/static/",
        "/static",
        "/login",
        "/x/y/",
        "/apix",
        "/api/v1/users/",
        "/old/",
        "/old/sub/",
        "/new/",
    ];
    const BODIES: [&str; 19] = [
        "proxy_pass http://10.1.0.9:83/inline/;",
        "proxy_set_header Accept-Encoding \"\"; proxy_pass http://eq;",
        "proxy_set_header Host backend.internal; proxy_pass http://up;",
        "return 308 https://$server_name/elsewhere;",
        "rewrite ^/old/(.*)$ /new/$1 redirect;",
        "rewrite ^/old/(.*)$ /new/$1 break; proxy_pass http://up/ignored/;",
        "proxy_pass http://up;",
        "proxy_pass http://eq;",
        "proxy_pass http://10.1.0.9:83;",
        "proxy_pass http://up/v2/;",
        "proxy_pass http://eq/;",
        "proxy_pass http://eq/v3;",
        "return 301 /moved;",
        "return 302 https://$host$request_uri;",
        "rewrite ^/api/(.*)$ /new/$1 break; proxy_pass http://eq;",
        "rewrite ^/static/(.*)$ /assets/$1 permanent;",
        "proxy_set_header X-Team t; proxy_pass http://eq;",
        "add_header X-Frame-Options DENY; proxy_pass http://up;",
        "proxy_set_header Host $host; proxy_pass http://up/p/;",
    ];
    let mut src = String::from("events {}\nhttp {\n");
    src.push_str(&format!(
        "upstream up {{ server 10.1.0.1:81 weight={}; server 10.1.0.2:81 weight={}; }}\n",
        rng.u8(1..4),
        rng.u8(1..4)
    ));
    src.push_str("upstream eq { server 10.1.0.3:82; server 10.1.0.4:82; }\n");
    let mut names: Vec<&str> = NAMES.to_vec();
    rng.shuffle(&mut names);
    let servers = rng.usize(1..4);
    let default = rng.usize(0..servers + 1);
    for i in 0..servers {
        src.push_str("server {\n");
        src.push_str(if i == default {
            "listen 80 default_server;\n"
        } else {
            "listen 80;\n"
        });
        let take = rng
            .usize(if i == default { 0 } else { 1 }..3)
            .min(names.len());
        let mine: Vec<&str> = names.drain(..take).collect();
        if !mine.is_empty() {
            src.push_str(&format!("server_name {};\n", mine.join(" ")));
        }
        if rng.u8(0..4) == 0 {
            src.push_str("proxy_set_header X-Env prod;\n");
        }
        if rng.u8(0..4) == 0 {
            src.push_str("add_header X-Frame-Options SAMEORIGIN always;\n");
        }
        match rng.u8(0..10) {
            0 => src.push_str("return 301 https://$host$request_uri;\n"),
            1 => src.push_str("rewrite ^/old/(.*)$ /new/$1 permanent;\n"),
            _ => {}
        }
        let mut used = BTreeSet::new();
        for _ in 0..rng.usize(1..8) {
            let path = PATHS[rng.usize(0..PATHS.len())];
            let modifier = ["", "=", "^~", "~", "", "~*"][rng.usize(0..6)];
            let kind = match modifier {
                "" | "^~" => "prefix",
                m => m,
            };
            if !used.insert((kind, path)) {
                continue;
            }
            let mut body = BODIES[rng.usize(0..BODIES.len())];
            let regex = modifier.starts_with('~');
            // nginx refuses a URI part in proxy_pass inside a regex location.
            if regex && body.contains("proxy_pass http://") && body.matches('/').count() > 2 {
                body = "proxy_pass http://up;";
            }
            let arg = if regex {
                if rng.bool() {
                    format!("^{path}$")
                } else {
                    format!("^{path}")
                }
            } else {
                path.to_string()
            };
            src.push_str(&format!("location {modifier} {arg} {{ {body} }}\n"));
        }
        src.push_str("}\n");
    }
    src.push_str("}\n");
    src
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_configurations_route_like_real_nginx() {
    let Some(nginx) = find_nginx() else {
        eprintln!("import_nginx: skipped: no nginx binary found (PATH, /usr/sbin; or set NGINX)");
        return;
    };
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let count: u64 = std::env::var("RANDOM_NGINX_CONFIGS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for n in seed..seed + count {
        let mut rng = fastrand::Rng::with_seed(n);
        let conf = random_nginx(&mut rng);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("random.conf"), &conf).unwrap();
        let (code, toml_text, notes) = import_in(dir.path(), "random.conf");
        assert_eq!(code, Some(0), "seed {n}: {notes}\n{conf}");
        match diff_fixture(&nginx, dir.path(), "random.conf", &toml_text, &notes).await {
            Ok(line) => report.push(format!("seed {n}: {line}")),
            Err(e) => failures.push(format!(
                "seed {n}: {e}\n--- nginx.conf\n{conf}--- notes\n{notes}--- table\n{toml_text}"
            )),
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
