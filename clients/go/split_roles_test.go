package conveyor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// The SDK against the four roles run as separate `conveyor serve`
// processes on one Redis: per-service endpoints (WithEndpoint, the
// CONVEYOR_<SERVICE>_ADDR variables), the UNIMPLEMENTED hint of a process
// that does not serve a call's role, and one forwarding process (--peer).

// splitLayout is the four role processes of one test, on their own Redis
// key prefix.
type splitLayout struct {
	redis, prefix                             string
	submission, results, dispatch, scheduling string // http:// addresses
}

// deadAddress is an address where nothing listens: a general address that
// per-service endpoints must make unused.
var deadAddress = "http://127.0.0.1:1"

// splitRedis is CONVEYOR_TEST_REDIS (which scripts/test sets), else a
// redis-server of this test's own; the test is skipped when there is none.
func splitRedis(t *testing.T) string {
	t.Helper()
	if url := os.Getenv("CONVEYOR_TEST_REDIS"); url != "" {
		return url
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("no CONVEYOR_TEST_REDIS and no redis-server on PATH: the split-role tests need a Redis (scripts/start-redis)")
	}
	addr := freePort(t)
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	eventually(t, 10*time.Second, "redis-server to accept connections", func() bool {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = conn.Close()
		}
		return err == nil
	})
	return "redis://" + addr
}

// serveRole starts `conveyor serve ROLE` on the layout's store and returns
// its http:// address; it is killed when the test ends.
func serveRole(t *testing.T, l *splitLayout, role string, extra ...string) string {
	t.Helper()
	args := append([]string{"serve", role, "--store", l.redis, "--redis-prefix", l.prefix,
		"--listen", "127.0.0.1:0", "--heartbeat-interval", "200ms", "--lease-ttl", "1s", "--track-started"}, extra...)
	cmd := exec.Command(serverBin(), args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s (set CONVEYOR_BIN to the conveyor binary): %v", serverBin(), err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("log of `conveyor serve %s`:\n%s", role, logs.String())
		}
	})
	addr, err := readListenLine(stdout, 30*time.Second)
	if err != nil {
		t.Fatalf("conveyor serve %s did not start: %v", role, err)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return "http://" + addr
}

var layoutCounter atomic.Int64

// startSplitLayout starts the four roles, one process each, with no peers.
func startSplitLayout(t *testing.T) *splitLayout {
	t.Helper()
	l := &splitLayout{
		redis:  splitRedis(t),
		prefix: fmt.Sprintf("cv-go-split-%d-%d-%d:", os.Getpid(), time.Now().UnixNano(), layoutCounter.Add(1)),
	}
	l.results = serveRole(t, l, "results")
	l.dispatch = serveRole(t, l, "dispatch")
	l.scheduling = serveRole(t, l, "scheduling")
	l.submission = serveRole(t, l, "submission")
	return l
}

// clearEndpointEnv unsets every address variable for the test, so that the
// environment the tests run in cannot steer them.
func clearEndpointEnv(t *testing.T) {
	t.Setenv(conveyor.AddressEnv, "")
	for _, s := range conveyor.Services {
		t.Setenv(s.EnvVar(), "")
	}
}

func (l *splitLayout) endpointOptions() []grpc.DialOption {
	return []grpc.DialOption{
		conveyor.WithEndpoint(conveyor.ServiceSubmission, l.submission),
		conveyor.WithEndpoint(conveyor.ServiceResults, l.results),
		conveyor.WithEndpoint(conveyor.ServiceDispatch, l.dispatch),
		conveyor.WithEndpoint(conveyor.ServiceScheduling, l.scheduling),
	}
}

func dialWith(t *testing.T, addr string, opts ...grpc.DialOption) *conveyor.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := conveyor.Dial(ctx, addr, opts...)
	if err != nil {
		t.Fatalf("Dial(%q): %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// splitWorker runs a worker on conn serving "add" and "forever" (which
// blocks until its context ends and reports why on causes).
func splitWorker(t *testing.T, conn grpc.ClientConnInterface, queue, id string) (causes chan error, done chan error) {
	t.Helper()
	causes = make(chan error, 4)
	w := conveyor.NewWorker(conn, conveyor.WorkerOptions{WorkerID: id, Queues: []string{queue}, Concurrency: 2, Logger: testLogger()})
	w.Register("add", addHandler)
	w.Register("forever", func(ctx context.Context, _ *conveyor.Task) (any, error) {
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return nil, ctx.Err()
	})
	ctx, cancel := context.WithCancel(context.Background())
	done = make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("worker did not stop within 15s")
		}
	})
	return causes, done
}

// exerciseSplit submits, waits for a result, watches a task, cancels a
// running one, lists the workers, pauses a queue and round-trips a
// schedule: a call of each of the four services.
func exerciseSplit(t *testing.T, c *conveyor.Client, conn grpc.ClientConnInterface) {
	t.Helper()
	ctx := testContext(t)
	queue := uniqueQueue(t)
	workerID := "go-split-" + queue
	causes, _ := splitWorker(t, conn, queue, workerID)

	id, err := c.Submit(ctx, "add", conveyor.Args(2, 3), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	var sum int
	if err := c.Result(ctx, id, 15*time.Second, &sum); err != nil || sum != 5 {
		t.Fatalf("Result: %d, %v", sum, err)
	}

	watched, err := c.Submit(ctx, "add", conveyor.Args(20, 22), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	if task := waitForState(t, c, watched, conveyor.StateSucceeded); task.GetResult() == nil {
		t.Fatalf("watched task has no result: %v", task)
	}

	running, err := c.Submit(ctx, "forever", conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	waitForState(t, c, running, conveyor.StateRunning)
	if ok, err := c.Cancel(ctx, running); err != nil || !ok {
		t.Fatalf("Cancel of a running task: %v, %v", ok, err)
	}
	select {
	case cause := <-causes:
		if !errors.Is(cause, conveyor.ErrTaskCancelled) {
			t.Fatalf("the revoked handler's cause: %v", cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the running handler was not cancelled")
	}
	waitForState(t, c, running, conveyor.StateCancelled)

	workers, err := c.Workers(ctx)
	if err != nil {
		t.Fatalf("Workers: %v", err)
	}
	if !slices.ContainsFunc(workers, func(w *conveyor.WorkerInfo) bool { return w.GetWorkerId() == workerID }) {
		t.Fatalf("worker %s not listed: %v", workerID, workers)
	}
	if err := c.PauseQueue(ctx, queue); err != nil {
		t.Fatalf("PauseQueue: %v", err)
	}
	if err := c.ResumeQueue(ctx, queue); err != nil {
		t.Fatalf("ResumeQueue: %v", err)
	}

	scheduleID := "split-" + queue
	s, err := conveyor.NewSchedule(scheduleID, conveyor.Every(time.Hour), "add", conveyor.Args(1, 1), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSchedule(ctx, s); err != nil {
		t.Fatalf("CreateSchedule: %v", err)
	}
	if got, err := c.GetSchedule(ctx, scheduleID); err != nil || got.GetId() != scheduleID {
		t.Fatalf("GetSchedule: %v, %v", got, err)
	}
	if err := c.DeleteSchedule(ctx, scheduleID); err != nil {
		t.Fatalf("DeleteSchedule: %v", err)
	}
}

// A client and a worker given one endpoint per service, each a different
// process, and a general address where nothing listens.
func Test_parity_per_service_endpoints(t *testing.T) {
	clearEndpointEnv(t)
	l := startSplitLayout(t)
	c := dialWith(t, deadAddress, l.endpointOptions()...)
	conns, err := conveyor.NewConns(deadAddress, conveyor.WithEndpoint(conveyor.ServiceDispatch, l.dispatch))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conns.Close() })
	if got := conns.Address(conveyor.ServiceDispatch); got != l.dispatch {
		t.Fatalf("dispatch endpoint %q, want %q", got, l.dispatch)
	}
	exerciseSplit(t, c, conns)
}

// With only the submission process's address (no peers), a results call
// fails with UNIMPLEMENTED: the server's message, then the address called
// and how to point the results service elsewhere. A worker gets the same
// for the dispatch role, and stops.
func TestSplitRolesUnimplementedHint(t *testing.T) {
	clearEndpointEnv(t)
	l := startSplitLayout(t)
	ctx := testContext(t)
	c := dialWith(t, l.submission)
	id, err := c.Submit(ctx, "add", conveyor.Args(1, 2), conveyor.WithQueue(uniqueQueue(t)))
	if err != nil {
		t.Fatalf("Submit on the submission process: %v", err)
	}
	_, err = c.Get(ctx, id)
	if conveyor.Code(err) != codes.Unimplemented {
		t.Fatalf("Get on the submission process: %v, want UNIMPLEMENTED", err)
	}
	for _, want := range []string{
		"does not serve the results role", // the server's message, kept
		"called " + l.submission,
		"set CONVEYOR_RESULTS_ADDR or conveyor.WithEndpoint(conveyor.ServiceResults, …) to reach the results role elsewhere",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error %q does not say %q", err, want)
		}
	}
	if _, err := c.Wait(ctx, id, time.Second); conveyor.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "CONVEYOR_RESULTS_ADDR") {
		t.Errorf("Wait: %v", err)
	}
	if _, err := c.Watch(ctx, id); conveyor.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "CONVEYOR_RESULTS_ADDR") {
		t.Errorf("Watch (a stream): %v", err)
	}
	if _, err := c.Workers(ctx); conveyor.Code(err) != codes.Unimplemented ||
		!strings.Contains(err.Error(), "set CONVEYOR_DISPATCH_ADDR or conveyor.WithEndpoint(conveyor.ServiceDispatch, …)") {
		t.Errorf("Workers: %v", err)
	}
	if _, err := c.ListSchedules(ctx); conveyor.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "CONVEYOR_SCHEDULING_ADDR") {
		t.Errorf("ListSchedules: %v", err)
	}

	conn, err := conveyor.NewConn(l.submission)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_, done := splitWorker(t, conn, uniqueQueue(t), "go-split-refused")
	select {
	case err := <-done:
		done <- err // for the cleanup
		if conveyor.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "does not serve the dispatch role") ||
			!strings.Contains(err.Error(), "set CONVEYOR_DISPATCH_ADDR") {
			t.Fatalf("worker on the submission process: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("a worker on a process without the dispatch role did not stop")
	}
}

// The same layout through the environment: CONVEYOR_<SERVICE>_ADDR over
// CONVEYOR_ADDR, and an explicit WithEndpoint over its variable.
func TestSplitRolesEnvironment(t *testing.T) {
	clearEndpointEnv(t)
	l := startSplitLayout(t)
	t.Setenv(conveyor.AddressEnv, deadAddress)
	t.Setenv("CONVEYOR_SUBMISSION_ADDR", l.submission)
	t.Setenv("CONVEYOR_RESULTS_ADDR", l.results)
	t.Setenv("CONVEYOR_DISPATCH_ADDR", l.dispatch)
	t.Setenv("CONVEYOR_SCHEDULING_ADDR", l.scheduling)
	c := dialWith(t, "")
	conns, err := conveyor.NewConns("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conns.Close() })
	exerciseSplit(t, c, conns)

	// A variable overrides the address argument for its service only.
	ctx := testContext(t)
	t.Setenv("CONVEYOR_SUBMISSION_ADDR", "")
	t.Setenv("CONVEYOR_DISPATCH_ADDR", "")
	t.Setenv("CONVEYOR_SCHEDULING_ADDR", "")
	mixed := dialWith(t, l.submission)
	id, err := mixed.Submit(ctx, "add", conveyor.Args(1, 1), conveyor.WithQueue(uniqueQueue(t)))
	if err != nil {
		t.Fatal(err)
	}
	if task, err := mixed.Get(ctx, id); err != nil || task.GetId() != id {
		t.Fatalf("Get through CONVEYOR_RESULTS_ADDR: %v, %v", task, err)
	}
	if _, err := mixed.Workers(ctx); conveyor.Code(err) != codes.Unimplemented {
		t.Fatalf("Workers went elsewhere than the address argument: %v", err)
	}

	// An explicit endpoint beats the variable.
	t.Setenv("CONVEYOR_RESULTS_ADDR", l.submission)
	explicit := dialWith(t, l.submission, conveyor.WithEndpoint(conveyor.ServiceResults, l.results))
	if _, err := explicit.Get(ctx, id); err != nil {
		t.Fatalf("Get with WithEndpoint over CONVEYOR_RESULTS_ADDR: %v", err)
	}
	if _, err := mixed.Get(ctx, id); err != nil {
		t.Fatalf("a client keeps the addresses it was dialed with: %v", err)
	}
	byEnv := dialWith(t, l.results) // the variable (the submission process) wins over the argument
	if _, err := byEnv.Get(ctx, id); conveyor.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "called "+l.submission) {
		t.Fatalf("Get with CONVEYOR_RESULTS_ADDR at the submission process: %v", err)
	}
}

// One submission process forwarding the other roles (--peer): a client and
// a worker given only its address.
func TestSplitRolesForwarded(t *testing.T) {
	clearEndpointEnv(t)
	l := startSplitLayout(t)
	front := serveRole(t, l, "submission",
		"--peer", "results="+l.results, "--peer", "dispatch="+l.dispatch, "--peer", "scheduling="+l.scheduling)
	c := dialWith(t, front)
	conn, err := conveyor.NewConn(front)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	exerciseSplit(t, c, conn)
}

func TestEndpointOptionChecks(t *testing.T) {
	clearEndpointEnv(t)
	if _, err := conveyor.NewConns("", conveyor.WithEndpoint("result", "http://127.0.0.1:1")); err == nil ||
		!strings.Contains(err.Error(), "submission, results, dispatch, scheduling") {
		t.Fatalf("unknown service: %v", err)
	}
	if _, err := conveyor.NewConns("", conveyor.WithEndpoint(conveyor.ServiceResults, " ")); err == nil {
		t.Fatal("an empty endpoint was accepted")
	}
	conns, err := conveyor.NewConns("")
	if err != nil {
		t.Fatal(err)
	}
	defer conns.Close()
	for _, s := range conveyor.Services {
		if got := conns.Address(s); got != conveyor.DefaultAddress {
			t.Fatalf("%s: %q, want the default %q", s, got, conveyor.DefaultAddress)
		}
	}
	if conns.Conn(conveyor.ServiceResults) != conns.Conn(conveyor.ServiceSubmission) {
		t.Fatal("services at one address do not share its connection")
	}
	want := map[conveyor.Service]string{
		conveyor.ServiceSubmission: "CONVEYOR_SUBMISSION_ADDR",
		conveyor.ServiceResults:    "CONVEYOR_RESULTS_ADDR",
		conveyor.ServiceDispatch:   "CONVEYOR_DISPATCH_ADDR",
		conveyor.ServiceScheduling: "CONVEYOR_SCHEDULING_ADDR",
	}
	for s, env := range want {
		if s.EnvVar() != env {
			t.Fatalf("%s.EnvVar() = %q", s, s.EnvVar())
		}
	}
}
