//! The timer behind the HTTP/1 header-read timeout: one tokio timer per connection,
//! reused by every request head on it.
//!
//! Why: before each request head on a keep-alive connection, hyper 1.12
//! (`proto/h1/conn.rs`, `Conn::poll_read_head`) asks its timer for a new
//! `sleep_until(now + header_read_timeout)`, polls it while the head is incomplete and
//! drops it once the head is parsed. With hyper-util's `TokioTimer` every request
//! therefore creates a `tokio::time::Sleep`, files it in the runtime's timer wheel on
//! the first poll and takes it out again on drop, each time under the time driver's
//! lock. [`ConnTimer`] keeps one `Sleep` per connection instead: the head read borrows
//! it and gives it back when hyper drops it, and moving its deadline later is
//! `Sleep::reset`, which tokio does without touching the wheel (it records the new
//! deadline; the driver re-files the entry when the old one comes up). The cut-off is
//! as exact as with `TokioTimer` (tokio's millisecond ticks).
//!
//! Measured with `PROXIES=switchyard benches/e2e/instructions.sh` (GET /, 16 keep-alive
//! connections, one worker, user-space instructions per request): 29,543 with
//! `TokioTimer`, 29,188 with this timer, 28,056 with no header-read timeout at all
//! (medians of 3, 5 and 3 runs). The timer wheel is now touched once per request (the
//! route timeout) instead of twice; on the gateway's own HTTP/1 reader (`server::h1`)
//! the route timeout has a reused timer too (`resilience::deadline`). Most of what is
//! left is hyper's, not the timer's: with a header-read timeout set, hyper makes one more dispatch pass after each answer
//! to start the next head read (`State::try_keep_alive` sets `notify_read`), which no
//! `Timer` can avoid.
//!
//! Between two heads (a request in flight) the borrowed `Sleep` rests in the
//! connection's slot with its last deadline, so a request that outlasts the
//! header-read timeout sees one spurious wake-up of its connection task; nothing else
//! follows from it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// Where the connection's tokio `Sleep` rests while no head is being read.
type Slot = Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>;

/// A [`hyper::rt::Timer`] for one HTTP/1 server connection: build one per connection.
///
/// Sharing one between connections stays correct (a head read that finds the slot
/// empty, because another connection's head read has the `Sleep`, makes its own), it
/// only gives up the saving.
#[derive(Default)]
pub struct ConnTimer {
    slot: Slot,
}

impl Timer for ConnTimer {
    /// Not used by hyper's HTTP/1 server; a plain tokio sleep.
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(ConnSleep {
            sleep: Some(Box::pin(tokio::time::sleep(duration))),
            home: None,
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let parked = self
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let sleep = match parked {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline.into());
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline.into())),
        };
        Box::pin(ConnSleep {
            sleep: Some(sleep),
            home: Some(Arc::clone(&self.slot)),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<ConnSleep>() {
            Some(mine) => {
                if let Some(inner) = &mut mine.get_mut().sleep {
                    inner.as_mut().reset(new_deadline.into());
                }
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// One head read's timeout: the connection's `Sleep`, lent until this is dropped.
struct ConnSleep {
    /// `None` only inside `drop`.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The slot to give `sleep` back to; `None` for [`Timer::sleep`].
    home: Option<Slot>,
}

impl Future for ConnSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.get_mut().sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Sleep for ConnSleep {}

impl Drop for ConnSleep {
    fn drop(&mut self) {
        if let (Some(home), Some(sleep)) = (self.home.take(), self.sleep.take()) {
            let mut slot = home.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some(sleep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_ms(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    fn parked(t: &ConnTimer) -> bool {
        t.slot.lock().unwrap().is_some()
    }

    #[tokio::test]
    async fn wakes_when_the_deadline_passes() {
        let t = ConnTimer::default();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(20), t.sleep_until(in_ms(50)))
            .await
            .expect("not woken");
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    /// The reused `Sleep` stays filed in the wheel at its old deadline; a later
    /// deadline must not end the next head read early.
    #[tokio::test]
    async fn a_reused_sleep_with_a_later_deadline_is_not_ready_early() {
        let t = ConnTimer::default();
        let mut first = t.sleep_until(in_ms(30));
        assert!(futures_poll(&mut first).is_pending());
        drop(first);
        assert!(parked(&t));
        let started = Instant::now();
        let second = t.sleep_until(in_ms(300));
        assert!(!parked(&t), "the head read borrows the parked sleep");
        tokio::time::timeout(Duration::from_secs(20), second)
            .await
            .expect("not woken");
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "woke early"
        );
    }

    #[tokio::test]
    async fn a_reused_sleep_with_an_earlier_deadline_wakes_on_time() {
        let t = ConnTimer::default();
        let mut first = t.sleep_until(in_ms(60_000));
        assert!(futures_poll(&mut first).is_pending());
        drop(first);
        tokio::time::timeout(Duration::from_secs(20), t.sleep_until(in_ms(50)))
            .await
            .expect("not woken");
    }

    #[tokio::test]
    async fn reset_moves_the_deadline() {
        let t = ConnTimer::default();
        let mut s = t.sleep_until(in_ms(60_000));
        assert!(futures_poll(&mut s).is_pending());
        t.reset(&mut s, in_ms(50));
        tokio::time::timeout(Duration::from_secs(20), s)
            .await
            .expect("not woken");
    }

    /// Two head reads at once (a timer shared by mistake): each has its own deadline.
    #[tokio::test]
    async fn concurrent_sleeps_keep_their_own_deadlines() {
        let t = ConnTimer::default();
        let long = t.sleep_until(in_ms(60_000));
        let short = t.sleep_until(in_ms(50));
        tokio::time::timeout(Duration::from_secs(20), short)
            .await
            .expect("not woken");
        drop(long);
        assert!(parked(&t));
    }

    #[tokio::test]
    async fn nothing_outlives_the_connection() {
        let t = ConnTimer::default();
        let slot = Arc::downgrade(&t.slot);
        let mut s = t.sleep_until(in_ms(60_000));
        assert!(futures_poll(&mut s).is_pending());
        drop(t);
        assert!(
            slot.upgrade().is_some(),
            "the head read still holds the slot"
        );
        drop(s);
        assert!(slot.upgrade().is_none(), "slot (and its Sleep) leaked");
    }

    fn futures_poll(s: &mut Pin<Box<dyn Sleep>>) -> Poll<()> {
        let waker = std::task::Waker::noop();
        s.as_mut().poll(&mut Context::from_waker(waker))
    }
}
