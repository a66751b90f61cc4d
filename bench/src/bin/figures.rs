//! Figures benchmark: what the status page's sampler costs the gateway. It runs an idle
//! platform under `dozen up` with `FIGURES_INTERVAL=off` and with the default (`5s`), in
//! turn, and prints the gateway's CPU time (user + system, from `/proc/<pid>/stat`) per minute
//! of each, after a warm-up. It prints figures; it asserts nothing.
//!
//! Run: `cargo build --release --workspace --bins && cargo run --release -p dozen-bench --bin
//! figures` (optionally `-- <seconds measured> <rounds>`, default `60 1`).

use std::time::Duration;

use anyhow::Context;
use dozen_bench::{Platform, process_ids, process_stat};

/// Let the services settle (and the sampler take its first rounds) before measuring.
const WARM_UP: Duration = Duration::from_secs(10);

/// The pid of the gateway `dozen up` started (it runs `dozen run gateway`).
fn gateway_pid(platform: &Platform) -> anyhow::Result<u32> {
    for pid in process_ids()? {
        let is_child = process_stat(&pid.to_string()).is_some_and(|stat| stat.parent == platform.up.id());
        let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let arguments: Vec<&[u8]> = command.split(|byte| *byte == 0).collect();
        if is_child && arguments.contains(&b"gateway".as_slice()) {
            return Ok(pid);
        }
    }
    anyhow::bail!("no gateway process under dozen up")
}

/// The CPU seconds the gateway spends idle over `window`, sampling every `interval`.
fn idle_cpu(interval: &str, window: Duration) -> anyhow::Result<f64> {
    let platform = Platform::start(&[("FIGURES_INTERVAL", interval)])?;
    let pid = gateway_pid(&platform)?.to_string();
    std::thread::sleep(WARM_UP);
    let before = process_stat(&pid).context("the gateway stopped")?;
    std::thread::sleep(window);
    let after = process_stat(&pid).context("the gateway stopped")?;
    Ok(after.user + after.system - before.user - before.system)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(Ok(60), |text| text.parse())?;
    let rounds: usize = args.next().map_or(Ok(1), |text| text.parse())?;
    let window = Duration::from_secs(seconds);
    println!("gateway CPU per minute, idle, over {seconds} s after a {WARM_UP:?} warm-up");
    println!(
        "{:<8} {:>18} {:>22}",
        "round", "FIGURES_INTERVAL", "CPU ms per minute"
    );
    for round in 1..=rounds {
        for interval in ["off", "5s"] {
            let cpu = idle_cpu(interval, window)?;
            let per_minute = cpu * 1000.0 * 60.0 / window.as_secs_f64();
            println!("{round:<8} {interval:>18} {per_minute:>22.0}");
        }
    }
    Ok(())
}
