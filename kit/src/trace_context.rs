//! W3C trace context (`traceparent`, `tracestate`): taken from incoming requests, put on
//! outgoing ones, and (through [`inject_into_map`] / [`extract_from_map`]) carried inside every
//! message on the bus, so one trace follows a signup across every hop.

use std::collections::HashMap;

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The remote parent named by a request's headers (an empty context when there is none).
pub fn extract_from_headers(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Put the current span's context on outgoing headers.
pub fn inject_into_headers(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// The current span's context as string pairs, for a message envelope.
pub fn inject_into_map() -> HashMap<String, String> {
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut map);
    map
}

/// The remote parent carried by a message envelope.
pub fn extract_from_map(map: &HashMap<String, String>) -> Context {
    TraceContextPropagator::new().extract(map)
}

/// The current trace id as 32 hex digits, when a trace is active.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = tracing::Span::current().context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}
