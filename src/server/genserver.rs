use std::{future::Future, time::Duration};

use super::{RestartLimit, Timer, TimerError, timer};

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

    /// Delivers `message` to this server once, after `delay`: a cast from
    /// the server to itself, handled by
    /// [`handle_cast`](GenServer::handle_cast) (by a pipeline stage, by
    /// [`Stage::handle_timer`](crate::Stage::handle_timer), which may emit).
    /// OTP's `erlang:send_after/3`.
    ///
    /// Call it from the server's own task: `init`, a handler, or a stage's
    /// `process` or `finish`. The message goes to the server whose task arms
    /// it (for a stage with replicas, the replica that armed it). Once the
    /// delay is over, the message waits for room in the server's queue like
    /// any cast, and takes its place in line behind what was queued before.
    ///
    /// The timer stops with the server: when it is stopped (graceful or
    /// not), and when it restarts after a panic, so the fresh state's
    /// `init` arms its own (as Akka's `Timers`). A cancelled timer's message
    /// is never handled, even if it already waits in the queue. Dropping the
    /// returned [`Timer`] does not cancel it; [`Timer::cancel`] does. The
    /// timer holds the server's queue weakly: it does not keep the registry
    /// alive.
    ///
    /// # Errors
    ///
    /// [`TimerError::NotInServer`] from outside the server's own task (a
    /// task a handler spawned is not the server), [`TimerError::OtherServer`]
    /// from the task of a server of another type, [`TimerError::Closed`] once
    /// the server is stopping (in `terminate`). Each hands the message back.
    ///
    /// # Panics
    ///
    /// Panics if the Tokio runtime the registry was started on was built
    /// without timers (the panic is the handler's).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use genflow::GenServer;
    ///
    /// enum Msg {
    ///     Ping,
    ///     Pings,
    /// }
    ///
    /// struct Pinger {
    ///     pings: u32,
    /// }
    ///
    /// impl GenServer for Pinger {
    ///     type Message = Msg;
    ///     type Response = u32;
    ///     type Registry = App;
    ///
    ///     fn new(_: App) -> Self {
    ///         Pinger { pings: 0 }
    ///     }
    ///
    ///     async fn init(&mut self) {
    ///         self.send_after(Duration::from_millis(10), Msg::Ping).expect("in the server's task");
    ///     }
    ///
    ///     async fn handle_cast(&mut self, message: Msg) {
    ///         if let Msg::Ping = message {
    ///             self.pings += 1;
    ///         }
    ///     }
    ///
    ///     async fn handle_call(&mut self, _: Msg) -> u32 {
    ///         self.pings
    ///     }
    /// }
    ///
    /// #[genflow::make_registry{ pinger: Pinger }]
    /// struct App;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let app = App::start().await;
    /// tokio::time::sleep(Duration::from_millis(20)).await;
    /// assert_eq!(app.call_pinger(Msg::Pings).await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    fn send_after(&self, delay: Duration, message: Self::Message) -> Result<Timer, TimerError<Self::Message>> {
        timer::send_after::<Self>(delay, message)
    }

    /// Delivers a clone of `message` to this server every `period`, the
    /// first one `period` from now, until the timer is cancelled or the
    /// server stops or restarts: OTP's `timer:send_interval/3`, Akka's
    /// `startTimerAtFixedRate`. Each tick is handled like the message of
    /// [`send_after`](GenServer::send_after) (which see for where to call
    /// it, where the message goes and when the timer stops).
    ///
    /// A server that falls behind loses ticks instead of piling them up: a
    /// tick is skipped while the previous one still waits in the queue, and
    /// ticks missed while the timer waited for room in a full queue are
    /// skipped, the next ones keeping the original schedule (Tokio's
    /// [`MissedTickBehavior::Skip`](tokio::time::MissedTickBehavior::Skip)).
    /// So a periodic timer holds at most one place in the queue. (A period
    /// longer than 30 years is taken as 30 years.)
    ///
    /// # Errors
    ///
    /// As [`send_after`](GenServer::send_after), plus
    /// [`TimerError::ZeroPeriod`] for a period of zero.
    ///
    /// # Panics
    ///
    /// Panics if the Tokio runtime the registry was started on was built
    /// without timers (the panic is the handler's).
    fn send_interval(&self, period: Duration, message: Self::Message) -> Result<Timer, TimerError<Self::Message>>
    where
        Self::Message: Clone,
    {
        timer::send_interval::<Self>(period, message)
    }
}
