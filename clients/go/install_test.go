package conveyor_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.conveyor.dev/conveyor"
)

// readmeBlock returns the fenced code block that follows marker in README.md.
func readmeBlock(t *testing.T, marker string) string {
	t.Helper()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), "<!-- "+marker+" -->")
	if !ok {
		t.Fatalf("README.md has no <!-- %s --> marker", marker)
	}
	m := regexp.MustCompile("(?s)^\\s*```[a-z]*\\n(.*?)```").FindStringSubmatch(after)
	if m == nil {
		t.Fatalf("no code block after <!-- %s --> in README.md", marker)
	}
	return m[1]
}

// From an empty directory, the README's install commands, run verbatim,
// build the README's quick-start program, which then runs against the
// test server and prints 5.
func TestReadmeInstallFromCleanModule(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a module from scratch")
	}
	checkout, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(readmeBlock(t, "quickstart-program")), 0o644); err != nil {
		t.Fatal(err)
	}
	commands := readmeBlock(t, "install-commands")
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", commands)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CONVEYOR="+checkout)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's install commands failed: %v\n%s\n%s", err, commands, out)
	}
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"require go.conveyor.dev/conveyor v0.1.0",
		"replace go.conveyor.dev/conveyor => " + filepath.Join(checkout, "clients", "go"),
	} {
		if !strings.Contains(string(gomod), "\n"+line+"\n") {
			t.Fatalf("go.mod lacks %q:\n%s", line, gomod)
		}
	}

	ctx := testContext(t)
	startWorker(t, conveyor.WorkerOptions{Queues: []string{"default"}}, map[string]conveyor.Handler{"add": addHandler})
	run := exec.CommandContext(ctx, filepath.Join(dir, "app"))
	run.Env = append(os.Environ(), "CONVEYOR_ADDR="+serverAddr)
	started := time.Now()
	printed, err := run.CombinedOutput()
	if err != nil || strings.TrimSpace(string(printed)) != "5" {
		t.Fatalf("the quick-start program: %v\n%s", err, printed)
	}
	t.Logf("quick-start program ran in %s", time.Since(started))
}
