//! The path of plain items (no acknowledgements, no `#[concurrency]`, no
//! rate limit) and `Emitter::emit`'s future: exact metrics when a stage
//! fails, panics on, or emits 0, 1 or many items for some inputs, across
//! batch boundaries, fused and unfused, with `process` awaiting on some
//! items and not on others; calls and casts served between items with the
//! metrics they see; `#[max_demand]`, `#[batch]`, rate-limited and ordered
//! stages and acknowledged inputs mixed with plain ones giving the same
//! totals; `emit` futures dropped without being awaited (in `process` and
//! in `finish`) losing nothing; and `abort` in the middle of a batch
//! accounting for every item.

use std::{
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, stream};
use genflow::{
    Emitter, GenServer, Metrics, Pipeline, Stage,
    ack::{Ack, Outcome},
};
use tokio::sync::Semaphore;

#[path = "support/quiet.rs"]
mod quiet;
#[path = "support/wait.rs"]
mod wait;
use wait::{eventually_named as eventually, within_named as within};

/// Keeps the expected panics out of stderr; other panics print.
fn quiet_panics() {
    quiet::quiet_panics("expected plain-path panic");
}

// ---------------------------------------------------------------------------
// What `Work` does with input `x`.

/// `process` panics on these (emitting nothing first).
fn panics(x: u64) -> bool {
    x % 11 == 5
}

/// `process` emits one item, then calls `out.fail`.
fn fails(x: u64) -> bool {
    !panics(x) && x % 7 == 3
}

/// `process` yields (returns `Pending` once) before anything else.
fn awaits(x: u64) -> bool {
    x % 3 == 0
}

/// How many items `process` emits for `x`: 0, 1, 3 or 40 (more than a
/// batch).
fn count(x: u64) -> u64 {
    if panics(x) {
        0
    } else if fails(x) {
        1
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

/// Every item `Work` emits for `inputs`, in order.
fn model(inputs: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    inputs.into_iter().flat_map(|x| (0..count(x)).map(move |i| (x, i))).collect()
}

/// The exact counts of `Work` over `inputs`: (failed, emitted, panics).
fn expected_counts(inputs: &[u64]) -> (u64, u64, u64) {
    let failed = inputs.iter().filter(|&&x| panics(x) || fails(x)).count() as u64;
    let emitted = inputs.iter().map(|&x| count(x)).sum();
    let panicked = inputs.iter().filter(|&&x| panics(x)).count() as u64;
    (failed, emitted, panicked)
}

/// Declares a GenServer for a stage of registry `R` whose state is `seen`.
macro_rules! server {
    ($ty:ident, $queue:expr) => {
        impl<R: Clone + Send + Sync + 'static> GenServer for $ty<R> {
            type Message = ();
            type Response = u64;
            type Registry = R;
            fn new(_: R) -> Self {
                $ty { seen: 0, _registry: std::marker::PhantomData }
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

/// Emits what [`count`] says for each input; fails, panics on and awaits
/// in some.
struct Work<R> {
    seen: u64,
    _registry: std::marker::PhantomData<R>,
}
server!(Work, 64);

impl<R: Clone + Send + Sync + 'static> Stage for Work<R> {
    type In = u64;
    type Out = (u64, u64);
    async fn process(&mut self, x: u64, out: &mut Emitter<(u64, u64)>) {
        self.seen += 1;
        if awaits(x) {
            tokio::task::yield_now().await;
        }
        if panics(x) {
            panic!("expected plain-path panic on {x}");
        }
        for i in 0..count(x) {
            out.emit((x, i)).await;
        }
        if fails(x) {
            out.fail(format!("failed {x}"));
        }
    }
}

/// Passes items on.
struct Pass<R> {
    seen: u64,
    _registry: std::marker::PhantomData<R>,
}
server!(Pass, 16);

impl<R: Clone + Send + Sync + 'static> Stage for Pass<R> {
    type In = (u64, u64);
    type Out = (u64, u64);
    async fn process(&mut self, item: (u64, u64), out: &mut Emitter<(u64, u64)>) {
        self.seen += 1;
        out.emit(item).await;
    }
}

/// Passes inputs on, before a fused `Work`.
struct Head<R> {
    seen: u64,
    _registry: std::marker::PhantomData<R>,
}
server!(Head, 64);

impl<R: Clone + Send + Sync + 'static> Stage for Head<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        out.emit(x).await;
    }
}

#[genflow::pipeline{ work: Work<Line>, tail: Pass<Line> }]
struct Line;

#[genflow::pipeline{ work: Work<FusedNext>, #[fused] tail: Pass<FusedNext> }]
struct FusedNext;

#[genflow::pipeline{ head: Head<FusedAll>, #[fused] work: Work<FusedAll>, #[fused] tail: Pass<FusedAll> }]
struct FusedAll;

#[genflow::pipeline{ #[replicas(3)] #[max_demand(5)] work: Work<Spread>, tail: Pass<Spread> }]
struct Spread;

#[genflow::pipeline{ #[max_demand(7)] work: Work<Demand>, tail: Pass<Demand> }]
struct Demand;

#[genflow::pipeline{ #[replicas(3, ordered)] work: Work<Ordered>, tail: Pass<Ordered> }]
struct Ordered;

#[genflow::pipeline{ #[rate_limit(1_000_000, per = Duration::from_secs(1))] work: Work<Limited>, tail: Pass<Limited> }]
struct Limited;

/// Feeds `inputs`, shuts down, and checks the output and every count of
/// `work` and `tail` (in order if `in_order`). Returns the metrics.
async fn run_totals<P: Pipeline<In = u64, Out = (u64, u64)>>(flow: P, inputs: Vec<u64>, in_order: bool) -> Metrics {
    quiet_panics();
    let output = flow.output().unwrap();
    let failures = flow.failures().unwrap();
    let reading = tokio::spawn(output.collect::<Vec<_>>());
    let failing = tokio::spawn(failures.collect::<Vec<_>>());
    let n = inputs.len() as u64;
    let fed = within("feed", flow.feed(stream::iter(inputs.clone()))).await.unwrap();
    assert_eq!(fed as u64, n);
    within("shutdown", flow.shutdown()).await;
    let mut got = within("output", reading).await.unwrap();
    let failed_list = within("failures", failing).await.unwrap();
    let m = flow.metrics();
    let mut want = model(inputs.iter().copied());
    if !in_order {
        got.sort_unstable();
        want.sort_unstable();
    }
    assert_eq!(got.len(), want.len(), "output length for n = {n}\n{m}");
    assert!(got == want, "output for n = {n}\n{m}");
    let (failed, emitted, panicked) = expected_counts(&inputs);
    let work = m.stage("work").unwrap();
    assert_eq!(work.received, n, "work received, n = {n}\n{m}");
    assert_eq!(work.processed, n, "work processed, n = {n}\n{m}");
    assert_eq!(work.failed, failed, "work failed, n = {n}\n{m}");
    assert_eq!(work.emitted, emitted, "work emitted, n = {n}\n{m}");
    assert_eq!((work.dropped, work.aborted, work.queued, work.in_flight), (0, 0, 0, 0), "n = {n}\n{m}");
    let per_replica: u64 = work.replicas.iter().map(|r| r.processed).sum();
    assert_eq!(per_replica, n, "n = {n}\n{m}");
    let tail = m.stage("tail").unwrap();
    assert_eq!(
        (tail.received, tail.processed, tail.emitted, tail.failed),
        (emitted, emitted, emitted, 0),
        "n = {n}\n{m}"
    );
    assert_eq!((tail.dropped, tail.aborted, tail.queued), (0, 0, 0), "n = {n}\n{m}");
    assert_eq!(failed_list.len() as u64, failed, "failures, n = {n}\n{m}");
    assert!(failed_list.iter().all(|f| f.stage() == "work"), "{failed_list:?}");
    assert_eq!(failed_list.iter().filter(|f| f.is_panic()).count() as u64, panicked, "{failed_list:?}");
    assert_eq!(m.failures_dropped(), 0, "{m}");
    m
}

/// Input counts around and across the batch size of 32.
const SIZES: [u64; 9] = [1, 5, 31, 32, 33, 64, 65, 100, 1_003];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_metrics_unfused_across_batch_sizes() {
    for n in SIZES {
        run_totals(Line::start().await, (0..n).collect(), true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_metrics_with_a_fused_next_stage() {
    for n in SIZES {
        run_totals(FusedNext::start().await, (0..n).collect(), true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_metrics_in_a_fused_group() {
    for n in SIZES {
        let m = run_totals(FusedAll::start().await, (0..n).collect(), true).await;
        let head = m.stage("head").unwrap();
        assert_eq!((head.received, head.processed, head.emitted, head.failed), (n, n, n, 0), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_metrics_with_replicas_and_max_demand() {
    for n in SIZES {
        run_totals(Spread::start().await, (0..n).collect(), false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_metrics_with_a_small_max_demand() {
    for n in SIZES {
        run_totals(Demand::start().await, (0..n).collect(), true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_metrics_and_order_with_ordered_replicas() {
    for n in SIZES {
        run_totals(Ordered::start().await, (0..n).collect(), true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_metrics_with_a_rate_limit() {
    for n in SIZES {
        run_totals(Limited::start().await, (0..n).collect(), true).await;
    }
}

/// Only items that neither await, fail, nor panic: every one stays on the
/// plain loop (but those that fill a batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_metrics_when_no_item_leaves_the_plain_loop() {
    let calm: Vec<u64> = (0..5_000).filter(|&x| !awaits(x) && !panics(x) && !fails(x)).collect();
    let m = run_totals(Line::start().await, calm.clone(), true).await;
    assert_eq!(m.stage("work").unwrap().failed, 0);
    let m = run_totals(FusedNext::start().await, calm, true).await;
    assert_eq!(m.stage("work").unwrap().failed, 0);
}

/// Only failing and panicking items, none awaiting: each leaves the plain
/// loop for the bookkeeping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_metrics_when_every_item_fails() {
    let bad: Vec<u64> = (0..3_000).filter(|&x| !awaits(x) && (panics(x) || fails(x))).collect();
    assert!(bad.len() > 100);
    let m = run_totals(Line::start().await, bad.clone(), true).await;
    assert_eq!(m.stage("work").unwrap().failed, bad.len() as u64);
    let m = run_totals(FusedNext::start().await, bad.clone(), true).await;
    assert_eq!(m.stage("work").unwrap().failed, bad.len() as u64);
}

// ---------------------------------------------------------------------------
// Acknowledged inputs mixed with plain ones.

#[genflow::pipeline{ work: Work<Acked>, tail: Pass<Acked> }]
struct Acked;

#[genflow::pipeline{ work: Work<AckedFused>, #[fused] tail: Pass<AckedFused> }]
struct AckedFused;

/// Inputs whose `x % 3 == 1` go in with an acknowledgement.
fn acked(x: u64) -> bool {
    x % 3 == 1
}

async fn mixed_acks<P: Pipeline<In = u64, Out = (u64, u64)>>(flow: P, n: u64) {
    quiet_panics();
    let fired: Arc<Mutex<Vec<(u64, &'static str)>>> = Arc::default();
    let output = flow.output().unwrap();
    let failures = flow.failures().unwrap();
    let reading = tokio::spawn(output.collect::<Vec<_>>());
    let failing = tokio::spawn(failures.collect::<Vec<_>>());
    let input = flow.acked();
    let mut x = 0;
    while x < n {
        // Runs of plain inputs fed together, acknowledged ones sent alone.
        if acked(x) {
            let fired = fired.clone();
            let ack = Ack::new(move |outcome: Outcome| fired.lock().unwrap().push((x, outcome.kind())));
            within("acked send", input.send(x, ack)).await.unwrap();
            x += 1;
        } else {
            let end = (x..n).find(|&y| acked(y)).unwrap_or(n);
            within("feed", flow.feed(stream::iter(x..end))).await.unwrap();
            x = end;
        }
    }
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let failed_list = within("failures", failing).await.unwrap();
    let m = flow.metrics();
    let inputs: Vec<u64> = (0..n).collect();
    assert_eq!(got, model(0..n), "{m}");
    let (failed, emitted, _) = expected_counts(&inputs);
    let work = m.stage("work").unwrap();
    assert_eq!((work.received, work.processed, work.failed, work.emitted), (n, n, failed, emitted), "{m}");
    assert_eq!(failed_list.len() as u64, failed, "{m}");
    let mut fired = fired.lock().unwrap().clone();
    fired.sort_unstable();
    let want: Vec<(u64, &str)> =
        (0..n).filter(|&x| acked(x)).map(|x| (x, if panics(x) || fails(x) { "failed" } else { "delivered" })).collect();
    assert_eq!(fired, want, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_inputs_mixed_with_plain_ones() {
    for n in [40, 100, 1_000] {
        mixed_acks(Acked::start().await, n).await;
        mixed_acks(AckedFused::start().await, n).await;
    }
}

// ---------------------------------------------------------------------------
// A `#[batch]` stage after `Work`.

/// Emits the length of each batch; fails a batch holding an item of an
/// input `x` with `x % 17 == 2`.
struct Pack<R> {
    seen: u64,
    _registry: std::marker::PhantomData<R>,
}
server!(Pack, 8);

fn spoils(item: &(u64, u64)) -> bool {
    item.0 % 17 == 2
}

impl<R: Clone + Send + Sync + 'static> Stage for Pack<R> {
    type In = Vec<(u64, u64)>;
    type Out = u64;
    async fn process(&mut self, batch: Vec<(u64, u64)>, out: &mut Emitter<u64>) {
        self.seen += 1;
        if batch.len() % 2 == 0 {
            tokio::task::yield_now().await;
        }
        out.emit(batch.len() as u64).await;
        if batch.iter().any(spoils) {
            out.fail("spoiled batch");
        }
    }
}

const PACK: usize = 10;

#[genflow::pipeline{ work: Work<Packed>, #[batch(size = PACK, timeout = Duration::from_secs(3600))] pack: Pack<Packed> }]
struct Packed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_metrics_through_a_batch_stage() {
    quiet_panics();
    for n in SIZES {
        let flow = Packed::start().await;
        let output = flow.output().unwrap();
        let failures = flow.failures().unwrap();
        let reading = tokio::spawn(output.collect::<Vec<_>>());
        let failing = tokio::spawn(failures.collect::<Vec<_>>());
        within("feed", flow.feed(stream::iter(0..n))).await.unwrap();
        within("shutdown", flow.shutdown()).await;
        let got = within("output", reading).await.unwrap();
        let failed_list = within("failures", failing).await.unwrap();
        let m = flow.metrics();
        let items = model(0..n);
        let chunks: Vec<&[(u64, u64)]> = items.chunks(PACK).collect();
        let lens: Vec<u64> = chunks.iter().map(|c| c.len() as u64).collect();
        assert_eq!(got, lens, "n = {n}\n{m}");
        let spoiled: Vec<&&[(u64, u64)]> = chunks.iter().filter(|c| c.iter().any(spoils)).collect();
        let spoiled_items: u64 = spoiled.iter().map(|c| c.len() as u64).sum();
        let inputs: Vec<u64> = (0..n).collect();
        let (failed, emitted, _) = expected_counts(&inputs);
        let work = m.stage("work").unwrap();
        assert_eq!((work.received, work.processed, work.failed, work.emitted), (n, n, failed, emitted), "{m}");
        let pack = m.stage("pack").unwrap();
        let total = items.len() as u64;
        assert_eq!(pack.received, total, "n = {n}\n{m}");
        assert_eq!(pack.processed, total, "n = {n}\n{m}");
        assert_eq!(pack.failed, spoiled_items, "n = {n}\n{m}");
        assert_eq!(pack.emitted, chunks.len() as u64, "n = {n}\n{m}");
        assert_eq!(
            failed_list.iter().filter(|f| f.stage() == "pack").count(),
            spoiled.len(),
            "n = {n}: one failure per spoiled batch\n{m}"
        );
    }
}

// ---------------------------------------------------------------------------
// Calls and casts served between plain items.

/// What `Probe` is asked.
#[derive(Clone, Debug)]
enum Ask {
    /// (items seen, `processed` of the stage in the metrics).
    Seen,
    /// As a cast: records `Seen`'s answer.
    Record,
}

/// Released by the test: `Probe` waits for it on input 0.
static GATE: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(0));
/// What `Probe`'s casts recorded.
static RECORDS: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// Passes items on; waits for [`GATE`] on input 0; casts `Record` to
/// itself on inputs 5 and 20.
struct Probe {
    flow: Calls,
    seen: u64,
}

impl Probe {
    fn now(&self) -> (u64, u64) {
        (self.seen, self.flow.metrics().stage("probe").unwrap().processed)
    }
}

impl GenServer for Probe {
    type Message = Ask;
    type Response = (u64, u64);
    type Registry = Calls;
    fn new(flow: Calls) -> Self {
        Probe { flow, seen: 0 }
    }
    async fn handle_call(&mut self, _: Ask) -> (u64, u64) {
        self.now()
    }
    async fn handle_cast(&mut self, ask: Ask) {
        if let Ask::Record = ask {
            let now = self.now();
            RECORDS.lock().unwrap().push(now);
        }
    }
    fn channel_queue_size() -> usize {
        64
    }
}

impl Stage for Probe {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        if x == 0 {
            GATE.acquire().await.unwrap().forget();
        }
        if x == 5 || x == 20 {
            self.flow.try_cast_probe(Ask::Record).unwrap();
        }
        out.emit(x).await;
    }
}

#[genflow::pipeline{ probe: Probe }]
struct Calls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cast_between_plain_items_sees_exact_state_and_metrics() {
    let flow = Calls::start().await;
    let output = flow.output().unwrap();
    let reading = tokio::spawn(output.take(40).collect::<Vec<_>>());
    flow.send(0).await.unwrap();
    eventually("input 0 in process", || flow.metrics().stage("probe").unwrap().received == 1).await;
    // The next 39 wait in the queue, to be taken as one batch of 32 and
    // one of 7.
    within("feed", flow.feed(stream::iter(1..40))).await.unwrap();
    eventually("39 queued", || flow.metrics().stage("probe").unwrap().queued == 39).await;
    GATE.add_permits(1);
    let got = within("output", reading).await.unwrap();
    assert_eq!(got, (0..40).collect::<Vec<_>>());
    // Casts sent from `process` of inputs 5 and 20 are served right after
    // them, in the middle of the batch: 6 and 21 items seen, as many
    // counted processed.
    assert_eq!(within("call", flow.call_probe(Ask::Seen)).await.unwrap(), (40, 40));
    assert_eq!(*RECORDS.lock().unwrap(), vec![(6, 6), (21, 21)]);
    within("shutdown", flow.shutdown()).await;
    let m = flow.metrics();
    let probe = m.stage("probe").unwrap();
    assert_eq!((probe.received, probe.processed, probe.emitted, probe.failed), (40, 40, 40, 0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_while_plain_items_flow_see_processed_equal_to_state() {
    const N: u64 = 20_000;
    let flow = Calls::start().await;
    let output = flow.output().unwrap();
    let reading = tokio::spawn(output.map(|_| 1u64).fold(0u64, |a, b| async move { a + b }));
    let feeder = tokio::spawn({
        let flow = flow.clone();
        // Inputs from 100 on: no gate, no casts.
        async move { flow.feed(stream::iter(100..100 + N)).await }
    });
    let mut answers = 0;
    let mut last = 0;
    while !feeder.is_finished() || answers < 10 {
        let (seen, processed) = within("call", flow.call_probe(Ask::Seen)).await.unwrap();
        assert_eq!(seen, processed, "a call between items sees every item it saw counted processed");
        assert!(seen >= last, "state went back: {seen} < {last}");
        last = seen;
        answers += 1;
        if seen == N {
            break;
        }
    }
    assert_eq!(within("feeder", feeder).await.unwrap().unwrap() as u64, N);
    within("shutdown", flow.shutdown()).await;
    assert_eq!(within("output", reading).await.unwrap(), N);
    let m = flow.metrics();
    let probe = m.stage("probe").unwrap();
    assert_eq!((probe.received, probe.processed, probe.emitted, probe.failed), (N, N, N, 0), "{m}");
}

// ---------------------------------------------------------------------------
// `emit` futures dropped without being awaited.

/// Items `Spray` emits per input, more than two batches.
const SPRAY: u64 = 70;
/// Items `Spray`'s `finish` emits.
const AT_FINISH: u64 = 45;

/// Emits [`SPRAY`] items per input without awaiting `emit`'s futures
/// (yielding first on every fourth input), and [`AT_FINISH`] in `finish`
/// the same way.
struct Spray<R> {
    seen: u64,
    _registry: std::marker::PhantomData<R>,
}
server!(Spray, 8);

impl<R: Clone + Send + Sync + 'static> Stage for Spray<R> {
    type In = u64;
    type Out = (u64, u64);
    async fn process(&mut self, x: u64, out: &mut Emitter<(u64, u64)>) {
        self.seen += 1;
        if x % 4 == 0 {
            tokio::task::yield_now().await;
        }
        for i in 0..SPRAY {
            drop(out.emit((x, i)));
        }
    }
    async fn finish(&mut self, out: &mut Emitter<(u64, u64)>) {
        for i in 0..AT_FINISH {
            drop(out.emit((u64::MAX, i)));
        }
    }
}

/// Passes items on; a queue of two.
struct Narrow<R> {
    seen: u64,
    _registry: std::marker::PhantomData<R>,
}
server!(Narrow, 2);

impl<R: Clone + Send + Sync + 'static> Stage for Narrow<R> {
    type In = (u64, u64);
    type Out = (u64, u64);
    async fn process(&mut self, item: (u64, u64), out: &mut Emitter<(u64, u64)>) {
        self.seen += 1;
        out.emit(item).await;
    }
}

#[genflow::pipeline{ spray: Spray<SprayLine>, tail: Narrow<SprayLine> }]
struct SprayLine;

#[genflow::pipeline{ spray: Spray<SprayFused>, #[fused] tail: Narrow<SprayFused> }]
struct SprayFused;

#[genflow::pipeline{ #[replicas(2, ordered)] spray: Spray<SprayOrdered>, tail: Narrow<SprayOrdered> }]
struct SprayOrdered;

#[genflow::pipeline{ #[replicas(2)] spray: Spray<SprayShared>, tail: Narrow<SprayShared> }]
struct SprayShared;

/// Feeds `0..n` and checks every item arrived, in order if `in_order`
/// (what `finish` emitted last, per replica: `replicas` times).
async fn dropped_emits<P: Pipeline<In = u64, Out = (u64, u64)>>(flow: P, n: u64, replicas: u64, in_order: bool) {
    let output = flow.output().unwrap();
    let reading = tokio::spawn(output.collect::<Vec<_>>());
    within("feed", flow.feed(stream::iter(0..n))).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    let mut got = within("output", reading).await.unwrap();
    let m = flow.metrics();
    let mut want: Vec<(u64, u64)> = (0..n).flat_map(|x| (0..SPRAY).map(move |i| (x, i))).collect();
    for _ in 0..replicas {
        want.extend((0..AT_FINISH).map(|i| (u64::MAX, i)));
    }
    if in_order {
        let (body, ends) = got.split_at(got.len().saturating_sub((replicas * AT_FINISH) as usize));
        let (want_body, want_ends) = want.split_at(want.len() - (replicas * AT_FINISH) as usize);
        assert!(body == want_body, "n = {n}: items emitted in process, in order\n{m}");
        let mut ends = ends.to_vec();
        ends.sort_unstable();
        let mut want_ends = want_ends.to_vec();
        want_ends.sort_unstable();
        assert_eq!(ends, want_ends, "n = {n}: items emitted in finish\n{m}");
    } else {
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got.len(), want.len(), "n = {n}\n{m}");
        assert!(got == want, "n = {n}\n{m}");
    }
    let total = want.len() as u64;
    let spray = m.stage("spray").unwrap();
    assert_eq!((spray.received, spray.processed, spray.emitted, spray.dropped), (n, n, total, 0), "n = {n}\n{m}");
    let tail = m.stage("tail").unwrap();
    assert_eq!((tail.received, tail.processed, tail.emitted), (total, total, total), "n = {n}\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_emit_futures_lose_nothing_unfused() {
    for n in [0, 1, 2, 33, 200] {
        dropped_emits(SprayLine::start().await, n, 1, true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_emit_futures_lose_nothing_fused() {
    for n in [0, 1, 2, 33, 200] {
        dropped_emits(SprayFused::start().await, n, 1, true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_emit_futures_lose_nothing_ordered() {
    for n in [0, 1, 2, 33, 200] {
        dropped_emits(SprayOrdered::start().await, n, 2, true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_emit_futures_lose_nothing_shared_replicas() {
    for n in [0, 1, 2, 33, 200] {
        dropped_emits(SprayShared::start().await, n, 2, false).await;
    }
}

// ---------------------------------------------------------------------------
// `abort` in the middle of a batch.

/// Set when `Hang` reaches its hanging input.
static HUNG: AtomicBool = AtomicBool::new(false);
/// The input `Hang` never finishes.
const HANG_AT: u64 = 40;

/// Passes items on; never returns from `process` of [`HANG_AT`].
struct Hang<R> {
    seen: u64,
    _registry: std::marker::PhantomData<R>,
}
server!(Hang, 64);

impl<R: Clone + Send + Sync + 'static> Stage for Hang<R> {
    type In = u64;
    type Out = (u64, u64);
    async fn process(&mut self, x: u64, out: &mut Emitter<(u64, u64)>) {
        self.seen += 1;
        if x == HANG_AT {
            HUNG.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        out.emit((x, 0)).await;
    }
}

#[genflow::pipeline{ work: Hang<Hung>, tail: Pass<Hung> }]
struct Hung;

/// Never returns from `process`.
struct Stuck<R> {
    seen: u64,
    _registry: std::marker::PhantomData<R>,
}
server!(Stuck, 8);

impl<R: Clone + Send + Sync + 'static> Stage for Stuck<R> {
    type In = (u64, u64);
    type Out = (u64, u64);
    async fn process(&mut self, _: (u64, u64), _: &mut Emitter<(u64, u64)>) {
        self.seen += 1;
        std::future::pending::<()>().await;
    }
}

#[genflow::pipeline{ work: Work<Jam>, tail: Stuck<Jam> }]
struct Jam;

/// The identities that hold once an aborted pipeline has stopped.
fn assert_settled(m: &Metrics) {
    for s in m.stages() {
        assert_eq!(s.received, s.processed + s.aborted, "{}: received = processed + aborted\n{m}", s.name);
        assert_eq!(s.queued, 0, "{}: nothing queued\n{m}", s.name);
        for (i, r) in s.replicas.iter().enumerate() {
            assert_eq!(r.received, r.processed + r.aborted, "{} replica {i}\n{m}", s.name);
        }
    }
    for pair in m.stages().windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(a.emitted, b.received + a.dropped, "{} emitted = {} received + dropped\n{m}", a.name, b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_while_an_item_hangs_mid_batch() {
    let flow = Hung::start().await;
    let output = flow.output().unwrap();
    let reading = tokio::spawn(output.collect::<Vec<_>>());
    // Input 0 alone, then 1..50 at once: 40 is in the middle of a batch.
    flow.send(0).await.unwrap();
    within("feed", flow.feed(stream::iter(1..50))).await.unwrap();
    eventually("input 40 in process", || HUNG.load(Ordering::SeqCst)).await;
    flow.abort();
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let m = flow.metrics();
    assert_settled(&m);
    let work = m.stage("work").unwrap();
    assert_eq!(work.received, 50, "{m}");
    assert_eq!(work.processed, HANG_AT, "inputs before 40 done\n{m}");
    assert_eq!(work.aborted, 50 - HANG_AT, "40 in process and what followed it\n{m}");
    assert_eq!(work.emitted, HANG_AT, "{m}");
    assert_eq!(work.failed, 0, "{m}");
    let tail = m.stage("tail").unwrap();
    assert!(got.len() as u64 <= tail.emitted, "{m}");
    assert_eq!(got, (0..got.len() as u64).map(|x| (x, 0)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_of_a_jammed_pipeline_accounts_for_every_item() {
    quiet_panics();
    let flow = Jam::start().await;
    let feeder = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(0..)).await }
    });
    eventually("jammed", || {
        let m = flow.metrics();
        let (work, tail) = (m.stage("work").unwrap(), m.stage("tail").unwrap());
        work.queued == work.capacity && tail.queued == tail.capacity && work.emitted > tail.received + tail.queued
    })
    .await;
    flow.abort();
    within("shutdown", flow.shutdown()).await;
    let m = flow.metrics();
    assert_settled(&m);
    let (work, tail) = (m.stage("work").unwrap(), m.stage("tail").unwrap());
    assert_eq!(tail.processed, 0, "{m}");
    assert!(work.dropped > 0, "{m}");
    // Of what `work` finished, the failures are exact.
    let done: Vec<u64> = (0..work.processed).collect();
    let (failed, emitted, _) = expected_counts(&done);
    assert_eq!(work.failed, failed, "{m}");
    // The item in process when aborted (blocked in `emit`) may have
    // emitted some of its items.
    assert!(work.emitted >= emitted && work.emitted <= emitted + 40, "{m}");
    assert!(within("feeder", feeder).await.unwrap().is_err());
}

// ---------------------------------------------------------------------------
// Failures with `failures()` not taken.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_metrics_when_failures_are_not_taken() {
    quiet_panics();
    for n in SIZES {
        let flow = FusedNext::start().await;
        let output = flow.output().unwrap();
        let reading = tokio::spawn(output.collect::<Vec<_>>());
        within("feed", flow.feed(stream::iter(0..n))).await.unwrap();
        within("shutdown", flow.shutdown()).await;
        let got = within("output", reading).await.unwrap();
        let m = flow.metrics();
        assert_eq!(got, model(0..n), "{m}");
        let inputs: Vec<u64> = (0..n).collect();
        let (failed, emitted, _) = expected_counts(&inputs);
        let work = m.stage("work").unwrap();
        assert_eq!((work.received, work.processed, work.failed, work.emitted), (n, n, failed, emitted), "{m}");
        assert_eq!(m.failures_dropped(), failed, "failures nobody took are counted\n{m}");
    }
}

// ---------------------------------------------------------------------------
// A cast handler that panics between plain items.

/// What `Crashy` is asked.
#[derive(Clone, Debug)]
enum Crash {
    /// As a call: items seen by this state.
    Seen,
    /// As a cast: panics.
    Now,
}

/// Passes items on; on input [`CRASH_AT`], casts itself `Crash::Now`.
struct Crashy {
    flow: Crashing,
    seen: u64,
}

const CRASH_AT: u64 = 10;

impl GenServer for Crashy {
    type Message = Crash;
    type Response = u64;
    type Registry = Crashing;
    fn new(flow: Crashing) -> Self {
        Crashy { flow, seen: 0 }
    }
    async fn handle_call(&mut self, _: Crash) -> u64 {
        self.seen
    }
    async fn handle_cast(&mut self, ask: Crash) {
        if let Crash::Now = ask {
            panic!("expected plain-path panic in a cast");
        }
    }
    fn channel_queue_size() -> usize {
        64
    }
}

impl Stage for Crashy {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        if x == CRASH_AT {
            self.flow.try_cast_crashy(Crash::Now).unwrap();
        }
        out.emit(x).await;
    }
}

#[genflow::pipeline{ crashy: Crashy }]
struct Crashing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cast_panicking_between_plain_items_loses_no_item() {
    quiet_panics();
    const N: u64 = 50;
    let flow = Crashing::start().await;
    let output = flow.output().unwrap();
    let reading = tokio::spawn(output.collect::<Vec<_>>());
    within("feed", flow.feed(stream::iter(0..N))).await.unwrap();
    within("flush", flow.flush()).await.unwrap();
    // The inputs after the crash were processed by the fresh state.
    assert_eq!(within("call", flow.call_crashy(Crash::Seen)).await.unwrap(), N - CRASH_AT - 1);
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let m = flow.metrics();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "{m}");
    let s = m.stage("crashy").unwrap();
    assert_eq!((s.received, s.processed, s.emitted, s.failed, s.aborted), (N, N, N, 0, 0), "{m}");
}

// ---------------------------------------------------------------------------
// Stages written as functions.

#[genflow::stage]
fn checked(x: u64) -> Result<Vec<(u64, u64)>, String> {
    if fails(x) || panics(x) {
        return Err(format!("bad {x}"));
    }
    Ok((0..count(x)).map(|i| (x, i)).collect())
}

#[genflow::stage]
async fn maybe_later(item: (u64, u64)) -> Option<(u64, u64)> {
    if item.0 % 3 == 0 {
        tokio::task::yield_now().await;
    }
    (item.1 % 2 == 0).then_some(item)
}

#[genflow::pipeline{ checked: Checked<Functions>, #[fused] later: MaybeLater<Functions> }]
struct Functions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_metrics_of_function_stages() {
    for n in SIZES {
        let flow = Functions::start().await;
        let output = flow.output().unwrap();
        let failures = flow.failures().unwrap();
        let reading = tokio::spawn(output.collect::<Vec<_>>());
        let failing = tokio::spawn(failures.collect::<Vec<_>>());
        within("feed", flow.feed(stream::iter(0..n))).await.unwrap();
        within("shutdown", flow.shutdown()).await;
        let got = within("output", reading).await.unwrap();
        let failed_list = within("failures", failing).await.unwrap();
        let m = flow.metrics();
        let good: Vec<u64> = (0..n).filter(|&x| !fails(x) && !panics(x)).collect();
        let middle = model(good.iter().copied());
        let want: Vec<(u64, u64)> = middle.iter().copied().filter(|i| i.1 % 2 == 0).collect();
        assert_eq!(got, want, "n = {n}\n{m}");
        let bad = n - good.len() as u64;
        let checked = m.stage("checked").unwrap();
        assert_eq!(
            (checked.received, checked.processed, checked.failed, checked.emitted),
            (n, n, bad, middle.len() as u64),
            "n = {n}\n{m}"
        );
        let later = m.stage("later").unwrap();
        let mid = middle.len() as u64;
        assert_eq!(
            (later.received, later.processed, later.failed, later.emitted),
            (mid, mid, 0, want.len() as u64),
            "{m}"
        );
        assert_eq!(failed_list.len() as u64, bad, "{m}");
    }
}

// ---------------------------------------------------------------------------
// `emit` futures dropped in `handle_timer`.

/// Holds its inputs; writes them out at each tick of a timer, without
/// awaiting `emit`'s futures.
struct Ticker {
    held: Vec<u64>,
}

impl GenServer for Ticker {
    type Message = ();
    type Response = ();
    type Registry = Ticked;
    fn new(_: Ticked) -> Self {
        Ticker { held: Vec::new() }
    }
    async fn init(&mut self) {
        self.send_interval(Duration::from_millis(100), ()).expect("in the stage's task");
    }
    async fn handle_call(&mut self, _: ()) {}
    fn channel_queue_size() -> usize {
        256
    }
}

impl Stage for Ticker {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, _: &mut Emitter<u64>) {
        self.held.push(x);
    }
    async fn handle_timer(&mut self, _: (), out: &mut Emitter<u64>) {
        for x in std::mem::take(&mut self.held) {
            drop(out.emit(x));
        }
    }
}

#[genflow::pipeline{ ticker: Ticker }]
struct Ticked;

#[tokio::test(start_paused = true)]
async fn dropped_emit_futures_in_handle_timer_lose_nothing() {
    for n in [1u64, 31, 32, 33, 100] {
        let flow = Ticked::start().await;
        let output = flow.output().unwrap();
        within("feed", flow.feed(stream::iter(0..n))).await.unwrap();
        // No more input, no shutdown: the timer writes them out.
        let got: Vec<u64> = within("output", output.take(n as usize).collect()).await;
        assert_eq!(got, (0..n).collect::<Vec<_>>());
        within("shutdown", flow.shutdown()).await;
        let m = flow.metrics();
        let t = m.stage("ticker").unwrap();
        assert_eq!((t.received, t.processed, t.emitted, t.dropped), (n, n, n, 0), "{m}");
    }
}

// ---------------------------------------------------------------------------
// A `#[concurrency]` stage mixing `emit` (some futures dropped) and
// `emit_async`.

/// On even inputs `emit_async`s a future that yields then gives the item;
/// on odd ones emits 35 items, dropping the futures.
struct Mixed<R> {
    seen: u64,
    _registry: std::marker::PhantomData<R>,
}
server!(Mixed, 16);

impl<R: Clone + Send + Sync + 'static> Stage for Mixed<R> {
    type In = u64;
    type Out = (u64, u64);
    async fn process(&mut self, x: u64, out: &mut Emitter<(u64, u64)>) {
        self.seen += 1;
        if x % 2 == 0 {
            out.emit_async(async move {
                tokio::task::yield_now().await;
                (x, 0)
            })
            .await;
        } else {
            for i in 0..35 {
                drop(out.emit((x, i)));
            }
        }
    }
}

#[genflow::pipeline{ #[concurrency(4)] mixed: Mixed<Concurrent>, tail: Pass<Concurrent> }]
struct Concurrent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_emit_futures_in_a_concurrent_stage_lose_nothing() {
    for n in [1u64, 2, 33, 100] {
        let flow = Concurrent::start().await;
        let output = flow.output().unwrap();
        let reading = tokio::spawn(output.collect::<Vec<_>>());
        within("feed", flow.feed(stream::iter(0..n))).await.unwrap();
        within("shutdown", flow.shutdown()).await;
        let mut got = within("output", reading).await.unwrap();
        let m = flow.metrics();
        got.sort_unstable();
        let mut want: Vec<(u64, u64)> =
            (0..n).flat_map(|x| if x % 2 == 0 { 0..1 } else { 0..35 }.map(move |i| (x, i))).collect();
        want.sort_unstable();
        assert!(got == want, "n = {n}: {} items, {} expected\n{m}", got.len(), want.len());
        let s = m.stage("mixed").unwrap();
        let total = want.len() as u64;
        assert_eq!((s.received, s.processed, s.emitted, s.dropped, s.in_flight), (n, n, total, 0, 0), "{m}");
    }
}

// ---------------------------------------------------------------------------
// Dropped `emit` futures into a partitioned stage.

fn by_input(item: &(u64, u64)) -> u64 {
    item.0
}

#[genflow::pipeline{ spray: Spray<SprayKeyed>, #[replicas(3, partition_by = by_input)] tail: Narrow<SprayKeyed> }]
struct SprayKeyed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_emit_futures_lose_nothing_into_partitions() {
    for n in [0, 1, 2, 33, 200] {
        dropped_emits(SprayKeyed::start().await, n, 1, false).await;
    }
}

// ---------------------------------------------------------------------------
// Casts served between items that wait on a gate and items that do not.

/// Released by the test, one permit at a time: `Turnstile` waits for one
/// on each even input.
static TURNSTILE: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(0));
/// What `Turnstile`'s casts recorded: (items seen, `processed`).
static TURNS: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
/// 1 + the input waiting at the gate last.
static AT_GATE: AtomicU64 = AtomicU64::new(0);

struct Turnstile {
    flow: Turns,
    seen: u64,
}

impl GenServer for Turnstile {
    type Message = ();
    type Response = (u64, u64);
    type Registry = Turns;
    fn new(flow: Turns) -> Self {
        Turnstile { flow, seen: 0 }
    }
    async fn handle_call(&mut self, _: ()) -> (u64, u64) {
        (self.seen, self.flow.metrics().stage("turnstile").unwrap().processed)
    }
    async fn handle_cast(&mut self, _: ()) {
        let now = (self.seen, self.flow.metrics().stage("turnstile").unwrap().processed);
        TURNS.lock().unwrap().push(now);
    }
    fn channel_queue_size() -> usize {
        64
    }
}

impl Stage for Turnstile {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        if x % 2 == 0 {
            AT_GATE.store(x + 1, Ordering::SeqCst);
            TURNSTILE.acquire().await.unwrap().forget();
        }
        out.emit(x).await;
    }
}

#[genflow::pipeline{ turnstile: Turnstile }]
struct Turns;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_between_gated_and_plain_items_see_exact_counts() {
    const N: u64 = 40;
    let flow = Turns::start().await;
    let output = flow.output().unwrap();
    let reading = tokio::spawn(output.collect::<Vec<_>>());
    within("feed", flow.feed(stream::iter(0..N))).await.unwrap();
    for k in 0..N / 2 {
        // Input 2k waits at the gate; the cast waits in the mailbox.
        eventually("input 2k at the gate", || AT_GATE.load(Ordering::SeqCst) == 2 * k + 1).await;
        within("cast", flow.cast_turnstile(())).await.unwrap();
        TURNSTILE.add_permits(1);
        eventually("the cast served", || TURNS.lock().unwrap().len() as u64 == k + 1).await;
        // Served right after input 2k, before the plain input 2k + 1.
        assert_eq!(TURNS.lock().unwrap()[k as usize], (2 * k + 1, 2 * k + 1), "turn {k}");
    }
    assert_eq!(within("call", flow.call_turnstile(())).await.unwrap(), (N, N));
    within("shutdown", flow.shutdown()).await;
    assert_eq!(within("output", reading).await.unwrap(), (0..N).collect::<Vec<_>>());
    let m = flow.metrics();
    let s = m.stage("turnstile").unwrap();
    assert_eq!((s.received, s.processed, s.emitted, s.failed), (N, N, N, 0), "{m}");
}

// ---------------------------------------------------------------------------
// `abort` while a cast is served between plain items.

/// Set when `Stall`'s cast handler is reached.
static STALLED: AtomicBool = AtomicBool::new(false);
const STALL_AT: u64 = 5;

/// Passes items on; on input [`STALL_AT`] casts itself a message whose
/// handler never returns.
struct Stall {
    flow: Stalling,
}

impl GenServer for Stall {
    type Message = ();
    type Response = ();
    type Registry = Stalling;
    fn new(flow: Stalling) -> Self {
        Stall { flow }
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {
        STALLED.store(true, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    fn channel_queue_size() -> usize {
        64
    }
}

impl Stage for Stall {
    type In = u64;
    type Out = (u64, u64);
    async fn process(&mut self, x: u64, out: &mut Emitter<(u64, u64)>) {
        if x == STALL_AT {
            self.flow.try_cast_work(()).unwrap();
        }
        out.emit((x, 0)).await;
    }
}

#[genflow::pipeline{ work: Stall, tail: Pass<Stalling> }]
struct Stalling;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_while_a_cast_is_served_between_plain_items() {
    let flow = Stalling::start().await;
    let output = flow.output().unwrap();
    let reading = tokio::spawn(output.collect::<Vec<_>>());
    within("feed", flow.feed(stream::iter(0..30))).await.unwrap();
    eventually("the cast handler reached", || STALLED.load(Ordering::SeqCst)).await;
    flow.abort();
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let m = flow.metrics();
    assert_settled(&m);
    let work = m.stage("work").unwrap();
    assert_eq!(work.received, 30, "{m}");
    assert_eq!(work.processed, STALL_AT + 1, "inputs up to the cast done\n{m}");
    assert_eq!(work.aborted, 30 - STALL_AT - 1, "{m}");
    assert_eq!(work.emitted, STALL_AT + 1, "{m}");
    assert_eq!(got, (0..got.len() as u64).map(|x| (x, 0)).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------
// Failures counted before a cast between items is served.

/// What `Tally`'s casts recorded: (seen, processed, failed by the state,
/// `failed` in the metrics).
static TALLIES: Mutex<Vec<(u64, u64, u64, u64)>> = Mutex::new(Vec::new());

/// Passes items on, failing those with `x % 3 == 2`; on inputs with
/// `x % 10 == 9` casts itself a record of its counts.
struct Tally {
    flow: Tallied,
    seen: u64,
    bad: u64,
}

impl GenServer for Tally {
    type Message = ();
    type Response = ();
    type Registry = Tallied;
    fn new(flow: Tallied) -> Self {
        Tally { flow, seen: 0, bad: 0 }
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {
        let s = self.flow.metrics().stage("tally").unwrap();
        TALLIES.lock().unwrap().push((self.seen, s.processed, self.bad, s.failed));
    }
    fn channel_queue_size() -> usize {
        128
    }
}

impl Stage for Tally {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        if x % 10 == 9 {
            self.flow.try_cast_tally(()).unwrap();
        }
        if x % 3 == 2 {
            self.bad += 1;
            return out.fail("bad");
        }
        out.emit(x).await;
    }
}

#[genflow::pipeline{ tally: Tally }]
struct Tallied;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cast_between_items_sees_failures_counted() {
    const N: u64 = 100;
    let flow = Tallied::start().await;
    let output = flow.output().unwrap();
    let failures = flow.failures().unwrap();
    let reading = tokio::spawn(output.collect::<Vec<_>>());
    let failing = tokio::spawn(failures.collect::<Vec<_>>());
    within("feed", flow.feed(stream::iter(0..N))).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let failed = within("failures", failing).await.unwrap();
    assert_eq!(got, (0..N).filter(|x| x % 3 != 2).collect::<Vec<_>>());
    let bad = (0..N).filter(|x| x % 3 == 2).count() as u64;
    assert_eq!(failed.len() as u64, bad);
    let tallies = TALLIES.lock().unwrap().clone();
    let want: Vec<(u64, u64, u64, u64)> = (0..N)
        .filter(|x| x % 10 == 9)
        .map(|x| {
            let bad = (0..=x).filter(|y| y % 3 == 2).count() as u64;
            (x + 1, x + 1, bad, bad)
        })
        .collect();
    assert_eq!(tallies, want);
    let m = flow.metrics();
    let s = m.stage("tally").unwrap();
    assert_eq!((s.received, s.processed, s.failed, s.emitted), (N, N, bad, N - bad), "{m}");
}
