//! How items become message payloads and back.

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use super::NatsError;

/// The format of message payloads: how an item is written into a message and
/// read back, through [serde](https://serde.rs).
///
/// Each source and sink is given its codec. A [`Sink`](super::Sink) writes
/// its codec's [`content_type`](Self::content_type) in each message's
/// `Content-Type` header, and a [`Source`](super::Source) decodes a message
/// with the codec its `Content-Type` names
/// ([`from_content_type`](Self::from_content_type)), using its own codec
/// only for a message without one (published by another program): so the
/// segments on both ends of a subject may differ, but a source must be
/// given the codec of whatever else publishes there without that header.
/// A `Content-Type` that names no codec is a decode failure
/// ([`NatsError::UnknownContentType`]). [`Json`](Self::Json) is the default: easy
/// to read with `nats sub` and from other languages.
///
/// Payloads are always the serde form of the item: a program that
/// publishes raw text lines for a source of `String` items must publish
/// each as a JSON string (`"GET /index.html"`, quoted), not the bare
/// text, which does not decode and goes to the dead letter.
/// [`MessagePack`](Self::MessagePack) is a compact binary form of the same
/// data model (structs as maps with their field names, so fields may be
/// added on one side first, as with JSON), usually about half the size and
/// faster to write and read.
///
/// ```
/// # #[cfg(feature = "nats")] {
/// use genflow::nats::Codec;
///
/// let item = (7u32, "GET /index.html".to_string());
/// for codec in [Codec::Json, Codec::MessagePack] {
///     let payload = codec.encode(&item).unwrap();
///     assert_eq!(codec.decode::<(u32, String)>(&payload).unwrap(), item);
/// }
/// assert!(Codec::Json.decode::<u32>(b"not json").is_err());
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// JSON (`serde_json`), content type `application/json`.
    #[default]
    Json,
    /// MessagePack (`rmp-serde`, structs as maps), content type
    /// `application/msgpack`.
    MessagePack,
}

impl Codec {
    /// The codec's name: `"json"` or `"msgpack"`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::MessagePack => "msgpack",
        }
    }

    /// The MIME type of its payloads, for a `Content-Type` header.
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Json => "application/json",
            Codec::MessagePack => "application/msgpack",
        }
    }

    /// The codec whose payloads have the MIME type `content_type`, as in a
    /// `Content-Type` header: `application/json` is [`Json`](Self::Json);
    /// `application/msgpack`, `application/x-msgpack` and
    /// `application/vnd.msgpack` are [`MessagePack`](Self::MessagePack).
    /// Case and parameters (`; charset=utf-8`) do not matter. `None` for
    /// any other type.
    ///
    /// ```
    /// # #[cfg(feature = "nats")] {
    /// use genflow::nats::Codec;
    ///
    /// assert_eq!(Codec::from_content_type("Application/JSON; charset=utf-8"), Some(Codec::Json));
    /// assert_eq!(Codec::from_content_type(Codec::MessagePack.content_type()), Some(Codec::MessagePack));
    /// assert_eq!(Codec::from_content_type("text/csv"), None);
    /// # }
    /// ```
    pub fn from_content_type(content_type: &str) -> Option<Codec> {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        let is = |name: &str| essence.eq_ignore_ascii_case(name);
        if is("application/json") {
            Some(Codec::Json)
        } else if is("application/msgpack") || is("application/x-msgpack") || is("application/vnd.msgpack") {
            Some(Codec::MessagePack)
        } else {
            None
        }
    }

    /// Writes `item` as a payload.
    ///
    /// # Errors
    ///
    /// [`NatsError::Encode`] if serde fails (a map with non-string keys in
    /// JSON, a `Serialize` impl that returns an error).
    pub fn encode<T: Serialize + ?Sized>(self, item: &T) -> Result<Bytes, NatsError> {
        let written = match self {
            Codec::Json => serde_json::to_vec(item).map_err(|e| Box::new(e) as BoxError),
            Codec::MessagePack => rmp_serde::to_vec_named(item).map_err(|e| Box::new(e) as BoxError),
        };
        written.map(Bytes::from).map_err(|source| NatsError::Encode { codec: self, source })
    }

    /// Reads an item of type `T` from `payload`.
    ///
    /// # Errors
    ///
    /// [`NatsError::Decode`] if the payload is not a valid `T` in this
    /// format (including trailing bytes after a JSON value).
    pub fn decode<T: DeserializeOwned>(self, payload: &[u8]) -> Result<T, NatsError> {
        let read = match self {
            Codec::Json => serde_json::from_slice(payload).map_err(|e| Box::new(e) as BoxError),
            Codec::MessagePack => rmp_serde::from_slice(payload).map_err(|e| Box::new(e) as BoxError),
        };
        read.map_err(|source| NatsError::Decode { codec: self, len: payload.len(), source })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Record {
        route: String,
        status: u16,
        latency_ms: f64,
    }

    #[test]
    fn both_codecs_round_trip_a_struct_and_msgpack_is_smaller() {
        let record = Record { route: "/api/users/:id".into(), status: 404, latency_ms: 12.5 };
        let json = Codec::Json.encode(&record).unwrap();
        let msgpack = Codec::MessagePack.encode(&record).unwrap();
        assert_eq!(Codec::Json.decode::<Record>(&json).unwrap(), record);
        assert_eq!(Codec::MessagePack.decode::<Record>(&msgpack).unwrap(), record);
        assert!(msgpack.len() < json.len(), "{} < {}", msgpack.len(), json.len());
    }

    #[test]
    fn a_payload_that_does_not_decode_is_an_error_naming_the_codec() {
        for codec in [Codec::Json, Codec::MessagePack] {
            let error = codec.decode::<Record>(&[0xc1, 0x00, 0x7b]).unwrap_err();
            assert!(matches!(error, NatsError::Decode { codec: c, len: 3, .. } if c == codec));
            let text = error.to_string();
            assert!(text.starts_with(&format!("cannot decode a 3-byte {} payload: ", codec.name())), "{text}");
        }
    }
}
