//! Sizes chosen at start: `builder(..)` overrides of replica counts and
//! queue sizes, how they show in the metrics and the backpressure, ordered
//! and partitioned stages at a count chosen at run time, and every
//! `ConfigError`, with nothing started when one is returned.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, stream};
use genflow::{ConfigError, Emitter, GenServer, SendError, Stage};
use tokio::sync::{Barrier, Semaphore};

/// Waits (with a deadline) until `pred` holds.
async fn eventually(mut pred: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !pred() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("condition not reached in time");
}

// ---- A stage that waits for all its replicas at once ------------------

/// Each item waits at the barrier: it passes only once as many items as the
/// barrier counts are in `process` at the same time, one per replica.
struct Meet {
    barrier: Arc<Barrier>,
}

impl GenServer for Meet {
    type Message = ();
    type Response = ();
    type Registry = Meeting;
    fn new(registry: Meeting) -> Self {
        Meet { barrier: registry.barrier.clone() }
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Meet {
    type In = u32;
    type Out = u32;
    async fn process(&mut self, x: u32, out: &mut Emitter<u32>) {
        self.barrier.wait().await;
        out.emit(x).await;
    }
}

#[genflow::pipeline{ #[replicas(2)] meet: Meet }]
struct Meeting {
    barrier: Arc<Barrier>,
}

#[tokio::test]
async fn replicas_override_the_declared_count_and_share_the_work() {
    const N: usize = 5;
    let flow = Meeting::builder(Arc::new(Barrier::new(N))).replicas("meet", N).start().await.unwrap();
    assert_eq!(flow.metrics().stage("meet").unwrap().replicas.len(), N);
    let output = flow.output().unwrap();
    // One item at a time, each taken before the next is sent: a replica
    // waiting at the barrier takes nothing more, so each item goes to a
    // replica of its own, and the barrier opens only if there are N.
    for x in 0..N as u32 {
        flow.send(x).await.unwrap();
        eventually(|| flow.metrics().stage("meet").unwrap().queued == 0).await;
    }
    flow.shutdown().await;
    let mut seen: Vec<u32> = output.collect().await;
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3, 4]);
    let processed: Vec<u64> = flow.metrics().stage("meet").unwrap().replicas.iter().map(|r| r.processed).collect();
    assert_eq!(processed, [1; N]);
}

#[tokio::test]
async fn start_keeps_the_declared_count() {
    let flow = Meeting::start(Arc::new(Barrier::new(1))).await;
    let meet = flow.metrics().stage("meet").unwrap();
    assert_eq!(meet.replicas.len(), 2);
    assert_eq!(meet.capacity, 1_000);
    flow.shutdown().await;
}

// ---- A stage held at a gate -------------------------------------------

/// A registry with a gate: a semaphore without permits at first.
trait HasGate: Clone + Send + Sync + 'static {
    fn gate(&self) -> Arc<Semaphore>;
}

/// Each item takes one permit of the registry's gate.
struct Gated<R> {
    gate: Arc<Semaphore>,
    _registry: std::marker::PhantomData<R>,
}

impl<R: HasGate> GenServer for Gated<R> {
    type Message = ();
    type Response = ();
    type Registry = R;
    fn new(registry: R) -> Self {
        Gated { gate: registry.gate(), _registry: std::marker::PhantomData }
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl<R: HasGate> Stage for Gated<R> {
    type In = u32;
    type Out = u32;
    async fn process(&mut self, x: u32, out: &mut Emitter<u32>) {
        self.gate.acquire().await.unwrap().forget();
        out.emit(x).await;
    }
}

fn key(x: &u32) -> u32 {
    *x
}

#[genflow::pipeline{ gated: Gated<Gate> }]
struct Gate {
    gate: Arc<Semaphore>,
}

#[genflow::pipeline{ #[replicas(2, partition_by = key)] gated: Gated<KeyedGate> }]
struct KeyedGate {
    gate: Arc<Semaphore>,
}

impl HasGate for Gate {
    fn gate(&self) -> Arc<Semaphore> {
        self.gate.clone()
    }
}

impl HasGate for KeyedGate {
    fn gate(&self) -> Arc<Semaphore> {
        self.gate.clone()
    }
}

#[tokio::test]
async fn queue_size_bounds_the_input_queue() {
    let gate = Arc::new(Semaphore::new(0));
    let flow = Gate::builder(gate.clone()).queue_size("gated", 3).start().await.unwrap();
    assert_eq!(flow.metrics().stage("gated").unwrap().capacity, 3);
    // The output buffer is as large as the last stage's queue: read it as
    // items come.
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<u32>>());
    // The replica takes the first item and waits at the gate with it.
    flow.send(0).await.unwrap();
    eventually(|| flow.metrics().stage("gated").unwrap().queued == 0).await;
    for x in 1..=3 {
        flow.try_send(x).unwrap();
    }
    assert!(matches!(flow.try_send(4), Err(SendError::Full(4))));
    assert_eq!(flow.metrics().stage("gated").unwrap().queued, 3);
    gate.add_permits(4);
    flow.shutdown().await;
    assert_eq!(output.await.unwrap(), [0, 1, 2, 3]);
}

#[tokio::test]
async fn queue_size_applies_to_each_partition() {
    let gate = Arc::new(Semaphore::new(0));
    let flow = KeyedGate::builder(gate.clone()).replicas("gated", 3).queue_size("gated", 2).start().await.unwrap();
    let gated = flow.metrics().stage("gated").unwrap();
    assert_eq!((gated.replicas.len(), gated.capacity), (3, 6));
    gate.add_permits(usize::MAX >> 4);
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<u32>>());
    flow.feed(stream::iter(0..30)).await.unwrap();
    flow.shutdown().await;
    let mut seen = output.await.unwrap();
    seen.sort_unstable();
    assert_eq!(seen, (0..30).collect::<Vec<_>>());
}

// ---- Ordered and partitioned at a count chosen at start ---------------

/// Passes items on, yielding to the scheduler on some so that replicas
/// finish out of order.
struct Shuffle;

impl GenServer for Shuffle {
    type Message = ();
    type Response = ();
    type Registry = Ordered;
    fn new(_: Ordered) -> Self {
        Shuffle
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Shuffle {
    type In = u32;
    type Out = u32;
    async fn process(&mut self, x: u32, out: &mut Emitter<u32>) {
        for _ in 0..x % 3 {
            tokio::task::yield_now().await;
        }
        out.emit(x).await;
    }
}

#[genflow::pipeline{ #[replicas(2, ordered)] shuffle: Shuffle }]
struct Ordered;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_keeps_the_exact_order_with_a_chosen_count() {
    let flow = Ordered::builder().replicas("shuffle", 6).queue_size("shuffle", 50).start().await.unwrap();
    assert_eq!(flow.metrics().stage("shuffle").unwrap().replicas.len(), 6);
    let output = flow.output().unwrap();
    let reader = tokio::spawn(output.collect::<Vec<u32>>());
    flow.feed(stream::iter(0..3_000)).await.unwrap();
    flow.shutdown().await;
    assert_eq!(reader.await.unwrap(), (0..3_000).collect::<Vec<_>>());
}

/// Tags each `(key, n)` with the replica that saw it.
struct Tag {
    replica: usize,
}

static TAGS: AtomicUsize = AtomicUsize::new(0);

impl GenServer for Tag {
    type Message = ();
    type Response = ();
    type Registry = Keyed;
    fn new(_: Keyed) -> Self {
        Tag { replica: TAGS.fetch_add(1, Ordering::Relaxed) }
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Tag {
    type In = (u32, u32);
    type Out = (u32, u32, usize);
    async fn process(&mut self, (key, n): (u32, u32), out: &mut Emitter<(u32, u32, usize)>) {
        if n % 5 == 0 {
            tokio::task::yield_now().await;
        }
        out.emit((key, n, self.replica)).await;
    }
}

fn first(item: &(u32, u32)) -> u32 {
    item.0
}

#[genflow::pipeline{ #[replicas(2, partition_by = first)] tag: Tag }]
struct Keyed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_by_keeps_each_key_in_order_with_a_chosen_count() {
    const KEYS: u32 = 40;
    let flow = Keyed::builder().replicas("tag", 5).queue_size("tag", 16).start().await.unwrap();
    let tag = flow.metrics().stage("tag").unwrap();
    assert_eq!((tag.replicas.len(), tag.capacity), (5, 80));
    let reader = tokio::spawn(flow.output().unwrap().collect::<Vec<(u32, u32, usize)>>());
    flow.feed(stream::iter((0..4_000).map(|i| (i % KEYS, i / KEYS)))).await.unwrap();
    flow.shutdown().await;
    let seen = reader.await.unwrap();
    assert_eq!(seen.len(), 4_000);
    let mut next = vec![0; KEYS as usize];
    let mut replica_of = vec![None; KEYS as usize];
    for (key, n, replica) in seen {
        assert_eq!(n, next[key as usize], "key {key} out of order");
        next[key as usize] += 1;
        // Every item of a key goes through one replica.
        assert_eq!(*replica_of[key as usize].get_or_insert(replica), replica);
    }
    // The keys spread over more than the two declared replicas.
    let mut used: Vec<usize> = replica_of.into_iter().flatten().collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() > 2, "keys went to replicas {used:?} only");
}

// ---- Errors -----------------------------------------------------------

static NEW_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Counts how often a replica was made.
struct Counted;

impl GenServer for Counted {
    type Message = ();
    type Response = ();
    type Registry = Checked;
    fn new(_: Checked) -> Self {
        NEW_CALLS.fetch_add(1, Ordering::SeqCst);
        Counted
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Counted {
    type In = u8;
    type Out = u8;
    async fn process(&mut self, x: u8, out: &mut Emitter<u8>) {
        out.emit(x).await;
    }
}

#[genflow::pipeline{ parse: Counted, #[replicas(2)] enrich: Counted, sink: Counted }]
struct Checked;

#[tokio::test]
async fn every_config_error_is_named_and_nothing_starts() {
    let unknown = Checked::builder().replicas("enrch", 4).start().await.err().expect("a config error");
    assert_eq!(unknown.to_string(), "unknown stage `enrch`: the stages are `parse`, `enrich`, `sink`");
    assert_eq!(
        unknown,
        ConfigError::UnknownName { kind: "stage", name: "enrch".into(), valid: vec!["parse", "enrich", "sink"] }
    );
    let unknown = Checked::builder().queue_size("source", 4).start().await.err().expect("a config error");
    assert_eq!(unknown.to_string(), "unknown stage `source`: the stages are `parse`, `enrich`, `sink`");
    let zero = Checked::builder().replicas("enrich", 0).start().await.err().expect("a config error");
    assert_eq!(zero.to_string(), "stage `enrich` was given 0 replicas: a stage needs at least 1");
    let zero = Checked::builder().queue_size("parse", 0).start().await.err().expect("a config error");
    assert_eq!(zero.to_string(), "stage `parse` was given a queue size of 0: a queue needs room for at least 1 item");
    // An unknown name is reported before a 0; the first 0 still in force
    // before a later one.
    let first = Checked::builder().replicas("sink", 0).queue_size("nope", 0).start().await;
    assert_eq!(
        first.err().expect("a config error").to_string(),
        "unknown stage `nope`: the stages are `parse`, `enrich`, `sink`"
    );
    let first = Checked::builder().replicas("sink", 0).queue_size("sink", 0).replicas("sink", 2).start().await;
    assert_eq!(
        first.err().expect("a config error").to_string(),
        "stage `sink` was given a queue size of 0: a queue needs room for at least 1 item"
    );
    for replicas in [usize::MAX, 1_000_000, genflow::MAX_REPLICAS + 1] {
        let many = Checked::builder().replicas("enrich", replicas).start().await.err().expect("a config error");
        assert_eq!(many, ConfigError::TooManyReplicas { stage: "enrich", replicas, max: 65_536 });
        assert_eq!(
            many.to_string(),
            format!("stage `enrich` was given {replicas} replicas: a stage has at most 65536")
        );
    }
    let error: Box<dyn std::error::Error + Send + Sync + 'static> = Box::new(zero);
    assert!(error.downcast_ref::<ConfigError>().is_some());
    assert_eq!(NEW_CALLS.load(Ordering::SeqCst), 0, "a stage was started");

    // The same builder with valid settings starts everything; the last
    // setting of a name wins.
    let flow = Checked::builder().replicas("enrich", 0).replicas("enrich", 3).start().await.unwrap();
    assert_eq!(NEW_CALLS.load(Ordering::SeqCst), 1 + 3 + 1);
    flow.shutdown().await;
}

// ---- Registries -------------------------------------------------------

/// Waits at the registry's gate in each cast; tells when it got one.
struct Slow {
    gate: Arc<Semaphore>,
    started: Arc<tokio::sync::Notify>,
}

impl GenServer for Slow {
    type Message = u32;
    type Response = ();
    type Registry = App;
    fn new(registry: App) -> Self {
        Slow { gate: registry.gate.clone(), started: registry.started.clone() }
    }
    async fn handle_call(&mut self, _: u32) {}
    async fn handle_cast(&mut self, _: u32) {
        self.started.notify_one();
        self.gate.acquire().await.unwrap().forget();
    }
}

#[genflow::make_registry{ slow: Slow }]
struct App {
    gate: Arc<Semaphore>,
    started: Arc<tokio::sync::Notify>,
}

#[genflow::make_registry{}]
struct Empty;

#[tokio::test]
async fn registry_queue_size_bounds_the_mailbox() {
    let (gate, started) = (Arc::new(Semaphore::new(0)), Arc::new(tokio::sync::Notify::new()));
    let app = App::builder(gate.clone(), started.clone()).queue_size("slow", 2).start().await.unwrap();
    app.cast_slow(0).await.unwrap();
    started.notified().await;
    app.try_cast_slow(1).unwrap();
    app.try_cast_slow(2).unwrap();
    assert!(matches!(app.try_cast_slow(3), Err(SendError::Full(3))));
    gate.add_permits(3);
    app.shutdown().await;
}

#[tokio::test]
async fn registry_config_errors() {
    let app = App::builder(Arc::new(Semaphore::new(0)), Arc::default()).queue_size("fast", 2).start().await;
    assert_eq!(app.err().expect("a config error").to_string(), "unknown server `fast`: the servers are `slow`");
    let app = App::builder(Arc::new(Semaphore::new(0)), Arc::default()).queue_size("slow", 0).start().await;
    assert_eq!(
        app.err().expect("a config error").to_string(),
        "server `slow` was given a queue size of 0: a queue needs room for at least 1 item"
    );
    let empty = Empty::builder().queue_size("any", 1).start().await;
    assert_eq!(empty.err().expect("a config error").to_string(), "unknown server `any`: there are no servers");
    Empty::builder().start().await.unwrap().shutdown().await;
}

// ---- Replica counts from a const --------------------------------------

const WORKERS: usize = 3;

struct Work;

impl GenServer for Work {
    type Message = ();
    type Response = usize;
    type Registry = Consts;
    fn new(_: Consts) -> Self {
        Work
    }
    async fn handle_call(&mut self, _: ()) -> usize {
        1
    }
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Work {
    type In = u8;
    type Out = u8;
    async fn process(&mut self, x: u8, out: &mut Emitter<u8>) {
        out.emit(x).await;
    }
}

#[genflow::pipeline{ #[replicas(WORKERS)] work: Work }]
struct Consts;

#[tokio::test]
async fn a_const_count_is_the_default_and_can_be_overridden() {
    let flow = Consts::start().await;
    assert_eq!(flow.call_work_all(()).await.unwrap(), [1; WORKERS]);
    flow.shutdown().await;
    let flow = Consts::builder().replicas("work", 7).start().await.unwrap();
    assert_eq!(flow.metrics().stage("work").unwrap().replicas.len(), 7);
    assert_eq!(flow.call_work_all(()).await.unwrap(), [1; 7]);
    flow.shutdown().await;
}

// ---- A declared queue size of 0 ----------------------------------------

/// Declares a queue size of 0: usable only with a size from the builder.
struct Unsized;

impl GenServer for Unsized {
    type Message = ();
    type Response = u8;
    type Registry = ZeroDeclared;
    fn new(_: ZeroDeclared) -> Self {
        Unsized
    }
    async fn handle_call(&mut self, _: ()) -> u8 {
        7
    }
    async fn handle_cast(&mut self, _: ()) {}
    fn channel_queue_size() -> usize {
        0
    }
}

impl Stage for Unsized {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(x).await;
    }
}

#[genflow::pipeline{ first: Unsized, last: Unsized }]
struct ZeroDeclared;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_queue_size_of_0_takes_the_builders_size() {
    let flow = ZeroDeclared::builder().queue_size("first", 3).queue_size("last", 2).start().await.unwrap();
    let metrics = flow.metrics();
    assert_eq!((metrics.stage("first").unwrap().capacity, metrics.stage("last").unwrap().capacity), (3, 2));
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<_>>());
    assert_eq!(flow.feed(stream::iter(0..100u64)).await.unwrap(), 100);
    // Calls and casts go through a mailbox of the builder's size.
    assert_eq!(flow.call_first(()).await.unwrap(), 7);
    assert_eq!(flow.call_last(()).await.unwrap(), 7);
    flow.cast_last(()).await.unwrap();
    flow.shutdown().await;
    assert_eq!(out.await.unwrap(), (0..100).collect::<Vec<_>>());
}

#[genflow::make_registry{ server: Solo }]
struct ZeroRegistry;

/// A server that declares a mailbox of 0.
struct Solo;

impl GenServer for Solo {
    type Message = ();
    type Response = u8;
    type Registry = ZeroRegistry;
    fn new(_: ZeroRegistry) -> Self {
        Solo
    }
    async fn handle_call(&mut self, _: ()) -> u8 {
        9
    }
    async fn handle_cast(&mut self, _: ()) {}
    fn channel_queue_size() -> usize {
        0
    }
}

#[tokio::test]
async fn a_server_declaring_a_mailbox_of_0_takes_the_builders_size() {
    let app = ZeroRegistry::builder().queue_size("server", 1).start().await.unwrap();
    assert_eq!(app.call_server(()).await.unwrap(), 9);
    app.try_cast_server(()).unwrap();
    app.shutdown().await;
}
