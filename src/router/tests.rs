//! Precedence rules, one test per rule (DESIGN.md "Matching", Gateway API HTTPRoute).

use super::*;
use crate::config;

fn router(routes: &str) -> Router {
    let src = format!(
        "[services.a]\nendpoints = [\"127.0.0.1:1\"]\n[services.b]\nendpoints = [\"127.0.0.1:2\"]\n{routes}"
    );
    let loaded = config::parse(&src).unwrap_or_else(|e| panic!("{}", e.render("t", &src)));
    Router::new(&loaded.config)
}

fn hit(
    r: &Router,
    method: &str,
    host: Option<&str>,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let (path, query) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let info = RequestInfo {
        method: &method,
        host,
        path,
        query,
        headers: &h,
    };
    r.find(&info).map(|(_, r)| r.name.clone())
}

fn get(r: &Router, path: &str) -> Option<String> {
    hit(r, "GET", None, path, &[])
}

fn route(name: &str, extra: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\nservice = \"a\"\n{extra}\n")
}

#[test]
fn prefix_matches_on_segment_boundaries() {
    let r = router(&route("users", "path = \"/api/users\""));
    assert_eq!(get(&r, "/api/users").as_deref(), Some("users"));
    assert_eq!(get(&r, "/api/users/").as_deref(), Some("users"));
    assert_eq!(get(&r, "/api/users/7").as_deref(), Some("users"));
    assert_eq!(get(&r, "/api/usersX"), None);
    assert_eq!(get(&r, "/api/user"), None);
    assert_eq!(get(&r, "/api"), None);
}

#[test]
fn trailing_slash_of_a_prefix_is_ignored() {
    let r = router(&route("m", "path = \"/match/\""));
    assert_eq!(get(&r, "/match").as_deref(), Some("m"));
    assert_eq!(get(&r, "/match/").as_deref(), Some("m"));
    assert_eq!(get(&r, "/match/x").as_deref(), Some("m"));
    assert_eq!(get(&r, "/matchx"), None);
}

#[test]
fn a_trailing_slash_request_is_not_captured_by_the_root_prefix() {
    let r = router(&format!(
        "{}{}",
        route("root", "path = \"/\""),
        route("assets", "path = \"/assets/\"")
    ));
    assert_eq!(get(&r, "/assets/").as_deref(), Some("assets"));
    assert_eq!(get(&r, "/assets").as_deref(), Some("assets"));
    assert_eq!(get(&r, "/assets/x/").as_deref(), Some("assets"));
    assert_eq!(get(&r, "/other/").as_deref(), Some("root"));
    assert_eq!(get(&r, "/").as_deref(), Some("root"));
}

#[test]
fn root_prefix_matches_everything() {
    let r = router(&route("root", "path = \"/\""));
    assert_eq!(get(&r, "/").as_deref(), Some("root"));
    assert_eq!(get(&r, "/anything/at/all").as_deref(), Some("root"));
}

#[test]
fn exact_beats_prefix() {
    let r =
        router(&(route("prefix", "path = \"/healthz\"") + &route("exact", "exact = \"/healthz\"")));
    assert_eq!(get(&r, "/healthz").as_deref(), Some("exact"));
    assert_eq!(get(&r, "/healthz/x").as_deref(), Some("prefix"));
}

#[test]
fn exact_does_not_match_a_trailing_slash() {
    let r = router(&route("exact", "exact = \"/healthz\""));
    assert_eq!(get(&r, "/healthz/"), None);
}

#[test]
fn longer_prefix_beats_shorter_regardless_of_order() {
    let r = router(
        &(route("api", "path = \"/api\"")
            + &route("users", "path = \"/api/users\"")
            + &route("root", "path = \"/\"")),
    );
    assert_eq!(get(&r, "/api/users/1").as_deref(), Some("users"));
    assert_eq!(get(&r, "/api/orders").as_deref(), Some("api"));
    assert_eq!(get(&r, "/api/users7").as_deref(), Some("api"));
    assert_eq!(get(&r, "/other").as_deref(), Some("root"));
}

#[test]
fn sibling_prefix_does_not_capture_a_longer_segment() {
    // matchit must backtrack from the literal `/api/users/7` to the catch-all of `/api/users`.
    let r = router(
        &(route("users", "path = \"/api/users\"") + &route("seven", "path = \"/api/users/7\"")),
    );
    assert_eq!(get(&r, "/api/users/7").as_deref(), Some("seven"));
    assert_eq!(get(&r, "/api/users/7/x").as_deref(), Some("seven"));
    assert_eq!(get(&r, "/api/users/78").as_deref(), Some("users"));
}

#[test]
fn exact_host_beats_wildcard_beats_none() {
    let r = router(
        &(route("none", "path = \"/\"")
            + &route("wild", "path = \"/\"\nhost = \"*.example.com\"")
            + &route("exact", "path = \"/\"\nhost = \"api.example.com\"")),
    );
    assert_eq!(
        hit(&r, "GET", Some("api.example.com"), "/", &[]).as_deref(),
        Some("exact")
    );
    assert_eq!(
        hit(&r, "GET", Some("www.example.com"), "/", &[]).as_deref(),
        Some("wild")
    );
    assert_eq!(
        hit(&r, "GET", Some("other.org"), "/", &[]).as_deref(),
        Some("none")
    );
    assert_eq!(hit(&r, "GET", None, "/", &[]).as_deref(), Some("none"));
}

#[test]
fn host_precedence_beats_path_precedence() {
    let r = router(
        &(route("none-exact", "exact = \"/x\"")
            + &route("host-root", "path = \"/\"\nhost = \"a.example.com\"")),
    );
    assert_eq!(
        hit(&r, "GET", Some("a.example.com"), "/x", &[]).as_deref(),
        Some("host-root")
    );
}

#[test]
fn wildcard_matches_one_or_more_labels_never_the_bare_domain() {
    let r = router(&route("wild", "path = \"/\"\nhost = \"*.example.com\""));
    assert_eq!(
        hit(&r, "GET", Some("a.example.com"), "/", &[]).as_deref(),
        Some("wild")
    );
    assert_eq!(
        hit(&r, "GET", Some("a.b.example.com"), "/", &[]).as_deref(),
        Some("wild")
    );
    assert_eq!(hit(&r, "GET", Some("example.com"), "/", &[]), None);
    assert_eq!(hit(&r, "GET", Some("badexample.com"), "/", &[]), None);
}

#[test]
fn longer_wildcard_beats_shorter() {
    let r = router(
        &(route("short", "path = \"/\"\nhost = \"*.example.com\"")
            + &route("long", "path = \"/\"\nhost = \"*.api.example.com\"")),
    );
    assert_eq!(
        hit(&r, "GET", Some("v1.api.example.com"), "/", &[]).as_deref(),
        Some("long")
    );
    assert_eq!(
        hit(&r, "GET", Some("www.example.com"), "/", &[]).as_deref(),
        Some("short")
    );
}

#[test]
fn host_in_config_is_case_insensitive() {
    let r = router(&route("h", "path = \"/\"\nhost = \"API.Example.com\""));
    assert_eq!(
        hit(&r, "GET", Some("api.example.com"), "/", &[]).as_deref(),
        Some("h")
    );
}

#[test]
fn method_predicate_beats_none_regardless_of_order() {
    let r = router(
        &(route("any", "path = \"/u\"") + &route("post", "path = \"/u\"\nmethods = [\"POST\"]")),
    );
    assert_eq!(hit(&r, "POST", None, "/u", &[]).as_deref(), Some("post"));
    assert_eq!(hit(&r, "GET", None, "/u", &[]).as_deref(), Some("any"));
}

#[test]
fn head_does_not_match_a_get_only_route() {
    let r = router(&route("get", "path = \"/u\"\nmethods = [\"GET\"]"));
    assert_eq!(hit(&r, "GET", None, "/u", &[]).as_deref(), Some("get"));
    assert_eq!(hit(&r, "HEAD", None, "/u", &[]), None);
}

#[test]
fn more_headers_beat_fewer() {
    let r = router(
        &(route("one", "path = \"/u\"\nheaders = { x-a = \"1\" }")
            + &route(
                "two",
                "path = \"/u\"\nheaders = { x-a = \"1\", x-b = \"2\" }",
            )),
    );
    assert_eq!(
        hit(&r, "GET", None, "/u", &[("x-a", "1"), ("x-b", "2")]).as_deref(),
        Some("two")
    );
    assert_eq!(
        hit(&r, "GET", None, "/u", &[("x-a", "1")]).as_deref(),
        Some("one")
    );
    assert_eq!(hit(&r, "GET", None, "/u", &[("x-a", "2")]), None);
}

#[test]
fn header_names_are_case_insensitive_values_exact() {
    let r = router(&route(
        "h",
        "path = \"/u\"\nheaders = { X-Api-Version = \"2\" }",
    ));
    assert_eq!(
        hit(&r, "GET", None, "/u", &[("x-api-version", "2")]).as_deref(),
        Some("h")
    );
    assert_eq!(hit(&r, "GET", None, "/u", &[("x-api-version", "2 ")]), None);
}

#[test]
fn more_query_predicates_beat_fewer_first_value_counts() {
    let r = router(
        &(route("plain", "path = \"/u\"")
            + &route("v2", "path = \"/u\"\nquery = { version = \"2\" }")),
    );
    assert_eq!(get(&r, "/u?version=2").as_deref(), Some("v2"));
    assert_eq!(get(&r, "/u?version=%32").as_deref(), Some("v2"));
    assert_eq!(get(&r, "/u?version=1&version=2").as_deref(), Some("plain"));
    assert_eq!(get(&r, "/u").as_deref(), Some("plain"));
}

#[test]
fn file_order_breaks_ties() {
    let r = router(
        &(route("first", "path = \"/u\"\nheaders = { x-a = \"1\" }")
            + &route("second", "path = \"/u\"\nheaders = { x-b = \"1\" }")),
    );
    assert_eq!(
        hit(&r, "GET", None, "/u", &[("x-a", "1"), ("x-b", "1")]).as_deref(),
        Some("first")
    );
    assert_eq!(
        hit(&r, "GET", None, "/u", &[("x-b", "1")]).as_deref(),
        Some("second")
    );
}

#[test]
fn failed_predicates_fall_back_to_shorter_prefix_then_other_hosts() {
    let r = router(
        &(route(
            "users-post",
            "path = \"/api/users\"\nmethods = [\"POST\"]\nhost = \"a.example.com\"",
        ) + &route(
            "api-host",
            "path = \"/api\"\nhost = \"a.example.com\"\nheaders = { x-k = \"1\" }",
        ) + &route("fallback", "path = \"/api\"")),
    );
    assert_eq!(
        hit(&r, "POST", Some("a.example.com"), "/api/users", &[]).as_deref(),
        Some("users-post")
    );
    assert_eq!(
        hit(
            &r,
            "GET",
            Some("a.example.com"),
            "/api/users",
            &[("x-k", "1")]
        )
        .as_deref(),
        Some("api-host")
    );
    assert_eq!(
        hit(&r, "GET", Some("a.example.com"), "/api/users", &[]).as_deref(),
        Some("fallback")
    );
}

#[test]
fn no_candidate_left_is_none_not_method_not_allowed() {
    let r = router(&route("get", "path = \"/u\"\nmethods = [\"GET\"]"));
    assert_eq!(hit(&r, "DELETE", None, "/u", &[]), None);
}

#[test]
fn paths_are_case_sensitive() {
    let r = router(&route("u", "path = \"/Users\""));
    assert_eq!(get(&r, "/Users").as_deref(), Some("u"));
    assert_eq!(get(&r, "/users"), None);
}

#[test]
fn explain_lists_rejected_candidates_in_order() {
    let r = router(
        &(route("post", "path = \"/u\"\nmethods = [\"POST\"]") + &route("root", "path = \"/\"")),
    );
    let h = HeaderMap::new();
    let info = RequestInfo {
        method: &Method::GET,
        host: None,
        path: "/u/1",
        query: None,
        headers: &h,
    };
    let steps = r.explain(&info);
    let names: Vec<_> = steps
        .iter()
        .map(|(id, res)| (r.routes()[*id].name.as_str(), res.is_ok()))
        .collect();
    assert_eq!(names, [("post", false), ("root", true)]);
    assert_eq!(steps[0].1, Err(Rejection::Method));
}
