//! `GET /ops/figures`: what the status page charts, per service over the last ten minutes —
//! request rate, share of 5xx answers, p99 latency, bus backlog and dead letters.
//!
//! A background task reads every service's `/metrics` (each instance of it, and the gateway's
//! own recorder) every `FIGURES_INTERVAL`, in parallel, each within the interval and at most
//! [`SCRAPE_TIMEOUT`]. Rates and the p99 come from the difference between an instance's two
//! latest readings (the p99 from the latency histogram's bucket counts, as Prometheus's
//! `histogram_quantile` does), summed over the service's instances; the bus's gauges are read
//! as they are. A service none of whose instances answered has no figures for that moment (a
//! gap, logged at debug), never an error. The body is made once per round and served as it is,
//! so requests cost the services nothing.
//!
//! The page is public: it holds numbers and service names only, never an error text, a host
//! name or an instance's address.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use dozen_kit::http::client::Upstream;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// How far back the figures go.
const WINDOW: Duration = Duration::from_secs(600);

/// Longest a service's `/metrics` may take to answer (less when the interval is shorter).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The quantile of the latency series.
const QUANTILE: f64 = 0.99;

/// Routes whose requests are not the service's traffic: the probes, the scrapes and the status
/// page itself, which would otherwise chart their own polling.
const OPS_ROUTES: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/ops/status",
    "/ops/figures",
];

/// The page: a time per sample, and each service's series, one number (or null, a gap) per
/// sample, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Figures {
    /// Seconds between samples (0 when sampling is off).
    pub interval_seconds: u64,
    /// When each sample was taken, in seconds (to the millisecond) since the Unix epoch.
    pub times: Vec<f64>,
    /// The gateway, then each service behind it.
    pub services: Vec<ServiceFigures>,
}

/// One service's series; null where it did not answer (or, for the p99, answered nothing, and
/// for the bus, has none).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceFigures {
    /// Its name.
    #[schema(value_type = String)]
    pub name: &'static str,
    /// Requests answered per second, all instances together.
    pub requests_per_second: Vec<Option<f64>>,
    /// Share of those answered with a 5xx status, from 0 to 1.
    pub error_share: Vec<Option<f64>>,
    /// The 99th percentile of their latency, in seconds.
    pub p99_seconds: Vec<Option<f64>>,
    /// Events not yet published from its outbox or not yet handled by its subscribers.
    pub bus_backlog: Vec<Option<f64>>,
    /// Events waiting in its dead-letter queues.
    pub dead_letters: Vec<Option<f64>>,
}

/// What one `/metrics` text says, its label sets summed, the ops routes left out.
#[derive(Debug, Clone, Default, PartialEq)]
struct Reading {
    requests: f64,
    server_errors: f64,
    /// The latency histogram's cumulative counts by upper bound, ascending (`+Inf` last).
    latency: Vec<(f64, f64)>,
    /// None when the service has no bus (or has not measured it yet).
    bus_backlog: Option<f64>,
    dead_letters: Option<f64>,
}

impl Reading {
    /// Read the Prometheus text exposition; None when it is not one.
    fn parse(text: &str) -> Option<Self> {
        use prometheus_parse::Value;
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).ok()?;
        let mut reading = Self::default();
        let ops_route = |sample: &prometheus_parse::Sample| {
            sample
                .labels
                .get("route")
                .is_some_and(|route| OPS_ROUTES.contains(&route))
        };
        let add = |sum: &mut Option<f64>, value: f64| *sum = Some(sum.unwrap_or(0.0) + value);
        for sample in &scrape.samples {
            match (sample.metric.as_str(), &sample.value) {
                ("http_requests_total", Value::Counter(count)) if !ops_route(sample) => {
                    reading.requests += count;
                    if sample
                        .labels
                        .get("status")
                        .is_some_and(|status| status.starts_with('5'))
                    {
                        reading.server_errors += count;
                    }
                }
                ("http_request_duration_seconds", Value::Histogram(buckets)) if !ops_route(sample) => {
                    for bucket in buckets {
                        match reading
                            .latency
                            .iter_mut()
                            .find(|(bound, _)| *bound == bucket.less_than)
                        {
                            Some((_, count)) => *count += bucket.count,
                            None => reading.latency.push((bucket.less_than, bucket.count)),
                        }
                    }
                }
                ("bus_outbox_backlog" | "bus_consumer_lag", Value::Gauge(count)) => {
                    add(&mut reading.bus_backlog, *count);
                }
                ("bus_dead_letters", Value::Gauge(count)) => add(&mut reading.dead_letters, *count),
                _ => {}
            }
        }
        reading.latency.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(reading)
    }

    /// What happened between `earlier` and this reading, or None if the counters went back (the
    /// process restarted, or another process answered).
    fn since(&self, earlier: &Self) -> Option<Self> {
        if self.requests < earlier.requests || self.server_errors < earlier.server_errors {
            return None;
        }
        let mut latency = Vec::with_capacity(self.latency.len());
        for &(bound, count) in &self.latency {
            let before = earlier
                .latency
                .iter()
                .find(|(other, _)| *other == bound)
                .map_or(0.0, |(_, count)| *count);
            if count < before {
                return None;
            }
            latency.push((bound, count - before));
        }
        Some(Self {
            requests: self.requests - earlier.requests,
            server_errors: self.server_errors - earlier.server_errors,
            latency,
            bus_backlog: self.bus_backlog,
            dead_letters: self.dead_letters,
        })
    }
}

/// The `quantile` of the latencies counted in `buckets` (cumulative, ascending bounds): within
/// the bucket it falls in, interpolated linearly, as Prometheus's `histogram_quantile` does;
/// the highest finite bound when it falls in `+Inf`. None when nothing was counted.
fn quantile(quantile: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = quantile * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let share = if count > below {
                (rank - below) / (count - below)
            } else {
                1.0
            };
            return Some(lower + (bound - lower) * share);
        }
        (lower, below) = (bound, count);
    }
    Some(lower)
}

/// One service's figures at one sample.
#[derive(Debug, Clone, Copy, Default)]
struct Point {
    requests_per_second: Option<f64>,
    error_share: Option<f64>,
    p99_seconds: Option<f64>,
    bus_backlog: Option<f64>,
    dead_letters: Option<f64>,
}

/// Where a service's readings come from.
#[derive(Debug)]
enum Source {
    /// The gateway's own recorder.
    Gateway,
    /// Each instance of a service behind it.
    Service(Upstream),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Service(upstream) => upstream.name(),
        }
    }

    fn instances(&self) -> usize {
        match self {
            Self::Gateway => 1,
            Self::Service(upstream) => upstream.instance_count(),
        }
    }

    /// Instance `index`'s reading now, or None if it did not answer in time with metrics.
    async fn read(&self, index: usize, timeout: Duration) -> Option<Reading> {
        let upstream = match self {
            Self::Gateway => {
                return Reading::parse(&dozen_kit::metrics::render(
                    dozen_kit::metrics::Format::Prometheus,
                ));
            }
            Self::Service(upstream) => upstream,
        };
        let answer = upstream
            .call(Method::GET, "/metrics")
            .on_instance(index)
            .unguarded()
            .timeout(timeout)
            .send()
            .await;
        let text = match answer {
            Ok(answer) if answer.status().is_success() => answer.bytes().await.map_err(|e| e.to_string()),
            Ok(answer) => Err(format!("status {}", answer.status())),
            Err(error) => Err(error.to_string()),
        };
        match text.map(|body| Reading::parse(&String::from_utf8_lossy(&body))) {
            Ok(Some(reading)) => Some(reading),
            Ok(None) => {
                tracing::debug!(service = upstream.name(), index, "its metrics could not be read");
                None
            }
            Err(why) => {
                tracing::debug!(service = upstream.name(), index, why, "no metrics this round");
                None
            }
        }
    }
}

/// The figures: where they come from, what was last read of each instance, the samples of the
/// window and the body made of them.
#[derive(Debug)]
pub struct FiguresPage {
    interval: Option<Duration>,
    /// The gateway, then each service behind it.
    sources: Vec<Source>,
    body: RwLock<Bytes>,
}

impl FiguresPage {
    /// A page of the gateway and `upstreams`, sampled every `interval` (none: never, and the
    /// series stay empty).
    pub fn new(interval: Option<Duration>, upstreams: Vec<Upstream>) -> Self {
        let page = Self {
            interval,
            sources: std::iter::once(Source::Gateway)
                .chain(upstreams.into_iter().map(Source::Service))
                .collect(),
            body: RwLock::default(),
        };
        page.publish(&VecDeque::new());
        page
    }

    /// The latest figures.
    pub fn response(&self) -> Response {
        let body = self.body.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut response = body.into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    /// Sample until `stop`; returns at once when sampling is off.
    pub async fn sample(self: Arc<Self>, stop: CancellationToken) {
        let Some(interval) = self.interval else { return };
        let sources = &self.sources;
        let capacity = (WINDOW.as_secs_f64() / interval.as_secs_f64()).ceil() as usize;
        let timeout = interval.min(SCRAPE_TIMEOUT);
        let mut last: Vec<Vec<Option<(Instant, Reading)>>> = sources
            .iter()
            .map(|source| vec![None; source.instances()])
            .collect();
        let mut samples: VecDeque<(f64, Vec<Point>)> = VecDeque::with_capacity(capacity);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let reads = sources.iter().flat_map(|source| {
                (0..source.instances())
                    .map(move |index| async move { (source.read(index, timeout).await, Instant::now()) })
            });
            let mut readings = futures_util::future::join_all(reads).await.into_iter();
            let points: Vec<Point> = last
                .iter_mut()
                .map(|instances| {
                    let now: Vec<_> = readings.by_ref().take(instances.len()).collect();
                    point(instances, now)
                })
                .collect();
            // The first round only sets where the rates start from.
            if std::mem::take(&mut first) {
                continue;
            }
            if samples.len() == capacity {
                samples.pop_front();
            }
            samples.push_back((unix_seconds(), points));
            self.publish(&samples);
        }
    }

    /// Make the body of `samples`.
    fn publish(&self, samples: &VecDeque<(f64, Vec<Point>)>) {
        let series = |index: usize, figure: fn(&Point) -> Option<f64>| -> Vec<Option<f64>> {
            samples
                .iter()
                .map(|(_, points)| points.get(index).and_then(figure))
                .collect()
        };
        let figures = Figures {
            interval_seconds: self.interval.map_or(0, |interval| interval.as_secs()),
            times: samples.iter().map(|(at, _)| *at).collect(),
            services: self
                .sources
                .iter()
                .enumerate()
                .map(|(index, source)| ServiceFigures {
                    name: source.name(),
                    requests_per_second: series(index, |point| point.requests_per_second),
                    error_share: series(index, |point| point.error_share),
                    p99_seconds: series(index, |point| point.p99_seconds),
                    bus_backlog: series(index, |point| point.bus_backlog),
                    dead_letters: series(index, |point| point.dead_letters),
                })
                .collect(),
        };
        let body = Bytes::from(serde_json::to_vec(&figures).unwrap_or_default());
        *self.body.write().unwrap_or_else(|e| e.into_inner()) = body;
    }
}

/// A service's point from its instances' readings `now`, each against the one before (which
/// `now` then replaces). An instance that did not answer adds nothing; one that answered
/// for the first time, or after a restart, adds its gauges but no rates yet.
fn point(last: &mut [Option<(Instant, Reading)>], now: Vec<(Option<Reading>, Instant)>) -> Point {
    let mut point = Point::default();
    let mut changes: Option<(f64, Reading)> = None;
    let add = |sum: &mut Option<f64>, value: Option<f64>| {
        if let Some(value) = value {
            *sum = Some(sum.unwrap_or(0.0) + value);
        }
    };
    for (last, (reading, at)) in last.iter_mut().zip(now) {
        let Some(reading) = reading else {
            *last = None;
            continue;
        };
        add(&mut point.bus_backlog, reading.bus_backlog);
        add(&mut point.dead_letters, reading.dead_letters);
        if let Some((then, before)) = last.as_ref()
            && let Some(change) = reading.since(before)
        {
            let seconds = at.duration_since(*then).as_secs_f64().max(f64::EPSILON);
            let (rate, total) = changes.get_or_insert_with(|| (0.0, Reading::default()));
            *rate += change.requests / seconds;
            total.requests += change.requests;
            total.server_errors += change.server_errors;
            for (bound, count) in change.latency {
                match total.latency.iter_mut().find(|(other, _)| *other == bound) {
                    Some((_, sum)) => *sum += count,
                    None => total.latency.push((bound, count)),
                }
            }
        }
        *last = Some((at, reading));
    }
    if let Some((rate, total)) = changes {
        point.requests_per_second = Some(rate);
        point.error_share = Some(if total.requests > 0.0 {
            total.server_errors / total.requests
        } else {
            0.0
        });
        point.p99_seconds = quantile(QUANTILE, &total.latency);
    }
    point
}

/// Now, in seconds since the Unix epoch, to the millisecond: samples a second apart may fall
/// in one whole second.
fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_millis() as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE http_requests_total counter
http_requests_total{method="GET",route="/me",status="200"} 90
http_requests_total{method="GET",route="/me",status="503"} 10
http_requests_total{method="GET",route="/readyz",status="200"} 1000
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{method="GET",route="/me",status="200",le="0.01"} 50
http_request_duration_seconds_bucket{method="GET",route="/me",status="200",le="0.1"} 90
http_request_duration_seconds_bucket{method="GET",route="/me",status="200",le="+Inf"} 90
http_request_duration_seconds_sum{method="GET",route="/me",status="200"} 3
http_request_duration_seconds_count{method="GET",route="/me",status="200"} 90
http_request_duration_seconds_bucket{method="GET",route="/me",status="503",le="0.01"} 0
http_request_duration_seconds_bucket{method="GET",route="/me",status="503",le="0.1"} 0
http_request_duration_seconds_bucket{method="GET",route="/me",status="503",le="+Inf"} 10
http_request_duration_seconds_sum{method="GET",route="/me",status="503"} 50
http_request_duration_seconds_count{method="GET",route="/me",status="503"} 10
http_request_duration_seconds_bucket{method="GET",route="/readyz",status="200",le="0.01"} 1000
http_request_duration_seconds_bucket{method="GET",route="/readyz",status="200",le="0.1"} 1000
http_request_duration_seconds_bucket{method="GET",route="/readyz",status="200",le="+Inf"} 1000
# TYPE bus_outbox_backlog gauge
bus_outbox_backlog 2
# TYPE bus_consumer_lag gauge
bus_consumer_lag{subscriber="friends"} 3
# TYPE bus_dead_letters gauge
bus_dead_letters{subscriber="friends"} 1
"#;

    #[test]
    fn a_reading_sums_the_label_sets_and_leaves_the_probes_out() {
        let reading = Reading::parse(TEXT).expect("a reading");
        assert_eq!(reading.requests, 100.0);
        assert_eq!(reading.server_errors, 10.0);
        assert_eq!(
            reading.latency,
            vec![(0.01, 50.0), (0.1, 90.0), (f64::INFINITY, 100.0)]
        );
        assert_eq!(reading.bus_backlog, Some(5.0));
        assert_eq!(reading.dead_letters, Some(1.0));
        let gateway = Reading::parse("# TYPE http_requests_total counter\n").expect("a reading");
        assert_eq!(gateway.bus_backlog, None, "no bus: no backlog, not zero");
    }

    #[test]
    fn the_quantile_is_interpolated_within_its_bucket() {
        let buckets = [(0.01, 50.0), (0.1, 90.0), (f64::INFINITY, 100.0)];
        let median = quantile(0.5, &buckets).expect("a quantile");
        assert!((median - 0.01).abs() < 1e-12, "{median}");
        let p80 = quantile(0.8, &buckets).expect("a quantile");
        assert!((p80 - 0.0775).abs() < 1e-12, "{p80}");
        assert_eq!(quantile(0.99, &buckets), Some(0.1), "in +Inf: the highest bound");
        assert_eq!(quantile(0.99, &[(0.01, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.99, &[]), None);
    }

    #[test]
    fn rates_come_from_two_readings_and_a_restart_is_a_gap_in_them() {
        let before = Reading::parse(TEXT).expect("a reading");
        let mut after = before.clone();
        after.requests += 20.0;
        after.server_errors += 5.0;
        for (bound, count) in &mut after.latency {
            *count += if *bound < 0.05 { 10.0 } else { 20.0 };
        }
        let start = Instant::now();
        let mut last = vec![Some((start, before.clone()))];
        let point = point(&mut last, vec![(Some(after), start + Duration::from_secs(10))]);
        assert_eq!(point.requests_per_second, Some(2.0));
        assert_eq!(point.error_share, Some(0.25));
        assert!(point.p99_seconds.is_some_and(|p99| p99 > 0.01 && p99 <= 0.1));
        assert_eq!(point.bus_backlog, Some(5.0));

        let restarted = Reading::parse(&TEXT.replace("} 90\n", "} 1\n")).expect("a reading");
        let next = super::point(
            &mut last,
            vec![(Some(restarted), start + Duration::from_secs(20))],
        );
        assert_eq!(next.requests_per_second, None, "counters went back: no rate");
        assert_eq!(next.bus_backlog, Some(5.0), "the gauges still count");

        let silent = super::point(&mut last, vec![(None, start + Duration::from_secs(30))]);
        assert_eq!((silent.requests_per_second, silent.bus_backlog), (None, None));
    }
}
