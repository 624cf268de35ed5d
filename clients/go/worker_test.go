package conveyor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	"google.golang.org/grpc/codes"
)

// keyError has its own type name in the shared vocabulary.
type keyError struct{ key string }

func (e keyError) Error() string     { return fmt.Sprintf("no key %q", e.key) }
func (e keyError) ErrorType() string { return "KeyError" }

func TestWorkerReportsFailures(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}, Concurrency: 4}, map[string]conveyor.Handler{
		"add": addHandler,
		"fail": func(_ context.Context, t *conveyor.Task) (any, error) {
			var msg string
			if err := t.Arg(0, &msg); err != nil {
				return nil, err
			}
			return nil, conveyor.NonRetryable(conveyor.NewTaskError("ValueError", msg))
		},
		"plain": func(context.Context, *conveyor.Task) (any, error) { return nil, errors.New("plain failure") },
		"typed": func(context.Context, *conveyor.Task) (any, error) {
			return nil, fmt.Errorf("lookup: %w", keyError{"k"})
		},
		"panics":  func(context.Context, *conveyor.Task) (any, error) { panic("kaboom") },
		"badjson": func(context.Context, *conveyor.Task) (any, error) { return math.Inf(1), nil },
	})
	cases := []struct {
		name, typ, message, tracebackHas string
		args                             []any
		retryable                        bool
	}{
		{"fail", "ValueError", "boom from go", "worker_test.go", []any{"boom from go"}, false},
		{"plain", "*errors.errorString", "plain failure", "goroutine", nil, true},
		{"typed", "KeyError", `lookup: no key "k"`, "goroutine", nil, true},
		{"panics", "panic", "kaboom", "worker_test.go", nil, true},
		{"add", conveyor.ArgumentError, "positional argument 1: json: cannot unmarshal string", "goroutine", []any{1, "x"}, false},
		{"add", conveyor.ArgumentError, "missing positional argument 1 (got 1)", "goroutine", []any{1}, false},
		{"badjson", "SerializationError", "cannot encode the result as json", "goroutine", nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name+"/"+tc.typ, func(t *testing.T) {
			id, err := c.Submit(ctx, tc.name, conveyor.Args(tc.args...), conveyor.WithQueue(queue))
			if err != nil {
				t.Fatal(err)
			}
			var failed *conveyor.TaskFailedError
			err = c.Result(ctx, id, 10*time.Second, nil)
			if !errors.As(err, &failed) {
				t.Fatalf("want a TaskFailedError, got %v", err)
			}
			if failed.TaskID != id || failed.Type != tc.typ || !strings.HasPrefix(failed.Message, tc.message) ||
				failed.Retryable != tc.retryable {
				t.Fatalf("got %s %q retryable=%v, want %s %q retryable=%v",
					failed.Type, failed.Message, failed.Retryable, tc.typ, tc.message, tc.retryable)
			}
			if !strings.Contains(failed.Traceback, tc.tracebackHas) {
				t.Fatalf("traceback lacks %q:\n%s", tc.tracebackHas, failed.Traceback)
			}
			if !strings.Contains(err.Error(), tc.typ) {
				t.Fatalf("error text %q lacks the type", err)
			}
		})
	}
}

func TestRetryableFailureRunsAgain(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{
		"flaky": func(_ context.Context, t *conveyor.Task) (any, error) {
			if t.Attempt == 1 {
				return nil, conveyor.NewTaskError("ConnectionError", "try again")
			}
			return t.Attempt, nil
		},
	})
	id, err := c.Submit(ctx, "flaky", conveyor.WithQueue(queue),
		conveyor.WithRetryPolicy(conveyor.RetryPolicy{MaxRetries: 2, BackoffBase: 10 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	var attempt int
	if err := c.Result(ctx, id, 15*time.Second, &attempt); err != nil || attempt != 2 {
		t.Fatalf("result %d, %v", attempt, err)
	}
	task, err := c.Get(ctx, id)
	if err != nil || task.GetAttempt() != 2 || task.GetFailures() != 1 {
		t.Fatalf("task %v, %v", task, err)
	}
}

func TestSoftTimeLimitCancelsTheHandler(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	causes := make(chan error, 1)
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{
		"block": func(ctx context.Context, t *conveyor.Task) (any, error) {
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return nil, ctx.Err()
		},
	})
	id, err := c.Submit(ctx, "block", conveyor.WithQueue(queue), conveyor.WithSoftTimeLimit(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	var failed *conveyor.TaskFailedError
	if err := c.Result(ctx, id, 10*time.Second, nil); !errors.As(err, &failed) || failed.Type != "SoftTimeLimitExceeded" {
		t.Fatalf("result: %v", err)
	}
	if cause := <-causes; !errors.Is(cause, conveyor.ErrSoftTimeLimit) {
		t.Fatalf("cause %v", cause)
	}
}

func TestRateLimitSpacesStarts(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	name := "rated." + queue // its own bucket on the shared server
	var mu sync.Mutex
	var starts []time.Time // measured on the worker side
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}, Concurrency: 4}, map[string]conveyor.Handler{
		name: func(context.Context, *conveyor.Task) (any, error) {
			mu.Lock()
			starts = append(starts, time.Now())
			mu.Unlock()
			return "ok", nil
		},
	})
	var ids []string
	for range 3 {
		id, err := c.Submit(ctx, name, conveyor.WithQueue(queue), conveyor.WithRateLimit("5/s"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, id := range ids {
		if err := c.Result(ctx, id, 15*time.Second, nil); err != nil {
			t.Fatal(err)
		}
		task, err := c.Get(ctx, id)
		if err != nil || task.GetOptions().GetRateLimit() != "5/s" {
			t.Fatalf("task %v, %v", task, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	slices.SortFunc(starts, func(a, b time.Time) int { return a.Compare(b) })
	if len(starts) != 3 {
		t.Fatalf("%d starts", len(starts))
	}
	for i := 1; i < len(starts); i++ {
		if gap := starts[i].Sub(starts[i-1]); gap < 180*time.Millisecond {
			t.Fatalf("starts %d and %d only %s apart", i-1, i, gap)
		}
	}

	_, err := c.Submit(ctx, name, conveyor.WithQueue(queue), conveyor.WithRateLimitKey("tenant-1"))
	if conveyor.Code(err) != codes.InvalidArgument {
		t.Fatalf("a key without a rate: %v", err)
	}
}

func TestGracefulDrain(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	release := make(chan struct{})
	var handlerErr atomic.Value
	w := startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}, Concurrency: 2}, map[string]conveyor.Handler{
		"slow": func(ctx context.Context, t *conveyor.Task) (any, error) {
			select {
			case <-release:
				return "finished", nil
			case <-ctx.Done():
				handlerErr.Store(context.Cause(ctx))
				return nil, ctx.Err()
			}
		},
	})
	running, err := c.Submit(ctx, "slow", conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	waitForState(t, c, running, conveyor.StateRunning)

	w.cancel() // drain: no new work, the running task finishes
	later, err := c.Submit(ctx, "slow", conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-w.done:
		t.Fatalf("Run returned %v while a task was running", err)
	default:
	}
	close(release)
	if err := w.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	var result string
	if err := c.Result(ctx, running, 5*time.Second, &result); err != nil || result != "finished" {
		t.Fatalf("the running task: %q, %v", result, err)
	}
	if cause := handlerErr.Load(); cause != nil {
		t.Fatalf("the handler was cancelled: %v", cause)
	}
	// The task submitted during the drain was not run; it waits in its queue.
	task := waitForState(t, c, later, conveyor.StateQueued)
	if task.GetFailures() != 0 {
		t.Fatalf("the later task failed: %v", task)
	}
	if _, err := c.Cancel(ctx, later); err != nil {
		t.Fatal(err)
	}
}

func TestDrainGracePeriodCancelsHandlers(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	causes := make(chan error, 1)
	w := startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}, GracePeriod: 300 * time.Millisecond}, map[string]conveyor.Handler{
		"stuck": func(ctx context.Context, t *conveyor.Task) (any, error) {
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return nil, ctx.Err()
		},
	})
	id, err := c.Submit(ctx, "stuck", conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	waitForState(t, c, id, conveyor.StateRunning)
	started := time.Now()
	if err := w.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if elapsed := time.Since(started); elapsed < 250*time.Millisecond || elapsed > 5*time.Second {
		t.Fatalf("Run returned %s after cancellation, grace is 300ms", elapsed)
	}
	if cause := <-causes; !errors.Is(cause, conveyor.ErrDrainTimeout) {
		t.Fatalf("cause %v", cause)
	}
	// The abandoned task goes back to its queue, with an attempt counted.
	task := waitForState(t, c, id, conveyor.StateQueued)
	if task.GetFailures() != 0 {
		t.Fatalf("abandoned task: %v", task)
	}
	if _, err := c.Cancel(ctx, id); err != nil {
		t.Fatal(err)
	}
}

func TestWorkerRetriesUntilTheServerAnswers(t *testing.T) {
	conn, err := conveyor.NewConn("127.0.0.1:1") // nothing listens
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	w := conveyor.NewWorker(conn, conveyor.WorkerOptions{Logger: testLogger()})
	w.Register("add", addHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatalf("Run gave up instead of retrying: %v", err)
	}
	empty := conveyor.NewWorker(conn, conveyor.WorkerOptions{})
	if err := empty.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "register at least one handler") {
		t.Fatalf("Run without handlers: %v", err)
	}
	bad := conveyor.NewWorker(conn, conveyor.WorkerOptions{Concurrency: -1})
	bad.Register("add", addHandler)
	if err := bad.Run(context.Background()); err == nil {
		t.Fatal("Run with a negative concurrency succeeded")
	}
}

func TestInvalidHelloIsFatal(t *testing.T) {
	conn, err := conveyor.NewConn(serverAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	w := conveyor.NewWorker(conn, conveyor.WorkerOptions{Queues: []string{"bad queue name!"}, Logger: testLogger()})
	w.Register("add", addHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Run(ctx); conveyor.Code(err) != codes.InvalidArgument {
		t.Fatalf("Run with an invalid queue: %v", err)
	}
}

// exampleWorker starts the example worker program on queue.
func exampleWorker(t *testing.T, queue, workerID string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(exampleBinary(t, "conveyor-example-worker"))
	cmd.Env = append(os.Environ(),
		"CONVEYOR_ADDR="+serverAddr, "CONVEYOR_QUEUE="+queue,
		"CONVEYOR_CONCURRENCY=2", "CONVEYOR_WORKER_ID="+workerID)
	if os.Getenv("CONVEYOR_TEST_VERBOSE") != "" {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}

// waitExit waits (at most timeout) for cmd to exit and returns its error.
func waitExit(t *testing.T, cmd *exec.Cmd, timeout time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%s did not exit within %s", cmd.Path, timeout)
		return nil
	}
}

func TestKilledWorkersTaskRunsAgain(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	victim := exampleWorker(t, queue, "go-test-victim")
	id, err := c.Submit(ctx, "sleep", conveyor.Args(30), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	task := waitForState(t, c, id, conveyor.StateRunning)
	if task.GetWorkerId() != "go-test-victim" || task.GetAttempt() != 1 {
		t.Fatalf("running task: %v", task)
	}
	if err := victim.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = waitExit(t, victim, 10*time.Second)

	rescuer := startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}, WorkerID: "go-test-rescuer"}, map[string]conveyor.Handler{
		"sleep": func(_ context.Context, t *conveyor.Task) (any, error) { return t.Attempt, nil },
	})
	var attempt int
	if err := c.Result(ctx, id, 15*time.Second, &attempt); err != nil || attempt != 2 {
		t.Fatalf("result %d, %v", attempt, err)
	}
	task, err = c.Get(ctx, id)
	if err != nil || task.GetAttempt() != 2 || task.GetFailures() != 0 || task.GetWorkerId() != rescuer.w.WorkerID() {
		t.Fatalf("task %v, %v", task, err)
	}
}

func TestExamplePrograms(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	worker := exampleWorker(t, queue, "go-test-example")

	t.Run("producer", func(t *testing.T) {
		cmd := exec.CommandContext(ctx, exampleBinary(t, "conveyor-example-producer"))
		cmd.Env = append(os.Environ(), "CONVEYOR_ADDR="+serverAddr, "CONVEYOR_QUEUE="+queue)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("producer: %v\n%s", err, stderr.String())
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 1 {
			t.Fatalf("want one line, got %q", out)
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
			t.Fatal(err)
		}
		want := map[string]any{
			"producer": "go", "add": 5.0, "xsum": 6.5, "lang": "go",
			"fail": map[string]any{"type": "ValueError", "message": "boom from go", "has_traceback": true},
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("got  %v\nwant %v", got, want)
		}
		if !strings.HasPrefix(lines[0], `{"producer": "go", "add": 5, "xsum": 6.5, "lang": "go", "fail": {`) {
			t.Fatalf("line %s", lines[0])
		}
	})

	t.Run("handlers", func(t *testing.T) {
		checks := []struct {
			name string
			args []any
			want string
		}{
			{"add", []any{2, 3}, "5"},
			{"add", []any{2, 0.5}, "2.5"},
			{"add", []any{1.5, 1.5}, "3.0"},
			{"xsum", []any{[]any{1, 2, 3}}, "6"},
			{"xsum", []any{[]any{1, 2, 3.5}}, "6.5"},
			{"xsum", []any{[]any{}}, "0"},
			{"lang", nil, `"go"`},
			{"sleep", []any{0.01}, "null"},
		}
		for _, check := range checks {
			id, err := c.Submit(ctx, check.name, conveyor.Args(check.args...), conveyor.WithQueue(queue))
			if err != nil {
				t.Fatal(err)
			}
			var raw json.RawMessage
			if err := c.Result(ctx, id, 10*time.Second, &raw); err != nil {
				t.Fatalf("%s%v: %v", check.name, check.args, err)
			}
			if string(raw) != check.want {
				t.Errorf("%s%v = %s, want %s", check.name, check.args, raw, check.want)
			}
		}
	})

	t.Run("drains on SIGTERM", func(t *testing.T) {
		id, err := c.Submit(ctx, "sleep", conveyor.Args(0.5), conveyor.WithQueue(queue))
		if err != nil {
			t.Fatal(err)
		}
		waitForState(t, c, id, conveyor.StateRunning)
		if err := worker.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := waitExit(t, worker, 10*time.Second); err != nil {
			t.Fatalf("worker exit: %v", err)
		}
		task, err := c.Get(ctx, id)
		if err != nil || task.GetState() != conveyor.StateSucceeded {
			t.Fatalf("task running at SIGTERM: %v, %v", task.GetState(), err)
		}
	})
}

func TestExamplePhilosophers(t *testing.T) {
	ctx := testContext(t)
	cmd := exec.CommandContext(ctx, exampleBinary(t, "conveyor-example-philosophers"))
	cmd.Env = append(os.Environ(), "CONVEYOR_ADDR="+serverAddr, "CONVEYOR_QUEUE="+uniqueQueue(t))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("philosophers: %v\n%s%s", err, out, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 7 {
		t.Fatalf("want 7 lines, got %q", out)
	}
	for i := range 5 {
		if want := fmt.Sprintf("philosopher %d ate 5 meals", i); lines[i] != want {
			t.Fatalf("line %d: %q, want %q", i, lines[i], want)
		}
	}
	var most int
	if _, err := fmt.Sscanf(lines[5], "most eating at once: %d", &most); err != nil || most < 1 || most > 2 {
		t.Fatalf("line %q (%v)", lines[5], err)
	}
	if lines[6] != "fork held by two at once: never" {
		t.Fatalf("line %q", lines[6])
	}
}
