//! Runs one registry case: concurrent clients call and cast the workers and
//! the ledger; then handler panics restart some workers; then the registry
//! ends. Every answer is checked against `worker_eval`, every sum against
//! what the clients cast.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use genflow::{CallError, SendError};

use crate::{
    ensure,
    servers::{LedgerMsg, SERVERS, Servers, WorkerMsg, worker_eval},
    shape::{Ending, RegistryCase, WORKERS, mix},
};

pub(crate) async fn run(case: Arc<RegistryCase>) -> Result<(), String> {
    let plan = Arc::new(case.servers.clone());
    let servers = Servers::start_with(plan.clone()).await;

    case.step.set("phase 1: calls and casts");
    // Phase 1: calls and casts, no panics.
    let mut clients = Vec::new();
    for c in 0..case.clients {
        clients.push(tokio::spawn(client(servers.clone(), case.clone(), c, true)));
    }
    let mut sums = [0u64; WORKERS];
    let mut ledger = 0;
    for client in clients {
        let (s, l) = client.await.map_err(|e| format!("client: {e}"))??;
        for (sum, s) in sums.iter_mut().zip(s) {
            *sum += s;
        }
        ledger += l;
    }
    for (w, &sum) in sums.iter().enumerate() {
        let got = servers.call_worker(w, WorkerMsg::Get).await;
        ensure!(matches!(got, Ok(Ok(s)) if s == sum), "w{w} Get = {got:?}, expected {sum}");
    }
    let got = servers.call_ledger(LedgerMsg::Get).await;
    ensure!(matches!(got, Ok(s) if s == ledger), "ledger Get = {got:?}, expected {ledger}");

    case.step.set("phase 2: handler panics while clients call");
    // Phase 2: handler panics (within the restart limit) while clients call.
    let mut tasks = Vec::new();
    for c in 0..case.clients {
        tasks.push(tokio::spawn({
            let (servers, case) = (servers.clone(), case.clone());
            async move { client(servers, case, c + 100, false).await.map(|_| ()) }
        }));
    }
    for (w, &panics) in case.panics.iter().enumerate() {
        let servers = servers.clone();
        let seed = case.seed;
        tasks.push(tokio::spawn(async move {
            for k in 0..panics {
                if mix(seed ^ (w as u64) << 8 ^ u64::from(k)) % 2 == 0 {
                    match servers.call_worker(w, WorkerMsg::Panic).await {
                        Err(CallError::Panicked) => {}
                        other => return Err(format!("call_w{w}(Panic) = {other:?}, expected Panicked")),
                    }
                } else if let Err(e) = servers.cast_worker(w, WorkerMsg::Panic).await {
                    return Err(format!("cast_w{w}(Panic) = {e:?}"));
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| format!("phase 2 task: {e}"))??;
    }
    // A restarted worker starts from a fresh state.
    for (w, &sum) in sums.iter().enumerate() {
        let want = if case.panics[w] > 0 { 0 } else { sum };
        let got = servers.call_worker(w, WorkerMsg::Get).await;
        ensure!(
            matches!(got, Ok(Ok(s)) if s == want),
            "w{w} Get after {} panics = {got:?}, expected {want}",
            case.panics[w]
        );
    }

    case.step.set(format!("ending: {:?}", case.ending));
    match case.ending {
        Ending::Shutdown => {
            servers.shutdown().await;
            check_stopped(&servers).await?;
            let terminated = plan.terminated.load(Ordering::SeqCst);
            ensure!(terminated == SERVERS, "{terminated} terminate calls after shutdown, expected {SERVERS}");
        }
        Ending::Drop => {
            drop(servers);
            while plan.terminated.load(Ordering::SeqCst) < SERVERS {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ending::Abort(_) => {
            servers.abort();
            servers.shutdown().await;
            check_stopped(&servers).await?;
        }
    }
    Ok(())
}

/// One client: `ops` random operations. With `adds`, also casts and calls
/// that add to the workers and the ledger; returns what it added.
async fn client(
    servers: Servers,
    case: Arc<RegistryCase>,
    c: u32,
    adds: bool,
) -> Result<([u64; WORKERS], u64), String> {
    let mut rng = fastrand::Rng::with_seed(mix(case.seed ^ u64::from(c) << 32));
    let mut sums = [0u64; WORKERS];
    let mut ledger = 0;
    for _ in 0..case.ops {
        let w = rng.usize(0..WORKERS);
        let x = rng.u64(0..1_000_000);
        let v = rng.u64(1..1000);
        match rng.u32(0..if adds { 7 } else { 2 }) {
            0 | 1 => {
                let expected = worker_eval(&case.servers, w, x);
                let got = if rng.bool() {
                    servers.call_worker(w, WorkerMsg::Eval(x)).await
                } else {
                    servers.call_worker_with_timeout(w, WorkerMsg::Eval(x), Duration::from_secs(30)).await
                };
                match got {
                    Ok(Ok(v)) if Some(v) == expected => {}
                    Ok(Err(_)) if expected.is_none() => {}
                    Ok(reply) if case.servers.refused_as_cycle(&reply) => {}
                    other => {
                        return Err(format!("client {c}: call_w{w}(Eval({x})) = {other:?}, expected {expected:?}"));
                    }
                }
            }
            2 => {
                servers.cast_worker(w, WorkerMsg::Add(v)).await.map_err(|e| format!("cast_w{w}: {e:?}"))?;
                sums[w] += v;
            }
            3 => {
                let mut m = WorkerMsg::Add(v);
                loop {
                    match servers.try_cast_worker(w, m) {
                        Ok(()) => break,
                        Err(SendError::Full(back)) => {
                            m = back;
                            tokio::task::yield_now().await;
                        }
                        Err(e) => return Err(format!("try_cast_w{w}: {e:?}")),
                    }
                }
                sums[w] += v;
            }
            4 => {
                // The answer is the sum so far: at least this client's adds.
                sums[w] += v;
                match servers.call_worker(w, WorkerMsg::Add(v)).await {
                    Ok(Ok(s)) if s >= sums[w] => {}
                    other => {
                        return Err(format!("client {c}: call_w{w}(Add({v})) = {other:?}, expected >= {}", sums[w]));
                    }
                }
            }
            5 => {
                servers.cast_ledger(LedgerMsg::Add(v)).await.map_err(|e| format!("cast_ledger: {e:?}"))?;
                ledger += v;
            }
            _ => {
                ledger += v;
                match servers.call_ledger(LedgerMsg::Add(v)).await {
                    Ok(s) if s >= ledger => {}
                    other => {
                        return Err(format!("client {c}: call_ledger(Add({v})) = {other:?}, expected >= {ledger}"));
                    }
                }
            }
        }
    }
    Ok((sums, ledger))
}

/// Every call and cast to a stopped registry returns an error at once.
async fn check_stopped(servers: &Servers) -> Result<(), String> {
    for w in 0..WORKERS {
        let call = servers.call_worker(w, WorkerMsg::Get).await;
        ensure!(call.is_err(), "call_w{w} after the end = {call:?}");
        let cast = servers.cast_worker(w, WorkerMsg::Add(1)).await;
        ensure!(cast.is_err(), "cast_w{w} after the end = {cast:?}");
        let try_cast = servers.try_cast_worker(w, WorkerMsg::Add(1));
        ensure!(try_cast.as_ref().is_err_and(SendError::is_stopped), "try_cast_w{w} after the end = {try_cast:?}");
    }
    ensure!(servers.call_ledger(LedgerMsg::Get).await.is_err(), "call_ledger after the end succeeded");
    Ok(())
}
