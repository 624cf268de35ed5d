package conveyor_test

// One test per row of the cross-SDK parity table (README.md at the root):
// each name carries the row's marker, parity_<row>, and exercises the
// feature against the real `conveyor dev` that TestMain started (eager
// mode runs with no server).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/grpc/codes"
)

func Test_parity_submit(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{"add": addHandler})
	id, err := c.Submit(ctx, "add", conveyor.Args(2, 3), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	var sum int
	if err := c.Result(ctx, id, 10*time.Second, &sum); err != nil || sum != 5 {
		t.Fatalf("add(2, 3) = %d, %v", sum, err)
	}
}

func Test_parity_submit_many(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}, Concurrency: 4}, map[string]conveyor.Handler{"add": addHandler})
	var reqs []conveyor.TaskRequest
	for i := range 5 {
		reqs = append(reqs, conveyor.TaskRequest{Name: "add", Args: []any{i, 10}, Options: []conveyor.Option{conveyor.WithQueue(queue)}})
	}
	ids, err := c.SubmitMany(ctx, reqs)
	if err != nil || len(ids) != 5 {
		t.Fatalf("SubmitMany: %v, %v", ids, err)
	}
	for i, id := range ids {
		var sum int
		if err := c.Result(ctx, id, 10*time.Second, &sum); err != nil || sum != i+10 {
			t.Fatalf("task %d: %d, %v", i, sum, err)
		}
	}
}

func Test_parity_get(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t) // no worker: the task stays queued
	id, err := c.Submit(ctx, "add", conveyor.Args(1, 2), conveyor.WithQueue(queue), conveyor.WithPriority(7))
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if task.GetId() != id || task.GetName() != "add" || task.GetState() != conveyor.StateQueued ||
		task.GetQueue() != queue || len(task.GetArgs()) != 2 || task.GetOptions().GetPriority() != 7 {
		t.Fatalf("Get: %v", task)
	}
	if _, err := c.Get(ctx, "01900000-0000-7000-8000-000000000000"); conveyor.Code(err) != codes.NotFound {
		t.Fatalf("unknown id: %v", err)
	}
}

func Test_parity_wait(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	idle, err := c.Submit(ctx, "add", conveyor.Args(1, 1), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if _, err := c.Wait(ctx, idle, 300*time.Millisecond); !errors.Is(err, conveyor.ErrTimeout) {
		t.Fatalf("wait on a task nobody runs: %v", err)
	}
	if took := time.Since(started); took < 250*time.Millisecond || took > 3*time.Second {
		t.Fatalf("a 300 ms wait took %s", took)
	}
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{"add": addHandler})
	task, err := c.Wait(ctx, idle, 10*time.Second)
	if err != nil || task.GetState() != conveyor.StateSucceeded || string(task.GetResult().GetData()) != "2" {
		t.Fatalf("Wait: %v, %v", task, err)
	}
}

func Test_parity_watch(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	release := make(chan struct{})
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{
		"gated": func(ctx context.Context, _ *conveyor.Task) (any, error) {
			select {
			case <-release:
				return "done", nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
	})
	id, err := c.Submit(ctx, "gated", conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := c.Watch(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var states []conveyor.TaskState
	for task, err := range stream.All() {
		if err != nil {
			t.Fatal(err)
		}
		states = append(states, task.GetState())
		if task.GetState() == conveyor.StateRunning {
			close(release)
		}
	}
	if !slices.Contains(states, conveyor.StateRunning) || states[len(states)-1] != conveyor.StateSucceeded {
		t.Fatalf("watched states %v", states)
	}
}

func Test_parity_cancel(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	id, err := c.Submit(ctx, "add", conveyor.Args(1, 1), conveyor.WithQueue(uniqueQueue(t)))
	if err != nil {
		t.Fatal(err)
	}
	cancelled, err := c.Cancel(ctx, id)
	if err != nil || !cancelled {
		t.Fatalf("Cancel: %v, %v", cancelled, err)
	}
	var notOK *conveyor.TaskNotSucceededError
	if err := c.Result(ctx, id, 5*time.Second, nil); !errors.As(err, &notOK) || notOK.State != conveyor.StateCancelled {
		t.Fatalf("result of a cancelled task: %v", err)
	}
	if again, err := c.Cancel(ctx, id); err != nil || again {
		t.Fatalf("second Cancel: %v, %v", again, err)
	}
}

// failOnceWorker serves "flaky", which fails for good (non-retryable) on
// its first run and succeeds afterwards.
func failOnceWorker(t *testing.T, queue string) *atomic.Int32 {
	var runs atomic.Int32
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{
		"flaky": func(context.Context, *conveyor.Task) (any, error) {
			if runs.Add(1) == 1 {
				return nil, conveyor.NonRetryable(conveyor.NewTaskError("ValueError", "first run fails"))
			}
			return "recovered", nil
		},
	})
	return &runs
}

func Test_parity_replay(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	failOnceWorker(t, queue)
	id, err := c.Submit(ctx, "flaky", conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	var failed *conveyor.TaskFailedError
	if err := c.Result(ctx, id, 10*time.Second, nil); !errors.As(err, &failed) || failed.Type != "ValueError" {
		t.Fatalf("first run: %v", err)
	}
	state, err := c.Replay(ctx, id)
	if err != nil || (state != conveyor.StateQueued && state != conveyor.StateSucceeded && state != conveyor.StateRunning && state != conveyor.StateLeased) {
		t.Fatalf("Replay: %v, %v", state, err)
	}
	var out string
	if err := c.Result(ctx, id, 10*time.Second, &out); err != nil || out != "recovered" {
		t.Fatalf("replayed: %q, %v", out, err)
	}
	if _, err := c.Replay(ctx, id); conveyor.Code(err) != codes.FailedPrecondition {
		t.Fatalf("replay of a SUCCEEDED task: %v", err)
	}
}

func Test_parity_forget(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	pending, err := c.Submit(ctx, "add", conveyor.Args(1, 1), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Forget(ctx, pending); conveyor.Code(err) != codes.FailedPrecondition {
		t.Fatalf("forget of a queued task: %v", err)
	}
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{"add": addHandler})
	if _, err := c.Wait(ctx, pending, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Forget(ctx, pending); err != nil {
		t.Fatalf("Forget: %v", err)
	}
	if _, err := c.Get(ctx, pending); conveyor.Code(err) != codes.NotFound {
		t.Fatalf("get after forget: %v", err)
	}
}

func Test_parity_dead_letters(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	failOnceWorker(t, queue)
	id, err := c.Submit(ctx, "flaky", conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	waitForState(t, c, id, conveyor.StateFailed)
	found := false
	for task, err := range c.DeadLetters(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if task.GetId() == id {
			found = task.GetError().GetType() == "ValueError"
		}
	}
	if !found {
		t.Fatalf("dead letters lack %s", id)
	}
	page, _, err := c.DeadLetterPage(ctx, 1, "")
	if err != nil || len(page) != 1 {
		t.Fatalf("one page of one: %d tasks, %v", len(page), err)
	}
	if _, err := c.Replay(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitForState(t, c, id, conveyor.StateSucceeded)
	for task, err := range c.DeadLetters(ctx) {
		if err == nil && task.GetId() == id {
			t.Fatalf("a replayed task is still a dead letter")
		}
	}
}

func Test_parity_schedules_crud(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	id := "go-parity-" + queue
	s, err := conveyor.NewSchedule(id, conveyor.Every(time.Hour), "add", conveyor.Args(20, 22), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	created, err := c.CreateSchedule(ctx, s)
	if err != nil || created.GetId() != id || created.GetNextRunAt() == nil {
		t.Fatalf("CreateSchedule: %v, %v", created, err)
	}
	if _, err := c.CreateSchedule(ctx, s); conveyor.Code(err) != codes.AlreadyExists {
		t.Fatalf("second create: %v", err)
	}
	got, err := c.GetSchedule(ctx, id)
	if err != nil || got.GetInterval().GetEvery().AsDuration() != time.Hour {
		t.Fatalf("GetSchedule: %v, %v", got, err)
	}
	all, err := c.ListSchedules(ctx)
	if err != nil || !slices.ContainsFunc(all, func(s *conveyor.Schedule) bool { return s.GetId() == id }) {
		t.Fatalf("ListSchedules lacks %s: %v", id, err)
	}
	cron, err := conveyor.NewSchedule(id, conveyor.Cron("0 3 * * *", "Europe/Paris"), "add", conveyor.Args(1, 2), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	updated, err := c.UpdateSchedule(ctx, cron)
	if err != nil || updated.GetCron().GetExpression() != "0 3 * * *" {
		t.Fatalf("UpdateSchedule: %v, %v", updated, err)
	}
	if paused, err := c.PauseSchedule(ctx, id); err != nil || !paused.GetPaused() {
		t.Fatalf("PauseSchedule: %v, %v", paused, err)
	}
	if resumed, err := c.ResumeSchedule(ctx, id); err != nil || resumed.GetPaused() {
		t.Fatalf("ResumeSchedule: %v, %v", resumed, err)
	}
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{"add": addHandler})
	run, err := c.TriggerSchedule(ctx, id)
	if err != nil || run.GetTaskId() == "" {
		t.Fatalf("TriggerSchedule: %v, %v", run, err)
	}
	var sum int
	if err := c.Result(ctx, run.GetTaskId(), 10*time.Second, &sum); err != nil || sum != 3 {
		t.Fatalf("triggered run: %d, %v", sum, err)
	}
	runs, err := c.ScheduleRuns(ctx, id)
	if err != nil || !slices.ContainsFunc(runs, func(r *conveyor.ScheduleRun) bool { return r.GetTaskId() == run.GetTaskId() }) {
		t.Fatalf("ScheduleRuns: %v, %v", runs, err)
	}
	if err := c.DeleteSchedule(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetSchedule(ctx, id); conveyor.Code(err) != codes.NotFound {
		t.Fatalf("get after delete: %v", err)
	}
}

func Test_parity_pause_queue(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	if err := c.PauseQueue(ctx, queue); err != nil {
		t.Fatal(err)
	}
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{"add": addHandler})
	id, err := c.Submit(ctx, "add", conveyor.Args(4, 4), conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	// A connected worker with free slots does not get the paused queue's task.
	if task, err := c.Wait(ctx, id, time.Second); !errors.Is(err, conveyor.ErrTimeout) {
		t.Fatalf("a paused queue's task ran: %v, %v", task, err)
	}
	if err := c.ResumeQueue(ctx, queue); err != nil {
		t.Fatal(err)
	}
	var sum int
	if err := c.Result(ctx, id, 10*time.Second, &sum); err != nil || sum != 8 {
		t.Fatalf("after resume: %d, %v", sum, err)
	}
}

func Test_parity_progress(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	release := make(chan struct{})
	reported := make(chan error, 1)
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{
		"download": func(ctx context.Context, task *conveyor.Task) (any, error) {
			reported <- task.ReportProgress("DOWNLOADING", 50, map[string]int{"bytes": 1024})
			select {
			case <-release:
				return "ok", nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
	})
	id, err := c.Submit(ctx, "download", conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	if err := <-reported; err != nil {
		t.Fatalf("ReportProgress: %v", err)
	}
	var progress *conveyor.TaskInfo
	eventually(t, 5*time.Second, "the progress report", func() bool {
		task, err := c.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		progress = task
		return task.GetProgress().GetState() == "DOWNLOADING"
	})
	p := progress.GetProgress()
	if p.GetPercent() != 50 || string(p.GetMeta().GetData()) != `{"bytes":1024}` || p.GetReportedAt() == nil {
		t.Fatalf("progress: %v", p)
	}
	close(release)
	if err := c.Result(ctx, id, 10*time.Second, nil); err != nil {
		t.Fatal(err)
	}
	outside := conveyor.TaskFromAssignment(&conveyorv1.Assignment{TaskId: id})
	if err := outside.ReportProgress("X", 1, nil); err == nil {
		t.Fatal("ReportProgress outside a worker reported nothing and said nothing")
	}
}

func Test_parity_retry_delay(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	var firstEnded atomic.Int64
	var secondStarted atomic.Int64
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{
		"busy": func(_ context.Context, task *conveyor.Task) (any, error) {
			if task.Attempt == 1 {
				firstEnded.Store(time.Now().UnixNano())
				return nil, conveyor.RetryAfter(700*time.Millisecond, conveyor.NewTaskError("Busy", "upstream rate limited"))
			}
			secondStarted.Store(time.Now().UnixNano())
			return task.Attempt, nil
		},
	})
	// The policy's own backoff (20 s) would far outlast the test: the
	// requested delay replaces it.
	id, err := c.Submit(ctx, "busy", conveyor.WithQueue(queue),
		conveyor.WithRetryPolicy(conveyor.RetryPolicy{MaxRetries: 1, BackoffBase: 20 * time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	var attempt int
	if err := c.Result(ctx, id, 10*time.Second, &attempt); err != nil || attempt != 2 {
		t.Fatalf("result: %d, %v", attempt, err)
	}
	gap := time.Duration(secondStarted.Load() - firstEnded.Load())
	t.Logf("retry requested in 700ms ran after %s", gap)
	if gap < 600*time.Millisecond || gap > 5*time.Second {
		t.Fatalf("the retry ran %s after the first attempt, want about 700ms", gap)
	}
	// A retry delay still counts against max retries.
	id, err = c.Submit(ctx, "busy", conveyor.WithQueue(queue), conveyor.WithMaxRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	var failed *conveyor.TaskFailedError
	if err := c.Result(ctx, id, 10*time.Second, nil); !errors.As(err, &failed) || failed.Type != "Busy" {
		t.Fatalf("with no retries left: %v", err)
	}
}

func Test_parity_soft_limit(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	causes := make(chan error, 1)
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{
		"sleepy": func(ctx context.Context, _ *conveyor.Task) (any, error) {
			select {
			case <-time.After(10 * time.Second):
				return "overslept", nil
			case <-ctx.Done():
				causes <- context.Cause(ctx)
				return nil, ctx.Err()
			}
		},
	})
	started := time.Now()
	id, err := c.Submit(ctx, "sleepy", conveyor.WithQueue(queue), conveyor.WithSoftTimeLimit(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	var failed *conveyor.TaskFailedError
	if err := c.Result(ctx, id, 10*time.Second, nil); !errors.As(err, &failed) || failed.Type != "SoftTimeLimitExceeded" {
		t.Fatalf("result: %v", err)
	}
	took := time.Since(started)
	t.Logf("300ms soft limit: task failed %s after submission", took)
	if took > 2*time.Second {
		t.Fatalf("the soft limit ended the task after %s", took)
	}
	if cause := <-causes; !errors.Is(cause, conveyor.ErrSoftTimeLimit) {
		t.Fatalf("cause %v", cause)
	}
}

func Test_parity_revoke(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	causes := make(chan error, 1)
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}}, map[string]conveyor.Handler{
		"forever": func(ctx context.Context, _ *conveyor.Task) (any, error) {
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return nil, ctx.Err()
		},
	})
	id, err := c.Submit(ctx, "forever", conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	waitForState(t, c, id, conveyor.StateRunning)
	revoked := time.Now()
	if ok, err := c.Cancel(ctx, id); err != nil || !ok {
		t.Fatalf("Cancel of a running task: %v, %v", ok, err)
	}
	select {
	case cause := <-causes:
		t.Logf("revoked handler stopped %s after Cancel", time.Since(revoked))
		if !errors.Is(cause, conveyor.ErrTaskCancelled) {
			t.Fatalf("cause %v", cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the running handler was not cancelled")
	}
	if task := waitForState(t, c, id, conveyor.StateCancelled); task.GetResult() != nil {
		t.Fatalf("revoked task has a result: %v", task)
	}
}

func Test_parity_drain(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	release := make(chan struct{})
	w := startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}, GracePeriod: 10 * time.Second}, map[string]conveyor.Handler{
		"slow": func(ctx context.Context, _ *conveyor.Task) (any, error) {
			select {
			case <-release:
				return "finished", nil
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		},
	})
	id, err := c.Submit(ctx, "slow", conveyor.WithQueue(queue))
	if err != nil {
		t.Fatal(err)
	}
	waitForState(t, c, id, conveyor.StateRunning)
	w.cancel() // what signal.NotifyContext does on SIGTERM
	select {
	case err := <-w.done:
		t.Fatalf("Run returned (%v) with a task running", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := w.stop(t); err != nil {
		t.Fatalf("Run after the drain: %v", err)
	}
	var out string
	if err := c.Result(ctx, id, 5*time.Second, &out); err != nil || out != "finished" {
		t.Fatalf("the task running during the drain: %q, %v", out, err)
	}
}

func Test_parity_concurrency_keys(t *testing.T) {
	ctx := testContext(t)
	c := newClient(t)
	queue := uniqueQueue(t)
	// Three tasks in a ring of keys with limit 1: each pair shares a key, so
	// no two may ever run at once, though the worker has slots for all.
	var k [3]conveyor.ConcurrencyKey
	for i := range k {
		k[i] = conveyor.ConcurrencyKey{Key: fmt.Sprintf("%s:k%d", queue, i), Limit: 1}
	}
	type span struct{ start, end time.Time }
	var mu sync.Mutex
	spans := map[string]span{}
	startWorker(t, conveyor.WorkerOptions{Queues: []string{queue}, Concurrency: 4}, map[string]conveyor.Handler{
		"hold": func(_ context.Context, task *conveyor.Task) (any, error) {
			var name string
			if err := task.Arg(0, &name); err != nil {
				return nil, err
			}
			start := time.Now()
			time.Sleep(100 * time.Millisecond)
			mu.Lock()
			spans[name] = span{start, time.Now()}
			mu.Unlock()
			return name, nil
		},
	})
	needs := map[string][]conveyor.ConcurrencyKey{"A": {k[0], k[1]}, "B": {k[1], k[2]}, "C": {k[2], k[0]}}
	ids := map[string]string{}
	for name, keys := range needs {
		id, err := c.Submit(ctx, "hold", conveyor.Args(name), conveyor.WithQueue(queue), conveyor.WithConcurrencyKeys(keys...))
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = id
	}
	for name, id := range ids {
		var got string
		if err := c.Result(ctx, id, 15*time.Second, &got); err != nil || got != name {
			t.Fatalf("task %s: %q, %v", name, got, err)
		}
	}
	mu.Lock()
	ordered := make([]span, 0, len(spans))
	for _, s := range spans {
		ordered = append(ordered, s)
	}
	mu.Unlock()
	slices.SortFunc(ordered, func(a, b span) int { return a.start.Compare(b.start) })
	for i := 1; i < len(ordered); i++ {
		if ordered[i].start.Before(ordered[i-1].end) {
			t0 := ordered[0].start
			t.Fatalf("tasks sharing a key overlapped: one ran %v..%v, the next started at %v",
				ordered[i-1].start.Sub(t0), ordered[i-1].end.Sub(t0), ordered[i].start.Sub(t0))
		}
	}
	task, err := c.Get(ctx, ids["C"])
	if err != nil {
		t.Fatal(err)
	}
	var stored []string
	for _, key := range task.GetOptions().GetConcurrencyKeys() {
		stored = append(stored, fmt.Sprintf("%s=%d", key.GetKey(), key.GetLimit()))
	}
	if want := []string{k[2].Key + "=1", k[0].Key + "=1"}; !slices.Equal(stored, want) {
		t.Fatalf("stored keys %v, want %v", stored, want)
	}

	for _, bad := range []struct {
		keys  []conveyor.ConcurrencyKey
		field string
	}{
		{[]conveyor.ConcurrencyKey{{Key: "a", Limit: 1}, {Key: "a", Limit: 1}}, "concurrency_keys[1].key"},
		{[]conveyor.ConcurrencyKey{{Key: "a", Limit: 0}}, "concurrency_keys[0].limit"},
	} {
		_, err := c.Submit(ctx, "hold", conveyor.Args("X"), conveyor.WithQueue(queue), conveyor.WithConcurrencyKeys(bad.keys...))
		if conveyor.Code(err) != codes.InvalidArgument || !strings.Contains(fmt.Sprint(err), bad.field) {
			t.Fatalf("keys %v: want INVALID_ARGUMENT naming %s, got %v", bad.keys, bad.field, err)
		}
	}
}

func Test_parity_token(t *testing.T) {
	ctx := testContext(t)
	addr := startServer(t, "--auth-token", "s3cret")
	anonymous, err := conveyor.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer anonymous.Close()
	if _, err := anonymous.Submit(ctx, "add", conveyor.Args(1, 2)); conveyor.Code(err) != codes.Unauthenticated {
		t.Fatalf("submit without a token: %v", err)
	}
	c, err := conveyor.Dial(ctx, addr, conveyor.WithToken("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn, err := conveyor.NewConn(addr, conveyor.WithToken("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	w := conveyor.NewWorker(conn, conveyor.WorkerOptions{Logger: testLogger()})
	w.Register("add", addHandler)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	defer func() { stop(); <-done }()
	id, err := c.Submit(ctx, "add", conveyor.Args(1, 2))
	if err != nil {
		t.Fatal(err)
	}
	var sum int
	if err := c.Result(ctx, id, 10*time.Second, &sum); err != nil || sum != 3 {
		t.Fatalf("with a token: %d, %v", sum, err)
	}
	// The example worker program takes its token from CONVEYOR_TOKEN.
	example := exec.Command(exampleBinary(t, "conveyor-example-worker"))
	example.Env = append(os.Environ(), "CONVEYOR_ADDR="+addr, "CONVEYOR_QUEUE=tokened", "CONVEYOR_TOKEN=s3cret")
	if err := example.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = example.Process.Kill(); _ = example.Wait() }()
	id, err = c.Submit(ctx, "lang", conveyor.WithQueue("tokened"))
	if err != nil {
		t.Fatal(err)
	}
	var lang string
	if err := c.Result(ctx, id, 10*time.Second, &lang); err != nil || lang != "go" {
		t.Fatalf("the example worker with CONVEYOR_TOKEN: %q, %v", lang, err)
	}
	badConn, err := conveyor.NewConn(addr, conveyor.WithToken("wrong"))
	if err != nil {
		t.Fatal(err)
	}
	defer badConn.Close()
	bad := conveyor.NewWorker(badConn, conveyor.WorkerOptions{Logger: testLogger()})
	bad.Register("add", addHandler)
	if err := bad.Run(ctx); conveyor.Code(err) != codes.Unauthenticated {
		t.Fatalf("a worker with a wrong token: %v", err)
	}
}

func Test_parity_eager_mode(t *testing.T) {
	ctx := testContext(t)
	var flakyRuns atomic.Int32
	c := conveyor.NewEagerClient(map[string]conveyor.Handler{
		"add": addHandler,
		"flaky": func(context.Context, *conveyor.Task) (any, error) {
			if flakyRuns.Add(1) < 3 {
				return nil, conveyor.RetryAfter(time.Hour, nil) // delays are skipped
			}
			return "third time", nil
		},
		"bad": func(_ context.Context, task *conveyor.Task) (any, error) {
			if err := task.ReportProgress("CHECKING", 10, nil); err != nil {
				return nil, err
			}
			return nil, conveyor.NonRetryable(conveyor.NewTaskError("ValueError", "bad input"))
		},
		"sleepy": func(ctx context.Context, _ *conveyor.Task) (any, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		},
	})
	id, err := c.Submit(ctx, "add", conveyor.Args(2, 3))
	if err != nil {
		t.Fatal(err)
	}
	var sum int
	if err := c.Result(ctx, id, time.Second, &sum); err != nil || sum != 5 {
		t.Fatalf("add: %d, %v", sum, err)
	}
	id, err = c.Submit(ctx, "flaky", conveyor.WithMaxRetries(5))
	if err != nil {
		t.Fatal(err)
	}
	var out string
	if err := c.Result(ctx, id, time.Second, &out); err != nil || out != "third time" {
		t.Fatalf("flaky: %q, %v", out, err)
	}
	if task, _ := c.Get(ctx, id); task.GetAttempt() != 3 || task.GetFailures() != 2 {
		t.Fatalf("flaky attempts: %v", task)
	}
	bad, err := c.Submit(ctx, "bad", conveyor.WithMaxRetries(3))
	if err != nil {
		t.Fatal(err)
	}
	var failed *conveyor.TaskFailedError
	if err := c.Result(ctx, bad, time.Second, nil); !errors.As(err, &failed) || failed.Type != "ValueError" {
		t.Fatalf("bad: %v", err)
	}
	if task, _ := c.Get(ctx, bad); task.GetAttempt() != 1 || task.GetProgress().GetState() != "CHECKING" {
		t.Fatalf("bad: %v", task)
	}
	dead := 0
	for task, err := range c.DeadLetters(ctx) {
		if err != nil || task.GetId() != bad {
			t.Fatalf("dead letters: %v, %v", task, err)
		}
		dead++
	}
	if dead != 1 {
		t.Fatalf("%d dead letters", dead)
	}
	started := time.Now()
	id, err = c.Submit(ctx, "sleepy", conveyor.WithSoftTimeLimit(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Result(ctx, id, time.Second, nil); !errors.As(err, &failed) || failed.Type != "SoftTimeLimitExceeded" || time.Since(started) > time.Second {
		t.Fatalf("soft limit: %v after %s", err, time.Since(started))
	}
	id, err = c.Submit(ctx, "nobody")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Result(ctx, id, time.Second, nil); !errors.As(err, &failed) || failed.Type != "NotRegistered" {
		t.Fatalf("unregistered: %v", err)
	}
	if err := c.Forget(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, id); conveyor.Code(err) != codes.NotFound {
		t.Fatalf("forgotten: %v", err)
	}
	if err := c.PauseQueue(ctx, "default"); conveyor.Code(err) != codes.Unimplemented {
		t.Fatalf("PauseQueue in eager mode: %v", err)
	}
}
