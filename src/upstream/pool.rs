//! The HTTP/1.1 connection pool of a plain-TCP service (`protocol = "http1"`, the
//! default), on hyper's low-level `client::conn::http1`.
//!
//! Why not hyper-util's legacy `Client` here: on the e2e benchmark it was about 17 % of
//! the gateway's user-space instructions per request (callgrind): a pool keyed by
//! (scheme, authority) and hashed with SipHash at checkout and again at checkin, a boxed
//! future per request, absolute-form URIs rebuilt per request, an `HttpInfo` extension
//! per response. Here every endpoint ([`Target`](super::Target)) owns its idle list,
//! reached without hashing, and the request goes out in origin form as it is.
//! (`h2c`, `h2` and `https` services keep the legacy client: one shared HTTP/2
//! connection, or TLS.)
//!
//! Requests without a streamed body and without an upgrade (nearly all of them) do not
//! go through hyper's client at all: [`super::h1`] writes them and reads the answer on
//! the request's own task, with connections kept in a second idle list. Streamed
//! uploads and upgrades use hyper's `client::conn::http1`, described below.
//!
//! Reuse rules, which are what make a keep-alive pool safe:
//! - A connection goes back to its idle list only when the client side has read the
//!   upstream's whole answer ([`PooledBody`] saw its end) and hyper is done with the
//!   request too (an upstream may answer before it has read the whole upload). An answer
//!   that was not read to the end (the client went away, a timeout) drops the
//!   connection: hyper closes it.
//! - An answer to an upgrade (101) never goes back: the connection became a tunnel.
//! - hyper keeps reading an idle connection, so one the upstream closed is noticed and
//!   skipped at checkout. When a reused connection closed at that very moment (the
//!   keep-alive race), a request that could not be written, or a safe one that got no
//!   byte of an answer, is sent once more on a new connection
//!   ([`super::h1::ExchangeError::Resend`]); other written requests are sent again only
//!   by the retry policy in `proxy::forward`.
//! - The idle lists are LIFO (the warmest connection first) and each holds at most
//!   `pool_max_idle` connections per endpoint (one list for [`super::h1`]'s
//!   connections, one for hyper's, which only streamed uploads and upgrades use);
//!   connections idle for longer than
//!   `pool_idle_timeout` are closed at checkout and by [`spawn_sweeper`].

use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::h1::{self, Conn, ExchangeError, RawBody, RawConn};
use super::h2::H2Slot;
use super::{Target, Upstream};
use crate::http::headers::GatewayFields;
use crate::proxy::body::UpstreamBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

type Sender = http1::SendRequest<UpstreamBody>;

/// The idle connections of one endpoint: hyper's and [`h1`]'s, and the shared HTTP/2
/// connection of `h2c` and `h2` services.
#[derive(Debug, Default)]
pub struct IdleList {
    hyper: Stack<Sender>,
    raw: Stack<RawConn>,
    pub(super) h2: H2Slot,
}

impl IdleList {
    /// Close the connections idle for `idle_timeout` or more, and those the upstream
    /// closed.
    fn sweep(&self, idle_timeout: Duration) {
        self.hyper.sweep(idle_timeout);
        self.raw.sweep(idle_timeout);
        self.h2.sweep(idle_timeout);
    }

    /// Give back an [`h1`] connection whose answer was read to its end.
    pub(super) fn put_raw(&self, conn: RawConn, max_idle: usize) {
        self.raw.put(conn, max_idle);
    }
}

/// A connection an idle list can hold.
trait Reusable {
    /// Still usable: the upstream has not closed it (nor sent anything unasked).
    fn usable(&self) -> bool;
}

impl Reusable for Sender {
    fn usable(&self) -> bool {
        !self.is_closed()
    }
}

impl Reusable for RawConn {
    fn usable(&self) -> bool {
        self.is_usable()
    }
}

/// A reading of the monotonic clock at the kernel's tick (`CLOCK_MONOTONIC_COARSE`,
/// through `coarsetime`: a few milliseconds of resolution, read without the TSC), for
/// the age of an idle connection, where milliseconds do not matter. The pool's put
/// and take were two of the ten clock readings of a proxied request (callgrind); on a
/// VM whose clock is `kvm-clock` or `xen` a precise reading costs more still.
/// `now_without_cache_update`: `coarsetime::Instant::now` also writes a process-wide
/// atomic, one cache line that every worker thread would then write.
#[derive(Debug, Clone, Copy)]
struct Tick(coarsetime::Instant);

impl Tick {
    fn now() -> Tick {
        Tick(coarsetime::Instant::now_without_cache_update())
    }

    fn elapsed(self) -> Duration {
        // Saturating: never negative.
        (coarsetime::Instant::now_without_cache_update() - self.0).into()
    }
}

/// Idle connections of one kind with the time each was put back, newest last.
#[derive(Debug)]
struct Stack<T> {
    conns: Mutex<Vec<(T, Tick)>>,
}

impl<T> Default for Stack<T> {
    fn default() -> Self {
        Stack {
            conns: Mutex::new(Vec::new()),
        }
    }
}

impl<T: Reusable> Stack<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(T, Tick)>> {
        // Nothing here can panic half-way through an update.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest usable connection, if any; stale ones met on the way are closed.
    fn take(&self, idle_timeout: Duration) -> Option<T> {
        loop {
            // The check may make a system call: not under the lock.
            let (conn, since) = self.lock().pop()?;
            if since.elapsed() < idle_timeout && conn.usable() {
                return Some(conn);
            }
        }
    }

    /// Keep `conn` unless `max_idle` are kept already. The callers give back only
    /// connections that are ready for the next request.
    fn put(&self, conn: T, max_idle: usize) {
        let mut conns = self.lock();
        if conns.len() < max_idle {
            conns.push((conn, Tick::now()));
        }
    }

    fn sweep(&self, idle_timeout: Duration) {
        self.lock()
            .retain(|(conn, since)| since.elapsed() < idle_timeout && conn.usable());
    }
}

/// How a service's HTTP/1.1 connections are made and kept.
#[derive(Debug, Clone)]
pub struct H1Pool {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

/// Why an exchange with the upstream failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection: refused, unreachable, or not within `connect_timeout`.
    Connect(std::io::Error),
    /// The connection broke or the answer was not valid HTTP (hyper's error).
    Exchange(hyper::Error),
    /// The same, met by the gateway's own exchange ([`h1`]).
    Io(std::io::Error),
    /// From the legacy client (`https` services).
    Legacy(hyper_util::client::legacy::Error),
    /// An HTTP/2 upstream reset the stream with REFUSED_STREAM: it did not process the
    /// request (RFC 9113 §8.7), so the request may go again whatever its method.
    Refused(hyper::Error),
}

impl UpstreamError {
    /// True when the request never reached the upstream (connecting failed): safe to
    /// send again whatever the method.
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Refused(_) => true,
            UpstreamError::Exchange(_) | UpstreamError::Io(_) => false,
            UpstreamError::Legacy(e) => e.is_connect(),
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect: {e}"),
            UpstreamError::Exchange(e) => write!(f, "{e}"),
            UpstreamError::Io(e) => write!(f, "{e}"),
            UpstreamError::Legacy(e) => write!(f, "{e}"),
            UpstreamError::Refused(e) => write!(f, "refused, not processed: {e}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Connect(e) => Some(e),
            UpstreamError::Exchange(e) => Some(e),
            UpstreamError::Io(e) => Some(e),
            UpstreamError::Legacy(e) => Some(e),
            UpstreamError::Refused(e) => Some(e),
        }
    }
}

impl H1Pool {
    /// Send `req` (origin-form URI) to `target` on an idle connection, or a new one.
    /// `req` is borrowed as [`super::UpstreamClient::request`] says.
    pub async fn send(
        &self,
        target: &Target,
        req: &mut Request<UpstreamBody>,
        added: &GatewayFields,
        last: bool,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        if h1::eligible(req) {
            return self.exchange(target, req, added).await;
        }
        let mut req = super::take_or_copy(req, added, last);
        // The endpoint's own authority, on this try's copy only: another try may go to
        // another endpoint.
        if !req.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(target.authority.as_str())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        let mut reused = true;
        let mut tx = loop {
            let Some(tx) = target.idle.hyper.take(self.idle_timeout) else {
                reused = false;
                break self.connect(target).await?;
            };
            // Only ready connections are put back, so one that is not ready any more
            // has been closed meanwhile.
            if tx.is_ready() {
                break tx;
            }
        };
        let resp = match tx.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                // Not written: the reused connection closed under us. Once more, new.
                Some(req) if reused => {
                    tx = self.connect(target).await?;
                    tx.send_request(req)
                        .await
                        .map_err(UpstreamError::Exchange)?
                }
                _ => return Err(UpstreamError::Exchange(e.into_error())),
            },
        };
        // After a 101 the connection is the tunnel's.
        let keep = resp.status() != StatusCode::SWITCHING_PROTOCOLS;
        let checkin = keep.then(|| Checkin {
            idle: target.idle.clone(),
            tx,
            max_idle: self.max_idle,
        });
        Ok(resp.map(|inner| PooledBody {
            kind: PooledKind::Hyper {
                inner,
                checkin,
                eof: false,
            },
        }))
    }

    /// Send a request without a streamed body through [`h1`].
    async fn exchange(
        &self,
        target: &Target,
        req: &Request<UpstreamBody>,
        added: &GatewayFields,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let (mut conn, mut reused) = match target.idle.raw.take(self.idle_timeout) {
            Some(conn) => (conn, true),
            None => (Conn::new(self.connect_tcp(target).await?), false),
        };
        loop {
            let checkin = h1::Checkin {
                idle: target.idle.clone(),
                max_idle: self.max_idle,
            };
            let host = target.authority.as_str();
            return match h1::exchange(conn, req, added, host, reused, checkin).await {
                Ok(resp) => Ok(resp.map(PooledBody::raw)),
                // A reused connection the upstream had closed (the keep-alive race; see
                // `ExchangeError::Resend`): once more, on a new connection, which cannot
                // end this way again. Any other failure of a written request is the
                // retry policy's call, in `proxy::forward`.
                Err(ExchangeError::Resend(_)) => {
                    conn = Conn::new(self.connect_tcp(target).await?);
                    reused = false;
                    continue;
                }
                Err(ExchangeError::Failed(e)) => Err(UpstreamError::Io(e)),
            };
        }
    }

    async fn connect(&self, target: &Target) -> Result<Sender, UpstreamError> {
        let stream = self.connect_tcp(target).await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Exchange)?;
        let addr = target.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    async fn connect_tcp(&self, target: &Target) -> Result<TcpStream, UpstreamError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(target.addr)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
                Err(_) => {
                    return Err(UpstreamError::Connect(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    )));
                }
            };
        // Small requests and answers go out at once, not after a delayed ACK.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// The connection to give back once the answer has been read to its end.
#[derive(Debug)]
struct Checkin {
    idle: Arc<IdleList>,
    tx: Sender,
    max_idle: usize,
}

/// The upstream's answer body. When it has been read to its end (or it had none), its
/// connection goes back to the endpoint's idle list.
#[derive(Debug)]
pub struct PooledBody {
    kind: PooledKind,
}

#[derive(Debug)]
enum PooledKind {
    /// From hyper's client; goes back as this body is dropped.
    Hyper {
        inner: Incoming,
        checkin: Option<Checkin>,
        eof: bool,
    },
    /// From [`h1`]; goes back as its end is read.
    Raw(RawBody),
}

impl From<Incoming> for PooledBody {
    /// A body whose connection is not pooled here (the legacy client pools its own).
    fn from(inner: Incoming) -> Self {
        PooledBody {
            kind: PooledKind::Hyper {
                inner,
                checkin: None,
                eof: false,
            },
        }
    }
}

impl PooledBody {
    fn raw(body: RawBody) -> Self {
        PooledBody {
            kind: PooledKind::Raw(body),
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            PooledKind::Raw(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map_err(BoxError::from),
            PooledKind::Hyper {
                inner,
                checkin,
                eof,
            } => {
                let polled = std::pin::Pin::new(inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => *eof = true,
                    // A broken answer: the connection is not reused.
                    Poll::Ready(Some(Err(_))) => *checkin = None,
                    _ => {}
                }
                polled.map_err(BoxError::from)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            PooledKind::Raw(body) => body.is_end_stream(),
            PooledKind::Hyper { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            PooledKind::Raw(body) => body.size_hint(),
            PooledKind::Hyper { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let PooledKind::Hyper {
            inner,
            checkin,
            eof,
        } = &mut self.kind
        else {
            return;
        };
        let Some(mut c) = checkin.take() else {
            return;
        };
        if !(*eof || inner.is_end_stream()) {
            return;
        }
        if c.tx.is_ready() {
            // The usual case: hyper finished the exchange as it delivered the end.
            c.idle.hyper.put(c.tx, c.max_idle);
        } else if !c.tx.is_closed()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // The upstream answered before it read the whole request body (a 413, a
            // 401): the connection is free once hyper has sent the rest. Waiting for
            // that here, not at checkout, keeps the next request from queueing behind
            // a slow upload.
            rt.spawn(async move {
                if c.tx.ready().await.is_ok() {
                    c.idle.hyper.put(c.tx, c.max_idle);
                }
            });
        }
    }
}

/// Close idle connections past `idle_timeout` every so often, for as long as `up` lives
/// (an endpoint that sees no more requests would otherwise keep its idle connections
/// until the upstream closes them).
pub fn spawn_sweeper(up: Weak<Upstream>, idle_timeout: Duration) {
    let every = (idle_timeout / 2).max(Duration::from_secs(1));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(up) = up.upgrade() else { return };
            for t in up.targets().iter() {
                t.idle.sweep(idle_timeout);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_measures_idle_time_to_the_kernels_tick() {
        let t = Tick::now();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
        let later = t.elapsed();
        // The coarse clock moves once per kernel tick (at most 10 ms) at either end.
        assert!(
            later >= Duration::from_millis(80) && later < Duration::from_secs(60),
            "{later:?}"
        );
    }
}
