//! Sending items into a stage from outside the pipeline.

use std::{
    fmt,
    pin::{Pin, pin},
    task::{Context, Poll},
};

use futures::{FutureExt, Stream, StreamExt};

use super::{
    HANDOVER,
    ack::{Ack, items::Items, tag::Tagged},
    dispatch::Dispatch,
    queue::{Closed, TryPush, Waiter},
};
use crate::SendError;

/// The most items [`Input::feed`] moves into a queue at once: room for
/// them is reserved once, and they are committed together (one lock of the
/// queue and one wake-up of its readers per chunk). Items are taken from
/// the stream only while they are ready, so a slow stream's items are not
/// held back to fill a chunk; a chunk holds no more room than the queue
/// has free.
const FEED: usize = HANDOVER;

/// The input of one stage, as seen from outside: what the pipeline's `send`,
/// `try_send`, `feed` and sinks use.
pub(crate) struct Input<T> {
    dispatch: Dispatch<T>,
}

impl<T: Send + 'static> Input<T> {
    pub(crate) fn new(dispatch: Dispatch<T>) -> Self {
        Input { dispatch }
    }

    pub(crate) fn dispatch(&self) -> &Dispatch<T> {
        &self.dispatch
    }

    pub(crate) async fn send(&self, item: T) -> Result<(), SendError<T>> {
        self.send_tagged(Tagged::bare(item)).await.map_err(|e| e.map_message(|tagged| tagged.item))
    }

    pub(crate) fn try_send(&self, item: T) -> Result<(), SendError<T>> {
        self.try_send_tagged(Tagged::bare(item)).map_err(|e| e.map_message(|tagged| tagged.item))
    }

    /// Sends an item with its tag; the error hands both back.
    pub(crate) async fn send_tagged(&self, tagged: Tagged<T>) -> Result<(), SendError<Tagged<T>>> {
        let queue = match self.dispatch.route(&tagged.item) {
            Ok(queue) => queue,
            Err(panic) => return Err(SendError::KeyPanicked { message: tagged, panic }),
        };
        match queue.reserve(1).await {
            Ok(room) => {
                room.commit_one(tagged.item, tagged.tag);
                Ok(())
            }
            Err(Closed) => Err(SendError::Closed(tagged)),
        }
    }

    pub(crate) fn try_send_tagged(&self, tagged: Tagged<T>) -> Result<(), SendError<Tagged<T>>> {
        let queue = match self.dispatch.route(&tagged.item) {
            Ok(queue) => queue,
            Err(panic) => return Err(SendError::KeyPanicked { message: tagged, panic }),
        };
        queue.try_push_tagged(tagged.item, tagged.tag).map_err(|e| match e {
            TryPush::Full((item, tag)) => SendError::Full(Tagged { item, tag }),
            TryPush::Closed((item, tag)) => SendError::Closed(Tagged { item, tag }),
        })
    }

    /// Sends every item of `items`, in order, waiting for room as needed.
    /// An item is taken from the stream only once there is room for it, so
    /// if the stage closes first (or its key function panics on the item),
    /// the one item in hand comes back in the error and the rest stays in
    /// the stream.
    pub(crate) async fn feed<S>(&self, items: S) -> Result<usize, SendError<T>>
    where
        S: Stream<Item = T> + Send,
    {
        self.feed_tagged(items.map(Tagged::bare)).await.map_err(|e| e.map_message(|tagged| tagged.item))
    }

    /// [`feed`](Self::feed) of items with their tags.
    pub(crate) async fn feed_tagged<S>(&self, items: S) -> Result<usize, SendError<Tagged<T>>>
    where
        S: Stream<Item = Tagged<T>> + Send,
    {
        let mut items = pin!(items);
        let mut sent = 0;
        let mut batch = Items::new();
        // Whether the stream ended while items were taken without waiting:
        // it is not polled again.
        let mut ended = false;
        while !ended {
            let Some(first) = items.next().await else { break };
            let queue = match self.dispatch.route(&first.item) {
                Ok(queue) => queue,
                Err(panic) => return Err(SendError::KeyPanicked { message: first, panic }),
            };
            let room = match queue.reserve(FEED).await {
                Ok(room) => room,
                Err(Closed) => return Err(SendError::Closed(first)),
            };
            batch.push_tagged(first.item, first.tag);
            if let Dispatch::Shared(_) = self.dispatch {
                // Take more items only while they are ready and there is room.
                while batch.len() < room.len() {
                    match items.next().now_or_never() {
                        Some(Some(Tagged { item, tag })) => batch.push_tagged(item, tag),
                        Some(None) => {
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
            }
            sent += batch.len();
            room.commit(&mut batch);
        }
        Ok(sent)
    }

    /// A new sink into this input.
    pub(crate) fn sink(&self) -> InputSink<T> {
        InputSink { dispatch: self.dispatch.clone(), pending: None, waiter: Waiter::new() }
    }
}

impl<T> Clone for Input<T> {
    fn clone(&self) -> Self {
        Input { dispatch: self.dispatch.clone() }
    }
}

/// A [`futures::Sink`] into a stage of a pipeline, made by the pipeline's
/// `sink()` (into the first stage) or `sink_<stage>()` methods.
///
/// Cloning gives another sender into the same stage; closing or dropping one
/// sink only drops that sender, it does not close the stage. The sink holds
/// at most one item while it waits for room; `poll_flush` delivers it.
///
/// # Errors
///
/// [`SendError::Closed`] once the pipeline has shut down, holding the item;
/// [`SendError::KeyPanicked`], holding it, if the stage's `partition_by`
/// key function panicked on it.
pub struct InputSink<T> {
    dispatch: Dispatch<T>,
    pending: Option<Tagged<T>>,
    /// Its place in line for room in the pending item's queue.
    waiter: Waiter,
}

// Items are never pinned in place.
impl<T> Unpin for InputSink<T> {}

impl<T> InputSink<T> {
    fn poll_deliver(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError<Tagged<T>>>> {
        let Some(Tagged { item, .. }) = &self.pending else {
            return Poll::Ready(Ok(()));
        };
        let queue = match self.dispatch.route(item) {
            Ok(queue) => queue,
            Err(panic) => {
                let message = self.pending.take().expect("checked above");
                return Poll::Ready(Err(SendError::KeyPanicked { message, panic }));
            }
        };
        match queue.poll_reserve(cx, &mut self.waiter, 1) {
            Poll::Ready(Ok(_)) => {
                let Tagged { item, tag } = self.pending.take().expect("checked above");
                queue.commit_one(item, tag);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(Closed)) => {
                Poll::Ready(Err(SendError::Closed(self.pending.take().expect("checked above"))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_bare(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError<T>>> {
        self.poll_deliver(cx).map_err(|e| e.map_message(|tagged| tagged.item))
    }

    fn poll_acked(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError<(T, Ack)>>> {
        self.poll_deliver(cx).map_err(|e| e.map_message(|tagged| (tagged.item, Ack(tagged.tag))))
    }

    fn start(&mut self, tagged: Tagged<T>) {
        assert!(self.pending.is_none(), "start_send called without poll_ready");
        self.pending = Some(tagged);
    }
}

impl<T> futures::Sink<T> for InputSink<T> {
    type Error = SendError<T>;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_bare(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), Self::Error> {
        self.get_mut().start(Tagged::bare(item));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_bare(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_bare(cx)
    }
}

impl<T> Drop for InputSink<T> {
    fn drop(&mut self) {
        // Only waiting with an item in hand fills the waiter.
        // (a key that panics never filled it).
        if let Some(Ok(queue)) = self.pending.as_ref().map(|tagged| self.dispatch.route(&tagged.item)) {
            queue.cancel(&mut self.waiter);
        }
    }
}

impl<T> Clone for InputSink<T> {
    fn clone(&self) -> Self {
        InputSink { dispatch: self.dispatch.clone(), pending: None, waiter: Waiter::new() }
    }
}

impl<T> fmt::Debug for InputSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputSink").field("pending", &self.pending.is_some()).finish_non_exhaustive()
    }
}

/// The input of a pipeline's first stage for items sent with an
/// acknowledgement: what the pipeline's `acked()` returns (see
/// [`genflow::ack`](crate::ack)). `Clone`; each copy sends into the same
/// stage.
///
/// Its methods are those of the pipeline's `send`, `try_send`, `feed` and
/// `sink`, with an [`Ack`] beside each item. An item that was not
/// accepted comes back in the error *with* its `Ack`, which has not fired:
/// send it again, or drop the `Ack` to report it dropped.
pub struct AckedInput<T> {
    input: Input<T>,
}

impl<T: Send + 'static> AckedInput<T> {
    pub(crate) fn new(input: Input<T>) -> Self {
        AckedInput { input }
    }

    /// Sends one item with its acknowledgement, waiting while the queue is
    /// full.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] once the pipeline is shutting down,
    /// [`SendError::KeyPanicked`] if the stage's `partition_by` key
    /// function panicked on the item; each holds the item and its `Ack`.
    ///
    /// # Cancel safety
    ///
    /// If dropped before it completes, the item was not sent, and its
    /// `Ack`, dropped with it, reports it dropped.
    pub async fn send(&self, item: T, ack: Ack) -> Result<(), SendError<(T, Ack)>> {
        self.input.send_tagged(Tagged::new(item, ack.0)).await.map_err(untag)
    }

    /// Sends one item with its acknowledgement if the queue has room,
    /// without waiting.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), and [`SendError::Full`] if the queue is
    /// full.
    pub fn try_send(&self, item: T, ack: Ack) -> Result<(), SendError<(T, Ack)>> {
        self.input.try_send_tagged(Tagged::new(item, ack.0)).map_err(untag)
    }

    /// Sends every `(item, Ack)` pair of `items`, in order, waiting for
    /// room as needed (backpressure), and returns how many went in.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send): the one pair in hand comes back; the rest
    /// stays in the stream.
    ///
    /// # Cancel safety
    ///
    /// Items sent before the future is dropped stay sent; at most the one
    /// in hand is lost (and reported dropped).
    pub async fn feed(&self, items: impl Stream<Item = (T, Ack)> + Send) -> Result<usize, SendError<(T, Ack)>> {
        self.input.feed_tagged(items.map(|(item, ack)| Tagged::new(item, ack.0))).await.map_err(untag)
    }

    /// Completes once the stage's input is closed (the pipeline is
    /// shutting down, or was aborted): from then on every send is
    /// refused. For a source that waits for items to send and should stop
    /// when nobody takes them any more.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    pub async fn closed(&self) {
        let queues = self.input.dispatch().queues();
        // The queues of a stage close together; each is waited for.
        futures::future::poll_fn(|cx| {
            let mut open = false;
            for queue in queues {
                open |= queue.poll_closed(cx).is_pending();
            }
            if open { Poll::Pending } else { Poll::Ready(()) }
        })
        .await;
    }

    /// A `futures::Sink` of `(item, Ack)` pairs into the stage. Clone it
    /// for more senders; closing one only drops that sender.
    pub fn sink(&self) -> AckedSink<T> {
        AckedSink { inner: self.input.sink() }
    }
}

fn untag<T>(error: SendError<Tagged<T>>) -> SendError<(T, Ack)> {
    error.map_message(|tagged| (tagged.item, Ack(tagged.tag)))
}

impl<T> Clone for AckedInput<T> {
    fn clone(&self) -> Self {
        AckedInput { input: self.input.clone() }
    }
}

impl<T> fmt::Debug for AckedInput<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckedInput").finish_non_exhaustive()
    }
}

/// A [`futures::Sink`] of `(item, Ack)` pairs into a pipeline's first
/// stage, made by [`AckedInput::sink`]; otherwise as [`InputSink`].
///
/// # Errors
///
/// As [`InputSink`]'s, each holding the item and its `Ack`.
pub struct AckedSink<T> {
    inner: InputSink<T>,
}

impl<T> futures::Sink<(T, Ack)> for AckedSink<T> {
    type Error = SendError<(T, Ack)>;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.poll_acked(cx)
    }

    fn start_send(self: Pin<&mut Self>, (item, ack): (T, Ack)) -> Result<(), Self::Error> {
        self.get_mut().inner.start(Tagged::new(item, ack.0));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.poll_acked(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.poll_acked(cx)
    }
}

impl<T> Clone for AckedSink<T> {
    fn clone(&self) -> Self {
        AckedSink { inner: self.inner.clone() }
    }
}

impl<T> fmt::Debug for AckedSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckedSink").field("inner", &self.inner).finish()
    }
}
