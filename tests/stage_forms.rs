//! Stages declared with `#[genflow::stage]` (on functions and on short
//! `impl Stage` blocks) and servers relying on `GenServer`'s defaults, each
//! run in a real pipeline or registry with its outputs asserted.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use futures::{StreamExt, stream};
use genflow::{Emitter, GenServer, Stage};

// ---- function stages, one per return shape ----

#[genflow::stage]
fn double(n: u64) -> u64 {
    n * 2
}

#[genflow::stage]
async fn even(n: u64) -> Option<u64> {
    tokio::task::yield_now().await;
    (n % 2 == 0).then_some(n)
}

#[genflow::stage]
fn repeat(n: u64) -> Vec<u64> {
    vec![n; n as usize]
}

#[genflow::stage]
fn up_to(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

#[genflow::stage]
fn letters(word: String) -> impl Iterator<Item = char> {
    word.into_bytes().into_iter().map(char::from)
}

/// An error of the user's own type, keeping the input that failed.
#[derive(Debug)]
struct BadNumber(String);

impl fmt::Display for BadNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a number: {:?}", self.0)
    }
}

impl std::error::Error for BadNumber {}

#[genflow::stage]
fn parse_number(text: String) -> Result<u64, BadNumber> {
    text.trim().parse().map_err(|_| BadNumber(text))
}

#[genflow::stage]
async fn parse_all(text: String) -> Result<Vec<u64>, std::num::ParseIntError> {
    text.split(',').map(str::parse).collect()
}

#[genflow::stage]
async fn pairs(n: u64, out: &mut Emitter<(u64, u64)>) {
    for i in 0..n {
        out.emit((n, i)).await;
    }
}

/// Emits items up to the first odd one, then fails on it.
#[genflow::stage]
async fn until_odd(items: Vec<u64>, out: &mut Emitter<u64>) -> Result<(), String> {
    for item in items {
        if item % 2 == 1 {
            return Err(format!("odd: {item}"));
        }
        out.emit(item).await;
    }
    Ok(())
}

static SEEN: AtomicU64 = AtomicU64::new(0);

#[genflow::stage]
fn record(n: u64) {
    SEEN.fetch_add(n, Ordering::SeqCst);
}

#[genflow::pipeline{ double: Double<Numbers>, even: Even<Numbers> }]
struct Numbers;

#[genflow::pipeline{ repeat: Repeat<Many>, up_to: UpTo<Many> }]
struct Many;

#[genflow::pipeline{ letters: Letters<Chars> }]
struct Chars;

#[genflow::pipeline{ parse: ParseNumber<Parsed>, double: Double<Parsed> }]
struct Parsed;

#[genflow::pipeline{ parse: ParseAll<Lists>, repeat: Repeat<Lists> }]
struct Lists;

#[genflow::pipeline{ pairs: Pairs<Emitting> }]
struct Emitting;

#[genflow::pipeline{ until_odd: UntilOdd<Prefixes> }]
struct Prefixes;

#[genflow::pipeline{ double: Double<Recorded>, record: Record<Recorded> }]
struct Recorded;

#[genflow::pipeline{ #[replicas(3, ordered)] double: Double<Replicated> }]
struct Replicated;

/// Feeds `items` to a pipeline, shuts it down and returns its output.
macro_rules! run {
    ($pipeline:ty, $items:expr) => {{
        let pipeline = <$pipeline>::start().await;
        let output = tokio::spawn(pipeline.output().expect("taken once").collect::<Vec<_>>());
        pipeline.feed(stream::iter($items)).await.expect("the pipeline is running");
        pipeline.shutdown().await;
        (output.await.expect("the reader does not panic"), pipeline.metrics())
    }};
}

#[tokio::test]
async fn one_and_optional_outputs() {
    let (out, metrics) = run!(Numbers, 0..6u64);
    assert_eq!(out, [0, 2, 4, 6, 8, 10]);
    let (out, _) = run!(Numbers, [1u64, 3]);
    assert_eq!(out, [2, 6]);
    let even = metrics.stage("even").expect("a stage");
    assert_eq!((even.received, even.emitted, even.failed), (6, 6, 0));
}

#[tokio::test]
async fn many_outputs_from_vec_and_iterators() {
    let (out, metrics) = run!(Many, [0u64, 1, 2, 3]);
    // repeat: 1, 2 2, 3 3 3; up_to: 0 | 0 1 | 0 1 | 0 1 2 | 0 1 2 | 0 1 2
    assert_eq!(out, [0, 0, 1, 0, 1, 0, 1, 2, 0, 1, 2, 0, 1, 2]);
    assert_eq!(metrics.stage("repeat").map(|s| s.emitted), Some(6));
    let (out, _) = run!(Chars, ["ab".to_string(), String::new(), "c".to_string()]);
    assert_eq!(out, ['a', 'b', 'c']);
}

#[tokio::test]
async fn err_fails_the_item_and_the_stage_goes_on() {
    let input = ["1", "x", "2", "", "3"].map(String::from);
    let (out, metrics) = run!(Parsed, input);
    assert_eq!(out, [2, 4, 6]);
    let parse = metrics.stage("parse").expect("a stage");
    assert_eq!((parse.received, parse.emitted, parse.failed), (5, 3, 2));
    assert_eq!(metrics.stage("double").map(|s| (s.received, s.failed)), Some((3, 0)));
}

#[tokio::test]
async fn err_around_many_outputs_emits_nothing_for_the_failed_item() {
    let input = ["1,2", "3,x", "0"].map(String::from);
    let (out, metrics) = run!(Lists, input);
    // "1,2" → 1, 2 → repeat: 1, 2 2; "3,x" fails; "0" → 0 → repeat: nothing.
    assert_eq!(out, [1, 2, 2]);
    assert_eq!(metrics.stage("parse").map(|s| (s.emitted, s.failed)), Some((3, 1)));
}

#[tokio::test]
async fn emitter_form_emits_any_number() {
    let (out, _) = run!(Emitting, [2u64, 0, 1]);
    assert_eq!(out, [(2, 0), (2, 1), (1, 0)]);
}

#[tokio::test]
async fn emitter_form_err_keeps_what_was_emitted() {
    let (out, metrics) = run!(Prefixes, [vec![2, 4, 5, 6], vec![8], vec![1]]);
    assert_eq!(out, [2, 4, 8]);
    let stage = metrics.stage("until_odd").expect("a stage");
    assert_eq!((stage.received, stage.emitted, stage.failed), (3, 3, 2));
}

#[tokio::test]
async fn a_function_without_result_is_for_side_effects() {
    let (out, metrics) = run!(Recorded, 1..=4u64);
    assert_eq!(out, Vec::<()>::new());
    assert_eq!(SEEN.load(Ordering::SeqCst), 2 + 4 + 6 + 8);
    let record = metrics.stage("record").expect("a stage");
    assert_eq!((record.received, record.emitted), (4, 0));
}

#[tokio::test]
async fn a_function_stage_replicates_and_keeps_order() {
    let (out, metrics) = run!(Replicated, 0..1_000u64);
    assert_eq!(out, (0..1_000).map(|n| n * 2).collect::<Vec<_>>());
    assert_eq!(metrics.stage("double").map(|s| s.replicas.len()), Some(3));
}

#[test]
fn the_function_stays_callable() {
    assert_eq!(double(21), 42);
    assert_eq!(parse_number(" 7 ".into()).ok(), Some(7));
}

// ---- `impl Stage` blocks ----

/// Only what it uses: state through `Default`, no calls.
#[derive(Default)]
struct Sum(u64);

#[genflow::stage]
impl Stage for Sum {
    type Registry = Sums;
    type In = u64;
    type Out = u64;

    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        self.0 += n;
        out.emit(self.0).await;
    }
}

/// Answers calls, built from a pipeline field, and emits a last item in
/// `finish`.
struct Scaled {
    factor: u64,
    seen: u64,
}

#[genflow::stage]
impl Stage for Scaled {
    type Registry = Sums;
    type Response = u64;
    type In = u64;
    type Out = u64;

    fn new(sums: Sums) -> Self {
        Scaled { factor: sums.factor, seen: 0 }
    }

    async fn handle_call(&mut self, _: ()) -> u64 {
        self.seen
    }

    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        self.seen += 1;
        out.emit(n * self.factor).await;
    }

    async fn finish(&mut self, out: &mut Emitter<u64>) {
        out.emit(u64::MAX).await;
    }
}

/// Takes casts only: `Message` without `Response`.
#[derive(Default)]
struct Offset(u64);

#[genflow::stage]
impl Stage for Offset {
    type Registry = Sums;
    type Message = u64;
    type In = u64;
    type Out = u64;

    async fn handle_cast(&mut self, offset: u64) {
        self.0 = offset;
    }

    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit(n.saturating_add(self.0)).await;
    }
}

#[genflow::pipeline{ sum: Sum, offset: Offset, scaled: Scaled }]
struct Sums {
    factor: u64,
}

#[tokio::test]
async fn impl_blocks_write_only_what_they_use() {
    let sums = Sums::start(10).await;
    let mut output = sums.output().expect("taken once");
    sums.send(1).await.expect("running");
    sums.send(2).await.expect("running");
    // sum: 1, 3; offset 0; scaled ×10.
    assert_eq!(output.by_ref().take(2).collect::<Vec<_>>().await, [10, 30]);
    assert_eq!(sums.call_scaled(()).await.expect("running"), 2);
    // The call returns once the cast queued before it was handled, so the
    // offset applies from the next item on.
    sums.cast_offset(100).await.expect("running");
    sums.call_offset(0).await.expect("running"); // its `handle_call` is a no-op
    sums.send(3).await.expect("running");
    assert_eq!(output.next().await, Some((6 + 100) * 10));
    sums.shutdown().await;
    assert_eq!(output.collect::<Vec<_>>().await, [u64::MAX]);
}

// ---- `GenServer` defaults ----

/// A hand-written server that takes only calls: no `handle_cast`.
struct Echo;

impl GenServer for Echo {
    type Message = String;
    type Response = String;
    type Registry = Echoes;

    fn new(_: Echoes) -> Self {
        Echo
    }

    async fn handle_call(&mut self, message: String) -> String {
        message
    }
}

#[genflow::make_registry{ echo: Echo }]
struct Echoes;

#[tokio::test]
async fn a_cast_to_a_server_without_handle_cast_is_dropped() {
    let echoes = Echoes::start().await;
    echoes.cast_echo("ignored".into()).await.expect("running");
    assert_eq!(echoes.call_echo("hi".into()).await.expect("running"), "hi");
    echoes.shutdown().await;
}

// ---- misuse ----

#[test]
fn misuse_is_one_precise_error() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/stage/pass/*.rs");
    t.compile_fail("tests/ui/stage/fail/*.rs");
}

#[tokio::test]
async fn an_err_of_a_stage_function_is_a_failure_with_the_error() {
    let flow = Parsed::start().await;
    let output = flow.output().unwrap();
    let failures = flow.failures().unwrap();
    let outputs = tokio::spawn(output.collect::<Vec<u64>>());
    let failed = tokio::spawn(failures.collect::<Vec<genflow::Failure>>());
    let input = ["1", "x", "3", "y"].map(String::from);
    assert_eq!(flow.feed(futures::stream::iter(input)).await.unwrap(), 4);
    flow.shutdown().await;
    assert_eq!(outputs.await.unwrap(), [2, 6]);
    let failed = failed.await.unwrap();
    let bad: Vec<String> = failed
        .iter()
        .map(|f| {
            assert_eq!(f.stage(), "parse");
            assert!(!f.is_panic());
            f.error().downcast_ref::<BadNumber>().expect("the function's error type").0.clone()
        })
        .collect();
    assert_eq!(bad, ["x", "y"]);
    assert_eq!(flow.metrics().stage("parse").unwrap().failed, 2);
}
