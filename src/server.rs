//! Listeners and connections: accept, connection limit, TLS handshake (HTTPS
//! listener), hyper's HTTP/1.1 + HTTP/2 server with limits, graceful drain.
//!
//! HTTP/2 is found by the client's connection preface (hyper-util's auto builder): h2
//! over TLS after ALPN `h2`, and h2c with prior knowledge on the plain listener.
//! HTTP/2 limits: at most 256 concurrent streams per connection, the header list
//! bounded by `max_header_bytes` (h2 enforces it while it reads CONTINUATION frames,
//! so a CONTINUATION flood ends in an error instead of unbounded buffering), and
//! rapid-reset protection (CVE-2023-44487): a client that resets more than 50 streams
//! before the server has accepted them gets GOAWAY (ENHANCE_YOUR_CALM).
//!
//! Every connection starts on the gateway's own reader and writer (`h1`), which
//! serves plain HTTP/1.1 requests (`GET`s, and `Content-Length` bodies of up to
//! 64 KiB, read whole; no upgrade) at about half of hyper's cost per request; the
//! first head it does not take, with the bytes read so far, hands the connection to
//! hyper for good (see `h1` for the exact rule and why). An HTTP/2
//! preface is read whole there first, under the header-read timeout, because
//! hyper-util's own preface read has none.
//!
//! Limits come from the snapshot current when the connection is accepted, so a reload
//! changes them for new connections only. The header-read timeout needs a timer on the
//! HTTP/1 builder: without one hyper silently disables it and a slowloris client could
//! hold a connection forever. It is `timer::ConnTimer`, one per connection, which
//! reuses one tokio timer for all request heads of the connection (`TokioTimer` would
//! file a new one in the timer wheel per request); HTTP/2 keeps `TokioTimer`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gateway::Gateway;
use crate::http::headers::X_REQUEST_ID;
use crate::net::Tcp;
use crate::proxy::{self, ClientBody, ConnInfo};

mod h1;
mod timer;

/// The connection limit shared by the listeners: `[server] max_connections` slots.
pub fn connection_limit(gw: &Gateway) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(gw.snapshot().config.server.max_connections))
}

/// Accept connections on `listener` until `shutdown` fires, then stop accepting and
/// ask every open connection to finish its in-flight requests. Connection tasks are
/// tracked by `tracker`; the caller waits on it (with the drain timeout). `limit`
/// holds `max_connections` slots shared by every listener of the process; `tls`
/// makes this the HTTPS listener.
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    tls: Option<TlsAcceptor>,
    limit: Arc<Semaphore>,
) {
    // The connections stop on a token of their own, cancelled here only once the
    // gateway's `draining` flag is set: a connection between requests checks the flag
    // (a load) and has the token only wake it (its own checks take a lock; see
    // `h1::stopping`).
    let connections = CancellationToken::new();
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
        let stop = connections.clone();
        // Each connection's task is boxed: its future is large (about 10 KB, `h1` holds a
        // request's whole pipeline), and tokio moves a pointer as it spawns and polls
        // the task, not the future (unboxed, about 8 copies of it).
        match &tls {
            None => {
                tracker.spawn(Box::pin(async move {
                    let _permit = permit;
                    serve_connection(gw, Tcp(stream), peer, "http", stop).await;
                }));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tracker.spawn(Box::pin(async move {
                    let _permit = permit;
                    // The handshake counts against the header-read timeout: a client
                    // that stalls in it must not hold the slot forever.
                    let limit = gw.snapshot().config.server.header_read_timeout;
                    let stream = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = tokio::time::timeout(limit, acceptor.accept(Tcp(stream))) => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        },
                    };
                    serve_connection(gw, stream, peer, "https", stop).await;
                }));
            }
        }
    }
    // In this order: a connection woken by the token finds the flag set.
    gw.set_draining();
    connections.cancel();
}

/// Serve HTTP/1.1 or HTTP/2 (by the client's preface) on one accepted connection until
/// it ends, or until shutdown asks it to finish its in-flight requests.
///
/// The gateway's own HTTP/1.1 path (`h1`) serves the connection's plain `GET`s first;
/// at the first head it does not take, hyper serves the rest. An HTTP/2 client (prior
/// knowledge, or h2 by ALPN) goes to hyper once `h1` has read its preface whole, under
/// the header-read timeout.
async fn serve_connection<S>(
    gw: Arc<Gateway>,
    mut io: S,
    peer: SocketAddr,
    proto: &'static str,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_info = Arc::new(ConnInfo::new(peer, proto));
    let pre = match h1::serve(&mut io, &gw, &conn_info, &shutdown).await {
        h1::Outcome::Closed => return,
        h1::Outcome::Handoff(pre) => pre,
    };
    let io = TokioIo::new(h1::Rewind::new(pre, io));
    let builder = builder(&gw);
    let svc = service_fn(move |req| {
        let gw = gw.clone();
        let conn_info = conn_info.clone();
        // Boxed for the reason the connection tasks are: the future is about 7 KB, and
        // hyper's HTTP/2 server spawns each stream as its own task (unboxed, tokio
        // copied it about 8 times per request).
        Box::pin(async move {
            let snap = gw.snapshot();
            let req = req.map(ClientBody::Hyper);
            let mut id = http::HeaderValue::from_static("");
            let mut resp = proxy::serve(&gw, snap, &conn_info, req, &mut id, None).await;
            resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
            Ok::<_, Infallible>(resp)
        })
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    // `biased`, the connection first: a connection handed over by `h1` after shutdown
    // began holds a whole head, which hyper must read before it is told to finish
    // (told first, hyper-util's version read would end the connection unanswered).
    tokio::select! {
        biased;
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
}

/// Called once per connection: the HTTP/1 timer holds the connection's timeout state.
fn builder(gw: &Gateway) -> auto::Builder<TokioExecutor> {
    let snap = gw.snapshot();
    let s = &snap.config.server;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(timer::ConnTimer::default())
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
