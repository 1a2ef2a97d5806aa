//! Items sent with an `Ack` mixed with items sent without one, in the same
//! queues, batches, buffers and hand-overs: every arrangement of the two
//! (alternating, long plain runs around one acknowledged input, an
//! acknowledged input first or last in a batch of 32, ...), sent every way
//! (`send`, `try_send`, `feed`, sinks), through one replica, replicas,
//! `ordered`, `partition_by`, `#[fused]`, `#[concurrency]`, `#[batch]` and
//! stages that hold acknowledgements, restart, stop for good or are
//! aborted. Every `Ack` fires exactly once, with the outcome of its own
//! input's items (failures are tied to input values, so a tag that lands
//! on another item shows as a wrong outcome), every plain item is
//! processed, and nothing hangs.

use std::{
    marker::PhantomData,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{SinkExt, StreamExt, stream};
use genflow::{
    Emitter, GenServer, Pipeline, RestartLimit, SendError, Stage,
    ack::{Ack, Held, Outcome},
};
use tokio::sync::Semaphore;

#[path = "support/wait.rs"]
mod wait;
use wait::{DEADLINE, eventually, within};

/// The part of an error's text that says what failed: a panic's message
/// from its known start on, and a stopped replica's as `stopped for good`.
fn norm(error: String) -> String {
    if error.contains("stopped for good") {
        return "stopped for good".to_string();
    }
    for marker in ["no key for", "process panicked on"] {
        if let Some(at) = error.find(marker) {
            return error[at..].to_string();
        }
    }
    error
}

// ---------------------------------------------------------------------------
// The ledger of acknowledgements.

/// How an acknowledgement fired: its outcome's kind and, if failed, the
/// errors of its failures (normalised, sorted).
type Firing = (&'static str, Vec<String>);

/// Every firing of every input's acknowledgement, by input value.
struct Ledger {
    fired: Mutex<Vec<Vec<Firing>>>,
    count: AtomicUsize,
}

impl Ledger {
    fn new(n: u64) -> Arc<Self> {
        Arc::new(Ledger { fired: Mutex::new(vec![Vec::new(); n as usize]), count: AtomicUsize::new(0) })
    }

    fn ack(self: &Arc<Self>, i: u64) -> Ack {
        let ledger = self.clone();
        Ack::new(move |outcome| {
            let mut errors: Vec<String> = match &outcome {
                Outcome::Failed(failures) => failures.iter().map(|f| norm(f.error().to_string())).collect(),
                _ => Vec::new(),
            };
            errors.sort();
            ledger.fired.lock().unwrap()[i as usize].push((outcome.kind(), errors));
            ledger.count.fetch_add(1, Ordering::SeqCst);
        })
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits (polling, with a deadline) until `n` acknowledgements fired.
    async fn wait_for(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while self.count() < n {
            assert!(tokio::time::Instant::now() < deadline, "{} of {n} acknowledgements fired", self.count());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn firings(&self, i: u64) -> Vec<Firing> {
        self.fired.lock().unwrap()[i as usize].clone()
    }

    /// How input `i`'s acknowledgement fired; asserts it fired once.
    fn once(&self, i: u64, context: &str) -> Firing {
        let firings = self.firings(i);
        assert_eq!(firings.len(), 1, "{context}: input {i} fired {firings:?}");
        firings.into_iter().next().unwrap()
    }

    /// Asserts input `i` fired once with `expected`: delivered without
    /// errors, failed with exactly `errors` otherwise.
    fn assert_outcome(&self, i: u64, errors: &[String], context: &str) {
        let expected: Firing = if errors.is_empty() { ("delivered", Vec::new()) } else { ("failed", errors.to_vec()) };
        assert_eq!(self.once(i, context), expected, "{context}: input {i}");
    }
}

// ---------------------------------------------------------------------------
// What the main stages do with each input value.

/// Inputs in the runs of the main pipelines.
const N: u64 = 300;

/// How many items `check` emits for input `i`: 0, 1 or 3, and 40 (more
/// than a batch, so the emitter's buffer leaves while the input is in
/// `process`) for every 50th.
fn fan(i: u64) -> u64 {
    if i % 50 == 17 {
        return 40;
    }
    match i % 4 {
        0 => 1,
        1 => 0,
        2 => 3,
        _ => 1,
    }
}

/// Inputs `check` fails, after emitting their items.
fn check_fails(i: u64) -> bool {
    i % 23 == 5
}

/// Items `(i, j)` the last stage fails: of the 40 an input makes, none,
/// the first (whose hold is handed over last), the 32nd or the last; of
/// the others, by value.
fn tail_fails(i: u64, j: u64) -> bool {
    match fan(i) {
        40 => [None, Some(0), Some(31), Some(39)][(i / 50 % 4) as usize] == Some(j),
        3 => (i + j) % 7 == 0,
        _ => i % 9 == 0,
    }
}

/// The errors input `i` fails with in the main pipelines, sorted.
fn errors_of(i: u64) -> Vec<String> {
    let mut errors: Vec<String> = (0..fan(i)).filter(|&j| tail_fails(i, j)).map(|j| format!("tail {i}/{j}")).collect();
    if check_fails(i) {
        errors.push(format!("check {i}"));
    }
    errors.sort();
    errors
}

/// The items input `i` makes that leave the main pipelines, in order.
fn outputs_of(i: u64) -> Vec<(u64, u64)> {
    (0..fan(i)).filter(|&j| !tail_fails(i, j)).map(|j| (i, j)).collect()
}

/// Emits `fan(i)` items, then fails the input if `check_fails(i)`.
#[genflow::stage]
async fn check(i: u64, out: &mut Emitter<(u64, u64)>) -> Result<(), String> {
    for j in 0..fan(i) {
        out.emit((i, j)).await;
    }
    if check_fails(i) { Err(format!("check {i}")) } else { Ok(()) }
}

/// As `check`: the first item with `emit` (so it waits in the buffer for
/// its input's hold while the futures of the others are handed over and,
/// once they fill the places in flight, the buffer is sent), the others
/// each made by a future handed to `emit_async` that yields a few times
/// (so they complete out of order), and the failure by one handed to
/// `try_emit_async` for even inputs, by `fail` in `process` for odd ones.
#[genflow::stage]
async fn check_async(i: u64, out: &mut Emitter<(u64, u64)>) {
    if fan(i) > 0 {
        out.emit((i, 0)).await;
    }
    for j in 1..fan(i) {
        out.emit_async(async move {
            for _ in 0..(i + j) % 4 {
                tokio::task::yield_now().await;
            }
            (i, j)
        })
        .await;
    }
    if check_fails(i) && i % 2 == 1 {
        // In `process`, while the futures of this input and of the inputs
        // before it (which may fail) are in flight.
        out.fail(format!("check {i}"));
    } else if check_fails(i) {
        out.try_emit_async(async move {
            tokio::task::yield_now().await;
            Err::<(u64, u64), String>(format!("check {i}"))
        })
        .await;
    }
}

/// Passes items on but those `tail_fails` names.
#[genflow::stage]
fn tail(item: (u64, u64)) -> Result<(u64, u64), String> {
    if tail_fails(item.0, item.1) { Err(format!("tail {}/{}", item.0, item.1)) } else { Ok(item) }
}

#[genflow::stage]
fn pass(i: u64) -> u64 {
    i
}

fn by_value(i: &u64) -> u64 {
    i * 7 % 5
}

fn by_item(item: &(u64, u64)) -> u64 {
    item.0 ^ item.1
}

/// Panics on every 50th input (49, 99, ...).
fn shaky(i: &u64) -> u64 {
    assert!(i % 50 != 49, "no key for {i}");
    *i
}

#[genflow::pipeline{ check: Check<Line>, tail: Tail<Line> }]
struct Line;

#[genflow::pipeline{ #[replicas(3)] check: Check<Spread>, tail: Tail<Spread> }]
struct Spread;

#[genflow::pipeline{ pass: Pass<InOrder>, #[replicas(3, ordered)] check: Check<InOrder>, tail: Tail<InOrder> }]
struct InOrder;

#[genflow::pipeline{
    pass: Pass<Keyed>,
    #[replicas(3, partition_by = by_value)]
    check: Check<Keyed>,
    #[replicas(2, partition_by = by_item)]
    tail: Tail<Keyed>,
}]
struct Keyed;

#[genflow::pipeline{ pass: Pass<Fusing>, #[fused] check: Check<Fusing>, #[fused] tail: Tail<Fusing> }]
struct Fusing;

#[genflow::pipeline{ #[concurrency(4)] check: CheckAsync<Conc>, tail: Tail<Conc> }]
struct Conc;

#[genflow::pipeline{ #[concurrency(3, ordered)] check: CheckAsync<ConcSeq>, #[fused] tail: Tail<ConcSeq> }]
struct ConcSeq;

#[genflow::pipeline{
    pass: Pass<ConcInOrder>,
    #[replicas(2, ordered)]
    #[concurrency(4)]
    check: CheckAsync<ConcInOrder>,
    tail: Tail<ConcInOrder>,
}]
struct ConcInOrder;

#[genflow::pipeline{
    #[rate_limit(100, per = Duration::from_millis(5))]
    #[concurrency(4)]
    check: CheckAsync<Throttled>,
    tail: Tail<Throttled>,
}]
struct Throttled;

#[genflow::pipeline{
    pass: Pass<Shaky>,
    #[replicas(3, partition_by = shaky)]
    check: Check<Shaky>,
    tail: Tail<Shaky>,
}]
struct Shaky;

#[genflow::pipeline{ #[replicas(2, partition_by = shaky)] check: Check<ShakyHead>, tail: Tail<ShakyHead> }]
struct ShakyHead;

/// Panics on inputs 3 and 6 of every 10: several in each batch.
fn shakier(i: &u64) -> u64 {
    assert!(!matches!(i % 10, 3 | 6), "no key for {i}");
    *i
}

#[genflow::pipeline{
    pass: Pass<Shakier>,
    #[replicas(2, partition_by = shakier)]
    check: Check<Shakier>,
    tail: Tail<Shakier>,
}]
struct Shakier;

// ---------------------------------------------------------------------------
// Arrangements, and a run of one.

/// Which inputs go with an `Ack`.
type Pattern = (&'static str, fn(u64) -> bool);

fn triangular(i: u64) -> bool {
    (0..=i).any(|k| k * (k + 1) / 2 == i)
}

/// Sent before the first replica runs (a `current_thread` runtime), the
/// inputs reach it in batches of 32: 0..32, 32..64, ...
const PATTERNS: &[Pattern] = &[
    ("all plain", |_| false),
    ("all acked", |_| true),
    ("alternating", |i| i % 2 == 1),
    ("first and last of each batch", |i| i % 32 == 0 || i % 32 == 31),
    ("one acked then long plain runs", |i| i == 1 || i == 64 || i == N - 1),
    ("plain runs growing between acked inputs", triangular),
    ("acked with plain holes", |i| i % 32 != 5 && i % 7 != 0),
    ("only inputs that fan out", |i| fan(i) >= 3),
    ("only inputs that make nothing or fail", |i| fan(i) == 0 || check_fails(i)),
];

/// How the inputs are sent.
#[derive(Clone, Copy, Debug)]
enum How {
    /// One by one, plain with `send`, acknowledged with `acked().send`.
    Send,
    /// Each run of plain inputs with `feed`, of acknowledged ones with
    /// `acked().feed`.
    Feed,
    /// Acknowledged ones with `acked().try_send`, plain with `send`.
    TrySend,
    /// Acknowledged ones into one `acked().sink()`, plain with `send`.
    Sink,
}

/// What a pipeline does with input `i`: its errors (sorted), and the items
/// that leave it.
struct Model {
    errors: fn(u64) -> Vec<String>,
    outputs: fn(u64) -> Vec<(u64, u64)>,
}

const MAIN: Model = Model { errors: errors_of, outputs: outputs_of };

/// Sends inputs `0..n`, those `acked` names with an `Ack` of `ledger`.
async fn send_mixed<P: Pipeline<In = u64>>(flow: &P, ledger: &Arc<Ledger>, n: u64, acked: fn(u64) -> bool, how: How) {
    let input = flow.acked();
    match how {
        How::Send => {
            for i in 0..n {
                if acked(i) { input.send(i, ledger.ack(i)).await.unwrap() } else { flow.send(i).await.unwrap() }
            }
        }
        How::TrySend => {
            for i in 0..n {
                if acked(i) { input.try_send(i, ledger.ack(i)).unwrap() } else { flow.send(i).await.unwrap() }
            }
        }
        How::Sink => {
            let mut sink = input.sink();
            for i in 0..n {
                if acked(i) { sink.send((i, ledger.ack(i))).await.unwrap() } else { flow.send(i).await.unwrap() }
            }
        }
        How::Feed => {
            let mut start = 0;
            while start < n {
                let kind = acked(start);
                let end = (start..n).find(|&i| acked(i) != kind).unwrap_or(n);
                if kind {
                    let ledger = ledger.clone();
                    let sent = input.feed(stream::iter(start..end).map(move |i| (i, ledger.ack(i)))).await.unwrap();
                    assert_eq!(sent as u64, end - start);
                } else {
                    assert_eq!(flow.feed(stream::iter(start..end)).await.unwrap() as u64, end - start);
                }
                start = end;
            }
        }
    }
}

/// Sends `0..n` into `flow` as `how` says, `acked` ones with an `Ack`,
/// reads the output (releasing each item's `Held`) and the failures, shuts
/// down, and checks against `model`: every `Ack` fired once with its own
/// input's outcome, every item held acknowledgements if and only if its
/// input did, every plain and acknowledged input's items came out (in
/// input order if `in_order`), and every failure was reported.
async fn run_mixed<P: Pipeline<In = u64, Out = (u64, u64)>>(
    flow: P,
    n: u64,
    (name, acked): Pattern,
    how: How,
    in_order: bool,
    model: &Model,
) {
    let context = format!("{name}, sent by {how:?}");
    let ledger = Ledger::new(n);
    let mut output = flow.output().unwrap().acked();
    let reader = tokio::spawn(async move {
        let (mut got, mut wrong) = (Vec::new(), Vec::new());
        while let Some((item, held)) = output.next().await {
            if held.is_empty() == acked(item.0) {
                wrong.push(item);
            }
            got.push(item);
            held.release();
        }
        (got, wrong)
    });
    let failures = tokio::spawn(flow.failures().unwrap().map(|f| norm(f.error().to_string())).collect::<Vec<_>>());
    within(send_mixed(&flow, &ledger, n, acked, how)).await;
    within(flow.shutdown()).await;
    let (got, wrong) = within(reader).await.unwrap();
    assert!(wrong.is_empty(), "{context}: items whose Held does not match their input: {wrong:?}");
    let mut expected: Vec<(u64, u64)> = (0..n).flat_map(model.outputs).collect();
    if in_order {
        assert_eq!(got, expected, "{context}: the output, in order");
    } else {
        let mut got = got;
        got.sort_unstable();
        expected.sort_unstable();
        assert_eq!(got, expected, "{context}: the output");
    }
    let acked_inputs = (0..n).filter(|&i| acked(i)).count();
    ledger.wait_for(acked_inputs).await;
    for i in 0..n {
        if acked(i) {
            ledger.assert_outcome(i, &(model.errors)(i), &context);
        }
    }
    assert_eq!(ledger.count(), acked_inputs, "{context}: no acknowledgement fired twice");
    let mut reported = within(failures).await.unwrap();
    reported.sort();
    let mut all_errors: Vec<String> = (0..n).flat_map(model.errors).collect();
    all_errors.sort();
    assert_eq!(reported, all_errors, "{context}: the failures stream");
}

/// Every pattern, sent every way, each into a new pipeline made by
/// `start`.
macro_rules! every_arrangement {
    ($start:expr, $in_order:expr, $model:expr) => {
        for &pattern in PATTERNS {
            for how in [How::Send, How::Feed, How::TrySend, How::Sink] {
                run_mixed($start.await, N, pattern, how, $in_order, $model).await;
            }
        }
    };
}

#[tokio::test]
async fn one_replica_per_stage_ties_every_ack_to_its_own_input_in_every_arrangement() {
    every_arrangement!(Line::start(), true, &MAIN);
}

#[tokio::test]
async fn replicas_tie_every_ack_to_its_own_input_in_every_arrangement() {
    every_arrangement!(Spread::start(), false, &MAIN);
}

#[tokio::test]
async fn ordered_replicas_tie_every_ack_to_its_own_input_and_keep_the_order() {
    every_arrangement!(InOrder::start(), true, &MAIN);
}

#[tokio::test]
async fn partition_by_regroups_items_with_their_own_acks() {
    every_arrangement!(Keyed::start(), false, &MAIN);
}

#[tokio::test]
async fn fused_stages_hand_over_items_with_their_own_acks() {
    every_arrangement!(Fusing::start(), true, &MAIN);
}

#[tokio::test]
async fn futures_in_flight_carry_their_own_inputs_acks() {
    every_arrangement!(Conc::start(), false, &MAIN);
}

// (The first item of each input, emitted with `emit`, goes ahead of its
// futures' items: the order of the output is not the inputs'.)
#[tokio::test]
async fn ordered_futures_in_flight_carry_their_own_inputs_acks() {
    every_arrangement!(ConcSeq::start(), false, &MAIN);
}

#[tokio::test]
async fn futures_in_flight_in_ordered_replicas_carry_their_own_inputs_acks() {
    every_arrangement!(ConcInOrder::start(), false, &MAIN);
}

// (While a replica waits for a token, its futures in flight complete and
// their items leave, between two inputs.)
#[tokio::test]
async fn a_rate_limited_stage_with_futures_in_flight_keeps_each_inputs_ack() {
    every_arrangement!(Throttled::start(), false, &MAIN);
}

/// Inputs 49, 99, ... have no key at the keyed stage: they fail there,
/// with nothing made of them.
fn shaky_errors(i: u64) -> Vec<String> {
    if i % 50 == 49 { vec![format!("no key for {i}")] } else { errors_of(i) }
}

fn shaky_outputs(i: u64) -> Vec<(u64, u64)> {
    if i % 50 == 49 { Vec::new() } else { outputs_of(i) }
}

#[tokio::test]
async fn a_key_function_that_panics_inside_the_pipeline_fails_exactly_its_inputs_acks() {
    let model = Model { errors: shaky_errors, outputs: shaky_outputs };
    every_arrangement!(Shaky::start(), false, &model);
}

/// Inputs 3, 6, 13, 16, ... have no key at the keyed stage.
fn shakier_errors(i: u64) -> Vec<String> {
    if matches!(i % 10, 3 | 6) { vec![format!("no key for {i}")] } else { errors_of(i) }
}

fn shakier_outputs(i: u64) -> Vec<(u64, u64)> {
    if matches!(i % 10, 3 | 6) { Vec::new() } else { outputs_of(i) }
}

#[tokio::test]
async fn many_items_without_a_key_in_one_batch_each_fail_their_own_ack() {
    let model = Model { errors: shakier_errors, outputs: shakier_outputs };
    every_arrangement!(Shakier::start(), false, &model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_mixed_inputs_across_threads_keep_their_acks() {
    const MANY: u64 = 5_000;
    let scattered: Pattern = ("scattered", |i| i.wrapping_mul(2_654_435_761) % 5 < 2);
    run_mixed(Keyed::start().await, MANY, scattered, How::Feed, false, &MAIN).await;
    run_mixed(InOrder::start().await, MANY, scattered, How::Send, true, &MAIN).await;
    run_mixed(ConcInOrder::start().await, MANY, scattered, How::Feed, false, &MAIN).await;
    run_mixed(Fusing::start().await, MANY, scattered, How::Sink, true, &MAIN).await;
    run_mixed(Conc::start().await, MANY, scattered, How::Feed, false, &MAIN).await;
}

// ---------------------------------------------------------------------------
// Sent from outside: plain `try_send` and sinks, key panics at the head.

#[tokio::test]
async fn plain_try_send_and_sinks_mix_with_acked_ones_in_one_queue() {
    let flow = Line::start().await;
    let ledger = Ledger::new(N);
    let mut output = flow.output().unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(item) = output.next().await {
            got.push(item);
        }
        got
    });
    let acked = |i: u64| i % 3 == 1;
    let (mut plain_sink, mut acked_sink) = (flow.sink(), flow.acked().sink());
    for i in 0..N {
        match (acked(i), i % 2) {
            (true, 0) => flow.acked().try_send(i, ledger.ack(i)).unwrap(),
            (true, _) => acked_sink.send((i, ledger.ack(i))).await.unwrap(),
            (false, 0) => flow.try_send(i).unwrap(),
            (false, _) => plain_sink.send(i).await.unwrap(),
        }
    }
    within(flow.shutdown()).await;
    let got = within(reader).await.unwrap();
    assert_eq!(got, (0..N).flat_map(outputs_of).collect::<Vec<_>>());
    ledger.wait_for((0..N).filter(|&i| acked(i)).count()).await;
    for i in (0..N).filter(|&i| acked(i)) {
        ledger.assert_outcome(i, &errors_of(i), "sinks and try_send");
    }
}

#[tokio::test]
async fn a_key_that_panics_at_the_head_hands_the_item_and_its_unfired_ack_back() {
    let flow = ShakyHead::start().await;
    let ledger = Ledger::new(N);
    let mut output = flow.output().unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(item) = output.next().await {
            got.push(item);
        }
        got
    });
    let input = flow.acked();
    let mut refused = Vec::new();
    for i in 0..N {
        let result = if i % 2 == 1 {
            input.send(i, ledger.ack(i)).await.map_err(|e| e.map_message(|(item, ack)| (item, Some(ack))))
        } else {
            flow.send(i).await.map_err(|e| e.map_message(|item| (item, None)))
        };
        match result {
            Ok(()) => assert!(i % 50 != 49, "input {i} has no key"),
            Err(SendError::KeyPanicked { message: (item, ack), panic }) => {
                assert_eq!(item, i);
                assert_eq!(panic.message(), format!("no key for {i}"));
                assert_eq!(ack.is_some(), i % 2 == 1, "input {i}: the Ack comes back with it");
                refused.push(i);
                if let Some(ack) = ack {
                    assert!(ledger.firings(i).is_empty(), "input {i}: fired while the caller holds it");
                    drop(ack);
                    assert_eq!(ledger.once(i, "refused"), ("dropped", Vec::new()));
                }
            }
            Err(other) => panic!("input {i}: {other}"),
        }
    }
    assert_eq!(refused, (0..N).filter(|i| i % 50 == 49).collect::<Vec<_>>());
    within(flow.shutdown()).await;
    let mut got = within(reader).await.unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..N).filter(|i| i % 50 != 49).flat_map(outputs_of).collect::<Vec<_>>());
    let sent_acked = (0..N).filter(|i| i % 2 == 1).count();
    ledger.wait_for(sent_acked).await;
    for i in (0..N).filter(|i| i % 2 == 1 && i % 50 != 49) {
        ledger.assert_outcome(i, &errors_of(i), "head keyed");
    }
    assert_eq!(ledger.count(), sent_acked);
}

// ---------------------------------------------------------------------------
// Outputs: untaken, and taken with their acknowledgements.

#[tokio::test]
async fn an_untaken_output_drops_what_reaches_it_and_nothing_else() {
    let flow = Line::start().await;
    let ledger = Ledger::new(N);
    let acked = |i: u64| i % 2 == 0 || i % 32 == 31;
    send_mixed(&flow, &ledger, N, acked, How::Send).await;
    within(flow.flush()).await.unwrap();
    let acked_inputs = (0..N).filter(|&i| acked(i)).count();
    // Every input is done once the flush returns: nothing waits in the
    // pipeline.
    ledger.wait_for(acked_inputs).await;
    for i in (0..N).filter(|&i| acked(i)) {
        let errors = errors_of(i);
        let expected: Firing = if !errors.is_empty() {
            ("failed", errors)
        } else if outputs_of(i).is_empty() {
            // Nothing of it reached the output: done in the pipeline.
            ("delivered", Vec::new())
        } else {
            ("dropped", Vec::new())
        };
        assert_eq!(ledger.once(i, "untaken"), expected, "input {i}");
    }
    within(flow.shutdown()).await;
    let tail = flow.metrics().stage("tail").unwrap();
    // Plain inputs were processed as well.
    assert_eq!(tail.processed, (0..N).map(fan).sum::<u64>());
    assert_eq!(tail.dropped, (0..N).map(|i| outputs_of(i).len() as u64).sum::<u64>());
    assert_eq!(ledger.count(), acked_inputs);
}

#[tokio::test]
async fn a_reader_of_the_acked_output_releases_fails_or_drops_each_inputs_own_items() {
    let flow = Line::start().await;
    let ledger = Ledger::new(N);
    let acked = |i: u64| i % 3 != 2;
    // The reader's verdict on item (i, j).
    fn verdict(i: u64, j: u64) -> u64 {
        (i + 2 * j) % 6
    }
    let mut output = flow.output().unwrap().acked();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(((i, j), held)) = output.next().await {
            assert_eq!(held.is_empty(), !acked(i), "item {i}/{j}");
            got.push((i, j));
            match verdict(i, j) {
                1 => held.fail(format!("reader {i}/{j}")),
                4 => drop(held),
                _ => held.release(),
            }
        }
        got
    });
    send_mixed(&flow, &ledger, N, acked, How::Feed).await;
    within(flow.shutdown()).await;
    let got = within(reader).await.unwrap();
    assert_eq!(got, (0..N).flat_map(outputs_of).collect::<Vec<_>>());
    let acked_inputs = (0..N).filter(|&i| acked(i)).count();
    ledger.wait_for(acked_inputs).await;
    for i in (0..N).filter(|&i| acked(i)) {
        let outputs = outputs_of(i);
        let mut errors = errors_of(i);
        errors.extend(outputs.iter().filter(|&&(i, j)| verdict(i, j) == 1).map(|(i, j)| format!("reader {i}/{j}")));
        errors.sort();
        let expected: Firing = if !errors.is_empty() {
            ("failed", errors)
        } else if outputs.iter().any(|&(i, j)| verdict(i, j) == 4) {
            ("dropped", Vec::new())
        } else {
            ("delivered", Vec::new())
        };
        assert_eq!(ledger.once(i, "acked output"), expected, "input {i}");
    }
    assert_eq!(ledger.count(), acked_inputs);
}

#[tokio::test]
async fn an_output_dropped_half_read_drops_exactly_the_inputs_it_did_not_give() {
    const READ: usize = 50;
    let flow = Line::start().await;
    let ledger = Ledger::new(N);
    let acked = |i: u64| i % 2 == 0 || i % 32 == 31;
    let mut output = flow.output().unwrap().acked();
    // Everything sent first: the output's buffer and queue hold the rest
    // when it is dropped.
    let sending = tokio::spawn({
        let (flow, ledger) = (flow.clone(), ledger.clone());
        async move { send_mixed(&flow, &ledger, N, acked, How::Feed).await }
    });
    let mut read = Vec::new();
    while read.len() < READ {
        let (item, held) = within(output.next()).await.unwrap();
        assert_eq!(held.is_empty(), !acked(item.0), "{item:?}");
        read.push(item);
        held.release();
    }
    drop(output);
    within(sending).await.unwrap();
    within(flow.shutdown()).await;
    assert_eq!(read, (0..N).flat_map(outputs_of).take(READ).collect::<Vec<_>>());
    let acked_inputs = (0..N).filter(|&i| acked(i)).count();
    ledger.wait_for(acked_inputs).await;
    for i in (0..N).filter(|&i| acked(i)) {
        let errors = errors_of(i);
        let expected: Firing = if !errors.is_empty() {
            ("failed", errors)
        } else if outputs_of(i).iter().all(|item| read.contains(item)) {
            ("delivered", Vec::new())
        } else {
            ("dropped", Vec::new())
        };
        assert_eq!(ledger.once(i, "dropped output"), expected, "input {i}");
    }
    assert_eq!(ledger.count(), acked_inputs);
}

// ---------------------------------------------------------------------------
// Plain items sent into a later stage, meeting acknowledged ones there.

#[tokio::test]
async fn plain_items_sent_into_a_later_stage_mix_with_acked_ones_from_upstream() {
    // Items sent straight into `tail`: distinct from what `check` makes.
    const SIDE: u64 = 1_000;
    for (name, acked) in [("alternating", (|i| i % 2 == 1) as fn(u64) -> bool), ("all acked", |_| true)] {
        let flow = Line::start().await;
        let ledger = Ledger::new(N);
        let reader = tokio::spawn(flow.output().unwrap().collect::<Vec<(u64, u64)>>());
        let mut into_tail = flow.sink_tail();
        for i in 0..N {
            if acked(i) {
                flow.acked().send(i, ledger.ack(i)).await.unwrap()
            } else {
                flow.send(i).await.unwrap()
            }
            into_tail.send((SIDE + i, i % 3)).await.unwrap();
            if i % 16 == 0 {
                // Let the stages run, so the side items fall between
                // batches of `check`'s items in `tail`'s queue.
                tokio::task::yield_now().await;
            }
        }
        within(flow.shutdown()).await;
        let mut got = within(reader).await.unwrap();
        got.sort_unstable();
        let mut expected: Vec<(u64, u64)> = (0..N).flat_map(outputs_of).collect();
        expected.extend((0..N).map(|i| (SIDE + i, i % 3)).filter(|&(i, j)| !tail_fails(i, j)));
        expected.sort_unstable();
        assert_eq!(got, expected, "{name}");
        let acked_inputs = (0..N).filter(|&i| acked(i)).count();
        ledger.wait_for(acked_inputs).await;
        for i in (0..N).filter(|&i| acked(i)) {
            ledger.assert_outcome(i, &errors_of(i), name);
        }
        assert_eq!(ledger.count(), acked_inputs, "{name}");
    }
}

#[tokio::test]
async fn plain_items_sent_into_a_fused_stage_mix_with_acked_ones_handed_over() {
    const SIDE: u64 = 1_000;
    let flow = Fusing::start().await;
    let ledger = Ledger::new(N);
    let acked = |i: u64| i % 3 != 1;
    let reader = tokio::spawn(flow.output().unwrap().collect::<Vec<(u64, u64)>>());
    let mut into_check = flow.sink_check();
    for i in 0..N {
        if acked(i) {
            flow.acked().send(i, ledger.ack(i)).await.unwrap()
        } else {
            flow.send(i).await.unwrap()
        }
        into_check.send(SIDE + i).await.unwrap();
        if i % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
    within(flow.shutdown()).await;
    let mut got = within(reader).await.unwrap();
    got.sort_unstable();
    let mut expected: Vec<(u64, u64)> = (0..N).chain(SIDE..SIDE + N).flat_map(outputs_of).collect();
    expected.sort_unstable();
    assert_eq!(got, expected);
    let acked_inputs = (0..N).filter(|&i| acked(i)).count();
    ledger.wait_for(acked_inputs).await;
    for i in (0..N).filter(|&i| acked(i)) {
        ledger.assert_outcome(i, &errors_of(i), "fused stage's own input");
    }
    assert_eq!(ledger.count(), acked_inputs);
}

// ---------------------------------------------------------------------------
// One `Ack` shared by inputs scattered among plain ones.

#[tokio::test]
async fn an_ack_shared_by_inputs_scattered_among_plain_ones_fires_once_with_all_their_failures() {
    // Inputs `b * 30 .. b * 30 + 30` of batch `b`: those that are 1 mod 3
    // go with a share of the batch's Ack (the last of them with the Ack
    // itself), the others plain.
    const BATCHES: u64 = 10;
    let flow = Spread::start().await;
    let ledger = Ledger::new(BATCHES);
    let reader = tokio::spawn(flow.output().unwrap().collect::<Vec<(u64, u64)>>());
    let input = flow.acked();
    for b in 0..BATCHES {
        let mut ack = Some(ledger.ack(b));
        let last = (b * 30..b * 30 + 30).filter(|i| i % 3 == 1).max();
        for i in b * 30..b * 30 + 30 {
            if i % 3 != 1 {
                flow.send(i).await.unwrap();
            } else if Some(i) == last {
                input.send(i, ack.take().unwrap()).await.unwrap();
            } else {
                input.send(i, ack.as_ref().unwrap().share()).await.unwrap();
            }
        }
    }
    within(flow.shutdown()).await;
    let mut got = within(reader).await.unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..BATCHES * 30).flat_map(outputs_of).collect::<Vec<_>>());
    ledger.wait_for(BATCHES as usize).await;
    for b in 0..BATCHES {
        let mut errors: Vec<String> = (b * 30..b * 30 + 30).filter(|i| i % 3 == 1).flat_map(errors_of).collect();
        errors.sort();
        ledger.assert_outcome(b, &errors, "shared");
    }
    assert_eq!(ledger.count(), BATCHES as usize);
}

// ---------------------------------------------------------------------------
// `#[batch]`: open batches of mixed items.

/// Writes batches, emitting each whole; fails a batch holding a multiple
/// of 37 (after emitting it).
#[genflow::stage]
async fn write(batch: Vec<u64>, out: &mut Emitter<Vec<u64>>) -> Result<(), String> {
    let bad = batch.iter().copied().find(|i| i % 37 == 0);
    out.emit(batch).await;
    match bad {
        Some(i) => Err(format!("batch with {i}")),
        None => Ok(()),
    }
}

#[genflow::pipeline{
    pass: Pass<Batching>,
    #[batch(size = 10, timeout = Duration::from_secs(3600))]
    write: Write<Batching>,
}]
struct Batching;

#[tokio::test]
async fn a_batch_of_mixed_items_holds_exactly_its_acked_items_acks() {
    for &(name, acked) in PATTERNS {
        let flow = Batching::start().await;
        let ledger = Ledger::new(N);
        let mut output = flow.output().unwrap().acked();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some((batch, held)) = output.next().await {
                let any_acked = batch.iter().any(|&i| acked(i));
                assert_eq!(held.is_empty(), !any_acked, "{name}: batch {batch:?}");
                got.push(batch);
                held.release();
            }
            got
        });
        // 15 inputs, then a flush, which cuts the open batch of 5.
        send_mixed(&flow, &ledger, 15, acked, How::Send).await;
        within(flow.flush()).await.unwrap();
        let first_acked = (0..15).filter(|&i| acked(i)).count();
        ledger.wait_for(first_acked).await;
        assert_eq!(ledger.count(), first_acked, "{name}: only the first 15 are done");
        for i in (15..N).filter(|&i| acked(i)) {
            let ack = ledger.ack(i);
            flow.acked().send(i, ack).await.unwrap();
        }
        for i in (15..N).filter(|&i| !acked(i)) {
            // Sent after the acknowledged ones: the batches hold both,
            // plain ones last.
            flow.send(i).await.unwrap();
        }
        within(flow.shutdown()).await;
        let got = within(reader).await.unwrap();
        // One replica, one stage before, everything sent before it runs:
        // the batches are cut by size, by the flush and at the end.
        let sent: Vec<u64> =
            (0..15).chain((15..N).filter(|&i| acked(i))).chain((15..N).filter(|&i| !acked(i))).collect();
        let mut expected: Vec<Vec<u64>> = sent[..15].chunks(10).map(<[u64]>::to_vec).collect();
        expected.extend(sent[15..].chunks(10).map(<[u64]>::to_vec));
        assert_eq!(got, expected, "{name}: the batches");
        let acked_inputs = (0..N).filter(|&i| acked(i)).count();
        ledger.wait_for(acked_inputs).await;
        for batch in &got {
            let errors: Vec<String> =
                batch.iter().copied().find(|i| i % 37 == 0).map(|i| format!("batch with {i}")).into_iter().collect();
            for &i in batch.iter().filter(|&&i| acked(i)) {
                ledger.assert_outcome(i, &errors, name);
            }
        }
        assert_eq!(ledger.count(), acked_inputs, "{name}");
    }
}

/// A `#[batch]` stage that emits each batch whole, and whose cast handler
/// panics; it restarts, or (`STOPS`) stays down.
struct Writer<R, const STOPS: bool>(PhantomData<R>);

impl<R: Clone + Send + Sync + 'static, const STOPS: bool> GenServer for Writer<R, STOPS> {
    type Message = ();
    type Response = ();
    type Registry = R;

    fn new(_: R) -> Self {
        Writer(PhantomData)
    }

    async fn handle_call(&mut self, (): ()) {}

    async fn handle_cast(&mut self, (): ()) {
        panic!("asked to crash");
    }

    fn restart_limit() -> RestartLimit {
        if STOPS { RestartLimit::NEVER } else { RestartLimit::default() }
    }
}

impl<R: Clone + Send + Sync + 'static, const STOPS: bool> Stage for Writer<R, STOPS> {
    type In = Vec<u64>;
    type Out = Vec<u64>;

    async fn process(&mut self, batch: Vec<u64>, out: &mut Emitter<Vec<u64>>) {
        out.emit(batch).await;
    }
}

#[genflow::pipeline{
    pass: Pass<BatchRestarting>,
    #[batch(size = 10, timeout = Duration::from_secs(3600))]
    write: Writer<BatchRestarting, false>,
}]
struct BatchRestarting;

#[genflow::pipeline{
    pass: Pass<BatchStopping>,
    #[batch(size = 10, timeout = Duration::from_secs(3600))]
    write: Writer<BatchStopping, true>,
}]
struct BatchStopping;

/// Sends 0..10 (a batch), then 10..15 (left open), then makes `write`
/// panic in a cast handler, then sends 15..40; returns the batches read
/// and the ledger.
macro_rules! crash_with_an_open_batch {
    ($flow:expr, $acked:expr) => {{
        let flow = $flow;
        let acked: fn(u64) -> bool = $acked;
        let ledger = Ledger::new(40);
        let mut output = flow.output().unwrap().acked();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some((batch, held)) = output.next().await {
                assert_eq!(held.is_empty(), !batch.iter().any(|&i| acked(i)), "{batch:?}");
                got.push(batch);
                held.release();
            }
            got
        });
        let send = |range: std::ops::Range<u64>| {
            let (flow, ledger) = (flow.clone(), ledger.clone());
            async move {
                for i in range {
                    if acked(i) {
                        flow.acked().send(i, ledger.ack(i)).await.unwrap()
                    } else {
                        flow.send(i).await.unwrap()
                    }
                }
            }
        };
        send(0..10).await;
        eventually(|| flow.metrics().stage("write").unwrap().emitted == 1).await;
        send(10..15).await;
        eventually(|| flow.metrics().stage("write").unwrap().received == 15).await;
        flow.cast_write(()).await.unwrap();
        send(15..40).await;
        within(flow.shutdown()).await;
        (within(reader).await.unwrap(), ledger)
    }};
}

#[tokio::test]
async fn a_batch_stage_restarted_keeps_the_acks_of_its_open_batch() {
    for &(name, acked) in PATTERNS {
        let (got, ledger) = crash_with_an_open_batch!(BatchRestarting::start().await, acked);
        // The open batch 10..15 survives the restart and fills up.
        let expected: Vec<Vec<u64>> = (0..4).map(|b| (b * 10..b * 10 + 10).collect()).collect();
        assert_eq!(got, expected, "{name}");
        let acked_inputs = (0..40).filter(|&i| acked(i)).count();
        ledger.wait_for(acked_inputs).await;
        for i in (0..40).filter(|&i| acked(i)) {
            ledger.assert_outcome(i, &[], name);
        }
        assert_eq!(ledger.count(), acked_inputs, "{name}");
    }
}

#[tokio::test]
async fn a_batch_stage_stopped_for_good_fails_the_acks_of_its_open_batch_and_after() {
    for &(name, acked) in PATTERNS {
        let (got, ledger) = crash_with_an_open_batch!(BatchStopping::start().await, acked);
        assert_eq!(got, [(0..10).collect::<Vec<u64>>()], "{name}");
        let acked_inputs = (0..40).filter(|&i| acked(i)).count();
        ledger.wait_for(acked_inputs).await;
        for i in (0..40).filter(|&i| acked(i)) {
            let errors = if i < 10 { Vec::new() } else { vec!["stopped for good".to_string()] };
            ledger.assert_outcome(i, &errors, name);
        }
        assert_eq!(ledger.count(), acked_inputs, "{name}");
    }
}

/// Writes batches of items, emitting each whole; fails a batch holding an
/// item `tail_fails` names (after emitting it).
#[genflow::stage]
async fn write_items(batch: Vec<(u64, u64)>, out: &mut Emitter<Vec<(u64, u64)>>) -> Result<(), String> {
    let verdict = batch_verdict(&batch);
    out.emit(batch).await;
    verdict.map_or(Ok(()), Err)
}

fn batch_verdict(batch: &[(u64, u64)]) -> Option<String> {
    batch.iter().any(|&(i, j)| tail_fails(i, j)).then(|| format!("batch from {}/{}", batch[0].0, batch[0].1))
}

#[genflow::pipeline{
    check: Check<FanBatching>,
    #[batch(size = 10, timeout = Duration::from_secs(3600))]
    write: WriteItems<FanBatching>,
}]
struct FanBatching;

#[tokio::test]
async fn batches_of_items_made_from_mixed_inputs_hold_a_share_of_each_of_their_acks() {
    for &(name, acked) in PATTERNS {
        let flow = FanBatching::start().await;
        let ledger = Ledger::new(N);
        let mut output = flow.output().unwrap().acked();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some((batch, held)) = output.next().await {
                assert_eq!(held.is_empty(), !batch.iter().any(|&(i, _)| acked(i)), "{name}: {batch:?}");
                got.push(batch);
                held.release();
            }
            got
        });
        send_mixed(&flow, &ledger, N, acked, How::Feed).await;
        within(flow.shutdown()).await;
        let got = within(reader).await.unwrap();
        let all: Vec<(u64, u64)> = got.iter().flatten().copied().collect();
        let expected: Vec<(u64, u64)> = (0..N).flat_map(|i| (0..fan(i)).map(move |j| (i, j))).collect();
        assert_eq!(all, expected, "{name}: every item once, in order");
        assert!(got.iter().all(|batch| batch.len() <= 10), "{name}");
        let acked_inputs = (0..N).filter(|&i| acked(i)).count();
        ledger.wait_for(acked_inputs).await;
        for i in (0..N).filter(|&i| acked(i)) {
            let mut errors: Vec<String> = got
                .iter()
                .filter(|batch| batch.iter().any(|&(k, _)| k == i))
                .filter_map(|batch| batch_verdict(batch))
                .collect();
            if check_fails(i) {
                errors.push(format!("check {i}"));
            }
            errors.sort();
            ledger.assert_outcome(i, &errors, name);
        }
        assert_eq!(ledger.count(), acked_inputs, "{name}");
    }
}

// ---------------------------------------------------------------------------
// `hold` and `emit_with`: a stage that keeps mixed inputs in its state.

/// Gathers the inputs it gets in groups, closing one at each input that
/// is 4 mod 5 (so one replica alone makes 0..5, 5..10, ...), holding their
/// acknowledgements, and emits each group with them as `(true, members)`;
/// emits every third input alone as well, with `emit`, as
/// `(false, [input])` (before the group for even inputs, after it for odd
/// ones). The last group goes in `finish`.
struct Group<R> {
    members: Vec<u64>,
    held: Held,
    _registry: PhantomData<R>,
}

impl<R: Clone + Send + Sync + 'static> GenServer for Group<R> {
    type Message = ();
    type Response = ();
    type Registry = R;

    fn new(_: R) -> Self {
        Group { members: Vec::new(), held: Held::default(), _registry: PhantomData }
    }

    async fn handle_call(&mut self, (): ()) {}
}

impl<R: Clone + Send + Sync + 'static> Stage for Group<R> {
    type In = u64;
    type Out = (bool, Vec<u64>);

    async fn process(&mut self, i: u64, out: &mut Emitter<(bool, Vec<u64>)>) {
        self.members.push(i);
        let held = out.hold();
        // Checked at the output (a panic here would fail the input).
        self.held.absorb(held);
        let alone = i % 3 == 0;
        if alone && i % 2 == 0 {
            out.emit((false, vec![i])).await;
        }
        if i % 5 == 4 {
            out.emit_with((true, std::mem::take(&mut self.members)), std::mem::take(&mut self.held)).await;
        }
        if alone && i % 2 == 1 {
            out.emit((false, vec![i])).await;
        }
    }

    async fn finish(&mut self, out: &mut Emitter<(bool, Vec<u64>)>) {
        if !self.members.is_empty() {
            out.emit_with((true, std::mem::take(&mut self.members)), std::mem::take(&mut self.held)).await;
        }
    }
}

/// Why `judge` fails what it gets, if it does: a group holding a
/// multiple of 13, or a single input that is a multiple of 7.
fn judged(group: bool, members: &[u64]) -> Option<String> {
    if group && members.iter().any(|i| i % 13 == 0) {
        return Some(format!("group from {}", members[0]));
    }
    if !group && members[0] % 7 == 0 {
        return Some(format!("single {}", members[0]));
    }
    None
}

/// Passes what it gets on, then fails it if `judged` says so (what was
/// emitted stays emitted: the output shows every group's members).
#[genflow::stage]
async fn judge(made: (bool, Vec<u64>), out: &mut Emitter<(bool, Vec<u64>)>) -> Result<(), String> {
    let verdict = judged(made.0, &made.1);
    out.emit(made).await;
    verdict.map_or(Ok(()), Err)
}

#[genflow::pipeline{ group: Group<Grouping>, judge: Judge<Grouping> }]
struct Grouping;

#[genflow::pipeline{ pass: Pass<GroupingInOrder>, #[replicas(3, ordered)] group: Group<GroupingInOrder>, judge: Judge<GroupingInOrder> }]
struct GroupingInOrder;

/// Sends `0..n` as `pattern` says into a pipeline of [`Group`] then
/// `judge`, and checks: what each group and single input holds matches
/// its members' acknowledgements, every input is in exactly one group and
/// every third one alone, and each `Ack` fired once, failed with the
/// failures of its group and its single item. Returns what came out.
async fn run_grouping<P: Pipeline<In = u64, Out = (bool, Vec<u64>)>>(
    flow: P,
    n: u64,
    (name, acked): Pattern,
) -> Vec<(bool, Vec<u64>)> {
    let ledger = Ledger::new(n);
    let mut output = flow.output().unwrap().acked();
    let reader = tokio::spawn(async move {
        let (mut got, mut wrong) = (Vec::new(), Vec::new());
        while let Some((made, held)) = output.next().await {
            if held.is_empty() == made.1.iter().any(|&i| acked(i)) {
                wrong.push(made.clone());
            }
            got.push(made);
            held.release();
        }
        (got, wrong)
    });
    send_mixed(&flow, &ledger, n, acked, How::Send).await;
    within(flow.shutdown()).await;
    let (got, wrong) = within(reader).await.unwrap();
    assert!(wrong.is_empty(), "{name}: made of inputs whose Held does not match: {wrong:?}");
    let mut grouped: Vec<u64> = got.iter().filter(|(group, _)| *group).flat_map(|(_, m)| m.clone()).collect();
    grouped.sort_unstable();
    assert_eq!(grouped, (0..n).collect::<Vec<_>>(), "{name}: every input in one group");
    let mut alone: Vec<u64> = got.iter().filter(|(group, _)| !*group).flat_map(|(_, m)| m.clone()).collect();
    alone.sort_unstable();
    assert_eq!(alone, (0..n).filter(|i| i % 3 == 0).collect::<Vec<_>>(), "{name}: every third alone");
    let acked_inputs = (0..n).filter(|&i| acked(i)).count();
    ledger.wait_for(acked_inputs).await;
    for i in (0..n).filter(|&i| acked(i)) {
        let mut errors: Vec<String> = got
            .iter()
            .filter(|(_, members)| members.contains(&i))
            .filter_map(|(group, members)| judged(*group, members))
            .collect();
        errors.sort();
        ledger.assert_outcome(i, &errors, name);
    }
    assert_eq!(ledger.count(), acked_inputs, "{name}");
    got
}

#[tokio::test]
async fn held_acks_of_mixed_inputs_go_on_with_what_is_made_of_them() {
    // The last group, 100..103, goes in `finish`.
    const INPUTS: u64 = 103;
    for &pattern in PATTERNS {
        let got = run_grouping(Grouping::start().await, INPUTS, pattern).await;
        // One replica: the groups are 0..5, 5..10, ... 100..103.
        let group = |i: u64| -> Vec<u64> { (i / 5 * 5..(i / 5 * 5 + 5).min(INPUTS)).collect() };
        let mut expected = Vec::new();
        for i in 0..INPUTS {
            let alone = i % 3 == 0;
            if alone && i % 2 == 0 {
                expected.push((false, vec![i]));
            }
            if i % 5 == 4 || i == INPUTS - 1 {
                expected.push((true, group(i)));
            }
            if alone && i % 2 == 1 {
                expected.push((false, vec![i]));
            }
        }
        assert_eq!(got, expected, "{}", pattern.0);
    }
}

#[tokio::test]
async fn held_acks_of_mixed_inputs_go_on_through_ordered_replicas_and_their_finish() {
    for &pattern in PATTERNS {
        // Inputs 300 and 301 come after the last that closes a group: the
        // replicas that take them emit them in `finish`.
        let got = run_grouping(GroupingInOrder::start().await, N + 2, pattern).await;
        assert!(got.iter().any(|(group, members)| *group && members.iter().all(|i| i % 5 != 4)), "{}", pattern.0);
    }
}

// ---------------------------------------------------------------------------
// Restarts and a replica stopped for good, with mixed items left in its
// batch.

/// Emits as `check` does (without its failures); casts itself a message
/// that panics its handler after inputs 13, 53, ... (so it restarts with
/// the rest of its batch), and panics in `process` after emitting the
/// items of inputs 27, 67, ...
struct Crashy {
    registry: Crashing,
}

impl GenServer for Crashy {
    type Message = ();
    type Response = ();
    type Registry = Crashing;

    fn new(registry: Crashing) -> Self {
        Crashy { registry }
    }

    async fn init(&mut self) {
        self.registry.inits.fetch_add(1, Ordering::SeqCst);
    }

    async fn handle_call(&mut self, (): ()) {}

    async fn handle_cast(&mut self, (): ()) {
        panic!("asked to crash");
    }

    fn restart_limit() -> RestartLimit {
        RestartLimit::new(100, Duration::from_secs(600))
    }
}

impl Stage for Crashy {
    type In = u64;
    type Out = (u64, u64);

    async fn process(&mut self, i: u64, out: &mut Emitter<(u64, u64)>) {
        if i % 40 == 13 {
            self.registry.try_cast_crashy(()).unwrap();
        }
        for j in 0..fan(i) {
            out.emit((i, j)).await;
        }
        if i % 40 == 27 {
            panic!("process panicked on {i}");
        }
    }
}

#[genflow::pipeline{ crashy: Crashy, tail: Tail<Crashing> }]
struct Crashing {
    inits: Arc<AtomicUsize>,
}

fn crashy_errors(i: u64) -> Vec<String> {
    let mut errors: Vec<String> = (0..fan(i)).filter(|&j| tail_fails(i, j)).map(|j| format!("tail {i}/{j}")).collect();
    if i % 40 == 27 {
        errors.push(format!("process panicked on {i}"));
    }
    errors.sort();
    errors
}

#[tokio::test]
async fn a_stage_restarted_mid_batch_keeps_the_acks_of_the_items_left_in_it() {
    for &pattern in PATTERNS {
        let inits = Arc::new(AtomicUsize::new(0));
        let flow = Crashing::start(inits.clone()).await;
        let model = Model { errors: crashy_errors, outputs: outputs_of };
        run_mixed(flow, N, pattern, How::Send, true, &model).await;
        // One state at the start, and one per crash.
        assert_eq!(inits.load(Ordering::SeqCst), 1 + (0..N).filter(|i| i % 40 == 13).count(), "{}", pattern.0);
    }
}

/// Emits `(i, 0)`; after input 40, casts itself a message that panics its
/// handler, and it may not restart.
struct Stopper {
    registry: Stopping,
}

impl GenServer for Stopper {
    type Message = ();
    type Response = ();
    type Registry = Stopping;

    fn new(registry: Stopping) -> Self {
        Stopper { registry }
    }

    async fn handle_call(&mut self, (): ()) {}

    async fn handle_cast(&mut self, (): ()) {
        panic!("asked to stop");
    }

    fn restart_limit() -> RestartLimit {
        RestartLimit::NEVER
    }
}

impl Stage for Stopper {
    type In = u64;
    type Out = (u64, u64);

    async fn process(&mut self, i: u64, out: &mut Emitter<(u64, u64)>) {
        if i == 40 {
            self.registry.try_cast_stopper(()).unwrap();
        }
        out.emit((i, 0)).await;
    }
}

#[genflow::pipeline{ stopper: Stopper }]
struct Stopping;

fn stopped_errors(i: u64) -> Vec<String> {
    if i > 40 { vec!["stopped for good".to_string()] } else { Vec::new() }
}

fn stopped_outputs(i: u64) -> Vec<(u64, u64)> {
    if i > 40 { Vec::new() } else { vec![(i, 0)] }
}

#[tokio::test]
async fn a_replica_stopped_for_good_fails_the_acked_items_left_in_its_batch_and_after() {
    let model = Model { errors: stopped_errors, outputs: stopped_outputs };
    for &pattern in PATTERNS {
        let flow = Stopping::start().await;
        // The failures' text is "the replica stopped for good ...".
        run_mixed(flow, 100, pattern, How::Feed, true, &model).await;
    }
}

// ---------------------------------------------------------------------------
// Abort with mixed items everywhere.

/// The input the gates never finish.
const STOP: u64 = 150;

/// Whether each gate reached [`STOP`].
static GATE_REACHED: AtomicBool = AtomicBool::new(false);
static FUSED_GATE_REACHED: AtomicBool = AtomicBool::new(false);
static ASYNC_GATE_REACHED: AtomicBool = AtomicBool::new(false);

/// Emits `(i, 0)`, but never returns from [`STOP`].
#[genflow::stage]
async fn gate(i: u64, out: &mut Emitter<(u64, u64)>) {
    if i == STOP {
        GATE_REACHED.store(true, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    out.emit((i, 0)).await;
}

/// As `gate`, fused.
#[genflow::stage]
async fn fused_gate(i: u64, out: &mut Emitter<(u64, u64)>) {
    if i == STOP {
        FUSED_GATE_REACHED.store(true, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    out.emit((i, 0)).await;
}

/// As `gate`, each item made by a future handed to `emit_async`; the
/// future of [`STOP`] never completes, and the others go on past it.
#[genflow::stage]
async fn async_gate(i: u64, out: &mut Emitter<(u64, u64)>) {
    out.emit_async(async move {
        if i == STOP {
            ASYNC_GATE_REACHED.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        tokio::task::yield_now().await;
        (i, 0)
    })
    .await;
}

#[genflow::pipeline{ pass: Pass<Aborting>, gate: Gate<Aborting> }]
struct Aborting;

#[genflow::pipeline{ pass: Pass<AbortingFused>, #[fused] gate: FusedGate<AbortingFused> }]
struct AbortingFused;

#[genflow::pipeline{ pass: Pass<AbortingAsync>, #[concurrency(4)] gate: AsyncGate<AbortingAsync> }]
struct AbortingAsync;

/// Sends `0..400` mixed into `flow`, whose stage `gate` stops at
/// [`STOP`] (setting `reached`), while a reader takes the output; aborts
/// once the gate is stuck. Every `Ack` sent fires once: delivered if its
/// item was read, dropped if not, wherever it waited (a queue, a batch, a
/// buffer, a future in flight, the output).
async fn run_abort<P: Pipeline<In = u64, Out = (u64, u64)>>(
    flow: P,
    abort: fn(&P),
    reached: &AtomicBool,
    ordered: bool,
) {
    const INPUTS: u64 = 400;
    let ledger = Ledger::new(INPUTS);
    let acked = |i: u64| i % 3 == 0 || i % 32 == 31 || i == STOP;
    let mut output = flow.output().unwrap().acked();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(((i, j), held)) = output.next().await {
            assert_eq!(held.is_empty(), !acked(i), "item {i}/{j}");
            got.push(i);
            held.release();
        }
        got
    });
    send_mixed(&flow, &ledger, INPUTS, acked, How::Feed).await;
    eventually(|| reached.load(Ordering::SeqCst)).await;
    abort(&flow);
    within(flow.shutdown()).await;
    let got = within(reader).await.unwrap();
    assert!(!got.contains(&STOP), "{got:?}");
    if ordered {
        assert!(got.iter().all(|&i| i < STOP), "{got:?}");
    }
    let acked_inputs = (0..INPUTS).filter(|&i| acked(i)).count();
    ledger.wait_for(acked_inputs).await;
    for i in (0..INPUTS).filter(|&i| acked(i)) {
        let expected = if got.contains(&i) { "delivered" } else { "dropped" };
        assert_eq!(ledger.once(i, "abort"), (expected, Vec::new()), "input {i}");
    }
    assert_eq!(ledger.count(), acked_inputs);
}

#[tokio::test]
async fn abort_reports_every_accepted_ack_once_delivered_if_read_and_dropped_otherwise() {
    run_abort(Aborting::start().await, Aborting::abort, &GATE_REACHED, true).await;
}

#[tokio::test]
async fn abort_of_a_fused_group_reports_every_ack_once() {
    run_abort(AbortingFused::start().await, AbortingFused::abort, &FUSED_GATE_REACHED, true).await;
}

#[tokio::test]
async fn abort_with_futures_in_flight_reports_every_ack_once() {
    run_abort(AbortingAsync::start().await, AbortingAsync::abort, &ASYNC_GATE_REACHED, false).await;
}

/// Emits `(i, 0)`; its cast handler panics, and it may not restart: a
/// stage fused into the one before it that stops for good.
struct Crasher<R>(PhantomData<R>);

impl<R: Clone + Send + Sync + 'static> GenServer for Crasher<R> {
    type Message = ();
    type Response = ();
    type Registry = R;

    fn new(_: R) -> Self {
        Crasher(PhantomData)
    }

    async fn handle_call(&mut self, (): ()) {}

    async fn handle_cast(&mut self, (): ()) {
        panic!("asked to crash");
    }

    fn restart_limit() -> RestartLimit {
        RestartLimit::NEVER
    }
}

impl<R: Clone + Send + Sync + 'static> Stage for Crasher<R> {
    type In = u64;
    type Out = (u64, u64);

    async fn process(&mut self, i: u64, out: &mut Emitter<(u64, u64)>) {
        out.emit((i, 0)).await;
    }
}

#[genflow::pipeline{ pass: Pass<FusedStopping>, #[fused] crasher: Crasher<FusedStopping>, #[fused] tail: Tail<FusedStopping> }]
struct FusedStopping;

#[tokio::test]
async fn a_fused_stage_stopped_for_good_fails_the_acks_of_the_items_handed_to_it() {
    const BEFORE: u64 = 40;
    const INPUTS: u64 = 100;
    for &(name, acked) in PATTERNS {
        let flow = FusedStopping::start().await;
        let ledger = Ledger::new(INPUTS);
        let reader = tokio::spawn(flow.output().unwrap().collect::<Vec<(u64, u64)>>());
        let send = |range: std::ops::Range<u64>| {
            let (flow, ledger) = (flow.clone(), ledger.clone());
            async move {
                for i in range {
                    if acked(i) {
                        flow.acked().send(i, ledger.ack(i)).await.unwrap()
                    } else {
                        flow.send(i).await.unwrap()
                    }
                }
            }
        };
        send(0..BEFORE).await;
        within(flow.flush()).await.unwrap();
        flow.cast_crasher(()).await.unwrap();
        // Answered after the cast: by then the stage is down.
        assert!(flow.call_crasher(()).await.is_err(), "{name}: the stage stopped");
        send(BEFORE..INPUTS).await;
        within(flow.shutdown()).await;
        let got = within(reader).await.unwrap();
        let expected: Vec<(u64, u64)> = (0..BEFORE).map(|i| (i, 0)).filter(|&(i, j)| !tail_fails(i, j)).collect();
        assert_eq!(got, expected, "{name}");
        let acked_inputs = (0..INPUTS).filter(|&i| acked(i)).count();
        ledger.wait_for(acked_inputs).await;
        for i in (0..INPUTS).filter(|&i| acked(i)) {
            let errors = if i >= BEFORE {
                vec!["stopped for good".to_string()]
            } else if tail_fails(i, 0) {
                vec![format!("tail {i}/0")]
            } else {
                Vec::new()
            };
            ledger.assert_outcome(i, &errors, name);
        }
        assert_eq!(ledger.count(), acked_inputs, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_while_mixed_inputs_stream_in_reports_each_accepted_ack_once_and_consistently() {
    for round in 0..4u64 {
        const MOST: u64 = 100_000;
        let flow = Keyed::start().await;
        let ledger = Ledger::new(MOST);
        let acked = |i: u64| i % 3 != 0;
        let mut output = flow.output().unwrap().acked();
        let reader = tokio::spawn(async move {
            let mut read = std::collections::HashSet::new();
            while let Some((item, held)) = output.next().await {
                assert_eq!(held.is_empty(), !acked(item.0), "{item:?}");
                read.insert(item);
                held.release();
            }
            read
        });
        let feeder = tokio::spawn({
            let (flow, ledger) = (flow.clone(), ledger.clone());
            async move {
                let input = flow.acked();
                for i in 0..MOST {
                    let refused = if acked(i) {
                        input
                            .send(i, ledger.ack(i))
                            .await
                            .err()
                            .map(|e| e.into_message().map(|(i, ack)| (i, Some(ack))))
                    } else {
                        flow.send(i).await.err().map(|e| e.into_message().map(|i| (i, None)))
                    };
                    if let Some(refused) = refused {
                        return (i, refused);
                    }
                }
                panic!("the pipeline was not aborted");
            }
        });
        // Let some inputs through first, a different number each round.
        eventually(|| flow.metrics().stage("tail").unwrap().processed > 500 * (round + 1)).await;
        flow.abort();
        within(flow.shutdown()).await;
        let (accepted, refused) = within(feeder).await.unwrap();
        let read = within(reader).await.unwrap();
        // The refused input comes back, with its Ack if it had one.
        let (item, ack) = refused.expect("the refused input comes back");
        assert_eq!((item, ack.is_some()), (accepted, acked(accepted)));
        let acked_inputs = (0..accepted).filter(|&i| acked(i)).count();
        ledger.wait_for(acked_inputs).await;
        assert_eq!(ledger.count(), acked_inputs, "fired before the refused Ack goes");
        drop(ack);
        let mut in_process = Vec::new();
        for i in (0..accepted).filter(|&i| acked(i)) {
            let (kind, errors) = ledger.once(i, "abort while streaming");
            // (An input that makes nothing that leaves shows nothing read.)
            let outputs = outputs_of(i);
            let all_read = !outputs.is_empty() && outputs.iter().all(|item| read.contains(item));
            match kind {
                // Delivered: nothing failed, and every item was read.
                "delivered" => {
                    assert!(errors_of(i).is_empty(), "input {i} delivered");
                    assert!(outputs.is_empty() || all_read, "input {i} delivered, not all of it read");
                }
                // Failed: by failures of its own.
                "failed" => {
                    assert!(
                        !errors.is_empty() && errors.iter().all(|e| errors_of(i).contains(e)),
                        "input {i}: {errors:?}"
                    )
                }
                // Dropped: something of it was lost, or it was in
                // `process` (its items may all be out, but not its own
                // hold).
                _ => {
                    if errors_of(i).is_empty() && all_read {
                        in_process.push(i);
                    }
                }
            }
        }
        // At most one input in `process` per replica: pass, check's three
        // and tail's two.
        assert!(in_process.len() <= 6, "dropped with all of them read: {in_process:?}");
        // Nothing read that was not accepted.
        assert!(read.iter().all(|&(i, _)| i < accepted));
    }
}

// ---------------------------------------------------------------------------
// A full queue refuses an acked `try_send` and hands its Ack back.

/// Takes a permit per input before emitting it; a queue of 8.
struct Slow {
    permits: Arc<Semaphore>,
}

impl GenServer for Slow {
    type Message = ();
    type Response = ();
    type Registry = Narrow;

    fn new(registry: Narrow) -> Self {
        Slow { permits: registry.permits }
    }

    async fn handle_call(&mut self, (): ()) {}

    fn channel_queue_size() -> usize {
        8
    }
}

impl Stage for Slow {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, i: u64, out: &mut Emitter<u64>) {
        self.permits.acquire().await.unwrap().forget();
        out.emit(i).await;
    }
}

#[genflow::pipeline{ slow: Slow }]
struct Narrow {
    permits: Arc<Semaphore>,
}

#[tokio::test]
async fn a_full_queue_of_mixed_items_refuses_try_send_and_hands_the_ack_back_unfired() {
    let permits = Arc::new(Semaphore::new(0));
    let flow = Narrow::start(permits.clone()).await;
    let ledger = Ledger::new(64);
    // Read as it comes: the output's queue is as small as the stage's.
    let reader = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    // Input 0 is taken and waits for a permit in `process`.
    flow.try_send(0).unwrap();
    eventually(|| flow.metrics().stage("slow").unwrap().received == 1).await;
    let acked = |i: u64| i % 3 != 0;
    // Then the queue of 8 fills with a mix.
    for i in 1..=8 {
        if acked(i) { flow.acked().try_send(i, ledger.ack(i)).unwrap() } else { flow.try_send(i).unwrap() }
    }
    let Err(SendError::Full((refused, ack))) = flow.acked().try_send(10, ledger.ack(10)) else {
        panic!("the queue is full")
    };
    assert_eq!(refused, 10);
    assert!(matches!(flow.try_send(9), Err(SendError::Full(9))));
    assert_eq!(ledger.count(), 0, "nothing fired: the refused Ack is back with the caller");
    permits.add_permits(64);
    // Sent again, the same Ack.
    flow.acked().send(10, ack).await.unwrap();
    flow.send(9).await.unwrap();
    within(flow.shutdown()).await;
    let got = within(reader).await.unwrap();
    assert_eq!(got, [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 9]);
    let acked_inputs: Vec<u64> = (1..=8).filter(|&i| acked(i)).chain([10]).collect();
    assert_eq!(acked_inputs, [1, 2, 4, 5, 7, 8, 10]);
    ledger.wait_for(acked_inputs.len()).await;
    for &i in &acked_inputs {
        ledger.assert_outcome(i, &[], "full queue");
    }
    assert_eq!(ledger.count(), acked_inputs.len());
}
