//! `call` round trip and `cast` throughput, each next to a hand-written
//! `tokio::sync::mpsc` + `oneshot` baseline in the same group.
//!
//! Call round trips are measured three ways: from `block_on` on a 2-worker
//! runtime (the caller is outside the runtime, so every reply crosses
//! threads), from a task spawned on that runtime (the usual case: callers
//! are tasks), and on a `current_thread` runtime.
//!
//! ```text
//! cargo bench --bench call
//! ```

use std::{hint::black_box, time::Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use genflow::GenServer;
use tokio::{
    runtime::Runtime,
    sync::{mpsc, oneshot},
};

const QUEUE: usize = 1_000;
const CASTS: u64 = 10_000;

/// Adds one to calls; sums casts.
struct Adder {
    sum: u64,
}

impl GenServer for Adder {
    type Message = u64;
    type Response = u64;
    type Registry = Bench;

    fn new(_: Bench) -> Self {
        Adder { sum: 0 }
    }

    async fn handle_call(&mut self, n: u64) -> u64 {
        self.sum.wrapping_add(n + 1)
    }

    async fn handle_cast(&mut self, n: u64) {
        self.sum = self.sum.wrapping_add(n);
    }

    fn channel_queue_size() -> usize {
        QUEUE
    }
}

#[genflow::make_registry{ adder: Adder }]
struct Bench;

/// The baseline: one task owning a receiver, replying through oneshots.
enum Raw {
    Call(u64, oneshot::Sender<u64>),
    Cast(u64),
}

fn raw_server() -> mpsc::Sender<Raw> {
    let (tx, mut rx) = mpsc::channel::<Raw>(QUEUE);
    tokio::spawn(async move {
        let mut sum = 0u64;
        while let Some(msg) = rx.recv().await {
            match msg {
                Raw::Call(n, reply) => {
                    let _ = reply.send(sum.wrapping_add(n + 1));
                }
                Raw::Cast(n) => sum = sum.wrapping_add(n),
            }
        }
    });
    tx
}

async fn raw_call(tx: &mpsc::Sender<Raw>, n: u64) -> u64 {
    let (reply, rx) = oneshot::channel();
    tx.send(Raw::Call(n, reply)).await.unwrap();
    rx.await.unwrap()
}

fn runtimes() -> [(&'static str, Runtime); 2] {
    let multi = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let current = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    [("multi_thread", multi), ("current_thread", current)]
}

fn call_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("call_round_trip");
    for (flavor, rt) in runtimes() {
        let bench = rt.block_on(Bench::start());
        let raw = rt.block_on(async { raw_server() });
        // Warm up both servers once.
        rt.block_on(async {
            bench.call_adder(0).await.unwrap();
            raw_call(&raw, 0).await;
        });
        group.bench_function(BenchmarkId::new("genflow", flavor), |b| {
            b.to_async(&rt).iter(|| async { bench.call_adder(black_box(1)).await.unwrap() })
        });
        group.bench_function(BenchmarkId::new("mpsc_oneshot", flavor), |b| {
            b.to_async(&rt).iter(|| raw_call(&raw, black_box(1)))
        });
        if flavor == "multi_thread" {
            // The caller is a task on the runtime, as servers and request
            // handlers are.
            group.bench_function(BenchmarkId::new("genflow", "multi_thread_in_task"), |b| {
                b.iter_custom(|iters| {
                    let bench = bench.clone();
                    rt.block_on(rt.spawn(async move {
                        let started = Instant::now();
                        for _ in 0..iters {
                            black_box(bench.call_adder(black_box(1)).await.unwrap());
                        }
                        started.elapsed()
                    }))
                    .unwrap()
                })
            });
            group.bench_function(BenchmarkId::new("mpsc_oneshot", "multi_thread_in_task"), |b| {
                b.iter_custom(|iters| {
                    let raw = raw.clone();
                    rt.block_on(rt.spawn(async move {
                        let started = Instant::now();
                        for _ in 0..iters {
                            black_box(raw_call(&raw, black_box(1)).await);
                        }
                        started.elapsed()
                    }))
                    .unwrap()
                })
            });
        }
        rt.block_on(bench.shutdown());
    }
    group.finish();
}

fn cast_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("cast_throughput");
    group.throughput(Throughput::Elements(CASTS));
    for (flavor, rt) in runtimes() {
        let bench = rt.block_on(Bench::start());
        let raw = rt.block_on(async { raw_server() });
        group.bench_function(BenchmarkId::new("genflow", flavor), |b| {
            b.to_async(&rt).iter(|| async {
                for n in 0..CASTS {
                    bench.cast_adder(black_box(n)).await.unwrap();
                }
                // A call after the casts returns once they were all handled.
                bench.call_adder(0).await.unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("mpsc_oneshot", flavor), |b| {
            b.to_async(&rt).iter(|| async {
                for n in 0..CASTS {
                    raw.send(Raw::Cast(black_box(n))).await.unwrap();
                }
                raw_call(&raw, 0).await
            })
        });
        rt.block_on(bench.shutdown());
    }
    group.finish();
}

criterion_group!(benches, call_round_trip, cast_throughput);
criterion_main!(benches);
