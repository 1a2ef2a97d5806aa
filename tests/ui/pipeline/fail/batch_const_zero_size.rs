use genflow::{Emitter, GenServer, Stage};

const SIZE: usize = 0;

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
    type In = Vec<u64>;
    type Out = usize;
    async fn process(&mut self, batch: Vec<u64>, out: &mut Emitter<usize>) {
        out.emit(batch.len()).await;
    }
}

#[genflow::pipeline{ #[batch(size = SIZE, timeout = std::time::Duration::from_millis(50))] store: Store }]
struct Flow;

fn main() {}
