package conveyor_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"
	"testing"

	"go.conveyor.dev/conveyor"
)

// The README's workflow example is the text between the "README" markers
// below, run here (in eager mode) by `go test`.
func ExampleClient_SubmitWorkflow() {
	ctx := context.Background()
	c := conveyor.NewEagerClient(map[string]conveyor.Handler{
		"add": addHandler,
		"xsum": func(_ context.Context, t *conveyor.Task) (any, error) {
			var xs []int
			err := t.Arg(0, &xs)
			total := 0
			for _, x := range xs {
				total += x
			}
			return total, err
		},
	})
	// README: begin
	add := conveyor.Sig("add")
	canvas := conveyor.Chain(
		add.With(conveyor.Args(2, 2)), // 4
		conveyor.Chord( // xsum([4+1, 4+2]) = 11
			conveyor.Group(add.With(conveyor.Args(1)), add.With(conveyor.Args(2))),
			conveyor.Sig("xsum"),
		),
		add.With(conveyor.Args(100)), // 111
	).LinkError(conveyor.Sig("report_failure", conveyor.Args("nightly")))

	h, err := c.SubmitWorkflow(ctx, canvas, conveyor.WithQueue("math"))
	if err != nil {
		log.Fatal(err)
	}
	var total int
	if err := h.Get(ctx, &total); err != nil {
		log.Fatal(err) // a *conveyor.TaskFailedError names the node that failed
	}
	fmt.Println(total, len(h.TaskIDs))
	// README: end

	// Output: 111 6
}

// The README shows the example above verbatim.
func TestReadmeWorkflowExample(t *testing.T) {
	src, err := os.ReadFile("workflow_example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	_, body, _ := strings.Cut(string(src), "// README: begin\n")
	body, _, _ = strings.Cut(body, "\t// README: end")
	var lines []string
	for _, line := range strings.Split(strings.TrimRight(body, "\n"), "\n") {
		lines = append(lines, strings.TrimPrefix(line, "\t"))
	}
	if want, got := strings.Join(lines, "\n")+"\n", readmeBlock(t, "workflow-example"); got != want {
		t.Fatalf("README's workflow example differs from ExampleClient_SubmitWorkflow:\n--- README\n%s--- example\n%s", got, want)
	}
}
