use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Counters of one replica, written once per batch by its task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    received: AtomicU64,
    processed: AtomicU64,
    emitted: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    aborted: AtomicU64,
    busy_ns: AtomicU64,
    blocked_ns: AtomicU64,
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
    }

    pub(crate) fn snapshot(&self) -> ReplicaMetrics {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ReplicaMetrics {
            received: get(&self.received),
            processed: get(&self.processed),
            emitted: get(&self.emitted),
            failed: get(&self.failed),
            dropped: get(&self.dropped),
            aborted: get(&self.aborted),
            queued: 0,
            busy: Duration::from_nanos(get(&self.busy_ns)),
            blocked: Duration::from_nanos(get(&self.blocked_ns)),
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
    /// Items it is done with: `process` returned (or panicked). Includes
    /// the failed ones.
    pub processed: u64,
    /// Items it emitted.
    pub emitted: u64,
    /// Items that failed: `process` called [`Emitter::fail`](crate::Emitter::fail)
    /// (once or more) or panicked. Each counts once, and is also counted in
    /// `processed`.
    pub failed: u64,
    /// Items it emitted that nobody could take (the pipeline's output was
    /// not taken or was dropped, or the pipeline was aborted).
    pub dropped: u64,
    /// Items it received that `abort` stopped before `process` returned: the
    /// one in `process`, the rest of its batch, and what was cleared from
    /// its queue.
    pub aborted: u64,
    /// Items waiting in this replica's own queue when the snapshot was
    /// taken: with `partition_by`, its partition's queue. Replicas that share
    /// their stage's one queue have no queue of their own and show 0 here;
    /// the shared queue is [`StageMetrics::queued`].
    pub queued: u64,
    /// Time spent in `process`, not counting time blocked.
    pub busy: Duration,
    /// Time spent waiting for room in the next queue.
    pub blocked: Duration,
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
/// received = processed + (items in progress: taken in a batch, not done)
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
    /// Time spent in `process`, summed over replicas.
    pub busy: Duration,
    /// Time spent waiting for room in the next queue, summed over replicas.
    pub blocked: Duration,
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
    /// processing nor blocked on the next stage: waiting for input. Between
    /// 0 and 1.
    pub fn idle(&self, elapsed: Duration) -> f64 {
        let available = elapsed * self.replicas.len().max(1) as u32;
        (1.0 - share(self.busy, available) - share(self.blocked, available)).max(0.0)
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

    /// The share of the elapsed time this replica spent neither processing
    /// nor blocked on the next stage, between 0 and 1.
    pub fn idle(&self, elapsed: Duration) -> f64 {
        (1.0 - share(self.busy, elapsed) - share(self.blocked, elapsed)).max(0.0)
    }
}

/// A stage (or replica) busy more than this share of the time limits the
/// pipeline; below it, whoever feeds the pipeline is the limit.
const BUSY: f64 = 0.5;

/// `part / whole`, between 0 and 1; 0 if `whole` is zero.
fn share(part: Duration, whole: Duration) -> f64 {
    if whole.is_zero() { 0.0 } else { (part.as_secs_f64() / whole.as_secs_f64()).min(1.0) }
}

/// A snapshot of a pipeline's metrics, stage by stage.
///
/// Taken with the pipeline's `metrics()` method, at any time, also after
/// shutdown. `Display` prints it as a table (one row per stage, and one per
/// replica for partitioned stages) that names the bottleneck, or says that
/// the input is the limit. Shares of time are over the time since the
/// pipeline started ([`elapsed`](Self::elapsed)).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    stages: Vec<StageMetrics>,
    elapsed: Duration,
    failures_dropped: u64,
}

impl Metrics {
    pub(crate) fn new(stages: Vec<StageMetrics>, elapsed: Duration) -> Self {
        Metrics { stages, elapsed, failures_dropped: 0 }
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

    /// Time since the pipeline started.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The stage that limits throughput: the one whose replicas spent the
    /// largest share of the time processing (time blocked on the next stage
    /// does not count), if that share is more than half. For a partitioned
    /// stage the share is its busiest replica's, since the others cannot
    /// take over its keys.
    ///
    /// `None` when no stage was busy more than half the time: then the
    /// stages wait for input, and whoever feeds the pipeline is the limit
    /// (or nothing was processed yet).
    pub fn bottleneck(&self) -> Option<&str> {
        self.limit().map(|s| s.name)
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
        let stage = self.limit()?;
        stage.hot_replica(self.elapsed).map(|i| (stage.name, i))
    }

    fn limit(&self) -> Option<&StageMetrics> {
        self.stages
            .iter()
            .map(|s| (s, s.load(self.elapsed)))
            .filter(|(_, load)| *load > BUSY)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(s, _)| s)
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let elapsed = self.elapsed;
        let width = self.stages.iter().map(|s| s.name.len()).max().unwrap_or(0).max(6);
        writeln!(
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
        let pct = |x: f64| format!("{:.0}%", x * 100.0);
        for s in &self.stages {
            writeln!(
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
            if !s.partitioned {
                continue;
            }
            let per_replica = s.capacity / s.replicas.len().max(1) as u64;
            for (i, r) in s.replicas.iter().enumerate() {
                writeln!(
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
            }
        }
        let Some(limit) = self.limit() else {
            if self.stages.iter().all(|s| s.processed == 0) {
                return write!(f, "bottleneck: none yet (elapsed {elapsed:.1?})");
            }
            return write!(
                f,
                "bottleneck: none: no stage is busy more than half the time, the input is the limit \
                 (elapsed {elapsed:.1?})"
            );
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
