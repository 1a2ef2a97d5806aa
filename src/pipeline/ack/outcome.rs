//! How an input ended: [`Outcome`].

use crate::pipeline::Failure;

/// How an input sent with an [`Ack`](super::Ack) ended, once every item
/// made from it left the pipeline.
///
/// With mixed outcomes (an input whose outputs went different ways), the
/// worst wins: failed beats dropped beats delivered, and a failed outcome
/// lists every failure of every item made from the input.
///
/// The three outcomes follow Vector's end-to-end acknowledgements
/// (`Delivered`, `Errored`, `Rejected`), and Broadway's acknowledgers,
/// which get each message once, as successful or failed.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Every item made from the input was processed by the last stage (an
    /// input the last stage emits nothing for counts here), or taken from
    /// the pipeline's output, or released by whoever held it
    /// ([`Held::release`](super::Held::release)).
    Delivered,
    /// An item made from the input was failed ([`Emitter::fail`],
    /// a panic, a failed future of a `#[concurrency]` stage,
    /// [`Held::fail`](super::Held::fail)), by a stage or by the reader of
    /// the output: every such failure once, in no particular order. A
    /// stage's failures also went to the pipeline's `failures()` stream;
    /// those given to `Held::fail` go to the acknowledgements only.
    ///
    /// [`Emitter::fail`]: crate::Emitter::fail
    Failed(Vec<Failure>),
    /// An item made from the input was lost without failing: left in the
    /// pipeline's output while nobody took it (or after the output was
    /// dropped), or held by a stage or a queue when the pipeline was
    /// aborted, or a [`Held`](super::Held) dropped without being
    /// released.
    Dropped,
}

impl Outcome {
    /// Whether every item made from the input was delivered.
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered)
    }

    /// Whether an item made from the input failed.
    pub fn is_failed(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }

    /// Whether an item made from the input was dropped (and none failed).
    pub fn is_dropped(&self) -> bool {
        matches!(self, Outcome::Dropped)
    }

    /// `"delivered"`, `"failed"` or `"dropped"`: for logs and labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed(_) => "failed",
            Outcome::Dropped => "dropped",
        }
    }
}
