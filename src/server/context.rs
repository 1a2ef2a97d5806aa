//! Which server the current task is running.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use super::state::ServerState;

tokio::task_local! {
    static CURRENT: Arc<ServerState>;
}

/// Runs `future` as the body of the server whose shared state is `state`,
/// in its `tracing` span.
pub(crate) fn scope<F: Future>(state: Arc<ServerState>, future: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(state, InSpan { future })
}

pin_project_lite::pin_project! {
    /// Polls `future` inside the span of the server the task runs (read
    /// from the task-local, so it holds nothing more than `future`: every
    /// idle task holds it).
    struct InSpan<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // A copy of the span (none without a subscriber that wants it):
        // the task-local must not stay borrowed while the future runs, which
        // may enter a scope of its own (a fused stage's).
        let span = CURRENT.try_with(|state| state.span.as_deref().cloned()).ok().flatten();
        let _entered = span.as_ref().map(tracing::Span::enter);
        self.project().future.poll(cx)
    }
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
