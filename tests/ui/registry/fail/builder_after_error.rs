// A mistake in the attribute is reported once: the builder is still there,
// with `queue_size` and `start`, so code using it adds no error.
use genflow::GenServer;

struct Counter(u64);

impl GenServer for Counter {
    type Message = u64;
    type Response = u64;
    type Registry = App;
    fn new(registry: App) -> Self {
        Counter(registry.start)
    }
    async fn handle_call(&mut self, m: u64) -> u64 {
        self.0 += m;
        self.0
    }
    async fn handle_cast(&mut self, m: u64) {
        self.0 += m;
    }
}

#[genflow::make_registry{ counter: Counter, counter: Counter }]
struct App {
    start: u64,
}

async fn used() -> Result<(), Box<dyn std::error::Error>> {
    let app: App = App::builder(1).queue_size("counter", 10).start().await?;
    let total: u64 = app.call_counter(2).await?;
    app.shutdown().await;
    drop(total);
    Ok(())
}

fn main() {
    drop(used());
}
