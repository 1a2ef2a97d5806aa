//! `#[concurrency(N)]`: up to N futures of one replica in flight at once.
//! `process` hands the slow part of each item to `emit_async` /
//! `try_emit_async`; the replica goes on with the next items meanwhile.
//! Runs on paused time, so durations are exact.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, StreamExt, stream};
use genflow::{ConfigError, Emitter, Failure, GenServer, Stage};
use tokio::time::Instant;

const WORK: Duration = Duration::from_millis(10);

/// Counts the futures in flight, and the most there were at once.
#[derive(Default)]
struct Probe {
    now: AtomicU64,
    most: AtomicU64,
}

impl Probe {
    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn most(&self) -> u64 {
        self.most.load(Ordering::SeqCst)
    }
}

/// What becomes of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Ok,
    Fail,
    Panic,
}

/// One item: its number, how long its lookup takes, and how it ends.
#[derive(Clone, Copy, Debug)]
struct Job {
    id: u64,
    delay: Duration,
    fate: Fate,
}

impl Job {
    fn key(&self) -> u64 {
        self.id % 3
    }
}

fn job(id: u64, delay: Duration) -> Job {
    Job { id, delay, fate: Fate::Ok }
}

/// A registry whose stages share a probe.
trait Probed: Clone + Send + Sync + 'static {
    fn probe(&self) -> Arc<Probe>;
}

/// Looks each job up: counts it in its state, then hands the wait over.
/// A call returns how many jobs `process` saw.
struct Lookup<R> {
    seen: u64,
    probe: Arc<Probe>,
    _registry: std::marker::PhantomData<fn() -> R>,
}

impl<R: Probed> GenServer for Lookup<R> {
    type Message = ();
    type Response = u64;
    type Registry = R;

    fn new(registry: R) -> Self {
        Lookup { seen: 0, probe: registry.probe(), _registry: std::marker::PhantomData }
    }

    async fn handle_call(&mut self, _: ()) -> u64 {
        self.seen
    }

    /// A cast is a fault: the state is rebuilt.
    async fn handle_cast(&mut self, _: ()) {
        panic!("a cast to a lookup")
    }
}

impl<R: Probed> Stage for Lookup<R> {
    type In = Job;
    type Out = u64;

    async fn process(&mut self, job: Job, out: &mut Emitter<u64>) {
        self.seen += 1;
        let probe = self.probe.clone();
        out.try_emit_async(async move {
            let now = probe.now.fetch_add(1, Ordering::SeqCst) + 1;
            probe.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(job.delay).await;
            probe.now.fetch_sub(1, Ordering::SeqCst);
            match job.fate {
                Fate::Ok => Ok(job.id),
                Fate::Fail => Err(format!("job {} failed", job.id)),
                Fate::Panic => panic!("job {} panicked", job.id),
            }
        })
        .await;
    }
}

macro_rules! probed {
    ($($flow:ident),*) => {$(
        impl Probed for $flow {
            fn probe(&self) -> Arc<Probe> {
                self.probe.clone()
            }
        }
    )*};
}

#[genflow::pipeline{ #[concurrency(16)] lookup: Lookup<Unordered> }]
struct Unordered {
    probe: Arc<Probe>,
}

const SIXTEEN: usize = 16;

#[genflow::pipeline{ #[concurrency(SIXTEEN, ordered)] lookup: Lookup<InOrder> }]
struct InOrder {
    probe: Arc<Probe>,
}

#[genflow::pipeline{ #[replicas(3, ordered)] #[concurrency(4)] lookup: Lookup<Fanned> }]
struct Fanned {
    probe: Arc<Probe>,
}

#[genflow::pipeline{ #[replicas(2, partition_by = Job::key)] #[concurrency(8)] lookup: Lookup<Keyed> }]
struct Keyed {
    probe: Arc<Probe>,
}

/// No `#[concurrency]`: one at a time, awaited in place.
#[genflow::pipeline{ lookup: Lookup<Plain> }]
struct Plain {
    probe: Arc<Probe>,
}

probed!(Unordered, InOrder, Fanned, Keyed, Plain);

/// Waits until `done` holds, letting the other tasks run (paused time
/// does not move meanwhile: `done` must not need it to).
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

#[tokio::test(start_paused = true)]
async fn sixty_four_lookups_sixteen_at_a_time_take_four_rounds() {
    let probe = Arc::new(Probe::default());
    let flow = Unordered::start(probe.clone()).await;
    let output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(stream::iter((0..64).map(|id| job(id, WORK)))).await.unwrap();
    flow.shutdown().await;
    assert_eq!(started.elapsed(), 4 * WORK);
    assert_eq!(probe.most(), 16);
    let mut out: Vec<u64> = output.collect().await;
    out.sort_unstable();
    assert_eq!(out, (0..64).collect::<Vec<_>>());
    let stage = flow.metrics().stage("lookup").unwrap();
    assert_eq!((stage.received, stage.processed, stage.emitted, stage.failed), (64, 64, 64, 0));
    assert_eq!(stage.in_flight, 0);
    // The stage had all 16 places taken the whole time: saturated, busy.
    assert_eq!(stage.busy, 4 * WORK);
}

/// Jobs 0..8 whose delays decrease: the last one handed over is done first.
fn decreasing() -> impl futures::Stream<Item = Job> {
    stream::iter((0..8).map(|id| job(id, WORK * (8 - id as u32))))
}

#[tokio::test(start_paused = true)]
async fn results_leave_as_they_complete_unless_ordered() {
    let flow = Unordered::start(Arc::default()).await;
    let output = flow.output().unwrap();
    flow.feed(decreasing()).await.unwrap();
    flow.shutdown().await;
    assert_eq!(output.collect::<Vec<_>>().await, (0..8).rev().collect::<Vec<_>>());

    let flow = InOrder::start(Arc::default()).await;
    let output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(decreasing()).await.unwrap();
    flow.shutdown().await;
    // Still all at once: the slowest sets the pace.
    assert_eq!(started.elapsed(), 8 * WORK);
    assert_eq!(output.collect::<Vec<_>>().await, (0..8).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn failing_and_panicking_lookups_fail_their_items_only() {
    let flow = Unordered::start(Arc::default()).await;
    let (output, failures) = (flow.output().unwrap(), flow.failures().unwrap());
    let fate = |id: u64| match id % 5 {
        1 => Fate::Fail,
        3 => Fate::Panic,
        _ => Fate::Ok,
    };
    flow.feed(stream::iter((0..20).map(|id| Job { id, delay: WORK, fate: fate(id) }))).await.unwrap();
    flow.shutdown().await;
    let mut out: Vec<u64> = output.collect().await;
    out.sort_unstable();
    assert_eq!(out, (0..20).filter(|&id| fate(id) == Fate::Ok).collect::<Vec<_>>());
    let failures: Vec<Failure> = failures.collect().await;
    let mut failed: Vec<(String, bool)> = failures.iter().map(|f| (f.error().to_string(), f.is_panic())).collect();
    failed.sort();
    let mut expected: Vec<(String, bool)> = (0..20)
        .filter_map(|id| match fate(id) {
            Fate::Fail => Some((format!("job {id} failed"), false)),
            Fate::Panic => Some((format!("job {id} panicked"), true)),
            Fate::Ok => None,
        })
        .collect();
    expected.sort();
    assert_eq!(failed, expected);
    assert!(failures.iter().all(|f| f.stage() == "lookup" && !f.in_finish()));
    let stage = flow.metrics().stage("lookup").unwrap();
    assert_eq!((stage.received, stage.processed, stage.failed, stage.emitted), (20, 20, 8, 12));
}

#[tokio::test(start_paused = true)]
async fn flush_waits_for_the_lookups_in_flight() {
    let flow = Unordered::start(Arc::default()).await;
    let mut output = flow.output().unwrap();
    let started = Instant::now();
    for id in 0..10 {
        flow.send(job(id, 5 * WORK)).await.unwrap();
    }
    flow.flush().await.unwrap();
    assert_eq!(started.elapsed(), 5 * WORK);
    // Every result is out already.
    let mut out = Vec::new();
    while let Some(Some(n)) = output.next().now_or_never() {
        out.push(n);
    }
    out.sort_unstable();
    assert_eq!(out, (0..10).collect::<Vec<_>>());
    flow.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_delivers_the_lookups_in_flight() {
    let probe = Arc::new(Probe::default());
    let flow = Unordered::start(probe.clone()).await;
    let output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(stream::iter((0..12).map(|id| job(id, Duration::from_secs(1))))).await.unwrap();
    until(|| probe.now() == 12).await;
    flow.shutdown().await;
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    let mut out: Vec<u64> = output.collect().await;
    out.sort_unstable();
    assert_eq!(out, (0..12).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn abort_counts_the_items_in_flight_as_aborted() {
    let probe = Arc::new(Probe::default());
    let flow = Unordered::start(probe.clone()).await;
    let _output = flow.output().unwrap();
    // 16 in flight, the 17th waits for room, 3 more wait in the batch.
    flow.feed(stream::iter((0..20).map(|id| job(id, Duration::from_secs(1))))).await.unwrap();
    until(|| probe.now() == 16).await;
    until(|| flow.metrics().stage("lookup").unwrap().in_flight == 16).await;
    flow.abort();
    flow.shutdown().await;
    let stage = flow.metrics().stage("lookup").unwrap();
    assert_eq!((stage.received, stage.processed, stage.aborted, stage.queued), (20, 0, 20, 0));
    assert_eq!(stage.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn an_ordered_replicated_stage_keeps_input_order() {
    let probe = Arc::new(Probe::default());
    let flow = Fanned::start(probe.clone()).await;
    let output = flow.output().unwrap();
    // Uneven delays, so that within and across replicas later items
    // complete first.
    let delay = |id: u64| Duration::from_millis((id * 7) % 13 + 1);
    flow.feed(stream::iter((0..300).map(|id| job(id, delay(id))))).await.unwrap();
    flow.shutdown().await;
    assert_eq!(output.collect::<Vec<_>>().await, (0..300).collect::<Vec<_>>());
    assert!(probe.most() <= 12, "at most 4 per replica: {}", probe.most());
    assert!(probe.most() > 4, "the replicas worked side by side: {}", probe.most());
}

#[tokio::test(start_paused = true)]
async fn the_builder_sets_the_concurrency() {
    let probe = Arc::new(Probe::default());
    let flow = Unordered::builder(probe.clone()).concurrency("lookup", 4).start().await.unwrap();
    let started = Instant::now();
    flow.feed(stream::iter((0..16).map(|id| job(id, WORK)))).await.unwrap();
    flow.shutdown().await;
    assert_eq!(started.elapsed(), 4 * WORK);
    assert_eq!(probe.most(), 4);

    // And where nothing is declared.
    let probe = Arc::new(Probe::default());
    let flow = Plain::builder(probe.clone()).concurrency("lookup", 8).start().await.unwrap();
    let started = Instant::now();
    flow.feed(stream::iter((0..16).map(|id| job(id, WORK)))).await.unwrap();
    flow.shutdown().await;
    assert_eq!(started.elapsed(), 2 * WORK);
    assert_eq!(probe.most(), 8);

    let error = Unordered::builder(Arc::default()).concurrency("lookup", 0).start().await.err().unwrap();
    assert_eq!(error, ConfigError::ZeroConcurrency { stage: "lookup" });
    assert_eq!(
        error.to_string(),
        "stage `lookup` was given a concurrency of 0: a replica has at least 1 item in flight (1 is one at a time)"
    );
    let error = Unordered::builder(Arc::default()).concurrency("lookups", 2).start().await.err().unwrap();
    assert!(matches!(error, ConfigError::UnknownName { .. }), "{error}");
}

#[tokio::test(start_paused = true)]
async fn without_concurrency_each_lookup_is_awaited_in_place() {
    let probe = Arc::new(Probe::default());
    let flow = Plain::start(probe.clone()).await;
    let output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(stream::iter((0..4).map(|id| job(id, WORK)))).await.unwrap();
    flow.shutdown().await;
    assert_eq!(started.elapsed(), 4 * WORK);
    assert_eq!(probe.most(), 1);
    assert_eq!(output.collect::<Vec<_>>().await, vec![0, 1, 2, 3]);

    // A failing and a panicking lookup fail their items there too.
    let flow = Plain::start(Arc::default()).await;
    let (output, failures) = (flow.output().unwrap(), flow.failures().unwrap());
    flow.send(Job { id: 0, delay: WORK, fate: Fate::Fail }).await.unwrap();
    flow.send(Job { id: 1, delay: WORK, fate: Fate::Panic }).await.unwrap();
    flow.send(job(2, WORK)).await.unwrap();
    flow.shutdown().await;
    assert_eq!(output.collect::<Vec<_>>().await, vec![2]);
    let failures: Vec<(String, bool)> =
        failures.map(|f| (f.error().to_string(), f.is_panic())).collect::<Vec<_>>().await;
    assert_eq!(failures, vec![("job 0 failed".to_string(), false), ("job 1 panicked".to_string(), true)]);
    let stage = flow.metrics().stage("lookup").unwrap();
    assert_eq!((stage.received, stage.processed, stage.failed), (3, 3, 2));
}

#[tokio::test(start_paused = true)]
async fn calls_are_served_while_lookups_are_in_flight() {
    let probe = Arc::new(Probe::default());
    let flow = Unordered::start(probe.clone()).await;
    let _output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(stream::iter((0..5).map(|id| job(id, Duration::from_secs(1))))).await.unwrap();
    until(|| probe.now() == 5).await;
    assert_eq!(flow.call_lookup(()).await.unwrap(), 5);
    let stage = flow.metrics().stage("lookup").unwrap();
    assert_eq!((stage.received, stage.processed, stage.in_flight), (5, 0, 5));
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(flow.metrics().to_string().contains("in flight"), "{}", flow.metrics());
    flow.shutdown().await;
    let stage = flow.metrics().stage("lookup").unwrap();
    assert_eq!((stage.processed, stage.in_flight), (5, 0));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

/// Passes jobs on (before a fused lookup), or results (after one).
struct Pass<T, R>(std::marker::PhantomData<fn() -> (T, R)>);

impl<T: Send + 'static, R: Probed> GenServer for Pass<T, R> {
    type Message = ();
    type Response = ();
    type Registry = R;

    fn new(_: R) -> Self {
        Pass(std::marker::PhantomData)
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl<T: Send + 'static, R: Probed> Stage for Pass<T, R> {
    type In = T;
    type Out = T;

    async fn process(&mut self, item: T, out: &mut Emitter<T>) {
        out.emit(item).await;
    }
}

/// A fused stage with concurrency.
#[genflow::pipeline{ pass: Pass<Job, FusedLookup>, #[fused] #[concurrency(8)] lookup: Lookup<FusedLookup> }]
struct FusedLookup {
    probe: Arc<Probe>,
}

/// A stage with concurrency, hosting a fused stage.
#[genflow::pipeline{ #[concurrency(8)] lookup: Lookup<Host>, #[fused] pass: Pass<u64, Host> }]
struct Host {
    probe: Arc<Probe>,
}

probed!(FusedLookup, Host);

#[tokio::test(start_paused = true)]
async fn a_fused_stage_keeps_its_lookups_in_flight() {
    let probe = Arc::new(Probe::default());
    let flow = FusedLookup::start(probe.clone()).await;
    let output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(stream::iter((0..32).map(|id| job(id, WORK)))).await.unwrap();
    flow.shutdown().await;
    assert_eq!(started.elapsed(), 4 * WORK);
    assert_eq!(probe.most(), 8);
    let mut out: Vec<u64> = output.collect().await;
    out.sort_unstable();
    assert_eq!(out, (0..32).collect::<Vec<_>>());
    let stage = flow.metrics().stage("lookup").unwrap();
    assert_eq!((stage.received, stage.processed, stage.emitted), (32, 32, 32));
}

#[tokio::test(start_paused = true)]
async fn a_stage_with_lookups_in_flight_hosts_a_fused_stage() {
    let probe = Arc::new(Probe::default());
    let flow = Host::start(probe.clone()).await;
    let output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(stream::iter((0..32).map(|id| job(id, WORK)))).await.unwrap();
    flow.shutdown().await;
    assert_eq!(started.elapsed(), 4 * WORK);
    assert_eq!(probe.most(), 8);
    let mut out: Vec<u64> = output.collect().await;
    out.sort_unstable();
    assert_eq!(out, (0..32).collect::<Vec<_>>());
    let pass = flow.metrics().stage("pass").unwrap();
    assert_eq!((pass.received, pass.processed, pass.emitted), (32, 32, 32));
}

#[tokio::test(start_paused = true)]
async fn a_state_rebuilt_while_lookups_are_in_flight_loses_none() {
    let probe = Arc::new(Probe::default());
    let flow = Unordered::start(probe.clone()).await;
    let output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(stream::iter((0..5).map(|id| job(id, Duration::from_secs(1))))).await.unwrap();
    until(|| probe.now() == 5).await;
    flow.cast_lookup(()).await.unwrap();
    // Served by the fresh state, once the lookups are done.
    assert_eq!(flow.call_lookup(()).await.unwrap(), 0);
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    flow.shutdown().await;
    let mut out: Vec<u64> = output.collect().await;
    out.sort_unstable();
    assert_eq!(out, (0..5).collect::<Vec<_>>());
    let stage = flow.metrics().stage("lookup").unwrap();
    assert_eq!((stage.received, stage.processed, stage.failed, stage.emitted), (5, 5, 0, 5));
}

#[tokio::test(start_paused = true)]
async fn partition_by_keeps_each_keys_order() {
    let probe = Arc::new(Probe::default());
    let flow = Keyed::start(probe.clone()).await;
    let output = flow.output().unwrap();
    // Later items are quicker: without order they would overtake.
    flow.feed(stream::iter((0..30).map(|id| job(id, WORK * (30 - id as u32))))).await.unwrap();
    flow.shutdown().await;
    let out: Vec<u64> = output.collect().await;
    assert_eq!(out.len(), 30);
    for key in 0..3 {
        let of_key: Vec<u64> = out.iter().copied().filter(|id| id % 3 == key).collect();
        assert_eq!(of_key, (0..30).filter(|id| id % 3 == key).collect::<Vec<_>>());
    }
    assert!(probe.most() > 8, "both replicas had lookups in flight: {}", probe.most());
}

#[tokio::test(start_paused = true)]
async fn results_flow_on_while_others_are_in_flight() {
    let flow = Unordered::start(Arc::default()).await;
    let mut output = flow.output().unwrap();
    let started = Instant::now();
    // Both sent before the replica runs: one batch.
    flow.send(job(0, Duration::from_secs(1))).await.unwrap();
    flow.send(job(1, WORK)).await.unwrap();
    // Out as soon as it is done, while its batch still waits for job 0.
    assert_eq!(output.next().await, Some(1));
    assert_eq!(started.elapsed(), WORK);
    assert_eq!(flow.metrics().stage("lookup").unwrap().in_flight, 1);
    assert_eq!(output.next().await, Some(0));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    flow.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn items_arriving_while_futures_are_in_flight_join_them() {
    let probe = Arc::new(Probe::default());
    let flow = Unordered::start(probe.clone()).await;
    let output = flow.output().unwrap();
    let started = Instant::now();
    flow.send(job(0, WORK)).await.unwrap();
    until(|| probe.now() == 1).await;
    // One a millisecond, while job 0 is in flight.
    for id in 1..=5 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        flow.send(job(id, WORK)).await.unwrap();
        until(|| probe.now() == id + 1).await;
    }
    flow.shutdown().await;
    assert_eq!(started.elapsed(), Duration::from_millis(5) + WORK);
    assert_eq!(probe.most(), 6);
    let mut out: Vec<u64> = output.collect().await;
    out.sort_unstable();
    assert_eq!(out, (0..=5).collect::<Vec<_>>());
}

/// Four at a time.
#[genflow::pipeline{ #[concurrency(4)] lookup: Lookup<Four> }]
struct Four {
    probe: Arc<Probe>,
}

probed!(Four);

#[tokio::test(start_paused = true)]
async fn a_slow_lookup_holds_one_place_only() {
    let flow = Four::start(Arc::default()).await;
    let mut output = flow.output().unwrap();
    let started = Instant::now();
    flow.send(job(0, Duration::from_secs(1))).await.unwrap();
    flow.feed(stream::iter((1..=100).map(|id| job(id, WORK)))).await.unwrap();
    // The fast ones go three at a time beside the slow one.
    let fast: Vec<u64> = (&mut output).take(100).collect().await;
    assert_eq!(started.elapsed(), 34 * WORK);
    let mut sorted = fast.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=100).collect::<Vec<_>>());
    assert_eq!(output.next().await, Some(0));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    flow.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn flush_waits_for_items_taken_while_others_were_in_flight() {
    let probe = Arc::new(Probe::default());
    let flow = Unordered::start(probe.clone()).await;
    let mut output = flow.output().unwrap();
    let started = Instant::now();
    flow.send(job(0, 5 * WORK)).await.unwrap();
    until(|| probe.now() == 1).await;
    flow.send(job(1, WORK)).await.unwrap();
    until(|| probe.now() == 2).await;
    flow.flush().await.unwrap();
    assert_eq!(started.elapsed(), 5 * WORK);
    assert_eq!(output.next().now_or_never(), Some(Some(1)));
    assert_eq!(output.next().now_or_never(), Some(Some(0)));
    flow.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn flush_returns_under_a_steady_stream() {
    let probe = Arc::new(Probe::default());
    let flow = Unordered::start(probe.clone()).await;
    let _output = flow.output().unwrap();
    // One item a millisecond, each 10 ms: about 10 in flight all along,
    // never none.
    let feeder = flow.clone();
    let feed = tokio::spawn(async move {
        for id in 0..5_000 {
            feeder.send(job(id, WORK)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(probe.now() >= 5, "{}", probe.now());
    let started = Instant::now();
    flow.flush().await.unwrap();
    // A batch ends once it took 8 × its max_demand (32) items and they
    // are done: items 0..256 arrive by 255 ms, the last is done at 265 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(260));
    assert!(!feed.is_finished());
    assert!(probe.most() < 16, "room all along: {}", probe.most());
    feed.abort();
    flow.shutdown().await;
}

// ---- saturation and rate limits ---------------------------------------------

/// Hands each item over as a 10 ms wait.
struct Wait;

impl GenServer for Wait {
    type Message = ();
    type Response = ();
    type Registry = Waits;
    fn new(_: Waits) -> Self {
        Wait
    }
    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Wait {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit_async(async move {
            tokio::time::sleep(WORK).await;
            n
        })
        .await;
    }
}

#[genflow::pipeline{ #[concurrency(4)] wait: Wait }]
struct Waits;

#[tokio::test(start_paused = true)]
async fn a_stage_with_all_its_places_taken_is_busy_and_the_bottleneck() {
    let flow = Waits::start().await;
    let output = flow.output().unwrap();
    // 400 items, 4 at a time, 10 ms each: 1 s, all of it with the four
    // places taken.
    flow.feed(stream::iter(0..400)).await.unwrap();
    flow.flush().await.unwrap();
    let metrics = flow.metrics();
    let wait = metrics.stage("wait").unwrap();
    assert_eq!((wait.processed, wait.in_flight), (400, 0));
    assert!(wait.busy >= Duration::from_millis(990), "busy {:?}", wait.busy);
    assert_eq!(metrics.limit(), genflow::Limit::Bottleneck("wait"));
    flow.shutdown().await;
    assert_eq!(output.count().await, 400);
}

#[tokio::test(start_paused = true)]
async fn a_stage_waiting_for_input_with_room_for_more_is_not_busy() {
    let flow = Waits::start().await;
    let mut output = flow.output().unwrap();
    // One item at a time: three places free while it is in flight.
    for n in 0..10 {
        flow.send(n).await.unwrap();
        assert_eq!(output.next().await, Some(n));
    }
    let wait = flow.metrics().stage("wait").unwrap();
    assert_eq!(wait.busy, Duration::ZERO);
    flow.shutdown().await;
}

/// [`Wait`]'s work in a stage that takes at most one item a second.
struct LimitedWait;

impl GenServer for LimitedWait {
    type Message = ();
    type Response = ();
    type Registry = Limited;
    fn new(_: Limited) -> Self {
        LimitedWait
    }
    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for LimitedWait {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit_async(async move {
            tokio::time::sleep(WORK).await;
            n
        })
        .await;
    }
}

#[genflow::pipeline{ #[concurrency(4)] #[rate_limit(1, per = Duration::from_secs(1))] wait: LimitedWait }]
struct Limited;

#[tokio::test(start_paused = true)]
async fn outputs_leave_while_the_next_item_waits_for_its_token() {
    let flow = Limited::start().await;
    let mut output = flow.output().unwrap();
    let started = Instant::now();
    flow.feed(stream::iter(0..3)).await.unwrap();
    // Item 0 goes at once and its future takes 10 ms, while item 1 waits
    // a second for its token.
    assert_eq!(output.next().await, Some(0));
    assert_eq!(started.elapsed(), WORK);
    assert_eq!(output.next().await, Some(1));
    assert_eq!(started.elapsed(), Duration::from_secs(1) + WORK);
    flow.shutdown().await;
    assert_eq!(output.next().await, Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_replica_holds_at_most_its_concurrency_and_leaves_the_rest_queued() {
    let flow = Waits::start().await;
    let output = flow.output().unwrap();
    flow.feed(stream::iter(0..100)).await.unwrap();
    tokio::time::advance(Duration::from_millis(1)).await;
    let wait = flow.metrics().stage("wait").unwrap();
    // Four in flight, none held back in the replica: the other 96 wait in
    // the queue (a stage holds its queue plus replicas × N items).
    assert_eq!((wait.received, wait.in_flight, wait.queued), (4, 4, 96));
    flow.shutdown().await;
    assert_eq!(output.count().await, 100);
}
