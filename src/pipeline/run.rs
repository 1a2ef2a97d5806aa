//! A stage replica's task: serve calls and casts, process items in batches,
//! drain on shutdown.

use std::{
    future::{Future, poll_fn},
    panic::AssertUnwindSafe,
    pin::pin,
    sync::Arc,
    task::Poll,
    time::Instant,
};

use futures::FutureExt;
use tokio::sync::oneshot;

use super::{BATCH, Emitter, Stage, metrics::Counters, metrics::Delta, queue::Queue};
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
}

/// The body of one replica's task. It ends once its input is closed and
/// drained; dropping `out` then closes the next stage's input (when this was
/// the last replica of its stage).
pub(crate) async fn run<S: Stage>(
    mut control: Inbox<S>,
    input: Arc<Queue<S::In>>,
    mut out: Emitter<S::Out>,
    registry: S::Registry,
    counters: Arc<Counters>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut restarts = Restarts::new(S::restart_limit());
    let mut batch = Vec::with_capacity(BATCH);
    'life: loop {
        let Some(mut server) = boot::<S>(&registry, &mut restarts).await else {
            break 'life;
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        loop {
            let work = poll_fn(|cx| {
                // Calls and casts first: they are served between items.
                if let Poll::Ready(Some(envelope)) = control.rx.poll_recv(cx) {
                    return Poll::Ready(Work::Control(envelope));
                }
                input.poll_pop_numbered(cx, &mut batch, BATCH).map(|first| first.map_or(Work::InputDone, Work::Items))
            })
            .await;
            match work {
                Work::Control(envelope) => {
                    if let Err(Crashed) = handle(&mut server, envelope).await {
                        if restarts.allow() {
                            continue 'life;
                        }
                        break 'life;
                    }
                }
                Work::Items(first) => process_batch(&mut server, &mut batch, first, &mut out, &counters).await,
                Work::InputDone => {
                    // Serve the calls and casts already queued, then end.
                    control.rx.close();
                    while let Some(envelope) = control.rx.recv().await {
                        if let Err(Crashed) = handle(&mut server, envelope).await {
                            if restarts.allow() {
                                continue 'life;
                            }
                            break 'life;
                        }
                    }
                    terminate(server).await;
                    return;
                }
            }
        }
    }
    // Failed for good: calls and casts get `Failed`; items are still taken
    // and counted as failed, so the pipeline is not blocked and every item
    // is accounted for.
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    fail(control);
    while let Some(first) = poll_fn(|cx| input.poll_pop_numbered(cx, &mut batch, BATCH)).await {
        let n = batch.len() as u64;
        counters.add(&Delta { received: n, failed: n, ..Delta::default() });
        batch.clear();
        // An ordered stage waits for every input's (here: empty) outputs.
        out.end_batch(first, n).await;
    }
}

async fn process_batch<S: Stage>(
    server: &mut S,
    batch: &mut Vec<S::In>,
    first: u64,
    out: &mut Emitter<S::Out>,
    counters: &Counters,
) {
    let started = Instant::now();
    let inputs = batch.len() as u64;
    counters.add(&Delta { received: inputs, ..Delta::default() });
    let mut delta = Delta::default();
    for item in batch.drain(..) {
        let mut waited = false;
        let result = {
            let mut process = pin!(AssertUnwindSafe(server.process(item, out)).catch_unwind());
            poll_fn(|cx| {
                let poll = process.as_mut().poll(cx);
                waited |= poll.is_pending();
                poll
            })
            .await
        };
        if let Err(panic) = result {
            delta.failed += 1;
            report::<S>("process", &panic);
        }
        if waited {
            // A stage that awaits per item is slow: send its output now.
            out.flush().await;
        }
    }
    out.end_batch(first, inputs).await;
    delta.busy = started.elapsed().saturating_sub(out.take_blocked());
    counters.add(&delta);
}
