//! The admin API over a real socket: health, readiness, routes, upstreams, metrics,
//! reload with and without the bearer token.

use std::time::Duration;

use crate::support::*;

fn table(up: &Upstream, target: &str) -> String {
    config(&format!(
        "[services.s]\nendpoints = [{}]\n[[routes]]\nname = \"{target}\"\npath = \"/\"\nservice = \"s\"\n",
        up.endpoint()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_routes_and_upstreams() {
    let up = Upstream::echo("s").await;
    let gw = Gateway::start(&table(&up, "r"));
    let c = client();
    let a = get(&c, &gw.admin_url("/healthz")).await;
    assert_eq!(a.status, 200);
    let a = get(&c, &gw.admin_url("/readyz")).await;
    assert_eq!(a.status, 200);
    let routes = get(&c, &gw.admin_url("/routes")).await.json();
    assert_eq!(routes["routes"][0]["name"], "r");
    assert_eq!(routes["routes"][0]["prefix"], "/");
    assert_eq!(routes["hash"].as_str().unwrap().len(), 16);
    let ups = get(&c, &gw.admin_url("/upstreams")).await.json();
    assert_eq!(ups["services"][0]["addresses"][0], up.addr.to_string());
    let doc = get(&c, &gw.admin_url("/openapi.json")).await.json();
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(get(&c, &gw.admin_url("/nope")).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status_class() {
    let up = Upstream::echo("s").await;
    let gw = Gateway::start(&table(&up, "r"));
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/x")).await.status, 200);
    }
    let text = String::from_utf8(get(&c, &gw.admin_url("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        text.contains(
            r#"switchyard_requests_total{route="r",service="s",method="GET",code_class="2xx"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains("switchyard_request_duration_seconds_count{route=\"r\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_upstream_duration_seconds_count{service=\"s\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_upstream_endpoints{service=\"s\"} 1"),
        "{text}"
    );
    assert!(text.contains("switchyard_config_info{hash="), "{text}");
    assert!(text.contains("switchyard_requests_in_flight 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_are_counted_by_code() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start(&config(&format!(
        "[services.s]\nendpoints = [\"127.0.0.1:{port}\"]\n[[routes]]\nname = \"r\"\nexact = \"/down\"\nservice = \"s\"\n"
    )));
    let c = client();
    assert_eq!(get(&c, &gw.url("/down")).await.status, 502);
    assert_eq!(get(&c, &gw.url("/elsewhere")).await.status, 404);
    let text = String::from_utf8(get(&c, &gw.admin_url("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        text.contains(r#"switchyard_errors_total{code="upstream_connect_failed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"switchyard_errors_total{code="no_route"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"switchyard_upstream_connect_failures_total{service="s"}"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"switchyard_requests_total{route="",service="",method="GET",code_class="4xx"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_needs_a_token_and_reports_its_result() {
    let up = Upstream::echo("s").await;
    let mut gw = Gateway::start(&table(&up, "r"));
    let c = client();
    // No SWITCHYARD_ADMIN_TOKEN in the gateway's environment: state changes refused.
    let req = http::Request::post(gw.admin_url("/reload"))
        .body(empty())
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["error"], "admin_token_not_configured");
    drop(gw);

    gw = Gateway::start_with_env(&table(&up, "r"), &[("SWITCHYARD_ADMIN_TOKEN", "s3cret")]);
    let post = |token: Option<&str>| {
        let mut b = http::Request::post(gw.admin_url("/reload"));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(empty()).unwrap()
    };
    assert_eq!(send(&c, post(None)).await.status, 401);
    assert_eq!(send(&c, post(Some("wrong"))).await.status, 401);
    let a = send(&c, post(Some("s3cret"))).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["result"], "unchanged");
    // A new valid file: reloaded (the watcher may get there first; both are fine, the
    // table must be the new one either way).
    std::fs::write(&gw.config, table(&up, "r2")).unwrap();
    let a = send(&c, post(Some("s3cret"))).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let routes = get(&c, &gw.admin_url("/routes")).await.json();
    assert_eq!(routes["routes"][0]["name"], "r2");
    // An invalid file: 422 with the errors, the table stays.
    std::fs::write(&gw.config, "[[routes]]\nname = \"x\"\n").unwrap();
    let a = send(&c, post(Some("s3cret"))).await;
    assert_eq!(a.status, 422);
    assert!(
        a.json()["errors"].as_str().unwrap().contains("SY011"),
        "{:?}",
        a.body
    );
    let routes = get(&c, &gw.admin_url("/routes")).await.json();
    assert_eq!(routes["routes"][0]["name"], "r2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_draining() {
    let (up, arrived) = Upstream::slow(Duration::from_millis(1500), "done").await;
    let mut gw = Gateway::start(&table(&up, "r"));
    let url = gw.url("/slow");
    let slow = tokio::spawn(async move { get(&client(), &url).await });
    tokio::time::timeout(SOON, arrived.notified())
        .await
        .unwrap();
    gw.signal("TERM");
    gw.wait_log("draining");
    let a = get(&client(), &gw.admin_url("/readyz")).await;
    assert_eq!(a.status, 503);
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(gw.wait_exit(SOON).code(), Some(0));
}
