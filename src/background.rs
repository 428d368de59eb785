//! CPU-heavy work that is not on the request path: parsing a reloaded table and
//! building its router. It runs on a thread of its own at a lower scheduling priority
//! (about nice 10), so that on a busy core the request-serving threads win and a reload of a
//! large table does not show up in the p99 of the requests being served; on an idle
//! core it runs at full speed.

/// Run `f` on a low-priority thread and wait for its result.
pub async fn low_priority<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn_lowered("switchyard-build", move || {
        let _ = tx.send(f());
    })
    .map_err(|e| format!("cannot start a build thread: {e}"))?;
    rx.await
        .map_err(|_| "the build thread panicked".to_string())
}

/// Drop `old` on a low-priority thread once nothing else holds it. A replaced snapshot
/// of a large table is hundreds of thousands of allocations: freed by whichever request
/// happened to hold it last, it stalled that request's worker for milliseconds (a p99
/// spike on every reload). After an `ArcSwap` swap no new holder can appear, so the
/// count only goes down; it is checked every 10 ms, for at most a minute (a request
/// that holds the snapshot longer frees it itself).
pub fn release<T: Send + Sync + 'static>(old: std::sync::Arc<T>) {
    let spawned = spawn_lowered("switchyard-release", move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::sync::Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(old);
    });
    // No thread (resource limits): the snapshot is freed where it is dropped, as before.
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "cannot start a release thread");
    }
}

/// Run `f` on a new thread named `name`, at the lower priority.
fn spawn_lowered(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lower_this_thread();
            f();
        })
        .map(drop)
}

/// About nice 10 under the normal (CFS) policy: `thread-priority` maps 0..=99 onto nice
/// 19..=-20, so 25 is nice 9. A failure leaves the priority as it was, which is harmless.
fn lower_this_thread() {
    use thread_priority::{ThreadPriority, ThreadPriorityValue, set_current_thread_priority};
    if let Ok(v) = ThreadPriorityValue::try_from(25u8) {
        let _ = set_current_thread_priority(ThreadPriority::Crossplatform(v));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_released_value_is_dropped_on_another_thread_after_its_last_holder() {
        struct Probe(std::sync::mpsc::Sender<std::thread::ThreadId>);
        impl Drop for Probe {
            fn drop(&mut self) {
                let _ = self.0.send(std::thread::current().id());
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let held = std::sync::Arc::new(Probe(tx));
        let holder = held.clone();
        super::release(held);
        // Still held here: not dropped yet.
        assert!(rx.try_recv().is_err());
        drop(holder);
        let on = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("dropped");
        assert_ne!(on, std::thread::current().id());
    }

    #[tokio::test]
    async fn the_result_comes_back() {
        assert_eq!(super::low_priority(|| 6 * 7).await, Ok(42));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_thread_runs_at_a_lower_priority() {
        // /proc/thread-self/stat field 19 is the thread's nice value.
        let nice = super::low_priority(|| {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            rest.split(' ').nth(16).unwrap().parse::<i32>().unwrap()
        })
        .await
        .unwrap();
        assert!(nice >= 5, "nice {nice}");
    }
}
