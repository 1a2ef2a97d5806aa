//! Sending items into a stage from outside the pipeline.

use std::{
    fmt,
    pin::{Pin, pin},
    task::{Context, Poll},
};

use futures::{FutureExt, Stream, StreamExt};

use super::{
    BATCH,
    dispatch::Dispatch,
    queue::{Closed, TryPush, Waiter},
};
use crate::SendError;

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
        let queue = match self.dispatch.route(&item) {
            Ok(queue) => queue,
            Err(panic) => return Err(SendError::KeyPanicked { message: item, panic }),
        };
        match queue.reserve(1).await {
            Ok(room) => {
                room.commit([item]);
                Ok(())
            }
            Err(Closed) => Err(SendError::Closed(item)),
        }
    }

    pub(crate) fn try_send(&self, item: T) -> Result<(), SendError<T>> {
        let queue = match self.dispatch.route(&item) {
            Ok(queue) => queue,
            Err(panic) => return Err(SendError::KeyPanicked { message: item, panic }),
        };
        queue.try_push(item).map_err(|e| match e {
            TryPush::Full(item) => SendError::Full(item),
            TryPush::Closed(item) => SendError::Closed(item),
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
        let mut items = pin!(items);
        let mut sent = 0;
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(first) = items.next().await {
            let queue = match self.dispatch.route(&first) {
                Ok(queue) => queue,
                Err(panic) => return Err(SendError::KeyPanicked { message: first, panic }),
            };
            let room = match queue.reserve(BATCH).await {
                Ok(room) => room,
                Err(Closed) => return Err(SendError::Closed(first)),
            };
            batch.push(first);
            if let Dispatch::Shared(_) = self.dispatch {
                // Take more items only while they are ready and there is room.
                while batch.len() < room.len() {
                    match items.next().now_or_never() {
                        Some(Some(item)) => batch.push(item),
                        Some(None) => break,
                        None => break,
                    }
                }
            }
            sent += batch.len();
            room.commit(batch.drain(..));
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
    pending: Option<T>,
    /// Its place in line for room in the pending item's queue.
    waiter: Waiter,
}

// Items are never pinned in place.
impl<T> Unpin for InputSink<T> {}

impl<T> InputSink<T> {
    fn poll_deliver(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError<T>>> {
        let Some(item) = &self.pending else {
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
                let item = self.pending.take().expect("checked above");
                queue.commit_one(item);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(Closed)) => {
                Poll::Ready(Err(SendError::Closed(self.pending.take().expect("checked above"))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> futures::Sink<T> for InputSink<T> {
    type Error = SendError<T>;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_deliver(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), Self::Error> {
        let this = self.get_mut();
        assert!(this.pending.is_none(), "start_send called without poll_ready");
        this.pending = Some(item);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_deliver(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_deliver(cx)
    }
}

impl<T> Drop for InputSink<T> {
    fn drop(&mut self) {
        // Only waiting with an item in hand fills the waiter.
        // (a key that panics never filled it).
        if let Some(Ok(queue)) = self.pending.as_ref().map(|item| self.dispatch.route(item)) {
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
