package conveyor_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
	"google.golang.org/grpc"
)

// serverAddr is the address of the `conveyor dev` server TestMain started.
var serverAddr string

// TestMain starts one `conveyor dev` server for the whole package (from
// CONVEYOR_BIN, else the repository's target/debug/conveyor) on a free port,
// and kills it at the end. Its log goes to a file, shown when tests fail.
func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	bin := os.Getenv("CONVEYOR_BIN")
	if bin == "" {
		bin, _ = filepath.Abs(filepath.Join("..", "..", "target", "debug", "conveyor"))
	}
	if _, err := os.Stat(bin); err != nil {
		fmt.Fprintf(os.Stderr, "conveyor server binary not found (%v): set CONVEYOR_BIN or build it\n", err)
		return 1
	}
	logFile, err := os.CreateTemp("", "conveyor-go-test-server-*.log")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.Remove(logFile.Name())
	defer logFile.Close()
	cmd := exec.Command(bin, "dev", "--listen", "127.0.0.1:0", "--heartbeat-interval", "200ms", "--lease-ttl", "1s", "--track-started")
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "starting the server:", err)
		return 1
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	addr, err := readListenLine(stdout, 30*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "server did not start:", err)
		printTail(logFile.Name())
		return 1
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	serverAddr = "http://" + addr
	defer func() {
		if buildDir != "" {
			_ = os.RemoveAll(buildDir)
		}
	}()
	code := m.Run()
	if code != 0 {
		printTail(logFile.Name())
	}
	return code
}

// readListenLine waits (at most timeout) for "listening on HOST:PORT".
func readListenLine(r io.Reader, timeout time.Duration) (string, error) {
	type answer struct {
		addr string
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
		if !ok && err == nil {
			err = fmt.Errorf("unexpected first line %q", line)
		}
		ch <- answer{addr, err}
	}()
	select {
	case a := <-ch:
		return a.addr, a.err
	case <-time.After(timeout):
		return "", fmt.Errorf("no listening line within %s", timeout)
	}
}

func printTail(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	fmt.Fprintf(os.Stderr, "--- last lines of the server log:\n%s\n", strings.Join(lines, "\n"))
}

// testLogger logs to stderr when CONVEYOR_TEST_VERBOSE is set, else nowhere.
func testLogger() *slog.Logger {
	if os.Getenv("CONVEYOR_TEST_VERBOSE") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newClient(t *testing.T) *conveyor.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := conveyor.Dial(ctx, serverAddr)
	if err != nil {
		t.Fatalf("dial %s: %v", serverAddr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

var queueCounter atomic.Int64

// uniqueQueue keeps tests apart on the shared server.
func uniqueQueue(t *testing.T) string {
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	return fmt.Sprintf("go-%s-%d-%d", name, os.Getpid(), queueCounter.Add(1))
}

// runningWorker is an in-process worker started by startWorker.
type runningWorker struct {
	w      *conveyor.Worker
	cancel context.CancelFunc
	done   chan error
}

// stop cancels Run and returns what it returned (failing after 15 s).
func (r *runningWorker) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("worker did not stop within 15s")
		return nil
	}
}

func startWorker(t *testing.T, opts conveyor.WorkerOptions, handlers map[string]conveyor.Handler) *runningWorker {
	t.Helper()
	conn, err := conveyor.NewConn(serverAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return startWorkerOn(t, conn, opts, handlers)
}

// startWorkerOn runs a worker on conn until the test ends (the caller
// closes conn, in a cleanup registered before this call).
func startWorkerOn(t *testing.T, conn grpc.ClientConnInterface, opts conveyor.WorkerOptions, handlers map[string]conveyor.Handler) *runningWorker {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger()
	}
	w := conveyor.NewWorker(conn, opts)
	for name, h := range handlers {
		w.Register(name, h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningWorker{w: w, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- w.Run(ctx) }()
	t.Cleanup(func() { _ = r.stop(t) })
	return r
}

// waitForState watches the task until it reaches one of states, and returns it.
func waitForState(t *testing.T, c *conveyor.Client, id string, states ...conveyor.TaskState) *conveyor.TaskInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	stream, err := c.Watch(ctx, id)
	if err != nil {
		t.Fatalf("watch %s: %v", id, err)
	}
	defer stream.Close()
	var last *conveyor.TaskInfo
	for task, err := range stream.All() {
		if err != nil {
			t.Fatalf("watching %s (last state %v): %v", id, last.GetState(), err)
		}
		last = task
		for _, s := range states {
			if task.GetState() == s {
				return task
			}
		}
	}
	t.Fatalf("task %s ended %v, never reached %v", id, last.GetState(), states)
	return nil
}

// eventually polls cond until it holds, failing after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var (
	buildOnce   sync.Once
	buildDir    string
	buildErr    error
	buildOutput []byte
)

// exampleBinary builds the example programs once (as the matrix test does)
// and returns the path of one.
func exampleBinary(t *testing.T, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "conveyor-go-examples-")
		if buildErr != nil {
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command(goTool, "build", "-o", buildDir+string(os.PathSeparator), "./cmd/...")
		buildOutput, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build ./cmd/...: %v\n%s", buildErr, buildOutput)
	}
	return filepath.Join(buildDir, name)
}
