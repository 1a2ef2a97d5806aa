//! `#[batch(size, timeout)]` on cheap items: 1M `u64`s cut into batches of
//! 100 (timeout 10 ms) and summed per batch, on a 2-worker runtime, against
//! the same stage batching by hand (a `Vec` in its state, emitted when full
//! and in `finish`), and against tokio-stream's `chunks_timeout(100, 10 ms)`
//! over a plain stream (no pipeline).
//!
//! ```text
//! cargo bench --bench batch
//! ```

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::{StreamExt, stream};
use genflow::{Emitter, GenServer, Stage};
use tokio::runtime::Runtime;

const ITEMS: u64 = 1_000_000;
const SIZE: usize = 100;
const TIMEOUT: Duration = Duration::from_millis(10);

/// Sums each batch it is given.
struct Sum;

impl GenServer for Sum {
    type Message = ();
    type Response = ();
    type Registry = Batched;
    fn new(_: Batched) -> Self {
        Sum
    }
    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Sum {
    type In = Vec<u64>;
    type Out = u64;
    async fn process(&mut self, batch: Vec<u64>, out: &mut Emitter<u64>) {
        out.emit(batch.iter().sum()).await;
    }
}

#[genflow::pipeline{ #[batch(size = SIZE, timeout = TIMEOUT)] sum: Sum }]
struct Batched;

/// Batches by hand: a `Vec` in its state (no timeout).
struct HandSum {
    batch: Vec<u64>,
}

impl GenServer for HandSum {
    type Message = ();
    type Response = ();
    type Registry = ByHand;
    fn new(_: ByHand) -> Self {
        HandSum { batch: Vec::with_capacity(SIZE) }
    }
    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for HandSum {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        self.batch.push(n);
        if self.batch.len() == SIZE {
            let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(SIZE));
            out.emit(batch.iter().sum()).await;
        }
    }
    async fn finish(&mut self, out: &mut Emitter<u64>) {
        if !self.batch.is_empty() {
            out.emit(self.batch.iter().sum()).await;
        }
    }
}

#[genflow::pipeline{ sum: HandSum }]
struct ByHand;

macro_rules! run {
    ($flow:expr) => {{
        let flow = $flow;
        let output = flow.output().unwrap();
        let feeder = flow.clone();
        let feed = tokio::spawn(async move { feeder.feed(stream::iter(0..ITEMS)).await.unwrap() });
        let sums = output.fold((0u64, 0u64), |(sum, n), s| async move { (sum.wrapping_add(s), n + 1) });
        let (sums, fed) = tokio::join!(sums, async {
            let fed = feed.await.unwrap();
            flow.shutdown().await;
            fed
        });
        assert_eq!(fed, ITEMS as usize);
        sums
    }};
}

async fn batched() -> (u64, u64) {
    run!(Batched::start().await)
}

async fn by_hand() -> (u64, u64) {
    run!(ByHand::start().await)
}

async fn chunks() -> (u64, u64) {
    let chunks = tokio_stream::StreamExt::chunks_timeout(stream::iter(0..ITEMS), SIZE, TIMEOUT);
    chunks.fold((0u64, 0u64), |(sum, n), batch| async move { (sum.wrapping_add(batch.iter().sum()), n + 1) }).await
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn batch(c: &mut Criterion) {
    let rt = runtime();
    let expected = (ITEMS * (ITEMS - 1) / 2, ITEMS.div_ceil(SIZE as u64));
    assert_eq!(rt.block_on(by_hand()), expected);
    assert_eq!(rt.block_on(chunks()), expected);
    // Batches are cut at 100 or when the queue has nothing more at hand
    // before the timeout: the sum is exact, the count at least the full ones.
    let (sum, cut) = rt.block_on(batched());
    assert_eq!(sum, expected.0);
    assert!(cut >= expected.1, "{cut} batches");

    let mut group = c.benchmark_group("batch");
    group
        .throughput(Throughput::Elements(ITEMS))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("genflow_batch_100", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                black_box(rt.block_on(batched()));
            }
            started.elapsed()
        });
    });
    group.bench_function("by_hand_100", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                black_box(rt.block_on(by_hand()));
            }
            started.elapsed()
        });
    });
    group.bench_function("chunks_timeout_100", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                black_box(rt.block_on(chunks()));
            }
            started.elapsed()
        });
    });
    group.finish();
}

criterion_group!(benches, batch);
criterion_main!(benches);
