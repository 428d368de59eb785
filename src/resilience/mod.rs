//! Limits that keep one client or one service from flooding another: per-route rate
//! limits (token buckets per key) and per-service concurrency limits (load shedding);
//! retries, and the route timeout on a timer an HTTP/1 connection reuses (`deadline`).

pub mod concurrency;
pub mod deadline;
pub mod rate_limit;
pub mod retry;
