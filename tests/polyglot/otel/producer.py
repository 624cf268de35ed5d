"""The traced Python producer of the cross-language trace test.

Inside a span "checkout", submits one task $CONVEYOR_TASK (default
"otel.echo") with the argument "ping" to $CONVEYOR_QUEUE on $CONVEYOR_ADDR,
waits for its result (20 s at most) and prints one JSON line:
{"task_id": ..., "trace_id": ..., "result": ...}. Tracing goes through the
OpenTelemetry SDK and its OTLP/gRPC exporter, configured by the standard
variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_BSP_*);
the Conveyor SDK adds its own spans through the OpenTelemetry API. Retries:
$CONVEYOR_MAX_RETRIES (default 2), 100 ms apart. Exit 1 on any error.
"""

import json
import os
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from conveyor import Conveyor

TIMEOUT = 20.0


def main() -> int:
    # The default resource reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES;
    # the exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (http:// means plaintext).
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("polyglot.producer")
    queue = os.environ.get("CONVEYOR_QUEUE") or "default"
    name = os.environ.get("CONVEYOR_TASK") or "otel.echo"
    retries = int(os.environ.get("CONVEYOR_MAX_RETRIES") or "2")
    try:
        with Conveyor(os.environ.get("CONVEYOR_ADDR") or "http://127.0.0.1:50051") as app:
            with tracer.start_as_current_span("checkout") as span:
                result = app.send_task(name, ["ping"], queue=queue,
                                       retry_policy={"max_retries": retries, "backoff_base": 0.1})
                value = result.get(timeout=TIMEOUT)
                trace_id = format(span.get_span_context().trace_id, "032x")
    finally:
        provider.shutdown()  # exports what is left
    print(json.dumps({"task_id": result.id, "trace_id": trace_id, "result": value}), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # noqa: BLE001 - the test wants a message and exit 1
        print(f"producer: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
