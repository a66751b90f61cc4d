//! The fault suite: the platform under a steady load (`dozen load`'s default mix, see
//! `dozen_tests::steady_load`) while something breaks — every instance restarted in turn,
//! services killed -9 over and over, a poison event, a broken link, a backing service gone —
//! and the tally of what it cost, printed (`fault suite |` lines, collected in BENCHMARKS.md)
//! and held to zero where the platform promises it. Each scenario runs on the embedded
//! defaults and on Postgres + NATS where it applies (`on_both_platforms!`).

use std::sync::Arc;
use std::time::Duration;

use dozen_tests::fault_proxy::FaultProxy;
use dozen_tests::nats::StreamNamespace;
use dozen_tests::platform::{Platform, SERVICES};
use dozen_tests::private_servers::{PrivateNats, PrivatePostgres, PrivateSnsSqs};
use dozen_tests::process::{Service, run_to_exit};
use dozen_tests::public_api::PublicApi;
use dozen_tests::steady_load::{self, Answer, Endpoint, SteadyLoad, Stores, Tally, bus_env, count, execute};
use dozen_tests::{PATIENCE, eventually, on_both_platforms};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::Connection as _;

/// The load every scenario runs: modest, for a debug build on a shared 2-core machine, yet
/// with signups (2 in 100 of the mix) enough for two dozen in a 30 s scenario.
const RATE: u32 = 40;

/// `dozen up`'s settings for a scenario on `backing` (from `on_both_platforms!`), then `extra`.
/// On Postgres each instance keeps at most 4 connections: at the default 8, two replicas of
/// every service (80) and other tests' platforms on the shared server went past its 100, and
/// services were refused connections ("too many clients") mid-scenario.
fn platform_env<'a>(backing: &[(&'a str, &'a str)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = [backing, extra].concat();
    if !backing.is_empty() {
        env.push(("DATABASE_MAX_CONNECTIONS", "4"));
    }
    env
}

/// Which platform `backing` (`dozen up`'s extra settings from `on_both_platforms!`) puts the
/// platform on, for the printed tally.
fn platform_name(backing: &[(&str, &str)]) -> &'static str {
    if backing.is_empty() {
        "embedded"
    } else {
        "Postgres + NATS"
    }
}

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

/// A client of the gateway, and the members the load acts as.
async fn prepare(platform: &Platform) -> (PublicApi, Arc<dozen::load::workload::Workload>) {
    let api = PublicApi::of(platform);
    let members = steady_load::members(&api).await;
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
    assert_eq!(
        tally.orphaned, 0,
        "no half-made account is left after repair: {tally:?}"
    );
    assert_eq!(
        tally.dead_letters,
        0,
        "every event was handled: {tally:?}\n{}",
        log()
    );
}

/// Every instance of every service, two replicas each, stopped (SIGTERM) and started again
/// one at a time under the load, as a rolling deploy does: not one request fails.
async fn a_rolling_restart_of_every_instance_costs_no_request_and_no_event(backing: &[(&str, &str)]) {
    // A deployment drains an instance before stopping it: its answers meanwhile tell clients
    // to reconnect (to another instance).
    let env = platform_env(backing, &[("REPLICAS", "2"), ("DRAIN_DELAY", "1s")]);
    let platform = Platform::start(&env).await;
    let (api, members) = prepare(&platform).await;
    let load = SteadyLoad::start(members, RATE, Duration::from_secs(30));
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
    let tally = Stores::of(&platform, backing)
        .tally(&api, &outcomes, PATIENCE)
        .await;
    tally.print(&format!(
        "rolling restart, 2 replicas, {}",
        platform_name(backing)
    ));
    let failed: Vec<_> = outcomes.iter().filter(|outcome| !outcome.succeeded()).collect();
    assert!(
        failed.is_empty(),
        "no request failed: {tally:?}\n{failed:?}\n{}",
        warnings(&platform)
    );
    assert_nothing_lost_or_doubled(&tally, &platform);
    platform.stop().await;
}
on_both_platforms!(a_rolling_restart_of_every_instance_costs_no_request_and_no_event);

/// Each service killed -9 twice in turn under the load, `dozen up` restarting it each time:
/// requests to it fail meanwhile (counted), but no accepted signup is lost, none is mailed
/// twice, `repair` leaves no half-made account, and every event is handled.
async fn kill_9_loops_of_every_service_lose_no_signup_and_double_no_event(backing: &[(&str, &str)]) {
    let platform = Platform::start(&platform_env(backing, &[])).await;
    let (api, members) = prepare(&platform).await;
    let load = SteadyLoad::start(members, RATE, Duration::from_secs(30));
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
    let tally = Stores::of(&platform, backing)
        .tally(&api, &outcomes, PATIENCE)
        .await;
    tally.print(&format!("kill -9 loops, 1 replica, {}", platform_name(backing)));
    assert_nothing_lost_or_doubled(&tally, &platform);
    platform.stop().await;
}
on_both_platforms!(kill_9_loops_of_every_service_lose_no_signup_and_double_no_event);

/// The platform on a PostgreSQL cluster of the test's own (and the shared NATS), the cluster
/// stopped for a while under the load and started again: meanwhile requests that need it fail
/// fast with a 503 problem, readiness drops and comes back, and afterwards everything flows
/// again — no accepted signup lost.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_and_started_mid_load_fails_fast_and_loses_nothing() {
    const DOWN_AT: u32 = 8;
    const UP_AT: u32 = 16;
    let mut postgres = PrivatePostgres::start().await;
    let streams = StreamNamespace::new("faults-postgres");
    let nats = dozen_tests::nats::nats_url();
    let database = postgres.url("faults");
    let env = [
        ("DATABASE_URL", database.as_str()),
        ("BUS_URL", nats.as_str()),
        ("BUS_NAMESPACE", streams.namespace.as_str()),
        ("DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS", "true"),
    ];
    let platform = Platform::start(&env).await;
    let (api, members) = prepare(&platform).await;
    let load = SteadyLoad::start(members, RATE, Duration::from_secs(30));

    load.reached(DOWN_AT).await;
    postgres.stop().await;
    eventually(PATIENCE, "users is no longer ready", || async {
        !platform.is_ready(platform.port("users")).await
    })
    .await;
    load.reached(UP_AT).await;
    postgres.start_again().await;
    let restarted = tokio::time::Instant::now();
    eventually(PATIENCE, "every service is ready again", || async {
        for (_, port) in &platform.ports {
            if !platform.is_ready(*port).await {
                return false;
            }
        }
        true
    })
    .await;
    println!(
        "fault suite | postgres restart: every service ready {:?} after PostgreSQL was back",
        restarted.elapsed()
    );
    let outcomes = load.finish().await;

    let tally = Stores::of(&platform, &env).tally(&api, &outcomes, PATIENCE).await;
    tally.print("postgres stopped for 8 s");
    // Failing fast: each failure is a 503 problem, none waited for a timeout.
    for outcome in outcomes.iter().filter(|outcome| !outcome.succeeded()) {
        assert!(
            !matches!(outcome.answer, Answer::Status(status) if status != 503)
                && outcome.answer != Answer::Timeout,
            "a failure while PostgreSQL is away is a 503: {outcome:?}"
        );
        assert!(
            outcome.latency < Duration::from_secs(5),
            "failed fast: {outcome:?}"
        );
    }
    // Back within seconds: the load's last stretch is whole.
    let late_failures: Vec<_> = outcomes
        .iter()
        .filter(|outcome| outcome.due > Duration::from_secs(u64::from(UP_AT) + 6) && !outcome.succeeded())
        .collect();
    assert!(
        late_failures.is_empty(),
        "all well again: {late_failures:?}\n{}",
        warnings(&platform)
    );
    assert_nothing_lost_or_doubled(&tally, &platform);
    platform.stop().await;
}

/// The platform on a NATS server of the test's own, the server stopped for a while under the
/// load and started again on its store: requests never needed it (events wait in the
/// outboxes), and afterwards the backlog drains — every accepted signup mailed once.
#[tokio::test(flavor = "multi_thread")]
async fn nats_stopped_and_started_mid_load_costs_no_request_and_the_backlog_drains() {
    const DOWN_AT: u32 = 8;
    const UP_AT: u32 = 16;
    let mut nats = PrivateNats::start().await;
    let url = nats.url();
    let env = [
        ("BUS_URL", url.as_str()),
        ("DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS", "true"),
    ];
    let platform = Platform::start(&env).await;
    let (api, members) = prepare(&platform).await;
    let load = SteadyLoad::start(members, RATE, Duration::from_secs(30));
    load.reached(DOWN_AT).await;
    nats.stop().await;
    load.reached(UP_AT).await;
    nats.start_again().await;
    let outcomes = load.finish().await;

    let tally = Stores::of(&platform, &env).tally(&api, &outcomes, PATIENCE).await;
    tally.print("nats stopped for 8 s");
    assert_eq!(
        tally.failures(),
        0,
        "no request needs the broker: {tally:?}\n{}",
        warnings(&platform)
    );
    assert_nothing_lost_or_doubled(&tally, &platform);
    platform.stop().await;
}

/// The platform on an SNS/SQS emulator of the test's own, the emulator frozen (SIGSTOP) for a
/// while under the load and then let go (SIGCONT): events wait in the outboxes meanwhile, and
/// afterwards the backlog drains — every accepted signup mailed once.
#[tokio::test(flavor = "multi_thread")]
async fn the_sns_sqs_emulator_frozen_mid_load_loses_nothing_and_the_backlog_drains() {
    const FROZEN_AT: u32 = 8;
    const THAWED_AT: u32 = 16;
    let emulator = PrivateSnsSqs::start().await;
    let url = emulator.url();
    let env = [
        ("BUS_URL", url.as_str()),
        ("DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS", "true"),
    ];
    let platform = Platform::start(&env).await;
    let (api, members) = prepare(&platform).await;
    let load = SteadyLoad::start(members, RATE, Duration::from_secs(30));
    load.reached(FROZEN_AT).await;
    emulator.pause();
    load.reached(THAWED_AT).await;
    emulator.resume();
    let outcomes = load.finish().await;

    let tally = Stores::of(&platform, &env).tally(&api, &outcomes, PATIENCE).await;
    tally.print("sns/sqs emulator frozen for 8 s");
    assert_eq!(
        tally.failures(),
        0,
        "no request needs the broker: {tally:?}\n{}",
        warnings(&platform)
    );
    assert_nothing_lost_or_doubled(&tally, &platform);
    platform.stop().await;
}

/// One signup's event fails in one subscriber (friends, through a trigger an operator could
/// have left in its database, refusing the member "Poison"): after `BUS_MAX_ATTEMPTS` it is a
/// dead letter, and every other event flows on meanwhile; once the trigger is gone, `replay`
/// delivers it, once.
async fn a_poison_event_is_dead_lettered_the_rest_flow_and_replay_delivers_it_once(backing: &[(&str, &str)]) {
    let env = platform_env(
        backing,
        &[("BUS_MAX_ATTEMPTS", "3"), ("BUS_RETRY_BACKOFF", "100ms")],
    );
    let platform = Platform::start(&env).await;
    let stores = Stores::of(&platform, backing);
    let friends = stores.databases["friends"].clone();
    // The one trigger, in the dialect of friends' database.
    let (poison, cure): (&[&'static str], &'static str) = if friends.starts_with("sqlite:") {
        (
            &[
                "CREATE TRIGGER poison BEFORE INSERT ON members WHEN NEW.display_name = 'Poison' \
               BEGIN SELECT RAISE(ABORT, 'no member may be called Poison'); END",
            ],
            "DROP TRIGGER poison",
        )
    } else {
        (
            &[
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF NEW.display_name = 'Poison' THEN RAISE EXCEPTION 'no member may be called Poison'; \
                 END IF; RETURN NEW; END $$",
                "CREATE TRIGGER poison BEFORE INSERT ON members FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
            ],
            "DROP TRIGGER poison ON members",
        )
    };
    for statement in poison {
        execute(&friends, statement).await;
    }

    let (api, members) = prepare(&platform).await;
    let load = SteadyLoad::start(members, RATE, Duration::from_secs(30));
    load.reached(5).await;
    let poisoned = api
        .sign_up("poison", "poison@example.com", "Poison", &["chess"])
        .await;
    assert_eq!(poisoned.status(), 202);
    eventually(
        PATIENCE,
        "the poison event is a dead letter after 3 attempts",
        || async { count(&friends, "SELECT count(*) FROM dead_letters WHERE attempts = 3").await == 1 },
    )
    .await;
    let outcomes = load.finish().await;
    // The rest flowed on: every other profile has its member.
    let profiles = count(&stores.databases["users"], "SELECT count(*) FROM profiles").await;
    eventually(PATIENCE, "every other signup reached friends", || async {
        count(&friends, "SELECT count(*) FROM members").await == profiles - 1
    })
    .await;

    execute(&friends, cure).await;
    let bus = bus_env(&platform, backing);
    let admin_env: Vec<(&str, &str)> = [("DATABASE_URL", friends.as_str())]
        .into_iter()
        .chain(bus.iter().map(|(name, value)| (name.as_str(), value.as_str())))
        .collect();
    let replayed = run_to_exit("dozen-friends", &["replay"], &admin_env).await;
    assert!(replayed.status.success(), "{replayed:?}");
    eventually(PATIENCE, "the replayed event is handled", || async {
        count(
            &friends,
            "SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL",
        )
        .await
            == 0
            && count(
                &friends,
                "SELECT count(*) FROM members WHERE display_name = 'Poison'",
            )
            .await
                == 1
    })
    .await;
    assert_eq!(count(&friends, "SELECT count(*) FROM members").await, profiles);

    let tally = stores.tally(&api, &outcomes, PATIENCE).await;
    tally.print(&format!(
        "poison event, dead-lettered and replayed, {}",
        platform_name(backing)
    ));
    assert_eq!(
        tally.failures(),
        0,
        "the poison event costs no request: {tally:?}"
    );
    assert_nothing_lost_or_doubled(&tally, &platform);
    platform.stop().await;
}
on_both_platforms!(a_poison_event_is_dead_lettered_the_rest_flow_and_replay_delivers_it_once);

/// The state of the breaker of `service` at the gateway at `gateway` (its base URL).
async fn breaker_state(gateway: &str, service: &str) -> String {
    let status: serde_json::Value = reqwest::get(format!("{gateway}/ops/status"))
        .await
        .expect("GET /ops/status")
        .json()
        .await
        .expect("JSON");
    status["services"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|entry| entry["name"] == service)
        .and_then(|entry| entry["breaker"]["state"].as_str())
        .expect("the service's breaker")
        .to_owned()
}

/// Between a gateway and friends, a network that turns slow (latency past `/api/me`'s
/// deadline), then resets every connection, heals, then drops everything (a black hole), then
/// heals again: `/api/me` answers 200 within its deadline throughout, without friends' parts
/// meanwhile; friends' own routes fail with the gateway's problem at worst; the breaker opens
/// under the resets and under the black hole, and closes each time the network is whole;
/// nothing else is touched.
async fn a_slow_reset_then_black_holed_link_to_friends_degrades_me_within_its_deadline(
    backing: &[(&str, &str)],
) {
    const ME_DEADLINE: Duration = Duration::from_millis(800);
    let platform = Platform::start(&platform_env(backing, &[])).await;
    // A gateway of the test's own, reaching friends through the proxy.
    let link = FaultProxy::start(&platform.url("friends", "")).await;
    let keys = platform.keys_dir();
    let urls: Vec<(String, String)> = ["signup", "users", "passwords", "verification"]
        .iter()
        .map(|service| {
            (
                format!("{}_URL", service.to_uppercase()),
                platform.url(service, ""),
            )
        })
        .collect();
    let (signing, trust) = (
        keys.join("gateway.pem").display().to_string(),
        keys.join("service-keys.json").display().to_string(),
    );
    let mut env: Vec<(&str, &str)> = urls
        .iter()
        .map(|(name, url)| (name.as_str(), url.as_str()))
        .collect();
    env.extend([
        ("FRIENDS_URL", link.url()),
        ("SERVICE_SIGNING_KEYS_FILE", signing.as_str()),
        ("SERVICE_KEYS_FILE", trust.as_str()),
        ("DEV_MAILBOX", "true"),
        ("ME_DEADLINE", "800ms"),
        ("BREAKER_OPEN_FOR", "2s"),
        // Calls into the black hole end (timed out) within 2 s of the heal, not 5 s: a late
        // timeout would open the breaker again after it closed.
        ("UPSTREAM_TIMEOUT", "2s"),
        ("RATE_LIMIT_SIGNUPS", "10000/min"),
        ("RATE_LIMIT_SESSIONS", "10000/min"),
        ("RATE_LIMIT_VERIFICATIONS", "10000/min"),
        ("RATE_LIMIT_READS", "10000/min"),
    ]);
    let gateway = Service::start_on("dozen-gateway", &env, 0).await;
    let gateway_url = gateway.url("");
    let api = PublicApi::new(gateway_url.clone());
    let members = steady_load::members(&api).await;
    let load = SteadyLoad::start(members, RATE, Duration::from_secs(36));
    let breaker_becomes = |state: &'static str| {
        let gateway_url = gateway_url.clone();
        async move {
            eventually(PATIENCE, &format!("friends' breaker is {state}"), || async {
                breaker_state(&gateway_url, "friends").await == state
            })
            .await;
        }
    };

    load.reached(6).await;
    link.add_latency(Duration::from_secs(2));
    load.reached(12).await;
    link.heal();
    breaker_becomes("closed").await;
    link.reset_connections();
    let reset = reqwest::Client::new()
        .get(format!("{}/readyz", link.url()))
        .send()
        .await;
    assert!(reset.is_err(), "the link resets every connection: {reset:?}");
    breaker_becomes("open").await;
    load.reached(18).await;
    link.heal();
    breaker_becomes("closed").await;
    load.reached(20).await;
    link.black_hole();
    breaker_becomes("open").await;
    load.reached(26).await;
    link.heal();
    breaker_becomes("closed").await;
    let outcomes = load.finish().await;

    let tally = Stores::of(&platform, backing)
        .tally(&api, &outcomes, PATIENCE)
        .await;
    tally.print(&format!(
        "slow, reset, then black-holed link gateway to friends, {}",
        platform_name(backing)
    ));
    let degraded = outcomes
        .iter()
        .filter(|outcome| outcome.answer == Answer::Degraded)
        .count();
    println!("fault suite | slow, reset, then black-holed link: {degraded} reads answered without friends");
    assert!(degraded > 0, "the fault was felt: {tally:?}");
    for outcome in &outcomes {
        match outcome.kind {
            // The deadline, and room for a busy machine: nowhere near the link's delay.
            Endpoint::Me => assert!(
                (outcome.succeeded() || outcome.answer == Answer::Degraded)
                    && outcome.latency < ME_DEADLINE + Duration::from_millis(1200),
                "every read is answered within its deadline, without friends at worst: {outcome:?}"
            ),
            // Friends' own routes: the gateway answers for friends when it cannot reach it,
            // within one attempt's time (`UPSTREAM_TIMEOUT`, 5 s), its retries included.
            Endpoint::Suggestions | Endpoint::FriendRequest | Endpoint::FriendAccept => assert!(
                (outcome.succeeded() || matches!(outcome.answer, Answer::Status(503 | 504)))
                    && outcome.latency < Duration::from_secs(5) + Duration::from_millis(2000),
                "a call to friends is answered in time, with the gateway's problem at worst: {outcome:?}"
            ),
            _ => assert!(outcome.succeeded(), "nothing else is touched: {outcome:?}"),
        }
    }
    let late: Vec<_> = outcomes
        .iter()
        .filter(|outcome| outcome.due > Duration::from_secs(31) && !outcome.succeeded())
        .collect();
    assert!(late.is_empty(), "whole again once the link heals: {late:?}");
    assert_nothing_lost_or_doubled(&tally, &platform);
    drop(gateway);
    platform.stop().await;
}
on_both_platforms!(a_slow_reset_then_black_holed_link_to_friends_degrades_me_within_its_deadline);

/// A tmpfs of `size` mounted for one test (the tests run as root, as `scripts/test` does),
/// unmounted when dropped.
struct SmallDisk {
    mount_point: tempfile::TempDir,
}

impl SmallDisk {
    async fn mount(size: &str) -> Self {
        let mount_point = tempfile::tempdir().expect("a mount point");
        let mounted = tokio::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mount_point.path())
            .status()
            .await
            .expect("mount runs");
        assert!(mounted.success(), "mount -t tmpfs (the fault suite runs as root)");
        Self { mount_point }
    }

    /// Fill what is left of it; the file that did, to remove to give the space back.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let filler = self.mount_point.path().join("filler");
        let mut file = std::fs::File::create(&filler).expect("the filler");
        let block = vec![0_u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        // The last bytes that fit, in smaller writes.
        while file.write_all(&block[..512]).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a process still holding a file there must not keep the mount.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.mount_point.path())
            .status();
    }
}

/// The embedded defaults on a small disk that fills up under the load, then gets its space
/// back: meanwhile writes fail with 503 problems (never a 500 or a hang), reads go on; after,
/// everything flows again, no accepted signup is lost and every database is intact.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_writes_with_503_and_recovers_when_space_returns() {
    let disk = SmallDisk::mount("64m").await;
    let data = tempfile::tempdir_in(disk.mount_point.path()).expect("a data folder on the disk");
    let platform = Platform::start_in(data, &[]).await;
    let (api, members) = prepare(&platform).await;
    let load = SteadyLoad::start(members, RATE, Duration::from_secs(24));
    load.reached(6).await;
    let filler = disk.fill();
    load.reached(12).await;
    std::fs::remove_file(&filler).expect("space back");
    let outcomes = load.finish().await;

    let stores = Stores::of(&platform, &[]);
    let tally = stores.tally(&api, &outcomes, PATIENCE).await;
    tally.print("disk full for 6 s");
    for outcome in outcomes.iter().filter(|outcome| !outcome.succeeded()) {
        assert!(
            outcome.answer == Answer::Status(503) || outcome.answer == Answer::Degraded,
            "a full disk is a 503 problem: {outcome:?}\n{}",
            warnings(&platform)
        );
        assert!(
            outcome.latency < Duration::from_secs(5),
            "failed fast: {outcome:?}"
        );
    }
    let late: Vec<_> = outcomes
        .iter()
        .filter(|outcome| outcome.due > Duration::from_secs(18) && !outcome.succeeded())
        .collect();
    assert!(late.is_empty(), "all well once the space is back: {late:?}");
    for (service, url) in &stores.databases {
        let mut connection = sqlx::SqliteConnection::connect(url).await.expect("the database");
        let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut connection)
            .await
            .expect("an integrity check");
        assert_eq!(verdict, "ok", "{service}'s database is intact");
    }
    assert_nothing_lost_or_doubled(&tally, &platform);
    platform.stop().await;
}

/// The platform on an SNS/SQS emulator of the test's own, the emulator stopped for a while
/// under the load (connections refused, those open cut, a long poll in flight included) and
/// started again with its topics, queues and messages, as SNS and SQS come back after an
/// outage: requests never needed it (events wait in the outboxes), and afterwards the backlog
/// drains — every accepted signup mailed once.
#[tokio::test(flavor = "multi_thread")]
async fn the_sns_sqs_emulator_stopped_and_started_mid_load_loses_nothing_and_the_backlog_drains() {
    const DOWN_AT: u32 = 8;
    const UP_AT: u32 = 16;
    let mut emulator = PrivateSnsSqs::start().await;
    let url = emulator.url();
    let env = [
        ("BUS_URL", url.as_str()),
        ("DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS", "true"),
    ];
    let platform = Platform::start(&env).await;
    let stores = Stores::of(&platform, &env);
    // Events a relay failed to publish, still waiting in the outboxes.
    let held_back = || async {
        let mut held_back = 0;
        for url in stores.databases.values() {
            held_back += count(
                url,
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND attempts > 0",
            )
            .await;
        }
        held_back
    };
    let (api, members) = prepare(&platform).await;
    let load = SteadyLoad::start(members, RATE, Duration::from_secs(30));
    load.reached(DOWN_AT).await;
    emulator.stop().await;
    eventually(PATIENCE, "the outboxes hold events back", || async {
        held_back().await > 0
    })
    .await;
    load.reached(UP_AT).await;
    emulator.start_again().await;
    let restarted = tokio::time::Instant::now();
    eventually(PATIENCE, "every event held back is published", || async {
        held_back().await == 0
    })
    .await;
    let published = restarted.elapsed();
    let outcomes = load.finish().await;

    // Messages that long polls cut by the stop had taken come back after `BUS_ACK_WAIT`.
    let load_ended = tokio::time::Instant::now();
    let tally = stores.tally(&api, &outcomes, PATIENCE).await;
    println!(
        "fault suite | sns/sqs emulator restart: every event held back published {published:?} \
         after it was back; the tally (the last mails awaited, then repair) took {:?}",
        load_ended.elapsed()
    );
    tally.print("sns/sqs emulator stopped for 8 s");
    assert_eq!(
        tally.failures(),
        0,
        "no request needs the broker: {tally:?}\n{}",
        warnings(&platform)
    );
    assert_nothing_lost_or_doubled(&tally, &platform);
    platform.stop().await;
}
