//! Hot reload: SIGHUP, or a change in the config file's directory, builds a complete new
//! snapshot on the side and swaps it in. A file that does not validate is rejected with
//! its errors logged and the running table kept.
//!
//! The directory is watched, not the file: a Kubernetes ConfigMap update replaces a
//! `..data` symlink next to the file, and editors often write a new file and rename it
//! over the old one; neither touches the old inode. Every event in the directory leads
//! to a re-read; an unchanged file (same hash) is a no-op.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{self, LoadError};
use crate::gateway::Gateway;
use crate::snapshot::Snapshot;

/// Why a reload did not swap in a new table.
#[derive(Debug)]
pub enum Outcome {
    /// The new table is live.
    Reloaded { hash: String },
    /// The file is the one already running.
    Unchanged,
    /// The file was unreadable or invalid; the old table stays.
    Rejected(String),
}

/// Re-read `path` and swap in its snapshot when it is valid and different.
pub async fn reload(gw: &Gateway, path: &Path) -> Outcome {
    let current = gw.snapshot();
    let started = std::time::Instant::now();
    // Parsing and validating a large table takes milliseconds of CPU: off the runtime's
    // worker threads and at a lower priority, so requests keep being served meanwhile.
    let file = path.to_path_buf();
    let loaded = match crate::background::low_priority(move || config::load(&file)).await {
        Ok(l) => l,
        Err(e) => {
            gw.metrics.reload("rejected");
            tracing::error!(error = %e, "config reload failed; keeping the running table");
            return Outcome::Rejected(e.to_string());
        }
    };
    match loaded {
        Ok(loaded) if loaded.hash == current.hash => Outcome::Unchanged,
        Ok(loaded) => {
            if loaded.config.listen != current.config.listen {
                tracing::warn!("[listen] changed: new addresses take effect after a restart");
            }
            for w in &loaded.warnings {
                tracing::warn!(warning = %w, "config warning");
            }
            let hash = loaded.hash.clone();
            let routes = loaded.config.routes.len();
            let snapshot = Snapshot::build(loaded, &gw.registry).await;
            gw.store(snapshot);
            gw.reload_certificates();
            gw.metrics.reload("success");
            let build_ms = started.elapsed().as_secs_f64() * 1e3;
            tracing::info!(%hash, routes, build_ms, "config reloaded");
            Outcome::Reloaded { hash }
        }
        Err(e) => {
            let detail = match &e {
                LoadError::Io(io) => io.to_string(),
                LoadError::Invalid { src, errors } => {
                    errors.render(&path.display().to_string(), src)
                }
            };
            gw.metrics.reload("rejected");
            tracing::error!(error = %detail, "config reload rejected; keeping the running table");
            Outcome::Rejected(detail)
        }
    }
}

/// Does this directory event possibly change the config file? Reads (`Access`, which
/// our own reload causes) never do; neither do files other than the config file and
/// the kubelet's `..data`-style entries.
fn is_relevant(event: &notify::Event, file_name: Option<&std::ffi::OsStr>) -> bool {
    if matches!(event.kind, notify::EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|p| match p.file_name() {
        Some(name) => Some(name) == file_name || name.to_string_lossy().starts_with(".."),
        None => true,
    })
}

/// Watch for SIGHUP and file changes until `shutdown`.
pub fn spawn(
    gw: Arc<Gateway>,
    path: PathBuf,
    shutdown: CancellationToken,
    rewatch_certs: mpsc::UnboundedSender<()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().map(|n| n.to_os_string());
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && is_relevant(&event, file_name.as_deref())
        {
            let _ = tx.send(());
        }
    })
    .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|_| w));
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload on SIGHUP only");
            None
        }
    };
    // Registered before this function returns: a SIGHUP that arrives before the task
    // first runs must not hit the default action (terminate).
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    };
    tokio::spawn(async move {
        let _watcher = watcher; // dropped (and the watch removed) when this task ends
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    // SIGHUP also re-reads the certificates when the config is unchanged.
                    if let Outcome::Unchanged = reload(&gw, &path).await {
                        gw.reload_certificates();
                    }
                    let _ = rewatch_certs.send(());
                    continue;
                }
                Some(()) = rx.recv() => {
                    // Let a burst of events (write + rename + chmod) settle into one reload.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while rx.try_recv().is_ok() {}
                }
            }
            if let Outcome::Reloaded { .. } = reload(&gw, &path).await {
                let _ = rewatch_certs.send(());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, EventKind, ModifyKind, RenameMode};

    fn ev(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn our_own_reads_do_not_trigger_a_reload() {
        let name = Some(std::ffi::OsStr::new("routes.toml"));
        assert!(!is_relevant(
            &ev(EventKind::Access(AccessKind::Any), "/etc/sy/routes.toml"),
            name
        ));
    }

    #[test]
    fn only_the_config_file_and_kubelet_entries_count() {
        let name = Some(std::ffi::OsStr::new("routes.toml"));
        assert!(is_relevant(
            &ev(EventKind::Modify(ModifyKind::Any), "/etc/sy/routes.toml"),
            name
        ));
        assert!(is_relevant(
            &ev(EventKind::Create(CreateKind::Any), "/etc/sy/..data"),
            name
        ));
        assert!(is_relevant(
            &ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/etc/sy/routes.toml"
            ),
            name
        ));
        assert!(!is_relevant(
            &ev(EventKind::Modify(ModifyKind::Any), "/etc/sy/other.log"),
            name
        ));
    }
}
