//! The soak stage and the declared pipelines it is wired into.
//!
//! One generic stage, `Node<Flow, POS>`, does whatever the case's plan says
//! for each item (see `shape::decide`): call or cast to later stages and to
//! the server registry, panic, emit 0..k children. `FLOWS` in `shape.rs`
//! lists the shapes declared here, in the same order.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use genflow::{CallError, Emitter, GenServer, InputSink, Pipeline, SendError, Stage};

use crate::{
    servers::{LedgerMsg, Servers, WorkerMsg, worker_eval},
    shape::{Item, PipeCase, decide, stage_eval},
};

/// Queue (and mailbox) size of the stage at each position, read by
/// `channel_queue_size()`; set per case before `start`.
pub(crate) static QUEUES: [AtomicUsize; 8] = [const { AtomicUsize::new(1000) }; 8];

#[derive(Clone, Debug)]
pub(crate) enum Msg {
    /// Answer `stage_eval(POS, x)`.
    Eval(u64),
    /// Add to the replica's sum.
    Add(u64),
    /// The replica's sum.
    Get,
    /// Panic in the handler.
    Panic,
}

/// What every soak pipeline offers besides the generated `Pipeline` impl:
/// per-position access to the generated per-stage methods.
pub(crate) trait Flow: Pipeline<In = Item, Out = Item> {
    fn case(&self) -> &Arc<PipeCase>;
    fn servers(&self) -> &Servers;
    fn call_at(&self, pos: usize, m: Msg) -> impl Future<Output = Result<u64, CallError<Msg>>> + Send;
    fn call_all_at(&self, pos: usize, m: Msg) -> impl Future<Output = Result<Vec<u64>, CallError<Msg>>> + Send;
    fn cast_at(&self, pos: usize, m: Msg) -> impl Future<Output = Result<(), SendError<Msg>>> + Send;
    fn try_send_item(&self, item: Item) -> Result<(), SendError<Item>>;
    fn head_sink(&self) -> InputSink<Item>;
    fn sink_at(&self, pos: usize) -> InputSink<Item>;
    fn abort_all(&self);
    fn start_with(case: Arc<PipeCase>, servers: Servers) -> impl Future<Output = Self> + Send;
}

/// The soak stage at position `POS` of pipeline `R`.
pub(crate) struct Node<R, const POS: usize> {
    registry: R,
    sum: u64,
}

impl<R: Flow, const POS: usize> GenServer for Node<R, POS> {
    type Message = Msg;
    type Response = u64;
    type Registry = R;

    fn new(registry: R) -> Self {
        Node { registry, sum: 0 }
    }

    async fn handle_call(&mut self, message: Msg) -> u64 {
        match message {
            Msg::Eval(x) => stage_eval(POS, x),
            Msg::Add(v) => {
                self.sum += v;
                self.sum
            }
            Msg::Get => self.sum,
            Msg::Panic => panic!("injected handler panic in s{POS}"),
        }
    }

    async fn handle_cast(&mut self, message: Msg) {
        match message {
            Msg::Add(v) => self.sum += v,
            Msg::Panic => panic!("injected handler panic in s{POS}"),
            Msg::Eval(_) | Msg::Get => {}
        }
    }

    async fn terminate(&mut self) {
        self.registry.case().servers.terminated.fetch_add(1, Ordering::SeqCst);
    }

    fn channel_queue_size() -> usize {
        QUEUES[POS].load(Ordering::Relaxed)
    }
}

impl<R: Flow, const POS: usize> Stage for Node<R, POS> {
    type In = Item;
    type Out = Item;

    async fn process(&mut self, item: Item, out: &mut Emitter<Item>) {
        let case = self.registry.case().clone();
        let d = decide(&case, POS, &item);
        if d.yield_now {
            tokio::task::yield_now().await;
        }
        if let Some((q, x)) = d.call {
            match self.registry.call_at(q, Msg::Eval(x)).await {
                Ok(v) if v == stage_eval(q, x) && (q != POS || case.modes[q].replicas() > 1) => {}
                // A replica calling itself (with replicas, the call may go to
                // a sibling instead).
                Err(CallError::SelfCall(_)) if q == POS => {}
                // Replicas of one stage calling each other at the same time:
                // the call that would close the cycle is refused.
                Err(CallError::Cycle { servers, .. })
                    if q == POS && servers.iter().all(|s| s.starts_with(&format!("s{POS}["))) => {}
                other => case.fault(other.is_err(), format!("s{POS} call_s{q}(Eval({x})) = {other:?}")),
            }
        }
        if let Some((q, v)) = d.cast {
            match self.registry.cast_at(q, Msg::Add(v)).await {
                Ok(()) => {}
                // A replica casting to itself does not wait for room.
                Err(SendError::Full(_)) if q == POS => case.refused.lock().unwrap()[q] += v,
                // A replica casting to a sibling that waits on it (through a
                // call, a cast or its ordered turn) is refused, not stuck.
                Err(SendError::Cycle { servers, .. })
                    if q == POS && servers.iter().all(|s| s.starts_with(&format!("s{POS}["))) =>
                {
                    case.refused.lock().unwrap()[q] += v
                }
                Err(e) => case.fault(true, format!("s{POS} cast_s{q}(Add({v})) = {e:?}")),
            }
        }
        if let Some((w, x)) = d.server_call {
            let expected = worker_eval(&case.servers, w, x);
            match self.registry.servers().call_worker(w, WorkerMsg::Eval(x)).await {
                Ok(Ok(v)) if Some(v) == expected => {}
                Ok(Err(_)) if expected.is_none() => {}
                Ok(reply) if case.servers.refused_as_cycle(&reply) => {}
                other => case
                    .fault(other.is_err(), format!("s{POS} call_w{w}(Eval({x})) = {other:?}, expected {expected:?}")),
            }
        }
        if let Some(v) = d.ledger_cast {
            if let Err(e) = self.registry.servers().cast_ledger(LedgerMsg::Add(v)).await {
                case.fault(true, format!("s{POS} cast_ledger(Add({v})) = {e:?}"));
            }
        }
        if d.panic {
            panic!("injected panic in s{POS} process");
        }
        for j in 0..d.fanout {
            out.emit(item.child(POS, j)).await;
        }
    }
}

/// Implements `Flow` for a declared pipeline, given the generated
/// `call_<s>`, `call_<s>_all`, `cast_<s>` and `sink_<s>` of each position.
macro_rules! flow {
    ($flow:ident: $($pos:literal => $call:ident $all:ident $cast:ident $sink:ident),+ $(,)?) => {
        impl Flow for $flow {
            fn case(&self) -> &Arc<PipeCase> {
                &self.case
            }

            fn servers(&self) -> &Servers {
                &self.servers
            }

            fn call_at(&self, pos: usize, m: Msg) -> impl Future<Output = Result<u64, CallError<Msg>>> + Send {
                async move {
                    match pos {
                        $($pos => self.$call(m).await,)+
                        _ => unreachable!("no stage at {pos}"),
                    }
                }
            }

            fn call_all_at(&self, pos: usize, m: Msg) -> impl Future<Output = Result<Vec<u64>, CallError<Msg>>> + Send {
                async move {
                    match pos {
                        $($pos => self.$all(m).await,)+
                        _ => unreachable!("no stage at {pos}"),
                    }
                }
            }

            fn cast_at(&self, pos: usize, m: Msg) -> impl Future<Output = Result<(), SendError<Msg>>> + Send {
                async move {
                    match pos {
                        $($pos => self.$cast(m).await,)+
                        _ => unreachable!("no stage at {pos}"),
                    }
                }
            }

            fn try_send_item(&self, item: Item) -> Result<(), SendError<Item>> {
                self.try_send(item)
            }

            fn head_sink(&self) -> InputSink<Item> {
                self.sink()
            }

            fn sink_at(&self, pos: usize) -> InputSink<Item> {
                match pos {
                    $($pos => self.$sink(),)+
                    _ => unreachable!("no stage at {pos}"),
                }
            }

            fn abort_all(&self) {
                self.abort()
            }

            fn start_with(case: Arc<PipeCase>, servers: Servers) -> impl Future<Output = Self> + Send {
                for (pos, plan) in case.stages.iter().enumerate() {
                    QUEUES[pos].store(plan.queue, Ordering::Relaxed);
                }
                $flow::start(case, servers)
            }
        }
    };
}

// The shapes of `shape::FLOWS`, in order.

#[genflow::pipeline{ s0: Node<Flow0, 0> }]
pub(crate) struct Flow0 {
    case: Arc<PipeCase>,
    servers: Servers,
}
flow!(Flow0: 0 => call_s0 call_s0_all cast_s0 sink_s0);

#[genflow::pipeline{ s0: Node<Flow1, 0>, #[replicas(3)] s1: Node<Flow1, 1> }]
pub(crate) struct Flow1 {
    case: Arc<PipeCase>,
    servers: Servers,
}
flow!(Flow1: 0 => call_s0 call_s0_all cast_s0 sink_s0, 1 => call_s1 call_s1_all cast_s1 sink_s1);

#[genflow::pipeline{ s0: Node<Flow2, 0>, #[replicas(2, ordered)] s1: Node<Flow2, 1>, s2: Node<Flow2, 2> }]
pub(crate) struct Flow2 {
    case: Arc<PipeCase>,
    servers: Servers,
}
flow!(Flow2:
    0 => call_s0 call_s0_all cast_s0 sink_s0,
    1 => call_s1 call_s1_all cast_s1 sink_s1,
    2 => call_s2 call_s2_all cast_s2 sink_s2,
);

#[genflow::pipeline{
    #[replicas(2, partition_by = Item::key)] s0: Node<Flow3, 0>,
    #[replicas(3)] s1: Node<Flow3, 1>,
    #[replicas(2, ordered)] s2: Node<Flow3, 2>,
    s3: Node<Flow3, 3>,
}]
pub(crate) struct Flow3 {
    case: Arc<PipeCase>,
    servers: Servers,
}
flow!(Flow3:
    0 => call_s0 call_s0_all cast_s0 sink_s0,
    1 => call_s1 call_s1_all cast_s1 sink_s1,
    2 => call_s2 call_s2_all cast_s2 sink_s2,
    3 => call_s3 call_s3_all cast_s3 sink_s3,
);

#[genflow::pipeline{
    s0: Node<Flow4, 0>, s1: Node<Flow4, 1>, s2: Node<Flow4, 2>, s3: Node<Flow4, 3>, s4: Node<Flow4, 4>,
}]
pub(crate) struct Flow4 {
    case: Arc<PipeCase>,
    servers: Servers,
}
flow!(Flow4:
    0 => call_s0 call_s0_all cast_s0 sink_s0,
    1 => call_s1 call_s1_all cast_s1 sink_s1,
    2 => call_s2 call_s2_all cast_s2 sink_s2,
    3 => call_s3 call_s3_all cast_s3 sink_s3,
    4 => call_s4 call_s4_all cast_s4 sink_s4,
);

#[genflow::pipeline{
    #[replicas(4, ordered)] s0: Node<Flow5, 0>,
    #[replicas(3, partition_by = Item::key)] s1: Node<Flow5, 1>,
}]
pub(crate) struct Flow5 {
    case: Arc<PipeCase>,
    servers: Servers,
}
flow!(Flow5: 0 => call_s0 call_s0_all cast_s0 sink_s0, 1 => call_s1 call_s1_all cast_s1 sink_s1);

#[genflow::pipeline{
    #[replicas(3, ordered)] s0: Node<Flow6, 0>,
    s1: Node<Flow6, 1>,
    #[replicas(2, ordered)] s2: Node<Flow6, 2>,
}]
pub(crate) struct Flow6 {
    case: Arc<PipeCase>,
    servers: Servers,
}
flow!(Flow6:
    0 => call_s0 call_s0_all cast_s0 sink_s0,
    1 => call_s1 call_s1_all cast_s1 sink_s1,
    2 => call_s2 call_s2_all cast_s2 sink_s2,
);
