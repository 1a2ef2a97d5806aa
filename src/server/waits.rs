//! The wait-for graph between servers: which server waits on which, so that
//! a call or cast that would close a cycle of waiting servers is refused
//! instead of hanging.
//!
//! Each server's [`ServerState`] holds its outgoing edges: the servers its
//! current handler waits on, through a call (from before it waits for room
//! in the callee's queue until the callee sent the reply) or through a cast
//! waiting for room. A caller adds its edge first, then walks the graph from
//! the callee; if the walk reaches the caller, waiting would never end, so
//! the edge is taken back and the caller gets an error. Edges live behind
//! one lock per server, taken one at a time: of two calls closing the same
//! cycle at once, at least one sees the other's edge (each writes its own
//! edge before reading the others'), so they cannot both miss it.
//!
//! A server can also wait on something that stands for several servers: the
//! replica of an `ordered` stage whose outputs wait for their turn waits on
//! every replica working on an earlier batch. Such a wait is a [`WaitsFor`]
//! node, asked for its servers while the graph is walked, so its edges are
//! always current; it is recorded (and checked) like a call's edge.
//!
//! This is the wait-for graph of deadlock detection in databases and of
//! Erlang's `gen_server:call` to itself, extended to chains: only waits made
//! by a server's own task are edges, so a call from a task a handler spawned,
//! or a wait on anything other than a call or cast (a stage blocked in
//! `emit`, a lock, a channel), is not seen.

use std::sync::{
    Arc, Weak,
    atomic::{AtomicU64, Ordering},
};

use super::state::ServerState;

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Something a server's task waits for that stands for a changing set of
/// servers (see the module docs).
pub(crate) trait WaitsFor: Send + Sync + std::fmt::Debug {
    /// The servers it waits on now.
    fn servers(&self) -> Vec<Arc<ServerState>>;

    /// The id of the server whose task runs this server, if another's: a
    /// `#[fused]` stage runs in the task of the stage before its group.
    fn task(&self) -> Option<usize> {
        None
    }
}

/// A `#[fused]` stage runs in the task of `host`, the first stage of its
/// group: the stages of a group are served one at a time by that task, so
/// each waits on it for good. A call between two stages of one group
/// would wait on its own task, and is refused as a cycle; so is any chain
/// of waits that comes back to the group.
#[derive(Debug)]
pub(crate) struct RunBy {
    host: Weak<ServerState>,
    id: usize,
}

impl RunBy {
    pub(crate) fn new(host: &Arc<ServerState>) -> Self {
        RunBy { host: Arc::downgrade(host), id: host.id }
    }
}

impl WaitsFor for RunBy {
    fn servers(&self) -> Vec<Arc<ServerState>> {
        self.host.upgrade().into_iter().collect()
    }

    fn task(&self) -> Option<usize> {
        Some(self.id)
    }
}

/// `waiter` waits for `what` until this is dropped.
pub(crate) struct WaitingFor {
    waiter: Arc<ServerState>,
}

impl Drop for WaitingFor {
    fn drop(&mut self) {
        self.waiter.set_waits_for(None);
    }
}

/// Records that `waiter` waits for `what`, unless that closes a cycle: then
/// nothing stays recorded and the error names the servers of the cycle.
pub(crate) fn wait_for(waiter: &Arc<ServerState>, what: Arc<dyn WaitsFor>) -> Result<WaitingFor, Vec<String>> {
    waiter.set_waits_for(Some(what.clone()));
    let waiting = WaitingFor { waiter: waiter.clone() };
    for first in what.servers() {
        let mut path = vec![first.clone()];
        if reaches(&first, waiter.id, &mut path, &mut Vec::new()) {
            drop(waiting);
            let mut names = Vec::with_capacity(path.len() + 1);
            names.push(waiter.name().to_string());
            names.extend(path.iter().map(|state| state.name().to_string()));
            return Err(names);
        }
    }
    Ok(waiting)
}

/// An edge of the graph: `caller` waits on a server until this is dropped.
///
/// A call's edge has two owners, the caller (dropped when it stops waiting,
/// e.g. on a timeout) and the queued call (dropped once the reply is sent);
/// the first drop removes the edge, the second finds nothing to remove.
///
/// One pointer wide, so a queued call (which every slot of a server's
/// queue has room for) stays small; the edge itself is on the heap.
#[derive(Debug)]
pub(crate) struct Waiting(Arc<Edge>);

/// Who waits, and the token naming the edge in its list.
#[derive(Debug)]
struct Edge {
    caller: Arc<ServerState>,
    token: u64,
}

impl Waiting {
    /// A second owner of the same edge.
    pub(crate) fn share(&self) -> Waiting {
        Waiting(self.0.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.caller.remove_wait(self.0.token);
    }
}

/// Records that `caller` is about to wait on `callee`.
///
/// # Errors
///
/// If `callee` already waits (directly or through others) on `caller`, the
/// edge is not kept and the cycle comes back as the servers' names, from
/// `caller` round to `caller` again (`["a", "b", "a"]`).
pub(crate) fn wait_on(caller: &Arc<ServerState>, callee: &Arc<ServerState>) -> Result<Waiting, Vec<String>> {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    caller.add_wait(token, callee.clone());
    let waiting = Waiting(Arc::new(Edge { caller: caller.clone(), token }));
    let mut path = vec![callee.clone()];
    let mut seen = Vec::new();
    // The caller's task: its own, or for a fused stage its group's.
    if reaches(callee, caller.task_id(), &mut path, &mut seen) {
        drop(waiting);
        let mut names = Vec::with_capacity(path.len() + 2);
        names.push(caller.name().to_string());
        names.extend(path.iter().map(|state| state.name().to_string()));
        if path.last().is_some_and(|last| last.id != caller.id) {
            // Back to the caller's group: round to the caller itself.
            names.push(caller.name().to_string());
        }
        return Err(names);
    }
    Ok(waiting)
}

/// Depth-first search from `from` for task `target` (a server, or one run
/// by it); on success `path` ends with it.
fn reaches(from: &Arc<ServerState>, target: usize, path: &mut Vec<Arc<ServerState>>, seen: &mut Vec<usize>) -> bool {
    if from.id == target || from.task_id() == target {
        return true;
    }
    if seen.contains(&from.id) {
        return false;
    }
    seen.push(from.id);
    for next in from.waits_on() {
        path.push(next.clone());
        if reaches(&next, target, path, seen) {
            return true;
        }
        path.pop();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::state::Name;

    fn server(name: &'static str) -> Arc<ServerState> {
        Arc::new(ServerState::new(0, Name::new(name), None))
    }

    #[test]
    fn a_chain_back_to_the_caller_is_a_cycle() {
        let (a, b, c) = (server("a"), server("b"), server("c"));
        let ab = wait_on(&a, &b).unwrap();
        let bc = wait_on(&b, &c).unwrap();
        assert_eq!(wait_on(&c, &a).unwrap_err(), ["c", "a", "b", "c"]);
        // The refused edge was not kept.
        assert!(!c.is_waiting());
        drop(bc);
        let ca = wait_on(&c, &a).unwrap();
        assert!(c.is_waiting());
        drop((ab, ca));
        assert!(!a.is_waiting() && !c.is_waiting());
    }

    #[test]
    fn an_edge_goes_with_its_first_owner() {
        let (a, b) = (server("a"), server("b"));
        let ab = wait_on(&a, &b).unwrap();
        let queued = ab.share();
        drop(queued);
        assert!(!a.is_waiting());
        assert_eq!(wait_on(&b, &a).map(drop), Ok(()));
        drop(ab);
    }

    #[test]
    fn waiting_on_a_server_that_waits_elsewhere_is_fine() {
        let (a, b, c) = (server("a"), server("b"), server("c"));
        let _bc = wait_on(&b, &c).unwrap();
        let _cb_other = wait_on(&a, &c).unwrap();
        assert!(wait_on(&a, &b).is_ok());
    }
}
