//! The gateway's own failures and the one place that turns them into responses.

use http::{HeaderValue, Response, StatusCode, header};

use super::body::ResponseBody;
use crate::http::headers::{RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET, number_value};

/// Which side of the gateway a failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Side {
    /// The client sent something the gateway will not serve.
    Downstream,
    /// The upstream could not be reached or did not answer properly.
    Upstream,
}

/// Every way a request can fail inside the gateway. Each maps to one status and one
/// stable `error` code in [`ProxyError::into_response`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// No route matches the request (404 `no_route`).
    NoRoute,
    /// The path cannot be normalised safely: bad `%` escape, not absolute (400 `bad_path`).
    BadPath,
    /// `Content-Length` with `Transfer-Encoding`, several lengths, or a final coding other
    /// than chunked: a smuggling attempt or a broken client. Answered with 400
    /// `bad_framing`, and the connection is closed.
    AmbiguousFraming,
    /// `Transfer-Encoding` names a coding besides the final `chunked` (`gzip, chunked`):
    /// the gateway cannot pass the body on with that coding intact, and forwarding it
    /// without would change what the upstream reads. 501 `unsupported_transfer_coding`
    /// (RFC 9112 §6.1; nginx answers the same), and the connection is closed.
    UnsupportedTransferCoding,
    /// The branch header, cookie or baggage names no valid branch (400 `bad_branch`):
    /// names match `^[a-z0-9][a-z0-9-]{0,62}$`, so nothing else reaches DNS or a URL.
    BadBranch,
    /// Every backend of the route has weight 0 (500 `no_backend`, as the Gateway API
    /// prescribes).
    NoBackend,
    /// The client's body ended or broke before its declared length while the gateway
    /// read it (400 `bad_request_body`).
    BadRequestBody,
    /// The request target is longer than `max_uri_bytes` (414 `uri_too_long`).
    UriTooLong,
    /// The body is larger than the route allows, by `Content-Length` up front or while
    /// streaming (413 `payload_too_large`; the connection is closed).
    PayloadTooLarge,
    /// The client stopped sending its body for longer than `body_read_timeout`
    /// (408 `body_timeout`; the connection is closed).
    BodyTimeout,
    /// The route's rate limit for this key is used up (429 `rate_limited`, with
    /// `Retry-After` and `RateLimit-*`).
    RateLimited {
        /// Seconds until the key's next request is admitted (rounded up).
        retry_after: u32,
        /// The bucket's size, for `RateLimit-Limit`.
        limit: u32,
    },
    /// The route's auth policy requires a token and the request has none (401
    /// `missing_token`, `WWW-Authenticate: Bearer`).
    MissingToken,
    /// The request's token does not verify: signature, algorithm, key, `exp`, `nbf`,
    /// `iss`, `aud`, size, format (401 `invalid_token`,
    /// `WWW-Authenticate: Bearer error="invalid_token"`).
    InvalidToken,
    /// A valid token that lacks a required claim or scope, or a caller not in the
    /// policy's `allow` list (403 `forbidden`,
    /// `WWW-Authenticate: Bearer error="insufficient_scope"`).
    Forbidden,
    /// The service's concurrency limit and waiting room are full: shed at once
    /// (503 `overloaded`, `Retry-After: 1`).
    Overloaded,
    /// The service has no address to send to (503 `no_healthy_upstream`).
    NoHealthyUpstream,
    /// Every connection attempt failed or timed out (502 `upstream_connect_failed`).
    ConnectFailed,
    /// The upstream did not answer within the route's timeout (504 `upstream_timeout`).
    UpstreamTimeout,
    /// The upstream closed the connection or answered with something that is not HTTP
    /// (502 `bad_upstream_response`).
    BadUpstreamResponse,
}

impl ProxyError {
    /// Side of the failure, for logs and metrics.
    pub fn side(self) -> Side {
        match self {
            ProxyError::NoRoute
            | ProxyError::BadPath
            | ProxyError::BadBranch
            | ProxyError::AmbiguousFraming
            | ProxyError::UnsupportedTransferCoding
            | ProxyError::UriTooLong
            | ProxyError::BadRequestBody
            | ProxyError::PayloadTooLarge
            | ProxyError::BodyTimeout
            | ProxyError::RateLimited { .. }
            | ProxyError::MissingToken
            | ProxyError::InvalidToken
            | ProxyError::Forbidden => Side::Downstream,
            ProxyError::Overloaded
            | ProxyError::NoBackend
            | ProxyError::NoHealthyUpstream
            | ProxyError::ConnectFailed
            | ProxyError::UpstreamTimeout
            | ProxyError::BadUpstreamResponse => Side::Upstream,
        }
    }

    /// HTTP status of the answer.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadPath
            | ProxyError::BadBranch
            | ProxyError::AmbiguousFraming
            | ProxyError::BadRequestBody => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoBackend => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::MissingToken | ProxyError::InvalidToken => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::NoHealthyUpstream | ProxyError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::ConnectFailed | ProxyError::BadUpstreamResponse => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Stable machine-readable code, the `error` field of the JSON answer.
    pub fn code(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::BadPath => "bad_path",
            ProxyError::BadBranch => "bad_branch",
            ProxyError::AmbiguousFraming => "bad_framing",
            ProxyError::UnsupportedTransferCoding => "unsupported_transfer_coding",
            ProxyError::UriTooLong => "uri_too_long",
            ProxyError::BadRequestBody => "bad_request_body",
            ProxyError::PayloadTooLarge => "payload_too_large",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::NoBackend => "no_backend",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::MissingToken => "missing_token",
            ProxyError::InvalidToken => "invalid_token",
            ProxyError::Forbidden => "forbidden",
            ProxyError::Overloaded => "overloaded",
            ProxyError::NoHealthyUpstream => "no_healthy_upstream",
            ProxyError::ConnectFailed => "upstream_connect_failed",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::BadUpstreamResponse => "bad_upstream_response",
        }
    }

    /// gRPC status code of the answer to a gRPC request (the codes of
    /// `grpc/doc/statuscodes.md`; connection failures are UNAVAILABLE, which clients
    /// may retry; timeouts DEADLINE_EXCEEDED).
    pub fn grpc_status(self) -> u8 {
        const INVALID_ARGUMENT: u8 = 3;
        const DEADLINE_EXCEEDED: u8 = 4;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const UNIMPLEMENTED: u8 = 12;
        const INTERNAL: u8 = 13;
        const UNAVAILABLE: u8 = 14;
        const PERMISSION_DENIED: u8 = 7;
        const UNAUTHENTICATED: u8 = 16;
        match self {
            ProxyError::MissingToken | ProxyError::InvalidToken => UNAUTHENTICATED,
            ProxyError::Forbidden => PERMISSION_DENIED,
            ProxyError::NoRoute | ProxyError::UnsupportedTransferCoding => UNIMPLEMENTED,
            ProxyError::BadPath
            | ProxyError::UriTooLong
            | ProxyError::AmbiguousFraming
            | ProxyError::BadRequestBody
            | ProxyError::BadBranch => INVALID_ARGUMENT,
            ProxyError::PayloadTooLarge | ProxyError::RateLimited { .. } => RESOURCE_EXHAUSTED,
            ProxyError::BodyTimeout | ProxyError::UpstreamTimeout => DEADLINE_EXCEEDED,
            ProxyError::NoBackend => INTERNAL,
            ProxyError::Overloaded
            | ProxyError::NoHealthyUpstream
            | ProxyError::ConnectFailed
            | ProxyError::BadUpstreamResponse => UNAVAILABLE,
        }
    }

    /// The answer: JSON `{"error":"…","request_id":"…"}`, or for a gRPC request
    /// (`grpc`) a Trailers-Only gRPC answer: HTTP 200 with `grpc-status` and
    /// `grpc-message` (the same stable code), as gRPC clients read only those.
    pub fn into_response(self, request_id: &HeaderValue, grpc: bool) -> Response<ResponseBody> {
        if grpc {
            return self.into_grpc_response();
        }
        let id = request_id.to_str().unwrap_or("");
        // The id was validated or generated: only [A-Za-z0-9._:-], nothing to escape.
        let body = format!(
            "{{\"error\":\"{}\",\"request_id\":\"{}\"}}\n",
            self.code(),
            id
        );
        let mut resp = Response::new(ResponseBody::full(body));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            ProxyError::RateLimited { retry_after, limit } => {
                h.insert(header::RETRY_AFTER, number_value(retry_after));
                h.insert(RATELIMIT_LIMIT.clone(), number_value(limit));
                h.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from_static("0"));
                h.insert(RATELIMIT_RESET.clone(), number_value(retry_after));
            }
            ProxyError::Overloaded => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // RFC 6750 section 3: no error code when no token was sent.
            ProxyError::MissingToken => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ProxyError::InvalidToken => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            ProxyError::Forbidden => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
                );
            }
            _ => {}
        }
        // The rest of the client's message is not read: the connection cannot be reused.
        if matches!(
            self,
            ProxyError::AmbiguousFraming
                | ProxyError::UnsupportedTransferCoding
                | ProxyError::PayloadTooLarge
                | ProxyError::BodyTimeout
                | ProxyError::BadRequestBody
        ) {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    fn into_grpc_response(self) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        // The code is plain ASCII: nothing to percent-encode.
        h.insert("grpc-message", HeaderValue::from_static(self.code()));
        if let ProxyError::RateLimited { retry_after, .. } = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_json_answer() {
        let all = [
            ProxyError::NoRoute,
            ProxyError::BadPath,
            ProxyError::BadBranch,
            ProxyError::AmbiguousFraming,
            ProxyError::UnsupportedTransferCoding,
            ProxyError::UriTooLong,
            ProxyError::BadRequestBody,
            ProxyError::PayloadTooLarge,
            ProxyError::BodyTimeout,
            ProxyError::RateLimited {
                retry_after: 1,
                limit: 10,
            },
            ProxyError::Overloaded,
            ProxyError::MissingToken,
            ProxyError::InvalidToken,
            ProxyError::Forbidden,
            ProxyError::NoBackend,
            ProxyError::NoHealthyUpstream,
            ProxyError::ConnectFailed,
            ProxyError::UpstreamTimeout,
            ProxyError::BadUpstreamResponse,
        ];
        for e in all {
            let resp = e.into_response(&HeaderValue::from_static("abc"), false);
            assert_eq!(resp.status(), e.status());
            let g = e.into_response(&HeaderValue::from_static("abc"), true);
            assert_eq!(g.status(), StatusCode::OK);
            assert_eq!(
                g.headers()["grpc-status"],
                e.grpc_status().to_string().as_str()
            );
            assert_eq!(g.headers()["grpc-message"], e.code());
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
            // 501 is the one answer about the client's request that is not a 4xx.
            let client_side =
                e.status().is_client_error() || e == ProxyError::UnsupportedTransferCoding;
            assert_eq!(client_side, e.side() == Side::Downstream, "{e:?}");
        }
    }
}
