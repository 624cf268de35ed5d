//! `Client`, the producer's side: submit tasks, then read, await, watch or
//! cancel them through the submission and results services.

use std::time::{Duration, Instant};
use tracing::Instrument;

use conveyor_api::pb;
use conveyor_api::pb::results_service_client::ResultsServiceClient;
use conveyor_api::pb::submission_service_client::SubmissionServiceClient;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::canvas::{Canvas, WorkflowHandle};
use crate::error::{Error, Result, task_state};
use crate::payload::{duration_to_proto, from_optional_payload};
use crate::task::TaskRequest;

/// Most tasks one `SubmitTasks` call may carry (the service's limit).
pub const MAX_TASKS_PER_BATCH: usize = 1000;

/// Most encoded bytes of tasks in one `SubmitTasks` call: a larger batch is
/// split (a server accepts 64 MiB; a task holds at most 4 MiB of payloads).
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// The receive (and send) limit of this SDK's calls: above the largest
/// message a server sends (a task with 4 MiB of arguments, a worker frame of
/// `Welcome.max_frame_bytes`), where tonic's default of 4 MiB is not.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How much longer than the requested wait the gRPC deadline is, so that the
/// server's own timeout answers first and the network has time to carry it.
const WAIT_DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// A `WaitTask` that ended with `DEADLINE_EXCEEDED` sooner than this after it
/// started is not retried, even when time remains: the server refused rather
/// than waited, and asking again would spin.
const MIN_USEFUL_WAIT: Duration = Duration::from_secs(1);

/// A producer's handle on Conveyor. Cheap to clone: clones share the
/// underlying HTTP/2 connections.
#[derive(Debug, Clone)]
pub struct Client {
    submission: SubmissionServiceClient<Channel>,
    results: ResultsServiceClient<Channel>,
    /// `Bearer <token>`, sent as `authorization` on every call.
    authorization: Option<MetadataValue<Ascii>>,
    /// Namespace of every call; "" is `default`.
    namespace: String,
}

impl Client {
    /// Connects to an endpoint serving both the submission and the results
    /// services, such as `"http://127.0.0.1:50051"` (`conveyor dev`), or to
    /// several separated by commas (`"http://a:50051,http://b:50051"`):
    /// calls then go to the servers that answer, so one that dies is
    /// failed over. An address without a scheme is `http://`.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Client> {
        let channel = connect_channel(endpoint.into()).await?;
        Ok(Client::from_channel(channel))
    }

    /// As [`connect`](Self::connect), with TLS settings given in code
    /// instead of the `CONVEYOR_TLS_*` environment variables.
    pub async fn connect_with_tls(endpoint: impl Into<String>, tls: crate::Tls) -> Result<Client> {
        let channel = connect_channel_with(endpoint.into(), Some(&tls)).await?;
        Ok(Client::from_channel(channel))
    }

    /// Uses an existing channel for both services.
    pub fn from_channel(channel: Channel) -> Client {
        Client::from_channels(channel.clone(), channel)
    }

    /// Connects with one address per service (see [`Endpoints`]): each
    /// service's entry, else its `CONVEYOR_<SERVICE>_ADDR`, else `general`.
    /// For split roles without forwarding; a process started with `--peer`
    /// answers every service at one address.
    pub async fn connect_endpoints(
        general: impl Into<String>,
        endpoints: &crate::Endpoints,
    ) -> Result<Client> {
        use crate::endpoints::Service;
        let general = general.into();
        let submission = connect_channel(endpoints.resolve(Service::Submission, &general)).await?;
        let results = connect_channel(endpoints.resolve(Service::Results, &general)).await?;
        Ok(Client::from_channels(submission, results))
    }

    /// Uses one channel per service, for deployments where submission and
    /// results run as separate processes.
    pub fn from_channels(submission: Channel, results: Channel) -> Client {
        Client {
            submission: SubmissionServiceClient::new(submission)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            results: ResultsServiceClient::new(results)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            authorization: None,
            namespace: std::env::var("CONVEYOR_NAMESPACE").unwrap_or_default(),
        }
    }

    /// Sends `authorization: Bearer <token>` on every call, for a server
    /// started with `--auth-token`. Fails with [`Error::Config`] when the
    /// token cannot be a header value (visible ASCII only).
    ///
    /// ```no_run
    /// # async fn example() -> conveyor_client::Result<()> {
    /// let client = conveyor_client::Client::connect("http://127.0.0.1:50051")
    ///     .await?
    ///     .with_token("s3cret")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_token(mut self, token: impl AsRef<str>) -> Result<Client> {
        self.authorization = Some(bearer(token.as_ref())?);
        Ok(self)
    }

    /// Acts in `namespace` (tasks, queues and keys of other namespaces are
    /// invisible). Default: the `CONVEYOR_NAMESPACE` environment variable,
    /// else `default`.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Client {
        self.namespace = namespace.into();
        self
    }

    /// Wraps `message` in a `tonic::Request` carrying this client's token,
    /// for calls made through [`submission_client`](Self::submission_client)
    /// or [`results_client`](Self::results_client).
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        crate::trace::inject(authorize(
            tonic::Request::new(message),
            self.authorization.as_ref(),
        ))
    }

    /// The generated submission client, for calls this type does not wrap
    /// (build their requests with [`request`](Self::request) to send the token).
    pub fn submission_client(&self) -> SubmissionServiceClient<Channel> {
        self.submission.clone()
    }

    /// The generated results client, for calls this type does not wrap
    /// (build their requests with [`request`](Self::request) to send the token).
    pub fn results_client(&self) -> ResultsServiceClient<Channel> {
        self.results.clone()
    }

    /// Submits one task and returns its id (or, for a repeated idempotency
    /// key, the id of the task first submitted with it).
    pub async fn submit(&self, task: TaskRequest) -> Result<String> {
        let mut spec = task.into_spec()?;
        let span = crate::trace::publish_span(queue_of(&spec), &spec.name, 1);
        if spec.trace_context.is_none() {
            spec.trace_context = crate::trace::context_of(&span);
        }
        let request = pb::SubmitTaskRequest {
            task: Some(spec),
            namespace: self.namespace.clone(),
        };
        // A keyed submit may be repeated: the key makes it the same task.
        let safe = request
            .task
            .as_ref()
            .is_some_and(|task| !task.idempotency_key.is_empty());
        let response = with_failover(safe, || {
            let mut submission = self.submission.clone();
            let request = self.request(request.clone());
            async move { submission.submit_task(request).await }
        })
        .instrument(span.clone())
        .await;
        let id = match response {
            Ok(response) => response.into_inner().task_id,
            Err(error) => {
                crate::trace::record_error(&span, &error.to_string());
                return Err(error.into());
            }
        };
        span.record("messaging.message.id", id.as_str());
        Ok(id)
    }

    /// Submits many tasks and returns their ids in order.
    ///
    /// Every task is encoded before anything is sent. Tasks travel in one
    /// `SubmitTasks` call per [`MAX_TASKS_PER_BATCH`] tasks or
    /// [`MAX_BATCH_BYTES`] encoded bytes, whichever comes first; each call
    /// is all-or-nothing, but when a later call fails the earlier ones stay
    /// accepted.
    pub async fn submit_many(&self, tasks: Vec<TaskRequest>) -> Result<Vec<String>> {
        let mut specs = tasks
            .into_iter()
            .map(TaskRequest::into_spec)
            .collect::<Result<Vec<_>>>()?;
        let span = match specs.first() {
            Some(first) => crate::trace::publish_span(queue_of(first), &first.name, specs.len()),
            None => tracing::Span::none(),
        };
        if let Some(context) = crate::trace::context_of(&span) {
            for spec in specs.iter_mut().filter(|spec| spec.trace_context.is_none()) {
                spec.trace_context = Some(context.clone());
            }
        }
        let mut ids = Vec::with_capacity(specs.len());
        let submission = self.submission.clone();
        let mut remaining = specs.into_iter().peekable();
        while remaining.peek().is_some() {
            let mut batch: Vec<pb::TaskSpec> = Vec::new();
            let mut bytes = 0;
            while let Some(task) = remaining.peek() {
                let size = prost::Message::encoded_len(task) + 6;
                if !batch.is_empty()
                    && (batch.len() == MAX_TASKS_PER_BATCH || bytes + size > MAX_BATCH_BYTES)
                {
                    break;
                }
                bytes += size;
                batch.extend(remaining.next());
            }
            let sent = batch.len();
            let safe = batch.iter().all(|task| !task.idempotency_key.is_empty());
            let request = pb::SubmitTasksRequest {
                tasks: batch,
                namespace: self.namespace.clone(),
            };
            let results = with_failover(safe, || {
                let mut submission = submission.clone();
                let request = self.request(request.clone());
                async move { submission.submit_tasks(request).await }
            })
            .instrument(span.clone())
            .await?
            .into_inner()
            .results;
            if results.len() != sent {
                return Err(Error::Protocol(format!(
                    "submitted {sent} tasks, got {} results",
                    results.len()
                )));
            }
            ids.extend(results.into_iter().map(|result| result.task_id));
        }
        Ok(ids)
    }

    /// The task's current state and, once finished, its outcome.
    pub async fn get(&self, id: &str) -> Result<pb::Task> {
        let request = pb::GetTaskRequest {
            task_id: id.to_owned(),
            namespace: self.namespace.clone(),
        };
        let response = with_failover(true, || {
            let mut results = self.results.clone();
            let request = self.request(request.clone());
            async move { results.get_task(request).await }
        })
        .await?;
        response
            .into_inner()
            .task
            .ok_or_else(|| missing_task("GetTask"))
    }

    /// Waits up to `timeout` for the task to reach a terminal state and
    /// returns it, whatever that state is.
    ///
    /// When the timeout passes first the error is an [`Error::Rpc`] with code
    /// `DEADLINE_EXCEEDED` (see [`Error::is_timeout`]). Waits longer than the
    /// server's maximum are carried out as several calls.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<pb::Task> {
        self.wait_traced(id, timeout)
            .instrument(crate::trace::wait_span(id))
            .await
    }

    async fn wait_traced(&self, id: &str, timeout: Duration) -> Result<pb::Task> {
        let deadline = Instant::now() + timeout;
        let results = self.results.clone();
        loop {
            let started = Instant::now();
            let remaining = deadline.saturating_duration_since(started);
            let mut request = self.request(pb::WaitTaskRequest {
                task_id: id.to_owned(),
                timeout: Some(duration_to_proto(remaining)),
                namespace: self.namespace.clone(),
                ..Default::default()
            });
            // `grpc-timeout` is enforced by the server; the local timeout
            // guards against a server that never answers at all.
            let deadline_for_call = remaining.saturating_add(WAIT_DEADLINE_MARGIN);
            request.set_timeout(deadline_for_call);
            let call = with_failover(true, || {
                let mut again = self.request(request.get_ref().clone());
                again.set_timeout(deadline_for_call);
                let mut results = results.clone();
                async move { results.wait_task(again).await }
            });
            let answer = tokio::time::timeout(deadline_for_call + WAIT_DEADLINE_MARGIN, call)
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded("WaitTask got no answer"))
                });
            match answer {
                Ok(response) => {
                    return response
                        .into_inner()
                        .task
                        .ok_or_else(|| missing_task("WaitTask"));
                }
                Err(status) if should_wait_again(&status, started, deadline) => continue,
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// Waits for the task and decodes its JSON result into `T`.
    ///
    /// A `FAILED` task gives [`Error::TaskFailed`] with the handler's error;
    /// `CANCELLED` and `EXPIRED` give [`Error::TaskNotSucceeded`]. A task that
    /// returned nothing decodes as JSON `null` (so `T` may be `()` or
    /// `Option<_>`).
    pub async fn result<T: DeserializeOwned>(&self, id: &str, timeout: Duration) -> Result<T> {
        let task = self.wait(id, timeout).await?;
        if task_state(&task) != pb::TaskState::Succeeded {
            return Err(Error::from_unsuccessful_task(&task));
        }
        from_optional_payload(task.result.as_ref()).map_err(|reason| Error::Decode {
            what: format!("result of task {id}"),
            reason,
        })
    }

    /// Cancels a task that has not started yet. Returns true when this call
    /// cancelled it, false when it was already running or finished.
    pub async fn cancel(&self, id: &str) -> Result<bool> {
        let request = pb::CancelTaskRequest {
            task_id: id.to_owned(),
            namespace: self.namespace.clone(),
        };
        // Not repeated once sent (a second cancel would report "not
        // cancelled"), but tried on the next server when none was reached.
        let response = with_failover(false, || {
            let mut submission = self.submission.clone();
            let request = self.request(request.clone());
            async move { submission.cancel_task(request).await }
        })
        .await?;
        Ok(response.into_inner().cancelled)
    }

    /// Streams the task's current state, then every change; the stream ends
    /// after a terminal state.
    pub async fn watch(
        &self,
        id: &str,
    ) -> Result<impl Stream<Item = Result<pb::Task>> + Send + Unpin + 'static> {
        let request = pb::WatchTaskRequest {
            task_id: id.to_owned(),
            namespace: self.namespace.clone(),
        };
        let updates = self
            .results
            .clone()
            .watch_task(self.request(request))
            .await?
            .into_inner();
        Ok(updates.map(|update| update?.task.ok_or_else(|| missing_task("WatchTask"))))
    }

    /// Submits a workflow (a chain, group, chord, or a task with callbacks)
    /// in one atomic call. Without an idempotency key of its own, the
    /// workflow gets a random one, so a call that met UNAVAILABLE can be
    /// repeated without running it twice.
    pub async fn submit_workflow(&self, canvas: impl Into<Canvas>) -> Result<WorkflowHandle> {
        self.submit_workflow_spec(canvas.into().compile()?).await
    }

    /// Submits a compiled workflow (see [`Canvas::compile`]); set its
    /// `options` for defaults every node inherits, its `idempotency_key`
    /// to make the submit repeatable.
    pub async fn submit_workflow_spec(&self, mut spec: pb::WorkflowSpec) -> Result<WorkflowHandle> {
        if spec.idempotency_key.is_empty() {
            spec.idempotency_key = format!("workflow-{}", uuid::Uuid::new_v4());
        }
        let span = crate::trace::publish_span("workflow", &spec.name, spec.nodes.len());
        if spec.trace_context.is_none() {
            spec.trace_context = crate::trace::context_of(&span);
        }
        let outputs = spec.outputs.clone();
        let request = pb::SubmitWorkflowRequest {
            workflow: Some(spec),
            namespace: self.namespace.clone(),
        };
        let response = with_failover(true, || {
            let mut submission = self.submission.clone();
            let request = self.request(request.clone());
            async move { submission.submit_workflow(request).await }
        })
        .instrument(span.clone())
        .await
        .inspect_err(|error| crate::trace::record_error(&span, &error.to_string()))?
        .into_inner();
        span.record("messaging.message.id", response.workflow_id.as_str());
        Ok(WorkflowHandle {
            output_task_ids: outputs
                .iter()
                .filter_map(|index| response.task_ids.get(*index as usize).cloned())
                .collect(),
            id: response.workflow_id,
            task_ids: response.task_ids,
            duplicate: response.duplicate,
        })
    }

    /// A workflow with every node's state and outcome (no arguments).
    pub async fn get_workflow(&self, id: &str) -> Result<pb::Workflow> {
        let request = pb::GetWorkflowRequest {
            workflow_id: id.to_owned(),
            namespace: self.namespace.clone(),
            view: pb::WorkflowView::Nodes as i32,
        };
        with_failover(true, || {
            let mut results = self.results.clone();
            let request = self.request(request.clone());
            async move { results.get_workflow(request).await }
        })
        .await?
        .into_inner()
        .workflow
        .ok_or_else(|| missing_task("GetWorkflow"))
    }

    /// Waits until every node of the workflow finished (or `timeout`
    /// passes: `DEADLINE_EXCEEDED`) and returns its summary.
    pub async fn wait_workflow(&self, id: &str, timeout: Duration) -> Result<pb::Workflow> {
        let deadline = Instant::now() + timeout;
        loop {
            let started = Instant::now();
            let remaining = deadline.saturating_duration_since(started);
            let deadline_for_call = remaining.saturating_add(WAIT_DEADLINE_MARGIN);
            let message = pb::WaitWorkflowRequest {
                workflow_id: id.to_owned(),
                timeout: Some(duration_to_proto(remaining)),
                namespace: self.namespace.clone(),
                view: pb::WorkflowView::Summary as i32,
            };
            let call = with_failover(true, || {
                let mut request = self.request(message.clone());
                request.set_timeout(deadline_for_call);
                let mut results = self.results.clone();
                async move { results.wait_workflow(request).await }
            });
            match call.await {
                Ok(response) => {
                    return response
                        .into_inner()
                        .workflow
                        .ok_or_else(|| missing_task("WaitWorkflow"));
                }
                Err(status) if should_wait_again(&status, started, deadline) => continue,
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// Waits for the workflow and decodes its result (a chain's last
    /// result; a group's list). A FAILED workflow gives
    /// [`Error::TaskFailed`] naming the task that failed first.
    pub async fn workflow_result<T: DeserializeOwned>(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<T> {
        let workflow = self.wait_workflow(id, timeout).await?;
        match pb::WorkflowState::try_from(workflow.state) {
            Ok(pb::WorkflowState::Succeeded) => from_optional_payload(workflow.result.as_ref())
                .map_err(|reason| Error::Decode {
                    what: format!("result of workflow {id}"),
                    reason,
                }),
            Ok(pb::WorkflowState::Failed) => {
                let failed = workflow.failed_task_id.clone();
                let detail = self.get(&failed).await.ok();
                let error = detail.and_then(|task| task.error).unwrap_or_default();
                Err(Error::TaskFailed {
                    error_type: error.r#type,
                    message: format!(
                        "workflow {id} failed: its task {failed} failed: {}",
                        error.message
                    ),
                    traceback: error.traceback,
                })
            }
            _ => Err(Error::TaskNotSucceeded {
                state: pb::TaskState::Cancelled,
            }),
        }
    }

    /// Cancels every unfinished task of the workflow; returns how many.
    pub async fn cancel_workflow(&self, id: &str) -> Result<u32> {
        let request = pb::CancelWorkflowRequest {
            workflow_id: id.to_owned(),
            namespace: self.namespace.clone(),
        };
        let response = with_failover(true, || {
            let mut submission = self.submission.clone();
            let request = self.request(request.clone());
            async move { submission.cancel_workflow(request).await }
        })
        .await?;
        Ok(response.into_inner().cancelled)
    }
}

/// Parses `endpoint` and connects, failing fast when nothing listens there.
/// Runs `call`, and again (up to 6 attempts, backing off from 20 ms to
/// 500 ms) when it fails with UNAVAILABLE and may be repeated: always when
/// the request never left (no server could be reached: with several
/// addresses the next try may reach another), and on any UNAVAILABLE for a
/// `safe` call (a read, or a submit with an idempotency key).
async fn with_failover<T, F, Fut>(safe: bool, mut call: F) -> std::result::Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
{
    let mut delay = Duration::from_millis(20);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(status) if attempt < 6 && may_repeat(&status, safe) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Whether a failed call may be sent again: UNAVAILABLE for a `safe` call,
/// or any failure before the request left this process.
fn may_repeat(status: &tonic::Status, safe: bool) -> bool {
    match status.code() {
        tonic::Code::Unavailable => safe || never_sent(status),
        // What hyper reports for a request still queued on a connection that
        // closed before writing it (a server killed a moment ago).
        tonic::Code::Cancelled => never_sent(status),
        _ => false,
    }
}

/// Whether the call failed before its request reached any server: the
/// connection could not be made, or closed before the request was written
/// (hyper's "operation was canceled").
fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        let text = error.to_string();
        if text.contains("tcp connect error")
            || text.contains("Connection refused")
            || text.starts_with("operation was canceled")
        {
            return true;
        }
        source = error.source();
    }
    status.message().contains("tcp connect error")
        || status.message().starts_with("operation was canceled")
}

pub(crate) async fn connect_channel(endpoint: String) -> Result<Channel> {
    connect_channel_with(endpoint, None).await
}

pub(crate) async fn connect_channel_with(
    endpoint: String,
    tls: Option<&crate::Tls>,
) -> Result<Channel> {
    let endpoints = endpoints_with(&endpoint, tls)?;
    match <[Endpoint; 1]>::try_from(endpoints) {
        Ok([one]) => Ok(one.connect().await?),
        Err(several) => Ok(Channel::balance_list(several.into_iter())),
    }
}

/// A channel to `addresses`, connected on first use: one address, or
/// several separated by commas, over which calls are balanced and from which
/// a server that stops answering is dropped (failover).
pub(crate) fn lazy_channel(addresses: &str, tls: Option<&crate::Tls>) -> Result<Channel> {
    let endpoints = endpoints_with(addresses, tls)?;
    match <[Endpoint; 1]>::try_from(endpoints) {
        Ok([one]) => Ok(one.connect_lazy()),
        Err(several) => Ok(Channel::balance_list(several.into_iter())),
    }
}

/// The endpoints of `http://a:1,b:2`. An address without a scheme is
/// `http://`, or `https://` when `CONVEYOR_TLS_CA` or a client certificate
/// (`CONVEYOR_TLS_CERT` and `CONVEYOR_TLS_KEY`) is set; `https://`
/// addresses trust the system roots plus `CONVEYOR_TLS_CA` and present that
/// client certificate (mTLS).
///
/// TLS settings given in code win; `None` reads the environment's.
pub(crate) fn endpoints_with(addresses: &str, tls: Option<&crate::Tls>) -> Result<Vec<Endpoint>> {
    let tls = crate::Tls::or_env(tls)?;
    let endpoints = addresses
        .split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(|address| {
            let url = if address.contains("://") {
                if address.starts_with("http://") && tls.is_set() {
                    return Err(Error::Config(format!(
                        "{address} is plaintext but TLS settings are given (CONVEYOR_TLS_CA, CONVEYOR_TLS_CERT): use https://{}",
                        &address["http://".len()..]
                    )));
                }
                address.to_owned()
            } else if tls.is_set() {
                format!("https://{address}")
            } else {
                format!("http://{address}")
            };
            let endpoint = Endpoint::from_shared(url.clone()).map_err(Error::from)?;
            if url.starts_with("https://") {
                endpoint.tls_config(tls.client_config()?).map_err(Error::from)
            } else {
                Ok(endpoint)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if endpoints.is_empty() {
        return Err(Error::Config(format!(
            "no server address in {addresses:?}: give one, e.g. http://127.0.0.1:50051, or several separated by commas"
        )));
    }
    Ok(endpoints)
}

/// The `authorization` value for `token`: `Bearer <token>`.
pub(crate) fn bearer(token: &str) -> Result<MetadataValue<Ascii>> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| Error::Config("the token must be visible ASCII".to_owned()))
}

/// Puts `authorization` on `request` when there is one.
pub(crate) fn authorize<T>(
    mut request: tonic::Request<T>,
    authorization: Option<&MetadataValue<Ascii>>,
) -> tonic::Request<T> {
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}

/// The queue a spec goes to, for span names.
fn queue_of(spec: &pb::TaskSpec) -> &str {
    spec.options
        .as_ref()
        .map(|options| options.queue.as_str())
        .filter(|queue| !queue.is_empty())
        .unwrap_or("default")
}

fn missing_task(rpc: &str) -> Error {
    Error::Protocol(format!("{rpc} response carries no task"))
}

/// True when a `WaitTask` timed out at the server's cap rather than ours:
/// time remains and the call really waited.
fn should_wait_again(status: &tonic::Status, started: Instant, deadline: Instant) -> bool {
    let now = Instant::now();
    status.code() == tonic::Code::DeadlineExceeded
        && now.duration_since(started) >= MIN_USEFUL_WAIT
        && deadline.saturating_duration_since(now) >= MIN_USEFUL_WAIT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_again_only_after_a_real_wait_with_time_left() {
        let status = tonic::Status::deadline_exceeded("capped");
        let now = Instant::now();
        let long_ago = now - Duration::from_secs(300);
        let far = now + Duration::from_secs(600);
        assert!(should_wait_again(&status, long_ago, far));
        assert!(!should_wait_again(&status, now, far), "refused at once");
        assert!(!should_wait_again(&status, long_ago, now), "no time left");
        let other = tonic::Status::unavailable("down");
        assert!(!should_wait_again(&other, long_ago, far));
    }

    #[tokio::test]
    async fn the_token_travels_as_a_bearer_authorization() {
        let client =
            Client::from_channel(Endpoint::from_static("http://127.0.0.1:1").connect_lazy());
        let plain = client.request(());
        assert!(plain.metadata().get("authorization").is_none());
        let client = client.with_token("s3cret").expect("valid token");
        let request = client.request(());
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        assert!(matches!(
            client.with_token("bad\ntoken"),
            Err(Error::Config(_))
        ));
    }

    #[tokio::test]
    async fn connect_rejects_a_malformed_endpoint() {
        let error = Client::connect("not a uri").await.expect_err("invalid");
        assert!(matches!(error, Error::Transport(_)), "{error:?}");
    }
}
