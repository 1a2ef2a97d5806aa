//! Stage fusion: a `#[fused]` stage runs in the task of the stage before
//! it, with no queue between them.
//!
//! The idea is Flink's operator chaining (a chained operator's
//! `processElement` is called directly by the one before it, and keeps its
//! own metrics) and Akka Streams' operator fusion (fused operators share one
//! actor, driven by its graph interpreter). Here the previous stage's
//! [`Emitter`] hands each batch it would push into a queue (up to
//! [`HANDOVER`](super::HANDOVER) items) to a [`Fused`] trait object
//! instead: a [`FusedStage`] owning the fused stage's state, its own
//! `Emitter` (which may itself feed a further fused stage), its counters
//! and its control queue. One boxed future per batch, not per item; the
//! batch's items are not copied (the fused stage takes the emitter's
//! buffer and gives back its own), and the clock is read once at each end
//! of the hand-over, for both stages.
//!
//! What the fused stage keeps of its own:
//!
//! - its control queue: the group's task serves it between batches, while
//!   it waits for work (`run.rs` polls [`Fused::poll_work`] after its own
//!   control queue and before its input), between the fused stage's
//!   items, and between the items of every stage before it in the group,
//!   so `call_<stage>` is answered while the group works; a doorbell
//!   (`Bell`) says when this queue or the own input may have something,
//!   so the polls between batches cost an atomic swap, and marks the mail
//!   of the stages before it in the group, which they check between
//!   items;
//! - its input queue, fed only by `sink_<stage>()`: read by the group's task
//!   like the control queue, bounded by the stage's queue size and counted
//!   in its `queued` metric;
//! - its metrics: `received` counts the items handed over by the previous
//!   stage and those taken from its own queue; `busy` is measured per batch
//!   (from the instant the previous stage handed it over to the instant
//!   this stage was done with it, less the time in fused stages after it)
//!   and the previous stage's `busy` leaves out the time spent here;
//! - its restart limit: a handler panic rebuilds this stage's state only;
//!   past the limit, this stage fails its items (as `stopped`) and its
//!   calls, the rest of the group goes on;
//! - its failures, named after it, and its `flush` mark, for the items of
//!   its own queue (items handed over are covered by the previous stage's
//!   mark, which ends only once they left the group).
//!
//! Draining keeps the pipeline's order: the previous stage's input ends, it
//! runs `finish`, what it emitted goes through this stage, then this stage's
//! own queue is closed and drained, then this stage runs `finish` (whose
//! outputs go on, through further fused stages), then the calls and casts
//! still queued are served and `terminate` runs.

use std::{
    future::poll_fn,
    panic::AssertUnwindSafe,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
};

use futures::{
    FutureExt,
    future::BoxFuture,
    task::{ArcWake, AtomicWaker},
};
use tokio::time::Instant;

use super::{
    Emitter, Panicked, Stage,
    ack::items::Items,
    batch::Whole,
    control::serve as serve_control,
    flush::ReplicaMark,
    metrics::{Counters, Delta},
    queue::{LastFirst, Queue, Waiter},
    run::{Batch, process_batch, serve_waiting},
};
use crate::server::{
    context,
    envelope::Envelope,
    handle::Inbox,
    restart::Restarts,
    run::{Crashed, boot, fail, handle, terminate},
    state::ServerState,
};

/// A stage fused into the one before it, as that stage's [`Emitter`] drives
/// it. Every method runs in the group's task.
pub(crate) trait Fused<T>: Send {
    /// Boots the stage (`new` + `init`) and the fused stages after it, once.
    fn start(&mut self) -> BoxFuture<'_, ()>;

    /// Processes `items` (all of them, in order), as if taken from a queue,
    /// handed over at `since`; returns when it was done with them (both
    /// read by one stage and used by the other, so a hand-over reads the
    /// clock twice, not four times).
    fn push<'a>(&'a mut self, items: &'a mut Items<T>, since: Instant) -> BoxFuture<'a, Instant>;

    /// `Ready` once this stage or a fused one after it has a call, cast or
    /// items of its own queue to handle; [`serve`](Self::serve) handles it.
    fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// Handles what [`poll_work`](Self::poll_work) found.
    fn serve(&mut self) -> BoxFuture<'_, ()>;

    /// The previous stage is done: closes and drains this stage's own
    /// queue, runs `finish`, ends the fused stages after it, serves the
    /// calls and casts left and runs `terminate`.
    fn end_input(&mut self) -> BoxFuture<'_, ()>;

    /// The servers of this stage and the fused stages after it, whose
    /// abort stops the group's task.
    fn servers(&self, into: &mut Vec<Arc<ServerState>>);

    /// Tells this stage, and the fused stages after it, which stages run
    /// before it in the group (`before`, the group's first stage first): a
    /// call, cast or item for this stage marks each of them as having mail
    /// (see `Bell`), so whichever is working on items serves it between two
    /// of them instead of after its batch. Called once, before the group's
    /// task starts.
    fn watch(&mut self, before: &mut Vec<Arc<ServerState>>);
}

/// What [`FusedStage::poll_work`] found.
enum Work<S: Stage> {
    Control(Envelope<S>),
    /// A batch of the stage's own queue, numbered from this one on.
    Items(u64),
}

/// The fused stage `S`: its state and everything its own task would hold.
pub(crate) struct FusedStage<S: Stage> {
    /// `None` before boot and once failed for good.
    server: Option<S>,
    booted: bool,
    restarts: Restarts,
    registry: S::Registry,
    /// `None` once failed for good.
    control: Option<Inbox<S>>,
    state: Arc<ServerState>,
    input: Arc<Queue<S::In>>,
    waiter: Waiter,
    mark: ReplicaMark,
    batch: Batch<S::In>,
    out: Emitter<S::Out>,
    counters: Arc<Counters>,
    work: Option<Work<S>>,
    /// Rung when the control queue or the own queue may have something.
    bell: Arc<Bell>,
    /// Wakes `bell`: the waker both queues hold while this stage waits.
    bell_waker: Waker,
    /// The own queue is closed and empty.
    input_done: bool,
    ended: bool,
}

/// A fused stage's doorbell: its control queue and its own input queue
/// wake it, not the group's task directly, so that polling for the
/// stage's work between the group's batches costs one atomic swap while
/// neither queue changed, instead of a poll of each (which takes the
/// input queue's lock and registers a waker each time). Ringing it wakes
/// the group's task.
///
/// Ringing it also marks the stages before this one in the group as having
/// mail ([`ServerState::post`]): the stage at work checks that mark between
/// its items (one load) and before the first item of a batch handed over,
/// and then polls this stage's work until none is left, which arms the
/// bell again for the next message. So whatever stage of the group is at
/// work serves this stage's calls and casts before and between its items,
/// and stages casting to a fused stage after them once per item never find
/// its queue full for want of its turn.
struct Bell {
    rang: AtomicBool,
    task: AtomicWaker,
    /// The stages before this one in the group (set by [`Fused::watch`]).
    before: OnceLock<Box<[Arc<ServerState>]>>,
}

impl ArcWake for Bell {
    fn wake_by_ref(bell: &Arc<Self>) {
        bell.rang.store(true, Ordering::Release);
        bell.task.wake();
        for state in bell.before.get().into_iter().flatten() {
            state.post();
        }
    }
}

impl<S: Stage> FusedStage<S> {
    pub(crate) fn new(
        control: Inbox<S>,
        input: Arc<Queue<S::In>>,
        mark: ReplicaMark,
        out: Emitter<S::Out>,
        registry: S::Registry,
        counters: Arc<Counters>,
    ) -> Self {
        // Run in another stage's task: its busy time is timed per batch.
        counters.measure_batches();
        // Rung from the start: the first poll looks at both queues.
        let bell = Arc::new(Bell { rang: AtomicBool::new(true), task: AtomicWaker::new(), before: OnceLock::new() });
        FusedStage {
            bell_waker: futures::task::waker(bell.clone()),
            bell,
            server: None,
            booted: false,
            restarts: Restarts::new(S::restart_limit),
            registry,
            state: control.state.clone(),
            control: Some(control),
            input,
            waiter: Waiter::new(),
            mark,
            batch: Batch::new(counters.clone()),
            out,
            counters,
            work: None,
            input_done: false,
            ended: false,
        }
    }

    async fn boot(&mut self) {
        if self.booted {
            return;
        }
        self.booted = true;
        self.server = boot::<S>(&self.registry, &mut self.restarts).await;
        if self.server.is_none() {
            self.fail_for_good();
        }
        self.out.start_fused().await;
    }

    /// Past the restart limit: calls and casts fail from now on, items are
    /// failed as they come.
    fn fail_for_good(&mut self) {
        self.server = None;
        if let Some(control) = self.control.take() {
            fail(control);
        }
    }

    /// A handler panicked: rebuilds the state if the limit allows.
    async fn crashed(&mut self) {
        self.server = None;
        if self.restarts.allow() {
            self.server = boot::<S>(&self.registry, &mut self.restarts).await;
        }
        if self.server.is_none() {
            self.fail_for_good();
        }
    }

    /// Processes every item of the batch, serving calls and casts waiting
    /// in between; after a handler's panic, the rest goes to the new state.
    ///
    /// What waits for this stage, and for the fused stages after it, is
    /// served first: the stage before may have cast into one of them on
    /// the last item of its batch, and this stage may cast into the same
    /// one on its first (a replica's task serves both before it takes a
    /// batch; a fused stage's batch comes with no such stop).
    async fn run_batch(&mut self) {
        if !self.batch.items.is_empty() && self.state.take_mail() {
            let away = self.counters.step_away();
            match (&mut self.server, &mut self.control) {
                (Some(server), Some(control)) => {
                    if let Err(Crashed) = serve_waiting(server, control, &mut self.out).await {
                        self.crashed().await;
                    }
                }
                _ => self.out.serve_fused_waiting().await,
            }
            self.counters.step_back(away);
        }
        while !self.batch.items.is_empty() {
            match (&mut self.server, &mut self.control) {
                (Some(server), Some(control)) => {
                    let processed =
                        process_batch::<S, Whole>(server, control, &mut self.batch, &mut self.out, None).await;
                    if let Err(Crashed) = processed {
                        self.crashed().await;
                    }
                }
                _ => {
                    let n = self.batch.items.len() as u64;
                    let tags = self.batch.items.take_tags();
                    self.counters.add(&Delta { processed: n, failed: n, ..Delta::default() });
                    self.out.fail_stopped(n, tags).await;
                    self.out.end_batch(self.batch.first, n).await;
                }
            }
        }
    }

    /// Moves the items handed over into the batch without copying them:
    /// the batch takes the emitter's buffer, and gives the emitter its own
    /// (empty) room in exchange, so neither allocates in a steady stream.
    fn take(&mut self, items: &mut Items<S::In>) {
        if self.batch.items.is_empty() {
            std::mem::swap(&mut self.batch.items, items);
            self.batch.items.reverse();
        } else {
            // Items left by a panic first (the batch is last to first).
            self.batch.items.prepend_reversed(items);
        }
    }

    async fn handle(&mut self, envelope: Envelope<S>) {
        let Some(server) = &mut self.server else { return };
        if let Err(Crashed) = handle(server, envelope).await {
            self.crashed().await;
        }
    }

    /// `Ready` once a call, a cast or a batch of the own queue is in
    /// `work`. Looks at the queues only if the bell rang since they were
    /// last seen empty (each then holds the bell's waker, which rings it).
    fn poll_own(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.work.is_some() {
            return Poll::Ready(());
        }
        self.bell.task.register(cx.waker());
        if !self.bell.rang.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        let mut bell = Context::from_waker(&self.bell_waker);
        if let Some(control) = &mut self.control {
            if let Poll::Ready(Some(envelope)) = control.rx.poll_recv(&mut bell) {
                // More may be queued: look again next time.
                self.bell.rang.store(true, Ordering::Relaxed);
                self.work = Some(Work::Control(envelope));
                return Poll::Ready(());
            }
        }
        if !self.input_done {
            // Taken last to first, ready to be popped from the end.
            match self.input.poll_pop_owned(
                &mut bell,
                &mut self.waiter,
                &mut LastFirst(&mut self.batch.items),
                self.batch.max_demand as usize,
                self.mark.mark(),
            ) {
                Poll::Ready(Some(first)) => {
                    self.bell.rang.store(true, Ordering::Relaxed);
                    self.work = Some(Work::Items(first));
                    return Poll::Ready(());
                }
                Poll::Ready(None) => self.input_done = true,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    async fn serve_own(&mut self) {
        match self.work.take() {
            Some(Work::Control(envelope)) => {
                // A timer's message with this stage's emitter.
                let Some(server) = &mut self.server else { return };
                if let Err(Crashed) = serve_control(server, envelope, &mut self.out).await {
                    self.crashed().await;
                }
            }
            Some(Work::Items(first)) => {
                self.batch.first = first;
                self.counters.add(&Delta { received: self.batch.items.len() as u64, ..Delta::default() });
                self.run_batch().await;
                self.mark.ended();
            }
            None => {}
        }
    }

    async fn end(&mut self) {
        self.boot().await;
        self.input.close();
        // The own queue until it is closed and empty, calls and casts first.
        while poll_fn(|cx| match self.poll_own(cx) {
            Poll::Ready(()) => Poll::Ready(true),
            Poll::Pending if self.input_done => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        })
        .await
        {
            self.serve_own().await;
        }
        self.input.cancel(&mut self.waiter);
        if !self.ended {
            self.ended = true;
            // Its timers stop: nothing is emitted after `finish`.
            self.state.cancel_timers();
            self.out.begin_finish();
            if let Some(server) = &mut self.server {
                let finished = AssertUnwindSafe(server.finish(&mut self.out)).catch_unwind().await;
                if let Err(panic) = finished {
                    // Logged as a failure `in_finish`.
                    self.out.fail_panic(Panicked::new(&panic));
                }
            }
            self.out.send_failures().await;
            self.out.end_input().await;
        }
        // Calls and casts already queued, then the end.
        if let Some(control) = &mut self.control {
            control.rx.close();
        }
        while let Some(envelope) = match &mut self.control {
            Some(control) => control.rx.recv().await,
            None => None,
        } {
            self.handle(envelope).await;
        }
        if let Some(server) = self.server.take() {
            terminate(server).await;
        }
    }
}

impl<S: Stage> FusedStage<S> {
    /// It takes items from its own queue up to the stage's `max_demand`
    /// at a time, and each waits for a token of the stage's rate limit, if
    /// any.
    pub(crate) fn with_pace(mut self, pace: super::run::Pace) -> Self {
        let batch = std::mem::replace(&mut self.batch, Batch::new(self.counters.clone()));
        self.batch = batch.with_pace(pace);
        self
    }
}

impl<S: Stage> Fused<S::In> for FusedStage<S> {
    fn start(&mut self) -> BoxFuture<'_, ()> {
        let state = self.state.clone();
        Box::pin(context::scope(state, self.boot()))
    }

    fn push<'a>(&'a mut self, items: &'a mut Items<S::In>, since: Instant) -> BoxFuture<'a, Instant> {
        let state = self.state.clone();
        Box::pin(context::scope(state, async move {
            if self.booted {
                self.counters.begin_batch_at(since);
            } else {
                // Booting is not busy: the batch is timed from after it.
                self.boot().await;
            }
            self.counters.add(&Delta { received: items.len() as u64, ..Delta::default() });
            self.take(items);
            self.run_batch().await;
            self.counters.handover_end()
        }))
    }

    fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.poll_own(cx).is_ready() {
            return Poll::Ready(());
        }
        self.out.poll_fused(cx)
    }

    fn serve(&mut self) -> BoxFuture<'_, ()> {
        let state = self.state.clone();
        Box::pin(context::scope(state, async move {
            self.boot().await;
            if self.work.is_some() {
                self.serve_own().await;
            } else {
                self.out.serve_fused().await;
            }
        }))
    }

    fn end_input(&mut self) -> BoxFuture<'_, ()> {
        let state = self.state.clone();
        Box::pin(context::scope(state, self.end()))
    }

    fn servers(&self, into: &mut Vec<Arc<ServerState>>) {
        into.push(self.state.clone());
        self.out.fused_servers(into);
    }

    fn watch(&mut self, before: &mut Vec<Arc<ServerState>>) {
        let _ = self.bell.before.set(before.clone().into_boxed_slice());
        before.push(self.state.clone());
        self.out.watch_fused(before);
    }
}

/// A fused stage dropped while waiting in its own queue gives its place
/// in line back.
impl<S: Stage> Drop for FusedStage<S> {
    fn drop(&mut self) {
        self.input.cancel(&mut self.waiter);
        // Its task ended: the pipeline's clock may stop.
        self.counters.end();
    }
}
