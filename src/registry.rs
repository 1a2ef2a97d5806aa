//! Runtime support for generated registries: start, liveness, shutdown.
//!
//! A registry value (the struct under [`make_registry`](crate::make_registry)
//! or [`pipeline`](macro@crate::pipeline)) holds a [`Core`]: the handles of its
//! servers and their shared lifecycle. Copies made by `start` for the servers
//! are *inner* copies; the value `start` returns and every clone of it are
//! *outside* copies. When the last outside copy is dropped, the registry
//! shuts down in the background, so servers holding their own registry do not
//! keep each other alive. That background drain is a task of the registry's
//! runtime: if the runtime is gone first, the drain is dropped with it, and
//! a `tracing` warning says so.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{runtime, sync::Semaphore};
use tokio_util::task::TaskTracker;

use crate::server::{
    GenServer, context,
    handle::{self, Handle, Inbox},
    run,
    state::{Name, next_id},
};

pub(crate) type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Something shutdown and abort act on: a server, or a pipeline's input.
pub(crate) trait Stoppable: Send + Sync {
    /// Starts a graceful stop; may wait for room to say so, not for the end.
    fn stop(&self) -> BoxFuture<'_>;
    /// Stops at once.
    fn abort(&self);
}

/// Stops or aborts one part of a registry, whatever its type.
pub(crate) struct Control(Box<dyn Stoppable>);

impl Control {
    pub(crate) fn new(part: impl Stoppable + 'static) -> Self {
        Control(Box::new(part))
    }

    async fn stop(&self) {
        self.0.stop().await
    }

    fn abort(&self) {
        self.0.abort()
    }
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

/// The hidden field of every generated registry `R`: the handles of its
/// servers, `R::Servers`, and their shared lifecycle.
///
/// Named by the registry's own type rather than by its servers' types, and
/// holding the handles behind a trait object that is `Send + Sync` by its
/// declaration, `Core<R>` asks nothing of the servers:
///
/// - The compiler proves a registry `Send` from its user fields alone. A
///   field type naming the servers would make it prove the servers are
///   `GenServer`s, and a server generic over its registry (`impl<R: Reg>
///   GenServer for Worker<R>`, with `Reg` a helper trait implemented for
///   every `Clone + Send + Sync` type) needs the registry `Send` for that: a
///   cycle through a non-auto trait, which rustc rejects (E0275).
/// - The struct and its `Clone` stay well-formed when an entry is not a
///   server, so that mistake is reported once, by the generated check, not
///   again at every mention of the registry.
///
/// Only [`Core::new`] makes one, and it requires `R: Parts`, whose
/// `Servers` are `Send + Sync`.
pub struct Core<R> {
    shared: Arc<Shared<dyn Servers<R>>>,
    /// Whether this is an outside copy, counted in the lifecycle's
    /// `outside`.
    outside: bool,
}

/// What a generated registry is made of: implemented by the macros, with
/// every entry's trait bound as a where-clause.
pub trait Parts: Sized + 'static {
    /// The tuple of the servers' handles (for a pipeline, its stages'
    /// handles and its output), in declaration order.
    type Servers: Send + Sync + 'static;
}

/// The one allocation a registry shares between its copies: its
/// lifecycle and its servers' handles (an idle registry of one server is
/// that, its server's task and queue, and the server's shared state).
struct Shared<S: ?Sized> {
    life: Lifecycle,
    servers: S,
}

/// The handles of registry `R`, seen through a trait object whose type asks
/// nothing of `R`.
trait Servers<R>: Send + Sync {
    fn get(&self) -> &R::Servers
    where
        R: Parts;

    /// Runs the graceful shutdown of `shared` (whose servers are `self`) in
    /// a task of the registry's runtime; see [`background_shutdown`].
    /// Here, where `R: Parts` and so `'static`, the task may own `shared`.
    fn shutdown_in_background(&self, shared: Arc<Shared<dyn Servers<R>>>);
}

/// The handles of registry `R`, as stored.
struct Typed<R: Parts>(R::Servers);

impl<R: Parts> Servers<R> for Typed<R> {
    #[inline]
    fn get(&self) -> &R::Servers {
        &self.0
    }

    fn shutdown_in_background(&self, shared: Arc<Shared<dyn Servers<R>>>) {
        background_shutdown(shared);
    }
}

/// What shutdown and abort need, whatever the servers' types.
struct Lifecycle {
    id: usize,
    controls: Box<[Control]>,
    tasks: TaskTracker,
    runtime: runtime::Handle,
    /// The outside copies alive; the one that brings it to 0 shuts the
    /// registry down.
    outside: AtomicUsize,
}

/// Runs the graceful shutdown in a task of the registry's runtime. The
/// drain needs that runtime alive: if the runtime is already gone, or shuts
/// down before the drain ends, the task is dropped and a warning says that
/// queued work was abandoned.
fn background_shutdown<S: ?Sized + Send + Sync + 'static>(shared: Arc<Shared<S>>) {
    // Shut down already (every task ended after `shutdown` or an abort):
    // nothing is left to drain, whether or not the runtime still runs.
    if shared.life.tasks.is_closed() && shared.life.tasks.is_empty() {
        return;
    }
    let drain = Drain { registry: shared.life.id, started: false, done: false };
    drop(shared.life.runtime.clone().spawn(async move {
        // Moved in whole, so it is dropped with the task.
        let mut drain = drain;
        drain.started = true;
        shared.life.shutdown().await;
        drain.done = true;
    }));
}

/// Watches a background shutdown; warns if it is dropped before it ended.
struct Drain {
    registry: usize,
    started: bool,
    done: bool,
}

impl Drop for Drain {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.started {
            tracing::warn!(
                registry = self.registry,
                "the runtime shut down before the background shutdown of a dropped registry finished: \
                 what was still queued was abandoned, and the servers that had not stopped yet \
                 did not run `terminate`; call `shutdown().await` before the runtime ends"
            );
        } else {
            tracing::warn!(
                registry = self.registry,
                "a registry was dropped after its runtime shut down: \
                 what was still queued was abandoned and `terminate` did not run; \
                 call `shutdown().await` before the runtime ends"
            );
        }
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

impl<R: Parts> Core<R> {
    /// Builds the core of a registry whose servers' queues were made by
    /// [`Builder::channel`]. The result is an inner copy.
    ///
    /// # Panics
    ///
    /// Panics if called outside a Tokio runtime.
    pub fn new(builder: Builder, servers: R::Servers) -> Self {
        let life = Lifecycle {
            id: builder.id,
            controls: builder.controls.into_boxed_slice(),
            tasks: TaskTracker::new(),
            runtime: runtime::Handle::current(),
            outside: AtomicUsize::new(0),
        };
        let shared: Arc<Shared<Typed<R>>> = Arc::new(Shared { life, servers: Typed(servers) });
        Core { shared, outside: false }
    }

    /// The handles of the servers, as the tuple the registry was built with.
    #[inline]
    pub fn servers(&self) -> &R::Servers {
        self.shared.servers.get()
    }
}

impl<R> Core<R> {
    /// Spawns the task of one server. Its `new` + `init` run there; `wait`
    /// on `start` waits for them.
    pub fn spawn<S: GenServer>(&self, start: &mut Start, inbox: Inbox<S>, registry: S::Registry) {
        let state = inbox.state.clone();
        let ready = start.add();
        let join = self.spawn_task(context::scope(state.clone(), run::run(inbox, registry, ready)));
        state.set_abort_handle(join.abort_handle());
    }

    pub(crate) fn spawn_task<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shared.life.tasks.spawn(task)
    }

    /// Turns this copy into an outside copy: from now on, dropping the last
    /// outside copy shuts the registry down.
    pub fn into_outside(mut self) -> Self {
        if !self.outside {
            self.shared.life.outside.fetch_add(1, Ordering::Relaxed);
            self.outside = true;
        }
        self
    }

    /// Graceful shutdown; see the generated `shutdown` method.
    pub async fn shutdown(&self) {
        let life = &self.shared.life;
        if context::in_registry(life.id) {
            // A server of this registry cannot wait for its own end.
            self.shared.servers.shutdown_in_background(self.shared.clone());
            return;
        }
        let registry = std::any::type_name::<R>();
        tracing::info!(registry, "shutting down");
        life.shutdown().await;
        tracing::info!(registry, "shut down");
    }

    /// Stops every server at its next `.await`; see the generated `abort`.
    pub fn abort(&self) {
        tracing::warn!(registry = std::any::type_name::<R>(), "aborted");
        self.shared.life.abort();
    }
}

impl<R> Clone for Core<R> {
    fn clone(&self) -> Self {
        if self.outside {
            // As `Arc::clone`: the new copy is made from a live one, so the
            // count cannot be at 0 here.
            self.shared.life.outside.fetch_add(1, Ordering::Relaxed);
        }
        Core { shared: self.shared.clone(), outside: self.outside }
    }
}

/// The last outside copy shuts the registry down in the background.
impl<R> Drop for Core<R> {
    fn drop(&mut self) {
        // As `Arc`'s drop: `Release` so every use of this copy happens
        // before the shutdown, `Acquire` in the last one to see them all.
        if self.outside && self.shared.life.outside.fetch_sub(1, Ordering::Release) == 1 {
            std::sync::atomic::fence(Ordering::Acquire);
            self.shared.servers.shutdown_in_background(self.shared.clone());
        }
    }
}

impl<R> fmt::Debug for Core<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("servers", &self.shared.life.controls.len())
            .field("outside", &self.outside)
            .finish_non_exhaustive()
    }
}

/// Makes the queues of a registry's servers before the registry exists.
#[derive(Debug)]
pub struct Builder {
    id: usize,
    controls: Vec<Control>,
    /// The runtime the registry starts on, if any.
    runtime: Option<runtime::Handle>,
    /// A pipeline's failures queue, made by its first stage.
    pub(crate) failures: Option<crate::pipeline::wiring::FailureRoute>,
    /// The input queue size of the pipeline stage made last: the tail's,
    /// which the output buffer takes.
    pub(crate) last_queue_size: Option<usize>,
}

impl Builder {
    /// A builder for a new registry.
    pub fn new() -> Self {
        Builder {
            id: next_id(),
            controls: Vec::new(),
            runtime: runtime::Handle::try_current().ok(),
            failures: None,
            last_queue_size: None,
        }
    }

    /// Makes the queue of one plain server, named `name` (its registry field
    /// name, used in errors), holding `size` messages (`None`: its
    /// `channel_queue_size()`); shutdown stops it.
    ///
    /// # Panics
    ///
    /// Panics if the size is 0.
    #[track_caller]
    pub fn channel<S: GenServer>(&mut self, name: &'static str, size: Option<usize>) -> (Handle<S>, Inbox<S>) {
        let (handle, inbox) = handle::channel::<S>(self.id, Name::new(name), self.runtime.clone(), size);
        self.controls.push(Control::new(handle.clone()));
        (handle, inbox)
    }

    /// Makes the control queue of one pipeline stage replica, named `name`,
    /// for `size` messages; the pipeline stops it by closing its input
    /// instead.
    #[track_caller]
    pub(crate) fn stage_channel<S: GenServer>(&mut self, name: Name, size: usize) -> (Handle<S>, Inbox<S>) {
        handle::channel::<S>(self.id, name, self.runtime.clone(), Some(size))
    }

    /// Adds a part that shutdown stops and abort aborts.
    pub(crate) fn control(&mut self, part: impl Stoppable + 'static) {
        self.controls.push(Control::new(part));
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

/// Collects the readiness of servers being started: a count of servers
/// not ready yet, as permits of a semaphore that each server's `Ready`
/// adds one to.
#[derive(Debug)]
pub struct Start {
    ready: Arc<Semaphore>,
    servers: u32,
}

impl Default for Start {
    fn default() -> Self {
        Start { ready: Arc::new(Semaphore::new(0)), servers: 0 }
    }
}

impl Start {
    /// An empty set.
    pub fn new() -> Self {
        Start::default()
    }

    /// One more server to wait for: it drops the token once booted. Given
    /// as the `Option` a server's task takes it from (one pointer, so it
    /// takes little room in a task that holds it for its whole life).
    pub(crate) fn add(&mut self) -> Option<Ready> {
        self.servers += 1;
        Some(Ready(self.ready.clone()))
    }

    /// Waits until every spawned server has run `new` + `init` (or failed
    /// for good trying, or its task was dropped).
    pub async fn wait(self) {
        // The semaphore is never closed.
        let _ = self.ready.acquire_many(self.servers).await;
    }
}

/// A server's part of a [`Start`]: says the server is ready when dropped.
#[derive(Debug)]
pub(crate) struct Ready(Arc<Semaphore>);

impl Drop for Ready {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}
