//! What travels with every item: its [`Tag`], a share of the
//! acknowledgements of the inputs it came from.
//!
//! A tag is a pointer or nothing: an item sent without an acknowledgement
//! carries nothing, and moving it costs a word more and a check when it is
//! dropped. A tag with a node is one *hold* on that node (a strong count of
//! its `Arc`): the node's acknowledgement fires when its last hold goes,
//! with the worst outcome any hold reported. A hold released on purpose
//! (the item was processed, or taken from the output) reports nothing; a
//! hold dropped with its item (an aborted replica's batch, an untaken
//! output, a cleared queue) reports the item dropped; a failure reports
//! itself. A *group* node (a batch cut from several inputs, what a stage
//! held and emits with) holds its inputs' tags and passes its outcome on
//! to each of them when it goes.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
};

use super::Outcome;
use crate::pipeline::Failure;

/// Outcomes, worst last: failed beats dropped beats delivered.
const DELIVERED: u8 = 0;
const DROPPED: u8 = 1;
const FAILED: u8 = 2;

/// An item and its tag, as queues, batches and buffers hold it.
pub(crate) struct Tagged<T> {
    pub(crate) item: T,
    pub(crate) tag: Tag,
}

impl<T> Tagged<T> {
    /// An item without acknowledgement.
    #[inline]
    pub(crate) fn bare(item: T) -> Self {
        Tagged { item, tag: Tag::NONE }
    }

    #[inline]
    pub(crate) fn new(item: T, tag: Tag) -> Self {
        Tagged { item, tag }
    }
}

/// A share of the acknowledgements of the inputs an item came from, or
/// nothing. Dropped without [`release`](Self::release) or
/// [`fail`](Self::fail), it reports its item dropped.
#[derive(Default)]
pub(crate) struct Tag(Option<Arc<Node>>);

impl Tag {
    pub(crate) const NONE: Tag = Tag(None);

    /// A tag on a fresh node that calls `fire` with the outcome.
    pub(crate) fn firing(fire: Box<dyn FnOnce(Outcome) + Send>) -> Tag {
        Tag(Some(Arc::new(Node::new(Then::Fire(Mutex::new(Some(fire)))))))
    }

    /// Whether it holds an acknowledgement.
    #[inline]
    pub(crate) fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// Another hold on the same acknowledgements (for an item derived from
    /// the same input).
    #[inline]
    pub(crate) fn share(&self) -> Tag {
        match &self.0 {
            None => Tag::NONE,
            Some(node) => Tag(Some(node.clone())),
        }
    }

    /// Lets the hold go with nothing to report: its item was processed
    /// (what it emitted holds shares of its own) or taken from the output.
    #[inline(always)]
    pub(crate) fn release(mut self) {
        if let Some(node) = self.0.take() {
            drop(node);
        }
    }

    /// Records `failure` against the acknowledgements, keeping the hold.
    pub(crate) fn record(&self, failure: &Failure) {
        if let Some(node) = &self.0 {
            node.fail(failure);
        }
    }

    /// Lets the hold go, reporting its item failed with `failures`.
    pub(crate) fn fail<'a>(mut self, failures: impl IntoIterator<Item = &'a Failure>) {
        if let Some(node) = self.0.take() {
            for failure in failures {
                node.fail(failure);
            }
            node.worst.fetch_max(FAILED, Ordering::Relaxed);
        }
    }

    /// One tag holding every tag of `tags` (nothing if none holds
    /// anything, the one if only one does): for an item made from several
    /// inputs.
    pub(crate) fn group(mut tags: Vec<Tag>) -> Tag {
        tags.retain(Tag::is_some);
        match tags.len() {
            0 => Tag::NONE,
            1 => tags.pop().unwrap_or_default(),
            _ => Tag(Some(Arc::new(Node::new(Then::Release(tags))))),
        }
    }

    /// Adds the acknowledgements of `other` to this tag's: a new group
    /// holding both, unless one of them holds nothing.
    pub(crate) fn join(self, other: Tag) -> Tag {
        match (self.is_some(), other.is_some()) {
            (_, false) => self,
            (false, true) => other,
            (true, true) => Tag::group(vec![self, other]),
        }
    }

    /// Lets the hold go reporting `outcome` as a group passes its outcome on.
    fn settle(self, worst: u8, failures: &[Failure]) {
        match worst {
            FAILED => self.fail(failures),
            DROPPED => drop(self),
            _ => self.release(),
        }
    }
}

/// The item went without being released: dropped.
impl Drop for Tag {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(node) = self.0.take() {
            // Relaxed: the `Arc`'s last drop orders it before the node reads it.
            node.worst.fetch_max(DROPPED, Ordering::Relaxed);
        }
    }
}

/// One acknowledgement, or a group of them, and what its holds reported.
/// It fires when its last hold goes (its `Arc` is dropped).
pub(crate) struct Node {
    worst: AtomicU8,
    failures: Mutex<Vec<Failure>>,
    then: Then,
}

/// What a node does when its last hold goes.
enum Then {
    /// Calls the acknowledgement with the outcome (once: taken then). In
    /// a `Mutex` only so that the node is `Sync`: it is reached once, in
    /// the node's drop, with `get_mut`, never locked.
    #[allow(clippy::type_complexity, reason = "the callback, spelled out once")]
    Fire(Mutex<Option<Box<dyn FnOnce(Outcome) + Send>>>),
    /// Passes the outcome on to the tags of the inputs it was made from.
    Release(Vec<Tag>),
}

impl Node {
    fn new(then: Then) -> Self {
        Node { worst: AtomicU8::new(DELIVERED), failures: Mutex::new(Vec::new()), then }
    }

    /// Records `failure`, once: an input reached twice by one failure (a
    /// batch holding two of its items, a stage's hold and its own input
    /// emitted together) lists it once.
    fn fail(&self, failure: &Failure) {
        self.worst.fetch_max(FAILED, Ordering::Relaxed);
        let mut failures = self.failures.lock().unwrap_or_else(|poison| poison.into_inner());
        if !failures.iter().any(|known| known.is(failure)) {
            failures.push(failure.clone());
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let worst = *self.worst.get_mut();
        let failures = std::mem::take(self.failures.get_mut().unwrap_or_else(|poison| poison.into_inner()));
        match &mut self.then {
            Then::Fire(fire) => {
                let Some(fire) = fire.get_mut().unwrap_or_else(|poison| poison.into_inner()).take() else {
                    return;
                };
                let outcome = match worst {
                    FAILED => Outcome::Failed(failures),
                    DROPPED => Outcome::Dropped,
                    _ => Outcome::Delivered,
                };
                // The last hold may go anywhere in the pipeline: a panic
                // of the user's acknowledgement must not unwind through it.
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| fire(outcome))) {
                    let panic = crate::pipeline::Panicked::new(&panic);
                    tracing::warn!(error = %panic, "an acknowledgement panicked");
                }
            }
            Then::Release(tags) => {
                for tag in tags.drain(..) {
                    tag.settle(worst, &failures);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn watched() -> (Tag, Arc<Mutex<Vec<Outcome>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (Tag::firing(Box::new(move |outcome| sink.lock().unwrap().push(outcome))), seen)
    }

    fn kinds(seen: &Mutex<Vec<Outcome>>) -> Vec<&'static str> {
        seen.lock().unwrap().iter().map(Outcome::kind).collect()
    }

    #[test]
    fn an_acknowledgement_fires_once_when_its_last_hold_goes() {
        let (tag, seen) = watched();
        let (a, b) = (tag.share(), tag.share());
        tag.release();
        a.release();
        assert!(kinds(&seen).is_empty());
        b.release();
        assert_eq!(kinds(&seen), ["delivered"]);
    }

    #[test]
    fn failed_beats_dropped_beats_delivered() {
        let (tag, seen) = watched();
        let (a, b) = (tag.share(), tag.share());
        drop(a);
        tag.release();
        b.release();
        assert_eq!(kinds(&seen), ["dropped"]);

        let (tag, seen) = watched();
        let a = tag.share();
        drop(tag);
        let failure = Failure::for_test("boom");
        a.fail([&failure]);
        let outcomes = seen.lock().unwrap();
        match &outcomes[..] {
            [Outcome::Failed(failures)] => assert_eq!(failures[0].error().to_string(), "boom"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_group_passes_its_outcome_on_to_each_input() {
        let (x, seen_x) = watched();
        let (y, seen_y) = watched();
        let group = Tag::group(vec![x, Tag::NONE, y]);
        let copy = group.share();
        group.release();
        assert!(kinds(&seen_x).is_empty());
        copy.fail([&Failure::for_test("late")]);
        assert_eq!(kinds(&seen_x), ["failed"]);
        assert_eq!(kinds(&seen_y), ["failed"]);
        assert!(Tag::group(vec![Tag::NONE, Tag::NONE]).0.is_none());
    }

    #[test]
    fn a_panicking_acknowledgement_is_contained() {
        let tag = Tag::firing(Box::new(|_| panic!("in the acknowledgement")));
        tag.release();
    }
}
