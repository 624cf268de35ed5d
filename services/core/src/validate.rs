//! Validation of submitted tasks: every rule names the field it protects, and
//! a valid spec becomes a [`NewTask`] with defaults applied, ready to store.

use conveyor_api::{pb, store_pb};

use crate::backoff::Backoff;
use crate::defaults::TaskDefaults;
use crate::error::{ConveyorError, Result};
use crate::ids::TaskId;
use crate::limits::{Limits, MAX_BACKOFF_FACTOR, MAX_RATE_INTERVAL_MS, MIN_RATE_INTERVAL_MS};
use crate::namespace::Namespace;
use crate::time::{duration_ms, ms_from_timestamp};

/// The queue used when a task names none.
pub const DEFAULT_QUEUE: &str = "default";
const JSON: &str = "application/json";

/// A validated task with defaults applied, not yet stored.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Its id (partition included).
    pub id: TaskId,
    /// Queue it is routed to.
    pub queue: String,
    /// Immutable record kept at rest.
    pub record: store_pb::TaskRecord,
    /// When it may run; `<= created_at_ms` means at once.
    pub due_at_ms: i64,
    /// When it expires if not started; 0 for never.
    pub expires_at_ms: i64,
    /// How long the outcome is kept, milliseconds.
    pub result_ttl_ms: i64,
    /// Idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// How long the key is remembered, milliseconds.
    pub idempotency_ttl_ms: i64,
    /// Rate limit bucket (`name`, or `name|key`) and the milliseconds
    /// between starts it allows; `None` without a rate limit.
    pub rate_limit: Option<(String, f64)>,
    /// Concurrency keys and their limits, all taken at once (see
    /// [`crate::concurrency`]); empty without any.
    pub concurrency: Vec<(String, u32)>,
}

impl NewTask {
    /// Moves the task into `namespace`: its queue, idempotency key and limit
    /// keys are scoped to it (see [`crate::namespace`]).
    pub fn in_namespace(mut self, namespace: &Namespace) -> Self {
        if namespace.is_default() {
            return self;
        }
        self.queue = namespace.queue(&self.queue);
        self.idempotency_key = self.idempotency_key.map(|key| namespace.key(&key));
        self.rate_limit = self
            .rate_limit
            .map(|(bucket, interval)| (namespace.key(&bucket), interval));
        for (key, _) in &mut self.concurrency {
            *key = namespace.key(key);
        }
        self.record.namespace = namespace.stored().to_string();
        self
    }

    /// Whether it goes to the scheduled set rather than its queue.
    pub fn is_delayed(&self) -> bool {
        self.due_at_ms > self.record.created_at_ms
    }
}

/// Checks a name of a task or queue: non-empty, bounded, a safe character set.
pub fn check_name(field: &str, value: &str, max_len: usize, extra: &[char]) -> Result<()> {
    if value.is_empty() {
        return Err(ConveyorError::invalid(field, "must not be empty"));
    }
    if value.len() > max_len {
        return Err(ConveyorError::invalid(
            field,
            format!("must be at most {max_len} bytes, got {}", value.len()),
        ));
    }
    let allowed = |c: char| {
        c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' || extra.contains(&c)
    };
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(ConveyorError::invalid(
            field,
            format!(
                "contains {bad:?}; allowed are letters, digits and _-.{}",
                extra.iter().collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// Parses Celery's rate syntax ("10/s", "100/m", "5/h", or a bare number per
/// second) into milliseconds between starts.
pub fn parse_rate(field: &str, text: &str) -> Result<f64> {
    if text.chars().any(char::is_whitespace) {
        return Err(ConveyorError::invalid(
            field,
            format!("{text:?} has spaces: write a rate as \"10/m\""),
        ));
    }
    let (count, unit) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
    let per_ms = match unit.trim() {
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        other => {
            return Err(ConveyorError::invalid(
                field,
                format!("unit {other:?}: expected s, m or h, as in \"10/m\""),
            ));
        }
    };
    let count: f64 = count.trim().parse().map_err(|_| {
        ConveyorError::invalid(field, format!("{text:?} is not a rate such as \"10/m\""))
    })?;
    if !(count.is_finite() && count > 0.0) {
        return Err(ConveyorError::invalid(field, "the rate must be positive"));
    }
    let interval = per_ms / count;
    if !(MIN_RATE_INTERVAL_MS..=MAX_RATE_INTERVAL_MS).contains(&interval) {
        return Err(ConveyorError::invalid(
            field,
            format!("{text:?} is out of range: allowed are 1/d (\"0.0417/h\") to \"1000000/s\""),
        ));
    }
    Ok(interval)
}

/// Checks one payload's size and, when declared JSON, that it parses.
pub fn check_payload(field: &str, payload: &pb::Payload, limits: &Limits) -> Result<()> {
    if payload.data.len() > limits.max_payload_bytes {
        return Err(ConveyorError::exhausted(
            field,
            format!(
                "payload is {} bytes, the limit is {}",
                payload.data.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    let content_type = payload.content_type.as_str();
    if (content_type.is_empty() || content_type == JSON)
        && serde_json::from_slice::<serde::de::IgnoredAny>(&payload.data).is_err()
    {
        return Err(ConveyorError::invalid(
            format!("{field}.data"),
            "declared application/json but does not parse as JSON",
        ));
    }
    Ok(())
}

/// Validates `spec` (reported under `prefix`, e.g. `task` or `tasks[3]`) and
/// builds the task to store.
pub fn validate_spec(
    spec: pb::TaskSpec,
    prefix: &str,
    limits: &Limits,
    now_ms: i64,
    partition: u16,
) -> Result<NewTask> {
    validate_with_defaults(
        spec,
        prefix,
        limits,
        &TaskDefaults::default(),
        now_ms,
        partition,
    )
}

/// As [`validate_spec`], filling unset options from `defaults` for the task's
/// name first (the defaults are validated with the task).
pub fn validate_with_defaults(
    spec: pb::TaskSpec,
    prefix: &str,
    limits: &Limits,
    defaults: &TaskDefaults,
    now_ms: i64,
    partition: u16,
) -> Result<NewTask> {
    check_name(
        &format!("{prefix}.name"),
        &spec.name,
        limits.max_name_len,
        &[':', '/'],
    )?;
    let mut spec = spec;
    // JSON is stored as the canonical empty content type: "application/json"
    // repeated per argument would push small task records past Redis'
    // compact (listpack) hash encoding.
    for payload in spec.args.iter_mut().chain(spec.kwargs.values_mut()) {
        if payload.content_type == JSON {
            payload.content_type.clear();
        }
    }
    if spec.args.len() > limits.max_args || spec.kwargs.len() > limits.max_args {
        return Err(ConveyorError::exhausted(
            format!("{prefix}.args"),
            format!(
                "{} positional and {} named arguments; the limit is {} of each",
                spec.args.len(),
                spec.kwargs.len(),
                limits.max_args
            ),
        ));
    }
    let mut total_bytes = 0usize;
    for (index, payload) in spec.args.iter().enumerate() {
        check_payload(&format!("{prefix}.args[{index}]"), payload, limits)?;
        total_bytes += payload.data.len();
    }
    for (key, payload) in &spec.kwargs {
        if key.is_empty() {
            return Err(ConveyorError::invalid(
                format!("{prefix}.kwargs"),
                "keys must not be empty",
            ));
        }
        check_payload(&format!("{prefix}.kwargs[{key}]"), payload, limits)?;
        total_bytes += payload.data.len();
    }
    if total_bytes > limits.max_task_bytes {
        return Err(ConveyorError::exhausted(
            format!("{prefix}.args"),
            format!(
                "payloads total {total_bytes} bytes, the limit is {}",
                limits.max_task_bytes
            ),
        ));
    }
    if spec.idempotency_key.len() > limits.max_name_len
        || spec.idempotency_key.chars().any(char::is_control)
    {
        return Err(ConveyorError::invalid(
            format!("{prefix}.idempotency_key"),
            format!(
                "must be at most {} bytes, without control characters",
                limits.max_name_len
            ),
        ));
    }
    if let Some(context) = &spec.trace_context {
        check_trace_context(&format!("{prefix}.trace_context"), context)?;
    }
    let mut options = spec.options.unwrap_or_default();
    defaults.apply(&spec.name, &mut options);
    let timing = check_options(&mut options, &format!("{prefix}.options"), limits, now_ms)?;
    // The default queue is implicit in the stored options (the queue key
    // carries it): a few bytes per task that Redis would keep for each.
    let queue = if options.queue.is_empty() {
        DEFAULT_QUEUE.to_string()
    } else {
        options.queue.clone()
    };
    let rate_limit = if options.rate_limit.is_empty() {
        if !options.rate_limit_key.is_empty() {
            return Err(ConveyorError::invalid(
                format!("{prefix}.options.rate_limit"),
                "required when rate_limit_key is set",
            ));
        }
        None
    } else {
        let interval_ms = parse_rate(&format!("{prefix}.options.rate_limit"), &options.rate_limit)?;
        check_key(
            &format!("{prefix}.options.rate_limit_key"),
            &options.rate_limit_key,
        )?;
        let bucket = if options.rate_limit_key.is_empty() {
            spec.name.clone()
        } else {
            format!("{}|{}", spec.name, options.rate_limit_key)
        };
        Some((bucket, interval_ms))
    };
    let concurrency = concurrency_keys(&options, &format!("{prefix}.options"))?;
    let idempotency_key = (!spec.idempotency_key.is_empty()).then(|| spec.idempotency_key.clone());
    let record = store_pb::TaskRecord {
        name: spec.name,
        args: spec.args,
        kwargs: spec.kwargs,
        options: Some(options),
        created_at_ms: now_ms,
        idempotency_key: spec.idempotency_key,
        namespace: String::new(),
        trace_context: spec
            .trace_context
            .filter(|context| !context.traceparent.is_empty()),
        submitted_by: String::new(),
    };
    Ok(NewTask {
        id: TaskId::new(partition),
        queue,
        record,
        due_at_ms: timing.due_at_ms,
        expires_at_ms: timing.expires_at_ms,
        result_ttl_ms: timing.result_ttl_ms,
        idempotency_key,
        idempotency_ttl_ms: limits.idempotency_window_ms,
        rate_limit,
        concurrency,
    })
}

/// Whether `parent` is a well-formed W3C `traceparent`:
/// version-traceid-parentid-flags in lowercase hex.
pub fn is_traceparent(parent: &str) -> bool {
    let hex = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let parts: Vec<&str> = parent.split('-').collect();
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

/// A W3C trace context: `traceparent` is version-traceid-parentid-flags in
/// lowercase hex (or empty: no context); `tracestate` is bounded.
fn check_trace_context(field: &str, context: &pb::TraceContext) -> Result<()> {
    let parent = context.traceparent.as_str();
    if !parent.is_empty() && !is_traceparent(parent) {
        return Err(ConveyorError::invalid(
            format!("{field}.traceparent"),
            "must be a W3C traceparent such as \"00-<32 hex>-<16 hex>-01\"",
        ));
    }
    if context.tracestate.len() > 512 || context.tracestate.chars().any(char::is_control) {
        return Err(ConveyorError::invalid(
            format!("{field}.tracestate"),
            "must be at most 512 printable bytes",
        ));
    }
    Ok(())
}

/// The task's concurrency keys: `concurrency_key` first (when its limit is
/// set), then `concurrency_keys`; at most [`crate::concurrency::MAX_KEYS`],
/// each once, each with a limit of at least 1.
fn concurrency_keys(options: &pb::TaskOptions, prefix: &str) -> Result<Vec<(String, u32)>> {
    let mut keys: Vec<(String, u32)> = Vec::new();
    if options.concurrency_limit > 0 {
        check_key(
            &format!("{prefix}.concurrency_key"),
            &options.concurrency_key,
        )?;
        keys.push((options.concurrency_key.clone(), options.concurrency_limit));
    }
    let total = keys.len() + options.concurrency_keys.len();
    if total > crate::concurrency::MAX_KEYS {
        return Err(ConveyorError::invalid(
            format!("{prefix}.concurrency_keys"),
            format!(
                "a task may need at most {} concurrency keys, this one names {total}",
                crate::concurrency::MAX_KEYS
            ),
        ));
    }
    for (index, entry) in options.concurrency_keys.iter().enumerate() {
        let field = format!("{prefix}.concurrency_keys[{index}]");
        if entry.key.is_empty() {
            return Err(ConveyorError::invalid(
                format!("{field}.key"),
                "must not be empty",
            ));
        }
        check_key(&format!("{field}.key"), &entry.key)?;
        if entry.limit == 0 {
            return Err(ConveyorError::invalid(
                format!("{field}.limit"),
                format!("key {:?} needs a limit of at least 1", entry.key),
            ));
        }
        if keys.iter().any(|(key, _)| *key == entry.key) {
            return Err(ConveyorError::invalid(
                format!("{field}.key"),
                format!("{:?} is named twice; give each key once", entry.key),
            ));
        }
        keys.push((entry.key.clone(), entry.limit));
    }
    Ok(keys)
}

/// Keys of rate and concurrency limits: printable, no spaces, bounded.
fn check_key(field: &str, key: &str) -> Result<()> {
    if key.len() > 200
        || key
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '|')
    {
        return Err(ConveyorError::invalid(
            field,
            "at most 200 printable characters, no spaces or '|'",
        ));
    }
    Ok(())
}

struct Timing {
    due_at_ms: i64,
    expires_at_ms: i64,
    result_ttl_ms: i64,
}

fn non_negative(
    field: String,
    value: Option<&prost_types::Duration>,
    limits: &Limits,
) -> Result<Option<i64>> {
    let Some(duration) = value else {
        return Ok(None);
    };
    let ms = duration_ms(duration)
        .ok_or_else(|| ConveyorError::invalid(field.clone(), "must be a non-negative duration"))?;
    if ms > limits.max_horizon_ms {
        return Err(ConveyorError::invalid(
            field,
            format!(
                "must be at most {} days",
                limits.max_horizon_ms / 86_400_000
            ),
        ));
    }
    Ok(Some(ms))
}

/// An instant from a timestamp, no further than the horizon from now.
fn instant(
    field: String,
    value: &prost_types::Timestamp,
    limits: &Limits,
    now_ms: i64,
) -> Result<i64> {
    // Checked before converting, so that the conversion cannot overflow.
    let in_range = value.seconds.unsigned_abs() < limits.max_horizon_ms.unsigned_abs()
        && (0..1_000_000_000).contains(&value.nanos);
    let ms = if in_range {
        ms_from_timestamp(value)
    } else {
        i64::MAX
    };
    if ms > now_ms.saturating_add(limits.max_horizon_ms) {
        return Err(ConveyorError::invalid(
            field,
            format!(
                "must be a valid time at most {} days ahead",
                limits.max_horizon_ms / 86_400_000
            ),
        ));
    }
    Ok(ms)
}

fn check_options(
    options: &mut pb::TaskOptions,
    prefix: &str,
    limits: &Limits,
    now_ms: i64,
) -> Result<Timing> {
    if !options.queue.is_empty() {
        check_name(
            &format!("{prefix}.queue"),
            &options.queue,
            limits.max_queue_len,
            &[],
        )?;
    }
    if options.priority > limits.max_priority {
        return Err(ConveyorError::invalid(
            format!("{prefix}.priority"),
            format!("must be between 0 and {}", limits.max_priority),
        ));
    }
    let countdown_ms = non_negative(
        format!("{prefix}.countdown"),
        options.countdown.as_ref(),
        limits,
    )?;
    if countdown_ms.is_some() && options.eta.is_some() {
        return Err(ConveyorError::invalid(
            format!("{prefix}.eta"),
            "countdown and eta are exclusive; set one",
        ));
    }
    let due_at_ms = match (&options.eta, countdown_ms) {
        (Some(eta), _) => instant(format!("{prefix}.eta"), eta, limits, now_ms)?.max(now_ms),
        (None, Some(countdown)) => now_ms.saturating_add(countdown),
        (None, None) => now_ms,
    };
    let expires_at_ms = match &options.expires {
        Some(expires) => instant(format!("{prefix}.expires"), expires, limits, now_ms)?,
        None => 0,
    };
    if options.expires.is_some() && expires_at_ms <= due_at_ms {
        return Err(ConveyorError::invalid(
            format!("{prefix}.expires"),
            "must be later than the time the task is due",
        ));
    }
    if let Some(retry) = &options.retry {
        let field = format!("{prefix}.retry");
        if retry.max_retries > limits.max_retries {
            return Err(ConveyorError::invalid(
                format!("{field}.max_retries"),
                format!("must be at most {}", limits.max_retries),
            ));
        }
        if retry.backoff_factor != 0.0
            && !(1.0..=MAX_BACKOFF_FACTOR).contains(&retry.backoff_factor)
        {
            return Err(ConveyorError::invalid(
                format!("{field}.backoff_factor"),
                format!("must be between 1.0 and {MAX_BACKOFF_FACTOR}"),
            ));
        }
        non_negative(
            format!("{field}.backoff_base"),
            retry.backoff_base.as_ref(),
            limits,
        )?;
        non_negative(
            format!("{field}.backoff_max"),
            retry.backoff_max.as_ref(),
            limits,
        )?;
        Backoff::from_pb(Some(retry));
    }
    non_negative(
        format!("{prefix}.soft_time_limit"),
        options.soft_time_limit.as_ref(),
        limits,
    )?;
    non_negative(
        format!("{prefix}.hard_time_limit"),
        options.hard_time_limit.as_ref(),
        limits,
    )?;
    if options.concurrency_limit > 0 && options.concurrency_key.is_empty() {
        return Err(ConveyorError::invalid(
            format!("{prefix}.concurrency_key"),
            "required when concurrency_limit is set",
        ));
    }
    if options.headers.len() > limits.max_headers {
        return Err(ConveyorError::invalid(
            format!("{prefix}.headers"),
            format!("at most {} headers", limits.max_headers),
        ));
    }
    let result_ttl_ms = non_negative(
        format!("{prefix}.result_ttl"),
        options.result_ttl.as_ref(),
        limits,
    )?
    .filter(|ttl| *ttl > 0)
    .unwrap_or(limits.default_result_ttl_ms);
    Ok(Timing {
        due_at_ms,
        expires_at_ms,
        result_ttl_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> pb::Payload {
        pb::Payload {
            data: text.as_bytes().to_vec(),
            content_type: String::new(),
        }
    }

    fn spec(name: &str) -> pb::TaskSpec {
        pb::TaskSpec {
            name: name.to_string(),
            args: vec![json("2"), json("2")],
            ..Default::default()
        }
    }

    fn field_of(error: ConveyorError) -> String {
        match error {
            ConveyorError::InvalidArgument(violation) => violation.field,
            ConveyorError::ResourceExhausted { field, .. } => field,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn extreme_numbers_are_refused_before_anything_is_stored() {
        let limits = Limits::default();
        for rate in ["1e-300/s", "1e300/s", "0.00001/h", "NaN/s", "inf/s"] {
            assert!(parse_rate("r", rate).is_err(), "{rate} accepted");
        }
        assert!(parse_rate("r", "1000000/s").is_ok());
        assert!(parse_rate("r", "1/h").is_ok());
        let far = prost_types::Duration {
            seconds: i64::MAX / 2,
            nanos: 0,
        };
        let options = [
            pb::TaskOptions {
                countdown: Some(far),
                ..Default::default()
            },
            pb::TaskOptions {
                result_ttl: Some(far),
                ..Default::default()
            },
            pb::TaskOptions {
                eta: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..Default::default()
            },
            pb::TaskOptions {
                expires: Some(prost_types::Timestamp {
                    seconds: i64::MIN,
                    nanos: 0,
                }),
                ..Default::default()
            },
            pb::TaskOptions {
                retry: Some(pb::RetryPolicy {
                    backoff_factor: 1e300,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        for options in options {
            let mut task = spec("add");
            task.options = Some(options.clone());
            assert!(
                validate_spec(task, "task", &limits, 1000, 0).is_err(),
                "accepted {options:?}"
            );
        }
    }

    #[test]
    fn valid_spec_gets_defaults() {
        let task = validate_spec(spec("add"), "task", &Limits::default(), 1000, 0).unwrap();
        assert_eq!(task.queue, "default");
        assert_eq!(task.due_at_ms, 1000);
        assert!(!task.is_delayed());
        assert_eq!(task.result_ttl_ms, Limits::default().default_result_ttl_ms);
    }

    #[test]
    fn names_are_checked() {
        let limits = Limits::default();
        let empty = validate_spec(spec(""), "task", &limits, 0, 0).unwrap_err();
        assert_eq!(field_of(empty), "task.name");
        let long = validate_spec(spec(&"x".repeat(201)), "task", &limits, 0, 0).unwrap_err();
        assert_eq!(field_of(long), "task.name");
        let spaced = validate_spec(spec("a b"), "task", &limits, 0, 0).unwrap_err();
        assert_eq!(field_of(spaced), "task.name");
        assert!(validate_spec(spec("billing.charge:v2/eu"), "task", &limits, 0, 0).is_ok());
    }

    #[test]
    fn payloads_are_checked() {
        let limits = Limits {
            max_payload_bytes: 10,
            ..Limits::default()
        };
        let mut big = spec("add");
        big.args[1] = json(&format!("\"{}\"", "x".repeat(20)));
        let error = validate_spec(big, "task", &limits, 0, 0).unwrap_err();
        assert!(matches!(error, ConveyorError::ResourceExhausted { .. }));
        let mut broken = spec("add");
        broken.args[0] = json("{not json");
        assert_eq!(
            field_of(validate_spec(broken, "task", &limits, 0, 0).unwrap_err()),
            "task.args[0].data"
        );
        let mut binary = spec("add");
        binary.args[0] = pb::Payload {
            data: vec![0xff, 0x00],
            content_type: "application/octet-stream".into(),
        };
        assert!(validate_spec(binary, "task", &limits, 0, 0).is_ok());
    }

    #[test]
    fn timing_rules_name_their_field() {
        let limits = Limits::default();
        let mut both = spec("add");
        both.options = Some(pb::TaskOptions {
            countdown: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            eta: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 0,
            }),
            ..Default::default()
        });
        assert_eq!(
            field_of(validate_spec(both, "task", &limits, 0, 0).unwrap_err()),
            "task.options.eta"
        );
        let mut negative = spec("add");
        negative.options = Some(pb::TaskOptions {
            countdown: Some(prost_types::Duration {
                seconds: -5,
                nanos: 0,
            }),
            ..Default::default()
        });
        assert_eq!(
            field_of(validate_spec(negative, "task", &limits, 0, 0).unwrap_err()),
            "task.options.countdown"
        );
        let mut early_expiry = spec("add");
        early_expiry.options = Some(pb::TaskOptions {
            countdown: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            expires: Some(prost_types::Timestamp {
                seconds: 30,
                nanos: 0,
            }),
            ..Default::default()
        });
        assert_eq!(
            field_of(validate_spec(early_expiry, "task", &limits, 0, 0).unwrap_err()),
            "task.options.expires"
        );
        let mut retries = spec("add");
        retries.options = Some(pb::TaskOptions {
            retry: Some(pb::RetryPolicy {
                max_retries: 1000,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            field_of(validate_spec(retries, "task", &limits, 0, 0).unwrap_err()),
            "task.options.retry.max_retries"
        );
    }

    #[test]
    fn rates_parse_in_celery_syntax() {
        assert_eq!(parse_rate("f", "20/s").unwrap(), 50.0);
        assert_eq!(parse_rate("f", "10/m").unwrap(), 6000.0);
        assert_eq!(parse_rate("f", "2/h").unwrap(), 1_800_000.0);
        assert_eq!(parse_rate("f", "100").unwrap(), 10.0);
        for bad in ["0/s", "-1/s", "ten/s", "5/d", "", "1/"] {
            assert!(parse_rate("f", bad).is_err(), "{bad:?}");
        }
        let mut limited = spec("add");
        limited.options = Some(pb::TaskOptions {
            rate_limit: "0/s".into(),
            ..Default::default()
        });
        let error = validate_spec(limited, "task", &Limits::default(), 0, 0).unwrap_err();
        assert_eq!(field_of(error), "task.options.rate_limit");
        let mut keyed = spec("add");
        keyed.options = Some(pb::TaskOptions {
            rate_limit: "5/s".into(),
            rate_limit_key: "customer-7".into(),
            concurrency_key: "customer-7".into(),
            concurrency_limit: 3,
            ..Default::default()
        });
        let task = validate_spec(keyed, "task", &Limits::default(), 0, 0).unwrap();
        assert_eq!(task.rate_limit, Some(("add|customer-7".to_string(), 200.0)));
        assert_eq!(task.concurrency, vec![("customer-7".to_string(), 3)]);
    }

    #[test]
    fn concurrency_keys_are_bounded_distinct_and_limited() {
        let spec_with = |legacy: Option<&str>, keys: Vec<(&str, u32)>| pb::TaskSpec {
            name: "eat".into(),
            options: Some(pb::TaskOptions {
                concurrency_key: legacy.unwrap_or_default().into(),
                concurrency_limit: u32::from(legacy.is_some()),
                concurrency_keys: keys
                    .into_iter()
                    .map(|(key, limit)| pb::ConcurrencyKey {
                        key: key.into(),
                        limit,
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let check = |spec| validate_spec(spec, "task", &Limits::default(), 0, 0);
        let task = check(spec_with(Some("db"), vec![("fork:1", 1), ("fork:2", 2)])).unwrap();
        assert_eq!(
            task.concurrency,
            vec![
                ("db".to_string(), 1),
                ("fork:1".to_string(), 1),
                ("fork:2".to_string(), 2)
            ]
        );
        let names: Vec<String> = (0..9).map(|i| format!("k{i}")).collect();
        let nine = names.iter().map(|name| (name.as_str(), 1)).collect();
        let error = check(spec_with(None, nine)).unwrap_err().to_string();
        assert!(
            error.contains("task.options.concurrency_keys") && error.contains("at most 8"),
            "{error}"
        );
        let eight: Vec<(&str, u32)> = names[..8].iter().map(|name| (name.as_str(), 1)).collect();
        assert!(check(spec_with(None, eight.clone())).is_ok());
        let error = check(spec_with(Some("db"), eight)).unwrap_err().to_string();
        assert!(error.contains("at most 8"), "{error}");
        let error = check(spec_with(None, vec![("a", 1), ("a", 1)]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("task.options.concurrency_keys[1].key") && error.contains("twice"),
            "{error}"
        );
        let error = check(spec_with(Some("a"), vec![("a", 1)]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("task.options.concurrency_keys[0].key"),
            "{error}"
        );
        let error = check(spec_with(None, vec![("a", 1), ("b", 0)]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("task.options.concurrency_keys[1].limit"),
            "{error}"
        );
        let error = check(spec_with(None, vec![("a b", 1)]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("task.options.concurrency_keys[0].key"),
            "{error}"
        );
        let error = check(spec_with(None, vec![("", 1)]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("task.options.concurrency_keys[0].key"),
            "{error}"
        );
    }

    #[test]
    fn countdown_delays_the_task() {
        let mut delayed = spec("add");
        delayed.options = Some(pb::TaskOptions {
            countdown: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            ..Default::default()
        });
        let task = validate_spec(delayed, "task", &Limits::default(), 1000, 0).unwrap();
        assert_eq!(task.due_at_ms, 3000);
        assert!(task.is_delayed());
    }
}
