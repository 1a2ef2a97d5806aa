//! User types named like std items do not break the expansion.
#![allow(dead_code)]

use genflow::GenServer;

struct Result;
struct Option;
struct Clone;
struct Duration;
struct Vec;
struct Box;
struct Send;
trait Future {}

struct S;

impl GenServer for S {
    type Message = ();
    type Response = ();
    type Registry = R;
    fn new(_: R) -> Self {
        S
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

#[genflow::make_registry{ s: S }]
struct R;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let r = R::start().await;
        r.call_s(()).await.unwrap();
        r.call_s_with_timeout((), std::time::Duration::from_secs(1)).await.unwrap();
        r.shutdown().await;
    });
}
