//! What every `#[pipeline]` struct implements, for code that works with any
//! pipeline (such as the [`harness`](crate::harness)).

use std::future::Future;

use futures::Stream;

use super::{Failures, Metrics, Output};
use crate::SendError;

/// A running pipeline, whatever its stages: the part of the generated API
/// that does not depend on stage names.
///
/// Implemented by every struct declared with
/// [`#[pipeline]`](macro@crate::pipeline); each method forwards to the
/// generated method of the same name (see there).
pub trait Pipeline: Clone + Send + Sync + 'static {
    /// What the first stage takes.
    type In: Send + 'static;
    /// What the last stage emits.
    type Out: Send + 'static;

    /// Sends one item into the first stage, waiting while its queue is full.
    fn send(&self, item: Self::In) -> impl Future<Output = Result<(), SendError<Self::In>>> + Send;

    /// Sends every item of `items` into the first stage, backpressured;
    /// returns how many went in.
    fn feed<S>(&self, items: S) -> impl Future<Output = Result<usize, SendError<Self::In>>> + Send
    where
        S: Stream<Item = Self::In> + Send;

    /// The stream of the last stage's items; `Some` the first time only.
    fn output(&self) -> Option<Output<Self::Out>>;

    /// The stream of failed items; `Some` the first time only.
    fn failures(&self) -> Option<Failures>;

    /// A snapshot of every stage's metrics.
    fn metrics(&self) -> Metrics;

    /// Closes the input, drains every stage in order and ends the output.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}
