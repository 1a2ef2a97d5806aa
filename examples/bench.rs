//! Measures a pipeline of N stages against a hand-written chain of Tokio
//! tasks and bounded `mpsc` channels doing the same work, and prints the
//! ratio and genflow's per-stage report.
//!
//! ```text
//! cargo run --release --example bench -- --stages 3 --items 1000000 --queue 1000 --replicas 1
//! cargo run --release --example bench -- --stages 2 --items 200000 --replicas 3 --work-ns 2000
//! ```
//!
//! The stages alternate "add 1" and "multiply by 3" (plus `--work-ns` of
//! busy work per item each); the last stage sums. `--replicas` applies to
//! every stage but the last and `--queue` to every stage, both chosen when
//! the pipeline starts (`builder`); the hand-written chain always has one
//! task per stage. Each side runs `--runs` times on the same runtime;
//! medians are printed.

use std::{
    hint::black_box,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use genflow::{Emitter, GenServer, Pipeline, Stage, harness::Harness};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "genflow pipeline throughput against a hand-written Tokio channel chain")]
struct Args {
    /// Number of stages, 1 to 8 (the last one sums).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=8))]
    stages: u8,
    /// Items to push through.
    #[arg(long, default_value_t = 1_000_000)]
    items: u64,
    /// Queue size of every stage (and of every channel of the chain).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    queue: u32,
    /// Replicas of every stage but the last.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    replicas: u32,
    /// Busy work per item in each stage but the last, in nanoseconds.
    #[arg(long, default_value_t = 0)]
    work_ns: u64,
    /// Runs of each side; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// Iterations of `work` per item, calibrated from `--work-ns`.
static WORK_ITERS: AtomicU64 = AtomicU64::new(0);

fn work(x: u64) -> u64 {
    let mut v = x;
    for _ in 0..WORK_ITERS.load(Ordering::Relaxed) {
        v = black_box(v.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407));
    }
    v
}

fn calibrate(work_ns: u64) {
    if work_ns == 0 {
        return;
    }
    WORK_ITERS.store(10_000, Ordering::Relaxed);
    let started = Instant::now();
    for i in 0..100 {
        black_box(work(i));
    }
    let per_iter = started.elapsed().as_secs_f64() / 1_000_000.0;
    WORK_ITERS.store(((work_ns as f64 * 1e-9) / per_iter).max(1.0) as u64, Ordering::Relaxed);
}

/// The work of stage `i` (0-based) on one item.
fn apply(i: usize, x: u64) -> u64 {
    let y = if i % 2 == 0 { x.wrapping_add(1) } else { x.wrapping_mul(3) };
    if WORK_ITERS.load(Ordering::Relaxed) == 0 { y } else { y ^ (work(y) & 1) }
}

/// Every pipeline here leaves its sum in a shared cell.
trait Summed: Pipeline<In = u64> {
    fn sum(&self) -> &AtomicU64;
}

/// Stage `I` of a pipeline `P`: `apply(I, x)`.
struct Map<P, const I: usize>(PhantomData<P>);

impl<P: Summed, const I: usize> GenServer for Map<P, I> {
    type Message = ();
    type Response = ();
    type Registry = P;
    fn new(_: P) -> Self {
        Map(PhantomData)
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl<P: Summed, const I: usize> Stage for Map<P, I> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(apply(I, x)).await;
    }
}

/// The last stage: sums, and reports the sum when it terminates.
struct Sum<P: Summed> {
    pipeline: P,
    sum: u64,
}

impl<P: Summed> GenServer for Sum<P> {
    type Message = ();
    type Response = ();
    type Registry = P;
    fn new(pipeline: P) -> Self {
        Sum { pipeline, sum: 0 }
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
    async fn terminate(&mut self) {
        self.pipeline.sum().fetch_add(self.sum, Ordering::Relaxed);
    }
}

impl<P: Summed> Stage for Sum<P> {
    type In = u64;
    type Out = ();
    async fn process(&mut self, x: u64, _: &mut Emitter<()>) {
        self.sum = self.sum.wrapping_add(x);
    }
}

/// One pipeline type per number of stages; replica counts and queue sizes
/// are chosen when it starts.
macro_rules! pipelines {
    ($($name:ident [$($stage:ident = $i:tt),*];)*) => {$(
        #[genflow::pipeline{ $($stage: Map<$name, $i>,)* sum: Sum<$name> }]
        struct $name {
            sum: Arc<AtomicU64>,
        }

        impl Summed for $name {
            fn sum(&self) -> &AtomicU64 {
                &self.sum
            }
        }
    )*};
}

pipelines! {
    P1 [];
    P2 [s1 = 0];
    P3 [s1 = 0, s2 = 1];
    P4 [s1 = 0, s2 = 1, s3 = 2];
    P5 [s1 = 0, s2 = 1, s3 = 2, s4 = 3];
    P6 [s1 = 0, s2 = 1, s3 = 2, s4 = 3, s5 = 4];
    P7 [s1 = 0, s2 = 1, s3 = 2, s4 = 3, s5 = 4, s6 = 5];
    P8 [s1 = 0, s2 = 1, s3 = 2, s4 = 3, s5 = 4, s6 = 5, s7 = 6];
}

/// Runs the pipeline of `stages` stages once through the harness, with
/// `replicas` replicas of every stage but the last and queues of `queue`.
async fn run_genflow(
    stages: u8,
    replicas: usize,
    queue: usize,
    items: u64,
) -> (Duration, u64, genflow::harness::Report) {
    macro_rules! sized {
        ($name:ident) => {{
            let mut builder = $name::builder(Arc::default()).queue_size("sum", queue);
            for i in 1..stages {
                let stage = format!("s{i}");
                builder = builder.replicas(stage.as_str(), replicas).queue_size(stage.as_str(), queue);
            }
            measure(builder.start().await.expect("sizes checked by the argument parser"), items).await
        }};
    }
    match stages {
        1 => sized!(P1),
        2 => sized!(P2),
        3 => sized!(P3),
        4 => sized!(P4),
        5 => sized!(P5),
        6 => sized!(P6),
        7 => sized!(P7),
        8 => sized!(P8),
        _ => unreachable!("checked by the argument parser"),
    }
}

async fn measure<P: Summed>(pipeline: P, items: u64) -> (Duration, u64, genflow::harness::Report) {
    let report = Harness::new().run_n(pipeline.clone(), items, |i| i).await.expect("the pipeline is running");
    (report.elapsed, pipeline.sum().load(Ordering::Relaxed), report)
}

/// The hand-written chain: one task per stage, bounded channels.
async fn run_chain(stages: u8, queue: usize, items: u64) -> (Duration, u64) {
    let started = Instant::now();
    let (head, mut rx) = mpsc::channel::<u64>(queue);
    for i in 0..usize::from(stages) - 1 {
        let (tx, next_rx) = mpsc::channel::<u64>(queue);
        let mut input = std::mem::replace(&mut rx, next_rx);
        tokio::spawn(async move {
            while let Some(x) = input.recv().await {
                if tx.send(apply(i, x)).await.is_err() {
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
        head.send(x).await.expect("the chain is running");
    }
    drop(head);
    let sum = sum.await.expect("the sum task does not panic");
    (started.elapsed(), sum)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn main() {
    let args = Args::parse();
    calibrate(args.work_ns);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    println!(
        "{} stages, {} items, queue {}, replicas {}, {} ns of work per item, {} worker threads, {} runs",
        args.stages, args.items, args.queue, args.replicas, args.work_ns, args.threads, args.runs
    );
    let (mut ours, mut theirs, mut last_report) = (Vec::new(), Vec::new(), None);
    for _ in 0..args.runs {
        // Both sides are fed by a task on the runtime.
        let (replicas, queue) = (args.replicas as usize, args.queue as usize);
        let genflow = runtime.spawn(async move { run_genflow(args.stages, replicas, queue, args.items).await });
        let (elapsed, sum, report) = runtime.block_on(genflow).expect("the genflow run does not panic");
        let chain = runtime.spawn(run_chain(args.stages, args.queue as usize, args.items));
        let (chain_elapsed, chain_sum) = runtime.block_on(chain).expect("the chain run does not panic");
        assert_eq!(sum, chain_sum, "both sides compute the same sum");
        ours.push(elapsed);
        theirs.push(chain_elapsed);
        last_report = Some(report);
    }
    let (ours, theirs) = (median(ours), median(theirs));
    let rate = |d: Duration| args.items as f64 / d.as_secs_f64();
    println!("genflow          {:>10.1?}  {:>12.0} items/s", ours, rate(ours));
    println!("hand-written     {:>10.1?}  {:>12.0} items/s", theirs, rate(theirs));
    println!("genflow / hand-written throughput: {:.2}x", theirs.as_secs_f64() / ours.as_secs_f64());
    if args.replicas != 1 {
        println!("(the hand-written chain runs one task per stage)");
    }
    if let Some(report) = last_report {
        println!("\nlast genflow run:\n{report}");
    }
}
