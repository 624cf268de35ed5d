package conveyor_test

// Workflow behaviour, run twice by the same code: in eager mode (no server)
// and against the real server with a real Go worker (workflow_server_test.go).

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	"google.golang.org/grpc/codes"
)

// errbackCall is one run of the "errback" task.
type errbackCall struct {
	FailedID string
	Error    map[string]string
	Extra    []json.RawMessage
}

// wfRecorder records what the workflow handlers saw.
type wfRecorder struct {
	mu       sync.Mutex
	errbacks []errbackCall
}

func (r *wfRecorder) errbackCalls() []errbackCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.errbacks)
}

// wfHandlers are the tasks the workflow tests use.
func wfHandlers(rec *wfRecorder) map[string]conveyor.Handler {
	return map[string]conveyor.Handler{
		"add": addHandler,
		// xsum(list) is the sum of a list of numbers.
		"xsum": func(_ context.Context, t *conveyor.Task) (any, error) {
			var xs []int
			if err := t.Arg(0, &xs); err != nil {
				return nil, err
			}
			total := 0
			for _, x := range xs {
				total += x
			}
			return total, nil
		},
		// slow(value, ms) returns value after ms milliseconds (or fails when
		// cancelled).
		"slow": func(ctx context.Context, t *conveyor.Task) (any, error) {
			var value any
			var ms int
			if err := t.Arg(0, &value); err != nil {
				return nil, err
			}
			if err := t.Arg(1, &ms); err != nil {
				return nil, err
			}
			select {
			case <-time.After(time.Duration(ms) * time.Millisecond):
				return value, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
		"fail": func(_ context.Context, t *conveyor.Task) (any, error) {
			var msg string
			_ = t.Arg(t.NumArgs()-1, &msg)
			return nil, conveyor.NonRetryable(conveyor.NewTaskError("ValueError", msg))
		},
		// echo returns its first argument as it received it.
		"echo": func(_ context.Context, t *conveyor.Task) (any, error) {
			var v json.RawMessage
			if err := t.Arg(0, &v); err != nil {
				return nil, err
			}
			return v, nil
		},
		"errback": func(_ context.Context, t *conveyor.Task) (any, error) {
			var call errbackCall
			if err := t.Arg(0, &call.FailedID); err != nil {
				return nil, err
			}
			if err := t.Arg(1, &call.Error); err != nil {
				return nil, err
			}
			for i := 2; i < t.NumArgs(); i++ {
				var extra json.RawMessage
				_ = t.Arg(i, &extra)
				call.Extra = append(call.Extra, extra)
			}
			rec.mu.Lock()
			rec.errbacks = append(rec.errbacks, call)
			rec.mu.Unlock()
			return "handled", nil
		},
		// root returns the workflow id its context carries.
		"root": func(_ context.Context, t *conveyor.Task) (any, error) { return t.WorkflowID, nil },
	}
}

var (
	sigAdd     = conveyor.Sig("add")
	sigXsum    = conveyor.Sig("xsum")
	sigFail    = conveyor.Sig("fail")
	sigEcho    = conveyor.Sig("echo")
	sigErrback = conveyor.Sig("errback")
)

func addOf(args ...any) *conveyor.Signature { return sigAdd.With(conveyor.Args(args...)) }

// wfEnv is what a workflow test runs against.
type wfEnv struct {
	c    *conveyor.Client
	opts []conveyor.Option // given to every SubmitWorkflow (the queue)
	rec  *wfRecorder
}

func (e *wfEnv) submit(t *testing.T, ctx context.Context, canvas conveyor.Canvas, opts ...conveyor.Option) *conveyor.WorkflowHandle {
	t.Helper()
	h, err := e.c.SubmitWorkflow(ctx, canvas, append(slices.Clone(e.opts), opts...)...)
	if err != nil {
		t.Fatalf("SubmitWorkflow(%s): %v", canvas, err)
	}
	return h
}

// result submits canvas and decodes its result into out.
func (e *wfEnv) result(t *testing.T, ctx context.Context, canvas conveyor.Canvas, out any) *conveyor.WorkflowHandle {
	t.Helper()
	h := e.submit(t, ctx, canvas)
	if err := h.Get(ctx, out); err != nil {
		t.Fatalf("%s: %v", canvas, err)
	}
	return h
}

// nodeTask is node i of the workflow, read with its nodes.
func nodeTask(t *testing.T, ctx context.Context, h *conveyor.WorkflowHandle, i int) *conveyor.TaskInfo {
	t.Helper()
	wf, err := h.Workflow(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(wf.GetNodes()) != len(h.TaskIDs) || wf.GetNodes()[i].GetTask().GetId() != h.TaskIDs[i] {
		t.Fatalf("workflow nodes %v do not match task ids %v", wf.GetNodes(), h.TaskIDs)
	}
	return wf.GetNodes()[i].GetTask()
}

// runWorkflowSuite is the behaviour every backend must show.
func runWorkflowSuite(t *testing.T, env *wfEnv) {
	t.Run("chain passes results", func(t *testing.T) {
		ctx := testContext(t)
		var got int
		h := env.result(t, ctx, conveyor.Chain(addOf(2, 2), addOf(4), addOf(8)), &got)
		if got != 16 || len(h.TaskIDs) != 3 || h.ID == "" {
			t.Fatalf("got %d, handle %+v", got, h)
		}
		// The chain's handle is its last task's, too.
		var last int
		outs := h.Outputs()
		if len(outs) != 1 || outs[0].ID != h.TaskIDs[2] {
			t.Fatalf("outputs %v", outs)
		}
		if err := outs[0].Result(ctx, 5*time.Second, &last); err != nil || last != 16 {
			t.Fatalf("last task: %d, %v", last, err)
		}
		wf, err := h.Wait(ctx)
		if err != nil || wf.GetState() != conveyor.WorkflowSucceeded || wf.GetNodeCount() != 3 ||
			!slices.Equal(wf.GetOutputTaskIds(), []string{h.TaskIDs[2]}) || wf.GetName() != "chain(add x3)" {
			t.Fatalf("workflow %v, %v", wf, err)
		}
		var first int
		if err := h.Node(0).Result(ctx, 5*time.Second, &first); err != nil || first != 4 {
			t.Fatalf("first task: %d, %v", first, err)
		}
		if h.Node(3) != nil || h.Node(-1) != nil {
			t.Fatal("Node out of range is not nil")
		}
	})

	t.Run("group results in declaration order", func(t *testing.T) {
		ctx := testContext(t)
		// The first tasks finish last.
		var elems []conveyor.Canvas
		var want []int
		for i := range 8 {
			elems = append(elems, conveyor.Sig("slow", conveyor.Args(i, (8-i)*30)))
			want = append(want, i)
		}
		var got []int
		h := env.result(t, ctx, conveyor.Group(elems...), &got)
		if !slices.Equal(got, want) {
			t.Fatalf("group results %v, want %v", got, want)
		}
		if outs := h.Outputs(); len(outs) != 8 || outs[7].ID != h.TaskIDs[7] {
			t.Fatalf("outputs %v", outs)
		}
		// A group of one is still a list.
		var one []int
		env.result(t, ctx, conveyor.Group(addOf(1, 2)), &one)
		if !slices.Equal(one, []int{3}) {
			t.Fatalf("group of one: %v", one)
		}
	})

	t.Run("chord body gets the ordered list", func(t *testing.T) {
		ctx := testContext(t)
		var header []conveyor.Canvas
		for i := range 10 {
			header = append(header, addOf(i, i))
		}
		var got int
		env.result(t, ctx, conveyor.Chord(conveyor.Group(header...), sigXsum), &got)
		if got != 90 {
			t.Fatalf("chord: %d", got)
		}
		// The body sees the list in header order, even with one element.
		var list []int
		env.result(t, ctx, conveyor.Chord(conveyor.Group(
			conveyor.Sig("slow", conveyor.Args(1, 120)),
			conveyor.Sig("slow", conveyor.Args(2, 60)),
			conveyor.Sig("slow", conveyor.Args(3, 0)),
		), sigEcho), &list)
		if !slices.Equal(list, []int{1, 2, 3}) {
			t.Fatalf("chord body got %v", list)
		}
		env.result(t, ctx, conveyor.Chord(addOf(2, 3), sigEcho), &list)
		if !slices.Equal(list, []int{5}) {
			t.Fatalf("chord of one: body got %v", list)
		}
		var total int
		env.result(t, ctx, conveyor.Chord(conveyor.Starmap(sigAdd, []any{1, 2}, []any{3, 4}), sigXsum), &total)
		if total != 10 {
			t.Fatalf("starmap chord: %d", total)
		}
	})

	t.Run("nesting", func(t *testing.T) {
		ctx := testContext(t)
		// add(1,1)=2 -> [add(2,10)=12, add(2,20)=22] -> xsum=34 -> [add(34,1), add(34,2)]
		var got []int
		env.result(t, ctx, conveyor.Chain(
			addOf(1, 1),
			conveyor.Chord(conveyor.Group(addOf(10), addOf(20)), sigXsum),
			conveyor.Group(addOf(1), addOf(2)),
		), &got)
		if !slices.Equal(got, []int{35, 36}) {
			t.Fatalf("chain(add, chord, group): %v", got)
		}
		// A chord of a chord and a chain: (1+1 + 2+2) + (3+3+4) = 16.
		var total int
		env.result(t, ctx, conveyor.Chord(conveyor.Group(
			conveyor.Chord(conveyor.Group(addOf(1, 1), addOf(2, 2)), sigXsum),
			conveyor.Chain(addOf(3, 3), addOf(4)),
		), sigXsum), &total)
		if total != 16 {
			t.Fatalf("chord of chords: %d", total)
		}
		// A group of chains.
		env.result(t, ctx, conveyor.Group(
			conveyor.Chain(addOf(1, 1), addOf(1)),
			conveyor.Chain(addOf(2, 2), addOf(2), addOf(2)),
		), &got)
		if !slices.Equal(got, []int{3, 8}) {
			t.Fatalf("group of chains: %v", got)
		}
		// Immutable steps ignore the previous result.
		env.result(t, ctx, conveyor.Chain(addOf(1, 1), addOf(5, 5).Immutable()), &total)
		if total != 10 {
			t.Fatalf("immutable step: %d", total)
		}
	})

	t.Run("link gets the result and is not the result", func(t *testing.T) {
		ctx := testContext(t)
		var got int
		h := env.result(t, ctx, conveyor.Chain(addOf(2, 2), addOf(3)).Link(sigEcho).LinkError(sigErrback), &got)
		if got != 7 {
			t.Fatalf("result %d", got)
		}
		var linked int
		if err := h.Node(2).Result(ctx, 5*time.Second, &linked); err != nil || linked != 7 {
			t.Fatalf("link callback: %d, %v", linked, err)
		}
		// The errback did not run: cancelled, and the workflow succeeded.
		if task := nodeTask(t, ctx, h, 3); task.GetState() != conveyor.StateCancelled {
			t.Fatalf("errback of a successful chain is %v", task.GetState())
		}
		if calls := env.rec.errbackCalls(); len(calls) != 0 {
			t.Fatalf("errback ran: %v", calls)
		}
		// A group's link gets the list.
		h = env.result(t, ctx, conveyor.Group(addOf(1, 1), addOf(2, 2)).Link(sigEcho), nil)
		var list []int
		if err := h.Node(2).Result(ctx, 5*time.Second, &list); err != nil || !slices.Equal(list, []int{2, 4}) {
			t.Fatalf("group link: %v, %v", list, err)
		}
	})

	t.Run("link_error runs once on failure", func(t *testing.T) {
		ctx := testContext(t)
		before := len(env.rec.errbackCalls())
		h := env.submit(t, ctx, conveyor.Chain(addOf(1, 1), sigFail.With(conveyor.Args("boom")), addOf(1)).
			LinkError(sigErrback.With(conveyor.Args("extra"))))
		err := h.Get(ctx, nil)
		var failed *conveyor.TaskFailedError
		if !errors.As(err, &failed) {
			t.Fatalf("want a TaskFailedError, got %v", err)
		}
		if failed.TaskID != h.TaskIDs[1] || failed.WorkflowID != h.ID || failed.Type != "ValueError" ||
			failed.Message != "boom" || failed.CauseTaskID != "" {
			t.Fatalf("error %+v", failed)
		}
		wf, err := h.Wait(ctx)
		if err != nil || wf.GetState() != conveyor.WorkflowFailed || wf.GetFailedTaskId() != h.TaskIDs[1] {
			t.Fatalf("workflow %v, %v", wf, err)
		}
		// The step after the failure failed without running, naming its cause.
		dep := nodeTask(t, ctx, h, 2)
		if dep.GetState() != conveyor.StateFailed || dep.GetError().GetReason() != conveyor.ReasonDependencyFailed ||
			dep.GetError().GetCauseTaskId() != h.TaskIDs[1] || dep.GetAttempt() != 0 {
			t.Fatalf("dependent node: %v", dep)
		}
		var depErr *conveyor.TaskFailedError
		if err := h.Node(2).Result(ctx, time.Second, nil); !errors.As(err, &depErr) ||
			depErr.CauseTaskID != h.TaskIDs[1] || depErr.Reason != conveyor.ReasonDependencyFailed {
			t.Fatalf("dependent's error: %v", err)
		}
		// The errback ran once, with the failed task's id, its error and its own argument.
		eventually(t, 10*time.Second, "the errback", func() bool { return len(env.rec.errbackCalls()) > before })
		var errbackResult string
		if err := h.Node(3).Result(ctx, 5*time.Second, &errbackResult); err != nil || errbackResult != "handled" {
			t.Fatalf("errback node: %q, %v", errbackResult, err)
		}
		calls := env.rec.errbackCalls()[before:]
		if len(calls) != 1 {
			t.Fatalf("errback ran %d times: %v", len(calls), calls)
		}
		call := calls[0]
		if call.FailedID != h.TaskIDs[1] || call.Error["type"] != "ValueError" || call.Error["message"] != "boom" ||
			len(call.Extra) != 1 || string(call.Extra[0]) != `"extra"` {
			t.Fatalf("errback call %+v", call)
		}
		if _, ok := call.Error["traceback"]; !ok {
			t.Fatalf("errback error lacks a traceback: %v", call.Error)
		}

		// Two failures in a group: still once.
		before = len(env.rec.errbackCalls())
		h = env.submit(t, ctx, conveyor.Group(sigFail.With(conveyor.Args("a")), sigFail.With(conveyor.Args("b")), addOf(1, 1)).
			LinkError(sigErrback))
		if err := h.Get(ctx, nil); !errors.As(err, &failed) || failed.WorkflowID != h.ID {
			t.Fatalf("want a TaskFailedError, got %v", err)
		}
		if _, err := h.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		calls = env.rec.errbackCalls()[before:]
		if len(calls) != 1 || (calls[0].FailedID != h.TaskIDs[0] && calls[0].FailedID != h.TaskIDs[1]) {
			t.Fatalf("errback calls %+v (tasks %v)", calls, h.TaskIDs)
		}
	})

	t.Run("chord with a failed header", func(t *testing.T) {
		ctx := testContext(t)
		h := env.submit(t, ctx, conveyor.Chord(conveyor.Group(addOf(1, 1), sigFail.With(conveyor.Args("header"))), sigXsum))
		var failed *conveyor.TaskFailedError
		if err := h.Get(ctx, nil); !errors.As(err, &failed) || failed.TaskID != h.TaskIDs[1] || failed.Message != "header" {
			t.Fatalf("want the header's failure, got %v", err)
		}
		if body := nodeTask(t, ctx, h, 2); body.GetState() != conveyor.StateFailed || body.GetError().GetCauseTaskId() != h.TaskIDs[1] {
			t.Fatalf("body %v", body)
		}
		// With AllowErrors the body runs and sees the error in place.
		h = env.submit(t, ctx, conveyor.Chord(conveyor.Group(addOf(1, 1), sigFail.With(conveyor.Args("header"))), sigEcho).AllowErrors())
		var list []json.RawMessage
		if err := h.Node(2).Result(ctx, 10*time.Second, &list); err != nil || len(list) != 2 || string(list[0]) != "2" {
			t.Fatalf("allow-errors body: %s, %v", list, err)
		}
		var entry struct {
			Error map[string]string `json:"error"`
		}
		if err := json.Unmarshal(list[1], &entry); err != nil || entry.Error["type"] != "ValueError" ||
			entry.Error["message"] != "header" || entry.Error["task_id"] != h.TaskIDs[1] {
			t.Fatalf("error entry %s, %v", list[1], err)
		}
		if wf, err := h.Wait(ctx); err != nil || wf.GetState() != conveyor.WorkflowFailed {
			t.Fatalf("workflow %v, %v", wf, err)
		}
	})

	t.Run("workflow id on the task context", func(t *testing.T) {
		ctx := testContext(t)
		var root string
		h := env.result(t, ctx, conveyor.Chain(addOf(1, 1), conveyor.Sig("root").Immutable()), &root)
		if root != h.ID {
			t.Fatalf("task saw workflow %q, want %q", root, h.ID)
		}
		task, err := env.c.Get(ctx, h.TaskIDs[1])
		if err != nil || task.GetWorkflowId() != h.ID || task.GetWorkflowNode() != 1 {
			t.Fatalf("task %v, %v", task, err)
		}
	})

	t.Run("idempotency key", func(t *testing.T) {
		ctx := testContext(t)
		key := "wf-" + uniqueQueue(t)
		first := env.submit(t, ctx, conveyor.Chain(addOf(1, 1), addOf(1)), conveyor.WithIdempotencyKey(key))
		second := env.submit(t, ctx, conveyor.Chain(addOf(1, 1), addOf(1)), conveyor.WithIdempotencyKey(key))
		if first.Duplicate || !second.Duplicate || second.ID != first.ID || !slices.Equal(second.TaskIDs, first.TaskIDs) {
			t.Fatalf("first %+v, second %+v", first, second)
		}
	})

	t.Run("watch", func(t *testing.T) {
		ctx := testContext(t)
		h := env.submit(t, ctx, conveyor.Chain(addOf(1, 1), addOf(1)))
		stream, err := h.Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var last *conveyor.WorkflowInfo
		for wf, err := range stream.All() {
			if err != nil {
				t.Fatal(err)
			}
			last = wf
		}
		if last.GetState() != conveyor.WorkflowSucceeded || len(last.GetNodes()) != 2 {
			t.Fatalf("last snapshot %v", last)
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("after the end: %v", err)
		}
	})

	t.Run("unknown workflow", func(t *testing.T) {
		ctx := testContext(t)
		if _, err := env.c.GetWorkflow(ctx, "01890000-0000-7000-8000-000000000000", conveyor.ViewSummary); conveyor.Code(err) != codes.NotFound {
			t.Fatalf("GetWorkflow of an unknown id: %v", err)
		}
	})
}

func TestEagerWorkflows(t *testing.T) {
	rec := &wfRecorder{}
	runWorkflowSuite(t, &wfEnv{c: conveyor.NewEagerClient(wfHandlers(rec)), rec: rec})
}

func TestEagerWorkflowDetails(t *testing.T) {
	ctx := testContext(t)
	rec := &wfRecorder{}
	c := conveyor.NewEagerClient(wfHandlers(rec))
	// Cancelling a finished workflow cancels nothing.
	h, err := c.SubmitWorkflow(ctx, conveyor.Chain(addOf(1, 1), addOf(2)))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := h.Cancel(ctx); err != nil || n != 0 {
		t.Fatalf("cancel: %d, %v", n, err)
	}
	// Summary, nodes and full views.
	sum, err := c.GetWorkflow(ctx, h.ID, conveyor.ViewSummary)
	if err != nil || len(sum.GetNodes()) != 0 || sum.GetStateCounts()[conveyor.StateSucceeded] != 2 {
		t.Fatalf("summary %v, %v", sum, err)
	}
	nodes, _ := c.GetWorkflow(ctx, h.ID, conveyor.ViewNodes)
	full, _ := c.GetWorkflow(ctx, h.ID, conveyor.ViewFull)
	if len(nodes.GetNodes()[1].GetTask().GetArgs()) != 0 || len(full.GetNodes()[1].GetTask().GetArgs()) != 2 ||
		nodes.GetNodes()[1].GetLabel() != "chain[1]" || !slices.Equal(nodes.GetNodes()[1].GetParents(), []uint32{0}) {
		t.Fatalf("nodes %v / full %v", nodes, full)
	}
	// The server's validation, in memory.
	spec := compile(t, conveyor.Chain(addOf(1, 1), addOf(2)))
	spec.Nodes[0].Parents = []uint32{1}
	if _, err = c.SubmitWorkflowSpec(ctx, spec); conveyor.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "workflow.nodes[0].parents") {
		t.Fatalf("cycle: %v", err)
	}
	spec = compile(t, conveyor.Chain(addOf(1, 1), addOf(2)))
	spec.Nodes[1].Parents = []uint32{0, 0}
	if _, err = c.SubmitWorkflowSpec(ctx, spec); conveyor.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "workflow.nodes[1].parents[1]") {
		t.Fatalf("duplicate parent: %v", err)
	}
	// An unregistered task fails its node; dependents fail with it as cause.
	h, err = c.SubmitWorkflow(ctx, conveyor.Chain(conveyor.Sig("nope"), addOf(1)))
	var failed *conveyor.TaskFailedError
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Get(ctx, nil); !errors.As(err, &failed) || failed.Type != "NotRegistered" || failed.TaskID != h.TaskIDs[0] {
		t.Fatalf("unregistered: %v", err)
	}
}
