//! A stage generic over its pipeline, used at several places of it.
use std::marker::PhantomData;

use genflow::{Emitter, GenServer, Stage};

struct Pass<R>(PhantomData<R>);

impl<R: Clone + Send + Sync + 'static> GenServer for Pass<R> {
    type Message = ();
    type Response = ();
    type Registry = R;
    fn new(_: R) -> Self {
        Pass(PhantomData)
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl<R: Clone + Send + Sync + 'static> Stage for Pass<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(x).await;
    }
}

fn key(x: &u64) -> u64 {
    *x % 7
}

#[genflow::pipeline{ a: Pass<Flow>, #[replicas(4)] b: Pass<Flow>, #[replicas(2, partition_by = key)] c: Pass<Flow> }]
struct Flow {
    label: &'static str,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let flow = Flow::start("generic").await;
    let output = flow.output().unwrap();
    flow.send(1).await.unwrap();
    flow.shutdown().await;
    assert_eq!(futures::StreamExt::collect::<Vec<u64>>(output).await, [1]);
    assert_eq!(flow.label, "generic");
}
