//! W3C trace context (`traceparent`, `tracestate`): taken from incoming requests, put on
//! outgoing ones, and (through [`inject_into_map`] / [`extract_from_map`]) carried inside every
//! message on the bus, so one trace follows a signup across every hop.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The remote parent named by a request's headers (an empty context when there is none).
pub fn extract_from_headers(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Put the current span's context on outgoing headers.
///
/// Written here rather than by the propagator, which formats the header through `format!` and
/// parses its name on every call: this is on the path of every call between services.
pub fn inject_into_headers(headers: &mut HeaderMap) {
    // Entering a span makes its OpenTelemetry context current (context activation).
    let context = Context::current();
    let span = context.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return;
    }
    let traceparent = HeaderValue::from_bytes(&traceparent(span_context))
        .expect("hex digits and dashes are a valid header value");
    headers.insert(TRACEPARENT, traceparent);
    let state = span_context.trace_state().header();
    if !state.is_empty()
        && let Ok(state) = HeaderValue::from_str(&state)
    {
        headers.insert(TRACESTATE, state);
    }
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `00-<trace id>-<span id>-<flags>`, as W3C trace context writes it: version 00, and of the
/// flags only "sampled".
fn traceparent(span: &SpanContext) -> [u8; 55] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'-'; 55];
    let mut write = |at: usize, bytes: &[u8]| {
        for (index, byte) in bytes.iter().enumerate() {
            text[at + 2 * index] = HEX[usize::from(byte >> 4)];
            text[at + 2 * index + 1] = HEX[usize::from(byte & 0xf)];
        }
    };
    write(0, &[0]);
    write(3, &span.trace_id().to_bytes());
    write(36, &span.span_id().to_bytes());
    write(53, &[(span.trace_flags() & TraceFlags::SAMPLED).to_u8()]);
    text
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
    let context = tracing::Span::current().context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceId, TraceState};
    use opentelemetry_http::HeaderInjector;

    use super::*;

    /// The hand-written headers are the ones the W3C propagator writes.
    #[test]
    fn outgoing_headers_are_the_propagators() {
        for (flags, state) in [
            (TraceFlags::SAMPLED, TraceState::default()),
            (TraceFlags::new(0x03), TraceState::default()),
            (
                TraceFlags::default(),
                TraceState::from_key_value([("vendor", "x1")]).expect("state"),
            ),
        ] {
            let span = SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
                SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
                flags,
                true,
                state,
            );
            let context = Context::new().with_remote_span_context(span);
            let mut expected = HeaderMap::new();
            TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut expected));
            let _current = context.attach();
            let mut written = HeaderMap::new();
            inject_into_headers(&mut written);
            // The propagator sends an empty `tracestate`; it means nothing, so none is sent.
            if expected.get("tracestate").is_some_and(|state| state.is_empty()) {
                expected.remove("tracestate");
            }
            assert_eq!(written, expected);
        }
    }

    #[test]
    fn no_trace_no_headers() {
        let mut written = HeaderMap::new();
        inject_into_headers(&mut written);
        assert!(written.is_empty());
    }
}
