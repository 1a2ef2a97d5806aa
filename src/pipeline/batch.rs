//! `#[batch(size = N, timeout = ..)]`: a stage that receives `Vec<T>`
//! batches of the items its input queue carries, cut per replica by size,
//! by time, at `flush` and at the end of the input.
//!
//! # How
//!
//! A replica gets its next input through an *intake*
//! ([`Intake`]): for a plain stage ([`Whole`]) that is the batch of items
//! it pops from its queue, as they are; for a batch stage ([`Batched`]) it
//! is an [`Open`] batch, which pops the queue's items into a `Vec` and
//! hands the replica that `Vec` as one input once it is cut. The replica
//! loop (`run.rs`) is the same for both: only the intake differs, chosen
//! by a type parameter, so a plain stage pays nothing for batching.
//!
//! An open batch never takes more than it has room for (`size` less what
//! it holds, and at most the stage's `max_demand` at a time), so a cut
//! always empties it: a replica holds at most one open batch of up to
//! `size` items besides the batch it processes. Its flush [`Mark`] stays
//! at the first item of the open batch while it fills (the queue reader
//! *holds* its mark), so a flush waits for those items; a flush that
//! waits on the stage also asks every replica to cut what it holds
//! ([`FlushPoint`]'s cut requests), so it never waits for the timeout.
//!
//! The timeout is a [`tokio::time::Sleep`] allocated on the first batch a
//! replica opens and reset for each later one.
//!
//! The ideas are Akka Streams' `groupedWithin(n, d)`, tokio-stream's
//! `chunks_timeout` and Broadway's batchers (`batch_size`,
//! `batch_timeout`).
//!
//! [`Mark`]: super::flush::Mark
//! [`FlushPoint`]: super::flush::FlushPoint

use std::{
    any::Any,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};

use super::{
    Stage,
    ack::{items::Items, tag::Tag},
    flush::ReplicaMark,
    metrics::{Counters, Delta},
    queue::{LastFirst, Queue, Reader},
    run::{Batch, Pace},
};
use crate::server::timer::FAR;

/// How a `#[batch(..)]` stage cuts its batches: at `size` items, or once
/// the oldest item of the open batch has waited `timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSpec {
    /// The most items in one batch (at least 1).
    pub size: usize,
    /// How long the oldest item of an open batch waits for more; zero:
    /// the batch is cut as soon as the queue has no more items at hand.
    pub timeout: Duration,
}

/// The input type of a `#[batch(..)]` stage: a `Vec` of the items its
/// queue carries. Implemented for `Vec<T>` only.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a `#[batch(..)]` stage takes a `Vec` of items, but this stage's `In` is `{Self}`",
    label = "`#[batch(..)]` needs `type In = Vec<T>`, where `T` is what the stage before it emits",
    note = "a batch stage receives `Vec<T>` batches of the previous stage's `T` items (or of what is sent into \
            the pipeline, for the first stage): write `type In = Vec<T>`"
)]
pub trait BatchOf: Send + 'static {
    /// The items the stage's queue carries.
    type Item: Send + 'static;
}

impl<T: Send + 'static> BatchOf for Vec<T> {
    type Item = T;
}

/// The intake of a plain stage: each item of its queue is one input.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Whole;

/// The intake of a `#[batch(..)]` stage whose queue carries `T`s: its
/// inputs are `Vec<T>`s.
///
/// `T` is named by the macro (the previous stage's `Out`), not derived
/// from the stage's `In`: so a stage whose `In` is no `Vec` is reported
/// once, by `__private::assert_batch`, and everything else still has a
/// type. The `Vec<T>` is handed over as the stage's `In` with a `TypeId`
/// comparison per batch, which that check makes always succeed.
#[doc(hidden)]
pub struct Batched<T>(PhantomData<fn(T) -> T>);

/// How the replicas of stage `S` get their inputs: from a queue of
/// `Item`s. Implemented by [`Whole`] and [`Batched`] only.
#[doc(hidden)]
pub trait Intake<S: Stage>: Send + Sync + 'static {
    /// What the stage's queue carries.
    type Item: Send + 'static;
}

/// The engine's side of an [`Intake`].
pub(crate) trait TakeFrom<S: Stage>: Intake<S> {
    /// What a replica holds besides the inputs it took: nothing for a
    /// plain stage, its open batch for a batch stage. Kept in the
    /// replica's [`Batch`], so the replica's task holds one more value
    /// only where there is one.
    type Open: Take<S::In, Self::Item>;

    /// A replica's state, for the stage paced by `pace`.
    fn open(pace: &Pace, mark: &ReplicaMark) -> Self::Open;

    /// How many of the queue's items `input` stands for.
    fn weight(input: &S::In) -> u64;

    /// Whether every input stands for one item ([`weight`](Self::weight)
    /// is always 1): then how many items a run of the item loop processed
    /// follows from how many inputs it took, and is not counted item by
    /// item.
    const UNIT: bool = false;

    /// A reader of `queue` for a replica recording its batches in `mark`.
    fn reader<'a>(queue: &'a Queue<Self::Item>, mark: &'a ReplicaMark) -> Reader<'a, Self::Item> {
        queue.marked_reader(mark.mark())
    }

    /// The reader of the stage's inputs themselves, which a replica whose
    /// futures are in flight takes more of into its batch
    /// (`#[concurrency]`); `None` for a batch stage, whose queue carries
    /// the items of its inputs.
    fn inputs<'r, 'a>(reader: &'r mut Reader<'a, Self::Item>) -> Option<&'r mut Reader<'a, S::In>>;
}

/// What a replica holds of its input besides the inputs it took, counted
/// in its metrics when it lets go of it.
pub(crate) trait Hold: Send {
    /// Items held beyond one per input taken, and in an open batch.
    fn held(&self) -> u64;

    /// An input that stood for `weight` items was taken out to be
    /// processed.
    fn processed(&mut self, weight: u64);

    /// Lets go of what it holds besides the inputs; returns how many items
    /// that was, with those inputs' items beyond one each.
    fn release(&mut self) -> u64;

    /// Lets go of what it holds besides the inputs, as
    /// [`release`](Self::release) does, giving back the acknowledgements
    /// of those items.
    fn release_tags(&mut self) -> Vec<Tag> {
        Vec::new()
    }
}

/// One replica's way to its next inputs.
pub(crate) trait Take<In, Item>: Hold + Sized {
    /// Puts the next inputs in `batch` (empty): `Ready(Some(first))` with
    /// the number of their first item, `Ready(None)` once the input ended
    /// and nothing is held, `Pending` meanwhile.
    fn poll_take(
        cx: &mut Context<'_>,
        reader: &mut Reader<'_, Item>,
        batch: &mut Batch<In, Self>,
        counters: &Counters,
    ) -> Poll<Option<u64>>;

    /// The inputs taken by `poll_take`, numbered from `first`, are about
    /// to be processed.
    fn took(batch: &mut Batch<In, Self>, first: u64, counters: &Counters);
}

impl<S: Stage> Intake<S> for Whole {
    type Item = S::In;
}

impl<S: Stage> TakeFrom<S> for Whole {
    type Open = Whole;

    #[inline]
    fn inputs<'r, 'a>(reader: &'r mut Reader<'a, S::In>) -> Option<&'r mut Reader<'a, S::In>> {
        Some(reader)
    }

    #[inline]
    fn open(_: &Pace, _: &ReplicaMark) -> Whole {
        Whole
    }

    #[inline]
    fn weight(_: &S::In) -> u64 {
        1
    }

    const UNIT: bool = true;
}

impl Hold for Whole {
    #[inline]
    fn held(&self) -> u64 {
        0
    }

    #[inline]
    fn processed(&mut self, _: u64) {}

    #[inline]
    fn release(&mut self) -> u64 {
        0
    }
}

impl<In: Send + 'static> Take<In, In> for Whole {
    #[inline]
    fn poll_take(
        cx: &mut Context<'_>,
        reader: &mut Reader<'_, In>,
        batch: &mut Batch<In>,
        _: &Counters,
    ) -> Poll<Option<u64>> {
        let max = batch.max_demand as usize;
        // Taken last to first, ready to be popped from the end.
        reader.poll_pop_numbered(cx, &mut LastFirst(&mut batch.items), max)
    }

    #[inline]
    fn took(batch: &mut Batch<In>, first: u64, counters: &Counters) {
        batch.first = first;
        counters.add(&Delta { received: batch.items.len() as u64, ..Delta::default() });
    }
}

impl<S: Stage, T: Send + 'static> Intake<S> for Batched<T> {
    type Item = T;
}

impl<S: Stage, T: Send + 'static> TakeFrom<S> for Batched<T> {
    type Open = Open<T>;

    fn inputs<'r, 'a>(_: &'r mut Reader<'a, T>) -> Option<&'r mut Reader<'a, S::In>> {
        None
    }

    fn open(pace: &Pace, mark: &ReplicaMark) -> Open<T> {
        let spec = pace.batch.unwrap_or(BatchSpec { size: 1, timeout: Duration::ZERO });
        Open {
            items: Items::new(),
            first: 0,
            size: spec.size.max(1),
            timeout: spec.timeout,
            deadline: None,
            armed: false,
            cut: 0,
            mark: mark.clone(),
        }
    }

    #[inline]
    fn weight(input: &S::In) -> u64 {
        (input as &dyn Any).downcast_ref::<Vec<T>>().map_or(1, |batch| batch.len() as u64)
    }
}

/// `items` as the input of a stage whose `In` is `Vec<T>`: the same value.
///
/// # Panics
///
/// If `In` is not `Vec<T>`, which `__private::assert_batch` rules out at
/// compile time.
fn as_input<In: 'static, T: 'static>(items: Vec<T>) -> In {
    let mut items = Some(items);
    match (&mut items as &mut dyn Any).downcast_mut::<Option<In>>().and_then(Option::take) {
        Some(input) => input,
        None => unreachable!("a `#[batch]` stage's `In` is a `Vec` of its queue's items: checked by `assert_batch`"),
    }
}

/// A replica's open batch.
pub(crate) struct Open<T> {
    /// In arrival order.
    items: Items<T>,
    /// The number of the first item.
    first: u64,
    size: usize,
    timeout: Duration,
    /// Allocated by the first batch opened with a timeout.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether `deadline` is set for the open batch.
    armed: bool,
    /// Items of the batches cut and not processed yet, beyond one per
    /// batch.
    cut: u64,
    /// Where flushes ask the replica to cut.
    mark: ReplicaMark,
}

impl<T> Open<T> {
    /// Starts the clock of a batch just opened.
    fn arm(&mut self) {
        if self.timeout.is_zero() {
            return;
        }
        // A timeout past any clock (`Duration::MAX`) is never reached.
        let at = Instant::now().checked_add(self.timeout).unwrap_or_else(|| Instant::now() + FAR);
        match &mut self.deadline {
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        self.armed = true;
    }

    /// Whether the open batch is due now: its timeout passed (or is zero),
    /// or a flush waits for it. Registers `cx` for both otherwise.
    fn due(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timeout.is_zero() || self.mark.cut_wanted(cx) {
            return true;
        }
        match &mut self.deadline {
            Some(sleep) if self.armed => sleep.as_mut().poll(cx).is_ready(),
            _ => false,
        }
    }
}

impl<T: Send> Hold for Open<T> {
    fn held(&self) -> u64 {
        self.cut + self.items.len() as u64
    }

    #[inline]
    fn processed(&mut self, weight: u64) {
        self.cut -= weight.saturating_sub(1);
    }

    fn release(&mut self) -> u64 {
        let held = self.held();
        self.armed = false;
        self.items.clear();
        self.cut = 0;
        held
    }

    fn release_tags(&mut self) -> Vec<Tag> {
        self.armed = false;
        self.cut = 0;
        self.items.take_tags()
    }
}

impl<In: Send + 'static, T: Send + 'static> Take<In, T> for Open<T> {
    fn poll_take(
        cx: &mut Context<'_>,
        reader: &mut Reader<'_, T>,
        batch: &mut Batch<In, Self>,
        counters: &Counters,
    ) -> Poll<Option<u64>> {
        let max_demand = batch.max_demand as usize;
        let open = &mut batch.open;
        let cut = loop {
            let held = open.items.len();
            if held >= open.size {
                break true;
            }
            let max = (open.size - held).min(max_demand);
            match reader.poll_pop_numbered(cx, &mut open.items, max) {
                Poll::Ready(Some(first)) => {
                    counters.add(&Delta { received: (open.items.len() - held) as u64, ..Delta::default() });
                    if held == 0 {
                        open.first = first;
                        open.arm();
                    }
                }
                Poll::Ready(None) if held == 0 => return Poll::Ready(None),
                // The input ended: the rest goes as a last batch.
                Poll::Ready(None) => break true,
                Poll::Pending if held > 0 && open.due(cx) => {
                    // Not waiting in line any more: items coming meanwhile
                    // go to another replica.
                    reader.cancel();
                    break true;
                }
                Poll::Pending => break false,
            }
        };
        if !cut {
            return Poll::Pending;
        }
        open.armed = false;
        let (items, tags) = std::mem::take(&mut open.items).into_parts();
        open.cut += items.len() as u64 - 1;
        let first = open.first;
        // The batch holds the acknowledgements of all its items.
        batch.items.push_tagged(as_input(items), Tag::group(tags));
        Poll::Ready(Some(first))
    }

    #[inline]
    fn took(batch: &mut Batch<In, Self>, first: u64, _: &Counters) {
        // Received as they were taken into the open batch.
        batch.first = first;
    }
}
