//! The benchmark harness, run on a pipeline with a known bottleneck.

use std::time::Duration;

use genflow::{Emitter, GenServer, Pipeline, SendError, Stage, harness::Harness};

/// Passes items on.
struct Fast;
/// Sleeps 1 ms per item: the bottleneck.
struct Slow;

macro_rules! server {
    ($ty:ident) => {
        impl GenServer for $ty {
            type Message = ();
            type Response = ();
            type Registry = Flow;
            fn new(_: Flow) -> Self {
                $ty
            }
            async fn handle_call(&mut self, _: ()) {}
            async fn handle_cast(&mut self, _: ()) {}
            fn channel_queue_size() -> usize {
                16
            }
        }
    };
}
server!(Fast);
server!(Slow);

impl Stage for Fast {
    type In = u32;
    type Out = u32;
    async fn process(&mut self, x: u32, out: &mut Emitter<u32>) {
        out.emit(x).await;
    }
}

impl Stage for Slow {
    type In = u32;
    type Out = u32;
    async fn process(&mut self, x: u32, out: &mut Emitter<u32>) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        out.emit(x).await;
    }
}

#[genflow::pipeline{ fast: Fast, slow: Slow }]
struct Flow;

#[tokio::test]
async fn the_report_counts_every_item_and_names_the_bottleneck() {
    let harness = Harness::new().sample_every(Duration::from_millis(1));
    let report = harness.run_n(Flow::start().await, 200, |i| i as u32).await.unwrap();
    assert_eq!(report.items_in, 200);
    assert_eq!(report.items_out, Some(200));
    assert_eq!(report.bottleneck(), Some("slow"));
    let slow = report.metrics.stage("slow").unwrap();
    assert_eq!((slow.received, slow.emitted, slow.failed), (200, 200, 0));
    assert!(report.elapsed >= Duration::from_millis(200), "200 items sleep 1 ms each: {:?}", report.elapsed);
    assert!(report.items_per_sec() > 0.0);

    // The slow stage's queue fills up: the feed outruns it.
    let queues: Vec<_> = report.queues.iter().map(|q| q.stage).collect();
    assert_eq!(queues, ["fast", "slow"]);
    assert!(!report.queues[1].samples.is_empty());
    assert_eq!(report.queues[1].capacity, 16);
    assert!(report.queues[1].max() >= 0.5, "{:?}", report.queues[1]);

    let table = report.to_string();
    assert!(table.starts_with("200 items in "), "{table}");
    assert!(table.contains("> slow"), "{table}");
    assert!(table.ends_with("bottleneck: slow"), "{table}");
}

#[tokio::test]
async fn a_taken_output_is_left_to_its_reader() {
    let flow = Flow::start().await;
    let output = flow.output().unwrap();
    let reader = tokio::spawn(futures::StreamExt::count(output));
    let report = Harness::new().run_n(flow, 50, |i| i as u32).await.unwrap();
    assert_eq!(report.items_out, None);
    assert_eq!(reader.await.unwrap(), 50);
}

#[tokio::test]
async fn feeding_a_shut_down_pipeline_is_an_error() {
    let flow = Flow::start().await;
    flow.shutdown().await;
    let error = Harness::new().run_n(flow, 10, |i| i as u32).await.unwrap_err();
    assert!(matches!(error, SendError::Closed(0)));
}

/// Code generic over pipelines sees the generated methods.
async fn push_all<P: Pipeline<In = u32>>(pipeline: &P, items: Vec<u32>) -> usize {
    for item in items {
        pipeline.send(item).await.unwrap();
    }
    pipeline.metrics().stages().len()
}

#[tokio::test]
async fn every_pipeline_implements_the_pipeline_trait() {
    let flow = Flow::start().await;
    let output = Pipeline::output(&flow).unwrap();
    let reader = tokio::spawn(futures::StreamExt::collect::<Vec<u32>>(output));
    assert_eq!(push_all(&flow, vec![3, 1, 2]).await, 2);
    Pipeline::shutdown(&flow).await;
    assert_eq!(reader.await.unwrap(), [3, 1, 2]);
}
