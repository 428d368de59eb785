//! Upstream names resolved through a real DNS server on loopback: the gateway follows
//! the record's TTL and a changed answer moves traffic.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::support::*;

/// A tiny authoritative DNS server on 127.0.0.1 (UDP): every A question gets the
/// current address with the current TTL; other types get an empty NOERROR answer.
struct DnsServer {
    port: u16,
    answer: Arc<Mutex<(Ipv4Addr, u32)>>,
    a_queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    async fn start(ip: Ipv4Addr, ttl: u32) -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        let answer = Arc::new(Mutex::new((ip, ttl)));
        let a_queries = Arc::new(AtomicUsize::new(0));
        let (ans, count) = (answer.clone(), a_queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                let Some(reply) = reply(&buf[..n], *ans.lock().unwrap(), &count) else {
                    continue;
                };
                let _ = sock.send_to(&reply, from).await;
            }
        });
        DnsServer {
            port,
            answer,
            a_queries,
            task,
        }
    }

    fn set(&self, ip: Ipv4Addr) {
        self.answer.lock().unwrap().0 = ip;
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answer one query (RFC 1035 wire format): the question echoed, one A record when an A
/// record was asked for.
fn reply(q: &[u8], (ip, ttl): (Ipv4Addr, u32), a_queries: &AtomicUsize) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut i = 12;
    while *q.get(i)? != 0 {
        i += 1 + usize::from(q[i]);
    }
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let question = q.get(12..i + 5)?;
    let is_a = qtype == 1;
    if is_a {
        a_queries.fetch_add(1, Ordering::SeqCst);
    }
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[0..2]); // id
    r.extend_from_slice(&[0x85, 0x80]); // response, authoritative, RD, RA, NOERROR
    r.extend_from_slice(&[0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    r.extend_from_slice(question);
    if is_a {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]); // name -> question, A, IN
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&[0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

/// One service named `backend.test` (resolved by `dns`, port of `up`); `dns_refresh`
/// is the upper bound (60 s), so the record's TTL decides when to ask again.
fn dns_table(dns: &DnsServer, up: &Upstream) -> String {
    config(&format!(
        "[dns]\nservers = [\"127.0.0.1:{}\"]\n\
         [services.s]\nendpoints = [\"backend.test:{}\"]\ndns_refresh = \"60s\"\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n",
        dns.port,
        up.addr.port()
    ))
}

async fn status_of(c: &TestClient, url: &str) -> u16 {
    get(c, url).await.status.as_u16()
}

/// Poll until `url` answers `want`.
async fn wait_status(c: &TestClient, url: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = status_of(c, url).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {got}, not {want}, after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_dns_answer_moves_traffic_within_its_ttl() {
    let up = Upstream::echo("backend").await;
    let dns = DnsServer::start(Ipv4Addr::LOCALHOST, 1).await;
    let gw = Gateway::start(&dns_table(&dns, &up));
    let c = client();
    let url = gw.url("/x");
    assert_eq!(status_of(&c, &url).await, 200);
    let hits = up.hits();

    // The name now points at an address where nothing listens: connects are refused.
    dns.set(Ipv4Addr::new(127, 0, 0, 2));
    let started = Instant::now();
    wait_status(&c, &url, 502).await;
    let moved_after = started.elapsed();
    let upstreams = get(&c, &gw.admin_url("/upstreams")).await.json();
    assert!(
        upstreams.to_string().contains("127.0.0.2"),
        "admin shows the new address: {upstreams}"
    );

    // And back.
    dns.set(Ipv4Addr::LOCALHOST);
    wait_status(&c, &url, 200).await;
    assert!(up.hits() > hits);
    // Far sooner than dns_refresh (60 s): the TTL drove the lookups.
    assert!(
        moved_after < Duration::from_secs(10),
        "took {moved_after:?}"
    );
    assert!(dns.a_queries.load(Ordering::SeqCst) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dns_server_keeps_the_last_answer() {
    let up = Upstream::echo("backend").await;
    let dns = DnsServer::start(Ipv4Addr::LOCALHOST, 1).await;
    let mut gw = Gateway::start(&dns_table(&dns, &up));
    let c = client();
    assert_eq!(status_of(&c, &gw.url("/x")).await, 200);
    // The server is gone; once the gateway has tried it, it still routes to the last
    // answer.
    drop(dns);
    gw.wait_log("DNS lookup failed; keeping the last known endpoints");
    assert_eq!(status_of(&c, &gw.url("/x")).await, 200);
}

#[test]
fn bad_dns_servers_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        "[dns]\nservers = [\"10.96.0.10\", \"dns.local:53\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("error[SY008]")
            && text.contains("routes.toml:2:")
            && text.contains("dns.local:53"),
        "{text}"
    );
    assert!(
        !text.contains("10.96.0.10`"),
        "a bare IP is a valid server: {text}"
    );
}
