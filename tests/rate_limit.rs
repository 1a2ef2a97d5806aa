//! `#[rate_limit(n, per = ..)]`: at most `n` items per interval through a
//! stage, over all its replicas; the wait shows as `throttled` in the
//! metrics and names the rate limit as the limit. Runs on paused time, so
//! durations are exact.

use std::time::Duration;

use futures::{StreamExt, stream};
use genflow::{ConfigError, Emitter, GenServer, Limit, Stage};
use tokio::time::Instant;

/// Calls a rate-limited service: instant here.
struct Call;

impl GenServer for Call {
    type Message = ();
    type Response = ();
    type Registry = Limited;

    fn new(_: Limited) -> Self {
        Call
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Call {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit(n).await;
    }
}

const PER: Duration = Duration::from_millis(100);

#[genflow::pipeline{ #[replicas(2)] #[rate_limit(10, per = PER)] call: Call }]
struct Limited;

/// Feeds `items` at once, drains, and returns how long that took and the
/// metrics after.
async fn run(flow: Limited, items: u64) -> (Duration, genflow::Metrics) {
    let output = flow.output().expect("taken once");
    let started = Instant::now();
    flow.feed(stream::iter(0..items)).await.unwrap();
    flow.shutdown().await;
    let took = started.elapsed();
    let mut out: Vec<u64> = output.collect().await;
    out.sort_unstable();
    assert_eq!(out, (0..items).collect::<Vec<_>>());
    (took, flow.metrics())
}

#[tokio::test(start_paused = true)]
async fn at_most_n_per_interval_over_all_replicas() {
    // 10 at once, then one every 10 ms: the 35th goes through at 250 ms.
    let (took, metrics) = run(Limited::start().await, 35).await;
    assert_eq!(took, Duration::from_millis(250));
    let call = metrics.stage("call").unwrap();
    // The replicas waited for tokens, not worked: the rate limit is the limit.
    assert_eq!(call.busy, Duration::ZERO, "{metrics}");
    assert!(call.throttled >= Duration::from_millis(250), "{metrics}");
    assert_eq!(metrics.limit(), Limit::RateLimit("call"), "{metrics}");
    let table = metrics.to_string();
    assert!(table.lines().next().unwrap().ends_with("throttled"), "{table}");
    assert!(
        table.contains("bottleneck: none: call waits for its rate limit ")
            && table.contains(" the rate limit is the limit"),
        "{table}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_builder_sets_the_limit_at_start() {
    // 5 per 100 ms: 5 at once, then one every 20 ms.
    let flow = Limited::builder().rate_limit("call", 5, PER).start().await.unwrap();
    let (took, _) = run(flow, 20).await;
    assert_eq!(took, Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn a_limit_never_reached_shows_no_throttled_column() {
    let flow = Limited::builder().rate_limit("call", u32::MAX, Duration::from_nanos(1)).start().await.unwrap();
    let (took, metrics) = run(flow, 100).await;
    assert_eq!(took, Duration::ZERO);
    assert!(!metrics.to_string().contains("throttled"), "{metrics}");
}

#[tokio::test]
async fn a_limit_of_nothing_is_refused_before_anything_starts() {
    for (n, per) in [(0, PER), (10, Duration::ZERO)] {
        let error = Limited::builder().rate_limit("call", n, per).start().await.err().expect("refused");
        assert_eq!(error, ConfigError::ZeroRateLimit { stage: "call", items: n, per });
        assert_eq!(
            error.to_string(),
            format!(
                "stage `call` was given a rate limit of {n} items per {per:?}: a rate limit lets at least 1 item \
                 through per interval longer than 0"
            )
        );
    }
    let error = Limited::builder().rate_limit("cal", 1, PER).start().await.err().expect("refused");
    assert_eq!(error.to_string(), "unknown stage `cal`: the stages are `call`");
}
