//! A registry builder has no `replicas`: a server runs once.
use genflow::GenServer;

struct A;
impl GenServer for A {
    type Message = ();
    type Response = ();
    type Registry = App;
    fn new(_: App) -> Self {
        A
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

#[genflow::make_registry{ a: A }]
struct App;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _ = App::builder().replicas("a", 2).start().await;
}
