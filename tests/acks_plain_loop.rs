//! A replica goes through a batch whose items hold no acknowledgement
//! without looking at their tags. These tests put acknowledged items
//! everywhere such a batch could meet one: queued behind a plain batch
//! whose item waits in `process` (so the replica serves casts, timers and
//! fused stages in the middle of it), in the own queue of a `#[fused]`
//! stage and handed over to it, after a restart in the middle of a plain
//! batch, taken by a `#[concurrency]` stage into a batch that started
//! plain while its futures wait, out of `#[concurrency]` and `#[batch]`
//! stages, behind a rate limit, and held by a
//! stage that emits them from plain inputs, timers and `finish`. Every
//! `Ack` fires exactly once with its own input's outcome, every plain item
//! is processed (metrics and outputs), and nothing hangs.

use std::{
    collections::BTreeMap,
    marker::PhantomData,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{SinkExt, StreamExt, future::BoxFuture};
use genflow::{
    Emitter, GenServer, Pipeline, RestartLimit, Stage,
    ack::{Ack, Held, Outcome},
};
use tokio::sync::Semaphore;

#[path = "support/wait.rs"]
mod wait;
use wait::{eventually, within};

// ---------------------------------------------------------------------------
// The ledger of acknowledgements.

/// How an acknowledgement fired: its outcome's kind and, if failed, the
/// errors of its failures (from a panic's known start on, sorted).
type Firing = (&'static str, Vec<String>);

#[derive(Default)]
struct Ledger {
    fired: Mutex<BTreeMap<u64, Vec<Firing>>>,
    count: AtomicUsize,
}

impl Ledger {
    fn ack(self: &Arc<Self>, i: u64) -> Ack {
        let ledger = self.clone();
        Ack::new(move |outcome| {
            let mut errors: Vec<String> = match &outcome {
                Outcome::Failed(failures) => failures
                    .iter()
                    .map(|f| {
                        let error = f.error().to_string();
                        match error.find("process panicked on") {
                            Some(at) => error[at..].to_string(),
                            None => error,
                        }
                    })
                    .collect(),
                _ => Vec::new(),
            };
            errors.sort();
            ledger.fired.lock().unwrap().entry(i).or_default().push((outcome.kind(), errors));
            ledger.count.fetch_add(1, Ordering::SeqCst);
        })
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Asserts that exactly the inputs of `expected` fired, each once, as
    /// it says.
    async fn assert_fired(&self, expected: &BTreeMap<u64, Firing>, context: &str) {
        eventually(|| self.count() >= expected.len()).await;
        let fired = self.fired.lock().unwrap().clone();
        let once: BTreeMap<u64, Firing> = fired
            .into_iter()
            .map(|(i, firings)| {
                assert_eq!(firings.len(), 1, "{context}: input {i} fired {firings:?}");
                (i, firings.into_iter().next().unwrap())
            })
            .collect();
        assert_eq!(&once, expected, "{context}");
        assert_eq!(self.count(), expected.len(), "{context}");
    }
}

fn firing(errors: Vec<String>) -> Firing {
    if errors.is_empty() { ("delivered", errors) } else { ("failed", errors) }
}

// ---------------------------------------------------------------------------
// `probe`: a stage whose items may wait in `process` for the test.

/// What the test holds of a pipeline's `probe` stage.
#[derive(Clone)]
struct Gates {
    /// While false, gated items pass at once.
    closed: Arc<AtomicBool>,
    /// A permit per gated item let through.
    gate: Arc<Semaphore>,
    /// A permit per gated item that reached its wait.
    entered: Arc<Semaphore>,
    casts: Arc<AtomicUsize>,
    inits: Arc<AtomicUsize>,
}

impl Gates {
    fn new(closed: bool) -> Self {
        Gates {
            closed: Arc::new(AtomicBool::new(closed)),
            gate: Arc::new(Semaphore::new(0)),
            entered: Arc::new(Semaphore::new(0)),
            casts: Arc::new(AtomicUsize::new(0)),
            inits: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits until a gated item is in `process`, waiting.
    async fn wait_entered(&self) {
        within(self.entered.acquire()).await.unwrap().forget();
    }

    fn release(&self) {
        self.gate.add_permits(1);
    }
}

trait HasGates: Clone + Send + Sync + 'static {
    fn gates(&self) -> &Gates;
}

/// Items that wait in `process` while the gates are closed.
fn gated(i: u64) -> bool {
    i % 100 == 0 || i % 100 == 50
}

/// Items whose `process` panics (before emitting).
fn panics(i: u64) -> bool {
    i % 100 == 55 || i % 100 == 77
}

/// Items `probe` fails, after emitting them.
fn probe_fails(i: u64) -> bool {
    i % 7 == 3
}

/// Items `tail` fails.
fn tail_fails(i: u64) -> bool {
    i % 11 == 6
}

/// The errors of input `i` through `probe` then `tail`.
fn errors_of(i: u64) -> Vec<String> {
    if panics(i) {
        return vec![format!("process panicked on {i}")];
    }
    let mut errors = Vec::new();
    if probe_fails(i) {
        errors.push(format!("probe {i}"));
    }
    if tail_fails(i) {
        errors.push(format!("tail {i}"));
    }
    errors.sort();
    errors
}

/// Whether input `i` leaves the pipeline.
fn leaves(i: u64) -> bool {
    !panics(i) && !tail_fails(i)
}

/// The server side of a probe stage `$probe { registry }`: casts count
/// (`true` panics the handler, and the state is rebuilt), calls read the
/// count, `init` counts the states built.
macro_rules! probe_server {
    ($probe:ident) => {
        impl<R: HasGates> GenServer for $probe<R> {
            type Message = bool;
            type Response = usize;
            type Registry = R;

            fn new(registry: R) -> Self {
                $probe { registry }
            }

            async fn init(&mut self) {
                self.registry.gates().inits.fetch_add(1, Ordering::SeqCst);
            }

            async fn handle_call(&mut self, _: bool) -> usize {
                self.registry.gates().casts.load(Ordering::SeqCst)
            }

            async fn handle_cast(&mut self, crash: bool) {
                assert!(!crash, "asked to crash");
                self.registry.gates().casts.fetch_add(1, Ordering::SeqCst);
            }

            fn restart_limit() -> RestartLimit {
                RestartLimit::new(1_000, Duration::from_secs(600))
            }
        }
    };
}

struct Probe<R> {
    registry: R,
}

probe_server!(Probe);

impl<R: HasGates> Stage for Probe<R> {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, i: u64, out: &mut Emitter<u64>) {
        let gates = self.registry.gates();
        if gated(i) && gates.closed.load(Ordering::SeqCst) {
            gates.entered.add_permits(1);
            gates.gate.acquire().await.unwrap().forget();
        }
        assert!(!panics(i), "process panicked on {i}");
        out.emit(i).await;
        if probe_fails(i) {
            out.fail(format!("probe {i}"));
        }
    }
}

/// As [`Probe`], but the item goes on from a future in flight, which
/// waits at the gate: the replica's batch empties while it does, and
/// takes more items into it (`#[concurrency]`).
struct AsyncProbe<R> {
    registry: R,
}

probe_server!(AsyncProbe);

impl<R: HasGates> Stage for AsyncProbe<R> {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, i: u64, out: &mut Emitter<u64>) {
        assert!(!panics(i), "process panicked on {i}");
        let gates = self.registry.gates().clone();
        out.emit_async(async move {
            if gated(i) && gates.closed.load(Ordering::SeqCst) {
                gates.entered.add_permits(1);
                gates.gate.acquire().await.unwrap().forget();
            }
            i
        })
        .await;
        if probe_fails(i) {
            out.fail(format!("probe {i}"));
        }
    }
}

#[genflow::stage]
fn tail(i: u64) -> Result<u64, String> {
    if tail_fails(i) { Err(format!("tail {i}")) } else { Ok(i) }
}

#[genflow::stage]
fn pass(i: u64) -> u64 {
    i
}

/// Emits its input from a future in flight, after a few yields (so they
/// complete out of order).
#[genflow::stage]
async fn spread(i: u64, out: &mut Emitter<u64>) {
    out.emit_async(async move {
        for _ in 0..i % 3 {
            tokio::task::yield_now().await;
        }
        i
    })
    .await;
}

/// Emits each item of its batch on.
#[genflow::stage]
async fn unbatch(batch: Vec<u64>, out: &mut Emitter<u64>) {
    for i in batch {
        out.emit(i).await;
    }
}

fn by_value(i: &u64) -> u64 {
    i % 3
}

macro_rules! gated_pipeline {
    ($name:ident { $($stages:tt)* }) => {
        #[genflow::pipeline{ $($stages)* }]
        struct $name {
            gates: Gates,
        }

        impl HasGates for $name {
            fn gates(&self) -> &Gates {
                &self.gates
            }
        }
    };
}

gated_pipeline!(Single { probe: Probe<Single>, tail: Tail<Single> });
gated_pipeline!(Replicated { #[replicas(3)] probe: Probe<Replicated>, tail: Tail<Replicated> });
gated_pipeline!(InOrder { #[replicas(3, ordered)] probe: Probe<InOrder>, tail: Tail<InOrder> });
gated_pipeline!(Keyed { pass: Pass<Keyed>, #[replicas(3, partition_by = by_value)] probe: Probe<Keyed>, tail: Tail<Keyed> });
gated_pipeline!(Demand { #[max_demand(4)] probe: Probe<Demand>, tail: Tail<Demand> });
gated_pipeline!(Fusing { pass: Pass<Fusing>, #[fused] probe: Probe<Fusing>, tail: Tail<Fusing> });
gated_pipeline!(FusedTail { probe: Probe<FusedTail>, #[fused] tail: Tail<FusedTail> });
gated_pipeline!(Throttled {
    #[rate_limit(5, per = Duration::from_millis(2))]
    probe: Probe<Throttled>,
    #[fused]
    tail: Tail<Throttled>,
});
gated_pipeline!(Concurrent { #[concurrency(4)] probe: Probe<Concurrent>, tail: Tail<Concurrent> });
gated_pipeline!(ConcurrentOne { #[concurrency(1)] probe: Probe<ConcurrentOne>, tail: Tail<ConcurrentOne> });
gated_pipeline!(ConcurrentInOrder {
    #[replicas(2, ordered)]
    #[concurrency(3)]
    probe: Probe<ConcurrentInOrder>,
    tail: Tail<ConcurrentInOrder>,
});
gated_pipeline!(FusedAfterConcurrent {
    pass: Pass<FusedAfterConcurrent>,
    #[fused]
    #[concurrency(4)]
    spread: Spread<FusedAfterConcurrent>,
    #[fused]
    probe: Probe<FusedAfterConcurrent>,
    tail: Tail<FusedAfterConcurrent>,
});
gated_pipeline!(Refilling { #[concurrency(4)] probe: AsyncProbe<Refilling>, tail: Tail<Refilling> });
gated_pipeline!(RefillingInOrder {
    #[replicas(2, ordered)]
    #[concurrency(4)]
    probe: AsyncProbe<RefillingInOrder>,
    tail: Tail<RefillingInOrder>,
});
gated_pipeline!(AfterConcurrent { #[concurrency(4)] spread: Spread<AfterConcurrent>, probe: Probe<AfterConcurrent>, tail: Tail<AfterConcurrent> });
gated_pipeline!(AfterBatch {
    #[batch(size = 8, timeout = Duration::from_secs(3600))]
    unbatch: Unbatch<AfterBatch>,
    probe: Probe<AfterBatch>,
    tail: Tail<AfterBatch>,
});

/// Which of the inputs after a round's plain ones go with an `Ack`.
type Pattern = (&'static str, fn(u64) -> bool);

const PATTERNS: &[Pattern] = &[
    ("alternating", |i| i % 2 == 1),
    ("all acked", |_| true),
    ("one acked", |i| i % 100 == 75),
    ("acked runs", |i| i % 10 < 5),
];

/// Rounds of [`run_gated`]: inputs `0..ROUNDS * 100`.
const ROUNDS: u64 = 3;

/// Items sent into a stage's own input besides the main ones.
const SIDE: u64 = 100_000;

/// Sends round after round into `flow`, whose `probe` stage has `gates`
/// closed: a plain gated input (`base`) that a replica waits on; plain
/// inputs `base + 1..base + 60` behind it, among them a gated one
/// (`base + 50`) and one whose `process` panics (`base + 55`, an item
/// failure); once the replica waits on `base + 50`, in the middle of a
/// plain batch, the inputs `base + 60..base + 100` as `pattern` says
/// (`base + 77` panics), casts to `probe` and, with `side`, plain items
/// into a stage's own input; with `refills` (a concurrent stage whose
/// item waits in a future), waits until the replica took all of them into
/// its batch; then a cast whose handler panics (the rest of the batch goes
/// to the new state), lets the replica go and flushes. Checks every
/// `Ack`, the output, the metrics of `probe`, the casts and the states
/// built.
async fn run_gated<P: Pipeline<In = u64, Out = u64> + HasGates>(
    flow: P,
    pattern: Pattern,
    replicas: usize,
    refills: bool,
    cast: impl Fn(&P, bool),
    mut side: Option<&mut dyn FnMut(u64) -> BoxFuture<'static, ()>>,
) {
    let (name, acked) = pattern;
    let gates = flow.gates().clone();
    let ledger = Arc::new(Ledger::default());
    let reader = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let input = flow.acked();
    let mut expected = BTreeMap::new();
    let mut sides = Vec::new();
    for round in 0..ROUNDS {
        let base = round * 100;
        flow.send(base).await.unwrap();
        gates.wait_entered().await;
        for i in base + 1..base + 60 {
            flow.send(i).await.unwrap();
        }
        gates.release();
        gates.wait_entered().await;
        for i in base + 60..base + 100 {
            if acked(i) {
                input.send(i, ledger.ack(i)).await.unwrap();
                expected.insert(i, firing(errors_of(i)));
            } else {
                flow.send(i).await.unwrap();
            }
            if i % 10 == 5 {
                cast(&flow, false);
            }
            if let Some(side) = side.as_mut() {
                side(SIDE + i).await;
                sides.push(SIDE + i);
            }
        }
        if refills {
            // A concurrent stage whose item waits in a future takes every
            // input sent into the batch, which started plain, before the
            // handler's panic below ends its refills.
            eventually(|| flow.metrics().stage("probe").unwrap().received == base + 100).await;
        }
        // Served once the waiting item is done, before the rest of its
        // batch, which goes to the new state.
        cast(&flow, true);
        gates.release();
        within(flow.flush()).await.unwrap();
    }
    within(flow.shutdown()).await;
    let mut got = within(reader).await.unwrap();
    got.sort_unstable();
    let mut outputs: Vec<u64> = (0..ROUNDS * 100).chain(sides.iter().copied()).filter(|&i| leaves(i)).collect();
    outputs.sort_unstable();
    assert_eq!(got, outputs, "{name}: the output");
    ledger.assert_fired(&expected, name).await;
    let probe = flow.metrics().stage("probe").unwrap();
    let inputs = ROUNDS * 100 + sides.len() as u64;
    assert_eq!(probe.received, inputs, "{name}: received by probe");
    assert_eq!(probe.processed, inputs, "{name}: processed by probe");
    let failed = (0..ROUNDS * 100).chain(sides.iter().copied()).filter(|&i| panics(i) || probe_fails(i)).count();
    assert_eq!(probe.failed, failed as u64, "{name}: failed in probe");
    let casts = (0..ROUNDS * 100).filter(|i| (60..100).contains(&(i % 100)) && i % 10 == 5).count();
    assert_eq!(gates.casts.load(Ordering::SeqCst), casts, "{name}: casts served");
    // One state per replica, and one per crash.
    assert_eq!(gates.inits.load(Ordering::SeqCst), replicas + ROUNDS as usize, "{name}: states built");
}

#[tokio::test]
async fn acked_inputs_queued_behind_a_plain_batch_waiting_in_process_fire_once() {
    for &pattern in PATTERNS {
        let flow = Single::start(Gates::new(true)).await;
        run_gated(flow, pattern, 1, false, |flow, crash| flow.try_cast_probe(crash).unwrap(), None).await;
    }
}

#[tokio::test]
async fn acked_inputs_queued_behind_plain_batches_of_replicas_fire_once() {
    for &pattern in PATTERNS {
        let flow = Replicated::start(Gates::new(true)).await;
        run_gated(flow, pattern, 3, false, |flow, crash| flow.try_cast_probe(crash).unwrap(), None).await;
    }
}

#[tokio::test]
async fn acked_inputs_queued_behind_plain_batches_of_ordered_replicas_fire_once() {
    for &pattern in PATTERNS {
        let flow = InOrder::start(Gates::new(true)).await;
        run_gated(flow, pattern, 3, false, |flow, crash| flow.try_cast_probe(crash).unwrap(), None).await;
    }
}

#[tokio::test]
async fn acked_inputs_queued_behind_plain_batches_of_partitioned_replicas_fire_once() {
    for &pattern in PATTERNS {
        let flow = Keyed::start(Gates::new(true)).await;
        run_gated(flow, pattern, 3, false, |flow, crash| flow.try_cast_probe(crash).unwrap(), None).await;
    }
}

#[tokio::test]
async fn acked_inputs_queued_behind_small_plain_batches_fire_once() {
    for &pattern in PATTERNS {
        let flow = Demand::start(Gates::new(true)).await;
        run_gated(flow, pattern, 1, false, |flow, crash| flow.try_cast_probe(crash).unwrap(), None).await;
    }
}

#[tokio::test]
async fn a_fused_stage_waiting_in_a_plain_batch_takes_acked_inputs_and_its_own_plain_ones() {
    for &pattern in PATTERNS {
        let flow = Fusing::start(Gates::new(true)).await;
        let into = flow.clone();
        let mut side = move |i: u64| -> BoxFuture<'static, ()> {
            let into = into.clone();
            Box::pin(async move { within(into.sink_probe().send(i)).await.unwrap() })
        };
        run_gated(flow, pattern, 1, false, |flow, crash| flow.try_cast_probe(crash).unwrap(), Some(&mut side)).await;
    }
}

/// As [`run_gated`], with the side items sent into `tail`'s own input:
/// they leave unless `tail` fails them, and `probe` sees none of them.
async fn run_side_tail<P, K>(flow: P, pattern: Pattern, mut into_tail: K)
where
    P: Pipeline<In = u64, Out = u64> + HasGates,
    K: futures::Sink<u64> + Unpin,
    K::Error: std::fmt::Debug,
{
    let (name, acked) = pattern;
    let gates = flow.gates().clone();
    let ledger = Arc::new(Ledger::default());
    let reader = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let input = flow.acked();
    let mut expected = BTreeMap::new();
    for round in 0..ROUNDS {
        let base = round * 100;
        flow.send(base).await.unwrap();
        gates.wait_entered().await;
        for i in base + 1..base + 60 {
            flow.send(i).await.unwrap();
        }
        gates.release();
        gates.wait_entered().await;
        for i in base + 60..base + 100 {
            if acked(i) {
                input.send(i, ledger.ack(i)).await.unwrap();
                expected.insert(i, firing(errors_of(i)));
            } else {
                flow.send(i).await.unwrap();
            }
            within(into_tail.send(SIDE + i)).await.unwrap();
        }
        gates.release();
        within(flow.flush()).await.unwrap();
    }
    within(flow.shutdown()).await;
    let mut got = within(reader).await.unwrap();
    got.sort_unstable();
    let sides = (0..ROUNDS * 100).filter(|i| i % 100 >= 60).map(|i| SIDE + i);
    let mut outputs: Vec<u64> =
        (0..ROUNDS * 100).filter(|&i| leaves(i)).chain(sides.clone().filter(|&i| !tail_fails(i))).collect();
    outputs.sort_unstable();
    assert_eq!(got, outputs, "{name}: the output");
    ledger.assert_fired(&expected, name).await;
    let probe = flow.metrics().stage("probe").unwrap();
    assert_eq!(probe.processed, ROUNDS * 100, "{name}: processed by probe");
    let tail = flow.metrics().stage("tail").unwrap();
    let into = (0..ROUNDS * 100).filter(|&i| !panics(i)).count() + sides.clone().count();
    assert_eq!(tail.received, into as u64, "{name}: received by tail");
    assert_eq!(tail.processed, into as u64, "{name}: processed by tail");
    let failed = (0..ROUNDS * 100).filter(|&i| !panics(i)).chain(sides).filter(|&i| tail_fails(i)).count();
    assert_eq!(tail.failed, failed as u64, "{name}: failed in tail");
}

#[tokio::test]
async fn a_fused_stage_after_a_waiting_plain_batch_takes_its_own_plain_inputs_among_acked_ones() {
    for &pattern in PATTERNS {
        let flow = FusedTail::start(Gates::new(true)).await;
        let into_tail = flow.sink_tail();
        run_side_tail(flow, pattern, into_tail).await;
    }
}

#[tokio::test]
async fn a_throttled_stage_serves_its_fused_stage_own_plain_inputs_among_acked_ones() {
    for &pattern in PATTERNS {
        let flow = Throttled::start(Gates::new(true)).await;
        let into_tail = flow.sink_tail();
        run_side_tail(flow, pattern, into_tail).await;
    }
}

#[tokio::test]
async fn a_concurrent_stage_fed_mixed_inputs_behind_a_waiting_plain_item_fires_each_once() {
    for &pattern in PATTERNS {
        let flow = Concurrent::start(Gates::new(true)).await;
        run_gated(flow, pattern, 1, false, |flow, crash| flow.try_cast_probe(crash).unwrap(), None).await;
    }
}

#[tokio::test]
async fn a_stage_of_concurrency_one_waiting_in_a_plain_batch_takes_acked_inputs_behind() {
    for &pattern in PATTERNS {
        let flow = ConcurrentOne::start(Gates::new(true)).await;
        run_gated(flow, pattern, 1, false, |flow, crash| flow.try_cast_probe(crash).unwrap(), None).await;
    }
}

#[tokio::test]
async fn ordered_concurrent_replicas_fed_mixed_inputs_behind_a_waiting_plain_item_fire_each_once() {
    for &pattern in PATTERNS {
        let flow = ConcurrentInOrder::start(Gates::new(true)).await;
        run_gated(flow, pattern, 2, false, |flow, crash| flow.try_cast_probe(crash).unwrap(), None).await;
    }
}

#[tokio::test]
async fn a_concurrent_stage_takes_acked_inputs_into_a_plain_batch_while_its_futures_wait() {
    for &pattern in PATTERNS {
        let flow = Refilling::start(Gates::new(true)).await;
        run_gated(flow, pattern, 1, true, |flow, crash| flow.try_cast_probe(crash).unwrap(), None).await;
    }
}

#[tokio::test]
async fn ordered_concurrent_replicas_take_acked_inputs_into_plain_batches_while_their_futures_wait() {
    for &pattern in PATTERNS {
        let flow = RefillingInOrder::start(Gates::new(true)).await;
        run_gated(flow, pattern, 2, false, |flow, crash| flow.try_cast_probe(crash).unwrap(), None).await;
    }
}

/// Sends `0..n` into `flow` (gates open), acknowledged as `acked` says, in
/// runs of 7 by `feed` (plain) and `acked().feed`; checks every `Ack`, the
/// output and `probe`'s metrics. With `batch`, the first stage gathers
/// its inputs in batches of that size, in the order sent: an input's `Ack`
/// holds the failures of every item of its batch.
async fn run_open<P: Pipeline<In = u64, Out = u64> + HasGates>(
    flow: P,
    pattern: Pattern,
    n: u64,
    batch: Option<usize>,
) {
    let (name, acked) = pattern;
    let ledger = Arc::new(Ledger::default());
    let reader = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let mut sent = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + 7).min(n);
        let plain: Vec<u64> = (start..end).filter(|&i| !acked(i)).collect();
        let with: Vec<(u64, Ack)> = (start..end).filter(|&i| acked(i)).map(|i| (i, ledger.ack(i))).collect();
        let (a, b) = (plain.len(), with.len());
        if start % 2 == 0 {
            sent.extend(plain.iter().copied().chain(with.iter().map(|&(i, _)| i)));
            assert_eq!(flow.feed(futures::stream::iter(plain)).await.unwrap(), a);
            assert_eq!(flow.acked().feed(futures::stream::iter(with)).await.unwrap(), b);
        } else {
            sent.extend(with.iter().map(|&(i, _)| i).chain(plain.iter().copied()));
            assert_eq!(flow.acked().feed(futures::stream::iter(with)).await.unwrap(), b);
            assert_eq!(flow.feed(futures::stream::iter(plain)).await.unwrap(), a);
        }
        start = end;
    }
    let mut expected = BTreeMap::new();
    for group in sent.chunks(batch.unwrap_or(1)) {
        let mut errors: Vec<String> = group.iter().copied().flat_map(errors_of).collect();
        errors.sort();
        for &i in group.iter().filter(|&&i| acked(i)) {
            expected.insert(i, firing(errors.clone()));
        }
    }
    within(flow.shutdown()).await;
    let mut got = within(reader).await.unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..n).filter(|&i| leaves(i)).collect::<Vec<_>>(), "{name}: the output");
    ledger.assert_fired(&expected, name).await;
    let probe = flow.metrics().stage("probe").unwrap();
    assert_eq!(probe.processed, n, "{name}: processed by probe");
    assert_eq!(probe.failed, (0..n).filter(|&i| panics(i) || probe_fails(i)).count() as u64, "{name}");
    assert_eq!(flow.gates().inits.load(Ordering::SeqCst), 1, "{name}: states built");
}

#[tokio::test]
async fn a_plain_stage_after_a_concurrent_one_takes_its_mixed_outputs() {
    for &pattern in PATTERNS {
        run_open(AfterConcurrent::start(Gates::new(false)).await, pattern, 600, None).await;
    }
}

#[tokio::test]
async fn a_plain_fused_stage_after_a_fused_concurrent_one_takes_its_mixed_outputs() {
    for &pattern in PATTERNS {
        run_open(FusedAfterConcurrent::start(Gates::new(false)).await, pattern, 600, None).await;
    }
}

#[tokio::test]
async fn a_plain_stage_after_a_batch_stage_takes_its_mixed_outputs() {
    for &pattern in PATTERNS {
        run_open(AfterBatch::start(Gates::new(false)).await, pattern, 600, Some(8)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_inputs_through_replicas_on_two_threads_fire_once() {
    for &pattern in PATTERNS {
        run_open(Single::start(Gates::new(false)).await, pattern, 2_000, None).await;
        run_open(Fusing::start(Gates::new(false)).await, pattern, 2_000, None).await;
    }
}

// ---------------------------------------------------------------------------
// `keeper`: holds what it gets, emits it from plain inputs, timers and
// `finish`.

/// Keeps every input with its acknowledgements (`hold`, empty for a plain
/// input); emits what it keeps as a group with `emit_with` at each input
/// that is 9 mod 10 (plain or not), from a timer armed at each input that
/// is 4 mod 10, and in `finish`.
struct Keeper<R> {
    members: Vec<u64>,
    held: Held,
    _registry: PhantomData<R>,
}

impl<R: Clone + Send + Sync + 'static> GenServer for Keeper<R> {
    type Message = ();
    type Response = ();
    type Registry = R;

    fn new(_: R) -> Self {
        Keeper { members: Vec::new(), held: Held::default(), _registry: PhantomData }
    }

    async fn handle_call(&mut self, (): ()) {}
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

    async fn process(&mut self, i: u64, out: &mut Emitter<Vec<u64>>) {
        self.members.push(i);
        let held = out.hold();
        self.held.absorb(held);
        if i % 10 == 4 {
            self.send_after(Duration::ZERO, ()).unwrap();
        }
        if i % 10 == 9 {
            self.give(out).await;
        }
    }

    async fn handle_timer(&mut self, (): (), out: &mut Emitter<Vec<u64>>) {
        self.give(out).await;
    }

    async fn finish(&mut self, out: &mut Emitter<Vec<u64>>) {
        self.give(out).await;
    }
}

/// Why `judge` fails a group: it holds a multiple of 13.
fn judged(group: &[u64]) -> Option<String> {
    group.iter().find(|&&i| i % 13 == 0).map(|_| format!("group from {}", group[0]))
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

#[genflow::pipeline{ pass: Pass<KeepingFused>, #[fused] keeper: Keeper<KeepingFused>, #[fused] judge: Judge<KeepingFused> }]
struct KeepingFused;

#[genflow::pipeline{ #[replicas(3)] keeper: Keeper<KeepingSpread>, judge: Judge<KeepingSpread> }]
struct KeepingSpread;

async fn run_keeping<P: Pipeline<In = u64, Out = Vec<u64>>>(flow: P, pattern: Pattern, n: u64) {
    let (name, acked) = pattern;
    let ledger = Arc::new(Ledger::default());
    let reader = tokio::spawn(flow.output().unwrap().collect::<Vec<Vec<u64>>>());
    let input = flow.acked();
    for i in 0..n {
        if acked(i) {
            input.send(i, ledger.ack(i)).await.unwrap();
        } else {
            flow.send(i).await.unwrap();
        }
        if i % 97 == 0 {
            within(flow.flush()).await.unwrap();
        }
    }
    within(flow.shutdown()).await;
    let groups = within(reader).await.unwrap();
    let mut members: Vec<u64> = groups.iter().flatten().copied().collect();
    members.sort_unstable();
    assert_eq!(members, (0..n).collect::<Vec<_>>(), "{name}: every input in one group");
    let mut expected = BTreeMap::new();
    for group in &groups {
        let errors: Vec<String> = judged(group).into_iter().collect();
        for &i in group.iter().filter(|&&i| acked(i)) {
            expected.insert(i, firing(errors.clone()));
        }
    }
    ledger.assert_fired(&expected, name).await;
    let keeper = flow.metrics().stage("keeper").unwrap();
    assert_eq!(keeper.processed, n, "{name}: processed by keeper");
    assert_eq!(keeper.failed, 0, "{name}: failed in keeper");
    let judge = flow.metrics().stage("judge").unwrap();
    assert_eq!(judge.processed, groups.len() as u64, "{name}: groups judged");
    assert_eq!(judge.failed, groups.iter().filter(|g| judged(g).is_some()).count() as u64, "{name}");
}

#[tokio::test]
async fn acks_held_from_acked_inputs_go_out_with_plain_inputs_timers_and_finish() {
    for &pattern in PATTERNS {
        run_keeping(Keeping::start().await, pattern, 400).await;
    }
}

#[tokio::test]
async fn a_fused_keeper_hands_held_acks_on_from_plain_inputs_and_timers() {
    for &pattern in PATTERNS {
        run_keeping(KeepingFused::start().await, pattern, 400).await;
    }
}

#[tokio::test]
async fn keepers_on_replicas_hand_held_acks_on_from_plain_inputs_and_timers() {
    for &pattern in PATTERNS {
        run_keeping(KeepingSpread::start().await, pattern, 400).await;
    }
}
