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
//! when it returns), and one panic guard covers a whole poll instead of
//! each item, which lets the compiler inline `process` into the loop. An
//! item's `process` future lives in a slot of this future, made in place
//! and polled in one place; most finish on their first poll.
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

pin_project_lite::pin_project! {
    /// Processes the items of a batch (last to first) one after the
    /// other until the batch is empty, the stage has mail, or an item needs
    /// more than a count (see [`Stop`]). `make` starts `process`.
    ///
    /// Dropped while an item is in `process`, it drops that item's future;
    /// the item counts as aborted (`progress.in_process`), as in the loop
    /// of an `async` block.
    pub(crate) struct ItemLoop<'b, 'p, S: Stage, K, O, M, F> {
        server: &'b mut S,
        out: &'b mut Emitter<S::Out>,
        items: &'b mut Items<S::In>,
        open: &'b mut O,
        progress: &'b mut Progress<'p>,
        state: &'b ServerState,
        make: M,
        // The item in `process`: made in place, polled pinned.
        #[pin]
        slot: Option<F>,
        // Whether the item in `process` waited (returned `Pending`).
        waited: bool,
        intake: PhantomData<fn() -> K>,
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
        ItemLoop { server, out, items, open, progress, state, make, slot: None, waited: false, intake: PhantomData }
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
        let mut this = self.project();
        debug_assert!(this.slot.is_none() && !*this.waited, "one item, started once, before the first poll");
        // SAFETY: as in `poll`: the future made here is the only user of
        // the server and the emitter until it is dropped, and lives in a
        // field of this future, which holds both for `'b`.
        let (server, out) =
            unsafe { (&mut *(&mut **this.server as *mut S), &mut *(&mut **this.out as *mut Emitter<S::Out>)) };
        let future = catch_unwind(AssertUnwindSafe(|| (this.make)(server, item, out)))?;
        this.slot.set(Some(future));
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
        let mut this = self.project();
        // The counts of this poll, kept out of `progress` (in registers)
        // until it returns: the weight of the items done, and of the item
        // in `process` (0 between items).
        let mut done = 0;
        let mut weight = this.progress.in_process;
        // An item in the slot already is one that waited, or the one item
        // of `one`: once done, it stops the loop, whatever it did.
        let stop_after = this.slot.is_some();
        // One guard for the whole poll: what panics in it is `process`
        // (this loop's own steps do not).
        let run = catch_unwind(AssertUnwindSafe(|| {
            loop {
                if this.slot.is_none() {
                    let item = match this.items.pop_plain() {
                        Ok(Some(item)) => item,
                        Err(HasTags) => match pop_tagged(this.items, this.out) {
                            Some(item) => item,
                            None => return Poll::Ready(Stop::Empty),
                        },
                        Ok(None) => return Poll::Ready(Stop::Empty),
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
                        (&mut *(&mut **this.server as *mut S), &mut *(&mut **this.out as *mut Emitter<S::Out>))
                    };
                    let future = (this.make)(server, item, out);
                    // SAFETY: the slot is empty (checked above), so nothing
                    // pinned is overwritten or left undropped.
                    unsafe { std::ptr::write(this.slot.as_mut().get_unchecked_mut(), Some(future)) };
                }
                // The one place a `process` future is polled.
                let Some(future) = this.slot.as_mut().as_pin_mut() else { unreachable!("filled above") };
                if future.poll(cx).is_pending() {
                    *this.waited = true;
                    return Poll::Pending;
                }
                this.slot.set(None);
                if stop_after || this.out.item_failed() {
                    return Poll::Ready(Stop::Item(Ok(()), *this.waited));
                }
                // Its hold on its acknowledgements, if any, goes.
                this.out.end_item(false);
                done += weight;
                weight = 0;
                // The mark first: one load, where the batch's length is two.
                if this.state.has_mail() && !this.items.is_empty() && this.state.take_mail() {
                    return Poll::Ready(Stop::Mail);
                }
            }
        }));
        this.progress.processed += done;
        this.progress.in_process = weight;
        match run {
            Ok(poll) => poll,
            Err(panic) => {
                // The item's future panicked: it is done.
                this.slot.set(None);
                Poll::Ready(Stop::Item(Err(panic), *this.waited))
            }
        }
    }
}
