//! Items named by the code that `make_registry` and `pipeline` generate.
//! Not public API: they may change in any release.

pub use crate::{
    error::{CallError, FlushError, SendError},
    pipeline::{
        Pipeline, Stage,
        flush::{FlushPoint, flush},
        key::hash_key,
        wiring::{Downstream, FlowsInto, Plumbing, StageHandle, StageSpec, StageWiring},
    },
    registry::{Builder, Core, Start},
    server::{GenServer, handle::Handle},
};
pub use ::futures::Stream;
pub use core::{clone::Clone, result::Result, time::Duration};
