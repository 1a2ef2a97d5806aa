//! Runtime support for generated registries: start, liveness, shutdown.
//!
//! A registry value (the struct under [`make_registry`](crate::make_registry)
//! or [`pipeline`](crate::pipeline)) holds a [`Core`]: the handles of its
//! servers and their shared lifecycle. Copies made by `start` for the servers
//! are *inner* copies; the value `start` returns and every clone of it are
//! *outside* copies. When the last outside copy is dropped, the registry
//! shuts down in the background, so servers holding their own registry do not
//! keep each other alive.

use std::{fmt, sync::Arc};

use tokio::{runtime, sync::oneshot};
use tokio_util::task::TaskTracker;

use crate::server::{
    GenServer, context,
    handle::{self, Control, Handle, Inbox},
    run::{self, Items},
    state::next_id,
};

/// The hidden field of every generated registry.
pub struct Core<T> {
    shared: Arc<Shared<T>>,
    /// Present in outside copies only.
    outside: Option<Arc<OutsideGuard>>,
}

struct Shared<T> {
    servers: T,
    life: Arc<Lifecycle>,
}

/// What shutdown and abort need, whatever the servers' types.
struct Lifecycle {
    id: usize,
    controls: Vec<Control>,
    tasks: TaskTracker,
    runtime: runtime::Handle,
}

/// Shuts the registry down when the last outside copy is dropped.
struct OutsideGuard {
    life: Arc<Lifecycle>,
}

impl Drop for OutsideGuard {
    fn drop(&mut self) {
        let life = self.life.clone();
        // If the runtime is gone, so are the tasks.
        let _ = life.runtime.clone().spawn(async move { life.shutdown().await });
    }
}

impl Lifecycle {
    async fn shutdown(&self) {
        for control in &self.controls {
            control.stop().await;
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn abort(&self) {
        for control in &self.controls {
            control.abort();
        }
    }
}

impl<T: Send + Sync + 'static> Core<T> {
    /// Builds the core of a registry whose servers' queues were made by
    /// [`Builder::channel`]. The result is an inner copy.
    ///
    /// # Panics
    ///
    /// Panics if called outside a Tokio runtime.
    pub fn new(builder: Builder, servers: T) -> Self {
        let life = Lifecycle {
            id: builder.id,
            controls: builder.controls,
            tasks: TaskTracker::new(),
            runtime: runtime::Handle::current(),
        };
        Core {
            shared: Arc::new(Shared {
                servers,
                life: Arc::new(life),
            }),
            outside: None,
        }
    }

    /// The handles of the servers, as the tuple the registry was built with.
    #[inline]
    pub fn servers(&self) -> &T {
        &self.shared.servers
    }

    /// Spawns the task of one server. Its `new` + `init` run there; `wait`
    /// on `start` waits for them.
    pub fn spawn<S: GenServer>(&self, start: &mut Start, inbox: Inbox<S>, registry: S::Registry) {
        self.spawn_with(start, inbox, registry, run::NoItems);
    }

    pub(crate) fn spawn_with<S, D>(&self, start: &mut Start, inbox: Inbox<S, D::Item>, registry: S::Registry, items: D)
    where
        S: GenServer,
        D: Items<S>,
    {
        let (ready, ready_rx) = oneshot::channel();
        start.ready.push(ready_rx);
        let state = inbox.state.clone();
        let task = context::scope(state.id, state.registry, run::run(inbox, registry, items, ready));
        let join = self.shared.life.tasks.spawn(task);
        state.set_abort_handle(join.abort_handle());
    }

    /// Turns this copy into an outside copy: from now on, dropping the last
    /// outside copy shuts the registry down.
    pub fn into_outside(mut self) -> Self {
        self.outside = Some(Arc::new(OutsideGuard {
            life: self.shared.life.clone(),
        }));
        self
    }

    /// Graceful shutdown; see the generated `shutdown` method.
    pub async fn shutdown(&self) {
        let life = &self.shared.life;
        if context::in_registry(life.id) {
            // A server of this registry cannot wait for its own end.
            let life = life.clone();
            life.runtime.clone().spawn(async move { life.shutdown().await });
            return;
        }
        life.shutdown().await;
    }

    /// Stops every server at its next `.await`; see the generated `abort`.
    pub fn abort(&self) {
        self.shared.life.abort();
    }
}

impl<T> Clone for Core<T> {
    fn clone(&self) -> Self {
        Core {
            shared: self.shared.clone(),
            outside: self.outside.clone(),
        }
    }
}

impl<T> fmt::Debug for Core<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("servers", &self.shared.life.controls.len())
            .field("outside", &self.outside.is_some())
            .finish_non_exhaustive()
    }
}

/// Makes the queues of a registry's servers before the registry exists.
#[derive(Debug)]
pub struct Builder {
    id: usize,
    controls: Vec<Control>,
}

impl Builder {
    /// A builder for a new registry.
    pub fn new() -> Self {
        Builder {
            id: next_id(),
            controls: Vec::new(),
        }
    }

    /// Makes the queue of one plain server.
    #[track_caller]
    pub fn channel<S: GenServer>(&mut self) -> (Handle<S>, Inbox<S>) {
        self.channel_with()
    }

    #[track_caller]
    pub(crate) fn channel_with<S: GenServer, I: Send + 'static>(&mut self) -> (Handle<S, I>, Inbox<S, I>) {
        let (handle, inbox) = handle::channel::<S, I>(self.id);
        self.controls.push(handle.control());
        (handle, inbox)
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

/// Collects the readiness of servers being started.
#[derive(Debug, Default)]
pub struct Start {
    ready: Vec<oneshot::Receiver<()>>,
}

impl Start {
    /// An empty set.
    pub fn new() -> Self {
        Start::default()
    }

    /// Waits until every spawned server has run `new` + `init` (or failed
    /// for good trying).
    pub async fn wait(self) {
        for ready in self.ready {
            let _ = ready.await;
        }
    }
}
