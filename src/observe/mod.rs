//! Observability: the access log (and, later, metrics and tracing).

pub mod access_log;
