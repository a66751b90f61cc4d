//! A circuit breaker per upstream: after `BREAKER_FAILURE_THRESHOLD` consecutive failures a
//! service is presumed down, and calls to it are refused at once for `BREAKER_OPEN_FOR`
//! instead of each waiting for a timeout; then one probe call is let through, whose outcome
//! closes the breaker or opens it again.
//!
//! Consecutive failures rather than a failure rate: dozen's services call each other at low
//! and uneven rates, where a rate over a window is noisy, while "n calls in a row failed" is
//! exact at any rate and easy to reason about in a test or an incident.
//!
//! A failure is a connection error, a timeout or a 5xx answer; any other answer (4xx
//! included: the service is up and said no) is a success. A call cancelled by its caller
//! counts as neither. The breaker owns only its state; sending, retrying and metrics are the
//! client's ([`super::client`]).
//!
//! Time is tokio's clock, like the client's timeouts: a test with a paused clock moves the
//! breaker through its states with `tokio::time::advance`, without waiting for real.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before letting one probe through.
    pub open_for: Duration,
}

/// Where a breaker is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused without touching the network.
    Open,
    /// One probe call is in flight or may go; the others are refused.
    HalfOpen,
}

impl BreakerState {
    /// Its value in the `upstream_breaker_state` gauge: 0 closed, 1 half-open, 2 open (the
    /// higher, the worse).
    pub fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

/// A breaker's state as reported by `/ops/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BreakerHealth {
    /// Closed, open or half-open.
    pub state: BreakerState,
    /// Failures in a row so far (0 after a success).
    pub consecutive_failures: u32,
    /// When the breaker entered its current state (when it was made, if it never changed).
    pub since: DateTime<Utc>,
    /// While open: when the next probe may go.
    pub open_until: Option<DateTime<Utc>>,
    /// The most recent failure, kept after recovery for the record.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive_failures: u32,
    since: DateTime<Utc>,
    last_error: Option<String>,
}

/// The breaker of one instance of an upstream; shared (in an `Arc`) by every clone of the
/// upstream.
#[derive(Debug)]
pub struct Breaker {
    upstream: &'static str,
    /// The instance's `host:port`, in logs and metrics.
    instance: String,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

/// A call the breaker let through; tell it how the call went with [`Admission::succeeded`]
/// or [`Admission::failed`]. Dropped unsettled (the caller gave up), it counts as neither,
/// and a probe's slot is freed for the next call.
#[derive(Debug)]
pub struct Admission<'a> {
    breaker: &'a Breaker,
    /// The half-open probe, whose outcome decides the state.
    probe: bool,
    settled: bool,
}

/// The breaker refused a call; the next probe may go after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Time until the breaker lets a probe through (zero while a probe is in flight).
    pub retry_after: Duration,
}

impl Breaker {
    /// A closed breaker for the instance at `instance` (`host:port`) of the upstream named
    /// `upstream`.
    pub fn new(upstream: &'static str, instance: &str, settings: BreakerSettings) -> Self {
        let breaker = Self {
            upstream,
            instance: instance.to_owned(),
            settings,
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive_failures: 0,
                since: Utc::now(),
                last_error: None,
            }),
        };
        breaker.publish_state(BreakerState::Closed);
        breaker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Let a call through, or refuse it.
    pub fn admit(&self) -> Result<Admission<'_>, Refused> {
        let mut inner = self.lock();
        let probe = match inner.state {
            State::Closed => false,
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(Refused {
                        retry_after: until - now,
                    });
                }
                self.enter(&mut inner, State::HalfOpen { probing: true });
                true
            }
            State::HalfOpen { probing: true } => {
                return Err(Refused {
                    retry_after: Duration::ZERO,
                });
            }
            State::HalfOpen { probing: false } => {
                inner.state = State::HalfOpen { probing: true };
                true
            }
        };
        Ok(Admission {
            breaker: self,
            probe,
            settled: false,
        })
    }

    /// The state for `/ops/status`.
    pub fn health(&self) -> BreakerHealth {
        let inner = self.lock();
        let open_until = match inner.state {
            State::Open { until } => {
                let left = until.saturating_duration_since(Instant::now());
                chrono::Duration::from_std(left)
                    .ok()
                    .map(|left| Utc::now() + left)
            }
            _ => None,
        };
        BreakerHealth {
            state: public(inner.state),
            consecutive_failures: inner.consecutive_failures,
            since: inner.since,
            open_until,
            last_error: inner.last_error.clone(),
        }
    }

    fn succeeded(&self, probe: bool) {
        let mut inner = self.lock();
        match inner.state {
            State::Closed => inner.consecutive_failures = 0,
            State::HalfOpen { .. } if probe => {
                inner.consecutive_failures = 0;
                self.enter(&mut inner, State::Closed);
            }
            // A call let through before the breaker opened proves little; the probe decides.
            State::Open { .. } | State::HalfOpen { .. } => {}
        }
    }

    fn failed(&self, probe: bool, error: String) {
        let mut inner = self.lock();
        inner.last_error = Some(error);
        let reopen = State::Open {
            until: Instant::now() + self.settings.open_for,
        };
        match inner.state {
            State::Closed => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                if inner.consecutive_failures >= self.settings.failure_threshold {
                    self.enter(&mut inner, reopen);
                }
            }
            State::HalfOpen { .. } if probe => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                self.enter(&mut inner, reopen);
            }
            State::Open { .. } | State::HalfOpen { .. } => {}
        }
    }

    fn abandoned(&self, probe: bool) {
        let mut inner = self.lock();
        if probe && matches!(inner.state, State::HalfOpen { probing: true }) {
            inner.state = State::HalfOpen { probing: false };
        }
    }

    fn enter(&self, inner: &mut Inner, state: State) {
        let (from, to) = (public(inner.state), public(state));
        inner.state = state;
        if from == to {
            return;
        }
        inner.since = Utc::now();
        match to {
            BreakerState::Open => tracing::warn!(
                upstream = self.upstream,
                instance = %self.instance,
                failures = inner.consecutive_failures,
                last_error = inner.last_error.as_deref(),
                open_for_ms = self.settings.open_for.as_millis() as u64,
                "circuit breaker opened"
            ),
            BreakerState::HalfOpen => {
                tracing::info!(upstream = self.upstream, instance = %self.instance, "circuit breaker half-open: probing")
            }
            BreakerState::Closed => {
                tracing::info!(upstream = self.upstream, instance = %self.instance, "circuit breaker closed")
            }
        }
        self.publish(to);
    }

    fn publish_state(&self, state: BreakerState) {
        metrics::gauge!(
            "upstream_breaker_state",
            "upstream" => self.upstream,
            "instance" => self.instance.clone()
        )
        .set(state.gauge_value());
    }

    fn publish(&self, state: BreakerState) {
        self.publish_state(state);
        metrics::counter!(
            "upstream_breaker_transitions_total",
            "upstream" => self.upstream,
            "instance" => self.instance.clone(),
            "to" => match state {
                BreakerState::Closed => "closed",
                BreakerState::Open => "open",
                BreakerState::HalfOpen => "half_open",
            }
        )
        .increment(1);
    }
}

fn public(state: State) -> BreakerState {
    match state {
        State::Closed => BreakerState::Closed,
        State::Open { .. } => BreakerState::Open,
        State::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}

impl Admission<'_> {
    /// The call got an answer the breaker counts as a success.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.succeeded(self.probe);
    }

    /// The call failed (connection error, timeout, 5xx); `error` says how.
    pub fn failed(mut self, error: String) {
        self.settled = true;
        self.breaker.failed(self.probe, error);
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.abandoned(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for: Duration) -> Breaker {
        Breaker::new(
            "test",
            "127.0.0.1:1",
            BreakerSettings {
                failure_threshold: 3,
                open_for,
            },
        )
    }

    fn fail(breaker: &Breaker) {
        breaker.admit().expect("admitted").failed("boom".into());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count_so_only_failures_in_a_row_open_it() {
        let breaker = breaker(Duration::from_secs(60));
        fail(&breaker);
        fail(&breaker);
        breaker.admit().expect("admitted").succeeded();
        fail(&breaker);
        fail(&breaker);
        assert_eq!(breaker.health().state, BreakerState::Closed);
        fail(&breaker);
        let health = breaker.health();
        assert_eq!(health.state, BreakerState::Open);
        assert_eq!(health.consecutive_failures, 3);
        assert_eq!(health.last_error.as_deref(), Some("boom"));
        assert!(health.open_until.is_some());
        assert!(breaker.admit().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_refuses_until_its_time_is_up_then_lets_one_probe_through() {
        let open_for = Duration::from_secs(30);
        let breaker = breaker(open_for);
        for _ in 0..3 {
            fail(&breaker);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            breaker.admit().map(drop),
            Err(Refused {
                retry_after: Duration::from_secs(20)
            })
        );
        assert_eq!(breaker.health().state, BreakerState::Open);
        tokio::time::advance(Duration::from_secs(20)).await;
        let probe = breaker.admit().expect("the probe, once open_for has passed");
        assert_eq!(breaker.health().state, BreakerState::HalfOpen);
        probe.failed("still down".into());
        let health = breaker.health();
        assert_eq!(health.state, BreakerState::Open);
        assert_eq!(
            breaker.admit().map(drop),
            Err(Refused {
                retry_after: open_for
            }),
            "a failed probe opens it for the whole open_for again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_at_a_time_and_an_abandoned_probe_frees_its_slot() {
        let breaker = breaker(Duration::ZERO);
        for _ in 0..3 {
            fail(&breaker);
        }
        let probe = breaker.admit().expect("the probe");
        assert_eq!(breaker.health().state, BreakerState::HalfOpen);
        assert_eq!(
            breaker.admit().map(drop),
            Err(Refused {
                retry_after: Duration::ZERO
            })
        );
        drop(probe);
        let probe = breaker.admit().expect("a new probe");
        probe.succeeded();
        assert_eq!(breaker.health().state, BreakerState::Closed);
        assert_eq!(breaker.health().consecutive_failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again() {
        let breaker = breaker(Duration::ZERO);
        for _ in 0..3 {
            fail(&breaker);
        }
        fail(&breaker);
        assert_eq!(breaker.health().state, BreakerState::Open);
        assert_eq!(breaker.health().consecutive_failures, 4);
    }
}
