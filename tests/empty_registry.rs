//! A `make_registry` struct with no servers yet (genserver 0.2.2's own
//! example of a registry holding only fields): it starts, holds its fields,
//! clones, and shuts down or aborts like a registry with servers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use genflow::make_registry;

#[make_registry{}]
struct MyRegistry {
    counter: Arc<AtomicUsize>,
    name: String,
}

#[make_registry{}]
struct Unit;

/// Longer than any of these steps may take; with paused time, reaching it
/// means the step never finished.
const LIMIT: Duration = Duration::from_secs(60);

fn registry() -> (Arc<AtomicUsize>, impl Future<Output = MyRegistry>) {
    let counter = Arc::new(AtomicUsize::new(0));
    (counter.clone(), MyRegistry::start(counter, "empty".to_string()))
}

#[tokio::test(start_paused = true)]
async fn start_passes_the_fields_through() {
    let (counter, start) = registry();
    let registry = tokio::time::timeout(LIMIT, start).await.expect("start returns");
    assert_eq!(registry.name, "empty");
    assert!(Arc::ptr_eq(&registry.counter, &counter));
    registry.counter.fetch_add(2, Ordering::SeqCst);
    assert_eq!(counter.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_fields() {
    let (counter, start) = registry();
    let registry = start.await;
    let copy = registry.clone();
    copy.counter.fetch_add(1, Ordering::SeqCst);
    assert_eq!(registry.counter.load(Ordering::SeqCst), 1);
    assert_eq!(copy.name, registry.name);
    // The test's `Arc`, plus one per copy.
    assert_eq!(Arc::strong_count(&counter), 3);
    drop(copy);
    assert_eq!(Arc::strong_count(&counter), 2);
    drop(registry);
    assert_eq!(Arc::strong_count(&counter), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_and_can_be_repeated_from_any_copy() {
    let (_, start) = registry();
    let registry = start.await;
    let copy = registry.clone();
    tokio::time::timeout(LIMIT, registry.shutdown()).await.expect("shutdown returns");
    tokio::time::timeout(LIMIT, copy.shutdown()).await.expect("a second shutdown returns");
    // Fields stay readable after shutdown.
    assert_eq!(copy.name, "empty");
}

#[tokio::test(start_paused = true)]
async fn abort_then_shutdown_returns() {
    let registry = Unit::start().await;
    registry.abort();
    registry.abort();
    tokio::time::timeout(LIMIT, registry.shutdown()).await.expect("shutdown after abort returns");
}

#[test]
fn dropping_it_after_its_runtime_ended_does_not_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (counter, start) = registry();
    let registry = runtime.block_on(start);
    drop(runtime);
    drop(registry);
    assert_eq!(Arc::strong_count(&counter), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_is_send_and_sync_and_static() {
    fn assert_registry<R: Clone + Send + Sync + 'static>(_: &R) {}
    let (_, start) = registry();
    let registry = start.await;
    assert_registry(&registry);
    let name = tokio::spawn({
        let registry = registry.clone();
        async move { registry.name.clone() }
    })
    .await
    .expect("the task ends");
    assert_eq!(name, "empty");
    registry.shutdown().await;
}
