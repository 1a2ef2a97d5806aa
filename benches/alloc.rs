//! Allocations per item in steady state, and memory per idle server,
//! measured with a counting global allocator (criterion cannot count
//! allocations) and the process's resident set.
//!
//! ```text
//! cargo bench --bench alloc
//! ```
//!
//! - A 1:1 stage of `u64` feeding a summing stage, against the same two
//!   tasks joined by a bounded `tokio::sync::mpsc` channel.
//! - A `call` round trip, against `mpsc` + `oneshot`.
//! - Idle memory, each figure measured in a fresh process (this binary run
//!   again with `GENFLOW_IDLE_PROBE` set): the growth of the resident set
//!   (`/proc/self/statm`) while [`IDLE`] idle things start and settle,
//!   divided by [`IDLE`]. The things: registries of one server (queue
//!   1000); the replicas of one stage (queue 1000); and the baseline, tokio
//!   tasks each waiting in `recv` on its own bounded `mpsc` channel (bound
//!   1000, carrying a call-or-cast message `(u64, Option<oneshot::Sender>)`)
//!   whose senders are kept. "Settled" means every worker of the runtime is
//!   parked with nothing queued, so every task has reached its `recv`. The
//!   live heap (bytes requested from the allocator, without its own
//!   overhead) grown over the same span is printed beside it. With
//!   `GENFLOW_IDLE_SIZES=1` as well, the probe also lists (on stderr) the
//!   live allocations added per thing by requested size, which is how
//!   `docs/benchmarks.md` says where the bytes go.
//!
//!   Fresh processes matter: measured one after the other in one process,
//!   the later figures reuse memory the earlier ones freed and come out too
//!   small (the replica figure this bench used to print, ~1.4 KB, was such
//!   a live-heap delta taken after 10 000 registries had been started and
//!   dropped in the same process; it left out the allocator's overhead and
//!   counted nothing that was not requested as heap).
use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
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

/// Live allocations by requested size (the last entry: larger ones), for
/// the idle probe's breakdown (`GENFLOW_IDLE_SIZES=1`).
static LIVE_BY_SIZE: [AtomicI64; SIZES + 1] = [const { AtomicI64::new(0) }; SIZES + 1];
const SIZES: usize = 4096;

fn live_by_size(size: usize, delta: i64) {
    LIVE_BY_SIZE[size.min(SIZES)].fetch_add(delta, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        live_by_size(layout.size(), 1);
        // SAFETY: the caller's contract is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        live_by_size(layout.size(), -1);
        // SAFETY: the caller's contract is `System::dealloc`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        live_by_size(layout.size(), -1);
        live_by_size(new_size, 1);
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

// --- idle memory --------------------------------------------------------------------

/// How many idle things each idle-memory probe starts.
const IDLE: usize = 10_000;

/// The environment variable that makes this binary run one idle-memory
/// probe and print its result instead of the whole bench.
const PROBE_VAR: &str = "GENFLOW_IDLE_PROBE";

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

/// What a hand-written actor's queue carries: a message, and where to
/// answer it if it is a call.
type RawMessage = (u64, Option<oneshot::Sender<u64>>);

/// Waits until every worker of `rt` is parked with nothing left in the
/// injection queue, twice in a row with no park or unpark in between: then
/// every spawned task has run until it waits. Gives up after 10 s.
fn wait_idle(rt: &Runtime) {
    let metrics = rt.metrics();
    let state = || {
        let counts: Vec<u64> = (0..metrics.num_workers()).map(|w| metrics.worker_park_unpark_count(w)).collect();
        let idle = metrics.global_queue_depth() == 0 && counts.iter().all(|n| n % 2 == 1);
        (idle, counts)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = state();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
        let now = state();
        if now.0 && last == now {
            return;
        }
        last = now;
    }
    eprintln!("warning: the runtime did not settle in 10 s; the figure may be off");
}

/// Runs one idle-memory probe in this process: starts one thing of `kind`
/// first (so lazily made runtime and crate state is not counted), then
/// [`IDLE`] more, waits until they are idle, and prints resident and live
/// heap bytes added per thing as `resident <B> heap <B>`.
fn idle_probe(kind: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut registries = Vec::with_capacity(IDLE + 1);
    let mut senders = Vec::with_capacity(IDLE + 1);
    let mut flows = Vec::with_capacity(2);
    let mut start = |n: usize| {
        rt.block_on(async {
            match kind {
                "server" => {
                    for _ in 0..n {
                        registries.push(Single::start().await);
                    }
                }
                "replica" => {
                    // One stage of `n` replicas: the warm-up start makes a
                    // one-replica stage.
                    flows.push(Wide::builder().replicas("idle", n).start().await.unwrap());
                }
                _ => {
                    for _ in 0..n {
                        let (tx, mut rx) = mpsc::channel::<RawMessage>(1_000);
                        tokio::spawn(async move {
                            while let Some((n, reply)) = rx.recv().await {
                                if let Some(reply) = reply {
                                    let _ = reply.send(n);
                                }
                            }
                        });
                        senders.push(tx);
                    }
                }
            }
        });
        wait_idle(&rt);
    };
    start(1);
    let sizes = || LIVE_BY_SIZE.iter().map(|n| n.load(Ordering::Relaxed)).collect::<Vec<_>>();
    let (heap, resident, before) = (LIVE_BYTES.load(Ordering::Relaxed), rss(), sizes());
    start(IDLE);
    let heap = LIVE_BYTES.load(Ordering::Relaxed).saturating_sub(heap) / IDLE as u64;
    let resident = rss().saturating_sub(resident) / IDLE as u64;
    println!("resident {resident} heap {heap}");
    if std::env::var_os("GENFLOW_IDLE_SIZES").is_some() {
        // Live allocations made per thing, by requested size.
        for (size, (after, before)) in sizes().iter().zip(before).enumerate() {
            let per_thing = (after - before) as f64 / IDLE as f64;
            if per_thing.abs() >= 0.01 {
                eprintln!("  {per_thing:>6.2} × {size} B{}", if size == SIZES { " or more" } else { "" });
            }
        }
    }
    black_box((&registries, &senders, &flows));
    // Exit without tearing 10 000 things down one by one.
    std::process::exit(0);
}

/// Runs [`idle_probe`] for `kind` in a fresh copy of this process; returns
/// its resident and live heap bytes per thing.
fn idle_in_fresh_process(kind: &str) -> (u64, u64) {
    let exe = std::env::current_exe().expect("the bench binary's path");
    let out = std::process::Command::new(exe).env(PROBE_VAR, kind).output().expect("the probe runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields.as_slice() {
        ["resident", resident, "heap", heap] => (resident.parse().unwrap(), heap.parse().unwrap()),
        _ => panic!("the {kind} probe printed {text:?}; stderr: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

fn main() {
    if let Ok(kind) = std::env::var(PROBE_VAR) {
        return idle_probe(&kind);
    }
    // `cargo bench` passes `--bench`; a filter argument, if any, is ignored.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("allocations per item, steady state ({ITEMS} items after {WARM_UP} to warm up):");
    println!("  genflow 1:1 u64 stage → sum stage   {:.4}", pipeline_allocs_per_item(&rt));
    println!("  mpsc task → mpsc task (queue 1000)   {:.4}", chain_allocs_per_item(&rt));
    println!("allocations per call round trip ({CALLS} calls):");
    println!("  genflow call                         {:.4}", call_allocs(&rt));
    println!("  mpsc + oneshot                       {:.4}", raw_call_allocs(&rt));
    drop(rt);

    println!("memory per idle thing ({IDLE} of them, each kind in a fresh process, queues of 1000):");
    for (kind, label) in [
        ("server", "genflow server (a registry of one)  "),
        ("replica", "genflow replica (one stage)         "),
        ("baseline", "tokio task + bounded mpsc channel   "),
    ] {
        let (resident, heap) = idle_in_fresh_process(kind);
        println!("  {label} resident {resident:>5} B   live heap {heap:>5} B");
    }
}
