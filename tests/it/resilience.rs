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
        "[services.s]\nendpoints = [{}]\nmax_in_flight = 10\n\
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
                // Refused at once, not after queueing behind the 1 s upstream. This
                // bound includes the test client's own connect on a busy machine; the
                // gateway's own time is checked below from its access log.
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
    // The gateway answered every shed request in under 50 ms (its own measure, from
    // the request's first byte to the end of the answer).
    let deadline = Instant::now() + Duration::from_secs(10);
    let shed_times = loop {
        let times: Vec<f64> = gw
            .access_log()
            .iter()
            .filter(|r| r["status"] == 503)
            .filter_map(|r| r["duration_ms"].as_f64())
            .collect();
        if times.len() == 40 || Instant::now() > deadline {
            break times;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(shed_times.len(), 40, "access-log records of shed requests");
    assert!(
        shed_times.iter().all(|&ms| ms < 50.0),
        "shed answers took {shed_times:?} ms"
    );
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
                assert_eq!(a.headers["ratelimit-limit"], "200");
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
         rate_limit = {{ per_second = 100, burst = 200, key = \"header:x-api-key\" }}\n",
        up.endpoint()
    )));
    let (ok, limited, secs) = hammer(&gw, "key-a", 5.0).await;
    // A full bucket of 200, then 100 per second for the time the load ran (~700 in 5 s).
    let expected = 200.0 + 100.0 * secs;
    assert!(
        (ok as f64 - expected).abs() <= 0.05 * expected,
        "admitted {ok} in {secs:.2}s, expected {expected:.0} +- 5%"
    );
    assert!(limited > 0);
    // Another key has a bucket of its own.
    let (ok_b, _, _) = hammer(&gw, "key-b", 0.5).await;
    assert!(ok_b >= 200, "second key got only {ok_b}");
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

/// Outlier ejection is off here: these tests count retries, not ejections.
fn retry_table(endpoints: &str, retry: &str) -> String {
    config(&format!(
        "[server]\naccess_log = \"off\"\n[defaults]\nretry = {retry}\n\
         [services.s]\nendpoints = [{endpoints}]\noutlier = {{ enabled = false }}\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n"
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
async fn a_per_try_timeout_ends_a_slow_try_and_504_retries_it_elsewhere() {
    let slow = Upstream::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        text("slow")
    })
    .await;
    let good = always(200).await;
    let c = client();
    let gw = Gateway::start(&retry_table(
        &format!("{}, {}", slow.endpoint(), good.endpoint()),
        "{ attempts = 2, on = [\"504\"], per_try_timeout = \"1s\", backoff = \"1ms\" }",
    ));
    for i in 0..6 {
        let started = Instant::now();
        let a = get(&c, &gw.url("/x")).await;
        assert_eq!(a.status, 200, "request {i}");
        // The slow endpoint would take 60 s; a try there ends after 1 s.
        assert!(started.elapsed() < Duration::from_secs(20), "request {i}");
    }
    assert_eq!(good.hits(), 6, "every GET ends on the good endpoint");
    assert_eq!(
        slow.hits(),
        3,
        "round robin sends every other first try there"
    );

    // With one try, the per-try timeout is the answer: 504, long before the upstream's.
    let gw = Gateway::start(&retry_table(
        &slow.endpoint(),
        "{ attempts = 1, per_try_timeout = \"1s\" }",
    ));
    let started = Instant::now();
    let a = get(&c, &gw.url("/x")).await;
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["error"], "upstream_timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(20),
        "{took:?}"
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

fn health_table(endpoints: &str, extra: &str) -> String {
    config(&format!(
        "[server]\naccess_log = \"off\"\n[defaults]\nretry = {{ attempts = 1 }}\n\
         [services.s]\nendpoints = [{endpoints}]\n{extra}\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_then_readmitted() {
    let bad = always(503).await;
    let good1 = always(200).await;
    let good2 = always(200).await;
    let gw = Gateway::start(&health_table(
        &format!(
            "{}, {}, {}",
            bad.endpoint(),
            good1.endpoint(),
            good2.endpoint()
        ),
        "outlier = { consecutive_failures = 3, base_ejection = \"1s\", max_ejection_percent = 50 }",
    ));
    let c = client();
    for _ in 0..30 {
        get(&c, &gw.url("/x")).await;
    }
    assert_eq!(bad.hits(), 3, "ejected after its third failure in a row");
    // After the ejection time it gets traffic again (and, still failing, is ejected
    // again, for twice as long).
    let deadline = Instant::now() + SOON;
    while bad.hits() == 3 {
        assert!(Instant::now() < deadline, "never readmitted");
        get(&c, &gw.url("/x")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_never_takes_more_than_the_max_share() {
    let bad1 = always(503).await;
    let bad2 = always(503).await;
    let gw = Gateway::start(&health_table(
        &format!("{}, {}", bad1.endpoint(), bad2.endpoint()),
        "outlier = { consecutive_failures = 2, base_ejection = \"30s\", max_ejection_percent = 10 }",
    ));
    let c = client();
    for _ in 0..20 {
        // One of the two is ejected; the other keeps answering (503), never 'no_healthy_upstream'.
        let a = get(&c, &gw.url("/x")).await;
        assert_eq!(a.status, 503);
        assert_eq!(a.body, "503");
    }
    assert!(bad1.hits().min(bad2.hits()) <= 2 && bad1.hits().max(bad2.hits()) >= 18);
}

/// An upstream whose /healthz answers `health`, everything else 200 naming itself.
async fn with_health(name: &'static str, health: u16) -> Upstream {
    Upstream::start(move |req| async move {
        if req.uri().path() == "/healthz" {
            let mut r = text("h");
            *r.status_mut() = http::StatusCode::from_u16(health).unwrap();
            return r;
        }
        text(name)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_endpoints_out_and_all_down_is_fast_503() {
    let sick = with_health("sick", 500).await;
    let fine = with_health("fine", 200).await;
    let gw = Gateway::start(&health_table(
        &format!("{}, {}", sick.endpoint(), fine.endpoint()),
        "health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"500ms\", healthy = 1, unhealthy = 2 }",
    ));
    let c = client();
    // Once the checks have run twice, only `fine` gets traffic.
    let deadline = Instant::now() + SOON;
    loop {
        let bodies: Vec<_> = bodies_of(&c, &gw, 6).await;
        if bodies.iter().all(|b| b == "fine") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sick endpoint never taken out: {bodies:?}"
        );
    }
    drop(fine);
    // With every endpoint failing its checks, answers are immediate 503s.
    let deadline = Instant::now() + SOON;
    loop {
        let started = Instant::now();
        let a = get(&c, &gw.url("/x")).await;
        if a.status == 503 && a.json()["error"] == "no_healthy_upstream" {
            assert!(started.elapsed() < Duration::from_millis(500));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reported no_healthy_upstream"
        );
    }
}

async fn bodies_of(c: &TestClient, gw: &Gateway, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let a = get(c, &gw.url("/x")).await;
        out.push(String::from_utf8_lossy(&a.body).into_owned());
    }
    out
}

/// 4 clients GET for `secs`; one of two endpoints is killed after `kill_at`.
/// Returns (requests, failures, failures later than 1 s after the kill).
async fn load_with_a_kill(retry: &str, secs: u64, kill_at: u64) -> (usize, usize, usize) {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n[defaults]\nretry = {retry}\n\
         [services.s]\nendpoints = [{}, {}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        a.endpoint(),
        b.endpoint()
    )));
    let started = Instant::now();
    let url = gw.url("/x");
    let mut workers = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            while started.elapsed() < Duration::from_secs(secs) {
                let at = started.elapsed();
                let r = c
                    .request(http::Request::get(&url).body(empty()).unwrap())
                    .await;
                let ok = match r {
                    Ok(resp) => {
                        let s = resp.status();
                        http_body_util::BodyExt::collect(resp.into_body())
                            .await
                            .is_ok()
                            && s == 200
                    }
                    Err(_) => false,
                };
                out.push((at, ok));
            }
            out
        }));
    }
    let kill_time = Duration::from_secs(kill_at);
    tokio::time::sleep_until(tokio::time::Instant::from_std(started + kill_time)).await;
    b.kill();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let failures: Vec<_> = all.iter().filter(|(_, ok)| !ok).collect();
    let late = failures
        .iter()
        .filter(|(at, _)| *at > kill_time + Duration::from_secs(1))
        .count();
    (all.len(), failures.len(), late)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_under_load_costs_nothing_with_retries() {
    let (n, failed, _) = load_with_a_kill(
        "{ attempts = 2, on = [\"connect-failure\", \"reset\", \"502\", \"503\"], backoff = \"1ms\" }",
        10,
        3,
    )
    .await;
    assert!(n > 1000, "only {n} requests in 10 s");
    assert_eq!(
        failed, 0,
        "{failed} of {n} GETs failed although retries were on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_under_load_without_retries_fails_little_and_briefly() {
    let (n, failed, late) = load_with_a_kill("{ attempts = 1 }", 6, 2).await;
    assert!(n > 600, "only {n} requests");
    assert!(failed as f64 <= 0.01 * n as f64, "{failed} of {n} failed");
    assert_eq!(
        late, 0,
        "failures went on for more than a second after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_are_buffered_and_retried_large_ones_stream_once() {
    let bad = always(503).await;
    let good = Upstream::start(|req| async move {
        let n = http_body_util::BodyExt::collect(req.into_body())
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        text(n.to_string())
    })
    .await;
    let gw = Gateway::start(&retry_table(
        &format!("{}, {}", bad.endpoint(), good.endpoint()),
        "{ attempts = 2, on = [\"503\"], backoff = \"1ms\", buffer_body = \"1KiB\" }",
    ));
    let c = client();
    for _ in 0..6 {
        let req = http::Request::put(gw.url("/x"))
            .body(full(vec![b'a'; 1000]))
            .unwrap();
        let a = send(&c, req).await;
        assert_eq!(
            (a.status.as_u16(), a.body.as_ref()),
            (200, &b"1000"[..]),
            "the retry carried the whole body"
        );
    }
    // Over the cap: streamed, so a 503 from the bad endpoint is passed on.
    let mut passed_on = 0;
    for _ in 0..6 {
        let req = http::Request::put(gw.url("/x"))
            .body(full(vec![b'a'; 2000]))
            .unwrap();
        if send(&c, req).await.status == 503 {
            passed_on += 1;
        }
    }
    assert_eq!(
        passed_on, 3,
        "round robin: every other large PUT lands on the bad endpoint"
    );
}
