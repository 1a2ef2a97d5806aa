//! Pipeline segments joined by [NATS JetStream](https://docs.nats.io/nats-concepts/jetstream)
//! (feature `nats`).
//!
//! When one machine's cores are not enough, a pipeline is split into
//! segments on several hosts, joined by a real broker rather than a
//! transport of genflow's own: JetStream streams persist what one segment
//! publishes until the next one has processed it, work-queue consumers share
//! a stream's messages between the processes of a segment, and unacknowledged
//! messages are delivered again.
//!
//! This module holds what every segment needs:
//!
//! - [`Connect`]: how to reach the broker, with its real options (token,
//!   user and password, credentials file, TLS). A wrong or missing
//!   credential is an error at once, not a retry loop, and secrets never
//!   appear in `Debug` output or logs.
//! - [`Codec`]: how items become message payloads and back (serde; JSON by
//!   default, or MessagePack, which is compact). A payload that does not
//!   decode is an error, never a panic.
//! - [`NatsError`]: what can go wrong, each case naming what was asked for.
//!
//! The client is [async-nats](https://docs.rs/async-nats), built with only
//! the features a NATS 2.9 server supports (`jetstream`, `nkeys` for
//! credentials files, `ring` for TLS).
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use genflow::nats::{Codec, Connect};
//!
//! let client = Connect::new("nats://127.0.0.1:4222").token("s3cret").connect().await?;
//! let payload = Codec::Json.encode(&vec![1u32, 2, 3])?;
//! client.publish("numbers", payload).await?;
//! # Ok(())
//! # }
//! ```

mod acker;
mod codec;
mod connect;
pub mod dead_letter;
mod error;
mod sink;
mod source;

pub use codec::Codec;
pub use connect::Connect;
pub use error::NatsError;
pub use sink::{Sink, SinkStats};
pub use source::{Source, SourceHandle, SourceStats};
