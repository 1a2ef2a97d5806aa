//! Allocations per item in steady state, and memory per idle server,
//! measured with a counting global allocator (criterion cannot count
//! allocations).
//!
//! ```text
//! cargo bench --bench alloc
//! ```
//!
//! - A 1:1 stage of `u64` feeding a summing stage, against the same two
//!   tasks joined by a bounded `tokio::sync::mpsc` channel.
//! - A `call` round trip, against `mpsc` + `oneshot`.
//! - 10 000 idle servers (each in a registry of its own), and one stage with
//!   10 000 idle replicas: live heap bytes and resident memory per server.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    sync::atomic::{AtomicU64, Ordering},
};

use genflow::{Emitter, GenServer, Stage};
use tokio::{
    runtime::Runtime,
    sync::{mpsc, oneshot},
};

/// The system allocator, counting.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to `System` unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System::dealloc`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System::realloc`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok()).map_or(0, |pages| pages * 4096)
}

const WARM_UP: u64 = 100_000;
const ITEMS: u64 = 1_000_000;
const CALLS: u64 = 100_000;
const SERVERS: usize = 10_000;

// --- the pipeline ---------------------------------------------------------------

struct AddOne;
struct Sum(u64);

macro_rules! quiet_server {
    ($ty:ident, $registry:ident, $new:expr) => {
        impl GenServer for $ty {
            type Message = u64;
            type Response = u64;
            type Registry = $registry;
            fn new(_: $registry) -> Self {
                $new
            }
            async fn handle_call(&mut self, n: u64) -> u64 {
                n + 1
            }
            async fn handle_cast(&mut self, _: u64) {}
        }
    };
}
quiet_server!(AddOne, Flow, AddOne);
quiet_server!(Sum, Flow, Sum(0));

impl Stage for AddOne {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        out.emit(x + 1).await;
    }
}

impl Stage for Sum {
    type In = u64;
    type Out = ();
    async fn process(&mut self, x: u64, _: &mut Emitter<()>) {
        self.0 = self.0.wrapping_add(x);
    }
}

#[genflow::pipeline{ add_one: AddOne, sum: Sum }]
struct Flow;

fn pipeline_allocs_per_item(rt: &Runtime) -> f64 {
    rt.block_on(async {
        let flow = Flow::start().await;
        flow.feed(futures::stream::iter(0..WARM_UP)).await.unwrap();
        let before = allocs();
        flow.feed(futures::stream::iter(0..ITEMS)).await.unwrap();
        let per_item = (allocs() - before) as f64 / ITEMS as f64;
        flow.shutdown().await;
        assert_eq!(flow.metrics().stage("sum").unwrap().received, WARM_UP + ITEMS);
        per_item
    })
}

fn chain_allocs_per_item(rt: &Runtime) -> f64 {
    rt.block_on(async {
        let (tx, mut rx) = mpsc::channel::<u64>(1_000);
        let (tail_tx, mut tail_rx) = mpsc::channel::<u64>(1_000);
        tokio::spawn(async move {
            while let Some(x) = rx.recv().await {
                if tail_tx.send(x + 1).await.is_err() {
                    break;
                }
            }
        });
        let sum = tokio::spawn(async move {
            let mut sum = 0u64;
            while let Some(x) = tail_rx.recv().await {
                sum = sum.wrapping_add(x);
            }
            sum
        });
        for x in 0..WARM_UP {
            tx.send(x).await.unwrap();
        }
        let before = allocs();
        for x in 0..ITEMS {
            tx.send(x).await.unwrap();
        }
        let per_item = (allocs() - before) as f64 / ITEMS as f64;
        drop(tx);
        black_box(sum.await.unwrap());
        per_item
    })
}

// --- calls -----------------------------------------------------------------------

struct Echo;
quiet_server!(Echo, Echoes, Echo);

#[genflow::make_registry{ echo: Echo }]
struct Echoes;

fn call_allocs(rt: &Runtime) -> f64 {
    rt.block_on(async {
        let echoes = Echoes::start().await;
        for n in 0..1_000 {
            echoes.call_echo(n).await.unwrap();
        }
        let before = allocs();
        for n in 0..CALLS {
            black_box(echoes.call_echo(n).await.unwrap());
        }
        let per_call = (allocs() - before) as f64 / CALLS as f64;
        echoes.shutdown().await;
        per_call
    })
}

fn raw_call_allocs(rt: &Runtime) -> f64 {
    rt.block_on(async {
        let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(1_000);
        tokio::spawn(async move {
            while let Some((n, reply)) = rx.recv().await {
                let _ = reply.send(n + 1);
            }
        });
        let call = |n| {
            let tx = tx.clone();
            async move {
                let (reply, response) = oneshot::channel();
                tx.send((n, reply)).await.unwrap();
                response.await.unwrap()
            }
        };
        for n in 0..1_000 {
            call(n).await;
        }
        let before = allocs();
        for n in 0..CALLS {
            black_box(call(n).await);
        }
        (allocs() - before) as f64 / CALLS as f64
    })
}

// --- idle servers ------------------------------------------------------------------

struct Idle;
quiet_server!(Idle, Single, Idle);

#[genflow::make_registry{ idle: Idle }]
struct Single;

struct IdleStage;
quiet_server!(IdleStage, Wide, IdleStage);

impl Stage for IdleStage {
    type In = u64;
    type Out = ();
    async fn process(&mut self, _: u64, _: &mut Emitter<()>) {}
}

#[genflow::pipeline{ #[replicas(10000)] idle: IdleStage }]
struct Wide;

/// Heap bytes and resident bytes added per server while `start` runs.
fn per_server<T>(rt: &Runtime, start: impl AsyncFnOnce() -> T) -> (T, u64, u64) {
    let (heap, resident) = (LIVE_BYTES.load(Ordering::Relaxed), rss());
    let started = rt.block_on(start());
    let heap = LIVE_BYTES.load(Ordering::Relaxed).saturating_sub(heap) / SERVERS as u64;
    let resident = rss().saturating_sub(resident) / SERVERS as u64;
    (started, heap, resident)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument, if any, is ignored.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("allocations per item, steady state ({ITEMS} items after {WARM_UP} to warm up):");
    println!("  genflow 1:1 u64 stage → sum stage   {:.4}", pipeline_allocs_per_item(&rt));
    println!("  mpsc task → mpsc task (queue 1000)   {:.4}", chain_allocs_per_item(&rt));
    println!("allocations per call round trip ({CALLS} calls):");
    println!("  genflow call                         {:.4}", call_allocs(&rt));
    println!("  mpsc + oneshot                       {:.4}", raw_call_allocs(&rt));

    let (registries, heap, resident) = per_server(&rt, async || {
        let mut all = Vec::with_capacity(SERVERS);
        for _ in 0..SERVERS {
            all.push(Single::start().await);
        }
        all
    });
    println!("memory per idle server ({SERVERS} servers, each in its own registry):");
    println!("  live heap {heap} B, resident {resident} B");
    rt.block_on(async {
        for registry in &registries {
            registry.shutdown().await;
        }
    });
    drop(registries);

    let (wide, heap, resident) = per_server(&rt, async || Wide::start().await);
    println!("memory per idle replica (one stage, {SERVERS} replicas):");
    println!("  live heap {heap} B, resident {resident} B");
    rt.block_on(wide.shutdown());
}
