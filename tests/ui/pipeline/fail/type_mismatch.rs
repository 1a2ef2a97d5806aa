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
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Numbers {
    type In = String;
    type Out = u64;
    async fn process(&mut self, _: String, _: &mut Emitter<u64>) {}
}

struct Texts;

impl GenServer for Texts {
    type Message = ();
    type Response = ();
    type Registry = Flow;
    fn new(_: Flow) -> Self {
        Texts
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Texts {
    type In = String;
    type Out = String;
    async fn process(&mut self, _: String, _: &mut Emitter<String>) {}
}

#[genflow::pipeline{ numbers: Numbers, texts: Texts }]
struct Flow;

fn main() {}
