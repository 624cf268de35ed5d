// Command goworker is the traced Go worker of the cross-language trace test
// (tests/polyglot/test_traces.py). It serves:
//
//   - otel.echo(x): returns x;
//   - otel.flaky(x): fails (retryable, retry after 100 ms) on attempt 1,
//     returns x on attempt 2 and later.
//
// Environment: CONVEYOR_ADDR (default http://127.0.0.1:50051), CONVEYOR_QUEUE
// (default "default"), CONVEYOR_WORKER_ID, CONVEYOR_CONCURRENCY (default 4),
// and the OpenTelemetry SDK's standard variables: OTEL_EXPORTER_OTLP_ENDPOINT
// (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; an http:// endpoint is plaintext),
// OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_SCHEDULE_DELAY...
// SIGTERM or SIGINT drains the worker, flushes the spans and exits 0.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"go.conveyor.dev/conveyor"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "goworker:", err)
		os.Exit(1)
	}
}

func run() error {
	concurrency, err := strconv.Atoi(getenv("CONVEYOR_CONCURRENCY", "4"))
	if err != nil {
		return fmt.Errorf("CONVEYOR_CONCURRENCY: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	// The exporter and the provider's default resource read the OTEL_*
	// variables (endpoint, service name, batch delays).
	exporter, err := otlptracegrpc.New(ctx)
	if err != nil {
		return fmt.Errorf("OTLP exporter: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter))
	otel.SetTracerProvider(tp)
	defer func() {
		flush, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tp.Shutdown(flush); err != nil {
			fmt.Fprintln(os.Stderr, "goworker: flushing spans:", err)
		}
	}()

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	conn, err := conveyor.NewConn(getenv("CONVEYOR_ADDR", "http://127.0.0.1:50051"))
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
	w.Register("otel.echo", echo)
	w.Register("otel.flaky", flaky)
	return w.Run(ctx)
}

func echo(_ context.Context, t *conveyor.Task) (any, error) {
	var x any
	if t.NumArgs() > 0 {
		if err := t.Arg(0, &x); err != nil {
			return nil, err
		}
	}
	return x, nil
}

func flaky(ctx context.Context, t *conveyor.Task) (any, error) {
	if t.Attempt <= 1 {
		return nil, conveyor.RetryAfter(100*time.Millisecond, conveyor.NewTaskError("FlakyError", "otel.flaky fails on its first attempt"))
	}
	return echo(ctx, t)
}

func getenv(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
