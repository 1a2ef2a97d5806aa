//! A server's task: boot, serve the queue, restart after panics, terminate.

use std::{any::Any, future::Future, panic::AssertUnwindSafe};

use futures::FutureExt;
use tokio::sync::oneshot;

use super::{
    GenServer,
    envelope::{Envelope, Reply},
    handle::Inbox,
    restart::Restarts,
};

/// The payload of a caught panic.
pub(crate) type Panic = Box<dyn Any + Send + 'static>;

/// What a server does with the pipeline items in its queue.
pub(crate) trait Items<S: GenServer>: Send + 'static {
    type Item: Send + 'static;

    /// Handles one item. A panic inside is caught and reported as `Err`; the
    /// server is then rebuilt only if [`Items::restart_on_panic`] says so.
    fn handle(&mut self, server: &mut S, item: Self::Item) -> impl Future<Output = Result<(), Panic>> + Send;

    /// Whether a panic while handling an item rebuilds the server's state.
    fn restart_on_panic(&self) -> bool;
}

/// A plain server has no items.
pub(crate) struct NoItems;

impl<S: GenServer> Items<S> for NoItems {
    type Item = std::convert::Infallible;

    async fn handle(&mut self, _: &mut S, item: Self::Item) -> Result<(), Panic> {
        match item {}
    }

    fn restart_on_panic(&self) -> bool {
        false
    }
}

/// How serving the queue ended.
enum Exit {
    /// The queue was closed and drained.
    Drained,
    /// A handler panicked; the state is suspect.
    Crashed,
}

/// The body of a server's task.
///
/// `ready` fires once the server has booted (`new` + `init`), or has failed
/// for good trying.
pub(crate) async fn run<S, D>(
    mut inbox: Inbox<S, D::Item>,
    registry: S::Registry,
    mut items: D,
    ready: oneshot::Sender<()>,
) where
    S: GenServer,
    D: Items<S>,
{
    let mut ready = Some(ready);
    let mut restarts = Restarts::new(S::restart_limit());
    loop {
        let Some(mut server) = boot::<S>(&registry).await else {
            if restarts.allow() {
                continue;
            }
            return fail::<S, _>(inbox);
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        match serve(&mut server, &mut inbox, &mut items).await {
            Exit::Drained => {
                if let Err(panic) = AssertUnwindSafe(server.terminate()).catch_unwind().await {
                    report::<S>("terminate", &panic);
                }
                return;
            }
            Exit::Crashed => {
                drop(server);
                if !restarts.allow() {
                    return fail::<S, _>(inbox);
                }
                tracing::warn!(server = std::any::type_name::<S>(), "restarting after a panic");
            }
        }
    }
}

/// `new` + `init`, or `None` if either panicked.
async fn boot<S: GenServer>(registry: &S::Registry) -> Option<S> {
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

async fn serve<S, D>(server: &mut S, inbox: &mut Inbox<S, D::Item>, items: &mut D) -> Exit
where
    S: GenServer,
    D: Items<S>,
{
    while let Some(envelope) = inbox.rx.recv().await {
        match envelope {
            Envelope::Call(call) => {
                let (message, reply) = call.into_parts();
                if reply.is_closed() {
                    // The caller gave up (timed out) while the call was queued.
                    continue;
                }
                match AssertUnwindSafe(server.handle_call(message)).catch_unwind().await {
                    Ok(response) => {
                        let _ = reply.send(Reply::Done(response));
                    }
                    Err(panic) => {
                        let _ = reply.send(Reply::Panicked);
                        report::<S>("handle_call", &panic);
                        return Exit::Crashed;
                    }
                }
            }
            Envelope::Cast(message) => {
                if let Err(panic) = AssertUnwindSafe(server.handle_cast(message)).catch_unwind().await {
                    report::<S>("handle_cast", &panic);
                    return Exit::Crashed;
                }
            }
            Envelope::Item(item) => {
                if let Err(panic) = items.handle(server, item).await {
                    report::<S>("process", &panic);
                    if items.restart_on_panic() {
                        return Exit::Crashed;
                    }
                }
            }
            Envelope::Stop => inbox.rx.close(),
        }
    }
    Exit::Drained
}

/// The server stays down: every queued call gets its message back.
fn fail<S: GenServer, I>(inbox: Inbox<S, I>) {
    tracing::error!(
        server = std::any::type_name::<S>(),
        limit = ?S::restart_limit(),
        "server panicked more often than its restart limit allows; it stays down"
    );
    inbox.state.set_failed();
    drop(inbox);
}

fn report<S>(during: &str, panic: &Panic) {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)");
    tracing::error!(
        server = std::any::type_name::<S>(),
        during,
        panic = text,
        "server panicked"
    );
}
