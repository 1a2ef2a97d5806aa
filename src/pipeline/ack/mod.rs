//! End-to-end acknowledgement: learn when an input, and every item made
//! from it, is done.
//!
//! A source that can deliver again (a message broker, a queue, a file
//! offset) must not let go of an input before the pipeline is done with
//! it. Send each input with an [`Ack`] through the pipeline's `acked()`
//! input ([`AckedInput`](crate::AckedInput)); the acknowledgement fires once, with an
//! [`Outcome`], when every item made from the input has left the
//! pipeline:
//!
//! - **delivered**: processed by the last stage (an input it emits nothing
//!   for is done there), or taken from the output; a last stage that
//!   writes somewhere returns from `process` once the write is confirmed,
//!   so delivered means written. A reader that finishes the work itself
//!   takes the output as an [`AckedOutput`](crate::AckedOutput) and releases each item's
//!   [`Held`] when it is done;
//! - **failed**, with every [`Failure`](crate::Failure) of any item made
//!   from it;
//! - **dropped**: lost without failing (an untaken output, an abort).
//!
//! With mixed outcomes, failed beats dropped beats delivered.
//!
//! Every item a stage emits while it processes an input holds the input's
//! acknowledgement, through replicas, `ordered` and `partition_by` stages,
//! `#[concurrency]` futures, fused stages and restarts; a `#[batch]`
//! stage's batch holds the acknowledgements of all its items, and so does
//! what it emits. A stage that keeps inputs in its state takes their
//! acknowledgements with [`Emitter::hold`](crate::Emitter::hold) and
//! gives them on with what it emits later
//! ([`Emitter::emit_with`](crate::Emitter::emit_with)) or releases them.
//!
//! An [`Ack`] is made from a callback ([`Ack::new`]), from a key by the
//! [`Acker`] of a [`channel`] of outcomes, or in bulk by an [`Acks`],
//! whose `Ack`s tell one [`Acknowledger`] their keys and outcomes: one
//! allocation per 32 inputs, the cheapest way to acknowledge every input.
//!
//! Items sent without an acknowledgement (`send`, `feed`, `sink`) carry
//! none, and move through the pipeline as plain items: a batch or queue
//! holds items beside their tags only while some of them have one.
//!
//! The idea comes from Broadway's acknowledgers (every message acked
//! once, successful or failed, after its last step), Vector's end-to-end
//! acknowledgements (finalizers that travel with events and report
//! delivered, errored or rejected), and Kafka consumers, which commit an
//! offset only after processing.

mod bulk;
mod channel;
mod handle;
mod held;
pub(crate) mod items;
mod outcome;
mod slots;
pub(crate) mod tag;

pub use bulk::{Acknowledger, Acks};
pub use channel::{Acker, Acknowledgements, channel};
pub use handle::Ack;
pub use held::Held;
pub use outcome::Outcome;
