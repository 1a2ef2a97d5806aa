//! Items named by the code that `make_registry` and `pipeline` generate.
//! Not public API: they may change in any release.

pub use crate::{
    config::{Configurable, Replicated, Sizes},
    error::{CallError, FlushError, SendError},
    pipeline::{
        Pipeline, Stage,
        flush::{FlushPoint, flush},
        key::hash_key,
        stage::fail_item,
        wiring::{Downstream, FlowsInto, Plumbing, StageHandle, StageSpec, StageWiring},
    },
    registry::{Builder, Core, Parts, Start},
    server::{GenServer, handle::Handle},
};
pub use ::futures::Stream;
pub use core::{clone::Clone, result::Result, time::Duration};

use core::{any::Any, marker::PhantomData};

/// Fails to compile unless `S` is a server of registry `R`: the one check
/// of a registry entry, spanned at it (the rest of the expansion assumes
/// it). A type that is no server is reported with `GenServer`'s message.
pub fn assert_server<S: GenServer<Registry = R>, R>() {}

/// Fails to compile unless `S` is a stage of pipeline `R`: the one check of
/// a pipeline entry, spanned at it (the rest of the expansion assumes it).
/// A type that is no stage is reported with `Stage`'s message.
///
/// Returns the stage's item types, for [`assert_flows`]. For a type that is
/// no stage they are left to inference, which the error above already
/// stopped, so a link to or from that entry reports nothing more.
pub fn assert_stage<S: Stage<Registry = R>, R>() -> Ends<S::In, S::Out> {
    Ends(PhantomData)
}

/// The item types a stage takes and emits, as [`assert_stage`] found them.
pub struct Ends<In, Out>(PhantomData<fn(In) -> Out>);

/// Where one stage's items go into the next: the first stage's `Out` and
/// the second's `In`, joined once both are known.
pub struct Joint<Out, Next>(PhantomData<fn(Out) -> Next>);

/// The joint between two stages, `from` then `to`; checked by
/// [`assert_flows`].
pub fn joint<I, O, N, P>(_from: &Ends<I, O>, _to: &Ends<N, P>) -> Joint<O, N> {
    Joint(PhantomData)
}

/// Fails to compile unless the stage before the joint emits what the stage
/// after it takes, reported with `FlowsInto`'s message at the first stage.
///
/// A call of its own, after [`joint`] has named both types, so that the one
/// impl of `FlowsInto` cannot make the second type the first by inference.
/// It is called beside [`assert_stage`], not in the generated `start`:
/// there every entry is assumed to be a stage, so the `Out` of an entry
/// that is none is a type equal to nothing, and the link would fail a
/// second time.
pub fn assert_flows<O: FlowsInto<N>, N>(_: Joint<O, N>) {}

/// `next`, the next stage's input, named by the type the stage before it
/// emits: the same downstream. The generated `start` cannot prove the two
/// types equal (see [`assert_flows`]), which proved it at compile time;
/// this names the type again at the cost of one `TypeId` comparison per
/// stage, at start.
///
/// # Panics
///
/// If `T` is not `N`, which [`assert_flows`] rules out at compile time.
pub fn relink<T: 'static, N: 'static>(next: Downstream<N>) -> Downstream<T> {
    let mut next = Some(next);
    match (&mut next as &mut dyn Any).downcast_mut::<Option<Downstream<T>>>().and_then(Option::take) {
        Some(same) => same,
        None => unreachable!("a stage's `Out` is the next stage's `In`: checked by `assert_flows`"),
    }
}
