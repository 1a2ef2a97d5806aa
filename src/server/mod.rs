//! The GenServer core: the [`GenServer`] trait, restart limits, and the
//! per-server queue, task and handle behind every registry.
//!
//! # One queue per server
//!
//! Every server owns one bounded queue, sized by
//! [`GenServer::channel_queue_size`]. Calls, casts (and, for pipeline stages,
//! items) share it, so a server sees them in the order they were sent. A full
//! queue is backpressure: `cast_<name>` and `call_<name>` wait for room,
//! `try_cast_<name>` returns [`SendError::Full`](crate::SendError::Full).
//!
//! # Failures and restarts
//!
//! Each handler runs under a panic guard. A panicking call answers its caller
//! with [`CallError::Panicked`](crate::CallError::Panicked); the server is then
//! rebuilt with `new` + `init` and goes on with the rest of its queue, as long
//! as its [`RestartLimit`] allows. Past the limit it stays down, and every
//! message queued or sent to it comes back in a `Failed` error.
//!
//! # Clean shutdown
//!
//! A registry's `shutdown().await` puts a stop mark at the back of every
//! queue. Each server handles what is queued in front of it; when it reaches
//! the mark its queue closes (calls and casts get `Closed` errors from then
//! on, and anything that slipped in meanwhile is still handled), it runs
//! `terminate`, and its task ends. `shutdown` returns once every task ended. Dropping the last
//! registry handle held outside the servers does the same in the background,
//! as a task of the registry's runtime: the drain needs that runtime alive.
//! If the runtime shuts down before the drain ends (or was gone when the
//! last handle dropped), the queued messages are abandoned and `terminate`
//! does not run; a `tracing` warning says so. `shutdown().await` is how to
//! be sure the drain happened.
//! `abort()` stops the servers at their next `.await` instead: queued calls
//! get their messages back in `Closed` errors, `terminate` does not run.

pub(crate) mod context;
pub(crate) mod envelope;
mod genserver;
pub(crate) mod handle;
pub(crate) mod mailbox;
pub(crate) mod restart;
pub(crate) mod run;
pub(crate) mod state;
pub(crate) mod timer;
pub(crate) mod waits;

pub use genserver::GenServer;
pub use restart::RestartLimit;
pub use timer::{Timer, TimerError};
