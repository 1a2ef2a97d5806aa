use std::future::Future;

use super::RestartLimit;

/// A server: state that handles one message at a time from its own bounded
/// queue.
///
/// Implement it on a struct holding the server's state, then start the server
/// with a registry declared by [`make_registry`](crate::make_registry) (or as
/// a stage of a [`pipeline`](macro@crate::pipeline)). The registry calls
/// [`new`](GenServer::new), then [`init`](GenServer::init), then feeds the
/// server messages in the order they entered its queue: calls (which wait for
/// a [`Response`](GenServer::Response)) and casts (which do not) share that
/// one queue, so a call sees the effect of every cast the same caller sent
/// before it.
///
/// The handlers are written as `async fn` in the implementation; no boxing
/// and no nightly features are involved.
///
/// # Failures
///
/// A handler that panics does not take the server down for good. The caller
/// of a panicking call gets [`CallError::Panicked`](crate::CallError::Panicked),
/// and the server is restarted with fresh state (`new` + `init`, the queue is
/// kept), as long as it has not crashed more often than
/// [`restart_limit`](GenServer::restart_limit) allows (by default 3 restarts
/// within 5 seconds, as in OTP). Past that, the server stays down and every
/// call or cast gets a `Failed` error that hands the message back.
///
/// # Examples
///
/// ```
/// use genflow::GenServer;
///
/// struct Counter {
///     count: u64,
/// }
///
/// enum Msg {
///     Add(u64),
///     Get,
/// }
///
/// impl GenServer for Counter {
///     type Message = Msg;
///     type Response = u64;
///     type Registry = Registry;
///
///     fn new(_registry: Registry) -> Self {
///         Counter { count: 0 }
///     }
///
///     async fn handle_call(&mut self, message: Msg) -> u64 {
///         if let Msg::Add(n) = message {
///             self.count += n;
///         }
///         self.count
///     }
///
///     async fn handle_cast(&mut self, message: Msg) {
///         if let Msg::Add(n) = message {
///             self.count += n;
///         }
///     }
/// }
///
/// #[genflow::make_registry{ counter: Counter }]
/// struct Registry;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = Registry::start().await;
/// registry.cast_counter(Msg::Add(2)).await?;
/// assert_eq!(registry.call_counter(Msg::Add(3)).await?, 5);
/// assert_eq!(registry.call_counter(Msg::Get).await?, 5);
/// registry.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `GenServer`",
    label = "every registry entry must implement `genflow::GenServer`",
    note = "implement `GenServer` for it: `type Message`, `type Response`, `type Registry`, `fn new`, \
            `async fn handle_call` and `async fn handle_cast`"
)]
pub trait GenServer: Sized + Send + 'static {
    /// What `call_<name>` and `cast_<name>` carry to this server.
    type Message: Send + 'static;
    /// What a call returns.
    type Response: Send + 'static;
    /// The registry this server lives in: the struct declared with
    /// [`make_registry`](crate::make_registry) or
    /// [`pipeline`](macro@crate::pipeline). Through it a server can call the others.
    type Registry: Clone + Send + Sync + 'static;

    /// Creates the server's state. Runs when the registry starts, and again
    /// on every restart after a panic.
    ///
    /// The registry passed in is the servers' own copy: it does not keep the
    /// registry alive, so when the last handle held outside the servers is
    /// dropped, every server shuts down.
    fn new(registry: Self::Registry) -> Self;

    /// Handles a call and returns its response.
    fn handle_call(&mut self, message: Self::Message) -> impl Future<Output = Self::Response> + Send;

    /// Handles a cast.
    ///
    /// By default a cast is dropped unhandled, so a server that takes only
    /// calls (or, like most pipeline stages, neither calls nor casts) need
    /// not write it. [`handle_call`](GenServer::handle_call) has no default:
    /// it must produce a `Response`, which only the server can make (the
    /// [`stage`](macro@crate::stage) attribute writes a no-op one when
    /// `Response = ()`).
    fn handle_cast(&mut self, message: Self::Message) -> impl Future<Output = ()> + Send {
        let _ = message;
        async {}
    }

    /// Runs after [`new`](GenServer::new) and before the first message, on
    /// start and on every restart. `start().await` returns once every
    /// server's `init` has run.
    ///
    /// A server may call other servers here. Calls from `init` are part of
    /// the wait-for graph like calls from handlers: of two servers that call
    /// each other from `init`, the call that closes the cycle is refused
    /// with [`CallError::Cycle`](crate::CallError::Cycle) instead of both
    /// waiting forever.
    fn init(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Runs on graceful shutdown, after the last queued message was handled.
    /// It does not run when the server is aborted or fails for good.
    fn terminate(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The capacity of this server's queue. Casts wait (and `try_cast`
    /// fails with `Full`) while the queue is full. Defaults to 1 000.
    ///
    /// A bound, not an allocation: queues grow with what is queued, so any
    /// size works, up to `usize::MAX`. Sizes above tokio's
    /// [`Semaphore::MAX_PERMITS`](tokio::sync::Semaphore::MAX_PERMITS)
    /// (`usize::MAX >> 3`) are clamped to it, for servers and pipeline
    /// stages alike; a stage's metrics report the clamped `capacity`.
    fn channel_queue_size() -> usize {
        1_000
    }

    /// How many restarts after a panic are allowed in how much time before
    /// the server stays down. Defaults to [`RestartLimit::default`]: 3
    /// restarts within 5 seconds.
    fn restart_limit() -> RestartLimit {
        RestartLimit::default()
    }
}
