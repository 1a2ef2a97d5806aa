//! Model checks of the queue, the reorder point, the acknowledgement
//! count and the blocks of acknowledgements made in bulk with
//! [loom](https://docs.rs/loom): every interleaving of a few threads (up to
//! a bound on preemptions) is run, and a lost wake-up shows as a deadlock.
//!
//! Run with `RUSTFLAGS="--cfg genflow_loom" LOOM_MAX_PREEMPTIONS=2 cargo
//! test --lib --release loom` (`.ci/run` does, in its own target folder).
//! [`BATCH`] is 2 under this cfg, so a few items exercise full batches.

use std::{
    future::{Future, poll_fn},
    pin::pin,
    sync::Arc,
    task::Poll,
};

use loom::{future::block_on, thread};

use super::{
    BATCH, Failure,
    ack::{Acks, Outcome, items::Items, tag::Tag},
    dispatch::Dispatch,
    emitter::{Blocked, Link},
    queue::{Queue, Waiter},
    reorder::{Place, Reorder},
};

/// Takes items from `queue` until it ends; returns them with the number of
/// the first of each pop.
fn drain(queue: &Queue<u32>, max: usize) -> Vec<(u64, Vec<u32>)> {
    let mut reader = queue.reader();
    let mut got = Vec::new();
    loop {
        let mut batch = Vec::new();
        match block_on(poll_fn(|cx| reader.poll_pop_numbered(cx, &mut batch, max))) {
            Some(first) => got.push((first, batch)),
            None => return got,
        }
    }
}

fn items(popped: &[(u64, Vec<u32>)]) -> Vec<u32> {
    popped.iter().flat_map(|(_, batch)| batch.iter().copied()).collect()
}

/// Pushes `item`, waiting for room.
fn push(queue: &Queue<u32>, item: u32) {
    block_on(async {
        let room = queue.reserve(1).await.expect("open");
        room.commit_all([item]);
    });
}

#[test]
fn loom_writers_and_a_reader_through_one_slot() {
    loom::model(|| {
        let q = Arc::new(Queue::new(1));
        let writers: Vec<_> = (0..2)
            .map(|i| {
                let q = q.clone();
                thread::spawn(move || push(&q, i))
            })
            .collect();
        let closer = {
            let q = q.clone();
            thread::spawn(move || {
                for w in writers {
                    w.join().unwrap();
                }
                q.close();
            })
        };
        let mut got = items(&drain(&q, 2));
        closer.join().unwrap();
        got.sort_unstable();
        assert_eq!(got, [0, 1]);
    });
}

#[test]
fn loom_close_waits_for_reserved_room_and_refuses_new() {
    loom::model(|| {
        let q = Arc::new(Queue::new(2));
        let writer = {
            let q = q.clone();
            thread::spawn(move || {
                block_on(async {
                    match q.reserve(2).await {
                        // Reserved before the close: still goes in.
                        Ok(room) => {
                            room.commit_all([7]);
                            true
                        }
                        Err(_) => false,
                    }
                })
            })
        };
        let closer = {
            let q = q.clone();
            thread::spawn(move || q.close())
        };
        let got = items(&drain(&q, 2));
        let pushed = writer.join().unwrap();
        closer.join().unwrap();
        assert_eq!(got, if pushed { vec![7] } else { vec![] });
    });
}

#[test]
fn loom_items_committed_while_a_clear_runs_are_discarded() {
    loom::model(|| {
        let q = Arc::new(Queue::new(2));
        let writer = {
            let q = q.clone();
            thread::spawn(move || {
                block_on(async {
                    match q.reserve(1).await {
                        Ok(room) => {
                            room.commit_all([7]);
                            true
                        }
                        Err(_) => false,
                    }
                })
            })
        };
        let clearer = {
            let q = q.clone();
            thread::spawn(move || q.close_and_clear())
        };
        let pushed = writer.join().unwrap();
        clearer.join().unwrap();
        // Whether it went in before the clear or came after it, an item
        // pushed is dropped and counted, never left in the queue.
        assert_eq!(q.len(), 0);
        assert_eq!(q.discarded(), u64::from(pushed));
    });
}

#[test]
fn loom_numbered_pops_respect_the_limit() {
    loom::model(|| {
        let q = Arc::new(Queue::new(4));
        q.set_limit(1);
        for i in 0..3 {
            q.try_push(i).unwrap();
        }
        q.close();
        let raiser = {
            let q = q.clone();
            thread::spawn(move || {
                q.raise_limit(2);
                q.raise_limit(3);
            })
        };
        let other = {
            let q = q.clone();
            thread::spawn(move || drain(&q, 1))
        };
        let mut popped = drain(&q, 1);
        raiser.join().unwrap();
        popped.extend(other.join().unwrap());
        // Each item keeps the number of its place in the input.
        popped.sort_unstable();
        assert_eq!(popped, [(0, vec![0]), (1, vec![1]), (2, vec![2])]);
    });
}

#[test]
fn loom_a_woken_writer_that_is_dropped_passes_its_room_on() {
    loom::model(|| {
        let q = Arc::new(Queue::new(1));
        q.try_push(0).unwrap();
        let quitter = {
            let q = q.clone();
            thread::spawn(move || {
                // Waits once, then gives up, whether or not it was woken.
                let mut reserve = pin!(q.reserve(1));
                block_on(poll_fn(|cx| {
                    let _ = reserve.as_mut().poll(cx);
                    Poll::Ready(())
                }));
            })
        };
        let stayer = {
            let q = q.clone();
            thread::spawn(move || push(&q, 1))
        };
        let mut got = Vec::new();
        let mut reader = Waiter::new();
        while got.len() < 2 {
            block_on(poll_fn(|cx| q.poll_pop(cx, &mut reader, &mut got, 1)));
        }
        quitter.join().unwrap();
        stayer.join().unwrap();
        // The quitter may have pushed nothing; the stayer always gets room.
        assert_eq!(got, [0, 1]);
    });
}

#[test]
fn loom_a_woken_reader_that_is_dropped_passes_its_items_on() {
    loom::model(|| {
        let q = Arc::new(Queue::<u32>::new(2));
        let quitter = {
            let q = q.clone();
            thread::spawn(move || {
                let mut waiter = Waiter::new();
                let mut got = Vec::new();
                block_on(poll_fn(|cx| {
                    let _ = q.poll_pop(cx, &mut waiter, &mut got, 1);
                    Poll::Ready(())
                }));
                q.cancel(&mut waiter);
                got
            })
        };
        let stayer = {
            let q = q.clone();
            thread::spawn(move || {
                let mut waiter = Waiter::new();
                let mut got = Vec::new();
                block_on(poll_fn(|cx| q.poll_pop(cx, &mut waiter, &mut got, 1)));
                got
            })
        };
        q.try_push(1).unwrap();
        let quit = quitter.join().unwrap();
        if !quit.is_empty() {
            // The quitter took the first item: the stayer needs another.
            q.try_push(2).unwrap();
        }
        let stayed = stayer.join().unwrap();
        assert_eq!(stayed, [if quit.is_empty() { 1 } else { 2 }]);
    });
}

/// Two replicas of an ordered stage, each with one input: the second one's
/// outputs wait for the first's, whether they fill a batch (and wait for
/// the turn) or not (and wait as a chunk). The queue after holds a batch.
fn ordered_model(second: &'static [u32]) {
    loom::model(move || {
        let out = Arc::new(Queue::new(BATCH));
        let input = Arc::new(Queue::<u32>::new(16));
        let reorder = Arc::new(Reorder::new(Link::new(Dispatch::Shared(out.clone()), None), input.clone(), 2));
        let replica = |first: u64, emitted: &'static [u32]| {
            let mut place = Place::new(reorder.clone());
            thread::spawn(move || {
                block_on(async {
                    let (mut blocked, mut dropped) = (Blocked::default(), 0);
                    place.begin_batch(first);
                    let mut buf = Items::new();
                    for &item in emitted {
                        buf.push(item);
                        if buf.len() >= BATCH {
                            place.send_full(&mut buf, &mut blocked, &mut dropped).await;
                        }
                    }
                    place.end_batch(first, 1, &mut buf, &mut blocked, &mut dropped).await;
                    assert_eq!(dropped, 0);
                });
            })
        };
        let a = replica(0, &[1, 2]);
        let b = replica(1, second);
        let mut got: Vec<u32> = Vec::new();
        let mut reader = Waiter::new();
        while got.len() < 2 + second.len() {
            block_on(poll_fn(|cx| out.poll_pop(cx, &mut reader, &mut got, 4)));
        }
        a.join().unwrap();
        b.join().unwrap();
        let expected: Vec<u32> = [1, 2].iter().chain(second).copied().collect();
        assert_eq!(got, expected);
        // The window (2 * 2 * BATCH inputs) moved on past both inputs:
        // the input queue lets inputs numbered below 2 + 8 out.
        for i in 0..12 {
            input.try_push(i).unwrap();
        }
        let mut taken = Vec::new();
        let mut reader = Waiter::new();
        let _ = block_on(poll_fn(|cx| Poll::Ready(input.poll_pop(cx, &mut reader, &mut taken, 12))));
        input.cancel(&mut reader);
        assert_eq!(taken.len(), 10);
    });
}

#[test]
fn loom_ordered_outputs_wait_for_their_turn() {
    ordered_model(&[10, 11]);
}

#[test]
fn loom_ordered_outputs_finished_early_wait_as_a_chunk() {
    ordered_model(&[10]);
}

/// What the acknowledgement models saw: the outcomes the callback got, and
/// how many times what it captured was freed. Plain `std` types: loom runs
/// its threads one at a time, and these are only read after the joins.
#[derive(Clone, Default)]
struct Seen {
    outcomes: Arc<std::sync::Mutex<Vec<Outcome>>>,
    freed: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts its drop into [`Seen::freed`].
struct Freed(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Freed {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Seen {
    /// A tag whose callback records its outcome and frees a [`Freed`].
    fn tag(&self) -> Tag {
        let (outcomes, freed) = (self.outcomes.clone(), Freed(self.freed.clone()));
        Tag::firing(move |outcome| {
            let _freed = freed;
            outcomes.lock().unwrap().push(outcome);
        })
    }

    /// The kinds of the outcomes seen, and the failures' messages.
    fn outcomes(&self) -> Vec<(&'static str, Vec<String>)> {
        let outcomes = self.outcomes.lock().unwrap();
        outcomes
            .iter()
            .map(|outcome| match outcome {
                Outcome::Failed(failures) => {
                    (outcome.kind(), failures.iter().map(|failure| failure.error().to_string()).collect())
                }
                _ => (outcome.kind(), Vec::new()),
            })
            .collect()
    }

    fn freed(&self) -> usize {
        self.freed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[test]
fn loom_an_acknowledgement_let_go_on_three_threads_fires_once_failed_and_is_freed() {
    loom::model(|| {
        let seen = Seen::default();
        let tag = seen.tag();
        let (released, dropped) = (tag.share(), tag.share());
        let a = thread::spawn(move || released.release());
        let b = thread::spawn(move || drop(dropped));
        tag.fail([&Failure::for_test("boom")]);
        a.join().unwrap();
        b.join().unwrap();
        // Failed beats dropped, whichever hold went last.
        assert_eq!(seen.outcomes(), [("failed", vec!["boom".to_owned()])]);
        assert_eq!(seen.freed(), 1);
    });
}

#[test]
fn loom_a_group_let_go_on_two_threads_passes_its_outcome_to_each_input_once() {
    loom::model(|| {
        let (x, y) = (Seen::default(), Seen::default());
        let (x_tag, y_tag) = (x.tag(), y.tag());
        // x is also held outside the group, by the main thread.
        let x_own = x_tag.share();
        let group = Tag::group(vec![x_tag, y_tag]);
        let share = group.share();
        let a = thread::spawn(move || group.release());
        let b = thread::spawn(move || share.fail([&Failure::for_test("late")]));
        x_own.release();
        a.join().unwrap();
        b.join().unwrap();
        for seen in [&x, &y] {
            assert_eq!(seen.outcomes(), [("failed", vec!["late".to_owned()])]);
            assert_eq!(seen.freed(), 1);
        }
    });
}

#[test]
fn loom_a_group_of_a_group_let_go_on_two_threads_settles_every_input_once() {
    loom::model(|| {
        let (x, y, z) = (Seen::default(), Seen::default(), Seen::default());
        let inner = Tag::group(vec![x.tag(), y.tag()]);
        let inner_share = inner.share();
        // The outer group's end lets go of the inner group's last hold, or
        // the other thread does.
        let outer = Tag::group(vec![inner, z.tag()]);
        let a = thread::spawn(move || drop(outer));
        let b = thread::spawn(move || inner_share.release());
        a.join().unwrap();
        b.join().unwrap();
        for seen in [&x, &y, &z] {
            assert_eq!(seen.outcomes(), [("dropped", vec![])]);
            assert_eq!(seen.freed(), 1);
        }
    });
}

#[test]
fn loom_a_node_failed_on_two_threads_at_once_lists_both_failures() {
    loom::model(|| {
        let seen = Seen::default();
        let tag = seen.tag();
        let other = tag.share();
        // Both may find the failure list missing and race to make it.
        let a = thread::spawn(move || other.fail([&Failure::for_test("left")]));
        tag.fail([&Failure::for_test("right")]);
        a.join().unwrap();
        let mut outcomes = seen.outcomes();
        outcomes.iter_mut().for_each(|(_, errors)| errors.sort());
        assert_eq!(outcomes, [("failed", vec!["left".to_owned(), "right".to_owned()])]);
        assert_eq!(seen.freed(), 1);
    });
}

#[test]
fn loom_slots_ended_on_two_threads_while_the_acks_goes_fire_once_and_free_the_block() {
    loom::model(|| {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = log.clone();
        let acknowledger = Arc::new(move |key: u32, outcome: Outcome| {
            let errors: Vec<String> = match &outcome {
                Outcome::Failed(failures) => failures.iter().map(|f| f.error().to_string()).collect(),
                _ => Vec::new(),
            };
            seen.lock().unwrap().push((key, outcome.kind(), errors));
        });
        let mut acks = Acks::shared(acknowledger.clone());
        let (first, second) = (acks.ack(0), acks.ack(1));
        let share = first.share();
        let one = thread::spawn(move || first.0.release());
        let two = thread::spawn(move || {
            share.0.fail([&Failure::for_test("failed")]);
            drop(second);
        });
        drop(acks);
        one.join().unwrap();
        two.join().unwrap();
        let mut log = log.lock().unwrap().clone();
        log.sort();
        assert_eq!(log, [(0, "failed", vec!["failed".to_string()]), (1, "dropped", Vec::new())]);
        assert_eq!(Arc::strong_count(&acknowledger), 1, "the block was freed");
    });
}
