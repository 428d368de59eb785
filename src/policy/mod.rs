//! Traffic policies: which deployment answers a request, and who else sees a copy.
//!
//! ```text
//! branch   x-branch / cookie / baggage, behind a gate -> the service's branch deployment
//!          (explicit endpoints or a DNS template), falling back to main
//! canary   weighted split; sticky by header/cookie (route-local hash) or by cohort
//!          (gateway-wide hash of the user key); forced by a header; cut by the guard
//! mirror   detached copy to a shadow service, answers compared (see `mirror`)
//! ```
//!
//! Everything here is precomputed at config build time: a route without a policy has
//! `Forward::policy == None` and pays one branch on the hot path. Runtime state (guard
//! windows, mirror slots, branch lookups) lives in the [`crate::snapshot::Snapshot`].

pub mod branch;
pub mod canary;
pub mod explain;
pub mod mirror;

use http::{HeaderMap, HeaderName};

pub use branch::{Branches, Gate};
pub use canary::{Canary, Guard};
pub use mirror::Mirror;

/// The force header's name when `[canary] force_header` is not set: stripped from
/// every request so no client can steer an upstream that reads it.
pub const FORCE_HEADER_DEFAULT: &str = "x-canary";

/// [`FORCE_HEADER_DEFAULT`] as a header name, built once.
pub static FORCE_HEADER_NAME: HeaderName = HeaderName::from_static(FORCE_HEADER_DEFAULT);

/// JWT claims of the request, when an auth policy verified a token. The pipeline passes
/// `None` until auth is wired in.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// Gateway-wide settings: `[canary]` and `[branches]`.
#[derive(Debug, Clone, Default)]
pub struct GlobalPolicy {
    /// The user key of `sticky = "cohort"` when the request has no verified `sub`.
    pub cohort_key: Option<KeySource>,
    /// `x-canary: always|never`; `None`: off (the default header is then stripped).
    pub force_header: Option<HeaderName>,
    /// Response header naming the service that answered; `None`: off.
    pub service_header: Option<HeaderName>,
    /// Topic-branch routing; `None`: off.
    pub branches: Option<Branches>,
}

/// Where a sticky key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Header(HeaderName),
    Cookie(String),
}

impl KeySource {
    /// Parse `header:NAME` / `cookie:NAME`.
    pub fn parse(s: &str) -> Option<KeySource> {
        if let Some(h) = s.strip_prefix("header:") {
            return HeaderName::from_bytes(h.as_bytes())
                .ok()
                .map(KeySource::Header);
        }
        let c = s.strip_prefix("cookie:")?;
        let ok = !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        ok.then(|| KeySource::Cookie(c.to_string()))
    }

    /// The key's value in this request, without copying.
    pub fn get<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        match self {
            KeySource::Header(h) => headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty()),
            KeySource::Cookie(name) => cookie(headers, name),
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Header(h) => write!(f, "header:{h}"),
            KeySource::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
}

/// How a split keeps a user on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// Route-local: hash of (route, key).
    Key(KeySource),
    /// Gateway-wide: hash of the user key alone (JWT `sub`, else `[canary] cohort_key`),
    /// so the same user is on the same side of every route at the same or higher weight.
    Cohort,
}

/// The policies of one forwarding route.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    /// `None`: weighted random.
    pub sticky: Option<Sticky>,
    /// Set for `canary = {…}`: which backends are canary and main, and the guard.
    pub canary: Option<Canary>,
    /// Shared with the detached shadow tasks.
    pub mirror: Option<std::sync::Arc<Mirror>>,
    /// The route's name: the salt of route-local sticky hashes.
    pub salt: String,
}

/// Trim ASCII whitespace (and nothing else) from both ends.
fn trim_bytes(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b
        && first.is_ascii_whitespace()
    {
        b = rest;
    }
    while let [rest @ .., last] = b
        && last.is_ascii_whitespace()
    {
        b = rest;
    }
    b
}

/// Every `name=value` pair of the request's `Cookie` headers, as bytes (a header that
/// is not UTF-8 is read all the same). Empty pairs are skipped; a pair without `=` has
/// an empty name.
pub fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(trim_bytes)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|b| *b == b'=') {
            Some(i) => (trim_bytes(&pair[..i]), trim_bytes(&pair[i + 1..])),
            None => (&b""[..], pair),
        })
}

/// The value of cookie `name` in the request's `Cookie` headers: the first non-empty
/// one, quotes removed. For sticky keys; the branch gate reads every pair itself.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    cookie_pairs(headers)
        .filter(|(k, _)| *k == name.as_bytes())
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .map(|v| v.trim_matches('"'))
        .find(|v| !v.is_empty())
}

/// Remove every pair named `name` (ASCII case-insensitively, whatever its value) from
/// the request's `Cookie` headers; the other pairs are kept, in order, in one header.
/// Returns whether anything was removed.
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) -> bool {
    remove_cookie_except(headers, name, None)
}

/// [`remove_cookie`], but pairs whose (unquoted) value is `keep` stay.
pub fn remove_cookie_except(headers: &mut HeaderMap, name: &str, keep: Option<&[u8]>) -> bool {
    let matches = |k: &[u8], v: &[u8]| {
        let v = match v {
            [b'"', inner @ .., b'"'] => inner,
            _ => v,
        };
        k.eq_ignore_ascii_case(name.as_bytes()) && keep.is_none_or(|keep| keep != v)
    };
    if !cookie_pairs(headers).any(|(k, v)| matches(k, v)) {
        return false;
    }
    let mut kept: Vec<u8> = Vec::new();
    for pair in headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(trim_bytes)
        .filter(|pair| !pair.is_empty())
    {
        let (key, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (trim_bytes(&pair[..i]), trim_bytes(&pair[i + 1..])),
            None => (&b""[..], pair),
        };
        if matches(key, value) {
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    headers.remove(http::header::COOKIE);
    // The pieces come from valid header values, so the join is one too.
    if !kept.is_empty()
        && let Ok(v) = http::HeaderValue::from_bytes(&kept)
    {
        headers.insert(http::header::COOKIE, v);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_and_removed_one_by_one() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; x-branch=feat; b=2".parse().unwrap());
        assert_eq!(cookie(&h, "x-branch"), Some("feat"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        assert!(remove_cookie(&mut h, "x-branch"));
        assert_eq!(h["cookie"], "a=1; b=2");
        assert!(!remove_cookie(&mut h, "x-branch"));
    }

    #[test]
    fn every_matching_cookie_is_removed_whatever_its_value_or_encoding() {
        let mut h = HeaderMap::new();
        h.append("cookie", "x-branch=; a=1".parse().unwrap());
        h.append(
            "cookie",
            http::HeaderValue::from_bytes(b"X-Branch=f\xe9at; b=\xff; x-branch=feat").unwrap(),
        );
        assert_eq!(cookie(&h, "x-branch"), Some("feat"));
        assert!(remove_cookie(&mut h, "x-branch"));
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"].as_bytes(), b"a=1; b=\xff");
    }

    #[test]
    fn key_sources_parse() {
        assert_eq!(
            KeySource::parse("header:x-user-id"),
            Some(KeySource::Header(HeaderName::from_static("x-user-id")))
        );
        assert_eq!(
            KeySource::parse("cookie:uid"),
            Some(KeySource::Cookie("uid".into()))
        );
        assert_eq!(KeySource::parse("cookie:"), None);
        assert_eq!(KeySource::parse("query:x"), None);
    }
}
