//! Where items sent to a stage go: its one queue, or the queue of the
//! replica their key belongs to.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    panic::{self, AssertUnwindSafe},
    sync::Arc,
};

use super::{Panicked, ack::items::Items, queue::Queue};

/// The input queues of one stage, and how an item picks one.
pub(crate) enum Dispatch<T> {
    /// One queue; every replica takes from it when idle.
    Shared(Arc<Queue<T>>),
    /// One queue per replica; an item goes to the queue of its key.
    Keyed { queues: Arc<[Arc<Queue<T>>]>, key: fn(&T) -> u64 },
}

impl<T> Dispatch<T> {
    /// The queue `item` goes to.
    ///
    /// # Errors
    ///
    /// The key function of a `partition_by` stage panicked on `item`: the
    /// panic is caught here and its message returned, so the caller decides
    /// what becomes of the item (the sender's error, or a failure of the
    /// stage) and goes on.
    pub(crate) fn route(&self, item: &T) -> Result<&Queue<T>, Panicked> {
        match self {
            Dispatch::Shared(queue) => Ok(queue),
            Dispatch::Keyed { queues, key } => Ok(&queues[index(*key, queues.len(), item)?]),
        }
    }

    pub(crate) fn queues(&self) -> &[Arc<Queue<T>>] {
        match self {
            Dispatch::Shared(queue) => std::slice::from_ref(queue),
            Dispatch::Keyed { queues, .. } => queues,
        }
    }

    pub(crate) fn close(&self) {
        for queue in self.queues() {
            queue.close();
        }
    }
}

impl<T> Clone for Dispatch<T> {
    fn clone(&self) -> Self {
        match self {
            Dispatch::Shared(queue) => Dispatch::Shared(queue.clone()),
            Dispatch::Keyed { queues, key } => Dispatch::Keyed { queues: queues.clone(), key: *key },
        }
    }
}

/// The queue of `item` among `queues` keyed by `key`, or the panic of the
/// key function. The key function only reads the item; nothing it might
/// leave half-changed is used after a panic.
fn index<T>(key: fn(&T) -> u64, queues: usize, item: &T) -> Result<usize, Panicked> {
    match panic::catch_unwind(AssertUnwindSafe(|| key(item))) {
        Ok(hash) => Ok((hash % queues as u64) as usize),
        Err(panic) => Err(Panicked::new(&panic)),
    }
}

/// How many items [`group_by_queue`] sorts without allocating: a batch.
pub(crate) const GROUPED_INLINE: usize = super::BATCH;

/// A batch grouped by [`group_by_queue`].
pub(crate) struct Grouped {
    /// The queue of every item, in the order of the batch after grouping.
    pub(crate) groups: Groups,
    /// The panics of the key function, in order, one per item it panicked
    /// on; those items are last in the batch, in a run whose queue is the
    /// number of queues (one past the last).
    pub(crate) panics: Vec<Panicked>,
}

/// The queue of every item of a batch, in the order of the batch after
/// [`group_by_queue`]: kept inline for a batch, on the heap beyond.
pub(crate) enum Groups {
    Inline { queues: [u32; GROUPED_INLINE], len: usize },
    Heap(Vec<u32>),
}

impl Groups {
    fn as_slice(&self) -> &[u32] {
        match self {
            Groups::Inline { queues, len } => &queues[..*len],
            Groups::Heap(queues) => queues,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u32] {
        match self {
            Groups::Inline { queues, len } => &mut queues[..*len],
            Groups::Heap(queues) => queues,
        }
    }

    /// The runs of items bound for the same queue, in order: `(queue, len)`.
    pub(crate) fn runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.as_slice().chunk_by(|a, b| a == b).map(|run| (run[0] as usize, run.len()))
    }
}

/// Reorders `items` so that the items bound for each queue of `queues`
/// (chosen by `key`) are together, queues in index order, and the items of
/// one queue keep their order (so per-key order holds); returns which queue
/// each run goes to. Every key is computed once, and nothing is allocated
/// for a batch of up to [`GROUPED_INLINE`] items.
///
/// Sending a batch then takes one reservation per queue instead of one per
/// item. Items the key function panicked on go last, as if bound for a
/// queue one past the last, and their panics are returned in order.
pub(crate) fn group_by_queue<T>(items: &mut Items<T>, key: fn(&T) -> u64, queues: usize) -> Grouped {
    let n = items.len();
    let (mut inline, mut heap) = ([0u32; 2 * GROUPED_INLINE], Vec::new());
    let scratch: &mut [u32] = if n <= GROUPED_INLINE {
        &mut inline[..2 * n]
    } else {
        heap.resize(2 * n, 0);
        &mut heap
    };
    let (dests, order) = scratch.split_at_mut(n);
    let mut panics = Vec::new();
    for (dest, item) in dests.iter_mut().zip(items.iter()) {
        // A queue index is below the replica count, far below `u32::MAX`.
        *dest = match index(key, queues, item) {
            Ok(queue) => queue as u32,
            Err(panic) => {
                panics.push(panic);
                queues as u32
            }
        };
    }
    // `order[p]`: the old place of the item that goes to place `p`.
    if queues < GROUPED_INLINE {
        // A counting sort: each queue's run starts after the runs before it
        // (and the run of panicked keys, `queues`, after them all).
        let mut next = [0u32; GROUPED_INLINE];
        for &dest in dests.iter() {
            next[dest as usize] += 1;
        }
        let mut start = 0;
        for slot in &mut next[..=queues] {
            (*slot, start) = (start, start + *slot);
        }
        for (old, &dest) in dests.iter().enumerate() {
            order[next[dest as usize] as usize] = old as u32;
            next[dest as usize] += 1;
        }
    } else {
        // An unstable sort by (queue, old place) is stable and does not
        // allocate.
        for (place, slot) in order.iter_mut().enumerate() {
            *slot = place as u32;
        }
        order.sort_unstable_by_key(|&old| (dests[old as usize], old));
    }
    let mut groups = if n <= GROUPED_INLINE {
        Groups::Inline { queues: [0; GROUPED_INLINE], len: n }
    } else {
        Groups::Heap(vec![0; n])
    };
    for (slot, &old) in groups.as_mut_slice().iter_mut().zip(order.iter()) {
        *slot = dests[old as usize];
    }
    // Moves every item to its place by following the permutation's cycles;
    // a place done is marked by `order[p] == p`.
    for start in 0..n {
        let mut place = start;
        loop {
            let from = order[place] as usize;
            order[place] = place as u32;
            if from == start || from == place {
                break;
            }
            items.swap(place, from);
            place = from;
        }
    }
    Grouped { groups, panics }
}

/// Hashes a partition key the same way in every run.
pub fn hash_key<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::{GROUPED_INLINE, Groups, group_by_queue};
    use crate::pipeline::ack::items::Items;

    /// An item: (its key, its place in the batch).
    type Item = (u64, usize);

    fn key(item: &Item) -> u64 {
        item.0
    }

    /// Groups `keys` over `queues` and checks the result against a plain
    /// filter per queue: runs in queue order, each queue's items in their
    /// old order.
    fn check(keys: &[u64], queues: usize) {
        let mut tagged: Items<Item> = keys.iter().copied().zip(0..).collect();
        let grouped = group_by_queue(&mut tagged, key, queues);
        let items: Vec<Item> = tagged.into_iter().map(|(item, _)| item).collect();
        assert!(grouped.panics.is_empty());
        let groups = grouped.groups;
        let expected: Vec<Item> = (0..queues as u64)
            .flat_map(|queue| keys.iter().copied().zip(0..).filter(move |(k, _)| k % queues as u64 == queue))
            .collect();
        assert_eq!(items, expected, "{keys:?} over {queues} queues");
        let mut at = 0;
        for (queue, len) in groups.runs() {
            assert!(len > 0);
            assert!(items[at..at + len].iter().all(|(k, _)| (k % queues as u64) as usize == queue));
            at += len;
        }
        assert_eq!(at, items.len());
        let inline = matches!(groups, Groups::Inline { .. });
        assert_eq!(inline, keys.len() <= GROUPED_INLINE);
    }

    #[test]
    fn a_batch_is_grouped_by_queue_keeping_each_queues_order() {
        check(&[], 2);
        check(&[7], 2);
        check(&[1, 0, 1, 1, 0, 0, 1, 0], 2);
        check(&[4, 4, 4, 4], 3);
        let mixed: Vec<u64> = (0..GROUPED_INLINE as u64).map(|i| i * 7919 % 13).collect();
        check(&mixed, 3);
        check(&mixed, 5);
        // Longer than a batch, and more queues than the counting sort takes.
        let long: Vec<u64> = (0..100).map(|i| i * 104_729 % 97).collect();
        check(&long, 2);
        check(&long, GROUPED_INLINE + 8);
        check(&mixed, GROUPED_INLINE + 1);
    }
}
