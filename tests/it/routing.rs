//! Path split, precedence and normalisation through the real gateway.

use crate::support::*;

async fn two_services() -> (Upstream, Upstream, Gateway) {
    let users = Upstream::echo("users").await;
    let orders = Upstream::echo("orders").await;
    let gw = Gateway::start(&config(&format!(
        r#"
[services.users]
endpoints = [{users}]
[services.orders]
endpoints = [{orders}]

[[routes]]
name = "users"
path = "/api/users"
service = "users"

[[routes]]
name = "orders"
path = "/api/orders"
service = "orders"

[[routes]]
name = "users-post"
path = "/api/users"
methods = ["POST"]
service = "orders"

[[routes]]
name = "health"
exact = "/healthz"
service = "users"

[[routes]]
name = "admin-host"
host = "admin.example.com"
path = "/api"
service = "orders"

[[routes]]
name = "versioned"
path = "/api/users"
headers = {{ x-api-version = "2" }}
service = "orders"
"#,
        users = users.endpoint(),
        orders = orders.endpoint(),
    )));
    (users, orders, gw)
}

async fn service_for(
    c: &TestClient,
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let mut b = http::Request::builder().method(method).uri(gw.url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let a = send(c, b.body(empty()).unwrap()).await;
    if a.status == 404 {
        assert_eq!(a.json()["error"], "no_route");
        return "404".into();
    }
    assert_eq!(a.status, 200, "{path}: {:?}", a.body);
    a.json()["service"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_split_between_two_services() {
    let (_u, _o, gw) = two_services().await;
    let c = client();
    assert_eq!(
        service_for(&c, &gw, "GET", "/api/users", &[]).await,
        "users"
    );
    assert_eq!(
        service_for(&c, &gw, "GET", "/api/users/7", &[]).await,
        "users"
    );
    assert_eq!(
        service_for(&c, &gw, "GET", "/api/orders/1", &[]).await,
        "orders"
    );
    assert_eq!(service_for(&c, &gw, "GET", "/api/usersX", &[]).await, "404");
    assert_eq!(service_for(&c, &gw, "GET", "/api", &[]).await, "404");
    assert_eq!(service_for(&c, &gw, "GET", "/healthz", &[]).await, "users");
    assert_eq!(service_for(&c, &gw, "GET", "/healthz/x", &[]).await, "404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_header_and_host_predicates_are_more_specific() {
    let (_u, _o, gw) = two_services().await;
    let c = client();
    assert_eq!(
        service_for(&c, &gw, "POST", "/api/users", &[]).await,
        "orders"
    );
    assert_eq!(
        service_for(&c, &gw, "GET", "/api/users/1", &[("x-api-version", "2")]).await,
        "orders"
    );
    assert_eq!(
        service_for(&c, &gw, "GET", "/api/users/1", &[("x-api-version", "3")]).await,
        "users"
    );
    // Host beats path: the host route's shorter prefix wins over the host-less /api/users.
    assert_eq!(
        service_for(
            &c,
            &gw,
            "GET",
            "/api/users/1",
            &[("host", "ADMIN.example.com:8080")]
        )
        .await,
        "orders"
    );
    assert_eq!(
        service_for(&c, &gw, "GET", "/other", &[("host", "admin.example.com")]).await,
        "404"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalisation_never_crosses_into_another_route() {
    let (_u, _o, gw) = two_services().await;
    let c = client();
    for path in [
        "/api/orders/../users/1",
        "//api//users/1",
        "/api/orders/%2e%2e/users/1",
        "/api/orders/%2E%2E/users/1",
        "/api/./users/1",
        "/../api/users/1",
    ] {
        let a = get(&c, &gw.url(path)).await;
        assert_eq!(a.status, 200, "{path}");
        let v = a.json();
        assert_eq!(v["service"], "users", "{path}");
        assert_eq!(
            v["path"], "/api/users/1",
            "{path}: the upstream gets the path that was routed"
        );
    }
    // An encoded slash is not a separator: this stays inside the users prefix.
    let a = get(&c, &gw.url("/api/users/..%2f..%2forders")).await;
    assert_eq!(a.json()["service"], "users");
    assert_eq!(a.json()["path"], "/api/users/..%2F..%2Forders");
    // ... and cannot climb out of it either.
    let a = get(&c, &gw.url("/api/users%2f..%2f..%2forders")).await;
    assert_eq!(a.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_query_reach_the_upstream() {
    let users = Upstream::echo("users").await;
    let gw = Gateway::start(&config(&format!(
        "[services.users]\nendpoints = [{}]\n[[routes]]\nname = \"u\"\npath = \"/api/users\"\nstrip_prefix = \"/api\"\nservice = \"users\"\n",
        users.endpoint()
    )));
    let c = client();
    let v = get(&c, &gw.url("/api/users/7?x=1&y=%20")).await.json();
    assert_eq!(v["path"], "/users/7");
    assert_eq!(v["query"], "x=1&y=%20");
    let v = get(&c, &gw.url("/api/users")).await.json();
    assert_eq!(v["path"], "/users");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_across_endpoints() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let gw = Gateway::start(&config(&format!(
        "[services.s]\nendpoints = [{}, {}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        a.endpoint(),
        b.endpoint()
    )));
    let c = client();
    for _ in 0..10 {
        get(&c, &gw.url("/x")).await;
    }
    assert_eq!(a.hits(), 5);
    assert_eq!(b.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_names_are_resolved() {
    let a = Upstream::echo("a").await;
    let gw = Gateway::start(&config(&format!(
        "[services.s]\nendpoints = [\"localhost:{}\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        a.addr.port()
    )));
    let resp = get(&client(), &gw.url("/x")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["service"], "a");
}
