//! Route matching: host -> path tree (matchit) -> method/header/query predicates.
//!
//! The precedence is the Kubernetes Gateway API's (see DESIGN.md "Matching"):
//!
//! 1. host: exact host, then wildcard hosts from the longest suffix down, then routes
//!    without a host;
//! 2. path, within one host group: `exact` routes for the path, then prefixes from the
//!    longest down (each prefix node knows the next shorter prefix in the table, so the
//!    fall-back walk costs one hop per candidate, not a search);
//! 3. within one (host, path): method predicate first, then more header predicates, then
//!    more query predicates, then file order ([`rank_key`]).
//!
//! The first candidate whose predicates hold wins. The table is built once per config
//! load and never changes; matching allocates nothing.

use std::collections::HashMap;

use http::{HeaderMap, Method};

use crate::config::model::{Config, HostMatch, PathMatch, Route};
use crate::config::validate::rank_key;

/// Index of a route in [`Config::routes`].
pub type RouteId = usize;

/// What the router needs to know about a request, already normalised.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    /// Normalised host (no port, lower-case), if the request named one.
    pub host: Option<&'a str>,
    /// Normalised path.
    pub path: &'a str,
    /// Raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The compiled table.
#[derive(Debug)]
pub struct Router {
    exact_hosts: HashMap<String, HostTable>,
    /// Sorted by suffix length, longest first.
    wildcard_hosts: Vec<(String, HostTable)>,
    any_host: HostTable,
    /// The config's routes (shared, not copied).
    routes: std::sync::Arc<[Route]>,
}

/// Routes of one host group.
#[derive(Debug, Default)]
struct HostTable {
    /// Exact-path routes, each list in rank order.
    exact: HashMap<String, Vec<RouteId>>,
    /// Prefix routes: matchit finds the longest matching prefix node.
    prefixes: matchit::Router<usize>,
    nodes: Vec<PrefixNode>,
}

#[derive(Debug)]
struct PrefixNode {
    /// Routes with exactly this prefix, in rank order.
    routes: Vec<RouteId>,
    /// The next shorter prefix present in this table.
    parent: Option<usize>,
}

/// Why a candidate was passed over, for `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Method,
    Header(String),
    Query(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Method => f.write_str("method does not match"),
            Rejection::Header(h) => write!(f, "header `{h}` does not match"),
            Rejection::Query(q) => write!(f, "query parameter `{q}` does not match"),
        }
    }
}

impl Router {
    /// Compile the routes of a validated config.
    pub fn new(config: &Config) -> Self {
        let routes = config.routes.clone();
        let mut exact_hosts: HashMap<String, Vec<RouteId>> = HashMap::new();
        let mut wildcard_hosts: HashMap<String, Vec<RouteId>> = HashMap::new();
        let mut any_host = Vec::new();
        for (id, r) in routes.iter().enumerate() {
            match &r.host {
                Some(HostMatch::Exact(h)) => exact_hosts.entry(h.clone()).or_default().push(id),
                Some(HostMatch::Wildcard(s)) => {
                    wildcard_hosts.entry(s.clone()).or_default().push(id)
                }
                None => any_host.push(id),
            }
        }
        let mut wildcard_hosts: Vec<(String, HostTable)> = wildcard_hosts
            .into_iter()
            .map(|(s, ids)| (s, HostTable::new(&routes, ids)))
            .collect();
        wildcard_hosts.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Router {
            exact_hosts: exact_hosts
                .into_iter()
                .map(|(h, ids)| (h, HostTable::new(&routes, ids)))
                .collect(),
            wildcard_hosts,
            any_host: HostTable::new(&routes, any_host),
            routes,
        }
    }

    /// The route for a request, or `None` (404).
    pub fn find(&self, req: &RequestInfo<'_>) -> Option<(RouteId, &Route)> {
        let mut found = None;
        self.walk(req, |id, result| {
            if result.is_ok() {
                found = Some(id);
                false
            } else {
                true
            }
        });
        found.map(|id| (id, &self.routes[id]))
    }

    /// Every candidate in precedence order with the reason it was or was not taken,
    /// stopping after the one that matches.
    pub fn explain(&self, req: &RequestInfo<'_>) -> Vec<(RouteId, Result<(), Rejection>)> {
        let mut out = Vec::new();
        self.walk(req, |id, result| {
            let matched = result.is_ok();
            out.push((id, result));
            !matched
        });
        out
    }

    /// The routes, by id.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Visit candidates in precedence order until `visit` returns false.
    fn walk(
        &self,
        req: &RequestInfo<'_>,
        mut visit: impl FnMut(RouteId, Result<(), Rejection>) -> bool,
    ) {
        let mut tables: [Option<&HostTable>; 2] = [None, None];
        if let Some(host) = req.host {
            tables[0] = self.exact_hosts.get(host);
        }
        let wildcards = self
            .wildcard_hosts
            .iter()
            .filter(|(suffix, _)| {
                req.host
                    .is_some_and(|h| h.len() > suffix.len() && h.ends_with(suffix.as_str()))
            })
            .map(|(_, t)| t);
        tables[1] = Some(&self.any_host);
        let ordered = tables[0].into_iter().chain(wildcards).chain(tables[1]);
        for table in ordered {
            if !table.walk(req, &self.routes, &mut visit) {
                return;
            }
        }
    }
}

impl HostTable {
    fn new(routes: &[Route], mut ids: Vec<RouteId>) -> Self {
        ids.sort_by_key(|&id| rank_key(&routes[id]));
        let mut t = HostTable::default();
        let mut prefix_index: HashMap<&str, usize> = HashMap::new();
        for &id in &ids {
            match &routes[id].path {
                PathMatch::Exact(p) => t.exact.entry(p.clone()).or_default().push(id),
                PathMatch::Prefix(p) => {
                    let node = *prefix_index.entry(p.as_str()).or_insert_with(|| {
                        t.nodes.push(PrefixNode {
                            routes: Vec::new(),
                            parent: None,
                        });
                        t.nodes.len() - 1
                    });
                    t.nodes[node].routes.push(id);
                }
            }
        }
        for (&prefix, &node) in &prefix_index {
            t.nodes[node].parent = parent_prefix(prefix, &prefix_index);
            // Paths were validated to contain no `{` or `}`, so they are literal routes.
            let (literal, rest) = if prefix == "/" {
                ("/".to_string(), "/{*rest}".to_string())
            } else {
                (prefix.to_string(), format!("{prefix}/{{*rest}}"))
            };
            for pattern in [literal, rest] {
                if let Err(e) = t.prefixes.insert(pattern, node) {
                    // Cannot happen for validated literal paths; keep serving the rest.
                    tracing::error!(%prefix, error = %e, "route path rejected by the path tree");
                }
            }
        }
        t
    }

    /// Candidates of this host group in order; false when `visit` asked to stop.
    fn walk(
        &self,
        req: &RequestInfo<'_>,
        routes: &[Route],
        visit: &mut impl FnMut(RouteId, Result<(), Rejection>) -> bool,
    ) -> bool {
        if let Some(ids) = self.exact.get(req.path) {
            for &id in ids {
                if !visit(id, predicates(&routes[id], req)) {
                    return false;
                }
            }
        }
        let mut node = self.longest_prefix(req.path);
        while let Some(n) = node {
            for &id in &self.nodes[n].routes {
                if !visit(id, predicates(&routes[id], req)) {
                    return false;
                }
            }
            node = self.nodes[n].parent;
        }
        true
    }

    fn longest_prefix(&self, path: &str) -> Option<usize> {
        if self.nodes.is_empty() {
            return None;
        }
        // `/a/`: a prefix matches it exactly when it matches `/a`, and `/a/{*rest}` does
        // not match an empty rest, so look up `/a`. (Looking up `/a/` first would let
        // the root's `/{*rest}` answer before `/a` is tried.)
        let lookup = match path.strip_suffix('/') {
            Some(t) if !t.is_empty() => t,
            _ => path,
        };
        self.prefixes.at(lookup).ok().map(|m| *m.value)
    }
}

/// The longest other prefix in the table that `prefix` extends on a segment boundary.
fn parent_prefix(prefix: &str, index: &HashMap<&str, usize>) -> Option<usize> {
    let mut p = prefix;
    while p != "/" {
        p = match p.rfind('/') {
            Some(0) => "/",
            Some(i) => &p[..i],
            None => return None,
        };
        if let Some(&n) = index.get(p) {
            return Some(n);
        }
    }
    None
}

/// Method, header and query predicates of one route.
fn predicates(r: &Route, req: &RequestInfo<'_>) -> Result<(), Rejection> {
    if !r.methods.is_empty() && !r.methods.contains(req.method) {
        return Err(Rejection::Method);
    }
    for (name, value) in &r.headers {
        if req.headers.get(name) != Some(value) {
            return Err(Rejection::Header(name.as_str().to_string()));
        }
    }
    for (name, value) in &r.query {
        if query_first(req.query, name).as_deref() != Some(value.as_str()) {
            return Err(Rejection::Query(name.clone()));
        }
    }
    Ok(())
}

/// First value of `name` in a query string, percent-decoded (`+` is not a space here:
/// this is a URL, not a form).
fn query_first<'q>(query: Option<&'q str>, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k).as_deref() == Some(name))
            .then(|| percent_decode(v))
            .flatten()
    })
}

fn percent_decode(s: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !s.contains('%') {
        return Some(s.into());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Into::into)
}

#[cfg(test)]
mod tests;
