//! `switchyard import nginx.conf`: translate the parts of an nginx configuration that a
//! gateway replaces into a `routes.toml` text.
//!
//! Teams move to Switchyard from hand-edited nginx files; a translation they can diff and
//! review beats retyping. The translation is deliberately conservative: what it emits
//! means what nginx meant (same host, same path, same upstream, same forwarded path), and
//! everything it cannot express exactly is listed on stderr as
//! `file:line: not translated: …` (dropped) or `file:line: note: …` (translated, with a
//! stated difference). Each route carries a `# from FILE:LINE` comment.
//!
//! [`parse`] reads the files (nginx's grammar, includes expanded); this module walks the
//! tree: `upstream` blocks become services (unequal weights become a `split` over one
//! service per server), `server` blocks give hosts, `location`s give routes, and the
//! proxy/redirect directives give each route's action and filters.
//!
//! While translating, the importer records its model of how nginx answers requests
//! (servers, locations and their actions); `--verify` ([`verify`]) runs sample
//! requests through that model and through the router on the produced table.

mod known;
pub mod parse;
mod verify;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::http::normalize::normalize_path;
use parse::{Directive, ParseError};

/// The result of an import: the table and what could not be translated.
#[derive(Debug, Clone)]
pub struct Import {
    /// `routes.toml` text.
    pub toml: String,
    /// One line per finding: `file:line: not translated: …` or `file:line: note: …`.
    pub notes: Vec<String>,
}

/// Read `path` (and its includes) and translate it.
pub fn import_file(path: &Path) -> Result<Import, ParseError> {
    let tree = parse::parse_file(path)?;
    check_known(&tree)?;
    Ok(translate(&tree, &path.display().to_string()))
}

/// nginx refuses a directive it does not know; so do we (a typo would otherwise only
/// be a "not translated" note). The contents of blocks that hold data rather than
/// directives (`types`, `map`, …) are not checked.
pub fn check_known(tree: &[Directive]) -> Result<(), ParseError> {
    for d in tree {
        if !known::is_known(&d.name) {
            let hint = known::suggest(&d.name)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return Err(ParseError {
                file: d.file.to_string(),
                line: d.line,
                message: format!("unknown directive `{}`{hint}", d.name),
            });
        }
        let data_block = matches!(
            d.name.as_str(),
            "types" | "map" | "geo" | "split_clients" | "charset_map" | "match"
        ) || d.name.ends_with("_by_lua_block");
        if !data_block {
            check_known(d.children())?;
        }
    }
    Ok(())
}

/// The `switchyard import [--verify] FILE` command: the table on stdout, the notes on
/// stderr; exit 1 when the file cannot be parsed (or, which would be a bug here, when
/// the produced table does not validate). With `verify`, the table is still printed,
/// the verification's summary and differences follow the notes on stderr, and the
/// exit code is 1 when nginx's model and the gateway differ on any sample request.
pub fn run(path: &Path, verify: bool) -> ExitCode {
    let (import, model) =
        match parse::parse_file(path).and_then(|tree| check_known(&tree).map(|()| tree)) {
            Ok(tree) => translate_with_model(&tree, &path.display().to_string()),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
    for n in &import.notes {
        eprintln!("{n}");
    }
    if let Err(errors) = crate::config::parse(&import.toml) {
        print!("{}", import.toml);
        eprint!("{}", errors.render("(imported table)", &import.toml));
        eprintln!("error: the imported table does not validate (a bug in `switchyard import`)");
        return ExitCode::FAILURE;
    }
    print!("{}", import.toml);
    if !verify {
        return ExitCode::SUCCESS;
    }
    match verify::verify(&model, &import.toml) {
        Ok(report) => {
            eprintln!("{}", report.summary());
            for d in &report.differences {
                eprintln!("{d}");
            }
            for d in &report.noted {
                eprintln!("{d}");
            }
            if report.differences.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Translate a parsed tree. `source` names the top file in the header comment.
pub fn translate(tree: &[Directive], source: &str) -> Import {
    translate_with_model(tree, source).0
}

/// [`translate`], and the importer's model of nginx's request handling for `--verify`.
fn translate_with_model(tree: &[Directive], source: &str) -> (Import, verify::Model) {
    let mut t = Translator::default();
    t.run(tree);
    sort_notes(&mut t.notes, tree);
    // A setting inherited by several locations is reported once.
    let mut seen = HashSet::new();
    t.notes.retain(|n| seen.insert(n.clone()));
    let import = Import {
        toml: t.render(source),
        notes: t.notes,
    };
    let model = verify::Model { servers: t.model };
    (import, model)
}

// === model of the output ===

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Service(String),
    Split(Vec<(String, u32)>),
}

#[derive(Debug, Default)]
struct Service {
    name: String,
    endpoints: Vec<String>,
    connect_timeout: Option<(String, String)>,
    comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathKind {
    Prefix(String),
    Exact(String),
}

impl PathKind {
    fn key(&self) -> (bool, String) {
        match self {
            PathKind::Exact(p) => (true, p.clone()),
            PathKind::Prefix(p) if p.len() > 1 => (false, p.trim_end_matches('/').to_string()),
            PathKind::Prefix(p) => (false, p.clone()),
        }
    }
    fn text(&self) -> &str {
        match self {
            PathKind::Prefix(p) | PathKind::Exact(p) => p,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Proxy {
    target: Option<Target>,
    rewrite_prefix: Option<String>,
    rewrite_path: Option<String>,
    rewrite_host: Option<String>,
    req_set: Vec<(String, String)>,
    req_remove: Vec<String>,
    resp_add: Vec<(String, String)>,
    timeout: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    prefix: Option<String>,
    status: u16,
}

#[derive(Debug, Clone)]
enum Action {
    Proxy(Proxy),
    Redirect(Redirect),
}

#[derive(Debug, Clone)]
struct Route {
    at: String,
    name: String,
    host: Option<String>,
    path: PathKind,
    action: Action,
}

/// Settings inherited http -> server -> location. nginx's rule for the array
/// directives: a level that has any `proxy_set_header` (or `add_header`) replaces the
/// inherited list entirely.
#[derive(Debug, Clone, Default)]
struct Settings {
    set_headers: Option<Vec<Directive>>,
    add_headers: Option<Vec<Directive>>,
    read_timeout: Option<Directive>,
    connect_timeout: Option<Directive>,
}

impl Settings {
    /// `self` with the settings directives of `block` applied on top.
    fn inherit(&self, block: &[Directive]) -> Settings {
        let mut s = self.clone();
        let sets: Vec<_> = block
            .iter()
            .filter(|d| d.name == "proxy_set_header")
            .cloned()
            .collect();
        if !sets.is_empty() {
            s.set_headers = Some(sets);
        }
        let adds: Vec<_> = block
            .iter()
            .filter(|d| d.name == "add_header")
            .cloned()
            .collect();
        if !adds.is_empty() {
            s.add_headers = Some(adds);
        }
        for d in block {
            match d.name.as_str() {
                "proxy_read_timeout" => s.read_timeout = Some(d.clone()),
                "proxy_connect_timeout" => s.connect_timeout = Some(d.clone()),
                _ => {}
            }
        }
        s
    }
}

#[derive(Debug, Clone)]
struct UpstreamDef {
    at: String,
    servers: Vec<(String, u32)>,
}

/// A `location` as written.
#[derive(Debug, Clone)]
struct Loc<'a> {
    d: &'a Directive,
    modifier: &'a str,
    path: String,
}

#[derive(Default)]
struct Translator {
    notes: Vec<String>,
    upstreams: BTreeMap<String, UpstreamDef>,
    resolved: HashMap<String, Option<Target>>,
    services: Vec<Service>,
    routes: Vec<Route>,
    route_names: HashSet<String>,
    route_keys: HashMap<(Option<String>, bool, String), (String, String)>,
    listen: Option<(String, String)>,
    /// While one server is translated: each location's route action (by index).
    actions: Vec<Option<(PathKind, Action)>>,
    /// While one server is translated: prefix routes ending in `/` whose bare path
    /// (`/api` for `/api/`) nginx does not send to them, with the directive to cite.
    bare: Vec<(String, Directive)>,
    /// While one server is translated: what nginx does in each location (by index).
    loc_models: Vec<Option<verify::NginxAction>>,
    /// `file:line` of every directive reported as not translated.
    skipped_at: HashSet<String>,
    /// `file:line` of every directive with a note on a routing difference (which
    /// location answers, or the forwarded path).
    routing_notes: HashSet<String>,
    /// While one server is translated: bare paths (`/api`) noted as answered
    /// differently, with the directive that has the note.
    noted_paths: Vec<(String, String)>,
    /// nginx's request handling as the importer understands it, for `--verify`.
    model: Vec<verify::ServerModel>,
}

/// Directives that are settings handled through [`Settings`].
const SETTINGS: [&str; 4] = [
    "proxy_set_header",
    "add_header",
    "proxy_read_timeout",
    "proxy_connect_timeout",
];

fn args_text(d: &Directive) -> String {
    let mut s = d.name.clone();
    for a in &d.args {
        s.push(' ');
        if a.is_empty() || a.contains(char::is_whitespace) {
            s.push_str(&format!("\"{}\"", a.escape_default()));
        } else {
            s.push_str(a);
        }
    }
    s
}

impl Translator {
    fn skip(&mut self, d: &Directive, reason: &str) {
        self.skipped_at.insert(d.at());
        self.notes.push(format!(
            "{}: not translated: directive `{}`: {reason}",
            d.at(),
            args_text(d)
        ));
    }

    fn note(&mut self, d: &Directive, text: &str) {
        self.notes
            .push(format!("{}: note: `{}`: {text}", d.at(), args_text(d)));
    }

    fn run(&mut self, tree: &[Directive]) {
        // Contexts: the main file may hold `http { … }` or be a fragment with `server`
        // and `upstream` blocks at the top.
        let mut servers: Vec<(&Directive, Settings)> = Vec::new();
        let top = self.collect(tree, &Settings::default(), &mut servers);
        for h in tree
            .iter()
            .filter(|d| d.name == "http" && d.block.is_some())
        {
            self.collect(h.children(), &top, &mut servers);
        }
        // Report what the contexts hold that is neither a server nor an upstream.
        for d in tree {
            match d.name.as_str() {
                "http" if d.block.is_some() => {
                    for c in d.children() {
                        self.other_context_directive(c);
                    }
                }
                _ => self.other_context_directive(d),
            }
        }
        self.choose_listen(&servers);
        let defaults = default_servers(&servers);
        let mut no_root: Vec<(&Directive, String)> = Vec::new();
        let https_redirects = https_redirect_servers(&servers);
        for (i, (server, settings)) in servers.iter().enumerate() {
            if let Some((ret, tls)) = https_redirects.get(&i) {
                let why = format!(
                    "this plain-HTTP server only redirects to HTTPS, which the gateway does not terminate yet; the routes of the TLS server ({}) are translated instead",
                    tls.at()
                );
                self.skip(ret, &why);
                self.model.push(verify::ServerModel::excluded(server));
                continue;
            }
            let settings = settings.inherit(server.children());
            let (named, has_root, first) =
                self.server(server, &settings, defaults.contains(&i), &servers);
            if named
                && !has_root
                && let Some(name) = first
            {
                no_root.push((server, name));
            }
        }
        // A request for a named host whose path no route of that host matches falls
        // through to wildcard-host and host-less routes in the gateway.
        if servers.len() > 1 {
            for (server, name) in no_root {
                if let Some(m) = self.model.iter_mut().find(|m| m.at == server.at()) {
                    m.no_root_note = true;
                }
                self.notes.push(format!(
                    "{}: note: server `{name}` has no `location /`: the gateway sends its other paths to less specific routes (wildcard hosts, host-less routes), nginx answers them from this server",
                    server.at()
                ));
            }
        }
    }

    /// Upstreams and servers of one context; its settings for the servers.
    fn collect<'a>(
        &mut self,
        list: &'a [Directive],
        base: &Settings,
        servers: &mut Vec<(&'a Directive, Settings)>,
    ) -> Settings {
        let settings = base.inherit(list);
        for d in list {
            match d.name.as_str() {
                "upstream" if d.block.is_some() => self.upstream(d),
                "server" if d.block.is_some() => servers.push((d, settings.clone())),
                _ => {}
            }
        }
        settings
    }

    /// Directives of the main and http contexts other than servers and upstreams.
    fn other_context_directive(&mut self, d: &Directive) {
        match d.name.as_str() {
            "server" | "upstream" if d.block.is_some() => {}
            n if SETTINGS.contains(&n) => {}
            "client_max_body_size" => self.skip(d, "request body limits are not supported yet"),
            n if n.starts_with("ssl_") => self.skip(d, "TLS is not supported yet"),
            "events"
            | "worker_processes"
            | "worker_connections"
            | "user"
            | "pid"
            | "worker_rlimit_nofile"
            | "load_module"
            | "daemon"
            | "master_process" => self.skip(d, "process settings have no equivalent"),
            "access_log" | "error_log" | "log_format" => self.skip(
                d,
                "the gateway writes its own JSON access log and logs on stderr",
            ),
            _ => self.skip(d, "no equivalent in the gateway"),
        }
    }

    fn upstream(&mut self, d: &Directive) {
        let [name] = d.args.as_slice() else {
            self.skip(d, "`upstream` takes one name");
            return;
        };
        let mut servers: Vec<(String, u32)> = Vec::new();
        for s in d.children() {
            if s.name != "server" {
                let reason = match s.name.as_str() {
                    "least_conn" | "ip_hash" | "hash" | "random" => {
                        "load balancing is round-robin (weighted through `split`)"
                    }
                    "keepalive" | "keepalive_timeout" | "keepalive_requests" => {
                        "the gateway pools upstream connections itself (`pool_max_idle`, `pool_idle_timeout`)"
                    }
                    _ => "no equivalent in the gateway",
                };
                self.skip(s, reason);
                continue;
            }
            let Some(addr) = s.args.first() else {
                self.skip(s, "`server` needs an address");
                continue;
            };
            if addr.starts_with("unix:") {
                self.skip(s, "unix sockets are not supported as endpoints");
                continue;
            }
            let mut weight = 1u32;
            let mut usable = true;
            for p in &s.args[1..] {
                if let Some(w) = p.strip_prefix("weight=") {
                    match w.parse::<u32>() {
                        Ok(w) if (1..=1_000_000).contains(&w) => weight = w,
                        _ => {
                            self.skip(s, &format!("invalid weight `{w}`"));
                            usable = false;
                        }
                    }
                } else if p == "backup" {
                    self.skip(s, "backup servers are not supported (no failover tier)");
                    usable = false;
                } else if p == "down" {
                    self.skip(s, "the server is marked down");
                    usable = false;
                } else {
                    let key = p.split('=').next().unwrap_or(p);
                    self.note(
                        s,
                        &format!("parameter `{key}` is not translated (no passive health checks yet); the server is kept"),
                    );
                }
            }
            if !usable {
                continue;
            }
            let endpoint = with_default_port(addr);
            if let Err(e) = crate::config::validate::parse_endpoint(&endpoint) {
                self.skip(s, &e);
                continue;
            }
            match servers.iter_mut().find(|(e, _)| *e == endpoint) {
                // nginx lists the same address twice to give it twice the share.
                Some(existing) => existing.1 += weight,
                None => servers.push((endpoint, weight)),
            }
        }
        if self.upstreams.contains_key(name) {
            self.skip(d, "duplicate upstream name (nginx rejects this)");
            return;
        }
        self.upstreams.insert(
            name.clone(),
            UpstreamDef {
                at: d.at(),
                servers,
            },
        );
    }

    /// The gateway has one plain-HTTP listen address: the first `listen` in the file.
    /// The first plain-HTTP `listen` (the gateway does not terminate TLS yet), else the
    /// first `listen`.
    fn choose_listen(&mut self, servers: &[(&Directive, Settings)]) {
        for (s, _) in servers {
            for l in s.children().iter().filter(|d| d.name == "listen") {
                if !l.args.iter().any(|a| a == "ssl")
                    && let Some(addr) = l.args.first().and_then(|a| listen_addr(a))
                {
                    self.listen = Some((addr, l.at()));
                    return;
                }
            }
            if !s.children().iter().any(|d| d.name == "listen") {
                self.listen = Some(("0.0.0.0:80".into(), s.at()));
                return;
            }
        }
        for (s, _) in servers {
            for l in s.children().iter().filter(|d| d.name == "listen") {
                if let Some(addr) = l.args.first().and_then(|a| listen_addr(a)) {
                    self.listen = Some((addr, l.at()));
                    return;
                }
            }
            if !s.children().iter().any(|d| d.name == "listen") {
                self.listen = Some(("0.0.0.0:80".into(), s.at()));
                return;
            }
        }
    }

    fn fresh_route_name(&mut self, host: Option<&str>, path: &PathKind) -> String {
        let h = match host {
            None => "default".to_string(),
            Some(h) if h.starts_with("*.") => format!("wildcard-{}", slug(&h[2..])),
            Some(h) => slug(h),
        };
        let p = match slug(path.text()) {
            s if s.is_empty() => "root".to_string(),
            s => s,
        };
        let base = match path {
            PathKind::Exact(_) => format!("{h}-{p}-exact"),
            PathKind::Prefix(_) => format!("{h}-{p}"),
        };
        let mut name = base.clone();
        let mut n = 2;
        while self.route_names.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        self.route_names.insert(name.clone());
        name
    }

    /// Add a route unless one with the same host and path exists (servers on different
    /// ports share the gateway's one listen address).
    fn push_route(
        &mut self,
        d: &Directive,
        at: String,
        host: Option<String>,
        path: PathKind,
        action: Action,
    ) {
        let (exact, p) = path.key();
        let key = (host.clone(), exact, p);
        if let Some((name, first)) = self.route_keys.get(&key) {
            let reason = format!(
                "route `{name}` (from {first}) already answers host {} and this path",
                host.as_deref().unwrap_or("(any)")
            );
            self.skip(d, &reason);
            return;
        }
        let name = self.fresh_route_name(host.as_deref(), &path);
        self.route_keys.insert(key, (name.clone(), at.clone()));
        self.routes.push(Route {
            at,
            name,
            host,
            path,
            action,
        });
    }

    /// Translate one server block. Returns (emits routes with a host, has `location /`,
    /// first name).
    fn server(
        &mut self,
        server: &Directive,
        settings: &Settings,
        is_default: bool,
        all: &[(&Directive, Settings)],
    ) -> (bool, bool, Option<String>) {
        let mut names: Vec<String> = Vec::new();
        let mut bad_names = false;
        let mut locations: Vec<Loc<'_>> = Vec::new();
        let mut server_return: Option<&Directive> = None;
        let mut server_rewrites: Vec<&Directive> = Vec::new();
        for d in server.children() {
            match d.name.as_str() {
                "listen" => self.listen_directive(d),
                "server_name" => {
                    for n in &d.args {
                        match server_name(n) {
                            Ok(list) => names.extend(list),
                            Err(reason) => {
                                bad_names = true;
                                self.notes.push(format!(
                                    "{}: not translated: server name `{n}`: {reason}",
                                    d.at()
                                ));
                            }
                        }
                    }
                }
                "location" => match location_args(d) {
                    Some((modifier, path)) => locations.push(Loc {
                        d,
                        modifier,
                        path: path.to_string(),
                    }),
                    None => self.skip(
                        d,
                        "a location takes a path, optionally after =, ^~, ~ or ~*",
                    ),
                },
                "return" => {
                    if server_return.is_none() {
                        server_return = Some(d);
                    } else {
                        self.skip(d, "an earlier `return` in this server answers first");
                    }
                }
                "rewrite" => server_rewrites.push(d),
                n if SETTINGS.contains(&n) => {}
                _ => self.other_directive(d),
            }
        }
        names.dedup();
        let mut hosts: Vec<Option<String>> = Vec::new();
        if is_default {
            hosts.push(None);
            // Exact names of the default server still beat other servers' wildcards.
            for n in &names {
                let captured = all.iter().any(|(other, _)| {
                    !std::ptr::eq(*other, server)
                        && other
                            .children()
                            .iter()
                            .filter(|d| d.name == "server_name")
                            .flat_map(|d| d.args.iter())
                            .filter_map(|a| server_name(a).ok())
                            .flatten()
                            .any(|w| wildcard_matches(&w, n))
                });
                if captured {
                    hosts.push(Some(n.clone()));
                }
            }
        } else if names.is_empty() {
            self.notes.push(format!(
                "{}: not translated: server: it has no usable server_name and is not the default server for its port, so only requests without a matching Host reach it in nginx",
                server.at()
            ));
            self.model.push(verify::ServerModel {
                bad_names,
                ..verify::ServerModel::excluded(server)
            });
            return (false, false, None);
        } else {
            hosts.extend(names.iter().cloned().map(Some));
        }
        let first = names.first().cloned();
        let has_root = locations
            .iter()
            .any(|l| l.path == "/" && (l.modifier.is_empty() || l.modifier == "^~"));
        let mut model = verify::ServerModel {
            at: server.at(),
            names: names.clone(),
            is_default,
            bad_names,
            ..verify::ServerModel::default()
        };

        if let Some(ret) = server_return {
            // The server rewrite phase runs before any location is chosen.
            let action = self.return_action(ret, &names);
            model.ret = Some((ret.clone(), action.clone()));
            // Reported as not translated below; nginx runs them in file order.
            model.rewrites = server_rewrites
                .iter()
                .map(|r| ((*r).clone(), None))
                .collect();
            if let Some(action) = action {
                for h in &hosts {
                    self.push_route(
                        ret,
                        ret.at(),
                        h.clone(),
                        PathKind::Prefix("/".into()),
                        Action::Redirect(action.clone()),
                    );
                }
            }
            for l in &locations {
                self.skip(
                    l.d,
                    &format!(
                        "the server-level `return` ({}) answers every request first",
                        ret.at()
                    ),
                );
            }
            for r in &server_rewrites {
                self.skip(
                    r,
                    &format!(
                        "the server-level `return` ({}) answers every request first",
                        ret.at()
                    ),
                );
            }
            self.model.push(model);
            return (hosts.iter().any(Option::is_some), true, first);
        }
        self.actions = vec![None; locations.len()];
        self.loc_models = vec![None; locations.len()];
        self.bare.clear();
        self.noted_paths.clear();
        for r in &server_rewrites {
            let rw = self.server_rewrite(r, &hosts, &locations);
            model.rewrites.push(((*r).clone(), rw));
        }
        for (i, loc) in locations.iter().enumerate() {
            self.location(i, loc, &locations, settings, &hosts, &names);
        }
        self.bare_paths(&locations, &hosts);
        model.locations = self.location_models(&locations);
        model.noted_paths = std::mem::take(&mut self.noted_paths);
        self.model.push(model);
        (hosts.iter().any(Option::is_some), has_root, first)
    }

    fn listen_directive(&mut self, d: &Directive) {
        let Some(a) = d.args.first() else {
            self.skip(d, "`listen` needs an address");
            return;
        };
        let Some(addr) = listen_addr(a) else {
            self.skip(d, "only IP:PORT and PORT listen addresses are translated");
            return;
        };
        if d.args.iter().any(|a| a == "ssl") {
            self.note(
                d,
                "TLS is not supported yet: this server's routes are served over plain HTTP",
            );
        }
        for flag in &d.args[1..] {
            if !matches!(
                flag.as_str(),
                "ssl" | "default_server" | "default" | "http2"
            ) {
                self.note(d, &format!("listen parameter `{flag}` is not translated"));
            }
        }
        if let Some((chosen, at)) = &self.listen
            && *chosen != addr
            && !(same_port(chosen, &addr))
        {
            let msg = format!(
                "the gateway has one listen address, `{chosen}` (from {at}); this server's routes are served there"
            );
            self.note(d, &msg);
        }
    }

    /// Directives inside `server` or `location` that are neither structure nor settings.
    fn other_directive(&mut self, d: &Directive) {
        let reason = match d.name.as_str() {
            "client_max_body_size" => "request body limits are not supported yet",
            n if n.starts_with("ssl_") => "TLS is not supported yet",
            "root" | "alias" | "index" | "try_files" | "autoindex" => {
                "the gateway does not serve files"
            }
            "access_log" | "error_log" => {
                "the gateway writes its own JSON access log and logs on stderr"
            }
            "proxy_http_version" => "the gateway speaks HTTP/1.1 to upstreams",
            "proxy_send_timeout" => {
                "only the connect timeout and the route timeout (until the response head) exist"
            }
            "proxy_buffering"
            | "proxy_buffers"
            | "proxy_buffer_size"
            | "proxy_request_buffering" => "the gateway streams bodies without buffering",
            "if" | "set" | "map" => "conditional configuration is not translated",
            "proxy_redirect" | "proxy_cookie_domain" | "proxy_cookie_path" => {
                "response rewriting is not supported"
            }
            "proxy_hide_header" => "use `response_headers = { remove = [...] }` by hand if needed",
            _ => "no equivalent in the gateway",
        };
        self.skip(d, reason);
    }

    /// A server-level rewrite runs before location matching: only redirects (flag
    /// `permanent`/`redirect`) translate, as a route of their own. Returns the rewrite
    /// when it was translated.
    fn server_rewrite(
        &mut self,
        d: &Directive,
        hosts: &[Option<String>],
        locations: &[Loc<'_>],
    ) -> Option<SimpleRewrite> {
        let rw = self.simple_rewrite(d)?;
        // The rewrite runs before any location is chosen; as a route it would lose to
        // longer locations below its prefix.
        if let Some(o) = locations.iter().find(|o| {
            let lit = o.path.trim_start_matches('^');
            lit.starts_with(&rw.from) && lit.len() > rw.from.len()
        }) {
            let why = format!(
                "`location {}` ({}) would take precedence over this redirect in the gateway",
                o.path,
                o.d.at()
            );
            self.skip(d, &why);
            return None;
        }
        match rw.flag {
            RewriteFlag::Redirect(status) => {
                let action = Action::Redirect(Redirect {
                    prefix: Some(rw.to.clone()),
                    status,
                    ..Redirect::default()
                });
                self.push_rewrite_routes(d, hosts, &rw, action);
                Some(rw)
            }
            RewriteFlag::Break => {
                self.skip(
                    d,
                    "a server-level rewrite changes the path before the location is chosen; only redirects translate",
                );
                None
            }
        }
    }

    /// The verification model of one server's locations: a location counts as
    /// translated when it produced routes and neither it nor one of its rewrites was
    /// reported as not translated.
    fn location_models(&self, locations: &[Loc<'_>]) -> Vec<verify::LocModel> {
        locations
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let translated = self.actions.get(i).is_some_and(Option::is_some)
                    && !self.skipped_at.contains(&l.d.at())
                    && !l
                        .d
                        .children()
                        .iter()
                        .any(|c| c.name == "rewrite" && self.skipped_at.contains(&c.at()));
                let noted =
                    |d: &Directive| Some(d.at()).filter(|at| self.routing_notes.contains(at));
                verify::LocModel {
                    unbounded_note: noted(l.d),
                    slash_note: l
                        .d
                        .children()
                        .iter()
                        .filter(|c| c.name == "proxy_pass")
                        .find_map(noted),
                    d: l.d.clone(),
                    modifier: l.modifier.to_string(),
                    path: l.path.clone(),
                    proxied: l.d.children().iter().any(|c| c.name == "proxy_pass"),
                    action: self
                        .loc_models
                        .get(i)
                        .cloned()
                        .flatten()
                        .filter(|_| translated),
                }
            })
            .collect()
    }

    fn location(
        &mut self,
        idx: usize,
        loc: &Loc<'_>,
        all: &[Loc<'_>],
        settings: &Settings,
        hosts: &[Option<String>],
        names: &[String],
    ) {
        let d = loc.d;
        let (path, from_regex) = match loc.modifier {
            "" | "^~" => (PathKind::Prefix(loc.path.clone()), false),
            "=" => (PathKind::Exact(loc.path.clone()), false),
            "~" | "~*" => match regex_as_path(&loc.path, loc.modifier == "~*") {
                Some(p) => match regex_conflict(&p, loc, all) {
                    None => (p, true),
                    Some(why) => {
                        self.skip(d, &why);
                        return;
                    }
                },
                None => {
                    self.skip(d, "regular-expression locations are translated only when they are an anchored literal prefix ending in `/` (`^/api/`) or an anchored literal path (`^/x$`)");
                    return;
                }
            },
            "@" => {
                self.skip(d, "named locations are not translated");
                return;
            }
            _ => {
                self.skip(d, "unknown location modifier");
                return;
            }
        };
        if !is_route_path(path.text()) {
            self.skip(
                d,
                "the path is not in normal form, so the gateway could never match it",
            );
            return;
        }
        let settings = settings.inherit(d.children());
        let mut proxy_pass: Option<&Directive> = None;
        let mut ret: Option<&Directive> = None;
        let mut rewrites: Vec<&Directive> = Vec::new();
        for c in d.children() {
            match c.name.as_str() {
                "proxy_pass" => proxy_pass = Some(c),
                "return" if ret.is_none() => ret = Some(c),
                "return" => self.skip(c, "an earlier `return` answers first"),
                "rewrite" => rewrites.push(c),
                "location" => self.skip(c, "nested locations are not translated"),
                n if SETTINGS.contains(&n) => {}
                _ => self.other_directive(c),
            }
        }
        if let Some(r) = ret {
            for x in rewrites.iter().copied().chain(proxy_pass) {
                self.skip(x, &format!("the `return` ({}) answers first", r.at()));
            }
            let Some(action) = self.return_action(r, names) else {
                return;
            };
            for c in d.children().iter().filter(|c| c.name == "add_header") {
                self.skip(c, "a redirect route cannot set response headers");
            }
            self.set_loc_model(
                idx,
                verify::NginxAction {
                    ret: Some(action.clone()),
                    ..verify::NginxAction::default()
                },
            );
            let action = Action::Redirect(action);
            self.location_routes(idx, d, &path, from_regex, action, hosts, all);
            return;
        }
        // Rewrites: at most one simple one, applied to this location or to a
        // narrower route of its own.
        let mut own_rewrite: Option<SimpleRewrite> = None;
        let mut extra: Option<(SimpleRewrite, &Directive)> = None;
        // The rewrite as written, for nginx's model.
        let mut raw_rewrite: Option<SimpleRewrite> = None;
        for (i, r) in rewrites.iter().enumerate() {
            if i > 0 {
                self.skip(r, "only one rewrite per location is translated");
                continue;
            }
            let Some(rw) = self.simple_rewrite(r) else {
                continue;
            };
            raw_rewrite = Some(rw.clone());
            let lp = path.text();
            let applies_to_all = lp.starts_with(&rw.from);
            match &path {
                PathKind::Exact(_) | PathKind::Prefix(_) if applies_to_all => {
                    let rest = &lp[rw.from.len()..];
                    own_rewrite = Some(SimpleRewrite {
                        to: format!("{}{rest}", rw.to),
                        ..rw
                    });
                }
                PathKind::Prefix(_) if rw.from.starts_with(lp) && !from_regex => {
                    let shadowed = all.iter().any(|o| {
                        !std::ptr::eq(o.d, d)
                            && !o.modifier.starts_with('~')
                            && o.path.starts_with(&rw.from)
                    });
                    if shadowed {
                        self.skip(
                            r,
                            "another location covers part of the rewritten paths; not translated",
                        );
                    } else {
                        extra = Some((rw, r));
                    }
                }
                _ => self.skip(r, "the pattern never matches the paths of this location"),
            }
        }
        if let Some(rw) = &own_rewrite
            && let RewriteFlag::Redirect(status) = rw.flag
        {
            let action = Action::Redirect(match &path {
                PathKind::Exact(_) => Redirect {
                    path: Some(rw.to.clone()),
                    status,
                    ..Redirect::default()
                },
                PathKind::Prefix(_) => Redirect {
                    prefix: Some(rw.to.clone()),
                    status,
                    ..Redirect::default()
                },
            });
            if let Some(pp) = proxy_pass {
                self.skip(pp, "the redirecting `rewrite` answers first");
            }
            let model = verify::NginxAction {
                rewrite: raw_rewrite,
                ..verify::NginxAction::default()
            };
            self.set_loc_model(idx, model);
            self.location_routes(idx, d, &path, from_regex, action, hosts, all);
            return;
        }
        let Some(pp) = proxy_pass else {
            self.skip(
                d,
                "no `proxy_pass` or `return`: the gateway only proxies and redirects",
            );
            return;
        };
        let Some(mut proxy) = self.proxy(pp, &path, from_regex, own_rewrite.is_some(), &settings)
        else {
            return;
        };
        if let Some(rw) = &own_rewrite {
            // nginx ignores proxy_pass's URI once a rewrite changed the path.
            match &path {
                PathKind::Exact(_) => proxy.rewrite_path = Some(rw.to.clone()),
                PathKind::Prefix(_) => proxy.rewrite_prefix = Some(rw.to.clone()),
            }
        }
        let model = verify::NginxAction {
            rewrite: raw_rewrite,
            proxy: self.nginx_proxy(pp),
            ..verify::NginxAction::default()
        };
        self.set_loc_model(idx, model);
        self.location_routes(
            idx,
            d,
            &path,
            from_regex,
            Action::Proxy(proxy.clone()),
            hosts,
            all,
        );
        // nginx answers `/api` with a 301 to `/api/` for a proxied `location /api/`
        // (also `location = /api/`), unless a location for `/api` itself exists.
        if let PathKind::Prefix(p) | PathKind::Exact(p) = &path
            && !from_regex
            && p.len() > 1
            && p.ends_with('/')
        {
            let bare = p.trim_end_matches('/');
            if !all
                .iter()
                .any(|o| !o.modifier.starts_with('~') && o.path == bare)
            {
                let action = Action::Redirect(Redirect {
                    path: Some(p.clone()),
                    status: 301,
                    ..Redirect::default()
                });
                let at = format!("{} (nginx redirects `{bare}` to `{p}`)", d.at());
                for h in hosts {
                    self.push_route(
                        d,
                        at.clone(),
                        h.clone(),
                        PathKind::Exact(bare.to_string()),
                        action.clone(),
                    );
                }
            }
        }
        if let Some((rw, r)) = extra {
            let action = match rw.flag {
                RewriteFlag::Break => Action::Proxy(Proxy {
                    rewrite_prefix: Some(rw.to.clone()),
                    rewrite_path: None,
                    ..proxy.clone()
                }),
                RewriteFlag::Redirect(status) => Action::Redirect(Redirect {
                    prefix: Some(rw.to.clone()),
                    status,
                    ..Redirect::default()
                }),
            };
            self.push_rewrite_routes(r, hosts, &rw, action);
        }
    }

    /// The routes of a simple prefix rewrite at `d`: one per host on the rewrite's
    /// `from` prefix, and the prefix remembered as a bare path.
    fn push_rewrite_routes(
        &mut self,
        d: &Directive,
        hosts: &[Option<String>],
        rw: &SimpleRewrite,
        action: Action,
    ) {
        for h in hosts {
            self.push_route(
                d,
                d.at(),
                h.clone(),
                PathKind::Prefix(rw.from.clone()),
                action.clone(),
            );
        }
        self.bare.push((rw.from.clone(), d.clone()));
    }

    fn set_loc_model(&mut self, idx: usize, action: verify::NginxAction) {
        if let Some(slot) = self.loc_models.get_mut(idx) {
            *slot = Some(action);
        }
    }

    /// What nginx does with `proxy_pass URL` (already translated): the upstream's
    /// servers with their weights, and the URI part.
    fn nginx_proxy(&self, pp: &Directive) -> Option<verify::NginxProxy> {
        let (authority, uri) = split_proxy_url(pp.args.first()?)?;
        let servers = match self.upstreams.get(authority) {
            Some(up) => up.servers.clone(),
            None => vec![(with_default_port(authority), 1)],
        };
        Some(verify::NginxProxy {
            servers,
            uri: uri.map(str::to_string),
        })
    }

    /// The routes of one location (one per host), remembered for the bare-path pass;
    /// a prefix without a trailing `/` gets a note (nginx's prefixes are not
    /// segment-bounded).
    #[allow(clippy::too_many_arguments)]
    fn location_routes(
        &mut self,
        idx: usize,
        d: &Directive,
        path: &PathKind,
        from_regex: bool,
        action: Action,
        hosts: &[Option<String>],
        all: &[Loc<'_>],
    ) {
        // `location /api` next to `location /api/`: nginx sends `/api/…` to the
        // latter, so the former answers `/api` itself (exactly, for the gateway).
        let sibling = match path {
            PathKind::Prefix(p) if !from_regex && !p.ends_with('/') => {
                let slash = format!("{p}/");
                all.iter()
                    .any(|o| (o.modifier.is_empty() || o.modifier == "^~") && o.path == slash)
            }
            _ => false,
        };
        let (route_path, route_action) = match path {
            PathKind::Prefix(p) if sibling => match bare_action(path, &action, p) {
                Some(a) => (PathKind::Exact(p.clone()), a),
                None => {
                    self.skip(d, &format!("next to `location {p}/` this location answers only `{p}` (and `{p}x`), and its rewrite of `{p}` is not a normalised path"));
                    return;
                }
            },
            _ => (path.clone(), action.clone()),
        };
        for h in hosts {
            self.push_route(
                d,
                d.at(),
                h.clone(),
                route_path.clone(),
                route_action.clone(),
            );
        }
        if let PathKind::Prefix(p) = path
            && p != "/"
        {
            if !p.ends_with('/') {
                let msg = format!(
                    "nginx also matches paths that merely start with `{p}` (`{p}x`, `{p}-y`); the gateway matches `{p}` on segment boundaries only"
                );
                self.note(d, &msg);
                self.routing_notes.insert(d.at());
            } else if from_regex || matches!(action, Action::Redirect(_)) {
                // nginx's own 301 from `/api` to `/api/` exists only for proxied
                // static prefixes (see `location`).
                self.bare.push((p.clone(), d.clone()));
            }
        }
        if let Some(slot) = self.actions.get_mut(idx) {
            *slot = Some((path.clone(), action));
        }
    }

    /// `/api/` also matches `/api` in the gateway; nginx sends `/api` wherever its
    /// own location search leads. Give the bare path an exact route with that
    /// location's action, or report that it cannot.
    fn bare_paths(&mut self, locations: &[Loc<'_>], hosts: &[Option<String>]) {
        for (slash, d) in std::mem::take(&mut self.bare) {
            let bare = slash.trim_end_matches('/').to_string();
            if bare.is_empty()
                || locations
                    .iter()
                    .any(|o| !o.modifier.starts_with('~') && o.path == bare)
            {
                continue;
            }
            match nginx_location(&bare, locations) {
                Choice::Loc(i) => match self.actions.get(i).cloned().flatten() {
                    Some((lpath, action)) => match bare_action(&lpath, &action, &bare) {
                        Some(a) => {
                            let at = format!(
                                "{} (nginx answers `{bare}` from the location at {})",
                                d.at(),
                                locations[i].d.at()
                            );
                            for h in hosts {
                                self.push_route(
                                    &d,
                                    at.clone(),
                                    h.clone(),
                                    PathKind::Exact(bare.clone()),
                                    a.clone(),
                                );
                            }
                        }
                        None => {
                            let msg = format!(
                                "nginx answers `{bare}` from the location at {}, whose rewrite of it is not a normalised path; the gateway answers it from the route for `{slash}`",
                                locations[i].d.at()
                            );
                            self.bare_note(&d, &bare, &msg);
                        }
                    },
                    None => {
                        let msg = format!(
                            "nginx answers `{bare}` from the location at {}, which is not translated; the gateway answers it from the route for `{slash}`",
                            locations[i].d.at()
                        );
                        self.bare_note(&d, &bare, &msg);
                    }
                },
                Choice::Regex(i) => {
                    let msg = format!(
                        "the regular-expression location at {} may answer `{bare}` in nginx; the gateway answers it from the route for `{slash}`",
                        locations[i].d.at()
                    );
                    self.bare_note(&d, &bare, &msg);
                }
                Choice::None => {
                    let msg = format!(
                        "nginx has no location for `{bare}`; the gateway answers it from the route for `{slash}` (a prefix also matches its path without the trailing `/`)"
                    );
                    self.bare_note(&d, &bare, &msg);
                }
            }
        }
    }

    /// A note on a bare path that the gateway answers differently (for `--verify`).
    fn bare_note(&mut self, d: &Directive, bare: &str, msg: &str) {
        self.note(d, msg);
        self.noted_paths.push((bare.to_string(), d.at()));
    }

    /// `proxy_pass` with the location's settings.
    fn proxy(
        &mut self,
        pp: &Directive,
        path: &PathKind,
        from_regex: bool,
        rewritten: bool,
        settings: &Settings,
    ) -> Option<Proxy> {
        let [url] = pp.args.as_slice() else {
            self.skip(pp, "`proxy_pass` takes one URL");
            return None;
        };
        if url.contains('$') {
            self.skip(pp, "a proxy_pass with variables is not translated");
            return None;
        }
        let Some((authority, uri)) = split_proxy_url(url) else {
            if url.starts_with("https://") {
                self.skip(pp, "TLS to upstreams is not supported yet");
            } else {
                self.skip(pp, "only http:// upstreams are translated");
            }
            return None;
        };
        let (target, proxy_host) = self.target(pp, authority)?;
        let mut proxy = Proxy {
            target: Some(target.clone()),
            ..Proxy::default()
        };
        if let Some(uri) = uri
            && !rewritten
        {
            if from_regex {
                self.skip(
                    pp,
                    "nginx rejects a URI part in proxy_pass inside a regular-expression location",
                );
                return None;
            }
            if uri.contains(['?', '#']) || normalize_path(uri).map(|n| n != uri).unwrap_or(true) {
                self.skip(pp, "the URI part is not a normalised path without a query");
                return None;
            }
            match path {
                PathKind::Exact(_) => proxy.rewrite_path = Some(uri.to_string()),
                PathKind::Prefix(lp) => {
                    let loc_slash = lp.ends_with('/');
                    let uri_slash = uri.ends_with('/');
                    if loc_slash != uri_slash {
                        self.routing_notes.insert(pp.at());
                    }
                    if !loc_slash && uri_slash {
                        self.note(pp, &format!("nginx maps `{lp}/x` to `{uri}/x` (a double slash); the gateway forwards `{}/x`", uri.trim_end_matches('/')));
                    } else if loc_slash && !uri_slash {
                        self.note(pp, &format!("nginx maps `{lp}x` to `{uri}x` (segments run together); the gateway forwards `{uri}/x`"));
                    }
                    proxy.rewrite_prefix = Some(uri.to_string());
                }
            }
        }
        // Host: nginx sends $proxy_host unless proxy_set_header Host says otherwise.
        let mut host_set = false;
        let mut seen_set: HashSet<String> = HashSet::new();
        for h in settings.set_headers.iter().flatten() {
            let [name, value] = h.args.as_slice() else {
                self.skip(h, "proxy_set_header takes a name and a value");
                continue;
            };
            let lname = name.to_ascii_lowercase();
            if lname == "host" {
                host_set = true;
                match value.as_str() {
                    "$host" | "$http_host" => self.note(
                        h,
                        "the gateway passes the client's Host unchanged (the same as here)",
                    ),
                    "$proxy_host" => proxy.rewrite_host = valid_host_value(&proxy_host),
                    v if v.contains('$') => self.skip(h, "the value uses variables"),
                    v => match valid_host_value(v) {
                        Some(v) => proxy.rewrite_host = Some(v),
                        None => self.skip(h, "not a valid host"),
                    },
                }
                continue;
            }
            if let Some(why) = gateway_owned(&lname, true) {
                self.skip(h, why);
                continue;
            }
            if value.contains('$') {
                self.skip(h, "the value uses variables");
                continue;
            }
            if !valid_header(&lname, value) {
                self.skip(h, "not a valid header name or value");
                continue;
            }
            if !seen_set.insert(lname.clone()) {
                self.skip(h, "the header is already set above");
                continue;
            }
            if value.is_empty() {
                proxy.req_remove.push(lname);
            } else {
                proxy.req_set.push((lname, value.clone()));
            }
        }
        if !host_set {
            match valid_host_value(&proxy_host) {
                Some(h) => proxy.rewrite_host = Some(h),
                None => self.note(
                    pp,
                    &format!("nginx sends `Host: {proxy_host}` here; that is not a valid host, so the gateway passes the client's Host"),
                ),
            }
        }
        let mut seen_add: HashSet<String> = HashSet::new();
        for h in settings.add_headers.iter().flatten() {
            let (name, value) = match h.args.as_slice() {
                [n, v] => (n, v),
                [n, v, always] if always == "always" => (n, v),
                _ => {
                    self.skip(
                        h,
                        "add_header takes a name, a value and optionally `always`",
                    );
                    continue;
                }
            };
            let lname = name.to_ascii_lowercase();
            if let Some(why) = gateway_owned(&lname, false) {
                self.skip(h, why);
            } else if value.contains('$') {
                self.skip(h, "the value uses variables");
            } else if !valid_header(&lname, value) || value.is_empty() {
                self.skip(h, "not a valid header name or value");
            } else if !seen_add.insert(lname.clone()) {
                self.skip(
                    h,
                    "the same header is added twice; one `add` per name is translated",
                );
            } else {
                proxy.resp_add.push((lname, value.clone()));
            }
        }
        if let Some(t) = &settings.read_timeout {
            match t.args.first().and_then(|a| nginx_duration(a)) {
                Some(ms) if t.args.len() == 1 && ms > 0 => proxy.timeout = Some(duration_text(ms)),
                _ => self.skip(t, "not a valid duration"),
            }
        }
        if let Some(t) = &settings.connect_timeout {
            match t.args.first().and_then(|a| nginx_duration(a)) {
                Some(ms) if t.args.len() == 1 && ms > 0 => {
                    let text = duration_text(ms);
                    let names: Vec<String> = match &target {
                        Target::Service(s) => vec![s.clone()],
                        Target::Split(v) => v.iter().map(|(s, _)| s.clone()).collect(),
                    };
                    for n in names {
                        let at = t.at();
                        if let Some(svc) = self.services.iter_mut().find(|s| s.name == n) {
                            match &svc.connect_timeout {
                                None => svc.connect_timeout = Some((text.clone(), at)),
                                Some((old, _)) if *old == text => {}
                                Some((old, first)) => {
                                    let msg = format!(
                                        "service `{n}` already has connect_timeout {old} (from {first}); one timeout per service"
                                    );
                                    self.skip(t, &msg);
                                }
                            }
                        }
                    }
                }
                _ => self.skip(t, "not a valid duration"),
            }
        }
        Some(proxy)
    }

    /// The service(s) behind `proxy_pass http://AUTHORITY`, and nginx's `$proxy_host`.
    fn target(&mut self, pp: &Directive, authority: &str) -> Option<(Target, String)> {
        if let Some(up) = self.upstreams.get(authority).cloned() {
            if let Some(t) = self.resolved.get(authority) {
                return t.clone().map(|t| (t, authority.to_string()));
            }
            let t = self.resolve_upstream(authority, &up);
            self.resolved.insert(authority.to_string(), t.clone());
            if t.is_none() {
                self.skip(
                    pp,
                    &format!("upstream `{authority}` ({}) has no usable server", up.at),
                );
            }
            return t.map(|t| (t, authority.to_string()));
        }
        let endpoint = with_default_port(authority);
        if let Err(e) = crate::config::validate::parse_endpoint(&endpoint) {
            self.skip(pp, &e);
            return None;
        }
        let base = slug(&endpoint);
        let name = match self
            .services
            .iter()
            .find(|s| s.endpoints == [endpoint.clone()] && s.comment.is_none())
        {
            Some(s) => s.name.clone(),
            None => self.add_service(&base, vec![endpoint], None),
        };
        let proxy_host = authority
            .strip_suffix(":80")
            .unwrap_or(authority)
            .to_string();
        Some((Target::Service(name), proxy_host))
    }

    fn resolve_upstream(&mut self, name: &str, up: &UpstreamDef) -> Option<Target> {
        if up.servers.is_empty() {
            return None;
        }
        let base = slug(name);
        let equal = up.servers.iter().all(|(_, w)| *w == up.servers[0].1);
        if equal {
            let eps = up.servers.iter().map(|(e, _)| e.clone()).collect();
            let svc = self.add_service(
                &base,
                eps,
                Some(format!("from upstream `{name}` ({})", up.at)),
            );
            return Some(Target::Service(svc));
        }
        let weights: Vec<String> = up.servers.iter().map(|(_, w)| w.to_string()).collect();
        let mut split = Vec::new();
        for (i, (ep, w)) in up.servers.iter().enumerate() {
            let svc = self.add_service(
                &format!("{base}-{}", i + 1),
                vec![ep.clone()],
                Some(format!(
                    "from upstream `{name}` ({}), weights {}: one service per server, weighted by the routes' `split`",
                    up.at,
                    weights.join(":")
                )),
            );
            split.push((svc, *w));
        }
        let names: Vec<&str> = split.iter().map(|(s, _)| s.as_str()).collect();
        self.notes.push(format!(
            "{}: note: upstream `{name}`: weights {} become a `split` over one service per server ({}); a service itself is round-robin",
            up.at,
            weights.join(":"),
            names.join(", ")
        ));
        Some(Target::Split(split))
    }

    fn add_service(
        &mut self,
        base: &str,
        endpoints: Vec<String>,
        comment: Option<String>,
    ) -> String {
        let base = if base.is_empty() { "upstream" } else { base };
        let mut name = base.to_string();
        let mut n = 2;
        while self.services.iter().any(|s| s.name == name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        self.services.push(Service {
            name: name.clone(),
            endpoints,
            connect_timeout: None,
            comment,
        });
        name
    }

    /// `return CODE URL` / `return URL` as a redirect.
    fn return_action(&mut self, d: &Directive, names: &[String]) -> Option<Redirect> {
        let (status, url) = match d.args.as_slice() {
            [code, url] => match code.parse::<u16>() {
                Ok(c @ (301 | 302 | 303 | 307 | 308)) => (c, url.as_str()),
                _ => {
                    self.skip(d, "only redirects (301, 302, 303, 307, 308) translate; the gateway does not answer with fixed content");
                    return None;
                }
            },
            [url]
                if url.starts_with("http://")
                    || url.starts_with("https://")
                    || url.starts_with("$scheme://") =>
            {
                (302, url.as_str())
            }
            _ => {
                self.skip(d, "only redirects (301, 302, 303, 307, 308) translate; the gateway does not answer with fixed content");
                return None;
            }
        };
        match parse_redirect_url(url, names) {
            Ok(mut r) => {
                r.status = status;
                if r.scheme.is_none() && r.host.is_none() && r.port.is_none() && r.path.is_none() {
                    self.skip(d, "the redirect points at the request itself");
                    return None;
                }
                if r.path.is_some() {
                    self.note(
                        d,
                        "the gateway appends the request's query string to the redirect; nginx does not for a fixed URL",
                    );
                }
                Some(r)
            }
            Err(why) => {
                self.skip(d, &why);
                None
            }
        }
    }

    fn simple_rewrite(&mut self, d: &Directive) -> Option<SimpleRewrite> {
        let (re, repl, flag) = match d.args.as_slice() {
            [re, repl] => (re, repl, None),
            [re, repl, flag] => (re, repl, Some(flag.as_str())),
            _ => {
                self.skip(
                    d,
                    "a rewrite takes a regex, a replacement and optionally a flag",
                );
                return None;
            }
        };
        let flag = match flag {
            Some("break") => RewriteFlag::Break,
            Some("permanent") => RewriteFlag::Redirect(301),
            Some("redirect") => RewriteFlag::Redirect(302),
            Some("last") | None => {
                self.skip(d, "without `break`, nginx searches the locations again with the new path; only `break`, `permanent` and `redirect` translate");
                return None;
            }
            Some(_) => {
                self.skip(d, "unknown flag");
                return None;
            }
        };
        match rewrite_prefixes(re, repl) {
            Some((from, to)) if is_route_path(&from) && is_route_path(&to) => {
                Some(SimpleRewrite { from, to, flag })
            }
            _ => {
                self.skip(d, "only `rewrite ^/a/(.*)$ /b/$1` (a literal prefix ending in `/` replaced by another) translates");
                None
            }
        }
    }

    // === rendering ===

    fn render(&mut self, source: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Generated by `switchyard import {source}`.");
        let _ = writeln!(
            out,
            "# Review the notes printed on stderr: they list everything not translated."
        );
        out.push('\n');
        let (listen, at) = self
            .listen
            .clone()
            .unwrap_or(("0.0.0.0:80".into(), "nginx's default".into()));
        let _ = writeln!(out, "[listen]");
        let _ = writeln!(out, "http = {}   # from {at}", q(&listen));
        out.push('\n');
        let _ = writeln!(out, "[defaults]");
        let _ = writeln!(
            out,
            "request_timeout = \"60s\"   # nginx's proxy_read_timeout default"
        );
        let _ = writeln!(
            out,
            "# connect_timeout stays the gateway's 1s (nginx's proxy_connect_timeout default is 60s)"
        );
        // Only services a route uses.
        let mut used: HashSet<&str> = HashSet::new();
        for r in &self.routes {
            if let Action::Proxy(p) = &r.action {
                match &p.target {
                    Some(Target::Service(s)) => {
                        used.insert(s);
                    }
                    Some(Target::Split(v)) => used.extend(v.iter().map(|(s, _)| s.as_str())),
                    None => {}
                }
            }
        }
        for s in &self.services {
            if !used.contains(s.name.as_str()) {
                continue;
            }
            out.push('\n');
            if let Some(c) = &s.comment {
                let _ = writeln!(out, "# {c}");
            }
            let _ = writeln!(out, "[services.{}]", s.name);
            let eps: Vec<String> = s.endpoints.iter().map(|e| q(e)).collect();
            let _ = writeln!(out, "endpoints = [{}]", eps.join(", "));
            if let Some((t, at)) = &s.connect_timeout {
                let _ = writeln!(out, "connect_timeout = {}   # from {at}", q(t));
            }
        }
        for r in &self.routes {
            out.push('\n');
            let _ = writeln!(out, "# from {}", r.at);
            let _ = writeln!(out, "[[routes]]");
            let _ = writeln!(out, "name = {}", q(&r.name));
            if let Some(h) = &r.host {
                let _ = writeln!(out, "host = {}", q(h));
            }
            match &r.path {
                PathKind::Prefix(p) => {
                    let _ = writeln!(out, "path = {}", q(p));
                }
                PathKind::Exact(p) => {
                    let _ = writeln!(out, "exact = {}", q(p));
                }
            }
            match &r.action {
                Action::Proxy(p) => render_proxy(&mut out, p),
                Action::Redirect(rd) => {
                    let mut parts = Vec::new();
                    if let Some(s) = &rd.scheme {
                        parts.push(format!("scheme = {}", q(s)));
                    }
                    if let Some(h) = &rd.host {
                        parts.push(format!("host = {}", q(h)));
                    }
                    if let Some(p) = rd.port {
                        parts.push(format!("port = {p}"));
                    }
                    if let Some(p) = &rd.path {
                        parts.push(format!("path = {}", q(p)));
                    }
                    if let Some(p) = &rd.prefix {
                        parts.push(format!("prefix = {}", q(p)));
                    }
                    parts.push(format!("status = {}", rd.status));
                    let _ = writeln!(out, "redirect = {{ {} }}", parts.join(", "));
                }
            }
        }
        out
    }
}

fn render_proxy(out: &mut String, p: &Proxy) {
    match &p.target {
        Some(Target::Service(s)) => {
            let _ = writeln!(out, "service = {}", q(s));
        }
        Some(Target::Split(v)) => {
            let parts: Vec<String> = v
                .iter()
                .map(|(s, w)| format!("{{ service = {}, weight = {w} }}", q(s)))
                .collect();
            let _ = writeln!(out, "split = [{}]", parts.join(", "));
        }
        None => {}
    }
    let mut rw = Vec::new();
    if let Some(pr) = &p.rewrite_prefix {
        rw.push(format!("prefix = {}", q(pr)));
    }
    if let Some(pa) = &p.rewrite_path {
        rw.push(format!("path = {}", q(pa)));
    }
    if let Some(h) = &p.rewrite_host {
        rw.push(format!("host = {}", q(h)));
    }
    if !rw.is_empty() {
        let _ = writeln!(out, "rewrite = {{ {} }}", rw.join(", "));
    }
    let table = |kv: &[(String, String)]| -> String {
        let items: Vec<String> = kv
            .iter()
            .map(|(k, v)| format!("{} = {}", q(k), q(v)))
            .collect();
        format!("{{ {} }}", items.join(", "))
    };
    let mut req = Vec::new();
    if !p.req_set.is_empty() {
        req.push(format!("set = {}", table(&p.req_set)));
    }
    if !p.req_remove.is_empty() {
        let items: Vec<String> = p.req_remove.iter().map(|k| q(k)).collect();
        req.push(format!("remove = [{}]", items.join(", ")));
    }
    if !req.is_empty() {
        let _ = writeln!(out, "request_headers = {{ {} }}", req.join(", "));
    }
    if !p.resp_add.is_empty() {
        let _ = writeln!(out, "response_headers = {{ add = {} }}", table(&p.resp_add));
    }
    if let Some(t) = &p.timeout {
        let _ = writeln!(out, "timeout = {}", q(t));
    }
}

// === helpers (pure) ===

/// Which location nginx picks for a path.
enum Choice {
    Loc(usize),
    /// A regular expression that may match (we do not evaluate regexes).
    Regex(usize),
    None,
}

/// nginx's location search: `=` exact, then the longest prefix; a `^~` prefix stops
/// there, otherwise the first matching regex in file order wins over the prefix.
fn nginx_location(path: &str, locs: &[Loc<'_>]) -> Choice {
    if let Some(i) = locs
        .iter()
        .position(|l| l.modifier == "=" && l.path == path)
    {
        return Choice::Loc(i);
    }
    let prefix = locs
        .iter()
        .enumerate()
        .filter(|(_, l)| (l.modifier.is_empty() || l.modifier == "^~") && path.starts_with(&l.path))
        .max_by_key(|(_, l)| l.path.len())
        .map(|(i, _)| i);
    if let Some(i) = prefix
        && locs[i].modifier == "^~"
    {
        return Choice::Loc(i);
    }
    for (i, l) in locs.iter().enumerate() {
        if !l.modifier.starts_with('~') {
            continue;
        }
        match regex_as_path(&l.path, l.modifier == "~*") {
            Some(PathKind::Prefix(lit)) if path.starts_with(&lit) => return Choice::Loc(i),
            Some(PathKind::Exact(lit)) if path == lit => return Choice::Loc(i),
            Some(_) => {}
            None if regex_may_match(&l.path, path, l.modifier == "~*") => return Choice::Regex(i),
            None => {}
        }
    }
    prefix.map_or(Choice::None, Choice::Loc)
}

/// Conservative: false only when the regex surely does not match `path` (its
/// anchored literal start differs, or it needs a literal `.` that `path` lacks).
fn regex_may_match(re: &str, path: &str, case_insensitive: bool) -> bool {
    let (re, path) = if case_insensitive {
        (re.to_ascii_lowercase(), path.to_ascii_lowercase())
    } else {
        (re.to_string(), path.to_string())
    };
    if re.contains("\\.") && !path.contains('.') {
        return false;
    }
    match re.strip_prefix('^') {
        Some(body) => {
            let mut lit = String::new();
            let mut chars = body.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(n) if !n.is_ascii_alphanumeric() => lit.push(n),
                        _ => break,
                    },
                    c if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '~') => {
                        lit.push(c)
                    }
                    // `x?`, `x*`, `x{0}` make the last literal optional.
                    '?' | '*' | '{' => {
                        lit.pop();
                        break;
                    }
                    _ => break,
                }
            }
            path.starts_with(&lit)
        }
        None => true,
    }
}

/// The action of a prefix location applied to one path it matches, as an exact route:
/// nginx replaces the matched prefix with the URI, so `/v2/` + the rest.
fn bare_action(lpath: &PathKind, action: &Action, path: &str) -> Option<Action> {
    let PathKind::Prefix(p) = lpath else {
        return Some(action.clone());
    };
    let Some(rest) = path.strip_prefix(p.as_str()) else {
        return Some(action.clone());
    };
    let full = |u: &str| {
        let f = format!("{u}{rest}");
        is_route_path(&f).then_some(f)
    };
    Some(match action {
        Action::Proxy(px) => match &px.rewrite_prefix {
            Some(u) => Action::Proxy(Proxy {
                rewrite_prefix: None,
                rewrite_path: Some(full(u)?),
                ..px.clone()
            }),
            None => action.clone(),
        },
        Action::Redirect(rd) => match &rd.prefix {
            Some(u) => Action::Redirect(Redirect {
                prefix: None,
                path: Some(full(u)?),
                ..rd.clone()
            }),
            None => action.clone(),
        },
    })
}

/// Order notes by file (in the order the files were read) and line.
fn sort_notes(notes: &mut [String], tree: &[Directive]) {
    fn files(list: &[Directive], out: &mut Vec<String>) {
        for d in list {
            if !out.iter().any(|f| **f == *d.file) {
                out.push(d.file.to_string());
            }
            files(d.children(), out);
        }
    }
    let mut order = Vec::new();
    files(tree, &mut order);
    let key = |n: &String| -> (usize, usize) {
        for (i, f) in order.iter().enumerate() {
            if let Some(rest) = n.strip_prefix(f.as_str()).and_then(|r| r.strip_prefix(':')) {
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if let Ok(line) = digits.parse() {
                    return (i, line);
                }
            }
        }
        (usize::MAX, 0)
    };
    notes.sort_by_key(key);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RewriteFlag {
    Break,
    Redirect(u16),
}

#[derive(Debug, Clone)]
struct SimpleRewrite {
    from: String,
    to: String,
    flag: RewriteFlag,
}

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `[a-z0-9-]+` from anything: runs of other characters become one `-`.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

fn with_default_port(addr: &str) -> String {
    let has_port = match addr.rsplit_once(':') {
        Some((h, p)) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':'),
        None => false,
    };
    let bracketed_v6_without_port = addr.starts_with('[') && addr.ends_with(']');
    if has_port && !bracketed_v6_without_port {
        addr.to_string()
    } else {
        format!("{addr}:80")
    }
}

/// nginx `listen` address -> `IP:PORT`.
fn listen_addr(a: &str) -> Option<String> {
    if let Ok(port) = a.parse::<u16>() {
        return Some(format!("0.0.0.0:{port}"));
    }
    if let Some(port) = a.strip_prefix("*:") {
        return port.parse::<u16>().ok().map(|p| format!("0.0.0.0:{p}"));
    }
    if let Ok(sa) = a.parse::<std::net::SocketAddr>() {
        return Some(sa.to_string());
    }
    if let Ok(ip) = a.parse::<std::net::IpAddr>() {
        return Some(std::net::SocketAddr::new(ip, 80).to_string());
    }
    None
}

fn port_of(addr: &str) -> Option<&str> {
    addr.rsplit_once(':').map(|(_, p)| p)
}

fn same_port(a: &str, b: &str) -> bool {
    // `listen 80` and `listen [::]:80` are the same service on two address families.
    port_of(a) == port_of(b)
        && (a.starts_with("0.0.0.0:") || a.starts_with("[::]:"))
        && (b.starts_with("0.0.0.0:") || b.starts_with("[::]:"))
}

/// The names a server answers to (`""` for none).
fn names_of(s: &Directive) -> Vec<String> {
    let names: Vec<String> = s
        .children()
        .iter()
        .filter(|d| d.name == "server_name")
        .flat_map(|d| d.args.iter())
        .filter_map(|a| server_name(a).ok())
        .flatten()
        .collect();
    if names.is_empty() {
        vec![String::new()]
    } else {
        names
    }
}

/// Plain-HTTP servers whose only job is `return 30x https://…` for a name that a TLS
/// server also answers: index -> (the return, the TLS server).
fn https_redirect_servers<'a>(
    servers: &[(&'a Directive, Settings)],
) -> HashMap<usize, (&'a Directive, &'a Directive)> {
    let is_tls = |s: &Directive| {
        s.children()
            .iter()
            .any(|d| d.name == "listen" && d.args.iter().any(|a| a == "ssl"))
    };
    let mut out = HashMap::new();
    for (i, (s, _)) in servers.iter().enumerate() {
        if is_tls(s) || s.children().iter().any(|d| d.name == "location") {
            continue;
        }
        let Some(ret) = s.children().iter().find(|d| d.name == "return") else {
            continue;
        };
        let redirects_to_https = match ret.args.as_slice() {
            [code, url] => {
                matches!(code.as_str(), "301" | "302" | "307" | "308")
                    && url.starts_with("https://")
            }
            [url] => url.starts_with("https://"),
            _ => false,
        };
        if !redirects_to_https {
            continue;
        }
        let mine = names_of(s);
        if let Some((tls, _)) = servers
            .iter()
            .find(|(o, _)| is_tls(o) && names_of(o).iter().any(|n| mine.contains(n)))
        {
            out.insert(i, (ret, *tls));
        }
    }
    out
}

/// The index of every server that is the default for one of its ports.
fn default_servers(servers: &[(&Directive, Settings)]) -> HashSet<usize> {
    let ports = |s: &Directive| -> Vec<(String, bool)> {
        let ls: Vec<_> = s.children().iter().filter(|d| d.name == "listen").collect();
        if ls.is_empty() {
            return vec![("80".into(), false)];
        }
        ls.iter()
            .filter_map(|l| {
                let addr = listen_addr(l.args.first()?)?;
                let port = port_of(&addr)?.to_string();
                let explicit = l
                    .args
                    .iter()
                    .any(|a| a == "default_server" || a == "default");
                Some((port, explicit))
            })
            .collect()
    };
    let mut explicit: HashMap<String, usize> = HashMap::new();
    let mut first: HashMap<String, usize> = HashMap::new();
    for (i, (s, _)) in servers.iter().enumerate() {
        for (port, is_default) in ports(s) {
            first.entry(port.clone()).or_insert(i);
            if is_default {
                explicit.entry(port).or_insert(i);
            }
        }
    }
    let mut out = HashSet::new();
    for (port, i) in first {
        out.insert(explicit.get(&port).copied().unwrap_or(i));
    }
    out
}

/// One `server_name` argument -> route hosts (none for `_`/`""`).
fn server_name(n: &str) -> Result<Vec<String>, String> {
    if n.is_empty() || n == "_" {
        return Ok(Vec::new());
    }
    if n.starts_with('~') {
        return Err("regular-expression server names are not translated".into());
    }
    let lower = n.to_ascii_lowercase();
    let (names, check) = if let Some(rest) = lower.strip_prefix('.') {
        (
            vec![rest.to_string(), format!("*.{rest}")],
            rest.to_string(),
        )
    } else if let Some(rest) = lower.strip_prefix("*.") {
        (vec![lower.clone()], rest.to_string())
    } else {
        (vec![lower.clone()], lower.clone())
    };
    let valid = !check.is_empty()
        && check.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !valid {
        return Err(if check.contains('*') {
            "only leading wildcards (`*.example.com`) are translated".into()
        } else {
            "not a valid host name".into()
        });
    }
    Ok(names)
}

fn wildcard_matches(w: &str, name: &str) -> bool {
    match w.strip_prefix("*.") {
        Some(suffix) => name.ends_with(&format!(".{suffix}")),
        None => false,
    }
}

/// `location [modifier] path` (nginx also accepts `=/x`, `~^/x`, `^~/x`).
fn location_args(d: &Directive) -> Option<(&'static str, &str)> {
    const MODS: [&str; 5] = ["=", "^~", "~*", "~", "@"];
    match d.args.as_slice() {
        [m, p] => MODS
            .iter()
            .find(|x| **x == m.as_str())
            .map(|x| (*x, p.as_str())),
        [p] => {
            for m in MODS {
                if let Some(rest) = p.strip_prefix(m)
                    && !rest.is_empty()
                {
                    return Some((if m == "@" { "@" } else { m }, rest));
                }
            }
            if p.is_empty() {
                None
            } else {
                Some(("", p.as_str()))
            }
        }
        _ => None,
    }
}

/// A path the gateway can use in `path`/`exact`: normalised, no `?#{}`.
fn is_route_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains(['?', '#', '{', '}'])
        && normalize_path(p).is_ok_and(|n| n == p)
}

/// The literal text of a regex fragment made only of path characters and escaped
/// punctuation; `None` when it has any regex syntax.
fn regex_literal(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ ('.' | '-' | '/' | '_' | '~')) => out.push(n),
                _ => return None,
            },
            c if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '~') => out.push(c),
            // An unescaped `.` matches any character: not a literal.
            _ => return None,
        }
    }
    Some(out)
}

/// `^/api/` -> prefix `/api/`; `^/x$` -> exact `/x`.
fn regex_as_path(re: &str, case_insensitive: bool) -> Option<PathKind> {
    let body = re.strip_prefix('^')?;
    let (body, exact) = match body.strip_suffix('$') {
        Some(b) => (b, true),
        None => (body, false),
    };
    let lit = regex_literal(body)?;
    if case_insensitive && lit.chars().any(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    if !lit.starts_with('/') {
        return None;
    }
    if exact {
        Some(PathKind::Exact(lit))
    } else if lit.ends_with('/') {
        Some(PathKind::Prefix(lit))
    } else {
        None
    }
}

/// Why translating a regex location as `p` would change which location answers, if
/// it would. nginx: `=` first, then the longest prefix; if that is `^~` it wins,
/// otherwise the first matching regex (in file order) beats it.
fn regex_conflict(p: &PathKind, this: &Loc<'_>, all: &[Loc<'_>]) -> Option<String> {
    let lit = p.text();
    for o in all {
        if o.modifier == "^~" && lit.starts_with(&o.path) {
            return Some(format!(
                "`location ^~ {}` ({}) stops nginx from trying regular expressions for these paths",
                o.path,
                o.d.at()
            ));
        }
        if let PathKind::Prefix(_) = p
            && o.modifier.is_empty()
            && o.path.starts_with(lit)
            && o.path.len() > lit.len()
        {
            return Some(format!(
                "nginx sends the paths of the longer `location {}` ({}) to this regular expression; the gateway would prefer the longer prefix",
                o.path,
                o.d.at()
            ));
        }
    }
    for o in all {
        if std::ptr::eq(o.d, this.d) {
            break;
        }
        if o.modifier.starts_with('~') {
            // An earlier regex wins in nginx. When it is itself a literal prefix or
            // path, the gateway agrees unless it covers all of this one's paths.
            let shadows = match regex_as_path(&o.path, o.modifier == "~*") {
                Some(PathKind::Prefix(op)) => lit.starts_with(&op),
                Some(PathKind::Exact(op)) => matches!(p, PathKind::Exact(_)) && op == lit,
                None => true,
            };
            if shadows {
                return Some(format!(
                    "the earlier regular-expression location ({}) is tried first in nginx and may match the same paths",
                    o.d.at()
                ));
            }
        }
    }
    None
}

/// `http://AUTHORITY[/URI]` -> (authority, URI); `None` for other schemes.
fn split_proxy_url(url: &str) -> Option<(&str, Option<&str>)> {
    let rest = url.strip_prefix("http://")?;
    Some(match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    })
}

/// `^/a/(.*)$` + `/b/$1` -> (`/a/`, `/b/`).
fn rewrite_prefixes(re: &str, repl: &str) -> Option<(String, String)> {
    let body = re.strip_prefix('^')?;
    let body = body.strip_suffix('$').unwrap_or(body);
    let lit = body.strip_suffix("(.*)")?;
    let from = regex_literal(lit)?;
    let to = repl.strip_suffix("$1")?;
    if !from.ends_with('/') || !to.ends_with('/') || to.contains('$') {
        return None;
    }
    Some((from, to.to_string()))
}

/// nginx time: `30`, `30s`, `500ms`, `1m30s`, `1h`, `1d` -> milliseconds.
fn nginx_duration(s: &str) -> Option<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return n.checked_mul(1000);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..split].parse().ok()?;
        let after = &rest[split..];
        let (unit, len) = if after.starts_with("ms") {
            (1, 2)
        } else {
            let mult = match after.chars().next()? {
                's' => 1000,
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                'w' => 604_800_000,
                _ => return None,
            };
            (mult, 1)
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        rest = &after[len..];
    }
    Some(total)
}

fn duration_text(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn valid_header(name: &str, value: &str) -> bool {
    http::HeaderName::from_bytes(name.as_bytes()).is_ok()
        && http::HeaderValue::from_str(value).is_ok()
}

fn valid_host_value(h: &str) -> Option<String> {
    let name = match h.rsplit_once(':') {
        Some((n, p)) if p.parse::<u16>().is_ok() => n,
        _ => h,
    };
    let ok = !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    ok.then(|| h.to_ascii_lowercase())
}

/// Headers that a route filter may not touch, with the reason as an import note: the
/// validator's own list, so an imported table never fails `check` on them.
fn gateway_owned(lname: &str, request: bool) -> Option<&'static str> {
    crate::config::validate::gateway_owned_header(lname, request)
}

/// `https://$host$request_uri`, `https://new.example.com/x`, `/relative` -> redirect.
fn parse_redirect_url(url: &str, names: &[String]) -> Result<Redirect, String> {
    let mut r = Redirect::default();
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        r.scheme = Some("https".into());
        Some(rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        r.scheme = Some("http".into());
        Some(rest)
    } else {
        url.strip_prefix("$scheme://")
    };
    let path = match rest {
        None if url.starts_with('/') => url,
        None => return Err("the redirect target is neither an absolute URL nor a path".into()),
        Some(rest) => {
            let var = ["$host", "$http_host", "$server_name"]
                .into_iter()
                .find(|v| {
                    rest.starts_with(v)
                        && !rest[v.len()..]
                            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                });
            let end = match var {
                Some(v) => v.len(),
                None => rest.find(['/', '$']).unwrap_or(rest.len()),
            };
            let (authority, mut path) = rest.split_at(end);
            if var.is_some()
                && let Some(after) = path.strip_prefix(':')
            {
                let digits = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                match after[..digits].parse::<u16>() {
                    Ok(p) if p > 0 => r.port = Some(p),
                    _ => return Err("invalid port in the redirect URL".into()),
                }
                path = &after[digits..];
            }
            match authority {
                "$host" | "$http_host" => {}
                "$server_name" => match names.first() {
                    Some(n) if !n.starts_with('*') => r.host = Some(n.clone()),
                    _ => return Err("`$server_name` has no exact name here".into()),
                },
                a if a.contains('$') => return Err("the redirect host uses variables".into()),
                a => {
                    let (h, port) = match a.rsplit_once(':') {
                        Some((h, p)) => match p.parse::<u16>() {
                            Ok(p) if p > 0 => (h, Some(p)),
                            _ => return Err(format!("invalid port in `{a}`")),
                        },
                        None => (a, None),
                    };
                    if server_name(h)
                        .map(|v| v.len() != 1 || h.starts_with('*'))
                        .unwrap_or(true)
                    {
                        return Err(format!(
                            "`{h}` is not a host name the gateway can redirect to"
                        ));
                    }
                    r.host = Some(h.to_ascii_lowercase());
                    r.port = port;
                }
            }
            if path.is_empty() { "/" } else { path }
        }
    };
    if path == "$request_uri" {
        return Ok(r);
    }
    if path.contains('$') {
        return Err(
            "the redirect path uses variables (only a whole `$request_uri` is kept)".into(),
        );
    }
    if !is_route_path(path) {
        return Err("the redirect path is not a normalised path without a query".into());
    }
    r.path = Some(path.to_string());
    Ok(r)
}

#[cfg(test)]
mod tests;
