"""Module-level task for the tracing test of the process pool: a child
process imports it by name."""

from opentelemetry import trace


def trace_ids():
    """The trace and span id current in the handler (in the child process),
    as hex."""
    context = trace.get_current_span().get_span_context()
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}
