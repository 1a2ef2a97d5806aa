//! The bounded queue between pipeline stages.
//!
//! Many producers, many consumers (the replicas of a stage), items moved in
//! batches under one short lock. Room is *reserved* before items are made
//! ready to push, so a producer never holds an item it cannot place, and
//! shutdown can wait for every reserved item. Capacity counts items, whether
//! queued or reserved.
//!
//! # Waiting
//!
//! Waiting follows tokio's `batch_semaphore`: waiters queue first in, first
//! out, a change wakes only as many of them as can proceed, and wakers are
//! called after the lock is released (collected in a [`WakeList`] while it is
//! held).
//!
//! - Room is *handed over*: when items are taken out (or reserved room is
//!   given back), the room freed is reserved, under the lock, for the
//!   writers at the head of the line, each up to what it asked for, and only
//!   those are woken. While writers wait there is no free room, so a new
//!   writer (or `try_push`) cannot overtake them.
//! - Items are *promised*: when items become available, readers at the head
//!   of the line are woken until their batch sizes cover the items not yet
//!   promised to a woken reader; a reader that takes fewer than are left
//!   wakes the next.
//! - Items are *shared*: a reader that asks to (a replica whose items
//!   await something, see [`Reader::share`]) takes at most its even share
//!   of the items available, over the replicas that read the queue
//!   (rounded up), and up to its `max_demand`. Sixteen slow items arriving
//!   at once at sixteen idle replicas go one to each, not all to the first
//!   one woken; a queue read by one replica, or one deep enough, is taken
//!   a full batch at a time.
//! - A woken waiter whose future is dropped before it used the wake-up (the
//!   room handed to it, or the items promised to it) passes it on, like
//!   tokio's `Acquire` drop: see [`Queue::cancel`].
//!
//! A waiter is a [`Waiter`] token held by the caller: its place in line. The
//! poll methods take it, so a caller that polls the queue together with
//! something else (a replica polls its control mailbox and its input in one
//! `poll_fn`) keeps its place between polls. It must be given back with
//! [`Queue::cancel`] when the caller stops waiting; [`Reader`] and
//! [`Queue::reserve`] do that on drop.
//!
//! # Numbering
//!
//! Items are numbered in the order they are taken out, which is their input
//! order: an `ordered` stage restores it from these numbers after its
//! replicas, and bounds how far its replicas run ahead with a *limit* on the
//! numbers that may be taken out.
//!
//! # Bounds
//!
//! A capacity is a limit, not an allocation: a new queue allocates
//! nothing, memory grows with what is queued (and is kept for reuse once
//! grown, so a steady stream allocates nothing), and capacities above
//! [`MAX_CAPACITY`] are clamped to it.

use std::{
    collections::VecDeque,
    future::Future,
    mem::ManuallyDrop,
    num::NonZeroUsize,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use super::{
    ack::{
        items::{Items, Queued},
        tag::Tag,
    },
    flush::Mark,
};
use crate::loom::sync::{Mutex, MutexGuard};

/// The largest capacity a queue (or a server's mailbox) has: tokio's
/// [`Semaphore::MAX_PERMITS`](tokio::sync::Semaphore::MAX_PERMITS), so a
/// bound means the same for stages and servers. Larger sizes are clamped to
/// it.
pub(crate) const MAX_CAPACITY: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// The queue was closed: nothing more goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// Why an item could not be pushed at once.
#[derive(Debug)]
pub(crate) enum TryPush<T> {
    Full(T),
    Closed(T),
}

/// A bounded many-producer, many-consumer queue of `T`; see the module
/// docs. Every method takes the one lock briefly and never waits on it
/// while holding another; wakers run after it is released.
pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
}

/// A caller's place in a queue's line of waiters.
///
/// Empty while the caller is not waiting. A poll method that returns
/// `Pending` fills it; one that returns `Ready` empties it. A filled token
/// must be given back with [`Queue::cancel`] (to the queue that filled it)
/// before it is dropped, or a wake-up given to it is lost.
#[derive(Debug, Default)]
pub(crate) struct Waiter {
    /// Its slot's key plus one (a word, where `Option<usize>` takes two:
    /// every idle replica's task holds a waiter).
    key: Option<NonZeroUsize>,
}

impl Waiter {
    pub(crate) const fn new() -> Self {
        Waiter { key: None }
    }

    /// Its slot's key, while it has one.
    fn key(&self) -> Option<usize> {
        self.key.map(|key| key.get() - 1)
    }

    fn set_key(&mut self, key: usize) {
        // (A key is below the number of slots, far below `usize::MAX`.)
        self.key = Some(NonZeroUsize::MIN.saturating_add(key));
    }

    fn take_key(&mut self) -> Option<usize> {
        let key = self.key();
        self.key = None;
        key
    }
}

struct State<T> {
    /// The items, with their acknowledgements while some have one.
    items: Queued<T>,
    reserved: usize,
    closed: bool,
    /// Set by [`Queue::close_and_clear`]: items committed into room reserved
    /// before are dropped too, and counted in `discarded`.
    cleared: bool,
    /// Items dropped by [`Queue::close_and_clear`] or committed after it.
    discarded: u64,
    /// How many items were ever taken out: the number of the next one.
    popped: u64,
    /// Items numbered `limit` and after wait until the limit is raised.
    limit: u64,
    /// Items promised to readers woken but not back yet.
    promised: usize,
    /// Every waiter, by key; `free` lists the keys not in use.
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Keys of the readers waiting for items, oldest first.
    readers: VecDeque<usize>,
    /// Keys of the writers waiting for room, oldest first.
    writers: VecDeque<usize>,
    /// How many replicas share this queue: a reader takes at most its
    /// share of the items available (see [`State::share`]).
    replicas: usize,
    /// Who waits for the queue to close ([`Queue::poll_closed`]): woken
    /// when it does. Rare (a source feeding the pipeline): usually empty.
    closing: Vec<Waker>,
}

/// One waiter.
#[derive(Default)]
struct Slot {
    waker: Option<Waker>,
    /// How many items it takes, or how much room it asks for, at most.
    want: usize,
    /// A writer: room reserved for it. A reader: items promised to it.
    given: usize,
    /// Whether it is still in line (in `readers` or `writers`).
    queued: bool,
    /// A reader (or else a writer).
    reader: bool,
    /// A reader that takes at most its share of the items (see
    /// [`State::share`]); else as many as it wants.
    shares: bool,
}

impl<T> State<T> {
    /// Wakes who waits for the queue to close.
    fn wake_closing(&mut self, wakers: &mut WakeList) {
        for waker in self.closing.drain(..) {
            wakers.push(Some(waker));
        }
    }

    fn free_room(&self, capacity: usize) -> usize {
        capacity.saturating_sub(self.items.len() + self.reserved)
    }

    /// Items a reader could take now.
    fn available(&self) -> usize {
        let allowed = usize::try_from(self.limit - self.popped).unwrap_or(usize::MAX);
        self.items.len().min(allowed)
    }

    /// The most items one reader takes of `available`: an even share over
    /// the replicas reading this queue, rounded up. So a burst of slow
    /// items spreads over idle replicas instead of going to the first one
    /// woken, while a queue read by one replica, or a deep queue, is taken
    /// a full batch at a time.
    #[inline]
    fn share(&self, available: usize) -> usize {
        // No division for the common queue of one reader.
        if self.replicas == 1 { available } else { available.div_ceil(self.replicas) }
    }

    fn finished(&self) -> bool {
        self.closed && self.items.is_empty() && self.reserved == 0
    }

    /// Puts a new waiter at the end of its line; returns its key.
    fn insert(&mut self, reader: bool, want: usize, shares: bool, waker: &Waker) -> usize {
        let slot = Slot { waker: Some(waker.clone()), want, given: 0, queued: true, reader, shares };
        let key = match self.free.pop() {
            Some(key) => {
                self.slots[key] = slot;
                key
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        if reader {
            self.readers.push_back(key)
        } else {
            self.writers.push_back(key)
        }
        key
    }

    /// Takes waiter `key` out of the line and frees its key.
    fn remove(&mut self, key: usize) -> Slot {
        let slot = std::mem::take(&mut self.slots[key]);
        if slot.queued {
            let line = if slot.reader { &mut self.readers } else { &mut self.writers };
            if let Some(at) = line.iter().position(|k| *k == key) {
                line.remove(at);
            }
        }
        self.free.push(key);
        slot
    }

    /// Hands the free room to the writers at the head of the line.
    fn grant_room(&mut self, capacity: usize, wakers: &mut WakeList) {
        if self.closed {
            return;
        }
        let mut free = self.free_room(capacity);
        while free > 0 {
            let Some(key) = self.writers.pop_front() else { break };
            let slot = &mut self.slots[key];
            let n = slot.want.min(free);
            slot.given = n;
            slot.queued = false;
            self.reserved += n;
            free -= n;
            wakers.push(slot.waker.take());
        }
    }

    /// Wakes the readers at the head of the line until the items available
    /// and not promised yet are promised.
    fn promise_items(&mut self, wakers: &mut WakeList) {
        let available = self.available();
        let mut left = available.saturating_sub(self.promised);
        let share = self.share(available);
        while left > 0 {
            let Some(key) = self.readers.pop_front() else { break };
            let slot = &mut self.slots[key];
            let n = if slot.shares { slot.want.min(share) } else { slot.want }.min(left);
            slot.given = n;
            slot.queued = false;
            self.promised += n;
            left -= n;
            wakers.push(slot.waker.take());
        }
    }

    /// Once the queue is closed and drained: wakes every reader to tell it.
    fn end_readers(&mut self, wakers: &mut WakeList) {
        if !self.finished() {
            return;
        }
        while let Some(key) = self.readers.pop_front() {
            let slot = &mut self.slots[key];
            slot.queued = false;
            wakers.push(slot.waker.take());
        }
    }

    /// Once the queue is closed: wakes every writer to tell it.
    fn wake_writers(&mut self, wakers: &mut WakeList) {
        while let Some(key) = self.writers.pop_front() {
            let slot = &mut self.slots[key];
            slot.queued = false;
            wakers.push(slot.waker.take());
        }
    }

    /// Stores `waker` in waiter `key` unless it would wake the same task.
    fn update_waker(&mut self, key: usize, waker: &Waker) {
        let slot = &mut self.slots[key];
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            slot.waker = Some(waker.clone());
        }
    }
}

impl<T> Queue<T> {
    /// A queue for `capacity` items (clamped to [`MAX_CAPACITY`]).
    ///
    /// # Panics
    ///
    /// Panics if `capacity` is 0.
    #[track_caller]
    pub(crate) fn new(capacity: usize) -> Self {
        Self::shared_by(capacity, 1)
    }

    /// A queue for `capacity` items read by `replicas` replicas (at least
    /// 1), each taking at most an even share of the items available at a
    /// time (see the module docs).
    ///
    /// # Panics
    ///
    /// Panics if `capacity` is 0.
    #[track_caller]
    pub(crate) fn shared_by(capacity: usize, replicas: usize) -> Self {
        assert!(capacity > 0, "a queue needs room for at least one item");
        let capacity = capacity.min(MAX_CAPACITY);
        // Every replica of a stage waits here when idle: room for their
        // slots is made once, at their number, instead of growing to the
        // next power of two.
        let waiting = if replicas > 1 { replicas } else { 0 };
        Queue {
            state: Mutex::new(State {
                items: Queued::new(),
                reserved: 0,
                closed: false,
                cleared: false,
                discarded: 0,
                popped: 0,
                limit: u64::MAX,
                promised: 0,
                slots: Vec::with_capacity(waiting),
                free: Vec::new(),
                readers: VecDeque::with_capacity(waiting),
                writers: VecDeque::new(),
                replicas: replicas.max(1),
                closing: Vec::new(),
            }),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic never happens while the lock is held; recover anyway.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `change` under the lock, then wakes the waiters it picked.
    fn change<R>(&self, change: impl FnOnce(&mut State<T>, &mut WakeList) -> R) -> R {
        let mut wakers = WakeList::new();
        let result = change(&mut self.lock(), &mut wakers);
        wakers.wake_all();
        result
    }

    /// The capacity, after clamping.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items queued now (reserved room not counted).
    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Items dropped by [`close_and_clear`](Self::close_and_clear), and
    /// committed into the queue after it.
    pub(crate) fn discarded(&self) -> u64 {
        self.lock().discarded
    }

    /// Reserves room for between 1 and `max` items, waiting for room in
    /// line behind the writers already waiting. `waiter` is the caller's
    /// place in line; see [`Waiter`].
    pub(crate) fn poll_reserve(
        &self,
        cx: &mut Context<'_>,
        waiter: &mut Waiter,
        max: usize,
    ) -> Poll<Result<usize, Closed>> {
        debug_assert!(max > 0);
        let mut state = self.lock();
        if let Some(key) = waiter.key() {
            if state.closed {
                // Room handed over but not taken yet is given back: nothing
                // goes into a closed queue but what was reserved before.
                let slot = state.remove(key);
                state.reserved -= slot.given;
                waiter.key = None;
                let mut wakers = WakeList::new();
                state.end_readers(&mut wakers);
                drop(state);
                wakers.wake_all();
                return Poll::Ready(Err(Closed));
            }
            let given = state.slots[key].given;
            if given > 0 {
                state.remove(key);
                waiter.key = None;
                return Poll::Ready(Ok(given));
            }
            state.slots[key].want = max;
            state.update_waker(key, cx.waker());
            return Poll::Pending;
        }
        if state.closed {
            return Poll::Ready(Err(Closed));
        }
        let free = state.free_room(self.capacity);
        if free > 0 && state.writers.is_empty() {
            let n = free.min(max);
            state.reserved += n;
            Poll::Ready(Ok(n))
        } else {
            let key = state.insert(false, max, false, cx.waker());
            waiter.set_key(key);
            Poll::Pending
        }
    }

    /// Reserves room for between 1 and `max` items.
    ///
    /// Cancel safe: nothing is reserved once the future is dropped; room
    /// handed to it before is passed on to the next writer.
    pub(crate) fn reserve(&self, max: usize) -> Reserve<'_, T> {
        Reserve { wait: Wait { queue: self, waiter: Waiter::new() }, max }
    }

    /// Moves the first items of `items` (at most `reserved` of them) into
    /// room reserved before, and gives back the room not used.
    /// Into a cleared queue, the items are dropped and counted instead.
    fn commit(&self, items: &mut Items<T>, reserved: usize) {
        let mut wakers = WakeList::new();
        let mut state = self.lock();
        // `cleared` is read and the items placed in one critical section: a
        // `close_and_clear` cannot come in between and leave them queued.
        let late = if state.cleared {
            // Dropped outside the lock: an item's (or a tag's) `Drop` may do
            // anything.
            let late = items.split_front(reserved);
            state.discarded += late.len() as u64;
            state.reserved -= reserved;
            Some(late)
        } else {
            let pushed = state.items.extend_from(items, reserved);
            debug_assert!(pushed <= reserved, "pushed more than reserved");
            state.reserved -= reserved;
            if pushed > 0 {
                state.promise_items(&mut wakers);
            }
            if pushed < reserved {
                state.grant_room(self.capacity, &mut wakers);
            }
            None
        };
        state.end_readers(&mut wakers);
        drop(state);
        wakers.wake_all();
        drop(late);
    }

    /// Pushes one item holding `tag` into room reserved by
    /// [`poll_reserve`](Self::poll_reserve).
    pub(crate) fn commit_one(&self, item: T, tag: Tag) {
        let mut items = Items::new();
        items.push_tagged(item, tag);
        self.commit(&mut items, 1);
    }

    /// Pushes one item holding `tag` if there is room and no writer waits,
    /// without waiting.
    pub(crate) fn try_push_tagged(&self, item: T, tag: Tag) -> Result<(), TryPush<(T, Tag)>> {
        self.change(|state, wakers| {
            if state.closed {
                return Err(TryPush::Closed((item, tag)));
            }
            if state.free_room(self.capacity) == 0 {
                return Err(TryPush::Full((item, tag)));
            }
            state.items.push_back(item, tag);
            state.promise_items(wakers);
            Ok(())
        })
    }

    /// Pushes one item without acknowledgement, as
    /// [`try_push_tagged`](Self::try_push_tagged).
    #[cfg(test)]
    pub(crate) fn try_push(&self, item: T) -> Result<(), TryPush<T>> {
        self.try_push_tagged(item, Tag::NONE).map_err(|e| match e {
            TryPush::Closed((item, _)) => TryPush::Closed(item),
            TryPush::Full((item, _)) => TryPush::Full(item),
        })
    }

    /// Moves up to `max` items into `out`. `Ready(true)` when some were
    /// moved, `Ready(false)` once the queue is closed, empty and nothing
    /// reserved is still to come.
    pub(crate) fn poll_pop(
        &self,
        cx: &mut Context<'_>,
        waiter: &mut Waiter,
        out: &mut impl Receive<T>,
        max: usize,
    ) -> Poll<bool> {
        self.poll_pop_numbered(cx, waiter, out, max).map(|first| first.is_some())
    }

    /// [`poll_pop`](Self::poll_pop), giving the number of the first item
    /// moved (the others follow it without gaps). Waits while the next item's
    /// number is at the limit.
    pub(crate) fn poll_pop_numbered(
        &self,
        cx: &mut Context<'_>,
        waiter: &mut Waiter,
        out: &mut impl Receive<T>,
        max: usize,
    ) -> Poll<Option<u64>> {
        self.poll_pop_marked(cx, waiter, out, max, true, None)
    }

    /// [`poll_pop_numbered`](Self::poll_pop_numbered), recording the number
    /// of the first item moved in `mark` under the lock (see [`Mark`]).
    fn poll_pop_marked(
        &self,
        cx: &mut Context<'_>,
        waiter: &mut Waiter,
        out: &mut impl Receive<T>,
        max: usize,
        shares: bool,
        mark: Option<&Mark>,
    ) -> Poll<Option<u64>> {
        debug_assert!(max > 0);
        let mut wakers = WakeList::new();
        let poll = {
            let mut state = self.lock();
            if let Some(key) = waiter.key() {
                // Back in the queue: the wake-up (if any) is being used.
                let slot = state.remove(key);
                state.promised -= slot.given;
                waiter.key = None;
            }
            let available = state.available();
            if available > 0 {
                let n = if shares { state.share(available) } else { available }.min(max);
                out.receive(n, &mut state.items);
                let first = state.popped;
                state.popped += n as u64;
                if let Some(mark) = mark {
                    mark.took(first);
                }
                state.grant_room(self.capacity, &mut wakers);
                // Items left over that no woken reader will take.
                state.promise_items(&mut wakers);
                state.end_readers(&mut wakers);
                Poll::Ready(Some(first))
            } else if state.finished() {
                Poll::Ready(None)
            } else {
                let key = state.insert(true, max, shares, cx.waker());
                waiter.set_key(key);
                Poll::Pending
            }
        };
        wakers.wake_all();
        poll
    }

    /// Gives back a waiter's place in line, after the caller stopped
    /// polling. If it had been woken and not come back, what it was given is
    /// passed on: room handed over goes to the next writers, items promised
    /// to the next readers (tokio's `Acquire` drop). Does nothing for an
    /// empty `waiter`.
    pub(crate) fn cancel(&self, waiter: &mut Waiter) {
        let Some(key) = waiter.take_key() else { return };
        self.change(|state, wakers| {
            let slot = state.remove(key);
            if slot.given == 0 {
                return;
            }
            if slot.reader {
                state.promised -= slot.given;
                state.promise_items(wakers);
            } else {
                state.reserved -= slot.given;
                state.grant_room(self.capacity, wakers);
                state.end_readers(wakers);
            }
        });
    }

    /// How many items were ever pushed (those taken out and those queued;
    /// not those a clear dropped), and whether the queue is closed.
    pub(crate) fn pushed(&self) -> (u64, bool) {
        let state = self.lock();
        (state.popped + state.items.len() as u64, state.closed)
    }

    /// Runs `check` under the lock with how many items were taken out so
    /// far: no reader takes items (or records a [`Mark`]) meanwhile.
    pub(crate) fn with_popped<R>(&self, check: impl FnOnce(u64) -> R) -> R {
        check(self.lock().popped)
    }

    /// Lets items numbered below `limit` be taken out.
    pub(crate) fn raise_limit(&self, limit: u64) {
        self.change(|state, wakers| {
            if limit > state.limit {
                state.limit = limit;
                state.promise_items(wakers);
            }
        });
    }

    /// Sets the limit before any item was taken out.
    pub(crate) fn set_limit(&self, limit: u64) {
        self.lock().limit = limit;
    }

    /// Closes the queue: pushes fail from now on; what is queued (and what
    /// was reserved before) can still be taken out.
    pub(crate) fn close(&self) {
        self.change(|state, wakers| {
            state.closed = true;
            state.wake_writers(wakers);
            state.end_readers(wakers);
            state.wake_closing(wakers);
        });
    }

    /// `Ready` once the queue is closed; otherwise `cx`'s waker is woken
    /// when it closes.
    pub(crate) fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.closed {
            return Poll::Ready(());
        }
        if !state.closing.iter().any(|waker| waker.will_wake(cx.waker())) {
            state.closing.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Closes the queue and drops what is in it (after releasing the lock),
    /// and from now on what is committed into room reserved before; returns
    /// how many items were dropped now. Every item dropped is counted in
    /// [`discarded`](Self::discarded).
    pub(crate) fn close_and_clear(&self) -> usize {
        let dropped = self.change(|state, wakers| {
            state.closed = true;
            state.cleared = true;
            state.wake_writers(wakers);
            let dropped = std::mem::take(&mut state.items);
            state.discarded += dropped.len() as u64;
            state.end_readers(wakers);
            state.wake_closing(wakers);
            dropped
        });
        dropped.len()
    }
}

/// Room reserved in a queue; given back if not used.
pub(crate) struct Reservation<'a, T> {
    queue: &'a Queue<T>,
    n: usize,
}

impl<T> Reservation<'_, T> {
    /// How many items fit.
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// Moves up to [`len`](Self::len) items from the front of `items`, with
    /// their tags, and gives back the rest of the room.
    pub(crate) fn commit(mut self, items: &mut Items<T>) {
        let n = std::mem::take(&mut self.n);
        self.queue.commit(items, n);
    }

    /// Pushes `item` holding `tag` (into room for at least one) and gives
    /// back the rest of the room.
    pub(crate) fn commit_one(self, item: T, tag: Tag) {
        let mut items = Items::new();
        items.push_tagged(item, tag);
        self.commit(&mut items);
    }

    /// Pushes up to [`len`](Self::len) items without acknowledgement.
    #[cfg(test)]
    pub(crate) fn commit_all(self, items: impl IntoIterator<Item = T>) {
        self.commit(&mut items.into_iter().collect());
    }
}

impl<T> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        if self.n > 0 {
            self.queue.commit(&mut Items::new(), self.n);
        }
    }
}

/// Where a queue's reader moves the items it takes, with their tags.
pub(crate) trait Receive<T> {
    /// Takes the first `n` items of `queued`, with their tags.
    fn receive(&mut self, n: usize, queued: &mut Queued<T>);
}

impl<T> Receive<T> for Items<T> {
    #[inline]
    fn receive(&mut self, n: usize, queued: &mut Queued<T>) {
        queued.pop_into(n, self);
    }
}

/// A batch that takes the items last to first, to be popped from its end
/// (see [`Queued::pop_into_reversed`]); empty when it receives.
pub(crate) struct LastFirst<'a, T>(pub(crate) &'a mut Items<T>);

impl<T> Receive<T> for LastFirst<'_, T> {
    #[inline]
    fn receive(&mut self, n: usize, queued: &mut Queued<T>) {
        queued.pop_into_reversed(n, self.0);
    }
}

/// For tests of the queue alone, whose items carry no tags.
#[cfg(test)]
impl<T> Receive<T> for Vec<T> {
    fn receive(&mut self, n: usize, queued: &mut Queued<T>) {
        queued.pop_plain(n, self);
    }
}

/// The future of [`Queue::reserve`]: a writer's place in line, given back
/// (with any room handed to it) when dropped.
pub(crate) struct Reserve<'a, T> {
    wait: Wait<'a, T>,
    max: usize,
}

impl<'a, T> Future for Reserve<'a, T> {
    type Output = Result<Reservation<'a, T>, Closed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Wait { queue, waiter } = &mut this.wait;
        let queue: &'a Queue<T> = queue;
        queue.poll_reserve(cx, waiter, this.max).map_ok(|n| Reservation { queue, n })
    }
}

/// A [`Waiter`] given back to its queue on drop.
struct Wait<'a, T> {
    queue: &'a Queue<T>,
    waiter: Waiter,
}

impl<T> Drop for Wait<'_, T> {
    fn drop(&mut self) {
        self.queue.cancel(&mut self.waiter);
    }
}

/// A consumer of a queue that keeps its place in line between polls and
/// gives it back when dropped.
pub(crate) struct Reader<'a, T> {
    wait: Wait<'a, T>,
    /// Where the batches it takes are recorded, for `flush`.
    mark: Option<&'a Mark>,
    /// Whether it takes at most its share of the items (see
    /// [`State::share`]).
    shares: bool,
}

impl<T> Queue<T> {
    /// A consumer of this queue; see [`Reader`].
    pub(crate) fn reader(&self) -> Reader<'_, T> {
        Reader { wait: Wait { queue: self, waiter: Waiter::new() }, mark: None, shares: true }
    }

    /// A consumer that records the number of each batch it takes in `mark`.
    pub(crate) fn marked_reader<'a>(&'a self, mark: &'a Mark) -> Reader<'a, T> {
        Reader { mark: Some(mark), ..self.reader() }
    }
}

impl<T> Reader<'_, T> {
    /// [`Queue::poll_pop_numbered`] in this reader's place.
    pub(crate) fn poll_pop_numbered(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut impl Receive<T>,
        max: usize,
    ) -> Poll<Option<u64>> {
        let Wait { queue, waiter } = &mut self.wait;
        queue.poll_pop_marked(cx, waiter, out, max, self.shares, self.mark)
    }

    /// Gives back its place in line until its next poll, passing on
    /// anything it was promised meanwhile.
    pub(crate) fn cancel(&mut self) {
        let Wait { queue, waiter } = &mut self.wait;
        queue.cancel(waiter);
    }

    /// Whether this reader takes at most its even share of the items
    /// waiting (from its next wait on): for a replica whose items take long
    /// enough to await something, so that a burst spreads over the
    /// replicas; a replica whose items never await takes full batches,
    /// which costs fewer wake-ups than spreading cheap items would save.
    pub(crate) fn share(&mut self, shares: bool) {
        self.shares = shares;
    }
}

impl<T> Queue<T> {
    /// [`Queue::poll_pop_numbered`] for a consumer that keeps its own
    /// `waiter` (and cancels it with [`cancel`](Self::cancel) when done),
    /// recording each batch taken in `mark`: a `#[fused]` stage reading
    /// its own input from the task it runs in.
    pub(crate) fn poll_pop_owned(
        &self,
        cx: &mut Context<'_>,
        waiter: &mut Waiter,
        out: &mut impl Receive<T>,
        max: usize,
        mark: &Mark,
    ) -> Poll<Option<u64>> {
        self.poll_pop_marked(cx, waiter, out, max, true, Some(mark))
    }
}

/// Wakers picked under a lock, woken after it is released. Holds a few
/// inline, so waking allocates nothing in the common case.
///
/// Made and dropped on every queue operation, most often empty: the inline
/// slots past `len` are always `None`, so dropping looks at the first `len`
/// only instead of running the drop glue of every slot.
pub(crate) struct WakeList {
    inline: ManuallyDrop<[Option<Waker>; WakeList::INLINE]>,
    len: usize,
    more: Vec<Waker>,
}

impl Drop for WakeList {
    fn drop(&mut self) {
        for slot in &mut self.inline[..self.len] {
            drop(slot.take());
        }
    }
}

impl WakeList {
    const INLINE: usize = 8;

    pub(crate) fn new() -> Self {
        WakeList { inline: ManuallyDrop::new([const { None }; WakeList::INLINE]), len: 0, more: Vec::new() }
    }

    pub(crate) fn push(&mut self, waker: Option<Waker>) {
        let Some(waker) = waker else { return };
        if self.len < Self::INLINE {
            self.inline[self.len] = Some(waker);
            self.len += 1;
        } else {
            self.more.push(waker);
        }
    }

    pub(crate) fn wake_all(&mut self) {
        for waker in self.inline[..self.len].iter_mut().filter_map(Option::take) {
            waker.wake();
        }
        self.len = 0;
        for waker in self.more.drain(..) {
            waker.wake();
        }
    }
}

#[cfg(all(test, not(genflow_loom)))]
mod tests {
    use std::{
        future::{Future, poll_fn},
        pin::pin,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::Wake,
    };

    use futures::task::noop_waker_ref;

    use super::*;

    fn cx() -> Context<'static> {
        Context::from_waker(noop_waker_ref())
    }

    #[test]
    fn a_sharing_reader_takes_its_share_and_the_others_take_full_batches() {
        // Sixteen items queued for four replicas.
        let q = Queue::shared_by(100, 4);
        for i in 0..16 {
            q.try_push(i).unwrap_or_else(|_| panic!("room"));
        }
        let mut out = Vec::new();
        let mut sharing = q.reader();
        assert_eq!(sharing.poll_pop_numbered(&mut cx(), &mut out, 32), Poll::Ready(Some(0)));
        assert_eq!(out, [0, 1, 2, 3], "a quarter of 16");
        out.clear();
        assert_eq!(sharing.poll_pop_numbered(&mut cx(), &mut out, 32), Poll::Ready(Some(4)));
        assert_eq!(out, [4, 5, 6], "a quarter of 12, rounded up");
        out.clear();
        let mut whole = q.reader();
        whole.share(false);
        assert_eq!(whole.poll_pop_numbered(&mut cx(), &mut out, 32), Poll::Ready(Some(7)));
        assert_eq!(out, (7..16).collect::<Vec<_>>(), "all that is left");
        // A queue read by one replica is taken whole.
        let q = Queue::shared_by(100, 1);
        for i in 0..16 {
            q.try_push(i).unwrap_or_else(|_| panic!("room"));
        }
        out.clear();
        assert_eq!(q.reader().poll_pop_numbered(&mut cx(), &mut out, 32), Poll::Ready(Some(0)));
        assert_eq!(out.len(), 16);
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A waiter with its own counting waker.
    struct Party {
        count: Arc<Count>,
        waker: Waker,
        waiter: Waiter,
    }

    impl Party {
        fn new() -> Self {
            let count = Arc::new(Count::default());
            Party { waker: Waker::from(count.clone()), count, waiter: Waiter::new() }
        }

        fn woken(&self) -> usize {
            self.count.0.load(Ordering::SeqCst)
        }

        fn reserve(&mut self, q: &Queue<u32>, max: usize) -> Poll<Result<usize, Closed>> {
            q.poll_reserve(&mut Context::from_waker(&self.waker), &mut self.waiter, max)
        }

        fn pop(&mut self, q: &Queue<u32>, out: &mut Vec<u32>, max: usize) -> Poll<bool> {
            q.poll_pop(&mut Context::from_waker(&self.waker), &mut self.waiter, out, max)
        }
    }

    fn pop(q: &Queue<u32>, max: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut waiter = Waiter::new();
        let _ = q.poll_pop(&mut cx(), &mut waiter, &mut out, max);
        q.cancel(&mut waiter);
        out
    }

    fn full_queue(capacity: usize) -> Queue<u32> {
        let q = Queue::new(capacity);
        for i in 0..capacity as u32 {
            q.try_push(i).unwrap();
        }
        q
    }

    #[test]
    fn capacity_counts_queued_and_reserved_items() {
        let q = Queue::new(3);
        let mut w = Party::new();
        assert_eq!(w.reserve(&q, 2), Poll::Ready(Ok(2)));
        q.try_push(1).unwrap();
        assert!(matches!(q.try_push(2), Err(TryPush::Full(2))));
        assert!(w.reserve(&q, 1).is_pending());
        q.cancel(&mut w.waiter);
        q.commit(&mut [10, 11].into_iter().collect(), 2);
        assert_eq!(q.len(), 3);
        assert_eq!(pop(&q, 2), [1, 10]);
    }

    #[test]
    fn unused_reservations_are_given_back() {
        let q = Queue::<u32>::new(2);
        {
            let mut reserve = pin!(q.reserve(2));
            let Poll::Ready(Ok(r)) = reserve.as_mut().poll(&mut cx()) else { panic!() };
            assert_eq!(r.len(), 2);
            r.commit_all([7]);
        }
        // One slot used, one given back.
        q.try_push(8).unwrap();
        assert!(matches!(q.try_push(9), Err(TryPush::Full(9))));
    }

    #[test]
    fn closing_lets_consumers_drain_then_end() {
        let q = Queue::new(4);
        q.try_push(1).unwrap();
        q.close();
        assert!(matches!(q.try_push(2), Err(TryPush::Closed(2))));
        let mut r = Party::new();
        let mut out = Vec::new();
        assert_eq!(r.pop(&q, &mut out, 8), Poll::Ready(true));
        assert_eq!(r.pop(&q, &mut out, 8), Poll::Ready(false));
        assert_eq!(out, [1]);
    }

    #[test]
    fn a_closed_queue_waits_for_reserved_items() {
        let q = Queue::new(4);
        let mut w = Party::new();
        assert_eq!(w.reserve(&q, 1), Poll::Ready(Ok(1)));
        q.close();
        let mut r = Party::new();
        let mut out = Vec::new();
        assert!(r.pop(&q, &mut out, 8).is_pending());
        q.commit(&mut [5].into_iter().collect(), 1);
        assert_eq!(r.woken(), 1);
        assert_eq!(r.pop(&q, &mut out, 8), Poll::Ready(true));
        assert_eq!(out, [5]);
        assert_eq!(r.pop(&q, &mut out, 8), Poll::Ready(false));
    }

    #[test]
    fn a_cleared_queue_drops_and_counts_late_items() {
        let q = Queue::new(4);
        q.try_push(1).unwrap();
        let mut w = Party::new();
        assert_eq!(w.reserve(&q, 2), Poll::Ready(Ok(2)));
        assert_eq!(q.close_and_clear(), 1);
        q.commit(&mut [2, 3].into_iter().collect(), 2);
        assert_eq!(q.len(), 0);
        assert_eq!(q.discarded(), 3);
        let mut r = Party::new();
        let mut out = Vec::new();
        assert_eq!(r.pop(&q, &mut out, 8), Poll::Ready(false));
        assert!(out.is_empty());
    }

    #[test]
    fn items_are_numbered_and_held_at_the_limit() {
        let q = Queue::new(8);
        q.set_limit(3);
        for i in 0..5 {
            q.try_push(i).unwrap();
        }
        let mut r = Party::new();
        let mut out = Vec::new();
        let pop = |r: &mut Party, out: &mut Vec<u32>, max| {
            q.poll_pop_numbered(&mut Context::from_waker(&r.waker), &mut r.waiter, out, max)
        };
        assert_eq!(pop(&mut r, &mut out, 2), Poll::Ready(Some(0)));
        assert_eq!(pop(&mut r, &mut out, 2), Poll::Ready(Some(2)));
        assert_eq!(out, [0, 1, 2]);
        assert!(pop(&mut r, &mut out, 2).is_pending());
        q.close();
        // Closed, but items wait for the limit: not the end yet.
        assert!(pop(&mut r, &mut out, 2).is_pending());
        assert_eq!(r.woken(), 0);
        q.raise_limit(10);
        assert_eq!(r.woken(), 1);
        assert_eq!(pop(&mut r, &mut out, 8), Poll::Ready(Some(3)));
        assert_eq!(out, [0, 1, 2, 3, 4]);
        assert_eq!(pop(&mut r, &mut out, 8), Poll::Ready(None));
    }

    #[test]
    fn a_pop_wakes_only_the_writers_it_made_room_for() {
        let q = full_queue(4);
        let mut writers: Vec<Party> = (0..3).map(|_| Party::new()).collect();
        for w in &mut writers {
            assert!(w.reserve(&q, 1).is_pending());
        }
        assert_eq!(pop(&q, 2), [0, 1]);
        assert_eq!(writers.iter().map(Party::woken).collect::<Vec<_>>(), [1, 1, 0]);
        // The room was handed over: nobody can take it from them.
        assert!(matches!(q.try_push(9), Err(TryPush::Full(9))));
        assert_eq!(writers[0].reserve(&q, 1), Poll::Ready(Ok(1)));
        assert_eq!(writers[1].reserve(&q, 1), Poll::Ready(Ok(1)));
        assert!(writers[2].reserve(&q, 1).is_pending());
        q.cancel(&mut writers[2].waiter);
    }

    #[test]
    fn a_writer_gets_room_up_to_what_it_asked_for() {
        let q = full_queue(4);
        let (mut a, mut b) = (Party::new(), Party::new());
        assert!(a.reserve(&q, 3).is_pending());
        assert!(b.reserve(&q, 3).is_pending());
        assert_eq!(pop(&q, 4), [0, 1, 2, 3]);
        assert_eq!((a.woken(), b.woken()), (1, 1));
        assert_eq!(a.reserve(&q, 3), Poll::Ready(Ok(3)));
        assert_eq!(b.reserve(&q, 3), Poll::Ready(Ok(1)));
    }

    #[test]
    fn a_commit_wakes_at_most_as_many_readers_as_it_brings_items() {
        let q = Queue::new(8);
        let mut readers: Vec<Party> = (0..3).map(|_| Party::new()).collect();
        let mut out = Vec::new();
        for r in &mut readers {
            assert!(r.pop(&q, &mut out, 1).is_pending());
        }
        q.commit_reserved([1, 2]);
        assert_eq!(readers.iter().map(Party::woken).collect::<Vec<_>>(), [1, 1, 0]);
        assert_eq!(readers[0].pop(&q, &mut out, 1), Poll::Ready(true));
        assert_eq!(readers[1].pop(&q, &mut out, 1), Poll::Ready(true));
        assert_eq!(out, [1, 2]);
        assert!(readers[2].pop(&q, &mut out, 1).is_pending());
        q.cancel(&mut readers[2].waiter);
    }

    #[test]
    fn a_reader_that_leaves_items_wakes_the_next() {
        let q = Queue::new(8);
        let (mut a, mut b) = (Party::new(), Party::new());
        let mut out = Vec::new();
        assert!(a.pop(&q, &mut out, 8).is_pending());
        assert!(b.pop(&q, &mut out, 8).is_pending());
        q.commit_reserved([1, 2, 3]);
        // A batch of 8 covers the three items: only the first is woken.
        assert_eq!((a.woken(), b.woken()), (1, 0));
        // It takes only two; the one left goes to the next.
        assert_eq!(a.pop(&q, &mut out, 2), Poll::Ready(true));
        assert_eq!(b.woken(), 1);
        assert_eq!(b.pop(&q, &mut out, 8), Poll::Ready(true));
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn a_woken_writer_that_leaves_passes_its_room_on() {
        let q = full_queue(2);
        let (mut a, mut b) = (Party::new(), Party::new());
        assert!(a.reserve(&q, 1).is_pending());
        assert!(b.reserve(&q, 1).is_pending());
        assert_eq!(pop(&q, 1), [0]);
        assert_eq!((a.woken(), b.woken()), (1, 0));
        q.cancel(&mut a.waiter);
        assert_eq!(b.woken(), 1);
        assert_eq!(b.reserve(&q, 1), Poll::Ready(Ok(1)));
    }

    #[test]
    fn a_dropped_reserve_future_passes_its_room_on() {
        let q = full_queue(1);
        let mut b = Party::new();
        {
            let mut reserve = pin!(q.reserve(1));
            assert!(reserve.as_mut().poll(&mut cx()).is_pending());
            assert!(b.reserve(&q, 1).is_pending());
            assert_eq!(pop(&q, 1), [0]);
            assert_eq!(b.woken(), 0, "the room went to the first in line");
        }
        assert_eq!(b.woken(), 1);
        assert_eq!(b.reserve(&q, 1), Poll::Ready(Ok(1)));
    }

    #[test]
    fn a_woken_reader_that_leaves_passes_its_items_on() {
        let q = Queue::new(4);
        let (mut a, mut b) = (Party::new(), Party::new());
        let mut out = Vec::new();
        assert!(a.pop(&q, &mut out, 4).is_pending());
        assert!(b.pop(&q, &mut out, 4).is_pending());
        q.try_push(7).unwrap();
        assert_eq!((a.woken(), b.woken()), (1, 0));
        q.cancel(&mut a.waiter);
        assert_eq!(b.woken(), 1);
        assert_eq!(b.pop(&q, &mut out, 4), Poll::Ready(true));
        assert_eq!(out, [7]);
    }

    #[test]
    fn closing_wakes_every_waiter_and_takes_back_room_not_taken() {
        let q = full_queue(1);
        let (mut a, mut b) = (Party::new(), Party::new());
        assert!(a.reserve(&q, 1).is_pending());
        assert!(b.reserve(&q, 1).is_pending());
        assert_eq!(pop(&q, 1), [0]);
        q.close();
        assert_eq!((a.woken(), b.woken()), (1, 1));
        // The room handed to `a` before the close is not used after it.
        assert_eq!(a.reserve(&q, 1), Poll::Ready(Err(Closed)));
        assert_eq!(b.reserve(&q, 1), Poll::Ready(Err(Closed)));
        let mut r = Party::new();
        assert_eq!(r.pop(&q, &mut Vec::new(), 1), Poll::Ready(false));
    }

    #[test]
    fn a_huge_capacity_is_a_limit_not_an_allocation() {
        for capacity in [usize::MAX, 1 << 40] {
            let q = Queue::new(capacity);
            assert_eq!(q.capacity(), capacity.min(MAX_CAPACITY));
            q.try_push(1u32).unwrap();
            let mut w = Party::new();
            assert_eq!(w.reserve(&q, 5), Poll::Ready(Ok(5)));
            q.commit_reserved([2, 3]);
            assert_eq!(pop(&q, 8), [1, 2, 3]);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_producers_and_consumers_lose_nothing() {
        let q = Arc::new(Queue::new(7));
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let q = q.clone();
                tokio::spawn(async move {
                    let mut next = 0;
                    while next < 10_000 {
                        let r = q.reserve(5).await.unwrap();
                        let n = r.len().min(10_000 - next);
                        r.commit_all((next..next + n).map(|i| p * 1_000_000 + i as u64));
                        next += n;
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..3)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut batch = Vec::new();
                    let mut reader = q.reader();
                    while poll_fn(|cx| reader.poll_pop_numbered(cx, &mut batch, 3)).await.is_some() {
                        got.append(&mut batch);
                    }
                    got
                })
            })
            .collect();
        for p in producers {
            p.await.unwrap();
        }
        q.close();
        let mut all = Vec::new();
        for c in consumers {
            all.extend(c.await.unwrap());
        }
        all.sort_unstable();
        let mut expected: Vec<u64> = (0..4u64).flat_map(|p| (0..10_000).map(move |i| p * 1_000_000 + i)).collect();
        expected.sort_unstable();
        assert_eq!(all, expected);
    }

    impl<T> Queue<T> {
        /// Reserves room for `items` and pushes them, as one commit.
        fn commit_reserved<const N: usize>(&self, items: [T; N]) {
            self.lock().reserved += N;
            self.commit(&mut items.into_iter().collect(), N);
        }
    }
}
