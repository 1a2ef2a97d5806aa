//! The flagship split across processes joined by NATS JetStream (feature
//! `nats`): `logs ingest`, `logs worker`, `logs combine`.
//!
//! ```text
//!                 logs.records.0 ─▶ worker-p0 ─▶ enrich ×2 ─▶ aggregate ─▶ checkpoint (KV LOGS_STATE, p0)
//!  logs ingest ─▶ logs.records.1 ─▶ worker-p1 ─▶   …
//!  (parse)        …                                     (one pipeline per partition)
//!                 logs.ingest: what the ingest read (lines, malformed, records per partition)
//! ```
//!
//! - **ingest** reads (or generates) the log and parses it as the
//!   single-process `parse` does, in a plain loop, numbering lines the same
//!   way. Each record goes, through `genflow::nats::Sink`, to the subject
//!   `logs.records.<p>` of its route's partition `p`
//!   ([`route_partition`](crate::pipeline::route_partition): the hash of the
//!   single-process `aggregate`'s `partition_by`), so each partition holds
//!   every hit of its routes, as an `aggregate` replica does. Its
//!   `Nats-Msg-Id` is the line number, and each record also carries its
//!   `seq`, its place among its partition's records. Once every record is
//!   stored (publish acknowledgements awaited), the ingest publishes what it
//!   read ([`IngestSummary`](report::IngestSummary): line counts, the malformed lines, the records
//!   per partition) to `logs.ingest`, then an end marker with the record
//!   count to each partition's subject. The stream `LOGS` (subjects
//!   `logs.records.*` and `logs.ingest`) is created if missing.
//! - **worker** runs, for each partition it is given, a durable pull
//!   consumer `worker-p<p>` (filter `logs.records.<p>`) through
//!   `genflow::nats::Source` into a pipeline `enrich ×2 → aggregate` that
//!   enriches and aggregates as the single-process one does. The aggregate
//!   keeps each message's acknowledgement (`Emitter::hold`) and, every
//!   [`worker::CHECKPOINT_EVERY`] messages, emits its whole state with
//!   them; the reader of the output writes that state to the key-value
//!   bucket `LOGS_STATE` (key `p<p>`) and only then releases them, so a
//!   message is acked only once its effect is stored. The partition is
//!   done when the aggregate has counted as many records as its end marker
//!   says; the worker then prints its partial report (and writes it as JSON
//!   with `--report FILE`).
//! - **combine** merges partial reports that cover every partition once:
//!   the result equals the single-process report of the same log.
//!
//! **Restarts and redelivery.** A worker started again loads each
//! partition's last checkpoint and resumes its durable consumer: acked
//! messages are not delivered again, and those that were not (in flight
//! when the worker stopped) are. Delivery is at least once, so a record
//! may arrive again after the checkpoint that counted it was written (a
//! crash between the write and the acks): the aggregate keeps the `seq`s
//! it counted ([`Seen`](record::Seen), part of the checkpoint) and counts
//! each record once. A worker stopped with Ctrl-C writes a last checkpoint
//! of what it holds before it exits.

mod ingest;
mod record;
mod report;
mod worker;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use async_nats::jetstream::{self, stream};
use clap::{Subcommand, ValueEnum};
use genflow::nats::{Codec, Connect};

use crate::pipeline::BoxError;

pub(crate) use ingest::IngestArgs;
pub(crate) use report::PartialReport;
pub(crate) use worker::WorkerArgs;

/// The stream of records, ingest summaries and end markers.
const STREAM: &str = "LOGS";
/// Where the ingest publishes its [`IngestSummary`](report::IngestSummary).
const INGEST_SUBJECT: &str = "logs.ingest";
/// The key-value bucket of the workers' checkpoints, one key per partition.
const STATE_BUCKET: &str = "LOGS_STATE";
/// The server tried when `--nats` is not given.
const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// The subject of partition `p`'s records: `logs.records.<p>`.
fn records_subject(partition: u32) -> String {
    format!("logs.records.{partition}")
}

/// The subcommands of the split flagship.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Parse a log and publish its records to NATS, one subject per partition.
    Ingest(IngestArgs),
    /// Enrich and aggregate the records of some partitions; print their partial report.
    Worker(WorkerArgs),
    /// Merge the partial reports of workers that covered every partition.
    Combine(CombineArgs),
}

/// `logs combine`.
#[derive(Debug, clap::Args)]
pub(crate) struct CombineArgs {
    /// The partial reports (`logs worker --report FILE`).
    #[arg(required = true, value_name = "REPORT")]
    reports: Vec<PathBuf>,

    /// Also write the combined report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// How records are written into messages (both ends must agree).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// MessagePack: compact.
    #[default]
    Msgpack,
    /// JSON: readable with `nats sub`.
    Json,
}

impl Format {
    fn codec(self) -> Codec {
        match self {
            Format::Msgpack => Codec::MessagePack,
            Format::Json => Codec::Json,
        }
    }
}

/// Runs a subcommand.
pub(crate) async fn run(command: Command) -> Result<ExitCode, BoxError> {
    match command {
        Command::Ingest(args) => ingest::run(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::Combine(args) => combine(args),
    }
}

/// The stream `LOGS`, created if missing.
async fn records_stream(js: &jetstream::Context) -> Result<stream::Stream, BoxError> {
    let config = stream::Config {
        name: STREAM.to_string(),
        subjects: vec!["logs.records.*".to_string(), INGEST_SUBJECT.to_string()],
        ..Default::default()
    };
    js.get_or_create_stream(config).await.map_err(|e| {
        let text = e.to_string();
        let hint = if text.contains("jetstream unavailable") || text.contains("not enabled") {
            " (start the server with JetStream on: `nats-server -js`)"
        } else {
            ""
        };
        format!("cannot open the stream {STREAM}: {text}{hint}").into()
    })
}

/// Connects to `url`, naming the connection `name`.
async fn connect(url: &str, name: &str) -> Result<async_nats::Client, BoxError> {
    Ok(Connect::new(url).name(name).connect().await?)
}

/// `500ms`, `2s`, `1m`, or a number of seconds.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("expected a duration such as 2s or 500ms, not `{text}`"))?;
    let seconds = match unit {
        "ms" => number / 1e3,
        "" | "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("unknown unit `{unit}` in `{text}`: use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

/// `logs combine`: reads the partial reports, merges them, prints the
/// report as the single-process run does.
fn combine(args: CombineArgs) -> Result<ExitCode, BoxError> {
    let mut parts = Vec::with_capacity(args.reports.len());
    for path in &args.reports {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let part: PartialReport =
            serde_json::from_str(&text).map_err(|e| format!("{} is not a partial report: {e}", path.display()))?;
        parts.push(part);
    }
    let report = report::combine(&parts)?;
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    let covers: usize = parts.iter().map(|part| part.covers.len()).sum();
    println!("{} partial reports, {covers} partitions\n", parts.len());
    crate::print_report(&report);
    Ok(ExitCode::SUCCESS)
}

/// Writes `value` as JSON to `path`.
pub(crate) fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<(), BoxError> {
    let text = serde_json::to_string(value)?;
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}
