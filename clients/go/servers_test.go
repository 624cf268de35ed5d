package conveyor_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// serverBin is the conveyor binary the tests run.
func serverBin() string {
	if bin := os.Getenv("CONVEYOR_BIN"); bin != "" {
		return bin
	}
	bin, _ := filepath.Abs(filepath.Join("..", "..", "target", "debug", "conveyor"))
	return bin
}

// testServer is a `conveyor dev` of one test, beside TestMain's.
type testServer struct {
	addr string
	cmd  *exec.Cmd
}

// startServerOn starts `conveyor dev` with args on listen (127.0.0.1:0
// when empty); it is killed when the test ends.
func startServerOn(t *testing.T, listen string, args ...string) *testServer {
	t.Helper()
	s, err := launchServer(listen, args...)
	if s != nil {
		t.Cleanup(s.kill)
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// launchServer starts `conveyor dev` and waits for its listening line; the
// caller kills it. Safe to call from any goroutine.
func launchServer(listen string, args ...string) (*testServer, error) {
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	cmd := exec.Command(serverBin(), append([]string{"dev", "--listen", listen, "--heartbeat-interval", "200ms", "--lease-ttl", "1s"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if os.Getenv("CONVEYOR_TEST_VERBOSE") != "" {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (set CONVEYOR_BIN to the conveyor binary): %w", serverBin(), err)
	}
	s := &testServer{cmd: cmd}
	addr, err := readListenLine(stdout, 30*time.Second)
	if err != nil {
		return s, fmt.Errorf("server did not start: %w", err)
	}
	s.addr = addr
	return s, nil
}

func startServer(t *testing.T, args ...string) string {
	return "http://" + startServerOn(t, "", args...).addr
}

// kill SIGKILLs the server and reaps it; a second call does nothing.
func (s *testServer) kill() {
	if s.cmd.ProcessState != nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}
