//! A stage of another registry: one error, naming both, at the entry;
//! starting the pipeline adds none.
use genflow::{Emitter, GenServer, Stage};

struct Double;

impl GenServer for Double {
    type Message = ();
    type Response = ();
    type Registry = Other;
    fn new(_: Other) -> Self {
        Double
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Double {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit(2 * n).await;
    }
}

#[genflow::pipeline{ double: Double }]
struct Other;

#[genflow::pipeline{ double: Double }]
struct Flow;

async fn used() {
    let flow = Flow::start().await;
    flow.shutdown().await;
}

fn main() {
    drop(used());
}
