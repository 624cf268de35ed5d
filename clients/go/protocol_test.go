package conveyor_test

// Protocol tests against an in-process fake dispatcher, which lets the test
// drive what the real one does rarely: CancelAssignment, Drain, a stream
// that breaks.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

type fakeDispatcher struct {
	conveyorv1.UnimplementedDispatchServiceServer
	sessions chan *fakeSession
	// closed receives the remote address of each connection the server
	// closed (after the worker closed it, or the server stopped).
	closed chan string
}

// fakeSession is one Connect stream as the test sees it.
type fakeSession struct {
	stream grpc.BidiStreamingServer[conveyorv1.ConnectRequest, conveyorv1.ConnectResponse]
	// recv carries the worker's messages; it is closed when the worker
	// closes its side (or the stream fails).
	recv chan *conveyorv1.ConnectRequest
	// end, when sent a value, ends the stream with that error (nil: OK).
	end chan error
	// peer is the worker's address: which connection carries the stream.
	peer string
}

func (d *fakeDispatcher) Connect(stream grpc.BidiStreamingServer[conveyorv1.ConnectRequest, conveyorv1.ConnectResponse]) error {
	s := &fakeSession{stream: stream, recv: make(chan *conveyorv1.ConnectRequest, 100), end: make(chan error, 1)}
	if p, ok := peer.FromContext(stream.Context()); ok {
		s.peer = p.Addr.String()
	}
	go func() {
		defer close(s.recv)
		for {
			msg, err := stream.Recv()
			if err != nil {
				// The worker closed its side: close ours, as the real
				// dispatcher does.
				select {
				case s.end <- nil:
				default:
				}
				return
			}
			s.recv <- msg
		}
	}()
	d.sessions <- s
	select {
	case err := <-s.end:
		return err
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
}

func startFakeDispatcher(t *testing.T, opts ...grpc.ServerOption) (*fakeDispatcher, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &fakeDispatcher{sessions: make(chan *fakeSession, 10), closed: make(chan string, 100)}
	srv := grpc.NewServer(opts...)
	conveyorv1.RegisterDispatchServiceServer(srv, d)
	go func() { _ = srv.Serve(closeNotifyingListener{Listener: lis, closed: d.closed}) }()
	t.Cleanup(srv.Stop)
	return d, lis.Addr().String()
}

// closeNotifyingListener reports the remote address of each accepted
// connection when the server closes it.
type closeNotifyingListener struct {
	net.Listener
	closed chan string
}

func (l closeNotifyingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &closeNotifyingConn{Conn: c, closed: l.closed}, nil
}

type closeNotifyingConn struct {
	net.Conn
	closed chan string
	once   sync.Once
}

func (c *closeNotifyingConn) Close() error {
	c.once.Do(func() {
		select {
		case c.closed <- c.RemoteAddr().String():
		default:
		}
	})
	return c.Conn.Close()
}

func (d *fakeDispatcher) accept(t *testing.T) *fakeSession {
	t.Helper()
	select {
	case s := <-d.sessions:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no worker session within 10s")
		return nil
	}
}

func (s *fakeSession) send(t *testing.T, msg *conveyorv1.ConnectResponse) {
	t.Helper()
	if err := s.stream.Send(msg); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// next returns the worker's next message other than a heartbeat; nil when
// the worker closed its side.
func (s *fakeSession) next(t *testing.T) *conveyorv1.ConnectRequest {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case msg, ok := <-s.recv:
			if !ok {
				return nil
			}
			if msg.GetHeartbeat() != nil {
				continue
			}
			return msg
		case <-timeout:
			t.Fatal("no message from the worker within 10s")
			return nil
		}
	}
}

// welcome reads Hello, answers Welcome and returns Hello.
func (s *fakeSession) welcome(t *testing.T) *conveyorv1.Hello {
	t.Helper()
	hello := s.next(t).GetHello()
	if hello == nil {
		t.Fatal("first message is not Hello")
	}
	s.send(t, &conveyorv1.ConnectResponse{Message: &conveyorv1.ConnectResponse_Welcome{Welcome: &conveyorv1.Welcome{
		SessionId:         "s-1",
		HeartbeatInterval: durationpb.New(50 * time.Millisecond),
		LeaseTtl:          durationpb.New(time.Second),
		MaxCredits:        1024,
	}}})
	return hello
}

func (s *fakeSession) assign(t *testing.T, assignments ...*conveyorv1.Assignment) {
	t.Helper()
	s.send(t, &conveyorv1.ConnectResponse{Message: &conveyorv1.ConnectResponse_Assignments{
		Assignments: &conveyorv1.Assignments{Assignments: assignments}}})
}

func assignment(id, name string, token uint64, args ...string) *conveyorv1.Assignment {
	a := &conveyorv1.Assignment{TaskId: id, Name: name, Attempt: 1, LeaseToken: token}
	for _, arg := range args {
		a.Args = append(a.Args, &conveyorv1.Payload{Data: []byte(arg), ContentType: conveyor.JSONContentType})
	}
	return a
}

// startFakeWorker runs a worker against the fake dispatcher at addr.
func startFakeWorker(t *testing.T, addr string, handlers map[string]conveyor.Handler) (cancel func(), done chan error) {
	t.Helper()
	conn, err := conveyor.NewConn(addr)
	if err != nil {
		t.Fatal(err)
	}
	return startFakeWorkerOn(t, conn, handlers)
}

// startFakeWorkerOn runs a worker on conn, and closes conn at the end.
func startFakeWorkerOn(t *testing.T, conn interface {
	grpc.ClientConnInterface
	Close() error
}, handlers map[string]conveyor.Handler) (cancel func(), done chan error) {
	t.Helper()
	w := conveyor.NewWorker(conn, conveyor.WorkerOptions{
		WorkerID: "fake-worker", Queues: []string{"q1", "q2"}, Concurrency: 2,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Logger: testLogger(),
	})
	for name, h := range handlers {
		w.Register(name, h)
	}
	ctx, cancelRun := context.WithCancel(context.Background())
	done = make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancelRun()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("worker did not stop")
		}
		_ = conn.Close()
	})
	return cancelRun, done
}

func TestProtocolHelloCreditsAndOutcomes(t *testing.T) {
	d, addr := startFakeDispatcher(t)
	startFakeWorker(t, addr, map[string]conveyor.Handler{"add": addHandler, "echo": addHandler})
	s := d.accept(t)
	hello := s.welcome(t)
	if hello.GetWorkerId() != "fake-worker" || !slices.Equal(hello.GetQueues(), []string{"q1", "q2"}) ||
		!slices.Equal(hello.GetTaskNames(), []string{"add", "echo"}) || hello.GetConcurrency() != 2 ||
		hello.GetLanguage() != "go" || hello.GetSdkVersion() != conveyor.Version || hello.GetHostname() == "" {
		t.Fatalf("hello %v", hello)
	}
	if got := s.next(t).GetGrantCredits().GetCredits(); got != 2 {
		t.Fatalf("initial credits %d, want 2", got)
	}
	s.assign(t, assignment("t1", "add", 7, "2", "3"))
	started := s.next(t).GetTaskStarted()
	if started.GetTaskId() != "t1" || started.GetLeaseToken() != 7 {
		t.Fatalf("started %v", started)
	}
	outcomes := s.next(t).GetReportOutcomes().GetOutcomes()
	if len(outcomes) != 1 || outcomes[0].GetTaskId() != "t1" || outcomes[0].GetLeaseToken() != 7 ||
		string(outcomes[0].GetResult().GetData()) != "5" {
		t.Fatalf("outcomes %v", outcomes)
	}
	if got := s.next(t).GetGrantCredits().GetCredits(); got != 1 {
		t.Fatalf("credits after a task finished: %d, want 1", got)
	}
	// A name the worker did not register fails as NotRegistered.
	s.assign(t, assignment("t2", "unknown", 8))
	for {
		msg := s.next(t)
		if o := msg.GetReportOutcomes(); o != nil {
			if o.GetOutcomes()[0].GetError().GetType() != "NotRegistered" {
				t.Fatalf("outcome %v", o)
			}
			break
		}
	}
	// Heartbeats flow at Welcome's interval.
	deadline := time.After(5 * time.Second)
	for beats := 0; beats < 3; {
		select {
		case msg := <-s.recv:
			if msg.GetHeartbeat() != nil {
				beats++
			}
		case <-deadline:
			t.Fatal("fewer than 3 heartbeats in 5s at a 50ms interval")
		}
	}
}

func TestProtocolCancelAssignment(t *testing.T) {
	d, addr := startFakeDispatcher(t)
	causes := make(chan error, 1)
	startFakeWorker(t, addr, map[string]conveyor.Handler{
		"block": func(ctx context.Context, _ *conveyor.Task) (any, error) {
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return "ignored", nil
		},
	})
	s := d.accept(t)
	s.welcome(t)
	s.next(t) // credits
	s.assign(t, assignment("t1", "block", 1))
	if s.next(t).GetTaskStarted() == nil {
		t.Fatal("no TaskStarted")
	}
	s.send(t, &conveyorv1.ConnectResponse{Message: &conveyorv1.ConnectResponse_CancelAssignment{
		CancelAssignment: &conveyorv1.CancelAssignment{TaskId: "t1", Reason: "lease expired"}}})
	if cause := <-causes; !errors.Is(cause, conveyor.ErrTaskCancelled) {
		t.Fatalf("cause %v", cause)
	}
	// The slot comes back as a credit; no outcome is reported.
	msg := s.next(t)
	if msg.GetGrantCredits().GetCredits() != 1 {
		t.Fatalf("after the cancelled task finished: %v", msg)
	}
}

func TestProtocolDrainThenReconnect(t *testing.T) {
	d, addr := startFakeDispatcher(t)
	release := make(chan struct{})
	startFakeWorker(t, addr, map[string]conveyor.Handler{
		"wait": func(ctx context.Context, _ *conveyor.Task) (any, error) {
			select {
			case <-release:
				return "done", nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
	})
	s := d.accept(t)
	s.welcome(t)
	s.next(t) // credits
	s.assign(t, assignment("t1", "wait", 1))
	s.next(t) // started
	s.send(t, &conveyorv1.ConnectResponse{Message: &conveyorv1.ConnectResponse_Drain{
		Drain: &conveyorv1.Drain{Grace: durationpb.New(5 * time.Second)}}})
	// An assignment sent during the drain is not started.
	s.assign(t, assignment("t2", "wait", 2))
	close(release)
	// The worker may see t1 finish before it reads the Drain (and grant
	// the slot again), but it starts nothing after the Drain, reports t1,
	// and closes its side.
	reported := false
	for msg := s.next(t); msg != nil; msg = s.next(t) {
		switch {
		case msg.GetReportOutcomes() != nil:
			outcomes := msg.GetReportOutcomes().GetOutcomes()
			if len(outcomes) != 1 || outcomes[0].GetTaskId() != "t1" || reported {
				t.Fatalf("outcomes %v", outcomes)
			}
			reported = true
		case msg.GetGrantCredits() != nil:
		default:
			t.Fatalf("the worker sent %v while draining", msg)
		}
	}
	if !reported {
		t.Fatal("t1 was not reported")
	}
	// The worker comes back with a new session.
	again := d.accept(t)
	again.welcome(t)
	if got := again.next(t).GetGrantCredits().GetCredits(); got != 2 {
		t.Fatalf("credits of the new session: %d", got)
	}
}

func TestProtocolBrokenStreamAbandonsTasks(t *testing.T) {
	d, addr := startFakeDispatcher(t)
	causes := make(chan error, 1)
	startFakeWorker(t, addr, map[string]conveyor.Handler{
		"block": func(ctx context.Context, _ *conveyor.Task) (any, error) {
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return nil, ctx.Err()
		},
	})
	s := d.accept(t)
	s.welcome(t)
	s.next(t) // credits
	s.assign(t, assignment("t1", "block", 1))
	s.next(t) // started
	s.end <- status.Error(codes.Unavailable, "dispatcher restarting")
	if cause := <-causes; !errors.Is(cause, conveyor.ErrStreamLost) {
		t.Fatalf("cause %v", cause)
	}
	again := d.accept(t)
	if again.welcome(t).GetWorkerId() != "fake-worker" {
		t.Fatal("new session has another worker id")
	}
	// The abandoned task gave its slot back: both credits are granted.
	credits := uint32(0)
	for credits < 2 {
		credits += again.next(t).GetGrantCredits().GetCredits()
	}
	if credits != 2 {
		t.Fatalf("credits %d", credits)
	}
}

func TestProtocolRefusedHelloEndsRun(t *testing.T) {
	d, addr := startFakeDispatcher(t)
	_, done := startFakeWorker(t, addr, map[string]conveyor.Handler{"add": addHandler})
	s := d.accept(t)
	s.next(t) // hello
	s.end <- status.Error(codes.PermissionDenied, "not for you")
	select {
	case err := <-done:
		if conveyor.Code(err) != codes.PermissionDenied {
			t.Fatalf("Run: %v", err)
		}
		done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after PERMISSION_DENIED")
	}
}

// Progress travels as ReportProgress with the attempt's lease token, and a
// RetryAfter failure as an outcome whose error carries retry_after.
func TestProtocolProgressAndRetryAfter(t *testing.T) {
	d, addr := startFakeDispatcher(t)
	startFakeWorker(t, addr, map[string]conveyor.Handler{
		"busy": func(_ context.Context, task *conveyor.Task) (any, error) {
			if err := task.ReportProgress("WAITING", 25, map[string]string{"on": "upstream"}); err != nil {
				return nil, err
			}
			return nil, conveyor.RetryAfter(1500*time.Millisecond, conveyor.NonRetryable(conveyor.NewTaskError("Busy", "later")))
		},
	})
	s := d.accept(t)
	s.welcome(t)
	s.next(t) // credits
	s.assign(t, assignment("t1", "busy", 9))
	var progress *conveyorv1.ReportProgress
	var outcome *conveyorv1.TaskOutcome
	for outcome == nil {
		msg := s.next(t)
		if p := msg.GetReportProgress(); p != nil {
			progress = p
		}
		if o := msg.GetReportOutcomes(); o != nil {
			outcome = o.GetOutcomes()[0]
		}
	}
	if progress == nil || progress.GetTaskId() != "t1" || progress.GetLeaseToken() != 9 ||
		progress.GetProgress().GetState() != "WAITING" || progress.GetProgress().GetPercent() != 25 ||
		string(progress.GetProgress().GetMeta().GetData()) != `{"on":"upstream"}` {
		t.Fatalf("progress %v", progress)
	}
	e := outcome.GetError()
	if e.GetType() != "Busy" || !e.GetRetryable() || e.GetRetryAfter().AsDuration() != 1500*time.Millisecond {
		t.Fatalf("outcome error %v", e)
	}
}

// drainForRebalance runs a task through a drain with reason REBALANCE: the
// dispatcher assigns t (its handler waits for release), drains, and expects
// the outcome of t before the worker closes its side.
func drainForRebalance(t *testing.T, s *fakeSession, release chan struct{}, id string, token uint64) {
	t.Helper()
	s.assign(t, assignment(id, "wait", token))
	for {
		msg := s.next(t)
		if msg == nil {
			t.Fatalf("the worker closed its side before starting %s", id)
		}
		if msg.GetTaskStarted() != nil {
			break
		}
	}
	s.send(t, &conveyorv1.ConnectResponse{Message: &conveyorv1.ConnectResponse_Drain{Drain: &conveyorv1.Drain{
		Grace: durationpb.New(5 * time.Second), Reason: conveyorv1.DrainReason_DRAIN_REASON_REBALANCE}}})
	release <- struct{}{}
	reported := false
	for msg := s.next(t); msg != nil; msg = s.next(t) {
		if o := msg.GetReportOutcomes(); o != nil {
			outcomes := o.GetOutcomes()
			if len(outcomes) != 1 || outcomes[0].GetTaskId() != id || outcomes[0].GetLeaseToken() != token ||
				string(outcomes[0].GetResult().GetData()) != `"done"` || reported {
				t.Fatalf("outcomes %v", outcomes)
			}
			reported = true
		}
	}
	if !reported {
		t.Fatalf("%s, assigned before the drain, was not reported", id)
	}
}

func waitHandler(release chan struct{}) conveyor.Handler {
	return func(ctx context.Context, _ *conveyor.Task) (any, error) {
		select {
		case <-release:
			return "done", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// After a Drain, the next session goes on a new connection (a load balancer
// places connections, so a new stream on the old one would reach the same
// replica): the worker dials it as NewConn dialed the first, closes the
// connections it dialed once replaced, and leaves the caller's open.
func Test_parity_reconnect_after_drain_on_new_connection(t *testing.T) {
	d, addr := startFakeDispatcher(t)
	release := make(chan struct{})
	startFakeWorker(t, addr, map[string]conveyor.Handler{"wait": waitHandler(release)})
	var peers []string
	for i := range 3 {
		s := d.accept(t)
		s.welcome(t)
		for _, seen := range peers {
			if s.peer == seen {
				t.Fatalf("session %d came on the connection of an earlier session (%s; earlier: %v)", i+1, s.peer, peers)
			}
		}
		peers = append(peers, s.peer)
		if i < 2 {
			drainForRebalance(t, s, release, fmt.Sprintf("t%d", i+1), uint64(i+1))
		}
	}
	// The second connection, the worker's own, is closed once the third
	// replaced it; the first, the caller's, is not.
	deadline := time.After(10 * time.Second)
	for {
		select {
		case closed := <-d.closed:
			switch closed {
			case peers[0]:
				t.Fatalf("the caller's connection %s was closed", closed)
			case peers[2]:
				t.Fatalf("the current connection %s was closed", closed)
			}
			if closed == peers[1] {
				return
			}
		case <-deadline:
			t.Fatalf("the worker did not close its replaced connection %s within 10s", peers[1])
		}
	}
}

// A worker on NewConns (per-service endpoints) dials the dispatch address anew.
func TestProtocolDrainReconnectsOnNewConnectionWithConns(t *testing.T) {
	d, addr := startFakeDispatcher(t)
	conns, err := conveyor.NewConns("http://127.0.0.1:1", conveyor.WithEndpoint(conveyor.ServiceDispatch, "http://"+addr))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	startFakeWorkerOn(t, conns, map[string]conveyor.Handler{"wait": waitHandler(release)})
	first := d.accept(t)
	first.welcome(t)
	drainForRebalance(t, first, release, "t1", 1)
	second := d.accept(t)
	second.welcome(t)
	if second.peer == first.peer {
		t.Fatalf("the session after the drain came on the same connection (%s)", first.peer)
	}
}

// A connection the SDK did not make cannot be dialed again: the worker
// keeps it, and reconnects on it.
func TestProtocolDrainKeepsForeignConnection(t *testing.T) {
	d, addr := startFakeDispatcher(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	startFakeWorkerOn(t, conn, map[string]conveyor.Handler{"wait": waitHandler(release)})
	first := d.accept(t)
	first.welcome(t)
	drainForRebalance(t, first, release, "t1", 1)
	second := d.accept(t)
	second.welcome(t)
	if second.peer != first.peer {
		t.Fatalf("the session after the drain came on %s, not on the given connection %s", second.peer, first.peer)
	}
}
