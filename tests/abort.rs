//! `abort()` accounts for every item: once `shutdown().await` returns after
//! it, each stage's `received == processed + aborted` with nothing queued,
//! and what a stage emitted was either received by the next one or dropped.

use std::{marker::PhantomData, time::Duration};

use futures::stream;
use genflow::{Emitter, GenServer, Metrics, Stage, StageMetrics};

/// Waits (with a deadline) until `pred` holds.
async fn eventually(mut pred: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !pred() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("condition not reached in time");
}

/// Passes items on.
struct Fwd<R>(PhantomData<R>);
/// Never returns from `process`.
struct Stuck<R>(PhantomData<R>);
/// Never returns from `process` for item 0; passes the others on.
struct Hold<R>(PhantomData<R>);

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
                8
            }
        }
    };
}
server!(Fwd);
server!(Stuck);
server!(Hold);

impl<R: Clone + Send + Sync + 'static> Stage for Fwd<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(x).await;
    }
}

impl<R: Clone + Send + Sync + 'static> Stage for Stuck<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, _: u64, _: &mut Emitter<u64>) {
        std::future::pending::<()>().await;
    }
}

impl<R: Clone + Send + Sync + 'static> Stage for Hold<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        if x == 0 {
            std::future::pending::<()>().await;
        }
        out.emit(x).await;
    }
}

fn key(x: &u64) -> u64 {
    *x
}

#[genflow::pipeline{ a: Fwd<Plain>, b: Stuck<Plain> }]
struct Plain;

#[genflow::pipeline{ a: Fwd<Shared>, #[replicas(3)] b: Stuck<Shared> }]
struct Shared;

#[genflow::pipeline{ a: Fwd<Keyed>, #[replicas(3, partition_by = key)] b: Stuck<Keyed> }]
struct Keyed;

#[genflow::pipeline{ #[replicas(2, ordered)] a: Hold<Ordered>, b: Fwd<Ordered> }]
struct Ordered;

/// Asserts the identities that hold once an aborted pipeline has stopped.
fn assert_settled(m: &Metrics) {
    for s in m.stages() {
        assert_eq!(s.received, s.processed + s.aborted, "{}: received = processed + aborted\n{m}", s.name);
        assert_eq!(s.queued, 0, "{}: nothing queued\n{m}", s.name);
        for (i, r) in s.replicas.iter().enumerate() {
            assert_eq!(r.received, r.processed + r.aborted, "{} replica {i}\n{m}", s.name);
            assert_eq!(r.queued, 0, "{} replica {i}\n{m}", s.name);
        }
    }
    for pair in m.stages().windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(a.emitted, b.received + a.dropped, "{} emitted = {} received + dropped\n{m}", a.name, b.name);
    }
}

/// The state of a pipeline `a -> b` whose `b` is stuck: both queues full,
/// every replica of `b` in `process`, and `a` blocked with items in hand.
fn jammed(a: &StageMetrics, b: &StageMetrics) -> bool {
    a.queued == a.capacity
        && b.replicas.iter().all(|r| r.received > 0)
        && a.emitted > b.received + b.queued
        && (b.replicas.len() > 1 || b.queued == b.capacity)
}

/// What the pre-abort snapshot `before` says the settled counts must be.
fn assert_jam_accounted(before: &Metrics, after: &Metrics) {
    let (a0, b0) = (before.stage("a").unwrap(), before.stage("b").unwrap());
    let (a, b) = (after.stage("a").unwrap(), after.stage("b").unwrap());
    // Nothing moved between the snapshot and the abort.
    assert_eq!(a.emitted, a0.emitted, "{after}");
    // `a`'s queue was cleared: those items are aborted by `a`.
    assert_eq!(a.aborted, a0.queued, "{after}");
    assert_eq!(a.processed, a.emitted, "{after}");
    // `b` finished nothing: what it held and what waited in its queue is aborted.
    assert_eq!(b.processed, 0, "{after}");
    assert_eq!(b.received, b0.received + b0.queued, "{after}");
    assert_eq!(b.aborted, b.received, "{after}");
    // What `a` held in its emitter is dropped by `a`.
    assert_eq!(a.dropped, a0.emitted - b0.received - b0.queued, "{after}");
    assert!(a.dropped > 0, "{after}");
}

#[tokio::test]
async fn abort_accounts_for_every_item_of_a_jammed_pipeline() {
    let flow = Plain::start().await;
    let feeder = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(0..)).await }
    });
    eventually(|| {
        let m = flow.metrics();
        jammed(&m.stage("a").unwrap(), &m.stage("b").unwrap())
    })
    .await;
    assert!(matches!(flow.try_send(1), Err(genflow::SendError::Full(1))));
    let before = flow.metrics();
    flow.abort();
    // `abort` returns at once; the tasks stop at their next `.await`, and
    // `shutdown` returns once they all have.
    flow.shutdown().await;
    let after = flow.metrics();
    assert_settled(&after);
    assert_jam_accounted(&before, &after);
    assert_eq!(after.stage("b").unwrap().received, 16, "one in process, seven in its batch, eight queued\n{after}");
    // The feeder was refused once the input closed.
    assert!(feeder.await.unwrap().is_err());
}

#[tokio::test]
async fn abort_accounts_for_a_replicated_stage_sharing_one_queue() {
    let flow = Shared::start().await;
    let feeder = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(0..)).await }
    });
    eventually(|| {
        let m = flow.metrics();
        jammed(&m.stage("a").unwrap(), &m.stage("b").unwrap())
    })
    .await;
    // Let the shared queue fill up too, now that every replica is stuck.
    eventually(|| flow.metrics().stage("b").unwrap().queued == 8).await;
    let before = flow.metrics();
    flow.abort();
    flow.shutdown().await;
    let after = flow.metrics();
    assert_settled(&after);
    assert_jam_accounted(&before, &after);
    let b = after.stage("b").unwrap();
    // The shared queue's cleared items are counted on replica 0.
    let replica_0 = &before.stage("b").unwrap().replicas[0];
    assert_eq!(b.replicas[0].aborted, replica_0.received + 8, "{after}");
    assert!(feeder.await.unwrap().is_err());
}

#[tokio::test]
async fn abort_accounts_for_a_partitioned_stage() {
    let flow = Keyed::start().await;
    let feeder = tokio::spawn({
        let flow = flow.clone();
        async move { flow.feed(stream::iter(0..)).await }
    });
    eventually(|| {
        let m = flow.metrics();
        jammed(&m.stage("a").unwrap(), &m.stage("b").unwrap())
    })
    .await;
    let before = flow.metrics();
    let b0 = before.stage("b").unwrap();
    // Some partition queue is full: that is what `a` waits on.
    assert!(b0.replicas.iter().any(|r| r.queued == 8), "{before}");
    assert_eq!(b0.replicas.iter().map(|r| r.queued).sum::<u64>(), b0.queued);
    flow.abort();
    flow.shutdown().await;
    let after = flow.metrics();
    assert_settled(&after);
    assert_jam_accounted(&before, &after);
    // Each replica's partition queue is counted on that replica.
    let b = after.stage("b").unwrap();
    for (r0, r) in b0.replicas.iter().zip(&b.replicas) {
        assert_eq!(r.received, r0.received + r0.queued, "{after}");
        assert_eq!(r.aborted, r.received, "{after}");
    }
    assert!(feeder.await.unwrap().is_err());
}

#[tokio::test]
async fn abort_counts_outputs_waiting_in_a_reorder_point_as_dropped() {
    let flow = Ordered::start().await;
    // Item 0 holds one replica forever; the other replica does the rest,
    // whose outputs wait for item 0's in the reorder point.
    flow.send(0).await.unwrap();
    eventually(|| flow.metrics().stage("a").unwrap().received == 1).await;
    for i in 1..=10 {
        flow.send(i).await.unwrap();
        eventually(|| flow.metrics().stage("a").unwrap().processed == i).await;
    }
    assert_eq!(flow.metrics().stage("b").unwrap().received, 0);
    flow.abort();
    flow.shutdown().await;
    let after = flow.metrics();
    assert_settled(&after);
    let a = after.stage("a").unwrap();
    assert_eq!((a.received, a.processed, a.aborted), (11, 10, 1), "{after}");
    assert_eq!((a.emitted, a.dropped), (10, 10), "{after}");
    assert_eq!(after.stage("b").unwrap().received, 0, "{after}");
}
