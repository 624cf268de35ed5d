//! Percentiles and clock helpers shared by the drivers.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Nearest-rank percentile of sorted samples (`q` in 0..=100).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50/p90/p99/max/mean of latencies in milliseconds, rounded to µs.
pub fn summary(samples: &[f64]) -> Value {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mean = sorted.iter().sum::<f64>() / sorted.len().max(1) as f64;
    json!({
        "n": sorted.len(),
        "p50_ms": round3(percentile(&sorted, 50.0)),
        "p90_ms": round3(percentile(&sorted, 90.0)),
        "p99_ms": round3(percentile(&sorted, 99.0)),
        "max_ms": round3(sorted.last().copied().unwrap_or(f64::NAN)),
        "mean_ms": round3(mean),
    })
}

/// Rounds to three decimals (µs when the unit is ms).
pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Wall-clock seconds since the epoch (all processes of the benchmark run on
/// one machine, so their clocks agree).
pub fn wall(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Now, as wall-clock seconds since the epoch.
pub fn now() -> f64 {
    wall(SystemTime::now())
}

/// A protobuf timestamp as wall-clock seconds since the epoch.
pub fn timestamp(ts: &prost_types::Timestamp) -> f64 {
    ts.seconds as f64 + f64::from(ts.nanos) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 50.0);
        assert_eq!(percentile(&sorted, 99.0), 99.0);
        assert_eq!(percentile(&sorted, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
