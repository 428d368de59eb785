//! Listeners and connections: accept, connection limit, hyper's HTTP/1.1 + HTTP/2
//! server with limits, graceful drain.
//!
//! Limits come from the snapshot current when the connection is accepted, so a reload
//! changes them for new connections only. The header-read timeout needs the `TokioTimer`
//! on the builder: without a timer hyper silently disables it and a slowloris client
//! could hold a connection forever.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gateway::Gateway;
use crate::proxy::{self, ConnInfo};

/// Accept connections on `listener` until `shutdown` fires, then stop accepting and
/// ask every open connection to finish its in-flight requests. Connection tasks are
/// tracked by `tracker`; the caller waits on it (with the drain timeout).
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let max = gw.snapshot().config.server.max_connections;
    let limit = Arc::new(Semaphore::new(max));
    loop {
        // Take a connection slot before accepting: over the limit, clients wait in the
        // kernel's accept queue instead of being accepted and dropped.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: log, back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let conn_info = Arc::new(ConnInfo::new(peer, "http"));
            let builder = builder(&gw);
            let svc = service_fn(move |req| {
                let gw = gw.clone();
                let conn_info = conn_info.clone();
                async move {
                    let snap = gw.snapshot();
                    Ok::<_, Infallible>(proxy::serve(&gw, snap, &conn_info, req).await)
                }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

fn builder(gw: &Gateway) -> auto::Builder<TokioExecutor> {
    let snap = gw.snapshot();
    let s = &snap.config.server;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        .max_buf_size(s.max_header_bytes)
        .max_headers(s.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(s.max_header_bytes as u32)
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(256);
    b
}
