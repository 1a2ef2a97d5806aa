//! A pipeline's head fed from a JetStream durable pull consumer:
//! [`Source`].

use std::{
    fmt,
    ops::ControlFlow,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use async_nats::{
    Client,
    connection::State,
    jetstream::{
        self,
        consumer::{AckPolicy, PullConsumer, pull},
        context::ConsumerInfoErrorKind,
    },
};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    Codec, NatsError,
    acker::{self, Counters, Event, Policy},
    dead_letter::DeadLetter,
};
use crate::{
    AckedInput,
    ack::{Ack, Acknowledger, Acks, Outcome},
};

/// How long one pull request waits on the server for messages: also how
/// long a stop may wait for the request in flight to end.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// A pull still open this long after [`PULL_WAIT`] was not answered by
/// the server (which ends every request at `PULL_WAIT`): the source gives
/// it up then, and, if it brought nothing, counts a failed pull. The
/// connection is down, or the server lost track of the request (after a
/// restart), or nobody serves the consumer any more.
const UNANSWERED: Duration = Duration::from_secs(2);

/// The first pause after a failed pull; it doubles after each failure in
/// a row, up to [`BACKOFF_MOST`].
const BACKOFF_FIRST: Duration = Duration::from_millis(50);

/// The longest pause between two pulls that fail.
const BACKOFF_MOST: Duration = Duration::from_secs(5);

/// Reads a JetStream stream through a *durable pull consumer* and feeds
/// each message's item into a pipeline's first stage with an
/// [`Ack`](crate::ack::Ack), answering the broker once the pipeline is done
/// with it: at-least-once delivery across processes and crashes.
///
/// Every process that starts a `Source` with the same stream and consumer
/// name shares that consumer's messages (each message goes to one of
/// them), so a segment scales by starting more processes. The consumer
/// is created, or updated to these settings, by [`start`](Self::start)
/// (the last process started wins: give every process of a segment the
/// same settings); its acknowledgements are explicit.
///
/// The stream must exist first: the source binds a consumer to it but
/// creates no stream. Create it once, with async-nats'
/// `get_or_create_stream` as in the example below, or with
/// `nats stream add`. The `client` is an [`async_nats::Client`] of
/// async-nats 0.46, the version genflow is built with, as
/// [`Connect::connect`](super::Connect::connect) returns it; genflow
/// re-exports that crate as [`genflow::nats::async_nats`](super::async_nats),
/// so a program need not depend on it (or must ask for the same 0.46).
///
/// For each message:
///
/// - its payload is decoded with the codec its `Content-Type` header
///   names (a [`Sink`](super::Sink) always writes one), or with the
///   source's [codec](Self::codec) if it has none: one that does not
///   decode, or whose `Content-Type` names no codec
///   ([`NatsError::UnknownContentType`]), is given up on at once (see
///   [`dead_letter`](super::dead_letter));
/// - the item goes into the pipeline; when every item made from it left
///   the pipeline ([`Outcome`](crate::ack::Outcome)), the source answers:
///   **delivered** → `+ACK`; **failed** → `-NAK` with the
///   [`nak_delay`](Self::nak_delay), so it is delivered again, or, on its
///   last allowed delivery ([`max_deliver`](Self::max_deliver)), a copy to
///   the [dead-letter subject](Self::dead_letter) and `+TERM`;
///   **dropped** (the pipeline was aborted or shut down before it was done
///   with the item, or the source stopped before the item went in) →
///   `-NAK` with a delay of 2 s, long enough for the source's pull request
///   in flight to end, so the message goes to another worker rather than
///   back to this one;
/// - a message on its last allowed delivery cannot be given back: the
///   server does not deliver a message again once it reached
///   `max_deliver`, whether naked or timed out. So a stopping source
///   still sends such a message's item into the pipeline (and
///   [`stop`](SourceHandle::stop) waits for it), and an item the pipeline
///   dropped on its last delivery (an abort) is given up on as a failed
///   one is, with the error `dropped: …` in its dead-letter copy: nothing
///   pulled is lost without a trace;
/// - while it is in the pipeline, a progress acknowledgement (`+WPI`) is
///   sent every half [`ack_wait`](Self::ack_wait), so a slow item is not
///   delivered again while it is being worked on.
///
/// Every answer is a *double ack*: the source waits for the server to
/// confirm it. The message's prefetch slot is freed only then, so the
/// [`prefetch`](Self::prefetch) bound holds on the server too (its
/// `num_ack_pending` for this process never exceeds it), and a lost answer
/// is seen (counted in [`SourceStats::errors`] and logged) instead of
/// turning silently into a redelivery. The cost is a round trip per
/// message, taken by up to `prefetch` answers at once.
///
/// **Bounded prefetch**: at most [`prefetch`](Self::prefetch) messages
/// are pulled and not yet answered at a time; the source asks the server
/// for exactly as many as are free. A slow pipeline stops the pulls; the
/// stream is never drained into memory.
///
/// The idea comes from Broadway's producers for message queues (a
/// producer pulls only as many messages as its pipeline demands, and its
/// acknowledger acks or requeues each one once processed) and from
/// JetStream's pull consumers.
///
/// # Examples
///
/// ```no_run
/// # use genflow::{Emitter, GenServer, Stage};
/// # struct Count;
/// # impl GenServer for Count {
/// #     type Message = (); type Response = (); type Registry = Orders;
/// #     fn new(_: Orders) -> Self { Count }
/// #     async fn handle_call(&mut self, _: ()) {}
/// # }
/// # impl Stage for Count {
/// #     type In = u64; type Out = u64;
/// #     async fn process(&mut self, n: u64, out: &mut Emitter<u64>) { out.emit(n).await; }
/// # }
/// # #[genflow::pipeline{ count: Count }]
/// # struct Orders;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use genflow::nats::{Connect, Source};
///
/// let client = Connect::new("nats://127.0.0.1:4222").connect().await?;
/// // The streams exist before the source starts (created once, by
/// // whoever deploys the segments).
/// let jetstream = genflow::nats::async_nats::jetstream::new(client.clone());
/// for (name, subject) in [("ORDERS", "orders.>"), ("DEAD", "dead.>")] {
///     jetstream
///         .get_or_create_stream(genflow::nats::async_nats::jetstream::stream::Config {
///             name: name.to_string(),
///             subjects: vec![subject.to_string()],
///             ..Default::default()
///         })
///         .await?;
/// }
/// let flow = Orders::start().await;
/// let source = Source::new(client, "ORDERS", "orders-worker")
///     .ack_wait(Duration::from_secs(30))
///     .max_deliver(5)
///     .prefetch(64)
///     .dead_letter("dead.orders")
///     .start(flow.acked())
///     .await?;
/// // ... later: stop pulling, and wait for what is in the pipeline.
/// let stats = source.stop().await;
/// println!("{} acked, {} given up on", stats.acked, stats.dead_lettered);
/// if let Some(error) = &stats.error {
///     eprintln!("the source ended by itself: {error}");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Source {
    client: Client,
    stream: String,
    consumer: String,
    filter_subject: Option<String>,
    ack_wait: Duration,
    max_deliver: Option<u32>,
    nak_delay: Duration,
    prefetch: usize,
    codec: Codec,
    dead_letter: Option<String>,
}

impl Source {
    /// A source reading `stream` through the durable consumer named
    /// `consumer`, with: no filter subject, an `ack_wait` of 30 s, 5
    /// deliveries at most, a 1 s nak delay, a prefetch of 64, JSON, and no
    /// dead-letter subject.
    pub fn new(client: Client, stream: impl Into<String>, consumer: impl Into<String>) -> Self {
        Source {
            client,
            stream: stream.into(),
            consumer: consumer.into(),
            filter_subject: None,
            ack_wait: Duration::from_secs(30),
            max_deliver: Some(5),
            nak_delay: Duration::from_secs(1),
            prefetch: 64,
            codec: Codec::Json,
            dead_letter: None,
        }
    }

    /// Reads only the stream's messages whose subject matches `subject`
    /// (wildcards allowed).
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.filter_subject = Some(subject.into());
        self
    }

    /// How long the server waits for an answer to a delivered message
    /// before it delivers it again (30 s by default). Progress
    /// acknowledgements extend it for items still in the pipeline, so
    /// this bounds how long a crashed process keeps its messages, not how
    /// long an item may take.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// How many times a message is delivered at most (5 by default, at
    /// least 1): a message failed on its last delivery is given up on (see
    /// [`dead_letter`](Self::dead_letter)). `0` means no limit: a failing
    /// message is retried for ever.
    pub fn max_deliver(mut self, max_deliver: u32) -> Self {
        self.max_deliver = (max_deliver > 0).then_some(max_deliver);
        self
    }

    /// How long after a failure a message is delivered again (1 s by
    /// default; `Duration::ZERO` for at once).
    pub fn nak_delay(mut self, delay: Duration) -> Self {
        self.nak_delay = delay;
        self
    }

    /// How many messages (not bytes) this source holds at most, pulled and
    /// not yet answered (64 by default, at least 1). Memory is bounded by
    /// `prefetch` times the largest message (at most the server's
    /// `max_payload`, 1 MiB by default), plus what the pipeline holds. The consumer's own
    /// `max_ack_pending` (the server's default: 1 000) bounds all the
    /// processes sharing it. (The server also counts there the messages
    /// naked with a delay until they are delivered again; this source,
    /// having answered them, does not.)
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        self
    }

    /// How the payloads of messages without a `Content-Type` header are
    /// decoded (JSON by default): give it the codec of whatever publishes
    /// to the stream without one. A message with that header is decoded
    /// with the codec it names, as a [`Sink`](super::Sink) writes it (see
    /// [`Codec`]).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Where copies of the messages given up on are published (see
    /// [`dead_letter`](super::dead_letter)): a subject a stream captures,
    /// and not one the source's own stream reads. Without one (the
    /// default), such messages are only terminated, with an error in the
    /// log, and still counted in [`SourceStats::dead_lettered`].
    pub fn dead_letter(mut self, subject: impl Into<String>) -> Self {
        self.dead_letter = Some(subject.into());
        self
    }

    /// Creates or updates the durable consumer, then starts pulling into
    /// `input` (a pipeline's [`acked`](crate::Pipeline::acked) input) on
    /// the current Tokio runtime.
    ///
    /// The source runs until the pipeline's input closes (its shutdown)
    /// or the returned handle is [stopped](SourceHandle::stop) or dropped.
    /// An error while it runs (a pull that fails while the connection is
    /// down, an answer the server does not confirm) is logged, counted in
    /// [`SourceStats::errors`] (and a failed pull in
    /// [`SourceStats::pull_errors`]) and retried: what was not answered is
    /// delivered again after `ack_wait`. The one fault it does not retry
    /// is its consumer, or stream, deleted while it runs: it then ends by
    /// itself, with [`NatsError::ConsumerGone`] in
    /// [`SourceStats::error`] and a `tracing` error.
    ///
    /// # Errors
    ///
    /// - [`NatsError::Unreachable`] if the connection to the broker is
    ///   down (the requests time out, after 5 s each).
    /// - [`NatsError::Consumer`] if the stream does not exist or the server
    ///   refuses the consumer's settings.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes starts nothing (the
    /// consumer may have been created).
    pub async fn start<T>(self, input: AckedInput<T>) -> Result<SourceHandle, NatsError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let jetstream = jetstream::new(self.client.clone());
        // A request that fails while the connection is down failed for
        // that reason, whatever the error says (a timeout).
        let refused = |source: Box<dyn std::error::Error + Send + Sync>| {
            let (stream, consumer) = (self.stream.clone(), self.consumer.clone());
            if self.client.connection_state() == State::Connected {
                NatsError::Consumer { stream, consumer, source }
            } else {
                NatsError::Unreachable { stream, consumer, source }
            }
        };
        let stream = jetstream.get_stream(&self.stream).await.map_err(|e| refused(Box::new(e)))?;
        let config = pull::Config {
            durable_name: Some(self.consumer.clone()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver.map_or(-1, i64::from),
            filter_subject: self.filter_subject.clone().unwrap_or_default(),
            ..Default::default()
        };
        let consumer: PullConsumer = stream.create_consumer(config).await.map_err(|e| refused(Box::new(e)))?;
        // The server's settings win (it may clamp them).
        let settings = &consumer.cached_info().config;
        let policy = Arc::new(Policy {
            max_deliver: (settings.max_deliver > 0).then_some(settings.max_deliver),
            nak_delay: (!self.nak_delay.is_zero()).then_some(self.nak_delay),
            ack_wait: settings.ack_wait,
            dead_letter: self.dead_letter.clone().map(|subject| DeadLetter { jetstream: jetstream.clone(), subject }),
        });

        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let (events, events_rx) = mpsc::unbounded_channel();
        // Holds at most `prefetch` items: each holds a prefetch slot.
        let (feed, feed_rx) = mpsc::unbounded_channel();
        let puller = Puller {
            client: self.client.clone(),
            consumer,
            stream: self.stream.clone(),
            name: self.consumer.clone(),
            slots: Arc::new(Semaphore::new(self.prefetch)),
            prefetch: self.prefetch,
            codec: self.codec,
            max_deliver: policy.max_deliver,
            acks: Acks::new(Done(events.clone())),
            events,
            feed,
            stop: stop.clone(),
            counters: counters.clone(),
            next_id: 0,
        };
        let tasks = vec![
            tokio::spawn(acker::run(events_rx, policy, counters.clone())),
            tokio::spawn(puller.run()),
            tokio::spawn(run_feed(input, feed_rx, stop.clone())),
        ];
        Ok(SourceHandle { stop, tasks, counters })
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .field("filter_subject", &self.filter_subject)
            .field("ack_wait", &self.ack_wait)
            .field("max_deliver", &self.max_deliver)
            .field("nak_delay", &self.nak_delay)
            .field("prefetch", &self.prefetch)
            .field("codec", &self.codec)
            .field("dead_letter", &self.dead_letter)
            .finish_non_exhaustive()
    }
}

/// A running [`Source`]: its counters, and the way to stop it.
///
/// Dropping it stops the source as [`stop`](Self::stop) does, without
/// waiting.
#[must_use = "dropping the handle stops the source"]
pub struct SourceHandle {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl SourceHandle {
    /// What the source did so far.
    pub fn stats(&self) -> SourceStats {
        let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let c = &self.counters;
        SourceStats {
            pulled: read(&c.pulled),
            acked: read(&c.acked),
            naked: read(&c.naked),
            dead_lettered: read(&c.dead_lettered),
            progress: read(&c.progress),
            errors: read(&c.errors),
            pull_errors: read(&c.pull_errors),
            error: c.fatal.get().cloned(),
        }
    }

    /// Whether the source ended: every message it pulled was answered.
    pub fn is_finished(&self) -> bool {
        self.tasks.iter().all(JoinHandle::is_finished)
    }

    /// Stops pulling, gives back (`-NAK`) the messages pulled whose items
    /// are not in the pipeline yet, and waits until every item in the
    /// pipeline has its outcome and each message was answered. Returns the
    /// final counts (and the error that ended the source, if one did
    /// before).
    ///
    /// A message on its last allowed delivery is not given back, since the
    /// server would not deliver it again: its item goes into the pipeline
    /// all the same, and this waits for it too. Nothing the stop leaves
    /// unprocessed is given up on.
    ///
    /// It waits as long as the pipeline takes with those items; shut the
    /// pipeline down, or wrap the call in a timeout, to bound the wait. A
    /// pull request the server still held when the source stopped may
    /// have delivered messages nobody read: the server delivers them again
    /// after `ack_wait`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops the source all the same; the answers
    /// still go out, from the source's tasks.
    pub async fn stop(mut self) -> SourceStats {
        self.stop.cancel();
        self.join().await
    }

    /// Waits until the source ends by itself: its pipeline's input closed
    /// (the pipeline was shut down), or its consumer was deleted (then
    /// [`SourceStats::error`] says so), and every message it pulled was
    /// answered. Returns the final counts.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops the source, as dropping the handle does.
    pub async fn wait(mut self) -> SourceStats {
        self.join().await
    }

    async fn join(&mut self) -> SourceStats {
        for task in std::mem::take(&mut self.tasks) {
            if let Err(error) = task.await {
                Counters::add(&self.counters.errors);
                tracing::error!(%error, "a task of a NATS source ended abnormally");
            }
        }
        self.stats()
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl fmt::Debug for SourceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceHandle").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// What a [`Source`] did: counts of messages, from its start, and the
/// error that ended it, if one did.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SourceStats {
    /// Messages pulled from the consumer (a message delivered again counts
    /// again).
    pub pulled: u64,
    /// Messages acknowledged (`+ACK`): their items were delivered.
    pub acked: u64,
    /// Messages given back (`-NAK`) to be delivered again.
    pub naked: u64,
    /// Messages given up on (`+TERM`: never delivered again): a payload
    /// that does not decode, or an item failed (or dropped) on its last
    /// allowed delivery. Each was copied to the dead-letter subject first
    /// if one is set; without one, each is counted here all the same, with
    /// an error in the log, and nothing keeps it.
    pub dead_lettered: u64,
    /// Progress acknowledgements (`+WPI`) sent.
    pub progress: u64,
    /// Errors met and retried or left to redelivery: failed pulls (also
    /// counted in [`pull_errors`](Self::pull_errors)), answers the server
    /// did not confirm, dead-letter copies not stored.
    pub errors: u64,
    /// Pulls that failed: the connection to the broker was down (one per
    /// attempt, with a pause between attempts growing from 50 ms to 5 s),
    /// the server did not answer the request, or answered with an error.
    /// Each is logged (a `tracing` warning) and tried again.
    pub pull_errors: u64,
    /// The error that ended the source by itself, if one did:
    /// [`NatsError::ConsumerGone`] when its durable consumer, or its
    /// stream, was deleted while it ran (it is also logged, as a `tracing`
    /// error). `None` for a source stopped, or ended by its pipeline's
    /// shutdown.
    pub error: Option<Arc<NatsError>>,
}

/// The task that pulls messages, as many as there are free prefetch
/// slots, and hands their items to the feeding task.
struct Puller<T> {
    client: Client,
    consumer: PullConsumer,
    /// The stream's and the consumer's names, for errors.
    stream: String,
    name: String,
    slots: Arc<Semaphore>,
    prefetch: usize,
    codec: Codec,
    /// The consumer's `max_deliver` (`None`: unlimited).
    max_deliver: Option<i64>,
    events: mpsc::UnboundedSender<Event>,
    /// Makes each message's `Ack`, which tells the acker task its outcome.
    acks: Acks<u64, Done>,
    feed: mpsc::UnboundedSender<Fed<T>>,
    stop: CancellationToken,
    counters: Arc<Counters>,
    next_id: u64,
}

/// Tells the acker task the outcome of the message tracked as `id`.
struct Done(mpsc::UnboundedSender<Event>);

impl Acknowledger<u64> for Done {
    fn acknowledge(&self, id: u64, outcome: Outcome) {
        let _ = self.0.send(Event::Done { id, outcome });
    }
}

/// An item on its way into the pipeline, with its message's `Ack`.
struct Fed<T> {
    item: T,
    ack: Ack,
    /// Whether its message is on its last allowed delivery: it goes in even
    /// once the source stops, since the server would not deliver it again.
    last: bool,
}

impl<T: DeserializeOwned + Send + 'static> Puller<T> {
    async fn run(mut self) {
        let mut backoff = BACKOFF_FIRST;
        // Whether items still go into the pipeline: not once the source
        // stopped or the pipeline's input closed.
        let mut open = true;
        while open {
            let Some(mut slots) = self.take_slots().await else { return };
            if self.client.connection_state() != State::Connected {
                drop(slots);
                let error = "the connection to the NATS server is down";
                if self.pull_failed(&error, &mut backoff).await.is_break() {
                    return;
                }
                continue;
            }
            // Not cancelled: once the request is sent, the server may
            // deliver, and the batch is read to its end.
            let asked = Instant::now();
            let request = self.consumer.batch().max_messages(slots.num_permits()).expires(PULL_WAIT).messages();
            let mut batch = match request.await {
                Ok(batch) => batch,
                Err(error) => {
                    drop(slots);
                    if self.pull_failed(&error, &mut backoff).await.is_break() {
                        return;
                    }
                    continue;
                }
            };
            let mut brought = 0;
            let mut failed = None;
            // The server ends the request at `PULL_WAIT`; the client's own
            // timer only 5 s after that. A request still open past this
            // deadline was not answered: it is given up on here, so a
            // server that lost track of it (after a restart, or a worker's
            // crash) stalls the source for `UNANSWERED`, not 5 s.
            let deadline = tokio::time::sleep_until(asked + PULL_WAIT + UNANSWERED);
            tokio::pin!(deadline);
            loop {
                let message = if open {
                    tokio::select! {
                        _ = self.stop.cancelled() => {
                            open = false;
                            continue;
                        }
                        _ = &mut deadline => break,
                        message = batch.next() => message,
                    }
                } else {
                    // What the request still brings after a stop is given
                    // back at once rather than left to `ack_wait`.
                    tokio::select! {
                        _ = &mut deadline => break,
                        message = batch.next() => message,
                    }
                };
                match message {
                    None => break,
                    Some(Err(error)) => {
                        failed = Some(error);
                        break;
                    }
                    Some(Ok(message)) => {
                        brought += 1;
                        backoff = BACKOFF_FIRST;
                        // A batch brings at most the messages asked for,
                        // one per slot.
                        let Some(slot) = slots.split(1) else { break };
                        open = self.hand_over(message, slot, open);
                    }
                }
            }
            drop(slots);
            let flow = match failed {
                Some(error) => self.pull_failed(&*error, &mut backoff).await,
                None if brought == 0 && open && asked.elapsed() >= PULL_WAIT + UNANSWERED => {
                    let error = "the NATS server did not answer a pull request";
                    self.pull_failed(&error, &mut backoff).await
                }
                None => ControlFlow::Continue(()),
            };
            if flow.is_break() {
                return;
            }
        }
    }

    /// Waits for a free slot, then takes every free slot. `None` once
    /// stopped.
    async fn take_slots(&self) -> Option<OwnedSemaphorePermit> {
        let mut slots = tokio::select! {
            _ = self.stop.cancelled() => return None,
            slot = self.slots.clone().acquire_owned() => slot.ok()?,
        };
        let more = self.slots.available_permits().min(self.prefetch - 1);
        if more > 0 {
            if let Ok(extra) = self.slots.clone().try_acquire_many_owned(more as u32) {
                slots.merge(extra);
            }
        }
        Some(slots)
    }

    /// Tracks the message and sends its item on if `open` or if the
    /// message is on its last allowed delivery, else gives it back;
    /// `false` once the source no longer sends items in (it stopped, or
    /// the feeding task is gone because the pipeline closed).
    fn hand_over(&mut self, message: jetstream::Message, slot: OwnedSemaphorePermit, open: bool) -> bool {
        Counters::add(&self.counters.pulled);
        let delivered = message.info().map_or(1, |info| info.delivered);
        let last = self.max_deliver.is_some_and(|max| delivered >= max);
        if !open && !last {
            let _ = self.events.send(Event::GiveBack { message, permit: slot });
            return false;
        }
        let item = match self.decode(&message) {
            Ok(item) => item,
            Err(error) => {
                let _ = self.events.send(Event::Reject { message, permit: slot, error: error.to_string() });
                return open;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        if self.events.send(Event::Track { id, message, permit: slot }).is_err() {
            return false;
        }
        let ack = self.acks.ack(id);
        // A refused item is dropped here: its `Ack` reports it dropped.
        self.feed.send(Fed { item, ack, last }).is_ok() && open
    }

    /// Decodes the message's payload with the codec its `Content-Type`
    /// header names, or with the source's codec if it has none.
    fn decode(&self, message: &jetstream::Message) -> Result<T, NatsError> {
        let content_type = message.headers.as_ref().and_then(|headers| {
            headers
                .iter()
                .find(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case("Content-Type"))
                .and_then(|(_, values)| values.first())
                .map(|value| value.as_str().trim())
                .filter(|value| !value.is_empty())
        });
        let codec = match content_type {
            None => self.codec,
            Some(content_type) => Codec::from_content_type(content_type).ok_or_else(|| {
                NatsError::UnknownContentType { content_type: content_type.to_string(), codec: self.codec }
            })?,
        };
        codec.decode(&message.payload)
    }

    /// Counts and logs a failed pull, and finds out whether the consumer
    /// is gone: if so, records the error, stops the source and breaks;
    /// else waits before the next pull (doubling, up to [`BACKOFF_MOST`])
    /// and continues.
    async fn pull_failed(&self, error: &(dyn fmt::Display + Send + Sync), backoff: &mut Duration) -> ControlFlow<()> {
        Counters::add(&self.counters.errors);
        Counters::add(&self.counters.pull_errors);
        if self.client.connection_state() == State::Connected {
            // Asked only once something went wrong: whether the consumer
            // (or its stream) still exists.
            if let Err(gone) = self.consumer.get_info().await {
                if matches!(gone.kind(), ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound) {
                    let error = NatsError::ConsumerGone {
                        stream: self.stream.clone(),
                        consumer: self.name.clone(),
                        source: Box::new(gone),
                    };
                    tracing::error!(%error, "the NATS source ends");
                    let _ = self.counters.fatal.set(Arc::new(error));
                    self.stop.cancel();
                    return ControlFlow::Break(());
                }
            }
            tracing::warn!(%error, stream = %self.stream, consumer = %self.name,
                "cannot pull from NATS; retrying in {backoff:?}");
        } else {
            tracing::warn!(%error, stream = %self.stream, consumer = %self.name,
                "the NATS server is unreachable; pulling again in {backoff:?}");
        }
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(BACKOFF_MOST);
        ControlFlow::Continue(())
    }
}

/// The task that sends the pulled items into the pipeline, in order,
/// waiting for room (backpressure). When the pipeline's input closes it
/// stops the source. Once the source stops, the items not yet in are
/// dropped with their `Ack`s, which report them dropped (`-NAK`), but for
/// those whose messages are on their last allowed delivery: the server
/// would not deliver them again, so they go in all the same.
async fn run_feed<T: Send + 'static>(
    input: AckedInput<T>,
    mut items: mpsc::UnboundedReceiver<Fed<T>>,
    stop: CancellationToken,
) {
    loop {
        let Fed { item, ack, last } = tokio::select! {
            biased;
            fed = items.recv() => match fed {
                Some(fed) => fed,
                None => return,
            },
            // Shut down while no message waits to go in.
            () = input.closed() => {
                stop.cancel();
                return;
            }
        };
        if stop.is_cancelled() && !last {
            continue;
        }
        let sent = if last {
            input.send(item, ack).await
        } else {
            tokio::select! {
                biased;
                sent = input.send(item, ack) => sent,
                // Not sent: dropped, with its `Ack`.
                _ = stop.cancelled() => continue,
            }
        };
        if sent.is_err() {
            // The pipeline's input closed: the rest is dropped.
            stop.cancel();
            return;
        }
    }
}
