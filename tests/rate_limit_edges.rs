//! Rate limits at their edges: abort and calls while a replica waits for a
//! token, intervals of centuries and of microseconds, `ordered` and
//! `flush` under a limit, and metrics that name a limit stuck from the
//! start. Runs on paused time.
use std::time::Duration;

use futures::{StreamExt, stream};
use genflow::{Emitter, GenServer, Stage};
use tokio::time::Instant;

struct Call;
impl GenServer for Call {
    type Message = ();
    type Response = u64;
    type Registry = Hourly;
    fn new(_: Hourly) -> Self {
        Call
    }
    async fn handle_call(&mut self, _: ()) -> u64 {
        7
    }
}
impl Stage for Call {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        STARTED.with(|c| c.set(c.get() + 1));
        out.emit(n).await;
    }
}
thread_local! { static STARTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) }; }
fn started() -> u64 {
    STARTED.with(|c| c.get())
}

const HOUR: Duration = Duration::from_secs(3600);

#[genflow::pipeline{ #[rate_limit(1, per = HOUR)] call: Call }]
struct Hourly;

async fn until(pred: impl Fn() -> bool) {
    for _ in 0..100_000 {
        if pred() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

/// An item waiting for its token when the pipeline is aborted counts as
/// aborted.
#[tokio::test(start_paused = true)]
async fn abort_while_waiting_for_a_token_keeps_the_books() {
    let flow = Hourly::start().await;
    let reader = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    flow.feed(stream::iter(0..3)).await.unwrap();
    until(|| started() == 1).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_secs(1)).await; // item 1 now waits for its token
    flow.abort();
    flow.shutdown().await;
    let _ = reader.await;
    let m = flow.metrics();
    let c = m.stage("call").unwrap();
    assert_eq!(c.received, 3, "{m}");
    assert_eq!(c.received, c.processed + c.aborted, "received = processed + aborted\n{m}");
}

/// A call is served while the only replica waits (for an hour) for a token.
#[tokio::test(start_paused = true)]
async fn a_call_while_throttled_is_served() {
    let flow = Hourly::start().await;
    let _reader = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    flow.feed(stream::iter(0..2)).await.unwrap();
    until(|| started() == 1).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), flow.call_call(())).await;
    assert!(answer.is_ok(), "call not served within 10 s while throttled (would wait {:?})", HOUR);
    assert!(started.elapsed() < Duration::from_secs(10));
    flow.abort();
    flow.shutdown().await;
}

/// A `per` longer than 584 years (governor's nanosecond counter) starts
/// and limits.
#[tokio::test(start_paused = true)]
async fn a_very_long_interval_does_not_panic_at_start() {
    let joined = tokio::spawn(async {
        let flow = Hourly::builder().rate_limit("call", 1, Duration::from_secs(u64::MAX)).start().await;
        if let Ok(flow) = flow {
            flow.abort();
            flow.shutdown().await;
        }
    })
    .await;
    assert!(joined.is_ok(), "start panicked: {:?}", joined.err());
}

/// Same, n = 2 and per = 400 years.
#[tokio::test(start_paused = true)]
async fn a_long_interval_with_burst_does_not_panic() {
    let joined = tokio::spawn(async {
        let per = Duration::from_secs(400 * 365 * 24 * 3600);
        let flow = Hourly::builder().rate_limit("call", 2, per).start().await.unwrap();
        let _r = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
        flow.feed(stream::iter(0..2)).await.unwrap();
        flow.shutdown().await;
    })
    .await;
    assert!(joined.is_ok(), "panicked: {:?}", joined.err());
}

/// Documented bound: over any stretch T at most n + n*T/per items go through.
/// n = 3, per = 1 s: by T = 333_333_333 ns (< per/n) at most 3 + 0.999.. -> 3 items.
#[tokio::test(start_paused = true)]
async fn never_more_than_n_plus_n_t_over_per() {
    let flow = Hourly::builder().rate_limit("call", 3, Duration::from_secs(1)).start().await.unwrap();
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let out = flow.output().unwrap();
        let mut out = std::pin::pin!(out);
        let mut at = vec![];
        flow.feed(stream::iter(0..4)).await.unwrap();
        for _ in 0..4 {
            out.next().await;
            at.push(started.elapsed());
        }
        flow.shutdown().await;
        at
    });
    let at = reader.await.unwrap();
    // 4th item at T; bound says 4 <= 3 + 3*T/1s, i.e. T >= 1/3 s exactly.
    let t = at[3].as_nanos() as f64 / 1e9;
    assert!(4.0 <= 3.0 + 3.0 * t, "4th item at {:?}: above n + n*T/per", at[3]);
}

/// An `ordered` stage of three replicas under a rate limit, before a stage of two.
struct Echo;
impl GenServer for Echo {
    type Message = ();
    type Response = ();
    type Registry = Many;
    fn new(_: Many) -> Self {
        Echo
    }
    async fn handle_call(&mut self, _: ()) {}
}
impl Stage for Echo {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit(n).await;
    }
}
#[genflow::pipeline{ #[replicas(3, ordered)] #[max_demand(2)] #[rate_limit(5, per = Duration::from_secs(1))] a: Echo, #[replicas(2)] b: EchoB }]
struct Many;
struct EchoB;
impl GenServer for EchoB {
    type Message = ();
    type Response = ();
    type Registry = Many;
    fn new(_: Many) -> Self {
        EchoB
    }
    async fn handle_call(&mut self, _: ()) {}
}
impl Stage for EchoB {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit(n).await;
    }
}

#[tokio::test(start_paused = true)]
async fn ordered_rate_limited_drains_in_order() {
    let flow = Many::start().await;
    let reader = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let t0 = Instant::now();
    flow.feed(stream::iter(0..50)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(100), flow.shutdown()).await.expect("drained");
    let mut out = reader.await.unwrap();
    out.sort();
    assert_eq!(out, (0..50).collect::<Vec<_>>());
    // 5 at once then one every 200 ms: 45 * 200ms = 9 s
    assert_eq!(t0.elapsed(), Duration::from_secs(9));
    let m = flow.metrics();
    for r in &m.stage("a").unwrap().replicas {
        assert!(r.busy + r.blocked + r.throttled <= m.elapsed(), "{m}");
    }
}

/// A stage stuck on its rate limit from its first batch on: the metrics
/// name the rate limit.
#[tokio::test(start_paused = true)]
async fn stuck_on_the_rate_limit_in_the_first_batch_is_named() {
    let flow = Hourly::start().await;
    let _reader = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    flow.feed(stream::iter(0..3)).await.unwrap();
    until(|| started() == 1).await;
    tokio::time::sleep(Duration::from_secs(1800)).await;
    let m = flow.metrics();
    assert_eq!(m.limit(), genflow::Limit::RateLimit("call"), "{m}");
    flow.abort();
    flow.shutdown().await;
}

#[genflow::pipeline{ #[replicas(2)] #[rate_limit(10, per = Duration::from_millis(100))] call: Call2 }]
struct Tenth;
struct Call2;
impl GenServer for Call2 {
    type Message = ();
    type Response = ();
    type Registry = Tenth;
    fn new(_: Tenth) -> Self {
        Call2
    }
    async fn handle_call(&mut self, _: ()) {}
}
impl Stage for Call2 {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit(n).await;
    }
}

#[tokio::test(start_paused = true)]
async fn flush_with_a_rate_limit_returns_when_through() {
    let flow = Tenth::start().await;
    let _r = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let t0 = Instant::now();
    flow.feed(stream::iter(0..35)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), flow.flush()).await.expect("flushed").unwrap();
    assert_eq!(t0.elapsed(), Duration::from_millis(250));
    let m = flow.metrics();
    let c = m.stage("call").unwrap();
    assert_eq!(c.processed, 35, "{m}");
    assert!(c.busy + c.blocked + c.throttled <= m.elapsed() * 2, "{m}");
    flow.shutdown().await;
}

/// 1 item per 10 µs: 100 items take about 1 ms, not a timer tick each.
#[tokio::test(start_paused = true)]
async fn a_sub_millisecond_interval_is_not_rounded_to_milliseconds() {
    let flow = Hourly::builder().rate_limit("call", 1, Duration::from_micros(10)).start().await.unwrap();
    let r = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let t0 = Instant::now();
    flow.feed(stream::iter(0..100)).await.unwrap();
    flow.shutdown().await;
    assert_eq!(r.await.unwrap().len(), 100);
    assert!(t0.elapsed() <= Duration::from_millis(2), "took {:?}", t0.elapsed());
}
