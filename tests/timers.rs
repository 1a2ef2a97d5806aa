//! Timers: `send_after` and `send_interval` deliver a server's own message
//! through its queue (to `handle_cast`, or to a stage's `handle_timer`
//! with its emitter), at the virtual time asked; they stop on `cancel`, on
//! a restart and with the server, and keep no registry alive.

use std::{
    marker::PhantomData,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, StreamExt, stream};
use genflow::{CallError, Emitter, GenServer, Stage, Timer, TimerError};
use tokio::{sync::Semaphore, time::advance};

const MS: Duration = Duration::from_millis(1);

/// Yields until `pred` holds; panics after many tries (under paused time
/// a busy test task keeps the clock still, so no timeout could fire).
async fn eventually(mut pred: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if pred() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the condition never held");
}

/// What a `Clock` is asked.
#[derive(Clone, Debug)]
enum Msg {
    /// Arms `send_after(delay, Tick(tag))`; the call answers with it.
    After(Duration, u32),
    /// Arms `send_interval(period, Tick(tag))`; the call answers with it.
    Every(Duration, u32),
    /// A timer's message: logged with the state's generation.
    Tick(u32),
    /// Panics in `handle_call`.
    Crash,
    /// Arms a timer of another server type from this one's task.
    ArmOther,
    /// Arms a timer from a task the handler spawned.
    ArmSpawned,
    /// As a cast: says it started (a permit in the first), then waits for a
    /// permit of the second.
    Block(Arc<Semaphore>, Arc<Semaphore>),
}

#[derive(Debug)]
enum Reply {
    Armed(Result<Timer, TimerError<Msg>>),
    Refused(String),
}

impl Reply {
    fn timer(self) -> Timer {
        match self {
            Reply::Armed(Ok(timer)) => timer,
            other => panic!("expected a timer, got {other:?}"),
        }
    }
}

/// Logs each tick as `(generation, tag)`: the generation counts the
/// states made, from 1.
struct Clock {
    registry: Clocks,
    generation: u32,
}

impl GenServer for Clock {
    type Message = Msg;
    type Response = Reply;
    type Registry = Clocks;

    fn new(registry: Clocks) -> Self {
        let generation = registry.boots.fetch_add(1, Ordering::SeqCst) + 1;
        Clock { registry, generation }
    }

    async fn init(&mut self) {
        if let Some(period) = self.registry.init_period {
            let timer = self.send_interval(period, Msg::Tick(0)).expect("in the server's task");
            self.registry.armed.lock().unwrap().push(timer);
        }
    }

    async fn handle_call(&mut self, message: Msg) -> Reply {
        match message {
            Msg::After(delay, tag) => Reply::Armed(self.send_after(delay, Msg::Tick(tag))),
            Msg::Every(period, tag) => Reply::Armed(self.send_interval(period, Msg::Tick(tag))),
            Msg::Crash => panic!("asked to crash"),
            Msg::ArmOther => {
                let other = Other;
                match other.send_after(MS, 7) {
                    Err(TimerError::OtherServer(message)) => Reply::Refused(format!("other server {message}")),
                    other => panic!("unexpected: {other:?}"),
                }
            }
            Msg::ArmSpawned => {
                let registry = self.registry.clone();
                let spawned = tokio::spawn(async move { Clock::new(registry).send_after(MS, Msg::Tick(9)) });
                match spawned.await.expect("no panic") {
                    Err(error @ TimerError::NotInServer(_)) => Reply::Refused(error.to_string()),
                    other => panic!("unexpected: {other:?}"),
                }
            }
            Msg::Tick(_) | Msg::Block(..) => Reply::Refused("not a call".into()),
        }
    }

    async fn handle_cast(&mut self, message: Msg) {
        match message {
            Msg::Tick(tag) => self.registry.log.lock().unwrap().push((self.generation, tag)),
            Msg::Block(started, gate) => {
                started.add_permits(1);
                gate.acquire().await.expect("open").forget();
            }
            _ => {}
        }
    }

    async fn terminate(&mut self) {
        self.registry.terminated.fetch_add(1, Ordering::SeqCst);
    }
}

/// A server of another type, for the refusal above.
struct Other;

impl GenServer for Other {
    type Message = u32;
    type Response = ();
    type Registry = ();
    fn new((): ()) -> Self {
        Other
    }
    async fn handle_call(&mut self, _: u32) {}
}

#[genflow::make_registry{ clock: Clock }]
struct Clocks {
    init_period: Option<Duration>,
    log: Arc<Mutex<Vec<(u32, u32)>>>,
    boots: Arc<AtomicU32>,
    terminated: Arc<AtomicUsize>,
    armed: Arc<Mutex<Vec<Timer>>>,
}

struct Probe {
    log: Arc<Mutex<Vec<(u32, u32)>>>,
    terminated: Arc<AtomicUsize>,
    armed: Arc<Mutex<Vec<Timer>>>,
}

impl Probe {
    fn log(&self) -> Vec<(u32, u32)> {
        self.log.lock().unwrap().clone()
    }
}

async fn clocks(init_period: Option<Duration>) -> (Clocks, Probe) {
    let probe = Probe { log: Arc::default(), terminated: Arc::default(), armed: Arc::default() };
    let clocks =
        Clocks::start(init_period, probe.log.clone(), Arc::default(), probe.terminated.clone(), probe.armed.clone())
            .await;
    (clocks, probe)
}

#[tokio::test(start_paused = true)]
async fn send_after_delivers_once_after_its_delay() {
    let (clocks, probe) = clocks(None).await;
    let timer = clocks.call_clock(Msg::After(100 * MS, 1)).await.unwrap().timer();
    assert!(timer.is_active());
    advance(99 * MS).await;
    // A call goes behind anything queued before it.
    clocks.call_clock(Msg::Tick(0)).await.unwrap();
    assert_eq!(probe.log(), []);
    advance(MS).await;
    eventually(|| !probe.log().is_empty()).await;
    assert_eq!(probe.log(), [(1, 1)]);
    assert!(!timer.is_active(), "handled once, it is over");
    assert!(!timer.cancel(), "nothing left to cancel");
    advance(1000 * MS).await;
    clocks.call_clock(Msg::Tick(0)).await.unwrap();
    assert_eq!(probe.log(), [(1, 1)]);
    clocks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_send_after_never_delivers() {
    let (clocks, probe) = clocks(None).await;
    let cancelled = clocks.call_clock(Msg::After(100 * MS, 1)).await.unwrap().timer();
    let kept = clocks.call_clock(Msg::After(200 * MS, 2)).await.unwrap().timer();
    assert!(cancelled.cancel());
    assert!(!cancelled.cancel(), "a second cancel finds it over");
    assert!(!cancelled.is_active());
    // Dropping a timer does not cancel it.
    drop(kept);
    advance(200 * MS).await;
    eventually(|| !probe.log().is_empty()).await;
    advance(1000 * MS).await;
    clocks.call_clock(Msg::Tick(0)).await.unwrap();
    assert_eq!(probe.log(), [(1, 2)]);
    clocks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn send_interval_delivers_every_period_until_cancelled() {
    let (clocks, probe) = clocks(None).await;
    let timer = clocks.call_clock(Msg::Every(100 * MS, 3)).await.unwrap().timer();
    for n in 1..=5 {
        advance(99 * MS).await;
        clocks.call_clock(Msg::Tick(0)).await.unwrap();
        assert_eq!(probe.log().len(), n - 1, "not before its period");
        advance(MS).await;
        eventually(|| probe.log().len() == n).await;
    }
    assert!(timer.cancel());
    advance(1000 * MS).await;
    clocks.call_clock(Msg::Tick(0)).await.unwrap();
    assert_eq!(probe.log(), [(1, 3); 5]);
    clocks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_periodic_timer_behind_skips_ticks_instead_of_queueing_them() {
    let (clocks, probe) = clocks(None).await;
    let _timer = clocks.call_clock(Msg::Every(100 * MS, 6)).await.unwrap().timer();
    let (started, gate) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    clocks.cast_clock(Msg::Block(started.clone(), gate.clone())).await.unwrap();
    started.acquire().await.unwrap().forget();
    // Five periods while the server is busy: the first tick waits in the
    // queue, the four after it are skipped.
    for _ in 0..5 {
        advance(100 * MS).await;
        tokio::task::yield_now().await;
    }
    gate.add_permits(1);
    clocks.call_clock(Msg::Tick(0)).await.unwrap();
    assert_eq!(probe.log(), [(1, 6)]);
    // And on schedule again.
    advance(100 * MS).await;
    eventually(|| probe.log().len() == 2).await;
    advance(99 * MS).await;
    clocks.call_clock(Msg::Tick(0)).await.unwrap();
    assert_eq!(probe.log(), [(1, 6), (1, 6)]);
    clocks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_cancels_the_old_states_timers_and_the_new_init_arms_its_own() {
    let (clocks, probe) = clocks(Some(100 * MS)).await;
    for n in 1..=2 {
        advance(100 * MS).await;
        eventually(|| probe.log().len() == n).await;
    }
    assert!(matches!(clocks.call_clock(Msg::Crash).await, Err(CallError::Panicked)));
    // The restarted state's `init` armed a second timer; the first is over.
    eventually(|| probe.armed.lock().unwrap().len() == 2).await;
    let (old, new) = {
        let armed = probe.armed.lock().unwrap();
        (armed[0].clone(), armed[1].clone())
    };
    assert!(!old.is_active());
    assert!(new.is_active());
    for n in 1..=3 {
        advance(100 * MS).await;
        eventually(|| probe.log().len() == 2 + n).await;
    }
    advance(50 * MS).await;
    clocks.call_clock(Msg::Tick(0)).await.unwrap();
    let log = probe.log();
    let per_generation = |generation| log.iter().filter(|(g, _)| *g == generation).count();
    assert_eq!((per_generation(1), per_generation(2)), (2, 3));
    clocks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_servers_timers_stop_with_it() {
    let (clocks, probe) = clocks(Some(100 * MS)).await;
    advance(100 * MS).await;
    eventually(|| probe.log().len() == 1).await;
    let timer = probe.armed.lock().unwrap()[0].clone();
    assert!(timer.is_active());
    clocks.shutdown().await;
    assert_eq!(probe.terminated.load(Ordering::SeqCst), 1);
    assert!(!timer.is_active());
    assert!(!timer.cancel());
    advance(1000 * MS).await;
    assert_eq!(probe.log(), [(1, 0)]);
}

#[tokio::test(start_paused = true)]
async fn an_aborted_servers_timers_stop() {
    let (clocks, probe) = clocks(Some(100 * MS)).await;
    let timer = probe.armed.lock().unwrap()[0].clone();
    clocks.abort();
    clocks.shutdown().await;
    assert!(!timer.is_active());
    advance(1000 * MS).await;
    assert_eq!(probe.log(), []);
    assert_eq!(probe.terminated.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_registry_whose_handles_are_dropped_shuts_down_with_an_interval_armed() {
    let (clocks, probe) = clocks(Some(100 * MS)).await;
    advance(100 * MS).await;
    eventually(|| probe.log().len() == 1).await;
    drop(clocks);
    eventually(|| probe.terminated.load(Ordering::SeqCst) == 1).await;
    let timer = probe.armed.lock().unwrap()[0].clone();
    eventually(|| !timer.is_active()).await;
}

#[tokio::test(start_paused = true)]
async fn arming_outside_the_servers_own_task_is_an_error() {
    // From the test's task.
    let (clocks, probe) = clocks(None).await;
    let outside = Clock::new(clocks.clone());
    match outside.send_after(MS, Msg::Tick(5)) {
        Err(error @ TimerError::NotInServer(_)) => {
            assert_eq!(error.to_string(), "a timer can only be armed from inside its server's own task");
            assert!(matches!(error.into_message(), Msg::Tick(5)));
        }
        other => panic!("unexpected: {other:?}"),
    }
    assert!(matches!(outside.send_interval(MS, Msg::Tick(5)), Err(TimerError::NotInServer(Msg::Tick(5)))));
    // From a task a handler spawned, and for a server of another type.
    match clocks.call_clock(Msg::ArmSpawned).await.unwrap() {
        Reply::Refused(text) => assert_eq!(text, "a timer can only be armed from inside its server's own task"),
        other => panic!("unexpected: {other:?}"),
    }
    match clocks.call_clock(Msg::ArmOther).await.unwrap() {
        Reply::Refused(text) => assert_eq!(text, "other server 7"),
        other => panic!("unexpected: {other:?}"),
    }
    // Periods too long for the clock never tick, and do not panic.
    let far = clocks.call_clock(Msg::Every(Duration::MAX, 8)).await.unwrap().timer();
    let later = clocks.call_clock(Msg::After(Duration::MAX, 8)).await.unwrap().timer();
    assert!(far.is_active() && later.is_active());
    // A zero period.
    match clocks.call_clock(Msg::Every(Duration::ZERO, 4)).await.unwrap() {
        Reply::Armed(Err(TimerError::ZeroPeriod(Msg::Tick(4)))) => {}
        other => panic!("unexpected: {other:?}"),
    }
    advance(1000 * MS).await;
    clocks.call_clock(Msg::Tick(0)).await.unwrap();
    assert_eq!(probe.log(), []);
    clocks.shutdown().await;
}

#[test]
fn timers_and_their_errors_cross_threads() {
    fn is<T: Send + Sync + Clone + 'static>() {}
    fn error<E: std::error::Error + Send + Sync + 'static>() {}
    is::<Timer>();
    error::<TimerError<Msg>>();
}

// --- stages ------------------------------------------------------------------

/// Holds its items and writes them out as one batch every 100 ms.
struct Holder<R> {
    held: Vec<u64>,
    _registry: PhantomData<R>,
}

impl<R: Clone + Send + Sync + 'static> GenServer for Holder<R> {
    type Message = ();
    type Response = ();
    type Registry = R;
    fn new(_: R) -> Self {
        Holder { held: Vec::new(), _registry: PhantomData }
    }
    async fn init(&mut self) {
        self.send_interval(100 * MS, ()).expect("in the stage's task");
    }
    async fn handle_call(&mut self, (): ()) {}
}

impl<R: Clone + Send + Sync + 'static> Stage for Holder<R> {
    type In = u64;
    type Out = Vec<u64>;
    async fn process(&mut self, item: u64, _: &mut Emitter<Vec<u64>>) {
        self.held.push(item);
    }
    async fn handle_timer(&mut self, (): (), out: &mut Emitter<Vec<u64>>) {
        if !self.held.is_empty() {
            out.emit(std::mem::take(&mut self.held)).await;
        }
    }
}

/// Passes items on.
struct Pass<R>(PhantomData<R>);

impl<R: Clone + Send + Sync + 'static> GenServer for Pass<R> {
    type Message = ();
    type Response = ();
    type Registry = R;
    fn new(_: R) -> Self {
        Pass(PhantomData)
    }
    async fn handle_call(&mut self, (): ()) {}
}

impl<R: Clone + Send + Sync + 'static> Stage for Pass<R> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        out.emit(item).await;
    }
}

fn itself(item: &u64) -> u64 {
    *item
}

#[genflow::pipeline{ hold: Holder<One> }]
struct One;

#[genflow::pipeline{ #[replicas(2, partition_by = itself)] hold: Holder<Two> }]
struct Two;

#[genflow::pipeline{ pass: Pass<Fused>, #[fused] hold: Holder<Fused> }]
struct Fused;

#[tokio::test(start_paused = true)]
async fn a_stage_writes_out_what_it_holds_from_its_timer_without_more_input() {
    let flow = One::start().await;
    let mut output = flow.output().unwrap();
    assert_eq!(flow.feed(stream::iter(1..=3)).await.unwrap(), 3);
    // Taken and held: nothing goes out before the tick.
    flow.flush().await.unwrap();
    advance(99 * MS).await;
    assert_eq!(output.next().now_or_never(), None);
    advance(MS).await;
    assert_eq!(output.next().await, Some(vec![1, 2, 3]));
    assert_eq!(flow.feed(stream::iter(4..=5)).await.unwrap(), 2);
    flow.flush().await.unwrap();
    advance(100 * MS).await;
    assert_eq!(output.next().await, Some(vec![4, 5]));
    let stage = flow.metrics().stage("hold").unwrap();
    assert_eq!((stage.received, stage.emitted, stage.failed), (5, 2, 0));
    flow.shutdown().await;
    assert_eq!(output.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn each_replica_writes_out_its_own_items_from_its_own_timer() {
    let flow = Two::start().await;
    let mut output = flow.output().unwrap();
    assert_eq!(flow.feed(stream::iter(0..20)).await.unwrap(), 20);
    flow.flush().await.unwrap();
    let replicas = flow.metrics().stage("hold").unwrap().replicas;
    let held: Vec<u64> = replicas.iter().map(|replica| replica.received).collect();
    assert!(held.iter().all(|&n| n > 0), "keys spread over both replicas: {held:?}");
    advance(99 * MS).await;
    assert_eq!(output.next().now_or_never(), None);
    advance(MS).await;
    // One batch per replica, each of the items that replica took, in order.
    let batches = [output.next().await.unwrap(), output.next().await.unwrap()];
    let mut sizes: Vec<u64> = batches.iter().map(|batch| batch.len() as u64).collect();
    sizes.sort();
    let mut expected = held.clone();
    expected.sort();
    assert_eq!(sizes, expected);
    assert!(batches.iter().all(|batch| batch.is_sorted()));
    let replicas = flow.metrics().stage("hold").unwrap().replicas;
    assert_eq!(replicas.iter().map(|replica| replica.emitted).collect::<Vec<_>>(), [1, 1]);
    let mut all = batches.concat();
    all.sort();
    assert_eq!(all, (0..20).collect::<Vec<u64>>());
    flow.shutdown().await;
    assert_eq!(output.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn a_fused_stage_writes_out_from_its_timer() {
    let flow = Fused::start().await;
    let mut output = flow.output().unwrap();
    assert_eq!(flow.feed(stream::iter(1..=4)).await.unwrap(), 4);
    flow.flush().await.unwrap();
    advance(99 * MS).await;
    assert_eq!(output.next().now_or_never(), None);
    advance(MS).await;
    assert_eq!(output.next().await, Some(vec![1, 2, 3, 4]));
    let stage = flow.metrics().stage("hold").unwrap();
    assert_eq!((stage.received, stage.emitted), (4, 1));
    flow.shutdown().await;
    assert_eq!(output.next().await, None);
}

/// Fails from its timer, once, 100 ms after it started.
struct LateFail;

impl GenServer for LateFail {
    type Message = ();
    type Response = ();
    type Registry = Late;
    fn new(_: Late) -> Self {
        LateFail
    }
    async fn init(&mut self) {
        self.send_after(100 * MS, ()).expect("in the stage's task");
    }
    async fn handle_call(&mut self, (): ()) {}
}

impl Stage for LateFail {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        out.emit(item).await;
    }
    async fn handle_timer(&mut self, (): (), out: &mut Emitter<u64>) {
        out.emit(100).await;
        out.fail("too late");
    }
}

#[genflow::pipeline{ late: LateFail }]
struct Late;

#[tokio::test(start_paused = true)]
async fn a_failure_in_a_timer_is_tied_to_no_item() {
    let flow = Late::start().await;
    let mut output = flow.output().unwrap();
    let mut failures = flow.failures().unwrap();
    advance(100 * MS).await;
    assert_eq!(output.next().await, Some(100));
    let failure = failures.next().await.unwrap();
    assert!(failure.in_timer());
    assert!(!failure.in_finish());
    assert!(!failure.is_panic());
    assert_eq!(failure.to_string(), "stage `late` (replica 0) failed in a timer: too late");
    // The next item is not counted failed.
    flow.send(1).await.unwrap();
    assert_eq!(output.next().await, Some(1));
    let stage = flow.metrics().stage("late").unwrap();
    assert_eq!((stage.received, stage.emitted, stage.failed), (1, 2, 0));
    flow.shutdown().await;
    assert!(failures.next().await.is_none());
}

/// Counts how its timers' messages reach it; items pass through.
struct Counted;

impl GenServer for Counted {
    type Message = ();
    type Response = ();
    type Registry = Ordered;
    fn new(_: Ordered) -> Self {
        Counted
    }
    async fn init(&mut self) {
        self.send_after(100 * MS, ()).expect("in the stage's task");
    }
    async fn handle_call(&mut self, (): ()) {}
    async fn handle_cast(&mut self, (): ()) {
        CASTS.fetch_add(1, Ordering::SeqCst);
    }
}

static CASTS: AtomicUsize = AtomicUsize::new(0);
static TIMERS: AtomicUsize = AtomicUsize::new(0);

impl Stage for Counted {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        out.emit(item).await;
    }
    async fn handle_timer(&mut self, (): (), _: &mut Emitter<u64>) {
        TIMERS.fetch_add(1, Ordering::SeqCst);
    }
}

#[genflow::pipeline{ #[replicas(2, ordered)] counted: Counted }]
struct Ordered;

#[tokio::test(start_paused = true)]
async fn an_ordered_stage_gets_its_timers_messages_as_casts() {
    let flow = Ordered::start().await;
    let mut output = flow.output().unwrap();
    advance(100 * MS).await;
    // Each replica armed its own.
    eventually(|| CASTS.load(Ordering::SeqCst) == 2).await;
    assert_eq!(TIMERS.load(Ordering::SeqCst), 0);
    assert_eq!(flow.feed(stream::iter(0..40)).await.unwrap(), 40);
    flow.shutdown().await;
    assert_eq!(output.by_ref().collect::<Vec<u64>>().await, (0..40).collect::<Vec<u64>>());
}

/// Arms a periodic timer for its first item and hands it out; its
/// `finish` emits whether that timer is still active, and whether one armed
/// there is.
struct Ending {
    timer: Option<Timer>,
}

impl GenServer for Ending {
    type Message = ();
    type Response = ();
    type Registry = Ends;
    fn new(_: Ends) -> Self {
        Ending { timer: None }
    }
    async fn handle_call(&mut self, (): ()) {}
}

impl Stage for Ending {
    type In = Arc<Mutex<Option<Timer>>>;
    type Out = (bool, bool);
    async fn process(&mut self, slot: Arc<Mutex<Option<Timer>>>, _: &mut Emitter<(bool, bool)>) {
        let timer = self.send_interval(100 * MS, ()).expect("in the stage's task");
        *slot.lock().unwrap() = Some(timer.clone());
        self.timer = Some(timer);
    }
    async fn finish(&mut self, out: &mut Emitter<(bool, bool)>) {
        let before = self.timer.as_ref().is_some_and(Timer::is_active);
        // Armed in `finish`, after the input ended: its message is a cast.
        let late = self.send_after(MS, ()).expect("still running");
        out.emit((before, late.is_active())).await;
    }
}

#[genflow::pipeline{ ending: Ending }]
struct Ends;

#[tokio::test(start_paused = true)]
async fn a_stages_timers_stop_when_its_input_ends() {
    let flow = Ends::start().await;
    let mut output = flow.output().unwrap();
    let slot = Arc::new(Mutex::new(None));
    flow.send(slot.clone()).await.unwrap();
    flow.flush().await.unwrap();
    let timer = slot.lock().unwrap().clone().unwrap();
    assert!(timer.is_active());
    flow.shutdown().await;
    // Cancelled before `finish`; one armed in `finish` runs.
    assert_eq!(output.next().await, Some((false, true)));
    assert_eq!(output.next().await, None);
    assert!(!timer.is_active());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_work_on_a_multi_thread_runtime_on_the_real_clock() {
    let (clocks, probe) = clocks(None).await;
    let _once = clocks.call_clock(Msg::After(5 * MS, 1)).await.unwrap().timer();
    let every = clocks.call_clock(Msg::Every(5 * MS, 2)).await.unwrap().timer();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ticks = |log: &[(u32, u32)], tag| log.iter().filter(|(_, t)| *t == tag).count();
    while ticks(&probe.log(), 2) < 3 || ticks(&probe.log(), 1) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no hang");
        tokio::time::sleep(MS).await;
    }
    assert!(every.cancel());
    clocks.shutdown().await;
    let log = probe.log();
    assert_eq!(ticks(&log, 1), 1);
    assert!(ticks(&log, 2) >= 3);
}

// ---- a timer of a stage with futures in flight ------------------------------

/// What a timer of [`Lookups`] hands over.
#[derive(Clone, Debug)]
enum Hand {
    /// A future that gives 999.
    Value,
    /// A future that fails.
    Failing,
    /// A future that takes an hour.
    Slow,
}

/// A `#[concurrency(4)]` stage whose timers hand futures to `emit_async`.
struct Lookup;

impl GenServer for Lookup {
    type Message = Hand;
    type Response = ();
    type Registry = Lookups;
    fn new(_: Lookups) -> Self {
        Lookup
    }
    /// Arms a timer that hands `hand` over in 10 ms.
    async fn handle_call(&mut self, hand: Hand) {
        self.send_after(10 * MS, hand).unwrap();
    }
}

impl Stage for Lookup {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        out.emit_async(async move {
            tokio::time::sleep(5 * MS).await;
            n
        })
        .await;
    }
    async fn handle_timer(&mut self, hand: Hand, out: &mut Emitter<u64>) {
        match hand {
            Hand::Value => out.emit_async(async { 999 }).await,
            Hand::Failing => out.try_emit_async(async { Err::<u64, _>("the timer's lookup failed") }).await,
            Hand::Slow => {
                out.emit_async(async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    555
                })
                .await;
            }
        }
    }
}

#[genflow::pipeline{ #[concurrency(4)] lookup: Lookup }]
struct Lookups;

#[tokio::test(start_paused = true)]
async fn a_timer_awaits_its_futures_in_place_and_its_output_leaves_at_once() {
    let flow = Lookups::start().await;
    let mut output = flow.output().unwrap();
    flow.call_lookup(Hand::Value).await.unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(output.next().await, Some(999));
    assert_eq!(started.elapsed(), 10 * MS);
    flow.shutdown().await;
    assert_eq!(output.next().await, None);
    let lookup = flow.metrics().stage("lookup").unwrap();
    assert_eq!((lookup.received, lookup.processed, lookup.emitted, lookup.in_flight), (0, 0, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_timer_future_that_fails_is_the_timer_s_failure_not_an_item_s() {
    let flow = Lookups::start().await;
    let output = flow.output().unwrap();
    let failures = flow.failures().unwrap();
    flow.call_lookup(Hand::Failing).await.unwrap();
    advance(20 * MS).await;
    flow.send(7).await.unwrap();
    flow.flush().await.unwrap();
    flow.shutdown().await;
    assert_eq!(output.collect::<Vec<_>>().await, [7]);
    let failures: Vec<_> = failures.collect().await;
    assert_eq!(failures.len(), 1);
    assert!(failures[0].in_timer() && failures[0].items() == 0, "{:?}", failures[0]);
    let lookup = flow.metrics().stage("lookup").unwrap();
    assert_eq!((lookup.processed, lookup.failed), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_slow_timer_future_holds_the_timer_not_the_items() {
    let flow = Lookups::start().await;
    let mut output = flow.output().unwrap();
    flow.call_lookup(Hand::Slow).await.unwrap();
    advance(20 * MS).await;
    // The replica awaits the timer's future in place: the item waits for
    // it, as it would for a slow `handle_cast`, and nothing is lost.
    flow.send(7).await.unwrap();
    let started = tokio::time::Instant::now();
    flow.flush().await.unwrap();
    assert_eq!(output.next().await, Some(555));
    assert_eq!(output.next().await, Some(7));
    assert!(started.elapsed() >= Duration::from_secs(3590), "{:?}", started.elapsed());
    flow.shutdown().await;
}
