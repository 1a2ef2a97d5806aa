//! What travels with an acknowledged item: its [`Tag`], a share of the
//! acknowledgements of the inputs it came from.
//!
//! A tag is a pointer or nothing; an item sent without an acknowledgement
//! has none, and moves without one (see [`Items`](super::items::Items)).
//! A tag with a node is one *hold* on that node (a count, kept
//! like an `Arc`'s): the node's acknowledgement fires when its last hold goes,
//! with the worst outcome any hold reported. A hold released on purpose
//! (the item was processed, or taken from the output) reports nothing; a
//! hold dropped with its item (an aborted replica's batch, an untaken
//! output, a cleared queue) reports the item dropped; a failure reports
//! itself. A *group* node (a batch cut from several inputs, what a stage
//! held and emits with) holds its inputs' tags and passes its outcome on
//! to each of them when it goes.

use std::{
    cell::RefCell,
    panic::{AssertUnwindSafe, catch_unwind},
    ptr::NonNull,
};

use super::Outcome;
use crate::{
    loom::sync::{
        Mutex,
        atomic::{self, AtomicPtr, AtomicU8, AtomicUsize, Ordering},
    },
    pipeline::Failure,
};

/// Outcomes, worst last: failed beats dropped beats delivered.
const DELIVERED: u8 = 0;
const DROPPED: u8 = 1;
const FAILED: u8 = 2;

/// An item and its tag, one at a time: as a sender hands it in. Queues,
/// batches and buffers hold items as [`Items`](super::items::Items) does.
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
///
/// One word: a pointer to the node's [`Header`], or null. The node is one
/// allocation holding the header and what to do at the end (the caller's
/// callback itself, not a box of it), counted like an `Arc`; or a slot of
/// a block of nodes made together (see [`Acks`](super::Acks)). A node
/// that fails gets a second allocation, its list of failures.
#[derive(Default)]
pub(crate) struct Tag(Option<NonNull<Header>>);

// SAFETY: a tag is a counted hold on a node. The node's header is shared
// only through atomics and a mutex; what it does at the end (`Then`, which
// is `Send`) is reached by the last hold alone, after every other hold has
// gone (the count's release and acquire order them), so holds may move to
// and be used from any thread.
unsafe impl Send for Tag {}
// SAFETY: as above; `&Tag` gives only `share`, `record` and `is_some`,
// which touch the header's atomics and mutex.
unsafe impl Sync for Tag {}

// What the claims above rest on, checked: the header's parts are shared
// between threads, and what a node does at the end moves to the last hold's.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    fn sent<T: Then>() {}
    shared::<AtomicUsize>();
    shared::<AtomicU8>();
    shared::<Mutex<Vec<Failure>>>();
    sent::<Vec<Tag>>();
};

impl Tag {
    pub(crate) const NONE: Tag = Tag(None);

    /// A tag on a fresh node that calls `fire` with the outcome.
    pub(crate) fn firing(fire: impl FnOnce(Outcome) + Send + 'static) -> Tag {
        Tag(Some(Node::alloc(Fire(fire))))
    }

    /// A tag that is the one hold of a fresh node whose header `header`
    /// points to.
    ///
    /// # Safety
    ///
    /// `header` points to a live header made by [`Header::new`] with one
    /// hold, the caller's, given up here; its `end` frees what `header`
    /// points into.
    pub(super) unsafe fn from_header(header: NonNull<Header>) -> Tag {
        Tag(Some(header))
    }

    /// Whether it holds an acknowledgement.
    #[inline]
    pub(crate) fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// The node's header, while this hold keeps it alive.
    #[inline(always)]
    fn header(&self) -> Option<&Header> {
        // SAFETY: a tag with a pointer is a hold: the node lives at least as
        // long as the tag.
        self.0.map(|header| unsafe { &*header.as_ptr() })
    }

    /// Another hold on the same acknowledgements (for an item derived from
    /// the same input).
    #[inline]
    pub(crate) fn share(&self) -> Tag {
        if let Some(header) = self.header() {
            // Relaxed, as `Arc::clone`: a new hold is made from an existing
            // one, which keeps the node alive meanwhile.
            let old = header.holds.fetch_add(1, Ordering::Relaxed);
            if old > isize::MAX as usize {
                // As `Arc`: a count this high means holds are leaked in a
                // loop; carrying on would wrap the count and free a live node.
                std::process::abort();
            }
        }
        Tag(self.0)
    }

    /// Lets the hold go with nothing to report: its item was processed
    /// (what it emitted holds shares of its own) or taken from the output.
    #[inline(always)]
    pub(crate) fn release(mut self) {
        if let Some(header) = self.0.take() {
            // SAFETY: `header` was this tag's hold, now given up.
            unsafe { Header::let_go(header) }
        }
    }

    /// Records `failure` against the acknowledgements, keeping the hold.
    pub(crate) fn record(&self, failure: &Failure) {
        if let Some(header) = self.header() {
            header.fail(failure);
        }
    }

    /// Lets the hold go, reporting its item failed with `failures`.
    pub(crate) fn fail<'a>(self, failures: impl IntoIterator<Item = &'a Failure>) {
        if let Some(header) = self.header() {
            for failure in failures {
                header.fail(failure);
            }
            header.worst.fetch_max(FAILED, Ordering::Relaxed);
        }
        self.release();
    }

    /// One tag holding every tag of `tags` (nothing if none holds
    /// anything, the one if only one does): for an item made from several
    /// inputs.
    pub(crate) fn group(mut tags: Vec<Tag>) -> Tag {
        tags.retain(Tag::is_some);
        match tags.len() {
            0 => Tag::NONE,
            1 => tags.pop().unwrap_or_default(),
            _ => Tag(Some(Node::alloc(tags))),
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
        if let Some(header) = self.0.take() {
            // SAFETY: `header` is this tag's hold: the node is alive.
            let node = unsafe { &*header.as_ptr() };
            // Relaxed: the count's release and acquire order it before the
            // last hold reads it.
            node.worst.fetch_max(DROPPED, Ordering::Relaxed);
            // SAFETY: the hold is given up here, once.
            unsafe { Header::let_go(header) }
        }
    }
}

/// What every node starts with, and all its holds see: the count of holds
/// and what they reported. Then comes what the node does at the end
/// (`Node<T>`), which only `end` knows the type of.
pub(super) struct Header {
    /// Holds on the node, as an `Arc`'s strong count.
    holds: AtomicUsize,
    worst: AtomicU8,
    /// The failures reported, in a list made at the first (null until
    /// then: most nodes never fail, and their header stays small).
    failures: AtomicPtr<Mutex<Vec<Failure>>>,
    /// Frees the node and acts on its outcome: `end::<T>` for the node's
    /// own `T`, called once, by the last hold.
    end: unsafe fn(NonNull<Header>),
}

impl Header {
    /// The header of a fresh node with one hold, delivered so far, that
    /// `end` ends.
    pub(super) fn new(end: unsafe fn(NonNull<Header>)) -> Header {
        Header {
            holds: AtomicUsize::new(1),
            worst: AtomicU8::new(DELIVERED),
            failures: AtomicPtr::new(std::ptr::null_mut()),
            end,
        }
    }

    /// What the holds of an ended node reported, taking the header apart.
    #[inline]
    pub(super) fn into_outcome(mut self) -> Outcome {
        // Relaxed: the last hold's acquire ordered every report before this.
        // (Matched here, not through `outcome`: the failures are looked
        // for only on a failed node, which keeps the ending of a slot
        // about 40 instructions shorter.)
        match self.worst.load(Ordering::Relaxed) {
            DELIVERED => Outcome::Delivered,
            DROPPED => Outcome::Dropped,
            _ => Outcome::Failed(self.take_failures()),
        }
    }

    /// Gives up one hold; the last one ends the node.
    ///
    /// # Safety
    ///
    /// `header` is a hold of the caller's, used no more after this call.
    #[inline(always)]
    unsafe fn let_go(header: NonNull<Header>) {
        // SAFETY: the caller's hold keeps the node alive until the count
        // drops here.
        let node = unsafe { &*header.as_ptr() };
        // Release then acquire, as `Arc`'s drop: everything every hold did
        // to the node happens before the last hold ends it.
        if node.holds.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        atomic::fence(Ordering::Acquire);
        // SAFETY: this was the last hold, and `end` is the function made
        // for the node's own type.
        unsafe { (node.end)(header) }
    }

    /// Records `failure`, once: an input reached twice by one failure (a
    /// batch holding two of its items, a stage's hold and its own input
    /// emitted together) lists it once.
    fn fail(&self, failure: &Failure) {
        self.worst.fetch_max(FAILED, Ordering::Relaxed);
        let mut failures = self.failure_list().lock().unwrap_or_else(|poison| poison.into_inner());
        if !failures.iter().any(|known| known.is(failure)) {
            failures.push(failure.clone());
        }
    }

    /// The list of failures, made now if none was.
    fn failure_list(&self) -> &Mutex<Vec<Failure>> {
        let mut list = self.failures.load(Ordering::Acquire);
        if list.is_null() {
            let fresh = Box::into_raw(Box::new(Mutex::new(Vec::new())));
            // Acquire on failure, release on success: whichever list is
            // installed, its making happens before its use.
            list = match self.failures.compare_exchange(
                std::ptr::null_mut(),
                fresh,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => fresh,
                Err(installed) => {
                    // SAFETY: `fresh` came from `Box::into_raw` above and
                    // was never shared.
                    drop(unsafe { Box::from_raw(fresh) });
                    installed
                }
            };
        }
        // SAFETY: a list once installed stays until the header is taken
        // apart (`take_failures`, `drop`), which needs it owned.
        unsafe { &*list }
    }

    /// The failures reported, taking their list out of the header.
    #[inline]
    fn take_failures(&mut self) -> Vec<Failure> {
        // Relaxed: the header is the caller's alone (`&mut`), after the
        // last hold's acquire; no read-modify-write needed.
        let list = self.failures.load(Ordering::Relaxed);
        if list.is_null() { Vec::new() } else { self.take_failure_list(list) }
    }

    /// [`take_failures`](Self::take_failures) of a header that has a list.
    #[cold]
    #[inline(never)]
    fn take_failure_list(&mut self, list: *mut Mutex<Vec<Failure>>) -> Vec<Failure> {
        self.failures.store(std::ptr::null_mut(), Ordering::Relaxed);
        // SAFETY: installed by `failure_list` from `Box::into_raw`, and
        // taken out of the header once, here.
        let list = unsafe { Box::from_raw(list) };
        list.into_inner().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A header taken apart with its failures still in it frees their list.
impl Drop for Header {
    #[inline]
    fn drop(&mut self) {
        drop(self.take_failures());
    }
}

/// One acknowledgement, or a group of them: the header, then what to do
/// when the last hold goes. One allocation. `repr(C)` keeps the header
/// first, so a pointer to the node is a pointer to its header.
#[repr(C)]
struct Node<T> {
    header: Header,
    then: T,
}

impl<T: Then> Node<T> {
    /// A node with one hold, returned as a pointer to its header.
    fn alloc(then: T) -> NonNull<Header> {
        let node = Box::new(Node { header: Header::new(end::<T>), then });
        NonNull::from(Box::leak(node)).cast::<Header>()
    }
}

/// Frees a node of type `Node<T>` and acts on what its holds reported.
///
/// # Safety
///
/// `header` points to the header of a live `Node<T>` made by
/// [`Node::alloc`], and no hold on it is left.
unsafe fn end<T: Then>(header: NonNull<Header>) {
    // SAFETY: by the caller, the node is a `Node<T>` from `Box::leak` with
    // no hold left: it is ours to take back.
    let node = unsafe { Box::from_raw(header.cast::<Node<T>>().as_ptr()) };
    let Node { mut header, then } = *node;
    // Relaxed: the last hold's acquire ordered every report before this.
    let worst = header.worst.load(Ordering::Relaxed);
    let failures = header.take_failures();
    then.then(worst, failures);
}

/// What a node does when its last hold goes.
trait Then: Send + 'static {
    fn then(self, worst: u8, failures: Vec<Failure>);
}

/// Calls the acknowledgement with the outcome.
struct Fire<F>(F);

impl<F: FnOnce(Outcome) + Send + 'static> Then for Fire<F> {
    fn then(self, worst: u8, failures: Vec<Failure>) {
        let outcome = outcome(worst, failures);
        acknowledge(|| (self.0)(outcome));
    }
}

/// The outcome the worst of a node's holds reported.
fn outcome(worst: u8, failures: Vec<Failure>) -> Outcome {
    match worst {
        FAILED => Outcome::Failed(failures),
        DROPPED => Outcome::Dropped,
        _ => Outcome::Delivered,
    }
}

/// Runs the user's acknowledgement `ack`, catching its panic: the last
/// hold may go anywhere in the pipeline, and a panic must not unwind
/// through it. A panic is logged as a `tracing` warning.
pub(super) fn acknowledge(ack: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(ack)) {
        let panic = crate::pipeline::Panicked::new(&payload);
        tracing::warn!(error = %panic, "an acknowledgement panicked");
        drop_payload(payload);
    }
}

/// Drops a caught panic's payload without letting a panic of its own `Drop`
/// unwind: that panic's payload is dropped in turn, the same way, a few
/// times at most; past that, the last one is forgotten (leaked) so that the
/// loop ends.
fn drop_payload(payload: Box<dyn std::any::Any + Send>) {
    let mut payload = payload;
    for _ in 0..4 {
        match catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            Ok(()) => return,
            Err(again) => payload = again,
        }
    }
    std::mem::forget(payload);
}

/// A group passes its outcome on to the tags of the inputs it was made from.
///
/// Groups nest (a batch of batches, an item going round a cycle through a
/// `#[batch]` stage), and the last hold of an inner group goes while the
/// outer one passes its outcome on: called from there, a group's end would
/// recurse once per level, and a deep enough nest would overflow the stack.
/// So the outermost group end on a thread keeps a list of the groups that
/// end under it and settles them in turn, in a loop.
impl Then for Vec<Tag> {
    fn then(self, worst: u8, failures: Vec<Failure>) {
        let mut group = Some(Ending { tags: self, worst, failures });
        // Under a group end on this thread: queue up behind it. (Once the
        // thread's locals are gone, in a late destructor, settle here.)
        let queued = ENDING.try_with(|ending| {
            let mut ending = ending.borrow_mut();
            match ending.as_mut() {
                Some(queue) => queue.extend(group.take()),
                None => *ending = Some(Vec::new()),
            }
        });
        let Some(group) = group else { return };
        if queued.is_err() {
            return group.settle();
        }
        // The outermost group end: settles its own, then those queued.
        let _reset = ResetEnding;
        group.settle();
        while let Some(group) = ENDING.with(|ending| ending.borrow_mut().as_mut().and_then(Vec::pop)) {
            group.settle();
        }
    }
}

/// A group whose last hold went: its inputs' tags and what to tell them.
struct Ending {
    tags: Vec<Tag>,
    worst: u8,
    failures: Vec<Failure>,
}

impl Ending {
    fn settle(self) {
        for tag in self.tags {
            tag.settle(self.worst, &self.failures);
        }
    }
}

#[cfg(not(genflow_loom))]
std::thread_local! {
    /// While a group end runs on this thread, the groups that ended under
    /// it, to settle after it.
    static ENDING: RefCell<Option<Vec<Ending>>> = const { RefCell::new(None) };
}

// Under the model checks, one per simulated thread (they share an OS thread).
#[cfg(genflow_loom)]
loom::thread_local! {
    static ENDING: RefCell<Option<Vec<Ending>>> = RefCell::new(None);
}

/// Ends the outermost group end's turn, even when it unwinds: what is still
/// queued is dropped (its inputs report dropped) once the list is no longer
/// borrowed.
struct ResetEnding;

impl Drop for ResetEnding {
    fn drop(&mut self) {
        let left = ENDING.with(|ending| ending.borrow_mut().take());
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    fn watched() -> (Tag, Arc<Mutex<Vec<Outcome>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (Tag::firing(move |outcome| sink.lock().unwrap().push(outcome)), seen)
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
    fn holds_let_go_on_many_threads_fire_once_and_free_what_the_acknowledgement_held() {
        struct Counted(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let freed = Arc::new(AtomicUsize::new(0));
        let fired = Arc::new(AtomicUsize::new(0));
        for round in 0..200 {
            let held = Counted(freed.clone());
            let count = fired.clone();
            let tag = Tag::firing(move |outcome| {
                let _held = held;
                assert!(outcome.is_dropped());
                count.fetch_add(1, Ordering::SeqCst);
            });
            let group = Tag::group(vec![tag, Tag::firing(|_| {})]);
            let shares: Vec<Tag> = (0..4).map(|_| group.share()).collect();
            group.release();
            std::thread::scope(|scope| {
                for (i, share) in shares.into_iter().enumerate() {
                    scope.spawn(move || if i == 2 { drop(share) } else { share.release() });
                }
            });
            assert_eq!(fired.load(Ordering::SeqCst), round + 1);
            assert_eq!(freed.load(Ordering::SeqCst), round + 1);
        }
    }

    #[test]
    fn a_panicking_acknowledgement_is_contained() {
        let tag = Tag::firing(|_| panic!("in the acknowledgement"));
        tag.release();
    }

    #[test]
    fn a_deep_nest_of_groups_ends_without_overflowing_the_stack() {
        const DEPTH: usize = 200_000;
        let fired = Arc::new(AtomicUsize::new(0));
        let fire = |fired: &Arc<AtomicUsize>| {
            let fired = fired.clone();
            Tag::firing(move |outcome| {
                assert!(outcome.is_failed(), "{outcome:?}");
                fired.fetch_add(1, Ordering::Relaxed);
            })
        };
        let mut tag = fire(&fired);
        for _ in 0..DEPTH {
            tag = Tag::group(vec![tag, fire(&fired)]);
        }
        let share = tag.share();
        drop(tag);
        assert_eq!(fired.load(Ordering::Relaxed), 0);
        // On a thread with a small stack: one level of recursion per group
        // would overflow it.
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || share.fail([&Failure::for_test("deep")]))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(fired.load(Ordering::Relaxed), DEPTH + 1);
    }

    #[test]
    fn a_panic_payload_that_panics_when_dropped_is_contained() {
        struct Bomb(Arc<AtomicUsize>);
        impl Drop for Bomb {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
                panic!("the payload's drop");
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let bomb = dropped.clone();
        let (x, y) = (Tag::firing(move |_| std::panic::panic_any(Bomb(bomb))), Tag::firing(|_| {}));
        let (seen_tag, seen) = watched();
        // In a group, with an input after it: the group still passes its
        // outcome on to that one.
        let group = Tag::group(vec![x, y, seen_tag]);
        let let_go = std::panic::catch_unwind(AssertUnwindSafe(|| group.release()));
        assert!(let_go.is_ok());
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        assert_eq!(kinds(&seen), ["delivered"]);
    }
}
