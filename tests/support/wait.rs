//! Waiting in tests on events, never on a fixed sleep: a deadline that
//! turns a hang into a failure, and polling until a condition holds.

use std::{future::Future, time::Duration};

/// The guard against a hang: no test comes near it when it passes.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `future` to its end, failing the test if it takes [`DEADLINE`].
#[allow(dead_code, reason = "not every test leaves its waits unnamed")]
pub(crate) async fn within<F: Future>(future: F) -> F::Output {
    within_named("the wait", future).await
}

/// As [`within`], naming `what` in the failure.
pub(crate) async fn within_named<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future).await.unwrap_or_else(|_| panic!("{what} did not finish in time"))
}

/// Polls `pred` until it holds, sleeping a millisecond in between, for at
/// most [`DEADLINE`].
#[allow(dead_code, reason = "not every test leaves its waits unnamed")]
pub(crate) async fn eventually(pred: impl FnMut() -> bool) {
    eventually_named("the condition", pred).await;
}

/// As [`eventually`], naming `what` in the failure.
#[allow(dead_code, reason = "not every test polls")]
pub(crate) async fn eventually_named(what: &str, mut pred: impl FnMut() -> bool) {
    within_named(what, async {
        while !pred() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}
