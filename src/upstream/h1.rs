//! The gateway's own HTTP/1.1 exchange with an upstream, for requests whose body is
//! empty or already in memory and that do not ask for an upgrade: by far the most
//! common case on an edge gateway (GETs, small retried POSTs).
//!
//! Why not hyper's client connection for these: on the e2e benchmark it was about a
//! third of the gateway's user-space instructions per request (callgrind): a
//! connection task per upstream connection that the request task talks to through a
//! channel and a oneshot (two task wake-ups per answer), and a general codec. Here the
//! request's own task writes the request head and body in one write and parses the
//! answer's head with httparse; the answer body reads from the same socket as the
//! client's side of the gateway polls it. Requests that stream a body or upgrade still
//! go through hyper ([`super::pool`]).
//!
//! The answer is framed as RFC 9112 §6.3 says: no body for HEAD, 1xx, 204 and 304;
//! `Transfer-Encoding` ending in `chunked` is decoded (trailers become a trailers
//! frame); a `Transfer-Encoding` without `chunked` or an answer with neither header is
//! read to the connection's close; otherwise `Content-Length`, which must be one
//! valid number. Interim answers (100, 103) are skipped; a 101 is refused (these
//! requests did not ask for an upgrade).
//!
//! A connection goes back to the idle list only when the answer was read to its end,
//! nothing follows it, and neither side said `close`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::pool::IdleList;
use crate::http::head::{FieldAt, Span, parse_length};
use crate::http::headers::{self as fields, GatewayFields, is_hop_by_hop, push_field};
use crate::net::Tcp;
use crate::proxy::body::UpstreamBody;

/// Most header fields an answer (or its trailers) may have, as hyper's default.
pub const MAX_HEADERS: usize = 100;
/// Largest answer head (status line and fields), as hyper's default buffer limit.
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// Largest request body sent this way (a buffered body for retries); larger ones go
/// through hyper.
pub const MAX_INLINE_BODY: usize = 64 * 1024;
/// Answers with up to this many fields are parsed without a heap allocation.
const SMALL_HEAD: usize = 24;
/// Longest chunk-size line (with extensions) accepted in a chunked answer.
const MAX_CHUNK_LINE: usize = 4096;
/// Most chunk-extension bytes in one answer (as hyper's decoder).
const MAX_CHUNK_EXT_BYTES: usize = 16 * 1024;
/// Largest trailer section of a chunked answer.
const MAX_TRAILER_BYTES: usize = 64 * 1024;
/// Size of a read into an empty buffer; grows up to `MAX_READ` while reads fill it.
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;

/// An upstream connection with its read buffer (empty while idle), boxed once when
/// it is made: it rides in every answer's body, and an 88-byte connection there made
/// each move of a response (about 30 per request) copy it too.
pub type RawConn = Box<Conn>;

/// What [`RawConn`] holds.
#[derive(Debug)]
pub struct Conn {
    io: Tcp,
    buf: BytesMut,
    /// The request head is encoded here; kept to reuse its allocation.
    out: Vec<u8>,
}

impl Conn {
    pub fn new(io: TcpStream) -> RawConn {
        Box::new(Conn {
            io: Tcp(io),
            buf: BytesMut::new(),
            out: Vec::new(),
        })
    }

    /// Whether an idle connection can still be used: nothing was heard from it since
    /// its last answer. An upstream that closed it (EOF) or sent stray bytes makes it
    /// unusable. Costs a system call only when the socket became readable.
    pub fn is_usable(&self) -> bool {
        // Whether tokio has seen the socket readable (or its read side closed) since
        // the readiness was last cleared: `try_io` calls the closure only then, and
        // looking costs a load. (`poll_read_ready` files a waker when the socket is
        // not readable, under the readiness waiters' lock: two atomic read-modify-
        // writes per checkout.)
        let mut readable = false;
        let _ = self.io.try_io(tokio::io::Interest::READABLE, || {
            readable = true;
            Ok(())
        });
        if !readable {
            return true;
        }
        // Readiness can be left over from the last read of the answer; look.
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// True when `req` can be sent by [`exchange`]: its body is empty or in memory (and
/// small), and it does not ask for an upgrade.
pub fn eligible(req: &Request<UpstreamBody>) -> bool {
    let body_ok = match req.body() {
        UpstreamBody::Empty | UpstreamBody::Full(None) | UpstreamBody::Once(None) => true,
        UpstreamBody::Full(Some(b)) | UpstreamBody::Once(Some(b)) => b.len() <= MAX_INLINE_BODY,
        UpstreamBody::Stream(inner, ..) => http_body::Body::is_end_stream(inner),
    };
    body_ok && req.method() != Method::CONNECT && !fields::has(req.headers(), &header::UPGRADE)
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// A reused connection turned out closed (the keep-alive race: the upstream closed
    /// it as idle while the request was on its way), and the request may be sent again
    /// on a new connection: either it could not be written (the upstream cannot have
    /// acted on it, whatever its method), or it was written, its method is safe (GET,
    /// HEAD, OPTIONS, TRACE), and the connection ended before a single byte of an
    /// answer. The second is what Go's `http.Transport` does (`errServerClosedIdle`, for
    /// the same methods) and nginx too (one more try after an error on a cached
    /// connection); without it an upstream whose idle timeout is shorter than the pool's
    /// costs a 502 now and then. Other methods are left to the retry policy.
    Resend(io::Error),
    /// Anything else: a broken connection (the request may have reached the upstream:
    /// whether to send it again is the retry policy's call) or an answer that is not
    /// valid HTTP/1.1.
    Failed(io::Error),
}

/// RFC 9110 §9.2.1: methods that ask for nothing to change on the server.
fn is_safe(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The peer reset or aborted the connection (rather than, say, a timeout).
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Encode the request head, with the gateway's own fields after the request's, (and an
/// in-memory body) into `out`. `host` is sent when the request has no `Host` (it is the
/// endpoint's, so it is not kept in `req`: a retry may go to another endpoint).
fn encode(
    req: &Request<UpstreamBody>,
    added: &GatewayFields,
    body: Option<&Bytes>,
    host: &str,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        req.uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !fields::has(req.headers(), &header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in req.headers() {
        // The framing is the gateway's: the body is sent with its real length.
        if body.is_some() && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING) {
            continue;
        }
        push_field(out, name.as_str(), value.as_bytes());
    }
    for (name, value) in added.iter() {
        push_field(out, name.as_str(), value.as_bytes());
    }
    // A request without a body goes out as it came (hyper's client adds no
    // `content-length: 0` either).
    if let Some(b) = body {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa_buf(b.len() as u64, &mut [0u8; 20]));
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(b);
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

fn itoa_buf(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// How the answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Read until the upstream closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero) chunk: trailer fields up to an empty line.
    Trailers,
}

/// Where the connection goes once the answer is read to its end.
#[derive(Debug)]
pub struct Checkin {
    pub idle: Arc<IdleList>,
    pub max_idle: usize,
}

/// Send `req` on `conn` and read the answer's head. The answer's body reads from
/// `conn`, which goes back to `checkin` when the body was read to its end. `req` is
/// only borrowed, so that it can be sent again after [`ExchangeError::Resend`].
pub async fn exchange(
    mut conn: RawConn,
    req: &Request<UpstreamBody>,
    added: &GatewayFields,
    host: &str,
    reused: bool,
    checkin: Checkin,
) -> Result<Response<RawBody>, ExchangeError> {
    let inline = match req.body() {
        UpstreamBody::Full(Some(b)) | UpstreamBody::Once(Some(b)) => Some(b),
        _ => None,
    };
    encode(req, added, inline, host, &mut conn.out);
    let head_req = *req.method() == Method::HEAD;
    if let Err(e) = conn.io.write_all(&conn.out).await {
        // Nothing or part of the request went out: the upstream cannot have acted on it.
        return Err(if reused {
            ExchangeError::Resend(e)
        } else {
            ExchangeError::Failed(e)
        });
    }
    if conn.out.capacity() > 16 * 1024 {
        conn.out = Vec::new();
    }
    // Until the first byte of an answer, a reused connection's end is the keep-alive
    // race rather than a failed exchange.
    let mut silent = reused && conn.buf.is_empty() && is_safe(req.method());
    loop {
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(MIN_READ);
        }
        let n = match conn.io.read_buf(&mut conn.buf).await {
            Ok(n) => n,
            Err(e) if silent && is_reset(&e) => return Err(ExchangeError::Resend(e)),
            Err(e) => return Err(ExchangeError::Failed(e)),
        };
        if n == 0 {
            let e = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed the connection before a complete answer",
            );
            return Err(if silent {
                ExchangeError::Resend(e)
            } else {
                ExchangeError::Failed(e)
            });
        }
        silent = false;
        // Parse every complete head in the buffer: interim answers come first.
        loop {
            match parse_head(&mut conn.buf, head_req).map_err(ExchangeError::Failed)? {
                Parsed::Partial => {
                    if conn.buf.len() > MAX_HEAD_BYTES {
                        return Err(ExchangeError::Failed(invalid(
                            "upstream answer head too large",
                        )));
                    }
                    break;
                }
                Parsed::Interim => continue,
                Parsed::Final(head, framing, keep_alive) => {
                    return Ok(answer(conn, head, framing, keep_alive, checkin));
                }
            }
        }
    }
}

fn answer(
    conn: RawConn,
    head: http::response::Parts,
    framing: Framing,
    keep_alive: bool,
    checkin: Checkin,
) -> Response<RawBody> {
    let mut body = RawBody {
        conn: Some(conn),
        framing,
        keep_alive,
        checkin: Some(checkin),
        read_size: MIN_READ,
        ext_bytes: 0,
    };
    if framing == Framing::Length(0) {
        body.framing = Framing::Done;
    }
    if body.framing == Framing::Done {
        body.finish();
    }
    Response::from_parts(head, body)
}

enum Parsed {
    Partial,
    Interim,
    Final(http::response::Parts, Framing, bool),
}

/// Parse one answer head from the front of `buf`, removing it when complete.
fn parse_head(buf: &mut BytesMut, head_req: bool) -> io::Result<Parsed> {
    // Offsets of the fields: on the stack for a usual answer (a 100-field array would
    // cost a 3 KiB memset per answer), on the heap beyond that.
    let mut small = [FieldAt::default(); SMALL_HEAD];
    let mut large = Vec::new();
    let (len, code, version, count, reason) = {
        let mut raw =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut raw);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(invalid("upstream answer has too many header fields"));
            }
            Err(_) => return Err(invalid("upstream answer is not valid HTTP/1.1")),
        };
        let at = |h: &httparse::Header<'_>| FieldAt {
            name: Span::of(buf, h.name.as_bytes()),
            value: Span::of(buf, h.value),
        };
        if resp.headers.len() <= SMALL_HEAD {
            for (slot, h) in small.iter_mut().zip(resp.headers.iter()) {
                *slot = at(h);
            }
        } else {
            large = resp.headers.iter().map(at).collect();
        }
        (
            len,
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(1),
            resp.headers.len(),
            resp.reason.map(|r| Span::of(buf, r.as_bytes())),
        )
    };
    let status =
        StatusCode::from_u16(code).map_err(|_| invalid("upstream answer has an invalid status"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(invalid("upstream switched protocols without being asked"));
        }
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    let head = buf.split_to(len).freeze();
    // Room for the fields the gateway adds to the answer (`x-request-id`,
    // `ratelimit-*`, a route's response filter), so that adding them does not grow and
    // rehash the map (about 700 instructions per request with a rate limit on).
    let mut headers = HeaderMap::with_capacity(count + 4);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut close = false;
    let mut keep_alive_token = false;
    // Hop-by-hop fields are read here for the framing and then left out of the map: the
    // answer is passed on, and `proxy::downstream_response` would remove them anyway
    // (on the benchmark, the upstream's `connection: keep-alive` cost a hashed insert
    // here and a lookup, a parse and a hashed removal there). Only when `Connection`
    // names other fields is it kept, so that the later cleanup removes those too.
    let mut names_others = false;
    let fields = if count <= SMALL_HEAD {
        &small[..count]
    } else {
        &large[..]
    };
    for at in fields {
        let name = field_name(&head[at.name.range()])
            .map_err(|_| invalid("upstream answer has an invalid header name"))?;
        let raw = &head[at.value.range()];
        if name == header::CONNECTION {
            check_value(raw)?;
            // Bytes, not `str`: splitting a `str` at ',' goes through the char searcher
            // (about 100 instructions for nginx's `keep-alive`, callgrind). No
            // `HeaderValue` unless the field is kept: a slice of `head` and its drop
            // are two atomic read-modify-writes of its reference count.
            for token in raw.split(|&b| b == b',') {
                let token = token.trim_ascii();
                let is_close = token.eq_ignore_ascii_case(b"close");
                let is_keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                close |= is_close;
                keep_alive_token |= is_keep_alive;
                names_others |= !(is_close || is_keep_alive || token.is_empty());
            }
            if names_others {
                headers.append(name, shared_value(&head, at.value)?);
            }
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            check_value(raw)?;
            te = true;
            // Only the last coding says whether the body is chunked (of a value in
            // visible ASCII, as `HeaderValue::to_str` takes it: past `check_value`,
            // that is an ASCII one).
            chunked = raw.is_ascii()
                && raw
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        }
        if is_hop_by_hop(&name) {
            check_value(raw)?;
            continue;
        }
        let value = shared_value(&head, at.value)?;
        if name == header::CONTENT_LENGTH {
            // 1*DIGIT (RFC 9110 8.6); a list of identical values is taken as one.
            for part in value.as_bytes().split(|&b| b == b',') {
                let n = parse_length(part.trim_ascii())
                    .ok_or_else(|| invalid("upstream answer has an invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(invalid(
                        "upstream answer has conflicting Content-Length values",
                    ));
                }
                length = Some(n);
            }
        }
        headers.append(name, value);
    }
    let version = if version == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing.
    if te && version == Version::HTTP_10 {
        return Err(invalid(
            "upstream answer is HTTP/1.0 with Transfer-Encoding",
        ));
    }
    let mut keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    let framing =
        if head_req || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Done
        } else if te {
            if chunked {
                // With both, Transfer-Encoding wins, and the connection is not reused
                // (RFC 9112 §6.3: a possible smuggling attempt).
                keep_alive &= length.is_none();
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::Close
            }
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::Close
        };
    if framing == Framing::Close {
        keep_alive = false;
    }
    let (mut parts, ()) = Response::new(()).into_parts();
    // A reason phrase of the upstream's own ("499 Client Closed Request") is passed on,
    // as hyper's client and server do.
    if let Some(r) = reason
        && status.canonical_reason().map(str::as_bytes) != Some(&head[r.range()])
        && let Ok(r) = hyper::ext::ReasonPhrase::try_from(head.slice(r.range()))
    {
        parts.extensions.insert(r);
    }
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Parsed::Final(parts, framing, keep_alive))
}

/// A value that is read and left out is held to what `HeaderValue` takes (the rest
/// are checked as they become one): visible ASCII, obs-text, space and tab.
fn check_value(raw: &[u8]) -> io::Result<()> {
    if raw.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)) {
        Ok(())
    } else {
        Err(invalid("upstream answer has an invalid header value"))
    }
}

/// A field's value, sharing `head`'s bytes.
fn shared_value(head: &Bytes, at: Span) -> io::Result<HeaderValue> {
    HeaderValue::from_maybe_shared(head.slice(at.range()))
        .map_err(|_| invalid("upstream answer has an invalid header value"))
}

/// The body of an answer read by [`exchange`].
#[derive(Debug)]
pub struct RawBody {
    /// `None` once the body has ended (the connection went back or was closed).
    conn: Option<RawConn>,
    framing: Framing,
    keep_alive: bool,
    checkin: Option<Checkin>,
    /// Next read size for bodies without a known length left.
    read_size: usize,
    /// Chunk-extension bytes skipped so far (capped).
    ext_bytes: usize,
}

impl RawBody {
    /// The body has ended: the connection goes back if it can be reused.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let (Some(mut conn), Some(c)) = (self.conn.take(), self.checkin.take()) else {
            return;
        };
        // Bytes after the answer: the upstream is out of step; do not reuse.
        if !self.keep_alive || !conn.buf.is_empty() {
            return;
        }
        // Keep no large buffer while idle.
        if conn.buf.capacity() > MIN_READ {
            conn.buf = BytesMut::new();
        }
        c.idle.put_raw(conn, c.max_idle);
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Read more from the upstream into the buffer; `Ok(0)` is its close.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if conn.buf.capacity() - conn.buf.len() < want.min(MIN_READ) {
            conn.buf.reserve(want);
        }
        let before = conn.buf.capacity() - conn.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut conn.io),
            cx,
            &mut conn.buf
        ))?;
        // Reads that fill the space ask for more next time (a big download).
        if n == before {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }

    fn buffered(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.buf.len())
    }

    fn take(&mut self, n: usize) -> Bytes {
        match self.conn.as_mut() {
            Some(c) => c.buf.split_to(n).freeze(),
            None => Bytes::new(),
        }
    }

    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
        mut state: Chunk,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match state {
                Chunk::Size => match parse_chunk_line(buf) {
                    Ok(Some(line)) => {
                        self.ext_bytes += line.ext_len;
                        if self.ext_bytes > MAX_CHUNK_EXT_BYTES {
                            return self.fail(invalid("upstream sent too many chunk extensions"));
                        }
                        buf.advance(line.len);
                        state = if line.size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(line.size)
                        };
                        self.framing = Framing::Chunked(state);
                        continue;
                    }
                    Ok(None) if buf.len() > MAX_CHUNK_LINE => {
                        return self.fail(invalid("upstream sent a chunk-size line too long"));
                    }
                    Ok(None) => {}
                    Err(what) => return self.fail(invalid(what)),
                },
                Chunk::Data(left) => {
                    if !buf.is_empty() {
                        let n = (buf.len() as u64).min(left);
                        let data = buf.split_to(n as usize).freeze();
                        let left = left - n;
                        state = if left == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left)
                        };
                        self.framing = Framing::Chunked(state);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Chunk::DataEnd => {
                    if buf.len() >= 2 {
                        if &buf[..2] != b"\r\n" {
                            return self.fail(invalid("upstream sent a chunk without its CRLF"));
                        }
                        buf.advance(2);
                        state = Chunk::Size;
                        self.framing = Framing::Chunked(state);
                        continue;
                    }
                }
                Chunk::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.finish();
                        return Poll::Ready(None);
                    }
                    if let Some(end) = find(buf, b"\r\n\r\n") {
                        let trailers = match parse_trailers(&buf[..end + 4]) {
                            Ok(t) => t,
                            Err(e) => return self.fail(e),
                        };
                        buf.advance(end + 4);
                        self.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    if buf.len() > MAX_TRAILER_BYTES {
                        return self.fail(invalid("upstream sent trailers too large"));
                    }
                }
            }
            let want = match state {
                Chunk::Data(left) => (left as usize).clamp(MIN_READ, self.read_size),
                _ => MIN_READ,
            };
            match ready!(self.poll_fill(cx, want)) {
                Ok(0) => return self.fail(closed_early()),
                Ok(_) => {}
                Err(e) => return self.fail(e),
            }
        }
    }
}

/// The name of an answer's field. The fields nearly every upstream sends are found by
/// length and a case-insensitive compare; `HeaderName::from_bytes` (which lowercases
/// into a buffer, then matches it against the standard names) takes the rest. By
/// callgrind, 143 fewer instructions per answer of five such fields (21,777 -> 21,638
/// per proxied request). A table of `HeaderName`s to compare against cost more than
/// it saved (the array is built and dropped on every call). Names of eight bytes or
/// more are compared a word at a time ([`eq_lowercase`]).
fn field_name(raw: &[u8]) -> Result<HeaderName, header::InvalidHeaderName> {
    let is = |name: &[u8]| eq_lowercase(raw, name);
    Ok(match raw.len() {
        4 if is(b"date") => header::DATE,
        4 if is(b"etag") => header::ETAG,
        6 if is(b"server") => header::SERVER,
        10 if is(b"connection") => header::CONNECTION,
        12 if is(b"content-type") => header::CONTENT_TYPE,
        13 if is(b"last-modified") => header::LAST_MODIFIED,
        13 if is(b"accept-ranges") => header::ACCEPT_RANGES,
        13 if is(b"cache-control") => header::CACHE_CONTROL,
        14 if is(b"content-length") => header::CONTENT_LENGTH,
        17 if is(b"transfer-encoding") => header::TRANSFER_ENCODING,
        _ => return HeaderName::from_bytes(raw),
    })
}

/// `raw` is `lower` (lower-case ASCII) but for ASCII case. From four bytes on, four or
/// eight bytes at a time (the last word overlapping the one before):
/// `eq_ignore_ascii_case` goes a byte at a time, about 500 instructions per answer of
/// nine fields (callgrind).
fn eq_lowercase(raw: &[u8], lower: &[u8]) -> bool {
    let n = raw.len();
    if n != lower.len() {
        return false;
    }
    if n < 4 {
        return raw.eq_ignore_ascii_case(lower);
    }
    if n < 8 {
        let half = |s: &[u8], at: usize| {
            s.get(at..at + 4)
                .and_then(|w| <[u8; 4]>::try_from(w).ok())
                .map(|w| u64::from(u32::from_le_bytes(w)))
        };
        return [0, n - 4]
            .into_iter()
            .all(|at| match (half(raw, at), half(lower, at)) {
                (Some(r), Some(l)) => ascii_lowercase_word(r) == l,
                _ => false,
            });
    }
    let word = |s: &[u8], at: usize| {
        s.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_le_bytes)
    };
    let mut at = 0;
    loop {
        // The last word ends at the end; it may overlap the one before.
        let at_now = at.min(n - 8);
        match (word(raw, at_now), word(lower, at_now)) {
            (Some(r), Some(l)) if ascii_lowercase_word(r) == l => {}
            _ => return false,
        }
        if at_now == n - 8 {
            return true;
        }
        at += 8;
    }
}

/// The eight bytes of `x` with `A`..=`Z` made lower case, as `u8::to_ascii_lowercase`
/// does each (other bytes, non-ASCII ones too, stay as they are).
fn ascii_lowercase_word(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    // Each byte's low seven bits plus a constant sets its bit 7 exactly when those bits
    // are >= b'A' (resp. > b'Z'); no sum carries into the next byte.
    let low7 = x & !HIGH;
    let from_a = low7 + ONES * (0x80 - u64::from(b'A'));
    let past_z = low7 + ONES * (0x80 - u64::from(b'Z') - 1);
    let upper = from_a & !past_z & !x & HIGH;
    x | (upper >> 2)
}

fn closed_early() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "upstream closed the connection before the end of the answer",
    )
}

fn has_bare_lf(block: &[u8]) -> bool {
    block
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || block[i - 1] != b'\r'))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A parsed chunk-size line.
struct ChunkLine {
    /// Bytes of the line, CRLF included.
    len: usize,
    size: u64,
    /// Bytes after the size (extensions), which are skipped.
    ext_len: usize,
}

/// `chunk-size [ chunk-ext ] CRLF` (RFC 9112 7.1): at least one hex digit, and no CR
/// or LF before the CRLF (a parser that ends lines at a bare LF would frame the body
/// differently). `Ok(None)`: the line is not complete yet.
fn parse_chunk_line(buf: &[u8]) -> Result<Option<ChunkLine>, &'static str> {
    let mut size: u64 = 0;
    let mut i = 0;
    while let Some(d) = buf.get(i).and_then(|&b| (b as char).to_digit(16)) {
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or("upstream sent a chunk size too large")?;
        i += 1;
    }
    if i == buf.len() {
        return Ok(None);
    }
    if i == 0 {
        return Err("upstream sent a chunk without a size");
    }
    let digits_end = i;
    while i < buf.len() {
        match buf[i] {
            b'\r' => {
                return match buf.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some(ChunkLine {
                        len: i + 2,
                        size,
                        ext_len: i - digits_end,
                    })),
                    Some(_) => Err("upstream sent a bare CR in a chunk-size line"),
                };
            }
            b'\n' => return Err("upstream sent a bare LF in a chunk-size line"),
            _ => i += 1,
        }
    }
    Ok(None)
}

fn parse_trailers(block: &[u8]) -> io::Result<HeaderMap> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let fields = match httparse::parse_headers(block, &mut raw) {
        // The whole block, up to its CRLF CRLF, and no line ending in a bare LF.
        Ok(httparse::Status::Complete((used, fields)))
            if used == block.len() && !has_bare_lf(block) =>
        {
            fields
        }
        _ => return Err(invalid("upstream sent invalid trailers")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| invalid("upstream sent an invalid trailer name"))?;
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| invalid("upstream sent an invalid trailer value"))?;
        map.append(name, value);
    }
    Ok(map)
}

impl http_body::Body for RawBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match this.framing {
            Framing::Done => Poll::Ready(None),
            Framing::Chunked(state) => this.poll_chunked(cx, state),
            Framing::Length(left) => {
                if this.buffered() == 0 {
                    let want = (left as usize).clamp(MIN_READ, MAX_READ);
                    match ready!(this.poll_fill(cx, want)) {
                        Ok(0) => return this.fail(closed_early()),
                        Ok(_) => {}
                        Err(e) => return this.fail(e),
                    }
                }
                let n = (this.buffered() as u64).min(left);
                let data = this.take(n as usize);
                let left = left - n;
                this.framing = Framing::Length(left);
                if left == 0 {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Framing::Close => {
                if this.buffered() == 0 {
                    let want = this.read_size;
                    match ready!(this.poll_fill(cx, want)) {
                        Ok(0) => {
                            this.framing = Framing::Done;
                            this.conn = None;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => return this.fail(e),
                    }
                }
                let n = this.buffered();
                Poll::Ready(Some(Ok(Frame::data(this.take(n)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], head_req: bool) -> io::Result<Parsed> {
        let mut buf = BytesMut::from(raw);
        parse_head(&mut buf, head_req)
    }

    fn framing(raw: &[u8]) -> (Framing, bool) {
        match head(raw, false) {
            Ok(Parsed::Final(_, f, k)) => (f, k),
            Ok(_) => panic!("not a final head"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn field_names_are_what_from_bytes_makes_of_them() {
        let names: &[&[u8]] = &[
            b"Date",
            b"ETag",
            b"etag",
            b"Server",
            b"SERVER",
            b"Connection",
            b"Content-Type",
            b"Last-Modified",
            b"Accept-Ranges",
            b"cache-control",
            b"Content-Length",
            b"content-LENGTH",
            b"Transfer-Encoding",
            b"Vary",
            b"X-Custom",
            b"Dat\xc3",
            b"Servers",
            b"Content_Type",
            b"",
            b"bad name",
            b"x\r",
            b"Date ",
        ];
        for &raw in names {
            let fast = field_name(raw).map_err(|_| ());
            let slow = HeaderName::from_bytes(raw).map_err(|_| ());
            assert_eq!(fast, slow, "{}", String::from_utf8_lossy(raw));
        }
        assert_eq!(
            field_name(b"Content-Length").unwrap(),
            header::CONTENT_LENGTH
        );
    }

    #[test]
    fn words_are_lowercased_as_each_byte_is() {
        // Every byte value in every position, beside bytes that change and bytes that do not.
        for v in 0..=255u8 {
            for pos in 0..8 {
                let mut b = *b"aZ@[`{\x80\xc1";
                b[pos] = v;
                let got = ascii_lowercase_word(u64::from_le_bytes(b)).to_le_bytes();
                assert_eq!(got, b.map(|c| c.to_ascii_lowercase()), "{b:?}");
            }
        }
        for _ in 0..10_000 {
            let b: [u8; 8] = std::array::from_fn(|_| fastrand::u8(..));
            let got = ascii_lowercase_word(u64::from_le_bytes(b)).to_le_bytes();
            assert_eq!(got, b.map(|c| c.to_ascii_lowercase()), "{b:?}");
        }
    }

    #[test]
    fn lowercase_compares_agree_with_eq_ignore_ascii_case() {
        let targets: &[&[u8]] = &[
            b"connection",
            b"content-type",
            b"transfer-encoding",
            b"date",
            b"server",
            b"x-a",
            b"x",
        ];
        for &t in targets {
            let mut raws: Vec<Vec<u8>> = vec![t.to_vec(), t.to_ascii_uppercase(), b"".to_vec()];
            // Each byte in turn changed: upper case, `@` / `[` beside the letters, a control
            // byte, a non-ASCII one, one byte more and one less.
            for i in 0..t.len() {
                for c in [b'@', b'[', b'\r', 0xc3, t[i] ^ 0x20, t[i] ^ 0x01] {
                    let mut r = t.to_vec();
                    r[i] = c;
                    raws.push(r);
                }
            }
            raws.push([t, b"s"].concat());
            raws.push(t[..t.len() - 1].to_vec());
            for r in raws {
                assert_eq!(
                    eq_lowercase(&r, t),
                    r.eq_ignore_ascii_case(t),
                    "{:?} vs {:?}",
                    String::from_utf8_lossy(&r),
                    String::from_utf8_lossy(t)
                );
            }
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            (Framing::Length(5), true)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            (Framing::Chunked(Chunk::Size), true)
        );
        // Both: chunked wins, the connection is not reused.
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"),
            (Framing::Chunked(Chunk::Size), false)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            (Framing::Close, false)
        );
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n"), (Framing::Close, false));
        assert_eq!(
            framing(b"HTTP/1.1 204 No Content\r\n\r\n"),
            (Framing::Done, true)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"),
            (Framing::Length(0), false)
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"),
            (Framing::Length(1), false)
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n"),
            (Framing::Length(1), true)
        );
        // Tokens in any case, with spaces and tabs around them, among others.
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nconnection: x-a , \tClose\r\ncontent-length: 1\r\n\r\n"),
            (Framing::Length(1), false)
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\nconnection: x-a,Keep-Alive \r\ncontent-length: 1\r\n\r\n"),
            (Framing::Length(1), true)
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\nconnection: keep-alives\r\ncontent-length: 1\r\n\r\n"),
            (Framing::Length(1), false)
        );
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true),
            Ok(Parsed::Final(_, Framing::Done, true))
        ));
        // A coding list that is not visible ASCII is not taken as chunked.
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gz\xefp, chunked\r\n\r\n"),
            (Framing::Close, false)
        );
    }

    #[test]
    fn hop_by_hop_fields_are_read_and_left_out_unless_connection_names_others() {
        let fields = |raw: &[u8]| match head(raw, false) {
            Ok(Parsed::Final(parts, _, _)) => {
                let mut names: Vec<String> = parts.headers.keys().map(|n| n.to_string()).collect();
                names.sort();
                names
            }
            _ => panic!("not a final head"),
        };
        assert_eq!(
            fields(b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\ntransfer-encoding: chunked\r\nserver: up\r\n\r\n"),
            ["server"]
        );
        // Kept, so that the later cleanup removes what it names.
        assert_eq!(
            fields(b"HTTP/1.1 200 OK\r\nconnection: x-a, keep-alive\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n"),
            ["connection", "content-length", "x-a"]
        );
    }

    #[tokio::test]
    async fn an_idle_connection_is_usable_until_the_upstream_closes_it_or_talks() {
        async fn pair() -> (RawConn, tokio::net::TcpStream) {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
            (Conn::new(a.unwrap()), b.unwrap().0)
        }
        // Quiet: usable.
        let (conn, _peer) = pair().await;
        assert!(conn.is_usable());
        // Closed by the upstream, once tokio has seen it: not usable.
        let (conn, peer) = pair().await;
        drop(peer);
        conn.io.readable().await.unwrap();
        assert!(!conn.is_usable());
        // Stray bytes: not usable.
        let (conn, mut peer) = pair().await;
        peer.write_all(b"x").await.unwrap();
        conn.io.readable().await.unwrap();
        assert!(!conn.is_usable());
    }

    #[test]
    fn values_left_out_are_held_to_what_header_value_takes() {
        for b in 0u8..=255 {
            let raw = [b'a', b, b'z'];
            assert_eq!(
                check_value(&raw).is_ok(),
                HeaderValue::from_bytes(&raw).is_ok(),
                "byte {b:#04x}"
            );
        }
    }

    #[test]
    fn bad_heads_are_errors() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5,\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTX/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(
                head(raw, false).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(head(&many, false).is_err());
    }

    #[test]
    fn interim_answers_are_skipped_and_partial_heads_wait() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"[..],
        );
        assert!(matches!(parse_head(&mut buf, false), Ok(Parsed::Interim)));
        let Ok(Parsed::Final(parts, Framing::Length(2), true)) = parse_head(&mut buf, false) else {
            panic!("no final head");
        };
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["content-length"], "2");
        assert_eq!(&buf[..], b"hi");
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\ncontent-le", false),
            Ok(Parsed::Partial)
        ));
    }

    #[test]
    fn a_list_of_equal_lengths_is_one_length() {
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n"),
            (Framing::Length(5), true)
        );
    }

    #[test]
    fn chunk_size_lines() {
        let line = |b: &[u8]| parse_chunk_line(b).map(|l| l.map(|l| (l.len, l.size, l.ext_len)));
        assert_eq!(line(b"1a\r\n"), Ok(Some((4, 26, 0))));
        assert_eq!(line(b"FF;name=value\r\nxx"), Ok(Some((15, 255, 11))));
        assert_eq!(line(b"0 \r\n"), Ok(Some((4, 0, 1))));
        assert_eq!(line(b"1a"), Ok(None));
        assert_eq!(line(b"1a;ext\r"), Ok(None));
        for bad in [
            &b"\r\n"[..],
            b" 5\r\n",
            b";ext\r\n",
            b"3;x\nabc\r\n",
            b"3\n",
            b"3\rx\n",
            b"10000000000000000\r\n",
        ] {
            assert!(line(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hop_by_hop_fields_are_left_out_unless_connection_names_others() {
        let names = |raw: &[u8]| -> Vec<String> {
            let Ok(Parsed::Final(parts, ..)) = head(raw, false) else {
                panic!("no head");
            };
            parts.headers.keys().map(|k| k.to_string()).collect()
        };
        assert_eq!(
            names(
                b"HTTP/1.1 200 OK\r\nserver: up\r\nconnection: keep-alive\r\n\
                  keep-alive: timeout=5\r\ntransfer-encoding: chunked\r\nupgrade: h2c\r\n\
                  proxy-authenticate: Basic\r\ntrailer: x-t\r\nx-app: 1\r\n\r\n"
            ),
            ["server", "x-app"]
        );
        // `Connection` names a field: it stays, for `remove_hop_by_hop` to act on, with
        // the field it names; the standard hop-by-hop ones are still left out.
        assert_eq!(
            names(
                b"HTTP/1.1 200 OK\r\nx-secret: 1\r\nconnection: keep-alive\r\n\
                  connection: x-secret\r\nkeep-alive: timeout=5\r\ncontent-length: 0\r\n\r\n"
            ),
            ["x-secret", "connection", "content-length"]
        );
    }

    #[test]
    fn trailers_must_end_in_crlf_lines() {
        assert!(parse_trailers(b"x-a: 1\r\n\r\n").is_ok());
        assert!(parse_trailers(b"x-a: 1\nx-b: 2\r\n\r\n").is_err());
    }

    #[test]
    fn own_reason_phrases_are_kept() {
        let Ok(Parsed::Final(parts, ..)) = head(
            b"HTTP/1.1 499 Client Closed Request\r\ncontent-length: 0\r\n\r\n",
            false,
        ) else {
            panic!("no head");
        };
        let r = parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .expect("kept");
        assert_eq!(r.as_bytes(), b"Client Closed Request");
        let Ok(Parsed::Final(parts, ..)) =
            head(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false)
        else {
            panic!("no head");
        };
        assert!(parts.extensions.get::<hyper::ext::ReasonPhrase>().is_none());
    }

    #[test]
    fn request_heads() {
        let mut req = Request::new(UpstreamBody::Empty);
        *req.method_mut() = Method::POST;
        *req.uri_mut() = "/a?b=c".parse().unwrap();
        req.headers_mut()
            .insert("host", HeaderValue::from_static("up"));
        let mut out = Vec::new();
        let none = GatewayFields::default();
        // No body: no framing header is made up (hyper's client adds none either).
        encode(&req, &none, None, "10.0.0.1:80", &mut out);
        assert_eq!(out, b"POST /a?b=c HTTP/1.1\r\nhost: up\r\n\r\n");
        req.headers_mut()
            .insert("content-length", HeaderValue::from_static("99"));
        encode(
            &req,
            &none,
            Some(&Bytes::from_static(b"abc")),
            "10.0.0.1:80",
            &mut out,
        );
        assert_eq!(
            out,
            b"POST /a?b=c HTTP/1.1\r\nhost: up\r\ncontent-length: 3\r\n\r\nabc"
        );
        *req.method_mut() = Method::GET;
        req.headers_mut().remove("content-length");
        req.headers_mut().remove("host");
        encode(&req, &none, None, "10.0.0.1:80", &mut out);
        assert_eq!(out, b"GET /a?b=c HTTP/1.1\r\nhost: 10.0.0.1:80\r\n\r\n");
        assert!(
            !req.headers().contains_key("host"),
            "the endpoint's Host is not kept"
        );
        // The gateway's own fields follow the request's, in their fixed order.
        req.headers_mut()
            .insert("x-a", HeaderValue::from_static("1"));
        let mut added = GatewayFields::forwarding(
            req.headers_mut(),
            &HeaderValue::from_static("192.0.2.1"),
            false,
            "http",
            None,
        );
        added.set_traceparent(HeaderValue::from_static("00-t"));
        added.set_request_id(HeaderValue::from_static("r1"));
        encode(&req, &added, None, "10.0.0.1:80", &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET /a?b=c HTTP/1.1\r\nhost: 10.0.0.1:80\r\nx-a: 1\r\n\
             x-forwarded-for: 192.0.2.1\r\nx-forwarded-proto: http\r\n\
             x-request-id: r1\r\ntraceparent: 00-t\r\n\r\n"
        );
    }
}
