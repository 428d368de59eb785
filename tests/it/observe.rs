//! Access-log formats and fields, W3C trace context through the gateway.

use crate::support::*;

fn route_to(up: &Upstream, server: &str) -> String {
    config(&format!(
        "[server]\n{server}\n[services.s]\nendpoints = [{}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        up.endpoint()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ltsv_access_log_with_selected_fields() {
    let up = Upstream::echo("s").await;
    let gw = Gateway::start(&route_to(
        &up,
        "access_log = \"ltsv\"\naccess_log_fields = [\"request_id\", \"method\", \"path\", \"status\", \"trace_id\", \"retries\", \"host\"]",
    ));
    let req = http::Request::get(gw.url("/a/b"))
        .header("x-request-id", "ltsv-1")
        .body(empty())
        .unwrap();
    assert_eq!(send(&client(), req).await.status, 200);
    let line = gw.wait_stdout(|l| l.contains("request_id:ltsv-1")).await;
    let fields: Vec<(&str, &str)> = line
        .split('\t')
        .map(|kv| kv.split_once(':').unwrap())
        .collect();
    let labels: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        labels,
        [
            "request_id",
            "method",
            "path",
            "status",
            "trace_id",
            "retries",
            "host"
        ]
    );
    assert_eq!(fields[1].1, "GET");
    assert_eq!(fields[2].1, "/a/b");
    assert_eq!(fields[3].1, "200");
    assert_eq!(fields[4].1.len(), 32);
    assert_eq!(fields[5].1, "0");
    assert_eq!(fields[6].1, gw.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_has_every_field_by_default() {
    let up = Upstream::echo("s").await;
    let gw = Gateway::start(&route_to(&up, ""));
    let req = http::Request::get(gw.url("/x"))
        .header("x-request-id", "json-1")
        .body(empty())
        .unwrap();
    send(&client(), req).await;
    let line = gw.wait_stdout(|l| l.contains("\"json-1\"")).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    for f in [
        "time",
        "request_id",
        "trace_id",
        "client",
        "method",
        "host",
        "path",
        "route",
        "service",
        "endpoint",
        "status",
        "error",
        "duration_ms",
        "upstream_ms",
        "attempts",
        "retries",
        "bytes_in",
        "bytes_out",
    ] {
        assert!(v.get(f).is_some(), "field {f} missing: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_is_continued_to_the_upstream_and_logged() {
    let up = Upstream::echo("s").await;
    let gw = Gateway::start(&route_to(&up, ""));
    let c = client();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = http::Request::get(gw.url("/t"))
        .header("traceparent", tp)
        .header("tracestate", "congo=t61rcWkgMzE")
        .header("x-request-id", "trace-1")
        .body(empty())
        .unwrap();
    let h = send(&c, req).await.json()["headers"].clone();
    let sent = h["traceparent"].as_str().unwrap();
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert_ne!(
        &sent[36..52],
        "00f067aa0ba902b7",
        "the gateway's own span is the parent"
    );
    assert!(sent.ends_with("-01"));
    assert_eq!(h["tracestate"], "congo=t61rcWkgMzE");
    let line = gw.wait_stdout(|l| l.contains("\"trace-1\"")).await;
    assert!(
        line.contains("\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\""),
        "{line}"
    );
    // Without a traceparent a new trace starts; a broken one is replaced, and its
    // tracestate dropped.
    let req = http::Request::get(gw.url("/t"))
        .header("traceparent", "00-zz-broken")
        .header("tracestate", "a=b")
        .body(empty())
        .unwrap();
    let h = send(&c, req).await.json()["headers"].clone();
    assert_eq!(h["traceparent"].as_str().unwrap().len(), 55);
    assert!(h.get("tracestate").is_none());
}
