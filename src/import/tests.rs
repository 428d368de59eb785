//! Translation unit tests: each case checks the produced table validates and carries
//! the expected lines, and that what is not translated is reported.

use std::path::Path;

use super::*;

fn imp(src: &str) -> Import {
    let tree = parse::parse_str(src, Path::new("n.conf")).expect("parses");
    let out = translate(&tree, "n.conf");
    if let Err(e) = crate::config::parse(&out.toml) {
        panic!("invalid table:\n{}\n{}", out.toml, e.render("t", &out.toml));
    }
    out
}

fn has(out: &Import, line: &str) {
    assert!(
        out.toml.lines().any(|l| l == line),
        "missing line `{line}` in:\n{}\nnotes:\n{}",
        out.toml,
        out.notes.join("\n")
    );
}

fn noted(out: &Import, needle: &str) {
    assert!(
        out.notes.iter().any(|n| n.contains(needle)),
        "no note containing `{needle}`:\n{}",
        out.notes.join("\n")
    );
}

#[test]
fn proxy_pass_uri_replaces_the_location_prefix() {
    let out = imp(
        "server { listen 8080; server_name a.example.com;\n location /api/ { proxy_pass http://10.0.0.1:9000/v2/; }\n}\n",
    );
    has(&out, "http = \"0.0.0.0:8080\"   # from n.conf:1");
    has(&out, "[services.10-0-0-1-9000]");
    has(&out, "# from n.conf:2");
    has(&out, "path = \"/api/\"");
    has(
        &out,
        "rewrite = { prefix = \"/v2/\", host = \"10.0.0.1:9000\" }",
    );
    // a.example.com is the only (so the default) server: host-less route.
    assert!(
        !out.toml.contains("host = \"a.example.com\""),
        "{}",
        out.toml
    );
}

#[test]
fn proxy_pass_without_uri_keeps_the_path() {
    let out = imp(
        "upstream b { server 127.0.0.1:1; }\nserver { location / { proxy_pass http://b; proxy_set_header Host $host; } }",
    );
    has(&out, "service = \"b\"");
    assert!(!out.toml.contains("rewrite"), "{}", out.toml);
    noted(&out, "passes the client's Host unchanged");
}

#[test]
fn slash_mismatches_are_reported() {
    let out = imp(
        "server { location /a/ { proxy_pass http://h:1/v2; }\n location /b { proxy_pass http://h:1/v3/; }\n location /c { proxy_pass http://h:1/v4; } }",
    );
    noted(
        &out,
        "n.conf:1: note: `proxy_pass http://h:1/v2`: nginx maps `/a/x` to `/v2x`",
    );
    noted(
        &out,
        "n.conf:2: note: `proxy_pass http://h:1/v3/`: nginx maps `/b/x` to `/v3//x`",
    );
    noted(
        &out,
        "n.conf:3: note: `location /c`: nginx also matches paths that merely start with `/c`",
    );
}

#[test]
fn exact_location_with_uri_replaces_the_whole_path() {
    let out = imp("server { location = /login { proxy_pass http://h:1/auth/login; } }");
    has(&out, "exact = \"/login\"");
    has(&out, "rewrite = { path = \"/auth/login\", host = \"h:1\" }");
}

#[test]
fn equal_weights_one_service_unequal_weights_split() {
    let out = imp(concat!(
        "http { upstream eq { server 10.0.0.1:80; server 10.0.0.2:80 weight=1; }\n",
        "upstream uneq { server 10.0.0.3:80 weight=3; server 10.0.0.4:80; server 10.0.0.5 backup; }\n",
        "server { location /a/ { proxy_pass http://eq; } location /b/ { proxy_pass http://uneq; } } }\n"
    ));
    has(&out, "endpoints = [\"10.0.0.1:80\", \"10.0.0.2:80\"]");
    has(
        &out,
        "split = [{ service = \"uneq-1\", weight = 3 }, { service = \"uneq-2\", weight = 1 }]",
    );
    noted(&out, "backup servers are not supported");
}

#[test]
fn server_names_become_hosts() {
    let out = imp(concat!(
        "server { listen 80 default_server; location / { proxy_pass http://d:1; } }\n",
        "server { listen 80; server_name api.example.com *.apps.example.com .example.org; location / { proxy_pass http://a:1; } }\n"
    ));
    for h in [
        "api.example.com",
        "*.apps.example.com",
        "example.org",
        "*.example.org",
    ] {
        has(&out, &format!("host = \"{h}\""));
    }
    has(&out, "name = \"default-root\"");
    has(&out, "name = \"wildcard-apps-example-com-root\"");
}

#[test]
fn regex_locations() {
    let out = imp(concat!(
        "server {\n",
        " location ~ ^/api/v1/ { proxy_pass http://a:1; }\n",
        " location ~ ^/health$ { proxy_pass http://a:1; }\n",
        " location ~* \\.(png|jpg)$ { proxy_pass http://a:1; }\n",
        "}\n"
    ));
    has(&out, "path = \"/api/v1/\"");
    has(&out, "exact = \"/health\"");
    noted(
        &out,
        "n.conf:4: not translated: directive `location ~* \\.(png|jpg)$`",
    );
}

#[test]
fn regex_precedence_conflicts_are_not_translated() {
    let out = imp(concat!(
        "server {\n",
        " location /api/v1/users/ { proxy_pass http://a:1; }\n",
        " location ~ ^/api/v1/ { proxy_pass http://b:1; }\n",
        " location ^~ /static/ { proxy_pass http://a:1; }\n",
        " location ~ ^/static/img/ { proxy_pass http://b:1; }\n",
        "}\n"
    ));
    noted(
        &out,
        "n.conf:3: not translated: directive `location ~ ^/api/v1/`: nginx sends the paths of the longer",
    );
    noted(
        &out,
        "n.conf:5: not translated: directive `location ~ ^/static/img/`: `location ^~ /static/`",
    );
}

#[test]
fn returns_become_redirects() {
    let out = imp(concat!(
        "server { listen 80; server_name a.com; return 301 https://$host$request_uri; }\n",
        "server { listen 80; server_name b.com;\n",
        " location /old { return 302 https://new.b.com:8443/landing; }\n",
        " location /x { return 308 /y; }\n",
        " location /z { return 404; }\n",
        "}\n"
    ));
    has(&out, "redirect = { scheme = \"https\", status = 301 }");
    has(
        &out,
        "redirect = { scheme = \"https\", host = \"new.b.com\", port = 8443, path = \"/landing\", status = 302 }",
    );
    has(&out, "redirect = { path = \"/y\", status = 308 }");
    noted(&out, "n.conf:5: not translated: directive `return 404`");
}

#[test]
fn simple_rewrites() {
    let out = imp(concat!(
        "server {\n",
        " location / { rewrite ^/old/(.*)$ /new/$1 break; proxy_pass http://a:1; }\n",
        " location /legacy/ { rewrite ^/legacy/(.*)$ /modern/$1 permanent; }\n",
        " location /p/ { rewrite ^/p/(.*) /q/$1 last; proxy_pass http://a:1; }\n",
        "}\n"
    ));
    has(&out, "path = \"/old/\"");
    has(&out, "rewrite = { prefix = \"/new/\", host = \"a:1\" }");
    has(&out, "redirect = { prefix = \"/modern/\", status = 301 }");
    noted(
        &out,
        "n.conf:4: not translated: directive `rewrite ^/p/(.*) /q/$1 last`",
    );
}

#[test]
fn headers_and_timeouts_follow_nginx_inheritance() {
    let out = imp(concat!(
        "http { proxy_set_header X-Env prod; proxy_read_timeout 90;\n",
        "server {\n",
        " location /a/ { proxy_pass http://a:1; proxy_connect_timeout 500ms; add_header Cache-Control no-store; }\n",
        " location /b/ { proxy_pass http://b:1; proxy_set_header X-Team b; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Real-IP $remote_addr; proxy_set_header Accept-Encoding \"\"; proxy_read_timeout 1m30s; }\n",
        "} }\n"
    ));
    has(&out, "request_headers = { set = { \"x-env\" = \"prod\" } }");
    has(&out, "connect_timeout = \"500ms\"   # from n.conf:3");
    has(
        &out,
        "response_headers = { add = { \"cache-control\" = \"no-store\" } }",
    );
    has(&out, "timeout = \"90s\"");
    has(
        &out,
        "request_headers = { set = { \"x-team\" = \"b\" }, remove = [\"accept-encoding\"] }",
    );
    noted(
        &out,
        "X-Forwarded-For $proxy_add_x_forwarded_for`: the gateway sets the forwarding headers",
    );
    noted(&out, "X-Real-IP $remote_addr`: the value uses variables");
}

#[test]
fn unsupported_directives_are_listed_with_file_and_line() {
    let out = imp(concat!(
        "worker_processes 2;\nevents { }\nhttp {\n client_max_body_size 10m;\n",
        " server { listen 443 ssl; ssl_certificate a.pem; ssl_certificate_key a.key;\n",
        "  location /s/ { root /var/www; } location / { proxy_pass https://x; } }\n}\n"
    ));
    noted(
        &out,
        "n.conf:1: not translated: directive `worker_processes 2`",
    );
    noted(
        &out,
        "n.conf:4: not translated: directive `client_max_body_size 10m`: request body limits are not supported yet",
    );
    noted(
        &out,
        "n.conf:5: not translated: directive `ssl_certificate a.pem`: TLS is not supported yet",
    );
    noted(
        &out,
        "n.conf:5: note: `listen 443 ssl`: TLS is not supported yet",
    );
    noted(
        &out,
        "n.conf:6: not translated: directive `location /s/`: no `proxy_pass`",
    );
    noted(
        &out,
        "n.conf:6: not translated: directive `proxy_pass https://x`",
    );
}

#[test]
fn servers_on_other_ports_share_the_listen_and_duplicates_are_skipped() {
    let out = imp(concat!(
        "server { listen 80; server_name a.com; location / { proxy_pass http://a:1; } }\n",
        "server { listen 8080; server_name a.com; location / { proxy_pass http://b:1; } }\n"
    ));
    noted(
        &out,
        "n.conf:2: note: `listen 8080`: the gateway has one listen address",
    );
    noted(
        &out,
        "n.conf:2: not translated: directive `location /`: route `default-root` (from n.conf:1)",
    );
}

#[test]
fn route_names_are_unique_and_valid() {
    let out = imp(
        "server { location /a_b/ { proxy_pass http://a:1; } location /a-b { proxy_pass http://a:1; } }",
    );
    has(&out, "name = \"default-a-b\"");
    has(&out, "name = \"default-a-b-2\"");
}

#[test]
fn helpers() {
    assert_eq!(nginx_duration("1m30s"), Some(90_000));
    assert_eq!(nginx_duration("250ms"), Some(250));
    assert_eq!(nginx_duration("5"), Some(5000));
    assert_eq!(nginx_duration("5x"), None);
    assert_eq!(nginx_duration("ms"), None);
    assert_eq!(slug("*.Ex_ample.com/"), "ex-ample-com");
    assert_eq!(q("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    assert_eq!(with_default_port("h"), "h:80");
    assert_eq!(with_default_port("h:81"), "h:81");
    assert_eq!(with_default_port("[::1]"), "[::1]:80");
    assert_eq!(listen_addr("[::]:80").as_deref(), Some("[::]:80"));
    assert_eq!(listen_addr("unix:/x"), None);
    assert_eq!(
        rewrite_prefixes("^/a\\.b/(.*)$", "/c/$1"),
        Some(("/a.b/".into(), "/c/".into()))
    );
    assert_eq!(rewrite_prefixes("^/a/(.*)$", "/c/$1?x"), None);
    assert_eq!(regex_as_path("^/a.b/", false), None);
}

#[test]
fn unknown_directives_are_errors_with_a_hint() {
    let tree = parse::parse_str(
        "http {\n types { text/html html; }\n server {\n  location / { proxy_pas http://a; }\n }\n}\n",
        Path::new("n.conf"),
    )
    .unwrap();
    let e = check_known(&tree).unwrap_err();
    assert_eq!(
        e.to_string(),
        "n.conf:4: error: unknown directive `proxy_pas` (did you mean `proxy_pass`?)"
    );
}

#[test]
fn a_proxied_location_with_a_slash_redirects_the_bare_path_like_nginx() {
    let out = imp(
        "server {\n location /api/ { proxy_pass http://a:1; }\n location /b/ { proxy_pass http://a:1; }\n location = /b { proxy_pass http://a:1; }\n location /c/ { return 301 /x; }\n}\n",
    );
    has(&out, "name = \"default-api-exact\"");
    has(&out, "redirect = { path = \"/api/\", status = 301 }");
    assert!(!out.toml.contains("path = \"/b/\", status"), "{}", out.toml);
    assert!(!out.toml.contains("path = \"/c/\", status"), "{}", out.toml);
    noted(
        &out,
        "n.conf:5: note: `return 301 /x`: the gateway appends the request's query string",
    );
}

#[test]
fn bare_paths_of_slash_routes_go_where_nginx_sends_them() {
    let out = imp(concat!(
        "server {\n",
        " location / { proxy_pass http://a:1/app/; }\n",
        " location /blog/ { return 302 https://blog.example.com/; }\n",
        " location ~ ^/api/v1/ { proxy_pass http://b:1; }\n",
        " location ~ ^/im(g|ages)/ { proxy_pass http://b:1; }\n",
        " location /img/ { return 301 /images/; }\n",
        "}\n"
    ));
    // `/blog` and `/api/v1` are answered by `location /` in nginx.
    has(
        &out,
        "# from n.conf:3 (nginx answers `/blog` from the location at n.conf:2)",
    );
    has(&out, "exact = \"/blog\"");
    has(&out, "rewrite = { path = \"/app/blog\", host = \"a:1\" }");
    has(&out, "exact = \"/api/v1\"");
    has(&out, "rewrite = { path = \"/app/api/v1\", host = \"a:1\" }");
    // `/img` may match the earlier regex, which is not evaluated: reported.
    noted(
        &out,
        "n.conf:6: note: `location /img/`: the regular-expression location at n.conf:5 may answer `/img`",
    );
}

#[test]
fn a_bare_path_without_any_nginx_location_is_reported() {
    let out = imp("server { location /blog/ { return 302 https://blog.example.com/; } }");
    noted(&out, "nginx has no location for `/blog`");
}

/// Random nginx configurations built from the pieces the translator knows (and some
/// it does not): whatever it makes of them must be a table that `config::parse`
/// accepts, and nothing may panic.
#[test]
fn random_configurations_always_give_a_valid_table() {
    const NAMES: [&str; 8] = [
        "a.example.com",
        "*.example.com",
        ".example.org",
        "_",
        "\"\"",
        "~^x\\.example$",
        "www.*",
        "B.Example.COM",
    ];
    const PATHS: [&str; 12] = [
        "/", "/api", "/api/", "/api/v1/", "/a_b", "/x.y", "/%41", "/a//b", "/u/{id}", "/ü",
        "/api/v1", "/static/",
    ];
    const MODS: [&str; 6] = ["", "=", "^~", "~", "~*", "@"];
    const BODIES: [&str; 18] = [
        "proxy_pass http://up;",
        "proxy_pass http://up/v2/;",
        "proxy_pass http://up/v2;",
        "proxy_pass http://10.0.0.9:81;",
        "proxy_pass http://10.0.0.9:81/;",
        "proxy_pass https://up;",
        "proxy_pass http://$host;",
        "proxy_pass http://bad_host:1;",
        "return 301 https://$host$request_uri;",
        "return 302 /moved;",
        "return 404;",
        "rewrite ^/api/(.*)$ /new/$1 break; proxy_pass http://up;",
        "rewrite ^/api/(.*)$ /new/$1 permanent;",
        "proxy_set_header X-A b; proxy_set_header Host h.example; add_header X-B c;",
        "proxy_set_header Host $proxy_host; proxy_read_timeout 1m30s;",
        "proxy_connect_timeout 250ms; proxy_pass http://up;",
        "add_header X-B c; add_header X-B d;",
        "root /srv;",
    ];
    let mut rng = fastrand::Rng::with_seed(
        std::env::var("SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7),
    );
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let mut routes = 0;
    for round in 0..rounds {
        let mut src = String::from("http {\n");
        src.push_str("upstream up { server 10.0.0.1:80 weight=2; server 10.0.0.2:80; server 10.0.0.1:80; }\n");
        for _ in 0..rng.usize(1..4) {
            src.push_str("server {\n");
            src.push_str(&format!(
                "listen {}{};\n",
                ["80", "8080", "127.0.0.1:81", "443 ssl"][rng.usize(0..4)],
                if rng.bool() { " default_server" } else { "" }
            ));
            if rng.bool() {
                src.push_str(&format!(
                    "server_name {};\n",
                    NAMES[rng.usize(0..NAMES.len())]
                ));
            }
            if rng.u8(0..8) == 0 {
                src.push_str("return 301 https://$host$request_uri;\n");
            }
            if rng.u8(0..8) == 0 {
                src.push_str("rewrite ^/old/(.*)$ /new/$1 permanent;\n");
            }
            for _ in 0..rng.usize(0..6) {
                let m = MODS[rng.usize(0..MODS.len())];
                let p = PATHS[rng.usize(0..PATHS.len())];
                let p = if m.starts_with('~') {
                    format!("\"^{p}\"")
                } else {
                    format!("\"{p}\"")
                };
                src.push_str(&format!(
                    "location {m} {p} {{ {} }}\n",
                    BODIES[rng.usize(0..BODIES.len())]
                ));
            }
            src.push_str("}\n");
        }
        src.push_str("}\n");
        let Ok(tree) = parse::parse_str(&src, Path::new("r.conf")) else {
            continue;
        };
        let out = translate(&tree, "r.conf");
        routes += out.toml.matches("[[routes]]").count();
        if let Err(e) = crate::config::parse(&out.toml) {
            panic!(
                "round {round}: invalid table\n--- nginx\n{src}\n--- table\n{}\n--- errors\n{}",
                out.toml,
                e.render("t", &out.toml)
            );
        }
    }
    assert!(
        routes > rounds,
        "the generator should produce routes ({routes})"
    );
}
