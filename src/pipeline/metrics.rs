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
            busy: Duration::from_nanos(get(&self.busy_ns)),
            blocked: Duration::from_nanos(get(&self.blocked_ns)),
        }
    }
}

/// The counts of one replica of a stage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaMetrics {
    /// Items this replica took from its queue.
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
    /// Time spent in `process`, not counting time blocked.
    pub busy: Duration,
    /// Time spent waiting for room in the next queue.
    pub blocked: Duration,
}

/// A snapshot of one stage's counts, summed over its replicas.
///
/// Every item a stage received is processed: it emitted 0, 1 or many items
/// for it, or failed. `received - processed` items are in progress (taken
/// from the queue in a batch, not done yet); once the stage is idle,
/// `processed == received`, and for a stage that emits one item per input,
/// `emitted + failed == processed`.
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
    /// Items taken from the stage's queue.
    pub received: u64,
    /// Items done: `process` returned (or panicked).
    pub processed: u64,
    /// Items emitted downstream.
    pub emitted: u64,
    /// Items whose `process` panicked.
    pub failed: u64,
    /// Items emitted that nobody could take: see [`ReplicaMetrics::dropped`].
    pub dropped: u64,
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
}

impl StageMetrics {
    pub(crate) fn new(name: &'static str, replicas: Vec<ReplicaMetrics>, queued: u64, capacity: u64) -> Self {
        let mut stage = StageMetrics { name, queued, capacity, ..StageMetrics::default() };
        for r in &replicas {
            stage.received += r.received;
            stage.processed += r.processed;
            stage.emitted += r.emitted;
            stage.failed += r.failed;
            stage.dropped += r.dropped;
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
