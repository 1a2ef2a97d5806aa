//! Integration tests of `make_registry` registries: each fix over genserver
//! 0.2.2 has its own test here.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use genflow::{CallError, GenServer, SendError};
use tokio::sync::{Notify, Semaphore, mpsc};

/// State shared by the test and every server, through the registry's field.
struct Shared {
    news: AtomicUsize,
    inits: AtomicUsize,
    terminates: AtomicUsize,
    /// `Msg::Wait` takes one permit before it returns.
    gate: Semaphore,
    /// `init` waits for this when `hold_init` is set.
    init_gate: Notify,
    hold_init: bool,
    /// `terminate` reports the server's name and count here.
    terminated: mpsc::UnboundedSender<(&'static str, u64)>,
}

fn shared(hold_init: bool) -> (Arc<Shared>, mpsc::UnboundedReceiver<(&'static str, u64)>) {
    let (terminated, rx) = mpsc::unbounded_channel();
    let shared = Shared {
        news: AtomicUsize::new(0),
        inits: AtomicUsize::new(0),
        terminates: AtomicUsize::new(0),
        gate: Semaphore::new(0),
        init_gate: Notify::new(),
        hold_init,
        terminated,
    };
    (Arc::new(shared), rx)
}

#[derive(Debug, PartialEq)]
enum Msg {
    Add(u64),
    Get,
    /// Waits for a permit of `Shared::gate`, then records `n`.
    Wait(u64),
    Panic,
    CallSelf,
    CastSelfTwice,
    CallOther(u64),
    ShutdownFromInside,
}

#[derive(Debug, PartialEq)]
enum Reply {
    Count(u64),
    Seen(Vec<u64>),
    SelfCall(bool),
    Casts(bool, bool),
    Done,
}

/// A server with a queue of `Q` messages.
struct Probe<const Q: usize> {
    registry: App,
    count: u64,
    seen: Vec<u64>,
}

impl<const Q: usize> Probe<Q> {
    async fn handle(&mut self, message: Msg) -> Reply {
        match message {
            Msg::Add(n) => {
                self.count += n;
                self.seen.push(n);
                Reply::Count(self.count)
            }
            Msg::Get => Reply::Count(self.count),
            Msg::Wait(n) => {
                self.registry.shared.gate.acquire().await.unwrap().forget();
                self.seen.push(n);
                Reply::Seen(self.seen.clone())
            }
            Msg::Panic => panic!("probe asked to panic"),
            Msg::CallSelf => {
                let result = if Q == 1 {
                    self.registry.call_small(Msg::Get).await
                } else {
                    self.registry.call_probe(Msg::Get).await
                };
                Reply::SelfCall(matches!(result, Err(CallError::SelfCall(Msg::Get))))
            }
            Msg::CastSelfTwice => {
                // The small server's queue has room for one message.
                let first = self.registry.cast_small(Msg::Add(1)).await;
                let second = self.registry.cast_small(Msg::Add(1)).await;
                Reply::Casts(first.is_ok(), matches!(second, Err(SendError::Full(Msg::Add(1)))))
            }
            Msg::CallOther(n) => {
                let Ok(Reply::Count(c)) = self.registry.call_probe(Msg::Add(n)).await else {
                    panic!("the other server did not answer");
                };
                Reply::Count(c)
            }
            Msg::ShutdownFromInside => {
                self.registry.shutdown().await;
                Reply::Done
            }
        }
    }
}

impl<const Q: usize> GenServer for Probe<Q> {
    type Message = Msg;
    type Response = Reply;
    type Registry = App;

    fn new(registry: App) -> Self {
        registry.shared.news.fetch_add(1, Ordering::SeqCst);
        Probe { registry, count: 0, seen: Vec::new() }
    }

    async fn init(&mut self) {
        if self.registry.shared.hold_init {
            self.registry.shared.init_gate.notified().await;
        }
        self.registry.shared.inits.fetch_add(1, Ordering::SeqCst);
    }

    async fn terminate(&mut self) {
        self.registry.shared.terminates.fetch_add(1, Ordering::SeqCst);
        let name = if Q == 1 { "small" } else { "probe" };
        let _ = self.registry.shared.terminated.send((name, self.count));
    }

    async fn handle_call(&mut self, message: Msg) -> Reply {
        self.handle(message).await
    }

    async fn handle_cast(&mut self, message: Msg) {
        self.handle(message).await;
    }

    fn channel_queue_size() -> usize {
        Q
    }
}

#[genflow::make_registry{ probe: Probe<1000>, small: Probe<1> }]
struct App {
    shared: Arc<Shared>,
}

/// Waits for `n` terminate reports, failing after a generous deadline.
async fn terminated(rx: &mut mpsc::UnboundedReceiver<(&'static str, u64)>, n: usize) -> Vec<(&'static str, u64)> {
    let mut reports = Vec::new();
    while reports.len() < n {
        let report = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("servers did not terminate in time")
            .expect("terminate channel closed");
        reports.push(report);
    }
    reports.sort();
    reports
}

/// Waits (with a deadline) until `pred` holds, yielding in between.
async fn eventually(mut pred: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !pred() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("condition not reached in time");
}

#[tokio::test]
async fn calls_and_casts_are_handled_in_order() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared).await;
    for n in 1..=10 {
        app.cast_probe(Msg::Add(n)).await.unwrap();
    }
    // The call comes after the casts in the same queue, so it sees them all.
    assert_eq!(app.call_probe(Msg::Get).await.unwrap(), Reply::Count(55));
    app.shutdown().await;
}

#[tokio::test]
async fn start_returns_after_every_new_and_init() {
    let (shared, _rx) = shared(true);
    let mut start = tokio_test::task::spawn(App::start(shared.clone()));
    assert!(start.poll().is_pending());
    // Let both servers run up to their held `init`.
    eventually(|| shared.news.load(Ordering::SeqCst) == 2).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
        assert!(start.poll().is_pending());
    }
    assert_eq!(shared.inits.load(Ordering::SeqCst), 0);
    shared.init_gate.notify_waiters();
    let app = start.await;
    assert_eq!(shared.inits.load(Ordering::SeqCst), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn user_fields_reach_start_and_every_server() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared.clone()).await;
    assert!(Arc::ptr_eq(&app.shared, &shared));
    // Both servers' `new` counted on the very `Shared` passed to `start`.
    assert_eq!(shared.news.load(Ordering::SeqCst), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn servers_call_each_other_through_the_registry() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared).await;
    assert_eq!(app.call_small(Msg::CallOther(7)).await.unwrap(), Reply::Count(7));
    assert_eq!(app.call_probe(Msg::Get).await.unwrap(), Reply::Count(7));
    app.shutdown().await;
}

#[tokio::test]
async fn dropping_the_last_outside_handle_stops_every_server() {
    let (shared, mut rx) = shared(false);
    let app = App::start(shared.clone()).await;
    let copy = app.clone();
    drop(app);
    // A remaining outside copy keeps the servers running.
    assert_eq!(copy.call_probe(Msg::Add(1)).await.unwrap(), Reply::Count(1));
    drop(copy);
    // The servers hold registry copies of their own; those do not count.
    assert_eq!(terminated(&mut rx, 2).await, [("probe", 1), ("small", 0)]);
    eventually(|| Arc::strong_count(&shared) == 1).await;
}

#[tokio::test]
async fn shutdown_handles_queued_messages_runs_terminate_and_joins() {
    let (shared, mut rx) = shared(false);
    let app = App::start(shared.clone()).await;
    app.cast_probe(Msg::Wait(0)).await.unwrap();
    for n in 1..=20 {
        app.cast_probe(Msg::Add(n)).await.unwrap();
    }
    let shutdown = tokio::spawn({
        let app = app.clone();
        async move { app.shutdown().await }
    });
    shared.gate.add_permits(1);
    shutdown.await.unwrap();
    // Every queued cast was handled before terminate, and terminate ran.
    assert_eq!(shared.terminates.load(Ordering::SeqCst), 2);
    assert_eq!(terminated(&mut rx, 2).await, [("probe", (1..=20).sum()), ("small", 0)]);
    // The tasks are joined: they released their registry copies.
    assert_eq!(Arc::strong_count(&shared), 2);
    // Afterwards calls and casts fail and hand the message back.
    let err = app.call_probe(Msg::Get).await.unwrap_err();
    assert!(matches!(err, CallError::Closed(Msg::Get)), "{err:?}");
    assert_eq!(err.into_message(), Some(Msg::Get));
    let err = app.cast_probe(Msg::Add(1)).await.unwrap_err();
    assert!(matches!(err, SendError::Closed(Msg::Add(1))), "{err:?}");
    assert!(matches!(app.try_cast_small(Msg::Get), Err(SendError::Closed(Msg::Get))));
}

#[tokio::test(start_paused = true)]
async fn timeout_covers_waiting_for_room_in_the_queue() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared.clone()).await;
    // `small` holds one message: the first blocks the server, the second
    // fills the queue.
    app.cast_small(Msg::Wait(1)).await.unwrap();
    eventually(|| shared.gate.available_permits() == 0).await;
    app.cast_small(Msg::Add(2)).await.unwrap();
    let err = app.call_small_with_timeout(Msg::Add(3), Duration::from_millis(50)).await.unwrap_err();
    // The message never entered the queue and comes back.
    assert!(matches!(err, CallError::Timeout(Some(Msg::Add(3)))), "{err:?}");
    assert!(err.is_timeout());
    shared.gate.add_permits(1);
    assert_eq!(app.call_small(Msg::Get).await.unwrap(), Reply::Count(2));
    app.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_call_that_timed_out_while_queued_is_never_handled() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared.clone()).await;
    app.cast_probe(Msg::Wait(1)).await.unwrap();
    let err = app.call_probe_with_timeout(Msg::Add(100), Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(err, CallError::Timeout(None)), "{err:?}");
    assert_eq!(err.into_message(), None);
    shared.gate.add_permits(1);
    // `Add(100)` was still queued when its caller gave up: it was skipped.
    assert_eq!(app.call_probe(Msg::Get).await.unwrap(), Reply::Count(0));
    app.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_call_answered_in_time_is_not_a_timeout() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared).await;
    let reply = app.call_probe_with_timeout(Msg::Add(4), Duration::from_secs(1)).await.unwrap();
    assert_eq!(reply, Reply::Count(4));
    app.shutdown().await;
}

#[tokio::test]
async fn try_cast_returns_full_then_closed() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared.clone()).await;
    app.try_cast_small(Msg::Wait(1)).unwrap();
    eventually(|| shared.gate.available_permits() == 0 && app.try_cast_small(Msg::Add(2)).is_ok()).await;
    let err = app.try_cast_small(Msg::Add(3)).unwrap_err();
    assert!(matches!(err, SendError::Full(Msg::Add(3))), "{err:?}");
    assert!(err.is_full());
    assert_eq!(err.into_message(), Some(Msg::Add(3)));
    shared.gate.add_permits(1);
    app.shutdown().await;
    let err = app.try_cast_small(Msg::Add(4)).unwrap_err();
    assert!(matches!(err, SendError::Closed(Msg::Add(4))), "{err:?}");
}

#[tokio::test]
async fn a_panicking_call_errors_and_the_server_restarts_with_fresh_state() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared.clone()).await;
    app.cast_probe(Msg::Add(5)).await.unwrap();
    let err = app.call_probe(Msg::Panic).await.unwrap_err();
    assert!(matches!(err, CallError::Panicked), "{err:?}");
    // Fresh state: `new` and `init` ran again.
    assert_eq!(app.call_probe(Msg::Get).await.unwrap(), Reply::Count(0));
    assert_eq!(shared.news.load(Ordering::SeqCst), 3);
    assert_eq!(shared.inits.load(Ordering::SeqCst), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn messages_queued_behind_a_panic_are_handled_after_the_restart() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared.clone()).await;
    app.cast_probe(Msg::Wait(0)).await.unwrap();
    app.cast_probe(Msg::Panic).await.unwrap();
    app.cast_probe(Msg::Add(3)).await.unwrap();
    shared.gate.add_permits(1);
    assert_eq!(app.call_probe(Msg::Get).await.unwrap(), Reply::Count(3));
    app.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn past_the_restart_limit_the_server_stays_down() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared.clone()).await;
    // Three restarts within 5 s are allowed.
    for _ in 0..3 {
        assert!(matches!(app.call_probe(Msg::Panic).await, Err(CallError::Panicked)));
        assert_eq!(app.call_probe(Msg::Get).await.unwrap(), Reply::Count(0));
    }
    // The fourth crash in the window takes the server down for good.
    assert!(matches!(app.call_probe(Msg::Panic).await, Err(CallError::Panicked)));
    let err = app.call_probe(Msg::Add(1)).await.unwrap_err();
    assert!(matches!(err, CallError::Failed(Msg::Add(1))), "{err:?}");
    assert!(err.to_string().contains("restart limit"), "{err}");
    assert!(matches!(app.cast_probe(Msg::Add(2)).await, Err(SendError::Failed(Msg::Add(2)))));
    assert!(matches!(app.try_cast_probe(Msg::Add(3)), Err(SendError::Failed(Msg::Add(3)))));
    assert_eq!(shared.news.load(Ordering::SeqCst), 2 + 3);
    // The other server is not affected, and shutdown still completes.
    assert_eq!(app.call_small(Msg::Add(1)).await.unwrap(), Reply::Count(1));
    app.shutdown().await;
    assert_eq!(shared.terminates.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn calls_queued_when_the_server_fails_get_their_message_back() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared.clone()).await;
    for _ in 0..3 {
        assert!(matches!(app.call_probe(Msg::Panic).await, Err(CallError::Panicked)));
    }
    app.cast_probe(Msg::Wait(0)).await.unwrap();
    app.cast_probe(Msg::Panic).await.unwrap();
    let queued = tokio::spawn({
        let app = app.clone();
        async move { app.call_probe(Msg::Add(9)).await }
    });
    eventually(|| shared.gate.available_permits() == 0).await;
    shared.gate.add_permits(1);
    let err = queued.await.unwrap().unwrap_err();
    assert!(matches!(err, CallError::Failed(Msg::Add(9))), "{err:?}");
    app.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn restarts_older_than_the_window_are_forgotten() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared.clone()).await;
    for _ in 0..3 {
        assert!(matches!(app.call_probe(Msg::Panic).await, Err(CallError::Panicked)));
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(matches!(app.call_probe(Msg::Panic).await, Err(CallError::Panicked)));
    assert_eq!(app.call_probe(Msg::Add(1)).await.unwrap(), Reply::Count(1));
    app.shutdown().await;
}

#[tokio::test]
async fn a_server_calling_itself_gets_an_error_at_once() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), app.call_probe(Msg::CallSelf))
        .await
        .expect("a self call must not hang");
    assert_eq!(reply.unwrap(), Reply::SelfCall(true));
    assert_eq!(app.call_small(Msg::CallSelf).await.unwrap(), Reply::SelfCall(true));
    app.shutdown().await;
}

#[tokio::test]
async fn a_server_casting_to_itself_with_a_full_queue_gets_full() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), app.call_small(Msg::CastSelfTwice))
        .await
        .expect("a self cast must not hang");
    assert_eq!(reply.unwrap(), Reply::Casts(true, true));
    assert_eq!(app.call_small(Msg::Get).await.unwrap(), Reply::Count(1));
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_from_inside_a_server_does_not_deadlock() {
    let (shared, mut rx) = shared(false);
    let app = App::start(shared).await;
    assert_eq!(app.call_probe(Msg::ShutdownFromInside).await.unwrap(), Reply::Done);
    assert_eq!(terminated(&mut rx, 2).await, [("probe", 0), ("small", 0)]);
    assert!(app.call_probe(Msg::Get).await.unwrap_err().is_stopped());
}

#[tokio::test]
async fn abort_stops_at_once_and_hands_queued_calls_back() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared.clone()).await;
    app.cast_probe(Msg::Wait(0)).await.unwrap();
    // One poll puts the call in the queue (there is room); it then waits.
    let mut queued = tokio_test::task::spawn(app.call_probe(Msg::Add(1)));
    assert!(queued.poll().is_pending());
    app.abort();
    let err = queued.await.unwrap_err();
    assert!(matches!(err, CallError::Closed(Msg::Add(1))), "{err:?}");
    assert_eq!(shared.terminates.load(Ordering::SeqCst), 0);
    assert!(app.call_small(Msg::Get).await.unwrap_err().is_stopped());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_multi_thread_runtime() {
    let (shared, _rx) = shared(false);
    let app = App::start(shared).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    app.cast_probe(Msg::Add(1)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(app.call_probe(Msg::Get).await.unwrap(), Reply::Count(800));
    app.shutdown().await;
}

/// Generic server types, with the generic argument in the registry list.
struct Worker<T> {
    last: Option<T>,
}

impl<T: Send + Clone + 'static> GenServer for Worker<T> {
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

#[genflow::make_registry{ bytes: Worker<u8>, words: Worker<String> }]
struct Workers;

#[tokio::test]
async fn generic_server_types_work() {
    let workers = Workers::start().await;
    workers.cast_bytes(7).await.unwrap();
    assert_eq!(workers.call_bytes(8).await.unwrap(), Some(7));
    assert_eq!(workers.call_words("a".to_string()).await.unwrap(), None);
    assert_eq!(workers.call_words("b".to_string()).await.unwrap(), Some("a".to_string()));
    workers.shutdown().await;
}
