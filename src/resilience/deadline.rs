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
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// Whether `due` has come, on `timer`, whose deadline may be earlier than `due` (an
/// earlier request's): when it fires before `due` it is moved there and waits again.
/// Registers `cx` to be woken when it fires.
pub fn passed(mut timer: Pin<&mut Sleep>, due: Instant, cx: &mut Context<'_>) -> bool {
    while timer.as_mut().poll(cx).is_ready() {
        if Instant::now() >= due {
            return true;
        }
        timer.as_mut().reset(due);
    }
    false
}

/// `fut`'s output, or `None` if `due` comes first, timed on the reused `timer`.
pub async fn within<F: Future>(
    mut timer: Pin<&mut Sleep>,
    due: Instant,
    mut fut: Pin<&mut F>,
) -> Option<F::Output> {
    // A later deadline left by a route with a longer timeout would fire too late.
    if timer.deadline() > due {
        timer.as_mut().reset(due);
    }
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if passed(timer.as_mut(), due, cx) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
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
        let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
        let due = Instant::now() + LONG;
        let answer = pin!(async { 7 });
        assert_eq!(within(timer.as_mut(), due, answer).await, Some(7));
    }

    #[tokio::test]
    async fn an_earlier_deadline_left_on_the_timer_does_not_end_the_wait_early() {
        // The timer fires at once (an earlier request's deadline); the wait goes on
        // to `due`.
        let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
        let start = Instant::now();
        let due = start + Duration::from_millis(150);
        let out = tokio::time::timeout(LONG, within(timer.as_mut(), due, pin!(pending::<()>())))
            .await
            .expect("the deadline ends the wait");
        assert_eq!(out, None);
        assert!(Instant::now() >= due, "returned before its deadline");
        assert_eq!(timer.deadline(), due, "the timer was moved to the deadline");
    }

    #[tokio::test]
    async fn a_later_deadline_left_on_the_timer_is_moved_earlier() {
        // A route with a long timeout went first; this one's deadline is sooner.
        let mut timer = pin!(tokio::time::sleep(Duration::from_secs(3600)));
        let due = Instant::now() + Duration::from_millis(50);
        let out = tokio::time::timeout(LONG, within(timer.as_mut(), due, pin!(pending::<()>())))
            .await
            .expect("the sooner deadline ends the wait, not the hour left on the timer");
        assert_eq!(out, None);
        assert!(Instant::now() >= due);
    }

    #[tokio::test]
    async fn one_timer_serves_requests_in_turn_and_is_not_moved_for_each() {
        let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
        let mut first_due = None;
        for i in 0..3 {
            // Each answer takes a moment, so the timer is polled and stays filed.
            let due = Instant::now() + LONG;
            first_due.get_or_insert(due);
            let answer = pin!(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                i
            });
            assert_eq!(within(timer.as_mut(), due, answer).await, Some(i));
        }
        // The later deadlines of requests 2 and 3 did not move it: it still holds the
        // first request's, and would be moved only when that comes up.
        assert_eq!(Some(timer.deadline()), first_due);
        let due = Instant::now() + Duration::from_millis(20);
        let out = tokio::time::timeout(LONG, within(timer.as_mut(), due, pin!(pending::<()>())))
            .await
            .expect("the deadline ends the wait");
        assert_eq!(out, None);
    }
}
