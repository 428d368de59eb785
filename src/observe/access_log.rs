//! One JSON line per request on stdout.
//!
//! The record travels with the response body and is written when the body is done (or
//! the client went away), so `duration_ms` and `bytes_out` are the real totals. Writing
//! goes through a non-blocking channel to a writer thread: a slow stdout never stalls a
//! request; when the channel is full, lines are dropped rather than requests delayed.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::config::model::{LogField, LogFormat};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};

/// Where access-log lines go: a non-blocking writer, made when the first line is
/// written. The writer's channel preallocates a slot for every line it can queue
/// (64 Ki lines: 2 MiB, all touched), and it starts a thread: a gateway whose access
/// log is off never pays for either.
#[derive(Clone)]
pub struct Sink {
    inner: Arc<Lazy>,
}

struct Lazy {
    /// Set once, by the first line.
    writer: OnceLock<NonBlocking>,
    /// Makes the writer and its guard; the guard goes into `state`.
    make: fn() -> (NonBlocking, WorkerGuard),
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Flushes the writer's queue when dropped.
    guard: Option<WorkerGuard>,
    /// The [`SinkGuard`] is gone: no writer is made any more.
    closed: bool,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

impl Sink {
    /// A sink whose writer `make` builds when the first line is written. Dropping the
    /// returned guard flushes what the writer has queued (the writer's own guard is
    /// dropped then); lines written after that are lost, as with a dropped
    /// `WorkerGuard`.
    pub fn lazy(make: fn() -> (NonBlocking, WorkerGuard)) -> (Self, SinkGuard) {
        let inner = Arc::new(Lazy {
            writer: OnceLock::new(),
            make,
            state: Mutex::new(State::default()),
        });
        (
            Self {
                inner: inner.clone(),
            },
            SinkGuard { inner },
        )
    }

    /// Queue one line (with its newline); dropped when the queue is full.
    fn write(&self, line: &[u8]) {
        let writer = match self.inner.writer.get() {
            Some(w) => w,
            None => match self.inner.start() {
                Some(w) => w,
                None => return,
            },
        };
        let _ = writer.clone().write_all(line);
    }
}

impl Lazy {
    /// Make the writer, unless another line just did or the guard is gone.
    fn start(&self) -> Option<&NonBlocking> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.closed {
            return None;
        }
        if let Some(w) = self.writer.get() {
            return Some(w);
        }
        let (writer, guard) = (self.make)();
        state.guard = Some(guard);
        Some(self.writer.get_or_init(|| writer))
    }
}

/// Returned by [`Sink::lazy`]: keep it for as long as lines should be written.
pub struct SinkGuard {
    inner: Arc<Lazy>,
}

impl Drop for SinkGuard {
    fn drop(&mut self) {
        let guard = {
            let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            state.closed = true;
            state.guard.take()
        };
        // Flushes outside the lock.
        drop(guard);
    }
}

/// Everything known about one request, filled in by the proxy phases.
#[derive(Debug)]
pub struct AccessRecord {
    pub sink: Sink,
    pub format: LogFormat,
    pub fields: Arc<[LogField]>,
    pub start: Instant,
    pub time: SystemTime,
    pub request_id: String,
    pub trace_id: [u8; 32],
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
    /// The branch the request asked for (admitted by the gate), if any.
    pub branch: Option<Box<str>>,
    /// The branch deployment was missing or unreachable and main answered.
    pub branch_fallback: bool,
    /// The sticky/cohort bucket of a split, when the request had a key.
    pub bucket: Option<u32>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl AccessRecord {
    fn value(&self, f: LogField) -> Value {
        let s = |v: &str| Value::String(v.to_string());
        let opt = |v: Option<&str>| v.map_or(Value::Null, s);
        match f {
            LogField::Time => s(&time::OffsetDateTime::from(self.time)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()),
            LogField::RequestId => s(&self.request_id),
            LogField::TraceId => s(std::str::from_utf8(&self.trace_id).unwrap_or("")),
            LogField::Client => s(&self.client.ip().to_string()),
            LogField::Method => s(&self.method),
            LogField::Host => opt(self.host.as_deref()),
            LogField::Path => s(&self.path),
            LogField::Route => opt(self.route.as_deref()),
            LogField::Service => opt(self.service.as_deref()),
            LogField::Endpoint => self.endpoint.map_or(Value::Null, |e| s(&e.to_string())),
            LogField::Status => Value::from(self.status),
            LogField::Error => opt(self.error),
            LogField::DurationMs => Value::from(ms(self.start.elapsed())),
            LogField::UpstreamMs => self.upstream.map_or(Value::Null, |d| Value::from(ms(d))),
            LogField::Attempts => Value::from(self.attempts),
            LogField::Retries => Value::from(self.attempts.saturating_sub(1)),
            LogField::BytesIn => Value::from(
                self.bytes_in
                    .as_ref()
                    .map_or(0, |b| b.load(Ordering::Relaxed)),
            ),
            LogField::BytesOut => Value::from(self.bytes_out),
            LogField::Branch => opt(self.branch.as_deref()),
            LogField::BranchFallback => Value::from(self.branch_fallback),
            LogField::Bucket => self.bucket.map_or(Value::Null, Value::from),
        }
    }

    /// The line, without the trailing newline.
    pub fn line(&self) -> Vec<u8> {
        match self.format {
            LogFormat::Ltsv => {
                let mut out = String::new();
                for (i, f) in self.fields.iter().enumerate() {
                    if i > 0 {
                        out.push('\t');
                    }
                    out.push_str(f.name());
                    out.push(':');
                    match self.value(*f) {
                        Value::Null => out.push('-'),
                        Value::String(v) => push_ltsv(&mut out, &v),
                        other => out.push_str(&other.to_string()),
                    }
                }
                out.into_bytes()
            }
            LogFormat::Json | LogFormat::Off => {
                let map: serde_json::Map<String, Value> = self
                    .fields
                    .iter()
                    .map(|f| (f.name().to_string(), self.value(*f)))
                    .collect();
                serde_json::to_vec(&Value::Object(map)).unwrap_or_default()
            }
        }
    }
}

/// LTSV values cannot hold tabs or newlines; escape them (and the backslash).
fn push_ltsv(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        if self.format == LogFormat::Off {
            return;
        }
        let mut buf = self.line();
        buf.push(b'\n');
        self.sink.write(&buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    static MADE: AtomicUsize = AtomicUsize::new(0);
    static OUT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    struct Out;

    impl Write for Out {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            OUT.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn make() -> (NonBlocking, WorkerGuard) {
        MADE.fetch_add(1, Ordering::SeqCst);
        tracing_appender::non_blocking(Out)
    }

    #[test]
    fn the_writer_is_made_by_the_first_line_and_flushed_by_the_guard() {
        let (sink, guard) = Sink::lazy(make);
        let copy = sink.clone();
        assert_eq!(MADE.load(Ordering::SeqCst), 0, "no writer before a line");
        sink.write(b"one\n");
        copy.write(b"two\n");
        assert_eq!(MADE.load(Ordering::SeqCst), 1, "one writer for all clones");
        // The writer's guard sends shutdown behind the lines and waits for its thread.
        drop(guard);
        assert_eq!(OUT.lock().unwrap().as_slice(), b"one\ntwo\n");
        sink.write(b"late\n");
        assert_eq!(
            MADE.load(Ordering::SeqCst),
            1,
            "none after the guard is gone"
        );
        assert_eq!(OUT.lock().unwrap().as_slice(), b"one\ntwo\n");
    }
}
