//! Profiling harness for a reload of a large table (`cargo run --profile profiling
//! --example reload_build [ROUTES] [RELOADS]`): writes the route table of
//! `benches/e2e/run.sh`'s `routes10k` scenario (the same text) to a temp dir, starts a
//! gateway state from it, then reloads it RELOADS times the way SIGHUP does (a comment
//! appended each time, so the whole table is rebuilt) and prints how long each phase
//! took. Run it under `valgrind --tool=callgrind` for instruction counts.
//!
//! `reload_build ROUTES match N` instead matches N requests against the table (the
//! routes10k request `GET /svc-5000/item`, plus a miss and a deep path), for the
//! instruction count of the router's lookup.

use std::io::Write;
use std::time::Instant;

use switchyard::config;
use switchyard::gateway::Gateway;
use switchyard::snapshot::{Registry, Snapshot};

fn table(n: usize) -> String {
    let mut s = String::from(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[server]\naccess_log = \"off\"\n\n\
         [services.up]\nendpoints = [\"127.0.0.1:9\"]\n\n\
         [[routes]]\nname = \"all\"\npath = \"/\"\nservice = \"up\"\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "\n[[routes]]\nname = \"svc-{i:04}\"\npath = \"/svc-{i:04}\"\nservice = \"up\"\n"
        ));
    }
    s
}

fn main() {
    let mut args = std::env::args().skip(1);
    let routes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let mode = args.next();
    if mode.as_deref() == Some("match") {
        let n: usize = args
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or(1_000_000);
        return match_only(routes, n);
    }
    let reloads: usize = mode.and_then(|a| a.parse().ok()).unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("sy-reload-build-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("routes.toml");
    std::fs::write(&path, table(routes)).expect("write table");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let t = Instant::now();
        let loaded = config::load(&path).expect("valid table");
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let registry = Registry::default();
        let t = Instant::now();
        let snapshot = Snapshot::build(loaded, &registry).await;
        let build_ms = t.elapsed().as_secs_f64() * 1e3;
        eprintln!("initial: load {load_ms:.1} ms, snapshot {build_ms:.1} ms");
        let gw = Gateway::new(snapshot, registry, None);
        for i in 0..reloads {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open");
            writeln!(f, "# reload {i}").expect("append");
            drop(f);
            let t = Instant::now();
            let outcome = switchyard::reload::reload(&gw, &path).await;
            eprintln!(
                "reload {i}: {:.1} ms ({outcome:?})",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn match_only(routes: usize, n: usize) {
    use switchyard::router::{RequestInfo, Router};
    let loaded = config::parse(&table(routes)).expect("valid table");
    let router = Router::new(&loaded.config);
    let headers = http::HeaderMap::new();
    let paths = ["/svc-5000/item", "/nope/a/b/c", "/svc-0042/a/b/c/d/e"];
    let t = Instant::now();
    let mut found = 0usize;
    for i in 0..n {
        let req = RequestInfo {
            method: &http::Method::GET,
            host: None,
            path: std::hint::black_box(paths[i % paths.len()]),
            query: None,
            headers: &headers,
        };
        found += router.find(&req).map_or(0, |(id, _)| id);
    }
    eprintln!(
        "{n} matches: {:.1} ns each (sum {found})",
        t.elapsed().as_secs_f64() * 1e9 / n as f64
    );
}
