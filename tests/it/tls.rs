//! TLS termination: certificate choice by SNI, reload of certificate files under load,
//! rejected bad pairs, the admin API and metrics, HTTP/2 by ALPN (curl, h2load).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::support::*;

// === certificates ===

/// A self-signed certificate for `names` (PEM cert, PEM key, DER cert).
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

pub fn make_cert(names: &[&str]) -> TestCert {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).expect("rcgen");
    TestCert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        der: ck.cert.der().to_vec(),
    }
}

/// A CA, and a certificate for `names` (DNS names or IP addresses) that it signed:
/// `(ca, leaf)`. A client that trusts `ca` accepts `leaf`; one that trusts only the
/// system's roots does not.
pub fn make_ca_and_leaf(names: &[&str]) -> (TestCert, TestCert) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("rcgen");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "switchyard test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().expect("rcgen");
    let ca_cert = ca_params.self_signed(&ca_key).expect("rcgen");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let leaf_params = rcgen::CertificateParams::new(names).expect("rcgen");
    let leaf_key = rcgen::KeyPair::generate().expect("rcgen");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("rcgen");
    (
        TestCert {
            cert_pem: ca_cert.pem(),
            key_pem: ca_key.serialize_pem(),
            der: ca_cert.der().to_vec(),
        },
        TestCert {
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            der: leaf.der().to_vec(),
        },
    )
}

/// Write `c` as `<name>.crt` / `<name>.key` in `dir` atomically (write aside, rename).
pub fn write_cert(dir: &Path, name: &str, c: &TestCert) -> (PathBuf, PathBuf) {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, &c.key_pem).unwrap();
    std::fs::rename(&tmp, &key).unwrap();
    std::fs::write(&tmp, &c.cert_pem).unwrap();
    std::fs::rename(&tmp, &crt).unwrap();
    (crt, key)
}

/// DNS names in a DER certificate's SAN extension.
fn san_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).expect("parse peer certificate");
    let san = cert
        .subject_alternative_name()
        .expect("SAN")
        .expect("has SAN");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

// === a TLS client that shows what it was served ===

/// Accepts any certificate: the tests check the served certificate themselves.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that accepts any certificate. No session resumption: a resumed
/// session shows the certificate of the session it resumes, not the one in service.
pub fn tls_client_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*resuming_client_config(alpn)).clone();
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// Like [`tls_client_config`], with session resumption (tickets) as browsers do.
pub fn resuming_client_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// What one HTTPS request saw.
#[derive(Debug)]
pub struct Served {
    pub cert: Vec<u8>,
    pub alpn: Option<Vec<u8>>,
    pub resumed: bool,
    pub status: http::StatusCode,
    pub body: bytes::Bytes,
}

/// A fresh TLS connection to `addr` with SNI `sni` (none when `None`), then `GET path`
/// over HTTP/2 or HTTP/1.1, whichever ALPN chose.
pub async fn https_get(
    cfg: &Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    sni: Option<&str>,
    path: &str,
) -> Result<Served, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    // An IP address as server name: rustls then sends no SNI.
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_string()).map_err(|e| e.to_string())?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or("no peer certificate")?;
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let host = sni.unwrap_or("localhost");
    let io = TokioIo::new(tls);
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(format!("https://{host}{path}"))
            .body(empty())
            .unwrap();
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", host)
            .body(empty())
            .unwrap();
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Served {
        cert,
        alpn,
        resumed,
        status,
        body,
    })
}

/// A gateway with an HTTPS listener in `dir` (which holds the certificate files),
/// `tls` the `[tls]` section and its certificates, forwarding `/` to `up`.
pub fn start_tls(dir: &Path, tls: &str, up: &Upstream) -> Gateway {
    let toml = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n{tls}\n\
         [services.s]\nendpoints = [{}]\n\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        up.endpoint()
    );
    let config = dir.join("routes.toml");
    std::fs::write(&config, toml).unwrap();
    Gateway::start_at(&config)
}

const PAIRS: &str = "[[tls.certificates]]\ncert = \"a.crt\"\nkey = \"a.key\"\n\n\
                     [[tls.certificates]]\ncert = \"b.crt\"\nkey = \"b.key\"\n";

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_by_name_and_unknown_names_get_the_default() {
    let up = Upstream::echo("s").await;
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(&["a.test"]);
    let b = make_cert(&["*.b.test", "b.test"]);
    write_cert(dir.path(), "a", &a);
    write_cert(dir.path(), "b", &b);
    let tls = format!("[tls]\ndefault = \"b.test\"\n\n{PAIRS}");
    let gw = start_tls(dir.path(), &tls, &up);
    let https = gw.https.expect("https listener");
    let cfg = tls_client_config(&[b"h2", b"http/1.1"]);

    let s = https_get(&cfg, https, Some("a.test"), "/x").await.unwrap();
    assert_eq!(s.cert, a.der, "a.test gets its own certificate");
    assert_eq!(san_names(&s.cert), ["a.test"]);
    assert_eq!(s.alpn.as_deref(), Some(&b"h2"[..]), "ALPN offers h2");
    assert_eq!(s.status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");

    let s = https_get(&cfg, https, Some("api.b.test"), "/")
        .await
        .unwrap();
    assert_eq!(s.cert, b.der, "the wildcard covers one label");
    assert!(san_names(&s.cert).contains(&"*.b.test".to_string()));

    let s = https_get(&cfg, https, Some("c.test"), "/").await.unwrap();
    assert_eq!(s.cert, b.der, "an unknown name gets the configured default");
    let s = https_get(&cfg, https, Some("x.y.b.test"), "/")
        .await
        .unwrap();
    assert_eq!(s.cert, b.der, "two labels are not covered: default");
    let s = https_get(&cfg, https, None, "/").await.unwrap();
    assert_eq!(s.cert, b.der, "no SNI gets the default");

    let h1 = tls_client_config(&[b"http/1.1"]);
    let s = https_get(&h1, https, Some("a.test"), "/").await.unwrap();
    assert_eq!(s.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(s.status, 200);

    // Session tickets: the second handshake of a client resumes the first session.
    let resuming = resuming_client_config(&[b"http/1.1"]);
    let first = https_get(&resuming, https, Some("a.test"), "/")
        .await
        .unwrap();
    assert!(!first.resumed);
    let second = https_get(&resuming, https, Some("a.test"), "/")
        .await
        .unwrap();
    assert!(second.resumed, "the session was not resumed");
    assert_eq!(second.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_the_first_certificate_answers_unknown_names() {
    let up = Upstream::echo("s").await;
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(&["a.test"]);
    write_cert(dir.path(), "a", &a);
    write_cert(dir.path(), "b", &make_cert(&["b.test"]));
    let gw = start_tls(dir.path(), PAIRS, &up);
    let cfg = tls_client_config(&[b"http/1.1"]);
    let s = https_get(&cfg, gw.https.unwrap(), Some("other.test"), "/")
        .await
        .unwrap();
    assert_eq!(s.cert, a.der);
}

/// Kubernetes mounts a Secret as `tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>`,
/// and updates it by pointing `..data` at a new directory (one rename).
fn k8s_secret(dir: &Path, generation: u32, c: &TestCert) {
    let data = dir.join(format!("..gen{generation}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("tls.crt"), &c.cert_pem).unwrap();
    std::fs::write(data.join("tls.key"), &c.key_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..gen{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_update_under_load_fails_no_request_and_new_handshakes_get_the_new_cert() {
    let up = Upstream::start(|_req| async { text("ok") }).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let old = make_cert(&["api.test"]);
    let new = make_cert(&["api.test"]);
    k8s_secret(&secret, 1, &old);
    let tls = "[[tls.certificates]]\ncert = \"secret/tls.crt\"\nkey = \"secret/tls.key\"\n";
    let gw = start_tls(dir.path(), tls, &up);
    let https = gw.https.unwrap();
    let cfg = tls_client_config(&[b"h2", b"http/1.1"]);

    // Load: 4 clients, a new TLS connection per request, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, cfg) = (stop.clone(), ok.clone(), failed.clone(), cfg.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match https_get(&cfg, https, Some("api.test"), "/").await {
                    Ok(s) if s.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(s) => failed.lock().unwrap().push(format!("status {}", s.status)),
                    Err(e) => failed.lock().unwrap().push(e),
                }
            }
        }));
    }
    let wait_ok = |n: usize| {
        let ok = ok.clone();
        async move {
            let deadline = Instant::now() + SOON;
            while ok.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "load made no progress");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_ok(50).await;

    k8s_secret(&secret, 2, &new);
    let swapped = Instant::now();
    let deadline = swapped + SOON;
    loop {
        let s = https_get(&cfg, https, Some("api.test"), "/").await.unwrap();
        if s.cert == new.der {
            break;
        }
        assert_eq!(s.cert, old.der);
        assert!(
            Instant::now() < deadline,
            "the new certificate never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = swapped.elapsed();
    let before = ok.load(Ordering::Relaxed);
    wait_ok(before + 50).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let failed = failed.lock().unwrap();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    println!(
        "certificate swap seen after {took:?}; {} requests, none failed",
        ok.load(Ordering::Relaxed)
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_pair_is_rejected_and_the_old_certificate_stays_until_fixed() {
    let up = Upstream::start(|_req| async { text("ok") }).await;
    let dir = tempfile::tempdir().unwrap();
    let old = make_cert(&["api.test"]);
    write_cert(dir.path(), "a", &old);
    write_cert(dir.path(), "b", &make_cert(&["b.test"]));
    let mut gw = start_tls(dir.path(), PAIRS, &up);
    let https = gw.https.unwrap();
    let cfg = tls_client_config(&[b"http/1.1"]);

    // A new certificate with the key of another: rejected, logged, old one kept.
    let new = make_cert(&["api.test"]);
    let other = make_cert(&["api.test"]);
    let broken = TestCert {
        cert_pem: new.cert_pem.clone(),
        key_pem: other.key_pem.clone(),
        der: new.der.clone(),
    };
    write_cert(dir.path(), "a", &broken);
    let line = gw.wait_log("certificate reload rejected; keeping the one in service");
    assert!(
        line["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("not the certificate's key"),
        "{line}"
    );
    let s = https_get(&cfg, https, Some("api.test"), "/").await.unwrap();
    assert_eq!(s.cert, old.der, "the old certificate is still served");

    // Fixed on disk; SIGHUP reloads even when no file event is seen.
    std::fs::write(dir.path().join("a.key"), &new.key_pem).unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + SOON;
    loop {
        let s = https_get(&cfg, https, Some("api.test"), "/").await.unwrap();
        if s.cert == new.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fixed certificate never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_certificates_and_metrics_show_their_expiry() {
    let up = Upstream::echo("s").await;
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "a", &make_cert(&["a.test"]));
    write_cert(dir.path(), "b", &make_cert(&["*.b.test"]));
    let gw = start_tls(dir.path(), PAIRS, &up);
    let c = client();
    let a = get(&c, &gw.admin_url("/certificates")).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    let certs = v["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[0]["names"], serde_json::json!(["a.test"]));
    assert_eq!(certs[0]["default"], true);
    assert_eq!(certs[1]["names"], serde_json::json!(["*.b.test"]));
    // rcgen's default validity ends in 4096.
    assert!(certs[1]["days_left"].as_i64().unwrap() > 365, "{v}");
    assert!(
        certs[1]["not_after"].as_str().unwrap().starts_with("4096-"),
        "{v}"
    );
    let m = get(&c, &gw.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&m.body);
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("switchyard_tls_certificate_not_after_seconds{") && l.contains("*.b.test")
        })
        .unwrap_or_else(|| panic!("no expiry gauge:\n{text}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value > 4_000_000_000.0, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_is_added_on_https_only() {
    let up = Upstream::echo("s").await;
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "a", &make_cert(&["a.test"]));
    write_cert(dir.path(), "b", &make_cert(&["b.test"]));
    let tls = format!("[tls]\nhsts = \"max-age=31536000\"\n\n{PAIRS}");
    let gw = start_tls(dir.path(), &tls, &up);
    let a = get(&client(), &gw.url("/")).await;
    assert!(a.headers.get("strict-transport-security").is_none());
    let out = curl(&[
        "-sk",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("https://{}/", gw.https.unwrap()),
    ]);
    let Some(out) = out else { return };
    assert!(
        out.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{out}"
    );
}

/// Run curl; `None` (with a message) when it is not installed.
pub fn curl(args: &[&str]) -> Option<String> {
    match std::process::Command::new("curl").args(args).output() {
        Ok(o) => {
            assert!(
                o.status.success(),
                "curl {args:?} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            Some(String::from_utf8_lossy(&o.stdout).into_owned())
        }
        Err(_) => {
            eprintln!("SKIP: curl is not installed (scripts/test.sh installs it)");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_http2_over_tls_and_with_prior_knowledge() {
    let up = Upstream::echo("s").await;
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "a", &make_cert(&["a.test"]));
    write_cert(dir.path(), "b", &make_cert(&["b.test"]));
    let gw = start_tls(dir.path(), PAIRS, &up);
    let fmt = "%{http_version} %{http_code}";
    let url = format!("https://{}/tls", gw.https.unwrap());
    let Some(out) = curl(&["-sk", "--http2", "-o", "/dev/null", "-w", fmt, &url]) else {
        return;
    };
    assert_eq!(out, "2 200", "HTTP/2 over TLS by ALPN");
    let out = curl(&[
        "-s",
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        fmt,
        &gw.url("/h2c"),
    ])
    .unwrap();
    assert_eq!(
        out, "2 200",
        "h2c with prior knowledge on the plain listener"
    );
    let out = curl(&["-sk", "--http1.1", "-o", "/dev/null", "-w", fmt, &url]).unwrap();
    assert_eq!(out, "1.1 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_ten_thousand_requests_over_a_hundred_streams_without_errors() {
    let up = Upstream::start(|_req| async { text("ok") }).await;
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "a", &make_cert(&["a.test"]));
    write_cert(dir.path(), "b", &make_cert(&["b.test"]));
    let gw = start_tls(dir.path(), PAIRS, &up);
    let url = format!("https://{}/", gw.https.unwrap());
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new("h2load")
            .args(["-n", "10000", "-c", "1", "-m", "100", &url])
            .output()
    });
    let Ok(out) = out else {
        eprintln!("SKIP: h2load is not installed (scripts/test.sh installs nghttp2-client)");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("10000 succeeded, 0 failed, 0 errored"),
        "h2load saw failures:\n{text}"
    );
    assert!(text.contains("h2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_requests_for_listed_hosts_are_redirected_to_https() {
    let up = Upstream::echo("s").await;
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "a", &make_cert(&["a.test"]));
    write_cert(dir.path(), "b", &make_cert(&["*.b.test"]));
    let tls = format!("[tls]\nredirect_http = [\"a.test\", \"*.b.test\"]\n\n{PAIRS}");
    let gw = start_tls(dir.path(), &tls, &up);
    let c = client();
    let req = |method: &str, host: &str| {
        http::Request::builder()
            .method(method)
            .uri(gw.url("/x?y=1"))
            .header("host", host)
            .body(empty())
            .unwrap()
    };
    let a = send(&c, req("GET", "a.test:8080")).await;
    assert_eq!(a.status, 301);
    assert_eq!(a.headers["location"], "https://a.test/x?y=1");
    let a = send(&c, req("POST", "api.b.test")).await;
    assert_eq!(a.status, 308, "a POST keeps its method");
    assert_eq!(a.headers["location"], "https://api.b.test/x?y=1");
    let a = send(&c, req("GET", "other.test")).await;
    assert_eq!(a.status, 200, "hosts not listed are served on plain HTTP");
    // A public port other than 443 (the listener's own port is often not it).
    let with_port = format!("[tls]\nredirect_http = [\"*\"]\nredirect_port = 8443\n\n{PAIRS}");
    std::fs::write(
        dir.path().join("routes.toml"),
        std::fs::read_to_string(dir.path().join("routes.toml"))
            .unwrap()
            .replace(&tls, &with_port),
    )
    .unwrap();
    let deadline = Instant::now() + SOON;
    loop {
        let a = send(&c, req("GET", "any.test")).await;
        if a.status == 301 {
            assert_eq!(a.headers["location"], "https://any.test:8443/x?y=1");
            break;
        }
        assert!(Instant::now() < deadline, "the reload never took effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // On the HTTPS listener the same host is served.
    let s = https_get(
        &tls_client_config(&[b"h2"]),
        gw.https.unwrap(),
        Some("a.test"),
        "/x",
    )
    .await
    .unwrap();
    assert_eq!(s.status, 200);
}

#[test]
fn check_warns_about_a_certificate_that_expires_soon() {
    let dir = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["soon.test".to_string()]).unwrap();
    params.not_after =
        time::OffsetDateTime::now_utc() + time::Duration::days(5) + time::Duration::hours(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("soon.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("soon.key"), key.serialize_pem()).unwrap();
    let toml = "[listen]\nhttps = \"127.0.0.1:0\"\n\n[[tls.certificates]]\ncert = \"soon.crt\"\nkey = \"soon.key\"\n\n\
                [services.s]\nendpoints = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n";
    std::fs::write(dir.path().join("routes.toml"), toml).unwrap();
    let run = |strict: bool| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("check").current_dir(dir.path());
        if strict {
            cmd.arg("--strict");
        }
        let out = cmd.arg("routes.toml").output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(false);
    assert_eq!(code, Some(0), "a warning does not fail the check:\n{out}");
    assert!(
        out.contains("routes.toml:5:8: warning[SY027]: certificate ./soon.crt expires in 5 days"),
        "{out}"
    );
    let (code, _) = run(true);
    assert_eq!(code, Some(1), "--strict fails on the warning");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_http2_preface_over_tls_is_cut_off_by_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::echo("s").await;
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "a", &make_cert(&["a.test"]));
    let tls = "[server]\nheader_read_timeout = \"1s\"\n\n\
               [[tls.certificates]]\ncert = \"a.crt\"\nkey = \"a.key\"\n";
    let gw = start_tls(dir.path(), tls, &up);
    let https = gw.https.expect("https listener");
    let cfg = tls_client_config(&[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let name = ServerName::try_from("a.test").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let started = Instant::now();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut rest = Vec::new();
    // Closed by the gateway (an error or the end of the stream), well before `SOON`.
    let _ = tokio::time::timeout(SOON, s.read_to_end(&mut rest)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "still open after {took:?}");
    assert!(rest.is_empty());
    // A whole HTTP/2 client is still served.
    let served = https_get(&cfg, https, Some("a.test"), "/x").await.unwrap();
    assert_eq!(served.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(served.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_sigterm_an_idle_https_keep_alive_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, _arrived) = Upstream::slow(Duration::ZERO, "done").await;
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "a", &make_cert(&["a.test"]));
    // Neither timeout can close the idle connection within `SOON`: only the shutdown.
    let tls = "[server]\nheader_read_timeout = \"120s\"\ndrain_timeout = \"120s\"\n\n\
               [[tls.certificates]]\ncert = \"a.crt\"\nkey = \"a.key\"\n";
    let mut gw = start_tls(dir.path(), tls, &up);
    let https = gw.https.expect("https listener");
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let name = ServerName::try_from("a.test").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls_client_config(&[b"http/1.1"]))
        .connect(name, tcp)
        .await
        .expect("handshake");
    s.write_all(b"GET /first HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut s, "done").await;
    gw.signal("TERM");
    let mut rest = Vec::new();
    // Closed by the gateway (close_notify, an end of stream, or a reset).
    let closed = tokio::time::timeout(SOON, s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection stayed open");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert_eq!(gw.wait_exit(SOON).code(), Some(0));
}
