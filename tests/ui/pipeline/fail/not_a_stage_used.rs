// An entry that is not a stage is reported once at the entry; each use of
// the pipeline then adds one error that names only the user's types.
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

async fn used() {
    let flow = Flow::start().await;
    flow.shutdown().await;
}

fn main() {
    drop(used());
}
