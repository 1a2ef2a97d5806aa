//! `--metrics-addr`: the pipeline's metrics as Prometheus text while the
//! analysis runs (feature `prometheus`).
//!
//! genflow records a snapshot of `metrics()` into the `metrics` facade once
//! a second (`genflow::export::Recording`), and `metrics-exporter-prometheus`
//! serves what was recorded to every scrape, on any path:
//!
//! ```text
//! cargo run --release -p logs --features prometheus -- --metrics-addr 127.0.0.1:9000
//! curl -s 127.0.0.1:9000/metrics | grep genflow_stage_received_total
//! ```

use std::{net::SocketAddr, time::Duration};

use genflow::export::Recording;
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::pipeline::{BoxError, Logs};

/// How often the pipeline's metrics are recorded.
pub(crate) const PERIOD: Duration = Duration::from_secs(1);

/// The `pipeline` label of every series.
pub(crate) const PIPELINE: &str = "logs";

/// Serves Prometheus text on `addr` from a task of the current Tokio
/// runtime, and installs its recorder as the process's `metrics` recorder.
///
/// # Errors
///
/// If `addr` cannot be bound, or a recorder was installed before.
pub(crate) fn serve(addr: SocketAddr) -> Result<(), BoxError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|error| format!("cannot serve metrics on {addr}: {error}").into())
}

/// Records `pipeline`'s metrics every [`PERIOD`] until it ends; the last
/// record holds its final counts.
pub(crate) fn record(pipeline: &Logs) -> Recording {
    Recording::start(pipeline, PIPELINE, PERIOD)
}
