//! A source of `(offset, line)` records acknowledged per input through
//! `genflow::ack::Acks`, as a Kafka consumer would use it: each offset is
//! reported delivered, failed or dropped exactly once, and the committed
//! offset only moves past offsets that were delivered or whose failure was
//! recorded.
//!
//! The pipeline: `parse` (four replicas) turns a line into a number and
//! fails lines that are not one; `fan` emits two records per number and
//! fails every thousandth number after emitting the first of them (a mixed
//! outcome, which counts as failed); `store` keeps a count and a sum.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt, stream};
use genflow::{
    Emitter, Stage,
    ack::{self, Acknowledger, Acks, Outcome},
};
use tokio::sync::watch;

/// How many records the source holds.
const RECORDS: u64 = 50_000;

/// How long any wait of these tests may take before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(120);

/// The line at `offset`: a number, except for one offset in 97, which is
/// garbage that `parse` fails.
fn line(offset: u64) -> String {
    if offset % 97 == 13 { format!("#{offset}") } else { offset.to_string() }
}

/// A line that is not a number; keeps the line.
#[derive(Debug)]
struct BadLine {
    line: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a number: {:?}", self.line)
    }
}

impl std::error::Error for BadLine {}

/// A number `fan` refuses after emitting its first record.
#[derive(Debug)]
struct Rejected {
    value: u64,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rejected: {}", self.value)
    }
}

impl std::error::Error for Rejected {}

#[genflow::stage]
async fn parse(line: String, out: &mut Emitter<u64>) {
    match line.parse() {
        Ok(value) => out.emit(value).await,
        Err(_) => out.fail(BadLine { line }),
    }
}

#[genflow::stage]
async fn fan(value: u64, out: &mut Emitter<u64>) {
    out.emit(2 * value).await;
    if value % 1000 == 999 {
        out.fail(Rejected { value });
        return;
    }
    out.emit(2 * value + 1).await;
}

/// Counts and sums the records it stores; a call reads both.
#[derive(Default)]
struct Store {
    count: u64,
    sum: u64,
}

#[genflow::stage]
impl Stage for Store {
    type Registry = Offsets;
    type Message = ();
    type Response = (u64, u64);
    type In = u64;
    type Out = ();

    async fn handle_call(&mut self, _: ()) -> (u64, u64) {
        (self.count, self.sum)
    }

    async fn process(&mut self, record: u64, _: &mut Emitter<()>) {
        self.count += 1;
        self.sum += record;
    }
}

#[genflow::pipeline{
    #[replicas(4)] parse: Parse<Offsets>,
    fan: Fan<Offsets>,
    store: Store,
}]
struct Offsets;

/// Why an offset failed, as recorded for it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Why {
    BadLine { stage: String, line: String },
    Rejected { stage: String, value: u64 },
    Other(String),
}

/// A Kafka-style offset tracker: `committed` is the first offset not yet
/// done, so every offset below it was delivered or failed and recorded
/// in `failed`. A dropped offset is not done: the source must read it
/// again, so the commit stops there.
#[derive(Debug)]
struct Tracker {
    committed: u64,
    /// Whether each offset was delivered or failed and recorded.
    done: Vec<bool>,
    /// How many times each offset was acknowledged.
    times: Vec<u32>,
    /// The recorded failures of each failed offset.
    failed: BTreeMap<u64, Vec<Why>>,
    dropped: BTreeSet<u64>,
    acknowledged: u64,
}

impl Tracker {
    fn new(records: u64) -> Self {
        let len = usize::try_from(records).expect("fits in memory");
        Tracker {
            committed: 0,
            done: vec![false; len],
            times: vec![0; len],
            failed: BTreeMap::new(),
            dropped: BTreeSet::new(),
            acknowledged: 0,
        }
    }

    /// Records `offset`'s outcome and moves the commit as far as it can.
    fn record(&mut self, offset: u64, outcome: Outcome) {
        let at = usize::try_from(offset).expect("an offset of the source");
        self.times[at] += 1;
        self.acknowledged += 1;
        match outcome {
            Outcome::Delivered => self.done[at] = true,
            Outcome::Failed(failures) => {
                let why = failures
                    .iter()
                    .map(|failure| {
                        let stage = failure.stage().to_string();
                        if let Some(bad) = failure.error().downcast_ref::<BadLine>() {
                            Why::BadLine { stage, line: bad.line.clone() }
                        } else if let Some(rejected) = failure.error().downcast_ref::<Rejected>() {
                            Why::Rejected { stage, value: rejected.value }
                        } else {
                            Why::Other(failure.to_string())
                        }
                    })
                    .collect();
                self.failed.insert(offset, why);
                self.done[at] = true;
            }
            Outcome::Dropped => {
                self.dropped.insert(offset);
            }
        }
        while self.done.get(usize::try_from(self.committed).expect("fits")).copied().unwrap_or(false) {
            self.committed += 1;
        }
    }
}

/// The acknowledger of the first test: the tracker behind a lock, and a
/// count of acknowledgements to wait on.
struct Commits {
    tracker: Mutex<Tracker>,
    acknowledged: watch::Sender<u64>,
}

impl Acknowledger<u64> for Commits {
    fn acknowledge(&self, offset: u64, outcome: Outcome) {
        let count = {
            let mut tracker = self.tracker.lock().unwrap();
            tracker.record(offset, outcome);
            tracker.acknowledged
        };
        self.acknowledged.send_replace(count);
    }
}

/// What the model says about `offsets`: the failures each failed offset
/// records, and the count and sum `store` ends with.
fn model(offsets: impl Iterator<Item = u64>) -> (BTreeMap<u64, Vec<Why>>, u64, u64) {
    let (mut failed, mut count, mut sum) = (BTreeMap::new(), 0, 0);
    for offset in offsets {
        let line = line(offset);
        let Ok(value) = line.parse::<u64>() else {
            failed.insert(offset, vec![Why::BadLine { stage: "parse".into(), line }]);
            continue;
        };
        count += 1;
        sum += 2 * value;
        if value % 1000 == 999 {
            failed.insert(offset, vec![Why::Rejected { stage: "fan".into(), value }]);
        } else {
            count += 1;
            sum += 2 * value + 1;
        }
    }
    (failed, count, sum)
}

/// Every offset acked once through an `Acks` sharing one acknowledger with
/// the test; the source loses one record on the way (its `Ack` is dropped
/// unsent), so the commit stops right there while every other offset is
/// still acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offset_stops_at_a_dropped_record() {
    const LOST: u64 = 25_000;
    let (acknowledged, mut count) = watch::channel(0);
    let commits = Arc::new(Commits { tracker: Mutex::new(Tracker::new(RECORDS)), acknowledged });
    let pipeline = Offsets::start().await;

    let started = Instant::now();
    let mut acks = Acks::shared(commits.clone());
    let records = (0..RECORDS).filter_map(move |offset| {
        let ack = acks.ack(offset);
        // The record at LOST never reaches the pipeline: its `Ack` goes unsent.
        (offset != LOST).then(|| (line(offset), ack))
    });
    let sent = pipeline.acked().feed(stream::iter(records)).await.expect("the pipeline is running");
    assert_eq!(sent as u64, RECORDS - 1);
    tokio::time::timeout(DEADLINE, count.wait_for(|&n| n == RECORDS))
        .await
        .expect("every offset acknowledged before the deadline")
        .expect("the acknowledger lives in `commits`");
    let elapsed = started.elapsed();
    println!("Acks::shared: {RECORDS} records in {elapsed:?} ({:.0}/s)", RECORDS as f64 / elapsed.as_secs_f64());

    let (failed, count, sum) = model((0..RECORDS).filter(|&offset| offset != LOST));
    assert_eq!(pipeline.call_store(()).await.unwrap(), (count, sum));
    pipeline.shutdown().await;

    let tracker = commits.tracker.lock().unwrap();
    assert_eq!(tracker.committed, LOST);
    assert_eq!(tracker.acknowledged, RECORDS);
    assert!(tracker.times.iter().all(|&times| times == 1), "every offset acknowledged exactly once");
    assert_eq!(tracker.dropped, BTreeSet::from([LOST]));
    assert_eq!(tracker.failed, failed);
    assert_eq!(tracker.failed.len(), 516 + 50);
}

/// The same source acked through `Acks::new(acker)` of an
/// `ack::channel()`: a consumer task reads `(offset, outcome)` pairs and
/// commits; the stream ends once the `Acks` (which holds the `Acker`) and
/// every `Ack` it made are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_acker_commits_every_offset() {
    let (acker, mut outcomes) = ack::channel::<u64>();
    let consumer = tokio::spawn(async move {
        let mut tracker = Tracker::new(RECORDS);
        while let Some((offset, outcome)) = outcomes.next().await {
            tracker.record(offset, outcome);
        }
        tracker
    });
    let pipeline = Offsets::start().await;

    let started = Instant::now();
    let mut acks = Acks::new(acker);
    let records = stream::iter(0..RECORDS).map(move |offset| (line(offset), acks.ack(offset)));
    let sent = pipeline.acked().feed(records).await.expect("the pipeline is running");
    assert_eq!(sent as u64, RECORDS);
    // The `Acks` went with the stream `feed` consumed; the consumer's
    // stream ends once the last in-flight input is acknowledged.
    let tracker = tokio::time::timeout(DEADLINE, consumer)
        .await
        .expect("the acknowledgements stream ended before the deadline")
        .expect("the consumer did not panic");
    let elapsed = started.elapsed();
    println!("Acks::new(acker): {RECORDS} records in {elapsed:?} ({:.0}/s)", RECORDS as f64 / elapsed.as_secs_f64());

    let (failed, count, sum) = model(0..RECORDS);
    assert_eq!(pipeline.call_store(()).await.unwrap(), (count, sum));
    pipeline.shutdown().await;

    assert_eq!(tracker.committed, RECORDS);
    assert_eq!(tracker.acknowledged, RECORDS);
    assert!(tracker.times.iter().all(|&times| times == 1), "every offset acknowledged exactly once");
    assert!(tracker.dropped.is_empty());
    assert_eq!(tracker.failed, failed);
    assert_eq!(tracker.failed.len(), 516 + 50);
}

/// An `Ack` made by `Acks` fires on its own, while others of its block
/// are still held; the acknowledgements stream of the `Acker` an `Acks`
/// holds stays open while that `Acks` lives, and ends once it is dropped.
#[tokio::test]
async fn acks_fire_alone_and_the_stream_ends_with_the_acks() {
    let (acker, mut outcomes) = ack::channel::<u64>();
    let mut acks = Acks::new(acker);
    let (first, second) = (acks.ack(1), acks.ack(2));
    drop(first);
    let (offset, outcome) = outcomes.next().await.expect("the stream is open");
    assert_eq!((offset, outcome.kind()), (1, "dropped"));
    drop(second);
    let (offset, outcome) = outcomes.next().await.expect("the stream is open");
    assert_eq!((offset, outcome.kind()), (2, "dropped"));
    // Every `Ack` made is done, but the `Acks` still holds the `Acker`.
    assert!(outcomes.next().now_or_never().is_none(), "the stream waits while the `Acks` lives");
    drop(acks);
    assert!(outcomes.next().await.is_none(), "the stream ends with the `Acks`");
}
