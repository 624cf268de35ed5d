package conveyor

import (
	"context"
	"errors"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
)

// Tracing (OpenTelemetry, API only): the SDK starts spans with the global
// tracer provider, looked up at each use, so a provider installed after
// the client or worker was created is used. With no provider installed the
// spans are non-recording and invalid, and nothing is propagated.

// tracerName is the instrumentation scope of the SDK's spans.
const tracerName = "conveyor"

// defaultQueue is the platform's queue for a task that names none.
const defaultQueue = "default"

// w3c is the propagator of TaskSpec.trace_context and of the gRPC
// metadata: W3C Trace Context by definition of the proto field, whatever
// the global propagator is (Go's default global one propagates nothing).
var w3c = propagation.TraceContext{}

// Attribute keys (OpenTelemetry messaging semantic conventions).
const (
	attrMessagingSystem    = attribute.Key("messaging.system")
	attrOperationType      = attribute.Key("messaging.operation.type")
	attrOperationName      = attribute.Key("messaging.operation.name")
	attrDestinationName    = attribute.Key("messaging.destination.name")
	attrMessageID          = attribute.Key("messaging.message.id")
	attrBatchMessageCount  = attribute.Key("messaging.batch.message_count")
	attrTaskName           = attribute.Key("conveyor.task.name")
	attrTaskAttempt        = attribute.Key("conveyor.task.attempt")
	attrErrorType          = attribute.Key("error.type")
	messagingSystemValue   = "conveyor"
	traceparentMetadataKey = "traceparent"
	tracestateMetadataKey  = "tracestate"
)

func tracer() trace.Tracer {
	return otel.GetTracerProvider().Tracer(tracerName, trace.WithInstrumentationVersion(Version))
}

// spanName is "operation destination", or the operation alone when the
// destination is not known (semantic conventions).
func spanName(operation, queue string) string {
	if queue == "" {
		return operation
	}
	return operation + " " + queue
}

// specQueue is the queue a spec is routed to.
func specQueue(spec *conveyorv1.TaskSpec) string {
	if q := spec.GetOptions().GetQueue(); q != "" {
		return q
	}
	return defaultQueue
}

// startPublish starts the PRODUCER span of a submit of specs (one span for
// a batch), a child of ctx's span, and gives each spec without an explicit
// trace context that of the span.
func startPublish(ctx context.Context, specs []*conveyorv1.TaskSpec, batch bool) (context.Context, trace.Span) {
	queue, name := "", ""
	for i, spec := range specs {
		q, n := specQueue(spec), spec.GetName()
		if i == 0 {
			queue, name = q, n
			continue
		}
		if q != queue {
			queue = ""
		}
		if n != name {
			name = ""
		}
	}
	attrs := []attribute.KeyValue{
		attrMessagingSystem.String(messagingSystemValue),
		attrOperationType.String("send"),
		attrOperationName.String("publish"),
	}
	if queue != "" {
		attrs = append(attrs, attrDestinationName.String(queue))
	}
	if name != "" {
		attrs = append(attrs, attrTaskName.String(name))
	}
	if batch {
		attrs = append(attrs, attrBatchMessageCount.Int(len(specs)))
	}
	ctx, span := tracer().Start(ctx, spanName("publish", queue),
		trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	if span.SpanContext().IsValid() {
		var tc *conveyorv1.TraceContext
		for _, spec := range specs {
			if spec.GetTraceContext().GetTraceparent() != "" {
				continue // the caller's own, kept
			}
			if tc == nil {
				tc = traceContextOf(ctx)
			}
			spec.TraceContext = tc
		}
	}
	return ctx, span
}

// traceContextOf is ctx's span context as the proto carries it.
func traceContextOf(ctx context.Context) *conveyorv1.TraceContext {
	carrier := propagation.MapCarrier{}
	w3c.Inject(ctx, carrier)
	if carrier[traceparentMetadataKey] == "" {
		return nil
	}
	return &conveyorv1.TraceContext{
		Traceparent: carrier[traceparentMetadataKey],
		Tracestate:  carrier[tracestateMetadataKey],
	}
}

// endSpan ends span, recording err (if any) as an exception and the error status.
func endSpan(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(otelcodes.Error, err.Error())
	}
	span.End()
}

// startWait starts the CLIENT span of waiting for task id.
func startWait(ctx context.Context, id string) (context.Context, trace.Span) {
	return tracer().Start(ctx, "wait", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attrMessagingSystem.String(messagingSystemValue), attrMessageID.String(id)))
}

// startProcess starts the CONSUMER span of one attempt of a task, its
// parent the context the assignment carries (a new root when it carries
// none, or an invalid one). ctx keeps its values but not its span. The span
// is named after the queue the assignment was routed to; a server too old
// to set Assignment.queue leaves it empty, and then fallbackQueue names it
// (a worker's queue when it consumes one, "" when several).
func startProcess(ctx context.Context, a *conveyorv1.Assignment, fallbackQueue string) (context.Context, trace.Span) {
	queue := a.GetQueue()
	if queue == "" {
		queue = fallbackQueue
	}
	opts := []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attrMessagingSystem.String(messagingSystemValue),
			attrOperationType.String("process"),
			attrOperationName.String("process"),
			attrMessageID.String(a.GetTaskId()),
			attrTaskName.String(a.GetName()),
			attrTaskAttempt.Int64(int64(a.GetAttempt())),
		),
	}
	if queue != "" {
		opts = append(opts, trace.WithAttributes(attrDestinationName.String(queue)))
	}
	carrier := propagation.MapCarrier{}
	if tc := a.GetTraceContext(); tc.GetTraceparent() != "" {
		carrier[traceparentMetadataKey] = tc.GetTraceparent()
		if tc.GetTracestate() != "" {
			carrier[tracestateMetadataKey] = tc.GetTracestate()
		}
	}
	parent := trace.SpanContextFromContext(w3c.Extract(context.Background(), carrier))
	if parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
	} else {
		opts = append(opts, trace.WithNewRoot())
	}
	return tracer().Start(ctx, spanName("process", queue), opts...)
}

// endProcess ends an attempt's span: a failure is recorded as an exception
// (err, the handler's error, or else one made of the failure) and the
// error status.
func endProcess(span trace.Span, failure *conveyorv1.TaskError, err error) {
	if failure != nil && span.IsRecording() {
		if err == nil {
			err = errors.New(failure.GetMessage())
		}
		span.RecordError(err)
		span.SetAttributes(attrErrorType.String(failure.GetType()))
		span.SetStatus(otelcodes.Error, failure.GetType()+": "+failure.GetMessage())
	}
	span.End()
}

// withTraceMetadata adds ctx's span context to the call's outgoing gRPC
// metadata (traceparent, tracestate), unless ctx has no valid span context
// or the metadata already carries a traceparent.
func withTraceMetadata(ctx context.Context) context.Context {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	if len(md.Get(traceparentMetadataKey)) > 0 {
		return ctx
	}
	carrier := propagation.MapCarrier{}
	w3c.Inject(ctx, carrier)
	if carrier[traceparentMetadataKey] == "" {
		return ctx
	}
	pairs := []string{traceparentMetadataKey, carrier[traceparentMetadataKey]}
	if ts := carrier[tracestateMetadataKey]; ts != "" {
		pairs = append(pairs, tracestateMetadataKey, ts)
	}
	return metadata.AppendToOutgoingContext(ctx, pairs...)
}

// startPublishWorkflow starts the PRODUCER span of a workflow's submit, as
// [startPublish] does for a batch of its nodes (their queues as the
// workflow's defaults route them), and gives the workflow the span's trace
// context unless it has its own.
func startPublishWorkflow(ctx context.Context, spec *conveyorv1.WorkflowSpec) (context.Context, trace.Span) {
	proxies := make([]*conveyorv1.TaskSpec, 0, len(spec.GetNodes()))
	for _, n := range spec.GetNodes() {
		queue := n.GetTask().GetOptions().GetQueue()
		if queue == "" {
			queue = spec.GetOptions().GetQueue()
		}
		proxies = append(proxies, &conveyorv1.TaskSpec{
			Name:    n.GetTask().GetName(),
			Options: &conveyorv1.TaskOptions{Queue: queue},
			// Marked as carrying a context, so that startPublish leaves it.
			TraceContext: &conveyorv1.TraceContext{Traceparent: "-"},
		})
	}
	ctx, span := startPublish(ctx, proxies, true)
	if span.SpanContext().IsValid() && spec.GetTraceContext().GetTraceparent() == "" {
		spec.TraceContext = traceContextOf(ctx)
	}
	return ctx, span
}
