//! Orders enriched by a slow service and written to a file in batches: the
//! two common shapes of I/O-bound pipelines.
//!
//! ```text
//! cargo run --release --example orders
//! cargo run --release --example orders -- --orders 20000 --latency-ms 5 --concurrency 64 --batch 500
//! cargo run --release --example orders -- --concurrency 1 --orders 500     # what concurrency buys
//! ```
//!
//! ```text
//! parse ──▶ lookup, #[concurrency(64)] ──▶ write, #[batch(size = 500, timeout = 100 ms)]
//! ```
//!
//! - `parse` turns CSV lines (`id,customer,cents`) into orders, failing the
//!   malformed ones with `out.fail`.
//! - `lookup` asks a simulated customer service for each order's region: a
//!   call that takes `--latency-ms` and fails for unknown customers. It
//!   counts the orders it saw (its state, one item at a time) and hands the
//!   call itself to `out.try_emit_async`, so up to `--concurrency` calls
//!   per replica are in flight at once.
//! - `write` receives `Vec<Enriched>` batches of up to `--batch` orders, cut
//!   when full or when the oldest has waited 100 ms, and appends each batch
//!   to the output file with one write.
//!
//! At the end it prints the time against what the latency and concurrency
//! allow, the batches written, the failures and the pipeline's metrics.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use futures::{StreamExt, stream};
use genflow::{Emitter, GenServer, Stage};

#[derive(Parser)]
#[command(about = "Orders enriched by a slow service and written to a file in batches")]
struct Args {
    /// Orders to generate.
    #[arg(long, default_value_t = 10_000)]
    orders: u64,
    /// Latency of one call to the customer service, in milliseconds.
    #[arg(long, default_value_t = 10)]
    latency_ms: u64,
    /// Calls in flight at once (`lookup`'s concurrency).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Orders per write (`write`'s batch size).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Where the enriched orders go.
    #[arg(long, default_value = "orders.csv")]
    out: PathBuf,
}

/// One order, as parsed.
struct Order {
    id: u64,
    customer: u32,
    cents: u64,
}

/// An order with its customer's region.
struct Enriched {
    order: Order,
    region: &'static str,
}

/// A customer service: each call waits `latency`; customers whose number
/// ends in 99 are unknown.
struct CustomerService {
    latency: Duration,
}

impl CustomerService {
    async fn region(&self, customer: u32) -> Result<&'static str, String> {
        tokio::time::sleep(self.latency).await;
        const REGIONS: [&str; 4] = ["north", "south", "east", "west"];
        match customer % 100 {
            99 => Err(format!("unknown customer {customer}")),
            n => Ok(REGIONS[n as usize % REGIONS.len()]),
        }
    }
}

/// The pipeline's settings, read by the stages' `new`.
struct Settings {
    latency: Duration,
    out: PathBuf,
}

#[genflow::pipeline{
    parse: Parse,
    #[concurrency(64)]
    lookup: Lookup,
    #[batch(size = 500, timeout = Duration::from_millis(100))]
    write: Write,
}]
struct Orders {
    settings: Arc<Settings>,
}

// ---- parse ----------------------------------------------------------------

struct Parse;

impl GenServer for Parse {
    type Message = ();
    type Response = ();
    type Registry = Orders;
    fn new(_: Orders) -> Self {
        Parse
    }
    async fn handle_call(&mut self, (): ()) {}
}

impl Stage for Parse {
    type In = String;
    type Out = Order;
    async fn process(&mut self, line: String, out: &mut Emitter<Order>) {
        let mut fields = line.split(',').map(str::parse::<u64>);
        match (fields.next(), fields.next(), fields.next()) {
            (Some(Ok(id)), Some(Ok(customer)), Some(Ok(cents))) if customer <= u64::from(u32::MAX) => {
                out.emit(Order { id, customer: customer as u32, cents }).await;
            }
            _ => out.fail(format!("malformed order line {line:?}")),
        }
    }
}

// ---- lookup ---------------------------------------------------------------

struct Lookup {
    service: Arc<CustomerService>,
    seen: u64,
}

impl GenServer for Lookup {
    type Message = ();
    /// How many orders this replica looked up.
    type Response = u64;
    type Registry = Orders;
    fn new(orders: Orders) -> Self {
        let service = Arc::new(CustomerService { latency: orders.settings.latency });
        Lookup { service, seen: 0 }
    }
    async fn handle_call(&mut self, (): ()) -> u64 {
        self.seen
    }
}

impl Stage for Lookup {
    type In = Order;
    type Out = Enriched;
    async fn process(&mut self, order: Order, out: &mut Emitter<Enriched>) {
        // The stateful part, one order at a time.
        self.seen += 1;
        // The slow part, in flight with up to `concurrency` others.
        let service = self.service.clone();
        out.try_emit_async(async move {
            let region = service.region(order.customer).await?;
            Ok::<_, String>(Enriched { order, region })
        })
        .await;
    }
}

// ---- write ----------------------------------------------------------------

struct Write {
    file: Option<BufWriter<File>>,
    path: PathBuf,
}

impl GenServer for Write {
    type Message = ();
    type Response = ();
    type Registry = Orders;
    fn new(orders: Orders) -> Self {
        Write { file: None, path: orders.settings.out.clone() }
    }
    async fn handle_call(&mut self, (): ()) {}
}

impl Stage for Write {
    type In = Vec<Enriched>;
    /// The number of orders of each write.
    type Out = usize;
    async fn process(&mut self, batch: Vec<Enriched>, out: &mut Emitter<usize>) {
        let file = match &mut self.file {
            Some(file) => file,
            None => match File::create(&self.path) {
                Ok(file) => self.file.insert(BufWriter::new(file)),
                // Every order of the batch fails with the error.
                Err(e) => return out.fail(format!("cannot create {}: {e}", self.path.display())),
            },
        };
        let mut text = String::with_capacity(batch.len() * 32);
        for Enriched { order, region } in &batch {
            text.push_str(&format!("{},{},{},{region}\n", order.id, order.customer, order.cents));
        }
        // One write per batch.
        match file.write_all(text.as_bytes()).and_then(|()| file.flush()) {
            Ok(()) => out.emit(batch.len()).await,
            Err(e) => out.fail(format!("cannot write to {}: {e}", self.path.display())),
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let settings = Arc::new(Settings { latency: Duration::from_millis(args.latency_ms), out: args.out.clone() });
    let orders = Orders::builder(settings)
        .concurrency("lookup", args.concurrency)
        .batch("write", args.batch, Duration::from_millis(100))
        .start()
        .await?;
    let writes = tokio::spawn(orders.output().expect("taken once").collect::<Vec<usize>>());
    let failures = tokio::spawn(orders.failures().expect("taken once").count());
    // One malformed line in a thousand.
    let lines = (0..args.orders).map(|id| match id % 1000 {
        999 => format!("{id},not-a-customer"),
        _ => format!("{id},{},{}", fastrand::u32(0..10_000), fastrand::u64(100..100_000)),
    });
    let started = Instant::now();
    orders.feed(stream::iter(lines)).await?;
    orders.flush().await?;
    let elapsed = started.elapsed();
    let looked_up = orders.call_lookup(()).await?;
    let metrics = orders.metrics();
    orders.shutdown().await;
    let writes = writes.await?;
    let failed = failures.await?;
    let written: usize = writes.iter().sum();

    let ideal = Duration::from_millis(args.latency_ms) * (looked_up.div_ceil(args.concurrency.max(1) as u64)) as u32;
    println!("{} orders in {:.2?} ({:.0} orders/s)", args.orders, elapsed, args.orders as f64 / elapsed.as_secs_f64());
    println!(
        "  lookup: {looked_up} calls of {} ms, {} in flight at most: at best {ideal:.2?}",
        args.latency_ms, args.concurrency
    );
    println!("  write:  {written} orders in {} writes to {}", writes.len(), args.out.display());
    println!("  failed: {failed} (malformed lines and unknown customers)");
    assert_eq!(written as u64 + failed as u64, args.orders, "every order is written or failed");
    println!("\n{metrics}");
    Ok(())
}
