//! Acknowledgements kept past `process`: [`Held`].

use std::{error::Error, fmt};

use super::tag::Tag;
use crate::pipeline::Failure;

/// Acknowledgements kept past the item that carried them: by a stage that
/// absorbs items into its state (an aggregate, a batch it has not written
/// yet), or by the reader of the pipeline's output.
///
/// A stage takes one with [`Emitter::hold`](crate::Emitter::hold) while it
/// processes an input: that input is then not acknowledged before the
/// `Held` is done with. Gather the inputs' holds into one with
/// [`absorb`](Self::absorb), and, once their effect left the stage, give
/// them to what carries it on with
/// [`Emitter::emit_with`](crate::Emitter::emit_with), or end them:
/// [`release`](Self::release) (delivered, as far as this `Held` goes) or
/// [`fail`](Self::fail). So at-least-once holds across stateful stages: an
/// input is acknowledged only once what was made of it is.
///
/// The reader of an [`AckedOutput`](crate::AckedOutput) gets one with
/// each item and does the same when it finished the item's work.
///
/// Dropped without either (its stage's state lost in an abort, or
/// forgotten), it reports its inputs [`Dropped`](super::Outcome::Dropped).
///
/// An empty `Held` (from an input without acknowledgement, or made by
/// `Held::default()`) costs nothing and does nothing.
#[derive(Default)]
pub struct Held {
    tags: Vec<Tag>,
    stage: &'static str,
    replica: u32,
}

impl Held {
    pub(crate) fn new(tag: Tag, stage: &'static str, replica: u32) -> Self {
        let tags = if tag.is_some() { vec![tag] } else { Vec::new() };
        Held { tags, stage, replica }
    }

    /// Whether it holds no acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// How many holds it keeps: one per [`Emitter::hold`](crate::Emitter::hold)
    /// absorbed (an input held twice counts twice), and one for the
    /// `Held` of an item taken from an [`AckedOutput`](crate::AckedOutput),
    /// however many inputs it was made from. Not a count of inputs.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Takes over what `other` holds.
    pub fn absorb(&mut self, mut other: Held) {
        if self.stage.is_empty() {
            (self.stage, self.replica) = (other.stage, other.replica);
        }
        self.tags.append(&mut other.tags);
    }

    /// Another hold on the same acknowledgements, for a second item
    /// carrying them: each must be done with.
    pub fn share(&self) -> Held {
        Held { tags: self.tags.iter().map(Tag::share).collect(), stage: self.stage, replica: self.replica }
    }

    /// Done with: the inputs it holds are delivered as far as this hold
    /// goes (they are acknowledged once nothing else holds them).
    pub fn release(mut self) {
        for tag in self.tags.drain(..) {
            tag.release();
        }
    }

    /// Fails the inputs it holds with `error`: their outcome is
    /// [`Failed`](super::Outcome::Failed), with a [`Failure`] naming the
    /// stage that held them (`"output"` for the reader of the output). The
    /// failure goes to the acknowledgements only, not to `failures()`.
    pub fn fail(mut self, error: impl Into<Box<dyn Error + Send + Sync>>) {
        if self.tags.is_empty() {
            return;
        }
        let failure = Failure::held(self.stage, self.replica as usize, error.into());
        for tag in self.tags.drain(..) {
            tag.fail([&failure]);
        }
    }

    /// An acknowledgement holding all of it, to send what this `Held`'s
    /// inputs were made into through another pipeline: the inputs are
    /// done once the other pipeline is done with what it was sent with
    /// (its outcome, failures included, passes on to each of them). An
    /// empty `Held` makes an `Ack` that fires nothing.
    pub fn into_ack(self) -> super::Ack {
        super::Ack(self.into_tag())
    }

    /// One tag holding all of it.
    pub(crate) fn into_tag(mut self) -> Tag {
        Tag::group(std::mem::take(&mut self.tags))
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held").field("holds", &self.tags.len()).field("stage", &self.stage).finish()
    }
}
