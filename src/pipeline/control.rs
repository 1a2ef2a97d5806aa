//! How a stage serves its control queue: calls and casts as any server
//! does, and the messages of its own timers with its [`Emitter`], through
//! [`Stage::handle_timer`].

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc};

use futures::{FutureExt, future::Either};

use super::{Emitter, Stage};
use crate::server::{
    envelope::Envelope,
    run::{Crashed, handle, report},
    timer::TimerShared,
};

/// Handles one envelope of a stage's control queue. A timer's message goes
/// to `handle_timer` with `out`; the rest as for any server.
///
/// The timer's path runs boxed (one allocation per tick): it holds the
/// user's `handle_timer` future and a send, which every idle replica's
/// task would otherwise hold room for.
pub(crate) fn serve<'a, S: Stage>(
    server: &'a mut S,
    envelope: Envelope<S>,
    out: &'a mut Emitter<S::Out>,
) -> impl Future<Output = Result<(), Crashed>> + Send + 'a {
    match envelope {
        Envelope::Timer(message, timer) => Either::Left(Box::pin(on_timer(server, message, timer, out))),
        envelope => Either::Right(handle(server, envelope)),
    }
}

/// A timer's message: `handle_timer`, then what it emitted and failed
/// goes on at once, as after `finish`. A panic is a handler's (the state
/// is rebuilt), after what was emitted before it went on.
async fn on_timer<S: Stage>(
    server: &mut S,
    message: S::Message,
    timer: Arc<TimerShared>,
    out: &mut Emitter<S::Out>,
) -> Result<(), Crashed> {
    if !timer.deliver() {
        // Cancelled while its message waited in the queue.
        return Ok(());
    }
    drop(timer);
    if out.is_ordered() {
        // An ordered stage's outputs follow its inputs' order, which a
        // timer stands outside of: its message is a plain cast.
        return handle(server, Envelope::Cast(message)).await;
    }
    out.begin_timer();
    let handled = AssertUnwindSafe(server.handle_timer(message, out)).catch_unwind().await;
    out.end_timer();
    if let Err(panic) = &handled {
        report::<S>("handle_timer", panic);
    }
    out.send_failures().await;
    out.flush().await;
    handled.map_err(|_| Crashed)
}
