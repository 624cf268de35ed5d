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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_name_len: 200,
            max_queue_len: 100,
            max_payload_bytes: 1024 * 1024,
            max_task_bytes: 4 * 1024 * 1024,
            max_batch: 1000,
            max_retries: 100,
            max_headers: 64,
            default_result_ttl_ms: 24 * 3600 * 1000,
            idempotency_window_ms: 24 * 3600 * 1000,
            max_priority: 9,
        }
    }
}
