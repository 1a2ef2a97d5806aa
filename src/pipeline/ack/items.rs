//! Items with their [`Tag`]s beside them, not in them: how batches,
//! buffers and queues hold items on their way through a pipeline.
//!
//! The tags run beside the items only as far as the last item that has
//! an acknowledgement; the items after it have none, and are pushed and
//! moved as plain `T`, as if there were no acknowledgements at all. So a
//! pipeline fed without [`Ack`](super::Ack)s pays a check per batch, not a
//! word and a check per item, and a list or queue that held acknowledged
//! items goes back to that once they have left.

use std::collections::VecDeque;

use super::tag::Tag;

/// Items, and beside the first of them their tags, in the same order:
/// `tags[i]` is the tag of `items[i]` for every `i` below `tags.len()`
/// (at most `items.len()`); the items past the tags have none.
///
/// Dropped, its items go first, then their tags (which report their
/// items dropped).
pub(crate) struct Items<T> {
    items: Vec<T>,
    tags: Tags,
}

/// The tags beside a list of items: boxed, so that a list without them is
/// four words, not six (every replica's task holds two lists).
#[allow(clippy::box_collection, reason = "one word while there are no tags")]
struct Tags(Option<Box<Vec<Tag>>>);

impl Tags {
    #[inline]
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |tags| tags.len())
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The list, allocated if it was not.
    #[inline]
    fn vec(&mut self) -> &mut Vec<Tag> {
        self.0.get_or_insert_with(Box::default)
    }

    /// Pads the list with [`Tag::NONE`] to `len` tags.
    fn pad(&mut self, len: usize) {
        if self.len() < len {
            self.vec().resize_with(len, Tag::default);
        }
    }

    /// Every tag, leaving none.
    fn take(&mut self) -> Vec<Tag> {
        self.0.as_mut().map(|tags| std::mem::take(&mut **tags)).unwrap_or_default()
    }
}

/// A queue's tags beside its items, as [`Items`] holds them: the first
/// `tags.len()` items have theirs, the others none.
pub(crate) fn pad_queue(tags: &mut VecDeque<Tag>, len: usize) {
    if tags.len() < len {
        tags.resize_with(len, Tag::default);
    }
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items::new()
    }
}

impl<T> Items<T> {
    /// No items; allocates nothing.
    pub(crate) const fn new() -> Self {
        Items { items: Vec::new(), tags: Tags(None) }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether some item may have an acknowledgement.
    #[inline]
    pub(crate) fn has_tags(&self) -> bool {
        !self.tags.is_empty()
    }

    /// The items, in order.
    #[inline]
    pub(crate) fn items(&self) -> &[T] {
        &self.items
    }

    /// The items, in order, to change in place.
    #[inline]
    pub(crate) fn items_mut(&mut self) -> &mut [T] {
        &mut self.items
    }

    /// Adds an item without acknowledgement: a plain push.
    #[inline]
    pub(crate) fn push(&mut self, item: T) {
        self.items.push(item);
    }

    /// Adds an item holding `tag`. (Inlined always, so that where `tag`
    /// is known to hold nothing the check goes.)
    #[inline(always)]
    pub(crate) fn push_tagged(&mut self, item: T, tag: Tag) {
        if tag.is_some() {
            self.push_with_tag(item, tag);
        } else {
            self.items.push(item);
        }
    }

    /// Adds an item holding `tag`, which goes beside it whatever it holds
    /// (so that [`set_tag`](Self::set_tag) of the item finds its place).
    #[inline]
    pub(crate) fn push_with_tag(&mut self, item: T, tag: Tag) {
        let len = self.items.len();
        let tags = self.tags.vec();
        if tags.len() < len {
            tags.resize_with(len, Tag::default);
        }
        tags.push(tag);
        self.items.push(item);
    }

    /// Takes the last item and its tag.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<(T, Tag)> {
        let item = self.items.pop()?;
        let tag = match &mut self.tags.0 {
            Some(tags) if tags.len() > self.items.len() => tags.pop().unwrap_or_default(),
            _ => Tag::NONE,
        };
        Some((item, tag))
    }

    /// Takes the first item and its tag (moving the others).
    pub(crate) fn remove_first(&mut self) -> Option<(T, Tag)> {
        if self.items.is_empty() {
            return None;
        }
        let tag = if self.tags.is_empty() { Tag::NONE } else { self.tags.vec().remove(0) };
        Some((self.items.remove(0), tag))
    }

    #[inline]
    pub(crate) fn last(&self) -> Option<&T> {
        self.items.last()
    }

    /// Gives the item at `at` the tag `tag`, dropping the one it had.
    ///
    /// # Panics
    ///
    /// If `at` is out of range.
    #[inline]
    pub(crate) fn set_tag(&mut self, at: usize, tag: Tag) {
        match &mut self.tags.0 {
            Some(tags) if at < tags.len() => tags[at] = tag,
            _ => self.set_tag_past(at, tag),
        }
    }

    /// [`set_tag`](Self::set_tag) of an item past the tags.
    fn set_tag_past(&mut self, at: usize, tag: Tag) {
        assert!(at < self.items.len(), "no item at {at}");
        if tag.is_some() {
            self.tags.pad(at);
            self.tags.vec().push(tag);
        }
    }

    #[inline]
    pub(crate) fn reverse(&mut self) {
        self.items.reverse();
        if !self.tags.is_empty() {
            self.reverse_tags();
        }
    }

    fn reverse_tags(&mut self) {
        self.tags.pad(self.items.len());
        self.tags.vec().reverse();
    }

    /// Swaps two items, with their tags.
    #[inline]
    pub(crate) fn swap(&mut self, a: usize, b: usize) {
        self.items.swap(a, b);
        if !self.tags.is_empty() {
            self.tags.pad(self.items.len());
            self.tags.vec().swap(a, b);
        }
    }

    /// Drops every item, then their tags.
    pub(crate) fn clear(&mut self) {
        self.items.clear();
        if !self.tags.is_empty() {
            self.tags.vec().clear();
        }
    }

    /// Drops every item and gives back their tags (those of the first
    /// items; empty if none had one).
    pub(crate) fn take_tags(&mut self) -> Vec<Tag> {
        self.items.clear();
        self.tags.take()
    }

    /// The items and the tags of the first of them (empty if none had
    /// one).
    pub(crate) fn into_parts(mut self) -> (Vec<T>, Vec<Tag>) {
        (std::mem::take(&mut self.items), self.tags.take())
    }

    /// Moves every item of `other` after these.
    pub(crate) fn append(&mut self, other: &mut Items<T>) {
        if other.has_tags() {
            self.tags.pad(self.items.len());
            self.tags.vec().append(other.tags.vec());
        }
        self.items.append(&mut other.items);
    }

    /// Moves every item of `other` before these, last to first (for a list
    /// that is popped from its end).
    pub(crate) fn prepend_reversed(&mut self, other: &mut Items<T>) {
        if other.has_tags() || self.has_tags() {
            // Past the tags of `other` reversed come those of these.
            other.tags.pad(other.items.len());
            self.tags.vec().splice(0..0, other.tags.vec().drain(..).rev());
        }
        self.items.splice(0..0, other.items.drain(..).rev());
    }

    /// Takes the first `n` items (all if fewer) with their tags.
    pub(crate) fn split_front(&mut self, n: usize) -> Items<T> {
        let n = n.min(self.items.len());
        let items = self.items.drain(..n).collect();
        let tagged = n.min(self.tags.len());
        let tags =
            if tagged == 0 { Tags(None) } else { Tags(Some(Box::new(self.tags.vec().drain(..tagged).collect()))) };
        Items { items, tags }
    }

    /// Moves the first `n` items (all if fewer) to the back of the queue
    /// `items` whose tags are `tags` (held as [`Items`] holds them);
    /// returns how many moved.
    pub(crate) fn move_front_into(&mut self, n: usize, items: &mut VecDeque<T>, tags: &mut VecDeque<Tag>) -> usize {
        let n = n.min(self.items.len());
        let tagged = n.min(self.tags.len());
        if tagged > 0 {
            pad_queue(tags, items.len());
            tags.extend(self.tags.vec().drain(..tagged));
        }
        items.extend(self.items.drain(..n));
        n
    }

    /// Takes `n` items from the front of the queue `items` whose tags are
    /// `tags` (held as [`Items`] holds them), after these.
    ///
    /// # Panics
    ///
    /// If the queue holds fewer than `n` items.
    pub(crate) fn take_front_from(&mut self, n: usize, items: &mut VecDeque<T>, tags: &mut VecDeque<Tag>) {
        let tagged = n.min(tags.len());
        if tagged > 0 {
            self.tags.pad(self.items.len());
            // Taken out of the deque's slices (a tag taken leaves nothing
            // behind, which the drain then drops for a check each): slice
            // iterators have exact lengths, so this costs less than taking
            // them one by one.
            let out = self.tags.vec();
            let (front, back) = tags.as_mut_slices();
            let from_front = tagged.min(front.len());
            out.extend(front[..from_front].iter_mut().map(std::mem::take));
            out.extend(back[..tagged - from_front].iter_mut().map(std::mem::take));
            tags.drain(..tagged);
        }
        // A `Map` of a range has an exact length: the list reserves once
        // and moves items without a check each (a `Drain` of a deque is
        // read and written one checked item at a time).
        self.items.extend((0..n).map(|_| items.pop_front().expect("`n` items are queued")));
    }
}

impl<T> FromIterator<T> for Items<T> {
    /// Items without acknowledgement.
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        Items { items: items.into_iter().collect(), tags: Tags(None) }
    }
}

impl<T> IntoIterator for Items<T> {
    type Item = (T, Tag);
    type IntoIter = Pairs<T>;

    /// The items with their tags, in order.
    fn into_iter(self) -> Pairs<T> {
        let (items, tags) = self.into_parts();
        Pairs { items: items.into_iter(), tags: tags.into_iter() }
    }
}

/// The items of an [`Items`] with their tags, in order.
pub(crate) struct Pairs<T> {
    items: std::vec::IntoIter<T>,
    tags: std::vec::IntoIter<Tag>,
}

impl<T> Iterator for Pairs<T> {
    type Item = (T, Tag);

    fn next(&mut self) -> Option<(T, Tag)> {
        let item = self.items.next()?;
        Some((item, self.tags.next().unwrap_or_default()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.items.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::{Items, Tag};
    use crate::ack::Outcome;

    /// A tag that records its outcome in `log` under `name`.
    fn tag(log: &Arc<Mutex<Vec<(u32, Outcome)>>>, name: u32) -> Tag {
        let log = log.clone();
        Tag::firing(move |outcome| log.lock().unwrap().push((name, outcome)))
    }

    fn delivered(log: &Arc<Mutex<Vec<(u32, Outcome)>>>) -> Vec<u32> {
        log.lock().unwrap().iter().filter(|(_, o)| o.is_delivered()).map(|(n, _)| *n).collect()
    }

    #[test]
    fn items_without_acknowledgement_carry_no_tags() {
        let mut items: Items<u32> = (0..4).collect();
        items.push(4);
        items.push_tagged(5, Tag::NONE);
        assert!(!items.has_tags());
        items.reverse();
        assert_eq!(items.pop().map(|(item, tag)| (item, tag.is_some())), Some((0, false)));
        assert_eq!(items.len(), 5);
    }

    #[test]
    fn a_tag_stays_with_its_item_through_every_move() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut items: Items<u32> = (0..3).collect();
        items.push_tagged(3, tag(&log, 3));
        items.push(4);
        assert!(items.has_tags());
        items.set_tag(1, tag(&log, 1));
        let mut queue = std::collections::VecDeque::new();
        let mut queue_tags = std::collections::VecDeque::new();
        // Into a queue of plain items, then out again.
        queue.extend([10, 11]);
        assert_eq!(items.move_front_into(2, &mut queue, &mut queue_tags), 2);
        assert_eq!(queue_tags.len(), 4);
        let mut out: Items<u32> = Items::new();
        out.take_front_from(4, &mut queue, &mut queue_tags);
        out.append(&mut items);
        out.swap(0, 5);
        let mut rest = out.split_front(3);
        rest.prepend_reversed(&mut out);
        let pairs: Vec<(u32, bool)> = rest.into_iter().map(|(item, tag)| (item, tag.is_some())).collect();
        assert_eq!(pairs, [(4, false), (10, false), (2, false), (1, true), (3, true), (11, false), (0, false)]);
        // Each tag went with its item, and was dropped with it.
        assert!(delivered(&log).is_empty());
        assert_eq!(log.lock().unwrap().len(), 2);
    }

    #[test]
    fn popped_tags_are_the_items_own() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut items: Items<u32> = Items::new();
        items.push(0);
        items.push_tagged(1, tag(&log, 1));
        items.push(2);
        let (two, none) = items.pop().unwrap();
        assert_eq!((two, none.is_some()), (2, false));
        let (one, tag) = items.pop().unwrap();
        assert_eq!(one, 1);
        tag.release();
        assert_eq!(delivered(&log), [1]);
        let (zero, tag) = items.remove_first().unwrap();
        assert_eq!((zero, tag.is_some()), (0, false));
        assert!(items.remove_first().is_none());
    }
}
