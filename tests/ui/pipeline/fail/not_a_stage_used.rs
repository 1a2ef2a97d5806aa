// An entry that is not a stage is reported once, at the entry; a call of a
// generated method adds one error naming the entry and the trait it lacks.
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

// (A method no other crate's trait defines, so the error reads the same
// whatever else is in the dependency graph.)
async fn used(flow: Flow) {
    let _ = flow.call_plain(()).await;
}

fn main() {
    let _ = used;
}
