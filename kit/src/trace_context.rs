//! W3C trace context (`traceparent`, `tracestate`): taken from incoming requests, put on
//! outgoing ones, and (through [`inject_into_map`] / [`extract_from_map`]) carried inside every
//! message on the bus, so one trace follows a signup across every hop.
//!
//! The trace context of the request or message being handled is a task-local, set by whoever
//! starts handling it (a [`Handling`]): the HTTP middleware and the bus subscriber.
//! Outgoing calls, published messages and log lines read it from there. When spans are exported
//! it is the context of the handler's exported span; otherwise no span is recorded at all
//! (recording one is a large share of what a proxied request costs, BENCHMARKS.md) and the
//! context is made here: a new span id in the caller's trace, or a new trace.

use std::collections::HashMap;
use std::future::Future;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tokio::task::futures::TaskLocalFuture;
use tracing::Instrument;
use tracing::instrument::Instrumented;
use tracing_opentelemetry::OpenTelemetrySpanExt;

tokio::task_local! {
    static CURRENT: SpanContext;
}

/// What handling one request or message runs in: its span (disabled unless spans are exported
/// or logged) and its trace context.
#[derive(Debug)]
pub struct Handling {
    span: tracing::Span,
    context: SpanContext,
}

impl Handling {
    /// Start handling something whose caller's trace context is `parent` (an empty context when
    /// there is none), in `span`. The trace context is the span's own when it is exported,
    /// otherwise a new span id in the parent's trace (or in a new, sampled one).
    pub fn start(span: tracing::Span, parent: Context) -> Self {
        if !span.is_disabled() {
            // Without the exporting layer, the span has no OpenTelemetry context of its own.
            let _ = span.set_parent(parent.clone());
            let own = span.context().span().span_context().clone();
            if own.is_valid() {
                return Self { span, context: own };
            }
        }
        let ids = RandomIdGenerator::default();
        let parent = parent.span();
        let parent = parent.span_context();
        let context = if parent.is_valid() {
            SpanContext::new(
                parent.trace_id(),
                ids.new_span_id(),
                parent.trace_flags(),
                false,
                parent.trace_state().clone(),
            )
        } else {
            SpanContext::new(
                ids.new_trace_id(),
                ids.new_span_id(),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            )
        };
        Self { span, context }
    }

    /// Pick up in `span` the trace that `stored` names: a `traceparent` kept with something
    /// that work left behind ([`current_traceparent`]), such as the verification link a signup
    /// mailed. `span` is a child of the span that stored it, so the trace goes on where that
    /// work stopped, and it links to the trace handled now (the request that followed the
    /// link), so each trace leads to the other. Without a readable stored trace, `span`
    /// continues the current one.
    pub fn resume(span: tracing::Span, stored: Option<&str>) -> Self {
        let now = current();
        let stored = stored
            .map(|text| {
                extract_from_map(&HashMap::from([(
                    TRACEPARENT.as_str().to_owned(),
                    text.to_owned(),
                )]))
            })
            .filter(|context| context.span().span_context().is_valid());
        match stored {
            Some(parent) => {
                if let Some(now) = now {
                    span.add_link(now);
                }
                Self::start(span, parent)
            }
            None => Self::start(
                span,
                now.map(|now| Context::new().with_remote_span_context(now))
                    .unwrap_or_default(),
            ),
        }
    }

    /// The span.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The trace context.
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Set an attribute of the exported span; nothing when spans are not exported. For what is
    /// learnt while handling, such as an answer's status: recorded as a field instead, it would
    /// have the span's fields formatted again for the log, where the event that reports it
    /// carries it anyway.
    pub fn set_attribute(&self, key: &'static str, value: i64) {
        self.span.set_attribute(key, value);
    }

    /// Run `f` in the span and the trace context.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _entered = self.span.enter();
        CURRENT.sync_scope(self.context.clone(), f)
    }

    /// Run `future` in the trace context, its span entered whenever it runs.
    pub fn run<F: Future>(&self, future: F) -> TaskLocalFuture<SpanContext, Instrumented<F>> {
        scope(self.context.clone(), future.instrument(self.span.clone()))
    }
}

/// Run `future` in the trace context `context`.
pub fn scope<F: Future>(context: SpanContext, future: F) -> TaskLocalFuture<SpanContext, F> {
    CURRENT.scope(context, future)
}

/// The trace context of what this task is handling, if any.
pub fn current() -> Option<SpanContext> {
    CURRENT.try_with(SpanContext::clone).ok()
}

/// The remote parent named by a request's headers (an empty context when there is none).
pub fn extract_from_headers(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Put the current trace context on outgoing headers.
///
/// Written here rather than by the propagator, which formats the header through `format!` and
/// parses its name on every call: this is on the path of every call between services.
pub fn inject_into_headers(headers: &mut HeaderMap) {
    // Nothing to pass on outside a request or message: there is no current trace.
    let _ = CURRENT.try_with(|current| {
        let traceparent = HeaderValue::from_bytes(&traceparent(current))
            .expect("hex digits and dashes are a valid header value");
        headers.insert(TRACEPARENT, traceparent);
        let state = current.trace_state().header();
        if !state.is_empty()
            && let Ok(state) = HeaderValue::from_str(&state)
        {
            headers.insert(TRACESTATE, state);
        }
    });
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `00-<trace id>-<span id>-<flags>`, as W3C trace context writes it: version 00, and of the
/// flags only "sampled".
fn traceparent(span: &SpanContext) -> [u8; 55] {
    let (trace_id, span_id) = hex_ids(span);
    let sampled = span.trace_flags().is_sampled();
    let mut text = [b'-'; 55];
    text[..2].copy_from_slice(b"00");
    text[3..35].copy_from_slice(&trace_id);
    text[36..52].copy_from_slice(&span_id);
    text[53..].copy_from_slice(if sampled { b"01" } else { b"00" });
    text
}

/// `span`'s trace id and span id in lowercase hex, as trace context headers and log lines
/// write them.
pub(crate) fn hex_ids(span: &SpanContext) -> ([u8; 32], [u8; 16]) {
    fn hex<const N: usize>(bytes: &[u8]) -> [u8; N] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0; N];
        for (pair, byte) in text.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        text
    }
    (hex(&span.trace_id().to_bytes()), hex(&span.span_id().to_bytes()))
}

/// The current trace context as string pairs, for a message envelope.
pub fn inject_into_map() -> HashMap<String, String> {
    let mut map = HashMap::new();
    if let Some(current) = current() {
        let context = Context::new().with_remote_span_context(current);
        TraceContextPropagator::new().inject_context(&context, &mut map);
    }
    map
}

/// The remote parent carried by a message envelope.
pub fn extract_from_map(map: &HashMap<String, String>) -> Context {
    TraceContextPropagator::new().extract(map)
}

/// The current trace context as a `traceparent` value, to keep with what carries the work on
/// later (see [`Handling::resume`]).
pub fn current_traceparent() -> Option<String> {
    current().map(|current| String::from_utf8_lossy(&traceparent(&current)).into_owned())
}

/// The current trace id as 32 hex digits, when a trace is active.
pub fn current_trace_id() -> Option<String> {
    current().map(|current| current.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceId};
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
            let context = Context::new().with_remote_span_context(span.clone());
            let mut expected = HeaderMap::new();
            TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut expected));
            let mut written = HeaderMap::new();
            let handling = Handling {
                span: tracing::Span::none(),
                context: span,
            };
            handling.in_scope(|| inject_into_headers(&mut written));
            // The propagator sends an empty `tracestate`; it means nothing, so none is sent.
            if expected.get("tracestate").is_some_and(|state| state.is_empty()) {
                expected.remove("tracestate");
            }
            assert_eq!(written, expected);
        }
    }

    /// Without an exported span, a handler's context is a new span in its caller's trace.
    #[test]
    fn a_handler_continues_its_callers_trace() {
        let caller = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
            TraceFlags::default(),
            true,
            TraceState::from_key_value([("vendor", "x1")]).expect("state"),
        );
        let parent = Context::new().with_remote_span_context(caller.clone());
        let own = Handling::start(tracing::Span::none(), parent).context;
        assert!(own.is_valid());
        assert_eq!(own.trace_id(), caller.trace_id());
        assert_ne!(own.span_id(), caller.span_id());
        assert_eq!(own.trace_flags(), caller.trace_flags());
        assert_eq!(own.trace_state(), caller.trace_state());
        assert!(!own.is_remote());
    }

    #[test]
    fn a_handler_without_a_caller_starts_a_sampled_trace() {
        let first = Handling::start(tracing::Span::none(), Context::new()).context;
        let second = Handling::start(tracing::Span::none(), Context::new()).context;
        assert!(first.is_valid() && first.is_sampled());
        assert_ne!(first.trace_id(), second.trace_id());
    }

    /// Work picked up later continues the trace it was stored in, not the one that picked it up.
    #[test]
    fn a_resumed_handling_continues_the_stored_trace() {
        let signup = Handling::start(tracing::Span::none(), Context::new());
        let stored = signup.in_scope(current_traceparent).expect("a trace");
        let follow_up = Handling::start(tracing::Span::none(), Context::new());
        let resumed = follow_up.in_scope(|| Handling::resume(tracing::Span::none(), Some(&stored)));
        assert_eq!(resumed.context.trace_id(), signup.context.trace_id());
        assert_ne!(resumed.context.span_id(), signup.context.span_id());
    }

    #[test]
    fn without_a_stored_trace_the_current_one_goes_on() {
        let current = Handling::start(tracing::Span::none(), Context::new());
        for stored in [None, Some("not a traceparent")] {
            let resumed = current.in_scope(|| Handling::resume(tracing::Span::none(), stored));
            assert_eq!(resumed.context.trace_id(), current.context.trace_id());
        }
    }

    #[test]
    fn no_trace_no_headers() {
        let mut written = HeaderMap::new();
        inject_into_headers(&mut written);
        assert!(written.is_empty());
    }
}
