//! A steady load on a platform's public API while a test breaks something, and the tally of
//! what the break cost: the fault suite's (`tests/tests/faults.rs`) measure.
//!
//! The load is an open loop: request *k* is due at *k*/rate seconds whatever the answers do,
//! and its latency counts from that due time, so a stall shows instead of slowing the load.
//! Every tenth request is a signup (a new address each), two are profile writes
//! (`PATCH /api/me`) and the rest reads (`GET /api/me`) by a few verified members.
//!
//! The tally then follows every signup answered 202 to its end (a profile, a credential and
//! one verification mail) after `repair`, and counts what went wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use sqlx::Connection;

use crate::public_api::{PublicApi, token_in};

/// The longest a request of the load may take before it counts as failed (`timeout`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A verified member the load reads and writes as.
#[derive(Debug, Clone)]
pub struct Member {
    /// Their access token.
    pub token: String,
}

/// Sign up, verify and log in `count` members, their addresses under `label`.
pub async fn members(api: &PublicApi, label: &str, count: usize) -> Vec<Member> {
    let mut members = Vec::new();
    for n in 0..count {
        let email = format!("{label}-member-{n}@example.com");
        let answer = api
            .sign_up(&format!("{label}-member-{n}"), &email, "Member", &["chess"])
            .await;
        assert_eq!(answer.status(), 202, "signing up {email}");
        members.push(Member {
            token: api.verify_and_log_in(&email).await,
        });
    }
    members
}

/// What the load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `POST /api/signups`, a new address.
    Signup,
    /// `GET /api/me`.
    Read,
    /// `PATCH /api/me`.
    Write,
}

/// One request's fate.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What it was.
    pub kind: Kind,
    /// Its status, or why there was none (`timeout`, `connection`, …).
    pub answer: Result<u16, String>,
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
        matches!(self.answer, Ok(status) if (200..300).contains(&status))
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
    /// Start `rate` requests a second for `duration` through `api` as `members`, signing up
    /// new addresses under `label`.
    pub fn start(
        api: Arc<PublicApi>,
        members: Vec<Member>,
        label: &str,
        rate: u32,
        duration: Duration,
    ) -> Self {
        let label = label.to_owned();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let sender = tokio::spawn(async move {
            let total = u64::from(rate) * duration.as_secs();
            let interval = Duration::from_secs(1) / rate;
            let start = tokio::time::Instant::now();
            let mut requests = tokio::task::JoinSet::new();
            for k in 0..total {
                let due = start + interval * u32::try_from(k).expect("a modest count");
                tokio::time::sleep_until(due).await;
                counter.store(k + 1, Ordering::SeqCst);
                let kind = match k % 10 {
                    0 => Kind::Signup,
                    3 | 7 => Kind::Write,
                    _ => Kind::Read,
                };
                let member = members[usize::try_from(k).expect("a count") % members.len()].clone();
                let email = (kind == Kind::Signup).then(|| format!("{label}-{k}@example.com"));
                let api = api.clone();
                requests.spawn(async move {
                    let answer = send(&api, kind, &member, email.as_deref(), k).await;
                    Outcome {
                        kind,
                        answer,
                        due: due - start,
                        latency: due.elapsed(),
                        email,
                    }
                });
            }
            requests.join_all().await
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

async fn send(
    api: &PublicApi,
    kind: Kind,
    member: &Member,
    email: Option<&str>,
    k: u64,
) -> Result<u16, String> {
    let request = match kind {
        Kind::Signup => api
            .client
            .post(api.url("/api/signups"))
            .header(
                "Idempotency-Key",
                format!("load-{k}-{}", email.unwrap_or_default()),
            )
            .json(&json!({
                "email": email,
                "password": crate::public_api::PASSWORD,
                "display_name": format!("Load {k}"),
                "interests": ["chess"],
            })),
        Kind::Read => api.client.get(api.url("/api/me")).bearer_auth(&member.token),
        Kind::Write => api
            .client
            .request(Method::PATCH, api.url("/api/me"))
            .bearer_auth(&member.token)
            .json(&json!({ "display_name": format!("Member {k}") })),
    };
    let response = request.timeout(REQUEST_TIMEOUT).send().await.map_err(|error| {
        if error.is_timeout() {
            "timeout".to_owned()
        } else {
            "connection".to_owned()
        }
    })?;
    let status = response.status().as_u16();
    if kind == Kind::Read && status == 200 {
        // A profile page answered without some service is degraded, not a success.
        let page: serde_json::Value = response.json().await.map_err(|_| "unreadable".to_owned())?;
        if page["missing"].as_array().is_some_and(|parts| !parts.is_empty()) {
            return Err("degraded".to_owned());
        }
    }
    Ok(status)
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
    /// The stores of a `dozen up` platform on its embedded defaults.
    pub fn embedded(platform: &crate::platform::Platform) -> Self {
        let data = platform.data_dir();
        let databases = crate::process::SERVICES
            .iter()
            .filter(|(_, has_database)| *has_database)
            .map(|(name, _)| {
                (
                    *name,
                    format!("sqlite://{}", data.join(format!("{name}.db")).display()),
                )
            })
            .collect();
        let bus = format!("sqlite://{}", data.join("bus.db").display());
        Self {
            databases,
            repair: Repair::Process(Self::repair_env(platform, &[("BUS_URL", &bus)])),
        }
    }

    /// The environment of `repair` for `platform` on the bus `bus_env` names.
    pub fn repair_env(
        platform: &crate::platform::Platform,
        bus_env: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let keys = platform.keys_dir();
        let mut env: Vec<(String, String)> = bus_env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
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
            .filter(|outcome| outcome.kind == Kind::Signup && outcome.answer == Ok(202))
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
            let key = match &outcome.answer {
                Ok(status) => status.to_string(),
                Err(why) => why.clone(),
            };
            *failed.entry(key).or_insert(0) += 1;
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
