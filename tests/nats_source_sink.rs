//! A pipeline segment between two JetStream streams, on a real
//! `nats-server`: a `Source` pulls from a durable consumer into the
//! pipeline, a `Sink` publishes its output, and each message is acked only
//! once what was made from it is stored downstream. Failed items are naked
//! and delivered again, poison ones end in the dead-letter subject, the
//! prefetch bound holds on the server, progress acknowledgements keep a
//! slow item from being delivered twice, message ids de-duplicate
//! republished items, and a message too large for the server fails clearly.
//! A message is decoded by its `Content-Type`; a stopping source never
//! gives up on a message it did not process; a deleted consumer ends the
//! source with an error; pulls failing while the broker is down are
//! counted, and the source resumes once it is back.

#![cfg(feature = "nats")]

mod support;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::{
    Client, HeaderMap,
    connection::State,
    jetstream::{self, consumer, message::StreamMessage, stream},
};
use futures::{StreamExt, stream as items};
use genflow::{
    Emitter, GenServer, Stage,
    ack::{Ack, Held, Outcome},
    nats::{Codec, Connect, NatsError, Sink, Source, dead_letter},
};
use support::nats_server::NatsServer;
use tokio::sync::Semaphore;
use tracing::{Level, Subscriber, field::Field};
use tracing_subscriber::{Layer, layer::Context, prelude::*};

/// How long a test waits for anything before it fails.
const DEADLINE: Duration = Duration::from_secs(15);

/// What the stage does with each item, and what it saw.
#[derive(Default)]
struct Behaviour {
    /// Items failed the first time they are seen.
    flaky: HashSet<u64>,
    /// Items failed every time.
    poison: HashSet<u64>,
    /// Items that take this long.
    slow: HashMap<u64, Duration>,
    /// If set, each item waits for a permit of it.
    gate: Option<Semaphore>,
    /// How many times each item was processed.
    seen: Mutex<HashMap<u64, u32>>,
}

impl Behaviour {
    fn seen(&self, item: u64) -> u32 {
        self.seen.lock().unwrap().get(&item).copied().unwrap_or(0)
    }
}

/// Doubles each item, as `Behaviour` says.
struct Work {
    registry: Segment,
}

impl GenServer for Work {
    type Message = ();
    type Response = ();
    type Registry = Segment;

    fn new(registry: Segment) -> Self {
        Work { registry }
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Work {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        let behaviour = &self.registry.behaviour;
        if let Some(gate) = &behaviour.gate {
            gate.acquire().await.unwrap().forget();
        }
        let seen = {
            let mut seen = behaviour.seen.lock().unwrap();
            let count = seen.entry(item).or_default();
            *count += 1;
            *count
        };
        if let Some(delay) = behaviour.slow.get(&item) {
            tokio::time::sleep(*delay).await;
        }
        if behaviour.poison.contains(&item) {
            out.fail(format!("item {item} is poison"));
        } else if behaviour.flaky.contains(&item) && seen == 1 {
            out.fail(format!("item {item} failed once"));
        } else {
            out.emit(item * 2).await;
        }
    }
}

#[genflow::pipeline{ work: Work }]
struct Segment {
    behaviour: Arc<Behaviour>,
}

#[genflow::stage]
fn pass(text: String) -> String {
    text
}

#[genflow::pipeline{ pass: Pass<Texts> }]
struct Texts;

/// A connection and the streams `IN` (`in.>`), `OUT` (`out.>`) and `DEAD`
/// (`dead.>`).
async fn broker(server: &NatsServer) -> (Client, jetstream::Context) {
    let client = Connect::new(server.url()).connect().await.unwrap();
    let js = jetstream::new(client.clone());
    for (name, subject) in [("IN", "in.>"), ("OUT", "out.>"), ("DEAD", "dead.>")] {
        let config = stream::Config { name: name.into(), subjects: vec![subject.into()], ..Default::default() };
        js.create_stream(config).await.unwrap();
    }
    (client, js)
}

/// Publishes `items` to `in.items`, each stored before the next.
async fn publish(js: &jetstream::Context, items: impl IntoIterator<Item = u64>) {
    for item in items {
        js.publish("in.items", Codec::Json.encode(&item).unwrap()).await.unwrap().await.unwrap();
    }
}

/// Polls `check` every 10 ms until it returns `Some`, failing the test
/// with `what` after the deadline.
async fn until<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn consumer_info(js: &jetstream::Context, name: &str) -> consumer::Info {
    let mut consumer: consumer::PullConsumer = js.get_stream("IN").await.unwrap().get_consumer(name).await.unwrap();
    consumer.info().await.unwrap().clone()
}

/// Waits until the consumer has nothing pending and nothing unacked.
async fn until_all_answered(js: &jetstream::Context, name: &str) -> consumer::Info {
    until("every message answered", || async {
        let info = consumer_info(js, name).await;
        (info.num_ack_pending == 0 && info.num_pending == 0).then_some(info)
    })
    .await
}

async fn stored(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream).await.unwrap().info().await.unwrap().state.messages
}

/// Every message of `stream`, in order.
async fn messages(js: &jetstream::Context, stream: &str) -> Vec<StreamMessage> {
    let stream = js.get_stream(stream).await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let mut all = Vec::new();
    for sequence in 1..=last {
        all.push(stream.get_raw_message(sequence).await.unwrap());
    }
    all
}

fn decode(message: &StreamMessage) -> u64 {
    Codec::Json.decode(&message.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_moves_every_item_from_stream_to_stream_and_acks_each_message() {
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    publish(&js, 0..200).await;

    let flow = Segment::start(Arc::new(Behaviour::default())).await;
    let sink = Sink::new(client.clone(), "out.items").msg_id(|n: &u64| format!("doubled-{n}"));
    let writer = tokio::spawn(sink.run(flow.output().unwrap().acked()));
    let source = Source::new(client.clone(), "IN", "workers")
        .filter_subject("in.>")
        .prefetch(32)
        .start(flow.acked())
        .await
        .unwrap();

    until("200 items in OUT", || async { (stored(&js, "OUT").await == 200).then_some(()) }).await;
    let info = until_all_answered(&js, "workers").await;
    // Each message was delivered once, and acked.
    assert_eq!((info.delivered.stream_sequence, info.delivered.consumer_sequence), (200, 200));
    assert_eq!(info.ack_floor.stream_sequence, 200);

    let stats = source.stop().await;
    assert_eq!((stats.pulled, stats.acked, stats.naked, stats.dead_lettered, stats.errors), (200, 200, 0, 0, 0));
    flow.shutdown().await;
    let written = writer.await.unwrap();
    assert_eq!((written.published, written.duplicates, written.failed), (200, 0, 0));
    let out: HashSet<u64> = messages(&js, "OUT").await.iter().map(decode).collect();
    assert_eq!(out, (0..200).map(|n| n * 2).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_item_is_delivered_again_and_a_poison_one_ends_in_the_dead_letter_subject() {
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    publish(&js, 0..20).await;

    let behaviour = Arc::new(Behaviour { flaky: [3].into(), poison: [7].into(), ..Default::default() });
    let flow = Segment::start(behaviour.clone()).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source = Source::new(client.clone(), "IN", "workers")
        .max_deliver(3)
        .nak_delay(Duration::from_millis(50))
        .dead_letter("dead.items")
        .start(flow.acked())
        .await
        .unwrap();

    until("19 items in OUT and 1 in DEAD", || async {
        (stored(&js, "OUT").await == 19 && stored(&js, "DEAD").await == 1).then_some(())
    })
    .await;
    until_all_answered(&js, "workers").await;
    // The flaky item was processed twice, the poison one on each of its 3
    // deliveries, the others once.
    assert_eq!((behaviour.seen(3), behaviour.seen(7), behaviour.seen(0), behaviour.seen(19)), (2, 3, 1, 1));

    let stats = source.stop().await;
    assert_eq!((stats.pulled, stats.acked, stats.naked, stats.dead_lettered, stats.errors), (23, 19, 3, 1, 0));
    flow.shutdown().await;
    assert_eq!(writer.await.unwrap().published, 19);

    let out: HashSet<u64> = messages(&js, "OUT").await.iter().map(decode).collect();
    assert_eq!(out, (0..20).filter(|n| *n != 7).map(|n| n * 2).collect());
    let dead = messages(&js, "DEAD").await;
    assert_eq!(decode(&dead[0]), 7);
    let headers = &dead[0].headers;
    let header = |name: &str| headers.get(name).map(|value| value.as_str().to_string());
    assert_eq!(header(dead_letter::ERROR).as_deref(), Some("work: item 7 is poison"));
    assert_eq!(header(dead_letter::DELIVERED).as_deref(), Some("3"));
    assert_eq!(header(dead_letter::STREAM).as_deref(), Some("IN"));
    assert_eq!(header(dead_letter::SEQUENCE).as_deref(), Some("8"));
    assert_eq!(header(dead_letter::CONSUMER).as_deref(), Some("workers"));
    assert_eq!(header(dead_letter::SUBJECT).as_deref(), Some("in.items"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_does_not_decode_goes_to_the_dead_letter_subject_at_once() {
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    publish(&js, [1]).await;
    js.publish("in.items", "not json".into()).await.unwrap().await.unwrap();
    publish(&js, [2]).await;

    let flow = Segment::start(Arc::new(Behaviour::default())).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source =
        Source::new(client.clone(), "IN", "workers").dead_letter("dead.items").start(flow.acked()).await.unwrap();

    until("2 items in OUT and 1 in DEAD", || async {
        (stored(&js, "OUT").await == 2 && stored(&js, "DEAD").await == 1).then_some(())
    })
    .await;
    let info = until_all_answered(&js, "workers").await;
    assert_eq!((info.delivered.stream_sequence, info.delivered.consumer_sequence), (3, 3));
    let stats = source.stop().await;
    assert_eq!((stats.pulled, stats.acked, stats.naked, stats.dead_lettered), (3, 2, 0, 1));
    flow.shutdown().await;
    writer.await.unwrap();

    let dead = messages(&js, "DEAD").await;
    assert_eq!(&dead[0].payload[..], b"not json");
    let headers = &dead[0].headers;
    let error = headers.get(dead_letter::ERROR).unwrap().as_str();
    assert!(error.starts_with("cannot decode a 8-byte json payload: "), "{error}");
    assert_eq!(headers.get(dead_letter::DELIVERED).unwrap().as_str(), "1");
    assert_eq!(headers.get(dead_letter::SEQUENCE).unwrap().as_str(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_pipeline_never_holds_more_unacked_messages_than_the_prefetch() {
    const PREFETCH: usize = 5;
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    publish(&js, 0..60).await;

    let behaviour = Arc::new(Behaviour { gate: Some(Semaphore::new(0)), ..Default::default() });
    let flow = Segment::start(behaviour.clone()).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source = Source::new(client.clone(), "IN", "workers").prefetch(PREFETCH).start(flow.acked()).await.unwrap();

    // Watch the server's count of unacked messages until every message was
    // answered.
    let watcher = {
        let js = js.clone();
        tokio::spawn(async move {
            let mut most = 0;
            loop {
                let info = consumer_info(&js, "workers").await;
                most = most.max(info.num_ack_pending);
                if info.num_ack_pending == 0 && info.num_pending == 0 {
                    return most;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Closed gate: the source pulls the prefetch and stops there; the rest
    // stays in the stream.
    let info = until("the prefetch pulled", || async {
        let info = consumer_info(&js, "workers").await;
        (info.num_ack_pending == PREFETCH).then_some(info)
    })
    .await;
    assert_eq!(info.num_pending, 60 - PREFETCH as u64);
    assert_eq!(source.stats().pulled, PREFETCH as u64);

    // Let items through a few at a time.
    for _ in 0..12 {
        // Read before the gate opens: the five may be acked at once.
        let done = source.stats().acked;
        behaviour.gate.as_ref().unwrap().add_permits(5);
        until("five more acked", || async { (source.stats().acked >= done + 5).then_some(()) }).await;
    }
    let most = tokio::time::timeout(DEADLINE, watcher).await.expect("every message answered").unwrap();
    assert_eq!(most, PREFETCH);

    let stats = source.stop().await;
    assert_eq!((stats.pulled, stats.acked), (60, 60));
    flow.shutdown().await;
    assert_eq!(writer.await.unwrap().published, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_acknowledgements_keep_a_slow_item_from_being_delivered_again() {
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    publish(&js, [1]).await;

    let behaviour = Arc::new(Behaviour { slow: [(1, Duration::from_secs(3))].into(), ..Default::default() });
    let flow = Segment::start(behaviour.clone()).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source = Source::new(client.clone(), "IN", "workers")
        .ack_wait(Duration::from_secs(1))
        .start(flow.acked())
        .await
        .unwrap();

    until("the slow item acked", || async { (source.stats().acked == 1).then_some(()) }).await;
    let info = until_all_answered(&js, "workers").await;
    // Delivered once.
    assert_eq!((info.delivered.stream_sequence, info.delivered.consumer_sequence), (1, 1));
    assert_eq!(behaviour.seen(1), 1);
    let stats = source.stop().await;
    assert_eq!((stats.pulled, stats.acked, stats.naked), (1, 1, 0));
    // 3 s of work under a 1 s ack_wait: touched once half of it ran and
    // checked every quarter, so every 0.5 to 0.75 s (a touch at least
    // every second keeps it from being delivered again).
    assert!((3..=6).contains(&stats.progress), "{stats:?}");
    flow.shutdown().await;
    assert_eq!(writer.await.unwrap().published, 1);
}

#[tokio::test]
async fn the_message_id_stores_a_republished_item_once() {
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    let sink = Sink::new(client.clone(), "out.items").msg_id(|n: &u64| format!("item-{n}"));
    let stats = sink.run(items::iter([1u64, 2, 3, 1, 2, 1].map(|n| (n, Held::default())))).await;
    assert_eq!((stats.published, stats.duplicates, stats.failed), (3, 3, 0));
    let out: Vec<u64> = messages(&js, "OUT").await.iter().map(decode).collect();
    assert_eq!(out, [1, 2, 3]);
    // A second run (a segment restarted and its input delivered again)
    // is de-duplicated too.
    let sink = Sink::new(client.clone(), "out.items").msg_id(|n: &u64| format!("item-{n}"));
    let stats = sink.run(items::iter([3u64, 4].map(|n| (n, Held::default())))).await;
    assert_eq!((stats.published, stats.duplicates), (1, 1));
    assert_eq!(stored(&js, "OUT").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_larger_than_the_server_accepts_fails_clearly_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.conf");
    std::fs::write(&config, "max_payload: 1024\n").unwrap();
    let server = NatsServer::start_with(&["-c", config.to_str().unwrap()]);
    let (client, js) = broker(&server).await;
    assert_eq!(client.server_info().max_payload, 1024);

    let flow = Texts::start().await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.texts").run(flow.output().unwrap().acked()));
    let (outcomes_tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let input = flow.acked();
    // With 44 bytes of headers, 980 bytes of payload (978 characters and
    // the quotes) fill `max_payload` exactly.
    let texts = ["small".to_string(), "x".repeat(2000), "y".repeat(978), "z".repeat(979)];
    for (i, text) in texts.into_iter().enumerate() {
        let tx = outcomes_tx.clone();
        input.send(text, Ack::new(move |outcome| tx.send((i, outcome)).unwrap())).await.unwrap();
    }
    let mut seen = HashMap::new();
    while seen.len() < 4 {
        let (i, outcome) = tokio::time::timeout(DEADLINE, outcomes.recv()).await.unwrap().unwrap();
        seen.insert(i, outcome);
    }
    assert!(seen[&0].is_delivered() && seen[&2].is_delivered(), "{seen:?}");
    let Outcome::Failed(failures) = &seen[&3] else { panic!("{:?}", seen[&3]) };
    let error = failures[0].error().downcast_ref::<NatsError>();
    assert!(matches!(error, Some(NatsError::TooLarge { len: 1025, max: 1024, .. })), "{error:?}");
    let Outcome::Failed(failures) = &seen[&1] else { panic!("{:?}", seen[&1]) };
    let error = failures[0].error().to_string();
    // 2 002 bytes of JSON and 44 of headers (`Content-Type`).
    assert_eq!(error, "a 2046-byte message for \"out.texts\" is larger than the server's max_payload of 1024 bytes");
    let error = failures[0].error().downcast_ref::<NatsError>();
    assert!(matches!(error, Some(NatsError::TooLarge { len: 2046, max: 1024, .. })), "{error:?}");
    flow.shutdown().await;
    let stats = writer.await.unwrap();
    assert_eq!((stats.published, stats.failed), (2, 2));
    assert_eq!(stored(&js, "OUT").await, 2);
    assert_eq!(messages(&js, "OUT").await[1].payload.len(), 980);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_lost_in_an_aborted_pipeline_are_given_back_and_another_worker_takes_them() {
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    publish(&js, 0..10).await;

    // A worker that takes every message and is stopped before any is done.
    let stuck = Arc::new(Behaviour { gate: Some(Semaphore::new(0)), ..Default::default() });
    let flow = Segment::start(stuck).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source = Source::new(client.clone(), "IN", "workers").prefetch(10).start(flow.acked()).await.unwrap();
    until("every message pulled", || async {
        (consumer_info(&js, "workers").await.num_ack_pending == 10).then_some(())
    })
    .await;
    flow.abort();
    let stats = source.stop().await;
    assert_eq!((stats.pulled, stats.acked, stats.naked), (10, 0, 10));
    assert_eq!(writer.await.unwrap().published, 0);

    // Another worker on the same durable consumer gets them again at once.
    let flow = Segment::start(Arc::new(Behaviour::default())).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source = Source::new(client.clone(), "IN", "workers").start(flow.acked()).await.unwrap();
    until("10 items in OUT", || async { (stored(&js, "OUT").await == 10).then_some(()) }).await;
    let info = until_all_answered(&js, "workers").await;
    // Each message was delivered twice.
    assert_eq!((info.delivered.stream_sequence, info.delivered.consumer_sequence), (10, 20));
    let stats = source.stop().await;
    assert_eq!((stats.pulled, stats.acked, stats.naked), (10, 10, 0));
    flow.shutdown().await;
    assert_eq!(writer.await.unwrap().published, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sharing_a_durable_consumer_share_its_messages() {
    const PREFETCH: usize = 4;
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    publish(&js, 0..40).await;

    let mut workers = Vec::new();
    for _ in 0..2 {
        let behaviour = Arc::new(Behaviour { gate: Some(Semaphore::new(0)), ..Default::default() });
        let flow = Segment::start(behaviour.clone()).await;
        let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
        let source = Source::new(client.clone(), "IN", "workers").prefetch(PREFETCH).start(flow.acked()).await.unwrap();
        workers.push((behaviour, flow, writer, source));
    }
    // Each holds its prefetch: the two hold twice as many.
    until("both prefetches pulled", || async {
        (consumer_info(&js, "workers").await.num_ack_pending == 2 * PREFETCH).then_some(())
    })
    .await;
    for (_, _, _, source) in &workers {
        assert_eq!(source.stats().pulled, PREFETCH as u64);
    }
    for (behaviour, ..) in &workers {
        behaviour.gate.as_ref().unwrap().add_permits(40);
    }
    until("40 items in OUT", || async { (stored(&js, "OUT").await == 40).then_some(()) }).await;
    until_all_answered(&js, "workers").await;
    let mut acked = 0;
    for (behaviour, flow, writer, source) in workers {
        let stats = source.stop().await;
        assert_eq!(stats.pulled, stats.acked);
        acked += stats.acked;
        assert_eq!(behaviour.seen.lock().unwrap().values().sum::<u32>() as u64, stats.acked);
        flow.shutdown().await;
        assert_eq!(writer.await.unwrap().published, stats.acked);
    }
    assert_eq!(acked, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_ends_once_its_pipeline_is_shut_down_with_no_message_coming() {
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    publish(&js, 0..3).await;
    let flow = Segment::start(Arc::new(Behaviour::default())).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source = Source::new(client.clone(), "IN", "workers").start(flow.acked()).await.unwrap();
    until("3 acked", || async { (source.stats().acked == 3).then_some(()) }).await;
    flow.shutdown().await;
    assert_eq!(writer.await.unwrap().published, 3);
    // The stream is idle: the source sees its pipeline's input close.
    let stats = tokio::time::timeout(DEADLINE, source.wait()).await.expect("the source ended");
    assert_eq!((stats.pulled, stats.acked, stats.naked), (3, 3, 0));
    assert_eq!(consumer_info(&js, "workers").await.ack_floor.stream_sequence, 3);

    // A message published later goes to the next worker.
    publish(&js, [3]).await;
    let flow = Segment::start(Arc::new(Behaviour::default())).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source = Source::new(client.clone(), "IN", "workers").start(flow.acked()).await.unwrap();
    until("4 items in OUT", || async { (stored(&js, "OUT").await == 4).then_some(()) }).await;
    let info = until_all_answered(&js, "workers").await;
    assert_eq!((info.delivered.stream_sequence, info.delivered.consumer_sequence), (4, 4));
    let stats = source.stop().await;
    assert_eq!((stats.pulled, stats.acked, stats.naked), (1, 1, 0));
    flow.shutdown().await;
    assert_eq!(writer.await.unwrap().published, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_is_kept_within_the_servers_max_payload() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.conf");
    std::fs::write(&config, "max_payload: 1024\n").unwrap();
    let server = NatsServer::start_with(&["-c", config.to_str().unwrap()]);
    let (client, js) = broker(&server).await;
    // Neither decodes. The first one's copy fits once its error text is
    // shortened; the second one's does not fit even without it.
    js.publish("in.items", "x".repeat(800).into()).await.unwrap().await.unwrap();
    js.publish("in.items", "y".repeat(1000).into()).await.unwrap().await.unwrap();
    publish(&js, [5]).await;

    let flow = Segment::start(Arc::new(Behaviour::default())).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source =
        Source::new(client.clone(), "IN", "workers").dead_letter("dead.items").start(flow.acked()).await.unwrap();
    until("every message answered", || async {
        (source.stats().dead_lettered == 2 && source.stats().acked == 1).then_some(())
    })
    .await;
    until_all_answered(&js, "workers").await;
    let stats = source.stop().await;
    assert_eq!((stats.pulled, stats.naked, stats.errors), (3, 0, 1));
    flow.shutdown().await;
    assert_eq!(writer.await.unwrap().published, 1);

    let dead = messages(&js, "DEAD").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload.len(), 800);
    let error = dead[0].headers.get(dead_letter::ERROR).unwrap().as_str();
    // 800 bytes of payload and 170 of headers without the text leave it 54
    // (the 54th is a space, left out).
    assert_eq!(error, "cannot decode a 800-byte json payload: expected value");
    assert_eq!(dead[0].headers.get(dead_letter::SEQUENCE).unwrap().as_str(), "1");
}

#[tokio::test]
async fn start_creates_or_updates_the_consumer_and_refuses_what_cannot_be() {
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    let flow = Segment::start(Arc::new(Behaviour::default())).await;

    let error = Source::new(client.clone(), "MISSING", "workers").start(flow.acked()).await.unwrap_err();
    assert!(
        matches!(&error, NatsError::Consumer { stream, consumer, .. } if stream == "MISSING" && consumer == "workers")
    );
    let text = error.to_string();
    assert!(text.starts_with("cannot bind to the durable consumer \"workers\" of the stream \"MISSING\": "), "{text}");

    // The consumer takes the settings of the last source started.
    let ack_wait = Duration::from_secs(7);
    for filter in ["in.a", "in.b"] {
        let source = Source::new(client.clone(), "IN", "workers")
            .filter_subject(filter)
            .ack_wait(ack_wait)
            .max_deliver(2)
            .start(flow.acked())
            .await
            .unwrap();
        let config = consumer_info(&js, "workers").await.config;
        assert_eq!((config.filter_subject.as_str(), config.ack_wait, config.max_deliver), (filter, ack_wait, 2));
        source.stop().await;
    }

    // A push consumer cannot become a pull consumer.
    let push = consumer::push::Config {
        durable_name: Some("pushed".into()),
        deliver_subject: "deliver.here".into(),
        ..Default::default()
    };
    js.create_consumer_on_stream(push, "IN").await.unwrap();
    let error = Source::new(client.clone(), "IN", "pushed").start(flow.acked()).await.unwrap_err();
    assert!(matches!(&error, NatsError::Consumer { consumer, .. } if consumer == "pushed"), "{error:?}");
    flow.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waits_for_the_items_in_the_pipeline_and_leaves_the_rest_in_the_stream() {
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    publish(&js, 0..20).await;
    let behaviour = Arc::new(Behaviour { gate: Some(Semaphore::new(0)), ..Default::default() });
    let flow = Segment::start(behaviour.clone()).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source = Source::new(client.clone(), "IN", "workers").prefetch(5).start(flow.acked()).await.unwrap();
    until("the prefetch pulled", || async { (consumer_info(&js, "workers").await.num_ack_pending == 5).then_some(()) })
        .await;

    // Polled once here, so the source is told to stop before the gate
    // opens (a spawned task might run only after the items are done).
    let mut stopping = Box::pin(source.stop());
    assert!(futures::poll!(&mut stopping).is_pending(), "the pipeline still holds its items");
    behaviour.gate.as_ref().unwrap().add_permits(20);
    let stats = tokio::time::timeout(DEADLINE, stopping).await.expect("the source stopped");
    // What went into the pipeline was processed and acked; what had not
    // was given back; nothing more was pulled.
    assert_eq!(stats.pulled, 5);
    assert_eq!(stats.acked + stats.naked, 5);
    assert_eq!(behaviour.seen.lock().unwrap().len() as u64, stats.acked);
    flow.shutdown().await;
    assert_eq!(writer.await.unwrap().published, stats.acked);
    let info = consumer_info(&js, "workers").await;
    assert_eq!((info.num_pending, info.ack_floor.stream_sequence), (15, stats.acked));
}

/// The public types can be sent and shared between tasks, and the futures
/// of `start`, `run` and `stop` can be spawned.
#[test]
fn public_types_are_send_and_sync_and_their_futures_spawnable() {
    fn send_sync<T: Send + Sync>() {}
    fn spawnable<F: Future + Send + 'static>(_: &F) {}
    send_sync::<Source>();
    send_sync::<genflow::nats::SourceHandle>();
    send_sync::<genflow::nats::SourceStats>();
    send_sync::<Sink<u64>>();
    send_sync::<genflow::nats::SinkStats>();
    send_sync::<NatsError>();
    fn futures(client: Client, flow: Segment, handle: genflow::nats::SourceHandle) {
        spawnable(&Source::new(client.clone(), "IN", "workers").start(flow.acked()));
        spawnable(&Sink::new(client, "out").run(flow.output().unwrap().acked()));
        spawnable(&handle.stop());
    }
    let _ = futures;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_that_cannot_be_stored_yet_is_tried_again_until_it_is() {
    let server = NatsServer::start();
    let client = Connect::new(server.url()).connect().await.unwrap();
    let js = jetstream::new(client.clone());
    for (name, subject) in [("IN", "in.>"), ("OUT", "out.>")] {
        let config = stream::Config { name: name.into(), subjects: vec![subject.into()], ..Default::default() };
        js.create_stream(config).await.unwrap();
    }
    publish(&js, [7]).await;
    let behaviour = Behaviour { poison: HashSet::from([7]), ..Default::default() };
    let flow = Segment::start(Arc::new(behaviour)).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source = Source::new(client.clone(), "IN", "workers")
        .max_deliver(1)
        .dead_letter("dead.items")
        .start(flow.acked())
        .await
        .unwrap();
    // No stream captures `dead.>` yet: the copy fails and is tried again.
    until("a failed dead-letter copy", || async { (source.stats().errors > 0).then_some(()) }).await;
    assert_eq!(source.stats().dead_lettered, 0);
    let config = stream::Config { name: "DEAD".into(), subjects: vec!["dead.>".into()], ..Default::default() };
    js.create_stream(config).await.unwrap();
    until("the copy stored", || async { (stored(&js, "DEAD").await == 1).then_some(()) }).await;
    let info = until_all_answered(&js, "workers").await;
    assert_eq!(info.delivered.consumer_sequence, 1, "processed once, not delivered again");
    let stats = source.stop().await;
    assert_eq!((stats.pulled, stats.dead_lettered, stats.naked), (1, 1, 0));
    flow.shutdown().await;
    writer.await.unwrap();
    let dead = messages(&js, "DEAD").await;
    assert_eq!(decode(&dead[0]), 7);
    assert_eq!(dead[0].headers.get(dead_letter::ERROR).unwrap().as_str(), "work: item 7 is poison");
}

/// The `tracing` events of the current thread: level and message.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(Level, String)>>>);

impl<S: Subscriber> Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0.lock().unwrap().push((*event.metadata().level(), message.0));
    }
}

impl Events {
    /// Records the events of this thread until the guard is dropped.
    fn record() -> (Self, tracing::subscriber::DefaultGuard) {
        let events = Events::default();
        let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
        (events, guard)
    }

    /// Whether an event of `level` has a message starting with `prefix`.
    fn has(&self, level: Level, prefix: &str) -> bool {
        self.0.lock().unwrap().iter().any(|(l, message)| *l == level && message.starts_with(prefix))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_decodes_each_message_by_its_content_type_and_falls_back_to_its_codec() {
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    // The upstream segment writes MessagePack, with its Content-Type.
    let upstream = Segment::start(Arc::new(Behaviour::default())).await;
    let writer = tokio::spawn(
        Sink::new(client.clone(), "in.items").codec(Codec::MessagePack).run(upstream.output().unwrap().acked()),
    );
    for n in 0..10 {
        upstream.send(n).await.unwrap();
    }
    upstream.shutdown().await;
    assert_eq!(writer.await.unwrap().published, 10);
    // Another program: JSON without a Content-Type, and a format genflow
    // does not know.
    publish(&js, [100]).await;
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "text/csv");
    js.publish_with_headers("in.items", headers, "100,200".into()).await.unwrap().await.unwrap();

    // The source's own codec is JSON.
    let flow = Segment::start(Arc::new(Behaviour::default())).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source =
        Source::new(client.clone(), "IN", "workers").dead_letter("dead.items").start(flow.acked()).await.unwrap();
    until("11 items in OUT and 1 in DEAD", || async {
        (stored(&js, "OUT").await == 11 && stored(&js, "DEAD").await == 1).then_some(())
    })
    .await;
    until_all_answered(&js, "workers").await;
    let stats = source.stop().await;
    assert_eq!((stats.pulled, stats.acked, stats.naked, stats.dead_lettered, stats.errors), (12, 11, 0, 1, 0));
    flow.shutdown().await;
    assert_eq!(writer.await.unwrap().published, 11);
    let out: HashSet<u64> = messages(&js, "OUT").await.iter().map(decode).collect();
    // Doubled by each segment, and 100 by the second one only.
    assert_eq!(out, (0..10).map(|n| n * 4).chain([200]).collect());
    let dead = messages(&js, "DEAD").await;
    assert_eq!(&dead[0].payload[..], b"100,200");
    let error = NatsError::UnknownContentType { content_type: "text/csv".into(), codec: Codec::Json }.to_string();
    assert_eq!(
        error,
        "cannot decode a payload of content type \"text/csv\": no codec reads it (known: application/json, \
         application/msgpack); this source's codec, json, is used only for messages without a Content-Type"
    );
    assert_eq!(dead[0].headers.get(dead_letter::ERROR).unwrap().as_str(), error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_messages_on_their_last_delivery_into_the_pipeline_rather_than_giving_up_on_them() {
    const ITEMS: u64 = 60;
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    publish(&js, 0..ITEMS).await;
    // A pipeline that holds far fewer items than the source pulls: most
    // of them wait outside it when the source stops.
    let behaviour = Arc::new(Behaviour { gate: Some(Semaphore::new(0)), ..Default::default() });
    let flow = Segment::builder(behaviour.clone()).queue_size("work", 4).max_demand("work", 1).start().await.unwrap();
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source = Source::new(client.clone(), "IN", "workers")
        .max_deliver(1)
        .prefetch(ITEMS as usize)
        .dead_letter("dead.items")
        .start(flow.acked())
        .await
        .unwrap();
    until("every message pulled", || async { (source.stats().pulled == ITEMS).then_some(()) }).await;
    // The stop comes first; then the pipeline moves again.
    let (stats, ()) = tokio::time::timeout(DEADLINE, async {
        futures::join!(source.stop(), async { behaviour.gate.as_ref().unwrap().add_permits(1000) })
    })
    .await
    .expect("the source stopped");
    // The server would not deliver them again: each was processed, none
    // given back, none given up on.
    assert_eq!((stats.pulled, stats.acked, stats.naked, stats.dead_lettered, stats.errors), (ITEMS, ITEMS, 0, 0, 0));
    assert_eq!(behaviour.seen.lock().unwrap().len() as u64, ITEMS);
    assert!(behaviour.seen.lock().unwrap().values().all(|seen| *seen == 1));
    let info = until_all_answered(&js, "workers").await;
    assert_eq!(info.ack_floor.stream_sequence, ITEMS);
    assert_eq!(stored(&js, "DEAD").await, 0);
    flow.shutdown().await;
    assert_eq!(writer.await.unwrap().published, ITEMS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_an_aborted_pipeline_drops_on_their_last_delivery_go_to_the_dead_letter_subject() {
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    publish(&js, 0..5).await;
    let stuck = Arc::new(Behaviour { gate: Some(Semaphore::new(0)), ..Default::default() });
    let flow = Segment::start(stuck).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    let source = Source::new(client.clone(), "IN", "workers")
        .max_deliver(1)
        .prefetch(5)
        .dead_letter("dead.items")
        .start(flow.acked())
        .await
        .unwrap();
    until("every message pulled", || async {
        (consumer_info(&js, "workers").await.num_ack_pending == 5).then_some(())
    })
    .await;
    flow.abort();
    let stats = tokio::time::timeout(DEADLINE, source.stop()).await.expect("the source stopped");
    // A nak would lose them: the server delivers a message no more once
    // it reached its deliveries. Each is kept in the dead-letter stream.
    assert_eq!((stats.pulled, stats.acked, stats.naked, stats.dead_lettered), (5, 0, 0, 5));
    assert_eq!(writer.await.unwrap().published, 0);
    until_all_answered(&js, "workers").await;
    let dead = messages(&js, "DEAD").await;
    assert_eq!(dead.iter().map(decode).collect::<HashSet<_>>(), (0..5).collect());
    for copy in &dead {
        assert_eq!(
            copy.headers.get(dead_letter::ERROR).unwrap().as_str(),
            "dropped: the pipeline was aborted or shut down before it was done with the item, on its last allowed \
             delivery"
        );
    }
}

#[tokio::test]
async fn a_source_whose_consumer_is_deleted_ends_with_an_error_saying_so() {
    let (events, _guard) = Events::record();
    let server = NatsServer::start();
    let (client, js) = broker(&server).await;
    let flow = Segment::start(Arc::new(Behaviour::default())).await;
    let mut out = flow.output().unwrap();
    let source = Source::new(client.clone(), "IN", "workers").start(flow.acked()).await.unwrap();
    publish(&js, [1]).await;
    assert_eq!(tokio::time::timeout(DEADLINE, out.next()).await.unwrap(), Some(2));
    until("the message acked", || async { (source.stats().acked == 1).then_some(()) }).await;

    js.get_stream("IN").await.unwrap().delete_consumer("workers").await.unwrap();
    // The source ends by itself.
    let stats = tokio::time::timeout(DEADLINE, source.wait()).await.expect("the source ended");
    let error = stats.error.as_deref().expect("the error that ended the source");
    assert!(
        matches!(error, NatsError::ConsumerGone { stream, consumer, .. } if stream == "IN" && consumer == "workers"),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.starts_with(
            "the durable consumer \"workers\" of the stream \"IN\" no longer exists (deleted while the source ran): the \
             source ended (consumer not found"
        ),
        "{text}"
    );
    assert!(stats.pull_errors >= 1 && stats.errors >= stats.pull_errors, "{stats:?}");
    assert_eq!((stats.pulled, stats.acked), (1, 1));
    assert!(events.has(Level::ERROR, "the NATS source ends"));
    flow.shutdown().await;
}

#[tokio::test]
async fn pulls_failing_while_the_broker_is_down_are_counted_and_the_source_resumes_once_it_is_back() {
    let (events, _guard) = Events::record();
    let mut server = NatsServer::start();
    let (client, js) = broker(&server).await;
    publish(&js, 0..10).await;
    let flow = Segment::start(Arc::new(Behaviour::default())).await;
    let writer = tokio::spawn(Sink::new(client.clone(), "out.items").run(flow.output().unwrap().acked()));
    // A killed server may forget the last acks it had: they come back
    // after `ack_wait`, kept short here.
    let source = Source::new(client.clone(), "IN", "workers")
        .ack_wait(Duration::from_secs(2))
        .start(flow.acked())
        .await
        .unwrap();
    until("10 acked", || async { (source.stats().acked == 10).then_some(()) }).await;
    assert_eq!(source.stats().pull_errors, 0);

    server.stop();
    until("two failed pulls", || async { (source.stats().pull_errors >= 2).then_some(()) }).await;
    assert!(source.stats().errors >= 2);
    assert!(events.has(Level::WARN, "the NATS server is unreachable; pulling again in"));
    server.restart();
    until("the client connected again", || async { (client.connection_state() == State::Connected).then_some(()) })
        .await;
    publish(&js, 10..20).await;
    let expected: HashSet<u64> = (0..20).map(|n| n * 2).collect();
    until("every item in OUT", || async {
        (messages(&js, "OUT").await.iter().map(decode).collect::<HashSet<_>>() == expected).then_some(())
    })
    .await;
    let info = until_all_answered(&js, "workers").await;
    assert_eq!(info.ack_floor.stream_sequence, 20);
    let stats = source.stop().await;
    assert!(stats.pulled >= 20 && stats.acked == stats.pulled, "{stats:?}");
    assert_eq!((stats.naked, stats.dead_lettered), (0, 0));
    assert!(stats.pull_errors >= 2 && stats.error.is_none(), "{stats:?}");
    flow.shutdown().await;
    assert_eq!(writer.await.unwrap().published, stats.acked);
}

#[tokio::test]
async fn start_says_the_broker_is_unreachable_when_it_is_down() {
    let mut server = NatsServer::start();
    let (client, _js) = broker(&server).await;
    let flow = Segment::start(Arc::new(Behaviour::default())).await;
    server.stop();
    let started =
        tokio::time::timeout(Duration::from_secs(30), Source::new(client, "IN", "workers").start(flow.acked()))
            .await
            .expect("start returned");
    let error = started.expect_err("no consumer bound with the broker down");
    assert!(
        matches!(&error, NatsError::Unreachable { stream, consumer, .. } if stream == "IN" && consumer == "workers"),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.starts_with(
            "cannot reach the NATS server to bind the durable consumer \"workers\" of the stream \"IN\": the \
             connection is down ("
        ),
        "{text}"
    );
    flow.shutdown().await;
}
