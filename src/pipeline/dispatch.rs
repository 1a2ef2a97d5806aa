//! Where items sent to a stage go: its one queue, or the queue of the
//! replica their key belongs to.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use super::queue::Queue;

/// The input queues of one stage, and how an item picks one.
pub(crate) enum Dispatch<T> {
    /// One queue; every replica takes from it when idle.
    Shared(Arc<Queue<T>>),
    /// One queue per replica; an item goes to the queue of its key.
    Keyed { queues: Arc<[Arc<Queue<T>>]>, key: fn(&T) -> u64 },
}

impl<T> Dispatch<T> {
    pub(crate) fn route(&self, item: &T) -> &Queue<T> {
        match self {
            Dispatch::Shared(queue) => queue,
            Dispatch::Keyed { queues, key } => &queues[(key(item) % queues.len() as u64) as usize],
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
