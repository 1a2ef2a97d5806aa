//! Every public type is `Send + Sync` (and `Unpin` where it is a stream, a
//! sink or an error), so it can cross tasks and be held across `.await`.

use genflow::{
    CallError, Emitter, InputSink, Metrics, Output, ReplicaMetrics, RestartLimit, SendError, StageMetrics,
    harness::{Harness, QueueFill, Report},
};

fn send_sync<T: Send + Sync>() {}
fn unpin<T: Unpin>() {}
fn error<T: std::error::Error + Send + Sync + 'static>() {}

/// A message type that is neither `Debug` nor `Clone`.
struct Opaque;

#[test]
fn public_types_are_send_and_sync() {
    send_sync::<CallError<Opaque>>();
    send_sync::<SendError<Opaque>>();
    send_sync::<Emitter<Opaque>>();
    send_sync::<Output<Opaque>>();
    send_sync::<InputSink<Opaque>>();
    send_sync::<Metrics>();
    send_sync::<StageMetrics>();
    send_sync::<ReplicaMetrics>();
    send_sync::<RestartLimit>();
    send_sync::<Harness>();
    send_sync::<Report>();
    send_sync::<QueueFill>();
}

#[test]
fn streams_sinks_and_errors_are_unpin() {
    unpin::<Output<Opaque>>();
    unpin::<InputSink<Opaque>>();
    unpin::<CallError<Opaque>>();
    unpin::<SendError<Opaque>>();
}

#[test]
fn errors_are_errors_whatever_the_message() {
    error::<CallError<Opaque>>();
    error::<SendError<Opaque>>();
}
