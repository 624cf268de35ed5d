package conveyor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func addHandler(_ context.Context, t *conveyor.Task) (any, error) {
	var a, b int
	if err := t.Arg(0, &a); err != nil {
		return nil, err
	}
	if err := t.Arg(1, &b); err != nil {
		return nil, err
	}
	return a + b, nil
}

func TestSubmitAndResult(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	w := startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}, Concurrency: 4}, map[string]conveyor.Handler{
		"add": addHandler,
		"greet": func(_ context.Context, t *conveyor.Task) (any, error) {
			var name string
			if err := t.Kwarg("name", &name); err != nil {
				return nil, err
			}
			return map[string]any{"greeting": "hello " + name, "header": t.Headers["x-test"]}, nil
		},
	})

	id, err := c.Submit(ctx, "add", conveyor.Args(2, 2), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	var sum int
	if err := c.Result(ctx, id, 10*time.Second, &sum); err != nil {
		t.Fatal(err)
	}
	if sum != 4 {
		t.Fatalf("add(2, 2) = %d", sum)
	}
	task, err := c.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if task.GetState() != conveyor.StateSucceeded || task.GetAttempt() != 1 || task.GetQueue() != queue ||
		task.GetWorkerId() != w.w.WorkerID() || task.GetName() != "add" {
		t.Fatalf("unexpected task %v", task)
	}

	id, err = c.Submit(ctx, "greet", conveyor.Kwarg("name", "gopher"), conveyor.WithQueue(queue),
		conveyor.WithHeader("x-test", "h1"), conveyor.WithPriority(5), conveyor.WithResultTTL(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var greeting struct{ Greeting, Header string }
	if err := c.Result(ctx, id, 10*time.Second, &greeting); err != nil {
		t.Fatal(err)
	}
	if greeting.Greeting != "hello gopher" || greeting.Header != "h1" {
		t.Fatalf("greet = %+v", greeting)
	}
}

func TestSubmitManyInBatches(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	const n = conveyor.MaxTasksPerBatch + 1 // two SubmitTasks calls
	requests := make([]conveyor.TaskRequest, n)
	for i := range requests {
		requests[i] = conveyor.TaskRequest{Name: "add", Args: []any{i, i}, Options: []conveyor.Option{conveyor.WithQueue(queue)}}
	}
	ids, err := c.SubmitMany(ctx, requests)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, id := range ids {
		seen[id] = true
	}
	if len(ids) != n || len(seen) != n {
		t.Fatalf("got %d ids, %d distinct; want %d", len(ids), len(seen), n)
	}
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}, Concurrency: 16}, map[string]conveyor.Handler{"add": addHandler})
	for _, i := range []int{0, 999, 1000} {
		var sum int
		if err := c.Result(ctx, ids[i], 20*time.Second, &sum); err != nil {
			t.Fatalf("task %d: %v", i, err)
		}
		if sum != 2*i {
			t.Fatalf("task %d: add(%d, %d) = %d", i, i, i, sum)
		}
	}
	// Every task ran once and succeeded (waits in parallel: one round trip
	// each would be slow).
	failures := make(chan error, len(ids))
	next := make(chan int)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				task, err := c.Wait(ctx, ids[i], 20*time.Second)
				if err == nil && (task.GetState() != conveyor.StateSucceeded || task.GetAttempt() != 1) {
					err = fmt.Errorf("ended %v after %d attempts", task.GetState(), task.GetAttempt())
				}
				if err != nil {
					failures <- fmt.Errorf("task %d: %w", i, err)
				}
			}
		}()
	}
	for i := range ids {
		next <- i
	}
	close(next)
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}

	// One invalid task refuses the whole batch.
	_, err = c.SubmitMany(ctx, []conveyor.TaskRequest{conveyor.NewRequest("add"), conveyor.NewRequest("")})
	if conveyor.Code(err) != codes.InvalidArgument {
		t.Fatalf("batch with an empty name: %v", err)
	}
}

func TestErrorsCarryStatusCodes(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	const unknownID = "01900000-0000-7000-8000-000000000000"

	_, err := c.Submit(ctx, "")
	if conveyor.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty name: %v", err)
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument || st.Message() == "" {
		t.Fatalf("status.FromError(%v) = %v, %v", err, st, ok)
	}
	var rpcErr *conveyor.RPCError
	if !errors.As(err, &rpcErr) || rpcErr.Op != "SubmitTask" {
		t.Fatalf("not an *RPCError for SubmitTask: %#v", err)
	}

	checks := []struct {
		what string
		want codes.Code
		call func() error
	}{
		{"get unknown", codes.NotFound, func() error { _, err := c.Get(ctx, unknownID); return err }},
		{"wait unknown", codes.NotFound, func() error { _, err := c.Wait(ctx, unknownID, time.Second); return err }},
		{"watch unknown", codes.NotFound, func() error { _, err := c.Watch(ctx, unknownID); return err }},
		{"get malformed", codes.InvalidArgument, func() error { _, err := c.Get(ctx, "not-a-uuid"); return err }},
		{"priority out of range", codes.InvalidArgument, func() error {
			_, err := c.Submit(ctx, "add", conveyor.WithPriority(10))
			return err
		}},
	}
	for _, check := range checks {
		err := check.call()
		if got := conveyor.Code(err); got != check.want {
			t.Errorf("%s: code %v, want %v (%v)", check.what, got, check.want, err)
		}
		if got := status.Code(err); got != check.want {
			t.Errorf("%s: status.Code %v, want %v", check.what, got, check.want)
		}
	}

	// Arguments that cannot be encoded fail before anything is sent.
	_, err = c.Submit(ctx, "add", conveyor.Args(func() {}))
	if err == nil || conveyor.Code(err) != codes.Unknown {
		t.Fatalf("unencodable argument: %v", err)
	}

	// Nothing listens there: Dial fails fast with UNAVAILABLE.
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	started := time.Now()
	_, err = conveyor.Dial(dialCtx, "127.0.0.1:1")
	if conveyor.Code(err) != codes.Unavailable || time.Since(started) > 5*time.Second {
		t.Fatalf("dial to a closed port: %v after %s", err, time.Since(started))
	}
}

func TestWaitTimeout(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	id, err := c.Submit(ctx, "add", conveyor.Args(1, 1), conveyor.WithQueue(uniqueQueue(t)))
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	_, err = c.Wait(ctx, id, 300*time.Millisecond)
	elapsed := time.Since(started)
	if !conveyor.IsTimeout(err) || !errors.Is(err, context.DeadlineExceeded) || conveyor.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("wait on a task nobody runs: %v", err)
	}
	if elapsed < 250*time.Millisecond || elapsed > 5*time.Second {
		t.Fatalf("waited %s for a 300ms timeout", elapsed)
	}
	if err := c.Result(ctx, id, 200*time.Millisecond, nil); !errors.Is(err, conveyor.ErrTimeout) {
		t.Fatalf("result: %v", err)
	}
	task, err := c.Get(ctx, id)
	if err != nil || task.GetState() != conveyor.StateQueued {
		t.Fatalf("waiting changed the task: %v %v", task.GetState(), err)
	}
}

func TestWatch(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	id, err := c.Submit(ctx, "add", conveyor.Args(20, 22), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := c.Watch(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetState() != conveyor.StateQueued || first.GetId() != id {
		t.Fatalf("first state: %v %v", first.GetState(), err)
	}
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{"add": addHandler})
	states := []conveyor.TaskState{first.GetState()}
	var last *conveyor.TaskInfo
	for {
		task, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %v: %v", states, err)
		}
		states = append(states, task.GetState())
		last = task
	}
	if last.GetState() != conveyor.StateSucceeded {
		t.Fatalf("states %v", states)
	}
	var sum int
	if err := conveyor.DecodeResult(last, &sum); err != nil || sum != 42 {
		t.Fatalf("result %d, %v", sum, err)
	}
	for _, s := range states[:len(states)-1] {
		if conveyor.IsTerminal(s) {
			t.Fatalf("terminal state before the last: %v", states)
		}
	}
}

func TestCancel(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	id, err := c.Submit(ctx, "add", conveyor.Args(1, 2), conveyor.WithQueue(uniqueQueue(t)), conveyor.WithCountdown(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.Get(ctx, id)
	if err != nil || task.GetState() != conveyor.StateScheduled {
		t.Fatalf("countdown task: %v %v", task.GetState(), err)
	}
	cancelled, err := c.Cancel(ctx, id)
	if err != nil || !cancelled {
		t.Fatalf("cancel: %v %v", cancelled, err)
	}
	var notSucceeded *conveyor.TaskNotSucceededError
	if err := c.Result(ctx, id, 5*time.Second, nil); !errors.As(err, &notSucceeded) || notSucceeded.State != conveyor.StateCancelled {
		t.Fatalf("result of a cancelled task: %v", err)
	}
	again, err := c.Cancel(ctx, id)
	if err != nil || again {
		t.Fatalf("second cancel: %v %v", again, err)
	}
	if _, err := c.Cancel(ctx, "01900000-0000-7000-8000-000000000000"); conveyor.Code(err) != codes.NotFound {
		t.Fatalf("cancel unknown: %v", err)
	}
}

func TestIdempotencyKey(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	key := fmt.Sprintf("key-%d", time.Now().UnixNano())
	first, err := c.Submit(ctx, "add", conveyor.Args(1, 1), conveyor.WithQueue(queue), conveyor.WithIdempotencyKey(key))
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.Submit(ctx, "add", conveyor.Args(1, 1), conveyor.WithQueue(queue), conveyor.WithIdempotencyKey(key))
	if err != nil || second != first {
		t.Fatalf("second submit: %s (first %s), %v", second, first, err)
	}
}
