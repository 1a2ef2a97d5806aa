//! Edge cases of the item loop, the emitter's sends and `feed`:
//!
//! 1. the item loop's `process` future slot (`MaybeUninit`, its fullness a
//!    local, separate panic guards for making and dropping a future):
//!    hand-written `process` futures that panic before they exist, on their
//!    first poll, after a `Pending`, in their `Drop` (once done, and when
//!    dropped while pending by `abort`), mixed with acknowledged items,
//!    fused and unfused, on the one-item path (`#[concurrency]`,
//!    `#[rate_limit]`) and with replicas; every future is counted as made
//!    and dropped, every stage's counts and every `Ack` are checked;
//! 2. the emitter's threshold (`full_at`: 32, or 512 before a fused stage)
//!    and its `Waits`: fan-outs of 31/32/33 .. 1023/1024/1025 items into
//!    small and large queues, fused and `ordered`, with `flush`; `blocked`
//!    and `failures_blocked` behind a slow output reader and a full
//!    failures buffer; `partition_by` key functions that panic while the
//!    next queue or the failures buffer is full;
//! 3. `feed` reserving up to 512 items and taking only ready ones: slow
//!    streams, queues of 1, 16 and 1000, `partition_by`, concurrent
//!    feeders and sinks, shutdown in the middle of a feed, and streams
//!    that end while their items are ready.
//!
//! An ignored test says which limit it shows.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{FutureExt, SinkExt, StreamExt, future::BoxFuture, stream};
use genflow::{
    CallError, Emitter, GenServer, Metrics, Pipeline, RestartLimit, SendError, Stage,
    ack::{self, Outcome},
};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

#[path = "support/quiet.rs"]
mod quiet;

/// The marker of every expected panic of this binary.
const MARK: &str = "expected guard panic";

fn quiet_panics() {
    quiet::quiet_panics(MARK);
}

/// The guard against a hang: a test that passes never comes near it.
const DEADLINE: Duration = Duration::from_secs(15);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future).await.unwrap_or_else(|_| panic!("{what} did not finish in time"))
}

/// Polls `pred` until it holds, a millisecond apart, for at most [`DEADLINE`].
async fn eventually(what: &str, mut pred: impl FnMut() -> bool) {
    within(what, async {
        while !pred() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// The input value a failure's message names: every message of this
/// binary ends with `#<input>`.
fn input_of(message: &str) -> u64 {
    let at = message.rfind('#').unwrap_or_else(|| panic!("no input in {message:?}"));
    message[at + 1..].trim().parse().unwrap_or_else(|_| panic!("no input in {message:?}"))
}

// ---------------------------------------------------------------------------
// The lab: a hand-written `process` future, counted.

/// What `process` does with an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Emits the input.
    Pass,
    /// Yields once, then emits the input.
    Yield,
    /// Emits the input, then fails it.
    Fail,
    /// `process` panics before it returns its future.
    MakePanic,
    /// The future panics on its first poll.
    PollPanic,
    /// The future returns `Pending` (waking itself), then panics.
    PendingThenPanic,
    /// The future emits the input and is `Ready`; its `Drop` panics.
    DropPanic,
    /// `Pending` first, then emits and is `Ready`; its `Drop` panics.
    PendingThenDropPanic,
    /// The future panics on its first poll, and its `Drop` panics too.
    PollAndDropPanic,
    /// The future never completes.
    Hang,
    /// The future never completes; its `Drop` panics.
    HangDropPanic,
    /// Waits for a permit of [`Lab::gate`], then emits the input.
    Gate,
}

use Mode::*;

impl Mode {
    /// Whether a future is made (`process` returns).
    fn makes(self) -> bool {
        self != MakePanic
    }

    /// Whether the input is emitted (once done).
    fn emits(self) -> bool {
        matches!(self, Pass | Yield | Fail | DropPanic | PendingThenDropPanic | Gate)
    }

    /// Whether the input fails.
    fn fails(self) -> bool {
        matches!(
            self,
            Fail | MakePanic | PollPanic | PendingThenPanic | DropPanic | PendingThenDropPanic | PollAndDropPanic
        )
    }

    /// Whether its failure is a panic.
    fn panics(self) -> bool {
        self.fails() && self != Fail
    }

    fn drop_panics(self) -> bool {
        matches!(self, DropPanic | PendingThenDropPanic | PollAndDropPanic | HangDropPanic)
    }
}

/// What a pipeline's probe stage shares with the test.
struct Lab {
    plan: Box<dyn Fn(u64) -> Mode + Send + Sync>,
    /// Futures made.
    made: AtomicU64,
    /// Drops, by input.
    drops: Mutex<BTreeMap<u64, u32>>,
    /// Drops that ran while the thread was already panicking.
    drops_unwinding: AtomicU64,
    /// Inputs whose future hangs and was polled.
    hung: Mutex<Vec<u64>>,
    gate: Semaphore,
}

impl Lab {
    fn new(plan: impl Fn(u64) -> Mode + Send + Sync + 'static) -> Arc<Lab> {
        Arc::new(Lab {
            plan: Box::new(plan),
            made: AtomicU64::new(0),
            drops: Mutex::new(BTreeMap::new()),
            drops_unwinding: AtomicU64::new(0),
            hung: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
        })
    }

    fn mode(&self, x: u64) -> Mode {
        (self.plan)(x)
    }

    fn drops(&self) -> BTreeMap<u64, u32> {
        self.drops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn hung(&self) -> Vec<u64> {
        self.hung.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every future made was dropped exactly once: those of `made_for`.
    fn assert_dropped_once(&self, made_for: impl IntoIterator<Item = u64>, what: &str) {
        let want: BTreeMap<u64, u32> = made_for.into_iter().map(|x| (x, 1)).collect();
        let drops = self.drops();
        let twice: Vec<_> = drops.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{what}: futures dropped more than once: {twice:?}");
        let leaked: Vec<_> = want.keys().filter(|x| !drops.contains_key(x)).collect();
        assert!(leaked.is_empty(), "{what}: futures never dropped (leaked): {leaked:?}");
        assert_eq!(drops, want, "{what}: each future made is dropped once");
        assert_eq!(self.made.load(Ordering::SeqCst), want.len() as u64, "{what}: futures made");
        assert_eq!(self.drops_unwinding.load(Ordering::SeqCst), 0, "{what}: no drop ran while unwinding");
    }
}

/// A `process` future: `inner` does the work; `mode` adds the trouble.
struct Tracked<'a> {
    x: u64,
    mode: Mode,
    polls: u32,
    inner: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    lab: Arc<Lab>,
}

impl Future for Tracked<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        this.polls += 1;
        let x = this.x;
        match this.mode {
            PollPanic | PollAndDropPanic => panic!("{MARK}: poll of #{x}"),
            PendingThenPanic | PendingThenDropPanic if this.polls == 1 => {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            PendingThenPanic => panic!("{MARK}: second poll of #{x}"),
            Hang | HangDropPanic => {
                let mut hung = this.lab.hung.lock().unwrap_or_else(|p| p.into_inner());
                if !hung.contains(&x) {
                    hung.push(x);
                }
                return Poll::Pending;
            }
            _ => {}
        }
        this.inner.as_mut().poll(cx)
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        let x = self.x;
        *self.lab.drops.lock().unwrap_or_else(|p| p.into_inner()).entry(x).or_default() += 1;
        if std::thread::panicking() {
            // A panic here would abort the process: only counted.
            self.lab.drops_unwinding.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if self.mode.drop_panics() {
            panic!("{MARK}: drop of #{x}");
        }
    }
}

/// The pipelines with a lab.
trait HasLab: Pipeline<In = u64, Out = u64> {
    fn lab(&self) -> &Arc<Lab>;
    /// The generated `abort`.
    fn stop_now(&self);
}

/// The probe stage's calls.
#[derive(Clone, Debug)]
enum Cmd {
    /// How many inputs `process` was called with (its state).
    Seen,
    /// Panics.
    Crash,
}

/// The pipelines with a probe stage named `probe`.
trait HasProbe: HasLab {
    fn call_seen(&self) -> BoxFuture<'_, Result<u64, CallError<Cmd>>>;
    fn call_crash(&self) -> BoxFuture<'_, Result<u64, CallError<Cmd>>>;
}

/// The stage under attack: a hand-written `process` whose future is a
/// [`Tracked`]. Panics in `process` never count toward its restart limit,
/// which allows none: one counted would stop it for good.
struct Probe<R> {
    reg: R,
    seen: u64,
}

impl<R: HasLab> GenServer for Probe<R> {
    type Message = Cmd;
    type Response = u64;
    type Registry = R;
    fn new(reg: R) -> Self {
        Probe { reg, seen: 0 }
    }
    async fn handle_call(&mut self, cmd: Cmd) -> u64 {
        match cmd {
            Cmd::Seen => self.seen,
            Cmd::Crash => panic!("{MARK}: crash call #0"),
        }
    }
    fn restart_limit() -> RestartLimit {
        RestartLimit::NEVER
    }
}

impl<R: HasLab> Stage for Probe<R> {
    type In = u64;
    type Out = u64;
    fn process(&mut self, x: u64, out: &mut Emitter<u64>) -> impl Future<Output = ()> + Send {
        self.seen += 1;
        let lab = self.reg.lab().clone();
        let mode = lab.mode(x);
        if mode == MakePanic {
            panic!("{MARK}: process of #{x}");
        }
        lab.made.fetch_add(1, Ordering::SeqCst);
        let gate = lab.clone();
        let inner: Pin<Box<dyn Future<Output = ()> + Send + '_>> = Box::pin(async move {
            match mode {
                Yield => tokio::task::yield_now().await,
                Gate => gate.gate.acquire().await.unwrap().forget(),
                _ => {}
            }
            out.emit(x).await;
            if mode == Fail {
                out.fail(format!("{MARK}: failed #{x}"));
            }
        });
        Tracked { x, mode, polls: 0, inner, lab }
    }
}

/// Passes its input on.
#[genflow::stage]
fn relay(x: u64) -> u64 {
    x
}

// The pipelines around a probe.

#[genflow::pipeline{ probe: Probe<Solo> }]
struct Solo {
    lab: Arc<Lab>,
}

#[genflow::pipeline{ head: Relay<Chain>, probe: Probe<Chain>, tail: Relay<Chain> }]
struct Chain {
    lab: Arc<Lab>,
}

#[genflow::pipeline{ head: Relay<FusedIn>, #[fused] probe: Probe<FusedIn>, tail: Relay<FusedIn> }]
struct FusedIn {
    lab: Arc<Lab>,
}

#[genflow::pipeline{ probe: Probe<FusedAfter>, #[fused] tail: Relay<FusedAfter> }]
struct FusedAfter {
    lab: Arc<Lab>,
}

#[genflow::pipeline{ #[concurrency(4)] probe: Probe<Conc>, tail: Relay<Conc> }]
struct Conc {
    lab: Arc<Lab>,
}

#[genflow::pipeline{ head: Relay<ConcFused>, #[fused] #[concurrency(4)] probe: Probe<ConcFused>, tail: Relay<ConcFused> }]
struct ConcFused {
    lab: Arc<Lab>,
}

#[genflow::pipeline{ #[rate_limit(1_000_000, per = Duration::from_secs(1))] probe: Probe<Rated>, tail: Relay<Rated> }]
struct Rated {
    lab: Arc<Lab>,
}

#[genflow::pipeline{ #[replicas(3)] probe: Probe<Replicated>, tail: Relay<Replicated> }]
struct Replicated {
    lab: Arc<Lab>,
}

macro_rules! probed {
    ($($p:ident),* $(,)?) => {$(
        impl HasProbe for $p {
            fn call_seen(&self) -> BoxFuture<'_, Result<u64, CallError<Cmd>>> {
                Box::pin(self.call_probe(Cmd::Seen))
            }
            fn call_crash(&self) -> BoxFuture<'_, Result<u64, CallError<Cmd>>> {
                Box::pin(self.call_probe(Cmd::Crash))
            }
        }
    )*};
}

macro_rules! labbed {
    ($($p:ident),* $(,)?) => {$(
        impl HasLab for $p {
            fn lab(&self) -> &Arc<Lab> {
                &self.lab
            }
            fn stop_now(&self) {
                self.abort();
            }
        }
    )*};
}

labbed!(Solo, Chain, FusedIn, FusedAfter, Conc, ConcFused, Rated, Replicated);
probed!(Solo, Chain, FusedIn, FusedAfter, Conc, ConcFused, Rated);

/// Its replicas' states, summed.
impl HasProbe for Replicated {
    fn call_seen(&self) -> BoxFuture<'_, Result<u64, CallError<Cmd>>> {
        Box::pin(async move { Ok(self.call_probe_all(Cmd::Seen).await?.into_iter().sum()) })
    }
    fn call_crash(&self) -> BoxFuture<'_, Result<u64, CallError<Cmd>>> {
        Box::pin(self.call_probe(Cmd::Crash))
    }
}

// ---------------------------------------------------------------------------
// Checks.

/// The identities of a pipeline that has stopped (after `shutdown`, or
/// `abort` then `shutdown`).
fn assert_settled(m: &Metrics, what: &str) {
    for s in m.stages() {
        assert_eq!(s.received, s.processed + s.aborted, "{what}, {}: received = processed + aborted\n{m}", s.name);
        assert_eq!(s.queued, 0, "{what}, {}: nothing queued\n{m}", s.name);
        assert_eq!(s.in_flight, 0, "{what}, {}: nothing in flight\n{m}", s.name);
        assert!(s.failed <= s.processed, "{what}, {}: failed <= processed\n{m}", s.name);
        assert!(s.failures_blocked <= s.blocked, "{what}, {}: failures_blocked is part of blocked\n{m}", s.name);
    }
    for pair in m.stages().windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(
            a.emitted,
            b.received + a.dropped,
            "{what}: {} emitted = {} received + dropped\n{m}",
            a.name,
            b.name
        );
    }
}

/// Collects the `(key, outcome)` pairs of an acknowledgement channel once
/// every `Ack` is gone, checking that each key fired exactly once.
async fn outcomes(done: ack::Acknowledgements<u64>, n: u64, what: &str) -> BTreeMap<u64, &'static str> {
    let fired: Vec<(u64, Outcome)> = within(&format!("{what}: every Ack fires"), done.collect()).await;
    let mut by_key: BTreeMap<u64, Vec<&'static str>> = BTreeMap::new();
    for (key, outcome) in &fired {
        by_key.entry(*key).or_default().push(outcome.kind());
    }
    let twice: Vec<_> = by_key.iter().filter(|(_, kinds)| kinds.len() > 1).collect();
    assert!(twice.is_empty(), "{what}: Acks fired more than once: {twice:?}");
    assert_eq!(by_key.len() as u64, n, "{what}: every Ack fired once");
    by_key.into_iter().map(|(key, kinds)| (key, kinds[0])).collect()
}

/// Feeds `0..n` (with an `Ack` for those `acks` says) into a pipeline
/// whose probe stage goes by its lab's plan, calling the probe meanwhile,
/// shuts it down, and checks outputs, the probe's counts, the failures,
/// the futures made and dropped, the probe's state (so no restart) and
/// every `Ack`'s outcome.
async fn run_plan<P: HasProbe>(flow: P, n: u64, acks: Acks, ordered: bool, what: &str) -> Metrics {
    quiet_panics();
    let what = format!("{what} (acks: {acks:?})");
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let failing = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
    let (acker, done) = ack::channel::<u64>();
    // Calls between the items meanwhile (the loop stops for mail): the
    // probe's count only grows.
    let calls = async {
        let mut last = 0;
        for _ in 0..30 {
            let seen = within("call probe", flow.call_seen()).await.unwrap();
            assert!(last <= seen && seen <= n, "{what}: seen {seen} after {last}");
            last = seen;
            tokio::task::yield_now().await;
        }
    };
    let feeding = feed_acks(&flow, n, acks, &acker);
    tokio::join!(feeding, calls);
    drop(acker);
    // The probe kept its state: no panic in `process` restarted it.
    within("flush", flow.flush()).await.unwrap();
    assert_eq!(within("call probe", flow.call_seen()).await.unwrap(), n, "{what}: the probe's state is kept");
    within("shutdown", flow.shutdown()).await;
    let mut got = within("output", reading).await.unwrap();
    let failures = within("failures", failing).await.unwrap();
    let m = flow.metrics();
    let lab = flow.lab().clone();
    let modes: Vec<Mode> = (0..n).map(|x| lab.mode(x)).collect();
    let mut want: Vec<u64> = (0..n).filter(|&x| modes[x as usize].emits()).collect();
    if !ordered {
        got.sort_unstable();
        want.sort_unstable();
    }
    assert!(got == want, "{what}: outputs (in order: {ordered}): got {} want {}\n{m}", got.len(), want.len());
    assert_settled(&m, &what);
    let p = m.stage("probe").unwrap();
    let fails = modes.iter().filter(|m| m.fails()).count() as u64;
    let panics = modes.iter().filter(|m| m.panics()).count() as u64;
    assert_eq!(
        (p.received, p.processed, p.aborted, p.failed, p.emitted, p.dropped),
        (n, n, 0, fails, want.len() as u64, 0),
        "{what}: probe (received, processed, aborted, failed, emitted, dropped)\n{m}"
    );
    let mut failed: Vec<u64> = failures.iter().map(|f| input_of(&f.error().to_string())).collect();
    failed.sort_unstable();
    let want_failed: Vec<u64> = (0..n).filter(|&x| modes[x as usize].fails()).collect();
    assert_eq!(failed, want_failed, "{what}: one failure per failed input\n{m}");
    assert!(failures.iter().all(|f| f.stage() == "probe"), "{what}: failures name the probe");
    assert_eq!(failures.iter().filter(|f| f.is_panic()).count() as u64, panics, "{what}: panics\n{m}");
    lab.assert_dropped_once((0..n).filter(|&x| modes[x as usize].makes()), &what);
    let acked: Vec<u64> = (0..n).filter(|x| acks.acked(*x)).collect();
    let kinds = outcomes(done, acked.len() as u64, &what).await;
    assert!(kinds.keys().copied().eq(acked.iter().copied()), "{what}: the Acks of the acknowledged inputs");
    for (x, kind) in kinds {
        let want = if modes[x as usize].fails() { "failed" } else { "delivered" };
        assert_eq!(kind, want, "{what}: the Ack of #{x} ({:?})", modes[x as usize]);
    }
    m
}

/// Feeds `0..n`, those `acks` says with an `Ack` made by `acker`, in
/// order, into the same queue.
async fn feed_acks<P: Pipeline<In = u64>>(flow: &P, n: u64, acks: Acks, acker: &ack::Acker<u64>) {
    match acks {
        Acks::None => assert_eq!(within("feed", flow.feed(stream::iter(0..n))).await.unwrap() as u64, n),
        Acks::All => {
            let acker = acker.clone();
            let items = stream::iter(0..n).map(move |x| (x, acker.ack(x)));
            assert_eq!(within("feed", flow.acked().feed(items)).await.unwrap() as u64, n);
        }
        Acks::Mixed => {
            // Runs of 7 plain items and 5 acknowledged ones: batches hold both.
            for start in (0..n).step_by(12) {
                let plain = start..(start + 7).min(n);
                within("feed", flow.feed(stream::iter(plain))).await.unwrap();
                let acker = acker.clone();
                let items = stream::iter((start + 7).min(n)..(start + 12).min(n)).map(move |x| (x, acker.ack(x)));
                within("feed", flow.acked().feed(items)).await.unwrap();
            }
        }
    }
}

/// Which inputs [`run_plan`] sends with an `Ack`.
#[derive(Clone, Copy, Debug)]
enum Acks {
    None,
    All,
    /// Runs of 7 without and 5 with.
    Mixed,
}

impl Acks {
    fn acked(self, x: u64) -> bool {
        match self {
            Acks::None => false,
            Acks::All => true,
            Acks::Mixed => x % 12 >= 7,
        }
    }
}

const ACKS: [Acks; 3] = [Acks::None, Acks::All, Acks::Mixed];

// ---------------------------------------------------------------------------
// 1. The item loop's slot.

/// Every kind of trouble a hand-written `process` future can bring, once
/// every 13 inputs, the rest plain: on the loop's fast path, after items
/// that waited, and across batches of 32 and hand-overs of 512.
fn mixed(x: u64) -> Mode {
    match x % 13 {
        1 => MakePanic,
        3 => PollPanic,
        4 => PendingThenPanic,
        6 => DropPanic,
        7 => PendingThenDropPanic,
        9 => Fail,
        10 => Yield,
        _ => Pass,
    }
}

/// The same kinds, in runs: 40 of each, so batches hold only one kind.
fn runs(x: u64) -> Mode {
    const KINDS: [Mode; 8] =
        [Pass, MakePanic, PollPanic, PendingThenPanic, DropPanic, PendingThenDropPanic, Fail, Yield];
    KINDS[(x / 40) as usize % KINDS.len()]
}

const N: u64 = 1100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_futures_that_panic_everywhere_unfused() {
    for acked in ACKS {
        for plan in [mixed as fn(u64) -> Mode, runs] {
            run_plan(Solo::start(Lab::new(plan)).await, N, acked, true, "solo").await;
            run_plan(Chain::start(Lab::new(plan)).await, N, acked, true, "chain").await;
            let flow = Solo::builder(Lab::new(plan)).max_demand("probe", 512).start().await.unwrap();
            run_plan(flow, N, acked, true, "solo, max_demand 512").await;
            let flow =
                Chain::builder(Lab::new(plan)).queue_size("probe", 1).queue_size("tail", 1).start().await.unwrap();
            run_plan(flow, N, acked, true, "chain, queues of 1").await;
            run_plan(Replicated::start(Lab::new(plan)).await, N, acked, false, "3 replicas").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_futures_that_panic_everywhere_fused() {
    for acked in ACKS {
        for plan in [mixed as fn(u64) -> Mode, runs] {
            run_plan(FusedIn::start(Lab::new(plan)).await, N, acked, true, "fused probe").await;
            run_plan(FusedAfter::start(Lab::new(plan)).await, N, acked, true, "probe, fused tail").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_futures_that_panic_everywhere_on_the_one_item_path() {
    for acked in ACKS {
        for plan in [mixed as fn(u64) -> Mode, runs] {
            run_plan(Conc::start(Lab::new(plan)).await, N, acked, true, "concurrency(4)").await;
            run_plan(ConcFused::start(Lab::new(plan)).await, N, acked, true, "fused concurrency(4)").await;
            run_plan(Rated::start(Lab::new(plan)).await, N, acked, true, "rate_limit").await;
        }
    }
}

/// A `process` future whose poll panics and whose `Drop` panics too (a
/// hand-written future, which `Stage::process`'s signature allows): the
/// poll's guard catches the first panic, and the future is then dropped
/// under a guard of its own. Input 3 fails with one `Failure`, every other
/// input goes through, every future is dropped once, the counts add up,
/// and the stage goes on (before, the `Drop`'s panic unwound out of the
/// replica's task and ended it, silently).
async fn poll_and_drop_panic<P: HasProbe>(flow: P, acked: bool, what: &str) {
    quiet_panics();
    const N: u64 = 100;
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let failing = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
    let done = if acked {
        let (acker, done) = ack::channel::<u64>();
        within("feed", flow.acked().feed(stream::iter(0..N).map(move |x| (x, acker.ack(x))))).await.unwrap();
        Some(done)
    } else {
        within("feed", flow.feed(stream::iter(0..N))).await.unwrap();
        None
    };
    // Not `flush`: it never returns here (the test would only time out).
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let failures = within("failures", failing).await.unwrap();
    let m = flow.metrics();
    let p = m.stage("probe").unwrap();
    let failed: Vec<u64> = failures.iter().map(|f| input_of(&f.error().to_string())).collect();
    let drops = flow.lab().drops();
    let summary = format!(
        "{what}: probe received {}, processed {}, aborted {}, failed {}, queued {}; {} outputs; failures for {failed:?}; \
         futures made {}, dropped {}",
        p.received,
        p.processed,
        p.aborted,
        p.failed,
        p.queued,
        got.len(),
        flow.lab().made.load(Ordering::SeqCst),
        drops.values().sum::<u32>(),
    );
    assert_eq!(failed, [3], "{summary}\n{m}");
    assert_eq!(got, (0..N).filter(|&x| x != 3).collect::<Vec<_>>(), "{summary}\n{m}");
    assert_eq!((p.received, p.processed, p.failed, p.aborted, p.queued), (N, N, 1, 0, 0), "{summary}\n{m}");
    flow.lab().assert_dropped_once(0..N, what);
    if let Some(done) = done {
        let kinds = outcomes(done, N, what).await;
        for (x, kind) in kinds {
            assert_eq!(kind, if x == 3 { "failed" } else { "delivered" }, "{what}: the Ack of #{x}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_whose_poll_and_drop_both_panic_fails_only_its_item() {
    let plan = |x| if x == 3 { PollAndDropPanic } else { Pass };
    poll_and_drop_panic(Solo::start(Lab::new(plan)).await, false, "solo").await;
}

/// The same, on the one-item path of a `#[concurrency]` stage, with
/// acknowledgements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_whose_poll_and_drop_both_panic_fails_only_its_item_one_item_path() {
    let plan = |x| if x == 3 { PollAndDropPanic } else { Pass };
    poll_and_drop_panic(Conc::start(Lab::new(plan)).await, true, "concurrency(4)").await;
}

/// `abort` while an item's future is pending (plain, or with a `Drop` that
/// panics): the future is dropped once; the items before it are processed,
/// it and the rest are aborted; every `Ack` fires once, delivered for
/// exactly the outputs read, dropped for the rest, none failed.
async fn abort_while_pending<P: HasProbe>(flow: P, k: u64, n: u64, what: &str) {
    quiet_panics();
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let (acker, done) = ack::channel::<u64>();
    // Plain inputs too, between acknowledged ones.
    feed_acks(&flow, n, Acks::Mixed, &acker).await;
    drop(acker);
    eventually("the pending future", || flow.lab().hung() == [k]).await;
    flow.stop_now();
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let m = flow.metrics();
    assert_settled(&m, what);
    let p = m.stage("probe").unwrap();
    assert_eq!((p.processed, p.failed), (k, 0), "{what}: inputs before #{k} processed\n{m}");
    assert!(p.aborted >= 1, "{what}: #{k} aborted\n{m}");
    assert!(got.len() as u64 <= k && got.iter().copied().eq(0..got.len() as u64), "{what}: outputs {got:?}");
    flow.lab().assert_dropped_once(0..=k, what);
    let kinds = outcomes(done, (0..n).filter(|x| Acks::Mixed.acked(*x)).count() as u64, what).await;
    assert!(kinds.keys().all(|x| Acks::Mixed.acked(*x)), "{what}: Acks of acknowledged inputs only");
    for (x, kind) in kinds {
        let want = if (x as usize) < got.len() { "delivered" } else { "dropped" };
        assert_eq!(kind, want, "{what}: the Ack of #{x}\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_drops_a_pending_future_once() {
    for mode in [Hang, HangDropPanic] {
        let plan = move |x| if x == 100 { mode } else { Pass };
        let what = format!("{mode:?}");
        abort_while_pending(Solo::start(Lab::new(plan)).await, 100, 300, &format!("solo, {what}")).await;
        abort_while_pending(Chain::start(Lab::new(plan)).await, 100, 300, &format!("chain, {what}")).await;
        abort_while_pending(FusedIn::start(Lab::new(plan)).await, 100, 300, &format!("fused, {what}")).await;
        abort_while_pending(FusedAfter::start(Lab::new(plan)).await, 100, 300, &format!("fused after, {what}")).await;
        abort_while_pending(Conc::start(Lab::new(plan)).await, 100, 300, &format!("concurrency, {what}")).await;
        abort_while_pending(ConcFused::start(Lab::new(plan)).await, 100, 300, &format!("fused conc, {what}")).await;
        abort_while_pending(Rated::start(Lab::new(plan)).await, 100, 300, &format!("rate_limit, {what}")).await;
    }
}

/// Panics in `process` (before the future, in its poll, in its `Drop`) do
/// not count toward the restart limit (here `NEVER`): the state is kept
/// through the ~380 of them. A panic in `handle_call` does: past the limit the
/// stage stays down, its calls fail, and every later input fails with its
/// `Ack`, counted as processed and failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_limit_counts_handler_panics_not_process_panics() {
    quiet_panics();
    let plan = |x: u64| if x < 1000 { mixed(x) } else { Pass };
    restart_case(Chain::start(Lab::new(plan)).await, "unfused").await;
    restart_case(FusedIn::start(Lab::new(plan)).await, "fused").await;
    restart_case(Conc::start(Lab::new(plan)).await, "concurrency(4)").await;
}

async fn restart_case<P: HasProbe>(flow: P, what: &str) {
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let failing = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
    let (acker, done) = ack::channel::<u64>();
    let first = acker.clone();
    let sent = within("feed", flow.acked().feed(stream::iter(0..1000).map(move |x| (x, first.ack(x))))).await;
    assert_eq!(sent.unwrap(), 1000);
    within("flush", flow.flush()).await.unwrap();
    assert_eq!(within("seen", flow.call_seen()).await.unwrap(), 1000, "{what}: state kept through process panics");
    assert!(matches!(within("crash", flow.call_crash()).await, Err(CallError::Panicked)), "{what}: the crash call");
    assert!(matches!(within("seen", flow.call_seen()).await, Err(CallError::Failed(_))), "{what}: down for good");
    let sent = within("feed", flow.acked().feed(stream::iter(1000..1100).map(move |x| (x, acker.ack(x))))).await;
    assert_eq!(sent.unwrap(), 100);
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let failures = within("failures", failing).await.unwrap();
    let m = flow.metrics();
    assert_settled(&m, what);
    let modes: Vec<Mode> = (0..1000).map(mixed).collect();
    let want: Vec<u64> = (0..1000).filter(|&x| modes[x as usize].emits()).collect();
    assert_eq!(got, want, "{what}: outputs of the first 1000 only\n{m}");
    let fails = modes.iter().filter(|m| m.fails()).count() as u64;
    let p = m.stage("probe").unwrap();
    assert_eq!((p.received, p.processed, p.failed), (1100, 1100, fails + 100), "{what}\n{m}");
    let stopped = failures.iter().filter(|f| f.error().to_string().contains("stopped for good")).count();
    assert_eq!(stopped, 100, "{what}: the inputs after the stop fail as stopped\n{m}");
    flow.lab().assert_dropped_once((0..1000).filter(|&x| modes[x as usize].makes()), what);
    let kinds = outcomes(done, 1100, what).await;
    for (x, kind) in kinds {
        let want = if x >= 1000 || modes[x as usize].fails() { "failed" } else { "delivered" };
        assert_eq!(kind, want, "{what}: the Ack of #{x}");
    }
}

// ---------------------------------------------------------------------------
// 2. The emitter's threshold and its waits.

/// An input `(id << 32) | k` (bit 31 of `k`: yield first) emits `k` items,
/// `(id << 32) | i` for `i` in `0..k`.
const YIELD: u64 = 1 << 31;

fn burst_input(id: u64, k: u64, yield_first: bool) -> u64 {
    (id << 32) | k | if yield_first { YIELD } else { 0 }
}

fn burst_outputs(input: u64) -> impl Iterator<Item = u64> {
    let id = input >> 32;
    let k = input & (YIELD - 1);
    (0..k).map(move |i| (id << 32) | i)
}

#[genflow::stage]
async fn burst(x: u64, out: &mut Emitter<u64>) {
    if x & YIELD != 0 {
        tokio::task::yield_now().await;
    }
    for item in burst_outputs(x) {
        out.emit(item).await;
    }
}

#[genflow::pipeline{ burst: Burst<Bursts>, tail: Relay<Bursts> }]
struct Bursts;

#[genflow::pipeline{ burst: Burst<BurstsFused>, #[fused] tail: Relay<BurstsFused> }]
struct BurstsFused;

#[genflow::pipeline{ #[replicas(2, ordered)] burst: Burst<BurstsOrdered>, tail: Relay<BurstsOrdered> }]
struct BurstsOrdered;

/// Around one batch (32) and one hand-over (512), and twice each.
const FAN_OUTS: [u64; 15] = [1, 31, 32, 33, 63, 64, 65, 511, 512, 513, 1023, 1024, 1025, 0, 2];

/// Inputs `0..count`, cycling through [`FAN_OUTS`], every third one
/// yielding first.
fn burst_inputs(count: u64) -> Vec<u64> {
    (0..count).map(|id| burst_input(id, FAN_OUTS[id as usize % FAN_OUTS.len()], id % 3 == 1)).collect()
}

/// Feeds `inputs` (all at once, or one at a time with a `flush` after
/// each, checking that the outputs read then are every output so far),
/// shuts down, and checks the outputs in order and every count.
async fn run_bursts<P: Pipeline<In = u64, Out = u64>>(flow: P, inputs: &[u64], flushes: bool, what: &str) {
    let read = Arc::new(Mutex::new(Vec::new()));
    let reading = tokio::spawn({
        let read = read.clone();
        flow.output().unwrap().for_each(move |x| {
            read.lock().unwrap().push(x);
            async {}
        })
    });
    let want: Vec<u64> = inputs.iter().flat_map(|&x| burst_outputs(x)).collect();
    if flushes {
        let mut so_far = 0;
        for &input in inputs {
            within("send", flow.send(input)).await.unwrap();
            within("flush", flow.flush()).await.unwrap();
            so_far += burst_outputs(input).count();
            // Out of the pipeline once `flush` returns: read by now, or soon.
            eventually(&format!("{what}: the outputs of {input:#x}"), || read.lock().unwrap().len() >= so_far).await;
            let read = read.lock().unwrap();
            assert!(read[..] == want[..so_far], "{what}: outputs after the flush of {input:#x}");
        }
    } else {
        assert_eq!(within("feed", flow.feed(stream::iter(inputs.to_vec()))).await.unwrap(), inputs.len());
    }
    within("shutdown", flow.shutdown()).await;
    within("output", reading).await.unwrap();
    let got = read.lock().unwrap().clone();
    let m = flow.metrics();
    assert_eq!(got.len(), want.len(), "{what}: output length\n{m}");
    assert!(got == want, "{what}: outputs, in order\n{m}");
    assert_settled(&m, what);
    let total = want.len() as u64;
    let b = m.stage("burst").unwrap();
    let n = inputs.len() as u64;
    assert_eq!((b.received, b.processed, b.emitted, b.dropped, b.aborted), (n, n, total, 0, 0), "{what}: burst\n{m}");
    let t = m.stage("tail").unwrap();
    assert_eq!((t.received, t.processed, t.emitted, t.dropped), (total, total, total, 0), "{what}: tail\n{m}");
    for s in m.stages() {
        assert_eq!(s.failures_blocked, Duration::ZERO, "{what}, {}: nothing failed\n{m}", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_outs_around_batch_and_hand_over_sizes() {
    let inputs = burst_inputs(45);
    for flushes in [false, true] {
        for queue in [None, Some(1), Some(16), Some(33), Some(513)] {
            let what = format!("queue {queue:?}, flushes {flushes}");
            let flow = match queue {
                None => Bursts::start().await,
                Some(q) => Bursts::builder().queue_size("tail", q).start().await.unwrap(),
            };
            run_bursts(flow, &inputs, flushes, &format!("unfused, {what}")).await;
            let flow = match queue {
                None => BurstsFused::start().await,
                Some(q) => BurstsFused::builder().queue_size("tail", q).start().await.unwrap(),
            };
            run_bursts(flow, &inputs, flushes, &format!("fused, {what}")).await;
            let flow = match queue {
                None => BurstsOrdered::start().await,
                Some(q) => BurstsOrdered::builder().queue_size("tail", q).start().await.unwrap(),
            };
            run_bursts(flow, &inputs, flushes, &format!("ordered, {what}")).await;
            let flow = match queue {
                None => Bursts::builder().max_demand("burst", 1).start().await.unwrap(),
                Some(q) => Bursts::builder().max_demand("burst", 1).queue_size("tail", q).start().await.unwrap(),
            };
            run_bursts(flow, &inputs, flushes, &format!("unfused, max_demand 1, {what}")).await;
        }
    }
}

/// A slow reader of the output: the last stage waits for room, shown in
/// its `blocked` while it lasts (a snapshot taken during the stall shows
/// it), and none of it is `failures_blocked`. Fused, the stage before the
/// last (in its group) shows no `blocked` time: the wait after the group is
/// charged to its last stage.
async fn slow_reader<P: Pipeline<In = u64, Out = u64>>(flow: P, fused: bool, what: &str) {
    let stall = Duration::from_millis(60);
    let mut output = flow.output().unwrap();
    // 1025 outputs: more than the output's room and the tail's queue.
    let input = burst_input(7, 1025, false);
    within("send", flow.send(input)).await.unwrap();
    eventually(&format!("{what}: the tail blocked a while"), || flow.metrics().stage("tail").unwrap().blocked >= stall)
        .await;
    let m = flow.metrics();
    for s in m.stages() {
        assert_eq!(s.failures_blocked, Duration::ZERO, "{what}, {}: no failure waits\n{m}", s.name);
    }
    if fused {
        assert_eq!(m.stage("burst").unwrap().blocked, Duration::ZERO, "{what}: the group's wait is the tail's\n{m}");
    }
    let mut got = Vec::new();
    while got.len() < 1025 {
        got.push(within("read", output.next()).await.unwrap());
    }
    within("shutdown", flow.shutdown()).await;
    assert_eq!(within("end of output", output.next()).await, None);
    assert!(got.iter().copied().eq(burst_outputs(input)), "{what}: outputs in order");
    let m = flow.metrics();
    assert_settled(&m, what);
    let t = m.stage("tail").unwrap();
    assert!(t.blocked >= stall, "{what}: the stall is kept in `blocked`\n{m}");
    for s in m.stages() {
        assert_eq!(s.failures_blocked, Duration::ZERO, "{what}, {}: no failure waits\n{m}", s.name);
    }
    if fused {
        assert_eq!(m.stage("burst").unwrap().blocked, Duration::ZERO, "{what}: the group's wait is the tail's\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_behind_a_slow_output_reader() {
    slow_reader(Bursts::builder().queue_size("tail", 4).start().await.unwrap(), false, "unfused").await;
    slow_reader(BurstsFused::builder().queue_size("tail", 4).start().await.unwrap(), true, "fused").await;
    slow_reader(BurstsOrdered::builder().queue_size("tail", 4).start().await.unwrap(), false, "ordered").await;
}

/// Every input fails; `failures()` is taken and read only once the probe
/// has waited for room in the failures buffer a while: that wait counts in
/// `failures_blocked` and in `blocked`, live and once done; no failure is
/// lost or dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_blocked_behind_a_slow_failures_reader() {
    quiet_panics();
    let stall = Duration::from_millis(60);
    let n = genflow::pipeline::FAILURES_BUFFER as u64 + 300;
    let plan = |x: u64| if x % 2 == 0 { Fail } else { PollPanic };
    for fused in [false, true] {
        let what = if fused { "fused probe" } else { "chain" };
        let flow: Box<dyn Fn() -> BoxFuture<'static, Box<dyn ErasedFlow>>> = if fused {
            Box::new(move || {
                Box::pin(async move { Box::new(FusedIn::start(Lab::new(plan)).await) as Box<dyn ErasedFlow> })
            })
        } else {
            Box::new(move || {
                Box::pin(async move { Box::new(Chain::start(Lab::new(plan)).await) as Box<dyn ErasedFlow> })
            })
        };
        let flow = flow().await;
        let reading = tokio::spawn(flow.output().collect::<Vec<u64>>());
        let failures = flow.failures();
        assert_eq!(within("feed", flow.feed((0..n).collect())).await, n as usize);
        eventually(&format!("{what}: the probe waits for room for its failures"), || {
            flow.metrics().stage("probe").unwrap().failures_blocked >= stall
        })
        .await;
        let m = flow.metrics();
        let p = m.stage("probe").unwrap();
        assert!(p.blocked >= p.failures_blocked, "{what}: failures_blocked is part of blocked\n{m}");
        let failing = tokio::spawn(failures.collect::<Vec<_>>());
        within("shutdown", flow.shutdown()).await;
        let got = within("output", reading).await.unwrap();
        let failures = within("failures", failing).await.unwrap();
        let m = flow.metrics();
        assert_settled(&m, what);
        assert_eq!(m.failures_dropped(), 0, "{what}: no failure dropped\n{m}");
        assert_eq!(failures.len() as u64, n, "{what}: every failure delivered\n{m}");
        assert_eq!(got, (0..n).step_by(2).collect::<Vec<_>>(), "{what}: outputs\n{m}");
        let p = m.stage("probe").unwrap();
        assert_eq!((p.received, p.processed, p.failed), (n, n, n), "{what}\n{m}");
        assert!(p.failures_blocked >= stall, "{what}: the wait kept in failures_blocked\n{m}");
        assert!(p.blocked >= p.failures_blocked, "{what}: failures_blocked is part of blocked\n{m}");
        for s in m.stages().iter().filter(|s| s.name != "probe") {
            assert_eq!(s.failures_blocked, Duration::ZERO, "{what}, {}: fails nothing\n{m}", s.name);
        }
    }
}

/// A pipeline, as a trait object (a test picks one of several).
trait ErasedFlow: Send + Sync {
    fn output(&self) -> futures::stream::BoxStream<'static, u64>;
    fn failures(&self) -> futures::stream::BoxStream<'static, genflow::Failure>;
    fn feed(&self, items: Vec<u64>) -> BoxFuture<'_, usize>;
    fn shutdown(&self) -> BoxFuture<'_, ()>;
    fn metrics(&self) -> Metrics;
}

impl<P: Pipeline<In = u64, Out = u64>> ErasedFlow for P {
    fn output(&self) -> futures::stream::BoxStream<'static, u64> {
        Pipeline::output(self).unwrap().boxed()
    }
    fn failures(&self) -> futures::stream::BoxStream<'static, genflow::Failure> {
        Pipeline::failures(self).unwrap().boxed()
    }
    fn feed(&self, items: Vec<u64>) -> BoxFuture<'_, usize> {
        Box::pin(async move { Pipeline::feed(self, stream::iter(items)).await.map_err(|_| "closed").unwrap() })
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(Pipeline::shutdown(self))
    }
    fn metrics(&self) -> Metrics {
        Pipeline::metrics(self)
    }
}

// `partition_by` stages whose key function panics.

/// Items `x % 4 == 3` have no key (it panics); the others go by `x % 4`.
fn key4(x: &u64) -> u64 {
    if *x % 4 == 3 {
        panic!("{MARK}: no key for #{x}");
    }
    *x % 4
}

#[genflow::pipeline{ head: Relay<Keyed>, #[replicas(2, partition_by = key4)] keyed: Relay<Keyed> }]
struct Keyed;

#[genflow::pipeline{ #[replicas(2, ordered)] head: Relay<KeyedOrdered>, #[replicas(2, partition_by = key4)] keyed: Relay<KeyedOrdered> }]
struct KeyedOrdered;

#[genflow::pipeline{ head: Burst<KeyedBursts>, #[replicas(2, partition_by = key4)] keyed: Relay<KeyedBursts> }]
struct KeyedBursts;

/// Checks a keyed pipeline's outputs (each key's in order), counts,
/// failures (one per keyless item, at `keyed`, replica 0, a panic) and,
/// with `done`, every `Ack`.
async fn check_keyed(
    m: &Metrics,
    inputs: &[u64],
    got: &[u64],
    failures: &[genflow::Failure],
    done: Option<ack::Acknowledgements<u64>>,
    what: &str,
) {
    assert_settled(m, what);
    let keyless: Vec<u64> = inputs.iter().copied().filter(|x| x % 4 == 3).collect();
    let n = inputs.len() as u64;
    let k = keyless.len() as u64;
    for key in 0..3 {
        let of_key = |x: &&u64| **x % 4 == key;
        let got: Vec<u64> = got.iter().filter(of_key).copied().collect();
        let want: Vec<u64> = inputs.iter().filter(of_key).copied().collect();
        assert!(got == want, "{what}: the outputs of key {key}, in order\n{m}");
    }
    assert_eq!(got.len() as u64, n - k, "{what}: outputs\n{m}");
    let keyed = m.stage("keyed").unwrap();
    assert_eq!(
        (keyed.received, keyed.processed, keyed.failed, keyed.emitted),
        (n, n, k, n - k),
        "{what}: keyed (received, processed, failed, emitted)\n{m}"
    );
    let mut failed: Vec<u64> = failures.iter().map(|f| input_of(&f.error().to_string())).collect();
    failed.sort_unstable();
    let mut want_failed = keyless.clone();
    want_failed.sort_unstable();
    assert_eq!(failed, want_failed, "{what}: one failure per keyless item\n{m}");
    assert!(failures.iter().all(|f| f.stage() == "keyed" && f.replica() == 0 && f.is_panic()), "{what}");
    if let Some(done) = done {
        let kinds = outcomes(done, n, what).await;
        for (x, kind) in kinds {
            assert_eq!(kind, if x % 4 == 3 { "failed" } else { "delivered" }, "{what}: the Ack of #{x}");
        }
    }
}

/// Key functions that panic while the keyed stage's queues are full (a
/// queue of 1 per replica), from a plain stage, an `ordered` one and a
/// stage fanning out bursts, with and without acknowledgements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_panic_while_the_next_queue_is_full() {
    quiet_panics();
    let inputs: Vec<u64> = (0..3000).collect();
    for acked in [false, true] {
        for ordered in [false, true] {
            let what = format!("ordered head {ordered}, acked {acked}");
            let flow: Box<dyn ErasedAcked> = if ordered {
                Box::new(KeyedOrdered::builder().queue_size("keyed", 1).start().await.unwrap())
            } else {
                Box::new(Keyed::builder().queue_size("keyed", 1).start().await.unwrap())
            };
            let reading = tokio::spawn(flow.output().collect::<Vec<u64>>());
            let failing = tokio::spawn(flow.failures().collect::<Vec<_>>());
            let done = if acked {
                let (acker, done) = ack::channel::<u64>();
                assert_eq!(within("feed", flow.feed_acked(inputs.clone(), acker)).await, inputs.len());
                Some(done)
            } else {
                assert_eq!(within("feed", flow.feed(inputs.clone())).await, inputs.len());
                None
            };
            within("shutdown", flow.shutdown()).await;
            let got = within("output", reading).await.unwrap();
            let failures = within("failures", failing).await.unwrap();
            let m = flow.metrics();
            check_keyed(&m, &inputs, &got, &failures, done, &what).await;
            let head = m.stage("head").unwrap();
            assert_eq!(head.emitted, inputs.len() as u64, "{what}: every item emitted by the head\n{m}");
        }
    }
    // A head that emits 1025 items per input (in batches of 32), into
    // queues of 1.
    let flow = KeyedBursts::builder().queue_size("keyed", 1).start().await.unwrap();
    let reading = tokio::spawn(Pipeline::output(&flow).unwrap().collect::<Vec<u64>>());
    let failing = tokio::spawn(Pipeline::failures(&flow).unwrap().collect::<Vec<_>>());
    let bursts = [burst_input(0, 1025, false), burst_input(1, 33, true), burst_input(2, 512, false)];
    within("feed", flow.feed(stream::iter(bursts))).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let failures = within("failures", failing).await.unwrap();
    let outputs: Vec<u64> = bursts.iter().flat_map(|&x| burst_outputs(x)).collect();
    check_keyed(&flow.metrics(), &outputs, &got, &failures, None, "bursts").await;
}

/// A pipeline with acknowledged feeds, as a trait object.
trait ErasedAcked: ErasedFlow {
    fn feed_acked(&self, items: Vec<u64>, acker: ack::Acker<u64>) -> BoxFuture<'_, usize>;
}

impl<P: Pipeline<In = u64, Out = u64>> ErasedAcked for P {
    fn feed_acked(&self, items: Vec<u64>, acker: ack::Acker<u64>) -> BoxFuture<'_, usize> {
        Box::pin(async move {
            let items = stream::iter(items).map(move |x| (x, acker.ack(x)));
            self.acked().feed(items).await.map_err(|_| "closed").unwrap()
        })
    }
}

/// Key functions that panic while the failures buffer is full: the
/// emitting stage waits for room for each such failure; that wait counts
/// in its `failures_blocked` and `blocked` (the docs: `failures_blocked`
/// is the part of `blocked` spent waiting for room in the failures
/// buffer), and no failure is lost.
async fn keyless_behind_a_full_failures_buffer(flow: Box<dyn ErasedAcked>, what: &str) {
    quiet_panics();
    let stall = Duration::from_millis(100);
    // Half the items are keyless: more failures than the buffer holds.
    let n = 4 * (genflow::pipeline::FAILURES_BUFFER as u64 + 200);
    let inputs: Vec<u64> = (0..n).map(|i| if i % 2 == 1 { 4 * i + 3 } else { 4 * i + (i / 2) % 3 }).collect();
    let reading = tokio::spawn(flow.output().collect::<Vec<u64>>());
    let failures = flow.failures();
    // The feed waits too (backpressure), until the failures are read.
    let feeding = within("feed", flow.feed(inputs.clone()));
    let watching = async {
        // The keyed stage keeps up (nothing is slow but the failures'
        // reader): a head blocked this long waits for room for failures.
        eventually(&format!("{what}: the head stalled"), || flow.metrics().stage("head").unwrap().blocked >= stall)
            .await;
        let during = flow.metrics();
        (during, tokio::spawn(failures.collect::<Vec<_>>()))
    };
    let (sent, (during, failing)) = tokio::join!(feeding, watching);
    assert_eq!(sent, n as usize);
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let failures = within("failures", failing).await.unwrap();
    let m = flow.metrics();
    assert_eq!(m.failures_dropped(), 0, "{what}: no failure dropped\n{m}");
    check_keyed(&m, &inputs, &got, &failures, None, what).await;
    let head = m.stage("head").unwrap();
    let live = during.stage("head").unwrap();
    let shown = format!(
        "head while stalled: blocked {:?}, failures_blocked {:?}; after shutdown: blocked {:?}, failures_blocked {:?}",
        live.blocked, live.failures_blocked, head.blocked, head.failures_blocked
    );
    assert!(
        live.failures_blocked > Duration::ZERO,
        "{what}: while stalled on the failures buffer, failures_blocked shows the wait: {shown}\n{during}"
    );
    assert!(
        head.failures_blocked >= stall / 4 && head.blocked >= head.failures_blocked,
        "{what}: failures_blocked holds the wait for room for failures: {shown}\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_panic_while_the_failures_buffer_is_full() {
    keyless_behind_a_full_failures_buffer(Box::new(Keyed::start().await), "plain head").await;
}

/// The same through an `ordered` head, whose sends go through the
/// reorder point: after the send, the head's `failures_blocked` holds the
/// wait for room for a keyless item's failure (as `blocked` does). Known
/// limit, hence ignored: while the send waits, an `ordered` stage shows
/// the wait as `blocked` only; `failures_blocked` shows it once the send
/// is done (a plain head shows both as the wait lasts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an ordered stage shows failures_blocked only once its send is done"]
async fn keys_that_panic_while_the_failures_buffer_is_full_ordered_head() {
    keyless_behind_a_full_failures_buffer(Box::new(KeyedOrdered::start().await), "ordered head").await;
}

// ---------------------------------------------------------------------------
// 3. `feed`: chunks of up to 512, ready items only.

#[genflow::pipeline{ a: Relay<Relays>, b: Relay<Relays> }]
struct Relays;

#[genflow::pipeline{ a: Relay<RelaysFused>, #[fused] b: Relay<RelaysFused> }]
struct RelaysFused;

/// Items `x % 1000 == 999` have no key (it panics); the others go by `x % 3`.
fn key3(x: &u64) -> u64 {
    if *x % 1000 == 999 {
        panic!("{MARK}: no key for #{x}");
    }
    *x % 3
}

#[genflow::pipeline{ #[replicas(2, partition_by = key3)] a: Relay<KeyedFirst>, b: Relay<KeyedFirst> }]
struct KeyedFirst;

#[genflow::pipeline{ probe: Probe<GatedFeed>, tail: Relay<GatedFeed> }]
struct GatedFeed {
    lab: Arc<Lab>,
}

labbed!(GatedFeed);

/// An item fed from a stream whose items come one at a time reaches the
/// output (and its `Ack` fires) before the next one exists: `feed` does
/// not wait to fill a chunk.
async fn slow_stream<P: Pipeline<In = u64, Out = u64>>(flow: P, acked: bool, what: &str) {
    let mut output = flow.output().unwrap();
    let (tx, rx) = mpsc::channel::<u64>(1);
    let (acker, mut done) = ack::channel::<u64>();
    let feeding = tokio::spawn({
        let flow = flow.clone();
        async move {
            if acked {
                flow.acked().feed(ReceiverStream::new(rx).map(move |x| (x, acker.ack(x)))).await.map_err(|_| "closed")
            } else {
                flow.feed(ReceiverStream::new(rx)).await.map_err(|_| "closed")
            }
        }
    });
    for x in 0..40u64 {
        let x = x * 7;
        within("send", tx.send(x)).await.unwrap();
        assert_eq!(within(&format!("{what}: output {x}"), output.next()).await, Some(x), "{what}");
        if acked {
            let (key, outcome) = within(&format!("{what}: the Ack of {x}"), done.next()).await.unwrap();
            assert_eq!((key, outcome.kind()), (x, "delivered"), "{what}");
        }
    }
    drop(tx);
    assert_eq!(within("feed", feeding).await.unwrap(), Ok(40), "{what}: the feed ends with its stream");
    within("shutdown", flow.shutdown()).await;
    assert_eq!(within("end of output", output.next()).await, None);
    let m = flow.metrics();
    assert_settled(&m, what);
    assert_eq!(m.stage("a").unwrap().received, 40, "{what}\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_from_a_slow_stream_passes_each_item_on_at_once() {
    for acked in [false, true] {
        slow_stream(Relays::start().await, acked, &format!("unfused, acked {acked}")).await;
        slow_stream(RelaysFused::start().await, acked, &format!("fused, acked {acked}")).await;
        slow_stream(KeyedFirst::start().await, acked, &format!("partition_by, acked {acked}")).await;
        let flow = Relays::builder().queue_size("a", 1).start().await.unwrap();
        slow_stream(flow, acked, &format!("queue of 1, acked {acked}")).await;
    }
}

/// Producer `p`'s item number `i`.
fn tagged(p: u64, i: u64) -> u64 {
    (p << 40) | i
}

/// Four producers at once into one queue (of `q`): a feed of a ready
/// stream, a feed of a channel whose items come in bursts, a sink, and an
/// acknowledged feed. Every item comes out once, each producer's in order.
async fn senders_at_once<P: Pipeline<In = u64, Out = u64>>(
    flow: P,
    mut sink: genflow::InputSink<u64>,
    q: u64,
    what: &str,
) {
    const EACH: u64 = 3000;
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let (acker, done) = ack::channel::<u64>();
    let ready = flow.feed(stream::iter((0..EACH).map(|i| tagged(0, i))));
    let (tx, rx) = mpsc::channel::<u64>(100);
    let bursts = async {
        for i in 0..EACH {
            tx.send(tagged(1, i)).await.unwrap();
            if i % 97 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(tx);
    };
    let channel = flow.feed(ReceiverStream::new(rx));
    let sink = async {
        for i in 0..EACH {
            sink.send(tagged(2, i)).await.map_err(|_| "closed").unwrap();
        }
    };
    let input = flow.acked();
    let acked = input.feed(stream::iter((0..EACH).map(move |i| (tagged(3, i), acker.ack(tagged(3, i))))));
    let (ready, (), channel, (), acked) =
        within("senders", async { tokio::join!(ready, bursts, channel, sink, acked) }).await;
    assert_eq!(
        (ready.map_err(|_| ()), channel.map_err(|_| ()), acked.map_err(|_| ())),
        (Ok(EACH as usize), Ok(EACH as usize), Ok(EACH as usize)),
        "{what}"
    );
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let m = flow.metrics();
    assert_settled(&m, what);
    assert_eq!(got.len() as u64, 4 * EACH, "{what}: every item once\n{m}");
    for p in 0..4 {
        let mine: Vec<u64> = got.iter().copied().filter(|x| x >> 40 == p).collect();
        assert!(
            mine.iter().copied().eq((0..EACH).map(|i| tagged(p, i))),
            "{what}: producer {p}'s items, once, in order"
        );
    }
    let a = m.stage("a").unwrap();
    assert_eq!((a.received, a.capacity), (4 * EACH, q), "{what}\n{m}");
    let kinds = outcomes(done, EACH, what).await;
    assert!(kinds.values().all(|k| *k == "delivered"), "{what}: acknowledged items delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_into_queues_of_1_16_1000_beside_other_senders() {
    for q in [1u64, 16, 1000] {
        let flow = Relays::builder().queue_size("a", q as usize).start().await.unwrap();
        let sink = flow.sink();
        senders_at_once(flow, sink, q, &format!("unfused, queue {q}")).await;
        let flow = RelaysFused::builder().queue_size("a", q as usize).start().await.unwrap();
        let sink = flow.sink();
        senders_at_once(flow, sink, q, &format!("fused, queue {q}")).await;
    }
}

/// A feed into a queue the stage does not empty (its first item waits):
/// the queue fills up to its capacity, never past it, and the feed waits;
/// let go, every item comes out in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_fills_a_stalled_queue_to_its_capacity_and_no_further() {
    for q in [1usize, 16, 511, 512, 513, 1000] {
        let what = format!("queue {q}");
        let flow = GatedFeed::builder(Lab::new(|x| if x == 0 { Gate } else { Pass })).queue_size("probe", q).start();
        let flow = flow.await.unwrap();
        let n = 2 * q as u64 + 600;
        let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
        let mut over = None;
        let feeding = flow.feed(stream::iter(0..n));
        let watching = async {
            eventually(&format!("{what}: the queue full"), || {
                let p = flow.metrics().stage("probe").unwrap();
                if p.queued > p.capacity {
                    over = Some((p.queued, p.capacity));
                }
                // Once its first batch is taken, the probe waits on item
                // 0 and takes no more: the queue stays as it is.
                p.received > 0 && p.queued == p.capacity
            })
            .await;
            // Still full: the item in `process` waits.
            let p = flow.metrics().stage("probe").unwrap();
            assert_eq!((p.queued, p.capacity, p.processed), (q as u64, q as u64, 0), "{what}");
            assert!(p.received + p.queued < n, "{what}: the feed waits\n{}", flow.metrics());
            flow.lab().gate.add_permits(1);
        };
        let (sent, ()) = within("feed", async { tokio::join!(feeding, watching) }).await;
        assert_eq!(sent.map_err(|_| ()), Ok(n as usize), "{what}");
        assert_eq!(over, None, "{what}: queued never above capacity");
        within("shutdown", flow.shutdown()).await;
        let got = within("output", reading).await.unwrap();
        assert!(got.iter().copied().eq(0..n), "{what}: every item in order");
        assert_settled(&flow.metrics(), &what);
    }
}

/// A feed into a `partition_by` first stage: each key's order is kept; an
/// item whose key panics comes back in `KeyPanicked` and the rest stays in
/// the stream (here: the next item is still there), with its `Ack`, which
/// has not fired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_into_a_partition_by_stage() {
    quiet_panics();
    for (acked, queue) in [(false, None), (true, None), (false, Some(1)), (true, Some(1))] {
        let what = format!("acked {acked}, queue {queue:?}");
        let flow = match queue {
            None => KeyedFirst::start().await,
            Some(q) => KeyedFirst::builder().queue_size("a", q).start().await.unwrap(),
        };
        let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
        let failing = tokio::spawn(flow.failures().unwrap().collect::<Vec<_>>());
        let (acker, done) = ack::channel::<u64>();
        if acked {
            let mut items = stream::iter(0..1500u64).map(|x| (x, acker.ack(x)));
            let refused = within("feed", flow.acked().feed(&mut items)).await.unwrap_err();
            let SendError::KeyPanicked { message: (x, ack), panic } = refused else { panic!("{what}: {refused:?}") };
            assert_eq!(x, 999, "{what}");
            assert!(panic.message().contains("no key for #999"), "{what}: {panic:?}");
            let (next, next_ack) = items.next().await.unwrap();
            assert_eq!(next, 1000, "{what}: the rest stays in the stream");
            within("send", flow.acked().send(next, next_ack)).await.unwrap();
            drop(ack);
            assert_eq!(within("feed the rest", flow.acked().feed(items)).await.unwrap(), 499, "{what}");
        } else {
            let mut items = stream::iter(0..1500u64);
            let refused = within("feed", flow.feed(&mut items)).await.unwrap_err();
            let SendError::KeyPanicked { message: x, .. } = refused else { panic!("{what}: {refused:?}") };
            assert_eq!(x, 999, "{what}");
            assert_eq!(items.next().await, Some(1000), "{what}: the rest stays in the stream");
            within("send", flow.send(1000)).await.unwrap();
            assert_eq!(within("feed the rest", flow.feed(items)).await.unwrap(), 499, "{what}");
        }
        drop(acker);
        within("shutdown", flow.shutdown()).await;
        let got = within("output", reading).await.unwrap();
        let failures = within("failures", failing).await.unwrap();
        let m = flow.metrics();
        assert_settled(&m, &what);
        assert!(failures.is_empty(), "{what}: a refused item is no failure");
        for key in 0..3 {
            let mine: Vec<u64> = got.iter().copied().filter(|x| x % 3 == key).collect();
            let want: Vec<u64> = (0..1500).filter(|x| x % 3 == key && *x != 999).collect();
            assert!(mine == want, "{what}: key {key}'s items once, in order\n{m}");
        }
        assert_eq!(m.stage("a").unwrap().received, 1499, "{what}\n{m}");
        if acked {
            let kinds = outcomes(done, 1500, &what).await;
            for (x, kind) in kinds {
                assert_eq!(kind, if x == 999 { "dropped" } else { "delivered" }, "{what}: the Ack of #{x}");
            }
        }
    }
}

/// `shutdown` while a feed waits for room: the feed returns `Closed`
/// with the item in hand (its `Ack` not fired), the rest stays in the
/// stream, and every item accepted before goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_in_the_middle_of_a_feed() {
    for (acked, q) in [(false, 4), (true, 4), (false, 1), (true, 600)] {
        let what = format!("acked {acked}, queue {q}");
        let flow = GatedFeed::builder(Lab::new(|x| if x == 0 { Gate } else { Pass })).queue_size("probe", q).start();
        let flow = flow.await.unwrap();
        let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
        let (acker, mut done) = ack::channel::<u64>();
        let closing = async {
            eventually(&format!("{what}: the queue full"), || {
                let p = flow.metrics().stage("probe").unwrap();
                // The probe waits on item 0, the first of its batch.
                p.received > 0 && p.queued == p.capacity
            })
            .await;
            let shutting = tokio::spawn({
                let flow = flow.clone();
                async move { flow.shutdown().await }
            });
            within("the input closed", flow.acked().closed()).await;
            // (Not the handle itself: an async block yielding a future.)
            Some(shutting)
        };
        let (k, rest_next) = if acked {
            let mut items = stream::iter(0..5000u64).map(|x| (x, acker.ack(x)));
            let input = flow.acked();
            let (refused, shutting) = tokio::join!(within("feed", input.feed(&mut items)), closing);
            let SendError::Closed((k, ack)) = refused.unwrap_err() else { panic!("{what}: not Closed") };
            assert!(done.next().now_or_never().is_none(), "{what}: no Ack fired yet, #{k}'s neither");
            flow.lab().gate.add_permits(1);
            within("shutdown", shutting.unwrap()).await.unwrap();
            let next = items.next().await.map(|(x, _)| x);
            drop(ack);
            (k, next)
        } else {
            let mut items = stream::iter(0..5000u64);
            let (refused, shutting) = tokio::join!(within("feed", flow.feed(&mut items)), closing);
            let SendError::Closed(k) = refused.unwrap_err() else { panic!("{what}: not Closed") };
            flow.lab().gate.add_permits(1);
            within("shutdown", shutting.unwrap()).await.unwrap();
            (k, items.next().await)
        };
        drop(acker);
        assert_eq!(rest_next, Some(k + 1), "{what}: the rest stays in the stream");
        let got = within("output", reading).await.unwrap();
        let m = flow.metrics();
        assert_settled(&m, &what);
        assert!(got.iter().copied().eq(0..k), "{what}: the items accepted, #{k} refused: {got:?}\n{m}");
        assert_eq!(m.stage("probe").unwrap().received, k, "{what}\n{m}");
        if acked {
            // Items 0..k delivered, k dropped (its Ack dropped by the test),
            // k + 1's Ack made and dropped by the test: dropped.
            let kinds = outcomes(done, k + 2, &what).await;
            for (x, kind) in kinds {
                assert_eq!(kind, if x < k { "delivered" } else { "dropped" }, "{what}: the Ack of #{x}");
            }
        }
    }
}

/// A stream that counts its polls after it returned `None` (as a stream
/// that may not be polled again, `stream::unfold`'s for one, would panic).
struct Strict {
    items: std::vec::IntoIter<u64>,
    ended: bool,
    polled_after_end: Arc<AtomicU64>,
}

impl futures::Stream for Strict {
    type Item = u64;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<u64>> {
        if self.ended {
            self.polled_after_end.fetch_add(1, Ordering::SeqCst);
            return Poll::Ready(None);
        }
        let next = self.items.next();
        self.ended = next.is_none();
        Poll::Ready(next)
    }
}

/// `feed` never polls its stream again after the stream returned `None`,
/// also when it ends while `feed` takes its ready items (the `Stream`
/// contract leaves a poll after the end unspecified, and common streams
/// panic: `futures::stream::unfold` does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_never_polls_a_stream_after_its_end() {
    let flow = Relays::start().await;
    let reading = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let polled_after_end = Arc::new(AtomicU64::new(0));
    let strict = Strict {
        items: (0..5).collect::<Vec<_>>().into_iter(),
        ended: false,
        polled_after_end: polled_after_end.clone(),
    };
    let strict_fed = within("feed", flow.feed(strict)).await.map_err(|_| ());
    let unfold = stream::unfold(5u64, |n| async move { (n < 10).then_some((n, n + 1)) });
    let unfold_fed = within(
        "feed",
        tokio::spawn({
            let flow = flow.clone();
            async move { flow.feed(unfold).await.map_err(|_| ()) }
        }),
    )
    .await;
    let unfold_fed = unfold_fed.map_err(|e| {
        let panic = e.into_panic();
        panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned())
    });
    within("shutdown", flow.shutdown()).await;
    let got = within("output", reading).await.unwrap();
    let after_end = polled_after_end.load(Ordering::SeqCst);
    assert!(
        strict_fed == Ok(5) && after_end == 0 && unfold_fed == Ok(Ok(5)) && got == (0..10).collect::<Vec<_>>(),
        "a stream of 5 ready items: fed {strict_fed:?}, polled {after_end} time(s) after its end; \
         an unfold stream of 5: fed {unfold_fed:?}; outputs {got:?}"
    );
}
