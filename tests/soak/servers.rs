//! The server registry every case starts: a ledger that sums casts, and
//! workers that answer `Eval` by calling on along the plan's edges.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use genflow::{CallError, GenServer, SendError};

use crate::shape::{ServerPlan, WORKERS, mix};

/// Queue sizes of the workers (by index) and of the ledger (last), read by
/// `channel_queue_size()`; set per case before `start`.
pub(crate) static QUEUES: [AtomicUsize; WORKERS + 1] = [const { AtomicUsize::new(1000) }; WORKERS + 1];

#[derive(Clone, Debug)]
pub(crate) enum WorkerMsg {
    /// Answer `worker_eval`.
    Eval(u64),
    /// Add to the worker's sum.
    Add(u64),
    /// The worker's sum.
    Get,
    /// Panic in the handler.
    Panic,
}

/// A worker's answer: `Err` when a nested call failed.
pub(crate) type WorkerReply = Result<u64, String>;

pub(crate) struct Worker<const I: usize> {
    registry: Servers,
    sum: u64,
}

/// What worker `i` answers to `Eval(x)`, or `None` when the calls it makes
/// revisit a worker (a cycle, which must fail rather than hang).
pub(crate) fn worker_eval(plan: &ServerPlan, i: usize, x: u64) -> Option<u64> {
    let mut seen = [false; WORKERS];
    let (mut i, mut x, mut total) = (i, x, 0u64);
    loop {
        if seen[i] {
            return None;
        }
        seen[i] = true;
        total = total.wrapping_add(mix(x ^ (i as u64) << 40));
        match next_hop(plan, i, x) {
            Some((j, y)) => (i, x) = (j, y),
            None => return Some(total),
        }
    }
}

/// Whom worker `i` calls on for `Eval(x)`, with what.
fn next_hop(plan: &ServerPlan, i: usize, x: u64) -> Option<(usize, u64)> {
    let edges = &plan.edges[i];
    let h = mix(plan.seed ^ x ^ (i as u64) << 50);
    (!edges.is_empty() && h % 1000 < plan.forward).then(|| (edges[(h >> 10) as usize % edges.len()], mix(x)))
}

impl<const I: usize> GenServer for Worker<I> {
    type Message = WorkerMsg;
    type Response = WorkerReply;
    type Registry = Servers;

    fn new(registry: Servers) -> Self {
        Worker { registry, sum: 0 }
    }

    async fn handle_call(&mut self, message: WorkerMsg) -> WorkerReply {
        match message {
            WorkerMsg::Eval(x) => {
                let own = mix(x ^ (I as u64) << 40);
                match next_hop(&self.registry.plan, I, x) {
                    None => Ok(own),
                    Some((j, y)) => match self.registry.call_worker(j, WorkerMsg::Eval(y)).await {
                        Ok(Ok(rest)) => Ok(own.wrapping_add(rest)),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(format!("w{I} -> w{j}: {e:?}")),
                    },
                }
            }
            WorkerMsg::Add(v) => {
                self.sum += v;
                Ok(self.sum)
            }
            WorkerMsg::Get => Ok(self.sum),
            WorkerMsg::Panic => panic!("injected handler panic in w{I}"),
        }
    }

    async fn handle_cast(&mut self, message: WorkerMsg) {
        match message {
            WorkerMsg::Add(v) => self.sum += v,
            WorkerMsg::Panic => panic!("injected handler panic in w{I}"),
            WorkerMsg::Eval(_) | WorkerMsg::Get => {}
        }
    }

    async fn terminate(&mut self) {
        self.registry.plan.terminated.fetch_add(1, Ordering::SeqCst);
    }

    fn channel_queue_size() -> usize {
        QUEUES[I].load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum LedgerMsg {
    Add(u64),
    Get,
}

/// Sums the `Add`s it gets; never panics.
pub(crate) struct Ledger {
    registry: Servers,
    sum: u64,
}

impl GenServer for Ledger {
    type Message = LedgerMsg;
    type Response = u64;
    type Registry = Servers;

    fn new(registry: Servers) -> Self {
        Ledger { registry, sum: 0 }
    }

    async fn handle_call(&mut self, message: LedgerMsg) -> u64 {
        if let LedgerMsg::Add(v) = message {
            self.sum += v;
        }
        self.sum
    }

    async fn handle_cast(&mut self, message: LedgerMsg) {
        if let LedgerMsg::Add(v) = message {
            self.sum += v;
        }
    }

    async fn terminate(&mut self) {
        self.registry.plan.terminated.fetch_add(1, Ordering::SeqCst);
    }

    fn channel_queue_size() -> usize {
        QUEUES[WORKERS].load(Ordering::Relaxed)
    }
}

#[genflow::make_registry{ ledger: Ledger, w0: Worker<0>, w1: Worker<1>, w2: Worker<2>, w3: Worker<3> }]
pub(crate) struct Servers {
    pub(crate) plan: Arc<ServerPlan>,
}

/// How many servers `Servers` runs (each runs `terminate` once).
pub(crate) const SERVERS: usize = WORKERS + 1;

impl Servers {
    /// Starts the registry with the plan's queue sizes.
    pub(crate) async fn start_with(plan: Arc<ServerPlan>) -> Servers {
        for (i, q) in plan.queues.iter().enumerate() {
            QUEUES[i].store(*q, Ordering::Relaxed);
        }
        QUEUES[WORKERS].store(plan.ledger_queue, Ordering::Relaxed);
        Servers::start(plan).await
    }

    /// `call_w<i>`.
    pub(crate) async fn call_worker(&self, i: usize, m: WorkerMsg) -> Result<WorkerReply, CallError<WorkerMsg>> {
        match i {
            0 => self.call_w0(m).await,
            1 => self.call_w1(m).await,
            2 => self.call_w2(m).await,
            _ => self.call_w3(m).await,
        }
    }

    /// `call_w<i>_with_timeout`.
    pub(crate) async fn call_worker_with_timeout(
        &self,
        i: usize,
        m: WorkerMsg,
        d: std::time::Duration,
    ) -> Result<WorkerReply, CallError<WorkerMsg>> {
        match i {
            0 => self.call_w0_with_timeout(m, d).await,
            1 => self.call_w1_with_timeout(m, d).await,
            2 => self.call_w2_with_timeout(m, d).await,
            _ => self.call_w3_with_timeout(m, d).await,
        }
    }

    /// `cast_w<i>`.
    pub(crate) async fn cast_worker(&self, i: usize, m: WorkerMsg) -> Result<(), SendError<WorkerMsg>> {
        match i {
            0 => self.cast_w0(m).await,
            1 => self.cast_w1(m).await,
            2 => self.cast_w2(m).await,
            _ => self.cast_w3(m).await,
        }
    }

    /// `try_cast_w<i>`.
    pub(crate) fn try_cast_worker(&self, i: usize, m: WorkerMsg) -> Result<(), SendError<WorkerMsg>> {
        match i {
            0 => self.try_cast_w0(m),
            1 => self.try_cast_w1(m),
            2 => self.try_cast_w2(m),
            _ => self.try_cast_w3(m),
        }
    }
}
