//! What a server's handles and its task share.

use std::{
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
};

use tokio::{runtime, task::AbortHandle};

use super::{timer::TimerHost, waits::WaitsFor};

const RUNNING: u8 = 0;
const CLOSED: u8 = 1;
const FAILED: u8 = 2;

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// A fresh id for a server or a registry.
pub(crate) fn next_id() -> usize {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A server's name in its registry: its field name, and for a replica of a
/// stage of several, its index (`enrich[1]`). Made without allocating:
/// written out only when an error names the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Name {
    field: &'static str,
    /// The replica's index, if its stage has several ([`Name::ONLY`] if
    /// not: packed with `stage` in one word).
    index: u32,
    /// Whether it names a stage's replica (for its `tracing` span).
    stage: bool,
}

impl Name {
    /// The name of a plain server.
    pub(crate) const fn new(field: &'static str) -> Self {
        Name { field, index: Name::ONLY, stage: false }
    }

    /// The `index` of a server that is no replica of a stage of several.
    const ONLY: u32 = u32::MAX;

    /// The name of a stage's only replica.
    pub(crate) const fn stage(field: &'static str) -> Self {
        Name { field, index: Name::ONLY, stage: true }
    }

    /// The name of replica `index` of a stage of several.
    pub(crate) const fn replica(field: &'static str, index: u32) -> Self {
        Name { field, index, stage: true }
    }

    /// The `tracing` span its server's task runs in: `stage` (with the
    /// stage's name and the replica's index) or `server` (with its name),
    /// at `INFO`; `None` if no subscriber wants it, so that a server costs
    /// a pointer for it without one.
    fn span(&self) -> Option<Box<tracing::Span>> {
        let span = if self.stage {
            let replica = if self.index == Name::ONLY { 0 } else { self.index };
            tracing::info_span!("stage", stage = self.field, replica)
        } else {
            tracing::info_span!("server", server = self.field)
        };
        (!span.is_disabled()).then(|| Box::new(span))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Name::ONLY => f.write_str(self.field),
            i => write!(f, "{}[{i}]", self.field),
        }
    }
}

/// Identity and liveness of one server.
#[derive(Debug)]
pub(crate) struct ServerState {
    pub(crate) id: usize,
    pub(crate) registry: usize,
    /// The registry field name (`enrich[1]` for a replica), for errors.
    name: Name,
    /// The runtime the registry was started on: timers of timed calls are
    /// made there, so they work from any thread.
    pub(crate) runtime: Option<runtime::Handle>,
    /// The servers this server's task waits on (see `waits.rs`), each with
    /// the token of its edge. Usually empty or one entry.
    waits: Mutex<Vec<(u64, Arc<ServerState>)>>,
    /// What else the task waits for, standing for several servers (the
    /// turn of an ordered stage's batch).
    waits_for: Mutex<Option<Arc<dyn WaitsFor>>>,
    status: AtomicU8,
    abort: OnceLock<AbortHandle>,
    /// Set after each message is queued: lets a busy stage check for calls
    /// between items with one load instead of a queue poll.
    mail: AtomicBool,
    /// The server's timers (`timer.rs`): how a timer reaches its queue, and
    /// those armed. `None` only for states made without a queue (tests).
    timers: Option<Box<dyn TimerHost>>,
    /// The `tracing` span its task runs in (see [`Name`]), entered on
    /// every poll of the task (`context::scope`).
    pub(crate) span: Option<Box<tracing::Span>>,
}

impl ServerState {
    pub(crate) fn new(registry: usize, name: Name, runtime: Option<runtime::Handle>) -> Self {
        ServerState {
            id: next_id(),
            registry,
            name,
            runtime,
            waits: Mutex::new(Vec::new()),
            waits_for: Mutex::new(None),
            status: AtomicU8::new(RUNNING),
            abort: OnceLock::new(),
            mail: AtomicBool::new(false),
            timers: None,
            span: name.span(),
        }
    }

    /// The same, whose timers reach the server's queue through `host`.
    pub(crate) fn with_timers(mut self, host: Box<dyn TimerHost>) -> Self {
        self.timers = Some(host);
        self
    }

    /// The server's timers.
    pub(crate) fn timers(&self) -> Option<&dyn TimerHost> {
        self.timers.as_deref()
    }

    /// Cancels every timer the server armed: it restarts or ended.
    pub(crate) fn cancel_timers(&self) {
        if let Some(host) = &self.timers {
            host.cancel_all();
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

    /// Whether messages may have been queued since the last
    /// [`take_mail`](Self::take_mail), leaving the mark: one load.
    #[inline]
    pub(crate) fn has_mail(&self) -> bool {
        self.mail.load(Ordering::Relaxed)
    }

    /// Whether messages may have been queued since the last call. Clears
    /// the mark: whoever sees `true` must then take every queued message.
    /// Checked between items: inlined, it is one load when nothing came.
    #[inline]
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

    /// The server's name in its registry.
    pub(crate) fn name(&self) -> Name {
        self.name
    }

    fn lock_waits(&self) -> MutexGuard<'_, Vec<(u64, Arc<ServerState>)>> {
        // Nothing panics while the lock is held; recover anyway.
        self.waits.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds the edge `token`: this server waits on `callee`.
    pub(crate) fn add_wait(&self, token: u64, callee: Arc<ServerState>) {
        self.lock_waits().push((token, callee));
    }

    /// Removes the edge `token`, if it is still there.
    pub(crate) fn remove_wait(&self, token: u64) {
        let mut waits = self.lock_waits();
        if let Some(i) = waits.iter().position(|(t, _)| *t == token) {
            waits.swap_remove(i);
        }
    }

    /// Records what else this server's task waits for (`None`: nothing).
    pub(crate) fn set_waits_for(&self, what: Option<Arc<dyn WaitsFor>>) {
        *self.waits_for.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = what;
    }

    /// The servers this one waits on now.
    pub(crate) fn waits_on(&self) -> Vec<Arc<ServerState>> {
        let mut on: Vec<_> = self.lock_waits().iter().map(|(_, callee)| callee.clone()).collect();
        let what = self.waits_for.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        if let Some(what) = what {
            on.extend(what.servers());
        }
        on
    }

    /// The id of the server whose task runs this one: its own, or for a
    /// `#[fused]` stage, the first stage of its group (see `waits::RunBy`).
    pub(crate) fn task_id(&self) -> usize {
        let what = self.waits_for.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        what.as_ref().and_then(|what| what.task()).unwrap_or(self.id)
    }

    /// Whether this server's task waits on another server now.
    pub(crate) fn is_waiting(&self) -> bool {
        !self.lock_waits().is_empty()
    }
}
