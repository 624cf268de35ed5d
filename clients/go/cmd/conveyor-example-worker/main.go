// Command conveyor-example-worker serves the tasks of the cross-language
// example: add, xsum, fail, lang and sleep.
//
// Environment: CONVEYOR_ADDR (default http://127.0.0.1:50051), CONVEYOR_QUEUE
// (default "default"), CONVEYOR_CONCURRENCY (default 8), CONVEYOR_WORKER_ID
// (default hostname-pid), CONVEYOR_TOKEN (bearer token, when set),
// CONVEYOR_NAMESPACE (the namespace to serve; default "default"). SIGTERM or SIGINT drains the worker (running tasks
// finish) and it exits 0; a second signal exits at once.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.conveyor.dev/conveyor"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "conveyor-example-worker:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := getenv("CONVEYOR_ADDR", "http://127.0.0.1:50051")
	concurrency, err := strconv.Atoi(getenv("CONVEYOR_CONCURRENCY", "8"))
	if err != nil {
		return fmt.Errorf("CONVEYOR_CONCURRENCY: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	conn, err := conveyor.NewConn(addr, conveyor.WithToken(os.Getenv("CONVEYOR_TOKEN")),
		conveyor.WithNamespace(os.Getenv(conveyor.NamespaceEnv)))
	if err != nil {
		return err
	}
	defer conn.Close()
	w := conveyor.NewWorker(conn, conveyor.WorkerOptions{
		Queues:      []string{getenv("CONVEYOR_QUEUE", "default")},
		Concurrency: concurrency,
		WorkerID:    os.Getenv("CONVEYOR_WORKER_ID"),
		Logger:      logger,
	})
	w.Register("add", add)
	w.Register("xsum", xsum)
	w.Register("fail", fail)
	w.Register("lang", lang)
	w.Register("sleep", sleep)

	// The first signal drains (Run returns once running tasks finished);
	// a second one exits at once.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, os.Interrupt)
	go func() {
		sig := <-signals
		logger.Info("signal received, draining (signal again to exit at once)", "signal", sig.String())
		cancel()
		<-signals
		logger.Warn("second signal, exiting at once")
		os.Exit(1)
	}()
	logger.Info("worker starting", "addr", addr, "namespace", w.Namespace(), "worker_id", w.WorkerID(), "concurrency", concurrency)
	return w.Run(ctx)
}

func getenv(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// add(a, b) returns a + b; integers stay integers.
func add(_ context.Context, t *conveyor.Task) (any, error) {
	var a, b json.Number
	if err := t.Arg(0, &a); err != nil {
		return nil, err
	}
	if err := t.Arg(1, &b); err != nil {
		return nil, err
	}
	return sum([]json.Number{a, b})
}

// xsum(list) returns the sum of a list of numbers; any float makes a float.
func xsum(_ context.Context, t *conveyor.Task) (any, error) {
	var numbers []json.Number
	if err := t.Arg(0, &numbers); err != nil {
		return nil, err
	}
	return sum(numbers)
}

// fail(message) fails with a non-retryable ValueError.
func fail(_ context.Context, t *conveyor.Task) (any, error) {
	message := "boom"
	if t.NumArgs() > 0 {
		var v any
		if err := t.Arg(0, &v); err != nil {
			return nil, err
		}
		if s, ok := v.(string); ok {
			message = s
		} else {
			message = fmt.Sprint(v)
		}
	}
	return nil, conveyor.NonRetryable(conveyor.NewTaskError("ValueError", message))
}

// lang() returns "go".
func lang(context.Context, *conveyor.Task) (any, error) { return conveyor.Language, nil }

// sleep(seconds) sleeps, returns null; it stops early when cancelled.
func sleep(ctx context.Context, t *conveyor.Task) (any, error) {
	var seconds float64
	if err := t.Arg(0, &seconds); err != nil {
		return nil, err
	}
	if seconds < 0 {
		return nil, conveyor.NonRetryable(conveyor.NewTaskError("ValueError", "seconds must not be negative"))
	}
	timer := time.NewTimer(time.Duration(seconds * float64(time.Second)))
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// sum adds JSON numbers exactly while all are integers (and the total fits
// in int64), in floating point otherwise. A float total keeps a fraction
// part in JSON ("6.0", not "6") so that it reads back as a float.
func sum(numbers []json.Number) (any, error) {
	var total int64
	integers := true
	for _, n := range numbers {
		i, err := strconv.ParseInt(n.String(), 10, 64)
		if err != nil || (i > 0 && total > math.MaxInt64-i) || (i < 0 && total < math.MinInt64-i) {
			integers = false
			break
		}
		total += i
	}
	if integers {
		return total, nil
	}
	var f float64
	for _, n := range numbers {
		v, err := n.Float64()
		if err != nil {
			return nil, conveyor.NonRetryable(conveyor.NewTaskError("TypeError", fmt.Sprintf("not a number: %s", n)))
		}
		f += v
	}
	text := strconv.FormatFloat(f, 'g', -1, 64)
	if !strings.ContainsAny(text, ".eEnN") {
		text += ".0"
	}
	return json.RawMessage(text), nil
}
