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
