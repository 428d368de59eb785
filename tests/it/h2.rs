//! HTTP/2 towards upstreams (h2c, h2 over TLS, HTTP/1.1 over TLS, mTLS) and the
//! downstream rapid-reset guard (CVE-2023-44487).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::support::*;
use crate::tls::{TestCert, make_cert, write_cert};

/// An upstream that answers with the HTTP version it saw; plain (HTTP/1.1 and h2c by
/// preface) or TLS with the given server config.
struct VersionUpstream {
    addr: std::net::SocketAddr,
    conns: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn version_upstream(tls: Option<Arc<rustls::ServerConfig>>) -> VersionUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let conns2 = conns.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tls = tls.clone();
            let conns = conns2.clone();
            tokio::spawn(async move {
                // The body is the version; `x-authority` and `x-host` say what the
                // request named as its authority (`:authority` for HTTP/2) and what
                // `Host` fields came with it.
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let mut resp = text(format!("{:?}", req.version()));
                    let authority = req.uri().authority().map_or("-", |a| a.as_str());
                    let hosts: Vec<&str> = req
                        .headers()
                        .get_all(http::header::HOST)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect();
                    let h = resp.headers_mut();
                    h.insert("x-authority", authority.parse().unwrap());
                    h.insert("x-host", hosts.join(",").parse().unwrap());
                    // The gateway's own fields as they came, each value once: `got-NAME`.
                    for name in GATEWAY_FIELDS {
                        let seen: Vec<&str> = req
                            .headers()
                            .get_all(name)
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .collect();
                        let got = http::HeaderName::try_from(format!("got-{name}")).unwrap();
                        h.insert(got, seen.join("|").parse().unwrap());
                    }
                    // Answered once the body is in: an answer before it may reset the
                    // connection under the body still being sent.
                    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                    Ok::<_, Infallible>(resp)
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        conns.fetch_add(1, Ordering::SeqCst);
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(cfg) => {
                        let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await
                        else {
                            return;
                        };
                        conns.fetch_add(1, Ordering::SeqCst);
                        let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                    }
                }
            });
        }
    });
    VersionUpstream {
        addr,
        conns,
        _task: task,
    }
}

const GATEWAY_FIELDS: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "traceparent",
];

/// The gateway keeps its own fields beside the request's until a client writes them
/// (the HTTP/1.1 client from there, the others from their copy of the request): each
/// arrives exactly once, with the gateway's value, whichever client sends the request,
/// and whatever the client sent under those names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_fields_reach_every_kind_of_upstream_once() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(&["up.test"]);
    write_cert(dir.path(), "up", &cert);
    let plain = version_upstream(None).await;
    let tls = version_upstream(Some(server_config(&cert, None))).await;
    let tls_service = |protocol: &str| {
        format!("protocol = \"{protocol}\"\nca = \"up.crt\"\nserver_name = \"up.test\"")
    };
    // A body past what the HTTP/1.1 client sends from memory goes through hyper's client.
    let big = vec![b'a'; 100 << 10];
    let cases = [
        (plain.addr, String::new(), "HTTP/1.1", None),
        (plain.addr, String::new(), "HTTP/1.1", Some(big.clone())),
        (
            plain.addr,
            "protocol = \"h2c\"".to_string(),
            "HTTP/2.0",
            None,
        ),
        (tls.addr, tls_service("h2"), "HTTP/2.0", None),
        (tls.addr, tls_service("https"), "HTTP/1.1", None),
        (tls.addr, tls_service("https"), "HTTP/1.1", Some(big)),
    ];
    for (addr, service, version, body) in cases {
        let what = format!("{service:?} {version} body: {}", body.is_some());
        let gw = Gateway::start_at(&service_config(dir.path(), addr, &service));
        let req = http::Request::builder()
            .method(if body.is_some() { "POST" } else { "GET" })
            .uri(gw.url("/x"))
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "spoofed.example")
            .header("x-request-id", "client-id-1")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(full(body.unwrap_or_default()))
            .unwrap();
        let a = send(&client(), req).await;
        assert_eq!(a.status, 200, "{what}: {a:?}");
        assert_eq!(&a.body[..], version.as_bytes(), "{what}");
        let got = |name: &str| a.headers[format!("got-{name}").as_str()].to_str().unwrap();
        assert_eq!(got("x-forwarded-for"), "127.0.0.1", "{what}");
        assert_eq!(got("x-forwarded-proto"), "http", "{what}");
        assert_eq!(got("x-forwarded-host"), gw.addr.to_string(), "{what}");
        // A valid client id is kept, and sent once.
        assert_eq!(got("x-request-id"), "client-id-1", "{what}");
        // Same trace, the gateway's span as the parent.
        let tp = got("traceparent");
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && !tp.contains('|'),
            "{what}: {tp}"
        );
        assert!(!tp.contains("b7ad6b7169203331"), "{what}: {tp}");
    }
}

/// A TLS server config presenting `cert` (ALPN h2, http/1.1), requiring a client
/// certificate signed by `client_ca` when given.
pub fn server_config(cert: &TestCert, client_ca: Option<&TestCert>) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = vec![rustls::pki_types::CertificateDer::from(cert.der.clone())];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        None => b.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der.clone().into()).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            b.with_client_cert_verifier(v)
        }
    };
    let mut cfg = b.with_single_cert(chain, key).unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn service_config(dir: &Path, addr: std::net::SocketAddr, service: &str) -> std::path::PathBuf {
    let toml = config(&format!(
        "[services.up]\nendpoints = [\"{addr}\"]\n{service}\n\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"up\"\n"
    ));
    let path = dir.join("routes.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// `n` GETs of `/0` … `/{n-1}` sent at once; their answers in order.
async fn get_concurrently(c: &TestClient, gw: &Gateway, n: usize) -> Vec<Answer> {
    let all: Vec<_> = (0..n)
        .map(|i| {
            let c = c.clone();
            let url = gw.url(&format!("/{i}"));
            tokio::spawn(async move { get(&c, &url).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for t in all {
        answers.push(t.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_requests_share_one_connection() {
    let up = version_upstream(None).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_at(&service_config(dir.path(), up.addr, "protocol = \"h2c\""));
    let c = client();
    let a = get(&c, &gw.url("/first")).await;
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], b"HTTP/2.0");
    for a in get_concurrently(&c, &gw, 50).await {
        assert_eq!(a.status, 200);
        assert_eq!(&a.body[..], b"HTTP/2.0");
    }
    assert_eq!(
        up.conns.load(Ordering::SeqCst),
        1,
        "51 requests over one shared HTTP/2 connection"
    );
}

async fn get_with_host(url: &str, host: &str) -> Answer {
    let req = http::Request::get(url)
        .header(http::header::HOST, host)
        .body(empty())
        .unwrap();
    send(&client(), req).await
}

/// RFC 9113 §8.3.1: the client's `Host` becomes `:authority`, and no `Host` field goes
/// beside it (a server may reject the two together; nginx does, see the next test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstreams_get_the_client_host_as_authority_and_no_host_field() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(&["up.test"]);
    write_cert(dir.path(), "up", &cert);
    let plain = version_upstream(None).await;
    let tls = version_upstream(Some(server_config(&cert, None))).await;
    for (addr, service) in [
        (plain.addr, "protocol = \"h2c\""),
        (
            tls.addr,
            "protocol = \"h2\"\nca = \"up.crt\"\nserver_name = \"up.test\"",
        ),
    ] {
        let gw = Gateway::start_at(&service_config(dir.path(), addr, service));
        let a = get_with_host(&gw.url("/x"), "api.example.com").await;
        assert_eq!(a.status, 200, "{service}: {a:?}");
        assert_eq!(&a.body[..], b"HTTP/2.0", "{service}");
        assert_eq!(a.headers["x-authority"], "api.example.com", "{service}");
        assert_eq!(
            a.headers["x-host"], "",
            "{service}: no Host beside :authority"
        );
    }
}

/// A real nginx as an h2c upstream: before the fix it answered every request 400
/// ("client sent duplicate host header"), because `Host` came beside an `:authority`
/// that named the endpoint. It must see the client's host as `$host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_as_an_h2c_upstream_answers_with_the_client_host() {
    let Some(bin) = crate::import_nginx::find_nginx() else {
        eprintln!("h2: skipped: no nginx binary found (PATH, /usr/sbin; or set NGINX)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "events {{}}\nhttp {{\n  access_log off;\n  server {{\n    listen {addr} http2;\n    \
             location / {{ return 200 \"host=$host uri=$request_uri\"; }}\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let _nginx = crate::import_nginx::Nginx::start(&bin, dir.path(), &conf, addr);
    let gw = Gateway::start_at(&service_config(dir.path(), addr, "protocol = \"h2c\""));
    for host in ["api.example.com", "shop.example.com"] {
        let a = get_with_host(&gw.url("/a/b?c=1"), host).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body, format!("host={host} uri=/a/b?c=1"));
    }
}

/// A TLS upstream that fails verification (here: a name its certificate does not have)
/// is a configuration problem: the 502 comes with a warn line that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upstream_certificate_check_is_logged_at_warn() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(&["up.test"]);
    write_cert(dir.path(), "up", &cert);
    let up = version_upstream(Some(server_config(&cert, None))).await;
    let mut gw = Gateway::start_at(&service_config(
        dir.path(),
        up.addr,
        "protocol = \"h2\"\nca = \"up.crt\"\nserver_name = \"other.test\"",
    ));
    let a = get(&client(), &gw.url("/")).await;
    assert_eq!(a.status, 502, "{a:?}");
    let line = gw.wait_log(
        "upstream connect failed (next warning for this endpoint in 10 s at the earliest)",
    );
    assert_eq!(line["level"], "WARN", "{line}");
    let error = line["fields"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("certificate"), "{line}");
}

/// An HTTP/2 upstream that resets a stream with REFUSED_STREAM did not process it (RFC
/// 9113 §8.7): the gateway sends it again, even a POST, as after a failed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_sent_again_even_for_a_post() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Streams seen, and the bodies of those answered.
    let streams = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (s2, b2) = (streams.clone(), bodies.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (streams, bodies) = (s2.clone(), b2.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                // `accept` drives the connection, so each stream is served in a task of
                // its own while the loop keeps accepting (reading a body in the loop
                // would wait for DATA that only `accept` can read).
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    // The first stream of all is refused; the rest are answered.
                    if streams.fetch_add(1, Ordering::SeqCst) == 0 {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let bodies = bodies.clone();
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut got = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            got.extend_from_slice(&chunk);
                        }
                        bodies
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&got).into_owned());
                        let resp = http::Response::new(());
                        if let Ok(mut send) = respond.send_response(resp, false) {
                            let _ = send.send_data(bytes::Bytes::from_static(b"done"), true);
                        }
                    });
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_at(&service_config(dir.path(), addr, "protocol = \"h2c\""));
    let req = http::Request::post(gw.url("/orders"))
        .body(full("order-1"))
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(&a.body[..], b"done");
    assert_eq!(
        streams.load(Ordering::SeqCst),
        2,
        "refused once, then sent again"
    );
    assert_eq!(*bodies.lock().unwrap(), vec!["order-1".to_string()]);
}

/// Concurrent first requests to an h2c endpoint that refuses connections wait for one
/// connection attempt and fail with it: every one gets 502 upstream_connect_failed, and
/// the gateway then serves the next request once the endpoint is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_a_refusing_h2c_endpoint_all_get_502() {
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_at(&service_config(dir.path(), addr, "protocol = \"h2c\""));
    let c = client();
    let started = Instant::now();
    for a in get_concurrently(&c, &gw, 20).await {
        assert_eq!(a.status, 502, "{a:?}");
        assert_eq!(a.json()["error"], "upstream_connect_failed");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // The endpoint comes up: the next request connects.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(text("up"))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let a = get(&c, &gw.url("/again")).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(&a.body[..], b"up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_https_upstreams_verify_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(&["up.test"]);
    write_cert(dir.path(), "up", &cert);
    let up = version_upstream(Some(server_config(&cert, None))).await;
    for (protocol, version) in [("h2", "HTTP/2.0"), ("https", "HTTP/1.1")] {
        let gw = Gateway::start_at(&service_config(
            dir.path(),
            up.addr,
            &format!("protocol = \"{protocol}\"\nca = \"up.crt\"\nserver_name = \"up.test\""),
        ));
        let a = get(&client(), &gw.url("/")).await;
        assert_eq!(a.status, 200, "{protocol}: {a:?}");
        assert_eq!(&a.body[..], version.as_bytes(), "{protocol}");
    }
    // The wrong name, or no CA (the system roots do not know this certificate): the
    // handshake fails and the client gets 502.
    for extra in ["ca = \"up.crt\"\nserver_name = \"other.test\"", ""] {
        let gw = Gateway::start_at(&service_config(
            dir.path(),
            up.addr,
            &format!("protocol = \"h2\"\n{extra}"),
        ));
        let a = get(&client(), &gw.url("/")).await;
        assert_eq!(a.status, 502, "{extra}: {a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_upstream_gets_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = make_cert(&["up.test"]);
    let client_cert = make_cert(&["gateway.test"]);
    write_cert(dir.path(), "up", &server);
    write_cert(dir.path(), "client", &client_cert);
    let up = version_upstream(Some(server_config(&server, Some(&client_cert)))).await;
    let base = "protocol = \"https\"\nca = \"up.crt\"\nserver_name = \"up.test\"";
    let gw = Gateway::start_at(&service_config(
        dir.path(),
        up.addr,
        &format!("{base}\nclient_cert = \"client.crt\"\nclient_key = \"client.key\""),
    ));
    let a = get(&client(), &gw.url("/")).await;
    assert_eq!(a.status, 200, "{a:?}");
    let gw = Gateway::start_at(&service_config(dir.path(), up.addr, base));
    let a = get(&client(), &gw.url("/")).await;
    assert_eq!(a.status, 502, "no client certificate, no service: {a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_of_ten_thousand_streams_stays_within_cpu_and_memory_bounds() {
    let up = Upstream::start(|_req| async { text("ok") }).await;
    let gw = Gateway::start(&config(&format!(
        "[services.s]\nendpoints = [{}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        up.endpoint()
    )));
    let cpu_before = gw.cpu_time();
    let rss_before = gw.peak_rss_kib();
    let started = Instant::now();
    let mut reset = 0usize;
    let mut connections = 0usize;
    let mut goaways = 0usize;
    // An attacker opens streams and cancels each at once, reconnecting whenever the
    // gateway closes the connection.
    while reset < 10_000 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "attack too slow"
        );
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let Ok((mut send, conn)) = h2::client::handshake(tcp).await else {
            continue;
        };
        connections += 1;
        let driver = tokio::spawn(conn);
        loop {
            if reset >= 10_000 {
                break;
            }
            let req = http::Request::get(format!("http://{}/", gw.addr))
                .body(())
                .unwrap();
            let ready = std::future::poll_fn(|cx| send.poll_ready(cx));
            if !matches!(tokio::time::timeout(SOON, ready).await, Ok(Ok(()))) {
                break;
            }
            match send.send_request(req, true) {
                Ok((_resp, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    reset += 1;
                }
                Err(_) => break,
            }
        }
        drop(send);
        if let Ok(Err(e)) = tokio::time::timeout(SOON, driver).await.map(|r| r.unwrap())
            && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
        {
            goaways += 1;
        }
    }
    let cpu = gw.cpu_time().saturating_sub(cpu_before);
    let rss = gw.peak_rss_kib();
    println!(
        "rapid reset: {reset} streams over {connections} connections ({goaways} GOAWAY \
         ENHANCE_YOUR_CALM) in {:?}; gateway CPU {cpu:?}, peak RSS {rss_before} -> {rss} KiB",
        started.elapsed()
    );
    assert!(cpu < Duration::from_secs(20), "gateway CPU time {cpu:?}");
    assert!(rss < 256 * 1024, "peak RSS {rss} KiB");
    // Still serving.
    let a = get(&client(), &gw.url("/after")).await;
    assert_eq!(a.status, 200);
}

/// One HTTP/2 frame: 9-byte header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start(|_req| async { text("ok") }).await;
    let gw = Gateway::start(&config(&format!(
        "[services.s]\nendpoints = [{}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        up.endpoint()
    )));
    let rss_before = gw.peak_rss_kib();
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    // Read until the gateway closes the connection; note whether a GOAWAY came.
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(SOON, rd.read_to_end(&mut buf)).await;
        buf
    });
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    // HEADERS without END_HEADERS: `:method GET` (indexed 2), then the block goes on in
    // CONTINUATION frames full of literal headers, never ending.
    start.extend(frame(0x1, 0x1, 1, &[0x82]));
    wr.write_all(&start).await.unwrap();
    let mut literal = vec![0x00, 3, b'x', b'-', b'a', 100];
    literal.extend([b'v'; 100]);
    let payload: Vec<u8> = literal.iter().copied().cycle().take(16_000).collect();
    let cont = frame(0x9, 0, 1, &payload);
    let mut sent = 0usize;
    let limit = 64 << 20; // 64 MiB of header block, far over any header limit
    while sent < limit {
        match tokio::time::timeout(SOON, wr.write_all(&cont)).await {
            Ok(Ok(())) => sent += cont.len(),
            _ => break,
        }
    }
    let got = reader.await.unwrap();
    let rss = gw.peak_rss_kib();
    println!(
        "CONTINUATION flood: {} KiB sent before the gateway stopped reading; {} bytes back; \
         peak RSS {rss_before} -> {rss} KiB",
        sent / 1024,
        got.len()
    );
    assert!(
        sent < limit,
        "the gateway read the whole endless header block"
    );
    let mut kinds = Vec::new();
    let mut at = 0;
    while at + 9 <= got.len() {
        let len = (usize::from(got[at]) << 16)
            | (usize::from(got[at + 1]) << 8)
            | usize::from(got[at + 2]);
        kinds.push(got[at + 3]);
        at += 9 + len;
    }
    assert!(kinds.contains(&0x7), "no GOAWAY, frames: {kinds:?}");
    assert!(rss < rss_before + 64 * 1024, "peak RSS {rss} KiB");
    // Still serving.
    let a = get(&client(), &gw.url("/after")).await;
    assert_eq!(a.status, 200);
}
