//! The task defaults file (`--task-defaults`): options per task name, in TOML.
//!
//! ```toml
//! [tasks.charge]
//! queue = "billing"
//! max-retries = 5
//! backoff-base = "1s"
//! backoff-factor = 2.0
//! backoff-max = "10m"
//! jitter = true
//! soft-time-limit = "30s"
//! hard-time-limit = "60s"
//! result-ttl = "1h"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use conveyor_api::pb;
use conveyor_core::TaskDefaults;
use conveyor_core::time::pb_duration;

/// An invalid configuration: the process exits 64.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {path}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsFile {
    /// Defaults per task name.
    #[serde(default)]
    tasks: BTreeMap<String, NameDefaults>,
}

/// Defaults for one task name; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct NameDefaults {
    /// Queue to route to.
    queue: Option<String>,
    /// Priority 0-9.
    priority: Option<u32>,
    /// Retries after the first attempt.
    max_retries: Option<u32>,
    /// First retry delay, e.g. "1s".
    backoff_base: Option<String>,
    /// Growth per retry.
    backoff_factor: Option<f64>,
    /// Cap on one delay.
    backoff_max: Option<String>,
    /// Full jitter.
    jitter: Option<bool>,
    /// Cooperative time limit.
    soft_time_limit: Option<String>,
    /// Hard time limit.
    hard_time_limit: Option<String>,
    /// How long outcomes are kept.
    result_ttl: Option<String>,
    /// Headers added to every task of the name.
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn duration(
    name: &str,
    field: &str,
    text: &Option<String>,
) -> Result<Option<prost_types::Duration>, String> {
    text.as_deref()
        .map(|text| {
            humantime::parse_duration(text)
                .map(pb_duration)
                .map_err(|error| format!("tasks.{name}.{field}: {text:?}: {error}"))
        })
        .transpose()
}

impl NameDefaults {
    fn into_options(self, name: &str) -> Result<pb::TaskOptions, String> {
        let retry_fields = self.max_retries.is_some()
            || self.backoff_base.is_some()
            || self.backoff_factor.is_some()
            || self.backoff_max.is_some()
            || self.jitter.is_some();
        let retry = if retry_fields {
            Some(pb::RetryPolicy {
                max_retries: self.max_retries.unwrap_or(0),
                backoff_base: duration(name, "backoff-base", &self.backoff_base)?,
                backoff_factor: self.backoff_factor.unwrap_or(0.0),
                backoff_max: duration(name, "backoff-max", &self.backoff_max)?,
                jitter: self.jitter.unwrap_or(false),
            })
        } else {
            None
        };
        Ok(pb::TaskOptions {
            queue: self.queue.unwrap_or_default(),
            priority: self.priority.unwrap_or(0),
            retry,
            soft_time_limit: duration(name, "soft-time-limit", &self.soft_time_limit)?,
            hard_time_limit: duration(name, "hard-time-limit", &self.hard_time_limit)?,
            result_ttl: duration(name, "result-ttl", &self.result_ttl)?,
            headers: self.headers.into_iter().collect(),
            ..Default::default()
        })
    }
}

/// Parses a defaults file's text. Each name's defaults are also validated as
/// a task's options would be, so a bad default fails at start, not at submit.
pub fn parse_task_defaults(text: &str, path: &str) -> Result<TaskDefaults, ConfigError> {
    let invalid = |reason: String| ConfigError {
        path: path.to_string(),
        reason,
    };
    let file: DefaultsFile = toml::from_str(text).map_err(|error| invalid(error.to_string()))?;
    let mut by_name = Vec::new();
    for (name, defaults) in file.tasks {
        let options = defaults.into_options(&name).map_err(invalid)?;
        let probe = pb::TaskSpec {
            name: name.clone(),
            options: Some(options.clone()),
            ..Default::default()
        };
        conveyor_core::validate::validate_spec(
            probe,
            &format!("tasks.{name}"),
            &conveyor_core::Limits::default(),
            0,
            0,
        )
        .map_err(|error| invalid(error.to_string()))?;
        by_name.push((name, options));
    }
    Ok(TaskDefaults::new(by_name))
}

/// Reads and parses a defaults file.
pub fn load_task_defaults(path: &Path) -> Result<TaskDefaults, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        path: path.display().to_string(),
        reason: error.to_string(),
    })?;
    parse_task_defaults(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_durations() {
        let defaults = parse_task_defaults(
            r#"
            [tasks.charge]
            queue = "billing"
            max-retries = 5
            backoff-base = "2s"
            hard-time-limit = "1m"
            headers = { team = "payments" }
            "#,
            "defaults.toml",
        )
        .unwrap();
        let charge = defaults.get("charge").unwrap();
        assert_eq!(charge.queue, "billing");
        let retry = charge.retry.as_ref().unwrap();
        assert_eq!(
            (retry.max_retries, retry.backoff_base.unwrap().seconds),
            (5, 2)
        );
        assert_eq!(charge.hard_time_limit.unwrap().seconds, 60);
        assert_eq!(charge.headers["team"], "payments");
    }

    #[test]
    fn rejects_unknown_keys_bad_durations_and_invalid_options() {
        assert!(parse_task_defaults("[tasks.x]\nqueu = \"a\"", "f").is_err());
        assert!(parse_task_defaults("[tasks.x]\nresult-ttl = \"soon\"", "f").is_err());
        let error = parse_task_defaults("[tasks.x]\nmax-retries = 1000", "f").unwrap_err();
        assert!(error.reason.contains("max_retries"), "{error}");
        let error = parse_task_defaults("[tasks.x]\nqueue = \"a:b\"", "f").unwrap_err();
        assert!(error.reason.contains("queue"), "{error}");
    }
}
