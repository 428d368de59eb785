//! Load shedding (per-service concurrency limit) and per-route rate limits.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_sheds_the_excess_at_once() {
    let up = Upstream::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        text("slow")
    })
    .await;
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n[services.s]\nendpoints = [{}]\nmax_in_flight = 10\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        up.endpoint()
    )));
    let url = gw.url("/x");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let a = get(&client(), &url).await;
            (a, started.elapsed())
        }));
    }
    let mut ok = 0;
    let mut shed = 0;
    for t in tasks {
        let (a, took) = t.await.unwrap();
        match a.status.as_u16() {
            200 => ok += 1,
            503 => {
                shed += 1;
                assert_eq!(a.json()["error"], "overloaded");
                assert_eq!(a.headers["retry-after"], "1");
                // Refused at once, not after queueing behind the 1 s upstream.
                assert!(
                    took < Duration::from_millis(800),
                    "a shed request took {took:?}"
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, shed), (10, 40));
    assert_eq!(up.hits(), 10);
    let metrics = String::from_utf8(
        get(&client(), &gw.admin_url("/metrics"))
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(
        metrics.contains(r#"switchyard_errors_total{code="overloaded"} 40"#),
        "{metrics}"
    );
}

/// Hammer `key` for about `secs`; (admitted, refused, elapsed seconds).
async fn hammer(gw: &Gateway, key: &str, secs: f64) -> (u32, u32, f64) {
    let c = client();
    let (mut ok, mut limited) = (0, 0);
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < secs {
        let req = http::Request::get(gw.url("/api"))
            .header("x-api-key", key)
            .body(empty())
            .unwrap();
        let a = send(&c, req).await;
        match a.status.as_u16() {
            200 => {
                ok += 1;
                assert!(a.headers.contains_key("ratelimit-remaining"));
            }
            429 => {
                limited += 1;
                assert_eq!(a.json()["error"], "rate_limited");
                assert!(a.headers.contains_key("retry-after"));
                assert_eq!(a.headers["ratelimit-limit"], "20");
                assert_eq!(a.headers["ratelimit-remaining"], "0");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, limited, started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_admits_burst_plus_rate_per_key() {
    let up = Upstream::echo("s").await;
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n[services.s]\nendpoints = [{}]\n\
         [[routes]]\nname = \"api\"\npath = \"/api\"\nservice = \"s\"\n\
         rate_limit = {{ per_second = 10, burst = 20, key = \"header:x-api-key\" }}\n",
        up.endpoint()
    )));
    let (ok, limited, secs) = hammer(&gw, "key-a", 2.0).await;
    // A full bucket of 20, then 10 per second for the time the load ran.
    let expected = 20.0 + 10.0 * secs;
    assert!(
        (ok as f64 - expected).abs() <= 3.0,
        "admitted {ok} in {secs:.2}s, expected about {expected:.0}"
    );
    assert!(limited > 0);
    // Another key has a bucket of its own.
    let (ok_b, _, _) = hammer(&gw, "key-b", 0.2).await;
    assert!(ok_b >= 20, "second key got only {ok_b}");
}

/// An upstream that always answers `status`.
async fn always(status: u16) -> Upstream {
    Upstream::start(move |_req| async move {
        let mut r = text(status.to_string());
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r
    })
    .await
}

fn retry_table(endpoints: &str, retry: &str) -> String {
    config(&format!(
        "[server]\naccess_log = \"off\"\n[defaults]\nretry = {retry}\n\
         [services.s]\nendpoints = [{endpoints}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_is_retried_on_another_endpoint_a_post_is_not() {
    let bad = always(503).await;
    let good = always(200).await;
    let gw = Gateway::start(&retry_table(
        &format!("{}, {}", bad.endpoint(), good.endpoint()),
        "{ attempts = 2, on = [\"503\", \"connect-failure\"], backoff = \"1ms\" }",
    ));
    let c = client();
    for i in 0..20 {
        let a = get(&c, &gw.url("/x")).await;
        assert_eq!(
            a.status,
            200,
            "request {i}: bad {} good {}",
            bad.hits(),
            good.hits()
        );
    }
    assert_eq!(good.hits(), 20, "every GET ends on the good endpoint");
    assert_eq!(
        bad.hits(),
        10,
        "round robin sends every other first try to the bad one"
    );
    let mut post_503 = 0;
    for _ in 0..20 {
        let a = send(&c, http::Request::post(gw.url("/x")).body(empty()).unwrap()).await;
        if a.status == 503 {
            post_503 += 1;
        }
    }
    assert_eq!(
        post_503, 10,
        "POST is not idempotent: its 503s are passed on, not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_retried_when_asked() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dropper = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        }
    });
    let good = always(200).await;
    let gw = Gateway::start(&retry_table(
        &format!("\"{dropper}\", {}", good.endpoint()),
        "{ attempts = 2, on = [\"reset\"], backoff = \"1ms\" }",
    ));
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, &gw.url("/x")).await.status, 200);
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_keeps_a_dead_service_near_its_own_traffic() {
    let dead = always(503).await;
    let gw = Gateway::start(&retry_table(
        &dead.endpoint(),
        "{ attempts = 3, on = [\"503\"], budget_percent = 20, backoff = \"1ms\" }",
    ));
    let url = gw.url("/x");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0u32;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(2) {
                assert_eq!(get(&c, &url).await.status, 503);
                n += 1;
            }
            n
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    let seen = dead.hits() as f64;
    assert!(
        seen <= 1.25 * sent as f64 + 25.0,
        "the upstream saw {seen} requests for {sent} client requests"
    );
    let metrics = String::from_utf8(
        get(&client(), &gw.admin_url("/metrics"))
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(
        metrics.contains("switchyard_retry_budget_exhausted_total{service=\"s\"}"),
        "{metrics}"
    );
}
