//! Demand: how many items a replica takes from its queue at a time. A
//! burst of slow items spreads over idle replicas instead of going to the
//! first one woken; `#[max_demand(N)]` and the builder's `max_demand` cap
//! what one replica takes. Runs on paused time, so durations are exact.

use std::time::Duration;

use futures::{StreamExt, stream};
use genflow::{ConfigError, Emitter, GenServer, Stage};
use tokio::time::Instant;

/// Takes 10 ms per item.
struct Slow;

const WORK: Duration = Duration::from_millis(10);

impl GenServer for Slow {
    type Message = ();
    type Response = ();
    type Registry = Burst;

    fn new(_: Burst) -> Self {
        Slow
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Slow {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        tokio::time::sleep(WORK).await;
        out.emit(n).await;
    }
}

#[genflow::pipeline{ #[replicas(16)] slow: Slow }]
struct Burst;

/// Feeds `items` at once into a fresh `Burst` of `replicas` replicas (and
/// demand `demand`, if set), drains it, and returns how long that took.
async fn burst(replicas: usize, demand: Option<usize>, items: u64) -> Duration {
    let mut builder = Burst::builder().replicas("slow", replicas);
    if let Some(demand) = demand {
        builder = builder.max_demand("slow", demand);
    }
    let flow = builder.start().await.unwrap();
    let output = flow.output().expect("taken once");
    let started = Instant::now();
    flow.feed(stream::iter(0..items)).await.unwrap();
    flow.shutdown().await;
    let took = started.elapsed();
    let mut out: Vec<u64> = output.collect().await;
    out.sort_unstable();
    assert_eq!(out, (0..items).collect::<Vec<_>>());
    took
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_slow_items_spreads_over_idle_replicas() {
    // 16 items of 10 ms over 16 idle replicas: one each, all at once.
    assert_eq!(burst(16, None, 16).await, WORK);
    // 64 items: 4 each.
    assert_eq!(burst(16, None, 64).await, 4 * WORK);
    // One replica takes them all, 32 at a time.
    assert_eq!(burst(1, None, 64).await, 64 * WORK);
}

/// Like `Slow`, in a pipeline declaring `#[max_demand(1)]`.
struct OneAtATime;

impl GenServer for OneAtATime {
    type Message = ();
    type Response = ();
    type Registry = Declared;

    fn new(_: Declared) -> Self {
        OneAtATime
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for OneAtATime {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        tokio::time::sleep(WORK).await;
        out.emit(n).await;
    }
}

const ONE: usize = 1;

#[genflow::pipeline{ #[max_demand(ONE)] one: OneAtATime }]
struct Declared;

/// What `received` reads once a replica went into `process` for its first
/// item: how many items it took with it.
async fn taken_at_first_item(received: impl Fn() -> u64) -> u64 {
    // The replica takes its batch and goes into `process` (a 10 ms sleep)
    // without the clock moving; let every task run.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    received()
}

#[tokio::test(start_paused = true)]
async fn max_demand_caps_what_one_replica_takes() {
    // By default one replica takes everything queued, up to 32.
    let flow = Burst::builder().replicas("slow", 1).start().await.unwrap();
    flow.feed(stream::iter(0..40)).await.unwrap();
    let taken = taken_at_first_item(|| flow.metrics().stage("slow").unwrap().received).await;
    assert_eq!(taken, genflow::pipeline::BATCH as u64);
    flow.abort();

    // Set at start: one at a time.
    let flow = Burst::builder().replicas("slow", 1).max_demand("slow", 1).start().await.unwrap();
    flow.feed(stream::iter(0..40)).await.unwrap();
    let taken = taken_at_first_item(|| flow.metrics().stage("slow").unwrap().received).await;
    assert_eq!(taken, 1);
    flow.abort();

    // Set at start, above the default: up to what is queued.
    let flow = Burst::builder().replicas("slow", 1).max_demand("slow", 100).start().await.unwrap();
    flow.feed(stream::iter(0..40)).await.unwrap();
    let taken = taken_at_first_item(|| flow.metrics().stage("slow").unwrap().received).await;
    assert_eq!(taken, 40);
    flow.abort();

    // Declared with a const; the builder overrides it.
    let flow = Declared::start().await;
    flow.feed(stream::iter(0..40)).await.unwrap();
    let taken = taken_at_first_item(|| flow.metrics().stage("one").unwrap().received).await;
    assert_eq!(taken, 1);
    flow.abort();
    let flow = Declared::builder().max_demand("one", 8).start().await.unwrap();
    flow.feed(stream::iter(0..40)).await.unwrap();
    let taken = taken_at_first_item(|| flow.metrics().stage("one").unwrap().received).await;
    assert_eq!(taken, 8);
    flow.abort();
}

#[tokio::test(start_paused = true)]
async fn one_at_a_time_each_item_goes_to_the_first_replica_free() {
    // 4 replicas, 8 items at once: two rounds of 10 ms either way.
    assert_eq!(burst(4, None, 8).await, 2 * WORK);
    assert_eq!(burst(4, Some(1), 8).await, 2 * WORK);
    // 5 items over 4 replicas: the fifth waits for the first replica free.
    assert_eq!(burst(4, Some(1), 5).await, 2 * WORK);
}

#[tokio::test]
async fn a_max_demand_of_0_or_an_unknown_stage_is_refused_before_anything_starts() {
    let error = Burst::builder().max_demand("slow", 0).start().await.err().expect("refused");
    assert_eq!(error, ConfigError::ZeroMaxDemand { stage: "slow" });
    assert_eq!(
        error.to_string(),
        "stage `slow` was given a max_demand of 0: a replica takes at least 1 item at a time"
    );
    let error = Burst::builder().max_demand("fast", 1).start().await.err().expect("refused");
    assert_eq!(error.to_string(), "unknown stage `fast`: the stages are `slow`");
}
