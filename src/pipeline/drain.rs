//! When every replica of a stage has drained.
//!
//! A replica whose input ended runs `finish`, then keeps serving calls and
//! casts until every replica of its stage has done the same: another replica
//! still processing items may call or cast to it, and that must be answered
//! while the stage as a whole still works.

use std::{
    pin::pin,
    sync::atomic::{AtomicUsize, Ordering},
};

use tokio::sync::Notify;

/// Counts the replicas of one stage that have not drained yet.
#[derive(Debug)]
pub(crate) struct StageDrain {
    running: AtomicUsize,
    drained: Notify,
}

impl StageDrain {
    pub(crate) fn new(replicas: usize) -> Self {
        StageDrain { running: AtomicUsize::new(replicas), drained: Notify::new() }
    }

    /// One replica drained (its input ended and `finish` ran, or it failed
    /// for good). Call once per replica.
    pub(crate) fn finished(&self) {
        if self.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }

    /// Waits until every replica has drained.
    ///
    /// Cancel safe.
    pub(crate) async fn wait(&self) {
        loop {
            let mut notified = pin!(self.drained.notified());
            notified.as_mut().enable();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn waits_for_the_last_replica() {
        let drain = Arc::new(StageDrain::new(2));
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.wait().await }
        });
        drain.finished();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drain.finished();
        waiter.await.unwrap();
        // Once drained, waiting returns at once.
        drain.wait().await;
    }
}
