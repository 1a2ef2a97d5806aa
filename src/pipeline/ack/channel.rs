//! Acknowledgements as a stream of completions: [`channel`].

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use futures::Stream;
use tokio::sync::mpsc;

use super::{Ack, Outcome};

/// A way to learn outcomes as a stream instead of through callbacks: the
/// [`Acker`] makes an [`Ack`] for each input from a key of yours (a
/// message id, an offset), and [`Acknowledgements`] yields each key with
/// its [`Outcome`] as inputs are done, in the order they are done.
///
/// The stream is unbounded, so no stage ever waits for its reader; what it
/// holds is bounded by the inputs sent, since each is acknowledged once.
/// It ends once the `Acker` and every `Ack` it made are gone (each `Ack`
/// fires before it goes), and every [`Acks`](super::Acks) made from a
/// clone of it.
///
/// A source that commits offsets, as a Kafka consumer does only after
/// processing, reads the stream and commits past each key once every
/// key before it is delivered, or failed and recorded (sent to a dead
/// letter stream, say); a dropped key must be read again, so the commit
/// stops before it.
///
/// [`Acker::ack`] makes each `Ack` with [`Ack::new`], one allocation and
/// a clone of the stream's sender per input. An `Acker` is also an
/// [`Acknowledger`](super::Acknowledger): `Acks::new(acker.clone())`
/// makes the `Ack`s of a sender 32 to an allocation, into the same
/// stream ([`Acks`](super::Acks)); each outcome is still one send on the
/// stream's channel, which costs about as much as the allocation saved.
/// Where every input is acknowledged at a high rate, an
/// [`Acknowledger`](super::Acknowledger) of your own that acts on the
/// outcome where it is told (an atomic, a short lock) costs least.
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (acker, mut outcomes) = genflow::ack::channel::<u64>();
/// let ack = acker.ack(7);
/// drop(ack); // never sent: dropped
/// drop(acker);
/// let (key, outcome) = outcomes.next().await.unwrap();
/// assert_eq!((key, outcome.kind()), (7, "dropped"));
/// assert!(outcomes.next().await.is_none());
/// # }
/// ```
pub fn channel<K: Send + 'static>() -> (Acker<K>, Acknowledgements<K>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Acker { tx }, Acknowledgements { rx })
}

/// Makes an [`Ack`] per input from a key; see [`channel`]. `Clone`: each
/// copy feeds the same stream.
pub struct Acker<K> {
    tx: mpsc::UnboundedSender<(K, Outcome)>,
}

impl<K: Send + 'static> Acker<K> {
    /// An acknowledgement that sends `key` with the input's outcome into
    /// the [`Acknowledgements`] stream (or nothing, if that stream was
    /// dropped).
    pub fn ack(&self, key: K) -> Ack {
        let tx = self.tx.clone();
        Ack::new(move |outcome| {
            let _ = tx.send((key, outcome));
        })
    }

    /// Sends `key` with `outcome` into the stream (or nothing, if the
    /// stream was dropped).
    pub(super) fn send(&self, key: K, outcome: Outcome) {
        let _ = self.tx.send((key, outcome));
    }
}

impl<K> Clone for Acker<K> {
    fn clone(&self) -> Self {
        Acker { tx: self.tx.clone() }
    }
}

impl<K> fmt::Debug for Acker<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker").finish_non_exhaustive()
    }
}

/// The stream of `(key, outcome)` pairs of a [`channel`]. `Unpin`, `Send`.
#[must_use = "streams do nothing unless polled"]
pub struct Acknowledgements<K> {
    rx: mpsc::UnboundedReceiver<(K, Outcome)>,
}

impl<K> Stream for Acknowledgements<K> {
    type Item = (K, Outcome);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<(K, Outcome)>> {
        self.rx.poll_recv(cx)
    }
}

impl<K> fmt::Debug for Acknowledgements<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acknowledgements").field("waiting", &self.rx.len()).finish()
    }
}
