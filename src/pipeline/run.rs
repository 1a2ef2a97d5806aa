//! A stage replica's task: serve calls and casts, process items in batches,
//! drain on shutdown.

use std::{
    future::{Future, poll_fn},
    panic::AssertUnwindSafe,
    pin::pin,
    sync::Arc,
    task::Poll,
};

use futures::FutureExt;
use tokio::sync::oneshot;

use super::{
    BATCH, Emitter, Panicked, Stage,
    drain::StageDrain,
    flush::ReplicaMark,
    metrics::{Counters, Delta},
    queue::{Queue, Reader},
};
use crate::server::{
    handle::Inbox,
    restart::Restarts,
    run::{Crashed, boot, fail, handle, report, terminate},
};

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
pub(crate) fn run<S: Stage>(
    mut control: Inbox<S>,
    input: Arc<Queue<S::In>>,
    mark: ReplicaMark,
    mut out: Emitter<S::Out>,
    registry: S::Registry,
    counters: Arc<Counters>,
    ready: oneshot::Sender<()>,
    drain: Arc<StageDrain>,
) -> impl Future<Output = ()> + Send {
    async move {
        // Stops the pipeline's clock once every replica's task ended, however.
        let _ended = Ended(counters.clone());
        let mut ready = Some(ready);
        let mut restarts = Restarts::new(S::restart_limit());
        // The items taken but not processed yet, and the number of the
        // first. Its room is allocated by the first batch, not before.
        let mut batch = Batch::new(counters.clone());
        // Whether the input ended and `finish` ran.
        let mut ended = false;
        // This replica's place in line for items; it records each batch
        // taken in `mark`, which says when the batch ended, for `flush`.
        let mut reader = input.marked_reader(mark.mark());
        'life: loop {
            // Booting is not working on items (a replica is aside from its
            // start until its first batch).
            counters.set_aside();
            let Some(mut server) = Box::pin(boot::<S>(&registry, &mut restarts)).await else {
                break 'life;
            };
            // Stages fused into this one boot in this task, before it is ready.
            out.start_fused().await;
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            loop {
                // Items left by a handler that panicked go to the new state.
                if !batch.items.is_empty() {
                    let processed = process_batch(&mut server, &mut control, &mut batch, &mut out, &counters).await;
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
                let work = poll_fn(|cx| {
                    // Calls and casts first.
                    if let Poll::Ready(Some(envelope)) = control.rx.poll_recv(cx) {
                        return Poll::Ready(Work::Control(envelope));
                    }
                    if out.poll_fused(cx).is_ready() {
                        return Poll::Ready(Work::Fused);
                    }
                    let popped = reader.poll_pop_numbered(cx, &mut batch.items, BATCH);
                    if popped.is_pending() {
                        // Waiting for work.
                        counters.set_aside();
                    }
                    popped.map(|first| first.map_or(Work::InputDone, Work::Items))
                })
                .await;
                match work {
                    Work::Control(envelope) => {
                        counters.set_aside();
                        if let Err(Crashed) = handle(&mut server, envelope).await {
                            if restarts.allow() {
                                continue 'life;
                            }
                            break 'life;
                        }
                    }
                    Work::Fused => {
                        // The fused stage's work, not this one's.
                        counters.set_aside();
                        out.serve_fused().await;
                    }
                    Work::Items(first) => {
                        batch.first = first;
                        batch.items.reverse();
                        counters.add(&Delta { received: batch.items.len() as u64, ..Delta::default() });
                    }
                    Work::InputDone => {
                        let drained =
                            Box::pin(end_of_input(&mut server, &mut control, &mut out, &counters, &drain, &mut ended));
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
        Box::pin(failed_for_good(ready, control, &mut reader, &mark, &mut batch, &mut out, &counters, &drain, ended))
            .await;
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
    counters: &Counters,
    drain: &StageDrain,
    ended: &mut bool,
) -> Result<(), Crashed> {
    if !*ended {
        *ended = true;
        // `finish` works on what the replica holds.
        counters.resume();
        out.begin_finish();
        let finished = AssertUnwindSafe(server.finish(out)).catch_unwind().await;
        if let Err(panic) = finished {
            report::<S>("finish", &panic);
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
        let Some(envelope) = envelope else { return Ok(()) };
        handle(server, envelope).await?;
    }
}

/// Failed for good: calls and casts get `Failed`; items are still taken
/// and counted as failed (each with its `Failure`), so the pipeline is not
/// blocked and every item is accounted for.
#[allow(clippy::too_many_arguments, reason = "the parts of the replica's task it ends")]
async fn failed_for_good<S: Stage>(
    mut ready: Option<oneshot::Sender<()>>,
    control: Inbox<S>,
    reader: &mut Reader<'_, S::In>,
    mark: &ReplicaMark,
    batch: &mut Batch<S::In>,
    out: &mut Emitter<S::Out>,
    counters: &Counters,
    drain: &StageDrain,
    ended: bool,
) {
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    fail(control);
    // Failing items is its work (and its waits for room in the failures
    // buffer count as blocked); waiting for them is not.
    counters.resume();
    let left = batch.items.len() as u64;
    if left > 0 {
        batch.items.clear();
        counters.add(&Delta { processed: left, failed: left, ..Delta::default() });
        out.fail_stopped(left).await;
        out.end_batch(batch.first, left).await;
        mark.ended();
    }
    let pop = |cx: &mut std::task::Context<'_>, reader: &mut Reader<'_, S::In>, items: &mut Vec<S::In>| {
        let popped = reader.poll_pop_numbered(cx, items, BATCH);
        if popped.is_pending() {
            counters.set_aside();
        }
        popped
    };
    while let Some(first) = poll_fn(|cx| pop(cx, reader, &mut batch.items)).await {
        counters.resume();
        let n = batch.items.len() as u64;
        counters.add(&Delta { received: n, processed: n, failed: n, ..Delta::default() });
        batch.items.clear();
        out.fail_stopped(n).await;
        // An ordered stage waits for every input's (here: empty) outputs.
        out.end_batch(first, n).await;
        mark.ended();
    }
    if !ended {
        out.end_input().await;
        drain.finished();
    }
}

/// Records in a replica's counters that its task ended (or was dropped).
struct Ended(Arc<Counters>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Items a replica took from its queue, numbered from `first` on.
pub(crate) struct Batch<T> {
    /// Last to first: the next item is popped from the end (a `Vec` pops
    /// for less than a `VecDeque`); whoever fills it reverses it.
    pub(crate) items: Vec<T>,
    pub(crate) first: u64,
    counters: Arc<Counters>,
}

impl<T> Batch<T> {
    /// An empty batch whose items count as aborted in `counters` if it is
    /// dropped holding some. Its room is allocated by the first batch, not
    /// before.
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        Batch { items: Vec::new(), first: 0, counters }
    }
}

/// The replica's task was dropped (the pipeline was aborted, or the runtime
/// shut down): the items it took and did not process count as aborted.
impl<T> Drop for Batch<T> {
    fn drop(&mut self) {
        let aborted = self.items.len() as u64;
        if aborted > 0 {
            self.counters.add(&Delta { aborted, ..Delta::default() });
        }
    }
}

/// The counts of a batch in progress, published when it is dropped: at the
/// end of the batch, or when the task is dropped in the middle of it (then
/// the item in `process`, if any, counts as aborted).
struct Progress<'a> {
    counters: &'a Counters,
    delta: Delta,
    /// 1 while an item is in `process`.
    in_process: u64,
}

impl Progress<'_> {
    /// Publishes what is done so far.
    fn publish(&mut self) {
        self.counters.add(&std::mem::take(&mut self.delta));
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        self.delta.aborted += self.in_process;
        self.delta.busy = self.counters.end_batch();
        self.publish();
    }
}

/// Processes the batch item by item, serving calls and casts that arrive in
/// between. If one of those handlers panics, the items not processed yet
/// stay in the batch for the restarted state.
pub(crate) async fn process_batch<S: Stage>(
    server: &mut S,
    control: &mut Inbox<S>,
    batch: &mut Batch<S::In>,
    out: &mut Emitter<S::Out>,
    counters: &Counters,
) -> Result<(), Crashed> {
    counters.begin_batch();
    out.begin_batch(batch.first);
    let mut progress = Progress { counters, delta: Delta::default(), in_process: 0 };
    let taken = batch.items.len() as u64;
    let mut result = Ok(());
    while let Some(item) = batch.items.pop() {
        let mut waited = false;
        progress.in_process = 1;
        let processed = {
            let mut process = pin!(AssertUnwindSafe(server.process(item, out)).catch_unwind());
            poll_fn(|cx| {
                let poll = process.as_mut().poll(cx);
                waited |= poll.is_pending();
                poll
            })
            .await
        };
        progress.in_process = 0;
        progress.delta.processed += 1;
        if let Err(panic) = processed {
            report::<S>("process", &panic);
            out.fail_panic(Panicked::new(&panic));
        }
        // An item counts as failed once, however many failures it gave.
        if out.take_item_failed() {
            progress.delta.failed += 1;
            out.send_failures().await;
        }
        if waited {
            // A stage that awaits per item is slow: send its output now.
            out.flush().await;
        }
        if !batch.items.is_empty() && control.state.take_mail() {
            // Publish what is done, so a call sees metrics as current as
            // the state it reads.
            progress.publish();
            let away = counters.step_away();
            result = serve_waiting(server, control).await;
            counters.step_back(away);
            if result.is_err() {
                break;
            }
        }
    }
    let done = taken - batch.items.len() as u64;
    out.end_batch(batch.first, done).await;
    batch.first += done;
    drop(progress);
    result
}

/// Handles the calls and casts already waiting, without waiting for more.
async fn serve_waiting<S: Stage>(server: &mut S, control: &mut Inbox<S>) -> Result<(), Crashed> {
    while let Ok(envelope) = control.rx.try_recv() {
        handle(server, envelope).await?;
    }
    Ok(())
}
