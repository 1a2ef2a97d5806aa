//! Failing items: `Emitter::fail`, panics in `process` and `finish`, and the
//! pipeline's `failures()` stream (counts, order, backpressure, shutdown,
//! abort).

use std::{collections::BTreeSet, error::Error, fmt, marker::PhantomData, sync::Arc, time::Duration};

use futures::{StreamExt, stream};
use genflow::{
    Emitter, Failure, Failures, GenServer, Stage,
    pipeline::{BATCH, FAILURES_BUFFER, Panicked},
};
use tokio::sync::{Notify, mpsc};

/// Runs `future` with a generous deadline, so that a hang fails the test.
async fn in_time<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future).await.expect("did not finish in time")
}

/// A parsed line: `id,amount`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    id: u64,
    amount: i64,
}

/// A line that does not parse; keeps the line.
#[derive(Debug, PartialEq, Eq)]
struct BadRecord {
    line: String,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad record: {:?}", self.line)
    }
}

impl Error for BadRecord {}

/// Parses `id,amount` lines; fails the others with a `BadRecord`, and
/// panics on a line that says `panic`.
struct Parse<R>(PhantomData<R>);
/// Passes records on.
struct Keep<R>(PhantomData<R>);
/// Emits its item, then fails it twice when it is a multiple of 5.
struct Twice<R>(PhantomData<R>);
/// Passes items on, yielding a few times first (more for smaller items),
/// so that replicas finish out of order; fails odd items.
struct Jumble<R>(PhantomData<R>);
/// Passes items on; `finish` fails once and then panics.
struct Closing<R>(PhantomData<R>);
/// Fails every item; item 1000 says so and waits forever.
struct Hang {
    reached: Arc<Notify>,
}

macro_rules! server {
    ($ty:ident) => {
        impl<R: Clone + Send + Sync + 'static> GenServer for $ty<R> {
            type Message = ();
            type Response = ();
            type Registry = R;
            fn new(_: R) -> Self {
                $ty(PhantomData)
            }
            async fn handle_call(&mut self, _: ()) {}
            async fn handle_cast(&mut self, _: ()) {}
            fn channel_queue_size() -> usize {
                64
            }
        }
    };
}
server!(Parse);
server!(Twice);
server!(Keep);
server!(Jumble);
server!(Closing);

fn parse(line: &str) -> Option<Record> {
    let (id, amount) = line.split_once(',')?;
    Some(Record { id: id.parse().ok()?, amount: amount.parse().ok()? })
}

impl<R: Clone + Send + Sync + 'static> Stage for Parse<R> {
    type In = String;
    type Out = Record;
    async fn process(&mut self, line: String, out: &mut Emitter<Record>) {
        if line == "panic" {
            panic!("poison line");
        }
        match parse(&line) {
            Some(record) => out.emit(record).await,
            None => out.fail(BadRecord { line }),
        }
    }
}

impl<R: Clone + Send + Sync + 'static> Stage for Keep<R> {
    type In = Record;
    type Out = Record;
    async fn process(&mut self, record: Record, out: &mut Emitter<Record>) {
        out.emit(record).await;
    }
}

impl<R: Clone + Send + Sync + 'static> Stage for Twice<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(x).await;
        if x % 5 == 0 {
            out.fail(format!("first error for {x}"));
            out.fail(format!("second error for {x}"));
        }
    }
}

impl<R: Clone + Send + Sync + 'static> Stage for Jumble<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        for _ in 0..(7 - x % 7) {
            tokio::task::yield_now().await;
        }
        if x % 2 == 1 {
            out.fail(format!("odd {x}"));
        } else {
            out.emit(x).await;
        }
    }
}

impl<R: Clone + Send + Sync + 'static> Stage for Closing<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(x).await;
    }
    async fn finish(&mut self, out: &mut Emitter<u64>) {
        out.emit(99).await;
        out.fail("could not flush");
        panic!("finish gave up");
    }
}

impl GenServer for Hang {
    type Message = ();
    type Response = ();
    type Registry = Hanging;
    fn new(flow: Hanging) -> Self {
        Hang { reached: flow.reached.clone() }
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Hang {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        if x == 1000 {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
        out.fail(format!("item {x}"));
    }
}

#[genflow::pipeline{
    #[replicas(3)]
    parse: Parse<Csv>,
    keep: Keep<Csv>,
}]
struct Csv;

/// Good lines `i,i` and bad lines `bad i` for every 7th `i`.
fn lines(n: u64) -> Vec<String> {
    (0..n).map(|i| if i % 7 == 3 { format!("bad {i}") } else { format!("{},{}", i * 5 + 1, i) }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_record_comes_out_with_its_stage_replica_and_record() {
    let flow = Csv::start().await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    let failures = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
    assert!(flow.failures().is_none(), "failures() is Some once");
    let lines = lines(300);
    flow.feed(stream::iter(lines.clone())).await.unwrap();
    in_time(flow.shutdown()).await;
    let output = output.await.unwrap();
    let failures = failures.await.unwrap();

    let bad: BTreeSet<String> = lines.iter().filter(|l| parse(l).is_none()).cloned().collect();
    assert_eq!(bad.len(), 43);
    let failed: BTreeSet<String> = failures
        .iter()
        .map(|f| {
            assert_eq!(f.stage(), "parse");
            assert!(f.replica() < 3, "{f}");
            assert!(!f.is_panic() && !f.in_finish(), "{f}");
            f.error().downcast_ref::<BadRecord>().expect("the error is the stage's type").line.clone()
        })
        .collect();
    assert_eq!(failed, bad);
    assert_eq!(failures.len(), bad.len(), "one failure per bad record");
    assert_eq!(output.len(), 300 - bad.len());

    let metrics = flow.metrics();
    let parse_m = metrics.stage("parse").unwrap();
    assert_eq!((parse_m.received, parse_m.processed, parse_m.failed), (300, 300, 43));
    assert_eq!(parse_m.emitted, 257);
    // Each replica's `failed` is the number of failures naming it.
    for (i, replica) in parse_m.replicas.iter().enumerate() {
        assert_eq!(replica.failed, failures.iter().filter(|f| f.replica() == i).count() as u64, "replica {i}");
    }
    assert_eq!(metrics.failures_dropped(), 0);

    // The error by value, and the text.
    let first = failures.into_iter().next().unwrap();
    let text = first.to_string();
    assert!(text.starts_with("stage `parse` (replica "), "{text}");
    assert!(text.contains("failed: bad record: \"bad "), "{text}");
    let error = first.into_error().downcast::<BadRecord>().unwrap();
    assert!(bad.contains(&error.line));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_process_is_a_failure_with_its_message() {
    let flow = Csv::start().await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    let failures = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
    let lines = ["1,1", "panic", "2,2", "nope", "panic", "3,3"].map(String::from);
    flow.feed(stream::iter(lines)).await.unwrap();
    in_time(flow.shutdown()).await;
    assert_eq!(output.await.unwrap().len(), 3);
    let failures = failures.await.unwrap();
    let panics: Vec<&Failure> = failures.iter().filter(|f| f.is_panic()).collect();
    assert_eq!(panics.len(), 2);
    for panic in panics {
        assert_eq!(panic.stage(), "parse");
        assert_eq!(panic.error().downcast_ref::<Panicked>().unwrap().message(), "poison line");
        assert!(panic.to_string().contains("panicked: poison line"), "{panic}");
    }
    let errors: Vec<&Failure> = failures.iter().filter(|f| !f.is_panic()).collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].error().downcast_ref::<BadRecord>().unwrap().line, "nope");
    let parse_m = flow.metrics().stage("parse").unwrap();
    assert_eq!((parse_m.received, parse_m.processed, parse_m.failed, parse_m.emitted), (6, 6, 3, 3));
}

#[genflow::pipeline{ twice: Twice<Doubles> }]
struct Doubles;

#[tokio::test]
async fn failing_twice_gives_two_failures_but_counts_the_item_once_and_keeps_its_outputs() {
    let flow = Doubles::start().await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    let failures = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
    flow.feed(stream::iter(0..100)).await.unwrap();
    in_time(flow.shutdown()).await;
    // Outputs emitted before `fail` stay emitted.
    assert_eq!(output.await.unwrap(), (0..100).collect::<Vec<_>>());
    let messages: Vec<String> = failures.await.unwrap().iter().map(|f| f.error().to_string()).collect();
    let expected: Vec<String> =
        (0..100).step_by(5).flat_map(|x| [format!("first error for {x}"), format!("second error for {x}")]).collect();
    assert_eq!(messages, expected, "every error is delivered, in order");
    let m = flow.metrics().stage("twice").unwrap();
    assert_eq!((m.received, m.processed, m.failed, m.emitted), (100, 100, 20, 100));
}

#[genflow::pipeline{
    #[replicas(4, ordered)]
    jumble: Jumble<Ordered>,
}]
struct Ordered;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_stage_keeps_the_exact_order_of_the_good_items() {
    let flow = Ordered::start().await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    let failures = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
    let n = 20 * BATCH as u64;
    flow.feed(stream::iter(0..n)).await.unwrap();
    in_time(flow.shutdown()).await;
    assert_eq!(output.await.unwrap(), (0..n).filter(|x| x % 2 == 0).collect::<Vec<_>>());
    let mut odd: Vec<String> = failures.await.unwrap().iter().map(|f| f.error().to_string()).collect();
    odd.sort_by_key(|s| s[4..].parse::<u64>().unwrap());
    assert_eq!(odd, (0..n).filter(|x| x % 2 == 1).map(|x| format!("odd {x}")).collect::<Vec<_>>());
    let m = flow.metrics().stage("jumble").unwrap();
    assert_eq!((m.received, m.processed, m.failed, m.emitted), (n, n, n / 2, n / 2));
}

#[genflow::pipeline{ #[replicas(2)] closing: Closing<Finishing> }]
struct Finishing;

#[tokio::test]
async fn failures_in_finish_are_tied_to_no_item() {
    let flow = Finishing::start().await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    let failures = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
    flow.feed(stream::iter(0..10)).await.unwrap();
    in_time(flow.shutdown()).await;
    let mut output = output.await.unwrap();
    output.sort();
    assert_eq!(output, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 99, 99], "what finish emitted before failing stays");
    let failures = failures.await.unwrap();
    assert_eq!(failures.len(), 4, "{failures:?}");
    assert!(failures.iter().all(Failure::in_finish));
    let replicas: BTreeSet<usize> = failures.iter().map(Failure::replica).collect();
    assert_eq!(replicas, BTreeSet::from([0, 1]));
    for replica in 0..2 {
        let mine: Vec<&Failure> = failures.iter().filter(|f| f.replica() == replica).collect();
        assert_eq!(mine.len(), 2);
        assert!(!mine[0].is_panic());
        assert_eq!(mine[0].error().to_string(), "could not flush");
        assert!(mine[1].is_panic());
        assert_eq!(mine[1].error().downcast_ref::<Panicked>().unwrap().message(), "finish gave up");
        assert!(mine[1].to_string().contains("panicked in finish: finish gave up"), "{}", mine[1]);
    }
    let m = flow.metrics().stage("closing").unwrap();
    assert_eq!((m.received, m.processed, m.failed), (10, 10, 0), "no item failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untaken_failures_are_counted_and_dropped_without_blocking() {
    let flow = Doubles::start().await;
    let n = 20 * FAILURES_BUFFER as u64;
    flow.feed(stream::iter(0..n)).await.unwrap();
    in_time(flow.shutdown()).await;
    let m = flow.metrics();
    let twice = m.stage("twice").unwrap();
    assert_eq!((twice.received, twice.failed), (n, n / 5));
    assert_eq!(twice.dropped, n, "the output was not taken either");
    assert_eq!(m.failures_dropped(), 2 * n / 5);
    // Taken after the end, the stream is empty and ends.
    let late: Vec<Failure> = in_time(flow.failures().unwrap().collect()).await;
    assert!(late.is_empty());
}

#[genflow::pipeline{ parse: Parse<Slow> }]
struct Slow;

#[tokio::test(start_paused = true)]
async fn a_slow_reader_holds_the_failing_stage_back_until_it_reads() {
    let flow = Slow::start().await;
    let mut failures: Failures = flow.failures().unwrap();
    let n = 3 * FAILURES_BUFFER;
    let feeder = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter((0..n).map(|i| format!("bad {i}")))).await }
    });
    // With time paused, this returns once every task is idle: the stage
    // waits for room in the failures buffer, and the feeder for room in the
    // stage's queue.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = flow.metrics().stage("parse").unwrap();
    assert!(!feeder.is_finished());
    assert!(held.failed <= FAILURES_BUFFER as u64, "{held:?}");
    assert!(held.failed + BATCH as u64 >= FAILURES_BUFFER as u64, "{held:?}");
    assert!(held.received < n as u64, "{held:?}");

    // Reading releases it: every failure arrives, in order.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(failure) = failures.next().await {
            tx.send(failure).unwrap();
        }
    });
    assert_eq!(feeder.await.unwrap().unwrap(), n);
    flow.shutdown().await;
    reader.await.unwrap();
    let mut lines = Vec::new();
    while let Ok(failure) = rx.try_recv() {
        lines.push(failure.into_error().downcast::<BadRecord>().unwrap().line);
    }
    assert_eq!(lines, (0..n).map(|i| format!("bad {i}")).collect::<Vec<_>>());
    let m = flow.metrics();
    let parse_m = m.stage("parse").unwrap();
    assert_eq!((parse_m.received, parse_m.failed), (n as u64, n as u64));
    assert!(parse_m.blocked >= Duration::from_secs(1), "the wait counts as blocked: {parse_m:?}");
    assert_eq!(m.failures_dropped(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_full_failures_stream_releases_the_stage_and_counts_what_it_held() {
    let flow = Slow::start().await;
    let failures = flow.failures().unwrap();
    let n = 3 * FAILURES_BUFFER;
    let feeder = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter((0..n).map(|i| format!("bad {i}")))).await }
    });
    // Time is paused: this returns once the stage waits for the reader.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!feeder.is_finished());
    drop(failures);
    assert_eq!(in_time(feeder).await.unwrap().unwrap(), n);
    in_time(flow.shutdown()).await;
    let m = flow.metrics();
    assert_eq!(m.stage("parse").unwrap().failed, n as u64);
    assert_eq!(m.failures_dropped(), n as u64, "none was read, every one is counted");
}

#[genflow::pipeline{ hang: Hang }]
struct Hanging {
    reached: Arc<Notify>,
}

#[tokio::test]
async fn the_failures_stream_ends_after_abort() {
    let reached = Arc::new(Notify::new());
    let flow = Hanging::start(reached.clone()).await;
    let mut failures = flow.failures().unwrap();
    flow.feed(stream::iter(0..=1000)).await.unwrap();
    for i in 0..1000 {
        let failure = in_time(failures.next()).await.unwrap();
        assert_eq!(failure.error().to_string(), format!("item {i}"));
    }
    in_time(reached.notified()).await;
    flow.abort();
    in_time(flow.shutdown()).await;
    assert!(in_time(failures.next()).await.is_none(), "the stream ends after abort");
    let m = flow.metrics().stage("hang").unwrap();
    assert_eq!((m.received, m.processed, m.aborted, m.failed), (1001, 1000, 1, 1000));
}

/// Its `init` always panics, so its replica stops for good.
struct Broken;

impl GenServer for Broken {
    type Message = ();
    type Response = ();
    type Registry = Stopped;
    fn new(_: Stopped) -> Self {
        Broken
    }
    async fn init(&mut self) {
        panic!("cannot start");
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
    fn restart_limit() -> genflow::RestartLimit {
        genflow::RestartLimit::NEVER
    }
}

impl Stage for Broken {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(x).await;
    }
}

#[genflow::pipeline{ broken: Broken }]
struct Stopped;

#[tokio::test]
async fn items_reaching_a_replica_stopped_for_good_fail_with_a_panic_failure() {
    let flow = Stopped::start().await;
    let failures = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    flow.feed(stream::iter(0..100)).await.unwrap();
    in_time(flow.shutdown()).await;
    assert!(output.await.unwrap().is_empty());
    let failures = failures.await.unwrap();
    assert_eq!(failures.len(), 100);
    for failure in &failures {
        assert!(failure.is_panic());
        let message = failure.error().downcast_ref::<Panicked>().unwrap().message();
        assert!(message.starts_with("the replica stopped for good"), "{message}");
    }
    let m = flow.metrics().stage("broken").unwrap();
    assert_eq!((m.received, m.processed, m.failed), (100, 100, 100));
}

#[test]
fn failures_are_send_unpin_static() {
    fn check<T: Send + Unpin + 'static>() {}
    check::<Failures>();
    check::<Failure>();
    fn stream<S: futures::Stream<Item = Failure>>() {}
    stream::<Failures>();
}
