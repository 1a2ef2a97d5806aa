//! Measuring a pipeline's throughput under backpressure.
//!
//! [`Harness::run`] feeds a running pipeline a stream of items at full speed
//! (as fast as backpressure lets it), reads its output, shuts it down so that
//! every item is accounted for, and returns a [`Report`]: items per second
//! end to end, each stage's counts, busy and blocked time, how full each
//! queue was over the run, and the bottleneck. `Report` prints as a table.
//!
//! ```
//! use genflow::{Emitter, GenServer, Stage, harness::Harness};
//!
//! struct Square;
//!
//! impl GenServer for Square {
//!     type Message = ();
//!     type Response = ();
//!     type Registry = Squares;
//!     fn new(_: Squares) -> Self {
//!         Square
//!     }
//!     async fn handle_call(&mut self, _: ()) {}
//!     async fn handle_cast(&mut self, _: ()) {}
//! }
//!
//! impl Stage for Square {
//!     type In = u64;
//!     type Out = u64;
//!     async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
//!         out.emit(x * x).await;
//!     }
//! }
//!
//! #[genflow::pipeline{ square: Square }]
//! struct Squares;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let report = Harness::new().run_n(Squares::start().await, 10_000, |i| i).await?;
//! assert_eq!(report.items_in, 10_000);
//! assert_eq!(report.items_out, Some(10_000));
//! println!("{report}");
//! # Ok(())
//! # }
//! ```
//!
//! # Reading the report
//!
//! - `items/s` is end to end: items fed divided by the time from the first
//!   item sent to the last stage's end (shutdown drains every stage, so
//!   nothing is still in flight when the clock stops).
//! - Per stage, `busy` is the share of the run the stage's replicas spent in
//!   `process`, and `blocked` the share they spent waiting for room in the
//!   next queue. The *bottleneck* is the stage with the highest busy share:
//!   the stages before it are blocked on it, the stages after it idle.
//!   Adding replicas to it (or making it faster) is what raises throughput.
//! - `idle` is the rest of the run: time waiting for input. If the first
//!   stage is mostly idle, the feeder (whatever produces the items) is the
//!   limit, not the pipeline.
//! - `queue avg`/`max` is how full the stage's input queue was, sampled at
//!   [`Harness::sample_every`]. A full queue in front of the bottleneck and
//!   empty queues after it is the usual picture under backpressure.

mod report;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt, stream};

pub use report::{QueueFill, Report};

use crate::{Pipeline, SendError};

/// Runs a pipeline over a stream of items and reports its throughput.
///
/// See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct Harness {
    sample_every: Duration,
}

impl Default for Harness {
    fn default() -> Self {
        Harness { sample_every: Duration::from_millis(10) }
    }
}

impl Harness {
    /// A harness that samples queue fill every 10 ms.
    pub fn new() -> Self {
        Harness::default()
    }

    /// How often to sample the queues' fill during the run.
    ///
    /// # Panics
    ///
    /// Panics if `every` is zero.
    #[track_caller]
    #[must_use]
    pub fn sample_every(mut self, every: Duration) -> Self {
        assert!(!every.is_zero(), "the sampling interval must not be zero");
        self.sample_every = every;
        self
    }

    /// Feeds `n` items, `item(0)` to `item(n - 1)`, then as
    /// [`run`](Self::run).
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub async fn run_n<P, F>(&self, pipeline: P, n: u64, item: F) -> Result<Report, SendError<P::In>>
    where
        P: Pipeline,
        F: FnMut(u64) -> P::In + Send,
    {
        self.run(pipeline, stream::iter(0..n).map(item)).await
    }

    /// Feeds every item of `items` into `pipeline` as fast as it takes them,
    /// reads the output (if it was not taken before), shuts the pipeline
    /// down, and reports.
    ///
    /// The run ends with the pipeline's shutdown, so start a fresh pipeline
    /// for each run. If the output was taken before, whoever holds it must
    /// keep reading it, and the report's `items_out` is `None`.
    ///
    /// Call it inside a Tokio runtime: it spawns a task that reads the
    /// output and one that samples the queues.
    ///
    /// # Errors
    ///
    /// `SendError::Closed` if the pipeline was shut down before every item
    /// went in; the pipeline is shut down in that case too.
    pub async fn run<P, S>(&self, pipeline: P, items: S) -> Result<Report, SendError<P::In>>
    where
        P: Pipeline,
        S: Stream<Item = P::In> + Send,
    {
        let reader = pipeline.output().map(|output| tokio::spawn(output.count()));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let sampler = tokio::spawn(sample(pipeline.clone(), self.sample_every, started, samples.clone()));
        let fed = pipeline.feed(items).await;
        pipeline.shutdown().await;
        let elapsed = started.elapsed();
        sampler.abort();
        let items_in = fed? as u64;
        let items_out = match reader {
            // The reader only counts; it ends with the output stream.
            Some(reader) => reader.await.ok().map(|n| n as u64),
            None => None,
        };
        let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(Report::new(items_in, items_out, elapsed, pipeline.metrics(), &samples))
    }
}

/// One sample per stage per tick: `(queued, capacity)`, in stage order.
type Sample = Vec<(u64, u64)>;

async fn sample<P: Pipeline>(pipeline: P, every: Duration, started: Instant, samples: Arc<Mutex<Vec<Sample>>>) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::from_std(started) + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let sample = pipeline.metrics().stages().iter().map(|s| (s.queued, s.capacity)).collect();
        samples.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
    }
}
