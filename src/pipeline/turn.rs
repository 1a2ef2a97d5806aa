//! A stage task's turn on a Tokio worker: when the task that fills its
//! queue is quick next to it, that task starts a turn of its own on the
//! same worker instead of waking an idle one.
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
//! Two tasks that take turns gain nothing from a second worker when one
//! of them does little: the queue fills in a fraction of the time it
//! takes to drain. So a replica whose run of items was large (a batch of a
//! turn's worth or more), short (under [`SHORT`]), and at least twice as
//! long as its wait for them before (the filling is cheap next to the
//! draining), spends what is left of its budget as it goes to wait, as the
//! same number of receives from a Tokio channel would have. The worker
//! then moves the task the replica woke from its LIFO slot to the back of
//! its run queue, without waking another worker, and runs it next, in a
//! new turn. The replica itself was about to wait, and it is polled with a
//! fresh budget when it is woken.
//!
//! Anything else spends nothing, and Tokio spreads the tasks as it always
//! does: a feeder that works about as long as the stage (its items then
//! take as long to come as to process), a long run (where a worker's
//! wake-up is cheap next to the work it lets run beside), a replica taking
//! few items at a time. Other tasks on the worker lengthen the replica's
//! wait, so they too end the spending, and the idle worker is woken again.

use std::{
    sync::OnceLock,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::task::coop;

/// Tokio's budget per turn: 128 units (`tokio::task::coop`).
const TURN: usize = 128;

/// The longest run of items after which a replica keeps the task it woke
/// on its worker: a few times what waking an idle worker costs, so that
/// a run this short would spend a good part of its time on the wake-up.
pub(crate) const SHORT: Duration = Duration::from_micros(50);

/// A replica's runs of items and its waits between them, as far as they
/// decide whether it spends its budget as it waits. The clock is read only
/// around runs with a batch of a turn's worth: twice per run. 16 bytes: an
/// idle replica's task holds it.
#[derive(Debug, Default)]
pub(crate) struct Turn {
    /// A clock reading (nanoseconds since [`epoch`]): when the replica
    /// went to wait after a full run ([`Timing::Waiting`]), or when its
    /// current run began after such a wait ([`Timing::Running`]).
    at: u64,
    /// How long the wait before the current run was, in nanoseconds
    /// (saturated at about 4 s).
    waited: u32,
    timing: Timing,
    /// Whether the current run took a batch of a turn's worth.
    full: bool,
}

/// What [`Turn::at`] says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// Nothing: the last wait was not timed.
    #[default]
    Untimed,
    /// When the replica went to wait.
    Waiting,
    /// When the current run began.
    Running,
}

/// Nanoseconds since the first reading, on the monotonic clock.
fn now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl Turn {
    /// The replica took a batch of `n` items.
    #[inline]
    pub(crate) fn took(&mut self, n: usize) {
        self.took_with(n, now);
    }

    /// The replica is about to wait (its poll returns `Pending`): after a
    /// short, full run that took at least twice as long as the wait before
    /// it, spends what is left of the task's budget.
    #[inline]
    pub(crate) fn wait(&mut self, cx: &mut Context<'_>) {
        self.wait_with(cx, now);
    }

    /// [`took`](Self::took), reading the clock with `now`.
    #[inline]
    fn took_with(&mut self, n: usize, now: impl FnOnce() -> u64) {
        self.full |= n >= TURN;
        if self.timing == Timing::Waiting {
            // The first batch after a timed wait: the run begins.
            let now = now();
            self.waited = u32::try_from(now.saturating_sub(self.at)).unwrap_or(u32::MAX);
            self.at = now;
            self.timing = Timing::Running;
        }
    }

    /// [`wait`](Self::wait), reading the clock with `now`.
    #[inline]
    fn wait_with(&mut self, cx: &mut Context<'_>, now: impl FnOnce() -> u64) {
        if !std::mem::take(&mut self.full) {
            if self.timing == Timing::Running {
                self.timing = Timing::Untimed;
            }
            return;
        }
        // The end of a full run.
        let now = now();
        if self.timing == Timing::Running {
            let run = now.saturating_sub(self.at);
            if run < SHORT.as_nanos() as u64 && u64::from(self.waited) * 2 <= run {
                spend(cx);
            }
        }
        self.at = now;
        self.timing = Timing::Waiting;
    }
}

/// Spends the task's budget down to zero (at most [`TURN`] units; a task
/// polled outside a runtime, or `unconstrained`, has no budget to spend
/// and is left as it was).
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

    /// A clock read by hand: `at(us)` is `us` microseconds in.
    fn at(us: u64) -> impl FnOnce() -> u64 {
        move || us * 1_000
    }

    /// Waits with `turn` at `now` (once), and tells whether budget is left
    /// after.
    async fn wait(turn: &mut Turn, now: impl FnOnce() -> u64) -> bool {
        let mut now = Some(now);
        poll_fn(|cx| {
            turn.wait_with(cx, now.take().unwrap());
            Poll::Ready(())
        })
        .await;
        let left = coop::has_budget_remaining();
        // The next poll has a fresh budget.
        tokio::task::yield_now().await;
        left
    }

    #[tokio::test]
    async fn a_short_full_run_after_a_quick_fill_spends_the_budget() {
        let mut turn = Turn::default();
        // The first run is not timed: nothing is spent.
        turn.took_with(TURN, at(0));
        assert!(wait(&mut turn, at(10)).await);
        // A fill of 5 µs, then a run of 10.
        turn.took_with(TURN, at(15));
        assert!(coop::has_budget_remaining(), "taking spends nothing");
        assert!(!wait(&mut turn, at(25)).await, "the run was short and full, its wait quick");
        // And again, run after run.
        turn.took_with(TURN, at(30));
        turn.took_with(1, at(31));
        assert!(!wait(&mut turn, at(40)).await);
    }

    #[tokio::test]
    async fn small_batches_spend_nothing() {
        let mut turn = Turn::default();
        for i in 0..3 {
            turn.took_with(TURN - 1, at(i * 20));
            turn.took_with(TURN - 1, at(i * 20 + 5));
            assert!(wait(&mut turn, at(i * 20 + 15)).await);
        }
    }

    #[tokio::test]
    async fn a_long_run_spends_nothing() {
        let mut turn = Turn::default();
        turn.took_with(TURN, at(0));
        assert!(wait(&mut turn, at(10)).await);
        turn.took_with(TURN, at(11));
        let long = 11 + SHORT.as_micros() as u64;
        assert!(wait(&mut turn, at(long)).await);
    }

    #[tokio::test]
    async fn a_wait_more_than_half_the_run_spends_nothing() {
        let mut turn = Turn::default();
        turn.took_with(TURN, at(0));
        assert!(wait(&mut turn, at(10)).await);
        // The queue took 6 µs to fill, the run 10.
        turn.took_with(TURN, at(16));
        assert!(wait(&mut turn, at(26)).await);
        // A quick fill after it: spending again.
        turn.took_with(TURN, at(27));
        assert!(!wait(&mut turn, at(37)).await);
    }

    #[tokio::test]
    async fn a_run_with_small_batches_only_is_not_timed() {
        let mut turn = Turn::default();
        turn.took_with(TURN, at(0));
        assert!(wait(&mut turn, at(10)).await);
        turn.took_with(1, at(11));
        assert!(wait(&mut turn, at(20)).await, "no full batch in the run");
        // The next full run's wait was not timed.
        turn.took_with(TURN, at(21));
        assert!(wait(&mut turn, at(31)).await);
    }

    #[test]
    fn outside_a_runtime_there_is_nothing_to_spend() {
        let mut turn = Turn::default();
        let cx = &mut Context::from_waker(futures::task::noop_waker_ref());
        turn.took_with(usize::MAX, at(0));
        turn.wait_with(cx, at(10));
        turn.took_with(usize::MAX, at(11));
        turn.wait_with(cx, at(21));
        assert!(coop::has_budget_remaining());
    }
}
