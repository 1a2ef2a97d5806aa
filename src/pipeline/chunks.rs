//! A queue's items, kept in chunks of up to [`BATCH`] so that batches move
//! whole.
//!
//! Items are pushed into the last chunk until it holds a batch, then into a
//! new one. A reader that takes a whole chunk into an empty batch buffer
//! swaps the two buffers instead of moving the items one by one; the
//! buffer it had is kept, empty, for a chunk to come. So a stream of full
//! batches moves through a queue at a constant cost per batch, and a
//! steady stream allocates nothing.
//!
//! Every buffer that goes round (chunks, spares, readers' batches) holds
//! about a batch: a spare is kept only if its capacity is between one and
//! two batches. Spares are kept while the chunks and the spares together
//! are no more than a full queue's chunks, so a queue keeps (for reuse)
//! about the memory it needed at its fullest, as a single buffer grown to
//! that size would; a queue that never filled up keeps less.

use std::collections::VecDeque;

use super::BATCH;

/// The items of a chunk, at most.
const CHUNK: usize = BATCH;

/// A first-in, first-out sequence of items, stored as chunks.
pub(crate) struct Chunks<T> {
    /// Oldest first; none is empty, none holds more than [`CHUNK`].
    chunks: VecDeque<VecDeque<T>>,
    /// Items in all chunks.
    len: usize,
    /// Empty buffers for new chunks.
    spares: Vec<VecDeque<T>>,
    /// The chunks of `capacity` items, plus one: how many buffers (chunks
    /// and spares) are kept at most.
    buffers: usize,
}

impl<T> Chunks<T> {
    /// An empty sequence for up to `capacity` items (more fit, but spares
    /// are kept for that many only); allocates nothing.
    pub(crate) const fn new(capacity: usize) -> Self {
        Chunks { chunks: VecDeque::new(), len: 0, spares: Vec::new(), buffers: capacity.div_ceil(CHUNK) + 1 }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// An empty buffer for a new chunk.
    fn fresh(&mut self) -> VecDeque<T> {
        self.spares.pop().unwrap_or_else(|| VecDeque::with_capacity(CHUNK))
    }

    /// Keeps an empty buffer for a later chunk, if its size fits and there
    /// is room among the spares.
    fn recycle(&mut self, buffer: VecDeque<T>) {
        debug_assert!(buffer.is_empty());
        if self.spares.len() + self.chunks.len() < self.buffers && (CHUNK..=2 * CHUNK).contains(&buffer.capacity()) {
            self.spares.push(buffer);
        }
    }

    /// Appends one item.
    pub(crate) fn push_back(&mut self, item: T) {
        match self.chunks.back_mut() {
            Some(back) if back.len() < CHUNK => back.push_back(item),
            _ => {
                let mut chunk = self.fresh();
                chunk.push_back(item);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    /// Appends every item of `items`, in order.
    pub(crate) fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        let mut items = items.into_iter();
        loop {
            if self.chunks.back().is_none_or(|back| back.len() >= CHUNK) {
                let chunk = self.fresh();
                self.chunks.push_back(chunk);
            }
            let back = self.chunks.back_mut().expect("a chunk with room was just made");
            let before = back.len();
            back.extend(items.by_ref().take(CHUNK - before));
            let added = back.len() - before;
            self.len += added;
            if back.is_empty() {
                let empty = self.chunks.pop_back().expect("the chunk just looked at");
                self.recycle(empty);
                return;
            }
            if before + added < CHUNK || items.size_hint().1 == Some(0) {
                return;
            }
        }
    }

    /// Appends every item of `items`, leaving it empty. When they make a
    /// chunk on their own (the last chunk is full, they are a batch at
    /// most, and their buffer has a chunk's size), their buffer becomes
    /// the chunk and `items` gets a spare one instead of the items being
    /// moved one by one.
    pub(crate) fn append_vec(&mut self, items: &mut Vec<T>) {
        let whole = !items.is_empty()
            && items.len() <= CHUNK
            && (CHUNK..=2 * CHUNK).contains(&items.capacity())
            && self.chunks.back().is_none_or(|back| back.len() >= CHUNK);
        if whole {
            let spare = Vec::from(self.fresh());
            let chunk = std::mem::replace(items, spare);
            self.len += chunk.len();
            self.chunks.push_back(VecDeque::from(chunk));
        } else {
            self.extend(items.drain(..));
        }
    }

    /// Moves the first `n` items to the back of `out`, whole chunks by
    /// [`PopInto::take_chunk`].
    ///
    /// # Panics
    ///
    /// Panics if fewer than `n` items are held.
    pub(crate) fn pop_into(&mut self, out: &mut impl PopInto<T>, n: usize) {
        assert!(n <= self.len, "popped more items than held");
        let mut left = n;
        while left > 0 {
            let front = self.chunks.front_mut().expect("counted in `len`");
            if front.len() <= left {
                let mut chunk = self.chunks.pop_front().expect("the chunk just looked at");
                left -= chunk.len();
                out.take_chunk(&mut chunk);
                self.recycle(chunk);
            } else {
                out.extend(front.drain(..left));
                left = 0;
            }
        }
        self.len -= n;
    }

    /// Takes every item out, leaving the spares; for the caller to drop.
    pub(crate) fn take_all(&mut self) -> VecDeque<VecDeque<T>> {
        self.len = 0;
        std::mem::take(&mut self.chunks)
    }
}

/// Where a reader puts the items it takes out of a queue.
pub(crate) trait PopInto<T>: Extend<T> {
    /// Moves every item of `chunk` to the back of `self`, leaving `chunk`
    /// empty (its buffer may be another one afterwards).
    fn take_chunk(&mut self, chunk: &mut VecDeque<T>) {
        self.extend(chunk.drain(..));
    }
}

impl<T> PopInto<T> for Vec<T> {}

/// Takes an empty buffer's place: the chunk's buffer becomes the batch, and
/// the batch's buffer (empty) goes back to the queue.
impl<T> PopInto<T> for VecDeque<T> {
    fn take_chunk(&mut self, chunk: &mut VecDeque<T>) {
        if self.is_empty() {
            std::mem::swap(self, chunk);
        } else {
            self.append(chunk);
        }
    }
}

#[cfg(all(test, not(genflow_loom)))]
mod tests {
    use super::*;

    fn chunk_lens<T>(chunks: &Chunks<T>) -> Vec<usize> {
        chunks.chunks.iter().map(VecDeque::len).collect()
    }

    #[test]
    fn items_fill_chunks_of_a_batch_in_order() {
        let mut chunks = Chunks::new(1000);
        chunks.extend(0..CHUNK as u32 + 3);
        chunks.push_back(100);
        assert_eq!(chunk_lens(&chunks), [CHUNK, 4]);
        assert_eq!(chunks.len(), CHUNK + 4);
        let mut out = Vec::new();
        chunks.pop_into(&mut out, CHUNK + 4);
        let expected: Vec<u32> = (0..CHUNK as u32 + 3).chain([100]).collect();
        assert_eq!(out, expected);
        assert!(chunks.is_empty());
    }

    #[test]
    fn a_batch_in_a_buffer_of_its_own_becomes_a_chunk() {
        let mut chunks = Chunks::new(1000);
        let mut items: Vec<u32> = Vec::with_capacity(CHUNK);
        items.extend(0..5);
        let buffer = items.as_ptr();
        chunks.append_vec(&mut items);
        assert!(items.is_empty());
        assert!(items.capacity() >= CHUNK, "a spare buffer of a chunk's size");
        assert_eq!(chunks.chunks.back().unwrap().as_slices().0.as_ptr(), buffer);
        // The last chunk has room: the next items fill it instead.
        items.extend(5..8);
        let buffer = items.as_ptr();
        chunks.append_vec(&mut items);
        assert_eq!(items.as_ptr(), buffer, "kept its buffer");
        assert_eq!(chunk_lens(&chunks), [8]);
        let mut out = Vec::new();
        chunks.pop_into(&mut out, 8);
        assert_eq!(out, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn an_empty_extend_leaves_no_empty_chunk() {
        let mut chunks = Chunks::<u32>::new(1000);
        chunks.extend(std::iter::empty());
        assert!(chunks.chunks.is_empty());
        chunks.extend(0..CHUNK as u32);
        chunks.extend(std::iter::empty());
        assert_eq!(chunk_lens(&chunks), [CHUNK]);
    }

    #[test]
    fn a_whole_chunk_swaps_buffers_with_an_empty_batch() {
        let mut chunks = Chunks::new(1000);
        chunks.extend(0..CHUNK as u32 * 2);
        let mut batch = VecDeque::with_capacity(CHUNK);
        let batch_buffer = batch.as_slices().0.as_ptr();
        chunks.pop_into(&mut batch, CHUNK);
        assert_eq!(batch, (0..CHUNK as u32).collect::<VecDeque<_>>());
        // The batch's buffer went to the spares, for the next chunk.
        assert_eq!(chunks.spares.len(), 1);
        batch.clear();
        chunks.extend(100..101);
        assert_eq!(chunks.chunks.back().unwrap().as_slices().0.as_ptr(), batch_buffer);
        assert!(chunks.spares.is_empty());
    }

    #[test]
    fn a_partial_take_splits_the_front_chunk() {
        let mut chunks = Chunks::new(1000);
        chunks.extend(0..10u32);
        let mut batch = VecDeque::new();
        chunks.pop_into(&mut batch, 3);
        assert_eq!(batch, [0, 1, 2]);
        chunks.pop_into(&mut batch, 7);
        assert_eq!(batch, (0..10).collect::<VecDeque<_>>());
        assert!(chunks.is_empty());
        assert!(chunks.chunks.is_empty());
    }

    #[test]
    fn buffers_kept_are_bounded_by_a_full_queue_s_chunks() {
        // A queue of 3 chunks keeps 4 buffers: 1 holding items, 3 spares.
        let mut chunks = Chunks::<u32>::new(CHUNK * 3);
        chunks.push_back(1);
        for _ in 0..5 {
            chunks.recycle(VecDeque::with_capacity(CHUNK));
        }
        assert_eq!(chunks.spares.len(), 3);
        let mut batch = VecDeque::new();
        chunks.pop_into(&mut batch, 1);
        assert_eq!(batch, [1]);
        assert_eq!(chunks.spares.len(), 3, "a buffer of no capacity is not kept");
        // Buffers of another size than a chunk's are not kept.
        let mut other = Chunks::<u32>::new(CHUNK * 3);
        other.recycle(VecDeque::new());
        other.recycle(VecDeque::with_capacity(CHUNK * 8));
        assert!(other.spares.is_empty());
    }

    #[test]
    fn taking_all_leaves_it_empty() {
        let mut chunks = Chunks::new(100);
        chunks.extend(0..CHUNK as u32 + 1);
        let taken = chunks.take_all();
        assert_eq!(taken.iter().map(VecDeque::len).sum::<usize>(), CHUNK + 1);
        assert!(chunks.is_empty());
        chunks.push_back(7);
        let mut out = Vec::new();
        chunks.pop_into(&mut out, 1);
        assert_eq!(out, [7]);
    }
}
