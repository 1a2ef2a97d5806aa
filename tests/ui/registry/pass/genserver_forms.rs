//! Every registry form genserver 0.2.2 documents (its crate docs and its
//! tests), written for genflow: the attribute and the struct are unchanged,
//! the handlers are `async fn` or return a future.
#![deny(warnings)]
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use genflow::{GenServer, make_registry};

// The crate-level example: a unit registry, one entry, no trailing comma.
struct MyServer {
    registry: MyRegistry,
}

impl GenServer for MyServer {
    // Message type for this server.
    type Message = String;
    // The type of the registry defined by the `make_registry` attribute macro.
    type Registry = MyRegistry;
    // The response type for calls.
    type Response = String;

    fn new(registry: Self::Registry) -> Self {
        Self { registry }
    }

    // A handler that returns a ready future, as genserver's did.
    fn handle_call(&mut self, message: Self::Message) -> impl Future<Output = Self::Response> + Send {
        println!("handle_call received {}", message);
        std::future::ready("returned from handle_call".into())
    }

    fn handle_cast(&mut self, message: Self::Message) -> impl Future<Output = ()> + Send {
        println!("handle_cast received {}", message);
        let _ = &self.registry;
        std::future::ready(())
    }

    fn channel_queue_size() -> usize {
        10
    }
}

#[make_registry{
    myserver: MyServer
}]
struct MyRegistry;

// A stateful server, its state set by messages.
pub struct MyStatefulServer {
    map: HashMap<String, String>,
    initial: Option<Vec<String>>,
}

#[derive(Debug)]
pub enum StatefulMessage {
    Insert(String, String),
    Get(String),
    InitState(Vec<String>),
}

#[derive(Debug, PartialEq)]
pub enum StatefulResponse {
    Ok,
    Value(Option<String>),
}

impl GenServer for MyStatefulServer {
    type Message = StatefulMessage;
    type Registry = Stateful;
    type Response = StatefulResponse;

    fn new(_registry: Self::Registry) -> Self {
        MyStatefulServer { map: HashMap::new(), initial: None }
    }

    // A handler that returns an `async` block borrowing `self`.
    fn handle_call(&mut self, message: Self::Message) -> impl Future<Output = Self::Response> + Send {
        async move {
            match message {
                StatefulMessage::Insert(key, value) => {
                    self.map.insert(key, value);
                    StatefulResponse::Ok
                }
                StatefulMessage::Get(key) => StatefulResponse::Value(self.map.get(&key).cloned()),
                StatefulMessage::InitState(values) => {
                    self.initial = Some(values);
                    StatefulResponse::Ok
                }
            }
        }
    }

    async fn handle_cast(&mut self, _message: Self::Message) {}
}

#[make_registry{ stateful: MyStatefulServer }]
pub struct Stateful;

// The form of genserver's tests: items declared inside a function, the same
// server type under two names, a registry field, servers calling each other.
async fn two_servers_one_type() {
    struct Relay {
        registry: Relays,
    }

    impl GenServer for Relay {
        type Message = String;
        type Registry = Relays;
        type Response = String;

        fn new(registry: Self::Registry) -> Self {
            Self { registry }
        }

        async fn handle_call(&mut self, message: Self::Message) -> Self::Response {
            self.registry.counter.fetch_add(1, Ordering::SeqCst);
            format!("in handle_call, received {}", message)
        }

        async fn handle_cast(&mut self, message: Self::Message) {
            self.registry.counter.fetch_add(1, Ordering::SeqCst);
            let response = self.registry.call_myserver2(format!("relayed {message}")).await.unwrap();
            assert_eq!(response, format!("in handle_call, received relayed {message}"));
        }
    }

    #[make_registry{
        myserver1: Relay,
        myserver2: Relay,
    }]
    struct Relays {
        counter: Arc<AtomicUsize>,
    }

    let counter = Arc::new(AtomicUsize::new(0));
    let registry = Relays::start(counter.clone()).await;
    let response = registry.call_myserver1("hi".into()).await.unwrap();
    assert_eq!("in handle_call, received hi", &response);
    let response = registry.call_myserver1_with_timeout("hi".into(), Duration::from_secs(5)).await.unwrap();
    assert_eq!("in handle_call, received hi", &response);
    registry.cast_myserver1("woohoo!".into()).await.unwrap();
    // Graceful: the cast, and the call it makes, are handled first.
    registry.shutdown().await;
    assert_eq!(counter.load(Ordering::SeqCst), 4);
}

// The registry of the `make_registry` docs: fields, no servers yet.
#[make_registry{}]
struct FieldsOnly {
    counter: Arc<AtomicUsize>,
}

fn main() {
    tokio_test::block_on(async {
        let registry = MyRegistry::start().await;
        let response = registry.call_myserver("calling myserver".into()).await.unwrap();
        assert_eq!(response, "returned from handle_call");
        registry.cast_myserver("casting to myserver".into()).await.unwrap();
        registry.shutdown().await;

        let stateful = Stateful::start().await;
        let init = StatefulMessage::InitState(vec!["one".into(), "two".into()]);
        assert_eq!(stateful.call_stateful(init).await.unwrap(), StatefulResponse::Ok);
        let insert = StatefulMessage::Insert("k".into(), "v".into());
        assert_eq!(stateful.call_stateful(insert).await.unwrap(), StatefulResponse::Ok);
        let get = StatefulMessage::Get("k".into());
        assert_eq!(stateful.call_stateful(get).await.unwrap(), StatefulResponse::Value(Some("v".into())));
        stateful.abort();

        two_servers_one_type().await;

        let fields = FieldsOnly::start(Arc::new(AtomicUsize::new(7))).await;
        assert_eq!(fields.clone().counter.load(Ordering::SeqCst), 7);
        fields.shutdown().await;
    });
}
