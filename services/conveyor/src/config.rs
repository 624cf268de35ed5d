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
    /// Most starts per time unit, e.g. "10/m" (Celery's `rate_limit`).
    rate_limit: Option<String>,
    /// Share the rate per this key instead of per name.
    rate_limit_key: Option<String>,
    /// Concurrency key.
    concurrency_key: Option<String>,
    /// Most tasks with the key running at once.
    concurrency_limit: Option<u32>,
    /// Keys needed all at once: `[{ key = "fork:1", limit = 1 }, …]`.
    #[serde(default)]
    concurrency_keys: Vec<KeyDefault>,
}

/// One entry of `concurrency-keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDefault {
    key: String,
    limit: u32,
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
            rate_limit: self.rate_limit.unwrap_or_default(),
            rate_limit_key: self.rate_limit_key.unwrap_or_default(),
            concurrency_key: self.concurrency_key.unwrap_or_default(),
            concurrency_limit: self.concurrency_limit.unwrap_or(0),
            concurrency_keys: self
                .concurrency_keys
                .into_iter()
                .map(|entry| pb::ConcurrencyKey {
                    key: entry.key,
                    limit: entry.limit,
                })
                .collect(),
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
            rate-limit = "10/m"
            concurrency-key = "psp"
            concurrency-limit = 4
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
        assert_eq!(
            (charge.rate_limit.as_str(), charge.concurrency_limit),
            ("10/m", 4)
        );
    }

    #[test]
    fn rejects_unknown_keys_bad_durations_and_invalid_options() {
        assert!(parse_task_defaults("[tasks.x]\nqueu = \"a\"", "f").is_err());
        assert!(parse_task_defaults("[tasks.x]\nresult-ttl = \"soon\"", "f").is_err());
        let error = parse_task_defaults("[tasks.x]\nmax-retries = 1000", "f").unwrap_err();
        assert!(error.reason.contains("max_retries"), "{error}");
        let error = parse_task_defaults("[tasks.x]\nqueue = \"a:b\"", "f").unwrap_err();
        assert!(error.reason.contains("queue"), "{error}");
        let error = parse_task_defaults(
            "[tasks.x]\nconcurrency-keys = [{ key = \"a\", limit = 1 }, { key = \"a\", limit = 2 }]",
            "f",
        )
        .unwrap_err();
        assert!(error.reason.contains("concurrency_keys[1].key"), "{error}");
    }

    /// The README's example file is the documentation of every key: it
    /// must parse.
    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("### Defaults per task name")
            .nth(1)
            .expect("README section");
        let block = section
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a toml block");
        let defaults = parse_task_defaults(block, "README.md").unwrap();
        let charge = defaults.get("charge").expect("tasks.charge");
        assert_eq!(charge.concurrency_keys.len(), 2);
    }

    #[test]
    fn parses_several_concurrency_keys() {
        let defaults = parse_task_defaults(
            r#"
            [tasks.eat]
            concurrency-keys = [{ key = "fork:1", limit = 1 }, { key = "fork:2", limit = 1 }]
            "#,
            "defaults.toml",
        )
        .unwrap();
        let keys: Vec<(&str, u32)> = defaults
            .get("eat")
            .unwrap()
            .concurrency_keys
            .iter()
            .map(|entry| (entry.key.as_str(), entry.limit))
            .collect();
        assert_eq!(keys, vec![("fork:1", 1), ("fork:2", 1)]);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulesFile {
    /// Schedules by id.
    #[serde(default)]
    schedules: BTreeMap<String, DeclaredSchedule>,
}

/// One schedule in the file; exactly one of `every`, `cron`, `solar`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct DeclaredSchedule {
    /// Task name.
    task: String,
    /// Positional arguments (any TOML values, sent as JSON).
    #[serde(default)]
    args: Vec<toml::Value>,
    /// Named arguments.
    #[serde(default)]
    kwargs: BTreeMap<String, toml::Value>,
    /// Queue.
    queue: Option<String>,
    /// Fixed interval, e.g. "10m".
    every: Option<String>,
    /// Cron expression.
    cron: Option<String>,
    /// IANA zone of `cron`.
    time_zone: Option<String>,
    /// Solar event: sunrise, sunset, solar-noon, dawn-civil, dusk-civil, …
    solar: Option<String>,
    /// Latitude of `solar`.
    latitude: Option<f64>,
    /// Longitude of `solar`.
    longitude: Option<f64>,
    /// Random delay up to this per run.
    jitter: Option<String>,
    /// "skip" (default) or "run-once".
    catch_up: Option<String>,
}

fn json_payload(value: &toml::Value, what: &str) -> Result<pb::Payload, String> {
    let data = serde_json::to_vec(value).map_err(|error| format!("{what}: {error}"))?;
    Ok(pb::Payload {
        data,
        content_type: "application/json".into(),
    })
}

impl DeclaredSchedule {
    fn into_schedule(self, id: String) -> Result<pb::Schedule, String> {
        let field = |name: &str| format!("schedules.{id}.{name}");
        let rule = match (&self.every, &self.cron, &self.solar) {
            (Some(every), None, None) => pb::schedule::Rule::Interval(pb::IntervalRule {
                every: duration(&id, "every", &Some(every.clone()))?,
            }),
            (None, Some(cron), None) => pb::schedule::Rule::Cron(pb::CronRule {
                expression: cron.clone(),
                time_zone: self.time_zone.clone().unwrap_or_default(),
            }),
            (None, None, Some(event)) => {
                let event = match event.as_str() {
                    "sunrise" => pb::SolarEvent::Sunrise,
                    "sunset" => pb::SolarEvent::Sunset,
                    "solar-noon" => pb::SolarEvent::SolarNoon,
                    "dawn-civil" => pb::SolarEvent::DawnCivil,
                    "dusk-civil" => pb::SolarEvent::DuskCivil,
                    "dawn-nautical" => pb::SolarEvent::DawnNautical,
                    "dusk-nautical" => pb::SolarEvent::DuskNautical,
                    "dawn-astronomical" => pb::SolarEvent::DawnAstronomical,
                    "dusk-astronomical" => pb::SolarEvent::DuskAstronomical,
                    other => {
                        return Err(format!("{}: unknown solar event {other:?}", field("solar")));
                    }
                };
                pb::schedule::Rule::Solar(pb::SolarRule {
                    event: event as i32,
                    latitude: self
                        .latitude
                        .ok_or_else(|| format!("{} is required", field("latitude")))?,
                    longitude: self
                        .longitude
                        .ok_or_else(|| format!("{} is required", field("longitude")))?,
                })
            }
            _ => {
                return Err(format!(
                    "schedules.{id}: set exactly one of every, cron or solar"
                ));
            }
        };
        let catch_up = match self.catch_up.as_deref() {
            None | Some("skip") => pb::CatchUp::Skip,
            Some("run-once") => pb::CatchUp::RunOnce,
            Some(other) => {
                return Err(format!(
                    "{}: {other:?}: expected skip or run-once",
                    field("catch-up")
                ));
            }
        };
        let args = self
            .args
            .iter()
            .enumerate()
            .map(|(index, value)| json_payload(value, &field(&format!("args[{index}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        let kwargs = self
            .kwargs
            .iter()
            .map(|(name, value)| {
                Ok((
                    name.clone(),
                    json_payload(value, &field(&format!("kwargs.{name}")))?,
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(pb::Schedule {
            id: id.clone(),
            task: Some(pb::TaskSpec {
                name: self.task,
                args,
                kwargs,
                options: Some(pb::TaskOptions {
                    queue: self.queue.unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            rule: Some(rule),
            jitter: duration(&id, "jitter", &self.jitter)?,
            catch_up: catch_up as i32,
            ..Default::default()
        })
    }
}

/// Parses a schedules file (`--schedules`); each schedule is validated as
/// CreateSchedule would, so a bad one fails at start.
pub fn parse_schedules(text: &str, path: &str) -> Result<Vec<pb::Schedule>, ConfigError> {
    let invalid = |reason: String| ConfigError {
        path: path.to_string(),
        reason,
    };
    let file: SchedulesFile = toml::from_str(text).map_err(|error| invalid(error.to_string()))?;
    let schedules = file
        .schedules
        .into_iter()
        .map(|(id, declared)| declared.into_schedule(id))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    conveyor_scheduling::Scheduler::check_declared(&schedules)
        .map_err(|error| invalid(error.to_string()))?;
    Ok(schedules)
}

/// Reads and parses a schedules file.
pub fn load_schedules(path: &Path) -> Result<Vec<pb::Schedule>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        path: path.display().to_string(),
        reason: error.to_string(),
    })?;
    parse_schedules(&text, &path.display().to_string())
}

#[cfg(test)]
mod schedule_file_tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds_of_rule() {
        let schedules = parse_schedules(
            r#"
            [schedules.heartbeat]
            task = "ping"
            every = "30s"

            [schedules.nightly-report]
            task = "report.build"
            args = ["daily", 3]
            queue = "reports"
            cron = "0 3 * * *"
            time-zone = "Europe/Berlin"
            catch-up = "run-once"
            jitter = "1m"

            [schedules.lights-on]
            task = "lights"
            kwargs = { on = true }
            solar = "sunset"
            latitude = 52.52
            longitude = 13.40
            "#,
            "schedules.toml",
        )
        .unwrap();
        assert_eq!(schedules.len(), 3);
        let report = schedules.iter().find(|s| s.id == "nightly-report").unwrap();
        assert_eq!(report.task.as_ref().unwrap().args[1].data, b"3");
        assert_eq!(report.catch_up, pb::CatchUp::RunOnce as i32);
        assert!(matches!(report.rule, Some(pb::schedule::Rule::Cron(_))));
    }

    #[test]
    fn rejects_bad_schedules_at_start() {
        let error =
            parse_schedules("[schedules.x]\ntask = \"t\"\ncron = \"0 0 * *\"", "f").unwrap_err();
        assert!(error.reason.contains("cron.expression"), "{error}");
        let error = parse_schedules(
            "[schedules.x]\ntask = \"t\"\nevery = \"1m\"\ncron = \"* * * * *\"",
            "f",
        )
        .unwrap_err();
        assert!(error.reason.contains("exactly one"), "{error}");
        let error = parse_schedules(
            "[schedules.x]\ntask = \"t\"\nsolar = \"sunrise\"\nlatitude = 95.0\nlongitude = 0.0",
            "f",
        )
        .unwrap_err();
        assert!(error.reason.contains("latitude"), "{error}");
    }
}
