//! Smoke test of a three-stage pipeline.
use futures::StreamExt;
use genflow::{Emitter, GenServer, Stage};

struct AddOne;
impl GenServer for AddOne {
    type Message = ();
    type Response = ();
    type Registry = P;
    fn new(_: P) -> Self {
        AddOne
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}
impl Stage for AddOne {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        out.emit(item + 1).await;
    }
}

struct Sum(u64);
impl GenServer for Sum {
    type Message = ();
    type Response = u64;
    type Registry = P;
    fn new(_: P) -> Self {
        Sum(0)
    }
    async fn handle_call(&mut self, _: ()) -> u64 {
        self.0
    }
    async fn handle_cast(&mut self, _: ()) {}
}
impl Stage for Sum {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        self.0 += item;
        out.emit(self.0).await;
    }
}

#[genflow::pipeline{ a: AddOne, #[replicas(1)] b: AddOne, sum: Sum }]
struct P;

#[tokio::test]
async fn smoke() {
    let p = P::start().await;
    let out = tokio::spawn(p.output().unwrap().collect::<Vec<u64>>());
    let to = std::time::Duration::from_secs(3);
    let n = tokio::time::timeout(to, p.feed(futures::stream::iter(0..10_000u64))).await;
    println!("feed: {n:?}\n{}", p.metrics());
    let n = n.unwrap().unwrap();
    assert_eq!(n, 10_000);
    let r = tokio::time::timeout(to, p.shutdown()).await;
    println!("shutdown: {r:?}\n{}", p.metrics());
    r.unwrap();
    let items: Vec<u64> = out.await.unwrap();
    assert_eq!(items.len(), 10_000);
    assert_eq!(*items.last().unwrap(), (2..10_002).sum::<u64>());
    println!("{}", p.metrics());
}
