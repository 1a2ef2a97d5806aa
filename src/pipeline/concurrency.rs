//! `#[concurrency(N)]`: up to N futures of one replica in flight at once,
//! for stages whose work per item is mostly waiting (a call to a service, a
//! query, a file read).
//!
//! `process` stays one item at a time: it does the part that touches the
//! stage's state, then hands a `'static + Send` future for the slow part to
//! [`Emitter::emit_async`] (or [`Emitter::try_emit_async`]). The replica
//! keeps those futures in a set polled by its own task (a
//! `FuturesUnordered`, or a `FuturesOrdered` when results keep their input
//! order), allocated once, for stages that have a concurrency above 1. When
//! the set holds N futures, handing over another waits until one of them
//! completes; meanwhile they all make progress and the results of those
//! done are emitted. Without `#[concurrency]` (N = 1), the future is awaited
//! in place, so a stage written with `emit_async` runs with any N.
//!
//! # When an item is done
//!
//! An item whose `process` handed over futures is *in flight*: received,
//! not processed. It is processed (counted in `processed`, and in `failed`
//! if one of its futures failed, panicked, or `process` failed it) when its
//! last future completes.
//!
//! A batch whose items are all through `process` while futures are still
//! in flight does not end yet: the replica waits for them (serving calls
//! and casts, and the stages fused after it, meanwhile), and, as soon as
//! one completes and items are waiting in its queue, takes more into the
//! same batch, as many as there is room for among the N. So a slow future
//! holds one place, not the replica's intake, and an item that arrives
//! while others are in flight joins them at once. The batch ends once
//! nothing is in flight, or once it took 8 times its `max_demand` (then
//! it lets its last futures complete first), so that `flush` under a
//! steady stream still returns. Everything said of a batch holds
//! unchanged: `flush()` returns after the items' futures completed,
//! shutdown waits for them before `finish`, and a restarted state never
//! loses them (a handler that panicked while they were in flight is
//! restarted after they complete). An `ordered` stage, whose batches are
//! runs of consecutive inputs, takes no more items into a batch: each
//! batch waits for all its futures, and its outputs join the others' in
//! input order. `abort` counts the items in flight as aborted.
//!
//! A replica takes up to N items at a time (its `max_demand` does not
//! apply), so that N futures can be in flight at once and no more items
//! wait in the replica; while futures are in flight it takes only as many
//! as there is room for. So it holds at most N items, in its batch or in
//! flight, and the rest stay queued for any replica free.
//!
//! The idea is Akka Streams' `mapAsync`/`mapAsyncUnordered`, the futures
//! crate's `buffered`/`buffer_unordered`, and the `concurrency` of a
//! Broadway processor.

use std::{
    collections::HashMap,
    error::Error,
    future::{Future, poll_fn},
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
};

use futures::{
    FutureExt, Stream,
    stream::{FuturesOrdered, FuturesUnordered},
};

use super::{
    BATCH, Emitter, Panicked, Stage,
    ack::{items::Items, tag::Tag},
    metrics::{Counters, Delta},
    queue::Reader,
};
use crate::server::{handle::Inbox, run::Crashed};

type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// How many futures one replica of a stage keeps in flight, and whether
/// their results leave in the order they were handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Concurrency {
    /// At least 1; 1 awaits each future in place.
    pub(crate) limit: usize,
    /// Results in hand-over order (`#[concurrency(N, ordered)]`, an
    /// `ordered` stage, or a `partition_by` one).
    pub(crate) ordered: bool,
    /// Whether a replica takes more items while its futures are in flight
    /// (not in an `ordered` stage, whose batches are runs of consecutive
    /// inputs: its batch ends when they are all done).
    pub(crate) refill: bool,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency { limit: 1, ordered: false, refill: true }
    }
}

/// How a future handed over ended.
enum Outcome<T> {
    Value(T),
    Failed(BoxError),
    Panicked(Panicked),
}

/// A future handed over, done, with the number of its item.
pub(crate) struct Done<T> {
    item: u64,
    /// The acknowledgements of the input the future was handed over for:
    /// its output holds them, or its failure is reported to them.
    tag: Tag,
    outcome: Outcome<T>,
}

type Job<T> = Pin<Box<dyn Future<Output = Done<T>> + Send>>;

enum Set<T> {
    Unordered(FuturesUnordered<Job<T>>),
    Ordered(FuturesOrdered<Job<T>>),
}

/// An item with futures in flight.
#[derive(Default)]
struct Entry {
    /// Its futures not done yet.
    left: usize,
    /// Whether `process` returned for it.
    closed: bool,
    /// Whether it failed (in `process`, or in a future done).
    failed: bool,
}

/// A replica's futures in flight (see the module docs).
pub(crate) struct InFlight<T> {
    set: Set<T>,
    limit: usize,
    /// The items with futures in flight, by number.
    items: HashMap<u64, Entry>,
    /// The number of the item in `process` (or next to be).
    current: u64,
    /// In `finish`: futures are awaited in place (there is no item).
    inline: bool,
    /// See [`Concurrency::refill`].
    refill: bool,
}

impl<T: Send + 'static> InFlight<T> {
    pub(crate) fn new(concurrency: Concurrency) -> Self {
        let set = if concurrency.ordered {
            Set::Ordered(FuturesOrdered::new())
        } else {
            Set::Unordered(FuturesUnordered::new())
        };
        InFlight {
            set,
            limit: concurrency.limit.max(1),
            items: HashMap::new(),
            current: 0,
            inline: false,
            refill: concurrency.refill,
        }
    }

    fn len(&self) -> usize {
        match &self.set {
            Set::Unordered(set) => set.len(),
            Set::Ordered(set) => set.len(),
        }
    }

    fn push(&mut self, job: Job<T>) {
        self.items.entry(self.current).or_default().left += 1;
        match &mut self.set {
            Set::Unordered(set) => set.push(job),
            Set::Ordered(set) => set.push_back(job),
        }
    }

    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<Option<Done<T>>> {
        match &mut self.set {
            Set::Unordered(set) => Pin::new(set).poll_next(cx),
            Set::Ordered(set) => Pin::new(set).poll_next(cx),
        }
    }

    /// A future of item `item` is done (`failed`, or not): `Some(failed)`
    /// if that was the item's last and `process` returned for it.
    fn complete(&mut self, item: u64, failed: bool) -> Option<bool> {
        let entry = self.items.get_mut(&item)?;
        entry.left -= 1;
        entry.failed |= failed;
        if entry.left > 0 || !entry.closed {
            return None;
        }
        self.items.remove(&item).map(|entry| entry.failed)
    }

    /// `process` returned for the current item (`failed` if it failed it):
    /// `None` if the item has futures in flight (then it is done when they
    /// are), else `Some(failed)`, whether it failed, in `process` or in
    /// a future that completed before `process` returned.
    fn close_item(&mut self, failed: bool) -> Option<bool> {
        let item = self.current;
        self.current += 1;
        match self.items.get_mut(&item) {
            Some(entry) if entry.left > 0 => {
                entry.closed = true;
                entry.failed |= failed;
                None
            }
            Some(_) => self.items.remove(&item).map(|entry| entry.failed || failed),
            None => Some(failed),
        }
    }
}

impl<T> InFlight<T> {
    /// The items whose `process` returned and whose futures are still in
    /// flight (the one in `process`, if any, counts apart).
    pub(super) fn held(&self) -> u64 {
        self.items.values().filter(|entry| entry.closed).count() as u64
    }
}

/// Wraps `future` as a job of item `item`: its panic is caught.
fn job<T, E, F>(item: u64, tag: Tag, future: F) -> Job<T>
where
    T: Send + 'static,
    E: Into<BoxError>,
    F: Future<Output = Result<T, E>> + Send + 'static,
{
    Box::pin(async move {
        let outcome = match AssertUnwindSafe(future).catch_unwind().await {
            Ok(Ok(value)) => Outcome::Value(value),
            Ok(Err(error)) => Outcome::Failed(error.into()),
            Err(panic) => Outcome::Panicked(Panicked::new(&panic)),
        };
        Done { item, tag, outcome }
    })
}

impl<T: Send + 'static> Emitter<T> {
    /// Hands `future` over; its output is emitted when it completes, as
    /// [`emit`](Self::emit) would.
    ///
    /// In a `#[concurrency(N)]` stage, the future runs while `process`
    /// returns and the replica goes on with its next items, up to N futures
    /// of the replica at once: when N are in flight, this waits until one
    /// completes (backpressure; the others keep running and their outputs
    /// keep flowing). Their outputs leave in completion order, or in the
    /// order they were handed over with `#[concurrency(N, ordered)]` (and
    /// in a `#[replicas(R, ordered)]` stage, which needs each replica's
    /// outputs in input order, and under `partition_by`, which keeps each
    /// key's order). Without `#[concurrency]` (N = 1), and in
    /// [`Stage::finish`](crate::Stage::finish), the future is awaited in
    /// place.
    ///
    /// The item is processed when its last future completes: `processed`
    /// counts it then, and [`flush`](crate::pipeline::Pipeline::flush),
    /// shutdown and the end of its batch wait for it. A panic inside
    /// `future` fails the item (a [`Failure`](crate::Failure) with
    /// [`is_panic`](crate::Failure::is_panic)), as a panic in `process`
    /// does; the stage's state is not touched. Awaited in place, it *is*
    /// a panic in `process`: the rest of that `process` call does not run
    /// (handed over, the future runs after `process` went on). Call it
    /// several times to hand over several futures for one item.
    ///
    /// `future` is `'static`: clone from `self` what it needs (a client
    /// handle, an `Arc`) before handing it over; the state itself stays
    /// with `process`, one item at a time.
    ///
    /// The idea is Akka Streams' `mapAsyncUnordered`/`mapAsync` and the
    /// futures crate's `buffer_unordered`/`buffered`.
    ///
    /// # Cancel safety
    ///
    /// The future is taken before the first `.await`; dropping this one
    /// (the pipeline was aborted) counts its item as aborted.
    pub async fn emit_async<F>(&mut self, future: F)
    where
        F: Future<Output = T> + Send + 'static,
    {
        if self.in_flight_mut().is_none_or(|flight| flight.inline) {
            let value = future.await;
            return self.emit(value).await;
        }
        let tag = self.current_tag();
        self.hand_over(|item| job(item, tag, future.map(Ok::<T, BoxError>))).await;
    }

    /// As [`emit_async`](Self::emit_async), for a fallible future: `Ok`
    /// is emitted, and `Err(error)` fails the item as
    /// [`fail`](Self::fail)`(error)` would (counted once in `failed`
    /// however many of its futures fail; each error is its own
    /// [`Failure`](crate::Failure)).
    ///
    /// # Cancel safety
    ///
    /// As [`emit_async`](Self::emit_async).
    pub async fn try_emit_async<F, E>(&mut self, future: F)
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<Box<dyn Error + Send + Sync>>,
    {
        if self.in_flight_mut().is_none_or(|flight| flight.inline) {
            match future.await {
                Ok(value) => self.emit(value).await,
                Err(error) => self.fail(error),
            }
            return;
        }
        let tag = self.current_tag();
        self.hand_over(|item| job(item, tag, future)).await;
    }

    fn in_flight_mut(&mut self) -> Option<&mut InFlight<T>> {
        self.in_flight.as_mut().map(|flight| flight.get_mut().unwrap_or_else(|poison| poison.into_inner()))
    }

    /// Puts the job made for the current item in the set, once there is
    /// room, delivering what is done first.
    async fn hand_over(&mut self, make: impl FnOnce(u64) -> Job<T>) {
        let Some(flight) = self.in_flight_mut() else { return };
        let job = make(flight.current);
        // Room for it, and the results done so far on their way.
        self.deliver_ready().await;
        while self.in_flight_mut().is_some_and(|flight| flight.len() >= flight.limit) {
            if !self.next_done().await {
                break;
            }
            self.deliver_ready().await;
            self.flush().await;
        }
        if let Some(flight) = self.in_flight_mut() {
            flight.push(job);
            let len = flight.len();
            self.counters.set_in_flight(len);
        }
    }

    /// Waits until a future in flight completes and delivers it. Called
    /// with all N places taken: the wait is busy time (the stage is
    /// saturated). `false` if none is in flight.
    async fn next_done(&mut self) -> bool {
        let Some(flight) = self.in_flight_mut() else { return false };
        let done = poll_fn(|cx| flight.poll_done(cx)).await;
        match done {
            Some(done) => {
                self.deliver(done).await;
                true
            }
            None => false,
        }
    }

    /// Delivers every future in flight that is done, without waiting.
    async fn deliver_ready(&mut self) {
        loop {
            let Some(flight) = self.in_flight_mut() else { return };
            if flight.len() == 0 {
                return;
            }
            let done = poll_fn(|cx| Poll::Ready(flight.poll_done(cx))).await;
            match done {
                Poll::Ready(Some(done)) => self.deliver(done).await,
                _ => return,
            }
        }
    }

    /// A future is done: counts its item if it was the item's last, then
    /// emits its output or sends its failure.
    pub(crate) async fn deliver(&mut self, done: Done<T>) {
        let Some(flight) = self.in_flight_mut() else { return };
        let failed = !matches!(done.outcome, Outcome::Value(_));
        let item_done = flight.complete(done.item, failed);
        let len = flight.len();
        self.counters.set_in_flight(len);
        // Counted before the first `.await`: an abort from here on finds
        // the item processed, and its output in the buffer (dropped).
        if let Some(item_failed) = item_done {
            self.counters.add(&Delta { processed: 1, failed: u64::from(item_failed), ..Delta::default() });
        }
        match done.outcome {
            Outcome::Value(item) => self.emit_tagged(item, done.tag).await,
            Outcome::Failed(error) => {
                self.failing.settle_early(&self.current);
                self.failing.fail_in_flight(error, false);
                self.failing.fail_tag_last(done.tag);
                self.send_failures().await;
            }
            Outcome::Panicked(panic) => {
                tracing::error!(panic = panic.message(), "a future handed to `emit_async` panicked");
                self.failing.settle_early(&self.current);
                self.failing.fail_in_flight(Box::new(panic), true);
                self.failing.fail_tag_last(done.tag);
                self.send_failures().await;
            }
        }
    }

    /// `process` returned for the current item (`failed` if it failed
    /// it): `None` if the item has futures in flight, and so is counted
    /// when they are done; else `Some(failed)`, whether it failed (also
    /// in a future that completed before `process` returned).
    #[inline]
    pub(crate) fn close_item(&mut self, failed: bool) -> Option<bool> {
        match self.in_flight_mut() {
            Some(flight) => flight.close_item(failed),
            None => Some(failed),
        }
    }

    /// A future in flight that is done, if any; `cx` is woken when one is
    /// otherwise.
    pub(crate) fn poll_in_flight(&mut self, cx: &mut Context<'_>) -> Option<Done<T>> {
        match self.in_flight_mut()?.poll_done(cx) {
            Poll::Ready(done) => done,
            Poll::Pending => None,
        }
    }

    /// Whether the stage runs futures concurrently (`#[concurrency(N)]`
    /// with N > 1): the only kind whose batch takes more items while it is
    /// gone through.
    #[inline]
    pub(crate) fn is_concurrent(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether futures are in flight.
    #[inline]
    pub(crate) fn has_in_flight(&mut self) -> bool {
        self.in_flight_mut().is_some_and(|flight| flight.len() > 0)
    }

    /// From now on (`inline`), or no longer, futures handed over are
    /// awaited in place: in `finish` and `handle_timer`, whose futures
    /// belong to no item.
    pub(crate) fn in_flight_inline(&mut self, inline: bool) {
        if let Some(flight) = self.in_flight_mut() {
            flight.inline = inline;
        }
    }
}

/// How many times its `max_demand` (at least [`BATCH`]) a batch takes at
/// most, counting the items taken while its futures are in flight: past
/// that, the batch settles and ends, so that `flush` under a steady stream
/// still returns.
const REFILLS: u64 = 8;

/// Where a batch whose futures are in flight takes more items from.
pub(crate) struct Refill<'r, 'q, T> {
    reader: &'r mut Reader<'q, T>,
    /// The batch's items (empty while it refills).
    items: &'r mut Items<T>,
    /// How many more it may take.
    left: usize,
}

impl<'r, 'q, T: Send> Refill<'r, 'q, T> {
    /// Takes into `items` from `reader`, if any, up to [`REFILLS`] times
    /// `max_demand` (at least [`BATCH`]: a stage of few places refills as
    /// long as one of many) items per batch in all (`taken` so far).
    pub(crate) fn new(
        reader: Option<&'r mut Reader<'q, T>>,
        items: &'r mut Items<T>,
        max_demand: u32,
        taken: u64,
    ) -> Option<Self> {
        let left = (REFILLS * u64::from(max_demand).max(BATCH as u64)).saturating_sub(taken);
        let left = usize::try_from(left).unwrap_or(usize::MAX);
        reader.filter(|_| left > 0).map(|reader| Refill { reader, items, left })
    }
}

/// Settles the replica's futures in flight at the end of a batch: waits
/// for each, emitting its output, and meanwhile serves the calls and casts
/// that arrive (if `serve`: not after a handler panicked, whose state is to
/// be rebuilt) and the stages fused after this one. The waits are busy
/// time only while all N places are taken (the stage is saturated).
///
/// With `refill`, in a stage that is not `ordered` (whose batches are runs
/// of consecutive inputs), it takes more items as soon as there is room
/// among the futures and items are waiting: `Ok(n)` once it took `n`
/// (in the batch's order, last to first), for the batch to process them;
/// `Ok(0)` once every future is done. `Err` if a handler panicked; the
/// futures are settled all the same.
pub(crate) async fn settle<S: Stage>(
    server: &mut S,
    control: &mut Inbox<S>,
    out: &mut Emitter<S::Out>,
    counters: &Counters,
    mut serve: bool,
    mut refill: Option<Refill<'_, '_, S::In>>,
) -> Result<usize, Crashed> {
    /// What came first.
    enum Next<E, D> {
        Envelope(E),
        Fused,
        Done(Option<D>),
        Taken(usize),
        InputDone,
    }
    if !out.in_flight_mut().is_some_and(|flight| flight.refill) {
        refill = None;
    }
    let mut result = Ok(());
    while out.has_in_flight() {
        let mut away = None;
        let next = poll_fn(|cx| {
            if serve {
                if let Poll::Ready(Some(envelope)) = control.rx.poll_recv(cx) {
                    return Poll::Ready(Next::Envelope(envelope));
                }
            }
            if out.poll_fused(cx).is_ready() {
                return Poll::Ready(Next::Fused);
            }
            let Some(flight) = out.in_flight_mut() else { return Poll::Ready(Next::Done(None)) };
            if let Poll::Ready(done) = flight.poll_done(cx) {
                return Poll::Ready(Next::Done(done));
            }
            let room = flight.limit.saturating_sub(flight.len());
            if let Some(refill) = refill.as_mut().filter(|_| room > 0) {
                let most = room.min(refill.left);
                match refill.reader.poll_pop_numbered(cx, refill.items, most) {
                    Poll::Ready(Some(_)) => return Poll::Ready(Next::Taken(refill.items.len())),
                    Poll::Ready(None) => return Poll::Ready(Next::InputDone),
                    Poll::Pending => {}
                }
            }
            // Waiting with all N places taken is the stage's work (it is
            // saturated: busy); with room, it waits for its input.
            if away.is_none() && room > 0 {
                away = Some(counters.step_away());
            }
            Poll::Pending
        })
        .await;
        if let Some(away) = away {
            counters.step_back(away);
        }
        match next {
            Next::Envelope(envelope) => {
                let away = counters.step_away();
                let handled = super::control::serve(server, envelope, out).await;
                counters.step_back(away);
                if let Err(crashed) = handled {
                    serve = false;
                    refill = None;
                    result = Err(crashed);
                }
            }
            Next::Fused => {
                let away = counters.step_away();
                out.serve_fused().await;
                counters.step_back(away);
            }
            Next::Done(Some(done)) => {
                out.deliver(done).await;
                out.deliver_ready().await;
                // Results flow on while the others are in flight.
                out.flush().await;
            }
            Next::Done(None) => break,
            Next::Taken(n) => {
                if let Some(refill) = refill {
                    refill.items.reverse();
                }
                return Ok(n);
            }
            Next::InputDone => refill = None,
        }
    }
    result.map(|()| 0)
}

#[cfg(test)]
mod tests {
    use std::future::ready;

    use super::*;

    fn flight() -> InFlight<u64> {
        InFlight::new(Concurrency { limit: 4, ordered: false, refill: true })
    }

    /// Polls the set until one future is done.
    fn next(flight: &mut InFlight<u64>) -> Done<u64> {
        futures::executor::block_on(poll_fn(|cx| flight.poll_done(cx))).expect("a future in flight")
    }

    #[test]
    fn an_item_is_done_with_its_last_future() {
        let mut flight = flight();
        flight.push(job(0, Tag::NONE, ready(Ok::<u64, BoxError>(1))));
        flight.push(job(0, Tag::NONE, ready(Err::<u64, BoxError>("no".into()))));
        assert_eq!(flight.close_item(false), None);
        let first = next(&mut flight);
        let failed = !matches!(first.outcome, Outcome::Value(_));
        assert_eq!(flight.complete(first.item, failed), None);
        assert_eq!(flight.held(), 1);
        let second = next(&mut flight);
        let failed_too = !matches!(second.outcome, Outcome::Value(_));
        // One of the two failed: the item failed, once.
        assert!(failed != failed_too);
        assert_eq!(flight.complete(second.item, failed_too), Some(true));
        assert_eq!(flight.held(), 0);
    }

    #[test]
    fn a_future_done_before_process_returned_counts_with_its_item() {
        let mut flight = flight();
        flight.push(job(0, Tag::NONE, ready(Err::<u64, BoxError>("no".into()))));
        let done = next(&mut flight);
        assert_eq!(flight.complete(done.item, true), None);
        // `process` returns without failing the item itself: it failed.
        assert_eq!(flight.close_item(false), Some(true));
        assert_eq!(flight.held(), 0);
        // The next item has no future: done at once, as it says.
        assert_eq!(flight.close_item(false), Some(false));
        assert_eq!(flight.close_item(true), Some(true));
    }

    #[test]
    fn a_panicking_future_is_caught() {
        let mut flight = flight();
        flight.push(job(3, Tag::NONE, async { panic!("boom") as Result<u64, BoxError> }));
        let done = next(&mut flight);
        assert_eq!(done.item, 3);
        assert!(matches!(done.outcome, Outcome::Panicked(panic) if panic.message() == "boom"));
    }
}
