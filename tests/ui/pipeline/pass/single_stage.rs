//! A one-stage pipeline whose messages are not `Clone`: the `_all` methods
//! exist but are only usable with `Clone` messages, so this still compiles.
#![deny(warnings)]

use genflow::{Emitter, GenServer, Stage};

struct NotClone;

struct Only;

impl GenServer for Only {
    type Message = NotClone;
    type Response = ();
    type Registry = One;
    fn new(_: One) -> Self {
        Only
    }
    async fn handle_call(&mut self, _: NotClone) {}
    async fn handle_cast(&mut self, _: NotClone) {}
}

impl Stage for Only {
    type In = String;
    type Out = usize;
    async fn process(&mut self, item: String, out: &mut Emitter<usize>) {
        out.emit(item.len()).await;
    }
}

#[genflow::pipeline{ only: Only }]
struct One;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let one = One::start().await;
    one.send("abc".into()).await.unwrap();
    one.call_only(NotClone).await.unwrap();
    one.shutdown().await;
    assert_eq!(one.metrics().stage("only").unwrap().emitted, 1);
}
