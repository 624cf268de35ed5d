"""`AsyncClient`: the asyncio producer API, the same calls as
`conveyor.Client` as coroutines (on grpc.aio), workflows included."""

from __future__ import annotations

import asyncio
import copy
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

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
    results_service_pb2,
    results_service_pb2_grpc,
    submission_service_pb2,
    submission_service_pb2_grpc,
    task_pb2,
    workflow_pb2,
)

__all__ = ["AsyncClient"]


class AsyncClient:
    """A producer's handle on Conveyor for asyncio code. Create it inside the
    running event loop, preferably as an async context manager:

    ```python
    async with conveyor.aio.AsyncClient("http://127.0.0.1:50051") as client:
        task_id = await client.submit("add", [2, 3])
        print(await client.result(task_id, timeout=10))
    ```

    `address`, `endpoints` (one address per service: "submission",
    "results", "dispatch", "scheduling"), the TLS options (`tls_ca`,
    `tls_cert`, `tls_key`, `credentials`) and the environment variables
    that set them work as in `conveyor.Client`, and so does `namespace`
    (default `$CONVEYOR_NAMESPACE`, else "": sent with every call), as do
    the auth errors (`PermissionDenied`, `Unauthenticated`).
    """

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
        *,
        endpoints: Mapping[str, str | Sequence[str]] | None = None,
        token: str | None = None,
        metadata: Iterable[tuple[str, str]] | None = None,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        channel: grpc.aio.Channel | None = None,
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

            def make_channel(target: Target) -> grpc.aio.Channel:
                creds = security.for_target(target)
                if creds is not None:
                    return grpc.aio.secure_channel(target.target, creds, options=options)
                return grpc.aio.insecure_channel(target.target, options=options)

            self._endpoints = open_endpoints(address, endpoints, make_channel, security.tls)
            self._owns_channel = True
        else:
            self._security = None
            self._endpoints = given_channel(channel, endpoints)
            self._owns_channel = False
        self._metadata = call_metadata(token, metadata)
        self._rpc_timeout = rpc_timeout
        self._retry_attempts = max(1, int(retry_attempts))

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel of the submission service's address in use now."""
        return self._endpoints["submission"].channel

    @property
    def namespace(self) -> str:
        """The namespace every call of this client names ("" is "default")."""
        return self._namespace

    def with_namespace(self, namespace: str) -> AsyncClient:
        """A client of `namespace` sharing this one's channels; see
        `Client.with_namespace`."""
        other = copy.copy(self)
        other._namespace = resolve_namespace(namespace)
        other._owns_channel = False
        return other

    def endpoint(self, service: str) -> str:
        """The address that `service` is called at now; see `Client.endpoint`."""
        return self._endpoint(service).address

    def _endpoint(self, service: str) -> Endpoint:
        try:
            return self._endpoints[service]
        except KeyError:
            raise ValueError(f"unknown service {service!r}: one of {', '.join(map(repr, self._endpoints))}") from None

    @property
    def submission(self) -> submission_service_pb2_grpc.SubmissionServiceStub:
        return submission_service_pb2_grpc.SubmissionServiceStub(self._endpoints["submission"].channel)

    @property
    def results(self) -> results_service_pb2_grpc.ResultsServiceStub:
        return results_service_pb2_grpc.ResultsServiceStub(self._endpoints["results"].channel)

    async def close(self) -> None:
        if self._owns_channel:
            for channel in distinct_channels(self._endpoints):
                await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    # --- submission -----------------------------------------------------------------

    async def submit(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """Submits one task and returns its id; see `Client.submit`."""
        options.setdefault("idempotency_key", f"auto-{uuid.uuid4().hex}")
        spec = _codec.build_spec(name, args, kwargs, **options)
        return (await self.submit_spec(spec)).task_id

    async def submit_spec(self, spec: task_pb2.TaskSpec) -> submission_service_pb2.SubmitTaskResponse:
        """Submits a ready-made TaskSpec; see `Client.submit_spec`."""
        request = submission_service_pb2.SubmitTaskRequest(task=spec, namespace=self._namespace)
        with _tracing.publish([spec], batch=False) as span:
            _tracing.stamp(request.task)
            response = await self._call("submission", "SubmitTask", request, safe=bool(spec.idempotency_key))
            span.set_attribute("messaging.message.id", response.task_id)
        return response

    async def submit_many(self, tasks: Iterable[Any]) -> list[str]:
        """Submits many tasks (SubmitTasks calls of at most 1000 tasks and
        16 MiB of encoded tasks); see `Client.submit_many`."""
        specs = []
        for item in tasks:
            name, args, kwargs, options = as_request(item)
            options = {"idempotency_key": f"auto-{uuid.uuid4().hex}", **options}
            specs.append(_codec.build_spec(name, args, kwargs, **options))
        if not specs:
            return []
        ids: list[str] = []
        with _tracing.publish(specs, batch=True):
            for spec in specs:
                _tracing.stamp(spec)
            for batch in split_batches(specs):
                request = submission_service_pb2.SubmitTasksRequest(tasks=batch, namespace=self._namespace)
                safe = all(t.idempotency_key for t in batch)
                response = await self._call("submission", "SubmitTasks", request, safe=safe)
                if len(response.results) != len(batch):
                    raise ProtocolError(f"submitted {len(batch)} tasks, got {len(response.results)} results")
                ids.extend(result.task_id for result in response.results)
        return ids

    async def cancel(self, task_id: str) -> bool:
        """Cancels (revokes) a task, queued or running; True when this call
        did. See `Client.cancel`."""
        request = submission_service_pb2.CancelTaskRequest(task_id=task_id, namespace=self._namespace)
        return (await self._call("submission", "CancelTask", request)).cancelled

    async def replay(self, task_id: str) -> _codec.TaskState:
        """Queues a FAILED task again; see `Client.replay`."""
        request = submission_service_pb2.ReplayTaskRequest(task_id=task_id, namespace=self._namespace)
        response = await self._call("submission", "ReplayTask", request)
        return _codec.TaskState.from_proto(response.state)

    async def forget(self, task_id: str) -> None:
        """Deletes a finished task now; see `Client.forget`."""
        request = results_service_pb2.ForgetTaskRequest(task_id=task_id, namespace=self._namespace)
        await self._call("results", "ForgetTask", request)

    async def list_dead_letters(self, page_size: int = 0, page_token: str = "") -> tuple[list[task_pb2.Task], str]:
        """One page of dead letters and the next page's token."""
        request = results_service_pb2.ListDeadLettersRequest(
            page_size=page_size, page_token=page_token, namespace=self._namespace
        )
        response = await self._call("results", "ListDeadLetters", request, safe=True)
        return list(response.tasks), response.next_page_token

    async def dead_letters(self, page_size: int = 0) -> AsyncIterator[task_pb2.Task]:
        """Every task that failed for good, oldest first."""
        token = ""
        while True:
            tasks, token = await self.list_dead_letters(page_size, token)
            for task in tasks:
                yield task
            if not token:
                return

    # --- results ----------------------------------------------------------------------

    async def get(self, task_id: str) -> task_pb2.Task:
        request = results_service_pb2.GetTaskRequest(task_id=task_id, namespace=self._namespace)
        response = await self._call("results", "GetTask", request, safe=True)
        return _codec.require_task(response, "GetTask")

    async def state(self, task_id: str) -> _codec.TaskState:
        return _codec.TaskState.from_proto((await self.get(task_id)).state)

    async def wait(self, task_id: str, timeout: float | None = None) -> task_pb2.Task:
        """Waits for a terminal state; `TaskTimeout` when `timeout` passes
        first. See `Client.wait`."""
        with _tracing.waiting(task_id):
            return await self._wait(task_id, timeout)

    async def _wait(self, task_id: str, timeout: float | None) -> task_pb2.Task:
        def request() -> results_service_pb2.WaitTaskRequest:
            return results_service_pb2.WaitTaskRequest(task_id=task_id, namespace=self._namespace)

        response = await self._long_wait("WaitTask", request, task_id, timeout)
        return _codec.require_task(response, "WaitTask")

    async def _long_wait(self, rpc: str, make_request: Callable[[], Any], ident: str, timeout: float | None) -> Any:
        """Calls `rpc` (WaitTask, WaitWorkflow) until it answers, asking again
        when the server's own cap ended a wait that has time left."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            started = time.monotonic()
            remaining = None if deadline is None else max(0.0, deadline - started)
            request = make_request()
            if remaining is not None:
                request.timeout.CopyFrom(_codec.to_duration(remaining))
            call_timeout = None if remaining is None else remaining + WAIT_DEADLINE_MARGIN
            address = self.endpoint("results")
            try:
                metadata = _tracing.metadata(self._metadata)
                return await getattr(self.results, rpc)(request, timeout=call_timeout, metadata=metadata)
            except grpc.RpcError as error:
                now = time.monotonic()
                left = None if deadline is None else deadline - now
                if wait_again(error.code(), now - started, left):
                    continue
                raise ConveyorError.from_rpc(error, f"{rpc} {ident}", service="results", address=address) from None

    async def result(self, task_id: str, timeout: float | None = None) -> Any:
        """The decoded result, or `TaskFailed`/`TaskCancelled`/`TaskExpired`/
        `TaskTimeout`. See `Client.result`."""
        return _codec.outcome(await self.wait(task_id, timeout))

    async def watch(self, task_id: str, timeout: float | None = None) -> AsyncIterator[task_pb2.Task]:
        """Yields the task's current state, then every change; ends after a
        terminal state. With a `timeout`, `TaskTimeout` ends a watch still
        going after that long."""
        request = results_service_pb2.WatchTaskRequest(task_id=task_id, namespace=self._namespace)
        address = self.endpoint("results")
        call = self.results.WatchTask(request, timeout=timeout, metadata=_tracing.metadata(self._metadata))
        try:
            async for update in call:
                yield _codec.require_task(update, "WatchTask")
        except grpc.RpcError as error:
            raise ConveyorError.from_rpc(error, f"WatchTask {task_id}", service="results", address=address) from None
        finally:
            call.cancel()

    # --- workflows ---------------------------------------------------------------------

    async def submit_workflow(
        self,
        workflow: Any,
        *,
        name: str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> submission_service_pb2.SubmitWorkflowResponse:
        """Submits a workflow (a canvas element or a WorkflowSpec) in one
        atomic call; returns `workflow_id` and `task_ids`. See
        `Client.submit_workflow`."""
        spec = prepare(workflow, name, idempotency_key, options, f"auto-{uuid.uuid4().hex}")
        request = submission_service_pb2.SubmitWorkflowRequest(workflow=spec, namespace=self._namespace)
        with _tracing.publish([node.task for node in spec.nodes], batch=True) as span:
            _tracing.stamp(request.workflow)
            response = await self._call("submission", "SubmitWorkflow", request, safe=True)
            span.set_attribute("conveyor.workflow.id", response.workflow_id)
        check_submitted(spec, response)
        return response

    async def get_workflow(self, workflow_id: str, view: str | int = "nodes") -> workflow_pb2.Workflow:
        """The workflow now ("nodes", "summary" or "full"); see `Client.get_workflow`."""
        request = results_service_pb2.GetWorkflowRequest(
            workflow_id=workflow_id, view=view_of(view), namespace=self._namespace
        )
        response = await self._call("results", "GetWorkflow", request, safe=True)
        return require_workflow(response, "GetWorkflow")

    async def wait_workflow(
        self, workflow_id: str, timeout: float | None = None, view: str | int = "summary"
    ) -> workflow_pb2.Workflow:
        """Waits until every node has finished; `TaskTimeout` when `timeout`
        passes first. See `Client.wait_workflow`."""
        with _tracing.waiting(workflow_id):
            response = await self._long_wait(
                "WaitWorkflow",
                lambda: results_service_pb2.WaitWorkflowRequest(
                    workflow_id=workflow_id, view=view_of(view), namespace=self._namespace
                ),
                workflow_id,
                timeout,
            )
        return require_workflow(response, "WaitWorkflow")

    async def workflow_result(self, workflow_id: str, timeout: float | None = None) -> Any:
        """The workflow's decoded result, or `TaskFailed` (the node that
        failed it, with `cause_task_id` and `cause`), `TaskCancelled`,
        `TaskTimeout`. See `Client.workflow_result`."""
        workflow = await self.wait_workflow(workflow_id, timeout)
        if needs_nodes(workflow):
            return settle(await self.get_workflow(workflow_id, "nodes"))
        return workflow_outcome(workflow)

    async def watch_workflow(
        self, workflow_id: str, timeout: float | None = None, view: str | int = "nodes"
    ) -> AsyncIterator[workflow_pb2.Workflow]:
        """Yields the workflow, then a snapshot after each change; ends once
        it has finished. See `Client.watch_workflow`."""
        request = results_service_pb2.WatchWorkflowRequest(
            workflow_id=workflow_id, view=view_of(view), namespace=self._namespace
        )
        address = self.endpoint("results")
        call = self.results.WatchWorkflow(request, timeout=timeout, metadata=_tracing.metadata(self._metadata))
        try:
            async for update in call:
                yield require_workflow(update, "WatchWorkflow")
        except grpc.RpcError as error:
            raise ConveyorError.from_rpc(error, f"WatchWorkflow {workflow_id}", service="results", address=address) from None
        finally:
            call.cancel()

    async def cancel_workflow(self, workflow_id: str) -> int:
        """Cancels every unfinished node; returns how many this call
        cancelled. See `Client.cancel_workflow`."""
        request = submission_service_pb2.CancelWorkflowRequest(workflow_id=workflow_id, namespace=self._namespace)
        return (await self._call("submission", "CancelWorkflow", request)).cancelled

    async def _call(self, service: str, rpc: str, request: Any, *, safe: bool = False) -> Any:
        """As `Client._call`: `service`'s endpoint, UNAVAILABLE retried on its
        next address when safe."""
        attempt = 0
        endpoint = self._endpoint(service)
        stubs = {
            "submission": submission_service_pb2_grpc.SubmissionServiceStub,
            "results": results_service_pb2_grpc.ResultsServiceStub,
        }
        while True:
            attempt += 1
            address = endpoint.address
            target = endpoint.targets[endpoint.current]
            stub = stubs[service](endpoint.channel)
            try:
                metadata = _tracing.metadata(self._metadata)
                return await getattr(stub, rpc)(request, timeout=self._rpc_timeout, metadata=metadata)
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
                await asyncio.sleep(retry_delay(attempt))
