"""Workflows (the canvas) against a real `conveyor dev` and a worker in this
process: every primitive and nesting, results in declaration order,
callbacks, failures with their cause chain, cancellation, the asyncio
client, and the server's own validation."""

import asyncio
import threading
import time
import uuid

import grpc
import pytest

import conveyor
from conveyor import TaskState, WorkflowState, chain, chord, chunks, group, signature, starmap
from conveyor.aio import AsyncClient
from conveyor.v1 import task_pb2
from conveyor.v1 import workflow_pb2 as wf


class Tasks:
    """The tasks of one test, on its own app and queue, with a worker."""

    def __init__(self, app: conveyor.Conveyor, queue: str):
        self.app = app
        self.queue = queue
        self.recorded: list[tuple] = []
        self.lock = threading.Lock()

        @app.task(name="add")
        def add(a, b):
            return a + b

        @app.task(name="xsum")
        def xsum(numbers):
            return sum(numbers)

        @app.task(name="collect")
        def collect(*args):
            return list(args)

        @app.task(name="fail", dont_retry_for=(ValueError,))
        def fail(*args):
            raise ValueError("boom")

        @app.task(name="delayed", bind=True)
        def delayed(ctx, value, seconds):
            ctx.sleep(seconds)
            return value

        @app.task(name="record")
        def record(*args):
            with self.lock:
                self.recorded.append(args)
            return len(args)

        @app.task(name="whoami", bind=True)
        def whoami(ctx, *args):
            return {"workflow_id": ctx.workflow_id, "root_id": ctx.request.root_id, "worker": ctx.worker_id}

        self.add, self.xsum, self.collect, self.fail = add, xsum, collect, fail
        self.delayed, self.record, self.whoami = delayed, record, whoami


@pytest.fixture
def t(server, start_worker, queue_name):
    with conveyor.Conveyor(server) as app:
        app.conf.task_default_queue = queue_name
        tasks = Tasks(app, queue_name)
        start_worker(app, queue_name, concurrency=8)
        yield tasks


def states(workflow):
    return [TaskState.from_proto(node.task.state).value for node in workflow.nodes]


def test_chain_passes_results_and_reports_its_nodes(t):
    flow = t.add.s(1, 2) | group(t.add.s(i) for i in range(10)) | t.xsum.s() | t.add.s(100)
    result = flow.apply_async(queue=t.queue)
    assert isinstance(result, conveyor.WorkflowResult) and not isinstance(result, conveyor.GroupResult)
    assert result.get(timeout=30) == 175
    assert result.state == WorkflowState.SUCCEEDED == "SUCCESS" and result.ready() and result.successful()
    assert result.result == 175 and len(result.task_ids) == 13
    workflow = result.workflow()
    assert workflow.id == result.id and workflow.name == "chain(add, group(add x10), xsum, add)"
    assert states(workflow) == ["SUCCEEDED"] * 13 and workflow.node_count == 13
    assert [n.task.id for n in workflow.nodes] == result.task_ids
    assert list(workflow.output_task_ids) == result.output_task_ids == [result.task_ids[12]]
    assert all(n.task.workflow_id == result.id for n in workflow.nodes)
    assert [n.task.workflow_node for n in workflow.nodes] == list(range(13))
    assert [n.label for n in workflow.nodes][:2] == ["chain[0]", "chain[1].group[0]"]
    assert workflow.nodes[11].input == wf.NODE_INPUT_LIST and list(workflow.nodes[11].parents) == list(range(1, 11))
    # Each node's own handle, and its effective arguments (inputs first).
    assert [r.get(timeout=5) for r in result.nodes][:3] == [3, 3, 4]
    assert result.last.get(timeout=5) == 175
    full = result.workflow("full")
    assert [conveyor.decode(p) for p in full.nodes[11].task.args] == [list(range(3, 13))]
    assert not result.workflow("summary").nodes
    # Attach to it again by id.
    again = t.app.WorkflowResult(result.id)
    assert again.get(timeout=5) == 175 and again.task_ids == result.task_ids


def test_group_results_are_in_declaration_order(t):
    # The later tasks finish first; the results keep the declaration order.
    result = group(t.delayed.s(i, (5 - i) * 0.1) for i in range(6)).delay()
    assert isinstance(result, conveyor.GroupResult)
    assert result.get(timeout=30) == [0, 1, 2, 3, 4, 5]
    assert [r.get(timeout=5) for r in result.results] == [0, 1, 2, 3, 4, 5]
    assert len(result) == 6 and result.completed_count() == 6 and result[5].id == result.task_ids[5]
    finished = [n.task.finished_at.ToNanoseconds() for n in result.workflow().nodes]
    assert finished[5] < finished[0], "the tasks did finish in reverse order"


def test_chord_gets_the_ordered_list_and_nests(t):
    header = [t.delayed.s(i, (3 - i) * 0.1) for i in range(4)]
    assert chord(header, t.collect.s("tail")).delay().get(timeout=30) == [[0, 1, 2, 3], "tail"]
    assert chord([t.add.s(2, 2)])(t.collect.s()).get(timeout=30) == [[4]]
    # Chain of groups: a chord; group of chains; chord inside a chain; chord of chords.
    assert (group(t.add.s(1, 1), t.add.s(2, 2)) | t.xsum.s()).delay().get(timeout=30) == 6
    assert group(t.add.s(1, 1) | t.add.s(1), t.add.s(0, 5) | t.add.s(1)).delay().get(timeout=30) == [3, 6]
    assert chain(t.add.s(1, 1), chord([t.add.s(1), t.add.s(2)], t.xsum.s()), t.add.s(10)).delay().get(timeout=30) == 17
    inner = [chord([t.add.s(1, 1), t.add.s(2, 2)], t.xsum.s()), chord([t.add.s(3, 3)], t.xsum.s())]
    assert chord(inner, t.collect.s()).delay().get(timeout=30) == [[6, 6]]
    both = (group(t.add.s(1, 1), t.add.s(2, 2)) | group(t.xsum.s(), t.collect.s())).delay()
    assert isinstance(both, conveyor.GroupResult) and both.get(timeout=30) == [6, [[2, 4]]]


def test_immutable_signatures_and_helpers(t):
    assert (t.add.s(1, 1) | t.add.si(5, 5)).delay().get(timeout=30) == 10
    assert (group(t.add.s(1, 1)) | t.collect.si("x")).delay().get(timeout=30) == ["x"]
    assert chunks(t.add, [(i, i) for i in range(5)], 2).delay().get(timeout=30) == [[0, 2], [4, 6], [8]]
    assert (starmap(t.add, [(1, 2), (3, 4)]) | t.xsum.s()).delay().get(timeout=30) == 10
    # By name, as for a task of another language.
    assert (signature("add", args=[1, 2]) | signature("add", args=[3])).delay().get(timeout=30) == 6


def test_link_runs_after_success_and_is_not_the_result(t):
    sig = t.add.s(2, 3)
    sig.link(t.record.s("linked"))
    result = sig.delay()
    assert isinstance(result, conveyor.WorkflowResult)
    assert result.get(timeout=30) == 5
    assert t.recorded == [(5, "linked")]
    assert states(result.workflow()) == ["SUCCEEDED", "SUCCEEDED"]
    assert result.output_task_ids == [result.task_ids[0]]


def test_link_error_runs_once_and_failures_carry_their_cause(t):
    flow = chain(t.add.s(1, 1), group(t.fail.s(), t.fail.s(), t.add.s(1)), t.xsum.s(), t.add.s(1))
    flow.link_error(t.record.s("errback"))
    result = flow.delay()
    with pytest.raises(conveyor.TaskFailed) as caught:
        result.get(timeout=30)
    workflow = result.workflow()
    assert result.state == WorkflowState.FAILED == "FAILURE" and result.failed()
    # The errback ran once, with the failed task's id and error first.
    assert len(t.recorded) == 1
    failed_id, error, extra = t.recorded[0]
    assert extra == "errback" and error["type"] == "ValueError" and error["message"] == "boom"
    assert "Traceback" in error["traceback"]
    by_id = {n.task.id: n for n in workflow.nodes}
    assert by_id[failed_id].task.name == "fail"
    errback = workflow.nodes[6]
    assert errback.trigger == wf.NODE_TRIGGER_ON_FAILURE and errback.task.attempt == 1
    assert TaskState.from_proto(errback.task.state) == TaskState.SUCCEEDED
    # The error names the node that failed the workflow, and the dependents name their cause.
    assert caught.value.task_id == workflow.failed_task_id and by_id[workflow.failed_task_id].task.name == "fail"
    assert (caught.value.type, caught.value.message) == ("ValueError", "boom")
    assert caught.value.workflow_id == result.id and caught.value.node in (1, 2) and caught.value.task_name == "fail"
    assert str(caught.value).startswith(f"workflow {result.id} (") and "fail" in str(caught.value)
    xsum_node, last = workflow.nodes[4], workflow.nodes[5]
    assert states(workflow)[4:6] == ["FAILED", "FAILED"]
    assert xsum_node.task.error.reason == task_pb2.FAILURE_REASON_DEPENDENCY_FAILED
    assert xsum_node.task.error.cause_task_id in (workflow.nodes[1].task.id, workflow.nodes[2].task.id)
    assert last.task.error.cause_task_id == xsum_node.task.id
    with pytest.raises(conveyor.TaskFailed) as dependent:
        result.last.get(timeout=5)
    assert dependent.value.reason == "DEPENDENCY_FAILED" and dependent.value.cause_task_id == xsum_node.task.id
    assert isinstance(result.get(timeout=5, propagate=False), conveyor.TaskFailed)


def test_errback_is_cancelled_when_all_succeed(t):
    sig = t.add.s(1, 1)
    sig.link_error(t.record.s())
    result = sig.delay()
    assert result.get(timeout=30) == 2
    assert states(result.workflow()) == ["SUCCEEDED", "CANCELLED"]
    assert result.state == WorkflowState.SUCCEEDED and t.recorded == []


def test_chord_allow_errors_gets_the_errors_in_place(t):
    result = chord([t.add.s(1, 1), t.fail.s(), t.add.s(2, 2)], t.collect.s(), allow_errors=True).delay()
    with pytest.raises(conveyor.TaskFailed):
        result.get(timeout=30)
    workflow = result.workflow()
    body = workflow.nodes[3]
    assert body.trigger == wf.NODE_TRIGGER_ALL_DONE and states(workflow) == ["SUCCEEDED", "FAILED", "SUCCEEDED", "SUCCEEDED"]
    assert conveyor.decode(body.task.result) == [
        [2, {"error": {"type": "ValueError", "message": "boom", "task_id": workflow.nodes[1].task.id}}, 4]
    ]


def test_cancel_stops_the_workflow(t, client):
    result = (t.delayed.s("slow", 30) | t.add.s(1) | t.add.s(2)).delay()
    deadline = time.monotonic() + 20
    while TaskState.from_proto(result.workflow().nodes[0].task.state) != TaskState.RUNNING:
        assert time.monotonic() < deadline, "the first node never started"
        time.sleep(0.05)
    started = time.monotonic()
    assert result.revoke() == 3
    with pytest.raises(conveyor.TaskCancelled):
        result.get(timeout=10)
    assert time.monotonic() - started < 5
    assert result.state == WorkflowState.CANCELLED == "REVOKED"
    assert states(result.workflow()) == ["CANCELLED", "CANCELLED", "CANCELLED"]
    assert result.cancel() == 0  # nothing left to cancel
    assert client.cancel_workflow(result.id) == 0


def test_workflow_id_on_the_task_context_and_queues_per_node(t, server, start_worker):
    other = f"{t.queue}-other"
    with conveyor.Conveyor(server) as second:
        second.task(name="whoami", bind=True)(lambda ctx: {"worker": ctx.worker_id, "workflow_id": ctx.workflow_id})
        start_worker(second, other, worker_id=f"second-{uuid.uuid4().hex[:6]}")
        result = group(t.whoami.s(), t.whoami.s().set(queue=other)).delay()
        first, routed = result.get(timeout=30)
    assert first["workflow_id"] == result.id == first["root_id"] and routed["workflow_id"] == result.id
    assert routed["worker"].startswith("second-") and not first["worker"].startswith("second-")
    nodes = result.workflow().nodes
    assert nodes[1].task.queue == other and nodes[0].task.queue == t.queue


def test_watch_timeout_and_idempotency(t, client):
    result = (t.delayed.s(1, 0.3) | t.add.s(1)).delay()
    seen = [WorkflowState.from_proto(w.state) for w in result.watch(timeout=30)]
    assert seen[-1] == WorkflowState.SUCCEEDED and all(s == WorkflowState.RUNNING for s in seen[:-1])
    assert len(seen) >= 2
    slow = t.delayed.s(0, 5).on_error(t.record.s())
    waiting = slow.delay()
    with pytest.raises(conveyor.TaskTimeout):
        waiting.get(timeout=0.5)
    waiting.cancel()
    # The same idempotency key: the first workflow, nothing new.
    key = f"wf-{uuid.uuid4().hex}"
    flow = t.add.s(1, 1) | t.add.s(1)
    first = client.submit_workflow(flow, idempotency_key=key, queue=t.queue)
    second = client.submit_workflow(flow, idempotency_key=key, queue=t.queue)
    assert second.duplicate and second.workflow_id == first.workflow_id and list(second.task_ids) == list(first.task_ids)
    assert client.workflow_result(first.workflow_id, timeout=30) == 3


def test_server_validates_what_the_sdk_does_not(client):
    def node(name, parents=(), node_input=wf.NODE_INPUT_UNSPECIFIED):
        return wf.WorkflowNode(task=task_pb2.TaskSpec(name=name), parents=parents, input=node_input)

    cases = {
        "cycle": wf.WorkflowSpec(nodes=[node("a", [1]), node("b", [0])]),
        "out of range": wf.WorkflowSpec(nodes=[node("a"), node("b", [5])]),
        "duplicate parent": wf.WorkflowSpec(nodes=[node("a"), node("b", [0, 0])]),
        "ONE with two parents": wf.WorkflowSpec(nodes=[node("a"), node("b"), node("c", [0, 1], wf.NODE_INPUT_ONE)]),
        "node key": wf.WorkflowSpec(nodes=[wf.WorkflowNode(task=task_pb2.TaskSpec(name="a", idempotency_key="k"))]),
        "empty": wf.WorkflowSpec(),
    }
    for what, spec in cases.items():
        with pytest.raises(conveyor.ConveyorError) as error:
            client.submit_workflow(spec)
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT, what
        if what != "empty":
            assert "workflow.nodes[" in error.value.details, (what, error.value.details)
    with pytest.raises(conveyor.ConveyorError) as missing:
        client.get_workflow(str(uuid.uuid4()))
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


def test_asyncio_client(t, server):
    async def scenario():
        async with AsyncClient(server) as client:
            response = await client.submit_workflow(t.add.s(1, 2) | t.add.s(3), queue=t.queue)
            assert len(response.task_ids) == 2
            assert await client.workflow_result(response.workflow_id, timeout=30) == 6
            workflow = await client.get_workflow(response.workflow_id)
            assert states(workflow) == ["SUCCEEDED", "SUCCEEDED"]
            summary = await client.wait_workflow(response.workflow_id, timeout=5)
            assert summary.state == wf.WORKFLOW_STATE_SUCCEEDED and not summary.nodes
            grouped = await client.submit_workflow(group(t.add.s(i, i) for i in range(3)), queue=t.queue)
            assert await client.workflow_result(grouped.workflow_id, timeout=30) == [0, 2, 4]
            failing = await client.submit_workflow(t.fail.s() | t.add.s(1), queue=t.queue)
            with pytest.raises(conveyor.TaskFailed) as caught:
                await client.workflow_result(failing.workflow_id, timeout=30)
            assert caught.value.task_id == failing.task_ids[0] and caught.value.node == 0
            slow = await client.submit_workflow(t.delayed.s(0, 30) | t.add.s(1), queue=t.queue)
            seen = []
            async for snapshot in client.watch_workflow(slow.workflow_id, timeout=30):
                seen.append(snapshot.state)
                if len(seen) == 1:
                    assert await client.cancel_workflow(slow.workflow_id) == 2
            assert seen[-1] == wf.WORKFLOW_STATE_CANCELLED
            with pytest.raises(conveyor.TaskCancelled):
                await client.workflow_result(slow.workflow_id, timeout=10)

    asyncio.run(scenario())


def test_a_cancelled_output_or_an_expired_cause_is_reported(t, client):
    # One node cancelled on its own (CancelTask): its dependents are cancelled, and
    # the workflow, where nothing FAILED, has no result to give.
    result = (t.delayed.s(0, 30) | t.add.s(1)).delay()
    deadline = time.monotonic() + 20
    while TaskState.from_proto(result.workflow().nodes[0].task.state) != TaskState.RUNNING:
        assert time.monotonic() < deadline, "the first node never started"
        time.sleep(0.05)
    assert client.cancel(result.task_ids[0])
    with pytest.raises(conveyor.TaskCancelled) as cancelled:
        result.get(timeout=10)
    # The server reports the workflow CANCELLED (a node was cancelled, none failed).
    assert cancelled.value.task_id == result.id and "was cancelled" in str(cancelled.value), str(cancelled.value)
    assert states(result.workflow()) == ["CANCELLED", "CANCELLED"]
    with pytest.raises(conveyor.TaskCancelled):
        client.workflow_result(result.id, timeout=5)
    # A node that expires before its parent finishes fails its dependents.
    result = (t.delayed.s(0, 1.0) | t.add.s(1).set(expires=0.3) | t.add.s(2)).delay()
    with pytest.raises(conveyor.TaskFailed) as caught:
        result.get(timeout=30)
    assert states(result.workflow()) == ["SUCCEEDED", "EXPIRED", "FAILED"]
    assert caught.value.node == 2 and caught.value.reason == "DEPENDENCY_FAILED"
    assert isinstance(caught.value.cause, conveyor.TaskExpired) and caught.value.cause.task_id == result.task_ids[1]
    assert "caused by node 1 (add" in str(caught.value)
