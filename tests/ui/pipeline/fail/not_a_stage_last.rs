// An entry that is no stage, last, is reported once, at the entry: the link
// into it and the pipeline's output add nothing.
use genflow::{Emitter, GenServer, Stage};

/// A stage: doubles.
struct Double;

impl GenServer for Double {
    type Message = ();
    type Response = ();
    type Registry = Flow;
    fn new(_: Flow) -> Self {
        Double
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Double {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(x * 2).await;
    }
}

/// A server, but no stage.
struct Plain;

impl GenServer for Plain {
    type Message = ();
    type Response = ();
    type Registry = Flow;
    fn new(_: Flow) -> Self {
        Plain
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

#[genflow::pipeline{ a: Double, b: Double, plain: Plain }]
struct Flow;

fn main() {}
