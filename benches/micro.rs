//! Microbenchmarks of the hot path's pure parts (`cargo bench --bench micro`):
//! route match at 10 / 1,000 / 10,000 routes, path normalisation, header processing,
//! building the table of a 10,000-route config (parse + validate + compile), and the
//! cost of auth per request: verifying an RS256 / ES256 token (every check, and a hit
//! in the verified-token cache) and minting the EdDSA identity token (keys from
//! `tests/fixtures/auth/`).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use switchyard::config;
use switchyard::http::headers::{GatewayFields, remove_hop_by_hop};
use switchyard::http::normalize::normalize_path;
use switchyard::router::{RequestInfo, Router};

/// A table of `n` routes over 10 services: prefixes, exact paths, some hosts and
/// method/header predicates, like a real table grown over years.
fn table(n: usize) -> String {
    let mut s = String::from("[listen]\nhttp = \"127.0.0.1:0\"\n");
    for i in 0..10 {
        s.push_str(&format!(
            "[services.svc{i}]\nendpoints = [\"127.0.0.1:{}\"]\n",
            9000 + i
        ));
    }
    for i in 0..n {
        let svc = i % 10;
        s.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nservice = \"svc{svc}\"\n"
        ));
        match i % 5 {
            0 => s.push_str(&format!("exact = \"/team{}/status/{i}\"\n", i % 97)),
            1 => s.push_str(&format!(
                "path = \"/team{}/api/v{}/items{i}\"\nmethods = [\"GET\"]\n",
                i % 97,
                i % 3
            )),
            2 => s.push_str(&format!(
                "path = \"/team{}/api/v{}/things{i}\"\nhost = \"h{}.example.com\"\n",
                i % 97,
                i % 3,
                i % 13
            )),
            3 => s.push_str(&format!(
                "path = \"/team{}/api/v{}/misc{i}\"\nheaders = {{ x-v = \"{}\" }}\n",
                i % 97,
                i % 3,
                i % 2
            )),
            _ => s.push_str(&format!("path = \"/team{}/svc{i}\"\n", i % 97)),
        }
    }
    s
}

fn route_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for n in [10usize, 1_000, 10_000] {
        let loaded = config::parse(&table(n)).expect("valid table");
        let router = Router::new(&loaded.config);
        // A request for a route in the middle of the table, with a longer path.
        let i = (n / 2) / 5 * 5 + 4;
        let path = format!("/team{}/svc{i}/orders/12345", i % 97);
        let headers = HeaderMap::new();
        group.bench_with_input(BenchmarkId::from_parameter(n), &path, |b, path| {
            b.iter(|| {
                let info = RequestInfo {
                    method: &Method::GET,
                    host: Some("api.example.com"),
                    path: black_box(path),
                    query: None,
                    headers: &headers,
                };
                black_box(router.find(&info).map(|(id, _)| id))
            })
        });
    }
    group.finish();
}

fn normalisation(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize_path");
    group.bench_function("canonical", |b| {
        b.iter(|| normalize_path(black_box("/api/users/12345/orders")))
    });
    group.bench_function("dirty", |b| {
        b.iter(|| normalize_path(black_box("/api//users/./12345/../%7Eorders/%2e%2e/x%2Fy")))
    });
    group.finish();
}

fn header_processing(c: &mut Criterion) {
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "203.0.113.7"),
        ("cookie", "session=abcdef0123456789"),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    let peer = HeaderValue::from_static("198.51.100.4");
    let host = HeaderValue::from_static("api.example.com");
    c.bench_function("headers/upstream_request", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                remove_hop_by_hop(&mut h);
                let added = GatewayFields::forwarding(&mut h, &peer, false, "http", Some(&host));
                (h, added)
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn config_build(c: &mut Criterion) {
    let src = table(10_000);
    let mut group = c.benchmark_group("config_build");
    group.sample_size(10);
    group.bench_function("10000_routes", |b| {
        b.iter(|| {
            let loaded = config::parse(black_box(&src)).expect("valid");
            black_box(Router::new(&loaded.config))
        })
    });
    group.finish();
}

/// The fixed test key `file` under `tests/fixtures/auth/`.
fn fixture(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(file)
}

fn auth(c: &mut Criterion) {
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use switchyard::auth::{Auth, Registry};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let key = |file: &str, alg: Algorithm| {
        let pem = std::fs::read(fixture(file)).expect("fixture");
        match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            _ => EncodingKey::from_ec_pem(&pem),
        }
        .expect("key")
    };
    let jwk = |file: &str, alg: Algorithm, kid: &str| {
        let mut j = Jwk::from_encoding_key(&key(file, alg), alg).expect("jwk");
        j.common.key_id = Some(kid.into());
        j
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    let set = serde_json::json!({ "keys": [
        jwk("rsa.pem", Algorithm::RS256, "rsa-1"),
        jwk("ec.pem", Algorithm::ES256, "ec-1"),
    ]});
    std::fs::write(&jwks, set.to_string()).expect("write jwks");
    let src = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[services.s]\nendpoints = [\"127.0.0.1:1\"]\n\
         [auth.user]\nissuer = \"idp\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\", \"ES256\"]\n\
         jwks = \"file:{}\"\nforward_claims = {{ sub = \"x-user-id\" }}\n\
         [identity]\nkey = \"{}\"\nalgorithm = \"EdDSA\"\nkid = \"gw\"\nclaims = [\"email\"]\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\nauth = \"user\"\n",
        jwks.display(),
        fixture("ed.pem").display()
    );
    let loaded = config::parse(&src).unwrap_or_else(|e| panic!("{}", e.render("bench", &src)));
    let built = rt.block_on(Auth::build(&loaded.config, &Registry::default()));
    let policy = &built.policies[0];
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "iss": "idp", "aud": "api", "sub": "alice", "email": "alice@example.com",
        "exp": now + 3600, "iat": now,
    });
    let mut group = c.benchmark_group("auth");
    for (alg, file, kid) in [
        (Algorithm::RS256, "rsa.pem", "rsa-1"),
        (Algorithm::ES256, "ec.pem", "ec-1"),
    ] {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        let token = jsonwebtoken::encode(&h, &claims, &key(file, alg)).expect("sign");
        assert!(
            rt.block_on(policy.verify(&token)).is_ok(),
            "{alg:?} verifies"
        );
        group.bench_function(format!("verify_{alg:?}"), |b| {
            b.iter(|| rt.block_on(policy.verify_uncached(black_box(&token))))
        });
        group.bench_function(format!("verify_{alg:?}_cached"), |b| {
            b.iter(|| rt.block_on(policy.verify(black_box(&token))))
        });
    }
    let user = claims.as_object().expect("object").clone();
    let minter = built.minter.as_ref().expect("identity");
    group.bench_function("mint_EdDSA", |b| {
        b.iter(|| minter.mint(black_box(&user), "orders"))
    });
    let shared = std::sync::Arc::new(user.clone());
    let service: std::sync::Arc<str> = "orders".into();
    group.bench_function("mint_EdDSA_reused", |b| {
        b.iter(|| minter.token_for(black_box(&shared), &service))
    });
    group.finish();
}

criterion_group!(
    benches,
    route_match,
    normalisation,
    header_processing,
    config_build,
    auth
);
criterion_main!(benches);
