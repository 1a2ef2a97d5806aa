//! `--metrics-addr` (feature `prometheus`): the log pipeline's metrics,
//! scraped over HTTP from the exporter on a free loopback port, are exactly
//! what `metrics()` says once the pipeline has run to completion, stage by
//! stage and replica by replica.

#[allow(dead_code, reason = "the example's modules; the test uses part of them")]
#[path = "../src/gen.rs"]
mod generator;
#[allow(dead_code, reason = "the example's modules; the test uses part of them")]
#[path = "../src/pipeline.rs"]
mod pipeline;
#[path = "../src/prometheus.rs"]
mod prometheus;
#[allow(dead_code, reason = "shared with genflow's tests; this one uses part of it")]
#[path = "../../../tests/support/prometheus_text.rs"]
mod prometheus_text;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use futures::stream;
use pipeline::{Logs, MalformedLines, collect_report, stage};
use prometheus_text::{Sample, Times, assert_recorded, parse, value};

/// An address on loopback with a port nobody listened on a moment ago.
fn free_loopback_port() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port");
    listener.local_addr().expect("its address")
}

/// `GET http://addr/metrics`, parsed.
async fn scrape(addr: SocketAddr) -> Result<Vec<Sample>, ureq::Error> {
    let url = format!("http://{addr}/metrics");
    let text = tokio::task::spawn_blocking(move || ureq::get(&url).call()?.body_mut().read_to_string())
        .await
        .expect("the scrape did not panic")?;
    Ok(parse(&text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_the_run_holds_exactly_the_final_metrics() {
    let addr = free_loopback_port();
    prometheus::serve(addr).expect("the exporter listens");
    // Two `aggregate` replicas, each with its own partition of the routes.
    let pipeline = Logs::sized(&[("aggregate".to_string(), 2)], &[]).await.expect("valid sizes");
    let mut recording = prometheus::record(&pipeline);
    let mut malformed = MalformedLines::read(&pipeline).expect("failures() not taken yet");
    let lines: Vec<String> = generator::access_log(20_000, generator::DEFAULT_SEED).collect();
    let fed = pipeline.feed_lines(stream::iter(lines)).await.expect("the pipeline runs");
    assert_eq!(fed, 20_000);
    let report = tokio::time::timeout(Duration::from_secs(60), collect_report(&pipeline, &mut malformed, fed))
        .await
        .expect("every line went through in time")
        .expect("the stages answer");
    pipeline.shutdown().await;
    tokio::time::timeout(Duration::from_secs(30), recording.until_ended())
        .await
        .expect("the recording ends once the pipeline has ended");

    let metrics = pipeline.metrics();
    let parse_stage = stage(&metrics, "parse");
    assert_eq!(parse_stage.received, fed, "{metrics}");
    assert_eq!(parse_stage.failed, report.malformed.count, "{metrics}");
    assert!(parse_stage.failed > 0, "the generated log has malformed lines: {metrics}");
    assert!(stage(&metrics, "aggregate").partitioned(), "{metrics}");

    // The exporter serves from a task of this runtime: scrape until it
    // answers (at once, normally), within a deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let samples = loop {
        match scrape(addr).await {
            Ok(samples) => break samples,
            Err(error) => assert!(Instant::now() < deadline, "no scrape: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_recorded(&samples, prometheus::PIPELINE, &metrics, Times::Exact);
    // Spelled out: the malformed lines are `parse`'s failed items.
    let failed = value(&samples, "genflow_stage_failed_total", &[("pipeline", "logs"), ("stage", "parse")]);
    assert_eq!(failed, Some(report.malformed.count as f64));
}
