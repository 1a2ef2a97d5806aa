//! The acknowledgement under stress, through the public API only: shares
//! made and let go on many threads and tasks, dropped unsent or sent into a
//! pipeline that is aborted; callbacks that panic, that make and drop
//! acknowledgements of their own, that capture a large, an over-aligned or
//! no value; a million acknowledgements made and dropped. Each fires
//! exactly once, with the right outcome, and frees what it captured.
//!
//! To check the frees with valgrind, run the test binary under
//! `valgrind --leak-check=full --error-exitcode=9` with the filter `acks_break`
//! or a test's name.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use genflow::{
    Emitter, GenServer, Stage,
    ack::{Ack, Outcome},
};

/// What an acknowledgement's callback saw, and how many times what it
/// captured was freed.
#[derive(Clone, Default)]
struct Log {
    outcomes: Arc<Mutex<Vec<&'static str>>>,
    failures: Arc<Mutex<Vec<String>>>,
    freed: Arc<AtomicUsize>,
}

/// Counts its drop.
struct Freed(Arc<AtomicUsize>);

impl Drop for Freed {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Log {
    /// An acknowledgement that logs its outcome and frees a [`Freed`].
    fn ack(&self) -> Ack {
        let (outcomes, failures, freed) = (self.outcomes.clone(), self.failures.clone(), Freed(self.freed.clone()));
        Ack::new(move |outcome| {
            let _freed = freed;
            if let Outcome::Failed(list) = &outcome {
                failures.lock().unwrap().extend(list.iter().map(|failure| failure.error().to_string()));
            }
            outcomes.lock().unwrap().push(outcome.kind());
        })
    }

    fn outcomes(&self) -> Vec<&'static str> {
        self.outcomes.lock().unwrap().clone()
    }

    fn freed(&self) -> usize {
        self.freed.load(Ordering::SeqCst)
    }

    /// Waits (polling, with a deadline) until the callback fired.
    async fn fired(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.outcomes.lock().unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the acknowledgement did not fire");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Pipelines: one whose stage ends every input (delivered there), one whose
// stage never returns (what an abort finds in flight).

/// Ends every input: emits nothing, fails input 13.
struct Done;

impl GenServer for Done {
    type Message = ();
    type Response = ();
    type Registry = Ending;

    fn new(_: Ending) -> Self {
        Done
    }

    async fn handle_call(&mut self, _: ()) {}

    fn channel_queue_size() -> usize {
        64
    }
}

impl Stage for Done {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, i: u64, out: &mut Emitter<u64>) {
        if i == 13 {
            out.fail("thirteen");
        }
    }
}

#[genflow::pipeline{
    #[replicas(2)]
    done: Done,
}]
struct Ending;

/// How many inputs [`Stuck`] started on.
static STUCK_STARTED: AtomicUsize = AtomicUsize::new(0);

/// Never returns from `process`.
struct Stuck;

impl GenServer for Stuck {
    type Message = ();
    type Response = ();
    type Registry = Stopping;

    fn new(_: Stopping) -> Self {
        Stuck
    }

    async fn handle_call(&mut self, _: ()) {}

    fn channel_queue_size() -> usize {
        64
    }
}

impl Stage for Stuck {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, _: u64, _: &mut Emitter<u64>) {
        STUCK_STARTED.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
}

#[genflow::pipeline{
    #[replicas(2)]
    stuck: Stuck,
}]
struct Stopping;

// ---------------------------------------------------------------------------
// Shares let go on many threads and tasks.

#[test]
fn shares_made_and_dropped_on_many_threads_fire_once_after_the_last() {
    let log = Log::default();
    let ack = log.ack();
    std::thread::scope(|scope| {
        for _ in 0..8 {
            // Each thread shares from the same `&Ack` while the others do.
            scope.spawn(|| {
                for _ in 0..10_000 {
                    let share = ack.share();
                    let again = share.share();
                    drop(share);
                    drop(again);
                }
            });
        }
    });
    assert!(log.outcomes().is_empty(), "fired while the Ack itself still held it");
    assert_eq!(log.freed(), 0);
    drop(ack);
    assert_eq!(log.outcomes(), ["dropped"]);
    assert_eq!(log.freed(), 1);
}

#[test]
fn the_last_of_shares_dropped_on_racing_threads_fires_once() {
    const ROUNDS: usize = 500;
    const THREADS: usize = 4;
    let fired = Arc::new(AtomicUsize::new(0));
    let freed = Arc::new(AtomicUsize::new(0));
    for round in 0..ROUNDS {
        let (count, held) = (fired.clone(), Freed(freed.clone()));
        let ack = Ack::new(move |outcome| {
            let _held = held;
            assert!(outcome.is_dropped(), "{outcome:?}");
            count.fetch_add(1, Ordering::SeqCst);
        });
        let mut shares: Vec<Ack> = (0..THREADS - 1).map(|_| ack.share()).collect();
        shares.push(ack);
        let start = std::sync::Barrier::new(THREADS);
        std::thread::scope(|scope| {
            for share in shares {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    drop(share);
                });
            }
        });
        assert_eq!(fired.load(Ordering::SeqCst), round + 1);
        assert_eq!(freed.load(Ordering::SeqCst), round + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_sent_from_many_tasks_deliver_once_when_every_input_is_done() {
    const TASKS: u64 = 32;
    const EACH: u64 = 20;
    let flow = Ending::start().await;
    let log = Log::default();
    let ack = log.ack();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let shares: Vec<Ack> = (0..EACH).map(|_| ack.share()).collect();
        let input = flow.acked();
        tasks.push(tokio::spawn(async move {
            for (k, share) in shares.into_iter().enumerate() {
                // Input 13 is the one the stage fails: never sent here.
                let i = 100 + t * EACH + k as u64;
                input.send(i, share).await.unwrap();
            }
        }));
    }
    // The `Ack` itself goes with one more input.
    flow.acked().send(99, ack).await.unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    log.fired().await;
    flow.shutdown().await;
    assert_eq!(log.outcomes(), ["delivered"]);
    assert_eq!(log.freed(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_input_and_one_unsent_share_make_the_whole_batch_failed() {
    let flow = Ending::start().await;
    let log = Log::default();
    let ack = log.ack();
    let input = flow.acked();
    let unsent = ack.share();
    for i in [11, 12, 13, 14] {
        input.send(i, ack.share()).await.unwrap();
    }
    input.send(15, ack).await.unwrap();
    // Dropped on another thread while the sent inputs are in flight:
    // whichever hold goes last, the failure wins.
    let dropper = std::thread::spawn(move || drop(unsent));
    dropper.join().unwrap();
    log.fired().await;
    flow.shutdown().await;
    assert_eq!(log.outcomes(), ["failed"]);
    assert_eq!(*log.failures.lock().unwrap(), ["thirteen"]);
    assert_eq!(log.freed(), 1);
}

#[test]
fn shares_dropped_unsent_report_dropped_only_when_the_last_goes() {
    let log = Log::default();
    let ack = log.ack();
    let shares: Vec<Ack> = (0..3).map(|_| ack.share()).collect();
    drop(ack);
    for (n, share) in shares.into_iter().enumerate() {
        assert!(log.outcomes().is_empty(), "fired with {} holds left", 3 - n);
        drop(share);
    }
    assert_eq!(log.outcomes(), ["dropped"]);
    assert_eq!(log.freed(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_sent_into_a_pipeline_that_is_aborted_report_dropped_once() {
    let flow = Stopping::start().await;
    let log = Log::default();
    let ack = log.ack();
    let input = flow.acked();
    for i in 0..9 {
        input.send(i, ack.share()).await.unwrap();
    }
    input.send(9, ack).await.unwrap();
    // A replica is inside `process` with an input; the rest wait in its
    // batch or in the queue.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while STUCK_STARTED.load(Ordering::SeqCst) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the stage did not start");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(log.outcomes().is_empty());
    flow.abort();
    flow.shutdown().await;
    log.fired().await;
    assert_eq!(log.outcomes(), ["dropped"]);
    assert_eq!(log.freed(), 1);
}

// ---------------------------------------------------------------------------
// Callbacks that misbehave.

#[test]
fn a_panicking_callback_does_not_unwind_into_whoever_let_go_last() {
    let ran = Arc::new(AtomicUsize::new(0));
    let count = ran.clone();
    let ack = Ack::new(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        panic!("in the acknowledgement");
    });
    let share = ack.share();
    drop(ack);
    let dropped = catch_unwind(AssertUnwindSafe(|| drop(share)));
    assert!(dropped.is_ok(), "the callback's panic escaped");
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

/// Panics when dropped: a panic payload that panics again when the caught
/// panic is thrown away.
struct Bomb(Arc<AtomicUsize>);

impl Drop for Bomb {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("the payload's drop");
    }
}

#[test]
fn a_callback_panicking_with_a_payload_that_panics_on_drop_is_contained() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let bomb = dropped.clone();
    let ack = Ack::new(move |_| std::panic::panic_any(Bomb(bomb)));
    let let_go = catch_unwind(AssertUnwindSafe(|| drop(ack)));
    assert!(let_go.is_ok(), "a panic escaped the acknowledgement");
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_callback_leaves_the_pipeline_and_other_acknowledgements_working() {
    let flow = Ending::start().await;
    let input = flow.acked();
    let logs: Vec<Log> = (0..20).map(|_| Log::default()).collect();
    for (i, log) in logs.iter().enumerate() {
        input.send(20 + i as u64, Ack::new(|_| panic!("in the acknowledgement"))).await.unwrap();
        input.send(40 + i as u64, log.ack()).await.unwrap();
    }
    for log in &logs {
        log.fired().await;
        assert_eq!(log.outcomes(), ["delivered"]);
        assert_eq!(log.freed(), 1);
    }
    flow.shutdown().await;
}

#[test]
fn a_callback_that_makes_and_drops_acknowledgements_fires_them_inside_its_own() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let (outer, inner) = (order.clone(), order.clone());
    let ack = Ack::new(move |outcome| {
        outer.lock().unwrap().push(format!("outer {} begins", outcome.kind()));
        let log = inner.clone();
        let made = Ack::new(move |outcome| log.lock().unwrap().push(format!("inner {}", outcome.kind())));
        let share = made.share();
        drop(made);
        drop(share);
        outer.lock().unwrap().push("outer ends".to_owned());
    });
    drop(ack);
    assert_eq!(*order.lock().unwrap(), ["outer dropped begins", "inner dropped", "outer ends"]);
}

#[test]
fn a_chain_of_callbacks_each_holding_the_next_acknowledgement_fires_in_order() {
    const LINKS: usize = 1_000;
    let log = Log::default();
    let order = Arc::new(Mutex::new(Vec::new()));
    // Link k holds link k + 1: letting link 0 go ends them all, in order.
    let mut next = log.ack();
    for k in (0..LINKS).rev() {
        let (order, held) = (order.clone(), next);
        next = Ack::new(move |outcome| {
            order.lock().unwrap().push((k, outcome.kind()));
            drop(held);
        });
    }
    assert!(order.lock().unwrap().is_empty());
    drop(next);
    let expected: Vec<(usize, &str)> = (0..LINKS).map(|k| (k, "dropped")).collect();
    assert_eq!(*order.lock().unwrap(), expected);
    assert_eq!(log.outcomes(), ["dropped"]);
    assert_eq!(log.freed(), 1);
}

// ---------------------------------------------------------------------------
// What a callback captures.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_capturing_a_large_value_gets_it_intact_after_crossing_threads() {
    let flow = Ending::start().await;
    let input = flow.acked();
    let sums = Arc::new(Mutex::new(Vec::new()));
    for i in 0..8u64 {
        let mut page = [0u8; 4096];
        for (k, byte) in page.iter_mut().enumerate() {
            *byte = (k as u64 * 7 + i) as u8;
        }
        let sums = sums.clone();
        let ack = Ack::new(move |outcome| {
            let sum: u64 = page.iter().map(|&byte| u64::from(byte)).sum();
            sums.lock().unwrap().push((i, outcome.kind(), sum, page[4095]));
        });
        // Shares cross to another thread and back into the pipeline.
        let share = std::thread::spawn({
            let share = ack.share();
            move || share
        })
        .join()
        .unwrap();
        input.send(100 + i, share).await.unwrap();
        input.send(200 + i, ack).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sums.lock().unwrap().len() < 8 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", sums.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    flow.shutdown().await;
    let mut sums = sums.lock().unwrap().clone();
    sums.sort_unstable();
    let expected: Vec<(u64, &str, u64, u8)> = (0..8u64)
        .map(|i| {
            let sum = (0..4096u64).map(|k| (k * 7 + i) % 256).sum();
            (i, "delivered", sum, ((4095 * 7 + i) % 256) as u8)
        })
        .collect();
    assert_eq!(sums, expected);
}

/// A value that asks for more alignment than the node's header has.
#[repr(align(4096))]
struct Aligned(u64);

#[test]
fn a_callback_capturing_an_over_aligned_value_gets_it_intact() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    for i in 0..16u64 {
        let value = Aligned(i * 3 + 1);
        let log = seen.clone();
        let ack = Ack::new(move |outcome| {
            let at = &value as *const Aligned as usize;
            log.lock().unwrap().push((value.0, at % 4096, outcome.kind()));
        });
        let share = ack.share();
        drop(ack);
        std::thread::spawn(move || drop(share)).join().unwrap();
    }
    let expected: Vec<(u64, usize, &str)> = (0..16u64).map(|i| (i * 3 + 1, 0, "dropped")).collect();
    assert_eq!(*seen.lock().unwrap(), expected);
}

/// What the zero-sized callback below counts.
static ZERO_SIZED_FIRED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn a_zero_sized_callback_fires_once_per_acknowledgement() {
    let callback = |outcome: Outcome| {
        assert!(outcome.is_dropped(), "{outcome:?}");
        ZERO_SIZED_FIRED.fetch_add(1, Ordering::SeqCst);
    };
    assert_eq!(std::mem::size_of_val(&callback), 0);
    for n in 1..=100 {
        let ack = Ack::new(callback);
        let share = ack.share();
        drop(ack);
        assert_eq!(ZERO_SIZED_FIRED.load(Ordering::SeqCst), n - 1);
        drop(share);
        assert_eq!(ZERO_SIZED_FIRED.load(Ordering::SeqCst), n);
    }
}

// ---------------------------------------------------------------------------
// Many.

#[test]
fn a_million_acknowledgements_made_and_dropped_each_fire_once_and_free_what_they_held() {
    const N: usize = 1_000_000;
    let fired = Arc::new(AtomicUsize::new(0));
    let freed = Arc::new(AtomicUsize::new(0));
    for k in 0..N {
        let (count, held) = (fired.clone(), Freed(freed.clone()));
        let ack = Ack::new(move |outcome| {
            let _held = held;
            assert!(outcome.is_dropped(), "{outcome:?}");
            count.fetch_add(1, Ordering::Relaxed);
        });
        if k % 2 == 0 {
            drop(ack.share());
        }
        drop(ack);
    }
    assert_eq!(fired.load(Ordering::Relaxed), N);
    assert_eq!(freed.load(Ordering::SeqCst), N);
    // Every clone the callbacks captured was let go.
    assert_eq!(Arc::strong_count(&fired), 1);
    assert_eq!(Arc::strong_count(&freed), 1);
}

#[test]
fn a_million_shares_of_one_acknowledgement_fire_it_once() {
    const N: usize = 1_000_000;
    let log = Log::default();
    let ack = log.ack();
    let shares: Vec<Ack> = (0..N).map(|_| ack.share()).collect();
    drop(ack);
    assert!(log.outcomes().is_empty());
    drop(shares);
    assert_eq!(log.outcomes(), ["dropped"]);
    assert_eq!(log.freed(), 1);
}
