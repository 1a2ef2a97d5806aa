//! Timers: a server asks for one of its own messages later, once or
//! periodically.
//!
//! The idea is OTP's `erlang:send_after/3` and `timer:send_interval/3`
//! (a message to oneself, delivered to the handler like any other) with
//! Akka's `Timers` semantics: a server's timers stop with it and are
//! cancelled when it restarts, and the message of a cancelled timer is
//! never handled, even if it was already queued.
//!
//! # How it works
//!
//! Each server's [`ServerState`] keeps a small [`TimerHost`] made with its
//! queue: a weak sender of that queue (typed, reached by downcasting from
//! inside the server's own task) and the list of its armed timers, which is
//! allocated by the first timer. Arming a timer spawns one task on the
//! registry's runtime that sleeps, waits for room in the server's queue
//! like a cast, and puts an [`Envelope::Timer`] there, holding the message
//! and the timer's shared state. The envelope is checked when the server
//! takes it: a timer cancelled meanwhile is skipped.
//!
//! The timer's task holds the queue weakly while it sleeps, so it keeps
//! nothing alive: a registry whose outside handles are all dropped shuts
//! down as usual, and when a server's task ends (graceful stop, abort,
//! failed for good) its queue's receiver is dropped, which cancels and
//! aborts every timer it armed. A restart cancels them too, before the
//! fresh state's `new`.

use std::{
    any::Any,
    fmt,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use tokio::{
    task::AbortHandle,
    time::{Instant, MissedTickBehavior},
};

use super::{GenServer, context, envelope::Envelope, mailbox, state::ServerState};

/// A timer armed with [`GenServer::send_after`] or
/// [`GenServer::send_interval`]: cancel it with [`cancel`](Self::cancel).
///
/// Dropping a `Timer` does **not** cancel it (as with OTP's timer
/// references): a server that never cancels can ignore it. Clones share the
/// timer; a `Timer` may be sent to and cancelled from any task or thread.
///
/// A timer ends by itself once a `send_after` message was handled, and when
/// its server stops or restarts.
#[derive(Clone)]
pub struct Timer {
    shared: Arc<TimerShared>,
}

impl Timer {
    /// Cancels the timer: its message is not handled from now on, even if
    /// it already waits in the server's queue (it is dropped unhandled when
    /// the server reaches it).
    ///
    /// Returns `true` if this call cancelled it, `false` if it had already
    /// ended: cancelled before, its `send_after` message handled, or its
    /// server stopped or restarted. A handler that is running when another
    /// task cancels its timer runs to its end.
    pub fn cancel(&self) -> bool {
        self.shared.cancel()
    }

    /// Whether the timer may still deliver its message: not cancelled, and
    /// for a `send_after` timer, its message not handled yet.
    pub fn is_active(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) & (CANCELLED | DONE) == 0
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("periodic", &!self.shared.once)
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

/// Why a timer could not be armed. The message is handed back with
/// [`into_message`](Self::into_message).
///
/// `Debug` does not require the message to be `Debug`.
#[non_exhaustive]
pub enum TimerError<M> {
    /// Not called from the server's own task: from outside any server, or
    /// from a task a handler spawned (which is not the server).
    NotInServer(M),
    /// Called from the task of a server of another type than the one whose
    /// method was called (a server holding a value of another server type
    /// and arming a timer on it). A timer always goes to the server whose
    /// task arms it.
    OtherServer(M),
    /// The server's queue is closed: it is stopping (a timer armed in
    /// `terminate`) or was stopped.
    Closed(M),
    /// `send_interval` was given a period of zero.
    ZeroPeriod(M),
}

impl<M> TimerError<M> {
    /// The message the timer would have delivered.
    pub fn into_message(self) -> M {
        match self {
            Self::NotInServer(m) | Self::OtherServer(m) | Self::Closed(m) | Self::ZeroPeriod(m) => m,
        }
    }
}

impl<M> fmt::Debug for TimerError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::NotInServer(_) => "NotInServer",
            Self::OtherServer(_) => "OtherServer",
            Self::Closed(_) => "Closed",
            Self::ZeroPeriod(_) => "ZeroPeriod",
        };
        f.debug_tuple(name).finish_non_exhaustive()
    }
}

impl<M> fmt::Display for TimerError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotInServer(_) => "a timer can only be armed from inside its server's own task",
            Self::OtherServer(_) => "a timer can only be armed by the server it delivers to",
            Self::Closed(_) => "the server is stopping: its queue is closed",
            Self::ZeroPeriod(_) => "the period of a timer must not be zero",
        })
    }
}

impl<M> std::error::Error for TimerError<M> {}

/// The longest period a periodic timer keeps: 30 years.
pub(crate) const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The timer's message waits in the server's queue.
const QUEUED: u8 = 1;
/// Cancelled (by `cancel`, a restart or the server's end).
const CANCELLED: u8 = 2;
/// A `send_after` timer whose message was handled.
const DONE: u8 = 4;

/// What a timer's handle, its task and its queued envelope share.
pub(crate) struct TimerShared {
    state: AtomicU8,
    /// `send_after` (true) or `send_interval`.
    once: bool,
    /// The timer's task, aborted on cancel.
    task: OnceLock<AbortHandle>,
}

impl TimerShared {
    fn new(once: bool) -> Self {
        TimerShared { state: AtomicU8::new(0), once, task: OnceLock::new() }
    }

    fn cancel(&self) -> bool {
        let before = self.state.fetch_or(CANCELLED, Ordering::AcqRel);
        if let Some(task) = self.task.get() {
            task.abort();
        }
        before & (CANCELLED | DONE) == 0
    }

    fn set_task(&self, task: AbortHandle) {
        let _ = self.task.set(task);
        // Cancelled before its task was known: stop it now.
        if self.state.load(Ordering::Acquire) & CANCELLED != 0 {
            self.cancel();
        }
    }

    /// Marks the message queued; `false` if the timer was cancelled.
    fn queue(&self) -> bool {
        self.state.fetch_or(QUEUED, Ordering::AcqRel) & CANCELLED == 0
    }

    fn is_queued(&self) -> bool {
        self.state.load(Ordering::Acquire) & QUEUED != 0
    }

    fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) & CANCELLED != 0
    }

    /// The server took the timer's envelope: whether to handle its message
    /// (`false`: the timer was cancelled meanwhile).
    pub(crate) fn deliver(&self) -> bool {
        let done = if self.once { DONE } else { 0 };
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let next = if state & CANCELLED != 0 { state & !QUEUED } else { (state & !QUEUED) | done };
            match self.state.compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return state & CANCELLED == 0,
                Err(now) => state = now,
            }
        }
    }

    fn is_over(&self) -> bool {
        self.state.load(Ordering::Acquire) & (CANCELLED | DONE) != 0
    }
}

/// A server's side of its timers, kept in its [`ServerState`]: how to
/// reach its queue, and the timers it armed.
pub(crate) trait TimerHost: Send + Sync {
    /// For the downcast to the typed host.
    fn as_any(&self) -> &dyn Any;

    /// Cancels every timer armed so far (the server restarts or ended).
    fn cancel_all(&self);
}

impl fmt::Debug for dyn TimerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerHost").finish_non_exhaustive()
    }
}

/// The timer host of server `S`. Made with the server's queue; its list is
/// allocated by the first timer.
pub(crate) struct Host<S: GenServer> {
    tx: mailbox::WeakSender<Envelope<S>>,
    #[allow(clippy::box_collection, reason = "one pointer while no timer was armed")]
    armed: Mutex<Option<Box<Vec<Arc<TimerShared>>>>>,
}

impl<S: GenServer> Host<S> {
    pub(crate) fn boxed(tx: mailbox::WeakSender<Envelope<S>>) -> Box<dyn TimerHost> {
        Box::new(Host { tx, armed: Mutex::new(None) })
    }

    /// Records `timer`, forgetting those that ended.
    fn add(&self, timer: Arc<TimerShared>) {
        let mut armed = self.armed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let armed = armed.get_or_insert_default();
        armed.retain(|timer| !timer.is_over());
        armed.push(timer);
    }
}

impl<S: GenServer> TimerHost for Host<S> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn cancel_all(&self) {
        let armed = self.armed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        for timer in armed.into_iter().flat_map(|armed| *armed) {
            timer.cancel();
        }
    }
}

/// The server whose task runs now, if it is an `S`, with its queue.
#[allow(clippy::type_complexity, reason = "the parts, spelled out once")]
fn current<S: GenServer>(
    message: S::Message,
) -> Result<(Arc<ServerState>, mailbox::Sender<Envelope<S>>, S::Message), TimerError<S::Message>> {
    let Some(state) = context::current() else { return Err(TimerError::NotInServer(message)) };
    let Some(host) = state.timers().and_then(|host| host.as_any().downcast_ref::<Host<S>>()) else {
        return Err(TimerError::OtherServer(message));
    };
    match host.tx.upgrade() {
        Some(tx) if !tx.is_closed() => Ok((state, tx, message)),
        _ => Err(TimerError::Closed(message)),
    }
}

/// Arms a timer of the server whose task runs now: `S::send_after`.
pub(crate) fn send_after<S: GenServer>(delay: Duration, message: S::Message) -> Result<Timer, TimerError<S::Message>> {
    let (state, tx, message) = current::<S>(message)?;
    let weak = tx.downgrade();
    drop(tx);
    let shared = Arc::new(TimerShared::new(true));
    // Made here, in the handler: a runtime without timers panics in the
    // handler, not in a task of its own.
    let sleep = tokio::time::sleep(delay);
    let timer = shared.clone();
    let host_state = state.clone();
    let task = async move {
        sleep.await;
        post(&weak, &host_state, message, &timer).await;
    };
    Ok(spawn::<S>(&state, shared, task))
}

/// Arms a periodic timer of the server whose task runs now:
/// `S::send_interval`.
pub(crate) fn send_interval<S: GenServer>(
    period: Duration,
    message: S::Message,
) -> Result<Timer, TimerError<S::Message>>
where
    S::Message: Clone,
{
    if period.is_zero() {
        return Err(TimerError::ZeroPeriod(message));
    }
    let (state, tx, message) = current::<S>(message)?;
    let weak = tx.downgrade();
    drop(tx);
    let shared = Arc::new(TimerShared::new(false));
    // A period past any clock's reach ticks in 30 years (as Tokio's own
    // far future): `Instant` arithmetic would overflow.
    let period = period.min(FAR);
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let timer = shared.clone();
    let host_state = state.clone();
    let task = async move {
        loop {
            interval.tick().await;
            // One tick in the queue at a time: a server behind on its
            // queue gets the next tick once it took the last one.
            if timer.is_queued() {
                continue;
            }
            if !post(&weak, &host_state, message.clone(), &timer).await {
                return;
            }
        }
    };
    Ok(spawn::<S>(&state, shared, task))
}

/// Spawns a timer's task on the registry's runtime and records the timer
/// with its server.
fn spawn<S: GenServer>(
    state: &ServerState,
    shared: Arc<TimerShared>,
    task: impl Future<Output = ()> + Send + 'static,
) -> Timer {
    let join = match &state.runtime {
        Some(runtime) => runtime.spawn(task),
        None => tokio::spawn(task),
    };
    shared.set_task(join.abort_handle());
    if let Some(host) = state.timers().and_then(|host| host.as_any().downcast_ref::<Host<S>>()) {
        host.add(shared.clone());
    }
    Timer { shared }
}

/// Puts the timer's message in the server's queue, waiting for room like a
/// cast. `false` once the timer or the server is over.
async fn post<S: GenServer>(
    weak: &mailbox::WeakSender<Envelope<S>>,
    state: &ServerState,
    message: S::Message,
    timer: &Arc<TimerShared>,
) -> bool {
    if timer.is_cancelled() {
        return false;
    }
    let Some(tx) = weak.upgrade() else { return false };
    let Ok(permit) = tx.reserve().await else { return false };
    if !timer.queue() {
        return false;
    }
    permit.send(Envelope::Timer(message, timer.clone()));
    state.post();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_queued_before_its_timer_was_cancelled_is_not_handled() {
        let timer = TimerShared::new(false);
        assert!(timer.queue());
        assert!(timer.is_queued());
        assert!(timer.cancel());
        assert!(!timer.deliver());
        assert!(!timer.is_queued());
        assert!(timer.is_over());
    }

    #[test]
    fn a_cancelled_timer_queues_nothing() {
        let timer = TimerShared::new(true);
        assert!(timer.cancel());
        assert!(!timer.cancel());
        assert!(!timer.queue());
    }

    #[test]
    fn a_send_after_timer_is_over_once_its_message_was_handled() {
        let timer = TimerShared::new(true);
        assert!(timer.queue());
        assert!(timer.deliver());
        assert!(timer.is_over());
        assert!(!timer.cancel(), "nothing left to cancel");
    }

    #[test]
    fn a_periodic_timer_takes_a_place_in_the_queue_again_once_its_tick_was_handled() {
        let timer = TimerShared::new(false);
        assert!(timer.queue());
        assert!(timer.deliver());
        assert!(!timer.is_queued());
        assert!(!timer.is_over());
        assert!(timer.queue());
        assert!(timer.is_queued());
    }
}
