//! A seeded randomized soak of pipelines and registries, through the public
//! API only.
//!
//! Each case is drawn from a seed: a pipeline case picks one of the declared
//! pipeline shapes (`soak/flows.rs`), queue sizes, what each stage does per
//! item (fan-out, panics, calls and casts to later stages and to a server
//! registry), how inputs go in (`send`, `try_send`, `feed`, `sink`,
//! `sink_<stage>`), outside calls, casts and handler panics, and how it ends
//! (`shutdown`, dropping every handle, `abort`); a registry case drives
//! concurrent clients and handler panics against a registry of servers that
//! call each other. A sequential model (`soak/shape.rs`) says what must come
//! out; each case checks accounting, order, metrics identities, server
//! answers and sums, and runs under a deadline so a hang fails with its seed.
//!
//! Environment:
//! - `GENFLOW_SOAK_CASES`: how many cases (default: a short run for CI);
//! - `GENFLOW_SOAK_SEED`: replay the one case with this seed (as printed);
//! - `GENFLOW_SOAK_BASE`: where the sequence of case seeds starts (default 0);
//! - `GENFLOW_SOAK_KEEP_GOING=1`: report every failing case, not just the
//!   first;
//! - `GENFLOW_SOAK_REPEAT`: run each case this many times (for a failure
//!   that depends on timing);
//! - `GENFLOW_SOAK_VERBOSE=1`: print each case's seed and shape as it starts;
//! - `GENFLOW_SOAK_SHAPES`: which of the optional shapes to generate,
//!   comma-separated (see `Shapes`), `all` (the default) or `none`.
//!
//! A long run: `GENFLOW_SOAK_CASES=20000 cargo test --release --test soak`.

#[path = "soak/flows.rs"]
mod flows;
#[path = "soak/pipeline_case.rs"]
mod pipeline_case;
#[path = "support/quiet.rs"]
mod quiet;
#[path = "soak/registry_case.rs"]
mod registry_case;
#[path = "soak/servers.rs"]
mod servers;
#[path = "soak/shape.rs"]
mod shape;

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use shape::{PipeCase, RegistryCase, Shapes, mix};

/// Returns `Err(format!(..))` from the enclosing function unless `cond`.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Cases in the default (CI) run.
const DEFAULT_CASES: u64 = 1000;

/// How long one case may take before it counts as hung.
const DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn soak() {
    quiet_injected_panics();
    let shapes = Shapes::from_env();
    let seeds: Vec<u64> = match std::env::var("GENFLOW_SOAK_SEED") {
        Ok(seed) => vec![parse_seed(&seed)],
        Err(_) => {
            let cases = env_u64("GENFLOW_SOAK_CASES").unwrap_or(DEFAULT_CASES);
            let base = env_u64("GENFLOW_SOAK_BASE").unwrap_or(0);
            (0..cases).map(|i| mix(base.wrapping_add(i))).collect()
        }
    };
    let repeat = env_u64("GENFLOW_SOAK_REPEAT").unwrap_or(1);
    let seeds: Vec<u64> = seeds.into_iter().flat_map(|s| std::iter::repeat_n(s, repeat as usize)).collect();
    let keep_going = std::env::var("GENFLOW_SOAK_KEEP_GOING").is_ok_and(|v| v == "1");
    let started = Instant::now();
    let mut failures = Vec::new();
    for (i, &seed) in seeds.iter().enumerate() {
        if let Err(failure) = run_case(seed, shapes) {
            eprintln!("soak case {i} failed: {failure}");
            failures.push(failure);
            if !keep_going {
                break;
            }
        }
    }
    eprintln!("soak: {} cases in {:.1?}, {} failed", seeds.len(), started.elapsed(), failures.len());
    assert!(failures.is_empty(), "{} soak case(s) failed; first:\n{}", failures.len(), failures[0]);
}

/// Runs the case of `seed` on a runtime of its own, under `DEADLINE`.
/// On failure, returns the seed, the case's shape and what went wrong.
fn run_case(seed: u64, shapes: Shapes) -> Result<(), String> {
    type Run = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
    let (multi_thread, description, step, case): (bool, String, Box<dyn Fn() -> String>, Run) = if seed % 4 == 0 {
        let case = Arc::new(RegistryCase::generate(seed, shapes));
        let step = {
            let case = case.clone();
            Box::new(move || case.step.get())
        };
        (case.multi_thread, case.to_string(), step, Box::pin(registry_case::run(case)))
    } else {
        let case = Arc::new(PipeCase::generate(seed, shapes));
        let step = {
            let case = case.clone();
            Box::new(move || match case.poking.get() {
                poking if poking.is_empty() => case.step.get(),
                poking => format!("{} (outside: {poking})", case.step.get()),
            })
        };
        (case.multi_thread, case.to_string(), step, Box::pin(pipeline_case::run(case)))
    };
    if std::env::var("GENFLOW_SOAK_VERBOSE").is_ok_and(|v| v == "1") {
        eprintln!("case {seed:#x}: {description}");
    }
    let runtime = if multi_thread {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    }
    .expect("a runtime");
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async {
            match tokio::time::timeout(DEADLINE, case).await {
                Ok(result) => result,
                Err(_) => Err(format!("hung: not done after {DEADLINE:?}, while {}", step())),
            }
        })
    }))
    .unwrap_or_else(|panic| Err(format!("panicked: {}", panic_message(&*panic))));
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome.map_err(|what| format!("GENFLOW_SOAK_SEED={seed:#x}\n  shape: {description}\n  what: {what}"))
}

fn parse_seed(text: &str) -> u64 {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .unwrap_or_else(|_| panic!("GENFLOW_SOAK_SEED={text} is not a number"))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_string())
}

/// The panics the soak injects are expected; keep them out of the output.
fn quiet_injected_panics() {
    quiet::quiet_panics("injected");
}
