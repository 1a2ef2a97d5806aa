//! One hop through NATS JetStream: 100,000 small serde items published by
//! one segment to a stream and read from it by the next, with genflow's
//! `nats::Sink` and `nats::Source` around two one-stage pipelines, against
//! the same hop written with async-nats alone.
//!
//! - `genflow`: segment A is a pipeline of one stage passing each item on;
//!   its `AckedOutput` goes to a `Sink` publishing to the stream with up to
//!   `K` publishes waiting for their acknowledgement. Segment B is a
//!   `Source` (durable pull consumer, prefetch `P`, explicit double acks)
//!   feeding a pipeline of one stage passing each item on, whose output is
//!   counted.
//! - `raw_async_nats`: a publisher keeping at most `K` publish
//!   acknowledgements outstanding, with the same payloads and headers
//!   (`Content-Type`, `Nats-Msg-Id`), and a pull consumer that asks, as
//!   the source does, for as many messages as it has free of its `P`
//!   (waiting for at least one), reads each batch to its end, decodes and
//!   counts each message and double-acks it, up to `P` acks at once.
//!
//! Both run as tasks of one 2-worker Tokio runtime, each segment with its
//! own connection, for `(K, P)` = (64, 64), the defaults of the sink and
//! the source, and (256, 256). An iteration ends when the reading side has
//! every item and every message was acknowledged; its time starts before
//! either segment starts (the consumer's creation included). Each
//! iteration starts on a fresh stream (the last one deleted, the consumer
//! created again), on a `nats-server -js` the bench starts on a free
//! loopback port with its own store directory.
//!
//! ```text
//! cargo bench --features nats --bench nats
//! ```
//!
//! `GENFLOW_NATS_BENCH_ITEMS` changes the number of items per iteration.

#[path = "../tests/support/nats_server.rs"]
mod nats_server;

use std::{
    future::Future,
    time::{Duration, Instant},
};

use async_nats::{
    Client, HeaderMap,
    header::NATS_MESSAGE_ID,
    jetstream::{
        self,
        consumer::{AckPolicy, PullConsumer, pull},
        message::PublishMessage,
        stream,
    },
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::{StreamExt, stream::FuturesUnordered};
use genflow::nats::{Codec, Connect, Sink, Source};
use nats_server::NatsServer;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

/// Items per iteration.
const ITEMS: u64 = 100_000;
/// The stream of the hop, made again for each iteration.
const STREAM: &str = "HOP";
/// The subject the stream captures.
const SUBJECT: &str = "hop.orders";
/// The durable consumer reading it.
const CONSUMER: &str = "hop";
/// How long the source's pull requests wait (`PULL_WAIT` in
/// `src/nats/source.rs`).
const PULL_WAIT: Duration = Duration::from_secs(1);
/// How long one iteration may take before the bench fails.
const DEADLINE: Duration = Duration::from_secs(120);
/// Both sides' codec.
const CODEC: Codec = Codec::Json;

/// `(K, P)`: publishes in flight at most, messages pulled and not yet
/// answered at most.
const SETTINGS: [(usize, usize); 2] = [(64, 64), (256, 256)];

/// A small item: about 45 bytes of JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: u32,
    cents: i64,
    paid: bool,
}

fn orders(items: u64) -> Vec<Order> {
    (0..items)
        .map(|id| Order { id, customer: (id % 977) as u32, cents: (id * 37 % 10_000) as i64, paid: id % 3 != 0 })
        .collect()
}

/// What the reading side checks it got: the count and the sum of ids.
fn expected(items: u64) -> (u64, u64) {
    (items, items * items.saturating_sub(1) / 2)
}

fn message_id(order: &Order) -> String {
    format!("order-{}", order.id)
}

#[genflow::stage]
fn forward(order: Order) -> Order {
    order
}

/// Segment A: publishes what its stage emits.
#[genflow::pipeline{ forward: Forward<Upstream> }]
struct Upstream;

/// Segment B: what its source pulled goes through its stage.
#[genflow::pipeline{ forward: Forward<Downstream> }]
struct Downstream;

/// The broker, and the connections of the segments.
struct Broker {
    _server: NatsServer,
    clients: Clients,
}

/// A connection per segment, as if on two hosts.
#[derive(Clone)]
struct Clients {
    upstream: Client,
    downstream: Client,
}

impl Broker {
    async fn start() -> Self {
        let server = NatsServer::start();
        let upstream = Connect::new(server.url()).connect().await.expect("a connection");
        let downstream = Connect::new(server.url()).connect().await.expect("a connection");
        Broker { _server: server, clients: Clients { upstream, downstream } }
    }

    /// Deletes the stream (and its consumer) and makes it again, empty.
    async fn fresh_stream(&self) {
        let js = jetstream::new(self.clients.upstream.clone());
        let _ = js.delete_stream(STREAM).await;
        let config = stream::Config { name: STREAM.into(), subjects: vec![SUBJECT.into()], ..Default::default() };
        js.create_stream(config).await.expect("the stream");
    }
}

/// Waits for `check` to hold, polling every 200 µs, panicking after
/// [`DEADLINE`].
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// One hop through genflow's sink and source; the time from the start of
/// both segments until segment B has every item and every message is
/// acked.
async fn genflow_hop(clients: Clients, orders: Vec<Order>, (k, p): (usize, usize)) -> Duration {
    let items = orders.len() as u64;
    let started = Instant::now();

    let downstream = Downstream::start().await;
    let output = downstream.output().unwrap();
    let source = Source::new(clients.downstream.clone(), STREAM, CONSUMER)
        .prefetch(p)
        .codec(CODEC)
        .start(downstream.acked())
        .await
        .expect("the source");

    let upstream = Upstream::start().await;
    let sink = Sink::new(clients.upstream.clone(), SUBJECT).codec(CODEC).msg_id(message_id).max_in_flight(k);
    let writer = tokio::spawn(sink.run(upstream.output().unwrap().acked()));
    let feeder = tokio::spawn(async move {
        let fed = upstream.feed(futures::stream::iter(orders)).await.expect("segment A takes every item");
        upstream.shutdown().await;
        fed
    });

    let got =
        output.take(items as usize).fold((0u64, 0u64), |(n, sum), order| async move { (n + 1, sum + order.id) }).await;
    until("every message acked", || source.stats().acked == items).await;
    let elapsed = started.elapsed();

    assert_eq!(got, expected(items));
    assert_eq!(feeder.await.unwrap(), items as usize);
    let written = writer.await.unwrap();
    assert_eq!((written.published, written.duplicates, written.failed), (items, 0, 0));
    let stats = source.stop().await;
    assert_eq!((stats.pulled, stats.acked, stats.naked, stats.errors), (items, items, 0, 0));
    downstream.shutdown().await;
    elapsed
}

/// The same hop with async-nats alone.
async fn raw_hop(clients: Clients, orders: Vec<Order>, (k, p): (usize, usize)) -> Duration {
    let items = orders.len() as u64;
    let started = Instant::now();

    let js = jetstream::new(clients.downstream.clone());
    let config = pull::Config {
        durable_name: Some(CONSUMER.into()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: 5,
        ..Default::default()
    };
    let consumer: PullConsumer =
        js.get_stream(STREAM).await.expect("the stream").create_consumer(config).await.expect("the consumer");

    let publisher = tokio::spawn(publish(jetstream::new(clients.upstream.clone()), orders, k));
    let got = consume(&consumer, items, p).await;
    let elapsed = started.elapsed();

    assert_eq!(got, expected(items));
    assert_eq!(publisher.await.unwrap(), items);
    elapsed
}

/// Publishes every order, at most `k` acknowledgements outstanding; the
/// count stored.
async fn publish(js: jetstream::Context, orders: Vec<Order>, k: usize) -> u64 {
    let mut in_flight = FuturesUnordered::new();
    let mut stored = 0;
    let mut settle = |ack: Result<jetstream::publish::PublishAck, _>| {
        let ack = ack.expect("a publish acknowledgement");
        assert!(!ack.duplicate);
        stored += 1;
    };
    for order in orders {
        if in_flight.len() >= k {
            settle(in_flight.next().await.unwrap());
        }
        let payload = CODEC.encode(&order).expect("an encodable order");
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", CODEC.content_type());
        headers.insert(NATS_MESSAGE_ID, message_id(&order));
        let ack = js
            .send_publish(SUBJECT, PublishMessage::build().payload(payload).headers(headers))
            .await
            .expect("a publish");
        in_flight.push(ack.into_future());
    }
    while let Some(ack) = in_flight.next().await {
        settle(ack);
    }
    stored
}

/// Pulls, decodes, counts and double-acks `items` messages, with at most
/// `p` pulled and not yet confirmed; the count and the sum of ids.
async fn consume(consumer: &PullConsumer, items: u64, p: usize) -> (u64, u64) {
    let mut acking = FuturesUnordered::new();
    let (mut got, mut sum, mut acked) = (0u64, 0u64, 0u64);
    let confirmed = |result: Result<(), async_nats::Error>, acked: &mut u64| {
        result.expect("a confirmed ack");
        *acked += 1;
    };
    while got < items {
        if acking.len() >= p {
            confirmed(acking.next().await.unwrap(), &mut acked);
        }
        let free = p - acking.len();
        let mut batch =
            consumer.batch().max_messages(free).expires(PULL_WAIT).messages().await.expect("a pull request");
        while got < items {
            tokio::select! {
                biased;
                Some(result) = acking.next(), if !acking.is_empty() => confirmed(result, &mut acked),
                message = batch.next() => match message {
                    None => break,
                    Some(message) => {
                        let message = message.expect("a message");
                        let order: Order = CODEC.decode(&message.payload).expect("a decodable order");
                        got += 1;
                        sum += order.id;
                        acking.push(async move { message.double_ack().await });
                    }
                },
            }
        }
    }
    while let Some(result) = acking.next().await {
        confirmed(result, &mut acked);
    }
    assert_eq!(acked, items);
    (got, sum)
}

/// Runs `hop` `iters` times, each on a fresh stream and in a task of the
/// runtime (so that every part of both hops runs on its two workers); the
/// time the hops took.
fn timed<F: Future<Output = Duration> + Send + 'static>(
    rt: &Runtime,
    broker: &Broker,
    items: u64,
    iters: u64,
    hop: impl Fn(Clients, Vec<Order>) -> F,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        rt.block_on(broker.fresh_stream());
        total += rt.block_on(rt.spawn(hop(broker.clients.clone(), orders(items)))).expect("a hop that ends");
    }
    total
}

fn one_hop(c: &mut Criterion) {
    let items = std::env::var("GENFLOW_NATS_BENCH_ITEMS").ok().and_then(|n| n.parse().ok()).unwrap_or(ITEMS);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let broker = rt.block_on(Broker::start());

    let mut group = c.benchmark_group("nats_one_hop");
    group
        .throughput(Throughput::Elements(items))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    for settings in SETTINGS {
        let id = format!("k{}_p{}", settings.0, settings.1);
        group.bench_function(BenchmarkId::new("genflow", &id), |b| {
            b.iter_custom(|iters| {
                timed(&rt, &broker, items, iters, |clients, orders| genflow_hop(clients, orders, settings))
            });
        });
        group.bench_function(BenchmarkId::new("raw_async_nats", &id), |b| {
            b.iter_custom(|iters| {
                timed(&rt, &broker, items, iters, |clients, orders| raw_hop(clients, orders, settings))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, one_hop);
criterion_main!(benches);
