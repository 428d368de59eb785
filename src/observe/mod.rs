//! Observability: the access log, Prometheus metrics, W3C trace context, OTLP spans.

pub mod access_log;
pub mod metrics;
pub mod otlp;
pub mod trace;
