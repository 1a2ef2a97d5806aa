//! A pipeline's output published to JetStream: [`Sink`].

use std::{error::Error, fmt, pin::pin, sync::Arc};

use async_nats::{
    Client, HeaderMap,
    header::NATS_MESSAGE_ID,
    jetstream::{self, message::PublishMessage},
};
use futures::{Stream, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use serde::Serialize;

use super::{Codec, NatsError};
use crate::ack::Held;

type Compute<T> = Arc<dyn Fn(&T) -> String + Send + Sync>;

/// Publishes a pipeline's output to JetStream, one message per item, and
/// lets each item's inputs be acknowledged only once a stream stored it.
///
/// [`run`](Self::run) reads `(item, Held)` pairs, as a pipeline's
/// [`AckedOutput`](crate::AckedOutput) yields them, encodes each item
/// with the [codec](Self::codec) and publishes it to its subject (fixed,
/// or [computed per item](Self::subject_by)), with up to
/// [`max_in_flight`](Self::max_in_flight) publishes waiting for their
/// acknowledgement from the stream (the broker's backpressure: when the
/// stream is slow, the sink stops reading, and the pipeline fills up and
/// slows its source). Once the stream acknowledged the publish, the item's
/// [`Held`] is released, so the inputs it came from are delivered: a
/// [`Source`](super::Source) upstream acks its message only after the next
/// segment's stream has the data. A publish that fails fails the `Held`
/// with a [`NatsError`]: the source upstream naks its message, which is
/// delivered and published again.
///
/// Since a message may thus be published twice, give each a message id
/// derived from the input ([`msg_id`](Self::msg_id)): JetStream stores a
/// message whose `Nats-Msg-Id` it has seen within the stream's duplicate
/// window (2 minutes by default) only once.
///
/// An item whose message is larger than the server's `max_payload`
/// fails with [`NatsError::TooLarge`] without being sent (the server
/// would close the connection).
///
/// Each message carries a `Content-Type` header naming the codec
/// ([`Codec::content_type`]): a [`Source`](super::Source) downstream
/// decodes by it, whatever its own codec (a reader that is not genflow
/// must use the same codec, or read the header).
///
/// A stream must capture the subjects first: the sink creates none, and a
/// publish no stream captures fails its item (see [`run`](Self::run)).
/// The `client` is an [`async_nats::Client`] of async-nats 0.46, re-exported
/// as [`genflow::nats::async_nats`](super::async_nats).
///
/// The idea comes from Broadway's batchers writing to an external system
/// and acking only what was written, and from JetStream's publish
/// acknowledgements and message-id de-duplication.
///
/// # Examples
///
/// ```no_run
/// # use genflow::{Emitter, GenServer, Stage};
/// # struct Total;
/// # impl GenServer for Total {
/// #     type Message = (); type Response = (); type Registry = Orders;
/// #     fn new(_: Orders) -> Self { Total }
/// #     async fn handle_call(&mut self, _: ()) {}
/// # }
/// # impl Stage for Total {
/// #     type In = (u64, u64); type Out = (u64, u64);
/// #     async fn process(&mut self, n: (u64, u64), out: &mut Emitter<(u64, u64)>) { out.emit(n).await; }
/// # }
/// # #[genflow::pipeline{ total: Total }]
/// # struct Orders;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use genflow::nats::{Connect, Sink};
///
/// let client = Connect::new("nats://127.0.0.1:4222").connect().await?;
/// let flow = Orders::start().await;
/// // (order id, total): one message per order, de-duplicated by its id.
/// let sink = Sink::new(client, "totals")
///     .subject_by(|(order, _): &(u64, u64)| format!("totals.{}", order % 16))
///     .msg_id(|(order, _): &(u64, u64)| format!("total-{order}"))
///     .max_in_flight(256);
/// let writer = tokio::spawn(sink.run(flow.output().unwrap().acked()));
/// // ... feed the pipeline, then:
/// flow.shutdown().await;
/// let stats = writer.await?;
/// println!("{} published, {} failed", stats.published, stats.failed);
/// # Ok(())
/// # }
/// ```
pub struct Sink<T> {
    client: Client,
    subject: String,
    subject_by: Option<Compute<T>>,
    msg_id: Option<Compute<T>>,
    codec: Codec,
    max_in_flight: usize,
}

impl<T: Serialize + Send + 'static> Sink<T> {
    /// A sink publishing every item to `subject`, as JSON, without a
    /// message id, with up to 64 publishes in flight.
    pub fn new(client: Client, subject: impl Into<String>) -> Self {
        Sink { client, subject: subject.into(), subject_by: None, msg_id: None, codec: Codec::Json, max_in_flight: 64 }
    }

    /// Publishes each item to the subject `subject(&item)` instead.
    pub fn subject_by(mut self, subject: impl Fn(&T) -> String + Send + Sync + 'static) -> Self {
        self.subject_by = Some(Arc::new(subject));
        self
    }

    /// Gives each message the id `id(&item)` (its `Nats-Msg-Id` header).
    ///
    /// Derive it from the input the item came from (an order id, the
    /// source message's stream sequence carried in the item), never from
    /// the time or a counter: an input delivered again makes the same
    /// item again, and its message, published again within the stream's
    /// duplicate window, is then stored only once.
    pub fn msg_id(mut self, id: impl Fn(&T) -> String + Send + Sync + 'static) -> Self {
        self.msg_id = Some(Arc::new(id));
        self
    }

    /// How items are encoded (JSON by default).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// How many publishes wait for their acknowledgement at most (64 by
    /// default, at least 1).
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// Publishes every item of `items` until it ends and every publish
    /// was acknowledged or failed, then returns the counts.
    ///
    /// An item that cannot be published is failed through its `Held`
    /// (and counted in [`SinkStats::failed`]), never retried here (its
    /// source delivers it again): [`NatsError::Encode`],
    /// [`NatsError::TooLarge`], or [`NatsError::Publish`] (no stream
    /// captures the subject, the acknowledgement did not come within the
    /// client's timeout of 5 s, the connection is down).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the items in hand: their `Held`s report
    /// them dropped (the source upstream gives their messages back), even
    /// if a stream stored some of them, which a message id then
    /// de-duplicates.
    pub async fn run<S>(self, items: S) -> SinkStats
    where
        S: Stream<Item = (T, Held)> + Send,
    {
        let jetstream = jetstream::new(self.client.clone());
        let mut items = pin!(items);
        let mut in_flight: FuturesUnordered<BoxFuture<'static, (Result<bool, NatsError>, Held)>> =
            FuturesUnordered::new();
        let mut stats = SinkStats::default();
        let mut ended = false;
        // The server's limit, read again only for a message over it (a
        // server reconnected to may allow more): `server_info` copies the
        // whole of the server's info.
        let mut max_payload = self.client.server_info().max_payload;
        loop {
            tokio::select! {
                biased;
                Some((acked, held)) = in_flight.next(), if !in_flight.is_empty() => match acked {
                    Ok(duplicate) => {
                        held.release();
                        if duplicate { stats.duplicates += 1 } else { stats.published += 1 }
                    }
                    Err(error) => {
                        stats.failed += 1;
                        held.fail(error);
                    }
                },
                next = items.next(), if !ended && in_flight.len() < self.max_in_flight => match next {
                    None => ended = true,
                    Some((item, held)) => match self.prepare(&item, &jetstream, &mut max_payload).await {
                        Ok(publish) => in_flight.push(Box::pin(async move { (publish.await, held) })),
                        Err(error) => {
                            stats.failed += 1;
                            held.fail(error);
                        }
                    },
                },
                else => break,
            }
        }
        stats
    }

    /// Encodes and sends `item`; the future waits for the stream's
    /// acknowledgement and says whether it was a duplicate.
    async fn prepare(
        &self,
        item: &T,
        jetstream: &jetstream::Context,
        max_payload: &mut usize,
    ) -> Result<impl Future<Output = Result<bool, NatsError>> + Send + 'static, NatsError> {
        let subject = match &self.subject_by {
            Some(subject) => subject(item),
            None => self.subject.clone(),
        };
        let payload = self.codec.encode(item)?;
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", self.codec.content_type());
        if let Some(id) = &self.msg_id {
            headers.insert(NATS_MESSAGE_ID, id(item));
        }
        let len = payload.len() + headers_len(&headers);
        if *max_payload == 0 || len > *max_payload {
            *max_payload = self.client.server_info().max_payload;
            let max = *max_payload;
            if max > 0 && len > max {
                return Err(NatsError::TooLarge { subject, len, max });
            }
        }
        let failed = |subject: &str, source: Box<dyn Error + Send + Sync>| NatsError::Publish {
            subject: subject.into(),
            source,
        };
        let ack = jetstream
            .send_publish(subject.clone(), PublishMessage::build().payload(payload).headers(headers))
            .await
            .map_err(|e| failed(&subject, Box::new(e)))?;
        Ok(async move {
            match ack.await {
                Ok(ack) => Ok(ack.duplicate),
                Err(e) => Err(failed(&subject, Box::new(e))),
            }
        })
    }
}

impl<T> fmt::Debug for Sink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("subject", &self.subject)
            .field("subject_by", &self.subject_by.is_some())
            .field("msg_id", &self.msg_id.is_some())
            .field("codec", &self.codec)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// What a [`Sink`] did: counts of items.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SinkStats {
    /// Items stored by a stream.
    pub published: u64,
    /// Items a stream acknowledged as duplicates of a message id it had
    /// (not stored again; released as delivered all the same).
    pub duplicates: u64,
    /// Items failed: not encodable, too large, or not acknowledged.
    pub failed: u64,
}

/// The size of `headers` on the wire: `NATS/1.0\r\n`, a `name: value\r\n`
/// line per value, and an empty line.
pub(crate) fn headers_len(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            values.iter().map(|value| AsRef::<str>::as_ref(name).len() + 2 + value.as_str().len() + 2).sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + lines + 2
}
