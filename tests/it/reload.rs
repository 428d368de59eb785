//! Hot reload: under load, with broken files, through SIGHUP and ConfigMap-style swaps.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

fn table(a: &Upstream, b: &Upstream, target: &str) -> String {
    config(&format!(
        "[services.a]\nendpoints = [{}]\n[services.b]\nendpoints = [{}]\n\
         [[routes]]\nname = \"t\"\npath = \"/t\"\nservice = \"{target}\"\n\
         [[routes]]\nname = \"other\"\npath = \"/other\"\nservice = \"{}\"\n",
        a.endpoint(),
        b.endpoint(),
        if target == "a" { "b" } else { "a" },
    ))
}

#[derive(Debug)]
struct Outcome {
    confirmed_at_start: usize,
    triggered_at_end: usize,
    status: u16,
    service: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_nothing_and_each_request_sees_its_table() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let tables = [table(&a, &b, "a"), table(&a, &b, "b")];
    let mut gw = Gateway::start(&tables[0]);
    let url = gw.url("/t");
    // `triggered` counts reloads started (file written), `confirmed` reloads the gateway
    // reported done. Reload k installs table k % 2.
    let triggered = Arc::new(AtomicUsize::new(0));
    let confirmed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (url, triggered, confirmed, stop) = (
            url.clone(),
            triggered.clone(),
            confirmed.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            // ~80 req/s per worker, 4 workers: well above 200 req/s in total.
            let mut tick = tokio::time::interval(Duration::from_millis(12));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let confirmed_at_start = confirmed.load(Ordering::SeqCst);
                let resp = c
                    .request(http::Request::get(&url).body(empty()).unwrap())
                    .await;
                let (status, service) = match resp {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = http_body_util::BodyExt::collect(r.into_body())
                            .await
                            .map(|b| b.to_bytes());
                        let service = body
                            .ok()
                            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                            .and_then(|v| v["service"].as_str().map(str::to_string))
                            .unwrap_or_default();
                        (status, service)
                    }
                    Err(e) => (0, format!("client error: {e}")),
                };
                out.push(Outcome {
                    confirmed_at_start,
                    triggered_at_end: triggered.load(Ordering::SeqCst),
                    status,
                    service,
                });
            }
            out
        }));
    }
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(450));
    for k in 1..=20 {
        pace.tick().await;
        triggered.store(k, Ordering::SeqCst);
        gw.write_config(&tables[k % 2]);
        gw.wait_log("config reloaded");
        confirmed.store(k, Ordering::SeqCst);
    }
    // A broken file mid-load: rejected, old table (k = 20 -> table a) kept.
    gw.write_config("[[routes]]\nname = \"broken\"\n");
    gw.wait_log("config reload rejected; keeping the running table");
    while started.elapsed() < Duration::from_secs(10) {
        pace.tick().await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        all.len() as f64 / elapsed >= 200.0,
        "load was only {:.0} req/s",
        all.len() as f64 / elapsed
    );
    let failed: Vec<_> = all.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        all.len(),
        failed.first()
    );
    let mut checked = 0;
    for o in &all {
        if o.triggered_at_end == o.confirmed_at_start {
            let expected = if o.confirmed_at_start % 2 == 0 {
                "a"
            } else {
                "b"
            };
            assert_eq!(
                o.service, expected,
                "request between reloads served by the wrong table: {o:?}"
            );
            checked += 1;
        }
    }
    assert!(
        checked > all.len() / 2,
        "too few requests fell between reloads: {checked}/{}",
        all.len()
    );
    assert!(all.iter().any(|o| o.service == "a") && all.iter().any(|o| o.service == "b"));
    // After the broken file the running table is still the last good one.
    let v = get(&client(), &url).await.json();
    assert_eq!(v["service"], "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_file_behind_a_symlink() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let mut gw = Gateway::start(&table(&a, &b, "a"));
    // Point the config path at a file in another directory, which the watcher does
    // not see: only SIGHUP can bring the change in.
    let elsewhere = tempfile::tempdir().unwrap();
    let real = elsewhere.path().join("routes.toml");
    std::fs::write(&real, table(&a, &b, "a")).unwrap();
    let link = gw.dir.path().join(".link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    std::fs::rename(&link, &gw.config).unwrap();
    std::fs::write(&real, table(&a, &b, "b")).unwrap();
    gw.signal("HUP");
    gw.wait_log("config reloaded");
    assert_eq!(get(&client(), &gw.url("/t")).await.json()["service"], "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_is_picked_up() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    // Lay the directory out the way the kubelet does:
    //   routes.toml -> ..data/routes.toml, ..data -> ..v1
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("..v1");
    let v2 = dir.path().join("..v2");
    std::fs::create_dir(&v1).unwrap();
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v1.join("routes.toml"), table(&a, &b, "a")).unwrap();
    std::fs::write(v2.join("routes.toml"), table(&a, &b, "b")).unwrap();
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/routes.toml", dir.path().join("routes.toml")).unwrap();
    let mut gw = Gateway::start_at(&dir.path().join("routes.toml"));
    assert_eq!(get(&client(), &gw.url("/t")).await.json()["service"], "a");
    std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    gw.wait_log("config reloaded");
    assert_eq!(get(&client(), &gw.url("/t")).await.json()["service"], "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_rejected_with_its_errors_and_the_table_kept() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let mut gw = Gateway::start(&table(&a, &b, "a"));
    gw.write_config(&table(&a, &b, "a").replace("service = \"a\"", "service = \"nope\""));
    let line = gw.wait_log("config reload rejected; keeping the running table");
    let detail = line["fields"]["error"].as_str().unwrap();
    assert!(detail.contains("unknown service `nope`"), "{detail}");
    assert!(
        detail.contains("routes.toml:"),
        "errors carry file and line: {detail}"
    );
    assert_eq!(get(&client(), &gw.url("/t")).await.json()["service"], "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_runs_on_the_current_thread_scheduler_and_still_reloads() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let mut gw = Gateway::start_with_env(&table(&a, &b, "a"), &[("TOKIO_WORKER_THREADS", "1")]);
    // No multi-threaded worker exists: everything runs on the main thread.
    let pid = gw.child.id();
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("tokio-rt-worker")),
        "{names:?}"
    );
    assert_eq!(get(&client(), &gw.url("/t")).await.json()["service"], "a");
    // The build thread hands the new table back to the one runtime thread.
    gw.write_config(&table(&a, &b, "b"));
    gw.wait_log("config reloaded");
    assert_eq!(get(&client(), &gw.url("/t")).await.json()["service"], "b");
    let admin = get(&client(), &gw.admin_url("/metrics")).await;
    assert_eq!(admin.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_without_transparent_huge_pages() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let gw = Gateway::start(&table(&a, &b, "a"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.child.id())).unwrap();
    // The line exists since Linux 5.0; older kernels cannot show the flag.
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
    // Nor does any mapping ask for them (`hg`: madvise(MADV_HUGEPAGE)), as mimalloc
    // did for its arena before `main` could turn huge pages off.
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", gw.child.id())).unwrap();
    for flags in smaps.lines().filter(|l| l.starts_with("VmFlags:")) {
        assert!(!flags.split_whitespace().any(|f| f == "hg"), "{flags}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_code_is_unmapped_once_the_gateway_listens() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    // The binary every test runs: other gateways map the same pages, which does not
    // keep this process from dropping its own mappings of them.
    let gw = Gateway::start(&table(&a, &b, "a"));
    let pid = gw.child.id();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    // The binary's code mapping: its size and how much of it is resident (kB).
    let mut code = None;
    let mut lines = smaps.lines();
    while let Some(line) = lines.next() {
        let mut f = line.split_whitespace();
        let perms = f.nth(1);
        if perms != Some("r-xp") || f.nth(3).map(std::path::Path::new) != Some(exe.as_path()) {
            continue;
        }
        let mut field = |name: &str| -> u64 {
            let l = lines.find(|l| l.starts_with(name)).unwrap();
            l.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        let size = field("Size:");
        code = Some((size, field("Rss:")));
        break;
    }
    let (size, rss) = code.expect("the binary's code mapping");
    // Start-up alone leaves about 70 % of it resident (debug build); dropped, what
    // the threads have run since comes back: 13 % on a quiet machine, 23–33 % seen
    // while the whole suite ran.
    assert!(rss * 2 < size, "{rss} of {size} kB resident");
    assert_eq!(get(&client(), &gw.url("/t")).await.json()["service"], "a");
}
