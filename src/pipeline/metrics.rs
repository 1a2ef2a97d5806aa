use std::{
    fmt,
    num::NonZero,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

/// Counters of one replica, written once per batch by its task.
///
/// Besides the sums, the replica publishes what it is doing now, so that a
/// snapshot taken in the middle of a long `process` or a long wait counts
/// the time so far: the *stamps* below are instants (nanoseconds since
/// `epoch`, plus one; 0: not set), each one atomic store per wait that
/// really waits.
///
/// Busy time is not timed per batch: a replica's busy time is the time it
/// was alive, less the time it was *aside* (waiting for work, booting,
/// serving calls and casts, running a `#[fused]` stage after it) and the
/// time it was blocked. So a replica that goes from batch to batch without
/// waiting reads no clock at all; the clock is read when it starts or stops
/// waiting, which costs little next to the wait itself. A `#[fused]` stage
/// runs inside another stage's task, so it cannot be timed that way: its
/// counters time each batch instead (`measure_batches`).
#[derive(Debug)]
pub(crate) struct Counters {
    received: AtomicU64,
    processed: AtomicU64,
    emitted: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    aborted: AtomicU64,
    blocked_ns: AtomicU64,
    failures_blocked_ns: AtomicU64,
    /// Time waiting for the stage's rate limit, and when the wait in
    /// progress started.
    throttled_ns: AtomicU64,
    throttled_since: AtomicU64,
    /// Time aside, not counting the stretch in progress.
    aside_ns: AtomicU64,
    /// When the stretch aside in progress started (from `epoch` on: a
    /// replica is aside until it takes its first batch).
    aside_since: AtomicU64,
    /// Whether busy time is timed per batch (a fused stage) instead.
    per_batch: AtomicBool,
    /// Per batch: the busy time of the batches done.
    busy_ns: AtomicU64,
    /// Per batch: when the batch in progress started, moved later by each
    /// wait in it: the batch's busy time so far is the time since (or,
    /// while it waits, from this to the wait's start).
    busy_since: AtomicU64,
    /// When the wait in progress for room downstream (or a turn) started.
    blocked_since: AtomicU64,
    /// When the wait in progress for room in the failures buffer started.
    failing_since: AtomicU64,
    /// Per batch: when the last batch ended (see `handover_end`).
    batch_ended: AtomicU64,
    /// When the replica's task ended (drained or aborted).
    ended: AtomicU64,
    /// Futures handed over by `Emitter::emit_async` and not done yet (a
    /// gauge, set by the replica's task).
    in_flight: AtomicU64,
    epoch: Instant,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            received: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            emitted: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            blocked_ns: AtomicU64::new(0),
            failures_blocked_ns: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
            throttled_since: AtomicU64::new(0),
            aside_ns: AtomicU64::new(0),
            aside_since: AtomicU64::new(1),
            per_batch: AtomicBool::new(false),
            busy_ns: AtomicU64::new(0),
            busy_since: AtomicU64::new(0),
            blocked_since: AtomicU64::new(0),
            failing_since: AtomicU64::new(0),
            batch_ended: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

/// A stretch aside begun by [`Counters::step_away`].
#[must_use = "pass it to `step_back`"]
pub(crate) struct Away {
    /// When it began.
    pub(crate) since: Instant,
    /// Whether `step_away` set the replica aside (it was not already).
    set: bool,
}

/// What one batch changed.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    pub(crate) received: u64,
    pub(crate) processed: u64,
    pub(crate) emitted: u64,
    pub(crate) failed: u64,
    pub(crate) dropped: u64,
    pub(crate) aborted: u64,
    pub(crate) busy: Duration,
    pub(crate) blocked: Duration,
    /// Of `blocked`, the time waiting for room in the failures buffer.
    pub(crate) failures_blocked: Duration,
}

impl Counters {
    pub(crate) fn add(&self, delta: &Delta) {
        let add = |counter: &AtomicU64, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.received, delta.received);
        add(&self.processed, delta.processed);
        add(&self.emitted, delta.emitted);
        add(&self.failed, delta.failed);
        add(&self.dropped, delta.dropped);
        add(&self.aborted, delta.aborted);
        add(&self.busy_ns, delta.busy.as_nanos() as u64);
        add(&self.blocked_ns, delta.blocked.as_nanos() as u64);
        add(&self.failures_blocked_ns, delta.failures_blocked.as_nanos() as u64);
    }

    /// `at` as a stamp.
    #[inline]
    fn stamp(&self, at: Instant) -> u64 {
        // u64 arithmetic: cheaper than `as_nanos`'s u128 on the item path.
        let since = at.saturating_duration_since(self.epoch);
        since.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(since.subsec_nanos()) + 1)
    }

    /// Times this replica's busy time per batch from now on (a `#[fused]`
    /// stage, run in another stage's task).
    pub(crate) fn measure_batches(&self) {
        self.per_batch.store(true, Ordering::Relaxed);
        // Not aside from its start: nothing reads that stamp per batch.
        self.aside_since.store(0, Ordering::Relaxed);
    }

    #[inline]
    fn per_batch(&self) -> bool {
        self.per_batch.load(Ordering::Relaxed)
    }

    /// A batch starts: the replica works on items from now on (per batch:
    /// unless [`begin_batch_at`](Self::begin_batch_at) started it).
    #[inline]
    pub(crate) fn begin_batch(&self) {
        if self.per_batch() {
            if self.busy_since.load(Ordering::Relaxed) == 0 {
                self.busy_since.store(self.stamp(Instant::now()), Ordering::Relaxed);
            }
        } else {
            self.resume();
        }
    }

    /// Per batch: the batch handed over at `at` starts, timed from that
    /// instant, which the stage handing it over read (so the hand-over
    /// reads one clock, not two).
    #[inline]
    pub(crate) fn begin_batch_at(&self, at: Instant) {
        self.busy_since.store(self.stamp(at), Ordering::Relaxed);
    }

    /// Per batch: ends the hand-over begun by [`begin_batch_at`](Self::begin_batch_at),
    /// publishing the busy time of a batch still open, and returns when the
    /// last batch ended, for the stage that handed it over (so it reads no
    /// clock of its own to step back).
    pub(crate) fn handover_end(&self) -> Instant {
        if self.busy_since.load(Ordering::Relaxed) != 0 {
            let busy = self.end_batch();
            self.add(&Delta { busy, ..Delta::default() });
        }
        match self.batch_ended.load(Ordering::Relaxed) {
            0 => Instant::now(),
            ended => self.epoch + Duration::from_nanos(ended - 1),
        }
    }

    /// The batch in progress ended (or was dropped): returns its busy
    /// time, which the caller publishes, if timed per batch (else zero:
    /// the replica keeps working until it is set aside).
    #[inline]
    pub(crate) fn end_batch(&self) -> Duration {
        if !self.per_batch() {
            return Duration::ZERO;
        }
        let since = self.busy_since.swap(0, Ordering::Relaxed);
        if since == 0 {
            return Duration::ZERO;
        }
        let now = self.stamp(Instant::now());
        self.batch_ended.store(now, Ordering::Relaxed);
        Duration::from_nanos(now.saturating_sub(since))
    }

    /// The replica stops working on items now (it waits for work, boots,
    /// or serves a call or a cast), unless it already had. Only the
    /// replica's task calls this, `resume` and `step_away`.
    #[inline]
    pub(crate) fn set_aside(&self) {
        if !self.per_batch() && self.aside_since.load(Ordering::Relaxed) == 0 {
            self.set_aside_at(Instant::now());
        }
    }

    fn set_aside_at(&self, at: Instant) {
        self.aside_since.store(self.stamp(at), Ordering::Relaxed);
    }

    /// The replica works on items again, if it was aside.
    #[inline]
    pub(crate) fn resume(&self) {
        if self.aside_since.load(Ordering::Relaxed) != 0 && !self.per_batch() {
            self.resume_at(Instant::now());
        }
    }

    fn resume_at(&self, at: Instant) {
        let since = self.aside_since.load(Ordering::Relaxed);
        if since != 0 {
            let now = self.stamp(at);
            // Added before the stamp is cleared: a snapshot in between
            // counts the stretch twice (less busy), never not at all.
            self.aside_ns.fetch_add(now.saturating_sub(since), Ordering::Relaxed);
            self.aside_since.store(0, Ordering::Relaxed);
        }
    }

    /// The replica, in the middle of a batch, steps away from its items
    /// (to serve calls and casts, or to run a fused stage) until
    /// [`step_back`](Self::step_back): that time is not its busy time.
    ///
    /// Timed per batch, the stretch away is stamped too (in `aside_since`,
    /// unused otherwise), so that a snapshot meanwhile does not count it
    /// as busy.
    pub(crate) fn step_away(&self) -> Away {
        let since = Instant::now();
        let set = self.aside_since.load(Ordering::Relaxed) == 0;
        if set {
            self.aside_since.store(self.stamp(since), Ordering::Relaxed);
        }
        Away { since, set }
    }

    /// The replica is back from [`step_away`](Self::step_away).
    pub(crate) fn step_back(&self, away: Away) {
        if self.per_batch() {
            if away.set {
                self.shift_busy(away.since.elapsed());
                self.aside_since.store(0, Ordering::Relaxed);
            }
        } else if away.set {
            self.resume();
        }
    }

    /// [`step_back`](Self::step_back) at `now`, an instant the caller read.
    pub(crate) fn step_back_at(&self, away: Away, now: Instant) {
        if self.per_batch() {
            if away.set {
                self.shift_busy(now.saturating_duration_since(away.since));
                self.aside_since.store(0, Ordering::Relaxed);
            }
        } else if away.set {
            self.resume_at(now);
        }
    }

    /// A wait (for room in the failures buffer if `failures`) starts at
    /// `at`.
    pub(crate) fn begin_wait(&self, at: Instant, failures: bool) {
        let since = if failures { &self.failing_since } else { &self.blocked_since };
        since.store(self.stamp(at), Ordering::Relaxed);
    }

    /// The wait that started at `since` ends at `now`: the batch in progress
    /// was not busy meanwhile. The caller publishes the time blocked; if
    /// `publish`, this does (the wait was dropped before it ended), before
    /// it clears the stamp, so a snapshot never misses the wait.
    pub(crate) fn end_wait(&self, since: Instant, now: Instant, failures: bool, publish: bool) {
        let waited = now.saturating_duration_since(since);
        if publish {
            let failures_blocked = if failures { waited } else { Duration::ZERO };
            self.add(&Delta { blocked: waited, failures_blocked, ..Delta::default() });
        }
        let stamp = if failures { &self.failing_since } else { &self.blocked_since };
        stamp.store(0, Ordering::Relaxed);
        self.shift_busy(waited);
    }

    /// A wait for a token of the stage's rate limit starts at `at`.
    pub(crate) fn begin_throttle(&self, at: Instant) {
        self.throttled_since.store(self.stamp(at), Ordering::Relaxed);
    }

    /// The wait for a token that started at `since` ends at `now`: it is
    /// published before the stamp is cleared, so a snapshot never misses it.
    pub(crate) fn end_throttle(&self, since: Instant, now: Instant) {
        let waited = now.saturating_duration_since(since);
        self.throttled_ns.fetch_add(u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.throttled_since.store(0, Ordering::Relaxed);
        self.shift_busy(waited);
    }

    /// Per batch: the batch in progress spent `elsewhere` not working (a
    /// wait, or a `#[fused]` stage after this one run in this task).
    fn shift_busy(&self, elsewhere: Duration) {
        // Only this replica writes `busy_since`: a load and a store suffice.
        let busy = self.busy_since.load(Ordering::Relaxed);
        if busy != 0 {
            let shift = u64::try_from(elsewhere.as_nanos()).unwrap_or(u64::MAX);
            self.busy_since.store(busy.saturating_add(shift), Ordering::Relaxed);
        }
    }

    /// Sets the in-flight gauge: `n` futures handed over and not done.
    #[inline]
    pub(crate) fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n as u64, Ordering::Relaxed);
    }

    /// The replica's task ends now.
    pub(crate) fn end(&self) {
        self.ended.store(self.stamp(Instant::now()), Ordering::Relaxed);
    }

    /// The counts so far, with the time of the batch and the wait in
    /// progress, if any, up to now (or up to the task's end).
    pub(crate) fn snapshot(&self) -> ReplicaMetrics {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let ended = get(&self.ended);
        let now = if ended != 0 { ended } else { self.stamp(Instant::now()) };
        let (blocked_since, failing_since) = (get(&self.blocked_since), get(&self.failing_since));
        let live = |since: u64| if since == 0 { 0 } else { now.saturating_sub(since) };
        let (live_blocked, live_failing) = (live(blocked_since), live(failing_since));
        let blocked = get(&self.blocked_ns).saturating_add(live_blocked).saturating_add(live_failing);
        let throttled_since = get(&self.throttled_since);
        let throttled = get(&self.throttled_ns).saturating_add(live(throttled_since));
        let busy = if self.per_batch() {
            let busy_since = get(&self.busy_since);
            let away = blocked_since.max(failing_since).max(throttled_since).max(get(&self.aside_since));
            let live_busy = match (busy_since, away) {
                (0, _) => 0,
                (busy, 0) => now.saturating_sub(busy),
                (busy, wait) => wait.saturating_sub(busy),
            };
            get(&self.busy_ns).saturating_add(live_busy)
        } else {
            let aside = get(&self.aside_ns).saturating_add(live(get(&self.aside_since)));
            // Stamps count from 1 at `epoch`.
            now.saturating_sub(1).saturating_sub(aside).saturating_sub(blocked).saturating_sub(throttled)
        };
        let ns = Duration::from_nanos;
        ReplicaMetrics {
            received: get(&self.received),
            processed: get(&self.processed),
            emitted: get(&self.emitted),
            failed: get(&self.failed),
            dropped: get(&self.dropped),
            aborted: get(&self.aborted),
            queued: 0,
            busy: ns(busy),
            blocked: ns(blocked),
            failures_blocked: ns(get(&self.failures_blocked_ns).saturating_add(live_failing)),
            throttled: ns(throttled),
            in_flight: get(&self.in_flight),
            ended: (ended != 0).then(|| self.epoch + ns(ended - 1)),
        }
    }
}

/// The counts of one replica of a stage.
///
/// The identities of [`StageMetrics`] hold for each replica too, except that
/// items cleared by `abort` from a queue shared by the replicas are counted
/// on replica 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaMetrics {
    /// Items this replica took from its queue (and, after `abort`, the items
    /// cleared from it).
    pub received: u64,
    /// Items it is done with: `process` returned (or panicked), and the
    /// futures it handed to [`Emitter::emit_async`](crate::Emitter::emit_async),
    /// if any, completed. Includes the failed ones.
    pub processed: u64,
    /// Items it emitted.
    pub emitted: u64,
    /// Items that failed: `process` called [`Emitter::fail`](crate::Emitter::fail)
    /// (once or more; a `#[genflow::stage]` fn that returned `Err` does) or
    /// panicked. Each counts once, and is also counted in `processed`.
    pub failed: u64,
    /// Items it emitted that nobody could take (the pipeline's output was
    /// not taken or was dropped, or the pipeline was aborted).
    pub dropped: u64,
    /// Items it received that `abort` stopped before they were done: the
    /// one in `process`, those whose futures were in flight, the rest of
    /// its batch, and what was cleared from its queue.
    pub aborted: u64,
    /// Items waiting in this replica's own queue when the snapshot was
    /// taken: with `partition_by`, its partition's queue. Replicas that share
    /// their stage's one queue have no queue of their own and show 0 here;
    /// the shared queue is [`StageMetrics::queued`].
    pub queued: u64,
    /// Time spent at work on items: in `process` (and `finish`), not
    /// counting time blocked, nor time spent only waiting for futures in
    /// flight (`#[concurrency(N)]`). Time booting (`init`), waiting for items and
    /// serving calls and casts (also between the items of a batch) is not
    /// busy. Includes the work in progress: a snapshot taken in the middle
    /// of a long `process` counts its time so far.
    pub busy: Duration,
    /// Time spent waiting: for room in the next queue (the output, for the
    /// last stage), for an `ordered` batch's turn, or for room in the
    /// failures buffer (also counted in
    /// [`failures_blocked`](Self::failures_blocked)). Includes the wait in
    /// progress, so a stalled pipeline shows its stall while it lasts.
    pub blocked: Duration,
    /// Of [`blocked`](Self::blocked), the time spent waiting for room in
    /// the failures buffer: the reader of `failures()` was behind.
    pub failures_blocked: Duration,
    /// Time spent waiting for the stage's `#[rate_limit(..)]` before an
    /// item: neither busy nor blocked. Includes the wait in progress.
    pub throttled: Duration,
    /// Futures handed over by [`Emitter::emit_async`](crate::Emitter::emit_async)
    /// (or `try_emit_async`) in a `#[concurrency(N)]` stage and not done
    /// yet, when the snapshot was taken: a gauge, at most N per replica.
    /// Their items are received but not yet processed.
    pub in_flight: u64,
    /// When the replica's task ended (drained or aborted).
    ended: Option<Instant>,
}

/// A snapshot of one stage's counts, summed over its replicas.
///
/// # What the counts say
///
/// No item is lost silently. Between two stages `a` and `b`, at any time:
///
/// ```text
/// a.emitted = b.received + b.queued + a.dropped + (items on their way:
///             in a's emitter buffer, or waiting in a's reorder point)
/// ```
///
/// and for every stage:
///
/// ```text
/// received = processed + (items in progress: taken in a batch, not done,
///             their futures in flight included)
/// failed  <= processed          (a failed item is done too)
/// ```
///
/// Once the pipeline has shut down (`shutdown().await` returned), nothing is
/// in progress or on its way: `received == processed`, `queued == 0`, and
/// `a.emitted == b.received + a.dropped`. For the last stage, `emitted` is
/// what the output stream delivered plus `dropped`.
///
/// # After `abort`
///
/// `abort()` clears every stage's queue at once; the cleared items count as
/// received and [`aborted`](Self::aborted) by that stage. Each replica stops
/// at its next `.await`: the item in `process` and the rest of its batch
/// count as aborted, the outputs it held (its emitter's buffer, and for an
/// `ordered` stage the chunks waiting in the reorder point) as
/// [`dropped`](Self::dropped), and the counts of the items it finished are
/// published as its task is dropped. `abort` itself returns at once, while
/// the tasks still run to their next `.await`; `shutdown().await` called
/// after `abort()` returns once every task has stopped, and from then on:
///
/// ```text
/// received = processed + aborted      queued = 0      (every stage)
/// a.emitted = b.received + a.dropped                  (a feeding b)
/// ```
///
/// # When counts are published
///
/// Counts are published as a replica goes: `processed` and `failed` after
/// each batch, and also before the replica serves a call or cast in the
/// middle of a batch, so a call made after `processed` reached `n` sees the
/// effect of those `n` items.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StageMetrics {
    /// The stage's name, as declared in the pipeline.
    pub name: &'static str,
    /// Items taken from the stage's queue (and, after `abort`, the items
    /// cleared from it).
    pub received: u64,
    /// Items done: `process` returned (or panicked). Includes the failed
    /// ones: `processed - failed` went through successfully.
    pub processed: u64,
    /// Items emitted downstream.
    pub emitted: u64,
    /// Items that failed: see [`ReplicaMetrics::failed`].
    pub failed: u64,
    /// Items emitted that nobody could take: see [`ReplicaMetrics::dropped`].
    pub dropped: u64,
    /// Items received that `abort` stopped before they were processed: see
    /// [`ReplicaMetrics::aborted`].
    pub aborted: u64,
    /// Items waiting in the stage's queue(s) when the snapshot was taken.
    pub queued: u64,
    /// The capacity of the stage's queue(s), summed.
    pub capacity: u64,
    /// Time spent at work on items, summed over replicas: see
    /// [`ReplicaMetrics::busy`].
    pub busy: Duration,
    /// Time spent waiting for room downstream, summed over replicas: see
    /// [`ReplicaMetrics::blocked`].
    pub blocked: Duration,
    /// Of `blocked`, the time spent waiting for room in the failures
    /// buffer, summed over replicas.
    pub failures_blocked: Duration,
    /// Time spent waiting for the stage's rate limit, summed over
    /// replicas: see [`ReplicaMetrics::throttled`].
    pub throttled: Duration,
    /// Futures in flight, summed over replicas: see
    /// [`ReplicaMetrics::in_flight`].
    pub in_flight: u64,
    /// The same counts for each replica, in replica order.
    pub replicas: Vec<ReplicaMetrics>,
    /// Whether each replica has its own queue (`partition_by`).
    partitioned: bool,
}

impl StageMetrics {
    pub(crate) fn new(
        name: &'static str,
        replicas: Vec<ReplicaMetrics>,
        queued: u64,
        capacity: u64,
        partitioned: bool,
    ) -> Self {
        let mut stage = StageMetrics { name, queued, capacity, partitioned, ..StageMetrics::default() };
        for r in &replicas {
            stage.received += r.received;
            stage.processed += r.processed;
            stage.emitted += r.emitted;
            stage.failed += r.failed;
            stage.dropped += r.dropped;
            stage.aborted += r.aborted;
            stage.busy += r.busy;
            stage.blocked += r.blocked;
            stage.failures_blocked += r.failures_blocked;
            stage.throttled += r.throttled;
            stage.in_flight += r.in_flight;
        }
        stage.replicas = replicas;
        stage
    }

    /// The share of the elapsed time this stage's replicas spent processing,
    /// between 0 and 1 (busy time over `elapsed` times the replicas).
    pub fn utilization(&self, elapsed: Duration) -> f64 {
        share(self.busy, elapsed * self.replicas.len().max(1) as u32)
    }

    /// The share of the elapsed time this stage's replicas spent neither
    /// processing, nor blocked on the next stage, nor waiting for their
    /// rate limit: waiting for input (or booting, or serving calls and
    /// casts). Between 0 and 1.
    pub fn idle(&self, elapsed: Duration) -> f64 {
        let available = elapsed * self.replicas.len().max(1) as u32;
        (1.0 - share(self.busy, available) - share(self.blocked, available) - share(self.throttled, available)).max(0.0)
    }

    /// The share of the elapsed time this stage's replicas spent waiting
    /// for its rate limit, between 0 and 1.
    pub fn throttled(&self, elapsed: Duration) -> f64 {
        share(self.throttled, elapsed * self.replicas.len().max(1) as u32)
    }

    /// Whether each replica has its own queue (`partition_by`): then
    /// [`ReplicaMetrics::queued`] is that queue, and one busy replica can
    /// limit the stage while the others idle.
    pub fn partitioned(&self) -> bool {
        self.partitioned
    }

    /// How loaded the stage is, for finding the bottleneck: its utilization,
    /// or with `partition_by` its busiest replica's (work cannot move
    /// between partitions, so that replica is the stage's limit).
    fn load(&self, elapsed: Duration) -> f64 {
        if self.partitioned {
            self.replicas.iter().map(|r| r.utilization(elapsed)).fold(0.0, f64::max)
        } else {
            self.utilization(elapsed)
        }
    }

    /// The replica of a partitioned stage that is busy more than half the
    /// time while the others, on average, are busy less than half as much.
    fn hot_replica(&self, elapsed: Duration) -> Option<usize> {
        if !self.partitioned || self.replicas.len() < 2 {
            return None;
        }
        let (hot, load) =
            self.replicas.iter().map(|r| r.utilization(elapsed)).enumerate().max_by(|a, b| a.1.total_cmp(&b.1))?;
        let others = self
            .replicas
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != hot)
            .map(|(_, r)| r.utilization(elapsed))
            .sum::<f64>()
            / (self.replicas.len() - 1) as f64;
        (load > BUSY && others < load / 2.0).then_some(hot)
    }
}

impl ReplicaMetrics {
    /// The share of the elapsed time this replica spent processing, between
    /// 0 and 1.
    pub fn utilization(&self, elapsed: Duration) -> f64 {
        share(self.busy, elapsed)
    }

    /// The share of the elapsed time this replica spent neither processing,
    /// nor blocked on the next stage, nor waiting for its stage's rate
    /// limit: waiting for input (or booting, or serving calls and casts).
    /// Between 0 and 1.
    pub fn idle(&self, elapsed: Duration) -> f64 {
        (1.0 - share(self.busy, elapsed) - share(self.blocked, elapsed) - share(self.throttled, elapsed)).max(0.0)
    }
}

/// A stage (or replica) busy more than this share of the time limits the
/// pipeline; so does a reader that keeps a stage blocked more than this
/// share of the time.
const BUSY: f64 = 0.5;

/// `part / whole`, between 0 and 1; 0 if `whole` is zero.
fn share(part: Duration, whole: Duration) -> f64 {
    if whole.is_zero() { 0.0 } else { (part.as_secs_f64() / whole.as_secs_f64()).min(1.0) }
}

/// What limits a pipeline's throughput, as [`Metrics::limit`] reads it from
/// a snapshot. The `Display` of [`Metrics`] says the same in its last line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit<'a> {
    /// No item was processed yet, and no stage was busy, blocked or
    /// throttled.
    NothingYet,
    /// This stage: it was busy more than half the time (the
    /// [`bottleneck`](Metrics::bottleneck)).
    Bottleneck(&'a str),
    /// This stage's `#[rate_limit(..)]`: its replicas waited for it more
    /// than half the time (and no stage was busy more than half of it).
    RateLimit(&'a str),
    /// The reader of the pipeline's `output()`: the last stage, named here,
    /// was blocked on a full output more than half the time.
    OutputReader(&'a str),
    /// The reader of the pipeline's `failures()`: the stage named here was
    /// blocked on a full failures buffer more than half the time.
    FailuresReader(&'a str),
    /// The machine's CPU: no stage was busy more than half the time, yet
    /// the first stage, or the stages together, were busy or blocked more
    /// than half of it, not waiting for input (their replicas take turns
    /// on too few cores: a stage blocked on a next stage that is not busy
    /// waits for that stage to get a core).
    Cpu {
        /// The cores available to the process
        /// ([`std::thread::available_parallelism`]).
        cores: usize,
    },
    /// Whoever feeds the pipeline: the stages were idle, waiting for input,
    /// most of the time.
    Input,
}

/// A snapshot of a pipeline's metrics, stage by stage.
///
/// Taken with the pipeline's `metrics()` method, at any time, also after
/// shutdown. Shares of time are over the time since the pipeline started
/// ([`elapsed`](Self::elapsed)); the clock stops once the pipeline has
/// drained (or was aborted and every replica stopped), so a snapshot taken
/// later reads the same. Time in progress counts: a replica in the middle of
/// a long `process`, or waiting for room downstream, shows that time so far.
///
/// `Display` prints it as a table (one row per stage, and one per replica
/// for partitioned stages) whose last line says what limits throughput, by
/// this rule ([`limit`](Self::limit)), first match wins:
///
/// 1. a stage busy more than half the time (in `process`; for a partitioned
///    stage, its busiest replica): that stage is the bottleneck
///    ([`bottleneck`](Self::bottleneck));
/// 2. a stage waiting for its `#[rate_limit(..)]` more than half the time
///    (one of its replicas did, or its replicas did more than half the
///    time they were not idle): that rate limit is the limit;
/// 3. the last stage blocked on a full output more than half the time, or a
///    stage blocked on a full failures buffer more than half the time
///    (whichever longer): the reader of `output()` (or of `failures()`) is
///    the limit;
/// 4. the first stage, or the stages taken together, idle (waiting for
///    input) or throttled less than half the time, so mostly busy or blocked: the
///    machine's CPU is the limit (the replicas wait for a core; the line
///    says how many there are);
/// 5. else the stages mostly wait for input: the input is the limit.
///
/// Before any item was processed, the line says so instead.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    stages: Vec<StageMetrics>,
    elapsed: Duration,
    failures_dropped: u64,
}

impl Metrics {
    /// The snapshot of `stages` of a pipeline started at `started`: its
    /// clock runs until every replica has ended.
    pub(crate) fn new(stages: Vec<StageMetrics>, started: Instant) -> Self {
        let ended = stages.iter().flat_map(|s| &s.replicas).try_fold(None, |last: Option<Instant>, r| {
            r.ended.map(|ended| Some(last.map_or(ended, |last| last.max(ended))))
        });
        let end = ended.flatten().unwrap_or_else(Instant::now);
        Metrics { stages, elapsed: end.saturating_duration_since(started), failures_dropped: 0 }
    }

    /// Whether every replica of every stage had stopped (drained or
    /// aborted) when the snapshot was taken.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn ended(&self) -> bool {
        self.stages.iter().flat_map(|s| &s.replicas).all(|r| r.ended.is_some())
    }

    pub(crate) fn with_failures_dropped(mut self, failures_dropped: u64) -> Self {
        self.failures_dropped = failures_dropped;
        self
    }

    /// Failures nobody read: made while the pipeline's `failures()` stream
    /// was not taken (or after it was dropped), held by it when it was
    /// dropped, or held by a replica stopped by `abort`. Failures are
    /// counted here, not per stage: the items they failed are counted in
    /// their stage's `failed` either way.
    pub fn failures_dropped(&self) -> u64 {
        self.failures_dropped
    }

    /// The metrics of the stage called `name`.
    pub fn stage(&self, name: &str) -> Option<StageMetrics> {
        self.stages.iter().find(|s| s.name == name).cloned()
    }

    /// Every stage's metrics, in pipeline order.
    pub fn stages(&self) -> &[StageMetrics] {
        &self.stages
    }

    /// Time since the pipeline started, until it ended: once every replica
    /// of every stage has stopped (drained by `shutdown`, or aborted), this
    /// no longer grows.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The stage that limits throughput: the one whose replicas spent the
    /// largest share of the time processing (time blocked on the next stage
    /// does not count), if that share is more than half. For a partitioned
    /// stage the share is its busiest replica's, since the others cannot
    /// take over its keys.
    ///
    /// `None` when no stage was busy more than half the time: then
    /// [`limit`](Self::limit) tells whether the reader of the output or of
    /// the failures, the CPU or the input is the limit (or nothing was
    /// processed yet).
    pub fn bottleneck(&self) -> Option<&str> {
        self.busiest().map(|s| s.name)
    }

    /// What limits throughput, by the rule given in the type's docs: a
    /// stage busy more than half the time, else a stage's rate limit if
    /// its replicas waited for it more than half the time, else the reader
    /// of `output()` or `failures()` if it kept a stage blocked more than
    /// half the time, else the CPU if the first stage (or the stages
    /// together) were idle or throttled less than half the time, else the
    /// input.
    pub fn limit(&self) -> Limit<'_> {
        if let Some(stage) = self.busiest() {
            return Limit::Bottleneck(stage.name);
        }
        if self
            .stages
            .iter()
            .all(|s| s.processed == 0 && s.busy.is_zero() && s.blocked.is_zero() && s.throttled.is_zero())
        {
            return Limit::NothingYet;
        }
        if let Some((stage, _)) = self.rate_limited() {
            return Limit::RateLimit(stage.name);
        }
        let output = self.stages.last().map(|tail| (tail, self.output_blocked(tail)));
        let failures = self.stages.iter().map(|s| (s, self.failures_blocked(s))).max_by(|a, b| a.1.total_cmp(&b.1));
        match (output, failures) {
            (Some((tail, out)), Some((_, fail))) if out > BUSY && out >= fail => return Limit::OutputReader(tail.name),
            (_, Some((stage, fail))) if fail > BUSY => return Limit::FailuresReader(stage.name),
            _ => {}
        }
        // Waiting for a rate limit's token uses no CPU either.
        let head_throttled = self.stages.first().map_or(0.0, |head| head.throttled(self.elapsed));
        if self.head_idle() + head_throttled < BUSY || self.idle() + self.throttled() < BUSY {
            return Limit::Cpu { cores: std::thread::available_parallelism().map_or(1, NonZero::get) };
        }
        Limit::Input
    }

    /// The share of the time the last stage's replicas were blocked on a
    /// full output.
    fn output_blocked(&self, tail: &StageMetrics) -> f64 {
        share(tail.blocked.saturating_sub(tail.failures_blocked), self.available(tail))
    }

    /// The share of the time `stage`'s replicas were blocked on a full
    /// failures buffer.
    fn failures_blocked(&self, stage: &StageMetrics) -> f64 {
        share(stage.failures_blocked, self.available(stage))
    }

    /// `elapsed` times `stage`'s replicas.
    fn available(&self, stage: &StageMetrics) -> Duration {
        self.elapsed * stage.replicas.len().max(1) as u32
    }

    /// The share of the time the first stage's replicas spent idle: waiting
    /// for input.
    fn head_idle(&self) -> f64 {
        self.stages.first().map_or(1.0, |head| head.idle(self.elapsed))
    }

    /// The stage most held back by its rate limit, and by how much, if
    /// that is more than half: a replica of it waited for tokens more than
    /// half the time (a stall shows even while the other replicas idle),
    /// or its replicas, while not idle, waited for tokens more than half
    /// of that time (and were idle less than half of it).
    fn rate_limited(&self) -> Option<(&StageMetrics, f64)> {
        self.stages
            .iter()
            .map(|s| {
                let replica = s.replicas.iter().map(|r| share(r.throttled, self.elapsed)).fold(0.0, f64::max);
                let working = s.busy + s.blocked + s.throttled;
                let stage = if s.idle(self.elapsed) < BUSY { share(s.throttled, working) } else { 0.0 };
                (s, replica.max(stage))
            })
            .filter(|(_, share)| *share > BUSY)
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The share of the time every stage's replicas, together, waited for
    /// a rate limit.
    fn throttled(&self) -> f64 {
        self.over_replicas(StageMetrics::throttled).unwrap_or(0.0)
    }

    /// The share of the time every stage's replicas, together, spent idle.
    fn idle(&self) -> f64 {
        self.over_replicas(StageMetrics::idle).unwrap_or(1.0)
    }

    /// A stage's `share` of the time, averaged over every replica of every
    /// stage; `None` without stages.
    fn over_replicas(&self, share: impl Fn(&StageMetrics, Duration) -> f64) -> Option<f64> {
        let replicas: usize = self.stages.iter().map(|s| s.replicas.len().max(1)).sum();
        let total: f64 = self.stages.iter().map(|s| share(s, self.elapsed) * s.replicas.len().max(1) as f64).sum();
        (replicas > 0).then(|| total / replicas as f64)
    }

    /// When the bottleneck is a partitioned stage held back by one replica
    /// (a *hot partition*: one key, or a few, get most of the items), that
    /// stage's name and the replica's index.
    ///
    /// A replica is hot when it was busy more than half the time while the
    /// other replicas of its stage were, on average, busy less than half as
    /// much. Its queue fills and the items of every other key wait for room
    /// in it at the stage's dispatch: see the guide's section on hot
    /// partitions for what to do.
    pub fn hot_partition(&self) -> Option<(&str, usize)> {
        let stage = self.busiest()?;
        stage.hot_replica(self.elapsed).map(|i| (stage.name, i))
    }

    fn busiest(&self) -> Option<&StageMetrics> {
        self.stages
            .iter()
            .map(|s| (s, s.load(self.elapsed)))
            .filter(|(_, load)| *load > BUSY)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(s, _)| s)
    }

    /// Writes the verdict line, `bottleneck: ...`, for a limit other than a
    /// stage (the table and the harness's report word that one
    /// themselves).
    pub(crate) fn write_no_bottleneck(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |x: f64| format!("{:.0}%", x * 100.0);
        match self.limit() {
            Limit::Bottleneck(name) => write!(f, "bottleneck: {name}"),
            Limit::NothingYet => write!(f, "bottleneck: none yet, no item was processed"),
            Limit::RateLimit(stage) => {
                let share = self.stages.iter().find(|s| s.name == stage).map_or(0.0, |s| s.throttled(self.elapsed));
                write!(
                    f,
                    "bottleneck: none: {stage} waits for its rate limit {} of the time, the rate limit is the limit",
                    pct(share)
                )
            }
            Limit::Cpu { cores } if self.head_idle() >= BUSY => write!(
                f,
                "bottleneck: none: no stage is busy more than half the time, yet the stages together wait for \
                 input only {} of it ({}: {}): the machine's CPU ({cores} core{}) is the limit",
                pct(self.idle()),
                self.stages.first().map_or("", |s| s.name),
                pct(self.head_idle()),
                if cores == 1 { "" } else { "s" }
            ),
            Limit::OutputReader(tail) => {
                let blocked = self.stages.last().map_or(0.0, |s| self.output_blocked(s));
                write!(
                    f,
                    "bottleneck: none: {tail} is blocked on a full output {} of the time, the reader of `output()` \
                     is the limit",
                    pct(blocked)
                )
            }
            Limit::FailuresReader(stage) => {
                let blocked = self.stages.iter().find(|s| s.name == stage).map_or(0.0, |s| self.failures_blocked(s));
                write!(
                    f,
                    "bottleneck: none: {stage} is blocked on a full failures buffer {} of the time, the reader of \
                     `failures()` is the limit",
                    pct(blocked)
                )
            }
            Limit::Cpu { cores } => write!(
                f,
                "bottleneck: none: no stage is busy more than half the time, yet {} waits for input only {} of it \
                 (all stages: {}): the machine's CPU ({cores} core{}) is the limit",
                self.stages.first().map_or("", |s| s.name),
                pct(self.head_idle()),
                pct(self.idle()),
                if cores == 1 { "" } else { "s" }
            ),
            Limit::Input => write!(
                f,
                "bottleneck: none: no stage is busy more than half the time, the input is the limit: {} waits for \
                 it {} of the time (all stages: {})",
                self.stages.first().map_or("", |s| s.name),
                pct(self.head_idle()),
                pct(self.idle())
            ),
        }
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let elapsed = self.elapsed;
        let width = self.stages.iter().map(|s| s.name.len()).max().unwrap_or(0).max(6);
        write!(
            f,
            "{:<width$} {:>8} {:>10} {:>10} {:>7} {:>8} {:>8} {:>11} {:>10} {:>10} {:>5} {:>5}",
            "stage",
            "replicas",
            "received",
            "emitted",
            "failed",
            "dropped",
            "aborted",
            "queued",
            "busy",
            "blocked",
            "util",
            "idle"
        )?;
        // Only pipelines whose stages waited for a rate limit show that column.
        let throttling = self.stages.iter().any(|s| !s.throttled.is_zero());
        if throttling {
            write!(f, " {:>10}", "throttled")?;
        }
        // Only snapshots taken while futures were in flight show that column.
        let in_flight = self.stages.iter().any(|s| s.in_flight > 0);
        if in_flight {
            write!(f, " {:>9}", "in flight")?;
        }
        writeln!(f)?;
        let pct = |x: f64| format!("{:.0}%", x * 100.0);
        for s in &self.stages {
            write!(
                f,
                "{:<width$} {:>8} {:>10} {:>10} {:>7} {:>8} {:>8} {:>11} {:>10} {:>10} {:>5} {:>5}",
                s.name,
                s.replicas.len(),
                s.received,
                s.emitted,
                s.failed,
                s.dropped,
                s.aborted,
                format!("{}/{}", s.queued, s.capacity),
                format!("{:.1?}", s.busy),
                format!("{:.1?}", s.blocked),
                pct(s.utilization(elapsed)),
                pct(s.idle(elapsed)),
            )?;
            if throttling {
                write!(f, " {:>10}", format!("{:.1?}", s.throttled))?;
            }
            if in_flight {
                write!(f, " {:>9}", s.in_flight)?;
            }
            writeln!(f)?;
            if !s.partitioned {
                continue;
            }
            let per_replica = s.capacity / s.replicas.len().max(1) as u64;
            for (i, r) in s.replicas.iter().enumerate() {
                write!(
                    f,
                    "{:<width$} {:>8} {:>10} {:>10} {:>7} {:>8} {:>8} {:>11} {:>10} {:>10} {:>5} {:>5}",
                    "",
                    format!("#{i}"),
                    r.received,
                    r.emitted,
                    r.failed,
                    r.dropped,
                    r.aborted,
                    format!("{}/{}", r.queued, per_replica),
                    format!("{:.1?}", r.busy),
                    format!("{:.1?}", r.blocked),
                    pct(r.utilization(elapsed)),
                    pct(r.idle(elapsed)),
                )?;
                if throttling {
                    write!(f, " {:>10}", format!("{:.1?}", r.throttled))?;
                }
                if in_flight {
                    write!(f, " {:>9}", r.in_flight)?;
                }
                writeln!(f)?;
            }
        }
        let Some(limit) = self.busiest() else {
            self.write_no_bottleneck(f)?;
            return write!(f, " (elapsed {elapsed:.1?})");
        };
        match limit.hot_replica(elapsed) {
            Some(i) => {
                let r = &limit.replicas[i];
                let per_replica = limit.capacity / limit.replicas.len().max(1) as u64;
                let others = (limit.utilization(elapsed) * limit.replicas.len() as f64 - r.utilization(elapsed))
                    / (limit.replicas.len() - 1) as f64;
                write!(
                    f,
                    "bottleneck: {}, replica {i} (a hot partition: {}busy {} of the time, the other replicas {} \
                     on average; elapsed {elapsed:.1?})",
                    limit.name,
                    if r.queued >= per_replica { "its queue is full, " } else { "" },
                    pct(r.utilization(elapsed)),
                    pct(others.max(0.0)),
                )
            }
            None => write!(f, "bottleneck: {} (elapsed {elapsed:.1?})", limit.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// A replica that processed an item and spent these shares of a second
    /// busy, blocked, and blocked on the failures buffer (part of blocked).
    fn replica(busy: f64, blocked: f64, failures: f64) -> ReplicaMetrics {
        ReplicaMetrics {
            received: 1,
            processed: 1,
            busy: SECOND.mul_f64(busy),
            blocked: SECOND.mul_f64(blocked),
            failures_blocked: SECOND.mul_f64(failures),
            ..ReplicaMetrics::default()
        }
    }

    /// A snapshot over one second of stages named `s0, s1, ..`.
    fn metrics(stages: Vec<Vec<ReplicaMetrics>>) -> Metrics {
        const NAMES: [&str; 3] = ["s0", "s1", "s2"];
        let stages =
            stages.into_iter().zip(NAMES).map(|(r, name)| StageMetrics::new(name, r, 0, 1_000, false)).collect();
        Metrics { stages, elapsed: SECOND, failures_dropped: 0 }
    }

    fn cores() -> usize {
        std::thread::available_parallelism().map_or(1, NonZero::get)
    }

    fn throttled(busy: f64, throttled: f64) -> ReplicaMetrics {
        ReplicaMetrics { throttled: SECOND.mul_f64(throttled), ..replica(busy, 0.0, 0.0) }
    }

    #[test]
    fn a_rate_limit_waited_for_most_of_the_working_time_is_the_limit() {
        // Busy 35 %, throttled 48 %, idle 17 %: the tokens, not the CPU.
        let m = metrics(vec![vec![replica(0.0, 0.0, 0.0)], vec![throttled(0.35, 0.48); 8]]);
        assert_eq!(m.limit(), Limit::RateLimit("s1"), "{m}");
        assert!(m.to_string().contains("bottleneck: none: s1 waits for its rate limit 48% of the time"), "{m}");
        // One replica of four stuck on its token, the others idle.
        let m = metrics(vec![vec![throttled(0.0, 1.0), throttled(0.0, 0.0), throttled(0.0, 0.0), throttled(0.0, 0.0)]]);
        assert_eq!(m.limit(), Limit::RateLimit("s0"), "{m}");
        // Mostly idle, throttled a little: the input.
        let m = metrics(vec![vec![throttled(0.1, 0.2); 4]]);
        assert_eq!(m.limit(), Limit::Input, "{m}");
    }

    #[test]
    fn the_cpu_line_names_the_stages_together_when_only_they_are_short_of_input() {
        // The first stage mostly idle, the others mostly blocked.
        let m =
            metrics(vec![vec![replica(0.2, 0.0, 0.0)], vec![replica(0.3, 0.6, 0.0); 3], vec![replica(0.45, 0.0, 0.0)]]);
        assert_eq!(m.limit(), Limit::Cpu { cores: cores() });
        assert!(m.to_string().contains("yet the stages together wait for input only 33% of it (s0: 80%)"), "{m}");
    }

    #[test]
    fn a_stage_busy_more_than_half_the_time_is_the_limit_whatever_else_waits() {
        let m = metrics(vec![vec![replica(0.1, 0.9, 0.0)], vec![replica(0.6, 0.4, 0.0)], vec![replica(0.0, 0.9, 0.0)]]);
        assert_eq!(m.limit(), Limit::Bottleneck("s1"));
        assert_eq!(m.bottleneck(), Some("s1"));
        assert!(m.to_string().ends_with("bottleneck: s1 (elapsed 1.0s)"), "{m}");
    }

    #[test]
    fn a_tail_blocked_most_of_the_time_names_the_output_reader() {
        let m = metrics(vec![vec![replica(0.1, 0.8, 0.0)], vec![replica(0.1, 0.7, 0.1)]]);
        assert_eq!(m.limit(), Limit::OutputReader("s1"));
        assert_eq!(m.bottleneck(), None);
        assert!(m.to_string().contains("s1 is blocked on a full output 60% of the time"), "{m}");
    }

    #[test]
    fn a_stage_blocked_on_failures_most_of_the_time_names_the_failures_reader() {
        let m = metrics(vec![vec![replica(0.1, 0.9, 0.0)], vec![replica(0.1, 0.8, 0.8)], vec![replica(0.0, 0.0, 0.0)]]);
        assert_eq!(m.limit(), Limit::FailuresReader("s1"));
        assert!(m.to_string().contains("s1 is blocked on a full failures buffer 80% of the time"), "{m}");
        // Both readers behind: the longer wait wins.
        let m = metrics(vec![vec![replica(0.0, 0.6, 0.6)], vec![replica(0.0, 0.9, 0.0)]]);
        assert_eq!(m.limit(), Limit::OutputReader("s1"));
    }

    #[test]
    fn stages_mostly_busy_or_blocked_name_the_cpu() {
        // Two replicas each: busy 40%, blocked 30% (not on the output for
        // more than half the time), idle 30%.
        let m = metrics(vec![vec![replica(0.4, 0.3, 0.0); 2], vec![replica(0.4, 0.3, 0.0); 2]]);
        assert_eq!(m.limit(), Limit::Cpu { cores: cores() });
        assert_eq!(m.bottleneck(), None);
        let table = m.to_string();
        assert!(
            table.contains("yet s0 waits for input only 30% of it (all stages: 30%): the machine's CPU ("),
            "{table}"
        );
        assert!(table.contains(&format!("({} core", cores())), "{table}");
    }

    #[test]
    fn a_first_stage_blocked_on_idle_stages_names_the_cpu() {
        // The first stage waits for room in the next stage's queue while
        // the many replicas of that stage look idle: they wait for a core.
        let m = metrics(vec![vec![replica(0.45, 0.3, 0.0)], vec![replica(0.1, 0.05, 0.0); 4]]);
        assert_eq!(m.limit(), Limit::Cpu { cores: cores() });
        assert!(m.to_string().contains("yet s0 waits for input only 25% of it (all stages: 73%)"), "{m}");
    }

    #[test]
    fn stages_mostly_idle_name_the_input() {
        let m = metrics(vec![vec![replica(0.4, 0.1, 0.0)], vec![replica(0.3, 0.0, 0.0)]]);
        assert_eq!(m.limit(), Limit::Input);
        assert!(
            m.to_string()
                .ends_with("the input is the limit: s0 waits for it 50% of the time (all stages: 60%) (elapsed 1.0s)"),
            "{m}"
        );
    }

    #[test]
    fn nothing_processed_says_so() {
        let m = metrics(vec![vec![ReplicaMetrics::default()], vec![ReplicaMetrics::default()]]);
        assert_eq!(m.limit(), Limit::NothingYet);
        assert!(m.to_string().ends_with("bottleneck: none yet, no item was processed (elapsed 1.0s)"), "{m}");
    }

    #[test]
    fn a_wait_and_work_in_progress_count_until_the_task_ended() {
        let counters = Counters::default();
        let start = counters.epoch;
        // Aside from its start (booting, waiting for work) until 1 s.
        counters.resume_at(start + SECOND);
        counters.begin_wait(start + 2 * SECOND, false);
        // A snapshot while the wait lasts, read after the task ended at 4 s:
        // busy 1 s, blocked 2 s, and nothing runs on past the end.
        counters.ended.store(counters.stamp(start + 4 * SECOND), Ordering::Relaxed);
        let r = counters.snapshot();
        assert_eq!((r.busy, r.blocked, r.failures_blocked), (SECOND, 2 * SECOND, Duration::ZERO));
        assert_eq!(r.ended, Some(start + 4 * SECOND));
        // The wait ends at 4 s: work resumes after it, until the replica is
        // set aside again at 5 s; only its time at work is busy.
        counters.ended.store(0, Ordering::Relaxed);
        counters.end_wait(start + 2 * SECOND, start + 4 * SECOND, false, true);
        counters.set_aside_at(start + 5 * SECOND);
        counters.ended.store(counters.stamp(start + 9 * SECOND), Ordering::Relaxed);
        let r = counters.snapshot();
        assert_eq!((r.busy, r.blocked), (2 * SECOND, 2 * SECOND));
    }

    #[test]
    fn a_fused_stage_times_its_batches() {
        let counters = Counters::default();
        counters.measure_batches();
        let start = counters.epoch;
        counters.busy_since.store(counters.stamp(start + SECOND), Ordering::Relaxed);
        counters.begin_wait(start + 2 * SECOND, false);
        counters.ended.store(counters.stamp(start + 4 * SECOND), Ordering::Relaxed);
        let r = counters.snapshot();
        assert_eq!((r.busy, r.blocked), (SECOND, 2 * SECOND));
        // The wait ends at 4 s: the batch's clock resumes after it.
        counters.ended.store(0, Ordering::Relaxed);
        counters.end_wait(start + 2 * SECOND, start + 4 * SECOND, false, true);
        counters.ended.store(counters.stamp(start + 5 * SECOND), Ordering::Relaxed);
        let r = counters.snapshot();
        assert_eq!((r.busy, r.blocked), (2 * SECOND, 2 * SECOND));
    }
}
