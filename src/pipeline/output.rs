use std::{
    fmt,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use futures::Stream;

use super::{
    BATCH,
    ack::{Held, items::Items, tag::Tag},
    queue::{Queue, Waiter},
};

/// The items the last stage of a pipeline emits, as a [`Stream`].
///
/// Returned once by the pipeline's `output()` method. The stream ends after
/// the pipeline has shut down and every item was delivered. While the
/// output is not taken (or after it was dropped), the last stage's items are
/// dropped and counted, so a pipeline used for its side effects never
/// blocks; once it is taken, not reading it is backpressure that reaches
/// the head.
#[must_use = "streams do nothing unless polled"]
pub struct Output<T> {
    shared: Arc<OutputShared<T>>,
    /// Last to first: the next item is popped from the end.
    buf: Items<T>,
    done: bool,
    /// Its place in the queue's line of readers.
    waiter: Waiter,
}

// Items are never pinned in place.
impl<T> Unpin for Output<T> {}

/// The output queue and what the pipeline and the `Output` share about it.
pub(crate) struct OutputShared<T> {
    pub(crate) queue: Arc<Queue<T>>,
    /// Whether somebody took the output (and has not dropped it).
    pub(crate) taken: Arc<AtomicBool>,
    /// Items dropped because the output was dropped while holding them in
    /// its buffer (those in its queue are the queue's `discarded`).
    pub(crate) dropped: AtomicU64,
}

impl<T> OutputShared<T> {
    /// Items the last stage emitted that no reader got: dropped from the
    /// output's buffer or queue when it was dropped, or committed to its
    /// queue after.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed) + self.queue.discarded()
    }

    pub(crate) fn new(capacity: usize) -> Self {
        OutputShared {
            queue: Arc::new(Queue::new(capacity)),
            taken: Arc::new(AtomicBool::new(false)),
            dropped: AtomicU64::new(0),
        }
    }
}

impl<T> Output<T> {
    pub(crate) fn new(shared: Arc<OutputShared<T>>) -> Self {
        shared.taken.store(true, Ordering::Release);
        Output { shared, buf: Items::new(), done: false, waiter: Waiter::new() }
    }
}

impl<T> Output<T> {
    /// The same stream, each item with its [`Held`] acknowledgements, for a
    /// reader that finishes the items' work itself: an item taken from an
    /// `AckedOutput` is not delivered until its `Held` is released (see
    /// [`AckedOutput`]). Items taken from a plain `Output` are delivered
    /// as they are taken.
    pub fn acked(self) -> AckedOutput<T> {
        AckedOutput { inner: self }
    }

    fn poll_tagged(&mut self, cx: &mut Context<'_>) -> Poll<Option<(T, Tag)>> {
        if let Some(tagged) = self.buf.pop() {
            return Poll::Ready(Some(tagged));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.shared.queue.poll_pop(cx, &mut self.waiter, &mut self.buf, BATCH) {
            Poll::Ready(true) => {
                self.buf.reverse();
                Poll::Ready(self.buf.pop())
            }
            Poll::Ready(false) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Taking an item from the output delivers it: its acknowledgements, if
/// it has any, are released.
impl<T> Stream for Output<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.get_mut().poll_tagged(cx).map(|tagged| {
            tagged.map(|(item, tag)| {
                tag.release();
                item
            })
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.buf.len(), if self.done { Some(self.buf.len()) } else { None })
    }
}

impl<T> Drop for Output<T> {
    fn drop(&mut self) {
        self.shared.taken.store(false, Ordering::Release);
        self.shared.queue.cancel(&mut self.waiter);
        self.shared.queue.close_and_clear();
        self.shared.dropped.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
    }
}

impl<T> fmt::Debug for Output<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output").field("buffered", &self.buf.len()).field("done", &self.done).finish()
    }
}

/// The pipeline's output with each item's acknowledgements: a `Stream` of
/// `(item, Held)` pairs, made by [`Output::acked`].
///
/// The reader finishes each item's work (writes it somewhere, sends it
/// on) and then [`release`](Held::release)s its `Held` (delivered) or
/// [`fail`](Held::fail)s it; a `Held` dropped without either reports its
/// inputs dropped. An item sent without acknowledgement comes with an
/// empty `Held`. Otherwise it behaves as [`Output`]: `Unpin + Send`, ends
/// when the pipeline has drained, and what it still buffers when dropped
/// counts as dropped.
#[must_use = "streams do nothing unless polled"]
pub struct AckedOutput<T> {
    inner: Output<T>,
}

impl<T> Stream for AckedOutput<T> {
    type Item = (T, Held);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<(T, Held)>> {
        self.get_mut().inner.poll_tagged(cx).map(|tagged| tagged.map(|(item, tag)| (item, Held::new(tag, "output", 0))))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<T> fmt::Debug for AckedOutput<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckedOutput").field("inner", &self.inner).finish()
    }
}
