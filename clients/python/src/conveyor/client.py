"""`Client`: the synchronous producer API (submit, get, wait, result, watch,
cancel, and the same for workflows) over the submission and results
services."""

from __future__ import annotations

import copy
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from conveyor import _codec, _tracing
from conveyor._common import (
    CHANNEL_OPTIONS,
    DEFAULT_RPC_TIMEOUT,
    RETRY_ATTEMPTS,
    WAIT_DEADLINE_MARGIN,
    Endpoint,
    Security,
    Target,
    as_request,
    call_metadata,
    closed_hint,
    distinct_channels,
    given_channel,
    open_endpoints,
    resolve_namespace,
    retry_delay,
    split_batches,
    wait_again,
)
from conveyor._workflow import check_submitted, needs_nodes, prepare, require_workflow, settle, view_of
from conveyor._workflow import outcome as workflow_outcome
from conveyor.errors import ConveyorError, ProtocolError
from conveyor.v1 import (
    dispatch_service_pb2,
    dispatch_service_pb2_grpc,
    results_service_pb2,
    results_service_pb2_grpc,
    scheduling_service_pb2_grpc,
    submission_service_pb2,
    submission_service_pb2_grpc,
    task_pb2,
    workflow_pb2,
)
from conveyor.schedules import Schedules

__all__ = ["Client"]


class Client:
    """A producer's handle on Conveyor (blocking calls; thread-safe).

    ```python
    client = conveyor.Client("http://127.0.0.1:50051")
    task_id = client.submit("add", [2, 3], queue="math")
    assert client.result(task_id, timeout=10) == 5
    ```

    `address` defaults to `$CONVEYOR_ADDR`, then `http://127.0.0.1:50051`;
    several addresses (a comma-separated string or a list) are failed over:
    a call that is safe to repeat (reads, submissions with an idempotency key,
    which `submit` adds unless given, pausing queues) is retried on
    UNAVAILABLE, on the next address, up to 5 attempts with backoff.
    `token` is sent as a bearer token. Errors of calls raise `ConveyorError`
    with the gRPC status `code`.

    `endpoints` gives services their own address (or failover list), for
    roles run as separate processes: keys "submission", "results",
    "dispatch", "scheduling", e.g. `endpoints={"results": "http://results:50051"}`.
    Each call goes to the service that defines it. A service's address is
    the first found of: `endpoints[service]`, `$CONVEYOR_<SERVICE>_ADDR`
    (`CONVEYOR_SUBMISSION_ADDR`, `CONVEYOR_RESULTS_ADDR`,
    `CONVEYOR_DISPATCH_ADDR`, `CONVEYOR_SCHEDULING_ADDR`), `address`,
    `$CONVEYOR_ADDR`, `http://127.0.0.1:50051`.

    TLS: `https://` addresses use TLS with the system roots. `tls_ca` (a PEM
    CA bundle to trust instead), and `tls_cert` with `tls_key` (the client
    certificate and key of mTLS), paths to PEM files, default to
    `$CONVEYOR_TLS_CA`, `$CONVEYOR_TLS_CERT` and `$CONVEYOR_TLS_KEY`; when
    any is set, every address uses TLS (a bare `host:port` too) and an
    `http://` address is an error. They apply to every service's channel.
    `credentials` (grpc.ChannelCredentials) replaces them all.

    `namespace` (default `$CONVEYOR_NAMESPACE`, else "", the server's
    "default") is sent with every call: tasks, queues, schedules, workflows
    and workers of other namespaces are invisible to this client (a task id
    of another namespace is NOT_FOUND). `with_namespace(name)` gives a client
    of another namespace on the same channels. With an auth file on the
    server, a call its principal may not make in the namespace raises
    `PermissionDenied`; a missing, unknown or revoked token raises
    `Unauthenticated`.
    """

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
        *,
        endpoints: Mapping[str, str | Sequence[str]] | None = None,
        token: str | None = None,
        metadata: Iterable[tuple[str, str]] | None = None,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        channel_options: Iterable[tuple[str, Any]] = (),
        retry_attempts: int = RETRY_ATTEMPTS,
        namespace: str | None = None,
    ):
        self._namespace = resolve_namespace(namespace)
        options = [*CHANNEL_OPTIONS, *channel_options]
        if channel is None:

            security = self._security = Security(credentials, tls_ca, tls_cert, tls_key)

            def make_channel(target: Target) -> grpc.Channel:
                creds = security.for_target(target)
                if creds is not None:
                    return grpc.secure_channel(target.target, creds, options=options)
                return grpc.insecure_channel(target.target, options=options)

            self._endpoints = open_endpoints(address, endpoints, make_channel, security.tls)
            self._owns_channel = True
        else:
            self._security = None
            self._endpoints = given_channel(channel, endpoints)
            self._owns_channel = False
        self._metadata = call_metadata(token, metadata)
        self._rpc_timeout = rpc_timeout
        self._retry_attempts = max(1, int(retry_attempts))
        self.schedules = Schedules(self)

    @property
    def channel(self) -> grpc.Channel:
        """The channel of the submission service's address in use now (the
        one channel unless `endpoints` split the services)."""
        return self._endpoints["submission"].channel

    @property
    def namespace(self) -> str:
        """The namespace every call of this client names ("" is "default")."""
        return self._namespace

    def with_namespace(self, namespace: str) -> Client:
        """A client of `namespace` sharing this one's channels, token and
        settings (closing it leaves the channels open; close this one)."""
        other = copy.copy(self)
        other._namespace = resolve_namespace(namespace)
        other._owns_channel = False
        other.schedules = Schedules(other)
        return other

    def endpoint(self, service: str) -> str:
        """The address that `service` ("submission", "results", "dispatch",
        "scheduling") is called at now."""
        return self._endpoint(service).address

    @property
    def submission(self) -> submission_service_pb2_grpc.SubmissionServiceStub:
        return submission_service_pb2_grpc.SubmissionServiceStub(self._endpoints["submission"].channel)

    @property
    def results(self) -> results_service_pb2_grpc.ResultsServiceStub:
        return results_service_pb2_grpc.ResultsServiceStub(self._endpoints["results"].channel)

    # --- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        if self._owns_channel:
            for channel in distinct_channels(self._endpoints):
                channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- submission ---------------------------------------------------------------

    def submit(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """Submits one task and returns its id (for a repeated idempotency
        key, the id of the task first submitted with it). Options: see
        `conveyor.build_spec` (queue, priority, countdown, eta, expires,
        max_retries, retry_policy, soft_time_limit, time_limit, rate_limit,
        rate_limit_key, concurrency_key, concurrency_limit, concurrency_keys,
        idempotency_key, headers, result_ttl)."""
        options.setdefault("idempotency_key", _default_key())
        spec = _codec.build_spec(name, args, kwargs, **options)
        return self.submit_spec(spec).task_id

    def submit_spec(self, spec: task_pb2.TaskSpec) -> submission_service_pb2.SubmitTaskResponse:
        """Submits a ready-made TaskSpec; returns the whole response
        (task_id, duplicate, state). Traced as a `publish` span, whose
        context the task carries unless `spec.trace_context` is set."""
        request = submission_service_pb2.SubmitTaskRequest(task=spec, namespace=self._namespace)
        with _tracing.publish([spec], batch=False) as span:
            _tracing.stamp(request.task)
            response = self._call("submission", "SubmitTask", request, safe=bool(spec.idempotency_key))
            span.set_attribute("messaging.message.id", response.task_id)
        return response

    def submit_many(self, tasks: Iterable[Any]) -> list[str]:
        """Submits many tasks, returns their ids in order. Each entry is a
        `Signature` (`add.s(1, 2)`), a mapping {name, args, kwargs, options}
        or a tuple (name, args[, kwargs[, options]]).

        Everything is encoded before anything is sent; the tasks travel in
        SubmitTasks calls of at most 1000 tasks and at most 16 MiB of
        encoded tasks, whichever comes first. Each call is all-or-nothing,
        but when a later call fails the earlier ones stay accepted. Traced
        as one `publish` span, whose context every task carries."""
        specs = []
        for item in tasks:
            name, args, kwargs, options = as_request(item)
            options = {"idempotency_key": _default_key(), **options}
            specs.append(_codec.build_spec(name, args, kwargs, **options))
        if not specs:
            return []
        ids: list[str] = []
        with _tracing.publish(specs, batch=True):
            for spec in specs:
                _tracing.stamp(spec)
            for batch in split_batches(specs):
                request = submission_service_pb2.SubmitTasksRequest(tasks=batch, namespace=self._namespace)
                safe = all(spec.idempotency_key for spec in batch)
                response = self._call("submission", "SubmitTasks", request, safe=safe)
                if len(response.results) != len(batch):
                    raise ProtocolError(f"submitted {len(batch)} tasks, got {len(response.results)} results")
                ids.extend(result.task_id for result in response.results)
        return ids

    def cancel(self, task_id: str) -> bool:
        """Cancels (revokes) a task: a queued or scheduled one never runs, a
        running one is cancelled on its worker. True when this call
        cancelled it; False when it had already finished."""
        request = submission_service_pb2.CancelTaskRequest(task_id=task_id, namespace=self._namespace)
        return self._call("submission", "CancelTask", request).cancelled

    def replay(self, task_id: str) -> _codec.TaskState:
        """Queues a FAILED task (a dead letter) again under the same id, with
        its retry count reset; returns its new state (QUEUED).
        FAILED_PRECONDITION for a task in any other state."""
        request = submission_service_pb2.ReplayTaskRequest(task_id=task_id, namespace=self._namespace)
        response = self._call("submission", "ReplayTask", request)
        return _codec.TaskState.from_proto(response.state)

    def forget(self, task_id: str) -> None:
        """Deletes a finished task and its outcome now, before its result
        TTL. FAILED_PRECONDITION for a task that has not finished."""
        request = results_service_pb2.ForgetTaskRequest(task_id=task_id, namespace=self._namespace)
        self._call("results", "ForgetTask", request)

    def list_dead_letters(self, page_size: int = 0, page_token: str = "") -> tuple[list[task_pb2.Task], str]:
        """One page of the tasks that failed for good, oldest first, and the
        token of the next page ("" after the last)."""
        request = results_service_pb2.ListDeadLettersRequest(
            page_size=page_size, page_token=page_token, namespace=self._namespace
        )
        response = self._call("results", "ListDeadLetters", request, safe=True)
        return list(response.tasks), response.next_page_token

    def dead_letters(self, page_size: int = 0) -> Iterator[task_pb2.Task]:
        """Every task that failed for good, oldest first, page by page."""
        token = ""
        while True:
            tasks, token = self.list_dead_letters(page_size, token)
            yield from tasks
            if not token:
                return

    # --- results --------------------------------------------------------------------

    def get(self, task_id: str) -> task_pb2.Task:
        """The task as it is now (state, attempts, and once finished its
        result or error). NOT_FOUND for an unknown or forgotten id."""
        request = results_service_pb2.GetTaskRequest(task_id=task_id, namespace=self._namespace)
        response = self._call("results", "GetTask", request, safe=True)
        return _codec.require_task(response, "GetTask")

    def state(self, task_id: str) -> _codec.TaskState:
        return _codec.TaskState.from_proto(self.get(task_id).state)

    def wait(self, task_id: str, timeout: float | None = None) -> task_pb2.Task:
        """Waits until the task reaches a terminal state, whatever it is, and
        returns it. Raises `TaskTimeout` (code DEADLINE_EXCEEDED) when
        `timeout` seconds pass first; None waits for as long as it takes.
        Traced as a `wait` span."""
        with _tracing.waiting(task_id):
            return self._wait(task_id, timeout)

    def _wait(self, task_id: str, timeout: float | None) -> task_pb2.Task:
        def request() -> results_service_pb2.WaitTaskRequest:
            return results_service_pb2.WaitTaskRequest(task_id=task_id, namespace=self._namespace)

        response = self._long_wait("WaitTask", request, task_id, timeout)
        return _codec.require_task(response, "WaitTask")

    def _long_wait(self, rpc: str, make_request: Callable[[], Any], ident: str, timeout: float | None) -> Any:
        """Calls `rpc` (WaitTask, WaitWorkflow) until it answers, asking again
        when the server's own cap ended a wait that has time left, and on
        UNAVAILABLE on the next address; `TaskTimeout` once `timeout` passes."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        unavailable = 0
        while True:
            started = time.monotonic()
            remaining = None if deadline is None else max(0.0, deadline - started)
            request = make_request()
            if remaining is not None:
                request.timeout.CopyFrom(_codec.to_duration(remaining))
            call_timeout = None if remaining is None else remaining + WAIT_DEADLINE_MARGIN
            endpoint = self._endpoints["results"]
            try:
                metadata = _tracing.metadata(self._metadata)
                stub = results_service_pb2_grpc.ResultsServiceStub(endpoint.channel)
                return getattr(stub, rpc)(request, timeout=call_timeout, metadata=metadata)
            except grpc.RpcError as error:
                code = error.code() if callable(getattr(error, "code", None)) else None
                now = time.monotonic()
                left = None if deadline is None else deadline - now
                if wait_again(code, now - started, left):
                    continue
                if code == grpc.StatusCode.UNAVAILABLE and unavailable < self._retry_attempts - 1:
                    unavailable += 1  # waiting is safe to repeat: fail over and wait again
                    endpoint.fail_over()
                    time.sleep(retry_delay(unavailable))
                    continue
                raise ConveyorError.from_rpc(error, f"{rpc} {ident}", service="results", address=endpoint.address) from None

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Waits for the task and returns its decoded JSON result. Raises
        `TaskFailed` (type, message, traceback) for a FAILED task,
        `TaskCancelled`/`TaskExpired` for the other endings, `TaskTimeout`
        when `timeout` passes first."""
        return _codec.outcome(self.wait(task_id, timeout))

    def watch(self, task_id: str, timeout: float | None = None) -> Iterator[task_pb2.Task]:
        """Yields the task's current state, then every change; ends after a
        terminal state. Breaking out of the loop cancels the stream. With a
        `timeout`, `TaskTimeout` ends a watch still going after that long."""
        request = results_service_pb2.WatchTaskRequest(task_id=task_id, namespace=self._namespace)
        address = self.endpoint("results")
        try:
            stream = self.results.WatchTask(request, timeout=timeout, metadata=_tracing.metadata(self._metadata))
        except grpc.RpcError as error:  # pragma: no cover - raised lazily in practice
            raise ConveyorError.from_rpc(error, f"WatchTask {task_id}", service="results", address=address) from None
        return _watch(stream, task_id, address)

    # --- workflows ----------------------------------------------------------------------

    def submit_workflow(
        self,
        workflow: Any,
        *,
        name: str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> submission_service_pb2.SubmitWorkflowResponse:
        """Submits a workflow in one atomic call and returns the response
        (`workflow_id`, `task_ids` one per node in order, `duplicate`).
        `workflow` is a canvas element (`chain`, `group`, `chord`, a
        `Signature` with callbacks), compiled with `name` (display) and
        `options` (defaults of every node: queue, priority, countdown, ...),
        or a ready-made `WorkflowSpec` (then give no options). A random
        idempotency key is added unless one is given, so that a retried
        submission never creates the workflow twice. INVALID_ARGUMENT names
        the bad node (`workflow.nodes[i]...`); RESOURCE_EXHAUSTED beyond
        20,000 nodes or 200,000 edges. Traced as one `publish` span."""
        spec = prepare(workflow, name, idempotency_key, options, _default_key())
        request = submission_service_pb2.SubmitWorkflowRequest(workflow=spec, namespace=self._namespace)
        with _tracing.publish([node.task for node in spec.nodes], batch=True) as span:
            _tracing.stamp(request.workflow)
            response = self._call("submission", "SubmitWorkflow", request, safe=True)
            span.set_attribute("conveyor.workflow.id", response.workflow_id)
        check_submitted(spec, response)
        return response

    def get_workflow(self, workflow_id: str, view: str | int = "nodes") -> workflow_pb2.Workflow:
        """The workflow as it is now: "nodes" (default: every node's task
        with state, result or error), "summary" (state, counts, result) or
        "full" (the nodes' arguments too). NOT_FOUND for an unknown id."""
        request = results_service_pb2.GetWorkflowRequest(
            workflow_id=workflow_id, view=view_of(view), namespace=self._namespace
        )
        response = self._call("results", "GetWorkflow", request, safe=True)
        return require_workflow(response, "GetWorkflow")

    def wait_workflow(self, workflow_id: str, timeout: float | None = None, view: str | int = "summary") -> workflow_pb2.Workflow:
        """Waits until every node of the workflow has finished and returns it
        (`view` as in `get_workflow`, default "summary"). `TaskTimeout` when
        `timeout` seconds pass first; None waits as long as it takes."""
        with _tracing.waiting(workflow_id):
            response = self._long_wait(
                "WaitWorkflow",
                lambda: results_service_pb2.WaitWorkflowRequest(
                    workflow_id=workflow_id, view=view_of(view), namespace=self._namespace
                ),
                workflow_id,
                timeout,
            )
        return require_workflow(response, "WaitWorkflow")

    def workflow_result(self, workflow_id: str, timeout: float | None = None) -> Any:
        """Waits for the workflow and returns its decoded result (a chain's
        last result, a group's list). Raises `TaskFailed` for the node that
        failed a FAILED workflow (with `cause_task_id` and `cause`),
        `TaskCancelled` for a cancelled one, `TaskTimeout` when `timeout`
        passes first."""
        workflow = self.wait_workflow(workflow_id, timeout)
        if needs_nodes(workflow):
            return settle(self.get_workflow(workflow_id, "nodes"))
        return workflow_outcome(workflow)

    def watch_workflow(
        self, workflow_id: str, timeout: float | None = None, view: str | int = "nodes"
    ) -> Iterator[workflow_pb2.Workflow]:
        """Yields the workflow, then a snapshot after each node that finishes
        or becomes ready; ends once it has finished. With a `timeout`,
        `TaskTimeout` ends a watch still going after that long."""
        request = results_service_pb2.WatchWorkflowRequest(
            workflow_id=workflow_id, view=view_of(view), namespace=self._namespace
        )
        address = self.endpoint("results")
        stream = self.results.WatchWorkflow(request, timeout=timeout, metadata=_tracing.metadata(self._metadata))
        return _watch_workflow(stream, workflow_id, address)

    def cancel_workflow(self, workflow_id: str) -> int:
        """Cancels every unfinished node of the workflow in one atomic
        operation (running ones are stopped on their workers); returns how
        many nodes this call cancelled (0 for a finished workflow)."""
        request = submission_service_pb2.CancelWorkflowRequest(workflow_id=workflow_id, namespace=self._namespace)
        return self._call("submission", "CancelWorkflow", request).cancelled

    # --- helpers ----------------------------------------------------------------------

    def pause_queue(self, queue: str) -> None:
        """Stops handing out the queue's tasks until `resume_queue`;
        submissions are still accepted and running tasks finish."""
        request = dispatch_service_pb2.PauseQueueRequest(queue=queue, namespace=self._namespace)
        self._call("dispatch", "PauseQueue", request, safe=True)

    def resume_queue(self, queue: str) -> None:
        request = dispatch_service_pb2.ResumeQueueRequest(queue=queue, namespace=self._namespace)
        self._call("dispatch", "ResumeQueue", request, safe=True)

    def workers(self) -> list[dispatch_service_pb2.WorkerInfo]:
        """The worker sessions of this client's namespace connected to the
        dispatcher answering."""
        request = dispatch_service_pb2.ListWorkersRequest(namespace=self._namespace)
        response = self._call("dispatch", "ListWorkers", request, safe=True)
        return list(response.workers)

    # --- helpers ----------------------------------------------------------------------

    def _endpoint(self, service: str) -> Endpoint:
        try:
            return self._endpoints[service]
        except KeyError:
            raise ValueError(f"unknown service {service!r}: one of {', '.join(map(repr, _STUBS))}") from None

    def _stub(self, service: str) -> Any:
        return _STUBS[service](self._endpoint(service).channel)

    def _call(self, service: str, rpc: str, request: Any, *, safe: bool = False) -> Any:
        """Calls `rpc` of `service` at that service's endpoint; when `safe`,
        UNAVAILABLE is retried on the endpoint's next address with backoff,
        at most `retry_attempts` attempts."""
        attempt = 0
        endpoint = self._endpoint(service)
        while True:
            attempt += 1
            address = endpoint.address
            target = endpoint.targets[endpoint.current]
            method = getattr(_STUBS[service](endpoint.channel), rpc)
            try:
                return method(request, timeout=self._rpc_timeout, metadata=_tracing.metadata(self._metadata))
            except grpc.RpcError as error:
                code = error.code() if callable(getattr(error, "code", None)) else None
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise ConveyorError.from_rpc(error, rpc, service=service, address=address) from None
                endpoint.fail_over()
                if not safe or attempt >= self._retry_attempts:
                    hint = "" if safe else " (not retried: repeating it is not safe)"
                    failure = ConveyorError.from_rpc(
                        error, f"{rpc}{hint}; is the server at the address running?", service=service, address=address
                    )
                    raise failure.add_hint(closed_hint(failure, target, self._security)) from None
                time.sleep(retry_delay(attempt))


_STUBS = {
    "submission": submission_service_pb2_grpc.SubmissionServiceStub,
    "results": results_service_pb2_grpc.ResultsServiceStub,
    "dispatch": dispatch_service_pb2_grpc.DispatchServiceStub,
    "scheduling": scheduling_service_pb2_grpc.SchedulingServiceStub,
}


def _default_key() -> str:
    """The idempotency key `submit` adds, so that a retried submission is
    never run twice."""
    return f"auto-{uuid.uuid4().hex}"


def _watch_workflow(stream: Any, workflow_id: str, address: str) -> Iterator[workflow_pb2.Workflow]:
    try:
        for update in stream:
            yield require_workflow(update, "WatchWorkflow")
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.CANCELLED and stream.cancelled():
            return
        raise ConveyorError.from_rpc(error, f"WatchWorkflow {workflow_id}", service="results", address=address) from None
    finally:
        stream.cancel()


def _watch(stream: Any, task_id: str, address: str) -> Iterator[task_pb2.Task]:
    try:
        for update in stream:
            yield _codec.require_task(update, "WatchTask")
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.CANCELLED and stream.cancelled():
            return
        raise ConveyorError.from_rpc(error, f"WatchTask {task_id}", service="results", address=address) from None
    finally:
        stream.cancel()

