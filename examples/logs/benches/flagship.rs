//! The flagship `logs` example's pipeline against the plain loop that
//! computes the same report (`sequential` in `src/pipeline.rs`),
//! on the same pre-generated access-log lines.
//!
//! ```text
//! cargo bench -p logs --bench flagship
//! ```
//!
//! - `flagship/pipeline`: the pipeline as `cargo run --release -p
//!   logs` runs it by default (its declared topology and queue sizes): start,
//!   take `failures()` and read it in a task (`MalformedLines`), `feed` every
//!   line, `collect_report` (flush, then a call to each stage and the
//!   malformed lines read from the failures), `shutdown`. Everything runs in
//!   tasks on a 2-worker multi-thread runtime, as in `main.rs`.
//! - `flagship/sequential`: `sequential` on the bench's thread.
//!
//! Both get their own copy of the same lines, made before the timed part,
//! and consume it (each line is freed once read, on either side). The lines
//! are generated once; before anything is timed, both reports are checked
//! to be exactly equal.

#[allow(dead_code, reason = "the example's modules; the bench uses part of them")]
#[path = "../src/gen.rs"]
mod generator;
#[allow(dead_code, reason = "the example's modules; the bench uses part of them")]
#[path = "../src/pipeline.rs"]
mod pipeline;

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::stream;
use pipeline::{Logs, MalformedLines, Report, collect_report, sequential};
use tokio::runtime::Runtime;

/// Lines per run.
const LINES: u64 = 1_000_000;

/// One run of the pipeline, as `main.rs` does it without its progress bar.
async fn run_pipeline(lines: Vec<String>) -> Report {
    let pipeline = Logs::sized(&[], &[]).await.expect("the declared sizes are valid");
    let mut malformed = MalformedLines::read(&pipeline).expect("failures() is not taken yet");
    let fed = pipeline.feed_lines(stream::iter(lines)).await.expect("the pipeline is running");
    let report = collect_report(&pipeline, &mut malformed, fed).await.expect("every stage answers");
    pipeline.shutdown().await;
    report
}

/// [`run_pipeline`] in a task of `runtime`, so that every part of it runs on
/// the runtime's workers.
fn pipeline_on(runtime: &Runtime, lines: Vec<String>) -> Report {
    runtime.block_on(async { tokio::spawn(run_pipeline(lines)).await.expect("the run does not panic") })
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}

fn flagship(c: &mut Criterion) {
    let rt = runtime();
    let lines: Vec<String> = generator::access_log(LINES, generator::DEFAULT_SEED).collect();

    let expected = sequential(lines.clone());
    let report = pipeline_on(&rt, lines.clone());
    assert!(report == expected, "the pipeline's report differs from the sequential loop's");
    assert_eq!(report.parse.lines, LINES);
    assert!(report.malformed.count > 0, "the generated log has malformed lines");

    let mut group = c.benchmark_group("flagship");
    group.throughput(Throughput::Elements(LINES)).sample_size(10).measurement_time(Duration::from_secs(15));
    group.bench_function("pipeline", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let copy = lines.clone();
                let started = Instant::now();
                black_box(pipeline_on(&rt, copy));
                total += started.elapsed();
            }
            total
        });
    });
    group.bench_function("sequential", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let copy = lines.clone();
                let started = Instant::now();
                black_box(sequential(copy));
                total += started.elapsed();
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, flagship);
criterion_main!(benches);
