"""How the canvas compiles into a workflow (no server): nodes, parents,
input modes, triggers, outputs, options, names and the errors that come
before anything is sent. Each DAG below is the contract's (every SDK
compiles the same canvas into the same nodes)."""

import pytest

import conveyor
from conveyor import chain, chord, chunks, group, signature, starmap
from conveyor.canvas import MAX_NODES
from conveyor.v1 import workflow_pb2 as wf

NONE, ONE, LIST = wf.NODE_INPUT_NONE, wf.NODE_INPUT_ONE, wf.NODE_INPUT_LIST
ALL_SUCCEEDED, ALL_DONE, ON_FAILURE = wf.NODE_TRIGGER_ALL_SUCCEEDED, wf.NODE_TRIGGER_ALL_DONE, wf.NODE_TRIGGER_ON_FAILURE

app = conveyor.Conveyor("http://127.0.0.1:1", main="canvas")


@app.task(name="a")
def a(*args):
    return list(args)


@app.task(name="b")
def b(*args):
    return list(args)


@app.task(name="c")
def c(*args):
    return list(args)


@app.task(name="add")
def add(x, y):
    return x + y


@app.task(name="xsum")
def xsum(numbers):
    return sum(numbers)


def dag(spec):
    """(name, parents, input, trigger) of every node, in order."""
    return [(n.task.name, list(n.parents), n.input, n.trigger) for n in spec.nodes]


def args_of(node):
    return [conveyor.decode(p) for p in node.task.args]


def test_signature_alone_is_one_node_without_inputs():
    spec = add.s(2, 3).to_workflow()
    assert dag(spec) == [("add", [], NONE, ALL_SUCCEEDED)]
    assert args_of(spec.nodes[0]) == [2, 3]
    assert list(spec.outputs) == [0] and not spec.output_list
    assert spec.name == "add" and not spec.HasField("options") and not spec.idempotency_key


def test_chain_passes_each_result_to_the_next():
    spec = (a.s(1) | b.s() | c.s(2)).to_workflow()
    assert dag(spec) == [
        ("a", [], NONE, ALL_SUCCEEDED),
        ("b", [0], ONE, ALL_SUCCEEDED),
        ("c", [1], ONE, ALL_SUCCEEDED),
    ]
    assert list(spec.outputs) == [2] and not spec.output_list
    assert spec.name == "chain(a, b, c)"
    assert [n.label for n in spec.nodes] == ["chain[0]", "chain[1]", "chain[2]"]
    assert chain(a.s(1), b.s(), c.s(2)).to_workflow() == spec


def test_chain_of_groups_makes_chords():
    spec = chain(group(a.s(1), a.s(2)), b.s(), group(c.s(), c.s()), xsum.s()).to_workflow()
    assert dag(spec) == [
        ("a", [], NONE, ALL_SUCCEEDED),
        ("a", [], NONE, ALL_SUCCEEDED),
        ("b", [0, 1], LIST, ALL_SUCCEEDED),  # group | task = chord
        ("c", [2], ONE, ALL_SUCCEEDED),
        ("c", [2], ONE, ALL_SUCCEEDED),
        ("xsum", [3, 4], LIST, ALL_SUCCEEDED),
    ]
    assert list(spec.outputs) == [5] and not spec.output_list
    # A group after a group: each member gets the whole list.
    spec = (group(a.s(), b.s()) | group(c.s(), c.s())).to_workflow()
    assert dag(spec)[2:] == [("c", [0, 1], LIST, ALL_SUCCEEDED), ("c", [0, 1], LIST, ALL_SUCCEEDED)]
    assert list(spec.outputs) == [2, 3] and spec.output_list  # several exits: a list


def test_group_of_chains_and_nested_groups_flatten():
    spec = group(a.s(1) | b.s(), group(c.s(2), c.s(3)), a.s(4) | b.s() | c.s()).to_workflow()
    assert dag(spec) == [
        ("a", [], NONE, ALL_SUCCEEDED),
        ("b", [0], ONE, ALL_SUCCEEDED),
        ("c", [], NONE, ALL_SUCCEEDED),
        ("c", [], NONE, ALL_SUCCEEDED),
        ("a", [], NONE, ALL_SUCCEEDED),
        ("b", [4], ONE, ALL_SUCCEEDED),
        ("c", [5], ONE, ALL_SUCCEEDED),
    ]
    assert list(spec.outputs) == [1, 2, 3, 6] and spec.output_list
    assert spec.nodes[2].label == "group[1].group[0]" and spec.nodes[6].label == "group[2].chain[2]"


def test_chord_inside_a_chain():
    spec = chain(a.s(1), chord([b.s(), b.s()], c.s()), xsum.s()).to_workflow()
    assert dag(spec) == [
        ("a", [], NONE, ALL_SUCCEEDED),
        ("b", [0], ONE, ALL_SUCCEEDED),
        ("b", [0], ONE, ALL_SUCCEEDED),
        ("c", [1, 2], LIST, ALL_SUCCEEDED),
        ("xsum", [3], ONE, ALL_SUCCEEDED),
    ]
    assert [n.label for n in spec.nodes][1:4] == ["chain[1].chord.header[0]", "chain[1].chord.header[1]", "chain[1].chord.body"]
    assert list(spec.outputs) == [4]


def test_chord_of_chords():
    spec = chord([chord([a.s(1), a.s(2)], b.s()), chord([a.s(3), a.s(4)], b.s())], xsum.s()).to_workflow()
    assert dag(spec) == [
        ("a", [], NONE, ALL_SUCCEEDED),
        ("a", [], NONE, ALL_SUCCEEDED),
        ("b", [0, 1], LIST, ALL_SUCCEEDED),
        ("a", [], NONE, ALL_SUCCEEDED),
        ("a", [], NONE, ALL_SUCCEEDED),
        ("b", [3, 4], LIST, ALL_SUCCEEDED),
        ("xsum", [2, 5], LIST, ALL_SUCCEEDED),
    ]
    assert list(spec.outputs) == [6] and not spec.output_list
    assert spec.name == "chord(chord(a x2, b) x2, xsum)"


def test_chord_forms_and_allow_errors():
    one = chord([a.s()], xsum.s()).to_workflow()
    assert dag(one) == [("a", [], NONE, ALL_SUCCEEDED), ("xsum", [0], LIST, ALL_SUCCEEDED)]  # always a list
    assert chord(group(a.s()), xsum.s()).to_workflow() == one
    assert (group(a.s()) | xsum.s()).to_workflow().nodes[1].input == LIST
    assert (chord([a.s()]) | xsum.s()).to_workflow() == one  # a chord without body takes it from |
    assert chord(a.s() for _ in range(1)).header.tasks == (a.s(),)
    errors = chord([a.s(), b.s()], xsum.s(), allow_errors=True).to_workflow()
    assert dag(errors)[2] == ("xsum", [0, 1], LIST, ALL_DONE)
    # The body's first task only waits for the header; later steps as usual.
    chained = chord([a.s(), b.s()], xsum.s() | add.s(1), allow_errors=True).to_workflow()
    assert dag(chained)[2:] == [("xsum", [0, 1], LIST, ALL_DONE), ("add", [2], ONE, ALL_SUCCEEDED)]
    # A chord followed by a task: the body's result goes on.
    assert dag((chord([a.s()], b.s()) | c.s()).to_workflow())[2] == ("c", [1], ONE, ALL_SUCCEEDED)


def test_link_runs_after_the_exits_and_is_not_an_output():
    sig = a.s(1)
    assert sig.link(b.s(2)) == b.s(2)  # Celery's: returns the callback
    spec = sig.to_workflow()
    assert dag(spec) == [("a", [], NONE, ALL_SUCCEEDED), ("b", [0], ONE, ALL_SUCCEEDED)]
    assert spec.nodes[1].label == "link[0]"
    assert list(spec.outputs) == [0] and not spec.output_list
    grouped = group(a.s(), b.s())
    grouped.link(xsum.s())
    spec = grouped.to_workflow()
    assert dag(spec)[2] == ("xsum", [0, 1], LIST, ALL_SUCCEEDED)
    assert list(spec.outputs) == [0, 1] and spec.output_list
    chained = a.s() | b.s()
    chained.link(c.s())
    chained.link(c.si())
    assert dag(chained.to_workflow())[2:] == [("c", [1], ONE, ALL_SUCCEEDED), ("c", [1], NONE, ALL_SUCCEEDED)]
    # apply_async(link=...) takes callbacks too, without changing the element.
    assert dag(a.s(1)._with_call_args(None, None).to_workflow()) == [("a", [], NONE, ALL_SUCCEEDED)]


def test_link_error_watches_every_task_of_its_element_and_nothing_else():
    inner = a.s(1)
    inner.link_error(c.s("inner"))
    inner.link(c.s("callback"))
    outer = chain(inner, group(b.s(), b.s()), xsum.s()).on_error(c.s("outer"))
    spec = outer.to_workflow()
    assert dag(spec) == [
        ("a", [], NONE, ALL_SUCCEEDED),
        ("c", [0], ONE, ALL_SUCCEEDED),  # inner's link: parents = its exits
        ("c", [0], NONE, ON_FAILURE),  # inner's errback
        ("b", [0], ONE, ALL_SUCCEEDED),
        ("b", [0], ONE, ALL_SUCCEEDED),
        ("xsum", [3, 4], LIST, ALL_SUCCEEDED),
        ("c", [0, 3, 4, 5], NONE, ON_FAILURE),  # every task of the chain, not the callbacks
    ]
    assert [args_of(spec.nodes[i]) for i in (1, 2, 6)] == [["callback"], ["inner"], ["outer"]]
    assert spec.nodes[6].label == "link_error[0]" and spec.nodes[2].label == "chain[0].link_error[0]"
    assert list(spec.outputs) == [5]
    # On a chord: header and body; an errback chain runs its later steps as usual.
    spec = chord([a.s(), a.s()], b.s()).on_error(c.s() | xsum.s()).to_workflow()
    assert dag(spec)[3:] == [("c", [0, 1, 2], NONE, ON_FAILURE), ("xsum", [3], ONE, ALL_SUCCEEDED)]


def test_immutable_signatures_take_no_inputs():
    spec = chain(a.s(1), b.si(2), group(c.si(), c.s()), xsum.si(5)).to_workflow()
    assert dag(spec) == [
        ("a", [], NONE, ALL_SUCCEEDED),
        ("b", [0], NONE, ALL_SUCCEEDED),
        ("c", [1], NONE, ALL_SUCCEEDED),
        ("c", [1], ONE, ALL_SUCCEEDED),
        ("xsum", [2, 3], NONE, ALL_SUCCEEDED),
    ]
    assert args_of(spec.nodes[1]) == [2] and args_of(spec.nodes[4]) == [5]
    assert a.s(1).set(immutable=True).immutable and not a.s(1).immutable
    assert signature("a", args=[1], immutable=True).to_workflow() == a.si(1).to_workflow()


def test_outputs_and_output_list():
    cases = [
        (a.s(), [0], False),
        (a.s() | b.s(), [1], False),
        (group(a.s()), [0], True),  # a group's result is a list, even of one
        (group(a.s(), b.s()), [0, 1], True),
        (a.s() | group(b.s(), c.s()), [1, 2], True),  # several exits: a list
        (a.s() | group(b.s()), [1], False),  # one exit of a chain: its value
        (chord([a.s(), b.s()], c.s()), [2], False),
        (chord([a.s()], group(b.s(), c.s())), [1, 2], True),
    ]
    for element, outputs, output_list in cases:
        spec = element.to_workflow()
        assert (list(spec.outputs), spec.output_list) == (outputs, output_list), element


def test_empty_elements_raise_before_submitting():
    with pytest.raises(ValueError, match="empty group"):
        group().to_workflow()
    with pytest.raises(ValueError, match="empty group"):
        group([]).delay()
    with pytest.raises(ValueError, match="empty group"):
        (a.s() | group(x for x in ()) | b.s()).to_workflow()
    with pytest.raises(ValueError, match="empty chain"):
        chain().to_workflow()
    with pytest.raises(ValueError, match="empty header"):
        chord([], b.s()).to_workflow()
    with pytest.raises(ValueError, match="needs a body"):
        chord([a.s()]).to_workflow()
    with pytest.raises(ValueError, match="needs a body"):
        chord([a.s()])()
    with pytest.raises(TypeError, match="signature"):
        group(a.s(), "b")
    with pytest.raises(TypeError, match="signature"):
        a.s() | (lambda: 1)
    with pytest.raises(TypeError, match="task name"):
        signature("")


def test_options_of_nodes_of_elements_and_of_the_workflow():
    step = add.s(1).set(queue="math", priority=7, countdown=3)
    assert step.options == {"queue": "math", "priority": 7, "countdown": 3}
    assert add.s(1).options == {}  # set() returns a copy
    spec = chain(add.s(1, 2), step).set(queue="default-q", headers={"h": "outer", "k": "1"}).to_workflow(
        priority=2, idempotency_key="wf-1", name="my workflow"
    )
    first, second = (n.task.options for n in spec.nodes)
    assert (first.queue, second.queue, second.priority, second.countdown.seconds) == ("default-q", "math", 7, 3)
    assert dict(first.headers) == {"h": "outer", "k": "1"}
    assert spec.options.priority == 2 and not spec.options.queue  # the workflow's defaults
    assert spec.idempotency_key == "wf-1" and spec.name == "my workflow"
    assert not any(n.task.idempotency_key for n in spec.nodes)
    headers = group(add.s(1, 1).set(headers={"h": "inner"})).set(headers={"h": "outer", "k": "1"}).to_workflow()
    assert dict(headers.nodes[0].task.options.headers) == {"h": "inner", "k": "1"}
    with pytest.raises(ValueError, match="idempotency_key to the whole workflow"):
        chain(add.s(1, 2).set(idempotency_key="k"), add.s(3)).to_workflow()
    with pytest.raises(TypeError, match="unknown task option"):
        add.s(1).set(retries=3)
    with pytest.raises(TypeError, match="unknown task option"):
        chain(add.s(1, 2)).to_workflow(retries=3)


def test_display_names_and_labels_fit():
    spec = (add.s(1, 2) | group(add.s(i) for i in range(10)) | xsum.s() | add.s(100)).to_workflow()
    assert spec.name == "chain(add, group(add x10), xsum, add)"
    assert chord((add.s(i, i) for i in range(3)), xsum.s()).to_workflow().name == "chord(add x3, xsum)"
    long = group(signature(f"t{i}" * 20) for i in range(30)).to_workflow()
    assert len(long.name.encode()) <= 200 and long.name.endswith("…")
    deep = add.s(1, 1)
    for _ in range(60):
        deep = group(deep)
    node = deep.to_workflow().nodes[0]
    assert len(node.label.encode()) <= 200


def test_operators():
    assert isinstance(a.s() | b.s(), chain)
    assert (a.s() | b.s() | c.s()).tasks == (a.s(), b.s(), c.s())
    assert (a.s() | (b.s() | c.s())).tasks == (a.s(), b.s(), c.s())
    grouped = group(a.s(), b.s()) | c.s()
    assert isinstance(grouped, chord) and grouped.body == c.s()
    assert isinstance(group(a.s()) | group(b.s()), chain)
    assert isinstance(chord([a.s()], b.s()) | c.s(), chain)
    linked = a.s() | b.s()
    linked.link(c.s())
    assert len((linked | c.s()).tasks) == 2  # a chain with callbacks stays whole
    assert repr(a.s(1) | b.si(2, k=3)) == "a(1) | b!(2, k=3)"


def test_group_from_a_generator_and_helpers():
    spec = group(add.s(i, i) for i in range(4)).to_workflow()
    assert [args_of(n) for n in spec.nodes] == [[0, 0], [1, 1], [2, 2], [3, 3]]
    assert len(group(add.s(i, i) for i in range(4))) == 4
    mapped = starmap(add, [(1, 2), (3, 4)])
    assert isinstance(mapped, group) and [args_of(n) for n in mapped.to_workflow().nodes] == [[1, 2], [3, 4]]
    assert add.starmap([(1, 2)]).to_workflow() == starmap("add", [(1, 2)]).to_workflow()
    chunked = chunks(add, [(i, i) for i in range(5)], 2)
    assert chunked.chunk_sizes == [2, 2, 1]
    spec = chunked.to_workflow()
    assert len(spec.nodes) == 5 and spec.output_list and list(spec.outputs) == [0, 1, 2, 3, 4]
    assert spec.name == "chunks(add x5, 2)"
    assert add.chunks([(1, 2)], 1).chunk_sizes == [1]
    # A signature as template: each item's arguments come first.
    assert args_of(starmap(add.s(10), [(1,)]).to_workflow().nodes[0]) == [1, 10]
    with pytest.raises(ValueError, match="chunk size"):
        chunks(add, [(1, 2)], 0)


def test_signature_function_and_task_signature():
    sig = signature("resize", args=["u"], kwargs={"w": 2}, options={"queue": "img"}, priority=3)
    assert (sig.name, sig.args, sig.kwargs, sig.options) == ("resize", ("u",), {"w": 2}, {"queue": "img", "priority": 3})
    assert signature({"task": "resize", "args": [1], "options": {"queue": "q"}, "immutable": True}).immutable
    assert signature(sig) is sig
    assert conveyor.maybe_signature(None) is None and conveyor.maybe_signature(sig) is sig
    assert add.signature((1, 2), queue="q") == add.s(1, 2).set(queue="q")
    assert add.subtask((1,), immutable=True) == add.si(1)
    assert sig.task == "resize"


def test_call_arguments_go_to_the_first_tasks():
    spec = (a.s(1) | b.s()).clone((0,)).to_workflow()
    assert args_of(spec.nodes[0]) == [0, 1] and args_of(spec.nodes[1]) == []
    spec = group(a.s(1), b.si(2)).clone((0,), {"k": 1}).to_workflow()
    assert args_of(spec.nodes[0]) == [0, 1] and args_of(spec.nodes[1]) == [2]  # immutable keeps its own
    assert conveyor.decode(spec.nodes[0].task.kwargs["k"]) == 1
    spec = chord([a.s(1)], b.s()).clone((0,)).to_workflow()
    assert args_of(spec.nodes[0]) == [0, 1] and args_of(spec.nodes[1]) == []


def test_workflow_limits_are_checked_before_submitting():
    with pytest.raises(ValueError, match=f"more than {MAX_NODES} nodes"):
        group(add.s(i, i) for i in range(MAX_NODES + 1)).to_workflow()
    with pytest.raises(ValueError, match="edges"):
        chain(group(add.s(i, i) for i in range(5000)), group(xsum.s() for _ in range(41))).to_workflow()


def test_signatures_with_callbacks_are_not_plain_tasks():
    sig = a.s(1)
    sig.link(b.s())
    with pytest.raises(TypeError, match="apply_async"):
        conveyor.Client("http://127.0.0.1:1").submit_many([sig])
    assert sig != a.s(1) and sig.links == (b.s(),)


def test_client_takes_canvas_or_spec():
    client = conveyor.Client("http://127.0.0.1:1")
    with pytest.raises(TypeError, match="as it is"):
        client.submit_workflow(a.s().to_workflow(), queue="q")
    with pytest.raises(TypeError, match="cannot submit"):
        client.submit_workflow(["a"])
    client.close()


# --- callback arity: a registered task's function is checked against what its node gets -------


@app.task(name="nothing")
def nothing():
    return 0


@app.task(name="report_one")
def report_one(task_id):
    return task_id


@app.task(name="report")
def report(task_id, error, note=""):
    return note


@app.task(name="ctx_add", bind=True)
def ctx_add(ctx, x, y):
    return x + y


def test_arity_chain_step_with_too_many_bound_arguments():
    with pytest.raises(TypeError) as caught:
        (add.s(1, 2) | add.s(3, 4)).to_workflow()
    message = str(caught.value)
    assert "workflow node 1 (chain[1], add)" in message
    assert "gets 1 input (the result before it) plus 2 bound arguments" in message
    assert "add(x, y) takes 2 positional arguments" in message and "add.si(...)" in message
    # A missing argument is caught too; a keyword argument counts.
    with pytest.raises(TypeError, match=r"workflow node 0 \(chain\[0\], add\).*missing"):
        (add.s(1) | add.s(3)).to_workflow()
    (add.s(1, y=2) | add.s(y=3)).to_workflow()


def test_arity_chord_body_taking_no_argument():
    with pytest.raises(TypeError) as caught:
        chord([add.s(1, 1), add.s(2, 2)], nothing.s()).to_workflow()
    message = str(caught.value)
    assert message.startswith("workflow node 2 (chord.body, nothing) gets 1 input (the list of the results")
    assert "nothing() takes 0 positional arguments" in message and "nothing.si(...)" in message
    chord([add.s(1, 1)], xsum.s()).to_workflow()


def test_arity_link_error_callback_taking_one_parameter():
    flow = add.s(1, 2) | add.s(3)
    flow.link_error(report_one.s())
    with pytest.raises(TypeError) as caught:
        flow.to_workflow()
    message = str(caught.value)
    assert "workflow node 2 (link_error[0], report_one) gets 2 inputs (the failed task's id and its error)" in message
    assert "report_one(task_id, error, ...)" in message
    # Immutable or not, an errback gets both first.
    with pytest.raises(TypeError, match="report_one"):
        add.s(1, 2).on_error(report_one.si()).to_workflow()
    add.s(1, 2).on_error(report.si()).to_workflow()
    add.s(1, 2).on_error(report.s("note")).to_workflow()
    with pytest.raises(TypeError, match="2 bound arguments"):
        add.s(1, 2).on_error(report.s("note", "extra")).to_workflow()


def test_arity_immutable_signature_and_bind():
    (add.s(1, 2) | add.si(3, 4)).to_workflow()  # ignores the input: add(3, 4)
    with pytest.raises(TypeError, match=r"gets no input plus 1 bound argument"):
        (add.s(1, 2) | add.si(3)).to_workflow()
    # bind=True: the task context comes first and is not counted.
    (add.s(1, 2) | ctx_add.s(1)).to_workflow()
    with pytest.raises(TypeError, match=r"takes 2 positional arguments after its task context"):
        (add.s(1, 2) | ctx_add.s(1, 2)).to_workflow()
    # Arguments given at submission are checked with the first task's.
    assert add.s().clone((1, 2)).to_workflow().nodes[0].task.name == "add"


def test_arity_star_args_and_name_only_signatures_are_not_checked():
    (a.s(1, 2, 3) | b.s(4, 5) | group(c.s(), c.s(1)) | a.s()).to_workflow()
    # By name only, the function is not known (it may run in another language).
    (add.s(1, 2) | signature("add", args=[3, 4])).to_workflow()
    chord([add.s(1, 1)], signature("nothing")).to_workflow()
    add.s(1, 2).on_error(app.signature("report_one")).to_workflow()
