//! Instruction-count probes of the hot paths, each beside its hand-written
//! baseline, for `valgrind --tool=callgrind` (see docs/benchmarks.md).
//!
//! Everything runs on a `current_thread` runtime, so counts repeat to a few
//! instructions (`WORKERS=N` runs it on a multi-thread runtime of N
//! workers instead, to time it or trace its wake-ups; the line printed
//! ends with the time taken). Run each mode at two sizes and divide the difference of
//! the counts by the difference of the sizes: start-up and shutdown cancel
//! out, what is left is the cost of one item, call or cast.
//!
//! ```text
//! cargo build --release --example instructions
//! valgrind --tool=callgrind target/release/examples/instructions w1-genflow 200000
//! ```
//!
//! Modes (`N` = the size):
//! - `w1-genflow N`, `w1-chain N`: W1 of `benches/pipeline.rs` (add 1 →
//!   ×3 → sum, queues of 1000) over `0..N`, genflow and the `mpsc` chain;
//! - `w1-acked N`: W1 with every item sent through `acked()` with an
//!   `Ack` whose callback counts delivered outcomes in an atomic it holds
//!   an `Arc` of (`w1_acks/genflow_acked` of `benches/pipeline.rs`);
//!   `w1-acked-bulk N`: the same with `Ack`s made by an `Acks` whose
//!   acknowledger counts delivered outcomes (`w1_acks/genflow_acked_bulk`);
//!   `ack-only N`: the same `Ack`s as `w1-acked` made and dropped without a pipeline,
//!   the part of an acked item's cost that is the acknowledgement itself;
//! - `w1-keyed N`: W1 with its middle stage replicated twice and
//!   `partition_by` its input's parity (`S3Keyed`), so every batch the
//!   first stage sends goes through the keyed send;
//! - `w1-fused N`, `w1-stream N`: the same with the last two stages
//!   `#[fused]` (one task), and its baseline, a `futures` stream mapped,
//!   mapped and folded in one task;
//! - `call-genflow N`, `call-raw N`: N call round trips from a task, genflow
//!   and `mpsc` + `oneshot`;
//! - `cast-genflow N`, `cast-raw N`: N rounds of 10 000 casts and one call,
//!   as `cast_throughput` in `benches/call.rs`;
//! - `w1-fused-x2 N`: two `w1-fused` pipelines of N items each at once;
//!   `w1-fused-yielder N`: `w1-fused` beside a task looping on
//!   `yield_now`, whose turns it prints (to stderr): on 2 workers, whether
//!   the pipeline leaves other tasks their share;
//! - `work-fed N`: a feeder that works per item (a spin of [`SPIN`] steps,
//!   about 0.4 µs on the bench machine, or `FEED_SPIN` steps) into a stage
//!   that spins as long (or `STAGE_SPIN` steps) and a `#[fused]` sum after
//!   it, so that the stage takes up to 512 items at once: with
//!   `WORKERS=2`, the two spins should run side by side, for close to
//!   twice the throughput of one worker.

use std::{
    hint::black_box,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use genflow::{
    Emitter, GenServer, Stage,
    ack::{Ack, Outcome},
};
use tokio::sync::{mpsc, oneshot};

const QUEUE: usize = 1_000;

/// Adds one to calls, sums casts (as in `benches/call.rs`).
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

/// The baseline server's messages: one task, one receiver, oneshot replies.
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

/// Where the last stage leaves its sum.
trait Res: Clone + Send + Sync + 'static {
    fn result(&self) -> &AtomicU64;
}
/// A 1:1 stage: add 1 (`OP = 0`) or multiply by 3.
struct Map<R, const OP: u8>(PhantomData<R>);
impl<R: Res, const OP: u8> GenServer for Map<R, OP> {
    type Message = ();
    type Response = ();
    type Registry = R;
    fn new(_: R) -> Self {
        Map(PhantomData)
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
    fn channel_queue_size() -> usize {
        QUEUE
    }
}
impl<R: Res, const OP: u8> Stage for Map<R, OP> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(if OP == 0 { x.wrapping_add(1) } else { x.wrapping_mul(3) }).await;
    }
}
/// The last stage: sums, reports on `terminate`.
struct Sum<R> {
    registry: R,
    sum: u64,
}
impl<R: Res> GenServer for Sum<R> {
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
        QUEUE
    }
}
impl<R: Res> Stage for Sum<R> {
    type In = u64;
    type Out = ();
    async fn process(&mut self, x: u64, _: &mut Emitter<()>) {
        self.sum = self.sum.wrapping_add(x);
    }
}
#[genflow::pipeline{ a: Map<S3, 0>, m: Map<S3, 1>, s: Sum<S3> }]
struct S3 {
    result: Arc<AtomicU64>,
}
impl Res for S3 {
    fn result(&self) -> &AtomicU64 {
        &self.result
    }
}
/// The key of `S3Keyed`'s middle stage: the item's parity.
fn parity(x: &u64) -> u64 {
    x & 1
}
#[genflow::pipeline{ a: Map<S3Keyed, 0>, #[replicas(2, partition_by = parity)] m: Map<S3Keyed, 1>, s: Sum<S3Keyed> }]
struct S3Keyed {
    result: Arc<AtomicU64>,
}
impl Res for S3Keyed {
    fn result(&self) -> &AtomicU64 {
        &self.result
    }
}
#[genflow::pipeline{ a: Map<S3Fused, 0>, #[fused] m: Map<S3Fused, 1>, #[fused] s: Sum<S3Fused> }]
struct S3Fused {
    result: Arc<AtomicU64>,
}
impl Res for S3Fused {
    fn result(&self) -> &AtomicU64 {
        &self.result
    }
}

/// An acknowledgement counting delivered outcomes in `delivered`.
fn counting_ack(delivered: &Arc<AtomicU64>) -> Ack {
    let delivered = delivered.clone();
    Ack::new(move |outcome| {
        if matches!(outcome, Outcome::Delivered) {
            delivered.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Steps of work per item in `work-fed`'s feeder and stage.
const SPIN: u64 = 400;

/// `n` dependent steps of work; [`SPIN`] of them take about 0.4 µs on the
/// bench machine.
fn spin(x: u64, n: u64) -> u64 {
    let mut h = x;
    for _ in 0..n {
        h = black_box(h.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(5));
    }
    h
}

/// Steps of work per item, from the environment variable `var` or [`SPIN`].
fn spin_steps(var: &str) -> u64 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(SPIN)
}

/// A stage that spins as long as `work-fed`'s feeder per item, or
/// `STAGE_SPIN` steps.
struct Spin(u64);
impl GenServer for Spin {
    type Message = ();
    type Response = ();
    type Registry = Spun;
    fn new(_: Spun) -> Self {
        Spin(spin_steps("STAGE_SPIN"))
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
    fn channel_queue_size() -> usize {
        QUEUE
    }
}
impl Stage for Spin {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(spin(x, self.0) & 1).await;
    }
}
#[genflow::pipeline{ w: Spin, #[fused] s: Sum<Spun> }]
struct Spun {
    result: Arc<AtomicU64>,
}
impl Res for Spun {
    fn result(&self) -> &AtomicU64 {
        &self.result
    }
}

/// W1 with its last two stages `#[fused]` over `0..items`: the sum.
async fn w1_fused(items: u64) -> u64 {
    let result = Arc::new(AtomicU64::new(0));
    let p = S3Fused::start(result.clone()).await;
    p.feed(futures::stream::iter(0..items)).await.unwrap();
    p.shutdown().await;
    result.load(Ordering::Relaxed)
}

/// The hand-written chain: one task per stage, bounded channels of `queue`.
async fn chain(queue: usize, items: u64) -> u64 {
    let (head, mut rx) = mpsc::channel::<u64>(queue);
    for op in [0u8, 1] {
        let (tx, next_rx) = mpsc::channel::<u64>(queue);
        let mut input = std::mem::replace(&mut rx, next_rx);
        tokio::spawn(async move {
            while let Some(x) = input.recv().await {
                let y = if op == 0 { x.wrapping_add(1) } else { x.wrapping_mul(3) };
                if tx.send(y).await.is_err() {
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

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: instructions MODE N (see the file's docs)";
    let mode = args.next().expect(usage);
    let n: u64 = args.next().and_then(|n| n.parse().ok()).expect(usage);
    // `WORKERS=N`: a multi-thread runtime of N workers, for the clock and
    // the scheduler's wake-ups rather than instruction counts.
    let rt = match std::env::var("WORKERS").ok().and_then(|w| w.parse().ok()) {
        Some(workers) => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap()
        }
        None => tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
    };
    let started = std::time::Instant::now();
    let out = rt.block_on(async move {
        tokio::spawn(async move {
            match mode.as_str() {
                "w1-genflow" => {
                    let result = Arc::new(AtomicU64::new(0));
                    let p = S3::start(result.clone()).await;
                    p.feed(futures::stream::iter(0..n)).await.unwrap();
                    p.shutdown().await;
                    result.load(Ordering::Relaxed)
                }
                "w1-acked" => {
                    use futures::StreamExt;
                    let result = Arc::new(AtomicU64::new(0));
                    let delivered = Arc::new(AtomicU64::new(0));
                    let p = S3::start(result.clone()).await;
                    let acks = delivered.clone();
                    p.acked().feed(futures::stream::iter(0..n).map(move |x| (x, counting_ack(&acks)))).await.unwrap();
                    p.shutdown().await;
                    assert_eq!(delivered.load(Ordering::Relaxed), n, "every input delivered");
                    result.load(Ordering::Relaxed)
                }
                "w1-acked-bulk" => {
                    use futures::StreamExt;
                    let result = Arc::new(AtomicU64::new(0));
                    let delivered = Arc::new(AtomicU64::new(0));
                    let p = S3::start(result.clone()).await;
                    let count = delivered.clone();
                    let mut acks = genflow::ack::Acks::new(move |_: u64, outcome: genflow::ack::Outcome| {
                        if outcome.is_delivered() {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    p.acked().feed(futures::stream::iter(0..n).map(move |x| (x, acks.ack(x)))).await.unwrap();
                    p.shutdown().await;
                    assert_eq!(delivered.load(Ordering::Relaxed), n, "every input delivered");
                    result.load(Ordering::Relaxed)
                }
                // Each Ack fires `Dropped` when dropped unsent: allocation,
                // callback and the release, without the pipeline (the count
                // of delivered outcomes it prints is 0).
                "ack-only" => {
                    let delivered = Arc::new(AtomicU64::new(0));
                    for _ in 0..n {
                        drop(black_box(counting_ack(&delivered)));
                    }
                    delivered.load(Ordering::Relaxed)
                }
                "w1-chain" => chain(QUEUE, n).await,
                "w1-keyed" => {
                    let result = Arc::new(AtomicU64::new(0));
                    let p = S3Keyed::start(result.clone()).await;
                    p.feed(futures::stream::iter(0..n)).await.unwrap();
                    p.shutdown().await;
                    result.load(Ordering::Relaxed)
                }
                "w1-fused" => w1_fused(n).await,
                "work-fed" => {
                    use futures::StreamExt;
                    let result = Arc::new(AtomicU64::new(0));
                    let p = Spun::start(result.clone()).await;
                    let steps = spin_steps("FEED_SPIN");
                    p.feed(futures::stream::iter(0..n).map(move |x| x ^ (spin(x, steps) & 1))).await.unwrap();
                    p.shutdown().await;
                    result.load(Ordering::Relaxed)
                }
                "w1-fused-x2" => {
                    let a = tokio::spawn(w1_fused(n));
                    let b = tokio::spawn(w1_fused(n));
                    a.await.unwrap().wrapping_add(b.await.unwrap())
                }
                "w1-fused-yielder" => {
                    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let turns = Arc::new(AtomicU64::new(0));
                    let (s2, t2) = (stop.clone(), turns.clone());
                    let y = tokio::spawn(async move {
                        while !s2.load(Ordering::Relaxed) {
                            t2.fetch_add(1, Ordering::Relaxed);
                            tokio::task::yield_now().await;
                        }
                    });
                    let sum = w1_fused(n).await;
                    stop.store(true, Ordering::Relaxed);
                    y.await.unwrap();
                    eprintln!("yielder turns {}", turns.load(Ordering::Relaxed));
                    sum
                }
                "w1-stream" => {
                    use futures::StreamExt;
                    futures::stream::iter(0..n)
                        .map(|x| black_box(x).wrapping_add(1))
                        .map(|x| black_box(x).wrapping_mul(3))
                        .fold(0u64, |sum, x| async move { sum.wrapping_add(x) })
                        .await
                }
                "call-genflow" => {
                    let b = Bench::start().await;
                    let mut s = 0;
                    for _ in 0..n {
                        s += black_box(b.call_adder(black_box(1)).await.unwrap());
                    }
                    b.shutdown().await;
                    s
                }
                "call-raw" => {
                    let raw = raw_server();
                    let mut s = 0;
                    for _ in 0..n {
                        s += black_box(raw_call(&raw, black_box(1)).await);
                    }
                    s
                }
                // n rounds of 10 000 casts followed by one call, as the bench.
                "cast-genflow" => {
                    let b = Bench::start().await;
                    let mut s = 0;
                    for _ in 0..n {
                        for i in 0..10_000 {
                            b.cast_adder(black_box(i)).await.unwrap();
                        }
                        s += b.call_adder(0).await.unwrap();
                    }
                    b.shutdown().await;
                    s
                }
                "cast-raw" => {
                    let raw = raw_server();
                    let mut s = 0;
                    for _ in 0..n {
                        for i in 0..10_000 {
                            raw.send(Raw::Cast(black_box(i))).await.unwrap();
                        }
                        s += raw_call(&raw, 0).await;
                    }
                    s
                }
                other => panic!("unknown mode {other}; {usage}"),
            }
        })
        .await
        .unwrap()
    });
    println!("{} {n} {out} {:?}", std::env::args().nth(1).unwrap_or_default(), started.elapsed());
}
