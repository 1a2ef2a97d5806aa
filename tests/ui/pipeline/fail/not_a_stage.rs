use genflow::GenServer;

struct Plain;

impl GenServer for Plain {
    type Message = ();
    type Response = ();
    type Registry = Flow;
    fn new(_: Flow) -> Self {
        Plain
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

#[genflow::pipeline{ plain: Plain }]
struct Flow;

fn main() {}
