//! The fault suite: the platform under a steady load (signups, profile reads and writes, see
//! `dozen_tests::steady_load`) while something breaks — every instance restarted in turn,
//! services killed -9 over and over — and the tally of what it cost, printed (`fault suite |`
//! lines, collected in BENCHMARKS.md) and held to zero where the platform promises it.

use std::sync::Arc;
use std::time::Duration;

use dozen_tests::platform::{Platform, SERVICES};
use dozen_tests::public_api::PublicApi;
use dozen_tests::steady_load::{self, SteadyLoad, Stores, Tally};
use dozen_tests::{PATIENCE, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The load every scenario runs: modest, for a debug build on a shared 2-core machine.
const RATE: u32 = 20;

/// Members whose profiles the load reads and writes.
const MEMBERS: usize = 3;

/// How often `instance` of `platform` logged that it is ready.
fn ready_count(platform: &Platform, instance: &str) -> usize {
    let prefix = format!("{instance} ");
    platform
        .up
        .lines()
        .iter()
        .filter(|line| line.starts_with(&prefix) && line.contains("\"message\":\"ready\""))
        .count()
}

/// Send `signal` to the newest process of `instance`, and wait until `dozen up` has started
/// it again and it is ready.
async fn restart(platform: &Platform, instance: &str, signal: Signal) {
    let (started, ready) = (platform.started_count(instance), ready_count(platform, instance));
    kill(Pid::from_raw(platform.pid_of(instance)), signal).expect("signal the instance");
    eventually(PATIENCE, &format!("{instance} is back and ready"), || async {
        platform.started_count(instance) > started && ready_count(platform, instance) > ready
    })
    .await;
}

/// The members the load uses, and a client of the gateway.
async fn prepare(platform: &Platform, label: &str) -> (Arc<PublicApi>, Vec<steady_load::Member>) {
    let api = Arc::new(PublicApi::of(platform));
    let members = steady_load::members(&api, label, MEMBERS).await;
    (api, members)
}

/// What the platform logged above INFO, to say why a scenario failed.
fn warnings(platform: &Platform) -> String {
    let lines: Vec<String> = platform
        .up
        .lines()
        .into_iter()
        .filter(|line| !line.contains("\"level\":\"INFO\"") && !line.starts_with("dozen "))
        .collect();
    lines.join("\n")
}

fn assert_nothing_lost_or_doubled(tally: &Tally, platform: &Platform) {
    let log = || warnings(platform);
    assert!(tally.accepted > 0, "signups were accepted: {tally:?}");
    assert_eq!(tally.lost, 0, "no accepted signup is lost: {tally:?}\n{}", log());
    assert_eq!(tally.duplicated, 0, "no signup is mailed twice: {tally:?}");
    assert_eq!(tally.orphaned, 0, "no half-made account is left after repair: {tally:?}");
    assert_eq!(tally.dead_letters, 0, "every event was handled: {tally:?}\n{}", log());
}

/// Every instance of every service, two replicas each, stopped (SIGTERM) and started again
/// one at a time under the load, as a rolling deploy does: not one request fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_of_every_instance_costs_no_request_and_no_event() {
    // A deployment drains an instance before stopping it: its answers meanwhile tell clients
    // to reconnect (to another instance).
    let platform = Platform::start(&[("REPLICAS", "2"), ("DRAIN_DELAY", "1s")]).await;
    let (api, members) = prepare(&platform, "rolling").await;
    let load = SteadyLoad::start(api.clone(), members, "rolling", RATE, Duration::from_secs(30));
    let began = tokio::time::Instant::now();
    for service in SERVICES {
        for replica in 1..=2 {
            restart(&platform, &format!("{service}-{replica}"), Signal::SIGTERM).await;
        }
    }
    let restarts_took = began.elapsed();
    println!("fault suite | rolling restart: 12 instances restarted in {restarts_took:?}");
    let outcomes = load.finish().await;
    assert!(
        restarts_took < Duration::from_secs(30),
        "every restart happened under the load ({restarts_took:?})"
    );
    let tally = Stores::embedded(&platform).tally(&api, &outcomes, PATIENCE).await;
    tally.print("rolling restart, 2 replicas");
    assert_eq!(
        tally.failures(),
        0,
        "no request failed: {tally:?}\n{}",
        warnings(&platform)
    );
    assert_nothing_lost_or_doubled(&tally, &platform);
    platform.stop().await;
}

/// Each service killed -9 twice in turn under the load, `dozen up` restarting it each time:
/// requests to it fail meanwhile (counted), but no accepted signup is lost, none is mailed
/// twice, `repair` leaves no half-made account, and every event is handled.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_loops_of_every_service_lose_no_signup_and_double_no_event() {
    let platform = Platform::start(&[]).await;
    let (api, members) = prepare(&platform, "kill9").await;
    let load = SteadyLoad::start(api.clone(), members, "kill9", RATE, Duration::from_secs(30));
    let began = tokio::time::Instant::now();
    // A kill every two seconds of the load, each service's two in a row.
    let mut at = 2;
    for service in SERVICES {
        for _ in 0..2 {
            load.reached(at).await;
            restart(&platform, service, Signal::SIGKILL).await;
            at += 2;
        }
    }
    let kills_took = began.elapsed();
    println!("fault suite | kill -9 loops: 12 kills and restarts in {kills_took:?}");
    let outcomes = load.finish().await;
    let tally = Stores::embedded(&platform).tally(&api, &outcomes, PATIENCE).await;
    tally.print("kill -9 loops, 1 replica");
    assert_nothing_lost_or_doubled(&tally, &platform);
    platform.stop().await;
}
