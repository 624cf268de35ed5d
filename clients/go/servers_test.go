package conveyor_test

import (
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

// startServer starts `conveyor dev` with args on listen (127.0.0.1:0 when
// empty) and returns its http:// address; it is killed when the test ends.
func startServerOn(t *testing.T, listen string, args ...string) *testServer {
	t.Helper()
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	cmd := exec.Command(serverBin(), append([]string{"dev", "--listen", listen, "--heartbeat-interval", "200ms", "--lease-ttl", "1s"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("CONVEYOR_TEST_VERBOSE") != "" {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", serverBin(), err)
	}
	s := &testServer{cmd: cmd}
	t.Cleanup(s.kill)
	addr, err := readListenLine(stdout, 30*time.Second)
	if err != nil {
		t.Fatalf("server did not start: %v", err)
	}
	s.addr = addr
	return s
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
