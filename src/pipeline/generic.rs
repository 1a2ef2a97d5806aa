//! What every `#[pipeline]` struct implements, for code that works with any
//! pipeline (such as the [`harness`](crate::harness)).

use std::future::Future;

use futures::Stream;

use super::{AckedInput, Failures, Metrics, Output};
use crate::{FlushError, SendError};

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

    /// The first stage's input for items sent with an acknowledgement
    /// (see [`genflow::ack`](crate::ack)).
    fn acked(&self) -> AckedInput<Self::In>;

    /// The stream of the last stage's items; `Some` the first time only.
    fn output(&self) -> Option<Output<Self::Out>>;

    /// The stream of failed items; `Some` the first time only.
    fn failures(&self) -> Option<Failures>;

    /// A snapshot of every stage's metrics.
    fn metrics(&self) -> Metrics;

    /// Waits until every item accepted before the call has left the
    /// pipeline, without shutting it down: each was emitted by the last
    /// stage (into the output, or dropped there if the output is not taken),
    /// failed, or dropped. Afterwards `call_<stage>` reads state that has
    /// seen all of them. Items sent while it waits are not waited for, so
    /// it returns under a steady stream of sends too.
    ///
    /// It waits as long as the items take: behind a slow stage, or while
    /// the output is taken but not read and its queue is full
    /// (backpressure). Wrap it in a timeout to bound the wait.
    ///
    /// # Errors
    ///
    /// [`FlushError::Closed`] if the pipeline was shut down or aborted before
    /// the call (a shutdown that starts meanwhile drains the items, and the
    /// flush returns `Ok` once they are out), [`FlushError::Aborted`] if it is
    /// aborted meanwhile, [`FlushError::FromInside`] if one of its own
    /// stages calls it (it would wait for itself).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a flush only watches; dropping it before it completes
    /// changes nothing (at most a stage's replicas wake nobody once).
    fn flush(&self) -> impl Future<Output = Result<(), FlushError>> + Send;

    /// Closes the input, drains every stage in order and ends the output.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}
