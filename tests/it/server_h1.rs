//! The gateway's own HTTP/1.1 reader and writer (`src/server/h1.rs`): `GET`s and small
//! `Content-Length` bodies on keep-alive connections, pipelining, the hand-over to
//! hyper for every other request on the same connection, and answers framed as hyper
//! frames them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// An upstream that answers by path: `/stream` in three pieces of unknown length,
/// `/204` and `/304` without a body, `/body` with what it received, else the path.
async fn upstream() -> Upstream {
    Upstream::start(|req| async move {
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/stream" => {
                let pieces = ["one,", "two,", "three"].into_iter().map(|p| {
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(
                        Bytes::from_static(p.as_bytes()),
                    ))
                });
                Response::new(StreamBody::new(futures_util::stream::iter(pieces)).boxed())
            }
            "/204" | "/304" => {
                let mut r = Response::new(empty());
                *r.status_mut() = if path == "/204" {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::NOT_MODIFIED
                };
                r
            }
            "/body" => {
                let method = req.method().to_string();
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let body = body.unwrap_or_default();
                text(format!("{method} {}", String::from_utf8_lossy(&body)))
            }
            _ => text(format!("{} {path}", req.method())),
        }
    })
    .await
}

fn one_route(up: &Upstream, server: &str) -> String {
    config(&format!(
        "{server}[services.s]\nendpoints = [{}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        up.endpoint()
    ))
}

/// The answers in `raw`, in order: (head, body), each body read by its
/// `content-length` or decoded from `chunked`.
fn answers(mut raw: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(end) = raw.find("\r\n\r\n") {
        let head = raw[..end].to_string();
        raw = &raw[end + 4..];
        let lower = head.to_ascii_lowercase();
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map(|v| v.trim().parse::<usize>().expect("content-length"));
        let mut body = String::new();
        if let Some(n) = length {
            let n = n.min(raw.len());
            body.push_str(&raw[..n]);
            raw = &raw[n..];
        } else if lower.contains("transfer-encoding: chunked") {
            loop {
                let line_end = raw.find("\r\n").expect("chunk size line");
                let size = usize::from_str_radix(&raw[..line_end], 16).expect("chunk size");
                raw = &raw[line_end + 2..];
                if size == 0 {
                    assert!(
                        raw.starts_with("\r\n"),
                        "no end after the last chunk: {raw:?}"
                    );
                    raw = &raw[2..];
                    break;
                }
                body.push_str(&raw[..size]);
                assert_eq!(&raw[size..size + 2], "\r\n", "chunk not ended by CRLF");
                raw = &raw[size + 2..];
            }
        }
        out.push((head, body));
    }
    assert!(raw.is_empty(), "bytes after the last answer: {raw:?}");
    out
}

/// Everything `s` sends until the gateway closes it, within `SOON`.
async fn to_end(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(SOON, s.read_to_end(&mut out))
        .await
        .expect("closed in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// Read `s` to its end, within `SOON`: one answer with `body`, marked as the last.
async fn last_answer(s: &mut tokio::net::TcpStream, body: &str) {
    let answer = to_end(s).await;
    let a = answers(&answer);
    assert_eq!(a.len(), 1, "{answer}");
    assert_eq!(a[0].1, body);
    assert_eq!(field(&a[0].0, "connection"), ["close"], "{}", a[0].0);
}

fn field<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_gets_are_answered_in_order_on_one_connection() {
    let up = upstream().await;
    let gw = Gateway::start(&one_route(&up, ""));
    let resp = raw(
        gw.addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n\
          GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let a = answers(&resp);
    let bodies: Vec<&str> = a.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, ["GET /a", "GET /b", "GET /c"], "{resp}");
    assert!(field(&a[0].0, "connection").is_empty(), "{}", a[0].0);
    // The last one asked to close: told so, and the connection ended (`raw` read to the
    // end within its time).
    assert_eq!(field(&a[2].0, "connection"), ["close"], "{}", a[2].0);
    assert_eq!(up.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_this_path_does_not_take_go_to_hyper_on_the_same_connection() {
    let up = upstream().await;
    let gw = Gateway::start(&one_route(&up, ""));
    // A GET and a POST with a small body, read by the gateway; then a chunked POST, a
    // GET and a HEAD, read by hyper, whose read starts with the bytes already read.
    let resp = raw(
        gw.addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nchunky\r\n0\r\n\r\n\
          GET /b HTTP/1.1\r\nHost: x\r\nx-after: hyper\r\n\r\n\
          HEAD /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    // HEAD's answer has a length but no body: read the four others, then check it.
    let (rest, head) = resp.rsplit_once("HTTP/1.1 200 OK").expect("HEAD answer");
    let a = answers(rest);
    let bodies: Vec<&str> = a.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(
        bodies,
        ["GET /a", "POST hello", "POST chunky", "GET /b"],
        "{resp}"
    );
    assert!(head.ends_with("\r\n\r\n"), "{head:?}");
    assert_eq!(up.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_are_read_with_their_head_and_pipelined_requests_follow() {
    let up = upstream().await;
    let gw = Gateway::start(&one_route(&up, ""));
    // 5,000 bytes: the requests (~5.6 KB, one write, so all in the socket at once) do
    // not fit the first read (4 KiB), so this body is finished by `read_body`.
    let big = "b".repeat(5000);
    let requests = format!(
        "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
         PUT /body HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n\
         DELETE /body HTTP/1.1\r\nHost: x\r\n\r\n\
         PATCH /body HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
         OPTIONS /body HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nGET \
         PUT /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{big}\
         GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /probe HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n"
    );
    let resp = raw(gw.addr, requests.as_bytes()).await;
    let a = answers(&resp);
    assert_eq!(a.len(), 8, "{}", &resp[..resp.len().min(2000)]);
    let bodies: Vec<&str> = a[..7].iter().map(|(_, b)| b.as_str()).collect();
    let put_big = format!("PUT {big}");
    assert_eq!(
        bodies,
        [
            "POST hello",
            "PUT ",
            "DELETE ",
            "PATCH abc",
            // A body that looks like a head is still a body.
            "OPTIONS GET ",
            put_big.as_str(),
            "GET /a"
        ],
        "{}",
        &resp[..resp.len().min(2000)]
    );
    // The probe: two `Content-Length` fields, which this path refuses (hyper would fold
    // them and answer 200). Its 400 shows that every request before it, the bodies
    // included, was read by the gateway's own path: none was handed to hyper.
    assert!(a[7].0.starts_with("HTTP/1.1 400"), "{}", a[7].0);
    assert!(a[7].1.contains("bad_framing"), "{}", a[7].1);
    assert_eq!(field(&a[7].0, "connection"), ["close"], "{}", a[7].0);
    assert_eq!(up.hits(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_body_this_path_reads_and_a_larger_one_are_both_delivered() {
    let up = upstream().await;
    let gw = Gateway::start(&one_route(&up, ""));
    // Which reader takes the first depends on how the bytes come in (a body not all
    // there goes to hyper); the answers may not.
    let (max, over) = ("m".repeat(64 * 1024), "o".repeat(64 * 1024 + 1));
    let requests = format!(
        "PUT /body HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{max}\
         PUT /body HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{over}",
        max.len(),
        over.len()
    );
    let resp = raw(gw.addr, requests.as_bytes()).await;
    let a = answers(&resp);
    let bodies: Vec<String> = a.into_iter().map(|(_, b)| b).collect();
    assert_eq!(bodies, [format!("PUT {max}"), format!("PUT {over}")]);
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_comes_after_its_head_is_waited_for_here() {
    let up = upstream().await;
    let gw = Gateway::start(&one_route(&up, ""));
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .expect("write");
    // The rest in a second write: read whole or in two pieces, the body is the same,
    // and either way the connection stays on this path (the probe below).
    s.write_all(
        b"56789GET /probe HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n",
    )
    .await
    .expect("write");
    let out = to_end(&mut s).await;
    let a = answers(&out);
    assert_eq!(a.len(), 2, "{out}");
    assert_eq!(a[0].1, "POST 0123456789", "{out}");
    // The probe that only this path refuses: the body did not send the connection to
    // hyper.
    assert!(a[1].0.starts_with("HTTP/1.1 400"), "{out}");
    assert!(a[1].1.contains("bad_framing"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_by_the_client_is_never_sent_on_as_whole() {
    let up = upstream().await;
    let gw = Gateway::start(&one_route(&up, ""));
    // Half the body, then the client's end of sending.
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .expect("write");
    s.shutdown().await.expect("shutdown");
    let out = to_end(&mut s).await;
    assert!(
        !out.contains("POST 01234"),
        "a short body went on as a whole: {out}"
    );
    assert!(
        out.is_empty() || out.starts_with("HTTP/1.1 400"),
        "nothing, or hyper's 400 for the short body: {out}"
    );
    // The gateway serves on.
    assert_eq!(get(&client(), &gw.url("/ok")).await.body, "GET /ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_unknown_length_is_chunked_and_the_connection_kept() {
    let up = upstream().await;
    let gw = Gateway::start(&one_route(&up, ""));
    let resp = raw(
        gw.addr,
        b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let a = answers(&resp);
    assert_eq!(a.len(), 2, "{resp}");
    assert_eq!(
        field(&a[0].0, "transfer-encoding"),
        ["chunked"],
        "{}",
        a[0].0
    );
    assert!(field(&a[0].0, "content-length").is_empty());
    assert_eq!(a[0].1, "one,two,three");
    assert_eq!(a[1].1, "GET /after");
    // And a real client reads it the same way.
    let got = get(&client(), &gw.url("/stream")).await;
    assert_eq!(got.body, "one,two,three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_and_not_modified_have_no_body_and_no_length() {
    let up = upstream().await;
    let gw = Gateway::start(&one_route(&up, ""));
    let resp = raw(
        gw.addr,
        b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\nGET /304 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let a = answers(&resp);
    assert_eq!(a.len(), 3, "{resp}");
    assert!(a[0].0.starts_with("HTTP/1.1 204 No Content"), "{}", a[0].0);
    assert!(
        a[1].0.starts_with("HTTP/1.1 304 Not Modified"),
        "{}",
        a[1].0
    );
    for (head, body) in &a[..2] {
        assert!(field(head, "content-length").is_empty(), "{head}");
        assert!(field(head, "transfer-encoding").is_empty(), "{head}");
        assert_eq!(body, "");
    }
    assert_eq!(a[2].1, "GET /after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_has_one_date_field() {
    let up = upstream().await;
    let gw = Gateway::start(&config(&format!(
        "[services.s]\nendpoints = [{}]\n[[routes]]\nname = \"r\"\npath = \"/api\"\nservice = \"s\"\n",
        up.endpoint()
    )));
    // The upstream's own date is passed on; the gateway's own answer (404) gets one.
    let resp = raw(
        gw.addr,
        b"GET /api HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let a = answers(&resp);
    assert_eq!(a.len(), 2, "{resp}");
    assert!(a[1].0.starts_with("HTTP/1.1 404 Not Found"), "{}", a[1].0);
    for (head, _) in &a {
        let dates = field(head, "date");
        assert_eq!(dates.len(), 1, "{head}");
        assert!(httpdate::parse_http_date(dates[0]).is_ok(), "{head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_fields_than_this_path_parses_are_served_by_hyper_within_max_headers() {
    let up = Upstream::start(|req| async move { json(&echo_value("s", &req)) }).await;
    let gw = Gateway::start(&one_route(&up, ""));
    // 80 fields: over the 64 this path parses, under the default `max_headers` (100).
    let mut req = String::from("GET /many HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..78 {
        req.push_str(&format!("x-f-{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    let resp = raw(gw.addr, req.as_bytes()).await;
    let a = answers(&resp);
    assert!(a[0].0.starts_with("HTTP/1.1 200 OK"), "{resp}");
    let seen: serde_json::Value = serde_json::from_str(&a[0].1).expect("echo");
    assert_eq!(seen["headers"]["x-f-77"], "77");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_ends_short_of_its_length_ends_the_connection() {
    // The upstream announces 100 bytes, sends 5 and closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let upstream = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello")
                .await;
        }
    });
    // A header-read timeout longer than the bound below, so that only the failed
    // answer can end the connection in time.
    let gw = Gateway::start(&config(&format!(
        "[server]\nheader_read_timeout = \"60s\"\n[services.s]\nendpoints = [\"{addr}\"]\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n"
    )));
    let started = Instant::now();
    // No `Connection: close`: only the gateway can end this connection.
    let resp = raw(gw.addr, b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the connection was left open"
    );
    let (head, body) = resp.split_once("\r\n\r\n").expect("a head");
    assert_eq!(field(head, "content-length"), ["100"], "{head}");
    assert_eq!(body, "hello");
    upstream.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_an_idle_keep_alive_connection_and_tells_a_busy_one() {
    let (up, arrived) = Upstream::slow(Duration::from_millis(1000), "finished").await;
    // Neither the header-read timeout (60 s) nor the drain timeout (30 s) can close the
    // idle connection within `SOON` (20 s): only the shutdown can.
    let mut gw = Gateway::start(&one_route(&up, "[server]\nheader_read_timeout = \"60s\"\n"));
    // One connection that has had an answer and now waits, one with a request inside.
    let mut idle = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    idle.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    read_until(&mut idle, "finished").await;
    // The first request's arrival is recorded too: take it, so that the wait below is
    // for the second one.
    tokio::time::timeout(SOON, arrived.notified())
        .await
        .expect("first request recorded");
    let mut busy = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    busy.write_all(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    tokio::time::timeout(SOON, arrived.notified())
        .await
        .expect("request reached the upstream");
    gw.signal("TERM");
    gw.wait_log("draining");
    // The idle one is closed without an answer.
    let rest = to_end(&mut idle).await;
    assert!(rest.is_empty(), "{rest:?}");
    // The busy one gets its answer, marked as the last.
    last_answer(&mut busy, "finished").await;
    assert_eq!(gw.wait_exit(SOON).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_only_hyper_can_refuse_gets_hyper_s_400_after_good_gets() {
    let up = upstream().await;
    let gw = Gateway::start(&one_route(&up, ""));
    // `<` passes httparse but not `http::Uri`: found after the head was taken apart, the
    // bytes are put back together for hyper, which answers 400 and closes.
    let resp = raw(
        gw.addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /a<b> HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let (first, rest) = resp.split_once("GET /a").expect("first answer");
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(rest.contains("HTTP/1.1 400 Bad Request"), "{resp}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_request_and_frees_the_slot() {
    let arrived = std::sync::Arc::new(tokio::sync::Notify::new());
    let signal = arrived.clone();
    let up = Upstream::start(move |req| {
        let signal = signal.clone();
        async move {
            if req.uri().path() == "/slow" {
                signal.notify_one();
                // Longer than the test waits: only a cancel frees the slot in time.
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            text("done")
        }
    })
    .await;
    let gw = Gateway::start(&config(&format!(
        "[services.s]\nendpoints = [{}]\nmax_in_flight = 1\nmax_pending = 0\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        up.endpoint()
    )));
    let mut gone = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    gone.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    tokio::time::timeout(SOON, arrived.notified())
        .await
        .expect("request reached the upstream");
    // The one slot is taken: a second request is shed.
    assert_eq!(get(&client(), &gw.url("/fast")).await.status, 503);
    drop(gone);
    // Once the gateway has seen the client go, the slot is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = get(&client(), &gw.url("/fast")).await;
        if a.status == 200 {
            assert_eq!(a.body, "done");
            break;
        }
        assert_eq!(a.status, 503);
        assert!(Instant::now() < deadline, "the slot was not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_handed_to_hyper_after_shutdown_began_is_answered() {
    let up = upstream().await;
    let mut gw = Gateway::start(&one_route(&up, ""));
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    // A first answer shows the connection accepted (one still in the accept queue at
    // shutdown is reset, which is not what this test is about).
    s.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    read_until(&mut s, "GET /first").await;
    // Part of a POST head: in the socket before the signal, so the gateway's own reader
    // reads it first and waits for the rest.
    s.write_all(b"POST /body HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    gw.signal("TERM");
    gw.wait_log("draining");
    // The rest: the whole head goes to hyper after the shutdown began.
    s.write_all(b"Content-Length: 2\r\n\r\nhi")
        .await
        .expect("write");
    last_answer(&mut s, "POST hi").await;
    assert_eq!(gw.wait_exit(SOON).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_http2_preface_is_cut_off_by_the_header_read_timeout() {
    let up = upstream().await;
    let gw = Gateway::start(&one_route(&up, "[server]\nheader_read_timeout = \"1s\"\n"));
    let started = Instant::now();
    // `raw` reads until the gateway closes, or gives up after `SOON` (20 s).
    let resp = raw(gw.addr, b"PRI * HTTP/2.0\r\n").await;
    assert!(resp.is_empty(), "{resp}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "still open after {took:?}");
    // A whole preface still reaches hyper's HTTP/2 server.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<Bytes>>();
    let answer = h2
        .get(gw.url("/x").parse().expect("uri"))
        .await
        .expect("h2c answer");
    assert_eq!(answer.version(), http::Version::HTTP_2);
    assert_eq!(answer.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_pipelined_gets_across_many_reads_are_answered_in_order() {
    let up = upstream().await;
    let gw = Gateway::start(&one_route(&up, ""));
    // About 20 KiB of heads in one write: the gateway reads them in several pieces, so
    // heads are cut at read boundaries.
    let mut burst = String::new();
    for i in 0..300 {
        let close = if i == 299 {
            "Connection: close\r\n"
        } else {
            ""
        };
        burst.push_str(&format!(
            "GET /item/{i} HTTP/1.1\r\nHost: x\r\nx-filler: {}\r\n{close}\r\n",
            "f".repeat(i % 40)
        ));
    }
    let resp = raw(gw.addr, burst.as_bytes()).await;
    let a = answers(&resp);
    assert_eq!(a.len(), 300, "{} answers", a.len());
    for (i, (head, body)) in a.iter().enumerate() {
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{i}: {head}");
        assert_eq!(body, &format!("GET /item/{i}"));
    }
    assert_eq!(up.hits(), 300);
}
