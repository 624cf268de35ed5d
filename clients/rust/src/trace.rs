//! OpenTelemetry context propagation through `tracing` spans, following the
//! messaging conventions: `publish {queue}` (PRODUCER) around submissions,
//! `process {queue}` (CONSUMER) around each attempt of a handler, `wait`
//! (CLIENT) around waiting for a result.
//!
//! The spans are ordinary `tracing` spans with `otel.*` fields; a program
//! that installs `tracing-opentelemetry`'s layer exports them and the
//! context travels in W3C form in the task (`TaskSpec.trace_context`) and in
//! the `traceparent` metadata of every call. Without that layer no context
//! exists and nothing is sent.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::pb;

/// The W3C form of `span`'s OpenTelemetry context, if it has a valid one.
pub(crate) fn context_of(span: &tracing::Span) -> Option<pb::TraceContext> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_ref = context.span();
    let span_context = span_ref.span_context();
    if !span_context.is_valid() {
        return None;
    }
    Some(pb::TraceContext {
        traceparent: format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        ),
        tracestate: span_context.trace_state().header(),
    })
}

/// Parses a W3C `traceparent` (and `tracestate`) into a remote span context.
pub(crate) fn parse(context: &pb::TraceContext) -> Option<SpanContext> {
    let mut parts = context.traceparent.split('-');
    let version = parts.next()?;
    let trace_id = TraceId::from_hex(parts.next()?).ok()?;
    let span_id = SpanId::from_hex(parts.next()?).ok()?;
    let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
    if version.len() != 2 || version == "ff" {
        return None;
    }
    let state = context.tracestate.parse::<TraceState>().unwrap_or_default();
    let span_context = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state);
    span_context.is_valid().then_some(span_context)
}

/// Makes `span` a child of a remote W3C context.
pub(crate) fn set_parent(span: &tracing::Span, context: &pb::TraceContext) {
    if span.is_disabled() {
        return;
    }
    if let Some(remote) = parse(context) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// Adds `traceparent`/`tracestate` metadata for the current span's context.
pub(crate) fn inject<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
    if let Some(context) = context_of(&tracing::Span::current()) {
        let metadata = request.metadata_mut();
        if let Ok(value) = context.traceparent.parse() {
            metadata.insert("traceparent", value);
        }
        if !context.tracestate.is_empty()
            && let Ok(value) = context.tracestate.parse()
        {
            metadata.insert("tracestate", value);
        }
    }
    request
}

/// The `publish {queue}` span of a submission.
pub(crate) fn publish_span(queue: &str, name: &str, count: usize) -> tracing::Span {
    tracing::info_span!(
        "publish",
        otel.name = %format!("publish {queue}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "conveyor",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = %queue,
        messaging.batch.message_count = count as i64,
        messaging.message.id = tracing::field::Empty,
        conveyor.task.name = %name,
    )
}

/// The `process {queue}` span of one attempt.
pub(crate) fn process_span(assignment: &pb::Assignment) -> tracing::Span {
    let queue = if assignment.queue.is_empty() {
        "default"
    } else {
        assignment.queue.as_str()
    };
    let span = tracing::info_span!(
        "process",
        otel.name = %format!("process {queue}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = "conveyor",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %queue,
        messaging.message.id = %assignment.task_id,
        conveyor.task.name = %assignment.name,
        conveyor.task.attempt = i64::from(assignment.attempt),
    );
    if let Some(context) = &assignment.trace_context {
        set_parent(&span, context);
    }
    span
}

/// The `wait` span around waiting for a task's result.
pub(crate) fn wait_span(task_id: &str) -> tracing::Span {
    tracing::info_span!(
        "wait",
        otel.kind = "client",
        messaging.system = "conveyor",
        messaging.message.id = %task_id,
    )
}

/// Marks `span` failed and records the error as an `exception` event, as the
/// semantic conventions say.
pub(crate) fn record_error_of_type(span: &tracing::Span, error_type: &str, message: &str) {
    if span.is_disabled() {
        return;
    }
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", message);
    tracing::info!(
        parent: span,
        exception.r#type = %error_type,
        exception.message = %message,
        "exception"
    );
}

/// [`record_error_of_type`] for errors without a type of their own.
pub(crate) fn record_error(span: &tracing::Span, message: &str) {
    record_error_of_type(span, "Error", message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_or_are_refused() {
        let good = pb::TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: "vendor=x".into(),
        };
        let parsed = parse(&good).expect("valid");
        assert_eq!(
            parsed.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(parsed.is_sampled() && parsed.is_remote());
        for bad in [
            "",
            "00-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let context = pb::TraceContext {
                traceparent: bad.into(),
                tracestate: String::new(),
            };
            assert!(parse(&context).is_none(), "{bad}");
        }
    }

    #[test]
    fn no_context_without_an_opentelemetry_layer() {
        assert!(context_of(&publish_span("q", "t", 1)).is_none());
    }
}
