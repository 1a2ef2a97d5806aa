//! What a soak case is made of: the generator flags, the random plan drawn
//! from a seed, the items, the per-item decisions every stage takes, and the
//! sequential model that says what a pipeline must produce.

use std::{fmt, sync::Mutex};

/// Optional shapes the generator may produce (all on unless
/// `GENFLOW_SOAK_SHAPES` narrows them): each exercises a way servers can
/// wait on each other or a bound can be extreme.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Shapes {
    /// A stage calls or casts to its own stage (with replicas: a sibling).
    pub(crate) self_calls: bool,
    /// Workers of the server registry call each other in cycles; such calls
    /// are expected to return an error, never to hang.
    pub(crate) cycles: bool,
    /// A replicated stage casts into a stage whose mailbox holds one message.
    pub(crate) tiny_mailbox_casts: bool,
    /// Queue sizes close to `usize::MAX`.
    pub(crate) huge_queues: bool,
    /// Outside calls and casts still running when the pipeline is aborted
    /// (each must end, answered or with an error); off: they are done
    /// before `abort`.
    pub(crate) calls_racing_abort: bool,
}

impl Shapes {
    /// The shapes switched on by `GENFLOW_SOAK_SHAPES` (a comma-separated
    /// list of flag names, `all`, or `none`); every shape when it is not set.
    pub(crate) fn from_env() -> Shapes {
        let list = std::env::var("GENFLOW_SOAK_SHAPES").unwrap_or_else(|_| "all".to_owned());
        let on = |name: &str| list.split(',').any(|f| f.trim() == name || f.trim() == "all");
        Shapes {
            self_calls: on("self_calls"),
            cycles: on("cycles"),
            tiny_mailbox_casts: on("tiny_mailbox_casts"),
            huge_queues: on("huge_queues"),
            calls_racing_abort: on("calls_racing_abort"),
        }
    }
}

/// A small deterministic hash (splitmix64's finaliser).
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What flows through every soak pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Item {
    /// The index of the input this item descends from.
    pub(crate) origin: u32,
    /// The partition key, kept by every descendant.
    pub(crate) key: u32,
    /// Identifies the item among its input's descendants.
    pub(crate) lineage: u64,
}

impl Item {
    /// The `partition_by` key.
    pub(crate) fn key(&self) -> u32 {
        self.key
    }

    /// Input number `origin`, keyed into `keys` keys.
    pub(crate) fn input(seed: u64, origin: u32, keys: u32) -> Item {
        Item { origin, key: (mix(seed ^ u64::from(origin)) % u64::from(keys)) as u32, lineage: u64::from(origin) }
    }

    /// The `j`-th item emitted for this one by the stage at `pos`.
    pub(crate) fn child(&self, pos: usize, j: u64) -> Item {
        Item { lineage: mix(self.lineage ^ (j + 1).wrapping_mul(0x1000_0001) ^ ((pos as u64) << 48)), ..self.clone() }
    }
}

/// How a pipeline declaration replicates one of its stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Single,
    Replicas(usize),
    Ordered(usize),
    Partitioned(usize),
}

impl Mode {
    pub(crate) fn replicas(self) -> usize {
        match self {
            Mode::Single => 1,
            Mode::Replicas(n) | Mode::Ordered(n) | Mode::Partitioned(n) => n,
        }
    }
}

/// What order a pipeline's output must keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// Exactly the model's order.
    Exact,
    /// The model's order among the items of each key.
    PerKey,
    /// Only the same items.
    Any,
}

pub(crate) fn order_of(modes: &[Mode]) -> Order {
    if modes.iter().all(|m| matches!(m, Mode::Single | Mode::Ordered(_))) {
        Order::Exact
    } else if modes.iter().all(|m| !matches!(m, Mode::Replicas(_))) {
        Order::PerKey
    } else {
        Order::Any
    }
}

/// How one stage of a case behaves, per mille of its items.
#[derive(Clone, Debug)]
pub(crate) struct StagePlan {
    pub(crate) fanout_max: u64,
    pub(crate) panic: u64,
    pub(crate) yield_now: u64,
    /// Stages this one may call (`Eval`) and cast to (`Add`).
    pub(crate) call_targets: Vec<usize>,
    pub(crate) call: u64,
    pub(crate) cast: u64,
    /// Calls into the server registry's workers, casts to its ledger.
    pub(crate) server_call: u64,
    pub(crate) ledger_cast: u64,
    pub(crate) queue: usize,
}

/// How inputs enter the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    Send,
    TrySend,
    Feed,
    Sink,
    HeadSink,
    /// `sink_<stage>()` into a stage after the head.
    MidSink,
}

/// What the test does with the pipeline's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutputUse {
    /// Never taken: the tail's items are dropped and counted.
    NotTaken,
    /// Read to the end.
    Read,
    /// Read this many items, then dropped.
    DropAfter(usize),
}

/// How a case ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    Shutdown,
    /// Drop every handle, then wait for the output (and `terminate`s).
    Drop,
    /// `abort()` after this many chunks were fed.
    Abort(usize),
}

/// How the server registry's workers call each other and their queues.
#[derive(Clone, Debug)]
pub(crate) struct ServerPlan {
    pub(crate) seed: u64,
    /// For each worker, the workers its `Eval` calls on (chosen by hash).
    pub(crate) edges: Vec<Vec<usize>>,
    /// Per mille of `Eval`s that call on.
    pub(crate) forward: u64,
    pub(crate) queues: Vec<usize>,
    pub(crate) ledger_queue: usize,
    /// `terminate` calls seen, servers and stages together.
    pub(crate) terminated: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

pub(crate) const WORKERS: usize = 4;

impl ServerPlan {
    /// Whether `Eval` calls between workers can go round in a cycle: then
    /// two concurrent `Eval`s can wait on each other, and one of them must
    /// be refused with a `Cycle` error (never hang). Which one depends on
    /// timing, so the model accepts such a refusal for any call.
    pub(crate) fn has_cycles(&self) -> bool {
        fn reaches(edges: &[Vec<usize>], from: usize, to: usize, seen: &mut Vec<usize>) -> bool {
            edges[from].iter().any(|&next| {
                next == to
                    || (!seen.contains(&next) && {
                        seen.push(next);
                        reaches(edges, next, to, seen)
                    })
            })
        }
        (0..self.edges.len()).any(|i| reaches(&self.edges, i, i, &mut Vec::new()))
    }

    /// Whether `reply` is a refusal of a call that would have closed a
    /// cycle of waiting workers, in a plan where that can happen.
    pub(crate) fn refused_as_cycle(&self, reply: &Result<u64, String>) -> bool {
        self.has_cycles() && matches!(reply, Err(e) if e.contains("Cycle { servers: [\"w"))
    }
}

/// A pipeline case.
#[derive(Debug)]
pub(crate) struct PipeCase {
    pub(crate) seed: u64,
    pub(crate) shapes: Shapes,
    /// Which declared pipeline.
    pub(crate) flow: usize,
    pub(crate) modes: Vec<Mode>,
    pub(crate) stages: Vec<StagePlan>,
    pub(crate) inputs: u32,
    pub(crate) keys: u32,
    pub(crate) chunks: Vec<(Entry, usize)>,
    /// Whether the output is taken, and after how many items it is dropped.
    pub(crate) output: OutputUse,
    pub(crate) ending: Ending,
    /// Handler panics (`call_<stage>(Panic)`) the outside sends, per stage.
    pub(crate) stage_panics: Vec<u32>,
    /// Calls and casts sent from outside while items flow.
    pub(crate) pokes: u32,
    pub(crate) multi_thread: bool,
    pub(crate) servers: ServerPlan,
    /// Faults seen inside stages: a wrong answer, or (`error`) an error
    /// from a call or cast, which an abort explains.
    pub(crate) faults: Mutex<Vec<(bool, String)>>,
    /// Sum of the `Add` casts a stage made to its own stage that were
    /// refused as `Full`, per stage.
    pub(crate) refused: Mutex<Vec<u64>>,
    /// What the case is doing, for the report of a hang.
    pub(crate) step: Step,
    /// The outside call or cast in progress, for the report of a hang.
    pub(crate) poking: Step,
}

impl PipeCase {
    pub(crate) fn fault(&self, error: bool, what: String) {
        self.faults.lock().unwrap().push((error, what));
    }
}

/// What a case is doing now, for the report of a hang.
#[derive(Debug, Default)]
pub(crate) struct Step(Mutex<String>);

impl Step {
    pub(crate) fn set(&self, what: impl Into<String>) {
        *self.0.lock().unwrap() = what.into();
    }

    pub(crate) fn get(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// What a stage does with one item; the stage and the model both draw it.
#[derive(Debug)]
pub(crate) struct Decision {
    pub(crate) panic: bool,
    pub(crate) fanout: u64,
    pub(crate) yield_now: bool,
    pub(crate) call: Option<(usize, u64)>,
    pub(crate) cast: Option<(usize, u64)>,
    pub(crate) server_call: Option<(usize, u64)>,
    pub(crate) ledger_cast: Option<u64>,
}

pub(crate) fn decide(case: &PipeCase, pos: usize, item: &Item) -> Decision {
    let plan = &case.stages[pos];
    let h = |salt: u64| mix(case.seed ^ item.lineage.rotate_left(17) ^ ((pos as u64) << 56) ^ salt);
    let per_mille = |salt: u64, p: u64| h(salt) % 1000 < p;
    let target = |salt: u64| plan.call_targets[(h(salt) % plan.call_targets.len() as u64) as usize];
    let can_call = !plan.call_targets.is_empty();
    Decision {
        panic: per_mille(1, plan.panic),
        fanout: h(2) % (plan.fanout_max + 1),
        yield_now: per_mille(3, plan.yield_now),
        call: (can_call && per_mille(4, plan.call)).then(|| (target(5), h(6) % 1_000_000)),
        cast: (can_call && per_mille(7, plan.cast)).then(|| (target(8), h(9) % 1000 + 1)),
        server_call: per_mille(10, plan.server_call).then(|| ((h(11) % WORKERS as u64) as usize, h(12) % 1_000_000)),
        ledger_cast: per_mille(13, plan.ledger_cast).then(|| h(14) % 1000 + 1),
    }
}

/// What a stage answers to `Eval(x)`.
pub(crate) fn stage_eval(pos: usize, x: u64) -> u64 {
    mix(x ^ (pos as u64 + 1).wrapping_mul(0xABCD_EF01))
}

/// What the model expects of a pipeline case.
#[derive(Debug, Default)]
pub(crate) struct Expected {
    /// The tail's items, in the order a pipeline keeping order emits them.
    pub(crate) output: Vec<Item>,
    pub(crate) received: Vec<u64>,
    pub(crate) emitted: Vec<u64>,
    pub(crate) failed: Vec<u64>,
    /// Items sent into each stage from outside.
    pub(crate) injected: Vec<u64>,
    /// Sum of the `Add` casts each stage gets from other stages.
    pub(crate) stage_casts: Vec<u64>,
    pub(crate) ledger: u64,
}

impl Expected {
    pub(crate) fn new(stages: usize) -> Expected {
        Expected {
            received: vec![0; stages],
            emitted: vec![0; stages],
            failed: vec![0; stages],
            injected: vec![0; stages],
            stage_casts: vec![0; stages],
            ..Expected::default()
        }
    }

    /// Runs `item` through the stages from `pos` on, as one replica of each
    /// would.
    pub(crate) fn push(&mut self, case: &PipeCase, pos: usize, item: Item) {
        self.received[pos] += 1;
        let d = decide(case, pos, &item);
        if let Some((q, v)) = d.cast {
            self.stage_casts[q] += v;
        }
        if let Some(v) = d.ledger_cast {
            self.ledger += v;
        }
        if d.panic {
            self.failed[pos] += 1;
            return;
        }
        for j in 0..d.fanout {
            let child = item.child(pos, j);
            self.emitted[pos] += 1;
            if pos + 1 < case.stages.len() {
                self.push(case, pos + 1, child);
            } else {
                self.output.push(child);
            }
        }
    }
}

/// A registry-only case.
#[derive(Debug)]
pub(crate) struct RegistryCase {
    pub(crate) seed: u64,
    pub(crate) shapes: Shapes,
    pub(crate) servers: ServerPlan,
    pub(crate) clients: u32,
    pub(crate) ops: u32,
    /// Handler panics per worker in the second phase (at most the restart
    /// limit, 3).
    pub(crate) panics: Vec<u32>,
    pub(crate) ending: Ending,
    pub(crate) multi_thread: bool,
    pub(crate) step: Step,
}

/// The declared pipelines' shapes, by index (see `flows.rs`).
pub(crate) const FLOWS: &[&[Mode]] = &[
    &[Mode::Single],
    &[Mode::Single, Mode::Replicas(3)],
    &[Mode::Single, Mode::Ordered(2), Mode::Single],
    &[Mode::Partitioned(2), Mode::Replicas(3), Mode::Ordered(2), Mode::Single],
    &[Mode::Single, Mode::Single, Mode::Single, Mode::Single, Mode::Single],
    &[Mode::Ordered(4), Mode::Partitioned(3)],
    &[Mode::Ordered(3), Mode::Single, Mode::Ordered(2)],
];

fn queue_size(rng: &mut fastrand::Rng, shapes: Shapes) -> usize {
    if shapes.huge_queues && rng.u32(0..20) == 0 {
        return usize::MAX - rng.usize(0..4);
    }
    *rng.choice(&[1, 1, 2, 3, 5, 8, 32, 33, 100, 1000]).unwrap()
}

fn server_plan(rng: &mut fastrand::Rng, seed: u64, shapes: Shapes) -> ServerPlan {
    let edges = (0..WORKERS)
        .map(|i| {
            let candidates: Vec<usize> =
                if shapes.cycles { (0..WORKERS).filter(|&j| j != i).collect() } else { (i + 1..WORKERS).collect() };
            candidates.into_iter().filter(|_| rng.bool()).collect()
        })
        .collect();
    ServerPlan {
        seed,
        edges,
        forward: rng.u64(0..=1000),
        queues: (0..WORKERS).map(|_| queue_size(rng, shapes)).collect(),
        ledger_queue: queue_size(rng, shapes),
        terminated: Default::default(),
    }
}

fn ending(rng: &mut fastrand::Rng, chunks: usize) -> Ending {
    match rng.u32(0..10) {
        0..=5 => Ending::Shutdown,
        6..=7 => Ending::Drop,
        _ => Ending::Abort(rng.usize(0..=chunks)),
    }
}

impl PipeCase {
    pub(crate) fn generate(seed: u64, shapes: Shapes) -> PipeCase {
        let mut rng = fastrand::Rng::with_seed(seed);
        let flow = rng.usize(0..FLOWS.len());
        let modes = FLOWS[flow].to_vec();
        let n = modes.len();
        let busy = rng.u32(0..4); // how much stages do besides emitting
        let mut stages: Vec<StagePlan> = (0..n)
            .map(|pos| {
                let call_targets: Vec<usize> =
                    if shapes.self_calls { pos..n } else { pos + 1..n }.filter(|_| rng.bool()).collect();
                let some = |rng: &mut fastrand::Rng, max: u64| if busy == 0 { 0 } else { rng.u64(0..=max) };
                StagePlan {
                    fanout_max: *rng.choice(&[1, 1, 2, 3, 4]).unwrap(),
                    panic: *rng.choice(&[0, 0, 5, 50, 200]).unwrap(),
                    yield_now: some(&mut rng, 300),
                    call_targets,
                    call: some(&mut rng, 200),
                    cast: some(&mut rng, 200),
                    server_call: some(&mut rng, 200),
                    ledger_cast: some(&mut rng, 200),
                    queue: queue_size(&mut rng, shapes),
                }
            })
            .collect();
        if !shapes.tiny_mailbox_casts {
            // A replicated stage casting into a one-message mailbox.
            for pos in 0..n {
                if modes[pos].replicas() > 1 && stages[pos].cast > 0 {
                    for q in stages[pos].call_targets.clone() {
                        stages[q].queue = stages[q].queue.max(2);
                    }
                }
            }
        }
        // Handler panics rebuild a stage's state, so only stages nobody
        // casts to get them.
        let cast_into: Vec<bool> =
            (0..n).map(|q| stages.iter().any(|s| s.cast > 0 && s.call_targets.contains(&q))).collect();
        let stage_panics = (0..n).map(|q| if cast_into[q] || rng.u32(0..3) > 0 { 0 } else { rng.u32(1..=2) }).collect();
        let inputs = *rng.choice(&[0, 1, 7, 40, 150, 400]).unwrap();
        let mut chunks = Vec::new();
        let mut left = inputs as usize;
        let order = order_of(&modes);
        while left > 0 {
            let len = rng.usize(1..=left.min(120));
            let mut feed = *rng
                .choice(&[Entry::Send, Entry::TrySend, Entry::Feed, Entry::Sink, Entry::HeadSink, Entry::MidSink])
                .unwrap();
            if feed == Entry::MidSink && (order != Order::Any || n == 1) {
                feed = Entry::Feed;
            }
            chunks.push((feed, len));
            left -= len;
        }
        let ending = ending(&mut rng, chunks.len());
        PipeCase {
            seed,
            shapes,
            flow,
            modes,
            stages,
            inputs,
            keys: rng.u32(1..=8),
            output: match rng.u32(0..10) {
                0 => OutputUse::NotTaken,
                1 => OutputUse::DropAfter(rng.usize(0..200)),
                _ => OutputUse::Read,
            },
            ending,
            stage_panics,
            pokes: rng.u32(0..30),
            chunks,
            multi_thread: rng.bool(),
            servers: server_plan(&mut rng, seed, shapes),
            faults: Mutex::new(Vec::new()),
            refused: Mutex::new(vec![0; n]),
            step: Step::default(),
            poking: Step::default(),
        }
    }

    /// The model's expectations for the inputs, fed in chunk order.
    pub(crate) fn expected(&self) -> Expected {
        let mut expected = Expected::new(self.stages.len());
        let mut origin = 0;
        for &(feed, len) in &self.chunks {
            for _ in 0..len {
                let pos = if feed == Entry::MidSink { self.mid_stage() } else { 0 };
                expected.injected[pos] += 1;
                expected.push(self, pos, Item::input(self.seed, origin, self.keys));
                origin += 1;
            }
        }
        expected
    }

    /// The stage `MidSink` chunks go into.
    pub(crate) fn mid_stage(&self) -> usize {
        1 + (self.seed % (self.stages.len().max(2) as u64 - 1)) as usize
    }
}

impl fmt::Display for PipeCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pipeline flow{} [", self.flow)?;
        for (pos, (s, m)) in self.stages.iter().zip(&self.modes).enumerate() {
            let mode = match m {
                Mode::Single => "x1".to_string(),
                Mode::Replicas(n) => format!("x{n}"),
                Mode::Ordered(n) => format!("x{n} ordered"),
                Mode::Partitioned(n) => format!("x{n} by key"),
            };
            write!(
                f,
                "{}s{pos} {mode} q={} fanout<={} panic={}‰ calls->{:?} call={}‰ cast={}‰ srv={}‰ ledger={}‰ yield={}‰ hpanics={}",
                if pos > 0 { "; " } else { "" },
                s.queue,
                s.fanout_max,
                s.panic,
                s.call_targets,
                s.call,
                s.cast,
                s.server_call,
                s.ledger_cast,
                s.yield_now,
                self.stage_panics[pos],
            )?;
        }
        let feeds: Vec<String> = self.chunks.iter().map(|(f, n)| format!("{f:?}({n})")).collect();
        write!(
            f,
            "] inputs={} keys={} feeds=[{}] output={:?} pokes={} end={:?} rt={} workers: edges={:?} fwd={}‰ q={:?} ledger q={} {:?}",
            self.inputs,
            self.keys,
            feeds.join(","),
            self.output,
            self.pokes,
            self.ending,
            if self.multi_thread { "multi_thread(2)" } else { "current_thread" },
            self.servers.edges,
            self.servers.forward,
            self.servers.queues,
            self.servers.ledger_queue,
            self.shapes,
        )
    }
}

impl RegistryCase {
    pub(crate) fn generate(seed: u64, shapes: Shapes) -> RegistryCase {
        let mut rng = fastrand::Rng::with_seed(seed);
        let servers = server_plan(&mut rng, seed, shapes);
        RegistryCase {
            seed,
            shapes,
            servers,
            clients: rng.u32(1..=6),
            ops: rng.u32(0..=80),
            panics: (0..WORKERS).map(|_| if rng.bool() { 0 } else { rng.u32(1..=3) }).collect(),
            ending: ending(&mut rng, 0),
            multi_thread: rng.bool(),
            step: Step::default(),
        }
    }
}

impl fmt::Display for RegistryCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "registry workers: edges={:?} fwd={}‰ q={:?} ledger q={} clients={} ops={} panics={:?} end={:?} rt={} {:?}",
            self.servers.edges,
            self.servers.forward,
            self.servers.queues,
            self.servers.ledger_queue,
            self.clients,
            self.ops,
            self.panics,
            self.ending,
            if self.multi_thread { "multi_thread(2)" } else { "current_thread" },
            self.shapes,
        )
    }
}
