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
    let (hash, names_files) = (current.hash.clone(), current.names_files);
    let loaded =
        match crate::background::low_priority(move || read_if_changed(&file, &hash, names_files))
            .await
        {
            Ok(l) => l,
            Err(e) => {
                gw.metrics.reload("rejected");
                tracing::error!(error = %e, "config reload failed; keeping the running table");
                return Outcome::Rejected(e.to_string());
            }
        };
    match loaded {
        Ok(None) => Outcome::Unchanged,
        Ok(Some(loaded)) => {
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

/// Read and parse the file at `path`; `Ok(None)` when it is the table running now
/// (`hash`, `names_files`: [`Snapshot`](crate::snapshot::Snapshot)'s). Runs on the build
/// thread, which therefore also frees an unchanged table: freed on the runtime's worker,
/// its 10,000 routes held every request in flight for about 0.7 ms.
fn read_if_changed(
    path: &Path,
    hash: &str,
    names_files: bool,
) -> Result<Option<config::Loaded>, LoadError> {
    let src = std::fs::read_to_string(path).map_err(LoadError::Io)?;
    // The same text is the same table unless it names other files: key files, whose
    // contents count too, or certificates, which a parse checks (a broken pair rejects
    // the reload, as when the text changed). Otherwise no need to parse it.
    if !names_files && config::source_hash(&src) == hash {
        return Ok(None);
    }
    match config::parse_at(&src, config::config_dir(path)) {
        Ok(loaded) if loaded.hash == hash => Ok(None),
        Ok(loaded) => Ok(Some(loaded)),
        Err(errors) => Err(LoadError::Invalid { src, errors }),
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
                    // This reload reads the file after every change already reported:
                    // those events need no reload of their own. (Whoever edits the file
                    // and then sends SIGHUP caused both.)
                    while rx.try_recv().is_ok() {}
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

    const TABLE: &str = "[services.s]\nendpoints = [\"127.0.0.1:1\"]\n\
        [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\n";

    /// An auth policy whose HS256 secret is the key file `hs.secret` next to the table.
    const HS256_AUTH: &str = "auth = \"a\"\n[auth.a]\nalgorithms = [\"HS256\"]\n\
        secret_file = \"hs.secret\"\n";

    /// The hash and `names_files` of the file at `path`, as if it were running.
    fn running(path: &Path) -> (String, bool) {
        let l = config::load(path).expect("valid");
        (l.hash, l.names_files)
    }

    #[test]
    fn an_unchanged_text_is_not_parsed_again_and_a_changed_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, TABLE).unwrap();
        let (hash, names_files) = running(&path);
        assert!(!names_files);
        assert!(matches!(read_if_changed(&path, &hash, false), Ok(None)));
        // Not parsed: text that would not even validate, but whose hash is the running
        // one's, is taken as unchanged.
        std::fs::write(&path, "[[routes]]\n").unwrap();
        let bad = config::source_hash("[[routes]]\n");
        assert!(matches!(read_if_changed(&path, &bad, false), Ok(None)));
        // Any other text is parsed: rejected when invalid, new when valid.
        assert!(matches!(
            read_if_changed(&path, &hash, false),
            Err(LoadError::Invalid { .. })
        ));
        std::fs::write(&path, format!("{TABLE}# edited\n")).unwrap();
        let new = read_if_changed(&path, &hash, false)
            .expect("valid")
            .expect("changed");
        assert_ne!(new.hash, hash);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            read_if_changed(&path, &hash, false),
            Err(LoadError::Io(_))
        ));
    }

    /// The table at `path` names a key file: while that file is the same, a reload finds
    /// the table unchanged (parsed, then dropped on this thread); after `rotate` writes
    /// a new key (the text the same, or changed too), it finds a new table.
    fn a_new_key_is_a_new_table(path: &Path, rotate: impl FnOnce()) {
        let (hash, names_files) = running(path);
        assert!(names_files);
        assert!(matches!(read_if_changed(path, &hash, true), Ok(None)));
        rotate();
        let new = read_if_changed(path, &hash, true)
            .expect("valid")
            .expect("changed");
        assert_ne!(new.hash, hash);
    }

    #[test]
    fn a_table_that_names_key_files_is_parsed_again_and_sees_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        let secret = dir.path().join("hs.secret");
        std::fs::write(&secret, [b'a'; 40]).unwrap();
        std::fs::write(&path, format!("{TABLE}{HS256_AUTH}")).unwrap();
        a_new_key_is_a_new_table(&path, || std::fs::write(&secret, [b'b'; 40]).unwrap());
    }

    #[test]
    fn bytes_moved_from_the_text_into_a_key_file_are_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        let secret = dir.path().join("hs.secret");
        let text = format!("{TABLE}{HS256_AUTH}# x");
        std::fs::write(&path, format!("{text}y")).unwrap();
        std::fs::write(&secret, [b'a'; 40]).unwrap();
        // The same bytes in a row, the last one now in the key file.
        a_new_key_is_a_new_table(&path, || {
            std::fs::write(&path, &text).unwrap();
            std::fs::write(&secret, [&b"y"[..], &[b'a'; 40]].concat()).unwrap();
        });
    }

    #[test]
    fn a_rotated_branch_gate_key_is_a_new_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        let key = dir.path().join("branch.key");
        std::fs::write(&key, "0123456789abcdef-one").unwrap();
        std::fs::write(
            &path,
            format!(
                "[branches]\nheader = \"x-branch\"\ngate = \"hmac\"\nhmac_key_file = \"{}\"\n{TABLE}",
                key.display()
            ),
        )
        .unwrap();
        a_new_key_is_a_new_table(&path, || {
            std::fs::write(&key, "0123456789abcdef-two").unwrap()
        });
    }

    #[test]
    fn a_table_with_certificates_is_parsed_again_and_a_broken_pair_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
        std::fs::write(
            &path,
            format!("{TABLE}[[tls.certificates]]\ncert = \"tls.crt\"\nkey = \"tls.key\"\n"),
        )
        .unwrap();
        let (hash, names_files) = running(&path);
        assert!(names_files);
        assert!(matches!(read_if_changed(&path, &hash, true), Ok(None)));
        // The text is the same; the key no longer is a key.
        std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
        match read_if_changed(&path, &hash, true) {
            Err(LoadError::Invalid { errors, .. }) => {
                assert!(errors.to_string().contains("private key"), "{errors}")
            }
            other => panic!("not rejected: {:?}", other.map(|l| l.map(|l| l.hash))),
        }
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
