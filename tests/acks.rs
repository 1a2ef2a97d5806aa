//! End-to-end acknowledgement: every input sent with an `Ack` is
//! acknowledged exactly once, with the right outcome, once every item made
//! from it has left the pipeline, across replicas, `ordered`, fan-out,
//! failures, batches, concurrency, fused stages, stateful stages and
//! abort.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{SinkExt, StreamExt, stream};
use genflow::{
    Emitter, GenServer, SendError, Stage,
    ack::{self, Ack, Acknowledger, Acks, Held, Outcome},
};

/// Records each input's outcome and how many times it fired.
struct Ledger {
    fired: Vec<AtomicU8>,
    outcome: Vec<AtomicU8>,
    failures: Mutex<Vec<(u64, Vec<String>)>>,
    done: AtomicU64,
}

const NONE: u8 = 0;
const DELIVERED: u8 = 1;
const DROPPED: u8 = 2;
const FAILED: u8 = 3;

impl Ledger {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Ledger {
            fired: (0..n).map(|_| AtomicU8::new(0)).collect(),
            outcome: (0..n).map(|_| AtomicU8::new(NONE)).collect(),
            failures: Mutex::new(Vec::new()),
            done: AtomicU64::new(0),
        })
    }

    fn ack(self: &Arc<Self>, i: u64) -> Ack {
        let ledger = self.clone();
        Ack::new(move |outcome| ledger.record(i, outcome))
    }

    /// Makes acks in bulk that record here, each for its input.
    fn acks(self: &Arc<Self>) -> Acks<u64, impl Acknowledger<u64>> {
        let ledger = self.clone();
        Acks::new(move |i: u64, outcome: Outcome| ledger.record(i, outcome))
    }

    fn record(&self, i: u64, outcome: Outcome) {
        let kind = match &outcome {
            Outcome::Delivered => DELIVERED,
            Outcome::Dropped => DROPPED,
            Outcome::Failed(failures) => {
                let errors = failures.iter().map(|f| f.error().to_string()).collect();
                self.failures.lock().unwrap().push((i, errors));
                FAILED
            }
        };
        self.outcome[i as usize].store(kind, Ordering::Relaxed);
        self.fired[i as usize].fetch_add(1, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Release);
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    fn outcome(&self, i: u64) -> u8 {
        self.outcome[i as usize].load(Ordering::Relaxed)
    }

    fn fired(&self, i: u64) -> u8 {
        self.fired[i as usize].load(Ordering::Relaxed)
    }

    /// Waits (polling, with a deadline) until `n` inputs were acknowledged.
    async fn wait_for(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.done() < n {
            assert!(tokio::time::Instant::now() < deadline, "{} of {n} acknowledged", self.done());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The main pipeline: pass → fan (replicas(3, ordered), 0..3 items, 1 % fail)
// → tail (nothing for every 7th input).

struct Pass;

impl GenServer for Pass {
    type Message = ();
    type Response = ();
    type Registry = Fan;

    fn new(_: Fan) -> Self {
        Pass
    }

    async fn handle_call(&mut self, _: ()) {}

    fn channel_queue_size() -> usize {
        64
    }
}

impl Stage for Pass {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, i: u64, out: &mut Emitter<u64>) {
        out.emit(i).await;
    }
}

/// Emits `i % 4` items for input `i`, and fails 1 % of the inputs (after
/// emitting theirs: the failure still wins).
struct Spread;

impl GenServer for Spread {
    type Message = ();
    type Response = ();
    type Registry = Fan;

    fn new(_: Fan) -> Self {
        Spread
    }

    async fn handle_call(&mut self, _: ()) {}

    fn channel_queue_size() -> usize {
        64
    }
}

fn fails(i: u64) -> bool {
    i % 100 == 37
}

impl Stage for Spread {
    type In = u64;
    type Out = (u64, u64);

    async fn process(&mut self, i: u64, out: &mut Emitter<(u64, u64)>) {
        for k in 0..i % 4 {
            out.emit((i, k)).await;
        }
        if fails(i) {
            out.fail(format!("input {i} failed"));
        }
    }
}

/// Passes items on, but none of every 7th input.
struct Tail;

impl GenServer for Tail {
    type Message = ();
    type Response = ();
    type Registry = Fan;

    fn new(_: Fan) -> Self {
        Tail
    }

    async fn handle_call(&mut self, _: ()) {}

    fn channel_queue_size() -> usize {
        64
    }
}

impl Stage for Tail {
    type In = (u64, u64);
    type Out = (u64, u64);

    async fn process(&mut self, item: (u64, u64), out: &mut Emitter<(u64, u64)>) {
        if item.0 % 7 != 0 {
            out.emit(item).await;
        }
    }
}

#[genflow::pipeline{
    pass: Pass,
    #[replicas(3, ordered)]
    spread: Spread,
    tail: Tail,
}]
struct Fan;

/// How the inputs' acknowledgements are made.
#[derive(Clone, Copy)]
enum Made {
    /// An `Ack::new` each.
    OneByOne,
    /// By an `Acks`, 32 at a time.
    InBulk,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_is_acknowledged_once_with_its_outcome_while_the_pipeline_runs() {
    fan_out_and_acknowledge(Made::OneByOne).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_acknowledged_in_bulk_is_acknowledged_once_with_its_outcome_while_the_pipeline_runs() {
    fan_out_and_acknowledge(Made::InBulk).await;
}

async fn fan_out_and_acknowledge(made: Made) {
    const N: u64 = 100_000;
    let flow = Fan::start().await;
    let mut output = flow.output().unwrap();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while output.next().await.is_some() {
            n += 1;
        }
        n
    });
    let ledger = Ledger::new(N as usize);
    // How many inputs were handed over but not yet acknowledged, at most,
    // seen at each send.
    let most_pending = Arc::new(AtomicU64::new(0));
    let (l, most) = (ledger.clone(), most_pending.clone());
    let mut acks = ledger.acks();
    let inputs = stream::iter(0..N).map(move |i| {
        let pending = i - l.done();
        most.fetch_max(pending, Ordering::Relaxed);
        let ack = match made {
            Made::OneByOne => l.ack(i),
            Made::InBulk => acks.ack(i),
        };
        (i, ack)
    });
    assert_eq!(flow.acked().feed(inputs).await.unwrap(), N as usize);
    // Acknowledged once the reader took the last items.
    ledger.wait_for(N).await;
    flow.shutdown().await;
    let emitted = reader.await.unwrap();

    let mut expected_out = 0;
    for i in 0..N {
        assert_eq!(ledger.fired(i), 1, "input {i} fired once");
        let expected = if fails(i) { FAILED } else { DELIVERED };
        assert_eq!(ledger.outcome(i), expected, "input {i}");
        if i % 7 != 0 {
            expected_out += i % 4;
        }
    }
    assert_eq!(emitted, expected_out);
    let failures = ledger.failures.lock().unwrap();
    assert_eq!(failures.len() as u64, (0..N).filter(|&i| fails(i)).count() as u64);
    for (i, errors) in failures.iter() {
        assert_eq!(errors, &[format!("input {i} failed")]);
    }
    // Acknowledgements came while the pipeline ran: what was pending stays
    // within what the pipeline can hold (three queues of 64, the replicas'
    // batches, buffers and reorder window, the output's buffer), far below
    // the 100 000 inputs.
    let most = most_pending.load(Ordering::Relaxed);
    assert!(most <= 2_000, "at most {most} inputs pending");
}

#[tokio::test]
async fn an_untaken_output_drops_and_a_taken_one_delivers() {
    let ledger = Ledger::new(8);
    let flow = Fan::start().await;
    // Input 1 emits one item (1 % 4), which the tail passes on: nobody
    // takes the output, so it is dropped.
    flow.acked().send(1, ledger.ack(1)).await.unwrap();
    // Input 4 emits nothing: delivered where it stopped.
    flow.acked().send(4, ledger.ack(4)).await.unwrap();
    flow.flush().await.unwrap();
    assert_eq!((ledger.outcome(1), ledger.outcome(4)), (DROPPED, DELIVERED));

    let mut output = flow.output().unwrap();
    flow.acked().send(2, ledger.ack(2)).await.unwrap();
    assert_eq!(output.next().await, Some((2, 0)));
    // Input 2 made two items; one taken so far.
    assert_eq!(ledger.outcome(2), NONE);
    assert_eq!(output.next().await, Some((2, 1)));
    ledger.wait_for(3).await;
    assert_eq!(ledger.outcome(2), DELIVERED);
    flow.shutdown().await;
}

#[tokio::test]
async fn an_acked_output_delivers_when_released_and_fails_when_failed() {
    let ledger = Ledger::new(16);
    let flow = Fan::start().await;
    let mut output = flow.output().unwrap().acked();
    let input = flow.acked();
    input.send(5, ledger.ack(5)).await.unwrap(); // one item: (5, 0)
    input.send(6, ledger.ack(6)).await.unwrap(); // two items
    input.send(9, ledger.ack(9)).await.unwrap(); // one item
    let (item, held) = output.next().await.unwrap();
    assert_eq!(item, (5, 0));
    assert_eq!(held.len(), 1);
    held.release();
    let (_, first) = output.next().await.unwrap();
    let (_, second) = output.next().await.unwrap();
    first.release();
    second.fail("could not write");
    let (_, nine) = output.next().await.unwrap();
    drop(nine);
    ledger.wait_for(3).await;
    assert_eq!([ledger.outcome(5), ledger.outcome(6), ledger.outcome(9)], [DELIVERED, FAILED, DROPPED]);
    let first_failure = ledger.failures.lock().unwrap()[0].clone();
    assert_eq!(first_failure, (6, vec!["could not write".to_string()]));
    // An item sent without acknowledgement comes with an empty `Held`.
    flow.send(1).await.unwrap();
    let (item, held) = output.next().await.unwrap();
    assert_eq!((item, held.is_empty()), ((1, 0), true));
    flow.shutdown().await;
}

#[tokio::test]
async fn a_refused_item_comes_back_with_its_ack_unfired() {
    let ledger = Ledger::new(4);
    let flow = Fan::start().await;
    let input = flow.acked();
    flow.shutdown().await;
    let Err(SendError::Closed((item, ack))) = input.send(3, ledger.ack(3)).await else {
        panic!("the pipeline is shut down")
    };
    assert_eq!(item, 3);
    assert_eq!(ledger.done(), 0, "not fired while the caller holds it");
    drop(ack);
    assert_eq!(ledger.outcome(3), DROPPED);
    // Through a sink, the same.
    let mut sink = input.sink();
    let Err(SendError::Closed((_, ack))) = sink.send((2, ledger.ack(2))).await else { panic!("closed") };
    assert_eq!(ledger.outcome(2), NONE);
    drop(ack);
    assert_eq!(ledger.outcome(2), DROPPED);
}

// ---------------------------------------------------------------------------
// Abort.

struct Slow;

impl GenServer for Slow {
    type Message = ();
    type Response = ();
    type Registry = Aborting;

    fn new(_: Aborting) -> Self {
        Slow
    }

    async fn handle_call(&mut self, _: ()) {}

    fn channel_queue_size() -> usize {
        16
    }
}

impl Stage for Slow {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, i: u64, out: &mut Emitter<u64>) {
        if i % 10 == 3 {
            out.fail("slow failed");
        } else {
            tokio::time::sleep(Duration::from_micros(200)).await;
            out.emit(i).await;
        }
    }
}

#[genflow::pipeline{
    #[replicas(2)]
    slow: Slow,
    #[replicas(2)]
    slower: Slow,
}]
struct Aborting;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_acknowledges_everything_accepted_as_dropped_or_failed() {
    abort_mid_run(Made::OneByOne).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_acknowledges_everything_accepted_in_bulk_as_dropped_or_failed() {
    abort_mid_run(Made::InBulk).await;
}

async fn abort_mid_run(made: Made) {
    const N: u64 = 5_000;
    let ledger = Ledger::new(N as usize);
    let flow = Aborting::start().await;
    let mut output = flow.output().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let feeder = {
        let (flow, ledger, accepted) = (flow.clone(), ledger.clone(), accepted.clone());
        tokio::spawn(async move {
            let input = flow.acked();
            let mut acks = ledger.acks();
            for i in 0..N {
                let ack = match made {
                    Made::OneByOne => ledger.ack(i),
                    Made::InBulk => acks.ack(i),
                };
                match input.send(i, ack).await {
                    Ok(()) => accepted.fetch_add(1, Ordering::Relaxed),
                    // Refused: the item and its ack come back, unfired.
                    Err(error) => return error.into_message(),
                };
            }
            None
        })
    };
    // Take some output, so acknowledgements flow before the abort.
    for _ in 0..50 {
        output.next().await.unwrap();
    }
    assert!(ledger.done() > 0, "acknowledged while running");
    flow.abort();
    flow.shutdown().await;
    let refused = feeder.await.unwrap();
    drop(output);
    let accepted = accepted.load(Ordering::Relaxed) as u64;
    let (refused, ack) = refused.expect("the abort refused an input");
    assert_eq!(refused, accepted);
    assert!(accepted < N, "aborted mid-run");
    ledger.wait_for(accepted).await;
    let (mut delivered, mut dropped, mut failed) = (0, 0, 0);
    for i in 0..accepted {
        assert_eq!(ledger.fired(i), 1, "input {i} fired once");
        match ledger.outcome(i) {
            DELIVERED => delivered += 1,
            DROPPED => dropped += 1,
            FAILED => {
                assert_eq!(i % 10, 3);
                failed += 1
            }
            other => panic!("input {i}: {other}"),
        }
    }
    assert!(delivered >= 50 && dropped > 0, "{delivered} delivered, {dropped} dropped, {failed} failed");
    assert_eq!(ledger.done(), accepted);
    drop(ack);
    assert_eq!(ledger.outcome(refused), DROPPED);
}

// ---------------------------------------------------------------------------
// A stage that holds acknowledgements in its state.

/// Sums its inputs and emits the sum every `EVERY` inputs, holding their
/// acknowledgements until then; the rest at `finish`.
struct Sum {
    sum: u64,
    count: u64,
    held: Held,
}

const EVERY: u64 = 10;

impl GenServer for Sum {
    type Message = ();
    type Response = u64;
    type Registry = Summing;

    fn new(_: Summing) -> Self {
        Sum { sum: 0, count: 0, held: Held::default() }
    }

    async fn handle_call(&mut self, _: ()) -> u64 {
        self.count
    }
}

impl Stage for Sum {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, i: u64, out: &mut Emitter<u64>) {
        self.sum += i;
        self.count += 1;
        let held = out.hold();
        self.held.absorb(held);
        if self.count % EVERY == 0 {
            let held = std::mem::take(&mut self.held);
            out.emit_with(std::mem::take(&mut self.sum), held).await;
        }
    }

    async fn finish(&mut self, out: &mut Emitter<u64>) {
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            out.emit_with(self.sum, held).await;
        }
    }
}

#[genflow::pipeline{ sum: Sum }]
struct Summing;

#[tokio::test]
async fn a_stage_holding_acknowledgements_releases_them_with_what_it_emits() {
    let ledger = Ledger::new(25);
    let flow = Summing::start().await;
    let mut output = flow.output().unwrap();
    let input = flow.acked();
    for i in 0..25 {
        input.send(i, ledger.ack(i)).await.unwrap();
    }
    assert_eq!(output.next().await, Some((0..10).sum()));
    assert_eq!(output.next().await, Some((10..20).sum()));
    flow.flush().await.unwrap();
    assert_eq!(flow.call_sum(()).await.unwrap(), 25);
    // The first 20 went out with the two sums; the last 5 are still held.
    assert_eq!(ledger.done(), 20);
    assert!((0..20).all(|i| ledger.outcome(i) == DELIVERED));
    assert!((20..25).all(|i| ledger.outcome(i) == NONE));
    flow.shutdown().await;
    assert_eq!(output.next().await, Some((20..25).sum()));
    ledger.wait_for(25).await;
    assert!((20..25).all(|i| ledger.outcome(i) == DELIVERED && ledger.fired(i) == 1));
}

// ---------------------------------------------------------------------------
// Batches, concurrency, fused stages, partitions and panics.

/// Writes batches: fails any batch holding a multiple of 50.
struct Write;

impl GenServer for Write {
    type Message = ();
    type Response = ();
    type Registry = Mixed;

    fn new(_: Mixed) -> Self {
        Write
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Write {
    type In = Vec<u64>;
    type Out = u64;

    async fn process(&mut self, batch: Vec<u64>, out: &mut Emitter<u64>) {
        if batch.iter().any(|i| i % 50 == 0) {
            out.fail("batch refused");
            return;
        }
        out.emit(batch.len() as u64).await;
    }
}

/// Looks each input up with a future in flight; those ending in 9 fail.
struct Lookup;

impl GenServer for Lookup {
    type Message = ();
    type Response = ();
    type Registry = Mixed;

    fn new(_: Mixed) -> Self {
        Lookup
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Lookup {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, i: u64, out: &mut Emitter<u64>) {
        out.try_emit_async(async move {
            tokio::task::yield_now().await;
            if i % 10 == 9 { Err(format!("lookup {i} failed")) } else { Ok(i) }
        })
        .await;
    }
}

/// Panics on inputs ending in 77; keyed by parity.
struct Check;

impl GenServer for Check {
    type Message = ();
    type Response = ();
    type Registry = Mixed;

    fn new(_: Mixed) -> Self {
        Check
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Check {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, i: u64, out: &mut Emitter<u64>) {
        assert!(i % 100 != 77, "checked {i}");
        out.emit(i).await;
    }
}

fn parity(i: &u64) -> u64 {
    i % 2
}

/// Passes on, fused into the stage before.
struct Relay;

impl GenServer for Relay {
    type Message = ();
    type Response = ();
    type Registry = Mixed;

    fn new(_: Mixed) -> Self {
        Relay
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Relay {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, i: u64, out: &mut Emitter<u64>) {
        out.emit(i).await;
    }
}

#[genflow::pipeline{
    #[concurrency(8)]
    lookup: Lookup,
    #[fused]
    relay: Relay,
    #[replicas(2, partition_by = parity)]
    check: Check,
    #[batch(size = 10, timeout = Duration::from_millis(5))]
    write: Write,
}]
struct Mixed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_hold_across_batches_concurrency_partitions_fused_stages_and_panics() {
    const N: u64 = 2_000;
    let ledger = Ledger::new(N as usize);
    let flow = Mixed::start().await;
    let mut output = flow.output().unwrap();
    let written = tokio::spawn(async move {
        let mut n = 0;
        while let Some(len) = output.next().await {
            n += len;
        }
        n
    });
    let inputs = stream::iter(0..N).map({
        let ledger = ledger.clone();
        move |i| (i, ledger.ack(i))
    });
    flow.acked().feed(inputs).await.unwrap();
    flow.shutdown().await;
    let written = written.await.unwrap();
    ledger.wait_for(N).await;
    let (mut delivered, mut failed) = (0, 0);
    for i in 0..N {
        assert_eq!(ledger.fired(i), 1, "input {i} fired once");
        match ledger.outcome(i) {
            DELIVERED => delivered += 1,
            FAILED => failed += 1,
            other => panic!("input {i}: {other}"),
        }
        // Failed by its own lookup or check: failed whatever its batch.
        if i % 10 == 9 || i % 100 == 77 {
            assert_eq!(ledger.outcome(i), FAILED, "input {i}");
        }
    }
    assert_eq!(delivered, written, "delivered exactly the inputs of the batches written");
    assert_eq!(delivered + failed, N);
    // Every batch refused failed its inputs: some inputs that did not fail
    // themselves failed with their batch.
    let failures = ledger.failures.lock().unwrap();
    assert!(failures.iter().any(|(i, errors)| i % 50 != 0 && errors == &["batch refused".to_string()]));
    assert!(
        failures.iter().any(|(i, errors)| i % 100 == 77 && errors[0].contains("checked")),
        "a panic's failure reaches the acknowledgement"
    );
}

#[tokio::test]
async fn acknowledgements_stream_from_a_channel() {
    let flow = Fan::start().await;
    let mut output = flow.output().unwrap();
    let (acker, mut acks) = ack::channel::<&'static str>();
    let input = flow.acked();
    input.send(1, acker.ack("one")).await.unwrap();
    input.send(37, acker.ack("thirty-seven")).await.unwrap();
    drop(acker);
    // Each input made one item: (1, 0) and (37, 0).
    output.next().await.unwrap();
    output.next().await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (key, outcome) = acks.next().await.unwrap();
        seen.push((key, outcome.kind()));
    }
    seen.sort();
    assert_eq!(seen, [("one", "delivered"), ("thirty-seven", "failed")]);
    flow.shutdown().await;
    assert!(acks.next().await.is_none());
}

#[tokio::test]
async fn a_failure_reaching_an_input_twice_is_listed_once() {
    let ledger = Ledger::new(10);
    let flow = Summing::start().await;
    let mut output = flow.output().unwrap().acked();
    for i in 0..10 {
        flow.acked().send(i, ledger.ack(i)).await.unwrap();
    }
    // The sum holds the ten inputs' holds and, the tenth's, twice: as the
    // input being processed and as held.
    let (sum, held) = output.next().await.unwrap();
    assert_eq!(sum, (0..10).sum::<u64>());
    held.fail("not written");
    ledger.wait_for(10).await;
    let failures = ledger.failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 10);
    assert!(failures.iter().all(|(_, errors)| errors == &["not written".to_string()]), "{failures:?}");
    flow.shutdown().await;
}

#[tokio::test]
async fn held_acknowledgements_travel_on_through_a_second_pipeline() {
    let ledger = Ledger::new(8);
    let first = Fan::start().await;
    let second = Summing::start().await;
    let mut from_first = first.output().unwrap().acked();
    let mut sums = second.output().unwrap();
    // 5 and 6 make three items between them: (5, 0), (6, 0), (6, 1).
    first.acked().send(5, ledger.ack(5)).await.unwrap();
    first.acked().send(6, ledger.ack(6)).await.unwrap();
    for _ in 0..3 {
        let ((i, k), held) = from_first.next().await.unwrap();
        second.acked().send(i * 10 + k, held.into_ack()).await.unwrap();
    }
    second.flush().await.unwrap();
    // Held by the second pipeline's `Sum` until it emits at shutdown.
    assert_eq!(ledger.done(), 0);
    second.shutdown().await;
    assert_eq!(sums.next().await, Some(50 + 60 + 61));
    ledger.wait_for(2).await;
    assert_eq!((ledger.outcome(5), ledger.outcome(6)), (DELIVERED, DELIVERED));
    first.shutdown().await;
}

// ---------------------------------------------------------------------------
// Failures of a `#[concurrency]` stage's inputs while futures are in flight.

/// Input 0 hands over a future that fails; input 1 fails in `process`,
/// then hands over a future, whose hand-over delivers input 0's failure
/// first. Any other input hands over a future, then fails.
struct Conc;

impl GenServer for Conc {
    type Message = ();
    type Response = ();
    type Registry = Concurrent;

    fn new(_: Concurrent) -> Self {
        Conc
    }

    async fn handle_call(&mut self, _: ()) {}
}

impl Stage for Conc {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, i: u64, out: &mut Emitter<u64>) {
        match i {
            0 => out.try_emit_async(async { Err::<u64, String>("future of 0 failed".into()) }).await,
            1 => {
                out.fail("1 failed in process");
                out.try_emit_async(async { Ok::<u64, String>(1) }).await;
            }
            _ => {
                out.emit_async(async move {
                    tokio::task::yield_now().await;
                    i
                })
                .await;
                out.fail(format!("{i} failed after its hand-over"));
            }
        }
    }
}

#[genflow::pipeline{ #[concurrency(4)] conc: Conc }]
struct Concurrent;

fn errors_of(ledger: &Ledger, i: u64) -> Vec<String> {
    let failures = ledger.failures.lock().unwrap();
    failures.iter().filter(|(j, _)| *j == i).flat_map(|(_, errors)| errors.clone()).collect()
}

#[tokio::test]
async fn an_inputs_failure_reaches_its_acknowledgement_when_another_futures_failure_goes_first() {
    let ledger = Ledger::new(4);
    let flow = Concurrent::start().await;
    let mut failures = flow.failures().unwrap();
    let mut output = flow.output().unwrap();
    let input = flow.acked();
    // Both in one batch: nothing yields between the two sends.
    input.send(0, ledger.ack(0)).await.unwrap();
    input.send(1, ledger.ack(1)).await.unwrap();
    assert_eq!(output.next().await, Some(1));
    ledger.wait_for(2).await;
    flow.shutdown().await;
    assert_eq!(errors_of(&ledger, 0), ["future of 0 failed"]);
    assert_eq!((ledger.outcome(1), errors_of(&ledger, 1)), (FAILED, vec!["1 failed in process".to_string()]));
    let mut sent = Vec::new();
    while let Some(failure) = failures.next().await {
        sent.push((failure.error().to_string(), failure.items()));
    }
    sent.sort();
    assert_eq!(sent, [("1 failed in process".to_string(), 1), ("future of 0 failed".to_string(), 1)]);
    assert_eq!(flow.metrics().stage("conc").unwrap().failed, 2);
}

#[tokio::test]
async fn an_input_failed_while_its_future_is_in_flight_counts_one_item() {
    let ledger = Ledger::new(4);
    let flow = Concurrent::start().await;
    let mut failures = flow.failures().unwrap();
    let mut output = flow.output().unwrap();
    flow.acked().send(2, ledger.ack(2)).await.unwrap();
    assert_eq!(output.next().await, Some(2));
    let failure = failures.next().await.unwrap();
    assert_eq!(failure.items(), 1, "{failure}");
    ledger.wait_for(1).await;
    assert_eq!((ledger.outcome(2), errors_of(&ledger, 2)), (FAILED, vec!["2 failed after its hand-over".to_string()]));
    flow.shutdown().await;
    assert_eq!(flow.metrics().stage("conc").unwrap().failed, 1);
}

#[tokio::test]
async fn an_acked_input_says_when_its_stage_closed() {
    let flow = Fan::start().await;
    let input = flow.acked();
    let mut closed = Box::pin(input.closed());
    assert!(futures::poll!(closed.as_mut()).is_pending());
    flow.shutdown().await;
    closed.await;
    // Closed for good: a later wait returns at once.
    input.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_ack_fires_once_for_its_whole_batch_of_inputs() {
    const BATCH: u64 = 50;
    const BATCHES: u64 = 20;
    let flow = Fan::start().await;
    let mut output = flow.output().unwrap();
    let reader = tokio::spawn(async move { while output.next().await.is_some() {} });
    let (acker, mut acks) = ack::channel::<u64>();
    let input = flow.acked();
    for b in 0..BATCHES {
        let batch = acker.ack(b);
        for i in b * BATCH..(b + 1) * BATCH - 1 {
            input.send(i, batch.share()).await.unwrap();
        }
        // The `Ack` itself goes with the batch's last input.
        input.send((b + 1) * BATCH - 1, batch).await.unwrap();
    }
    drop(acker);
    let mut seen = Vec::new();
    while let Some((b, outcome)) = acks.next().await {
        seen.push((b, outcome));
        if seen.len() as u64 == BATCHES {
            break;
        }
    }
    seen.sort_by_key(|(b, _)| *b);
    for (b, outcome) in &seen {
        // Batch b holds inputs b*50..b*50+50; 1 % fail (i % 100 == 37),
        // which falls in the even batches.
        if b % 2 == 0 {
            let Outcome::Failed(failures) = outcome else { panic!("batch {b}: {outcome:?}") };
            let errors: Vec<String> = failures.iter().map(|f| f.error().to_string()).collect();
            assert_eq!(errors, [format!("input {} failed", b * BATCH + 37)], "batch {b}");
        } else {
            assert!(outcome.is_delivered(), "batch {b}: {outcome:?}");
        }
    }
    assert_eq!(seen.iter().map(|(b, _)| *b).collect::<Vec<_>>(), (0..BATCHES).collect::<Vec<_>>());
    flow.shutdown().await;
    reader.await.unwrap();
    // Each batch fired once: nothing more comes.
    assert!(acks.next().await.is_none());
}

// ---------------------------------------------------------------------------
// Acknowledged by the time `shutdown` returns.

/// Emits two records per input.
#[genflow::stage]
async fn split(i: u64, out: &mut Emitter<u64>) {
    out.emit(2 * i).await;
    out.emit(2 * i + 1).await;
}

/// Stores records (emits nothing), failing those of every tenth input.
#[genflow::stage]
async fn keep(record: u64, out: &mut Emitter<()>) {
    if (record / 2) % 10 == 3 {
        out.fail(format!("record {record} failed"));
    }
}

#[genflow::pipeline{ #[replicas(2)] split: Split<Stored>, #[replicas(2)] keep: Keep<Stored> }]
struct Stored;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_is_acknowledged_by_the_time_shutdown_returns() {
    const N: u64 = 10_000;
    let ledger = Ledger::new(N as usize);
    let flow = Stored::start().await;
    let mut acks = ledger.acks();
    let inputs = stream::iter(0..N).map(move |i| (i, acks.ack(i)));
    assert_eq!(flow.acked().feed(inputs).await.unwrap(), N as usize);
    flow.shutdown().await;
    // No wait: the last stage emits nothing, so nothing is left to take.
    assert_eq!(ledger.done(), N);
    for i in 0..N {
        assert_eq!(ledger.fired(i), 1, "input {i} fired once");
        let expected = if i % 10 == 3 { FAILED } else { DELIVERED };
        assert_eq!(ledger.outcome(i), expected, "input {i}");
    }
}
