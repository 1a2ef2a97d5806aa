//! `#[replicas(N, ordered)]`: putting a replicated stage's output back in
//! input order, without holding more than a few batches of it.
//!
//! Items leave the stage's queue numbered, a batch at a time, so the batch
//! a replica takes is a run of consecutive numbers and its outputs are in
//! order among themselves. The batch that holds the oldest input whose
//! outputs are not all sent has *the turn*: its replica sends its outputs
//! straight downstream as it emits them, like an unordered stage, waiting
//! for room there. Any other replica's `emit` waits for its batch's turn
//! once it holds a batch's worth of outputs ([`BATCH`]); a batch finished
//! before its turn leaves its (fewer) outputs here as a *chunk*. When the
//! turn holder ends its batch it sends on the chunks that follow in number
//! order, then hands the turn to the batch after them, waking only that
//! batch's replica.
//!
//! `Stage::finish` outputs go after every input's: a replica whose `finish`
//! emits a batch's worth waits until every replica's input ended, then
//! streams them (one replica at a time); smaller rests wait here and the
//! last replica to end sends them.
//!
//! Replicas may run ahead of the oldest unsent input by at most the
//! *window* (in input items): the stage's queue holds back items numbered
//! beyond it. So what an ordered stage holds is bounded whatever its
//! fan-out: a batch of outputs per replica, plus chunks of fewer than a
//! batch each for at most a window's worth of inputs.
//!
//! The turn is not given back if a replica's task is aborted mid-batch; the
//! stage then stops sending (an aborted pipeline is not drained anyway).

use std::{
    collections::BTreeMap,
    fmt,
    future::poll_fn,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
};

use super::{
    BATCH,
    ack::items::Items,
    emitter::{Blocked, Link, blocking},
    queue::{Queue, WakeList},
};
use crate::{
    loom::sync::{Mutex, MutexGuard},
    server::{
        context,
        state::ServerState,
        waits::{self, WaitingFor, WaitsFor},
    },
};

/// How far the replicas of an ordered stage may run ahead of the oldest item
/// not yet sent on, in input items: two batches per replica.
pub(crate) fn window(replicas: usize) -> u64 {
    (2 * replicas * BATCH) as u64
}

/// The input queue whose limit the reorder raises as outputs go out.
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
    turns: Mutex<Turns<T>>,
    link: Link<T>,
    input: Arc<dyn Limit>,
    window: u64,
    replicas: usize,
    /// Items taken out of `turns` to be sent, whose send was dropped
    /// before it placed them (the pipeline was aborted).
    lost: AtomicU64,
}

struct Turns<T> {
    /// The number of the first input whose outputs are not all sent: the
    /// batch starting here has the turn.
    sent: u64,
    /// Batches finished before their turn, by the number of their first
    /// input: how many inputs they cover, and their outputs.
    chunks: BTreeMap<u64, (u64, Items<T>)>,
    /// Emptied buffers, for the next chunks.
    spare: Vec<Items<T>>,
    /// Replicas waiting for the turn of the batch starting at that number.
    waiting: Vec<(u64, Waker)>,
    /// Replicas whose input ended, and replicas done with `finish`.
    ended: usize,
    done: usize,
    /// Whether a replica is streaming its `finish` outputs.
    finishing: bool,
    /// Replicas waiting to stream their `finish` outputs.
    finish_waiting: Vec<Waker>,
    /// `finish` outputs left for the last replica to send.
    last: Items<T>,
    /// The replicas working on a batch, by its first input, and the one
    /// streaming its `finish` outputs: whom a replica waiting for its turn
    /// waits on, for the wait-for graph of calls (`server::waits`).
    batches: Vec<(u64, Arc<ServerState>)>,
    finisher: Option<Arc<ServerState>>,
}

impl<T> Turns<T> {
    /// Wakes the replicas waiting to stream `finish` outputs, if they may.
    fn wake_finishers(&mut self, replicas: usize, wakers: &mut WakeList) {
        if self.ended == replicas && !self.finishing {
            for waker in self.finish_waiting.drain(..) {
                wakers.push(Some(waker));
            }
        }
    }
}

impl<T: Send> Reorder<T> {
    /// A reorder point in front of `link`, for a stage reading `input` with
    /// `replicas` replicas. Sets the input's first limit.
    pub(crate) fn new<I: Send + 'static>(link: Link<T>, input: Arc<Queue<I>>, replicas: usize) -> Self {
        let window = window(replicas);
        input.set_limit(window);
        Reorder {
            turns: Mutex::new(Turns {
                sent: 0,
                chunks: BTreeMap::new(),
                spare: Vec::new(),
                waiting: Vec::with_capacity(replicas),
                ended: 0,
                done: 0,
                finishing: false,
                finish_waiting: Vec::with_capacity(replicas),
                last: Items::new(),
                batches: Vec::with_capacity(replicas),
                finisher: None,
            }),
            link,
            input,
            window,
            replicas,
            lost: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Turns<T>> {
        self.turns.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the batch starting at input `first` has the turn.
    fn has_turn(&self, first: u64) -> bool {
        self.lock().sent == first
    }

    /// Ready once the batch starting at input `first` has the turn.
    fn poll_turn(&self, cx: &mut Context<'_>, first: u64) -> Poll<()> {
        let mut turns = self.lock();
        if turns.sent == first {
            return Poll::Ready(());
        }
        match turns.waiting.iter_mut().find(|(f, _)| *f == first) {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => turns.waiting.push((first, cx.waker().clone())),
        }
        Poll::Pending
    }

    /// Ready once this replica may stream its `finish` outputs (it then
    /// does so until it ends).
    fn poll_finish_turn(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut turns = self.lock();
        if turns.ended == self.replicas && !turns.finishing {
            turns.finishing = true;
            return Poll::Ready(());
        }
        if !turns.finish_waiting.iter().any(|w| w.will_wake(cx.waker())) {
            turns.finish_waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The batch of inputs `first..first + inputs` is done. If it has the
    /// turn, returns `true` and leaves `items` alone; otherwise keeps them
    /// as a chunk (leaving an empty buffer in `items`).
    fn hand_over(&self, first: u64, inputs: u64, items: &mut Items<T>) -> bool {
        let mut turns = self.lock();
        if turns.sent == first {
            return true;
        }
        let buffer = turns.spare.pop().unwrap_or_default();
        turns.chunks.insert(first, (inputs, std::mem::replace(items, buffer)));
        false
    }

    /// Called by the turn holder once every output of inputs before `next`
    /// is sent: sends on the chunks that follow in order, then hands the
    /// turn to the batch after them.
    async fn pass_turn(&self, mut next: u64, blocked: &mut Blocked, dropped: &mut u64) {
        while let Some((inputs, items)) = self.advance(next) {
            let mut held = Held { items, lost: &self.lost };
            self.link.send(&mut held.items, blocked, dropped).await;
            let mut turns = self.lock();
            if turns.spare.len() < 4 {
                turns.spare.push(std::mem::take(&mut held.items));
            }
            drop(turns);
            next += inputs;
        }
    }

    /// Every output of inputs before `next` is sent. Takes the chunk that
    /// starts at `next`, if there is one (the caller keeps the turn to send
    /// it), or else wakes the replica whose batch now has the turn.
    fn advance(&self, next: u64) -> Option<(u64, Items<T>)> {
        let mut wakers = WakeList::new();
        let chunk = {
            let mut turns = self.lock();
            turns.sent = next;
            let chunk = turns.chunks.first_entry().filter(|e| *e.key() == next).map(|e| e.remove());
            if chunk.is_none() {
                if let Some(at) = turns.waiting.iter().position(|(first, _)| *first == next) {
                    wakers.push(Some(turns.waiting.swap_remove(at).1));
                }
                turns.wake_finishers(self.replicas, &mut wakers);
            }
            chunk
        };
        wakers.wake_all();
        self.input.raise_limit(next + self.window);
        chunk
    }

    /// A replica's input ended.
    fn mark_ended(&self) {
        let mut wakers = WakeList::new();
        {
            let mut turns = self.lock();
            turns.ended += 1;
            turns.wake_finishers(self.replicas, &mut wakers);
        }
        wakers.wake_all();
    }

    /// A replica is done with `finish`: keeps `items` for the last replica,
    /// gives back the right to stream if it held it. The last replica to end
    /// gets every replica's rest back, to send.
    fn end_replica(&self, finishing: bool, items: &mut Items<T>) -> Option<Items<T>> {
        let mut wakers = WakeList::new();
        let last = {
            let mut turns = self.lock();
            turns.last.append(items);
            if finishing {
                turns.finishing = false;
                turns.finisher = None;
                turns.wake_finishers(self.replicas, &mut wakers);
            }
            turns.done += 1;
            (turns.done == self.replicas).then(|| std::mem::take(&mut turns.last))
        };
        wakers.wake_all();
        last
    }
}

/// One replica's side of its stage's [`Reorder`]: what the replica's
/// [`Emitter`](super::Emitter) goes through.
pub(crate) struct Place<T> {
    reorder: Arc<Reorder<T>>,
    /// The first input of the batch being processed; `None` between batches
    /// and in `Stage::finish`.
    batch: Option<u64>,
    /// Whether that batch has the turn (known once asked: it keeps it).
    turn: bool,
    /// Whether the input ended was told to the reorder point.
    ended: bool,
    /// Whether this replica streams its `finish` outputs.
    finishing: bool,
    /// The replica's server state, once known (its task's context).
    me: Option<Arc<ServerState>>,
}

impl<T: Send + 'static> Place<T> {
    pub(crate) fn new(reorder: Arc<Reorder<T>>) -> Self {
        Place { reorder, batch: None, turn: false, ended: false, finishing: false, me: None }
    }

    /// The replica starts on the inputs numbered from `first` on.
    pub(crate) fn begin_batch(&mut self, first: u64) {
        self.batch = Some(first);
        self.turn = false;
        if self.me.is_none() {
            self.me = context::current();
        }
        if let Some(me) = &self.me {
            self.reorder.lock().batches.push((first, me.clone()));
        }
    }

    /// Records in the wait-for graph that this replica is about to wait for
    /// the turn of its batch starting at `first` (`None`: for the right to
    /// stream its `finish` outputs). `Err` if a replica it would wait on
    /// waits, through calls, on this one: waiting would never end.
    fn wait_for_turn(&self, first: Option<u64>) -> Result<Option<WaitingFor>, ()> {
        let Some(me) = &self.me else { return Ok(None) };
        let turn = TurnWait { reorder: self.reorder.clone(), first, me: me.id };
        waits::wait_for(me, Arc::new(turn)).map(Some).map_err(drop)
    }

    /// `items` holds a batch's worth of outputs: sends them on once this
    /// replica may, waiting for its batch's turn (or, in `finish`, for every
    /// input's outputs to be out). Time waiting counts as blocked.
    ///
    /// If waiting would deadlock (a replica this one waits on is itself
    /// waiting, through calls or casts, on this one), it does not wait and
    /// keeps the items for now: the bound on what an ordered stage holds
    /// gives way rather than the pipeline hanging.
    ///
    /// Cancel safe: the items stay in `items` until sent.
    pub(crate) async fn send_full(&mut self, items: &mut Items<T>, blocked: &mut Blocked, dropped: &mut u64) {
        match self.batch {
            Some(first) if !self.turn => {
                if !self.reorder.has_turn(first) {
                    let Ok(waiting) = self.wait_for_turn(Some(first)) else { return };
                    blocking(&mut blocked.all, poll_fn(|cx| self.reorder.poll_turn(cx, first))).await;
                    drop(waiting);
                }
                self.turn = true;
            }
            Some(_) => {}
            None if !self.finishing => {
                self.end_input_once();
                if self.me.is_none() {
                    self.me = context::current();
                }
                let Ok(waiting) = self.wait_for_turn(None) else { return };
                blocking(&mut blocked.all, poll_fn(|cx| self.reorder.poll_finish_turn(cx))).await;
                drop(waiting);
                self.finishing = true;
                self.reorder.lock().finisher = self.me.clone();
            }
            None => {}
        }
        self.reorder.link.send(items, blocked, dropped).await;
    }

    /// Sends `items` on if this replica may without waiting for its turn.
    pub(crate) async fn send_if_turn(&mut self, items: &mut Items<T>, blocked: &mut Blocked, dropped: &mut u64) {
        if let (Some(first), false) = (self.batch, self.turn) {
            self.turn = self.reorder.has_turn(first);
        }
        if (self.turn && self.batch.is_some()) || self.finishing {
            self.reorder.link.send(items, blocked, dropped).await;
        }
    }

    /// The replica went through the inputs numbered `first..first + inputs`
    /// and `items` holds what they emitted not sent yet: sends them on if the
    /// batch has the turn (then the chunks that follow), or else leaves them
    /// as a chunk. With `inputs == 0` the outputs stay for the rest of the
    /// batch.
    pub(crate) async fn end_batch(
        &mut self,
        first: u64,
        inputs: u64,
        items: &mut Items<T>,
        blocked: &mut Blocked,
        dropped: &mut u64,
    ) {
        if inputs == 0 {
            return;
        }
        self.batch = None;
        if self.me.is_some() {
            let mut turns = self.reorder.lock();
            if let Some(at) = turns.batches.iter().position(|(f, _)| *f == first) {
                turns.batches.swap_remove(at);
            }
        }
        let turn = std::mem::take(&mut self.turn) || self.reorder.hand_over(first, inputs, items);
        if turn {
            self.reorder.link.send(items, blocked, dropped).await;
            self.reorder.pass_turn(first + inputs, blocked, dropped).await;
        }
    }

    /// Called once, after the replica's last batch and its `Stage::finish`:
    /// sends what `finish` emitted if it may stream, or leaves it for the
    /// last replica to end, which sends every rest.
    pub(crate) async fn end_input(&mut self, items: &mut Items<T>, blocked: &mut Blocked, dropped: &mut u64) {
        self.end_input_once();
        if self.finishing {
            self.reorder.link.send(items, blocked, dropped).await;
        }
        if let Some(last) = self.reorder.end_replica(std::mem::take(&mut self.finishing), items) {
            let mut held = Held { items: last, lost: &self.reorder.lost };
            self.reorder.link.send(&mut held.items, blocked, dropped).await;
        }
    }

    fn end_input_once(&mut self) {
        if !std::mem::replace(&mut self.ended, true) {
            self.reorder.mark_ended();
        }
    }
}

/// What a replica of an ordered stage waiting for its turn waits on: every
/// replica working on an earlier batch (for the `finish` turn: every replica
/// still in a batch, and the one streaming its `finish` outputs).
struct TurnWait<T> {
    reorder: Arc<Reorder<T>>,
    first: Option<u64>,
    me: usize,
}

impl<T: Send + 'static> WaitsFor for TurnWait<T> {
    fn servers(&self) -> Vec<Arc<ServerState>> {
        let turns = self.reorder.lock();
        let before = |f: u64| self.first.is_none_or(|first| f < first);
        let mut on: Vec<_> =
            turns.batches.iter().filter(|(f, s)| before(*f) && s.id != self.me).map(|(_, s)| s.clone()).collect();
        if self.first.is_none() {
            on.extend(turns.finisher.iter().filter(|s| s.id != self.me).cloned());
        }
        on
    }
}

impl<T> fmt::Debug for TurnWait<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnWait").field("first", &self.first).finish_non_exhaustive()
    }
}

impl<T> Place<T> {
    /// For an aborted stage: if this was the last replica's place, what
    /// its reorder point still held (see [`Reorder::held`]); 0 otherwise.
    pub(crate) fn held_if_last(self) -> u64 {
        Arc::into_inner(self.reorder).map_or(0, Reorder::held)
    }
}

impl<T> Reorder<T> {
    /// The outputs still here, or lost by a send that was dropped: what an
    /// aborted stage drops. Called by the last replica to go.
    fn held(self) -> u64 {
        let turns = self.turns.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        let waiting: usize = turns.chunks.values().map(|(_, items)| items.len()).sum();
        (waiting + turns.last.len()) as u64 + self.lost.load(Ordering::Relaxed)
    }
}

/// Items being sent on; if the send is dropped before it placed them all,
/// the rest are counted as lost.
struct Held<'a, T> {
    items: Items<T>,
    lost: &'a AtomicU64,
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        if !self.items.is_empty() {
            self.lost.fetch_add(self.items.len() as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(all(test, not(genflow_loom)))]
mod tests {
    use std::task::Context;

    use futures::task::noop_waker_ref;

    use super::*;
    use crate::pipeline::{dispatch::Dispatch, queue::Waiter};

    fn drain(queue: &Queue<u32>) -> Vec<u32> {
        let mut got = Vec::new();
        let _ = queue.poll_pop(&mut Context::from_waker(noop_waker_ref()), &mut Waiter::new(), &mut got, 1000);
        got
    }

    fn bare(items: impl IntoIterator<Item = u32>) -> Items<u32> {
        items.into_iter().collect()
    }

    #[tokio::test]
    async fn chunks_leave_in_input_order() {
        let out = Arc::new(Queue::new(100));
        let input = Arc::new(Queue::<u8>::new(100));
        let reorder = Arc::new(Reorder::new(Link::new(Dispatch::Shared(out.clone()), None), input, 3));
        let mut places: Vec<_> = (0..3).map(|_| Place::new(reorder.clone())).collect();
        let (mut blocked, mut dropped) = (Blocked::default(), 0);
        places[2].end_batch(3, 2, &mut bare([30, 40]), &mut blocked, &mut dropped).await;
        places[1].end_batch(1, 2, &mut bare([10, 11, 20]), &mut blocked, &mut dropped).await;
        assert_eq!(out.len(), 0, "nothing before input 0 is done");
        places[0].end_batch(0, 1, &mut bare([]), &mut blocked, &mut dropped).await;
        assert_eq!(drain(&out), [10, 11, 20, 30, 40]);
        assert_eq!(dropped, 0);
    }

    #[tokio::test]
    async fn the_turn_holder_sends_as_it_emits_and_others_wait() {
        let out = Arc::new(Queue::new(1000));
        let input = Arc::new(Queue::<u8>::new(100));
        let reorder = Arc::new(Reorder::new(Link::new(Dispatch::Shared(out.clone()), None), input, 2));
        let (mut a, mut b) = (Place::new(reorder.clone()), Place::new(reorder.clone()));
        let (mut blocked, mut dropped) = (Blocked::default(), 0);
        a.begin_batch(0);
        b.begin_batch(4);
        // Not its turn: a full buffer waits.
        let mut later = bare(100..100 + BATCH as u32);
        let (mut b_blocked, mut b_dropped) = (Blocked::default(), 0);
        let mut wait = Box::pin(b.send_full(&mut later, &mut b_blocked, &mut b_dropped));
        assert!(futures::poll!(wait.as_mut()).is_pending());
        // The turn holder's outputs go straight on.
        let mut now = bare(0..BATCH as u32);
        a.send_full(&mut now, &mut blocked, &mut dropped).await;
        assert_eq!(drain(&out), (0..BATCH as u32).collect::<Vec<_>>());
        a.end_batch(0, 4, &mut bare([7]), &mut blocked, &mut dropped).await;
        assert_eq!(drain(&out), [7]);
        // The turn passed to the batch from input 4.
        wait.await;
        assert_eq!(drain(&out), (100..100 + BATCH as u32).collect::<Vec<_>>());
    }
}
