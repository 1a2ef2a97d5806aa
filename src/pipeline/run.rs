//! A stage replica's task: serve calls and casts, process items in batches,
//! drain on shutdown.

use std::{
    future::{Future, poll_fn},
    panic::AssertUnwindSafe,
    pin::pin,
    sync::Arc,
    task::Poll,
};

use super::{
    BATCH, Emitter, Panicked, Stage,
    ack::items::Items,
    batch::{BatchSpec, Hold, Take, TakeFrom, Whole},
    concurrency::{self, Concurrency},
    control::serve as serve_control,
    drain::StageDrain,
    flush::ReplicaMark,
    item_loop::{self, ItemLoop, Stop},
    metrics::{Counters, Delta},
    queue::{Queue, Reader},
    rate::RateLimit,
    turn::Turn,
};
use crate::{
    registry::Ready,
    server::{
        handle::Inbox,
        restart::Restarts,
        run::{Crashed, boot, fail, handle, terminate},
    },
};
use futures::{FutureExt, future::Either};
use tokio::time::Instant;

/// What woke the replica up.
enum Work<S: Stage> {
    Control(crate::server::envelope::Envelope<S>),
    /// A batch of items, numbered from this one on.
    Items(u64),
    InputDone,
    /// A call, cast or item for a stage fused into this one.
    Fused,
}

/// The body of one replica's task. It ends once its input is closed and
/// every replica of its stage (counted by `drain`) has drained; dropping
/// `out` then closes the next stage's input (when this was the last replica
/// of its stage).
///
/// An idle replica's task holds this future for as long as it lives, so
/// it is kept small: its parts are captured by an `async move` block (an
/// `async fn` would hold its arguments twice, once as they came and once as
/// locals), and what runs once per life (booting, the end of the input,
/// the end after failing for good) runs in futures of its own on the heap,
/// so the user's `init`, `finish` and `terminate` futures take no room in
/// it while the replica waits. What runs per item or per call stays inline.
#[allow(clippy::manual_async_fn, reason = "an `async fn` would hold its arguments twice")]
#[allow(clippy::too_many_arguments, reason = "one per part of the stage a replica uses")]
pub(crate) fn run<S: Stage, K: TakeFrom<S>>(
    mut control: Inbox<S>,
    input: Arc<Queue<K::Item>>,
    mark: ReplicaMark,
    mut out: Emitter<S::Out>,
    registry: S::Registry,
    mut ready: Option<Ready>,
    drain: Arc<StageDrain>,
    pace: Pace,
) -> impl Future<Output = ()> + Send {
    // The items taken but not processed yet, and the number of the first,
    // with how the replica takes and goes through them. Its room is
    // allocated by the first batch, not before. Made here, so that the
    // task holds it once.
    // Its drop stops the pipeline's clock once every replica's task ended,
    // however.
    let open = K::open(&pace, &mark);
    let mut batch = Ended(Batch::holding(out.counters.clone(), open).with_pace(pace));
    async move {
        let mut restarts = Restarts::new(S::restart_limit);
        // Whether the input ended and `finish` ran.
        let mut ended = false;
        // This replica's place in line for items; it records each batch
        // taken in `mark`, which says when the batch ended, for `flush`.
        let mut reader = K::reader(&input, &mark);
        // Its runs of items and waits between them, for a replica that
        // runs `#[fused]` stages after its own.
        let mut turn = Turn::new(out.has_fused());
        'life: loop {
            // Booting is not working on items (a replica is aside from its
            // start until its first batch).
            out.counters.set_aside();
            let Some(mut server) = Box::pin(boot::<S>(&registry, &mut restarts)).await else {
                break 'life;
            };
            // Stages fused into this one boot in this task, before it is ready.
            out.start_fused().await;
            // Ready.
            drop(ready.take());
            loop {
                // Items left by a handler that panicked go to the new state.
                if !batch.items.is_empty() {
                    let processed =
                        process_batch::<S, K>(&mut server, &mut control, &mut batch, &mut out, K::inputs(&mut reader))
                            .await;
                    if batch.items.is_empty() {
                        mark.ended();
                    }
                    if let Err(Crashed) = processed {
                        if restarts.allow() {
                            continue 'life;
                        }
                        break 'life;
                    }
                }
                // A replica whose items await take only its share of a burst.
                reader.share(batch.awaited);
                let work = poll_fn(|cx| {
                    // Calls and casts first.
                    if let Poll::Ready(Some(envelope)) = control.rx.poll_recv(cx) {
                        return Poll::Ready(Work::Control(envelope));
                    }
                    if out.poll_fused(cx).is_ready() {
                        return Poll::Ready(Work::Fused);
                    }
                    let popped = K::Open::poll_take(cx, &mut reader, &mut batch, &out.counters);
                    if popped.is_pending() {
                        // Waiting for work.
                        out.counters.set_aside();
                        turn.wait(cx);
                    }
                    popped.map(|first| first.map_or(Work::InputDone, Work::Items))
                })
                .await;
                match work {
                    Work::Control(envelope) => {
                        out.counters.set_aside();
                        if let Err(Crashed) = serve_control(&mut server, envelope, &mut out).await {
                            if restarts.allow() {
                                continue 'life;
                            }
                            break 'life;
                        }
                    }
                    Work::Fused => {
                        // The fused stage's work, not this one's.
                        out.counters.set_aside();
                        out.serve_fused().await;
                    }
                    Work::Items(first) => {
                        turn.took(batch.items.len());
                        K::Open::took(&mut batch, first, &out.counters);
                    }
                    Work::InputDone => {
                        let drained = Box::pin(end_of_input(&mut server, &mut control, &mut out, &drain, &mut ended));
                        if let Err(Crashed) = drained.await {
                            if restarts.allow() {
                                continue 'life;
                            }
                            break 'life;
                        }
                        Box::pin(terminate(server)).await;
                        return;
                    }
                }
            }
        }
        Box::pin(failed_for_good(ready, control, &mut reader, &mark, &mut batch, &mut out, &drain, ended)).await;
    }
}

/// The input ended: lets the stage emit what it still holds (once, even if
/// a call served below panics and the state is rebuilt), then serves calls
/// and casts until every replica of the stage has drained (the others may
/// still call this one), then those already queued. `Ok` once the control
/// queue is closed and empty.
async fn end_of_input<S: Stage>(
    server: &mut S,
    control: &mut Inbox<S>,
    out: &mut Emitter<S::Out>,
    drain: &StageDrain,
    ended: &mut bool,
) -> Result<(), Crashed> {
    // The replica's counters (its emitter's).
    let counters = out.counters.clone();
    if !*ended {
        *ended = true;
        tracing::debug!("input ended: finishing");
        // Its timers stop: nothing is emitted after `finish`.
        control.state.cancel_timers();
        // `finish` works on what the replica holds.
        counters.resume();
        out.begin_finish();
        let finished = AssertUnwindSafe(server.finish(out)).catch_unwind().await;
        if let Err(panic) = finished {
            // Logged as a failure `in_finish`.
            out.fail_panic(Panicked::new(&panic));
        }
        out.send_failures().await;
        out.end_input().await;
        drain.finished();
    }
    // From here on, only calls and casts.
    counters.set_aside();
    loop {
        let envelope = tokio::select! {
            biased;
            envelope = control.rx.recv() => envelope,
            () = drain.wait() => {
                control.rx.close();
                control.rx.recv().await
            }
        };
        let Some(envelope) = envelope else {
            tracing::debug!("drained");
            return Ok(());
        };
        handle(server, envelope).await?;
    }
}

/// Failed for good: calls and casts get `Failed`; items are still taken
/// and counted as failed (each with its `Failure`), so the pipeline is not
/// blocked and every item is accounted for.
#[allow(clippy::too_many_arguments, reason = "the parts of the replica's task it ends")]
async fn failed_for_good<S: Stage, Q, O: Hold>(
    mut ready: Option<Ready>,
    control: Inbox<S>,
    reader: &mut Reader<'_, Q>,
    mark: &ReplicaMark,
    batch: &mut Batch<S::In, O>,
    out: &mut Emitter<S::Out>,
    drain: &StageDrain,
    ended: bool,
) {
    let counters = out.counters.clone();
    // Ready, failed for good.
    drop(ready.take());
    fail(control);
    // Failing items is its work (and its waits for room in the failures
    // buffer count as blocked); waiting for them is not.
    counters.resume();
    // The inputs taken, and the items of an open batch (of a `#[batch]`
    // stage), which were received but not processed.
    let left = batch.items.len() as u64 + batch.open.held();
    let open = batch.open.release_tags();
    if left > 0 {
        let mut tags = batch.items.take_tags();
        tags.extend(open);
        counters.add(&Delta { processed: left, failed: left, ..Delta::default() });
        out.fail_stopped(left, tags).await;
        out.end_batch(batch.first, left).await;
        mark.ended();
    }
    let max_demand = batch.max_demand as usize;
    // What is taken from the queue from now on, failed at once.
    let mut taken = Items::new();
    loop {
        // The stages fused into this one go on: their calls, casts and own
        // items are still served here.
        let work = poll_fn(|cx| {
            if out.poll_fused(cx).is_ready() {
                return Poll::Ready(None);
            }
            let popped = reader.poll_pop_numbered(cx, &mut taken, max_demand);
            if popped.is_pending() {
                counters.set_aside();
            }
            popped.map(Some)
        })
        .await;
        let first = match work {
            None => {
                counters.set_aside();
                out.serve_fused().await;
                continue;
            }
            Some(None) => break,
            Some(Some(first)) => first,
        };
        counters.resume();
        let n = taken.len() as u64;
        counters.add(&Delta { received: n, processed: n, failed: n, ..Delta::default() });
        let tags = taken.take_tags();
        out.fail_stopped(n, tags).await;
        // An ordered stage waits for every input's (here: empty) outputs.
        out.end_batch(first, n).await;
        mark.ended();
    }
    if !ended {
        out.end_input().await;
        drain.finished();
    }
}

/// A replica's batch, which records in the replica's counters that its
/// task ended (or was dropped) when it goes: after counting the items it
/// still holds as aborted, as the batch's own drop does. (One field of the
/// task instead of two handles of the same counters.)
struct Ended<T, O: Hold>(Batch<T, O>);

impl<T, O: Hold> Drop for Ended<T, O> {
    fn drop(&mut self) {
        self.0.abort_held();
        self.0.counters.end();
    }
}

impl<T, O: Hold> std::ops::Deref for Ended<T, O> {
    type Target = Batch<T, O>;

    fn deref(&self) -> &Batch<T, O> {
        &self.0
    }
}

impl<T, O: Hold> std::ops::DerefMut for Ended<T, O> {
    fn deref_mut(&mut self) -> &mut Batch<T, O> {
        &mut self.0
    }
}

/// How a replica of a stage takes and goes through items: up to
/// `max_demand` at a time, each after a token of the stage's rate limit,
/// if it has one, with up to `concurrency` futures in flight.
#[derive(Clone)]
pub(crate) struct Pace {
    pub(crate) max_demand: usize,
    pub(crate) limit: Option<Arc<RateLimit>>,
    /// `#[batch(..)]`: how its replicas cut their batches.
    pub(crate) batch: Option<BatchSpec>,
    /// How many futures handed over by `emit_async` a replica keeps in
    /// flight (`max_demand` is at least its limit).
    pub(crate) concurrency: Concurrency,
}

/// Items a replica took from its queue, numbered from `first` on, and
/// what it holds besides (`open`: for a `#[batch]` stage, its open batch).
pub(crate) struct Batch<T, O: Hold = Whole> {
    /// Last to first: the next item is popped from the end (a `Vec` pops
    /// for less than a `VecDeque`); whoever fills it reverses it.
    pub(crate) items: Items<T>,
    pub(crate) first: u64,
    /// What the replica holds besides: nothing for a plain stage, the
    /// open batch of a `#[batch]` stage.
    pub(crate) open: O,
    counters: Arc<Counters>,
    /// The stage's rate limit: each item waits for a token before `process`.
    pub(crate) limit: Option<Arc<RateLimit>>,
    /// Whether `process` awaited something for an item of the last batch
    /// (true before the first): such a replica takes only its share of
    /// the items waiting, so that slow items spread over the replicas.
    pub(crate) awaited: bool,
    /// The most items the replica takes at a time (the stage's
    /// `max_demand`, at most `u32::MAX`).
    pub(crate) max_demand: u32,
}

impl<T> Batch<T> {
    /// An empty batch whose items count as aborted in `counters` if it is
    /// dropped holding some. Its room is allocated by the first batch, not
    /// before.
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        Batch::holding(counters, Whole)
    }
}

impl<T, O: Hold> Batch<T, O> {
    /// The same, holding `open` besides its inputs.
    pub(crate) fn holding(counters: Arc<Counters>, open: O) -> Self {
        Batch { items: Items::new(), first: 0, open, counters, limit: None, awaited: true, max_demand: BATCH as u32 }
    }

    /// The same, taking and going through items at `pace`.
    pub(crate) fn with_pace(mut self, pace: Pace) -> Self {
        self.limit = pace.limit;
        self.max_demand = u32::try_from(pace.max_demand).unwrap_or(u32::MAX).max(1);
        self
    }
}

impl<T, O: Hold> Batch<T, O> {
    /// Counts the items held as aborted and lets them go.
    fn abort_held(&mut self) {
        let aborted = self.items.len() as u64 + self.open.release();
        if aborted > 0 {
            self.items.clear();
            self.counters.add(&Delta { aborted, ..Delta::default() });
        }
    }
}

/// The replica's task was dropped (the pipeline was aborted, or the runtime
/// shut down): the items it took and did not process count as aborted.
impl<T, O: Hold> Drop for Batch<T, O> {
    fn drop(&mut self) {
        self.abort_held();
    }
}

/// The counts of a batch in progress, published when it is dropped: at the
/// end of the batch, or when the task is dropped in the middle of it (then
/// the item in `process`, if any, counts as aborted). Only the counts a
/// batch moves, not a whole [`Delta`]: an idle replica's task holds room
/// for it.
pub(crate) struct Progress<'a> {
    counters: &'a Counters,
    pub(crate) processed: u64,
    failed: u64,
    /// 1 while an item is in `process` (the weight of an input of a
    /// `#[batch]` stage).
    pub(crate) in_process: u64,
}

impl<'a> Progress<'a> {
    fn new(counters: &'a Counters) -> Self {
        Progress { counters, processed: 0, failed: 0, in_process: 0 }
    }

    /// Publishes what is done so far.
    fn publish(&mut self) {
        self.publish_with(Delta::default());
    }

    /// Publishes what is done so far, with `delta`.
    fn publish_with(&mut self, delta: Delta) {
        let processed = std::mem::take(&mut self.processed);
        let failed = std::mem::take(&mut self.failed);
        self.counters.add(&Delta { processed, failed, ..delta });
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        let busy = self.counters.end_batch();
        self.publish_with(Delta { aborted: self.in_process, busy, ..Delta::default() });
    }
}

/// Processes the batch item by item, serving calls and casts that arrive in
/// between. If one of those handlers panics, the items not processed yet
/// stay in the batch for the restarted state.
///
/// With `reader`, a replica whose futures are in flight (`#[concurrency]`)
/// takes more items from it into the batch as they free room (see
/// `concurrency::settle`).
///
/// A batch whose items hold no acknowledgements, in a stage that takes no
/// more items into it meanwhile (not concurrent), stays plain throughout:
/// it goes through [`process_items`]'s instance that checks no item's
/// tag, so the path of a pipeline fed without acknowledgements is what it
/// was before they existed. Both instances have the same layout: the
/// future awaiting either is no larger than one of them.
pub(crate) fn process_batch<'a, S: Stage, K: TakeFrom<S>>(
    server: &'a mut S,
    control: &'a mut Inbox<S>,
    batch: &'a mut Batch<S::In, K::Open>,
    out: &'a mut Emitter<S::Out>,
    reader: Option<&'a mut Reader<'_, S::In>>,
) -> impl Future<Output = Result<(), Crashed>> + 'a {
    if batch.items.has_tags() || out.is_concurrent() {
        Either::Left(process_items::<S, K, true>(server, control, batch, out, reader))
    } else {
        Either::Right(process_items::<S, K, false>(server, control, batch, out, reader))
    }
}

/// [`process_batch`]: its items' tags are checked if `TAGS`; otherwise
/// its items are known to hold none.
///
/// A function returning an `async move` block, not an `async fn`, which
/// would hold its arguments twice: every idle replica's task holds room
/// for this future.
#[allow(clippy::manual_async_fn, reason = "an `async fn` would hold its arguments twice")]
fn process_items<'a, S: Stage, K: TakeFrom<S>, const TAGS: bool>(
    server: &'a mut S,
    control: &'a mut Inbox<S>,
    batch: &'a mut Batch<S::In, K::Open>,
    out: &'a mut Emitter<S::Out>,
    mut reader: Option<&'a mut Reader<'_, S::In>>,
) -> impl Future<Output = Result<(), Crashed>> + 'a {
    async move {
        // The replica's counters, reached through `progress` (one reference
        // fewer in the replica's future).
        let mut progress = Progress::new(&batch.counters);
        progress.counters.begin_batch();
        out.begin_batch(batch.first);
        let mut taken = batch.items.len() as u64;
        let mut result = Ok(());
        let mut awaited = false;
        'items: loop {
            let (processed, waited) = if (!TAGS || !out.is_concurrent()) && batch.limit.is_none() {
                // Items with no futures in flight (none without `TAGS`) and
                // no rate limit, with acknowledgements or not, have a loop
                // of their own: an item that goes well, without waiting,
                // goes round it; any other leaves it for the bookkeeping
                // below.
                loop {
                    let stop = ItemLoop::<_, K, _, _, _>::new(
                        server,
                        out,
                        &mut batch.items,
                        &mut batch.open,
                        &mut progress,
                        &control.state,
                        item_loop::start::<S>,
                    )
                    .await;
                    match stop {
                        Stop::Empty => break 'items,
                        Stop::Item(processed, waited) => break (processed, waited),
                        Stop::Mail => {
                            progress.publish();
                            let away = progress.counters.step_away();
                            // Boxed: a second place awaiting it would take room
                            // in every replica's task.
                            result = Box::pin(serve_waiting(server, control, out)).await;
                            progress.counters.step_back(away);
                            if result.is_err() {
                                break 'items;
                            }
                        }
                    }
                }
            } else {
                if batch.items.is_empty() {
                    if !out.has_in_flight() {
                        break;
                    }
                    // Its futures in flight settle, or free room for more items.
                    progress.publish();
                    let refill =
                        concurrency::Refill::new(reader.as_deref_mut(), &mut batch.items, batch.max_demand, taken);
                    let settled =
                        Box::pin(concurrency::settle(server, control, out, progress.counters, true, refill)).await;
                    match settled {
                        Ok(0) => break,
                        Ok(more) => {
                            taken += more as u64;
                            progress.counters.add(&Delta { received: more as u64, ..Delta::default() });
                            continue;
                        }
                        Err(crashed) => {
                            result = Err(crashed);
                            break;
                        }
                    }
                }
                if let Some(limit) = &batch.limit {
                    // The wait, rare on the item path, takes no room in the
                    // replica's future. The item stays in the batch meanwhile, so
                    // it counts as aborted if the task is dropped.
                    if !limit.try_acquire() {
                        progress.publish();
                        result = Box::pin(throttle(limit, progress.counters, server, control, out)).await;
                        if result.is_err() {
                            break;
                        }
                    }
                }
                let Some((item, tag)) = batch.items.pop_checked::<TAGS>() else { break };
                out.begin_item(tag);
                // How many items the input stands for: 1 but for an input of a
                // `#[batch]` stage. Kept in `progress` alone while `process`
                // runs: a borrowed local, or a copy, would take room in the task.
                progress.in_process = K::weight(&item);
                batch.open.processed(progress.in_process);
                // Through the item loop's future, one item at a time: so
                // `process` is polled in one place (see `pipeline/item_loop.rs`).
                let mut one = pin!(ItemLoop::<_, K, _, _, _>::one(
                    server,
                    out,
                    &mut batch.items,
                    &mut batch.open,
                    &mut progress,
                    &control.state,
                    item_loop::start::<S>,
                ));
                match one.as_mut().start(item) {
                    Err(panic) => (Err(panic), false),
                    Ok(()) => match one.await {
                        Stop::Item(processed, waited) => (processed, waited),
                        Stop::Empty | Stop::Mail => unreachable!("a future made by `one` stops after its item"),
                    },
                }
            };
            awaited |= waited;
            if let Err(panic) = processed {
                // Logged as the item's failure.
                out.fail_panic(Panicked::new(&panic));
            }
            // An item counts as failed once, however many failures it gave (an
            // input of a `#[batch]` stage: at most as many as its items).
            let item_failed = out.take_item_failed();
            // An item with futures in flight is done when they are.
            if let Some(failed) = out.close_item(item_failed) {
                progress.processed += progress.in_process;
                if item_failed {
                    progress.failed += out.settle_failed(progress.in_process);
                } else if failed {
                    // Only by futures that completed before `process` returned,
                    // their failures already sent: one item (a `#[batch]`
                    // stage hands none over).
                    progress.failed += progress.in_process.min(1);
                }
            } else if item_failed {
                // Counted when its futures are done; its failures are sent now,
                // settled.
                out.settle_failed(progress.in_process);
            }
            // The item is counted (or, with futures in flight, will be when
            // they are done): no longer in `process`, so not counted as
            // aborted too if the task is dropped while its failures wait
            // for room below.
            progress.in_process = 0;
            if TAGS {
                // (Without, `begin_item` left the emitter holding no tag.)
                out.end_item(item_failed);
            }
            if item_failed {
                out.send_failures().await;
            }
            if waited {
                // A stage that awaits per item is slow: send its output now, and
                // serve the stages fused into this one, which otherwise would
                // wait for the end of the batch.
                out.flush().await;
                out.serve_fused_waiting().await;
            }
            if !batch.items.is_empty() && control.state.take_mail() {
                // Publish what is done, so a call sees metrics as current as
                // the state it reads.
                progress.publish();
                let away = progress.counters.step_away();
                result = serve_waiting(server, control, out).await;
                progress.counters.step_back(away);
                if result.is_err() {
                    break;
                }
            }
        }
        // The batch ends once its futures in flight are done.
        if out.has_in_flight() {
            progress.publish();
            let settled = Box::pin(concurrency::settle(server, control, out, progress.counters, false, None)).await;
            result = result.and(settled.map(|_| ()));
        }
        let done = taken - batch.items.len() as u64;
        if done > 0 {
            batch.awaited = awaited;
        }
        out.end_batch(batch.first, done).await;
        batch.first += done;
        drop(progress);
        result
    }
}

/// Waits for a token of the stage's rate limit, showing the wait in
/// `counters` as time throttled while it lasts (until the wait ends or is
/// dropped), and serving the calls and casts that arrive meanwhile.
/// `Err` if one of their handlers panicked.
async fn throttle<S: Stage>(
    limit: &RateLimit,
    counters: &Counters,
    server: &mut S,
    control: &mut Inbox<S>,
    out: &mut Emitter<S::Out>,
) -> Result<(), Crashed> {
    /// What came first.
    enum Next<E, D> {
        Envelope(E),
        Fused,
        Done(D),
        Token,
    }
    let _throttled = Throttled::begin(counters);
    let mut acquire = pin!(limit.acquire());
    loop {
        let next = poll_fn(|cx| {
            if let Poll::Ready(Some(envelope)) = control.rx.poll_recv(cx) {
                return Poll::Ready(Next::Envelope(envelope));
            }
            // The stages fused into this one are served meanwhile too.
            if out.poll_fused(cx).is_ready() {
                return Poll::Ready(Next::Fused);
            }
            // And the futures in flight go on, their outputs with them.
            if let Some(done) = out.poll_in_flight(cx) {
                return Poll::Ready(Next::Done(done));
            }
            acquire.as_mut().poll(cx).map(|_| Next::Token)
        })
        .await;
        match next {
            Next::Envelope(envelope) => serve_control(server, envelope, out).await?,
            Next::Fused => out.serve_fused().await,
            Next::Done(done) => {
                out.deliver(done).await;
                out.flush().await;
            }
            Next::Token => return Ok(()),
        }
    }
}

/// A wait for a rate limit's token, shown in a replica's counters from
/// its start until it is dropped.
struct Throttled<'a> {
    counters: &'a Counters,
    since: Instant,
}

impl<'a> Throttled<'a> {
    fn begin(counters: &'a Counters) -> Self {
        let since = Instant::now();
        counters.begin_throttle(since);
        Throttled { counters, since }
    }
}

impl Drop for Throttled<'_> {
    fn drop(&mut self) {
        self.counters.end_throttle(self.since, Instant::now());
    }
}

/// Handles the calls and casts already waiting, without waiting for more,
/// then what the stages fused after this one have waiting (their calls,
/// casts and own items also mark this stage's mail).
pub(crate) async fn serve_waiting<S: Stage>(
    server: &mut S,
    control: &mut Inbox<S>,
    out: &mut Emitter<S::Out>,
) -> Result<(), Crashed> {
    while let Ok(envelope) = control.rx.try_recv() {
        serve_control(server, envelope, out).await?;
    }
    out.serve_fused_waiting().await;
    Ok(())
}
