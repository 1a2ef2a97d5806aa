//! `flush()`: it returns once every item accepted before it has gone through
//! (emitted by the tail, failed or dropped), without shutting anything down,
//! whatever the shape of the pipeline; it does not wait for items sent
//! meanwhile, and it fails on a pipeline that is shut down or aborted.

use std::{
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, SinkExt, StreamExt, stream};
use genflow::{Emitter, FlushError, GenServer, Pipeline, Stage};
use tokio::sync::Semaphore;

/// The guard against a hang: no test comes near it when it passes.
const DEADLINE: Duration = Duration::from_secs(60);

/// Items this large are background traffic; the tail counts them apart.
const BIG: u64 = 1 << 40;

/// An item that makes `Fan` panic.
const POISON: u64 = 13;

/// Emits `x % 3` copies of `x` (0, 1 or 2); panics on [`POISON`].
struct Fan<R>(PhantomData<R>);

/// Sums what it gets and passes it on.
#[derive(Default)]
struct Sum<R> {
    totals: Totals,
    _registry: PhantomData<R>,
}

/// What a [`Sum`] replica saw: small items (below [`BIG`]) and big ones.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    count: u64,
    sum: u64,
    big: u64,
}

/// Sleeps 1 ms per item, then passes it on.
struct Slow<R>(PhantomData<R>);

impl<R: Clone + Send + Sync + 'static> GenServer for Fan<R> {
    type Message = ();
    type Response = ();
    type Registry = R;
    fn new(_: R) -> Self {
        Fan(PhantomData)
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
    fn channel_queue_size() -> usize {
        8
    }
}

impl<R: Clone + Send + Sync + 'static> Stage for Fan<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        assert_ne!(x, POISON, "poison item");
        for _ in 0..x % 3 {
            out.emit(x).await;
        }
    }
}

impl<R: Clone + Send + Sync + 'static> GenServer for Sum<R> {
    type Message = ();
    type Response = Totals;
    type Registry = R;
    fn new(_: R) -> Self {
        Sum { totals: Totals::default(), _registry: PhantomData }
    }
    async fn handle_call(&mut self, _: ()) -> Totals {
        self.totals
    }
    async fn handle_cast(&mut self, _: ()) {}
    fn channel_queue_size() -> usize {
        8
    }
}

impl<R: Clone + Send + Sync + 'static> Stage for Sum<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        if x >= BIG {
            self.totals.big += 1;
        } else {
            self.totals.count += 1;
            self.totals.sum += x;
        }
        out.emit(x).await;
    }
}

impl<R: Clone + Send + Sync + 'static> GenServer for Slow<R> {
    type Message = ();
    type Response = ();
    type Registry = R;
    fn new(_: R) -> Self {
        Slow(PhantomData)
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
    fn channel_queue_size() -> usize {
        4
    }
}

impl<R: Clone + Send + Sync + 'static> Stage for Slow<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        out.emit(x).await;
    }
}

fn key(x: &u64) -> u64 {
    *x
}

/// What the tail sees of `items` after `Fan`.
fn fanned(items: impl IntoIterator<Item = u64>) -> Totals {
    let mut totals = Totals::default();
    for x in items.into_iter().filter(|x| *x != POISON) {
        totals.count += x % 3;
        totals.sum += x * (x % 3);
    }
    totals
}

fn merged(parts: &[Totals]) -> Totals {
    parts.iter().fold(Totals::default(), |a, b| Totals {
        count: a.count + b.count,
        sum: a.sum + b.sum,
        big: a.big + b.big,
    })
}

async fn flush_in_time<P: Pipeline>(flow: &P) -> Result<(), FlushError> {
    tokio::time::timeout(DEADLINE, flow.flush()).await.expect("flush returned in time")
}

#[genflow::pipeline{ fan: Fan<Line>, sum: Sum<Line> }]
struct Line;

#[genflow::pipeline{
    #[replicas(3, ordered)]
    fan: Fan<Wide>,
    #[replicas(4, partition_by = key)]
    sum: Sum<Wide>,
}]
struct Wide;

#[genflow::pipeline{
    #[replicas(2)]
    slow: Slow<Slowly>,
    sum: Sum<Slowly>,
    #[replicas(2)]
    again: Slow<Slowly>,
}]
struct Slowly;

#[tokio::test]
async fn after_a_flush_the_tail_has_seen_every_item_and_still_runs() {
    let flow = Line::start().await;
    let mut output = flow.output().expect("first take");
    let reader = tokio::spawn(async move {
        let mut got = 0u64;
        while output.next().await.is_some() {
            got += 1;
        }
        got
    });
    for round in 0..3u64 {
        let items = round * 500..(round + 1) * 500;
        flow.feed(stream::iter(items)).await.unwrap();
        flush_in_time(&flow).await.unwrap();
        assert_eq!(flow.call_sum(()).await.unwrap(), fanned(0..(round + 1) * 500), "round {round}");
    }
    flow.shutdown().await;
    assert_eq!(reader.await.unwrap(), fanned(0..1500).count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_covers_replicas_ordered_stages_and_partitions() {
    let flow = Wide::start().await;
    let mut output = flow.output().expect("first take");
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(x) = output.next().await {
            got.push(x);
        }
        got
    });
    for round in 0..5u64 {
        let items = round * 2_000..(round + 1) * 2_000;
        let (a, b) = (flow.clone(), flow.clone());
        // Two senders at once, then one flush for both.
        let (fed_a, fed_b) = tokio::join!(
            a.feed(stream::iter(items.clone().filter(|x| x % 2 == 0))),
            b.feed(stream::iter(items.clone().filter(|x| x % 2 == 1))),
        );
        assert_eq!(fed_a.unwrap() + fed_b.unwrap(), 2_000);
        flush_in_time(&flow).await.unwrap();
        let parts = flow.call_sum_all(()).await.unwrap();
        assert_eq!(parts.len(), 4);
        assert_eq!(merged(&parts), fanned(0..(round + 1) * 2_000), "round {round}");
    }
    let expected = fanned(0..10_000);
    flow.shutdown().await;
    let got = reader.await.unwrap();
    assert_eq!(got.len() as u64, expected.count);
    assert_eq!(got.iter().sum::<u64>(), expected.sum);
}

#[tokio::test(start_paused = true)]
async fn a_flush_waits_for_slow_stages() {
    let flow = Slowly::start().await;
    let started = tokio::time::Instant::now();
    let items = 1..=40u64;
    let sender = tokio::spawn({
        let flow = flow.clone();
        let items = items.clone();
        async move { flow.feed(stream::iter(items)).await }
    });
    assert_eq!(sender.await.unwrap().unwrap(), 40);
    flush_in_time(&flow).await.unwrap();
    // 40 items at 1 ms each on 2 replicas (the later stage overlaps): at
    // least 20 ms on the clock.
    assert!(started.elapsed() >= Duration::from_millis(20), "{:?}", started.elapsed());
    assert_eq!(flow.call_sum(()).await.unwrap(), Totals { count: 40, sum: items.sum(), big: 0 });
    let again = flow.metrics().stage("again").unwrap();
    assert_eq!((again.received, again.emitted, again.dropped), (40, 40, 40));
    flow.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_under_a_steady_stream_of_sends_returns() {
    let flow = Wide::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let background = tokio::spawn({
        let (flow, stop) = (flow.clone(), stop.clone());
        async move {
            // How many copies of the items sent reach the tail.
            let (mut sent, mut copies) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let item = BIG + sent;
                flow.send(item).await.unwrap();
                copies += item % 3;
                sent += 1;
            }
            copies
        }
    });
    // Let the stream get going before the items the flush must cover.
    tokio::time::timeout(DEADLINE, async {
        while flow.metrics().stage("sum").unwrap().received < 1_000 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the stream got going");
    flow.feed(stream::iter(0..1_000)).await.unwrap();
    flush_in_time(&flow).await.unwrap();
    let seen = merged(&flow.call_sum_all(()).await.unwrap());
    assert_eq!((seen.count, seen.sum), (fanned(0..1_000).count, fanned(0..1_000).sum));
    stop.store(true, Ordering::Relaxed);
    let copies = background.await.unwrap();
    assert!(copies >= 1_000);
    flush_in_time(&flow).await.unwrap();
    let seen = merged(&flow.call_sum_all(()).await.unwrap());
    assert_eq!(seen.big, copies, "every background item, now that sending stopped");
    flow.shutdown().await;
}

#[tokio::test]
async fn a_flush_of_an_idle_pipeline_returns_at_once() {
    let flow = Wide::start().await;
    assert_eq!(flow.flush().now_or_never(), Some(Ok(())));
    flow.send(4).await.unwrap();
    flush_in_time(&flow).await.unwrap();
    // Everything went through: nothing to wait for again.
    assert_eq!(flow.flush().now_or_never(), Some(Ok(())));
    flow.shutdown().await;
}

#[tokio::test]
async fn a_flush_after_shutdown_or_abort_is_an_error() {
    let flow = Line::start().await;
    flow.send(5).await.unwrap();
    flow.shutdown().await;
    assert_eq!(flow.flush().await, Err(FlushError::Closed));

    let flow = Line::start().await;
    flow.abort();
    assert_eq!(flow.flush().await, Err(FlushError::Closed));
    flow.shutdown().await;
}

#[tokio::test]
async fn a_flush_with_the_output_never_taken_returns() {
    let flow = Line::start().await;
    flow.feed(stream::iter(0..300)).await.unwrap();
    flush_in_time(&flow).await.unwrap();
    let expected = fanned(0..300);
    assert_eq!(flow.call_sum(()).await.unwrap(), expected);
    let sum = flow.metrics().stage("sum").unwrap();
    assert_eq!((sum.emitted, sum.dropped), (expected.count, expected.count));
    flow.shutdown().await;
}

#[tokio::test]
async fn a_flush_counts_failed_items_as_gone_through() {
    let flow = Line::start().await;
    flow.feed(stream::iter(0..100)).await.unwrap();
    flush_in_time(&flow).await.unwrap();
    assert_eq!(flow.metrics().stage("fan").unwrap().failed, 1);
    assert_eq!(flow.call_sum(()).await.unwrap(), fanned(0..100));
    flow.shutdown().await;
}

#[tokio::test]
async fn a_flush_covers_items_sent_into_a_later_stage() {
    let flow = Wide::start().await;
    let mut into_sum = flow.sink_sum();
    for x in [7, 11, 100] {
        into_sum.feed(x).await.unwrap();
    }
    into_sum.flush().await.unwrap();
    flow.send(5).await.unwrap();
    flush_in_time(&flow).await.unwrap();
    let seen = merged(&flow.call_sum_all(()).await.unwrap());
    assert_eq!(seen, Totals { count: 3 + 2, sum: 118 + 10, big: 0 });
    flow.shutdown().await;
}

// --- A stage held at a gate --------------------------------------------------------

/// Passes items on.
struct Gated;

impl GenServer for Gated {
    type Message = ();
    type Response = ();
    type Registry = Held;
    fn new(_: Held) -> Self {
        Gated
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Gated {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(x).await;
    }
}

/// Waits at the gate before each item.
struct Gate {
    registry: Held,
}

impl GenServer for Gate {
    type Message = ();
    /// A flush made from inside the pipeline.
    type Response = Result<(), FlushError>;
    type Registry = Held;
    fn new(registry: Held) -> Self {
        Gate { registry }
    }
    async fn handle_call(&mut self, _: ()) -> Result<(), FlushError> {
        self.registry.flush().await
    }
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Gate {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.registry.gate.acquire().await.expect("the gate stays open").forget();
        out.emit(x).await;
    }
}

#[genflow::pipeline{ gate: Gate, after: Gated }]
struct Held {
    gate: Arc<Semaphore>,
}

/// Waits until `gate` has taken `n` items.
async fn until_received(flow: &Held, n: u64) {
    tokio::time::timeout(DEADLINE, async {
        while flow.metrics().stage("gate").unwrap().received < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("items reached the gate");
}

#[tokio::test]
async fn dropping_a_flush_is_harmless() {
    let gate = Arc::new(Semaphore::new(0));
    let flow = Held::start(gate.clone()).await;
    flow.feed(stream::iter(0..10)).await.unwrap();
    until_received(&flow, 10).await;
    {
        let mut flush = std::pin::pin!(flow.flush());
        assert!(futures::poll!(flush.as_mut()).is_pending(), "items wait at the gate");
    }
    gate.add_permits(5);
    let mut flush = std::pin::pin!(flow.flush());
    assert!(futures::poll!(flush.as_mut()).is_pending(), "five items still wait at the gate");
    gate.add_permits(5);
    tokio::time::timeout(DEADLINE, flush).await.unwrap().unwrap();
    let gated = flow.metrics().stage("after").unwrap();
    assert_eq!((gated.received, gated.emitted), (10, 10));
    flow.shutdown().await;
}

#[tokio::test]
async fn an_abort_during_a_flush_fails_it() {
    let gate = Arc::new(Semaphore::new(0));
    let flow = Held::start(gate.clone()).await;
    flow.send(1).await.unwrap();
    until_received(&flow, 1).await;
    let mut flush = std::pin::pin!(flow.flush());
    assert!(futures::poll!(flush.as_mut()).is_pending(), "the item waits at the gate");
    flow.abort();
    assert_eq!(tokio::time::timeout(DEADLINE, flush).await.unwrap(), Err(FlushError::Aborted));
    flow.shutdown().await;
}

#[tokio::test]
async fn a_stage_cannot_flush_its_own_pipeline() {
    let flow = Held::start(Arc::new(Semaphore::new(0))).await;
    assert_eq!(flow.call_gate(()).await.unwrap(), Err(FlushError::FromInside));
    flow.shutdown().await;
}
