//! What a server's handles and its task share.

use std::sync::{
    OnceLock,
    atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
};

use tokio::task::AbortHandle;

const RUNNING: u8 = 0;
const CLOSED: u8 = 1;
const FAILED: u8 = 2;

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// A fresh id for a server or a registry.
pub(crate) fn next_id() -> usize {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Identity and liveness of one server.
#[derive(Debug)]
pub(crate) struct ServerState {
    pub(crate) id: usize,
    pub(crate) registry: usize,
    status: AtomicU8,
    abort: OnceLock<AbortHandle>,
    /// Set after each message is queued: lets a busy stage check for calls
    /// between items with one load instead of a queue poll.
    mail: AtomicBool,
}

impl ServerState {
    pub(crate) fn new(registry: usize) -> Self {
        ServerState {
            id: next_id(),
            registry,
            status: AtomicU8::new(RUNNING),
            abort: OnceLock::new(),
            mail: AtomicBool::new(false),
        }
    }

    /// Whether the server went down for good after too many panics.
    pub(crate) fn failed(&self) -> bool {
        self.status.load(Ordering::Acquire) == FAILED
    }

    pub(crate) fn set_failed(&self) {
        self.status.store(FAILED, Ordering::Release);
    }

    /// Marks the server closed, unless it already failed.
    pub(crate) fn set_closed(&self) {
        let _ = self.status.compare_exchange(RUNNING, CLOSED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Called after a message was queued.
    pub(crate) fn post(&self) {
        self.mail.store(true, Ordering::Release);
    }

    /// Whether messages may have been queued since the last call. Clears
    /// the mark: whoever sees `true` must then take every queued message.
    pub(crate) fn take_mail(&self) -> bool {
        self.mail.load(Ordering::Relaxed) && self.mail.swap(false, Ordering::Acquire)
    }

    pub(crate) fn set_abort_handle(&self, handle: AbortHandle) {
        let _ = self.abort.set(handle);
    }

    pub(crate) fn abort(&self) {
        if let Some(handle) = self.abort.get() {
            handle.abort();
        }
    }
}
