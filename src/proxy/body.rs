//! Body types of the two legs. Enums instead of boxed trait objects: the common case
//! (stream the peer's body through) costs no allocation.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::observe::access_log::AccessRecord;

/// Request body sent upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// No body (or a retry of a bodiless request).
    Empty,
    /// The client's body, streamed, with a counter of bytes passed for the access log.
    Stream(Incoming, Option<Arc<AtomicU64>>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Stream(inner, counter) => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let (Poll::Ready(Some(Ok(frame))), Some(c)) = (&polled, counter)
                    && let Some(data) = frame.data_ref()
                {
                    c.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Stream(inner, _) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Stream(inner, _) => inner.size_hint(),
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
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Stream(Incoming),
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Some(bytes.into())),
            record: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
            record: None,
        }
    }

    /// The upstream's body, streamed.
    pub fn stream(inner: Incoming) -> Self {
        Self {
            kind: Kind::Stream(inner),
            record: None,
        }
    }

    /// Attach the access-log record; it is written when this body is dropped.
    pub fn set_record(&mut self, record: Box<AccessRecord>) {
        self.record = Some(record);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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
