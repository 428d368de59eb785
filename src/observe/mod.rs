//! Observability: the access log, Prometheus metrics, W3C trace context.

pub mod access_log;
pub mod metrics;
pub mod trace;
