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
    /// No branch value in the request.
    None,
    /// A value was present but the gate did not hold: strip it, serve main.
    Refused,
    /// A valid, admitted branch name.
    Branch(&'h str),
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

/// The `branch` member of a W3C `baggage` header.
fn baggage_branch(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all("baggage")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|member| {
            let kv = member.split(';').next()?;
            let (k, v) = kv.split_once('=')?;
            (k.trim() == "branch").then_some(v.trim())
        })
        .filter(|v| !v.is_empty())
}

impl Branches {
    /// The raw branch value of the request, if any.
    pub fn raw<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        if let Some(h) = &self.header
            && let Some(v) = headers.get(h)
        {
            // A value that is not even text is still a request for a branch: invalid.
            return Some(v.to_str().unwrap_or("\u{0}"));
        }
        if let Some(c) = &self.cookie
            && let Some(v) = super::cookie(headers, c)
        {
            return Some(v);
        }
        if self.baggage {
            return baggage_branch(headers);
        }
        None
    }

    /// Read the request's branch and apply the gate.
    pub fn ask<'h>(
        &self,
        headers: &'h HeaderMap,
        peer: IpAddr,
        claims: Option<&Claims>,
    ) -> Ask<'h> {
        let Some(raw) = self.raw(headers) else {
            return Ask::None;
        };
        let name = match &self.gate {
            Gate::Open => raw,
            Gate::Cidr(nets) => {
                if !nets.iter().any(|n| n.contains(&peer)) {
                    return Ask::Refused;
                }
                raw
            }
            Gate::Hmac(key) => match verify_signed(key, raw) {
                Some(name) => name,
                None => return Ask::Refused,
            },
            Gate::JwtClaim(claim) => {
                let allowed = claims.and_then(|c| c.get(claim)).is_some_and(|v| match v {
                    serde_json::Value::Bool(b) => *b,
                    serde_json::Value::String(s) => s == "*" || s == raw,
                    serde_json::Value::Array(a) => a.iter().any(|x| x == "*" || x == raw),
                    _ => false,
                });
                if !allowed {
                    return Ask::Refused;
                }
                raw
            }
        };
        if valid_name(name) {
            Ask::Branch(name)
        } else {
            Ask::Invalid
        }
    }

    /// Remove every trace of a refused branch value from the request.
    pub fn strip(&self, headers: &mut HeaderMap) {
        if let Some(h) = &self.header {
            headers.remove(h);
        }
        if let Some(c) = &self.cookie {
            super::remove_cookie(headers, c);
        }
        if self.baggage && baggage_branch(headers).is_some() {
            let kept: Vec<String> = headers
                .get_all("baggage")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter(|m| {
                    m.split(';')
                        .next()
                        .and_then(|kv| kv.split_once('='))
                        .is_none_or(|(k, _)| k.trim() != "branch")
                })
                .map(|m| m.trim().to_string())
                .collect();
            headers.remove("baggage");
            if !kept.is_empty()
                && let Ok(v) = http::HeaderValue::from_str(&kept.join(","))
            {
                headers.insert("baggage", v);
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

/// Most template lookups kept at once; when full, expired entries go first, then
/// everything (a flood of random names cannot grow memory).
pub const CACHE_MAX: usize = 4096;

/// Expiry and answer of one lookup.
type CacheEntry = (Instant, Option<Arc<Upstream>>);

/// Template lookups: `host:port` -> the branch upstream, or `None` (does not resolve).
#[derive(Debug, Default)]
pub struct BranchCache {
    entries: Mutex<HashMap<String, CacheEntry>>,
}

impl BranchCache {
    /// A cached answer that has not expired: `Some(None)` is a cached "no such branch".
    pub fn get(&self, key: &str) -> Option<Option<Arc<Upstream>>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, up) = entries.get(key)?;
        (Instant::now() < *expires).then(|| up.clone())
    }

    pub fn put(&self, key: String, ttl: Duration, up: Option<Arc<Upstream>>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_MAX {
            let now = Instant::now();
            entries.retain(|_, (exp, _)| *exp > now);
            if entries.len() >= CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now() + ttl, up));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Resolve a template host. Names under `localhost` are loopback without asking DNS
/// and names under `invalid` never resolve (RFC 6761 §6.3, §6.4), which also makes
/// templates testable on any machine.
pub async fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    let lower = host.trim_end_matches('.');
    if lower == "localhost" || lower.ends_with(".localhost") {
        return vec![SocketAddr::from(([127, 0, 0, 1], port))];
    }
    if lower == "invalid" || lower.ends_with(".invalid") {
        return Vec::new();
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => {
            let mut v: Vec<SocketAddr> = addrs.collect();
            v.sort();
            v.dedup();
            v
        }
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
        assert_eq!(b.ask(&h, LOCAL, None), Ask::Branch("c"));
        let h = req(&[("baggage", "k=v, branch=bg;p=1")]);
        assert_eq!(b.ask(&h, LOCAL, None), Ask::Branch("bg"));
        let h = req(&[("x-branch", "../evil"), ("cookie", "x-branch=c")]);
        assert_eq!(b.ask(&h, LOCAL, None), Ask::Invalid);
    }

    #[test]
    fn cidr_gate_refuses_outsiders() {
        let b = branches(Gate::Cidr(vec!["10.0.0.0/8".parse().unwrap()]));
        let h = req(&[("x-branch", "feat")]);
        assert_eq!(b.ask(&h, LOCAL, None), Ask::Refused);
        assert_eq!(
            b.ask(&h, "10.1.2.3".parse().unwrap(), None),
            Ask::Branch("feat")
        );
        // A refused invalid name is refused, not answered with 400: outsiders learn nothing.
        let h = req(&[("x-branch", "../evil")]);
        assert_eq!(b.ask(&h, LOCAL, None), Ask::Refused);
    }

    #[test]
    fn hmac_gate_needs_the_right_signature() {
        let key: Arc<[u8]> = Arc::from(&b"secret"[..]);
        let b = branches(Gate::Hmac(key.clone()));
        let good = format!("feat.{}", sign(&key, "feat"));
        let h = req(&[("x-branch", &good)]);
        assert_eq!(b.ask(&h, LOCAL, None), Ask::Branch("feat"));
        let bad = format!("feat.{}", sign(b"other", "feat"));
        for v in [bad.as_str(), "feat", "feat.zz", "feat."] {
            let h = req(&[("x-branch", v)]);
            assert_eq!(b.ask(&h, LOCAL, None), Ask::Refused, "{v}");
        }
    }

    #[test]
    fn jwt_claim_gate() {
        let b = branches(Gate::JwtClaim("branch_access".into()));
        let h = req(&[("x-branch", "feat")]);
        assert_eq!(b.ask(&h, LOCAL, None), Ask::Refused);
        let mut c = Claims::new();
        c.insert("branch_access".into(), serde_json::json!(["other", "feat"]));
        assert_eq!(b.ask(&h, LOCAL, Some(&c)), Ask::Branch("feat"));
        c.insert("branch_access".into(), serde_json::json!(false));
        assert_eq!(b.ask(&h, LOCAL, Some(&c)), Ask::Refused);
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
        for i in 0..CACHE_MAX * 2 {
            c.put(format!("b{i}.invalid:80"), Duration::from_secs(60), None);
        }
        assert!(c.len() <= CACHE_MAX);
    }

    #[tokio::test]
    async fn localhost_and_invalid_names_need_no_dns() {
        assert_eq!(
            resolve("feat.localhost", 81).await,
            vec![SocketAddr::from(([127, 0, 0, 1], 81))]
        );
        assert!(resolve("feat.preview.invalid", 80).await.is_empty());
    }
}
