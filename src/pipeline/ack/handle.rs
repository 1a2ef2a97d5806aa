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
/// stream gives each key back with its outcome. An `Ack` dropped before
/// it is sent fires at once, [`Outcome::Dropped`].
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
    /// One allocation for the acknowledgement and one for the callback.
    pub fn new(on_done: impl FnOnce(Outcome) + Send + 'static) -> Ack {
        Ack(Tag::firing(on_done))
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ack").finish_non_exhaustive()
    }
}
