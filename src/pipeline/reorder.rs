//! `#[replicas(N, ordered)]`: putting a replicated stage's output back in
//! input order.
//!
//! Items leave the stage's queue numbered, a batch at a time, so the batch
//! a replica takes is a run of consecutive numbers and its outputs are in
//! order among themselves. When a replica is done with a batch it hands the
//! outputs over as one *chunk*; chunks are sent downstream in number order,
//! by whichever replica finds the next chunk ready (one at a time). A chunk
//! that arrives early waits here.
//!
//! Replicas may run ahead of the oldest unfinished item by at most the
//! *window* (in input items): the stage's queue holds back items numbered
//! beyond it. That bounds what waits here to the outputs of a window's worth
//! of inputs.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::{BATCH, emitter::Link, queue::Queue};

/// How far the replicas of an ordered stage may run ahead of the oldest item
/// not yet sent on, in input items: two batches per replica.
pub(crate) fn window(replicas: usize) -> u64 {
    (2 * replicas * BATCH) as u64
}

/// The input queue whose limit the reorder raises as chunks go out.
pub(crate) trait Limit: Send + Sync {
    fn raise_limit(&self, limit: u64);
}

impl<T: Send> Limit for Queue<T> {
    fn raise_limit(&self, limit: u64) {
        Queue::raise_limit(self, limit);
    }
}

/// The reorder point of one ordered stage, shared by its replicas.
pub(crate) struct Reorder<T> {
    pending: Mutex<Pending<T>>,
    /// Set while one replica is sending chunks downstream.
    sending: AtomicBool,
    /// Replicas whose input has not ended yet.
    live: AtomicUsize,
    link: Link<T>,
    input: Arc<dyn Limit>,
    window: u64,
    /// Items taken out of `pending` to be sent, whose send was dropped
    /// before it placed them (the pipeline was aborted).
    lost: AtomicU64,
}

struct Pending<T> {
    /// The number of the first input whose chunk is not sent yet.
    next: u64,
    /// Finished chunks, by the number of their first input: how many inputs
    /// they cover, and their outputs.
    chunks: BTreeMap<u64, (u64, Vec<T>)>,
    /// Emptied buffers, for the next chunks.
    spare: Vec<Vec<T>>,
    /// What the replicas emitted in `Stage::finish`: sent after every chunk.
    last: Vec<T>,
}

impl<T> Pending<T> {
    fn take_ready(&mut self) -> Option<(u64, Vec<T>)> {
        let entry = self.chunks.first_entry().filter(|e| *e.key() == self.next)?;
        let (inputs, items) = entry.remove();
        self.next += inputs;
        Some((inputs, items))
    }

    fn has_ready(&self) -> bool {
        self.chunks.first_key_value().is_some_and(|(first, _)| *first == self.next)
    }
}

impl<T: Send> Reorder<T> {
    /// A reorder point in front of `link`, for a stage reading `input` with
    /// `replicas` replicas. Sets the input's first limit.
    pub(crate) fn new<I: Send + 'static>(link: Link<T>, input: Arc<Queue<I>>, replicas: usize) -> Self {
        let window = window(replicas);
        input.set_limit(window);
        Reorder {
            pending: Mutex::new(Pending { next: 0, chunks: BTreeMap::new(), spare: Vec::new(), last: Vec::new() }),
            sending: AtomicBool::new(false),
            live: AtomicUsize::new(replicas),
            link,
            input,
            window,
            lost: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending<T>> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An empty buffer for a replica's next chunk.
    pub(crate) fn buffer(&self) -> Vec<T> {
        self.lock().spare.pop().unwrap_or_else(|| Vec::with_capacity(BATCH))
    }

    /// Hands over the outputs of the inputs numbered `first..first + inputs`,
    /// then sends on every chunk that is ready, unless another replica is
    /// already doing so (it will see this chunk).
    pub(crate) async fn finish(
        &self,
        first: u64,
        inputs: u64,
        items: Vec<T>,
        blocked: &mut Duration,
        dropped: &mut u64,
    ) {
        self.lock().chunks.insert(first, (inputs, items));
        self.release(blocked, dropped).await;
    }

    /// A replica's input ended and every chunk of it was handed over; `items`
    /// is what it emitted in `Stage::finish`. The last replica to end sends
    /// what is left, then every replica's `items`.
    pub(crate) async fn end_replica(&self, items: Vec<T>, blocked: &mut Duration, dropped: &mut u64) {
        self.lock().last.extend(items);
        if self.live.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        // Every other replica has handed over all its chunks and is done
        // sending: what remains is ready, in order.
        self.release(blocked, dropped).await;
        let mut last = Held { items: std::mem::take(&mut self.lock().last), lost: &self.lost };
        self.link.send(&mut last.items, blocked, dropped).await;
    }

    /// Sends on every chunk that is ready, unless another replica is already
    /// doing so.
    async fn release(&self, blocked: &mut Duration, dropped: &mut u64) {
        loop {
            if self.sending.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                return;
            }
            // Set `sending` back even if this future is dropped mid-way.
            let guard = Sending(&self.sending);
            loop {
                let ready = self.lock().take_ready();
                let Some((_, items)) = ready else { break };
                let mut held = Held { items, lost: &self.lost };
                self.link.send(&mut held.items, blocked, dropped).await;
                let next = {
                    let mut pending = self.lock();
                    if pending.spare.len() < 4 {
                        pending.spare.push(std::mem::take(&mut held.items));
                    }
                    pending.next
                };
                self.input.raise_limit(next + self.window);
            }
            drop(guard);
            // A chunk handed over while this replica was sending was left
            // to it: look once more now that `sending` is clear.
            if !self.lock().has_ready() {
                return;
            }
        }
    }
}

impl<T> Reorder<T> {
    /// The outputs still here, or lost by a send that was dropped: what an
    /// aborted stage drops. Called by the last replica to go.
    pub(crate) fn held(self) -> u64 {
        let pending = self.pending.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        let waiting: usize = pending.chunks.values().map(|(_, items)| items.len()).sum();
        (waiting + pending.last.len()) as u64 + self.lost.load(Ordering::Relaxed)
    }
}

/// Items being sent on; if the send is dropped before it placed them all,
/// the rest are counted as lost.
struct Held<'a, T> {
    items: Vec<T>,
    lost: &'a AtomicU64,
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        if !self.items.is_empty() {
            self.lost.fetch_add(self.items.len() as u64, Ordering::Relaxed);
        }
    }
}

struct Sending<'a>(&'a AtomicBool);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::dispatch::Dispatch;

    #[tokio::test]
    async fn chunks_leave_in_input_order() {
        let out = Arc::new(Queue::new(100));
        let input = Arc::new(Queue::<u8>::new(100));
        let reorder = Reorder::new(Link::new(Dispatch::Shared(out.clone()), None), input, 1);
        let (mut blocked, mut dropped) = (Duration::ZERO, 0);
        reorder.finish(3, 2, vec![30, 40], &mut blocked, &mut dropped).await;
        reorder.finish(1, 2, vec![10, 11, 20], &mut blocked, &mut dropped).await;
        assert_eq!(out.len(), 0, "nothing before input 0 is done");
        reorder.finish(0, 1, vec![], &mut blocked, &mut dropped).await;
        let mut got = Vec::new();
        let _ = out.poll_pop(&mut std::task::Context::from_waker(futures::task::noop_waker_ref()), &mut got, 100);
        assert_eq!(got, [10, 11, 20, 30, 40]);
        assert_eq!(dropped, 0);
    }
}
