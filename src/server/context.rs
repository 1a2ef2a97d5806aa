//! Which server the current task is running.

use std::{future::Future, sync::Arc};

use super::state::ServerState;

tokio::task_local! {
    static CURRENT: Arc<ServerState>;
}

/// Runs `future` as the body of the server whose shared state is `state`.
pub(crate) fn scope<F: Future>(state: Arc<ServerState>, future: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(state, future)
}

/// The server the current task runs, if it runs one. Only a server's own
/// task has one: not a task its handler spawned.
#[inline]
pub(crate) fn current() -> Option<Arc<ServerState>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Whether the current task is one of the servers of registry `registry`.
pub(crate) fn in_registry(registry: usize) -> bool {
    CURRENT.try_with(|c| c.registry == registry).unwrap_or(false)
}

/// Runs `f` on the server the current task runs, if it runs one.
pub(crate) fn with_current(f: impl FnOnce(&ServerState)) {
    let _ = CURRENT.try_with(|current| f(current));
}
