//! The one way a service calls another: a shared connection pool with timeouts, every request
//! carrying the caller's trace context and request id, and around every call the policy of
//! [`UpstreamSettings`]:
//!
//! - a timeout per attempt (`UPSTREAM_TIMEOUT`, or less when the call has a deadline of its own,
//!   [`Call::timeout`]);
//! - retries only where repeating is safe (GET, HEAD, PUT, DELETE, OPTIONS, and a POST that
//!   carries an `Idempotency-Key`, which the callee dedups), only after a connection error, a
//!   timeout or 502/503/504, at most `UPSTREAM_MAX_ATTEMPTS` attempts, after a jittered
//!   exponential backoff (tower's), and only while the upstream's retry budget (tower's
//!   `TpsBudget`, as in Finagle) allows: retries add at most `UPSTREAM_RETRY_BUDGET_PERCENT`
//!   of the calls plus a small floor per second, so they never multiply the load of an outage;
//! - a circuit breaker per upstream ([`super::breaker`]), shared by every clone of it, that
//!   refuses calls at once while the upstream is presumed down.
//!
//! Metrics, by `upstream`: `upstream_requests_total` and `upstream_request_duration_seconds`
//! for each attempt by `outcome` (`success`, `client_error`, `server_error`, `timeout`,
//! `connection_error`), `upstream_retries_total`, `upstream_retries_denied_total` (the budget
//! said no), `upstream_rejected_total` (refused by an open breaker), and the breaker's
//! `upstream_breaker_state` gauge (0 closed, 1 half-open, 2 open).
//!
//! The latency and outcome are those of the answer's head; a body read afterwards by the caller
//! is not covered by retries or the breaker.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use reqwest::Method;
use tokio::time::Instant;
use tower::retry::backoff::{Backoff, ExponentialBackoffMaker, MakeBackoff};
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::rng::HasherRng;

use crate::config::UpstreamSettings;
use crate::http::breaker::{Breaker, BreakerHealth, BreakerSettings};
use crate::http::request_id;
use crate::trace_context;

/// How long a deposit counts in a retry budget.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// A pooled HTTP client; cheap to clone.
///
/// The connection pool is built on the first call, not at start-up: building it loads the
/// system's TLS roots, which costs milliseconds and megabytes that a service which calls no
/// one (or not yet) should not pay before it is ready.
#[derive(Debug, Clone)]
pub struct HttpClient {
    timeout: Duration,
    policy: UpstreamSettings,
    client: Arc<OnceLock<reqwest::Client>>,
    /// The guards of the upstreams made so far, by name: two upstreams with one name share a
    /// breaker and a budget, as they share the service behind them.
    guards: Arc<Mutex<HashMap<&'static str, Arc<Guard>>>>,
}

impl HttpClient {
    /// A client whose every attempt ends after `timeout`, with the default retry and breaker
    /// policy.
    pub fn new(timeout: Duration) -> Self {
        Self::with_policy(timeout, UpstreamSettings::default())
    }

    /// A client whose every attempt ends after `timeout`, retrying and breaking as `policy`
    /// says.
    pub fn with_policy(timeout: Duration, policy: UpstreamSettings) -> Self {
        Self {
            timeout,
            policy,
            client: Arc::default(),
            guards: Arc::default(),
        }
    }

    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(self.timeout)
                .connect_timeout(self.timeout.min(Duration::from_secs(2)))
                .pool_idle_timeout(Duration::from_secs(30))
                .user_agent(concat!("dozen/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_else(|error| {
                    // Only a TLS back end that cannot start fails here; plain HTTP still works.
                    tracing::error!(error = %error, "HTTP client set-up failed; using the defaults");
                    reqwest::Client::new()
                })
        })
    }

    /// A named peer at `base_url` (from its `<PEER>_URL` setting).
    pub fn upstream(&self, name: &'static str, base_url: impl Into<String>) -> Upstream {
        let guard = self
            .guards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name)
            .or_insert_with(|| Arc::new(Guard::new(name, &self.policy)))
            .clone();
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Upstream(Arc::new(Peer {
            name,
            base: reqwest::Url::parse(&base_url).ok(),
            base_url,
            http: self.clone(),
            guard,
        }))
    }
}

/// What protects one upstream: its breaker, retry budget and backoff.
#[derive(Debug)]
struct Guard {
    name: &'static str,
    /// Per [`Outcome`], the handles of `upstream_requests_total` and
    /// `upstream_request_duration_seconds`, registered on first use: looking a metric up by
    /// its labels on every attempt cost more than the rest of the bookkeeping.
    attempt_metrics: [OnceLock<(metrics::Counter, metrics::Histogram)>; Outcome::ALL.len()],
    breaker: Breaker,
    budget: TpsBudget,
    backoff: ExponentialBackoffMaker,
    max_attempts: u32,
}

impl Guard {
    fn new(name: &'static str, policy: &UpstreamSettings) -> Self {
        describe_metrics();
        let first = policy.upstream_retry_backoff;
        // Two retries by default: the ceiling only stops a larger UPSTREAM_MAX_ATTEMPTS from
        // waiting for ever.
        let ceiling = first.saturating_mul(16).max(Duration::from_millis(1));
        Self {
            name,
            attempt_metrics: Default::default(),
            breaker: Breaker::new(
                name,
                BreakerSettings {
                    failure_threshold: policy.breaker_failure_threshold,
                    open_for: policy.breaker_open_for,
                },
            ),
            // The settings' ranges keep to what TpsBudget accepts (ratio ≤ 1000, floor < 2³¹).
            // It charges a retry `(1 / ratio) as isize` deposits, and 1 / 0.2f32 is 4.99…: a
            // hair less than the ratio makes 20 % cost 5 deposits, not 4.
            budget: TpsBudget::new(
                BUDGET_WINDOW,
                policy.upstream_retry_budget_min_per_second,
                policy.upstream_retry_budget_percent as f32 / 100.0 * (1.0 - 1e-6),
            ),
            // A jitter of 1.0: each delay is the exponential base plus up to as much again.
            // Cannot fail: min ≤ max, max > 0, and the jitter is in range.
            backoff: ExponentialBackoffMaker::new(first.min(ceiling), ceiling, 1.0, HasherRng::default())
                .unwrap_or_default(),
            max_attempts: policy.upstream_max_attempts,
        }
    }
}

impl Guard {
    /// Count and time one attempt that ended in `outcome`.
    fn record_attempt(&self, outcome: Outcome, took: Duration) {
        let (count, duration) = self.attempt_metrics[outcome as usize].get_or_init(|| {
            // Registered with the process's recorder, not a no-op one.
            crate::metrics::recorder();
            let labels = [("upstream", self.name), ("outcome", outcome.label())];
            (
                metrics::counter!("upstream_requests_total", &labels),
                metrics::histogram!("upstream_request_duration_seconds", &labels),
            )
        });
        count.increment(1);
        duration.record(took.as_secs_f64());
    }
}

/// Another service this one calls; clones share its breaker and retry budget, and cost one
/// reference count (a request handler clones it for every call).
#[derive(Debug, Clone)]
pub struct Upstream(Arc<Peer>);

#[derive(Debug)]
struct Peer {
    /// The peer's service name, for logs and metrics.
    name: &'static str,
    /// Its base URL, without a trailing slash.
    base_url: String,
    /// `base_url` parsed once: a call's URL is a copy with its path set, not a new parse of
    /// scheme and host. `None` if it does not parse; each call then reports why.
    base: Option<reqwest::Url>,
    http: HttpClient,
    guard: Arc<Guard>,
}

impl Upstream {
    /// The peer's service name.
    pub fn name(&self) -> &'static str {
        self.0.name
    }

    /// The peer's base URL.
    pub fn base_url(&self) -> &str {
        &self.0.base_url
    }

    /// The state of its circuit breaker.
    pub fn health(&self) -> BreakerHealth {
        self.0.guard.breaker.health()
    }

    /// A call to `path` (starting with `/`, or empty for the base URL itself), carrying trace
    /// context and request id; [`Call::send`] sends it.
    pub fn call(&self, method: Method, path: &str) -> Call {
        let mut headers = http::HeaderMap::new();
        trace_context::inject_into_headers(&mut headers);
        if let Some(id) = request_id::current() {
            headers.insert(request_id::HEADER, id);
        }
        let client = self.0.http.client();
        let request = match self.0.base.as_ref().and_then(|base| with_path(base, path)) {
            Some(url) => client.request(method, url),
            None => client.request(method, format!("{}{path}", self.0.base_url)),
        }
        .headers(headers);
        Call {
            upstream: self.clone(),
            request,
            deadline: None,
            guarded: true,
        }
    }
}

/// `base` followed by `path` (and its query): the URL `{base}{path}` parses to, or `None` for
/// a path this shortcut does not handle (one not starting with `/`, or with a fragment).
fn with_path(base: &reqwest::Url, path: &str) -> Option<reqwest::Url> {
    if !(path.is_empty() || path.starts_with('/')) || path.contains('#') {
        return None;
    }
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    let mut url = base.clone();
    if !path.is_empty() {
        match base.path().trim_end_matches('/') {
            "" => url.set_path(path),
            prefix => url.set_path(&format!("{prefix}{path}")),
        }
    }
    if query.is_some() {
        url.set_query(query);
    }
    Some(url)
}

/// A call being built; the methods mirror reqwest's `RequestBuilder`.
#[derive(Debug)]
#[must_use = "a call does nothing until it is sent"]
pub struct Call {
    upstream: Upstream,
    request: reqwest::RequestBuilder,
    /// When the whole call, retries included, must be over.
    deadline: Option<Instant>,
    /// Whether the breaker and retries apply ([`Call::unguarded`]).
    guarded: bool,
}

impl Call {
    /// Add a header.
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        self.request = self.request.header(name, value);
        self
    }

    /// Send `body` as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Self {
        self.request = self.request.json(body);
        self
    }

    /// Add `query` to the URL's query string.
    pub fn query<T: serde::Serialize + ?Sized>(mut self, query: &T) -> Self {
        self.request = self.request.query(query);
        self
    }

    /// Send these bytes as the body.
    pub fn body(mut self, body: impl Into<reqwest::Body>) -> Self {
        self.request = self.request.body(body);
        self
    }

    /// End the whole call, retries and backoff included, after `timeout` (each attempt still
    /// ends after `UPSTREAM_TIMEOUT` at most). A call cut off here is a timeout, which the
    /// breaker counts.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(Instant::now() + timeout);
        self
    }

    /// Send it once, whatever the breaker says, without counting its outcome: for probes of
    /// the upstream's own health, which must see the truth while the breaker is open and must
    /// not be what opens it.
    pub fn unguarded(mut self) -> Self {
        self.guarded = false;
        self
    }

    /// Send it: retried, timed and guarded as the module doc says. Any answer is `Ok`, a 5xx
    /// too (after the retries it was allowed).
    pub async fn send(self) -> Result<reqwest::Response, CallError> {
        let Self {
            upstream,
            request,
            deadline,
            guarded,
        } = self;
        let name = upstream.name();
        let mut request = request.build().map_err(|source| CallError::Invalid {
            upstream: name,
            source,
        })?;
        let guard = &upstream.0.guard;
        let client = upstream.0.http.client();
        let attempt_timeout = upstream.0.http.timeout;
        if !guarded {
            *request.timeout_mut() = Some(time_left(deadline, attempt_timeout));
            return client
                .execute(request)
                .await
                .map_err(|error| CallError::from_reqwest(name, error));
        }
        let may_repeat = is_repeatable(&request);
        guard.budget.deposit();
        let mut backoff = guard.backoff.clone().make_backoff();
        let mut attempt = 1;
        loop {
            let admission = guard.breaker.admit().map_err(|refused| {
                metrics::counter!("upstream_rejected_total", "upstream" => name).increment(1);
                CallError::Rejected {
                    upstream: name,
                    retry_after: refused.retry_after,
                }
            })?;
            // The copy for a next attempt (none for a streamed body, which cannot be repeated).
            let spare = (may_repeat && attempt < guard.max_attempts)
                .then(|| request.try_clone())
                .flatten();
            *request.timeout_mut() = Some(time_left(deadline, attempt_timeout));
            let started = Instant::now();
            let result = client.execute(request).await;
            let (outcome, failure) = match &result {
                Ok(answer) => classify_status(answer.status()),
                Err(error) => classify_error(error),
            };
            guard.record_attempt(outcome, started.elapsed());
            match failure {
                Some(reason) => admission.failed(reason),
                None => admission.succeeded(),
            }

            let status = result.as_ref().ok().map(reqwest::Response::status);
            let next = spare.filter(|_| {
                outcome.is_retryable(status) && deadline.is_none_or(|deadline| Instant::now() < deadline)
            });
            if let Some(next) = next {
                if !guard.budget.withdraw() {
                    metrics::counter!("upstream_retries_denied_total", "upstream" => name).increment(1);
                } else if pause(backoff.next_backoff(), deadline).await {
                    metrics::counter!("upstream_retries_total", "upstream" => name).increment(1);
                    tracing::debug!(upstream = name, attempt, outcome = outcome.label(), "retrying");
                    attempt += 1;
                    request = next;
                    continue;
                }
            }
            return result.map_err(|error| CallError::from_reqwest(name, error));
        }
    }
}

/// Wait out a backoff; false if the call's deadline comes first.
async fn pause(backoff: tokio::time::Sleep, deadline: Option<Instant>) -> bool {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, backoff).await.is_ok(),
        None => {
            backoff.await;
            true
        }
    }
}

/// The time an attempt may take: `UPSTREAM_TIMEOUT`, or what is left before the call's
/// deadline if that is less.
fn time_left(deadline: Option<Instant>, attempt_timeout: Duration) -> Duration {
    deadline.map_or(attempt_timeout, |deadline| {
        deadline
            .saturating_duration_since(Instant::now())
            .min(attempt_timeout)
            // reqwest treats zero as "no time at all": it fails at once, as it should.
            .max(Duration::from_millis(1))
    })
}

/// Whether sending `request` twice has the effect of sending it once.
fn is_repeatable(request: &reqwest::Request) -> bool {
    match *request.method() {
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS => true,
        // The callee records the key and answers a repeat with the first outcome.
        Method::POST => request.headers().contains_key("idempotency-key"),
        _ => false,
    }
}

/// How one attempt went, as the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    ClientError,
    ServerError,
    Timeout,
    ConnectionError,
}

impl Outcome {
    const ALL: [Self; 5] = [
        Self::Success,
        Self::ClientError,
        Self::ServerError,
        Self::Timeout,
        Self::ConnectionError,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::ClientError => "client_error",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::ConnectionError => "connection_error",
        }
    }

    /// Whether another attempt may help: the service may be back, or another instance may
    /// answer. A 500 is a bug that a repeat would meet again.
    fn is_retryable(self, status: Option<StatusCode>) -> bool {
        match self {
            Self::Timeout | Self::ConnectionError => true,
            Self::ServerError => matches!(
                status,
                Some(StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
            ),
            Self::Success | Self::ClientError => false,
        }
    }
}

/// The outcome of an answer, and the failure the breaker counts, if it is one.
fn classify_status(status: StatusCode) -> (Outcome, Option<String>) {
    if status.is_server_error() {
        (Outcome::ServerError, Some(format!("answered {status}")))
    } else if status.is_client_error() {
        (Outcome::ClientError, None)
    } else {
        (Outcome::Success, None)
    }
}

/// The outcome of a call that got no answer, found by walking the error's `source()` chain
/// (reqwest wraps hyper's and the operating system's errors).
fn classify_error(error: &reqwest::Error) -> (Outcome, Option<String>) {
    let mut timed_out = error.is_timeout();
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = cause.source();
    }
    let outcome = if timed_out {
        Outcome::Timeout
    } else {
        Outcome::ConnectionError
    };
    (outcome, Some(describe(error)))
}

/// The error and its causes on one line: reqwest's own text alone rarely says what happened.
/// The URL is left out: the upstream's name says whom the call was for, and this text reaches
/// public pages (`/ops/status`), which must not show internal addresses.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The upstream's circuit breaker is open: nothing was sent.
    #[error("the {upstream} service is unavailable (its circuit breaker is open)")]
    Rejected {
        /// Which upstream.
        upstream: &'static str,
        /// When the breaker lets a probe through.
        retry_after: Duration,
    },
    /// No answer in time.
    #[error("the {upstream} service did not answer in time: {reason}")]
    Timeout {
        /// Which upstream.
        upstream: &'static str,
        /// What happened, with its causes.
        reason: String,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
    /// No connection, or it broke before the answer.
    #[error("the {upstream} service is unreachable: {reason}")]
    Unreachable {
        /// Which upstream.
        upstream: &'static str,
        /// What happened, with its causes.
        reason: String,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
    /// The request could not be built (a bad header value or body): a bug of the caller's.
    #[error("a call to the {upstream} service could not be built: {source}")]
    Invalid {
        /// Which upstream.
        upstream: &'static str,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
}

impl CallError {
    fn from_reqwest(upstream: &'static str, source: reqwest::Error) -> Self {
        let (outcome, _) = classify_error(&source);
        let reason = describe(&source);
        if outcome == Outcome::Timeout {
            Self::Timeout {
                upstream,
                reason,
                source,
            }
        } else {
            Self::Unreachable {
                upstream,
                reason,
                source,
            }
        }
    }

    /// The upstream called.
    pub fn upstream(&self) -> &'static str {
        match self {
            Self::Rejected { upstream, .. }
            | Self::Timeout { upstream, .. }
            | Self::Unreachable { upstream, .. }
            | Self::Invalid { upstream, .. } => upstream,
        }
    }

    /// Whether the call ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// How long a client should wait before trying again: until the breaker's next probe, or
    /// a second.
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::Rejected { retry_after, .. } => (*retry_after).max(Duration::from_secs(1)),
            _ => Duration::from_secs(1),
        }
    }
}

fn describe_metrics() {
    static DESCRIBED: OnceLock<()> = OnceLock::new();
    DESCRIBED.get_or_init(|| {
        metrics::describe_counter!(
            "upstream_requests_total",
            "Attempts of calls to other services, by upstream and outcome"
        );
        metrics::describe_histogram!(
            "upstream_request_duration_seconds",
            metrics::Unit::Seconds,
            "Time to the answer's head of each attempt, by upstream and outcome"
        );
        metrics::describe_counter!("upstream_retries_total", "Retries of calls, by upstream");
        metrics::describe_counter!(
            "upstream_retries_denied_total",
            "Retries not made because the upstream's retry budget was spent"
        );
        metrics::describe_counter!(
            "upstream_rejected_total",
            "Calls refused without sending because the upstream's circuit breaker was open"
        );
        metrics::describe_gauge!(
            "upstream_breaker_state",
            "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open"
        );
        metrics::describe_counter!(
            "upstream_breaker_transitions_total",
            "Circuit breaker state changes, by upstream and the state entered"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_on_the_parsed_base_is_the_url_the_joined_text_parses_to() {
        for base in [
            "http://127.0.0.1:8085",
            "http://friends:80/prefix",
            "https://xn--bcher-kva.example",
        ] {
            let parsed = reqwest::Url::parse(base).expect("a base URL");
            for path in [
                "",
                "/friends",
                "/friends/",
                "/api/friends?cursor=a%20b&limit=2",
                "/verifications/abc%2Fdef",
                "/a b/./c/../d",
                "/x?",
            ] {
                let expected = reqwest::Url::parse(&format!("{base}{path}")).expect("a URL");
                assert_eq!(with_path(&parsed, path), Some(expected), "{base} + {path}");
            }
            // Left to the whole parse: a path that does not start at the root, a fragment.
            for path in ["?only=query", "friends", "/x#part"] {
                assert_eq!(with_path(&parsed, path), None, "{base} + {path}");
            }
        }
    }
}
