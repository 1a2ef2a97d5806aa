//! The task of a [`Source`](super::Source) that answers the broker for each
//! message: `+ACK`, `-NAK`, `+WPI` (progress) or a dead-letter copy and
//! `+TERM`.

use std::{
    collections::HashMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, AckKind};
use futures::{StreamExt, stream::FuturesUnordered};
use tokio::{
    sync::{OwnedSemaphorePermit, mpsc},
    time::{Instant, MissedTickBehavior},
};

use super::{NatsError, dead_letter::DeadLetter};
use crate::ack::Outcome;

/// What the puller and the messages' acknowledgements tell the acker, in
/// one channel: a message is tracked before its item enters the pipeline,
/// so its outcome always comes after.
pub(crate) enum Event {
    /// A message was pulled and its item goes into the pipeline.
    Track { id: u64, message: jetstream::Message, permit: OwnedSemaphorePermit },
    /// The pipeline is done with the item of message `id`.
    Done { id: u64, outcome: Outcome },
    /// A message whose payload does not decode.
    Reject { message: jetstream::Message, permit: OwnedSemaphorePermit, error: String },
    /// A message pulled after the source stopped or its pipeline closed,
    /// not on its last allowed delivery: its item never went in.
    GiveBack { message: jetstream::Message, permit: OwnedSemaphorePermit },
}

/// The delay of a `-NAK` for a message whose item was lost without
/// failing, or never went into the pipeline: long enough that the pull
/// request the source had in flight when it stopped has ended, so the
/// message goes to another worker (or to this one, started again) rather
/// than back to that request.
pub(crate) const GIVE_BACK_DELAY: Duration = Duration::from_secs(2);

/// Why a message whose item the pipeline dropped (it was aborted, or
/// shut down before the item went in) is given up on, on its last allowed
/// delivery: the dead-letter copy's error.
pub(crate) const DROPPED: &str =
    "dropped: the pipeline was aborted or shut down before it was done with the item, on its last allowed delivery";

/// The source's counters; see [`SourceStats`](super::SourceStats).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) pulled: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) naked: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) progress: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) pull_errors: AtomicU64,
    /// The error that ended the source, if one did.
    pub(crate) fatal: OnceLock<Arc<NatsError>>,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How the acker answers: the consumer's settings as the server has them.
pub(crate) struct Policy {
    /// The consumer's `max_deliver` (`None`: unlimited).
    pub(crate) max_deliver: Option<i64>,
    /// The delay of a `-NAK` for a failed item.
    pub(crate) nak_delay: Option<Duration>,
    /// The consumer's `ack_wait`.
    pub(crate) ack_wait: Duration,
    pub(crate) dead_letter: Option<DeadLetter>,
}

/// A message in the pipeline.
struct Tracked {
    message: jetstream::Message,
    /// Its prefetch slot, freed once the broker confirmed the answer.
    permit: OwnedSemaphorePermit,
    /// When the broker's ack timer last restarted for it (delivery or
    /// progress).
    touched: Instant,
}

/// Runs until every sender of `events` is gone (the puller ended and every
/// acknowledgement fired) and every answer was sent.
pub(crate) async fn run(mut events: mpsc::UnboundedReceiver<Event>, policy: Arc<Policy>, counters: Arc<Counters>) {
    let mut tracked: HashMap<u64, Tracked> = HashMap::new();
    let mut answering = FuturesUnordered::new();
    // A message is touched at most every `ack_wait / 2` and checked every
    // `ack_wait / 4`: its timer restarts before three quarters of it ran.
    let half = (policy.ack_wait / 2).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval((policy.ack_wait / 4).max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut open = true;
    while open || !answering.is_empty() {
        tokio::select! {
            event = events.recv(), if open => match event {
                None => open = false,
                Some(Event::Track { id, message, permit }) => {
                    tracked.insert(id, Tracked { message, permit, touched: Instant::now() });
                }
                Some(Event::Done { id, outcome }) => {
                    if let Some(Tracked { message, permit, .. }) = tracked.remove(&id) {
                        answering.push(answer(message, permit, Answer::Outcome(outcome), policy.clone(), counters.clone()));
                    }
                }
                Some(Event::Reject { message, permit, error }) => {
                    answering.push(answer(message, permit, Answer::Undecodable(error), policy.clone(), counters.clone()));
                }
                Some(Event::GiveBack { message, permit }) => {
                    answering.push(answer(message, permit, Answer::NotSent, policy.clone(), counters.clone()));
                }
            },
            Some(()) = answering.next(), if !answering.is_empty() => {}
            _ = tick.tick(), if !tracked.is_empty() => {
                let now = Instant::now();
                for entry in tracked.values_mut().filter(|entry| now - entry.touched >= half) {
                    entry.touched = now;
                    match entry.message.ack_with(AckKind::Progress).await {
                        Ok(()) => Counters::add(&counters.progress),
                        Err(error) => {
                            Counters::add(&counters.errors);
                            tracing::warn!(%error, "cannot send a progress acknowledgement to NATS");
                        }
                    }
                }
            }
        }
    }
}

/// What to answer for.
enum Answer {
    /// The pipeline is done with the message's item.
    Outcome(Outcome),
    /// The message's payload does not decode (why).
    Undecodable(String),
    /// The message's item never went into the pipeline.
    NotSent,
}

/// Answers the broker for a message, then frees its prefetch slot.
async fn answer(
    message: jetstream::Message,
    permit: OwnedSemaphorePermit,
    answer: Answer,
    policy: Arc<Policy>,
    counters: Arc<Counters>,
) {
    // A failure is retried after the nak delay; an item lost without
    // failing (an abort), or never sent, after `GIVE_BACK_DELAY`. Only a
    // message on its last allowed delivery is given up on: the server
    // would not deliver it again after a nak. A message never sent is
    // never on it (the source sends those in whatever happens).
    let (reasons, delay) = match answer {
        Answer::Outcome(Outcome::Delivered) => {
            confirm(&message, AckKind::Ack, &counters.acked, &counters).await;
            return;
        }
        Answer::Outcome(Outcome::Failed(failures)) => (
            failures.iter().map(|failure| format!("{}: {}", failure.stage(), failure.error())).collect::<Vec<_>>(),
            policy.nak_delay,
        ),
        Answer::Outcome(Outcome::Dropped) => (vec![DROPPED.to_string()], Some(GIVE_BACK_DELAY)),
        Answer::NotSent => {
            confirm(&message, AckKind::Nak(Some(GIVE_BACK_DELAY)), &counters.naked, &counters).await;
            return;
        }
        Answer::Undecodable(error) => {
            give_up(&message, &[error], &policy, &counters).await;
            return;
        }
    };
    let delivered = message.info().map_or(1, |info| info.delivered);
    if policy.max_deliver.is_some_and(|max| delivered >= max) {
        give_up(&message, &reasons, &policy, &counters).await;
    } else {
        confirm(&message, AckKind::Nak(delay), &counters.naked, &counters).await;
    }
    drop(permit);
}

/// Publishes the dead-letter copy, then terminates the message.
///
/// A copy that cannot be stored (no stream captures the subject, the
/// broker is away) is tried again, with a growing pause (from
/// [`RETRY_FIRST`] to [`RETRY_MOST`]), until it is: a nak would not help,
/// since the server delivers a message no more once it reached its
/// deliveries, and the message would stay in the stream unanswered. A
/// progress acknowledgement before each pause keeps it from timing out,
/// and its prefetch slot stays taken, so an outage of the dead-letter
/// stream stops the pulls rather than losing messages.
async fn give_up(message: &jetstream::Message, reasons: &[String], policy: &Policy, counters: &Counters) {
    if let Some(dead_letter) = &policy.dead_letter {
        let mut pause = RETRY_FIRST;
        loop {
            match dead_letter.publish(message, reasons).await {
                Ok(()) => break,
                Err(error @ NatsError::TooLarge { .. }) => {
                    // Retrying cannot help.
                    Counters::add(&counters.errors);
                    tracing::error!(%error, reasons = %reasons.join("; "),
                        "a message given up on is too large for a dead-letter copy: it is terminated");
                    break;
                }
                Err(error) => {
                    Counters::add(&counters.errors);
                    tracing::warn!(%error, retry_in = ?pause,
                        "cannot store a message given up on in the dead-letter subject: trying again");
                    if let Err(error) = message.ack_with(AckKind::Progress).await {
                        tracing::warn!(%error, "cannot send a progress acknowledgement to NATS");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MOST);
                }
            }
        }
    } else {
        tracing::error!(subject = %message.subject, reasons = %reasons.join("; "),
            "a message is given up on without a dead-letter subject: it is terminated");
    }
    confirm(message, AckKind::Term, &counters.dead_lettered, counters).await;
}

/// The first pause before a dead-letter copy is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// The longest pause between two tries of a dead-letter copy.
const RETRY_MOST: Duration = Duration::from_secs(5);

/// Sends `kind` and waits for the server to confirm it (a double ack),
/// counting it in `counter`, or the error.
async fn confirm(message: &jetstream::Message, kind: AckKind, counter: &AtomicU64, counters: &Counters) {
    match message.double_ack_with(kind).await {
        Ok(()) => Counters::add(counter),
        Err(error) => {
            Counters::add(&counters.errors);
            tracing::warn!(%error, ?kind, "NATS did not confirm an acknowledgement: the message may be delivered again");
        }
    }
}
