//! The sending side of a server: calls, casts, stop and abort.

use std::{fmt, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, timeout_at},
};

use super::{
    GenServer, context,
    envelope::{Call, Envelope, Reply},
    state::ServerState,
};
use crate::{
    error::{CallError, SendError},
    registry::{BoxFuture, Stoppable},
};

/// A handle to one running server: the sending half of its queue.
///
/// Generated registries hold one per server; their `call_<name>` and
/// `cast_<name>` methods forward here.
pub struct Handle<S: GenServer> {
    tx: mpsc::Sender<Envelope<S>>,
    state: Arc<ServerState>,
}

/// The receiving half of a server's queue, owned by the server's task.
pub struct Inbox<S: GenServer> {
    pub(crate) rx: mpsc::Receiver<Envelope<S>>,
    pub(crate) state: Arc<ServerState>,
}

/// Creates the queue of one server of registry `registry`, sized by
/// [`GenServer::channel_queue_size`], clamped to tokio's
/// [`Semaphore::MAX_PERMITS`](tokio::sync::Semaphore::MAX_PERMITS) (the
/// channel allocates as messages come, not for its bound).
///
/// # Panics
///
/// Panics if `channel_queue_size()` is 0.
#[track_caller]
pub(crate) fn channel<S: GenServer>(registry: usize) -> (Handle<S>, Inbox<S>) {
    let size = S::channel_queue_size();
    assert!(size > 0, "{}::channel_queue_size() must be at least 1", std::any::type_name::<S>());
    let (tx, rx) = mpsc::channel(size.min(tokio::sync::Semaphore::MAX_PERMITS));
    let state = Arc::new(ServerState::new(registry));
    (Handle { tx, state: state.clone() }, Inbox { rx, state })
}

impl<S: GenServer> Handle<S> {
    /// Sends `message` and waits for the server's response.
    ///
    /// # Errors
    ///
    /// See [`CallError`]: the server is not running, failed for good,
    /// panicked while handling the message, or is the caller itself.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before the server takes the message out of
    /// its queue, the message is not handled. Once the server has started to
    /// handle it, it runs to completion and the response is dropped.
    pub async fn call(&self, message: S::Message) -> Result<S::Response, CallError<S::Message>> {
        if context::is_server(self.state.id) {
            return Err(CallError::SelfCall(message));
        }
        let permit = match self.tx.reserve().await {
            Ok(permit) => permit,
            Err(_) => return Err(self.stopped_call(message)),
        };
        let (tx, rx) = oneshot::channel();
        permit.send(Envelope::Call(Call::new(message, tx)));
        self.state.post();
        self.reply(rx.await)
    }

    /// Like [`call`](Self::call), but gives up after `timeout`, counted from
    /// now: waiting for room in the queue, waiting in the queue and handling
    /// all count. A call that times out while still queued is never handled.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call), plus [`CallError::Timeout`], which holds the
    /// message if it never entered the queue.
    ///
    /// # Panics
    ///
    /// Panics if the Tokio runtime was built without timers.
    ///
    /// # Cancel safety
    ///
    /// As [`call`](Self::call).
    pub async fn call_with_timeout(
        &self,
        message: S::Message,
        timeout: Duration,
    ) -> Result<S::Response, CallError<S::Message>> {
        if context::is_server(self.state.id) {
            return Err(CallError::SelfCall(message));
        }
        let deadline = Instant::now() + timeout;
        let permit = match timeout_at(deadline, self.tx.reserve()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(self.stopped_call(message)),
            Err(_) => return Err(CallError::Timeout(Some(message))),
        };
        let (tx, rx) = oneshot::channel();
        permit.send(Envelope::Call(Call::new(message, tx)));
        self.state.post();
        match timeout_at(deadline, rx).await {
            Ok(reply) => self.reply(reply),
            Err(_) => Err(CallError::Timeout(None)),
        }
    }

    /// Puts `message` in the server's queue, waiting while it is full.
    ///
    /// A server casting to itself does not wait: with its queue full it gets
    /// [`SendError::Full`], since waiting would never end.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] or [`SendError::Failed`] if the server is not
    /// running, each holding the message.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before it completes, the message was not
    /// queued (it is dropped).
    pub async fn cast(&self, message: S::Message) -> Result<(), SendError<S::Message>> {
        if context::is_server(self.state.id) {
            return self.try_cast(message);
        }
        match self.tx.reserve().await {
            Ok(permit) => {
                permit.send(Envelope::Cast(message));
                self.state.post();
                Ok(())
            }
            Err(_) => Err(self.stopped_send(message)),
        }
    }

    /// Puts `message` in the server's queue if there is room, without
    /// waiting.
    ///
    /// # Errors
    ///
    /// [`SendError::Full`] if the queue is full, [`SendError::Closed`] or
    /// [`SendError::Failed`] if the server is not running.
    pub fn try_cast(&self, message: S::Message) -> Result<(), SendError<S::Message>> {
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(Envelope::Cast(message));
                self.state.post();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => Err(SendError::Full(message)),
            Err(mpsc::error::TrySendError::Closed(())) => Err(self.stopped_send(message)),
        }
    }

    /// Asks the server to stop gracefully: it closes its queue, handles what
    /// is queued, runs `terminate` and ends. Waits for room in the queue,
    /// not for the server to end.
    pub(crate) async fn stop(&self) {
        let _ = self.tx.send(Envelope::Stop).await;
    }

    /// Stops the server at its next `.await`, without handling its queue.
    pub(crate) fn abort(&self) {
        self.state.abort();
    }

    fn reply(
        &self,
        reply: Result<Reply<S::Response, S::Message>, oneshot::error::RecvError>,
    ) -> Result<S::Response, CallError<S::Message>> {
        match reply {
            Ok(Reply::Done(response)) => Ok(response),
            Ok(Reply::Panicked) => Err(CallError::Panicked),
            Ok(Reply::Returned(message)) => Err(self.stopped_call(message)),
            // The server took the call and was dropped before replying.
            Err(_) => Err(CallError::Aborted),
        }
    }

    fn stopped_call(&self, message: S::Message) -> CallError<S::Message> {
        if self.state.failed() { CallError::Failed(message) } else { CallError::Closed(message) }
    }

    fn stopped_send<T>(&self, message: T) -> SendError<T> {
        if self.state.failed() { SendError::Failed(message) } else { SendError::Closed(message) }
    }
}

impl<S: GenServer> Clone for Handle<S> {
    fn clone(&self) -> Self {
        Handle { tx: self.tx.clone(), state: self.state.clone() }
    }
}

impl<S: GenServer> fmt::Debug for Handle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("server", &std::any::type_name::<S>())
            .field("id", &self.state.id)
            .finish_non_exhaustive()
    }
}

impl<S: GenServer> fmt::Debug for Inbox<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox").field("server", &std::any::type_name::<S>()).finish_non_exhaustive()
    }
}

impl<S: GenServer> Drop for Inbox<S> {
    fn drop(&mut self) {
        // Before the queue drops: queued calls handed back then see the status.
        self.state.set_closed();
    }
}

impl<S: GenServer> Stoppable for Handle<S> {
    fn stop(&self) -> BoxFuture<'_> {
        Box::pin(Handle::stop(self))
    }

    fn abort(&self) {
        Handle::abort(self)
    }
}
