//! `#[fused]` stages: a fused stage runs in the task of the stage before
//! it, with no queue between them, and keeps everything else of a stage:
//! the same results and order as unfused, its calls and casts answered
//! while items flow, exact metrics, failures and restarts of its own, its
//! own input through `sink_<stage>()`, `flush`, the drain order, and the
//! accounting after `abort`.

use std::{
    marker::PhantomData,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{SinkExt, StreamExt, stream};
use genflow::{CallError, ConfigError, Emitter, GenServer, Metrics, Pipeline, Stage};
use tokio::sync::Semaphore;

/// The guard against a hang: no test comes near it when it passes.
const DEADLINE: Duration = Duration::from_secs(60);

/// An item that makes a `Step` panic in `process`.
const POISON: u64 = 1_000_013;
/// An item that a `Step` fails with `Emitter::fail`.
const BAD: u64 = 1_000_017;

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future).await.expect("no hang")
}

/// Polls `pred` until it holds, yielding in between.
async fn eventually(mut pred: impl FnMut() -> bool) {
    within(async {
        while !pred() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// What a `Step` is asked.
#[derive(Clone, Debug)]
enum Ask {
    /// How many items it processed since its state was made.
    Seen,
    /// Adds to its cast total (as a cast), or reads it (as a call, with 0).
    Casts(u64),
    /// Panics in `handle_call`.
    Crash,
}

/// One step of W1: `OP` 0 adds 1, 1 multiplies by 3, 2 passes the item on.
/// Panics on [`POISON`] and fails [`BAD`] (those pass through the other
/// steps unchanged).
struct Step<R, const OP: u8> {
    seen: u64,
    casts: u64,
    _registry: PhantomData<R>,
}

impl<R: Clone + Send + Sync + 'static, const OP: u8> GenServer for Step<R, OP> {
    type Message = Ask;
    type Response = u64;
    type Registry = R;
    fn new(_: R) -> Self {
        Step { seen: 0, casts: 0, _registry: PhantomData }
    }
    async fn handle_call(&mut self, ask: Ask) -> u64 {
        match ask {
            Ask::Seen => self.seen,
            Ask::Casts(n) => {
                self.casts += n;
                self.casts
            }
            Ask::Crash => panic!("asked to crash"),
        }
    }
    async fn handle_cast(&mut self, ask: Ask) {
        if let Ask::Casts(n) = ask {
            self.casts += n;
        }
    }
    fn channel_queue_size() -> usize {
        64
    }
}

impl<R: Clone + Send + Sync + 'static, const OP: u8> Stage for Step<R, OP> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        if x == POISON && OP == 2 {
            panic!("poison item");
        }
        if x == BAD && OP == 2 {
            return out.fail(format!("bad item {x}"));
        }
        let y = match OP {
            _ if x >= POISON => x,
            0 => x + 1,
            1 => x * 3,
            _ => x,
        };
        out.emit(y).await;
    }
}

/// Sums what it gets; emits the sum in `finish`.
struct Sum<R> {
    total: u64,
    _registry: PhantomData<R>,
}

impl<R: Clone + Send + Sync + 'static> GenServer for Sum<R> {
    type Message = ();
    type Response = u64;
    type Registry = R;
    fn new(_: R) -> Self {
        Sum { total: 0, _registry: PhantomData }
    }
    async fn handle_call(&mut self, (): ()) -> u64 {
        self.total
    }
    async fn handle_cast(&mut self, (): ()) {}
}

impl<R: Clone + Send + Sync + 'static> Stage for Sum<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, _: &mut Emitter<u64>) {
        self.total += x;
    }
    async fn finish(&mut self, out: &mut Emitter<u64>) {
        out.emit(self.total).await;
    }
}

type Add<R> = Step<R, 0>;
type Mul<R> = Step<R, 1>;
type Pass<R> = Step<R, 2>;

#[genflow::pipeline{ add: Add<W1>, mul: Mul<W1>, sum: Sum<W1> }]
struct W1;

#[genflow::pipeline{ add: Add<W1Fused>, #[fused] mul: Mul<W1Fused>, #[fused] sum: Sum<W1Fused> }]
struct W1Fused;

#[genflow::pipeline{ add: Add<Chain>, #[fused] mul: Mul<Chain>, #[fused] pass: Pass<Chain> }]
struct Chain;

/// The head is the fused stage's predecessor; the tail is not fused.
#[genflow::pipeline{ add: Add<Middle>, #[fused] pass: Pass<Middle>, mul: Mul<Middle> }]
struct Middle;

async fn sum_of<P: Pipeline<In = u64, Out = u64>>(flow: P, n: u64) -> u64 {
    let output = flow.output().unwrap();
    assert_eq!(flow.feed(stream::iter(0..n)).await.unwrap(), n as usize);
    flow.shutdown().await;
    let out: Vec<u64> = output.collect().await;
    assert_eq!(out.len(), 1, "one sum");
    out[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fused_w1_gives_the_unfused_sum() {
    const N: u64 = 100_000;
    let unfused = within(sum_of(W1::start().await, N)).await;
    let fused = within(sum_of(W1Fused::start().await, N)).await;
    assert_eq!(unfused, (0..N).map(|x| (x + 1) * 3).sum::<u64>());
    assert_eq!(fused, unfused);
}

#[tokio::test]
async fn order_is_kept_through_a_fused_group() {
    const N: u64 = 10_000;
    for flow in [Chain::start().await] {
        let output = flow.output().unwrap();
        let feeding = flow.feed(stream::iter(0..N));
        let (fed, out) = within(futures::future::join(feeding, output.take(N as usize).collect::<Vec<_>>())).await;
        assert_eq!(fed.unwrap(), N as usize);
        assert_eq!(out, (0..N).map(|x| (x + 1) * 3).collect::<Vec<_>>());
        flow.shutdown().await;
    }
    let flow = Middle::start().await;
    let output = flow.output().unwrap();
    let feeding = flow.feed(stream::iter(0..N));
    let (fed, out) = within(futures::future::join(feeding, output.take(N as usize).collect::<Vec<_>>())).await;
    assert_eq!(fed.unwrap(), N as usize);
    assert_eq!(out, (0..N).map(|x| (x + 1) * 3).collect::<Vec<_>>());
    flow.shutdown().await;
}

#[tokio::test]
async fn metrics_of_each_fused_stage_are_exact() {
    const N: u64 = 5_000;
    let flow = Chain::start().await;
    let output = flow.output().unwrap();
    let failures = flow.failures().unwrap();
    let items = (0..N).chain([POISON, BAD, BAD]);
    let reading = tokio::spawn(output.collect::<Vec<_>>());
    let failed = tokio::spawn(failures.collect::<Vec<_>>());
    assert_eq!(flow.feed(stream::iter(items)).await.unwrap(), N as usize + 3);
    within(flow.shutdown()).await;
    let out = reading.await.unwrap();
    assert_eq!(out.len(), N as usize);
    let m = flow.metrics();
    for name in ["add", "mul", "pass"] {
        let s = m.stage(name).unwrap();
        assert_eq!(s.received, N + 3, "{name}\n{m}");
        assert_eq!(s.processed, N + 3, "{name}\n{m}");
        assert_eq!(s.queued, 0, "{name}\n{m}");
    }
    let (add, mul, pass) = (m.stage("add").unwrap(), m.stage("mul").unwrap(), m.stage("pass").unwrap());
    assert_eq!((add.emitted, add.failed), (N + 3, 0), "{m}");
    assert_eq!((mul.emitted, mul.failed), (N + 3, 0), "{m}");
    assert_eq!((pass.emitted, pass.failed), (N, 3), "{m}");
    let failed = failed.await.unwrap();
    assert_eq!(failed.len(), 3);
    assert!(failed.iter().all(|f| f.stage() == "pass"), "{failed:?}");
    assert_eq!(failed.iter().filter(|f| f.is_panic()).count(), 1, "{failed:?}");
    assert!(failed.iter().any(|f| !f.is_panic() && f.error().to_string() == format!("bad item {BAD}")));
}

#[tokio::test]
async fn a_panic_in_a_fused_stage_fails_that_item_only() {
    let flow = Chain::start().await;
    let output = flow.output().unwrap();
    let failures = flow.failures().unwrap();
    for x in [1, POISON, 2] {
        flow.send(x).await.unwrap();
    }
    flow.flush().await.unwrap();
    // The state is kept through a panic in `process`: it saw all three.
    assert_eq!(flow.call_pass(Ask::Seen).await.unwrap(), 3);
    within(flow.shutdown()).await;
    assert_eq!(output.collect::<Vec<_>>().await, vec![6, 9]);
    let failed: Vec<_> = failures.collect().await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].stage(), "pass");
    assert!(failed[0].is_panic());
}

#[tokio::test]
async fn a_crash_restarts_only_the_fused_stage_that_panicked() {
    let flow = Chain::start().await;
    let output = flow.output().unwrap();
    for x in 0..10 {
        flow.send(x).await.unwrap();
    }
    flow.flush().await.unwrap();
    for stage in ["add", "mul", "pass"] {
        let seen = match stage {
            "add" => flow.call_add(Ask::Seen).await,
            "mul" => flow.call_mul(Ask::Seen).await,
            _ => flow.call_pass(Ask::Seen).await,
        };
        assert_eq!(seen.unwrap(), 10, "{stage}");
    }
    assert!(matches!(flow.call_mul(Ask::Crash).await, Err(CallError::Panicked)));
    // `mul` has fresh state; the others kept theirs.
    assert_eq!(flow.call_mul(Ask::Seen).await.unwrap(), 0);
    assert_eq!(flow.call_add(Ask::Seen).await.unwrap(), 10);
    assert_eq!(flow.call_pass(Ask::Seen).await.unwrap(), 10);
    // Items still flow through the restarted stage.
    for x in 10..20 {
        flow.send(x).await.unwrap();
    }
    flow.flush().await.unwrap();
    assert_eq!(flow.call_mul(Ask::Seen).await.unwrap(), 10);
    within(flow.shutdown()).await;
    let out: Vec<u64> = output.collect().await;
    assert_eq!(out, (0..20).map(|x| (x + 1) * 3).collect::<Vec<_>>());
}

#[tokio::test]
async fn past_its_restart_limit_a_fused_stage_fails_its_items_and_calls() {
    let flow = Chain::start().await;
    let output = flow.output().unwrap();
    // The default limit allows 3 restarts in 5 s: the 4th crash is final.
    for _ in 0..4 {
        assert!(matches!(flow.call_mul(Ask::Crash).await, Err(CallError::Panicked)));
    }
    assert!(matches!(flow.call_mul(Ask::Seen).await, Err(CallError::Failed(_))));
    for x in 0..5 {
        flow.send(x).await.unwrap();
    }
    flow.flush().await.unwrap();
    // The stages around it still answer.
    assert_eq!(flow.call_add(Ask::Seen).await.unwrap(), 5);
    assert_eq!(flow.call_pass(Ask::Seen).await.unwrap(), 0);
    within(flow.shutdown()).await;
    assert!(output.collect::<Vec<u64>>().await.is_empty());
    let mul = flow.metrics().stage("mul").unwrap();
    assert_eq!((mul.received, mul.failed, mul.emitted), (5, 5, 0));
}

/// Holds each item until the test releases it.
struct Gate<R> {
    permits: Arc<Semaphore>,
    _registry: PhantomData<R>,
}

impl GenServer for Gate<Gated> {
    type Message = ();
    type Response = ();
    type Registry = Gated;
    fn new(registry: Gated) -> Self {
        Gate { permits: registry.permits.clone(), _registry: PhantomData }
    }
    async fn handle_call(&mut self, (): ()) {}
    async fn handle_cast(&mut self, (): ()) {}
}

impl Stage for Gate<Gated> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.permits.acquire().await.unwrap().forget();
        out.emit(x).await;
    }
}

/// Passes items on, casting 1 to `mul` for each.
struct CastingPass {
    registry: Gated,
}

impl GenServer for CastingPass {
    type Message = ();
    type Response = ();
    type Registry = Gated;
    fn new(registry: Gated) -> Self {
        CastingPass { registry }
    }
    async fn handle_call(&mut self, (): ()) {}
    async fn handle_cast(&mut self, (): ()) {}
}

impl Stage for CastingPass {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.registry.cast_mul(Ask::Casts(1)).await.unwrap();
        out.emit(x).await;
    }
}

#[genflow::pipeline{ gate: Gate<Gated>, add: CastingPass, #[fused] mul: Mul<Gated>, #[fused] pass: Pass<Gated> }]
struct Gated {
    permits: Arc<Semaphore>,
}

#[tokio::test]
async fn calls_and_casts_to_fused_stages_are_answered_while_items_flow() {
    const N: u64 = 2_000;
    let permits = Arc::new(Semaphore::new(0));
    let flow = Gated::start(permits.clone()).await;
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let feeding = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(0..N)).await }
    });
    // Five items through, one at a time (the gate sends each on after its
    // wait); the group then waits for more, the input stays open.
    for k in 1..=5 {
        eventually(|| flow.metrics().stage("gate").unwrap().received > 0).await;
        permits.add_permits(1);
        eventually(|| flow.metrics().stage("pass").unwrap().emitted == k).await;
    }
    assert_eq!(flow.call_mul(Ask::Seen).await.unwrap(), 5);
    assert_eq!(flow.call_pass(Ask::Seen).await.unwrap(), 5);
    // One cast per item from the stage before `mul`, in the same task.
    assert_eq!(flow.call_mul(Ask::Casts(0)).await.unwrap(), 5);
    flow.cast_pass(Ask::Casts(7)).await.unwrap();
    assert_eq!(flow.call_pass(Ask::Casts(0)).await.unwrap(), 7);
    // The rest, with calls made while they flow.
    permits.add_permits(N as usize - 5);
    let mut last = 0;
    loop {
        let seen = flow.call_pass(Ask::Seen).await.unwrap();
        assert!(seen >= last, "{seen} < {last}");
        last = seen;
        if seen == N {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(within(feeding).await.unwrap().unwrap(), N as usize);
    flow.flush().await.unwrap();
    assert_eq!(flow.call_mul(Ask::Casts(0)).await.unwrap(), N);
    within(flow.shutdown()).await;
    let out = within(reading).await.unwrap();
    assert_eq!(out, (0..N).map(|x| x * 3).collect::<Vec<_>>());
}

#[tokio::test]
async fn items_sent_into_a_fused_stage_are_processed() {
    let flow = Chain::start().await;
    let output = flow.output().unwrap();
    let mut into_mul = flow.sink_mul();
    into_mul.send(100).await.unwrap();
    flow.flush().await.unwrap();
    assert_eq!(flow.call_mul(Ask::Seen).await.unwrap(), 1);
    assert_eq!(flow.call_add(Ask::Seen).await.unwrap(), 0);
    flow.send(1).await.unwrap();
    into_mul.send(200).await.unwrap();
    within(flow.shutdown()).await;
    let mut out: Vec<u64> = output.collect().await;
    out.sort_unstable();
    assert_eq!(out, vec![6, 300, 600]);
    let mul = flow.metrics().stage("mul").unwrap();
    assert_eq!((mul.received, mul.emitted, mul.queued), (3, 3, 0));
    // Closed with the rest after shutdown.
    assert!(into_mul.send(1).await.is_err());
}

#[tokio::test]
async fn flush_returns_once_items_left_the_group() {
    const N: u64 = 1_000;
    for round in 0..3 {
        let flow = Middle::start().await;
        let output = flow.output().unwrap();
        let reading = tokio::spawn(output.take(N as usize).collect::<Vec<_>>());
        flow.feed(stream::iter(0..N)).await.unwrap();
        within(flow.flush()).await.unwrap();
        // After the flush every item was processed by every stage.
        assert_eq!(flow.call_add(Ask::Seen).await.unwrap(), N, "round {round}");
        assert_eq!(flow.call_pass(Ask::Seen).await.unwrap(), N, "round {round}");
        assert_eq!(flow.call_mul(Ask::Seen).await.unwrap(), N, "round {round}");
        let out = within(reading).await.unwrap();
        assert_eq!(out, (0..N).map(|x| (x + 1) * 3).collect::<Vec<_>>());
        flow.shutdown().await;
    }
}

/// A stage that writes what it does to the pipeline's log.
struct Logger<const ID: u8> {
    log: Arc<Mutex<Vec<String>>>,
}

impl<const ID: u8> Logger<ID> {
    fn write(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }
}

impl<const ID: u8> GenServer for Logger<ID> {
    type Message = ();
    type Response = ();
    type Registry = Logged;
    fn new(registry: Logged) -> Self {
        Logger { log: registry.log.clone() }
    }
    async fn handle_call(&mut self, (): ()) {}
    async fn handle_cast(&mut self, (): ()) {}
    async fn terminate(&mut self) {
        self.write(format!("terminate {ID}"));
    }
}

impl<const ID: u8> Stage for Logger<ID> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.write(format!("{ID} got {x}"));
        out.emit(x).await;
    }
    async fn finish(&mut self, out: &mut Emitter<u64>) {
        self.write(format!("finish {ID}"));
        out.emit(100 + u64::from(ID)).await;
    }
}

#[genflow::pipeline{ a: Logger<1>, #[fused] b: Logger<2>, #[fused] c: Logger<3> }]
struct Logged {
    log: Arc<Mutex<Vec<String>>>,
}

#[tokio::test]
async fn shutdown_drains_a_fused_group_in_order() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let flow = Logged::start(log.clone()).await;
    let output = flow.output().unwrap();
    flow.send(1).await.unwrap();
    let mut into_b = flow.sink_b();
    into_b.send(50).await.unwrap();
    within(flow.shutdown()).await;
    let out: Vec<u64> = output.collect().await;
    let log = log.lock().unwrap().clone();
    let at = |line: &str| log.iter().position(|l| l == line).unwrap_or_else(|| panic!("{line} in {log:?}"));
    // Every input, then `a`'s finish, its output through `b`, `b`'s own
    // input before, `b`'s finish, both outputs through `c`, `c`'s finish.
    assert!(at("1 got 1") < at("finish 1"), "{log:?}");
    assert!(at("2 got 50") < at("finish 2"), "{log:?}");
    assert!(at("finish 1") < at("2 got 101"), "{log:?}");
    assert!(at("2 got 101") < at("finish 2"), "{log:?}");
    assert!(at("3 got 101") < at("3 got 102"), "{log:?}");
    assert!(at("finish 2") < at("3 got 102"), "{log:?}");
    assert!(at("3 got 102") < at("finish 3"), "{log:?}");
    // A fused stage terminates after its finish; the group's first stage last.
    assert!(at("finish 3") < at("terminate 3"), "{log:?}");
    assert!(at("terminate 3") < at("terminate 2"), "{log:?}");
    assert!(at("terminate 2") < at("terminate 1"), "{log:?}");
    assert_eq!(out.iter().filter(|&&x| x >= 100).copied().collect::<Vec<_>>(), vec![101, 102, 103]);
    let mut items: Vec<_> = out.iter().filter(|&&x| x < 100).copied().collect();
    items.sort_unstable();
    assert_eq!(items, vec![1, 50]);
}

/// Never returns from `process` for item 50; passes the others on.
struct Hold<R>(PhantomData<R>);

impl<R: Clone + Send + Sync + 'static> GenServer for Hold<R> {
    type Message = ();
    type Response = ();
    type Registry = R;
    fn new(_: R) -> Self {
        Hold(PhantomData)
    }
    async fn handle_call(&mut self, (): ()) {}
    async fn handle_cast(&mut self, (): ()) {}
    fn channel_queue_size() -> usize {
        8
    }
}

impl<R: Clone + Send + Sync + 'static> Stage for Hold<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        if x == 50 {
            std::future::pending::<()>().await;
        }
        out.emit(x).await;
    }
}

#[genflow::pipeline{ a: Add<Held>, #[fused] b: Pass<Held>, #[fused] c: Hold<Held>, d: Pass<Held> }]
struct Held;

/// Asserts the identities that hold once an aborted pipeline has stopped;
/// `sent_into` counts the items sent straight into each stage.
fn assert_settled(m: &Metrics, sent_into: &[u64]) {
    for s in m.stages() {
        assert_eq!(s.received, s.processed + s.aborted, "{}: received = processed + aborted\n{m}", s.name);
        assert_eq!(s.queued, 0, "{}: nothing queued\n{m}", s.name);
    }
    for (pair, sent) in m.stages().windows(2).zip(&sent_into[1..]) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(
            a.emitted + sent,
            b.received + a.dropped,
            "{} emitted + sent into {} = received + dropped\n{m}",
            a.name,
            b.name
        );
    }
}

#[tokio::test]
async fn abort_accounts_for_every_item_of_a_fused_group() {
    let flow = Held::start().await;
    let output = flow.output().unwrap();
    let mut into_c = flow.sink_c();
    into_c.send(7).await.unwrap();
    // 49 + 1 = 50 is held by `c`; the rest of its batch, `a`'s queue and
    // whatever `c`'s own queue holds wait behind it.
    let feeding = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(0..1_000)).await }
    });
    eventually(|| {
        let m = flow.metrics();
        m.stage("a").unwrap().queued == m.stage("a").unwrap().capacity
    })
    .await;
    into_c.send(8).await.unwrap();
    flow.abort();
    within(flow.shutdown()).await;
    drop(feeding);
    let m = flow.metrics();
    assert_settled(&m, &[1_000, 0, 2, 0]);
    let c = m.stage("c").unwrap();
    assert!(c.aborted >= 1, "{m}");
    drop(output);
}

#[genflow::pipeline{ a: Add<Builders>, #[fused] b: Pass<Builders>, c: Mul<Builders> }]
struct Builders;

#[tokio::test]
async fn the_builder_keeps_fused_stages_to_one_replica() {
    let error = Builders::builder().replicas("b", 2).start().await.err().expect("a config error");
    assert_eq!(error, ConfigError::FusedReplicas { stage: "b", replicas: 2, fused: "b" });
    assert!(error.to_string().contains("`b` was given 2 replicas"), "{error}");
    let error = Builders::builder().replicas("a", 3).start().await.err().expect("a config error");
    assert_eq!(error, ConfigError::FusedReplicas { stage: "a", replicas: 3, fused: "b" });
    assert!(error.to_string().contains("`#[fused]` stage `b`"), "{error}");
    // One replica is fine, and so is any count on a stage outside the group.
    let flow = Builders::builder().replicas("a", 1).replicas("c", 3).start().await.unwrap();
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    flow.feed(stream::iter(0..100)).await.unwrap();
    within(flow.shutdown()).await;
    let mut out = reading.await.unwrap();
    out.sort_unstable();
    assert_eq!(out, (0..100).map(|x| (x + 1) * 3).collect::<Vec<_>>());
}

/// Passes each item on after `MS` milliseconds of (paused) time.
struct Slow<R, const MS: u64>(PhantomData<R>);

impl<R: Clone + Send + Sync + 'static, const MS: u64> GenServer for Slow<R, MS> {
    type Message = ();
    type Response = ();
    type Registry = R;
    fn new(_: R) -> Self {
        Slow(PhantomData)
    }
    async fn handle_call(&mut self, (): ()) {}
    async fn handle_cast(&mut self, (): ()) {}
}

impl<R: Clone + Send + Sync + 'static, const MS: u64> Stage for Slow<R, MS> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        if MS > 0 {
            tokio::time::sleep(Duration::from_millis(MS)).await;
        }
        out.emit(x).await;
    }
}

#[genflow::pipeline{ head: Slow<Timed, 0>, #[fused] mid: Slow<Timed, 2>, #[fused] tail: Slow<Timed, 3> }]
struct Timed;

/// A fused stage's batch is timed from the instant the stage before it
/// handed the batch over to the instant it was done, less the time of the
/// fused stages after it; the stage before it is not busy meanwhile. So
/// each stage of the group is busy exactly for its own work.
#[tokio::test(start_paused = true)]
async fn each_stage_of_a_fused_group_is_busy_for_its_own_work_only() {
    const N: u64 = 100;
    let flow = Timed::start().await;
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    assert_eq!(flow.feed(stream::iter(0..N)).await.unwrap(), N as usize);
    within(flow.shutdown()).await;
    assert_eq!(reading.await.unwrap(), (0..N).collect::<Vec<_>>());
    let m = flow.metrics();
    let busy = |name: &str| m.stage(name).unwrap().busy;
    assert_eq!(busy("head"), Duration::ZERO, "{m}");
    assert_eq!(busy("mid"), Duration::from_millis(2 * N), "{m}");
    assert_eq!(busy("tail"), Duration::from_millis(3 * N), "{m}");
    for name in ["head", "mid", "tail"] {
        assert_eq!(m.stage(name).unwrap().blocked, Duration::ZERO, "{name}\n{m}");
    }
}
