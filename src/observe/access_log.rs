//! One JSON line per request on stdout.
//!
//! The record travels with the response body and is written when the body is done (or
//! the client went away), so `duration_ms` and `bytes_out` are the real totals. Writing
//! goes through a non-blocking channel to a writer thread: a slow stdout never stalls a
//! request; when the channel is full, lines are dropped rather than requests delayed.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tracing_appender::non_blocking::NonBlocking;

/// Where access-log lines go.
#[derive(Clone)]
pub struct Sink {
    writer: NonBlocking,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

impl Sink {
    /// Wrap a non-blocking writer (see `tracing_appender::non_blocking`).
    pub fn new(writer: NonBlocking) -> Self {
        Self { writer }
    }
}

/// Everything known about one request, filled in by the proxy phases.
#[derive(Debug)]
pub struct AccessRecord {
    pub sink: Sink,
    pub start: Instant,
    pub time: SystemTime,
    pub request_id: String,
    pub client: SocketAddr,
    pub method: String,
    pub host: Option<String>,
    pub path: String,
    pub route: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub endpoint: Option<SocketAddr>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub upstream: Option<Duration>,
    pub attempts: u32,
    pub bytes_in: Option<Arc<AtomicU64>>,
    pub bytes_out: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    client: String,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    route: Option<&'a str>,
    service: Option<&'a str>,
    endpoint: Option<String>,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    attempts: u32,
    bytes_in: u64,
    bytes_out: u64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let time = time::OffsetDateTime::from(self.time)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let line = Line {
            time,
            request_id: &self.request_id,
            client: self.client.ip().to_string(),
            method: &self.method,
            host: self.host.as_deref(),
            path: &self.path,
            route: self.route.as_deref(),
            service: self.service.as_deref(),
            endpoint: self.endpoint.map(|e| e.to_string()),
            status: self.status,
            error: self.error,
            duration_ms: ms(self.start.elapsed()),
            upstream_ms: self.upstream.map(ms),
            attempts: self.attempts,
            bytes_in: self
                .bytes_in
                .as_ref()
                .map_or(0, |b| b.load(Ordering::Relaxed)),
            bytes_out: self.bytes_out,
        };
        if let Ok(mut buf) = serde_json::to_vec(&line) {
            buf.push(b'\n');
            let _ = self.sink.writer.write_all(&buf);
        }
    }
}
