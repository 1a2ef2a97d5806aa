use genflow::GenServer;

#[genflow::make_registry{ a: A }]
#[derive(Clone, Debug)]
struct App;

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

fn main() {}
