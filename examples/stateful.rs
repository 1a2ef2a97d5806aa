//! A stateful key-value server: an enum of messages, `init` and `terminate`
//! hooks, a call with a timeout, `try_cast`, and the errors after shutdown.
//!
//! ```text
//! cargo run --example stateful
//! ```

use std::{collections::HashMap, time::Duration};

use genflow::{GenServer, SendError};

#[derive(Debug)]
enum Request {
    Put(String, String),
    Get(String),
    Delete(String),
}

#[derive(Debug, PartialEq)]
enum Reply {
    Value(Option<String>),
    Done,
}

struct Kv {
    map: HashMap<String, String>,
}

impl Kv {
    fn apply(&mut self, request: Request) -> Reply {
        match request {
            Request::Put(key, value) => {
                self.map.insert(key, value);
                Reply::Done
            }
            Request::Get(key) => Reply::Value(self.map.get(&key).cloned()),
            Request::Delete(key) => Reply::Value(self.map.remove(&key)),
        }
    }
}

impl GenServer for Kv {
    type Message = Request;
    type Response = Reply;
    type Registry = Store;

    fn new(_registry: Store) -> Self {
        Kv { map: HashMap::new() }
    }

    async fn init(&mut self) {
        println!("init: kv server starting with {} keys", self.map.len());
    }

    async fn terminate(&mut self) {
        println!("terminate: kv server stopping with {} keys", self.map.len());
    }

    async fn handle_call(&mut self, request: Request) -> Reply {
        self.apply(request)
    }

    async fn handle_cast(&mut self, request: Request) {
        self.apply(request);
    }

    fn channel_queue_size() -> usize {
        16
    }
}

#[genflow::make_registry{ kv: Kv }]
struct Store;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::start().await;

    store.cast_kv(Request::Put("lang".into(), "rust".into())).await?;
    store.try_cast_kv(Request::Put("runtime".into(), "tokio".into()))?;
    let lang = store.call_kv(Request::Get("lang".into())).await?;
    println!("get lang -> {lang:?}");

    let runtime = store.call_kv_with_timeout(Request::Get("runtime".into()), Duration::from_secs(1)).await?;
    println!("get runtime (1 s timeout) -> {runtime:?}");

    let removed = store.call_kv(Request::Delete("lang".into())).await?;
    println!("delete lang -> {removed:?}");

    store.shutdown().await;

    // After shutdown, calls and casts fail, and hand the message back.
    let error = store.call_kv(Request::Get("runtime".into())).await.unwrap_err();
    println!("call after shutdown: {error}");
    println!("  message handed back: {:?}", error.into_message());
    match store.try_cast_kv(Request::Delete("runtime".into())) {
        Err(SendError::Closed(message)) => println!("try_cast after shutdown: closed, got back {message:?}"),
        other => println!("try_cast after shutdown: {other:?}"),
    }
    Ok(())
}
