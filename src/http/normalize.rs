//! Canonical form of the request path and host, computed once before routing.
//!
//! The gateway routes on the normalised path and forwards that same path, so a trick
//! that makes the router and the upstream disagree about which resource is meant
//! (`/public/..%2fadmin`, `//admin`, `%2e%2e`) cannot exist. The rules:
//!
//! 1. `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded; every other
//!    escape is kept, with upper-case hex. `%2F` therefore stays `%2F` and never becomes a
//!    segment boundary. A malformed escape (`%G1`, `%4`) is refused.
//! 2. Characters that RFC 3986 does not allow in a path (`\`, `"`, `{`, bytes >= 0x80 …)
//!    are percent-encoded, so `\` is never a separator either.
//! 3. Runs of `/` collapse to one; `.` segments vanish; `..` removes the segment before it
//!    and stops at the root (RFC 3986 §5.2.4). A trailing `/` is kept.
//!
//! The common path (`/api/users/7`) needs none of this and is borrowed, not copied.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/` (asterisk-form or garbage).
    NotAbsolute,
    /// A `%` that is not followed by two hex digits.
    BadEscape,
}

/// Normalise a request path (without the query). See the module doc for the rules.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(bytes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// True when no rule applies: no escape, no odd byte, no empty or dot segment.
fn is_canonical(bytes: &[u8]) -> bool {
    let mut prev_slash = false;
    let mut seg_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'/' {
            if prev_slash || is_dot_segment(&bytes[seg_start..i]) {
                return false;
            }
            prev_slash = true;
            seg_start = i + 1;
        } else {
            if b == b'%' || !is_pchar(b) {
                return false;
            }
            prev_slash = false;
        }
    }
    !is_dot_segment(&bytes[seg_start..])
}

fn is_dot_segment(seg: &[u8]) -> bool {
    seg == b"." || seg == b".."
}

/// RFC 3986 `pchar` minus `%` (handled separately): unreserved, sub-delims, `:` and `@`.
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 0xf) as usize] as char);
}

/// Rules 1 and 2: decode unreserved escapes, canonicalise the rest.
fn decode(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val);
            let lo = bytes.get(i + 2).copied().and_then(hex_val);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEscape);
            };
            let v = hi << 4 | lo;
            if is_unreserved(v) {
                out.push(v as char);
            } else {
                push_escaped(&mut out, v);
            }
            i += 3;
        } else {
            if b == b'/' || is_pchar(b) {
                out.push(b as char);
            } else {
                push_escaped(&mut out, b);
            }
            i += 1;
        }
    }
    Ok(out)
}

/// Rule 3 on an already decoded path that starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in path[1..].split('/') {
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

/// Canonical host for matching: without port, lower-case, without a trailing dot.
/// IPv6 literals keep their brackets. Returns `None` for an empty host.
pub fn normalize_host(host: &str) -> Option<Cow<'_, str>> {
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        // A byte search: `rfind(':')` goes through the char searcher, several times the
        // instructions for a host of a few bytes. ':' is ASCII, so the index is a
        // char boundary.
        match host.bytes().rposition(|b| b == b':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    let h = without_port.strip_suffix('.').unwrap_or(without_port);
    if h.is_empty() {
        return None;
    }
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(h.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize_path(p).expect("valid").into_owned()
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        assert!(matches!(
            normalize_path("/api/users/7"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize_path("/"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize_path("/a/"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(n("/api/orders/../users/1"), "/api/users/1");
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("/a/.../b"), "/a/.../b");
    }

    #[test]
    fn duplicate_slashes_merge() {
        assert_eq!(n("//api//users/1"), "/api/users/1");
        assert_eq!(n("/api/users//"), "/api/users/");
    }

    #[test]
    fn encoded_dots_are_dot_segments() {
        assert_eq!(n("/api/orders/%2e%2e/users/1"), "/api/users/1");
        assert_eq!(n("/api/orders/%2E./users"), "/api/users");
    }

    #[test]
    fn unreserved_escapes_decode_others_stay() {
        assert_eq!(n("/%41%62c"), "/Abc");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a%2F..%2Fb"), "/a%2F..%2Fb");
        assert_eq!(n("/caf%c3%a9"), "/caf%C3%A9");
    }

    #[test]
    fn backslash_is_not_a_separator() {
        assert_eq!(n("/a\\..\\b"), "/a%5C..%5Cb");
        assert_eq!(n("/a%5c../b"), "/a%5C../b");
    }

    #[test]
    fn bad_escapes_are_refused() {
        assert_eq!(normalize_path("/a%g1"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("*"), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(
            normalize_host("API.Example.com:8080").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            normalize_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host(":80"), None);
    }
}
