//! Messages a [`Source`](super::Source) gives up on: the copy it publishes
//! to its dead-letter subject, and the headers that say why.
//!
//! A message is given up on when its payload does not decode (it never
//! will; this includes a `Content-Type` header that names no codec), or
//! when the pipeline failed it (or dropped it, in an abort) on its last
//! allowed delivery (`max_deliver`): a message that reached its
//! deliveries is not delivered again, whatever the answer. The source then publishes a copy (the same
//! payload and headers, plus the headers below) to its
//! [dead-letter subject](super::Source::dead_letter) through JetStream,
//! waits for the stream that captures that subject to store it, and only
//! then *terminates* the message (`+TERM`: never delivered again). If that
//! publish fails (no stream captures the subject, the broker is away), it
//! is tried again, after 100 ms and then twice as long each time up to
//! 5 s, with a progress acknowledgement before each pause, until the copy
//! is stored: the server would not deliver the message again, so neither
//! a nak nor a term would keep it. Meanwhile its prefetch slot stays
//! taken, so a dead-letter stream that stays away stops the source's
//! pulls, and each failed try counts in `errors`.
//!
//! The copy is kept within the server's `max_payload`: the error text is
//! shortened as needed; a copy that does not fit even without it is not
//! published, and the message is terminated with an error in the log.
//!
//! The copy carries a `Nats-Msg-Id` of `dead:<stream>:<sequence>`, so a
//! copy published twice (a source that stopped between the publish and
//! the `+TERM`) is stored once within the dead-letter stream's duplicate
//! window. Headers of the original whose names start with `Nats-` (which
//! the server reads, such as its message id) are left out of the copy.
//!
//! The idea is the dead-letter queue of message brokers (RabbitMQ's
//! dead-letter exchanges, SQS' redrive policy), built here from
//! JetStream's own pieces, as NATS documents it with `max_deliver` and
//! `+TERM`.

use std::fmt::Write as _;

use async_nats::{
    HeaderMap,
    header::NATS_MESSAGE_ID,
    jetstream::{self, message::PublishMessage},
};

use super::{NatsError, sink::headers_len};

/// Why the message was given up on: each error, `"; "`-separated (a
/// failure of a stage is written `<stage>: <error>`). Line breaks are
/// replaced by spaces and the text is cut at [`MAX_ERROR_LEN`] bytes.
pub const ERROR: &str = "Genflow-Error";
/// The stream the message was read from.
pub const STREAM: &str = "Genflow-Stream";
/// Its sequence number in that stream.
pub const SEQUENCE: &str = "Genflow-Sequence";
/// The durable consumer that read it.
pub const CONSUMER: &str = "Genflow-Consumer";
/// The subject it was published to.
pub const SUBJECT: &str = "Genflow-Subject";
/// How many times it was delivered (1 for a payload that did not decode).
pub const DELIVERED: &str = "Genflow-Delivered";

/// The longest [`ERROR`] header written, in bytes.
pub const MAX_ERROR_LEN: usize = 4096;

/// Where a source publishes what it gives up on.
#[derive(Clone)]
pub(crate) struct DeadLetter {
    pub(crate) jetstream: jetstream::Context,
    pub(crate) subject: String,
}

impl DeadLetter {
    /// Publishes a copy of `message` with `reasons` and waits until a
    /// stream stored it.
    ///
    /// The error text is shortened to keep the copy within the server's
    /// `max_payload`; [`NatsError::TooLarge`] if even without it the copy
    /// does not fit (publishing it would close the connection).
    pub(crate) async fn publish(&self, message: &jetstream::Message, reasons: &[String]) -> Result<(), NatsError> {
        let mut text = error_text(reasons);
        let mut headers = copy_headers(message, &text);
        let max = self.jetstream.client().server_info().max_payload;
        let len = message.payload.len() + headers_len(&headers);
        if max > 0 && len > max {
            let over = len - max;
            if over > text.len() {
                return Err(NatsError::TooLarge { subject: self.subject.clone(), len: len - text.len(), max });
            }
            let keep = text.len() - over;
            truncate(&mut text, keep);
            headers.insert(ERROR, text.as_str());
        }
        let publish = PublishMessage::build().payload(message.payload.clone()).headers(headers);
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| NatsError::Publish {
            subject: self.subject.clone(),
            source,
        };
        let ack = self.jetstream.send_publish(self.subject.clone(), publish).await.map_err(|e| failed(Box::new(e)))?;
        ack.await.map_err(|e| failed(Box::new(e)))?;
        Ok(())
    }
}

/// The original's headers (but the server's own), the error, the stream,
/// the sequence, the consumer, the subject, the delivery count and the
/// copy's message id.
fn copy_headers(message: &jetstream::Message, error: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(original) = &message.headers {
        for (name, values) in original.iter() {
            let name: &str = name.as_ref();
            if name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-") {
                continue;
            }
            for value in values {
                headers.append(name, value.as_str());
            }
        }
    }
    headers.insert(ERROR, error);
    headers.insert(SUBJECT, message.subject.as_str());
    if let Ok(info) = message.info() {
        headers.insert(NATS_MESSAGE_ID, format!("dead:{}:{}", info.stream, info.stream_sequence));
        headers.insert(STREAM, info.stream);
        headers.insert(SEQUENCE, info.stream_sequence.to_string());
        headers.insert(CONSUMER, info.consumer);
        headers.insert(DELIVERED, info.delivered.to_string());
    }
    headers
}

/// `reasons` as one header value: `"; "`-separated, without line breaks,
/// at most [`MAX_ERROR_LEN`] bytes.
pub(crate) fn error_text(reasons: &[String]) -> String {
    let mut text = String::new();
    for (i, reason) in reasons.iter().enumerate() {
        if i > 0 {
            text.push_str("; ");
        }
        let _ = write!(text, "{reason}");
    }
    let mut text: String = text.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect();
    truncate(&mut text, MAX_ERROR_LEN);
    text
}

/// Cuts `text` to at most `len` bytes, at a character boundary, without
/// trailing spaces (a header value loses them on the way).
fn truncate(text: &mut String, len: usize) {
    if text.len() > len {
        let mut end = len;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.truncate(text.trim_end().len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_text_is_one_line_and_bounded() {
        let reasons = vec!["parse: bad\r\nline".to_string(), "store: down".to_string()];
        assert_eq!(error_text(&reasons), "parse: bad  line; store: down");
        let long = vec!["é".repeat(MAX_ERROR_LEN)];
        let text = error_text(&long);
        assert!(text.len() <= MAX_ERROR_LEN && text.len() > MAX_ERROR_LEN - 2, "{}", text.len());
        assert!(text.chars().all(|c| c == 'é'));
    }
}
