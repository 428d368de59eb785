//! The training run of a profile-guided build (`scripts/build-pgo.sh`): drives a
//! gateway binary built with `-Cprofile-generate` through the traffic it is built for,
//! so that the compiler learns which code is hot. Run on its own:
//!
//! ```sh
//! cargo run --release --example pgo_train -- --gateway target/release/switchyard [--seconds 2]
//! ```
//!
//! Everything is on 127.0.0.1 with ports chosen by the kernel: an upstream (hyper,
//! HTTP/1.1, 13-byte and 64 KiB answers), then the gateway three times: with one worker
//! thread (the runtime of a gateway given one CPU) and the access log off, then on
//! (stdout to /dev/null), and with a worker per CPU and the log on. Each time it stands
//! in front of that upstream with a plain catch-all route, a route with ES256 JWT auth,
//! a sticky canary and a rate limit (a key pair made here), and an HTTPS listener (a
//! self-signed certificate made here). The load, phase by phase, each for `--seconds`:
//! small GETs over 64 and 256 keep-alive connections, a new connection per request,
//! 64 KiB answers, 1 KiB POSTs, 1 MiB uploads, the policies route, HTTP/2 with prior knowledge (4
//! connections x 100 streams) and HTTPS keep-alive. The gateway is then stopped with
//! SIGTERM, so that it exits normally and writes its profile.
//!
//! Every answer is checked (status and body length). Any failure, or a gateway that
//! does not start or exit cleanly, ends the run with an error and a non-zero status: a
//! profile of error paths would be a wrong profile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

const SMALL: &[u8] = b"Hello, world\n";
const BIG: usize = 64 * 1024;
const UPLOAD: usize = 1024 * 1024;
/// The small POST's body: a typical API call between services, which the gateway's own
/// HTTP/1.1 path reads with its head.
const SMALL_POST: usize = 1024;
/// How long the gateway may take to say "listening", and to exit after SIGTERM.
const START_STOP: Duration = Duration::from_secs(30);

struct Args {
    gateway: PathBuf,
    seconds: f64,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, Error> {
    let mut gateway = None;
    let mut seconds = 2.0;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--gateway" => gateway = it.next().map(PathBuf::from),
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|s| *s > 0.0 && *s <= 600.0)
                    .ok_or("--seconds takes a number of seconds in (0, 600]")?;
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let gateway = gateway.ok_or("usage: pgo_train --gateway PATH [--seconds N]")?;
    Ok(Args { gateway, seconds })
}

fn main() -> std::process::ExitCode {
    match run(std::env::args().skip(1)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgo_train: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The whole run, from the command line's arguments (also called by the integration
/// test `tests/it/pgo.rs`, which includes this file).
pub fn run(args: impl IntoIterator<Item = String>) -> Result<(), Error> {
    let args = parse_args(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(train(args))
}

async fn train(args: Args) -> Result<(), Error> {
    let upstream = start_upstream().await?;
    let dir = tempfile::tempdir()?;
    let keys = Keys::new(dir.path())?;
    let phase = Duration::from_secs_f64(args.seconds);
    // One worker thread is the runtime of a gateway given one CPU (tokio's
    // current-thread scheduler, as in the benchmark); the default is one per CPU.
    for (workers, access_log) in [(Some("1"), false), (Some("1"), true), (None, true)] {
        let config = write_config(dir.path(), upstream, access_log)?;
        let mut gw = Gateway::start(&args.gateway, &config, workers).await?;
        let result = load(&gw, &keys, phase).await;
        let stopped = gw.stop().await;
        result?;
        let status = stopped?;
        if !status.success() {
            return Err(format!("the gateway exited with {status}").into());
        }
        eprintln!(
            "pgo_train: workers {}, access log {}: done, the gateway exited cleanly",
            workers.unwrap_or("default"),
            if access_log { "on" } else { "off" }
        );
    }
    Ok(())
}

/// The upstream: HTTP/1.1 keep-alive; `/64k` answers 64 KiB, anything else 13 bytes;
/// a request body is read whole and its length answered.
async fn start_upstream() -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let big = Bytes::from(vec![b'x'; BIG]);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let big = big.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let big = big.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    let body = req.into_body().collect().await?.to_bytes();
                    let answer = if !body.is_empty() {
                        Bytes::from(body.len().to_string())
                    } else if path == "/64k" {
                        big
                    } else {
                        Bytes::from_static(SMALL)
                    };
                    Ok::<_, hyper::Error>(Response::new(Full::new(answer)))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// An ES256 key pair (its JWKS written to `dir`), a token it signed, and a self-signed
/// certificate for `localhost` (written to `dir`).
struct Keys {
    token: String,
    cert_der: Vec<u8>,
}

impl Keys {
    fn new(dir: &Path) -> Result<Self, Error> {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
        let pair = rcgen::KeyPair::generate()?;
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
        jwk.common.key_id = Some("train".into());
        let jwks = serde_json::json!({ "keys": [jwk] });
        std::fs::write(dir.join("jwks.json"), serde_json::to_vec(&jwks)?)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        // About the size of an identity provider's access token (600-700 bytes).
        let claims = serde_json::json!({
            "iss": "pgo-train", "aud": "api", "sub": "alice",
            "iat": now, "exp": now + 3600, "nbf": now,
            "jti": "5f0c7a52-3b1e-4d8e-9a47-0c2b6f9d1e34",
            "azp": "mobile-app", "email": "alice@example.com", "email_verified": true,
            "name": "Alice Example", "preferred_username": "alice",
            "scope": "openid profile email orders:read orders:write users:read",
            "roles": ["customer", "beta-tester"],
            "tenant": "eu-west-1/acme",
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("train".into());
        let token = jsonwebtoken::encode(&header, &claims, &key)?;

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
        std::fs::write(dir.join("cert.pem"), cert.cert.pem())?;
        std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem())?;
        Ok(Keys {
            token,
            cert_der: cert.cert.der().to_vec(),
        })
    }
}

fn write_config(dir: &Path, upstream: SocketAddr, access_log: bool) -> Result<PathBuf, Error> {
    let log = if access_log {
        ""
    } else {
        "access_log = \"off\"\n"
    };
    let text = format!(
        r#"[listen]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
admin = "off"

[server]
{log}
[[tls.certificates]]
cert = "cert.pem"
key = "key.pem"

[services.up]
endpoints = ["{upstream}"]

[services.up-canary]
endpoints = ["{upstream}"]

[auth.user]
issuer = "pgo-train"
audiences = ["api"]
algorithms = ["ES256"]
jwks = "file:jwks.json"
forward_claims = {{ sub = "x-user-id" }}

[[routes]]
name = "all"
path = "/"
service = "up"

[[routes]]
name = "api"
path = "/api"
service = "up"
auth = "user"
canary = {{ service = "up-canary", weight = 5, sticky = "header:x-user-id" }}
rate_limit = {{ per_second = 1000000, burst = 1000000, key = "jwt:sub" }}
"#
    );
    let path = dir.join("routes.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The gateway under training, and the addresses it announced.
struct Gateway {
    child: Child,
    http: SocketAddr,
    https: SocketAddr,
}

impl Gateway {
    async fn start(bin: &Path, config: &Path, workers: Option<&str>) -> Result<Gateway, Error> {
        let mut cmd = Command::new(bin);
        match workers {
            Some(n) => cmd.env("TOKIO_WORKER_THREADS", n),
            None => cmd.env_remove("TOKIO_WORKER_THREADS"),
        };
        let mut child = cmd
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let listening = tokio::time::timeout(START_STOP, async {
            while let Some(line) = lines.next_line().await? {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["fields"]["message"] == "listening"
                {
                    return Ok::<_, Error>(Some(v));
                }
                seen.push(line);
            }
            Ok(None)
        })
        .await;
        let addr = |v: &serde_json::Value, field: &str| -> Option<SocketAddr> {
            v["fields"][field].as_str()?.parse().ok()
        };
        match listening {
            Ok(Ok(Some(v))) => {
                let (Some(http), Some(https)) = (addr(&v, "addr"), addr(&v, "https")) else {
                    let _ = child.kill().await;
                    return Err(format!("no addresses in the listening line: {v}").into());
                };
                // Keep reading stderr, so the gateway never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                Ok(Gateway { child, http, https })
            }
            other => {
                let _ = child.kill().await;
                Err(format!(
                    "the gateway did not start ({}); its stderr:\n{}",
                    match other {
                        Ok(Ok(_)) => "it exited".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no `listening` within {START_STOP:?}"),
                    },
                    seen.join("\n")
                )
                .into())
            }
        }
    }

    /// SIGTERM (so it exits normally and writes its profile), then wait for it.
    async fn stop(&mut self) -> Result<ExitStatus, Error> {
        let pid = self
            .child
            .id()
            .ok_or("the gateway has already been waited for")?;
        let pid = rustix::process::Pid::from_raw(pid as i32).ok_or("pid 0")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        match tokio::time::timeout(START_STOP, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!("the gateway did not exit within {START_STOP:?} of SIGTERM").into())
            }
        }
    }
}

/// The header fields of a browser's (or a web view's) API call.
const BROWSER: &[(&str, &str)] = &[
    (
        "user-agent",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) \
         Chrome/131.0.0.0 Mobile Safari/537.36",
    ),
    ("accept", "application/json, text/plain, */*"),
    ("accept-language", "en-GB,en;q=0.9,de;q=0.8"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    (
        "referer",
        "https://app.example.com/orders?page=2&sort=created_at",
    ),
    (
        "cookie",
        "theme=dark; consent=analytics%3Dno%26ads%3Dno; session=3b9f1c0e2a7d4f6b8e5c1a9d",
    ),
];

fn browser_fields(b: http::request::Builder) -> http::request::Builder {
    BROWSER
        .iter()
        .fold(b, |b, (name, value)| b.header(*name, *value))
}

/// What one request of a phase sends, and the body length its answer must have.
#[derive(Clone)]
struct Shot {
    path: &'static str,
    /// POST this many bytes (0: a GET).
    upload: usize,
    token: Option<Arc<str>>,
    close: bool,
    expect_len: usize,
}

impl Shot {
    fn get(path: &'static str, expect_len: usize) -> Shot {
        Shot {
            path,
            upload: 0,
            token: None,
            close: false,
            expect_len,
        }
    }

    /// The request; `browser` adds the header fields a browser or mobile app sends
    /// (long values), otherwise it looks like curl's.
    fn request(
        &self,
        authority: &str,
        upload: &Bytes,
        browser: bool,
    ) -> Result<Request<Full<Bytes>>, Error> {
        // `upload` is the largest body; a smaller one is a slice of it.
        let body = upload.slice(..self.upload.min(upload.len()));
        let mut b = Request::builder()
            .method(if self.upload > 0 { "POST" } else { "GET" })
            .uri(format!("http://{authority}{}", self.path))
            .header("host", authority);
        b = if browser {
            browser_fields(b)
        } else {
            b.header("user-agent", "curl/8.5.0").header("accept", "*/*")
        };
        if let Some(t) = &self.token {
            b = b
                .header("authorization", format!("Bearer {t}"))
                .header("x-user-id", "42");
        }
        if self.close {
            b = b.header("connection", "close");
        }
        Ok(b.body(Full::new(body))?)
    }
}

async fn load(gw: &Gateway, keys: &Keys, phase: Duration) -> Result<(), Error> {
    let token: Arc<str> = Arc::from(keys.token.as_str());
    let small = SMALL.len();
    let upload_len = UPLOAD.to_string().len();
    let phases: Vec<(&str, usize, Shot)> = vec![
        ("GET, 64 keep-alive connections", 64, Shot::get("/", small)),
        (
            "GET, 256 keep-alive connections",
            256,
            Shot::get("/", small),
        ),
        (
            "GET, a new connection per request",
            16,
            Shot {
                close: true,
                ..Shot::get("/", small)
            },
        ),
        ("GET 64 KiB, 16 connections", 16, Shot::get("/64k", BIG)),
        (
            "POST 1 KiB, 64 keep-alive connections",
            64,
            Shot {
                upload: SMALL_POST,
                ..Shot::get("/upload", SMALL_POST.to_string().len())
            },
        ),
        (
            "POST 1 MiB, 4 connections",
            4,
            Shot {
                upload: UPLOAD,
                ..Shot::get("/upload", upload_len)
            },
        ),
        (
            "GET with JWT + canary + rate limit, 64 connections",
            64,
            Shot {
                token: Some(token.clone()),
                ..Shot::get("/api/items", small)
            },
        ),
    ];
    for (name, conns, shot) in phases {
        report(name, h1_phase(gw.http, conns, shot, phase).await?)?;
    }
    report(
        "HTTP/2, 4 connections x 100 streams",
        h2_phase(gw.http, 4, 100, phase).await?,
    )?;
    report(
        "HTTPS GET, 16 keep-alive connections",
        https_phase(gw.https, &keys.cert_der, 16, phase).await?,
    )
}

/// A phase that got no answer at all trained nothing: an error.
fn report(phase: &str, requests: u64) -> Result<(), Error> {
    eprintln!("pgo_train: {phase}: {requests} requests");
    if requests == 0 {
        return Err(format!("{phase}: no request was answered").into());
    }
    Ok(())
}

/// Check an answer: 200 and the body length the shot expects.
async fn check(resp: Response<Incoming>, expect_len: usize) -> Result<(), Error> {
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK || body.len() != expect_len {
        return Err(format!(
            "unexpected answer: {status}, {} bytes (expected 200, {expect_len}): {:?}",
            body.len(),
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
        .into());
    }
    Ok(())
}

/// Wait for every client of a phase (the first error is the phase's); the number of
/// answers checked.
async fn finish(
    mut tasks: tokio::task::JoinSet<Result<(), Error>>,
    done: &AtomicU64,
) -> Result<u64, Error> {
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(done.load(Ordering::Relaxed))
}

/// `conns` HTTP/1.1 clients, each sending `shot` one request at a time until `phase`
/// has passed (a new connection per request when the shot closes).
async fn h1_phase(
    addr: SocketAddr,
    conns: usize,
    shot: Shot,
    phase: Duration,
) -> Result<u64, Error> {
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + phase;
    let upload = Bytes::from(vec![b'u'; UPLOAD]);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..conns {
        let (shot, done, upload) = (shot.clone(), done.clone(), upload.clone());
        let browser = i % 2 == 0;
        tasks.spawn(async move {
            let authority = addr.to_string();
            while Instant::now() < end {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                let conn = tokio::spawn(conn);
                loop {
                    let resp = send
                        .send_request(shot.request(&authority, &upload, browser)?)
                        .await?;
                    check(resp, shot.expect_len).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    if shot.close || Instant::now() >= end {
                        break;
                    }
                }
                drop(send);
                conn.await??;
            }
            Ok::<_, Error>(())
        });
    }
    finish(tasks, &done).await
}

/// HTTP/2 with prior knowledge: `conns` connections, `streams` requests in flight on each.
async fn h2_phase(
    addr: SocketAddr,
    conns: usize,
    streams: usize,
    phase: Duration,
) -> Result<u64, Error> {
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + phase;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        for _ in 0..streams {
            let (mut send, done) = (send.clone(), done.clone());
            tasks.spawn(async move {
                while Instant::now() < end {
                    let req = browser_fields(Request::get(format!("http://{addr}/")))
                        .body(Empty::<Bytes>::new())?;
                    send.ready().await?;
                    check(send.send_request(req).await?, SMALL.len()).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, Error>(())
            });
        }
    }
    finish(tasks, &done).await
}

/// HTTPS (TLS 1.3, HTTP/1.1 by ALPN) keep-alive GETs over `conns` connections.
async fn https_phase(
    addr: SocketAddr,
    cert_der: &[u8],
    conns: usize,
    phase: Duration,
) -> Result<u64, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(cert_der.to_vec()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + phase;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (connector, done) = (connector.clone(), done.clone());
        tasks.spawn(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let name = rustls_pki_types::ServerName::try_from("localhost")?;
            let tls = connector.connect(name, stream).await?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            let conn = tokio::spawn(conn);
            while Instant::now() < end {
                let req = browser_fields(Request::get("/").header("host", "localhost"))
                    .body(Empty::<Bytes>::new())?;
                check(send.send_request(req).await?, SMALL.len()).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            drop(send);
            conn.await??;
            Ok::<_, Error>(())
        });
    }
    finish(tasks, &done).await
}
