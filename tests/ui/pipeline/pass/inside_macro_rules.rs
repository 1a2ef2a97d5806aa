//! `pipeline` written inside `macro_rules!`, with stage attributes and
//! fields from the macro's caller.
#![deny(warnings)]
use futures::StreamExt;
use genflow::{Emitter, GenServer, Pipeline, Stage};

macro_rules! declare {
    ($name:ident { $($body:tt)* }) => {
        #[genflow::pipeline{ $($body)* }]
        struct $name;
    };
    ($name:ident { $($body:tt)* } fields { $($fields:tt)* }) => {
        #[genflow::pipeline{ $($body)* }]
        struct $name { $($fields)* }
    };
}

#[derive(Clone, Debug, PartialEq)]
struct Item {
    user: u32,
}

impl Item {
    fn user(&self) -> u32 {
        self.user
    }
}

/// Adds one to the user of every item; a call returns how many it saw.
struct AddOne<R> {
    seen: u32,
    _registry: std::marker::PhantomData<R>,
}

impl<R: Clone + Send + Sync + 'static> GenServer for AddOne<R> {
    type Message = ();
    type Response = u32;
    type Registry = R;
    fn new(_: R) -> Self {
        AddOne { seen: 0, _registry: std::marker::PhantomData }
    }
    async fn handle_call(&mut self, _: ()) -> u32 {
        self.seen
    }
    async fn handle_cast(&mut self, _: ()) {}
}

impl<R: Clone + Send + Sync + 'static> Stage for AddOne<R> {
    type In = Item;
    type Out = Item;
    async fn process(&mut self, item: Item, out: &mut Emitter<Item>) {
        self.seen += 1;
        out.emit(Item { user: item.user + 1 }).await;
    }
}

declare!(Flow { #[replicas(2)] a: AddOne<Flow> });

declare!(Wide {
    first: AddOne<Wide>,
    #[replicas(2, partition_by = Item::user)]
    keyed: AddOne<Wide>,
    #[replicas(3, ordered)]
    ordered: AddOne<Wide>,
} fields {
    name: &'static str,
    __builder: u8,
    __plumbing: u8,
    item: u8,
});

async fn drive<P: Pipeline<In = Item, Out = Item>>(pipeline: &P, n: u32) -> Vec<Item> {
    let output = pipeline.output().unwrap();
    pipeline.feed(futures::stream::iter((0..n).map(|user| Item { user }))).await.unwrap();
    pipeline.shutdown().await;
    output.collect().await
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let flow = Flow::start().await;
    assert_eq!(flow.call_a_all(()).await.unwrap(), vec![0, 0]);
    let mut users: Vec<u32> = drive(&flow, 10).await.into_iter().map(|i| i.user).collect();
    users.sort();
    assert_eq!(users, (1..11).collect::<Vec<_>>());
    assert_eq!(flow.metrics().stage("a").unwrap().processed, 10);

    let wide = Wide::start("wide", 1, 2, 3).await;
    assert_eq!((wide.name, wide.__builder, wide.__plumbing, wide.item), ("wide", 1, 2, 3));
    assert_eq!(wide.call_first(()).await.unwrap(), 0);
    wide.cast_keyed_all(()).await.unwrap();
    let output = wide.output().unwrap();
    for user in 0..20 {
        wide.send(Item { user }).await.unwrap();
    }
    wide.try_send(Item { user: 20 }).unwrap();
    drop(wide.sink_ordered());
    wide.shutdown().await;
    // `keyed` spreads the items over its replicas, so only the set is known.
    let mut users: Vec<u32> = output.map(|i| i.user).collect().await;
    users.sort();
    assert_eq!(users, (3..24).collect::<Vec<_>>());
    assert_eq!(wide.metrics().stage("ordered").unwrap().processed, 21);
}
