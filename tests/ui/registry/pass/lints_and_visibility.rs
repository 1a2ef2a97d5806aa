//! The expansion passes strict lints, and a `pub` registry in a module is
//! usable from outside it.
#![deny(warnings, missing_docs, unreachable_pub, rust_2018_idioms)]

/// Servers, public so the lints see every item as reachable.
pub mod servers {
    use genflow::GenServer;

    /// A documented server.
    pub struct Echo;

    impl GenServer for Echo {
        type Message = u8;
        type Response = u8;
        type Registry = Registry;
        fn new(_: Registry) -> Self {
            Echo
        }
        async fn handle_call(&mut self, message: u8) -> u8 {
            message
        }
        async fn handle_cast(&mut self, _: u8) {}
    }

    /// A documented registry.
    #[derive(Debug)]
    #[genflow::make_registry{ echo: Echo }]
    pub struct Registry {
        /// A documented field.
        pub name: String,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let registry = servers::Registry::start("echo".into()).await;
    assert_eq!(registry.call_echo(7).await.unwrap(), 7);
    println!("{registry:?}");
    registry.shutdown().await;
}
