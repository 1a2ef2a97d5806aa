//! What can go wrong between a pipeline and NATS.

use std::{error::Error, fmt, io, path::PathBuf};

use super::Codec;

type BoxError = Box<dyn Error + Send + Sync>;

/// An error of the `nats` feature: connecting to the broker, reading
/// credentials, turning items into payloads and back, binding a source to
/// its consumer, or publishing.
///
/// `Display` names what was asked for (the server, with any password in
/// its URL left out; the credentials file; the codec) and the cause;
/// [`source`](Error::source) gives the underlying error. No secret
/// (token, password, credentials) is ever part of the message.
#[derive(Debug)]
#[non_exhaustive]
pub enum NatsError {
    /// The broker could not be reached, refused the credentials, or the TLS
    /// handshake failed. Returned by [`Connect::connect`](super::Connect::connect)
    /// after one attempt: a wrong credential is not retried.
    Connect {
        /// The server address as given, without user information.
        server: String,
        /// Whether the broker refused the credentials (an authorization
        /// violation or a failed authentication), as opposed to not being
        /// reachable.
        auth: bool,
        /// async-nats' error.
        source: async_nats::ConnectError,
    },
    /// The credentials file could not be read or parsed.
    Credentials {
        /// The file given to [`Connect::credentials_file`](super::Connect::credentials_file).
        path: PathBuf,
        /// The I/O or parse error (never the file's content).
        source: io::Error,
    },
    /// An item could not be written as a payload.
    Encode {
        /// The codec asked to write it.
        codec: Codec,
        /// serde's error.
        source: BoxError,
    },
    /// A payload could not be read as an item.
    Decode {
        /// The codec asked to read it.
        codec: Codec,
        /// The payload's length in bytes.
        len: usize,
        /// serde's error.
        source: BoxError,
    },
    /// A [`Source`](super::Source) could not bind to its durable consumer:
    /// the stream does not exist, or a consumer of that name exists with a
    /// configuration the server refuses to change (such as a push
    /// consumer).
    Consumer {
        /// The stream the consumer reads.
        stream: String,
        /// The durable consumer's name.
        consumer: String,
        /// async-nats' error.
        source: BoxError,
    },
    /// A [`Source`](super::Source) could not reach the broker to bind its
    /// durable consumer: the connection was down when the request failed
    /// (the server stopped, or not reachable from here). Unlike
    /// [`Consumer`](Self::Consumer), the stream and consumer may be fine:
    /// start the source again once the broker is back.
    Unreachable {
        /// The stream the consumer reads.
        stream: String,
        /// The durable consumer's name.
        consumer: String,
        /// async-nats' error (usually a timeout).
        source: BoxError,
    },
    /// A running [`Source`](super::Source)'s durable consumer, or its
    /// stream, no longer exists on the server (deleted while the source
    /// ran): the source ended, and its stats carry this error
    /// ([`SourceStats::error`](super::SourceStats::error)). It does not
    /// create the consumer again, which would deliver the stream again
    /// from its start.
    ConsumerGone {
        /// The stream the consumer read.
        stream: String,
        /// The durable consumer's name.
        consumer: String,
        /// async-nats' error (consumer or stream not found).
        source: BoxError,
    },
    /// A message's `Content-Type` header names a format of no
    /// [`Codec`]: its payload is not decoded (a decode failure: the
    /// message is given up on at once).
    UnknownContentType {
        /// The header's value.
        content_type: String,
        /// The codec of the source that read it (used only for messages
        /// without a `Content-Type`).
        codec: Codec,
    },
    /// A message could not be published to a stream, or the stream did not
    /// acknowledge it in time (no stream captures the subject, the
    /// connection was lost, the stream refused it).
    Publish {
        /// The subject it was published to.
        subject: String,
        /// async-nats' error.
        source: BoxError,
    },
    /// A message is larger than the server accepts (its `max_payload`,
    /// 1 MiB by default): it was not published. The server would close the
    /// connection on such a message.
    TooLarge {
        /// The subject it was meant for.
        subject: String,
        /// Its size in bytes, headers included.
        len: usize,
        /// The server's `max_payload`, in bytes.
        max: usize,
    },
}

impl fmt::Display for NatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsError::Connect { server, auth: true, source } => write!(
                f,
                "NATS server {server} refused the credentials ({source}): check the token, user and password, or \
                 credentials file"
            ),
            NatsError::Connect { server, auth: false, source } => {
                write!(f, "cannot connect to the NATS server {server}: {source}")
            }
            NatsError::Credentials { path, source } => {
                write!(f, "cannot read the NATS credentials file {}: {source}", path.display())
            }
            NatsError::Encode { codec, source } => write!(f, "cannot encode an item as {}: {source}", codec.name()),
            NatsError::Decode { codec, len, source } => {
                write!(f, "cannot decode a {len}-byte {} payload: {source}", codec.name())
            }
            NatsError::Consumer { stream, consumer, source } => {
                write!(f, "cannot bind to the durable consumer {consumer:?} of the stream {stream:?}: {source}")
            }
            NatsError::Unreachable { stream, consumer, source } => write!(
                f,
                "cannot reach the NATS server to bind the durable consumer {consumer:?} of the stream {stream:?}: the \
                 connection is down ({source})"
            ),
            NatsError::ConsumerGone { stream, consumer, source } => write!(
                f,
                "the durable consumer {consumer:?} of the stream {stream:?} no longer exists (deleted while the source \
                 ran): the source ended ({source})"
            ),
            NatsError::UnknownContentType { content_type, codec } => write!(
                f,
                "cannot decode a payload of content type {content_type:?}: no codec reads it (known: {}, {}); this \
                 source's codec, {}, is used only for messages without a Content-Type",
                Codec::Json.content_type(),
                Codec::MessagePack.content_type(),
                codec.name()
            ),
            NatsError::Publish { subject, source } => write!(f, "cannot publish to {subject:?}: {source}"),
            NatsError::TooLarge { subject, len, max } => {
                write!(f, "a {len}-byte message for {subject:?} is larger than the server's max_payload of {max} bytes")
            }
        }
    }
}

impl Error for NatsError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            NatsError::Connect { source, .. } => Some(source),
            NatsError::Credentials { source, .. } => Some(source),
            NatsError::Encode { source, .. }
            | NatsError::Decode { source, .. }
            | NatsError::Consumer { source, .. }
            | NatsError::Unreachable { source, .. }
            | NatsError::ConsumerGone { source, .. }
            | NatsError::Publish { source, .. } => Some(source.as_ref()),
            NatsError::TooLarge { .. } | NatsError::UnknownContentType { .. } => None,
        }
    }
}
