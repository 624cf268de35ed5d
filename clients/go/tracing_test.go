package conveyor_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// These tests swap the global tracer provider, so none of them is parallel
// (nor is any other test of the package).

// installTracing makes an SDK tracer provider exporting to memory the
// global one for the test (the SDK looks the provider up at each use, so
// clients and workers created before still trace), and puts a no-op one
// back at the end.
func installTracing(t *testing.T) *tracetest.InMemoryExporter {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	otel.SetTracerProvider(tp)
	t.Cleanup(func() {
		otel.SetTracerProvider(noop.NewTracerProvider())
		_ = tp.Shutdown(context.Background())
	})
	return exp
}

// metadataRecorder keeps the outgoing metadata of every unary call.
type metadataRecorder struct {
	mu    sync.Mutex
	calls map[string][]metadata.MD // full method -> metadata of each call
}

func (r *metadataRecorder) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	md, _ := metadata.FromOutgoingContext(ctx)
	r.mu.Lock()
	r.calls[method] = append(r.calls[method], md.Copy())
	r.mu.Unlock()
	return invoker(ctx, method, req, reply, cc, opts...)
}

// values returns the values of key sent with each call of method.
func (r *metadataRecorder) values(method, key string) [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]string
	for _, md := range r.calls["/conveyor.v1."+method] {
		out = append(out, md.Get(key))
	}
	return out
}

// recordingClient is a client whose calls' metadata is recorded.
func recordingClient(t *testing.T) (*conveyor.Client, *metadataRecorder) {
	t.Helper()
	rec := &metadataRecorder{calls: map[string][]metadata.MD{}}
	conn, err := conveyor.NewConn(serverAddr, grpc.WithUnaryInterceptor(rec.intercept))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conveyor.NewClient(conn), rec
}

// traceparent is the W3C traceparent of sc.
func traceparent(sc trace.SpanContext) string {
	return fmt.Sprintf("00-%s-%s-%s", sc.TraceID(), sc.SpanID(), sc.TraceFlags())
}

func attrs(s tracetest.SpanStub) map[attribute.Key]attribute.Value {
	out := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes {
		out[kv.Key] = kv.Value
	}
	return out
}

// checkAttrs fails unless span s has each of want (string or int values).
func checkAttrs(t *testing.T, s tracetest.SpanStub, want map[string]any) {
	t.Helper()
	got := attrs(s)
	for k, v := range want {
		value, ok := got[attribute.Key(k)]
		if !ok {
			t.Errorf("span %q lacks attribute %s (has %v)", s.Name, k, s.Attributes)
			continue
		}
		if fmt.Sprint(value.AsInterface()) != fmt.Sprint(v) {
			t.Errorf("span %q: %s = %v, want %v", s.Name, k, value.AsInterface(), v)
		}
	}
}

// spansNamed returns the ended spans named name, waiting (up to 10 s) until
// there are at least n of them.
func spansNamed(t *testing.T, exp *tracetest.InMemoryExporter, name string, n int) []tracetest.SpanStub {
	t.Helper()
	var found []tracetest.SpanStub
	eventually(t, 10*time.Second, fmt.Sprintf("%d span(s) named %q", n, name), func() bool {
		found = found[:0]
		for _, s := range exp.GetSpans() {
			if s.Name == name {
				found = append(found, s)
			}
		}
		return len(found) >= n
	})
	return found
}

// testSpan starts the test's own span, the parent of the SDK's spans.
func testSpan(ctx context.Context) (context.Context, trace.Span) {
	return otel.Tracer("conveyor-test").Start(ctx, "test")
}

func TestTracingPublishSpanIsAChildAndTravelsWithTheTask(t *testing.T) {
	c, rec := recordingClient(t) // created before the provider is installed
	exp := installTracing(t)
	queue := uniqueQueue(t)
	ctx, parent := testSpan(testContext(t))
	id, err := c.Submit(ctx, "traced.noop", conveyor.WithQueue(queue))
	parent.End()
	if err != nil {
		t.Fatal(err)
	}

	publish := spansNamed(t, exp, "publish "+queue, 1)[0]
	if publish.SpanKind != trace.SpanKindProducer {
		t.Errorf("publish span kind %v", publish.SpanKind)
	}
	if publish.Parent.SpanID() != parent.SpanContext().SpanID() || publish.SpanContext.TraceID() != parent.SpanContext().TraceID() {
		t.Errorf("publish span's parent %v, want the test's span %v", publish.Parent, parent.SpanContext())
	}
	if publish.InstrumentationScope.Name != "conveyor" || publish.InstrumentationScope.Version != conveyor.Version {
		t.Errorf("instrumentation scope %+v", publish.InstrumentationScope)
	}
	checkAttrs(t, publish, map[string]any{
		"messaging.system":           "conveyor",
		"messaging.operation.type":   "send",
		"messaging.operation.name":   "publish",
		"messaging.destination.name": queue,
		"conveyor.task.name":         "traced.noop",
		"messaging.message.id":       id,
	})
	want := traceparent(publish.SpanContext)
	task, err := c.Get(testContext(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if got := task.GetTraceContext().GetTraceparent(); got != want {
		t.Errorf("the task's traceparent is %q, want the publish span's %q", got, want)
	}
	if got := rec.values("SubmissionService/SubmitTask", "traceparent"); len(got) != 1 || len(got[0]) != 1 || got[0][0] != want {
		t.Errorf("SubmitTask's traceparent metadata %v, want [[%s]]", got, want)
	}
	if got := rec.values("ResultsService/GetTask", "traceparent"); len(got) != 1 || len(got[0]) != 0 {
		t.Errorf("GetTask outside any span sent traceparent %v", got)
	}
}

func TestTracingBatchHasOneSpanAndKeepsAnExplicitContext(t *testing.T) {
	c, rec := recordingClient(t)
	exp := installTracing(t)
	queue := uniqueQueue(t)
	explicit := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	ctx, parent := testSpan(testContext(t))
	ids, err := c.SubmitMany(ctx, []conveyor.TaskRequest{
		{Name: "traced.noop", Options: []conveyor.Option{conveyor.WithQueue(queue)}},
		{Name: "traced.noop", Options: []conveyor.Option{conveyor.WithQueue(queue)}},
		{Name: "traced.noop", Options: []conveyor.Option{conveyor.WithQueue(queue), conveyor.WithTraceContext(explicit, "k=v")}},
	})
	parent.End()
	if err != nil {
		t.Fatal(err)
	}
	spans := spansNamed(t, exp, "publish "+queue, 1)
	if len(spans) != 1 {
		t.Fatalf("%d publish spans for one batch", len(spans))
	}
	publish := spans[0]
	if publish.Parent.SpanID() != parent.SpanContext().SpanID() || publish.SpanKind != trace.SpanKindProducer {
		t.Errorf("publish span: parent %v kind %v", publish.Parent, publish.SpanKind)
	}
	checkAttrs(t, publish, map[string]any{
		"messaging.system":              "conveyor",
		"messaging.operation.type":      "send",
		"messaging.destination.name":    queue,
		"messaging.batch.message_count": 3,
		"conveyor.task.name":            "traced.noop",
	})
	want := traceparent(publish.SpanContext)
	for i, id := range ids {
		task, err := c.Get(testContext(t), id)
		if err != nil {
			t.Fatal(err)
		}
		tc := task.GetTraceContext()
		if i < 2 && tc.GetTraceparent() != want {
			t.Errorf("task %d: traceparent %q, want the publish span's %q", i, tc.GetTraceparent(), want)
		}
		if i == 2 && (tc.GetTraceparent() != explicit || tc.GetTracestate() != "k=v") {
			t.Errorf("the explicit trace context became %v", tc)
		}
	}
	if got := rec.values("SubmissionService/SubmitTasks", "traceparent"); len(got) != 1 || len(got[0]) != 1 || got[0][0] != want {
		t.Errorf("SubmitTasks' traceparent metadata %v, want [[%s]]", got, want)
	}
}

func TestTracingWorkerProcessSpanContinuesTheTrace(t *testing.T) {
	c := newClient(t)
	exp := installTracing(t)
	queue := uniqueQueue(t)
	var handlerSpan atomic.Value // trace.SpanContext the handler's ctx carries
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{
		"traced.echo": func(ctx context.Context, task *conveyor.Task) (any, error) {
			handlerSpan.Store(trace.SpanContextFromContext(ctx))
			_, inner := otel.Tracer("conveyor-test").Start(ctx, "inner")
			inner.End()
			var s string
			err := task.Arg(0, &s)
			return s, err
		},
	})
	ctx, parent := testSpan(testContext(t))
	id, err := c.Submit(ctx, "traced.echo", conveyor.Args("hi"), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	var out string
	if err := c.Result(ctx, id, 10*time.Second, &out); err != nil || out != "hi" {
		t.Fatalf("result %q, %v", out, err)
	}
	parent.End()

	publish := spansNamed(t, exp, "publish "+queue, 1)[0]
	process := spansNamed(t, exp, "process "+queue, 1)[0]
	if process.SpanKind != trace.SpanKindConsumer {
		t.Errorf("process span kind %v", process.SpanKind)
	}
	if process.SpanContext.TraceID() != publish.SpanContext.TraceID() {
		t.Errorf("process span in trace %s, publish span in %s", process.SpanContext.TraceID(), publish.SpanContext.TraceID())
	}
	if !process.Parent.IsValid() || !process.Parent.IsRemote() {
		t.Errorf("process span's parent %v is not a remote span context", process.Parent)
	}
	// The server either passes the publish span's context on or sends that
	// of its own deliver span, a child of it: same trace either way.
	t.Logf("process parent %s, publish span %s", process.Parent.SpanID(), publish.SpanContext.SpanID())
	checkAttrs(t, process, map[string]any{
		"messaging.system":           "conveyor",
		"messaging.operation.type":   "process",
		"messaging.operation.name":   "process",
		"messaging.destination.name": queue,
		"messaging.message.id":       id,
		"conveyor.task.name":         "traced.echo",
		"conveyor.task.attempt":      1,
	})
	if process.Status.Code == codes.Error {
		t.Errorf("a successful attempt's span has status %v", process.Status)
	}
	if got, _ := handlerSpan.Load().(trace.SpanContext); !got.Equal(process.SpanContext) {
		t.Errorf("the handler's ctx carries span %v, want the process span %v", got, process.SpanContext)
	}
	inner := spansNamed(t, exp, "inner", 1)[0]
	if inner.Parent.SpanID() != process.SpanContext.SpanID() {
		t.Errorf("the handler's own span has parent %v, want the process span", inner.Parent)
	}
}

// A worker of two queues names the span after the queue the assignment
// says the task was routed to (Assignment.queue), not the first queue nor
// plain "process".
func TestTracingWorkerOfTwoQueuesNamesTheSpanAfterTheTasksQueue(t *testing.T) {
	c := newClient(t)
	exp := installTracing(t)
	first, second := uniqueQueue(t), uniqueQueue(t)
	startWorker(t, conveyor.WorkerOptions{Queues: []string{first, second}}, map[string]conveyor.Handler{"add": addHandler})
	ctx, parent := testSpan(testContext(t))
	id, err := c.Submit(ctx, "add", conveyor.Args(1, 2), conveyor.WithQueue(second))
	if err != nil {
		t.Fatal(err)
	}
	var sum int
	if err := c.Result(ctx, id, 10*time.Second, &sum); err != nil || sum != 3 {
		t.Fatalf("result %d, %v", sum, err)
	}
	parent.End()

	process := spansNamed(t, exp, "process "+second, 1)[0]
	checkAttrs(t, process, map[string]any{
		"messaging.destination.name": second,
		"messaging.message.id":       id,
	})
	if process.SpanContext.TraceID() != parent.SpanContext().TraceID() {
		t.Errorf("process span in trace %s, want %s", process.SpanContext.TraceID(), parent.SpanContext().TraceID())
	}
	for _, s := range exp.GetSpans() {
		if s.Name == "process" || s.Name == "process "+first {
			t.Errorf("unexpected span %q (attributes %v)", s.Name, s.Attributes)
		}
	}
}

func TestTracingRetriedTaskHasTwoProcessSpansInOneTrace(t *testing.T) {
	c := newClient(t)
	exp := installTracing(t)
	queue := uniqueQueue(t)
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{
		"traced.flaky": func(_ context.Context, task *conveyor.Task) (any, error) {
			if task.Attempt == 1 {
				return nil, conveyor.RetryAfter(50*time.Millisecond, conveyor.NewTaskError("Flaky", "first attempt fails"))
			}
			return "ok", nil
		},
	})
	ctx, parent := testSpan(testContext(t))
	id, err := c.Submit(ctx, "traced.flaky", conveyor.WithQueue(queue), conveyor.WithMaxRetries(1))
	if err != nil {
		t.Fatal(err)
	}
	var out string
	if err := c.Result(ctx, id, 15*time.Second, &out); err != nil || out != "ok" {
		t.Fatalf("result %q, %v", out, err)
	}
	parent.End()

	spans := spansNamed(t, exp, "process "+queue, 2)
	if len(spans) != 2 {
		t.Fatalf("%d process spans, want 2", len(spans))
	}
	byAttempt := map[int64]tracetest.SpanStub{}
	for _, s := range spans {
		byAttempt[attrs(s)["conveyor.task.attempt"].AsInt64()] = s
		if s.SpanContext.TraceID() != parent.SpanContext().TraceID() {
			t.Errorf("process span of attempt %v in trace %s, want %s", attrs(s)["conveyor.task.attempt"].AsInt64(), s.SpanContext.TraceID(), parent.SpanContext().TraceID())
		}
	}
	first, second := byAttempt[1], byAttempt[2]
	if first.Name == "" || second.Name == "" {
		t.Fatalf("attempts of the process spans: %v", byAttempt)
	}
	if first.Status.Code != codes.Error || !strings.Contains(first.Status.Description, "first attempt fails") {
		t.Errorf("first attempt's status %+v, want ERROR", first.Status)
	}
	recorded := false
	for _, ev := range first.Events {
		if ev.Name == "exception" {
			recorded = true
		}
	}
	if !recorded {
		t.Errorf("the failed attempt's span recorded no exception: %v", first.Events)
	}
	checkAttrs(t, first, map[string]any{"error.type": "Flaky", "messaging.message.id": id})
	if second.Status.Code == codes.Error || len(second.Events) != 0 {
		t.Errorf("second attempt's span: status %+v, events %v", second.Status, second.Events)
	}
}

func TestTracingWaitSpanCarriesTheTaskID(t *testing.T) {
	c, rec := recordingClient(t)
	exp := installTracing(t)
	queue := uniqueQueue(t)
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{"add": addHandler})
	id, err := c.Submit(testContext(t), "add", conveyor.Args(2, 3), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	ctx, parent := testSpan(testContext(t))
	var sum int
	if err := c.Result(ctx, id, 10*time.Second, &sum); err != nil || sum != 5 {
		t.Fatalf("result %d, %v", sum, err)
	}
	parent.End()
	wait := spansNamed(t, exp, "wait", 1)[0]
	if wait.SpanKind != trace.SpanKindClient || wait.Parent.SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("wait span: kind %v parent %v", wait.SpanKind, wait.Parent)
	}
	checkAttrs(t, wait, map[string]any{"messaging.system": "conveyor", "messaging.message.id": id})
	want := traceparent(wait.SpanContext)
	got := rec.values("ResultsService/WaitTask", "traceparent")
	if len(got) == 0 {
		t.Fatal("no WaitTask call recorded")
	}
	for _, values := range got {
		if len(values) != 1 || values[0] != want {
			t.Errorf("WaitTask's traceparent metadata %v, want [%s]", values, want)
		}
	}
}

func TestTracingWithoutProviderSetsNoTraceContext(t *testing.T) {
	otel.SetTracerProvider(noop.NewTracerProvider())
	c, rec := recordingClient(t)
	queue := uniqueQueue(t)
	var handlerSpan atomic.Value
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{
		"traced.echo": func(ctx context.Context, _ *conveyor.Task) (any, error) {
			handlerSpan.Store(trace.SpanContextFromContext(ctx))
			return nil, nil
		},
	})
	ctx := testContext(t)
	id, err := c.Submit(ctx, "traced.echo", conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	ids, err := c.SubmitMany(ctx, []conveyor.TaskRequest{{Name: "traced.echo", Options: []conveyor.Option{conveyor.WithQueue(queue)}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range append(ids, id) {
		task, err := c.Wait(ctx, id, 10*time.Second)
		if err != nil || task.GetState() != conveyor.StateSucceeded {
			t.Fatalf("task %s: %v, %v", id, task.GetState(), err)
		}
		if task, err = c.Get(ctx, id); err != nil {
			t.Fatal(err)
		}
		if task.GetTraceContext() != nil {
			t.Errorf("task %s has trace context %v with no tracer provider", id, task.GetTraceContext())
		}
	}
	for _, method := range []string{"SubmissionService/SubmitTask", "SubmissionService/SubmitTasks", "ResultsService/WaitTask"} {
		calls := rec.values(method, "traceparent")
		if len(calls) == 0 {
			t.Errorf("no %s call recorded", method)
		}
		for _, values := range calls {
			if len(values) != 0 {
				t.Errorf("%s sent traceparent %v with no tracer provider", method, values)
			}
		}
	}
	if got, _ := handlerSpan.Load().(trace.SpanContext); got.IsValid() {
		t.Errorf("the handler's ctx carries a valid span context %v with no tracer provider", got)
	}
}

func TestTracingEagerClientTracesLikeAWorker(t *testing.T) {
	exp := installTracing(t)
	c := conveyor.NewEagerClient(map[string]conveyor.Handler{"add": addHandler})
	ctx, parent := testSpan(context.Background())
	id, err := c.Submit(ctx, "add", conveyor.Args(1, 2), conveyor.WithQueue("eager-q"))
	parent.End()
	if err != nil {
		t.Fatal(err)
	}
	publish := spansNamed(t, exp, "publish eager-q", 1)[0]
	process := spansNamed(t, exp, "process eager-q", 1)[0]
	if publish.Parent.SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("publish span's parent %v", publish.Parent)
	}
	if process.Parent.SpanID() != publish.SpanContext.SpanID() || process.SpanContext.TraceID() != publish.SpanContext.TraceID() {
		t.Errorf("process span's parent %v, want the publish span %v", process.Parent, publish.SpanContext)
	}
	checkAttrs(t, process, map[string]any{"messaging.message.id": id, "conveyor.task.attempt": 1})
}
