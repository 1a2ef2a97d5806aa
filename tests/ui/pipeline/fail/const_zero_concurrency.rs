use genflow::{Emitter, GenServer, Stage};

const NONE: usize = 0;

struct A;
impl GenServer for A {
    type Message = ();
    type Response = ();
    type Registry = Flow;
    fn new(_: Flow) -> Self {
        A
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}
impl Stage for A {
    type In = u8;
    type Out = u8;
    async fn process(&mut self, x: u8, out: &mut Emitter<u8>) {
        out.emit(x).await;
    }
}

#[genflow::pipeline{ #[concurrency(NONE, ordered)] a: A }]
struct Flow;

fn main() {}
