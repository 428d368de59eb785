//! Test harness: the real `switchyard` binary on loopback, real upstream servers
//! (hyper, in-process), a real client (hyper-util). Ports are always 0 and read back.
//! The gateway child is killed through its handle when the test ends.

#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
pub const SOON: Duration = Duration::from_secs(20);

// === impl Gateway ===

/// A running gateway process.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin API's address, when the config enables it.
    pub admin: Option<SocketAddr>,
    /// The HTTPS listener's address, when the config has one.
    pub https: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    logs: mpsc::Receiver<Value>,
    /// Every stderr line seen so far (for failure messages).
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Access-log lines from stdout that parse as JSON.
    pub access: Arc<Mutex<Vec<Value>>>,
    /// Every stdout line, as written.
    pub stdout: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Start the binary on `toml` (which must listen on `127.0.0.1:0`) and wait for it
    /// to report its address.
    pub fn start(toml: &str) -> Gateway {
        tokio::task::block_in_place(|| Self::start_blocking(toml))
    }

    fn start_blocking(toml: &str) -> Gateway {
        Self::start_env_blocking(toml, &[])
    }

    /// Start with extra environment variables.
    pub fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Gateway {
        tokio::task::block_in_place(|| Self::start_env_blocking(toml, env))
    }

    fn start_env_blocking(toml: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("routes.toml");
        std::fs::write(&config, toml).expect("write config");
        Self::spawn(dir, config, env)
    }

    /// Start the binary on an existing config file (the temp dir is then unused).
    pub fn start_at(config: &std::path::Path) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config.to_path_buf();
        tokio::task::block_in_place(|| Self::spawn(dir, config, &[]))
    }

    fn spawn(dir: tempfile::TempDir, config: PathBuf, env: &[(&str, &str)]) -> Gateway {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn switchyard");
        let (tx, logs) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                seen2.lock().unwrap().push(line.clone());
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let access = Arc::new(Mutex::new(Vec::new()));
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let (access2, lines2) = (access.clone(), stdout_lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    access2.lock().unwrap().push(v);
                }
                lines2.lock().unwrap().push(line);
            }
        });
        let mut gw = Gateway {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            https: None,
            dir,
            config,
            logs,
            seen,
            access,
            stdout: stdout_lines,
        };
        let listening = gw.wait_log_blocking("listening");
        gw.addr = listening["fields"]["addr"]
            .as_str()
            .expect("addr field")
            .parse()
            .expect("socket addr");
        gw.admin = listening["fields"]["admin"]
            .as_str()
            .and_then(|a| a.parse().ok());
        gw.https = listening["fields"]["https"]
            .as_str()
            .and_then(|a| a.parse().ok());
        gw
    }

    /// Wait for the next stderr log line whose message is `message`.
    pub fn wait_log(&mut self, message: &str) -> Value {
        tokio::task::block_in_place(|| self.wait_log_blocking(message))
    }

    fn wait_log_blocking(&mut self, message: &str) -> Value {
        let deadline = Instant::now() + SOON;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(v) if v["fields"]["message"] == message => return v,
                Ok(_) => continue,
                Err(_) => panic!(
                    "no `{message}` log line within {SOON:?}; stderr so far:\n{}",
                    self.seen.lock().unwrap().join("\n")
                ),
            }
        }
    }

    /// URL on the admin API.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin.expect("admin API enabled"), path)
    }

    /// URL on the gateway.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replace the config file (atomically, by rename, like a ConfigMap update).
    pub fn write_config(&self, toml: &str) {
        let tmp = self.dir.path().join(".routes.toml.tmp");
        std::fs::write(&tmp, toml).expect("write tmp config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// CPU time (user + system) the gateway process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("proc stat");
        // Fields after the command name (which may hold spaces) start after ") ".
        let rest = &stat[stat.rfind(") ").expect("stat format") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        let hz = 100; // USER_HZ on Linux
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Peak resident set size of the gateway process in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// Wait for the process to exit; its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::task::block_in_place(|| self.wait_exit_blocking(within))
    }

    fn wait_exit_blocking(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until a stdout line satisfies `pred`; that line.
    pub async fn wait_stdout(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SOON;
        loop {
            if let Some(l) = self.stdout.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no matching stdout line within {SOON:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Access-log lines seen so far.
    pub fn access_log(&self) -> Vec<Value> {
        self.access.lock().unwrap().clone()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config that listens on an ephemeral port, with `body` appended.
pub fn config(body: &str) -> String {
    format!("[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n{body}")
}

// === impl Upstream ===

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
type Handler =
    Arc<dyn Fn(Request<Incoming>) -> futures_like::BoxFuture<Response<Body>> + Send + Sync>;

pub mod futures_like {
    pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}

/// An upstream HTTP/1.1 server on 127.0.0.1:0.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    /// Connection tasks, so `kill` can close every open connection too.
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Upstream {
    /// Serve with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
    {
        Self::serve(None, handler).await
    }

    /// Serve with `handler` over TLS (HTTP/1.1) with the server config `tls`.
    pub async fn start_tls<F, Fut>(tls: Arc<rustls::ServerConfig>, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
    {
        Self::serve(Some(tokio_rustls::TlsAcceptor::from(tls)), handler).await
    }

    async fn serve<F, Fut>(tls: Option<tokio_rustls::TlsAcceptor>, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let hits2 = hits.clone();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let conns2 = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let hits = hits2.clone();
                let tls = tls.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let http1 = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http1
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await;
                        }
                        Some(tls) => {
                            // A failed handshake (a client that does not trust the
                            // certificate) just ends the connection.
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let _ = http1
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await;
                        }
                    }
                });
                conns2.lock().unwrap().push(conn.abort_handle());
            }
        });
        Upstream {
            addr,
            hits,
            task,
            conns,
        }
    }

    /// Stop like a crashed process: the listener and every open connection close.
    pub fn kill(&self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// An upstream that signals `arrived` when a request reaches it, then answers
    /// `body` after `delay`: a request that is reliably in flight.
    pub async fn slow(delay: Duration, body: &'static str) -> (Upstream, Arc<tokio::sync::Notify>) {
        let arrived = Arc::new(tokio::sync::Notify::new());
        let signal = arrived.clone();
        let up = Upstream::start(move |_req| {
            let signal = signal.clone();
            async move {
                signal.notify_one();
                tokio::time::sleep(delay).await;
                text(body)
            }
        })
        .await;
        (up, arrived)
    }

    /// An upstream that answers JSON naming itself and echoing the request head.
    pub async fn echo(name: &'static str) -> Upstream {
        Upstream::start(move |req| async move { json(&echo_value(name, &req)) }).await
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// `"127.0.0.1:PORT"`, for a config.
    pub fn endpoint(&self) -> String {
        format!("\"{}\"", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn echo_value(name: &str, req: &Request<Incoming>) -> Value {
    // Repeated headers are joined with ", " so a test can see every value.
    let mut headers = serde_json::Map::new();
    for k in req.headers().keys() {
        let joined: Vec<String> = req
            .headers()
            .get_all(k)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(k.as_str().to_string(), Value::String(joined.join(", ")));
    }
    serde_json::json!({
        "service": name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    })
}

pub fn json(v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

// === client ===

pub type TestClient = Client<HttpConnector, Body>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A complete answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

pub async fn send(client: &TestClient, req: Request<Body>) -> Answer {
    let resp = tokio::time::timeout(SOON, client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn get(client: &TestClient, url: &str) -> Answer {
    send(client, Request::get(url).body(empty()).unwrap()).await
}

/// Send raw bytes over a fresh TCP connection and read until the server closes or
/// `SOON` passes; returns what came back.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(SOON, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A 200 answer with a text body.
pub fn text(b: impl Into<Bytes>) -> Response<Body> {
    Response::new(full(b))
}

/// A port that was free a moment ago, for peers that cannot report the port they bound
/// (nginx, Prometheus). Races are possible but rare on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Read `s` until what it sent ends with `end`, each read within `SOON`; fails if the
/// stream ends first.
pub async fn read_until<S: tokio::io::AsyncRead + Unpin>(s: &mut S, end: &str) {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).ends_with(end) {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(SOON, s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "closed before the answer");
        seen.extend_from_slice(&buf[..n]);
    }
}
