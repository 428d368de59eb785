//! The gateway's own HTTP/1.1 exchange (requests without a streamed body): answers
//! framed every way RFC 9112 allows, broken answers refused, connections reused only
//! when that is safe, and the keep-alive race.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

fn one_route(endpoint: std::net::SocketAddr) -> String {
    config(&format!(
        "[services.s]\nendpoints = [\"{endpoint}\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n"
    ))
}

/// What the scripted upstream does with one request.
struct Reply {
    bytes: Vec<u8>,
    /// Close the connection after writing `bytes`.
    close: bool,
}

fn keep(bytes: impl Into<Vec<u8>>) -> Reply {
    Reply {
        bytes: bytes.into(),
        close: false,
    }
}

fn close(bytes: impl Into<Vec<u8>>) -> Reply {
    Reply {
        bytes: bytes.into(),
        close: true,
    }
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    conn: usize,
    head: String,
    body: Vec<u8>,
}

type Script = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

/// A raw upstream that answers each request (head and `content-length` body) with
/// what `script(request, index on its connection)` says, and records what it saw.
struct Scripted {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start(script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (a, s) = (accepted.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, conn, script.clone(), s.clone()));
            }
        });
        Scripted {
            addr,
            accepted,
            seen,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut s: tokio::net::TcpStream,
    conn: usize,
    script: Arc<Script>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for index in 0.. {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        buf.drain(..end);
        while buf.len() < length {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let request = Seen {
            conn,
            head,
            body: buf.drain(..length).collect(),
        };
        seen.lock().expect("lock").push(request.clone());
        let reply = script(&request, index);
        if s.write_all(&reply.bytes).await.is_err() || reply.close {
            return;
        }
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_answers_with_extensions_and_trailers_are_decoded_and_the_connection_reused() {
    let up = Scripted::start(|_, _| {
        let mut a = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        a.extend_from_slice(b"5;ext=1\r\nhello\r\n");
        // A chunk far larger than one read.
        a.extend_from_slice(format!("{:x}\r\n", 300_000).as_bytes());
        a.extend_from_slice(&vec![b'x'; 300_000]);
        a.extend_from_slice(b"\r\n0\r\nx-checksum: abc\r\n\r\n");
        keep(a)
    })
    .await;
    let gw = Gateway::start(&one_route(up.addr));
    let c = client();
    for _ in 0..3 {
        let a = get(&c, &gw.url("/c")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body.len(), 300_005);
        assert!(a.body.starts_with(b"helloxxx"));
    }
    assert_eq!(
        up.accepted(),
        1,
        "the connection was reused after each chunked answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_of_an_answer_never_reach_the_client() {
    let up = Scripted::start(|req, _| {
        // The second request's answer names a field of its own in `Connection`.
        let named = if req.head.starts_with("GET /named ") {
            "connection: x-secret\r\n"
        } else {
            ""
        };
        keep(format!(
            "HTTP/1.1 200 OK\r\nx-secret: 1\r\nconnection: keep-alive\r\n{named}\
             keep-alive: timeout=5\r\nupgrade: h2c\r\nproxy-authenticate: Basic\r\n\
             trailer: x-t\r\nx-app: yes\r\ncontent-length: 2\r\n\r\nok"
        ))
    })
    .await;
    let gw = Gateway::start(&one_route(up.addr));
    let c = client();
    for (path, secret_kept) in [("/plain", true), ("/named", false)] {
        let a = get(&c, &gw.url(path)).await;
        assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"ok"[..]));
        for gone in [
            "connection",
            "keep-alive",
            "upgrade",
            "proxy-authenticate",
            "trailer",
        ] {
            assert!(
                a.headers.get(gone).is_none(),
                "{path}: {gone} was passed on"
            );
        }
        assert_eq!(a.headers["x-app"], "yes");
        assert_eq!(a.headers.contains_key("x-secret"), secret_kept, "{path}");
    }
    assert_eq!(up.accepted(), 1, "the connection was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_length_is_read_to_the_close_and_not_reused() {
    let up = Scripted::start(|_, _| {
        let mut a = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n".to_vec();
        a.extend_from_slice(&vec![b'y'; 200_000]);
        close(a)
    })
    .await;
    let gw = Gateway::start(&one_route(up.addr));
    let c = client();
    for _ in 0..2 {
        let a = get(&c, &gw.url("/")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body.len(), 200_000);
    }
    assert_eq!(up.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_answers_are_skipped() {
    let up = Scripted::start(|_, _| {
        keep(
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n\
              HTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\nnew"
                .to_vec(),
        )
    })
    .await;
    let gw = Gateway::start(&one_route(up.addr));
    let a = get(&client(), &gw.url("/")).await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::CREATED, &b"new"[..]));
    assert!(a.headers.get("link").is_none(), "an interim field leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_204_answers_have_no_body_and_keep_the_connection() {
    let up = Scripted::start(|req, _| {
        if req.head.starts_with("HEAD ") {
            keep(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec())
        } else if req.head.starts_with("DELETE ") {
            keep(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec())
        } else {
            keep(OK)
        }
    })
    .await;
    let gw = Gateway::start(&one_route(up.addr));
    let c = client();
    for method in [Method::HEAD, Method::DELETE, Method::GET, Method::HEAD] {
        let req = Request::builder()
            .method(method.clone())
            .uri(gw.url("/x"))
            .body(empty())
            .expect("request");
        let a = send(&c, req).await;
        assert!(a.status.is_success(), "{method}: {}", a.status);
        if method == Method::HEAD {
            assert_eq!(a.headers["content-length"], "1000");
        }
    }
    assert_eq!(up.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_answers_are_502_and_the_gateway_keeps_serving() {
    let many_fields = {
        let mut a = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..101 {
            a.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        a.extend_from_slice(b"content-length: 0\r\n\r\n");
        a
    };
    let bad: Vec<Vec<u8>> = vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".to_vec(),
        b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\nok".to_vec(),
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n".to_vec(),
        b"SMTP ready\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n".to_vec(),
        many_fields,
        // Closed half-way through the head.
        b"HTTP/1.1 200 OK\r\ncontent-le".to_vec(),
    ];
    let replies = bad.clone();
    let up = Scripted::start(move |req, _| {
        let n: Option<usize> = req
            .head
            .strip_prefix("GET /bad/")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok());
        match n.and_then(|n| replies.get(n)) {
            Some(b) => close(b.clone()),
            None => keep(OK),
        }
    })
    .await;
    let gw = Gateway::start(&one_route(up.addr));
    let c = client();
    for (i, b) in bad.iter().enumerate() {
        let a = get(&c, &gw.url(&format!("/bad/{i}"))).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_GATEWAY,
            "{:?}",
            String::from_utf8_lossy(b)
        );
    }
    let a = get(&c, &gw.url("/fine")).await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"ok"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_an_answer_make_the_connection_unusable() {
    let up = Scripted::start(|_, _| {
        keep(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokSTRAY".to_vec())
    })
    .await;
    let gw = Gateway::start(&one_route(up.addr));
    let c = client();
    for _ in 0..3 {
        let a = get(&c, &gw.url("/")).await;
        assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"ok"[..]));
    }
    assert_eq!(
        up.accepted(),
        3,
        "no connection was reused after stray bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_buffered_body_goes_out_with_its_length() {
    let up = Scripted::start(|_, _| keep(OK)).await;
    let gw = Gateway::start(&one_route(up.addr));
    let req = Request::post(gw.url("/p"))
        .header("content-type", "text/plain")
        .body(full("0123456789"))
        .expect("request");
    let a = send(&client(), req).await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"0123456789");
    assert!(
        seen[0]
            .head
            .to_ascii_lowercase()
            .contains("content-length: 10\r\n"),
        "{}",
        seen[0].head
    );
}

/// The upstream closes a reused connection after reading the second request, without
/// answering: the keep-alive race, seen from the gateway. A safe method is sent once
/// more on a new connection whatever the retry policy; any other was written, so only
/// the retry policy may send it again (`reset`: idempotent methods only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_written_request_is_sent_again_only_if_safe_or_by_the_retry_policy() {
    let script = |req: &Seen, index: usize| {
        if req.conn == 0 && index == 1 {
            close(Vec::new())
        } else {
            keep(OK)
        }
    };
    let c = client();
    for (retry, method, status, sent) in [
        ("", Method::DELETE, StatusCode::BAD_GATEWAY, 1),
        ("", Method::PUT, StatusCode::BAD_GATEWAY, 1),
        ("", Method::POST, StatusCode::BAD_GATEWAY, 1),
        ("", Method::GET, StatusCode::OK, 2),
        ("", Method::HEAD, StatusCode::OK, 2),
        (
            "[defaults]\nretry = { attempts = 2, on = [\"reset\"] }\n",
            Method::DELETE,
            StatusCode::OK,
            2,
        ),
        (
            "[defaults]\nretry = { attempts = 2, on = [\"reset\"] }\n",
            Method::GET,
            StatusCode::OK,
            2,
        ),
        (
            "[defaults]\nretry = { attempts = 2, on = [\"reset\"] }\n",
            Method::POST,
            StatusCode::BAD_GATEWAY,
            1,
        ),
    ] {
        let up = Scripted::start(script).await;
        let gw = Gateway::start(&config(&format!(
            "{retry}[services.s]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
            up.addr
        )));
        assert_eq!(get(&c, &gw.url("/first")).await.status, StatusCode::OK);
        let req = Request::builder()
            .method(method.clone())
            .uri(gw.url("/second"))
            .body(empty())
            .expect("request");
        let got = send(&c, req).await.status;
        let times = up
            .seen()
            .iter()
            .filter(|s| s.head.starts_with(&format!("{method} /second ")))
            .count();
        assert_eq!((got, times), (status, sent), "{method} with {retry:?}");
    }
}

/// A retry to another endpoint carries that endpoint's `Host`, not the first one's,
/// when the client sent none (HTTP/1.0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_to_another_endpoint_sends_its_own_host() {
    let first = Arc::new(AtomicUsize::new(0));
    let script = move |_: &Seen, _: usize| {
        if first.fetch_add(1, Ordering::SeqCst) == 0 {
            close(Vec::new())
        } else {
            keep(OK)
        }
    };
    let a = Scripted::start(script.clone()).await;
    let b = Scripted::start(script).await;
    let gw = Gateway::start(&config(&format!(
        "[defaults]\nretry = {{ attempts = 2, on = [\"reset\"] }}\n[services.s]\nendpoints = [\"{}\", \"{}\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        a.addr, b.addr
    )));
    let answer = raw(gw.addr, b"GET /h HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    for up in [&a, &b] {
        for seen in up.seen() {
            let host = seen
                .head
                .lines()
                .find_map(|l| l.strip_prefix("host: "))
                .unwrap_or("");
            assert_eq!(host, up.addr.to_string(), "{}", seen.head);
        }
    }
    assert_eq!(a.seen().len() + b.seen().len(), 2);
}

/// Chunked answers that hyper's decoder refused are refused here too: a chunk-size line
/// without digits (it would end the answer early) and a bare LF in a chunk extension (a
/// parser that ends lines at LF would frame the body differently). The client sees the
/// answer break off, and the connection is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunk_size_lines_break_the_answer() {
    for body in [
        &b"5\r\nhello\r\n\r\n\r\n"[..],
        b"3;x\nabc\r\nxyz\r\n0\r\n\r\n",
    ] {
        let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        answer.extend_from_slice(body);
        let up = Scripted::start(move |req, _| {
            if req.head.starts_with("GET /next ") {
                keep(OK)
            } else {
                keep(answer.clone())
            }
        })
        .await;
        let gw = Gateway::start(&one_route(up.addr));
        let c = client();
        // The answer breaks off: before its head reached the client (the gateway had
        // the whole broken answer at once) or during its body.
        let got = tokio::time::timeout(SOON, async {
            let resp = c
                .request(Request::get(gw.url("/")).body(empty()).expect("request"))
                .await
                .map_err(|e| e.to_string())?;
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| e.to_string())
        })
        .await
        .expect("in time");
        assert!(
            got.is_err(),
            "{:?} accepted as {got:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(
            get(&client(), &gw.url("/next")).await.status,
            StatusCode::OK
        );
        assert_eq!(up.accepted(), 2, "the broken connection was not reused");
    }
}

/// An upstream's own reason phrase reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_own_reason_phrase_is_passed_on() {
    let up = Scripted::start(|_, _| {
        keep(b"HTTP/1.1 299 Quite Fine\r\ncontent-length: 0\r\n\r\n".to_vec())
    })
    .await;
    let gw = Gateway::start(&one_route(up.addr));
    let answer = raw(
        gw.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 299 Quite Fine\r\n"),
        "{answer}"
    );
}
