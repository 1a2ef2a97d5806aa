use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

/// How often a server may be restarted after panicking, as OTP's restart
/// intensity: at most `max_restarts` restarts within any window of `within`.
///
/// One more panic inside that window takes the server down for good.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use genflow::RestartLimit;
///
/// assert_eq!(RestartLimit::default(), RestartLimit::new(3, Duration::from_secs(5)));
/// assert_eq!(RestartLimit::NEVER.max_restarts, 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RestartLimit {
    /// Restarts allowed within the window.
    pub max_restarts: u32,
    /// The length of the window.
    pub within: Duration,
}

impl RestartLimit {
    /// No restart: the first panic takes the server down for good.
    pub const NEVER: RestartLimit = RestartLimit::new(0, Duration::ZERO);

    /// At most `max_restarts` restarts within any window of `within`.
    pub const fn new(max_restarts: u32, within: Duration) -> Self {
        RestartLimit { max_restarts, within }
    }
}

impl Default for RestartLimit {
    /// OTP's default: 3 restarts within 5 seconds.
    fn default() -> Self {
        RestartLimit::new(3, Duration::from_secs(5))
    }
}

/// Remembers recent restarts and decides whether another one is allowed.
///
/// One pointer: every server's task holds one for its whole life, and most
/// never restart, so the limit is read when a crash asks for it (`limit`
/// is the server's `restart_limit`, given as the function item, which takes
/// no room) and the record of restarts is allocated by the first one.
#[derive(Debug)]
pub(crate) struct Restarts<L = fn() -> RestartLimit> {
    limit: L,
    #[allow(clippy::box_collection, reason = "one pointer while empty, instead of a `VecDeque`'s four words")]
    recent: Option<Box<VecDeque<Instant>>>,
}

impl<L: Fn() -> RestartLimit> Restarts<L> {
    pub(crate) fn new(limit: L) -> Self {
        Restarts { limit, recent: None }
    }

    /// Records a crash; returns whether the server may be restarted.
    pub(crate) fn allow(&mut self) -> bool {
        let limit = (self.limit)();
        let now = Instant::now();
        let recent = self.recent.get_or_insert_default();
        while recent.front().is_some_and(|t| now.duration_since(*t) >= limit.within) {
            recent.pop_front();
        }
        if recent.len() < limit.max_restarts as usize {
            recent.push_back(now);
            // In the span of the server's task, which names it.
            tracing::warn!(
                restarts = recent.len(),
                max_restarts = limit.max_restarts,
                within = ?limit.within,
                "restarting after a panic"
            );
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_max_restarts_within_the_window() {
        let mut r = Restarts::new(|| RestartLimit::new(3, Duration::from_secs(5)));
        assert!(r.allow());
        assert!(r.allow());
        assert!(r.allow());
        assert!(!r.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn forgets_restarts_older_than_the_window() {
        let mut r = Restarts::new(|| RestartLimit::new(3, Duration::from_secs(5)));
        for _ in 0..3 {
            assert!(r.allow());
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(r.allow());
        assert!(r.allow());
        assert!(r.allow());
        assert!(!r.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn never_allows_no_restart() {
        assert!(!Restarts::new(|| RestartLimit::NEVER).allow());
    }
}
