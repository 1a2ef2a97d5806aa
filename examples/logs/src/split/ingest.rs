//! `logs ingest`: parse a log and publish its records, partitioned by
//! route, to JetStream.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Instant,
};

use async_nats::jetstream;
use futures::{StreamExt, future, stream};
use genflow::{ack::Held, nats::Sink};

use super::{
    DEFAULT_URL, Format, INGEST_SUBJECT, connect,
    record::{Envelope, Record},
    records_stream, records_subject,
    report::IngestSummary,
};
use crate::{
    generator,
    pipeline::{BoxError, Line, Malformed, ParseCounts, route, route_partition},
    thousands,
};

/// How many publishes wait for their acknowledgement at once.
const IN_FLIGHT: usize = 256;

/// `logs ingest`.
#[derive(Debug, clap::Args)]
pub(crate) struct IngestArgs {
    /// The NATS server (with JetStream).
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    nats: String,

    /// Read this access log instead of generating one; `-` reads stdin.
    #[arg(long, value_name = "PATH")]
    input: Option<PathBuf>,

    /// Lines to generate [default: 1000000]; with --input, the most lines to read.
    #[arg(long, value_name = "N")]
    lines: Option<u64>,

    /// The seed of the generated log (the single-process run uses the default).
    #[arg(long, value_name = "S", default_value_t = generator::DEFAULT_SEED)]
    seed: u64,

    /// How many partitions (subjects `logs.records.0` ..) the records are split into.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(1..=4096))]
    partitions: u32,

    /// How records are written into messages (workers must use the same).
    #[arg(long, value_enum, default_value_t)]
    codec: Format,
}

/// What the parse loop counted so far.
struct Tally {
    parse: ParseCounts,
    malformed: Malformed,
    /// Records per partition.
    records: Vec<u64>,
}

/// Parses the input, publishes every record, then the ingest summary, then
/// one end marker per partition, each step once the previous one is stored.
pub(crate) async fn run(args: IngestArgs) -> Result<ExitCode, BoxError> {
    let crate::Input { lines, description, read_error, .. } =
        crate::Input::read(args.input.as_deref(), args.lines, args.seed).await?;
    let client = connect(&args.nats, "logs-ingest").await?;
    let js = jetstream::new(client.clone());
    records_stream(&js).await?;
    let started = Instant::now();
    let partitions = args.partitions;
    let tally = Arc::new(Mutex::new(Tally {
        parse: ParseCounts::default(),
        malformed: Malformed::default(),
        records: vec![0; partitions as usize],
    }));

    // Lines are numbered from 1 as the single-process pipeline numbers them.
    let records = lines.zip(stream::iter(1u64..)).filter_map({
        let tally = tally.clone();
        move |(text, number)| {
            let mut tally = tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let record = match tally.parse.parse(Line { number, text }) {
                Ok(request) => {
                    let partition = route_partition(&route(request.method, request.target()), partitions);
                    let count = &mut tally.records[partition as usize];
                    *count += 1;
                    Some((Envelope::Record(Record::new(number, partition, *count, &request)), Held::default()))
                }
                Err(malformed) => {
                    tally.malformed.record(&malformed);
                    None
                }
            };
            future::ready(record)
        }
    });
    let sink = || {
        Sink::new(client.clone(), "logs.records")
            .subject_by(|envelope: &Envelope| records_subject(envelope.partition()))
            .msg_id(Envelope::msg_id)
            .codec(args.codec.codec())
            .max_in_flight(IN_FLIGHT)
    };
    let stored = sink().run(records).await;
    if stored.failed > 0 {
        return Err(format!(
            "{} records were not stored; run the ingest again (message ids keep what was stored from being stored twice)",
            thousands(stored.failed)
        )
        .into());
    }
    if let Some(error) = read_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
        return Err(format!("reading {description} stopped early: {error}").into());
    }

    let Tally { parse, malformed, records } = std::mem::replace(
        &mut *tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
        Tally { parse: ParseCounts::default(), malformed: Malformed::default(), records: Vec::new() },
    );
    let summary = IngestSummary { partitions, parse, malformed, records };
    js.publish(INGEST_SUBJECT, serde_json::to_vec(&summary)?.into())
        .await
        .map_err(|e| format!("cannot publish to {INGEST_SUBJECT}: {e}"))?
        .await
        .map_err(|e| format!("{INGEST_SUBJECT} was not stored: {e}"))?;
    let ends = (0..partitions)
        .map(|partition| (Envelope::End { partition, records: summary.records[partition as usize] }, Held::default()));
    let ended = sink().run(stream::iter(ends)).await;
    if ended.failed > 0 {
        return Err(format!("{} end markers were not stored; run the ingest again", ended.failed).into());
    }

    let per_partition: Vec<String> =
        summary.records.iter().enumerate().map(|(p, n)| format!("p{p} {}", thousands(*n))).collect();
    println!(
        "{description}: {} lines, {} malformed; {} records in {partitions} partitions ({})",
        thousands(summary.parse.lines),
        thousands(summary.malformed.count),
        thousands(summary.parse.parsed),
        per_partition.join(" · ")
    );
    println!(
        "stored      {} records ({} stored before, not again) in {:.2?}",
        thousands(stored.published),
        thousands(stored.duplicates),
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}
