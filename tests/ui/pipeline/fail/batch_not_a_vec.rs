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

/// Takes one number at a time: not a batch stage.
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
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit(n).await;
    }
}

#[genflow::pipeline{
    numbers: Numbers,
    #[batch(size = 100, timeout = std::time::Duration::from_millis(50))]
    store: Store,
}]
struct Flow;

async fn used(flow: Flow) {
    flow.send("1".to_owned()).await.unwrap();
}

fn main() {
    let _ = used;
}
