"""Celery's canvas: `Signature` (a task with arguments and options bound),
`chain`, `group`, `chord`, `link`/`link_error`, and the `chunks` and
`starmap` helpers.

A canvas that is more than one plain signature is compiled here, client-side,
into one workflow (`WorkflowSpec`: a DAG of tasks) that the server stores in
one atomic call and runs: every SDK compiles the same canvas into the same
DAG. `compile(element, parents P, input mode M)` appends the element's nodes
and returns its exits (the nodes whose results are its result):

- signature: one node with parents P; input M when P is non-empty and the
  signature is mutable, NONE when it is immutable (`.si()`) or has no parents.
- chain(e1, ..., en): e1 with (P, M), each next one with parents = the exits
  of the one before and input ONE (one exit) or LIST (several: a group
  followed by a task is a chord). Exits: those of en.
- group(e1, ..., en): each with (P, M); exits: all of theirs, in order (a
  nested group is flattened).
- chord(header, body): the header as a group with (P, M), the body with
  parents = the header's exits and input LIST (trigger ALL_DONE with
  `allow_errors=True`). Exits: the body's.
- element.link(callback): the callback with parents = the element's exits,
  input ONE or LIST. Not an exit.
- element.link_error(errback): the errback with parents = every node of the
  element (its signatures at any depth, not the link or link_error callbacks
  inside it), trigger ON_FAILURE: it runs once, on the first failure, with
  (failed task id, {"type", "message", "traceback"}) before its own
  arguments. Not an exit.

The workflow's outputs are the top element's exits, a list when it is a
group or has several exits.
"""

from __future__ import annotations

import copy as _copy
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from conveyor import _codec
from conveyor.v1 import task_pb2, workflow_pb2

if TYPE_CHECKING:
    from conveyor._eager import EagerResult
    from conveyor.app import AsyncResult, Conveyor, Task
    from conveyor.result import WorkflowResult

__all__ = [
    "MAX_EDGES",
    "MAX_NODES",
    "Canvas",
    "Signature",
    "chain",
    "chord",
    "chunks",
    "compile_workflow",
    "group",
    "maybe_signature",
    "signature",
    "starmap",
]

# The server's limits on one workflow (RESOURCE_EXHAUSTED beyond).
MAX_NODES = 20_000
MAX_EDGES = 200_000
# Most bytes of a workflow's display name and of a node's label.
MAX_LABEL_BYTES = 200

_NONE = workflow_pb2.NODE_INPUT_NONE
_ONE = workflow_pb2.NODE_INPUT_ONE
_LIST = workflow_pb2.NODE_INPUT_LIST
_ALL_SUCCEEDED = workflow_pb2.NODE_TRIGGER_ALL_SUCCEEDED
_ALL_DONE = workflow_pb2.NODE_TRIGGER_ALL_DONE
_ON_FAILURE = workflow_pb2.NODE_TRIGGER_ON_FAILURE


def checked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options without the unset (None) ones, checked against the options
    `build_spec` knows."""
    kept = {key: value for key, value in options.items() if value is not None}
    _codec.check_options(kept)
    return kept


def _merge(defaults: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` over `defaults`; headers are merged, `options`' winning."""
    merged = {**defaults, **options}
    if defaults.get("headers") and options.get("headers"):
        merged["headers"] = {**defaults["headers"], **options["headers"]}
    return merged


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


def _clip(text: str) -> str:
    """`text` cut to MAX_LABEL_BYTES of UTF-8, ending with "…" when cut."""
    data = text.encode()
    if len(data) <= MAX_LABEL_BYTES:
        return text
    return data[: MAX_LABEL_BYTES - 3].decode(errors="ignore") + "…"


def _runs(names: list[str]) -> str:
    """"add x10, xsum": runs of one name counted."""
    parts: list[str] = []
    index = 0
    while index < len(names):
        end = index
        while end + 1 < len(names) and names[end + 1] == names[index]:
            end += 1
        count = end - index + 1
        parts.append(names[index] if count == 1 else f"{names[index]} x{count}")
        index = end + 1
    return ", ".join(parts)


def _element(value: Any, what: str) -> Canvas:
    if isinstance(value, Canvas):
        return value
    raise TypeError(
        f"{what} must be a signature or another canvas element (task.s(...), chain, group, chord), "
        f"not {value!r}"
    )


class _Compiler:
    """Appends the nodes of a canvas to one list (parents before children)."""

    def __init__(self, route: Callable[[str], Mapping[str, Any]] | None = None, fixed: Iterable[str] = ()) -> None:
        self.nodes: list[workflow_pb2.WorkflowNode] = []
        self.edges = 0
        self._route = route
        self._fixed = frozenset(fixed)

    def route(self, name: str) -> dict[str, Any]:
        """The app's routing options of task `name` (`conf.task_routes`,
        `task_default_queue`), but for those the workflow's options set."""
        if self._route is None:
            return {}
        return {key: value for key, value in self._route(name).items() if key not in self._fixed}

    def add(self, node: workflow_pb2.WorkflowNode) -> int:
        self.nodes.append(node)
        self.edges += len(node.parents)
        if len(self.nodes) > MAX_NODES:
            raise ValueError(
                f"the workflow has more than {MAX_NODES} nodes, the most one workflow may have: "
                "split it into several workflows"
            )
        if self.edges > MAX_EDGES:
            raise ValueError(
                f"the workflow has more than {MAX_EDGES} edges (parent links), the most one workflow may "
                "have: split it, or put fewer tasks in front of a chord body or a link_error"
            )
        return len(self.nodes) - 1


class Canvas:
    """What every canvas element has: options, link/link_error callbacks,
    `|`, `delay`/`apply_async` (submit, return a handle) and `apply` (run
    here, eagerly)."""

    def __init__(self, options: Mapping[str, Any] | None = None, *, app: Conveyor | None = None):
        self.options: dict[str, Any] = checked_options(options or {})
        self.app = app
        self._links: list[Canvas] = []
        self._errbacks: list[Canvas] = []

    # --- building --------------------------------------------------------------------

    @property
    def links(self) -> tuple[Canvas, ...]:
        """The callbacks `link` added, in order."""
        return tuple(self._links)

    @property
    def errbacks(self) -> tuple[Canvas, ...]:
        """The errbacks `link_error` added, in order."""
        return tuple(self._errbacks)

    def link(self, callback: Canvas) -> Canvas:
        """Runs `callback` with this element's result after it succeeds (its
        result first; a list when the element has several exits). Changes
        this element and returns `callback`, as Celery does. The callback is
        not part of the result."""
        self._links.append(_element(callback, "a link callback"))
        return callback

    def link_error(self, errback: Canvas) -> Canvas:
        """Runs `errback` once if any task of this element fails, with the
        failed task's id and its error {"type", "message", "traceback"}
        before its own arguments: `errback(task_id, error, *args)`. Changes
        this element and returns `errback`, as Celery does."""
        self._errbacks.append(_element(errback, "a link_error errback"))
        return errback

    def on_error(self, errback: Canvas) -> Canvas:
        """`link_error`, returning this element (Celery's)."""
        self.link_error(errback)
        return self

    def set(self, **options: Any) -> Canvas:
        """A copy with these options added. On a chain, group or chord they
        are the defaults of every task inside (a task's own options win)."""
        clone = self._copy()
        clone.options = {**clone.options, **checked_options(options)}
        return clone

    def clone(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any) -> Canvas:
        """A copy with `args` prepended and `kwargs` merged where a call
        passes them (see `apply_async`), and `options` added."""
        return self._with_call_args(args, kwargs).set(**options)

    def _copy(self) -> Canvas:
        clone = _copy.copy(self)
        clone.options = dict(self.options)
        clone._links = list(self._links)
        clone._errbacks = list(self._errbacks)
        return clone

    def _with_call_args(self, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None) -> Canvas:
        raise NotImplementedError

    def __or__(self, other: Any) -> Canvas:
        """`a | b`: a chain (a group followed by anything but a group is a chord)."""
        return chain(self, _element(other, "the right side of |"))

    def _plain(self) -> bool:
        """No options and no callbacks: may be merged into an enclosing one."""
        return not (self.options or self._links or self._errbacks)

    # --- compiling -------------------------------------------------------------------

    @property
    def display(self) -> str:
        """A short name for display, e.g. "chain(add, group(add x10), xsum)"."""
        raise NotImplementedError

    def _compile(
        self,
        compiler: _Compiler,
        parents: list[int],
        mode: int,
        trigger: int,
        defaults: Mapping[str, Any],
        path: str,
    ) -> tuple[list[int], list[int]]:
        """Appends this element's nodes, then its callbacks'; returns its
        exits and the nodes of its own tasks (what link_error watches)."""
        exits, body = self._build(compiler, parents, mode, trigger, _merge(defaults, self.options), path)
        for index, callback in enumerate(self._links):
            callback._compile(compiler, exits, _ONE if len(exits) == 1 else _LIST, _ALL_SUCCEEDED, defaults, _join(path, f"link[{index}]"))
        for index, errback in enumerate(self._errbacks):
            errback._compile(compiler, body, _NONE, _ON_FAILURE, defaults, _join(path, f"link_error[{index}]"))
        return exits, body

    def _build(
        self,
        compiler: _Compiler,
        parents: list[int],
        mode: int,
        trigger: int,
        defaults: Mapping[str, Any],
        path: str,
    ) -> tuple[list[int], list[int]]:
        raise NotImplementedError

    def to_workflow(self, *, name: str | None = None, **options: Any) -> workflow_pb2.WorkflowSpec:
        """This canvas compiled into a WorkflowSpec (what `apply_async`
        submits). `options` (queue, priority, countdown, ... and
        idempotency_key) are the workflow's: the defaults of every node."""
        return compile_workflow(self, name=name, **options)

    def _is_group(self) -> bool:
        return False

    # --- submitting ------------------------------------------------------------------

    def _find_app(self) -> Conveyor | None:
        if self.app is not None:
            return self.app
        for child in self._children():
            found = child._find_app()
            if found is not None:
                return found
        return None

    def _children(self) -> Iterable[Canvas]:
        return [*self._links, *self._errbacks]

    def _resolve_app(self) -> Conveyor:
        from conveyor.app import current_app  # noqa: PLC0415 - app imports this module

        return self._find_app() or current_app()

    def delay(self, *args: Any, **kwargs: Any) -> WorkflowResult | AsyncResult | EagerResult:
        """`apply_async(args, kwargs)`."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Submits the canvas as one workflow and returns its handle: a
        `GroupResult` when the result is a list (a group, or a canvas with
        several output tasks), else a `WorkflowResult`. `args` are prepended to
        the first task's arguments (every header task of a group or chord),
        `kwargs` merged there. `options` (queue, priority, countdown, ...)
        are the defaults of every task; `idempotency_key` is the workflow's;
        `link`/`link_error` add callbacks. In eager mode the workflow runs
        here, at once."""
        element = self._with_call_args(args, kwargs)
        element = _add_callbacks(element, options)
        app = element._resolve_app()
        if app.eager:
            return element._run_eager(app, options, propagate=bool(app.conf.get("task_eager_propagates")))
        return _submit(app, element, options)

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Runs the canvas here and now, as eager mode does, and returns its
        handle (Celery's `apply`). Every task must be registered in the app."""
        element = _add_callbacks(self._with_call_args(args, kwargs), options)
        return element._run_eager(element._resolve_app(), options, propagate=False)

    def _run_eager(self, app: Conveyor, options: Mapping[str, Any], propagate: bool) -> Any:
        from conveyor._eager import run_workflow  # noqa: PLC0415
        from conveyor.result import handle_for  # noqa: PLC0415

        spec = compile_workflow(self, app=app, **options)
        handlers = {}
        for node in spec.nodes:
            task = app.tasks.get(node.task.name)
            if task is None:
                raise LookupError(
                    f"eager mode runs workflows in this process, and task {node.task.name!r} is not "
                    f"registered in this app: register it (@app.task(name={node.task.name!r})) or turn "
                    "eager mode off"
                )
            handlers[node.task.name] = task.handler()
        workflow = run_workflow(spec, handlers)
        handle = handle_for(self, workflow.id, [node.task.id for node in workflow.nodes], spec, app=app, local=workflow)
        if propagate and workflow.state == workflow_pb2.WORKFLOW_STATE_FAILED:
            handle.get()
        return handle


def _add_callbacks(element: Canvas, options: dict[str, Any]) -> Canvas:
    """Celery's `apply_async(link=..., link_error=...)`: a copy with them."""
    link = options.pop("link", None)
    link_error = options.pop("link_error", None)
    if link is None and link_error is None:
        return element
    element = element._copy()
    for callback in link if isinstance(link, (list, tuple)) else [link] if link is not None else []:
        element.link(callback)
    for errback in link_error if isinstance(link_error, (list, tuple)) else [link_error] if link_error is not None else []:
        element.link_error(errback)
    return element


def _submit(app: Conveyor, element: Canvas, options: Mapping[str, Any]) -> WorkflowResult:
    from conveyor.result import handle_for  # noqa: PLC0415

    spec = compile_workflow(element, app=app, **options)
    response = app.client.submit_workflow(spec)
    return handle_for(element, response.workflow_id, list(response.task_ids), spec, app=app)


def compile_workflow(
    element: Canvas,
    *,
    name: str | None = None,
    idempotency_key: str | None = None,
    app: Conveyor | None = None,
    **options: Any,
) -> workflow_pb2.WorkflowSpec:
    """The WorkflowSpec of a canvas element: its nodes, its outputs (the
    element's exits; a list for a group or several exits), `name` (default:
    the element's `display`), the workflow's `options` (defaults of every
    node: queue, priority, countdown, ...) and `idempotency_key`. The app
    (`app`, else the first one a signature of the canvas has) routes each
    node as `send_task` does (`conf.task_routes`, `task_default_queue`),
    under the node's own options and the workflow's. Raises ValueError for
    an empty chain, group or chord header, a chord without a body, a node
    idempotency key, or more than MAX_NODES nodes."""
    element = _element(element, "a workflow")
    app = app or element._find_app()
    workflow_options = checked_options(options)
    compiler = _Compiler(app.route if app is not None else None, workflow_options)
    exits, _ = element._compile(compiler, [], _NONE, _ALL_SUCCEEDED, {}, "")
    spec = workflow_pb2.WorkflowSpec(
        nodes=compiler.nodes,
        name=_clip(name if name is not None else element.display),
        outputs=exits,
        output_list=element._is_group() or len(exits) > 1,
    )
    if workflow_options:
        built = _codec.build_spec("workflow", None, None, **workflow_options)
        if built.HasField("options"):
            spec.options.CopyFrom(built.options)
    if idempotency_key is not None:
        spec.idempotency_key = str(idempotency_key)
    return spec


# --- the elements ------------------------------------------------------------------------


class Signature(Canvas):
    """A task name with arguments and options bound (`add.s(2)`,
    `add.si(2, 3)`, `signature("add", args=[2])`): submit it alone
    (`delay`, `apply_async`, `submit_many`) or as part of a canvas."""

    # The registered task (`@app.task`) this signature was made from
    # (`task.s()`, `.si()`, `.signature()`), if any: its function's
    # parameters are checked when the canvas compiles. None for a signature
    # by name only (`signature("add")`), which is not checked.
    _task: Task | None = None

    def __init__(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        app: Conveyor | None = None,
        immutable: bool = False,
    ):
        if not isinstance(name, str) or not name:
            raise TypeError(f"a signature needs a task name (a non-empty str), not {name!r}")
        if isinstance(args, (str, bytes)):
            raise TypeError("args must be a list or tuple of arguments, not a string")
        super().__init__(options, app=app)
        self.name = name
        self.args = tuple(args or ())
        self.kwargs = dict(kwargs or {})
        self.immutable = bool(immutable)

    @property
    def task(self) -> str:
        """The task name (Celery's `sig.task`)."""
        return self.name

    def _of_task(self, task: Task) -> Signature:
        """This signature, made from the registered `task` (see `_task`)."""
        self._task = task
        return self

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:  # type: ignore[override]
        """A copy with these options added (`immutable=True` makes it ignore
        the results of the tasks before it, as `.si()` does)."""
        clone = super().set(**options)
        assert isinstance(clone, Signature)
        if immutable is not None:
            clone.immutable = bool(immutable)
        return clone

    def set_immutable(self, immutable: bool) -> None:
        """Celery's: changes this signature in place."""
        self.immutable = bool(immutable)

    def clone(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A copy with `args` prepended, `kwargs` and `options` merged
        (an immutable signature keeps its arguments)."""
        clone = self._with_call_args(args, kwargs)
        clone.options = {**clone.options, **checked_options(options)}
        return clone

    def _copy(self) -> Signature:
        clone = super()._copy()
        assert isinstance(clone, Signature)
        clone.kwargs = dict(self.kwargs)
        return clone

    def _with_call_args(self, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None) -> Signature:
        clone = self._copy()
        assert isinstance(clone, Signature)
        if not self.immutable:
            clone.args = (*(args or ()), *self.args)
            clone.kwargs = {**self.kwargs, **(kwargs or {})}
        return clone

    def __or__(self, other: Any) -> Canvas:
        other = _element(other, "the right side of |")
        if isinstance(other, chain) and other._plain():
            return chain(self, *other.tasks)
        return chain(self, other)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Submits the task, with `args` prepended and `kwargs` and
        `options` merged (an immutable signature keeps its arguments), and
        returns its `AsyncResult`; with `link`/`link_error` callbacks it is a
        workflow (see `Canvas.apply_async`) and returns a `WorkflowResult`."""
        element = _add_callbacks(self._with_call_args(args, kwargs), options)
        assert isinstance(element, Signature)
        if element._links or element._errbacks:
            return Canvas.apply_async(element, **options)
        app = element._resolve_app()
        return app.send_task(element.name, element.args, element.kwargs, **{**element.options, **checked_options(options)})

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Runs the task here (eagerly); see `Canvas.apply`."""
        element = _add_callbacks(self._with_call_args(args, kwargs), options)
        assert isinstance(element, Signature)
        if element._links or element._errbacks:
            return Canvas.apply(element, **options)
        app = element._resolve_app()
        task = app.tasks.get(element.name)
        if task is None:
            raise LookupError(f"task {element.name!r} is not registered in this app: apply() runs it here")
        return task.apply(element.args, element.kwargs, **{**element.options, **checked_options(options)})

    def to_spec(self) -> task_pb2.TaskSpec:
        """The TaskSpec of this task submitted alone."""
        return _codec.build_spec(self.name, self.args, self.kwargs, **self.options)

    @property
    def display(self) -> str:
        return self.name

    def _build(
        self,
        compiler: _Compiler,
        parents: list[int],
        mode: int,
        trigger: int,
        defaults: Mapping[str, Any],
        path: str,
    ) -> tuple[list[int], list[int]]:
        if defaults.get("idempotency_key") is not None:
            raise ValueError(
                f"task {self.name!r} of a workflow has an idempotency_key: workflow nodes cannot have one; "
                "give idempotency_key to the whole workflow's apply_async instead"
            )
        spec = _codec.build_spec(self.name, self.args, self.kwargs, **{**compiler.route(self.name), **defaults})
        if not parents or self.immutable or trigger == _ON_FAILURE:
            node_input = _NONE
        else:
            node_input = mode
        node = workflow_pb2.WorkflowNode(
            task=spec, parents=parents, input=node_input, trigger=trigger, label=_clip(path)
        )
        index = compiler.add(node)
        if self._task is not None:
            _check_arity(self._task, self.args, self.kwargs, _ERRBACK if trigger == _ON_FAILURE else node_input,
                         index, node.label)
        return [index], [index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        mine = (self.name, self.args, self.kwargs, self.options, self.immutable, self._links, self._errbacks)
        theirs = (other.name, other.args, other.kwargs, other.options, other.immutable, other._links, other._errbacks)
        return mine == theirs

    __hash__ = None  # type: ignore[assignment] - mutable (link), as Celery's

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}{'!' if self.immutable else ''}({', '.join(parts)})"


# What a node gets before its own arguments (its input mode, or _ERRBACK
# for a link_error callback): how many, and in words.
_ERRBACK = -1
_INPUTS = {
    _NONE: (0, "no input"),
    _ONE: (1, "1 input (the result before it)"),
    _LIST: (1, "1 input (the list of the results before it)"),
    _ERRBACK: (2, "2 inputs (the failed task's id and its error)"),
}


def _check_arity(task: Task, args: tuple[Any, ...], kwargs: Mapping[str, Any], kind: int, index: int,
                 label: str) -> None:
    """Raises TypeError when the function of `task` (registered here) cannot
    take what workflow node `index` will call it with: its inputs from the
    DAG (`kind`, a node input mode or _ERRBACK: a parent's result or a
    chord's list is 1 argument, a link_error's failed task id and error 2,
    an immutable signature's none), then `args` and `kwargs`, after the
    task's context for `bind=True`, as the worker binds them. A function
    with *args, or whose parameters cannot be read, is not checked."""
    inputs, gets = _INPUTS[kind]
    try:
        parameters = inspect.signature(task.run)
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters.parameters.values()):
        return
    context = [None] if task.bind else []
    try:
        parameters.bind(*context, *([None] * inputs), *args, **dict.fromkeys(kwargs))
    except TypeError as exc:
        problem = str(exc)
    else:
        return
    listed = list(parameters.parameters.values())[len(context):]
    positional = sum(
        1 for p in listed if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )
    function = getattr(task.run, "__name__", task.name)
    shown = ", ".join(str(p) for p in listed)
    where = f"{label}, {task.name}" if label else task.name
    if args:
        gets += f" plus {len(args)} bound argument{'s' if len(args) != 1 else ''}"
    if kwargs:
        gets += f" and keyword argument{'s' if len(kwargs) != 1 else ''} {', '.join(kwargs)}"
    takes = f"takes {positional} positional argument{'s' if positional != 1 else ''}"
    if task.bind:
        takes += " after its task context (bind=True)"
    if inputs == 2:
        hint = (
            f"a link_error callback gets the failed task's id and error before its own arguments: "
            f"define it as {function}(task_id, error, ...)"
        )
    elif problem.startswith("too many positional"):
        hint = f"use {function}.si(...) to ignore the input, or drop bound arguments" if inputs else (
            "drop bound arguments"
        )
    elif problem.startswith("missing"):
        hint = "bind the missing arguments (.s(...)), give them defaults, or pass them to apply_async(args)"
    else:
        hint = "change the bound arguments or the function's parameters"
    raise TypeError(
        f"workflow node {index} ({where}) gets {gets}, but {function}({shown}) {takes}: {problem}; {hint}"
    )


def _members(tasks: tuple[Any, ...], what: str) -> list[Canvas]:
    """The members of `group(*tasks)`/`chain(*tasks)`: the arguments, or the
    items of one iterable (a list, a generator) given alone."""
    if len(tasks) == 1 and not isinstance(tasks[0], Canvas) and isinstance(tasks[0], Iterable):
        tasks = tuple(tasks[0])
    return [_element(task, f"a member of a {what}") for task in tasks]


class chain(Canvas):  # noqa: N801 - Celery's name
    """Tasks one after another, each given the result of the one before as
    its first argument (`chain(add.s(1, 2), add.s(3))`, or `add.s(1, 2) |
    add.s(3)`). A group followed by a task makes a chord."""

    def __init__(self, *tasks: Any, app: Conveyor | None = None, **options: Any):
        super().__init__(options, app=app)
        self.tasks: tuple[Canvas, ...] = tuple(_members(tasks, "chain"))

    def _with_call_args(self, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None) -> chain:
        clone = self._copy()
        assert isinstance(clone, chain)
        if self.tasks and (args or kwargs):
            clone.tasks = (self.tasks[0]._with_call_args(args, kwargs), *self.tasks[1:])
        return clone

    def __or__(self, other: Any) -> Canvas:
        other = _element(other, "the right side of |")
        if not self._plain():
            return chain(self, other)
        if isinstance(other, chain) and other._plain():
            return chain(*self.tasks, *other.tasks)
        return chain(*self.tasks, other)

    def _children(self) -> Iterable[Canvas]:
        return [*self.tasks, *super()._children()]

    @property
    def display(self) -> str:
        return f"chain({', '.join(task.display for task in self.tasks)})"

    def _build(
        self,
        compiler: _Compiler,
        parents: list[int],
        mode: int,
        trigger: int,
        defaults: Mapping[str, Any],
        path: str,
    ) -> tuple[list[int], list[int]]:
        if not self.tasks:
            raise ValueError("an empty chain has nothing to run: give it at least one signature")
        body: list[int] = []
        exits = parents
        for index, task in enumerate(self.tasks):
            exits, nodes = task._compile(compiler, parents, mode, trigger, defaults, _join(path, f"chain[{index}]"))
            body.extend(nodes)
            parents, mode, trigger = exits, _ONE if len(exits) == 1 else _LIST, _ALL_SUCCEEDED
        return exits, body

    def __repr__(self) -> str:
        return " | ".join(repr(task) for task in self.tasks) if self.tasks else "chain()"


class group(Canvas):  # noqa: N801 - Celery's name
    """Tasks run in parallel; the result is the list of their results, in
    declaration order (`group(add.s(i, i) for i in range(10))`). Followed by
    a task (`group(...) | xsum.s()`), a chord."""

    def __init__(self, *tasks: Any, app: Conveyor | None = None, **options: Any):
        super().__init__(options, app=app)
        self.tasks: tuple[Canvas, ...] = tuple(_members(tasks, "group"))

    def _with_call_args(self, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None) -> group:
        clone = self._copy()
        assert isinstance(clone, group)
        if args or kwargs:
            clone.tasks = tuple(task._with_call_args(args, kwargs) for task in self.tasks)
        return clone

    def __or__(self, other: Any) -> Canvas:
        other = _element(other, "the right side of |")
        if isinstance(other, group):
            return chain(self, other)
        return chord(self, other)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.tasks)

    def _children(self) -> Iterable[Canvas]:
        return [*self.tasks, *super()._children()]

    @property
    def display(self) -> str:
        return f"group({_runs([task.display for task in self.tasks])})"

    def _build(
        self,
        compiler: _Compiler,
        parents: list[int],
        mode: int,
        trigger: int,
        defaults: Mapping[str, Any],
        path: str,
        member_path: str = "group",
    ) -> tuple[list[int], list[int]]:
        if not self.tasks:
            raise ValueError(
                "an empty group has nothing to run (its result would be an empty list that no task "
                "computes): give it at least one signature, or skip it"
            )
        exits: list[int] = []
        body: list[int] = []
        for index, task in enumerate(self.tasks):
            task_exits, nodes = task._compile(
                compiler, parents, mode, trigger, defaults, _join(path, f"{member_path}[{index}]")
            )
            exits.extend(task_exits)
            body.extend(nodes)
        return exits, body

    def _is_group(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(task) for task in self.tasks)}])"


class chord(Canvas):  # noqa: N801 - Celery's name
    """A group (the header) whose results, as one list in declaration order,
    are the first argument of the body: `chord(header, body)`, or Celery's
    `chord(header)(body)` (submits at once). With `allow_errors=True` the
    body runs even when header tasks fail, and gets
    {"error": {"type", "message", "task_id"}} in their places."""

    def __init__(
        self,
        header: Any,
        body: Any = None,
        *,
        allow_errors: bool = False,
        app: Conveyor | None = None,
        **options: Any,
    ):
        super().__init__(options, app=app)
        if isinstance(header, group):
            self.header = header
        elif isinstance(header, Canvas):
            self.header = group(header)
        else:
            self.header = group(*_members((header,), "chord header"))
        self.body: Canvas | None = None if body is None else _element(body, "a chord body")
        self.allow_errors = bool(allow_errors)

    @property
    def tasks(self) -> tuple[Canvas, ...]:
        """The header's tasks (Celery's `chord.tasks`)."""
        return self.header.tasks

    def __call__(self, body: Any = None, **options: Any) -> Any:
        """Celery's `chord(header)(body)`: submits the chord with this body
        (or the one it has) and returns its handle."""
        element = self if body is None else self._with_body(_element(body, "a chord body"))
        if element.body is None:
            raise ValueError("a chord needs a body: chord(header)(body) or chord(header, body)")
        return element.apply_async(**options)

    def _with_body(self, body: Canvas) -> chord:
        clone = self._copy()
        assert isinstance(clone, chord)
        clone.body = body
        return clone

    def _with_call_args(self, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None) -> chord:
        clone = self._copy()
        assert isinstance(clone, chord)
        if args or kwargs:
            clone.header = self.header._with_call_args(args, kwargs)
        return clone

    def __or__(self, other: Any) -> Canvas:
        other = _element(other, "the right side of |")
        if self.body is None:
            return self._with_body(other)
        return chain(self, other)

    def _children(self) -> Iterable[Canvas]:
        return [self.header, *([self.body] if self.body is not None else []), *super()._children()]

    @property
    def display(self) -> str:
        header = _runs([task.display for task in self.header.tasks])
        body = self.body.display if self.body is not None else "?"
        return f"chord({header}, {body})"

    def _build(
        self,
        compiler: _Compiler,
        parents: list[int],
        mode: int,
        trigger: int,
        defaults: Mapping[str, Any],
        path: str,
    ) -> tuple[list[int], list[int]]:
        if self.body is None:
            raise ValueError("a chord needs a body: chord(header, body), or chord(header)(body) to submit it")
        if not self.header.tasks:
            raise ValueError(
                "a chord with an empty header would call its body with nothing to wait for: give the "
                "header at least one signature"
            )
        header = self.header
        header_defaults = _merge(defaults, header.options)
        header_exits, header_body = header._build(
            compiler, parents, mode, trigger, header_defaults, path, member_path="chord.header"
        )
        # The header group's own callbacks, as for any element.
        for index, callback in enumerate(header._links):
            callback._compile(compiler, header_exits, _ONE if len(header_exits) == 1 else _LIST, _ALL_SUCCEEDED,
                              defaults, _join(path, f"chord.header.link[{index}]"))
        for index, errback in enumerate(header._errbacks):
            errback._compile(compiler, header_body, _NONE, _ON_FAILURE, defaults,
                             _join(path, f"chord.header.link_error[{index}]"))
        body_trigger = _ALL_DONE if self.allow_errors else _ALL_SUCCEEDED
        exits, body_nodes = self.body._compile(compiler, header_exits, _LIST, body_trigger, defaults, _join(path, "chord.body"))
        return exits, header_body + body_nodes

    def __repr__(self) -> str:
        return f"chord({self.header.tasks!r}, {self.body!r})"


class chunks(group):  # noqa: N801 - Celery's name
    """`chunks(add, [(1, 2), (3, 4), ...], 10)`: the task once per item (each
    item's elements are its arguments), as a group; its handle's `get()`
    returns the results in chunks of `n`, a list of lists, as Celery's.
    (Each item is its own task: inside a chain or chord, the next step
    gets the flat list.)"""

    def __init__(self, task: Any, items: Iterable[Iterable[Any]], n: int, **options: Any):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"chunks needs a chunk size n >= 1, not {n!r}")
        template = _template(task)
        signatures = [template.clone(tuple(item)) for item in items]
        super().__init__(signatures, app=template.app, **options)
        self.n = n
        self.chunk_sizes = [min(n, len(signatures) - start) for start in range(0, len(signatures), n)]

    @property
    def display(self) -> str:
        name = self.tasks[0].display if self.tasks else "?"
        return f"chunks({name} x{len(self.tasks)}, {self.n})"


def starmap(task: Any, items: Iterable[Iterable[Any]], **options: Any) -> group:
    """`starmap(add, [(1, 2), (3, 4)])`: a group of the task once per item,
    the item's elements as its arguments (Celery's `task.starmap`)."""
    template = _template(task)
    return group(*[template.clone(tuple(item)) for item in items], app=template.app, **options)


def _template(task: Any) -> Signature:
    """A signature for `chunks`/`starmap`: a registered task, a signature
    (its arguments come after each item's) or a task name."""
    if isinstance(task, Signature):
        return task
    if isinstance(task, str):
        return Signature(task)
    make = getattr(task, "s", None)
    if callable(make):
        made = make()
        if isinstance(made, Signature):
            return made
    raise TypeError(f"give a task, a signature or a task name, not {task!r}")


def signature(
    varies: Any,
    args: Iterable[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    app: Conveyor | None = None,
    immutable: bool = False,
    **more_options: Any,
) -> Signature:
    """Celery's `signature("tasks.add", args=(2, 2), kwargs={}, options={...})`:
    a `Signature` by task name (of any language); a Signature passes
    through, a mapping {task, args, kwargs, options, immutable} (Celery's
    dict form) is read. `options` and `more_options` are merged."""
    if isinstance(varies, Signature):
        return varies
    if isinstance(varies, Mapping):
        data = dict(varies)
        name = data.get("task") or data.get("name")
        return Signature(
            name,
            data.get("args"),
            data.get("kwargs"),
            {**(data.get("options") or {}), **(options or {}), **more_options},
            app=app,
            immutable=bool(data.get("immutable", False)) or immutable,
        )
    return Signature(varies, args, kwargs, {**(options or {}), **more_options}, app=app, immutable=immutable)


def maybe_signature(value: Any, app: Conveyor | None = None) -> Canvas | None:
    """Celery's: None stays None, a canvas element passes through, a
    mapping becomes a `Signature`."""
    if value is None or isinstance(value, Canvas):
        return value
    return signature(value, app=app)
