//! The admin API (axum), on `[listen] admin` — loopback unless configured otherwise.
//!
//! Read-only endpoints are open to whoever reaches the port (keep it internal: the
//! Kubernetes manifests add a NetworkPolicy). Anything that changes state needs
//! `Authorization: Bearer $SWITCHYARD_ADMIN_TOKEN`; without that variable set, state
//! changes are refused outright rather than left open.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::model::{Action, PathMatch};
use crate::gateway::Gateway;
use crate::reload::{self, Outcome};

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub gw: Arc<Gateway>,
    pub config_path: PathBuf,
    /// Bearer token for state changes; `None`: they are refused.
    pub token: Option<Arc<str>>,
}

/// The admin router; also used by tests without a socket (`oneshot`).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/routes", get(routes))
        .route("/upstreams", get(upstreams))
        .route("/mirror/mismatches", get(mismatches))
        .route("/certificates", get(certificates))
        .route("/metrics", get(metrics))
        .route("/reload", post(reload_handler))
        .route("/openapi.json", get(openapi))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(state)
}

/// Serve the admin API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "admin API stopped");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.gw.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn routes(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let snap = s.gw.snapshot();
    let c = &snap.config;
    let routes: Vec<serde_json::Value> = c
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (kind, path) = match &r.path {
                PathMatch::Exact(p) => ("exact", p),
                PathMatch::Prefix(p) => ("prefix", p),
            };
            let action = match &r.action {
                Action::Forward(f) => json!({
                    "backends": f.backends.iter().map(|b| json!({
                        "service": c.services[b.service].name, "weight": b.weight
                    })).collect::<Vec<_>>(),
                    "timeout_ms": f.timeout.unwrap_or(c.defaults.request_timeout).as_millis() as u64,
                    "canary": policy_json(&snap, i, f),
                    "mirror": f.policy.as_ref().and_then(|p| p.mirror.as_ref()).map(|m| json!({
                        "service": c.services[m.service].name,
                        "percent": f64::from(m.per_10000) / 100.0,
                        "compare": m.compare,
                    })),
                }),
                Action::Redirect(rd) => json!({ "redirect": rd.status }),
            };
            json!({
                "name": r.name,
                "host": r.host.as_ref().map(|h| h.to_string()),
                kind: path,
                "methods": r.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                "action": action,
            })
        })
        .collect();
    let loaded_at = time::OffsetDateTime::from(snap.loaded_at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Json(json!({ "hash": snap.hash, "loaded_at": loaded_at, "routes": routes }))
}

/// A route's canary: weight, stickiness and the guard's state.
fn policy_json(
    snap: &crate::snapshot::Snapshot,
    route: usize,
    f: &crate::config::model::Forward,
) -> serde_json::Value {
    let Some(p) = &f.policy else {
        return serde_json::Value::Null;
    };
    let Some(c) = &p.canary else {
        return serde_json::Value::Null;
    };
    let guard = snap.guards[route].as_ref();
    let totals = guard.map(|g| g.totals());
    json!({
        "service": snap.config.services[f.backends[c.canary].service].name,
        "weight": f64::from(f.backends[c.canary].weight) / 100.0,
        "sticky": p.sticky.as_ref().map(|s| match s {
            crate::policy::Sticky::Key(k) => k.to_string(),
            crate::policy::Sticky::Cohort => "cohort".to_string(),
        }),
        "tripped": guard.is_some_and(|g| g.tripped()),
        "guard": totals.map(|(canary, canary_5xx, main, main_5xx)| json!({
            "canary_requests": canary, "canary_5xx": canary_5xx,
            "main_requests": main, "main_5xx": main_5xx,
        })),
    })
}

async fn mismatches(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let snap = s.gw.snapshot();
    Json(json!({ "mismatches": snap.mismatches.list() }))
}

async fn upstreams(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let snap = s.gw.snapshot();
    let services: Vec<serde_json::Value> = snap
        .config
        .services
        .iter()
        .zip(&snap.upstreams)
        .map(|(svc, up)| {
            json!({
                "name": svc.name,
                "configured": svc.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                "addresses": up.targets().iter().map(|t| t.addr.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "services": services }))
}

/// The certificates in service on the HTTPS listener: names, expiry, days left.
async fn certificates(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let table = s.gw.certs.table();
    let default = table.default_index();
    let certs: Vec<serde_json::Value> = table
        .certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let not_after = time::OffsetDateTime::from_unix_timestamp(c.not_after)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                });
            json!({
                "cert": c.cert_path.display().to_string(),
                "key": c.key_path.display().to_string(),
                "names": c.names,
                "not_after": not_after,
                "days_left": c.days_left(),
                "default": default == Some(i),
            })
        })
        .collect();
    Json(json!({ "certificates": certs }))
}

async fn metrics(State(s): State<AdminState>) -> Response {
    // Endpoint counts change with DNS between reloads: refresh them at scrape time.
    let snap = s.gw.snapshot();
    for up in &snap.upstreams {
        s.gw.metrics.endpoints(&up.name, up.len());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.gw.metrics.encode(),
    )
        .into_response()
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timing.
fn token_matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `None` when the request may change state, else the refusal to send.
fn refusal(s: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &s.token else {
        return Some(
            (
                StatusCode::FORBIDDEN,
                Json(json!({"error": "admin_token_not_configured",
                        "detail": "set SWITCHYARD_ADMIN_TOKEN to allow state changes"})),
            )
                .into_response(),
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if token_matches(token, g) => None,
        _ => Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"error": "unauthorized"})),
            )
                .into_response(),
        ),
    }
}

async fn reload_handler(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(resp) = refusal(&s, &headers) {
        return resp;
    }
    match reload::reload(&s.gw, &s.config_path).await {
        Outcome::Reloaded { hash } => {
            Json(json!({"result": "reloaded", "hash": hash})).into_response()
        }
        Outcome::Unchanged => {
            // Like SIGHUP: the certificates are read again even when the table is not.
            s.gw.reload_certificates();
            Json(json!({"result": "unchanged", "hash": s.gw.snapshot().hash})).into_response()
        }
        Outcome::Rejected(detail) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"result": "rejected", "errors": detail})),
        )
            .into_response(),
    }
}

/// The public keys of the gateway-minted identity tokens (current, then previous);
/// an empty set when `[identity]` is not configured.
async fn jwks(State(s): State<AdminState>) -> Response {
    let snap = s.gw.snapshot();
    let body = match &snap.auth.minter {
        Some(m) => m.jwks(),
        None => json!({ "keys": [] }),
    };
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("admin/openapi.json"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("abc", "ab"));
        assert!(!token_matches("abc", ""));
    }

    #[test]
    fn openapi_document_is_json_and_lists_every_route() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("admin/openapi.json")).expect("valid JSON");
        for path in [
            "/healthz",
            "/readyz",
            "/routes",
            "/upstreams",
            "/mirror/mismatches",
            "/metrics",
            "/reload",
            "/openapi.json",
            "/.well-known/jwks.json",
        ] {
            assert!(
                v["paths"].get(path).is_some(),
                "{path} missing from openapi.json"
            );
        }
    }
}
