//! Stages generic over their pipeline through a helper trait with a blanket
//! impl: the pipeline's `Send` does not depend on its stages being stages,
//! so the compiler finds no cycle.
use std::marker::PhantomData;

use genflow::{Emitter, GenServer, Stage};

trait Reg: Clone + Send + Sync + 'static {}

impl<T: Clone + Send + Sync + 'static> Reg for T {}

/// Adds its registry's `step` to every item; answers calls with how many
/// items it saw.
struct Add<R> {
    registry: R,
    seen: u64,
}

trait Step {
    fn step(&self) -> u64;
}

impl<R: Reg + Step> GenServer for Add<R> {
    type Message = ();
    type Response = u64;
    type Registry = R;
    fn new(registry: R) -> Self {
        Add { registry, seen: 0 }
    }
    async fn handle_call(&mut self, _: ()) -> u64 {
        self.seen
    }
    async fn handle_cast(&mut self, _: ()) {}
}

impl<R: Reg + Step> Stage for Add<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        out.emit(x + self.registry.step()).await;
    }
}

/// Turns numbers into text.
struct Show<R>(PhantomData<R>);

impl<R: Reg> GenServer for Show<R> {
    type Message = ();
    type Response = ();
    type Registry = R;
    fn new(_: R) -> Self {
        Show(PhantomData)
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl<R: Reg> Stage for Show<R> {
    type In = u64;
    type Out = String;
    async fn process(&mut self, x: u64, out: &mut Emitter<String>) {
        out.emit(x.to_string()).await;
    }
}

fn key(x: &u64) -> u64 {
    *x
}

#[genflow::pipeline{ first: Add<Flow>, #[replicas(2, partition_by = key)] second: Add<Flow>, show: Show<Flow> }]
struct Flow {
    step: u64,
}

impl Step for Flow {
    fn step(&self) -> u64 {
        self.step
    }
}

fn assert_pipeline<P: genflow::Pipeline<In = u64, Out = String>>(_: &P) {}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let flow = Flow::start(10).await;
    assert_pipeline(&flow);
    let output = flow.output().unwrap();
    flow.feed(futures::stream::iter([1, 2, 3])).await.unwrap();
    flow.shutdown().await;
    let mut out: Vec<String> = futures::StreamExt::collect(output).await;
    out.sort();
    assert_eq!(out, ["21", "22", "23"]);
    assert_eq!(flow.metrics().stage("second").unwrap().received, 3);
}
