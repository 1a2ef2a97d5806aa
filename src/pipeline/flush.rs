//! `flush`: waiting until every item accepted so far has gone through the
//! pipeline, without shutting anything down.
//!
//! # How
//!
//! Stage by stage, from the head: take a *snapshot* of how many items were
//! ever pushed into each of the stage's queues, then wait until the stage
//! is *past* it: every item numbered below the snapshot was taken out of
//! its queue (items are numbered in the order they are taken, which is the
//! order they were pushed), and the batch that held it has ended, that is
//! its outputs were pushed into the next stage's queues (or the output, or
//! dropped there). Then every output of those items is counted in the next
//! stage's snapshot, taken after. Items sent straight into a later stage
//! (`sink_<stage>()`) before the flush are counted there too, since that
//! snapshot is taken later still. Items pushed after a stage's snapshot are
//! not waited for, so a flush under a steady stream of sends still ends.
//!
//! To know where its batches are, each replica has a [`Mark`]: the number
//! of the first item of the batch it works on, or *idle*. The queue writes
//! it under its lock as the replica takes a batch; the replica sets it back
//! to idle once the batch's outputs are sent on. A replica reads its queue
//! in number order, so a mark at or above the snapshot (or idle) means every
//! batch of that replica below the snapshot has ended. An `ordered` stage
//! sends a batch's outputs on either when it ends (it has the turn) or when
//! the replica with the turn ends its own batch (it sends the batches that
//! follow), so there too, once every batch below the snapshot has ended,
//! their outputs are out.
//!
//! # Waking
//!
//! The flusher does not poll. When it checks a stage it sets a *watched*
//! bit in every replica's mark, under the lock of the queue the replica
//! reads, in the same lock section as it reads how many items were taken
//! out. Taking a batch keeps the bit; ending one swaps the mark to idle and,
//! if the bit was set, wakes the flushers of the stage. The last change that
//! makes a stage past a snapshot is always a batch ending (taking items out
//! leaves the taker's mark below the snapshot), and every batch that ends
//! after a check has the bit, so a flusher always hears of it. The cost on
//! the item path is one store under the queue lock (already held) and one
//! uncontended atomic swap per batch; waking happens only while a flush
//! waits. `abort` wakes the flushers too, which then fail.

use std::{
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use futures::task::AtomicWaker;
use tokio::sync::Notify;

use super::queue::Queue;
use crate::{FlushError, server::context};

/// A mark's value while its replica is between batches.
const IDLE: u64 = u64::MAX >> 1;
/// Set in a mark by a flusher that wants to hear when its batch ends.
const WATCHED: u64 = 1 << 63;

/// Where one replica is in its input: the number of the first item of the
/// batch it works on, or [`IDLE`]; plus the [`WATCHED`] bit.
///
/// A stage's marks are packed, eight bytes each, not one per cache line:
/// each replica writes its own once per batch, when it takes the batch
/// (under the lock of the queue it reads, whose line moves between the
/// replicas anyway) and when the batch ends, so sharing a line costs a
/// miss per batch at most, where a line each cost 120 bytes per replica
/// for its whole life.
#[derive(Debug)]
pub(crate) struct Mark {
    at: AtomicU64,
}

impl Mark {
    fn new() -> Self {
        Mark { at: AtomicU64::new(IDLE) }
    }

    /// The replica took the batch numbered from `first` on. Called under
    /// the lock of the queue it reads, where flushers set [`WATCHED`]: the
    /// bit is kept. A replica that takes more items into the batch it
    /// works on and has not ended (a `#[batch]` stage filling its open
    /// batch, or one whose futures are in flight, see `concurrency.rs`)
    /// keeps the batch's first number: they all end with the batch.
    pub(crate) fn took(&self, first: u64) {
        let at = self.at.load(Ordering::Relaxed);
        if at & !WATCHED != IDLE {
            return;
        }
        self.at.store(first | (at & WATCHED), Ordering::Relaxed);
    }

    /// Sets [`WATCHED`]; returns the mark without it. Called under the lock
    /// of the queue the replica reads.
    fn watch(&self) -> u64 {
        self.at.fetch_or(WATCHED, Ordering::AcqRel) & !WATCHED
    }
}

/// What a queue tells a flusher, whatever its item type.
trait Watched: Send + Sync {
    /// How many items were ever pushed, and whether the queue is closed.
    fn pushed(&self) -> (u64, bool);
    /// Runs `check` under the queue's lock with how many items were taken
    /// out so far.
    fn with_popped(&self, check: &mut dyn FnMut(u64) -> bool) -> bool;
}

impl<T: Send> Watched for Queue<T> {
    fn pushed(&self) -> (u64, bool) {
        Queue::pushed(self)
    }

    fn with_popped(&self, check: &mut dyn FnMut(u64) -> bool) -> bool {
        Queue::with_popped(self, check)
    }
}

/// What a flush watches of one stage: its input queues and its replicas'
/// marks. Made once per stage, shared by the stage's handle and replicas.
pub struct FlushPoint {
    /// The registry the stage belongs to, to refuse a flush from inside.
    registry: usize,
    /// The stage's input queues; replica `i` reads queue `i % len`.
    queues: Box<[Arc<dyn Watched>]>,
    marks: Box<[Mark]>,
    /// Flushers waiting for a watched batch to end (or an abort).
    ended: Notify,
    aborted: AtomicBool,
    /// For a `#[batch]` stage: how a flush asks its replicas to cut their
    /// open batches.
    cuts: Option<Box<Cuts>>,
}

/// How flushes ask the replicas of a `#[batch]` stage to cut the batches
/// they hold open, instead of waiting for their timeout.
struct Cuts {
    /// How many flushes wait on the stage.
    wanted: AtomicUsize,
    /// Each replica's task, woken when a flush begins to wait.
    replicas: Box<[AtomicWaker]>,
}

/// A flush waiting on a `#[batch]` stage: its replicas cut what they hold
/// open until it is dropped.
struct WantsCuts<'a>(Option<&'a Cuts>);

impl<'a> WantsCuts<'a> {
    fn new(cuts: Option<&'a Cuts>) -> Self {
        if let Some(cuts) = cuts {
            cuts.wanted.fetch_add(1, Ordering::SeqCst);
            cuts.replicas.iter().for_each(AtomicWaker::wake);
        }
        WantsCuts(cuts)
    }
}

impl Drop for WantsCuts<'_> {
    fn drop(&mut self) {
        if let Some(cuts) = self.0 {
            cuts.wanted.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl FlushPoint {
    /// The flush point of a stage of registry `registry`, whose replicas
    /// (`replicas` of them) read `queues`.
    pub(crate) fn new<T: Send + 'static>(registry: usize, queues: &[Arc<Queue<T>>], replicas: usize) -> Self {
        FlushPoint {
            registry,
            queues: queues.iter().map(|q| q.clone() as Arc<dyn Watched>).collect(),
            marks: (0..replicas).map(|_| Mark::new()).collect(),
            ended: Notify::new(),
            aborted: AtomicBool::new(false),
            cuts: None,
        }
    }

    /// The same, for a `#[batch]` stage, whose replicas cut their open
    /// batches while a flush waits on the stage.
    pub(crate) fn cutting(mut self) -> Self {
        let replicas = (0..self.marks.len()).map(|_| AtomicWaker::new()).collect();
        self.cuts = Some(Box::new(Cuts { wanted: AtomicUsize::new(0), replicas }));
        self
    }

    /// The pipeline was aborted: flushers waiting here fail.
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.ended.notify_waiters();
    }

    /// Whether every item numbered below `snapshot` (one per queue) was
    /// taken out and its batch ended. Leaves every mark watched.
    fn past(&self, snapshot: &[u64]) -> bool {
        let mut past = true;
        for (q, (queue, &below)) in self.queues.iter().zip(snapshot).enumerate() {
            // Every replica is watched, also when a queue alone says no:
            // whichever replica takes the items left will tell.
            past &= queue.with_popped(&mut |popped| {
                let mut past = popped >= below;
                for mark in self.marks.iter().skip(q).step_by(self.queues.len()) {
                    let at = mark.watch();
                    past &= at == IDLE || at >= below;
                }
                past
            });
        }
        past
    }

    /// Waits until this stage is past `snapshot`.
    async fn wait_past(&self, snapshot: &[u64]) -> Result<(), FlushError> {
        let _cuts = WantsCuts::new(self.cuts.as_deref());
        loop {
            let mut ended = pin!(self.ended.notified());
            ended.as_mut().enable();
            if self.aborted.load(Ordering::Acquire) {
                return Err(FlushError::Aborted);
            }
            if self.past(snapshot) {
                return Ok(());
            }
            ended.await;
        }
    }
}

impl std::fmt::Debug for FlushPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushPoint").field("replicas", &self.marks.len()).finish_non_exhaustive()
    }
}

/// One replica's [`Mark`], as the replica holds it.
#[derive(Clone)]
pub(crate) struct ReplicaMark {
    point: Arc<FlushPoint>,
    index: usize,
}

impl ReplicaMark {
    pub(crate) fn new(point: Arc<FlushPoint>, index: usize) -> Self {
        assert!(index < point.marks.len(), "a replica of the stage");
        ReplicaMark { point, index }
    }

    /// The mark its queue reader records batches in.
    pub(crate) fn mark(&self) -> &Mark {
        &self.point.marks[self.index]
    }

    /// Whether a flush waits on this `#[batch]` stage, so the replica should
    /// cut the batch it holds open. If not, `cx` is woken when one begins
    /// to (until the next call). Always `false` for other stages.
    pub(crate) fn cut_wanted(&self, cx: &mut std::task::Context<'_>) -> bool {
        let Some(cuts) = &self.point.cuts else { return false };
        cuts.replicas[self.index].register(cx.waker());
        cuts.wanted.load(Ordering::SeqCst) > 0
    }

    /// The batch taken last has ended: its outputs were sent on. Wakes the
    /// flushers if one watches.
    pub(crate) fn ended(&self) {
        if self.mark().at.swap(IDLE, Ordering::AcqRel) & WATCHED != 0 {
            self.point.ended.notify_waiters();
        }
    }
}

/// Waits until every item accepted by `stages` (in pipeline order) before
/// the call has left the pipeline; see the module docs and the generated
/// `flush` method.
///
/// # Errors
///
/// See [`FlushError`].
///
/// # Cancel safety
///
/// Cancel safe: a flush only watches. Dropping it at most makes each
/// replica of the stage it was waiting on wake nobody once.
pub async fn flush(stages: &[&FlushPoint]) -> Result<(), FlushError> {
    let Some(head) = stages.first() else { return Ok(()) };
    if context::in_registry(head.registry) {
        return Err(FlushError::FromInside);
    }
    if head.aborted.load(Ordering::Acquire) || head.queues.iter().any(|q| q.pushed().1) {
        return Err(FlushError::Closed);
    }
    let mut snapshot = Vec::new();
    for stage in stages {
        snapshot.clear();
        snapshot.extend(stage.queues.iter().map(|q| q.pushed().0));
        stage.wait_past(&snapshot).await?;
    }
    Ok(())
}

#[cfg(all(test, not(genflow_loom)))]
mod tests {
    use std::{
        future::Future,
        pin::pin,
        sync::atomic::AtomicUsize,
        task::{Context, Poll, Wake, Waker},
    };

    use super::*;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn woken(count: &Count) -> usize {
        count.0.load(Ordering::SeqCst)
    }

    fn stage(replicas: usize) -> (Arc<Queue<u32>>, Arc<FlushPoint>) {
        let queue = Arc::new(Queue::new(16));
        let point = Arc::new(FlushPoint::new(0, std::slice::from_ref(&queue), replicas));
        (queue, point)
    }

    #[test]
    fn a_batch_taken_after_the_check_still_wakes_the_flusher() {
        let (queue, point) = stage(1);
        let mark = ReplicaMark::new(point.clone(), 0);
        for i in 0..3 {
            queue.try_push(i).unwrap();
        }
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut flush = pin!(point.wait_past(&[3]));
        assert!(flush.as_mut().poll(&mut cx).is_pending(), "nothing taken yet");
        // The replica takes the batch after the check: the watched bit stays.
        let mut reader = queue.marked_reader(mark.mark());
        let mut batch = Vec::new();
        assert_eq!(reader.poll_pop_numbered(&mut cx, &mut batch, 8), Poll::Ready(Some(0)));
        assert_eq!(woken(&count), 0);
        assert!(flush.as_mut().poll(&mut cx).is_pending(), "the batch is not done");
        mark.ended();
        assert_eq!(woken(&count), 1);
        assert_eq!(flush.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
    }

    #[test]
    fn items_pushed_after_the_snapshot_are_not_waited_for() {
        let (queue, point) = stage(2);
        let marks = [ReplicaMark::new(point.clone(), 0), ReplicaMark::new(point.clone(), 1)];
        queue.try_push(1).unwrap();
        let snapshot = [queue.pushed().0];
        let mut batch = Vec::new();
        let mut first = queue.marked_reader(marks[0].mark());
        let cx = &mut Context::from_waker(Waker::noop());
        assert_eq!(first.poll_pop_numbered(cx, &mut batch, 8), Poll::Ready(Some(0)));
        // More items come, and the other replica is busy with them.
        queue.try_push(2).unwrap();
        let mut second = queue.marked_reader(marks[1].mark());
        assert_eq!(second.poll_pop_numbered(cx, &mut batch, 8), Poll::Ready(Some(1)));
        assert!(!point.past(&snapshot));
        marks[0].ended();
        assert!(point.past(&snapshot), "the batch of item 1 is still going, but it came after");
    }

    #[test]
    fn a_reader_that_holds_its_mark_keeps_the_first_item_it_took() {
        let (queue, point) = stage(1);
        let point = Arc::new(Arc::into_inner(point).unwrap().cutting());
        let mark = ReplicaMark::new(point.clone(), 0);
        let cx = &mut Context::from_waker(Waker::noop());
        queue.try_push(1).unwrap();
        let mut reader = queue.marked_reader(mark.mark());
        let mut open = Vec::new();
        assert_eq!(reader.poll_pop_numbered(cx, &mut open, 8), Poll::Ready(Some(0)));
        queue.try_push(2).unwrap();
        let snapshot = [queue.pushed().0];
        assert_eq!(reader.poll_pop_numbered(cx, &mut open, 8), Poll::Ready(Some(1)));
        // Both are taken, but item 0 is still held: not past.
        assert!(!point.past(&snapshot));
        assert!(!mark.cut_wanted(cx), "no flush waits");
        {
            let _flushing = WantsCuts::new(point.cuts.as_deref());
            assert!(mark.cut_wanted(cx), "a flush waits: cut what is held");
        }
        assert!(!mark.cut_wanted(cx));
        mark.ended();
        assert!(point.past(&snapshot));
    }

    #[test]
    fn an_abort_wakes_and_fails_the_flusher() {
        let (queue, point) = stage(1);
        queue.try_push(7).unwrap();
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut flush = pin!(point.wait_past(&[1]));
        assert!(flush.as_mut().poll(&mut cx).is_pending());
        point.abort();
        assert_eq!(woken(&count), 1);
        assert_eq!(flush.as_mut().poll(&mut cx), Poll::Ready(Err(FlushError::Aborted)));
    }
}
