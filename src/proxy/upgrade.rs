//! HTTP/1.1 Upgrade (WebSocket): the request keeps its `Connection: upgrade` and
//! `Upgrade` headers (which the hop-by-hop cleanup removes from every other request),
//! and only when the upstream answers `101 Switching Protocols` are the two
//! connections joined, bytes copied both ways until either side closes or both are
//! idle for `upgrade_idle_timeout`.
//!
//! Any other answer is passed on as an ordinary response and no tunnel is made, and
//! no client byte reaches the upstream before its 101 (Envoy CVE-2024-23326): the
//! client's connection is taken over only after hyper has sent the 101.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Extensions, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::http::headers as fields;
use crate::upstream::pool::PooledBody;

/// A client's upgrade request: HTTP/1.1 with `Connection: upgrade` and `Upgrade: …`.
#[derive(Debug)]
pub struct Requested {
    protocol: HeaderValue,
}

/// Is this an upgrade request? Only HTTP/1.1 has Upgrade.
pub fn requested(parts: &http::request::Parts) -> Option<Requested> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    if !fields::has(&parts.headers, &header::CONNECTION) {
        return None;
    }
    let asks = parts.headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    if !asks {
        return None;
    }
    let protocol = parts.headers.get(header::UPGRADE)?.clone();
    // `Upgrade: h2c` is never tunnelled: the upstream would speak HTTP/2 on a raw
    // tunnel and every later request on it would bypass routing ("h2c smuggling").
    let h2c = protocol.to_str().map_or(true, |v| {
        v.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c"))
    });
    if h2c {
        return None;
    }
    Some(Requested { protocol })
}

impl Requested {
    /// Put back the two headers the hop-by-hop cleanup removed.
    pub fn restore_headers(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.protocol.clone());
    }

    /// Take the client connection's pending upgrade out of the request, so that it
    /// is not sent upstream and can be joined after a 101.
    pub fn take_pending(self, extensions: &mut Extensions) -> Pending {
        Pending {
            downstream: extensions.remove::<OnUpgrade>(),
            protocol: self.protocol,
        }
    }
}

/// The client side of an upgrade, waiting for the upstream's answer.
#[derive(Debug)]
pub struct Pending {
    downstream: Option<OnUpgrade>,
    protocol: HeaderValue,
}

/// After the upstream's answer: on 101, start the tunnel (it runs once hyper has sent
/// the 101 to the client) and return the `Upgrade` value for the client's answer.
/// Otherwise no tunnel: `None`.
pub fn accept(
    pending: Pending,
    resp: &mut Response<PooledBody>,
    idle: Duration,
) -> Option<HeaderValue> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return None;
    }
    let downstream = pending.downstream?;
    let protocol = resp
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or(pending.protocol);
    let upstream = hyper::upgrade::on(resp);
    tokio::spawn(async move {
        let (client, server) = match tokio::try_join!(downstream, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        tunnel(TokioIo::new(client), TokioIo::new(server), idle).await;
    });
    Some(protocol)
}

/// The headers of the client's 101 answer.
pub fn response_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Copy both ways until either side closes, or nothing moved for `idle`.
async fn tunnel<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Active {
        inner: a,
        start,
        last: last.clone(),
    };
    let mut b = Active {
        inner: b,
        start,
        last: last.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            r = &mut copy => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "tunnel ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {
                let moved = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if moved + idle <= Instant::now() {
                    tracing::debug!(?idle, "tunnel idle; closing");
                    return;
                }
            }
        }
    }
}

/// An IO that notes when bytes last moved through it.
struct Active<T> {
    inner: T,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Active<T> {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
