//! Integration tests of what bounds memory: the outputs an `ordered` stage
//! holds whatever its fan-out, and queue sizes that are limits, not
//! allocations (up to `usize::MAX`).

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use futures::{StreamExt, stream};
use genflow::{Emitter, GenServer, Stage, pipeline::BATCH};
use tokio::sync::Semaphore;

// --- live items ------------------------------------------------------------------

/// How many [`Counted`] items are alive, and the most that ever were.
#[derive(Default)]
struct Live {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// An output item that counts itself in its [`Live`] while it exists.
struct Counted {
    input: u64,
    index: u64,
    live: Arc<Live>,
}

impl Counted {
    fn new(input: u64, index: u64, live: &Arc<Live>) -> Self {
        let now = live.now.fetch_add(1, Ordering::SeqCst) + 1;
        live.peak.fetch_max(now, Ordering::SeqCst);
        Counted { input, index, live: live.clone() }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Inputs, outputs per input, outputs per replica's `finish`.
const INPUTS: u64 = 64;
const FAN_OUT: u64 = 1_250;
const FINISH: u64 = 2_000;
/// The stage's queue size, so also the size of the output queue after it.
const QUEUE: usize = 16;
const REPLICAS: usize = 4;

/// What an ordered or unordered fan-out stage may hold at once besides its
/// next queue: a batch being emitted per replica, and the batch the output
/// stream took out of its queue (the one item being checked is in it).
const HELD: usize = QUEUE + (REPLICAS + 1) * BATCH;

/// Emits `FAN_OUT` counted items per input, yielding now and then, and
/// `FINISH` more (input `u64::MAX`) when its input ends.
macro_rules! fan_out_stage {
    ($stage:ident, $pipeline:ident) => {
        struct $stage {
            registry: $pipeline,
            seen: u64,
        }

        impl GenServer for $stage {
            type Message = ();
            type Response = ();
            type Registry = $pipeline;

            fn new(registry: $pipeline) -> Self {
                $stage { registry, seen: 0 }
            }

            async fn handle_call(&mut self, _: ()) {}

            async fn handle_cast(&mut self, _: ()) {}

            fn channel_queue_size() -> usize {
                QUEUE
            }
        }

        impl Stage for $stage {
            type In = u64;
            type Out = Counted;

            async fn process(&mut self, input: u64, out: &mut Emitter<Counted>) {
                self.seen += 1;
                for index in 0..FAN_OUT {
                    if index % 500 == 0 {
                        tokio::task::yield_now().await;
                    }
                    out.emit(Counted::new(input, index, &self.registry.live)).await;
                }
            }

            async fn finish(&mut self, out: &mut Emitter<Counted>) {
                if self.seen == 0 {
                    return;
                }
                for index in 0..FINISH {
                    out.emit(Counted::new(u64::MAX, index, &self.registry.live)).await;
                }
            }
        }
    };
}

fan_out_stage!(OrderedFan, OrderedFans);
fan_out_stage!(Fan, Fans);

#[genflow::pipeline{ #[replicas(4, ordered)] fan: OrderedFan }]
struct OrderedFans {
    live: Arc<Live>,
}

#[genflow::pipeline{ #[replicas(4)] fan: Fan }]
struct Fans {
    live: Arc<Live>,
}

/// Reads `output` slowly (yielding after every item), checking each item
/// against `check`; returns what was read, as `(input, index)`.
async fn read_slowly(
    output: genflow::Output<Counted>,
    live: Arc<Live>,
    mut check: impl FnMut(u64, &Counted) + Send + 'static,
) -> Vec<(u64, u64)> {
    let mut output = std::pin::pin!(output);
    let mut got = Vec::new();
    while let Some(item) = output.next().await {
        assert!(live.now.load(Ordering::SeqCst) <= HELD, "{} items alive", live.now.load(Ordering::SeqCst));
        check(got.len() as u64, &item);
        got.push((item.input, item.index));
        drop(item);
        tokio::task::yield_now().await;
    }
    got
}

/// Every replica ran `finish` after at least one input (the finish outputs
/// are counted per replica that saw input).
fn expected_in_order(finishers: u64) -> Vec<(u64, u64)> {
    let inputs = (0..INPUTS).flat_map(|input| (0..FAN_OUT).map(move |index| (input, index)));
    let finish = (0..finishers).flat_map(|_| (0..FINISH).map(|index| (u64::MAX, index)));
    inputs.chain(finish).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_stage_holds_a_bounded_number_of_outputs_whatever_its_fan_out() {
    let live = Arc::new(Live::default());
    let pipeline = OrderedFans::start(live.clone()).await;
    let reader = tokio::spawn(read_slowly(pipeline.output().unwrap(), live.clone(), |_, _| {}));
    pipeline.feed(stream::iter(0..INPUTS)).await.unwrap();
    pipeline.shutdown().await;
    let got = reader.await.unwrap();
    let finishers = pipeline.metrics().stage("fan").unwrap().replicas.iter().filter(|r| r.received > 0).count();
    // Exactly in input order, `finish` outputs after every input's.
    assert_eq!(got, expected_in_order(finishers as u64));
    let peak = live.peak.load(Ordering::SeqCst);
    assert!(peak <= HELD, "peak of {peak} live items, more than {HELD}");
    assert_eq!(live.now.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unordered_stage_holds_as_few() {
    let live = Arc::new(Live::default());
    let pipeline = Fans::start(live.clone()).await;
    let reader = tokio::spawn(read_slowly(pipeline.output().unwrap(), live.clone(), |_, _| {}));
    pipeline.feed(stream::iter(0..INPUTS)).await.unwrap();
    pipeline.shutdown().await;
    let mut got = reader.await.unwrap();
    let finishers = pipeline.metrics().stage("fan").unwrap().replicas.iter().filter(|r| r.received > 0).count();
    got.sort_unstable();
    let mut expected = expected_in_order(finishers as u64);
    expected.sort_unstable();
    assert_eq!(got, expected);
    let peak = live.peak.load(Ordering::SeqCst);
    assert!(peak <= HELD, "peak of {peak} live items, more than {HELD}");
    assert_eq!(live.now.load(Ordering::SeqCst), 0);
}

// --- huge queue sizes -------------------------------------------------------------

/// What a bound above it is clamped to.
const MAX: usize = Semaphore::MAX_PERMITS;

/// A server and a pass-through stage whose queues have room for `$size`
/// items. (The registry and pipeline are declared outside the macro.)
macro_rules! huge {
    ($server:ident, $registry:ident, $stage:ident, $pipeline:ident, $size:expr) => {
        struct $server {
            sum: u64,
        }

        impl GenServer for $server {
            type Message = u64;
            type Response = u64;
            type Registry = $registry;

            fn new(_: $registry) -> Self {
                $server { sum: 0 }
            }

            async fn handle_call(&mut self, n: u64) -> u64 {
                self.sum += n;
                self.sum
            }

            async fn handle_cast(&mut self, n: u64) {
                self.sum += n;
            }

            fn channel_queue_size() -> usize {
                $size
            }
        }

        struct $stage {
            registry: $pipeline,
        }

        impl GenServer for $stage {
            type Message = ();
            type Response = u64;
            type Registry = $pipeline;

            fn new(registry: $pipeline) -> Self {
                $stage { registry }
            }

            async fn handle_call(&mut self, _: ()) -> u64 {
                self.registry.seen.load(Ordering::SeqCst)
            }

            async fn handle_cast(&mut self, _: ()) {}

            fn channel_queue_size() -> usize {
                $size
            }
        }

        impl Stage for $stage {
            type In = u64;
            type Out = u64;

            async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
                self.registry.seen.fetch_add(1, Ordering::SeqCst);
                out.emit(n).await;
            }
        }
    };
}

fn identity(n: &u64) -> u64 {
    *n
}

huge!(MaxServer, MaxApp, MaxStage, MaxFlow, usize::MAX);
huge!(TeraServer, TeraApp, TeraStage, TeraFlow, 1 << 40);

#[genflow::make_registry{ server: MaxServer }]
struct MaxApp;

#[genflow::make_registry{ server: TeraServer }]
struct TeraApp;

#[genflow::pipeline{
    plain: MaxStage,
    #[replicas(3)] shared: MaxStage,
    #[replicas(3, partition_by = identity)] keyed: MaxStage,
    #[replicas(2, ordered)] ordered: MaxStage,
}]
struct MaxFlow {
    seen: Arc<AtomicU64>,
}

#[genflow::pipeline{
    plain: TeraStage,
    #[replicas(3)] shared: TeraStage,
    #[replicas(3, partition_by = identity)] keyed: TeraStage,
    #[replicas(2, ordered)] ordered: TeraStage,
}]
struct TeraFlow {
    seen: Arc<AtomicU64>,
}

#[tokio::test]
async fn a_registry_with_usize_max_queues_starts_works_and_shuts_down() {
    let app = MaxApp::start().await;
    app.cast_server(2).await.unwrap();
    app.try_cast_server(3).unwrap();
    assert_eq!(app.call_server(5).await.unwrap(), 10);
    app.shutdown().await;
}

#[tokio::test]
async fn a_registry_with_queues_of_2_to_the_40_starts_works_and_shuts_down() {
    let app = TeraApp::start().await;
    app.cast_server(2).await.unwrap();
    assert_eq!(app.call_server(5).await.unwrap(), 7);
    app.shutdown().await;
}

/// Feeds 1..=1000 through a pipeline of four huge stages (one plain, one
/// replicated, one partitioned, one ordered) and checks what comes out and
/// the capacities the metrics report.
macro_rules! run_huge_pipeline {
    ($pipeline:ident, $size:expr) => {{
        let seen = Arc::new(AtomicU64::new(0));
        let pipeline = $pipeline::start(seen.clone()).await;
        let output = tokio::spawn(pipeline.output().unwrap().collect::<Vec<u64>>());
        assert_eq!(pipeline.feed(stream::iter(1..=1_000u64)).await.unwrap(), 1_000);
        pipeline.send(1_001).await.unwrap();
        assert_eq!(pipeline.call_plain_all(()).await.unwrap().len(), 1);
        let metrics = pipeline.metrics();
        let one = $size.min(MAX) as u64;
        let capacities: Vec<u64> = metrics.stages().iter().map(|s| s.capacity).collect();
        // The partitioned stage has one queue per replica.
        assert_eq!(capacities, [one, one, one.saturating_mul(3), one], "{metrics}");
        pipeline.shutdown().await;
        let mut got = output.await.unwrap();
        got.sort_unstable();
        assert_eq!(got, (1..=1_001).collect::<Vec<u64>>());
        assert_eq!(seen.load(Ordering::SeqCst), 4 * 1_001);
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_with_usize_max_queues_starts_works_and_shuts_down() {
    run_huge_pipeline!(MaxFlow, usize::MAX);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_with_queues_of_2_to_the_40_starts_works_and_shuts_down() {
    run_huge_pipeline!(TeraFlow, 1usize << 40);
}
