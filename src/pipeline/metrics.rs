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
    /// Items it is done with: `process` returned (or panicked).
    pub processed: u64,
    /// Items it emitted.
    pub emitted: u64,
    /// Items whose `process` panicked.
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
/// failed  <= processed          (a panicked `process` is done too)
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
    /// Items done: `process` returned (or panicked).
    pub processed: u64,
    /// Items emitted downstream.
    pub emitted: u64,
    /// Items whose `process` panicked.
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
    /// between 0 and 1.
    pub fn utilization(&self, elapsed: Duration) -> f64 {
        let available = elapsed.as_secs_f64() * self.replicas.len().max(1) as f64;
        if available == 0.0 { 0.0 } else { (self.busy.as_secs_f64() / available).min(1.0) }
    }
}

/// A snapshot of a pipeline's metrics, stage by stage.
///
/// Taken with the pipeline's `metrics()` method, at any time, also after
/// shutdown. `Display` prints it as a table that names the bottleneck.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    stages: Vec<StageMetrics>,
    elapsed: Duration,
}

impl Metrics {
    pub(crate) fn new(stages: Vec<StageMetrics>, elapsed: Duration) -> Self {
        Metrics { stages, elapsed }
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
    /// does not count). `None` before any item was processed.
    pub fn bottleneck(&self) -> Option<&str> {
        self.stages
            .iter()
            .filter(|s| s.busy > Duration::ZERO)
            .max_by(|a, b| a.utilization(self.elapsed).total_cmp(&b.utilization(self.elapsed)))
            .map(|s| s.name)
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.stages.iter().map(|s| s.name.len()).max().unwrap_or(0).max(5);
        writeln!(
            f,
            "{:<width$} {:>8} {:>12} {:>12} {:>8} {:>8} {:>13} {:>10} {:>10} {:>6}",
            "stage", "replicas", "received", "emitted", "failed", "dropped", "queued", "busy", "blocked", "util"
        )?;
        for s in &self.stages {
            writeln!(
                f,
                "{:<width$} {:>8} {:>12} {:>12} {:>8} {:>8} {:>13} {:>10} {:>10} {:>5.0}%",
                s.name,
                s.replicas.len(),
                s.received,
                s.emitted,
                s.failed,
                s.dropped,
                format!("{}/{}", s.queued, s.capacity),
                format!("{:.1?}", s.busy),
                format!("{:.1?}", s.blocked),
                s.utilization(self.elapsed) * 100.0,
            )?;
        }
        match self.bottleneck() {
            Some(name) => write!(f, "bottleneck: {name} (elapsed {:.1?})", self.elapsed),
            None => write!(f, "bottleneck: none yet (elapsed {:.1?})", self.elapsed),
        }
    }
}
