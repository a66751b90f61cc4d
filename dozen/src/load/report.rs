//! What a run measured: per-endpoint counts, errors by status and latency histograms (HDR),
//! overall and per second, and the report made of them (a table or JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::mix::Endpoint;

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status; 2xx is a success.
    Status(u16),
    /// `GET /api/me` answered 200 without some services (`missing` not empty): an error.
    Degraded,
    /// No response within the request timeout.
    Timeout,
    /// No response: the connection failed.
    Connection,
    /// Not sent: `--max-in-flight` requests were already running when it was due.
    Dropped,
    /// A signup whose verification mail did not arrive in time.
    NoMail,
    /// A 2xx response whose body is not what the API promises.
    BadBody,
}

impl Outcome {
    /// Whether it counts as a success: a 2xx response.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Status(status) if (200..300).contains(status))
    }

    /// Its name in "errors by status".
    pub fn label(&self) -> String {
        match self {
            Self::Status(status) => status.to_string(),
            Self::Degraded => "degraded".to_owned(),
            Self::Timeout => "timeout".to_owned(),
            Self::Connection => "connection".to_owned(),
            Self::Dropped => "dropped".to_owned(),
            Self::NoMail => "no-mail".to_owned(),
            Self::BadBody => "bad-body".to_owned(),
        }
    }
}

/// Latencies are recorded in microseconds, up to an hour, to 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug)]
struct EndpointRecord {
    requests: u64,
    successes: u64,
    errors_by_status: BTreeMap<String, u64>,
    latency: Histogram<u64>,
    /// One histogram per second of the run, by when each request was due.
    per_second: Vec<Histogram<u64>>,
}

impl EndpointRecord {
    fn new() -> Self {
        Self {
            requests: 0,
            successes: 0,
            errors_by_status: BTreeMap::new(),
            latency: histogram(),
            per_second: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Records {
    start: Instant,
    endpoints: BTreeMap<Endpoint, EndpointRecord>,
    errors: u64,
    skipped: u64,
}

/// Collects every request's outcome while a run lasts; shared by all its tasks.
#[derive(Debug)]
pub struct Recorder {
    records: Mutex<Records>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            records: Mutex::new(Records {
                start: Instant::now(),
                endpoints: BTreeMap::new(),
                errors: 0,
                skipped: 0,
            }),
        }
    }
}

impl Recorder {
    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forget everything recorded and start the clock of a new run; its start.
    pub fn start_run(&self) -> Instant {
        let mut records = self.records();
        let start = Instant::now();
        *records = Records {
            start,
            endpoints: BTreeMap::new(),
            errors: 0,
            skipped: 0,
        };
        start
    }

    /// Record a request to `endpoint` sent (or due) at `sent`; `latency` when a response came.
    pub fn record(&self, endpoint: Endpoint, sent: Instant, outcome: Outcome, latency: Option<Duration>) {
        let mut records = self.records();
        let second = sent.saturating_duration_since(records.start).as_secs() as usize;
        let success = outcome.is_success();
        if !success {
            records.errors += 1;
        }
        let record = records
            .endpoints
            .entry(endpoint)
            .or_insert_with(EndpointRecord::new);
        record.requests += 1;
        if success {
            record.successes += 1;
        } else {
            *record.errors_by_status.entry(outcome.label()).or_default() += 1;
        }
        if let Some(latency) = latency {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
            record.latency.saturating_record(micros);
            if record.per_second.len() <= second {
                record.per_second.resize_with(second + 1, histogram);
            }
            record.per_second[second].saturating_record(micros);
        }
    }

    /// A request the mix asked for that could not be made (a friend acceptance with no
    /// request waiting): not sent, so neither a success nor an error.
    pub fn skip(&self) {
        self.records().skipped += 1;
    }

    /// Errors so far in this run.
    pub fn errors(&self) -> u64 {
        self.records().errors
    }

    /// The report of everything recorded since the run started.
    pub fn report(&self, url: &str, rate: f64, mix: String) -> Report {
        let records = self.records();
        let endpoints: Vec<EndpointReport> = records
            .endpoints
            .iter()
            .map(|(endpoint, record)| EndpointReport {
                endpoint: endpoint.name(),
                route: endpoint.route(),
                in_mix: Endpoint::MIXABLE.contains(endpoint),
                requests: record.requests,
                successes: record.successes,
                errors: record.requests - record.successes,
                errors_by_status: record.errors_by_status.clone(),
                latency_ms: (!record.latency.is_empty()).then(|| Percentiles::of(&record.latency)),
                per_second: record
                    .per_second
                    .iter()
                    .enumerate()
                    .filter(|(_, histogram)| !histogram.is_empty())
                    .map(|(second, histogram)| Second {
                        second: second as u64,
                        responses: histogram.len(),
                        p50_ms: millis(histogram.value_at_quantile(0.5)),
                        p99_ms: millis(histogram.value_at_quantile(0.99)),
                    })
                    .collect(),
            })
            .collect();
        let requests = endpoints.iter().map(|e| e.requests).sum();
        let successes = endpoints.iter().map(|e| e.successes).sum();
        let rate_limited = endpoints
            .iter()
            .map(|e| e.errors_by_status.get("429").copied().unwrap_or(0))
            .sum();
        Report {
            url: url.to_owned(),
            rate,
            mix,
            seconds: records.start.elapsed().as_secs_f64(),
            requests,
            successes,
            errors: requests - successes,
            rate_limited,
            skipped: records.skipped,
            endpoints,
        }
    }
}

fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The gateway it loaded.
    pub url: String,
    /// The arrival rate asked for, requests per second.
    pub rate: f64,
    /// The mix, as `name=weight,…`.
    pub mix: String,
    /// How long the run took, until the last response.
    pub seconds: f64,
    /// Every request of every endpoint.
    pub requests: u64,
    /// Those answered 2xx.
    pub successes: u64,
    /// The others.
    pub errors: u64,
    /// The errors that were 429 Too Many Requests (the gateway's rate limits).
    pub rate_limited: u64,
    /// Friend acceptances not sent because no request was waiting.
    pub skipped: u64,
    /// Each endpoint called.
    pub endpoints: Vec<EndpointReport>,
}

/// The result of one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    /// Its name (`me`, `signup`, …).
    pub endpoint: &'static str,
    /// `METHOD /path`.
    pub route: &'static str,
    /// Whether the mix schedules it; `mailbox` and `verify` follow signups instead.
    pub in_mix: bool,
    /// Requests sent (or dropped).
    pub requests: u64,
    /// Those answered 2xx.
    pub successes: u64,
    /// The others.
    pub errors: u64,
    /// The errors by status code, or `timeout`, `connection`, `dropped`, `degraded`, `no-mail`, `bad-body`.
    pub errors_by_status: BTreeMap<String, u64>,
    /// Latency of every response, from when its request was due; none when nothing answered.
    pub latency_ms: Option<Percentiles>,
    /// Latency per second of the run, by when each request was due.
    pub per_second: Vec<Second>,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// The slowest.
    pub max: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            p50: millis(histogram.value_at_quantile(0.5)),
            p90: millis(histogram.value_at_quantile(0.9)),
            p99: millis(histogram.value_at_quantile(0.99)),
            p99_9: millis(histogram.value_at_quantile(0.999)),
            max: millis(histogram.max()),
        }
    }
}

/// One second of one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds since the start.
    pub second: u64,
    /// Responses to requests due in that second.
    pub responses: u64,
    /// Their median latency.
    pub p50_ms: f64,
    /// Their 99th percentile.
    pub p99_ms: f64,
}

impl Report {
    /// The report as a table for a terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<15} {:<31} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}  errors by status",
            "endpoint", "route", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for endpoint in &self.endpoints {
            let latency = match &endpoint.latency_ms {
                Some(p) => format!(
                    "{:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                    p.p50, p.p90, p.p99, p.p99_9, p.max
                ),
                None => format!("{:>9} {:>9} {:>9} {:>9} {:>9}", "-", "-", "-", "-", "-"),
            };
            let errors: Vec<String> = endpoint
                .errors_by_status
                .iter()
                .map(|(status, count)| format!("{status}: {count}"))
                .collect();
            let _ = writeln!(
                out,
                "{:<15} {:<31} {:>8} {:>7} {latency}  {}",
                endpoint.endpoint,
                endpoint.route,
                endpoint.requests,
                endpoint.errors,
                errors.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "{:<15} {:<31} {:>8} {:>7}",
            "total", "", self.requests, self.errors
        );
        let _ = writeln!(
            out,
            "{} requests in {:.1} s ({:.1}/s achieved, {}/s asked), {} errors{}",
            self.requests,
            self.seconds,
            self.requests as f64 / self.seconds.max(f64::EPSILON),
            self.rate,
            self.errors,
            if self.skipped > 0 {
                format!(
                    ", {} friend acceptances skipped (no request waiting)",
                    self.skipped
                )
            } else {
                String::new()
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_latency_comes_only_from_responses() {
        let recorder = Recorder::default();
        let start = recorder.start_run();
        recorder.record(
            Endpoint::Me,
            start,
            Outcome::Status(200),
            Some(Duration::from_millis(4)),
        );
        recorder.record(
            Endpoint::Me,
            start,
            Outcome::Status(429),
            Some(Duration::from_millis(1)),
        );
        recorder.record(Endpoint::Me, start, Outcome::Dropped, None);
        recorder.record(
            Endpoint::Signup,
            start,
            Outcome::Status(202),
            Some(Duration::from_millis(30)),
        );
        let report = recorder.report("http://x", 10.0, "me=1".to_owned());
        assert_eq!((report.requests, report.successes, report.errors), (4, 2, 2));
        assert_eq!(report.rate_limited, 1);
        let me = &report.endpoints[1];
        assert_eq!(me.endpoint, "me");
        assert_eq!((me.requests, me.successes, me.errors), (3, 1, 2));
        assert_eq!(
            me.errors_by_status,
            BTreeMap::from([("429".to_owned(), 1), ("dropped".to_owned(), 1)])
        );
        let latency = me.latency_ms.as_ref().expect("latency");
        assert!((3.99..=4.01).contains(&latency.max), "{}", latency.max);
        assert_eq!(me.per_second[0].responses, 2);
    }
}
