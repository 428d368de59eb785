//! Deadlines on a timer that a connection reuses for one request after another.
//!
//! A `tokio::time::Sleep` made per request is filed in the runtime's timer wheel on its
//! first poll and taken out again when dropped, each time under the time driver's lock:
//! for the route timeout that was about 450 of the 22,000 user-space instructions of a
//! proxied keep-alive request (`benches/e2e/instructions.sh`). An HTTP/1 connection
//! serves one request at a time, so it keeps one `Sleep` for all of them, and the
//! deadline on it is moved lazily: the timer keeps the deadline it has while that is
//! not later than the one wanted, and only when it fires is it checked against the
//! one wanted and moved there (at most once per timeout period, not once per request).
//! The cut-off is as exact as a fresh `Sleep`'s (tokio's millisecond ticks); the cost
//! is a spurious wake-up of the connection's task when an old deadline comes up.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// A connection's reused timer: the [`Sleep`], and whether it holds this task's waker.
///
/// Every poll of a `Sleep` files the task's waker with it again (tokio's
/// `AtomicWaker::register_by_ref`: two atomic read-modify-writes), although the waker
/// filed by the previous poll stays until the timer fires. So once polled, the timer
/// is only looked at (`is_elapsed`, a load) until it has fired. Every move of the
/// timer made here is followed by a poll, so nothing relies on a move keeping the
/// waker (tokio's default timer keeps it; the `tokio_unstable` one may not). For a
/// timer that one task polls: a waker filed by another would not wake it.
pub struct Timer<'a> {
    sleep: Pin<&'a mut Sleep>,
    /// Polled (so this task's waker is filed) since it last fired.
    filed: bool,
}

impl<'a> Timer<'a> {
    pub fn new(sleep: Pin<&'a mut Sleep>) -> Self {
        Self {
            sleep,
            filed: false,
        }
    }

    /// Whether `due` has come. The timer's deadline may be earlier than `due` (an
    /// earlier request's): when it fires before `due` it is moved there and waits
    /// again. Sees to it that `cx` is woken when it fires.
    pub fn passed(&mut self, due: Instant, cx: &mut Context<'_>) -> bool {
        if self.filed && !self.sleep.is_elapsed() {
            return false;
        }
        self.filed = true;
        while self.poll_filing(cx).is_ready() {
            if Instant::now() >= due {
                return true;
            }
            self.sleep.as_mut().reset(due);
        }
        false
    }

    /// A poll of the `Sleep` that files `cx`'s waker whatever the task's budget:
    /// with the budget spent, `Sleep::poll` answers `Pending` before it files the
    /// waker (tokio's cooperative scheduling), and `filed` would then be a lie that
    /// leaves the task asleep when the timer fires.
    fn poll_filing(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        pin!(tokio::task::unconstrained(self.sleep.as_mut())).poll(cx)
    }

    /// `fut`'s output, or `None` if `due` comes first.
    pub async fn within<F: Future>(
        &mut self,
        due: Instant,
        mut fut: Pin<&mut F>,
    ) -> Option<F::Output> {
        // A later deadline left by a route with a longer timeout would fire too late.
        if self.sleep.deadline() > due {
            self.sleep.as_mut().reset(due);
            // Kept by tokio, but polled again all the same: this is rare.
            self.filed = false;
        }
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if self.passed(due, cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// The deadline the timer holds now.
    #[cfg(test)]
    pub fn deadline(&self) -> Instant {
        self.sleep.deadline()
    }
}

#[cfg(test)]
mod tests {
    use std::future::pending;
    use std::pin::pin;
    use std::time::Duration;

    use super::*;

    /// Far above what any of these waits takes, so that a wrong answer fails the
    /// test instead of hanging it.
    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn an_answer_before_the_deadline_is_returned() {
        let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
        let mut timer = Timer::new(sleep.as_mut());
        let due = Instant::now() + LONG;
        let answer = pin!(async { 7 });
        assert_eq!(timer.within(due, answer).await, Some(7));
    }

    #[tokio::test]
    async fn an_earlier_deadline_left_on_the_timer_does_not_end_the_wait_early() {
        // The timer fires at once (an earlier request's deadline); the wait goes on
        // to `due`.
        let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
        let mut timer = Timer::new(sleep.as_mut());
        let start = Instant::now();
        let due = start + Duration::from_millis(150);
        let out = tokio::time::timeout(LONG, timer.within(due, pin!(pending::<()>())))
            .await
            .expect("the deadline ends the wait");
        assert_eq!(out, None);
        assert!(Instant::now() >= due, "returned before its deadline");
        assert_eq!(timer.deadline(), due, "the timer was moved to the deadline");
    }

    #[tokio::test]
    async fn a_timer_looked_at_between_polls_still_ends_the_wait() {
        // The task is woken over and over by its own future, so the timer is looked
        // at (not polled) many times before it fires.
        let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
        let mut timer = Timer::new(sleep.as_mut());
        let due = Instant::now() + Duration::from_millis(100);
        let busy = pin!(async {
            loop {
                tokio::task::yield_now().await;
            }
        });
        let out = tokio::time::timeout(LONG, timer.within(due, busy))
            .await
            .expect("the deadline ends the wait");
        assert_eq!(out, None::<()>);
        assert!(Instant::now() >= due, "returned before its deadline");
    }

    #[tokio::test]
    async fn a_timer_first_polled_with_the_task_budget_spent_still_wakes_the_task() {
        use tokio::task::coop::poll_proceed;
        // Never polled, and moved earlier by `within` before its first poll: nothing
        // has filed a waker with it yet.
        let mut sleep = pin!(tokio::time::sleep(Duration::from_secs(3600)));
        let mut timer = Timer::new(sleep.as_mut());
        let due = Instant::now() + Duration::from_millis(100);
        // Spends the task's budget on its first poll, just before the timer's.
        let mut first = true;
        let spend = pin!(poll_fn(|cx| {
            if std::mem::take(&mut first) {
                while let Poll::Ready(unit) = poll_proceed(cx) {
                    unit.made_progress();
                }
            }
            Poll::<()>::Pending
        }));
        // Without the timer's wake-up the task is only woken by the outer timeout's
        // (which then finds the deadline passed): the time taken tells them apart.
        let out = tokio::time::timeout(Duration::from_secs(10), timer.within(due, spend)).await;
        assert_eq!(out, Ok(None));
        let now = Instant::now();
        assert!(now >= due, "returned before its deadline");
        assert!(
            now < due + Duration::from_secs(5),
            "woken {:?} after the deadline: not by the timer",
            now - due
        );
    }

    #[tokio::test]
    async fn a_later_deadline_left_on_the_timer_is_moved_earlier() {
        // A route with a long timeout went first; this one's deadline is sooner.
        let mut sleep = pin!(tokio::time::sleep(Duration::from_secs(3600)));
        let mut timer = Timer::new(sleep.as_mut());
        let due = Instant::now() + Duration::from_millis(50);
        let out = tokio::time::timeout(LONG, timer.within(due, pin!(pending::<()>())))
            .await
            .expect("the sooner deadline ends the wait, not the hour left on the timer");
        assert_eq!(out, None);
        assert!(Instant::now() >= due);
    }

    #[tokio::test]
    async fn one_timer_serves_requests_in_turn_and_is_not_moved_for_each() {
        let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
        let mut timer = Timer::new(sleep.as_mut());
        let mut first_due = None;
        for i in 0..3 {
            // Each answer takes a moment, so the timer is polled and stays filed.
            let due = Instant::now() + LONG;
            first_due.get_or_insert(due);
            let answer = pin!(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                i
            });
            assert_eq!(timer.within(due, answer).await, Some(i));
        }
        // The later deadlines of requests 2 and 3 did not move it: it still holds the
        // first request's, and would be moved only when that comes up.
        assert_eq!(Some(timer.deadline()), first_due);
        let due = Instant::now() + Duration::from_millis(20);
        let out = tokio::time::timeout(LONG, timer.within(due, pin!(pending::<()>())))
            .await
            .expect("the deadline ends the wait");
        assert_eq!(out, None);
    }
}
