//! SIGTERM: readiness turns false at once, the listener closes after DRAIN_DELAY, in-flight
//! requests and background work finish, and the process exits 0 — or 1 when work had to be
//! cut off at SHUTDOWN_TIMEOUT.

use std::time::Duration;

use dozen_tests::process::Service;
use nix::sys::signal::Signal;

const FIXTURE: &str = "dozen-fixture-slow";

#[tokio::test(flavor = "multi_thread")]
async fn an_in_flight_request_completes_while_readiness_turns_false() {
    let mut service = Service::start(FIXTURE, &[("DRAIN_DELAY", "1s")]).await;
    let slow = tokio::spawn(reqwest::get(service.url("/slow?ms=1500")));
    tokio::time::sleep(Duration::from_millis(300)).await;

    service.process.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = reqwest::get(service.url("/readyz"))
        .await
        .expect("readyz answers while draining");
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.headers()["content-type"], "application/problem+json");

    let answer = slow
        .await
        .expect("request task")
        .expect("the in-flight request is answered");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.expect("body"), "done");
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
async fn after_the_drain_delay_new_connections_are_refused_but_old_requests_finish() {
    let mut service = Service::start(FIXTURE, &[]).await;
    let slow = tokio::spawn(reqwest::get(service.url("/slow?ms=1000")));
    tokio::time::sleep(Duration::from_millis(300)).await;

    service.process.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = reqwest::Client::new().get(service.url("/healthz")).send().await;
    assert!(refused.is_err(), "the listener is closed: {refused:?}");

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
    tokio::time::sleep(Duration::from_millis(300)).await;

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
