use genflow::{Emitter, GenServer, Stage};

struct Numbers;

impl GenServer for Numbers {
    type Message = ();
    type Response = ();
    type Registry = Flow;
    fn new(_: Flow) -> Self {
        Numbers
    }
    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Numbers {
    type In = String;
    type Out = u64;
    async fn process(&mut self, _: String, _: &mut Emitter<u64>) {}
}

/// Takes batches of texts, but the stage before it emits numbers.
struct Store;

impl GenServer for Store {
    type Message = ();
    type Response = ();
    type Registry = Flow;
    fn new(_: Flow) -> Self {
        Store
    }
    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Store {
    type In = Vec<String>;
    type Out = usize;
    async fn process(&mut self, batch: Vec<String>, out: &mut Emitter<usize>) {
        out.emit(batch.len()).await;
    }
}

#[genflow::pipeline{
    numbers: Numbers,
    #[batch(size = 100, timeout = std::time::Duration::from_millis(50))]
    store: Store,
}]
struct Flow;

fn main() {}
