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
    std::thread::Builder::new()
        .name("switchyard-build".into())
        .spawn(move || {
            lower_this_thread();
            let _ = tx.send(f());
        })
        .map_err(|e| format!("cannot start a build thread: {e}"))?;
    rx.await
        .map_err(|_| "the build thread panicked".to_string())
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
