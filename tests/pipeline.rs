//! Integration tests of `#[pipeline]`: wiring, order, backpressure,
//! shutdown, failures and metrics.

use std::{
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{SinkExt, StreamExt, stream};
use genflow::{Emitter, GenServer, SendError, Stage, pipeline::BATCH};
use tokio::sync::Semaphore;

/// Settings shared by the test and every stage.
struct Cfg {
    /// Items equal to this value make `Double` panic.
    poison: Option<u64>,
    /// `Gate` takes one permit per item.
    gate: Semaphore,
    /// How many items `Gate` has started on.
    gate_started: AtomicU64,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg { poison: None, gate: Semaphore::new(0), gate_started: AtomicU64::new(0) }
    }
}

fn cfg() -> Arc<Cfg> {
    Arc::new(Cfg::default())
}

/// A stage with the usual boilerplate: no calls but `Get`.
macro_rules! stage {
    ($name:ident<$q:ident>, $registry:ty, $state:ty, $init:expr) => {
        impl<const $q: usize> GenServer for $name<$q> {
            type Message = Msg;
            type Response = u64;
            type Registry = $registry;

            fn new(registry: $registry) -> Self {
                $name { registry, state: $init }
            }

            async fn handle_call(&mut self, message: Msg) -> u64 {
                match message {
                    Msg::Get => self.state,
                    Msg::Panic => panic!("asked to panic"),
                }
            }

            async fn handle_cast(&mut self, _: Msg) {}

            fn channel_queue_size() -> usize {
                $q
            }
        }
    };
}

#[derive(Clone, Debug, PartialEq)]
enum Msg {
    Get,
    Panic,
}

/// `x -> 2x`; panics on `cfg.poison`. State: items seen.
struct Double<const Q: usize> {
    registry: Flow,
    state: u64,
}
stage!(Double<Q>, Flow, u64, 0);

impl<const Q: usize> Stage for Double<Q> {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        self.state += 1;
        if self.registry.cfg.poison == Some(item) {
            panic!("poison item {item}");
        }
        out.emit(item * 2).await;
    }
}

/// Emits `x % 3` copies of `x`: 0, 1 or 2 items per input. State: sum in.
struct Fanout<const Q: usize> {
    #[allow(dead_code)]
    registry: Flow,
    state: u64,
}
stage!(Fanout<Q>, Flow, u64, 0);

impl<const Q: usize> Stage for Fanout<Q> {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        self.state += item;
        for _ in 0..item % 3 {
            out.emit(item).await;
        }
    }
}

/// Passes items on; state: running sum.
struct Total<const Q: usize> {
    #[allow(dead_code)]
    registry: Flow,
    state: u64,
}
stage!(Total<Q>, Flow, u64, 0);

impl<const Q: usize> Stage for Total<Q> {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        self.state += item;
        out.emit(item).await;
    }
}

#[genflow::pipeline{ double: Double<1000>, fanout: Fanout<1000>, total: Total<1000> }]
struct Flow {
    cfg: Arc<Cfg>,
}

/// Waits (with a deadline) until `pred` holds.
async fn eventually(mut pred: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !pred() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("condition not reached in time");
}

fn expected_fanout(inputs: impl Iterator<Item = u64>) -> Vec<u64> {
    inputs.map(|x| x * 2).flat_map(|y| std::iter::repeat_n(y, (y % 3) as usize)).collect()
}

#[tokio::test]
async fn order_is_preserved_end_to_end() {
    let flow = Flow::start(cfg()).await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    assert_eq!(flow.feed(tokio_stream::iter(0..20_000)).await.unwrap(), 20_000);
    flow.shutdown().await;
    assert_eq!(output.await.unwrap(), expected_fanout(0..20_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_preserved_on_a_multi_thread_runtime() {
    let flow = Flow::start(cfg()).await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    for x in 0..20_000 {
        flow.send(x).await.unwrap();
    }
    flow.shutdown().await;
    assert_eq!(output.await.unwrap(), expected_fanout(0..20_000));
}

#[tokio::test]
async fn output_is_given_once() {
    let flow = Flow::start(cfg()).await;
    assert!(flow.output().is_some());
    assert!(flow.output().is_none());
    flow.shutdown().await;
}

#[tokio::test]
async fn calls_reach_each_stage_state_while_items_flow() {
    let flow = Flow::start(cfg()).await;
    let mut output = flow.output().unwrap();
    for x in 1..=100 {
        flow.send(x).await.unwrap();
    }
    // Read until the 100th input came through `total`, then ask each stage.
    let expected = expected_fanout(1..=100);
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        seen.push(output.next().await.unwrap());
    }
    assert_eq!(flow.call_double(Msg::Get).await.unwrap(), 100);
    assert_eq!(flow.call_fanout(Msg::Get).await.unwrap(), (1..=100).map(|x| x * 2).sum::<u64>());
    assert_eq!(flow.call_total(Msg::Get).await.unwrap(), expected.iter().sum::<u64>());
    // Calls are served between items, while more keep coming.
    let drain = tokio::spawn(output.count());
    let feeding = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(101..=5_000)).await }
    });
    let mut last = 100;
    while last < 5_000 {
        let now = flow.call_double(Msg::Get).await.unwrap();
        assert!(now >= last);
        last = now;
    }
    assert_eq!(feeding.await.unwrap().unwrap(), 4_900);
    flow.shutdown().await;
    assert_eq!(drain.await.unwrap(), expected_fanout(101..=5_000).len());
    assert_eq!(flow.call_double(Msg::Get).await.unwrap_err().into_message(), Some(Msg::Get));
}

#[tokio::test]
async fn sinks_feed_the_head_and_any_stage() {
    let flow = Flow::start(cfg()).await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let mut head = flow.sink();
    head.send_all(&mut stream::iter((0..1_000).map(Ok))).await.unwrap();
    head.close().await.unwrap();
    // Closing one sink closes nothing else: a clone and `send` still work.
    let mut other = flow.sink().clone();
    other.send(1_000).await.unwrap();
    // `sink_total` skips `double` and `fanout`.
    let mut tail = flow.sink_total();
    tail.send_all(&mut stream::iter([7, 8, 9].map(Ok))).await.unwrap();
    flow.shutdown().await;
    let out = output.await.unwrap();
    let mut from_head = expected_fanout(0..=1_000);
    from_head.extend([7, 8, 9]);
    let (mut got, mut want) = (out.clone(), from_head);
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    // After shutdown the sinks fail and hand the item back.
    let err = flow.sink().send(5).await.unwrap_err();
    assert!(matches!(err, SendError::Closed(5)), "{err:?}");
}

#[tokio::test]
async fn feed_counts_items_and_send_fails_after_shutdown() {
    let flow = Flow::start(cfg()).await;
    assert_eq!(flow.feed(tokio_stream::iter(Vec::<u64>::new())).await.unwrap(), 0);
    assert_eq!(flow.feed(tokio_stream::iter(0..500)).await.unwrap(), 500);
    flow.shutdown().await;
    // Output was never taken: the last stage's items were dropped, counted.
    let total = flow.metrics().stage("total").unwrap();
    assert_eq!(total.emitted, expected_fanout(0..500).len() as u64);
    assert_eq!(total.dropped, total.emitted);
    assert!(matches!(flow.send(1).await, Err(SendError::Closed(1))));
    assert!(matches!(flow.try_send(2), Err(SendError::Closed(2))));
    let err = flow.feed(tokio_stream::iter([3, 4])).await.unwrap_err();
    assert!(matches!(err, SendError::Closed(3)), "{err:?}");
}

/// `x -> x`, one permit of `cfg.gate` per item.
struct Gate<const Q: usize> {
    registry: Small,
    state: u64,
}

impl<const Q: usize> GenServer for Gate<Q> {
    type Message = Msg;
    type Response = u64;
    type Registry = Small;

    fn new(registry: Small) -> Self {
        Gate { registry, state: 0 }
    }

    async fn handle_call(&mut self, message: Msg) -> u64 {
        match message {
            Msg::Get => self.state,
            Msg::Panic => panic!("asked to panic"),
        }
    }

    async fn handle_cast(&mut self, _: Msg) {}

    fn channel_queue_size() -> usize {
        Q
    }
}

impl<const Q: usize> Stage for Gate<Q> {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        self.registry.cfg.gate_started.fetch_add(1, Ordering::SeqCst);
        self.registry.cfg.gate.acquire().await.unwrap().forget();
        self.state += 1;
        out.emit(item).await;
    }
}

/// `x -> x` with a small queue.
struct Pass<const Q: usize>;

impl<const Q: usize> GenServer for Pass<Q> {
    type Message = ();
    type Response = ();
    type Registry = Small;

    fn new(_: Small) -> Self {
        Pass
    }

    async fn handle_call(&mut self, _: ()) {}

    async fn handle_cast(&mut self, _: ()) {}

    fn channel_queue_size() -> usize {
        Q
    }
}

impl<const Q: usize> Stage for Pass<Q> {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        out.emit(item).await;
    }
}

const HEAD_Q: usize = 8;
const TAIL_Q: usize = 4;

#[genflow::pipeline{ head: Pass<HEAD_Q>, tail: Gate<TAIL_Q> }]
struct Small {
    cfg: Arc<Cfg>,
}

#[tokio::test]
async fn a_call_is_served_between_the_items_of_a_batch() {
    let cfg = cfg();
    let flow = Small::start(cfg.clone()).await;
    let drain = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    flow.send(0).await.unwrap();
    eventually(|| cfg.gate_started.load(Ordering::SeqCst) == 1).await;
    // Items 1 to 4 wait in the tail's queue while item 0 is stuck; once it
    // is done, the tail takes them as one batch.
    for x in 1..=4 {
        flow.send(x).await.unwrap();
    }
    eventually(|| flow.metrics().stage("tail").unwrap().queued == 4).await;
    cfg.gate.add_permits(1);
    eventually(|| cfg.gate_started.load(Ordering::SeqCst) == 2).await;
    // Item 1 is in progress, 2 to 4 wait behind it in the same batch. A call
    // made now is answered as soon as item 1 is done.
    let mut call = pin!(flow.call_tail(Msg::Get));
    assert!(futures::poll!(call.as_mut()).is_pending());
    cfg.gate.add_permits(1);
    let seen = tokio::time::timeout(Duration::from_secs(10), call).await.expect("served before the batch ended");
    assert_eq!(seen.unwrap(), 2, "answered after item 1, before item 2");
    // The metrics were published before the call was served: 5 items taken,
    // 2 done, 3 in progress.
    let tail = flow.metrics().stage("tail").unwrap();
    assert_eq!((tail.received, tail.processed), (5, 2));
    cfg.gate.add_permits(3);
    flow.shutdown().await;
    assert_eq!(drain.await.unwrap(), [0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_call_that_panics_mid_batch_hands_the_rest_of_the_batch_to_the_fresh_state() {
    let cfg = cfg();
    let flow = Small::start(cfg.clone()).await;
    let drain = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    flow.send(0).await.unwrap();
    eventually(|| cfg.gate_started.load(Ordering::SeqCst) == 1).await;
    for x in 1..=4 {
        flow.send(x).await.unwrap();
    }
    eventually(|| flow.metrics().stage("tail").unwrap().queued == 4).await;
    cfg.gate.add_permits(1);
    eventually(|| cfg.gate_started.load(Ordering::SeqCst) == 2).await;
    let mut call = pin!(flow.call_tail(Msg::Panic));
    assert!(futures::poll!(call.as_mut()).is_pending());
    cfg.gate.add_permits(4);
    assert!(matches!(call.await, Err(genflow::CallError::Panicked)));
    flow.shutdown().await;
    // Items 2 to 4 were processed by the restarted stage: none lost.
    assert_eq!(drain.await.unwrap(), [0, 1, 2, 3, 4]);
    let tail = flow.metrics().stage("tail").unwrap();
    assert_eq!((tail.received, tail.emitted, tail.failed), (5, 5, 0));
}

#[tokio::test]
async fn backpressure_blocks_an_endless_feed_with_bounded_memory() {
    let cfg = cfg();
    let small = Small::start(cfg.clone()).await;
    let mut output = small.output().unwrap();
    let feed = tokio::spawn({
        let small = small.clone();
        async move { small.feed(stream::iter(0u64..)).await }
    });
    // Run until the tail is stuck on its gate and every queue is full.
    eventually(|| {
        let m = small.metrics();
        m.stage("head").unwrap().queued == HEAD_Q as u64 && m.stage("tail").unwrap().queued == TAIL_Q as u64
    })
    .await;
    let before = small.metrics();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let m = small.metrics();
    assert!(!feed.is_finished(), "an endless feed stays blocked");
    assert_eq!(m.stage("head").unwrap().received, before.stage("head").unwrap().received, "{m}");
    let head = m.stage("head").unwrap();
    let tail = m.stage("tail").unwrap();
    // Beyond the queues, the head's emitter holds at most one batch and the
    // tail at most one batch it took from its queue.
    assert!(head.received <= (TAIL_Q + 2 * BATCH) as u64, "{m}");
    assert!(tail.received <= BATCH as u64, "{m}");
    assert_eq!(head.received, head.emitted);
    // The tail started one item and waits on the gate.
    assert_eq!(cfg.gate_started.load(Ordering::SeqCst), 1);
    assert_eq!(tail.emitted, 0);
    // `try_send` refuses when the head's queue is full, and hands the item back.
    assert!(matches!(small.try_send(99), Err(SendError::Full(99))));
    // Open the gate: items flow to the output, in order.
    cfg.gate.add_permits(1_000_000);
    for expected in 0..10_000u64 {
        assert_eq!(output.next().await, Some(expected));
    }
    feed.abort();
    // Nobody reads on: dropping the output lets the shutdown drain.
    drop(output);
    small.shutdown().await;
    let tail = small.metrics().stage("tail").unwrap();
    assert_eq!(tail.received, tail.emitted);
    assert_eq!(tail.emitted, 10_000 + tail.dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_feed_loses_nothing() {
    let flow = Flow::start(cfg()).await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let feeding = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(0u64..)).await }
    });
    eventually(|| flow.metrics().stage("total").unwrap().received > 10_000).await;
    flow.shutdown().await;
    let err = feeding.await.unwrap().unwrap_err();
    let SendError::Closed(first_refused) = err else { panic!("{err:?}") };
    let out = output.await.unwrap();
    let m = flow.metrics();
    let double = m.stage("double").unwrap();
    let fanout = m.stage("fanout").unwrap();
    let total = m.stage("total").unwrap();
    // Everything the head accepted came out, in order, and nothing else.
    assert_eq!(double.received, first_refused, "{m}");
    assert_eq!(out, expected_fanout(0..first_refused));
    assert_eq!(double.received, double.emitted + double.failed);
    assert_eq!(fanout.received, double.emitted);
    assert_eq!(total.received, fanout.emitted);
    assert_eq!(total.received, total.emitted);
    assert_eq!(total.emitted, out.len() as u64);
    assert_eq!(total.dropped, 0);
}

#[tokio::test]
async fn poison_items_fail_alone_and_are_counted() {
    let cfg = Arc::new(Cfg { poison: Some(7), ..Cfg::default() });
    let flow = Flow::start(cfg).await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    for x in [7, 1, 7, 2, 7, 3] {
        flow.send(x).await.unwrap();
    }
    flow.shutdown().await;
    assert_eq!(output.await.unwrap(), expected_fanout([1, 2, 3].into_iter()));
    let double = flow.metrics().stage("double").unwrap();
    assert_eq!((double.received, double.emitted, double.failed), (6, 3, 3));
}

#[tokio::test]
async fn the_stage_keeps_its_state_after_a_poison_item() {
    let cfg = Arc::new(Cfg { poison: Some(0), ..Cfg::default() });
    let flow = Flow::start(cfg).await;
    for x in [1, 2, 0, 3] {
        flow.send(x).await.unwrap();
    }
    // `double` counts every item it started, the poison one included.
    eventually(|| flow.metrics().stage("double").unwrap().received == 4).await;
    assert_eq!(flow.call_double(Msg::Get).await.unwrap(), 4);
    flow.shutdown().await;
}

#[tokio::test]
async fn a_panicking_call_restarts_the_stage_and_items_keep_flowing() {
    let flow = Flow::start(cfg()).await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    flow.feed(stream::iter(0..100)).await.unwrap();
    eventually(|| flow.metrics().stage("double").unwrap().received == 100).await;
    assert!(matches!(flow.call_double(Msg::Panic).await, Err(genflow::CallError::Panicked)));
    // Fresh state after the restart.
    assert_eq!(flow.call_double(Msg::Get).await.unwrap(), 0);
    flow.feed(stream::iter(100..200)).await.unwrap();
    flow.shutdown().await;
    assert_eq!(output.await.unwrap(), expected_fanout(0..200));
}

#[tokio::test]
async fn metrics_add_up_and_name_the_bottleneck() {
    let flow = Flow::start(cfg()).await;
    let output = tokio::spawn(flow.output().unwrap().count());
    flow.feed(stream::iter(0..3_000)).await.unwrap();
    flow.shutdown().await;
    let out = output.await.unwrap() as u64;
    let m = flow.metrics();
    let stages: Vec<_> = m.stages().iter().map(|s| s.name).collect();
    assert_eq!(stages, ["double", "fanout", "total"]);
    let double = m.stage("double").unwrap();
    let fanout = m.stage("fanout").unwrap();
    let total = m.stage("total").unwrap();
    assert_eq!(double.received, 3_000);
    assert_eq!(double.emitted, 3_000);
    assert_eq!(fanout.received, 3_000);
    assert_eq!(fanout.emitted, expected_fanout(0..3_000).len() as u64);
    assert_eq!(total.emitted, out);
    assert_eq!(double.queued + fanout.queued + total.queued, 0);
    for stage in [&double, &fanout, &total] {
        assert_eq!(stage.processed, stage.received, "{} is idle", stage.name);
    }
    assert_eq!(double.capacity, 1_000);
    assert!(m.stage("nope").is_none());
    // The bottleneck is the busiest stage if it was busy more than half the
    // time; otherwise the table says what else limits the pipeline.
    let busiest = m.stages().iter().max_by(|a, b| a.utilization(m.elapsed()).total_cmp(&b.utilization(m.elapsed())));
    let busiest = busiest.unwrap();
    let table = m.to_string();
    if busiest.utilization(m.elapsed()) > 0.5 {
        assert_eq!(m.bottleneck(), Some(busiest.name), "{table}");
        assert_eq!(m.limit(), genflow::Limit::Bottleneck(busiest.name), "{table}");
    } else {
        assert_eq!(m.bottleneck(), None, "{table}");
        let verdict = match m.limit() {
            genflow::Limit::OutputReader(_) => "the reader of `output()` is the limit",
            genflow::Limit::Cpu { .. } => "the machine's CPU",
            genflow::Limit::Input => "the input is the limit",
            other => panic!("unexpected limit {other:?}: {table}"),
        };
        assert!(table.contains(verdict), "{table}");
    }
    for name in ["double", "fanout", "total", "bottleneck:"] {
        assert!(table.contains(name), "{table}");
    }
    // Still readable, and unchanged, after shutdown.
    assert_eq!(flow.metrics().stage("total").unwrap().emitted, out);
}

#[tokio::test]
async fn nothing_blocks_when_the_output_is_not_taken_or_dropped() {
    let flow = Flow::start(cfg()).await;
    // Far more than the queues hold: with nobody reading, items are dropped.
    flow.feed(stream::iter(0..10_000)).await.unwrap();
    let output = flow.output().unwrap();
    drop(output);
    flow.feed(stream::iter(0..10_000)).await.unwrap();
    flow.shutdown().await;
    let total = flow.metrics().stage("total").unwrap();
    assert_eq!(total.received, 2 * expected_fanout(0..10_000).len() as u64);
    assert_eq!(total.dropped, total.emitted);
}

#[tokio::test]
async fn dropping_the_last_handle_drains_in_the_background() {
    let flow = Flow::start(cfg()).await;
    let output = flow.output().unwrap();
    flow.feed(stream::iter(0..200)).await.unwrap();
    drop(flow);
    // The output ends once everything sent went through.
    let out: Vec<u64> = tokio::time::timeout(Duration::from_secs(20), output.collect()).await.unwrap();
    assert_eq!(out, expected_fanout(0..200));
}

#[tokio::test]
async fn abort_ends_the_output_and_fails_senders() {
    let cfg = cfg();
    let small = Small::start(cfg.clone()).await;
    let output = small.output().unwrap();
    small.feed(stream::iter(0..3)).await.unwrap();
    eventually(|| cfg.gate_started.load(Ordering::SeqCst) == 1).await;
    small.abort();
    let out: Vec<u64> = tokio::time::timeout(Duration::from_secs(20), output.collect()).await.unwrap();
    assert!(out.is_empty());
    assert!(matches!(small.send(1).await, Err(SendError::Closed(1))));
}

/// Groups items in batches of `BATCH_OF`; the last, shorter batch is emitted
/// by `finish`.
struct Batcher {
    batch: Vec<u64>,
}

const BATCH_OF: usize = 100;

/// Counts the items in the batches it gets; emits the count at the end.
struct Counter {
    items: u64,
}

macro_rules! plain_stage {
    ($ty:ident, $new:expr) => {
        impl GenServer for $ty {
            type Message = ();
            type Response = ();
            type Registry = Batches;
            fn new(_: Batches) -> Self {
                $new
            }
            async fn handle_call(&mut self, _: ()) {}
            async fn handle_cast(&mut self, _: ()) {}
        }
    };
}
plain_stage!(Batcher, Batcher { batch: Vec::new() });
plain_stage!(Counter, Counter { items: 0 });

impl Stage for Batcher {
    type In = u64;
    type Out = Vec<u64>;
    async fn process(&mut self, item: u64, out: &mut Emitter<Vec<u64>>) {
        self.batch.push(item);
        if self.batch.len() == BATCH_OF {
            out.emit(std::mem::take(&mut self.batch)).await;
        }
    }
    async fn finish(&mut self, out: &mut Emitter<Vec<u64>>) {
        if !self.batch.is_empty() {
            out.emit(std::mem::take(&mut self.batch)).await;
        }
    }
}

impl Stage for Counter {
    type In = Vec<u64>;
    type Out = u64;
    async fn process(&mut self, batch: Vec<u64>, _: &mut Emitter<u64>) {
        self.items += batch.len() as u64;
    }
    async fn finish(&mut self, out: &mut Emitter<u64>) {
        out.emit(self.items).await;
    }
}

#[genflow::pipeline{ batcher: Batcher, counter: Counter }]
struct Batches;

#[tokio::test]
async fn finish_emits_at_the_end_of_the_input_and_feeds_the_next_stage() {
    let batches = Batches::start().await;
    let output = tokio::spawn(batches.output().unwrap().collect::<Vec<u64>>());
    batches.feed(stream::iter(0..1_234)).await.unwrap();
    batches.shutdown().await;
    // The batcher's last 34 items reached the counter before its own end.
    assert_eq!(output.await.unwrap(), [1_234]);
    let batcher = batches.metrics().stage("batcher").unwrap();
    assert_eq!((batcher.received, batcher.emitted), (1_234, 13));
}
