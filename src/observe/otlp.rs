//! OTLP span export: one server span per sampled request and one client span per
//! upstream try, sent to an OpenTelemetry collector over OTLP/HTTP (protobuf) or OTLP/gRPC
//! with `opentelemetry-otlp`.
//!
//! The request path never waits for the collector: a finished span is handed to a
//! bounded channel with `try_send` (a full queue drops the span and counts it), and one
//! background task per exporter batches spans (up to [`BATCH`] or every
//! [`FLUSH_EVERY`]) and exports them. A dead collector costs failed exports, counted,
//! not latency.
//!
//! Span ids are the ones the gateway already uses for W3C trace context, so the spans
//! the upstreams report hang under the gateway's try span.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::config::model::{OtlpProtocol, Tracing};
use crate::observe::trace::TraceContext;

/// Spans buffered between the request path and the exporter; beyond it, spans are
/// dropped (and counted) rather than requests slowed.
const QUEUE: usize = 8192;
/// Spans per export request.
const BATCH: usize = 512;
/// A partial batch is exported after this long.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// One export request may take this long before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of what happened to spans, shown at `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct SpanCounters {
    pub exported: Counter,
    pub dropped: Counter,
    pub failed: Counter,
}

/// Where finished spans go: the queue of one exporter.
#[derive(Debug)]
pub struct SpanSink {
    tx: mpsc::Sender<SpanData>,
    counters: SpanCounters,
    scope: InstrumentationScope,
}

impl SpanSink {
    /// Start an exporter task for `tracing.otlp`; `None` when no endpoint is set or the
    /// exporter cannot be built (logged).
    fn start(tracing: &Tracing, counters: SpanCounters) -> Option<SpanSink> {
        let endpoint = tracing.otlp.as_ref()?;
        let built = match tracing.protocol {
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint.to_string())
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.to_string())
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
        };
        let mut exporter = match built {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(endpoint = %endpoint, error = %e, "cannot build the OTLP exporter; spans are not exported");
                return None;
            }
        };
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(tracing.service_name.clone())
                .build(),
        );
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(export_loop(exporter, rx, counters.clone()));
        tracing::info!(endpoint = %endpoint, protocol = ?tracing.protocol, "exporting spans over OTLP");
        Some(SpanSink {
            tx,
            counters,
            scope: InstrumentationScope::builder("switchyard")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    fn send(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.counters.dropped.inc();
        }
    }
}

/// Batch spans from the queue and export them until every sender is gone.
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    counters: SpanCounters,
) {
    let mut batch = Vec::with_capacity(BATCH);
    // When the oldest span of a partial batch has waited long enough.
    let mut flush_at = tokio::time::Instant::now();
    loop {
        let room = BATCH - batch.len();
        let was_empty = batch.is_empty();
        let (open, due) = tokio::select! {
            n = rx.recv_many(&mut batch, room) => (n > 0, false),
            _ = tokio::time::sleep_until(flush_at), if !was_empty => (true, true),
        };
        if was_empty && !batch.is_empty() {
            flush_at = tokio::time::Instant::now() + FLUSH_EVERY;
        }
        if !batch.is_empty() && (due || batch.len() >= BATCH || !open) {
            let n = batch.len() as u64;
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            match exporter.export(spans).await {
                Ok(()) => {
                    counters.exported.inc_by(n);
                }
                Err(e) => {
                    counters.failed.inc_by(n);
                    tracing::warn!(error = %e, spans = n, "OTLP export failed");
                }
            };
        }
        if !open {
            break;
        }
    }
}

/// Exporters outlive snapshots: a reload with the same `[tracing]` endpoint keeps the
/// running one (and its queued spans); a changed endpoint starts a new one.
#[derive(Debug, Default)]
pub struct Registry {
    current: Mutex<Option<(Tracing, Arc<SpanSink>)>>,
    pub counters: SpanCounters,
}

impl Registry {
    /// The sink for this config, `None` when export is off.
    pub fn get(&self, tracing: &Tracing) -> Option<Arc<SpanSink>> {
        tracing.otlp.as_ref()?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, sink)) = current.as_ref()
            && t.otlp == tracing.otlp
            && t.service_name == tracing.service_name
            && t.protocol == tracing.protocol
        {
            return Some(sink.clone());
        }
        let sink = Arc::new(SpanSink::start(tracing, self.counters.clone())?);
        *current = Some((tracing.clone(), sink.clone()));
        Some(sink)
    }
}

/// Whether a new trace (no valid `traceparent` from the client) is sampled.
pub fn sample(ratio: f64) -> bool {
    ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio)
}

/// One upstream try, as a client span.
#[derive(Debug)]
pub struct TrySpan {
    pub span_id: [u8; 16],
    pub start: SystemTime,
    pub end: SystemTime,
    pub endpoint: SocketAddr,
    pub attempt: u32,
    /// The upstream's status, or the error that ended the try.
    pub outcome: Result<u16, &'static str>,
}

/// The server span of one request, filled in by the proxy and exported when the
/// response body is done (so its end is the real end).
#[derive(Debug)]
pub struct RequestSpan {
    pub sink: Arc<SpanSink>,
    pub trace: TraceContext,
    pub start: SystemTime,
    pub method: &'static str,
    pub path: String,
    pub route: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub tries: Vec<TrySpan>,
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        let end = SystemTime::now();
        let trace_id = TraceId::from_hex(self.trace.trace_id_str()).unwrap_or(TraceId::INVALID);
        let server_id = span_id(&self.trace.span_id);
        let parent = self
            .trace
            .parent_id
            .as_ref()
            .map_or(SpanId::INVALID, span_id);
        let context =
            |id| SpanContext::new(trace_id, id, TraceFlags::SAMPLED, false, TraceState::NONE);
        let (start, scope) = (self.start, self.sink.scope.clone());
        let base = |span_context, span_kind, name| SpanData {
            span_context,
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind,
            name,
            start_time: start,
            end_time: end,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", self.method),
            KeyValue::new("url.path", std::mem::take(&mut self.path)),
            KeyValue::new("http.response.status_code", i64::from(self.status)),
        ];
        if let Some(r) = &self.route {
            attributes.push(KeyValue::new("http.route", r.to_string()));
        }
        if let Some(s) = &self.service {
            attributes.push(KeyValue::new("switchyard.service", s.to_string()));
        }
        if let Some(e) = self.error {
            attributes.push(KeyValue::new("error.type", e));
        }
        let status = if self.status >= 500 {
            Status::error(self.error.unwrap_or("server error"))
        } else {
            Status::Unset
        };
        let name: Cow<'static, str> = match &self.route {
            Some(r) => Cow::Owned(format!("{} {r}", self.method)),
            None => Cow::Borrowed(self.method),
        };
        for t in self.tries.drain(..) {
            let mut attributes = vec![
                KeyValue::new("server.address", t.endpoint.ip().to_string()),
                KeyValue::new("server.port", i64::from(t.endpoint.port())),
                KeyValue::new("http.request.resend_count", i64::from(t.attempt - 1)),
            ];
            let status = match t.outcome {
                Ok(code) => {
                    attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
                    if code >= 500 {
                        Status::error("upstream answered 5xx")
                    } else {
                        Status::Unset
                    }
                }
                Err(e) => {
                    attributes.push(KeyValue::new("error.type", e));
                    Status::error(e)
                }
            };
            self.sink.send(SpanData {
                parent_span_id: server_id,
                start_time: t.start,
                end_time: t.end,
                attributes,
                status,
                ..base(
                    context(span_id(&t.span_id)),
                    SpanKind::Client,
                    Cow::Owned(format!("{} upstream", self.method)),
                )
            });
        }
        self.sink.send(SpanData {
            parent_span_id: parent,
            parent_span_is_remote: self.trace.parent_id.is_some(),
            attributes,
            status,
            ..base(context(server_id), SpanKind::Server, name)
        });
    }
}

fn span_id(hex: &[u8; 16]) -> SpanId {
    std::str::from_utf8(hex)
        .ok()
        .and_then(|s| SpanId::from_hex(s).ok())
        .unwrap_or(SpanId::INVALID)
}
