//! Retry backoff: `min(base * factor^(n-1), max)`, optionally with full jitter.

use conveyor_api::pb;

use crate::time::duration_ms;

const DEFAULT_BASE_MS: i64 = 1000;
const DEFAULT_FACTOR: f64 = 2.0;
const DEFAULT_MAX_MS: i64 = 10 * 60 * 1000;

/// A validated retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Retries allowed after the first attempt.
    pub max_retries: u32,
    /// First delay, milliseconds.
    pub base_ms: i64,
    /// Growth per retry.
    pub factor: f64,
    /// Cap on one delay, milliseconds.
    pub max_ms: i64,
    /// Full jitter.
    pub jitter: bool,
}

impl Backoff {
    /// From the wire policy, filling defaults. `None` policy: no retries.
    pub fn from_pb(policy: Option<&pb::RetryPolicy>) -> Self {
        let Some(policy) = policy else {
            return Self {
                max_retries: 0,
                base_ms: DEFAULT_BASE_MS,
                factor: DEFAULT_FACTOR,
                max_ms: DEFAULT_MAX_MS,
                jitter: false,
            };
        };
        let base_ms = policy
            .backoff_base
            .as_ref()
            .and_then(duration_ms)
            .unwrap_or(DEFAULT_BASE_MS);
        let max_ms = policy
            .backoff_max
            .as_ref()
            .and_then(duration_ms)
            .unwrap_or(DEFAULT_MAX_MS);
        let factor = if policy.backoff_factor >= 1.0 {
            policy.backoff_factor
        } else {
            DEFAULT_FACTOR
        };
        Self {
            max_retries: policy.max_retries,
            base_ms,
            factor,
            max_ms,
            jitter: policy.jitter,
        }
    }

    /// Delay before retry number `retry` (1-based), without jitter.
    pub fn delay_ms(&self, retry: u32) -> i64 {
        let exponent = retry.saturating_sub(1).min(1000) as i32;
        let raw = self.base_ms as f64 * self.factor.powi(exponent);
        if raw.is_finite() {
            (raw as i64).min(self.max_ms)
        } else {
            self.max_ms
        }
    }

    /// Delay before retry `retry`, with jitter applied when enabled; `unit` is
    /// a uniform random number in [0, 1).
    pub fn jittered_delay_ms(&self, retry: u32, unit: f64) -> i64 {
        let delay = self.delay_ms(retry);
        if self.jitter {
            (delay as f64 * unit.clamp(0.0, 1.0)) as i64
        } else {
            delay
        }
    }

    /// When a failure after `failures_before` earlier failures retries, if it may.
    pub fn retry_at_ms(&self, failures_before: u32, now_ms: i64) -> Option<i64> {
        self.retry_at_with(failures_before, now_ms, None)
    }

    /// As [`Self::retry_at_ms`], with the delay the handler asked for (Celery's
    /// `self.retry(countdown=...)`) in place of the backoff when given.
    pub fn retry_at_with(
        &self,
        failures_before: u32,
        now_ms: i64,
        requested_ms: Option<i64>,
    ) -> Option<i64> {
        let retry = failures_before + 1;
        if retry > self.max_retries {
            return None;
        }
        let delay =
            requested_ms.unwrap_or_else(|| self.jittered_delay_ms(retry, rand::random::<f64>()));
        Some(now_ms + delay.max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_retries: u32, jitter: bool) -> Backoff {
        Backoff {
            max_retries,
            base_ms: 100,
            factor: 2.0,
            max_ms: 1000,
            jitter,
        }
    }

    #[test]
    fn grows_geometrically_and_caps() {
        let backoff = policy(10, false);
        let delays: Vec<i64> = (1..=6).map(|retry| backoff.delay_ms(retry)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn stops_after_max_retries() {
        let backoff = policy(2, false);
        assert_eq!(backoff.retry_at_ms(0, 0), Some(100));
        assert_eq!(backoff.retry_at_ms(1, 0), Some(200));
        assert_eq!(backoff.retry_at_ms(2, 0), None);
    }

    #[test]
    fn full_jitter_stays_within_the_delay() {
        let backoff = policy(5, true);
        assert_eq!(backoff.jittered_delay_ms(3, 0.5), 200);
        assert_eq!(backoff.jittered_delay_ms(3, 0.0), 0);
        assert!(backoff.jittered_delay_ms(3, 0.999) <= 400);
    }

    #[test]
    fn defaults_fill_missing_fields() {
        let backoff = Backoff::from_pb(Some(&pb::RetryPolicy {
            max_retries: 3,
            ..Default::default()
        }));
        assert_eq!(backoff.base_ms, 1000);
        assert_eq!(backoff.factor, 2.0);
        assert_eq!(Backoff::from_pb(None).max_retries, 0);
    }
}
