//! Metrics benchmark: what the kit's metrics cost a service. Recording one answered request
//! (`http_requests_total` and `http_request_duration_seconds`, with an exemplar of its sampled
//! trace, as the HTTP middleware does for every request) and rendering `/metrics` afterwards,
//! in the Prometheus text and in OpenMetrics, for 20 series (10 routes, 2 statuses) besides
//! the process figures. It prints figures; it asserts nothing.
//!
//! Run: `cargo run --release -p dozen-bench --bin metrics` for time per record and per render
//! (`-- <records>`, default 2,000,000).
//!
//! `-- instructions` prints instead the instructions each takes, counted by valgrind's
//! callgrind (Debian package valgrind): this binary runs under it once for a warm-up only and
//! once for the warm-up and a known number more, and the difference is divided by that number.
//! Unlike time, the count is the same whatever else the machine is doing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::http::{Method, StatusCode};
use dozen_bench::callgrind_total;
use dozen_kit::metrics::{self, Format};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// The argument that counts instructions instead of measuring time.
const INSTRUCTIONS_MODE: &str = "instructions";

/// The argument that makes this binary the program callgrind runs (`-- run <what> <count>`).
const RUN_MODE: &str = "run";

const ROUTES: [&str; 10] = [
    "/api/me",
    "/api/friends",
    "/api/friends/requests",
    "/api/suggestions",
    "/api/sessions",
    "/api/sessions/refresh",
    "/api/signups",
    "/api/verifications/{token}",
    "/readyz",
    "/healthz",
];
const STATUSES: [StatusCode; 2] = [StatusCode::OK, StatusCode::NOT_FOUND];

/// Records made before anything is counted: every series registered, lazy statics made.
const WARM_UP_RECORDS: u64 = 1_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(RUN_MODE) => {
            let what = args.get(1).context("what to run: record or render")?;
            let count: u64 = args.get(2).context("how many")?.parse()?;
            run(what, count)
        }
        Some(INSTRUCTIONS_MODE) => print_instructions(),
        records => {
            let records: u64 = records.map(str::parse).transpose()?.unwrap_or(2_000_000);
            print_times(records);
            Ok(())
        }
    }
}

/// Record request `i` of a run: its route, status and time go round the series.
fn record(i: u64) {
    let route = ROUTES[(i % ROUTES.len() as u64) as usize];
    let status = STATUSES[(i / ROUTES.len() as u64 % STATUSES.len() as u64) as usize];
    // Spread over the buckets, from 0.1 ms to about 1 s.
    let took = Duration::from_micros(100 + (i * 7919) % 1_000_000);
    let trace = SpanContext::new(
        TraceId::from(u128::from(i) + 1),
        SpanId::from(i + 1),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    metrics::record_http(&Method::GET, route, status, took, &trace);
}

fn render(format: &str) -> String {
    metrics::render(match format {
        "openmetrics" => Format::OpenMetrics,
        _ => Format::Prometheus,
    })
}

/// The warm-up, then `count` records or renders.
fn run(what: &str, count: u64) -> anyhow::Result<()> {
    (0..WARM_UP_RECORDS).for_each(record);
    match what {
        "record" => (WARM_UP_RECORDS..WARM_UP_RECORDS + count).for_each(record),
        "render" | "render-openmetrics" => (0..count).for_each(|_| {
            std::hint::black_box(render(what.trim_start_matches("render-")));
        }),
        other => bail!("run record, render or render-openmetrics, not {other}"),
    }
    Ok(())
}

fn print_times(records: u64) {
    (0..WARM_UP_RECORDS).for_each(record);
    let started = Instant::now();
    (WARM_UP_RECORDS..WARM_UP_RECORDS + records).for_each(record);
    let per_record = started.elapsed().as_secs_f64() / records as f64;
    println!(
        "{} series of http_request_duration_seconds, release build, one thread",
        ROUTES.len() * STATUSES.len()
    );
    println!(
        "record one request: {:.0} ns ({records} records)",
        per_record * 1e9
    );
    let renders = 2_000;
    for format in ["prometheus", "openmetrics"] {
        let started = Instant::now();
        let mut bytes = 0;
        for _ in 0..renders {
            bytes = std::hint::black_box(render(format)).len();
        }
        let per_render = started.elapsed().as_secs_f64() / f64::from(renders);
        println!(
            "render /metrics in {format}: {:.1} µs, {bytes} bytes ({renders} renders)",
            per_render * 1e6
        );
    }
}

fn print_instructions() -> anyhow::Result<()> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        bail!("valgrind is missing: install Debian's valgrind package (apt-get install valgrind)");
    }
    let folder = tempfile::tempdir()?;
    for (what, count) in [("record", 100_000), ("render", 200), ("render-openmetrics", 200)] {
        let baseline = instructions(folder.path(), what, 0)?;
        let total = instructions(folder.path(), what, count)?;
        let each = total.saturating_sub(baseline) as f64 / count as f64;
        println!("{what}: {each:.0} instructions each (callgrind, {count} after the warm-up)");
    }
    Ok(())
}

/// The instructions of this binary's `run <what> <count>` under callgrind.
fn instructions(folder: &Path, what: &str, count: u64) -> anyhow::Result<u64> {
    let counts = folder.join(format!("callgrind.{what}.{count}"));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", counts.display()))
        .arg(std::env::current_exe()?)
        .args([RUN_MODE, what, &count.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run this benchmark under valgrind")?;
    if !status.success() {
        bail!("the benchmark under valgrind failed: {status}");
    }
    callgrind_total(&counts)
}
