//! Items with their acknowledgements, as batches, buffers and queues hold
//! them on their way through a pipeline.
//!
//! A list holds plain `T`s until an item with an acknowledgement joins
//! it; only then does it hold each item beside its [`Tag`] (the others
//! with [`Tag::NONE`]), and it goes back to plain `T`s once such items
//! have left it. So a pipeline fed without [`Ack`](super::Ack)s moves its
//! items as if acknowledgements did not exist, for a check per operation
//! on a list (per batch, or per item pushed), and one fed with them moves
//! each item and its tag together.

use super::{slots::Slots, tag::Tag};

/// A list of items, each with its acknowledgements.
///
/// Dropped, its items go, and their tags with them (which report their
/// items dropped).
pub(crate) struct Items<T>(List<T>);

/// What [`Items::pop_plain`] gives for a list whose items hold tags.
#[derive(Debug)]
pub(crate) struct HasTags;

/// What an [`Items`] holds: a vector either way, and a word for which.
enum List<T> {
    /// None of the items has an acknowledgement.
    Plain(Vec<T>),
    /// Each item beside its tag.
    Tagged(Vec<(T, Tag)>),
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items::new()
    }
}

impl<T> Items<T> {
    /// No items; allocates nothing.
    pub(crate) const fn new() -> Self {
        Items(List::Plain(Vec::new()))
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        match &self.0 {
            List::Plain(items) => items.len(),
            List::Tagged(items) => items.len(),
        }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether its items are held with tags (some of them may have one).
    #[inline]
    pub(crate) fn has_tags(&self) -> bool {
        matches!(self.0, List::Tagged(_))
    }

    /// The items, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        let (plain, tagged) = match &self.0 {
            List::Plain(items) => (items.as_slice(), &[][..]),
            List::Tagged(items) => (&[][..], items.as_slice()),
        };
        plain.iter().chain(tagged.iter().map(|(item, _)| item))
    }

    /// The items, in order, to change in place.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        let (plain, tagged) = match &mut self.0 {
            List::Plain(items) => (items.as_mut_slice(), &mut [][..]),
            List::Tagged(items) => (&mut [][..], items.as_mut_slice()),
        };
        plain.iter_mut().chain(tagged.iter_mut().map(|(item, _)| item))
    }

    /// The list of items beside their tags, made from the plain one if it
    /// was plain.
    fn tagged(&mut self) -> &mut Vec<(T, Tag)> {
        if let List::Plain(items) = &mut self.0 {
            let tagged = items.drain(..).map(|item| (item, Tag::NONE)).collect();
            self.0 = List::Tagged(tagged);
        }
        match &mut self.0 {
            List::Tagged(items) => items,
            List::Plain(_) => unreachable!("made tagged above"),
        }
    }

    /// Adds an item without acknowledgement. An empty list goes back to
    /// plain items (those with tags have left it).
    #[inline(always)]
    pub(crate) fn push(&mut self, item: T) {
        match &mut self.0 {
            List::Plain(items) => items.push(item),
            List::Tagged(_) => self.push_beside_tags(item),
        }
    }

    /// [`push`](Self::push) into a list held with tags.
    #[inline(never)]
    fn push_beside_tags(&mut self, item: T) {
        match &mut self.0 {
            List::Tagged(items) if !items.is_empty() => items.push((item, Tag::NONE)),
            List::Tagged(items) => {
                let mut plain = Vec::with_capacity(items.capacity());
                plain.push(item);
                self.0 = List::Plain(plain);
            }
            List::Plain(items) => items.push(item),
        }
    }

    /// Adds an item holding `tag`. (Inlined always, so that where `tag`
    /// is known to hold nothing the check goes.)
    #[inline(always)]
    pub(crate) fn push_tagged(&mut self, item: T, tag: Tag) {
        if tag.is_some() {
            self.push_with_tag(item, tag);
        } else {
            self.push(item);
        }
    }

    /// Adds an item holding `tag`, held with a tag whatever `tag` holds
    /// (so that [`set_tag`](Self::set_tag) of the item finds its place).
    #[inline]
    pub(crate) fn push_with_tag(&mut self, item: T, tag: Tag) {
        match &mut self.0 {
            List::Tagged(items) => items.push((item, tag)),
            List::Plain(_) => self.push_first_tag(item, tag),
        }
    }

    /// [`push_with_tag`](Self::push_with_tag) into a plain list.
    fn push_first_tag(&mut self, item: T, tag: Tag) {
        self.tagged().push((item, tag));
    }

    /// Takes the last item and its tag.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<(T, Tag)> {
        match &mut self.0 {
            List::Plain(items) => items.pop().map(|item| (item, Tag::NONE)),
            List::Tagged(items) => items.pop(),
        }
    }

    /// Takes the last item of a list that holds no tags (`Ok(None)` if it
    /// is empty); `Err` if it holds tags, for [`pop`](Self::pop) to take
    /// the item with its tag.
    #[inline(always)]
    pub(crate) fn pop_plain(&mut self) -> Result<Option<T>, HasTags> {
        match &mut self.0 {
            List::Plain(items) => Ok(items.pop()),
            List::Tagged(_) => Err(HasTags),
        }
    }

    /// Takes the last item and its tag, as [`pop`](Self::pop) does if
    /// `TAGS`; otherwise from a list known to hold no tags, giving
    /// [`Tag::NONE`] as a constant (so that the checks of the tag that
    /// follow go).
    ///
    /// # Panics
    ///
    /// Without `TAGS`, if the list holds its items with tags: the caller
    /// checked it did not, and nothing pushed a tagged item since.
    #[inline(always)]
    pub(crate) fn pop_checked<const TAGS: bool>(&mut self) -> Option<(T, Tag)> {
        if TAGS {
            return self.pop();
        }
        match &mut self.0 {
            List::Plain(items) => items.pop().map(|item| (item, Tag::NONE)),
            List::Tagged(_) => unreachable!("a list checked plain took an item with a tag"),
        }
    }

    /// Takes the first item and its tag (moving the others).
    pub(crate) fn remove_first(&mut self) -> Option<(T, Tag)> {
        if self.is_empty() {
            return None;
        }
        Some(match &mut self.0 {
            List::Plain(items) => (items.remove(0), Tag::NONE),
            List::Tagged(items) => items.remove(0),
        })
    }

    #[inline]
    pub(crate) fn last(&self) -> Option<&T> {
        match &self.0 {
            List::Plain(items) => items.last(),
            List::Tagged(items) => items.last().map(|(item, _)| item),
        }
    }

    /// Gives the item at `at` the tag `tag`, dropping the one it had.
    ///
    /// # Panics
    ///
    /// If `at` is out of range.
    #[inline]
    pub(crate) fn set_tag(&mut self, at: usize, tag: Tag) {
        if let List::Tagged(items) = &mut self.0 {
            if let Some((_, slot)) = items.get_mut(at) {
                *slot = tag;
                return;
            }
        }
        self.set_tag_plain(at, tag);
    }

    /// [`set_tag`](Self::set_tag) in a plain list (or out of range).
    fn set_tag_plain(&mut self, at: usize, tag: Tag) {
        assert!(at < self.len(), "no item at {at}");
        if tag.is_some() {
            self.tagged()[at].1 = tag;
        }
    }

    #[inline]
    pub(crate) fn reverse(&mut self) {
        match &mut self.0 {
            List::Plain(items) => items.reverse(),
            List::Tagged(items) => items.reverse(),
        }
    }

    /// Swaps two items, with their tags.
    #[inline]
    pub(crate) fn swap(&mut self, a: usize, b: usize) {
        match &mut self.0 {
            List::Plain(items) => items.swap(a, b),
            List::Tagged(items) => items.swap(a, b),
        }
    }

    /// Drops every item, with its tag.
    pub(crate) fn clear(&mut self) {
        match &mut self.0 {
            List::Plain(items) => items.clear(),
            List::Tagged(items) => items.clear(),
        }
    }

    /// Drops every item and gives back their tags (empty if the items
    /// were plain).
    pub(crate) fn take_tags(&mut self) -> Vec<Tag> {
        match std::mem::take(self).0 {
            List::Plain(_) => Vec::new(),
            List::Tagged(items) => items.into_iter().map(|(_, tag)| tag).collect(),
        }
    }

    /// The items, and their tags (empty if the items were plain).
    pub(crate) fn into_parts(self) -> (Vec<T>, Vec<Tag>) {
        match self.0 {
            List::Plain(items) => (items, Vec::new()),
            List::Tagged(items) => items.into_iter().unzip(),
        }
    }

    /// Moves every item of `other` after these.
    pub(crate) fn append(&mut self, other: &mut Items<T>) {
        match (&mut self.0, &mut other.0) {
            (List::Plain(items), List::Plain(more)) => items.append(more),
            (List::Tagged(items), List::Tagged(more)) => items.append(more),
            (List::Tagged(items), List::Plain(more)) => items.extend(more.drain(..).map(|item| (item, Tag::NONE))),
            (List::Plain(_), List::Tagged(more)) => self.tagged().append(more),
        }
    }

    /// Moves every item of `other` before these, last to first (for a list
    /// that is popped from its end).
    pub(crate) fn prepend_reversed(&mut self, other: &mut Items<T>) {
        match (&mut self.0, &mut other.0) {
            (List::Plain(items), List::Plain(more)) => drop(items.splice(0..0, more.drain(..).rev())),
            (List::Tagged(items), List::Tagged(more)) => drop(items.splice(0..0, more.drain(..).rev())),
            (List::Tagged(items), List::Plain(more)) => {
                drop(items.splice(0..0, more.drain(..).rev().map(|item| (item, Tag::NONE))));
            }
            (List::Plain(_), List::Tagged(more)) => drop(self.tagged().splice(0..0, more.drain(..).rev())),
        }
    }

    /// Takes the first `n` items (all if fewer) with their tags.
    pub(crate) fn split_front(&mut self, n: usize) -> Items<T> {
        let n = n.min(self.len());
        match &mut self.0 {
            List::Plain(items) => Items(List::Plain(items.drain(..n).collect())),
            List::Tagged(items) => Items(List::Tagged(items.drain(..n).collect())),
        }
    }
}

impl<T> FromIterator<T> for Items<T> {
    /// Items without acknowledgement.
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        Items(List::Plain(items.into_iter().collect()))
    }
}

/// (Tests read a list's items with their tags this way.)
#[cfg(test)]
impl<T> IntoIterator for Items<T> {
    type Item = (T, Tag);
    type IntoIter = Pairs<T>;

    /// The items with their tags, in order.
    fn into_iter(self) -> Pairs<T> {
        match self.0 {
            List::Plain(items) => Pairs::Plain(items.into_iter()),
            List::Tagged(items) => Pairs::Tagged(items.into_iter()),
        }
    }
}

/// The items of an [`Items`] with their tags, in order.
#[cfg(test)]
pub(crate) enum Pairs<T> {
    Plain(std::vec::IntoIter<T>),
    Tagged(std::vec::IntoIter<(T, Tag)>),
}

#[cfg(test)]
impl<T> Iterator for Pairs<T> {
    type Item = (T, Tag);

    fn next(&mut self) -> Option<(T, Tag)> {
        match self {
            Pairs::Plain(items) => items.next().map(|item| (item, Tag::NONE)),
            Pairs::Tagged(items) => items.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Pairs::Plain(items) => items.size_hint(),
            Pairs::Tagged(items) => items.size_hint(),
        }
    }
}

/// A queue's items, held as [`Items`] holds them: plain while none of
/// those queued has an acknowledgement.
pub(crate) struct Queued<T>(Deque<T>);

enum Deque<T> {
    Plain(Slots<T>),
    Tagged(Slots<(T, Tag)>),
}

impl<T> Default for Queued<T> {
    fn default() -> Self {
        Queued::new()
    }
}

impl<T> Queued<T> {
    /// An empty queue; allocates nothing.
    pub(crate) const fn new() -> Self {
        Queued(Deque::Plain(Slots::new()))
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        match &self.0 {
            Deque::Plain(items) => items.len(),
            Deque::Tagged(items) => items.len(),
        }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The deque of items beside their tags, made from the plain one.
    fn tagged(&mut self) -> &mut Slots<(T, Tag)> {
        if let Deque::Plain(items) = &mut self.0 {
            let mut tagged = Slots::with_capacity(items.len());
            tagged.extend(items.take_all().map(|item| (item, Tag::NONE)));
            self.0 = Deque::Tagged(tagged);
        }
        match &mut self.0 {
            Deque::Tagged(items) => items,
            Deque::Plain(_) => unreachable!("made tagged above"),
        }
    }

    /// Adds an item holding `tag` at the back.
    pub(crate) fn push_back(&mut self, item: T, tag: Tag) {
        match &mut self.0 {
            Deque::Plain(items) if !tag.is_some() => items.push_back(item),
            Deque::Tagged(items) => items.push_back((item, tag)),
            Deque::Plain(_) => self.tagged().push_back((item, tag)),
        }
    }

    /// Moves the first `n` items of `from` (all if fewer) to the back;
    /// returns how many moved. An empty queue takes the form of `from`.
    pub(crate) fn extend_from(&mut self, from: &mut Items<T>, n: usize) -> usize {
        let n = n.min(from.len());
        if self.is_empty() && from.has_tags() != matches!(self.0, Deque::Tagged(_)) {
            // The form of what comes: a queue whose tagged items have left
            // goes back to plain items.
            self.0 = if from.has_tags() {
                Deque::Tagged(Slots::with_capacity(n))
            } else {
                Deque::Plain(Slots::with_capacity(n))
            };
        }
        match (&mut self.0, &mut from.0) {
            (Deque::Plain(items), List::Plain(more)) => items.move_in(more, n),
            (Deque::Tagged(items), List::Tagged(more)) => items.move_in(more, n),
            (Deque::Tagged(items), List::Plain(more)) => {
                items.extend(more.drain(..n).map(|item| (item, Tag::NONE)));
            }
            (Deque::Plain(_), List::Tagged(more)) => self.tagged().extend(more.drain(..n)),
        }
        n
    }

    /// An empty `out` takes the form of this queue (plain or tagged
    /// items), with room for `n`; one that holds items stays as it is.
    #[inline(always)]
    fn lend_form(&self, n: usize, out: &mut Items<T>) {
        if out.is_empty() && out.has_tags() != matches!(self.0, Deque::Tagged(_)) {
            out.0 = match self.0 {
                Deque::Tagged(_) => List::Tagged(Vec::with_capacity(n)),
                Deque::Plain(_) => List::Plain(Vec::with_capacity(n)),
            };
        }
    }

    /// Moves the first `n` items to the back of `out` (an empty `out`
    /// takes the form of this queue).
    ///
    /// # Panics
    ///
    /// If fewer than `n` items are queued.
    #[inline]
    pub(crate) fn pop_into(&mut self, n: usize, out: &mut Items<T>) {
        self.lend_form(n, out);
        // Items of the same form move in bulk (see `Slots`).
        match (&mut self.0, &mut out.0) {
            (Deque::Plain(items), List::Plain(into)) => items.move_front(n, into),
            (Deque::Tagged(items), List::Tagged(into)) => items.move_front(n, into),
            (Deque::Plain(items), List::Tagged(into)) => items.map_front(n, into, |item| (item, Tag::NONE)),
            (Deque::Tagged(items), List::Plain(_)) => items.move_front(n, out.tagged()),
        }
    }

    /// Moves the first `n` items into `out`, which is empty, last to first
    /// (the first item taken ends up last): a batch ready to be popped
    /// from its end, without reversing it after. Takes the form of this
    /// queue, as [`pop_into`](Self::pop_into).
    ///
    /// # Panics
    ///
    /// If fewer than `n` items are queued.
    #[inline]
    pub(crate) fn pop_into_reversed(&mut self, n: usize, out: &mut Items<T>) {
        debug_assert!(out.is_empty(), "items taken last to first into a list that holds some");
        if out.is_empty() {
            self.lend_form(n, out);
            match (&mut self.0, &mut out.0) {
                (Deque::Plain(items), List::Plain(into)) => return items.move_front_reversed(n, into),
                (Deque::Tagged(items), List::Tagged(into)) => return items.move_front_reversed(n, into),
                _ => {}
            }
        }
        // Only a list that held items already (which callers do not
        // give): its own items are popped first, then those taken.
        let mut taken = Items::new();
        self.pop_into(n, &mut taken);
        taken.reverse();
        taken.append(out);
        *out = taken;
    }

    /// Moves the first `n` plain items into `out`.
    ///
    /// # Panics
    ///
    /// If some item queued has a tag, or fewer than `n` are queued.
    #[cfg(test)]
    pub(crate) fn pop_plain(&mut self, n: usize, out: &mut Vec<T>) {
        match &mut self.0 {
            Deque::Plain(items) => items.move_front(n, out),
            Deque::Tagged(_) => panic!("a test's items carry no tags"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::{Items, Queued, Tag};
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
        // Into a queue of plain items, then out again.
        let mut queue = Queued::new();
        let mut plain: Items<u32> = [10, 11].into_iter().collect();
        assert_eq!(queue.extend_from(&mut plain, 5), 2);
        assert_eq!(queue.extend_from(&mut items, 2), 2);
        assert_eq!(queue.len(), 4);
        let mut out: Items<u32> = Items::new();
        queue.pop_into(4, &mut out);
        assert!(queue.is_empty());
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
    fn items_taken_last_to_first_pop_in_order_with_their_tags() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut queue = Queued::new();
        let mut plain: Items<u32> = (0..3).collect();
        queue.extend_from(&mut plain, 3);
        // Plain items into a plain list.
        let mut out = Items::new();
        queue.pop_into_reversed(2, &mut out);
        assert_eq!(out.iter().copied().collect::<Vec<_>>(), [1, 0]);
        assert_eq!(out.pop().map(|(item, _)| item), Some(0));
        // Tagged items into an empty list that held plain ones.
        let mut tagged: Items<u32> = Items::new();
        tagged.push_tagged(3, tag(&log, 3));
        queue.extend_from(&mut tagged, 1);
        let mut out: Items<u32> = [7].into_iter().collect();
        out.pop();
        queue.pop_into_reversed(2, &mut out);
        let pairs: Vec<(u32, bool)> =
            std::iter::from_fn(|| out.pop()).map(|(item, tag)| (item, tag.is_some())).collect();
        assert_eq!(pairs, [(2, false), (3, true)]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_list_and_a_queue_go_back_to_plain_items_once_the_tagged_ones_left() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut items: Items<u32> = Items::new();
        items.push_tagged(0, tag(&log, 0));
        let mut queue = Queued::new();
        queue.extend_from(&mut items, 1);
        let mut out = Items::new();
        queue.pop_into(1, &mut out);
        let (zero, held) = out.pop().unwrap();
        assert_eq!(zero, 0);
        held.release();
        // Empty, they take plain items as plain items again.
        out.push(1);
        assert!(!out.has_tags());
        queue.extend_from(&mut out, 1);
        let mut plain = Vec::new();
        queue.pop_plain(1, &mut plain);
        assert_eq!(plain, [1]);
        assert_eq!(delivered(&log), [0]);
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
