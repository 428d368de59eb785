//! CPU-heavy work that is not on the request path: parsing a reloaded table, building its
//! router, and freeing the table it replaced. It runs on a thread of its own at a lower
//! scheduling priority (about nice 10), so that on a busy core the request-serving threads
//! win; while a request thread is awake it runs at most a fifth of the time (below), once
//! the first table is built ([`serving`]), and on an idle gateway at full speed
//! ([`track_workers`]).
//!
//! A lower priority alone is not enough. The scheduler takes the core back from a
//! running thread only at its tick (4 ms at the usual 250 Hz), and a nice-10 thread still
//! gets about an eighth of a busy core: in `perf sched timehist` under the reload10k
//! benchmark the build thread ran for exactly 4 ms every 32 ms, and each time every
//! request in flight waited those 4 ms (the p99 went from 2 to 5.4 ms). So these threads
//! also *pace* themselves: [`pace`], called on every allocation (the binary's allocator
//! calls it) and in the few long loops that do not allocate, sleeps for [`PAUSE`] once
//! such a thread has run for [`SLICE`]. On every other thread `pace` is one
//! thread-local read. Allocations that are themselves long (copying and page-faulting a
//! vector of many MiB) cannot be paused in: the table's parse avoids them
//! (`config::pieces`, boxed routes).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

/// How long a background thread runs before it offers the core to others.
pub const SLICE: Duration = Duration::from_micros(200);

/// How long it then sleeps: four slices, so a background thread runs at most a fifth of
/// the time, and a request thread that shares its core waits at most one slice in five.
/// Sleeping, not `sched_yield`: a yield is a no-op when the request thread is between two
/// reads at that moment, and then the thread runs on for a whole tick once the request
/// thread wants the core back.
///
/// The pause was 10 µs. The scheduler then let the build thread take the core back as
/// soon as it woke, while it was owed its share: in `perf sched` on the proxy's core the
/// request thread ran for 17–27 µs between the build's 200 µs runs, for milliseconds at
/// a time, and every request in flight waited that long. Under a reload of 10,000 routes
/// every second (a copy of the e2e reload10k scenario on one core, 10 s, three
/// alternating pairs, with the two fixes in `config::pieces` and `Validator::config`)
/// the p99 went from 2.24–2.47 ms to 1.44–1.52 ms (about 1.0–1.1 ms without reloads);
/// a 200 µs pause gave 1.76–1.78 ms, 400 µs 1.64–1.67 ms. What it costs: on a busy core
/// the thread was held to its nice-10 share anyway (a reload took 0.61 s, now 0.68 s).
/// On an idle gateway there is nothing to pause for ([`AWAKE`]): paced there too, a
/// reload of 10,000 routes took 0.25–0.28 s instead of 0.05. Start-up's build is not
/// paced (see [`serving`]).
pub const PAUSE: Duration = Duration::from_micros(800);

/// Clock reads are spread out: one per this many calls of [`pace`].
const CALLS_PER_CLOCK_READ: u32 = 32;

thread_local! {
    /// Whether this thread paces itself: the one read every allocation pays.
    static PACED: Cell<bool> = const { Cell::new(false) };
    /// On a paced thread: when its current run began, and the calls since the last
    /// clock read. (These are `const`-initialised and without a destructor, so an
    /// allocator may read them at any point of a thread's life.)
    static RUN: Cell<(Option<Instant>, u32)> = const { Cell::new((None, 0)) };
    /// How many times this thread paused (for tests).
    static PAUSES: Cell<u64> = const { Cell::new(0) };
}

/// Called on every allocation and deallocation (see the binary's allocator, which tests
/// [`is_paced`] first) and in long loops: on a paced background thread that has run for
/// [`SLICE`], pause. Never allocates.
#[inline]
pub fn pace() {
    if is_paced() {
        pace_slow();
    }
}

/// Whether this thread paces itself: the one read every allocation pays.
#[inline]
pub fn is_paced() -> bool {
    PACED.with(Cell::get)
}

#[cold]
fn pace_slow() {
    RUN.with(|run| {
        let (since, calls) = run.get();
        if calls + 1 < CALLS_PER_CLOCK_READ {
            run.set((since, calls + 1));
            return;
        }
        let now = Instant::now();
        match since {
            Some(t) if now.duration_since(t) < SLICE => run.set((since, 0)),
            _ if no_worker_waits() => run.set((Some(Instant::now()), 0)),
            _ => {
                std::thread::sleep(PAUSE);
                PAUSES.with(|p| p.set(p.get() + 1));
                run.set((Some(Instant::now()), 0));
            }
        }
    });
}

/// How many of the runtime's workers (the threads that serve requests) are awake, that
/// is not parked in the runtime's wait for I/O and timers; counted by the hooks that
/// [`track_workers`] installs. A paced thread pauses only while one is awake: on an idle
/// gateway a reload runs at the speed of its CPU time, not at a fifth of it (10,000
/// routes on one idle core: 0.25–0.28 s paced, 0.045–0.066 s now).
///
/// A worker that the kernel has woken but not yet run still counts as parked, and the
/// scheduler does not always preempt the running background thread for it: with the
/// count alone, the p99 of a copy of the e2e reload10k benchmark went from 1.6 to 3.4 ms.
/// So a paced thread that finds no worker awake yields the core once before it goes on
/// (`pace_slow`); the woken worker then runs, and is counted.
static AWAKE: AtomicIsize = AtomicIsize::new(0);

/// Whether [`AWAKE`] counts anything: without a tracked runtime (the library used on its
/// own, tests), a worker may always be waiting.
static TRACKED: AtomicBool = AtomicBool::new(false);

/// Count `builder`'s `workers` in and out of their parks (see [`AWAKE`]). `workers` must
/// be the number of workers the runtime starts: each starts awake, and each park hook is
/// followed by an unpark hook on the same worker.
pub fn track_workers(builder: &mut tokio::runtime::Builder, workers: usize) {
    AWAKE.store(
        isize::try_from(workers).unwrap_or(isize::MAX),
        Ordering::Relaxed,
    );
    TRACKED.store(true, Ordering::Relaxed);
    builder
        .on_thread_park(|| {
            AWAKE.fetch_sub(1, Ordering::Relaxed);
        })
        .on_thread_unpark(|| {
            AWAKE.fetch_add(1, Ordering::Relaxed);
        });
}

/// Whether a worker may be waiting for the core a paced thread holds.
fn workers_may_wait() -> bool {
    !TRACKED.load(Ordering::Relaxed) || AWAKE.load(Ordering::Relaxed) > 0
}

/// Whether no worker waits for this core: none is awake, not even after a yield. A
/// worker that has just been woken and not yet run (the scheduler does not always
/// preempt for it) gets the core in the yield, and then counts itself awake.
fn no_worker_waits() -> bool {
    if workers_may_wait() {
        return false;
    }
    std::thread::yield_now();
    !workers_may_wait()
}

/// Make this thread a paced one (see the module doc).
fn start_pacing() {
    // Timer slack (50 µs by default) would stretch every pause to 60 µs.
    let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000));
    RUN.with(|run| run.set((Some(Instant::now()), 0)));
    PACED.with(|p| p.set(true));
}

/// Run `f` on a low-priority thread and wait for its result. When no thread can be
/// started (resource limits), `f` runs here instead: slower for the requests this thread
/// serves meanwhile, but the work is done. `Err` only when `f` panicked.
pub async fn low_priority<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Shared, so that `f` is still here when the thread is not.
    let job = std::sync::Arc::new(std::sync::Mutex::new(Some(f)));
    let theirs = job.clone();
    let spawned = spawn_lowered("switchyard-build", move || {
        let f = theirs.lock().ok().and_then(|mut f| f.take());
        if let Some(f) = f {
            let _ = tx.send(f());
        }
    });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "cannot start a build thread; building here");
        // A failed spawn drops its closure unrun, so `f` is still in `job`.
        let f = job.lock().ok().and_then(|mut f| f.take());
        let f = f.ok_or_else(|| "the build was lost".to_string())?;
        // As on the thread, a panic is an `Err`, not an unwind through the caller.
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .map_err(|_| "the build panicked".to_string());
    }
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

/// Whether new background threads pace themselves: not until the gateway has built its
/// first table ([`serving`]), which has no requests to make way for. Paced, the start-up
/// build of 10,000 routes took the gateway from 0.08 to 0.13 s to "listening".
static SERVING: AtomicBool = AtomicBool::new(false);

/// Start-up's table is built: background threads started from now on pace themselves.
pub fn serving() {
    SERVING.store(true, Ordering::Relaxed);
}

/// Run `f` on a new thread named `name`, at the lower priority, paced once the gateway
/// is [`serving`].
fn spawn_lowered(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lower_this_thread();
            if SERVING.load(Ordering::Relaxed) {
                start_pacing();
            }
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

    #[test]
    fn only_background_threads_pause_and_they_do_after_a_slice() {
        use std::time::{Duration, Instant};
        // Calls `pace` for `run` and returns how many times this thread paused.
        fn busy(run: Duration) -> u64 {
            let before = super::PAUSES.with(std::cell::Cell::get);
            let start = Instant::now();
            while start.elapsed() < run {
                super::pace();
            }
            super::PAUSES.with(std::cell::Cell::get) - before
        }
        // Request threads never pause.
        assert_eq!(busy(Duration::from_millis(20)), 0);
        super::serving();
        // A background thread pauses; 20 ms is 100 slices, so at least one even on a
        // machine so busy that this thread ran for only a few of them.
        let (tx, rx) = std::sync::mpsc::channel();
        super::spawn_lowered("pace-test", move || {
            let _ = tx.send(busy(Duration::from_millis(20)));
        })
        .unwrap();
        let paused = rx.recv_timeout(Duration::from_secs(20)).expect("result");
        assert!(paused >= 1, "{paused}");

        // With the runtime's workers counted, as the binary counts them: while the only
        // worker is parked, a background thread runs on; while it is awake, it pauses.
        let mut builder = tokio::runtime::Builder::new_current_thread();
        super::track_workers(&mut builder, 1);
        let runtime = builder.build().unwrap();
        let parked = runtime.block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            super::spawn_lowered("pace-test-parked", move || {
                // Until the worker has parked in `rx.await` below.
                while super::AWAKE.load(super::Ordering::Relaxed) > 0 {
                    std::thread::yield_now();
                }
                let _ = tx.send(busy(Duration::from_millis(20)));
            })
            .unwrap();
            rx.await.expect("result")
        });
        let awake = runtime.block_on(async {
            let (tx, rx) = std::sync::mpsc::channel();
            super::spawn_lowered("pace-test-awake", move || {
                let _ = tx.send(busy(Duration::from_millis(20)));
            })
            .unwrap();
            // No await: the worker stays awake until the result is in.
            loop {
                match rx.try_recv() {
                    Ok(paused) => break paused,
                    Err(std::sync::mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(e) => panic!("{e}"),
                }
            }
        });
        super::TRACKED.store(false, super::Ordering::Relaxed);
        assert_eq!(parked, 0);
        assert!(awake >= 1, "{awake}");
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
