//! Shadow traffic: a detached copy of the request to another service, and the
//! comparison of its answer with the primary's.

use http::{HeaderName, Method};

/// `mirror = {…}` of a route.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// Index into `Config::services`.
    pub service: usize,
    /// Share of requests mirrored, in buckets of 0.01 % (`10000` = all).
    pub per_10000: u32,
    pub compare: bool,
    /// Response headers left out of the comparison.
    pub ignore_headers: Vec<HeaderName>,
    /// JSON paths left out of the comparison, as segments (`$.a.b` -> `["a", "b"]`).
    pub ignore_paths: Vec<Vec<String>>,
    /// Response headers whose values are compared.
    pub headers: Vec<HeaderName>,
    /// Methods mirrored; default GET and HEAD.
    pub methods: Vec<Method>,
    /// Shadow requests in flight at once; more are dropped and counted.
    pub max_in_flight: usize,
    /// Bodies larger than this are compared by hash only.
    pub max_compare_body: usize,
}

/// The segment of `[*]`: matches any array index.
pub const ANY_INDEX: &str = "[*]";

/// Does an `ignore` path name this place of the document?
fn ignored(ignore: &[Vec<String>], path: &[String]) -> bool {
    ignore.iter().any(|p| {
        p.len() == path.len()
            && p.iter().zip(path).all(|(want, seg)| {
                want == seg
                    || (want == ANY_INDEX
                        && !seg.is_empty()
                        && seg.bytes().all(|b| b.is_ascii_digit()))
            })
    })
}

/// Parse `$.a.b` / `$.items[0].id` into segments (`["a", "b"]`, `["items", "0", "id"]`);
/// `[*]` is [`ANY_INDEX`].
pub fn parse_json_path(s: &str) -> Option<Vec<String>> {
    let rest = s.strip_prefix('$')?;
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                let mut seg = String::new();
                while let Some(&n) = chars.peek() {
                    if n == '.' || n == '[' {
                        break;
                    }
                    seg.push(n);
                    chars.next();
                }
                if seg.is_empty() {
                    return None;
                }
                out.push(seg);
            }
            '[' => {
                let mut seg = String::new();
                for n in chars.by_ref() {
                    if n == ']' {
                        break;
                    }
                    seg.push(n);
                }
                if seg == "*" {
                    // Any array index; a marker no parsed key can equal (a bracketed
                    // key has no `]`, a dotted one no `[`).
                    out.push(ANY_INDEX.to_string());
                    continue;
                }
                let seg = seg.trim_matches('"').to_string();
                if seg.is_empty() {
                    return None;
                }
                out.push(seg);
            }
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The last mismatches, newest last, for `GET /mirror/mismatches`.
#[derive(Debug, Default)]
pub struct MismatchLog {
    entries: std::sync::Mutex<std::collections::VecDeque<serde_json::Value>>,
    /// Second (since the Unix epoch) of the last mismatch log line: at most one a second.
    last_logged: std::sync::atomic::AtomicU64,
}

/// Mismatches kept.
pub const KEEP: usize = 100;

impl MismatchLog {
    pub fn push(&self, v: serde_json::Value) {
        let mut e = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if e.len() >= KEEP {
            e.pop_front();
        }
        e.push_back(v);
    }

    /// True at most once per second: whether this mismatch gets a log line.
    pub fn sample(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_logged.swap(now, Ordering::Relaxed) != now
    }

    pub fn list(&self) -> Vec<serde_json::Value> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

// === comparison ===

/// What one side answered, as far as the comparison needs it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub status: u16,
    /// Values of the compared headers, in `Mirror::headers` order.
    pub headers: Vec<Option<http::HeaderValue>>,
    /// The body when it fitted under the cap; `None` when only the hash is known.
    pub body: Option<bytes::Bytes>,
    /// SHA-256 of the whole body, computed only for a body over the cap (two bodies
    /// under it are compared as they are; one under and one over differ in length).
    pub hash: Option<[u8; 32]>,
    pub len: u64,
    /// The body has a `Content-Encoding` other than `identity`: its bytes say nothing
    /// comparable (gzip of the same JSON differs by level, key order, timestamps), so
    /// the comparison is `skipped`, not a mismatch.
    pub encoded: bool,
}

impl Captured {
    /// The answer of a body that was not collected because it is encoded.
    pub fn encoded(status: u16) -> Self {
        Captured {
            status,
            headers: Vec::new(),
            body: None,
            hash: None,
            len: 0,
            encoded: true,
        }
    }
}

/// Does a response carry a `Content-Encoding` other than `identity`?
pub fn is_encoded(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|c| {
            let c = c.trim_ascii();
            !c.is_empty() && !c.eq_ignore_ascii_case(b"identity")
        })
}

/// Collects a body as it streams: the first `cap` bytes, and only once the body has
/// outgrown them, a hash of everything (so that the client's path does not hash the
/// usual small answer frame by frame).
pub struct Collector {
    cap: usize,
    buf: bytes::BytesMut,
    hasher: Option<sha2::Sha256>,
    len: u64,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("len", &self.len).finish()
    }
}

impl Collector {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            buf: bytes::BytesMut::new(),
            hasher: None,
            len: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        self.len += data.len() as u64;
        match &mut self.hasher {
            Some(h) => h.update(data),
            None if self.buf.len() + data.len() <= self.cap => self.buf.extend_from_slice(data),
            None => {
                let mut h = sha2::Sha256::new();
                h.update(&self.buf);
                h.update(data);
                self.hasher = Some(h);
                self.buf = bytes::BytesMut::new();
            }
        }
    }

    pub fn finish(self, status: u16, headers: Vec<Option<http::HeaderValue>>) -> Captured {
        use sha2::Digest as _;
        let (body, hash) = match self.hasher {
            None => (Some(self.buf.freeze()), None),
            Some(h) => (None, Some(h.finalize().into())),
        };
        Captured {
            status,
            headers,
            body,
            hash,
            len: self.len,
            encoded: false,
        }
    }
}

/// The compared headers' values of a response.
pub fn pick_headers(m: &Mirror, headers: &http::HeaderMap) -> Vec<Option<http::HeaderValue>> {
    m.headers
        .iter()
        .map(|h| {
            if m.ignore_headers.contains(h) {
                None
            } else {
                headers.get(h).cloned()
            }
        })
        .collect()
}

/// Most differences listed per mismatch.
const MAX_DIFFS: usize = 10;

/// The differences between the primary's and the shadow's answers; empty when they
/// match. JSON bodies are compared structurally (key order ignored, `ignore` paths
/// skipped) and each difference names its path, like `$.user.name: "a" != "b"`.
pub fn compare(m: &Mirror, primary: &Captured, shadow: &Captured) -> Vec<String> {
    let mut out = Vec::new();
    if primary.status != shadow.status {
        out.push(format!("status: {} != {}", primary.status, shadow.status));
    }
    for (i, h) in m.headers.iter().enumerate() {
        let (a, b) = (&primary.headers[i], &shadow.headers[i]);
        if a != b {
            let show = |v: &Option<http::HeaderValue>| {
                v.as_ref()
                    .map_or("(none)".to_string(), |v| format!("{:?}", v))
            };
            out.push(format!("header {h}: {} != {}", show(a), show(b)));
        }
    }
    match (&primary.body, &shadow.body) {
        (Some(a), Some(b)) => {
            let ja = serde_json::from_slice::<serde_json::Value>(a);
            let jb = serde_json::from_slice::<serde_json::Value>(b);
            match (ja, jb) {
                (Ok(ja), Ok(jb)) => {
                    let mut path = Vec::new();
                    json_diff(&ja, &jb, &mut path, &m.ignore_paths, &mut out);
                }
                _ if a != b => out.push(format!(
                    "body: {} bytes != {} bytes (not JSON; contents differ)",
                    a.len(),
                    b.len()
                )),
                _ => {}
            }
        }
        (None, None) if primary.hash != shadow.hash || primary.len != shadow.len => {
            out.push(format!(
                "body: {} bytes != {} bytes (over the compare size; hashes differ)",
                primary.len, shadow.len
            ))
        }
        (None, None) => {}
        _ => out.push(format!(
            "body: {} bytes != {} bytes (over the compare size)",
            primary.len, shadow.len
        )),
    }
    out.truncate(MAX_DIFFS);
    out
}

fn render_path(path: &[String]) -> String {
    let mut s = String::from("$");
    for seg in path {
        if seg.bytes().all(|b| b.is_ascii_digit()) && !seg.is_empty() {
            s.push_str(&format!("[{seg}]"));
        } else {
            s.push('.');
            s.push_str(seg);
        }
    }
    s
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        let mut cut = 57;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &s[..cut])
    } else {
        s
    }
}

fn json_diff(
    a: &serde_json::Value,
    b: &serde_json::Value,
    path: &mut Vec<String>,
    ignore: &[Vec<String>],
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    if out.len() >= MAX_DIFFS || ignored(ignore, path) {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                path.push(k.clone());
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => json_diff(va, vb, path, ignore, out),
                    (Some(va), None) => {
                        if !ignored(ignore, path) {
                            out.push(format!("{}: {} != (missing)", render_path(path), short(va)));
                        }
                    }
                    (None, Some(vb)) => {
                        if !ignored(ignore, path) {
                            out.push(format!("{}: (missing) != {}", render_path(path), short(vb)));
                        }
                    }
                    (None, None) => {}
                }
                path.pop();
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                out.push(format!(
                    "{}: {} items != {} items",
                    render_path(path),
                    x.len(),
                    y.len()
                ));
            }
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                path.push(i.to_string());
                json_diff(va, vb, path, ignore, out);
                path.pop();
            }
        }
        _ if a != b => out.push(format!(
            "{}: {} != {}",
            render_path(path),
            short(a),
            short(b)
        )),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(ignore: &[&str]) -> Mirror {
        Mirror {
            service: 0,
            per_10000: 10_000,
            compare: true,
            ignore_headers: Vec::new(),
            ignore_paths: ignore.iter().filter_map(|p| parse_json_path(p)).collect(),
            headers: vec![http::header::CONTENT_TYPE],
            methods: vec![http::Method::GET],
            max_in_flight: 1,
            max_compare_body: 1 << 20,
        }
    }

    fn cap(m: &Mirror, status: u16, body: &str, max: usize) -> Captured {
        let mut c = Collector::new(max);
        c.push(body.as_bytes());
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        c.finish(status, pick_headers(m, &h))
    }

    #[test]
    fn json_paths_parse() {
        assert_eq!(
            parse_json_path("$.items[0].id"),
            Some(vec!["items".into(), "0".into(), "id".into()])
        );
        assert_eq!(parse_json_path("$.a"), Some(vec!["a".into()]));
        for bad in ["$", "a.b", "$..a", "$.a[]"] {
            assert_eq!(parse_json_path(bad), None, "{bad}");
        }
        assert_eq!(
            parse_json_path("$.items[*].id"),
            Some(vec!["items".into(), ANY_INDEX.into(), "id".into()])
        );
    }

    #[test]
    fn encodings_other_than_identity_are_not_comparable() {
        let h = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("content-encoding", v.parse().unwrap());
            h
        };
        assert!(is_encoded(&h("gzip")));
        assert!(is_encoded(&h("identity, br")));
        assert!(!is_encoded(&h("identity")));
        assert!(!is_encoded(&http::HeaderMap::new()));
    }

    /// `[*]` ignores the field in every element of the array, and nothing else.
    #[test]
    fn any_index_ignores_a_field_of_every_element() {
        let m = mirror(&["$.items[*].id"]);
        let a = cap(
            &m,
            200,
            r#"{"items":[{"id":1,"n":"a"},{"id":2,"n":"b"}]}"#,
            1024,
        );
        let b = cap(
            &m,
            200,
            r#"{"items":[{"id":7,"n":"a"},{"id":8,"n":"c"}]}"#,
            1024,
        );
        assert_eq!(
            compare(&m, &a, &b),
            vec![r#"$.items[1].n: "b" != "c""#.to_string()]
        );
    }

    #[test]
    fn key_order_is_ignored_and_the_differing_path_is_named() {
        let m = mirror(&["$.generated_at"]);
        let a = cap(
            &m,
            200,
            r#"{"id":1,"user":{"name":"a","tags":[1,2]},"generated_at":1}"#,
            1024,
        );
        let b = cap(
            &m,
            200,
            r#"{"generated_at":2,"user":{"tags":[1,2],"name":"b"},"id":1}"#,
            1024,
        );
        assert_eq!(
            compare(&m, &a, &b),
            vec![r#"$.user.name: "a" != "b""#.to_string()]
        );
        let c = cap(
            &m,
            200,
            r#"{"user":{"tags":[1,3],"name":"a"},"id":1}"#,
            1024,
        );
        assert_eq!(
            compare(&m, &a, &c),
            vec!["$.user.tags[1]: 2 != 3".to_string()]
        );
        assert!(compare(&m, &a, &a).is_empty());
    }

    #[test]
    fn large_bodies_are_compared_by_hash() {
        let m = mirror(&[]);
        let a = cap(&m, 200, &"x".repeat(100), 10);
        let b = cap(&m, 200, &"x".repeat(100), 10);
        assert!(a.body.is_none());
        assert!(compare(&m, &a, &b).is_empty());
        let c = cap(&m, 500, &"y".repeat(100), 10);
        let d = compare(&m, &a, &c);
        assert_eq!(d[0], "status: 200 != 500");
        assert!(d[1].contains("hashes differ"), "{d:?}");
        // Under the cap nothing is hashed; under against over differs by length.
        let small = cap(&m, 200, "x", 10);
        assert!(small.hash.is_none() && a.hash.is_some());
        let d = compare(&m, &small, &a);
        assert_eq!(d, ["body: 1 bytes != 100 bytes (over the compare size)"]);
    }
}
