//! The item loop's counts (kept per poll, written to the replica's
//! progress when a poll returns) and hand-overs of `HANDOVER` (512) items
//! into fused stages: exact metrics and outputs for inputs around 511, 512,
//! 513, 1024 and 1025 items, unfused and fused, with items panicking,
//! failing or awaiting at the edges of a batch; calls and casts served
//! between two items of a 512-item batch (on the loop's fast path and
//! after an item that waited), to the stage at work and to a fused stage,
//! seeing `processed` equal to the items done; `abort` while an item
//! waits in the middle of a batch, in the first stage, in a fused stage,
//! and on the one-item path of `#[concurrency]` and `#[rate_limit]` stages;
//! `flush` around hand-over sizes; `abort` while a failed item waits for
//! room in the failures buffer; and a `process` future whose `Drop`
//! panics, dropped once.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture, stream};
use genflow::{Emitter, GenServer, Metrics, Pipeline, Stage};
use tokio::sync::{Semaphore, mpsc};

#[path = "support/quiet.rs"]
mod quiet;
#[path = "support/wait.rs"]
mod wait;
use wait::{DEADLINE, eventually_named as eventually, within_named as within};

const HANDOVER: u64 = genflow::pipeline::HANDOVER as u64;

/// The marker of every expected panic of this binary.
const MARK: &str = "expected item-loop panic";

fn quiet_panics() {
    quiet::quiet_panics(MARK);
}

// ---------------------------------------------------------------------------
// One configurable stage.

/// What a stage does with its inputs, by input value.
#[derive(Clone, Default)]
struct Plan {
    /// `process` panics (emitting nothing).
    panic_at: Vec<u64>,
    /// `process` emits the item, then fails it.
    fail_at: Vec<u64>,
    /// From this input on, every input fails (after emitting).
    fail_from: Option<u64>,
    /// `process` yields once (returns `Pending`) first.
    yield_at: Vec<u64>,
    /// `process` waits for a permit of [`Cfg::gate`] first.
    gate_at: Option<u64>,
    /// From this input on, `process` yields once, reports `(stage, x)` on
    /// [`Cfg::reached`], then waits for a permit of [`Cfg::permits`].
    stall_from: Option<u64>,
    /// `process` reports `(stage, x)` on [`Cfg::reached`] and blocks its
    /// thread until the test sends on the handshake's `go`.
    block_at: Vec<u64>,
    /// `process` never returns (sets [`Cfg::hung`]).
    hang_at: Option<u64>,
}

impl Plan {
    fn panics(&self, x: u64) -> bool {
        self.panic_at.contains(&x)
    }

    fn fails(&self, x: u64) -> bool {
        !self.panics(x) && (self.fail_at.contains(&x) || self.fail_from.is_some_and(|s| x >= s))
    }
}

/// What the stages of a pipeline share with the test.
struct Cfg {
    /// Stage `a`'s plan, `b`'s, `c`'s.
    plans: [Plan; 3],
    gate: Semaphore,
    permits: Semaphore,
    hung: AtomicBool,
    /// The highest input `process` started on, per stage.
    last: [AtomicU64; 3],
    reached: mpsc::UnboundedSender<(usize, u64)>,
    go: Mutex<std::sync::mpsc::Receiver<()>>,
    /// What casts of `Ask::Record` saw: (stage, items seen, processed).
    records: Mutex<Vec<(usize, u64, u64)>>,
}

/// The test's ends of [`Cfg::reached`] and of the `go` handshake.
struct Ends {
    reached: mpsc::UnboundedReceiver<(usize, u64)>,
    go: std::sync::mpsc::Sender<()>,
}

impl Ends {
    async fn reached(&mut self) -> (usize, u64) {
        within("a stage to report", self.reached.recv()).await.expect("a stage reports")
    }

    fn go(&self) {
        self.go.send(()).unwrap();
    }
}

fn cfg(a: Plan, b: Plan, c: Plan) -> (Arc<Cfg>, Ends) {
    let (reached, reached_rx) = mpsc::unbounded_channel();
    let (go_tx, go) = std::sync::mpsc::channel();
    let cfg = Cfg {
        plans: [a, b, c],
        gate: Semaphore::new(0),
        permits: Semaphore::new(0),
        hung: AtomicBool::new(false),
        last: Default::default(),
        reached,
        go: Mutex::new(go),
        records: Mutex::new(Vec::new()),
    };
    (Arc::new(cfg), Ends { reached: reached_rx, go: go_tx })
}

const NAMES: [&str; 3] = ["a", "b", "c"];

/// What the test needs of a pipeline beyond [`Pipeline`]: its config, and
/// the generated per-stage methods by stage index.
trait Reg: Pipeline<In = u64, Out = u64> {
    fn cfg(&self) -> &Cfg;
    fn call(&self, stage: usize) -> BoxFuture<'_, (u64, u64)>;
    fn cast(&self, stage: usize);
    fn stop_now(&self);
}

macro_rules! reg {
    ($p:ident { $($i:literal => $call:ident, $cast:ident;)* }) => {
        impl Reg for $p {
            fn cfg(&self) -> &Cfg {
                &self.cfg
            }
            fn call(&self, stage: usize) -> BoxFuture<'_, (u64, u64)> {
                match stage {
                    $($i => Box::pin(async move { self.$call(Ask::Seen).await.unwrap() }),)*
                    _ => unreachable!(),
                }
            }
            fn cast(&self, stage: usize) {
                match stage {
                    $($i => self.$cast(Ask::Record).unwrap(),)*
                    _ => unreachable!(),
                }
            }
            fn stop_now(&self) {
                self.abort();
            }
        }
    };
}

#[derive(Clone, Debug)]
enum Ask {
    /// A call: (items seen, the stage's `processed` in the metrics).
    Seen,
    /// A cast: records `Seen`'s answer in [`Cfg::records`].
    Record,
}

/// Stage `ID` (0: `a`, 1: `b`, 2: `c`) of pipeline `R`: passes its inputs
/// on, as its [`Plan`] says.
struct Step<R, const ID: usize> {
    reg: R,
    seen: u64,
}

impl<R: Reg, const ID: usize> Step<R, ID> {
    fn now(&self) -> (u64, u64) {
        (self.seen, self.reg.metrics().stage(NAMES[ID]).unwrap().processed)
    }
}

impl<R: Reg, const ID: usize> GenServer for Step<R, ID> {
    type Message = Ask;
    type Response = (u64, u64);
    type Registry = R;
    fn new(reg: R) -> Self {
        Step { reg, seen: 0 }
    }
    async fn handle_call(&mut self, _: Ask) -> (u64, u64) {
        self.now()
    }
    async fn handle_cast(&mut self, ask: Ask) {
        if let Ask::Record = ask {
            let (seen, processed) = self.now();
            self.reg.cfg().records.lock().unwrap().push((ID, seen, processed));
        }
    }
    fn channel_queue_size() -> usize {
        4096
    }
}

impl<R: Reg, const ID: usize> Stage for Step<R, ID> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        let cfg = self.reg.cfg();
        let plan = &cfg.plans[ID];
        cfg.last[ID].fetch_max(x, Ordering::SeqCst);
        if plan.gate_at == Some(x) {
            cfg.gate.acquire().await.unwrap().forget();
        }
        if plan.block_at.contains(&x) {
            cfg.reached.send((ID, x)).unwrap();
            // Longer than the test's own deadline: the test fails first.
            let _ = cfg.go.lock().unwrap().recv_timeout(2 * DEADLINE);
        }
        if plan.yield_at.contains(&x) {
            tokio::task::yield_now().await;
        }
        if plan.stall_from.is_some_and(|s| x >= s) {
            // Waited for sure (the yield), whenever the permit comes.
            tokio::task::yield_now().await;
            cfg.reached.send((ID, x)).unwrap();
            cfg.permits.acquire().await.unwrap().forget();
        }
        if plan.hang_at == Some(x) {
            cfg.hung.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        if plan.panics(x) {
            panic!("{MARK}: stage {ID} on {x}");
        }
        out.emit(x).await;
        if plan.fails(x) {
            out.fail(format!("stage {ID} fails {x}"));
        }
    }
}

// ---------------------------------------------------------------------------
// The pipelines.

type A<R> = Step<R, 0>;
type B<R> = Step<R, 1>;
type C<R> = Step<R, 2>;

#[genflow::pipeline{ a: A<Unfused>, b: B<Unfused>, c: C<Unfused> }]
struct Unfused {
    cfg: Arc<Cfg>,
}
reg!(Unfused { 0 => call_a, try_cast_a; 1 => call_b, try_cast_b; 2 => call_c, try_cast_c; });

#[genflow::pipeline{ a: A<Fused>, #[fused] b: B<Fused>, c: C<Fused> }]
struct Fused {
    cfg: Arc<Cfg>,
}
reg!(Fused { 0 => call_a, try_cast_a; 1 => call_b, try_cast_b; 2 => call_c, try_cast_c; });

#[genflow::pipeline{ a: A<FusedAll>, #[fused] b: B<FusedAll>, #[fused] c: C<FusedAll> }]
struct FusedAll {
    cfg: Arc<Cfg>,
}
reg!(FusedAll { 0 => call_a, try_cast_a; 1 => call_b, try_cast_b; 2 => call_c, try_cast_c; });

#[genflow::pipeline{ #[concurrency(4)] a: A<Conc>, #[fused] b: B<Conc>, c: C<Conc> }]
struct Conc {
    cfg: Arc<Cfg>,
}
reg!(Conc { 0 => call_a, try_cast_a; 1 => call_b, try_cast_b; 2 => call_c, try_cast_c; });

#[genflow::pipeline{ a: A<ConcFused>, #[fused] #[concurrency(4)] b: B<ConcFused>, c: C<ConcFused> }]
struct ConcFused {
    cfg: Arc<Cfg>,
}
reg!(ConcFused { 0 => call_a, try_cast_a; 1 => call_b, try_cast_b; 2 => call_c, try_cast_c; });

#[genflow::pipeline{
    #[rate_limit(1_000_000, per = Duration::from_secs(1))] a: A<Rated>,
    #[fused] b: B<Rated>,
    c: C<Rated>
}]
struct Rated {
    cfg: Arc<Cfg>,
}
reg!(Rated { 0 => call_a, try_cast_a; 1 => call_b, try_cast_b; 2 => call_c, try_cast_c; });

#[genflow::pipeline{ a: A<Alone> }]
struct Alone {
    cfg: Arc<Cfg>,
}
reg!(Alone { 0 => call_a, try_cast_a; });

// ---------------------------------------------------------------------------
// The model.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    received: u64,
    processed: u64,
    failed: u64,
    emitted: u64,
    panics: u64,
}

/// Each stage's (received, processed, failed, emitted) in `m` are those
/// of `counts`, stage by stage.
fn assert_counts(m: &Metrics, counts: &[Counts], what: &str) {
    for (name, c) in NAMES.iter().zip(counts) {
        let s = m.stage(name).unwrap();
        assert_eq!(
            (s.received, s.processed, s.failed, s.emitted),
            (c.received, c.processed, c.failed, c.emitted),
            "{what}, stage {name}: (received, processed, failed, emitted)\n{m}"
        );
    }
}

/// The outputs and each stage's counts when `inputs` go through `stages`
/// stages planned as `plans`.
fn model(plans: &[Plan; 3], stages: usize, inputs: &[u64]) -> (Vec<u64>, Vec<Counts>) {
    let mut items = inputs.to_vec();
    let mut counts = Vec::new();
    for plan in &plans[..stages] {
        let mut c = Counts::default();
        let mut next = Vec::new();
        for &x in &items {
            c.received += 1;
            c.processed += 1;
            if plan.panics(x) {
                c.failed += 1;
                c.panics += 1;
            } else {
                next.push(x);
                c.emitted += 1;
                if plan.fails(x) {
                    c.failed += 1;
                }
            }
        }
        counts.push(c);
        items = next;
    }
    (items, counts)
}

/// Sends input 0, which `a` holds (its plan must gate it) until inputs
/// `1..=n` wait in its queue, then lets it go: `a`'s next batch is
/// `1..=min(n, max_demand)`, so an input's place in it is known.
async fn feed_gated<P: Reg>(flow: &P, n: u64) {
    assert_eq!(flow.cfg().plans[0].gate_at, Some(0), "a gated plan");
    within("send 0", flow.send(0)).await.unwrap();
    eventually("input 0 in process", || flow.metrics().stage("a").unwrap().received == 1).await;
    assert_eq!(within("feed", flow.feed(stream::iter(1..=n))).await.unwrap() as u64, n);
    eventually("inputs queued", || flow.metrics().stage("a").unwrap().queued == n).await;
    flow.cfg().gate.add_permits(1);
}

/// Feeds `0..=n` through `flow` gated (or `0..n` not), shuts down, and
/// checks the outputs (in order) and every count of its first `stages`
/// stages against the model.
async fn run_exact<P: Reg>(flow: P, n: u64, stages: usize, gated: bool, what: &str) -> Metrics {
    quiet_panics();
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let failing = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
    let inputs: Vec<u64> = if gated { (0..=n).collect() } else { (0..n).collect() };
    if gated {
        feed_gated(&flow, n).await;
    } else {
        within("feed", flow.feed(stream::iter(inputs.clone()))).await.unwrap();
    }
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let failures = within("failures", failing).await.unwrap();
    let m = flow.metrics();
    let (want, counts) = model(&flow.cfg().plans, stages, &inputs);
    assert_eq!(got.len(), want.len(), "{what}, n = {n}: output length\n{m}");
    assert!(got == want, "{what}, n = {n}: outputs exactly, in order\n{m}");
    assert_counts(&m, &counts, &format!("{what}, n = {n}"));
    for (i, c) in counts.iter().enumerate() {
        let s = m.stage(NAMES[i]).unwrap();
        assert_eq!((s.aborted, s.dropped, s.queued, s.in_flight), (0, 0, 0, 0), "{what}, n = {n}, {}\n{m}", NAMES[i]);
        let by_stage = failures.iter().filter(|f| f.stage() == NAMES[i]).count() as u64;
        assert_eq!(by_stage, c.failed, "{what}, n = {n}, {}: failures\n{m}", NAMES[i]);
        let panics = failures.iter().filter(|f| f.stage() == NAMES[i] && f.is_panic()).count() as u64;
        assert_eq!(panics, c.panics, "{what}, n = {n}, {}: panics\n{m}", NAMES[i]);
    }
    m
}

/// Sizes around one and two hand-overs.
const SIZES: [u64; 5] = [511, 512, 513, 1024, 1025];

/// Gated, `a`'s batches are `[0]`, `1..=512`, `513..=1024`, `1025`: events
/// at the first, second, last and next-to-last places of those batches,
/// and at the edges of batches of 32.
fn busy_plans() -> [Plan; 3] {
    let a = Plan {
        gate_at: Some(0),
        panic_at: vec![1, 2, 32, 33, 512, 513, 1024, 1025],
        fail_at: vec![3, 511, 514, 1023],
        yield_at: vec![5, 256, 510, 600, 1000],
        ..Plan::default()
    };
    let b = Plan { panic_at: vec![4, 31, 509, 515], fail_at: vec![6, 700], yield_at: vec![7, 508], ..Plan::default() };
    let c = Plan { panic_at: vec![8, 1022], fail_at: vec![9], ..Plan::default() };
    [a, b, c]
}

/// Only panics at the edges, nothing awaits: every other item stays on the
/// loop's fast path.
fn calm_plans() -> [Plan; 3] {
    let a = Plan { gate_at: Some(0), panic_at: vec![1, 512, 1024], ..Plan::default() };
    let b = Plan { panic_at: vec![2, 511, 513], ..Plan::default() };
    let c = Plan { panic_at: vec![3, 1025], ..Plan::default() };
    [a, b, c]
}

fn plans_cfg(plans: [Plan; 3]) -> Arc<Cfg> {
    let [a, b, c] = plans;
    cfg(a, b, c).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_around_hand_over_sizes_unfused() {
    for n in SIZES {
        for plans in [busy_plans(), calm_plans()] {
            let flow = Unfused::start(plans_cfg(plans.clone())).await;
            run_exact(flow, n, 3, true, "unfused, max_demand 32").await;
            let flow = Unfused::builder(plans_cfg(plans.clone())).max_demand("a", 512).start().await.unwrap();
            run_exact(flow, n, 3, true, "unfused, max_demand 512").await;
            let flow = Unfused::builder(plans_cfg(plans)).max_demand("a", 1024).start().await.unwrap();
            run_exact(flow, n, 3, true, "unfused, max_demand 1024").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_around_hand_over_sizes_fused() {
    for n in SIZES {
        for plans in [busy_plans(), calm_plans()] {
            run_exact(Fused::start(plans_cfg(plans.clone())).await, n, 3, true, "a, fused b, c").await;
            run_exact(FusedAll::start(plans_cfg(plans.clone())).await, n, 3, true, "a, fused b, fused c").await;
            // Not gated: batches as they come.
            let mut ungated = plans.clone();
            ungated[0].gate_at = None;
            run_exact(FusedAll::start(plans_cfg(ungated)).await, n, 3, false, "fused, ungated").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_on_the_one_item_path() {
    for n in [1, 4, 5, 511, 512, 513, 1025] {
        for plans in [busy_plans(), calm_plans()] {
            run_exact(Conc::start(plans_cfg(plans.clone())).await, n, 3, true, "concurrency(4) a, fused b").await;
            run_exact(ConcFused::start(plans_cfg(plans.clone())).await, n, 3, true, "a, fused concurrency(4) b").await;
            run_exact(Rated::start(plans_cfg(plans)).await, n, 3, true, "rate-limited a, fused b").await;
        }
    }
}

// ---------------------------------------------------------------------------
// Calls and casts between two items of a 512-item batch.

/// Polls `call` once, which queues it (its queue has room), and returns it.
async fn queued(mut call: BoxFuture<'_, (u64, u64)>) -> BoxFuture<'_, (u64, u64)> {
    assert!(futures::poll!(call.as_mut()).is_pending(), "no answer while the stage is blocked");
    call
}

/// `a` blocks its thread on inputs 100 and 300 of its 512-item batch
/// (`1..=512`, after `[0]`); a cast and a call to `a` made while it is
/// blocked on 100 are served right after it, seeing 101 items seen and
/// processed, before `a` reaches 300. With `fused_b`, the same for `b`,
/// which has only input 0 so far; then `b` blocks on its input 400 of the
/// hand-over of 512, and is served right after it too.
async fn calls_mid_batch<P: Reg>(flow: P, mut ends: Ends, fused_b: bool) {
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    feed_gated(&flow, HANDOVER).await;
    assert_eq!(ends.reached().await, (0, 100));
    flow.cast(0);
    let call_a = queued(flow.call(0)).await;
    let call_b = if fused_b {
        flow.cast(1);
        Some(queued(flow.call(1)).await)
    } else {
        None
    };
    ends.go();
    // `a` blocks again on 300: answered before, or never.
    assert_eq!(within("call a, between items 100 and 101", call_a).await, (101, 101), "{}", flow.metrics());
    if let Some(call_b) = call_b {
        assert_eq!(within("call b, between a's items 100 and 101", call_b).await, (1, 1), "{}", flow.metrics());
    }
    assert_eq!(ends.reached().await, (0, 300));
    let mut want = vec![(0, 101, 101)];
    if fused_b {
        want.push((1, 1, 1));
    }
    let mut records = flow.cfg().records.lock().unwrap().clone();
    records.sort_unstable();
    assert_eq!(records, want, "casts served right after item 100\n{}", flow.metrics());
    ends.go();
    if fused_b {
        // `b` takes the hand-over of 512 and blocks on 400.
        assert_eq!(ends.reached().await, (1, 400));
        flow.cast(1);
        let call_b = queued(flow.call(1)).await;
        ends.go();
        assert_eq!(within("call b, between its items 400 and 401", call_b).await, (401, 401), "{}", flow.metrics());
        // It blocks again on 500.
        assert_eq!(ends.reached().await, (1, 500));
        let last = flow.cfg().records.lock().unwrap().last().copied();
        assert_eq!(last, Some((1, 401, 401)));
        ends.go();
    }
    within("flush", flow.flush()).await.unwrap();
    assert_eq!(within("call a after the batch", flow.call(0)).await, (513, 513));
    within("shutdown", flow.shutdown()).await;
    assert_eq!(within("output", reading).await.unwrap(), (0..=HANDOVER).collect::<Vec<_>>());
    let m = flow.metrics();
    for name in NAMES {
        let s = m.stage(name).unwrap();
        assert_eq!((s.received, s.processed, s.emitted, s.failed, s.aborted), (513, 513, 513, 0, 0), "{name}\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_casts_between_items_of_a_512_batch_unfused() {
    let a = Plan { gate_at: Some(0), block_at: vec![100, 300], ..Plan::default() };
    let (cfg, ends) = cfg(a, Plan::default(), Plan::default());
    let flow = Unfused::builder(cfg).max_demand("a", 512).start().await.unwrap();
    calls_mid_batch(flow, ends, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_casts_between_items_of_a_512_batch_fused() {
    let a = Plan { gate_at: Some(0), block_at: vec![100, 300], ..Plan::default() };
    let b = Plan { block_at: vec![400, 500], ..Plan::default() };
    let (cfg, ends) = cfg(a, b, Plan::default());
    calls_mid_batch(Fused::start(cfg).await, ends, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_casts_between_items_of_a_512_batch_all_fused() {
    let a = Plan { gate_at: Some(0), block_at: vec![100, 300], ..Plan::default() };
    let b = Plan { block_at: vec![400, 500], ..Plan::default() };
    let (cfg, ends) = cfg(a, b, Plan::default());
    calls_mid_batch(FusedAll::start(cfg).await, ends, true).await;
}

/// The identities that hold once an aborted pipeline has stopped.
fn assert_settled(m: &Metrics) {
    for s in m.stages() {
        assert_eq!(s.received, s.processed + s.aborted, "{}: received = processed + aborted\n{m}", s.name);
        assert_eq!(s.queued, 0, "{}: nothing queued\n{m}", s.name);
        assert!(s.failed <= s.processed, "{}\n{m}", s.name);
    }
    for pair in m.stages().windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(a.emitted, b.received + a.dropped, "{} emitted = {} received + dropped\n{m}", a.name, b.name);
    }
}

/// From input 200 on, each of `a`'s items yields, then waits for a permit:
/// a call to `a` and one to the fused `b`, made while `a` waits on an
/// item, are served once that item is done (`a` seeing it processed), in
/// the middle of `a`'s batch. Then `abort` while `a` waits on input 203:
/// every count adds up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_between_waiting_items_then_abort_mid_wait() {
    quiet_panics();
    for fused_all in [false, true] {
        let a = Plan {
            gate_at: Some(0),
            stall_from: Some(200),
            yield_at: vec![10, 50],
            panic_at: vec![20, 150],
            fail_at: vec![30],
            ..Plan::default()
        };
        let (cfg, mut ends) = cfg(a, Plan::default(), Plan::default());
        if fused_all {
            waiting_items_then_abort(FusedAll::start(cfg).await, &mut ends).await;
        } else {
            waiting_items_then_abort(Fused::start(cfg).await, &mut ends).await;
        }
    }
}

async fn waiting_items_then_abort<P: Reg>(flow: P, ends: &mut Ends) {
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    feed_gated(&flow, HANDOVER).await;
    for x in 200..203 {
        assert_eq!(ends.reached().await, (0, x));
        let call_a = queued(flow.call(0)).await;
        let call_b = queued(flow.call(1)).await;
        flow.cfg().permits.add_permits(1);
        // Inputs 0..=x, of which 20 and 150 panicked in `a`.
        assert_eq!(within("call a", call_a).await, (x + 1, x + 1), "{}", flow.metrics());
        // `b` is served as the hand-over of `a`'s outputs since its last
        // waited item comes, before its items (its mail first): it has
        // what came before, `0..=50` after 50 (less 20), `0..x` after
        // `x - 1` (less 20 and 150).
        let b_has = if x == 200 { 50 } else { x - 2 };
        assert_eq!(within("call b", call_b).await, (b_has, b_has), "{}", flow.metrics());
    }
    assert_eq!(ends.reached().await, (0, 203));
    flow.stop_now();
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let m = flow.metrics();
    assert_settled(&m);
    let a = m.stage("a").unwrap();
    assert_eq!((a.received, a.processed, a.aborted), (513, 203, 310), "a: 0..=202 done, 203 waiting\n{m}");
    assert_eq!((a.failed, a.emitted, a.dropped), (3, 201, 0), "{m}");
    let b = m.stage("b").unwrap();
    assert_eq!((b.received, b.processed, b.aborted, b.failed), (201, 201, 0, 0), "{m}");
    let want: Vec<u64> = (0..203).filter(|&x| x != 20 && x != 150).collect();
    assert!(got.len() <= want.len() && got[..] == want[..got.len()], "{got:?}");
}

/// `b` never returns from its input 300, in the middle of the hand-over of
/// `1..=512` (handed over inside `a`'s `emit` of 512): aborted, `b` counts
/// 300 processed and the rest of the hand-over aborted, `a` its last item
/// (in `process`, in the hand-over) aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_while_a_fused_stage_waits_mid_hand_over() {
    quiet_panics();
    let a = Plan { gate_at: Some(0), yield_at: vec![0], ..Plan::default() };
    let b = Plan { hang_at: Some(300), panic_at: vec![5, 299], fail_at: vec![6], ..Plan::default() };
    let (cfg, _ends) = cfg(a, b, Plan::default());
    let flow = Fused::start(cfg).await;
    let _reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    feed_gated(&flow, HANDOVER + 100).await;
    eventually("b waits on 300", || flow.cfg().hung.load(Ordering::SeqCst)).await;
    flow.abort();
    within("shutdown", flow.shutdown()).await;
    let m = flow.metrics();
    assert_settled(&m);
    let a = m.stage("a").unwrap();
    assert_eq!((a.received, a.processed, a.aborted, a.emitted), (613, 512, 101, 513), "{m}");
    let b = m.stage("b").unwrap();
    assert_eq!((b.received, b.processed, b.aborted, b.failed), (513, 300, 213, 3), "{m}");
}

/// The one-item path (`#[concurrency(4)]`, `#[rate_limit]`): `process`
/// never returns from input 300 of `a`, or of a fused `#[concurrency(4)]`
/// `b`; aborted, the counts of the stage are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_while_an_item_waits_on_the_one_item_path() {
    quiet_panics();
    const N: u64 = 1000;
    let hang_a = || Plan { hang_at: Some(300), panic_at: vec![0, 1, 299], yield_at: vec![2, 3, 50], ..Plan::default() };
    let check = |m: &Metrics, stage: &str, received: u64| {
        assert_settled(m);
        let s = m.stage(stage).unwrap();
        assert_eq!((s.received, s.processed, s.aborted, s.failed), (received, 300, received - 300, 3), "{stage}\n{m}");
    };
    for which in 0..3 {
        let (cfg, _ends) = match which {
            0 | 1 => cfg(hang_a(), Plan::default(), Plan::default()),
            _ => cfg(Plan::default(), hang_a(), Plan::default()),
        };
        let m = match which {
            0 => abort_on_hang(Conc::start(cfg).await, N).await,
            1 => abort_on_hang(Rated::start(cfg).await, N).await,
            _ => abort_on_hang(ConcFused::start(cfg).await, N).await,
        };
        if which < 2 {
            check(&m, "a", N);
        } else {
            // `b` received what `a` handed over; the rest of `a`'s count
            // is aborted in `a`.
            let received = m.stage("b").unwrap().received;
            assert!(received > 300, "{m}");
            check(&m, "b", received);
        }
    }
}

async fn abort_on_hang<P: Reg>(flow: P, n: u64) -> Metrics {
    let _reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    within("feed", flow.feed(stream::iter(0..n))).await.unwrap();
    eventually("the hanging item", || flow.cfg().hung.load(Ordering::SeqCst)).await;
    flow.stop_now();
    within("shutdown", flow.shutdown()).await;
    flow.metrics()
}

// ---------------------------------------------------------------------------
// `flush` around hand-over sizes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_for_every_item_around_hand_over_sizes() {
    quiet_panics();
    let plans = || {
        let a = Plan { panic_at: vec![511, 1023, 1536], yield_at: vec![600, 2047], ..Plan::default() };
        let b = Plan { panic_at: vec![0, 512], fail_at: vec![513], ..Plan::default() };
        let c = Plan { yield_at: vec![1024], ..Plan::default() };
        [a, b, c]
    };
    for all in [false, true] {
        let cfg = plans_cfg(plans());
        let outputs = Arc::<AtomicU64>::default();
        if all {
            flushes(FusedAll::start(cfg).await, outputs).await;
        } else {
            flushes(Fused::start(cfg).await, outputs).await;
        }
    }
}

async fn flushes<P: Reg>(flow: P, outputs: Arc<AtomicU64>) {
    let reading = tokio::spawn({
        let outputs = outputs.clone();
        flow.output().unwrap().for_each(move |_| {
            outputs.fetch_add(1, Ordering::SeqCst);
            async {}
        })
    });
    let mut total = 0;
    for chunk in [511u64, 1, 512, 513, 1024, 1025, 1] {
        within("feed", flow.feed(stream::iter(total..total + chunk))).await.unwrap();
        total += chunk;
        within("flush", flow.flush()).await.unwrap();
        let m = flow.metrics();
        let inputs: Vec<u64> = (0..total).collect();
        let (want, counts) = model(&flow.cfg().plans, 3, &inputs);
        assert_counts(&m, &counts, &format!("after a flush at {total}"));
        assert_eq!(within("call c", flow.call(2)).await, (counts[2].received, counts[2].processed), "{m}");
        let want = want.len() as u64;
        eventually("the outputs read", || outputs.load(Ordering::SeqCst) == want).await;
    }
    within("shutdown", flow.shutdown()).await;
    within("output", reading).await.unwrap();
}

// ---------------------------------------------------------------------------
// `abort` while a failed item waits for room in the failures buffer.

/// Every input fails; `failures()` is taken and never read, so once the
/// buffer is full the replica waits after an item's `process`, sending its
/// failure. Aborted there, that item is done: it counts as processed (and
/// failed), not also as aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_while_a_failure_waits_for_room_counts_the_item_once() {
    const N: u64 = genflow::pipeline::FAILURES_BUFFER as u64 + 200;
    let (cfg, _ends) = cfg(Plan { fail_from: Some(0), ..Plan::default() }, Plan::default(), Plan::default());
    let flow = Alone::start(cfg).await;
    let _reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let failures = flow.failures().unwrap();
    within("feed", flow.feed(stream::iter(0..N))).await.unwrap();
    eventually("blocked on the failures buffer", || {
        flow.metrics().stage("a").unwrap().failures_blocked > Duration::ZERO
    })
    .await;
    flow.abort();
    within("shutdown", flow.shutdown()).await;
    let m = flow.metrics();
    let a = m.stage("a").unwrap();
    assert_eq!(a.received, N, "{m}");
    assert_eq!(a.received, a.processed + a.aborted, "received = processed + aborted\n{m}");
    assert_eq!(a.failed, a.processed, "every processed item failed\n{m}");
    drop(failures);
}

// ---------------------------------------------------------------------------
// A `process` future whose `Drop` panics once it is done (a hand-written
// future, which the trait's signature allows): the panic fails that one
// item, and the future is dropped once, not a second time by the loop's
// clean-up after the panic.

/// Every `Bomb` dropped, by input.
static BOMB_DROPS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Ready at once; its `Drop` records it, then panics for input 5. It owns
/// a box, as a real future owns its state: dropped twice, the box would
/// be freed twice.
struct Bomb {
    x: u64,
    _state: Box<u64>,
}

impl std::future::Future for Bomb {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Ready(())
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        BOMB_DROPS.lock().unwrap().push(self.x);
        if self.x == 5 {
            panic!("{MARK} in the drop of {}", self.x);
        }
    }
}

struct Bomber<R> {
    _registry: std::marker::PhantomData<R>,
}

impl<R: Clone + Send + Sync + 'static> GenServer for Bomber<R> {
    type Message = ();
    type Response = ();
    type Registry = R;
    fn new(_: R) -> Self {
        Bomber { _registry: std::marker::PhantomData }
    }
    async fn handle_call(&mut self, _: ()) {}
}

impl<R: Clone + Send + Sync + 'static> Stage for Bomber<R> {
    type In = u64;
    type Out = u64;
    fn process(&mut self, x: u64, _: &mut Emitter<u64>) -> impl std::future::Future<Output = ()> + Send {
        Bomb { x, _state: Box::new(x) }
    }
}

#[genflow::pipeline{ bomber: Bomber<Bombs> }]
struct Bombs;

#[genflow::pipeline{ #[rate_limit(1_000_000, per = Duration::from_secs(1))] bomber: Bomber<BombsLimited> }]
struct BombsLimited;

async fn bombs<P: Pipeline<In = u64, Out = u64>>(flow: P) -> Metrics {
    within("feed", flow.feed(stream::iter(0..20))).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    flow.metrics()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_future_whose_drop_panics_is_dropped_once() {
    quiet_panics();
    // One after the other: both record into `BOMB_DROPS`.
    for limited in [false, true] {
        BOMB_DROPS.lock().unwrap().clear();
        let m = if limited { bombs(BombsLimited::start().await).await } else { bombs(Bombs::start().await).await };
        let mut drops = BOMB_DROPS.lock().unwrap().clone();
        drops.sort_unstable();
        assert_eq!(drops, (0..20).collect::<Vec<_>>(), "limited: {limited}: every future dropped once\n{m}");
        let s = m.stage("bomber").unwrap();
        assert_eq!((s.received, s.processed, s.failed, s.aborted), (20, 20, 1, 0), "limited: {limited}\n{m}");
    }
}
