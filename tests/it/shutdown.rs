//! Graceful shutdown: in-flight requests finish, then the process exits 0.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_request_lets_it_finish_and_exits_zero() {
    let (up, arrived) = Upstream::slow(Duration::from_millis(1500), "finished").await;
    let mut gw = Gateway::start(&config(&format!(
        "[services.s]\nendpoints = [{}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        up.endpoint()
    )));
    let url = gw.url("/slow");
    let request = tokio::spawn(async move { get(&client(), &url).await });
    // Signal only once the request is inside the upstream.
    tokio::time::timeout(SOON, arrived.notified())
        .await
        .expect("request reached the upstream");
    gw.signal("TERM");
    gw.wait_log("draining");
    let a = request.await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "finished");
    let status = gw.wait_exit(SOON);
    assert_eq!(status.code(), Some(0));
    // And it no longer accepts connections.
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
}

/// Everything `s` sends until it closes, within `SOON`.
async fn rest(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    tokio::time::timeout(SOON, s.read_to_end(&mut out))
        .await
        .expect("closed in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_sigterm_idle_connections_close_and_a_request_in_flight_ends_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, arrived) = Upstream::slow(Duration::from_millis(1500), "finished").await;
    // Drain and header-read (idle) timeouts far beyond `SOON`: the exit below comes in
    // time only if the gateway closes both connections at shutdown.
    let mut gw = Gateway::start(&config(&format!(
        "[server]\ndrain_timeout = \"120s\"\nheader_read_timeout = \"120s\"\n[services.s]\nendpoints = [{}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        up.endpoint()
    )));
    // Idle: one answered request, then nothing.
    let mut idle = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    idle.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    tokio::time::timeout(SOON, arrived.notified())
        .await
        .expect("first request reached the upstream");
    let mut first = Vec::new();
    while !String::from_utf8_lossy(&first).ends_with("finished") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(SOON, idle.read(&mut buf))
            .await
            .expect("first answer in time")
            .expect("read");
        assert!(n > 0, "closed before the first answer");
        first.extend_from_slice(&buf[..n]);
    }
    let first = String::from_utf8_lossy(&first).to_ascii_lowercase();
    assert!(!first.contains("connection: close"), "{first}");
    // In flight: inside the upstream when the signal comes.
    let mut busy = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    tokio::time::timeout(SOON, arrived.notified())
        .await
        .expect("second request reached the upstream");
    gw.signal("TERM");
    assert_eq!(
        rest(&mut idle).await,
        "",
        "the idle connection got more than a close"
    );
    let answer = rest(&mut busy).await.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(answer.ends_with("finished"), "{answer}");
    assert_eq!(gw.wait_exit(SOON).code(), Some(0));
}
