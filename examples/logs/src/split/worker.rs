//! `logs worker`: enrich and aggregate the records of some partitions, each
//! through its own pipeline fed by a durable consumer, with the aggregate's
//! state checkpointed to a key-value bucket before any message is acked.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, kv};
use futures::{StreamExt, future};
use genflow::{
    AckedOutput, Emitter, GenServer, Stage,
    ack::Held,
    nats::{Codec, Source},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{
    DEFAULT_URL, Format, INGEST_SUBJECT, STATE_BUCKET, STREAM, connect,
    record::{Envelope, Seen},
    records_stream, records_subject,
    report::{IngestSummary, PartialReport},
    write_json,
};
use crate::{
    INTERRUPTED,
    pipeline::{BoxError, Enricher, Hit, Summary},
    thousands,
};

/// How many messages the aggregate takes between two checkpoints: the
/// most it holds unacknowledged. Below [`PREFETCH`], so the source always
/// has messages to pull while the aggregate waits for the next checkpoint.
pub(crate) const CHECKPOINT_EVERY: u64 = 256;

/// How often the aggregate writes what it holds when fewer than
/// [`CHECKPOINT_EVERY`] messages came: a message waits at most about this
/// long for its ack once its record is counted.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// How many messages a partition's source holds pulled and not yet
/// acked (the server's `max_ack_pending` default is 1,000).
const PREFETCH: usize = 512;

/// `logs worker`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// The NATS server (with JetStream).
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    nats: String,

    /// The partitions to work on, e.g. `0,2`: durable consumers `worker-p0`, `worker-p2`.
    #[arg(long, value_name = "P,..", value_delimiter = ',', required = true)]
    partitions: Vec<u32>,

    /// The worker's name, for its connection and its report.
    #[arg(long, default_value = "worker")]
    name: String,

    /// How records were written into messages (as `logs ingest --codec`).
    #[arg(long, value_enum, default_value_t)]
    codec: Format,

    /// How long the server waits for a delivered message's ack before it
    /// delivers it again, e.g. after this worker crashed.
    #[arg(long, value_name = "DURATION", value_parser = super::duration, default_value = "30s")]
    ack_wait: Duration,

    /// Also write the partial report as JSON to this file, for `logs combine`.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// Exits at once (code 86), as a crash would, right after writing this
    /// many checkpoints and before acking their messages: to test recovery.
    #[arg(long, value_name = "N", hide = true)]
    exit_after_checkpoints: Option<u64>,
}

/// The exit code of `--exit-after-checkpoints`.
const CRASHED: i32 = 86;

// --- The state of a partition -----------------------------------------------------

/// What a partition's aggregate has built: its checkpoint, stored under
/// the key `p<p>` of the bucket `LOGS_STATE`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartitionState {
    pub(crate) partition: u32,
    /// The aggregates of the records counted.
    pub(crate) summary: Summary,
    /// The `seq` of every record counted.
    pub(crate) seen: Seen,
    /// How many records the partition has, once its end marker came.
    pub(crate) end: Option<u64>,
    /// Records delivered again after they were counted, not counted again.
    pub(crate) duplicates: u64,
}

impl PartitionState {
    fn new(partition: u32) -> PartitionState {
        PartitionState { partition, ..PartitionState::default() }
    }

    /// Whether every record of the partition was counted.
    pub(crate) fn done(&self) -> bool {
        self.end == Some(self.seen.len())
    }
}

// --- The pipeline of a partition ----------------------------------------------------

/// One partition's records: `enrich ×2 → aggregate`, the aggregate's
/// checkpoints as output.
#[genflow::pipeline{
    #[replicas(2)]
    enrich: EnrichRecords,
    aggregate: Aggregate,
}]
pub(crate) struct Partition {
    /// The partition's number.
    partition: u32,
    /// Its last checkpoint, the aggregate's state when it starts.
    start: Arc<PartitionState>,
    /// How many times an `aggregate` was made: more than once means a
    /// restart lost its state.
    made: Arc<AtomicU32>,
}

/// What `enrich` passes to `aggregate`.
pub(crate) enum Counted {
    /// The hit of the `seq`th record of the partition.
    Hit { seq: u64, hit: Hit },
    /// The partition's end marker: it has `records` records.
    End { records: u64 },
}

/// [`Envelope`] → [`Counted`]: the record's [`Hit`], made by the
/// single-process [`Enricher`].
pub(crate) struct EnrichRecords {
    partition: u32,
    enricher: Enricher,
}

impl GenServer for EnrichRecords {
    type Message = ();
    type Response = ();
    type Registry = Partition;

    fn new(registry: Partition) -> Self {
        EnrichRecords { partition: registry.partition, enricher: Enricher::default() }
    }

    async fn handle_call(&mut self, (): ()) {}
}

impl Stage for EnrichRecords {
    type In = Envelope;
    type Out = Counted;

    async fn process(&mut self, envelope: Envelope, out: &mut Emitter<Counted>) {
        if envelope.partition() != self.partition {
            let (found, expected) = (envelope.partition(), self.partition);
            return out.fail(format!("a message of partition {found} in the subject of partition {expected}"));
        }
        match envelope {
            Envelope::Record(record) => {
                // What `parse` checks of a line, checked again of a message.
                if !(100..600).contains(&record.status) || record.seq == 0 {
                    return out.fail(format!("line {}: not a valid record: {record:?}", record.line));
                }
                let hit = self.enricher.enrich(record.to_request());
                out.emit(Counted::Hit { seq: record.seq, hit }).await;
            }
            Envelope::End { records, .. } => out.emit(Counted::End { records }).await,
        }
    }
}

/// Counts each record once into the partition's [`PartitionState`],
/// holding every message's acknowledgement until a checkpoint carries it
/// out.
pub(crate) struct Aggregate {
    state: PartitionState,
    /// The acknowledgements of the messages taken since the last checkpoint.
    held: Held,
    taken: u64,
    /// Made again after a restart: its state is lost, so it fails
    /// every item instead of writing a checkpoint that forgot records.
    lost: bool,
}

impl GenServer for Aggregate {
    type Message = ();
    type Response = ();
    type Registry = Partition;

    fn new(registry: Partition) -> Self {
        let lost = registry.made.fetch_add(1, Ordering::Relaxed) > 0;
        Aggregate { state: (*registry.start).clone(), held: Held::default(), taken: 0, lost }
    }

    async fn init(&mut self) {
        // Ticks call `handle_timer`; it runs in this stage's task, so this
        // cannot fail here.
        let _ = self.send_interval(CHECKPOINT_INTERVAL, ());
    }

    async fn handle_call(&mut self, (): ()) {}
}

impl Aggregate {
    /// Emits the state with the acknowledgements held since the last
    /// checkpoint, if any.
    async fn checkpoint(&mut self, out: &mut Emitter<PartitionState>) {
        if !self.held.is_empty() {
            self.taken = 0;
            out.emit_with(self.state.clone(), std::mem::take(&mut self.held)).await;
        }
    }
}

impl Stage for Aggregate {
    type In = Counted;
    type Out = PartitionState;

    async fn process(&mut self, item: Counted, out: &mut Emitter<PartitionState>) {
        if self.lost {
            return out.fail("the aggregate restarted and lost its state: start the worker again");
        }
        if self.state.done() {
            // Delivered again after the last checkpoint: nothing to add,
            // acked as it leaves.
            return;
        }
        match item {
            Counted::Hit { seq, hit } => {
                if self.state.end.is_some_and(|end| seq > end) {
                    let end = self.state.end.unwrap_or_default();
                    return out.fail(format!("record {seq} of a partition of {end} records"));
                }
                if self.state.seen.insert(seq) {
                    self.state.summary.record(hit);
                } else {
                    self.state.duplicates += 1;
                }
            }
            Counted::End { records } => match self.state.end {
                Some(end) if end != records => {
                    return out.fail(format!("two end markers disagree: {end} and {records} records"));
                }
                _ if self.state.seen.len() > records => {
                    return out
                        .fail(format!("{} records counted, the end marker says {records}", self.state.seen.len()));
                }
                _ => self.state.end = Some(records),
            },
        }
        let held = out.hold();
        self.held.absorb(held);
        self.taken += 1;
        if self.state.done() || self.taken >= CHECKPOINT_EVERY {
            self.checkpoint(out).await;
        }
    }

    /// Every [`CHECKPOINT_INTERVAL`]: a checkpoint of what it holds, so
    /// messages are acked while few arrive.
    async fn handle_timer(&mut self, (): (), out: &mut Emitter<PartitionState>) {
        if !self.lost {
            self.checkpoint(out).await;
        }
    }

    /// At shutdown: a last checkpoint of what it holds.
    async fn finish(&mut self, out: &mut Emitter<PartitionState>) {
        if !self.lost {
            self.checkpoint(out).await;
        }
    }
}

// --- Checkpoints ----------------------------------------------------------------------

/// The bucket `LOGS_STATE`, created if missing.
///
/// Its stream (`KV_LOGS_STATE`) is created here with the settings of a
/// key-value bucket keeping one revision per key, rather than with the
/// client's `create_key_value`, which first reads the account's limits in
/// a form a 2.9 server does not answer.
async fn state_bucket(js: &jetstream::Context) -> Result<kv::Store, BoxError> {
    let config = jetstream::stream::Config {
        name: format!("KV_{STATE_BUCKET}"),
        subjects: vec![format!("$KV.{STATE_BUCKET}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    let name = config.name.clone();
    if let Err(e) = js.get_or_create_stream(config).await {
        // Workers starting together race to create it: the one that lost
        // finds it made by the other.
        js.get_stream(&name).await.map_err(|_| format!("cannot create the bucket {STATE_BUCKET}: {e}"))?;
    }
    Ok(js.get_key_value(STATE_BUCKET).await.map_err(|e| format!("cannot open the bucket {STATE_BUCKET}: {e}"))?)
}

fn state_key(partition: u32) -> String {
    format!("p{partition}")
}

/// The last checkpoint of `partition` and its revision, or a fresh state.
async fn load_state(bucket: &kv::Store, partition: u32) -> Result<(PartitionState, Option<u64>), BoxError> {
    let key = state_key(partition);
    let entry = bucket.entry(&key).await.map_err(|e| format!("cannot read {STATE_BUCKET} {key}: {e}"))?;
    match entry.filter(|entry| entry.operation == kv::Operation::Put) {
        None => Ok((PartitionState::new(partition), None)),
        Some(entry) => {
            let state: PartitionState = Codec::MessagePack
                .decode(&entry.value)
                .map_err(|e| format!("{STATE_BUCKET} {key} is not a partition's state: {e}"))?;
            if state.partition != partition {
                return Err(format!("{STATE_BUCKET} {key} holds partition {}", state.partition).into());
            }
            Ok((state, Some(entry.revision)))
        }
    }
}

/// Writes each checkpoint the aggregate emits, then releases the
/// acknowledgements it carries, and publishes it to `written`. The write
/// expects the revision it wrote last: another process writing the same
/// partition is an error, not a lost update.
struct Writer {
    bucket: kv::Store,
    partition: u32,
    revision: Option<u64>,
    written: watch::Sender<PartitionState>,
    /// Checkpoints written by the whole worker, and when to stop as if crashed.
    count: Arc<AtomicU64>,
    exit_after: Option<u64>,
}

impl Writer {
    async fn run(mut self, mut checkpoints: AckedOutput<PartitionState>) -> Result<(), BoxError> {
        let key = state_key(self.partition);
        while let Some((state, held)) = checkpoints.next().await {
            match self.write(&key, &state).await {
                Ok(()) => {
                    let written = self.count.fetch_add(1, Ordering::Relaxed) + 1;
                    if self.exit_after.is_some_and(|n| written >= n) {
                        eprintln!("exiting after {written} checkpoints, before acking their messages");
                        std::process::exit(CRASHED);
                    }
                    held.release();
                    self.written.send_replace(state);
                }
                Err(error) => {
                    let text = error.to_string();
                    held.fail(error);
                    return Err(text.into());
                }
            }
        }
        Ok(())
    }

    /// Writes `state` under `key`, expecting the revision written last.
    ///
    /// While the broker is away (a timeout, a lost connection), the write
    /// is tried again, with a pause doubling from 100 ms up to 5 s, until
    /// the broker answers: the messages the checkpoint would acknowledge
    /// wait meanwhile. A conflict (another process wrote the key) is an
    /// error at once, unless the key holds this very value: a try that got
    /// no answer, or that the client sent again as the server came back,
    /// was the write that took.
    async fn write(&mut self, key: &str, state: &PartitionState) -> Result<(), BoxError> {
        let value = Codec::MessagePack.encode(state)?;
        let mut pause = Duration::from_millis(100);
        loop {
            let written = match self.revision {
                Some(revision) => self.bucket.update(key, value.clone(), revision).await.map_err(|e| {
                    let conflict =
                        matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision | kv::UpdateErrorKind::InvalidKey);
                    (conflict, e.to_string())
                }),
                None => self.bucket.create(key, value.clone()).await.map_err(|e| {
                    let conflict =
                        matches!(e.kind(), kv::CreateErrorKind::AlreadyExists | kv::CreateErrorKind::InvalidKey);
                    (conflict, e.to_string())
                }),
            };
            match written {
                Ok(revision) => {
                    self.revision = Some(revision);
                    return Ok(());
                }
                Err((true, error)) => {
                    // The client may have sent the write twice (once more
                    // as the server came back): if the first took, the key
                    // holds this very value.
                    if let Ok(Some(entry)) = self.bucket.entry(key).await {
                        if entry.value == value {
                            self.revision = Some(entry.revision);
                            return Ok(());
                        }
                    }
                    return Err(format!(
                        "cannot write the checkpoint of partition {}: {error} (another worker wrote it: \
                         is another worker on this partition?)",
                        self.partition
                    )
                    .into());
                }
                Err((false, error)) => {
                    eprintln!(
                        "partition {}: cannot write the checkpoint yet ({error}); is the broker away? \
                         trying again in {pause:?}",
                        self.partition
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

// --- The worker -------------------------------------------------------------------------

/// A partition being worked on.
struct Running {
    pipeline: Partition,
    source: genflow::nats::SourceHandle,
    writer: tokio::task::JoinHandle<()>,
    state: watch::Receiver<PartitionState>,
}

/// Works on every partition given until each is done (or Ctrl-C, or an
/// error), then prints the partial report.
pub(crate) async fn run(args: WorkerArgs) -> Result<ExitCode, BoxError> {
    let partitions: BTreeSet<u32> = args.partitions.iter().copied().collect();
    let started = Instant::now();
    let client = connect(&args.nats, &args.name).await?;
    let js = jetstream::new(client.clone());
    let stream = records_stream(&js).await?;
    let bucket = state_bucket(&js).await?;

    if let Some(ingest) = ingest_summary(&stream).await? {
        if let Some(p) = partitions.iter().find(|&&p| p >= ingest.partitions) {
            return Err(format!("partition {p} is not one of the ingest's {} partitions", ingest.partitions).into());
        }
    }

    let (errors, mut error) = mpsc::unbounded_channel::<BoxError>();
    let count = Arc::new(AtomicU64::new(0));
    let mut finished = Vec::new();
    let mut running = Vec::new();
    for &partition in &partitions {
        let (state, revision) = load_state(&bucket, partition).await?;
        if state.done() {
            finished.push(state);
            continue;
        }
        let (written, state_rx) = watch::channel(state.clone());
        let pipeline = Partition::start(partition, Arc::new(state), Arc::default()).await;
        let mut failures = pipeline.failures().ok_or("the failures stream was taken")?;
        let output = pipeline.output().ok_or("the output was taken")?;
        let writer = Writer {
            bucket: bucket.clone(),
            partition,
            revision,
            written,
            count: count.clone(),
            exit_after: args.exit_after_checkpoints,
        };
        let writer = tokio::spawn({
            let errors = errors.clone();
            async move {
                if let Err(e) = writer.run(output.acked()).await {
                    let _ = errors.send(e);
                }
            }
        });
        tokio::spawn({
            let errors = errors.clone();
            async move {
                if let Some(failure) = failures.next().await {
                    let _ = errors.send(format!("partition {partition}: {failure}").into());
                }
            }
        });
        let source = Source::new(client.clone(), STREAM, format!("worker-p{partition}"))
            .filter_subject(records_subject(partition))
            .codec(args.codec.codec())
            .ack_wait(args.ack_wait)
            .prefetch(PREFETCH)
            .start(pipeline.acked())
            .await?;
        running.push(Running { pipeline, source, writer, state: state_rx });
    }
    drop(errors);

    // Until every partition is done, an error, or Ctrl-C.
    let all_done = future::join_all(running.iter().map(|run| {
        let mut state = run.state.clone();
        async move { state.wait_for(PartitionState::done).await.is_ok() }
    }));
    let outcome = tokio::select! {
        done = all_done => if done.iter().all(|&ok| ok) { Ok(false) } else { Err("a checkpoint writer ended".into()) },
        Some(e) = error.recv() => Err(e),
        Ok(()) = tokio::signal::ctrl_c() => Ok(true),
    };
    // The pipeline drains (the aggregate writes a last checkpoint of what
    // it holds), then the source answers every message it pulled.
    for run in running {
        run.pipeline.shutdown().await;
        let _ = run.writer.await;
        run.source.wait().await;
        finished.push(run.state.borrow().clone());
    }
    let interrupted = outcome?;
    if let Ok(e) = error.try_recv() {
        return Err(e);
    }
    if interrupted {
        eprintln!("interrupted: what was counted is saved; start the worker again to go on");
        return Ok(ExitCode::from(INTERRUPTED));
    }

    let report = partial_report(&stream, finished).await?;
    if let Some(path) = &args.report {
        write_json(path, &report)?;
    }
    println!(
        "worker {}: partitions {} of {}: {} requests ({} redelivered, counted once) in {:.2?}\n",
        args.name,
        report.covers.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
        report.ingest.partitions,
        thousands(report.summary.requests()),
        thousands(report.duplicates),
        started.elapsed()
    );
    crate::print_report(&report.as_report());
    Ok(ExitCode::SUCCESS)
}

/// The partial report of the finished partitions, with the ingest's
/// summary, checked against it.
async fn partial_report(
    stream: &jetstream::stream::Stream,
    finished: Vec<PartitionState>,
) -> Result<PartialReport, BoxError> {
    let ingest = ingest_summary(stream).await?.ok_or_else(|| format!("{INGEST_SUBJECT} holds no ingest summary"))?;
    let mut covers = Vec::new();
    for state in &finished {
        let p = state.partition;
        let records = ingest.records.get(p as usize).copied();
        let Some(records) = records else {
            return Err(format!("partition {p} is not one of the ingest's {} partitions", ingest.partitions).into());
        };
        if state.end != Some(records) || state.summary.requests() != records {
            return Err(format!(
                "partition {p}: {} requests counted, the ingest published {records} records",
                state.summary.requests()
            )
            .into());
        }
        covers.push(p);
    }
    covers.sort_unstable();
    let summary = Summary::merged(finished.iter().map(|state| &state.summary));
    let duplicates = finished.iter().map(|state| state.duplicates).sum();
    Ok(PartialReport { ingest, covers, summary, duplicates })
}

/// The last [`IngestSummary`] published, if any.
async fn ingest_summary(stream: &jetstream::stream::Stream) -> Result<Option<IngestSummary>, BoxError> {
    use jetstream::stream::LastRawMessageErrorKind;
    let message = match stream.get_last_raw_message_by_subject(INGEST_SUBJECT).await {
        Ok(message) => message,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the ingest summary from {INGEST_SUBJECT}: {e}").into()),
    };
    let ingest = serde_json::from_slice(&message.payload)
        .map_err(|e| format!("{INGEST_SUBJECT} holds no ingest summary: {e}"))?;
    Ok(Some(ingest))
}
