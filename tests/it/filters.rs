//! Gateway API filters through the real gateway: rewrites, header filters, redirects,
//! weighted backends (one test per rule, named after it).

use crate::support::*;

async fn with_routes(routes: &str) -> (Upstream, Upstream, Gateway) {
    let a = Upstream::start(|req| async move {
        let mut r = json(&echo_value("a", &req));
        r.headers_mut()
            .insert("server", http::HeaderValue::from_static("upstream/1.0"));
        r.headers_mut()
            .insert("x-upstream", http::HeaderValue::from_static("1"));
        r
    })
    .await;
    let b = Upstream::echo("b").await;
    let gw = Gateway::start(&config(&format!(
        "[services.a]\nendpoints = [{}]\n[services.b]\nendpoints = [{}]\n{routes}",
        a.endpoint(),
        b.endpoint()
    )));
    (a, b, gw)
}

async fn location(gw: &Gateway, path: &str, host: Option<&str>) -> (u16, String) {
    let mut req = http::Request::get(gw.url(path));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let a = send(&client(), req.body(empty()).unwrap()).await;
    let loc = a
        .headers
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    (a.status.as_u16(), loc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_prefix_replaces_the_matched_prefix() {
    let (_a, _b, gw) = with_routes(
        "[[routes]]\nname = \"r\"\npath = \"/old/api\"\nservice = \"a\"\nrewrite = { prefix = \"/new\" }\n",
    )
    .await;
    let c = client();
    assert_eq!(
        get(&c, &gw.url("/old/api/users/7?x=1")).await.json()["path"],
        "/new/users/7"
    );
    assert_eq!(
        get(&c, &gw.url("/old/api/users/7?x=1")).await.json()["query"],
        "x=1"
    );
    assert_eq!(get(&c, &gw.url("/old/api")).await.json()["path"], "/new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_prefix_to_root_strips_it() {
    let (_a, _b, gw) =
        with_routes("[[routes]]\nname = \"r\"\npath = \"/svc\"\nservice = \"a\"\nrewrite = { prefix = \"/\" }\n")
            .await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/svc/x")).await.json()["path"], "/x");
    assert_eq!(get(&c, &gw.url("/svc")).await.json()["path"], "/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_path_replaces_the_whole_path_and_host_the_host() {
    let (_a, _b, gw) = with_routes(
        "[[routes]]\nname = \"r\"\npath = \"/x\"\nservice = \"a\"\nrewrite = { path = \"/index\", host = \"internal.svc:8080\" }\n",
    )
    .await;
    let v = get(&client(), &gw.url("/x/deep/path?q=2")).await.json();
    assert_eq!(v["path"], "/index");
    assert_eq!(v["query"], "q=2");
    assert_eq!(v["headers"]["host"], "internal.svc:8080");
    assert_eq!(
        v["headers"]["x-forwarded-host"],
        gw.addr.to_string(),
        "the original host stays visible"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_header_filter_sets_adds_and_removes() {
    let (_a, _b, gw) = with_routes(
        "[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"a\"\n\
         request_headers = { set = { x-env = \"prod\" }, add = { x-via = \"sy\" }, remove = [\"x-debug\"] }\n",
    )
    .await;
    let req = http::Request::get(gw.url("/h"))
        .header("x-env", "dev")
        .header("x-via", "client")
        .header("x-debug", "1")
        .body(empty())
        .unwrap();
    let a = send(&client(), req).await;
    let v = a.json();
    assert_eq!(v["headers"]["x-env"], "prod");
    assert!(v["headers"].get("x-debug").is_none());
    // `add` appends to what the client sent; `set` replaced it.
    assert_eq!(v["headers"]["x-via"], "client, sy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_header_filter_sets_adds_and_removes() {
    let (_a, _b, gw) = with_routes(
        "[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"a\"\n\
         response_headers = { set = { cache-control = \"no-store\" }, add = { x-served = \"sy\" }, remove = [\"server\"] }\n",
    )
    .await;
    let a = get(&client(), &gw.url("/h")).await;
    assert_eq!(a.headers["cache-control"], "no-store");
    assert_eq!(a.headers["x-served"], "sy");
    assert_eq!(a.headers["x-upstream"], "1");
    assert!(!a.headers.contains_key("server"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_each_field() {
    let (a, _b, gw) = with_routes(
        r#"
[[routes]]
name = "scheme"
path = "/scheme"
redirect = { scheme = "https" }
[[routes]]
name = "host"
path = "/host"
redirect = { host = "new.example.com" }
[[routes]]
name = "port"
path = "/port"
redirect = { port = 8443 }
[[routes]]
name = "path"
path = "/path"
redirect = { path = "/moved/here" }
[[routes]]
name = "prefix"
path = "/prefix"
redirect = { prefix = "/v2" }
[[routes]]
name = "all"
path = "/all"
redirect = { scheme = "https", host = "secure.example.com", port = 443, path = "/x", status = 301 }
"#,
    )
    .await;
    let h = Some("shop.example.com:8080");
    assert_eq!(
        location(&gw, "/scheme/a?q=1", h).await,
        (302, "https://shop.example.com/scheme/a?q=1".into())
    );
    assert_eq!(
        location(&gw, "/host/a", h).await,
        (302, "http://new.example.com:8080/host/a".into())
    );
    assert_eq!(
        location(&gw, "/port/a", h).await,
        (302, "http://shop.example.com:8443/port/a".into())
    );
    assert_eq!(
        location(&gw, "/path/a", h).await,
        (302, "http://shop.example.com:8080/moved/here".into())
    );
    assert_eq!(
        location(&gw, "/prefix/a/b", h).await,
        (302, "http://shop.example.com:8080/v2/a/b".into())
    );
    assert_eq!(
        location(&gw, "/all/z", h).await,
        (301, "https://secure.example.com/x".into())
    );
    // The well-known port of the scheme is left out.
    assert_eq!(
        location(&gw, "/host/a", Some("shop.example.com:80")).await,
        (302, "http://new.example.com/host/a".into())
    );
    assert_eq!(a.hits(), 0, "redirects never reach a backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_each_status() {
    let routes: String = [301, 302, 303, 307, 308]
        .iter()
        .map(|s| format!("[[routes]]\nname = \"s{s}\"\npath = \"/{s}\"\nredirect = {{ path = \"/to\", status = {s} }}\n"))
        .collect();
    let (_a, _b, gw) = with_routes(&routes).await;
    for s in [301, 302, 303, 307, 308] {
        let (status, loc) = location(&gw, &format!("/{s}"), Some("h.example.com")).await;
        assert_eq!(status, s);
        assert_eq!(loc, "http://h.example.com/to");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_backend_gets_nothing() {
    let (a, b, gw) = with_routes(
        "[[routes]]\nname = \"r\"\npath = \"/\"\nsplit = [{ service = \"a\", weight = 0 }, { service = \"b\", weight = 1 }]\n",
    )
    .await;
    let c = client();
    for _ in 0..50 {
        assert_eq!(get(&c, &gw.url("/x")).await.json()["service"], "b");
    }
    assert_eq!(a.hits(), 0);
    assert_eq!(b.hits(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_weight_zero_is_500() {
    let (a, b, gw) = with_routes(
        "[[routes]]\nname = \"r\"\npath = \"/\"\nsplit = [{ service = \"a\", weight = 0 }, { service = \"b\", weight = 0 }]\n",
    )
    .await;
    let resp = get(&client(), &gw.url("/x")).await;
    assert_eq!(resp.status, 500);
    assert_eq!(resp.json()["error"], "no_backend");
    assert_eq!(a.hits() + b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_proportionally() {
    let (a, b, gw) = with_routes(
        "[[routes]]\nname = \"r\"\npath = \"/\"\nsplit = [{ service = \"a\", weight = 1 }, { service = \"b\", weight = 3 }]\n",
    )
    .await;
    let c = client();
    for _ in 0..800 {
        get(&c, &gw.url("/x")).await;
    }
    // Expected 200 / 600; the bounds are > 8 standard deviations wide.
    assert!((100..=300).contains(&a.hits()), "a got {}", a.hits());
    assert_eq!(a.hits() + b.hits(), 800);
}
