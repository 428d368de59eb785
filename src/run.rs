//! Wires a gateway together: config, snapshot, listener, reloader, signals, drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::config::{self, LoadError};
use crate::gateway::Gateway;
use crate::observe::access_log::Sink;
use crate::snapshot::{Registry, Snapshot};
use crate::{reload, server};

/// What `run` needs from its caller.
#[derive(Debug)]
pub struct Options {
    pub config: PathBuf,
    pub access_log: Option<Sink>,
    /// Cancelled to stop (SIGTERM/SIGINT do this too when `signals` is set).
    pub shutdown: CancellationToken,
    /// Install SIGTERM/SIGINT handlers.
    pub signals: bool,
}

/// Why the gateway could not start.
#[derive(Debug)]
pub enum RunError {
    Config(LoadError),
    NoListener,
    Bind(SocketAddr, std::io::Error),
    Tls(rustls::Error),
}

async fn bind(a: SocketAddr) -> Result<(TcpListener, SocketAddr), RunError> {
    let l = TcpListener::bind(a)
        .await
        .map_err(|e| RunError::Bind(a, e))?;
    let local = l.local_addr().map_err(|e| RunError::Bind(a, e))?;
    Ok((l, local))
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Config(LoadError::Invalid { src, errors }) => {
                f.write_str(&errors.render("config", src))
            }
            RunError::Config(e) => write!(f, "{e}"),
            RunError::NoListener => f.write_str("no listener configured"),
            RunError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            RunError::Tls(e) => write!(f, "cannot set up TLS: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// What the binary does once the gateway listens (see [`set_after_startup`]).
static AFTER_STARTUP: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Register `f` to run once the gateway listens, after start-up's one-time work (the
/// binary drops its mappings of its start-up code). Later calls are ignored.
pub fn set_after_startup(f: fn()) {
    let _ = AFTER_STARTUP.set(f);
}

/// The address ranges of `/proc/self/smaps` that map `exe` read-only (`r-xp`, `r--p`)
/// and hold no private copy of a page, neither in memory (`Anonymous: 0 kB`) nor in
/// swap (`Swap: 0 kB`). A mapping without both lines is not taken.
pub fn clean_read_only_mappings(smaps: &str, exe: Option<&str>) -> Vec<(usize, usize)> {
    /// A read-only mapping of `exe`, and whether its lines so far said it is clean.
    struct Candidate {
        range: (usize, usize),
        no_anonymous: bool,
        no_swap: bool,
    }
    fn finish(candidate: Option<Candidate>, ranges: &mut Vec<(usize, usize)>) {
        if let Some(c) = candidate
            && c.no_anonymous
            && c.no_swap
        {
            ranges.push(c.range);
        }
    }
    let mut ranges = Vec::new();
    let mut current: Option<Candidate> = None;
    for line in smaps.lines() {
        // `Name:   value`: a line about the mapping being read.
        let first = line.split(' ').next().unwrap_or_default();
        if let Some(name) = first.strip_suffix(':') {
            let zero = line[first.len()..].trim() == "0 kB";
            if let Some(c) = &mut current {
                match name {
                    "Anonymous" => c.no_anonymous = zero,
                    "Swap" => c.no_swap = zero,
                    _ => {}
                }
            }
            continue;
        }
        // Any other line starts the next mapping: `start-end perms offset dev inode
        // path`. One that does not parse is not a candidate.
        finish(current.take(), &mut ranges);
        let mut fields = line.splitn(6, ' ');
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        let path = fields.nth(3).map(str::trim_start);
        current = (matches!(perms, "r-xp" | "r--p") && path.is_some() && path == exe).then_some(
            Candidate {
                range: (start, end),
                no_anonymous: false,
                no_swap: false,
            },
        );
    }
    finish(current.take(), &mut ranges);
    ranges
}

/// Serve until shutdown, then drain in-flight requests for up to `drain_timeout`.
pub async fn run(opts: Options) -> Result<(), RunError> {
    let loaded = config::load(&opts.config).map_err(RunError::Config)?;
    for w in &loaded.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    let addr = loaded.config.listen.http;
    let tls_addr = loaded.config.listen.https;
    if addr.is_none() && tls_addr.is_none() {
        return Err(RunError::NoListener);
    }
    let admin_addr = loaded.config.listen.admin;
    let hash = loaded.hash.clone();
    let registry = Registry::default();
    let snapshot = Snapshot::build(loaded, &registry).await;
    // From here on, background work (reloads) makes way for requests.
    crate::background::serving();
    let gw = Arc::new(Gateway::new(snapshot, registry, opts.access_log));

    let (listener, local) = match addr {
        Some(a) => {
            let (l, local) = bind(a).await?;
            (Some(l), Some(local))
        }
        None => (None, None),
    };
    let (tls_listener, tls_local) = match tls_addr {
        Some(a) => {
            let (l, local) = bind(a).await?;
            let cfg = crate::tls::server_config(gw.certs.clone()).map_err(RunError::Tls)?;
            (Some((l, tokio_rustls::TlsAcceptor::from(cfg))), Some(local))
        }
        None => (None, None),
    };
    let admin_listener = match admin_addr {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| RunError::Bind(a, e))?;
            let local = l.local_addr().map_err(|e| RunError::Bind(a, e))?;
            Some((l, local))
        }
        None => None,
    };

    let shutdown = opts.shutdown;
    if opts.signals {
        spawn_signal_handler(shutdown.clone());
    }
    // Watch before announcing: a change made right after "listening" must be seen.
    let rewatch = crate::tls::spawn_watcher(gw.clone(), shutdown.clone());
    reload::spawn(gw.clone(), opts.config.clone(), shutdown.clone(), rewatch);
    // The admin API outlives the drain (readiness must say "draining"), so it has its
    // own stop signal, fired after the proxy listener has drained.
    let admin_stop = CancellationToken::new();
    let admin_task = admin_listener.map(|(l, local)| {
        let state = AdminState {
            gw: gw.clone(),
            config_path: opts.config.clone(),
            token: std::env::var("SWITCHYARD_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(Arc::from),
        };
        (
            local,
            tokio::spawn(admin::serve(l, state, admin_stop.clone())),
        )
    });
    let admin_local = admin_task.as_ref().map(|(a, _)| a.to_string());
    let show = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    // Before "listening", which tells whoever started the gateway that start-up is over.
    if let Some(f) = AFTER_STARTUP.get() {
        f();
    }
    tracing::info!(
        addr = %show(local),
        https = %show(tls_local),
        admin = admin_local.as_deref().unwrap_or("off"),
        %hash,
        "listening"
    );

    let tracker = TaskTracker::new();
    let limit = server::connection_limit(&gw);
    let anchor = tokio::spawn(timer_anchor());
    // The accept loops are tasks, not futures of `block_on`: on the multi-threaded
    // runtime `block_on` runs on the main thread, which is not a worker, so every
    // accepted connection would cost a cross-thread wake-up of the main thread and a
    // hand-over of the new connection task to a worker.
    let plain = listener.map(|l| {
        let (gw, stop, t) = (gw.clone(), shutdown.clone(), tracker.clone());
        tokio::spawn(server::serve(l, gw, stop, t, None, limit.clone()))
    });
    let secure = tls_listener.map(|(l, acceptor)| {
        let (gw, stop, t) = (gw.clone(), shutdown.clone(), tracker.clone());
        tokio::spawn(server::serve(l, gw, stop, t, Some(acceptor), limit.clone()))
    });
    for task in [plain, secure].into_iter().flatten() {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "an accept loop ended abnormally");
        }
    }

    gw.set_draining();
    tracker.close();
    let drain = gw.snapshot().config.server.drain_timeout;
    tracing::info!(open_connections = tracker.len(), drain_timeout = ?drain, "draining");
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            open_connections = tracker.len(),
            "drain timeout reached; closing the rest"
        );
    }
    admin_stop.cancel();
    if let Some((_, task)) = admin_task {
        let _ = task.await;
    }
    anchor.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Keep one timer that is always due within a second.
///
/// Why: when a timer is registered with a deadline earlier than the one the runtime's
/// driver last went to sleep for, tokio wakes the driver through its eventfd (a `write`
/// system call) so that it can sleep for less. Every request registers one (hyper's
/// header-read timeout, the route timeout); under load, each new 10 s header timeout
/// was often earlier than the 30 s route timeouts of the requests in flight, and the
/// gateway made 0.6 eventfd writes per request (strace -c). With a timer always due
/// within the second, no request's timer is ever the earliest, and the driver simply
/// wakes once a second.
async fn timer_anchor() {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before returning, so a signal right after start is not fatal.
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install SIGTERM/SIGINT handlers");
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        shutdown.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::clean_read_only_mappings;

    // Abridged from a real /proc/self/smaps: the code, a relocated read-only section
    // (private copies: `Anonymous` above 0), one whose private copies are in swap, the
    // writable data, another file, the heap.
    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fd:01 1234                       /usr/bin/switchyard
Size:               1024 kB
Rss:                 512 kB
Anonymous:             0 kB
AnonHugePages:         0 kB
Swap:                  0 kB
VmFlags: rd mr mw me dw sd
55d0a0100000-55d0a0a00000 r-xp 00100000 fd:01 1234                       /usr/bin/switchyard
Size:               9216 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me dw sd
55d0a0a00000-55d0a0a40000 r--p 00a00000 fd:01 1234                       /usr/bin/switchyard
Size:                256 kB
Anonymous:           200 kB
Swap:                  0 kB
55d0a0a40000-55d0a0a80000 r--p 00a40000 fd:01 1234                       /usr/bin/switchyard
Anonymous:             0 kB
Swap:                256 kB
55d0a0a80000-55d0a0a81000 rw-p 00a80000 fd:01 1234                       /usr/bin/switchyard
Anonymous:             0 kB
Swap:                  0 kB
7f0000000000-7f0000010000 r-xp 00000000 fd:01 99                         /usr/lib/libc.so.6
Anonymous:             0 kB
Swap:                  0 kB
7f0000020000-7f0000030000 r--p 00000000 fd:01 1234                       /usr/bin/switchyard (deleted)
Anonymous:             0 kB
Swap:                  0 kB
55d0a1000000-55d0a1100000 rw-p 00000000 00:00 0                          [heap]
Anonymous:          1024 kB
Swap:                  0 kB
";

    #[test]
    fn only_clean_read_only_mappings_of_the_binary_are_chosen() {
        assert_eq!(
            clean_read_only_mappings(SMAPS, Some("/usr/bin/switchyard")),
            vec![
                (0x55d0a0000000, 0x55d0a0100000),
                (0x55d0a0100000, 0x55d0a0a00000)
            ]
        );
    }

    #[test]
    fn nothing_is_chosen_without_a_path_or_without_both_lines() {
        assert_eq!(clean_read_only_mappings(SMAPS, None), vec![]);
        // An older kernel's or an unexpected format: nothing is known clean.
        for missing in ["Anonymous:", "Swap:"] {
            let without: String = SMAPS
                .lines()
                .filter(|l| !l.starts_with(missing))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(
                clean_read_only_mappings(&without, Some("/usr/bin/switchyard")),
                vec![],
                "without {missing}"
            );
        }
        assert_eq!(clean_read_only_mappings("", Some("/x")), vec![]);
        // A line that is neither a field nor a mapping ends the mapping before it.
        assert_eq!(
            clean_read_only_mappings(
                "0-10 r-xp 0 0 0 /x\nAnonymous: 0 kB\nzz-10 r-xp 0 0 0 /x\nSwap: 0 kB\n",
                Some("/x")
            ),
            vec![]
        );
        assert_eq!(
            clean_read_only_mappings(
                "0-10 r-xp 0 0 0 /x\nAnonymous: 0 kB\nSwap: 0 kB\n",
                Some("/x")
            ),
            vec![(0, 0x10)]
        );
    }
}
