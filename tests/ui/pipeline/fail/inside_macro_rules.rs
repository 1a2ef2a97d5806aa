// Errors about the caller's tokens point at the caller's tokens, also when
// the attribute is written inside a macro.
use genflow::{Emitter, GenServer, Stage};

macro_rules! declare {
    ($name:ident { $($body:tt)* } $($field:ident: $ty:ty),*) => {
        #[genflow::pipeline{ $($body)* }]
        struct $name { $($field: $ty),* }
    };
}

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

struct NotClone;

declare!(Flow { numbers: Numbers, #[replicas(2)] again: Numbers } field: NotClone);

fn main() {}
