//! Pipeline throughput under backpressure, against a hand-written chain of
//! bounded `tokio::sync::mpsc` channels with one task per stage (same queue
//! size, same work per item), on the same 2-worker runtime. On both sides
//! the items are fed by a task on that runtime.
//!
//! ```text
//! cargo bench --bench pipeline
//! ```
//!
//! - `w1_three_stages`: add 1 → multiply by 3 → sum, 1M `u64`, queue 1000,
//!   against three baselines: the naive chain (`mpsc_chain`: `recv` and
//!   `send` per item), the same chain moving items in batches
//!   (`mpsc_chain_batched`: `recv_many` and `reserve_many`, up to
//!   [`CHAIN_BATCH`] at a time, as genflow's stages do), and the three steps
//!   fused into one task (`fused_stream`: no queue and no hand-off at all,
//!   the physical limit for this work on one core).
//!   Also with the last two stages `#[fused]` (`genflow_fused`).
//! - `w1_scaling`: 1, 3 and 8 stages, queues of 16 and 1000, 200k items.
//! - `w3_replicas`: one CPU-bound stage (~2 µs per item) on 1, 2 and 4
//!   replicas.
//! - `w1_acks`: W1 as `w1_three_stages/genflow`, beside the same pipeline
//!   fed through `acked()` with an `Ack` per item (`genflow_acked`), whose
//!   callback counts the outcomes: the cost of end-to-end acknowledgement;
//!   with one `Ack` per 32 inputs, shared (`genflow_acked_per_32`), as
//!   a source acknowledging in bulk does; and with an `Ack` per item whose
//!   callback counts into a `static` (`genflow_acked_unshared`): the
//!   acknowledgement's own cost, without a reference count shared between
//!   the feeder's and the last stage's threads; and with an `Ack` per item
//!   made by `Acks` (`genflow_acked_bulk`), 32 in one allocation, all
//!   telling one acknowledger that counts the outcomes.

use std::{
    hint::black_box,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use genflow::{
    Emitter, GenServer, Stage,
    ack::{Ack, Acks, Outcome},
};
use tokio::{runtime::Runtime, sync::mpsc};

/// Where the last stage leaves its sum when the pipeline ends.
trait Result: Clone + Send + Sync + 'static {
    fn result(&self) -> &AtomicU64;
}

/// The per-item work of each stage kind, shared with the baseline.
#[derive(Clone, Copy)]
enum Op {
    AddOne,
    Triple,
    Spin,
}

impl Op {
    #[inline]
    fn apply(self, x: u64) -> u64 {
        match self {
            Op::AddOne => x.wrapping_add(1),
            Op::Triple => x.wrapping_mul(3),
            Op::Spin => spin(x),
        }
    }
}

/// Iterations of `spin` that take about 2 µs; set once by `calibrate`.
static SPIN_ITERS: AtomicU64 = AtomicU64::new(1_000);

fn spin(x: u64) -> u64 {
    let mut v = x;
    for _ in 0..SPIN_ITERS.load(Ordering::Relaxed) {
        v = black_box(v.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
    }
    v
}

fn calibrate() {
    let n = 100_000;
    let started = Instant::now();
    for i in 0..n / 1_000 {
        black_box(spin(i));
    }
    let per_call = started.elapsed() / (n / 1_000) as u32;
    let iters = (1_000.0 * Duration::from_micros(2).as_secs_f64() / per_call.as_secs_f64()).max(1.0) as u64;
    SPIN_ITERS.store(iters, Ordering::Relaxed);
}

/// A 1:1 stage applying `OP`, with a queue of `Q`.
struct Map<R, const OP: u8, const Q: usize>(PhantomData<R>);

const fn op(code: u8) -> Op {
    match code {
        0 => Op::AddOne,
        1 => Op::Triple,
        _ => Op::Spin,
    }
}

impl<R: Result, const OP: u8, const Q: usize> GenServer for Map<R, OP, Q> {
    type Message = ();
    type Response = ();
    type Registry = R;

    fn new(_: R) -> Self {
        Map(PhantomData)
    }

    async fn handle_call(&mut self, _: ()) {}

    async fn handle_cast(&mut self, _: ()) {}

    fn channel_queue_size() -> usize {
        Q
    }
}

impl<R: Result, const OP: u8, const Q: usize> Stage for Map<R, OP, Q> {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(op(OP).apply(x)).await;
    }
}

/// The last stage: sums, emits nothing, reports the sum on `terminate`.
struct Sum<R, const Q: usize> {
    registry: R,
    sum: u64,
}

impl<R: Result, const Q: usize> GenServer for Sum<R, Q> {
    type Message = ();
    type Response = ();
    type Registry = R;

    fn new(registry: R) -> Self {
        Sum { registry, sum: 0 }
    }

    async fn handle_call(&mut self, _: ()) {}

    async fn handle_cast(&mut self, _: ()) {}

    async fn terminate(&mut self) {
        self.registry.result().fetch_add(self.sum, Ordering::Relaxed);
    }

    fn channel_queue_size() -> usize {
        Q
    }
}

impl<R: Result, const Q: usize> Stage for Sum<R, Q> {
    type In = u64;
    type Out = ();

    async fn process(&mut self, x: u64, _: &mut Emitter<()>) {
        self.sum = self.sum.wrapping_add(x);
    }
}

macro_rules! result {
    ($($p:ident),*) => {$(
        impl Result for $p {
            fn result(&self) -> &AtomicU64 {
                &self.result
            }
        }
    )*};
}

#[genflow::pipeline{ s: Sum<S1Q16, 16> }]
struct S1Q16 {
    result: Arc<AtomicU64>,
}
#[genflow::pipeline{ s: Sum<S1Q1000, 1000> }]
struct S1Q1000 {
    result: Arc<AtomicU64>,
}
#[genflow::pipeline{ a: Map<S3Q16, 0, 16>, m: Map<S3Q16, 1, 16>, s: Sum<S3Q16, 16> }]
struct S3Q16 {
    result: Arc<AtomicU64>,
}
#[genflow::pipeline{ a: Map<S3Q1000, 0, 1000>, m: Map<S3Q1000, 1, 1000>, s: Sum<S3Q1000, 1000> }]
struct S3Q1000 {
    result: Arc<AtomicU64>,
}
#[genflow::pipeline{
    a1: Map<S8Q16, 0, 16>, m1: Map<S8Q16, 1, 16>, a2: Map<S8Q16, 0, 16>, m2: Map<S8Q16, 1, 16>,
    a3: Map<S8Q16, 0, 16>, m3: Map<S8Q16, 1, 16>, a4: Map<S8Q16, 0, 16>, s: Sum<S8Q16, 16>,
}]
struct S8Q16 {
    result: Arc<AtomicU64>,
}
#[genflow::pipeline{
    a1: Map<S8Q1000, 0, 1000>, m1: Map<S8Q1000, 1, 1000>, a2: Map<S8Q1000, 0, 1000>, m2: Map<S8Q1000, 1, 1000>,
    a3: Map<S8Q1000, 0, 1000>, m3: Map<S8Q1000, 1, 1000>, a4: Map<S8Q1000, 0, 1000>, s: Sum<S8Q1000, 1000>,
}]
struct S8Q1000 {
    result: Arc<AtomicU64>,
}
#[genflow::pipeline{ #[replicas(1)] w: Map<R1, 2, 1000>, s: Sum<R1, 1000> }]
struct R1 {
    result: Arc<AtomicU64>,
}
#[genflow::pipeline{ #[replicas(2)] w: Map<R2, 2, 1000>, s: Sum<R2, 1000> }]
struct R2 {
    result: Arc<AtomicU64>,
}
#[genflow::pipeline{ #[replicas(4)] w: Map<R4, 2, 1000>, s: Sum<R4, 1000> }]
struct R4 {
    result: Arc<AtomicU64>,
}
/// W1 with the second and third stage `#[fused]`: one task for all three.
#[genflow::pipeline{ a: Map<S3Fused, 0, 1000>, #[fused] m: Map<S3Fused, 1, 1000>, #[fused] s: Sum<S3Fused, 1000> }]
struct S3Fused {
    result: Arc<AtomicU64>,
}
result!(S1Q16, S1Q1000, S3Q16, S3Q1000, S8Q16, S8Q1000, R1, R2, R4, S3Fused);

/// Runs one pipeline over `0..items`: start, feed, drain; returns the sum.
/// The feeder is a task on the runtime, like the stages (and like the
/// baseline's feeder).
macro_rules! run_genflow {
    ($p:ident, $items:expr) => {{
        tokio::spawn(async move {
            let result = Arc::new(AtomicU64::new(0));
            let pipeline = $p::start(result.clone()).await;
            pipeline.feed(futures::stream::iter(0..$items)).await.unwrap();
            pipeline.shutdown().await;
            result.load(Ordering::Relaxed)
        })
        .await
        .unwrap()
    }};
}

/// Outcomes of the acknowledgements of one acked run.
#[derive(Default)]
struct Outcomes {
    delivered: AtomicU64,
    other: AtomicU64,
}

impl Outcomes {
    /// An acknowledgement that counts its outcome here. Its callback holds
    /// an `Arc` (as a real one holds an offset or a key), in the
    /// acknowledgement's one allocation.
    fn ack(self: &Arc<Self>) -> Ack {
        let outcomes = self.clone();
        Ack::new(move |outcome| {
            let count = match outcome {
                Outcome::Delivered => &outcomes.delivered,
                _ => &outcomes.other,
            };
            count.fetch_add(1, Ordering::Relaxed);
        })
    }
}

/// As [`run_genflow!`], with every item sent through `acked()` with the
/// [`Ack`] that `$pair` (given the [`Outcomes`] to count in, returning a
/// `FnMut(u64) -> (u64, Ack)`) pairs it with; returns the sum and the
/// outcomes (delivered, other) counted once the pipeline has shut down.
macro_rules! run_genflow_acked {
    ($p:ident, $items:expr, $pair:expr) => {{
        tokio::spawn(async move {
            let result = Arc::new(AtomicU64::new(0));
            let outcomes = Arc::new(Outcomes::default());
            let pipeline = $p::start(result.clone()).await;
            let items = futures::StreamExt::map(futures::stream::iter(0..$items), $pair(outcomes.clone()));
            pipeline.acked().feed(items).await.unwrap();
            pipeline.shutdown().await;
            let delivered = outcomes.delivered.load(Ordering::Relaxed);
            (result.load(Ordering::Relaxed), delivered, outcomes.other.load(Ordering::Relaxed))
        })
        .await
        .unwrap()
    }};
}

/// An [`Ack`] for every input.
fn ack_each(acks: Arc<Outcomes>) -> impl FnMut(u64) -> (u64, Ack) {
    move |x| (x, acks.ack())
}

/// An [`Ack`] for every input whose callback shares nothing counted with
/// the feeder: it counts into a `static`, so making and firing it touches
/// no reference count (the [`Outcomes`] of `acks` stay at zero).
fn ack_each_unshared(acks: Arc<Outcomes>) -> impl FnMut(u64) -> (u64, Ack) {
    static DELIVERED: AtomicU64 = AtomicU64::new(0);
    drop(acks);
    move |x| {
        let ack = Ack::new(|outcome| {
            if outcome.is_delivered() {
                DELIVERED.fetch_add(1, Ordering::Relaxed);
            }
        });
        (x, ack)
    }
}

/// An [`Ack`] for every input, keyed by the input, made by [`Acks`]
/// telling one acknowledger that counts each outcome in `acks`.
fn ack_each_bulk(acks: Arc<Outcomes>) -> impl FnMut(u64) -> (u64, Ack) {
    let mut made = Acks::new(move |_input: u64, outcome: Outcome| {
        let count = if outcome.is_delivered() { &acks.delivered } else { &acks.other };
        count.fetch_add(1, Ordering::Relaxed);
    });
    move |x| (x, made.ack(x))
}

/// One [`Ack`] per `per` of `items` inputs: `Ack::share` for each but the
/// last of its inputs, the `Ack` itself for the last.
fn ack_per(items: u64, per: u64, acks: Arc<Outcomes>) -> impl FnMut(u64) -> (u64, Ack) {
    let mut batch: Option<Ack> = None;
    move |x| {
        let ack = batch.get_or_insert_with(|| acks.ack());
        let last = x % per == per - 1 || x == items - 1;
        let ack = if last { batch.take().unwrap() } else { ack.share() };
        (x, ack)
    }
}

/// The hand-written chain: one task per stage, bounded channels of `queue`,
/// fed by a task on the runtime.
async fn run_chain(ops: &[Op], queue: usize, items: u64) -> u64 {
    let ops = ops.to_vec();
    tokio::spawn(async move { chain(&ops, queue, items).await }).await.unwrap()
}

async fn chain(ops: &[Op], queue: usize, items: u64) -> u64 {
    let (head, mut rx) = mpsc::channel::<u64>(queue);
    for &op in ops {
        let (tx, next_rx) = mpsc::channel::<u64>(queue);
        let mut input = std::mem::replace(&mut rx, next_rx);
        tokio::spawn(async move {
            while let Some(x) = input.recv().await {
                if tx.send(op.apply(x)).await.is_err() {
                    break;
                }
            }
        });
    }
    let sum = tokio::spawn(async move {
        let mut sum = 0u64;
        while let Some(x) = rx.recv().await {
            sum = sum.wrapping_add(x);
        }
        sum
    });
    for x in 0..items {
        head.send(x).await.unwrap();
    }
    drop(head);
    sum.await.unwrap()
}

/// The most items a stage of the batched chain moves at a time, like
/// genflow's `BATCH`.
const CHAIN_BATCH: usize = 32;

/// The hand-written chain moving items in batches, fed by a task on the
/// runtime: each stage takes up to [`CHAIN_BATCH`] items with `recv_many`
/// and reserves room for all its outputs at once with `reserve_many`, so a
/// batch costs one wake-up and one reservation on each side.
async fn run_batched_chain(ops: &[Op], queue: usize, items: u64) -> u64 {
    let ops = ops.to_vec();
    tokio::spawn(async move { batched_chain(&ops, queue, items).await }).await.unwrap()
}

async fn batched_chain(ops: &[Op], queue: usize, items: u64) -> u64 {
    let batch = CHAIN_BATCH.min(queue);
    let (head, mut rx) = mpsc::channel::<u64>(queue);
    for &op in ops {
        let (tx, next_rx) = mpsc::channel::<u64>(queue);
        let mut input = std::mem::replace(&mut rx, next_rx);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(batch);
            while input.recv_many(&mut buf, batch).await > 0 {
                let Ok(permits) = tx.reserve_many(buf.len()).await else { break };
                for (permit, x) in permits.zip(buf.drain(..)) {
                    permit.send(op.apply(x));
                }
            }
        });
    }
    let sum = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(batch);
        let mut sum = 0u64;
        while rx.recv_many(&mut buf, batch).await > 0 {
            sum = buf.drain(..).fold(sum, u64::wrapping_add);
        }
        sum
    });
    let mut next = 0;
    while next < items {
        let n = (items - next).min(batch as u64);
        let permits = head.reserve_many(n as usize).await.unwrap();
        for (permit, x) in permits.zip(next..next + n) {
            permit.send(x);
        }
        next += n;
    }
    drop(head);
    sum.await.unwrap()
}

/// The same steps fused into one task on the runtime: the feeder's items
/// go through every op and into the sum in one stream, with no queue.
async fn run_fused(ops: &[Op], items: u64) -> u64 {
    use futures::StreamExt;
    let ops = ops.to_vec();
    tokio::spawn(async move {
        futures::stream::iter(0..items)
            .map(move |x| ops.iter().fold(x, |x, op| op.apply(x)))
            .fold(0u64, |sum, x| async move { sum.wrapping_add(x) })
            .await
    })
    .await
    .unwrap()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn w1_three_stages(c: &mut Criterion) {
    const ITEMS: u64 = 1_000_000;
    let rt = runtime();
    let ops = [Op::AddOne, Op::Triple];
    let expected = rt.block_on(run_chain(&ops, 1_000, ITEMS));
    assert_eq!(rt.block_on(async { run_genflow!(S3Q1000, ITEMS) }), expected);
    assert_eq!(rt.block_on(run_batched_chain(&ops, 1_000, ITEMS)), expected);
    assert_eq!(rt.block_on(run_fused(&ops, ITEMS)), expected);
    assert_eq!(rt.block_on(async { run_genflow!(S3Fused, ITEMS) }), expected);
    let mut group = c.benchmark_group("w1_three_stages");
    group.throughput(Throughput::Elements(ITEMS)).sample_size(10).measurement_time(Duration::from_secs(8));
    group.bench_function("genflow", |b| b.to_async(&rt).iter(|| async { run_genflow!(S3Q1000, ITEMS) }));
    group.bench_function("mpsc_chain", |b| b.to_async(&rt).iter(|| run_chain(&ops, 1_000, ITEMS)));
    group.bench_function("genflow_fused", |b| b.to_async(&rt).iter(|| async { run_genflow!(S3Fused, ITEMS) }));
    group.bench_function("mpsc_chain_batched", |b| b.to_async(&rt).iter(|| run_batched_chain(&ops, 1_000, ITEMS)));
    group.bench_function("fused_stream", |b| b.to_async(&rt).iter(|| run_fused(&ops, ITEMS)));
    group.finish();
}

fn w1_scaling(c: &mut Criterion) {
    const ITEMS: u64 = 200_000;
    let rt = runtime();
    let mut group = c.benchmark_group("w1_scaling");
    group.throughput(Throughput::Elements(ITEMS)).sample_size(10).measurement_time(Duration::from_secs(3));
    let chains: [(&str, usize, &[Op]); 6] = [
        ("1_stage/q16", 16, &[]),
        ("1_stage/q1000", 1_000, &[]),
        ("3_stages/q16", 16, &[Op::AddOne, Op::Triple]),
        ("3_stages/q1000", 1_000, &[Op::AddOne, Op::Triple]),
        ("8_stages/q16", 16, &[Op::AddOne, Op::Triple, Op::AddOne, Op::Triple, Op::AddOne, Op::Triple, Op::AddOne]),
        (
            "8_stages/q1000",
            1_000,
            &[Op::AddOne, Op::Triple, Op::AddOne, Op::Triple, Op::AddOne, Op::Triple, Op::AddOne],
        ),
    ];
    for (name, queue, ops) in chains {
        let expected = rt.block_on(run_chain(ops, queue, ITEMS));
        let run = |name: &str| -> u64 {
            rt.block_on(async {
                match name {
                    "1_stage/q16" => run_genflow!(S1Q16, ITEMS),
                    "1_stage/q1000" => run_genflow!(S1Q1000, ITEMS),
                    "3_stages/q16" => run_genflow!(S3Q16, ITEMS),
                    "3_stages/q1000" => run_genflow!(S3Q1000, ITEMS),
                    "8_stages/q16" => run_genflow!(S8Q16, ITEMS),
                    _ => run_genflow!(S8Q1000, ITEMS),
                }
            })
        };
        assert_eq!(run(name), expected, "{name}");
        group.bench_function(BenchmarkId::new("genflow", name), |b| b.iter(|| run(name)));
        group.bench_function(BenchmarkId::new("mpsc_chain", name), |b| {
            b.iter(|| rt.block_on(run_chain(ops, queue, ITEMS)))
        });
    }
    group.finish();
}

fn w3_replicas(c: &mut Criterion) {
    const ITEMS: u64 = 20_000;
    calibrate();
    let rt = runtime();
    let mut group = c.benchmark_group("w3_replicas");
    group.throughput(Throughput::Elements(ITEMS)).sample_size(10).measurement_time(Duration::from_secs(5));
    group.bench_function("replicas/1", |b| b.to_async(&rt).iter(|| async { run_genflow!(R1, ITEMS) }));
    group.bench_function("replicas/2", |b| b.to_async(&rt).iter(|| async { run_genflow!(R2, ITEMS) }));
    group.bench_function("replicas/4", |b| b.to_async(&rt).iter(|| async { run_genflow!(R4, ITEMS) }));
    group.finish();
}

/// W1 plain and acked in one group: each acked run must have every input
/// delivered, and the same sum.
fn w1_acks(c: &mut Criterion) {
    const ITEMS: u64 = 1_000_000;
    let rt = runtime();
    let expected = rt.block_on(run_fused(&[Op::AddOne, Op::Triple], ITEMS));
    let acked = || async move {
        let (sum, delivered, other) = run_genflow_acked!(S3Q1000, ITEMS, ack_each);
        assert_eq!((sum, delivered, other), (expected, ITEMS, 0));
        sum
    };
    const PER: u64 = 32;
    let acked_per_batch = || async move {
        let (sum, delivered, other) = run_genflow_acked!(S3Q1000, ITEMS, |acks| ack_per(ITEMS, PER, acks));
        assert_eq!((sum, delivered, other), (expected, ITEMS.div_ceil(PER), 0));
        sum
    };
    let acked_unshared = || async move {
        let (sum, _, _) = run_genflow_acked!(S3Q1000, ITEMS, ack_each_unshared);
        sum
    };
    assert_eq!(rt.block_on(async { run_genflow!(S3Q1000, ITEMS) }), expected);
    let acked_bulk = || async move {
        let (sum, delivered, other) = run_genflow_acked!(S3Q1000, ITEMS, ack_each_bulk);
        assert_eq!((sum, delivered, other), (expected, ITEMS, 0));
        sum
    };
    assert_eq!(rt.block_on(acked()), expected);
    assert_eq!(rt.block_on(acked_bulk()), expected);
    assert_eq!(rt.block_on(acked_unshared()), expected);
    assert_eq!(rt.block_on(acked_per_batch()), expected);
    let mut group = c.benchmark_group("w1_acks");
    group.throughput(Throughput::Elements(ITEMS)).sample_size(10).measurement_time(Duration::from_secs(8));
    group.bench_function("genflow", |b| b.to_async(&rt).iter(|| async { run_genflow!(S3Q1000, ITEMS) }));
    group.bench_function("genflow_acked", |b| b.to_async(&rt).iter(acked));
    group.bench_function("genflow_acked_per_32", |b| b.to_async(&rt).iter(acked_per_batch));
    group.bench_function("genflow_acked_unshared", |b| b.to_async(&rt).iter(acked_unshared));
    group.bench_function("genflow_acked_bulk", |b| b.to_async(&rt).iter(acked_bulk));
    group.finish();
}

criterion_group!(benches, w1_three_stages, w1_scaling, w3_replicas, w1_acks);
criterion_main!(benches);
