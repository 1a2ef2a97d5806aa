//! What travels through a server's queue.

use std::mem::ManuallyDrop;

use tokio::sync::oneshot;

use super::{GenServer, timer::TimerShared, waits::Waiting};
use std::sync::Arc;

/// One entry of a server's queue. Calls, casts and the stop marker share the
/// queue, so they are handled in the order they were sent.
pub(crate) enum Envelope<S: GenServer> {
    /// A call from outside the servers.
    Call(Call<S::Message, S::Response>),
    /// A call made by a server, with the caller's wait-for edge, which goes
    /// once the reply is sent. Boxed, so the envelopes of calls from outside
    /// and of casts stay as small as they were without the graph (they
    /// travel by value through the queue's blocks).
    CallFrom(Box<CallFrom<S::Message, S::Response>>),
    Cast(S::Message),
    /// A message the server's own timer delivers (`timer.rs`), handled
    /// like a cast (by a stage, with its emitter) unless the timer was
    /// cancelled meanwhile.
    Timer(S::Message, Arc<TimerShared>),
    /// Graceful shutdown: close the queue, handle what is in it, terminate.
    Stop,
}

impl<S: GenServer> Envelope<S> {
    /// The envelope of a call; `waiting` is the caller's edge if a server
    /// made the call.
    pub(crate) fn call(
        message: S::Message,
        reply: oneshot::Sender<Reply<S::Response, S::Message>>,
        waiting: Option<Waiting>,
    ) -> Self {
        let call = Call::new(message, reply);
        match waiting {
            None => Envelope::Call(call),
            Some(waiting) => Envelope::CallFrom(Box::new((call, waiting))),
        }
    }

    /// The message of a cast's envelope, given back when it could not be
    /// queued.
    ///
    /// # Panics
    ///
    /// If the envelope is not a cast's (callers made it with
    /// `Envelope::Cast`).
    pub(crate) fn into_cast(self) -> S::Message {
        match self {
            Envelope::Cast(message) => message,
            _ => unreachable!("a cast's envelope holds a cast"),
        }
    }
}

/// A call made by a server and that server's wait-for edge.
pub(crate) type CallFrom<M, R> = (Call<M, R>, Waiting);

/// How a call ended, as told to the caller.
pub(crate) enum Reply<R, M> {
    Done(R),
    Panicked,
    /// The server stopped before handling the call; the message comes back.
    Returned(M),
}

/// A call waiting in a queue: the message and where to send the reply.
///
/// If it is dropped without being handled (the server was aborted, failed for
/// good, or its runtime shut down), the message goes back to the caller.
pub(crate) struct Call<M, R> {
    parts: Option<(M, oneshot::Sender<Reply<R, M>>)>,
}

impl<M, R> Call<M, R> {
    pub(crate) fn new(message: M, reply: oneshot::Sender<Reply<R, M>>) -> Self {
        Call { parts: Some((message, reply)) }
    }

    /// The message and the reply sender.
    pub(crate) fn into_parts(self) -> (M, oneshot::Sender<Reply<R, M>>) {
        // The parts are taken out, so skipping `Drop` leaks nothing.
        match ManuallyDrop::new(self).parts.take() {
            Some(parts) => parts,
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Adder;

    impl GenServer for Adder {
        type Message = u64;
        type Response = u64;
        type Registry = ();

        fn new((): ()) -> Self {
            Adder
        }

        async fn handle_call(&mut self, n: u64) -> u64 {
            n
        }
    }

    #[test]
    fn the_wait_for_edge_does_not_grow_the_envelope() {
        // Every message travels by value through the queue: a call from a
        // server carries its edge behind a box, so an envelope is no larger
        // than a call without one.
        assert_eq!(size_of::<Envelope<Adder>>(), size_of::<Call<u64, u64>>());
    }
}
