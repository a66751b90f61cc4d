//! Scale benchmark: what a read costs as the platform grows. It seeds members through the
//! public API — signups, then the verification links from the dev mailbox — up to each size in
//! turn (1k, 10k and 100k by default), and at each size times `GET /api/suggestions`,
//! `GET /api/friends` and `GET /api/me` for twenty members with friends, one request at a time,
//! printing p50 and p99 per endpoint and at the end how the largest size's p50 compares with the
//! smallest's. It prints figures; it asserts nothing.
//!
//! Seeding hashes at a weak argon2 cost (`ARGON2_ALLOW_WEAK_COST`): the hash is not what is
//! measured here, and at the real cost 100k signups take this machine about twenty minutes.
//!
//! Run: `cargo build --release --workspace --bins && cargo run --release -p dozen-bench --bin scale`
//! (optionally `-- <sizes, comma-separated> <requests per endpoint>`, default
//! `1000,10000,100000 400`).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use dozen_bench::{Platform, percentile};
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};

/// Members timed at every size, each with friends (a ring: each befriends the next three).
const PROBES: usize = 20;
/// Requests in flight while seeding.
const SEEDING_CONCURRENCY: usize = 16;
/// Distinct interests; each member lists up to three, so each is shared by many at scale.
const TOPICS: usize = 40;
/// Every member's password (strong enough for the strength check).
const PASSWORD: &str = "violet-harbour-42-scale";
/// How long seeding may go without progress before the benchmark gives up.
const STALL: Duration = Duration::from_secs(120);

fn email(n: usize) -> String {
    format!("member-{n}@scale.example")
}

fn interests(n: usize) -> Vec<String> {
    let mut topics = vec![n % TOPICS, (n / TOPICS) % TOPICS, (7 * n + 3) % TOPICS];
    topics.sort_unstable();
    topics.dedup();
    topics.into_iter().map(|t| format!("topic-{t}")).collect()
}

struct Seeder {
    client: reqwest::Client,
    gateway: String,
    /// Mailbox files already read.
    seen: HashSet<std::ffi::OsString>,
}

impl Seeder {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway)
    }

    /// Sign up members `from..to` (the last one named to sort first, sharing probe 0's
    /// interests: when it is suggested, friends has caught up), then follow each one's link.
    async fn seed(&mut self, from: usize, to: usize, mailbox: &Path) -> anyhow::Result<()> {
        let started = Instant::now();
        let signups = stream::iter(from..to)
            .map(|n| {
                let (client, url) = (self.client.clone(), self.url("/api/signups"));
                let display_name = if n + 1 == to {
                    format!("Aaa caught up {to}")
                } else {
                    format!("Member {n:06}")
                };
                let interests = if n + 1 == to { interests(0) } else { interests(n) };
                async move {
                    let body = json!({
                        "email": email(n),
                        "password": PASSWORD,
                        "display_name": display_name,
                        "interests": interests,
                    });
                    client
                        .post(url)
                        .json(&body)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                }
            })
            .buffer_unordered(SEEDING_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let refused = signups.iter().filter(|status| !matches!(status, Ok(202))).count();
        ensure!(refused == 0, "{refused} signups were not accepted");
        let signed_up = started.elapsed();

        let mut verified = 0;
        let mut last_progress = Instant::now();
        while verified < to - from {
            let tokens = self.new_tokens(mailbox)?;
            if tokens.is_empty() {
                ensure!(
                    last_progress.elapsed() < STALL,
                    "no verification mail for {STALL:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            last_progress = Instant::now();
            let answers = stream::iter(tokens)
                .map(|token| {
                    let (client, url) = (
                        self.client.clone(),
                        self.url(&format!("/api/verifications/{token}")),
                    );
                    async move { client.post(url).send().await.map(|r| r.status().as_u16()) }
                })
                .buffer_unordered(SEEDING_CONCURRENCY)
                .collect::<Vec<_>>()
                .await;
            let failed = answers.iter().filter(|status| !matches!(status, Ok(200))).count();
            ensure!(failed == 0, "{failed} verifications failed");
            verified += answers.len();
        }
        let total = started.elapsed();
        println!(
            "seeded {} members in {:.0} s ({:.0} signups/s, then verified at {:.0}/s)",
            to - from,
            total.as_secs_f64(),
            (to - from) as f64 / signed_up.as_secs_f64(),
            (to - from) as f64 / (total - signed_up).as_secs_f64()
        );
        Ok(())
    }

    /// The verification tokens in mailbox files not read before.
    fn new_tokens(&mut self, mailbox: &Path) -> anyhow::Result<Vec<String>> {
        let mut tokens = Vec::new();
        for entry in std::fs::read_dir(mailbox).context("the dev mailbox folder")? {
            let entry = entry?;
            let name = entry.file_name();
            if !name.to_string_lossy().ends_with(".json") || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if !self.seen.insert(name) {
                continue;
            }
            let mail: Value = serde_json::from_slice(&std::fs::read(entry.path())?)?;
            let body = mail["body"].as_str().unwrap_or_default();
            if let Some((_, rest)) = body.split_once("verify?token=") {
                let token: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                tokens.push(token);
            }
        }
        Ok(tokens)
    }

    async fn login(&self, n: usize) -> anyhow::Result<String> {
        let answer: Value = self
            .client
            .post(self.url("/api/sessions"))
            .json(&json!({ "email": email(n), "password": PASSWORD }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        answer["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no access token")
    }

    async fn call(&self, token: &str, method: reqwest::Method, path: &str) -> anyhow::Result<Value> {
        let answer = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token)
            .send()
            .await?;
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "{path}: {status} {body}");
        Ok(body)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let sizes: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "1000,10000,100000".to_owned())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let requests: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(400);
    ensure!(
        sizes.first().is_some_and(|&first| first > PROBES) && sizes.is_sorted(),
        "sizes must grow, the first above {PROBES}"
    );

    let platform = Platform::start(&[
        ("RATE_LIMIT_SIGNUPS", "off"),
        ("RATE_LIMIT_SESSIONS", "off"),
        ("RATE_LIMIT_VERIFICATIONS", "off"),
        ("RATE_LIMIT_READS", "off"),
        ("ARGON2_MEMORY_KIB", "256"),
        ("ARGON2_ITERATIONS", "1"),
        ("ARGON2_ALLOW_WEAK_COST", "true"),
    ])?;
    let mailbox = platform.data.path().join("mailbox");
    let mut seeder = Seeder {
        client: reqwest::Client::new(),
        gateway: platform.gateway.clone(),
        seen: HashSet::new(),
    };
    let build = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "reads as the platform grows, {build}, {cores} cores, embedded defaults unless DATABASE_URL/BUS_URL say otherwise"
    );

    let mut seeded = 0;
    let mut rows: Vec<(usize, &str, f64, f64)> = Vec::new();
    for &size in &sizes {
        seeder.seed(seeded, size, &mailbox).await?;
        let tokens = stream::iter(0..PROBES)
            .then(|n| seeder.login(n))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<String>>>()?;
        if seeded == 0 {
            befriend_in_a_ring(&seeder, &tokens).await?;
        }
        seeded = size;
        wait_until_suggested(&seeder, &tokens[0], &format!("Aaa caught up {size}")).await?;

        for path in ["/api/suggestions", "/api/friends", "/api/me"] {
            for token in tokens.iter().cycle().take(PROBES) {
                seeder.call(token, reqwest::Method::GET, path).await?;
            }
            let mut times = Vec::with_capacity(requests);
            for token in tokens.iter().cycle().take(requests) {
                let sent = Instant::now();
                seeder.call(token, reqwest::Method::GET, path).await?;
                times.push(sent.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
            println!("{size:>8} members  {path:<18} p50 {p50:>7.2} ms  p99 {p99:>7.2} ms");
            rows.push((size, path, p50, p99));
        }
    }
    let (smallest, largest) = (sizes[0], sizes[sizes.len() - 1]);
    for path in ["/api/suggestions", "/api/friends", "/api/me"] {
        let p50_at = |size: usize| {
            rows.iter()
                .find(|row| row.0 == size && row.1 == path)
                .map_or(f64::NAN, |row| row.2)
        };
        println!(
            "{path:<18} p50 at {largest} members ÷ p50 at {smallest}: {:.2}",
            p50_at(largest) / p50_at(smallest)
        );
    }
    Ok(())
}

/// Each probe asks the next three for friendship, and they accept.
async fn befriend_in_a_ring(seeder: &Seeder, tokens: &[String]) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    for token in tokens {
        let me = seeder.call(token, reqwest::Method::GET, "/api/me").await?;
        ids.push(me["profile"]["id"].as_str().context("profile id")?.to_owned());
    }
    for (n, token) in tokens.iter().enumerate() {
        for step in 1..=3 {
            let other = (n + step) % tokens.len();
            seeder
                .call(
                    token,
                    reqwest::Method::POST,
                    &format!("/api/friends/{}", ids[other]),
                )
                .await?;
            seeder
                .call(
                    &tokens[other],
                    reqwest::Method::POST,
                    &format!("/api/friends/{}/accept", ids[n]),
                )
                .await?;
        }
    }
    Ok(())
}

/// Wait until friends has handled the newest member: it is suggested to probe 0.
async fn wait_until_suggested(seeder: &Seeder, token: &str, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + STALL;
    loop {
        let suggestions = seeder
            .call(token, reqwest::Method::GET, "/api/suggestions")
            .await?;
        let found = suggestions
            .as_array()
            .is_some_and(|all| all.iter().any(|s| s["display_name"] == name));
        if found {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} was never suggested");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
