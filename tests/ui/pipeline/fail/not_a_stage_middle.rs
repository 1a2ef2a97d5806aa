// An entry that implements nothing, between two stages, is reported once,
// at the entry: the links into and out of it add nothing.
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

/// Implements nothing.
struct Nothing;

#[genflow::pipeline{ a: Double, nothing: Nothing, b: Double }]
struct Flow;

fn main() {}
