//! JWT verification at the edge, identity headers, JWKS fetching, internal callers and
//! the gateway-minted identity. Tokens are signed here with the fixed test keys in
//! `tests/fixtures/auth/`; JWKS documents are served over HTTP (and HTTPS, with a test
//! CA) on loopback.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

use crate::support::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(name)
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

fn encoding_key(file: &str, alg: Algorithm) -> EncodingKey {
    let pem = pem(file);
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        other => panic!("no fixture for {other:?}"),
    }
    .expect("fixture key")
}

/// The public JWK of a fixture private key.
fn jwk(file: &str, alg: Algorithm, kid: &str) -> Value {
    let mut j = Jwk::from_encoding_key(&encoding_key(file, alg), alg).expect("jwk");
    j.common.key_id = Some(kid.to_string());
    serde_json::to_value(j).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims that pass the `user-jwt` policy below, with `extra` merged in.
fn claims(extra: Value) -> Value {
    let mut c = json!({
        "iss": "https://idp.example.com",
        "aud": "api",
        "sub": "alice",
        "email": "alice@example.com",
        "exp": now() + 300,
        "iat": now(),
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn sign(file: &str, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &encoding_key(file, alg)).expect("sign")
}

/// base64url without padding (RFC 7515), for hand-made tokens.
fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A JWKS server whose document can be swapped; `hits()` counts fetches.
async fn jwks_server(doc: Value) -> (Upstream, Arc<Mutex<String>>) {
    let body = Arc::new(Mutex::new(doc.to_string()));
    let b = body.clone();
    let up = Upstream::start(move |_req| {
        let doc = b.lock().unwrap().clone();
        async move { json(&serde_json::from_str(&doc).unwrap()) }
    })
    .await;
    (up, body)
}

/// A gateway with the `user-jwt` policy on `/api` (JWKS from `jwks`), an unprotected
/// `/open`, and `extra` appended.
fn gateway(jwks: &str, up: &Upstream, policy_extra: &str, extra: &str) -> Gateway {
    Gateway::start(&gateway_config(jwks, up, policy_extra, extra))
}

/// The config of [`gateway`].
fn gateway_config(jwks: &str, up: &Upstream, policy_extra: &str, extra: &str) -> String {
    config(&format!(
        "[server]\naccess_log = \"off\"\n\
         [services.s]\nendpoints = [{}]\n\
         [auth.user-jwt]\nissuer = \"https://idp.example.com\"\naudiences = [\"api\"]\n\
         algorithms = [\"RS256\", \"ES256\"]\njwks = \"{jwks}\"\nleeway = \"5s\"\n\
         cookie = \"session\"\n\
         forward_claims = {{ sub = \"x-user-id\", email = \"x-user-email\" }}\n{policy_extra}\n\
         [[routes]]\nname = \"api\"\npath = \"/api\"\nservice = \"s\"\nauth = \"user-jwt\"\n\
         [[routes]]\nname = \"open\"\npath = \"/open\"\nservice = \"s\"\n{extra}",
        up.endpoint()
    ))
}

fn two_key_jwks() -> Value {
    json!({ "keys": [
        jwk("rsa.pem", Algorithm::RS256, "rsa-1"),
        jwk("ec.pem", Algorithm::ES256, "ec-1"),
    ]})
}

async fn call(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = http::Request::get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(empty()).unwrap()).await
}

async fn with_token(gw: &Gateway, path: &str, token: &str) -> Answer {
    call(gw, path, &[("authorization", &format!("Bearer {token}"))]).await
}

fn assert_401(a: &Answer, what: &str) {
    assert_eq!(
        a.status,
        401,
        "{what}: {:?}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["error"], "invalid_token", "{what}");
    assert_eq!(
        a.headers["www-authenticate"], "Bearer error=\"invalid_token\"",
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_rs256_and_es256_tokens_pass_and_the_upstream_sees_the_user() {
    let (jwks, _) = jwks_server(two_key_jwks()).await;
    let up = Upstream::echo("s").await;
    let gw = gateway(&format!("http://{}/jwks.json", jwks.addr), &up, "", "");

    let rs = sign(
        "rsa.pem",
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(json!({})),
    );
    let a = with_token(&gw, "/api/orders", &rs).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.json()["headers"]["x-user-id"], "alice");
    assert_eq!(a.json()["headers"]["x-user-email"], "alice@example.com");

    let es = sign(
        "ec.pem",
        Algorithm::ES256,
        Some("ec-1"),
        &claims(json!({"sub": "bob"})),
    );
    let a = call(
        &gw,
        "/api/orders",
        &[
            ("authorization", &format!("Bearer {es}")),
            // A spoofed identity next to a valid token: the token's wins.
            ("x-user-id", "mallory"),
        ],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["headers"]["x-user-id"], "bob");

    // The token in the policy's cookie.
    let a = call(&gw, "/api/x", &[("cookie", &format!("a=b; session={es}"))]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["headers"]["x-user-id"], "bob");

    // No token: 401 without an error code (RFC 6750 3.1); the upstream never sees it.
    let hits = up.hits();
    let a = call(&gw, "/api/orders", &[("x-user-id", "mallory")]).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["error"], "missing_token");
    assert_eq!(a.headers["www-authenticate"], "Bearer");
    assert_eq!(up.hits(), hits);

    // A route without auth: client-sent identity headers are removed all the same.
    let a = call(
        &gw,
        "/open",
        &[("x-user-id", "mallory"), ("x-user-email", "m@evil")],
    )
    .await;
    assert_eq!(a.status, 200);
    let headers = &a.json()["headers"];
    assert!(headers.get("x-user-id").is_none(), "{headers}");
    assert!(headers.get("x-user-email").is_none(), "{headers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_never_5xx() {
    let (jwks, _) = jwks_server(two_key_jwks()).await;
    let up = Upstream::echo("s").await;
    let gw = gateway(&format!("http://{}/jwks.json", jwks.addr), &up, "", "");
    let rs = |c: Value| sign("rsa.pem", Algorithm::RS256, Some("rsa-1"), &c);
    let good = rs(claims(json!({})));
    assert_eq!(b64(b"hello?"), "aGVsbG8_");

    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
        b64(claims(json!({})).to_string().as_bytes())
    );
    // HS256 with the RSA public key (its PEM bytes) as the HMAC secret.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &h,
        &claims(json!({})),
        &EncodingKey::from_secret(&pem("rsa.pub.pem")).unwrap(),
    )
    .unwrap();
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[2] = b64(b"not the signature of this token, not at all, no");
    let bad_signature = parts.join(".");
    // Claims of another user under alice's signature.
    let mut swapped: Vec<String> = good.split('.').map(str::to_string).collect();
    swapped[1] = b64(claims(json!({"sub": "mallory"})).to_string().as_bytes());
    let swapped = swapped.join(".");
    let cases: Vec<(&str, String)> = vec![
        ("alg none", alg_none),
        ("HS256 with the RSA public key as secret", confused),
        ("expired", rs(claims(json!({"exp": now() - 60})))),
        ("not yet valid", rs(claims(json!({"nbf": now() + 600})))),
        (
            "wrong iss",
            rs(claims(json!({"iss": "https://evil.example.com"}))),
        ),
        ("wrong aud", rs(claims(json!({"aud": "other"})))),
        ("no exp", {
            let mut c = claims(json!({}));
            c.as_object_mut().unwrap().remove("exp");
            rs(c)
        }),
        ("bad signature", bad_signature),
        ("swapped claims", swapped),
        (
            "unknown kid",
            sign(
                "rsa.pem",
                Algorithm::RS256,
                Some("nope"),
                &claims(json!({})),
            ),
        ),
        (
            "ES256 token with the RSA key's kid",
            sign(
                "ec.pem",
                Algorithm::ES256,
                Some("rsa-1"),
                &claims(json!({})),
            ),
        ),
        ("malformed base64", "e!!.y$$.z%%".to_string()),
        ("not a JWT", "hello".to_string()),
        ("9 KiB token", format!("{good}{}", "A".repeat(9 * 1024))),
    ];
    for (what, token) in &cases {
        let a = with_token(&gw, "/api/x", token).await;
        assert_401(&a, what);
    }
    // 1 MiB: refused as too large a header (431) before auth runs, or 401.
    let huge = format!("{good}{}", "A".repeat(1 << 20));
    let answer = raw(
        gw.addr,
        format!("GET /api/x HTTP/1.1\r\nhost: a\r\nauthorization: Bearer {huge}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431") || answer.starts_with("HTTP/1.1 401"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    // And the gateway is alive and well.
    let a = with_token(&gw, "/api/x", &good).await;
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_refetches_once_and_random_kids_cause_no_storm() {
    let (jwks, doc) = jwks_server(json!({ "keys": [jwk("ec.pem", Algorithm::ES256, "k1")] })).await;
    let up = Upstream::echo("s").await;
    let gw = gateway(
        &format!("http://{}/jwks.json", jwks.addr),
        &up,
        "refresh_interval = \"1h\"\nrefetch_interval = \"1s\"",
        "",
    );
    let initial = jwks.hits();
    assert_eq!(initial, 1, "one fetch at start");
    let t1 = sign("ec.pem", Algorithm::ES256, Some("k1"), &claims(json!({})));
    assert_eq!(with_token(&gw, "/api", &t1).await.status, 200);

    // The identity provider rotates to a new key.
    *doc.lock().unwrap() = json!({ "keys": [jwk("ec2.pem", Algorithm::ES256, "k2")] }).to_string();
    let t2 = sign("ec2.pem", Algorithm::ES256, Some("k2"), &claims(json!({})));
    let deadline = Instant::now() + SOON;
    loop {
        // Refused only while the 1 s cooldown after the start-up fetch runs.
        let a = with_token(&gw, "/api", &t2).await;
        if a.status == 200 {
            break;
        }
        assert_401(&a, "new kid before the refetch");
        assert!(Instant::now() < deadline, "the new kid never passed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        jwks.hits(),
        initial + 1,
        "exactly one refetch for the new kid"
    );
    // Tokens of the retired key now fail: the JWKS no longer has it.
    assert_401(&with_token(&gw, "/api", &t1).await, "retired key");

    // 1000 random unknown kids: at most one fetch per refetch interval (1 s).
    let before = jwks.hits();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..20 {
        let url = gw.url("/api");
        tasks.push(tokio::spawn(async move {
            let c = client();
            for i in 0..50 {
                let kid = format!("random-{worker}-{i}-{}", fastrand::u64(..));
                let t = sign("ec2.pem", Algorithm::ES256, Some(&kid), &claims(json!({})));
                let req = http::Request::get(&url)
                    .header("authorization", format!("Bearer {t}"))
                    .body(empty())
                    .unwrap();
                let a = send(&c, req).await;
                assert_eq!(a.status, 401);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let fetches = jwks.hits() - before;
    let bound = secs.ceil() as usize + 1;
    assert!(
        fetches <= bound,
        "{fetches} JWKS fetches for 1000 random kids in {secs:.1}s (bound {bound})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_keep_working_when_the_jwks_server_is_down() {
    let (jwks, _) = jwks_server(two_key_jwks()).await;
    let up = Upstream::echo("s").await;
    let mut gw = gateway(
        &format!("http://{}/jwks.json", jwks.addr),
        &up,
        "refresh_interval = \"1s\"\nrefetch_interval = \"1s\"",
        "",
    );
    let token = sign(
        "rsa.pem",
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(json!({})),
    );
    assert_eq!(with_token(&gw, "/api", &token).await.status, 200);
    jwks.kill();
    // Wait until a background refresh has failed, then the cached key still works.
    gw.wait_log("jwks fetch failed; keeping the cached keys");
    assert_eq!(with_token(&gw, "/api", &token).await.status, 200);
    let unknown = sign(
        "rsa.pem",
        Algorithm::RS256,
        Some("other"),
        &claims(json!({})),
    );
    assert_401(
        &with_token(&gw, "/api", &unknown).await,
        "unknown kid, source down",
    );
    assert_eq!(with_token(&gw, "/api", &token).await.status, 200);
}

/// A JWKS served over HTTPS on 127.0.0.1 with a certificate of a test CA: `(server,
/// CA)`.
async fn https_jwks_server(doc: Value) -> (Upstream, crate::tls::TestCert) {
    let (ca, leaf) = crate::tls::make_ca_and_leaf(&["127.0.0.1"]);
    let body = doc.to_string();
    let up = Upstream::start_tls(crate::h2::server_config(&leaf, None), move |_req| {
        let doc = body.clone();
        async move { json(&serde_json::from_str(&doc).unwrap()) }
    })
    .await;
    (up, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_jwks_is_verified_against_jwks_ca() {
    let (jwks, ca) = https_jwks_server(two_key_jwks()).await;
    let up = Upstream::echo("s").await;
    let url = format!("https://{}/jwks.json", jwks.addr);
    // `jwks_ca` is relative to the config file, like every key file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("idp-ca.pem"), &ca.cert_pem).unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        gateway_config(&url, &up, "jwks_ca = \"idp-ca.pem\"", ""),
    )
    .unwrap();
    let gw = Gateway::start_at(&routes);
    assert_eq!(jwks.hits(), 1, "one fetch at start");

    let rs = sign(
        "rsa.pem",
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(json!({})),
    );
    let a = with_token(&gw, "/api/orders", &rs).await;
    assert_eq!(a.status, 200, "{:?}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["headers"]["x-user-id"], "alice");
    let es = sign("ec.pem", Algorithm::ES256, Some("ec-1"), &claims(json!({})));
    assert_eq!(with_token(&gw, "/api/orders", &es).await.status, 200);
    assert_401(
        &with_token(&gw, "/api/orders", "not.a.token").await,
        "bad token over an https JWKS",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_jwks_from_an_untrusted_ca_fails_the_fetch_and_tokens_get_401() {
    let (jwks, _ca) = https_jwks_server(two_key_jwks()).await;
    let up = Upstream::echo("s").await;
    // No `jwks_ca`: the system's roots, which do not know the test CA.
    let gw = gateway(
        &format!("https://{}/jwks.json", jwks.addr),
        &up,
        "refetch_interval = \"1s\"",
        "",
    );
    let deadline = Instant::now() + SOON;
    let failed = loop {
        let line = gw
            .seen
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("jwks fetch failed"))
            .cloned();
        if let Some(line) = line {
            break line;
        }
        assert!(Instant::now() < deadline, "no `jwks fetch failed` log line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(failed.contains(&jwks.addr.to_string()), "{failed}");
    assert!(failed.contains("certificate"), "{failed}");
    // The handshake failed before any request reached the server.
    assert_eq!(jwks.hits(), 0);

    let token = sign(
        "rsa.pem",
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(json!({})),
    );
    for _ in 0..3 {
        assert_401(
            &with_token(&gw, "/api/orders", &token).await,
            "keys never fetched",
        );
    }
    assert_eq!(jwks.hits(), 0);
    // The unprotected route is unaffected.
    assert_eq!(call(&gw, "/open", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_route_admits_listed_services_only() {
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("internal.json");
    std::fs::write(
        &jwks_file,
        json!({ "keys": [jwk("ec.pem", Algorithm::ES256, "svc")] }).to_string(),
    )
    .unwrap();
    let up = Upstream::echo("users").await;
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n[services.users]\nendpoints = [{}]\n\
         [auth.internal]\nissuer = \"mesh\"\naudiences = [\"users\"]\nalgorithms = [\"ES256\"]\n\
         jwks = \"file:{}\"\nallow = [\"orders\", \"billing\"]\n\
         [[routes]]\nname = \"internal\"\npath = \"/internal/users\"\nservice = \"users\"\nauth = \"internal\"\n",
        up.endpoint(),
        jwks_file.display()
    )));
    let token = |c: Value| {
        let mut base = json!({"iss": "mesh", "aud": "users", "exp": now() + 60});
        for (k, v) in c.as_object().unwrap() {
            base[k] = v.clone();
        }
        sign("ec.pem", Algorithm::ES256, Some("svc"), &base)
    };
    let a = with_token(&gw, "/internal/users/7", &token(json!({"sub": "orders"}))).await;
    assert_eq!(a.status, 200);
    // Matched on the `service` claim too.
    let a = with_token(
        &gw,
        "/internal/users/7",
        &token(json!({"sub": "spiffe://x", "service": "billing"})),
    )
    .await;
    assert_eq!(a.status, 200);
    let a = with_token(&gw, "/internal/users/7", &token(json!({"sub": "search"}))).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["error"], "forbidden");
    let a = call(&gw, "/internal/users/7", &[]).await;
    assert_eq!(a.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_required_scope_gets_403() {
    let (jwks, _) = jwks_server(two_key_jwks()).await;
    let up = Upstream::echo("s").await;
    let gw = gateway(
        &format!("http://{}/jwks.json", jwks.addr),
        &up,
        "require = { scope = \"orders:write\" }",
        "",
    );
    let t = |scope: &str| {
        sign(
            "rsa.pem",
            Algorithm::RS256,
            Some("rsa-1"),
            &claims(json!({ "scope": scope })),
        )
    };
    let a = with_token(&gw, "/api", &t("orders:read")).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["error"], "forbidden");
    assert_eq!(
        a.headers["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
    let a = with_token(&gw, "/api", &t("orders:read orders:write")).await;
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_auth_passes_anonymous_requests_but_never_bad_tokens() {
    let (jwks, _) = jwks_server(two_key_jwks()).await;
    let up = Upstream::echo("s").await;
    let gw = gateway(
        &format!("http://{}/jwks.json", jwks.addr),
        &up,
        "required = false",
        "",
    );
    let a = call(&gw, "/api", &[("x-user-id", "mallory")]).await;
    assert_eq!(a.status, 200);
    assert!(a.json()["headers"].get("x-user-id").is_none());
    let expired = sign(
        "rsa.pem",
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(json!({"exp": now() - 60})),
    );
    assert_401(
        &with_token(&gw, "/api", &expired).await,
        "expired, optional",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_with_an_explicit_secret_file() {
    let up = Upstream::echo("s").await;
    let secret_file = fixture("hs.secret");
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n[services.s]\nendpoints = [{}]\n\
         [auth.shared]\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\n\
         forward_claims = {{ sub = \"x-user-id\" }}\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\nauth = \"shared\"\n",
        up.endpoint(),
        secret_file.display()
    )));
    let secret = std::fs::read(&secret_file).unwrap();
    let c = json!({"sub": "carol", "exp": now() + 60});
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(secret.trim_ascii()).unwrap(),
    )
    .unwrap();
    let a = with_token(&gw, "/x", &t).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["headers"]["x-user-id"], "carol");
    // An RS256 token is not accepted by an HS256 policy.
    let rs = sign("rsa.pem", Algorithm::RS256, None, &c);
    assert_401(
        &with_token(&gw, "/x", &rs).await,
        "RS256 on an HS256 policy",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_keyed_by_the_verified_subject() {
    let (jwks, _) = jwks_server(two_key_jwks()).await;
    let up = Upstream::echo("s").await;
    let gw = Gateway::start(&config(&format!(
        "[server]\naccess_log = \"off\"\n[services.s]\nendpoints = [{}]\n\
         [auth.user-jwt]\nissuer = \"https://idp.example.com\"\naudiences = [\"api\"]\n\
         algorithms = [\"RS256\"]\njwks = \"http://{}/jwks.json\"\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\nauth = \"user-jwt\"\n\
         rate_limit = {{ per_second = 1, burst = 1, key = \"jwt:sub\" }}\n",
        up.endpoint(),
        jwks.addr
    )));
    let t = |sub: &str| {
        sign(
            "rsa.pem",
            Algorithm::RS256,
            Some("rsa-1"),
            &claims(json!({ "sub": sub })),
        )
    };
    assert_eq!(with_token(&gw, "/", &t("alice")).await.status, 200);
    assert_eq!(with_token(&gw, "/", &t("alice")).await.status, 429);
    assert_eq!(with_token(&gw, "/", &t("bob")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_identity_verifies_with_the_admin_jwks() {
    let (jwks, _) = jwks_server(two_key_jwks()).await;
    let up = Upstream::echo("s").await;
    let gw = gateway(
        &format!("http://{}/jwks.json", jwks.addr),
        &up,
        "",
        &format!(
            "[identity]\nkey = \"{}\"\nalgorithm = \"EdDSA\"\nkid = \"gw-2\"\nttl = \"60s\"\n\
             claims = [\"email\"]\n\
             previous_keys = [{{ key = \"{}\", kid = \"gw-1\" }}]\n",
            fixture("ed.pem").display(),
            fixture("ed-old.pem").display()
        ),
    );
    let user = sign(
        "rsa.pem",
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(json!({})),
    );
    let a = call(
        &gw,
        "/api/orders",
        &[
            ("authorization", &format!("Bearer {user}")),
            ("x-switchyard-identity", "forged"),
        ],
    )
    .await;
    assert_eq!(a.status, 200);
    let minted = a.json()["headers"]["x-switchyard-identity"]
        .as_str()
        .expect("identity header")
        .to_string();
    assert_ne!(minted, "forged");
    // The same user token to the same service within ttl/4: the same minted token.
    let again = call(
        &gw,
        "/api/orders",
        &[("authorization", &format!("Bearer {user}"))],
    )
    .await;
    assert_eq!(
        again.json()["headers"]["x-switchyard-identity"],
        minted.as_str()
    );

    let set: JwkSet = serde_json::from_slice(
        &get(&client(), &gw.admin_url("/.well-known/jwks.json"))
            .await
            .body,
    )
    .expect("JWKS");
    let kids: Vec<_> = set
        .keys
        .iter()
        .map(|k| k.common.key_id.clone().unwrap())
        .collect();
    assert_eq!(kids, ["gw-2", "gw-1"]);
    let head = jsonwebtoken::decode_header(&minted).unwrap();
    assert_eq!(head.alg, Algorithm::EdDSA);
    let key = DecodingKey::from_jwk(set.find(head.kid.as_deref().unwrap()).unwrap()).unwrap();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&["s"]);
    v.set_issuer(&["switchyard"]);
    v.leeway = 0;
    let got = jsonwebtoken::decode::<Value>(&minted, &key, &v)
        .expect("the minted token verifies")
        .claims;
    assert_eq!(got["sub"], "alice");
    assert_eq!(got["aud"], "s");
    assert_eq!(got["email"], "alice@example.com");
    assert_eq!(
        got["exp"].as_u64().unwrap() - got["iat"].as_u64().unwrap(),
        60
    );
    // The user's own token is not copied: no other claims.
    assert!(got.get("scope").is_none());

    // A user token that expires sooner than the TTL caps the minted token's exp.
    let short_exp = now() + 20;
    let short = sign(
        "rsa.pem",
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(json!({"sub": "dave", "exp": short_exp})),
    );
    let a = with_token(&gw, "/api/orders", &short).await;
    let minted = a.json()["headers"]["x-switchyard-identity"]
        .as_str()
        .expect("identity header")
        .to_string();
    let got = jsonwebtoken::decode::<Value>(&minted, &key, &v)
        .expect("verifies")
        .claims;
    assert_eq!(got["sub"], "dave");
    assert_eq!(got["exp"].as_u64().unwrap(), short_exp);

    // Unauthenticated routes never carry a client-sent identity token.
    let a = call(&gw, "/open", &[("x-switchyard-identity", "forged")]).await;
    assert!(a.json()["headers"].get("x-switchyard-identity").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_jwks_cache_and_rereads_jwks_files() {
    let (jwks, _) = jwks_server(two_key_jwks()).await;
    let up = Upstream::echo("s").await;
    let dir = tempfile::tempdir().unwrap();
    let file_jwks = |file: &str, kid: &str| {
        std::fs::write(
            dir.path().join("jwks.json"),
            json!({ "keys": [jwk(file, Algorithm::ES256, kid)] }).to_string(),
        )
        .unwrap()
    };
    file_jwks("ec.pem", "f1");
    let table = |extra: &str| {
        config(&format!(
            "[server]\naccess_log = \"off\"\n[services.s]\nendpoints = [{}]\n\
             [auth.url]\nalgorithms = [\"RS256\"]\njwks = \"http://{}/jwks.json\"\n\
             [auth.file]\nalgorithms = [\"ES256\"]\njwks = \"file:jwks.json\"\n\
             [[routes]]\nname = \"url\"\npath = \"/url\"\nservice = \"s\"\nauth = \"url\"\n\
             [[routes]]\nname = \"file\"\npath = \"/file\"\nservice = \"s\"\nauth = \"file\"\n{extra}",
            up.endpoint(),
            jwks.addr
        ))
    };
    let config_path = dir.path().join("routes.toml");
    std::fs::write(&config_path, table("")).unwrap();
    let mut gw = Gateway::start_at(&config_path);
    let c = claims(json!({}));
    let url_token = sign("rsa.pem", Algorithm::RS256, Some("rsa-1"), &c);
    let f1 = sign("ec.pem", Algorithm::ES256, Some("f1"), &c);
    let f2 = sign("ec2.pem", Algorithm::ES256, Some("f2"), &c);
    assert_eq!(with_token(&gw, "/url", &url_token).await.status, 200);
    assert_eq!(with_token(&gw, "/file", &f1).await.status, 200);
    assert_eq!(jwks.hits(), 1);

    // A reload that leaves the URL policy alone keeps its cache: no new fetch.
    let tmp = dir.path().join(".routes.toml.tmp");
    std::fs::write(
        &tmp,
        table("[[routes]]\nname = \"more\"\npath = \"/more\"\nservice = \"s\"\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, &config_path).unwrap();
    gw.wait_log("config reloaded");
    assert_eq!(with_token(&gw, "/url", &url_token).await.status, 200);
    assert_eq!(jwks.hits(), 1, "the reload refetched an unchanged JWKS URL");

    // A JWKS file is part of the config: the next reload (SIGHUP) reads it again.
    file_jwks("ec2.pem", "f2");
    gw.signal("HUP");
    gw.wait_log("config reloaded");
    assert_eq!(with_token(&gw, "/file", &f2).await.status, 200);
    assert_401(
        &with_token(&gw, "/file", &f1).await,
        "key removed from the file",
    );
}
