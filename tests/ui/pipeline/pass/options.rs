use futures::StreamExt;
use genflow::{Emitter, GenServer, Stage};

#[derive(Clone)]
struct Item {
    user: u32,
}

impl Item {
    fn user(&self) -> u32 {
        self.user
    }
}

fn key(item: &Item) -> &u32 {
    &item.user
}

struct Pass;

impl GenServer for Pass {
    type Message = u8;
    type Response = u8;
    type Registry = Flow;
    fn new(_: Flow) -> Self {
        Pass
    }
    async fn handle_call(&mut self, m: u8) -> u8 {
        m
    }
    async fn handle_cast(&mut self, _: u8) {}
}

impl Stage for Pass {
    type In = Item;
    type Out = Item;
    async fn process(&mut self, item: Item, out: &mut Emitter<Item>) {
        out.emit(item).await;
    }
}

struct Count<T>(std::marker::PhantomData<T>);

impl<T: Send + 'static> GenServer for Count<T> {
    type Message = ();
    type Response = ();
    type Registry = Flow;
    fn new(_: Flow) -> Self {
        Count(std::marker::PhantomData)
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl<T: Send + 'static> Stage for Count<T> {
    type In = T;
    type Out = u32;
    async fn process(&mut self, _: T, out: &mut Emitter<u32>) {
        out.emit(1).await;
    }
}

#[genflow::pipeline{
    first: Pass,
    #[replicas(3)]
    spread: Pass,
    #[replicas(2, partition_by = Item::user)]
    by_user: Pass,
    #[replicas(2, partition_by = key)]
    by_key: Pass,
    count: Count<Item>,
}]
struct Flow {
    name: &'static str,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let flow = Flow::start("flow").await;
    let output = flow.output().unwrap();
    flow.feed(futures::stream::iter((0..10).map(|user| Item { user }))).await.unwrap();
    assert_eq!(flow.call_spread_all(7).await.unwrap(), vec![7, 7, 7]);
    flow.cast_by_user_all(1).await.unwrap();
    assert_eq!(flow.name, "flow");
    flow.shutdown().await;
    assert_eq!(output.count().await, 10);
}
