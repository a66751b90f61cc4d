//! A steady load on a platform's public API while a test breaks something, and the tally of
//! what the break cost: the fault suite's (`tests/tests/faults.rs`) measure.
//!
//! The load is `dozen load`'s default mix (`dozen::load::mix::DEFAULT_MIX`: signups, logins,
//! profile reads and writes, suggestions, friend requests and acceptances), sent by its
//! workload as a pool of verified members, in an open loop: request *k* is due at *k*/rate
//! seconds whatever the answers do, and its latency counts from that due time, so a stall
//! shows instead of slowing the load. Unlike `dozen load`, every request's outcome is kept, and
//! new signups are left unverified: the tally follows each itself.
//!
//! The tally then follows every signup answered 202 to its end (a profile, a credential and
//! one verification mail) after `repair`, and counts what went wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use dozen::load::mix::Endpoint;
use dozen::load::mix::{DEFAULT_MIX, Mix};
pub use dozen::load::report::Outcome as Answer;
use dozen::load::schedule::{Limit, Schedule};
use dozen::load::workload::{Setup, Workload};
use sqlx::Connection;

use crate::platform::Platform;
use crate::public_api::{PublicApi, token_in};

/// The longest a request of the load may take before it counts as failed (`timeout`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Verified members the load acts as: enough pairs that friend requests and acceptances go on
/// for a while before every pair is friends.
const MEMBERS: usize = 8;

/// Connections the load's client keeps open to the gateway between requests (what
/// `dozen load` sizes by `--max-in-flight`): more than a modest rate ever has in flight.
const IDLE_CONNECTIONS: usize = 256;

/// The pool of verified members the load acts as, made through the gateway `api` calls.
pub async fn members(api: &PublicApi) -> Arc<Workload> {
    let setup = Setup {
        users: MEMBERS,
        concurrency: 2,
    };
    let workload = Workload::prepare(&api.url(""), REQUEST_TIMEOUT, IDLE_CONNECTIONS, setup)
        .await
        .expect("the load's members are made");
    Arc::new(workload)
}

/// One request's fate.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What it was.
    pub kind: Endpoint,
    /// Its status, or why there was none; `/api/me` answered without a part is `Degraded`.
    pub answer: Answer,
    /// When it was due, from the start of the load.
    pub due: Duration,
    /// From when it was due to its answer.
    pub latency: Duration,
    /// A signup's address.
    pub email: Option<String>,
}

impl Outcome {
    /// Whether it was answered 2xx (and for a read, with every part of the profile page).
    pub fn succeeded(&self) -> bool {
        self.answer.is_success()
    }
}

/// A load running in the background.
#[derive(Debug)]
pub struct SteadyLoad {
    sender: tokio::task::JoinHandle<Vec<Outcome>>,
    sent: Arc<AtomicU64>,
    rate: u32,
}

impl SteadyLoad {
    /// Start `rate` requests a second of the default mix for `duration`, as the `members`.
    pub fn start(members: Arc<Workload>, rate: u32, duration: Duration) -> Self {
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let sender = tokio::spawn(async move {
            let schedule = Schedule {
                rate: f64::from(rate),
                limit: Limit::Duration(duration),
            };
            let mix: Mix = DEFAULT_MIX.parse().expect("dozen load's default mix");
            let start = tokio::time::Instant::now();
            let mut requests = tokio::task::JoinSet::new();
            for ((k, due), kind) in (1..).zip(schedule.arrivals()).zip(mix.sequence()) {
                tokio::time::sleep_until(start + due).await;
                counter.store(k, Ordering::SeqCst);
                let members = members.clone();
                requests.spawn(async move {
                    let (answer, email) = if kind == Endpoint::Signup {
                        let (email, answer) = members.sign_up_new_address().await;
                        (Some(answer), Some(email))
                    } else {
                        (members.call(kind).await, None)
                    };
                    // None: an acceptance with no request open, skipped as `dozen load` does.
                    answer.map(|answer| Outcome {
                        kind,
                        answer,
                        due,
                        latency: (start + due).elapsed(),
                        email,
                    })
                });
            }
            requests.join_all().await.into_iter().flatten().collect()
        });
        Self { sender, sent, rate }
    }

    /// Wait until the load has run for `seconds`, by the requests it has sent: a fault
    /// scheduled this way strikes at the same point of the load however busy the machine.
    pub async fn reached(&self, seconds: u32) {
        let wanted = u64::from(self.rate) * u64::from(seconds);
        crate::eventually(
            crate::PATIENCE,
            &format!("the load has run {seconds} s"),
            || async { self.sent.load(Ordering::SeqCst) >= wanted },
        )
        .await;
    }

    /// Wait for the last request's answer; every request's outcome.
    pub async fn finish(self) -> Vec<Outcome> {
        self.sender.await.expect("the load runs to its end")
    }
}

/// What a fault cost, counted after the load.
#[derive(Debug, Default)]
pub struct Tally {
    /// Requests sent.
    pub requests: usize,
    /// Signups answered 202.
    pub accepted: usize,
    /// Accepted signups that never got a profile, a credential and a verification mail.
    pub lost: usize,
    /// Verification mails beyond the first for one signup.
    pub duplicated: usize,
    /// Profiles without a credential or credentials without a profile, after `repair`.
    pub orphaned: usize,
    /// Events moved to a dead-letter queue.
    pub dead_letters: usize,
    /// Requests not answered 2xx, by status or failure.
    pub failed: BTreeMap<String, usize>,
    /// The 99th percentile of every request's latency.
    pub p99: Duration,
    /// The slowest request.
    pub max: Duration,
}

impl Tally {
    /// Requests not answered 2xx.
    pub fn failures(&self) -> usize {
        self.failed.values().sum()
    }

    /// The tally, printed as one line for the test's output and the report.
    pub fn print(&self, scenario: &str) {
        println!(
            "fault suite | {scenario}: {} requests, {} signups accepted, lost {}, duplicated {}, \
             orphaned {}, dead letters {}, failed {} {:?}, p99 {} ms, max {} ms",
            self.requests,
            self.accepted,
            self.lost,
            self.duplicated,
            self.orphaned,
            self.dead_letters,
            self.failures(),
            self.failed,
            self.p99.as_millis(),
            self.max.as_millis(),
        );
    }
}

/// Where a platform keeps what the tally reads.
#[derive(Debug)]
pub struct Stores {
    /// `DATABASE_URL` of each service with a database, by name.
    pub databases: BTreeMap<&'static str, String>,
    /// Where signup's `repair` runs.
    pub repair: Repair,
}

/// Where signup's `repair` runs, before the tally counts orphans.
#[derive(Debug)]
pub enum Repair {
    /// `dozen-signup repair` on this machine, with the environment it needs besides
    /// `DATABASE_URL` (the bus, its peers, its identity).
    Process(Vec<(String, String)>),
    /// `repair` inside this running signup container, on the container's own environment.
    Container(String),
}

impl Stores {
    /// The stores of `platform`, a `dozen up` started with `env` over its defaults: SQLite
    /// files in its data folder, or with a Postgres `DATABASE_URL` a database per service
    /// there; and the bus `BUS_URL` names, its embedded one by default.
    pub fn of(platform: &Platform, env: &[(&str, &str)]) -> Self {
        let setting = |wanted: &str| {
            env.iter()
                .find(|(name, _)| *name == wanted)
                .map(|(_, value)| *value)
        };
        let data = platform.data_dir();
        let databases = crate::process::SERVICES
            .iter()
            .filter(|(_, has_database)| *has_database)
            .map(|(name, _)| {
                let url = match setting("DATABASE_URL") {
                    Some(server) => crate::database::service_database_url(server, name),
                    None => format!("sqlite://{}", data.join(format!("{name}.db")).display()),
                };
                (*name, url)
            })
            .collect();
        Self {
            databases,
            repair: Repair::Process(Self::repair_env(platform, &bus_env(platform, env))),
        }
    }

    /// The environment of `repair` for `platform` on the bus `bus_env` names.
    pub fn repair_env(platform: &Platform, bus_env: &[(String, String)]) -> Vec<(String, String)> {
        let keys = platform.keys_dir();
        let mut env = bus_env.to_vec();
        env.extend([
            ("USERS_URL".to_owned(), platform.url("users", "")),
            ("PASSWORDS_URL".to_owned(), platform.url("passwords", "")),
            (
                "SERVICE_SIGNING_KEYS_FILE".to_owned(),
                keys.join("signup.pem").display().to_string(),
            ),
            (
                "SERVICE_KEYS_FILE".to_owned(),
                keys.join("service-keys.json").display().to_string(),
            ),
            ("REPAIR_AFTER".to_owned(), "0s".to_owned()),
            ("LOG_LEVEL".to_owned(), "warn".to_owned()),
        ]);
        env
    }

    /// Count what the load's `outcomes` cost: wait (within `patience`) for every accepted
    /// signup's mail, run `repair`, and compare profiles, credentials and mails.
    pub async fn tally(&self, api: &PublicApi, outcomes: &[Outcome], patience: Duration) -> Tally {
        let accepted: BTreeSet<String> = outcomes
            .iter()
            .filter(|outcome| outcome.kind == Endpoint::Signup && outcome.answer == Answer::Status(202))
            .filter_map(|outcome| outcome.email.clone())
            .collect();
        let signed_up: BTreeSet<String> = outcomes
            .iter()
            .filter_map(|outcome| outcome.email.clone())
            .collect();

        // Mails come after the answer, through the bus: wait for them, but count rather than
        // fail when some never come.
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            let mails = verification_mails(api, &signed_up).await;
            if accepted.iter().all(|email| mails.contains_key(email)) || tokio::time::Instant::now() > give_up
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        self.repair().await;

        let profiles = emails(&self.databases["users"], "profiles").await;
        let credentials = emails(&self.databases["passwords"], "credentials").await;
        // Counted last: a duplicate could still have been on its way.
        let mails = verification_mails(api, &signed_up).await;

        let mut dead_letters = 0;
        for url in self.databases.values() {
            dead_letters += count(url, "SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL").await;
        }

        let mut latencies: Vec<Duration> = outcomes.iter().map(|outcome| outcome.latency).collect();
        latencies.sort();
        let p99 = latencies
            .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or_default();
        let mut failed = BTreeMap::new();
        for outcome in outcomes.iter().filter(|outcome| !outcome.succeeded()) {
            *failed.entry(outcome.answer.label()).or_insert(0) += 1;
        }
        Tally {
            requests: outcomes.len(),
            accepted: accepted.len(),
            lost: accepted
                .iter()
                .filter(|email| {
                    !(profiles.contains(*email) && credentials.contains(*email) && mails.contains_key(*email))
                })
                .count(),
            duplicated: mails.values().map(|count| count.saturating_sub(1)).sum(),
            orphaned: profiles.symmetric_difference(&credentials).count(),
            dead_letters,
            failed,
            p99,
            max: latencies.last().copied().unwrap_or_default(),
        }
    }
}

impl Stores {
    /// Run signup's `repair` once, now, and require it to succeed.
    async fn repair(&self) {
        let (status, mut printed) = match &self.repair {
            Repair::Process(env) => {
                let finished = crate::process::run_to_exit(
                    "dozen-signup",
                    &["repair"],
                    &env.iter()
                        .map(|(name, value)| (name.as_str(), value.as_str()))
                        .chain([("DATABASE_URL", self.databases["signup"].as_str())])
                        .collect::<Vec<_>>(),
                )
                .await;
                (finished.status, format!("{}{}", finished.stdout, finished.stderr))
            }
            Repair::Container(container) => {
                let output = crate::images::podman(&[
                    "exec",
                    "--env",
                    "REPAIR_AFTER=0s",
                    "--env",
                    "LOG_LEVEL=warn",
                    container,
                    "/usr/local/bin/dozen-service",
                    "repair",
                ])
                .await;
                (output.status, crate::images::printed(&output))
            }
        };
        printed.truncate(2000);
        assert!(status.success(), "repair runs ({status}): {printed}");
    }
}

/// The settings that name the bus of `platform`, a `dozen up` started with `env` over its
/// defaults: `BUS_URL` (its embedded bus by default) and `BUS_NAMESPACE` when set; what an
/// admin command of a service (`repair`, `replay`) needs beside its `DATABASE_URL`.
pub fn bus_env(platform: &Platform, env: &[(&str, &str)]) -> Vec<(String, String)> {
    let embedded = format!("sqlite://{}", platform.data_dir().join("bus.db").display());
    let mut bus = vec![("BUS_URL".to_owned(), embedded)];
    for (name, value) in env {
        match *name {
            "BUS_URL" => bus[0].1 = (*value).to_owned(),
            "BUS_NAMESPACE" => bus.push(((*name).to_owned(), (*value).to_owned())),
            _ => {}
        }
    }
    bus
}

/// How many verification mails each of `emails` got.
async fn verification_mails(api: &PublicApi, emails: &BTreeSet<String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for mail in api.mailbox().await {
        if token_in(&mail).is_none() {
            continue;
        }
        if let Some(to) = mail["to"].as_str()
            && let Some(email) = emails.iter().find(|email| to.contains(email.as_str()))
        {
            *counts.entry(email.clone()).or_insert(0) += 1;
        }
    }
    counts
}

/// Every address in `table` of the database at `url`.
async fn emails(url: &str, table: &str) -> BTreeSet<String> {
    let sql = format!("SELECT email FROM {table}");
    let emails = if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(url)
            .await
            .expect("the SQLite database");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut connection)
            .await
    } else {
        let mut connection = sqlx::PgConnection::connect(url)
            .await
            .expect("the Postgres database");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut connection)
            .await
    };
    emails.expect("the addresses").into_iter().collect()
}

/// The count `sql` answers on the database at `url`.
pub async fn count(url: &str, sql: &'static str) -> usize {
    let count: Result<i64, _> = if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(url)
            .await
            .expect("the SQLite database");
        sqlx::query_scalar(sql).fetch_one(&mut connection).await
    } else {
        let mut connection = sqlx::PgConnection::connect(url)
            .await
            .expect("the Postgres database");
        sqlx::query_scalar(sql).fetch_one(&mut connection).await
    };
    usize::try_from(count.expect("a count")).expect("a count")
}

/// Run the statement `sql` on the database at `url`.
pub async fn execute(url: &str, sql: &'static str) {
    let done = if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(url)
            .await
            .expect("the SQLite database");
        sqlx::query(sql).execute(&mut connection).await.map(drop)
    } else {
        let mut connection = sqlx::PgConnection::connect(url)
            .await
            .expect("the Postgres database");
        sqlx::query(sql).execute(&mut connection).await.map(drop)
    };
    done.unwrap_or_else(|error| panic!("{sql}: {error}"));
}
