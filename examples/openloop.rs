//! An open-loop HTTP/1.1 load generator, for `benches/e2e/run.sh`'s fixed-rate scenarios
//! (`rate20k`, …): latency measured the way a proxy's users see it under a steady
//! arrival rate, not the way a closed loop (wrk) sees it.
//!
//! ```sh
//! cargo run --release --example openloop -- --url http://127.0.0.1:8080/ \
//!     --rate 20000 --connections 64 --seconds 10 [-H 'name: value']...
//! ```
//!
//! Request `k` is due at `start + k / rate`. A due request goes out on the first idle
//! keep-alive connection (oldest due first); when none is idle it waits, and that wait
//! counts: its latency runs from when it was due to the last byte of its answer. Due
//! requests go out when the loop wakes: on an answer, or on a tick every `1 / rate` but
//! at most every 50 µs (`TICK_NS`), so one may leave up to 50 µs late (25 µs on
//! average at rates above 20,000 req/s), the same for every proxy measured. That is
//! the coordinated-omission correction of wrk2 and `oha --latency-correction`: a proxy
//! that stalls for 10 ms is charged for every request due in those 10 ms, where a closed
//! loop (wrk) sends nothing while it waits and so records one slow request. Both figures
//! are printed; `p99` is the corrected one, `service_p99` the time from the write.
//!
//! Why not oha: its pacing rides tokio's timer wheel, whose 1 ms grain showed up here as
//! a 200 µs p50 against nginx answering directly at 5,000 req/s, which is more than a
//! proxy adds. Here one thread waits in `epoll` and wakes from a periodic `timerfd`
//! (nanosecond resolution, no timer slack).
//!
//! One thread: pin it beside the upstream (`taskset -c 0`). Answers must carry
//! `Content-Length` (a 13-byte "hello world!\n" in the benchmark); chunked answers are
//! counted as errors. Output: a summary, then one `E2E-OPENLOOP key=value…` line that
//! `benches/e2e/report.py` reads. Exit status 2 on bad arguments or when the target
//! cannot be reached at the start.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;

use rustix::event::epoll;
use rustix::time::{
    ClockId, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, clock_gettime,
    timerfd_create, timerfd_settime,
};

/// epoll data of the timer; connections are 0..connections.
const TIMER: u64 = u64::MAX;
/// How long the in-flight requests may take after the last one was due.
const DRAIN_NS: u64 = 5_000_000_000;
/// The shortest pacing tick: due requests go out when a tick or an answer wakes the
/// loop, so a request waits up to this long after its due time even when a connection
/// is idle (the same for every target; it is part of every latency).
const TICK_NS: u64 = 50_000;

#[derive(Debug)]
struct Args {
    addr: SocketAddr,
    request: Vec<u8>,
    rate: u64,
    connections: usize,
    seconds: u64,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let (mut url, mut rate, mut connections, mut seconds) = (None, None, 64usize, 10u64);
    let mut headers = String::new();
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--rate" => rate = Some(number(value()?)?),
            "--connections" => connections = number(value()?)? as usize,
            "--seconds" => seconds = number(value()?)?,
            "-H" => {
                let h = value()?;
                if !h.contains(':') || h.contains(['\r', '\n']) {
                    return Err(format!("-H wants 'name: value', got {h:?}"));
                }
                headers.push_str(&h);
                headers.push_str("\r\n");
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url must start with http:// (got {url})"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| format!("--url needs an IP:port authority (got {authority:?})"))?;
    let path = if path.is_empty() { "/" } else { path };
    let rate = rate.ok_or("--rate is required")?;
    if rate == 0 || connections == 0 || seconds == 0 {
        return Err("--rate, --connections and --seconds must be above 0".into());
    }
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n{headers}\r\n");
    Ok(Args {
        addr,
        request: request.into_bytes(),
        rate,
        connections,
        seconds,
    })
}

/// One answer at the start of `buf`.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    /// Head and body.
    len: usize,
    close: bool,
}

/// The answer at the start of `buf` once it is complete (`None`: more bytes needed).
fn complete_answer(buf: &[u8]) -> Result<Option<Answer>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "answer head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut length, mut close) = (None, status_line.starts_with("HTTP/1.0"));
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad field {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("transfer-encoding {value:?} is not supported"));
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let body = match (status, length) {
        (100..=199 | 204 | 304, _) => 0,
        (_, Some(n)) => n,
        (_, None) => return Err(format!("answer {status} without content-length")),
    };
    let len = head_end + 4 + body;
    Ok((buf.len() >= len).then_some(Answer { status, len, close }))
}

fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn timespec(ns: u64) -> Timespec {
    Timespec {
        tv_sec: (ns / 1_000_000_000) as _,
        tv_nsec: (ns % 1_000_000_000) as _,
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of the request still to write (from the end of the request).
    unsent: usize,
    /// When the request in flight was due, and when its last byte was written (0 until
    /// then).
    in_flight: Option<(u64, u64)>,
    /// Whether epoll also watches for writability (a request only partly written).
    writing: bool,
}

impl Conn {
    fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
            unsent: 0,
            in_flight: None,
            writing: false,
        })
    }
}

#[derive(Default)]
struct Tally {
    /// From when each request was due / from when it was written, in ns.
    corrected: Vec<u64>,
    service: Vec<u64>,
    non_2xx_3xx: u64,
    errors: u64,
    reconnects: u64,
    last_done: u64,
}

struct Generator {
    args: Args,
    epoll: OwnedFd,
    timer: OwnedFd,
    conns: Vec<Option<Conn>>,
    idle: VecDeque<usize>,
    tally: Tally,
    /// Where reads land (one buffer, zeroed once).
    chunk: Vec<u8>,
}

impl Generator {
    /// Writes what is left of connection `i`'s request.
    fn flush(&mut self, i: usize) -> io::Result<()> {
        let Some(c) = &mut self.conns[i] else {
            return Ok(());
        };
        let total = self.args.request.len();
        while c.unsent > 0 {
            match c.stream.write(&self.args.request[total - c.unsent..]) {
                Ok(n) => c.unsent -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let blocked = c.unsent > 0;
        if !blocked && let Some((_, sent)) = &mut c.in_flight {
            *sent = now_ns();
        }
        if blocked != c.writing {
            c.writing = blocked;
            let mut flags = epoll::EventFlags::IN;
            if blocked {
                flags |= epoll::EventFlags::OUT;
            }
            let data = epoll::EventData::new_u64(i as u64);
            epoll::modify(&self.epoll, c.stream.as_fd(), data, flags)?;
        }
        Ok(())
    }

    fn send(&mut self, i: usize, due: u64) -> io::Result<()> {
        let Some(c) = &mut self.conns[i] else {
            return Ok(());
        };
        c.in_flight = Some((due, 0));
        c.unsent = self.args.request.len();
        self.flush(i)
    }

    /// Connection `i` failed or was closed: the request on it (if any) is an error, and a
    /// new connection takes its place.
    fn replace(&mut self, i: usize, failed: bool) {
        if let Some(old) = self.conns[i].take() {
            let _ = epoll::delete(&self.epoll, old.stream.as_fd());
            if failed || old.in_flight.is_some() {
                self.tally.errors += 1;
            }
        }
        self.idle.retain(|&j| j != i);
        self.tally.reconnects += 1;
        let Ok(c) = Conn::open(self.args.addr) else {
            self.tally.errors += 1;
            return; // the slot stays empty: fewer connections from here on
        };
        if epoll::add(
            &self.epoll,
            c.stream.as_fd(),
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN,
        )
        .is_ok()
        {
            self.conns[i] = Some(c);
            self.idle.push_back(i);
        }
    }

    fn readable(&mut self, i: usize) {
        let Some(c) = &mut self.conns[i] else {
            return;
        };
        // One read per event: epoll is level-triggered and reports what is left (a read
        // to the end would cost a second recv that finds nothing, each time).
        let closed = match c.stream.read(&mut self.chunk) {
            Ok(0) => true,
            Ok(n) => {
                c.buf.extend_from_slice(&self.chunk[..n]);
                false
            }
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ),
        };
        loop {
            match complete_answer(&c.buf) {
                Ok(None) => break,
                Ok(Some(answer)) => {
                    let Some((due, sent)) = c.in_flight.take() else {
                        return self.replace(i, true); // an answer nobody asked for
                    };
                    let now = now_ns();
                    self.tally.corrected.push(now - due);
                    self.tally.service.push(now - sent.max(due));
                    self.tally.last_done = now;
                    if !(200..400).contains(&answer.status) {
                        self.tally.non_2xx_3xx += 1;
                    }
                    c.buf.drain(..answer.len);
                    if answer.close {
                        return self.replace(i, false);
                    }
                    self.idle.push_back(i);
                }
                Err(e) => {
                    eprintln!("openloop: connection {i}: {e}");
                    return self.replace(i, true);
                }
            }
        }
        if closed {
            self.replace(i, false);
        }
    }

    fn run(&mut self) -> io::Result<(u64, u64)> {
        let total = self.args.rate * self.args.seconds;
        let interval_ns = 1e9 / self.args.rate as f64;
        let start = now_ns() + 1_000_000;
        let due = |k: u64| start + (k as f64 * interval_ns) as u64;
        let end = due(total) + DRAIN_NS;
        // A periodic tick rather than a timer re-armed for each due time: timerfd_settime
        // was most of this tool's CPU time on a VM (each one reprograms the host's timer).
        let tick = Itimerspec {
            it_interval: timespec((interval_ns as u64).max(TICK_NS)),
            it_value: timespec(start),
        };
        timerfd_settime(&self.timer, TimerfdTimerFlags::ABSTIME, &tick)?;
        let mut next = 0u64;
        let mut events = Vec::with_capacity(256);
        loop {
            let now = now_ns();
            while next < total && due(next) <= now {
                let Some(i) = self.idle.pop_front() else {
                    break;
                };
                if let Err(e) = self.send(i, due(next)) {
                    eprintln!("openloop: connection {i}: {e}");
                    self.replace(i, true);
                    continue;
                }
                next += 1;
            }
            let in_flight = self
                .conns
                .iter()
                .flatten()
                .filter(|c| c.in_flight.is_some());
            if next == total && in_flight.count() == 0 {
                break;
            }
            if now >= end || self.conns.iter().all(Option::is_none) {
                // What did not come back in time is an error, like what was never sent.
                let lost = self
                    .conns
                    .iter()
                    .flatten()
                    .filter(|c| c.in_flight.is_some())
                    .count();
                self.tally.errors += lost as u64 + (total - next);
                break;
            }
            events.clear();
            epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            )?;
            for ev in events.iter() {
                let (data, flags) = (ev.data.u64(), ev.flags);
                if data == TIMER {
                    let mut ticks = [0u8; 8];
                    let _ = rustix::io::read(&self.timer, &mut ticks);
                    continue;
                }
                let i = data as usize;
                if flags.contains(epoll::EventFlags::OUT)
                    && let Err(e) = self.flush(i)
                {
                    eprintln!("openloop: connection {i}: {e}");
                    self.replace(i, true);
                    continue;
                }
                if flags.intersects(
                    epoll::EventFlags::IN | epoll::EventFlags::ERR | epoll::EventFlags::HUP,
                ) {
                    self.readable(i);
                }
            }
        }
        Ok((start, next))
    }
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e3
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("openloop: {e}");
            eprintln!(
                "usage: openloop --url http://IP:PORT/PATH --rate REQ_PER_S [--connections N] [--seconds S] [-H 'name: value']..."
            );
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openloop: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let timer = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
    )?;
    epoll::add(
        &epoll,
        &timer,
        epoll::EventData::new_u64(TIMER),
        epoll::EventFlags::IN,
    )?;
    let mut conns = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let c = Conn::open(args.addr)
            .map_err(|e| io::Error::new(e.kind(), format!("connect to {}: {e}", args.addr)))?;
        epoll::add(
            &epoll,
            c.stream.as_fd(),
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN,
        )?;
        conns.push(Some(c));
    }
    let (rate, seconds) = (args.rate, args.seconds);
    let mut g = Generator {
        idle: (0..args.connections).collect(),
        args,
        epoll,
        timer,
        conns,
        tally: Tally::default(),
        chunk: vec![0; 16384],
    };
    let (start, sent) = g.run()?;
    let t = &mut g.tally;
    t.corrected.sort_unstable();
    t.service.sort_unstable();
    let done = t.corrected.len() as u64;
    let elapsed = t.last_done.saturating_sub(start) as f64 / 1e9;
    let mean = t.corrected.iter().sum::<u64>() as f64 / done.max(1) as f64 / 1e3;
    let max = t.corrected.last().copied().unwrap_or(0) as f64 / 1e3;
    let (p50, p99, p999) = (
        percentile(&t.corrected, 50.0),
        percentile(&t.corrected, 99.0),
        percentile(&t.corrected, 99.9),
    );
    println!(
        "{done} answers of {sent} requests sent ({} due) at {rate} req/s over {seconds} s; \
         {} errors, {} non-2xx/3xx, {} reconnects",
        rate * seconds,
        t.errors,
        t.non_2xx_3xx,
        t.reconnects
    );
    println!(
        "latency from due time: p50 {p50:.0} us, p99 {p99:.0} us, p99.9 {p999:.0} us, mean {mean:.0} us, max {max:.0} us"
    );
    println!(
        "latency from write:    p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
        percentile(&t.service, 50.0),
        percentile(&t.service, 99.0),
        percentile(&t.service, 99.9)
    );
    println!(
        "E2E-OPENLOOP requests={done} seconds={elapsed:.3} rate={rate} errors={} non_2xx_3xx={} \
         p50={p50:.1} p99={p99:.1} p99.9={p999:.1} mean={mean:.1} max={max:.1} \
         service_p50={:.1} service_p99={:.1} service_p99.9={:.1}",
        t.errors,
        t.non_2xx_3xx,
        percentile(&t.service, 50.0),
        percentile(&t.service, 99.0),
        percentile(&t.service, 99.9)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_complete_once_its_body_is_in() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nServer: x\r\n\r\nhello world!\n";
        for cut in 0..a.len() {
            assert_eq!(complete_answer(&a[..cut]), Ok(None), "cut at {cut}");
        }
        let want = Answer {
            status: 200,
            len: a.len(),
            close: false,
        };
        assert_eq!(complete_answer(a), Ok(Some(want)));
        // A second answer behind the first is not part of it.
        let two = [&a[..], &a[..]].concat();
        assert_eq!(
            complete_answer(&two).map(|x| x.map(|x| x.len)),
            Ok(Some(a.len()))
        );
    }

    #[test]
    fn close_no_body_statuses_and_what_is_not_supported() {
        let close =
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        assert_eq!(
            complete_answer(close),
            Ok(Some(Answer {
                status: 503,
                len: close.len(),
                close: true
            }))
        );
        let empty = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            complete_answer(empty).map(|a| a.map(|a| a.len)),
            Ok(Some(empty.len()))
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            assert!(
                complete_answer(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn arguments() {
        let args = |s: &str| parse_args(s.split_whitespace().map(String::from));
        let a = args("--url http://127.0.0.1:8080/x?y --rate 100 -H x-a:1").unwrap();
        assert_eq!(a.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            a.request,
            b"GET /x?y HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nx-a:1\r\n\r\n"
        );
        assert_eq!((a.rate, a.connections, a.seconds), (100, 64, 10));
        assert_eq!(
            args("--url http://127.0.0.1:1 --rate 5").unwrap().request[..6],
            *b"GET / "
        );
        for bad in [
            "--rate 5",
            "--url http://127.0.0.1:1",
            "--url https://127.0.0.1:1/ --rate 5",
            "--url http://localhost:1/ --rate 5",
            "--url http://127.0.0.1:1/ --rate 0",
            "--url http://127.0.0.1:1/ --rate x",
            "--url http://127.0.0.1:1/ --rate 5 --bogus",
            "--url http://127.0.0.1:1/ --rate 5 -H nocolon",
            "--url http://127.0.0.1:1/ --rate",
        ] {
            assert!(args(bad).is_err(), "{bad}");
        }
    }
}
