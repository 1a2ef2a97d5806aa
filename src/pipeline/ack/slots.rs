//! The deque of a queue's plain items, whose readers take many at once.
//!
//! `VecDeque` moves its items out one at a time (`pop_front`, or a
//! `Drain` read item by item), each move checked and the deque's head
//! and length written back, which makes moving a batch out of a queue
//! cost about as much per item as the rest of a stage's work on it. Here
//! the items are held as `ManuallyDrop`, so a batch is copied out of the
//! deque's two slices in two `memcpy`s, and the deque then forgets them
//! (dropping a `ManuallyDrop` does nothing); the deque's own drop drops
//! what is still held. A whole batch moves in the same way, appended in
//! bulk rather than pushed item by item.

use std::{collections::VecDeque, mem::ManuallyDrop, ptr};

/// The same vector, its items held as `ManuallyDrop<T>`.
fn as_manually_drop<T>(items: Vec<T>) -> Vec<ManuallyDrop<T>> {
    let mut items = ManuallyDrop::new(items);
    // SAFETY: `ManuallyDrop<T>` has the layout of `T` (it is
    // `repr(transparent)`), so the allocation, length and capacity of a
    // `Vec<T>` are those of a `Vec<ManuallyDrop<T>>`; the old vector is
    // forgotten, so the allocation has one owner.
    unsafe { Vec::from_raw_parts(items.as_mut_ptr().cast(), items.len(), items.capacity()) }
}

/// The same vector, its items held as `T` again.
fn from_manually_drop<T>(items: Vec<ManuallyDrop<T>>) -> Vec<T> {
    let mut items = ManuallyDrop::new(items);
    // SAFETY: as in `as_manually_drop`, the other way round.
    unsafe { Vec::from_raw_parts(items.as_mut_ptr().cast(), items.len(), items.capacity()) }
}

/// Copies the `n` items from `src` on into the `n` places before `end`,
/// the first into the last place.
///
/// # Safety
///
/// `src` holds `n` items to read, and the `n` places before `end` may be
/// written; the two do not overlap.
unsafe fn copy_reversed<T>(src: *const T, end: *mut T, n: usize) {
    for i in 0..n {
        // SAFETY: the caller's promise; `i < n`.
        unsafe { end.sub(i + 1).write(src.add(i).read()) };
    }
}

/// A deque of items that moves its first items out in bulk.
pub(crate) struct Slots<T>(VecDeque<ManuallyDrop<T>>);

impl<T> Slots<T> {
    /// An empty deque; allocates nothing.
    pub(crate) const fn new() -> Self {
        Slots(VecDeque::new())
    }

    pub(crate) fn with_capacity(n: usize) -> Self {
        Slots(VecDeque::with_capacity(n))
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn push_back(&mut self, item: T) {
        self.0.push_back(ManuallyDrop::new(item));
    }

    pub(crate) fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        self.0.extend(items.into_iter().map(ManuallyDrop::new));
    }

    /// Moves the first `n` items of `from` (all if it holds fewer) to the
    /// back. All of them (the common case: a feeder's or an emitter's
    /// whole batch) move in bulk, as [`move_front`](Self::move_front) moves
    /// them out: `from`'s vector becomes a deque (which moves nothing) that
    /// is appended in one or two `memcpy`s, and its allocation goes back to
    /// `from`, empty.
    pub(crate) fn move_in(&mut self, from: &mut Vec<T>, n: usize) {
        if n < from.len() {
            self.extend(from.drain(..n));
            return;
        }
        let mut more = VecDeque::from(as_manually_drop(std::mem::take(from)));
        self.0.append(&mut more);
        // Empty: the vector takes the deque's allocation as it is.
        *from = from_manually_drop(Vec::from(more));
    }

    /// Moves the first `n` items to the back of `into`, last to first (the
    /// first item taken ends up last), in one pass: for a list that is
    /// popped from its end.
    ///
    /// # Panics
    ///
    /// If fewer than `n` items are held (before moving any).
    pub(crate) fn move_front_reversed(&mut self, n: usize, into: &mut Vec<T>) {
        self.move_front_as::<true>(n, into);
    }

    /// Takes every item, first to last.
    pub(crate) fn take_all(&mut self) -> impl Iterator<Item = T> + '_ {
        self.0.drain(..).map(ManuallyDrop::into_inner)
    }

    /// Moves the first `n` items to the back of `into`.
    ///
    /// # Panics
    ///
    /// If fewer than `n` items are held (before moving any).
    pub(crate) fn move_front(&mut self, n: usize, into: &mut Vec<T>) {
        self.move_front_as::<false>(n, into);
    }

    /// Moves the first `n` items to the back of `into`, in their order or,
    /// if `REVERSED`, last to first.
    fn move_front_as<const REVERSED: bool>(&mut self, n: usize, into: &mut Vec<T>) {
        assert!(n <= self.0.len(), "{n} items taken from a deque of {}", self.0.len());
        into.reserve(n);
        let (front, back) = self.0.as_slices();
        let first = front.len().min(n);
        // SAFETY: `ManuallyDrop<T>` has the layout of `T`. `into` has room
        // for `n` more items (reserved above), and the two slices hold
        // `first` and at least `n - first` initialised items, none of them
        // in `into`'s buffer; each of the `n` places is written once. The
        // `n` items copied become `into`'s, and the deque forgets its
        // copies next: `drain` drops `ManuallyDrop`s, which drops nothing,
        // and nothing between can panic.
        unsafe {
            let (front, back) = (front.as_ptr().cast::<T>(), back.as_ptr().cast::<T>());
            let start = into.as_mut_ptr().add(into.len());
            if REVERSED {
                copy_reversed(front, start.add(n), first);
                copy_reversed(back, start.add(n - first), n - first);
            } else {
                ptr::copy_nonoverlapping(front, start, first);
                ptr::copy_nonoverlapping(back, start.add(first), n - first);
            }
            into.set_len(into.len() + n);
        }
        self.0.drain(..n);
    }

    /// Moves the first `n` items to the back of `into`, each as `f` makes
    /// it, one at a time.
    ///
    /// # Panics
    ///
    /// If fewer than `n` items are held.
    pub(crate) fn map_front<U>(&mut self, n: usize, into: &mut Vec<U>, f: impl FnMut(T) -> U) {
        into.extend(self.0.drain(..n).map(ManuallyDrop::into_inner).map(f));
    }
}

/// Drops the items still held.
impl<T> Drop for Slots<T> {
    fn drop(&mut self) {
        self.take_all().for_each(drop);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Slots;

    #[test]
    fn moves_items_across_the_deques_wrap_and_drops_each_once() {
        let counted = Arc::new(());
        let mut slots = Slots::with_capacity(8);
        let mut into = Vec::new();
        // Wrap the deque's ring: the items taken lie in both of its slices.
        for round in 0..5 {
            for _ in 0..3 {
                slots.push_back((round, counted.clone()));
            }
            slots.move_front(2, &mut into);
        }
        assert_eq!(slots.len(), 5);
        assert_eq!(into.len(), 10);
        assert_eq!(into.iter().map(|(round, _)| *round).collect::<Vec<_>>(), [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]);
        assert_eq!(Arc::strong_count(&counted), 16);
        drop(into);
        assert_eq!(Arc::strong_count(&counted), 6);
        let mut mapped = Vec::new();
        slots.map_front(2, &mut mapped, |(round, item)| (round * 10, item));
        assert_eq!(mapped.iter().map(|(round, _)| *round).collect::<Vec<_>>(), [30, 30]);
        assert_eq!(slots.take_all().map(|(round, _)| round).collect::<Vec<_>>(), [4, 4, 4]);
        slots.extend([(7, counted.clone())]);
        drop(slots);
        drop(mapped);
        assert_eq!(Arc::strong_count(&counted), 1);
    }

    #[test]
    fn moves_a_whole_vector_in_keeping_its_allocation_and_part_of_one_in_order() {
        let counted = Arc::new(());
        let mut slots = Slots::with_capacity(4);
        // The ring wraps: the items moved in land in both of its slices.
        slots.extend([(0, counted.clone()), (1, counted.clone()), (2, counted.clone())]);
        slots.move_front(2, &mut Vec::new());
        let mut from: Vec<_> = (3..6).map(|n| (n, counted.clone())).collect();
        let room = from.as_ptr();
        slots.move_in(&mut from, 3);
        assert!(from.is_empty());
        assert_eq!(from.as_ptr(), room, "the vector keeps its allocation");
        assert!(from.capacity() >= 3);
        let mut from: Vec<_> = (6..9).map(|n| (n, counted.clone())).collect();
        slots.move_in(&mut from, 2);
        assert_eq!(from.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [8]);
        slots.move_in(&mut from, 5);
        assert!(from.is_empty());
        assert_eq!(Arc::strong_count(&counted), 8);
        assert_eq!(slots.take_all().map(|(n, _)| n).collect::<Vec<_>>(), [2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Arc::strong_count(&counted), 1);
    }

    #[test]
    fn moves_items_out_last_to_first_across_the_deques_wrap() {
        let counted = Arc::new(());
        let mut slots = Slots::with_capacity(4);
        slots.extend((0..3).map(|n| (n, counted.clone())));
        slots.move_front(2, &mut Vec::new());
        // 2 at the end of the ring, 3..6 wrapped to its start.
        slots.extend((3..6).map(|n| (n, counted.clone())));
        let mut into = vec![(9, counted.clone())];
        slots.move_front_reversed(3, &mut into);
        assert_eq!(into.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [9, 4, 3, 2]);
        assert_eq!(slots.take_all().map(|(n, _)| n).collect::<Vec<_>>(), [5]);
        drop(into);
        assert_eq!(Arc::strong_count(&counted), 1);
    }

    #[test]
    #[should_panic(expected = "3 items taken from a deque of 2")]
    fn taking_more_than_held_panics_before_moving_any() {
        let mut slots = Slots::new();
        slots.extend([1, 2]);
        slots.move_front(3, &mut Vec::new());
    }
}
