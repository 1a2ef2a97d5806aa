//! GenServer-style actors and backpressured multi-stage pipelines on Tokio.
#![warn(unreachable_pub, missing_docs, rust_2018_idioms)]
#![doc(test(no_crate_inject, attr(deny(warnings, rust_2018_idioms))))]

mod error;
pub mod pipeline;
mod registry;
mod server;

#[doc(hidden)]
pub mod __private;

pub use error::{CallError, SendError};
pub use pipeline::{Emitter, InputSink, Metrics, Output, ReplicaMetrics, Stage, StageMetrics};
pub use server::{GenServer, RestartLimit};

#[doc(inline)]
pub use genflow_macros::{make_registry, pipeline};
