//! The bounded queue between pipeline stages.
//!
//! Many producers, many consumers (the replicas of a stage), items moved in
//! batches under one short lock. Room is *reserved* before items are made
//! ready to push, so a producer never holds an item it cannot place, and
//! shutdown can wait for every reserved item. Capacity counts items, whether
//! queued or reserved. Waiting is done with wakers registered under the same
//! lock that checks the state, so no wake-up is lost.
//!
//! Items are numbered in the order they are taken out, which is their input
//! order: an `ordered` stage restores it from these numbers after its
//! replicas, and bounds how far its replicas run ahead with a *limit* on the
//! numbers that may be taken out.

use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

/// The queue was closed: nothing more goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// Why an item could not be pushed at once.
#[derive(Debug)]
pub(crate) enum TryPush<T> {
    Full(T),
    Closed(T),
}

pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
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
    readers: Vec<Waker>,
    writers: Vec<Waker>,
}

impl<T> Queue<T> {
    /// # Panics
    ///
    /// Panics if `capacity` is 0.
    #[track_caller]
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a queue needs room for at least one item");
        Queue {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity),
                reserved: 0,
                closed: false,
                cleared: false,
                discarded: 0,
                popped: 0,
                limit: u64::MAX,
                readers: Vec::new(),
                writers: Vec::new(),
            }),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic never happens while the lock is held; recover anyway.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

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

    /// Reserves room for between 1 and `max` items, waiting for room.
    pub(crate) fn poll_reserve(&self, cx: &mut Context<'_>, max: usize) -> Poll<Result<usize, Closed>> {
        debug_assert!(max > 0);
        let mut state = self.lock();
        if state.closed {
            return Poll::Ready(Err(Closed));
        }
        let free = self.capacity.saturating_sub(state.items.len() + state.reserved);
        if free > 0 {
            let n = free.min(max);
            state.reserved += n;
            Poll::Ready(Ok(n))
        } else {
            register(&mut state.writers, cx.waker());
            Poll::Pending
        }
    }

    /// Reserves room for between 1 and `max` items.
    ///
    /// Cancel safe: nothing is reserved until the future completes.
    pub(crate) async fn reserve(&self, max: usize) -> Result<Reservation<'_, T>, Closed> {
        let n = poll_fn(|cx| self.poll_reserve(cx, max)).await?;
        Ok(Reservation { queue: self, n })
    }

    /// Pushes `items` (at most `reserved` of them) into room reserved
    /// before, and gives back the room not used.
    /// Into a cleared queue, the items are dropped and counted instead.
    fn commit(&self, items: impl IntoIterator<Item = T>, reserved: usize) {
        let mut state = self.lock();
        if state.cleared {
            // Dropped outside the lock: an item's `Drop` may do anything.
            let late: Vec<T> = items.into_iter().collect();
            state.discarded += late.len() as u64;
            state.reserved -= reserved;
            if state.reserved == 0 {
                wake_all(&mut state.readers);
            }
            drop(state);
            drop(late);
            return;
        }
        let before = state.items.len();
        state.items.extend(items);
        let pushed = state.items.len() - before;
        debug_assert!(pushed <= reserved, "pushed more than reserved");
        state.reserved -= reserved;
        if pushed > 0 || (state.closed && state.reserved == 0) {
            wake_all(&mut state.readers);
        }
        if pushed < reserved {
            wake_all(&mut state.writers);
        }
    }

    /// Pushes one item into room reserved by [`poll_reserve`](Self::poll_reserve).
    pub(crate) fn commit_one(&self, item: T) {
        self.commit([item], 1);
    }

    /// Pushes one item if there is room, without waiting.
    pub(crate) fn try_push(&self, item: T) -> Result<(), TryPush<T>> {
        let mut state = self.lock();
        if state.closed {
            return Err(TryPush::Closed(item));
        }
        if state.items.len() + state.reserved >= self.capacity {
            return Err(TryPush::Full(item));
        }
        state.items.push_back(item);
        wake_all(&mut state.readers);
        Ok(())
    }

    /// Moves up to `max` items into `out`. `Ready(true)` when some were
    /// moved, `Ready(false)` once the queue is closed, empty and nothing
    /// reserved is still to come.
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>, out: &mut impl Extend<T>, max: usize) -> Poll<bool> {
        self.poll_pop_numbered(cx, out, max).map(|first| first.is_some())
    }

    /// [`poll_pop`](Self::poll_pop), giving the number of the first item
    /// moved (the others follow it without gaps). Waits while the next item's
    /// number is at the limit.
    pub(crate) fn poll_pop_numbered(
        &self,
        cx: &mut Context<'_>,
        out: &mut impl Extend<T>,
        max: usize,
    ) -> Poll<Option<u64>> {
        let mut state = self.lock();
        let allowed = usize::try_from(state.limit - state.popped).unwrap_or(usize::MAX);
        if !state.items.is_empty() && allowed > 0 {
            let n = state.items.len().min(max).min(allowed);
            out.extend(state.items.drain(..n));
            let first = state.popped;
            state.popped += n as u64;
            wake_all(&mut state.writers);
            return Poll::Ready(Some(first));
        }
        if state.items.is_empty() && state.closed && state.reserved == 0 {
            return Poll::Ready(None);
        }
        register(&mut state.readers, cx.waker());
        Poll::Pending
    }

    /// Lets items numbered below `limit` be taken out.
    pub(crate) fn raise_limit(&self, limit: u64) {
        let mut state = self.lock();
        if limit > state.limit {
            state.limit = limit;
            wake_all(&mut state.readers);
        }
    }

    /// Sets the limit before any item was taken out.
    pub(crate) fn set_limit(&self, limit: u64) {
        self.lock().limit = limit;
    }

    /// Closes the queue: pushes fail from now on; what is queued (and what
    /// was reserved before) can still be taken out.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        wake_all(&mut state.readers);
        wake_all(&mut state.writers);
    }

    /// Closes the queue and drops what is in it, and from now on what is
    /// committed into room reserved before; returns how many items were
    /// dropped now. Every item dropped is counted in
    /// [`discarded`](Self::discarded).
    pub(crate) fn close_and_clear(&self) -> usize {
        let mut state = self.lock();
        state.closed = true;
        state.cleared = true;
        let dropped = std::mem::take(&mut state.items);
        state.discarded += dropped.len() as u64;
        wake_all(&mut state.readers);
        wake_all(&mut state.writers);
        drop(state);
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

    /// Pushes up to [`len`](Self::len) items and gives back the rest of the
    /// room.
    pub(crate) fn commit(mut self, items: impl IntoIterator<Item = T>) {
        let n = std::mem::take(&mut self.n);
        self.queue.commit(items.into_iter().take(n), n);
    }
}

impl<T> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        if self.n > 0 {
            self.queue.commit(std::iter::empty(), self.n);
        }
    }
}

fn register(wakers: &mut Vec<Waker>, waker: &Waker) {
    if !wakers.iter().any(|w| w.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}

fn wake_all(wakers: &mut Vec<Waker>) {
    for waker in wakers.drain(..) {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::pin, sync::Arc};

    use futures::task::noop_waker_ref;

    use super::*;

    fn cx() -> Context<'static> {
        Context::from_waker(noop_waker_ref())
    }

    #[test]
    fn capacity_counts_queued_and_reserved_items() {
        let q = Queue::new(3);
        let Poll::Ready(Ok(2)) = q.poll_reserve(&mut cx(), 2) else { panic!() };
        q.try_push(1).unwrap();
        assert!(matches!(q.try_push(2), Err(TryPush::Full(2))));
        assert!(q.poll_reserve(&mut cx(), 1).is_pending());
        q.commit([10, 11], 2);
        assert_eq!(q.len(), 3);
        let mut out = Vec::new();
        assert_eq!(q.poll_pop(&mut cx(), &mut out, 2), Poll::Ready(true));
        assert_eq!(out, [1, 10]);
    }

    #[test]
    fn unused_reservations_are_given_back() {
        let q = Queue::<u8>::new(2);
        {
            let mut reserve = pin!(q.reserve(2));
            let Poll::Ready(Ok(r)) = reserve.as_mut().poll(&mut cx()) else { panic!() };
            assert_eq!(r.len(), 2);
            r.commit([7]);
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
        let mut out = Vec::new();
        assert_eq!(q.poll_pop(&mut cx(), &mut out, 8), Poll::Ready(true));
        assert_eq!(q.poll_pop(&mut cx(), &mut out, 8), Poll::Ready(false));
    }

    #[test]
    fn a_closed_queue_waits_for_reserved_items() {
        let q = Queue::new(4);
        let Poll::Ready(Ok(1)) = q.poll_reserve(&mut cx(), 1) else { panic!() };
        q.close();
        let mut out = Vec::new();
        assert!(q.poll_pop(&mut cx(), &mut out, 8).is_pending());
        q.commit([5], 1);
        assert_eq!(q.poll_pop(&mut cx(), &mut out, 8), Poll::Ready(true));
        assert_eq!(out, [5]);
        assert_eq!(q.poll_pop(&mut cx(), &mut out, 8), Poll::Ready(false));
    }

    #[test]
    fn a_cleared_queue_drops_and_counts_late_items() {
        let q = Queue::new(4);
        q.try_push(1).unwrap();
        let Poll::Ready(Ok(2)) = q.poll_reserve(&mut cx(), 2) else { panic!() };
        assert_eq!(q.close_and_clear(), 1);
        q.commit([2, 3], 2);
        assert_eq!(q.len(), 0);
        assert_eq!(q.discarded(), 3);
        let mut out = Vec::new();
        assert_eq!(q.poll_pop(&mut cx(), &mut out, 8), Poll::Ready(false));
        assert!(out.is_empty());
    }

    #[test]
    fn items_are_numbered_and_held_at_the_limit() {
        let q = Queue::new(8);
        q.set_limit(3);
        for i in 0..5 {
            q.try_push(i).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(q.poll_pop_numbered(&mut cx(), &mut out, 2), Poll::Ready(Some(0)));
        assert_eq!(q.poll_pop_numbered(&mut cx(), &mut out, 2), Poll::Ready(Some(2)));
        assert_eq!(out, [0, 1, 2]);
        assert!(q.poll_pop_numbered(&mut cx(), &mut out, 2).is_pending());
        q.close();
        // Closed, but items wait for the limit: not the end yet.
        assert!(q.poll_pop_numbered(&mut cx(), &mut out, 2).is_pending());
        q.raise_limit(10);
        assert_eq!(q.poll_pop_numbered(&mut cx(), &mut out, 8), Poll::Ready(Some(3)));
        assert_eq!(out, [0, 1, 2, 3, 4]);
        assert_eq!(q.poll_pop_numbered(&mut cx(), &mut out, 8), Poll::Ready(None));
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
                        r.commit((next..next + n).map(|i| p * 1_000_000 + i as u64));
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
                    while poll_fn(|cx| q.poll_pop(cx, &mut batch, 3)).await {
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
}
