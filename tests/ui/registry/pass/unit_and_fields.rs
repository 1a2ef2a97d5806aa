use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use genflow::GenServer;

struct Hits {
    registry: WithFields,
}

impl GenServer for Hits {
    type Message = ();
    type Response = usize;
    type Registry = WithFields;
    fn new(registry: WithFields) -> Self {
        Hits { registry }
    }
    async fn handle_call(&mut self, _: ()) -> usize {
        self.registry.hits.fetch_add(1, Ordering::SeqCst) + 1
    }
    async fn handle_cast(&mut self, _: ()) {}
}

#[genflow::make_registry{ hits: Hits }]
struct WithFields {
    hits: Arc<AtomicUsize>,
    label: &'static str,
}

struct Nothing;

impl GenServer for Nothing {
    type Message = ();
    type Response = ();
    type Registry = Unit;
    fn new(_: Unit) -> Self {
        Nothing
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

#[genflow::make_registry{ nothing: Nothing }]
struct Unit;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let app = WithFields::start(Arc::new(AtomicUsize::new(0)), "label").await;
    assert_eq!(app.call_hits(()).await.unwrap(), 1);
    assert_eq!(app.label, "label");
    app.shutdown().await;
    let unit = Unit::start().await;
    unit.call_nothing(()).await.unwrap();
    unit.abort();
}
