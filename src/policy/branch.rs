//! Topic-branch routing: `x-branch: feature-login` sends a request to the
//! `feature-login` deployment of the route's service, when it has one.
//!
//! Order of checks, each cheap and none of them touching DNS before the name is known
//! to be safe:
//! 1. read the value (header, else cookie, else `baggage: branch=…`);
//! 2. the gate (CIDR of the client, HMAC-signed value, or a JWT claim): when it does
//!    not hold, the value is stripped from the request and main answers;
//! 3. the name must match `^[a-z0-9][a-z0-9-]{0,62}$`, else 400 (no SSRF through the
//!    header: only a DNS label ever reaches the template);
//! 4. the service's deployment of that branch: explicit endpoints, or the
//!    `branch_endpoint` template looked up through a short-TTL cache that also keeps
//!    negative answers (bounded size), so a header cannot make every request hit DNS.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

use super::Claims;
use crate::upstream::Upstream;

/// `[branches]`.
#[derive(Debug, Clone)]
pub struct Branches {
    pub header: Option<HeaderName>,
    pub cookie: Option<String>,
    /// Also read `baggage: branch=NAME`.
    pub baggage: bool,
    pub gate: Gate,
    /// `x-switchyard-served-by: users@feature-login`; `None`: off.
    pub served_by: Option<HeaderName>,
    /// Lifetime of a template lookup, found or not.
    pub cache_ttl: Duration,
}

/// Who may pick a branch.
#[derive(Clone)]
pub enum Gate {
    /// Everyone (`check` warns: SY026).
    Open,
    /// Clients whose address is in one of these ranges.
    Cidr(Vec<IpNet>),
    /// Values signed as `NAME.HEXSIG`, `HEXSIG = hex(HMAC-SHA256(key, NAME))`.
    Hmac(Arc<[u8]>),
    /// A verified JWT whose claim is `true`, `"*"`, the branch name, or a list with it.
    JwtClaim(String),
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gate::Open => f.write_str("Open"),
            Gate::Cidr(n) => f.debug_tuple("Cidr").field(n).finish(),
            Gate::Hmac(_) => f.write_str("Hmac(<key>)"),
            Gate::JwtClaim(c) => f.debug_tuple("JwtClaim").field(c).finish(),
        }
    }
}

/// The request asked for a branch; what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask<'h> {
    /// No branch value in the request (or, admitted, only empty ones).
    None,
    /// A value was present but the gate did not hold: strip every one, serve main.
    Refused,
    /// A valid, admitted branch name.
    Branch {
        name: &'h str,
        /// The value as sent (`NAME.SIG` under the HMAC gate).
        raw: &'h [u8],
        /// The request also carries other (different or empty) branch values: remove
        /// them ([`Branches::strip_except`]) so that the upstream sees one branch.
        mixed: bool,
    },
    /// Admitted but not a valid name: 400.
    Invalid,
}

/// `^[a-z0-9][a-z0-9-]{0,62}$`.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// The baggage key that names a branch.
const BAGGAGE_KEY: &[u8] = b"branch";

/// Every `key=value` member of the request's W3C `baggage` headers, as bytes
/// (properties after `;` dropped, whitespace trimmed).
fn baggage_members(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all("baggage")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|member| {
            let kv = member.split(|b| *b == b';').next()?;
            let i = kv.iter().position(|b| *b == b'=')?;
            Some((trim(&kv[..i]), trim(&kv[i + 1..])))
        })
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

fn unquote(b: &[u8]) -> &[u8] {
    match b {
        [b'"', inner @ .., b'"'] => inner,
        _ => b,
    }
}

/// What a request carries in the way of branch values, in every place the gateway
/// reads one: each value of the branch header, each cookie pair of that name, each
/// `branch` baggage member.
struct Found<'h> {
    /// The first non-empty value, in the order header, cookie, baggage.
    first: Option<&'h [u8]>,
    /// Some value differs from `first` (an empty one included).
    mixed: bool,
}

impl Branches {
    /// Every branch value of the request, in the order they count.
    fn values<'h>(&self, headers: &'h HeaderMap) -> impl Iterator<Item = &'h [u8]> {
        let header = self
            .header
            .iter()
            .flat_map(move |h| headers.get_all(h).iter().map(|v| v.as_bytes()));
        let cookie = self.cookie.iter().flat_map(move |c| {
            super::cookie_pairs(headers)
                .filter(move |(k, _)| k.eq_ignore_ascii_case(c.as_bytes()))
                .map(|(_, v)| unquote(v))
        });
        let baggage = baggage_members(headers)
            .filter(move |(k, _)| self.baggage && k.eq_ignore_ascii_case(BAGGAGE_KEY))
            .map(|(_, v)| v);
        header.chain(cookie).chain(baggage)
    }

    /// `None` when the request carries no branch value at all, empty ones included.
    fn scan<'h>(&self, headers: &'h HeaderMap) -> Option<Found<'h>> {
        let mut any = false;
        let mut first: Option<&[u8]> = None;
        let mut empty = false;
        let mut mixed = false;
        for v in self.values(headers) {
            any = true;
            match first {
                _ if v.is_empty() => empty = true,
                None => first = Some(v),
                Some(f) => mixed |= f != v,
            }
        }
        any.then_some(Found {
            first,
            mixed: mixed || (empty && first.is_some()),
        })
    }

    /// The raw branch value of the request that counts (header, else cookie, else
    /// baggage; the first non-empty one), if any.
    pub fn raw<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        self.values(headers).find(|v| !v.is_empty())
    }

    /// Read the request's branch and apply the gate. A branch counts as asked for
    /// when any header value, cookie pair or baggage member has its name, whatever the
    /// value (empty, repeated, not UTF-8): an outsider's request is then `Refused` and
    /// must be stripped whole. `client` is the client's address (after trusted
    /// proxies), asked only by the CIDR gate; `None` (unknown) is outside every range.
    pub fn ask<'h>(
        &self,
        headers: &'h HeaderMap,
        client: impl FnOnce() -> Option<IpAddr>,
        claims: Option<&Claims>,
    ) -> Ask<'h> {
        let Some(found) = self.scan(headers) else {
            return Ask::None;
        };
        // A value that is not even text is still a request for a branch: invalid.
        let raw = found.first;
        let text = raw.map(|r| std::str::from_utf8(r).unwrap_or("\u{0}"));
        let name = match &self.gate {
            Gate::Open => text,
            Gate::Cidr(nets) => {
                let inside = client().is_some_and(|ip| {
                    let ip = ip.to_canonical();
                    nets.iter().any(|n| n.contains(&ip))
                });
                if !inside {
                    return Ask::Refused;
                }
                text
            }
            Gate::Hmac(key) => match text.and_then(|t| verify_signed(key, t)) {
                Some(name) => Some(name),
                None => return Ask::Refused,
            },
            Gate::JwtClaim(claim) => {
                let want = text.unwrap_or("");
                let allowed = claims.and_then(|c| c.get(claim)).is_some_and(|v| match v {
                    serde_json::Value::Bool(b) => *b,
                    serde_json::Value::String(s) => s == "*" || s == want,
                    serde_json::Value::Array(a) => a.iter().any(|x| x == "*" || x == want),
                    _ => false,
                });
                if !allowed {
                    return Ask::Refused;
                }
                text
            }
        };
        match (name, raw) {
            (Some(name), Some(raw)) if valid_name(name) => Ask::Branch {
                name,
                raw,
                mixed: found.mixed,
            },
            (Some(_), _) => Ask::Invalid,
            // Admitted, and only empty values: no branch.
            (None, _) => Ask::None,
        }
    }

    /// Remove every trace of a refused branch value from the request: every branch
    /// header, every cookie pair of that name, every `branch` baggage member.
    pub fn strip(&self, headers: &mut HeaderMap) {
        self.strip_except(headers, None);
    }

    /// Remove every branch value other than `keep` (all of them when `None`). Each
    /// place is cleaned on its own: none of them is skipped because another had none.
    pub fn strip_except(&self, headers: &mut HeaderMap, keep: Option<&[u8]>) {
        if let Some(h) = &self.header {
            let kept: Vec<http::HeaderValue> = match keep {
                Some(k) => headers
                    .get_all(h)
                    .iter()
                    .filter(|v| v.as_bytes() == k)
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            headers.remove(h);
            for v in kept {
                headers.append(h.clone(), v);
            }
        }
        if let Some(c) = &self.cookie {
            super::remove_cookie_except(headers, c, keep);
        }
        if self.baggage {
            let drop = |k: &[u8], v: &[u8]| {
                k.eq_ignore_ascii_case(BAGGAGE_KEY) && keep.is_none_or(|keep| keep != v)
            };
            if baggage_members(headers).any(|(k, v)| drop(k, v)) {
                let mut kept: Vec<u8> = Vec::new();
                for member in headers
                    .get_all("baggage")
                    .iter()
                    .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                {
                    let kv = member.split(|b| *b == b';').next().unwrap_or(member);
                    let gone = kv
                        .iter()
                        .position(|b| *b == b'=')
                        .is_some_and(|i| drop(trim(&kv[..i]), trim(&kv[i + 1..])));
                    let member = trim(member);
                    if gone || member.is_empty() {
                        continue;
                    }
                    if !kept.is_empty() {
                        kept.push(b',');
                    }
                    kept.extend_from_slice(member);
                }
                headers.remove("baggage");
                if !kept.is_empty()
                    && let Ok(v) = http::HeaderValue::from_bytes(&kept)
                {
                    headers.insert("baggage", v);
                }
            }
        }
    }
}

/// `NAME.HEXSIG` with a valid signature -> `NAME`.
pub fn verify_signed<'a>(key: &[u8], value: &'a str) -> Option<&'a str> {
    let (name, sig) = value.rsplit_once('.')?;
    let sig = hex_decode(sig)?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).ok()?;
    mac.update(name.as_bytes());
    mac.verify_slice(&sig).ok()?;
    Some(name)
}

/// The signature of a branch name, as testers' tooling computes it.
pub fn sign(key: &[u8], name: &str) -> String {
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(name.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

// === impl BranchCache ===

/// Most template lookups kept at once; when full, expired entries go first, then the
/// oldest sixteenth (a flood of random names cannot grow memory, and the names in use
/// stay).
pub const CACHE_MAX: usize = 4096;

/// Most DNS lookups of branch templates in flight at once, gateway-wide (per snapshot):
/// beyond that a new name is a miss (main answers), not cached.
pub const LOOKUPS_MAX: usize = 32;

/// One name's lookup: pending until the first caller's lookup is done, then its
/// expiry and answer. Concurrent misses for one name share the one lookup.
type Cell = Arc<tokio::sync::OnceCell<(Instant, Option<Arc<Upstream>>)>>;

/// Template lookups: `host:port` -> the branch upstream (resolved once, so a hit does
/// no registry or DNS work), or `None` (does not resolve).
#[derive(Debug)]
pub struct BranchCache {
    entries: Mutex<HashMap<String, Cell>>,
    lookups: Arc<tokio::sync::Semaphore>,
}

impl Default for BranchCache {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            lookups: Arc::new(tokio::sync::Semaphore::new(LOOKUPS_MAX)),
        }
    }
}

impl BranchCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cell>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A cached answer that has not expired: `Some(None)` is a cached "no such branch".
    pub fn get(&self, key: &str) -> Option<Option<Arc<Upstream>>> {
        let entries = self.lock();
        let (expires, up) = entries.get(key)?.get()?;
        (Instant::now() < *expires).then(|| up.clone())
    }

    /// The cached answer for `key`, else `resolve`'s, cached for `ttl`. Concurrent
    /// misses for one key wait for one `resolve`; when [`LOOKUPS_MAX`] lookups are
    /// already running, a new key is a miss and nothing is cached.
    pub async fn get_or_resolve<F, Fut>(
        &self,
        key: &str,
        ttl: Duration,
        resolve: F,
    ) -> Option<Arc<Upstream>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<Arc<Upstream>>>,
    {
        let (cell, permit) = {
            let mut entries = self.lock();
            match entries.get(key).map(|c| (c.get(), c)) {
                Some((Some((expires, up)), _)) if Instant::now() < *expires => return up.clone(),
                // Pending: join the lookup that is running.
                Some((None, cell)) => (cell.clone(), None),
                // Absent or expired: a new lookup, if there is room for one.
                _ => {
                    let permit = self.lookups.clone().try_acquire_owned().ok()?;
                    if entries.len() >= CACHE_MAX {
                        evict(&mut entries);
                    }
                    let cell = Cell::default();
                    entries.insert(key.to_string(), cell.clone());
                    (cell, Some(permit))
                }
            }
        };
        let (_, up) = cell
            .get_or_init(|| async move {
                let _permit = permit;
                let up = resolve().await;
                (Instant::now() + ttl, up)
            })
            .await;
        up.clone()
    }

    /// Cache an answer (tests, and callers that resolved on their own).
    pub fn put(&self, key: String, ttl: Duration, up: Option<Arc<Upstream>>) {
        let mut entries = self.lock();
        if entries.len() >= CACHE_MAX {
            evict(&mut entries);
        }
        let cell = Cell::default();
        let _ = cell.set((Instant::now() + ttl, up));
        entries.insert(key, cell);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Make room: drop expired answers; when that is not enough, the oldest sixteenth
/// (by expiry). Pending lookups stay.
fn evict(entries: &mut HashMap<String, Cell>) {
    let now = Instant::now();
    entries.retain(|_, c| c.get().is_none_or(|(exp, _)| *exp > now));
    if entries.len() < CACHE_MAX {
        return;
    }
    let mut ready: Vec<(Instant, String)> = entries
        .iter()
        .filter_map(|(k, c)| c.get().map(|(exp, _)| (*exp, k.clone())))
        .collect();
    let n = (CACHE_MAX / 16).min(ready.len());
    if n == 0 {
        return;
    }
    ready.select_nth_unstable(n - 1);
    for (_, k) in &ready[..n] {
        entries.remove(k);
    }
}

/// Resolve a template host, within `timeout` (a lookup that takes longer is "does not
/// resolve"). Names under `localhost` are loopback without asking DNS and names under
/// `invalid` never resolve (RFC 6761 §6.3, §6.4), which also makes templates testable
/// on any machine.
pub async fn resolve(host: &str, port: u16, timeout: Duration) -> Vec<SocketAddr> {
    let lower = host.trim_end_matches('.');
    if lower == "localhost" || lower.ends_with(".localhost") {
        return vec![SocketAddr::from(([127, 0, 0, 1], port))];
    }
    if lower == "invalid" || lower.ends_with(".invalid") {
        return Vec::new();
    }
    let mut v = tokio::time::timeout(timeout, lookup_host(host, port))
        .await
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

/// The one DNS call of branch templates: the gateway's asynchronous resolver (no
/// blocking thread per lookup; see [`crate::upstream::dns`]).
async fn lookup_host(host: &str, port: u16) -> Vec<SocketAddr> {
    match crate::upstream::dns::Dns::system().lookup(host, port).await {
        Ok(answer) => answer.addrs,
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branches(gate: Gate) -> Branches {
        Branches {
            header: Some(HeaderName::from_static("x-branch")),
            cookie: Some("x-branch".into()),
            baggage: true,
            gate,
            served_by: None,
            cache_ttl: Duration::from_secs(10),
        }
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn ask<'h>(b: &Branches, h: &'h HeaderMap, client: IpAddr, c: Option<&Claims>) -> Ask<'h> {
        b.ask(h, || Some(client), c)
    }

    /// An admitted branch with no other value beside it.
    fn hit(name: &str) -> Ask<'_> {
        Ask::Branch {
            name,
            raw: name.as_bytes(),
            mixed: false,
        }
    }

    #[test]
    fn names_are_dns_labels_only() {
        for ok in ["feature-login", "a", "0abc", &"a".repeat(63)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "a.b.c",
            "../evil",
            "a/b",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn header_then_cookie_then_baggage() {
        let b = branches(Gate::Open);
        let h = req(&[("cookie", "x-branch=c"), ("baggage", "k=v, branch=bg;p=1")]);
        assert_eq!(
            ask(&b, &h, LOCAL, None),
            Ask::Branch {
                name: "c",
                raw: b"c",
                mixed: true
            }
        );
        let h = req(&[("baggage", "k=v, branch=bg;p=1")]);
        assert_eq!(ask(&b, &h, LOCAL, None), hit("bg"));
        let h = req(&[("x-branch", "../evil"), ("cookie", "x-branch=c")]);
        assert_eq!(ask(&b, &h, LOCAL, None), Ask::Invalid);
    }

    #[test]
    fn cidr_gate_refuses_outsiders() {
        let b = branches(Gate::Cidr(vec!["10.0.0.0/8".parse().unwrap()]));
        let h = req(&[("x-branch", "feat")]);
        assert_eq!(ask(&b, &h, LOCAL, None), Ask::Refused);
        assert_eq!(ask(&b, &h, "10.1.2.3".parse().unwrap(), None), hit("feat"));
        // A refused invalid name is refused, not answered with 400: outsiders learn nothing.
        let h = req(&[("x-branch", "../evil")]);
        assert_eq!(ask(&b, &h, LOCAL, None), Ask::Refused);
    }

    #[test]
    fn hmac_gate_needs_the_right_signature() {
        let key: Arc<[u8]> = Arc::from(&b"secret"[..]);
        let b = branches(Gate::Hmac(key.clone()));
        let good = format!("feat.{}", sign(&key, "feat"));
        let h = req(&[("x-branch", &good)]);
        assert_eq!(
            ask(&b, &h, LOCAL, None),
            Ask::Branch {
                name: "feat",
                raw: good.as_bytes(),
                mixed: false
            }
        );
        let bad = format!("feat.{}", sign(b"other", "feat"));
        for v in [bad.as_str(), "feat", "feat.zz", "feat."] {
            let h = req(&[("x-branch", v)]);
            assert_eq!(ask(&b, &h, LOCAL, None), Ask::Refused, "{v}");
        }
    }

    #[test]
    fn jwt_claim_gate() {
        let b = branches(Gate::JwtClaim("branch_access".into()));
        let h = req(&[("x-branch", "feat")]);
        assert_eq!(ask(&b, &h, LOCAL, None), Ask::Refused);
        let mut c = Claims::new();
        c.insert("branch_access".into(), serde_json::json!(["other", "feat"]));
        assert_eq!(ask(&b, &h, LOCAL, Some(&c)), hit("feat"));
        c.insert("branch_access".into(), serde_json::json!(false));
        assert_eq!(ask(&b, &h, LOCAL, Some(&c)), Ask::Refused);
    }

    #[test]
    fn strip_removes_header_cookie_and_baggage_member() {
        let b = branches(Gate::Open);
        let mut h = req(&[
            ("x-branch", "feat"),
            ("cookie", "a=1; x-branch=feat"),
            ("baggage", "k=v,branch=feat"),
        ]);
        b.strip(&mut h);
        assert!(h.get("x-branch").is_none());
        assert_eq!(h["cookie"], "a=1");
        assert_eq!(h["baggage"], "k=v");
    }

    /// Empty, repeated and non-UTF-8 values count as asking for a branch: an outsider's
    /// request is refused and stripped of every one of them.
    #[test]
    fn any_branch_value_is_an_ask_and_strip_removes_them_all() {
        let b = branches(Gate::Cidr(vec!["10.0.0.0/8".parse().unwrap()]));
        let mut h = HeaderMap::new();
        h.append("x-branch", "".parse().unwrap());
        h.append("x-branch", "feat".parse().unwrap());
        h.append("cookie", "x-branch=; a=1; x-branch=feat".parse().unwrap());
        h.append(
            "cookie",
            http::HeaderValue::from_bytes(b"b=\xff; X-Branch=\"feat\"").unwrap(),
        );
        h.append("baggage", "branch=,k=v".parse().unwrap());
        h.append("baggage", "branch=feat;p=1, m=n".parse().unwrap());
        for one in [
            req(&[("cookie", "x-branch=; x-branch=feat")]),
            req(&[("baggage", "branch=,branch=feat")]),
            req(&[("x-branch", "")]),
            h.clone(),
        ] {
            assert_eq!(ask(&b, &one, LOCAL, None), Ask::Refused, "{one:?}");
        }
        // An unknown client is outside every range.
        assert_eq!(b.ask(&h, || None, None), Ask::Refused);
        b.strip(&mut h);
        assert!(h.get("x-branch").is_none());
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"].as_bytes(), b"a=1; b=\xff");
        assert_eq!(h["baggage"], "k=v,m=n");
        assert_eq!(b.raw(&h), None);
        // A refused request without a header still loses its cookie and baggage.
        let mut h = req(&[("cookie", "x-branch=feat"), ("baggage", "branch=feat")]);
        b.strip(&mut h);
        assert!(
            h.get("cookie").is_none() && h.get("baggage").is_none(),
            "{h:?}"
        );
    }

    /// Admitted: the value that counts is kept, others beside it are removed; only
    /// empty values mean no branch; a non-UTF-8 value is a bad name.
    #[test]
    fn admitted_requests_keep_one_branch_value() {
        let b = branches(Gate::Open);
        let mut h = req(&[
            ("x-branch", "feat"),
            ("cookie", "x-branch=old; a=1"),
            ("baggage", "branch=feat,branch="),
        ]);
        let Ask::Branch { name, raw, mixed } = ask(&b, &h, LOCAL, None) else {
            panic!("not admitted")
        };
        assert_eq!((name, mixed), ("feat", true));
        let raw = raw.to_vec();
        b.strip_except(&mut h, Some(&raw));
        assert_eq!(h["x-branch"], "feat");
        assert_eq!(h["cookie"], "a=1");
        assert_eq!(h["baggage"], "branch=feat");
        let h = req(&[("cookie", "x-branch=")]);
        assert_eq!(ask(&b, &h, LOCAL, None), Ask::None);
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            http::HeaderValue::from_bytes(b"x-branch=f\xe9at").unwrap(),
        );
        assert_eq!(ask(&b, &h, LOCAL, None), Ask::Invalid);
    }

    /// The openssl line of docs/policies.md computes the same signature.
    #[test]
    fn signature_is_hex_hmac_sha256() {
        assert_eq!(
            sign(b"abcdefghijklmnopq", "feature-login"),
            "52a831debceafce9ac18cc196df407f1c80756db20b9a2c6cf4786bb0476504b"
        );
    }

    #[test]
    fn branch_cache_keeps_negative_answers_and_stays_bounded() {
        let c = BranchCache::default();
        c.put("nope.invalid:80".into(), Duration::from_secs(60), None);
        assert_eq!(c.get("nope.invalid:80").map(|u| u.is_none()), Some(true));
        assert!(c.get("other:80").is_none());
        c.put("gone:80".into(), Duration::ZERO, None);
        assert!(
            c.get("gone:80").is_none(),
            "expired entries are not answers"
        );
        c.put("keep:80".into(), Duration::from_secs(3600), None);
        for i in 0..CACHE_MAX * 2 {
            c.put(format!("b{i}.invalid:80"), Duration::from_secs(60), None);
        }
        assert!(c.len() <= CACHE_MAX);
        assert!(c.len() > CACHE_MAX / 2, "evicting keeps most entries");
        assert!(c.get("keep:80").is_some(), "the oldest go first");
    }

    /// Concurrent misses for one name share one lookup; when every lookup slot is
    /// taken, a new name is a miss that is not cached.
    #[tokio::test]
    async fn lookups_are_single_flight_and_bounded() {
        let c = Arc::new(BranchCache::default());
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (c, calls, gate) = (c.clone(), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_resolve("a:80", Duration::from_secs(60), || async move {
                    calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = gate.acquire().await;
                    None
                })
                .await
            }));
        }
        // Hold the other slots with lookups that wait.
        let hold = Arc::new(tokio::sync::Semaphore::new(0));
        for i in 1..LOOKUPS_MAX {
            let (c, hold) = (c.clone(), hold.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_resolve(
                    &format!("h{i}:80"),
                    Duration::from_secs(60),
                    || async move {
                        let _ = hold.acquire().await;
                        None
                    },
                )
                .await
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.lookups.available_permits() > 0
            || calls.load(std::sync::atomic::Ordering::SeqCst) == 0
        {
            assert!(Instant::now() < deadline, "lookups never started");
            tokio::task::yield_now().await;
        }
        let full = c
            .get_or_resolve("new:80", Duration::from_secs(60), || async {
                panic!("no slot: no lookup")
            })
            .await;
        assert!(full.is_none());
        assert!(
            c.get("new:80").is_none(),
            "a miss for lack of a slot is not cached"
        );
        gate.add_permits(1000);
        hold.add_permits(1000);
        for t in tasks {
            assert!(t.await.unwrap().is_none());
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(c.get("a:80").map(|u| u.is_none()), Some(true));
    }

    #[tokio::test]
    async fn localhost_and_invalid_names_need_no_dns() {
        assert_eq!(
            resolve("feat.localhost", 81, Duration::from_secs(1)).await,
            vec![SocketAddr::from(([127, 0, 0, 1], 81))]
        );
        assert!(
            resolve("feat.preview.invalid", 80, Duration::from_secs(1))
                .await
                .is_empty()
        );
    }
}
