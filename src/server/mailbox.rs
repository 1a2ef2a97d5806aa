//! A server's queue: bounded, many senders, one receiver, in one small
//! allocation.
//!
//! The API is the part of Tokio's bounded `mpsc` channel a server uses
//! (`reserve` a place, then `send` through the [`Permit`], or `try_send`;
//! `recv`, `poll_recv`, `try_recv`, `close`; weak senders), with the same
//! semantics: a message's place is freed when the receiver takes it; after
//! [`Receiver::close`], places reserved before can still be used and their
//! messages received, and [`Receiver::recv`] gives `None` once the queue is
//! empty and no place is reserved (or every sender is gone). What differs
//! is the room it takes while idle: one allocation of 168 bytes, its
//! messages' buffer allocated by the first message and its line of
//! waiting senders by the first sender that waits (Tokio's channel is a
//! cache-padded state of 512 bytes plus a first block of 32 slots, made
//! with the channel), so an idle server costs little more than its task.
//!
//! Senders and receiver meet under one lock, held for a few instructions
//! at a time; wakers are woken after it is released. The receiver takes
//! up to [`TAKE`] messages at a time into a buffer of its own, so a busy
//! server takes the lock once per batch rather than once per message (a
//! sender casting in a loop and the server taking its casts on another
//! core would otherwise pass the lock back and forth for every message).
//! Taken messages keep their places until the receiver hands them out;
//! each hand-out frees one with an atomic count, and looks at the line of
//! waiting senders (an atomic length) only to grant it room.
//!
//! Senders waiting for room stand in line (first come, first served):
//! freed room is handed to the one at the head (it is *granted* a place),
//! so a sender arriving later does not take room a waiting one was
//! promised, and a granted sender that gives up passes its place on.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll, Waker},
};

use crate::loom::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicUsize, Ordering},
};

/// The most messages the receiver takes out of the queue at a time.
pub(crate) const TAKE: usize = 32;

/// Makes a queue holding at most `bound` messages (queued, taken by the
/// receiver but not handed out yet, or with a place reserved).
///
/// # Panics
///
/// If `bound` is 0.
pub(crate) fn channel<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    assert!(bound > 0, "a mailbox holds at least one message");
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            reserved: 0,
            closed: false,
            dropped: false,
            rx_waker: None,
            line: None,
        }),
        bound,
        senders: AtomicUsize::new(1),
        in_hand: AtomicUsize::new(0),
        in_line: AtomicUsize::new(0),
        hand: Mutex::new(VecDeque::new()),
    });
    (Sender { shared: shared.clone() }, Receiver { shared })
}

struct Shared<T> {
    state: Mutex<State<T>>,
    bound: usize,
    /// The senders alive (weak ones not counted).
    senders: AtomicUsize,
    /// Messages the receiver took out of the queue and has not handed out
    /// yet: they keep their places. Raised under the lock; lowered by the
    /// receiver as it hands them out, without it.
    in_hand: AtomicUsize,
    /// How many senders wait in line (`line.order`'s length, written under
    /// the lock): a hand-out that frees a place takes the lock to grant it
    /// only if someone waits.
    in_line: AtomicUsize,
    /// Messages taken out of the queue, not handed out yet (oldest first).
    /// Only the receiver locks it, so it is never contended; it lives here
    /// rather than in the [`Receiver`] so that the receiver, which every
    /// server's task holds, stays one pointer.
    hand: Mutex<VecDeque<T>>,
}

struct State<T> {
    queue: VecDeque<T>,
    /// Places reserved (by a permit, or granted to a waiting sender) and
    /// not used yet.
    reserved: usize,
    /// The receiver closed the queue (or was dropped): no new places.
    closed: bool,
    /// The receiver was dropped: a message sent now is dropped at once.
    dropped: bool,
    /// The receiver's waker while it waits for a message (`None` when it
    /// does not wait: senders then wake nobody).
    rx_waker: Option<Waker>,
    /// Allocated when a sender first has to wait: a queue that never
    /// fills holds only the pointer.
    line: Option<Box<Line>>,
}

impl<T> State<T> {
    /// The line of waiting senders, made if none stood in it yet.
    fn line(&mut self) -> &mut Line {
        self.line.get_or_insert_with(Box::default)
    }
}

/// The senders waiting for room, in order.
#[derive(Default)]
struct Line {
    /// Every waiting sender's slot, by key; `free` lists the keys not in
    /// use.
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// The keys of the senders not granted a place yet, oldest first.
    order: VecDeque<usize>,
}

#[derive(Default)]
struct Slot {
    waker: Option<Waker>,
    /// A place was reserved for this sender (counted in `reserved`).
    granted: bool,
}

/// Wakers to wake once the lock is released.
#[derive(Default)]
struct Wakes {
    rx: Option<Waker>,
    senders: Vec<Waker>,
}

impl Wakes {
    fn wake(self) {
        if let Some(rx) = self.rx {
            rx.wake();
        }
        for waker in self.senders {
            waker.wake();
        }
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The lock is never held across user code: poisoning cannot leave
        // the state half-changed.
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// How many places are taken (under the lock).
    fn taken(&self, state: &State<T>) -> usize {
        state.queue.len() + state.reserved + self.in_hand.load(Ordering::SeqCst)
    }

    /// Whether a new sender may take a place now: room, and nobody
    /// waiting before it (under the lock).
    fn has_room(&self, state: &State<T>) -> bool {
        state.line.as_ref().is_none_or(|line| line.order.is_empty()) && self.taken(state) < self.bound
    }

    /// Grants the free places to the senders at the head of the line
    /// (under the lock).
    fn grant(&self, state: &mut State<T>, wakes: &mut Wakes) {
        if state.line.is_none() {
            return;
        }
        while !state.line().order.is_empty() && self.taken(state) < self.bound {
            let Some(key) = state.line().order.pop_front() else { break };
            state.reserved += 1;
            let slot = &mut state.line().slots[key];
            slot.granted = true;
            if let Some(waker) = slot.waker.take() {
                wakes.senders.push(waker);
            }
        }
        let waiting = state.line().order.len();
        self.in_line.store(waiting, Ordering::SeqCst);
    }

    /// The receiver handed out a taken message: its place is free, for a
    /// sender in line if one waits.
    fn handed_out(&self) {
        // `SeqCst`, with the store of `in_line` and the load of `in_hand`
        // in `Reserve::poll` (both `SeqCst`): either that sender sees this
        // place free, or this sees it in line.
        self.in_hand.fetch_sub(1, Ordering::SeqCst);
        if self.in_line.load(Ordering::SeqCst) > 0 {
            let mut wakes = Wakes::default();
            let mut state = self.lock();
            self.grant(&mut state, &mut wakes);
            drop(state);
            wakes.wake();
        }
    }

    /// Whether the receiver has seen the last message once its own buffer
    /// is empty: nothing queued, no place reserved, and no sender may
    /// reserve one (under the lock).
    fn finished(&self, state: &State<T>) -> bool {
        state.queue.is_empty() && state.reserved == 0 && (state.closed || self.senders.load(Ordering::Acquire) == 0)
    }
}

/// The sending half; cloned for each sender.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A sender that does not keep the queue open; [`upgrade`](Self::upgrade)
/// gives a [`Sender`] while another one is alive.
pub(crate) struct WeakSender<T> {
    shared: Weak<Shared<T>>,
}

/// A place reserved in the queue: [`send`](Self::send) puts a message in
/// it; dropped unused, the place is freed.
pub(crate) struct Permit<'a, T> {
    shared: &'a Shared<T>,
}

/// The receiving half.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// Why [`Sender::try_send`] queued nothing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TryReserveError {
    /// The queue is full (or senders wait for room before this one).
    Full,
    /// The receiver closed the queue or is gone.
    Closed,
}

/// Why [`Receiver::try_recv`] gave no message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TryRecvError {
    /// Nothing is queued now.
    Empty,
    /// Nothing is queued and nothing more can come.
    Disconnected,
}

/// The receiver closed the queue or is gone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Closed;

impl<T> Sender<T> {
    /// Reserves a place, waiting in line while the queue is full.
    ///
    /// Spends a unit of the task's cooperative budget, as Tokio's
    /// channels do.
    ///
    /// # Errors
    ///
    /// [`Closed`] once the receiver closed the queue (or is gone).
    ///
    /// # Cancel safety
    ///
    /// Dropped before it completes, it reserves nothing (a place granted
    /// to it meanwhile goes to the next in line).
    pub(crate) fn reserve(&self) -> Reserve<'_, T> {
        Reserve { shared: &self.shared, key: None }
    }

    /// Sends `message` if there is room now (nobody waiting for room
    /// before it), without waiting.
    ///
    /// # Errors
    ///
    /// [`TryReserveError::Full`] without room, [`TryReserveError::Closed`]
    /// once the receiver closed the queue; each with `message` given back.
    pub(crate) fn try_send(&self, message: T) -> Result<(), (TryReserveError, T)> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err((TryReserveError::Closed, message));
        }
        if !self.shared.has_room(&state) {
            return Err((TryReserveError::Full, message));
        }
        state.queue.push_back(message);
        let rx = state.rx_waker.take();
        drop(state);
        if let Some(rx) = rx {
            rx.wake();
        }
        Ok(())
    }

    /// Sends `message` once there is room.
    ///
    /// # Errors
    ///
    /// Gives `message` back if the queue is closed.
    pub(crate) async fn send(&self, message: T) -> Result<(), T> {
        match self.reserve().await {
            Ok(permit) => {
                permit.send(message);
                Ok(())
            }
            Err(Closed) => Err(message),
        }
    }

    /// Whether the receiver closed the queue (or is gone).
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// A weak sender of the same queue.
    pub(crate) fn downgrade(&self) -> WeakSender<T> {
        WeakSender { shared: Arc::downgrade(&self.shared) }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender { shared: self.shared.clone() }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: a receiver waiting for a message learns that
            // none can come (once the places reserved are used).
            let rx = self.shared.lock().rx_waker.take();
            if let Some(rx) = rx {
                rx.wake();
            }
        }
    }
}

impl<T> WeakSender<T> {
    /// A sender, if the queue still has one (so it is not finished).
    pub(crate) fn upgrade(&self) -> Option<Sender<T>> {
        let shared = self.shared.upgrade()?;
        let mut senders = shared.senders.load(Ordering::Relaxed);
        loop {
            if senders == 0 {
                return None;
            }
            match shared.senders.compare_exchange_weak(senders, senders + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Sender { shared }),
                Err(now) => senders = now,
            }
        }
    }
}

impl<T> Clone for WeakSender<T> {
    fn clone(&self) -> Self {
        WeakSender { shared: self.shared.clone() }
    }
}

/// The future of [`Sender::reserve`].
pub(crate) struct Reserve<'a, T> {
    shared: &'a Shared<T>,
    /// The slot in line while waiting.
    key: Option<usize>,
}

impl<'a, T> Future for Reserve<'a, T> {
    type Output = Result<Permit<'a, T>, Closed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let shared = self.shared;
        let mut wakes = Wakes::default();
        let mut state = shared.lock();
        let key = match self.key {
            Some(key) => key,
            None if state.closed => return Poll::Ready(Err(Closed)),
            None if shared.has_room(&state) => {
                state.reserved += 1;
                drop(state);
                coop.made_progress();
                return Poll::Ready(Ok(Permit { shared }));
            }
            None => {
                // Into the line; then free places go to its head (perhaps
                // this sender: the receiver may have freed one since the
                // check above without seeing anyone in line).
                let line = state.line();
                let key = line.free.pop().unwrap_or_else(|| {
                    line.slots.push(Slot::default());
                    line.slots.len() - 1
                });
                line.slots[key] = Slot { waker: Some(cx.waker().clone()), granted: false };
                line.order.push_back(key);
                shared.in_line.store(line.order.len(), Ordering::SeqCst);
                self.key = Some(key);
                shared.grant(&mut state, &mut wakes);
                key
            }
        };
        let closed = state.closed;
        let slot = &mut state.line().slots[key];
        let result = if slot.granted {
            slot.granted = false;
            slot.waker = None;
            state.line().free.push(key);
            self.key = None;
            Ok(Permit { shared })
        } else if closed {
            // `close` took it out of line.
            state.line().free.push(key);
            self.key = None;
            Err(Closed)
        } else {
            if !slot.waker.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
                slot.waker = Some(cx.waker().clone());
            }
            drop(state);
            wakes.wake();
            return Poll::Pending;
        };
        drop(state);
        wakes.wake();
        coop.made_progress();
        Poll::Ready(result)
    }
}

impl<T> Drop for Reserve<'_, T> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut wakes = Wakes::default();
        let mut state = self.shared.lock();
        let slot = std::mem::take(&mut state.line().slots[key]);
        state.line().free.push(key);
        if slot.granted {
            // The place granted to it goes to the next in line.
            state.reserved -= 1;
            self.shared.grant(&mut state, &mut wakes);
            if self.shared.finished(&state) {
                wakes.rx = state.rx_waker.take();
            }
        } else if let Some(at) = state.line().order.iter().position(|&k| k == key) {
            state.line().order.remove(at);
            let waiting = state.line().order.len();
            self.shared.in_line.store(waiting, Ordering::SeqCst);
        }
        drop(state);
        wakes.wake();
    }
}

impl<T> Permit<'_, T> {
    /// Puts `message` in the place reserved, for the receiver. (If the
    /// receiver is gone, `message` is dropped.)
    pub(crate) fn send(self, message: T) {
        let shared = self.shared;
        std::mem::forget(self);
        let mut state = shared.lock();
        state.reserved -= 1;
        if state.dropped {
            drop(state);
            drop(message);
            return;
        }
        state.queue.push_back(message);
        let rx = state.rx_waker.take();
        drop(state);
        if let Some(rx) = rx {
            rx.wake();
        }
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        let mut wakes = Wakes::default();
        let mut state = self.shared.lock();
        state.reserved -= 1;
        self.shared.grant(&mut state, &mut wakes);
        if self.shared.finished(&state) {
            wakes.rx = state.rx_waker.take();
        }
        drop(state);
        wakes.wake();
    }
}

/// What [`Receiver::take`] found.
enum Took<T> {
    Message(T),
    Empty,
    Finished,
}

impl<T> Receiver<T> {
    /// The next message: from the receiver's own buffer, or, that empty,
    /// up to [`TAKE`] at a time from the queue.
    fn take(&mut self, cx: Option<&mut Context<'_>>) -> Took<T> {
        let shared = &*self.shared;
        // Only the receiver changes `in_hand`: it reads its own count, and
        // locks its buffer only when it holds something.
        if shared.in_hand.load(Ordering::Relaxed) > 0 {
            let message = shared.hand.lock().unwrap_or_else(|poison| poison.into_inner()).pop_front();
            if let Some(message) = message {
                shared.handed_out();
                return Took::Message(message);
            }
        }
        let mut state = shared.lock();
        let n = state.queue.len().min(TAKE);
        if n > 0 {
            // Their places stay taken until each is handed out; the first
            // one is handed out now.
            let mut wakes = Wakes::default();
            let message = state.queue.pop_front();
            if n > 1 {
                let mut hand = shared.hand.lock().unwrap_or_else(|poison| poison.into_inner());
                hand.extend(state.queue.drain(..n - 1));
                shared.in_hand.fetch_add(n - 1, Ordering::SeqCst);
            }
            shared.grant(&mut state, &mut wakes);
            drop(state);
            wakes.wake();
            return message.map_or(Took::Empty, Took::Message);
        }
        if shared.finished(&state) {
            return Took::Finished;
        }
        if let Some(cx) = cx {
            if !state.rx_waker.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
                state.rx_waker = Some(cx.waker().clone());
            }
        }
        Took::Empty
    }

    /// The next message; `None` once the queue is empty and none can come
    /// (closed, or every sender gone, and no place reserved).
    ///
    /// Spends a unit of the task's cooperative budget per message, as
    /// Tokio's channels do.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken only when it is returned.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        match self.take(Some(cx)) {
            Took::Message(message) => {
                coop.made_progress();
                Poll::Ready(Some(message))
            }
            Took::Finished => {
                coop.made_progress();
                Poll::Ready(None)
            }
            Took::Empty => Poll::Pending,
        }
    }

    /// As [`poll_recv`](Self::poll_recv), awaited.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next message if one is queued now.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if none is queued now,
    /// [`TryRecvError::Disconnected`] if none can come any more.
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        match self.take(None) {
            Took::Message(message) => Ok(message),
            Took::Empty => Err(TryRecvError::Empty),
            Took::Finished => Err(TryRecvError::Disconnected),
        }
    }

    /// Closes the queue: no new place is reserved (senders waiting get
    /// [`Closed`]); messages queued, and those sent into places reserved
    /// before, are still received.
    pub(crate) fn close(&mut self) {
        let mut wakes = Wakes::default();
        let mut state = self.shared.lock();
        self.shared.close_locked(&mut state, &mut wakes);
        drop(state);
        wakes.wake();
    }
}

impl<T> Shared<T> {
    fn close_locked(&self, state: &mut State<T>, wakes: &mut Wakes) {
        state.closed = true;
        // Senders in line get `Closed` (those granted a place keep it).
        if let Some(line) = state.line.as_deref_mut() {
            for key in line.order.drain(..) {
                if let Some(waker) = line.slots[key].waker.take() {
                    wakes.senders.push(waker);
                }
            }
        }
        self.in_line.store(0, Ordering::SeqCst);
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut wakes = Wakes::default();
        let mut state = self.shared.lock();
        self.shared.close_locked(&mut state, &mut wakes);
        state.dropped = true;
        let queued = std::mem::take(&mut state.queue);
        drop(state);
        wakes.wake();
        // Dropped outside the lock: a message's drop may send again.
        drop(queued);
        let hand = std::mem::take(&mut *self.shared.hand.lock().unwrap_or_else(|poison| poison.into_inner()));
        drop(hand);
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

#[cfg(all(test, not(genflow_loom)))]
mod tests {
    use std::{pin::pin, sync::Arc as StdArc};

    use futures::poll;

    use super::*;

    #[tokio::test]
    async fn holds_at_most_its_bound_counting_places_reserved() {
        let (tx, mut rx) = channel::<u32>(2);
        let permit = tx.reserve().await.unwrap();
        tx.try_send(1).unwrap();
        assert_eq!(tx.try_send(2), Err((TryReserveError::Full, 2)));
        permit.send(0);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(0));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn senders_waiting_for_room_get_it_in_their_order_and_newcomers_wait_behind_them() {
        let (tx, mut rx) = channel::<u32>(1);
        tx.try_send(0).unwrap();
        let mut first = pin!(tx.send(1));
        let mut second = pin!(tx.send(2));
        assert!(poll!(first.as_mut()).is_pending());
        assert!(poll!(second.as_mut()).is_pending());
        assert_eq!(rx.recv().await, Some(0));
        // The freed place was granted to the first in line: a newcomer
        // finds the queue full although nothing is queued.
        assert_eq!(tx.try_send(3), Err((TryReserveError::Full, 3)));
        assert!(poll!(second.as_mut()).is_pending());
        assert_eq!(first.await, Ok(()));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(second.await, Ok(()));
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test]
    async fn a_sender_that_gives_up_passes_its_granted_place_on() {
        let (tx, mut rx) = channel::<u32>(1);
        tx.try_send(0).unwrap();
        let mut first = Box::pin(tx.send(1));
        let mut second = pin!(tx.send(2));
        assert!(poll!(first.as_mut()).is_pending());
        assert!(poll!(second.as_mut()).is_pending());
        assert_eq!(rx.recv().await, Some(0));
        // Granted a place, then dropped before it used it.
        drop(first);
        assert_eq!(second.await, Ok(()));
        assert_eq!(rx.recv().await, Some(2));
        // Dropping an unused permit frees its place too.
        drop(tx.reserve().await.unwrap());
        tx.try_send(3).unwrap();
        assert_eq!(rx.recv().await, Some(3));
    }

    #[tokio::test]
    async fn a_closed_queue_still_delivers_what_was_queued_or_reserved_then_ends() {
        let (tx, mut rx) = channel::<u32>(3);
        tx.try_send(1).unwrap();
        let permit = tx.reserve().await.unwrap();
        let full = channel::<u32>(1);
        full.0.try_send(0).unwrap();
        let mut waiting = pin!(full.0.send(9));
        assert!(poll!(waiting.as_mut()).is_pending());
        rx.close();
        let mut full_rx = full.1;
        full_rx.close();
        assert_eq!(waiting.await, Err(9));
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(2), Err((TryReserveError::Closed, 2)));
        assert!(tx.reserve().await.is_err());
        assert_eq!(rx.recv().await, Some(1));
        // The place reserved before the close: the receiver waits for it.
        {
            let mut next = pin!(rx.recv());
            assert!(poll!(next.as_mut()).is_pending());
            permit.send(3);
            assert_eq!(next.await, Some(3));
        }
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn the_queue_ends_when_every_sender_is_gone_and_weak_senders_do_not_keep_it() {
        let (tx, mut rx) = channel::<u32>(4);
        let weak = tx.downgrade();
        let other = weak.upgrade().expect("a sender is alive");
        other.try_send(1).unwrap();
        drop(other);
        assert_eq!(rx.recv().await, Some(1));
        let mut last = pin!(rx.recv());
        assert!(poll!(last.as_mut()).is_pending());
        drop(tx);
        assert_eq!(last.await, None);
        assert!(weak.upgrade().is_none());
    }

    #[tokio::test]
    async fn a_dropped_receiver_drops_what_is_queued_and_what_comes_later() {
        let dropped = StdArc::new(AtomicUsize::new(0));
        struct Counted(StdArc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (tx, rx) = channel::<Counted>(2);
        tx.try_send(Counted(dropped.clone())).unwrap_or_else(|_| panic!("room"));
        let permit = tx.reserve().await.unwrap();
        drop(rx);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        permit.send(Counted(dropped.clone()));
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
        assert!(tx.reserve().await.is_err());
    }

    #[tokio::test]
    async fn a_full_queue_wakes_its_waiting_sender_from_another_task() {
        let (tx, mut rx) = channel::<u32>(1);
        let sender = tokio::spawn(async move {
            for n in 0..100 {
                tx.send(n).await.unwrap();
            }
        });
        let mut got = Vec::new();
        while let Some(n) = rx.recv().await {
            got.push(n);
        }
        sender.await.unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }
}

/// Model checks with [loom](https://docs.rs/loom) (run as the pipeline's,
/// see `pipeline/loom_models.rs`): every interleaving of a few threads, a
/// lost wake-up showing as a deadlock.
#[cfg(all(test, genflow_loom))]
mod loom_models {
    use std::{future::poll_fn, pin::pin, task::Poll};

    use loom::{future::block_on, thread};

    use super::*;

    /// Two senders through one place, one of them giving up its wait
    /// after a first poll; the receiver gets every message sent, in each
    /// sender's order, then the end.
    #[test]
    fn loom_senders_waiting_for_one_place_and_one_giving_up() {
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>(1);
            let steady = {
                let tx = tx.clone();
                thread::spawn(move || {
                    block_on(async {
                        tx.send(1).await.unwrap();
                        tx.send(2).await.unwrap();
                    })
                })
            };
            let quitter = thread::spawn(move || {
                block_on(async {
                    let mut reserve = pin!(tx.reserve());
                    // One poll: a place now, or a place in line given up.
                    let sent = poll_fn(|cx| match reserve.as_mut().poll(cx) {
                        Poll::Ready(permit) => {
                            permit.unwrap().send(9);
                            Poll::Ready(true)
                        }
                        Poll::Pending => Poll::Ready(false),
                    })
                    .await;
                    sent
                })
            });
            let mut got = Vec::new();
            while let Some(n) = block_on(rx.recv()) {
                got.push(n);
            }
            steady.join().unwrap();
            let sent = quitter.join().unwrap();
            let mut expected = vec![1, 2];
            if sent {
                expected.push(9);
            }
            got.sort_unstable();
            assert_eq!(got, expected);
        });
    }

    /// A sender filling a queue of two while the receiver takes both
    /// messages at once and hands them out one by one: the place each
    /// hand-out frees reaches the sender waiting for it (the receiver sees
    /// it in line, or it sees the place free), in order.
    #[test]
    fn loom_places_freed_by_hand_outs_reach_a_waiting_sender() {
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>(2);
            let sender = thread::spawn(move || {
                block_on(async {
                    for n in 0..4 {
                        tx.send(n).await.unwrap();
                    }
                })
            });
            let mut got = Vec::new();
            while let Some(n) = block_on(rx.recv()) {
                got.push(n);
            }
            sender.join().unwrap();
            assert_eq!(got, [0, 1, 2, 3]);
        });
    }

    /// A receiver that closes its queue while a sender waits for room and
    /// another holds a place: the place's message still arrives, the
    /// waiting sender gets its message back, and the queue ends.
    #[test]
    fn loom_close_while_senders_wait_and_hold_places() {
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>(1);
            let permit_tx = tx.clone();
            let holder = thread::spawn(move || {
                block_on(async {
                    let permit = permit_tx.reserve().await;
                    if let Ok(permit) = permit {
                        permit.send(1);
                        true
                    } else {
                        false
                    }
                })
            });
            let waiter = thread::spawn(move || block_on(tx.send(2)));
            rx.close();
            let mut got = Vec::new();
            while let Some(n) = block_on(rx.recv()) {
                got.push(n);
            }
            let held = holder.join().unwrap();
            let waited = waiter.join().unwrap();
            let mut expected = Vec::new();
            if held {
                expected.push(1);
            }
            if waited.is_ok() {
                expected.push(2);
            }
            got.sort_unstable();
            assert_eq!(got, expected);
        });
    }
}
