"""`Client`: the synchronous producer API (submit, get, wait, result, watch,
cancel) over the submission and results services."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import grpc

from conveyor import _codec
from conveyor._common import (
    CHANNEL_OPTIONS,
    DEFAULT_RPC_TIMEOUT,
    MAX_TASKS_PER_BATCH,
    WAIT_DEADLINE_MARGIN,
    as_request,
    call_metadata,
    parse_address,
    wait_again,
)
from conveyor.errors import ConveyorError, ProtocolError
from conveyor.v1 import (
    results_service_pb2,
    results_service_pb2_grpc,
    submission_service_pb2,
    submission_service_pb2_grpc,
    task_pb2,
)

__all__ = ["Client"]


class Client:
    """A producer's handle on Conveyor (blocking calls; thread-safe).

    ```python
    client = conveyor.Client("http://127.0.0.1:50051")
    task_id = client.submit("add", [2, 3], queue="math")
    assert client.result(task_id, timeout=10) == 5
    ```

    `address` defaults to `$CONVEYOR_ADDR`, then `http://127.0.0.1:50051`.
    `token` is sent as a bearer token. Errors of calls raise `ConveyorError`
    with the gRPC status `code`.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        metadata: Iterable[tuple[str, str]] | None = None,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ):
        if channel is None:
            target = parse_address(address)
            if target.secure or credentials is not None:
                channel = grpc.secure_channel(
                    target.target, credentials or grpc.ssl_channel_credentials(), options=CHANNEL_OPTIONS
                )
            else:
                channel = grpc.insecure_channel(target.target, options=CHANNEL_OPTIONS)
            self._owns_channel = True
        else:
            self._owns_channel = False
        self.channel = channel
        self.submission = submission_service_pb2_grpc.SubmissionServiceStub(channel)
        self.results = results_service_pb2_grpc.ResultsServiceStub(channel)
        self._metadata = call_metadata(token, metadata)
        self._rpc_timeout = rpc_timeout

    # --- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

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
        rate_limit_key, concurrency_key, concurrency_limit, idempotency_key,
        headers, result_ttl)."""
        spec = _codec.build_spec(name, args, kwargs, **options)
        return self.submit_spec(spec).task_id

    def submit_spec(self, spec: task_pb2.TaskSpec) -> submission_service_pb2.SubmitTaskResponse:
        """Submits a ready-made TaskSpec; returns the whole response
        (task_id, duplicate, state)."""
        request = submission_service_pb2.SubmitTaskRequest(task=spec)
        return self._call(self.submission.SubmitTask, request, "SubmitTask")

    def submit_many(self, tasks: Iterable[Any]) -> list[str]:
        """Submits many tasks, returns their ids in order. Each entry is a
        `Signature` (`add.s(1, 2)`), a mapping {name, args, kwargs, options}
        or a tuple (name, args[, kwargs[, options]]).

        Everything is encoded before anything is sent; the tasks travel in
        one SubmitTasks call per 1000. Each call is all-or-nothing, but when
        a later call fails the earlier ones stay accepted."""
        specs = []
        for item in tasks:
            name, args, kwargs, options = as_request(item)
            specs.append(_codec.build_spec(name, args, kwargs, **options))
        ids: list[str] = []
        for start in range(0, len(specs), MAX_TASKS_PER_BATCH):
            batch = specs[start : start + MAX_TASKS_PER_BATCH]
            request = submission_service_pb2.SubmitTasksRequest(tasks=batch)
            response = self._call(self.submission.SubmitTasks, request, "SubmitTasks")
            if len(response.results) != len(batch):
                raise ProtocolError(f"submitted {len(batch)} tasks, got {len(response.results)} results")
            ids.extend(result.task_id for result in response.results)
        return ids

    def cancel(self, task_id: str) -> bool:
        """Cancels (revokes) a task: a queued or scheduled one never runs, a
        running one is cancelled on its worker. True when this call
        cancelled it; False when it had already finished."""
        request = submission_service_pb2.CancelTaskRequest(task_id=task_id)
        return self._call(self.submission.CancelTask, request, "CancelTask").cancelled

    def replay(self, task_id: str) -> _codec.TaskState:
        """Queues a FAILED task (a dead letter) again under the same id, with
        its retry count reset; returns its new state (QUEUED).
        FAILED_PRECONDITION for a task in any other state."""
        request = submission_service_pb2.ReplayTaskRequest(task_id=task_id)
        response = self._call(self.submission.ReplayTask, request, "ReplayTask")
        return _codec.TaskState.from_proto(response.state)

    def forget(self, task_id: str) -> None:
        """Deletes a finished task and its outcome now, before its result
        TTL. FAILED_PRECONDITION for a task that has not finished."""
        request = results_service_pb2.ForgetTaskRequest(task_id=task_id)
        self._call(self.results.ForgetTask, request, "ForgetTask")

    def list_dead_letters(self, page_size: int = 0, page_token: str = "") -> tuple[list[task_pb2.Task], str]:
        """One page of the tasks that failed for good, oldest first, and the
        token of the next page ("" after the last)."""
        request = results_service_pb2.ListDeadLettersRequest(page_size=page_size, page_token=page_token)
        response = self._call(self.results.ListDeadLetters, request, "ListDeadLetters")
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
        request = results_service_pb2.GetTaskRequest(task_id=task_id)
        response = self._call(self.results.GetTask, request, "GetTask")
        return _codec.require_task(response, "GetTask")

    def state(self, task_id: str) -> _codec.TaskState:
        return _codec.TaskState.from_proto(self.get(task_id).state)

    def wait(self, task_id: str, timeout: float | None = None) -> task_pb2.Task:
        """Waits until the task reaches a terminal state, whatever it is, and
        returns it. Raises `TaskTimeout` (code DEADLINE_EXCEEDED) when
        `timeout` seconds pass first; None waits for as long as it takes."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            started = time.monotonic()
            remaining = None if deadline is None else max(0.0, deadline - started)
            request = results_service_pb2.WaitTaskRequest(task_id=task_id)
            if remaining is not None:
                request.timeout.CopyFrom(_codec.to_duration(remaining))
            call_timeout = None if remaining is None else remaining + WAIT_DEADLINE_MARGIN
            try:
                response = self.results.WaitTask(request, timeout=call_timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                code = error.code() if callable(getattr(error, "code", None)) else None
                now = time.monotonic()
                left = None if deadline is None else deadline - now
                if wait_again(code, now - started, left):
                    continue
                raise ConveyorError.from_rpc(error, f"WaitTask {task_id}") from None
            return _codec.require_task(response, "WaitTask")

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
        request = results_service_pb2.WatchTaskRequest(task_id=task_id)
        try:
            stream = self.results.WatchTask(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:  # pragma: no cover - raised lazily in practice
            raise ConveyorError.from_rpc(error, f"WatchTask {task_id}") from None
        return _watch(stream, task_id)

    # --- helpers ----------------------------------------------------------------------

    def _call(self, method: Any, request: Any, rpc: str) -> Any:
        try:
            return method(request, timeout=self._rpc_timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise ConveyorError.from_rpc(error, rpc) from None


def _watch(stream: Any, task_id: str) -> Iterator[task_pb2.Task]:
    try:
        for update in stream:
            yield _codec.require_task(update, "WatchTask")
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.CANCELLED and stream.cancelled():
            return
        raise ConveyorError.from_rpc(error, f"WatchTask {task_id}") from None
    finally:
        stream.cancel()

