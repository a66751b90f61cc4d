//! Signup throughput benchmark: signups per second end to end — through the gateway, signup,
//! users and passwords with real argon2id, every service a process under `dozen up` — next to
//! the argon2 limit measured in the same run (cores ÷ time per hash), the most any signup path
//! could reach since each signup hashes one password. It prints figures; it asserts nothing.
//!
//! It also prints what every core hashing at once achieves (less than cores ÷ time per hash:
//! the cores share cache and memory bandwidth), and the CPU time each process spent per signup
//! (from `/proc`), so that what the platform spends besides the hash is visible, service by
//! service.
//!
//! Run: `cargo build --release --workspace --bins && cargo run --release -p dozen-bench --bin signups`
//! (optionally `-- <seconds> <concurrency>`, default 15 s and 4 per core). The platform runs on
//! the embedded defaults, or on whatever `DATABASE_URL`/`BUS_URL` this process is given.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use dozen_bench::{Platform, hashes_per_second_on_all_cores, process_ids, process_stat};
use dozen_passwords::domain::hashing::{Cost, Hasher};

/// CPU seconds (user and system) spent so far by each service process under `up`, and by this
/// benchmark (the load generator), by name.
fn cpu_seconds(up: u32) -> anyhow::Result<Vec<(String, f64)>> {
    let mut found = Vec::new();
    for pid in process_ids()? {
        let Some(stat) = process_stat(&pid.to_string()) else {
            continue;
        };
        if stat.parent != up {
            continue;
        }
        // `dozen up` runs each service as `dozen run <service> …`.
        let command_line = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let program = command_line.split('\0').nth(2).unwrap_or_default().to_owned();
        found.push((program, stat.user + stat.system));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let load = process_stat("self").context("this process's CPU time")?;
    found.push(("load generator".to_owned(), load.user + load.system));
    Ok(found)
}

/// The CPU time each of `hashes` argon2id hashes at the services' cost takes, one after another
/// on one core: what a hash costs a core, whatever else the machine is doing meanwhile.
async fn hash_times(hashes: u32) -> anyhow::Result<Vec<Duration>> {
    let cpu_time = || -> anyhow::Result<Duration> {
        let spent = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)?;
        Ok(Duration::from(spent))
    };
    let hasher = Hasher::new(Cost::OWASP_MINIMUM, 1)?;
    hasher.hash("warm-up password").await?;
    let mut times = Vec::new();
    for i in 0..hashes {
        let started = cpu_time()?;
        hasher.hash(&format!("benchmark password {i}")).await?;
        times.push(cpu_time()?.saturating_sub(started));
    }
    Ok(times)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(15);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let concurrency: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(4 * cores);

    // The capacity of the platform is measured, not the gateway's per-address limit (one
    // client address sends every signup here).
    let platform = Platform::start(&[("RATE_LIMIT_SIGNUPS", "off")])?;
    let client = reqwest::Client::new();
    let url = format!("{}/api/signups", platform.gateway);
    let sign_up = move |client: reqwest::Client, n: usize| {
        let url = url.clone();
        async move {
            client
                .post(url)
                .json(&serde_json::json!({
                    "email": format!("bench-{n}@example.com"),
                    "password": "correct horse battery staple",
                    "display_name": format!("Bench {n}"),
                    "interests": ["benchmarks"],
                }))
                .send()
                .await
                .map(|answer| answer.status().as_u16())
                .unwrap_or(0)
        }
    };
    let next = Arc::new(AtomicUsize::new(0));
    for _ in 0..(2 * concurrency) {
        sign_up(client.clone(), next.fetch_add(1, Ordering::Relaxed)).await;
    }

    // The time per hash is the median CPU time of hashes timed before and after the load: the
    // platform may still be handling the last events meanwhile, and this machine's speed
    // drifts from minute to minute.
    let mut hash_times = hash_times(10).await?;

    let cpu_before = cpu_seconds(platform.up.id())?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, accepted, refused) =
                (client.clone(), next.clone(), accepted.clone(), refused.clone());
            let sign_up = sign_up.clone();
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let status = sign_up(client.clone(), next.fetch_add(1, Ordering::Relaxed)).await;
                    let counter = if status == 202 { &accepted } else { &refused };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds(platform.up.id())?;
    hash_times.extend(self::hash_times(10).await?);
    let all_cores = hashes_per_second_on_all_cores(10).await?;
    hash_times.sort_unstable();
    let per_hash = hash_times[hash_times.len() / 2];
    let limit = cores as f64 / per_hash.as_secs_f64();
    let accepted = accepted.load(Ordering::Relaxed);
    let rate = accepted as f64 / elapsed;

    let backend = std::env::var("DATABASE_URL")
        .map_or_else(|_| "embedded (SQLite)".to_owned(), |_| "DATABASE_URL".to_owned());
    let build = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    println!(
        "signups end to end through the gateway, {build}, {cores} cores, {backend}, {concurrency} at once, {elapsed:.1} s"
    );
    println!(
        "{:<34} {:>10}",
        "argon2id CPU ms per hash (median)",
        format!("{:.2}", per_hash.as_secs_f64() * 1e3)
    );
    println!("{:<34} {:>10}", "argon2 limit signups/s", format!("{limit:.1}"));
    println!("{:<34} {:>10}", "signups/s (202)", format!("{rate:.1}"));
    println!(
        "{:<34} {:>10}",
        "share of the limit",
        format!("{:.2}", rate / limit)
    );
    // Hashing on every core at once is slower per hash than on one (shared cache and memory
    // bandwidth): this is what the machine can hash, and so what signups could at most reach.
    println!(
        "{:<34} {:>10}",
        "argon2 on all cores at once, /s",
        format!("{all_cores:.1}")
    );
    println!(
        "{:<34} {:>10}",
        "signups/s ÷ that",
        format!("{:.2}", rate / all_cores)
    );
    println!(
        "{:<34} {:>10}",
        "answers other than 202",
        refused.load(Ordering::Relaxed)
    );
    println!(
        "CPU ms per signup, by process (one hash: {:.2})",
        per_hash.as_secs_f64() * 1e3
    );
    let (mut total, mut passwords) = (0.0, 0.0);
    for (program, after) in &cpu_after {
        let before = cpu_before
            .iter()
            .find(|(name, _)| name == program)
            .map_or(0.0, |(_, seconds)| *seconds);
        let per_signup = (after - before) * 1e3 / accepted.max(1) as f64;
        total += per_signup;
        if program == "passwords" {
            passwords = per_signup;
        }
        println!("  {program:<32} {:>10}", format!("{per_signup:.2}"));
    }
    println!("  {:<32} {:>10}", "all", format!("{total:.2}"));
    // The share of all CPU that went to passwords (its hashes and the rest of its work) bounds
    // what share of the limit the platform could reach.
    println!(
        "{:<34} {:>10}",
        "passwords' share of all CPU",
        format!("{:.2}", passwords / total.max(f64::MIN_POSITIVE))
    );
    Ok(())
}
