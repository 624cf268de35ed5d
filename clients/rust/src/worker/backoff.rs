//! The reconnect schedule (exponential backoff with jitter) and the worker's
//! default identity (hostname and process id).

use std::time::Duration;

use rand::Rng;

/// Delay before the first reconnect attempt.
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Longest delay between reconnect attempts.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Exponential backoff: `min`, doubling per failure, capped at `max`; each
/// actual delay is drawn uniformly from the upper half of that ("equal
/// jitter"), so restarted workers spread out yet never retry in a burst.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    /// Consecutive failures since the last success.
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The delay before the next attempt, before jitter.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.min(31));
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The jittered delay before the next attempt; advances the schedule.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let extra_nanos = rand::rng().random_range(0..=ceiling.saturating_sub(half).as_nanos());
        half + Duration::from_nanos(u64::try_from(extra_nanos).unwrap_or(u64::MAX))
    }

    /// Starts the schedule over after a successful connection.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The host's name, from the kernel or the environment; "localhost" when
/// neither tells.
pub(crate) fn hostname() -> String {
    let from_files = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|contents| contents.trim().to_owned())
        .find(|name| !name.is_empty());
    from_files
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|name| !name.is_empty())
        })
        .or_else(|| {
            std::env::var("COMPUTERNAME")
                .ok()
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The default worker id, `hostname-pid`: stable for the process, distinct
/// between processes on one host.
pub(crate) fn default_worker_id(hostname: &str) -> String {
    format!("{hostname}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100ms_to_5s() {
        let mut backoff = Backoff::new(DEFAULT_MIN_BACKOFF, DEFAULT_MAX_BACKOFF);
        let mut ceilings = Vec::new();
        for _ in 0..9 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_delay();
        }
        assert_eq!(
            ceilings,
            vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let mut backoff = Backoff::new(DEFAULT_MIN_BACKOFF, DEFAULT_MAX_BACKOFF);
        for _ in 0..200 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
    }

    #[test]
    fn jitter_varies() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: std::collections::HashSet<_> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 1, "20 draws should not all be equal");
    }

    #[test]
    fn reset_starts_over_and_never_overflows() {
        let mut backoff = Backoff::new(DEFAULT_MIN_BACKOFF, DEFAULT_MAX_BACKOFF);
        for _ in 0..100 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), DEFAULT_MAX_BACKOFF);
        backoff.reset();
        assert_eq!(backoff.ceiling(), DEFAULT_MIN_BACKOFF);
    }

    #[test]
    fn max_below_min_is_raised_to_min() {
        let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(), Duration::from_secs(2));
    }

    #[test]
    fn identity_is_hostname_and_pid() {
        let host = hostname();
        assert!(!host.is_empty());
        let id = default_worker_id(&host);
        assert_eq!(id, format!("{host}-{}", std::process::id()));
    }
}
