//! Which server (of which registry) the current task is running.

use std::future::Future;

tokio::task_local! {
    static CURRENT: Current;
}

#[derive(Clone, Copy)]
struct Current {
    server: usize,
    registry: usize,
}

/// Runs `future` as the body of server `server` of registry `registry`.
pub(crate) fn scope<F: Future>(server: usize, registry: usize, future: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(Current { server, registry }, future)
}

/// Whether the current task is server `server`.
pub(crate) fn is_server(server: usize) -> bool {
    CURRENT.try_with(|c| c.server == server).unwrap_or(false)
}

/// Whether the current task is one of the servers of registry `registry`.
pub(crate) fn in_registry(registry: usize) -> bool {
    CURRENT.try_with(|c| c.registry == registry).unwrap_or(false)
}
