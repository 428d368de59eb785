//! `switchyard demo`: tiny backends for the services of a route table, so the shipped
//! `routes.toml` can be tried with curl on a fresh machine. Each backend answers every
//! request with JSON naming its service and echoing what it received.

use std::convert::Infallible;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config;

/// Bind a backend on every loopback endpoint of every service in `config_path`.
pub async fn start_backends(config_path: &Path) -> Result<(), String> {
    let loaded = config::load(config_path).map_err(|e| e.to_string())?;
    // Every service's endpoints, and the endpoints of its explicit branch deployments
    // (answering as `service@branch`).
    let mut backends = Vec::new();
    for svc in &loaded.config.services {
        backends.extend(svc.endpoints.iter().map(|ep| (svc.name.clone(), ep)));
        for (branch, eps) in &svc.branches {
            backends.extend(eps.iter().map(|ep| (format!("{}@{branch}", svc.name), ep)));
        }
    }
    for (name, ep) in backends {
        let Some(addr) = ep.addr.filter(|a| a.ip().is_loopback()) else {
            continue;
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("demo backend for `{name}` cannot listen on {addr}: {e}"))?;
        tracing::info!(service = %name, %addr, "demo backend listening");
        tokio::spawn(backend(listener, name));
    }
    if let Some(http) = loaded.config.listen.http {
        let port = http.port();
        eprintln!(
            "\nSwitchyard demo. Try:\n  curl -s localhost:{port}/api/users/7\n  curl -s localhost:{port}/api/orders/42\n  curl -s -i localhost:{port}/nowhere\n  curl -s -i localhost:{port}/v1/users/3\n\nTraffic policies (docs/policies.md):\n  curl -s -i -H 'x-user-id: 42' localhost:{port}/api/users/7     # sticky canary; see x-switchyard-service\n  curl -s -i -H 'x-canary: always' localhost:{port}/api/users/7  # force the canary\n  curl -s -i -H 'x-branch: feature-login' localhost:{port}/api/users/7  # branch; see x-switchyard-served-by\n  curl -s localhost:{port}/api/orders/1 && curl -s localhost:9901/mirror/mismatches  # shadow traffic\n"
        );
    }
    Ok(())
}

/// Serve the echo backend of one service on `listener` forever.
pub async fn backend(listener: TcpListener, service: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let service = service.clone();
        let local = stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let body = echo(&service, &local, &req);
                async move {
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn echo(service: &str, endpoint: &str, req: &Request<Incoming>) -> String {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect();
    let mut s = serde_json::json!({
        "service": service,
        "endpoint": endpoint,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    })
    .to_string();
    s.push('\n');
    s
}
