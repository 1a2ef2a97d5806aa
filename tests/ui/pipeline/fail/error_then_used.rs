// A mistake in the attribute is reported once: the struct and every
// generated method are still there, so code using them adds no error.
use genflow::{Emitter, GenServer, Pipeline, Stage};

struct Double;

impl GenServer for Double {
    type Message = u64;
    type Response = u64;
    type Registry = Flow;
    fn new(registry: Flow) -> Self {
        let _copy: Flow = registry.clone();
        Double
    }
    async fn handle_call(&mut self, m: u64) -> u64 {
        m
    }
    async fn handle_cast(&mut self, _: u64) {}
}

impl Stage for Double {
    type In = u64;
    type Out = String;
    async fn process(&mut self, x: u64, out: &mut Emitter<String>) {
        out.emit((x * 2).to_string()).await;
    }
}

#[genflow::pipeline{ #[replicas(2, fast)] double: Double }]
struct Flow {
    label: &'static str,
}

async fn generic<P: Pipeline<In = u64, Out = String>>(pipeline: &P) -> usize {
    pipeline.feed(futures::stream::iter([1, 2])).await.unwrap()
}

async fn used() -> Result<(), Box<dyn std::error::Error>> {
    let flow = Flow::start("x").await;
    let output: Option<genflow::Output<String>> = flow.output();
    flow.send(1).await?;
    flow.try_send(2)?;
    let _sink = flow.sink();
    let _sink = flow.sink_double();
    let n: usize = generic(&flow).await;
    let doubled: u64 = flow.call_double(n as u64).await?;
    let _ = flow.call_double_with_timeout(doubled, std::time::Duration::from_secs(1)).await?;
    flow.cast_double(3).await?;
    flow.try_cast_double(4)?;
    let all: Vec<u64> = flow.call_double_all(5).await?;
    flow.cast_double_all(all[0]).await?;
    let _metrics: genflow::Metrics = flow.metrics();
    flow.shutdown().await;
    flow.abort();
    drop((output, flow.label));
    Ok(())
}

fn main() {
    drop(used());
}
