//! One hot key in a partitioned stage holds back every other key.
//!
//! `store` runs 4 replicas with `partition_by = key`. 200 items of one key
//! take 2 ms each; 2,000 items spread over 50 other keys take no time. The
//! items are interleaved (every 11th is hot). The program prints when the
//! last cold item came out, for the cold keys on the other replicas and
//! for those sharing the hot replica, with a partition queue of 16, 256 and
//! 1,024 items, and the metrics table of the first run.
//!
//! ```text
//! cargo run --release --example hot_partition
//! ```

use std::{
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, stream};
use genflow::{Emitter, GenServer, Metrics, Stage};
use tokio::time::Instant;

const HOT: u32 = 0;
const HOT_ITEMS: usize = 200;
const COLD_ITEMS: usize = 2_000;
const COLD_KEYS: u32 = 50;

/// A work item.
#[derive(Clone, Copy, Debug)]
struct Job {
    key: u32,
}

fn key_of(job: &Job) -> u32 {
    job.key
}

/// The partitioned stage: 2 ms per hot item, nothing for the others. `Q` is
/// the size of each replica's queue.
struct Store<R, const Q: usize> {
    replica: usize,
    registry: PhantomData<R>,
}

trait Replicas: Clone + Send + Sync + 'static {
    fn next_replica(&self) -> usize;
}

impl<R: Replicas, const Q: usize> GenServer for Store<R, Q> {
    type Message = ();
    type Response = ();
    type Registry = R;

    fn new(registry: R) -> Self {
        Store { replica: registry.next_replica(), registry: PhantomData }
    }

    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}

    fn channel_queue_size() -> usize {
        Q
    }
}

impl<R: Replicas, const Q: usize> Stage for Store<R, Q> {
    type In = Job;
    type Out = (Job, usize);

    async fn process(&mut self, job: Job, out: &mut Emitter<(Job, usize)>) {
        if job.key == HOT {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        out.emit((job, self.replica)).await;
    }
}

#[genflow::pipeline{ #[replicas(4, partition_by = key_of)] store: Store<Small, 16> }]
struct Small {
    replicas: Arc<AtomicUsize>,
}

#[genflow::pipeline{ #[replicas(4, partition_by = key_of)] store: Store<Medium, 256> }]
struct Medium {
    replicas: Arc<AtomicUsize>,
}

#[genflow::pipeline{ #[replicas(4, partition_by = key_of)] store: Store<Large, 1024> }]
struct Large {
    replicas: Arc<AtomicUsize>,
}

impl Replicas for Small {
    fn next_replica(&self) -> usize {
        self.replicas.fetch_add(1, Ordering::Relaxed)
    }
}

impl Replicas for Medium {
    fn next_replica(&self) -> usize {
        self.replicas.fetch_add(1, Ordering::Relaxed)
    }
}

impl Replicas for Large {
    fn next_replica(&self) -> usize {
        self.replicas.fetch_add(1, Ordering::Relaxed)
    }
}

/// The input: every 11th item is hot.
fn jobs() -> impl Iterator<Item = Job> {
    let mut cold = 0u32;
    (0..HOT_ITEMS + COLD_ITEMS).map(move |i| {
        if i % 11 == 0 {
            Job { key: HOT }
        } else {
            cold += 1;
            Job { key: 1 + cold % COLD_KEYS }
        }
    })
}

/// When the last cold item came out: on the replicas without the hot key,
/// and on the hot key's replica.
#[derive(Debug, Default)]
struct Finish {
    other_replicas: Duration,
    hot_replica: Duration,
    all: Duration,
}

async fn measure<P: genflow::Pipeline<In = Job, Out = (Job, usize)>>(pipeline: P) -> (Finish, Metrics) {
    let output = pipeline.output().expect("output taken once");
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut seen: Vec<(Job, usize, Duration)> = Vec::new();
        let mut output = output;
        while let Some((job, replica)) = output.next().await {
            seen.push((job, replica, started.elapsed()));
        }
        seen
    });
    pipeline.feed(stream::iter(jobs())).await.expect("the pipeline is running");
    let metrics_mid = pipeline.metrics();
    pipeline.shutdown().await;
    let seen = reader.await.expect("reader");
    let hot = seen.iter().find(|(job, ..)| job.key == HOT).map(|(_, r, _)| *r);
    let mut finish = Finish::default();
    for (job, replica, at) in &seen {
        finish.all = finish.all.max(*at);
        if job.key == HOT {
            continue;
        }
        if Some(*replica) == hot {
            finish.hot_replica = finish.hot_replica.max(*at);
        } else {
            finish.other_replicas = finish.other_replicas.max(*at);
        }
    }
    (finish, metrics_mid)
}

#[tokio::main]
async fn main() {
    let (small, table) = measure(Small::start(Arc::default()).await).await;
    let (medium, _) = measure(Medium::start(Arc::default()).await).await;
    let (large, _) = measure(Large::start(Arc::default()).await).await;
    for (queue, finish) in [(16, small), (256, medium), (1024, large)] {
        println!(
            "queue {queue:>3}: last cold item on the other replicas {:>7.1?}, on the hot replica {:>7.1?}, \
             last item {:>7.1?}",
            finish.other_replicas, finish.hot_replica, finish.all
        );
    }
    println!("\nmetrics of the queue-16 run, when the last item went in:\n{table}");
}
