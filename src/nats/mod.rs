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
//!   terminated. It holds at most `prefetch` messages (a count, not
//!   bytes) not yet answered, and sends progress acknowledgements for
//!   slow ones. Its [`SourceStats`] count what it did, failed pulls
//!   included, and carry the error that ended it if its consumer was
//!   deleted.
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
//!   default, or MessagePack, which is compact). A sink names its codec in
//!   each message's `Content-Type` header and a source decodes by that
//!   header, so the two ends of a subject need not agree; a source's own
//!   codec is for messages without the header (published by other
//!   programs). A payload that does not decode is an error, never a
//!   panic.
//! - [`NatsError`]: what can go wrong, each case naming what was asked for.
//!
//! The streams are not created by genflow: create them first (once, when
//! the segments are deployed), as below. A [`Source`] binds its durable
//! consumer to an existing stream; a [`Sink`]'s publish fails (and its item
//! with it) while no stream captures its subject.
//!
//! The client is [async-nats](https://docs.rs/async-nats) 0.46, built with
//! only the features a NATS 2.9 server supports (`jetstream`, `nkeys` for
//! credentials files, `ring` for TLS). [`Source`] and [`Sink`] take its
//! [`async_nats::Client`], which [`Connect::connect`] returns; the crate is
//! re-exported here as [`async_nats`] so that a program uses the very
//! version genflow was built with (another version's `Client` is another
//! type).
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use genflow::nats::{Codec, Connect, async_nats::jetstream};
//!
//! let client = Connect::new("nats://127.0.0.1:4222").token("s3cret").connect().await?;
//! // The streams between the segments, and the dead-letter one.
//! let js = jetstream::new(client.clone());
//! for (name, subject) in [("RAW", "raw.>"), ("PARSED", "parsed.>"), ("DEAD", "dead.>")] {
//!     let config = jetstream::stream::Config {
//!         name: name.to_string(),
//!         subjects: vec![subject.to_string()],
//!         ..Default::default()
//!     };
//!     js.get_or_create_stream(config).await?;
//! }
//! let payload = Codec::Json.encode(&vec![1u32, 2, 3])?;
//! js.publish("raw.numbers", payload).await?.await?;
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

/// The NATS client genflow is built with (async-nats 0.46): its
/// [`Client`](async_nats::Client) is what [`Source`] and [`Sink`] take,
/// and its `jetstream` module creates the streams they use.
pub use async_nats;
pub use codec::Codec;
pub use connect::Connect;
pub use error::NatsError;
pub use sink::{Sink, SinkStats};
pub use source::{Source, SourceHandle, SourceStats};
