//! Integration tests of `#[replicas(..)]`: demand-driven fan-out,
//! `partition_by`, `ordered`, poison items, and `_all` calls.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use genflow::{Emitter, GenServer, Stage, pipeline::BATCH};
use tokio::sync::Notify;

/// A small deterministic pseudo-random number from `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Waits (with a deadline) until `pred` holds.
async fn eventually(mut pred: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !pred() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("condition not reached in time");
}

/// What a replica answers to calls: its own id and how many items it saw.
#[derive(Clone, Debug)]
enum Ask {
    Who,
    /// Cast: add this to the replica's `bonus`.
    Bonus(u64),
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Answer {
    id: usize,
    seen: u64,
    bonus: u64,
}

/// The state every test stage keeps.
struct Replica<R> {
    registry: R,
    id: usize,
    seen: u64,
    bonus: u64,
}

trait Ids: Clone + Send + Sync + 'static {
    fn ids(&self) -> &AtomicUsize;
}

macro_rules! replica_server {
    ($stage:ident, $registry:ident) => {
        impl GenServer for $stage {
            type Message = Ask;
            type Response = Answer;
            type Registry = $registry;

            fn new(registry: $registry) -> Self {
                let id = registry.ids().fetch_add(1, Ordering::SeqCst);
                $stage(Replica { registry, id, seen: 0, bonus: 0 })
            }

            async fn handle_call(&mut self, _: Ask) -> Answer {
                Answer { id: self.0.id, seen: self.0.seen, bonus: self.0.bonus }
            }

            async fn handle_cast(&mut self, message: Ask) {
                if let Ask::Bonus(n) = message {
                    self.0.bonus += n;
                }
            }
        }

        impl Ids for $registry {
            fn ids(&self) -> &AtomicUsize {
                &self.ids
            }
        }
    };
}

// --- Demand-driven fan-out -------------------------------------------------

/// Sleeps 2 ms per item, then passes it on.
struct Sleepy(Replica<Sleepers>);
replica_server!(Sleepy, Sleepers);

impl Stage for Sleepy {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.0.seen += 1;
        out.emit(item).await;
    }
}

#[genflow::pipeline{ #[replicas(4)] sleepy: Sleepy }]
struct Sleepers {
    ids: Arc<AtomicUsize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_share_the_work_and_finish_well_under_serial_time() {
    let pipeline = Sleepers::start(Arc::default()).await;
    let output = pipeline.output().unwrap();
    let started = Instant::now();
    let collect = tokio::spawn(output.collect::<Vec<u64>>());
    assert_eq!(pipeline.feed(stream::iter(0..400u64)).await.unwrap(), 400);
    pipeline.shutdown().await;
    let elapsed = started.elapsed();
    let mut got = collect.await.unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..400).collect::<Vec<_>>());

    let stage = pipeline.metrics().stage("sleepy").unwrap();
    assert_eq!(stage.replicas.len(), 4);
    for (i, replica) in stage.replicas.iter().enumerate() {
        assert!(replica.received > 0, "replica {i} got no work: {stage:?}");
    }
    // `busy` sums the time every replica spent in `process`: the time one
    // replica would have needed on its own.
    let serial = stage.busy;
    assert!(serial >= Duration::from_millis(800), "each item sleeps 2 ms: {serial:?}");
    assert!(elapsed < serial / 2, "4 replicas took {elapsed:?}, serial work is {serial:?}");
}

/// One slow item must not stall the others: while it is in progress, the
/// other replicas keep going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_item_does_not_stall_the_other_replicas() {
    let gate = Arc::new(Notify::new());
    let pipeline = Gated::start(Arc::default(), gate.clone()).await;
    let output = pipeline.output().unwrap();
    let collect = tokio::spawn(output.collect::<Vec<u64>>());
    // Item 0 waits for the gate. Its replica holds at most one batch behind
    // it; the other replica takes every other item meanwhile.
    assert_eq!(pipeline.feed(stream::iter(0..1_000u64)).await.unwrap(), 1_000);
    eventually(|| pipeline.metrics().stage("gated").unwrap().emitted >= (1_000 - BATCH) as u64).await;
    gate.notify_one();
    pipeline.shutdown().await;
    let mut got = collect.await.unwrap();
    assert!(got[got.len() - BATCH..].contains(&0), "the slow item comes out with the last batch");
    got.sort_unstable();
    assert_eq!(got, (0..1_000).collect::<Vec<_>>());
}

// --- partition_by ------------------------------------------------------------

/// `(key, sequence)` items, tagged with the replica that handled them.
struct Tagger(Replica<Keyed>);
replica_server!(Tagger, Keyed);

fn key_of(item: &(u32, u32)) -> u32 {
    item.0
}

impl Stage for Tagger {
    type In = (u32, u32);
    type Out = (usize, u32, u32);
    async fn process(&mut self, (key, seq): (u32, u32), out: &mut Emitter<(usize, u32, u32)>) {
        // Uneven work, so replicas drift apart.
        for _ in 0..mix(u64::from(seq)) % 3 {
            tokio::task::yield_now().await;
        }
        self.0.seen += 1;
        out.emit((self.0.id, key, seq)).await;
    }
}

#[genflow::pipeline{ #[replicas(4, partition_by = key_of)] tagger: Tagger }]
struct Keyed {
    ids: Arc<AtomicUsize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_by_keeps_each_key_on_one_replica_and_in_order() {
    let pipeline = Keyed::start(Arc::default()).await;
    let output = pipeline.output().unwrap();
    let collect = tokio::spawn(output.collect::<Vec<_>>());
    let items: Vec<(u32, u32)> = (0..8_000u32).map(|seq| ((mix(u64::from(seq)) % 37) as u32, seq)).collect();
    pipeline.feed(stream::iter(items.clone())).await.unwrap();
    pipeline.shutdown().await;
    let got = collect.await.unwrap();
    assert_eq!(got.len(), items.len());

    let mut replica_of: HashMap<u32, usize> = HashMap::new();
    let mut last_seq: HashMap<u32, u32> = HashMap::new();
    for (replica, key, seq) in got {
        let first = *replica_of.entry(key).or_insert(replica);
        assert_eq!(first, replica, "key {key} was split across replicas {first} and {replica}");
        if let Some(last) = last_seq.insert(key, seq) {
            assert!(last < seq, "key {key}: {seq} came after {last}");
        }
    }
    assert_eq!(replica_of.len(), 37);
    let used: HashSet<usize> = replica_of.values().copied().collect();
    assert!(used.len() > 1, "37 keys all went to one replica");
    let stage = pipeline.metrics().stage("tagger").unwrap();
    assert_eq!(stage.received, 8_000);
    assert_eq!(stage.replicas.iter().map(|r| r.received).sum::<u64>(), 8_000);
}

// --- ordered -----------------------------------------------------------------

/// Emits `n % 3` copies of `n` (0, 1 or 2 outputs per input) after a random
/// delay; panics on multiples of `poison` (if set).
struct Jitter(Replica<Ordered>);
replica_server!(Jitter, Ordered);

impl Stage for Jitter {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        let r = mix(n);
        if r % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            for _ in 0..r % 4 {
                tokio::task::yield_now().await;
            }
        }
        if self.0.registry.poison.is_some_and(|p| n % p == 0) {
            panic!("poison item {n}");
        }
        self.0.seen += 1;
        for _ in 0..n % 3 {
            out.emit(n).await;
        }
    }
}

#[genflow::pipeline{ #[replicas(4, ordered)] jitter: Jitter }]
struct Ordered {
    ids: Arc<AtomicUsize>,
    poison: Option<u64>,
}

fn fanned_out(inputs: impl Iterator<Item = u64>) -> Vec<u64> {
    inputs.flat_map(|n| std::iter::repeat_n(n, (n % 3) as usize)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_output_follows_input_order_exactly() {
    let pipeline = Ordered::start(Arc::default(), None).await;
    let output = pipeline.output().unwrap();
    let collect = tokio::spawn(output.collect::<Vec<u64>>());
    pipeline.feed(stream::iter(0..10_000u64)).await.unwrap();
    pipeline.shutdown().await;
    assert_eq!(collect.await.unwrap(), fanned_out(0..10_000));
    let stage = pipeline.metrics().stage("jitter").unwrap();
    assert!(stage.replicas.iter().all(|r| r.received > 0), "{stage:?}");
    assert_eq!(stage.received, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_poison_items_leave_a_gap_and_nothing_else_is_lost() {
    // Every 100th item panics: 1%.
    let pipeline = Ordered::start(Arc::default(), Some(100)).await;
    let output = pipeline.output().unwrap();
    let collect = tokio::spawn(output.collect::<Vec<u64>>());
    pipeline.feed(stream::iter(0..10_000u64)).await.unwrap();
    pipeline.shutdown().await;
    assert_eq!(collect.await.unwrap(), fanned_out((0..10_000).filter(|n| n % 100 != 0)));
    let stage = pipeline.metrics().stage("jitter").unwrap();
    assert_eq!(stage.failed, 100);
    assert_eq!(stage.received, 10_000);
}

/// Blocks item 0 on a gate; with `ordered`, everything after it waits.
struct Slow(Replica<Gated>);
replica_server!(Slow, Gated);

impl Stage for Slow {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        if n == 0 {
            self.0.registry.gate.notified().await;
        }
        out.emit(n).await;
    }
}

#[genflow::pipeline{ #[replicas(2)] gated: Slow }]
struct Gated {
    ids: Arc<AtomicUsize>,
    gate: Arc<Notify>,
}

/// The same slow stage, `ordered`.
struct SlowOrdered(Replica<GatedOrdered>);
replica_server!(SlowOrdered, GatedOrdered);

impl Stage for SlowOrdered {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        if n == 0 {
            self.0.registry.gate.notified().await;
        }
        out.emit(n).await;
    }
}

#[genflow::pipeline{ #[replicas(2, ordered)] gated: SlowOrdered }]
struct GatedOrdered {
    ids: Arc<AtomicUsize>,
    gate: Arc<Notify>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_replicas_run_ahead_by_at_most_the_window() {
    let gate = Arc::new(Notify::new());
    let pipeline = GatedOrdered::start(Arc::default(), gate.clone()).await;
    let output = pipeline.output().unwrap();
    let collect = tokio::spawn(output.collect::<Vec<u64>>());
    let feeder = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move { pipeline.feed(stream::iter(0..100_000u64)).await })
    };
    // Item 0 is stuck: the replicas stop taking items at the window, and the
    // feed then fills the stage's queue.
    eventually(|| {
        let stage = pipeline.metrics().stage("gated").unwrap();
        stage.queued == stage.capacity
    })
    .await;
    let stage = pipeline.metrics().stage("gated").unwrap();
    let window = (2 * 2 * BATCH) as u64;
    assert!(stage.received <= window, "took {} items with item 0 unfinished", stage.received);
    gate.notify_one();
    assert_eq!(feeder.await.unwrap().unwrap(), 100_000);
    pipeline.shutdown().await;
    assert_eq!(collect.await.unwrap(), (0..100_000).collect::<Vec<_>>());
}

// --- poison, unordered ---------------------------------------------------------

/// Panics on multiples of 100; passes the rest on.
struct Brittle(Replica<Poisoned>);
replica_server!(Brittle, Poisoned);

impl Stage for Brittle {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        assert!(n % 100 != 0, "poison item {n}");
        self.0.seen += 1;
        out.emit(n).await;
    }
}

#[genflow::pipeline{ #[replicas(3)] brittle: Brittle }]
struct Poisoned {
    ids: Arc<AtomicUsize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_item_fails_alone_and_its_replica_goes_on() {
    let pipeline = Poisoned::start(Arc::default()).await;
    let output = pipeline.output().unwrap();
    let collect = tokio::spawn(output.collect::<Vec<u64>>());
    pipeline.feed(stream::iter(0..10_000u64)).await.unwrap();
    pipeline.shutdown().await;
    let mut got = collect.await.unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..10_000).filter(|n| n % 100 != 0).collect::<Vec<_>>(), "lost or duplicated items");
    let stage = pipeline.metrics().stage("brittle").unwrap();
    assert_eq!((stage.received, stage.emitted, stage.failed), (10_000, 9_900, 100));
    let per_replica: u64 = stage.replicas.iter().map(|r| r.failed).sum();
    assert_eq!(per_replica, 100);
}

// --- call_all / cast_all -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_all_sees_each_replica_state_in_replica_order() {
    let pipeline = Poisoned::start(Arc::default()).await;
    let output = pipeline.output().unwrap();
    let drain = tokio::spawn(output.count());
    pipeline.feed(stream::iter((1..=3_000u64).filter(|n| n % 100 != 0))).await.unwrap();
    // Items go wherever a replica is free, so wait until all are through.
    eventually(|| pipeline.metrics().stage("brittle").unwrap().emitted == 2_970).await;

    pipeline.cast_brittle_all(Ask::Bonus(5)).await.unwrap();
    pipeline.cast_brittle(Ask::Bonus(100)).await.unwrap();
    let answers = pipeline.call_brittle_all(Ask::Who).await.unwrap();
    assert_eq!(answers.len(), 3);
    let mut ids: Vec<usize> = answers.iter().map(|a| a.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2]);
    // Each replica reports its own count; together they saw every item, and
    // the metrics agree replica by replica.
    let stage = pipeline.metrics().stage("brittle").unwrap();
    for (answer, replica) in answers.iter().zip(&stage.replicas) {
        assert_eq!(answer.seen, replica.emitted);
    }
    assert_eq!(answers.iter().map(|a| a.seen).sum::<u64>(), 2_970);
    // `cast_all` reached every replica; the plain cast reached one.
    let mut bonuses: Vec<u64> = answers.iter().map(|a| a.bonus).collect();
    bonuses.sort_unstable();
    assert_eq!(bonuses, [5, 5, 105]);

    pipeline.shutdown().await;
    assert_eq!(drain.await.unwrap(), 2_970);
}

// --- finish ------------------------------------------------------------------------

/// Passes items on, tagged `false`; at the end of the input, emits how many
/// items this replica saw, tagged `true`.
struct Tally(Replica<Tallies>);
replica_server!(Tally, Tallies);

impl Stage for Tally {
    type In = u64;
    type Out = (bool, u64);
    async fn process(&mut self, n: u64, out: &mut Emitter<(bool, u64)>) {
        for _ in 0..mix(n) % 3 {
            tokio::task::yield_now().await;
        }
        self.0.seen += 1;
        out.emit((false, n)).await;
    }

    async fn finish(&mut self, out: &mut Emitter<(bool, u64)>) {
        out.emit((true, self.0.seen)).await;
    }
}

#[genflow::pipeline{ #[replicas(4, ordered)] tally: Tally }]
struct Tallies {
    ids: Arc<AtomicUsize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_finish_outputs_come_after_every_input() {
    let pipeline = Tallies::start(Arc::default()).await;
    let output = pipeline.output().unwrap();
    let collect = tokio::spawn(output.collect::<Vec<(bool, u64)>>());
    pipeline.feed(stream::iter(0..5_000u64)).await.unwrap();
    pipeline.shutdown().await;
    let got = collect.await.unwrap();
    let (items, tallies) = got.split_at(5_000);
    assert_eq!(items, (0..5_000).map(|n| (false, n)).collect::<Vec<_>>());
    assert_eq!(tallies.len(), 4, "one per replica: {tallies:?}");
    assert!(tallies.iter().all(|&(last, _)| last));
    assert_eq!(tallies.iter().map(|&(_, seen)| seen).sum::<u64>(), 5_000);
}
