//! Body types of the two legs. Enums instead of boxed trait objects: the common case
//! (stream the peer's body through) costs no allocation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::observe::access_log::AccessRecord;
use crate::observe::otlp::RequestSpan;
use crate::upstream::pool::PooledBody;

/// Why the client's body stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// More bytes than the route allows.
    TooLarge,
    /// The client paused longer than `body_read_timeout` between two pieces.
    Timeout,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyError::TooLarge => "request body over the limit",
            BodyError::Timeout => "request body stalled",
        })
    }
}

impl std::error::Error for BodyError {}

impl BodyError {
    /// Find a `BodyError` in an error's source chain (the upstream client wraps it).
    pub fn find(mut e: &(dyn std::error::Error + 'static)) -> Option<BodyError> {
        loop {
            if let Some(b) = e.downcast_ref::<BodyError>() {
                return Some(*b);
            }
            e = e.source()?;
        }
    }
}

/// Limits on the client's body: a byte cap and an idle timeout between pieces.
#[derive(Debug)]
pub struct BodyLimits {
    pub max: u64,
    pub idle: Duration,
    seen: u64,
    /// Armed lazily, the first time the client makes us wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl BodyLimits {
    pub fn new(max: u64, idle: Duration) -> Self {
        Self {
            max,
            idle,
            seen: 0,
            timer: None,
        }
    }
}

/// The client's request body as the HTTP server hands it over.
#[derive(Debug)]
pub enum ClientBody {
    /// No body: a request the gateway's own HTTP/1.1 reader took (`server::h1`) with
    /// no `Content-Length` (or a zero one) and no `Transfer-Encoding`.
    Empty,
    /// A small `Content-Length` body that `server::h1` read whole with its head.
    Full(Bytes),
    /// A small `Content-Length` body that stopped coming for `body_read_timeout`
    /// before it was whole (`server::h1`): answered 408 `body_timeout`, as hyper's
    /// path answers a stalled body, and the connection closed.
    Stalled,
    /// hyper's body: every other request (HTTP/2, larger or chunked bodies, upgrades, …).
    Hyper(Incoming),
}

/// Request body sent upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// No body (or a retry of a bodiless request).
    Empty,
    /// The client's body, streamed, with its limits and a counter of bytes passed for
    /// the access log.
    Stream(Incoming, Box<BodyLimits>, Option<Arc<AtomicU64>>),
    /// A buffered body (small bodies, so that a retry can send them again).
    Full(Option<Bytes>),
    /// A body already in memory (`ClientBody::Full`) that the retry policy would not
    /// have buffered: treated as a streamed body is, never retried by the policy,
    /// mirrored or sent to a fallback, so that the policy means the same whichever
    /// HTTP/1.1 reader took the request. Like any request, it is still sent again on a
    /// new connection in the upstream keep-alive race (README, Proxying: when none of
    /// it was written, or its method is safe and no answer had begun).
    Once(Option<Bytes>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl UpstreamBody {
    /// Empty or buffered: can be sent again.
    pub fn resendable(&self) -> bool {
        matches!(self, UpstreamBody::Empty | UpstreamBody::Full(_))
    }

    /// A copy of an empty or buffered body; `None` for a stream.
    pub fn try_clone(&self) -> Option<UpstreamBody> {
        match self {
            UpstreamBody::Empty => Some(UpstreamBody::Empty),
            UpstreamBody::Full(b) => Some(UpstreamBody::Full(b.clone())),
            UpstreamBody::Stream(..) | UpstreamBody::Once(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (inner, limits, counter) = match self.get_mut() {
            UpstreamBody::Stream(inner, limits, counter) => (inner, limits, counter),
            UpstreamBody::Full(b) | UpstreamBody::Once(b) => {
                return Poll::Ready(b.take().map(|b| Ok(Frame::data(b))));
            }
            UpstreamBody::Empty => return Poll::Ready(None),
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    limits.seen += n;
                    if limits.seen > limits.max {
                        return Poll::Ready(Some(Err(Box::new(BodyError::TooLarge))));
                    }
                    if let Some(c) = counter {
                        c.fetch_add(n, Ordering::Relaxed);
                    }
                }
                if let Some(t) = &mut limits.timer {
                    t.as_mut().reset(tokio::time::Instant::now() + limits.idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let idle = limits.idle;
                let timer = limits
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyError::Timeout)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Stream(inner, ..) => inner.is_end_stream(),
            UpstreamBody::Full(b) | UpstreamBody::Once(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Stream(inner, ..) => inner.size_hint(),
            UpstreamBody::Full(b) | UpstreamBody::Once(b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// Response body sent to the client: the upstream's stream or the gateway's own answer.
/// Carries the access-log record, which is written when the body is finished or dropped
/// (client gone), so the log has the real duration and byte count.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    record: Option<Box<AccessRecord>>,
    /// The OTLP span, exported when the body is done.
    span: Option<Box<RequestSpan>>,
    /// The service's concurrency slot, released when the body is done.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A capped copy for the mirror comparison; never delays a frame.
    tee: Option<Box<Tee>>,
}

/// The primary answer's copy for the mirror: sent when the body is complete; dropped
/// (the comparison is skipped) when the client goes away first.
#[derive(Debug)]
pub struct Tee {
    pub collector: crate::policy::mirror::Collector,
    pub status: u16,
    pub headers: Vec<Option<http::HeaderValue>>,
    pub tx: tokio::sync::oneshot::Sender<crate::policy::mirror::Captured>,
    /// The route's mirror slot, shared with the shadow task: the copy counts against
    /// `max_in_flight` as long as either is alive.
    pub slot: std::sync::Arc<tokio::sync::OwnedSemaphorePermit>,
}

impl Tee {
    fn finish(self) {
        let captured = self.collector.finish(self.status, self.headers);
        let _ = self.tx.send(captured);
    }
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Stream(PooledBody),
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Some(bytes.into())),
            record: None,
            span: None,
            permit: None,
            tee: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
            record: None,
            span: None,
            permit: None,
            tee: None,
        }
    }

    /// The upstream's body, streamed.
    pub fn stream(inner: PooledBody) -> Self {
        Self {
            kind: Kind::Stream(inner),
            record: None,
            span: None,
            permit: None,
            tee: None,
        }
    }

    /// Hold a concurrency slot until this body is dropped.
    pub fn set_permit(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        self.permit = Some(permit);
    }

    /// Attach the request's span; it is exported when this body is dropped.
    pub fn set_span(&mut self, span: Box<RequestSpan>) {
        self.span = Some(span);
    }

    /// Copy the body for the mirror comparison as it streams.
    pub fn set_tee(&mut self, tee: Tee) {
        if self.is_end_stream() {
            tee.finish();
        } else {
            self.tee = Some(Box::new(tee));
        }
    }

    /// Attach the access-log record; it is written when this body is dropped.
    pub fn set_record(&mut self, record: Box<AccessRecord>) {
        self.record = Some(record);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(inner) => Pin::new(inner).poll_frame(cx),
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(r)) = (&polled, &mut this.record)
            && let Some(data) = frame.data_ref()
        {
            r.bytes_out += data.len() as u64;
        }
        if this.tee.is_some() {
            match &polled {
                // The shadow task has ended (failed, timed out): nobody will compare.
                Poll::Ready(Some(Ok(_))) if this.tee.as_ref().is_some_and(|t| t.tx.is_closed()) => {
                    this.tee = None;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(data), Some(t)) = (frame.data_ref(), this.tee.as_mut()) {
                        t.collector.push(data);
                    }
                    if this.is_end_stream()
                        && let Some(t) = this.tee.take()
                    {
                        t.finish();
                    }
                }
                Poll::Ready(None) => {
                    if let Some(t) = this.tee.take() {
                        t.finish();
                    }
                }
                // An error: the copy is incomplete; dropping it skips the comparison.
                Poll::Ready(Some(Err(_))) => this.tee = None,
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Stream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(inner) => inner.size_hint(),
        }
    }
}
