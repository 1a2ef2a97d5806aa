//! Items named by the code that `make_registry` and `pipeline` generate.
//! Not public API: they may change in any release.

pub use crate::{
    config::{Configurable, MAX_REPLICAS, Replicated, Sizes},
    error::{CallError, FlushError, SendError},
    pipeline::{
        Pipeline, Stage,
        batch::{BatchOf, BatchSpec, Batched, Intake, Whole},
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
/// A type that is no stage is reported with `Stage`'s message, a stage of
/// another registry with [`Hosts`]'s, the type of a stage function written
/// without its pipeline with [`NamesPipeline`]'s.
///
/// Returns the stage's item types, for [`assert_flows`]. For a type that is
/// no stage they are left to inference, which the error above already
/// stopped, so a link to or from that entry reports nothing more.
pub fn assert_stage<S: Stage, R>() -> Ends<S::In, S::Out>
where
    S::Registry: Hosts<S, R>,
{
    Ends(PhantomData)
}

/// `Self`, the `Registry` of stage `S`, is pipeline `P`: implemented by
/// every generated pipeline for itself (`impl<S> Hosts<S, P> for P`), by
/// [`Unknown`] for any pipeline, and by [`NoPipeline`] for none (it reports
/// [`NamesPipeline`]'s message instead).
///
/// The generated pipeline's methods assume only that each entry is a
/// `Stage`, not which `Registry` it has: this check alone says so, once,
/// and the generated `start` hands each stage its pipeline through
/// [`registry_as`].
#[diagnostic::on_unimplemented(
    message = "`{S}` is a stage of `{Self}`, not of pipeline `{P}`",
    label = "a stage of `{Self}`",
    note = "a stage runs in the pipeline its `type Registry` names: make it `{P}` to use this stage here"
)]
pub trait Hosts<S, P> {}

/// The `Registry` of a stage declared with `#[genflow::stage]` on an `impl`
/// block that names none: that error is reported by the macro, and any
/// pipeline accepts the stage without a second one. A stage with this
/// registry never starts: its program does not compile.
#[derive(Clone, Copy, Debug)]
pub struct Unknown(());

impl<S, P> Hosts<S, P> for Unknown {}

/// The default pipeline of a `#[genflow::stage]` function's type, so that
/// the type written without its pipeline (`Parse` for `Parse<Flow>`) is
/// still a type, and a pipeline naming it reports one precise error
/// through [`NamesPipeline`] instead of a missing generic argument at every
/// place the pipeline's expansion names it.
#[derive(Clone, Copy, Debug)]
pub struct NoPipeline(());

impl<S: NamesPipeline<P>, P> Hosts<S, P> for NoPipeline {}

/// Implemented by nothing: the type of a stage function names its pipeline
/// as its parameter.
#[diagnostic::on_unimplemented(
    message = "the stage `{Self}` does not name its pipeline: write `{Self}<{P}>`",
    label = "write `{Self}<{P}>`",
    note = "the type of a `#[genflow::stage]` function is generic over the pipeline it runs in"
)]
pub trait NamesPipeline<P> {}

/// `pipeline` as the `Registry` of a stage, `R`: the same value, since
/// [`assert_stage`] proved the two types equal at compile time (the
/// generated methods do not restate it, so that an entry of another
/// registry is reported only there). One `TypeId` comparison per replica,
/// at start.
///
/// # Panics
///
/// If `R` is not `P`, which [`assert_stage`] rules out at compile time.
pub fn registry_as<P: 'static, R: 'static>(pipeline: &P) -> &R {
    match (pipeline as &dyn Any).downcast_ref::<R>() {
        Some(same) => same,
        None => unreachable!("a stage's `Registry` is its pipeline: checked by `assert_stage`"),
    }
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

/// [`assert_stage`] for a `#[batch(..)]` stage: its `In` is a `Vec` of the
/// items it takes from its queue (reported with [`BatchOf`]'s message),
/// and those items are its end towards the stage before it.
pub fn assert_batch<S: Stage, R>() -> Ends<<S::In as BatchOf>::Item, S::Out>
where
    S::Registry: Hosts<S, R>,
    S::In: BatchOf,
{
    Ends(PhantomData)
}
