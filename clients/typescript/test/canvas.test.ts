// Unit tests of workflows without a server: how a canvas (sig, si, chain,
// group, chord, link, linkError) compiles into the WorkflowSpec's DAG, per
// the contract every SDK follows, and the errors a failed node gives.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { AssignmentSchema } from "../src/gen/conveyor/v1/dispatch_service_pb.js";
import { TaskErrorSchema, TaskSchema } from "../src/gen/conveyor/v1/task_pb.js";
import { unsuccessfulTaskError } from "../src/errors.js";
import {
  Chain,
  Chord,
  FailureReason,
  Group,
  NodeInput,
  NodeTrigger,
  Signature,
  TaskContext,
  TaskFailedError,
  TaskNotSucceededError,
  TaskState,
  WorkflowHandle,
  WorkflowState,
  buildWorkflowSpec,
  chain,
  chord,
  fromPayload,
  group,
  isCanvas,
  isWorkflowTerminal,
  si,
  sig,
  starmap,
  workflowStateName,
} from "../src/index.js";
import type { Canvas, Client, WorkflowOptions, WorkflowSpec } from "../src/index.js";

/** One node in a compact form: "name(args) <- parents input trigger". */
interface Row {
  name: string;
  args: unknown[];
  parents: number[];
  input: string;
  trigger: string;
  label: string;
}

function rows(spec: WorkflowSpec): Row[] {
  return spec.nodes.map((node) => ({
    name: node.task!.name,
    args: node.task!.args.map((payload) => fromPayload(payload)),
    parents: node.parents,
    input: NodeInput[node.input]!,
    trigger: NodeTrigger[node.trigger]!,
    label: node.label,
  }));
}

/** Parents, input and trigger of each node, by name: the DAG's shape. */
function shape(canvas: Canvas, options?: WorkflowOptions): { nodes: string[]; outputs: number[]; outputList: boolean } {
  const spec = buildWorkflowSpec(canvas, options);
  return {
    nodes: rows(spec).map((row) => {
      const trigger = row.trigger === "UNSPECIFIED" ? "" : ` ${row.trigger}`;
      return `${row.name} <- [${row.parents.join(",")}] ${row.input}${trigger}`;
    }),
    outputs: spec.outputs,
    outputList: spec.outputList,
  };
}

describe("canvas compilation", () => {
  test("a signature is one node without parents; its args and options go into its task", () => {
    const spec = buildWorkflowSpec(sig("add", [2, 3], { queue: "math", priority: 7, maxRetries: 2, kwargs: { scale: 2 } }));
    assert.equal(spec.nodes.length, 1);
    const node = spec.nodes[0]!;
    assert.deepEqual(node.parents, []);
    assert.equal(node.input, NodeInput.NONE);
    assert.equal(node.trigger, NodeTrigger.UNSPECIFIED);
    assert.equal(node.label, "");
    assert.equal(node.task!.name, "add");
    assert.equal(node.task!.idempotencyKey, "");
    assert.deepEqual(node.task!.args.map((payload) => fromPayload(payload)), [2, 3]);
    assert.equal(fromPayload(node.task!.kwargs["scale"]!), 2);
    assert.equal(node.task!.options?.queue, "math");
    assert.equal(node.task!.options?.priority, 7);
    assert.equal(node.task!.options?.retry?.maxRetries, 2);
    assert.deepEqual(spec.outputs, [0]);
    assert.equal(spec.outputList, false);
    assert.equal(spec.name, "add");
    assert.equal(spec.options, undefined);
  });

  test("a chain passes each result to the next task (ONE); its output is the last task", () => {
    const spec = buildWorkflowSpec(chain(sig("add", [2, 2]), sig("add", [4]), sig("mul", [8])));
    assert.deepEqual(rows(spec), [
      { name: "add", args: [2, 2], parents: [], input: "NONE", trigger: "UNSPECIFIED", label: "chain[0]" },
      { name: "add", args: [4], parents: [0], input: "ONE", trigger: "UNSPECIFIED", label: "chain[1]" },
      { name: "mul", args: [8], parents: [1], input: "ONE", trigger: "UNSPECIFIED", label: "chain[2]" },
    ]);
    assert.deepEqual(spec.outputs, [2]);
    assert.equal(spec.outputList, false);
    assert.equal(spec.name, "chain(add x2, mul)");
  });

  test("a group's tasks have the same parents; its outputs are all of them, as a list", () => {
    assert.deepEqual(shape(group(sig("a"), sig("b"), sig("c"))), {
      nodes: ["a <- [] NONE", "b <- [] NONE", "c <- [] NONE"],
      outputs: [0, 1, 2],
      outputList: true,
    });
    assert.deepEqual(shape(group(sig("only"))), { nodes: ["only <- [] NONE"], outputs: [0], outputList: true });
    // An array, or any iterable, works as well as arguments.
    assert.deepEqual(shape(group([sig("a"), sig("b")])).outputs, [0, 1]);
    assert.deepEqual(shape(chain(new Set([sig("a"), sig("b")]))).nodes, ["a <- [] NONE", "b <- [0] ONE"]);
  });

  test("a chain of groups becomes chords: each group's tasks wait for the whole group before (LIST)", () => {
    const canvas = chain(group(sig("a"), sig("b")), group(sig("c"), sig("d")), sig("e"));
    assert.deepEqual(shape(canvas), {
      nodes: ["a <- [] NONE", "b <- [] NONE", "c <- [0,1] LIST", "d <- [0,1] LIST", "e <- [2,3] LIST"],
      outputs: [4],
      outputList: false,
    });
    // A chain that ends with a group has the group's outputs, as a list.
    assert.deepEqual(shape(chain(sig("a"), group(sig("b"), sig("c")))), {
      nodes: ["a <- [] NONE", "b <- [0] ONE", "c <- [0] ONE"],
      outputs: [1, 2],
      outputList: true,
    });
  });

  test("a group of chains: each chain runs on its own; the outputs are their last tasks", () => {
    const canvas = group(chain(sig("a"), sig("b")), chain(sig("c"), sig("d"), sig("e")));
    assert.deepEqual(shape(canvas), {
      nodes: ["a <- [] NONE", "b <- [0] ONE", "c <- [] NONE", "d <- [2] ONE", "e <- [3] ONE"],
      outputs: [1, 4],
      outputList: true,
    });
    // Nested groups are flattened into one list.
    assert.deepEqual(shape(group(sig("a"), group(sig("b"), sig("c")))).outputs, [0, 1, 2]);
    // A group after a task: every member gets the task's result.
    const labels = rows(buildWorkflowSpec(group(chain(sig("a"), sig("b")), sig("c")))).map((row) => row.label);
    assert.deepEqual(labels, ["group[0].chain[0]", "group[0].chain[1]", "group[1]"]);
  });

  test("a chord's body gets the header's results as one list (LIST), even for one header task", () => {
    const spec = buildWorkflowSpec(chord([sig("add", [1, 1]), sig("add", [2, 2])], sig("xsum")));
    assert.deepEqual(rows(spec).map((row) => [row.name, row.parents, row.input, row.label]), [
      ["add", [], "NONE", "chord.header[0]"],
      ["add", [], "NONE", "chord.header[1]"],
      ["xsum", [0, 1], "LIST", "chord.body"],
    ]);
    assert.deepEqual(spec.outputs, [2]);
    assert.equal(spec.outputList, false);
    assert.equal(spec.name, "chord(add x2, xsum)");
    assert.deepEqual(shape(chord([sig("one")], sig("body"))).nodes, ["one <- [] NONE", "body <- [0] LIST"]);
    // The header may be given as a group.
    assert.deepEqual(shape(chord(group(sig("a"), sig("b")), sig("c"))).nodes, ["a <- [] NONE", "b <- [] NONE", "c <- [0,1] LIST"]);
    const ten = chord(starmap("add", Array.from({ length: 10 }, (_, i) => [i, i])), sig("tsum"));
    assert.equal(buildWorkflowSpec(ten).name, "chord(add x10, tsum)");
  });

  test("a chord with allowErrors runs its body when all headers are done (ALL_DONE); only the body's entry nodes", () => {
    assert.deepEqual(shape(chord([sig("a"), sig("b")], sig("c"), { allowErrors: true })).nodes, [
      "a <- [] NONE",
      "b <- [] NONE",
      "c <- [0,1] LIST ALL_DONE",
    ]);
    assert.deepEqual(shape(chord([sig("a"), sig("b")], chain(sig("c"), sig("d")), { allowErrors: true })).nodes, [
      "a <- [] NONE",
      "b <- [] NONE",
      "c <- [0,1] LIST ALL_DONE",
      "d <- [2] ONE",
    ]);
  });

  test("a chord inside a chain: the header gets the task before, the task after gets the body's result", () => {
    const canvas = chain(sig("a"), chord([sig("b"), sig("c")], sig("d")), sig("e"));
    assert.deepEqual(shape(canvas), {
      nodes: ["a <- [] NONE", "b <- [0] ONE", "c <- [0] ONE", "d <- [1,2] LIST", "e <- [3] ONE"],
      outputs: [4],
      outputList: false,
    });
    const labels = rows(buildWorkflowSpec(canvas)).map((row) => row.label);
    assert.deepEqual(labels, ["chain[0]", "chain[1].chord.header[0]", "chain[1].chord.header[1]", "chain[1].chord.body", "chain[2]"]);
  });

  test("a chord of chords: the outer body waits for the inner bodies", () => {
    const canvas = chord([chord([sig("a"), sig("b")], sig("c")), chord([sig("d"), sig("e")], sig("f"))], sig("g"));
    assert.deepEqual(shape(canvas), {
      nodes: [
        "a <- [] NONE",
        "b <- [] NONE",
        "c <- [0,1] LIST",
        "d <- [] NONE",
        "e <- [] NONE",
        "f <- [3,4] LIST",
        "g <- [2,5] LIST",
      ],
      outputs: [6],
      outputList: false,
    });
    // A chord whose body is a group has several outputs: a list.
    assert.deepEqual(shape(chord([sig("a")], group(sig("b"), sig("c")))), {
      nodes: ["a <- [] NONE", "b <- [0] LIST", "c <- [0] LIST"],
      outputs: [1, 2],
      outputList: true,
    });
  });

  test("link: the callback gets the element's result (ONE) or results (LIST), and is no output", () => {
    assert.deepEqual(shape(sig("a").link(sig("log"))), { nodes: ["a <- [] NONE", "log <- [0] ONE"], outputs: [0], outputList: false });
    assert.deepEqual(shape(group(sig("a"), sig("b")).link(sig("log"))), {
      nodes: ["a <- [] NONE", "b <- [] NONE", "log <- [0,1] LIST"],
      outputs: [0, 1],
      outputList: true,
    });
    // A linked step inside a chain: the next step still follows the step, not its callback.
    assert.deepEqual(shape(chain(sig("a").link(sig("x")), sig("b"))), {
      nodes: ["a <- [] NONE", "x <- [0] ONE", "b <- [0] ONE"],
      outputs: [2],
      outputList: false,
    });
    // A chain's callback follows its last task; several callbacks, in order.
    assert.deepEqual(shape(chain(sig("a"), sig("b")).link(sig("x")).link(si("y"))).nodes, [
      "a <- [] NONE",
      "b <- [0] ONE",
      "x <- [1] ONE",
      "y <- [1] NONE",
    ]);
    // A callback may itself be a canvas.
    assert.deepEqual(shape(sig("a").link(chain(sig("x"), sig("y")))).nodes, ["a <- [] NONE", "x <- [0] ONE", "y <- [1] ONE"]);
    assert.equal(buildWorkflowSpec(chain(sig("a"), sig("b").link(sig("x")))).nodes[2]!.label, "chain[1].link[0]");
  });

  test("linkError: the errback waits on every node of its element (ON_FAILURE), after its links", () => {
    assert.deepEqual(shape(sig("a").link(sig("ok")).linkError(sig("oops"))), {
      nodes: ["a <- [] NONE", "ok <- [0] ONE", "oops <- [0] NONE ON_FAILURE"],
      outputs: [0],
      outputList: false,
    });
    // Every node, not only the exits; the element's own links are not among them.
    assert.deepEqual(shape(chain(sig("a"), group(sig("b"), sig("c")), sig("d")).link(sig("ok")).linkError(sig("oops", ["ctx"]))).nodes, [
      "a <- [] NONE",
      "b <- [0] ONE",
      "c <- [0] ONE",
      "d <- [1,2] LIST",
      "ok <- [3] ONE",
      "oops <- [0,1,2,3] NONE ON_FAILURE",
    ]);
    // Inside a chain, an errback only watches its own element; the chain goes on from the element's exits.
    assert.deepEqual(shape(chain(sig("a").linkError(sig("e1")), sig("b"))), {
      nodes: ["a <- [] NONE", "e1 <- [0] NONE ON_FAILURE", "b <- [0] ONE"],
      outputs: [2],
      outputList: false,
    });
    // Nested callbacks are nodes of the outer element.
    assert.deepEqual(shape(group(sig("a").link(sig("x")), sig("b")).linkError(sig("e"))).nodes, [
      "a <- [] NONE",
      "x <- [0] ONE",
      "b <- [] NONE",
      "e <- [0,1,2] NONE ON_FAILURE",
    ]);
    // A chord's errback covers header and body; the header group's own errback only the header.
    assert.deepEqual(shape(chord(group(sig("a"), sig("b")).linkError(sig("eh")), sig("c")).linkError(sig("e"))).nodes, [
      "a <- [] NONE",
      "b <- [] NONE",
      "eh <- [0,1] NONE ON_FAILURE",
      "c <- [0,1] LIST",
      "e <- [0,1,2,3] NONE ON_FAILURE",
    ]);
    const spec = buildWorkflowSpec(chain(sig("a"), sig("b")).linkError(sig("oops", [1])));
    assert.equal(spec.nodes[2]!.label, "link_error[0]");
    assert.deepEqual(spec.nodes[2]!.task!.args.map((payload) => fromPayload(payload)), [1]);
  });

  test("immutable signatures (si, set({ immutable })) take no input", () => {
    assert.deepEqual(shape(chain(sig("a"), si("b", [1]), sig("c"))).nodes, ["a <- [] NONE", "b <- [0] NONE", "c <- [1] ONE"]);
    assert.deepEqual(shape(chord([sig("a"), sig("b")], si("done"))).nodes, ["a <- [] NONE", "b <- [] NONE", "done <- [0,1] NONE"]);
    const frozen = sig("b", [1], { queue: "q" }).set({ immutable: true });
    assert.equal(frozen.immutable, true);
    assert.deepEqual(shape(chain(sig("a"), frozen)).nodes, ["a <- [] NONE", "b <- [0] NONE"]);
    // `immutable` is the SDK's, not a task option.
    assert.equal(buildWorkflowSpec(chain(sig("a"), frozen)).nodes[1]!.task!.options?.queue, "q");
    assert.equal(si("x").immutable, true);
    assert.equal(sig("x").immutable, false);
  });

  test("empty chains, groups and chord headers are errors before anything is sent", () => {
    assert.throws(() => group(), { name: "RangeError", message: /empty group/ });
    assert.throws(() => group([]), { name: "RangeError", message: /empty group/ });
    assert.throws(() => chain(), { name: "RangeError", message: /empty chain/ });
    assert.throws(() => chord([], sig("body")), { name: "RangeError", message: /empty group/ });
    assert.throws(() => starmap("add", []), /empty group/);
    assert.throws(() => sig(""), TypeError);
    assert.throws(() => group(sig("a"), "b" as unknown as Canvas), { name: "TypeError", message: /group element 1 is not a workflow element/ });
    assert.throws(() => buildWorkflowSpec({} as Canvas), /not a workflow element/);
    assert.throws(() => sig("a").link({} as Canvas), /link callback/);
  });

  test("a node cannot have an idempotency key; the workflow can", () => {
    assert.throws(() => sig("a", [], { idempotencyKey: "k" } as never), /give the workflow one/);
    assert.equal(buildWorkflowSpec(sig("a"), { idempotencyKey: "order-42" }).idempotencyKey, "order-42");
  });

  test("the workflow's options are defaults for every node; its name can be given", () => {
    const spec = buildWorkflowSpec(chain(sig("a", [], { priority: 9 }), sig("b")), {
      queue: "wf",
      priority: 3,
      maxRetries: 4,
      headers: { tenant: "t1" },
      name: "my pipeline",
      traceContext: { traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" },
    });
    assert.equal(spec.name, "my pipeline");
    assert.equal(spec.options?.queue, "wf");
    assert.equal(spec.options?.priority, 3);
    assert.equal(spec.options?.retry?.maxRetries, 4);
    assert.equal(spec.options?.headers["tenant"], "t1");
    assert.equal(spec.traceContext?.traceparent, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    assert.equal(spec.nodes[0]!.task!.options?.priority, 9);
    assert.equal(spec.nodes[1]!.task!.options, undefined);
  });

  test("names describe the canvas and fit in 200 bytes", () => {
    assert.equal(buildWorkflowSpec(group(chain(sig("a"), sig("b")), sig("c"), sig("c"))).name, "group(chain(a, b), c x2)");
    const long = buildWorkflowSpec(group(Array.from({ length: 100 }, (_, i) => sig(`täsk-${i}`))));
    assert.ok(Buffer.byteLength(long.name) <= 200, long.name);
    assert.ok(long.name.startsWith("group(täsk-0, täsk-1") && long.name.endsWith("..."));
    const deep = buildWorkflowSpec(Array.from({ length: 40 }, () => 0).reduce<Canvas>((inner) => chain(sig("x"), inner), sig("leaf")));
    const leaf = deep.nodes.at(-1)!;
    assert.ok(leaf.label.length <= 200 && leaf.label.startsWith("...") && leaf.label.endsWith("chain[1]"), leaf.label);
  });

  test("elements are immutable: link, linkError and set return copies", () => {
    const base = sig("a", [1]);
    const linked = base.link(sig("b"));
    assert.equal(base.links.length, 0);
    assert.equal(linked.links.length, 1);
    assert.ok(linked instanceof Signature);
    const c = chain(sig("a"), sig("b"));
    const withErrback = c.linkError(sig("e"));
    assert.ok(withErrback instanceof Chain);
    assert.equal(c.errbacks.length, 0);
    assert.ok(group(sig("a")).link(sig("b")) instanceof Group);
    assert.ok(chord([sig("a")], sig("b"), { allowErrors: true }).link(sig("c")) instanceof Chord);
    assert.equal(chord([sig("a")], sig("b"), { allowErrors: true }).link(sig("c")).allowErrors, true);
    assert.equal(base.set({ queue: "q" }).options.queue, "q");
    assert.equal(base.options.queue, undefined);
    assert.ok(isCanvas(base) && isCanvas(c) && !isCanvas({ kind: "signature" }));
    assert.equal(String(chain(sig("a"), group(sig("b"), sig("b")))), "chain(a, group(b x2))");
  });

  test("starmap is a group of one task per argument list", () => {
    const spec = buildWorkflowSpec(starmap("add", [[1, 2], [3, 4]], { queue: "math" }));
    assert.deepEqual(rows(spec).map((row) => [row.name, row.args]), [["add", [1, 2]], ["add", [3, 4]]]);
    assert.equal(spec.nodes[1]!.task!.options?.queue, "math");
    assert.equal(spec.outputList, true);
  });

  test("an argument JSON cannot encode names its node's task", () => {
    assert.throws(() => buildWorkflowSpec(chain(sig("a"), sig("b", [10n]))), { name: "PayloadError", message: /positional argument 0 of task "b"/ });
  });
});

describe("workflow results and errors", () => {
  test("a failed node's TaskFailedError names its workflow, node, reason and cause", () => {
    const task = create(TaskSchema, {
      id: "t2",
      state: TaskState.FAILED,
      workflowId: "w1",
      workflowNode: 2,
      error: create(TaskErrorSchema, {
        type: "DependencyFailed",
        message: "a node it depends on failed",
        reason: FailureReason.DEPENDENCY_FAILED,
        causeTaskId: "t1",
      }),
    });
    const error = unsuccessfulTaskError(task);
    assert.ok(error instanceof TaskFailedError);
    assert.equal(error.causeTaskId, "t1");
    assert.equal(error.reason, FailureReason.DEPENDENCY_FAILED);
    assert.equal(error.workflowId, "w1");
    assert.equal(error.workflowNode, 2);
    assert.equal(String(error), "TaskFailedError: task t2 (node 2 of workflow w1) failed: DependencyFailed: a node it depends on failed (caused by task t1)");
    // A task of its own has none of these.
    const plain = unsuccessfulTaskError(create(TaskSchema, { id: "t", state: TaskState.FAILED, error: create(TaskErrorSchema, { type: "E", message: "m" }) }));
    assert.ok(plain instanceof TaskFailedError);
    assert.equal(plain.causeTaskId, undefined);
    assert.equal(plain.workflowId, undefined);
    assert.equal(plain.workflowNode, undefined);
    assert.equal(String(plain), "TaskFailedError: task t failed: E: m");
    const cancelled = new TaskNotSucceededError("w", TaskState.CANCELLED, "w");
    assert.equal(cancelled.message, "workflow w did not succeed: it ended CANCELLED");
  });

  test("workflow states; a handle maps outputs to task handles", () => {
    assert.ok(isWorkflowTerminal(WorkflowState.SUCCEEDED) && isWorkflowTerminal(WorkflowState.FAILED) && isWorkflowTerminal(WorkflowState.CANCELLED));
    assert.ok(!isWorkflowTerminal(WorkflowState.RUNNING));
    assert.equal(workflowStateName(WorkflowState.CANCELLED), "CANCELLED");
    const handle = new WorkflowHandle({} as Client, "w", ["t0", "t1", "t2"], [2], { outputList: false });
    assert.deepEqual(handle.outputs.map((output) => output.id), ["t2"]);
    assert.equal(handle.node(0).id, "t0");
    assert.throws(() => handle.node(3), RangeError);
    assert.equal(String(handle), "w");
  });

  test("the task context exposes the workflow id (Celery's root_id)", () => {
    const inWorkflow = new TaskContext(create(AssignmentSchema, { taskId: "t", name: "n", workflowId: "w" }));
    assert.equal(inWorkflow.workflowId, "w");
    assert.equal(new TaskContext(create(AssignmentSchema, { taskId: "t", name: "n" })).workflowId, undefined);
  });
});
