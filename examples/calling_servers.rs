//! Servers calling each other through the registry, and a registry field
//! passed to `start` that every server reads.
//!
//! ```text
//! cargo run --example calling_servers
//! ```

use genflow::GenServer;

/// Hands out increasing ticket numbers.
struct Counter {
    next: u64,
}

impl GenServer for Counter {
    type Message = ();
    type Response = u64;
    type Registry = Greetings;

    fn new(_registry: Greetings) -> Self {
        Counter { next: 1 }
    }

    async fn handle_call(&mut self, _: ()) -> u64 {
        let ticket = self.next;
        self.next += 1;
        ticket
    }

    async fn handle_cast(&mut self, _: ()) {}
}

/// Greets people, numbering each greeting with a ticket from `Counter`.
struct Greeter {
    registry: Greetings,
}

impl GenServer for Greeter {
    type Message = String;
    type Response = String;
    type Registry = Greetings;

    fn new(registry: Greetings) -> Self {
        Greeter { registry }
    }

    async fn handle_call(&mut self, name: String) -> String {
        // One server calling another through the registry it got in `new`.
        let ticket = match self.registry.call_counter(()).await {
            Ok(ticket) => ticket.to_string(),
            Err(error) => format!("? ({error})"),
        };
        // A user field of the registry, read from inside a server.
        format!("{} {name}! You are visitor #{ticket}.", self.registry.prefix)
    }

    async fn handle_cast(&mut self, name: String) {
        println!("(greeter was told about {name})");
    }
}

#[genflow::make_registry{ counter: Counter, greeter: Greeter }]
struct Greetings {
    prefix: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let greetings = Greetings::start("Welcome,".to_string()).await;
    for name in ["Ada", "Grace", "Barbara"] {
        println!("{}", greetings.call_greeter(name.to_string()).await?);
    }
    greetings.cast_greeter("Edsger".to_string()).await?;
    println!("prefix field, read from outside too: {:?}", greetings.prefix);
    greetings.shutdown().await;
    Ok(())
}
