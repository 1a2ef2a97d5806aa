//! Calls and casts between servers never wait forever: a replica calling or
//! casting to its own stage reaches another replica, replicas serve until
//! their whole stage drained, and a chain of servers waiting on each other
//! is refused with an error naming the cycle.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, stream};
use genflow::{CallError, Emitter, GenServer, SendError, Stage};

/// A hang detector: fails the test if `future` does not complete in time.
async fn in_time<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), future).await.unwrap_or_else(|_| panic!("{what} hung"))
}

// --- A replica calling or casting to its own stage --------------------------

#[derive(Debug)]
enum Ask {
    Double(u64),
    Count,
}

/// What the replicas of a `Rep` stage saw, shared through the pipeline's
/// fields.
#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<Result<u64, String>>>,
    casts: Mutex<Vec<Result<(), String>>>,
    counted: AtomicUsize,
}

/// What `Rep` needs from its pipeline.
trait SelfCalling: Clone + Send + Sync + 'static {
    fn seen(&self) -> &Seen;
    fn casts(&self) -> bool;
    fn call_own(&self, ask: Ask) -> impl Future<Output = Result<u64, CallError<Ask>>> + Send;
    fn cast_own(&self, ask: Ask) -> impl Future<Output = Result<(), SendError<Ask>>> + Send;
}

/// A replicated stage whose `process` calls (or casts to) its own stage for
/// every item.
struct Rep<P> {
    registry: P,
}

impl<P: SelfCalling> GenServer for Rep<P> {
    type Message = Ask;
    type Response = u64;
    type Registry = P;

    fn new(registry: P) -> Self {
        Rep { registry }
    }

    async fn handle_call(&mut self, message: Ask) -> u64 {
        match message {
            Ask::Double(n) => 2 * n,
            Ask::Count => 0,
        }
    }

    async fn handle_cast(&mut self, _: Ask) {
        self.registry.seen().counted.fetch_add(1, Ordering::SeqCst);
    }
}

impl<P: SelfCalling> Stage for Rep<P> {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        if self.registry.casts() {
            let sent = self.registry.cast_own(Ask::Count).await.map_err(|e| e.to_string());
            self.registry.seen().casts.lock().unwrap().push(sent);
        } else {
            let answer = self.registry.call_own(Ask::Double(item)).await.map_err(|e| e.to_string());
            self.registry.seen().calls.lock().unwrap().push(answer);
        }
        out.emit(item).await;
    }
}

macro_rules! self_calling {
    ($pipeline:ident) => {
        impl SelfCalling for $pipeline {
            fn seen(&self) -> &Seen {
                &self.seen
            }

            fn casts(&self) -> bool {
                self.cast
            }

            fn call_own(&self, ask: Ask) -> impl Future<Output = Result<u64, CallError<Ask>>> + Send {
                self.call_rep(ask)
            }

            fn cast_own(&self, ask: Ask) -> impl Future<Output = Result<(), SendError<Ask>>> + Send {
                self.cast_rep(ask)
            }
        }

        impl $pipeline {
            /// Feeds 0..200 with casts or calls, drains, returns what the
            /// replicas saw.
            async fn run(cast: bool) -> Arc<Seen> {
                let seen = Arc::new(Seen::default());
                let pipeline = $pipeline::start(seen.clone(), cast).await;
                let output = pipeline.output().unwrap();
                let collect = tokio::spawn(output.collect::<Vec<u64>>());
                assert_eq!(pipeline.feed(stream::iter(0..200u64)).await.unwrap(), 200);
                in_time("shutdown", pipeline.shutdown()).await;
                let mut out = in_time("output", collect).await.unwrap();
                out.sort_unstable();
                assert_eq!(out, (0..200).collect::<Vec<_>>());
                seen
            }
        }
    };
}

#[genflow::pipeline{ #[replicas(2)] rep: Rep<Reps2> }]
struct Reps2 {
    seen: Arc<Seen>,
    cast: bool,
}

#[genflow::pipeline{ #[replicas(3)] rep: Rep<Reps3> }]
struct Reps3 {
    seen: Arc<Seen>,
    cast: bool,
}

#[genflow::pipeline{ #[replicas(4)] rep: Rep<Reps4> }]
struct Reps4 {
    seen: Arc<Seen>,
    cast: bool,
}

self_calling!(Reps2);
self_calling!(Reps3);
self_calling!(Reps4);

fn assert_all_calls_answered(seen: &Seen) {
    let mut calls = seen.calls.lock().unwrap().clone();
    calls.sort_unstable();
    let expected: Vec<Result<u64, String>> = (0..200).map(|i| Ok(2 * i)).collect();
    assert_eq!(calls, expected);
}

fn assert_all_casts_handled(seen: &Seen) {
    let casts = seen.casts.lock().unwrap().clone();
    assert_eq!(casts, vec![Ok(()); 200]);
    assert_eq!(seen.counted.load(Ordering::SeqCst), 200);
}

#[tokio::test]
async fn a_replica_calling_its_own_stage_reaches_another_replica() {
    assert_all_calls_answered(&*Reps2::run(false).await);
    assert_all_calls_answered(&*Reps3::run(false).await);
    assert_all_calls_answered(&*Reps4::run(false).await);
}

#[tokio::test]
async fn a_replica_casting_to_its_own_stage_reaches_a_running_replica() {
    assert_all_casts_handled(&*Reps2::run(true).await);
    assert_all_casts_handled(&*Reps3::run(true).await);
    assert_all_casts_handled(&*Reps4::run(true).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_calling_each_other_in_parallel_never_hang_nor_call_themselves() {
    // On two threads, replicas really can wait on each other at once: such a
    // call is refused as a cycle; every other call is answered.
    for _ in 0..5 {
        let seen = Reps3::run(false).await;
        let calls = seen.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 200);
        let mut answered: Vec<u64> = calls.iter().filter_map(|call| call.as_ref().ok().copied()).collect();
        for refused in calls.iter().filter_map(|call| call.as_ref().err()) {
            assert!(refused.starts_with("call would deadlock: rep["), "{refused}");
        }
        answered.sort_unstable();
        answered.dedup();
        assert!(answered.iter().all(|n| n % 2 == 0 && *n < 400), "{answered:?}");
        assert_eq!(answered.len(), calls.iter().filter(|call| call.is_ok()).count());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_to_the_own_stage_are_handled_while_replicas_drain_in_parallel() {
    for _ in 0..5 {
        assert_all_casts_handled(&*Reps4::run(true).await);
    }
}

// --- Call cycles between servers ---------------------------------------------

/// A message that hops from server to server along `route`.
#[derive(Debug, Clone, PartialEq)]
struct Hop {
    route: Vec<char>,
    timed: bool,
}

/// How a chain of hops ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The last server answered.
    Pong,
    /// A call was refused; what its error said and held.
    Refused { servers: Vec<String>, display: String, returned: Option<Hop>, self_call: bool },
}

struct Node {
    registry: Ring,
}

impl GenServer for Node {
    type Message = Hop;
    type Response = Outcome;
    type Registry = Ring;

    fn new(registry: Ring) -> Self {
        Node { registry }
    }

    async fn handle_call(&mut self, mut hop: Hop) -> Outcome {
        if hop.route.is_empty() {
            return Outcome::Pong;
        }
        let next = hop.route.remove(0);
        let r = &self.registry;
        let answer = match (next, hop.timed) {
            ('a', false) => r.call_a(hop).await,
            ('b', false) => r.call_b(hop).await,
            ('c', false) => r.call_c(hop).await,
            ('a', true) => r.call_a_with_timeout(hop, Duration::from_secs(60)).await,
            ('b', true) => r.call_b_with_timeout(hop, Duration::from_secs(60)).await,
            (_, true) => r.call_c_with_timeout(hop, Duration::from_secs(60)).await,
            _ => r.call_c(hop).await,
        };
        answer.unwrap_or_else(|error| {
            let self_call = matches!(error, CallError::SelfCall(_));
            let servers = match &error {
                CallError::Cycle { servers, .. } => servers.clone(),
                _ => Vec::new(),
            };
            Outcome::Refused { servers, display: error.to_string(), returned: error.into_message(), self_call }
        })
    }

    async fn handle_cast(&mut self, _: Hop) {}
}

#[genflow::make_registry{ a: Node, b: Node, c: Node }]
struct Ring;

fn hop(route: &str, timed: bool) -> Hop {
    Hop { route: route.chars().collect(), timed }
}

async fn every_server_still_answers(ring: &Ring) {
    assert_eq!(ring.call_a(hop("", false)).await.unwrap(), Outcome::Pong);
    assert_eq!(ring.call_b(hop("", false)).await.unwrap(), Outcome::Pong);
    assert_eq!(ring.call_c(hop("", false)).await.unwrap(), Outcome::Pong);
}

#[tokio::test]
async fn a_call_cycle_of_two_servers_is_refused() {
    let ring = Ring::start().await;
    for timed in [false, true] {
        let outcome = in_time("a -> b -> a", ring.call_a(hop("ba", timed))).await.unwrap();
        assert_eq!(
            outcome,
            Outcome::Refused {
                servers: vec!["b".into(), "a".into(), "b".into()],
                display: "call would deadlock: b -> a -> b".into(),
                returned: Some(hop("", timed)),
                self_call: false,
            }
        );
        every_server_still_answers(&ring).await;
    }
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cycle_of_three_servers_is_refused() {
    let ring = Ring::start().await;
    for timed in [false, true] {
        let outcome = in_time("a -> b -> c -> a", ring.call_a(hop("bca", timed))).await.unwrap();
        assert_eq!(
            outcome,
            Outcome::Refused {
                servers: vec!["c".into(), "a".into(), "b".into(), "c".into()],
                display: "call would deadlock: c -> a -> b -> c".into(),
                returned: Some(hop("", timed)),
                self_call: false,
            }
        );
        every_server_still_answers(&ring).await;
    }
    // A chain without a cycle is answered.
    assert_eq!(ring.call_a(hop("bc", false)).await.unwrap(), Outcome::Pong);
    ring.shutdown().await;
}

#[tokio::test]
async fn a_server_calling_itself_still_gets_self_call() {
    let ring = Ring::start().await;
    let outcome = in_time("a -> a", ring.call_a(hop("a", false))).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Refused {
            servers: Vec::new(),
            display: "server called itself, which would never return".into(),
            returned: Some(hop("", false)),
            self_call: true,
        }
    );
    every_server_still_answers(&ring).await;
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_closing_one_cycle_never_both_wait() {
    let ring = Ring::start().await;
    for _ in 0..200 {
        // a calls b while b calls a: at least one of them is refused, and
        // both outside calls are answered.
        let (x, y) = in_time("crossed calls", async {
            tokio::join!(ring.call_a(hop("b", false)), ring.call_b(hop("a", false)))
        })
        .await;
        for outcome in [x.unwrap(), y.unwrap()] {
            match outcome {
                Outcome::Pong => {}
                Outcome::Refused { servers, .. } => {
                    assert!(servers == ["a", "b", "a"] || servers == ["b", "a", "b"], "{servers:?}")
                }
            }
        }
    }
    every_server_still_answers(&ring).await;
    ring.shutdown().await;
}

/// Calls its peer from `init`; records what the call returned.
struct Greeter {
    registry: Greeters,
}

impl GenServer for Greeter {
    type Message = ();
    type Response = &'static str;
    type Registry = Greeters;

    fn new(registry: Greeters) -> Self {
        Greeter { registry }
    }

    async fn init(&mut self) {
        // Each calls the other before serving anything: one call closes the
        // cycle and is refused; the other is then answered.
        let r = &self.registry;
        let said = match r.started.fetch_add(1, Ordering::SeqCst) {
            0 => r.call_right(()).await,
            _ => r.call_left(()).await,
        };
        r.said.lock().unwrap().push(said.map_err(|e| e.to_string()));
    }

    async fn handle_call(&mut self, _: ()) -> &'static str {
        "hello"
    }

    async fn handle_cast(&mut self, _: ()) {}
}

#[genflow::make_registry{ left: Greeter, right: Greeter }]
struct Greeters {
    started: Arc<AtomicUsize>,
    said: Arc<Mutex<Vec<Result<&'static str, String>>>>,
}

#[tokio::test]
async fn servers_calling_each_other_from_init_do_not_hang() {
    let said = Arc::new(Mutex::new(Vec::new()));
    let app = in_time("start", Greeters::start(Arc::default(), said.clone())).await;
    let mut said = said.lock().unwrap().clone();
    // `Ok` sorts first.
    said.sort();
    let refused = said.pop().unwrap().unwrap_err();
    assert!(
        refused == "call would deadlock: left -> right -> left"
            || refused == "call would deadlock: right -> left -> right",
        "{refused}"
    );
    assert_eq!(said, [Ok("hello")]);
    assert_eq!(app.call_left(()).await.unwrap(), "hello");
    assert_eq!(app.call_right(()).await.unwrap(), "hello");
    app.shutdown().await;
}

// --- A stage's `process` in a call cycle --------------------------------------

/// Calls stage `back` for every item and emits what the call said.
struct Front {
    registry: Loop,
}

/// Passes items on; its calls call `front` back.
struct Back {
    registry: Loop,
}

impl GenServer for Front {
    type Message = ();
    type Response = &'static str;
    type Registry = Loop;

    fn new(registry: Loop) -> Self {
        Front { registry }
    }

    async fn handle_call(&mut self, _: ()) -> &'static str {
        "front"
    }

    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Front {
    type In = u64;
    type Out = String;

    async fn process(&mut self, _: u64, out: &mut Emitter<String>) {
        let said = match self.registry.call_back(true).await {
            Ok(said) => said,
            Err(error) => error.to_string(),
        };
        out.emit(said).await;
    }
}

impl GenServer for Back {
    /// Whether to call `front` back.
    type Message = bool;
    type Response = String;
    type Registry = Loop;

    fn new(registry: Loop) -> Self {
        Back { registry }
    }

    async fn handle_call(&mut self, call_front: bool) -> String {
        if !call_front {
            return "back".into();
        }
        match self.registry.call_front(()).await {
            Ok(said) => said.into(),
            Err(error) => {
                let text = format!("refused: {error}");
                assert!(error.is_deadlock());
                assert_eq!(error.into_message(), Some(()));
                text
            }
        }
    }

    async fn handle_cast(&mut self, _: bool) {}
}

impl Stage for Back {
    type In = String;
    type Out = String;

    async fn process(&mut self, item: String, out: &mut Emitter<String>) {
        out.emit(item).await;
    }
}

#[genflow::pipeline{ front: Front, back: Back }]
struct Loop;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_process_in_a_call_cycle_is_refused() {
    let pipeline = Loop::start().await;
    let output = pipeline.output().unwrap();
    let collect = tokio::spawn(output.collect::<Vec<String>>());
    assert_eq!(pipeline.feed(stream::iter(0..3u64)).await.unwrap(), 3);
    // Calls keep working on both stages.
    assert_eq!(pipeline.call_front(()).await.unwrap(), "front");
    assert_eq!(pipeline.call_back(false).await.unwrap(), "back");
    in_time("shutdown", pipeline.shutdown()).await;
    let out = in_time("output", collect).await.unwrap();
    assert_eq!(out, vec!["refused: call would deadlock: back -> front -> back".to_string(); 3]);
}

// --- Casts waiting for room inside a replicated stage -------------------------

/// Yields, casts to its own stage, then emits.
struct Caster {
    registry: Casters,
}

impl GenServer for Caster {
    type Message = ();
    type Response = ();
    type Registry = Casters;

    fn new(registry: Casters) -> Self {
        Caster { registry }
    }

    async fn handle_call(&mut self, _: ()) {}

    async fn handle_cast(&mut self, _: ()) {}

    fn channel_queue_size() -> usize {
        1
    }
}

impl Stage for Caster {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        tokio::task::yield_now().await;
        let sent = self.registry.cast_s(()).await;
        if let Err(error) = &sent {
            assert!(matches!(error, SendError::Cycle { .. }), "{error:?}");
            self.registry.refused.fetch_add(1, Ordering::SeqCst);
        }
        out.emit(item).await;
    }
}

#[genflow::pipeline{ #[replicas(2)] s: Caster }]
struct Casters {
    refused: Arc<AtomicUsize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_between_busy_replicas_with_full_queues_never_hang() {
    for run in 0..20 {
        let pipeline = Casters::start(Arc::default()).await;
        let output = pipeline.output().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let outside = tokio::spawn({
            let (pipeline, stop) = (pipeline.clone(), stop.clone());
            async move {
                let mut sent = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    pipeline.cast_s_all(()).await.unwrap();
                    sent += 1;
                    tokio::task::yield_now().await;
                }
                sent
            }
        });
        let feed = tokio::spawn({
            let pipeline = pipeline.clone();
            async move { pipeline.feed(stream::iter(0..10u64)).await.unwrap() }
        });
        let mut out: Vec<u64> = in_time(&format!("run {run}"), output.take(10).collect()).await;
        out.sort_unstable();
        assert_eq!(out, (0..10).collect::<Vec<_>>(), "run {run}");
        assert_eq!(feed.await.unwrap(), 10);
        stop.store(true, Ordering::SeqCst);
        in_time("outside caster", outside).await.unwrap();
        in_time("shutdown", pipeline.shutdown()).await;
    }
}

// --- The error variants ----------------------------------------------------------

/// A message type without `Debug`.
struct Opaque(u8);

#[test]
fn cycle_errors_name_the_cycle_and_hand_the_message_back() {
    fn is_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
    let servers = || vec!["b".to_string(), "a".to_string(), "b".to_string()];

    let call = CallError::Cycle { message: Opaque(1), servers: servers() };
    is_error(&call);
    assert_eq!(call.to_string(), "call would deadlock: b -> a -> b");
    assert_eq!(format!("{call:?}"), r#"Cycle { servers: ["b", "a", "b"], .. }"#);
    assert!(call.is_deadlock() && !call.is_stopped() && !call.is_timeout());
    assert!(CallError::SelfCall(Opaque(0)).is_deadlock());
    assert_eq!(call.into_message().map(|m| m.0), Some(1));

    let cast = SendError::Cycle { message: Opaque(2), servers: servers() };
    is_error(&cast);
    assert_eq!(cast.to_string(), "cast would deadlock waiting for room: b -> a -> b");
    assert_eq!(format!("{cast:?}"), r#"Cycle { servers: ["b", "a", "b"], .. }"#);
    assert!(cast.is_deadlock() && !cast.is_stopped() && !cast.is_full());
    let cast = cast.map_message(|m| m.0 * 2);
    assert!(matches!(&cast, SendError::Cycle { message: 4, servers } if *servers == ["b", "a", "b"]));
    assert_eq!(cast.into_message(), Some(4));
}

// --- An ordered stage whose replicas call each other -------------------------

/// A stage of an ordered pipeline that emits more than a batch per item,
/// calling its own stage halfway: a replica waiting for its batch's turn is
/// waiting on the replicas before it, and a call between them must not
/// close that loop unnoticed.
struct Fan {
    registry: Fans,
}

impl GenServer for Fan {
    type Message = u64;
    type Response = u64;
    type Registry = Fans;

    fn new(registry: Fans) -> Self {
        Fan { registry }
    }

    async fn handle_call(&mut self, n: u64) -> u64 {
        n + 1
    }

    async fn handle_cast(&mut self, _: u64) {}
}

impl Stage for Fan {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        for i in 0..40 {
            out.emit(item * 100 + i).await;
        }
        let answer = self.registry.call_fan(item).await.map_err(|e| e.to_string());
        self.registry.answers.lock().unwrap().push((item, answer));
        for i in 40..80 {
            out.emit(item * 100 + i).await;
        }
    }
}

/// Each item and what its call to the stage returned.
type Answers = Arc<Mutex<Vec<(u64, Result<u64, String>)>>>;

#[genflow::pipeline{ #[replicas(3, ordered)] fan: Fan }]
struct Fans {
    answers: Answers,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_replicas_waiting_for_their_turn_and_calling_each_other_never_hang() {
    for _ in 0..10 {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let fans = Fans::start(answers.clone()).await;
        let output = fans.output().unwrap();
        // A slow reader keeps the output queue full, so replicas wait.
        let collect = tokio::spawn(
            output
                .then(|n| async move {
                    tokio::task::yield_now().await;
                    n
                })
                .collect::<Vec<u64>>(),
        );
        assert_eq!(in_time("feed", fans.feed(stream::iter(0..200u64))).await.unwrap(), 200);
        in_time("shutdown", fans.shutdown()).await;
        let out = in_time("output", collect).await.unwrap();
        let expected: Vec<u64> = (0..200u64).flat_map(|item| (0..80).map(move |i| item * 100 + i)).collect();
        assert_eq!(out, expected, "outputs in input order");
        let answers = answers.lock().unwrap().clone();
        assert_eq!(answers.len(), 200);
        for (item, answer) in answers {
            match answer {
                Ok(n) => assert_eq!(n, item + 1),
                Err(refused) => assert!(refused.starts_with("call would deadlock: fan["), "{refused}"),
            }
        }
    }
}
