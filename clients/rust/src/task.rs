//! `TaskRequest`, the builder that turns a task name, arguments and options
//! into the `TaskSpec` a producer submits.

use std::time::{Duration, SystemTime};

use conveyor_api::pb;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::payload::{duration_to_proto, to_payload};

/// A task to submit: its name, arguments and options.
///
/// Arguments are encoded as JSON as they are added; an encoding failure is
/// kept and returned by [`TaskRequest::into_spec`] (and so by
/// [`Client::submit`](crate::Client::submit)), which keeps the builder chain
/// free of `?`:
///
/// ```
/// # use std::time::Duration;
/// # use conveyor_client::TaskRequest;
/// let spec = TaskRequest::new("add")
///     .arg(2)
///     .arg(3)
///     .queue("math")
///     .countdown(Duration::from_secs(10))
///     .max_retries(3)
///     .into_spec()
///     .expect("arguments encode");
/// assert_eq!(spec.args.len(), 2);
/// ```
#[derive(Debug, Clone)]
#[must_use = "a TaskRequest does nothing until it is submitted"]
pub struct TaskRequest {
    spec: pb::TaskSpec,
    /// The first argument that failed to encode, reported by `into_spec`.
    encode_error: Option<EncodeFailure>,
}

/// An argument that failed to encode; `serde_json::Error` is not `Clone`,
/// so the builder keeps its message.
#[derive(Debug, Clone)]
struct EncodeFailure {
    what: String,
    reason: String,
}

impl TaskRequest {
    /// Starts a request for the task registered under `name`.
    pub fn new(name: impl Into<String>) -> Self {
        TaskRequest {
            spec: pb::TaskSpec {
                name: name.into(),
                ..Default::default()
            },
            encode_error: None,
        }
    }

    /// The task name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Appends a positional argument, encoded as JSON.
    pub fn arg<T: Serialize>(mut self, value: T) -> Self {
        let what = format!("positional argument {}", self.spec.args.len());
        let payload = self.encode(what, &value);
        self.spec.args.push(payload);
        self
    }

    /// Sets a named argument, encoded as JSON.
    pub fn kwarg<T: Serialize>(mut self, name: impl Into<String>, value: T) -> Self {
        let name = name.into();
        let payload = self.encode(format!("named argument {name:?}"), &value);
        self.spec.kwargs.insert(name, payload);
        self
    }

    /// Appends a positional argument that is already encoded, in any content
    /// type the handler understands.
    pub fn raw_arg(mut self, payload: pb::Payload) -> Self {
        self.spec.args.push(payload);
        self
    }

    /// Sets a named argument that is already encoded.
    pub fn raw_kwarg(mut self, name: impl Into<String>, payload: pb::Payload) -> Self {
        self.spec.kwargs.insert(name.into(), payload);
        self
    }

    /// Routes the task to `queue` (the platform default is "default").
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.options().queue = queue.into();
        self
    }

    /// Priority within the queue, 0 (lowest) to 9 (highest).
    pub fn priority(mut self, priority: u32) -> Self {
        self.options().priority = priority;
        self
    }

    /// Runs the task no earlier than `delay` after submission. Replaces any
    /// [`eta`](Self::eta): the two are exclusive.
    pub fn countdown(mut self, delay: Duration) -> Self {
        let options = self.options();
        options.eta = None;
        options.countdown = Some(duration_to_proto(delay));
        self
    }

    /// Runs the task no earlier than `at`. Replaces any
    /// [`countdown`](Self::countdown): the two are exclusive.
    pub fn eta(mut self, at: SystemTime) -> Self {
        let options = self.options();
        options.countdown = None;
        options.eta = Some(at.into());
        self
    }

    /// A task not started by `at` becomes `EXPIRED` and never runs.
    pub fn expires(mut self, at: SystemTime) -> Self {
        self.options().expires = Some(at.into());
        self
    }

    /// Allows `retries` retries after the first attempt, with the platform's
    /// default backoff unless [`retry_policy`](Self::retry_policy) set one.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.options()
            .retry
            .get_or_insert_with(pb::RetryPolicy::default)
            .max_retries = retries;
        self
    }

    /// Sets the whole retry policy (count, backoff base, factor, max, jitter).
    pub fn retry_policy(mut self, policy: pb::RetryPolicy) -> Self {
        self.options().retry = Some(policy);
        self
    }

    /// After `limit` the worker asks the handler to stop (cooperatively).
    pub fn soft_time_limit(mut self, limit: Duration) -> Self {
        self.options().soft_time_limit = Some(duration_to_proto(limit));
        self
    }

    /// After `limit` the lease is revoked and the attempt fails.
    pub fn hard_time_limit(mut self, limit: Duration) -> Self {
        self.options().hard_time_limit = Some(duration_to_proto(limit));
        self
    }

    /// At most this many starts per time unit, Celery's syntax ("20/s",
    /// "100/m", "5/h"), enforced globally; shared by the task name, or by
    /// name and [`TaskRequest::rate_limit_key`] when one is set.
    pub fn rate_limit(mut self, rate: impl Into<String>) -> Self {
        self.options().rate_limit = rate.into();
        self
    }

    /// Tasks sharing `key` share a rate limit.
    pub fn rate_limit_key(mut self, key: impl Into<String>) -> Self {
        self.options().rate_limit_key = key.into();
        self
    }

    /// At most `limit` tasks holding `key` run at once. Call it once per
    /// key for a task that needs several at once (up to 8, each once): the
    /// task is leased only when every key has a free permit and takes them
    /// all together, so tasks sharing keys cannot deadlock.
    ///
    /// ```
    /// # use conveyor_client::TaskRequest;
    /// // Philosopher 4 needs forks 4 and 0.
    /// let meal = TaskRequest::new("eat")
    ///     .arg(4)
    ///     .concurrency_limit("fork:4", 1)
    ///     .concurrency_limit("fork:0", 1);
    /// ```
    pub fn concurrency_limit(mut self, key: impl Into<String>, limit: u32) -> Self {
        self.options().concurrency_keys.push(pb::ConcurrencyKey {
            key: key.into(),
            limit,
        });
        self
    }

    /// A second submit with the same key, within the idempotency window,
    /// returns the first task's id and creates nothing.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.spec.idempotency_key = key.into();
        self
    }

    /// Adds a header passed to the worker untouched (trace context, tenant…).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.options().headers.insert(name.into(), value.into());
        self
    }

    /// Keeps the outcome this long after the task finishes.
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.options().result_ttl = Some(duration_to_proto(ttl));
        self
    }

    /// The protobuf spec, or the first argument encoding error.
    pub fn into_spec(self) -> Result<pb::TaskSpec> {
        match self.encode_error {
            Some(failure) => Err(Error::Encode {
                what: format!("{} of task {:?}", failure.what, self.spec.name),
                source: serde::ser::Error::custom(failure.reason),
            }),
            None => Ok(self.spec),
        }
    }

    fn options(&mut self) -> &mut pb::TaskOptions {
        self.spec
            .options
            .get_or_insert_with(pb::TaskOptions::default)
    }

    /// Encodes one argument, remembering the first failure; a failed argument
    /// still takes its position so later indices stay meaningful.
    fn encode<T: Serialize>(&mut self, what: String, value: &T) -> pb::Payload {
        to_payload(value).unwrap_or_else(|error| {
            self.encode_error.get_or_insert(EncodeFailure {
                what,
                reason: error.to_string(),
            });
            pb::Payload::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn decode(payload: &pb::Payload) -> serde_json::Value {
        assert_eq!(payload.content_type, "application/json");
        serde_json::from_slice(&payload.data).expect("valid json")
    }

    #[test]
    fn encodes_arguments_as_json() {
        let spec = TaskRequest::new("add")
            .arg(2)
            .arg("x")
            .arg(vec![1.5, 2.0])
            .kwarg("scale", json!({"by": 3}))
            .raw_arg(pb::Payload {
                data: vec![0xff],
                content_type: "application/octet-stream".into(),
            })
            .into_spec()
            .expect("encodes");
        assert_eq!(spec.name, "add");
        let args: Vec<_> = spec.args.iter().take(3).map(decode).collect();
        assert_eq!(args, vec![json!(2), json!("x"), json!([1.5, 2.0])]);
        assert_eq!(spec.args[1].data, br#""x""#);
        assert_eq!(spec.args[3].content_type, "application/octet-stream");
        assert_eq!(decode(&spec.kwargs["scale"]), json!({"by": 3}));
        assert!(spec.options.is_none(), "no option set, none sent");
    }

    #[test]
    fn sets_options() {
        let eta = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let spec = TaskRequest::new("t")
            .queue("q")
            .priority(7)
            .countdown(Duration::from_millis(2500))
            .expires(eta)
            .max_retries(4)
            .idempotency_key("k-1")
            .header("traceparent", "00-abc")
            .result_ttl(Duration::from_secs(60))
            .soft_time_limit(Duration::from_secs(5))
            .hard_time_limit(Duration::from_secs(9))
            .rate_limit_key("api")
            .concurrency_limit("db", 2)
            .into_spec()
            .expect("encodes");
        let options = spec.options.expect("options");
        assert_eq!(options.queue, "q");
        assert_eq!(options.priority, 7);
        let countdown = options.countdown.expect("countdown");
        assert_eq!((countdown.seconds, countdown.nanos), (2, 500_000_000));
        assert_eq!(options.eta, None);
        assert_eq!(options.expires.expect("expires").seconds, 1_700_000_000);
        let retry = options.retry.expect("retry");
        assert_eq!(retry.max_retries, 4);
        assert_eq!(retry.backoff_base, None, "server default backoff");
        assert_eq!(spec.idempotency_key, "k-1");
        let headers: BTreeMap<_, _> = options.headers.into_iter().collect();
        assert_eq!(headers["traceparent"], "00-abc");
        assert_eq!(options.result_ttl.expect("ttl").seconds, 60);
        assert_eq!(options.soft_time_limit.expect("soft").seconds, 5);
        assert_eq!(options.hard_time_limit.expect("hard").seconds, 9);
        assert_eq!(options.rate_limit_key, "api");
        let keys: Vec<(&str, u32)> = options
            .concurrency_keys
            .iter()
            .map(|entry| (entry.key.as_str(), entry.limit))
            .collect();
        assert_eq!(keys, vec![("db", 2)]);
    }

    #[test]
    fn countdown_and_eta_are_exclusive() {
        let eta = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        let with_eta = TaskRequest::new("t")
            .countdown(Duration::from_secs(1))
            .eta(eta)
            .into_spec()
            .expect("encodes");
        let options = with_eta.options.expect("options");
        assert_eq!(options.countdown, None);
        assert_eq!(options.eta.expect("eta").seconds, 5);

        let with_countdown = TaskRequest::new("t")
            .eta(eta)
            .countdown(Duration::from_secs(1))
            .into_spec()
            .expect("encodes");
        let options = with_countdown.options.expect("options");
        assert_eq!(options.eta, None);
        assert_eq!(options.countdown.expect("countdown").seconds, 1);
    }

    #[test]
    fn max_retries_keeps_an_explicit_policy() {
        let policy = pb::RetryPolicy {
            max_retries: 1,
            backoff_factor: 3.0,
            jitter: true,
            ..Default::default()
        };
        let spec = TaskRequest::new("t")
            .retry_policy(policy)
            .max_retries(6)
            .into_spec()
            .expect("encodes");
        let retry = spec
            .options
            .and_then(|options| options.retry)
            .expect("retry");
        assert_eq!(retry.max_retries, 6);
        assert_eq!(retry.backoff_factor, 3.0);
        assert!(retry.jitter);
    }

    #[test]
    fn reports_the_first_encoding_error() {
        // JSON object keys must be strings: a map keyed by a tuple cannot encode.
        let unencodable: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let request = TaskRequest::new("t")
            .arg(1)
            .arg(&unencodable)
            .kwarg("bad", &unencodable);
        let error = request.into_spec().expect_err("encoding fails");
        match &error {
            Error::Encode { what, .. } => {
                assert_eq!(what, r#"positional argument 1 of task "t""#)
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(
            error.to_string().contains("key must be a string"),
            "{error}"
        );
    }
}
