//! WebSocket through the gateway: HTTP/1.1 Upgrade, then a tunnel both ways
//! (tokio-tungstenite on both ends).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A WebSocket echo server on 127.0.0.1:0.
async fn ws_echo() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

fn ws_config(endpoint: &str, server: &str) -> String {
    config(&format!(
        "{server}\n[services.ws]\nendpoints = [\"{endpoint}\"]\n\n\
         [[routes]]\nname = \"ws\"\npath = \"/\"\nservice = \"ws\"\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_round_trip_through_the_tunnel() {
    let (addr, _server) = ws_echo().await;
    let gw = Gateway::start(&ws_config(&addr.to_string(), ""));
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr))
        .await
        .expect("upgrade through the gateway");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().get("x-request-id").is_some());
    for i in 0..1000 {
        let msg = if i % 2 == 0 {
            Message::text(format!("message {i}"))
        } else {
            Message::binary(vec![i as u8; 1 + i % 300])
        };
        ws.send(msg.clone()).await.expect("send");
        let echoed = tokio::time::timeout(SOON, ws.next())
            .await
            .expect("echo in time")
            .expect("open")
            .expect("frame");
        assert_eq!(echoed, msg, "message {i}");
    }
    ws.close(None).await.expect("close");
    // The gateway still serves ordinary requests.
    let (mut again, _) = tokio_tungstenite::connect_async(format!("ws://{}/again", gw.addr))
        .await
        .expect("second upgrade");
    again.send(Message::text("x")).await.unwrap();
    assert_eq!(again.next().await.unwrap().unwrap(), Message::text("x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_the_upgrade_gets_no_tunnel() {
    // A plain HTTP upstream answers 200 to the upgrade request.
    let up = Upstream::echo("plain").await;
    let gw = Gateway::start(&ws_config(&up.endpoint().replace('"', ""), ""));
    let err = tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr))
        .await
        .expect_err("no 101, no WebSocket");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 200);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(
                body["headers"]["upgrade"], "websocket",
                "the upgrade request keeps Upgrade towards the upstream"
            );
            assert_eq!(body["headers"]["connection"], "upgrade");
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_the_idle_timeout() {
    let (addr, _server) = ws_echo().await;
    let gw = Gateway::start(&ws_config(
        &addr.to_string(),
        "[server]\nupgrade_idle_timeout = \"500ms\"\n",
    ));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", gw.addr))
        .await
        .unwrap();
    // Traffic keeps it open past the timeout.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then silence: the gateway closes both sides.
    let quiet = Instant::now();
    let end = tokio::time::timeout(SOON, ws.next())
        .await
        .expect("closed within the test bound");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
    // The last echo was ~100 ms before `quiet`: the 500 ms run from there.
    assert!(
        quiet.elapsed() >= Duration::from_millis(300),
        "closed too early: {:?}",
        quiet.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_never_tunnelled() {
    // h2c smuggling: a tunnel would let later requests on it bypass routing.
    let up = Upstream::echo("plain").await;
    let gw = Gateway::start(&ws_config(&up.endpoint().replace('"', ""), ""));
    let req = http::Request::get(gw.url("/"))
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
        .body(empty())
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, 200);
    let h = &a.json()["headers"];
    assert!(h.get("upgrade").is_none(), "{h}");
    assert!(h.get("connection").is_none(), "{h}");
}
