//! Defaults per task name: options a task does not set take its name's
//! defaults, then the platform's.

use std::collections::HashMap;

use conveyor_api::pb;

/// Options per task name, applied field by field at submission.
#[derive(Debug, Clone, Default)]
pub struct TaskDefaults {
    by_name: HashMap<String, pb::TaskOptions>,
}

impl TaskDefaults {
    /// Defaults from (name, options) pairs.
    pub fn new(by_name: impl IntoIterator<Item = (String, pb::TaskOptions)>) -> Self {
        Self {
            by_name: by_name.into_iter().collect(),
        }
    }

    /// The defaults of `name`, if any.
    pub fn get(&self, name: &str) -> Option<&pb::TaskOptions> {
        self.by_name.get(name)
    }

    /// Fills the fields `options` leaves unset from `name`'s defaults.
    pub fn apply(&self, name: &str, options: &mut pb::TaskOptions) {
        let Some(defaults) = self.by_name.get(name) else {
            return;
        };
        if options.queue.is_empty() {
            options.queue = defaults.queue.clone();
        }
        if options.priority == 0 {
            options.priority = defaults.priority;
        }
        if options.retry.is_none() {
            options.retry = defaults.retry;
        }
        if options.soft_time_limit.is_none() {
            options.soft_time_limit = defaults.soft_time_limit;
        }
        if options.hard_time_limit.is_none() {
            options.hard_time_limit = defaults.hard_time_limit;
        }
        if options.result_ttl.is_none() {
            options.result_ttl = defaults.result_ttl;
        }
        if options.rate_limit.is_empty() {
            options.rate_limit = defaults.rate_limit.clone();
        }
        if options.rate_limit_key.is_empty() {
            options.rate_limit_key = defaults.rate_limit_key.clone();
        }
        if options.concurrency_key.is_empty()
            && options.concurrency_limit == 0
            && options.concurrency_keys.is_empty()
        {
            options.concurrency_key = defaults.concurrency_key.clone();
            options.concurrency_limit = defaults.concurrency_limit;
            options.concurrency_keys = defaults.concurrency_keys.clone();
        }
        for (key, value) in &defaults.headers {
            options
                .headers
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_take_the_name_defaults_and_set_ones_win() {
        let defaults = TaskDefaults::new([(
            "charge".to_string(),
            pb::TaskOptions {
                queue: "billing".into(),
                retry: Some(pb::RetryPolicy {
                    max_retries: 5,
                    ..Default::default()
                }),
                hard_time_limit: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..Default::default()
            },
        )]);
        let mut plain = pb::TaskOptions::default();
        defaults.apply("charge", &mut plain);
        assert_eq!(plain.queue, "billing");
        assert_eq!(plain.retry.unwrap().max_retries, 5);
        let mut explicit = pb::TaskOptions {
            queue: "urgent".into(),
            retry: Some(pb::RetryPolicy::default()),
            ..Default::default()
        };
        defaults.apply("charge", &mut explicit);
        assert_eq!(explicit.queue, "urgent");
        assert_eq!(explicit.retry.unwrap().max_retries, 0);
        assert!(explicit.hard_time_limit.is_some());
        let mut other = pb::TaskOptions::default();
        defaults.apply("refund", &mut other);
        assert!(other.queue.is_empty());
    }
}
