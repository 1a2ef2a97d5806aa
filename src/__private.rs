//! Items named by the code that `make_registry` and `pipeline` generate.
//! Not public API: they may change in any release.

pub use crate::{
    config::{Configurable, MAX_REPLICAS, Replicated, Sizes},
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

/// Fails to compile unless `S` is a server of registry `R`: the one check
/// of a registry entry, spanned at it (the rest of the expansion assumes
/// it). A type that is no server is reported with `GenServer`'s message.
pub fn assert_server<S: GenServer<Registry = R>, R>() {}

/// Fails to compile unless `S` is a stage of pipeline `R`: the one check of
/// a pipeline entry, spanned at it (the rest of the expansion assumes it).
/// A type that is no stage is reported with `Stage`'s message.
pub fn assert_stage<S: Stage<Registry = R>, R>() {}
