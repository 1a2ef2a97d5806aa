//! Every public method of a generated registry and pipeline works from a
//! plain `std::thread`, driven by another executor
//! (`futures::executor::block_on`), while the registry runs on a Tokio
//! runtime kept alive by the test.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{SinkExt, StreamExt, executor::block_on, stream};
use genflow::{Emitter, GenServer, Stage};
use tokio::{runtime::Runtime, sync::Notify};

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Runs `f` on a fresh plain thread and returns its result.
fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("the thread panicked")
}

// --- A registry ---------------------------------------------------------------

#[derive(Debug, Clone)]
enum Msg {
    Add(u64),
    Get,
    /// Answers once `release` is notified.
    Hold,
}

struct Counter {
    registry: App,
    total: u64,
}

impl GenServer for Counter {
    type Message = Msg;
    type Response = u64;
    type Registry = App;

    fn new(registry: App) -> Self {
        Counter { registry, total: 0 }
    }

    async fn handle_call(&mut self, message: Msg) -> u64 {
        match message {
            Msg::Add(n) => self.total += n,
            Msg::Get => {}
            Msg::Hold => {
                self.registry.holding.store(true, Ordering::SeqCst);
                self.registry.release.notified().await
            }
        }
        self.total
    }

    async fn handle_cast(&mut self, message: Msg) {
        if let Msg::Add(n) = message {
            self.total += n;
        }
    }

    async fn terminate(&mut self) {
        self.registry.terminated.store(true, Ordering::SeqCst);
    }
}

#[genflow::make_registry{ counter: Counter }]
struct App {
    release: Arc<Notify>,
    holding: Arc<AtomicBool>,
    terminated: Arc<AtomicBool>,
}

#[test]
fn registry_calls_and_casts_work_from_a_plain_thread() {
    let rt = runtime();
    let app = rt.block_on(App::start(Arc::default(), Arc::default(), Arc::default()));
    let remote = app.clone();
    let answers = on_thread(move || {
        block_on(async {
            let app = remote;
            let call = app.call_counter(Msg::Add(1)).await.unwrap();
            let fast = app.call_counter_with_timeout(Msg::Add(2), Duration::from_secs(10)).await.unwrap();
            app.cast_counter(Msg::Add(3)).await.unwrap();
            app.try_cast_counter(Msg::Add(4)).unwrap();
            let get = app.call_counter(Msg::Get).await.unwrap();
            // A real timeout: the server holds the call until released.
            let slow = app.call_counter_with_timeout(Msg::Hold, Duration::from_millis(50)).await.unwrap_err();
            app.release.notify_one();
            (call, fast, get, slow.is_timeout(), slow.into_message().is_none())
        })
    });
    assert_eq!(answers, (1, 3, 10, true, true));
    assert_eq!(rt.block_on(app.call_counter(Msg::Get)).unwrap(), 10);
    let remote = app.clone();
    on_thread(move || block_on(remote.shutdown()));
    assert!(app.terminated.load(Ordering::SeqCst));
    assert!(rt.block_on(app.call_counter(Msg::Get)).unwrap_err().is_stopped());
}

#[test]
fn a_timed_call_that_never_enters_the_queue_times_out_on_a_plain_thread() {
    let rt = runtime();
    let app = rt.block_on(App::start(Arc::default(), Arc::default(), Arc::default()));
    let remote = app.clone();
    let held = rt.spawn(async move { remote.call_counter(Msg::Hold).await });
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !app.holding.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the server took the held call")
    });
    let remote = app.clone();
    let err = on_thread(move || {
        block_on(async {
            // Fill the queue behind the held call, then time out waiting for room.
            while remote.try_cast_counter(Msg::Add(0)).is_ok() {}
            remote.call_counter_with_timeout(Msg::Add(7), Duration::from_millis(50)).await.unwrap_err()
        })
    });
    assert!(err.is_timeout());
    assert!(matches!(err.into_message(), Some(Msg::Add(7))));
    app.release.notify_one();
    assert_eq!(rt.block_on(held).unwrap().unwrap(), 0);
}

#[test]
fn abort_and_drop_work_from_a_plain_thread() {
    let rt = runtime();
    let app = rt.block_on(App::start(Arc::default(), Arc::default(), Arc::default()));
    let remote = app.clone();
    on_thread(move || remote.abort());
    let err = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match app.call_counter(Msg::Get).await {
                    Err(err) => break err,
                    Ok(_) => tokio::task::yield_now().await,
                }
            }
        })
        .await
        .expect("abort took effect")
    });
    assert!(err.is_stopped());

    // Dropping the last outside handle on a plain thread shuts down.
    let terminated = Arc::new(AtomicBool::new(false));
    let app = rt.block_on(App::start(Arc::default(), Arc::default(), terminated.clone()));
    on_thread(move || drop(app));
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !terminated.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("dropping the last handle shut the registry down")
    });
}

// --- A pipeline ---------------------------------------------------------------

/// Doubles items; calls and casts add to `bonus`.
struct Double {
    bonus: u64,
}

impl GenServer for Double {
    type Message = u64;
    type Response = u64;
    type Registry = Flow;

    fn new(_: Flow) -> Self {
        Double { bonus: 0 }
    }

    async fn handle_call(&mut self, n: u64) -> u64 {
        self.bonus += n;
        self.bonus
    }

    async fn handle_cast(&mut self, n: u64) {
        self.bonus += n;
    }
}

impl Stage for Double {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        out.emit(2 * item).await;
    }
}

#[genflow::pipeline{ #[replicas(2)] double: Double }]
struct Flow {
    fed: Arc<AtomicU64>,
}

#[test]
fn pipeline_methods_work_from_a_plain_thread() {
    let rt = runtime();
    let flow = rt.block_on(Flow::start(Arc::default()));
    let remote = flow.clone();
    let (out, all, one, timed, metrics) = on_thread(move || {
        block_on(async {
            let flow = remote;
            let output = flow.output().unwrap();
            flow.send(1).await.unwrap();
            flow.try_send(2).unwrap();
            assert_eq!(flow.feed(stream::iter([3, 4])).await.unwrap(), 2);
            let mut sink = flow.sink();
            sink.send(5).await.unwrap();
            let mut sink = flow.sink_double();
            sink.send(6).await.unwrap();
            flow.cast_double_all(10).await.unwrap();
            flow.cast_double(1).await.unwrap();
            flow.try_cast_double(1).unwrap();
            let all = flow.call_double_all(0).await.unwrap();
            let one = flow.call_double(0).await.unwrap();
            let timed = flow.call_double_with_timeout(0, Duration::from_secs(10)).await.unwrap();
            let mut out: Vec<u64> = output.take(6).collect().await;
            out.sort_unstable();
            flow.fed.store(6, Ordering::SeqCst);
            flow.shutdown().await;
            (out, all, one, timed, flow.metrics())
        })
    });
    assert_eq!(out, [2, 4, 6, 8, 10, 12]);
    // Each replica got 10 from cast_all; the two single casts went to one
    // replica each or both to one: 22 in all.
    assert_eq!(all.iter().sum::<u64>(), 22);
    assert!(all.iter().all(|&b| b >= 10), "{all:?}");
    assert!(all.contains(&one) && all.contains(&timed), "{all:?} {one} {timed}");
    let stage = metrics.stage("double").unwrap();
    assert_eq!((stage.received, stage.emitted), (6, 6));
    assert_eq!(flow.fed.load(Ordering::SeqCst), 6);
    assert!(rt.block_on(flow.send(7)).unwrap_err().is_stopped());
}
