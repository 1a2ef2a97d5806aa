//! Three stages over a generated stream, with backpressure, a live peek at a
//! stage's state, and the metrics table at the end.
//!
//! ```text
//! cargo run --release --example pipeline_basics
//! ```
//!
//! `parse` turns text lines into numbers (and counts the lines it cannot
//! read), `square` squares them on two replicas, and `stats` keeps a running
//! sum that `main` reads with a call while items flow.

use std::time::Instant;

use futures::StreamExt;
use genflow::{Emitter, GenServer, Stage};

/// Parses lines into numbers; skips (and counts) the malformed ones.
struct Parse {
    malformed: u64,
}

impl GenServer for Parse {
    type Message = ();
    type Response = u64;
    type Registry = Numbers;

    fn new(_: Numbers) -> Self {
        Parse { malformed: 0 }
    }

    /// How many lines could not be parsed so far.
    async fn handle_call(&mut self, _: ()) -> u64 {
        self.malformed
    }

    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Parse {
    type In = String;
    type Out = u64;

    async fn process(&mut self, line: String, out: &mut Emitter<u64>) {
        match line.trim().parse() {
            Ok(n) => out.emit(n).await,
            Err(_) => self.malformed += 1,
        }
    }
}

/// Squares numbers; run on two replicas.
struct Square;

impl GenServer for Square {
    type Message = ();
    type Response = ();
    type Registry = Numbers;

    fn new(_: Numbers) -> Self {
        Square
    }

    async fn handle_call(&mut self, _: ()) {}

    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Square {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit(n * n).await;
    }
}

/// Keeps count and sum; emits a checkpoint every 100 000 numbers.
struct Stats {
    count: u64,
    sum: u64,
}

impl GenServer for Stats {
    type Message = ();
    type Response = (u64, u64);
    type Registry = Numbers;

    fn new(_: Numbers) -> Self {
        Stats { count: 0, sum: 0 }
    }

    async fn handle_call(&mut self, _: ()) -> (u64, u64) {
        (self.count, self.sum)
    }

    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Stats {
    type In = u64;
    type Out = (u64, u64);

    async fn process(&mut self, n: u64, out: &mut Emitter<(u64, u64)>) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(n);
        if self.count % 100_000 == 0 {
            out.emit((self.count, self.sum)).await;
        }
    }
}

#[genflow::pipeline{
    parse: Parse,
    #[replicas(2)]
    square: Square,
    stats: Stats,
}]
struct Numbers;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const LINES: u64 = 1_000_000;
    let started = Instant::now();
    let numbers = Numbers::start().await;

    // Read the output while feeding: taking it is what makes it backpressured.
    let mut output = numbers.output().expect("output is taken once");
    let printer = tokio::spawn(async move {
        while let Some((count, sum)) = output.next().await {
            println!("checkpoint: {count:>9} numbers, running sum {sum}");
        }
    });

    // A generated input with a malformed line every 1000 lines.
    let lines =
        futures::stream::iter(0..LINES).map(|i| if i % 1_000 == 999 { "oops".to_string() } else { i.to_string() });
    let feeder = tokio::spawn({
        let numbers = numbers.clone();
        async move { numbers.feed(lines).await }
    });

    // Peek at a stage's state while items flow: calls are served between items.
    let (count, _) = numbers.call_stats(()).await?;
    println!("peek: stats has seen {count} numbers so far");

    let fed = feeder.await??;
    // Every line is in; ask `parse` how many it could not read so far.
    let malformed_so_far = numbers.call_parse(()).await?;
    // Drain: every stage finishes what it was given, the output stream ends.
    numbers.shutdown().await;
    printer.await?;

    let metrics = numbers.metrics();
    let parse = metrics.stage("parse").expect("declared above");
    println!("fed {fed} lines in {:.2?}", started.elapsed());
    println!("malformed lines: {} ({malformed_so_far} seen at the last peek)", parse.received - parse.emitted);
    println!("\n{metrics}");
    Ok(())
}
