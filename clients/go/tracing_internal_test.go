package conveyor

import (
	"context"
	"testing"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace/noop"
)

// The process span is named after Assignment.queue; a server too old to
// set it leaves it empty, and then the worker's queue (fallback) names it,
// or nothing does when the worker consumes several.
func TestProcessSpanNameFallsBackWhenTheAssignmentHasNoQueue(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	otel.SetTracerProvider(tp)
	t.Cleanup(func() {
		otel.SetTracerProvider(noop.NewTracerProvider())
		_ = tp.Shutdown(context.Background())
	})
	for _, c := range []struct {
		routed, fallback, want, destination string
	}{
		{routed: "routed", fallback: "only", want: "process routed", destination: "routed"},
		{routed: "routed", fallback: "", want: "process routed", destination: "routed"},
		{routed: "", fallback: "only", want: "process only", destination: "only"},
		{routed: "", fallback: "", want: "process", destination: ""},
	} {
		exp.Reset()
		a := &conveyorv1.Assignment{TaskId: "t-1", Name: "add", Attempt: 1, Queue: c.routed}
		_, span := startProcess(context.Background(), a, c.fallback)
		span.End()
		spans := exp.GetSpans()
		if len(spans) != 1 {
			t.Fatalf("%d spans, want 1", len(spans))
		}
		if spans[0].Name != c.want {
			t.Errorf("queue %q, fallback %q: span %q, want %q", c.routed, c.fallback, spans[0].Name, c.want)
		}
		destination, found := "", false
		for _, kv := range spans[0].Attributes {
			if kv.Key == attrDestinationName {
				destination, found = kv.Value.AsString(), true
			}
		}
		if destination != c.destination || found != (c.destination != "") {
			t.Errorf("queue %q, fallback %q: messaging.destination.name %q (set: %v), want %q",
				c.routed, c.fallback, destination, found, c.destination)
		}
	}
}
