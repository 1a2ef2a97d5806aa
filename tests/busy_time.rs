//! Busy time: a fused stage's work is not its host's, busy never goes
//! down between snapshots, boot is not busy, the clock stops at the end
//! (also with fused stages, and after an abort while throttled), and
//! busy + blocked + throttled never exceeds the elapsed time. Runs on
//! paused time.
use std::time::Duration;

use futures::{StreamExt, stream};
use genflow::{Emitter, GenServer, Metrics, Stage};
use tokio::time::Instant;

const SEC: Duration = Duration::from_secs(1);

macro_rules! stage {
    ($name:ident, $reg:ty, process = |$n:ident, $out:ident| $body:block, finish = |$fout:ident| $fbody:block) => {
        struct $name;
        impl GenServer for $name {
            type Message = ();
            type Response = ();
            type Registry = $reg;
            fn new(_: $reg) -> Self { $name }
            async fn handle_call(&mut self, _: ()) {}
        }
        impl Stage for $name {
            type In = u64;
            type Out = u64;
            async fn process(&mut self, $n: u64, $out: &mut Emitter<u64>) $body
            async fn finish(&mut self, $fout: &mut Emitter<u64>) $fbody
        }
    };
}

fn st(m: &Metrics, s: &str) -> genflow::StageMetrics {
    m.stage(s).unwrap()
}

// A fused stage's `finish` is its own work, not its host's.
stage!(
    PassA,
    FinishFlow,
    process = |n, out| {
        out.emit(n).await;
    },
    finish = |_o| {}
);
stage!(
    SlowFinish,
    FinishFlow,
    process = |n, out| {
        out.emit(n).await;
    },
    finish = |_o| {
        tokio::time::sleep(SEC).await;
    }
);
#[genflow::pipeline{ a: PassA, #[fused] b: SlowFinish }]
struct FinishFlow;

#[tokio::test(start_paused = true)]
async fn a_fused_stages_finish_is_not_the_hosts_busy_time() {
    let flow = FinishFlow::start().await;
    let r = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    flow.feed(stream::iter(0..3)).await.unwrap();
    flow.shutdown().await;
    r.await.unwrap();
    let m = flow.metrics();
    assert_eq!(st(&m, "a").busy, Duration::ZERO, "a does nothing in zero time; b's finish took 1 s\n{m}");
}

// The clock stops after the end, with a fused stage too.
#[tokio::test(start_paused = true)]
async fn elapsed_stops_after_shutdown_with_a_fused_stage() {
    let flow = FinishFlow::start().await;
    let r = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    flow.feed(stream::iter(0..3)).await.unwrap();
    flow.shutdown().await;
    r.await.unwrap();
    let m1 = flow.metrics();
    tokio::time::advance(10 * SEC).await;
    let m2 = flow.metrics();
    assert_eq!(m1.elapsed(), m2.elapsed(), "clock should stop at the end\n{m1}\n{m2}");
}

// Chained fused stages: b's busy leaves out c's work while it lasts.
stage!(
    PassC1,
    Chain,
    process = |n, out| {
        out.emit(n).await;
    },
    finish = |_o| {}
);
stage!(
    PassC2,
    Chain,
    process = |n, out| {
        out.emit(n).await;
    },
    finish = |_o| {}
);
stage!(
    SlowC,
    Chain,
    process = |n, out| {
        tokio::time::sleep(SEC).await;
        out.emit(n).await;
    },
    finish = |_o| {}
);
#[genflow::pipeline{ a: PassC1, #[fused] b: PassC2, #[fused] c: SlowC }]
struct Chain;

#[tokio::test(start_paused = true)]
async fn fused_busy_never_decreases_between_snapshots() {
    let flow = Chain::start().await;
    let r = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    flow.feed(stream::iter(0..1)).await.unwrap();
    tokio::time::sleep(SEC / 2).await; // c is in the middle of its 1 s
    let mid = flow.metrics();
    flow.shutdown().await;
    r.await.unwrap();
    let end = flow.metrics();
    for s in ["a", "b", "c"] {
        assert!(st(&mid, s).busy <= st(&end, s).busy, "{s}: busy went down\nmid:\n{mid}\nend:\n{end}");
    }
    assert_eq!(st(&end, "b").busy, Duration::ZERO, "{end}");
}

// Abort while a fused stage waits for a token: the books and the clock.
stage!(
    PassR,
    Rl,
    process = |n, out| {
        out.emit(n).await;
    },
    finish = |_o| {}
);
stage!(
    PassR2,
    Rl,
    process = |n, out| {
        out.emit(n).await;
    },
    finish = |_o| {}
);
#[genflow::pipeline{ a: PassR, #[fused] #[rate_limit(1, per = Duration::from_secs(3600))] b: PassR2 }]
struct Rl;

#[tokio::test(start_paused = true)]
async fn abort_while_a_fused_stage_is_throttled() {
    let flow = Rl::start().await;
    let r = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    flow.feed(stream::iter(0..3)).await.unwrap();
    tokio::time::advance(SEC).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    flow.abort();
    flow.shutdown().await;
    let _ = r.await;
    let m1 = flow.metrics();
    tokio::time::advance(3 * SEC).await;
    let m2 = flow.metrics();
    let (a, b) = (st(&m1, "a"), st(&m1, "b"));
    let books = (
        a.received == a.processed + a.aborted,
        b.received == b.processed + b.aborted,
        a.emitted == b.received + a.dropped,
    );
    assert_eq!(books, (true, true, true), "books\n{m1}\n{a:?}\n{b:?}");
    assert_eq!(st(&m1, "b").throttled, st(&m2, "b").throttled, "throttled grows after the end\n{m1}\n{m2}");
    assert_eq!(m1.elapsed(), m2.elapsed(), "{m1}\n{m2}");
}

// Booting again after a panic in `handle_cast` is not busy.
struct Crashy;
impl GenServer for Crashy {
    type Message = ();
    type Response = ();
    type Registry = Restart;
    fn new(_: Restart) -> Self {
        Crashy
    }
    async fn init(&mut self) {
        tokio::time::sleep(SEC).await;
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {
        panic!("cast")
    }
}
impl Stage for Crashy {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit(n).await;
    }
}
#[genflow::pipeline{ #[replicas(2)] c: Crashy }]
struct Restart;

#[tokio::test(start_paused = true)]
async fn boot_after_a_restart_is_not_busy() {
    let flow = Restart::start().await;
    let r = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    flow.cast_c(()).await.unwrap();
    tokio::time::sleep(SEC / 2).await;
    let mid = flow.metrics();
    flow.feed(stream::iter(0..10)).await.unwrap();
    tokio::time::sleep(3 * SEC).await;
    let later = flow.metrics();
    flow.shutdown().await;
    r.await.unwrap();
    let m = flow.metrics();
    for x in [&mid, &later, &m] {
        assert_eq!(st(x, "c").busy, Duration::ZERO, "{x}");
        for rep in &st(x, "c").replicas {
            assert!(rep.busy + rep.blocked + rep.throttled <= x.elapsed(), "{x}");
        }
    }
}

// A rate-limited host with a rate-limited fused stage: times add up and never go down.
stage!(
    HostT,
    Tp,
    process = |n, out| {
        out.emit(n).await;
    },
    finish = |_o| {}
);
stage!(
    FusedT,
    Tp,
    process = |n, out| {
        out.emit(n).await;
    },
    finish = |_o| {}
);
#[genflow::pipeline{ #[rate_limit(4, per = Duration::from_secs(1))] a: HostT, #[fused] #[rate_limit(2, per = Duration::from_secs(1))] b: FusedT }]
struct Tp;

#[tokio::test(start_paused = true)]
async fn busy_plus_waits_never_above_elapsed_and_monotone() {
    let flow = Tp::start().await;
    let out = flow.output().unwrap();
    let feeder = tokio::spawn(out.collect::<Vec<u64>>());
    flow.feed(stream::iter(0..40)).await.unwrap();
    let t0 = Instant::now();
    let mut prev: Option<Metrics> = None;
    while t0.elapsed() < 30 * SEC {
        tokio::time::sleep(Duration::from_millis(77)).await;
        let m = flow.metrics();
        for s in m.stages() {
            for r in &s.replicas {
                assert!(r.busy + r.blocked + r.throttled <= m.elapsed(), "{m}");
            }
        }
        if let Some(p) = &prev {
            for (a, b) in p.stages().iter().zip(m.stages()) {
                for (x, y) in a.replicas.iter().zip(&b.replicas) {
                    assert!(x.busy <= y.busy && x.throttled <= y.throttled && x.blocked <= y.blocked, "\n{p}\n{m}");
                }
            }
        }
        prev = Some(m);
    }
    flow.shutdown().await;
    assert_eq!(feeder.await.unwrap().len(), 40);
}

#[tokio::test(start_paused = true)]
async fn a_fused_stage_aborted_while_throttled_stops_its_clock() {
    let flow = Rl::start().await;
    let r = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    flow.feed(stream::iter(0..3)).await.unwrap();
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(SEC).await;
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    flow.abort();
    flow.shutdown().await;
    let _ = r.await;
    let m1 = flow.metrics();
    tokio::time::advance(3600 * SEC).await;
    let m2 = flow.metrics();
    assert_eq!((m1.elapsed(), st(&m1, "b").throttled), (m2.elapsed(), st(&m2, "b").throttled), "\n{m1}\n{m2}");
}

#[tokio::test(start_paused = true)]
async fn builder_rate_limit_on_a_fused_stage() {
    // override the declared 1/hour with 1000/s: 3 items instant
    let flow = Rl::builder().rate_limit("b", 1000, SEC).start().await.unwrap();
    let r = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let t0 = Instant::now();
    flow.feed(stream::iter(0..3)).await.unwrap();
    flow.shutdown().await;
    assert_eq!(r.await.unwrap().len(), 3);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    // set one on a fused stage that declared none: 1 per second -> 3 items in 2 s
    let flow = FinishFlow::builder().rate_limit("b", 1, SEC).start().await.unwrap();
    let r = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let t0 = Instant::now();
    flow.feed(stream::iter(0..3)).await.unwrap();
    flow.shutdown().await;
    assert_eq!(r.await.unwrap().len(), 3);
    assert_eq!(t0.elapsed(), 3 * SEC, "2 s of tokens + 1 s finish");
}
