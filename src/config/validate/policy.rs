//! Validation of the traffic policies: `[canary]`, `[branches]`, a service's branch
//! deployments, and a route's `canary`, `sticky` and `mirror`.

use std::sync::Arc;

use super::*;
use crate::policy::branch::valid_name;
use crate::policy::canary::{BUCKETS, Guard};
use crate::policy::mirror::{Mirror, parse_json_path};
use crate::policy::{Branches, Canary, Gate, GlobalPolicy, KeySource, RoutePolicy, Sticky};

/// A service's explicit branch deployments and its `branch_endpoint` template.
type ServiceBranches = (Vec<(String, Vec<Endpoint>)>, Option<(String, u16)>);

impl Validator<'_> {
    /// A header name for a policy setting (SY018 when it is not one).
    fn policy_header(&mut self, v: &SStr) -> Option<HeaderName> {
        match HeaderName::from_bytes(v.get_ref().as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.err(
                    "SY018",
                    span(v),
                    format!("`{}` is not a valid header name", v.get_ref()),
                );
                None
            }
        }
    }

    fn key_source(&mut self, v: &SStr) -> Option<KeySource> {
        let k = KeySource::parse(v.get_ref());
        if k.is_none() {
            self.err(
                "SY022",
                span(v),
                format!("`{}` is not a key source", v.get_ref()),
            )
            .help = Some("write \"header:NAME\" or \"cookie:NAME\"".into());
        }
        k
    }

    /// `[canary]` and `[branches]`.
    pub(super) fn global_policy(
        &mut self,
        canary: Option<&Spanned<file::CanaryGlobalFile>>,
        branches: Option<&Spanned<file::BranchesFile>>,
    ) -> GlobalPolicy {
        let mut g = GlobalPolicy::default();
        if let Some(c) = canary {
            let c = c.get_ref();
            g.cohort_key = c.cohort_key.as_ref().and_then(|k| self.key_source(k));
            g.force_header = c.force_header.as_ref().and_then(|h| self.policy_header(h));
            g.service_header = c
                .service_header
                .as_ref()
                .and_then(|h| self.policy_header(h));
        }
        if let Some(b) = branches {
            let b = b.get_ref();
            let header = match (&b.header, &b.cookie) {
                (None, None) => Some(HeaderName::from_static("x-branch")),
                (h, _) => h.as_ref().and_then(|h| self.policy_header(h)),
            };
            let served_by = match &b.served_by_header {
                Some(v) if v.get_ref() == "off" => None,
                Some(v) => self.policy_header(v),
                None => Some(HeaderName::from_static("x-switchyard-served-by")),
            };
            let gate = self.gate(b);
            g.branches = Some(Branches {
                header,
                cookie: b.cookie.as_ref().map(|c| c.get_ref().clone()),
                baggage: b.baggage.as_ref().is_none_or(|v| *v.get_ref()),
                gate,
                served_by,
                cache_ttl: self.duration(&b.cache_ttl, Duration::from_secs(10)),
            });
        }
        g
    }

    fn gate(&mut self, b: &file::BranchesFile) -> Gate {
        let Some(g) = &b.gate else {
            if let Some(k) = &b.hmac_key_file {
                self.err(
                    "SY010",
                    span(k),
                    "`hmac_key_file` is set but `gate` is not \"hmac\"",
                );
            }
            return Gate::Open;
        };
        let text = g.get_ref().as_str();
        if let Some(list) = text.strip_prefix("cidr:") {
            let mut nets = Vec::new();
            for part in list.split(',').map(str::trim) {
                let parsed = part
                    .parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from));
                match parsed {
                    Ok(n) => nets.push(n),
                    Err(_) => {
                        self.err(
                            "SY008",
                            span(g),
                            format!("`{part}` is not an IP address or CIDR range"),
                        )
                        .help = Some("write \"cidr:10.0.0.0/8,192.0.2.7\"".into());
                    }
                }
            }
            return Gate::Cidr(nets);
        }
        if let Some(claim) = text.strip_prefix("jwt-claim:") {
            if claim.is_empty() {
                self.err("SY022", span(g), "`jwt-claim:` needs a claim name");
            }
            return Gate::JwtClaim(claim.to_string());
        }
        if text == "hmac" {
            let Some(path) = &b.hmac_key_file else {
                self.err("SY011", span(g), "`gate = \"hmac\"` needs `hmac_key_file`")
                    .help = Some("add hmac_key_file = \"/etc/switchyard/branch.key\"".into());
                return Gate::Open;
            };
            return match std::fs::read(path.get_ref()) {
                Ok(mut key) => {
                    // Part of the table's hash, as the key files read through
                    // `read_file` are: a reload after the key is rotated takes the new
                    // key. (Unlike theirs, this path is read as written, relative to
                    // the working directory: docs/policies.md.)
                    self.files.push(key.clone());
                    while key.last().is_some_and(|b| b.is_ascii_whitespace()) {
                        key.pop();
                    }
                    if key.len() < 16 {
                        self.err(
                            "SY025",
                            span(path),
                            format!("the key in `{}` is shorter than 16 bytes", path.get_ref()),
                        );
                    }
                    Gate::Hmac(Arc::from(key))
                }
                Err(e) => {
                    self.err(
                        "SY025",
                        span(path),
                        format!("cannot read the HMAC key `{}`: {e}", path.get_ref()),
                    );
                    Gate::Open
                }
            };
        }
        self.err("SY022", span(g), format!("unknown gate `{text}`"))
            .help = Some(
            "use \"cidr:10.0.0.0/8,…\", \"hmac\" (with hmac_key_file) or \"jwt-claim:NAME\"".into(),
        );
        Gate::Open
    }

    /// `[services.X.branches]` and `branch_endpoint`.
    pub(super) fn service_branches(&mut self, s: &file::ServiceFile) -> ServiceBranches {
        let mut branches = Vec::new();
        for (name, eps) in s.branches.iter().flatten() {
            if !valid_name(name.get_ref()) {
                self.err(
                    "SY022",
                    span(name),
                    format!("branch name `{}` is not valid", name.get_ref()),
                )
                .help = Some("branch names match ^[a-z0-9][a-z0-9-]{0,62}$".into());
                continue;
            }
            if eps.get_ref().is_empty() {
                self.err(
                    "SY011",
                    span(eps),
                    format!("branch `{}` has no endpoints", name.get_ref()),
                );
            }
            let mut out = Vec::new();
            for ep in eps.get_ref() {
                match parse_endpoint(ep.get_ref()) {
                    Ok(e) => out.push(e),
                    Err(msg) => {
                        self.err("SY008", span(ep), msg);
                    }
                }
            }
            branches.push((name.get_ref().clone(), out));
        }
        let template = s.branch_endpoint.as_ref().and_then(|t| {
            let text = t.get_ref();
            if text.matches("{branch}").count() != 1 {
                self.err(
                    "SY022",
                    span(t),
                    format!("`branch_endpoint` `{text}` must contain `{{branch}}` once"),
                )
                .help = Some("write \"users-{branch}.preview.svc.cluster.local:80\"".into());
                return None;
            }
            match parse_endpoint(&text.replace("{branch}", "x")) {
                Ok(e) if e.addr.is_none() => {
                    let (host, _) = text.rsplit_once(':')?;
                    Some((host.to_string(), e.port))
                }
                Ok(_) => {
                    self.err(
                        "SY022",
                        span(t),
                        "`branch_endpoint` must be a DNS name with `{branch}` in it",
                    );
                    None
                }
                Err(msg) => {
                    self.err("SY008", span(t), msg).help =
                        Some("write HOST:PORT with {branch} in the host".into());
                    None
                }
            }
        });
        (branches, template)
    }

    /// A route's `canary`, `sticky` and `mirror`. Adds the canary to `backends`.
    pub(super) fn route_policy(
        &mut self,
        r: &file::RouteFile,
        backends: &mut Vec<Backend>,
        services: &HashMap<&str, usize>,
    ) -> Option<Box<RoutePolicy>> {
        if r.canary.is_none() && r.sticky.is_none() && r.mirror.is_none() {
            return None;
        }
        let mut sticky = None;
        let mut canary = None;
        if let Some(st) = &r.sticky {
            if r.split.is_none() {
                self.err("SY010", span(st), "`sticky` applies to a `split`")
                    .help = Some("for a canary, write canary = { …, sticky = \"…\" }".into());
            }
            sticky = self.sticky(st);
        }
        if let Some(c) = &r.canary {
            let cs = c.span();
            let c = c.get_ref();
            if r.split.is_some() {
                self.err(
                    "SY010",
                    Some(cs.clone()),
                    "a route has either `split` or `canary`, not both",
                )
                .help = Some("add the canary to the split, or use service + canary".into());
            }
            let weight = *c.weight.get_ref();
            let buckets = (weight * 100.0).round();
            if !(0.0..=100.0).contains(&weight) || !weight.is_finite() {
                self.err(
                    "SY007",
                    span(&c.weight),
                    format!("canary weight {weight} is out of range: must be 0 to 100 (percent)"),
                );
            } else if (buckets - weight * 100.0).abs() > 1e-6 {
                self.err(
                    "SY007",
                    span(&c.weight),
                    format!("canary weight {weight} has more than two decimals"),
                );
            }
            let service = self.service_ref(&c.service, services);
            if let (Some(svc), [main]) = (service, backends.as_slice())
                && svc == main.service
            {
                self.err(
                    "SY010",
                    span(&c.service),
                    "the canary is the route's own service",
                );
            }
            if let Some(st) = &c.sticky {
                sticky = self.sticky(st);
            }
            let guard = c.guard.as_ref().map(|g| self.guard(g));
            if let (Some(service), [main]) = (service, backends.as_slice()) {
                let w = (buckets as u32).min(BUCKETS);
                let main = main.service;
                *backends = vec![
                    Backend { service, weight: w },
                    Backend {
                        service: main,
                        weight: BUCKETS - w,
                    },
                ];
                canary = Some(Canary {
                    canary: 0,
                    main: 1,
                    guard,
                });
            }
        }
        let mirror = r
            .mirror
            .as_ref()
            .and_then(|m| self.mirror(m, backends, services))
            .map(Arc::new);
        Some(Box::new(RoutePolicy {
            sticky,
            canary,
            mirror,
            salt: r.name.get_ref().clone(),
        }))
    }

    fn sticky(&mut self, st: &SStr) -> Option<Sticky> {
        if st.get_ref() == "cohort" {
            return Some(Sticky::Cohort);
        }
        match KeySource::parse(st.get_ref()) {
            Some(k) => Some(Sticky::Key(k)),
            None => {
                self.err(
                    "SY022",
                    span(st),
                    format!("`{}` is not a sticky key", st.get_ref()),
                )
                .help = Some("write \"header:NAME\", \"cookie:NAME\" or \"cohort\"".into());
                None
            }
        }
    }

    fn guard(&mut self, g: &Spanned<file::GuardFile>) -> Guard {
        let g = g.get_ref();
        let ratio = *g.max_error_ratio.get_ref();
        if !(1.0..=1000.0).contains(&ratio) {
            self.err(
                "SY007",
                span(&g.max_error_ratio),
                format!("max_error_ratio {ratio} is out of range: must be 1 to 1000"),
            )
            .help = Some("2.0 cuts a canary that fails twice as often as main".into());
        }
        Guard {
            max_error_ratio: ratio,
            min_requests: self.count(&g.min_requests, 100, 1, 1_000_000) as u32,
            window: self.duration(&g.window, Duration::from_secs(60)),
        }
    }

    fn mirror(
        &mut self,
        m: &Spanned<file::MirrorFile>,
        backends: &[Backend],
        services: &HashMap<&str, usize>,
    ) -> Option<Mirror> {
        let m = m.get_ref();
        let service = self.service_ref(&m.service, services)?;
        if backends.iter().any(|b| b.service == service) {
            self.err(
                "SY010",
                span(&m.service),
                format!(
                    "route mirrors to `{}`, which already serves it",
                    m.service.get_ref()
                ),
            );
        }
        let percent = m.percent.as_ref().map_or(100.0, |p| *p.get_ref());
        if !(0.0..=100.0).contains(&percent) || !percent.is_finite() {
            self.err(
                "SY007",
                m.percent.as_ref().and_then(span),
                format!("mirror percent {percent} is out of range: must be 0 to 100"),
            );
        }
        let mut ignore_headers = Vec::new();
        let mut ignore_paths = Vec::new();
        for i in m.ignore.iter().flatten() {
            let t = i.get_ref();
            if t.starts_with('$') {
                match parse_json_path(t) {
                    Some(p) => ignore_paths.push(p),
                    None => {
                        self.err("SY022", span(i), format!("`{t}` is not a JSON path"))
                            .help = Some(
                            "write \"$.generated_at\", \"$.items[0].id\" or \"$.items[*].id\""
                                .into(),
                        );
                    }
                }
            } else if let Some(h) = self.policy_header(i) {
                ignore_headers.push(h);
            }
        }
        let headers = m
            .headers
            .iter()
            .flatten()
            .filter_map(|h| self.policy_header(h))
            .collect();
        let methods = match &m.methods {
            None => vec![Method::GET, Method::HEAD],
            Some(list) => list
                .iter()
                .filter_map(|v| match Method::from_bytes(v.get_ref().as_bytes()) {
                    Ok(m) if v.get_ref().bytes().all(|b| b.is_ascii_uppercase()) => Some(m),
                    _ => {
                        self.err(
                            "SY019",
                            span(v),
                            format!("unknown method `{}`", v.get_ref()),
                        );
                        None
                    }
                })
                .collect(),
        };
        let max_compare_body = m
            .max_compare_body
            .as_ref()
            .and_then(|v| self.size(v))
            .unwrap_or(1 << 20)
            .min(64 << 20) as usize;
        Some(Mirror {
            service,
            per_10000: (percent.clamp(0.0, 100.0) * 100.0).round() as u32,
            compare: m.compare.as_ref().is_some_and(|c| *c.get_ref()),
            ignore_headers,
            ignore_paths,
            headers,
            methods,
            max_in_flight: self.count(&m.max_in_flight, 64, 1, 100_000),
            max_compare_body,
        })
    }

    /// Warnings about policies that work, but probably not as meant.
    pub(super) fn policy_lints(
        &mut self,
        branches: Option<&Spanned<file::BranchesFile>>,
        routes: &[Route],
        g: &GlobalPolicy,
    ) {
        if let (Some(b), Some(file)) = (&g.branches, branches)
            && matches!(b.gate, Gate::Open)
            && file.get_ref().gate.is_none()
        {
            self.errors.push(
                ConfigError::warning(
                    "SY024",
                    Some(file.span()),
                    "branches are open to everyone: any client can reach branch deployments",
                )
                .help("add gate = \"cidr:10.0.0.0/8\", \"hmac\" or \"jwt-claim:NAME\""),
            );
        }
        if g.cohort_key.is_none() {
            for r in routes {
                let cohort = r
                    .forward()
                    .and_then(|f| f.policy.as_ref())
                    .is_some_and(|p| p.sticky == Some(Sticky::Cohort));
                if cohort {
                    self.errors.push(
                        ConfigError::warning(
                            "SY023",
                            Some(r.span.clone()),
                            format!(
                                "route `{}` is sticky by cohort but [canary] has no `cohort_key`: only requests with a verified token stick",
                                r.name
                            ),
                        )
                        .help("add [canary] cohort_key = \"header:x-user-id\""),
                    );
                }
            }
        }
    }
}
