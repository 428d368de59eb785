//! Request limits: body size (up front and while streaming), slow bodies, URI length.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// An upstream that reads the whole body and answers with its length.
async fn sink() -> Upstream {
    Upstream::start(|req| async move {
        let n = http_body_util::BodyExt::collect(req.into_body())
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        text(n.to_string())
    })
    .await
}

fn table(up: &Upstream, server: &str) -> String {
    config(&format!(
        "[server]\n{server}\n[services.s]\nendpoints = [{}]\n\
         [[routes]]\nname = \"small\"\npath = \"/\"\nservice = \"s\"\n\
         [[routes]]\nname = \"upload\"\npath = \"/upload\"\nservice = \"s\"\nmax_body = \"1MiB\"\n",
        up.endpoint()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_the_limit_is_413_before_the_upstream() {
    let up = sink().await;
    let gw = Gateway::start(&table(&up, "max_body = \"1KiB\""));
    let req = http::Request::post(gw.url("/x"))
        .body(full(vec![b'a'; 2048]))
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.json()["error"], "payload_too_large");
    assert_eq!(a.headers["connection"], "close");
    assert_eq!(up.hits(), 0);
    // Within the limit, and on the route that allows more.
    let req = http::Request::post(gw.url("/x"))
        .body(full(vec![b'a'; 1024]))
        .unwrap();
    assert_eq!(send(&client(), req).await.body, "1024");
    let req = http::Request::post(gw.url("/upload"))
        .body(full(vec![b'a'; 100_000]))
        .unwrap();
    assert_eq!(send(&client(), req).await.body, "100000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_is_cut_with_413() {
    let up = sink().await;
    let gw = Gateway::start(&table(&up, "max_body = \"1KiB\""));
    let chunk = "a".repeat(600);
    let body = format!("258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n");
    let resp = raw(
        gw.addr,
        format!("POST /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{body}")
            .as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("\"error\":\"payload_too_large\""), "{resp}");
}

/// A body that stops coming: 408 after `body_read_timeout`, the connection closed.
/// 100 bytes are read by the gateway's own HTTP/1.1 path, 100,000 (over its 64 KiB)
/// streamed by hyper's: the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_408_after_the_body_read_timeout() {
    let up = sink().await;
    let gw = Gateway::start(&table(&up, "body_read_timeout = \"1s\""));
    for length in [100, 100_000] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = format!("POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n");
        s.write_all(format!("{head}0123456789").as_bytes())
            .await
            .unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        tokio::time::timeout(SOON, s.read_to_end(&mut buf))
            .await
            .expect("answered and closed")
            .expect("read");
        let resp = String::from_utf8_lossy(&buf);
        assert!(resp.starts_with("HTTP/1.1 408"), "{length}: {resp}");
        assert!(
            resp.contains("\"error\":\"body_timeout\""),
            "{length}: {resp}"
        );
        assert!(resp.contains("connection: close"), "{length}: {resp}");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{length}: too early: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_uri_is_414() {
    let up = sink().await;
    let gw = Gateway::start(&table(&up, "max_uri_bytes = 1024"));
    let a = get(&client(), &gw.url(&format!("/x?q={}", "a".repeat(2000)))).await;
    assert_eq!(a.status, 414);
    assert_eq!(a.json()["error"], "uri_too_long");
    assert_eq!(up.hits(), 0);
    assert_eq!(get(&client(), &gw.url("/x?q=short")).await.status, 200);
}

#[test]
fn bad_sizes_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.toml");
    std::fs::write(
        &f,
        "[server]\nmax_body = \"1 MB\"\n[services.s]\nendpoints = [\"127.0.0.1:1\"]\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\nmax_body = \"5XB\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("t.toml:2:12: error[SY007]"), "{text}");
    assert!(text.contains("unknown size unit `XB`"), "{text}");
}
