use genflow::GenServer;

struct Worker<T> {
    last: Option<T>,
}

impl<T: Send + 'static> GenServer for Worker<T> {
    type Message = T;
    type Response = Option<T>;
    type Registry = Workers;
    fn new(_: Workers) -> Self {
        Worker { last: None }
    }
    async fn handle_call(&mut self, message: T) -> Option<T> {
        self.last.replace(message)
    }
    async fn handle_cast(&mut self, message: T) {
        self.last = Some(message);
    }
}

mod nested {
    pub(crate) struct Path;
}

impl GenServer for nested::Path {
    type Message = ();
    type Response = ();
    type Registry = Workers;
    fn new(_: Workers) -> Self {
        nested::Path
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

#[genflow::make_registry{ w: Worker<u8>, s: Worker<String>, p: nested::Path }]
struct Workers;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let workers = Workers::start().await;
    assert_eq!(workers.call_w(1).await.unwrap(), None);
    assert_eq!(workers.call_s("a".into()).await.unwrap(), None);
    workers.call_p(()).await.unwrap();
    workers.shutdown().await;
}
