// Workflows, Celery's canvas: signatures, chains, groups and chords (with
// link and linkError callbacks), and their compilation into the DAG the
// server runs (a WorkflowSpec). Every SDK compiles a canvas with the same
// algorithm, so the same canvas gives the same DAG in every language.

import { create } from "@bufbuild/protobuf";
import { TraceContextSchema } from "./gen/conveyor/v1/task_pb.js";
import { NodeInput, NodeTrigger, WorkflowNodeSchema, WorkflowSpecSchema } from "./gen/conveyor/v1/workflow_pb.js";
import type { WorkflowNode, WorkflowSpec } from "./gen/conveyor/v1/workflow_pb.js";
import { buildTaskOptions, buildTaskSpec } from "./spec.js";
import type { SubmitOptions } from "./spec.js";

/** Longest display name and node label the server accepts, in bytes. */
const MAX_LABEL_BYTES = 200;

/** Options of one signature: those of a task, less the idempotency key (the workflow has one). */
export interface SignatureOptions extends Omit<SubmitOptions, "idempotencyKey"> {
  /**
   * Take no input from the element before (Celery's `.si()`): the node runs
   * with its own arguments only.
   */
  immutable?: boolean;
}

/** Options of a whole workflow: defaults for every node's options, plus its name and idempotency key. */
export interface WorkflowOptions extends Omit<SubmitOptions, "kwargs"> {
  /** Display name (at most 200 bytes); default a description such as "chain(add, add, xsum)". */
  name?: string;
}

/** Options of a chord. */
export interface ChordOptions {
  /**
   * Run the body even when header tasks fail (trigger ALL_DONE): it then
   * receives a failed header's entry as `{"error": {"type", "message",
   * "task_id"}}`. Default false: a failed header fails the body.
   */
  allowErrors?: boolean;
}

/** Any element of a workflow. */
export type Canvas = Signature | Chain | Group | Chord;

/** What every element has: callbacks run after it succeeds (link) or once it fails (linkError). */
export abstract class CanvasElement {
  /** Callbacks that receive this element's result (Celery's `link`). */
  readonly links: readonly Canvas[];
  /** Callbacks run once, on the first failure of any of this element's tasks (Celery's `link_error`). */
  readonly errbacks: readonly Canvas[];

  protected constructor(links: readonly Canvas[], errbacks: readonly Canvas[]) {
    this.links = links;
    this.errbacks = errbacks;
  }

  /**
   * A copy of this element that also runs `callback` once it has succeeded,
   * with its result as first argument (the list of results when the element
   * has several exits, such as a group). The callback's result is not the
   * element's: the element's result is unchanged.
   */
  link(callback: Canvas): this {
    return this.withCallbacks([...this.links, requireCanvas(callback, "link callback")], this.errbacks);
  }

  /**
   * A copy of this element that runs `errback` once, when the first of its
   * tasks fails, with the failed task's id and its error (`{type, message,
   * traceback}`) as first two arguments, then the errback's own.
   */
  linkError(errback: Canvas): this {
    return this.withCallbacks(this.links, [...this.errbacks, requireCanvas(errback, "linkError callback")]);
  }

  /** The same element with these callbacks. */
  protected abstract withCallbacks(links: readonly Canvas[], errbacks: readonly Canvas[]): this;

  /** A short description, e.g. "chain(add, group(mul x3), xsum)". */
  abstract describe(): string;

  toString(): string {
    return this.describe();
  }
}

/** One task with its bound arguments and options (Celery's signature). Immutable: methods return copies. */
export class Signature extends CanvasElement {
  readonly kind = "signature";
  /** The task name. */
  readonly name: string;
  /** Bound positional arguments; inputs from the element before are prepended to them. */
  readonly args: readonly unknown[];
  /** Bound options (kwargs, queue, priority, retries, time limits, headers...). */
  readonly options: Readonly<SignatureOptions>;

  constructor(name: string, args: readonly unknown[] = [], options: SignatureOptions = {}, links: readonly Canvas[] = [], errbacks: readonly Canvas[] = []) {
    super(links, errbacks);
    if (typeof name !== "string" || name.length === 0) throw new TypeError("a signature needs a task name");
    if (!Array.isArray(args)) throw new TypeError(`the arguments of signature "${name}" must be an array`);
    if ((options as SubmitOptions).idempotencyKey !== undefined) {
      throw new TypeError(
        `signature "${name}" has an idempotency key: a workflow's nodes cannot have one; give the workflow one (submitWorkflow(canvas, { idempotencyKey }))`,
      );
    }
    this.name = name;
    this.args = [...args];
    this.options = { ...options };
  }

  /** True when the signature takes no input from the element before (Celery's `.si()`). */
  get immutable(): boolean {
    return this.options.immutable === true;
  }

  /** A copy with `options` merged over these (Celery's `.set()`); `set({ immutable: true })` makes it immutable. */
  set(options: SignatureOptions): Signature {
    return new Signature(this.name, this.args, { ...this.options, ...options }, this.links, this.errbacks);
  }

  protected override withCallbacks(links: readonly Canvas[], errbacks: readonly Canvas[]): this {
    return new Signature(this.name, this.args, this.options, links, errbacks) as this;
  }

  describe(): string {
    return this.name;
  }
}

/** Elements run one after the other, each receiving the result of the one before (Celery's chain). */
export class Chain extends CanvasElement {
  readonly kind = "chain";
  readonly tasks: readonly Canvas[];

  constructor(tasks: readonly Canvas[], links: readonly Canvas[] = [], errbacks: readonly Canvas[] = []) {
    super(links, errbacks);
    if (tasks.length === 0) throw new RangeError("chain() needs at least one element: an empty chain has no result");
    this.tasks = tasks.map((task, index) => requireCanvas(task, `chain element ${index}`));
  }

  protected override withCallbacks(links: readonly Canvas[], errbacks: readonly Canvas[]): this {
    return new Chain(this.tasks, links, errbacks) as this;
  }

  describe(): string {
    return `chain(${describeAll(this.tasks)})`;
  }
}

/** Elements run in parallel; the result is the list of their results, in order (Celery's group). */
export class Group extends CanvasElement {
  readonly kind = "group";
  readonly tasks: readonly Canvas[];

  constructor(tasks: readonly Canvas[], links: readonly Canvas[] = [], errbacks: readonly Canvas[] = []) {
    super(links, errbacks);
    if (tasks.length === 0) throw new RangeError("group() needs at least one element: an empty group has no result");
    this.tasks = tasks.map((task, index) => requireCanvas(task, `group element ${index}`));
  }

  protected override withCallbacks(links: readonly Canvas[], errbacks: readonly Canvas[]): this {
    return new Group(this.tasks, links, errbacks) as this;
  }

  describe(): string {
    return `group(${describeAll(this.tasks)})`;
  }
}

/** A group (the header) whose list of results, in order, feeds one body (Celery's chord). */
export class Chord extends CanvasElement {
  readonly kind = "chord";
  readonly header: Group;
  readonly body: Canvas;
  /** Whether the body runs even when header tasks fail. */
  readonly allowErrors: boolean;

  constructor(header: Group, body: Canvas, options: ChordOptions = {}, links: readonly Canvas[] = [], errbacks: readonly Canvas[] = []) {
    super(links, errbacks);
    if (!(header instanceof Group)) throw new TypeError("a chord's header must be a group");
    this.header = header;
    this.body = requireCanvas(body, "chord body");
    this.allowErrors = options.allowErrors === true;
  }

  protected override withCallbacks(links: readonly Canvas[], errbacks: readonly Canvas[]): this {
    return new Chord(this.header, this.body, { allowErrors: this.allowErrors }, links, errbacks) as this;
  }

  describe(): string {
    return `chord(${describeAll(this.header.tasks)}, ${this.body.describe()})`;
  }
}

/** True for a Signature, Chain, Group or Chord. */
export function isCanvas(value: unknown): value is Canvas {
  return value instanceof CanvasElement;
}

function requireCanvas(value: unknown, what: string): Canvas {
  if (!isCanvas(value)) {
    throw new TypeError(`${what} is not a workflow element: use sig(), si(), chain(), group() or chord()`);
  }
  return value;
}

/** Elements given as arguments, or as one array (or other iterable) of them. */
function elements(args: ReadonlyArray<Canvas | Iterable<Canvas>>): Canvas[] {
  if (args.length === 1 && !isCanvas(args[0]) && args[0] !== null && typeof args[0] === "object" && Symbol.iterator in args[0]) {
    return [...(args[0] as Iterable<Canvas>)];
  }
  return args as Canvas[];
}

/**
 * A signature: task `name` with bound `args` and `options` (Celery's
 * `add.s(2, 2)`). In a chain or chord, the inputs from the element before
 * are prepended to `args`: `sig("add", [2])` after a task returning 3 runs
 * add(3, 2).
 */
export function sig(name: string, args: readonly unknown[] = [], options: SignatureOptions = {}): Signature {
  return new Signature(name, args, options);
}

/** An immutable signature (Celery's `add.si(2, 2)`): it takes no input, only its own arguments. */
export function si(name: string, args: readonly unknown[] = [], options: SignatureOptions = {}): Signature {
  return new Signature(name, args, { ...options, immutable: true });
}

/**
 * Runs the elements one after the other; each receives the result of the
 * one before as first argument (the list of results after a group: a group
 * followed by a task is a chord). The chain's result is its last element's.
 * `chain(a, b, c)` or `chain([a, b, c])`.
 */
export function chain(...tasks: Array<Canvas | Iterable<Canvas>>): Chain {
  return new Chain(elements(tasks));
}

/**
 * Runs the elements in parallel; the result is the list of their results in
 * this order (a nested group's results are flattened into it).
 * `group(a, b)`, `group([a, b])` or `group(items.map((item) => sig("f", [item])))`.
 */
export function group(...tasks: Array<Canvas | Iterable<Canvas>>): Group {
  return new Group(elements(tasks));
}

/**
 * Runs the header elements in parallel, then `body` with the list of their
 * results (in header order) as first argument (Celery's `chord(header)(body)`).
 */
export function chord(header: Group | Iterable<Canvas>, body: Canvas, options: ChordOptions = {}): Chord {
  return new Chord(header instanceof Group ? header : group(header), body, options);
}

/**
 * One task per argument list, run in parallel: a group of `sig(name, args,
 * options)` (Celery's `starmap`, as separate tasks). The result is the list
 * of their results.
 */
export function starmap(name: string, argsList: Iterable<readonly unknown[]>, options: SignatureOptions = {}): Group {
  return new Group([...argsList].map((args) => new Signature(name, args, options)));
}

/** Descriptions of elements, repeated neighbours counted: "add x10, tsum". */
function describeAll(tasks: readonly Canvas[]): string {
  const parts: string[] = [];
  let previous: string | undefined;
  let count = 0;
  const flush = (): void => {
    if (previous !== undefined) parts.push(count > 1 ? `${previous} x${count}` : previous);
  };
  for (const task of tasks) {
    const description = task.describe();
    if (description === previous) {
      count += 1;
      continue;
    }
    flush();
    previous = description;
    count = 1;
  }
  flush();
  return parts.join(", ");
}

/** `text` cut to at most `max` UTF-8 bytes, ending with "..." when cut. */
function truncateUtf8(text: string, max: number): string {
  if (Buffer.byteLength(text) <= max) return text;
  let out = "";
  let bytes = 0;
  for (const char of text) {
    const size = Buffer.byteLength(char);
    if (bytes + size > max - 3) break;
    out += char;
    bytes += size;
  }
  return `${out}...`;
}

/** A node label: the path from the top element, e.g. "chain[1].chord.header[0]"; its end when too long. */
function label(path: string): string {
  return path.length <= MAX_LABEL_BYTES ? path : `...${path.slice(path.length - (MAX_LABEL_BYTES - 3))}`;
}

function join(path: string, segment: string): string {
  return path === "" ? segment : `${path}.${segment}`;
}

/**
 * The compiler: appends nodes and returns each element's exits (the nodes
 * whose results are its result). An element compiled with parents P, input
 * mode M and trigger T gives its entry nodes (those waiting on P) that input
 * and trigger.
 */
class Compiler {
  readonly nodes: WorkflowNode[] = [];

  compile(element: Canvas, parents: readonly number[], input: NodeInput, trigger: NodeTrigger, path: string): number[] {
    const start = this.nodes.length;
    let exits: number[];
    switch (element.kind) {
      case "signature":
        exits = [this.#signature(element, parents, input, trigger, path)];
        break;
      case "chain": {
        exits = this.compile(element.tasks[0]!, parents, input, trigger, join(path, "chain[0]"));
        for (let index = 1; index < element.tasks.length; index += 1) {
          const mode = exits.length === 1 ? NodeInput.ONE : NodeInput.LIST;
          exits = this.compile(element.tasks[index]!, exits, mode, NodeTrigger.UNSPECIFIED, join(path, `chain[${index}]`));
        }
        break;
      }
      case "group":
        exits = this.#members(element, parents, input, trigger, join(path, "group"));
        break;
      case "chord": {
        const headerPath = join(path, "chord.header");
        const headerStart = this.nodes.length;
        const headerExits = this.#members(element.header, parents, input, trigger, headerPath);
        this.#callbacks(element.header, headerStart, headerExits, headerPath);
        const bodyTrigger = element.allowErrors ? NodeTrigger.ALL_DONE : NodeTrigger.UNSPECIFIED;
        exits = this.compile(element.body, headerExits, NodeInput.LIST, bodyTrigger, join(path, "chord.body"));
        break;
      }
    }
    this.#callbacks(element, start, exits, path);
    return exits;
  }

  /** A group's elements, each with the same parents; their exits concatenated in order. */
  #members(group: Group, parents: readonly number[], input: NodeInput, trigger: NodeTrigger, path: string): number[] {
    const exits: number[] = [];
    group.tasks.forEach((task, index) => {
      exits.push(...this.compile(task, parents, input, trigger, `${path}[${index}]`));
    });
    return exits;
  }

  /**
   * The element's link callbacks (parents: its exits) and then its
   * errbacks (parents: every node compiled for it from `start`, trigger
   * ON_FAILURE). Neither is an exit.
   */
  #callbacks(element: Canvas, start: number, exits: readonly number[], path: string): void {
    const all = Array.from({ length: this.nodes.length - start }, (_, offset) => start + offset);
    element.links.forEach((callback, index) => {
      const mode = exits.length === 1 ? NodeInput.ONE : NodeInput.LIST;
      this.compile(callback, exits, mode, NodeTrigger.UNSPECIFIED, join(path, `link[${index}]`));
    });
    element.errbacks.forEach((errback, index) => {
      this.compile(errback, all, NodeInput.NONE, NodeTrigger.ON_FAILURE, join(path, `link_error[${index}]`));
    });
  }

  #signature(signature: Signature, parents: readonly number[], input: NodeInput, trigger: NodeTrigger, path: string): number {
    const { immutable: _immutable, ...options } = signature.options;
    const node = create(WorkflowNodeSchema, {
      task: buildTaskSpec(signature.name, signature.args, options),
      parents: [...parents],
      input: parents.length === 0 || signature.immutable ? NodeInput.NONE : input,
      trigger: parents.length === 0 ? NodeTrigger.UNSPECIFIED : trigger,
      label: label(path),
    });
    this.nodes.push(node);
    return this.nodes.length - 1;
  }
}

/**
 * Compiles a canvas into the WorkflowSpec SubmitWorkflow takes: its nodes,
 * and as outputs the top element's exits (a list when it is a group or has
 * several exits). `options` are the workflow's: defaults for every node's
 * options (a node's own win), its name and idempotency key. Throws
 * PayloadError for an argument that cannot be encoded.
 */
export function buildWorkflowSpec(canvas: Canvas, options: WorkflowOptions = {}): WorkflowSpec {
  requireCanvas(canvas, "the workflow");
  const compiler = new Compiler();
  const exits = compiler.compile(canvas, [], NodeInput.NONE, NodeTrigger.UNSPECIFIED, "");
  const spec = create(WorkflowSpecSchema, {
    nodes: compiler.nodes,
    name: truncateUtf8(options.name ?? canvas.describe(), MAX_LABEL_BYTES),
    idempotencyKey: options.idempotencyKey ?? "",
    outputs: exits,
    outputList: canvas.kind === "group" || exits.length > 1,
  });
  const taskOptions = buildTaskOptions(options);
  if (taskOptions !== undefined) spec.options = taskOptions;
  if (options.traceContext !== undefined) {
    const { traceparent, tracestate = "" } = options.traceContext;
    spec.traceContext = create(TraceContextSchema, { traceparent, tracestate });
  }
  return spec;
}
