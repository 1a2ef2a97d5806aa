//! Pipelines: [`Stage`]s wired in order by the [`pipeline`](macro@crate::pipeline)
//! macro, each casting its results to the next through a bounded queue.
//!
//! # Backpressure
//!
//! Every stage has one bounded input queue, sized by its
//! [`channel_queue_size`](crate::GenServer::channel_queue_size) or the
//! [`Builder`](crate::Builder)'s `queue_size` (one per replica with
//! `partition_by`). [`Emitter::emit`] waits while the next queue
//! is full, so a slow stage slows the ones before it, up to whoever feeds the
//! pipeline: memory stays bounded whatever the input rate. Items move in
//! batches between queues: a replica takes up to its stage's `max_demand`
//! items at a time ([`BATCH`], 32, unless `#[max_demand(N)]` or the
//! builder's `max_demand` says otherwise; fewer when there is less to share
//! with the other replicas), and an emitter sends up to [`BATCH`] at a time.
//! Besides the queues, each replica holds at most one batch it is working
//! through (`max_demand` items) and one batch it is emitting ([`BATCH`]).
//! A `#[concurrency(N)]` stage (N above 1) takes up to N items at a time,
//! whatever its `max_demand`, and the items whose futures are in flight
//! are part of that batch: a replica holds at most N items, queued in its
//! batch or in flight (see [`Emitter::emit_async`]).
//! That holds for `#[replicas(N, ordered)]` stages too, whatever their
//! fan-out: outputs of a batch whose turn has not come wait in `emit` once a
//! batch's worth is held, and what waits to be put back in order is bounded
//! by a window of two batches of inputs per replica.
//!
//! A queue size is a limit, not an allocation: any `usize` works, memory
//! grows only with what is queued, and sizes above tokio's
//! `Semaphore::MAX_PERMITS` are clamped to it (see
//! [`channel_queue_size`](crate::GenServer::channel_queue_size)).
//!
//! # Shutdown
//!
//! `shutdown().await` closes the first stage's input. Each stage handles what
//! is queued, serves its remaining calls and casts, runs `terminate`, and
//! then closes the next stage's input; the output stream ends after the last
//! stage. Nothing accepted is dropped. Dropping the last handle held outside
//! the pipeline does the same in the background, on the pipeline's runtime:
//! if that runtime ends first, the rest is abandoned, with a `tracing`
//! warning; `shutdown().await` is how to be sure.
//!
//! `abort()` stops every replica at its next `.await` and clears every
//! queue instead. Every item is still accounted for in the metrics (as
//! `aborted` by the stage that held it, or `dropped` by the stage that
//! emitted it) once `shutdown().await`, called after `abort()`, returns:
//! see [`StageMetrics`].
//!
//! # Waiting for what was sent
//!
//! `flush().await` returns once every item accepted before the call has
//! left the pipeline (emitted by the last stage, failed or dropped), without
//! shutting anything down: see [`Pipeline::flush`].
//!
//! # Fusion
//!
//! A `#[fused]` stage runs in the task of the stage before it: the
//! previous stage's [`Emitter`] hands each batch it would push into a queue
//! (up to [`HANDOVER`] items, which is also the previous stage's default
//! `max_demand`) to the fused stage, which processes it at once, one boxed
//! future per batch. Everything else of a stage stays the fused stage's
//! own: its calls and casts (served by the group's task between batches,
//! while it waits for input, between the fused stage's items and between
//! the items of the stages before it in the group), its state, restart limit and failures, its metrics (`received`
//! counts the items handed over; the previous stage's `busy` leaves out the
//! time spent in the fused stage), and an input queue fed only by
//! `sink_<stage>()`, which the stage's `queue_size` bounds and its `queued`
//! metric counts. `flush` needs nothing more: the previous stage's batch
//! ends once the items handed over have left the group. At shutdown, the
//! fused stage drains after the stage before it has run `finish` and sent
//! its outputs through: its own queue is closed and emptied, then it runs
//! `finish`, serves its last calls and casts and `terminate`s.
//!
//! A replica that runs `#[fused]` stages after its own takes batches of
//! up to 512 items. When its queue refills quickly next to the time its
//! task takes to go through them (a run of items with a batch of 128 or
//! more lasted under 50 µs and at least twice its wait for them, a wait
//! that ended on the worker thread it began on), it spends what is left of
//! its task's [Tokio budget](tokio::task::coop) when it goes to wait, as
//! that many receives from a Tokio channel would: on a multi-thread
//! runtime, the task it woke (whoever feeds its queue) then runs next on
//! the same worker, instead of an idle worker being woken to take it,
//! which costs more than the short run it would share. A feeder that works
//! about as long per item as the group, or other tasks on the worker,
//! lengthen the wait and end it: the tasks then spread over the workers as
//! usual. Meanwhile the idle worker sleeps: a timer may fire up to a
//! millisecond later (Tokio's timer resolution) than it would with that
//! worker awake, and a task the pipeline wakes (a caller's reply) waits
//! behind the feeder. Tokio's `budget_forced_yield_count` metric counts
//! it; nothing is spent on a `current_thread` runtime, nor by a stage
//! without fused stages after it.
//!
//! # Concurrent I/O
//!
//! A `#[concurrency(N)]` stage keeps up to N futures per replica in flight:
//! `process` does the part that touches its state, one item at a time, and
//! hands the slow part to [`Emitter::emit_async`] or
//! [`Emitter::try_emit_async`]. Outputs leave as their futures complete
//! (in hand-over order with `#[concurrency(N, ordered)]`, and always in an
//! `ordered` stage). A replica takes more items as its futures complete;
//! its batch ends once none is in flight (an `ordered` stage's, once the
//! batch's own are done), so `flush`, shutdown, `finish`, restarts and
//! `ordered` work as for any stage. A `#[concurrency]` stage can be `#[fused]`, and
//! can have a fused stage after it: its futures are then polled by the
//! group's task. The builder's `concurrency("stage", n)` sets N at start.
//!
//! # Failures
//!
//! A stage fails the item it processes with [`Emitter::fail`], or by
//! panicking inside [`Stage::process`]: that item only fails (counted in
//! `failed`); the stage keeps its state and goes on. Each failure goes to
//! the pipeline's `failures()` stream as a [`Failure`] (see [`Failures`]
//! for what happens when nobody reads it). See [`Stage`].

pub mod ack;
pub(crate) mod batch;
mod concurrency;
mod control;
mod dispatch;
mod drain;
mod emitter;
mod failure;
pub(crate) mod flush;
#[cfg(test)]
mod footprint;
mod fused;
mod generic;
mod input;
mod item_loop;
#[cfg(all(test, genflow_loom))]
mod loom_models;
mod metrics;
mod output;
mod queue;
mod rate;
mod reorder;
mod run;
pub(crate) mod stage;
mod turn;
pub(crate) mod wiring;

pub use emitter::Emitter;
pub use failure::{FAILURES_BUFFER, Failure, Failures, Panicked};
pub use generic::Pipeline;
pub use input::{AckedInput, AckedSink, InputSink};
pub use metrics::{Limit, Metrics, ReplicaMetrics, StageMetrics};
pub use output::{AckedOutput, Output};
pub use stage::Stage;

pub(crate) mod key {
    pub use super::dispatch::hash_key;
}
pub(crate) use input::Input;

/// How many items move together between queues: the most an [`Emitter`]
/// holds before it waits for room in the next queue, and the default
/// `max_demand` of a stage, the most one replica takes from its queue at
/// once (see [`Builder::max_demand`](crate::Builder::max_demand)).
#[cfg(not(genflow_loom))]
pub const BATCH: usize = 32;

/// Under the model checks, batches are small so that a few items fill one.
#[cfg(genflow_loom)]
pub const BATCH: usize = 2;

/// How many items move together into a `#[fused]` stage: the most an
/// [`Emitter`] holds for a fused next stage before handing them over, and
/// the default `max_demand` of a stage that a `#[fused]` stage follows
/// (16 × [`BATCH`], 512). A hand-over costs about the same whatever its
/// size (the fused stage's clock reads, counters and batch bookkeeping),
/// so bigger ones cost less per item; calls, casts and items of the fused
/// stages' own queues are still served between the first stage's items.
/// What a bigger hand-over costs instead: a fused stage sees the first
/// item of a batch only once the stage before has processed the batch (up
/// to this many items), and the group's emitter holds up to this many
/// items. As a default `max_demand`, the idea is GenStage's: how many
/// items a consumer asks for at a time (GenStage's default is 1000), here
/// sized for a task that runs several stages.
pub const HANDOVER: usize = 16 * BATCH;
