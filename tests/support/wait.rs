//! Waiting in tests on events, never on a fixed sleep: a deadline that
//! turns a hang into a failure, and polling until a condition holds.

use std::{future::Future, time::Duration};

/// The guard against a hang: no test comes near it when it passes.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `future` to its end, failing the test if it takes [`DEADLINE`].
pub(crate) async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future).await.expect("no hang")
}

/// Polls `pred` until it holds, sleeping a millisecond in between, for at
/// most [`DEADLINE`].
pub(crate) async fn eventually(mut pred: impl FnMut() -> bool) {
    within(async {
        while !pred() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}
