//! A real Prometheus (Debian package `prometheus`, installed by scripts/test.sh)
//! scrapes the admin API every second during a short load; PromQL over its HTTP API
//! must return exactly the number of requests the load sent.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(target: std::net::SocketAddr) -> Option<Prometheus> {
    let bin = ["prometheus", "/usr/bin/prometheus"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })?;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: switchyard\n    \
             metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    })
}

/// The scalar result of an instant query, or `None` while there is none.
async fn query(c: &TestClient, prom: &Prometheus, promql: &str) -> Option<f64> {
    let q: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let url = format!("{}/api/v1/query?query={q}", prom.url);
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        c.request(http::Request::get(url).body(empty()).unwrap()),
    )
    .await
    .ok()?
    .ok()?;
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_what_the_load_sent() {
    let up = Upstream::echo("s").await;
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n[services.s]\nendpoints = [{}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        up.endpoint()
    )));
    let Some(prom) = start_prometheus(gw.admin.unwrap()) else {
        eprintln!(
            "SKIPPED: prometheus is not installed (scripts/test.sh installs the Debian package)"
        );
        return;
    };
    let c = client();
    // Load for about three seconds, while Prometheus scrapes every second.
    let mut sent = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(get(&c, &gw.url("/load")).await.status, 200);
        sent += 1;
    }
    // The counter is final now; the next scrapes must bring Prometheus to exactly it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let promql = r#"sum(switchyard_requests_total{route="r",code_class="2xx"})"#;
    let mut last = None;
    while Instant::now() < deadline {
        last = query(&c, &prom, promql).await;
        if last == Some(sent as f64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        last,
        Some(sent as f64),
        "Prometheus saw {last:?}, the load sent {sent}"
    );
    let hist = query(
        &c,
        &prom,
        r#"sum(switchyard_request_duration_seconds_count{route="r"})"#,
    )
    .await;
    assert_eq!(hist, Some(sent as f64));
}
