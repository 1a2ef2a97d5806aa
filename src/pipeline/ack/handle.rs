//! The acknowledgement a caller sends an input with: [`Ack`].

use std::fmt;

use super::{Outcome, tag::Tag};

/// The acknowledgement of one input: called once with its [`Outcome`]
/// when every item made from the input has left the pipeline.
///
/// Send an input with one through the pipeline's `acked()` input
/// ([`AckedInput`](crate::AckedInput): `send`, `feed` of a stream of
/// `(item, Ack)` pairs, or a sink). Every item a stage emits while it
/// processes the input holds the input's acknowledgement; an item emitted
/// for several inputs (a `#[batch]` stage's) holds all of theirs; the
/// acknowledgement fires when the last of them is done (see
/// [`Outcome`]). Items a stage emits in `finish` or from a timer hold
/// none, unless the stage kept them with
/// [`Emitter::hold`](crate::Emitter::hold).
///
/// Make one from a callback with [`Ack::new`], or from a key with an
/// [`Acker`](super::Acker), whose [`Acknowledgements`](super::Acknowledgements)
/// stream gives each key back with its outcome, or, for a source that
/// acknowledges every input, from a key with an [`Acks`](super::Acks),
/// which makes them 32 to an allocation, all telling one
/// [`Acknowledger`](super::Acknowledger): the cheapest. An `Ack` dropped
/// before it is sent fires at once, [`Outcome::Dropped`].
///
/// The callback runs on the task (or the thread) where the last item made
/// from the input was done: a stage's replica, the reader of the output,
/// or whoever dropped what held it. Keep it short and never block in it
/// (send the outcome on, as [`Acker`](super::Acker) does); a panic in it
/// is caught and logged as a `tracing` warning (the panic hook still
/// prints it, as for any panic).
///
/// [`Held::into_ack`](super::Held::into_ack) turns acknowledgements a
/// stage or the reader of an output holds into an `Ack`, to send what was
/// made of them through a second pipeline.
///
/// The idea comes from Broadway's acknowledgers and Vector's end-to-end
/// acknowledgements (finalizers that travel with events).
pub struct Ack(pub(crate) Tag);

impl Ack {
    /// An acknowledgement that calls `on_done` once with the input's
    /// outcome.
    ///
    /// One allocation, which holds the callback. An `Ack` per input made
    /// this way costs more than the input's trip through cheap stages
    /// (the allocation is freed on another thread, and a callback holding
    /// an `Arc` moves its count between cores): [`Acks`](super::Acks)
    /// makes them in bulk.
    pub fn new(on_done: impl FnOnce(Outcome) + Send + 'static) -> Ack {
        Ack(Tag::firing(on_done))
    }

    /// Another hold on the same acknowledgement, to send another input
    /// with: the callback fires once, when the inputs sent with every
    /// share (and this `Ack`) are done, with the worst outcome of all of
    /// them and every failure, each listed once.
    ///
    /// For a source that acknowledges in bulk, as a Kafka consumer commits
    /// one offset for a batch of records: one `Ack` per batch of inputs
    /// instead of one per input, so the batch costs one allocation, and
    /// each share only a count: send a share with each input of the batch
    /// but the last, and the `Ack` itself with the last. A share (or the
    /// `Ack`) dropped unsent reports dropped, as an `Ack` does.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use genflow::ack::{Ack, Outcome};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// let batch = Ack::new(move |outcome: Outcome| log.lock().unwrap().push(outcome.kind()));
    /// let shares: Vec<Ack> = (0..3).map(|_| batch.share()).collect();
    /// drop(batch); // not sent: its own hold goes, reporting dropped
    /// assert!(seen.lock().unwrap().is_empty()); // the shares still hold it
    /// drop(shares);
    /// assert_eq!(*seen.lock().unwrap(), ["dropped"]);
    /// ```
    ///
    /// The idea comes from Vector's batch notifiers (one finalizer shared
    /// by the events of a batch).
    pub fn share(&self) -> Ack {
        Ack(self.0.share())
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ack").finish_non_exhaustive()
    }
}
