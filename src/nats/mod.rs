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
//! A segment is a pipeline between a [`Source`] and a [`Sink`]:
//!
//! - [`Source`] pulls from a stream through a *durable pull consumer*
//!   (every process started with the same consumer name shares its
//!   messages) and sends each message's item into the pipeline with an
//!   [`Ack`](crate::ack::Ack). Once the pipeline is done with it, the
//!   message is acked, naked to be delivered again after a delay, or, on
//!   its last allowed delivery, copied to a [`dead_letter`] subject and
//!   terminated. It holds at most `prefetch` messages not yet answered,
//!   and sends progress acknowledgements for slow ones.
//! - [`Sink`] publishes a pipeline's [`AckedOutput`](crate::AckedOutput)
//!   to a stream and releases each item only once the stream stored it,
//!   so the source upstream acks a message only when everything made from
//!   it is in the next stream. A message id derived from the input
//!   de-duplicates what a redelivery publishes again.
//!
//! Delivery is *at least once*: an input may be processed again after a
//! crash, a timeout or a failure, so make handlers idempotent (docs/guide.md,
//! "Beyond one machine").
//!
//! Every segment also needs:
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
