//! What travels through a server's queue.

use tokio::sync::oneshot;

use super::{GenServer, waits::Waiting};

/// One entry of a server's queue. Calls, casts and the stop marker share the
/// queue, so they are handled in the order they were sent.
pub(crate) enum Envelope<S: GenServer> {
    Call(Call<S::Message, S::Response>),
    Cast(S::Message),
    /// Graceful shutdown: close the queue, handle what is in it, terminate.
    Stop,
}

/// How a call ended, as told to the caller.
pub(crate) enum Reply<R, M> {
    Done(R),
    Panicked,
    /// The server stopped before handling the call; the message comes back.
    Returned(M),
}

/// A call waiting in a queue: the message, where to send the reply, and,
/// for a call made by a server, the caller's wait-for edge, which goes once
/// the reply is sent.
///
/// If it is dropped without being handled (the server was aborted, failed for
/// good, or its runtime shut down), the message goes back to the caller.
pub(crate) struct Call<M, R> {
    parts: Option<(M, oneshot::Sender<Reply<R, M>>)>,
    waiting: Option<Waiting>,
}

impl<M, R> Call<M, R> {
    pub(crate) fn new(message: M, reply: oneshot::Sender<Reply<R, M>>, waiting: Option<Waiting>) -> Self {
        Call { parts: Some((message, reply)), waiting }
    }

    /// The message, the reply sender, and the caller's edge (to drop after
    /// replying).
    pub(crate) fn into_parts(mut self) -> (M, oneshot::Sender<Reply<R, M>>, Option<Waiting>) {
        match self.parts.take() {
            Some((message, reply)) => (message, reply, self.waiting.take()),
            None => unreachable!("a call's parts are taken once"),
        }
    }
}

impl<M, R> Drop for Call<M, R> {
    fn drop(&mut self) {
        if let Some((message, reply)) = self.parts.take() {
            let _ = reply.send(Reply::Returned(message));
        }
    }
}
