//! What genflow tells `tracing`: a span per server and per stage replica,
//! events for restarts, failed and panicking items, drain and abort, and
//! nothing per item that went well.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

use futures::{StreamExt, stream};
use genflow::{Emitter, GenServer, Stage};
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id},
};
use tracing_subscriber::{Layer, layer::Context, prelude::*, registry::LookupSpan};

/// One event: its level, message, fields, and the fields of the span it
/// happened in (`name` for the span's name).
#[derive(Clone, Debug)]
struct Seen {
    level: Level,
    message: String,
    fields: HashMap<String, String>,
    span: HashMap<String, String>,
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}").trim_matches('"').to_string());
    }
}

#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<Seen>>>,
    spans: Arc<Mutex<HashMap<u64, HashMap<String, String>>>>,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        fields.0.insert("name".into(), attrs.metadata().name().into());
        self.spans.lock().unwrap().insert(id.into_u64(), fields.0);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields.0.remove("message").unwrap_or_default();
        let span = ctx
            .event_span(event)
            .and_then(|span| self.spans.lock().unwrap().get(&span.id().into_u64()).cloned())
            .unwrap_or_default();
        self.events.lock().unwrap().push(Seen { level: *event.metadata().level(), message, fields: fields.0, span });
    }
}

impl Recorder {
    fn events(&self) -> Vec<Seen> {
        self.events.lock().unwrap().clone()
    }

    fn with(&self, message: &str) -> Vec<Seen> {
        self.events().into_iter().filter(|e| e.message == message).collect()
    }
}

/// Fails 3, panics on 5; a cast of `true` panics.
struct Check;

impl GenServer for Check {
    type Message = bool;
    type Response = ();
    type Registry = Checks;

    fn new(_: Checks) -> Self {
        Check
    }

    async fn handle_call(&mut self, _: bool) {}

    async fn handle_cast(&mut self, panic: bool) {
        assert!(!panic, "cast panicked");
    }
}

impl Stage for Check {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, i: u64, out: &mut Emitter<u64>) {
        match i {
            3 => out.fail("three is bad"),
            5 => panic!("five"),
            _ => out.emit(i).await,
        }
    }
}

#[genflow::pipeline{ #[replicas(2)] check: Check }]
struct Checks;

/// Runs `items` items through a fresh pipeline under a recording
/// subscriber (on this thread: the runtime is `current_thread`).
async fn run(items: u64, cast_panic: bool, abort: bool) -> Recorder {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let flow = Checks::start().await;
    let output = flow.output().unwrap();
    let reader = tokio::spawn(output.count());
    flow.feed(stream::iter(0..items)).await.unwrap();
    flow.flush().await.unwrap();
    if cast_panic {
        flow.cast_check(true).await.unwrap();
        flow.call_check(false).await.unwrap();
    }
    if abort {
        flow.abort();
    }
    flow.shutdown().await;
    reader.await.unwrap();
    std::panic::set_hook(previous);
    recorder
}

#[tokio::test(flavor = "current_thread")]
async fn failures_are_debug_panics_warn_and_each_names_its_stage_and_replica() {
    let recorder = run(10, false, false).await;
    let failed = recorder.with("item failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].level, Level::DEBUG);
    assert_eq!(failed[0].fields["stage"], "check");
    assert_eq!(failed[0].fields["error"], "three is bad");
    let panicked = recorder.with("item panicked");
    assert_eq!(panicked.len(), 1);
    assert_eq!(panicked[0].level, Level::WARN);
    assert_eq!(panicked[0].fields["error"], "five");
    // In the span of the replica that took the item.
    for event in failed.iter().chain(&panicked) {
        assert_eq!(event.span["name"], "stage");
        assert_eq!(event.span["stage"], "check");
        assert_eq!(event.span["replica"], event.fields["replica"]);
    }
    // A panic is reported once, not also as an error of the server.
    assert!(recorder.events().iter().all(|e| e.level > Level::WARN || e.message == "item panicked"));
}

#[tokio::test(flavor = "current_thread")]
async fn each_replica_drains_in_its_span_and_the_pipeline_says_when_it_shuts_down() {
    let recorder = run(4, false, false).await;
    let finishing = recorder.with("input ended: finishing");
    let drained = recorder.with("drained");
    assert_eq!((finishing.len(), drained.len()), (2, 2));
    let mut replicas: Vec<_> = drained.iter().map(|e| e.span["replica"].clone()).collect();
    replicas.sort();
    assert_eq!(replicas, ["0", "1"]);
    assert!(finishing.iter().chain(&drained).all(|e| e.level == Level::DEBUG && e.span["stage"] == "check"));
    let shutdown: Vec<_> = recorder.events().into_iter().filter(|e| e.level == Level::INFO).collect();
    assert_eq!(shutdown.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["shutting down", "shut down"]);
    assert!(shutdown[0].fields["registry"].ends_with("Checks"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_restart_warns_with_its_count_and_limit() {
    let recorder = run(2, true, false).await;
    let restarts = recorder.with("restarting after a panic");
    assert_eq!(restarts.len(), 1);
    let restart = &restarts[0];
    assert_eq!(restart.level, Level::WARN);
    assert_eq!((restart.fields["restarts"].as_str(), restart.fields["max_restarts"].as_str()), ("1", "3"));
    assert_eq!(restart.span["stage"], "check");
}

#[tokio::test(flavor = "current_thread")]
async fn an_abort_is_a_warning() {
    let recorder = run(2, false, true).await;
    let aborted = recorder.with("aborted");
    assert_eq!(aborted.len(), 1);
    assert_eq!(aborted[0].level, Level::WARN);
}

#[tokio::test(flavor = "current_thread")]
async fn nothing_is_logged_per_item_that_went_well() {
    let few = run(10, false, false).await.events().len();
    let many = run(10_000, false, false).await.events().len();
    assert_eq!(few, many);
}

#[test]
fn a_registry_shut_down_before_its_runtime_ended_is_dropped_quietly() {
    let recorder = Recorder::default();
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(recorder.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let flow = runtime.block_on(async {
        let flow = Checks::start().await;
        flow.shutdown().await;
        flow
    });
    drop(runtime);
    drop(flow);
    let warnings: Vec<_> = recorder.events().into_iter().filter(|e| e.level <= Level::WARN).collect();
    assert!(warnings.is_empty(), "{warnings:?}");
}
