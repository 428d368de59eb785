//! The gateway's own reader and writer for the common HTTP/1.1 requests: a `GET` in
//! origin form with no body, or a `POST`, `PUT`, … with a small `Content-Length` body,
//! on a keep-alive connection. Everything else is handed to hyper, with the bytes read
//! so far, for the rest of the connection.
//!
//! Why: hyper's HTTP/1 server is about 8,300 of the 27,000 user-space instructions a
//! proxied small `GET` costs (`PROXIES=switchyard benches/e2e/instructions.sh`,
//! callgrind: its read, parse, dispatch and encode passes, the auto builder's rewind
//! and a second dispatch pass per request for the header-read timeout). This path
//! reads the head with `httparse` (hyper's parser), builds the request with header
//! values that share the read buffer (as hyper does), and writes the answer's head and
//! a small body in one `write`.
//!
//! What it takes, and what it leaves to hyper. It takes a head only when all of these
//! hold; otherwise the connection goes to hyper, which then answers exactly as before
//! (including every 400, 414 or 431 it gives for a bad head):
//! - `httparse` parses it completely, within `max_header_bytes` and
//!   `min(max_headers, 64)` fields;
//! - the method is `GET`, `POST`, `PUT`, `PATCH`, `DELETE` or `OPTIONS` (not `HEAD`,
//!   whose answer has a length and no body), the version HTTP/1.1, the target starts
//!   with `/`;
//! - no `Transfer-Encoding`, `Expect`, `Upgrade` or `TE` field, and `Connection` names
//!   nothing but `keep-alive` and `close`;
//! - at most one `Content-Length`, a plain decimal number of at most `BODY_MAX` (64 KiB)
//!   bytes. The body is read whole before the request is served (`read_body`), with
//!   at most `body_read_timeout` between two pieces, as hyper's path allows a streamed
//!   body; one that stops coming is answered 408 `body_timeout` by the proxy and the
//!   connection closed; a client that closes mid-body goes to hyper with what came,
//!   which answers as it always did;
//! - the name, value and target pass `http`'s own checks.
//!
//! The body, read whole, goes on as `ClientBody::Full`; the proxy sends it once, or
//! keeps it for a retry exactly when the retry policy would have buffered a streamed
//! body of that size (`retry.buffer_body`), so the two readers behave alike. No chunked
//! body, no upgrade, no `100-continue` and no trailers (only sent to a client that asks
//! with `TE: trailers`) are ever handled here; HTTP/2 prefaces fail the parse and go to
//! hyper's auto builder.
//!
//! One more kind of head is taken, to be refused: framing two parsers could read
//! differently, `Content-Length` with `Transfer-Encoding`, or more than one
//! `Content-Length` value (two fields, or a list, identical or not). The request goes
//! to the proxy with no body, whose framing check answers 400 `bad_framing` with
//! `connection: close`, and the bytes behind the head are never read (DESIGN.md,
//! request smuggling). hyper would read the first as chunked and drop
//! `Content-Length`, and fold identical lengths into one. That holds for every head
//! this path reads, which is each head of a connection up to the first one hyper
//! takes over; from there hyper's rules apply (chunked only, then close).
//!
//! The answer is framed as hyper frames it: `content-length` from the body's exact
//! size or the upstream's `Content-Length`, else `transfer-encoding: chunked`; none for
//! 204 and 304; a `date` field unless the answer has one; `connection: close` when the
//! client asked for it or the gateway is shutting down. A body that ends short of its
//! length, or fails, ends the connection. Limits as in hyper: the header-read timeout
//! runs from the end of the previous answer (or the accept) until a head is complete,
//! with one tokio timer per connection; at shutdown a connection with nothing of a
//! next request read is closed at once, a request in flight is answered first (with
//! `connection: close`), and a partly read head has until its header-read timeout;
//! a client that goes away while its request is in flight cancels it.

use std::future::{Future, poll_fn};
use std::io::{self, Write as _};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::gateway::Gateway;
use crate::http::head::{FieldAt, Span, parse_length};
use crate::http::headers::{X_REQUEST_ID, push_field};
use crate::proxy::body::ResponseBody;
use crate::proxy::{self, ClientBody, ConnInfo};
use crate::resilience::deadline::Timer;

/// The most header fields this path parses; a head with more goes to hyper, which
/// applies `max_headers` itself. 64 × 32 bytes of (uninitialised) stack per parse.
const MAX_FIELDS: usize = 64;
/// Free space the read buffer keeps before each read.
const READ_SPACE: usize = 4096;
/// Body pieces up to this size are copied behind the head in one buffer (written once
/// it holds this much); larger ones are written from their own memory. Keeps the
/// buffer, which lives as long as the connection, small.
const COPY_MAX: usize = 4096;
/// The largest `Content-Length` body this path reads (whole, with its head, before the
/// request is served); a larger one goes to hyper, which streams it. The upstream
/// client sends bodies up to the same size with the head in one write
/// (`upstream::h1::MAX_INLINE_BODY`).
const BODY_MAX: usize = crate::upstream::h1::MAX_INLINE_BODY;
/// What an HTTP/2 client with prior knowledge sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long an orderly close (FIN, TLS close_notify) may take after a last answer.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How [`serve`] ended.
pub(super) enum Outcome {
    /// The connection is finished: closed by the client, timed out, shut down, or
    /// answered with `connection: close`.
    Closed,
    /// A head this path does not take: hyper serves the rest of the connection,
    /// starting with these bytes (already read from the socket).
    Handoff(Bytes),
}

/// The connection's limits, read from the snapshot current at accept (as hyper's
/// builder does).
struct Limits {
    header_read_timeout: Duration,
    /// The longest pause between two pieces of a body read here (`body_read_timeout`,
    /// as hyper's path applies it to a streamed body).
    body_read_timeout: Duration,
    max_header_bytes: usize,
    max_fields: usize,
}

/// Whether shutdown has begun, for a connection waiting for its next head.
///
/// The token's own checks take its lock (its `is_cancelled`, and every poll of its
/// `cancelled` future, which also re-files the waker under the waiters' lock): 6
/// atomic read-modify-writes per request. `server::serve` cancels the connections'
/// token only after it has set the gateway's `draining` flag, so a load of the flag
/// answers, and `cancelled` is polled once, to file this task's waker; the
/// cancellation wakes the task, which then sees the flag.
fn stopping(
    gw: &Gateway,
    cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
    watching: &mut bool,
    cx: &mut Context<'_>,
) -> bool {
    if gw.is_draining() {
        return true;
    }
    if *watching {
        return false;
    }
    *watching = true;
    cancelled.poll(cx).is_ready()
}

/// Serve requests on `io` until the connection ends or a head needs hyper.
pub(super) async fn serve<I>(
    io: &mut I,
    gw: &Gateway,
    conn: &ConnInfo,
    shutdown: &CancellationToken,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let limits = {
        let snap = gw.snapshot();
        let s = &snap.config.server;
        Limits {
            header_read_timeout: s.header_read_timeout,
            body_read_timeout: s.body_read_timeout,
            max_header_bytes: s.max_header_bytes,
            max_fields: s.max_headers.min(MAX_FIELDS),
        }
    };
    let mut buf = BytesMut::with_capacity(READ_SPACE);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    // The last answer's header map, emptied: the next request's fields go into it, so a
    // request costs no map allocation and no growth when the gateway adds its fields
    // (hyper keeps its answer's map for the next head in the same way).
    let mut spare = HeaderMap::with_capacity(16);
    // The header-read timer is re-armed lazily: each head gets its own `due`, but the
    // timer keeps the deadline it has until it fires, and is moved to `due` then if
    // that is still ahead. Moving it for every request (`Sleep::reset`: the deadline's
    // conversion to a timer tick and an atomic update of the entry) cost about 95
    // instructions per request; now it moves at most once per timeout period.
    let mut head_sleep = pin!(tokio::time::sleep(limits.header_read_timeout));
    let ahead = head_sleep.deadline();
    let mut head_timer = Timer::new(head_sleep.as_mut());
    let mut cancelled = pin!(shutdown.cancelled());
    // Whether `cancelled` has been polled once, and so holds this task's waker.
    let mut watching = false;
    // The route timeout's timer, reused by each request in turn
    // (`resilience::deadline`). Made a day ahead, so that the first request moves it
    // earlier before it is ever filed in the timer wheel: made already due, it would
    // be filed and fired on its first poll and filed again for the first request's
    // deadline (one more pass under the time driver's lock per connection). Taken from
    // the head timer's deadline, so it costs no clock reading of its own.
    let ahead = ahead
        .checked_add(Duration::from_secs(86_400))
        .unwrap_or(ahead);
    let mut route_sleep = pin!(tokio::time::sleep_until(ahead));
    let mut route_timer = Timer::new(route_sleep.as_mut());
    loop {
        let due = tokio::time::Instant::now() + limits.header_read_timeout;
        // How much of `buf` an earlier parse found to be an incomplete head: the head is
        // parsed again only once new bytes may end it, so a head sent in many small
        // pieces costs linear time, not quadratic (hyper does the same).
        let mut scanned = 0;
        // The head's body stopped coming for `body_read_timeout`: the request is
        // built with a stalled body, which the proxy answers 408.
        let mut stalled = false;
        let (req, client_close) = loop {
            if buf.len() > scanned {
                if parse_due(&buf, scanned) {
                    match parse(&mut buf, &limits, &mut spare, stalled) {
                        Parsed::Request(req, close) => break (req, close),
                        Parsed::Partial => {}
                        Parsed::NeedBody(total) => {
                            match read_body(io, &mut buf, total, limits.body_read_timeout).await {
                                BodyRead::Complete => {}
                                BodyRead::Stalled => stalled = true,
                                // hyper gets the head and what came of the body, and
                                // answers the early end as it always did.
                                BodyRead::Ended => return Outcome::Handoff(buf.freeze()),
                            }
                            // Parsed again, with the whole body behind the head or
                            // (stalled) to be answered 408.
                            continue;
                        }
                        Parsed::NotTaken => return Outcome::Handoff(buf.freeze()),
                        Parsed::Rebuilt(bytes) => return Outcome::Handoff(bytes),
                    }
                }
                if buf.len() >= limits.max_header_bytes {
                    // hyper answers 431 at once.
                    return Outcome::Handoff(buf.freeze());
                }
                scanned = buf.len();
            }
            if buf.capacity() - buf.len() < READ_SPACE / 2 {
                buf.reserve(READ_SPACE);
            }
            let read = poll_fn(|cx| {
                if let Poll::Ready(r) = poll_read(io, cx, &mut buf) {
                    return Poll::Ready(Some(r));
                }
                if head_timer.passed(due, cx)
                    || buf.is_empty() && stopping(gw, cancelled.as_mut(), &mut watching, cx)
                {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            match read {
                Some(Ok(n)) if n > 0 => {}
                // End of stream, a socket error, the header-read timeout, or shutdown
                // with nothing of a next request read: close, as hyper does.
                _ => return Outcome::Closed,
            }
        };
        // Pinned here, where it is made: moving the request's future (several KiB)
        // into `serve_watching` would copy it.
        let mut request_id = HeaderValue::from_static("");
        let served = {
            let serving = pin!(proxy::serve(
                gw,
                gw.snapshot(),
                conn,
                req,
                &mut request_id,
                Some(&mut route_timer)
            ));
            serve_watching(io, &mut buf, serving).await
        };
        let Some(resp) = served else {
            return Outcome::Closed;
        };
        let close = client_close || gw.is_draining();
        match write_response(io, &mut out, resp, Some(&request_id), close, &mut spare).await {
            Ok(true) => {}
            Ok(false) => {
                // An orderly end, as hyper's: a FIN, and TLS's close_notify.
                let _ = tokio::time::timeout(CLOSE_WAIT, io.shutdown()).await;
                return Outcome::Closed;
            }
            Err(_) => return Outcome::Closed,
        }
        if out.capacity() > 4 * COPY_MAX {
            out = Vec::with_capacity(512);
        }
        // A body made the read buffer large: an idle keep-alive connection goes back to
        // a small one (the large one is freed with the last piece of the request).
        if buf.is_empty() && buf.capacity() > 4 * READ_SPACE {
            buf = BytesMut::with_capacity(READ_SPACE);
        }
    }
}

/// Run `serve` while watching the connection, as hyper does: a client that goes away
/// (end of stream or an error before anything more was read) drops the request, which
/// cancels the upstream call and frees its slots; `None` then. Bytes that arrive are
/// kept in `buf` (the next pipelined head) and end the watch.
async fn serve_watching<I, F>(
    io: &mut I,
    buf: &mut BytesMut,
    mut serve: Pin<&mut F>,
) -> Option<F::Output>
where
    I: AsyncRead + Unpin,
    F: Future,
{
    let mut watching = buf.is_empty();
    poll_fn(|cx| {
        if let Poll::Ready(out) = serve.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if watching {
            if buf.capacity() == buf.len() {
                buf.reserve(READ_SPACE);
            }
            match poll_read(io, cx, buf) {
                Poll::Ready(Ok(n)) if n > 0 => watching = false,
                Poll::Ready(_) => return Poll::Ready(None),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Whether `buf`, of which the first `scanned` bytes were found to be an incomplete
/// head, is worth parsing again: the bytes after them, with the 3 before (the end of a
/// head can be cut anywhere), may end the head.
fn parse_due(buf: &[u8], scanned: usize) -> bool {
    scanned == 0 || may_end_head(&buf[scanned.saturating_sub(3)..])
}

/// Whether these bytes may hold the empty line that ends a head: `\n\n` or `\n\r\n`.
fn may_end_head(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && matches!(&bytes[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

fn poll_read<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// How [`read_body`] ended.
#[derive(Debug, PartialEq, Eq)]
enum BodyRead {
    /// `buf` holds the head and the whole body.
    Complete,
    /// No byte came for `idle`.
    Stalled,
    /// The client closed its side, or the read failed.
    Ended,
}

/// Read until `buf` holds `total` bytes (a head and its `Content-Length` body), each
/// pause between two reads at most `idle` (`body_read_timeout`, as hyper's path allows
/// a streamed body). A body comes in several TCP segments on a real network, with
/// gaps between them: waiting here keeps the connection on this path. The timer is
/// made only when a read has to wait; the header-read timer is not used, since its
/// deadline would then move to the body's.
async fn read_body<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    total: usize,
    idle: Duration,
) -> BodyRead {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    while buf.len() < total {
        buf.reserve(total - buf.len());
        let read = poll_fn(|cx| {
            if let Poll::Ready(r) = poll_read(io, cx, buf) {
                return Poll::Ready(Some(r));
            }
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        match read {
            Some(Ok(n)) if n > 0 => {
                if let Some(t) = &mut timer {
                    t.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            }
            Some(_) => return BodyRead::Ended,
            None => return BodyRead::Stalled,
        }
    }
    BodyRead::Complete
}

// Returned by value once per head and matched at once: boxing the request would cost
// an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A head this path takes, and whether to close after its answer.
    Request(Request<ClientBody>, bool),
    /// Not all of the head yet.
    Partial,
    /// The whole head, and a `Content-Length` body of at most `BODY_MAX` bytes that has
    /// not all arrived: head and body are this many bytes.
    NeedBody(usize),
    /// Not for this path (or not valid): hyper gets the buffer as it is, for the rest
    /// of the connection.
    NotTaken,
    /// Not for this path, found after the head was split off the buffer: the bytes to
    /// hand over, put back together.
    Rebuilt(Bytes),
}

/// Parse the head at the start of `buf`; on success split it off (pipelined bytes
/// stay in `buf`) and build the request. `stalled`: the head's body stopped coming
/// (`read_body`); the request is built with `ClientBody::Stalled` and the connection
/// closed after its answer (the rest of the body is never read).
fn parse(buf: &mut BytesMut, limits: &Limits, spare: &mut HeaderMap, stalled: bool) -> Parsed {
    // HTTP/2 with prior knowledge: the preface is read whole here, under the header-read
    // timeout, before hyper gets it (hyper-util's preface read has no timeout of its own,
    // so a client that stopped halfway would hold the connection).
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return Parsed::Partial;
    }
    let mut fields = [FieldAt::default(); MAX_FIELDS];
    let (len, method, body, target, count, close) = {
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut slots[..limits.max_fields]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            // Said before the head is complete: wait for all of it (or the byte limit),
            // so that hyper, which may allow more fields, gets a whole head and its
            // header-read timeout does not start over.
            Err(httparse::Error::TooManyHeaders) if !may_end_head(buf) => return Parsed::Partial,
            Err(_) => return Parsed::NotTaken,
        };
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Parsed::NotTaken;
        };
        if len > limits.max_header_bytes {
            return Parsed::NotTaken;
        }
        let mut seen = Seen::default();
        for (h, f) in req.headers.iter().zip(fields.iter_mut()) {
            seen.field(h);
            f.name = Span::of(buf, h.name.as_bytes());
            f.value = Span::of(buf, h.value);
        }
        let target = Span::of(buf, path.as_bytes());
        let (method, body) = if seen.ambiguous_framing() {
            // Answered 400 `bad_framing` by the proxy's framing check, without reading
            // a body, and the connection closed (DESIGN.md: request smuggling).
            // hyper would read such a body as chunked and drop Content-Length.
            match http::Method::from_bytes(method.as_bytes()) {
                Ok(m) => (Some(m), Some(0)),
                Err(_) => return Parsed::NotTaken,
            }
        } else if version == 1 && seen.plain && path.starts_with('/') {
            let method = match method {
                "GET" => None,
                m => match taken_method(m) {
                    Some(m) => Some(m),
                    None => return Parsed::NotTaken,
                },
            };
            let body = match seen.length {
                None => 0,
                Some(Some(n)) if n <= BODY_MAX as u64 => n as usize,
                // Not digits, or larger than this path reads.
                Some(_) => return Parsed::NotTaken,
            };
            if buf.len() - len < body {
                if !stalled {
                    return Parsed::NeedBody(len + body);
                }
                (method, None)
            } else {
                (method, Some(body))
            }
        } else {
            return Parsed::NotTaken;
        };
        let close = seen.close || seen.ambiguous_framing() || body.is_none();
        (len, method, body, target, req.headers.len(), close)
    };
    let head = buf.split_to(len).freeze();
    // `split_to` shares the buffer (a reference count) even for nothing: not for `GET`s.
    let body = match body {
        Some(n) if n > 0 => Some(buf.split_to(n).freeze()),
        Some(_) => Some(Bytes::new()),
        None => None,
    };
    match build(
        &head,
        target,
        &fields[..count],
        std::mem::take(spare),
        method,
        body,
    ) {
        Ok(req) => Parsed::Request(req, close),
        Err(body) => {
            let body = body.unwrap_or_default();
            let mut all = BytesMut::with_capacity(head.len() + body.len() + buf.len());
            all.extend_from_slice(&head);
            all.extend_from_slice(&body);
            all.extend_from_slice(buf);
            buf.clear();
            Parsed::Rebuilt(all.freeze())
        }
    }
}

/// The methods this path takes besides `GET` (the request's default). Not `HEAD`:
/// its answer has a length but no body, which the writer here does not frame; not
/// `CONNECT` (a tunnel) nor methods outside RFC 9110's, which stay hyper's.
fn taken_method(method: &str) -> Option<http::Method> {
    Some(match method {
        "POST" => http::Method::POST,
        "PUT" => http::Method::PUT,
        "PATCH" => http::Method::PATCH,
        "DELETE" => http::Method::DELETE,
        "OPTIONS" => http::Method::OPTIONS,
        _ => return None,
    })
}

/// What a head's fields say about how it is served.
struct Seen {
    /// Nothing that keeps the request from this path: no `Transfer-Encoding`,
    /// `Expect`, `Upgrade` or `TE`, and `Connection` names only `keep-alive`/`close`.
    plain: bool,
    /// The client asked to close after the answer.
    close: bool,
    /// `Content-Length` values (fields, and the values of a comma list).
    lengths: usize,
    /// The value of the (last) `Content-Length` field, if any: `Some(None)` when it is
    /// not a plain decimal number. Used only when it is the one length.
    length: Option<Option<u64>>,
    chunked_or_other: bool,
}

impl Default for Seen {
    fn default() -> Self {
        Self {
            plain: true,
            close: false,
            lengths: 0,
            length: None,
            chunked_or_other: false,
        }
    }
}

impl Seen {
    fn field(&mut self, h: &httparse::Header<'_>) {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        match name.len() {
            2 if is("te") => self.plain = false,
            6 if is("expect") => self.plain = false,
            7 if is("upgrade") => self.plain = false,
            14 if is("content-length") => {
                self.lengths += 1 + h.value.iter().filter(|&&b| b == b',').count();
                self.length = Some(parse_length(h.value));
            }
            17 if is("transfer-encoding") => {
                self.plain = false;
                self.chunked_or_other = true;
            }
            10 if is("connection") => {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        self.plain = false;
                    }
                }
            }
            _ => {}
        }
    }

    /// Two lengths, or a length and a transfer coding: two parsers could find
    /// different ends of the body.
    fn ambiguous_framing(&self) -> bool {
        self.lengths > 1 || self.lengths == 1 && self.chunked_or_other
    }
}

/// The request from a parsed head, its fields in `headers` (empty), with `method`
/// (`None`: `GET`) and `body` (empty: none; `None`: stalled); `Err` with the body where
/// `http` refuses a name, value or the target that `httparse` let through.
fn build(
    head: &Bytes,
    target: Span,
    fields: &[FieldAt],
    mut headers: HeaderMap,
    method: Option<http::Method>,
    body: Option<Bytes>,
) -> Result<Request<ClientBody>, Option<Bytes>> {
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target.range())) else {
        return Err(body);
    };
    headers.reserve(fields.len());
    for f in fields {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[f.name.range()]),
            HeaderValue::from_maybe_shared(head.slice(f.value.range())),
        ) else {
            return Err(body);
        };
        headers.append(name, value);
    }
    let body = match body {
        None => ClientBody::Stalled,
        Some(b) if b.is_empty() => ClientBody::Empty,
        Some(b) => ClientBody::Full(b),
    };
    let mut req = Request::new(body);
    if let Some(m) = method {
        *req.method_mut() = m;
    }
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

/// How the answer's body is framed on the wire.
enum Framing {
    /// This many bytes are still to come.
    Length(u64),
    Chunked,
}

/// Write one answer; `Ok(true)` when the connection can serve another request. A
/// `request_id` is written as its `x-request-id`, in place of any in `resp`
/// (`proxy::request_id`).
async fn write_response<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    resp: Response<ResponseBody>,
    request_id: Option<&HeaderValue>,
    mut close: bool,
    spare: &mut HeaderMap,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    out.clear();
    let status = parts.status;
    if status.is_informational() {
        // hyper cannot send a 1xx as the answer either; it sends a 500.
        out.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n");
        push_date(out);
        out.extend_from_slice(b"connection: close\r\n\r\n");
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(false);
    }
    status_line(
        out,
        status,
        parts.extensions.get::<hyper::ext::ReasonPhrase>(),
    );
    // The answer's own `Content-Length`: read only when the body does not know its size.
    let mut declared: Option<&HeaderValue> = None;
    let mut has_date = false;
    for (name, value) in &parts.headers {
        match *name {
            // Framing fields are the writer's: recomputed below.
            header::CONTENT_LENGTH => {
                declared = declared.or(Some(value));
                continue;
            }
            header::TRANSFER_ENCODING | header::TRAILER => continue,
            header::CONNECTION => {
                close |= has_close(value);
                continue;
            }
            header::DATE => has_date = true,
            // The upstream's own, if any: the gateway's goes in its place.
            _ if request_id.is_some() && *name == X_REQUEST_ID => continue,
            _ => {}
        }
        push_field(out, name.as_str(), value.as_bytes());
    }
    if let Some(id) = request_id {
        push_field(out, X_REQUEST_ID.as_str(), id.as_bytes());
    }
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let mut framing = if bodiless {
        Framing::Length(0)
    } else if body.is_end_stream() {
        out.extend_from_slice(b"content-length: 0\r\n");
        Framing::Length(0)
    } else if let Some(n) = body
        .size_hint()
        .exact()
        .or_else(|| declared.and_then(|v| parse_length(v.as_bytes())))
    {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    let mut headers = parts.headers;
    if headers.capacity() <= 64 {
        headers.clear();
        *spare = headers;
    }
    if !has_date {
        push_date(out);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless || body.is_end_stream() {
        drop(body);
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(!close);
    }
    let complete = loop {
        // Take what the body has ready without waiting; before waiting, send what is
        // buffered, so that a slow body does not hold back the head.
        let item = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(item) => item,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                    io.flush().await?;
                }
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let data = match item {
            None => break finish(out, &framing),
            // The upstream failed mid-body: what was sent stays, the connection ends.
            Some(Err(_)) => break false,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: only for a client that sent `TE: trailers` (hyper's rule);
                // such a request never comes here.
                Err(_) => continue,
            },
        };
        match &mut framing {
            Framing::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    // More than announced: send what was announced, then end.
                    let keep = *left as usize;
                    *left = 0;
                    push(io, out, data.slice(..keep)).await?;
                    break false;
                }
                *left -= n;
                push(io, out, data).await?;
            }
            Framing::Chunked => {
                if data.is_empty() {
                    continue;
                }
                let _ = write!(out, "{:X}\r\n", data.len());
                push(io, out, data).await?;
                out.extend_from_slice(b"\r\n");
            }
        }
        if body.is_end_stream() {
            break finish(out, &framing);
        }
    };
    drop(body);
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.flush().await?;
    Ok(complete && !close)
}

/// The end of a body: the last chunk, or whether all announced bytes came.
fn finish(out: &mut Vec<u8>, framing: &Framing) -> bool {
    match framing {
        Framing::Length(left) => *left == 0,
        Framing::Chunked => {
            out.extend_from_slice(b"0\r\n\r\n");
            true
        }
    }
}

/// Queue a piece of body behind `out`: copied when small, else written from its own
/// memory together with `out` (one vectored write where the stream supports it).
async fn push<I>(io: &mut I, out: &mut Vec<u8>, data: Bytes) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    if data.len() <= COPY_MAX {
        out.extend_from_slice(&data);
        if out.len() >= COPY_MAX {
            io.write_all(out).await?;
            out.clear();
        }
        return Ok(());
    }
    let mut head = &out[..];
    let mut data = data;
    while !head.is_empty() {
        let bufs = [io::IoSlice::new(head), io::IoSlice::new(&data)];
        let n = io.write_vectored(&bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        data.advance(n - from_head);
    }
    out.clear();
    io.write_all(&data).await
}

/// The status line; an upstream's own reason phrase (hyper's `ReasonPhrase`, which
/// the upstream exchange sets) is passed on.
fn status_line(out: &mut Vec<u8>, status: StatusCode, reason: Option<&hyper::ext::ReasonPhrase>) {
    if status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    // A reason must be written: many parsers expect one (hyper writes the same).
    let reason = match reason {
        Some(r) => r.as_bytes(),
        None => status.canonical_reason().unwrap_or("<none>").as_bytes(),
    };
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

fn has_close(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// `date: <IMF-fixdate>\r\n`, formatted at most once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

// === impl Rewind ===

/// A stream that first gives back bytes already read from it: how hyper takes over a
/// connection from [`serve`].
pub(super) struct Rewind<I> {
    pre: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    pub(super) fn new(pre: Bytes, inner: I) -> Self {
        Self { pre, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() && buf.remaining() > 0 {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: 8192,
            max_fields: MAX_FIELDS,
        }
    }

    fn run(input: &str, limits: &Limits) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(input.as_bytes());
        let parsed = parse(&mut buf, limits, &mut HeaderMap::new(), false);
        (parsed, buf)
    }

    #[test]
    fn plain_gets_are_taken_with_their_fields_and_close_wish() {
        let cases = [
            (
                "GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nx-two: 2\r\n\r\n",
                false,
            ),
            ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n", false),
            (
                "GET / HTTP/1.1\r\nconnection: keep-alive, CLOSE\r\n\r\n",
                true,
            ),
            ("GET / HTTP/1.1\r\n\r\n", false),
        ];
        for (input, wants_close) in cases {
            let (Parsed::Request(req, close), rest) = run(input, &limits()) else {
                panic!("not taken: {input:?}");
            };
            assert_eq!(close, wants_close, "{input:?}");
            assert!(rest.is_empty(), "{input:?}");
            assert_eq!(req.method(), http::Method::GET);
            assert_eq!(req.version(), http::Version::HTTP_11);
            if input.starts_with("GET /a") {
                assert_eq!(req.uri().path(), "/a");
                assert_eq!(req.uri().query(), Some("b=c"));
                assert_eq!(req.headers()["host"], "x");
                let two: Vec<_> = req.headers().get_all("x-two").iter().collect();
                assert_eq!(two, ["1", "2"]);
            }
        }
    }

    #[test]
    fn a_pipelined_head_stays_in_the_buffer() {
        let (parsed, rest) = run("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", &limits());
        let Parsed::Request(req, false) = parsed else {
            panic!("not taken");
        };
        assert_eq!(req.uri().path(), "/a");
        assert_eq!(&rest[..], b"GET /b HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn an_incomplete_head_is_partial() {
        for input in ["G", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: x\r\n"] {
            assert!(
                matches!(run(input, &limits()).0, Parsed::Partial),
                "{input:?}"
            );
        }
    }

    #[test]
    fn ambiguous_framing_is_taken_to_be_refused_with_close() {
        let cases = [
            ("POST", "content-length: 4\r\ntransfer-encoding: chunked"),
            ("PUT", "Transfer-Encoding: chunked\r\nContent-Length: 4"),
            ("GET", "content-length: 0\r\ncontent-length: 0"),
            ("POST", "content-length: 5, 5"),
            ("DELETE", "transfer-encoding: gzip\r\ncontent-length: 1"),
        ];
        for (method, fields) in cases {
            let input = format!("{method} /x HTTP/1.1\r\nHost: x\r\n{fields}\r\n\r\nbody");
            let (Parsed::Request(req, close), rest) = run(&input, &limits()) else {
                panic!("not taken: {input:?}");
            };
            assert!(close, "{input:?}");
            assert_eq!(req.method().as_str(), method);
            assert_eq!(
                crate::http::headers::bad_framing(req.headers()),
                Some(crate::http::headers::BadFraming::Ambiguous),
                "the proxy refuses it: {input:?}"
            );
            assert_eq!(&rest[..], b"body", "the body is never read as a head");
        }
    }

    #[test]
    fn every_other_head_is_left_to_hyper_untouched() {
        let cases = [
            "HEAD / HTTP/1.1\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\n\r\n",
            "TRACE / HTTP/1.1\r\n\r\n",
            "PROPFIND / HTTP/1.1\r\n\r\n",
            "get / HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.0\r\nContent-Length: 1\r\n\r\nx",
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nhello",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTE: trailers\r\n\r\nhello",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\n 6\r\n\r\nhello",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nConnection: x-other\r\n\r\nhello",
            // Not a plain decimal length: hyper answers 400.
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            // Larger than this path reads: hyper streams it.
            "PUT / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",
            "GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
        ];
        for input in cases {
            let (parsed, rest) = run(input, &limits());
            assert!(matches!(parsed, Parsed::NotTaken), "taken: {input:?}");
            assert_eq!(&rest[..], input.as_bytes(), "buffer changed: {input:?}");
        }
    }

    #[test]
    fn small_bodies_are_taken_with_their_head_and_what_follows_stays() {
        let cases = [
            ("POST", "Content-Length: 5\r\n", "hello"),
            ("POST", "Content-Length: 005\r\n", "hello"),
            ("POST", "Content-Length: 5 \r\n", "hello"),
            ("PUT", "content-length: 5\r\n", "hello"),
            ("PATCH", "Content-Length: 5\r\n", "hello"),
            ("DELETE", "Content-Length: 5\r\n", "hello"),
            ("OPTIONS", "Content-Length: 5\r\n", "hello"),
            ("GET", "Content-Length: 5\r\n", "hello"),
            // No body: no length, or a zero one.
            ("POST", "", ""),
            ("DELETE", "Content-Length: 0\r\n", ""),
            ("GET", "Content-Length: 0\r\n", ""),
        ];
        for (method, length, body) in cases {
            let next = "GET /next HTTP/1.1\r\n\r\n";
            let input = format!("{method} /x HTTP/1.1\r\nHost: x\r\n{length}\r\n{body}{next}");
            let (Parsed::Request(req, close), rest) = run(&input, &limits()) else {
                panic!("not taken: {input:?}");
            };
            assert!(!close, "{input:?}");
            assert_eq!(req.method().as_str(), method, "{input:?}");
            match req.body() {
                ClientBody::Full(b) => assert_eq!(&b[..], body.as_bytes(), "{input:?}"),
                ClientBody::Empty => assert_eq!(body, "", "{input:?}"),
                ClientBody::Hyper(_) | ClientBody::Stalled => unreachable!(),
            }
            assert_eq!(&rest[..], next.as_bytes(), "the next head stays: {input:?}");
        }
        // The largest body this path reads.
        let big = "a".repeat(BODY_MAX);
        let input = format!("PUT / HTTP/1.1\r\nContent-Length: {BODY_MAX}\r\n\r\n{big}");
        let (Parsed::Request(req, _), rest) = run(&input, &limits()) else {
            panic!("not taken");
        };
        assert!(matches!(req.body(), ClientBody::Full(b) if b.len() == BODY_MAX));
        assert!(rest.is_empty());
    }

    #[test]
    fn a_body_not_all_there_asks_for_the_rest_and_leaves_the_buffer() {
        let head = "POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
        for part in ["", "01234", "012345678"] {
            let input = format!("{head}{part}");
            let (parsed, rest) = run(&input, &limits());
            assert!(
                matches!(parsed, Parsed::NeedBody(n) if n == head.len() + 10),
                "{input:?}"
            );
            assert_eq!(&rest[..], input.as_bytes(), "buffer changed: {input:?}");
        }
    }

    #[tokio::test]
    async fn a_body_is_waited_for_piece_by_piece() {
        // Pieces that come while the read waits are all read (what follows the body
        // may come along in the last read, and stays in the buffer).
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut buf = BytesMut::from(&b"head"[..]);
        let send = async {
            for piece in [&b"0123"[..], b"456", b"789NEXT"] {
                tokio::task::yield_now().await;
                client.write_all(piece).await.unwrap();
            }
        };
        let idle = Duration::from_secs(30);
        let (read, ()) = tokio::join!(read_body(&mut server, &mut buf, 4 + 10, idle), send);
        assert_eq!(read, BodyRead::Complete);
        assert!(buf.starts_with(b"head0123456789"), "{buf:?}");
        // The client closes before the body is whole: `Ended`, what came is kept.
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut buf = BytesMut::new();
        client.write_all(b"ab").await.unwrap();
        drop(client);
        assert_eq!(
            read_body(&mut server, &mut buf, 5, idle).await,
            BodyRead::Ended
        );
        assert!(buf.ends_with(b"ab"), "{buf:?}");
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_is_stalled_after_the_idle_time() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"ab").await.unwrap();
        let mut buf = BytesMut::new();
        let idle = Duration::from_millis(50);
        let started = tokio::time::Instant::now();
        assert_eq!(
            read_body(&mut server, &mut buf, 5, idle).await,
            BodyRead::Stalled
        );
        assert_eq!(&buf[..], b"ab");
        assert!(started.elapsed() >= idle, "{:?}", started.elapsed());
        // Then the request is built with a stalled body, to be answered 408 and closed.
        let mut buf = BytesMut::from(&b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"[..]);
        let parsed = parse(&mut buf, &limits(), &mut HeaderMap::new(), true);
        let Parsed::Request(req, close) = parsed else {
            panic!("not taken");
        };
        assert!(close);
        assert!(matches!(req.body(), ClientBody::Stalled));
        drop(client);
    }

    #[test]
    fn heads_over_the_limits_are_left_to_hyper() {
        let three = "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
        let two_fields = Limits {
            max_fields: 2,
            ..limits()
        };
        assert!(matches!(run(three, &two_fields).0, Parsed::NotTaken));
        let small = Limits {
            max_header_bytes: three.len() - 1,
            ..limits()
        };
        assert!(matches!(run(three, &small).0, Parsed::NotTaken));
        assert!(matches!(run(three, &limits()).0, Parsed::Request(..)));
    }

    #[test]
    fn an_http2_preface_is_read_whole_before_hyper_gets_it() {
        let preface = std::str::from_utf8(H2_PREFACE).expect("text");
        for cut in [1, 3, 14, 18, 20, 23] {
            let part = &preface[..cut];
            assert!(
                matches!(run(part, &limits()).0, Parsed::Partial),
                "{part:?}"
            );
        }
        let (parsed, rest) = run(&format!("{preface}\0\0\x04"), &limits());
        assert!(matches!(parsed, Parsed::NotTaken));
        assert_eq!(rest.len(), H2_PREFACE.len() + 3);
        // Not a preface after all: an HTTP/1 answer from hyper (400).
        assert!(matches!(
            run("PRI * HTTP/1.1\r\n\r\n", &limits()).0,
            Parsed::NotTaken
        ));
    }

    #[test]
    fn too_many_fields_wait_for_the_end_of_the_head() {
        let two_fields = Limits {
            max_fields: 2,
            ..limits()
        };
        let partial = "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n";
        assert!(matches!(run(partial, &two_fields).0, Parsed::Partial));
        let whole = format!("{partial}\r\n");
        assert!(matches!(run(&whole, &two_fields).0, Parsed::NotTaken));
    }

    #[test]
    fn the_end_of_a_head_is_found_in_new_bytes() {
        for end in ["\r\n\r\n", "\n\n", "\n\r\n", "x\n\nGET"] {
            assert!(may_end_head(end.as_bytes()), "{end:?}");
        }
        for not in ["", "\r\n", "\r\n\r", "a: 1\r\nb: 2\r\n", "\n\r", "\r\r\n"] {
            assert!(!may_end_head(not.as_bytes()), "{not:?}");
        }
    }

    #[test]
    fn a_head_end_cut_by_a_read_is_still_found() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        // Whatever the cut in the final CRLF CRLF, the last piece makes a parse due.
        for scanned in head.len() - 4..head.len() {
            assert!(parse_due(head, scanned), "cut after {scanned} bytes");
        }
        // A piece without a head's end is not worth a parse; a fresh head always is.
        assert!(!parse_due(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: *", 20));
        assert!(parse_due(b"G", 0));
    }

    #[test]
    fn a_target_http_refuses_is_handed_over_whole() {
        // httparse lets `<`, `>` and a backquote through in a target; `http::Uri` does not.
        for input in [
            "GET /a<b> HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\n\r\n",
            "POST /a<b> HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /next HTTP/1.1\r\n\r\n",
        ] {
            let (parsed, rest) = run(input, &limits());
            let Parsed::Rebuilt(bytes) = parsed else {
                panic!("not rebuilt: {input:?}");
            };
            assert_eq!(&bytes[..], input.as_bytes());
            assert!(rest.is_empty());
        }
    }

    async fn written(resp: Response<ResponseBody>, close: bool) -> (String, bool) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut out = Vec::new();
        let keep = write_response(
            &mut server,
            &mut out,
            resp,
            None,
            close,
            &mut HeaderMap::new(),
        )
        .await
        .expect("written");
        drop(server);
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut client, &mut text)
            .await
            .expect("read");
        (text, keep)
    }

    fn answer(
        status: u16,
        body: ResponseBody,
        fields: &[(&'static str, &'static str)],
    ) -> Response<ResponseBody> {
        let mut r = Response::new(body);
        *r.status_mut() = StatusCode::from_u16(status).expect("status");
        for (n, v) in fields {
            r.headers_mut().append(*n, HeaderValue::from_static(v));
        }
        r
    }

    fn head_lines(text: &str) -> Vec<&str> {
        text.split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .lines()
            .collect()
    }

    #[tokio::test]
    async fn answers_are_framed_as_hyper_frames_them() {
        // A body of known size gets its length (the upstream's own is replaced), a date.
        let (text, keep) = written(
            answer(
                200,
                ResponseBody::full("hello"),
                &[("content-length", "5"), ("x-a", "1")],
            ),
            false,
        )
        .await;
        assert!(keep);
        let lines = head_lines(&text);
        assert_eq!(lines[0], "HTTP/1.1 200 OK");
        assert!(lines.contains(&"x-a: 1"), "{text}");
        assert!(lines.contains(&"content-length: 5"), "{text}");
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("content-length"))
                .count(),
            1
        );
        assert_eq!(lines.iter().filter(|l| l.starts_with("date: ")).count(), 1);
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");

        // No body: an explicit zero length; the answer's own date is kept alone.
        let (text, _) = written(
            answer(
                404,
                ResponseBody::empty(),
                &[("date", "Tue, 01 Dec 2026 00:00:00 GMT")],
            ),
            false,
        )
        .await;
        let lines = head_lines(&text);
        assert_eq!(lines[0], "HTTP/1.1 404 Not Found");
        assert!(lines.contains(&"content-length: 0"), "{text}");
        let dates: Vec<_> = lines.iter().filter(|l| l.starts_with("date: ")).collect();
        assert_eq!(dates, [&"date: Tue, 01 Dec 2026 00:00:00 GMT"]);
        assert!(text.ends_with("\r\n\r\n"));

        // 204 and 304: no length, no body, even when the answer brings both.
        for status in [204, 304] {
            let (text, keep) = written(
                answer(status, ResponseBody::full("x"), &[("content-length", "1")]),
                false,
            )
            .await;
            assert!(keep);
            assert!(!text.contains("content-length"), "{text}");
            assert!(!text.contains("transfer-encoding"), "{text}");
            assert!(text.ends_with("\r\n\r\n"), "{text}");
        }

        // Hop-by-hop framing fields of the answer are not copied.
        let (text, _) = written(
            answer(
                200,
                ResponseBody::full("ab"),
                &[("transfer-encoding", "chunked"), ("trailer", "x")],
            ),
            false,
        )
        .await;
        assert!(!text.contains("transfer-encoding"), "{text}");
        assert!(!text.contains("trailer"), "{text}");
        assert!(text.contains("content-length: 2\r\n"), "{text}");
    }

    #[tokio::test]
    async fn closing_is_announced_and_ends_the_connection() {
        let (text, keep) = written(answer(200, ResponseBody::full("x"), &[]), true).await;
        assert!(!keep);
        assert!(head_lines(&text).contains(&"connection: close"), "{text}");
        // An answer that asks to close (the gateway's own, after a broken body) does too,
        // with one `connection` field.
        let (text, keep) = written(
            answer(400, ResponseBody::empty(), &[("connection", "close")]),
            false,
        )
        .await;
        assert!(!keep);
        let lines = head_lines(&text);
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("connection")).count(),
            1
        );
        // Any other `connection` value is dropped and the connection kept.
        let (text, keep) = written(
            answer(200, ResponseBody::empty(), &[("connection", "keep-alive")]),
            false,
        )
        .await;
        assert!(keep);
        assert!(!text.contains("connection"), "{text}");
    }

    #[tokio::test]
    async fn an_upstreams_reason_is_kept_and_an_interim_status_is_refused() {
        let mut r = answer(299, ResponseBody::empty(), &[]);
        r.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b"Fine Thanks"));
        let (text, _) = written(r, false).await;
        assert!(text.starts_with("HTTP/1.1 299 Fine Thanks\r\n"), "{text}");
        let (text, _) = written(answer(599, ResponseBody::empty(), &[]), false).await;
        assert!(text.starts_with("HTTP/1.1 599 <none>\r\n"), "{text}");
        let (text, keep) = written(answer(103, ResponseBody::empty(), &[]), false).await;
        assert!(!keep);
        assert!(
            text.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn rewind_gives_back_the_bytes_read_then_the_stream() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b" world").await.expect("write");
        drop(client);
        let mut r = Rewind::new(Bytes::from_static(b"hello"), server);
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut r, &mut text)
            .await
            .expect("read");
        assert_eq!(text, "hello world");
    }
}
