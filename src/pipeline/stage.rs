use std::future::Future;

use super::Emitter;
use crate::GenServer;

/// A [`GenServer`] that also processes a stream of items: one stage of a
/// [`pipeline`](macro@crate::pipeline).
///
/// The pipeline feeds each stage the items its predecessor emitted, in order,
/// between the calls and casts it serves. [`process`](Stage::process) may emit
/// 0, 1 or many items per input through the [`Emitter`]; `emit` waits while
/// the next stage's queue is full, which is how backpressure travels from the
/// tail back to whoever feeds the head.
///
/// # Failing an item
///
/// `process` returns nothing; to fail the item it was given, it calls
/// [`Emitter::fail`] with an error (and usually returns). The item counts in
/// the stage's `failed` metric and a [`Failure`](crate::Failure) naming the
/// stage, the replica and the error goes to the pipeline's `failures()`
/// stream; nothing is printed. Put the failed record in your error type to
/// get it back from there.
///
/// # Panics in `process`
///
/// A panic inside `process` fails that one item the same way: it is counted
/// in the stage's `failed` metric, becomes a `Failure` whose
/// [`is_panic`](crate::Failure::is_panic) is `true` and whose error is a
/// [`Panicked`](crate::pipeline::Panicked) holding the panic's message, the
/// stage **keeps its state** and goes on with the next item, and the
/// pipeline goes on. Panics in `process` do not count toward the
/// [`restart_limit`](GenServer::restart_limit), which is for panics in
/// `handle_call` and `handle_cast` (those rebuild the state, as for any
/// server). If a panic can leave your state half-updated, keep the update
/// after the last point that can panic.
///
/// genflow logs each caught panic as a `tracing` `ERROR` event. Rust's panic
/// hook runs first, wherever the panic is caught: the default hook prints
/// `thread '…' panicked at <file>:<line>:<col>:` and the message to stderr
/// (with a backtrace when `RUST_BACKTRACE` is set), once per panic. To
/// quiet it, install your own hook with [`std::panic::set_hook`] (for
/// example one that records the panic with `tracing`, or does nothing);
/// the hook is process-wide. [`Emitter::fail`] never involves the hook:
/// prefer it for items you expect to be bad.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a pipeline stage",
    label = "every `#[pipeline]` entry must implement `genflow::Stage`",
    note = "implement `Stage` for it: `type In`, `type Out` and `async fn process(&mut self, item, out)`"
)]
pub trait Stage: GenServer {
    /// The items this stage takes: the previous stage's `Out`, or what is
    /// sent into the pipeline for the first stage.
    type In: Send + 'static;
    /// The items this stage emits: the next stage's `In`, or the pipeline's
    /// output for the last stage.
    type Out: Send + 'static;

    /// Processes one item, emitting any number of items downstream.
    ///
    /// For work that is mostly waiting, hand the slow part to
    /// [`Emitter::emit_async`]: in a `#[concurrency(N)]` stage, up to N
    /// such futures per replica run while `process` goes on with the next
    /// items.
    ///
    /// With [acknowledgements](crate::ack), the input counts as done when
    /// `process` returns (what it emitted holds the input's
    /// acknowledgement on). A stage that keeps the input, or what it made
    /// of it, in its state must keep its acknowledgement too, with
    /// [`Emitter::hold`], or the input is acknowledged before its effect
    /// left the stage, and lost if the pipeline is aborted then.
    fn process(&mut self, item: Self::In, out: &mut Emitter<Self::Out>) -> impl Future<Output = ()> + Send;

    /// Called once when the stage's input has ended (the pipeline is shutting
    /// down) and every item was processed, before the last queued calls and
    /// casts are served and [`terminate`](GenServer::terminate) runs: the
    /// place to emit what the stage still holds, such as a partial batch or
    /// a final aggregate. Does nothing by default.
    ///
    /// With replicas, each replica's `finish` runs when it is done. With
    /// `#[replicas(N, ordered)]`, what `finish` emits leaves after the
    /// outputs of every input. A panic in `finish` is logged and becomes a
    /// [`Failure`](crate::Failure) (as does a call to [`Emitter::fail`]
    /// here), marked [`in_finish`](crate::Failure::in_finish) since it is
    /// tied to no item; what `finish` emitted before is kept.
    ///
    /// What `finish` emits holds no acknowledgement, unless the stage kept
    /// its inputs' with [`Emitter::hold`] and emits with
    /// [`Emitter::emit_with`]: the example below acknowledges each item when
    /// `process` returns, as a stage used without acknowledgements may (see
    /// [`genflow::ack`](crate::ack) for the version that holds them).
    ///
    /// ```
    /// use genflow::{Emitter, GenServer, Stage};
    ///
    /// /// Groups items in batches of 100 (the last one may be shorter).
    /// struct Batcher {
    ///     batch: Vec<u64>,
    /// }
    ///
    /// impl Stage for Batcher {
    ///     type In = u64;
    ///     type Out = Vec<u64>;
    ///
    ///     async fn process(&mut self, item: u64, out: &mut Emitter<Vec<u64>>) {
    ///         self.batch.push(item);
    ///         if self.batch.len() == 100 {
    ///             out.emit(std::mem::take(&mut self.batch)).await;
    ///         }
    ///     }
    ///
    ///     async fn finish(&mut self, out: &mut Emitter<Vec<u64>>) {
    ///         if !self.batch.is_empty() {
    ///             out.emit(std::mem::take(&mut self.batch)).await;
    ///         }
    ///     }
    /// }
    /// # impl GenServer for Batcher {
    /// #     type Message = ();
    /// #     type Response = ();
    /// #     type Registry = Batches;
    /// #     fn new(_: Batches) -> Self {
    /// #         Batcher { batch: Vec::new() }
    /// #     }
    /// #     async fn handle_call(&mut self, _: ()) {}
    /// #     async fn handle_cast(&mut self, _: ()) {}
    /// # }
    ///
    /// #[genflow::pipeline{ batcher: Batcher }]
    /// struct Batches;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let batches = Batches::start().await;
    /// let output = tokio::spawn(futures::StreamExt::collect::<Vec<_>>(batches.output().unwrap()));
    /// batches.feed(futures::stream::iter(0..250)).await?;
    /// batches.shutdown().await;
    /// let sizes: Vec<usize> = output.await?.iter().map(Vec::len).collect();
    /// assert_eq!(sizes, [100, 100, 50]);
    /// # Ok(())
    /// # }
    /// ```
    fn finish(&mut self, out: &mut Emitter<Self::Out>) -> impl Future<Output = ()> + Send {
        let _ = out;
        async {}
    }

    /// Handles a message of one of this stage's own timers (armed with
    /// [`send_after`](GenServer::send_after) or
    /// [`send_interval`](GenServer::send_interval)), with the replica's
    /// emitter: the place for time-based work such as writing out what the
    /// stage holds every second, without waiting for the next item. By
    /// default it calls [`handle_cast`](GenServer::handle_cast).
    ///
    /// It runs in the replica that armed the timer, between batches (or
    /// between two items of a batch), like a cast. What it emits goes
    /// downstream as soon as it returns, not with the next batch; a call to
    /// [`Emitter::fail`] here gives a [`Failure`](crate::Failure) tied to no
    /// item ([`in_timer`](crate::Failure::in_timer)), not counted in the
    /// stage's `failed` metric. A panic is a handler's panic, as in
    /// `handle_cast`: logged, and the state is rebuilt within the
    /// [`restart_limit`](GenServer::restart_limit); what was emitted before
    /// it still goes on.
    ///
    /// Exceptions: in a `#[replicas(N, ordered)]` stage, whose outputs
    /// follow the order of its inputs, and once the stage's input has ended
    /// (its timers are cancelled just before `finish`, and later ones may
    /// not emit after it), a timer's message goes to `handle_cast` instead.
    ///
    /// As in [`finish`](Self::finish), what a timer emits holds the
    /// acknowledgements the stage kept with [`Emitter::hold`] only if it
    /// emits with [`Emitter::emit_with`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use genflow::{Emitter, GenServer, Stage};
    ///
    /// /// Writes out what it holds every 100 ms.
    /// struct Flusher {
    ///     held: Vec<u64>,
    /// }
    ///
    /// impl Stage for Flusher {
    ///     type In = u64;
    ///     type Out = Vec<u64>;
    ///
    ///     async fn process(&mut self, item: u64, _: &mut Emitter<Vec<u64>>) {
    ///         self.held.push(item);
    ///     }
    ///
    ///     async fn handle_timer(&mut self, _tick: (), out: &mut Emitter<Vec<u64>>) {
    ///         if !self.held.is_empty() {
    ///             out.emit(std::mem::take(&mut self.held)).await;
    ///         }
    ///     }
    /// }
    ///
    /// impl GenServer for Flusher {
    ///     type Message = ();
    ///     type Response = ();
    ///     type Registry = Flow;
    ///     fn new(_: Flow) -> Self {
    ///         Flusher { held: Vec::new() }
    ///     }
    ///     async fn init(&mut self) {
    ///         self.send_interval(Duration::from_millis(100), ()).expect("in the stage's task");
    ///     }
    ///     async fn handle_call(&mut self, _: ()) {}
    /// }
    ///
    /// #[genflow::pipeline{ flusher: Flusher }]
    /// struct Flow;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let flow = Flow::start().await;
    /// let mut output = flow.output().expect("taken once");
    /// flow.feed(futures::stream::iter([1, 2, 3])).await?;
    /// // No more input: the timer writes the three out.
    /// assert_eq!(futures::StreamExt::next(&mut output).await, Some(vec![1, 2, 3]));
    /// # Ok(())
    /// # }
    /// ```
    fn handle_timer(
        &mut self,
        message: Self::Message,
        out: &mut Emitter<Self::Out>,
    ) -> impl Future<Output = ()> + Send {
        let _ = out;
        self.handle_cast(message)
    }
}

/// Fails the item being processed with `error`: what a
/// [`stage`](macro@crate::stage) function's `Err` becomes. The same as
/// [`Emitter::fail`].
#[doc(hidden)]
pub fn fail_item<T: Send + 'static>(out: &mut Emitter<T>, error: impl Into<Box<dyn std::error::Error + Send + Sync>>) {
    out.fail(error);
}
