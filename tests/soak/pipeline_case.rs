//! Runs one pipeline case: start, feed, poke, end, then check accounting,
//! order, metrics, the stages' and servers' state, and the faults stages
//! saw.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{SinkExt, StreamExt, stream};
use genflow::{CallError, Metrics, Output, SendError};

use crate::{
    ensure,
    flows::{Flow, Flow0, Flow1, Flow2, Flow3, Flow4, Flow5, Flow6, Msg},
    servers::{LedgerMsg, SERVERS, Servers, WorkerMsg, worker_eval},
    shape::{Ending, Entry, Expected, Item, Order, OutputUse, PipeCase, mix, order_of, stage_eval},
};

pub(crate) async fn run(case: Arc<PipeCase>) -> Result<(), String> {
    match case.flow {
        0 => run_flow::<Flow0>(case).await,
        1 => run_flow::<Flow1>(case).await,
        2 => run_flow::<Flow2>(case).await,
        3 => run_flow::<Flow3>(case).await,
        4 => run_flow::<Flow4>(case).await,
        5 => run_flow::<Flow5>(case).await,
        _ => run_flow::<Flow6>(case).await,
    }
}

async fn run_flow<F: Flow>(case: Arc<PipeCase>) -> Result<(), String> {
    let plan = Arc::new(case.servers.clone());
    let servers = Servers::start_with(plan.clone()).await;
    let flow = F::start_with(case.clone(), servers.clone()).await;
    let expected = case.expected();
    let replicas: usize = case.modes.iter().map(|m| m.replicas()).sum();

    let output = match case.output {
        OutputUse::NotTaken => None,
        OutputUse::Read => Some(tokio::spawn(read(flow.output().expect("first take"), usize::MAX))),
        OutputUse::DropAfter(n) => Some(tokio::spawn(read(flow.output().expect("first take"), n))),
    };
    let aborted = Arc::new(AtomicBool::new(false));
    let mut poker = Some(tokio::spawn(poke(flow.clone(), case.clone(), aborted.clone())));
    let mut poked_casts = BTreeMap::new();

    // Feed, chunk by chunk; abort in between if the case says so.
    let mut origin = 0u32;
    for (index, &(feed, len)) in case.chunks.iter().enumerate() {
        if case.ending == Ending::Abort(index) {
            if !case.shapes.calls_racing_abort {
                join_poker(&case, &mut poker, &mut poked_casts).await?;
            }
            abort(&flow, &aborted)?;
        }
        let items: Vec<Item> = (origin..origin + len as u32).map(|o| Item::input(case.seed, o, case.keys)).collect();
        origin += len as u32;
        case.step.set(format!("feeding chunk {index} ({feed:?})"));
        let fed = feed_chunk(&flow, &case, feed, items).await;
        match (fed, aborted.load(Ordering::SeqCst)) {
            (Ok(()), false) | (Err(_), true) => {}
            (Err(e), false) => return Err(format!("feeding chunk {index} ({feed:?}): {e}")),
            (Ok(()), true) => return Err(format!("feeding chunk {index} ({feed:?}) after abort succeeded")),
        }
    }
    if case.ending == Ending::Abort(case.chunks.len()) {
        if !case.shapes.calls_racing_abort {
            join_poker(&case, &mut poker, &mut poked_casts).await?;
        }
        abort(&flow, &aborted)?;
    }
    join_poker(&case, &mut poker, &mut poked_casts).await?;

    if aborted.load(Ordering::SeqCst) {
        return after_abort(flow, output, servers, &case).await;
    }

    case.step.set("waiting for every item to be processed");
    // Every item is processed once `processed` reaches the model's counts;
    // then every cast the stages made is queued.
    loop {
        let metrics = flow.metrics();
        if metrics.stages().iter().zip(&expected.received).all(|(s, &r)| s.processed == r) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    case.step.set("checking the stages' sums");
    for (q, &panics) in case.stage_panics.iter().enumerate() {
        if panics > 0 {
            continue;
        }
        let sums = flow.call_all_at(q, Msg::Get).await.map_err(|e| format!("call_s{q}_all(Get): {e:?}"))?;
        let refused = case.refused.lock().unwrap()[q];
        let want = expected.stage_casts[q] + poked_casts.get(&q).copied().unwrap_or(0) - refused;
        ensure!(sums.len() == case.modes[q].replicas(), "call_s{q}_all answered {} replicas", sums.len());
        ensure!(sums.iter().sum::<u64>() == want, "s{q} got casts summing to {:?}, expected {want}", sums);
    }
    let ledger = servers.call_ledger(LedgerMsg::Get).await.map_err(|e| format!("call_ledger(Get): {e:?}"))?;
    ensure!(ledger == expected.ledger, "ledger sum {ledger}, expected {}", expected.ledger);

    case.step.set(format!("ending: {:?}", case.ending));
    let metrics = match case.ending {
        Ending::Drop => {
            drop(flow);
            None
        }
        _ => {
            flow.shutdown().await;
            ensure!(flow.send(Item::input(0, 0, 1)).await.is_err(), "send after shutdown succeeded");
            ensure!(flow.call_at(0, Msg::Get).await.is_err(), "call after shutdown succeeded");
            ensure!(flow.cast_at(0, Msg::Get).await.is_err(), "cast after shutdown succeeded");
            Some(flow.metrics())
        }
    };
    case.step.set("waiting for the output to end");
    let got = match output {
        Some(task) => Some(task.await.map_err(|e| format!("output task: {e}"))?),
        None => None,
    };
    case.step.set("waiting for every replica's terminate");
    // Every replica ran `terminate` (graceful drain), also after a drop.
    while plan.terminated.load(Ordering::SeqCst) < replicas {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if let Some(got) = &got {
        check_output(&case, &expected, got)?;
    }
    if let Some(metrics) = &metrics {
        check_graceful_identities(&case, &expected, metrics, got.as_ref().map(Vec::len))?;
    }
    case.step.set("shutting the servers down");
    end_servers(servers, &plan, replicas).await?;
    check_faults(&case, false)
}

/// Reads at most `limit` items, then drops the output.
async fn read(mut output: Output<Item>, limit: usize) -> Vec<Item> {
    let mut items = Vec::new();
    while items.len() < limit {
        match output.next().await {
            Some(item) => items.push(item),
            None => break,
        }
    }
    items
}

/// Waits for the outside calls and casts (once); `casts` gets what they
/// cast to each stage.
async fn join_poker(
    case: &PipeCase,
    poker: &mut Option<tokio::task::JoinHandle<Result<BTreeMap<usize, u64>, String>>>,
    casts: &mut BTreeMap<usize, u64>,
) -> Result<(), String> {
    if let Some(task) = poker.take() {
        case.step.set("waiting for the outside calls and casts");
        *casts = task.await.map_err(|e| format!("outside calls: {e}"))??;
    }
    Ok(())
}

/// Sends one chunk of inputs the way `feed` says.
async fn feed_chunk<F: Flow>(flow: &F, case: &PipeCase, feed: Entry, items: Vec<Item>) -> Result<(), String> {
    let len = items.len();
    match feed {
        Entry::Send => {
            for item in items {
                flow.send(item).await.map_err(|e| format!("send: {e:?}"))?;
            }
        }
        Entry::TrySend => {
            for mut item in items {
                loop {
                    match flow.try_send_item(item) {
                        Ok(()) => break,
                        Err(SendError::Full(back)) => {
                            item = back;
                            tokio::task::yield_now().await;
                        }
                        Err(e) => return Err(format!("try_send: {e:?}")),
                    }
                }
            }
        }
        Entry::Feed => {
            let n = flow.feed(stream::iter(items)).await.map_err(|e| format!("feed: {e:?}"))?;
            if n != len {
                return Err(format!("feed took {n} of {len} items"));
            }
        }
        Entry::Sink | Entry::HeadSink | Entry::MidSink => {
            let mut sink = match feed {
                Entry::Sink => flow.head_sink(),
                Entry::HeadSink => flow.sink_at(0),
                _ => flow.sink_at(case.mid_stage()),
            };
            sink.send_all(&mut stream::iter(items).map(Ok)).await.map_err(|e| format!("sink: {e:?}"))?;
            sink.close().await.map_err(|e| format!("sink close: {e:?}"))?;
        }
    }
    Ok(())
}

/// Calls and casts from outside while items flow: `Eval` calls (to one
/// replica and to all), `Add` casts, calls into the servers, and the case's
/// handler panics. Returns the sums cast to each stage.
async fn poke<F: Flow>(flow: F, case: Arc<PipeCase>, aborted: Arc<AtomicBool>) -> Result<BTreeMap<usize, u64>, String> {
    let mut rng = fastrand::Rng::with_seed(mix(case.seed ^ 0x9012));
    let n = case.stages.len();
    let mut casts = BTreeMap::new();
    let mut panics = case.stage_panics.clone();
    // A result that is an error is a fault unless the pipeline was aborted.
    let tolerate = |what: String| if aborted.load(Ordering::SeqCst) { Ok(()) } else { Err(what) };
    for _ in 0..case.pokes + panics.iter().sum::<u32>() {
        let q = rng.usize(0..n);
        let x = rng.u64(0..1_000_000);
        match rng.u32(0..5) {
            _ if panics[q] > 0 && rng.bool() => {
                panics[q] -= 1;
                case.poking.set(format!("call_s{q}(Panic)"));
                match flow.call_at(q, Msg::Panic).await {
                    Err(CallError::Panicked) => {}
                    other => tolerate(format!("call_s{q}(Panic) = {other:?}, expected Panicked"))?,
                }
            }
            0 => {
                case.poking.set(format!("call_s{q}(Eval)"));
                match flow.call_at(q, Msg::Eval(x)).await {
                    Ok(v) if v == stage_eval(q, x) => {}
                    Ok(v) => return Err(format!("call_s{q}(Eval({x})) = {v}, expected {}", stage_eval(q, x))),
                    Err(e) => tolerate(format!("call_s{q}(Eval({x})): {e:?}"))?,
                }
            }
            1 => {
                case.poking.set(format!("call_s{q}_all(Eval)"));
                match flow.call_all_at(q, Msg::Eval(x)).await {
                    Ok(v) if v.len() == case.modes[q].replicas() && v.iter().all(|&v| v == stage_eval(q, x)) => {}
                    Ok(v) => return Err(format!("call_s{q}_all(Eval({x})) = {v:?}")),
                    Err(e) => tolerate(format!("call_s{q}_all(Eval({x})): {e:?}"))?,
                }
            }
            2 if case.stage_panics[q] == 0 => {
                let v = rng.u64(1..1000);
                case.poking.set(format!("cast_s{q}(Add)"));
                match flow.cast_at(q, Msg::Add(v)).await {
                    Ok(()) => *casts.entry(q).or_default() += v,
                    Err(e) => tolerate(format!("cast_s{q}(Add({v})): {e:?}"))?,
                }
            }
            _ => {
                let w = rng.usize(0..crate::shape::WORKERS);
                let expected = worker_eval(&case.servers, w, x);
                case.poking.set(format!("call_w{w}(Eval)"));
                match flow.servers().call_worker(w, WorkerMsg::Eval(x)).await {
                    Ok(Ok(v)) if Some(v) == expected => {}
                    Ok(Err(_)) if expected.is_none() => {}
                    Ok(reply) if case.servers.refused_as_cycle(&reply) => {}
                    other => return Err(format!("call_w{w}(Eval({x})) = {other:?}, expected {expected:?}")),
                }
            }
        }
    }
    // Handler panics not sent yet.
    for (q, left) in panics.into_iter().enumerate() {
        for _ in 0..left {
            case.poking.set(format!("call_s{q}(Panic)"));
            match flow.call_at(q, Msg::Panic).await {
                Err(CallError::Panicked) => {}
                other => tolerate(format!("call_s{q}(Panic) = {other:?}, expected Panicked"))?,
            }
        }
    }
    case.poking.set("");
    Ok(casts)
}

fn abort<F: Flow>(flow: &F, aborted: &AtomicBool) -> Result<(), String> {
    aborted.store(true, Ordering::SeqCst);
    flow.abort_all();
    match flow.try_send_item(Item::input(0, 0, 1)) {
        Err(e) if e.is_stopped() => Ok(()),
        other => Err(format!("try_send right after abort = {other:?}")),
    }
}

/// After `abort`: nothing hangs, everything later returns an error.
async fn after_abort<F: Flow>(
    flow: F,
    output: Option<tokio::task::JoinHandle<Vec<Item>>>,
    servers: Servers,
    case: &PipeCase,
) -> Result<(), String> {
    case.step.set("sending after abort");
    ensure!(flow.send(Item::input(0, 0, 1)).await.is_err(), "send after abort succeeded");
    case.step.set("shutdown after abort");
    flow.shutdown().await;
    case.step.set("calls, casts and sends after abort + shutdown");
    for q in 0..case.stages.len() {
        ensure!(flow.call_at(q, Msg::Get).await.is_err(), "call_s{q} after abort + shutdown succeeded");
        ensure!(flow.call_all_at(q, Msg::Get).await.is_err(), "call_s{q}_all after abort + shutdown succeeded");
        ensure!(flow.cast_at(q, Msg::Get).await.is_err(), "cast_s{q} after abort + shutdown succeeded");
        ensure!(
            flow.sink_at(q).send(Item::input(0, 0, 1)).await.is_err(),
            "sink_s{q} after abort + shutdown succeeded"
        );
    }
    ensure!(flow.feed(stream::iter([Item::input(0, 0, 1)])).await.is_err(), "feed after abort + shutdown succeeded");
    case.step.set("waiting for the output to end after abort");
    let got = match output {
        Some(task) => Some(task.await.map_err(|e| format!("output task: {e}"))?),
        None => None,
    };
    check_abort_identities(case, &flow.metrics(), got.as_ref().map(Vec::len))?;
    // Stages may have been stopped halfway through a call or cast to the
    // servers: only the values they got back are checked.
    case.step.set("shutting the servers down");
    servers.shutdown().await;
    ensure!(servers.call_ledger(LedgerMsg::Get).await.is_err(), "call_ledger after shutdown succeeded");
    check_faults(case, true)
}

/// The metrics identities that hold once `shutdown().await` returned after
/// `abort()`, per stage: `received == processed + aborted`, `queued == 0`,
/// the replicas' counts add up; between stages (when nothing was sent into
/// a middle stage from outside): what a stage emitted was received by the
/// next one or dropped; at the tail, what it emitted was read from the
/// output or dropped.
fn check_abort_identities(case: &PipeCase, metrics: &Metrics, output: Option<usize>) -> Result<(), String> {
    let stages = metrics.stages();
    ensure!(stages.len() == case.stages.len(), "metrics list {} stages", stages.len());
    let injected = case.chunks.iter().any(|&(f, _)| f == Entry::MidSink);
    for (pos, s) in stages.iter().enumerate() {
        let name = s.name;
        ensure!(
            s.received == s.processed + s.aborted,
            "{name}: received {} != processed {} + aborted {}",
            s.received,
            s.processed,
            s.aborted
        );
        ensure!(s.failed <= s.processed, "{name}: failed {} > processed {}", s.failed, s.processed);
        ensure!(s.queued == 0, "{name}: {} still queued after abort", s.queued);
        let sum = |f: fn(&genflow::ReplicaMetrics) -> u64| s.replicas.iter().map(f).sum::<u64>();
        ensure!(sum(|r| r.received) == s.received, "{name}: replicas' received do not add up");
        ensure!(sum(|r| r.aborted) == s.aborted, "{name}: replicas' aborted do not add up");
        match stages.get(pos + 1) {
            Some(next) if !injected => ensure!(
                s.emitted == next.received + s.dropped,
                "{name}: emitted {} != {} received {} + dropped {}",
                s.emitted,
                next.name,
                next.received,
                s.dropped
            ),
            Some(_) => {}
            None => match output {
                Some(n) => ensure!(
                    s.emitted == n as u64 + s.dropped,
                    "{name}: emitted {} != output {n} + dropped {}",
                    s.emitted,
                    s.dropped
                ),
                None => {
                    ensure!(s.dropped == s.emitted, "{name}: output not taken, dropped {} of {}", s.dropped, s.emitted)
                }
            },
        }
    }
    Ok(())
}

/// The identities after a graceful ending, per stage: received == processed
/// (the model's count), emitted and failed as the model says, queued == 0,
/// and what a stage emitted was received by the next one (plus what went in
/// from outside) or dropped.
fn check_graceful_identities(
    case: &PipeCase,
    expected: &Expected,
    metrics: &Metrics,
    output: Option<usize>,
) -> Result<(), String> {
    let stages = metrics.stages();
    ensure!(stages.len() == case.stages.len(), "metrics list {} stages", stages.len());
    for (pos, s) in stages.iter().enumerate() {
        let name = s.name;
        ensure!(
            s.received == expected.received[pos],
            "{name}: received {}, expected {}",
            s.received,
            expected.received[pos]
        );
        ensure!(s.processed == s.received, "{name}: processed {} != received {}", s.processed, s.received);
        ensure!(s.failed == expected.failed[pos], "{name}: failed {}, injected {}", s.failed, expected.failed[pos]);
        ensure!(
            s.emitted == expected.emitted[pos],
            "{name}: emitted {}, expected {}",
            s.emitted,
            expected.emitted[pos]
        );
        ensure!(s.queued == 0, "{name}: {} still queued", s.queued);
        let replica_sum: u64 = s.replicas.iter().map(|r| r.received).sum();
        ensure!(replica_sum == s.received, "{name}: replicas received {replica_sum}, stage {}", s.received);
        if let Some(next) = stages.get(pos + 1) {
            ensure!(
                s.emitted + expected.injected[pos + 1] == next.received + s.dropped,
                "{name}: emitted {} + injected into {} {} != its received {} + dropped {}",
                s.emitted,
                next.name,
                expected.injected[pos + 1],
                next.received,
                s.dropped
            );
        } else {
            match output {
                Some(n) => ensure!(
                    s.emitted == n as u64 + s.dropped,
                    "{name}: emitted {} != output {n} + dropped {}",
                    s.emitted,
                    s.dropped
                ),
                None => {
                    ensure!(s.dropped == s.emitted, "{name}: output not taken, dropped {} of {}", s.dropped, s.emitted)
                }
            }
        }
    }
    Ok(())
}

/// The output has the model's items, in the order the shape keeps.
fn check_output(case: &PipeCase, expected: &Expected, got: &[Item]) -> Result<(), String> {
    let describe = |got: &[Item], want: &[Item]| {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        format!(
            "{} items, expected {}; first difference at {at}: {:?} vs {:?}",
            got.len(),
            want.len(),
            got.get(at),
            want.get(at)
        )
    };
    let mut sorted_got = got.to_vec();
    let mut sorted_want = expected.output.clone();
    sorted_got.sort();
    sorted_want.sort();
    if let OutputUse::DropAfter(n) = case.output {
        // Read `n` items (or all, if fewer), then dropped: a part of them.
        ensure!(
            got.len() == n.min(sorted_want.len()),
            "read {} items before dropping the output, expected {}",
            got.len(),
            n.min(sorted_want.len())
        );
        let mut want = sorted_want.iter().peekable();
        for item in &sorted_got {
            while want.next_if(|w| *w < item).is_some() {}
            ensure!(want.next() == Some(item), "output item {item:?} is not expected (or came twice)");
        }
        if order_of(&case.modes) == Order::Exact && !case.chunks.iter().any(|&(f, _)| f == Entry::MidSink) {
            ensure!(got == &expected.output[..got.len()], "output order differs: {}", describe(got, &expected.output));
        }
        return Ok(());
    }
    ensure!(sorted_got == sorted_want, "output is not the expected items: {}", describe(&sorted_got, &sorted_want));
    match order_of(&case.modes) {
        Order::Any => {}
        _ if case.chunks.iter().any(|&(f, _)| f == Entry::MidSink) => {}
        Order::Exact => ensure!(got == expected.output, "output order differs: {}", describe(got, &expected.output)),
        Order::PerKey => {
            for key in 0..case.keys {
                let of = |items: &[Item]| items.iter().filter(|i| i.key == key).cloned().collect::<Vec<_>>();
                let (g, w) = (of(got), of(&expected.output));
                ensure!(g == w, "order of key {key} differs: {}", describe(&g, &w));
            }
        }
    }
    Ok(())
}

/// Ends the server registry; every server ran `terminate`.
async fn end_servers(servers: Servers, plan: &crate::shape::ServerPlan, replicas: usize) -> Result<(), String> {
    servers.shutdown().await;
    ensure!(servers.call_ledger(LedgerMsg::Get).await.is_err(), "call_ledger after shutdown succeeded");
    let terminated = plan.terminated.load(Ordering::SeqCst);
    ensure!(terminated == replicas + SERVERS, "{terminated} terminate calls, expected {}", replicas + SERVERS);
    Ok(())
}

/// No stage saw a wrong answer, nor (unless `aborted`) an error.
fn check_faults(case: &PipeCase, aborted: bool) -> Result<(), String> {
    let faults = case.faults.lock().unwrap();
    let faults: Vec<&String> = faults.iter().filter(|(error, _)| !(aborted && *error)).map(|(_, what)| what).collect();
    ensure!(faults.is_empty(), "{} faults inside stages, first: {}", faults.len(), faults[0]);
    Ok(())
}
