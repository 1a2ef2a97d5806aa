//! Shared parts of the integration tests.

pub(crate) mod nats_server;
