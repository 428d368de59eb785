//! Header hygiene, request ids and upstream failures.

use std::time::{Duration, Instant};

use crate::support::*;

fn one_route(endpoint: &str, extra: &str) -> String {
    config(&format!(
        "{extra}\n[services.s]\nendpoints = [{endpoint}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded_and_gateway_headers_cannot_be_removed() {
    let up = Upstream::echo("s").await;
    let gw = Gateway::start(&one_route(&up.endpoint(), ""));
    let req = http::Request::get(gw.url("/x"))
        .header(
            "connection",
            "keep-alive, x-forwarded-for, x-request-id, x-secret",
        )
        .header("x-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("upgrade", "h2c")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-kept", "yes")
        .body(empty())
        .unwrap();
    let a = send(&client(), req).await;
    let h = &a.json()["headers"];
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
        "forwarded",
    ] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_eq!(h["x-kept"], "yes");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "client-sent XFF is replaced, never trusted"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], gw.addr.to_string());
    assert_eq!(
        h["host"],
        gw.addr.to_string(),
        "the client's Host is passed on"
    );
    let id = h["x-request-id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(a.headers["x-request-id"], id, "the client sees the same id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_keep_the_forwarding_chain() {
    let up = Upstream::echo("s").await;
    let gw = Gateway::start(&one_route(
        &up.endpoint(),
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    ));
    let req = http::Request::get(gw.url("/x"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .unwrap();
    let h = send(&client(), req).await.json()["headers"].clone();
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_request_id_is_kept_an_invalid_one_replaced() {
    let up = Upstream::echo("s").await;
    let gw = Gateway::start(&one_route(&up.endpoint(), ""));
    let c = client();
    let req = http::Request::get(gw.url("/x"))
        .header("x-request-id", "abc-123")
        .body(empty())
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.json()["headers"]["x-request-id"], "abc-123");
    assert_eq!(a.headers["x-request-id"], "abc-123");
    let req = http::Request::get(gw.url("/x"))
        .header("x-request-id", "a\"b<script>")
        .body(empty())
        .unwrap();
    let a = send(&c, req).await;
    let id = a.json()["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 32);
}

/// The answer carries the gateway's request id once, whatever the upstream put in its
/// own answer, from the gateway's HTTP/1.1 server (which writes it after the answer's
/// fields) and from hyper's HTTP/2 one (which has it put into the map).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_has_the_gateway_request_id_once_on_both_servers() {
    let up = Upstream::start(|_req| async {
        let mut r = text("hi");
        r.headers_mut().insert(
            "x-request-id",
            http::HeaderValue::from_static("upstream-id"),
        );
        r.headers_mut().append(
            "x-request-id",
            http::HeaderValue::from_static("upstream-id-2"),
        );
        r
    })
    .await;
    let gw = Gateway::start(&one_route(&up.endpoint(), ""));
    let ids = |h: &http::HeaderMap| -> Vec<String> {
        h.get_all("x-request-id")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    let req = http::Request::get(gw.url("/x"))
        .header("x-request-id", "client-1")
        .body(empty())
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, 200);
    assert_eq!(ids(&a.headers), ["client-1"], "HTTP/1.1");
    let a = get(&client(), &gw.url("/x")).await;
    let made = ids(&a.headers);
    assert!(made.len() == 1 && made[0].len() == 32, "HTTP/1.1: {made:?}");
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::get(gw.url("/x"))
        .header("x-request-id", "client-2")
        .body(http_body_util::Empty::new())
        .unwrap();
    let answer = h2.request(req).await.expect("h2c answer");
    assert_eq!(answer.version(), http::Version::HTTP_2);
    assert_eq!(answer.status(), 200);
    assert_eq!(ids(answer.headers()), ["client-2"], "HTTP/2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_json_within_the_connect_timeout() {
    // A port that was just free: nothing listens there, connect is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start(&one_route(
        &format!("\"127.0.0.1:{port}\""),
        "[defaults]\nconnect_timeout = \"2s\"\n",
    ));
    let started = Instant::now();
    let a = get(&client(), &gw.url("/x")).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(a.status, 502);
    let v = a.json();
    assert_eq!(v["error"], "upstream_connect_failed");
    assert_eq!(v["request_id"], a.headers["x-request-id"].to_str().unwrap());
    assert_eq!(a.headers["content-type"], "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_retried_on_the_next_one() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let up = Upstream::echo("s").await;
    let gw = Gateway::start(&one_route(
        &format!("\"127.0.0.1:{port}\", {}", up.endpoint()),
        "",
    ));
    let c = client();
    for _ in 0..6 {
        assert_eq!(get(&c, &gw.url("/x")).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_slower_than_the_route_timeout_is_504() {
    let up = Upstream::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        text("late")
    })
    .await;
    let gw = Gateway::start(&config(&format!(
        "[services.s]\nendpoints = [{}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\ntimeout = \"300ms\"\n",
        up.endpoint()
    )));
    let started = Instant::now();
    let a = get(&client(), &gw.url("/x")).await;
    let took = started.elapsed();
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["error"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(4),
        "took {took:?}"
    );
}

/// The status of a GET of `path` on `sender`'s one connection, and how long it took.
async fn status(
    sender: &mut hyper::client::conn::http1::SendRequest<Body>,
    path: &str,
) -> (u16, Duration) {
    sender.ready().await.expect("the connection is still open");
    let req = http::Request::get(path)
        .header("host", "gw.test")
        .body(empty())
        .unwrap();
    let started = Instant::now();
    let resp = sender
        .send_request(req)
        .await
        .expect("an answer on the same connection");
    let code = resp.status().as_u16();
    // Read to the end, so that the connection can carry the next request.
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("the whole body");
    (code, started.elapsed())
}

/// One HTTP/1 connection reuses one timer for its requests' route timeouts
/// (`resilience::deadline`): a short timeout after a long one on the same connection
/// must still cut off on time, and the long one must not inherit the short one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeouts_hold_one_after_another_on_one_connection() {
    let up = Upstream::start(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        } else if req.uri().path() == "/late" {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        text("ok")
    })
    .await;
    let gw = Gateway::start(&config(&format!(
        "[services.s]\nendpoints = [{ep}]\n\
         [[routes]]\nname = \"short\"\npath = \"/slow\"\nservice = \"s\"\ntimeout = \"300ms\"\n\
         [[routes]]\nname = \"long\"\npath = \"/\"\nservice = \"s\"\ntimeout = \"60s\"\n",
        ep = up.endpoint()
    )));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    for path in ["/a", "/b"] {
        assert_eq!(status(&mut sender, path).await.0, 200);
    }
    let (code, took) = status(&mut sender, "/slow").await;
    assert_eq!(
        code, 504,
        "the short route's timeout, after the long route's"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    // Longer than the short route's 300 ms: the long route waits for it.
    let (code, took) = status(&mut sender, "/late").await;
    assert_eq!(
        code, 200,
        "the long route does not inherit the short deadline"
    );
    assert!(took >= Duration::from_millis(600), "took {took:?}");
    assert_eq!(status(&mut sender, "/a").await.0, 200);
    driver.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_closes_without_answering_is_502() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        }
    });
    let gw = Gateway::start(&one_route(&format!("\"{addr}\""), ""));
    let a = get(&client(), &gw.url("/x")).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["error"], "bad_upstream_response");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() {
    let up = Upstream::echo("s").await;
    let gw = Gateway::start(&one_route(&up.endpoint(), ""));
    let c = client();
    let req = http::Request::post(gw.url("/things?q=1"))
        .header("x-request-id", "log-test-1")
        .body(full("hello"))
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, 200);
    let deadline = Instant::now() + SOON;
    let line = loop {
        if let Some(l) = gw
            .access_log()
            .into_iter()
            .find(|l| l["request_id"] == "log-test-1")
        {
            break l;
        }
        assert!(Instant::now() < deadline, "no access-log line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/things");
    assert_eq!(line["route"], "r");
    assert_eq!(line["service"], "s");
    assert_eq!(line["endpoint"], up.addr.to_string());
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_in"], 5);
    assert_eq!(line["bytes_out"], a.body.len());
    assert!(line["duration_ms"].as_f64().unwrap() >= line["upstream_ms"].as_f64().unwrap());
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
}
