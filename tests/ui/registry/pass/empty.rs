//! A registry without servers, with and without fields, with and without
//! the (empty) braces.
#![deny(warnings)]
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

#[genflow::make_registry{}]
struct MyRegistry {
    counter: Arc<AtomicUsize>,
}

#[genflow::make_registry]
#[derive(Debug)]
struct Bare;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let registry = MyRegistry::start(Arc::new(AtomicUsize::new(0))).await;
    let copy = registry.clone();
    copy.counter.fetch_add(1, Ordering::SeqCst);
    assert_eq!(registry.counter.load(Ordering::SeqCst), 1);
    registry.shutdown().await;
    let bare = Bare::start().await;
    println!("{:?}", bare.clone());
    bare.abort();
}
