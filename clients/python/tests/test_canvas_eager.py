"""Workflows in eager mode (no server): the canvas runs in this process with
the server's rules (results passed on, chord bodies given the ordered list,
link/link_error, failures failing dependents with DEPENDENCY_FAILED), and
the handles read as they do against a server."""

import pytest

import conveyor
from conveyor import TaskState, WorkflowState, chain, chord, chunks, group, starmap
from conveyor.v1 import task_pb2

app = conveyor.Conveyor("http://127.0.0.1:1", main="eager_canvas", eager=True)
calls: list[tuple] = []


@app.task(name="add")
def add(x, y):
    return x + y


@app.task(name="xsum")
def xsum(numbers):
    return sum(numbers)


@app.task(name="collect")
def collect(*args):
    return list(args)


@app.task(name="fail", dont_retry_for=(ValueError,))
def fail(*args):
    raise ValueError("boom")


@app.task(name="record")
def record(*args):
    calls.append(args)
    return len(calls)


@app.task(name="whoami", bind=True)
def whoami(ctx, *args):
    return {"workflow_id": ctx.workflow_id, "root_id": ctx.request.root_id, "id": ctx.id}


attempts: list[int] = []


@app.task(name="flaky", autoretry_for=(KeyError,), retry_kwargs={"max_retries": 3, "countdown": 0})
def flaky(x):
    attempts.append(x)
    if len(attempts) < 3:
        raise KeyError("not yet")
    return x * 10


@pytest.fixture(autouse=True)
def fresh():
    app.set_current()
    app.conf.task_eager_propagates = False
    calls.clear()
    attempts.clear()


def test_chain_passes_results_along():
    result = (add.s(1, 2) | add.s(3) | add.s(4)).delay()
    assert isinstance(result, conveyor.WorkflowResult) and not isinstance(result, conveyor.GroupResult)
    assert result.get() == 10 and result.state == WorkflowState.SUCCEEDED and result.state == "SUCCESS"
    assert result.ready() and result.successful() and not result.failed() and result.result == 10
    assert [r.get() for r in result.nodes] == [3, 6, 10]
    assert result.results[0].get() == 10 and result.last.get() == 10
    assert chain(add.s(2), add.s(3)).apply_async((1,)).get() == 6  # call args go to the first task


def test_the_brief_example():
    flow = add.s(1, 2) | group(add.s(i) for i in range(10)) | xsum.s() | add.s(100)
    assert flow.delay().get() == 175


def test_group_results_are_in_declaration_order():
    result = group(add.s(i, i) for i in range(5)).delay()
    assert isinstance(result, conveyor.GroupResult)
    assert result.get() == [0, 2, 4, 6, 8] and result.join() == [0, 2, 4, 6, 8]
    assert [r.get() for r in result.results] == [0, 2, 4, 6, 8]
    assert len(result) == 5 and [r.get() for r in result] == [0, 2, 4, 6, 8] and result[1].get() == 2
    assert result.completed_count() == 5
    # A group of chains and nested groups: one flat list.
    nested = group(add.s(1, 1) | add.s(1), group(add.s(0, 5), add.s(0, 6))).delay()
    assert nested.get() == [3, 5, 6]


def test_chord_body_gets_the_ordered_list():
    assert chord((add.s(i, i) for i in range(4)), collect.s("tail")).delay().get() == [[0, 2, 4, 6], "tail"]
    assert chord([add.s(1, 1)])(collect.s()).get() == [[2]]  # Celery's chord(header)(body)
    assert (group(add.s(1, 1), add.s(2, 2)) | xsum.s()).delay().get() == 6
    # Chord of chords, chord inside a chain.
    inner = [chord([add.s(1, 1), add.s(2, 2)], xsum.s()), chord([add.s(3, 3)], xsum.s())]
    assert chord(inner, collect.s()).delay().get() == [[6, 6]]
    assert chain(add.s(1, 1), chord([add.s(1), add.s(2)], xsum.s()), add.s(10)).delay().get() == 17


def test_immutable_signatures_ignore_results():
    assert (add.s(1, 1) | add.si(5, 5)).delay().get() == 10
    assert (group(add.s(1, 1)) | collect.si("x")).delay().get() == ["x"]


def test_link_runs_with_the_result_and_is_not_the_result():
    sig = add.s(2, 3)
    sig.link(record.s("linked"))
    result = sig.delay()
    assert isinstance(result, conveyor.WorkflowResult)
    assert result.get() == 5 and calls == [(5, "linked")]
    calls.clear()
    grouped = group(add.s(1, 1), add.s(2, 2))
    grouped.link(record.s())
    assert grouped.delay().get() == [2, 4] and calls == [([2, 4],)]
    calls.clear()
    assert add.s(1, 1).apply_async(link=record.s()).get() == 2 and calls == [(2,)]


def test_link_error_is_called_once_with_the_failed_task_and_its_error():
    flow = chain(add.s(1, 1), group(fail.s(), fail.s(), add.s(1)), xsum.s()).on_error(record.s("errback"))
    result = flow.delay()
    with pytest.raises(conveyor.TaskFailed) as caught:
        result.get()
    assert len(calls) == 1, "the errback runs once, on the first failure"
    failed_id, error, extra = calls[0]
    assert extra == "errback"
    workflow = result.workflow()
    by_id = {n.task.id: n for n in workflow.nodes}
    assert by_id[failed_id].index == 1 and by_id[failed_id].task.name == "fail"
    assert error["type"] == "ValueError" and error["message"] == "boom" and "Traceback" in error["traceback"]
    # The error names the node that failed the workflow.
    assert (caught.value.type, caught.value.message) == ("ValueError", "boom")
    assert caught.value.task_id == failed_id == workflow.failed_task_id
    assert caught.value.node == 1 and caught.value.workflow_id == result.id and caught.value.task_name == "fail"
    assert f"workflow {result.id}" in str(caught.value) and "node 1 (fail" in str(caught.value)
    assert result.state == WorkflowState.FAILED and result.state == "FAILURE" and result.failed()
    assert isinstance(result.result, conveyor.TaskFailed)
    assert isinstance(result.get(propagate=False), conveyor.TaskFailed)


def test_failure_fails_dependents_with_their_cause():
    result = (add.s(1, 1) | fail.s() | add.s(1) | add.s(2)).delay()
    workflow = result.workflow()
    states = [TaskState.from_proto(n.task.state) for n in workflow.nodes]
    assert states == ["SUCCEEDED", "FAILED", "FAILED", "FAILED"]
    nodes = workflow.nodes
    assert nodes[1].task.error.reason == task_pb2.FAILURE_REASON_UNSPECIFIED
    assert nodes[2].task.error.reason == task_pb2.FAILURE_REASON_DEPENDENCY_FAILED
    assert nodes[2].task.error.cause_task_id == nodes[1].task.id
    assert nodes[3].task.error.cause_task_id == nodes[2].task.id
    assert workflow.failed_task_id == nodes[1].task.id
    assert not workflow.HasField("result")
    # The last node's own handle: its error names its cause.
    with pytest.raises(conveyor.TaskFailed) as caught:
        result.results[0].get()
    assert caught.value.reason == "DEPENDENCY_FAILED" and caught.value.cause_task_id == nodes[2].task.id
    with pytest.raises(conveyor.TaskFailed) as top:
        result.get()
    assert top.value.task_id == nodes[1].task.id and top.value.cause is None


def test_the_error_follows_the_cause_chain():
    from conveyor import _workflow  # noqa: PLC0415

    result = (fail.s() | add.s(1) | add.s(2)).delay()
    workflow = result.workflow()
    workflow.failed_task_id = workflow.nodes[2].task.id  # as if the last node had failed the workflow
    error = _workflow.failure(workflow)
    assert error.node == 2 and error.reason == "DEPENDENCY_FAILED"
    assert error.cause.node == 1 and error.cause.cause.node == 0 and error.cause.cause.type == "ValueError"
    assert error.__cause__ is error.cause
    assert "caused by node 0 (fail" in str(error) and "ValueError: boom" in str(error)


def test_errback_is_cancelled_when_everything_succeeds():
    sig = add.s(1, 1)
    sig.link_error(record.s())
    result = sig.delay()
    assert result.get() == 2 and calls == []
    errback = result.workflow().nodes[1]
    assert TaskState.from_proto(errback.task.state) == TaskState.CANCELLED
    assert result.state == WorkflowState.SUCCEEDED


def test_chord_with_allow_errors_gets_the_errors_in_place():
    result = chord([add.s(1, 1), fail.s(), add.s(2, 2)], collect.s(), allow_errors=True).delay()
    workflow = result.workflow()
    assert result.state == WorkflowState.FAILED  # a node failed
    body = workflow.nodes[3]
    assert TaskState.from_proto(body.task.state) == TaskState.SUCCEEDED
    (values,) = conveyor.decode(body.task.result)
    assert values[0] == 2 and values[2] == 4
    assert values[1] == {"error": {"type": "ValueError", "message": "boom", "task_id": workflow.nodes[1].task.id}}
    # Without allow_errors the body does not run.
    failed = chord([add.s(1, 1), fail.s()], collect.s()).delay().workflow()
    assert failed.nodes[2].task.error.reason == task_pb2.FAILURE_REASON_DEPENDENCY_FAILED


def test_workflow_id_is_on_the_task_context():
    result = (add.s(1, 1) | whoami.s()).delay()
    seen = result.get()
    assert seen["workflow_id"] == result.id == seen["root_id"]
    assert seen["id"] == result.task_ids[1]
    alone = whoami.delay().get()
    assert alone["workflow_id"] is None and alone["root_id"] == alone["id"]


def test_workflow_view_and_counts():
    result = chord([add.s(1, 1), add.s(2, 2)], xsum.s()).delay()
    workflow = result.workflow()
    assert workflow.node_count == 3 and len(workflow.nodes) == 3
    assert workflow.state_counts[task_pb2.TASK_STATE_SUCCEEDED] == 3
    assert list(workflow.output_task_ids) == [result.task_ids[2]] == result.output_task_ids
    assert workflow.name == "chord(add x2, xsum)" and workflow.nodes[2].label == "chord.body"
    assert [n.task.workflow_node for n in workflow.nodes] == [0, 1, 2]
    assert all(n.task.workflow_id == result.id for n in workflow.nodes)
    assert [conveyor.decode(p) for p in workflow.nodes[2].task.args] == [[2, 4]]  # inputs come first
    assert not result.workflow("summary").nodes
    assert [w.state for w in result.watch()] == [workflow.state]
    assert result.cancel() == 0 and result.revoke() == 0


def test_chunks_and_starmap():
    assert chunks(add, [(i, i) for i in range(5)], 2).delay().get() == [[0, 2], [4, 6], [8]]
    assert add.chunks([(1, 2), (3, 4)], 5).delay().get() == [[3, 7]]
    assert starmap(add, [(1, 2), (3, 4)]).delay().get() == [3, 7]
    assert (add.starmap([(1, 2), (3, 4)]) | xsum.s()).delay().get() == 10


def test_retries_run_in_eager_nodes():
    assert (add.s(1, 1) | flaky.s()).delay().get() == 20
    assert attempts == [2, 2, 2]


def test_propagate_raises_at_once_and_unknown_tasks_are_refused():
    app.conf.task_eager_propagates = True
    with pytest.raises(conveyor.TaskFailed):
        (add.s(1, 1) | fail.s()).delay()
    with pytest.raises(LookupError, match="not registered"):
        (add.s(1, 1) | conveyor.signature("elsewhere")).delay()


def test_apply_runs_here_whatever_the_mode():
    served = conveyor.Conveyor("http://127.0.0.1:1", main="served")
    double = served.task(name="double")(lambda x: 2 * x)
    assert (double.s(2) | double.s()).apply().get() == 8
    sig = double.s(5)
    sig.link(double.s())
    assert sig.apply().get() == 10
    assert double.s(4).apply().get() == 8  # a plain signature: an EagerResult
    app.set_current()


def test_a_finished_workflow_without_result_names_its_output():
    from conveyor import _workflow  # noqa: PLC0415
    from conveyor.v1 import workflow_pb2  # noqa: PLC0415

    workflow = workflow_pb2.Workflow(id="w1", name="chain(a, b)", state=workflow_pb2.WORKFLOW_STATE_SUCCEEDED)
    workflow.output_task_ids.append("t2")
    for index, (task_id, state) in enumerate([("t1", task_pb2.TASK_STATE_CANCELLED), ("t2", task_pb2.TASK_STATE_CANCELLED)]):
        workflow.nodes.append(workflow_pb2.WorkflowNodeStatus(index=index, task=task_pb2.Task(id=task_id, name="b", state=state)))
    assert _workflow.needs_nodes(workflow)
    with pytest.raises(conveyor.TaskCancelled, match="has no result: output node 1 .b, task t2."):
        _workflow.settle(workflow)
    workflow.result.CopyFrom(conveyor.encode(None))
    assert not _workflow.needs_nodes(workflow) and _workflow.settle(workflow) is None
    assert conveyor.WorkflowState("SUCCESS") == WorkflowState.SUCCEEDED and WorkflowState.RUNNING.celery == "STARTED"
    assert WorkflowState.from_proto(99) == WorkflowState.UNSPECIFIED and not WorkflowState.RUNNING.terminal
    with pytest.raises(ValueError, match="workflow view"):
        _workflow.view_of("everything")
