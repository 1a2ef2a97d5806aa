//! A server's task: boot, serve the queue, restart after panics, terminate.
//!
//! The pieces are shared with pipeline stages, whose loop also takes items.

use std::{any::Any, future::Future, panic::AssertUnwindSafe};

use crate::registry::Ready;
use futures::FutureExt;

use super::{
    GenServer, context,
    envelope::{Envelope, Reply},
    handle::Inbox,
    restart::{RestartLimit, Restarts},
    state::ServerState,
};

/// The payload of a caught panic.
pub(crate) type Panic = Box<dyn Any + Send + 'static>;

/// A handler panicked: the server's state is suspect and must be rebuilt.
#[derive(Debug)]
pub(crate) struct Crashed;

/// The body of a plain server's task.
///
/// `ready` (taken once) fires once the server has booted (`new` + `init`),
/// or has failed for good trying.
///
/// An idle server's task holds this future for as long as it lives, so it
/// is kept small: its parts are captured by an `async move` block (an
/// `async fn` would hold its arguments twice), and booting and
/// `terminate`, which run once per life, run in futures of their own on
/// the heap, so the user's `init` and `terminate` futures take no room in
/// it while the server waits. Handling a message stays inline.
#[allow(clippy::manual_async_fn, reason = "an `async fn` would hold its arguments twice")]
pub(crate) fn run<S: GenServer>(
    mut inbox: Inbox<S>,
    registry: S::Registry,
    mut ready: Option<Ready>,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut restarts = Restarts::new(S::restart_limit);
        loop {
            let Some(mut server) = Box::pin(boot::<S>(&registry, &mut restarts)).await else {
                return fail(inbox);
            };
            // Ready.
            drop(ready.take());
            match serve(&mut server, &mut inbox).await {
                Ok(()) => return Box::pin(terminate(server)).await,
                Err(Crashed) => {
                    drop(server);
                    if !restarts.allow() {
                        return fail(inbox);
                    }
                }
            }
        }
    }
}

/// `new` + `init`, retried while `restarts` allows; `None` if the server
/// failed for good.
pub(crate) async fn boot<S: GenServer>(
    registry: &S::Registry,
    restarts: &mut Restarts<impl Fn() -> RestartLimit>,
) -> Option<S> {
    loop {
        match try_boot::<S>(registry).await {
            Some(server) => return Some(server),
            None if restarts.allow() => continue,
            None => return None,
        }
    }
}

async fn try_boot<S: GenServer>(registry: &S::Registry) -> Option<S> {
    // The timers of the state before (if any) stop: the fresh state's
    // `init` arms its own.
    context::with_current(ServerState::cancel_timers);
    let mut server = match std::panic::catch_unwind(AssertUnwindSafe(|| S::new(registry.clone()))) {
        Ok(server) => server,
        Err(panic) => {
            report::<S>("new", &panic);
            return None;
        }
    };
    match AssertUnwindSafe(server.init()).catch_unwind().await {
        Ok(()) => Some(server),
        Err(panic) => {
            report::<S>("init", &panic);
            None
        }
    }
}

/// Serves the queue until it is closed and empty.
async fn serve<S: GenServer>(server: &mut S, inbox: &mut Inbox<S>) -> Result<(), Crashed> {
    while let Some(envelope) = inbox.rx.recv().await {
        if let Envelope::Stop = envelope {
            inbox.rx.close();
        } else {
            handle(server, envelope).await?;
        }
    }
    Ok(())
}

/// Handles one call or cast. `Stop` is the caller's business.
pub(crate) async fn handle<S: GenServer>(server: &mut S, envelope: Envelope<S>) -> Result<(), Crashed> {
    let (call, waiting) = match envelope {
        Envelope::Call(call) => (call, None),
        Envelope::CallFrom(call) => {
            let (call, waiting) = *call;
            (call, Some(waiting))
        }
        Envelope::Cast(message) => {
            if let Err(panic) = AssertUnwindSafe(server.handle_cast(message)).catch_unwind().await {
                report::<S>("handle_cast", &panic);
                return Err(Crashed);
            }
            return Ok(());
        }
        Envelope::Timer(message, timer) => {
            if !timer.deliver() {
                // Cancelled while its message waited in the queue.
                return Ok(());
            }
            if let Err(panic) = AssertUnwindSafe(server.handle_cast(message)).catch_unwind().await {
                report::<S>("handle_cast", &panic);
                return Err(Crashed);
            }
            return Ok(());
        }
        Envelope::Stop => return Ok(()),
    };
    let (message, reply) = call.into_parts();
    if reply.is_closed() {
        // The caller gave up (timed out) while the call was queued.
        return Ok(());
    }
    match AssertUnwindSafe(server.handle_call(message)).catch_unwind().await {
        Ok(response) => {
            let _ = reply.send(Reply::Done(response));
            // The caller no longer waits on this server.
            drop(waiting);
            Ok(())
        }
        Err(panic) => {
            let _ = reply.send(Reply::Panicked);
            drop(waiting);
            report::<S>("handle_call", &panic);
            Err(Crashed)
        }
    }
}

/// Runs `terminate`, reporting a panic in it.
pub(crate) async fn terminate<S: GenServer>(mut server: S) {
    if let Err(panic) = AssertUnwindSafe(server.terminate()).catch_unwind().await {
        report::<S>("terminate", &panic);
    }
}

/// The server stays down: every queued call gets its message back, and
/// later ones fail with `Failed`.
pub(crate) fn fail<S: GenServer>(mut inbox: Inbox<S>) {
    tracing::error!(
        server = std::any::type_name::<S>(),
        limit = ?S::restart_limit(),
        "server panicked more often than its restart limit allows; it stays down"
    );
    inbox.state.set_failed();
    inbox.rx.close();
    while let Ok(envelope) = inbox.rx.try_recv() {
        drop(envelope);
    }
}

/// Logs a caught panic.
pub(crate) fn report<S>(during: &str, panic: &Panic) {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)");
    tracing::error!(server = std::any::type_name::<S>(), during, panic = text, "server panicked");
}
