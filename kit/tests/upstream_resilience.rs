//! The kit's client against a real local HTTP upstream: the circuit breaker opens after its
//! threshold and then keeps calls off the network, half-opens after its time and closes or
//! reopens on its probe; retries happen only where safe, and the retry budget stops them when
//! most calls fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use dozen_kit::config::UpstreamSettings;
use dozen_kit::http::breaker::BreakerState;
use dozen_kit::http::client::{CallError, HttpClient, Upstream};
use http::Method;
use tokio::sync::oneshot;

/// What the test upstream answers, and how often it was reached.
#[derive(Debug, Default)]
struct Script {
    /// Requests that reached it.
    hits: AtomicUsize,
    /// The status it answers with (200 when 0).
    status: AtomicU16,
    /// Answer 503 to this many requests first, then `status`.
    unavailable_first: AtomicUsize,
}

/// An axum server on 127.0.0.1 that counts requests, can be told to fail, and can be stopped
/// and started again on the same port.
struct TestUpstream {
    script: Arc<Script>,
    port: u16,
    stop: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl TestUpstream {
    async fn start() -> Self {
        let mut upstream = Self {
            script: Arc::default(),
            port: 0,
            stop: None,
        };
        upstream.serve().await;
        upstream
    }

    async fn serve(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind");
        self.port = listener.local_addr().expect("address").port();
        let script = self.script.clone();
        let app = axum::Router::new().fallback(move || {
            let script = script.clone();
            async move {
                script.hits.fetch_add(1, Ordering::SeqCst);
                let failing_first = script
                    .unavailable_first
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
                    .is_ok();
                if failing_first {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                match script.status.load(Ordering::SeqCst) {
                    0 => StatusCode::OK,
                    code => StatusCode::from_u16(code).expect("a status"),
                }
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .expect("the test upstream serves");
        });
        self.stop = Some((stop, server));
    }

    /// Stop listening and close every connection: calls now fail to connect.
    async fn shut_down(&mut self) {
        if let Some((stop, server)) = self.stop.take() {
            let _ = stop.send(());
            server.await.expect("the server stops");
        }
    }

    fn hits(&self) -> usize {
        self.script.hits.load(Ordering::SeqCst)
    }

    fn answer(&self, status: StatusCode) {
        self.script.status.store(status.as_u16(), Ordering::SeqCst);
    }

    fn unavailable_first(&self, count: usize) {
        self.script.unavailable_first.store(count, Ordering::SeqCst);
    }

    fn upstream(&self, policy: UpstreamSettings) -> Upstream {
        HttpClient::with_policy(Duration::from_secs(2), policy)
            .upstream("peer", format!("http://127.0.0.1:{}", self.port))
    }
}

/// No retries, so that every call is one request and counts are exact.
fn breaker_policy(threshold: u32, open_for: Duration) -> UpstreamSettings {
    UpstreamSettings {
        upstream_max_attempts: 1,
        breaker_failure_threshold: threshold,
        breaker_open_for: open_for,
        ..UpstreamSettings::default()
    }
}

fn retry_policy() -> UpstreamSettings {
    UpstreamSettings {
        upstream_max_attempts: 3,
        upstream_retry_backoff: Duration::from_millis(5),
        breaker_failure_threshold: 1000,
        ..UpstreamSettings::default()
    }
}

/// Move tokio's clock, which the breaker runs on, on by `time` at once. The clock is paused
/// only for the jump: a clock left paused jumps to the next timer whenever the runtime waits,
/// and could cut a real call short at its timeout.
async fn pass(time: Duration) {
    tokio::time::pause();
    tokio::time::advance(time).await;
    tokio::time::resume();
}

async fn get(upstream: &Upstream) -> Result<StatusCode, CallError> {
    upstream
        .call(Method::GET, "/thing")
        .send()
        .await
        .map(|answer| answer.status())
}

#[tokio::test]
async fn the_breaker_opens_after_its_threshold_keeps_calls_off_the_network_and_a_good_probe_closes_it() {
    let server = TestUpstream::start().await;
    let open_for = Duration::from_millis(1500);
    let upstream = server.upstream(breaker_policy(3, open_for));
    // Clones share the breaker.
    let clone = upstream.clone();

    // 4xx answers are successes for the breaker.
    server.answer(StatusCode::NOT_FOUND);
    for _ in 0..5 {
        assert_eq!(get(&upstream).await.expect("an answer"), StatusCode::NOT_FOUND);
    }
    assert_eq!(upstream.health().state, BreakerState::Closed);

    server.answer(StatusCode::INTERNAL_SERVER_ERROR);
    for failures in 1..=3 {
        assert_eq!(
            get(&upstream).await.expect("an answer"),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(upstream.health().consecutive_failures, failures);
    }
    let health = clone.health();
    assert_eq!(health.state, BreakerState::Open);
    assert_eq!(
        health.last_error.as_deref(),
        Some("answered 500 Internal Server Error")
    );
    assert!(health.open_until.is_some());
    assert_eq!(server.hits(), 8);

    // Open: refused at once, and nothing reaches the upstream, even though it is healthy now.
    server.answer(StatusCode::OK);
    for _ in 0..5 {
        let refused = get(&clone).await.expect_err("refused");
        assert!(matches!(refused, CallError::Rejected { .. }), "{refused}");
        assert!(refused.retry_after() <= open_for.max(Duration::from_secs(1)));
    }
    assert_eq!(server.hits(), 8, "no call went through an open breaker");

    // After the open time one probe goes; its success closes the breaker.
    pass(open_for).await;
    assert_eq!(get(&upstream).await.expect("the probe"), StatusCode::OK);
    assert_eq!(server.hits(), 9);
    let health = upstream.health();
    assert_eq!(health.state, BreakerState::Closed);
    assert_eq!(health.consecutive_failures, 0);
    assert_eq!(get(&clone).await.expect("an answer"), StatusCode::OK);
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_again_until_the_upstream_is_back() {
    let mut server = TestUpstream::start().await;
    let open_for = Duration::from_millis(800);
    let upstream = server.upstream(breaker_policy(2, open_for));

    // The upstream goes away: connection errors are failures.
    server.shut_down().await;
    for _ in 0..2 {
        let error = get(&upstream).await.expect_err("nothing listens");
        assert!(matches!(error, CallError::Unreachable { .. }), "{error}");
    }
    assert_eq!(upstream.health().state, BreakerState::Open);

    // The probe finds it still down: open again, refusing at once.
    pass(open_for).await;
    let probe = get(&upstream).await.expect_err("still down");
    assert!(matches!(probe, CallError::Unreachable { .. }), "{probe}");
    let health = upstream.health();
    assert_eq!(health.state, BreakerState::Open);
    assert_eq!(health.consecutive_failures, 3);
    assert!(matches!(get(&upstream).await, Err(CallError::Rejected { .. })));

    // Back on the same port: the next probe closes the breaker.
    server.serve().await;
    pass(open_for).await;
    assert_eq!(get(&upstream).await.expect("the probe"), StatusCode::OK);
    assert_eq!(upstream.health().state, BreakerState::Closed);
    assert_eq!(server.hits(), 1, "only the successful probe reached the upstream");
}

#[tokio::test]
async fn a_get_that_meets_one_503_is_retried_and_succeeds() {
    let server = TestUpstream::start().await;
    let upstream = server.upstream(retry_policy());
    server.unavailable_first(1);
    assert_eq!(get(&upstream).await.expect("an answer"), StatusCode::OK);
    assert_eq!(server.hits(), 2);

    // A 500 is not retried: a repeat would meet the same bug.
    server.answer(StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        get(&upstream).await.expect("an answer"),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(server.hits(), 3);

    // Attempts are capped: three 503s in a row come back as the last one.
    server.answer(StatusCode::OK);
    server.unavailable_first(5);
    assert_eq!(
        get(&upstream).await.expect("an answer"),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(server.hits(), 6);
}

#[tokio::test]
async fn a_post_is_retried_only_with_an_idempotency_key() {
    let server = TestUpstream::start().await;
    let upstream = server.upstream(retry_policy());
    let post = |key: Option<&str>| {
        let mut call = upstream
            .call(Method::POST, "/things")
            .json(&serde_json::json!({"a": 1}));
        if let Some(key) = key {
            call = call.header("idempotency-key", key);
        }
        call.send()
    };

    server.unavailable_first(1);
    let answer = post(None).await.expect("an answer");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE, "not retried");
    assert_eq!(server.hits(), 1);

    server.unavailable_first(1);
    let answer = post(Some("key-1")).await.expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK, "retried under its key");
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn the_retry_budget_stops_retries_when_most_calls_fail() {
    let server = TestUpstream::start().await;
    let upstream = server.upstream(UpstreamSettings {
        upstream_retry_budget_percent: 10,
        upstream_retry_budget_min_per_second: 0,
        ..retry_policy()
    });
    server.answer(StatusCode::SERVICE_UNAVAILABLE);
    let calls = 100;
    for _ in 0..calls {
        assert_eq!(
            get(&upstream).await.expect("an answer"),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    // Unbudgeted, three attempts each would make 300 requests; the budget allows about one
    // retry per ten calls.
    let retries = server.hits() - calls;
    assert!(retries >= 5, "some retries were made: {retries}");
    assert!(retries <= 11, "the budget capped retries near 10%: {retries}");
}

#[tokio::test]
async fn an_unguarded_call_goes_through_an_open_breaker_and_does_not_count() {
    let server = TestUpstream::start().await;
    let upstream = server.upstream(breaker_policy(1, Duration::from_secs(60)));
    server.answer(StatusCode::SERVICE_UNAVAILABLE);
    let _ = get(&upstream).await;
    assert_eq!(upstream.health().state, BreakerState::Open);

    server.answer(StatusCode::OK);
    let answer = upstream
        .call(Method::GET, "/readyz")
        .unguarded()
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(server.hits(), 2);
    assert_eq!(
        upstream.health().state,
        BreakerState::Open,
        "the probe of health does not close it"
    );
}

#[tokio::test]
async fn a_call_that_outlives_its_deadline_is_a_timeout_and_counts_as_a_failure() {
    // A listener that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = silent.local_addr().expect("address").port();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            connections.push(connection);
        }
    });
    let upstream =
        HttpClient::with_policy(Duration::from_secs(5), breaker_policy(1, Duration::from_secs(60)))
            .upstream("silent", format!("http://127.0.0.1:{port}"));
    let error = upstream
        .call(Method::GET, "/")
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .expect_err("no answer");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(upstream.health().state, BreakerState::Open);
    held.abort();
}

/// An upstream of several instances, one per test server.
fn instances(servers: &[&TestUpstream], policy: UpstreamSettings) -> Upstream {
    let urls: Vec<String> = servers
        .iter()
        .map(|server| format!("http://127.0.0.1:{}", server.port))
        .collect();
    HttpClient::with_policy(Duration::from_secs(2), policy).upstream("peer", urls.join(","))
}

/// Retries and a breaker that opens after two failures in a row.
fn instance_policy(open_for: Duration) -> UpstreamSettings {
    UpstreamSettings {
        upstream_max_attempts: 3,
        upstream_retry_backoff: Duration::from_millis(5),
        breaker_failure_threshold: 2,
        breaker_open_for: open_for,
        ..UpstreamSettings::default()
    }
}

#[tokio::test]
async fn calls_go_to_the_instances_in_turn() {
    let (a, b) = (TestUpstream::start().await, TestUpstream::start().await);
    let upstream = instances(&[&a, &b], retry_policy());
    for _ in 0..10 {
        assert_eq!(get(&upstream).await.expect("a response"), StatusCode::OK);
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));
    assert_eq!(upstream.instance_health().len(), 2);
}

#[tokio::test]
async fn a_call_pinned_to_an_instance_goes_there_only_even_when_it_is_down() {
    let a = TestUpstream::start().await;
    let mut b = TestUpstream::start().await;
    let upstream = instances(&[&a, &b], instance_policy(Duration::from_secs(5)));
    assert_eq!(upstream.instance_count(), 2);
    for _ in 0..3 {
        let answer = upstream
            .call(Method::GET, "/metrics")
            .on_instance(1)
            .unguarded()
            .send()
            .await
            .expect("a response");
        assert_eq!(answer.status(), StatusCode::OK);
    }
    assert_eq!((a.hits(), b.hits()), (0, 3));

    // Down, it is not stood in for by the other: the caller learns that this one is down.
    b.shut_down().await;
    let error = upstream
        .call(Method::GET, "/metrics")
        .on_instance(1)
        .send()
        .await
        .expect_err("the pinned instance is down");
    // Its retries went to it too, until its breaker opened.
    assert!(
        matches!(error, CallError::Unreachable { .. } | CallError::Rejected { .. }),
        "{error}"
    );
    assert_eq!(a.hits(), 0, "the live instance was not asked");
}

#[tokio::test]
async fn an_instance_that_is_down_is_ejected_and_probed_back_while_the_other_serves_every_call() {
    let a = TestUpstream::start().await;
    let mut b = TestUpstream::start().await;
    let open_for = Duration::from_millis(300);
    let upstream = instances(&[&a, &b], instance_policy(open_for));
    b.shut_down().await;

    // A POST without an Idempotency-Key is not repeatable, but one that could not connect was
    // never sent: it goes to the other instance, and every call succeeds.
    for _ in 0..10 {
        let response = upstream
            .call(Method::POST, "/things")
            .json(&serde_json::json!({"a": 1}))
            .send()
            .await
            .expect("a response");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(a.hits(), 10, "each call reached the live instance once");
    let health = upstream.instance_health();
    let state_of = |port: u16| {
        health
            .iter()
            .find(|(instance, _)| instance.ends_with(&format!(":{port}")))
            .map(|(_, health)| health.state)
            .expect("the instance")
    };
    assert_eq!(
        state_of(b.port),
        BreakerState::Open,
        "the dead instance is ejected"
    );
    assert_eq!(state_of(a.port), BreakerState::Closed);
    assert_eq!(
        upstream.health().state,
        BreakerState::Closed,
        "the service as a whole is up"
    );

    // Back on its port, it is probed once its breaker lets a call through, and serves again.
    b.serve().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.hits() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the instance was never probed back"
        );
        assert_eq!(get(&upstream).await.expect("a response"), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..4 {
        assert_eq!(get(&upstream).await.expect("a response"), StatusCode::OK);
    }
    assert!(b.hits() >= 3, "it takes its turn again: {}", b.hits());
    assert!(
        upstream
            .instance_health()
            .iter()
            .all(|(_, health)| health.state == BreakerState::Closed)
    );
}

#[tokio::test]
async fn when_every_instance_is_ejected_calls_are_refused_at_once() {
    let (mut a, mut b) = (TestUpstream::start().await, TestUpstream::start().await);
    let upstream = instances(&[&a, &b], instance_policy(Duration::from_secs(60)));
    a.shut_down().await;
    b.shut_down().await;
    // Each call tries the instances in turn until both breakers have opened.
    for _ in 0..4 {
        let error = get(&upstream).await.expect_err("nothing listens");
        assert!(
            matches!(error, CallError::Unreachable { .. } | CallError::Rejected { .. }),
            "{error}"
        );
    }
    assert_eq!(upstream.health().state, BreakerState::Open);
    let refused = get(&upstream).await.expect_err("refused");
    assert!(matches!(refused, CallError::Rejected { .. }), "{refused}");
}
