//! Error types returned by calls, casts and sends.
//!
//! Every error that stands for an undelivered message hands that message back
//! through `into_message`, so nothing a caller sent is lost without the caller
//! knowing. The `Debug` impls do not require the message type to be `Debug`.

use std::fmt;

/// Why a call did not return a response.
///
/// Returned by the generated `call_<name>` and `call_<name>_with_timeout`
/// methods. Use [`CallError::into_message`] to get back a message that was
/// never handled.
///
/// The variants: [`Closed`](Self::Closed) and [`Failed`](Self::Failed) (the
/// server is not running), [`SelfCall`](Self::SelfCall) and
/// [`Cycle`](Self::Cycle) (the call would wait forever, refused at once),
/// [`Timeout`](Self::Timeout), [`Panicked`](Self::Panicked) and
/// [`Aborted`](Self::Aborted).
#[non_exhaustive]
pub enum CallError<M> {
    /// The server is not running: it was shut down or aborted. The message
    /// was not handled.
    Closed(M),
    /// The server panicked more often than its
    /// [`RestartLimit`](crate::RestartLimit) allows and stays down. The message
    /// was not handled.
    Failed(M),
    /// A server called itself, which would wait forever. The message was not
    /// handled.
    SelfCall(M),
    /// The call was made from inside a server whose callee already waits,
    /// directly or through other servers, on the caller: waiting would never
    /// end. `servers` names the cycle by the servers' registry field names
    /// (a replica as `stage[i]`), from the caller round to the caller again,
    /// e.g. `["b", "a", "b"]`. The message was not handled; every server
    /// in the cycle keeps running.
    Cycle {
        /// The message, not handled.
        message: M,
        /// The servers in the cycle, from the caller round to it again.
        servers: Vec<String>,
    },
    /// The call did not complete in time. Holds the message if it never
    /// entered the server's queue; `None` once the server had accepted it (a
    /// call that times out while still queued is never handled).
    Timeout(Option<M>),
    /// The server panicked while handling this call. It was restarted with
    /// fresh state (if its restart limit allowed it).
    Panicked,
    /// The server was aborted (or its runtime shut down) while it was
    /// handling this call.
    Aborted,
}

impl<M> CallError<M> {
    /// Returns the message if it was not handled by the server.
    ///
    /// `None` for [`CallError::Panicked`], [`CallError::Aborted`] and for a timeout after the server
    /// accepted the message.
    pub fn into_message(self) -> Option<M> {
        match self {
            Self::Closed(m) | Self::Failed(m) | Self::SelfCall(m) | Self::Cycle { message: m, .. } => Some(m),
            Self::Timeout(m) => m,
            Self::Panicked | Self::Aborted => None,
        }
    }

    /// Whether the call timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
    }

    /// Whether the server is not running (closed, or failed for good).
    pub fn is_stopped(&self) -> bool {
        matches!(self, Self::Closed(_) | Self::Failed(_))
    }

    /// Whether the call was refused because it would have waited forever:
    /// [`SelfCall`](Self::SelfCall) or [`Cycle`](Self::Cycle).
    pub fn is_deadlock(&self) -> bool {
        matches!(self, Self::SelfCall(_) | Self::Cycle { .. })
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Closed(_) => "Closed",
            Self::Failed(_) => "Failed",
            Self::SelfCall(_) => "SelfCall",
            Self::Cycle { .. } => "Cycle",
            Self::Timeout(_) => "Timeout",
            Self::Panicked => "Panicked",
            Self::Aborted => "Aborted",
        }
    }
}

impl<M> fmt::Debug for CallError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Panicked => f.write_str("Panicked"),
            Self::Aborted => f.write_str("Aborted"),
            Self::Timeout(None) => f.write_str("Timeout(None)"),
            Self::Cycle { servers, .. } => f.debug_struct("Cycle").field("servers", servers).finish_non_exhaustive(),
            _ => f.debug_tuple(self.name()).finish_non_exhaustive(),
        }
    }
}

impl<M> fmt::Display for CallError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Self::Cycle { servers, .. } = self {
            return write!(f, "call would deadlock: {}", servers.join(" -> "));
        }
        f.write_str(match self {
            Self::Closed(_) => "server is not running",
            Self::Failed(_) => "server is down: it panicked more often than its restart limit allows",
            Self::SelfCall(_) => "server called itself, which would never return",
            Self::Cycle { .. } => "call would deadlock",
            Self::Timeout(Some(_)) => "call timed out before the server accepted the message",
            Self::Timeout(None) => "call timed out",
            Self::Panicked => "server panicked while handling the call",
            Self::Aborted => "server was aborted while handling the call",
        })
    }
}

impl<M> std::error::Error for CallError<M> {}

/// Why a message or item could not be sent.
///
/// Returned by `cast_<name>`, `try_cast_<name>` and the pipeline's `send`,
/// `try_send`, `feed` and sinks. The undelivered message is always handed
/// back: see [`SendError::into_message`].
///
/// The variants: [`Full`](Self::Full) (the queue had no room and waiting was
/// not an option), [`Closed`](Self::Closed) and [`Failed`](Self::Failed) (the
/// receiver is not running), and [`Cycle`](Self::Cycle) (a cast from inside
/// a server found the queue full and waiting for room would never end).
#[non_exhaustive]
pub enum SendError<T> {
    /// The queue is full (only from methods that never wait, and from a
    /// server casting to itself, which would otherwise wait forever).
    Full(T),
    /// The receiver is not running: it was shut down or aborted.
    Closed(T),
    /// The server panicked more often than its
    /// [`RestartLimit`](crate::RestartLimit) allows and stays down.
    Failed(T),
    /// A cast made from inside a server found the receiver's queue full,
    /// and the receiver already waits, directly or through other servers, on
    /// the caller: waiting for room would never end, so the cast returns at
    /// once. `servers` names the cycle by registry field names (a replica as
    /// `stage[i]`), from the caller round to it again. The receiver is still
    /// running; the message was not queued.
    Cycle {
        /// The message, not queued.
        message: T,
        /// The servers in the cycle, from the caller round to it again.
        servers: Vec<String>,
    },
    /// The `partition_by` key function of the stage the item was sent to
    /// panicked on it, so it has no queue to go to. Only from sends into a
    /// pipeline stage from outside (`send`, `try_send`, `feed`, sinks); the
    /// item was not queued and the pipeline goes on. (An item the previous
    /// stage emits fails at the stage instead: see the pipeline docs.)
    KeyPanicked {
        /// The item, not queued.
        message: T,
        /// The panic's message.
        panic: crate::pipeline::Panicked,
    },
}

impl<T> SendError<T> {
    /// Returns the message that was not sent.
    pub fn into_message(self) -> Option<T> {
        match self {
            Self::Full(m)
            | Self::Closed(m)
            | Self::Failed(m)
            | Self::Cycle { message: m, .. }
            | Self::KeyPanicked { message: m, .. } => Some(m),
        }
    }

    /// Whether the queue was full (the receiver is still running).
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full(_))
    }

    /// Whether the receiver is not running (closed, or failed for good).
    pub fn is_stopped(&self) -> bool {
        matches!(self, Self::Closed(_) | Self::Failed(_))
    }

    /// Whether the cast was refused because waiting would never end.
    pub fn is_deadlock(&self) -> bool {
        matches!(self, Self::Cycle { .. })
    }

    /// Applies `f` to the message inside, keeping the kind of error.
    pub fn map_message<U>(self, f: impl FnOnce(T) -> U) -> SendError<U> {
        match self {
            Self::Full(m) => SendError::Full(f(m)),
            Self::Closed(m) => SendError::Closed(f(m)),
            Self::Failed(m) => SendError::Failed(f(m)),
            Self::Cycle { message, servers } => SendError::Cycle { message: f(message), servers },
            Self::KeyPanicked { message, panic } => SendError::KeyPanicked { message: f(message), panic },
        }
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Full(_) => "Full",
            Self::Closed(_) => "Closed",
            Self::Failed(_) => "Failed",
            Self::Cycle { servers, .. } => {
                return f.debug_struct("Cycle").field("servers", servers).finish_non_exhaustive();
            }
            Self::KeyPanicked { panic, .. } => {
                return f.debug_struct("KeyPanicked").field("panic", panic).finish_non_exhaustive();
            }
        };
        f.debug_tuple(name).finish_non_exhaustive()
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cycle { servers, .. } => {
                return write!(f, "cast would deadlock waiting for room: {}", servers.join(" -> "));
            }
            Self::KeyPanicked { panic, .. } => {
                return write!(f, "the partition key function panicked: {panic}");
            }
            Self::Full(_) => "queue is full",
            Self::Closed(_) => "receiver is not running",
            Self::Failed(_) => "server is down: it panicked more often than its restart limit allows",
        })
    }
}

impl<T> std::error::Error for SendError<T> {}

/// Why a pipeline's `flush` could not wait for what was sent.
///
/// Returned by the generated `flush` method (and [`Pipeline::flush`](crate::Pipeline::flush)).
/// There is no message to hand back: a flush sends nothing.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushError {
    /// The pipeline was shut down (or is shutting down) or aborted before
    /// the flush began: its input is closed, and its stages' state may be
    /// gone.
    Closed,
    /// The pipeline was aborted while the flush waited: items it was waiting
    /// for were dropped (and counted as `aborted`), not processed.
    Aborted,
    /// The flush was made by one of the pipeline's own stages (in `process`
    /// or a handler), which would wait for itself: refused at once.
    FromInside,
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "pipeline is shut down",
            Self::Aborted => "pipeline was aborted while the flush waited",
            Self::FromInside => "a stage cannot flush its own pipeline: it would wait for itself",
        })
    }
}

impl std::error::Error for FlushError {}
