//! What an idle server and an idle stage replica hold: their task's future
//! lives as long as they do, so what runs once per life (`init`, `finish`,
//! `terminate`) must not take room in it, and a queued call must stay
//! small (the server's queue allocates its slots in blocks of 32).
//! `cargo test --lib footprint -- --nocapture` prints the sizes;
//! `benches/alloc.rs` measures the whole cost in memory.

use std::{future::Future, mem::size_of, sync::Arc};

use super::{Emitter, Stage, metrics::Counters, queue::Queue, run};
use crate::{
    GenServer,
    registry::Ready,
    server::{self, envelope::Envelope, restart::Restarts, state::ServerState, timer::Host},
};

/// A stage whose hooks that run once per life hold `N` bytes across an
/// `.await`; its handlers and `process` are the same whatever `N`.
struct Hooks<const N: usize>;

/// Holds `N` bytes across an `.await`.
async fn hold<const N: usize>() {
    let bytes = [1u8; N];
    tokio::task::yield_now().await;
    std::hint::black_box(bytes);
}

impl<const N: usize> GenServer for Hooks<N> {
    type Message = u64;
    type Response = u64;
    type Registry = ();
    fn new(_: ()) -> Self {
        Hooks
    }
    async fn init(&mut self) {
        hold::<N>().await;
    }
    async fn handle_call(&mut self, n: u64) -> u64 {
        n
    }
    async fn handle_cast(&mut self, _: u64) {}
    async fn terminate(&mut self) {
        hold::<N>().await;
    }
}

impl<const N: usize> Stage for Hooks<N> {
    type In = u64;
    type Out = u64;
    async fn process(&mut self, item: u64, out: &mut Emitter<u64>) {
        out.emit(item).await;
    }
    async fn finish(&mut self, _: &mut Emitter<u64>) {
        hold::<N>().await;
    }
}

/// The size of the future `f` returns, without calling it.
fn future3<R: Future, A, B, C>(_: fn(A, B, C) -> R) -> usize {
    size_of::<R>()
}

/// The same, for a function of eight arguments.
#[allow(clippy::type_complexity, reason = "a function pointer type, spelled out")]
fn future8<R: Future, A, B, C, D, E, F, G, H>(_: fn(A, B, C, D, E, F, G, H) -> R) -> usize {
    size_of::<R>()
}

fn server_task<const N: usize>() -> usize {
    future3(server::run::run::<Hooks<N>> as fn(_, _, _) -> _)
}

fn replica_task<const N: usize>() -> usize {
    future8(run::run::<Hooks<N>, super::batch::Whole> as fn(_, _, _, _, _, _, _, _) -> _)
}

#[test]
fn hooks_run_once_per_life_take_no_room_in_an_idle_task() {
    for (what, size) in [
        ("server task future", server_task::<0>()),
        ("replica task future", replica_task::<0>()),
        ("queued message (u64)", size_of::<Envelope<Hooks<0>>>()),
        ("ServerState", size_of::<ServerState>()),
        ("Emitter<u64>", size_of::<Emitter<u64>>()),
        ("Counters", size_of::<Counters>()),
        ("Queue<u64>", size_of::<Queue<u64>>()),
    ] {
        println!("{what:<24} {size:>5} B");
    }
    assert_eq!(server_task::<4096>(), server_task::<0>());
    assert_eq!(replica_task::<4096>(), replica_task::<0>());
}

/// Tokio allocates a task as its future plus 104 bytes, in steps of 128
/// bytes (on x86-64): with a registry handle of 24 bytes and the task's two
/// wrappers (the current server, the registry's task tracker: 24 bytes), a
/// future of at most 744 bytes puts an idle replica in 896 bytes, and
/// one of at most 232 bytes an idle server in 384 (the bench `alloc`
/// measures both). The emitter's sends that are rare or large (an
/// `ordered` stage's, a fused stage's, a `partition_by` stage's grouped
/// batch, failures, a key function that panicked) run boxed for that, the
/// plain send's futures hold their arguments once, and the parts a task
/// holds for its whole life are kept small.
#[test]
#[cfg(target_pointer_width = "64")]
fn idle_tasks_stay_within_their_allocation_steps() {
    assert!(replica_task::<0>() <= 744, "replica task future: {} B", replica_task::<0>());
    assert!(server_task::<0>() <= 232, "server task future: {} B", server_task::<0>());
    // What a task holds for its whole life.
    // (Its buffers of outputs and of failures are `Items`, whose form
    // takes a word beside its `Vec`.)
    assert!(size_of::<Emitter<u64>>() <= 176, "Emitter<u64>: {} B", size_of::<Emitter<u64>>());
    assert_eq!(size_of::<Option<Ready>>(), size_of::<usize>());
    assert_eq!(size_of_val(&Restarts::new(<Hooks<0> as GenServer>::restart_limit)), size_of::<usize>());
}

/// What timers cost a server that never arms one: the pointer to its
/// timer host in its `ServerState` and the host itself (a weak sender of
/// its queue and the pointer to the list of timers, allocated by the
/// first), made with the queue; its task's future and its envelopes do not
/// grow (asserted above and below).
#[test]
#[cfg(target_pointer_width = "64")]
fn a_server_without_timers_holds_only_its_small_timer_host() {
    // And the pointer to its `tracing` span, boxed only under a
    // subscriber that wants it.
    assert!(size_of::<ServerState>() <= 160, "ServerState: {} B", size_of::<ServerState>());
    assert_eq!(size_of::<Host<Hooks<0>>>(), 24);
}

#[test]
#[cfg(target_pointer_width = "64")]
fn a_queued_call_is_its_message_plus_two_pointers() {
    // The message and the reply's sender, and no room for anything else: a
    // call made by a server carries its wait-for edge in a boxed variant of
    // its own, and the variant tag fits in the call's spare bits.
    assert_eq!(size_of::<Envelope<Hooks<0>>>(), 8 + 2 * size_of::<Arc<()>>());
}
