//! Metrics recorded through the `metrics` facade (feature `metrics`): a
//! recorded snapshot renders, in a Prometheus recorder, exactly what
//! `metrics()` says, stage by stage and replica by replica; a `Recording`
//! records until the pipeline ends and then holds the final counts, and
//! once dropped records no more.

#[path = "support/prometheus_text.rs"]
mod prometheus_text;

use std::{sync::OnceLock, time::Duration};

use futures::stream;
use genflow::{Metrics, export::Recording};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use prometheus_text::{Sample, Times, assert_recorded, parse, select, value};

/// Fails every tenth number, passes the others on.
#[genflow::stage]
fn check(n: u64) -> Result<u64, String> {
    if n % 10 == 0 { Err(format!("{n} is a multiple of ten")) } else { Ok(n) }
}

/// Emits each number and its successor.
#[genflow::stage]
fn pair(n: u64) -> Vec<u64> {
    vec![n, n + 1]
}

fn key(n: &u64) -> u64 {
    *n
}

#[genflow::pipeline{
    #[replicas(2)]
    check: Check<Numbers>,
    #[replicas(3, partition_by = key)]
    pair: Pair<Numbers>,
}]
struct Numbers;

/// Samples recorded into a fresh Prometheus recorder, as a scrape renders them.
fn rendered(metrics: &Metrics, pipeline: &str) -> Vec<Sample> {
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || metrics.record(pipeline));
    parse(&recorder.handle().render())
}

/// The process-wide recorder, which a `Recording`'s task records into.
fn global() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().expect("the only global recorder"))
}

/// The value of a stage's series in the global recorder.
fn stage_value(pipeline: &str, stage: &str, name: &str) -> Option<f64> {
    value(&parse(&global().render()), name, &[("pipeline", pipeline), ("stage", stage)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_snapshot_holds_exactly_what_metrics_says() {
    let flow = Numbers::start().await;
    // The output is not taken: the last stage's items are dropped, and counted.
    assert_eq!(flow.feed(stream::iter(1..=1_000)).await.expect("running"), 1_000);
    flow.shutdown().await;
    let metrics = flow.metrics();
    let (check, pair) = (metrics.stage("check").expect("a stage"), metrics.stage("pair").expect("a stage"));
    assert_eq!((check.received, check.failed, check.emitted), (1_000, 100, 900), "{metrics}");
    assert_eq!((pair.received, pair.emitted, pair.dropped), (900, 1_800, 1_800), "{metrics}");

    let samples = rendered(&metrics, "numbers");
    assert_recorded(&samples, "numbers", &metrics, Times::Exact);
    // The table's numbers, spelled out for two series.
    assert_eq!(
        value(&samples, "genflow_stage_failed_total", &[("pipeline", "numbers"), ("stage", "check")]),
        Some(100.0)
    );
    let emitted: f64 = select(&samples, "genflow_replica_emitted_total", &[("stage", "pair")]).map(|s| s.value).sum();
    assert_eq!(emitted, 1_800.0);
    // Nothing else than the documented families, each with its labels.
    for s in &samples {
        let labels: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        let expected: &[&str] = if s.name.starts_with("genflow_replica_") {
            &["pipeline", "replica", "stage"]
        } else if s.name.starts_with("genflow_stage_") {
            &["pipeline", "stage"]
        } else {
            assert!(s.name.starts_with("genflow_pipeline_"), "{}", s.name);
            &["pipeline"]
        };
        assert_eq!(labels, expected, "{}", s.name);
    }
    assert_eq!(samples.len(), 2 + 2 * 14 + 2 * 11 + 3 * 12, "series of 2 stages, 2 + 3 replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_described_with_its_type() {
    let flow = Numbers::start().await;
    flow.shutdown().await;
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || flow.metrics().record("described"));
    let text = recorder.handle().render();
    assert!(text.contains("# TYPE genflow_stage_received_total counter\n"), "{text}");
    assert!(text.contains("# HELP genflow_stage_received_total Items the stage took from its queue.\n"), "{text}");
    assert!(text.contains("# TYPE genflow_replica_busy_seconds gauge\n"), "{text}");
    assert!(text.contains("# TYPE genflow_stage_queued gauge\n"), "{text}");
    let types = text.lines().filter(|line| line.starts_with("# TYPE ")).count();
    assert_eq!(types, 28, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_ends_with_the_final_counts_once_the_pipeline_has_ended() {
    let flow = Numbers::start().await;
    let mut recording = Recording::start(&flow, "ends", Duration::from_millis(5));
    assert_eq!(flow.feed(stream::iter(1..=500)).await.expect("running"), 500);
    assert!(!recording.is_finished(), "the pipeline still runs");
    flow.shutdown().await;
    tokio::time::timeout(Duration::from_secs(30), recording.until_ended())
        .await
        .expect("the recording ends once the pipeline has ended");
    assert!(recording.is_finished());
    let metrics = flow.metrics();
    assert_eq!(metrics.stage("check").expect("a stage").received, 500);
    assert_recorded(&parse(&global().render()), "ends", &metrics, Times::Exact);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_of_an_aborted_pipeline_ends_with_its_settled_counts() {
    let flow = Numbers::start().await;
    let mut recording = Recording::start(&flow, "aborted", Duration::from_millis(5));
    assert_eq!(flow.feed(stream::iter(1..=2_000)).await.expect("running"), 2_000);
    flow.abort();
    tokio::time::timeout(Duration::from_secs(30), recording.until_ended())
        .await
        .expect("the recording ends once every replica stopped");
    flow.shutdown().await;
    let metrics = flow.metrics();
    let check = metrics.stage("check").expect("a stage");
    assert_eq!(check.received, 2_000, "{metrics}");
    assert_eq!(check.processed + check.aborted, check.received, "{metrics}");
    assert_recorded(&parse(&global().render()), "aborted", &metrics, Times::Exact);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_recording_records_that_moment_and_no_more() {
    let flow = Numbers::start().await;
    let recording = Recording::start(&flow, "dropped", Duration::from_millis(5));
    // Recorded now, then every 5 ms: wait until a record saw the first items.
    flow.feed(stream::iter(1..=100)).await.expect("running");
    flow.flush().await.expect("running");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stage_value("dropped", "check", "genflow_stage_received_total") != Some(100.0) {
        assert!(tokio::time::Instant::now() < deadline, "never recorded:\n{}", global().render());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    flow.feed(stream::iter(101..=150)).await.expect("running");
    flow.flush().await.expect("running");
    // The drop records the moment it stops, whatever the period.
    drop(recording);
    let after_drop = flow.metrics();
    assert_eq!(after_drop.stage("check").expect("a stage").received, 150);
    assert_recorded(&parse(&global().render()), "dropped", &after_drop, Times::Earlier);
    // Items after the drop are not recorded: the task was stopped at once,
    // while another recording of the same pipeline, with the same period,
    // goes on to the end.
    let mut witness = Recording::start(&flow, "witness", Duration::from_millis(5));
    flow.feed(stream::iter(151..=200)).await.expect("running");
    flow.shutdown().await;
    tokio::time::timeout(Duration::from_secs(30), witness.until_ended()).await.expect("the pipeline ended");
    assert_eq!(flow.metrics().stage("check").expect("a stage").received, 200);
    assert_eq!(stage_value("witness", "check", "genflow_stage_received_total"), Some(200.0));
    assert_eq!(stage_value("dropped", "check", "genflow_stage_received_total"), Some(150.0));
}

#[test]
fn a_recording_can_move_between_threads() {
    fn send_sync_unpin<T: Send + Sync + Unpin + 'static>() {}
    send_sync_unpin::<Recording>();
}

#[test]
#[should_panic(expected = "the period must be more than zero")]
fn a_zero_period_panics() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let flow = Numbers::start().await;
        let _recording = Recording::start(&flow, "zero", Duration::ZERO);
    });
}
