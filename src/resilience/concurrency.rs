//! Per-service concurrency limit with a bounded waiting room: beyond
//! `max_in_flight + max_pending` requests, the next one is refused at once (503 with
//! `Retry-After`) instead of queueing into a timeout: load shedding, so an overloaded
//! service gets less traffic, not more.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limit of one service.
#[derive(Debug)]
pub struct Concurrency {
    slots: Arc<Semaphore>,
    waiting: AtomicU32,
    max_pending: u32,
}

impl Concurrency {
    pub fn new(max_in_flight: u32, max_pending: u32) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_in_flight as usize)),
            waiting: AtomicU32::new(0),
            max_pending,
        }
    }

    /// A slot, waiting in the bounded queue if needed; `None`: shed this request. The
    /// caller bounds the wait with the request's timeout.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        let queued = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < self.max_pending).then_some(w + 1)
            })
            .is_ok();
        if !queued {
            return None;
        }
        let permit = self.slots.clone().acquire_owned().await.ok();
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn beyond_slots_and_queue_requests_are_shed() {
        let c = Arc::new(Concurrency::new(2, 1));
        let a = c.acquire().await.unwrap();
        let _b = c.acquire().await.unwrap();
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.acquire().await.is_some() });
        // The waiter takes the one queue place; wait until it holds it.
        while c.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(c.acquire().await.is_none(), "slots and queue full: shed");
        drop(a);
        assert!(
            waiter.await.unwrap(),
            "the queued request gets the freed slot"
        );
    }
}
