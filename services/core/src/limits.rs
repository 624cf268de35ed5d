//! Documented limits on input. Exceeding a size limit is `RESOURCE_EXHAUSTED`;
//! breaking a shape rule is `INVALID_ARGUMENT`.

/// Limits applied at the edge. Defaults are the documented ones.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest task name, in bytes.
    pub max_name_len: usize,
    /// Longest queue name, in bytes.
    pub max_queue_len: usize,
    /// Largest single payload (`data` bytes).
    pub max_payload_bytes: usize,
    /// Largest sum of a task's payloads.
    pub max_task_bytes: usize,
    /// Most tasks in one SubmitTasks call.
    pub max_batch: usize,
    /// Most positional arguments, and most named arguments, of one task.
    pub max_args: usize,
    /// Most retries a policy may ask for.
    pub max_retries: u32,
    /// Most headers per task.
    pub max_headers: usize,
    /// Default time an outcome is kept, milliseconds.
    pub default_result_ttl_ms: i64,
    /// How long an idempotency key is remembered, milliseconds.
    pub idempotency_window_ms: i64,
    /// Highest priority level.
    pub max_priority: u32,
    /// Longest duration or distance into the future any option may name
    /// (countdown, ETA, expiry, retry delays, time limits, result TTL), ms.
    /// Bounded so that every instant the store computes stays exact in a
    /// double and valid as a Redis expiry.
    pub max_horizon_ms: i64,
}

/// Slowest rate limit: one start a day, in ms between starts.
pub const MAX_RATE_INTERVAL_MS: f64 = 86_400_000.0;
/// Fastest rate limit: a million starts a second, in ms between starts.
pub const MIN_RATE_INTERVAL_MS: f64 = 0.001;
/// Largest backoff factor.
pub const MAX_BACKOFF_FACTOR: f64 = 1000.0;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_name_len: 200,
            max_queue_len: 100,
            max_payload_bytes: 1024 * 1024,
            max_task_bytes: 4 * 1024 * 1024,
            max_batch: 1000,
            max_args: 1000,
            max_retries: 100,
            max_headers: 64,
            default_result_ttl_ms: 24 * 3600 * 1000,
            idempotency_window_ms: 24 * 3600 * 1000,
            max_priority: 9,
            max_horizon_ms: 10 * 366 * 24 * 3600 * 1000,
        }
    }
}
