//! Observability: the access log and Prometheus metrics (tracing comes later).

pub mod access_log;
pub mod metrics;
