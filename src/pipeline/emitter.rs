use std::{
    error::Error,
    fmt,
    future::{Future, poll_fn},
    pin::{Pin, pin},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{
    BATCH, HANDOVER, Panicked,
    ack::{Held, items::Items, tag::Tag},
    concurrency::{Concurrency, InFlight},
    dispatch::{Dispatch, Grouped, group_by_queue},
    failure::{Failing, Failure, FailureRoute},
    fused::Fused,
    metrics::{Counters, Delta},
    queue::{Closed, Queue},
    reorder::{Place, Reorder},
};

/// Sends a stage's items downstream: to the next stage, or to the
/// pipeline's [`Output`](crate::Output).
///
/// Handed to [`Stage::process`](crate::Stage::process). Items are moved in
/// small batches: `emit` collects up to a few dozen items and waits for room
/// in the next queue when the batch is full; the pipeline sends the rest as
/// soon as the stage has gone through the items it took (or after every
/// `process` call that awaited something, so a slow stage does not hold its
/// output back). Order is kept.
///
/// So while one `process` call waits, the outputs of the inputs before it
/// in the same batch that did not wait stay in the emitter until it
/// returns, and so do their [acknowledgements](crate::ack): a batch's
/// outputs leave together, as a GenStage `handle_events` returns its
/// events and a Broadway processor forwards its messages once per batch.
/// A stage whose items may wait long on I/O (a remote call that may hang)
/// should hand that work to [`emit_async`](Self::emit_async) under
/// `#[concurrency(N)]`: each result then goes on as soon as it is ready,
/// whatever the others do.
///
/// In a `#[replicas(N, ordered)]` stage, outputs also wait for their turn:
/// those of the oldest batch of inputs not fully sent go straight on, and
/// `emit` in another replica waits once it holds a batch's worth, until its
/// batch's turn comes. So an ordered stage holds a bounded number of
/// outputs whatever its fan-out (see the pipeline's module docs).
///
/// If the pipeline's output was never taken (or was dropped), the last
/// stage's items are dropped and counted in its `dropped` metric instead of
/// blocking the pipeline.
///
/// [`fail`](Self::fail) fails the item being processed instead: it goes to
/// the pipeline's `failures()` stream as a [`Failure`](crate::Failure).
///
/// [`emit_async`](Self::emit_async) and [`try_emit_async`](Self::try_emit_async)
/// take a future whose output is emitted when it completes: in a
/// `#[concurrency(N)]` stage, up to N of them per replica run at once while
/// `process` goes on with the next items (see the pipeline's module docs).
pub struct Emitter<T> {
    buf: Items<T>,
    /// The acknowledgements of the input in `process`: every item emitted
    /// for it holds a share.
    pub(super) current: Tag,
    link: Link<T>,
    pub(super) counters: Arc<Counters>,
    /// Counts not yet published to `counters`.
    /// (At most a batch or so: published by every send.)
    emitted: u32,
    /// How many items make the buffer full: [`BATCH`], or [`HANDOVER`]
    /// for a `#[fused]` next stage.
    full_at: u32,
    /// The place in `buf` of the first item emitted for the input in
    /// `process` and not sent yet, which holds no share of its
    /// acknowledgements until it is sent or the input is done ([`NO_FIRST`]
    /// if none): an input that makes one item hands its hold on to it,
    /// without touching the acknowledgements' count.
    first: u32,
    dropped: u64,
    /// For an `ordered` stage: where each batch's outputs wait their turn.
    /// Boxed: every replica's task holds its emitter for its whole life.
    order: Option<Box<Place<T>>>,
    /// Failures of the item being processed, on their way to `failures()`.
    pub(super) failing: Failing,
    /// A `#[fused]` next stage, run in this task instead of through a queue
    /// (in a `Mutex` only so the emitter stays `Sync`: it is reached
    /// through `&mut self`, with `get_mut`, never locked).
    /// Boxed whole: one pointer in every replica's task, fused or not.
    #[allow(clippy::type_complexity, reason = "the `Mutex` and its box, spelled out once")]
    fused: Option<Box<Mutex<Box<dyn Fused<T>>>>>,
    /// For a `#[concurrency(N)]` stage (N > 1): the futures handed over by
    /// `emit_async` (see `pipeline/concurrency.rs`). In a `Mutex` and a box
    /// as `fused`, for the same reasons.
    pub(super) in_flight: Option<Box<Mutex<InFlight<T>>>>,
}

impl<T: Send + 'static> Emitter<T> {
    pub(crate) fn new(link: Link<T>, counters: Arc<Counters>) -> Self {
        Emitter {
            // Allocated by the first emit: an idle replica holds no buffer.
            buf: Items::new(),
            current: Tag::NONE,
            link,
            counters,
            emitted: 0,
            full_at: BATCH as u32,
            first: NO_FIRST,
            dropped: 0,
            order: None,
            failing: Failing::detached(),
            fused: None,
            in_flight: None,
        }
    }

    /// Keeps up to `concurrency.limit` futures handed over by
    /// `emit_async` in flight (none kept with a limit of 1).
    pub(crate) fn with_concurrency(mut self, concurrency: Concurrency) -> Self {
        if concurrency.limit > 1 {
            self.in_flight = Some(Box::new(Mutex::new(InFlight::new(concurrency))));
        }
        self
    }

    /// Sends this emitter's items into `next`, a stage fused into this
    /// one, instead of through the link.
    pub(crate) fn with_fused(mut self, next: Box<dyn Fused<T>>) -> Self {
        self.fused = Some(Box::new(Mutex::new(next)));
        self.full_at = HANDOVER as u32;
        self
    }

    /// Sends this emitter's failures through `failing`.
    pub(crate) fn with_failing(mut self, failing: Failing) -> Self {
        self.failing = failing;
        self
    }

    /// An emitter for a replica of an `ordered` stage: outputs go through
    /// `order`, a batch at a time.
    pub(crate) fn ordered(link: Link<T>, counters: Arc<Counters>, order: Arc<Reorder<T>>) -> Self {
        let mut emitter = Emitter::new(link, counters);
        emitter.order = Some(Box::new(Place::new(order)));
        emitter
    }

    /// Sends `item` downstream, waiting while the next queue is full (and,
    /// in an `ordered` stage, for the turn of this item's batch).
    ///
    /// The item goes into the emitter's buffer when `emit` is called; the
    /// returned future is ready at once unless the buffer then holds a full
    /// batch ([`BATCH`](super::BATCH) items; [`HANDOVER`](super::HANDOVER)
    /// for a `#[fused]` next stage), which it sends on, waiting for room
    /// (or, for a fused next stage, while that stage processes it).
    ///
    /// # Cancel safety
    ///
    /// The item is accepted before the future is first polled; dropping the
    /// future does not lose it (it is sent with the buffer's next batch).
    #[inline(always)]
    pub fn emit(&mut self, item: T) -> impl Future<Output = ()> + Send + '_ {
        if self.current.is_some() {
            self.push_acked(item);
        } else {
            // The plain path: an item without a tag, as if there were no
            // acknowledgements.
            self.buf.push(item);
        }
        self.emitted += 1;
        self.send_if_full()
    }

    /// Emits `item` holding the acknowledgements of `held` (kept by
    /// [`hold`](Self::hold), perhaps for many inputs), besides those of the
    /// input being processed, if any: so a stage that absorbed inputs into
    /// its state hands their acknowledgements on with what it made of them,
    /// in `process`, in [`Stage::finish`](crate::Stage::finish) or in
    /// [`Stage::handle_timer`](crate::Stage::handle_timer). Otherwise as
    /// [`emit`](Self::emit). See [`genflow::ack`](crate::ack).
    ///
    /// # Cancel safety
    ///
    /// As [`emit`](Self::emit)'s.
    pub fn emit_with(&mut self, item: T, held: Held) -> impl Future<Output = ()> + Send + '_ {
        let tag = self.current.share().join(held.into_tag());
        self.emit_tagged(item, tag)
    }

    /// Keeps the acknowledgements of the input being processed past
    /// `process`: the input is not acknowledged before the returned
    /// [`Held`] is emitted with ([`emit_with`](Self::emit_with)),
    /// released or failed (dropped, it reports the input dropped). For a
    /// stage that absorbs inputs into its state: an aggregate, a batch
    /// written later. Outside `process` (in `finish`, in a timer), or for
    /// an input sent without acknowledgement, the `Held` is empty.
    ///
    /// The idea comes from Broadway, whose `handle_batch` acknowledges
    /// a batch's messages only once the batch is written.
    pub fn hold(&mut self) -> Held {
        Held::new(self.current.share(), self.failing.stage(), self.failing.replica())
    }

    /// Emits an item with its tag, as [`emit`](Self::emit).
    pub(crate) fn emit_tagged(&mut self, item: T, tag: Tag) -> impl Future<Output = ()> + Send + '_ {
        self.buf.push_tagged(item, tag);
        self.emitted += 1;
        self.send_if_full()
    }

    /// Sends the buffer on if it holds a full batch: a future ready at
    /// once otherwise, which costs an item no more than a check.
    #[inline(always)]
    fn send_if_full(&mut self) -> IfFull<'_> {
        // A fused next stage takes bigger batches (see `HANDOVER`).
        let full = self.buf.len() >= self.full_at as usize;
        IfFull { send: if full { Some(self.send_full()) } else { None } }
    }

    /// Sends the full buffer, as `flush`, whose check for an empty buffer
    /// is known false.
    #[inline(never)]
    fn send_full(&mut self) -> BoxFuture<'_, ()> {
        if self.order.is_none() && self.fused.is_some() {
            // One box, not `send_plain`'s around `send_fused`'s.
            return Box::pin(self.send_fused());
        }
        Box::pin(async move {
            match self.order {
                None => self.send_plain().await,
                Some(_) => self.send(Outgoing::Full).await,
            }
        })
    }

    /// Fails the item being processed: it counts in the stage's `failed`
    /// metric (and not as processed successfully), and a
    /// [`Failure`](crate::Failure) holding `error`, this stage's name and
    /// the replica's index goes to the pipeline's `failures()` stream.
    ///
    /// `process` goes on after `fail` returns; return from it to stop
    /// working on the item. What was emitted for the item, before or after
    /// `fail`, stays emitted. Calling `fail` again for the same item
    /// delivers each error as its own `Failure`, but the item counts as
    /// failed once. Called in [`Stage::finish`](crate::Stage::finish), it
    /// gives a failure tied to no input item (see
    /// [`Failure::in_finish`](crate::Failure::in_finish)).
    ///
    /// The failure is sent when `process` (or `finish`) returns; if the
    /// reader of `failures()` is behind by a full buffer, the replica waits
    /// there for room, as [`emit`](Self::emit) waits for the next stage. If
    /// `failures()` was not taken, the failure is dropped and counted (see
    /// [`Failures`](crate::Failures)). `fail` prints nothing: besides the
    /// stream and the metrics, it records a `tracing` event at `DEBUG`
    /// level.
    ///
    /// To keep the failed record, put it in your error type, and get it
    /// back with `failure.error().downcast_ref::<YourError>()`.
    ///
    /// The idea comes from Broadway's `Message.failed/2`.
    ///
    /// In a `#[batch(..)]` stage, the item is the whole batch: each of its
    /// items counts in `failed`, and the `Failure`'s
    /// [`items`](crate::Failure::items) says how many. To fail only some
    /// of them, use [`fail_items`](Self::fail_items).
    pub fn fail(&mut self, error: impl Into<Box<dyn Error + Send + Sync>>) {
        self.failing.fail(error.into(), false, None);
    }

    /// Fails `items` of the items of the batch being processed by a
    /// `#[batch(..)]` stage with `error` (`items` of 1 for one record of
    /// the batch), as [`fail`](Self::fail) fails all of them: they count in
    /// the stage's `failed` metric, the rest of the batch counts as
    /// processed, and one [`Failure`](crate::Failure) whose
    /// [`items`](crate::Failure::items) is `items` goes to `failures()`.
    /// Calls for the same batch add up, to at most its length; a failure
    /// of the whole batch (`fail`, a panic) counts it whole.
    ///
    /// In a stage that is not `#[batch(..)]`, each input is one item: it
    /// fails it as `fail` does. In [`Stage::finish`](crate::Stage::finish),
    /// it fails no item, as `fail` there.
    ///
    /// With [acknowledgements](crate::ack), a batch is one input of the
    /// stage: a partial failure fails the acknowledgements of all its
    /// items (a source then delivers them again, as at-least-once allows).
    ///
    /// The idea comes from Broadway, where `handle_batch` marks single
    /// messages of a batch failed.
    pub fn fail_items(&mut self, items: u64, error: impl Into<Box<dyn Error + Send + Sync>>) {
        self.failing.fail(error.into(), false, Some(items));
    }

    /// Fails the item in progress with a panic's error.
    pub(crate) fn fail_panic(&mut self, error: super::Panicked) {
        self.failing.fail(Box::new(error), true, None);
    }

    /// How many of the `weight` items of the input that just failed count
    /// as failed (see [`Failing::settle`]).
    pub(crate) fn settle_failed(&mut self, weight: u64) -> u64 {
        self.failing.settle(weight)
    }

    /// Fails `items` items taken by a replica that stopped for good, and
    /// sends their failures.
    pub(crate) async fn fail_stopped(&mut self, items: u64, tags: Vec<Tag>) {
        for _ in 0..items {
            self.fail_panic(super::Panicked::stopped());
        }
        for tag in tags {
            self.failing.fail_tag_last(tag);
        }
        self.failing.settle(1);
        self.failing.take_item_failed();
        self.send_failures().await;
    }

    /// Buffers an item emitted for the input in `process`, which holds
    /// acknowledgements: its first item not sent yet holds no share (it
    /// gets one when it is sent, or the input's own hold when the input is
    /// done), the others a share each.
    #[inline(never)]
    fn push_acked(&mut self, item: T) {
        if self.first == NO_FIRST {
            // The buffer holds at most a batch or so: its length fits.
            self.first = self.buf.len() as u32;
            self.buf.push_with_tag(item, Tag::NONE);
        } else {
            self.buf.push_with_tag(item, self.current.share());
        }
    }

    /// Before the buffer's items leave: the first item of the input in
    /// `process` gets its share.
    #[inline]
    fn settle_first(&mut self) {
        if self.first != NO_FIRST {
            let first = std::mem::replace(&mut self.first, NO_FIRST) as usize;
            self.buf.set_tag(first, self.current.share());
        }
    }

    /// A share of the acknowledgements of the input in `process`.
    #[inline]
    pub(crate) fn current_tag(&self) -> Tag {
        self.current.share()
    }

    /// The input about to be processed holds the acknowledgements `tag`.
    #[inline]
    pub(crate) fn begin_item(&mut self, tag: Tag) {
        // `current` holds nothing between inputs: only an input with
        // acknowledgements writes it (the plain path stays a check).
        if tag.is_some() {
            self.current = tag;
        } else {
            tag.release();
        }
    }

    /// The input processed is done with: its hold on its acknowledgements
    /// goes, reporting its failures if it `failed` (what it emitted holds
    /// shares of its own).
    #[inline(always)]
    pub(crate) fn end_item(&mut self, failed: bool) {
        // An input without acknowledgements has nothing to end (`first`
        // is set only for one with).
        if self.current.is_some() {
            self.end_acked_item(failed);
        }
    }

    /// [`end_item`](Self::end_item) of an input with acknowledgements.
    #[inline(never)]
    fn end_acked_item(&mut self, failed: bool) {
        let tag = std::mem::take(&mut self.current);
        if self.first != NO_FIRST {
            let first = std::mem::replace(&mut self.first, NO_FIRST) as usize;
            if !failed {
                // Its item takes over the input's hold.
                self.buf.set_tag(first, tag);
                return;
            }
            self.buf.set_tag(first, tag.share());
        }
        if failed { self.failing.fail_tag(tag) } else { tag.release() }
    }

    /// Whether the item that just finished `process` failed, leaving it
    /// set.
    #[inline]
    pub(crate) fn item_failed(&self) -> bool {
        self.failing.item_failed()
    }

    /// Whether the item that just finished `process` failed; resets it for
    /// the next.
    #[inline]
    pub(crate) fn take_item_failed(&mut self) -> bool {
        self.failing.take_item_failed()
    }

    /// Marks the start of `finish`: failures from now on are tied to no
    /// item.
    pub(crate) fn begin_finish(&mut self) {
        self.failing.begin_finish();
        self.in_flight_inline(true);
    }

    /// Whether this is an `ordered` stage's emitter.
    pub(crate) fn is_ordered(&self) -> bool {
        self.order.is_some()
    }

    /// Marks the start of `Stage::handle_timer`: its failures are tied to
    /// no item.
    /// Futures it hands to `emit_async` are awaited in place: they belong
    /// to no item.
    pub(crate) fn begin_timer(&mut self) {
        self.failing.set_in_timer(true);
        self.in_flight_inline(true);
    }

    /// Marks its end: the item in progress, if any, has not failed by it.
    pub(crate) fn end_timer(&mut self) {
        self.failing.set_in_timer(false);
        self.failing.take_item_failed();
        self.in_flight_inline(false);
    }

    /// Sends the failures recorded so far, waiting for room in the
    /// failures buffer if its reader is behind.
    ///
    /// Rare (an item failed), so the send runs boxed: its future takes no
    /// room in the replica's task while it waits for items.
    pub(crate) async fn send_failures(&mut self) {
        Box::pin(async {
            let mut failures_blocked = Duration::ZERO;
            shown(&self.counters, true, self.failing.send(&mut failures_blocked, &self.counters)).await;
            if !failures_blocked.is_zero() {
                self.counters.add(&Delta { failures_blocked, ..Delta::default() });
            }
        })
        .await;
    }

    /// Sends every item buffered so far, waiting for room as needed, and
    /// publishes the counts. In an `ordered` stage, only if the batch has
    /// its turn (without waiting for it).
    pub(crate) async fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match self.order {
            None => self.send_plain().await,
            Some(_) => self.send(Outgoing::IfTurn).await,
        }
    }

    /// Called before the replica goes through the inputs numbered from
    /// `first` on.
    pub(crate) fn begin_batch(&mut self, first: u64) {
        if let Some(order) = &mut self.order {
            order.begin_batch(first);
        }
    }

    /// Called after the replica went through the inputs numbered
    /// `first..first + inputs`: sends what they emitted on.
    pub(crate) async fn end_batch(&mut self, first: u64, inputs: u64) {
        match self.order {
            None => self.flush().await,
            Some(_) => self.send(Outgoing::Chunk { first, inputs }).await,
        }
    }

    /// Called once, after the replica's last batch and its `Stage::finish`:
    /// sends what `finish` emitted.
    pub(crate) async fn end_input(&mut self) {
        if self.fused.is_some() {
            return self.end_fused().await;
        }
        match self.order {
            None => self.flush().await,
            Some(_) => self.send(Outgoing::Last).await,
        }
    }

    /// Sends the buffer on as `what`, publishing the counts: `emitted`
    /// before waiting, so metrics read while this stage is blocked are up to
    /// date, then what was dropped and the time blocked.
    ///
    /// The sends of an `ordered` stage and into a fused stage run boxed (an
    /// allocation per send): their futures are several times the size of
    /// a plain send's, and `emit` holds this future inline in `process`'s,
    /// which every idle replica's task holds whole.
    ///
    /// A function returning an `async move` block, as [`Target::send`].
    /// Made for an `ordered` stage; without one,
    /// [`send_plain`](Self::send_plain) sends the buffer, and this one
    /// falls back to it (boxed: so this future holds no plain send).
    #[allow(clippy::manual_async_fn, reason = "an `async fn` would hold its arguments twice")]
    fn send(&mut self, what: Outgoing) -> impl Future<Output = ()> + '_ {
        async move {
            if self.fused.is_some() {
                return Box::pin(self.send_fused()).await;
            }
            if self.order.is_none() {
                return Box::pin(self.send_plain()).await;
            }
            self.settle_first();
            self.counters.add(&Delta { emitted: u64::from(std::mem::take(&mut self.emitted)), ..Delta::default() });
            let mut time_blocked = Blocked::default();
            let blocked = &mut time_blocked;
            let Emitter { buf, dropped, order, counters, .. } = self;
            // An ordered stage's send is shown as a whole (moving its future
            // into `shown` costs a copy that the plain path avoids).
            match (what, order) {
                (Outgoing::Full, Some(order)) => {
                    Box::pin(shown(counters, false, order.send_full(buf, blocked, dropped))).await;
                }
                (Outgoing::IfTurn, Some(order)) => {
                    Box::pin(shown(counters, false, order.send_if_turn(buf, blocked, dropped))).await;
                }
                (Outgoing::Chunk { first, inputs }, Some(order)) => {
                    Box::pin(shown(counters, false, order.end_batch(first, inputs, buf, blocked, dropped))).await;
                }
                (Outgoing::Last, Some(order)) => {
                    Box::pin(shown(counters, false, order.end_input(buf, blocked, dropped))).await;
                }
                // Checked above.
                (_, None) => {}
            }
            self.counters.add(&Delta {
                dropped: std::mem::take(&mut self.dropped),
                blocked: time_blocked.all,
                failures_blocked: time_blocked.failures,
                ..Delta::default()
            });
        }
    }
}

impl<T: Send + 'static> Emitter<T> {
    /// Sends the buffer straight to the next stage, for a stage that is not
    /// `ordered`, publishing the counts as [`send`](Self::send) does; each
    /// wait is shown and published as it goes. Apart from `send`, so that
    /// its future holds no [`Outgoing`] and no ordered send: it sits inside
    /// `emit`'s, which every idle replica's task holds room for.
    #[allow(clippy::manual_async_fn, reason = "an `async fn` would hold its arguments twice")]
    fn send_plain(&mut self) -> impl Future<Output = ()> + '_ {
        async move {
            if self.fused.is_some() {
                return Box::pin(self.send_fused()).await;
            }
            self.settle_first();
            self.counters.add(&Delta { emitted: u64::from(std::mem::take(&mut self.emitted)), ..Delta::default() });
            let target = &self.link.target;
            target.send(&mut self.buf, Waits::Shown(&self.counters), &mut self.dropped).await;
            self.counters.add(&Delta { dropped: std::mem::take(&mut self.dropped), ..Delta::default() });
        }
    }
}

/// Driving a `#[fused]` next stage (see `pipeline/fused.rs`).
impl<T: Send + 'static> Emitter<T> {
    fn next(&mut self) -> Option<&mut Box<dyn Fused<T>>> {
        self.fused.as_mut().map(|next| next.get_mut().unwrap_or_else(|poison| poison.into_inner()))
    }

    /// Boots the fused stages after this one (once; later calls do nothing).
    pub(crate) async fn start_fused(&mut self) {
        if let Some(next) = self.next() {
            next.start().await;
        }
    }

    /// Whether `#[fused]` stages follow this one in its task.
    pub(crate) fn has_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// `Ready` when a fused stage after this one has a call, a cast or
    /// items of its own input to handle (then [`serve_fused`](Self::serve_fused)
    /// handles it); `Pending` without one.
    pub(crate) fn poll_fused(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.next() {
            Some(next) => next.poll_work(cx),
            None => Poll::Pending,
        }
    }

    /// The servers of the fused stages after this one.
    pub(crate) fn fused_servers(&self, into: &mut Vec<Arc<crate::server::state::ServerState>>) {
        if let Some(next) = &self.fused {
            next.lock().unwrap_or_else(|poison| poison.into_inner()).servers(into);
        }
    }

    /// Tells the fused stages after this one which stages run before them
    /// in the group (see [`Fused::watch`]).
    pub(crate) fn watch_fused(&mut self, before: &mut Vec<Arc<crate::server::state::ServerState>>) {
        if let Some(next) = self.next() {
            next.watch(before);
        }
    }

    /// Handles what [`poll_fused`](Self::poll_fused) found.
    pub(crate) async fn serve_fused(&mut self) {
        if let Some(next) = self.next() {
            next.serve().await;
        }
    }

    /// Serves what the fused stages after this one have waiting (calls,
    /// casts, items of their own queues), without waiting for more.
    pub(crate) async fn serve_fused_waiting(&mut self) {
        if self.fused.is_none() {
            return;
        }
        // Out of the task's coop budget: a queue polled with the budget
        // spent says `Pending` whatever it holds, and this looks only.
        while tokio::task::coop::unconstrained(poll_fn(|cx| Poll::Ready(self.poll_fused(cx).is_ready()))).await {
            let away = self.counters.step_away();
            self.serve_fused().await;
            self.counters.step_back(away);
        }
    }

    /// Runs the buffer through the fused stage, publishing the count
    /// emitted first; the time it takes is not this stage's busy time.
    /// Reads one clock: the fused stage times its batch from the instant
    /// this stage stepped away, and this stage steps back at the instant
    /// the fused stage's batch ended.
    async fn send_fused(&mut self) {
        self.settle_first();
        self.counters.add(&Delta { emitted: u64::from(std::mem::take(&mut self.emitted)), ..Delta::default() });
        // Time in the fused stage is its busy time, not this stage's.
        let away = self.counters.step_away();
        let Emitter { fused, buf, .. } = self;
        let back = match fused {
            Some(next) => next.get_mut().unwrap_or_else(|poison| poison.into_inner()).push(buf, away.since).await,
            None => Instant::now(),
        };
        self.counters.step_back_at(away, back);
    }

    /// This stage's input ended and its `finish` ran: sends what is
    /// buffered, then drains the fused stage (see [`Fused::end_input`]).
    async fn end_fused(&mut self) {
        if !self.buf.is_empty() {
            self.send_fused().await;
        }
        // The fused stage's end (its own queue, `finish`, what follows)
        // is its work, not this stage's.
        let away = self.counters.step_away();
        if let Some(next) = self.next() {
            next.end_input().await;
        }
        self.counters.step_back(away);
    }
}

/// Awaits `future`, adding the time it spent pending to `blocked`. Reads the
/// clock only if it has to wait.
///
/// `future` is `Unpin` and polled where it lies, and this is a function
/// returning an `async move` block rather than an `async fn`: so the
/// returned future holds `future` once, not twice (an `async fn` keeps
/// its arguments as they came and again as locals, and pinning moves it
/// once more). A send's wait for room sits inside `emit`'s future, which
/// every idle replica's task holds room for.
#[allow(clippy::manual_async_fn, reason = "an `async fn` would hold its arguments twice")]
pub(crate) fn blocking<'a, F: Future + Unpin + 'a>(
    blocked: &'a mut Duration,
    mut future: F,
) -> impl Future<Output = F::Output> + 'a {
    async move {
        let mut since = None;
        let output = poll_fn(|cx| {
            let poll = Pin::new(&mut future).poll(cx);
            if poll.is_pending() && since.is_none() {
                since = Some(Instant::now());
            }
            poll
        })
        .await;
        if let Some(since) = since {
            *blocked += since.elapsed();
        }
        output
    }
}

/// Awaits `future` as [`blocking`] does, but shows the wait in `counters`
/// while it lasts and publishes its time there when it ends (or when the
/// wait is dropped), instead of adding it to a sum. Reads the clock only if
/// it has to wait.
///
/// Holds `future` once, as [`blocking`] does.
#[allow(clippy::manual_async_fn, reason = "an `async fn` would hold its arguments twice")]
fn blocking_shown<'a, F: Future + Unpin + 'a>(
    counters: &'a Counters,
    mut future: F,
) -> impl Future<Output = F::Output> + 'a {
    async move {
        let mut wait = Wait { counters, failures: false, since: None, publish: true };
        poll_fn(|cx| {
            let poll = Pin::new(&mut future).poll(cx);
            if poll.is_pending() && wait.since.is_none() {
                let now = Instant::now();
                wait.since = Some(now);
                counters.begin_wait(now, false);
            }
            poll
        })
        .await
    }
}

/// Awaits `send`, a send of the emitter's items (or, if `failures`, of its
/// failures), and shows a wait in `counters` while it lasts, so that a
/// snapshot taken during a stall counts the time blocked so far. Every
/// `.await` inside such a send is a wait for room or for a turn, so the
/// send is blocked from its first `Pending` until it is done. Reads the
/// clock only if it has to wait; otherwise costs a flag check per poll.
async fn shown<F: Future>(counters: &Counters, failures: bool, send: F) -> F::Output {
    let mut send = pin!(send);
    let mut wait = Wait { counters, failures, since: None, publish: true };
    let output = poll_fn(|cx| {
        let poll = send.as_mut().poll(cx);
        if poll.is_pending() && wait.since.is_none() {
            let now = Instant::now();
            wait.since = Some(now);
            counters.begin_wait(now, failures);
        }
        poll
    })
    .await;
    // The send added the time to its sum, which its caller publishes.
    wait.publish = false;
    output
}

/// A wait shown in a replica's counters; ends it when dropped, and then
/// publishes the time waited if `publish` (always for [`blocking_shown`];
/// for [`shown`], only if the send was dropped before it was done, since
/// then it never added the time to its sum).
struct Wait<'a> {
    counters: &'a Counters,
    failures: bool,
    since: Option<Instant>,
    publish: bool,
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(since) = self.since {
            self.counters.end_wait(since, Instant::now(), self.failures, self.publish);
        }
    }
}

/// The future of [`Emitter::emit`]: its send, if the item filled the
/// buffer, boxed (one allocation per batch), so that the future an item
/// gets is two words.
struct IfFull<'a> {
    send: Option<BoxFuture<'a, ()>>,
}

impl Future for IfFull<'_> {
    type Output = ();

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.send {
            None => Poll::Ready(()),
            Some(send) => send.as_mut().poll(cx),
        }
    }
}

/// A replica's task dropped before its emitter was done (the pipeline was
/// aborted): what it had emitted and not yet counted, and the outputs it
/// held, are published now, the latter as dropped. The last replica of an
/// `ordered` stage to go also counts what waits in the reorder point.
impl<T> Drop for Emitter<T> {
    fn drop(&mut self) {
        let mut dropped = std::mem::take(&mut self.dropped) + self.buf.len() as u64;
        if let Some(order) = self.order.take() {
            dropped += order.held_if_last();
        }
        // Items whose futures were still in flight.
        let aborted = self.in_flight.as_mut().map_or(0, |flight| {
            let flight = flight.get_mut().unwrap_or_else(|poison| poison.into_inner());
            self.counters.set_in_flight(0);
            flight.held()
        });
        let emitted = u64::from(std::mem::take(&mut self.emitted));
        self.counters.add(&Delta { emitted, dropped, aborted, ..Delta::default() });
    }
}

impl<T> fmt::Debug for Emitter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emitter").field("buffered", &self.buf.len()).finish_non_exhaustive()
    }
}

/// [`Emitter`]'s `first` when no item of the input in `process` waits in
/// the buffer without its share.
const NO_FIRST: u32 = u32::MAX;

/// What [`Emitter::send`] sends.
enum Outgoing {
    /// A batch's worth of an ordered stage's outputs, once it is their turn.
    Full,
    /// An ordered stage's outputs, if it is their turn.
    IfTurn,
    /// The outputs of a batch of inputs, through the reorder point.
    Chunk { first: u64, inputs: u64 },
    /// What `Stage::finish` emitted, through the reorder point.
    Last,
}

/// An upstream replica's hold on the next stage's input. When the last link
/// of a stage's replicas is dropped (they all finished), the next input is
/// closed, which is how a shutdown travels down the pipeline.
pub(crate) struct Link<T> {
    target: Arc<Target<T>>,
}

impl<T> Link<T> {
    /// A new set of links into `dispatch`; `taken`, for the pipeline's
    /// output, says whether anybody reads it.
    pub(crate) fn new(dispatch: Dispatch<T>, taken: Option<Arc<AtomicBool>>) -> Self {
        Link { target: Arc::new(Target { dispatch, taken, keyed: None }) }
    }

    /// A new set of links into the input of stage `stage`, whose items that
    /// its `partition_by` key function panics on fail at that stage: they
    /// count in `counters` (its replica 0's) as received and failed, and
    /// their [`Failure`](crate::Failure)s go through the route given by
    /// [`fail_into`](Self::fail_into).
    pub(crate) fn into_stage(dispatch: Dispatch<T>, stage: &'static str, counters: Arc<Counters>) -> Self {
        let keyed = matches!(dispatch, Dispatch::Keyed { .. }).then_some(KeyFailures { stage, counters, route: None });
        Link { target: Arc::new(Target { dispatch, taken: None, keyed }) }
    }

    /// Sets the failures route of a link made by [`into_stage`](Self::into_stage),
    /// before it is cloned (later, it does nothing). The route stays open
    /// as long as the link: until the replicas emitting into it end.
    pub(crate) fn fail_into(&mut self, route: &FailureRoute) {
        if let Some(Target { keyed: Some(keyed), .. }) = Arc::get_mut(&mut self.target) {
            keyed.route = Some(route.clone());
        }
    }
}

impl<T: Send> Link<T> {
    /// Moves every item of `items` downstream; see [`Target::send`].
    pub(crate) async fn send(&self, items: &mut Items<T>, blocked: &mut Blocked, dropped: &mut u64) {
        self.target.send(items, Waits::Sum(blocked), dropped).await;
    }
}

impl<T> Clone for Link<T> {
    fn clone(&self) -> Self {
        Link { target: self.target.clone() }
    }
}

struct Target<T> {
    dispatch: Dispatch<T>,
    taken: Option<Arc<AtomicBool>>,
    /// For a `partition_by` stage: where the items its key function panics
    /// on are counted and reported.
    keyed: Option<KeyFailures>,
}

/// Time a send of an `ordered` stage's outputs waited, not yet published:
/// in all (its `blocked` metric), and for room in the failures buffer
/// (`failures_blocked`, also part of `blocked`).
#[derive(Default)]
pub(crate) struct Blocked {
    pub(crate) all: Duration,
    pub(crate) failures: Duration,
}

/// Where the time a send waits for room goes.
enum Waits<'a> {
    /// Added to sums, which the caller publishes.
    Sum(&'a mut Blocked),
    /// Shown in these counters while it lasts, and published as it goes.
    Shown(&'a Counters),
}

/// Where a `partition_by` stage's items whose key function panicked go.
struct KeyFailures {
    stage: &'static str,
    counters: Arc<Counters>,
    route: Option<FailureRoute>,
}

impl<T> Target<T> {
    /// Moves every item of `items` into the target, in order, waiting for
    /// room; items nobody can take are counted in `dropped`. Time spent
    /// waiting goes where `waits` says.
    ///
    /// Written as a function returning an `async move` block, not as an
    /// `async fn`, which would hold its arguments twice: this future sits
    /// inside `emit`'s, which every idle replica's task holds room for.
    #[allow(clippy::manual_async_fn, reason = "an `async fn` would hold its arguments twice")]
    fn send<'a>(
        &'a self,
        items: &'a mut Items<T>,
        mut waits: Waits<'a>,
        dropped: &'a mut u64,
    ) -> impl Future<Output = ()> + 'a {
        async move {
            if self.taken.as_ref().is_some_and(|taken| !taken.load(Ordering::Acquire)) {
                *dropped += items.len() as u64;
                items.clear();
                return;
            }
            match &self.dispatch {
                Dispatch::Shared(queue) => {
                    while !items.is_empty() {
                        let room = match &mut waits {
                            Waits::Shown(counters) => blocking_shown(counters, queue.reserve(items.len())).await,
                            Waits::Sum(blocked) => blocking(&mut blocked.all, queue.reserve(items.len())).await,
                        };
                        match room {
                            Ok(room) => room.commit(items),
                            Err(Closed) => {
                                *dropped += items.len() as u64;
                                items.clear();
                            }
                        }
                    }
                }
                Dispatch::Keyed { queues, key } => {
                    // Its grouping takes room across its waits: boxed, so
                    // that the futures of every emitter's sends (which an
                    // idle replica's task holds room for) stay small.
                    Box::pin(self.send_keyed(queues, *key, items, waits, dropped)).await;
                }
            }
        }
    }

    /// [`send`](Self::send) into the queues of a `partition_by` stage.
    async fn send_keyed(
        &self,
        queues: &[Arc<Queue<T>>],
        key: fn(&T) -> u64,
        items: &mut Items<T>,
        mut waits: Waits<'_>,
        dropped: &mut u64,
    ) {
        // One reservation per queue: the batch is grouped by queue first
        // (each queue's items keep their order). An item leaves `items`
        // only once it is placed, so if this future is dropped while
        // waiting, the rest is still there to be counted. Items whose key
        // function panicked come last.
        let Grouped { groups, panics } = group_by_queue(items, key, queues.len());
        let mut panics = panics.into_iter();
        for (queue, len) in groups.runs() {
            if queue == queues.len() {
                for _ in 0..len {
                    let (item, tag) = items.remove_first().expect("a run's items are in `items`");
                    drop(item);
                    let panic = panics.next().expect("one panic per item whose key panicked");
                    // Its failure may wait for room in the failures
                    // buffer: shown as such while it lasts, where the
                    // sender shows its waits, and counted in
                    // `failures_blocked` as well as in `blocked`. Rare:
                    // boxed, to take no room in this future.
                    let mut waited = Duration::ZERO;
                    let failed = self.key_panicked(panic, tag, &mut waited, dropped);
                    match &mut waits {
                        Waits::Shown(counters) => {
                            Box::pin(self::shown(counters, true, failed)).await;
                            counters.add(&Delta { failures_blocked: waited, blocked: waited, ..Delta::default() });
                        }
                        Waits::Sum(blocked) => {
                            Box::pin(failed).await;
                            blocked.all += waited;
                            blocked.failures += waited;
                        }
                    }
                }
                continue;
            }
            let mut left = len;
            while left > 0 {
                let room = match &mut waits {
                    Waits::Shown(counters) => blocking_shown(counters, queues[queue].reserve(left)).await,
                    Waits::Sum(blocked) => blocking(&mut blocked.all, queues[queue].reserve(left)).await,
                };
                match room {
                    Ok(room) => {
                        left -= room.len();
                        room.commit(items);
                    }
                    Err(Closed) => {
                        *dropped += left as u64;
                        drop(items.split_front(left));
                        left = 0;
                    }
                }
            }
        }
    }
}

impl<T> Target<T> {
    /// An item's key function panicked: the item (already dropped) fails at
    /// the keyed stage, counted as received, processed and failed by its
    /// replica 0, and its failure is sent, waiting for room as
    /// [`Failing::send`](super::failure::Failing::send) does. Without a
    /// stage to fail at (a target not made by [`Link::into_stage`]), the
    /// item counts in `dropped`.
    ///
    /// Cancel safe: the item is counted before the first `.await`; a
    /// failure not sent yet counts as a dropped failure.
    async fn key_panicked(&self, panic: Panicked, tag: Tag, blocked: &mut Duration, dropped: &mut u64) {
        let Some(keyed) = &self.keyed else {
            *dropped += 1;
            return;
        };
        keyed.counters.add(&Delta { received: 1, processed: 1, failed: 1, ..Delta::default() });
        if let Some(route) = &keyed.route {
            route.key_panicked(keyed.stage, panic, tag, blocked).await;
        } else {
            tag.fail([&Failure::key_panicked(keyed.stage, panic)]);
        }
    }
}

impl<T> Drop for Target<T> {
    fn drop(&mut self) {
        self.dispatch.close();
    }
}
