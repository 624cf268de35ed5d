"""An OTLP/gRPC trace receiver for tests: a `TraceService` (the official
definitions of the `opentelemetry-proto` package) that keeps every span it is
sent, for the tests to wait on and inspect.

    sink = SpanSink.start()                      # 127.0.0.1, a free port
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
    spans = sink.wait_for(lambda spans: ..., timeout=20, what="...")
    sink.stop()
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from concurrent import futures
from typing import Any, Callable

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclasses.dataclass(frozen=True)
class Span:
    """One received span. Ids are lower-case hex ("" for no parent); kind is
    the enum's name without its prefix ("SERVER", "PRODUCER", ...) and status
    is "UNSET", "OK" or "ERROR"."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    status: str
    status_message: str
    service: str
    scope: str
    events: tuple[str, ...]
    # (trace id, span id) of each link.
    links: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        parent = self.parent_span_id or "-"
        return (f"{self.service}: {self.name!r} {self.kind} trace={self.trace_id} span={self.span_id} "
                f"parent={parent} status={self.status}")


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(kvs) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _enum_name(enum, number: int, prefix: str) -> str:
    try:
        return enum.Name(number).removeprefix(prefix)
    except ValueError:
        return str(number)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: "SpanSink") -> None:
        self._sink = sink

    def Export(self, request, context):  # noqa: N802 - the gRPC method's name
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            service = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(Span(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=_enum_name(trace_pb2.Span.SpanKind, span.kind, "SPAN_KIND_"),
                        attributes=_attributes(span.attributes),
                        status=_enum_name(trace_pb2.Status.StatusCode, span.status.code, "STATUS_CODE_"),
                        status_message=span.status.message,
                        service=service,
                        scope=scope_spans.scope.name,
                        events=tuple(event.name for event in span.events),
                        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                    ))
        self._sink._add(received)
        return trace_service_pb2.ExportTraceServiceResponse()


class SpanSink:
    """The receiver and the spans it has received so far."""

    def __init__(self, server: grpc.Server, port: int) -> None:
        self._server = server
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._spans: list[Span] = []
        self._changed = threading.Condition()

    @classmethod
    def start(cls, host: str = "127.0.0.1", port: int = 0) -> "SpanSink":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        bound = server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise RuntimeError(f"cannot listen on {host}:{port}")
        sink = cls(server, bound)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(sink), server)
        server.start()
        return sink

    def stop(self) -> None:
        self._server.stop(grace=None)

    def _add(self, spans: list[Span]) -> None:
        with self._changed:
            self._spans.extend(spans)
            self._changed.notify_all()

    def spans(self) -> list[Span]:
        with self._changed:
            return list(self._spans)

    def clear(self) -> None:
        with self._changed:
            self._spans.clear()

    def wait_for(self, condition: Callable[[list[Span]], Any], timeout: float = 20.0, what: str = "spans") -> Any:
        """Waits until condition(spans) is truthy and returns its value;
        raises AssertionError, listing what was received, after timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = condition(list(self._spans))
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    listing = "\n  ".join(str(span) for span in self._spans) or "(none)"
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; received:\n  {listing}")
                self._changed.wait(remaining)


if __name__ == "__main__":  # a manual run: print spans as they come
    sink = SpanSink.start(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(f"listening on {sink.endpoint}", flush=True)
    seen = 0
    try:
        while True:
            spans = sink.wait_for(lambda s: len(s) > seen and s, timeout=3600)
            for span in spans[seen:]:
                print(span, span.attributes, flush=True)
            seen = len(spans)
    except KeyboardInterrupt:
        sink.stop()
