//! A stage task's turn on a Tokio worker: after a long run of items, the
//! task it woke starts a turn of its own instead of taking the rest of
//! this one.
//!
//! Tokio's multi-thread scheduler runs a task woken by the running one
//! next, from the worker's LIFO slot, within the same turn (one coop
//! budget of 128 units). After three such hand-offs in a row it stops:
//! the next task woken goes to the run queue, and a worker that sleeps is
//! woken to steal it. A stage task and whoever feeds its queue wake each
//! other once per queue's worth of items (one drains it, the other fills
//! it again), so on a multi-thread runtime every other queue's worth woke
//! the idle worker (a syscall and a thread's wake-up, about 15 µs on the
//! 2-core machine of docs/benchmarks.md), which took one of the two tasks
//! and went back to sleep as soon as that task waited again.
//!
//! So a replica that took at least a turn's worth of items since it last
//! waited spends what is left of its budget as it goes to wait, as the
//! same number of receives from a Tokio channel would have: the worker
//! then moves the task the replica woke from its LIFO slot to the back of
//! its run queue, without waking another worker, and runs it next, in a
//! new turn. Nothing else changes: the replica itself was about to wait,
//! and it is polled with a fresh budget when it is woken. A replica
//! taking few items at a time (a slow stage, a trickle of input) spends
//! nothing.

use std::task::{Context, Poll};

use tokio::task::coop;

/// Tokio's budget per turn: 128 units (`tokio::task::coop`).
const TURN: usize = 128;

/// Whether a replica took a turn's worth of items at once since it last
/// waited.
#[derive(Debug, Default)]
pub(crate) struct Turn {
    full: bool,
}

impl Turn {
    /// The replica took a batch of `n` items.
    #[inline]
    pub(crate) fn took(&mut self, n: usize) {
        self.full |= n >= TURN;
    }

    /// The replica is about to wait (its poll returns `Pending`): after a
    /// batch of a turn's worth of items, spends what is left of the task's
    /// budget.
    #[inline]
    pub(crate) fn wait(&mut self, cx: &mut Context<'_>) {
        if std::mem::take(&mut self.full) {
            spend(cx);
        }
    }
}

/// Spends the task's budget down to zero (at most [`TURN`] units; a task
/// polled outside a runtime, or `unconstrained`, has no budget to spend
/// and is left as it was).
#[cold]
fn spend(cx: &mut Context<'_>) {
    for _ in 0..TURN {
        if !coop::has_budget_remaining() {
            return;
        }
        match coop::poll_proceed(cx) {
            // Kept spent: the work it stands for was done.
            Poll::Ready(unit) => unit.made_progress(),
            Poll::Pending => return,
        }
    }
}

#[cfg(all(test, not(genflow_loom)))]
mod tests {
    use std::future::poll_fn;

    use super::*;

    /// Waits with `turn` (once), and tells whether budget is left after.
    async fn wait(turn: &mut Turn) -> bool {
        poll_fn(|cx| {
            turn.wait(cx);
            Poll::Ready(())
        })
        .await;
        coop::has_budget_remaining()
    }

    #[tokio::test]
    async fn a_batch_of_a_turns_worth_spends_the_budget_as_the_replica_waits() {
        let mut turn = Turn::default();
        turn.took(TURN - 1);
        turn.took(TURN - 1);
        assert!(wait(&mut turn).await, "smaller batches spend nothing");
        turn.took(TURN);
        assert!(coop::has_budget_remaining(), "taking spends nothing");
        assert!(!wait(&mut turn).await, "waiting after a full batch spends the rest");
    }

    #[tokio::test]
    async fn each_wait_looks_only_at_the_batches_since_the_last() {
        let mut turn = Turn::default();
        turn.took(TURN);
        assert!(!wait(&mut turn).await);
        // The task's next poll has a fresh budget.
        tokio::task::yield_now().await;
        assert!(coop::has_budget_remaining());
        assert!(wait(&mut turn).await, "no full batch since the last wait");
    }

    #[test]
    fn outside_a_runtime_there_is_nothing_to_spend() {
        let mut turn = Turn::default();
        turn.took(usize::MAX);
        turn.wait(&mut Context::from_waker(futures::task::noop_waker_ref()));
        assert!(coop::has_budget_remaining());
    }
}
