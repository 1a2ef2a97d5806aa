//! Servers generic over their registry through a helper trait with a
//! blanket impl: the registry's `Send` does not depend on its servers being
//! servers, so the compiler finds no cycle.
use genflow::GenServer;

trait Reg: Clone + Send + Sync + 'static {}

impl<T: Clone + Send + Sync + 'static> Reg for T {}

trait Peer {
    fn ask_peer(&self, n: u64) -> impl Future<Output = u64> + Send;
}

/// Doubles what it is sent; `Forward` asks the other server first.
struct Doubler<R> {
    registry: R,
}

enum Msg {
    Double(u64),
    Forward(u64),
}

impl<R: Reg + Peer> GenServer for Doubler<R> {
    type Message = Msg;
    type Response = u64;
    type Registry = R;
    fn new(registry: R) -> Self {
        Doubler { registry }
    }
    async fn handle_call(&mut self, message: Msg) -> u64 {
        match message {
            Msg::Double(n) => n * 2,
            Msg::Forward(n) => self.registry.ask_peer(n).await * 2,
        }
    }
    async fn handle_cast(&mut self, _: Msg) {}
}

#[genflow::make_registry{ front: Doubler<App>, back: Doubler<App> }]
struct App {
    label: &'static str,
}

impl Peer for App {
    async fn ask_peer(&self, n: u64) -> u64 {
        self.call_back(Msg::Double(n)).await.unwrap()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let app = App::start("blanket").await;
    assert_eq!(app.call_front(Msg::Forward(3)).await.unwrap(), 12);
    assert_eq!(app.call_back(Msg::Double(5)).await.unwrap(), 10);
    assert_eq!(app.label, "blanket");
    app.shutdown().await;
}
