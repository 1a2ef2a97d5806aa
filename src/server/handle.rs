//! The sending side of a server: calls, casts, stop and abort.

use std::{fmt, sync::Arc, time::Duration};

use tokio::{
    sync::oneshot,
    time::{Instant, timeout_at},
};

use super::{
    GenServer, context,
    envelope::{Envelope, Reply},
    mailbox::{self, TryReserveError},
    state::{Name, ServerState},
    timer::Host,
    waits::{self, Waiting},
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
    tx: mailbox::Sender<Envelope<S>>,
    state: Arc<ServerState>,
}

/// The receiving half of a server's queue, owned by the server's task.
pub struct Inbox<S: GenServer> {
    pub(crate) rx: mailbox::Receiver<Envelope<S>>,
    pub(crate) state: Arc<ServerState>,
}

/// Creates the queue of the server `name` of registry `registry`, sized by
/// [`GenServer::channel_queue_size`], clamped to tokio's
/// [`Semaphore::MAX_PERMITS`](tokio::sync::Semaphore::MAX_PERMITS) as a
/// stage's queue is (the [`mailbox`] allocates its buffer as messages come,
/// not for its bound). `runtime` is
/// where timed calls make their timers.
///
/// # Panics
///
/// Panics if `channel_queue_size()` is 0.
#[track_caller]
pub(crate) fn channel<S: GenServer>(
    registry: usize,
    name: Name,
    runtime: Option<tokio::runtime::Handle>,
    size: Option<usize>,
) -> (Handle<S>, Inbox<S>) {
    let size = size.unwrap_or_else(S::channel_queue_size);
    assert!(size > 0, "{}::channel_queue_size() must be at least 1", std::any::type_name::<S>());
    let (tx, rx) = mailbox::channel(size.min(tokio::sync::Semaphore::MAX_PERMITS));
    let state = Arc::new(ServerState::new(registry, name, runtime).with_timers(Host::<S>::boxed(tx.downgrade())));
    (Handle { tx, state: state.clone() }, Inbox { rx, state })
}

/// Why a server may not wait on another.
pub(crate) enum Refused {
    /// The server would wait on itself.
    SelfCall,
    /// Waiting would close this cycle of servers (names, from the caller
    /// round to it again).
    Cycle(Vec<String>),
}

impl Refused {
    pub(crate) fn call_error<M>(self, message: M) -> CallError<M> {
        match self {
            Refused::SelfCall => CallError::SelfCall(message),
            Refused::Cycle(servers) => CallError::Cycle { message, servers },
        }
    }
}

impl<S: GenServer> Handle<S> {
    /// Sends `message` and waits for the server's response.
    ///
    /// Called from a server's handler (or a stage's `process`), the call is
    /// an edge of the wait-for graph between servers: if the callee already
    /// waits, directly or through other servers, on the caller, the call
    /// returns [`CallError::Cycle`] at once instead of waiting forever (and
    /// [`CallError::SelfCall`] when a server calls itself). What is not
    /// seen: calls made from a task the handler spawned (that task is not
    /// the server), and waits on anything other than a call or a cast
    /// waiting for room, such as a stage blocked in
    /// [`Emitter::emit`](crate::Emitter::emit) while the next stage calls
    /// back into it; those can still wait forever. Calls from outside the
    /// servers pay nothing for the check.
    ///
    /// Works from any thread or executor, not only inside the runtime the
    /// registry was started on.
    ///
    /// # Errors
    ///
    /// See [`CallError`]: the server is not running, failed for good,
    /// panicked while handling the message, is the caller itself, or waits
    /// on the caller.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before the server takes the message out of
    /// its queue, the message is not handled. Once the server has started to
    /// handle it, it runs to completion and the response is dropped.
    pub async fn call(&self, message: S::Message) -> Result<S::Response, CallError<S::Message>> {
        let waiting = match context::current() {
            None => None,
            Some(caller) => match self.wait_from(&caller) {
                Ok(waiting) => Some(waiting),
                Err(refused) => return Err(refused.call_error(message)),
            },
        };
        let permit = match self.tx.reserve().await {
            Ok(permit) => permit,
            Err(_) => return Err(self.stopped_call(message)),
        };
        let reply = self.post_call(permit, message, waiting.as_ref()).await;
        drop(waiting);
        self.reply(reply)
    }

    /// Records that `caller` waits on this server.
    pub(crate) fn wait_from(&self, caller: &Arc<ServerState>) -> Result<Waiting, Refused> {
        if caller.id == self.state.id {
            return Err(Refused::SelfCall);
        }
        waits::wait_on(caller, &self.state).map_err(Refused::Cycle)
    }

    /// A call whose wait-for edge (if any) was recorded already.
    pub(crate) async fn call_waiting(
        &self,
        message: S::Message,
        waiting: Option<Waiting>,
    ) -> Result<S::Response, CallError<S::Message>> {
        let permit = match self.tx.reserve().await {
            Ok(permit) => permit,
            Err(_) => return Err(self.stopped_call(message)),
        };
        let reply = self.post_call(permit, message, waiting.as_ref()).await;
        drop(waiting);
        self.reply(reply)
    }

    /// Puts a call into the room `permit` reserved and returns where its
    /// reply comes; the queued call holds a second owner of the caller's
    /// edge, if any.
    #[inline]
    fn post_call(
        &self,
        permit: mailbox::Permit<'_, Envelope<S>>,
        message: S::Message,
        waiting: Option<&Waiting>,
    ) -> oneshot::Receiver<Reply<S::Response, S::Message>> {
        let (tx, rx) = oneshot::channel();
        permit.send(Envelope::call(message, tx, waiting.map(Waiting::share)));
        self.state.post();
        rx
    }

    /// Like [`call`](Self::call), but gives up after `timeout`, counted from
    /// now: waiting for room in the queue, waiting in the queue and handling
    /// all count. A call that times out while still queued is never handled.
    ///
    /// The timer runs on the runtime the registry was started on, so this
    /// works from any thread or executor too.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call), plus [`CallError::Timeout`], which holds the
    /// message if it never entered the queue.
    ///
    /// # Panics
    ///
    /// Panics if the Tokio runtime the registry was started on was built
    /// without timers.
    ///
    /// # Cancel safety
    ///
    /// As [`call`](Self::call).
    pub async fn call_with_timeout(
        &self,
        message: S::Message,
        timeout: Duration,
    ) -> Result<S::Response, CallError<S::Message>> {
        let waiting = match context::current() {
            None => None,
            Some(caller) => match self.wait_from(&caller) {
                Ok(waiting) => Some(waiting),
                Err(refused) => return Err(refused.call_error(message)),
            },
        };
        self.call_with_timeout_waiting(message, timeout, waiting).await
    }

    /// A timed call whose wait-for edge (if any) was recorded already.
    pub(crate) async fn call_with_timeout_waiting(
        &self,
        message: S::Message,
        timeout: Duration,
        waiting: Option<Waiting>,
    ) -> Result<S::Response, CallError<S::Message>> {
        let (deadline, reserve) = self.on_runtime(|| {
            let deadline = Instant::now() + timeout;
            (deadline, timeout_at(deadline, self.tx.reserve()))
        });
        let permit = match reserve.await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(self.stopped_call(message)),
            Err(_) => return Err(CallError::Timeout(Some(message))),
        };
        let rx = self.post_call(permit, message, waiting.as_ref());
        let reply = self.on_runtime(|| timeout_at(deadline, rx)).await;
        drop(waiting);
        match reply {
            Ok(reply) => self.reply(reply),
            Err(_) => Err(CallError::Timeout(None)),
        }
    }

    /// Runs `f` (which makes timers) inside the registry's runtime, so the
    /// timers work whatever thread polls them.
    fn on_runtime<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.state.runtime {
            Some(runtime) => {
                let _entered = runtime.enter();
                f()
            }
            None => f(),
        }
    }

    /// Puts `message` in the server's queue, waiting while it is full.
    ///
    /// From inside a server (a handler, or a stage's `process`), waiting for
    /// room is an edge of the wait-for graph, like a call: a cast that
    /// finds the queue full and would wait on a server that waits, directly
    /// or through others, on the caller does not wait; it returns
    /// [`SendError::Cycle`] at once. A server casting to itself never
    /// waits: with its queue full it gets [`SendError::Full`]. What the
    /// check cannot see is described at [`call`](Self::call). The check
    /// runs only once the queue was found full: a cast into a queue with
    /// room costs the same from inside a server and from outside.
    ///
    /// Like a send on a Tokio channel, a cast spends one unit of the task's
    /// [cooperative scheduling budget](tokio::task::coop), so a task
    /// casting in a loop into a queue with room still yields to others now
    /// and then.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] or [`SendError::Failed`] if the server is not
    /// running, [`SendError::Full`] or [`SendError::Cycle`] from inside a
    /// server as above; each holds the message.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before it completes, the message was not
    /// queued (it is dropped).
    pub async fn cast(&self, message: S::Message) -> Result<(), SendError<S::Message>> {
        // The fast path: the budget, then one `try_reserve`; nothing about
        // the caller is looked up unless the queue is full.
        tokio::task::coop::consume_budget().await;
        match self.tx.try_send(Envelope::Cast(message)) {
            Ok(()) => {
                self.state.post();
                Ok(())
            }
            Err((TryReserveError::Full, envelope)) => self.cast_full(envelope.into_cast()).await,
            Err((TryReserveError::Closed, envelope)) => Err(self.stopped_send(envelope.into_cast())),
        }
    }

    /// The rest of a cast that found the queue full: only now does it
    /// matter whether the caller is a server (an edge of the wait-for
    /// graph while it waits for room).
    async fn cast_full(&self, message: S::Message) -> Result<(), SendError<S::Message>> {
        match context::current() {
            Some(caller) => self.cast_wait_from(&caller, message).await,
            None => self.cast_wait(message, None).await,
        }
    }

    /// A cast from inside server `caller`: waits for room only where that
    /// cannot close a cycle.
    pub(crate) async fn cast_from(
        &self,
        caller: &Arc<ServerState>,
        message: S::Message,
    ) -> Result<(), SendError<S::Message>> {
        match self.try_cast(message) {
            Err(SendError::Full(message)) => self.cast_wait_from(caller, message).await,
            done => done,
        }
    }

    /// Waits for room for a cast from server `caller`, as an edge of the
    /// wait-for graph; refused where waiting would close a cycle.
    async fn cast_wait_from(
        &self,
        caller: &Arc<ServerState>,
        message: S::Message,
    ) -> Result<(), SendError<S::Message>> {
        match self.wait_from(caller) {
            Ok(waiting) => self.cast_wait(message, Some(waiting)).await,
            Err(Refused::SelfCall) => Err(SendError::Full(message)),
            Err(Refused::Cycle(servers)) => Err(SendError::Cycle { message, servers }),
        }
    }

    /// Waits for room, then queues the cast; `waiting` (the caller's edge,
    /// if any) goes once the wait ends.
    async fn cast_wait(&self, message: S::Message, waiting: Option<Waiting>) -> Result<(), SendError<S::Message>> {
        let reserved = self.tx.reserve().await;
        drop(waiting);
        match reserved {
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
        match self.tx.try_send(Envelope::Cast(message)) {
            Ok(()) => {
                self.state.post();
                Ok(())
            }
            Err((TryReserveError::Full, envelope)) => Err(SendError::Full(envelope.into_cast())),
            Err((TryReserveError::Closed, envelope)) => Err(self.stopped_send(envelope.into_cast())),
        }
    }

    /// The server's shared state.
    pub(crate) fn state(&self) -> &Arc<ServerState> {
        &self.state
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
        // The server's task ended (or failed for good): its timers stop.
        self.state.cancel_timers();
        // A caller that reserved room before the queue closed may still put
        // its call in after this drop's drain (the server was aborted, or
        // failed for good): nobody would take it, and the caller would wait
        // forever. A task on the registry's runtime takes what still comes
        // until no room is reserved any more; each call it drops hands its
        // message back to its caller (`Closed`).
        if let Some(runtime) = &self.state.runtime {
            let (_, empty) = mailbox::channel(1);
            let mut rx = std::mem::replace(&mut self.rx, empty);
            rx.close();
            drop(runtime.spawn(async move { while rx.recv().await.is_some() {} }));
        }
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

#[cfg(test)]
mod tests {
    use std::{
        pin::pin,
        sync::atomic::{AtomicBool, Ordering},
    };

    use super::*;

    struct Sink;

    impl GenServer for Sink {
        type Message = u64;
        type Response = ();
        type Registry = ();

        fn new((): ()) -> Self {
            Sink
        }

        async fn handle_call(&mut self, _: u64) {}
    }

    #[tokio::test]
    async fn casts_into_a_queue_with_room_still_let_other_tasks_run() {
        // Nobody takes from this queue: every cast finds room, none waits.
        let (handle, _inbox) = channel::<Sink>(0, Name::new("sink"), None, Some(10_000));
        let ran = Arc::new(AtomicBool::new(false));
        tokio::spawn({
            let ran = ran.clone();
            async move { ran.store(true, Ordering::SeqCst) }
        });
        let mut casts_before_it_ran = None;
        for n in 0..1_000 {
            handle.cast(n).await.unwrap();
            if ran.load(Ordering::SeqCst) {
                casts_before_it_ran = Some(n + 1);
                break;
            }
        }
        // Tokio's budget is 128 operations per poll of a task: the cast
        // after them yields, and completes once the other task ran.
        assert_eq!(casts_before_it_ran, Some(129));
    }

    #[tokio::test]
    async fn a_cast_into_a_full_queue_waits_for_room() {
        let (handle, mut inbox) = channel::<Sink>(0, Name::new("sink"), None, Some(1));
        handle.cast(1).await.unwrap();
        let mut second = pin!(handle.cast(2));
        assert!(futures::poll!(second.as_mut()).is_pending());
        assert!(matches!(inbox.rx.recv().await, Some(Envelope::Cast(1))));
        assert!(matches!(second.await, Ok(())));
        assert!(matches!(inbox.rx.recv().await, Some(Envelope::Cast(2))));
    }
}
