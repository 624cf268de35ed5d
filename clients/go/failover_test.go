package conveyor_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Two servers given comma-separated: when the first dies, the client's
// next calls and the worker's stream move to the second. (Each `conveyor
// dev` has its own memory store, so the tasks are submitted after the
// failover; with a shared Redis the tasks would carry over too.)
func TestFailoverAcrossAddresses(t *testing.T) {
	ctx := testContext(t)
	first := startServerOn(t, "")
	second := startServerOn(t, "")
	addrs := "http://" + first.addr + "," + second.addr
	c, err := conveyor.Dial(ctx, addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn, err := conveyor.NewConn(addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	w := conveyor.NewWorker(conn, conveyor.WorkerOptions{Logger: testLogger(), WorkerID: "failover-worker"})
	w.Register("add", addHandler)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	defer func() { stop(); <-done }()

	id, err := c.Submit(ctx, "add", conveyor.Args(1, 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Result(ctx, id, 10*time.Second, nil); err != nil {
		t.Fatalf("on the first server: %v", err)
	}
	first.kill()
	killed := time.Now()
	id, err = c.Submit(ctx, "add", conveyor.Args(2, 2))
	if err != nil {
		t.Fatalf("submit after the first server died: %v", err)
	}
	t.Logf("first submit after the kill answered in %s", time.Since(killed))
	var sum int
	if err := c.Result(ctx, id, 10*time.Second, &sum); err != nil || sum != 4 {
		t.Fatalf("on the second server: %d, %v", sum, err)
	}
	t.Logf("task run by the failed-over worker %s after the kill", time.Since(killed))
	workers, err := c.Workers(ctx)
	if err != nil || len(workers) != 1 || workers[0].GetWorkerId() != "failover-worker" {
		t.Fatalf("workers on the second server: %v, %v", workers, err)
	}
}

// A server restarting on the same port: reads and keyed submissions are
// retried through the outage; a submission without a key is not.
func TestUnavailableIsRetriedForSafeCalls(t *testing.T) {
	ctx := testContext(t)
	port := freePort(t)
	server := startServerOn(t, port)
	c, err := conveyor.Dial(ctx, "http://"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	server.kill()

	unkeyed := conveyor.NewClient(mustConn(t, "http://"+port))
	unkeyed.SetCallRetry(conveyor.CallRetry{NoDefaultIdempotencyKey: true})
	if _, err := unkeyed.Submit(ctx, "add", conveyor.Args(1, 2)); conveyor.Code(err) != codes.Unavailable {
		t.Fatalf("a submission without a key was not given up at once: %v", err)
	}

	type launched struct {
		server *testServer
		err    error
	}
	restarted := make(chan launched, 1)
	go func() {
		time.Sleep(300 * time.Millisecond) // the outage
		s, err := launchServer(port)
		restarted <- launched{s, err}
	}()
	t.Cleanup(func() {
		if r := <-restarted; r.server != nil {
			r.server.kill()
		}
	})
	started := time.Now()
	id, err := c.Submit(ctx, "add", conveyor.Args(1, 2))
	if err != nil {
		t.Fatalf("keyed submit through a restart: %v", err)
	}
	t.Logf("submit through a 300 ms outage took %s", time.Since(started))
	if task, err := c.Get(ctx, id); err != nil || task.GetName() != "add" {
		t.Fatalf("get: %v, %v", task, err)
	}

	// The retries are bounded: with the server gone for good the call
	// fails with UNAVAILABLE after the attempts (about 1.5 s).
	single := conveyor.NewClient(mustConn(t, "http://"+freePort(t)))
	started = time.Now()
	if _, err := single.Get(ctx, id); conveyor.Code(err) != codes.Unavailable {
		t.Fatalf("get with no server: %v", err)
	}
	took := time.Since(started)
	t.Logf("get with no server gave up after %s", took)
	if took > 10*time.Second || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("retries took %s", took)
	}
}

func mustConn(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := conveyor.NewConn(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestAddressLists(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:1,127.0.0.1:2", "http://127.0.0.1:1, 127.0.0.1:2/"} {
		conn, err := conveyor.NewConn(ok)
		if err != nil {
			t.Fatalf("%q: %v", ok, err)
		}
		_ = conn.Close()
	}
	for _, bad := range []string{"", "127.0.0.1:1,http://127.0.0.1:2", " , "} {
		if _, err := conveyor.NewConn(bad); err == nil {
			t.Fatalf("%q was accepted", bad)
		}
	}
}

// Two servers on one Redis (CONVEYOR_TEST_REDIS, which scripts/test sets):
// the server holding a running task's worker stream and the client's Watch
// is SIGKILLed; the worker fails over and runs the task again, and the
// Watch, reopened on the other server, sees it succeed.
func TestFailoverOnSharedRedis(t *testing.T) {
	redisURL := os.Getenv("CONVEYOR_TEST_REDIS")
	if redisURL == "" {
		t.Skip("set CONVEYOR_TEST_REDIS=redis://... to run two servers on one store")
	}
	ctx := testContext(t)
	prefix := fmt.Sprintf("cv-go-failover-%d-%d:", os.Getpid(), time.Now().UnixNano())
	first := startServerOn(t, "", "--store", redisURL, "--redis-prefix", prefix)
	second := startServerOn(t, "", "--store", redisURL, "--redis-prefix", prefix)
	addrs := "http://" + first.addr + "," + second.addr
	c, err := conveyor.Dial(ctx, addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn, err := conveyor.NewConn(addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var runs atomic.Int32
	firstRun := make(chan struct{})
	w := conveyor.NewWorker(conn, conveyor.WorkerOptions{Logger: testLogger(), Concurrency: 2})
	w.Register("once-blocked", func(ctx context.Context, _ *conveyor.Task) (any, error) {
		if runs.Add(1) == 1 {
			close(firstRun)
			<-ctx.Done() // the stream that brought it breaks
			return nil, context.Cause(ctx)
		}
		return "second run", nil
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	defer func() { stop(); <-done }()

	id, err := c.Submit(ctx, "once-blocked")
	if err != nil {
		t.Fatal(err)
	}
	stream, err := c.Watch(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	<-firstRun
	first.kill()
	killed := time.Now()
	var last *conveyor.TaskInfo
	for task, err := range stream.All() {
		if err != nil {
			t.Fatalf("watch across the failover: %v", err)
		}
		last = task
	}
	t.Logf("task finished %s after its server was killed", time.Since(killed))
	if last.GetState() != conveyor.StateSucceeded || runs.Load() != 2 {
		t.Fatalf("last state %v after %d runs", last.GetState(), runs.Load())
	}
	var out string
	if err := c.Result(ctx, id, 10*time.Second, &out); err != nil || out != "second run" {
		t.Fatalf("result: %q, %v", out, err)
	}
}
