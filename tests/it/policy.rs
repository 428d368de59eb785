//! Traffic policies through the real gateway: sticky canary, cohorts, the guard, the
//! force header, topic branches and their gates.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchyard::policy::branch::sign;
use switchyard::policy::canary::bucket;

use crate::support::*;

/// GET `url` with extra headers; the answer.
async fn get_with(c: &TestClient, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(c, req.body(empty()).unwrap()).await
}

/// For each id, the service that answered (`x-switchyard-service`), `parallel` at a time.
async fn assign(url: &str, header: &str, ids: &[u32], parallel: usize) -> HashMap<u32, String> {
    let chunks: Vec<Vec<u32>> = ids
        .chunks(ids.len().div_ceil(parallel))
        .map(|c| c.to_vec())
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let (url, header) = (url.to_string(), header.to_string());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            for id in chunk {
                let a = get_with(&c, &url, &[(&header, &id.to_string())]).await;
                assert_eq!(a.status, 200, "id {id}");
                let svc = a.headers["x-switchyard-service"]
                    .to_str()
                    .unwrap()
                    .to_string();
                out.push((id, svc));
            }
            out
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn canary_table(main: &Upstream, canary: &Upstream, weight: u32) -> String {
    config(&format!(
        "[server]\naccess_log = \"off\"\n\
         [canary]\nservice_header = \"x-switchyard-service\"\n\
         [services.users]\nendpoints = [{}]\n\
         [services.users-canary]\nendpoints = [{}]\n\
         [[routes]]\nname = \"users\"\npath = \"/api/users\"\nservice = \"users\"\n\
         canary = {{ service = \"users-canary\", weight = {weight}, sticky = \"header:x-user-id\" }}\n",
        main.endpoint(),
        canary.endpoint()
    ))
}

/// Weight 5 through the gateway: the share is near 5 %, every id lands where the bucket
/// function says (the unit test checks 20,000 ids against ±0.6 %), a repeat lands on the
/// same side, and after a reload to weight 10 no id has left the canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_canary_keeps_ids_and_only_grows_into_the_canary() {
    let main = Upstream::echo("users").await;
    let canary = Upstream::echo("users-canary").await;
    let mut gw = Gateway::start(&canary_table(&main, &canary, 5));
    let url = gw.url("/api/users/1");
    let ids: Vec<u32> = (0..4000).map(|i| i * 7919 + 13).collect();
    let at5 = assign(&url, "x-user-id", &ids, 8).await;
    let in5 = at5.values().filter(|s| *s == "users-canary").count();
    let share = in5 as f64 / ids.len() as f64 * 100.0;
    eprintln!(
        "canary share at weight 5 over {} ids: {share:.2}%",
        ids.len()
    );
    assert!((share - 5.0).abs() <= 1.0, "share {share:.2}%");
    for (id, svc) in &at5 {
        let expected = if bucket("users", &id.to_string()) < 500 {
            "users-canary"
        } else {
            "users"
        };
        assert_eq!(svc, expected, "id {id}");
    }
    let again = assign(&url, "x-user-id", &ids[..1000], 4).await;
    for (id, svc) in &again {
        assert_eq!(
            svc, &at5[id],
            "id {id} changed sides without a config change"
        );
    }
    gw.write_config(&canary_table(&main, &canary, 10));
    gw.wait_log("config reloaded");
    let at10 = assign(&url, "x-user-id", &ids, 8).await;
    let in10 = at10.values().filter(|s| *s == "users-canary").count();
    for (id, svc) in &at5 {
        if svc == "users-canary" {
            assert_eq!(at10[id], "users-canary", "id {id} moved out of the canary");
        }
    }
    eprintln!("canary at weight 10: {in10} of {}", ids.len());
    assert!(in10 > in5);
}

/// 5,000 user ids over two routes at weights 5 and 10 with `sticky = "cohort"`: every
/// id in the first canary is in the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohort_users_in_the_small_canary_are_in_the_larger_one() {
    let users = Upstream::echo("users").await;
    let users2 = Upstream::echo("users-v2").await;
    let orders = Upstream::echo("orders").await;
    let orders2 = Upstream::echo("orders-v2").await;
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n\
         [canary]\ncohort_key = \"header:x-user-id\"\nservice_header = \"x-switchyard-service\"\n\
         [services.users]\nendpoints = [{}]\n[services.users-v2]\nendpoints = [{}]\n\
         [services.orders]\nendpoints = [{}]\n[services.orders-v2]\nendpoints = [{}]\n\
         [[routes]]\nname = \"users\"\npath = \"/users\"\nservice = \"users\"\n\
         canary = {{ service = \"users-v2\", weight = 5, sticky = \"cohort\" }}\n\
         [[routes]]\nname = \"orders\"\npath = \"/orders\"\nservice = \"orders\"\n\
         canary = {{ service = \"orders-v2\", weight = 10, sticky = \"cohort\" }}\n",
        users.endpoint(),
        users2.endpoint(),
        orders.endpoint(),
        orders2.endpoint()
    )));
    let ids: Vec<u32> = (1..=5000).collect();
    let u = assign(&gw.url("/users"), "x-user-id", &ids, 8).await;
    let o = assign(&gw.url("/orders"), "x-user-id", &ids, 8).await;
    let mut in_users = 0;
    for id in &ids {
        if u[id] == "users-v2" {
            in_users += 1;
            assert_eq!(o[id], "orders-v2", "user {id} sees users v2 with orders v1");
        }
    }
    let in_orders = o.values().filter(|s| *s == "orders-v2").count();
    eprintln!("cohort: {in_users} users in the 5% canary, {in_orders} in the 10% one");
    assert!(in_users > 150 && in_orders > in_users);
}

/// A `canary = {…}` route and a `split = […]` route at the same weight, both sticky by
/// cohort: every user is on the same side of both (the split's non-main backend holds
/// the low buckets, like a canary). A branch on the split route is main's branch,
/// whichever backend the split drew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohort_is_shared_by_canary_and_split_routes() {
    let users = Upstream::echo("users").await;
    let users2 = Upstream::echo("users-v2").await;
    let orders = Upstream::echo("orders").await;
    let orders2 = Upstream::echo("orders-v2").await;
    let feature = Upstream::echo("orders-feat").await;
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n\
         [canary]\ncohort_key = \"header:x-user-id\"\nservice_header = \"x-switchyard-service\"\n\
         [branches]\nheader = \"x-branch\"\n\
         [services.users]\nendpoints = [{}]\n[services.users-v2]\nendpoints = [{}]\n\
         [services.orders]\nendpoints = [{}]\n[services.orders.branches]\nfeat = [{}]\n\
         [services.orders-v2]\nendpoints = [{}]\n\
         [[routes]]\nname = \"users\"\npath = \"/users\"\nservice = \"users\"\n\
         canary = {{ service = \"users-v2\", weight = 10, sticky = \"cohort\" }}\n\
         [[routes]]\nname = \"orders\"\npath = \"/orders\"\nsticky = \"cohort\"\n\
         split = [{{ service = \"orders\", weight = 90 }}, {{ service = \"orders-v2\", weight = 10 }}]\n",
        users.endpoint(),
        users2.endpoint(),
        orders.endpoint(),
        feature.endpoint(),
        orders2.endpoint()
    )));
    let ids: Vec<u32> = (1..=3000).collect();
    let u = assign(&gw.url("/users"), "x-user-id", &ids, 8).await;
    let o = assign(&gw.url("/orders"), "x-user-id", &ids, 8).await;
    let mut in_canary = 0;
    for id in &ids {
        let v2 = u[id] == "users-v2";
        in_canary += usize::from(v2);
        assert_eq!(
            o[id] == "orders-v2",
            v2,
            "user {id}: {} on users but {} on orders",
            u[id],
            o[id]
        );
    }
    eprintln!("{in_canary} of {} users in both 10% canaries", ids.len());
    assert!(in_canary > 150 && in_canary < 450, "{in_canary}");
    // Users in the split's canary and out of it: the branch is orders' own.
    let c = client();
    for id in ids.iter().take(200) {
        let a = get_with(
            &c,
            &gw.url("/orders"),
            &[("x-user-id", &id.to_string()), ("x-branch", "feat")],
        )
        .await;
        assert_eq!(a.json()["service"], "orders-feat", "user {id}");
    }
}

/// A canary answering every second request with 503 is cut to 0 once the guard has seen
/// `min_requests`; main keeps answering, the trip is logged, counted and on the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_cuts_a_failing_canary_and_main_keeps_serving() {
    let main = Upstream::echo("main").await;
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let bad = Upstream::start(move |_req| {
        let k = n2.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut r = text("canary");
            if k.is_multiple_of(2) {
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    })
    .await;
    let mut gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n\
         [canary]\nservice_header = \"x-switchyard-service\"\n\
         [services.main]\nendpoints = [{}]\n[services.bad]\nendpoints = [{}]\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"main\"\n\
         canary = {{ service = \"bad\", weight = 50, guard = {{ max_error_ratio = 2.0, min_requests = 20, window = \"60s\" }} }}\n",
        main.endpoint(),
        bad.endpoint()
    )));
    let c = client();
    let deadline = Instant::now() + SOON;
    let mut sent = 0;
    // Until the guard trips (its log line), no more than a few hundred requests.
    loop {
        let a = get(&c, &gw.url("/x")).await;
        sent += 1;
        assert!(a.status == 200 || a.status == 503);
        let tripped = gw
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("canary guard tripped"));
        if tripped {
            break;
        }
        assert!(
            Instant::now() < deadline && sent < 500,
            "guard never tripped"
        );
    }
    let canary_hits = bad.hits();
    eprintln!("guard tripped after {sent} requests ({canary_hits} to the canary)");
    assert!(canary_hits >= 20, "tripped before min_requests");
    for _ in 0..50 {
        let a = get(&c, &gw.url("/x")).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["x-switchyard-service"], "main");
    }
    assert_eq!(bad.hits(), canary_hits, "the canary still got traffic");
    let metrics =
        String::from_utf8(get(&c, &gw.admin_url("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(r#"switchyard_canary_guard_tripped_total{route="r"} 1"#),
        "{metrics}"
    );
    let routes = get(&c, &gw.admin_url("/routes")).await.json();
    assert_eq!(
        routes["routes"][0]["action"]["canary"]["tripped"], true,
        "{routes}"
    );
    // A reload resets the guard.
    let text = std::fs::read_to_string(&gw.config).unwrap();
    gw.write_config(&format!("{text}\n# touched\n"));
    gw.wait_log("config reloaded");
    let routes = get(&c, &gw.admin_url("/routes")).await.json();
    assert_eq!(routes["routes"][0]["action"]["canary"]["tripped"], false);
}

/// `x-canary: always|never` picks a side when `force_header` is set, and never reaches
/// the upstream either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_header_picks_a_side_and_is_never_forwarded() {
    let main = Upstream::echo("main").await;
    let canary = Upstream::echo("canary").await;
    let table = |force: &str| {
        config(&format!(
            "[server]\naccess_log = \"off\"\n[canary]\n{force}\n\
             [services.main]\nendpoints = [{}]\n[services.canary]\nendpoints = [{}]\n\
             [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"main\"\n\
             canary = {{ service = \"canary\", weight = 0 }}\n",
            main.endpoint(),
            canary.endpoint()
        ))
    };
    let mut gw = Gateway::start(&table("force_header = \"x-canary\""));
    let c = client();
    let a = get_with(&c, &gw.url("/"), &[("x-canary", "always")])
        .await
        .json();
    assert_eq!(a["service"], "canary");
    assert!(a["headers"].get("x-canary").is_none(), "{a}");
    let a = get_with(&c, &gw.url("/"), &[("x-canary", "never")])
        .await
        .json();
    assert_eq!(a["service"], "main");
    // Off: the header changes nothing and is stripped.
    gw.write_config(&table(""));
    gw.wait_log("config reloaded");
    let a = get_with(&c, &gw.url("/"), &[("x-canary", "always")])
        .await
        .json();
    assert_eq!(a["service"], "main");
    assert!(a["headers"].get("x-canary").is_none(), "{a}");
}

fn branch_table(main: &Upstream, feature: &Upstream, templ: &Upstream, extra: &str) -> String {
    config(&format!(
        "[branches]\nheader = \"x-branch\"\ncookie = \"x-branch\"\n{extra}\n\
         [services.users]\nendpoints = [{}]\n\
         [services.users.branches]\nfeature-login = [{}]\ngone = [\"127.0.0.1:1\"]\n\
         [services.orders]\nendpoints = [{}]\nbranch_endpoint = \"{{branch}}.localhost:{}\"\n\
         [services.carts]\nendpoints = [{}]\nbranch_endpoint = \"carts-{{branch}}.preview.invalid:80\"\n\
         [[routes]]\nname = \"users\"\npath = \"/users\"\nservice = \"users\"\n\
         [[routes]]\nname = \"orders\"\npath = \"/orders\"\nservice = \"orders\"\n\
         [[routes]]\nname = \"carts\"\npath = \"/carts\"\nservice = \"carts\"\n",
        main.endpoint(),
        feature.endpoint(),
        main.endpoint(),
        templ.addr.port(),
        main.endpoint(),
    ))
}

/// Explicit and template branches hit; unknown, unresolvable and refused branches fall
/// back to main; bad names are 400; the header reaches the branch unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_hit_fall_back_and_reject_bad_names() {
    let main = Upstream::echo("main").await;
    let feature = Upstream::echo("users-feature-login").await;
    let templ = Upstream::echo("orders-template").await;
    let gw = Gateway::start(&branch_table(&main, &feature, &templ, ""));
    let c = client();
    let b = |v: &'static str| [("x-branch", v)];
    // Explicit hit; the header is passed on unchanged.
    let a = get_with(&c, &gw.url("/users/1"), &b("feature-login")).await;
    assert_eq!(a.headers["x-switchyard-served-by"], "users@feature-login");
    let j = a.json();
    assert_eq!(j["service"], "users-feature-login");
    assert_eq!(j["headers"]["x-branch"], "feature-login");
    // Also by cookie and by W3C baggage.
    let a = get_with(
        &c,
        &gw.url("/users/1"),
        &[("cookie", "a=1; x-branch=feature-login")],
    )
    .await;
    assert_eq!(a.json()["service"], "users-feature-login");
    let a = get_with(
        &c,
        &gw.url("/users/1"),
        &[("baggage", "k=v,branch=feature-login")],
    )
    .await;
    assert_eq!(a.json()["service"], "users-feature-login");
    // Template hit (`{branch}.localhost` is loopback).
    let a = get_with(&c, &gw.url("/orders/1"), &b("feature-login")).await;
    assert_eq!(a.headers["x-switchyard-served-by"], "orders@feature-login");
    assert_eq!(a.json()["service"], "orders-template");
    // Unknown branch, a name that does not resolve, a deployment that refuses: main.
    for (path, branch, svc) in [
        ("/users/1", "nope", "users"),
        ("/carts/1", "feature-login", "carts"),
        ("/users/1", "gone", "users"),
    ] {
        let a = get_with(&c, &gw.url(path), &[("x-branch", branch)]).await;
        assert_eq!(a.status, 200, "{path} {branch}");
        assert_eq!(a.json()["service"], "main", "{path} {branch}");
        assert_eq!(a.headers["x-switchyard-served-by"], format!("{svc}@main"));
    }
    // Bad names never reach DNS or a URL.
    for bad in ["../evil", "a.b.c", "Feature", "-x"] {
        let a = get_with(&c, &gw.url("/orders/1"), &[("x-branch", bad)]).await;
        assert_eq!(a.status, 400, "{bad}");
        assert_eq!(a.json()["error"], "bad_branch");
    }
    // No branch asked: no served-by header.
    let a = get(&c, &gw.url("/users/1")).await;
    assert!(a.headers.get("x-switchyard-served-by").is_none());
    assert_eq!(templ.hits(), 1);
}

/// With a CIDR gate that excludes the client, or an HMAC gate and a bad signature, the
/// branch value is stripped and main answers; a good signature reaches the branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_strip_the_branch_of_outsiders() {
    let main = Upstream::echo("main").await;
    let feature = Upstream::echo("users-feature-login").await;
    let templ = Upstream::echo("orders-template").await;
    let gw = Gateway::start(&branch_table(
        &main,
        &feature,
        &templ,
        "gate = \"cidr:10.0.0.0/8\"",
    ));
    let c = client();
    let a = get_with(
        &c,
        &gw.url("/users/1"),
        &[
            ("x-branch", "feature-login"),
            ("cookie", "x-branch=feature-login; a=1"),
        ],
    )
    .await;
    // A refused branch gets no served-by header either.
    assert!(a.headers.get("x-switchyard-served-by").is_none());
    let a = a.json();
    assert_eq!(a["service"], "main");
    assert!(a["headers"].get("x-branch").is_none(), "{a}");
    assert_eq!(a["headers"]["cookie"], "a=1");
    // Outsiders get no 400 for a bad name either: nothing is learnt.
    let a = get_with(&c, &gw.url("/users/1"), &[("x-branch", "../evil")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(feature.hits(), 0);
    drop(gw);

    let key = b"0123456789abcdef-branch-key";
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("branch.key");
    std::fs::write(&key_file, key).unwrap();
    let gw = Gateway::start(&branch_table(
        &main,
        &feature,
        &templ,
        &format!(
            "gate = \"hmac\"\nhmac_key_file = \"{}\"",
            key_file.display()
        ),
    ));
    let good = format!("feature-login.{}", sign(key, "feature-login"));
    let bad = format!(
        "feature-login.{}",
        sign(b"some-other-key-entirely", "feature-login")
    );
    let a = get_with(&c, &gw.url("/users/1"), &[("x-branch", &bad)])
        .await
        .json();
    assert_eq!(a["service"], "main");
    assert!(a["headers"].get("x-branch").is_none(), "{a}");
    let a = get_with(&c, &gw.url("/users/1"), &[("x-branch", &good)])
        .await
        .json();
    assert_eq!(a["service"], "users-feature-login");
    assert_eq!(a["headers"]["x-branch"], good.as_str());
}

/// GET `url` with raw header values (they need not be UTF-8).
async fn get_raw(c: &TestClient, url: &str, headers: &[(&str, &[u8])]) -> Answer {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, http::HeaderValue::from_bytes(v).unwrap());
    }
    send(c, req.body(empty()).unwrap()).await
}

/// Empty, repeated and non-UTF-8 branch values from a client outside the CIDR gate:
/// main answers and the upstream sees none of them (no header, no cookie pair, no
/// baggage member), so no hop behind the gateway can pick them up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_strips_every_branch_value_of_outsiders() {
    let main = Upstream::echo("main").await;
    let feature = Upstream::echo("users-feature-login").await;
    let templ = Upstream::echo("orders-template").await;
    let gw = Gateway::start(&branch_table(
        &main,
        &feature,
        &templ,
        "baggage = true\ngate = \"cidr:10.0.0.0/8\"",
    ));
    let c = client();
    let cases: [&[(&str, &[u8])]; 6] = [
        &[("cookie", b"x-branch=; x-branch=feature-login")],
        &[("cookie", b"a=1"), ("cookie", b"x-branch=feature-login")],
        &[("baggage", b"branch=,branch=feature-login")],
        &[
            ("baggage", b"k=v"),
            ("baggage", b"branch=feature-login;p=1"),
        ],
        &[("x-branch", b""), ("x-branch", b"feature-login")],
        &[("cookie", b"a=\xff; X-Branch=feature-login; x-branch=\xfe")],
    ];
    for headers in cases {
        let a = get_raw(&c, &gw.url("/users/1"), headers).await;
        assert_eq!(a.status, 200, "{headers:?}");
        let j = a.json();
        assert_eq!(j["service"], "main", "{headers:?}");
        assert!(j["headers"].get("x-branch").is_none(), "{headers:?}: {j}");
        let cookie = j["headers"]["cookie"].as_str().unwrap_or("");
        assert!(
            !cookie.to_ascii_lowercase().contains("x-branch"),
            "{headers:?}: {j}"
        );
        let baggage = j["headers"]["baggage"].as_str().unwrap_or("");
        assert!(!baggage.contains("branch"), "{headers:?}: {j}");
    }
    // Other cookies and baggage members are kept, bytes as sent.
    let a = get_raw(
        &c,
        &gw.url("/users/1"),
        &[
            ("cookie", b"a=1; x-branch=feature-login; b=2"),
            ("baggage", b"k=v,branch=feature-login"),
        ],
    )
    .await
    .json();
    assert_eq!(a["headers"]["cookie"], "a=1; b=2");
    assert_eq!(a["headers"]["baggage"], "k=v");
    assert_eq!(feature.hits(), 0);
}

/// Behind a trusted load balancer the CIDR gate judges the client named by
/// `X-Forwarded-For` (right-most untrusted entry), not the balancer's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cidr_gate_judges_the_forwarded_client_behind_a_trusted_proxy() {
    let main = Upstream::echo("main").await;
    let feature = Upstream::echo("users-feature-login").await;
    let templ = Upstream::echo("orders-template").await;
    let table = branch_table(&main, &feature, &templ, "gate = \"cidr:192.0.2.0/24\"");
    let gw = Gateway::start(&table.replacen(
        "[branches]",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[branches]",
        1,
    ));
    let c = client();
    let ask = async |xff: Option<&str>| {
        let mut h = vec![("x-branch", "feature-login")];
        if let Some(x) = xff {
            h.push(("x-forwarded-for", x));
        }
        get_with(&c, &gw.url("/users/1"), &h).await.json()
    };
    let a = ask(Some("192.0.2.9")).await;
    assert_eq!(a["service"], "users-feature-login", "{a}");
    assert_eq!(a["headers"]["x-branch"], "feature-login");
    let a = ask(Some("::ffff:192.0.2.10")).await;
    assert_eq!(a["service"], "users-feature-login", "{a}");
    // Outside, a client's own claim left of the real client, the balancer itself.
    for xff in [Some("203.0.113.5"), Some("192.0.2.9, 203.0.113.5"), None] {
        let a = ask(xff).await;
        assert_eq!(a["service"], "main", "{xff:?}: {a}");
        assert!(a["headers"].get("x-branch").is_none(), "{xff:?}: {a}");
    }
    assert_eq!(feature.hits(), 2);
}

/// A branch deployment that got the request (it answered 503) is not replaced by main
/// when a retry then fails to connect: main never sees a request the branch may have
/// run. One endpoint answers 503, the other refuses; whichever comes first, the
/// client gets the branch's answer or 502, and main gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_that_got_the_request_is_not_replaced_by_main() {
    let main = Upstream::echo("main").await;
    let busy = Upstream::start(|_req| async {
        let mut r = text("busy");
        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        r
    })
    .await;
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n\
         [defaults]\nretry = {{ attempts = 2, on = [\"connect-failure\", \"503\"] }}\n\
         [branches]\nheader = \"x-branch\"\n\
         [services.users]\nendpoints = [{}]\n\
         [services.users.branches]\nfeat = [{}, \"127.0.0.1:{}\"]\n\
         [[routes]]\nname = \"users\"\npath = \"/\"\nservice = \"users\"\n",
        main.endpoint(),
        busy.endpoint(),
        free_port()
    )));
    let c = client();
    let mut reached_then_refused = 0;
    for i in 0..8 {
        let (b0, m0) = (busy.hits(), main.hits());
        let a = get_with(&c, &gw.url("/"), &[("x-branch", "feat")]).await;
        if busy.hits() > b0 {
            assert_eq!(
                main.hits(),
                m0,
                "request {i}: main ran it after the branch did"
            );
            assert!(
                a.status == 503 || a.status == 502,
                "request {i}: {}",
                a.status
            );
            reached_then_refused += usize::from(a.status == 502);
        } else {
            // Only connect failures (the 503 endpoint may be ejected by now): main.
            assert_eq!(a.json()["service"], "main", "request {i}");
        }
    }
    assert!(
        reached_then_refused > 0,
        "no request went 503 -> refused: the case was not exercised"
    );
    // A branch that refuses every connection still falls back.
    let a = get_with(&c, &gw.url("/"), &[("x-branch", "nope")]).await;
    assert_eq!(a.json()["service"], "main");
}

/// A fallback from a refusing branch takes a slot of *main's* concurrency limit: with
/// main's only slot held (and no queue), the fallback is shed, not sent to main.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_fallback_takes_a_slot_of_main() {
    let (main, arrived) = Upstream::slow(Duration::from_secs(3), "main").await;
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n\
         [branches]\nheader = \"x-branch\"\n\
         [services.users]\nendpoints = [{}]\nmax_in_flight = 1\nmax_pending = 0\n\
         [services.users.branches]\ngone = [\"127.0.0.1:{}\"]\n\
         [[routes]]\nname = \"users\"\npath = \"/\"\nservice = \"users\"\n",
        main.endpoint(),
        free_port()
    )));
    let url = gw.url("/");
    let holder = tokio::spawn(async move { get(&client(), &url).await.status });
    tokio::time::timeout(SOON, arrived.notified())
        .await
        .expect("main never got the first request");
    let c = client();
    let a = get_with(&c, &gw.url("/"), &[("x-branch", "gone")]).await;
    assert_eq!(a.status, 503, "the fallback did not wait for main's slot");
    assert_eq!(a.json()["error"], "overloaded");
    assert_eq!(main.hits(), 1);
    assert_eq!(holder.await.unwrap(), 200);
}

/// Branch selection wins over the canary split, and the access log records the branch
/// and whether it fell back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_wins_over_canary_and_is_logged() {
    let main = Upstream::echo("main").await;
    let canary = Upstream::echo("canary").await;
    let feature = Upstream::echo("feature").await;
    let gw = Gateway::start(&config(&format!(
        "[branches]\nheader = \"x-branch\"\n\
         [services.users]\nendpoints = [{}]\n[services.users.branches]\nfeat = [{}]\n\
         [services.canary]\nendpoints = [{}]\n\
         [[routes]]\nname = \"users\"\npath = \"/\"\nservice = \"users\"\n\
         canary = {{ service = \"canary\", weight = 100 }}\n",
        main.endpoint(),
        feature.endpoint(),
        canary.endpoint()
    )));
    let c = client();
    let a = get_with(&c, &gw.url("/"), &[("x-branch", "feat")])
        .await
        .json();
    assert_eq!(a["service"], "feature");
    let a = get_with(&c, &gw.url("/"), &[("x-branch", "other")])
        .await
        .json();
    assert_eq!(a["service"], "canary");
    let deadline = Instant::now() + SOON;
    let log = loop {
        let log = gw.access_log();
        if log.len() >= 2 {
            break log;
        }
        assert!(Instant::now() < deadline, "no access log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(log[0]["branch"], "feat");
    assert_eq!(log[0]["branch_fallback"], false);
    assert_eq!(log[0]["service"], "users@feat");
    assert_eq!(log[1]["branch"], "other");
    assert_eq!(log[1]["branch_fallback"], true);
    assert_eq!(log[1]["service"], "canary");
    // Metrics count the branch under its main service: no series per branch name.
    let m = metrics(&gw).await;
    assert!(
        m.contains(r#"switchyard_requests_total{route="users",service="users",method="GET",code_class="2xx"} 1"#),
        "{m}"
    );
    assert!(!m.contains("users@feat"), "{m}");
}

/// Poll `f` until it holds, within `SOON`.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {SOON:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn metrics(gw: &Gateway) -> String {
    String::from_utf8(
        get(&client(), &gw.admin_url("/metrics"))
            .await
            .body
            .to_vec(),
    )
    .unwrap()
}

/// A shadow that sleeps 2 s, and a shadow that is down, change nothing for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_never_delays_or_fails_the_client() {
    let main = Upstream::echo("main").await;
    let (slow, _) = Upstream::slow(Duration::from_secs(2), "slow").await;
    let dead = free_port();
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n\
         [services.main]\nendpoints = [{}]\n[services.slow]\nendpoints = [{}]\n\
         [services.dead]\nendpoints = [\"127.0.0.1:{dead}\"]\n\
         [[routes]]\nname = \"slow\"\npath = \"/slow\"\nservice = \"main\"\n\
         mirror = {{ service = \"slow\", compare = true }}\n\
         [[routes]]\nname = \"dead\"\npath = \"/dead\"\nservice = \"main\"\n\
         mirror = {{ service = \"dead\" }}\n\
         [[routes]]\nname = \"plain\"\npath = \"/plain\"\nservice = \"main\"\n\
         [[routes]]\nname = \"bounded\"\npath = \"/bounded\"\nservice = \"main\"\n\
         mirror = {{ service = \"slow\", max_in_flight = 1 }}\n",
        main.endpoint(),
        slow.endpoint()
    )));
    let c = client();
    for path in ["/plain", "/slow", "/dead"] {
        let mut took = Vec::new();
        for _ in 0..30 {
            let started = Instant::now();
            let a = get(&c, &gw.url(path)).await;
            took.push(started.elapsed());
            assert_eq!(a.status, 200);
            assert_eq!(a.json()["service"], "main");
        }
        took.sort();
        let p50 = took[took.len() / 2];
        let max = took[took.len() - 1];
        eprintln!("{path}: client p50 {p50:?}, max {max:?} over 30 requests");
        assert!(
            max < Duration::from_secs(1),
            "{path}: a request took {max:?}"
        );
    }
    eventually("the slow shadow got copies", async || slow.hits() >= 30).await;
    // One slot: while the 2 s shadow holds it, further copies are dropped and counted.
    for _ in 0..10 {
        assert_eq!(get(&c, &gw.url("/bounded")).await.status, 200);
    }
    let m = metrics(&gw).await;
    let dropped: u32 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"switchyard_mirror_requests_total{route="bounded",result="dropped"} "#)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    eprintln!("bounded mirror: {dropped} of 10 copies dropped");
    assert!(dropped >= 5, "{m}");
    eventually(
        "the dead shadow's copies are counted as failed",
        async || {
            metrics(&gw)
                .await
                .contains(r#"switchyard_mirror_requests_total{route="dead",result="failed"} 30"#)
        },
    )
    .await;
}

/// A shadow that differs in one JSON field shows exactly that path; ignored fields and
/// key order do not count; POST is not mirrored by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_compare_names_the_differing_json_path() {
    let stamp = Arc::new(AtomicUsize::new(0));
    let json_upstream = |name: &'static str, stamp: Arc<AtomicUsize>| {
        Upstream::start(move |req| {
            let n = stamp.fetch_add(1, Ordering::SeqCst);
            let body = match (name, req.uri().path()) {
                ("v2", "/users/7") => serde_json::json!({
                    "generated_at": n, "user": { "name": "Bob", "id": 7 }, "tags": ["a"]
                }),
                _ => serde_json::json!({
                    "user": { "id": 7, "name": "Alice" }, "tags": ["a"], "generated_at": n
                }),
            };
            async move { json(&body) }
        })
    };
    let v1 = json_upstream("v1", stamp.clone()).await;
    let v2 = json_upstream("v2", stamp.clone()).await;
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n\
         [services.v1]\nendpoints = [{}]\n[services.v2]\nendpoints = [{}]\n\
         [[routes]]\nname = \"users\"\npath = \"/users\"\nservice = \"v1\"\n\
         mirror = {{ service = \"v2\", compare = true, ignore = [\"date\", \"$.generated_at\"], headers = [\"content-type\"] }}\n",
        v1.endpoint(),
        v2.endpoint()
    )));
    let c = client();
    // Same answer apart from key order and the ignored field: a match.
    assert_eq!(get(&c, &gw.url("/users/1")).await.status, 200);
    eventually("one match", async || {
        metrics(&gw)
            .await
            .contains(r#"switchyard_mirror_requests_total{route="users",result="match"} 1"#)
    })
    .await;
    // One field differs.
    assert_eq!(
        get(&c, &gw.url("/users/7?x=1")).await.json()["user"]["name"],
        "Alice"
    );
    eventually("one mismatch", async || {
        metrics(&gw)
            .await
            .contains(r#"switchyard_mirror_requests_total{route="users",result="mismatch"} 1"#)
    })
    .await;
    let report = get(&c, &gw.admin_url("/mirror/mismatches")).await.json();
    let m = &report["mismatches"][0];
    assert_eq!(m["request"], "GET /users/7?x=1");
    assert_eq!(m["primary_status"], 200);
    assert_eq!(m["shadow_status"], 200);
    assert_eq!(
        m["diff"],
        serde_json::json!([r#"$.user.name: "Alice" != "Bob""#]),
        "{report}"
    );
    // POST is not mirrored unless `methods` says so: after the POST, one mirrored GET
    // whose comparison is counted; the shadow then has seen exactly that one more.
    let before = v2.hits();
    let post = http::Request::post(gw.url("/users/1"))
        .body(full("{}"))
        .unwrap();
    assert_eq!(send(&c, post).await.status, 200);
    assert_eq!(get(&c, &gw.url("/users/1")).await.status, 200);
    eventually("the GET after the POST is compared", async || {
        metrics(&gw)
            .await
            .contains(r#"switchyard_mirror_requests_total{route="users",result="match"} 2"#)
    })
    .await;
    assert_eq!(v2.hits(), before + 1, "the POST was mirrored");
    assert_eq!(v1.hits(), 4);
}

/// The mirror slot is shared by the shadow task and the teed primary body: it is
/// released when both are done, so one slot serves request after request, whether the
/// shadow answers or is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_slot_is_released_after_each_copy() {
    let v1 = Upstream::echo("same").await;
    let v2 = Upstream::echo("same").await;
    let dead = free_port();
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n\
         [services.v1]\nendpoints = [{}]\n[services.v2]\nendpoints = [{}]\n\
         [services.dead]\nendpoints = [\"127.0.0.1:{dead}\"]\n\
         [[routes]]\nname = \"up\"\npath = \"/up\"\nservice = \"v1\"\n\
         mirror = {{ service = \"v2\", compare = true, max_in_flight = 1 }}\n\
         [[routes]]\nname = \"down\"\npath = \"/down\"\nservice = \"v1\"\n\
         mirror = {{ service = \"dead\", compare = true, max_in_flight = 1 }}\n",
        v1.endpoint(),
        v2.endpoint()
    )));
    let c = client();
    for (path, route, result) in [("/up", "up", "match"), ("/down", "down", "failed")] {
        for i in 1..=5 {
            assert_eq!(get(&c, &gw.url(path)).await.status, 200);
            let want = format!(
                r#"switchyard_mirror_requests_total{{route="{route}",result="{result}"}} {i}"#
            );
            eventually(&want, async || metrics(&gw).await.contains(&want)).await;
        }
        let m = metrics(&gw).await;
        assert!(
            !m.contains(&format!(r#"route="{route}",result="dropped""#)),
            "{m}"
        );
    }
}

/// A shadow that answers gzip while the primary answers plain JSON: the comparison is
/// `skipped` (bytes of an encoded body say nothing comparable), not a mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_skips_comparing_encoded_bodies() {
    let v1 = Upstream::echo("same").await;
    let v2 = Upstream::start(|_req| async {
        let mut r = text("\x1f\u{8b}not really gzip");
        r.headers_mut()
            .insert("content-encoding", http::HeaderValue::from_static("gzip"));
        r
    })
    .await;
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n\
         [services.v1]\nendpoints = [{}]\n[services.v2]\nendpoints = [{}]\n\
         [[routes]]\nname = \"users\"\npath = \"/users\"\nservice = \"v1\"\n\
         mirror = {{ service = \"v2\", compare = true, ignore = [\"$.items[*].id\"] }}\n",
        v1.endpoint(),
        v2.endpoint()
    )));
    let c = client();
    assert_eq!(get(&c, &gw.url("/users/1")).await.status, 200);
    eventually("the comparison is skipped", async || {
        metrics(&gw)
            .await
            .contains(r#"switchyard_mirror_requests_total{route="users",result="skipped"} 1"#)
    })
    .await;
    let m = metrics(&gw).await;
    assert!(!m.contains(r#"result="mismatch""#), "{m}");
    let report = get(&c, &gw.admin_url("/mirror/mismatches")).await.json();
    assert_eq!(report["mismatches"], serde_json::json!([]), "{report}");
}

/// `explain` on the shipped table names the answering service and why: canary bucket,
/// branch hit, fallback, bad name, refused gate.
#[test]
fn explain_names_the_policy_decision() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("explain")
            .args(args)
            .current_dir(root)
            .output()
            .expect("run explain");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let out = run(&["-H", "x-user-id: 24", "GET", "/api/users/7"]);
    assert!(out.contains("sticky bucket "), "{out}");
    assert!(out.contains("answered by:     users-canary\n"), "{out}");
    let out = run(&["-H", "x-user-id: 42", "GET", "/api/users/7"]);
    assert!(out.contains("answered by:     users\n"), "{out}");
    let out = run(&["-H", "x-branch: feature-login", "GET", "/api/users/7"]);
    assert!(out.contains("branch feature-login: hit"), "{out}");
    assert!(
        out.contains("answered by:     users@feature-login\n"),
        "{out}"
    );
    let out = run(&["-H", "x-branch: foo", "GET", "/api/users/7"]);
    assert!(out.contains("fallback to main"), "{out}");
    let out = run(&["-H", "x-branch: a.b.c", "GET", "/api/users/7"]);
    assert!(out.contains("400 bad_branch"), "{out}");
    let out = run(&[
        "--client",
        "203.0.113.9",
        "-H",
        "x-branch: feature-login",
        "GET",
        "/api/users/7",
    ]);
    assert!(out.contains("gate does not hold"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&run(&[
        "--json",
        "-H",
        "x-user-id: 24",
        "GET",
        "/api/users/7",
    ]))
    .unwrap();
    assert_eq!(json["service"], "users-canary");
    assert_eq!(json["policy"]["bucket"], bucket("users", "24"));
}
