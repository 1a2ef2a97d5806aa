//! Pressure on the paths that keep idle servers and replicas small: keyed
//! (`partition_by`) sends waiting for room, with key functions that panic,
//! under abort and shutdown; the `blocked` and `failures_blocked` times;
//! servers' and stages' queues of one or two with many senders in line,
//! some of them giving up; `flush` over 64 replicas; and a `process` that
//! awaits, whose outputs must go on at once.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, stream};
use genflow::{Emitter, GenServer, Metrics, SendError, Stage};
use tokio::sync::{Notify, Semaphore};

#[path = "support/quiet.rs"]
mod quiet;
#[path = "support/wait.rs"]
mod wait;
use wait::{eventually_named as eventually, within_named as within};

/// Keeps the expected key panics out of stderr; other panics print.
fn quiet_key_panics() {
    quiet::quiet_panics("expected key panic");
}

/// A keyed item: (key, sequence number).
type Item = (u32, u32);

/// Panics for the items whose sequence number is 3 modulo 17.
fn key_or_panic(item: &Item) -> u32 {
    if item.1 % 17 == 3 {
        panic!("expected key panic");
    }
    item.0
}

fn panics(seq: u32) -> bool {
    seq % 17 == 3
}

fn key(item: &Item) -> u32 {
    item.0
}

/// Declares a stateless GenServer for a stage of registry `R`.
macro_rules! server {
    ($ty:ident, $queue:expr) => {
        impl<R: Clone + Send + Sync + 'static> GenServer for $ty<R> {
            type Message = ();
            type Response = ();
            type Registry = R;
            fn new(_: R) -> Self {
                $ty(std::marker::PhantomData)
            }
            async fn handle_call(&mut self, _: ()) {}
            async fn handle_cast(&mut self, _: ()) {}
            fn channel_queue_size() -> usize {
                $queue
            }
        }
    };
}

/// Passes items on; yields in every fifth `process`.
struct Pass<R>(std::marker::PhantomData<R>);
server!(Pass, 2);
impl<R: Clone + Send + Sync + 'static> Stage for Pass<R> {
    type In = Item;
    type Out = Item;
    async fn process(&mut self, item: Item, out: &mut Emitter<Item>) {
        if item.1 % 5 == 0 {
            tokio::task::yield_now().await;
        }
        out.emit(item).await;
    }
}

/// Passes items on after a yield; queue of one.
struct Slow<R>(std::marker::PhantomData<R>);
server!(Slow, 1);
impl<R: Clone + Send + Sync + 'static> Stage for Slow<R> {
    type In = Item;
    type Out = Item;
    async fn process(&mut self, item: Item, out: &mut Emitter<Item>) {
        tokio::task::yield_now().await;
        out.emit(item).await;
    }
}

/// Sleeps 10 ms (of paused time) per item.
struct Sleepy<R>(std::marker::PhantomData<R>);
server!(Sleepy, 1);
impl<R: Clone + Send + Sync + 'static> Stage for Sleepy<R> {
    type In = Item;
    type Out = Item;
    async fn process(&mut self, item: Item, out: &mut Emitter<Item>) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        out.emit(item).await;
    }
}

/// Fails every item.
struct FailAll<R>(std::marker::PhantomData<R>);
server!(FailAll, 4);
impl<R: Clone + Send + Sync + 'static> Stage for FailAll<R> {
    type In = Item;
    type Out = Item;
    async fn process(&mut self, item: Item, out: &mut Emitter<Item>) {
        out.fail(format!("bad {item:?}"));
    }
}

#[genflow::pipeline{ pass: Pass<K1>, #[replicas(4, partition_by = key_or_panic)] store: Slow<K1> }]
struct K1;

#[genflow::pipeline{ pass: Pass<K2>, #[replicas(3, partition_by = key_or_panic)] store: Slow<K2>, tail: Slow<K2> }]
struct K2;

#[genflow::pipeline{ src: Pass<B1>, #[replicas(2, partition_by = key)] slow: Sleepy<B1> }]
struct B1;

#[genflow::pipeline{ src: Pass<B2>, slow: Sleepy<B2> }]
struct B2;

#[genflow::pipeline{ fail: FailAll<F1> }]
struct F1;

fn always_panics(_: &Item) -> u32 {
    panic!("expected key panic")
}

#[genflow::pipeline{ src: Pass<F2>, #[replicas(2, partition_by = always_panics)] store: Slow<F2> }]
struct F2;

fn items(n: u32, keys: u32) -> Vec<Item> {
    (0..n).map(|seq| (seq % keys, seq)).collect()
}

/// Checks that each key's items came in sequence order.
fn per_key_in_order(out: &[Item]) {
    let mut last: HashMap<u32, u32> = HashMap::new();
    for &(k, seq) in out {
        if let Some(before) = last.insert(k, seq) {
            assert!(before < seq, "key {k}: {seq} after {before}");
        }
    }
}

/// After the pipeline ended: every stage's books balance, and between two
/// stages what one emitted the next received or was dropped.
fn books_balance(m: &Metrics, stages: &[&str]) {
    for name in stages {
        let s = m.stage(name).unwrap();
        assert_eq!(s.received, s.processed + s.aborted, "{name}: {s:?}");
        assert_eq!(s.queued, 0, "{name}");
        assert!(s.failed <= s.processed, "{name}");
    }
    for pair in stages.windows(2) {
        let (a, b) = (m.stage(pair[0]).unwrap(), m.stage(pair[1]).unwrap());
        assert_eq!(a.emitted, b.received + a.dropped, "{} -> {}", pair[0], pair[1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_sends_under_backpressure_fail_only_panicking_keys_and_keep_key_order() {
    quiet_key_panics();
    let flow = K1::start().await;
    let mut output = flow.output().unwrap();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(item) = output.next().await {
            // A slow reader: the keyed sends wait for room.
            if seen.len() % 3 == 0 {
                tokio::task::yield_now().await;
            }
            seen.push(item);
        }
        seen
    });
    let failures = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
    let input = items(3_000, 11);
    let sent = within("feed", flow.feed(stream::iter(input.clone()))).await.unwrap();
    assert_eq!(sent, 3_000);
    within("shutdown", flow.shutdown()).await;
    let seen = within("reader", reader).await.unwrap();
    let failures = within("failures", failures).await.unwrap();

    let expected: Vec<Item> = input.iter().copied().filter(|i| !panics(i.1)).collect();
    let mut sorted = seen.clone();
    sorted.sort_by_key(|i| i.1);
    assert_eq!(sorted, expected, "every item whose key did not panic arrives once");
    per_key_in_order(&seen);
    let panicked = input.len() - expected.len();
    assert_eq!(failures.len(), panicked);
    assert!(failures.iter().all(|f| f.is_panic() && f.stage() == "store"));

    let m = flow.metrics();
    books_balance(&m, &["pass", "store"]);
    let store = m.stage("store").unwrap();
    assert_eq!(store.failed, panicked as u64);
    assert_eq!(store.received, 3_000);
    assert_eq!(store.emitted, expected.len() as u64);
    assert_eq!(m.failures_dropped(), 0);
}

/// Sends `n` items one by one from a task, counting those accepted.
fn sender<P>(flow: P, n: u32, accepted: Arc<AtomicU64>) -> tokio::task::JoinHandle<()>
where
    P: Send + 'static + Sender,
{
    tokio::spawn(async move {
        for item in items(n, 7) {
            if flow.send_item(item).await.is_err() {
                break;
            }
            accepted.fetch_add(1, Ordering::SeqCst);
        }
    })
}

trait Sender {
    fn send_item(&self, item: Item) -> impl Future<Output = Result<(), SendError<Item>>> + Send;
}
impl Sender for K2 {
    fn send_item(&self, item: Item) -> impl Future<Output = Result<(), SendError<Item>>> + Send {
        self.send(item)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_while_keyed_sends_wait_for_room_accounts_for_every_item() {
    quiet_key_panics();
    for round in 0..5 {
        let flow = K2::start().await;
        // Taken and never read: every queue fills up.
        let _output = flow.output().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let task = sender(flow.clone(), 2_000, accepted.clone());
        eventually("the keyed sends to wait", || {
            let m = flow.metrics();
            m.stage("pass").unwrap().blocked > Duration::ZERO && m.stage("tail").unwrap().blocked > Duration::ZERO
        })
        .await;
        flow.abort();
        within("shutdown after abort", flow.shutdown()).await;
        within("the sender", task).await.unwrap();
        let m = flow.metrics();
        books_balance(&m, &["pass", "store", "tail"]);
        assert_eq!(m.stage("pass").unwrap().received, accepted.load(Ordering::SeqCst), "round {round}");
        let store = m.stage("store").unwrap();
        assert!(store.aborted + store.processed > 0, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_keyed_sends_wait_for_room_delivers_everything() {
    quiet_key_panics();
    for round in 0..3 {
        let flow = K2::start().await;
        let mut output = flow.output().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let task = sender(flow.clone(), 600, accepted.clone());
        eventually("the keyed sends to wait", || flow.metrics().stage("tail").unwrap().blocked > Duration::ZERO).await;
        let shutdown = tokio::spawn({
            let flow = flow.clone();
            async move { flow.shutdown().await }
        });
        let mut seen = Vec::new();
        within("the output", async {
            while let Some(item) = output.next().await {
                seen.push(item);
            }
        })
        .await;
        within("shutdown", shutdown).await.unwrap();
        within("the sender", task).await.unwrap();
        let accepted = accepted.load(Ordering::SeqCst) as u32;
        let expected: Vec<Item> = items(accepted, 7).into_iter().filter(|i| !panics(i.1)).collect();
        let mut sorted = seen.clone();
        sorted.sort_by_key(|i| i.1);
        assert_eq!(sorted, expected, "round {round}: every accepted item whose key did not panic");
        per_key_in_order(&seen);
        let m = flow.metrics();
        books_balance(&m, &["pass", "store", "tail"]);
        assert_eq!(m.stage("store").unwrap().failed, u64::from(accepted) - expected.len() as u64);
        assert!(m.stages().iter().all(|s| s.aborted == 0 && s.dropped == 0));
    }
}

/// The first stage's `blocked` never goes down, never exceeds the time
/// elapsed, and is most of it: it waits for a stage ten times slower.
fn check_blocked(end: &Metrics, samples: &[Metrics]) {
    let mut last = Duration::ZERO;
    for m in samples.iter().chain([end]) {
        let src = m.stage("src").unwrap();
        assert!(src.blocked >= last, "blocked went down: {:?} after {:?}", src.blocked, last);
        assert!(src.blocked <= m.elapsed(), "blocked {:?} > elapsed {:?}", src.blocked, m.elapsed());
        assert!(src.blocked + src.busy <= m.elapsed() + Duration::from_millis(1), "{src:?} in {:?}", m.elapsed());
        assert_eq!(src.failures_blocked, Duration::ZERO);
        last = src.blocked;
    }
    let src = end.stage("src").unwrap();
    let slow = end.stage("slow").unwrap();
    assert_eq!(slow.received, 100);
    assert_eq!(slow.processed, 100);
    // Items take 10 ms each behind a queue of one: the source waits most
    // of the time.
    assert!(src.blocked * 2 >= end.elapsed(), "{:?} of {:?}", src.blocked, end.elapsed());
}

#[tokio::test(start_paused = true)]
async fn blocked_time_behind_a_slow_keyed_stage_grows_without_double_counting() {
    let flow = B1::start().await;
    let feed = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(items(100, 2))).await.unwrap() }
    });
    let mut samples = Vec::new();
    while !feed.is_finished() {
        tokio::time::sleep(Duration::from_millis(3)).await;
        samples.push(flow.metrics());
    }
    within("flush", flow.flush()).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    let end = flow.metrics();
    assert!(samples.len() > 10);
    check_blocked(&end, &samples);
    // 100 items of 10 ms over one or two replicas (as the keys hash).
    assert!(end.elapsed() <= Duration::from_millis(1_010), "{:?}", end.elapsed());
}

#[tokio::test(start_paused = true)]
async fn blocked_time_behind_a_slow_plain_stage_grows_without_double_counting() {
    let flow = B2::start().await;
    let feed = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(items(100, 2))).await.unwrap() }
    });
    let mut samples = Vec::new();
    while !feed.is_finished() {
        tokio::time::sleep(Duration::from_millis(3)).await;
        samples.push(flow.metrics());
    }
    within("shutdown", flow.shutdown()).await;
    check_blocked(&flow.metrics(), &samples);
}

#[tokio::test(start_paused = true)]
async fn failures_blocked_while_the_failures_reader_waits_is_part_of_blocked() {
    let flow = F1::start().await;
    let mut failures = flow.failures().unwrap();
    let n = genflow::pipeline::FAILURES_BUFFER as u32 + 200;
    let feed = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(items(n, 3))).await.unwrap() }
    });
    eventually("failures_blocked", || {
        flow.metrics().stage("fail").unwrap().failures_blocked > Duration::from_millis(50)
    })
    .await;
    let mut last = (Duration::ZERO, Duration::ZERO);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let m = flow.metrics();
        let fail = m.stage("fail").unwrap();
        assert!(fail.failures_blocked <= fail.blocked, "{fail:?}");
        assert!(fail.blocked <= m.elapsed(), "{fail:?} in {:?}", m.elapsed());
        assert!(fail.failures_blocked >= last.0 && fail.blocked >= last.1, "went down: {fail:?} after {last:?}");
        last = (fail.failures_blocked, fail.blocked);
    }
    let mut got = 0;
    while got < n {
        within("a failure", failures.next()).await.expect("a failure");
        got += 1;
    }
    within("feed", feed).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    assert!(failures.next().await.is_none());
    let m = flow.metrics();
    let fail = m.stage("fail").unwrap();
    assert_eq!((fail.received, fail.processed, fail.failed), (u64::from(n), u64::from(n), u64::from(n)));
    assert!(fail.failures_blocked <= fail.blocked);
    assert!(fail.blocked <= m.elapsed());
    assert!(fail.failures_blocked >= last.0);
    assert_eq!(m.failures_dropped(), 0);
}

/// Starts `F2`, whose keys all panic, and feeds it until the unread
/// failures buffer is full and its source waits for room there: the
/// pipeline, its failures, the number of items fed and the feeding task.
async fn failures_buffer_full_of_key_panics() -> (F2, genflow::Failures, u32, tokio::task::JoinHandle<usize>) {
    quiet_key_panics();
    let flow = F2::start().await;
    let failures = flow.failures().unwrap();
    let n = genflow::pipeline::FAILURES_BUFFER as u32 + 100;
    let feed = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(items(n, 3))).await.unwrap() }
    });
    eventually("the failures buffer to fill", || {
        flow.metrics().stage("store").unwrap().failed > genflow::pipeline::FAILURES_BUFFER as u64
    })
    .await;
    (flow, failures, n, feed)
}

#[tokio::test(start_paused = true)]
async fn key_panics_behind_a_full_failures_buffer_are_all_failed_and_counted() {
    let (flow, mut failures, n, feed) = failures_buffer_full_of_key_panics().await;
    let mut got = 0;
    while got < n {
        let failure = within("a failure", failures.next()).await.expect("a failure");
        assert!(failure.is_panic());
        assert_eq!(failure.stage(), "store");
        got += 1;
    }
    within("feed", feed).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    let m = flow.metrics();
    books_balance(&m, &["src", "store"]);
    let store = m.stage("store").unwrap();
    assert_eq!((store.received, store.failed, store.emitted), (u64::from(n), u64::from(n), 0));
    let src = m.stage("src").unwrap();
    assert!(src.blocked <= m.elapsed());
    assert!(src.failures_blocked <= src.blocked);
}

/// The docs of `blocked` (and of `failures()`): a stage waiting for room in
/// the failures buffer is blocked, the wait in progress included, and
/// `failures_blocked` is that part of it; `limit()` names the reader of
/// `failures()`. Here the waiting stage is the one sending into a keyed
/// stage whose key function panicked: the wait is its item's failure's,
/// not a send of its outputs, and must not show as `busy`.
#[tokio::test(start_paused = true)]
async fn a_stage_waiting_for_room_for_its_key_panics_failures_shows_it_as_blocked() {
    let (flow, mut failures, n, feed) = failures_buffer_full_of_key_panics().await;
    // The source now waits for the reader of failures(), which does not
    // read for 200 ms (of paused time): that is the quantity measured.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = flow.metrics();
    let src = m.stage("src").unwrap();
    let stuck = format!("{src:?}\n{m}");
    for _ in 0..n {
        within("a failure", failures.next()).await.expect("a failure");
    }
    within("feed", feed).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    let end = flow.metrics();
    let end_src = end.stage("src").unwrap();
    assert!(end_src.failures_blocked >= Duration::from_millis(200), "after the wait: {end_src:?}");
    assert!(src.blocked >= Duration::from_millis(200), "wait in progress not shown as blocked: {stuck}");
    assert!(src.failures_blocked >= Duration::from_millis(200), "{stuck}");
    assert!(src.busy < Duration::from_millis(100), "the wait counts as busy: {stuck}");
    assert_eq!(m.limit(), genflow::Limit::FailuresReader("src"), "{stuck}");
}

// ---------------------------------------------------------------------------
// Servers' queues of one and two with many senders in line.

#[derive(Default)]
struct Seen {
    handled: Mutex<Vec<(u32, u32)>>,
}

struct Shared {
    seen: [Seen; 2],
    gate: Semaphore,
    gated: AtomicBool,
}

struct Box1<const Q: usize> {
    registry: Reg,
}

impl<const Q: usize> GenServer for Box1<Q> {
    type Message = (u32, u32);
    type Response = u32;
    type Registry = Reg;
    fn new(registry: Reg) -> Self {
        Box1 { registry }
    }
    async fn handle_call(&mut self, m: (u32, u32)) -> u32 {
        self.handle(m).await;
        m.1
    }
    async fn handle_cast(&mut self, m: (u32, u32)) {
        self.handle(m).await;
    }
    fn channel_queue_size() -> usize {
        Q
    }
}

impl<const Q: usize> Box1<Q> {
    async fn handle(&mut self, m: (u32, u32)) {
        let shared = &self.registry.shared;
        if shared.gated.load(Ordering::SeqCst) {
            shared.gate.acquire().await.unwrap().forget();
        }
        if m.1 % 5 == 0 {
            tokio::task::yield_now().await;
        }
        shared.seen[Q - 1].handled.lock().unwrap().push(m);
    }
}

#[genflow::make_registry{ one: Box1<1>, two: Box1<2> }]
struct Reg {
    shared: Arc<Shared>,
}

fn reg_shared(gated: bool) -> Arc<Shared> {
    Arc::new(Shared { seen: Default::default(), gate: Semaphore::new(0), gated: AtomicBool::new(gated) })
}

/// What a sender saw: the messages it knows were queued (or answered).
type Outcome = Vec<(u32, u32)>;

async fn send_one(reg: &Reg, at: usize, m: (u32, u32), how: u32) -> bool {
    match (at, how) {
        (0, 0) => reg.cast_one(m).await.is_ok(),
        (1, 0) => reg.cast_two(m).await.is_ok(),
        (0, 1) => reg.call_one(m).await.is_ok(),
        (1, 1) => reg.call_two(m).await.is_ok(),
        // A cast that gives up if it waits too long: dropped while in line.
        (0, _) => matches!(tokio::time::timeout(Duration::from_micros(50), reg.cast_one(m)).await, Ok(Ok(()))),
        (_, _) => matches!(tokio::time::timeout(Duration::from_micros(50), reg.cast_two(m)).await, Ok(Ok(()))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_senders_in_line_some_giving_up_lose_nothing_and_handle_nothing_extra() {
    let reg = Reg::start(reg_shared(false)).await;
    for at in 0..2 {
        let tasks: Vec<_> = (0..16u32)
            .map(|sender| {
                let reg = reg.clone();
                tokio::spawn(async move {
                    let mut ok = Outcome::new();
                    for seq in 0..150u32 {
                        let m = (sender, seq);
                        if send_one(&reg, at, m, (seq + sender) % 3).await {
                            ok.push(m);
                        }
                    }
                    ok
                })
            })
            .collect();
        let mut ok = Vec::new();
        for task in tasks {
            ok.extend(within("a sender", task).await.unwrap());
        }
        // A call after every send returned is handled after all of them.
        let last = (u32::MAX, 0);
        if at == 0 { reg.call_one(last).await } else { reg.call_two(last).await }.unwrap();
        let mut handled = reg.shared.seen[at].handled.lock().unwrap().clone();
        assert_eq!(handled.pop(), Some(last));
        // Each sender's handled messages in its order, and exactly the ones
        // whose send succeeded (a cast given up in line is never handled).
        for sender in 0..16 {
            let own: Vec<_> = handled.iter().filter(|m| m.0 == sender).collect();
            let sent: Vec<_> = ok.iter().filter(|m| m.0 == sender).collect();
            assert_eq!(own, sent, "queue {}, sender {sender}", at + 1);
        }
        assert_eq!(handled.len(), ok.len());
    }
    within("shutdown", reg.shutdown()).await;
}

/// Fills the gated server `at` and puts 24 senders in line (casts and
/// calls); returns their tasks, each with the messages it saw succeed.
async fn line_up(reg: &Reg, at: usize) -> Vec<tokio::task::JoinHandle<Outcome>> {
    // One handled (held at the gate), then the queue full.
    let fill = at + 2;
    let mut tasks = Vec::new();
    for seq in 0..fill as u32 {
        assert!(send_one(reg, at, (99, seq), 0).await);
    }
    for sender in 0..24u32 {
        let reg = reg.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = Outcome::new();
            for seq in 0..4u32 {
                let m = (sender, seq);
                if send_one(&reg, at, m, seq % 2).await {
                    ok.push(m);
                }
            }
            ok
        }));
    }
    // Everyone is in line: the queue stays full.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    let full = if at == 0 { reg.try_cast_one((98, 0)) } else { reg.try_cast_two((98, 0)) };
    assert!(matches!(full, Err(SendError::Full(_))), "{full:?}");
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_senders_wait_in_line_handles_every_accepted_message() {
    for at in 0..2 {
        let shared = reg_shared(true);
        let reg = Reg::start(shared.clone()).await;
        let tasks = line_up(&reg, at).await;
        let shutdown = tokio::spawn({
            let reg = reg.clone();
            async move { reg.shutdown().await }
        });
        shared.gate.add_permits(10_000);
        let mut ok = Vec::new();
        for task in tasks {
            ok.extend(within("a sender", task).await.unwrap());
        }
        within("shutdown", shutdown).await.unwrap();
        let handled = shared.seen[at].handled.lock().unwrap().clone();
        let mine: Vec<_> = handled.iter().filter(|m| m.0 < 99).copied().collect();
        let mut a = mine.clone();
        let mut b = ok.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "queue {}: handled exactly what was accepted", at + 1);
        assert_eq!(handled.iter().filter(|m| m.0 == 99).count(), at + 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_while_senders_wait_in_line_releases_them_all() {
    for at in 0..2 {
        let shared = reg_shared(true);
        let reg = Reg::start(shared.clone()).await;
        let tasks = line_up(&reg, at).await;
        reg.abort();
        shared.gate.add_permits(10_000);
        let mut ok = Vec::new();
        for task in tasks {
            ok.extend(within("a sender", task).await.unwrap());
        }
        within("shutdown after abort", reg.shutdown()).await;
        let handled = shared.seen[at].handled.lock().unwrap().clone();
        // Nothing handled that was not accepted; the calls that returned
        // Ok were handled.
        for m in handled.iter().filter(|m| m.0 < 99) {
            assert!(ok.contains(m), "{m:?} handled but not accepted");
        }
        for m in ok.iter().filter(|m| m.1 % 2 == 1) {
            assert!(handled.contains(m), "call {m:?} answered but not handled");
        }
        assert!(matches!(reg.cast_one((0, 0)).await, Err(SendError::Closed(_))));
    }
}

#[tokio::test]
async fn a_registry_whose_senders_never_waited_shuts_down_and_aborts() {
    let reg = Reg::start(reg_shared(false)).await;
    assert_eq!(reg.call_one((1, 7)).await.unwrap(), 7);
    within("shutdown", reg.shutdown()).await;
    assert!(matches!(reg.cast_two((0, 0)).await, Err(SendError::Closed(_))));
    let reg = Reg::start(reg_shared(false)).await;
    reg.abort();
    within("shutdown after abort", reg.shutdown()).await;
    assert!(reg.call_one((0, 0)).await.is_err());
}

// ---------------------------------------------------------------------------
// A stage's control queue of one while items flow.

static CTL_CASTS: AtomicUsize = AtomicUsize::new(0);

struct Ctl;
impl GenServer for Ctl {
    type Message = u32;
    type Response = u32;
    type Registry = C1;
    fn new(_: C1) -> Self {
        Ctl
    }
    async fn handle_call(&mut self, m: u32) -> u32 {
        m + 1
    }
    async fn handle_cast(&mut self, _: u32) {
        CTL_CASTS.fetch_add(1, Ordering::SeqCst);
    }
    fn channel_queue_size() -> usize {
        1
    }
}
impl Stage for Ctl {
    type In = u32;
    type Out = u32;
    async fn process(&mut self, x: u32, out: &mut Emitter<u32>) {
        if x % 4 == 0 {
            tokio::task::yield_now().await;
        }
        out.emit(x).await;
    }
}

#[genflow::pipeline{ #[replicas(4)] ctl: Ctl }]
struct C1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_with_control_queues_of_one_serves_many_callers_while_items_flow() {
    let flow = C1::start().await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<u32>>());
    let feeder = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(0..5_000u32)).await.unwrap() }
    });
    let callers: Vec<_> = (0..8u32)
        .map(|c| {
            let flow = flow.clone();
            tokio::spawn(async move {
                for i in 0..40u32 {
                    assert_eq!(flow.call_ctl(c * 1000 + i).await.unwrap(), c * 1000 + i + 1);
                    flow.cast_ctl_all(i).await.unwrap();
                    if i % 5 == 0 {
                        // Given up while it may wait in line.
                        let _ = tokio::time::timeout(Duration::from_micros(10), flow.cast_ctl_all(i)).await;
                    }
                }
            })
        })
        .collect();
    for c in callers {
        within("a caller", c).await.unwrap();
    }
    assert_eq!(within("feed", feeder).await.unwrap(), 5_000);
    within("shutdown", flow.shutdown()).await;
    let mut out = within("output", output).await.unwrap();
    out.sort();
    assert_eq!(out, (0..5_000).collect::<Vec<_>>());
    // Every completed cast_all reached all 4 replicas; those given up may
    // have reached some.
    let casts = CTL_CASTS.load(Ordering::SeqCst);
    assert!((8 * 40 * 4..=8 * 48 * 4).contains(&casts), "{casts}");
}

// ---------------------------------------------------------------------------
// flush over 64 replicas.

static FL_PLAIN: AtomicU64 = AtomicU64::new(0);
static FL_KEYED: AtomicU64 = AtomicU64::new(0);

struct Work<R>(std::marker::PhantomData<R>);
server!(Work, 2);
impl<R: Clone + Send + Sync + 'static> Stage for Work<R> {
    type In = Item;
    type Out = Item;
    async fn process(&mut self, item: Item, out: &mut Emitter<Item>) {
        if item.1 % 3 == 0 {
            tokio::task::yield_now().await;
        }
        if item.1 % 101 == 7 {
            // Fails: still waited for by flush.
            out.fail("odd one");
            return;
        }
        out.emit(item).await;
    }
}

struct Tally<R>(std::marker::PhantomData<R>);
server!(Tally, 4);
trait Counter {
    fn counter() -> &'static AtomicU64;
}
impl Counter for FL1 {
    fn counter() -> &'static AtomicU64 {
        &FL_PLAIN
    }
}
impl Counter for FL2 {
    fn counter() -> &'static AtomicU64 {
        &FL_KEYED
    }
}
impl<R: Clone + Send + Sync + 'static + Counter> Stage for Tally<R> {
    type In = Item;
    type Out = Item;
    async fn process(&mut self, item: Item, out: &mut Emitter<Item>) {
        R::counter().fetch_add(1, Ordering::SeqCst);
        out.emit(item).await;
    }
}

#[genflow::pipeline{ #[replicas(64)] work: Work<FL1>, tally: Tally<FL1> }]
struct FL1;

#[genflow::pipeline{ #[replicas(64, partition_by = key)] work: Work<FL2>, tally: Tally<FL2> }]
struct FL2;

/// Items that reach `tally` among the first `n`.
fn passing(n: u32) -> u64 {
    (0..n).filter(|s| s % 101 != 7).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_over_64_replicas_waits_for_every_item_fed_before_it() {
    let plain = FL1::start().await;
    let keyed = FL2::start().await;
    let mut fed = 0u32;
    for round in 0..20u32 {
        let n = 37 + round * 29;
        let batch: Vec<Item> = (fed..fed + n).map(|s| (s % 97, s)).collect();
        within("feed", plain.feed(stream::iter(batch.clone()))).await.unwrap();
        within("feed", keyed.feed(stream::iter(batch))).await.unwrap();
        fed += n;
        within("flush", plain.flush()).await.unwrap();
        within("flush", keyed.flush()).await.unwrap();
        assert_eq!(FL_PLAIN.load(Ordering::SeqCst), passing(fed), "round {round}");
        assert_eq!(FL_KEYED.load(Ordering::SeqCst), passing(fed), "round {round}");
        // A second flush with nothing new returns too.
        within("flush again", plain.flush()).await.unwrap();
        within("flush again", keyed.flush()).await.unwrap();
    }
    for flow_metrics in [plain.metrics(), keyed.metrics()] {
        let work = flow_metrics.stage("work").unwrap();
        assert_eq!(work.replicas.len(), 64);
        assert_eq!(work.received, u64::from(fed));
    }
    within("shutdown", plain.shutdown()).await;
    within("shutdown", keyed.shutdown()).await;
}

static FL3_TALLY: AtomicU64 = AtomicU64::new(0);
impl Counter for FL3 {
    fn counter() -> &'static AtomicU64 {
        &FL3_TALLY
    }
}
#[genflow::pipeline{ #[replicas(64, partition_by = key)] work: Work<FL3>, tally: Tally<FL3> }]
struct FL3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_interleaved_with_a_steady_feed_over_64_keyed_replicas() {
    let flow = FL3::start().await;
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = tokio::spawn({
        let (flow, accepted, stop) = (flow.clone(), accepted.clone(), stop.clone());
        async move {
            let mut seq = 0u32;
            while !stop.load(Ordering::SeqCst) {
                flow.send((seq % 200, seq)).await.unwrap();
                seq += 1;
                accepted.store(u64::from(seq), Ordering::SeqCst);
            }
            seq
        }
    });
    for _ in 0..40 {
        let before = accepted.load(Ordering::SeqCst) as u32;
        within("flush under a steady feed", flow.flush()).await.unwrap();
        let done = FL3_TALLY.load(Ordering::SeqCst);
        assert!(done >= passing(before), "{done} tallied, {} passing fed before the flush", passing(before));
    }
    stop.store(true, Ordering::SeqCst);
    let fed = within("feeder", feeder).await.unwrap();
    within("flush", flow.flush()).await.unwrap();
    assert_eq!(FL3_TALLY.load(Ordering::SeqCst), passing(fed));
    within("shutdown", flow.shutdown()).await;
}

// ---------------------------------------------------------------------------
// A `process` that awaits: its outputs go on at once, in order.

/// Set by the test's reader when it saw item `n`.
struct Seen2 {
    seen: AtomicU64,
    notify: Notify,
}
static SEEN2: Seen2 = Seen2 { seen: AtomicU64::new(u64::MAX), notify: Notify::const_new() };

struct Waits;
impl GenServer for Waits {
    type Message = ();
    type Response = ();
    type Registry = W1;
    fn new(_: W1) -> Self {
        Waits
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
    fn channel_queue_size() -> usize {
        64
    }
}
impl Stage for Waits {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        // Every call awaits: only the output of a call that awaited is sent
        // on at once (a call that returns at once leaves its output to the
        // end of the batch, as the `Emitter` docs say).
        tokio::task::yield_now().await;
        if x > 0 {
            // Waits until the reader saw the previous item's output: it
            // must have been sent on before this item, in the same batch.
            loop {
                let notified = SEEN2.notify.notified();
                if SEEN2.seen.load(Ordering::SeqCst) == x - 1 {
                    break;
                }
                notified.await;
            }
        }
        out.emit(x).await;
    }
}

#[genflow::pipeline{ #[max_demand(64)] waits: Waits }]
struct W1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_of_a_process_that_awaits_go_on_before_the_batch_ends() {
    let flow = W1::start().await;
    let mut output = flow.output().unwrap();
    // All 40 queued at once: they make one batch (or a few).
    for x in 0..40u64 {
        flow.try_send(x).unwrap();
    }
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(x) = output.next().await {
            got.push(x);
            SEEN2.seen.store(x, Ordering::SeqCst);
            SEEN2.notify.notify_waiters();
        }
        got
    });
    eventually("every item through", || flow.metrics().stage("waits").unwrap().emitted == 40).await;
    within("shutdown", flow.shutdown()).await;
    assert_eq!(within("reader", reader).await.unwrap(), (0..40).collect::<Vec<_>>());
}

struct Ord1;
impl GenServer for Ord1 {
    type Message = ();
    type Response = ();
    type Registry = O1;
    fn new(_: O1) -> Self {
        Ord1
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
    fn channel_queue_size() -> usize {
        8
    }
}
impl Stage for Ord1 {
    type In = u32;
    type Out = u32;
    async fn process(&mut self, x: u32, out: &mut Emitter<u32>) {
        out.emit(x * 2).await;
        match x % 6 {
            0 => tokio::task::yield_now().await,
            3 => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                tokio::spawn(async move { tx.send(()).unwrap() });
                rx.await.unwrap();
            }
            _ => {}
        }
        out.emit(x * 2 + 1).await;
    }
}

#[genflow::pipeline{ #[replicas(4, ordered)] ord: Ord1 }]
struct O1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_stage_that_sometimes_awaits_keeps_input_order() {
    let flow = O1::start().await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<u32>>());
    within("feed", flow.feed(stream::iter(0..3_000u32))).await.unwrap();
    within("flush", flow.flush()).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    assert_eq!(within("output", output).await.unwrap(), (0..6_000).collect::<Vec<_>>());
    let m = flow.metrics();
    let ord = m.stage("ord").unwrap();
    assert_eq!((ord.received, ord.processed, ord.emitted, ord.dropped), (3_000, 3_000, 6_000, 0));
}
