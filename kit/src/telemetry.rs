//! Logs and traces (factor XI): one JSON object per line on stdout, carrying the trace and span
//! ids of the request or message being handled (see [`crate::trace_context`]), which continue
//! the caller's trace; `LOG_FORMAT=pretty` for a human. Spans are recorded as OpenTelemetry
//! spans, and exported over OTLP/HTTP, only when an endpoint is configured.

use std::fmt;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetrySettings};
use crate::trace_context;

/// Flushes exported spans when dropped, at the end of `main`.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Nothing to report to if the flush fails: the logs are the fallback.
        let _ = self.provider.shutdown();
    }
}

/// Install the global subscriber. Call once, early in `main`; a second call (several services
/// in one test process) keeps the first subscriber.
pub fn init(service: &'static str, settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    let mut provider =
        SdkTracerProvider::builder().with_resource(Resource::builder().with_service_name(service).build());
    if let Some(endpoint) = &settings.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .build()?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let tracer = provider.tracer(service);

    let filter = match &settings.log_level {
        Some(level) => EnvFilter::try_new(level)?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let output = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(SpanFields)
            .event_format(JsonLines { service })
            .with_writer(std::io::stdout)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .pretty()
            .with_writer(std::io::stdout)
            .boxed(),
    };
    // Spans are recorded for OpenTelemetry only when they are exported: the trace context a
    // request or message is handled in is kept without them (see `trace_context`), and the
    // level filters only what is logged. Nothing reads the OpenTelemetry context of the span
    // entered last, so entering one does not make its context current.
    let exported = settings.otlp_endpoint.is_some().then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_context_activation(false)
            // Each of these is an allocation or a clock read per span, for attributes that say
            // where in the code a request was handled, not what happened to it.
            .with_location(false)
            .with_target(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(Uncached(LevelFilter::INFO))
    });
    let _already_set = tracing_subscriber::registry()
        .with(exported)
        .with(output.with_filter(Uncached(filter)))
        .try_init();
    Ok(TelemetryGuard { provider })
}

/// A layer's own filter, asked about every span and event as it happens, never once per
/// callsite.
///
/// A layer's filter leaves its verdict in a thread-local for the layer to read when the span or
/// event arrives. A verdict cached at the callsite skips that step, so the layer reads whatever
/// the last question on the thread left there. Questions that no span or event follows are
/// common: sqlx asks whether a query would be logged after every query (`tracing::enabled!`),
/// and every `log` record is asked about first. A span created next on that thread would then
/// be missing from the layers that were asked "no": a request's log lines would lose the
/// span's fields, or the exported trace the span (tokio-rs/tracing#2519).
struct Uncached<F>(F);

impl<S, F: Filter<S>> Filter<S> for Uncached<F> {
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        self.0.enabled(meta, cx)
    }
    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.0.callsite_enabled(meta).is_never() {
            Interest::never()
        } else {
            Interest::sometimes()
        }
    }
    fn event_enabled(&self, event: &Event<'_>, cx: &Context<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, cx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, cx);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, cx: Context<'_, S>) {
        self.0.on_record(id, values, cx);
    }
    fn on_enter(&self, id: &Id, cx: Context<'_, S>) {
        self.0.on_enter(id, cx);
    }
    fn on_exit(&self, id: &Id, cx: Context<'_, S>) {
        self.0.on_exit(id, cx);
    }
    fn on_close(&self, id: Id, cx: Context<'_, S>) {
        self.0.on_close(id, cx);
    }
}

/// Writes each event as one JSON object: time, level, service, target, message, the event's
/// fields, the fields of the spans it happened in, and the trace and span ids.
///
/// No object in a line has a key twice. The line's own keys are fixed, and fields never sit
/// beside them: an event's are under `fields`, its spans' under `span`. Among a span's fields,
/// one recorded again replaces the earlier value; among the spans of an event, an inner span's
/// field wins over an outer one's of the same name; among an event's fields, the last given
/// wins.
struct JsonLines {
    service: &'static str,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = JsonEntries::new(true);
        event.record(&mut fields);

        // Written straight into one buffer: built as a map first and serialised after, with the
        // span's fields parsed back from their text, a line cost about as much as the request
        // it reports.
        let mut line = Line(Vec::with_capacity(512));
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        line.string_entry("time", &time);
        line.string_entry("level", meta.level().as_str());
        line.string_entry("service", self.service);
        line.string_entry("target", meta.target());
        if let Some(message) = &fields.message {
            line.raw_entry("message", message);
        }
        if let Some(scope) = ctx.event_scope() {
            // Each span's fields are kept as the text of a JSON object (`SpanFields`).
            let texts: Vec<String> = scope
                .from_root()
                .filter_map(|span| {
                    let extensions = span.extensions();
                    let text = extensions.get::<FormattedFields<N>>()?;
                    (text.len() > 2).then(|| text.fields.clone())
                })
                .collect();
            match texts.as_slice() {
                [] => {}
                [one] if one.starts_with('{') && one.ends_with('}') => line.raw_entry("span", one.as_bytes()),
                several => {
                    let mut merged = Map::new();
                    for text in several {
                        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
                            merged.extend(map);
                        }
                    }
                    line.key("span");
                    serde_json::to_writer(&mut line.0, &merged).map_err(|_| fmt::Error)?;
                }
            }
        }
        if let Some(trace) = trace_context::current() {
            let (trace_id, span_id) = trace_context::hex_ids(&trace);
            line.hex_entry("trace_id", &trace_id);
            line.hex_entry("span_id", &span_id);
        }
        if !fields.entries.is_empty() {
            line.key("fields");
            fields.write_object(&mut line.0);
        }
        line.0.extend_from_slice(b"}\n");
        writer.write_str(std::str::from_utf8(&line.0).map_err(|_| fmt::Error)?)
    }
}

/// One log line as it is written: a JSON object's opening brace and entries.
struct Line(Vec<u8>);

impl Line {
    fn key(&mut self, key: &str) {
        self.0.push(if self.0.is_empty() { b'{' } else { b',' });
        json_string(&mut self.0, key);
        self.0.push(b':');
    }

    fn string_entry(&mut self, key: &str, value: &str) {
        self.key(key);
        json_string(&mut self.0, value);
    }

    /// An entry whose value is hex digits, which need no escaping.
    fn hex_entry(&mut self, key: &str, digits: &[u8]) {
        self.key(key);
        self.0.push(b'"');
        self.0.extend_from_slice(digits);
        self.0.push(b'"');
    }

    /// An entry whose value is JSON text already.
    fn raw_entry(&mut self, key: &str, json: &[u8]) {
        self.key(key);
        self.0.extend_from_slice(json);
    }
}

/// The fields of spans, as `tracing_subscriber`'s fmt layer keeps them: formatted once, when a
/// span is made, as the text of a JSON object, which each line logged in the span then carries
/// as it is. A field recorded later is added at the end, or replaces the earlier value.
struct SpanFields;

impl<'writer> FormatFields<'writer> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut entries = JsonEntries::new(false);
        fields.record(&mut entries);
        let mut object = Vec::with_capacity(entries.entries.len() + 2);
        entries.write_object(&mut object);
        writer.write_str(std::str::from_utf8(&object).map_err(|_| fmt::Error)?)
    }

    fn add_fields(&self, current: &'writer mut FormattedFields<Self>, fields: &Record<'_>) -> fmt::Result {
        let mut entries = JsonEntries::new(false);
        fields.record(&mut entries);
        if entries.entries.is_empty() {
            return Ok(());
        }
        let mut added = Vec::with_capacity(entries.entries.len() + 2);
        entries.write_object(&mut added);
        // Recording is rare next to logging: merged as maps, so a field recorded again
        // replaces its earlier value instead of appearing twice.
        let mut merged = match serde_json::from_str::<Value>(&current.fields) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&added) {
            merged.extend(map);
        }
        current.fields = serde_json::to_string(&merged).map_err(|_| fmt::Error)?;
        Ok(())
    }
}

/// Fields written as the entries of a JSON object (`"name":value`, comma-separated), an
/// event's message apart when asked.
struct JsonEntries {
    entries: Vec<u8>,
    /// Whether the `message` field goes to `message` rather than among the entries.
    message_apart: bool,
    /// The message, as a JSON value.
    message: Option<Vec<u8>>,
    /// The names of the entries, to notice one given twice.
    names: Vec<&'static str>,
    /// Whether a name was given twice.
    repeated: bool,
}

impl JsonEntries {
    fn new(message_apart: bool) -> Self {
        Self {
            // Room for a request's fields, so the buffer is not grown along the way.
            entries: Vec::with_capacity(256),
            message_apart,
            message: None,
            names: Vec::new(),
            repeated: false,
        }
    }

    /// The entries as a JSON object, each name once: the last value given for a name wins.
    fn write_object(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        out.extend_from_slice(&self.entries);
        out.push(b'}');
        if self.repeated {
            // serde_json keeps the last value of a repeated key.
            let start = out.len() - self.entries.len() - 2;
            if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&out[start..]) {
                out.truncate(start);
                let _ = serde_json::to_writer(&mut *out, &map);
            }
        }
    }

    /// Where `field`'s value is to be written, its name written first if it is an entry.
    fn value_of(&mut self, field: &Field) -> &mut Vec<u8> {
        if self.message_apart && field.name() == "message" {
            return self.message.insert(Vec::new());
        }
        if self.names.contains(&field.name()) {
            self.repeated = true;
        } else {
            self.names.push(field.name());
        }
        if !self.entries.is_empty() {
            self.entries.push(b',');
        }
        json_string(&mut self.entries, field.name());
        self.entries.push(b':');
        &mut self.entries
    }
}

impl Visit for JsonEntries {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json writes NaN and the infinities, which JSON lacks, as null.
        let _ = serde_json::to_writer(self.value_of(field), &value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        let _ = serde_json::to_writer(self.value_of(field), &value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        let _ = serde_json::to_writer(self.value_of(field), &value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        let text: &[u8] = if value { b"true" } else { b"false" };
        self.value_of(field).extend_from_slice(text);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        json_string(self.value_of(field), value);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole chain, so a log line says why and not only what.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        json_string(self.value_of(field), &text);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        json_string(self.value_of(field), &format!("{value:?}"));
    }
}

/// `text` as a JSON string: copied as it is when nothing in it needs escaping (the usual case:
/// names, routes, ids), escaped by serde_json otherwise.
fn json_string(out: &mut Vec<u8>, text: &str) {
    if text
        .bytes()
        .all(|byte| byte >= 0x20 && byte != b'"' && byte != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(out, text);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::Context;

    use super::*;
    use crate::trace_context::Handling;

    /// Log lines written into a buffer, by a subscriber made as `init` makes it.
    fn lines_of(log: impl FnOnce()) -> Vec<Value> {
        let written = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = written.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(SpanFields)
            .event_format(JsonLines { service: "test" })
            .with_writer(move || SharedBuffer(sink.clone()));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
        let text = String::from_utf8(written.lock().expect("lock").clone()).expect("UTF-8");
        text.lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }

    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_carries_its_message_fields_spans_and_trace() {
        let lines = lines_of(|| {
            let outer = Handling::start(
                tracing::info_span!(
                    "request",
                    route = "/a \"quoted\" route",
                    request_id = "r1",
                    attempts = tracing::field::Empty,
                ),
                Context::new(),
            );
            outer.span().record("attempts", 2);
            outer.in_scope(|| {
                tracing::info!("in the request");
                let inner = tracing::info_span!("inner", request_id = "r2", step = 3);
                inner.in_scope(|| {
                    tracing::warn!(
                        status = 503,
                        reason = "down\nhard",
                        share = 0.5,
                        retried = true,
                        codes = ?[7, 8],
                        "answered"
                    );
                });
            });
            tracing::info!("outside");
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["span"]["request_id"], "r1");
        assert_eq!(lines[0]["span"]["route"], "/a \"quoted\" route");
        // Recorded after the span was made.
        assert_eq!(lines[0]["span"]["attempts"], 2);
        assert_eq!(lines[0]["trace_id"], lines[1]["trace_id"]);
        let line = &lines[1];
        assert_eq!(line["message"], "answered");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["service"], "test");
        assert_eq!(line["fields"]["status"], 503);
        assert_eq!(line["fields"]["reason"], "down\nhard");
        assert_eq!(line["fields"]["share"], 0.5);
        assert_eq!(line["fields"]["retried"], true);
        assert_eq!(line["fields"]["codes"], "[7, 8]");
        assert!(line["fields"].get("message").is_none());
        // Every span's fields; an inner span's win.
        assert_eq!(line["span"]["route"], "/a \"quoted\" route");
        assert_eq!(line["span"]["request_id"], "r2");
        assert_eq!(line["span"]["step"], 3);
        assert_eq!(line["trace_id"].as_str().map(str::len), Some(32));
        let outside = &lines[2];
        assert_eq!(outside["message"], "outside");
        assert!(outside.get("span").is_none() && outside.get("trace_id").is_none());
        assert!(outside.get("fields").is_none());
    }

    /// Fails on a JSON object that has a key twice, at any depth (`serde_json::Value` would
    /// silently keep one of them).
    struct NoRepeatedKeys;

    impl<'de> serde::Deserialize<'de> for NoRepeatedKeys {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(NoRepeatedKeys)
        }
    }

    impl<'de> serde::de::Visitor<'de> for NoRepeatedKeys {
        type Value = NoRepeatedKeys;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_unit<E>(self) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<Self, A::Error> {
            while items.next_element::<NoRepeatedKeys>()?.is_some() {}
            Ok(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut entries: A) -> Result<Self, A::Error> {
            let mut keys = std::collections::HashSet::new();
            while let Some(key) = entries.next_key::<String>()? {
                if !keys.insert(key.clone()) {
                    return Err(serde::de::Error::custom(format!("the key {key} twice")));
                }
                entries.next_value::<NoRepeatedKeys>()?;
            }
            Ok(self)
        }
    }

    #[test]
    fn no_line_has_a_key_twice() {
        let written = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = written.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(SpanFields)
            .event_format(JsonLines { service: "test" })
            .with_writer(move || SharedBuffer(sink.clone()));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let outer = tracing::info_span!("outer", status = 1, attempts = tracing::field::Empty);
            let _outer = outer.enter();
            // Recorded twice, and a field given a value at creation recorded again.
            outer.record("attempts", 1);
            outer.record("attempts", 2);
            outer.record("status", 3);
            tracing::info!("in one span");
            let inner = tracing::info_span!("inner", status = 4, message = "a span's message");
            let _inner = inner.enter();
            inner.record("status", 5);
            // An event's fields named like the line's own keys and like its spans' fields,
            // and one given twice.
            tracing::info!(
                level = "mine",
                trace_id = "mine",
                time = 0,
                span = "mine",
                fields = "mine",
                status = 6,
                repeated = 1,
                repeated = 2,
                "in two spans"
            );
        });
        let text = String::from_utf8(written.lock().expect("lock").clone()).expect("UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            if let Err(error) = serde_json::from_str::<NoRepeatedKeys>(line) {
                panic!("{error}: {line}");
            }
        }
        let first: Value = serde_json::from_str(lines[0]).expect("JSON");
        assert_eq!(first["span"]["attempts"], 2, "the last recorded value wins");
        assert_eq!(first["span"]["status"], 3);
        let second: Value = serde_json::from_str(lines[1]).expect("JSON");
        assert_eq!(second["level"], "INFO");
        assert_eq!(second["message"], "in two spans");
        assert_eq!(second["span"]["status"], 5, "the inner span's field wins");
        assert_eq!(second["span"]["attempts"], 2);
        assert_eq!(second["fields"]["level"], "mine");
        assert_eq!(second["fields"]["status"], 6);
        assert_eq!(second["fields"]["repeated"], 2, "the last given wins");
    }
}
