//! What generated pipelines hold and call: stage handles, the output, and
//! the spawning of stage replicas.

use std::{
    fmt,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::future::join_all;

use tokio::time::Instant;

pub(crate) use super::failure::FailureRoute;
use super::{
    AckedInput, Emitter, Failure, Failures, Input, InputSink, Metrics, Output, Stage, StageMetrics,
    batch::{BatchSpec, Intake, TakeFrom, Whole},
    concurrency::Concurrency,
    dispatch::Dispatch,
    drain::StageDrain,
    emitter::Link,
    flush::{FlushPoint, ReplicaMark},
    fused::{Fused, FusedStage},
    metrics::Counters,
    output::OutputShared,
    queue::Queue,
    rate::RateLimit,
    reorder::Reorder,
    run::{self, Pace},
};
use crate::{
    CallError, MAX_REPLICAS, SendError,
    registry::{BoxFuture, Builder, Core, Start, Stoppable},
    server::{
        context,
        handle::{Handle, Inbox, Refused},
        state::{Name, ServerState},
        waits::{RunBy, Waiting},
    },
};

/// How a stage is declared: `#[replicas(..)]` and its place in the pipeline.
#[derive(Debug)]
pub struct StageSpec<T> {
    /// The stage's name, for metrics.
    pub name: &'static str,
    /// How many replicas run it.
    pub replicas: usize,
    /// `partition_by`: the hash of an item's key.
    pub partition: Option<fn(&T) -> u64>,
    /// Whether this is the first stage (shutdown closes its input).
    pub head: bool,
    /// `ordered`: outputs leave in input order.
    pub ordered: bool,
    /// The size of each input queue; `None`: the stage's
    /// `channel_queue_size()`.
    pub queue_size: Option<usize>,
    /// The most items one replica takes from its queue at a time (at
    /// least 1).
    pub max_demand: usize,
    /// At most `n` items per interval through the stage, over all its
    /// replicas (`n` of 0: no limit).
    pub rate_limit: Option<(u32, Duration)>,
    /// `#[batch(..)]`: how the stage's replicas cut the batches they take.
    pub batch: Option<BatchSpec>,
    /// `#[concurrency(N)]`: futures handed over by `emit_async` in flight
    /// at once per replica (1: awaited in place).
    pub concurrency: usize,
    /// `#[concurrency(N, ordered)]`: their outputs in hand-over order.
    pub concurrency_ordered: bool,
}

/// A running stage, as the pipeline holds it. `K` says how its replicas
/// take their inputs from its queue: [`Whole`] items, or
/// [`Batched`](super::batch::Batched) for a `#[batch(..)]` stage.
pub struct StageHandle<S: Stage, K: Intake<S> = Whole> {
    name: &'static str,
    ordered: bool,
    pace: Pace,
    replicas: Box<[Handle<S>]>,
    counters: Box<[Arc<Counters>]>,
    input: Input<K::Item>,
    next: AtomicUsize,
    flush: Arc<FlushPoint>,
}

/// What the spawning of a stage's replicas needs; used once, in `start`.
pub struct StageWiring<S: Stage> {
    inboxes: Vec<Inbox<S>>,
    failures: FailureRoute,
}

/// Shutdown closes the head's input; abort stops every replica and closes
/// and clears every input, so nobody waits on a stopped stage. The cleared
/// items (and any committed after, into room reserved before) are counted
/// by the queue and reported as received and aborted by the stage.
struct StageControl<T> {
    dispatch: Dispatch<T>,
    replicas: Vec<Arc<ServerState>>,
    head: bool,
    flush: Arc<FlushPoint>,
}

impl<T: Send + 'static> Stoppable for StageControl<T> {
    fn stop(&self) -> BoxFuture<'_> {
        if self.head {
            self.dispatch.close();
        }
        Box::pin(async {})
    }

    fn abort(&self) {
        for replica in &self.replicas {
            replica.abort();
        }
        for queue in self.dispatch.queues() {
            queue.close_and_clear();
        }
        self.flush.abort();
    }
}

impl Builder {
    /// Makes the queues of one stage: its input queue(s) and one control
    /// queue per replica.
    ///
    /// The queue size is `spec.queue_size` (the builder's), else the
    /// stage's `channel_queue_size()`. The control mailbox of each replica
    /// (its calls and casts) has the declared `channel_queue_size()`, or,
    /// where that is 0, the queue size; so does the pipeline's output
    /// buffer after the last stage (see [`Plumbing::new`]).
    ///
    /// # Panics
    ///
    /// Panics if `replicas` is 0 or above [`MAX_REPLICAS`] (the builder and
    /// the macro check both before), or if the queue size is 0.
    #[track_caller]
    pub fn stage<S: Stage, K: Intake<S>>(&mut self, spec: StageSpec<K::Item>) -> (StageHandle<S, K>, StageWiring<S>) {
        assert!(spec.replicas > 0, "a stage needs at least one replica");
        assert!(spec.replicas <= MAX_REPLICAS, "a stage has at most {MAX_REPLICAS} replicas");
        assert!(!(spec.ordered && spec.partition.is_some()), "`ordered` cannot be combined with `partition_by`");
        let declared = S::channel_queue_size();
        let capacity = spec.queue_size.unwrap_or(declared);
        assert!(
            capacity > 0,
            "{}::channel_queue_size() must be at least 1, or the stage given a queue size by the builder",
            std::any::type_name::<S>()
        );
        let mailbox = if declared == 0 { capacity } else { declared };
        self.last_queue_size = Some(capacity);
        let dispatch = match spec.partition {
            None => Dispatch::Shared(Arc::new(Queue::shared_by(capacity, spec.replicas))),
            Some(key) => {
                Dispatch::Keyed { queues: (0..spec.replicas).map(|_| Arc::new(Queue::new(capacity))).collect(), key }
            }
        };
        let name = |i: usize| match u32::try_from(i) {
            Ok(i) if spec.replicas > 1 => Name::replica(spec.name, i),
            _ => Name::stage(spec.name),
        };
        let (replicas, inboxes): (Vec<_>, Vec<_>) =
            (0..spec.replicas).map(|i| self.stage_channel::<S>(name(i), mailbox)).unzip();
        let registry = inboxes[0].state.registry;
        let flush = FlushPoint::new(registry, dispatch.queues(), spec.replicas);
        let flush = Arc::new(if spec.batch.is_some() { flush.cutting() } else { flush });
        self.control(StageControl {
            dispatch: dispatch.clone(),
            replicas: inboxes.iter().map(|inbox| inbox.state.clone()).collect(),
            head: spec.head,
            flush: flush.clone(),
        });
        let handle = StageHandle {
            name: spec.name,
            ordered: spec.ordered,
            pace: Pace {
                // A replica of a `#[concurrency(N)]` stage takes N items
                // at a time: as many as it can keep in flight, and no more,
                // so that it holds at most N (in its batch or in flight)
                // and leaves the rest queued for the other replicas.
                max_demand: if spec.concurrency > 1 { spec.concurrency } else { spec.max_demand.max(1) },
                concurrency: Concurrency {
                    limit: spec.concurrency.max(1),
                    // An ordered stage puts each replica's outputs in order
                    // with the others': they leave the replica in order;
                    // and `partition_by` keeps each key's order.
                    ordered: spec.concurrency_ordered || spec.ordered || spec.partition.is_some(),
                    refill: !spec.ordered,
                },
                limit: spec
                    .rate_limit
                    .and_then(|(n, per)| NonZeroU32::new(n).map(|n| Arc::new(RateLimit::new(n, per)))),
                batch: spec.batch,
            },
            replicas: replicas.into(),
            counters: (0..spec.replicas).map(|_| Arc::default()).collect(),
            input: Input::new(dispatch),
            next: AtomicUsize::new(0),
            flush,
        };
        let failures = self.failures.get_or_insert_with(FailureRoute::new).clone();
        (handle, StageWiring { inboxes, failures })
    }
}

impl<R> Core<R> {
    /// Spawns the replicas of stage `S`, emitting into `next` (the next
    /// stage's input, or the output).
    ///
    /// `S::Out: FlowsInto<N>` holds when `N` is `S::Out`; the generated
    /// pipelines check their links with `__private::assert_flows`.
    #[allow(private_bounds, reason = "`TakeFrom` is the engine's side of `Intake`, implemented by both intakes")]
    pub fn spawn_stage<S, N, K>(
        &self,
        start: &mut Start,
        stage: &StageHandle<S, K>,
        wiring: StageWiring<S>,
        next: Downstream<N>,
        registry: &S::Registry,
    ) where
        S: Stage,
        S::Out: FlowsInto<N>,
        K: TakeFrom<S>,
    {
        let Downstream(mut link, fused) = <S::Out as FlowsInto<N>>::downstream(next);
        link.fail_into(&wiring.failures);
        let dispatch = stage.input.dispatch();
        let replicas = wiring.inboxes.len();
        let mut fused = fused;
        assert!(
            fused.is_none() || (replicas == 1 && !stage.ordered),
            "a stage followed by a fused one has one replica and is not ordered"
        );
        let order = stage.ordered.then(|| Arc::new(Reorder::new(link.clone(), dispatch.queues()[0].clone(), replicas)));
        let drain = Arc::new(StageDrain::new(replicas));
        for (i, inbox) in wiring.inboxes.into_iter().enumerate() {
            let queue = dispatch.queues()[i % dispatch.queues().len()].clone();
            let state = inbox.state.clone();
            let counters = stage.counters[i].clone();
            let out = match &order {
                Some(order) => Emitter::ordered(link.clone(), counters, order.clone()),
                None => Emitter::new(link.clone(), counters),
            }
            .with_failing(wiring.failures.failing(stage.name, i))
            .with_concurrency(stage.pace.concurrency);
            // A fused next stage runs in this (single) replica's task.
            let mut fused_servers = Vec::new();
            let out = match fused.take() {
                Some(mut next) => {
                    next.servers(&mut fused_servers);
                    next.watch(&mut vec![state.clone()]);
                    out.with_fused(next)
                }
                None => out,
            };
            let mark = ReplicaMark::new(stage.flush.clone(), i);
            let task = run::run::<S, K>(
                inbox,
                queue,
                mark,
                out,
                registry.clone(),
                start.add(),
                drain.clone(),
                stage.pace.clone(),
            );
            let join = self.spawn_task(context::scope(state.clone(), task));
            state.set_abort_handle(join.abort_handle());
            for server in fused_servers {
                server.set_abort_handle(join.abort_handle());
                // Served by this replica's task: waits within the group
                // are cycles.
                server.set_waits_for(Some(Arc::new(RunBy::new(&state))));
            }
        }
    }

    /// Makes stage `S` a `#[fused]` stage: instead of spawning it, returns
    /// the downstream the previous stage emits into, which runs `S` (and
    /// `next`, if it is fused too) in the previous stage's task. See
    /// `pipeline/fused.rs`.
    ///
    /// # Panics
    ///
    /// Panics if `S` has more than one replica or is `ordered` (the macro
    /// and the builder refuse both before).
    #[track_caller]
    pub fn fuse_stage<S, N>(
        &self,
        stage: &StageHandle<S>,
        wiring: StageWiring<S>,
        next: Downstream<N>,
        registry: &S::Registry,
    ) -> Downstream<S::In>
    where
        S: Stage,
        S::Out: FlowsInto<N>,
    {
        assert!(wiring.inboxes.len() == 1 && !stage.ordered, "a fused stage has one replica and is not ordered");
        let Downstream(mut link, fused) = <S::Out as FlowsInto<N>>::downstream(next);
        link.fail_into(&wiring.failures);
        let counters = stage.counters[0].clone();
        let mut out = Emitter::new(link, counters.clone())
            .with_failing(wiring.failures.failing(stage.name, 0))
            .with_concurrency(stage.pace.concurrency);
        if let Some(next) = fused {
            out = out.with_fused(next);
        }
        let inbox = wiring.inboxes.into_iter().next().expect("checked above");
        let input = stage.input.dispatch().queues()[0].clone();
        let mark = ReplicaMark::new(stage.flush.clone(), 0);
        let fused =
            FusedStage::<S>::new(inbox, input, mark, out, registry.clone(), counters).with_pace(stage.pace.clone());
        Downstream(stage.downstream().0, Some(Box::new(fused)))
    }
}

/// The type a stage emits equals the type the next stage takes.
#[diagnostic::on_unimplemented(
    message = "a stage emits `{Self}`, but the stage after it takes `{N}`",
    label = "this stage's `Out` is not the next stage's `In`",
    note = "change this stage's `type Out` or the next stage's `type In` so that they are the same type"
)]
pub trait FlowsInto<N> {
    /// The same downstream, with its type named from the emitting side.
    #[doc(hidden)]
    fn downstream(next: Downstream<N>) -> Downstream<Self>
    where
        Self: Sized;
}

impl<T> FlowsInto<T> for T {
    fn downstream(next: Downstream<T>) -> Downstream<T> {
        next
    }
}

/// Where a stage's items go; made once per stage by `start`: the next
/// stage's input, the pipeline's output, or a `#[fused]` next stage run in
/// the emitting stage's task.
pub struct Downstream<T>(Link<T>, Option<Box<dyn Fused<T>>>);

impl<S: Stage, K: Intake<S>> StageHandle<S, K> {
    /// The link the previous stage emits into. Made once: when every copy
    /// of it is dropped, this stage's input closes.
    pub fn downstream(&self) -> Downstream<K::Item> {
        Downstream(Link::into_stage(self.input.dispatch().clone(), self.name, self.counters[0].clone()), None)
    }

    fn replica(&self) -> &Handle<S> {
        let i = if self.replicas.len() == 1 { 0 } else { self.next.fetch_add(1, Ordering::Relaxed) };
        &self.replicas[i % self.replicas.len()]
    }

    /// The replicas in turn from the next one, `caller` (if it is one of
    /// them) left out.
    fn others(&self, caller: &ServerState) -> impl Iterator<Item = &Handle<S>> + Clone {
        let (n, caller) = (self.replicas.len(), caller.id);
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(move |k| &self.replicas[(first + k) % n]).filter(move |r| r.state().id != caller)
    }

    /// The replica a server's call or cast waits on, with the wait-for edge
    /// recorded: another replica than the caller, one that is not waiting
    /// itself if there is one, and never one whose wait would close a cycle.
    fn pick(&self, caller: &Arc<ServerState>) -> Result<(&Handle<S>, Waiting), Refused> {
        // Replicas not waiting first; whether one waits is read once, so a
        // replica that starts or stops waiting meanwhile is still tried.
        let mut others: Vec<_> = self.others(caller).map(|r| (r.state().is_waiting(), r)).collect();
        others.sort_by_key(|(waiting, _)| *waiting);
        let mut refused = Refused::SelfCall;
        for (_, replica) in others {
            match replica.wait_from(caller) {
                Ok(waiting) => return Ok((replica, waiting)),
                Err(cycle) => refused = cycle,
            }
        }
        Err(refused)
    }

    /// Calls one replica: in turn from outside the pipeline's servers. From
    /// inside one (a handler, or a `process`), another replica than the
    /// caller, preferring one that is not itself waiting in a call.
    ///
    /// # Errors
    ///
    /// As [`Handle::call`]; [`CallError::SelfCall`] only for a stage with
    /// one replica calling itself, [`CallError::Cycle`] if every other
    /// replica waits, directly or through others, on the caller.
    pub async fn call(&self, message: S::Message) -> Result<S::Response, CallError<S::Message>> {
        if self.replicas.len() == 1 {
            return self.replicas[0].call(message).await;
        }
        match context::current() {
            None => self.replica().call_waiting(message, None).await,
            Some(caller) => match self.pick(&caller) {
                Ok((replica, waiting)) => replica.call_waiting(message, Some(waiting)).await,
                Err(refused) => Err(refused.call_error(message)),
            },
        }
    }

    /// [`call`](Self::call), giving up after `timeout` (see
    /// [`Handle::call_with_timeout`]).
    pub async fn call_with_timeout(
        &self,
        message: S::Message,
        timeout: Duration,
    ) -> Result<S::Response, CallError<S::Message>> {
        if self.replicas.len() == 1 {
            return self.replicas[0].call_with_timeout(message, timeout).await;
        }
        match context::current() {
            None => self.replica().call_with_timeout_waiting(message, timeout, None).await,
            Some(caller) => match self.pick(&caller) {
                Ok((replica, waiting)) => replica.call_with_timeout_waiting(message, timeout, Some(waiting)).await,
                Err(refused) => Err(refused.call_error(message)),
            },
        }
    }

    /// Casts to one replica: in turn from outside the pipeline's servers.
    /// From inside one, the first replica with room in its queue, other
    /// replicas before the caller's own; if none has room, it waits for
    /// room at another replica, as [`call`](Self::call) picks one.
    ///
    /// # Errors
    ///
    /// As [`Handle::cast`]: [`SendError::Cycle`] if every replica's queue is
    /// full and waiting at any other would close a cycle (for a stage with
    /// one replica casting to itself, [`SendError::Full`]).
    pub async fn cast(&self, message: S::Message) -> Result<(), SendError<S::Message>> {
        if self.replicas.len() == 1 {
            return self.replicas[0].cast(message).await;
        }
        let Some(caller) = context::current() else {
            return self.replica().cast(message).await;
        };
        let message = match self.try_cast_from(&caller, message) {
            Err(SendError::Full(message)) => message,
            done => return done,
        };
        match self.pick(&caller) {
            Ok((replica, waiting)) => {
                drop(waiting);
                replica.cast_from(&caller, message).await
            }
            Err(Refused::SelfCall) => Err(SendError::Full(message)),
            Err(Refused::Cycle(servers)) => Err(SendError::Cycle { message, servers }),
        }
    }

    /// Casts to one replica without waiting: in turn from outside the
    /// pipeline's servers; from inside one, the first with room, other
    /// replicas before the caller's own.
    pub fn try_cast(&self, message: S::Message) -> Result<(), SendError<S::Message>> {
        match context::current() {
            Some(caller) if self.replicas.len() > 1 => self.try_cast_from(&caller, message),
            _ => self.replica().try_cast(message),
        }
    }

    /// Tries every replica in turn, `caller` (if it is one) last; `Full`
    /// only if none had room, `Closed`/`Failed` if none is running.
    fn try_cast_from(&self, caller: &ServerState, message: S::Message) -> Result<(), SendError<S::Message>> {
        let own = self.replicas.iter().filter(|r| r.state().id == caller.id);
        let mut full = false;
        let mut error = SendError::Closed(message);
        for replica in self.others(caller).chain(own) {
            let Some(message) = error.into_message() else { unreachable!("a send error holds its message") };
            error = match replica.try_cast(message) {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            full |= error.is_full();
        }
        match error {
            SendError::Closed(message) | SendError::Failed(message) if full => Err(SendError::Full(message)),
            error => Err(error),
        }
    }

    /// Calls every replica with a clone of `message`, concurrently; the
    /// responses come in replica order.
    pub async fn call_all(&self, message: S::Message) -> Result<Vec<S::Response>, CallError<S::Message>>
    where
        S::Message: Clone,
    {
        let calls = self.replicas.iter().map(|replica| replica.call(message.clone()));
        join_all(calls).await.into_iter().collect()
    }

    /// Casts a clone of `message` to every replica, in replica order.
    pub async fn cast_all(&self, message: S::Message) -> Result<(), SendError<S::Message>>
    where
        S::Message: Clone,
    {
        for replica in self.replicas.iter() {
            replica.cast(message.clone()).await?;
        }
        Ok(())
    }

    /// Sends one item into this stage.
    pub async fn send(&self, item: K::Item) -> Result<(), SendError<K::Item>> {
        self.input.send(item).await
    }

    /// Sends one item into this stage if there is room.
    pub fn try_send(&self, item: K::Item) -> Result<(), SendError<K::Item>> {
        self.input.try_send(item)
    }

    /// Sends a whole stream into this stage.
    pub async fn feed(&self, items: impl futures::Stream<Item = K::Item> + Send) -> Result<usize, SendError<K::Item>> {
        self.input.feed(items).await
    }

    /// A sink into this stage.
    pub fn sink(&self) -> InputSink<K::Item> {
        self.input.sink()
    }

    /// This stage's input for items sent with an acknowledgement.
    pub fn acked(&self) -> AckedInput<K::Item> {
        AckedInput::new(self.input.clone())
    }

    /// What `flush` watches of this stage.
    pub fn flush_point(&self) -> &FlushPoint {
        &self.flush
    }

    /// This stage's metrics.
    ///
    /// Items cleared from a queue by `abort` count as received and aborted
    /// by the replica that queue belongs to: with `partition_by`, replica
    /// `i` owns queue `i`; a shared queue is counted on replica 0.
    pub fn metrics(&self) -> StageMetrics {
        let dispatch = self.input.dispatch();
        let partitioned = matches!(dispatch, Dispatch::Keyed { .. });
        let queues = dispatch.queues();
        let mut replicas: Vec<_> = self.counters.iter().map(|c| c.snapshot()).collect();
        let mut queued = 0;
        for (i, queue) in queues.iter().enumerate() {
            let (len, discarded) = (queue.len() as u64, queue.discarded());
            queued += len;
            let replica = &mut replicas[i];
            replica.received += discarded;
            replica.aborted += discarded;
            if partitioned {
                replica.queued = len;
            }
        }
        StageMetrics::new(
            self.name,
            replicas,
            queued,
            queues.iter().map(|q| q.capacity() as u64).fold(0, u64::saturating_add),
            partitioned,
        )
    }
}

impl<S: Stage, K: Intake<S>> fmt::Debug for StageHandle<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageHandle")
            .field("name", &self.name)
            .field("replicas", &self.replicas.len())
            .finish_non_exhaustive()
    }
}

impl<S: Stage> fmt::Debug for StageWiring<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageWiring").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Downstream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Downstream").finish_non_exhaustive()
    }
}

/// The pipeline's output, failures and clock.
pub struct Plumbing<T> {
    output: Arc<OutputShared<T>>,
    unclaimed: Mutex<bool>,
    failures: Arc<OutputShared<Failure>>,
    failures_unclaimed: Mutex<bool>,
    started: Instant,
}

impl<T: Send + 'static> Plumbing<T> {
    /// The output of a pipeline whose last stage is `S`; its queue is as
    /// large as that stage's input queue (the builder's size for it, else
    /// its `channel_queue_size()`). Takes the failures queue the stages made
    /// in `builder` (so it closes once they all end).
    pub fn new<S: Stage<Out = T>>(builder: &mut Builder) -> Self {
        let failures = builder.failures.take().unwrap_or_else(FailureRoute::new).shared;
        let size = builder.last_queue_size.take().unwrap_or_else(S::channel_queue_size);
        Plumbing {
            output: Arc::new(OutputShared::new(size)),
            unclaimed: Mutex::new(true),
            failures,
            failures_unclaimed: Mutex::new(true),
            started: Instant::now(),
        }
    }

    /// The failures stream, the first time.
    pub fn failures(&self) -> Option<Failures> {
        let mut unclaimed = self.failures_unclaimed.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *unclaimed).then(|| Failures::new(self.failures.clone()))
    }

    /// The link the last stage emits into.
    pub fn downstream(&self) -> Downstream<T> {
        Downstream(Link::new(Dispatch::Shared(self.output.queue.clone()), Some(self.output.taken.clone())), None)
    }

    /// The output stream, the first time.
    pub fn output(&self) -> Option<Output<T>> {
        let mut unclaimed = self.unclaimed.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *unclaimed).then(|| Output::new(self.output.clone()))
    }

    /// Collects the metrics of every stage; the last stage's `dropped` also
    /// counts what a dropped output held.
    pub fn metrics(&self, mut stages: Vec<StageMetrics>) -> Metrics {
        if let Some(tail) = stages.last_mut() {
            tail.dropped += self.output.dropped();
        }
        Metrics::new(stages, self.started).with_failures_dropped(self.failures.dropped())
    }
}

impl<T> fmt::Debug for Plumbing<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plumbing").finish_non_exhaustive()
    }
}

#[cfg(all(test, not(genflow_loom)))]
mod tests {
    use super::*;
    use crate::GenServer;

    /// A stage that declares a queue of 5.
    struct Tail;

    impl GenServer for Tail {
        type Message = ();
        type Response = ();
        type Registry = ();
        fn new(_: ()) -> Self {
            Tail
        }
        async fn handle_call(&mut self, _: ()) {}
        async fn handle_cast(&mut self, _: ()) {}
        fn channel_queue_size() -> usize {
            5
        }
    }

    impl Stage for Tail {
        type In = u8;
        type Out = u8;
        async fn process(&mut self, x: u8, out: &mut Emitter<u8>) {
            out.emit(x).await;
        }
    }

    /// The capacity of the output buffer of a one-stage pipeline whose
    /// stage was given `queue_size`.
    fn output_capacity(queue_size: Option<usize>) -> usize {
        let mut builder = Builder::new();
        let spec = StageSpec {
            name: "tail",
            replicas: 2,
            partition: None,
            head: true,
            ordered: false,
            queue_size,
            max_demand: 32,
            rate_limit: None,
            batch: None,
            concurrency: 1,
            concurrency_ordered: false,
        };
        let (handle, _wiring) = builder.stage::<Tail, Whole>(spec);
        assert_eq!(handle.metrics().capacity, queue_size.unwrap_or(5) as u64);
        Plumbing::new::<Tail>(&mut builder).output.queue.capacity()
    }

    #[test]
    fn the_output_buffer_follows_the_last_stages_effective_queue_size() {
        assert_eq!(output_capacity(Some(3)), 3);
        assert_eq!(output_capacity(Some(70_000)), 70_000);
        assert_eq!(output_capacity(None), 5);
    }
}
