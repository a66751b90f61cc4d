//! `dozen load`: an open-loop load generator for any dozen deployment, through its public API.
//!
//! A setup phase makes a pool of verified users; then requests of a mix of endpoints
//! ([`mix`]) start at a fixed arrival rate ([`schedule`]), and each endpoint's counts and
//! latencies are reported ([`report`]) as a table, JSON and an SVG plot ([`plot`]).
//! `--find-capacity` searches for the highest rate at which every endpoint keeps its p99
//! target. What is sent lives in [`workload`].

pub mod mix;
pub mod plot;
pub mod report;
pub mod schedule;
pub mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use dozen_kit::config::parse_duration;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use mix::{DEFAULT_MIX, Endpoint, Mix};
use report::Report;
use schedule::{Limit, Schedule};
use workload::{Setup, Workload};

/// Settings of `dozen load`.
#[derive(Debug, Clone, Args)]
pub struct LoadSettings {
    /// The gateway to load (any dozen deployment).
    #[arg(long, env = "LOAD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Arrival rate, requests per second, whatever the responses do (open loop); with
    /// --find-capacity, the first rate tried.
    #[arg(long, env = "LOAD_RATE", default_value_t = 100.0, value_parser = parse_rate)]
    pub rate: f64,

    /// How long to send for.
    #[arg(long, env = "LOAD_DURATION", default_value = "10s", value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Duration,

    /// Send this many requests instead of sending for --duration.
    #[arg(long, env = "LOAD_REQUESTS", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Relative weights of the endpoints: signup, login, me, profile, suggestions,
    /// friend_request, friend_accept.
    #[arg(long, env = "LOAD_MIX", default_value = DEFAULT_MIX)]
    pub mix: Mix,

    /// Verified users the setup phase makes (through the public API) before the run.
    #[arg(long, env = "LOAD_USERS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=10_000))]
    pub users: u64,

    /// How many setup users are made at once.
    #[arg(long, env = "LOAD_SETUP_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub setup_concurrency: u64,

    /// At most this many requests at once; one due while the cap is reached is dropped
    /// (an error), never queued.
    #[arg(long, env = "LOAD_MAX_IN_FLIGHT", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_in_flight: u64,

    /// A request without a response within this is an error (`timeout`).
    #[arg(long, env = "LOAD_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// How the report goes to stdout.
    #[arg(long, env = "LOAD_FORMAT", value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Also write the report as JSON to this file.
    #[arg(long, env = "LOAD_JSON")]
    pub json: Option<PathBuf>,

    /// Write a plot of p50 and p99 latency per second of each endpoint (SVG) to this file.
    #[arg(long, env = "LOAD_PLOT")]
    pub plot: Option<PathBuf>,

    /// Search for the highest rate at which every endpoint keeps its p99 target, starting at
    /// --rate, and print each step.
    #[arg(long, env = "LOAD_FIND_CAPACITY")]
    pub find_capacity: bool,

    /// With --find-capacity: the p99 target of every endpoint but signups and logins.
    #[arg(long, env = "LOAD_P99_TARGET", default_value = "50ms", value_parser = parse_duration)]
    pub p99_target: Duration,

    /// With --find-capacity: the p99 target of signups and logins (each hashes a password).
    #[arg(long, env = "LOAD_P99_TARGET_HASHING", default_value = "250ms", value_parser = parse_duration)]
    pub p99_target_hashing: Duration,

    /// With --find-capacity: how long each step sends.
    #[arg(long, env = "LOAD_STEP_DURATION", default_value = "5s", value_parser = parse_duration)]
    pub step_duration: Duration,

    /// With --find-capacity: the highest rate tried.
    #[arg(long, env = "LOAD_MAX_RATE", default_value_t = 20_000.0, value_parser = parse_rate)]
    pub max_rate: f64,
}

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table for people.
    Table,
    /// The JSON report.
    Json,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0 => Ok(rate),
        _ => Err("expected requests per second, above 0 and at most 1000000 (e.g. 250 or 0.5)".to_owned()),
    }
}

/// The `main` of `dozen load`.
pub fn main(settings: LoadSettings) -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dozen load: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dozen load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: LoadSettings) -> anyhow::Result<()> {
    let setup = Setup {
        users: if settings.mix.needs_users() {
            settings.users as usize
        } else {
            0
        },
        concurrency: settings.setup_concurrency as usize,
    };
    let started = std::time::Instant::now();
    let workload = Arc::new(
        Workload::prepare(
            &settings.url,
            settings.timeout,
            settings.max_in_flight as usize,
            setup,
        )
        .await?,
    );
    eprintln!(
        "dozen load: setup made {} verified users in {:.1} s; the dev mailbox is {}",
        setup.users,
        started.elapsed().as_secs_f64(),
        if workload.has_mailbox() {
            "on: new signups are verified through it"
        } else {
            "off: new signups count as accepted only"
        }
    );
    if settings.find_capacity {
        find_capacity(&workload, &settings).await
    } else {
        let limit = match settings.requests {
            Some(count) => Limit::Requests(count),
            None => Limit::Duration(settings.duration),
        };
        let report = run_once(
            &workload,
            &settings,
            Schedule {
                rate: settings.rate,
                limit,
            },
        )
        .await;
        match settings.format {
            Format::Table => print!("{}", report.table()),
            Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        }
        explain_rate_limits(&report);
        if let Some(path) = &settings.json {
            write_json(path, &report)?;
        }
        if let Some(path) = &settings.plot {
            plot::write_svg(&report, path)?;
        }
        Ok(())
    }
}

/// One run of `schedule`: send, wait for every response and for the new signups to be
/// verified, and report.
async fn run_once(workload: &Arc<Workload>, settings: &LoadSettings, schedule: Schedule) -> Report {
    let stop = CancellationToken::new();
    let completing = tokio::spawn(workload.clone().complete_signups(stop.clone()));
    schedule::drive(workload, schedule, &settings.mix, settings.max_in_flight as usize).await;
    stop.cancel();
    let _ = completing.await;
    workload
        .recorder
        .report(&settings.url, schedule.rate, settings.mix.to_string())
}

/// Say what 429s mean, when there were any.
fn explain_rate_limits(report: &Report) {
    if report.rate_limited > 0 {
        eprintln!(
            "dozen load: {} requests were refused with 429 Too Many Requests: the gateway limits signups, \
             logins and verifications per client address (RATE_LIMIT_SIGNUPS, RATE_LIMIT_SESSIONS, \
             RATE_LIMIT_VERIFICATIONS); raise them for a load test, e.g. RATE_LIMIT_SIGNUPS=100000/min",
            report.rate_limited
        );
    }
}

fn write_json<T: Serialize>(path: &PathBuf, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// One step of the capacity search.
#[derive(Debug, Serialize)]
struct Step {
    rate: f64,
    passed: bool,
    /// Why it failed, or the endpoint closest to its target.
    verdict: String,
    report: Report,
}

/// The result of `--find-capacity`.
#[derive(Debug, Serialize)]
struct Capacity {
    url: String,
    /// The highest rate that passed, if any did.
    capacity: Option<f64>,
    p99_target_ms: f64,
    p99_target_hashing_ms: f64,
    steps: Vec<Step>,
}

/// Whether every endpoint of `report` answered without errors inside its p99 target; and why.
fn judge(report: &Report, settings: &LoadSettings) -> (bool, String) {
    if report.errors > 0 {
        let worst = report
            .endpoints
            .iter()
            .filter(|endpoint| endpoint.errors > 0)
            .map(|endpoint| format!("{} {:?}", endpoint.endpoint, endpoint.errors_by_status))
            .collect::<Vec<_>>()
            .join("; ");
        return (false, format!("{} errors ({worst})", report.errors));
    }
    let mut tightest: Option<(f64, String)> = None;
    for endpoint in &report.endpoints {
        // The dev mailbox lists every mail it holds, so it slows as the run adds mail: a
        // development aid, not part of what the platform serves its users.
        if endpoint.endpoint == Endpoint::Mailbox.name() {
            continue;
        }
        let Some(latency) = &endpoint.latency_ms else {
            continue;
        };
        let hashing = Endpoint::MIXABLE
            .iter()
            .any(|e| e.name() == endpoint.endpoint && e.hashes_a_password());
        let target = if hashing {
            settings.p99_target_hashing
        } else {
            settings.p99_target
        };
        let target_ms = target.as_secs_f64() * 1000.0;
        let share = latency.p99 / target_ms;
        let line = format!(
            "{} p99 {:.1} ms of {:.0} ms",
            endpoint.endpoint, latency.p99, target_ms
        );
        if tightest.as_ref().is_none_or(|(worst, _)| share > *worst) {
            tightest = Some((share, line));
        }
    }
    match tightest {
        Some((share, line)) if share > 1.0 => (false, format!("over target: {line}")),
        Some((_, line)) => (true, format!("closest: {line}")),
        None => (false, "no responses".to_owned()),
    }
}

/// Double the rate until a step fails, then bisect between the last pass and the first
/// failure until they are within 10% of each other.
async fn find_capacity(workload: &Arc<Workload>, settings: &LoadSettings) -> anyhow::Result<()> {
    const MAX_STEPS: usize = 16;
    const SETTLE_AFTER_FAILURE: Duration = Duration::from_secs(6);
    let mut passed: Option<f64> = None;
    let mut failed: Option<f64> = None;
    let mut rate = settings.rate;
    let mut steps: Vec<Step> = Vec::new();
    while steps.len() < MAX_STEPS {
        let schedule = Schedule {
            rate,
            limit: Limit::Duration(settings.step_duration),
        };
        let report = run_once(workload, settings, schedule).await;
        let (ok, verdict) = judge(&report, settings);
        eprintln!(
            "step {}: {rate} req/s for {:?}: {} ({verdict})",
            steps.len() + 1,
            settings.step_duration,
            if ok { "pass" } else { "FAIL" },
        );
        explain_rate_limits(&report);
        steps.push(Step {
            rate,
            passed: ok,
            verdict,
            report,
        });
        if ok {
            passed = Some(passed.map_or(rate, |p: f64| p.max(rate)));
        } else {
            failed = Some(failed.map_or(rate, |f: f64| f.min(rate)));
        }
        rate = match (passed, failed) {
            (Some(low), None) if low * 2.0 <= settings.max_rate => low * 2.0,
            (Some(_), None) => break,
            (None, Some(high)) if high / 2.0 >= 1.0 => high / 2.0,
            (None, _) => break,
            (Some(low), Some(high)) if high - low > (low * 0.1).max(1.0) => (low + high) / 2.0,
            (Some(_), Some(_)) => break,
        }
        .round();
        // Let queues drain and circuit breakers opened by a failed step close again (the
        // gateway's stay open 5 s by default), so the next step starts from a settled platform.
        if !ok {
            tokio::time::sleep(SETTLE_AFTER_FAILURE).await;
        }
    }
    let capacity = Capacity {
        url: settings.url.clone(),
        capacity: passed,
        p99_target_ms: settings.p99_target.as_secs_f64() * 1000.0,
        p99_target_hashing_ms: settings.p99_target_hashing.as_secs_f64() * 1000.0,
        steps,
    };
    match settings.format {
        Format::Table => {
            for step in &capacity.steps {
                println!(
                    "{:>8} req/s  {}  {}",
                    step.rate,
                    if step.passed { "pass" } else { "FAIL" },
                    step.verdict
                );
            }
            match capacity.capacity {
                Some(rate) => println!(
                    "capacity: {rate} req/s (every endpoint's p99 within {:?}, signups and logins within {:?}, no errors)",
                    settings.p99_target, settings.p99_target_hashing
                ),
                None => println!(
                    "capacity: below {} req/s, the lowest rate tried: no step passed",
                    failed.unwrap_or(settings.rate)
                ),
            }
        }
        Format::Json => println!("{}", serde_json::to_string_pretty(&capacity)?),
    }
    if let Some(path) = &settings.json {
        write_json(path, &capacity)?;
    }
    if let Some(path) = &settings.plot {
        let at_capacity = capacity
            .steps
            .iter()
            .find(|step| Some(step.rate) == capacity.capacity)
            .or(capacity.steps.last());
        if let Some(step) = at_capacity {
            plot::write_svg(&step.report, path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::report::{Outcome, Recorder};
    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadSettings,
    }

    fn settings() -> LoadSettings {
        Cli::parse_from(["load", "--p99-target", "50ms", "--p99-target-hashing", "250ms"]).load
    }

    fn report(calls: &[(Endpoint, Outcome, u64)]) -> Report {
        let recorder = Recorder::default();
        let start = recorder.start_run();
        for (endpoint, outcome, millis) in calls {
            let latency = Duration::from_millis(*millis);
            recorder.record(*endpoint, start, outcome.clone(), Some(latency));
        }
        recorder.report("http://x", 10.0, String::new())
    }

    #[test]
    fn a_step_passes_only_with_every_p99_inside_its_target_and_no_errors() {
        let ok = Outcome::Status(200);
        let within = report(&[
            (Endpoint::Me, ok.clone(), 40),
            (Endpoint::Login, ok.clone(), 200),
            (Endpoint::Mailbox, ok.clone(), 900),
        ]);
        let (passed, verdict) = judge(&within, &settings());
        assert!(
            passed,
            "logins get the hashing target, the mailbox none: {verdict}"
        );

        let slow = report(&[(Endpoint::Me, ok.clone(), 60), (Endpoint::Login, ok.clone(), 10)]);
        let (passed, verdict) = judge(&slow, &settings());
        assert!(!passed);
        assert!(verdict.contains("me p99 60"), "{verdict}");

        let failing = report(&[
            (Endpoint::Me, ok, 1),
            (Endpoint::Suggestions, Outcome::Status(503), 1),
        ]);
        let (passed, verdict) = judge(&failing, &settings());
        assert!(!passed);
        assert!(
            verdict.contains("suggestions") && verdict.contains("503"),
            "{verdict}"
        );
    }
}
