//! Servers' bounded queues under pressure: many concurrent casts into small
//! queues (each handled once, in each sender's order, never more waiting
//! than the bound), casts given up while they wait for room, timed calls
//! racing a full queue, abort and shutdown while casts and calls wait for
//! room, places freed one by one as a taken batch is handed out, handlers
//! casting to a full queue, an interval timer through a flooded queue, and
//! a stage's control queue of one while items flow.

use std::{
    pin::pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use futures::poll;
use genflow::{CallError, Emitter, GenServer, SendError, Stage};
use tokio::sync::Semaphore;

/// A generous bound on every wait.
const DEADLINE: Duration = Duration::from_secs(30);

/// What one server saw.
#[derive(Default)]
struct Seen {
    /// Messages handled, in order.
    handled: Mutex<Vec<(u32, u32)>>,
    /// Handlers started (only the server's task raises it).
    started: AtomicUsize,
    /// Casts the test saw complete (raised after each `cast` returned).
    sent: AtomicUsize,
    /// The most casts seen complete and not yet started at once.
    most_in_queue: AtomicUsize,
}

struct Shared {
    /// One per server: bounds 1, 2, 33 and 64.
    seen: [Seen; 4],
    /// `Msg::Gate` takes one permit before it returns.
    gate: Semaphore,
    /// Ticks the `Ticker` handled.
    ticks: AtomicUsize,
    /// Items the `Ticker` handled, in order.
    ticker_items: Mutex<Vec<(u32, u32)>>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Msg {
    /// Sender and sequence number.
    Item(u32, u32),
    /// Waits for a permit of `Shared::gate`.
    Gate,
    /// Casts `Item(100, 0..n)` to the server of bound 1, waiting for room.
    Forward(u32),
    /// Casts to its own server twice; answers 1 if the first was queued
    /// and the second found the queue full.
    CastSelfTwice,
}

/// A server with a queue of `Q` messages.
struct Sink<const Q: usize> {
    registry: App,
}

impl<const Q: usize> Sink<Q> {
    fn seen(&self) -> &Seen {
        let at = match Q {
            1 => 0,
            2 => 1,
            33 => 2,
            _ => 3,
        };
        &self.registry.shared.seen[at]
    }

    async fn handle(&mut self, message: Msg) -> u32 {
        let seen = self.seen();
        let started = seen.started.fetch_add(1, Ordering::SeqCst) + 1;
        // Every message whose cast completed is queued, taken by the
        // receiver, or handled (this one included): while this handler
        // runs, those not started yet hold places, at most `Q`.
        let waiting = seen.sent.load(Ordering::SeqCst).saturating_sub(started);
        seen.most_in_queue.fetch_max(waiting, Ordering::SeqCst);
        match message {
            Msg::Item(sender, seq) => {
                if seq % 7 == 0 {
                    // Slow now and then: the queue fills up.
                    tokio::task::yield_now().await;
                }
                seen.handled.lock().unwrap().push((sender, seq));
                seq
            }
            Msg::Gate => {
                self.registry.shared.gate.acquire().await.unwrap().forget();
                u32::MAX
            }
            Msg::Forward(n) => {
                for seq in 0..n {
                    self.registry.cast_one(Msg::Item(100, seq)).await.unwrap();
                }
                n
            }
            Msg::CastSelfTwice => {
                let (first, second) = match Q {
                    1 => (self.registry.cast_one(Msg::Item(7, 0)).await, self.registry.cast_one(Msg::Item(7, 1)).await),
                    _ => (self.registry.cast_two(Msg::Item(7, 0)).await, self.registry.cast_two(Msg::Item(7, 1)).await),
                };
                u32::from(first.is_ok() && matches!(second, Err(SendError::Full(Msg::Item(7, 1)))))
            }
        }
    }
}

impl<const Q: usize> GenServer for Sink<Q> {
    type Message = Msg;
    type Response = u32;
    type Registry = App;

    fn new(registry: App) -> Self {
        Sink { registry }
    }

    async fn handle_call(&mut self, message: Msg) -> u32 {
        self.handle(message).await
    }

    async fn handle_cast(&mut self, message: Msg) {
        self.handle(message).await;
    }

    fn channel_queue_size() -> usize {
        Q
    }
}

/// A server of bound 1 whose own interval timer ticks every millisecond.
struct Ticker {
    registry: App,
}

impl GenServer for Ticker {
    type Message = Msg;
    type Response = usize;
    type Registry = App;

    fn new(registry: App) -> Self {
        Ticker { registry }
    }

    async fn init(&mut self) {
        self.send_interval(Duration::from_millis(1), Msg::Gate).expect("in the server's task");
    }

    async fn handle_call(&mut self, _: Msg) -> usize {
        self.registry.shared.ticks.load(Ordering::SeqCst)
    }

    async fn handle_cast(&mut self, message: Msg) {
        match message {
            Msg::Item(sender, seq) => self.registry.shared.ticker_items.lock().unwrap().push((sender, seq)),
            // The timer's message.
            _ => {
                self.registry.shared.ticks.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn channel_queue_size() -> usize {
        1
    }
}

#[genflow::make_registry{ one: Sink<1>, two: Sink<2>, wide: Sink<33>, big: Sink<64>, ticker: Ticker }]
struct App {
    shared: Arc<Shared>,
}

fn shared() -> Arc<Shared> {
    Arc::new(Shared {
        seen: Default::default(),
        gate: Semaphore::new(0),
        ticks: AtomicUsize::new(0),
        ticker_items: Mutex::new(Vec::new()),
    })
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future).await.unwrap_or_else(|_| panic!("{what} did not finish in time"))
}

/// Casts `per` items from each of `senders` tasks into the server `at`,
/// counting each completed cast.
async fn flood(app: &App, at: usize, senders: u32, per: u32) {
    let tasks: Vec<_> = (0..senders)
        .map(|sender| {
            let app = app.clone();
            tokio::spawn(async move {
                for seq in 0..per {
                    let message = Msg::Item(sender, seq);
                    match at {
                        0 => app.cast_one(message).await,
                        1 => app.cast_two(message).await,
                        2 => app.cast_wide(message).await,
                        _ => app.cast_big(message).await,
                    }
                    .unwrap();
                    app.shared.seen[at].sent.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for task in tasks {
        within("a sender", task).await.unwrap();
    }
}

/// Checks that each item of `senders` x `per` was handled once, in each
/// sender's order, and that no more than `bound` casts waited at once.
async fn check(app: &App, at: usize, bound: usize, senders: u32, per: u32) {
    // A call after every cast returned is handled after them all.
    let last = Msg::Item(u32::MAX, 0);
    let reply = match at {
        0 => app.call_one(last).await,
        1 => app.call_two(last).await,
        2 => app.call_wide(last).await,
        _ => app.call_big(last).await,
    };
    assert_eq!(reply.unwrap(), 0);
    let seen = &app.shared.seen[at];
    let handled = seen.handled.lock().unwrap().clone();
    assert_eq!(handled.len(), (senders * per) as usize + 1, "bound {bound}");
    assert_eq!(handled.last(), Some(&(u32::MAX, 0)));
    for sender in 0..senders {
        let own: Vec<u32> = handled.iter().filter(|(s, _)| *s == sender).map(|(_, seq)| *seq).collect();
        assert_eq!(own, (0..per).collect::<Vec<_>>(), "bound {bound}, sender {sender}");
    }
    let most = seen.most_in_queue.load(Ordering::SeqCst);
    assert!(most <= bound, "bound {bound}: {most} casts completed and not started at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_casts_into_small_queues_are_handled_once_in_order_within_the_bound() {
    let app = App::start(shared()).await;
    for (at, bound) in [(0, 1), (1, 2), (2, 33), (3, 64)] {
        flood(&app, at, 8, 300).await;
        check(&app, at, bound, 8, 300).await;
    }
    within("shutdown", app.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_queues_flooded_at_once_on_two_workers() {
    let app = App::start(shared()).await;
    let floods: Vec<_> = (0..4)
        .map(|at| {
            let app = app.clone();
            tokio::spawn(async move { flood(&app, at, 6, 200).await })
        })
        .collect();
    for task in floods {
        within("a flood", task).await.unwrap();
    }
    for (at, bound) in [(0, 1), (1, 2), (2, 33), (3, 64)] {
        check(&app, at, bound, 6, 200).await;
    }
    within("shutdown", app.shutdown()).await;
}

/// Waits until the server `at` started `n` handlers.
async fn started(app: &App, at: usize, n: usize) {
    within("handlers starting", async {
        while app.shared.seen[at].started.load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn casts_given_up_while_waiting_for_room_pass_their_place_on_in_line_order() {
    let app = App::start(shared()).await;
    app.cast_one(Msg::Gate).await.unwrap();
    started(&app, 0, 1).await;
    app.cast_one(Msg::Item(0, 0)).await.unwrap();
    let full = app.try_cast_one(Msg::Item(0, 1));
    assert!(matches!(full, Err(SendError::Full(Msg::Item(0, 1)))), "{full:?}");
    // Eight casts stand in line, one poll each.
    let mut waiting: Vec<_> = (1..=8).map(|seq| Some(Box::pin(app.cast_one(Msg::Item(1, seq))))).collect();
    for cast in waiting.iter_mut().flatten() {
        assert!(poll!(cast.as_mut()).is_pending());
    }
    // Those with an odd number give up.
    for (i, cast) in waiting.iter_mut().enumerate() {
        if (i + 1) % 2 == 1 {
            *cast = None;
        }
    }
    let full = app.try_cast_one(Msg::Item(2, 0));
    assert!(matches!(full, Err(SendError::Full(Msg::Item(2, 0)))), "{full:?}");
    app.shared.gate.add_permits(1);
    for cast in waiting.into_iter().flatten() {
        within("a waiting cast", cast).await.unwrap();
    }
    assert_eq!(within("a call", app.call_one(Msg::Item(3, 0))).await.unwrap(), 0);
    let handled = app.shared.seen[0].handled.lock().unwrap().clone();
    assert_eq!(handled, [(0, 0), (1, 2), (1, 4), (1, 6), (1, 8), (3, 0)]);
    within("shutdown", app.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_cancelled_by_select_while_waiting_lose_nothing_else() {
    let app = App::start(shared()).await;
    let tasks: Vec<_> = (0..8u32)
        .map(|sender| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut delivered = Vec::new();
                for seq in 0..200 {
                    let message = Msg::Item(sender, seq);
                    // Every third cast gives up once the task was polled
                    // a few times while it waits.
                    if seq % 3 == 0 {
                        let mut cast = pin!(app.cast_two(message));
                        let mut gave_up = false;
                        for _ in 0..3 {
                            if let std::task::Poll::Ready(result) = poll!(cast.as_mut()) {
                                result.unwrap();
                                delivered.push(seq);
                                gave_up = false;
                                break;
                            }
                            gave_up = true;
                            tokio::task::yield_now().await;
                        }
                        if gave_up {
                            continue;
                        }
                    } else {
                        tokio::select! {
                            result = app.cast_two(message) => {
                                result.unwrap();
                                delivered.push(seq);
                            }
                            () = tokio::task::yield_now(), if seq % 3 == 1 => {}
                        }
                    }
                }
                delivered
            })
        })
        .collect();
    let mut delivered = Vec::new();
    for task in tasks {
        delivered.push(within("a sender", task).await.unwrap());
    }
    assert_eq!(within("a call", app.call_two(Msg::Item(u32::MAX, 0))).await.unwrap(), 0);
    let handled = app.shared.seen[1].handled.lock().unwrap().clone();
    for (sender, sent) in delivered.iter().enumerate() {
        let own: Vec<u32> = handled.iter().filter(|(s, _)| *s == sender as u32).map(|(_, seq)| *seq).collect();
        assert_eq!(&own, sent, "sender {sender}: handled exactly the casts that completed, in order");
    }
    within("shutdown", app.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_calls_racing_a_full_queue_give_back_what_never_entered_it() {
    let app = App::start(shared()).await;
    app.cast_one(Msg::Gate).await.unwrap();
    started(&app, 0, 1).await;
    app.cast_one(Msg::Item(0, 0)).await.unwrap();
    // The queue stays full: the call never enters it.
    let err = within("a timed call", app.call_one_with_timeout(Msg::Item(0, 1), Duration::from_millis(20)))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Timeout(Some(Msg::Item(0, 1)))), "{err:?}");
    // Many timed calls race while the gate opens one permit at a time.
    let calls: Vec<_> = (0..16u32)
        .map(|sender| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                for seq in 0..20 {
                    let timeout = Duration::from_millis(u64::from(seq % 4) + 1);
                    results.push((seq, app.call_one_with_timeout(Msg::Item(1 + sender, seq), timeout).await));
                }
                results
            })
        })
        .collect();
    app.shared.gate.add_permits(1);
    let mut outcomes = Vec::new();
    for (sender, call) in calls.into_iter().enumerate() {
        outcomes.push((sender as u32 + 1, within("timed calls", call).await.unwrap()));
    }
    assert_eq!(within("a call", app.call_one(Msg::Item(99, 0))).await.unwrap(), 0);
    let handled = app.shared.seen[0].handled.lock().unwrap().clone();
    for (sender, results) in outcomes {
        for (seq, result) in results {
            let was = handled.contains(&(sender, seq));
            match result {
                Ok(reply) => assert!(was && reply == seq, "{sender}/{seq} answered {reply} but handled: {was}"),
                Err(CallError::Timeout(Some(message))) => {
                    assert_eq!(message, Msg::Item(sender, seq));
                    assert!(!was, "{sender}/{seq} given back yet handled");
                }
                Err(CallError::Timeout(None)) => {}
                Err(other) => panic!("{sender}/{seq}: {other:?}"),
            }
        }
    }
    within("shutdown", app.shutdown()).await;
}

/// Casts waiting for room in server `two`, with the sender number `n`.
type WaitingCasts = Vec<tokio::task::JoinHandle<(u32, Result<(), SendError<Msg>>)>>;
/// Calls waiting for room in server `two`, with the sender number `n`.
type WaitingCalls = Vec<tokio::task::JoinHandle<(u32, Result<u32, CallError<Msg>>)>>;

/// Starts the registry with server `two` held at its gate and its queue
/// full (items `(0, 0)` and `(0, 1)`), then spawns 16 casts `(1, n)` and
/// 16 calls `(2, n)` that wait for room.
async fn two_full_with_senders_waiting() -> (App, WaitingCasts, WaitingCalls) {
    let app = App::start(shared()).await;
    app.cast_two(Msg::Gate).await.unwrap();
    started(&app, 1, 1).await;
    app.cast_two(Msg::Item(0, 0)).await.unwrap();
    app.cast_two(Msg::Item(0, 1)).await.unwrap();
    let casts: Vec<_> = (0..16u32)
        .map(|n| {
            let app = app.clone();
            tokio::spawn(async move { (n, app.cast_two(Msg::Item(1, n)).await) })
        })
        .collect();
    let calls: Vec<_> = (0..16u32)
        .map(|n| {
            let app = app.clone();
            tokio::spawn(async move { (n, app.call_two(Msg::Item(2, n)).await) })
        })
        .collect();
    (app, casts, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_while_casts_and_calls_wait_for_room_gives_every_message_back() {
    let (app, casts, calls) = two_full_with_senders_waiting().await;
    // These certainly stand in line (one poll each); the spawned ones may
    // or may not have reached the queue before the abort.
    let mut in_line_cast = tokio_test::task::spawn(app.cast_two(Msg::Item(4, 0)));
    let mut in_line_call = tokio_test::task::spawn(app.call_two(Msg::Item(4, 1)));
    assert!(in_line_cast.poll().is_pending());
    assert!(in_line_call.poll().is_pending());
    app.abort();
    let cast = within("a cast in line", in_line_cast).await;
    assert!(matches!(cast, Err(SendError::Closed(Msg::Item(4, 0)))), "{cast:?}");
    let call = within("a call in line", in_line_call).await;
    assert!(matches!(call, Err(CallError::Closed(Msg::Item(4, 1)))), "{call:?}");
    for cast in casts {
        let (n, result) = within("a waiting cast", cast).await.unwrap();
        match result {
            Err(SendError::Closed(message)) => assert_eq!(message, Msg::Item(1, n)),
            other => panic!("cast {n}: {other:?}"),
        }
    }
    for call in calls {
        let (n, result) = within("a waiting call", call).await.unwrap();
        match result {
            Err(CallError::Closed(message)) => assert_eq!(message, Msg::Item(2, n)),
            other => panic!("call {n}: {other:?}"),
        }
    }
    let tried = app.try_cast_two(Msg::Item(3, 0));
    assert!(matches!(tried, Err(SendError::Closed(Msg::Item(3, 0)))), "{tried:?}");
    let cast = within("a cast", app.cast_two(Msg::Item(3, 1))).await;
    assert!(matches!(cast, Err(SendError::Closed(Msg::Item(3, 1)))), "{cast:?}");
    let call = within("a call", app.call_two(Msg::Item(3, 2))).await;
    assert!(matches!(call, Err(CallError::Closed(Msg::Item(3, 2)))), "{call:?}");
    assert!(app.shared.seen[1].handled.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_waits_for_room_in_another_full_queue_and_gets_full_from_its_own() {
    let app = App::start(shared()).await;
    // A server casting to itself on a full queue is told so at once.
    assert_eq!(within("a self cast", app.call_one(Msg::CastSelfTwice)).await.unwrap(), 1);
    assert_eq!(within("a call", app.call_one(Msg::Item(0, 0))).await.unwrap(), 0);
    // `one` is stuck with a full queue; `two` forwards five items to it.
    app.cast_one(Msg::Gate).await.unwrap();
    started(&app, 0, 4).await;
    app.cast_one(Msg::Item(0, 1)).await.unwrap();
    app.cast_two(Msg::Forward(5)).await.unwrap();
    started(&app, 1, 1).await;
    // `two` waits for room, so its queue (bound 2) fills and stays full.
    app.cast_two(Msg::Item(1, 0)).await.unwrap();
    app.cast_two(Msg::Item(1, 1)).await.unwrap();
    let full = app.try_cast_two(Msg::Item(1, 2));
    assert!(matches!(full, Err(SendError::Full(Msg::Item(1, 2)))), "{full:?}");
    app.shared.gate.add_permits(1);
    assert_eq!(within("a call through both queues", app.call_two(Msg::Item(1, 2))).await.unwrap(), 2);
    assert_eq!(within("a call", app.call_one(Msg::Item(0, 2))).await.unwrap(), 2);
    let one = app.shared.seen[0].handled.lock().unwrap().clone();
    let mut expected = vec![(7, 0), (0, 0), (0, 1)];
    expected.extend((0..5).map(|seq| (100, seq)));
    expected.push((0, 2));
    assert_eq!(one, expected);
    let two = app.shared.seen[1].handled.lock().unwrap().clone();
    assert_eq!(two, [(1, 0), (1, 1), (1, 2)]);
    within("shutdown", app.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_timer_keeps_ticking_through_a_flooded_queue_and_stops_with_its_server() {
    let app = App::start(shared()).await;
    let tasks: Vec<_> = (0..4u32)
        .map(|sender| {
            let app = app.clone();
            tokio::spawn(async move {
                // Casts until the timer ticked 20 times through the same
                // full queue (at least 50 casts each).
                let mut seq = 0;
                while seq < 50 || app.shared.ticks.load(Ordering::SeqCst) < 20 {
                    app.cast_ticker(Msg::Item(sender, seq)).await.unwrap();
                    seq += 1;
                }
                seq
            })
        })
        .collect();
    let mut sent = Vec::new();
    for task in tasks {
        sent.push(within("a sender", task).await.unwrap());
    }
    assert!(within("a call", app.call_ticker(Msg::Gate)).await.unwrap() >= 20);
    let items = app.shared.ticker_items.lock().unwrap().clone();
    for (sender, &n) in sent.iter().enumerate() {
        let own: Vec<u32> = items.iter().filter(|(s, _)| *s == sender as u32).map(|(_, seq)| *seq).collect();
        assert_eq!(own, (0..n).collect::<Vec<_>>(), "sender {sender}");
    }
    within("shutdown", app.shutdown()).await;
    let ticks = app.shared.ticks.load(Ordering::SeqCst);
    // Not a synchronisation: a window in which a live timer would tick
    // about 20 times.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(app.shared.ticks.load(Ordering::SeqCst), ticks, "the timer outlived its server");
    let cast = within("a cast", app.cast_ticker(Msg::Item(9, 0))).await;
    assert!(matches!(cast, Err(SendError::Closed(Msg::Item(9, 0)))), "{cast:?}");
}

/// A stage whose control queue holds one message; it records the casts it
/// handles and answers calls with the items it processed.
struct Tally {
    registry: Flow,
    processed: u64,
}

impl GenServer for Tally {
    type Message = (u32, u32);
    type Response = u64;
    type Registry = Flow;

    fn new(registry: Flow) -> Self {
        Tally { registry, processed: 0 }
    }

    async fn handle_call(&mut self, _: (u32, u32)) -> u64 {
        self.processed
    }

    async fn handle_cast(&mut self, message: (u32, u32)) {
        self.registry.casts.lock().unwrap().push(message);
    }

    fn channel_queue_size() -> usize {
        1
    }
}

impl Stage for Tally {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        self.processed += 1;
        out.emit(item).await;
    }
}

#[genflow::pipeline{ tally: Tally }]
struct Flow {
    casts: Arc<Mutex<Vec<(u32, u32)>>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stage_control_queue_of_one_under_casts_and_calls_while_items_flow() {
    let casts = Arc::new(Mutex::new(Vec::new()));
    let flow = Flow::start(casts.clone()).await;
    let drain = tokio::spawn(flow.output().unwrap().collect::<Vec<u64>>());
    let feeder = {
        let flow = flow.clone();
        tokio::spawn(async move {
            for x in 0..3000 {
                flow.send(x).await.unwrap();
            }
        })
    };
    let casters: Vec<_> = (0..4u32)
        .map(|sender| {
            let flow = flow.clone();
            tokio::spawn(async move {
                for seq in 0..300 {
                    flow.cast_tally((sender, seq)).await.unwrap();
                }
            })
        })
        .collect();
    let caller = {
        let flow = flow.clone();
        tokio::spawn(async move {
            // Each answer counts the items processed so far: never fewer
            // than the one before.
            let mut last = 0;
            for _ in 0..200 {
                let now = flow.call_tally((u32::MAX, 0)).await.unwrap();
                assert!(now >= last, "{now} after {last}");
                last = now;
            }
        })
    };
    within("the feeder", feeder).await.unwrap();
    for caster in casters {
        within("a caster", caster).await.unwrap();
    }
    within("the caller", caller).await.unwrap();
    assert!(within("a call", flow.call_tally((u32::MAX, 0))).await.unwrap() <= 3000);
    within("shutdown", flow.shutdown()).await;
    let out = within("the output", drain).await.unwrap();
    assert_eq!(out, (0..3000).collect::<Vec<u64>>());
    let casts = casts.lock().unwrap().clone();
    assert_eq!(casts.len(), 1200);
    for sender in 0..4 {
        let own: Vec<u32> = casts.iter().filter(|(s, _)| *s == sender).map(|(_, seq)| *seq).collect();
        assert_eq!(own, (0..300).collect::<Vec<_>>(), "sender {sender}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_while_casts_and_calls_wait_for_room_handles_exactly_those_that_got_in() {
    let (app, casts, calls) = two_full_with_senders_waiting().await;
    let mut in_line_cast = tokio_test::task::spawn(app.cast_two(Msg::Item(4, 0)));
    assert!(in_line_cast.poll().is_pending());
    let shutdown = {
        let app = app.clone();
        tokio::spawn(async move { app.shutdown().await })
    };
    app.shared.gate.add_permits(1);
    let mut got_in = vec![(0, 0), (0, 1)];
    let cast = within("a cast in line", in_line_cast).await;
    match cast {
        Ok(()) => got_in.push((4, 0)),
        Err(SendError::Closed(message)) => assert_eq!(message, Msg::Item(4, 0)),
        Err(other) => panic!("{other:?}"),
    }
    for cast in casts {
        match within("a waiting cast", cast).await.unwrap() {
            (n, Ok(())) => got_in.push((1, n)),
            (n, Err(SendError::Closed(message))) => assert_eq!(message, Msg::Item(1, n)),
            (n, Err(other)) => panic!("cast {n}: {other:?}"),
        }
    }
    for call in calls {
        match within("a waiting call", call).await.unwrap() {
            (n, Ok(reply)) => {
                assert_eq!(reply, n);
                got_in.push((2, n));
            }
            (n, Err(CallError::Closed(message))) => assert_eq!(message, Msg::Item(2, n)),
            (n, Err(other)) => panic!("call {n}: {other:?}"),
        }
    }
    within("shutdown", shutdown).await.unwrap();
    let mut handled = app.shared.seen[1].handled.lock().unwrap().clone();
    handled.sort_unstable();
    got_in.sort_unstable();
    assert_eq!(handled, got_in, "handled exactly the messages whose cast or call got in");
    let call = within("a call", app.call_two(Msg::Item(3, 0))).await;
    assert!(matches!(call, Err(CallError::Closed(Msg::Item(3, 0)))), "{call:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_is_freed_when_its_message_is_handed_out_not_when_the_batch_is_taken() {
    let app = App::start(shared()).await;
    app.cast_wide(Msg::Gate).await.unwrap();
    started(&app, 2, 1).await;
    // 33 queued: a second gate, then 32 items; the queue is full.
    app.cast_wide(Msg::Gate).await.unwrap();
    for seq in 0..32 {
        app.cast_wide(Msg::Item(0, seq)).await.unwrap();
    }
    let full = app.try_cast_wide(Msg::Item(1, 0));
    assert!(matches!(full, Err(SendError::Full(Msg::Item(1, 0)))), "{full:?}");
    let mut waiting = tokio_test::task::spawn(app.cast_wide(Msg::Item(2, 0)));
    assert!(waiting.poll().is_pending());
    // The first gate opens: the server takes a batch and hands out the
    // second gate, whose place goes to the waiting cast while that gate
    // holds the server.
    app.shared.gate.add_permits(1);
    within("the waiting cast", waiting).await.unwrap();
    started(&app, 2, 2).await;
    assert_eq!(app.shared.seen[2].started.load(Ordering::SeqCst), 2);
    // 32 items and the cast fill the queue again.
    let full = app.try_cast_wide(Msg::Item(1, 1));
    assert!(matches!(full, Err(SendError::Full(Msg::Item(1, 1)))), "{full:?}");
    app.shared.gate.add_permits(1);
    assert_eq!(within("a call", app.call_wide(Msg::Item(3, 0))).await.unwrap(), 0);
    let mut expected: Vec<_> = (0..32).map(|seq| (0, seq)).collect();
    expected.extend([(2, 0), (3, 0)]);
    assert_eq!(*app.shared.seen[2].handled.lock().unwrap(), expected);
    within("shutdown", app.shutdown()).await;
}
