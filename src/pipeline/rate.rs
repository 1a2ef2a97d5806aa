//! `#[rate_limit(n, per = ..)]`: at most `n` items per interval through a
//! stage, over all its replicas (Broadway's `rate_limiting`).
//!
//! The limit is a token bucket of `n` tokens, refilled at `n` per
//! interval, one every `per / n`: governor's GCRA, kept on Tokio's clock
//! (so that paused time in tests moves it) and waited for with Tokio's
//! timer. A replica takes a token before each item's `process`; every
//! replica of the stage shares the bucket. Tokio's timer ticks in
//! milliseconds, so a bucket refilled faster than one token per millisecond
//! holds a millisecond's worth of tokens instead of `n`.

use std::{num::NonZeroU32, ops::Add, time::Duration};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, Reference},
    middleware::NoOpMiddleware,
    nanos::Nanos,
    state::{InMemoryState, NotKeyed},
};
use tokio::time::Instant;

/// The resolution of Tokio's timer.
const TICK: Duration = Duration::from_millis(1);

/// A stage's rate limit, shared by its replicas.
pub(crate) struct RateLimit {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<At>>,
}

impl RateLimit {
    /// At most `n` items per `per`, `n` of them at once after a pause.
    /// `per` of zero means no pause between items at all.
    pub(crate) fn new(n: NonZeroU32, per: Duration) -> Self {
        // governor counts in u64 nanoseconds: about 584 years at most.
        let per = per.min(Duration::from_nanos(u64::MAX));
        let period = (per / n.get()).max(Duration::from_nanos(1));
        // Tokio's timer wakes in whole milliseconds: a bucket that refills
        // faster holds a millisecond's worth, or a wait would cost a tick
        // per token.
        let per_tick = u32::try_from(TICK.as_nanos().div_ceil(period.as_nanos())).unwrap_or(u32::MAX);
        let burst = NonZeroU32::new(per_tick).map_or(n, |per_tick| n.max(per_tick));
        let quota = Quota::with_period(period).expect("a period of at least 1 ns").allow_burst(burst);
        RateLimit { limiter: RateLimiter::direct_with_clock(quota, TokioClock) }
    }

    /// Lets one more item through now if the limit allows.
    pub(crate) fn try_acquire(&self) -> bool {
        self.limiter.check().is_ok()
    }

    /// Waits until one more item may go through; `true` if it had to wait.
    ///
    /// Cancel safe: the token is taken only when this returns.
    pub(crate) async fn acquire(&self) -> bool {
        let mut waited = false;
        loop {
            match self.limiter.check() {
                Ok(()) => return waited,
                Err(not_until) => {
                    waited = true;
                    tokio::time::sleep(not_until.wait_time_from(TokioClock.now())).await;
                }
            }
        }
    }
}

/// Tokio's clock, for governor.
#[derive(Clone, Copy, Debug)]
struct TokioClock;

impl Clock for TokioClock {
    type Instant = At;

    fn now(&self) -> At {
        At(Instant::now())
    }
}

/// An instant of Tokio's clock, for governor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct At(Instant);

impl Add<Nanos> for At {
    type Output = At;

    fn add(self, nanos: Nanos) -> At {
        At(self.0 + Duration::from(nanos))
    }
}

impl Reference for At {
    fn duration_since(&self, earlier: At) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, nanos: Nanos) -> At {
        At(self.0.checked_sub(Duration::from(nanos)).unwrap_or(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn n_at_once_then_one_every_interval_over_n() {
        let limit = RateLimit::new(NonZeroU32::new(4).unwrap(), Duration::from_millis(100));
        let start = Instant::now();
        for _ in 0..4 {
            assert!(!limit.acquire().await);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The fifth waits for one token: 25 ms.
        assert!(limit.acquire().await);
        assert_eq!(start.elapsed(), Duration::from_millis(25));
        for _ in 0..3 {
            limit.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_finer_than_the_timer_keeps_its_rate() {
        // One per 10 µs: 100 per millisecond, a millisecond's worth at once.
        let limit = RateLimit::new(NonZeroU32::new(1).unwrap(), Duration::from_micros(10));
        let start = Instant::now();
        for _ in 0..1_000 {
            limit.acquire().await;
        }
        assert!(start.elapsed() <= Duration::from_millis(10), "{:?}", start.elapsed());
    }
}
