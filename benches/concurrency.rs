//! `#[concurrency(N)]` on I/O-bound work: 6,400 items whose work is a
//! 10 ms `tokio::time::sleep`, one replica, concurrency 64, on a 2-worker
//! runtime, against `futures::StreamExt::buffer_unordered(64)` over the same
//! work. The ideal is 6,400 / 64 × 10 ms = 1.0 s.
//!
//! ```text
//! cargo bench --bench concurrency
//! ```

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::{StreamExt, stream};
use genflow::{Emitter, GenServer, Stage};
use tokio::runtime::Runtime;

const ITEMS: u64 = 6_400;
const CONCURRENCY: usize = 64;
const WORK: Duration = Duration::from_millis(10);

/// The slow part of an item: a wait, then a result.
async fn lookup(n: u64) -> u64 {
    tokio::time::sleep(WORK).await;
    n.wrapping_mul(3)
}

/// Hands each item's lookup over.
struct Lookup;

impl GenServer for Lookup {
    type Message = ();
    type Response = ();
    type Registry = Lookups;

    fn new(_: Lookups) -> Self {
        Lookup
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Lookup {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit_async(lookup(n)).await;
    }
}

#[genflow::pipeline{ #[concurrency(CONCURRENCY)] lookup: Lookup }]
struct Lookups;

/// Runs every item through the pipeline; the sum of the results.
async fn pipeline() -> u64 {
    let flow = Lookups::start().await;
    let output = flow.output().unwrap();
    let feeder = flow.clone();
    let feed = tokio::spawn(async move { feeder.feed(stream::iter(0..ITEMS)).await.unwrap() });
    let sum = output.fold(0u64, |sum, n| async move { sum.wrapping_add(n) });
    let (sum, fed) = tokio::join!(sum, async {
        let fed = feed.await.unwrap();
        flow.shutdown().await;
        fed
    });
    assert_eq!(fed, ITEMS as usize);
    sum
}

/// The same work through `buffer_unordered`.
async fn buffered() -> u64 {
    stream::iter(0..ITEMS)
        .map(lookup)
        .buffer_unordered(CONCURRENCY)
        .fold(0u64, |sum, n| async move { sum.wrapping_add(n) })
        .await
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn concurrency(c: &mut Criterion) {
    let rt = runtime();
    let expected = (0..ITEMS).fold(0u64, |sum, n| sum.wrapping_add(n.wrapping_mul(3)));
    assert_eq!(rt.block_on(pipeline()), expected);
    assert_eq!(rt.block_on(buffered()), expected);
    println!("ideal: {:?}", WORK * (ITEMS as u32 / CONCURRENCY as u32));

    let mut group = c.benchmark_group("concurrency");
    group
        .throughput(Throughput::Elements(ITEMS))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(12));
    group.bench_function("genflow_concurrency_64", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                black_box(rt.block_on(pipeline()));
            }
            started.elapsed()
        });
    });
    group.bench_function("buffer_unordered_64", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                black_box(rt.block_on(buffered()));
            }
            started.elapsed()
        });
    });
    group.finish();
}

criterion_group!(benches, concurrency);
criterion_main!(benches);
