//! Dropping the last registry handle drains in the background, on the
//! registry's runtime. When that runtime is gone before the drain ends,
//! the queued work is abandoned, and a `tracing` warning says so.

use std::{
    fmt::{self, Write as _},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use genflow::GenServer;
use tracing::{
    Event, Level, Metadata, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};

/// Handles casts slowly; counts them and its `terminate`.
struct Slow(Counts);

#[derive(Clone, Default)]
struct Counts {
    handled: Arc<AtomicUsize>,
    terminated: Arc<AtomicUsize>,
}

impl GenServer for Slow {
    type Message = ();
    type Response = ();
    type Registry = App;

    fn new(app: App) -> Self {
        Slow(app.counts.clone())
    }

    async fn handle_call(&mut self, _: ()) {}

    async fn handle_cast(&mut self, _: ()) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.handled.fetch_add(1, Ordering::SeqCst);
    }

    async fn terminate(&mut self) {
        self.0.terminated.fetch_add(1, Ordering::SeqCst);
    }
}

#[genflow::make_registry{ slow: Slow }]
struct App {
    counts: Counts,
}

/// Collects the warnings emitted on this thread.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

struct Text<'a>(&'a mut String);

impl Visit for Text<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl Subscriber for Warnings {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() == Level::WARN {
            let mut text = String::new();
            event.record(&mut Text(&mut text));
            self.0.lock().unwrap().push(text);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Starts the registry on `rt` and queues 300 casts.
fn loaded(rt: &tokio::runtime::Runtime, counts: &Counts) -> App {
    rt.block_on(async {
        let app = App::start(counts.clone()).await;
        for _ in 0..300 {
            app.cast_slow(()).await.unwrap();
        }
        app
    })
}

#[test]
fn a_runtime_shut_down_during_the_background_drain_abandons_it_with_a_warning() {
    let warnings = Warnings::default();
    let counts = Counts::default();
    tracing::subscriber::with_default(warnings.clone(), || {
        let rt = runtime();
        let app = loaded(&rt, &counts);
        drop(app);
        // The drain starts and handles a few casts, then the runtime goes.
        rt.block_on(async {
            while counts.handled.load(Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        drop(rt);
    });
    let handled = counts.handled.load(Ordering::SeqCst);
    assert!((3..300).contains(&handled), "{handled}");
    assert_eq!(counts.terminated.load(Ordering::SeqCst), 0);
    let warnings = warnings.take();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("the runtime shut down before the background shutdown of a dropped registry finished"),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("call `shutdown().await` before the runtime ends"), "{warnings:?}");
}

#[test]
fn a_runtime_dropped_right_after_the_last_handle_abandons_the_drain_with_a_warning() {
    let warnings = Warnings::default();
    let counts = Counts::default();
    tracing::subscriber::with_default(warnings.clone(), || {
        let rt = runtime();
        let app = loaded(&rt, &counts);
        drop(app);
        drop(rt);
    });
    assert_eq!(counts.handled.load(Ordering::SeqCst), 0);
    assert_eq!(counts.terminated.load(Ordering::SeqCst), 0);
    let warnings = warnings.take();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("what was still queued was abandoned"), "{warnings:?}");
}

#[test]
fn the_last_handle_dropped_after_the_runtime_warns() {
    let warnings = Warnings::default();
    let counts = Counts::default();
    tracing::subscriber::with_default(warnings.clone(), || {
        let rt = runtime();
        let app = loaded(&rt, &counts);
        drop(rt);
        drop(app);
    });
    assert_eq!(counts.terminated.load(Ordering::SeqCst), 0);
    let warnings = warnings.take();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("a registry was dropped after its runtime shut down"), "{warnings:?}");
}

#[test]
fn a_drain_that_finishes_does_not_warn() {
    let warnings = Warnings::default();
    let counts = Counts::default();
    tracing::subscriber::with_default(warnings.clone(), || {
        let rt = runtime();
        let app = loaded(&rt, &counts);
        drop(app);
        rt.block_on(async {
            while counts.terminated.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // The last task ended: the drain task is woken, and runs before
            // this task is polled again after yielding.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        });
        drop(rt);
    });
    assert_eq!(counts.handled.load(Ordering::SeqCst), 300);
    assert_eq!(warnings.take(), Vec::<String>::new());
}
