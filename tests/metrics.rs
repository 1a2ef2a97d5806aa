//! Metrics read while a pipeline is stuck and after it ended: time blocked
//! and time busy count while they last, the last line of the table names
//! what limits the pipeline (a stage, the reader of the output or of the
//! failures, the input), and the clock stops once the pipeline has drained
//! or was aborted. Runs on paused time, so the times are exact: the clock
//! moves only where a test advances it.

use std::{error::Error, fmt, sync::Arc, time::Duration};

use futures::{StreamExt, stream};
use genflow::{Emitter, GenServer, Limit, Metrics, Stage, StageMetrics, pipeline::FAILURES_BUFFER};
use tokio::sync::Semaphore;

/// Yields to the other tasks until `pred` holds of a fresh snapshot; the
/// clock does not move meanwhile. Panics if it never holds.
async fn until(metrics: impl Fn() -> Metrics, pred: impl Fn(&Metrics) -> bool) -> Metrics {
    for _ in 0..1_000_000 {
        let m = metrics();
        if pred(&m) {
            return m;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached: {}", metrics());
}

fn stage(m: &Metrics, name: &str) -> StageMetrics {
    m.stage(name).expect("a stage of this pipeline")
}

#[genflow::stage]
fn pass(n: u64) -> u64 {
    n
}

#[derive(Debug)]
struct Rejected(u64);

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rejected {}", self.0)
    }
}

impl Error for Rejected {}

#[genflow::stage]
fn reject(n: u64) -> Result<u64, Rejected> {
    Err(Rejected(n))
}

#[genflow::pipeline{ a: Pass<Two>, b: Pass<Two> }]
struct Two;

#[genflow::pipeline{ a: Pass<Checks>, check: Reject<Checks> }]
struct Checks;

/// Waits for a permit from the pipeline's gate for every item.
struct Slow {
    gate: Arc<Semaphore>,
}

impl GenServer for Slow {
    type Message = ();
    type Response = ();
    type Registry = Gated;

    fn new(registry: Gated) -> Self {
        Slow { gate: registry.gate.clone() }
    }

    async fn handle_call(&mut self, _: ()) {}

    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Slow {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        self.gate.acquire().await.expect("never closed").forget();
        out.emit(n).await;
    }
}

#[genflow::pipeline{ slow: Slow, b: Pass<Gated> }]
struct Gated {
    gate: Arc<Semaphore>,
}

const OUTPUT: u64 = 1_000;
const STALL: Duration = Duration::from_secs(2);

#[tokio::test(start_paused = true)]
async fn a_stall_on_an_unread_output_shows_while_it_lasts_and_names_the_reader() {
    let flow = Two::start().await;
    let output = flow.output().expect("taken once");
    let feeder = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(0..20_000u64)).await }
    });
    // `b` holds more than the output takes, and `a` more than `b`'s queue:
    // both wait for room (counts are published before a wait starts).
    let before = until(
        || flow.metrics(),
        |m| {
            let (a, b) = (stage(m, "a"), stage(m, "b"));
            b.emitted > OUTPUT && a.emitted > b.received + b.capacity && a.queued == a.capacity
        },
    )
    .await;
    assert_eq!(before.elapsed(), Duration::ZERO);
    tokio::time::advance(STALL).await;
    let during = flow.metrics();
    for name in ["a", "b"] {
        let (then, now) = (stage(&before, name), stage(&during, name));
        assert_eq!(now.blocked, STALL, "{during}");
        assert_eq!(now.failures_blocked, Duration::ZERO, "{during}");
        assert_eq!(now.busy, Duration::ZERO, "{during}");
        assert_eq!(now.received, then.received, "{during}");
        assert_eq!(now.idle(during.elapsed()), 0.0, "{during}");
        assert_eq!(now.utilization(during.elapsed()), 0.0, "{during}");
    }
    assert_eq!(during.elapsed(), STALL);
    assert_eq!(during.bottleneck(), None, "{during}");
    assert_eq!(during.limit(), Limit::OutputReader("b"), "{during}");
    let table = during.to_string();
    assert!(
        table.ends_with(
            "bottleneck: none: b is blocked on a full output 100% of the time, the reader of `output()` is the \
             limit (elapsed 2.0s)"
        ),
        "{table}"
    );

    // The stall ends: the rows keep the time blocked, and the verdict too.
    let reader = tokio::spawn(output.count());
    assert_eq!(feeder.await.unwrap().unwrap(), 20_000);
    flow.shutdown().await;
    assert_eq!(reader.await.unwrap(), 20_000);
    let after = flow.metrics();
    for name in ["a", "b"] {
        let s = stage(&after, name);
        assert_eq!((s.received, s.emitted, s.blocked), (20_000, 20_000, STALL), "{after}");
    }
    assert_eq!(after.elapsed(), STALL);
    assert_eq!(after.limit(), Limit::OutputReader("b"), "{after}");
    // The clock stopped when the pipeline drained.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(flow.metrics(), after);
}

#[tokio::test(start_paused = true)]
async fn a_stall_on_unread_failures_shows_while_it_lasts_and_names_the_reader() {
    let flow = Checks::start().await;
    let failures = flow.failures().expect("taken once");
    let feeder = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(0..5_000u64)).await }
    });
    // `check` took an item past what the failures buffer holds (it fails
    // every item) and `a` more than `check`'s queue holds.
    let before = until(
        || flow.metrics(),
        |m| {
            let (a, check) = (stage(m, "a"), stage(m, "check"));
            check.received > FAILURES_BUFFER as u64 && a.emitted > check.received + check.capacity
        },
    )
    .await;
    assert_eq!(before.elapsed(), Duration::ZERO);
    tokio::time::advance(STALL).await;
    let during = flow.metrics();
    let (a, check) = (stage(&during, "a"), stage(&during, "check"));
    assert_eq!((a.blocked, a.failures_blocked), (STALL, Duration::ZERO), "{during}");
    assert_eq!((check.blocked, check.failures_blocked), (STALL, STALL), "{during}");
    assert_eq!(check.busy, Duration::ZERO, "{during}");
    assert_eq!(during.limit(), Limit::FailuresReader("check"), "{during}");
    let table = during.to_string();
    assert!(
        table.ends_with(
            "bottleneck: none: check is blocked on a full failures buffer 100% of the time, the reader of \
             `failures()` is the limit (elapsed 2.0s)"
        ),
        "{table}"
    );

    let reader = tokio::spawn(failures.count());
    assert_eq!(feeder.await.unwrap().unwrap(), 5_000);
    flow.shutdown().await;
    assert_eq!(reader.await.unwrap(), 5_000);
    let after = flow.metrics();
    let check = stage(&after, "check");
    assert_eq!((check.failed, check.blocked, check.failures_blocked), (5_000, STALL, STALL), "{after}");
    assert_eq!(after.limit(), Limit::FailuresReader("check"), "{after}");
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(flow.metrics(), after);
}

#[tokio::test(start_paused = true)]
async fn a_long_process_counts_as_busy_while_it_lasts() {
    let gate = Arc::new(Semaphore::new(0));
    let flow = Gated::start(gate.clone()).await;
    flow.send(7).await.unwrap();
    // The replica takes the item and goes into `process` in the same poll.
    let before = until(|| flow.metrics(), |m| stage(m, "slow").received == 1).await;
    assert_eq!(stage(&before, "slow").busy, Duration::ZERO);
    tokio::time::advance(Duration::from_secs(3)).await;
    let during = flow.metrics();
    let slow = stage(&during, "slow");
    assert_eq!((slow.processed, slow.busy), (0, Duration::from_secs(3)), "{during}");
    assert_eq!(slow.utilization(during.elapsed()), 1.0, "{during}");
    assert_eq!(during.bottleneck(), Some("slow"), "{during}");
    assert_eq!(during.limit(), Limit::Bottleneck("slow"), "{during}");
    assert!(during.to_string().ends_with("bottleneck: slow (elapsed 3.0s)"), "{during}");

    // When the item is done, the time is published once, not twice.
    gate.add_permits(1);
    let mut output = flow.output().expect("taken once");
    assert_eq!(output.next().await, Some(7));
    flow.shutdown().await;
    let after = flow.metrics();
    let slow = stage(&after, "slow");
    assert_eq!((slow.processed, slow.busy), (1, Duration::from_secs(3)), "{after}");
    assert_eq!(after.elapsed(), Duration::from_secs(3));
    assert_eq!(after.limit(), Limit::Bottleneck("slow"), "{after}");
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(flow.metrics(), after);
}

#[tokio::test(start_paused = true)]
async fn the_clock_stops_when_the_pipeline_is_aborted() {
    let gate = Arc::new(Semaphore::new(0));
    let flow = Gated::start(gate).await;
    flow.send(1).await.unwrap();
    until(|| flow.metrics(), |m| stage(m, "slow").received == 1).await;
    tokio::time::advance(Duration::from_secs(3)).await;
    flow.abort();
    flow.shutdown().await;
    let aborted = flow.metrics();
    let slow = stage(&aborted, "slow");
    // The time of the aborted item is counted, up to the abort.
    assert_eq!((slow.aborted, slow.busy), (1, Duration::from_secs(3)), "{aborted}");
    assert_eq!(aborted.elapsed(), Duration::from_secs(3));
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(flow.metrics(), aborted);
}

#[tokio::test(start_paused = true)]
async fn stages_waiting_for_input_name_the_input() {
    let flow = Two::start().await;
    assert_eq!(flow.metrics().limit(), Limit::NothingYet);
    let reader = tokio::spawn(flow.output().expect("taken once").count());
    for i in 0..10 {
        flow.send(i).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flow.shutdown().await;
    assert_eq!(reader.await.unwrap(), 10);
    let m = flow.metrics();
    assert_eq!(m.elapsed(), Duration::from_secs(1));
    assert_eq!(m.limit(), Limit::Input, "{m}");
    let table = m.to_string();
    assert!(
        table.ends_with(
            "bottleneck: none: no stage is busy more than half the time, the input is the limit: a waits for it \
             100% of the time (all stages: 100%) (elapsed 1.0s)"
        ),
        "{table}"
    );
}

#[genflow::pipeline{ a: Pass<Sorted>, #[replicas(2, ordered)] b: Pass<Sorted> }]
struct Sorted;

#[tokio::test(start_paused = true)]
async fn an_ordered_stage_stalled_on_its_output_shows_the_stall_while_it_lasts() {
    let flow = Sorted::start().await;
    let output = flow.output().expect("taken once");
    let feeder = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(0..20_000u64)).await }
    });
    until(
        || flow.metrics(),
        |m| {
            let (a, b) = (stage(m, "a"), stage(m, "b"));
            b.emitted > OUTPUT && a.emitted > b.received + b.capacity && a.queued == a.capacity
        },
    )
    .await;
    tokio::time::advance(STALL).await;
    let during = flow.metrics();
    let b = stage(&during, "b");
    // Each replica waits: for room in the output, or for its batch's turn.
    for replica in &b.replicas {
        assert_eq!((replica.blocked, replica.busy), (STALL, Duration::ZERO), "{during}");
    }
    assert_eq!(stage(&during, "a").blocked, STALL, "{during}");
    assert_eq!(during.limit(), Limit::OutputReader("b"), "{during}");

    let reader = tokio::spawn(output.collect::<Vec<u64>>());
    assert_eq!(feeder.await.unwrap().unwrap(), 20_000);
    flow.shutdown().await;
    assert_eq!(reader.await.unwrap(), (0..20_000).collect::<Vec<u64>>());
    let after = flow.metrics();
    let b = stage(&after, "b");
    for replica in &b.replicas {
        assert_eq!(replica.blocked, STALL, "{after}");
    }
    assert_eq!(after.elapsed(), STALL);
}

/// Takes 1 s to boot, 2 s per call and 3 s per item.
struct Timed;

impl GenServer for Timed {
    type Message = ();
    type Response = ();
    type Registry = Times;

    fn new(_: Times) -> Self {
        Timed
    }

    async fn init(&mut self) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    async fn handle_call(&mut self, _: ()) {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Timed {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        out.emit(n).await;
    }
}

#[genflow::pipeline{ timed: Timed }]
struct Times;

#[tokio::test(start_paused = true)]
async fn busy_is_the_time_at_work_on_items_not_booting_waiting_or_serving_calls() {
    let flow = Times::start().await;
    // Booted (1 s), then idle for 4 s, then a call (2 s).
    tokio::time::advance(Duration::from_secs(4)).await;
    flow.call_timed(()).await.unwrap();
    let idle = flow.metrics();
    assert_eq!((stage(&idle, "timed").busy, idle.elapsed()), (Duration::ZERO, Duration::from_secs(7)), "{idle}");
    // Two items in one batch (3 s each), and a call that arrives during
    // the first one, served between them (2 s).
    flow.send(1).await.unwrap();
    flow.send(2).await.unwrap();
    until(|| flow.metrics(), |m| stage(m, "timed").received == 2).await;
    let call = tokio::spawn({
        let flow = flow.clone();
        async move { flow.call_timed(()).await }
    });
    // The first item is done at 10 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = until(|| flow.metrics(), |m| stage(m, "timed").processed == 1).await;
    assert_eq!(during.elapsed(), Duration::from_secs(10), "{during}");
    assert_eq!(stage(&during, "timed").busy, Duration::from_secs(3), "{during}");
    call.await.unwrap().unwrap();
    flow.shutdown().await;
    let after = flow.metrics();
    let timed = stage(&after, "timed");
    assert_eq!((timed.processed, timed.dropped), (2, 2), "{after}");
    assert_eq!(
        (timed.busy, timed.blocked, after.elapsed()),
        (Duration::from_secs(6), Duration::ZERO, Duration::from_secs(15)),
        "{after}"
    );
}
