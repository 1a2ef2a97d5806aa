//! A `#[fused]` stage keeps being served when its host stage cannot
//! process items: failed for good, waiting for a rate limit's token, or
//! going slowly through a batch. Paused time, with deadlines.
use std::{marker::PhantomData, time::Duration};

use futures::{SinkExt, stream};
use genflow::{Emitter, GenServer, RestartLimit, Stage};
use tokio::time::Instant;

#[path = "support/wait.rs"]
mod wait;
use wait::{DEADLINE, eventually_named as eventually};

/// Passes items on; a call answers how many it saw; `true` as a call panics.
pub struct S<R> {
    seen: u64,
    registry: PhantomData<R>,
}
impl<R: Clone + Send + Sync + 'static> GenServer for S<R> {
    type Message = bool;
    type Response = u64;
    type Registry = R;
    fn new(_: R) -> Self {
        S { seen: 0, registry: PhantomData }
    }
    async fn handle_call(&mut self, crash: bool) -> u64 {
        if crash {
            panic!("crash")
        }
        self.seen
    }
    async fn handle_cast(&mut self, _: bool) {}
    fn restart_limit() -> RestartLimit {
        RestartLimit::NEVER
    }
    fn channel_queue_size() -> usize {
        2
    }
}
impl<R: Clone + Send + Sync + 'static> Stage for S<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        out.emit(x).await;
    }
}

// The host stage fails for good (past its restart limit): the fused
// stage's calls, casts and own-queue items are still served.
#[genflow::pipeline{ a: S<Down>, #[fused] b: S<Down> }]
struct Down;

#[tokio::test(start_paused = true)]
async fn a_fused_stage_answers_calls_after_its_host_failed_for_good() {
    let flow = Down::start().await;
    let _out = flow.output().unwrap();
    assert!(flow.call_a(true).await.is_err()); // a: RestartLimit::NEVER -> failed for good
    let r = tokio::time::timeout(DEADLINE, flow.call_b(false)).await;
    assert!(r.is_ok(), "call_b never answered after `a` failed for good");
}

#[tokio::test(start_paused = true)]
async fn a_fused_stage_processes_its_own_items_after_its_host_failed_for_good() {
    let flow = Down::start().await;
    let _out = flow.output().unwrap();
    assert!(flow.call_a(true).await.is_err());
    flow.sink_b().send(5).await.unwrap();
    let r = tokio::time::timeout(DEADLINE, flow.flush()).await;
    assert!(r.is_ok(), "flush never returns: b's own item never processed ({})", flow.metrics());
}

// The host waits for a rate-limit token: the fused stage is served
// meanwhile, as an unfused one is.
const HOUR: Duration = Duration::from_secs(3600);
#[genflow::pipeline{ #[rate_limit(1, per = HOUR)] a: S<Slow>, #[fused] b: S<Slow> }]
struct Slow;

#[tokio::test(start_paused = true)]
async fn a_fused_stage_answers_calls_while_its_host_waits_for_a_token() {
    let flow = Slow::start().await;
    let _out = flow.output().unwrap();
    flow.send(1).await.unwrap(); // takes the hour's token
    flow.flush().await.unwrap();
    flow.send(2).await.unwrap(); // a waits up to an hour for the next token
    assert_eq!(flow.call_a(false).await.unwrap(), 1); // a itself answers
    let r = tokio::time::timeout(DEADLINE, flow.call_b(false)).await;
    assert!(r.is_ok(), "call_b not answered while `a` is throttled");
}

#[genflow::pipeline{ #[rate_limit(1, per = HOUR)] a: S<SlowUnfused>, b: S<SlowUnfused> }]
struct SlowUnfused;

#[tokio::test(start_paused = true)]
async fn an_unfused_stage_answers_calls_while_the_stage_before_waits_for_a_token() {
    let flow = SlowUnfused::start().await;
    let _out = flow.output().unwrap();
    flow.send(1).await.unwrap();
    flow.flush().await.unwrap();
    flow.send(2).await.unwrap();
    assert_eq!(tokio::time::timeout(DEADLINE, flow.call_b(false)).await.unwrap().unwrap(), 1);
}

// A host that awaits per item: a call to its fused stage is answered
// between the host's items, not at the end of its batch.
pub struct Nap<R>(u64, PhantomData<R>);
impl<R: Clone + Send + Sync + 'static> GenServer for Nap<R> {
    type Message = ();
    type Response = u64;
    type Registry = R;
    fn new(_: R) -> Self {
        Nap(0, PhantomData)
    }
    async fn handle_call(&mut self, (): ()) -> u64 {
        self.0
    }
    async fn handle_cast(&mut self, (): ()) {}
}
impl<R: Clone + Send + Sync + 'static> Stage for Nap<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.0 += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
        out.emit(x).await;
    }
}
pub struct Q<R>(u64, PhantomData<R>);
impl<R: Clone + Send + Sync + 'static> GenServer for Q<R> {
    type Message = ();
    type Response = u64;
    type Registry = R;
    fn new(_: R) -> Self {
        Q(0, PhantomData)
    }
    async fn handle_call(&mut self, (): ()) -> u64 {
        self.0
    }
    async fn handle_cast(&mut self, (): ()) {}
}
impl<R: Clone + Send + Sync + 'static> Stage for Q<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.0 += 1;
        out.emit(x).await;
    }
}

#[genflow::pipeline{ a: Nap<F>, #[fused] b: Q<F> }]
struct F;
#[genflow::pipeline{ a: Nap<U>, b: Q<U> }]
struct U;

#[tokio::test(start_paused = true)]
async fn a_call_to_a_fused_stage_is_answered_between_a_slow_hosts_items() {
    let flow = F::start().await;
    let out = flow.output().unwrap();
    let _r = tokio::spawn(futures::StreamExt::collect::<Vec<u64>>(out));
    flow.feed(stream::iter(0..200u64)).await.unwrap();
    // Paused time: moves the clock to the middle of the host's batch.
    tokio::time::sleep(Duration::from_millis(35)).await;
    let t = Instant::now();
    let seen = tokio::time::timeout(Duration::from_secs(60), flow.call_b(())).await.unwrap().unwrap();
    let fused = t.elapsed();
    let flow2 = U::start().await;
    let out2 = flow2.output().unwrap();
    let _r2 = tokio::spawn(futures::StreamExt::collect::<Vec<u64>>(out2));
    flow2.feed(stream::iter(0..200u64)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(35)).await;
    let t = Instant::now();
    let seen2 = flow2.call_b(()).await.unwrap();
    let unfused = t.elapsed();
    assert!(seen > 0 && seen2 > 0);
    assert!(
        fused <= Duration::from_millis(20),
        "fused call_b waited {fused:?} while items flowed (unfused {unfused:?})"
    );
}

/// Sleeps 200 ms on its third item.
pub struct Third<R>(u64, PhantomData<R>);
impl<R: Clone + Send + Sync + 'static> GenServer for Third<R> {
    type Message = ();
    type Response = ();
    type Registry = R;
    fn new(_: R) -> Self {
        Third(0, PhantomData)
    }
    async fn handle_call(&mut self, (): ()) {}
}
impl<R: Clone + Send + Sync + 'static> Stage for Third<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.0 += 1;
        if self.0 == 3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        out.emit(x).await;
    }
}

#[genflow::pipeline{ a: Q<Trickle>, #[fused] b: Third<Trickle>, #[fused] c: Q<Trickle> }]
struct Trickle;

// Items one at a time: a long `process` in a fused stage shows as its busy
// time while it lasts, after earlier hand-overs into and out of it.
#[tokio::test(start_paused = true)]
async fn a_long_process_in_a_fused_stage_shows_as_busy_while_it_lasts() {
    let flow = Trickle::start().await;
    let _out = tokio::spawn(futures::StreamExt::collect::<Vec<u64>>(flow.output().unwrap()));
    for x in 0..3 {
        flow.send(x).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(49)).await;
    let m = flow.metrics();
    assert_eq!(m.stage("b").unwrap().busy, Duration::from_millis(50), "{m}");
    assert_eq!(m.limit(), genflow::Limit::Bottleneck("b"), "{m}");
    tokio::time::timeout(DEADLINE, flow.shutdown()).await.unwrap();
}

/// Calls (or casts to) the stage fused after it from `process`, `per_item`
/// times per item, and keeps what came back.
pub struct Caller(HostCalls);
impl GenServer for Caller {
    type Message = ();
    type Response = ();
    type Registry = HostCalls;
    fn new(registry: HostCalls) -> Self {
        Caller(registry)
    }
    async fn handle_call(&mut self, (): ()) {}
}
impl Stage for Caller {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        for _ in 0..self.0.per_item {
            let answer = if self.0.cast {
                self.0.cast_b(false).await.map(|()| 0).map_err(|e| e.to_string())
            } else {
                self.0.call_b(false).await.map_err(|e| e.to_string())
            };
            self.0.answers.lock().unwrap().push(answer);
        }
        out.emit(x).await;
    }
}
#[genflow::pipeline{ a: Caller, #[fused] b: S<HostCalls> }]
pub struct HostCalls {
    cast: bool,
    per_item: usize,
    answers: std::sync::Arc<std::sync::Mutex<Vec<Result<u64, String>>>>,
}

// A stage calling the stage fused into it would wait on its own task: the
// call is refused as a cycle at once, and the group goes on.
#[tokio::test(start_paused = true)]
async fn a_call_from_a_host_to_its_fused_stage_is_refused_as_a_cycle() {
    let answers = std::sync::Arc::default();
    let flow = HostCalls::start(false, 1, std::sync::Arc::clone(&answers)).await;
    let _out = tokio::spawn(futures::StreamExt::collect::<Vec<u64>>(flow.output().unwrap()));
    flow.send(1).await.unwrap();
    tokio::time::timeout(DEADLINE, flow.flush()).await.expect("no deadlock").unwrap();
    assert_eq!(*answers.lock().unwrap(), [Err("call would deadlock: a -> b -> a".to_owned())]);
    // Calls from outside are answered as ever.
    assert_eq!(flow.call_b(false).await.unwrap(), 1);
    tokio::time::timeout(DEADLINE, flow.shutdown()).await.unwrap();
}

// A cast per item into the fused stage's queue (room for 2) is served
// between the host's items, so a batch of any size goes through.
#[tokio::test(start_paused = true)]
async fn casts_from_a_host_into_its_fused_stage_are_served_between_its_items() {
    let answers = std::sync::Arc::default();
    let flow = HostCalls::start(true, 1, std::sync::Arc::clone(&answers)).await;
    let _out = tokio::spawn(futures::StreamExt::collect::<Vec<u64>>(flow.output().unwrap()));
    flow.feed(stream::iter(0..200)).await.unwrap();
    tokio::time::timeout(DEADLINE, flow.flush()).await.expect("no deadlock").unwrap();
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers, vec![Ok(0); 200]);
    let b = flow.metrics().stage("b").unwrap();
    assert_eq!((b.received, b.processed), (200, 200));
    tokio::time::timeout(DEADLINE, flow.shutdown()).await.unwrap();
}

// Within one item, casts into the fused stage's queue are fine while it has
// room (2); the one that would wait for room is refused.
#[tokio::test(start_paused = true)]
async fn a_cast_from_a_host_into_its_fused_stages_full_queue_is_refused() {
    let answers = std::sync::Arc::default();
    let flow = HostCalls::start(true, 3, std::sync::Arc::clone(&answers)).await;
    let _out = tokio::spawn(futures::StreamExt::collect::<Vec<u64>>(flow.output().unwrap()));
    flow.send(1).await.unwrap();
    tokio::time::timeout(DEADLINE, flow.flush()).await.expect("no deadlock").unwrap();
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers.len(), 3);
    assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 2, "{answers:?}");
    assert!(answers.iter().any(|a| a.as_ref().is_err_and(|e| e.contains("a -> b -> a"))), "{answers:?}");
    tokio::time::timeout(DEADLINE, flow.shutdown()).await.unwrap();
}

/// Casts 1 to `c`, the last stage of its group, for each item, and passes
/// the item on.
pub struct CastOn(Chain3);
impl GenServer for CastOn {
    type Message = ();
    type Response = ();
    type Registry = Chain3;
    fn new(registry: Chain3) -> Self {
        CastOn(registry)
    }
    async fn handle_call(&mut self, (): ()) {}
}
impl Stage for CastOn {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.0.cast_c(1).await.unwrap();
        out.emit(x).await;
    }
}

/// Counts its items and the casts it got (its queue holds 2); a call
/// answers both.
pub struct Tally {
    seen: u64,
    casts: u64,
}
impl GenServer for Tally {
    type Message = u64;
    type Response = (u64, u64);
    type Registry = Chain3;
    fn new(_: Chain3) -> Self {
        Tally { seen: 0, casts: 0 }
    }
    async fn handle_call(&mut self, _: u64) -> (u64, u64) {
        (self.seen, self.casts)
    }
    async fn handle_cast(&mut self, n: u64) {
        self.casts += n;
    }
    fn channel_queue_size() -> usize {
        2
    }
}
impl Stage for Tally {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        out.emit(x).await;
    }
}

#[genflow::pipeline{ a: CastOn, #[fused] b: CastOn, #[fused] c: Tally }]
pub struct Chain3;

// The first and the second stage of a group each cast into the third's
// queue (room for 2) once per item, through hand-overs of many items: the
// third stage's mail is served between the items of whichever stage is
// at work, so no cast finds its queue full and every cast arrives.
#[tokio::test(start_paused = true)]
async fn casts_from_every_stage_of_a_group_into_its_last_are_served_between_items() {
    let flow = Chain3::start().await;
    let out = tokio::spawn(futures::StreamExt::collect::<Vec<u64>>(flow.output().unwrap()));
    flow.feed(stream::iter(0..1000)).await.unwrap();
    tokio::time::timeout(DEADLINE, flow.flush()).await.expect("no deadlock").unwrap();
    assert_eq!(flow.call_c(0).await.unwrap(), (1000, 2000));
    tokio::time::timeout(DEADLINE, flow.shutdown()).await.unwrap();
    assert_eq!(out.await.unwrap(), (0..1000).collect::<Vec<_>>());
    let m = flow.metrics();
    for stage in ["a", "b", "c"] {
        let s = m.stage(stage).unwrap();
        assert_eq!((s.received, s.processed, s.failed, s.emitted), (1000, 1000, 0, 1000), "{stage}: {m}");
    }
}

/// Waits for a permit before each item.
pub struct Held(std::sync::Arc<tokio::sync::Semaphore>);
impl GenServer for Held {
    type Message = ();
    type Response = ();
    type Registry = Handover;
    fn new(registry: Handover) -> Self {
        Held(registry.permits)
    }
    async fn handle_call(&mut self, (): ()) {}
    fn channel_queue_size() -> usize {
        1000
    }
}
impl Stage for Held {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.0.acquire().await.unwrap().forget();
        out.emit(x).await;
    }
}

#[genflow::pipeline{ a: Held, #[fused] b: S<Handover> }]
pub struct Handover {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Feeds 300 items to `a`, which holds its first item until `k`, the size
/// of its first batch, is known; lets that batch through, and returns `k`
/// and how many `a` has taken once it waits in its second batch.
/// The queue of `Handover`'s first stage in these tests: room for all
/// that `second_batch` feeds.
const QUEUE: usize = 4 * genflow::pipeline::HANDOVER;

async fn second_batch(flow: &Handover, permits: &tokio::sync::Semaphore) -> (u64, u64) {
    let _out = tokio::spawn(futures::StreamExt::collect::<Vec<u64>>(flow.output().unwrap()));
    // More than two hand-overs, all in a's queue (see `QUEUE`) while its
    // first batch waits.
    let items = 3 * genflow::pipeline::HANDOVER as u64;
    flow.feed(stream::iter(0..items)).await.unwrap();
    let received = || flow.metrics().stage("a").unwrap().received;
    eventually("the first batch", || received() > 0).await;
    let k = received();
    permits.add_permits(k as usize);
    eventually("the second batch", || received() > k && flow.metrics().stage("b").unwrap().received == k).await;
    let second = received();
    // It waits for a permit in the second batch's first item: no more is taken.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(received(), second);
    (k, second)
}

// A stage that a fused stage follows takes `HANDOVER` items at a time from
// its queue unless told otherwise, and what `max_demand` says if it is.
#[tokio::test]
async fn a_stage_a_fused_stage_follows_takes_a_hand_over_at_a_time() {
    use genflow::pipeline::HANDOVER;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let flow = Handover::builder(permits.clone()).queue_size("a", QUEUE).start().await.unwrap();
    let (k, second) = second_batch(&flow, &permits).await;
    assert!((1..=HANDOVER as u64).contains(&k), "{k}");
    assert_eq!(second - k, HANDOVER as u64);
    flow.abort();

    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let flow = Handover::builder(permits.clone()).queue_size("a", QUEUE).max_demand("a", 10).start().await.unwrap();
    let (k, second) = second_batch(&flow, &permits).await;
    assert!((1..=10).contains(&k), "{k}");
    assert_eq!(second - k, 10);
    flow.abort();
}
