package conveyor_test

// Unit tests of the canvas compilation (no server): each canvas's DAG is
// written one node per line as "index name <-parents INPUT TRIGGER".

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
)

// dag is the spec's nodes, one line each: "i name <-[parents] INPUT [TRIGGER]".
func dag(spec *conveyorv1.WorkflowSpec) []string {
	var out []string
	for i, n := range spec.GetNodes() {
		line := fmt.Sprintf("%d %s <-%v %s", i, n.GetTask().GetName(), n.GetParents(),
			strings.TrimPrefix(n.GetInput().String(), "NODE_INPUT_"))
		if n.GetTrigger() != conveyorv1.NodeTrigger_NODE_TRIGGER_UNSPECIFIED {
			line += " " + strings.TrimPrefix(n.GetTrigger().String(), "NODE_TRIGGER_")
		}
		out = append(out, line)
	}
	return out
}

func compile(t *testing.T, c conveyor.Canvas, opts ...conveyor.Option) *conveyorv1.WorkflowSpec {
	t.Helper()
	spec, err := conveyor.CompileWorkflow(c, opts...)
	if err != nil {
		t.Fatalf("compiling %s: %v", c, err)
	}
	return spec
}

func checkDAG(t *testing.T, spec *conveyorv1.WorkflowSpec, outputs []uint32, list bool, want ...string) {
	t.Helper()
	got := dag(spec)
	if !slices.Equal(got, want) {
		t.Fatalf("DAG of %s:\n  %s\nwant:\n  %s", spec.GetName(), strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	if !slices.Equal(spec.GetOutputs(), outputs) || spec.GetOutputList() != list {
		t.Fatalf("outputs %v list=%v, want %v list=%v", spec.GetOutputs(), spec.GetOutputList(), outputs, list)
	}
}

// argsOf decodes node i's positional arguments as JSON, joined by commas.
func argsOf(t *testing.T, spec *conveyorv1.WorkflowSpec, i int) string {
	t.Helper()
	var parts []string
	for _, a := range spec.GetNodes()[i].GetTask().GetArgs() {
		parts = append(parts, string(a.GetData()))
	}
	return strings.Join(parts, ",")
}

var (
	add  = conveyor.Sig("add")
	xsum = conveyor.Sig("xsum")
	mul  = conveyor.Sig("mul")
)

func TestCompileSignature(t *testing.T) {
	spec := compile(t, add.With(conveyor.Args(2, 3), conveyor.Kwarg("k", "v"), conveyor.WithQueue("math"), conveyor.WithPriority(7)))
	checkDAG(t, spec, []uint32{0}, false, "0 add <-[] NONE")
	task := spec.GetNodes()[0].GetTask()
	if argsOf(t, spec, 0) != "2,3" || string(task.GetKwargs()["k"].GetData()) != `"v"` ||
		task.GetOptions().GetQueue() != "math" || task.GetOptions().GetPriority() != 7 {
		t.Fatalf("task %v", task)
	}
	if spec.GetName() != "add" || spec.GetNodes()[0].GetLabel() != "add" || spec.GetIdempotencyKey() != "" {
		t.Fatalf("name %q label %q key %q", spec.GetName(), spec.GetNodes()[0].GetLabel(), spec.GetIdempotencyKey())
	}
}

func TestCompileChain(t *testing.T) {
	spec := compile(t, conveyor.Chain(add.With(conveyor.Args(2, 2)), add.With(conveyor.Args(4)), xsum))
	checkDAG(t, spec, []uint32{2}, false,
		"0 add <-[] NONE",
		"1 add <-[0] ONE",
		"2 xsum <-[1] ONE")
	if spec.GetName() != "chain(add x2, xsum)" {
		t.Fatalf("name %q", spec.GetName())
	}
	if labels := []string{spec.GetNodes()[0].GetLabel(), spec.GetNodes()[2].GetLabel()}; !slices.Equal(labels, []string{"chain[0]", "chain[2]"}) {
		t.Fatalf("labels %v", labels)
	}
	// Then appends, and leaves the chain it was called on as it was.
	base := conveyor.Chain(add)
	longer := base.Then(mul, xsum)
	checkDAG(t, compile(t, longer), []uint32{2}, false, "0 add <-[] NONE", "1 mul <-[0] ONE", "2 xsum <-[1] ONE")
	checkDAG(t, compile(t, base), []uint32{0}, false, "0 add <-[] NONE")
}

func TestCompileChainOfGroupsMakesChords(t *testing.T) {
	spec := compile(t, conveyor.Chain(
		conveyor.Group(add, add),
		xsum,
		conveyor.Group(mul, mul, mul),
		xsum,
	))
	checkDAG(t, spec, []uint32{6}, false,
		"0 add <-[] NONE",
		"1 add <-[] NONE",
		"2 xsum <-[0 1] LIST",
		"3 mul <-[2] ONE",
		"4 mul <-[2] ONE",
		"5 mul <-[2] ONE",
		"6 xsum <-[3 4 5] LIST")
	if spec.GetName() != "chain(group(add x2), xsum, group(mul x3), xsum)" {
		t.Fatalf("name %q", spec.GetName())
	}
	// Two groups in a row: every task of the second gets the first's list.
	spec = compile(t, conveyor.Chain(conveyor.Group(add, add), conveyor.Group(mul, mul)))
	checkDAG(t, spec, []uint32{2, 3}, true,
		"0 add <-[] NONE",
		"1 add <-[] NONE",
		"2 mul <-[0 1] LIST",
		"3 mul <-[0 1] LIST")
}

func TestCompileGroupOfChains(t *testing.T) {
	spec := compile(t, conveyor.Group(
		conveyor.Chain(add, mul),
		conveyor.Chain(add, mul, xsum),
		add,
		conveyor.Group(mul, mul), // flattened
	))
	checkDAG(t, spec, []uint32{1, 4, 5, 6, 7}, true,
		"0 add <-[] NONE",
		"1 mul <-[0] ONE",
		"2 add <-[] NONE",
		"3 mul <-[2] ONE",
		"4 xsum <-[3] ONE",
		"5 add <-[] NONE",
		"6 mul <-[] NONE",
		"7 mul <-[] NONE")
	if got := spec.GetNodes()[3].GetLabel(); got != "group[1].chain[1]" {
		t.Fatalf("label %q", got)
	}
}

func TestCompileChordInsideChain(t *testing.T) {
	spec := compile(t, conveyor.Chain(
		add,
		conveyor.Chord(conveyor.Group(mul, mul), xsum),
		add,
	))
	checkDAG(t, spec, []uint32{4}, false,
		"0 add <-[] NONE",
		"1 mul <-[0] ONE",
		"2 mul <-[0] ONE",
		"3 xsum <-[1 2] LIST",
		"4 add <-[3] ONE")
	if spec.GetName() != "chain(add, chord(mul x2, xsum), add)" {
		t.Fatalf("name %q", spec.GetName())
	}
	if got := spec.GetNodes()[3].GetLabel(); got != "chain[1].chord.body" {
		t.Fatalf("label %q", got)
	}
}

func TestCompileChordOfChords(t *testing.T) {
	inner1 := conveyor.Chord(conveyor.Group(add, add), xsum)
	inner2 := conveyor.Chord(conveyor.Group(mul, mul, mul), xsum)
	spec := compile(t, conveyor.Chord(conveyor.Group(inner1, inner2), conveyor.Sig("total")))
	checkDAG(t, spec, []uint32{7}, false,
		"0 add <-[] NONE",
		"1 add <-[] NONE",
		"2 xsum <-[0 1] LIST",
		"3 mul <-[] NONE",
		"4 mul <-[] NONE",
		"5 mul <-[] NONE",
		"6 xsum <-[3 4 5] LIST",
		"7 total <-[2 6] LIST")
	if spec.GetName() != "chord(chord(add x2, xsum), chord(mul x3, xsum), total)" {
		t.Fatalf("name %q", spec.GetName())
	}
}

func TestCompileChordBodyAlwaysGetsAList(t *testing.T) {
	// One header task: still a list.
	checkDAG(t, compile(t, conveyor.Chord(add, xsum)), []uint32{1}, false,
		"0 add <-[] NONE",
		"1 xsum <-[0] LIST")
	checkDAG(t, compile(t, conveyor.Chord(conveyor.Group(add), xsum)), []uint32{1}, false,
		"0 add <-[] NONE",
		"1 xsum <-[0] LIST")
	// allow errors: the body runs when the header is done, whatever happened.
	checkDAG(t, compile(t, conveyor.Chord(conveyor.Group(add, add), xsum).AllowErrors()), []uint32{2}, false,
		"0 add <-[] NONE",
		"1 add <-[] NONE",
		"2 xsum <-[0 1] LIST ALL_DONE")
	// A body that is a chain: its first task takes the list (and the
	// trigger); a body that is a group: every task does.
	checkDAG(t, compile(t, conveyor.Chord(conveyor.Group(add, add), conveyor.Chain(xsum, mul)).AllowErrors()), []uint32{3}, false,
		"0 add <-[] NONE",
		"1 add <-[] NONE",
		"2 xsum <-[0 1] LIST ALL_DONE",
		"3 mul <-[2] ONE")
	checkDAG(t, compile(t, conveyor.Chord(conveyor.Group(add, add), conveyor.Group(xsum, mul))), []uint32{2, 3}, true,
		"0 add <-[] NONE",
		"1 add <-[] NONE",
		"2 xsum <-[0 1] LIST",
		"3 mul <-[0 1] LIST")
}

func TestCompileLinks(t *testing.T) {
	// A link takes the element's result (one exit: ONE, several: LIST) and
	// is not an exit.
	cb := conveyor.Sig("notify")
	checkDAG(t, compile(t, add.Link(cb)), []uint32{0}, false,
		"0 add <-[] NONE",
		"1 notify <-[0] ONE")
	checkDAG(t, compile(t, conveyor.Chain(add, mul).Link(cb, cb.Immutable())), []uint32{1}, false,
		"0 add <-[] NONE",
		"1 mul <-[0] ONE",
		"2 notify <-[1] ONE",
		"3 notify <-[1] NONE")
	checkDAG(t, compile(t, conveyor.Group(add, mul).Link(cb)), []uint32{0, 1}, true,
		"0 add <-[] NONE",
		"1 mul <-[] NONE",
		"2 notify <-[0 1] LIST")
	checkDAG(t, compile(t, conveyor.Chord(conveyor.Group(add, add), xsum).Link(cb)), []uint32{2}, false,
		"0 add <-[] NONE",
		"1 add <-[] NONE",
		"2 xsum <-[0 1] LIST",
		"3 notify <-[2] ONE")
	// A link inside a chain, on a step that is not the last.
	checkDAG(t, compile(t, conveyor.Chain(add.Link(cb), mul)), []uint32{2}, false,
		"0 add <-[] NONE",
		"1 notify <-[0] ONE",
		"2 mul <-[0] ONE")
	// A link may be a canvas itself.
	checkDAG(t, compile(t, add.Link(conveyor.Chain(cb, cb))), []uint32{0}, false,
		"0 add <-[] NONE",
		"1 notify <-[0] ONE",
		"2 notify <-[1] ONE")
}

func TestCompileLinkErrors(t *testing.T) {
	eb := conveyor.Sig("on_error", conveyor.Args("ctx"))
	// On a signature: its one node.
	spec := compile(t, add.LinkError(eb))
	checkDAG(t, spec, []uint32{0}, false,
		"0 add <-[] NONE",
		"1 on_error <-[0] NONE ON_FAILURE")
	if argsOf(t, spec, 1) != `"ctx"` {
		t.Fatalf("errback args %s", argsOf(t, spec, 1))
	}
	// On a chain: every node of the chain (nested links included), not
	// only its exits; the chain's own links are not among them.
	spec = compile(t, conveyor.Chain(add, conveyor.Group(mul, mul.Link(conveyor.Sig("log"))), xsum).
		Link(conveyor.Sig("notify")).LinkError(eb))
	checkDAG(t, spec, []uint32{4}, false,
		"0 add <-[] NONE",
		"1 mul <-[0] ONE",
		"2 mul <-[0] ONE",
		"3 log <-[2] ONE",
		"4 xsum <-[1 2] LIST",
		"5 notify <-[4] ONE",
		"6 on_error <-[0 1 2 3 4] NONE ON_FAILURE")
	if got := spec.GetNodes()[6].GetLabel(); got != "link_error[0]" {
		t.Fatalf("label %q", got)
	}
	// On a chord: header and body; on a group inside a chain: that group's.
	checkDAG(t, compile(t, conveyor.Chord(conveyor.Group(add, add), xsum).LinkError(eb)), []uint32{2}, false,
		"0 add <-[] NONE",
		"1 add <-[] NONE",
		"2 xsum <-[0 1] LIST",
		"3 on_error <-[0 1 2] NONE ON_FAILURE")
	checkDAG(t, compile(t, conveyor.Chain(add, conveyor.Group(mul, mul).LinkError(eb), xsum)), []uint32{4}, false,
		"0 add <-[] NONE",
		"1 mul <-[0] ONE",
		"2 mul <-[0] ONE",
		"3 on_error <-[1 2] NONE ON_FAILURE",
		"4 xsum <-[1 2] LIST")
	// Several errbacks, nested ones too.
	checkDAG(t, compile(t, conveyor.Chain(add.LinkError(eb), mul).LinkError(eb, eb)), []uint32{2}, false,
		"0 add <-[] NONE",
		"1 on_error <-[0] NONE ON_FAILURE",
		"2 mul <-[0] ONE",
		"3 on_error <-[0 1 2] NONE ON_FAILURE",
		"4 on_error <-[0 1 2] NONE ON_FAILURE")
}

func TestCompileImmutables(t *testing.T) {
	spec := compile(t, conveyor.Chain(
		add.With(conveyor.Args(1, 1)),
		add.With(conveyor.Args(5, 5)).Immutable(),
		conveyor.Chord(conveyor.Group(mul.Immutable(), mul), xsum.Immutable()),
	))
	checkDAG(t, spec, []uint32{4}, false,
		"0 add <-[] NONE",
		"1 add <-[0] NONE",
		"2 mul <-[1] NONE",
		"3 mul <-[1] ONE",
		"4 xsum <-[2 3] NONE")
	if argsOf(t, spec, 1) != "5,5" {
		t.Fatalf("immutable args %s", argsOf(t, spec, 1))
	}
	if !add.Immutable().IsImmutable() || add.IsImmutable() {
		t.Fatal("Immutable changed its receiver, or did nothing")
	}
}

func TestCompileOutputs(t *testing.T) {
	cases := []struct {
		canvas  conveyor.Canvas
		outputs []uint32
		list    bool
	}{
		{add, []uint32{0}, false},
		{conveyor.Group(add), []uint32{0}, true},
		{conveyor.Group(add, mul), []uint32{0, 1}, true},
		{conveyor.Chain(add, mul), []uint32{1}, false},
		// A chain ending in a group of several: a list.
		{conveyor.Chain(add, conveyor.Group(mul, mul)), []uint32{1, 2}, true},
		// ... of one: the contract counts exits, so no list.
		{conveyor.Chain(add, conveyor.Group(mul)), []uint32{1}, false},
		{conveyor.Chord(conveyor.Group(add, add), xsum), []uint32{2}, false},
		{conveyor.Chord(conveyor.Group(add, add), conveyor.Group(xsum, xsum)), []uint32{2, 3}, true},
		{add.Link(xsum).LinkError(mul), []uint32{0}, false},
	}
	for _, tc := range cases {
		spec := compile(t, tc.canvas)
		if !slices.Equal(spec.GetOutputs(), tc.outputs) || spec.GetOutputList() != tc.list {
			t.Errorf("%s: outputs %v list=%v, want %v list=%v", tc.canvas, spec.GetOutputs(), spec.GetOutputList(), tc.outputs, tc.list)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	cases := []struct {
		canvas conveyor.Canvas
		opts   []conveyor.Option
		want   string
	}{
		{conveyor.Group(), nil, "a group needs at least one element"},
		{conveyor.Chain(add, conveyor.Group()), nil, "chain[1]: a group needs at least one element"},
		{conveyor.Chord(conveyor.Group(), xsum), nil, "chord.header: a group needs at least one element"},
		{conveyor.Chain(), nil, "a chain needs at least one element"},
		{conveyor.Chain(add, nil), nil, "chain[1]: the element is nil"},
		{conveyor.Chord(conveyor.Group(add), nil), nil, "chord.body: the element is nil"},
		{nil, nil, "the workflow is nil"},
		{(*conveyor.Signature)(nil), nil, "the workflow is nil"},
		{conveyor.Sig(""), nil, "the task name is empty"},
		{conveyor.Chain(add, mul.With(conveyor.WithIdempotencyKey("k"))), nil, "workflow node 1 (mul): a node cannot have an idempotency key"},
		{add.Link(conveyor.Group()), nil, "link[0]: a group needs at least one element"},
		{add.LinkError(conveyor.Chain()), nil, "link_error[0]: a chain needs at least one element"},
		{add.With(conveyor.Args(func() {})), nil, "cannot encode positional argument 0"},
		{add, []conveyor.Option{conveyor.Args(1)}, "arguments cannot be given for a whole workflow"},
		{add.With(conveyor.WithWorkflowName("x")), nil, "WithWorkflowName applies to a whole workflow"},
	}
	for _, tc := range cases {
		_, err := conveyor.CompileWorkflow(tc.canvas, tc.opts...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.canvas, err, tc.want)
		}
	}
	// Limits.
	many := make([]conveyor.Canvas, conveyor.MaxWorkflowNodes+1)
	for i := range many {
		many[i] = add
	}
	if _, err := conveyor.CompileWorkflow(conveyor.Group(many...)); err == nil || !strings.Contains(err.Error(), "nodes") {
		t.Errorf("%d nodes: %v", len(many), err)
	}
	// 500 tasks, each parent of 500 successors: 250,000 edges.
	wide := make([]conveyor.Canvas, 500)
	for i := range wide {
		wide[i] = add
	}
	if _, err := conveyor.CompileWorkflow(conveyor.Chain(conveyor.Group(wide...), conveyor.Group(wide...))); err == nil || !strings.Contains(err.Error(), "edges") {
		t.Errorf("250,000 edges: %v", err)
	}
}

func TestCompileWorkflowOptions(t *testing.T) {
	spec := compile(t, conveyor.Chain(add.With(conveyor.WithQueue("fast")), mul),
		conveyor.WithQueue("math"), conveyor.WithMaxRetries(3), conveyor.WithIdempotencyKey("wf-1"),
		conveyor.WithHeader("h", "v"), conveyor.WithResultTTL(time.Hour), conveyor.WithWorkflowName("pipeline"),
		conveyor.WithTraceContext("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", ""))
	o := spec.GetOptions()
	if o.GetQueue() != "math" || o.GetRetry().GetMaxRetries() != 3 || o.GetHeaders()["h"] != "v" ||
		o.GetResultTtl().AsDuration() != time.Hour {
		t.Fatalf("workflow options %v", o)
	}
	if spec.GetIdempotencyKey() != "wf-1" || spec.GetName() != "pipeline" ||
		spec.GetTraceContext().GetTraceparent() != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" {
		t.Fatalf("spec %v", spec)
	}
	// Node options stay the node's; the server fills the rest.
	if spec.GetNodes()[0].GetTask().GetOptions().GetQueue() != "fast" || spec.GetNodes()[1].GetTask().GetOptions() != nil {
		t.Fatalf("node options %v / %v", spec.GetNodes()[0].GetTask().GetOptions(), spec.GetNodes()[1].GetTask().GetOptions())
	}
	for _, n := range spec.GetNodes() {
		if n.GetTask().GetIdempotencyKey() != "" {
			t.Fatal("a node has an idempotency key")
		}
	}
	// Long names are cut to 200 bytes, on a character boundary.
	long := make([]conveyor.Canvas, 100)
	for i := range long {
		long[i] = conveyor.Sig(fmt.Sprintf("tâche-%d", i))
	}
	spec = compile(t, conveyor.Group(long...))
	if len(spec.GetName()) > 200 || !strings.HasSuffix(spec.GetName(), "…") || !strings.HasPrefix(spec.GetName(), "group(tâche-0, tâche-1") {
		t.Fatalf("name of %d bytes: %q", len(spec.GetName()), spec.GetName())
	}
}

func TestCanvasValuesAreNotShared(t *testing.T) {
	base := add.With(conveyor.Args(1))
	linked := base.Link(xsum).LinkError(mul)
	two := base.With(conveyor.Args(2))
	checkDAG(t, compile(t, base), []uint32{0}, false, "0 add <-[] NONE")
	checkDAG(t, compile(t, linked), []uint32{0}, false, "0 add <-[] NONE", "1 xsum <-[0] ONE", "2 mul <-[0] NONE ON_FAILURE")
	if s := compile(t, two); argsOf(t, s, 0) != "1,2" {
		t.Fatalf("args %s", argsOf(t, s, 0))
	}
	if s := compile(t, base); argsOf(t, s, 0) != "1" {
		t.Fatalf("With changed its receiver: %s", argsOf(t, s, 0))
	}
	g := conveyor.Group(add, mul)
	_ = g.Link(xsum)
	checkDAG(t, compile(t, g), []uint32{0, 1}, true, "0 add <-[] NONE", "1 mul <-[] NONE")
	// The same signature twice in one canvas gives two nodes.
	checkDAG(t, compile(t, conveyor.Chain(base, base)), []uint32{1}, false, "0 add <-[] NONE", "1 add <-[0] ONE")
}

func TestStarmapAndMap(t *testing.T) {
	spec := compile(t, conveyor.Chord(conveyor.Starmap(add.With(conveyor.Args(100)), []any{1, 2}, []any{3, 4}), xsum))
	checkDAG(t, spec, []uint32{2}, false,
		"0 add <-[] NONE",
		"1 add <-[] NONE",
		"2 xsum <-[0 1] LIST")
	if argsOf(t, spec, 0) != "1,2,100" || argsOf(t, spec, 1) != "3,4,100" {
		t.Fatalf("starmap args %s / %s", argsOf(t, spec, 0), argsOf(t, spec, 1))
	}
	spec = compile(t, conveyor.Map(conveyor.Sig("square"), 1, "two", []int{3}))
	if n := len(spec.GetNodes()); n != 3 || argsOf(t, spec, 1) != `"two"` || argsOf(t, spec, 2) != "[3]" || !spec.GetOutputList() {
		t.Fatalf("map: %d nodes, %s", n, argsOf(t, spec, 1))
	}
	if spec.GetName() != "group(square x3)" {
		t.Fatalf("name %q", spec.GetName())
	}
}

func TestCompiledSpecIsJSONRoundTrippable(t *testing.T) {
	// Arguments are JSON payloads, as for tasks submitted alone.
	spec := compile(t, add.With(conveyor.Args(map[string]int{"a": 1}), conveyor.Kwargs(map[string]any{"b": []int{2}})))
	var a map[string]int
	var b []int
	if err := json.Unmarshal(spec.GetNodes()[0].GetTask().GetArgs()[0].GetData(), &a); err != nil || a["a"] != 1 {
		t.Fatalf("arg %v %v", a, err)
	}
	if err := json.Unmarshal(spec.GetNodes()[0].GetTask().GetKwargs()["b"].GetData(), &b); err != nil || b[0] != 2 {
		t.Fatalf("kwarg %v %v", b, err)
	}
	if spec.GetNodes()[0].GetTask().GetArgs()[0].GetContentType() != conveyor.JSONContentType {
		t.Fatal("content type")
	}
}
