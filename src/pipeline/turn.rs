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
//! takes to drain. That is the case of a replica that runs `#[fused]`
//! stages after its own, whose task does the work of several stages for
//! each item its feeder sends. So such a replica, whose run of items (from
//! the batch it took after a wait to its next wait) held a batch of a
//! turn's worth or more, lasted under [`SHORT`], and took at least twice
//! as long as its wait for those items (the filling is cheap next to the
//! draining), spends what is left of its budget as it goes to wait, as the
//! same number of receives from a Tokio channel would have. The worker
//! then moves the task the replica woke from its LIFO slot to the back of
//! its run queue, without waking another worker, and runs it next, in a
//! new turn. The replica itself was about to wait, and it is polled with a
//! fresh budget when it is woken.
//!
//! A wait counts only if the replica is back on the thread it waited on
//! (a task woken by the running one runs on the same worker): then the
//! wait was the feeder's turn on that worker. A replica woken from another
//! worker, or taken by one, waited for a feeder working beside it, and a
//! short wait then says nothing of what feeding costs; that run is not
//! timed. The first full run counts its wait as short: the third hand-off
//! in a row comes before a second run could be timed, and once the idle
//! worker took one of the two tasks, the other may never wait again.
//!
//! Anything else spends nothing, and Tokio spreads the tasks as it always
//! does: a replica without fused stages (in a chain of stage tasks, each
//! has work of its own to spread over the workers, and the task it woke
//! may be the next stage rather than its feeder), a feeder that works
//! about as long as the stage (its items then take as long to come as to
//! process), a long run (where a worker's wake-up is cheap next to the
//! work it lets run beside), a replica taking few items at a time, and
//! any replica off a multi-thread runtime (one worker, no LIFO slot to
//! leave; nothing is timed there either). Other tasks on the worker
//! lengthen the replica's wait, so they too end the spending, and the idle
//! worker is woken again. What the spending costs others on the runtime:
//! while it lasts, an idle worker sleeps until a timer or I/O wakes it (a
//! timer may fire up to its millisecond later than with a worker woken
//! every few hand-offs), and a task woken by the pipeline (a caller's
//! reply) waits behind the feeder on the pipeline's worker.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
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
    /// A clock reading (nanoseconds since [`now`]'s epoch, wrapping about
    /// every 4.3 s: a wait that long, give or take a few microseconds,
    /// reads as short, which costs at most one spending): when the
    /// replica went to wait after a full run ([`Timing::Waiting`]), or
    /// when its current run began after such a wait ([`Timing::Running`]).
    at: u32,
    /// How long the wait before the current run was, in nanoseconds
    /// (wrapping as the clock does).
    waited: u32,
    /// The thread the replica went to wait on ([`Timing::Waiting`]).
    thread: u32,
    timing: Timing,
    /// Whether the current run took a batch of a turn's worth.
    full: bool,
    /// Whether the replica may spend its budget: `None` until asked whether
    /// it runs on a multi-thread runtime, `false` off one or for a replica
    /// without `#[fused]` stages.
    may_spend: Option<bool>,
}

/// What [`Turn::at`] says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// No full run yet: the first is timed from its first full batch, as
    /// if its wait had been short (see the module's docs).
    #[default]
    Fresh,
    /// Nothing: the last wait was not timed.
    Untimed,
    /// When the replica went to wait.
    Waiting,
    /// When the current run began.
    Running,
}

/// Nanoseconds since the first reading, on the monotonic clock, wrapping
/// at 2³² (about 4.3 s).
fn now() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u32
}

/// A number for the current thread, the same for as long as it runs
/// (`u32::MAX` while its thread-locals are being destroyed).
fn thread() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    thread_local!(static THREAD: u32 = NEXT.fetch_add(1, Ordering::Relaxed));
    THREAD.try_with(|thread| *thread).unwrap_or(u32::MAX)
}

/// Whether the current task runs on a multi-thread runtime, the only kind
/// with more than one worker and a LIFO slot.
fn on_multi_thread() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| matches!(runtime.runtime_flavor(), tokio::runtime::RuntimeFlavor::MultiThread))
}

impl Turn {
    /// The turns of a replica that runs `#[fused]` stages after its own
    /// (`group`), or of one that never spends its budget.
    pub(crate) fn new(group: bool) -> Self {
        Turn { may_spend: if group { None } else { Some(false) }, ..Turn::default() }
    }

    /// The replica took a batch of `n` items.
    #[inline]
    pub(crate) fn took(&mut self, n: usize) {
        self.took_with(n, now, thread, on_multi_thread);
    }

    /// The replica is about to wait (its poll returns `Pending`): after a
    /// short, full run that took at least twice as long as the wait before
    /// it, spent on the same thread, spends what is left of the task's
    /// budget. Only on a multi-thread runtime: elsewhere there is no other
    /// worker to keep out, and nothing is timed.
    #[inline]
    pub(crate) fn wait(&mut self, cx: &mut Context<'_>) {
        if self.wait_with(now, thread, on_multi_thread) {
            spend(cx);
        }
    }

    /// [`took`](Self::took), reading the clock with `now`, the thread with
    /// `thread`, and whether the runtime is a multi-thread one with
    /// `multi_thread` (once).
    #[inline]
    fn took_with(
        &mut self,
        n: usize,
        now: impl FnOnce() -> u32,
        thread: impl FnOnce() -> u32,
        multi_thread: impl FnOnce() -> bool,
    ) {
        self.full |= n >= TURN;
        if self.timing == Timing::Fresh && n >= TURN {
            self.timing = Timing::Untimed;
            if *self.may_spend.get_or_insert_with(multi_thread) {
                self.waited = 0;
                self.at = now();
                self.timing = Timing::Running;
            }
        } else if self.timing == Timing::Waiting {
            // The first batch after a timed wait: the run begins. The wait
            // is the feeder's time only if the replica is back on the
            // thread it waited on (a task woken by the running one runs on
            // the same worker): woken from another worker, or taken by
            // one, the wait says nothing of what feeding costs.
            if thread() == self.thread {
                let now = now();
                self.waited = now.wrapping_sub(self.at);
                self.at = now;
                self.timing = Timing::Running;
            } else {
                self.timing = Timing::Untimed;
            }
        }
    }

    /// [`wait`](Self::wait), reading the clock with `now`, the thread
    /// with `thread`, and whether the runtime is a multi-thread one with
    /// `multi_thread` (once): whether to spend the budget.
    #[inline]
    fn wait_with(
        &mut self,
        now: impl FnOnce() -> u32,
        thread: impl FnOnce() -> u32,
        multi_thread: impl FnOnce() -> bool,
    ) -> bool {
        if !std::mem::take(&mut self.full) {
            if self.timing == Timing::Running {
                self.timing = Timing::Untimed;
            }
            return false;
        }
        if !*self.may_spend.get_or_insert_with(multi_thread) {
            return false;
        }
        // The end of a full run.
        let now = now();
        let spend = self.timing == Timing::Running && {
            let run = now.wrapping_sub(self.at);
            run < SHORT.as_nanos() as u32 && u64::from(self.waited) * 2 <= u64::from(run)
        };
        self.at = now;
        self.thread = thread();
        self.timing = Timing::Waiting;
        spend
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
            // Kept spent: the work it stands for was done. Its guard
            // then has nothing to restore, and is not dropped: its drop
            // is a call that would only check so.
            Poll::Ready(unit) => {
                unit.made_progress();
                std::mem::forget(unit);
            }
            Poll::Pending => return,
        }
    }
}

#[cfg(all(test, not(genflow_loom)))]
mod tests {
    use std::future::poll_fn;

    use super::*;

    /// The first thread, and another.
    const ONE: u32 = 1;
    const OTHER: u32 = 2;

    /// `turn` takes a batch of `n` items at `us` microseconds, on `thread`.
    fn took(turn: &mut Turn, n: usize, us: u32, thread: u32) {
        turn.took_with(n, || us * 1_000, || thread, || true);
    }

    /// `turn` goes to wait at `us` microseconds, on `thread`: whether it
    /// spends its budget.
    fn waits(turn: &mut Turn, us: u32, thread: u32) -> bool {
        turn.wait_with(|| us * 1_000, || thread, || true)
    }

    /// A group's turns after a first full run of 10 µs on [`ONE`], which
    /// spent.
    fn after_a_short_first_run() -> Turn {
        let mut turn = Turn::new(true);
        took(&mut turn, TURN, 0, ONE);
        assert!(waits(&mut turn, 10, ONE), "a short first run");
        turn
    }

    #[test]
    fn a_short_full_run_after_a_quick_fill_on_the_same_thread_spends() {
        let mut turn = Turn::new(true);
        // The first full run counts its wait as short.
        took(&mut turn, TURN - 1, 0, ONE);
        took(&mut turn, TURN, 2, ONE);
        assert!(waits(&mut turn, 10, ONE));
        // A fill of 5 µs, then a run of 10.
        took(&mut turn, TURN, 15, ONE);
        assert!(waits(&mut turn, 25, ONE), "the run was short and full, its wait quick");
        // And again, run after run, whatever the later batches.
        took(&mut turn, TURN, 30, ONE);
        took(&mut turn, 1, 31, ONE);
        assert!(waits(&mut turn, 40, ONE));
    }

    #[test]
    fn small_batches_spend_nothing() {
        let mut turn = Turn::new(true);
        for i in 0..3 {
            took(&mut turn, TURN - 1, i * 20, ONE);
            took(&mut turn, TURN - 1, i * 20 + 5, ONE);
            assert!(!waits(&mut turn, i * 20 + 15, ONE));
        }
    }

    #[test]
    fn a_long_run_spends_nothing() {
        let mut turn = after_a_short_first_run();
        took(&mut turn, TURN, 11, ONE);
        assert!(!waits(&mut turn, 11 + SHORT.as_micros() as u32, ONE));
    }

    #[test]
    fn a_wait_more_than_half_the_run_spends_nothing() {
        let mut turn = after_a_short_first_run();
        // The queue took 6 µs to fill, the run 10.
        took(&mut turn, TURN, 16, ONE);
        assert!(!waits(&mut turn, 26, ONE));
        // A quick fill after it: spending again.
        took(&mut turn, TURN, 27, ONE);
        assert!(waits(&mut turn, 37, ONE));
    }

    #[test]
    fn a_wait_that_ended_on_another_thread_is_not_timed() {
        let mut turn = after_a_short_first_run();
        // Woken elsewhere (fed from another worker): the run is not timed.
        took(&mut turn, TURN, 11, OTHER);
        assert!(!waits(&mut turn, 21, OTHER));
        // Back on the thread it waited on: timed again.
        took(&mut turn, TURN, 22, OTHER);
        assert!(waits(&mut turn, 32, OTHER));
    }

    #[test]
    fn a_run_with_small_batches_only_is_not_timed() {
        let mut turn = after_a_short_first_run();
        took(&mut turn, 1, 11, ONE);
        assert!(!waits(&mut turn, 20, ONE), "no full batch in the run");
        // The next full run's wait was not timed.
        took(&mut turn, TURN, 21, ONE);
        assert!(!waits(&mut turn, 31, ONE));
    }

    #[test]
    fn the_clock_may_wrap_between_readings() {
        let mut turn = Turn::new(true);
        let last = u32::MAX / 1_000;
        took(&mut turn, TURN, 0, ONE);
        assert!(!waits(&mut turn, last - 7, ONE));
        // 4 µs later and 10 after that, past the wrap.
        took(&mut turn, TURN, last - 3, ONE);
        let past_wrap = ((u64::from(last - 3) * 1_000 + 10_000) % (1 << 32)) as u32;
        assert!(past_wrap < 10_000, "the clock wrapped");
        assert!(turn.wait_with(|| past_wrap, || ONE, || true));
    }

    #[test]
    fn off_a_multi_thread_runtime_nothing_is_timed_or_spent() {
        let mut turn = Turn::new(true);
        let clock = |us: u32| move || -> u32 { panic!("the clock was read at {us} µs") };
        let on_one = || ONE;
        turn.took_with(TURN, clock(0), on_one, || false);
        assert!(!turn.wait_with(clock(10), on_one, || unreachable!("asked once")));
        for i in 1..4 {
            turn.took_with(TURN, clock(i * 15), on_one, || unreachable!("asked once"));
            assert!(!turn.wait_with(clock(i * 15 + 10), on_one, || unreachable!("asked once")));
        }
    }

    #[test]
    fn a_replica_without_fused_stages_is_not_timed_and_never_spends() {
        let mut turn = Turn::new(false);
        let clock = |us: u32| move || -> u32 { panic!("the clock was read at {us} µs") };
        let multi = || -> bool { unreachable!("not asked") };
        for i in 0..4 {
            turn.took_with(TURN, clock(i * 15), || ONE, multi);
            assert!(!turn.wait_with(clock(i * 15 + 10), || ONE, multi));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn on_a_multi_thread_runtime_spending_leaves_no_budget() {
        assert!(on_multi_thread());
        assert!(coop::has_budget_remaining());
        poll_fn(|cx| {
            spend(cx);
            Poll::Ready(())
        })
        .await;
        assert!(!coop::has_budget_remaining());
        // The next poll has a fresh budget.
        tokio::task::yield_now().await;
        assert!(coop::has_budget_remaining());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_is_not_a_multi_thread_one() {
        assert!(!on_multi_thread());
    }

    #[test]
    fn outside_a_runtime_there_is_no_multi_thread_runtime_nor_budget_to_spend() {
        assert!(!on_multi_thread());
        spend(&mut Context::from_waker(futures::task::noop_waker_ref()));
        assert!(coop::has_budget_remaining());
    }
}
