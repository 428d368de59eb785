//! The upstream keep-alive pool (`protocol = "http1"`): connections are reused, and
//! only when that is safe.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

fn one_route(endpoint: &str, defaults: &str) -> String {
    config(&format!(
        "[defaults]\n{defaults}\n[services.s]\nendpoints = [{endpoint}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n"
    ))
}

/// A raw HTTP/1.1 upstream that counts the connections it accepted and those that
/// ended. `/big` answers 64 MiB (far more than loopback socket buffers hold, so it
/// cannot all be in flight when a client gives up); anything else a 2-byte body. With `close_after_answer`
/// it closes each connection right after its first answer, without saying so
/// (`Connection: close` is not sent), like an upstream whose keep-alive timeout is
/// shorter than the gateway's.
struct Counting {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Counting {
    async fn start(close_after_answer: bool) -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (a, e) = (accepted.clone(), ended.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let e = e.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    'conn: loop {
                        // One request head at a time (the tests send no bodies).
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => break 'conn,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let big = buf.starts_with(b"GET /big ");
                        // POST /early: answered at once, like a 401 or 413 before the
                        // upload is read; the body is read (and dropped) afterwards.
                        let early = buf.starts_with(b"POST /early ");
                        let declared = content_length(&buf[..end]);
                        buf.drain(..end);
                        let body = if big {
                            vec![b'x'; 64 << 20]
                        } else {
                            b"ok".to_vec()
                        };
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        if s.write_all(head.as_bytes()).await.is_err()
                            || s.write_all(&body).await.is_err()
                            || close_after_answer
                        {
                            break;
                        }
                        if early {
                            let mut left = declared.saturating_sub(buf.len());
                            buf.clear();
                            while left > 0 {
                                match s.read(&mut chunk).await {
                                    Ok(0) | Err(_) => break 'conn,
                                    Ok(n) => left = left.saturating_sub(n),
                                }
                            }
                        }
                    }
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Counting {
            addr,
            accepted,
            ended,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("\"{}\"", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }
}

/// The `content-length` of a request head (0 when there is none).
fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_upstream_connection() {
    let up = Counting::start(false).await;
    let gw = Gateway::start(&one_route(&up.endpoint(), ""));
    let c = client();
    for i in 0..50 {
        let a = get(&c, &gw.url(&format!("/n/{i}"))).await;
        assert_eq!(a.status, 200);
        assert_eq!(&a.body[..], b"ok");
    }
    assert_eq!(up.accepted(), 1, "one keep-alive connection carries all 50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_max_idle_zero_opens_a_connection_per_request() {
    let up = Counting::start(false).await;
    let gw = Gateway::start(&one_route(&up.endpoint(), "pool_max_idle = 0"));
    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, &gw.url("/")).await.status, 200);
    }
    assert_eq!(up.accepted(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_not_read_to_its_end_is_not_reused() {
    let up = Counting::start(false).await;
    let gw = Gateway::start(&one_route(&up.endpoint(), ""));
    // A client that reads the head of a 64 MiB answer and goes away. (With 4 MiB, the
    // whole answer could pass through the gateway into socket buffers before the client
    // left: read to its end, the connection is then rightly reused, and this test once
    // failed that way under full-suite load.)
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 64];
    let n = s.read(&mut head).await.expect("read");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
    drop(s);
    // The half-read connection is closed, never handed to the next request (which
    // would read the rest of the 64 MiB as its answer).
    let deadline = Instant::now() + SOON;
    while up.ended() < 1 {
        assert!(
            Instant::now() < deadline,
            "the half-read connection stayed open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let c = client();
    for _ in 0..3 {
        let a = get(&c, &gw.url("/small")).await;
        assert_eq!((a.status, &a.body[..]), (http::StatusCode::OK, &b"ok"[..]));
    }
    assert_eq!(
        up.accepted(),
        2,
        "one new connection, reused for the 3 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_closes_idle_connections_costs_no_request() {
    let up = Counting::start(true).await;
    let gw = Gateway::start(&one_route(&up.endpoint(), ""));
    let c = client();
    for i in 0..30 {
        let a = get(&c, &gw.url("/")).await;
        assert_eq!(a.status, 200, "request {i}: {:?}", a.body);
    }
    assert!(up.accepted() >= 30, "every answer closed its connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_pool_idle_timeout() {
    let up = Counting::start(false).await;
    let gw = Gateway::start(&one_route(&up.endpoint(), "pool_idle_timeout = \"1s\""));
    assert_eq!(get(&client(), &gw.url("/")).await.status, 200);
    assert_eq!(up.accepted(), 1);
    let started = Instant::now();
    while up.ended() < 1 {
        assert!(
            started.elapsed() < SOON,
            "the idle connection was not closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Not before the timeout: it was idle for at least about 1 s.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "closed after {:?}",
        started.elapsed()
    );
    // And the next request gets a new connection.
    assert_eq!(get(&client(), &gw.url("/")).await.status, 200);
    assert_eq!(up.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_answered_early_does_not_hold_up_the_next_request() {
    let up = Counting::start(false).await;
    let gw = Gateway::start(&one_route(&up.endpoint(), ""));
    // A client uploads 1 MB (streamed: over buffer_body), sends the first KB and
    // stalls; the upstream has answered already.
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(b"POST /early HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n")
        .await
        .expect("write head");
    s.write_all(&[b'x'; 1000]).await.expect("write body");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.ends_with(b"ok") {
        let n = tokio::time::timeout(SOON, s.read(&mut chunk))
            .await
            .expect("the early answer came")
            .expect("read");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    // The upload's connection is still busy sending; the next request must not wait
    // for it (it would wait for the 30 s body_read_timeout).
    let started = Instant::now();
    let a = get(&client(), &gw.url("/next")).await;
    assert_eq!((a.status, &a.body[..]), (http::StatusCode::OK, &b"ok"[..]));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the next request waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        up.accepted(),
        2,
        "the next request got a connection of its own"
    );
    drop(s);
}
