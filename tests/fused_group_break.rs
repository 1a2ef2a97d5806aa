//! Tries to break the promises of fused groups: casts per item from every
//! stage into later fused stages with tiny control queues, calls from
//! outside while a large stream flows, `sink_<fused>()` items mixed with
//! upstream items, panics in a fused stage's `handle_cast`, failing fused
//! stages, flush/shutdown accounting, `max_demand` overrides on the group
//! head, and a head whose `process` awaits.
use std::{
    marker::PhantomData,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    },
};

use futures::{SinkExt, StreamExt, stream};
use genflow::{Emitter, GenServer, SendError, Stage};

#[path = "support/wait.rs"]
mod wait;
use wait::{eventually_named as eventually, within_named as within};
const N: usize = 5;

#[derive(Debug, Clone)]
pub enum Msg {
    Ask,
    Add(u64),
    Crash,
}

/// What every stage of a test pipeline does per item, and what it saw.
#[derive(Default)]
pub struct Cfg {
    /// `casts[i][j]`: casts of `Add(1)` from stage i to stage j per item.
    casts: [[u32; N]; N],
    /// On item `.0`, stage `.1` casts `.3` times to stage `.2`.
    burst: Option<(u64, usize, usize, u32)>,
    /// Stage `.0` fails items divisible by `.1`.
    fail: Option<(usize, u64)>,
    /// The head yields before items divisible by this (0: never).
    yield_mod: u64,
    /// Stage `.0` calls stage `.1` per item.
    call: Option<(usize, usize)>,
    seen: [AtomicU64; N],
    casts_got: [AtomicU64; N],
    cast_ok: [AtomicU64; N],
    errors: Mutex<Vec<String>>,
    call_results: Mutex<Vec<String>>,
}

impl Cfg {
    fn seen(&self, i: usize) -> u64 {
        self.seen[i].load(SeqCst)
    }
    fn got(&self, i: usize) -> u64 {
        self.casts_got[i].load(SeqCst)
    }
    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

pub trait Reg: Clone + Send + Sync + 'static {
    fn cfg(&self) -> &Cfg;
    fn cast_to(&self, j: usize, m: Msg) -> impl Future<Output = Result<(), SendError<Msg>>> + Send;
    fn call_to(&self, j: usize, m: Msg) -> impl Future<Output = Result<(u64, u64), String>> + Send;
}

pub struct Node<R, const ID: usize, const Q: usize> {
    reg: R,
    seen: u64,
    casts: u64,
    _p: PhantomData<R>,
}

impl<R: Reg, const ID: usize, const Q: usize> GenServer for Node<R, ID, Q> {
    type Message = Msg;
    type Response = (u64, u64);
    type Registry = R;
    fn new(reg: R) -> Self {
        Node { reg, seen: 0, casts: 0, _p: PhantomData }
    }
    async fn handle_call(&mut self, m: Msg) -> (u64, u64) {
        if let Msg::Crash = m {
            panic!("crash in call")
        }
        (self.seen, self.casts)
    }
    async fn handle_cast(&mut self, m: Msg) {
        match m {
            Msg::Add(n) => {
                self.casts += n;
                self.reg.cfg().casts_got[ID].fetch_add(n, SeqCst);
            }
            Msg::Crash => panic!("crash in cast"),
            Msg::Ask => {}
        }
    }
    fn channel_queue_size() -> usize {
        Q
    }
}

impl<R: Reg, const ID: usize, const Q: usize> Stage for Node<R, ID, Q> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, x: u64, out: &mut Emitter<u64>) {
        let cfg = self.reg.cfg();
        self.seen += 1;
        cfg.seen[ID].fetch_add(1, SeqCst);
        if ID == 0 && cfg.yield_mod > 0 && x % cfg.yield_mod == 0 {
            tokio::task::yield_now().await;
        }
        for j in ID + 1..N {
            for _ in 0..cfg.casts[ID][j] {
                match self.reg.cast_to(j, Msg::Add(1)).await {
                    Ok(()) => {
                        cfg.cast_ok[j].fetch_add(1, SeqCst);
                    }
                    Err(e) => cfg.errors.lock().unwrap().push(format!("item {x}: {ID}->{j}: {e:?}")),
                }
            }
        }
        if let Some((item, from, to, k)) = cfg.burst
            && item == x
            && from == ID
        {
            for _ in 0..k {
                match self.reg.cast_to(to, Msg::Add(1)).await {
                    Ok(()) => {
                        cfg.cast_ok[to].fetch_add(1, SeqCst);
                    }
                    Err(e) => cfg.errors.lock().unwrap().push(format!("burst {x}: {ID}->{to}: {e:?}")),
                }
            }
        }
        if let Some((from, to)) = cfg.call
            && from == ID
        {
            let r = self.reg.call_to(to, Msg::Ask).await;
            cfg.call_results.lock().unwrap().push(match r {
                Ok(_) => "ok".to_owned(),
                Err(e) => e,
            });
        }
        if let Some((stage, m)) = cfg.fail
            && stage == ID
            && x % m == 0
        {
            out.fail("bad item");
            return;
        }
        out.emit(x).await;
    }
}

macro_rules! reg {
    ($name:ident: $($id:literal => $cast:ident, $call:ident);*) => {
        impl Reg for $name {
            fn cfg(&self) -> &Cfg {
                &self.cfg
            }
            async fn cast_to(&self, j: usize, m: Msg) -> Result<(), SendError<Msg>> {
                match j {
                    $($id => self.$cast(m).await,)*
                    _ => unreachable!(),
                }
            }
            async fn call_to(&self, j: usize, m: Msg) -> Result<(u64, u64), String> {
                match j {
                    $($id => self.$call(m).await.map_err(|e| e.to_string()),)*
                    _ => unreachable!(),
                }
            }
        }
    };
}

// Four stages in one group; control queues of 1 (the last: 2).
#[genflow::pipeline{ a: Node<G4, 0, 1>, #[fused] b: Node<G4, 1, 1>, #[fused] c: Node<G4, 2, 1>, #[fused] d: Node<G4, 3, 2> }]
pub struct G4 {
    cfg: Arc<Cfg>,
}
reg!(G4: 0 => cast_a, call_a; 1 => cast_b, call_b; 2 => cast_c, call_c; 3 => cast_d, call_d);

// Same, with `#[max_demand(7)]` on the head.
#[genflow::pipeline{ #[max_demand(7)] a: Node<G4d, 0, 1>, #[fused] b: Node<G4d, 1, 1>, #[fused] c: Node<G4d, 2, 1>, #[fused] d: Node<G4d, 3, 2> }]
pub struct G4d {
    cfg: Arc<Cfg>,
}
reg!(G4d: 0 => cast_a, call_a; 1 => cast_b, call_b; 2 => cast_c, call_c; 3 => cast_d, call_d);

// A group of three, then an unfused stage after it with a queue of 1.
#[genflow::pipeline{ a: Node<G3e, 0, 1>, #[fused] b: Node<G3e, 1, 1>, #[fused] c: Node<G3e, 2, 1>, e: Node<G3e, 3, 1> }]
pub struct G3e {
    cfg: Arc<Cfg>,
}
reg!(G3e: 0 => cast_a, call_a; 1 => cast_b, call_b; 2 => cast_c, call_c; 3 => cast_e, call_e);

// Same as G4, but the head's input queue holds 1000 (bigger batches).
#[genflow::pipeline{ a: Node<G4b, 0, 1000>, #[fused] b: Node<G4b, 1, 1>, #[fused] c: Node<G4b, 2, 1>, #[fused] d: Node<G4b, 3, 2> }]
pub struct G4b {
    cfg: Arc<Cfg>,
}
reg!(G4b: 0 => cast_a, call_a; 1 => cast_b, call_b; 2 => cast_c, call_c; 3 => cast_d, call_d);

fn all_casts() -> Cfg {
    let mut cfg = Cfg::default();
    for i in 0..4 {
        for j in i + 1..4 {
            cfg.casts[i][j] = 1;
        }
    }
    cfg
}

/// Per-item casts that never put more casts into a queue between two
/// service points than it holds: a->b, b->c, c->d and a->d (d holds 2).
fn chain_casts() -> Cfg {
    let mut cfg = Cfg::default();
    for (i, j) in [(0, 1), (1, 2), (2, 3), (0, 3)] {
        cfg.casts[i][j] = 1;
    }
    cfg
}

macro_rules! check_metrics {
    ($flow:expr, $stage:expr, ($r:expr, $p:expr, $f:expr, $e:expr)) => {{
        let m = $flow.metrics();
        let s = m.stage($stage).unwrap();
        assert_eq!((s.received, s.processed, s.failed, s.emitted), ($r, $p, $f, $e), "{}: {m}", $stage);
    }};
}

async fn every_stage_casts_to_every_later_one(items: u64) {
    let cfg = Arc::new(all_casts());
    let flow = G4::start(cfg.clone()).await;
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    within("feed", flow.feed(stream::iter(0..items))).await.unwrap();
    within("flush", flow.flush()).await.unwrap();
    assert_eq!(cfg.errors(), Vec::<String>::new());
    assert_eq!([cfg.got(1), cfg.got(2), cfg.got(3)], [items, 2 * items, 3 * items]);
    assert_eq!(within("call_d", flow.call_d(Msg::Ask)).await.unwrap(), (items, 3 * items));
    assert_eq!(within("call_c", flow.call_c(Msg::Ask)).await.unwrap(), (items, 2 * items));
    assert_eq!(within("call_b", flow.call_b(Msg::Ask)).await.unwrap(), (items, items));
    within("shutdown", flow.shutdown()).await;
    assert_eq!(out.await.unwrap(), (0..items).collect::<Vec<_>>());
    for s in ["a", "b", "c", "d"] {
        check_metrics!(flow, s, (items, items, 0, items));
    }
}

#[tokio::test]
async fn four_stage_group_every_stage_casts_to_every_later_fused_stage() {
    every_stage_casts_to_every_later_one(10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_stage_group_every_stage_casts_to_every_later_fused_stage_mt() {
    every_stage_casts_to_every_later_one(10_000).await;
}

// One item per send (hand-overs of one), then a burst: whatever the batch
// shape, no per-item cast is refused.
#[tokio::test]
async fn per_item_casts_survive_single_item_sends_and_bursts() {
    let cfg = Arc::new(chain_casts());
    let flow = G4::start(cfg.clone()).await;
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    for x in 0..300 {
        within("send", flow.send(x)).await.unwrap();
    }
    within("feed", flow.feed(stream::iter(300..3000))).await.unwrap();
    for x in 3000..3100 {
        within("send", flow.send(x)).await.unwrap();
        if x % 10 == 0 {
            within("flush", flow.flush()).await.unwrap();
        }
    }
    within("shutdown", flow.shutdown()).await;
    assert_eq!(cfg.errors(), Vec::<String>::new());
    assert_eq!([cfg.got(1), cfg.got(2), cfg.got(3)], [3100, 3100, 6200]);
    assert_eq!(out.await.unwrap(), (0..3100).collect::<Vec<_>>());
}

// Only one `process` casting more than the queue holds is refused: d holds
// 2, item 500's `process` in c casts 3 times to d (1 per item + 2 more).
#[tokio::test]
async fn only_the_process_casting_past_the_queue_is_refused() {
    let mut cfg = Cfg::default();
    for (i, j) in [(0, 1), (1, 2), (2, 3)] {
        cfg.casts[i][j] = 1;
    }
    cfg.burst = Some((500, 2, 3, 2));
    let cfg = Arc::new(cfg);
    let flow = G4b::start(cfg.clone()).await;
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    within("feed", flow.feed(stream::iter(0..2000))).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    let errors = cfg.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("burst 500: 2->3: Cycle"), "{errors:?}");
    assert_eq!(cfg.got(3), 2000 + 1);
    assert_eq!(out.await.unwrap(), (0..2000).collect::<Vec<_>>());
}

/// `casts` into G4 (`big`: G4b, head queue 1000) with 2000 items; returns
/// the refusals.
async fn refusals(pairs: &[(usize, usize)], big: bool) -> Vec<String> {
    let mut cfg = Cfg::default();
    for &(i, j) in pairs {
        cfg.casts[i][j] = 1;
    }
    let cfg = Arc::new(cfg);
    let out = if big {
        let flow = G4b::start(cfg.clone()).await;
        let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
        within("feed", flow.feed(stream::iter(0..2000))).await.unwrap();
        within("shutdown", flow.shutdown()).await;
        out
    } else {
        let flow = G4::start(cfg.clone()).await;
        let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
        within("feed", flow.feed(stream::iter(0..2000))).await.unwrap();
        within("shutdown", flow.shutdown()).await;
        out
    };
    assert_eq!(out.await.unwrap(), (0..2000).collect::<Vec<_>>());
    cfg.errors()
}

// a and b each cast once per item into c (queue of 1): no single `process`
// casts more than c's queue holds, so none should be refused. Head queue
// of 1 (batches of one item).
#[tokio::test]
async fn two_stages_each_casting_once_per_item_into_a_fused_queue_of_one() {
    let errors = refusals(&[(0, 2), (1, 2)], false).await;
    assert_eq!(errors.len(), 0, "first: {:?}", errors.first());
}

// The same with hand-overs of up to `HANDOVER` items (head queue of 1000).
#[tokio::test]
async fn two_stages_each_casting_once_per_item_into_a_fused_queue_of_one_big_batches() {
    let errors = refusals(&[(0, 2), (1, 2)], true).await;
    assert_eq!(errors.len(), 0, "first: {:?}", errors.first());
}

// a, b and c each cast once per item into d (queue of 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_stages_each_casting_once_per_item_into_a_fused_queue_of_two() {
    let errors = refusals(&[(0, 3), (1, 3), (2, 3)], true).await;
    assert_eq!(errors.len(), 0, "first: {:?}", errors.first());
}

// Control: one stage per target, or no more casters than room.
#[tokio::test]
async fn casts_within_the_room_between_service_points_are_never_refused() {
    for big in [false, true] {
        for pairs in [&[(0, 1), (1, 2), (2, 3)][..], &[(0, 1), (1, 2), (2, 3), (0, 3)], &[(0, 3), (1, 3)], &[(0, 2)]] {
            let errors = refusals(pairs, big).await;
            assert_eq!(errors, Vec::<String>::new(), "{pairs:?} big={big}");
        }
    }
}

async fn outside_calls_while_flowing(items: u64) {
    let cfg = Arc::new(Cfg::default());
    let flow = Arc::new(G4::start(cfg.clone()).await);
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let done = Arc::new(AtomicBool::new(false));
    let mut pollers = Vec::new();
    for stage in 1..4usize {
        let flow = flow.clone();
        let done = done.clone();
        pollers.push(tokio::spawn(async move {
            let mut last = 0u64;
            let mut answers = 0u64;
            while !done.load(SeqCst) {
                let (seen, _) = flow.call_to(stage, Msg::Ask).await.unwrap();
                assert!(seen >= last && seen <= items, "stage {stage}: {seen} after {last}");
                last = seen;
                answers += 1;
                tokio::task::yield_now().await;
            }
            answers
        }));
    }
    within("feed", flow.feed(stream::iter(0..items))).await.unwrap();
    within("flush", flow.flush()).await.unwrap();
    done.store(true, SeqCst);
    for p in pollers {
        let answers = within("poller", p).await.unwrap();
        assert!(answers >= 1);
    }
    for (stage, name) in [(1, "b"), (2, "c"), (3, "d")] {
        assert_eq!(within(name, flow.call_to(stage, Msg::Ask)).await.unwrap(), (items, 0), "{name}");
    }
    within("shutdown", flow.shutdown()).await;
    assert_eq!(out.await.unwrap(), (0..items).collect::<Vec<_>>());
    for s in ["a", "b", "c", "d"] {
        check_metrics!(flow, s, (items, items, 0, items));
    }
}

#[tokio::test]
async fn outside_calls_to_each_fused_stage_while_10k_flow_are_monotone() {
    outside_calls_while_flowing(10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_calls_to_each_fused_stage_while_10k_flow_are_monotone_mt() {
    outside_calls_while_flowing(10_000).await;
}

// Outside calls compete with per-item casts for queues of 1: a cast may be
// refused (the queue is full of an outside call), but every cast is either
// delivered or refused, never lost, and nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_calls_and_inside_casts_account_for_every_cast() {
    let cfg = Arc::new(all_casts());
    let flow = Arc::new(G4::start(cfg.clone()).await);
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let done = Arc::new(AtomicBool::new(false));
    let mut pollers = Vec::new();
    for stage in 1..4usize {
        let (flow, done) = (flow.clone(), done.clone());
        pollers.push(tokio::spawn(async move {
            while !done.load(SeqCst) {
                flow.call_to(stage, Msg::Ask).await.unwrap();
            }
        }));
    }
    within("feed", flow.feed(stream::iter(0..5000))).await.unwrap();
    within("flush", flow.flush()).await.unwrap();
    done.store(true, SeqCst);
    for p in pollers {
        within("poller", p).await.unwrap();
    }
    let errors = cfg.errors();
    let refused = |j: usize| errors.iter().filter(|e| e.contains(&format!("->{j}:"))).count() as u64;
    assert!(errors.iter().all(|e| e.contains("Cycle")), "{errors:?}");
    assert_eq!(cfg.got(1) + refused(1), 5000);
    assert_eq!(cfg.got(2) + refused(2), 10_000);
    assert_eq!(cfg.got(3) + refused(3), 15_000);
    within("shutdown", flow.shutdown()).await;
    assert_eq!(out.await.unwrap(), (0..5000).collect::<Vec<_>>());
}

async fn sink_items_mixed(items: u64) {
    let cfg = Arc::new(chain_casts());
    let flow = Arc::new(G4::start(cfg.clone()).await);
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let f2 = flow.clone();
    let into_c = tokio::spawn(async move {
        let mut sink = f2.sink_c();
        for i in 0..500u64 {
            sink.send(1_000_000 + i).await.unwrap();
        }
    });
    let f3 = flow.clone();
    let into_d = tokio::spawn(async move {
        let mut sink = f3.sink_d();
        for i in 0..300u64 {
            sink.send(2_000_000 + i).await.unwrap();
        }
    });
    within("feed", flow.feed(stream::iter(0..items))).await.unwrap();
    within("into_c", into_c).await.unwrap();
    within("into_d", into_d).await.unwrap();
    within("flush", flow.flush()).await.unwrap();
    assert_eq!(cfg.errors(), Vec::<String>::new());
    // c casts to d for its own-queue items too.
    assert_eq!([cfg.got(1), cfg.got(2), cfg.got(3)], [items, items, 2 * items + 500]);
    within("shutdown", flow.shutdown()).await;
    let out = out.await.unwrap();
    assert_eq!(out.len() as u64, items + 800);
    let up: Vec<u64> = out.iter().copied().filter(|&x| x < 1_000_000).collect();
    let c: Vec<u64> = out.iter().copied().filter(|&x| (1_000_000..2_000_000).contains(&x)).collect();
    let d: Vec<u64> = out.iter().copied().filter(|&x| x >= 2_000_000).collect();
    assert_eq!(up, (0..items).collect::<Vec<_>>());
    assert_eq!(c, (1_000_000..1_000_500).collect::<Vec<_>>());
    assert_eq!(d, (2_000_000..2_000_300).collect::<Vec<_>>());
    check_metrics!(flow, "a", (items, items, 0, items));
    check_metrics!(flow, "b", (items, items, 0, items));
    check_metrics!(flow, "c", (items + 500, items + 500, 0, items + 500));
    check_metrics!(flow, "d", (items + 800, items + 800, 0, items + 800));
}

/// c casts to d (queue of 2) once per item; `own` items go in through
/// `sink_c()` (c's own queue of 1) and `up` through the pipeline, at once.
async fn own_queue_casts(pairs: &[(usize, usize)], own: u64, up: u64) -> Vec<String> {
    let mut cfg = Cfg::default();
    for &(i, j) in pairs {
        cfg.casts[i][j] = 1;
    }
    let cfg = Arc::new(cfg);
    let flow = Arc::new(G4b::start(cfg.clone()).await);
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let f2 = flow.clone();
    let into_c = tokio::spawn(async move {
        let mut sink = f2.sink_c();
        for i in 0..own {
            sink.send(1_000_000 + i).await.unwrap();
        }
    });
    within("feed", flow.feed(stream::iter(0..up))).await.unwrap();
    within("into_c", into_c).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    assert_eq!(out.await.unwrap().len() as u64, own + up);
    check_metrics!(flow, "c", (own + up, own + up, 0, own + up));
    cfg.errors()
}

// Only c casts to d, once per item, items only from c's own queue.
#[tokio::test]
async fn casts_from_a_fused_stage_serving_its_own_queue_alone() {
    let errors = own_queue_casts(&[(2, 3)], 2000, 0).await;
    assert_eq!(errors.len(), 0, "first: {:?}", errors.first());
}

// Only c casts to d, once per item, own-queue items mixed with upstream.
#[tokio::test]
async fn casts_from_a_fused_stage_serving_its_own_queue_while_upstream_flows() {
    let errors = own_queue_casts(&[(2, 3)], 2000, 5000).await;
    let own = errors.iter().filter(|e| e.contains(" 100")).count();
    assert_eq!(errors.len(), 0, "{own} on own-queue items; first: {:?}", &errors[..errors.len().min(4)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_from_a_fused_stage_serving_its_own_queue_while_upstream_flows_mt() {
    let errors = own_queue_casts(&[(2, 3)], 2000, 5000).await;
    let own = errors.iter().filter(|e| e.contains(" 100")).count();
    assert_eq!(errors.len(), 0, "{own} on own-queue items; first: {:?}", &errors[..errors.len().min(4)]);
}

#[tokio::test]
async fn sink_items_into_fused_stages_mix_with_upstream_items() {
    sink_items_mixed(10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_items_into_fused_stages_mix_with_upstream_items_mt() {
    sink_items_mixed(10_000).await;
}

// A crash cast into c (queue of 1) while a, b cast to it per item: c
// restarts with fresh state, every cast is handled or refused (none lost
// in the restart), and every item still goes through.
#[tokio::test]
async fn a_panic_in_a_fused_stages_handle_cast_restarts_it_while_casts_flow() {
    let cfg = Arc::new(chain_casts());
    let flow = Arc::new(G4::start(cfg.clone()).await);
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let f2 = flow.clone();
    let feeding = tokio::spawn(async move { f2.feed(stream::iter(0..10_000)).await.unwrap() });
    let c2 = cfg.clone();
    within("c busy", async {
        while c2.seen(2) < 2000 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    within("crash cast", flow.cast_c(Msg::Crash)).await.unwrap();
    let c3 = cfg.clone();
    within("c busy again", async {
        while c3.seen(2) < 6000 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    within("crash cast 2", flow.cast_c(Msg::Crash)).await.unwrap();
    within("feeding", feeding).await.unwrap();
    within("flush", flow.flush()).await.unwrap();
    let errors = cfg.errors();
    let refused = |j: usize| errors.iter().filter(|e| e.contains(&format!("->{j}:"))).count() as u64;
    assert_eq!(cfg.got(2) + refused(2), 10_000, "{errors:?}");
    assert_eq!(cfg.got(3) + refused(3), 20_000, "{errors:?}");
    assert_eq!(errors, Vec::<String>::new(), "casts refused around the restart");
    let (seen, casts) = within("call_c", flow.call_c(Msg::Ask)).await.unwrap();
    assert!(seen < 10_000 - 6000 + 1000 && casts < 10_000, "c kept state through restarts: {seen} {casts}");
    assert_eq!(cfg.seen(2), 10_000);
    // a, b, d kept theirs.
    assert_eq!(within("call_d", flow.call_d(Msg::Ask)).await.unwrap(), (10_000, 20_000));
    within("shutdown", flow.shutdown()).await;
    assert_eq!(out.await.unwrap(), (0..10_000).collect::<Vec<_>>());
    for s in ["a", "b", "c", "d"] {
        check_metrics!(flow, s, (10_000, 10_000, 0, 10_000));
    }
}

// Past its restart limit (3 in 5 s), a fused stage fails the items that
// reach it and refuses casts; the group goes on and accounts for all.
#[tokio::test]
async fn a_fused_stage_down_for_good_mid_stream_fails_the_rest() {
    let cfg = Arc::new(Cfg::default());
    let flow = G4::start(cfg.clone()).await;
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    within("feed", flow.feed(stream::iter(0..1000))).await.unwrap();
    within("flush", flow.flush()).await.unwrap();
    for _ in 0..4 {
        within("crash", flow.cast_c(Msg::Crash)).await.unwrap();
        within("ask", flow.call_b(Msg::Ask)).await.unwrap();
    }
    let r = within("call_c", flow.call_c(Msg::Ask)).await;
    assert!(r.is_err(), "{r:?}");
    within("feed", flow.feed(stream::iter(1000..2000))).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    assert_eq!(out.await.unwrap(), (0..1000).collect::<Vec<_>>());
    check_metrics!(flow, "b", (2000, 2000, 0, 2000));
    check_metrics!(flow, "c", (2000, 2000, 1000, 1000));
    check_metrics!(flow, "d", (1000, 1000, 0, 1000));
}

async fn failing_fused_stage(items: u64) {
    let mut cfg = chain_casts();
    cfg.fail = Some((2, 3));
    let cfg = Arc::new(cfg);
    let flow = G4::start(cfg.clone()).await;
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    within("feed", flow.feed(stream::iter(0..items))).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    let failed = (0..items).filter(|x| x % 3 == 0).count() as u64;
    let passed = items - failed;
    assert_eq!(cfg.errors(), Vec::<String>::new());
    // c casts to d before failing the item.
    assert_eq!([cfg.got(1), cfg.got(2), cfg.got(3)], [items, items, 2 * items]);
    assert_eq!(cfg.seen(3), passed);
    assert_eq!(out.await.unwrap(), (0..items).filter(|x| x % 3 != 0).collect::<Vec<_>>());
    check_metrics!(flow, "a", (items, items, 0, items));
    check_metrics!(flow, "b", (items, items, 0, items));
    check_metrics!(flow, "c", (items, items, failed, passed));
    check_metrics!(flow, "d", (passed, passed, 0, passed));
}

#[tokio::test]
async fn a_fused_stage_that_fails_items_accounts_every_item() {
    failing_fused_stage(10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fused_stage_that_fails_items_accounts_every_item_mt() {
    failing_fused_stage(10_000).await;
}

// Flushes between chunks, and a shutdown right after a feed, with casts
// per item: every item and every cast accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_and_shutdown_under_casting_load_account_every_item() {
    let cfg = Arc::new(chain_casts());
    let flow = G4::start(cfg.clone()).await;
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let mut total = 0;
    for chunk in [1u64, 2, 127, 128, 129, 255, 256, 511, 512, 513, 1000, 3000] {
        within("feed", flow.feed(stream::iter(total..total + chunk))).await.unwrap();
        total += chunk;
        within("flush", flow.flush()).await.unwrap();
        assert_eq!(cfg.seen(3), total);
        // Casts are messages: `flush` waits for the items that made them,
        // not for d to handle them.
        let c2 = cfg.clone();
        eventually("d handles the casts of flushed items", || c2.got(3) == 2 * total).await;
        let m = flow.metrics();
        for s in ["a", "b", "c", "d"] {
            let st = m.stage(s).unwrap();
            assert_eq!((st.received, st.processed, st.emitted, st.in_flight), (total, total, total, 0), "{s}: {m}");
        }
    }
    within("feed", flow.feed(stream::iter(total..total + 5000))).await.unwrap();
    total += 5000;
    within("shutdown", flow.shutdown()).await;
    assert_eq!(cfg.errors(), Vec::<String>::new());
    assert_eq!([cfg.got(1), cfg.got(2), cfg.got(3)], [total, total, 2 * total]);
    assert_eq!(out.await.unwrap(), (0..total).collect::<Vec<_>>());
    for s in ["a", "b", "c", "d"] {
        check_metrics!(flow, s, (total, total, 0, total));
    }
    assert!(flow.send(0).await.is_err());
}

async fn run_demand(flow: G4, cfg: Arc<Cfg>, items: u64) {
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    within("feed", flow.feed(stream::iter(0..items))).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    assert_eq!(cfg.errors(), Vec::<String>::new());
    assert_eq!([cfg.got(1), cfg.got(2), cfg.got(3)], [items, items, 2 * items]);
    assert_eq!(out.await.unwrap(), (0..items).collect::<Vec<_>>());
    for s in ["a", "b", "c", "d"] {
        check_metrics!(flow, s, (items, items, 0, items));
    }
}

#[tokio::test]
async fn max_demand_overrides_on_the_group_head_give_exact_outputs() {
    for n in [1usize, 7, 500] {
        let cfg = Arc::new(chain_casts());
        let flow = G4::builder(cfg.clone()).max_demand("a", n).start().await.unwrap();
        run_demand(flow, cfg, 5000).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_demand_overrides_on_the_group_head_give_exact_outputs_mt() {
    for n in [1usize, 7, 500] {
        let mut cfg = chain_casts();
        cfg.yield_mod = 5;
        let cfg = Arc::new(cfg);
        let flow = G4::builder(cfg.clone()).max_demand("a", n).start().await.unwrap();
        run_demand(flow, cfg, 5000).await;
    }
}

#[tokio::test]
async fn max_demand_attribute_on_the_group_head_gives_exact_outputs() {
    let cfg = Arc::new(chain_casts());
    let flow = G4d::start(cfg.clone()).await;
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    within("feed", flow.feed(stream::iter(0..5000))).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    assert_eq!(cfg.errors(), Vec::<String>::new());
    assert_eq!([cfg.got(1), cfg.got(2), cfg.got(3)], [5000, 5000, 10_000]);
    assert_eq!(out.await.unwrap(), (0..5000).collect::<Vec<_>>());
    let m = flow.metrics();
    for s in ["a", "b", "c", "d"] {
        let st = m.stage(s).unwrap();
        assert_eq!((st.received, st.processed, st.failed, st.emitted), (5000, 5000, 0, 5000), "{s}: {m}");
    }
}

// The head awaits (yield_now) on every item or every 3rd: the slow path.
async fn yielding_head(yield_mod: u64) {
    let mut cfg = chain_casts();
    cfg.yield_mod = yield_mod;
    let cfg = Arc::new(cfg);
    let flow = G4::start(cfg.clone()).await;
    run_demand(flow, cfg, 10_000).await;
}

#[tokio::test]
async fn a_head_that_awaits_on_every_item_keeps_casts_served() {
    yielding_head(1).await;
    yielding_head(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_awaits_on_every_item_keeps_casts_served_mt() {
    yielding_head(1).await;
    yielding_head(3).await;
}

// Calls from a stage to a later fused stage of its own group are refused
// as cycles, every one, and the group goes on.
#[tokio::test]
async fn calls_within_the_group_are_refused_as_cycles() {
    for (from, to) in [(0usize, 3usize), (1, 2), (1, 3), (2, 3)] {
        let cfg = Arc::new(Cfg { call: Some((from, to)), ..Cfg::default() });
        let flow = G4::start(cfg.clone()).await;
        let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
        within("feed", flow.feed(stream::iter(0..300))).await.unwrap();
        within("shutdown", flow.shutdown()).await;
        let results = cfg.call_results.lock().unwrap().clone();
        assert_eq!(results.len(), 300);
        assert!(results.iter().all(|r| r.starts_with("call would deadlock")), "{from}->{to}: {:?}", &results[..3]);
        assert_eq!(out.await.unwrap(), (0..300).collect::<Vec<_>>());
    }
}

// A stage after the group (its own task, queue of 1) calls the group's
// last fused stage per item, while the group may be waiting for room in
// that very queue: answered or refused, never hung, every item through.
#[tokio::test]
async fn a_stage_after_the_group_calling_into_it_does_not_hang() {
    let cfg = Arc::new(Cfg { call: Some((3, 2)), ..Cfg::default() });
    let flow = G3e::start(cfg.clone()).await;
    let out = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    within("feed", flow.feed(stream::iter(0..2000))).await.unwrap();
    within("shutdown", flow.shutdown()).await;
    let results = cfg.call_results.lock().unwrap().clone();
    assert_eq!(results.len(), 2000);
    assert_eq!(out.await.unwrap(), (0..2000).collect::<Vec<_>>());
}
