//! HTTP/2 towards `h2c` and `h2` services: one multiplexed connection per endpoint,
//! made on first use and made again once the upstream closed it.
//!
//! The gateway's own pool rather than hyper-util's: hyper-util takes a request's
//! `:authority` from the URI that it also keys its pool and its connector on. Requests
//! therefore went out with the endpoint's address as `:authority` and the client's
//! `Host` as a second field, which RFC 9113 §8.3.1 lets a server reject as malformed
//! (nginx answers 400, "client sent duplicate host header"). Here the connection
//! belongs to the endpoint, and a request's `:authority` is the `Host` the upstream
//! would have seen over HTTP/1.1 (RFC 9113 §8.3.1: an intermediary that converts a
//! request to HTTP/2 takes `:authority` from the original request).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version, header};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::Target;
use super::pool::{PooledBody, UpstreamError};
use crate::http::headers::GatewayFields;
use crate::proxy::body::UpstreamBody;

type Sender = http2::SendRequest<UpstreamBody>;

/// Keep-alive PINGs on the shared connection, also while idle, so that a dead peer is
/// noticed before a request waits on it (hyper closes the connection when a PING is not
/// answered within 20 s).
const PING_EVERY: Duration = Duration::from_secs(20);

/// The HTTP/2 connection of one endpoint (kept in its [`super::pool::IdleList`], so it
/// survives reloads and DNS refreshes as long as the address does).
#[derive(Debug, Default)]
pub struct H2Slot {
    /// The connection and when a request last took it.
    conn: Mutex<Option<(Sender, Instant)>>,
    /// Held while connecting, so concurrent first requests make one connection.
    connecting: tokio::sync::Mutex<()>,
    /// Connection attempts so far: a request that waited for another one's attempt and
    /// finds no connection knows that attempt failed.
    attempts: AtomicU64,
}

impl H2Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Sender, Instant)>> {
        // Nothing is left half-done under this lock.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open connection, if there is one.
    fn get(&self) -> Option<Sender> {
        let mut conn = self.lock();
        match conn.as_mut() {
            Some((tx, used)) if !tx.is_closed() => {
                *used = Instant::now();
                Some(tx.clone())
            }
            _ => {
                *conn = None;
                None
            }
        }
    }

    /// Let go of a connection that no request took for `idle_timeout`, or that the
    /// upstream closed. Requests still in flight on it finish: hyper closes the
    /// connection only when the last of them is done.
    pub(super) fn sweep(&self, idle_timeout: Duration) {
        let mut conn = self.lock();
        if conn
            .as_ref()
            .is_some_and(|(tx, used)| tx.is_closed() || used.elapsed() >= idle_timeout)
        {
            *conn = None;
        }
    }
}

/// The HTTP/2 client of one service. `C` makes the connections: hyper-util's
/// `HttpConnector` (`h2c`) or hyper-rustls's `HttpsConnector` (`h2`, ALPN `h2`).
#[derive(Debug, Clone)]
pub struct H2Pool<C> {
    pub connector: C,
    pub idle_timeout: Duration,
}

impl<C> H2Pool<C>
where
    C: Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    C::Future: Send,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Send `req` (origin-form URI) to `target`. `req` is borrowed as
    /// [`super::UpstreamClient::request`] says.
    pub async fn send(
        &self,
        target: &Target,
        scheme: &Scheme,
        req: &mut Request<UpstreamBody>,
        added: &GatewayFields,
        last: bool,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let req = to_h2(
            super::take_or_copy(req, added, last),
            scheme,
            &target.authority,
        );
        let (mut tx, reused) = self.checkout(target, scheme).await?;
        let resp = match tx.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                // Not sent: the connection closed since it was taken. Once more; the
                // slot no longer hands out a closed connection.
                Some(req) if reused => {
                    let (mut tx, _) = self.checkout(target, scheme).await?;
                    tx.send_request(req).await.map_err(exchange_error)?
                }
                _ => return Err(exchange_error(e.into_error())),
            },
        };
        Ok(resp.map(PooledBody::from))
    }

    /// The endpoint's open connection, or a new one; `true` when it was open already.
    async fn checkout(
        &self,
        target: &Target,
        scheme: &Scheme,
    ) -> Result<(Sender, bool), UpstreamError> {
        let slot = &target.idle.h2;
        if let Some(tx) = slot.get() {
            return Ok((tx, true));
        }
        let seen = slot.attempts.load(Ordering::Acquire);
        let _connecting = slot.connecting.lock().await;
        if let Some(tx) = slot.get() {
            return Ok((tx, true));
        }
        if slot.attempts.load(Ordering::Acquire) != seen {
            // Another request tried while this one waited, and failed: fail with it
            // rather than queue one connect timeout after another.
            return Err(UpstreamError::Connect(std::io::Error::other(
                "the connection a concurrent request was making failed",
            )));
        }
        let tx = self.connect(target, scheme).await;
        slot.attempts.fetch_add(1, Ordering::AcqRel);
        let tx = tx?;
        *slot.lock() = Some((tx.clone(), Instant::now()));
        Ok((tx, false))
    }

    async fn connect(&self, target: &Target, scheme: &Scheme) -> Result<Sender, UpstreamError> {
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(target.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(connect_error)?;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(connect_error)?;
        let io = connector.call(uri).await.map_err(connect_error)?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_while_idle(true)
            .handshake(io)
            .await
            // Only the preface and SETTINGS were written: no request reached the
            // upstream, so this counts as a failed connection (safe to try again).
            .map_err(connect_error)?;
        let addr = target.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(tx)
    }
}

/// A step of making a connection failed: no request has reached the upstream.
fn connect_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> UpstreamError {
    UpstreamError::Connect(std::io::Error::other(e))
}

/// A failed exchange; [`UpstreamError::Refused`] when the upstream reset the stream with
/// REFUSED_STREAM (it did not process it: a retry may send it again, like a failed
/// connection). Any other failure, a GOAWAY included, stays an exchange error: hyper
/// reports streams a GOAWAY left unprocessed with the same error as streams that were
/// processed before the connection broke.
fn exchange_error(e: hyper::Error) -> UpstreamError {
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(h2e) = s.downcast_ref::<::h2::Error>() {
            if h2e.is_reset()
                && h2e.is_remote()
                && h2e.reason() == Some(::h2::Reason::REFUSED_STREAM)
            {
                return UpstreamError::Refused(e);
            }
            break;
        }
        source = s.source();
    }
    UpstreamError::Exchange(e)
}

/// `req` as an HTTP/2 request: absolute URI with `:authority` from `Host` (the
/// endpoint's when there is none), and no `Host` field beside it.
fn to_h2(
    mut req: Request<UpstreamBody>,
    scheme: &Scheme,
    endpoint: &Authority,
) -> Request<UpstreamBody> {
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| endpoint.clone());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<UpstreamBody> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(UpstreamBody::Empty).expect("request")
    }

    #[test]
    fn authority_comes_from_host_and_host_is_dropped() {
        let ep = Authority::from_static("10.0.0.5:8080");
        let r = to_h2(req("/a/b?x=1", Some("api.example.com")), &Scheme::HTTP, &ep);
        assert_eq!(r.uri().to_string(), "http://api.example.com/a/b?x=1");
        assert!(r.headers().get(header::HOST).is_none());
        assert_eq!(r.version(), Version::HTTP_2);
    }

    #[test]
    fn without_a_usable_host_the_endpoint_is_the_authority() {
        let ep = Authority::from_static("10.0.0.5:8080");
        let r = to_h2(req("/p", None), &Scheme::HTTPS, &ep);
        assert_eq!(r.uri().to_string(), "https://10.0.0.5:8080/p");
        let r = to_h2(req("/p", Some("bad host")), &Scheme::HTTP, &ep);
        assert_eq!(r.uri().to_string(), "http://10.0.0.5:8080/p");
        assert!(r.headers().get(header::HOST).is_none());
    }
}
