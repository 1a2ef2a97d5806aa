//! Pipeline metrics in your monitoring stack, through the
//! [`metrics`](https://docs.rs/metrics) crate's facade (feature `metrics`).
//!
//! [`Metrics::record`] records one snapshot into whatever recorder the
//! program installed (Prometheus with `metrics-exporter-prometheus`, StatsD,
//! OpenTelemetry, ...), and [`Recording`] does it every `period` on a Tokio
//! task until the pipeline ends:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # use genflow::{Emitter, GenServer, Stage};
//! # struct Double;
//! # impl GenServer for Double {
//! #     type Message = ();
//! #     type Response = ();
//! #     type Registry = Flow;
//! #     fn new(_: Flow) -> Self { Double }
//! #     async fn handle_call(&mut self, _: ()) {}
//! #     async fn handle_cast(&mut self, _: ()) {}
//! # }
//! # impl Stage for Double {
//! #     type In = u64;
//! #     type Out = u64;
//! #     async fn process(&mut self, n: u64, out: &mut Emitter<u64>) { out.emit(2 * n).await }
//! # }
//! use std::time::Duration;
//!
//! use genflow::export::Recording;
//!
//! #[genflow::pipeline{ double: Double }]
//! struct Flow;
//!
//! // Install an exporter first, for instance:
//! // metrics_exporter_prometheus::PrometheusBuilder::new()
//! //     .with_http_listener(([127, 0, 0, 1], 9000))
//! //     .install()?;
//! let flow = Flow::start().await;
//! let mut recording = Recording::start(&flow, "numbers", Duration::from_secs(1));
//! flow.feed(futures::stream::iter(0..100)).await.expect("running");
//! flow.shutdown().await;
//! // It records the final counts and ends once the pipeline has ended.
//! recording.until_ended().await;
//! assert!(recording.is_finished());
//! # }
//! ```
//!
//! # Why snapshots
//!
//! The engine already counts per replica (plain atomics, updated once per
//! batch) and sums on demand, so nothing is added to the path of an item:
//! the facade is called per *series* and per record, never per item.
//! Recording a snapshot sets each counter to its absolute value
//! ([`Counter::absolute`](metrics::Counter::absolute)) and each gauge
//! ([`Gauge::set`](metrics::Gauge::set)), so what an exporter shows is
//! exactly what [`Pipeline::metrics`] said at the last record, and the
//! record [`Recording`] makes after the pipeline ended holds the final
//! counts. The cost is one snapshot and one registry look-up per series
//! each `period`, whatever the throughput.
//!
//! # What is recorded
//!
//! Every series carries the label `pipeline` (the name given to
//! [`Metrics::record`] or [`Recording::start`]); stage series also carry
//! `stage` (the declared stage name) and replica series `replica` (its
//! index, `0` to replicas − 1). Counters end in `_total`; times are in
//! seconds (`_seconds`), as gauges, because the facade's counters are
//! integers: they only grow while the pipeline runs, so `rate()` reads
//! them as it reads a counter.
//!
//! | name | type | labels | value |
//! |---|---|---|---|
//! | `genflow_stage_received_total` | counter | pipeline, stage | [`StageMetrics::received`] |
//! | `genflow_stage_processed_total` | counter | pipeline, stage | [`StageMetrics::processed`] (failed ones included) |
//! | `genflow_stage_emitted_total` | counter | pipeline, stage | [`StageMetrics::emitted`] |
//! | `genflow_stage_failed_total` | counter | pipeline, stage | [`StageMetrics::failed`] |
//! | `genflow_stage_dropped_total` | counter | pipeline, stage | [`StageMetrics::dropped`] |
//! | `genflow_stage_aborted_total` | counter | pipeline, stage | [`StageMetrics::aborted`] |
//! | `genflow_stage_queued` | gauge | pipeline, stage | [`StageMetrics::queued`] |
//! | `genflow_stage_queue_capacity` | gauge | pipeline, stage | [`StageMetrics::capacity`] |
//! | `genflow_stage_in_flight` | gauge | pipeline, stage | [`StageMetrics::in_flight`] |
//! | `genflow_stage_replicas` | gauge | pipeline, stage | the stage's replica count |
//! | `genflow_stage_busy_seconds` | gauge, growing | pipeline, stage | [`StageMetrics::busy`] |
//! | `genflow_stage_blocked_seconds` | gauge, growing | pipeline, stage | [`StageMetrics::blocked`] |
//! | `genflow_stage_failures_blocked_seconds` | gauge, growing | pipeline, stage | [`StageMetrics::failures_blocked`] |
//! | `genflow_stage_throttled_seconds` | gauge, growing | pipeline, stage | [`StageMetrics::throttled`] |
//! | `genflow_replica_received_total` | counter | pipeline, stage, replica | [`ReplicaMetrics::received`] |
//! | `genflow_replica_processed_total` | counter | pipeline, stage, replica | [`ReplicaMetrics::processed`] |
//! | `genflow_replica_emitted_total` | counter | pipeline, stage, replica | [`ReplicaMetrics::emitted`] |
//! | `genflow_replica_failed_total` | counter | pipeline, stage, replica | [`ReplicaMetrics::failed`] |
//! | `genflow_replica_dropped_total` | counter | pipeline, stage, replica | [`ReplicaMetrics::dropped`] |
//! | `genflow_replica_aborted_total` | counter | pipeline, stage, replica | [`ReplicaMetrics::aborted`] |
//! | `genflow_replica_queued` | gauge | pipeline, stage, replica | [`ReplicaMetrics::queued`], partitioned stages only |
//! | `genflow_replica_in_flight` | gauge | pipeline, stage, replica | [`ReplicaMetrics::in_flight`] |
//! | `genflow_replica_busy_seconds` | gauge, growing | pipeline, stage, replica | [`ReplicaMetrics::busy`] |
//! | `genflow_replica_blocked_seconds` | gauge, growing | pipeline, stage, replica | [`ReplicaMetrics::blocked`] |
//! | `genflow_replica_failures_blocked_seconds` | gauge, growing | pipeline, stage, replica | [`ReplicaMetrics::failures_blocked`] |
//! | `genflow_replica_throttled_seconds` | gauge, growing | pipeline, stage, replica | [`ReplicaMetrics::throttled`] |
//! | `genflow_pipeline_failures_dropped_total` | counter | pipeline | [`Metrics::failures_dropped`] |
//! | `genflow_pipeline_elapsed_seconds` | gauge, growing | pipeline | [`Metrics::elapsed`] |
//!
//! Stage and replica series are separate families, so that summing a
//! family over its labels never counts an item twice: the replica series of
//! a stage add up to its stage series (for `queued`, on partitioned stages:
//! replicas sharing their stage's queue have none of their own, so they
//! have no `queued` series), except the last stage's `dropped`: it also
//! counts the items an output stream still held when it was dropped, which
//! are on no replica's count. Every series is described (`# HELP`, with
//! its unit), at each record, for exporters that show descriptions.
//!
//! Two pipelines recorded under the same `pipeline` label write the same
//! series: give each running pipeline its own name.
//!
//! [`Pipeline::metrics`]: crate::Pipeline::metrics

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use tokio::{task::JoinHandle, time::MissedTickBehavior};

use crate::{Metrics, Pipeline, ReplicaMetrics, StageMetrics};

/// Where the series come from, for the recorder's metadata.
const METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// One series family: its name, unit and description.
struct Family {
    name: &'static str,
    gauge: bool,
    unit: Option<Unit>,
    help: &'static str,
}

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family { name, gauge: false, unit: None, help }
}

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family { name, gauge: true, unit: None, help }
}

const fn seconds(name: &'static str, help: &'static str) -> Family {
    Family { name, gauge: true, unit: Some(Unit::Seconds), help }
}

// The families, in the order of the table above.
const STAGE_RECEIVED: Family = counter("genflow_stage_received_total", "Items the stage took from its queue.");
const STAGE_PROCESSED: Family =
    counter("genflow_stage_processed_total", "Items the stage is done with, failed ones included.");
const STAGE_EMITTED: Family = counter("genflow_stage_emitted_total", "Items the stage emitted downstream.");
const STAGE_FAILED: Family = counter("genflow_stage_failed_total", "Items that failed in the stage.");
const STAGE_DROPPED: Family = counter("genflow_stage_dropped_total", "Items the stage emitted that nobody could take.");
const STAGE_ABORTED: Family = counter("genflow_stage_aborted_total", "Items abort stopped before the stage was done.");
const STAGE_QUEUED: Family = gauge("genflow_stage_queued", "Items waiting in the stage's queue(s).");
const STAGE_CAPACITY: Family = gauge("genflow_stage_queue_capacity", "Capacity of the stage's queue(s), summed.");
const STAGE_IN_FLIGHT: Family = gauge("genflow_stage_in_flight", "Futures of the stage in flight.");
const STAGE_REPLICAS: Family = gauge("genflow_stage_replicas", "Replicas of the stage.");
const STAGE_BUSY: Family = seconds("genflow_stage_busy_seconds", "Time at work on items, summed over replicas.");
const STAGE_BLOCKED: Family =
    seconds("genflow_stage_blocked_seconds", "Time waiting for room downstream, summed over replicas.");
const STAGE_FAILURES_BLOCKED: Family = seconds(
    "genflow_stage_failures_blocked_seconds",
    "Of the blocked time, waiting for room in the failures buffer, summed over replicas.",
);
const STAGE_THROTTLED: Family =
    seconds("genflow_stage_throttled_seconds", "Time waiting for the stage's rate limit, summed over replicas.");
const REPLICA_RECEIVED: Family = counter("genflow_replica_received_total", "Items the replica took from its queue.");
const REPLICA_PROCESSED: Family =
    counter("genflow_replica_processed_total", "Items the replica is done with, failed ones included.");
const REPLICA_EMITTED: Family = counter("genflow_replica_emitted_total", "Items the replica emitted downstream.");
const REPLICA_FAILED: Family = counter("genflow_replica_failed_total", "Items that failed in the replica.");
const REPLICA_DROPPED: Family =
    counter("genflow_replica_dropped_total", "Items the replica emitted that nobody could take.");
const REPLICA_ABORTED: Family =
    counter("genflow_replica_aborted_total", "Items abort stopped before the replica was done.");
const REPLICA_QUEUED: Family =
    gauge("genflow_replica_queued", "Items waiting in the replica's own queue (partitioned stages).");
const REPLICA_IN_FLIGHT: Family = gauge("genflow_replica_in_flight", "Futures of the replica in flight.");
const REPLICA_BUSY: Family = seconds("genflow_replica_busy_seconds", "Time at work on items.");
const REPLICA_BLOCKED: Family = seconds("genflow_replica_blocked_seconds", "Time waiting for room downstream.");
const REPLICA_FAILURES_BLOCKED: Family = seconds(
    "genflow_replica_failures_blocked_seconds",
    "Of the blocked time, waiting for room in the failures buffer.",
);
const REPLICA_THROTTLED: Family =
    seconds("genflow_replica_throttled_seconds", "Time waiting for the stage's rate limit.");
const FAILURES_DROPPED: Family =
    counter("genflow_pipeline_failures_dropped_total", "Failures nobody read from failures().");
const ELAPSED: Family = seconds("genflow_pipeline_elapsed_seconds", "Time since the pipeline started, until it ended.");

const FAMILIES: [&Family; 28] = [
    &STAGE_RECEIVED,
    &STAGE_PROCESSED,
    &STAGE_EMITTED,
    &STAGE_FAILED,
    &STAGE_DROPPED,
    &STAGE_ABORTED,
    &STAGE_QUEUED,
    &STAGE_CAPACITY,
    &STAGE_IN_FLIGHT,
    &STAGE_REPLICAS,
    &STAGE_BUSY,
    &STAGE_BLOCKED,
    &STAGE_FAILURES_BLOCKED,
    &STAGE_THROTTLED,
    &REPLICA_RECEIVED,
    &REPLICA_PROCESSED,
    &REPLICA_EMITTED,
    &REPLICA_FAILED,
    &REPLICA_DROPPED,
    &REPLICA_ABORTED,
    &REPLICA_QUEUED,
    &REPLICA_IN_FLIGHT,
    &REPLICA_BUSY,
    &REPLICA_BLOCKED,
    &REPLICA_FAILURES_BLOCKED,
    &REPLICA_THROTTLED,
    &FAILURES_DROPPED,
    &ELAPSED,
];

/// The recorder and the labels every series of one snapshot shares.
struct Sink<'a> {
    recorder: &'a dyn Recorder,
    labels: Vec<Label>,
}

impl Sink<'_> {
    fn key(&self, family: &Family) -> Key {
        Key::from_parts(family.name, self.labels.clone())
    }

    fn counter(&self, family: &Family, value: u64) {
        let counter: Counter = self.recorder.register_counter(&self.key(family), &METADATA);
        counter.absolute(value);
    }

    fn gauge(&self, family: &Family, value: f64) {
        let gauge: Gauge = self.recorder.register_gauge(&self.key(family), &METADATA);
        gauge.set(value);
    }

    fn seconds(&self, family: &Family, value: Duration) {
        self.gauge(family, value.as_secs_f64());
    }

    /// The same sink with one more label.
    fn with(&self, key: &'static str, value: impl Into<SharedString>) -> Sink<'_> {
        let mut labels = self.labels.clone();
        labels.push(Label::new(key, value));
        Sink { recorder: self.recorder, labels }
    }

    fn stage(&self, s: &StageMetrics) {
        self.counter(&STAGE_RECEIVED, s.received);
        self.counter(&STAGE_PROCESSED, s.processed);
        self.counter(&STAGE_EMITTED, s.emitted);
        self.counter(&STAGE_FAILED, s.failed);
        self.counter(&STAGE_DROPPED, s.dropped);
        self.counter(&STAGE_ABORTED, s.aborted);
        self.gauge(&STAGE_QUEUED, s.queued as f64);
        self.gauge(&STAGE_CAPACITY, s.capacity as f64);
        self.gauge(&STAGE_IN_FLIGHT, s.in_flight as f64);
        self.gauge(&STAGE_REPLICAS, s.replicas.len() as f64);
        self.seconds(&STAGE_BUSY, s.busy);
        self.seconds(&STAGE_BLOCKED, s.blocked);
        self.seconds(&STAGE_FAILURES_BLOCKED, s.failures_blocked);
        self.seconds(&STAGE_THROTTLED, s.throttled);
    }

    fn replica(&self, r: &ReplicaMetrics, partitioned: bool) {
        self.counter(&REPLICA_RECEIVED, r.received);
        self.counter(&REPLICA_PROCESSED, r.processed);
        self.counter(&REPLICA_EMITTED, r.emitted);
        self.counter(&REPLICA_FAILED, r.failed);
        self.counter(&REPLICA_DROPPED, r.dropped);
        self.counter(&REPLICA_ABORTED, r.aborted);
        if partitioned {
            self.gauge(&REPLICA_QUEUED, r.queued as f64);
        }
        self.gauge(&REPLICA_IN_FLIGHT, r.in_flight as f64);
        self.seconds(&REPLICA_BUSY, r.busy);
        self.seconds(&REPLICA_BLOCKED, r.blocked);
        self.seconds(&REPLICA_FAILURES_BLOCKED, r.failures_blocked);
        self.seconds(&REPLICA_THROTTLED, r.throttled);
    }
}

/// Describes every family to `recorder` (name, unit, help text).
fn describe(recorder: &dyn Recorder) {
    for family in FAMILIES {
        let help = SharedString::const_str(family.help);
        if family.gauge {
            recorder.describe_gauge(family.name.into(), family.unit, help);
        } else {
            recorder.describe_counter(family.name.into(), family.unit, help);
        }
    }
}

impl Metrics {
    /// Records this snapshot into the `metrics` facade's recorder (the
    /// thread's local recorder if one is set, else the global one), every
    /// series labelled `pipeline = pipeline`: counters set to their
    /// absolute value, gauges to theirs. The series are listed in the
    /// [`export`](crate::export) module's docs.
    ///
    /// With no recorder installed, it does nothing. It is not `async`: it
    /// costs one look-up in the recorder per series (about 12 per replica
    /// and 14 per stage).
    ///
    /// # Examples
    ///
    /// Recorded into a Prometheus recorder (from `metrics-exporter-prometheus`)
    /// and rendered as the text a scrape would get:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use genflow::{Emitter, GenServer, Stage};
    /// # struct Double;
    /// # impl GenServer for Double {
    /// #     type Message = ();
    /// #     type Response = ();
    /// #     type Registry = Flow;
    /// #     fn new(_: Flow) -> Self { Double }
    /// #     async fn handle_call(&mut self, _: ()) {}
    /// #     async fn handle_cast(&mut self, _: ()) {}
    /// # }
    /// # impl Stage for Double {
    /// #     type In = u64;
    /// #     type Out = u64;
    /// #     async fn process(&mut self, n: u64, out: &mut Emitter<u64>) { out.emit(2 * n).await }
    /// # }
    /// use metrics_exporter_prometheus::PrometheusBuilder;
    ///
    /// #[genflow::pipeline{ double: Double }]
    /// struct Flow;
    ///
    /// let flow = Flow::start().await;
    /// flow.feed(futures::stream::iter(0..100)).await.expect("running");
    /// flow.shutdown().await;
    ///
    /// let recorder = PrometheusBuilder::new().build_recorder();
    /// metrics::with_local_recorder(&recorder, || flow.metrics().record("numbers"));
    /// let text = recorder.handle().render();
    /// assert!(text.contains(r#"genflow_stage_emitted_total{pipeline="numbers",stage="double"} 100"#));
    /// assert!(text.contains(r#"genflow_replica_received_total{pipeline="numbers",stage="double",replica="0"} 100"#));
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn record(&self, pipeline: &str) {
        metrics::with_recorder(|recorder| {
            describe(recorder);
            let root = Sink { recorder, labels: vec![Label::new("pipeline", pipeline.to_owned())] };
            root.counter(&FAILURES_DROPPED, self.failures_dropped());
            root.seconds(&ELAPSED, self.elapsed());
            for s in self.stages() {
                let stage = root.with("stage", s.name);
                stage.stage(s);
                for (i, r) in s.replicas.iter().enumerate() {
                    stage.with("replica", i.to_string()).replica(r, s.partitioned());
                }
            }
        });
    }
}

/// Records a pipeline's [`Metrics`] into the `metrics` facade every
/// `period`, on a Tokio task, until the pipeline ends; stops when dropped.
///
/// Made by [`Recording::start`]. Each record is [`Metrics::record`] of a
/// fresh snapshot, into the *global* recorder (the task runs on the
/// runtime's threads, where a thread-local recorder is not set). Once
/// every replica of the pipeline has stopped (drained by `shutdown`, or
/// aborted), it waits for the pipeline's tasks to be gone, records the
/// final counts and ends: an exporter then shows exactly what
/// `metrics()` says after shutdown.
///
/// Dropping it stops the task and records once more, so the values the
/// exporter keeps are those of the moment it stopped; this also catches
/// counts that change after the pipeline ended (the last stage's
/// `dropped` grows if an output still holding items is dropped later).
///
/// The task holds a copy of the pipeline, to take its snapshots: while it
/// runs, dropping your own copies does not drain the pipeline in the
/// background. Shut the pipeline down with `shutdown().await` (the
/// recording then ends by itself), or drop the `Recording` first.
///
/// The idea is Erlang's `telemetry_poller`: measure at an interval what
/// the system already keeps, rather than emit an event per item (as
/// Broadway's telemetry events do).
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
#[must_use = "the recording stops when dropped"]
pub struct Recording {
    source: Arc<dyn Source>,
    /// The recording task, until [`until_ended`](Self::until_ended) saw it end.
    task: Option<JoinHandle<()>>,
}

impl Recording {
    /// Records `pipeline`'s metrics under the label `pipeline = name` now
    /// and then every `period` (a missed period is not made up for), on a
    /// task of the current Tokio runtime, until the pipeline has ended.
    ///
    /// # Panics
    ///
    /// If `period` is zero, or if called outside a Tokio runtime.
    #[track_caller]
    pub fn start<P: Pipeline>(pipeline: &P, name: impl Into<String>, period: Duration) -> Recording {
        assert!(!period.is_zero(), "Recording::start: the period must be more than zero");
        let shared = Arc::new(Shared { pipeline: pipeline.clone(), name: name.into(), stopped: Mutex::new(false) });
        let task = tokio::spawn(record_until_ended(shared.clone(), period));
        Recording { source: shared, task: Some(task) }
    }

    /// Waits until the recording ended by itself: the pipeline ended and
    /// its final counts were recorded. Returns at once if it already had.
    ///
    /// This waits as long as the pipeline runs: call `shutdown().await` on
    /// it, or wrap this in a timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves the recording running.
    pub async fn until_ended(&mut self) {
        if let Some(task) = &mut self.task {
            // An error is the runtime shutting down: the task ended too.
            let _ = task.await;
            self.task = None;
        }
    }

    /// Whether the recording ended: the pipeline ended and its final counts
    /// were recorded (or the runtime shut the task down).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.source.record(Record::Last);
    }
}

impl fmt::Debug for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recording").field("finished", &self.is_finished()).finish_non_exhaustive()
    }
}

/// What a [`Recording`] and its task share.
struct Shared<P> {
    pipeline: P,
    name: String,
    /// Whether the `Recording` was dropped: the task records no more. A
    /// record holds the lock, so the last one is the one made at the drop.
    stopped: Mutex<bool>,
}

/// A record made by the task, or the last one, made by the `Recording`'s drop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Record {
    Periodic,
    Last,
}

/// What a record found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    /// The pipeline still runs.
    Running,
    /// Every replica of the pipeline has stopped.
    Ended,
    /// The `Recording` was dropped: nothing was recorded.
    Stopped,
}

/// [`Shared`] whatever the pipeline's type.
trait Source: Send + Sync {
    fn record(&self, record: Record) -> Found;
}

impl<P: Pipeline> Source for Shared<P> {
    fn record(&self, record: Record) -> Found {
        let mut stopped = self.stopped.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *stopped {
            return Found::Stopped;
        }
        *stopped = record == Record::Last;
        let metrics = self.pipeline.metrics();
        metrics.record(&self.name);
        if metrics.ended() { Found::Ended } else { Found::Running }
    }
}

/// The recording task: a record every `period` until the pipeline ended,
/// then the final one.
async fn record_until_ended<P: Pipeline>(shared: Arc<Shared<P>>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match shared.record(Record::Periodic) {
            Found::Running => {}
            Found::Ended => break,
            Found::Stopped => return,
        }
    }
    // Every replica has stopped, so the input is closed and `shutdown` only
    // waits for the tasks to be gone: after an `abort`, a task's last counts
    // are published as it is dropped.
    shared.pipeline.shutdown().await;
    shared.record(Record::Periodic);
}
