//! Capacity benchmark: the highest rate of `dozen load`'s default mix that the platform serves
//! with every endpoint inside its p99 target (`dozen load --find-capacity`), on the embedded
//! defaults and on Postgres + NATS, printed next to the gateway's own proxy ceiling measured in
//! the same run: the requests per second the gateway passes on to an upstream that does no work
//! (wrk, 64 connections, `GET /api/friends`, as the gateway benchmark measures it). The ratio
//! says how much of the platform's capacity the edge leaves to the services.
//!
//! With `-- <duration>` (`5m`, `90s`), each platform then runs the default mix at half its
//! capacity for that long, and the benchmark prints whether it holds steady:
//! responses per second in the first minute against the last, the worst second's p99 in each,
//! each endpoint's p99 over the run, the errors, and every service's memory: its peak resident
//! set, and its proportional set size (PSS: the pages it shares, such as the `dozen` binary's
//! code that all six processes run, divided among their sharers) at the end of the load; both
//! again after a minute idle.
//!
//! Run: `cargo build --release --workspace --bins && cargo run --release -p dozen-bench --bin
//! capacity -- [<duration>] [embedded|postgres]` (default: no steady run, both platforms; the
//! Postgres + NATS platform needs the servers of `scripts/backing-services`). Needs Debian's
//! `wrk`. Every rate limit is lifted: the load comes from one address.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use dozen_bench::proxy::{UPSTREAM_MODE, serve_upstream, start_gateway, start_upstream, wrk};
use dozen_bench::{Platform, process_ids, process_stat};
use serde_json::Value;

/// Verified users `dozen load` makes before it runs.
const USERS: &str = "50";

/// How long a service is left idle before its resident memory is read again.
const IDLE: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(UPSTREAM_MODE) {
        let port: u16 = args.get(1).context("the upstream's port")?.parse()?;
        return serve_upstream(port);
    }
    let mut steady = None;
    let mut platforms = vec!["embedded", "postgres"];
    for arg in &args {
        match arg.as_str() {
            "embedded" => platforms = vec!["embedded"],
            "postgres" => platforms = vec!["postgres"],
            duration => {
                steady = Some(humantime::parse_duration(duration).with_context(|| {
                    format!("{duration}: expected a duration (5m, 90s), `embedded` or `postgres`")
                })?);
            }
        }
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is missing: install Debian's wrk package (apt-get install wrk) to run this benchmark");
    }
    let build = if cfg!(debug_assertions) {
        "DEBUG build: measure with --release"
    } else {
        "release build"
    };
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!("dozen load's default mix, {cores} cores, {build}");

    let ceiling = proxy_ceiling()?;
    println!(
        "gateway proxy ceiling (GET /api/friends to an upstream doing no work, wrk 64 connections, 10 s): {ceiling:.0} req/s"
    );
    for platform in platforms {
        // The databases and streams are dropped with `backing`, after the platform stops.
        let backing =
            (platform == "postgres").then(|| dozen_tests::platform::PostgresAndNats::new("capacity"));
        let mut env = vec![
            ("RATE_LIMIT_SIGNUPS", "off"),
            ("RATE_LIMIT_SESSIONS", "off"),
            ("RATE_LIMIT_VERIFICATIONS", "off"),
            ("RATE_LIMIT_READS", "off"),
        ];
        if let Some(backing) = &backing {
            env.extend(backing.env());
        }
        let name = match platform {
            "postgres" => "Postgres + NATS",
            _ => "embedded defaults",
        };
        measure(name, platform, &env, ceiling, steady)?;
    }
    Ok(())
}

/// Requests per second through the gateway to an upstream that answers at once.
fn proxy_ceiling() -> anyhow::Result<f64> {
    let (_upstream, upstream_port) = start_upstream()?;
    let (_gateway, port) = start_gateway(upstream_port)?;
    let url = format!("{}/api/friends", port.url());
    // Warm the connection pools first.
    wrk(&url, 1, 2, 1)?;
    let run = wrk(&url, 2, 64, 10)?;
    if run.failed > 0 {
        bail!("{} answers through the gateway were not 2xx", run.failed);
    }
    Ok(run.per_second)
}

/// Find the capacity of one platform, and run it at half of that for `steady` if asked.
/// `dozen load`'s JSON reports are left in the working folder, named after `label`.
fn measure(
    name: &str,
    label: &str,
    env: &[(&str, &str)],
    ceiling: f64,
    steady: Option<Duration>,
) -> anyhow::Result<()> {
    let platform = Platform::start(env)?;
    let found = load(
        &platform.gateway,
        &["--find-capacity"],
        Path::new(&format!("capacity-{label}.json")),
    )?;
    let Some(capacity) = found["capacity"].as_f64() else {
        println!("{name}: no step passed (see the steps above)");
        return Ok(());
    };
    println!(
        "{name}: capacity {capacity:.0} req/s, {:.1} % of the gateway's proxy ceiling",
        capacity / ceiling * 100.0
    );
    let Some(duration) = steady else {
        return Ok(());
    };
    let rate = (capacity / 2.0).round().to_string();
    let seconds = duration.as_secs().to_string();
    let report = load(
        &platform.gateway,
        &["--rate", &rate, "--duration", &format!("{seconds}s")],
        Path::new(&format!("steady-{label}.json")),
    )?;
    print_steady(name, &rate, duration, &report);
    let peaks = memory(&platform, "status", "VmHWM:")?;
    let proportional = memory(&platform, "smaps_rollup", "Pss:")?;
    std::thread::sleep(IDLE);
    let idle = memory(&platform, "status", "VmRSS:")?;
    let idle_proportional = memory(&platform, "smaps_rollup", "Pss:")?;
    println!(
        "  memory, MiB        peak RSS   PSS at the end   RSS after {IDLE:?} idle   PSS after {IDLE:?} idle"
    );
    let figure =
        |figures: &BTreeMap<String, f64>, service: &str| figures.get(service).copied().unwrap_or(f64::NAN);
    for (service, peak) in &peaks {
        println!(
            "    {service:<13} {peak:>9.1} {:>16.1} {:>21.1} {:>21.1}",
            figure(&proportional, service),
            figure(&idle, service),
            figure(&idle_proportional, service),
        );
    }
    Ok(())
}

/// Run `dozen load` against `gateway` with the default mix and `args`, its steps and progress
/// on this terminal, and return its JSON report.
fn load(gateway: &str, args: &[&str], json: &Path) -> anyhow::Result<Value> {
    let status = Command::new(sibling("dozen")?)
        .args([
            "load", "--url", gateway, "--users", USERS, "--format", "json", "--json",
        ])
        .arg(json)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .context("cannot run dozen load")?;
    if !status.success() {
        bail!("dozen load {args:?} failed: {status}");
    }
    Ok(serde_json::from_str(&std::fs::read_to_string(json)?)?)
}

/// The binary `name` next to this one (a release benchmark runs the release platform).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("binary folder")?
        .join(name))
}

/// The steady run's figures: responses per second and the worst second's p99 in the first
/// minute against the last, in all and per endpoint; each endpoint's p99 over the run and its
/// errors.
fn print_steady(name: &str, rate: &str, duration: Duration, report: &Value) {
    let endpoints: Vec<&Value> = report["endpoints"]
        .as_array()
        .map(|all| all.iter().filter(|endpoint| endpoint["in_mix"] == true).collect())
        .unwrap_or_default();
    let last = duration.as_secs();
    let window = 60.min(last / 2);
    // Responses per second and the worst second's p99 of `endpoint` from second `from` on.
    let stretch = |endpoint: &Value, from: u64| {
        let (mut responses, mut worst_p99) = (0, 0.0_f64);
        for second in endpoint["per_second"].as_array().into_iter().flatten() {
            let at = second["second"].as_u64().unwrap_or(u64::MAX);
            if (from..from + window).contains(&at) {
                responses += second["responses"].as_u64().unwrap_or(0);
                worst_p99 = worst_p99.max(second["p99_ms"].as_f64().unwrap_or(0.0));
            }
        }
        (responses as f64 / window as f64, worst_p99)
    };
    println!(
        "{name}: {rate} req/s asked for {duration:?}: {:.0} sent per second, {} errors, {} friend acceptances skipped (no request waiting)",
        report["requests"].as_u64().unwrap_or(0) as f64 / report["seconds"].as_f64().unwrap_or(1.0),
        report["errors"],
        report["skipped"],
    );
    println!(
        "  {:<15} {:>17} {:>30} {:>8}  errors",
        "endpoint",
        format!("responses/s {window}s"),
        format!("worst second's p99 {window}s, ms"),
        "p99 ms"
    );
    let (mut first_all, mut last_all, mut first_worst, mut last_worst) = (0.0, 0.0, 0.0_f64, 0.0_f64);
    for endpoint in &endpoints {
        let (first, first_p99) = stretch(endpoint, 0);
        let (final_, final_p99) = stretch(endpoint, last - window);
        first_all += first;
        last_all += final_;
        if !matches!(endpoint["endpoint"].as_str(), Some("signup" | "login")) {
            first_worst = first_worst.max(first_p99);
            last_worst = last_worst.max(final_p99);
        }
        println!(
            "  {:<15} {:>7.1} → {:>7.1} {:>14.1} → {:>13.1} {:>8.1}  {}",
            endpoint["endpoint"].as_str().unwrap_or("?"),
            first,
            final_,
            first_p99,
            final_p99,
            endpoint["latency_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            endpoint["errors_by_status"],
        );
    }
    println!(
        "  all: {first_all:.0} → {last_all:.0} responses/s ({:.2}); reads and writes' worst second's p99 {first_worst:.1} → {last_worst:.1} ms",
        last_all / first_all
    );
}

/// Each service of `platform` (its `dozen run <service> serve` process) with the figure of
/// `/proc/<pid>/<file>` that starts with `field`, in MiB.
fn memory(platform: &Platform, file: &str, field: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let up = platform.up.id();
    let mut memory = BTreeMap::new();
    for pid in process_ids()? {
        if process_stat(&pid.to_string()).map(|stat| stat.parent) != Some(up) {
            continue;
        }
        let Ok(command_line) = std::fs::read_to_string(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let words: Vec<&str> = command_line.split('\0').collect();
        let Some(service) = words
            .iter()
            .position(|word| *word == "run")
            .and_then(|at| words.get(at + 1))
        else {
            continue;
        };
        let figures = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
        let kib: f64 = figures
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} for {service}"))?;
        memory.insert((*service).to_owned(), kib / 1024.0);
    }
    Ok(memory)
}
