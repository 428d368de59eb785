//! W3C Trace Context (`traceparent`, `tracestate`): continued when the client sent a
//! valid one, started otherwise, and passed upstream with the gateway's own span id, so
//! the upstream's spans hang under the gateway's hop.

use http::{HeaderMap, HeaderValue};

use crate::http::headers::{self as fields, hex16};

pub use crate::http::headers::TRACEPARENT;
pub static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The trace this request belongs to and the gateway's span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits.
    pub trace_id: [u8; 32],
    /// The caller's span (16 hex digits), if the trace was continued.
    pub parent_id: Option<[u8; 16]>,
    /// The gateway's span id for this request.
    pub span_id: [u8; 16],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// Continue the client's trace when its `traceparent` is valid (keeping its
    /// sampled flag); otherwise start one, sampled with probability `sample_ratio` (and
    /// drop a `tracestate` that no longer belongs to anything, as the spec says).
    pub fn from_headers(headers: &mut HeaderMap, sample_ratio: f64) -> TraceContext {
        let parsed = fields::get(headers, &TRACEPARENT).and_then(|v| parse(v.as_bytes()));
        match parsed {
            Some((trace_id, parent_id, flags)) => TraceContext {
                trace_id,
                parent_id: Some(parent_id),
                span_id: new_span_id(),
                flags,
            },
            None => {
                fields::remove(headers, &TRACESTATE);
                let mut trace_id = [0u8; 32];
                trace_id[..16].copy_from_slice(&hex16(nonzero_u64()));
                trace_id[16..].copy_from_slice(&hex16(fastrand::u64(..)));
                TraceContext {
                    trace_id,
                    parent_id: None,
                    span_id: new_span_id(),
                    flags: u8::from(crate::observe::otlp::sample(sample_ratio)),
                }
            }
        }
    }

    /// `traceparent` for the upstream: same trace, the gateway's span as parent.
    pub fn header_value(&self) -> HeaderValue {
        let mut buf = [0u8; 55];
        buf[..3].copy_from_slice(b"00-");
        buf[3..35].copy_from_slice(&self.trace_id);
        buf[35] = b'-';
        buf[36..52].copy_from_slice(&self.span_id);
        buf[52] = b'-';
        buf[53] = HEX[(self.flags >> 4) as usize];
        buf[54] = HEX[(self.flags & 0xf) as usize];
        HeaderValue::from_bytes(&buf).expect("hex and dashes are a valid header value")
    }

    /// Whether this trace is recorded (W3C `sampled` flag).
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    /// The same trace with `span_id` as the parent the upstream sees.
    pub fn header_value_for(&self, span_id: [u8; 16]) -> HeaderValue {
        TraceContext { span_id, ..*self }.header_value()
    }

    /// The trace id as text, for logs.
    pub fn trace_id_str(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or("")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A random, non-zero span id as 16 hex digits.
pub fn new_span_id() -> [u8; 16] {
    hex16(nonzero_u64())
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

/// `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids and version `ff` are invalid. Later
/// versions may append fields after another `-`, which are ignored.
fn parse(v: &[u8]) -> Option<([u8; 32], [u8; 16], u8)> {
    if v.len() < 55 || (v.len() > 55 && (v[..2] == *b"00" || v[55] != b'-')) {
        return None;
    }
    let is_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    if !is_hex(version) || version == b"ff" || !is_hex(trace) || !is_hex(parent) || !is_hex(flags) {
        return None;
    }
    if trace.iter().all(|&c| c == b'0') || parent.iter().all(|&c| c == b'0') {
        return None;
    }
    let flags = u8::from_str_radix(std::str::from_utf8(flags).ok()?, 16).ok()?;
    Some((trace.try_into().ok()?, parent.try_into().ok()?, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(tp: Option<&str>, ts: Option<&str>) -> (TraceContext, HeaderMap) {
        let mut h = HeaderMap::new();
        if let Some(tp) = tp {
            h.insert(&TRACEPARENT, HeaderValue::from_str(tp).unwrap());
        }
        if let Some(ts) = ts {
            h.insert(&TRACESTATE, HeaderValue::from_str(ts).unwrap());
        }
        (TraceContext::from_headers(&mut h, 1.0), h)
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (c, h) = ctx(Some(tp), Some("congo=t61rcWkgMzE"));
        assert_eq!(c.trace_id_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.parent_id, Some(*b"00f067aa0ba902b7"));
        let out = c.header_value();
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7");
        assert_eq!(h[&TRACESTATE], "congo=t61rcWkgMzE");
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace_and_drop_tracestate() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let (c, h) = ctx(Some(bad), Some("a=b"));
            assert_eq!(c.parent_id, None, "{bad}");
            assert!(!h.contains_key(&TRACESTATE), "{bad}");
            assert_eq!(c.header_value().len(), 55);
        }
    }

    #[test]
    fn future_versions_may_carry_more_fields() {
        let tp = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        let (c, _) = ctx(Some(tp), None);
        assert!(c.parent_id.is_some());
    }

    #[test]
    fn new_traces_are_sampled_by_the_ratio_and_continued_ones_keep_the_flag() {
        let mut h = HeaderMap::new();
        assert!(!TraceContext::from_headers(&mut h, 0.0).sampled());
        assert!(TraceContext::from_headers(&mut h, 1.0).sampled());
        let sampled = (0..2000)
            .filter(|_| TraceContext::from_headers(&mut HeaderMap::new(), 0.25).sampled())
            .count();
        assert!((350..650).contains(&sampled), "{sampled} of 2000 at 0.25");
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        h.insert(&TRACEPARENT, HeaderValue::from_static(tp));
        assert!(!TraceContext::from_headers(&mut h, 1.0).sampled());
    }

    #[test]
    fn new_traces_have_random_nonzero_ids() {
        let (a, _) = ctx(None, None);
        let (b, _) = ctx(None, None);
        assert_ne!(a.trace_id, b.trace_id);
        assert!(a.trace_id.iter().any(|&c| c != b'0'));
    }
}
