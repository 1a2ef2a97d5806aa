//! What the metrics say about where a pipeline is limited: a hot partition
//! (one replica of a partitioned stage busy while the others idle), a
//! stage busy most of the time, or the input. Runs on paused time, so the
//! shares of time are exact.

use std::{marker::PhantomData, time::Duration};

use futures::stream;
use genflow::{Emitter, GenServer, Metrics, Stage};

const HOT: u32 = 0;

/// Waits (with a deadline on the paused clock) until `pred` holds.
async fn eventually(mut pred: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !pred() {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    })
    .await
    .expect("condition not reached in time");
}

/// 2 ms per item of the hot key, nothing for the others.
struct Store<R>(PhantomData<R>);
/// 1 ms per item.
struct Work<R>(PhantomData<R>);

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
                16
            }
        }
    };
}
server!(Store);
server!(Work);

impl<R: Clone + Send + Sync + 'static> Stage for Store<R> {
    type In = u32;
    type Out = u32;
    async fn process(&mut self, key: u32, out: &mut Emitter<u32>) {
        if key == HOT {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        out.emit(key).await;
    }
}

impl<R: Clone + Send + Sync + 'static> Stage for Work<R> {
    type In = u32;
    type Out = u32;
    async fn process(&mut self, x: u32, out: &mut Emitter<u32>) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        out.emit(x).await;
    }
}

fn key(x: &u32) -> u32 {
    *x
}

#[genflow::pipeline{ #[replicas(4, partition_by = key)] store: Store<Keyed> }]
struct Keyed;

#[genflow::pipeline{ work: Work<Single> }]
struct Single;

/// 200 items of the hot key, every 11th, among 2,000 over 50 other keys.
fn keys() -> impl Iterator<Item = u32> {
    (0..2_200u32).map(|i| if i % 11 == 0 { HOT } else { 1 + i % 50 })
}

/// The replica whose partition queue is full, if exactly one is.
fn full_replica(m: &Metrics) -> Option<usize> {
    let store = m.stage("store").unwrap();
    let full: Vec<usize> = store.replicas.iter().enumerate().filter(|(_, r)| r.queued == 16).map(|(i, _)| i).collect();
    (full.len() == 1).then(|| full[0])
}

#[tokio::test(start_paused = true)]
async fn the_table_names_the_hot_replica_of_a_partitioned_stage() {
    let flow = Keyed::start().await;
    let feeder = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(keys())).await }
    });
    // Mid-run: the hot replica's queue is full, the feed waits for room in it.
    let mut snapshot = None;
    eventually(|| {
        let m = flow.metrics();
        let ready = m.elapsed() >= Duration::from_millis(100) && full_replica(&m).is_some();
        if ready {
            snapshot = Some(m);
        }
        ready
    })
    .await;
    let m = snapshot.unwrap();
    let hot = full_replica(&m).unwrap();
    let store = m.stage("store").unwrap();
    assert!(store.partitioned());
    // The stage as a whole is mostly idle; its hot replica is not.
    assert!(store.utilization(m.elapsed()) < 0.5, "{m}");
    assert!(store.replicas[hot].utilization(m.elapsed()) > 0.9, "{m}");
    assert_eq!(m.bottleneck(), Some("store"), "{m}");
    assert_eq!(m.hot_partition(), Some(("store", hot)), "{m}");
    let table = m.to_string();
    assert!(
        table.contains(&format!("bottleneck: store, replica {hot} (a hot partition: its queue is full, busy ")),
        "{table}"
    );
    // One row per replica, with its own queue.
    for i in 0..4 {
        assert!(table.contains(&format!("#{i} ")), "{table}");
    }
    assert!(table.contains(" 16/16 "), "{table}");

    // The whole run is paced by the hot replica: 200 items of 2 ms.
    assert_eq!(feeder.await.unwrap().unwrap(), 2_200);
    flow.shutdown().await;
    let m = flow.metrics();
    let store = m.stage("store").unwrap();
    assert_eq!(store.replicas[hot].busy, Duration::from_millis(400), "{m}");
    assert_eq!(m.hot_partition(), Some(("store", hot)), "{m}");
    let table = m.to_string();
    assert!(table.contains(&format!("bottleneck: store, replica {hot} (a hot partition: busy ")), "{table}");
}

#[tokio::test(start_paused = true)]
async fn a_busy_stage_is_the_bottleneck_and_an_idle_one_leaves_the_input_as_the_limit() {
    // Fed at full speed: the stage is busy all the time.
    let busy = Single::start().await;
    busy.feed(stream::iter(0..100)).await.unwrap();
    busy.shutdown().await;
    let m = busy.metrics();
    assert_eq!(m.bottleneck(), Some("work"), "{m}");
    assert_eq!(m.hot_partition(), None, "{m}");
    assert!(m.to_string().contains("bottleneck: work (elapsed"), "{m}");

    // Fed one item every 10 ms: the stage is busy 10% of the time.
    let idle = Single::start().await;
    for i in 0..20 {
        idle.send(i).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    idle.shutdown().await;
    let m = idle.metrics();
    let work = m.stage("work").unwrap();
    assert_eq!(work.busy, Duration::from_millis(20), "{m}");
    assert!(work.idle(m.elapsed()) > 0.85, "{m}");
    assert_eq!(m.bottleneck(), None, "{m}");
    let table = m.to_string();
    assert!(table.contains("no stage is busy more than half the time, the input is the limit"), "{table}");
    assert!(table.lines().next().unwrap().ends_with(" idle"), "{table}");
}

// ---- A key function that panics ----------------------------------------

/// Passes items on unchanged.
#[genflow::stage]
fn pass(x: u64) -> u64 {
    x
}

/// Panics on 13 and 57.
fn picky_key(x: &u64) -> u64 {
    assert!(*x != 13 && *x != 57, "no key for {x}");
    *x
}

#[genflow::pipeline{ #[replicas(2)] a: Pass<Picky>, #[replicas(3, partition_by = picky_key)] b: Pass<Picky> }]
struct Picky;

#[genflow::pipeline{ #[replicas(3, partition_by = picky_key)] head: Pass<PickyHead> }]
struct PickyHead;

/// Fails the test if `future` does not end in time (instead of hanging).
async fn in_time<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future).await.expect("did not end in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_panics_fails_that_item_at_the_keyed_stage() {
    use futures::StreamExt;
    let flow = Picky::start().await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let failures = tokio::spawn(flow.failures().unwrap().collect::<Vec<genflow::Failure>>());
    assert_eq!(in_time(flow.feed(stream::iter(0..100u64))).await.unwrap(), 100);
    in_time(flow.flush()).await.unwrap();
    in_time(flow.shutdown()).await;
    let mut seen = output.await.unwrap();
    seen.sort_unstable();
    assert_eq!(seen, (0..100).filter(|x| *x != 13 && *x != 57).collect::<Vec<_>>());
    let mut failures: Vec<_> =
        failures.await.unwrap().into_iter().map(|f| (f.stage().to_owned(), f.is_panic(), f.to_string())).collect();
    failures.sort();
    assert_eq!(
        failures,
        [
            ("b".to_owned(), true, "stage `b` (replica 0) panicked: no key for 13".to_owned()),
            ("b".to_owned(), true, "stage `b` (replica 0) panicked: no key for 57".to_owned()),
        ]
    );
    let metrics = flow.metrics();
    let (a, b) = (metrics.stage("a").unwrap(), metrics.stage("b").unwrap());
    assert_eq!((a.received, a.processed, a.emitted, a.failed, a.dropped), (100, 100, 100, 0, 0));
    // The two items count as received and failed by `b`, on its replica 0.
    assert_eq!((b.received, b.processed, b.emitted, b.failed, b.dropped, b.queued), (100, 100, 98, 2, 0, 0));
    assert_eq!(b.replicas[0].failed, 2);
    assert_eq!(a.emitted, b.received + a.dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_panics_on_a_sent_item_hands_it_back() {
    use futures::{SinkExt, StreamExt};
    let flow = PickyHead::start().await;
    let output = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let key_panicked = |error: genflow::SendError<u64>| match error {
        genflow::SendError::KeyPanicked { message, panic } => (message, panic.message().to_owned()),
        other => panic!("expected KeyPanicked, got {other:?}"),
    };
    let expected = (13, "no key for 13".to_owned());
    assert_eq!(key_panicked(in_time(flow.send(13)).await.unwrap_err()), expected);
    assert_eq!(key_panicked(flow.try_send(13).unwrap_err()), expected);
    assert_eq!(key_panicked(in_time(flow.sink().send(13)).await.unwrap_err()), expected);
    // `feed` stops at the item, which comes back; the rest stays in the stream.
    let mut items = stream::iter(0..100u64);
    assert_eq!(key_panicked(in_time(flow.feed(&mut items)).await.unwrap_err()), expected);
    assert_eq!(in_time(flow.feed(items.filter(|x| std::future::ready(*x != 57)))).await.unwrap(), 85);
    let error = flow.send(57).await.unwrap_err();
    assert_eq!(error.to_string(), "the partition key function panicked: no key for 57");
    assert_eq!(error.into_message(), Some(57));
    in_time(flow.flush()).await.unwrap();
    in_time(flow.shutdown()).await;
    let mut seen = output.await.unwrap();
    seen.sort_unstable();
    assert_eq!(seen, (0..100).filter(|x| *x != 13 && *x != 57).collect::<Vec<_>>());
    let head = flow.metrics().stage("head").unwrap();
    assert_eq!((head.received, head.processed, head.failed), (98, 98, 0));
}
