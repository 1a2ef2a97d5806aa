//! Replica counts given by the path of a `const usize`, alone and with each
//! option.
use genflow::{Emitter, GenServer, Stage};

mod sizes {
    pub const WORKERS: usize = 3;
}
const ORDERED: usize = 2;

struct Pass;

impl GenServer for Pass {
    type Message = ();
    type Response = ();
    type Registry = Flow;
    fn new(_: Flow) -> Self {
        Pass
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Pass {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(x).await;
    }
}

fn key(x: &u64) -> u64 {
    *x % 7
}

#[genflow::pipeline{
    #[replicas(sizes::WORKERS)] a: Pass,
    #[replicas(ORDERED, ordered)] b: Pass,
    #[replicas(self::sizes::WORKERS, partition_by = key)] c: Pass,
}]
struct Flow;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let flow = Flow::start().await;
    let replicas: Vec<usize> = flow.metrics().stages().iter().map(|s| s.replicas.len()).collect();
    assert_eq!(replicas, [3, 2, 3]);
    flow.shutdown().await;
}
