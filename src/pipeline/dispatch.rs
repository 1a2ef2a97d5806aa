//! Where items sent to a stage go: its one queue, or the queue of the
//! replica their key belongs to.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    panic::{self, AssertUnwindSafe},
    sync::Arc,
};

use super::{Panicked, queue::Queue};

/// The input queues of one stage, and how an item picks one.
pub(crate) enum Dispatch<T> {
    /// One queue; every replica takes from it when idle.
    Shared(Arc<Queue<T>>),
    /// One queue per replica; an item goes to the queue of its key.
    Keyed { queues: Arc<[Arc<Queue<T>>]>, key: fn(&T) -> u64 },
}

impl<T> Dispatch<T> {
    /// The queue `item` goes to.
    ///
    /// # Errors
    ///
    /// The key function of a `partition_by` stage panicked on `item`: the
    /// panic is caught here and its message returned, so the caller decides
    /// what becomes of the item (the sender's error, or a failure of the
    /// stage) and goes on.
    pub(crate) fn route(&self, item: &T) -> Result<&Queue<T>, Panicked> {
        match self {
            Dispatch::Shared(queue) => Ok(queue),
            Dispatch::Keyed { queues, key } => {
                // The key function only reads the item; nothing it might
                // leave half-changed is used after a panic.
                let hash = panic::catch_unwind(AssertUnwindSafe(|| key(item))).map_err(|p| Panicked::new(&p))?;
                Ok(&queues[(hash % queues.len() as u64) as usize])
            }
        }
    }

    pub(crate) fn queues(&self) -> &[Arc<Queue<T>>] {
        match self {
            Dispatch::Shared(queue) => std::slice::from_ref(queue),
            Dispatch::Keyed { queues, .. } => queues,
        }
    }

    pub(crate) fn close(&self) {
        for queue in self.queues() {
            queue.close();
        }
    }
}

impl<T> Clone for Dispatch<T> {
    fn clone(&self) -> Self {
        match self {
            Dispatch::Shared(queue) => Dispatch::Shared(queue.clone()),
            Dispatch::Keyed { queues, key } => Dispatch::Keyed { queues: queues.clone(), key: *key },
        }
    }
}

/// Hashes a partition key the same way in every run.
pub fn hash_key<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}
