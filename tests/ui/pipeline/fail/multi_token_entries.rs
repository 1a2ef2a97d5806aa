// Entries written over several tokens: one that is no stage is reported
// once, under the whole type, and so is a stage whose `Out` is not the next
// stage's `In`. Two mistakes, two errors.
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

/// A stage passing its items on, generic over them.
struct Pass<T>(T);

impl<T: Send + 'static> GenServer for Pass<T> {
    type Message = ();
    type Response = ();
    type Registry = Flow;
    fn new(_: Flow) -> Self {
        unimplemented!()
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl<T: Send + 'static> Stage for Pass<T> {
    type In = T;
    type Out = T;
    async fn process(&mut self, x: T, out: &mut Emitter<T>) {
        out.emit(x).await;
    }
}

mod inner {
    /// No stage.
    pub struct Wrap<T>(pub T);
}

#[genflow::pipeline{ a: Pass<u32>, b: Double, c: inner::Wrap<u64>, d: Pass<u64>, e: Pass<u64> }]
struct Flow;

fn main() {}
