//! Prometheus metrics: one recorder per process, rendered by the service's own `/metrics`
//! route (no second listener), plus the HTTP request metrics every route gets.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock, RwLock};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

/// The Prometheus text exposition, with fresh process figures (memory, CPU, open files).
pub fn render() -> String {
    metrics_process::Collector::default().collect();
    recorder().render()
}

/// Count and time an answered request by method, matched route and status.
pub fn record_http(method: &Method, route: &str, status: StatusCode, took: Duration) {
    let (count, duration) = http_handles(method, route, status);
    count.increment(1);
    duration.record(took.as_secs_f64());
}

/// The handles of `http_requests_total` and `http_request_duration_seconds`.
type HttpHandles = (metrics::Counter, metrics::Histogram);

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
        metrics::histogram!("http_request_duration_seconds", &labels),
    );
    all.entry(route.to_owned())
        .or_default()
        .push((method.clone(), status, handles.clone()));
    handles
}
