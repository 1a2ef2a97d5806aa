//! Acknowledged items on a replica's per-item loop (`ItemLoop`), and on
//! its one-item-at-a-time use by `#[concurrency]` and rate-limited
//! stages: every `Ack` fires exactly once with the right outcome, the
//! stage metrics are exact and the outputs exactly right, through 1–3
//! stages unfused and `#[fused]`, with `process` emitting 0, 1 or many
//! items (across the batch sizes of 32 and 512), failing, panicking and
//! awaiting; acknowledged and plain inputs fed interleaved; stages that
//! `hold()` acknowledgements and `emit_with` them from `process`, timers
//! and `finish`; `emit_async` / `try_emit_async` in `#[concurrency(N)]`
//! stages and rate-limited stages; calls and casts served between
//! acknowledged items; and pipelines aborted or dropped mid-batch.

use std::{
    collections::BTreeMap,
    marker::PhantomData,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, stream};
use genflow::{
    Emitter, GenServer, Metrics, Pipeline, Stage,
    ack::{Ack, Acks, Held, Outcome},
};
use tokio::sync::Semaphore;

#[path = "support/quiet.rs"]
mod quiet;
#[path = "support/wait.rs"]
mod wait;
use wait::{eventually_named as eventually, within_named as within};

/// Keeps the expected panics out of stderr; other panics print.
fn quiet_panics() {
    quiet::quiet_panics("expected acked-loop panic");
}

// ---------------------------------------------------------------------------
// The ledger of acknowledgements.

/// How an acknowledgement fired: its outcome's kind and the errors of its
/// failures (a panic's from its message on), sorted.
type Firing = (&'static str, Vec<String>);

#[derive(Default)]
struct Ledger {
    fired: Mutex<BTreeMap<u64, Vec<Firing>>>,
    count: AtomicUsize,
}

impl Ledger {
    fn record(&self, key: u64, outcome: &Outcome) {
        let mut errors: Vec<String> = match outcome {
            Outcome::Failed(failures) => failures
                .iter()
                .map(|f| {
                    let error = f.error().to_string();
                    match error.find("expected acked-loop panic") {
                        Some(at) => error[at..].to_string(),
                        None => error,
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        errors.sort();
        self.fired.lock().unwrap().entry(key).or_default().push((outcome.kind(), errors));
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn ack(self: &Arc<Self>, key: u64) -> Ack {
        let ledger = self.clone();
        Ack::new(move |outcome| ledger.record(key, &outcome))
    }

    /// Bulk `Ack`s telling this ledger.
    fn acks(self: &Arc<Self>) -> Acks<u64, impl genflow::ack::Acknowledger<u64>> {
        let ledger = self.clone();
        Acks::new(move |key: u64, outcome: Outcome| ledger.record(key, &outcome))
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Asserts that exactly the keys of `expected` fired, each once, as it
    /// says.
    async fn assert_fired(&self, expected: &BTreeMap<u64, Firing>, context: &str) {
        eventually("every ack to fire", || self.count() >= expected.len()).await;
        // Anything firing twice or beyond `expected` shows below; give a
        // late one a few turns of the runtime to show (no fixed sleep).
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let fired = self.fired.lock().unwrap().clone();
        let once: BTreeMap<u64, Firing> = fired
            .into_iter()
            .map(|(i, firings)| {
                assert_eq!(firings.len(), 1, "{context}: input {i} fired {firings:?}");
                (i, firings.into_iter().next().unwrap())
            })
            .collect();
        if &once != expected {
            let mut diffs = Vec::new();
            for (k, want) in expected {
                match once.get(k) {
                    Some(got) if got == want => {}
                    got => diffs.push(format!("{k}: want {want:?} got {got:?}")),
                }
            }
            for k in once.keys().filter(|k| !expected.contains_key(k)) {
                diffs.push(format!("{k}: unexpected {:?}", once[k]));
            }
            panic!("{context}: {} acks differ, first ones: {:#?}", diffs.len(), &diffs[..diffs.len().min(12)]);
        }
        assert_eq!(self.count(), expected.len(), "{context}");
    }
}

fn firing(errors: Vec<String>) -> Firing {
    if errors.is_empty() { ("delivered", errors) } else { ("failed", errors) }
}

// ---------------------------------------------------------------------------
// `Work`: emits 0, 1, 3, 40 or 130 items, fails, panics, awaits.

fn panics(x: u64) -> bool {
    x % 11 == 5
}

fn fails(x: u64) -> bool {
    !panics(x) && x % 7 == 3
}

/// `process` yields before anything else.
fn yields(x: u64) -> bool {
    x % 3 == 0
}

/// `process` waits for a oneshot a spawned task answers.
fn waits(x: u64) -> bool {
    x % 9 == 4
}

/// A panicking input panics after emitting its one item if even, before
/// emitting anything if odd.
fn panics_late(x: u64) -> bool {
    panics(x) && x % 2 == 0
}

/// `process` yields after its first emit.
fn yields_mid(x: u64) -> bool {
    x % 8 == 5
}

fn count(x: u64) -> u64 {
    if panics(x) {
        u64::from(panics_late(x))
    } else if fails(x) {
        1
    } else if x % 37 == 20 {
        130
    } else if x % 13 == 7 {
        40
    } else {
        match x % 5 {
            0 => 0,
            1 => 3,
            _ => 1,
        }
    }
}

/// `Tail` fails these items (emitting nothing for them).
fn tail_fails(item: &(u64, u64)) -> bool {
    item.0 % 19 == 2 && item.1 == 0
}

/// The errors of input `x` through `Work` (and `Tail` if `tail`).
fn errors_of(x: u64, tail: bool) -> Vec<String> {
    let mut errors = Vec::new();
    if panics(x) {
        errors.push(format!("expected acked-loop panic on {x}"));
    }
    if fails(x) {
        errors.push(format!("work {x}"));
    }
    if tail {
        errors.extend((0..count(x)).filter(|&i| tail_fails(&(x, i))).map(|_| format!("tail {x}")));
    }
    errors.sort();
    errors
}

/// What leaves the pipeline for `inputs`, in order.
fn model(inputs: &[u64], tail: bool) -> Vec<(u64, u64)> {
    inputs.iter().flat_map(|&x| (0..count(x)).map(move |i| (x, i))).filter(|item| !(tail && tail_fails(item))).collect()
}

macro_rules! server {
    ($ty:ident, $queue:expr) => {
        impl<R: Clone + Send + Sync + 'static> GenServer for $ty<R> {
            type Message = ();
            type Response = u64;
            type Registry = R;
            fn new(_: R) -> Self {
                $ty { seen: 0, _registry: PhantomData }
            }
            async fn handle_call(&mut self, _: ()) -> u64 {
                self.seen
            }
            async fn handle_cast(&mut self, _: ()) {}
            fn channel_queue_size() -> usize {
                $queue
            }
        }
    };
}

struct Work<R> {
    seen: u64,
    _registry: PhantomData<R>,
}
server!(Work, 64);

impl<R: Clone + Send + Sync + 'static> Stage for Work<R> {
    type In = u64;
    type Out = (u64, u64);
    async fn process(&mut self, x: u64, out: &mut Emitter<(u64, u64)>) {
        self.seen += 1;
        if yields(x) {
            tokio::task::yield_now().await;
        }
        if waits(x) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let _ = tx.send(x);
            });
            assert_eq!(rx.await.unwrap(), x);
        }
        if panics(x) && !panics_late(x) {
            panic!("expected acked-loop panic on {x}");
        }
        for i in 0..count(x) {
            out.emit((x, i)).await;
            if i == 0 && yields_mid(x) {
                tokio::task::yield_now().await;
            }
        }
        if panics_late(x) {
            panic!("expected acked-loop panic on {x}");
        }
        if fails(x) {
            out.fail(format!("work {x}"));
        }
    }
}

struct Tail<R> {
    seen: u64,
    _registry: PhantomData<R>,
}
server!(Tail, 16);

impl<R: Clone + Send + Sync + 'static> Stage for Tail<R> {
    type In = (u64, u64);
    type Out = (u64, u64);
    async fn process(&mut self, item: (u64, u64), out: &mut Emitter<(u64, u64)>) {
        self.seen += 1;
        if item.1 % 50 == 7 {
            tokio::task::yield_now().await;
        }
        if tail_fails(&item) {
            out.fail(format!("tail {}", item.0));
        } else {
            out.emit(item).await;
        }
    }
}

/// Passes inputs on, yielding on some.
struct Head<R> {
    seen: u64,
    _registry: PhantomData<R>,
}
server!(Head, 64);

impl<R: Clone + Send + Sync + 'static> Stage for Head<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        if x % 4 == 1 {
            tokio::task::yield_now().await;
        }
        out.emit(x).await;
    }
}

#[genflow::pipeline{ work: Work<One> }]
struct One;

#[genflow::pipeline{ work: Work<Two>, tail: Tail<Two> }]
struct Two;

#[genflow::pipeline{ work: Work<TwoFused>, #[fused] tail: Tail<TwoFused> }]
struct TwoFused;

#[genflow::pipeline{ head: Head<Three>, work: Work<Three>, tail: Tail<Three> }]
struct Three;

#[genflow::pipeline{ head: Head<ThreeFused>, #[fused] work: Work<ThreeFused>, #[fused] tail: Tail<ThreeFused> }]
struct ThreeFused;

#[genflow::pipeline{ #[rate_limit(200, per = Duration::from_millis(10))] work: Work<Limited>, tail: Tail<Limited> }]
struct Limited;

#[genflow::pipeline{ head: Head<LimitedFused>, #[fused] #[rate_limit(200, per = Duration::from_millis(10))] work: Work<LimitedFused>, #[fused] tail: Tail<LimitedFused> }]
struct LimitedFused;

#[genflow::pipeline{ #[replicas(3, ordered)] work: Work<Ordered>, tail: Tail<Ordered> }]
struct Ordered;

#[genflow::pipeline{ head: Head<Spread>, #[replicas(3)] #[max_demand(5)] work: Work<Spread>, tail: Tail<Spread> }]
struct Spread;

/// Which stages around `work` a pipeline has.
#[derive(Clone, Copy)]
struct Shape {
    head: bool,
    tail: bool,
    /// Whether the output keeps the input order.
    in_order: bool,
}

const ONE: Shape = Shape { head: false, tail: false, in_order: true };
const TWO: Shape = Shape { head: false, tail: true, in_order: true };
const THREE: Shape = Shape { head: true, tail: true, in_order: true };

/// Which inputs go with an `Ack`.
type Pattern = (&'static str, fn(u64) -> bool);

const ALL: Pattern = ("all acked", |_| true);

const PATTERNS: &[Pattern] = &[
    ("all acked", |_| true),
    ("alternating", |x| x % 2 == 1),
    ("runs of 5", |x| x % 10 < 5),
    ("runs of 40", |x| x % 80 < 40),
    ("rare", |x| x % 61 == 17),
];

/// Feeds `inputs` into `flow` in runs of the same kind: acknowledged runs
/// by bulk `Acks` fed, by `Ack`s fed, or sent one by one; plain runs fed
/// or sent one by one. Returns the inputs in the order sent.
async fn feed_mixed<P: Pipeline<In = u64>>(flow: &P, inputs: &[u64], acked: fn(u64) -> bool, ledger: &Arc<Ledger>) {
    let input = flow.acked();
    let mut bulk = ledger.acks();
    let mut start = 0;
    let mut run = 0;
    while start < inputs.len() {
        let kind = acked(inputs[start]);
        let end = (start..inputs.len()).find(|&j| acked(inputs[j]) != kind).unwrap_or(inputs.len());
        let part = &inputs[start..end];
        if kind {
            match run % 3 {
                0 => {
                    let with: Vec<(u64, Ack)> = part.iter().map(|&x| (x, bulk.ack(x))).collect();
                    assert_eq!(within("acked feed", input.feed(stream::iter(with))).await.unwrap(), part.len());
                }
                1 => {
                    let with: Vec<(u64, Ack)> = part.iter().map(|&x| (x, ledger.ack(x))).collect();
                    assert_eq!(within("acked feed", input.feed(stream::iter(with))).await.unwrap(), part.len());
                }
                _ => {
                    for &x in part {
                        within("acked send", input.send(x, ledger.ack(x))).await.unwrap();
                    }
                }
            }
        } else if run % 2 == 0 {
            assert_eq!(within("feed", flow.feed(stream::iter(part.to_vec()))).await.unwrap(), part.len());
        } else {
            for &x in part {
                within("send", flow.send(x)).await.unwrap();
            }
        }
        start = end;
        run += 1;
    }
    drop(bulk);
}

/// Feeds `inputs` (acknowledged as `pattern` says), shuts down, and checks
/// every `Ack`, the output (in order) and every count of every stage.
async fn run_work<P: Pipeline<In = u64, Out = (u64, u64)>>(flow: P, shape: Shape, inputs: Vec<u64>, pattern: Pattern) {
    quiet_panics();
    let (name, acked) = pattern;
    let n = inputs.len() as u64;
    let context = format!("{}: {name}, n = {n}", std::any::type_name::<P>());
    let ledger = Arc::new(Ledger::default());
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    let failing = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
    feed_mixed(&flow, &inputs, acked, &ledger).await;
    within("shutdown", flow.shutdown()).await;
    let mut got = within("output", reading).await.unwrap();
    let failures = within("failures", failing).await.unwrap();
    let m = flow.metrics();
    let mut want = model(&inputs, shape.tail);
    if !shape.in_order {
        got.sort_unstable();
        want.sort_unstable();
    }
    assert_eq!(got.len(), want.len(), "{context}: output length\n{m}");
    assert!(got == want, "{context}: output\n{m}");
    let expected: BTreeMap<u64, Firing> =
        inputs.iter().filter(|&&x| acked(x)).map(|&x| (x, firing(errors_of(x, shape.tail)))).collect();
    ledger.assert_fired(&expected, &context).await;

    let work_failed = inputs.iter().filter(|&&x| panics(x) || fails(x)).count() as u64;
    let work_emitted: u64 = inputs.iter().map(|&x| count(x)).sum();
    let work = m.stage("work").unwrap();
    assert_eq!(
        (work.received, work.processed, work.failed, work.emitted),
        (n, n, work_failed, work_emitted),
        "{context}: work (received, processed, failed, emitted)\n{m}"
    );
    assert_eq!((work.dropped, work.aborted, work.queued, work.in_flight), (0, 0, 0, 0), "{context}\n{m}");
    let mut total_failed = work_failed;
    if shape.head {
        let head = m.stage("head").unwrap();
        assert_eq!((head.received, head.processed, head.failed, head.emitted), (n, n, 0, n), "{context}: head\n{m}");
    }
    if shape.tail {
        let tail = m.stage("tail").unwrap();
        let tail_failed =
            inputs.iter().flat_map(|&x| (0..count(x)).map(move |i| (x, i))).filter(tail_fails).count() as u64;
        assert_eq!(
            (tail.received, tail.processed, tail.failed, tail.emitted),
            (work_emitted, work_emitted, tail_failed, work_emitted - tail_failed),
            "{context}: tail (received, processed, failed, emitted)\n{m}"
        );
        assert_eq!((tail.dropped, tail.aborted, tail.queued), (0, 0, 0), "{context}\n{m}");
        total_failed += tail_failed;
    }
    assert_eq!(failures.len() as u64, total_failed, "{context}: failures stream\n{m}");
    assert_eq!(
        failures.iter().filter(|f| f.is_panic()).count(),
        inputs.iter().filter(|&&x| panics(x)).count(),
        "{context}: panics"
    );
    assert_eq!(m.failures_dropped(), 0, "{context}\n{m}");
}

/// Input counts around and across batch sizes: 32 (`BATCH`), 128 and 512
/// (`HANDOVER`, a hand-over into a fused stage).
const SIZES: [u64; 12] = [1, 31, 32, 33, 127, 128, 129, 300, 511, 512, 513, 1_000];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_inputs_through_one_two_and_three_stages_unfused() {
    for n in SIZES {
        let inputs: Vec<u64> = (0..n).collect();
        run_work(One::start().await, ONE, inputs.clone(), ALL).await;
        run_work(Two::start().await, TWO, inputs.clone(), ALL).await;
        run_work(Three::start().await, THREE, inputs, ALL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_inputs_through_fused_stages() {
    for n in SIZES {
        let inputs: Vec<u64> = (0..n).collect();
        run_work(TwoFused::start().await, TWO, inputs.clone(), ALL).await;
        run_work(ThreeFused::start().await, THREE, inputs, ALL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_and_plain_inputs_through_replicas() {
    for &pattern in &PATTERNS[..4] {
        for n in [33, 129, 700] {
            let inputs: Vec<u64> = (0..n).collect();
            run_work(Ordered::start().await, TWO, inputs.clone(), pattern).await;
            run_work(Spread::start().await, Shape { in_order: false, ..THREE }, inputs, pattern).await;
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn acked_inputs_on_one_thread() {
    for n in [33, 129, 1_000] {
        let inputs: Vec<u64> = (0..n).collect();
        run_work(Two::start().await, TWO, inputs.clone(), ALL).await;
        run_work(ThreeFused::start().await, THREE, inputs, ALL).await;
    }
}

/// Only inputs that neither await, fail nor panic: every acknowledged
/// item stays on the loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_inputs_that_never_leave_the_loop() {
    let calm: Vec<u64> = (0..3_000).filter(|&x| !yields(x) && !waits(x) && !panics(x) && !fails(x)).collect();
    run_work(Two::start().await, TWO, calm.clone(), ALL).await;
    run_work(ThreeFused::start().await, THREE, calm.clone(), ALL).await;
    run_work(One::start().await, ONE, calm, ALL).await;
}

/// Only inputs that fail or panic, some awaiting first: every item leaves
/// the loop for the bookkeeping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_inputs_that_all_fail_or_panic() {
    let bad: Vec<u64> = (0..2_000).filter(|&x| panics(x) || fails(x)).collect();
    assert!(bad.len() > 128);
    run_work(Two::start().await, TWO, bad.clone(), ALL).await;
    run_work(ThreeFused::start().await, THREE, bad, ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_and_plain_inputs_fed_interleaved() {
    for &pattern in PATTERNS {
        for n in [129, 700] {
            let inputs: Vec<u64> = (0..n).collect();
            run_work(One::start().await, ONE, inputs.clone(), pattern).await;
            run_work(Two::start().await, TWO, inputs.clone(), pattern).await;
            run_work(TwoFused::start().await, TWO, inputs.clone(), pattern).await;
            run_work(ThreeFused::start().await, THREE, inputs, pattern).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_and_plain_inputs_through_a_rate_limited_stage() {
    for &pattern in &PATTERNS[..3] {
        for n in [33, 300] {
            let inputs: Vec<u64> = (0..n).collect();
            run_work(Limited::start().await, TWO, inputs.clone(), pattern).await;
            run_work(LimitedFused::start().await, THREE, inputs, pattern).await;
        }
    }
}

// ---------------------------------------------------------------------------
// `Keeper`: holds acknowledgements and emits them later.

fn keep_panics(x: u64) -> bool {
    x % 31 == 7
}

fn keep_fails(x: u64) -> bool {
    !keep_panics(x) && x % 23 == 5
}

/// Keeps every input with its acknowledgement (`hold`); emits what it
/// keeps as one group with `emit_with` at inputs 9 mod 10, from a timer
/// armed at inputs 4 mod 10, and in `finish`. Awaits before and after the
/// hold on some inputs; fails or panics on some after holding them.
struct Keeper<R> {
    members: Vec<u64>,
    held: Held,
    _registry: PhantomData<R>,
}

impl<R: Clone + Send + Sync + 'static> GenServer for Keeper<R> {
    type Message = ();
    type Response = u64;
    type Registry = R;

    fn new(_: R) -> Self {
        Keeper { members: Vec::new(), held: Held::default(), _registry: PhantomData }
    }

    async fn handle_call(&mut self, (): ()) -> u64 {
        self.members.len() as u64
    }
}

impl<R: Clone + Send + Sync + 'static> Keeper<R> {
    async fn give(&mut self, out: &mut Emitter<Vec<u64>>) {
        if !self.members.is_empty() {
            out.emit_with(std::mem::take(&mut self.members), std::mem::take(&mut self.held)).await;
        }
    }
}

impl<R: Clone + Send + Sync + 'static> Stage for Keeper<R> {
    type In = u64;
    type Out = Vec<u64>;

    async fn process(&mut self, x: u64, out: &mut Emitter<Vec<u64>>) {
        if x % 3 == 0 {
            tokio::task::yield_now().await;
        }
        self.members.push(x);
        let held = out.hold();
        self.held.absorb(held);
        if x % 8 == 6 {
            tokio::task::yield_now().await;
        }
        if x % 10 == 4 {
            self.send_after(Duration::ZERO, ()).unwrap();
        }
        if x % 10 == 9 {
            self.give(out).await;
        }
        if keep_panics(x) {
            panic!("expected acked-loop panic on {x}");
        }
        if keep_fails(x) {
            out.fail(format!("keep {x}"));
        }
    }

    async fn handle_timer(&mut self, (): (), out: &mut Emitter<Vec<u64>>) {
        // An empty hold: no input is in `process`.
        assert!(out.hold().is_empty(), "a hold in a timer holds nothing");
        self.give(out).await;
    }

    async fn finish(&mut self, out: &mut Emitter<Vec<u64>>) {
        assert!(out.hold().is_empty(), "a hold in finish holds nothing");
        self.give(out).await;
    }
}

/// Why `judge` fails a group: it holds a multiple of 13.
fn judged(group: &[u64]) -> Option<String> {
    group.iter().find(|&&x| x % 13 == 0).map(|_| format!("group from {}", group[0]))
}

/// Passes a group on, then fails it if `judged` says so.
#[genflow::stage]
async fn judge(group: Vec<u64>, out: &mut Emitter<Vec<u64>>) -> Result<(), String> {
    let verdict = judged(&group);
    out.emit(group).await;
    verdict.map_or(Ok(()), Err)
}

#[genflow::pipeline{ keeper: Keeper<Keeping>, judge: Judge<Keeping> }]
struct Keeping;

#[genflow::pipeline{ head: Head<KeepingFused>, #[fused] keeper: Keeper<KeepingFused>, #[fused] judge: Judge<KeepingFused> }]
struct KeepingFused;

#[genflow::pipeline{ #[concurrency(2)] keeper: Keeper<KeepingConcurrent>, judge: Judge<KeepingConcurrent> }]
struct KeepingConcurrent;

#[genflow::pipeline{ #[rate_limit(200, per = Duration::from_millis(10))] keeper: Keeper<KeepingLimited>, #[fused] judge: Judge<KeepingLimited> }]
struct KeepingLimited;

async fn run_keeping<P: Pipeline<In = u64, Out = Vec<u64>>>(flow: P, n: u64, pattern: Pattern) {
    quiet_panics();
    let (name, acked) = pattern;
    let context = format!("{}: {name}, n = {n}", std::any::type_name::<P>());
    let ledger = Arc::new(Ledger::default());
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<Vec<u64>>>());
    let inputs: Vec<u64> = (0..n).collect();
    for part in inputs.chunks(97) {
        feed_mixed(&flow, part, acked, &ledger).await;
        // Some flushes in between: the timers' groups go out of the middle.
        within("flush", flow.flush()).await.unwrap();
    }
    within("shutdown", flow.shutdown()).await;
    let groups = within("output", reading).await.unwrap();
    let m = flow.metrics();
    let mut members: Vec<u64> = groups.iter().flatten().copied().collect();
    members.sort_unstable();
    assert_eq!(members, inputs, "{context}: every input in exactly one group\n{m}");
    let mut expected = BTreeMap::new();
    for group in &groups {
        for &x in group.iter().filter(|&&x| acked(x)) {
            let mut errors: Vec<String> = judged(group).into_iter().collect();
            if keep_panics(x) {
                errors.push(format!("expected acked-loop panic on {x}"));
            }
            if keep_fails(x) {
                errors.push(format!("keep {x}"));
            }
            errors.sort();
            expected.insert(x, firing(errors));
        }
    }
    ledger.assert_fired(&expected, &context).await;
    let keeper = m.stage("keeper").unwrap();
    let failed = inputs.iter().filter(|&&x| keep_panics(x) || keep_fails(x)).count() as u64;
    assert_eq!(
        (keeper.received, keeper.processed, keeper.failed, keeper.emitted),
        (n, n, failed, groups.len() as u64),
        "{context}: keeper\n{m}"
    );
    let judge = m.stage("judge").unwrap();
    let g = groups.len() as u64;
    let bad = groups.iter().filter(|g| judged(g).is_some()).count() as u64;
    assert_eq!((judge.received, judge.processed, judge.failed, judge.emitted), (g, g, bad, g), "{context}: judge\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_acks_emitted_later_from_process_timers_and_finish() {
    for &pattern in &PATTERNS[..4] {
        for n in [33, 129, 500] {
            run_keeping(Keeping::start().await, n, pattern).await;
            run_keeping(KeepingFused::start().await, n, pattern).await;
        }
    }
}

/// The same through the one-item path: a `#[concurrency]` keeper (which
/// hands no futures over) and a rate-limited one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_acks_emitted_later_by_concurrent_and_rate_limited_stages() {
    for &pattern in &PATTERNS[..4] {
        for n in [33, 300] {
            run_keeping(KeepingConcurrent::start().await, n, pattern).await;
            run_keeping(KeepingLimited::start().await, n, pattern).await;
        }
    }
}

// ---------------------------------------------------------------------------
// `Conc`: `emit_async` / `try_emit_async` with acknowledged inputs.

fn conc_panics(x: u64) -> bool {
    x % 11 == 5
}

fn conc_fails(x: u64) -> bool {
    x % 17 == 9
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Futures {
    None,
    Panicking,
    Erring,
    Two,
    One,
}

fn futures_of(x: u64) -> Futures {
    if x % 6 == 0 {
        Futures::None
    } else if x % 13 == 6 {
        Futures::Panicking
    } else if x % 7 == 3 {
        Futures::Erring
    } else if x % 5 == 1 {
        Futures::Two
    } else {
        Futures::One
    }
}

/// What `Conc` emits for `x` and the errors it gives it. `inline`: the
/// stage has no futures in flight (no `#[concurrency(N)]` with N > 1), so
/// `emit_async` awaits its future in place, and a panic in it is a panic
/// of `process`, which then never reaches its own `fail`.
fn conc_model(x: u64, inline: bool) -> (Vec<u64>, Vec<String>) {
    if conc_panics(x) {
        return (Vec::new(), vec![format!("expected acked-loop panic on {x}")]);
    }
    let mut errors = Vec::new();
    let outputs = match futures_of(x) {
        Futures::None => Vec::new(),
        Futures::Panicking => {
            errors.push(format!("expected acked-loop panic in future {x}"));
            Vec::new()
        }
        Futures::Erring => {
            errors.push(format!("async {x}"));
            Vec::new()
        }
        Futures::Two => vec![x * 1_000, x * 1_000 + 1],
        Futures::One => vec![x * 1_000],
    };
    if conc_fails(x) && !(inline && futures_of(x) == Futures::Panicking) {
        errors.push(format!("conc {x}"));
    }
    errors.sort();
    (outputs, errors)
}

async fn turns(n: u64) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

struct Conc<R> {
    seen: u64,
    _registry: PhantomData<R>,
}
server!(Conc, 64);

impl<R: Clone + Send + Sync + 'static> Stage for Conc<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        if x % 4 == 2 {
            tokio::task::yield_now().await;
        }
        if conc_panics(x) {
            panic!("expected acked-loop panic on {x}");
        }
        match futures_of(x) {
            Futures::None => {}
            Futures::Panicking => {
                out.emit_async(async move {
                    turns(x % 3).await;
                    if x < u64::MAX {
                        panic!("expected acked-loop panic in future {x}");
                    }
                    x
                })
                .await
            }
            Futures::Erring => {
                out.try_emit_async(async move {
                    turns(x % 4).await;
                    Err::<u64, String>(format!("async {x}"))
                })
                .await
            }
            Futures::Two => {
                out.emit_async(async move {
                    turns(x % 5).await;
                    x * 1_000
                })
                .await;
                out.emit_async(async move {
                    turns(x % 2).await;
                    x * 1_000 + 1
                })
                .await;
            }
            Futures::One => {
                out.emit_async(async move {
                    turns(x % 3).await;
                    x * 1_000
                })
                .await
            }
        }
        if conc_fails(x) {
            out.fail(format!("conc {x}"));
        }
    }
}

/// Passes items on.
#[genflow::stage]
fn pass(x: u64) -> u64 {
    x
}

#[genflow::pipeline{ #[concurrency(4)] conc: Conc<Concurrent>, tail: Pass<Concurrent> }]
struct Concurrent;

#[genflow::pipeline{ #[concurrency(4, ordered)] conc: Conc<ConcurrentOrdered>, tail: Pass<ConcurrentOrdered> }]
struct ConcurrentOrdered;

#[genflow::pipeline{ #[concurrency(1)] conc: Conc<ConcurrentOne>, tail: Pass<ConcurrentOne> }]
struct ConcurrentOne;

#[genflow::pipeline{ head: Pass<ConcurrentFused>, #[fused] #[concurrency(4)] conc: Conc<ConcurrentFused>, #[fused] tail: Pass<ConcurrentFused> }]
struct ConcurrentFused;

#[genflow::pipeline{
    #[rate_limit(200, per = Duration::from_millis(10))]
    #[concurrency(3)]
    conc: Conc<ConcurrentLimited>,
    tail: Pass<ConcurrentLimited>,
}]
struct ConcurrentLimited;

#[genflow::pipeline{ #[rate_limit(200, per = Duration::from_millis(10))] conc: Conc<LimitedOne>, #[fused] tail: Pass<LimitedOne> }]
struct LimitedOne;

async fn run_conc<P: Pipeline<In = u64, Out = u64>>(flow: P, n: u64, pattern: Pattern, ordered: bool, inline: bool) {
    quiet_panics();
    let (name, acked) = pattern;
    let context = format!("{}: {name}, n = {n}", std::any::type_name::<P>());
    let ledger = Arc::new(Ledger::default());
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    let failing = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
    let inputs: Vec<u64> = (0..n).collect();
    feed_mixed(&flow, &inputs, acked, &ledger).await;
    within("shutdown", flow.shutdown()).await;
    let mut got = within("output", reading).await.unwrap();
    let failures = within("failures", failing).await.unwrap();
    let m = flow.metrics();
    let mut want: Vec<u64> = inputs.iter().flat_map(|&x| conc_model(x, inline).0).collect();
    if !ordered {
        got.sort_unstable();
        want.sort_unstable();
    }
    assert_eq!(got, want, "{context}: output\n{m}");
    let expected: BTreeMap<u64, Firing> =
        inputs.iter().filter(|&&x| acked(x)).map(|&x| (x, firing(conc_model(x, inline).1))).collect();
    ledger.assert_fired(&expected, &context).await;
    let failed = inputs.iter().filter(|&&x| !conc_model(x, inline).1.is_empty()).count() as u64;
    let emitted = want.len() as u64;
    let conc = m.stage("conc").unwrap();
    assert_eq!(
        (conc.received, conc.processed, conc.failed, conc.emitted),
        (n, n, failed, emitted),
        "{context}: conc (received, processed, failed, emitted)\n{m}"
    );
    assert_eq!((conc.dropped, conc.aborted, conc.queued, conc.in_flight), (0, 0, 0, 0), "{context}\n{m}");
    let tail = m.stage("tail").unwrap();
    assert_eq!(
        (tail.received, tail.processed, tail.failed, tail.emitted),
        (emitted, emitted, 0, emitted),
        "{context}: tail\n{m}"
    );
    let errors: usize = inputs.iter().map(|&x| conc_model(x, inline).1.len()).sum();
    assert_eq!(failures.len(), errors, "{context}: failures stream\n{m}");
    assert_eq!(m.failures_dropped(), 0, "{context}\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stages_with_acked_inputs() {
    for &pattern in &PATTERNS[..4] {
        for n in [1, 33, 129, 600] {
            run_conc(Concurrent::start().await, n, pattern, false, false).await;
            run_conc(ConcurrentOrdered::start().await, n, pattern, true, false).await;
            run_conc(ConcurrentOne::start().await, n, pattern, true, true).await;
            run_conc(ConcurrentFused::start().await, n, pattern, false, false).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_stages_with_acked_inputs() {
    for &pattern in &PATTERNS[..3] {
        for n in [33, 300, 600] {
            run_conc(ConcurrentLimited::start().await, n, pattern, false, false).await;
            run_conc(LimitedOne::start().await, n, pattern, true, true).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Calls and casts between acknowledged items.

#[derive(Debug, Clone, Copy)]
enum Ask {
    /// As a call: (seen, failed by the state's count, processed, failed).
    Now,
    /// As a cast from `process`: record `Now` under the input.
    Record(u64),
    /// As a cast from the test: record `Now`, count the mark.
    Mark,
}

type Snapshot = (u64, u64, u64, u64);

#[derive(Clone)]
struct Shared {
    gate: Arc<Semaphore>,
    records: Arc<Mutex<Vec<(u64, Snapshot)>>>,
    marks: Arc<Mutex<Vec<Snapshot>>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared { gate: Arc::new(Semaphore::new(0)), records: Arc::default(), marks: Arc::default() }
    }
}

trait Probed: Pipeline<In = u64, Out = u64> + Clone + Send + Sync + 'static {
    fn shared(&self) -> &Shared;
    fn record(&self, x: u64);
    async fn call_now(&self) -> Snapshot;
    async fn cast_mark(&self);
}

fn probe_fails(x: u64) -> bool {
    x % 7 == 3
}

fn probe_panics(x: u64) -> bool {
    x % 11 == 8
}

fn probe_yields(x: u64) -> bool {
    x % 9 == 7
}

/// Casts `Record` to itself on these.
fn records(x: u64) -> bool {
    x % 10 == 5
}

/// Passes items on (but those it panics on); waits at the gate on input 0;
/// fails, panics, yields on some; casts to itself on some.
struct Probe<R> {
    flow: R,
    seen: u64,
    failed: u64,
}

impl<R: Probed> Probe<R> {
    fn now(&self) -> Snapshot {
        let m = self.flow.metrics();
        let probe = m.stage("probe").unwrap();
        (self.seen, self.failed, probe.processed, probe.failed)
    }
}

impl<R: Probed> GenServer for Probe<R> {
    type Message = Ask;
    type Response = Snapshot;
    type Registry = R;
    fn new(flow: R) -> Self {
        Probe { flow, seen: 0, failed: 0 }
    }
    async fn handle_call(&mut self, _: Ask) -> Snapshot {
        self.now()
    }
    async fn handle_cast(&mut self, ask: Ask) {
        match ask {
            Ask::Record(x) => {
                let now = self.now();
                self.flow.shared().records.lock().unwrap().push((x, now));
            }
            Ask::Mark => {
                let now = self.now();
                self.flow.shared().marks.lock().unwrap().push(now);
            }
            Ask::Now => {}
        }
    }
    fn channel_queue_size() -> usize {
        256
    }
}

impl<R: Probed> Stage for Probe<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        if x == 0 {
            let gate = self.flow.shared().gate.clone();
            gate.acquire().await.unwrap().forget();
        }
        if records(x) {
            self.flow.record(x);
        }
        if probe_yields(x) {
            tokio::task::yield_now().await;
        }
        if probe_panics(x) {
            self.failed += 1;
            panic!("expected acked-loop panic on {x}");
        }
        out.emit(x).await;
        if probe_fails(x) {
            self.failed += 1;
            out.fail(format!("probe {x}"));
        }
    }
}

macro_rules! probed {
    ($name:ident { $($stages:tt)* }) => {
        #[genflow::pipeline{ $($stages)* }]
        struct $name {
            shared: Shared,
        }

        impl Probed for $name {
            fn shared(&self) -> &Shared {
                &self.shared
            }
            fn record(&self, x: u64) {
                self.try_cast_probe(Ask::Record(x)).unwrap();
            }
            async fn call_now(&self) -> Snapshot {
                within("call", self.call_probe(Ask::Now)).await.unwrap()
            }
            async fn cast_mark(&self) {
                within("cast", self.cast_probe(Ask::Mark)).await.unwrap()
            }
        }
    };
}

probed!(Calls { probe: Probe<Calls>, tail: Pass<Calls> });
probed!(CallsLimited { #[rate_limit(100, per = Duration::from_millis(5))] probe: Probe<CallsLimited>, tail: Pass<CallsLimited> });
probed!(CallsFused { head: Pass<CallsFused>, #[fused] probe: Probe<CallsFused>, #[fused] tail: Pass<CallsFused> });

fn probe_errors(x: u64) -> Vec<String> {
    if probe_panics(x) {
        vec![format!("expected acked-loop panic on {x}")]
    } else if probe_fails(x) {
        vec![format!("probe {x}")]
    } else {
        Vec::new()
    }
}

fn failed_upto(x: u64) -> u64 {
    (0..=x).filter(|&y| probe_panics(y) || probe_fails(y)).count() as u64
}

/// Input 0 waits at the gate while 1..100 (acknowledged) queue behind it,
/// to be taken in batches of 32: the casts `process` sends on inputs 5
/// mod 10 are served right after them, mid-batch, and see exactly the
/// state and metrics of the inputs up to theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_between_acked_items_see_exact_state_and_metrics() {
    quiet_panics();
    const N: u64 = 100;
    let flow = Calls::start(Shared::default()).await;
    let ledger = Arc::new(Ledger::default());
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    let input = flow.acked();
    within("send", input.send(0, ledger.ack(0))).await.unwrap();
    eventually("input 0 in process", || flow.metrics().stage("probe").unwrap().received == 1).await;
    let with: Vec<(u64, Ack)> = (1..N).map(|x| (x, ledger.ack(x))).collect();
    within("feed", input.feed(stream::iter(with))).await.unwrap();
    eventually("all queued", || flow.metrics().stage("probe").unwrap().queued == N - 1).await;
    flow.shared.gate.add_permits(1);
    eventually("all processed", || flow.metrics().stage("probe").unwrap().processed == N).await;
    let f = failed_upto(N - 1);
    assert_eq!(within("call", flow.call_probe(Ask::Now)).await.unwrap(), (N, f, N, f));
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    assert_eq!(got, (0..N).filter(|&x| !probe_panics(x)).collect::<Vec<_>>());
    let recorded = flow.shared.records.lock().unwrap().clone();
    let want: Vec<(u64, Snapshot)> =
        (0..N).filter(|&x| records(x)).map(|x| (x, (x + 1, failed_upto(x), x + 1, failed_upto(x)))).collect();
    assert_eq!(recorded, want, "each cast served right after its input, with exact counts");
    let expected: BTreeMap<u64, Firing> = (0..N).map(|x| (x, firing(probe_errors(x)))).collect();
    ledger.assert_fired(&expected, "gated calls").await;
    let m = flow.metrics();
    let probe = m.stage("probe").unwrap();
    let emitted = (0..N).filter(|&x| !probe_panics(x)).count() as u64;
    assert_eq!((probe.received, probe.processed, probe.failed, probe.emitted), (N, N, f, emitted), "{m}");
}

/// Acknowledged (and some plain) inputs flow while the test calls
/// (every answer's state matches the metrics) and casts marks (each
/// served once, seeing matching counts too).
async fn run_calls_flowing<P: Probed>(flow: P) {
    quiet_panics();
    const N: u64 = 20_000;
    flow.shared().gate.add_permits(1); // input 0 passes
    let ledger = Arc::new(Ledger::default());
    let reading = tokio::spawn(flow.output().unwrap().fold(0u64, |a, _| async move { a + 1 }));
    let feeder = tokio::spawn({
        let flow = flow.clone();
        let ledger = ledger.clone();
        async move {
            let inputs: Vec<u64> = (0..N).collect();
            feed_mixed(&flow, &inputs, |x| x % 50 != 49, &ledger).await;
        }
    });
    let mut answers = 0;
    let mut marks = 0;
    let mut last = 0;
    loop {
        let (seen, failed, processed, failed_metric) = flow.call_now().await;
        assert_eq!((seen, failed), (processed, failed_metric), "a call between items sees its state counted");
        assert!(seen >= last, "state went back: {seen} < {last}");
        last = seen;
        answers += 1;
        if answers % 3 == 0 {
            flow.cast_mark().await;
            marks += 1;
        }
        if seen == N {
            break;
        }
    }
    within("feeder", feeder).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    let out = within("output", reading).await.unwrap();
    assert_eq!(out, (0..N).filter(|&x| !probe_panics(x)).count() as u64);
    let seen_marks = flow.shared().marks.lock().unwrap().clone();
    assert_eq!(seen_marks.len(), marks, "every mark served once");
    for (seen, failed, processed, failed_metric) in &seen_marks {
        assert_eq!((seen, failed), (processed, failed_metric), "a cast between items sees its state counted");
    }
    let recorded = flow.shared().records.lock().unwrap().clone();
    assert_eq!(recorded.len() as u64, (0..N).filter(|&x| records(x)).count() as u64);
    for (x, (seen, failed, processed, failed_metric)) in &recorded {
        assert!(*seen > *x, "recorded {x} after its input");
        assert_eq!((seen, failed), (processed, failed_metric), "record of {x}");
    }
    let expected: BTreeMap<u64, Firing> =
        (0..N).filter(|&x| x % 50 != 49).map(|x| (x, firing(probe_errors(x)))).collect();
    ledger.assert_fired(&expected, "flowing calls").await;
    let m = flow.metrics();
    let probe = m.stage("probe").unwrap();
    let f = failed_upto(N - 1);
    assert_eq!((probe.received, probe.processed, probe.failed), (N, N, f), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_casts_while_acked_items_flow() {
    run_calls_flowing(Calls::start(Shared::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_casts_while_acked_items_flow_through_a_rate_limit() {
    run_calls_flowing(CallsLimited::start(Shared::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_casts_while_acked_items_flow_into_a_fused_stage() {
    run_calls_flowing(CallsFused::start(Shared::default()).await).await;
}

// ---------------------------------------------------------------------------
// Aborted and dropped mid-batch.

/// The identities that hold once an aborted pipeline has stopped.
fn assert_settled(m: &Metrics) {
    for s in m.stages() {
        assert_eq!(s.received, s.processed + s.aborted, "{}: received = processed + aborted\n{m}", s.name);
        assert_eq!(s.queued, 0, "{}: nothing queued\n{m}", s.name);
    }
    for pair in m.stages().windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(a.emitted, b.received + a.dropped, "{} emitted = {} received + dropped\n{m}", a.name, b.name);
    }
}

static HANG_GATE: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(0));
static HUNG: AtomicBool = AtomicBool::new(false);
const HANG_AT: u64 = 40;

/// Waits at [`HANG_GATE`] on input 0, never returns from input
/// [`HANG_AT`]; otherwise emits `(x, 0)`, panicking and failing as `Work`.
struct Hang<R> {
    seen: u64,
    _registry: PhantomData<R>,
}
server!(Hang, 64);

impl<R: Clone + Send + Sync + 'static> Stage for Hang<R> {
    type In = u64;
    type Out = (u64, u64);
    async fn process(&mut self, x: u64, out: &mut Emitter<(u64, u64)>) {
        self.seen += 1;
        if x == 0 {
            HANG_GATE.acquire().await.unwrap().forget();
        }
        if x == HANG_AT {
            HUNG.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        if panics(x) {
            panic!("expected acked-loop panic on {x}");
        }
        out.emit((x, 0)).await;
        if fails(x) {
            out.fail(format!("work {x}"));
        }
    }
}

#[genflow::pipeline{ work: Hang<Hung>, tail: Tail<Hung> }]
struct Hung;

/// Input 0 waits while 1..50 (acknowledged) queue: batches [0], [1..=32],
/// [33..=49]. Once the reader took every output of the first two, input
/// 40 hangs in the middle of the third and the pipeline is aborted: the
/// inputs whose outputs were read are delivered (or failed), those whose
/// outputs wait in `work`'s buffer are dropped (or failed, if `work`
/// failed them), 40 and the rest of the batch are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_mid_batch_fires_every_ack_once() {
    quiet_panics();
    let flow = Hung::start().await;
    let ledger = Arc::new(Ledger::default());
    let got = Arc::new(Mutex::new(Vec::new()));
    let reading = tokio::spawn({
        let got = got.clone();
        let mut output = flow.output().unwrap();
        async move {
            while let Some(item) = output.next().await {
                got.lock().unwrap().push(item);
            }
        }
    });
    let input = flow.acked();
    within("send", input.send(0, ledger.ack(0))).await.unwrap();
    eventually("input 0 in process", || flow.metrics().stage("work").unwrap().received == 1).await;
    let with: Vec<(u64, Ack)> = (1..50).map(|x| (x, ledger.ack(x))).collect();
    within("feed", input.feed(stream::iter(with))).await.unwrap();
    eventually("all queued", || flow.metrics().stage("work").unwrap().queued == 49).await;
    HANG_GATE.add_permits(1);
    eventually("input 40 in process", || HUNG.load(Ordering::SeqCst)).await;
    let read_first: Vec<(u64, u64)> =
        (0..=32).filter(|&x| !panics(x)).map(|x| (x, 0)).filter(|i| !tail_fails(i)).collect();
    eventually("first two batches read", || got.lock().unwrap().len() == read_first.len()).await;
    flow.abort();
    within("shutdown", flow.shutdown()).await;
    within("reader", reading).await.unwrap();
    let got = got.lock().unwrap().clone();
    let m = flow.metrics();
    assert_eq!(got, read_first, "{m}");
    let mut expected = BTreeMap::new();
    for x in 0..50 {
        let outcome = if x <= 32 {
            firing(errors_of_hang(x, true))
        } else if x < HANG_AT {
            let errors = errors_of_hang(x, false);
            if errors.is_empty() { ("dropped", errors) } else { ("failed", errors) }
        } else {
            ("dropped", Vec::new())
        };
        expected.insert(x, outcome);
    }
    ledger.assert_fired(&expected, "abort mid-batch").await;
    assert_settled(&m);
    let work = m.stage("work").unwrap();
    let done: Vec<u64> = (0..HANG_AT).collect();
    let failed = done.iter().filter(|&&x| panics(x) || fails(x)).count() as u64;
    let emitted = done.iter().filter(|&&x| !panics(x)).count() as u64;
    assert_eq!(
        (work.received, work.processed, work.aborted, work.failed, work.emitted),
        (50, HANG_AT, 50 - HANG_AT, failed, emitted),
        "{m}"
    );
}

fn errors_of_hang(x: u64, tail: bool) -> Vec<String> {
    if panics(x) {
        return vec![format!("expected acked-loop panic on {x}")];
    }
    let mut errors = Vec::new();
    if fails(x) {
        errors.push(format!("work {x}"));
    }
    if tail && tail_fails(&(x, 0)) {
        errors.push(format!("tail {x}"));
    }
    errors.sort();
    errors
}

/// Emits from futures in flight; from [`STALL_FROM`] on they never end.
struct Stall<R> {
    seen: u64,
    _registry: PhantomData<R>,
}
server!(Stall, 64);

const STALL_FROM: u64 = 10;

impl<R: Clone + Send + Sync + 'static> Stage for Stall<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        out.emit_async(async move {
            if x >= STALL_FROM {
                std::future::pending::<()>().await;
            }
            tokio::task::yield_now().await;
            x
        })
        .await;
    }
}

#[genflow::pipeline{ #[concurrency(4)] stall: Stall<Stalled>, tail: Pass<Stalled> }]
struct Stalled;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_with_acked_futures_in_flight_fires_every_ack_once() {
    let flow = Stalled::start().await;
    let ledger = Arc::new(Ledger::default());
    let reading = tokio::spawn(flow.output().unwrap().take(STALL_FROM as usize).collect::<Vec<_>>());
    let with: Vec<(u64, Ack)> = (0..40).map(|x| (x, ledger.ack(x))).collect();
    within("feed", flow.acked().feed(stream::iter(with))).await.unwrap();
    let mut got = within("output", reading).await.unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..STALL_FROM).collect::<Vec<_>>());
    eventually("4 in flight", || flow.metrics().stage("stall").unwrap().in_flight == 4).await;
    flow.abort();
    within("shutdown", flow.shutdown()).await;
    let expected: BTreeMap<u64, Firing> = (0..40)
        .map(|x| (x, if x < STALL_FROM { ("delivered", Vec::new()) } else { ("dropped", Vec::new()) }))
        .collect();
    ledger.assert_fired(&expected, "abort with futures in flight").await;
    let m = flow.metrics();
    assert_settled(&m);
    let stall = m.stage("stall").unwrap();
    assert_eq!((stall.received + stall.queued, stall.processed), (40, STALL_FROM), "{m}");
}

/// A keeper holding acknowledgements in its state when aborted: each
/// reports dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_of_a_stage_holding_acks_drops_each_once() {
    let flow = Keeping::start().await;
    let ledger = Arc::new(Ledger::default());
    let _output = flow.output().unwrap();
    // No input 4 or 9 mod 10: nothing leaves the keeper before the abort.
    let inputs: Vec<u64> = (0..200).filter(|x| x % 10 < 4 && !keep_panics(*x) && !keep_fails(*x)).collect();
    let with: Vec<(u64, Ack)> = inputs.iter().map(|&x| (x, ledger.ack(x))).collect();
    within("feed", flow.acked().feed(stream::iter(with))).await.unwrap();
    eventually("all kept", || flow.metrics().stage("keeper").unwrap().processed == inputs.len() as u64).await;
    assert_eq!(within("call", flow.call_keeper(())).await.unwrap(), inputs.len() as u64);
    assert_eq!(ledger.count(), 0, "nothing acknowledged while held");
    flow.abort();
    within("shutdown", flow.shutdown()).await;
    let expected: BTreeMap<u64, Firing> = inputs.iter().map(|&x| (x, ("dropped", Vec::new()))).collect();
    ledger.assert_fired(&expected, "abort of a keeper").await;
    let m = flow.metrics();
    assert_settled(&m);
}

static DROP_GATE: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(0));
static DROP_SEEN: AtomicU64 = AtomicU64::new(0);

/// As `Work`, waiting at [`DROP_GATE`] on input 0.
struct Gated<R> {
    seen: u64,
    _registry: PhantomData<R>,
}
server!(Gated, 64);

impl<R: Clone + Send + Sync + 'static> Stage for Gated<R> {
    type In = u64;
    type Out = (u64, u64);
    async fn process(&mut self, x: u64, out: &mut Emitter<(u64, u64)>) {
        self.seen += 1;
        DROP_SEEN.fetch_add(1, Ordering::SeqCst);
        if x == 0 {
            DROP_GATE.acquire().await.unwrap().forget();
        }
        if yields(x) {
            tokio::task::yield_now().await;
        }
        if panics(x) && !panics_late(x) {
            panic!("expected acked-loop panic on {x}");
        }
        for i in 0..count(x) {
            out.emit((x, i)).await;
        }
        if panics_late(x) {
            panic!("expected acked-loop panic on {x}");
        }
        if fails(x) {
            out.fail(format!("work {x}"));
        }
    }
}

#[genflow::pipeline{ work: Gated<Dropping>, #[fused] tail: Tail<Dropping> }]
struct Dropping;

/// The last handle dropped while input 0 waits mid-stream and mixed inputs
/// queue behind it: the pipeline drains in the background, and every
/// `Ack` fires once as in a normal run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_pipeline_mid_batch_fires_every_ack_once() {
    quiet_panics();
    let flow = Dropping::start().await;
    let ledger = Arc::new(Ledger::default());
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    let acked = |x: u64| x % 4 != 1;
    let input = flow.acked();
    within("send", input.send(0, ledger.ack(0))).await.unwrap();
    eventually("input 0 in process", || DROP_SEEN.load(Ordering::SeqCst) == 1).await;
    let inputs: Vec<u64> = (1..60).collect();
    feed_mixed(&flow, &inputs, acked, &ledger).await;
    drop(input);
    drop(flow);
    DROP_GATE.add_permits(1);
    let got = within("output ends", reading).await.unwrap();
    let all: Vec<u64> = (0..60).collect();
    assert_eq!(got, model(&all, true));
    let expected: BTreeMap<u64, Firing> =
        all.iter().filter(|&&x| acked(x)).map(|&x| (x, firing(errors_of(x, true)))).collect();
    ledger.assert_fired(&expected, "dropped mid-batch").await;
    assert_eq!(DROP_SEEN.load(Ordering::SeqCst), 60);
}

// ---------------------------------------------------------------------------
// A `#[batch]` stage taking acknowledged items.

const PACK: usize = 10;

fn spoils(item: &(u64, u64)) -> bool {
    item.0 % 17 == 2
}

/// Emits each batch's length; fails the spoiled items of a batch with
/// `fail_items`; yields on batches of even length.
struct Pack<R> {
    seen: u64,
    _registry: PhantomData<R>,
}
server!(Pack, 8);

impl<R: Clone + Send + Sync + 'static> Stage for Pack<R> {
    type In = Vec<(u64, u64)>;
    type Out = u64;
    async fn process(&mut self, batch: Vec<(u64, u64)>, out: &mut Emitter<u64>) {
        self.seen += 1;
        if batch.len() % 2 == 0 {
            tokio::task::yield_now().await;
        }
        out.emit(batch.len() as u64).await;
        let spoiled = batch.iter().filter(|item| spoils(item)).count() as u64;
        if spoiled > 0 {
            out.fail_items(spoiled, format!("spoiled from {:?}", batch[0]));
        }
    }
}

#[genflow::pipeline{ work: Work<Packed>, #[batch(size = PACK, timeout = Duration::from_secs(3600))] pack: Pack<Packed> }]
struct Packed;

#[genflow::pipeline{ head: Head<PackedFused>, #[fused] work: Work<PackedFused>, #[batch(size = PACK, timeout = Duration::from_secs(3600))] pack: Pack<PackedFused> }]
struct PackedFused;

async fn run_packed<P: Pipeline<In = u64, Out = u64>>(flow: P, n: u64, pattern: Pattern) {
    quiet_panics();
    let (name, acked) = pattern;
    let context = format!("{}: {name}, n = {n}", std::any::type_name::<P>());
    let ledger = Arc::new(Ledger::default());
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    let inputs: Vec<u64> = (0..n).collect();
    feed_mixed(&flow, &inputs, acked, &ledger).await;
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let m = flow.metrics();
    let items = model(&inputs, false);
    let chunks: Vec<&[(u64, u64)]> = items.chunks(PACK).collect();
    assert_eq!(got, chunks.iter().map(|c| c.len() as u64).collect::<Vec<_>>(), "{context}\n{m}");
    let mut errors: BTreeMap<u64, Vec<String>> = inputs.iter().map(|&x| (x, errors_of(x, false))).collect();
    for chunk in &chunks {
        if chunk.iter().any(spoils) {
            let failure = format!("spoiled from {:?}", chunk[0]);
            let mut owners: Vec<u64> = chunk.iter().map(|item| item.0).collect();
            owners.dedup();
            for x in owners {
                errors.get_mut(&x).unwrap().push(failure.clone());
            }
        }
    }
    let expected: BTreeMap<u64, Firing> = errors
        .into_iter()
        .filter(|(x, _)| acked(*x))
        .map(|(x, mut e)| {
            e.sort();
            (x, firing(e))
        })
        .collect();
    ledger.assert_fired(&expected, &context).await;
    let work = m.stage("work").unwrap();
    let work_failed = inputs.iter().filter(|&&x| panics(x) || fails(x)).count() as u64;
    assert_eq!(
        (work.received, work.processed, work.failed, work.emitted),
        (n, n, work_failed, items.len() as u64),
        "{context}\n{m}"
    );
    let pack = m.stage("pack").unwrap();
    let total = items.len() as u64;
    let spoiled = items.iter().filter(|item| spoils(item)).count() as u64;
    assert_eq!(
        (pack.received, pack.processed, pack.failed, pack.emitted),
        (total, total, spoiled, chunks.len() as u64),
        "{context}: pack\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_items_into_a_batch_stage() {
    for &pattern in &PATTERNS[..4] {
        for n in [33, 129, 600] {
            run_packed(Packed::start().await, n, pattern).await;
            run_packed(PackedFused::start().await, n, pattern).await;
        }
    }
}

// ---------------------------------------------------------------------------
// A cast whose handler panics between acknowledged items.

#[derive(Debug, Clone, Copy)]
enum Crash {
    Now,
    Seen,
}

const CRASH_AT: u64 = 20;
static CRASH_GATE: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(0));
static CRASH_INITS: AtomicUsize = AtomicUsize::new(0);

/// Passes items on; waits at [`CRASH_GATE`] on input 0; on input
/// [`CRASH_AT`] casts itself a message whose handler panics (the state is
/// rebuilt, and the rest of the batch goes to the new one).
struct Crashy {
    flow: Crashing,
    seen: u64,
}

impl GenServer for Crashy {
    type Message = Crash;
    type Response = u64;
    type Registry = Crashing;
    fn new(flow: Crashing) -> Self {
        Crashy { flow, seen: 0 }
    }
    async fn init(&mut self) {
        CRASH_INITS.fetch_add(1, Ordering::SeqCst);
    }
    async fn handle_call(&mut self, _: Crash) -> u64 {
        self.seen
    }
    async fn handle_cast(&mut self, ask: Crash) {
        if let Crash::Now = ask {
            panic!("expected acked-loop panic in a cast");
        }
    }
    fn channel_queue_size() -> usize {
        64
    }
    fn restart_limit() -> genflow::RestartLimit {
        genflow::RestartLimit::new(1_000, Duration::from_secs(600))
    }
}

impl Stage for Crashy {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        if x == 0 {
            CRASH_GATE.acquire().await.unwrap().forget();
        }
        if x == CRASH_AT {
            self.flow.try_cast_crashy(Crash::Now).unwrap();
        }
        out.emit(x).await;
        if x % 7 == 3 {
            out.fail(format!("crashy {x}"));
        }
    }
}

#[genflow::pipeline{ crashy: Crashy }]
struct Crashing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cast_panicking_between_acked_items_loses_no_ack() {
    quiet_panics();
    const N: u64 = 50;
    let flow = Crashing::start().await;
    let ledger = Arc::new(Ledger::default());
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    let input = flow.acked();
    within("send", input.send(0, ledger.ack(0))).await.unwrap();
    eventually("input 0 in process", || flow.metrics().stage("crashy").unwrap().received == 1).await;
    // Mixed: every third plain.
    feed_mixed(&flow, &(1..N).collect::<Vec<_>>(), |x| x % 3 != 0, &ledger).await;
    eventually("all queued", || flow.metrics().stage("crashy").unwrap().queued == N - 1).await;
    CRASH_GATE.add_permits(1);
    eventually("all processed", || flow.metrics().stage("crashy").unwrap().processed == N).await;
    // The new state saw the items after the crash: those of the batch
    // [1..=32] after CRASH_AT, and [33..N).
    assert_eq!(within("call", flow.call_crashy(Crash::Seen)).await.unwrap(), N - CRASH_AT - 1);
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    let expected: BTreeMap<u64, Firing> = (0..N)
        .filter(|&x| x == 0 || x % 3 != 0)
        .map(|x| (x, firing(if x % 7 == 3 { vec![format!("crashy {x}")] } else { Vec::new() })))
        .collect();
    ledger.assert_fired(&expected, "a crashing cast").await;
    let m = flow.metrics();
    let s = m.stage("crashy").unwrap();
    let failed = (0..N).filter(|x| x % 7 == 3).count() as u64;
    assert_eq!((s.received, s.processed, s.emitted, s.failed, s.aborted), (N, N, N, failed, 0), "{m}");
    assert_eq!(CRASH_INITS.load(Ordering::SeqCst), 2, "one state built at start, one after the crash");
}

// ---------------------------------------------------------------------------
// Aborted while a cast is served in the middle of a batch of acked items.

#[derive(Debug, Clone, Copy)]
enum Stuck {
    Forever,
}

const STUCK_AT: u64 = 20;
static STUCK_GATE: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(0));
static STUCK_IN_CAST: AtomicBool = AtomicBool::new(false);

/// Passes items on; waits at [`STUCK_GATE`] on input 0; on [`STUCK_AT`]
/// casts itself a message whose handler never returns.
struct Sticky {
    flow: Sticking,
}

impl GenServer for Sticky {
    type Message = Stuck;
    type Response = ();
    type Registry = Sticking;
    fn new(flow: Sticking) -> Self {
        Sticky { flow }
    }
    async fn handle_call(&mut self, _: Stuck) {}
    async fn handle_cast(&mut self, _: Stuck) {
        STUCK_IN_CAST.store(true, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    fn channel_queue_size() -> usize {
        64
    }
}

impl Stage for Sticky {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        if x == 0 {
            STUCK_GATE.acquire().await.unwrap().forget();
        }
        if x == STUCK_AT {
            self.flow.try_cast_sticky(Stuck::Forever).unwrap();
        }
        out.emit(x).await;
        if x % 7 == 3 {
            out.fail(format!("sticky {x}"));
        }
    }
}

#[genflow::pipeline{ sticky: Sticky, tail: Pass<Sticking> }]
struct Sticking;

/// Batches [0], [1..=32], [33..=49]: the cast sent by input 20 is served
/// right after it and never returns; the pipeline is aborted then. Input
/// 0's output was read (delivered); 1..=20 are done but their outputs wait
/// in the emitter's buffer (dropped, or failed); 21.. are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_while_a_cast_is_served_mid_batch_fires_every_ack_once() {
    let flow = Sticking::start().await;
    let ledger = Arc::new(Ledger::default());
    let got = Arc::new(Mutex::new(Vec::new()));
    let reading = tokio::spawn({
        let got = got.clone();
        let mut output = flow.output().unwrap();
        async move {
            while let Some(item) = output.next().await {
                got.lock().unwrap().push(item);
            }
        }
    });
    let input = flow.acked();
    within("send", input.send(0, ledger.ack(0))).await.unwrap();
    eventually("input 0 in process", || flow.metrics().stage("sticky").unwrap().received == 1).await;
    let with: Vec<(u64, Ack)> = (1..50).map(|x| (x, ledger.ack(x))).collect();
    within("feed", input.feed(stream::iter(with))).await.unwrap();
    eventually("all queued", || flow.metrics().stage("sticky").unwrap().queued == 49).await;
    STUCK_GATE.add_permits(1);
    eventually("the cast in its handler", || STUCK_IN_CAST.load(Ordering::SeqCst)).await;
    eventually("input 0 read", || got.lock().unwrap().len() == 1).await;
    // Published before the cast was served.
    let m = flow.metrics();
    let sticky = m.stage("sticky").unwrap();
    assert_eq!((sticky.received, sticky.processed, sticky.failed), (33, STUCK_AT + 1, 3), "{m}");
    flow.abort();
    within("shutdown", flow.shutdown()).await;
    within("reader", reading).await.unwrap();
    assert_eq!(*got.lock().unwrap(), vec![0]);
    let expected: BTreeMap<u64, Firing> = (0..50)
        .map(|x| {
            let outcome = if x <= STUCK_AT && x % 7 == 3 {
                ("failed", vec![format!("sticky {x}")])
            } else if x == 0 {
                ("delivered", Vec::new())
            } else {
                ("dropped", Vec::new())
            };
            (x, outcome)
        })
        .collect();
    ledger.assert_fired(&expected, "abort while a cast is served").await;
    let m = flow.metrics();
    assert_settled(&m);
    let sticky = m.stage("sticky").unwrap();
    assert_eq!(
        (sticky.received, sticky.processed, sticky.aborted, sticky.failed, sticky.emitted),
        (50, STUCK_AT + 1, 50 - STUCK_AT - 1, 3, STUCK_AT + 1),
        "{m}"
    );
}

// ---------------------------------------------------------------------------
// A `process` that panics before it returns its future (a hand-written
// `fn process`, which the trait's signature allows, not an `async fn`).
// The docs (`Stage`, "Panics in `process`"; guide, "A panic inside
// `process` fails that one item") say it fails that one item and the
// stage goes on: on the item loop, and on the one-item path of
// rate-limited and `#[concurrency(N)]` stages alike.

/// Panics on input 5 when called, before making its future.
struct Eager<R> {
    seen: u64,
    _registry: PhantomData<R>,
}
server!(Eager, 64);

impl<R: Clone + Send + Sync + 'static> Stage for Eager<R> {
    type In = u64;
    type Out = u64;
    #[allow(clippy::manual_async_fn)]
    fn process(&mut self, x: u64, out: &mut Emitter<u64>) -> impl std::future::Future<Output = ()> + Send {
        self.seen += 1;
        if x == 5 {
            panic!("expected acked-loop panic on {x}");
        }
        async move { out.emit(x).await }
    }
}

#[genflow::pipeline{ eager: Eager<EagerLoop> }]
struct EagerLoop;

#[genflow::pipeline{ #[rate_limit(1_000_000, per = Duration::from_secs(1))] eager: Eager<EagerLimited> }]
struct EagerLimited;

#[genflow::pipeline{ #[concurrency(2)] eager: Eager<EagerConcurrent> }]
struct EagerConcurrent;

async fn run_eager<P: Pipeline<In = u64, Out = u64>>(flow: P) {
    quiet_panics();
    let context = std::any::type_name::<P>();
    let ledger = Arc::new(Ledger::default());
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    let with: Vec<(u64, Ack)> = (0..20).map(|x| (x, ledger.ack(x))).collect();
    within("feed", flow.acked().feed(stream::iter(with))).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let m = flow.metrics();
    assert_eq!(got, (0..20).filter(|&x| x != 5).collect::<Vec<_>>(), "{context}\n{m}");
    let expected: BTreeMap<u64, Firing> = (0..20)
        .map(|x| (x, firing(if x == 5 { vec![format!("expected acked-loop panic on {x}")] } else { Vec::new() })))
        .collect();
    ledger.assert_fired(&expected, context).await;
    let s = m.stage("eager").unwrap();
    assert_eq!((s.received, s.processed, s.failed, s.emitted, s.aborted), (20, 20, 1, 19, 0), "{context}\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_panic_on_the_loop() {
    run_eager(EagerLoop::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_panic_rate_limited() {
    run_eager(EagerLimited::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_panic_concurrent() {
    run_eager(EagerConcurrent::start().await).await;
}
