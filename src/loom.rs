//! The synchronisation types the pipeline's hand-written queue, reorder
//! point and acknowledgement count are built on: `std`'s normally, [loom](https://docs.rs/loom)'s when
//! built with `RUSTFLAGS="--cfg genflow_loom"`, so the model checks in
//! `pipeline::tests` explore their interleavings.
//!
//! The cfg name is this crate's own (tokio's pattern in `src/loom/mod.rs`,
//! under another name) so the flag does not switch tokio's own `cfg(loom)`
//! code on.

#[cfg(not(genflow_loom))]
pub(crate) mod sync {
    pub(crate) use std::sync::{Mutex, MutexGuard};

    pub(crate) mod atomic {
        pub(crate) use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering, fence};
    }
}

#[cfg(genflow_loom)]
pub(crate) mod sync {
    pub(crate) use loom::sync::{Mutex, MutexGuard};

    pub(crate) mod atomic {
        pub(crate) use loom::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering, fence};
    }
}
