//! Clock and conversions between Unix milliseconds and protobuf types.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Added to this process's clock: a test's way to run a replica whose clock
/// is wrong (`conveyor serve --clock-skew`), and show that nothing shared
/// depends on it.
static SKEW_MS: AtomicI64 = AtomicI64::new(0);

/// Skews this process's clock by `ms` (tests of clock skew only).
pub fn set_clock_skew_ms(ms: i64) {
    SKEW_MS.store(ms, Ordering::Relaxed);
}

/// Now, in Unix milliseconds, by this process's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
        + SKEW_MS.load(Ordering::Relaxed)
}

/// Unix microseconds now, by this process's clock.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or(0)
        + SKEW_MS.load(Ordering::Relaxed) * 1000
}

/// A protobuf timestamp from Unix microseconds.
pub fn timestamp_from_us(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// A protobuf timestamp from Unix milliseconds.
pub fn timestamp_from_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Unix milliseconds from a protobuf timestamp.
pub fn ms_from_timestamp(timestamp: &prost_types::Timestamp) -> i64 {
    timestamp.seconds * 1000 + i64::from(timestamp.nanos) / 1_000_000
}

/// A protobuf duration from a std duration.
pub fn pb_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: duration.as_secs() as i64,
        nanos: duration.subsec_nanos() as i32,
    }
}

/// Milliseconds of a protobuf duration; `None` when negative or malformed.
pub fn duration_ms(duration: &prost_types::Duration) -> Option<i64> {
    if duration.seconds < 0 || duration.nanos < 0 || duration.nanos >= 1_000_000_000 {
        return None;
    }
    Some(duration.seconds.saturating_mul(1000) + i64::from(duration.nanos) / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        let ms = 1_700_000_000_123;
        assert_eq!(ms_from_timestamp(&timestamp_from_ms(ms)), ms);
        assert_eq!(
            duration_ms(&pb_duration(Duration::from_millis(1500))),
            Some(1500)
        );
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(duration_ms(&negative), None);
    }
}
