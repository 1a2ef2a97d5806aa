use genflow::GenServer;

struct A;

impl GenServer for A {
    type Message = ();
    type Response = ();
    type Registry = Other;
    fn new(_: Other) -> Self {
        A
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

#[derive(Clone)]
struct Other;

#[genflow::make_registry{ a: A }]
struct App;

fn main() {}
