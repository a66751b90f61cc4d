//! SIGTERM: readiness turns false at once and answers tell clients to close their connections,
//! the listener closes after DRAIN_DELAY, in-flight requests and background work finish, and
//! the process exits 0 — or 1 when work had to be cut off at SHUTDOWN_TIMEOUT.

use std::time::Duration;

use dozen_tests::process::Service;
use dozen_tests::{PATIENCE, eventually};
use nix::sys::signal::Signal;

const FIXTURE: &str = "dozen-fixture-slow";

/// Wait until the fixture has started handling its slow request.
async fn in_flight(service: &mut Service) {
    service
        .process
        .wait_for_line(Duration::from_secs(30), |line| {
            line.contains("slow request started")
        })
        .await;
}

/// The slow request got its whole answer.
async fn answered_done(request: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>) {
    let answer = request
        .await
        .expect("request task")
        .expect("the in-flight request is answered");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.expect("body"), "done");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_flight_request_completes_while_readiness_turns_false() {
    let mut service = Service::start(FIXTURE, &[("DRAIN_DELAY", "3s")]).await;
    let alive = reqwest::get(service.url("/healthz")).await.expect("healthz");
    assert!(
        alive.headers().get("connection").is_none(),
        "connections are kept alive before the signal"
    );
    let slow = tokio::spawn(reqwest::get(service.url("/slow?ms=2000")));
    in_flight(&mut service).await;

    service.process.signal(Signal::SIGTERM);
    // Readiness turns false as soon as the signal is handled, while requests are still served.
    let ready = eventually(PATIENCE, "readiness turns false", || async {
        let ready = reqwest::get(service.url("/readyz"))
            .await
            .expect("readyz answers while draining");
        (ready.status() != 200).then_some(ready)
    })
    .await;
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.headers()["content-type"], "application/problem+json");
    // Told to, a client reconnects (to another instance) instead of reusing the connection
    // just as the service closes it.
    assert_eq!(
        ready.headers()["connection"],
        "close",
        "answers while draining close"
    );

    answered_done(slow).await;
    let status = service.process.wait(Duration::from_secs(10)).await;
    assert!(status.success(), "exit 0, got {status}");
    assert!(
        service
            .process
            .lines()
            .iter()
            .any(|line| line.contains("background work finished")),
        "background tasks finish before exit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_in_flight_on_every_serving_thread_complete() {
    let mut service = Service::start(FIXTURE, &[("WORKER_THREADS", "2"), ("DRAIN_DELAY", "1s")]).await;
    let started_on = |service: &Service, thread: &str| {
        let field = format!(r#""thread":"{thread}""#);
        service
            .process
            .lines()
            .iter()
            .filter(|line| line.contains("slow request started") && line.contains(&field))
            .count()
    };
    // One request per connection, each waited for, until both threads serve one.
    let mut slow = Vec::new();
    while started_on(&service, "main") == 0 || started_on(&service, "http-1") == 0 {
        assert!(slow.len() < 40, "40 connections, and one thread accepted none");
        let before = started_on(&service, "main") + started_on(&service, "http-1");
        slow.push(tokio::spawn(reqwest::get(service.url("/slow?ms=2000"))));
        eventually(PATIENCE, "the slow request starts", || async {
            started_on(&service, "main") + started_on(&service, "http-1") > before
        })
        .await;
    }

    service.process.signal(Signal::SIGTERM);
    for request in slow {
        answered_done(request).await;
    }
    let status = service.process.wait(Duration::from_secs(10)).await;
    assert!(status.success(), "exit 0, got {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_drain_delay_new_connections_are_refused_but_old_requests_finish() {
    let mut service = Service::start(FIXTURE, &[]).await;
    let slow = tokio::spawn(reqwest::get(service.url("/slow?ms=3000")));
    in_flight(&mut service).await;

    service.process.signal(Signal::SIGTERM);
    // With no drain delay the listener closes as soon as the signal is handled.
    // Well before the 3 s request ends.
    eventually(Duration::from_secs(2), "the listener closes", || async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        client.get(service.url("/healthz")).send().await.is_err()
    })
    .await;
    assert!(
        !slow.is_finished(),
        "refused while the old request is still in flight"
    );

    let answer = slow
        .await
        .expect("request task")
        .expect("the in-flight request is answered");
    assert_eq!(answer.status(), 200);
    assert!(service.process.wait(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn work_that_outlives_the_shutdown_timeout_is_cut_off_and_reported() {
    let mut service = Service::start(FIXTURE, &[("SHUTDOWN_TIMEOUT", "200ms")]).await;
    let slow = tokio::spawn(reqwest::get(service.url("/slow?ms=10000")));
    in_flight(&mut service).await;

    service.process.signal(Signal::SIGTERM);
    let status = service.process.wait(Duration::from_secs(5)).await;
    assert_eq!(
        status.code(),
        Some(1),
        "a shutdown that cut work off does not exit 0"
    );
    assert!(
        slow.await.expect("request task").is_err(),
        "the cut-off request got no answer"
    );
    assert!(
        service
            .process
            .lines()
            .iter()
            .any(|line| line.contains("SHUTDOWN_TIMEOUT")),
        "the log says why"
    );
}
