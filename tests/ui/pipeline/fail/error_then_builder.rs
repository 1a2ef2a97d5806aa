// A mistake in the attribute is reported once: the builder is still there,
// with `replicas`, `queue_size` and `start`, so code using it adds no error.
use genflow::{Emitter, GenServer, Stage};

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

#[genflow::pipeline{ #[replica(2)] double: Double, again: Double }]
struct Flow {
    factor: u64,
}

async fn used() -> Result<(), Box<dyn std::error::Error>> {
    let flow: Flow = Flow::builder(2).replicas("double", 4).queue_size("again", 100).start().await?;
    let failed: Result<Flow, genflow::ConfigError> = Flow::builder(3).replicas("tripple", 2).start().await;
    let _builder: genflow::Builder<Flow> = Flow::builder(flow.factor);
    flow.shutdown().await;
    drop(failed);
    Ok(())
}

fn main() {
    drop(used());
}
