//! The smallest registry: one server answering strings, called and cast to.
//!
//! ```text
//! cargo run --example hello
//! ```

use genflow::GenServer;

struct MyServer {
    // State goes here. The registry is kept so this server could call others.
    #[allow(dead_code)]
    registry: MyRegistry,
}

impl GenServer for MyServer {
    // What `call_myserver` and `cast_myserver` carry.
    type Message = String;
    // What a call returns.
    type Response = String;
    // The struct declared with `make_registry` below.
    type Registry = MyRegistry;

    fn new(registry: Self::Registry) -> Self {
        // Every server gets a copy of the registry when it starts.
        Self { registry }
    }

    // Calls wait for this response.
    async fn handle_call(&mut self, message: String) -> String {
        println!("handle_call received {message:?}");
        "returned from handle_call".into()
    }

    // Casts return as soon as the message is queued.
    async fn handle_cast(&mut self, message: String) {
        println!("handle_cast received {message:?}");
    }
}

#[genflow::make_registry{ myserver: MyServer }]
struct MyRegistry;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = MyRegistry::start().await;

    let response = registry.call_myserver("calling myserver".into()).await?;
    println!("call returned {response:?}");

    registry.cast_myserver("casting to myserver".into()).await?;

    // Graceful: the cast above is handled before the server stops.
    registry.shutdown().await;
    println!("shut down");
    Ok(())
}
