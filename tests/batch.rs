//! `#[batch(size = N, timeout = ..)]`: a stage receives `Vec<T>` batches of
//! the previous stage's `T` items, cut per replica at `N` items, once the
//! oldest item has waited `timeout`, at `flush` and at shutdown. Runs on
//! paused time, so durations are exact.

use std::{fmt, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt, stream};
use genflow::{ConfigError, Emitter, GenServer, Stage};
use tokio::time::Instant;

const SIZE: usize = 100;
const TIMEOUT: Duration = Duration::from_millis(50);

/// Doubles each number: the stage before the batch stage.
struct Double;

impl GenServer for Double {
    type Message = ();
    type Response = ();
    type Registry = Batches;

    fn new(_: Batches) -> Self {
        Double
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Double {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit(2 * n).await;
    }
}

/// Emits each batch it gets, as it got it.
struct Store;

impl GenServer for Store {
    type Message = ();
    type Response = ();
    type Registry = Batches;

    fn new(_: Batches) -> Self {
        Store
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Store {
    type In = Vec<u64>;
    type Out = Vec<u64>;

    async fn process(&mut self, batch: Vec<u64>, out: &mut Emitter<Vec<u64>>) {
        out.emit(batch).await;
    }
}

#[genflow::pipeline{
    double: Double,
    #[batch(size = SIZE, timeout = TIMEOUT)]
    store: Store,
}]
struct Batches;

#[tokio::test(start_paused = true)]
async fn a_lone_item_comes_out_after_the_timeout() {
    let flow = Batches::start().await;
    let mut output = flow.output().unwrap();
    let started = Instant::now();
    flow.send(7).await.unwrap();
    assert_eq!(output.next().await, Some(vec![14]));
    assert_eq!(started.elapsed(), TIMEOUT);
    flow.shutdown().await;
    assert_eq!(output.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_comes_out_at_once() {
    let flow = Batches::start().await;
    let mut output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(stream::iter(0..SIZE as u64)).await.unwrap();
    assert_eq!(output.next().await, Some((0..SIZE as u64).map(|n| 2 * n).collect()));
    assert_eq!(started.elapsed(), Duration::ZERO);
    flow.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_rest_comes_out_at_shutdown_and_the_counts_are_items() {
    let flow = Batches::start().await;
    let output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(stream::iter(0..250)).await.unwrap();
    flow.shutdown().await;
    assert_eq!(started.elapsed(), Duration::ZERO, "shutdown does not wait for the timeout");
    let batches: Vec<Vec<u64>> = output.collect().await;
    assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [100, 100, 50]);
    assert_eq!(batches.concat(), (0..250).map(|n| 2 * n).collect::<Vec<_>>());
    let metrics = flow.metrics();
    let store = metrics.stage("store").unwrap();
    // Items, not batches: the line adds up with the stage before it.
    assert_eq!((store.received, store.processed, store.failed, store.emitted), (250, 250, 0, 3));
    assert_eq!(metrics.stage("double").unwrap().emitted, 250);
}

#[tokio::test(start_paused = true)]
async fn flush_cuts_the_open_batch_without_waiting_for_the_timeout() {
    let flow = Batches::start().await;
    let mut output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(stream::iter(0..130)).await.unwrap();
    flow.flush().await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    let store = flow.metrics().stage("store").unwrap();
    assert_eq!((store.received, store.processed), (130, 130));
    assert_eq!(output.next().await.map(|b| b.len()), Some(100));
    assert_eq!(output.next().await, Some((100..130).map(|n| 2 * n).collect()));
    // The replica goes on batching after the flush.
    flow.send(1).await.unwrap();
    assert_eq!(output.next().await, Some(vec![2]));
    assert_eq!(started.elapsed(), TIMEOUT);
    flow.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_builder_overrides_size_and_timeout() {
    let flow = Batches::builder().batch("store", 5, Duration::from_secs(1)).start().await.unwrap();
    let mut output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(stream::iter(0..12)).await.unwrap();
    assert_eq!(output.next().await.map(|b| b.len()), Some(5));
    assert_eq!(output.next().await.map(|b| b.len()), Some(5));
    assert_eq!(output.next().await, Some(vec![20, 22]));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    flow.shutdown().await;
}

#[tokio::test]
async fn batch_settings_that_cannot_work_are_refused_before_anything_starts() {
    let error = Batches::builder().batch("store", 0, TIMEOUT).start().await.err().expect("refused");
    assert_eq!(error, ConfigError::ZeroBatchSize { stage: "store" });
    assert_eq!(error.to_string(), "stage `store` was given a batch size of 0: a batch holds at least 1 item");
    let error = Batches::builder().batch("double", 10, TIMEOUT).start().await.err().expect("refused");
    assert_eq!(error, ConfigError::NotBatched { stage: "double" });
    assert_eq!(
        error.to_string(),
        "stage `double` was given a batch size and timeout, but it is not declared `#[batch(..)]`: only a batch \
         stage (`type In = Vec<T>`) takes batches"
    );
    let error = Batches::builder().batch("stor", 10, TIMEOUT).start().await.err().expect("refused");
    assert_eq!(error.to_string(), "unknown stage `stor`: the stages are `double`, `store`");
    let error = Batches::builder().concurrency("store", 4).start().await.err().expect("refused");
    assert_eq!(error, ConfigError::ConcurrentBatch { stage: "store", concurrency: 4 });
    assert_eq!(
        error.to_string(),
        "stage `store` is a `#[batch(..)]` stage and cannot have a concurrency of 4: its batches are processed \
         one at a time per replica; give it more replicas instead"
    );
    // A concurrency of 1 is what a batch stage has.
    Batches::builder().concurrency("store", 1).start().await.unwrap().shutdown().await;
}

/// A batch stage at the head, cutting whatever has arrived (timeout 0).
struct Eager;

impl GenServer for Eager {
    type Message = ();
    type Response = ();
    type Registry = Head;

    fn new(_: Head) -> Self {
        Eager
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Eager {
    type In = Vec<String>;
    type Out = usize;

    async fn process(&mut self, batch: Vec<String>, out: &mut Emitter<usize>) {
        out.emit(batch.len()).await;
    }
}

#[genflow::pipeline{ #[batch(size = 4, timeout = Duration::ZERO)] eager: Eager }]
struct Head;

#[tokio::test(start_paused = true)]
async fn a_zero_timeout_cuts_what_has_arrived() {
    let flow = Head::start().await;
    let mut output = flow.output().unwrap();
    let started = Instant::now();
    // The head takes the items of the batch stage's `Vec`.
    for word in ["a", "b", "c"] {
        flow.try_send(word.to_owned()).unwrap();
    }
    assert_eq!(output.next().await, Some(3));
    for word in ["d", "e", "f", "g", "h", "i"] {
        flow.try_send(word.to_owned()).unwrap();
    }
    assert_eq!(output.next().await, Some(4));
    assert_eq!(output.next().await, Some(2));
    assert_eq!(started.elapsed(), Duration::ZERO);
    flow.shutdown().await;
    let eager = flow.metrics().stage("eager").unwrap();
    assert_eq!((eager.received, eager.processed, eager.emitted), (9, 9, 3));
}

/// Why a batch failed.
#[derive(Debug)]
struct Refused(&'static str);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Refused {}

/// Fails batches by their first item: 0 fails the whole batch, 10 fails
/// two of its items, 20 panics, 30 fails more items than it has, 40 fails
/// none of its items, 50 fails three of its items and then the whole
/// batch, others go through.
struct Check;

impl GenServer for Check {
    type Message = ();
    type Response = ();
    type Registry = Checked;

    fn new(_: Checked) -> Self {
        Check
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Check {
    type In = Vec<u64>;
    type Out = usize;

    async fn process(&mut self, batch: Vec<u64>, out: &mut Emitter<usize>) {
        match batch[0] {
            0 => out.fail(Refused("whole")),
            10 => {
                out.fail_items(1, Refused("one"));
                out.fail_items(1, Refused("another"));
            }
            20 => panic!("bad batch"),
            30 => out.fail_items(1_000, Refused("too many")),
            40 => out.fail_items(0, Refused("none")),
            50 => {
                out.fail_items(3, Refused("three"));
                out.fail(Refused("the rest"));
            }
            _ => {}
        }
        out.emit(batch.len()).await;
    }
}

#[genflow::pipeline{ #[batch(size = 10, timeout = Duration::from_secs(1))] check: Check }]
struct Checked;

#[tokio::test(start_paused = true)]
async fn failing_a_batch_or_some_of_its_items_counts_items() {
    let flow = Checked::start().await;
    let failures = flow.failures().unwrap();
    let output = flow.output().unwrap();
    flow.feed(stream::iter(0..70)).await.unwrap();
    flow.shutdown().await;
    let sizes: Vec<usize> = output.collect().await;
    // The panicked batch emitted nothing.
    assert_eq!(sizes, [10, 10, 10, 10, 10, 10]);
    let failures: Vec<genflow::Failure> = failures.collect().await;
    let seen: Vec<(String, u64, bool)> =
        failures.iter().map(|f| (f.error().to_string(), f.items(), f.is_panic())).collect();
    assert_eq!(
        seen,
        [
            ("whole".to_owned(), 10, false),
            ("one".to_owned(), 1, false),
            ("another".to_owned(), 1, false),
            ("bad batch".to_owned(), 10, true),
            ("too many".to_owned(), 10, false),
            ("none".to_owned(), 0, false),
            // Each failure counts what no earlier one of its batch did.
            ("three".to_owned(), 3, false),
            ("the rest".to_owned(), 7, false),
        ]
    );
    let check = flow.metrics().stage("check").unwrap();
    assert_eq!((check.received, check.processed, check.failed), (70, 70, 10 + 2 + 10 + 10 + 10));
    // The failures' counts add up to the metric.
    assert_eq!(failures.iter().map(genflow::Failure::items).sum::<u64>(), check.failed);
}

/// Records the batches each replica got.
struct Part {
    batches: Vec<Vec<u64>>,
}

impl GenServer for Part {
    type Message = ();
    type Response = Vec<Vec<u64>>;
    type Registry = Parts;

    fn new(_: Parts) -> Self {
        Part { batches: Vec::new() }
    }

    async fn handle_call(&mut self, _: ()) -> Vec<Vec<u64>> {
        self.batches.clone()
    }
}

impl Stage for Part {
    type In = Vec<u64>;
    type Out = u64;

    async fn process(&mut self, batch: Vec<u64>, out: &mut Emitter<u64>) {
        for &n in &batch {
            out.emit(n).await;
        }
        self.batches.push(batch);
    }
}

fn last_digit(n: &u64) -> u64 {
    n % 10
}

#[genflow::pipeline{
    #[replicas(2, partition_by = last_digit)]
    #[batch(size = 8, timeout = Duration::from_millis(10))]
    part: Part,
}]
struct Parts;

#[tokio::test(start_paused = true)]
async fn each_replica_cuts_its_own_batches() {
    let flow = Parts::start().await;
    let output = flow.output().unwrap();
    flow.feed(stream::iter(0..100)).await.unwrap();
    flow.flush().await.unwrap();
    let replicas = flow.call_part_all(()).await.unwrap();
    flow.shutdown().await;
    let mut out: Vec<u64> = output.collect().await;
    out.sort_unstable();
    assert_eq!(out, (0..100).collect::<Vec<_>>(), "every item exactly once");
    let part = flow.metrics().stage("part").unwrap();
    for (replica, batches) in replicas.iter().enumerate() {
        // A replica gets every number of its last digits, in order, and
        // cuts them by 8, the rest at the flush.
        let items = batches.concat();
        let digits: Vec<u64> = (0..10).filter(|d| items.contains(d)).collect();
        let expected: Vec<u64> = (0..100).filter(|n| digits.contains(&last_digit(n))).collect();
        assert_eq!(items, expected, "replica {replica}");
        let mut sizes = vec![8; items.len() / 8];
        sizes.extend((items.len() % 8 != 0).then_some(items.len() % 8));
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), sizes, "replica {replica}");
        assert_eq!(part.replicas[replica].received, items.len() as u64);
    }
    assert!(replicas.iter().all(|batches| !batches.is_empty()), "both replicas have keys: {replicas:?}");
    assert_eq!((part.received, part.processed), (100, 100));
}

/// Holds the batch in `process` until the test lets it go.
struct Slow {
    gate: Arc<tokio::sync::Semaphore>,
}

impl GenServer for Slow {
    type Message = ();
    type Response = ();
    type Registry = Gated;

    fn new(flow: Gated) -> Self {
        Slow { gate: flow.gate.clone() }
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Slow {
    type In = Vec<u64>;
    type Out = u64;

    async fn process(&mut self, batch: Vec<u64>, out: &mut Emitter<u64>) {
        let _permit = self.gate.acquire().await.unwrap();
        out.emit(batch.len() as u64).await;
    }
}

#[genflow::pipeline{ #[max_demand(4)] #[batch(size = 5, timeout = Duration::from_secs(1))] slow: Slow }]
struct Gated {
    gate: Arc<tokio::sync::Semaphore>,
}

#[tokio::test(start_paused = true)]
async fn abort_counts_the_items_of_held_batches_as_aborted() {
    // 3 items: held in the open batch; 8: a batch of 5 in `process`, 3
    // still queued.
    for (items, taken) in [(3, 3), (8, 5)] {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let flow = Gated::start(gate).await;
        flow.feed(stream::iter(0..items)).await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(500);
        while flow.metrics().stage("slow").unwrap().received < taken {
            assert!(Instant::now() < deadline, "the replica takes its items before the timeout");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        flow.abort();
        flow.shutdown().await;
        let slow = flow.metrics().stage("slow").unwrap();
        assert_eq!((slow.received, slow.processed, slow.aborted), (items, 0, items));
    }
}

/// Sums each batch; answers calls with how many batches it summed.
#[derive(Default)]
struct Sum {
    batches: u64,
}

#[genflow::stage]
impl Stage for Sum {
    type Registry = Sums;
    type Response = u64;
    type In = Vec<u64>;
    type Out = u64;

    async fn handle_call(&mut self, _: ()) -> u64 {
        self.batches
    }

    async fn process(&mut self, batch: Vec<u64>, out: &mut Emitter<u64>) {
        self.batches += 1;
        out.emit(batch.iter().sum()).await;
    }
}

/// Runs in the task of the batch stage before it.
#[derive(Default)]
struct Negate;

#[genflow::stage]
impl Stage for Negate {
    type Registry = Sums;
    type In = u64;
    type Out = i64;

    async fn process(&mut self, n: u64, out: &mut Emitter<i64>) {
        out.emit(-(n as i64)).await;
    }
}

#[genflow::pipeline{
    #[batch(size = 3, timeout = Duration::from_secs(1))]
    sum: Sum,
    #[fused]
    negate: Negate,
}]
struct Sums;

#[tokio::test(start_paused = true)]
async fn a_replica_holding_an_open_batch_serves_calls_at_once() {
    let flow = Sums::start().await;
    let mut output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(stream::iter(1..=4)).await.unwrap();
    // 1 + 2 + 3, through the stage fused after the batch stage.
    assert_eq!(output.next().await, Some(-6));
    // Item 4 waits in the open batch; the call does not wait for it.
    assert_eq!(flow.call_sum(()).await.unwrap(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(output.next().await, Some(-4));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(flow.call_sum(()).await.unwrap(), 2);
    flow.shutdown().await;
    let metrics = flow.metrics();
    let (sum, negate) = (metrics.stage("sum").unwrap(), metrics.stage("negate").unwrap());
    assert_eq!((sum.received, sum.processed, sum.emitted), (4, 4, 2));
    assert_eq!((negate.received, negate.emitted), (2, 2));
}

/// A batch stage whose batches are cut only when full, at flush or at
/// shutdown: its timeout is past any clock.
struct Forever;

impl GenServer for Forever {
    type Message = ();
    type Response = ();
    type Registry = Untimed;

    fn new(_: Untimed) -> Self {
        Forever
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Forever {
    type In = Vec<u64>;
    type Out = Vec<u64>;

    async fn process(&mut self, batch: Vec<u64>, out: &mut Emitter<Vec<u64>>) {
        out.emit(batch).await;
    }
}

#[genflow::pipeline{ #[batch(size = 10, timeout = Duration::MAX)] forever: Forever }]
struct Untimed;

#[tokio::test(start_paused = true)]
async fn a_timeout_past_any_clock_never_cuts_but_flush_and_shutdown_do() {
    for flow in [Untimed::start().await, Untimed::builder().batch("forever", 10, Duration::MAX).start().await.unwrap()]
    {
        let mut output = flow.output().unwrap();
        flow.send(1).await.unwrap();
        tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
        assert!(output.next().now_or_never().is_none(), "cut by time");
        flow.flush().await.unwrap();
        assert_eq!(output.next().await, Some(vec![1]));
        flow.send(2).await.unwrap();
        flow.shutdown().await;
        assert_eq!(output.collect::<Vec<_>>().await, [vec![2]]);
        let forever = flow.metrics().stage("forever").unwrap();
        assert_eq!((forever.received, forever.processed, forever.failed, forever.aborted), (2, 2, 0, 0));
    }
}
