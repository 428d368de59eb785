//! Integration tests: the real gateway binary on loopback with real upstreams and clients.
//! One test binary with modules, so the dependency set links once.

mod support;

mod bad_input;
mod check;
mod filters;
mod import;
mod import_nginx;
mod proxying;
mod reload;
mod routing;
mod shutdown;
mod streaming;
