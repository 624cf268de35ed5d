package conveyor_test

// Workflows against the real server, run by a real Go worker.

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	"google.golang.org/grpc/codes"
)

// serverWorkflowEnv starts a worker of wfHandlers (plus extra) on a queue of
// its own; the workflows are submitted to that queue.
func serverWorkflowEnv(t *testing.T, extra map[string]conveyor.Handler) *wfEnv {
	t.Helper()
	queue := uniqueQueue(t)
	rec := &wfRecorder{}
	handlers := wfHandlers(rec)
	for name, h := range extra {
		handlers[name] = h
	}
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}, Concurrency: 8}, handlers)
	return &wfEnv{c: newClient(t), opts: []conveyor.Option{conveyor.WithQueue(queue)}, rec: rec}
}

func TestWorkflowsOnServer(t *testing.T) {
	runWorkflowSuite(t, serverWorkflowEnv(t, nil))
}

func Test_parity_chain(t *testing.T) {
	ctx := testContext(t)
	env := serverWorkflowEnv(t, nil)
	var got int
	env.result(t, ctx, conveyor.Chain(addOf(2, 2), addOf(4), addOf(8)), &got)
	if got != 16 {
		t.Fatalf("chain: %d", got)
	}
}

func Test_parity_group(t *testing.T) {
	ctx := testContext(t)
	env := serverWorkflowEnv(t, nil)
	var got []int
	env.result(t, ctx, conveyor.Group(conveyor.Sig("slow", conveyor.Args(1, 100)), addOf(1, 1), addOf(1, 2)), &got)
	if !slices.Equal(got, []int{1, 2, 3}) {
		t.Fatalf("group: %v", got)
	}
}

func Test_parity_chord(t *testing.T) {
	ctx := testContext(t)
	env := serverWorkflowEnv(t, nil)
	var got int
	env.result(t, ctx, conveyor.Chord(conveyor.Group(addOf(1, 1), addOf(2, 2), addOf(3, 3)), sigXsum), &got)
	if got != 12 {
		t.Fatalf("chord: %d", got)
	}
}

func Test_parity_workflows(t *testing.T) {
	ctx := testContext(t)
	env := serverWorkflowEnv(t, nil)
	var got int
	// add(1, 2) | group(add(_, 10), add(_, 20)) | xsum = 13 + 23
	env.result(t, ctx, conveyor.Chain(addOf(1, 2), conveyor.Group(addOf(10), addOf(20)), sigXsum), &got)
	if got != 36 {
		t.Fatalf("workflow: %d", got)
	}
}

func TestWorkflowCancel(t *testing.T) {
	ctx := testContext(t)
	started := make(chan string, 1)
	causes := make(chan error, 1)
	env := serverWorkflowEnv(t, map[string]conveyor.Handler{
		"block": func(ctx context.Context, t *conveyor.Task) (any, error) {
			started <- t.ID
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return nil, ctx.Err()
		},
	})
	h := env.submit(t, ctx, conveyor.Chain(conveyor.Sig("block"), addOf(1), addOf(2)).LinkError(sigErrback))
	select {
	case id := <-started:
		if id != h.TaskIDs[0] {
			t.Fatalf("started %s, want %s", id, h.TaskIDs[0])
		}
	case <-ctx.Done():
		t.Fatal("the first task never started")
	}
	n, err := h.Cancel(ctx)
	if err != nil || n != 4 {
		t.Fatalf("cancel: %d nodes, %v (want 4: the running task, two waiting ones and the errback)", n, err)
	}
	// The running handler is told.
	select {
	case cause := <-causes:
		if !errors.Is(cause, conveyor.ErrTaskCancelled) {
			t.Fatalf("handler cancelled with %v", cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the running handler was not cancelled")
	}
	var notSucceeded *conveyor.TaskNotSucceededError
	err = h.Get(ctx, nil)
	if !errors.As(err, &notSucceeded) || notSucceeded.WorkflowID != h.ID || notSucceeded.State != conveyor.StateCancelled ||
		!strings.Contains(err.Error(), "workflow "+h.ID) {
		t.Fatalf("Get of a cancelled workflow: %v", err)
	}
	wf, err := h.Workflow(ctx)
	if err != nil || wf.GetState() != conveyor.WorkflowCancelled {
		t.Fatalf("workflow %v, %v", wf, err)
	}
	for _, n := range wf.GetNodes() {
		if n.GetTask().GetState() != conveyor.StateCancelled {
			t.Fatalf("node %d is %v", n.GetIndex(), n.GetTask().GetState())
		}
	}
	if calls := env.rec.errbackCalls(); len(calls) != 0 {
		t.Fatalf("errback ran on cancel: %v", calls)
	}
	// Cancelling again cancels nothing.
	if n, err := h.Cancel(ctx); err != nil || n != 0 {
		t.Fatalf("second cancel: %d, %v", n, err)
	}
}

func TestWorkflowServerValidation(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	// What the client would refuse, sent by hand: the server refuses it too.
	spec := compile(t, conveyor.Chain(addOf(1, 1), addOf(2)))
	spec.Nodes[0].Parents = []uint32{1}
	if _, err := c.SubmitWorkflowSpec(ctx, spec); conveyor.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "workflow.nodes[") {
		t.Fatalf("cycle: %v", err)
	}
	spec = compile(t, conveyor.Chain(addOf(1, 1), addOf(2)))
	spec.Nodes[1].Task.IdempotencyKey = "k"
	if _, err := c.SubmitWorkflowSpec(ctx, spec); conveyor.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "workflow.nodes[1]") {
		t.Fatalf("node idempotency key: %v", err)
	}
	spec = compile(t, conveyor.Group(addOf(1, 1)))
	spec.Nodes = nil
	spec.Outputs = nil
	if _, err := c.SubmitWorkflowSpec(ctx, spec); conveyor.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty workflow: %v", err)
	}
	// An empty group never reaches the server.
	if _, err := c.SubmitWorkflow(ctx, conveyor.Group()); err == nil || conveyor.Code(err) != codes.Unknown {
		t.Fatalf("empty group: %v", err)
	}
}

func TestWorkflowWaitTimesOut(t *testing.T) {
	env := serverWorkflowEnv(t, nil)
	ctx := testContext(t)
	h := env.submit(t, ctx, conveyor.Chain(conveyor.Sig("slow", conveyor.Args(1, 3000)), addOf(1)))
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := h.Wait(short); !conveyor.IsTimeout(err) {
		t.Fatalf("want a timeout, got %v", err)
	}
	var got int
	if err := h.Get(ctx, &got); err != nil || got != 2 {
		t.Fatalf("after the timeout: %d, %v", got, err)
	}
}

func TestTracingWorkflowPublishSpanCoversTheNodes(t *testing.T) {
	env := serverWorkflowEnv(t, nil)
	exp := installTracing(t)
	ctx, parent := testSpan(testContext(t))
	h := env.submit(t, ctx, conveyor.Chain(addOf(1, 1), addOf(1)))
	parent.End()
	var got int
	if err := h.Get(testContext(t), &got); err != nil || got != 3 {
		t.Fatalf("result %d, %v", got, err)
	}
	spec := h.Spec
	queueName := spec.GetOptions().GetQueue()
	if queueName == "" {
		t.Fatalf("workflow options %v", spec.GetOptions())
	}
	publish := spansNamed(t, exp, "publish "+queueName, 1)[0]
	if publish.Parent.SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("publish span's parent %v, want the test's span", publish.Parent)
	}
	checkAttrs(t, publish, map[string]any{
		"messaging.message.id":          h.ID,
		"messaging.batch.message_count": 2,
		"conveyor.task.name":            "add",
	})
	want := traceparent(publish.SpanContext)
	if spec.GetTraceContext().GetTraceparent() != want {
		t.Errorf("the workflow's traceparent is %q, want the publish span's %q", spec.GetTraceContext().GetTraceparent(), want)
	}
	// Both nodes' attempts are in the producer's trace.
	for _, s := range spansNamed(t, exp, "process "+queueName, 2) {
		if s.SpanContext.TraceID() != parent.SpanContext().TraceID() {
			t.Errorf("process span %v is not in the producer's trace", s.SpanContext)
		}
	}
}
