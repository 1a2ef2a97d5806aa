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
/// # Panics in `process`
///
/// A panic inside `process` fails that one item: it is counted in the stage's
/// `failed` metric, the stage **keeps its state** and goes on with the next
/// item, and the pipeline goes on. Panics in `process` do not count toward
/// the [`restart_limit`](GenServer::restart_limit), which is for panics in
/// `handle_call` and `handle_cast` (those rebuild the state, as for any
/// server). If a panic can leave your state half-updated, keep the update
/// after the last point that can panic.
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
    fn process(&mut self, item: Self::In, out: &mut Emitter<Self::Out>) -> impl Future<Output = ()> + Send;
}
