// Command conveyor-example-producer submits the cross-language example's
// tasks to CONVEYOR_QUEUE (default "default") at CONVEYOR_ADDR (default
// http://127.0.0.1:50051), in namespace CONVEYOR_NAMESPACE (default
// "default"), with bearer token CONVEYOR_TOKEN when set, awaits them, and
// prints one JSON line:
//
//	{"producer": "go", "add": 5, "xsum": 6.5, "lang": "<worker language>",
//	 "fail": {"type": "ValueError", "message": "boom from go", "has_traceback": true}}
//
// It exits 1, with the error on stderr, when anything unexpected happens.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"go.conveyor.dev/conveyor"
)

const resultTimeout = 20 * time.Second

func main() {
	line, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "conveyor-example-producer:", err)
		os.Exit(1)
	}
	fmt.Println(line)
}

// report is the printed line; field order is the output's key order.
type report struct {
	Producer string          `json:"producer"`
	Add      json.RawMessage `json:"add"`
	Xsum     json.RawMessage `json:"xsum"`
	Lang     string          `json:"lang"`
	Fail     failure         `json:"fail"`
}

type failure struct {
	Type         string `json:"type"`
	Message      string `json:"message"`
	HasTraceback bool   `json:"has_traceback"`
}

func run() (string, error) {
	addr := getenv("CONVEYOR_ADDR", "http://127.0.0.1:50051")
	queue := conveyor.WithQueue(getenv("CONVEYOR_QUEUE", "default"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*resultTimeout)
	defer cancel()

	dialCtx, cancelDial := context.WithTimeout(ctx, 10*time.Second)
	defer cancelDial()
	c, err := conveyor.Dial(dialCtx, addr, conveyor.WithToken(os.Getenv("CONVEYOR_TOKEN")),
		conveyor.WithNamespace(os.Getenv(conveyor.NamespaceEnv)))
	if err != nil {
		return "", err
	}
	defer c.Close()

	failMessage := "boom from " + conveyor.Language
	ids, err := c.SubmitMany(ctx, []conveyor.TaskRequest{
		conveyor.NewRequest("add", conveyor.Args(2, 3), queue),
		conveyor.NewRequest("xsum", conveyor.Args([]any{1, 2, 3.5}), queue),
		conveyor.NewRequest("lang", queue),
		conveyor.NewRequest("fail", conveyor.Args(failMessage), queue),
	})
	if err != nil {
		return "", err
	}
	out := report{Producer: conveyor.Language}
	if err := c.Result(ctx, ids[0], resultTimeout, &out.Add); err != nil {
		return "", fmt.Errorf("add: %w", err)
	}
	if err := c.Result(ctx, ids[1], resultTimeout, &out.Xsum); err != nil {
		return "", fmt.Errorf("xsum: %w", err)
	}
	if err := c.Result(ctx, ids[2], resultTimeout, &out.Lang); err != nil {
		return "", fmt.Errorf("lang: %w", err)
	}
	var failed *conveyor.TaskFailedError
	switch err := c.Result(ctx, ids[3], resultTimeout, nil); {
	case errors.As(err, &failed):
		out.Fail = failure{Type: failed.Type, Message: failed.Message, HasTraceback: failed.Traceback != ""}
	case err != nil:
		return "", fmt.Errorf("fail: %w", err)
	default:
		return "", errors.New("fail: the task succeeded")
	}
	compact, err := json.Marshal(out)
	if err != nil {
		return "", err
	}
	return spaced(compact), nil
}

// spaced formats compact JSON as Python's json.dumps does by default: a
// space after every ':' and ',' outside strings.
func spaced(compact []byte) string {
	var b bytes.Buffer
	inString, escaped := false, false
	for _, c := range compact {
		b.WriteByte(c)
		switch {
		case inString && escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case !inString && (c == ':' || c == ','):
			b.WriteByte(' ')
		}
	}
	return b.String()
}

func getenv(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
