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

/// Parse `$.a.b` / `$.items[0].id` into segments (`["a", "b"]`, `["items", "0", "id"]`).
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

    pub fn list(&self) -> Vec<serde_json::Value> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
