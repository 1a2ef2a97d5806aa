//! The loop a replica (or a fused stage) runs over a batch of items, as
//! long as each goes well: no futures in flight, no rate limit. Items with
//! acknowledgements go round it as plain ones do, their tags handed to the
//! emitter around `process` (out of line: a batch without them pays one
//! check of the list's kind per item, as it pays for the list anyway).
//!
//! It is a future of its own, written by hand rather than as a loop of an
//! `async` block: between items, what the loop keeps (the batch, the
//! counts, the stage's mail flag) stays in registers instead of being
//! written to and read back from the task's state around each `process`
//! future (the counts of a poll are its locals, written to [`Progress`]
//! when it returns; with inputs of one item each, not even counted per
//! item, but told from how many the poll took), and one panic guard
//! covers a whole poll's polls of `process` futures instead of each item,
//! which lets the compiler inline `process` into the loop. An item's
//! `process` future lives in a slot of this future, made in place and
//! polled in one place; most finish on their first poll. Whether the slot is full is a local of the loop
//! (kept in the future only when a poll returns): making a future and
//! dropping it have guards of their own, which cost nothing where neither
//! can panic, so a panic caught by the poll's guard always comes from a
//! future in the slot.
//!
//! Anything else an item brings (it panicked, failed, or waited on the
//! way) ends the loop: the caller does the bookkeeping for that item and
//! starts the loop again for the rest, as it does once it has served the
//! mail that stopped the loop.
//!
//! Items of a stage with futures in flight or a rate limit go through the
//! same future one at a time ([`ItemLoop::one`]), and every loop's
//! `process` futures are made by [`start`]: so a stage's `process` future
//! has one type and is polled in this one place, where the compiler can
//! inline it.

use std::{
    future::Future,
    marker::PhantomData,
    mem::MaybeUninit,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    task::{Context, Poll},
};

use super::{
    Emitter, Stage,
    ack::items::{HasTags, Items},
    batch::{Hold, TakeFrom},
    run::Progress,
};
use crate::server::state::ServerState;

/// Why [`ItemLoop`] stopped.
pub(crate) enum Stop {
    /// The batch is empty.
    Empty,
    /// The stage has mail, and items are left.
    Mail,
    /// The item just processed needs more than a count: it panicked
    /// (`Err`), failed, or waited (`true`) on the way. Not counted yet:
    /// [`Progress::in_process`] still holds its weight.
    Item(std::thread::Result<()>, bool),
}

/// Processes the items of a batch (last to first) one after the other
/// until the batch is empty, the stage has mail, or an item needs more
/// than a count (see [`Stop`]). `make` starts `process`.
///
/// Dropped while an item is in `process`, it drops that item's future;
/// the item counts as aborted (`progress.in_process`), as in the loop of
/// an `async` block.
pub(crate) struct ItemLoop<'b, 'p, S: Stage, K, O, M, F> {
    server: &'b mut S,
    out: &'b mut Emitter<S::Out>,
    items: &'b mut Items<S::In>,
    open: &'b mut O,
    progress: &'b mut Progress<'p>,
    state: &'b ServerState,
    make: M,
    /// The item in `process`: made in place, polled pinned, never moved;
    /// live while `full`. (A flag of its own rather than an `Option`:
    /// while a poll goes through items, whether the slot is full is a
    /// local, and the flag is written only when the poll returns.)
    slot: MaybeUninit<F>,
    full: bool,
    /// Whether the item in `process` waited (returned `Pending`).
    waited: bool,
    intake: PhantomData<fn() -> K>,
}

impl<S: Stage, K, O, M, F> Drop for ItemLoop<'_, '_, S, K, O, M, F> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.full) {
            // SAFETY: the slot holds a live future (`full`), dropped in
            // place, once (`full` is cleared first).
            unsafe { std::ptr::drop_in_place(self.slot.as_mut_ptr()) };
        }
    }
}

impl<'b, 'p, S, K, O, M, F> ItemLoop<'b, 'p, S, K, O, M, F>
where
    S: Stage,
    K: TakeFrom<S>,
    O: Hold,
    M: FnMut(&'b mut S, S::In, &'b mut Emitter<S::Out>) -> F,
    F: Future<Output = ()>,
{
    /// The loop over `items`, checking `state`'s mail between items.
    pub(crate) fn new(
        server: &'b mut S,
        out: &'b mut Emitter<S::Out>,
        items: &'b mut Items<S::In>,
        open: &'b mut O,
        progress: &'b mut Progress<'p>,
        state: &'b ServerState,
        make: M,
    ) -> Self {
        ItemLoop {
            server,
            out,
            items,
            open,
            progress,
            state,
            make,
            slot: MaybeUninit::uninit(),
            full: false,
            waited: false,
            intake: PhantomData,
        }
    }

    /// Runs one item, which [`start`](Self::start) must give it before
    /// its first poll, and stops with [`Stop::Item`] once the item is
    /// done, whatever it did (as the loop does after any item that is in
    /// its slot when a poll begins). The counts of `progress`, `open` and
    /// the taking of items, with their tags, are left to the caller.
    pub(crate) fn one(
        server: &'b mut S,
        out: &'b mut Emitter<S::Out>,
        items: &'b mut Items<S::In>,
        open: &'b mut O,
        progress: &'b mut Progress<'p>,
        state: &'b ServerState,
        make: M,
    ) -> Self {
        Self::new(server, out, items, open, progress, state, make)
    }

    /// Starts `process` for `item` in the slot of a future made by
    /// [`one`](Self::one) and not polled yet. `Err` if `process` panicked
    /// before it gave its future (a hand-written `fn process` may): the
    /// item is done, and the slot stays empty.
    pub(crate) fn start(self: Pin<&mut Self>, item: S::In) -> std::thread::Result<()> {
        // SAFETY: the slot's future is made in place here and never moved.
        let this = unsafe { self.get_unchecked_mut() };
        debug_assert!(!this.full && !this.waited, "one item, started once, before the first poll");
        // SAFETY: as in `poll`: the future made here is the only user of
        // the server and the emitter until it is dropped, and lives in a
        // field of this future, which holds both for `'b`.
        let (server, out) =
            unsafe { (&mut *(&mut *this.server as *mut S), &mut *(&mut *this.out as *mut Emitter<S::Out>)) };
        let future = catch_unwind(AssertUnwindSafe(|| (this.make)(server, item, out)))?;
        this.slot.write(future);
        this.full = true;
        Ok(())
    }
}

/// Takes the last item of `items`, which hold tags, handing its tag to
/// `out` for `process`.
#[inline(never)]
fn pop_tagged<T: Send + 'static, U: Send + 'static>(items: &mut Items<T>, out: &mut Emitter<U>) -> Option<T> {
    let (item, tag) = items.pop()?;
    out.begin_item(tag);
    Some(item)
}

/// Starts a stage's `process` for `item`: the one maker of `process`
/// futures, for every [`ItemLoop`] of a stage, so that they all have
/// the same type and `process` is polled in one place.
pub(crate) fn start<'b, S: Stage>(
    server: &'b mut S,
    item: S::In,
    out: &'b mut Emitter<S::Out>,
) -> impl Future<Output = ()> + 'b {
    server.process(item, out)
}

impl<'b, 'p, S, K, O, M, F> Future for ItemLoop<'b, 'p, S, K, O, M, F>
where
    S: Stage,
    K: TakeFrom<S>,
    O: Hold,
    M: FnMut(&'b mut S, S::In, &'b mut Emitter<S::Out>) -> F,
    F: Future<Output = ()>,
{
    type Output = Stop;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Stop> {
        // SAFETY: the slot's future is made in place, polled pinned and
        // dropped where it is; nothing here moves it.
        let this = unsafe { self.get_unchecked_mut() };
        // The counts of this poll, kept out of `progress` (in registers)
        // until it returns: the weight of the items done, and of the item
        // in `process` (0 between items).
        let mut done = 0;
        let mut weight = this.progress.in_process;
        // Whether the slot holds a future made before this poll: one that
        // waited, or the one item of `one`.
        let made = this.full;
        // With inputs of one item each, the items done are those taken
        // less the one still in `process`, if any (`weight`, 1 or 0): the
        // loop counts nothing per item. (An item made before this poll was
        // taken before it, and is never done here: the loop stops with it.)
        let before = if K::UNIT { this.items.len() } else { 0 };
        // One guard for the whole poll, for what panics most often: a
        // `process` future's poll (the slot is then full). Making the
        // future and dropping it have guards of their own, which cost
        // nothing where neither can panic (an `async fn`'s future, made
        // and done), so that whether the slot is full stays a local of
        // the loop, given back with its result.
        let run = catch_unwind(AssertUnwindSafe(|| {
            let mut made = made;
            loop {
                // An item made before this poll, once done, stops the
                // loop, whatever it did.
                let stop_after = made;
                if !made {
                    let item = match this.items.pop_plain() {
                        Ok(Some(item)) => item,
                        Err(HasTags) => match pop_tagged(this.items, this.out) {
                            Some(item) => item,
                            None => return (Poll::Ready(Stop::Empty), false),
                        },
                        Ok(None) => return (Poll::Ready(Stop::Empty), false),
                    };
                    weight = K::weight(&item);
                    this.open.processed(weight);
                    // SAFETY: the future made here is the only user of the
                    // server and the emitter until it is dropped (below, or
                    // with this future), and it never outlives `'b`: it
                    // lives in `slot`, a field of this future, which holds
                    // both for `'b`. This loop touches neither while the
                    // slot is full.
                    let (server, out) = unsafe {
                        (&mut *(&mut *this.server as *mut S), &mut *(&mut *this.out as *mut Emitter<S::Out>))
                    };
                    let make = &mut this.make;
                    match catch_unwind(AssertUnwindSafe(|| make(server, item, out))) {
                        // The slot is empty: nothing is overwritten.
                        Ok(future) => this.slot.write(future),
                        // `process` panicked before it gave its future.
                        Err(panic) => return (Poll::Ready(Stop::Item(Err(panic), this.waited)), false),
                    };
                }
                // The one place a `process` future is polled.
                // SAFETY: the slot holds a live future, pinned: it stays
                // where it is until it is dropped in place.
                let future = unsafe { Pin::new_unchecked(this.slot.assume_init_mut()) };
                if future.poll(cx).is_pending() {
                    this.waited = true;
                    return (Poll::Pending, true);
                }
                made = false;
                let slot = &mut this.slot;
                // SAFETY: live until here, and dropped once (a drop that
                // panics drops the rest of the future and is done).
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| unsafe { slot.assume_init_drop() })) {
                    return (Poll::Ready(Stop::Item(Err(panic), this.waited)), false);
                }
                if stop_after || this.out.item_failed() {
                    return (Poll::Ready(Stop::Item(Ok(()), this.waited)), false);
                }
                // Its hold on its acknowledgements, if any, goes.
                this.out.end_item(false);
                if !K::UNIT {
                    done += weight;
                }
                weight = 0;
                // The mark first: one load, where the batch's length is two.
                if this.state.has_mail() && !this.items.is_empty() && this.state.take_mail() {
                    return (Poll::Ready(Stop::Mail), false);
                }
            }
        }));
        if K::UNIT {
            let taken = (before - this.items.len()) as u64;
            done = if made { 0 } else { taken - weight };
        }
        this.progress.processed += done;
        this.progress.in_process = weight;
        match run {
            Ok((poll, full)) => {
                this.full = full;
                poll
            }
            Err(panic) => {
                // The item's future panicked in its poll: it is done.
                this.full = false;
                let slot = &mut this.slot;
                // SAFETY: live (the guards of making and dropping it caught
                // their own panics), and dropped once. If its drop panics
                // too, the item has failed already: that panic goes, the
                // first one stands for the item.
                drop(catch_unwind(AssertUnwindSafe(|| unsafe { slot.assume_init_drop() })));
                Poll::Ready(Stop::Item(Err(panic), this.waited))
            }
        }
    }
}
