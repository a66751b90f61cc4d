//! Prometheus metrics: one recorder per process, rendered by the service's own `/metrics`
//! route (no second listener), plus the HTTP request metrics every route gets.
//!
//! `/metrics` answers in the Prometheus text format, or in OpenMetrics when the scraper asks
//! for it ([`Format::negotiate`]); there the buckets of the latency histograms
//! ([`LatencyHistogram`]) carry exemplars: the trace of a recent sampled record in each.

mod openmetrics;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderValue, Method, StatusCode};
use metrics_exporter_prometheus::formatting::{sanitize_label_key, sanitize_label_value};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::SpanContext;

use self::openmetrics::Exemplar;

/// Latency buckets, in seconds: fine below 10 ms, where most of dozen's answers fall.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use.
pub fn recorder() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|builder| builder.install_recorder())
            // Only fails if another recorder was installed first, which nothing in dozen does.
            .unwrap_or_else(|e| panic!("installing the metrics recorder failed: {e}"));
        metrics::describe_counter!(
            "http_requests_total",
            "HTTP requests answered, by method, route and status"
        );
        metrics::describe_histogram!(
            "http_request_duration_seconds",
            metrics::Unit::Seconds,
            "Time to answer an HTTP request, by method, route and status"
        );
        metrics_process::Collector::default().describe();
        handle
    })
}

/// Drop idle histogram samples now and then, as the exporter asks.
pub async fn run_upkeep(stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => recorder().run_upkeep(),
            () = stop.cancelled() => return,
        }
    }
}

/// The formats `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4: for whoever does not ask for OpenMetrics.
    Prometheus,
    /// OpenMetrics 1.0.0, the only one with exemplars.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header prefers: OpenMetrics when it ranks it above the
    /// Prometheus text (Prometheus itself asks so), the Prometheus text otherwise, and also
    /// when it accepts neither: a scraper that cannot choose gets the classic format.
    pub fn negotiate(accept: Option<&HeaderValue>) -> Self {
        let Some(accept) = accept.and_then(|accept| accept.to_str().ok()) else {
            return Self::Prometheus;
        };
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.split(',') {
            let Ok(range) = range.trim().parse::<mime::Mime>() else {
                continue;
            };
            let quality = range
                .get_param("q")
                .and_then(|q| q.as_str().parse::<f32>().ok())
                .unwrap_or(1.0);
            match (range.type_().as_str(), range.subtype().as_str()) {
                ("application", "openmetrics-text") => openmetrics = openmetrics.max(quality),
                ("text", "plain" | "*") | ("*", "*") => text = text.max(quality),
                _ => {}
            }
        }
        if openmetrics > text {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    /// The `Content-Type` of an exposition in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The exposition in `format`, with fresh process figures (memory, CPU, open files).
pub fn render(format: Format) -> String {
    metrics_process::Collector::default().collect();
    let text = recorder().render();
    match format {
        Format::Prometheus => text,
        Format::OpenMetrics => {
            let exemplars = EXEMPLARS.read().unwrap_or_else(|e| e.into_inner());
            openmetrics::from_prometheus(&text, |series, le| {
                let bucket = BUCKET_LABELS.iter().position(|label| label == le)?;
                exemplars.get(series)?.buckets[bucket]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .copied()
            })
        }
    }
}

/// A histogram of latencies in seconds, in [`LATENCY_BUCKETS`], whose buckets each keep an
/// exemplar: the trace and value of the latest sampled record that fell in it.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    histogram: metrics::Histogram,
    exemplars: Arc<Exemplars>,
}

/// One exemplar a bucket, the `+Inf` bucket last.
#[derive(Debug)]
struct Exemplars {
    buckets: [Mutex<Option<Exemplar>>; LATENCY_BUCKETS.len() + 1],
}

/// The exemplars of every latency histogram, by the text of its bucket lines up to their `le`
/// label (`name_bucket{a="1",`), where the OpenMetrics rendering finds them.
static EXEMPLARS: LazyLock<RwLock<HashMap<String, Arc<Exemplars>>>> = LazyLock::new(RwLock::default);

/// The `le` label of each bucket as the exporter writes it.
static BUCKET_LABELS: LazyLock<Vec<String>> = LazyLock::new(|| {
    LATENCY_BUCKETS
        .iter()
        .map(f64::to_string)
        .chain(["+Inf".to_owned()])
        .collect()
});

impl LatencyHistogram {
    /// The histogram `name` (ending in `_seconds`, which gives it the latency buckets) with
    /// `labels`, registered with the process's recorder: the same one for the same name and
    /// labels. Register once and keep it where a path records often.
    pub fn new(name: &'static str, labels: &[(&'static str, String)]) -> Self {
        debug_assert!(name.ends_with("_seconds"), "{name} has no latency buckets");
        recorder();
        let mut series = format!("{name}_bucket{{");
        for (key, value) in labels {
            series.push_str(&format!(
                "{}=\"{}\",",
                sanitize_label_key(key),
                sanitize_label_value(value)
            ));
        }
        let found = EXEMPLARS
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&series)
            .cloned();
        let exemplars = match found {
            Some(exemplars) => exemplars,
            None => EXEMPLARS
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(series)
                .or_insert_with(|| {
                    Arc::new(Exemplars {
                        buckets: std::array::from_fn(|_| Mutex::new(None)),
                    })
                })
                .clone(),
        };
        Self {
            histogram: metrics::histogram!(name, labels),
            exemplars,
        }
    }

    /// Record `took`, made in `trace`: the exemplar of its bucket when the trace is sampled.
    pub fn record(&self, took: Duration, trace: Option<&SpanContext>) {
        let value = took.as_secs_f64();
        self.histogram.record(value);
        let Some(trace) = trace.filter(|trace| trace.is_sampled()) else {
            return;
        };
        // The bucket the exporter counts it in: the first whose bound it does not exceed.
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        *self.exemplars.buckets[bucket]
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Exemplar {
            trace_id: trace.trace_id(),
            value,
            at: SystemTime::now(),
        });
    }
}

/// Count and time an answered request by method, matched route and status, in the trace it
/// was handled in.
pub fn record_http(method: &Method, route: &str, status: StatusCode, took: Duration, trace: &SpanContext) {
    let (count, duration) = http_handles(method, route, status);
    count.increment(1);
    duration.record(took, Some(trace));
}

/// The handles of `http_requests_total` and `http_request_duration_seconds`.
type HttpHandles = (metrics::Counter, LatencyHistogram);

/// The handles of each route, by method and status.
type HandlesByRoute = HashMap<String, Vec<(Method, StatusCode, HttpHandles)>>;

/// By route, then method and status: registered once each, since looking a metric up by its
/// labels (three strings made, hashed and freed) cost more than recording into it.
static HTTP_HANDLES: LazyLock<RwLock<HandlesByRoute>> = LazyLock::new(RwLock::default);

fn http_handles(method: &Method, route: &str, status: StatusCode) -> HttpHandles {
    let find = |handles: &HandlesByRoute| {
        handles.get(route).and_then(|known| {
            known
                .iter()
                .find(|(m, s, _)| m == method && *s == status)
                .map(|(_, _, handles)| handles.clone())
        })
    };
    if let Some(handles) = find(&HTTP_HANDLES.read().unwrap_or_else(|e| e.into_inner())) {
        return handles;
    }
    let mut all = HTTP_HANDLES.write().unwrap_or_else(|e| e.into_inner());
    if let Some(handles) = find(&all) {
        return handles;
    }
    // Registered with the process's recorder, not a no-op one kept for ever.
    recorder();
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", route.to_owned()),
        ("status", status.as_u16().to_string()),
    ];
    let handles = (
        metrics::counter!("http_requests_total", &labels),
        LatencyHistogram::new("http_request_duration_seconds", &labels),
    );
    all.entry(route.to_owned())
        .or_default()
        .push((method.clone(), status, handles.clone()));
    handles
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    fn negotiated(accept: &str) -> Format {
        Format::negotiate(Some(&HeaderValue::from_str(accept).expect("a header value")))
    }

    #[test]
    fn openmetrics_only_for_whoever_prefers_it() {
        // What Prometheus 2 sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiated(prometheus), Format::OpenMetrics);
        assert_eq!(negotiated("application/openmetrics-text"), Format::OpenMetrics);
        assert_eq!(
            negotiated("Application/OpenMetrics-Text; q=0.3"),
            Format::OpenMetrics
        );
        for classic in [
            "*/*",
            "text/plain",
            "text/plain;version=0.0.4",
            "application/openmetrics-text;q=0.5, text/*",
            "application/openmetrics-text;q=0, */*;q=0.1",
            "application/openmetrics-text;q=0",
            "application/json",
            "not a media type, ;;;",
        ] {
            assert_eq!(negotiated(classic), Format::Prometheus, "{classic}");
        }
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }

    fn trace(flags: TraceFlags) -> SpanContext {
        SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
            flags,
            false,
            TraceState::default(),
        )
    }

    #[test]
    fn a_sampled_request_is_the_exemplar_of_its_bucket() {
        let route = "/exemplars \"quoted\"";
        let took = Duration::from_micros(3_000);
        record_http(
            &Method::GET,
            route,
            StatusCode::OK,
            took,
            &trace(TraceFlags::SAMPLED),
        );
        // Not sampled: counted, but no exemplar.
        let unsampled = SpanContext::new(
            TraceId::from_hex("00000000000000000000000000000abc").expect("trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
            TraceFlags::default(),
            false,
            TraceState::default(),
        );
        record_http(
            &Method::GET,
            route,
            StatusCode::OK,
            Duration::from_millis(700),
            &unsampled,
        );

        let text = render(Format::OpenMetrics);
        let buckets: Vec<&str> = text
            .lines()
            .filter(|line| {
                line.starts_with("http_request_duration_seconds_bucket") && line.contains("exemplars")
            })
            .collect();
        assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1, "{text}");
        let with_exemplars: Vec<&str> = buckets
            .iter()
            .copied()
            .filter(|line| line.contains(" # "))
            .collect();
        assert_eq!(with_exemplars.len(), 1, "{text}");
        let (series, exemplar) = with_exemplars[0].split_once(" # ").expect("an exemplar");
        assert_eq!(
            series,
            r#"http_request_duration_seconds_bucket{method="GET",route="/exemplars \"quoted\"",status="200",le="0.005"} 1"#
        );
        let fields: Vec<&str> = exemplar.split(' ').collect();
        assert_eq!(fields[0], r#"{trace_id="4bf92f3577b34da6a3ce929d0e0e4736"}"#);
        assert_eq!(fields[1], "0.003");
        let at: f64 = fields[2].parse().expect("a timestamp");
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(at <= now && at > now - 60.0, "{at}");
        assert!(text.contains("# TYPE http_requests counter\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");

        // The classic text has no exemplars, nor anything else OpenMetrics adds.
        let classic = render(Format::Prometheus);
        assert!(
            !classic.contains(" # {") && !classic.contains("# EOF"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE http_requests_total counter\n"),
            "{classic}"
        );
    }
}
