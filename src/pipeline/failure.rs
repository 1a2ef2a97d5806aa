//! Items that failed: the [`Failure`] a stage reports with
//! [`Emitter::fail`](crate::Emitter::fail) (or by panicking), and the
//! pipeline's [`Failures`] stream that delivers them.
//!
//! The stream is built like the pipeline's [`Output`]: one bounded queue
//! fed by every replica of every stage, read by one reader, closed when the
//! last replica's task has ended.

use std::{
    error::Error,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;

use super::{
    Output,
    ack::{items::Items, tag::Tag},
    dispatch::Dispatch,
    emitter::Link,
    metrics::{Counters, Delta},
    output::OutputShared,
};
use crate::server::run::Panic;

/// How many failures wait for the reader of [`Failures`] before the stages
/// that fail more items wait for room.
pub const FAILURES_BUFFER: usize = 1024;

/// One failure of a pipeline stage: an item it failed with
/// [`Emitter::fail`](crate::Emitter::fail), or whose
/// [`process`](crate::Stage::process) panicked.
///
/// Read from the pipeline's `failures()` stream. It names the stage and the
/// replica, and holds the error as given to `fail` (downcast it with
/// [`error`](Self::error)`().downcast_ref::<MyError>()`), or a [`Panicked`]
/// holding the panic's message. The failed item itself is gone (it was
/// moved into `process`): to keep it, put it (or what you need of it) in
/// your error type.
///
/// In the spirit of Broadway's failed messages, which reach
/// `handle_failed` with the reason they failed.
#[derive(Clone)]
pub struct Failure {
    stage: &'static str,
    replica: usize,
    /// Shared: the failure of an item with an acknowledgement goes both to
    /// `failures()` and into the acknowledgement's [`Outcome`](crate::ack::Outcome).
    error: Arc<Box<dyn Error + Send + Sync + 'static>>,
    panic: bool,
    in_finish: bool,
    /// How many items it fails; [`WHOLE`] until the input is known.
    items: u64,
    in_timer: bool,
}

/// A failure's item count while it fails the whole input in `process`,
/// until the input's item count is known.
const WHOLE: u64 = u64::MAX;

impl Failure {
    /// A failure given to a [`Held`](crate::ack::Held) by `stage`.
    pub(crate) fn held(stage: &'static str, replica: usize, error: Box<dyn Error + Send + Sync + 'static>) -> Self {
        Failure { stage, replica, error: Arc::new(error), panic: false, in_finish: false, items: 0, in_timer: false }
    }

    /// The failure of an item whose `partition_by` key function panicked
    /// before any replica of `stage` took it.
    pub(crate) fn key_panicked(stage: &'static str, panic: Panicked) -> Self {
        Failure {
            stage,
            replica: 0,
            error: Arc::new(Box::new(panic)),
            panic: true,
            in_finish: false,
            items: 1,
            in_timer: false,
        }
    }

    /// Whether `other` is a copy of this failure.
    pub(crate) fn is(&self, other: &Failure) -> bool {
        Arc::ptr_eq(&self.error, &other.error)
    }

    #[cfg(test)]
    pub(crate) fn for_test(error: &str) -> Self {
        Failure::held("test", 0, error.into())
    }

    /// The name of the stage that failed the item, as declared in the
    /// pipeline.
    pub fn stage(&self) -> &str {
        self.stage
    }

    /// The index of the stage's replica that failed it, from 0 (always 0
    /// for a stage without replicas, and 0 for an item whose `partition_by`
    /// key function panicked before any replica took it).
    pub fn replica(&self) -> usize {
        self.replica
    }

    /// The error: the one given to [`Emitter::fail`](crate::Emitter::fail),
    /// or a [`Panicked`] for a panic. Downcast it to your type with
    /// `error().downcast_ref::<MyError>()`.
    pub fn error(&self) -> &(dyn Error + Send + Sync + 'static) {
        &**self.error
    }

    /// Whether the stage panicked (the error is then a [`Panicked`]) rather
    /// than calling [`Emitter::fail`](crate::Emitter::fail). Also `true` for
    /// an item that reached a replica stopped for good (see [`Panicked`]).
    pub fn is_panic(&self) -> bool {
        self.panic
    }

    /// Whether it came from [`Stage::finish`](crate::Stage::finish) (a
    /// `fail` there, or a panic) rather than from `process`: such a failure
    /// is tied to no input item, so it is not counted in the stage's
    /// `failed` metric, which counts items.
    pub fn in_finish(&self) -> bool {
        self.in_finish
    }

    /// How many items this failure counts in its stage's `failed` metric,
    /// so that the `items()` of all failures add up to `failed`: 1 for an
    /// item of a plain stage; for a `#[batch(..)]` stage, the number of
    /// items of the batch for [`Emitter::fail`](crate::Emitter::fail) and
    /// for a panic, and `n` for
    /// [`Emitter::fail_items`](crate::Emitter::fail_items)`(n, ..)`. An
    /// input fails at most as many items as it holds, however many
    /// failures it gave: each failure counts the items it failed that no
    /// earlier failure of the same input did (so a second `fail` of one
    /// item counts 0, and `fail_items(3, ..)` then `fail(..)` on a batch
    /// of 10 count 3 and 7). 0 for a failure of
    /// [`Stage::finish`](crate::Stage::finish) or of
    /// [`Stage::handle_timer`](crate::Stage::handle_timer), which are tied
    /// to no item.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Whether it came from [`Stage::handle_timer`](crate::Stage::handle_timer)
    /// (a `fail` there) rather than from `process`: tied to no input item,
    /// so, as for [`in_finish`](Self::in_finish), not counted in the
    /// stage's `failed` metric.
    pub fn in_timer(&self) -> bool {
        self.in_timer
    }

    /// The error, by value (see [`error`](Self::error)).
    ///
    /// A `Failure` is `Clone` (its error is shared): while a clone of it
    /// lives (the copy in an acknowledgement's
    /// [`Outcome::Failed`](crate::ack::Outcome::Failed), say), this
    /// returns an error that shows, and has the `source` of, the shared
    /// one, but does not downcast to its type; read it through
    /// [`error`](Self::error) then.
    pub fn into_error(self) -> Box<dyn Error + Send + Sync> {
        match Arc::try_unwrap(self.error) {
            Ok(error) => error,
            Err(shared) => Box::new(SharedError(shared)),
        }
    }
}

/// The error of a [`Failure`] taken by value while a clone of it lives.
struct SharedError(Arc<Box<dyn Error + Send + Sync + 'static>>);

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}

impl Error for SharedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("stage", &self.stage)
            .field("replica", &self.replica)
            .field("error", &self.error)
            .field("panic", &self.panic)
            .field("in_finish", &self.in_finish)
            .field("items", &self.items)
            .field("in_timer", &self.in_timer)
            .finish()
    }
}

/// `stage `parse` (replica 0) failed: <error>`; `panicked` for a panic, and
/// `in finish` added for a failure of [`Stage::finish`](crate::Stage::finish),
/// `in a timer` for one of [`Stage::handle_timer`](crate::Stage::handle_timer).
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.panic { "panicked" } else { "failed" };
        let when = match (self.in_finish, self.in_timer) {
            (true, _) => " in finish",
            (false, true) => " in a timer",
            (false, false) => "",
        };
        write!(f, "stage `{}` (replica {}) {what}{when}: {}", self.stage, self.replica, self.error)
    }
}

/// The error of a [`Failure`] whose stage panicked: the panic's message.
///
/// Items that reach a replica after it stopped for good (its `new`, `init`,
/// `handle_call` or `handle_cast` panicked more often than its
/// [`restart_limit`](crate::GenServer::restart_limit) allows) fail with a
/// `Panicked` too, whose message says so.
///
/// `Display` prints the message alone. A payload that is neither a `&str`
/// nor a `String` (from `std::panic::panic_any`) gives the message
/// `(non-string panic payload)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Panicked {
    message: String,
}

impl Panicked {
    /// The panic's message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn new(panic: &Panic) -> Self {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".to_owned());
        Panicked { message }
    }

    /// The error of an item taken by a replica that stopped for good.
    pub(crate) fn stopped() -> Self {
        Panicked { message: STOPPED.to_owned() }
    }
}

/// The message of an item failed because its replica had stopped.
const STOPPED: &str = "the replica stopped for good: its server panicked more often than its restart limit allows";

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Panicked {}

/// The failures of a pipeline's stages, as a [`Stream`] of [`Failure`]s.
///
/// Returned once by the pipeline's `failures()` method. The stream ends
/// once every stage has ended (after `shutdown().await`, or after `abort()`)
/// and every failure was delivered.
///
/// # If nobody reads
///
/// While it is not taken (or after it was dropped), failures are dropped and
/// counted in [`Metrics::failures_dropped`](crate::Metrics::failures_dropped);
/// nothing blocks. Take it before sending the items whose failures you want.
///
/// Once taken, up to [`FAILURES_BUFFER`] failures wait for the reader; when
/// that buffer is full, a replica that failed an item waits (right after
/// that item, before it takes the next) until there is room, the way
/// [`Emitter::emit`](crate::Emitter::emit) waits for the next queue: no
/// failure is lost, and a reader that stops reading slows the pipeline down
/// (that time counts in the stage's `blocked` metric). So read it
/// concurrently with the output (for example in a spawned task): reading
/// the output to its end first can wait forever if more failures than the
/// buffer holds come before the end.
#[must_use = "streams do nothing unless polled"]
pub struct Failures {
    inner: Output<Failure>,
}

impl Failures {
    pub(crate) fn new(shared: Arc<OutputShared<Failure>>) -> Self {
        Failures { inner: Output::new(shared) }
    }
}

impl Stream for Failures {
    type Item = Failure;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Failure>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl fmt::Debug for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failures").field("inner", &self.inner).finish()
    }
}

/// The failures queue of a pipeline, while it is being built: every stage
/// takes a copy; the pipeline's `Plumbing` keeps the shared part.
pub(crate) struct FailureRoute {
    pub(crate) shared: Arc<OutputShared<Failure>>,
    link: Link<Failure>,
}

impl FailureRoute {
    pub(crate) fn new() -> Self {
        let shared = Arc::new(OutputShared::new(FAILURES_BUFFER));
        let link = Link::new(Dispatch::Shared(shared.queue.clone()), Some(shared.taken.clone()));
        FailureRoute { shared, link }
    }

    /// What replica `replica` of stage `stage` reports its failures with.
    pub(crate) fn failing(&self, stage: &'static str, replica: usize) -> Failing {
        Failing {
            stage,
            // Below `MAX_REPLICAS`, checked when the stage was made.
            replica: u32::try_from(replica).unwrap_or(u32::MAX),
            link: Some(self.link.clone()),
            shared: self.shared.clone(),
            pending: Items::new(),
            item_failed: false,
            in_finish: false,
            in_timer: false,
        }
    }
}

impl FailureRoute {
    /// Sends the failure of an item whose `partition_by` key function
    /// panicked on its way into stage `stage`: no replica took it, so the
    /// failure names replica 0. Waits for room while the reader is behind,
    /// adding the time to `blocked` (the sender's).
    ///
    /// Boxed: the failures queue is fed through a link like any stage's, so
    /// the future of a send would otherwise contain itself. Only a panic
    /// pays for the allocation.
    pub(crate) fn key_panicked<'a>(
        &'a self,
        stage: &'static str,
        panic: Panicked,
        tag: Tag,
        blocked: &'a mut Duration,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let mut failing = self.failing(stage, 0);
            failing.fail(Box::new(panic), true, Some(1));
            failing.fail_tag(tag);
            // The sender's blocked time is published by the sender.
            failing.send(blocked, &Counters::default()).await;
        })
    }
}

impl Clone for FailureRoute {
    fn clone(&self) -> Self {
        FailureRoute { shared: self.shared.clone(), link: self.link.clone() }
    }
}

impl fmt::Debug for FailureRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureRoute").finish_non_exhaustive()
    }
}

/// One replica's side of the failures queue, held by its emitter: the
/// failures of the item in progress, sent once `process` returns.
pub(crate) struct Failing {
    stage: &'static str,
    /// The replica's index (below `MAX_REPLICAS`: a `u32`, so that the
    /// emitter holding this stays small).
    replica: u32,
    /// `None` for an emitter outside any pipeline (failures are dropped).
    link: Option<Link<Failure>>,
    shared: Arc<OutputShared<Failure>>,
    pending: Items<Failure>,
    /// Whether the item in `process` failed.
    item_failed: bool,
    /// Whether `finish` runs.
    in_finish: bool,
    /// Whether `handle_timer` runs.
    in_timer: bool,
}

impl Failing {
    /// Failures of an emitter outside any pipeline: dropped.
    pub(crate) fn detached() -> Self {
        Failing {
            stage: "",
            replica: 0,
            link: None,
            shared: Arc::new(OutputShared::new(1)),
            pending: Items::new(),
            item_failed: false,
            in_finish: false,
            in_timer: false,
        }
    }

    /// Records a failure of the input in progress (or of `finish`): of
    /// `items` of its items, or of all of them (`None`).
    pub(crate) fn fail(&mut self, error: Box<dyn Error + Send + Sync + 'static>, panic: bool, items: Option<u64>) {
        // A failed item is expected work: `DEBUG`, so that a few percent of
        // bad items do not flood a default log; a panic is a bug: `WARN`.
        if panic {
            tracing::warn!(stage = self.stage, replica = self.replica, error = %error, "item panicked");
        } else {
            tracing::debug!(stage = self.stage, replica = self.replica, error = %error, "item failed");
        }
        self.item_failed = true;
        let items = if self.in_finish || self.in_timer { 0 } else { items.unwrap_or(WHOLE) };
        self.pending.push(Failure {
            stage: self.stage,
            replica: self.replica as usize,
            error: Arc::new(error),
            panic,
            in_finish: self.in_finish,
            items,
            in_timer: self.in_timer,
        });
    }

    /// How many items of the input that just failed (and holds `weight`
    /// items) count as failed: all of them if one of its failures failed
    /// the whole input, else the sum of the failures' counts, at most
    /// `weight`. Each failure gets the count of the items it failed that no
    /// earlier failure of the input did, so that they add up to the
    /// input's count. Called only after
    /// [`take_item_failed`](Self::take_item_failed) said it failed, while
    /// `pending` holds only that input's failures.
    pub(crate) fn settle(&mut self, weight: u64) -> u64 {
        // In the order they were given, each failure counts the items it
        // failed that no earlier one did, so that the counts of one
        // input's failures add up to what it counts in `failed`.
        let mut failed = 0u64;
        for failure in self.pending.iter_mut().filter(|f| !f.in_finish && !f.in_timer) {
            let left = weight - failed;
            failure.items = if failure.items == WHOLE { left } else { failure.items.min(left) };
            failed += failure.items;
        }
        failed
    }

    /// Records a failure of an item other than the one in `process`: one
    /// whose future, handed over by `Emitter::try_emit_async`, completed
    /// later.
    pub(crate) fn fail_in_flight(&mut self, error: Box<dyn Error + Send + Sync + 'static>, panic: bool) {
        let item_failed = self.item_failed;
        // One item (a `#[batch]` stage has no futures in flight).
        self.fail(error, panic, Some(1));
        self.item_failed = item_failed;
    }

    /// The stage's name.
    pub(crate) fn stage(&self) -> &'static str {
        self.stage
    }

    /// The replica's index.
    pub(crate) fn replica(&self) -> u32 {
        self.replica
    }

    /// Lets `tag` go, reporting the failures pending (those of the input
    /// in progress, not of `finish` or a timer) to its acknowledgements.
    pub(crate) fn fail_tag(&self, tag: Tag) {
        if tag.is_some() {
            tag.fail(self.pending.iter().filter(|f| !f.in_finish && !f.in_timer));
        }
    }

    /// Settles the failures pending, those of the input in `process`, as
    /// failing one item (`#[concurrency]` stages take no batches), and
    /// records them against its acknowledgements `tag`, before they are
    /// sent early: with the failure of another input's future.
    pub(crate) fn settle_early(&mut self, tag: &Tag) {
        if self.pending.is_empty() {
            return;
        }
        self.settle(1);
        for failure in self.pending.iter().filter(|f| !f.in_finish && !f.in_timer) {
            tag.record(failure);
        }
    }

    /// Lets `tag` go, reporting the last failure recorded.
    pub(crate) fn fail_tag_last(&self, tag: Tag) {
        if tag.is_some() {
            tag.fail(self.pending.last());
        }
    }

    /// Whether the item that just finished `process` failed.
    #[inline]
    pub(crate) fn item_failed(&self) -> bool {
        self.item_failed
    }

    /// Whether the item that just finished `process` failed; resets it.
    #[inline]
    pub(crate) fn take_item_failed(&mut self) -> bool {
        std::mem::take(&mut self.item_failed)
    }

    /// From now on, failures come from `finish`.
    pub(crate) fn begin_finish(&mut self) {
        self.in_finish = true;
    }

    /// Whether failures come from `handle_timer` (until set back).
    pub(crate) fn set_in_timer(&mut self, in_timer: bool) {
        self.in_timer = in_timer;
    }

    /// Sends the pending failures, waiting for room while the reader is
    /// behind; adds the time waited to `blocked` and publishes it to
    /// `counters`. Failures nobody can take are counted as dropped.
    ///
    /// Cancel safe: a failure leaves `pending` only once it is placed; what
    /// is still there when the emitter is dropped counts as dropped.
    pub(crate) async fn send(&mut self, blocked: &mut Duration, counters: &Counters) {
        if self.pending.is_empty() {
            return;
        }
        let mut dropped = 0;
        match &self.link {
            Some(link) => {
                // (The failures stream is not partitioned: no key fails.)
                let mut waited = super::emitter::Blocked::default();
                link.send(&mut self.pending, &mut waited, &mut dropped).await;
                *blocked += waited.all;
                counters.add(&Delta { blocked: waited.all, ..Delta::default() });
            }
            None => {
                dropped = self.pending.len() as u64;
                self.pending.clear();
            }
        }
        self.shared.dropped.fetch_add(dropped, Ordering::Relaxed);
    }
}

/// The replica was aborted while holding failures: they count as dropped.
impl Drop for Failing {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.shared.dropped.fetch_add(self.pending.len() as u64, Ordering::Relaxed);
        }
    }
}
