//! The one way a service calls another: hyper's HTTP/1 connections, kept open per upstream and
//! thread ([`super::pool`]), over TLS for `https://` peers, no redirect ever followed; every
//! request carrying the caller's trace context, request id and (from a service) its identity
//! token ([`crate::identity`]), and around every call the policy of [`UpstreamSettings`]:
//!
//! - a timeout per attempt (`UPSTREAM_TIMEOUT`, or less when the call has a deadline of its own,
//!   [`Call::timeout`]);
//! - retries only where repeating is safe (GET, HEAD, PUT, DELETE, OPTIONS, and a POST that
//!   carries an `Idempotency-Key`, which the callee dedups), only after a connection error, a
//!   timeout or 502/503/504, at most `UPSTREAM_MAX_ATTEMPTS` attempts, after a jittered
//!   exponential backoff (tower's), and only while the upstream's retry budget (tower's
//!   `TpsBudget`, as in Finagle) allows: retries add at most `UPSTREAM_RETRY_BUDGET_PERCENT`
//!   of the calls plus a small floor per second, so they never multiply the load of an outage;
//! - a circuit breaker per instance of the upstream ([`super::breaker`]), shared by every
//!   clone of it, that refuses calls at once while the instance is presumed down.
//!
//! An upstream may have several instances (`USERS_URL=http://a:8082,http://b:8082`): calls go
//! to them in turn, skipping an instance whose breaker is open (ejected until its next probe),
//! and a retry goes to the next instance. A request that was never sent (the connection could
//! not be made) is tried on the next instance whatever its method: no instance saw it.
//!
//! Metrics, by `upstream`: `upstream_requests_total` and `upstream_request_duration_seconds`
//! for each attempt by `outcome` (`success`, `client_error`, `server_error`, `timeout`,
//! `connection_error`), `upstream_retries_total`, `upstream_retries_denied_total` (the budget
//! said no), `upstream_rejected_total` (refused by an open breaker), and the breaker's
//! `upstream_breaker_state` gauge (0 closed, 1 half-open, 2 open) by `upstream` and `instance`.
//!
//! The latency and outcome are those of the answer's head; a body read afterwards by the caller
//! is not covered by retries or the breaker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower::retry::backoff::{Backoff, ExponentialBackoffMaker, MakeBackoff};
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::rng::HasherRng;

use crate::config::UpstreamSettings;
use crate::http::breaker::{Admission, Breaker, BreakerHealth, BreakerSettings, BreakerState, Refused};
use crate::http::pool::{ConnectionError, Connections, NotSent};
use crate::http::request_id;
use crate::identity::{self, Signer, TokenCache};
use crate::metrics::LatencyHistogram;
use crate::trace_context;

/// How long a deposit counts in a retry budget.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Sent with every call.
const USER_AGENT_VALUE: &str = concat!("dozen/", env!("CARGO_PKG_VERSION"));

/// The HTTP client of a service's calls to its peers; cheap to clone.
///
/// The connector is made on the first call, so a service that calls no one (or not yet) does
/// not pay for loading the system's TLS roots, milliseconds and megabytes, before it is ready.
#[derive(Debug, Clone)]
pub struct HttpClient {
    timeout: Duration,
    policy: UpstreamSettings,
    connector: Arc<OnceLock<HttpsConnector<HttpConnector>>>,
    /// The guards of the upstreams made so far, by name: two upstreams with one name share
    /// their breakers and budget, as they share the service behind them.
    guards: Arc<Mutex<HashMap<&'static str, Arc<Guard>>>>,
    /// What signs the identity token every call carries ([`crate::identity`]); none for a
    /// client that is not a service's.
    identity: Option<Arc<Signer>>,
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
            connector: Arc::default(),
            guards: Arc::default(),
            identity: None,
        }
    }

    /// The same client, its every call carrying an identity token signed by `signer`.
    pub fn with_identity(mut self, signer: Arc<Signer>) -> Self {
        self.identity = Some(signer);
        self
    }

    /// What opens connections; the TLS set-up is shared by all upstreams and threads.
    fn connector(&self) -> &HttpsConnector<HttpConnector> {
        self.connector.get_or_init(|| connector(self.timeout))
    }

    /// A named peer at `base_url` (from its `<PEER>_URL` setting): one URL, or several
    /// separated by commas, one per instance.
    pub fn upstream(&self, name: &'static str, base_url: impl Into<String>) -> Upstream {
        let guard = self
            .guards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name)
            .or_insert_with(|| Arc::new(Guard::new(name, &self.policy)))
            .clone();
        let base_url = base_url.into();
        let instances = base_url
            .split(',')
            .map(|url| {
                let url = url.trim().trim_end_matches('/');
                let base = Base::parse(url).ok_or_else(|| url.to_owned())?;
                let breaker = guard.breaker(base.authority.as_str());
                Ok(Instance {
                    base,
                    connections: Connections::default(),
                    breaker,
                })
            })
            .collect();
        Upstream(Arc::new(Peer {
            name,
            base_url,
            instances,
            next: AtomicUsize::new(0),
            http: self.clone(),
            guard,
        }))
    }
}

/// Plain TCP (no delay, connecting within `timeout` and at most 2 s), with TLS on top for
/// `https://` URLs, verified by the platform's roots.
fn connector(timeout: Duration) -> HttpsConnector<HttpConnector> {
    use rustls_platform_verifier::ConfigVerifierExt as _;
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(timeout.min(Duration::from_secs(2))));
    tcp.enforce_http(false);
    let tls = rustls::ClientConfig::with_platform_verifier().unwrap_or_else(|error| {
        // Only plain HTTP peers can be called then; each HTTPS call fails and says why.
        tracing::error!(error = %error, "the platform's TLS roots could not be loaded");
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    });
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp)
}

/// What protects one upstream: its instances' breakers, its retry budget and backoff.
#[derive(Debug)]
struct Guard {
    name: &'static str,
    /// Per [`Outcome`], the handles of `upstream_requests_total` and
    /// `upstream_request_duration_seconds`, registered on first use: looking a metric up by
    /// its labels on every attempt cost more than the rest of the bookkeeping.
    attempt_metrics: [OnceLock<(metrics::Counter, LatencyHistogram)>; Outcome::ALL.len()],
    breaker_settings: BreakerSettings,
    /// One breaker per instance, by its `host:port`.
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    budget: TpsBudget,
    backoff: ExponentialBackoffMaker,
    max_attempts: u32,
    /// The identity token for calls to this upstream, shared by its clones.
    token: TokenCache,
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
            breaker_settings: BreakerSettings {
                failure_threshold: policy.breaker_failure_threshold,
                open_for: policy.breaker_open_for,
            },
            breakers: Mutex::default(),
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
            token: TokenCache::default(),
        }
    }
}

impl Guard {
    /// The breaker of the instance at `authority`.
    fn breaker(&self, authority: &str) -> Arc<Breaker> {
        self.breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(authority.to_owned())
            .or_insert_with(|| Arc::new(Breaker::new(self.name, authority, self.breaker_settings)))
            .clone()
    }

    /// Count and time one attempt that ended in `outcome`.
    fn record_attempt(&self, outcome: Outcome, took: Duration) {
        let (count, duration) = self.attempt_metrics[outcome as usize].get_or_init(|| {
            // Registered with the process's recorder, not a no-op one.
            crate::metrics::recorder();
            let labels = [
                ("upstream", self.name.to_owned()),
                ("outcome", outcome.label().to_owned()),
            ];
            (
                metrics::counter!("upstream_requests_total", &labels),
                LatencyHistogram::new("upstream_request_duration_seconds", &labels),
            )
        });
        count.increment(1);
        duration.record(took, trace_context::current().as_ref());
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
    /// Its base URLs as configured, comma-separated.
    base_url: String,
    /// Its instances, or the first base URL that is not an absolute `http(s)://` URL without
    /// a query (each call then reports it).
    instances: Result<Vec<Instance>, String>,
    /// Where the next call starts looking for an instance: calls go round them in turn.
    next: AtomicUsize,
    http: HttpClient,
    guard: Arc<Guard>,
}

/// One instance of a peer: where it is, the connections kept to it, and its breaker.
#[derive(Debug)]
struct Instance {
    base: Base,
    connections: Connections,
    breaker: Arc<Breaker>,
}

impl Peer {
    /// The next instance in turn (for a guarded call, the next whose breaker lets a call
    /// through, with its admission); when every breaker refuses, the soonest time one lets a
    /// probe through.
    /// A call pinned to one instance ([`Call::on_instance`]) only ever looks at that one.
    fn pick<'a>(
        &self,
        instances: &'a [Instance],
        guarded: bool,
        pinned: Option<usize>,
    ) -> Result<(usize, Option<Admission<'a>>), Refused> {
        let (first, tried) = match pinned {
            Some(index) => (index, 1),
            None => (self.next.fetch_add(1, Ordering::Relaxed), instances.len()),
        };
        if !guarded {
            return Ok((first % instances.len(), None));
        }
        let mut soonest: Option<Refused> = None;
        for offset in 0..tried {
            let index = (first + offset) % instances.len();
            match instances[index].breaker.admit() {
                Ok(admission) => return Ok((index, Some(admission))),
                Err(refused) => {
                    soonest = Some(match soonest {
                        Some(other) if other.retry_after <= refused.retry_after => other,
                        _ => refused,
                    });
                }
            }
        }
        Err(soonest.unwrap_or(Refused {
            retry_after: Duration::ZERO,
        }))
    }
}

/// A base URL in parts: a call's URI is these with its path appended.
#[derive(Debug)]
struct Base {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The `Host` header of every call: the authority, made a header value once.
    host: HeaderValue,
    /// The base's own path, without a trailing slash ("" for none).
    path: String,
}

impl Base {
    fn parse(base_url: &str) -> Option<Self> {
        let uri: Uri = base_url.parse().ok()?;
        let parts = uri.into_parts();
        let scheme = parts.scheme?;
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return None;
        }
        let path = match &parts.path_and_query {
            Some(path) if path.query().is_some() => return None,
            Some(path) => path.path().trim_end_matches('/').to_owned(),
            None => String::new(),
        };
        let authority = parts.authority?;
        Some(Self {
            scheme,
            host: HeaderValue::from_str(authority.as_str()).ok()?,
            authority,
            path,
        })
    }

    /// The URI of `path` (with its query) on this base.
    fn join(&self, path: &str) -> Result<Uri, http::Error> {
        let path_and_query = match (self.path.as_str(), path) {
            ("", "") => PathAndQuery::from_static("/"),
            ("", path) => PathAndQuery::try_from(path)?,
            (base, path) => PathAndQuery::try_from(format!("{base}{path}"))?,
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

impl Upstream {
    /// The peer's service name.
    pub fn name(&self) -> &'static str {
        self.0.name
    }

    /// How long one attempt of a call may take (`UPSTREAM_TIMEOUT`).
    pub fn attempt_timeout(&self) -> Duration {
        self.0.http.timeout
    }

    /// The peer's base URLs, as configured.
    pub fn base_url(&self) -> &str {
        &self.0.base_url
    }

    /// The state of its circuit breakers, as one: the healthiest instance's (closed before
    /// half-open before open), so it reads open only when every instance is ejected.
    pub fn health(&self) -> BreakerHealth {
        self.instance_health()
            .into_iter()
            .map(|(_, health)| health)
            .min_by_key(|health| health.state.gauge_value() as u8)
            .unwrap_or_else(|| BreakerHealth {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                since: chrono::Utc::now(),
                open_until: None,
                last_error: Some(format!("{} is not a valid base URL", self.0.base_url)),
            })
    }

    /// How many instances it has (none when its base URL is not valid).
    pub fn instance_count(&self) -> usize {
        self.0.instances.as_ref().map_or(0, Vec::len)
    }

    /// Each instance's `host:port` and the state of its breaker.
    pub fn instance_health(&self) -> Vec<(String, BreakerHealth)> {
        match &self.0.instances {
            Ok(instances) => instances
                .iter()
                .map(|instance| (instance.base.authority.to_string(), instance.breaker.health()))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// A call to `path` (starting with `/`, or empty for the base URL itself), carrying trace
    /// context and request id; [`Call::send`] sends it.
    pub fn call(&self, method: Method, path: &str) -> Call {
        // Room for what a call usually carries, so the map is not grown along the way.
        let mut headers = HeaderMap::with_capacity(16);
        trace_context::inject_into_headers(&mut headers);
        if let Some(id) = request_id::current() {
            headers.insert(request_id::HEADER, id);
        }
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        // The upstream's name is the audience: the name the callee knows itself by.
        if let Some(signer) = &self.0.http.identity
            && let Some(token) = self.0.guard.token.header(signer, self.0.name)
        {
            headers.insert(identity::HEADER, token);
        }
        let target = match &self.0.instances {
            Err(url) => Err(Invalid::BaseUrl(url.clone())),
            Ok(_) if !(path.is_empty() || path.starts_with('/')) => Err(Invalid::Path(path.to_owned())),
            Ok(_) => Ok(path.to_owned()),
        };
        Call {
            upstream: self.clone(),
            method,
            target,
            headers,
            body: Bytes::new(),
            deadline: None,
            guarded: true,
            pinned: None,
        }
    }
}

/// A call being built.
#[derive(Debug)]
#[must_use = "a call does nothing until it is sent"]
pub struct Call {
    upstream: Upstream,
    method: Method,
    /// The path and query on the chosen instance, or why the call cannot be made (reported by
    /// [`Call::send`]).
    target: Result<String, Invalid>,
    headers: HeaderMap,
    body: Bytes,
    /// When the whole call, retries included, must be over.
    deadline: Option<Instant>,
    /// Whether the breaker and retries apply ([`Call::unguarded`]).
    guarded: bool,
    /// The one instance to send it to ([`Call::on_instance`]), if not each in turn.
    pinned: Option<usize>,
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
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(name), Ok(value)) => {
                self.headers.append(name, value);
            }
            (Err(error), _) => self.invalidate(Invalid::from(error.into())),
            (_, Err(error)) => self.invalidate(Invalid::from(error.into())),
        }
        self
    }

    /// Set a header, replacing the value the call had (its own `User-Agent`, say): for a
    /// proxy passing on its client's.
    pub fn replace_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Send `body` as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Self {
        match serde_json::to_vec(body) {
            Ok(json) => {
                self.headers
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                self.body = Bytes::from(json);
            }
            Err(error) => self.invalidate(Invalid::Json(error)),
        }
        self
    }

    /// Add `query` to the URL's query string.
    pub fn query<T: serde::Serialize + ?Sized>(mut self, query: &T) -> Self {
        let encoded = match serde_urlencoded::to_string(query) {
            Ok(encoded) => encoded,
            Err(error) => {
                self.invalidate(Invalid::Query(error));
                return self;
            }
        };
        if let Ok(target) = &mut self.target
            && !encoded.is_empty()
        {
            target.push(if target.contains('?') { '&' } else { '?' });
            target.push_str(&encoded);
        }
        self
    }

    /// Send these bytes as the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
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

    /// Send it to the instance at `index` (from 0, in the order of the base URLs) and no
    /// other, retries included: for what must be asked of every instance, such as its metrics.
    /// An index past the last counts round from the first.
    pub fn on_instance(mut self, index: usize) -> Self {
        self.pinned = Some(index);
        self
    }

    /// Keep the first reason the call cannot be made.
    fn invalidate(&mut self, reason: Invalid) {
        if self.target.is_ok() {
            self.target = Err(reason);
        }
    }

    /// Send it: retried, timed and guarded as the module doc says. Any answer is `Ok`, a 5xx
    /// too (after the retries it was allowed).
    pub async fn send(self) -> Result<Answer, CallError> {
        let Self {
            upstream,
            method,
            target,
            headers,
            body,
            deadline,
            guarded,
            pinned,
        } = self;
        let name = upstream.name();
        let invalid = |source| CallError::Invalid {
            upstream: name,
            source,
        };
        let peer = &upstream.0;
        let instances = peer
            .instances
            .as_deref()
            .map_err(|url| invalid(Invalid::BaseUrl(url.clone())))?;
        let target = target.map_err(invalid)?;
        let uris = instances
            .iter()
            .map(|instance| instance.base.join(&target))
            .collect::<Result<Vec<Uri>, _>>()
            .map_err(|e| invalid(e.into()))?;
        let attempt = Attempt {
            method: &method,
            headers: &headers,
            body: &body,
            connector: peer.http.connector(),
            timeout: peer.http.timeout,
            deadline,
        };
        let guard = &peer.guard;
        let may_repeat = is_repeatable(&method, &headers);
        if guarded {
            guard.budget.deposit();
        }
        let mut backoff = guard.backoff.clone().make_backoff();
        let mut number = 1;
        loop {
            let (index, admission) = peer.pick(instances, guarded, pinned).map_err(|refused| {
                metrics::counter!("upstream_rejected_total", "upstream" => name).increment(1);
                CallError::Rejected {
                    upstream: name,
                    retry_after: refused.retry_after,
                }
            })?;
            let started = Instant::now();
            let result = attempt.send(&instances[index], &uris[index]).await;
            let (outcome, failure) = match &result {
                Ok(answer) => classify_status(answer.status()),
                Err(failure) => (failure.outcome(), Some(failure.to_string())),
            };
            let Some(admission) = admission else {
                // Unguarded: once, uncounted.
                return result.map_err(|failure| failure.into_error(name));
            };
            guard.record_attempt(outcome, started.elapsed());
            match failure {
                Some(reason) => admission.failed(reason),
                None => admission.succeeded(),
            }

            let status = result.as_ref().ok().map(Answer::status);
            let never_sent = result.as_ref().is_err_and(Failure::never_sent);
            let again = (may_repeat || never_sent)
                && number < guard.max_attempts
                && outcome.is_retryable(status)
                && deadline.is_none_or(|deadline| Instant::now() < deadline);
            if again {
                if !guard.budget.withdraw() {
                    metrics::counter!("upstream_retries_denied_total", "upstream" => name).increment(1);
                } else if pause(backoff.next_backoff(), deadline).await {
                    metrics::counter!("upstream_retries_total", "upstream" => name).increment(1);
                    tracing::debug!(
                        upstream = name,
                        attempt = number,
                        outcome = outcome.label(),
                        "retrying"
                    );
                    number += 1;
                    continue;
                }
            }
            return result.map_err(|failure| failure.into_error(name));
        }
    }
}

/// One attempt of a call: everything it sends, borrowed, so a retry sends the same again,
/// perhaps to another instance.
struct Attempt<'a> {
    method: &'a Method,
    headers: &'a HeaderMap,
    body: &'a Bytes,
    connector: &'a HttpsConnector<HttpConnector>,
    timeout: Duration,
    deadline: Option<Instant>,
}

impl Attempt<'_> {
    /// Send it to `instance` at `uri` and wait for the response's head, for at most the time
    /// left.
    async fn send(&self, instance: &Instance, uri: &Uri) -> Result<Answer, Failure> {
        let mut request = http::Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        // The request line names the path only (origin form); the connection says where.
        *request.uri_mut() = uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |path| Uri::from(path.clone()));
        let mut headers = self.headers.clone();
        headers.insert(HOST, instance.base.host.clone());
        *request.headers_mut() = headers;
        let ends = Instant::now() + time_left(self.deadline, self.timeout);
        let answer = instance.connections.send(self.connector, uri, request);
        match tokio::time::timeout_at(ends, answer).await {
            Ok(Ok(answer)) => Ok(Answer {
                answer,
                read_by: ends,
            }),
            Ok(Err(error)) => Err(Failure::Failed(error)),
            Err(_) => Err(Failure::TimedOut),
        }
    }
}

/// Why an attempt got no answer.
#[derive(Debug)]
enum Failure {
    /// No answer within the attempt's time.
    TimedOut,
    /// No connection, or it broke before the answer.
    Failed(ConnectionError),
}

impl Failure {
    /// Whether no instance saw the request: the connection could not be made.
    fn never_sent(&self) -> bool {
        matches!(self, Self::Failed(error) if error.is::<NotSent>())
    }

    fn outcome(&self) -> Outcome {
        match self {
            Self::Failed(error) if !caused_by_timeout(error) => Outcome::ConnectionError,
            _ => Outcome::Timeout,
        }
    }

    fn into_error(self, upstream: &'static str) -> CallError {
        let reason = self.to_string();
        match self {
            Self::Failed(source) if !caused_by_timeout(&source) => CallError::Unreachable {
                upstream,
                reason,
                source,
            },
            _ => CallError::Timeout { upstream, reason },
        }
    }
}

/// The error and its causes on one line: hyper's own text alone rarely says what happened. No
/// address is in it: the upstream's name says whom the call was for, and this text reaches
/// public pages (`/ops/status`), which must not show internal addresses.
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let error = match self {
            Self::TimedOut => return f.write_str("no answer in time"),
            Self::Failed(error) => error,
        };
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        f.write_str(&text)
    }
}

/// Whether the operating system (or the connect timeout) timed the connection out.
fn caused_by_timeout(error: &ConnectionError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A peer's answer: its head, and its body to read while the attempt's time lasts.
#[derive(Debug)]
pub struct Answer {
    answer: http::Response<hyper::body::Incoming>,
    /// When reading the body must be over: the end of the attempt that got the answer.
    read_by: Instant,
}

impl Answer {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.answer.status()
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        self.answer.headers()
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, BodyError> {
        let body = self.answer.into_body().collect();
        match tokio::time::timeout_at(self.read_by, body).await {
            Ok(Ok(body)) => Ok(body.to_bytes()),
            Ok(Err(error)) => Err(BodyError::Broken(error)),
            Err(_) => Err(BodyError::TimedOut),
        }
    }

    /// The body as JSON of type `T`.
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, BodyError> {
        let body = self.bytes().await?;
        serde_json::from_slice(&body).map_err(BodyError::NotJson)
    }
}

/// Why an answer's body could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection broke while it was read.
    #[error("the answer's body broke off: {0}")]
    Broken(#[source] hyper::Error),
    /// It did not arrive in time.
    #[error("the answer's body did not arrive in time")]
    TimedOut,
    /// It is not the JSON expected.
    #[error("the answer's body is not the JSON expected: {0}")]
    NotJson(#[source] serde_json::Error),
}

/// Why a call could not even be made: a bug of the caller's, or a bad `<PEER>_URL`.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// The peer's base URL is not an absolute `http://` or `https://` URL without a query.
    #[error("the base URL {0:?} is not an absolute http:// or https:// URL without a query")]
    BaseUrl(String),
    /// The path does not start with `/`.
    #[error("the path {0:?} does not start with /")]
    Path(String),
    /// A bad header name or value, or a path that is not a valid URI path.
    #[error(transparent)]
    Http(#[from] http::Error),
    /// The body could not be written as JSON.
    #[error("the body could not be written as JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The query could not be written.
    #[error("the query could not be written: {0}")]
    Query(#[source] serde_urlencoded::ser::Error),
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
    })
}

/// Whether sending a request twice has the effect of sending it once.
fn is_repeatable(method: &Method, headers: &HeaderMap) -> bool {
    match *method {
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS => true,
        // The callee records the key and answers a repeat with the first outcome.
        Method::POST => headers.contains_key("idempotency-key"),
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
        source: ConnectionError,
    },
    /// The request could not be built (a bad base URL, path, header or body): a bug of the
    /// caller's or a bad setting.
    #[error("a call to the {upstream} service could not be built: {source}")]
    Invalid {
        /// Which upstream.
        upstream: &'static str,
        /// Why.
        #[source]
        source: Invalid,
    },
}

impl CallError {
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
    fn a_path_on_the_parsed_base_is_the_uri_the_joined_text_parses_to() {
        for base in [
            "http://127.0.0.1:8085",
            "http://friends:80/prefix",
            "https://xn--bcher-kva.example/",
        ] {
            let parsed = Base::parse(base).expect("a base URL");
            for path in [
                "/friends",
                "/friends/",
                "/api/friends?cursor=a%20b&limit=2",
                "/verifications/abc%2Fdef",
                "/x?",
            ] {
                let expected: Uri = format!("{}{path}", base.trim_end_matches('/'))
                    .parse()
                    .expect("a URI");
                assert_eq!(parsed.join(path).expect("joined"), expected, "{base} + {path}");
            }
            assert_eq!(
                parsed.join("").expect("joined").path(),
                match parsed.path.as_str() {
                    "" => "/",
                    path => path,
                },
                "{base} alone"
            );
        }
        for not_a_base in [
            "friends:8085",
            "/friends",
            "ftp://friends",
            "http://friends?x=1",
            "",
        ] {
            assert!(Base::parse(not_a_base).is_none(), "{not_a_base}");
        }
    }

    #[test]
    fn a_path_with_spaces_or_a_fragment_cannot_be_called() {
        let base = Base::parse("http://friends:8085").expect("a base URL");
        assert!(base.join("/a b").is_err());
    }
}
