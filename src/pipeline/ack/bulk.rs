//! Acknowledgements made in bulk: an [`Acknowledger`] told each input's
//! outcome by key, and [`Acks`], which makes their [`Ack`]s a block at a
//! time.
//!
//! An [`Ack::new`] is one allocation per input, made where the input is
//! sent and freed where its last item is done, usually on another thread,
//! and its callback usually holds a count shared with the sender (an
//! `Arc`). Both cost more than the input's trip through the stages.
//! [`Acks`] makes the acknowledgements of [`SLOTS`] inputs in one
//! allocation (a *block*), each with a slot of its own: its key and what
//! its items report. The block holds the acknowledger once, and is freed
//! when the last of its slots is done.

use std::{
    fmt,
    mem::MaybeUninit,
    ptr::{NonNull, addr_of, addr_of_mut},
    sync::Arc,
};

use super::{
    Ack, Acker, Outcome,
    tag::{Header, Tag, acknowledge},
};
use crate::loom::sync::atomic::{self, AtomicUsize, Ordering};

/// How many acknowledgements one block holds.
const SLOTS: usize = 32;

/// Told the [`Outcome`] of each input sent with an [`Ack`] that an
/// [`Acks`] made from a key of type `K` (a message id, an offset).
///
/// Called once per input, on the task (or thread) where the last item
/// made from the input was done, as an [`Ack::new`] callback is: keep it
/// short and never block in it (an atomic or a short-held lock is fine;
/// never wait on I/O or on the pipeline). A panic in it is caught and
/// logged as a `tracing` warning; so is one in its `drop`, which runs
/// where the last block holding it goes once the `Acks` are gone.
///
/// Implemented for every `Fn(K, Outcome)` closure that is `Send + Sync`,
/// and for an [`Acker`], which sends each key and its outcome into its
/// [`Acknowledgements`](super::Acknowledgements) stream.
///
/// The idea comes from Broadway's acknowledgers: one acknowledger (a
/// module and its `ack_ref`) shared by many messages, each told apart by
/// its own data.
pub trait Acknowledger<K>: Send + Sync + 'static {
    /// The input sent with `key` ended with `outcome`.
    fn acknowledge(&self, key: K, outcome: Outcome);
}

impl<K, F> Acknowledger<K> for F
where
    F: Fn(K, Outcome) + Send + Sync + 'static,
{
    fn acknowledge(&self, key: K, outcome: Outcome) {
        self(key, outcome);
    }
}

impl<K: Send + 'static> Acknowledger<K> for Acker<K> {
    fn acknowledge(&self, key: K, outcome: Outcome) {
        self.send(key, outcome);
    }
}

/// Makes an [`Ack`] per input from a key, 32 at a time, all
/// telling one [`Acknowledger`] their outcomes.
///
/// Each `Ack` is an input's own, as one from [`Ack::new`] is: it fires
/// once, with the outcome of its input alone, as soon as that input is
/// done (not when the other inputs of its block are). What it saves is
/// the cost around it: one allocation per 32 inputs instead of one per
/// input, and no reference count per input shared with the sending
/// thread, so the sender and the last stage do not pass cache lines back
/// and forth (see the guide, "What it costs").
///
/// A block is 32 slots of 40 bytes plus the key (48 bytes with a `u64`
/// key: 1.5 KB a block, on a 64-bit target). The `Acks` holds only the
/// block it is filling; a block is freed once it is full (or the `Acks`
/// dropped) and the last of its inputs is done. So an input held for
/// long (by an aggregate's [`Emitter::hold`](crate::Emitter::hold), say)
/// keeps the 31 slots beside it: a stage holding M inputs for long keeps
/// up to M blocks; where that matters, make those inputs' `Ack`s with
/// [`Ack::new`]. A failed input's failures are kept in a list of their
/// own, allocated at its first failure.
///
/// `Send`, not `Clone`: each task feeding the pipeline makes its own,
/// from the same acknowledger ([`shared`](Self::shared)). With an
/// [`Acker`] as the acknowledger, its stream ends once the `Acks` is
/// dropped and the last of its `Ack`s is done.
///
/// # Examples
///
/// An offset per input, acknowledged to one acknowledger (here, a count
/// of the delivered):
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
/// use futures::{StreamExt, stream};
/// use genflow::{Emitter, ack::{Acks, Outcome}};
///
/// #[genflow::stage]
/// async fn store(record: u64, _: &mut Emitter<()>) {
///     std::hint::black_box(record);
/// }
///
/// #[genflow::pipeline{ store: Store<Records> }]
/// struct Records;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let records = Records::start().await;
/// let delivered = Arc::new(AtomicU64::new(0));
/// let count = delivered.clone();
/// let mut acks = Acks::new(move |_offset: u64, outcome: Outcome| {
///     if outcome.is_delivered() {
///         count.fetch_add(1, Ordering::Relaxed);
///     }
/// });
/// let dropped = acks.ack(1_000); // never sent: reports dropped at once
/// drop(dropped);
/// let inputs = stream::iter(0..1_000u64).map(move |offset| (offset * 2, acks.ack(offset)));
/// records.acked().feed(inputs).await?;
/// records.shutdown().await;
/// assert_eq!(delivered.load(Ordering::Relaxed), 1_000);
/// # Ok(())
/// # }
/// ```
///
/// With an [`Acker`], the keys and outcomes come as a stream
/// ([`channel`](super::channel)): `Acks::new(acker.clone())`.
///
/// The idea comes from Broadway's acknowledgers and Vector's batch
/// notifiers (the finalizers of a batch of events made together).
pub struct Acks<K, A> {
    acknowledger: Arc<A>,
    /// The block acks are made from, and its next free slot.
    block: Option<NonNull<Block<K, A>>>,
    next: usize,
}

// SAFETY: `Acks` owns its `Arc<A>` and one hold on its block, and writes
// only the block's slots it has not handed out yet; the rest of the block
// is shared through its atomic count, and what it holds (`A`, the keys)
// moves to and is used from whichever thread ends a slot, which `A:
// Acknowledger<K>` (`Send + Sync`) and `K: Send` allow.
unsafe impl<K: Send + 'static, A: Acknowledger<K>> Send for Acks<K, A> {}
// SAFETY: a shared `&Acks` makes no acks (that takes `&mut`) and reads
// only its own fields, none of which is written through a shared
// reference.
unsafe impl<K: Send + 'static, A: Acknowledger<K>> Sync for Acks<K, A> {}

impl<K: Send + 'static, A: Acknowledger<K>> Acks<K, A> {
    /// Makes acks that tell `acknowledger` their outcomes. Allocates
    /// nothing until the first [`ack`](Self::ack).
    pub fn new(acknowledger: A) -> Self {
        Self::shared(Arc::new(acknowledger))
    }

    /// As [`new`](Self::new), with an acknowledger shared with other
    /// `Acks` (one per sending task), or one whose state the caller reads
    /// afterwards (a committed offset) through its own clone of the
    /// `Arc`. (An `Arc<A>` is not itself an `Acknowledger`: pass it here,
    /// not to `new`.)
    pub fn shared(acknowledger: Arc<A>) -> Self {
        Acks { acknowledger, block: None, next: 0 }
    }

    /// An acknowledgement that tells the acknowledger `key` with the
    /// input's outcome. Dropped unsent, it reports [`Outcome::Dropped`]
    /// at once, as any `Ack` does. [`Ack::share`] gives more holds on it.
    ///
    /// Allocates a block of 32 slots every 32 calls, nothing otherwise.
    pub fn ack(&mut self, key: K) -> Ack {
        let block = match self.block {
            Some(block) if self.next < SLOTS => block,
            _ => self.fresh_block(),
        };
        // SAFETY: the block is alive (this `Acks` holds it) and slot
        // `next` was never handed out, so nothing else reads or writes
        // it; the slots are reached through raw pointers, never through a
        // reference to the whole block, which other threads read.
        let slot = unsafe {
            let slots = addr_of_mut!((*block.as_ptr()).slots).cast::<MaybeUninit<Slot<K, A>>>();
            let slot = slots.add(self.next).cast::<Slot<K, A>>();
            slot.write(Slot { header: Header::new(end_slot::<K, A>), key, block });
            NonNull::new_unchecked(slot)
        };
        self.next += 1;
        // SAFETY: the slot's header is fresh with one hold, given to the
        // tag; `end_slot` ends it and lets go of the slot's share of the
        // block.
        Ack(unsafe { Tag::from_header(slot.cast::<Header>()) })
    }

    /// Lets the current block go and starts a fresh one.
    fn fresh_block(&mut self) -> NonNull<Block<K, A>> {
        self.retire();
        let block = Block::alloc(self.acknowledger.clone());
        self.block = Some(block);
        self.next = 0;
        block
    }
}

impl<K, A> Acks<K, A> {
    /// Gives up this `Acks`'s hold on its block and the slots it did not
    /// hand out.
    fn retire(&mut self) {
        if let Some(block) = self.block.take() {
            // SAFETY: this `Acks`'s hold and its unused slots are counted
            // in the block's `open`, and given up once, here. (The `Acks`
            // holds the acknowledger too: the block's hold is not the last.)
            drop(unsafe { Block::close(block, SLOTS - self.next + 1) });
        }
    }
}

impl<K, A> Drop for Acks<K, A> {
    fn drop(&mut self) {
        self.retire();
    }
}

impl<K, A> fmt::Debug for Acks<K, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let left = if self.block.is_some() { SLOTS - self.next } else { 0 };
        f.debug_struct("Acks").field("left_in_block", &left).finish_non_exhaustive()
    }
}

/// [`SLOTS`] acknowledgements made together, and the acknowledger they
/// tell.
struct Block<K, A> {
    /// Slots not yet ended (counting those never handed out), plus one
    /// while an [`Acks`] makes acks from the block. The last to go frees
    /// the block.
    open: AtomicUsize,
    acknowledger: Arc<A>,
    /// Written once each, by the `Acks`, as it hands them out.
    slots: [MaybeUninit<Slot<K, A>>; SLOTS],
}

impl<K, A> Block<K, A> {
    fn alloc(acknowledger: Arc<A>) -> NonNull<Self> {
        let block = Box::new(Block {
            open: AtomicUsize::new(SLOTS + 1),
            acknowledger,
            slots: [const { MaybeUninit::uninit() }; SLOTS],
        });
        NonNull::from(Box::leak(block))
    }

    /// Gives up `n` of the block's open count; the last gets the block
    /// back, to drop (which drops its hold on the acknowledger, perhaps
    /// the last).
    ///
    /// # Safety
    ///
    /// The caller's `n` are counted in `open` and used no more after this
    /// call; every slot handed out that is still counted is not read by the
    /// caller after it.
    #[must_use = "the last to close drops the block"]
    unsafe fn close(block: NonNull<Self>, n: usize) -> Option<Box<Self>> {
        // SAFETY: the caller's count keeps the block alive until it drops
        // here; `open` is only reached through its own place.
        let open = unsafe { &*addr_of!((*block.as_ptr()).open) };
        // Release then acquire, as `Arc`'s drop: every slot's end happens
        // before the block is freed.
        if open.fetch_sub(n, Ordering::Release) != n {
            return None;
        }
        atomic::fence(Ordering::Acquire);
        // SAFETY: nothing counts on the block any more; it came from
        // `Box::leak` in `alloc`. Its slots are `MaybeUninit`: dropping the
        // block drops none of them (each ended slot's parts were moved
        // out by `end_slot`).
        Some(unsafe { Box::from_raw(block.as_ptr()) })
    }
}

/// One input's acknowledgement inside a block: its header (first, so a
/// pointer to the slot is a pointer to the header), its key, and its
/// block.
#[repr(C)]
struct Slot<K, A> {
    header: Header,
    key: K,
    block: NonNull<Block<K, A>>,
}

/// Ends a slot: tells the acknowledger the slot's key and outcome, then
/// gives up the slot's share of its block.
///
/// # Safety
///
/// `header` is the header of a live `Slot<K, A>` written by
/// [`Acks::ack`], and no hold on it is left.
unsafe fn end_slot<K: Send + 'static, A: Acknowledger<K>>(header: NonNull<Header>) {
    // SAFETY: by the caller, the slot is initialised and nothing else will
    // read it: its parts are ours to move out.
    let Slot { header, key, block } = unsafe { header.cast::<Slot<K, A>>().as_ptr().read() };
    // SAFETY: the slot's share of the block, given up below, keeps it and
    // its acknowledger alive meanwhile.
    let acknowledger: &A = unsafe { &*addr_of!((*block.as_ptr()).acknowledger) };
    let outcome = header.into_outcome();
    acknowledge(|| acknowledger.acknowledge(key, outcome));
    // SAFETY: the slot's share, given up once; the slot is not read again.
    if let Some(last) = unsafe { Block::close(block, 1) } {
        // The acknowledger may go with the block: its drop is the caller's
        // code too, and must not unwind where the slot ended either (a
        // stage's replica, which would stop).
        acknowledge(|| drop(last));
    }
}

#[cfg(all(test, not(genflow_loom)))]
mod tests {
    use std::sync::Mutex;

    use super::*;

    type Log = Arc<Mutex<Vec<(u32, &'static str)>>>;

    fn logged() -> (Log, Acks<u32, impl Acknowledger<u32>>) {
        let log: Log = Arc::default();
        let seen = log.clone();
        (log, Acks::new(move |key: u32, outcome: Outcome| seen.lock().unwrap().push((key, outcome.kind()))))
    }

    #[test]
    fn each_ack_fires_once_with_its_own_outcome_as_soon_as_it_is_done() {
        let (log, mut acks) = logged();
        let made: Vec<Ack> = (0..70).map(|key| acks.ack(key)).collect();
        let mut made: Vec<Option<Ack>> = made.into_iter().map(Some).collect();
        // Out of order, across three blocks, while `acks` still makes more.
        for key in (0..70).rev().step_by(3) {
            made[key].take().unwrap().0.release();
        }
        let late = acks.ack(70);
        drop(acks);
        for (key, ack) in made.iter_mut().enumerate() {
            if let Some(ack) = ack.take() {
                if key % 2 == 0 {
                    ack.0.release();
                } else {
                    drop(ack);
                }
            }
        }
        drop(late);
        let mut log = log.lock().unwrap().clone();
        log.sort();
        let expected: Vec<(u32, &str)> = (0..71)
            .map(|key| {
                let released = key < 70 && ((69 - key) % 3 == 0 || key % 2 == 0);
                (key as u32, if released { "delivered" } else { "dropped" })
            })
            .collect();
        assert_eq!(log, expected);
    }

    #[test]
    fn a_block_goes_with_its_last_slot_or_its_acks() {
        let acknowledger = Arc::new(|_: u32, _: Outcome| {});
        let mut acks = Acks::shared(acknowledger.clone());
        let first = acks.ack(0);
        assert_eq!(Arc::strong_count(&acknowledger), 3, "ours, the `Acks`'s, the block's");
        drop(acks);
        assert_eq!(Arc::strong_count(&acknowledger), 2, "the block lives on with its slot");
        let shared = first.share();
        drop(first);
        assert_eq!(Arc::strong_count(&acknowledger), 2);
        drop(shared);
        assert_eq!(Arc::strong_count(&acknowledger), 1, "the block went with its last slot");
    }

    #[test]
    fn a_panicking_acknowledger_is_caught_and_the_block_still_freed() {
        let acknowledger = Arc::new(|key: u32, _: Outcome| panic!("acknowledging {key}"));
        let mut acks = Acks::shared(acknowledger.clone());
        let made: Vec<Ack> = (0..40).map(|key| acks.ack(key)).collect();
        drop(acks);
        drop(made);
        assert_eq!(Arc::strong_count(&acknowledger), 1);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_slot_is_a_header_a_key_and_a_pointer() {
        assert_eq!(std::mem::size_of::<Header>(), 32);
        assert_eq!(std::mem::size_of::<Slot<u64, ()>>(), 48);
        assert_eq!(std::mem::size_of::<Slot<(), ()>>(), 40);
    }

    #[test]
    fn slots_end_on_other_threads() {
        let (log, mut acks) = logged();
        let made: Vec<Ack> = (0..1000).map(|key| acks.ack(key)).collect();
        drop(acks);
        let mut halves = made;
        let second = halves.split_off(500);
        let threads =
            [halves, second].map(|acks| std::thread::spawn(move || acks.into_iter().for_each(|ack| ack.0.release())));
        threads.into_iter().for_each(|thread| thread.join().unwrap());
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1000);
        assert!(log.iter().all(|&(_, kind)| kind == "delivered"));
    }
}
