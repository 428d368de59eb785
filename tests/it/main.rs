//! Integration tests: the real gateway binary on loopback with real upstreams and clients.
//! One test binary with modules, so the dependency set links once.

mod support;

mod admin;
mod auth;
mod bad_input;
mod check;
mod deploy;
mod diff;
mod dns;
mod filters;
mod grpc;
mod h1;
mod h2;
mod import;
mod import_nginx;
mod limits;
mod observe;
mod otlp;
mod pgo;
mod policy;
mod pool;
mod prometheus;
mod proxying;
mod reload;
mod resilience;
mod routing;
mod server_h1;
mod shutdown;
mod streaming;
mod tls;
mod websocket;
