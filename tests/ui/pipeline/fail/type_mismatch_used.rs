// A stage whose `Out` is not the next stage's `In` is reported once, at
// the stage: code starting the pipeline adds no error.
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

/// Takes text.
struct Texts;

impl GenServer for Texts {
    type Message = ();
    type Response = ();
    type Registry = Flow;
    fn new(_: Flow) -> Self {
        Texts
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Texts {
    type In = String;
    type Out = String;
    async fn process(&mut self, text: String, out: &mut Emitter<String>) {
        out.emit(text).await;
    }
}

#[genflow::pipeline{ a: Double, texts: Texts }]
struct Flow;

async fn used() -> Result<(), Box<dyn std::error::Error>> {
    let flow = Flow::start().await;
    let _output: Option<genflow::Output<String>> = flow.output();
    flow.send(1).await?;
    flow.shutdown().await;
    let flow = Flow::builder().replicas("texts", 2).start().await?;
    flow.shutdown().await;
    Ok(())
}

fn main() {
    drop(used());
}
