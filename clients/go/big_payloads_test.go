package conveyor_test

// Large payloads against the real server: batches split by bytes, a worker
// receiving tasks of ~4 MB, clients reading them back.

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
)

const (
	kb      = 1024
	arg256K = 256 * kb
	// Four arguments of 900 KB: about 3.5 MB in one task.
	arg900K = 900 * kb
	// Four arguments as large as the server takes (1 MiB each with their
	// JSON quotes, 4 MiB in all): the task's assignment and its GetTask
	// answer are above the 4 MiB grpc-go receives by default.
	argFull = 1024*kb - 6
)

// bigArg is a string of size characters that starts with its index.
func bigArg(i, size int) string {
	head := fmt.Sprintf("%06d:", i)
	return head + strings.Repeat("x", size-len(head))
}

func totalLengthHandler(_ context.Context, t *conveyor.Task) (any, error) {
	total := 0
	for i := range t.NumArgs() {
		var s string
		if err := t.Arg(i, &s); err != nil {
			return nil, err
		}
		total += len(s)
	}
	return total, nil
}

func TestSubmitMany300TasksOf256K(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t) // no worker: the tasks stay queued
	requests := make([]conveyor.TaskRequest, 300)
	for i := range requests {
		requests[i] = conveyor.TaskRequest{Name: "echo", Args: []any{bigArg(i, arg256K)}, Options: []conveyor.Option{conveyor.WithQueue(queue)}}
	}
	ids, err := c.SubmitMany(ctx, requests)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, id := range ids {
		seen[id] = true
	}
	if len(ids) != 300 || len(seen) != 300 {
		t.Fatalf("got %d ids, %d distinct; want 300", len(ids), len(seen))
	}
	for i, id := range ids { // each id is the task submitted at its place
		task, err := c.Get(ctx, id)
		if err != nil {
			t.Fatalf("task %d: %v", i, err)
		}
		var arg string
		if err := conveyor.DecodeJSON(task.GetArgs()[0], &arg); err != nil {
			t.Fatal(err)
		}
		if task.GetState() != conveyor.StateQueued || len(arg) != arg256K || !strings.HasPrefix(arg, fmt.Sprintf("%06d:", i)) {
			t.Fatalf("task %d (%s): %v, argument %.10q of %d bytes", i, id, task.GetState(), arg, len(arg))
		}
	}
}

func TestWorkerWith50SlotsRunsLargeTasks(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}, Concurrency: 50},
		map[string]conveyor.Handler{"total_length": totalLengthHandler})
	requests := make([]conveyor.TaskRequest, 200)
	for i := range requests {
		requests[i] = conveyor.TaskRequest{Name: "total_length", Args: []any{bigArg(i, arg256K)}, Options: []conveyor.Option{conveyor.WithQueue(queue)}}
	}
	ids, err := c.SubmitMany(ctx, requests)
	if err != nil {
		t.Fatal(err)
	}
	var big, full []any
	for i := range 4 {
		big = append(big, bigArg(i, arg900K))
		full = append(full, bigArg(i, argFull))
	}
	bigID, err := c.Submit(ctx, "total_length", conveyor.Args(big...), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	fullID, err := c.Submit(ctx, "total_length", conveyor.Args(full...), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	failures := make(chan error, len(ids))
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var n int
			if err := c.Result(ctx, id, 20*time.Second, &n); err != nil || n != arg256K {
				failures <- fmt.Errorf("task %d: %d, %v", i, n, err)
			}
		}()
	}
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}

	// A client on a connection dialed without the SDK's options reads the
	// 4 MiB task too: the client sets its own message limits.
	plain, err := grpc.NewClient(strings.TrimPrefix(serverAddr, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	plainClient := conveyor.NewClient(plain)

	for _, tc := range []struct {
		id   string
		args []any
	}{{bigID, big}, {fullID, full}} {
		want := 4 * len(tc.args[0].(string))
		var n int
		if err := c.Result(ctx, tc.id, 20*time.Second, &n); err != nil || n != want {
			t.Fatalf("task %s: %d, %v; want %d", tc.id, n, err, want)
		}
		for _, read := range []func() (*conveyor.TaskInfo, error){
			func() (*conveyor.TaskInfo, error) { return c.Get(ctx, tc.id) },
			func() (*conveyor.TaskInfo, error) { return plainClient.Get(ctx, tc.id) },
		} {
			task, err := read()
			if err != nil {
				t.Fatalf("task %s: %v", tc.id, err)
			}
			if task.GetState() != conveyor.StateSucceeded || len(task.GetArgs()) != 4 {
				t.Fatalf("task %s: %v with %d args", tc.id, task.GetState(), len(task.GetArgs()))
			}
			for i, p := range task.GetArgs() {
				var s string
				if err := conveyor.DecodeJSON(p, &s); err != nil || s != tc.args[i] {
					t.Fatalf("task %s: argument %d differs (%v)", tc.id, i, err)
				}
			}
		}
		// WaitTask answers with the outcome, without the arguments.
		waited, err := c.Wait(ctx, tc.id, 5*time.Second)
		if err != nil || waited.GetState() != conveyor.StateSucceeded || len(waited.GetArgs()) != 0 {
			t.Fatalf("wait %s: %v, %v, %d args", tc.id, err, waited.GetState(), len(waited.GetArgs()))
		}
	}
}

// syncBuffer is a log sink safe for the worker's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startPlainWorker runs a worker against addr on a connection dialed
// without the SDK's options (grpc-go's 4 MiB receive limit), logging to logs.
func startPlainWorker(t *testing.T, addr string, logs *syncBuffer) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	w := conveyor.NewWorker(conn, conveyor.WorkerOptions{
		WorkerID: "plain-worker", Queues: []string{"q"}, Concurrency: 2,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	w.Register("total_length", totalLengthHandler)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("worker did not stop")
		}
		_ = conn.Close()
	})
}

func welcomeWithFrames(maxFrameBytes uint32) *conveyorv1.ConnectResponse {
	return &conveyorv1.ConnectResponse{Message: &conveyorv1.ConnectResponse_Welcome{Welcome: &conveyorv1.Welcome{
		SessionId:         "s-big",
		HeartbeatInterval: durationpb.New(50 * time.Millisecond),
		LeaseTtl:          durationpb.New(time.Second),
		MaxCredits:        1024,
		MaxFrameBytes:     maxFrameBytes,
	}}}
}

// welcomedWorker starts a worker against a fake dispatcher, reads its Hello
// and answers with a Welcome saying maxFrameBytes; it returns the session and
// the worker's logs.
func welcomedWorker(t *testing.T, maxFrameBytes uint32) (*fakeSession, *syncBuffer) {
	t.Helper()
	d, addr := startFakeDispatcher(t)
	logs := &syncBuffer{}
	startPlainWorker(t, addr, logs)
	s := d.accept(t)
	if s.next(t).GetHello() == nil {
		t.Fatal("first message is not Hello")
	}
	s.send(t, welcomeWithFrames(maxFrameBytes))
	return s, logs
}

func TestProtocolWorkerReceivesAFrameAbove4MiB(t *testing.T) {
	s, logs := welcomedWorker(t, 8<<20)
	if s.next(t).GetGrantCredits() == nil {
		t.Fatal("no credits")
	}
	// One frame of 6 MB: two tasks of three 1 MB arguments.
	arg := `"` + strings.Repeat("y", 1000*1000) + `"`
	s.assign(t, assignment("a", "total_length", 1, arg, arg, arg), assignment("b", "total_length", 2, arg, arg, arg))
	results := map[string]string{}
	for len(results) < 2 {
		msg := s.next(t)
		if msg == nil {
			t.Fatalf("the worker closed the stream; logs:\n%s", logs.String())
		}
		for _, o := range msg.GetReportOutcomes().GetOutcomes() {
			results[o.GetTaskId()] = string(o.GetResult().GetData())
		}
	}
	if results["a"] != "3000000" || results["b"] != "3000000" {
		t.Fatalf("results %v", results)
	}
	if strings.Contains(logs.String(), "upgrade") {
		t.Fatalf("unexpected upgrade error:\n%s", logs.String())
	}
}

func TestProtocolWorkerLogsAnErrorWhenFramesExceedItsReceiveLimit(t *testing.T) {
	_, logs := welcomedWorker(t, 128<<20)
	eventually(t, 5*time.Second, "the upgrade error", func() bool {
		return strings.Contains(logs.String(), "level=ERROR") && strings.Contains(logs.String(), "upgrade the conveyor Go SDK")
	})
	if !strings.Contains(logs.String(), "max_frame_bytes=134217728") {
		t.Fatalf("logs:\n%s", logs.String())
	}
}
