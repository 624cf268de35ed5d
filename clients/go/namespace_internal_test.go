package conveyor

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// deniedMessage is what the recording connection answers every call with.
const deniedMessage = "principal 'p' may not do this in namespace 'x'"

// recordingConn records every request message sent through it and answers
// each call PERMISSION_DENIED.
type recordingConn struct {
	mu   sync.Mutex
	msgs []proto.Message
}

func (r *recordingConn) record(m any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, proto.Clone(m.(proto.Message)))
}

func (r *recordingConn) Invoke(_ context.Context, _ string, args, _ any, _ ...grpc.CallOption) error {
	r.record(args)
	return status.Error(codes.PermissionDenied, deniedMessage)
}

func (r *recordingConn) NewStream(ctx context.Context, _ *grpc.StreamDesc, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	return &recordingStream{conn: r, ctx: ctx}, nil
}

type recordingStream struct {
	conn *recordingConn
	ctx  context.Context
}

func (s *recordingStream) Header() (metadata.MD, error) { return metadata.MD{}, nil }
func (s *recordingStream) Trailer() metadata.MD         { return metadata.MD{} }
func (s *recordingStream) CloseSend() error             { return nil }
func (s *recordingStream) Context() context.Context     { return s.ctx }
func (s *recordingStream) SendMsg(m any) error          { s.conn.record(m); return nil }
func (s *recordingStream) RecvMsg(any) error {
	return status.Error(codes.PermissionDenied, deniedMessage)
}

// namespacedRequests are the full names of the request messages of the
// conveyor.v1 services that have a namespace field, and Hello.
func namespacedRequests() []string {
	var names []string
	protoregistry.GlobalFiles.RangeFilesByPackage("conveyor.v1", func(f protoreflect.FileDescriptor) bool {
		msgs := f.Messages()
		for i := range msgs.Len() {
			m := msgs.Get(i)
			if m.Fields().ByName("namespace") == nil {
				continue
			}
			if strings.HasSuffix(string(m.Name()), "Request") || m.Name() == "Hello" {
				names = append(names, string(m.FullName()))
			}
		}
		return true
	})
	slices.Sort(names)
	return names
}

// notWrapped are the namespaced requests of calls the SDK does not wrap
// (the generated clients make them, with the caller's namespace).
var notWrapped = []string{"conveyor.v1.GetSchedulerStatusRequest", "conveyor.v1.WatchEventsRequest"}

// TestEveryRequestCarriesTheNamespace makes every call the SDK wraps, and a
// worker's Hello, through a connection that records them, and checks that
// each request with a namespace field carries the client's (or worker's),
// and that the PERMISSION_DENIED answer comes back, from every call, as an
// error matching ErrPermissionDenied with the server's message.
func TestEveryRequestCarriesTheNamespace(t *testing.T) {
	t.Setenv(NamespaceEnv, "from-env")
	rec := &recordingConn{}
	c := NewClient(rec)
	if c.Namespace() != "from-env" {
		t.Fatalf("NewClient's namespace with %s=from-env: %q", NamespaceEnv, c.Namespace())
	}
	const ns = "team-x"
	c = c.WithNamespace(ns)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	schedule, err := NewSchedule("s", Every(time.Hour), "add")
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]func() error{
		"Submit":     func() error { _, err := c.Submit(ctx, "add"); return err },
		"SubmitMany": func() error { _, err := c.SubmitMany(ctx, []TaskRequest{NewRequest("add")}); return err },
		"SubmitWorkflow": func() error {
			_, err := c.SubmitWorkflow(ctx, Chain(Sig("add"), Sig("add")))
			return err
		},
		"Get":            func() error { _, err := c.Get(ctx, "id"); return err },
		"Wait":           func() error { _, err := c.Wait(ctx, "id", time.Second); return err },
		"Wait (no time)": func() error { _, err := c.Wait(ctx, "id", 0); return err },
		"Result":         func() error { return c.Result(ctx, "id", time.Second, nil) },
		"Watch":          func() error { _, err := c.Watch(ctx, "id"); return err },
		"Cancel":         func() error { _, err := c.Cancel(ctx, "id"); return err },
		"Replay":         func() error { _, err := c.Replay(ctx, "id"); return err },
		"Forget":         func() error { return c.Forget(ctx, "id") },
		"DeadLetters": func() error {
			for _, err := range c.DeadLetters(ctx) {
				return err
			}
			return nil
		},
		"PauseQueue":      func() error { return c.PauseQueue(ctx, "q") },
		"ResumeQueue":     func() error { return c.ResumeQueue(ctx, "q") },
		"Workers":         func() error { _, err := c.Workers(ctx); return err },
		"Queues":          func() error { _, err := c.Queues(ctx); return err },
		"GetWorkflow":     func() error { _, err := c.GetWorkflow(ctx, "id", ViewNodes); return err },
		"WaitWorkflow":    func() error { _, err := c.WaitWorkflow(ctx, "id"); return err },
		"WorkflowResult":  func() error { return c.WorkflowResult(ctx, "id", nil) },
		"WatchWorkflow":   func() error { _, err := c.WatchWorkflow(ctx, "id", ViewNodes); return err },
		"CancelWorkflow":  func() error { _, err := c.CancelWorkflow(ctx, "id"); return err },
		"CreateSchedule":  func() error { _, err := c.CreateSchedule(ctx, schedule); return err },
		"GetSchedule":     func() error { _, err := c.GetSchedule(ctx, "s"); return err },
		"ListSchedules":   func() error { _, err := c.ListSchedules(ctx); return err },
		"UpdateSchedule":  func() error { _, err := c.UpdateSchedule(ctx, schedule); return err },
		"DeleteSchedule":  func() error { return c.DeleteSchedule(ctx, "s") },
		"PauseSchedule":   func() error { _, err := c.PauseSchedule(ctx, "s"); return err },
		"ResumeSchedule":  func() error { _, err := c.ResumeSchedule(ctx, "s"); return err },
		"TriggerSchedule": func() error { _, err := c.TriggerSchedule(ctx, "s"); return err },
		"ScheduleRuns":    func() error { _, err := c.ScheduleRuns(ctx, "s"); return err },
		"Worker.Run": func() error {
			w := NewWorker(rec, WorkerOptions{Namespace: ns, Logger: slog.New(slog.DiscardHandler)})
			w.Register("add", func(context.Context, *Task) (any, error) { return nil, nil })
			return w.Run(ctx)
		},
	}
	for name, call := range calls {
		err := call()
		var rpcErr *RPCError
		if !errors.Is(err, ErrPermissionDenied) || errors.Is(err, ErrUnauthenticated) || !errors.As(err, &rpcErr) ||
			rpcErr.Message() != deniedMessage || !strings.Contains(err.Error(), deniedMessage) {
			t.Errorf("%s: want an *RPCError matching ErrPermissionDenied with the server's message, got %v", name, err)
		}
	}

	seen := map[string]bool{}
	for _, m := range rec.msgs {
		if cr, ok := m.(*conveyorv1.ConnectRequest); ok {
			if cr.GetHello() == nil {
				continue
			}
			m = cr.GetHello()
		}
		desc := m.ProtoReflect().Descriptor()
		field := desc.Fields().ByName("namespace")
		if field == nil {
			continue
		}
		seen[string(desc.FullName())] = true
		if got := m.ProtoReflect().Get(field).String(); got != ns {
			t.Errorf("%s carries namespace %q, want %q", desc.FullName(), got, ns)
		}
	}
	for _, name := range namespacedRequests() {
		if !seen[name] && !slices.Contains(notWrapped, name) {
			t.Errorf("no wrapped call sent %s: wrap its call (and set its namespace), or list it in notWrapped", name)
		}
	}
}

// TestNamespaceOptionsAndEnvironment: WorkerOptions.Namespace, then the
// connection's WithNamespace, then CONVEYOR_NAMESPACE, then "".
func TestNamespaceOptionsAndEnvironment(t *testing.T) {
	t.Setenv(NamespaceEnv, "")
	plain, err := NewConn("http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if ns := NewClient(plain).Namespace(); ns != "" {
		t.Fatalf("no option, no variable: %q", ns)
	}
	t.Setenv(NamespaceEnv, "env")
	conn, err := NewConn("http://127.0.0.1:1", WithNamespace("conn"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conns, err := NewConns("http://127.0.0.1:1", WithNamespace("conns"), WithEndpoint(ServiceDispatch, "http://127.0.0.1:2"))
	if err != nil {
		t.Fatal(err)
	}
	defer conns.Close()
	empty, err := NewConn("http://127.0.0.1:1", WithNamespace(""))
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	for _, tc := range []struct {
		what, got, want string
	}{
		{"client, no option", NewClient(plain).Namespace(), "env"},
		{"client, WithNamespace on NewConn", NewClient(conn).Namespace(), "conn"},
		{"client, WithNamespace on NewConns", NewClient(conns).Namespace(), "conns"},
		{"client, WithNamespace(\"\")", NewClient(empty).Namespace(), "env"},
		{"NewClientWith", NewClientWith(plain, conn).Namespace(), "conn"},
		{"Client.WithNamespace", NewClient(conn).WithNamespace("other").Namespace(), "other"},
		{"Client.WithNamespace(\"\")", NewClient(conn).WithNamespace("").Namespace(), "env"},
		{"worker, no option", NewWorker(plain, WorkerOptions{}).Namespace(), "env"},
		{"worker, WithNamespace on NewConn", NewWorker(conn, WorkerOptions{}).Namespace(), "conn"},
		{"worker, WithNamespace on NewConns", NewWorker(conns, WorkerOptions{}).Namespace(), "conns"},
		{"worker, WorkerOptions.Namespace", NewWorker(conn, WorkerOptions{Namespace: "opt"}).Namespace(), "opt"},
		{"eager client", NewEagerClient(nil).Namespace(), "env"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: namespace %q, want %q", tc.what, tc.got, tc.want)
		}
	}
	// A client of another namespace does not own the connections.
	d := NewClient(conn)
	d.owned = conn
	if other := d.WithNamespace("x"); other.owned != nil || d.owned == nil {
		t.Fatal("Client.WithNamespace: the copy owns the connections")
	}
}

// TestEagerNamespaces: an eager client reports its namespace and keeps
// namespaces apart as a server does.
func TestEagerNamespaces(t *testing.T) {
	t.Setenv(NamespaceEnv, "")
	ctx := context.Background()
	var seen []string
	var mu sync.Mutex
	c := NewEagerClient(map[string]Handler{
		"ns": func(_ context.Context, task *Task) (any, error) {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, task.Namespace)
			return task.Namespace, nil
		},
		"fail": func(context.Context, *Task) (any, error) { return nil, NonRetryable(errors.New("no")) },
	})
	other := c.WithNamespace("team-b")
	id, err := c.Submit(ctx, "ns", WithIdempotencyKey("k"))
	if err != nil {
		t.Fatal(err)
	}
	if task, err := c.Get(ctx, id); err != nil || task.GetNamespace() != "default" {
		t.Fatalf("Get: %v, %v", task, err)
	}
	if _, err := other.Get(ctx, id); Code(err) != codes.NotFound {
		t.Fatalf("Get from another namespace: %v", err)
	}
	if err := other.Forget(ctx, id); Code(err) != codes.NotFound {
		t.Fatalf("Forget from another namespace: %v", err)
	}
	otherID, err := other.Submit(ctx, "ns", WithIdempotencyKey("k"))
	if err != nil || otherID == id {
		t.Fatalf("the same idempotency key in another namespace: %s (first %s), %v", otherID, id, err)
	}
	var got string
	if err := other.Result(ctx, otherID, time.Second, &got); err != nil || got != "team-b" {
		t.Fatalf("result in team-b: %q, %v", got, err)
	}
	if !slices.Equal(seen, []string{"default", "team-b"}) {
		t.Fatalf("handlers saw namespaces %v", seen)
	}
	failed, err := c.Submit(ctx, "fail")
	if err != nil {
		t.Fatal(err)
	}
	for task, err := range other.DeadLetters(ctx) {
		t.Fatalf("team-b's dead letters list %v, %v", task, err)
	}
	if _, err := other.Replay(ctx, failed); Code(err) != codes.NotFound {
		t.Fatalf("Replay from another namespace: %v", err)
	}
	h, err := other.SubmitWorkflow(ctx, Chain(Sig("ns"), Sig("ns")))
	if err != nil {
		t.Fatal(err)
	}
	if wf, err := other.GetWorkflow(ctx, h.ID, ViewNodes); err != nil || wf.GetNamespace() != "team-b" || wf.GetNodes()[0].GetTask().GetNamespace() != "team-b" {
		t.Fatalf("workflow in team-b: %v, %v", wf, err)
	}
	if _, err := c.GetWorkflow(ctx, h.ID, ViewNodes); Code(err) != codes.NotFound {
		t.Fatalf("GetWorkflow from another namespace: %v", err)
	}
}
