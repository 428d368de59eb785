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

/// The keep-alive race: the upstream closes a reused connection after reading the
/// second request, without answering. An idempotent request is sent once more on a
/// new connection; a POST is not (it may have been acted on) and gets a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_closed_unanswered_retries_only_idempotent_requests() {
    let up = Scripted::start(|req, index| {
        if req.conn == 0 && index == 1 {
            close(Vec::new())
        } else {
            keep(OK)
        }
    })
    .await;
    let gw = Gateway::start(&one_route(up.addr));
    let c = client();
    assert_eq!(get(&c, &gw.url("/first")).await.status, StatusCode::OK);
    let a = get(&c, &gw.url("/second")).await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"ok"[..]));
    let seen = up.seen();
    let lines: Vec<(usize, &str)> = seen
        .iter()
        .map(|s| (s.conn, s.head.lines().next().unwrap_or("")))
        .collect();
    assert_eq!(
        lines,
        vec![
            (0, "GET /first HTTP/1.1"),
            (0, "GET /second HTTP/1.1"),
            (1, "GET /second HTTP/1.1")
        ]
    );

    let up = Scripted::start(|req, index| {
        if req.conn == 0 && index == 1 {
            close(Vec::new())
        } else {
            keep(OK)
        }
    })
    .await;
    let gw = Gateway::start(&one_route(up.addr));
    assert_eq!(get(&c, &gw.url("/first")).await.status, StatusCode::OK);
    let req = Request::post(gw.url("/order"))
        .body(empty())
        .expect("request");
    assert_eq!(send(&c, req).await.status, StatusCode::BAD_GATEWAY);
    let posts = up
        .seen()
        .iter()
        .filter(|s| s.head.starts_with("POST "))
        .count();
    assert_eq!(posts, 1, "the POST was not sent twice");
}
