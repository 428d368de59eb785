//! An open-loop HTTP/1.1 load generator, for `benches/e2e/run.sh`'s fixed-rate scenarios
//! (`rate20k`, …): latency measured the way a proxy's users see it under a steady
//! arrival rate, not the way a closed loop (wrk) sees it.
//!
//! ```sh
//! cargo run --release --example openloop -- --url http://127.0.0.1:8080/ \
//!     --rate 20000 --connections 64 --seconds 10 [-H 'name: value']...
//! ```
//!
//! Request `k` is due at `start + k / rate` (whole nanoseconds). A due request goes out
//! on the first idle keep-alive connection (oldest due first); when none is idle it
//! waits, and that wait counts: its latency runs from when it was due to the last byte
//! of its answer. That is the coordinated-omission correction of wrk2 and `oha
//! --latency-correction`: a proxy that stalls for 10 ms is charged for every request due
//! in those 10 ms, where a closed loop (wrk) sends nothing while it waits and so records
//! one slow request. Both figures are printed: `p99` is the corrected one, `service_p99`
//! runs from when the request's write returned.
//!
//! Due requests go out when the loop wakes: on an answer, or on a tick every `1 / rate`
//! but at most every 50 µs (`TICK_NS`), so one may leave up to 50 µs late (25 µs on
//! average above 20,000 req/s), the same for every proxy measured. Why not oha: its
//! pacing rides tokio's timer wheel, whose 1 ms grain showed up here as a 200 µs p50
//! against nginx answering directly at 5,000 req/s, more than a proxy adds. Here one
//! thread waits in `epoll` and wakes from a periodic `timerfd` (nanosecond resolution,
//! no timer slack).
//!
//! Accounting: every request due is either answered or failed, once (`answers + errors
//! = rate x seconds`): failed are those lost with their connection (a failed write, a
//! reset, a bad answer), those not answered within 5 s of the last due time, and those
//! never sent. Interim (1xx) answers are skipped. A connection the server closes is
//! replaced (`reconnects`); `connection_errors` counts failed connects, writes and bad
//! answers, and the first ten are printed.
//!
//! One thread: pin it beside the upstream (`taskset -c 0`). Answers must carry
//! `Content-Length` (a 13-byte "hello world!\n" in the benchmark); a chunked answer is
//! a bad answer. Output: a summary, then one `E2E-OPENLOOP key=value…` line that
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
/// Error messages printed per run; the rest are only counted.
const MAX_PRINTED: u32 = 10;

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
    if rate > 1_000_000 || seconds > 86_400 || connections > 65_536 {
        return Err("--rate is at most 1000000, --seconds 86400 and --connections 65536".into());
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

/// One answer at the start of a buffer.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    /// Head and body.
    len: usize,
    close: bool,
}

/// The answer at the start of `buf` once it is complete (`None`: more bytes needed). An
/// interim (1xx) answer is complete on its own: the caller skips it and waits on.
fn complete_answer(buf: &[u8]) -> Result<Option<Answer>, String> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Response::new(&mut fields);
    let head_len = match head.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad answer head: {e}")),
    };
    let status = head.code.ok_or("answer without a status")?;
    let (mut length, mut close) = (None, head.version == Some(0));
    for field in head.headers.iter() {
        let value = String::from_utf8_lossy(field.value);
        if field.name.eq_ignore_ascii_case("content-length") {
            let digits = value.trim();
            let n = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse::<usize>().ok())
                .flatten()
                .ok_or_else(|| format!("bad content-length {value:?}"))?;
            if length.is_some_and(|l| l != n) {
                return Err("two different content-lengths".into());
            }
            length = Some(n);
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("transfer-encoding {value:?} is not supported"));
        } else if field.name.eq_ignore_ascii_case("connection") {
            close |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    let body = match (status, length) {
        (100..=199 | 204 | 304, _) => 0,
        (_, Some(n)) => n,
        (_, None) => return Err(format!("answer {status} without content-length")),
    };
    let len = head_len
        .checked_add(body)
        .ok_or_else(|| format!("content-length {body} too large"))?;
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
    /// From when each request was due / from when its write returned, in ns.
    corrected: Vec<u64>,
    service: Vec<u64>,
    non_2xx_3xx: u64,
    /// Requests due that got no answer: answers + failed = rate x seconds.
    failed: u64,
    /// Connections that failed (a connect, a write, a bad answer), whatever was on them.
    connection_errors: u64,
    reconnects: u64,
    last_done: u64,
    /// Error messages printed so far (the first few are; the rest only counted).
    printed: u32,
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
    /// Connection `i` failed: say why (the first few times), count it, replace it.
    fn fail(&mut self, i: usize, why: impl std::fmt::Display) {
        if self.tally.printed < MAX_PRINTED {
            self.tally.printed += 1;
            eprintln!("openloop: connection {i}: {why}");
        }
        self.tally.connection_errors += 1;
        self.replace(i);
    }

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

    /// Connection `i` is done with (closed, or failed): the request on it, if any, failed,
    /// and a new connection takes its place.
    fn replace(&mut self, i: usize) {
        if let Some(old) = self.conns[i].take() {
            let _ = epoll::delete(&self.epoll, old.stream.as_fd());
            if old.in_flight.is_some() {
                self.tally.failed += 1;
            }
        }
        self.idle.retain(|&j| j != i);
        self.tally.reconnects += 1;
        // A blocking connect: a proxy whose accept queue is full stalls this loop, and
        // the requests due meanwhile are charged to it, as they should be.
        let Ok(c) = Conn::open(self.args.addr) else {
            self.tally.connection_errors += 1;
            return; // the slot stays empty: fewer connections from here on
        };
        let data = epoll::EventData::new_u64(i as u64);
        if epoll::add(&self.epoll, c.stream.as_fd(), data, epoll::EventFlags::IN).is_ok() {
            self.conns[i] = Some(c);
            self.idle.push_back(i);
        } else {
            self.tally.connection_errors += 1;
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
                Ok(Some(answer)) if answer.status == 101 => {
                    return self.fail(i, "101 to a plain GET");
                }
                Ok(Some(answer)) if answer.status < 200 => {
                    c.buf.drain(..answer.len); // interim: the answer is still to come
                }
                Ok(Some(answer)) => {
                    let Some((due, sent)) = c.in_flight.take() else {
                        return self.fail(i, "an answer to no request");
                    };
                    let now = now_ns();
                    self.tally.corrected.push(now - due);
                    self.tally.service.push(now - sent.max(due));
                    self.tally.last_done = now;
                    if !(200..400).contains(&answer.status) {
                        self.tally.non_2xx_3xx += 1;
                    }
                    c.buf.drain(..answer.len);
                    // Closed by the server, or answered before the whole request was
                    // written (the rest cannot go out on this connection any more).
                    if answer.close || c.unsent > 0 {
                        return self.replace(i);
                    }
                    self.idle.push_back(i);
                }
                Err(e) => return self.fail(i, e),
            }
        }
        if closed {
            // With a request in flight it failed (counted by replace); without one the
            // server closed an idle keep-alive connection, which is its right.
            self.replace(i);
        }
    }

    /// Requests sent and not answered yet.
    fn in_flight(&self) -> u64 {
        let busy = self
            .conns
            .iter()
            .flatten()
            .filter(|c| c.in_flight.is_some());
        busy.count() as u64
    }

    fn run(&mut self) -> io::Result<(u64, u64)> {
        // parse_args bounds rate and seconds: no overflow here.
        let total = self.args.rate * self.args.seconds;
        // Whole nanoseconds, the same grid as the tick's: with a fractional interval the
        // due times would drift off the ticks, and each request would wait a tick more.
        let interval_ns = 1_000_000_000 / self.args.rate;
        let start = now_ns() + 1_000_000;
        let due = |k: u64| start + k * interval_ns;
        let end = due(total) + DRAIN_NS;
        // A periodic tick rather than a timer re-armed for each due time: timerfd_settime
        // was most of this tool's CPU time on a VM (each one reprograms the host's timer).
        let tick = Itimerspec {
            it_interval: timespec(interval_ns.max(TICK_NS)),
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
                let sent = self.send(i, due(next));
                next += 1;
                if let Err(e) = sent {
                    self.fail(i, e); // the request in flight on it failed
                }
            }
            if next == total && self.in_flight() == 0 {
                break;
            }
            if now >= end || self.conns.iter().all(Option::is_none) {
                // What did not come back in time failed, like what was never sent.
                self.tally.failed += self.in_flight() + (total - next);
                break;
            }
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
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
                    self.fail(i, e);
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

/// Nearest-rank percentile of a non-empty ascending list.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
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

/// What a run did: the tally, when the first request was due, how many were sent.
struct Outcome {
    tally: Tally,
    start: u64,
    sent: u64,
}

/// Opens the connections and runs the load.
fn generate(args: Args) -> io::Result<Outcome> {
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
    Ok(Outcome {
        tally: g.tally,
        start,
        sent,
    })
}

fn run(args: Args) -> io::Result<()> {
    let (rate, seconds) = (args.rate, args.seconds);
    let Outcome {
        tally: mut t,
        start,
        sent,
    } = generate(args)?;
    t.corrected.sort_unstable();
    t.service.sort_unstable();
    let done = t.corrected.len() as u64;
    let elapsed = t.last_done.saturating_sub(start) as f64 / 1e9;
    println!(
        "{done} answers of {sent} requests sent ({} due) at {rate} req/s over {seconds} s; \
         {} failed, {} non-2xx/3xx, {} connection errors, {} reconnects",
        rate * seconds,
        t.failed,
        t.non_2xx_3xx,
        t.connection_errors,
        t.reconnects
    );
    let mut line = format!(
        "E2E-OPENLOOP requests={done} seconds={elapsed:.3} rate={rate} errors={} non_2xx_3xx={} \
         connection_errors={}",
        t.failed, t.non_2xx_3xx, t.connection_errors
    );
    // Latency only when there is some (no NaN for report.py to choke on).
    if done > 0 {
        let us = |v: &[u64], q: f64| percentile(v, q) as f64 / 1e3;
        let mean = t.corrected.iter().sum::<u64>() as f64 / done as f64 / 1e3;
        let max = t.corrected[t.corrected.len() - 1] as f64 / 1e3;
        let (p50, p99, p999) = (
            us(&t.corrected, 50.0),
            us(&t.corrected, 99.0),
            us(&t.corrected, 99.9),
        );
        let (s50, s99, s999) = (
            us(&t.service, 50.0),
            us(&t.service, 99.0),
            us(&t.service, 99.9),
        );
        println!(
            "latency from due time:      p50 {p50:.0} us, p99 {p99:.0} us, p99.9 {p999:.0} us, \
             mean {mean:.0} us, max {max:.0} us"
        );
        println!(
            "latency from write's return: p50 {s50:.0} us, p99 {s99:.0} us, p99.9 {s999:.0} us"
        );
        line += &format!(
            " p50={p50:.1} p99={p99:.1} p99.9={p999:.1} mean={mean:.1} max={max:.1} \
             service_p50={s50:.1} service_p99={s99:.1} service_p99.9={s999:.1}"
        );
    }
    println!("{line}");
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
        // Interim answers are complete on their own (the caller skips them).
        let early = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert_eq!(
            complete_answer(early).map(|a| a.map(|a| (a.status, a.len))),
            Ok(Some((103, early.len() - 17)))
        );
        // "close" among other tokens; obs-text in a value; HTTP/1.0 closes by default.
        let listed = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nx: caf\xe9\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            complete_answer(listed).map(|a| a.map(|a| a.close)),
            Ok(Some(true))
        );
        let old = b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            complete_answer(old).map(|a| a.map(|a| a.close)),
            Ok(Some(true))
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +13\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n",
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
            "--url http://127.0.0.1:1/ --rate 1000001",
            "--url http://127.0.0.1:1/ --rate 5 --seconds 86401",
            "--url http://127.0.0.1:1/ --rate 5 --connections 65537",
            "--url http://127.0.0.1:1/ --rate",
        ] {
            assert!(args(bad).is_err(), "{bad}");
        }
    }

    /// A server on loopback that answers each request with a 103 and then a 200 (in
    /// two writes), and closes every connection after its fifth answer without saying
    /// so (as servers close idle keep-alive connections).
    fn early_hints_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                // Two small writes per request: without this, Nagle holds the second
                // until the first is acknowledged, a delayed ACK 40 ms later.
                let _ = stream.set_nodelay(true);
                std::thread::spawn(move || {
                    let (mut buf, mut answered) = (Vec::new(), 0);
                    let mut chunk = [0u8; 1024];
                    while answered < 5 {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        buf.drain(..end + 4);
                        let hints =
                            stream.write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n");
                        let ok =
                            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                        if hints.is_err() || ok.is_err() {
                            return;
                        }
                        answered += 1;
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn every_request_due_is_answered_or_failed_once_and_interim_answers_are_skipped() {
        let (rate, seconds) = (2000, 1);
        let args = Args {
            addr: early_hints_server(),
            request: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            rate,
            connections: 4,
            seconds,
        };
        let Outcome { tally, sent, .. } = generate(args).unwrap();
        let answered = tally.corrected.len() as u64;
        assert_eq!(sent, rate * seconds);
        // Counted once each: answered, or failed (sent on a connection the server was
        // closing at that moment).
        assert_eq!(
            answered + tally.failed,
            rate * seconds,
            "{answered} answered"
        );
        assert_eq!(tally.service.len() as u64, answered);
        // A 103 taken for the answer would count as non-2xx and make its 200 an
        // "answer to no request" (a connection error).
        assert_eq!(tally.non_2xx_3xx, 0);
        assert_eq!(tally.connection_errors, 0);
        assert!(answered > rate * seconds / 2, "{answered} answered");
        // The server closed a connection after every 5 answers: each was replaced.
        assert!(
            tally.reconnects >= answered / 5 - 4,
            "{} reconnects",
            tally.reconnects
        );
    }
}
