// A mistake in the attribute is reported once: the struct and every
// generated method are still there, so code using them adds no error.
use genflow::GenServer;

struct Counter(u64);

impl GenServer for Counter {
    type Message = u64;
    type Response = u64;
    type Registry = App;
    fn new(registry: App) -> Self {
        Counter(registry.clone().start)
    }
    async fn handle_call(&mut self, m: u64) -> u64 {
        self.0 += m;
        self.0
    }
    async fn handle_cast(&mut self, m: u64) {
        self.0 += m;
    }
}

#[genflow::make_registry{ #[replicas(2)] counter: Counter, other: Counter }]
struct App {
    start: u64,
}

async fn used() -> Result<(), Box<dyn std::error::Error>> {
    let app = App::start(1).await;
    let total: u64 = app.call_counter(2).await?;
    let _ = app.call_other_with_timeout(total, std::time::Duration::from_secs(1)).await?;
    app.cast_counter(3).await?;
    app.try_cast_other(4)?;
    app.shutdown().await;
    app.abort();
    Ok(())
}

fn main() {
    drop(used());
}
