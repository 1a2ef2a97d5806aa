//! `make_registry` written inside `macro_rules!`: the attribute comes from
//! the macro, the struct, fields and entries from its caller (and the other
//! way round).
#![deny(warnings)]
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use genflow::GenServer;

macro_rules! registry {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($body:tt)* } servers { $($servers:tt)* }) => {
        $(#[$meta])*
        #[genflow::make_registry{ $($servers)* }]
        $vis struct $name { $($body)* }
    };
}

macro_rules! unit_registry {
    ($name:ident, $server:ident: $ty:ty) => {
        #[genflow::make_registry{ $server: $ty }]
        struct $name;
    };
}

// The whole item from the macro, nothing from the caller but the names.
macro_rules! fixed_registry {
    ($name:ident) => {
        #[genflow::make_registry{ counter: Counter<$name> }]
        struct $name {
            hits: Arc<AtomicUsize>,
        }
    };
}

struct Counter<R> {
    registry: R,
}

impl GenServer for Counter<App> {
    type Message = usize;
    type Response = usize;
    type Registry = App;
    fn new(registry: App) -> Self {
        Counter { registry }
    }
    async fn handle_call(&mut self, add: usize) -> usize {
        self.registry.hits.fetch_add(add, Ordering::SeqCst) + add
    }
    async fn handle_cast(&mut self, add: usize) {
        self.registry.hits.fetch_add(add, Ordering::SeqCst);
    }
}

impl GenServer for Counter<Fixed> {
    type Message = usize;
    type Response = usize;
    type Registry = Fixed;
    fn new(registry: Fixed) -> Self {
        Counter { registry }
    }
    async fn handle_call(&mut self, add: usize) -> usize {
        self.registry.hits.fetch_add(add, Ordering::SeqCst) + add
    }
    async fn handle_cast(&mut self, _: usize) {}
}

struct Echo;

impl GenServer for Echo {
    type Message = String;
    type Response = String;
    type Registry = Single;
    fn new(_: Single) -> Self {
        Echo
    }
    async fn handle_call(&mut self, message: String) -> String {
        message
    }
    async fn handle_cast(&mut self, _: String) {}
}

registry! {
    /// A registry declared through a macro.
    #[derive(Debug)]
    pub(crate) struct App {
        hits: Arc<AtomicUsize>,
        pub(crate) label: String,
        // Field names that are also names of the generated code's locals.
        __builder: u8,
        __registry: u16,
        __start: u32,
        message: u64,
    }
    servers { counter: Counter<App>, other: Counter<App>, }
}

unit_registry!(Single, echo: Echo);
fixed_registry!(Fixed);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let app = App::start(Arc::new(AtomicUsize::new(0)), "app".into(), 1, 2, 3, 4).await;
    assert_eq!(app.call_counter(2).await.unwrap(), 2);
    assert_eq!(app.call_other_with_timeout(3, std::time::Duration::from_secs(5)).await.unwrap(), 5);
    app.cast_counter(1).await.unwrap();
    app.try_cast_counter(1).unwrap();
    app.try_cast_other(0).unwrap();
    let copy = app.clone();
    assert_eq!((copy.label.as_str(), copy.__builder, copy.__registry, copy.__start, copy.message), ("app", 1, 2, 3, 4));
    assert_eq!(copy.call_counter(0).await.unwrap(), 7);
    app.shutdown().await;

    let single = Single::start().await;
    assert_eq!(single.call_echo("hi".into()).await.unwrap(), "hi");
    single.abort();

    let fixed = Fixed::start(Arc::new(AtomicUsize::new(10))).await;
    assert_eq!(fixed.call_counter(1).await.unwrap(), 11);
    fixed.shutdown().await;
}
