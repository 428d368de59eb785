//! # Switchyard, an edge API gateway
//!
//! One request passes through these modules, top to bottom, in one pass:
//!
//! ```text
//! server      accept (connection limit) -> [tls: rustls handshake, certificate by
//!             SNI from tls::CertStore, ALPN h2/http1.1] -> server::h1 (plain
//!             HTTP/1.1 GETs) or, from the first other head on, hyper-util auto
//!             (HTTP/1.1 + HTTP/2); header-read timeout, header size/count limits,
//!             graceful drain
//!   proxy::serve            load the Snapshot once (ArcSwap), request id
//!     check_framing         CL+TE, duplicate CL, non-chunked TE -> 400 + close
//!     http::normalize       canonical path (dot segments, //, %XX) and host
//!     router                host -> matchit prefix tree -> method/header/query
//!     policy                canary split (sticky, cohort, guard), topic-branch
//!                           override behind a gate, mirror copy (detached)
//!     upstream_request      hop-by-hop out, X-Forwarded-*, x-request-id, rewrite
//!     forward               upstream::Upstream: round-robin, pooled client
//!                           (http1 | h2c | h2 | https), connect retry, route timeout
//!     downstream_response   hop-by-hop out, stream the body back (trailers too);
//!                           an accepted Upgrade becomes a tunnel (proxy::upgrade)
//!   observe::access_log     one JSON line when the response body is done
//! ```
//!
//! Configuration (`config`) is parsed and validated once per load into a
//! [`snapshot::Snapshot`]; `reload` builds the next one on the side and swaps it in.
//! The hot path never parses config or takes a global lock. Certificates are reloaded
//! on their own (`tls`), since a Secret update does not touch the config file.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod background;
pub mod cli;
pub mod config;
pub mod demo;
pub mod diff;
pub mod gateway;
pub mod http;
pub mod import;
pub mod net;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod resilience;
pub mod router;
pub mod run;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;
