//! NATS segments under trouble, each test on its own real `nats-server`:
//! two workers sharing a durable consumer while one is aborted mid-stream
//! or its whole process dies, the broker killed and started again
//! mid-stream, and a worker far slower than its publisher. Every input is
//! processed at least once, duplicates stay within what the lost worker
//! held, the consumer ends fully acknowledged, and a stalled worker holds
//! no more than its prefetch.

#![cfg(feature = "nats")]

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::{
    Client,
    jetstream::{self, consumer, context::PublishAckFuture, stream},
};
use futures::StreamExt;
use genflow::{
    Emitter, GenServer, Stage,
    ack::Held,
    nats::{Codec, Connect, Sink, Source, SourceHandle},
};
use serde::{Deserialize, Serialize};
use support::nats_server::NatsServer;
use tokio::{
    sync::{RwLock, Semaphore},
    task::JoinHandle,
};

/// How long a test waits for anything before it fails.
const DEADLINE: Duration = Duration::from_secs(45);

/// The test that measures this process's memory takes this lock alone
/// (the tests of a file run in one process); the others share it.
static MEMORY: RwLock<()> = RwLock::const_new(());

/// The keys records are spread over.
const KEYS: u32 = 16;

/// One input: a unique id, the key it is counted under, and a value.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    id: u64,
    key: u32,
    value: u64,
    /// Filler, to give a record a size.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pad: String,
}

impl Record {
    /// The record with id `id`: its key and value follow from the id.
    fn new(id: u64, pad: &str) -> Self {
        Record { id, key: (id % u64::from(KEYS)) as u32, value: id.wrapping_mul(7_919) % 1_000, pad: pad.to_string() }
    }
}

/// What the first stage makes of a record.
fn score(value: u64) -> u64 {
    value * 3 + 1
}

/// A record after both stages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Scored {
    id: u64,
    key: u32,
    score: u64,
}

/// Checks that every id of `0..items` was processed, by the `first` worker
/// or the `second`, and that an id processed twice was processed once by
/// each; returns those ids, printed, in order.
fn processed_twice(first: &[Scored], second: &[Scored], items: u64) -> Vec<u64> {
    let mut times: HashMap<u64, (u32, u32)> = HashMap::new();
    for scored in first {
        times.entry(scored.id).or_default().0 += 1;
    }
    for scored in second {
        times.entry(scored.id).or_default().1 += 1;
    }
    assert!((0..items).all(|id| times.contains_key(&id)), "every id processed");
    assert_eq!(times.len() as u64, items);
    let mut duplicates: Vec<u64> = times.iter().filter(|(_, (a, b))| a + b > 1).map(|(id, _)| *id).collect();
    duplicates.sort_unstable();
    eprintln!("{} ids processed twice: {duplicates:?}", duplicates.len());
    for id in &duplicates {
        assert_eq!(times[id], (1, 1), "id {id}");
    }
    duplicates
}

/// Turns a record into its score; waits for a permit of the registry's
/// gate first, if it has one: a worker as slow as the test wants.
struct Scoring {
    registry: Worker,
}

impl GenServer for Scoring {
    type Message = ();
    type Response = ();
    type Registry = Worker;

    fn new(registry: Worker) -> Self {
        Scoring { registry }
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Scoring {
    type In = Record;
    type Out = Scored;

    async fn process(&mut self, record: Record, out: &mut Emitter<Scored>) {
        if let Some(gate) = &self.registry.gate {
            // A slow worker waits on something for every record (so the
            // replica sends each output on as soon as it is made).
            tokio::task::yield_now().await;
            gate.acquire().await.expect("the gate is never closed").forget();
        }
        out.emit(Scored { id: record.id, key: record.key, score: score(record.value) }).await;
    }
}

/// Counts the records of each key it passes on; a call answers the counts.
struct Tally {
    counts: BTreeMap<u32, u64>,
}

impl GenServer for Tally {
    type Message = ();
    type Response = BTreeMap<u32, u64>;
    type Registry = Worker;

    fn new(_: Worker) -> Self {
        Tally { counts: BTreeMap::new() }
    }

    async fn handle_call(&mut self, _: ()) -> BTreeMap<u32, u64> {
        self.counts.clone()
    }
}

impl Stage for Tally {
    type In = Scored;
    type Out = Scored;

    async fn process(&mut self, scored: Scored, out: &mut Emitter<Scored>) {
        *self.counts.entry(scored.key).or_default() += 1;
        out.emit(scored).await;
    }
}

/// One worker process of the segment: score, then tally.
#[genflow::pipeline{ scoring: Scoring, tally: Tally }]
struct Worker {
    gate: Option<Arc<Semaphore>>,
}

/// Polls `check` every 10 ms until it returns `Some`, failing the test
/// with `what` after the deadline.
async fn until<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A connection and the streams named, each capturing its subject.
async fn broker(url: &str, streams: &[(&str, &str)]) -> (Client, jetstream::Context) {
    let client = Connect::new(url).connect().await.unwrap();
    let js = jetstream::new(client.clone());
    for (name, subject) in streams {
        let config =
            stream::Config { name: name.to_string(), subjects: vec![subject.to_string()], ..Default::default() };
        js.create_stream(config).await.unwrap();
    }
    (client, js)
}

/// How many messages `stream` stores.
async fn stored(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream).await.unwrap().info().await.unwrap().state.messages
}

/// Publishes the records `ids` to `subject`, each padded with `pad`, with
/// up to 512 publishes waiting for the stream's acknowledgement, and
/// returns once every one was stored.
async fn publish(js: &jetstream::Context, subject: &str, ids: std::ops::Range<u64>, pad: &str) {
    let mut acks: std::collections::VecDeque<PublishAckFuture> = std::collections::VecDeque::new();
    for id in ids {
        if acks.len() == 512 {
            acks.pop_front().unwrap().await.unwrap();
        }
        let payload = Codec::Json.encode(&Record::new(id, pad)).unwrap();
        acks.push_back(js.publish(subject.to_string(), payload).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

async fn consumer_info(js: &jetstream::Context, stream: &str, name: &str) -> consumer::Info {
    let mut consumer: consumer::PullConsumer = js.get_stream(stream).await.unwrap().get_consumer(name).await.unwrap();
    consumer.info().await.unwrap().clone()
}

/// Waits until the consumer has nothing pending and nothing unacked.
async fn until_all_answered(js: &jetstream::Context, stream: &str, name: &str) -> consumer::Info {
    until("every message answered", || async {
        let info = consumer_info(js, stream, name).await;
        (info.num_ack_pending == 0 && info.num_pending == 0).then_some(info)
    })
    .await
}

/// Reads a worker's output and records each item at once, but
/// acknowledges (releases) what it recorded only `commit` items at a time,
/// as a writer that commits in batches does. After `stall_after` items, if
/// set, it stops reading and committing, as a writer that hangs. Ends with
/// the output; aborting it (a crash) drops what was recorded and not
/// committed, so its messages are given back and processed again.
fn record(flow: &Worker, log: Arc<Mutex<Vec<Scored>>>, commit: usize, stall_after: Option<usize>) -> JoinHandle<()> {
    let mut output = flow.output().unwrap().acked();
    tokio::spawn(async move {
        let mut uncommitted = Vec::with_capacity(commit);
        let mut recorded = 0;
        while let Some((scored, held)) = output.next().await {
            log.lock().unwrap().push(scored);
            uncommitted.push(held);
            recorded += 1;
            if uncommitted.len() == commit {
                uncommitted.drain(..).for_each(Held::release);
            }
            if stall_after == Some(recorded) {
                std::future::pending::<()>().await;
            }
        }
    })
}

/// The single-process computation: the sum of scores of each key over
/// the records `0..n`.
fn expected_sums(n: u64) -> BTreeMap<u32, u64> {
    let mut sums = BTreeMap::new();
    for id in 0..n {
        let record = Record::new(id, "");
        *sums.entry(record.key).or_default() += score(record.value);
    }
    sums
}

/// A worker: its pipeline, output recorder and source on its own
/// connection.
struct Running {
    flow: Worker,
    recorder: JoinHandle<()>,
    log: Arc<Mutex<Vec<Scored>>>,
    source: SourceHandle,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_consumer_and_one_aborted_mid_stream_loses_nothing() {
    const ITEMS: u64 = 100_000;
    const PREFETCH: usize = 256;
    // The worker to abort records this many items, commits them 100 at a
    // time, then hangs: it has 50 recorded and not committed.
    const PROCESSED: u64 = 5_050;
    const COMMIT: usize = 100;
    const COMMITTED: u64 = PROCESSED - PROCESSED % COMMIT as u64;
    let _shared = MEMORY.read().await;
    let server = NatsServer::start();
    let (_, js) = broker(&server.url(), &[("IN", "in.>")]).await;
    publish(&js, "in.records", 0..ITEMS, "").await;

    let mut workers = Vec::new();
    for (commit, stall_after) in [(COMMIT, Some(PROCESSED as usize)), (1, None)] {
        let client = Connect::new(server.url()).connect().await.unwrap();
        let flow = Worker::start(None).await;
        let log = Arc::new(Mutex::new(Vec::new()));
        let recorder = record(&flow, log.clone(), commit, stall_after);
        // A short ack_wait: what a worker that dies pulled and did not
        // answer comes back within seconds (an aborted pipeline's items are
        // given back at once; progress acknowledgements keep a hung
        // worker's items from coming back while its source runs).
        let source = Source::new(client, "IN", "workers")
            .ack_wait(Duration::from_secs(3))
            .prefetch(PREFETCH)
            .start(flow.acked())
            .await
            .unwrap();
        workers.push(Running { flow, recorder, log, source });
    }
    let survivor = workers.pop().unwrap();
    let aborted = workers.pop().unwrap();

    // Abort the first worker once it has processed its thousands and holds
    // a full prefetch: its last items recorded but not committed, the
    // others in its pipeline or waiting to go in. Its writer crashes too.
    until("the first worker stalled with a full prefetch", || async {
        let stats = aborted.source.stats();
        let recorded = aborted.log.lock().unwrap().len() as u64;
        (recorded == PROCESSED && stats.acked == COMMITTED && stats.pulled == COMMITTED + PREFETCH as u64).then_some(())
    })
    .await;
    assert!(consumer_info(&js, "IN", "workers").await.num_pending > 0, "mid-stream");
    aborted.flow.abort();
    aborted.recorder.abort();
    assert!(aborted.recorder.await.unwrap_err().is_cancelled());
    let lost = tokio::time::timeout(DEADLINE, aborted.source.wait()).await.expect("the aborted source ends");
    eprintln!("aborted worker: {lost:?}");
    // What it committed was acked; everything else it held, given back.
    assert_eq!((lost.pulled, lost.acked, lost.naked), (COMMITTED + PREFETCH as u64, COMMITTED, PREFETCH as u64));
    assert_eq!((lost.dead_lettered, lost.errors), (0, 0), "{lost:?}");

    let info = until_all_answered(&js, "IN", "workers").await;
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
    let kept = survivor.source.stop().await;
    let tallies = survivor.flow.call_tally(()).await.unwrap();
    survivor.flow.shutdown().await;
    tokio::time::timeout(DEADLINE, survivor.recorder).await.expect("the output ends").unwrap();
    eprintln!("surviving worker: {kept:?}; consumer {info:?}");
    assert_eq!((kept.naked, kept.dead_lettered, kept.errors), (0, 0, 0), "{kept:?}");

    let first = std::mem::take(&mut *aborted.log.lock().unwrap());
    let second = std::mem::take(&mut *survivor.log.lock().unwrap());
    // The surviving worker acked what it recorded, and its tally counted
    // what it passed on.
    assert_eq!(kept.acked, second.len() as u64);
    let mut counted: BTreeMap<u32, u64> = BTreeMap::new();
    for scored in &second {
        *counted.entry(scored.key).or_default() += 1;
    }
    assert_eq!(tallies, counted);

    // Every id processed at least once; an id processed twice was
    // processed once by the aborted worker and once by the other.
    let duplicates = processed_twice(&first, &second, ITEMS);
    // The duplicates are exactly what the aborted worker recorded and did
    // not commit, within what it held (its prefetch: every message in its
    // pipeline holds a prefetch slot until its answer is confirmed).
    assert_eq!(duplicates.len() as u64, PROCESSED - COMMITTED);
    assert!(duplicates.len() <= PREFETCH);
    assert_eq!((first.len() + second.len()) as u64, ITEMS + duplicates.len() as u64);

    // Per-key sums, each id counted once, equal the single-process ones.
    let mut unique: HashMap<u64, &Scored> = HashMap::new();
    for scored in first.iter().chain(&second) {
        if let Some(before) = unique.insert(scored.id, scored) {
            assert_eq!(before, scored, "an id processed twice gives the same result");
        }
    }
    let mut sums: BTreeMap<u32, u64> = BTreeMap::new();
    for scored in unique.values() {
        *sums.entry(scored.key).or_default() += scored.score;
    }
    assert_eq!(sums, expected_sums(ITEMS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_started_again_mid_stream_loses_nothing() {
    const ITEMS: u64 = 20_000;
    let _shared = MEMORY.read().await;
    let mut server = NatsServer::start();
    let (client, js) = broker(&server.url(), &[("IN", "in.>"), ("OUT", "out.>")]).await;
    publish(&js, "in.records", 0..ITEMS, "").await;

    let flow = Worker::start(None).await;
    // Published downstream once per record, whatever the redeliveries.
    let sink = Sink::new(client.clone(), "out.scored").msg_id(|scored: &Scored| format!("scored-{}", scored.id));
    let writer = tokio::spawn(sink.run(flow.output().unwrap().acked()));
    // Nothing is given up on: a message whose answer or publish was lost
    // in the outage is delivered again until it is through.
    let source = Source::new(client.clone(), "IN", "workers")
        .ack_wait(Duration::from_secs(3))
        .max_deliver(0)
        .nak_delay(Duration::from_millis(200))
        .start(flow.acked())
        .await
        .unwrap();

    until("3 000 messages acked", || async { (source.stats().acked >= 3_000).then_some(()) }).await;
    server.kill();
    let at_kill = source.stats();
    // The source meets the outage (a pull or an answer fails) and waits.
    until("the source to see the broker gone", || async { (source.stats().errors > 0).then_some(()) }).await;
    let during = source.stats();
    server.restart();
    eprintln!("killed at {at_kill:?}; while down {during:?}");
    assert!(at_kill.acked < ITEMS, "mid-stream");

    let info = until_all_answered(&js, "IN", "workers").await;
    until("every record in OUT", || async { (stored(&js, "OUT").await >= ITEMS).then_some(()) }).await;
    let tallies = flow.call_tally(()).await.unwrap();
    let stats = tokio::time::timeout(DEADLINE, source.stop()).await.expect("the source stops");
    flow.shutdown().await;
    let written = tokio::time::timeout(DEADLINE, writer).await.expect("the sink ends").unwrap();
    eprintln!("after the restart: source {stats:?}, sink {written:?}, consumer {info:?}");

    // The source saw the outage, resumed, and answered everything; nothing
    // was given up on.
    assert!(stats.errors > 0 && stats.acked > at_kill.acked, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
    // Every record was processed at least once, and stored downstream
    // exactly once.
    let processed: u64 = tallies.values().sum();
    assert!(processed >= ITEMS, "{processed} processed");
    assert_eq!(stored(&js, "OUT").await, ITEMS);
    let out = js.get_stream("OUT").await.unwrap();
    let mut ids = Vec::with_capacity(ITEMS as usize);
    for sequence in 1..=ITEMS {
        let message = out.get_raw_message(sequence).await.unwrap();
        let scored: Scored = Codec::Json.decode(&message.payload).unwrap();
        assert_eq!(scored.score, score(Record::new(scored.id, "").value));
        ids.push(scored.id);
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..ITEMS).collect::<Vec<_>>());
    // What the sink stored, or found stored already, is every record.
    assert!(written.published + written.duplicates >= ITEMS, "{written:?}");
}

/// This process's resident memory, in bytes (`VmRSS`).
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// How many items are in the first stage: queued, or taken by its
/// replica and not yet processed.
fn in_scoring(flow: &Worker) -> (u64, u64) {
    let scoring = flow.metrics().stage("scoring").unwrap();
    (scoring.queued, scoring.received - scoring.processed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_stops_pulling_and_holds_no_more_than_its_prefetch() {
    const ITEMS: u64 = 50_000;
    const PREFETCH: usize = 64;
    const QUEUE: usize = 16;
    let _alone = MEMORY.write().await;
    let server = NatsServer::start();
    let (client, js) = broker(&server.url(), &[("IN", "in.>")]).await;

    // Every record waits for a permit: none yet.
    let gate = Arc::new(Semaphore::new(0));
    let flow = Worker::builder(Some(gate.clone()))
        .queue_size("scoring", QUEUE)
        .queue_size("tally", QUEUE)
        .start()
        .await
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let recorder = record(&flow, log.clone(), 1, None);
    let source = Source::new(client.clone(), "IN", "workers").prefetch(PREFETCH).start(flow.acked()).await.unwrap();
    let before = resident();

    // 50 000 records of 1 KB (50 MB) published while the worker is stalled.
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move { publish(&js, "in.records", 0..ITEMS, &"x".repeat(1_000)).await })
    };
    let (mut most_pulled, mut most_unacked, mut most_queued, mut most_inside) = (0, 0, 0, 0);
    while !publisher.is_finished() {
        let info = consumer_info(&js, "IN", "workers").await;
        let (queued, taken) = in_scoring(&flow);
        most_pulled = most_pulled.max(source.stats().pulled);
        most_unacked = most_unacked.max(info.num_ack_pending);
        most_queued = most_queued.max(queued);
        most_inside = most_inside.max(queued + taken);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publisher.await.unwrap();
    assert_eq!(stored(&js, "IN").await, ITEMS);
    eprintln!(
        "while publishing: pulled {most_pulled}, unacked {most_unacked}, queued {most_queued}, inside {most_inside}"
    );
    assert!(most_pulled <= PREFETCH as u64 && most_unacked <= PREFETCH, "the prefetch bounds what is pulled");
    assert!(most_queued <= QUEUE as u64 && most_inside <= PREFETCH as u64, "the queue bounds what waits in it");

    // Stalled: the prefetch pulled and held, the stage's queue full, the
    // rest left in the stream.
    let info = until("the prefetch pulled and the queue full", || async {
        let info = consumer_info(&js, "IN", "workers").await;
        (info.num_ack_pending == PREFETCH && in_scoring(&flow).0 == QUEUE as u64).then_some(info)
    })
    .await;
    assert_eq!(info.num_pending, ITEMS - PREFETCH as u64);
    let stats = source.stats();
    assert_eq!((stats.pulled, stats.acked, stats.naked), (PREFETCH as u64, 0, 0));
    let scoring = flow.metrics().stage("scoring").unwrap();
    assert_eq!((scoring.queued, scoring.capacity, scoring.processed), (QUEUE as u64, QUEUE as u64, 0));
    assert!(scoring.received >= 1 && QUEUE as u64 + scoring.received <= PREFETCH as u64, "{scoring:?}");
    // 50 MB went through the broker; the worker holds 64 KB of it.
    let grown = resident().saturating_sub(before);
    eprintln!("resident memory grew by {} KB", grown / 1024);
    assert!(grown < 8 << 20, "resident memory grew by {grown} bytes");

    // Slow progress: a hundred records at a time, never more than the
    // prefetch unanswered.
    for _ in 0..5 {
        let done = source.stats().acked;
        gate.add_permits(100);
        until("a hundred more acked", || async { (source.stats().acked >= done + 100).then_some(()) }).await;
        let info = consumer_info(&js, "IN", "workers").await;
        assert!(info.num_ack_pending <= PREFETCH, "{info:?}");
        assert!(source.stats().pulled - source.stats().acked <= PREFETCH as u64);
    }

    // Then at full speed to the end: each record processed once.
    gate.add_permits(ITEMS as usize);
    let info = until_all_answered(&js, "IN", "workers").await;
    assert_eq!(info.delivered.consumer_sequence, ITEMS);
    let stats = source.stop().await;
    assert_eq!((stats.pulled, stats.acked, stats.naked, stats.errors), (ITEMS, ITEMS, 0, 0));
    flow.shutdown().await;
    recorder.await.unwrap();
    let mut ids: Vec<u64> = log.lock().unwrap().iter().map(|scored| scored.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..ITEMS).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_process_dies_mid_stream_loses_nothing() {
    const ITEMS: u64 = 20_000;
    const PREFETCH: usize = 128;
    let _shared = MEMORY.read().await;
    let server = NatsServer::start();
    let (client, js) = broker(&server.url(), &[("IN", "in.>")]).await;
    publish(&js, "in.records", 0..ITEMS, "").await;
    // What a process that dies pulled and did not answer comes back once
    // this runs out.
    let source = |client| Source::new(client, "IN", "workers").ack_wait(Duration::from_secs(2)).prefetch(PREFETCH);

    // The worker that dies runs on a runtime of its own, with its own
    // connection: shutting the runtime down drops every task of it where
    // it stands (the connection, the source's answers) as a crash does.
    let process = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let first = Arc::new(Mutex::new(Vec::new()));
    {
        let (url, log) = (server.url(), first.clone());
        process.spawn(async move {
            let client = Connect::new(url).connect().await.unwrap();
            let flow = Worker::start(None).await;
            let _recorder = record(&flow, log, 1, None);
            let _source = source(client).start(flow.acked()).await.unwrap();
            std::future::pending::<()>().await;
        });
    }
    let flow = Worker::start(None).await;
    let second = Arc::new(Mutex::new(Vec::new()));
    let recorder = record(&flow, second.clone(), 1, None);
    let survivor = source(client.clone()).start(flow.acked()).await.unwrap();

    until("3 000 items through the worker that dies", || async {
        (first.lock().unwrap().len() >= 3_000).then_some(())
    })
    .await;
    tokio::task::spawn_blocking(move || process.shutdown_timeout(DEADLINE)).await.unwrap();
    assert!(consumer_info(&js, "IN", "workers").await.num_pending > 0, "mid-stream");

    let info = until_all_answered(&js, "IN", "workers").await;
    let kept = survivor.stop().await;
    flow.shutdown().await;
    recorder.await.unwrap();
    eprintln!("surviving worker: {kept:?}; consumer {info:?}");
    assert_eq!((kept.naked, kept.dead_lettered, kept.errors), (0, 0, 0), "{kept:?}");

    let first = std::mem::take(&mut *first.lock().unwrap());
    let second = std::mem::take(&mut *second.lock().unwrap());
    assert_eq!(kept.acked, second.len() as u64);
    let duplicates = processed_twice(&first, &second, ITEMS);
    // Delivered again: what the dead process held unanswered, at most its
    // prefetch; processed twice: those of them it had recorded.
    let again = info.delivered.consumer_sequence - ITEMS;
    assert!(again <= PREFETCH as u64, "{again} delivered again");
    assert!(duplicates.len() as u64 <= again, "{} duplicates, {again} delivered again", duplicates.len());
    assert_eq!((first.len() + second.len()) as u64, ITEMS + duplicates.len() as u64);
}
