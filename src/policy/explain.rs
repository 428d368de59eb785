//! `switchyard explain` for policies: which deployment would answer, and why.
//! The same decision functions as the proxy, without sockets: a template branch is
//! resolved once (blocking), a connect refusal cannot be foreseen.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use http::HeaderMap;
use serde_json::{Value, json};

use super::branch::Ask;
use super::canary::{self, BUCKETS};
use super::{Claims, Sticky};
use crate::config::Config;
use crate::config::model::Forward;

/// The policy steps for a request matched by a forwarding route. `service` is the name
/// that would answer.
pub fn explain(
    config: &Config,
    fwd: &Forward,
    headers: &HeaderMap,
    client: IpAddr,
    claims: Option<&Claims>,
) -> Value {
    let services = &config.services;
    let g = &config.policy;
    let mut steps: Vec<String> = Vec::new();
    let policy = fwd.policy.as_deref();
    let mut return_main = None;
    // The split first (as the proxy does), then the branch override.
    let (chosen, bucket) = match policy {
        None => (fwd.backends.first().map(|b| b.service), None),
        Some(p) => match canary::choose(fwd, p, g, headers, claims, false) {
            None => {
                steps.push("every backend has weight 0: 500 no_backend".into());
                (None, None)
            }
            Some(c) => {
                let svc = fwd.backends[c.backend].service;
                let name = &services[svc].name;
                match (c.reason, &p.canary) {
                    (canary::Reason::Forced, _) => {
                        steps.push(format!("force header: {name}"));
                    }
                    (canary::Reason::Random, Some(cn)) => {
                        let w = f64::from(fwd.backends[cn.canary].weight) / 100.0;
                        let why = match &p.sticky {
                            Some(Sticky::Key(k)) => format!("no {k} in the request"),
                            Some(Sticky::Cohort) => "no cohort key in the request".into(),
                            None => "not sticky".into(),
                        };
                        let main = &services[fwd.backends[cn.main].service].name;
                        steps.push(format!(
                            "canary {} at {w}%: {why}, so {w}% at random go there; {main} otherwise",
                            services[fwd.backends[cn.canary].service].name
                        ));
                        return_main = Some(fwd.backends[cn.main].service);
                    }
                    (reason, Some(cn)) => {
                        let limit = fwd.backends[cn.canary].weight;
                        let b = c.bucket.unwrap_or(0);
                        let side = if b < limit { "<" } else { ">=" };
                        steps.push(format!(
                            "canary {} at {}%: {} bucket {b} {side} {limit} of {BUCKETS} -> {name}",
                            services[fwd.backends[cn.canary].service].name,
                            f64::from(limit) / 100.0,
                            reason.as_str(),
                        ));
                    }
                    (_, None) if fwd.backends.len() == 1 => {}
                    (reason, None) => steps.push(format!(
                        "split: {} {} -> {name}",
                        reason.as_str(),
                        c.bucket.map(|b| format!("bucket {b}")).unwrap_or_default()
                    )),
                }
                (Some(return_main.unwrap_or(svc)), c.bucket)
            }
        },
    };
    let mut service = chosen.map(|s| services[s].name.clone());
    let mut branch = Value::Null;
    if let (Some(b), Some(chosen)) = (&g.branches, chosen) {
        let main = fwd
            .backends
            .get(canary::main_backend(fwd))
            .map_or(chosen, |b| b.service);
        let svc = &services[main];
        match b.ask(headers, || Some(client), claims) {
            Ask::None => {}
            Ask::Refused => steps.push(format!(
                "branch value present but the gate does not hold for client {client}: stripped, main answers"
            )),
            Ask::Invalid => {
                steps.push("branch name is not valid: 400 bad_branch".into());
                service = None;
            }
            Ask::Branch { name, .. } => {
                branch = json!(name);
                if let Some((_, eps)) = svc.branches.iter().find(|(n, _)| n == name) {
                    let eps: Vec<String> = eps.iter().map(|e| e.to_string()).collect();
                    steps.push(format!(
                        "branch {name}: hit, explicit deployment of {} ({})",
                        svc.name,
                        eps.join(", ")
                    ));
                    service = Some(format!("{}@{name}", svc.name));
                } else if let Some((host, port)) = &svc.branch_endpoint {
                    let host = host.replace("{branch}", name);
                    let addrs = resolve_blocking(&host, *port);
                    if addrs.is_empty() {
                        steps.push(format!(
                            "branch {name}: {host}:{port} does not resolve: fallback to main"
                        ));
                    } else {
                        let a: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                        steps.push(format!(
                            "branch {name}: hit, template {host}:{port} -> {} (falls back to main if it refuses connections)",
                            a.join(", ")
                        ));
                        service = Some(format!("{}@{name}", svc.name));
                    }
                } else {
                    steps.push(format!(
                        "branch {name}: {} has no such deployment: fallback to main",
                        svc.name
                    ));
                }
            }
        }
    }
    if let Some(m) = policy.and_then(|p| p.mirror.as_ref()) {
        let methods: Vec<&str> = m.methods.iter().map(|m| m.as_str()).collect();
        steps.push(format!(
            "mirror: {}% of {} to {}{}",
            f64::from(m.per_10000) / 100.0,
            methods.join("/"),
            services[m.service].name,
            if m.compare { ", answers compared" } else { "" }
        ));
    }
    json!({
        "service": service,
        "bucket": bucket,
        "branch": branch,
        "steps": steps,
    })
}

/// [`super::branch::resolve`] without a runtime.
fn resolve_blocking(host: &str, port: u16) -> Vec<SocketAddr> {
    let h = host.trim_end_matches('.');
    if h == "localhost" || h.ends_with(".localhost") {
        return vec![SocketAddr::from(([127, 0, 0, 1], port))];
    }
    if h == "invalid" || h.ends_with(".invalid") {
        return Vec::new();
    }
    (host, port)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default()
}
